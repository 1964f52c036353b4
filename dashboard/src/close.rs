//! Close codes of live connections (also in the README, "Live data for dashboards"). SSE
//! streams end with an `event: close` carrying the same code and reason.

/// A close code and its reason text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    /// WebSocket close code.
    pub code: u16,
    /// Reason text sent with it (also the metric label).
    pub reason: &'static str,
}

/// The client closed the connection.
pub const NORMAL: Close = Close {
    code: 1000,
    reason: "closed by client",
};
/// Server shutdown.
pub const GOING_AWAY: Close = Close {
    code: 1001,
    reason: "going away",
};
/// The operator token was revoked while connected.
pub const REVOKED: Close = Close {
    code: 1008,
    reason: "token revoked",
};
/// A control message over the size limit.
pub const TOO_LARGE: Close = Close {
    code: 1009,
    reason: "message too large",
};
/// The connection failed (no close frame: transport error).
pub const CONNECTION_LOST: Close = Close {
    code: 1006,
    reason: "connection lost",
};
/// Pings went unanswered.
pub const PING_TIMEOUT: Close = Close {
    code: 4001,
    reason: "ping timeout",
};
/// The operator token expired: fetch a new one and reconnect (resume with the last position).
pub const TOKEN_EXPIRED: Close = Close {
    code: 4003,
    reason: "token expired",
};
/// Behind for longer than the slow-consumer deadline, or the outgoing queue overflowed.
pub const SLOW_CONSUMER: Close = Close {
    code: 4008,
    reason: "slow consumer",
};
/// A subscription with policy `disconnect` fell behind past the client's bound.
pub const BACKLOG_OVERFLOW: Close = Close {
    code: 4009,
    reason: "backlog overflow",
};
