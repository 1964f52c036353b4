//! The device WebSocket edge: authentication before the upgrade, then one task per connection
//! that checks frames, admits them to the writer, sends acks after commit and errors at once,
//! keeps the heartbeat, and enforces the per-device limits.
//!
//! Close codes (also in the README):
//! - 1001 "going away": server shutdown (after the final ack).
//! - 1003 "binary frames only": a text message.
//! - 1007 "too many invalid frames": `bad_frame_limit` refused frames on this connection.
//! - 1008 "device id mismatch" / "token revoked": policy violations.
//! - 1009 "frame too large": a message over `max_frame_bytes`.
//! - 1011 "store unavailable": the device's state could not be loaded, or the store failed and
//!   the server is stopping (reconnect later and resend what was not acked).
//! - 4000 "replaced": a newer connection of the same device took over.
//! - 4001 "ping timeout": `missed_pongs` pings went unanswered.
//! - 4002 "idle timeout": no frame within `idle_timeout`.
//! - 4029 "rate limited": the device's frame or reading rate was exceeded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use codecs::{Direction, ErrorBody, FrameType, Reason};

use crate::dedup::Verdict;
use crate::devices::{Device, Eviction, Link};
use crate::limits::{ConnectionSlot, DeviceRate};
use crate::server::App;
use crate::store::Presence;
use crate::telemetry as m;
use crate::writer::Accepted;

/// How long one write to a device may take before the connection is considered dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a frame header's `seq` (u64, little-endian) lies (WIRE.md, `Header`).
const SEQ_BYTES: std::ops::Range<usize> = 16..24;

/// The socket type of an upgraded device connection.
pub type DeviceSocket = WebSocketStream<TokioIo<Upgraded>>;

/// A close code and reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    /// WebSocket close code.
    pub code: u16,
    /// Reason text sent with it.
    pub reason: &'static str,
}

/// Close codes the edge uses (documented in the module doc and the README).
pub mod close {
    use super::Close;
    /// Server shutdown.
    pub const GOING_AWAY: Close = Close {
        code: 1001,
        reason: "going away",
    };
    /// Text message received.
    pub const BINARY_ONLY: Close = Close {
        code: 1003,
        reason: "binary frames only",
    };
    /// Too many refused frames.
    pub const TOO_MANY_INVALID: Close = Close {
        code: 1007,
        reason: "too many invalid frames",
    };
    /// Frame device id differs from the token's.
    pub const DEVICE_MISMATCH: Close = Close {
        code: 1008,
        reason: "device id mismatch",
    };
    /// Token revoked while connected.
    pub const REVOKED: Close = Close {
        code: 1008,
        reason: "token revoked",
    };
    /// Message larger than allowed.
    pub const TOO_LARGE: Close = Close {
        code: 1009,
        reason: "frame too large",
    };
    /// Device state could not be loaded, or the store failed and the server stops.
    pub const STORE_UNAVAILABLE: Close = Close {
        code: 1011,
        reason: "store unavailable",
    };
    /// Replaced by a newer connection.
    pub const REPLACED: Close = Close {
        code: 4000,
        reason: "replaced",
    };
    /// Pings unanswered.
    pub const PING_TIMEOUT: Close = Close {
        code: 4001,
        reason: "ping timeout",
    };
    /// No frames.
    pub const IDLE: Close = Close {
        code: 4002,
        reason: "idle timeout",
    };
    /// Rate limit exceeded.
    pub const RATE_LIMITED: Close = Close {
        code: 4029,
        reason: "rate limited",
    };
}

/// Everything a connection task needs about its peer.
pub struct Peer {
    /// Connection id (in every log line of the connection).
    pub conn_id: u64,
    /// Authenticated device.
    pub device_id: u64,
    /// Remote address.
    pub addr: SocketAddr,
    /// The connection-count slot, released when the task ends.
    pub slot: ConnectionSlot,
    /// Token claims (revocation is re-checked against them).
    pub claims: crate::auth::Claims,
}

/// Runs one device connection to its end.
pub async fn run(app: Arc<App>, ws: DeviceSocket, peer: Peer) {
    let span =
        info_span!("device", conn = peer.conn_id, device = peer.device_id, peer = %peer.addr);
    async move {
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        metrics::counter!(m::CONNECTIONS_OPENED).increment(1);
        info!("device connected");
        let close = Connection::start(app, ws, &peer).await;
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        metrics::counter!(m::CONNECTIONS_CLOSED, "code" => close.code.to_string()).increment(1);
        info!(
            code = close.code,
            reason = close.reason,
            "device disconnected"
        );
    }
    .instrument(span)
    .await
}

/// State of one running connection.
struct Connection {
    app: Arc<App>,
    ws: DeviceSocket,
    device: Arc<Device>,
    device_id: u64,
    conn_id: u64,
    acks: watch::Receiver<u64>,
    evict: CancellationToken,
    evicted: Arc<std::sync::Mutex<Option<Eviction>>>,
    rate: DeviceRate,
    bad_frames: u32,
    out: Vec<u8>,
    /// A child of the server's shutdown token: polled at every frame, and a thousand
    /// connections polling the server's own token contend for its one lock.
    shutdown: CancellationToken,
    /// Per-frame counters, looked up once per connection (a `metrics::counter!` lookup hashes
    /// the name on every call).
    counters: FrameCounters,
}

/// The counters a connection bumps for every frame.
struct FrameCounters {
    frames: metrics::Counter,
    readings: metrics::Counter,
    acks: metrics::Counter,
}

impl FrameCounters {
    fn new() -> FrameCounters {
        FrameCounters {
            frames: metrics::counter!(m::FRAMES_ACCEPTED),
            readings: metrics::counter!(m::READINGS_ACCEPTED),
            acks: metrics::counter!(m::ACKS_SENT),
        }
    }
}

impl Connection {
    async fn start(app: Arc<App>, mut ws: DeviceSocket, peer: &Peer) -> Close {
        let device = match app.registry.get(peer.device_id).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "cannot load device state");
                let _ = send_close(&mut ws, close::STORE_UNAVAILABLE).await;
                return close::STORE_UNAVAILABLE;
            }
        };
        let evict = CancellationToken::new();
        let evicted = Arc::new(std::sync::Mutex::new(None));
        let acks = {
            let mut state = device.lock();
            if let Some(old) = state.link.take() {
                if let Ok(mut why) = old.evicted.lock() {
                    *why = Some(Eviction::Replaced);
                }
                old.close.cancel();
                debug!(old_conn = old.conn_id, "replacing older connection");
            }
            let (tx, rx) = watch::channel(state.acked);
            state.link = Some(Link {
                conn_id: peer.conn_id,
                acks: tx,
                close: evict.clone(),
                evicted: evicted.clone(),
                claims: peer.claims.clone(),
            });
            rx
        };
        let connected_at = crate::now_us();
        app.presence(Presence {
            device_id: peer.device_id,
            online: true,
            connected_at_us: connected_at,
            at_us: connected_at,
            remote_addr: peer.addr.to_string(),
        });
        let cfg = &app.config;
        let mut conn = Connection {
            rate: DeviceRate::new(
                cfg.device_frames_per_sec,
                cfg.device_readings_per_sec,
                cfg.device_rate_burst.0,
            ),
            app: app.clone(),
            ws,
            device,
            device_id: peer.device_id,
            conn_id: peer.conn_id,
            acks,
            evict,
            evicted,
            bad_frames: 0,
            out: Vec::with_capacity(64),
            shutdown: app.shutdown.child_token(),
            counters: FrameCounters::new(),
        };
        let close = conn.serve(&peer.claims).await;
        // Detach only if still ours (a replacement may have taken over already).
        let still_ours = {
            let mut state = conn.device.lock();
            let ours = state
                .link
                .as_ref()
                .is_some_and(|l| l.conn_id == conn.conn_id);
            if ours {
                state.link = None;
            }
            ours
        };
        if still_ours {
            let now = crate::now_us();
            app.presence(Presence {
                device_id: peer.device_id,
                online: false,
                connected_at_us: connected_at,
                at_us: now,
                remote_addr: peer.addr.to_string(),
            });
        }
        close
    }

    /// The connection's main loop; returns how it was closed.
    async fn serve(&mut self, claims: &crate::auth::Claims) -> Close {
        let cfg = &self.app.config;
        let ping_every = cfg.ping_interval.0;
        let idle = cfg.idle_timeout.0;
        let missed_limit = cfg.missed_pongs;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unanswered = 0u32;
        let mut idle_deadline = tokio::time::Instant::now() + idle;
        let shutdown = self.shutdown.clone();

        // Tell a reconnecting device at once what is already stored.
        let initial = self.device.lock().acked;
        if initial > 0 && self.send_ack(initial).await.is_err() {
            return close::GOING_AWAY;
        }

        let close = loop {
            tokio::select! {
                biased;
                _ = self.evict.cancelled() => {
                    let why = self.evicted.lock().ok().and_then(|w| *w);
                    break match why {
                        Some(Eviction::Revoked) => close::REVOKED,
                        _ => close::REPLACED,
                    };
                }
                _ = shutdown.cancelled() => {
                    self.drain_for_shutdown().await;
                    break if self.app.store_failed() {
                        close::STORE_UNAVAILABLE
                    } else {
                        close::GOING_AWAY
                    };
                }
                changed = self.acks.changed() => {
                    if changed.is_err() { break close::REPLACED; }
                    let ack = *self.acks.borrow_and_update();
                    if self.send_ack(ack).await.is_err() { return close::GOING_AWAY; }
                }
                _ = ping.tick() => {
                    if unanswered >= missed_limit {
                        metrics::counter!(m::ZOMBIES_CULLED).increment(1);
                        break close::PING_TIMEOUT;
                    }
                    if self.app.authority.is_revoked(claims) {
                        break close::REVOKED;
                    }
                    unanswered += 1;
                    if self.send(Message::Ping(Bytes::new())).await.is_err() { return close::GOING_AWAY; }
                }
                _ = tokio::time::sleep_until(idle_deadline) => {
                    metrics::counter!(m::IDLE_CLOSED).increment(1);
                    break close::IDLE;
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Binary(bytes))) => {
                        idle_deadline = tokio::time::Instant::now() + idle;
                        let started = tokio::time::Instant::now();
                        if let Some(close) = self.on_frame(bytes).await {
                            break close;
                        }
                        // Time spent waiting on a full writer queue is not the device's silence.
                        if started.elapsed() >= ping_every {
                            unanswered = 0;
                        }
                    }
                    Some(Ok(Message::Text(_))) => break close::BINARY_ONLY,
                    Some(Ok(Message::Pong(_))) => unanswered = 0,
                    Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) | None => return Close { code: 1000, reason: "closed by device" },
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => break close::TOO_LARGE,
                    Some(Err(e)) => {
                        debug!(error = %e, "connection error");
                        return Close { code: 1006, reason: "connection lost" };
                    }
                },
            }
        };
        let _ = send_close(&mut self.ws, close).await;
        close
    }

    /// Handles one binary message; `Some(close)` ends the connection.
    async fn on_frame(&mut self, bytes: Bytes) -> Option<Close> {
        let app = self.app.clone();
        let frame = match codecs::decode(
            &bytes,
            Direction::DeviceToServer,
            &app.limits(),
            crate::now_us(),
        ) {
            Ok(f) => f,
            Err(e) => {
                let reason = e.reason();
                metrics::counter!(m::FRAMES_REFUSED, "reason" => reason.name()).increment(1);
                let (expected, found) = e.expected_found();
                // The refused frame's `seq` whenever a whole header arrived, even if the type or
                // payload shape is wrong (WIRE.md: 0 only if the header could not be read), so the
                // device can drop that frame from its buffer.
                let seq = bytes
                    .get(SEQ_BYTES)
                    .filter(|_| bytes.len() >= codecs::Header::SIZE)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_le_bytes);
                let rejected = bytes.get(3).copied().unwrap_or(0);
                debug!(%e, seq, "frame refused");
                if self
                    .send_error(seq, ErrorBody::new(reason, rejected, expected, found))
                    .await
                    .is_err()
                {
                    return Some(close::GOING_AWAY);
                }
                self.bad_frames += 1;
                return (self.bad_frames >= app.config.bad_frame_limit)
                    .then_some(close::TOO_MANY_INVALID);
            }
        };
        let header = frame.header();
        let seq = header.seq.get();
        let frame_type = header.frame_type;
        if header.device_id.get() != self.device_id {
            metrics::counter!(m::FRAMES_REFUSED, "reason" => Reason::DeviceMismatch.name())
                .increment(1);
            warn!(
                frame_device = header.device_id.get(),
                "frame device id differs from the token's"
            );
            let body = ErrorBody::new(
                Reason::DeviceMismatch,
                frame_type,
                self.device_id,
                header.device_id.get(),
            );
            let _ = self.send_error(seq, body).await;
            return Some(close::DEVICE_MISMATCH);
        }
        let readings = frame.reading_count();
        if let Err(limit) = self.rate.check(readings) {
            metrics::counter!(m::RATE_LIMITED, "limit" => limit.label()).increment(1);
            metrics::counter!(m::FRAMES_REFUSED, "reason" => Reason::RateLimited.name())
                .increment(1);
            let allowed = match limit {
                crate::limits::DeviceLimit::Frames => app.config.device_frames_per_sec,
                crate::limits::DeviceLimit::Readings => app.config.device_readings_per_sec,
            };
            let _ = self
                .send_error(
                    seq,
                    ErrorBody::new(
                        Reason::RateLimited,
                        frame_type,
                        allowed.into(),
                        readings as u64,
                    ),
                )
                .await;
            return Some(close::RATE_LIMITED);
        }
        let Some(writer) = app.writer() else {
            return Some(close::GOING_AWAY);
        };
        // Backpressure: wait for queue space before accepting; meanwhile the socket is not read.
        let reservation = tokio::select! {
            r = writer.reserve(bytes.len()) => r,
            _ = self.evict.cancelled() => return None, // the loop sees the eviction next
            _ = self.shutdown.cancelled() => return None,
        };
        let verdict = self.device.lock().admit(seq);
        match verdict {
            Verdict::New => {
                self.counters.frames.increment(1);
                self.counters.readings.increment(readings as u64);
                let item = Accepted {
                    device_id: self.device_id,
                    seq,
                    received_us: crate::now_us(),
                    frame: bytes.clone(),
                    device: self.device.clone(),
                    reservation,
                };
                if writer.submit(item).is_err() {
                    // Only possible once the writer has stopped, i.e. during shutdown.
                    return Some(close::GOING_AWAY);
                }
                app.publish_live(self.device_id, seq, &frame);
                None
            }
            Verdict::Duplicate => {
                drop(reservation);
                metrics::counter!(m::FRAMES_DUPLICATE).increment(1);
                let acked = self.device.lock().acked;
                // Already committed: repeat the ack the device evidently missed. Otherwise the
                // commit of the original will ack it.
                if acked >= seq && self.send_ack(acked).await.is_err() {
                    return Some(close::GOING_AWAY);
                }
                None
            }
            Verdict::TooOld { lowest } => {
                drop(reservation);
                metrics::counter!(m::FRAMES_REFUSED, "reason" => Reason::SequenceTooOld.name())
                    .increment(1);
                let body = ErrorBody::new(Reason::SequenceTooOld, frame_type, lowest, seq);
                if self.send_error(seq, body).await.is_err() {
                    return Some(close::GOING_AWAY);
                }
                None
            }
        }
    }

    /// Shutdown: stop reading, wait (bounded) until everything accepted is committed, send the
    /// final ack. If the store has failed, no more acks can come: the final ack is what was
    /// durable before the failure, at once.
    async fn drain_for_shutdown(&mut self) {
        let deadline = tokio::time::Instant::now() + self.app.config.shutdown_timeout.0;
        loop {
            let (pending, acked) = {
                let s = self.device.lock();
                // `ack_value`, not only `acked`: the writer marks frames committed before it
                // publishes their ack, so between the two `acked` is stale.
                (!s.inflight.is_empty(), s.ack_value().max(s.acked))
            };
            if !pending || self.app.store_failed() {
                let latest = *self.acks.borrow_and_update();
                if latest.max(acked) > 0 {
                    let _ = self.send_ack(latest.max(acked)).await;
                }
                return;
            }
            tokio::select! {
                changed = tokio::time::timeout_at(deadline, self.acks.changed()) => {
                    if !matches!(changed, Ok(Ok(()))) {
                        return;
                    }
                }
                // No more acks can come: send what was durable.
                _ = self.app.store_failed_token.cancelled() => {}
            }
        }
    }

    async fn send(&mut self, msg: Message) -> Result<(), ()> {
        match tokio::time::timeout(SEND_TIMEOUT, self.ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    async fn send_ack(&mut self, seq: u64) -> Result<(), ()> {
        self.out.clear();
        codecs::encode_ack(&mut self.out, self.device_id, seq);
        self.counters.acks.increment(1);
        let msg = Message::Binary(Bytes::copy_from_slice(&self.out));
        self.send(msg).await
    }

    async fn send_error(&mut self, seq: u64, body: ErrorBody) -> Result<(), ()> {
        self.out.clear();
        codecs::encode_error(&mut self.out, self.device_id, seq, &body);
        let msg = Message::Binary(Bytes::copy_from_slice(&self.out));
        self.send(msg).await
    }
}

/// Sends a close frame (best effort, bounded in time).
pub async fn send_close(ws: &mut DeviceSocket, close: Close) -> Result<(), ()> {
    let frame = CloseFrame {
        code: CloseCode::from(close.code),
        reason: close.reason.into(),
    };
    match tokio::time::timeout(SEND_TIMEOUT, ws.close(Some(frame))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Frame type byte of an error frame, re-exported for tests.
pub const ERROR_FRAME: u8 = FrameType::Error as u8;
