//! Metric names of the live hub. The server installs the recorder; these only name the series.
//! Every overflow outcome is counted by subscription `kind` (device, devices, all, tag) and
//! `policy` (coalesce, drop_oldest, disconnect): nothing is dropped silently.

/// Live clients connected now, by `transport` (ws, sse) (gauge).
pub const CLIENTS: &str = "telemux_live_clients";
/// Live clients closed, by close `reason` (counter).
pub const CLIENTS_CLOSED: &str = "telemux_live_clients_closed_total";
/// Readings appended to the hub (counter).
pub const READINGS_PUBLISHED: &str = "telemux_live_readings_published_total";
/// Readings delivered to clients, counted once per client (counter).
pub const READINGS_FANNED_OUT: &str = "telemux_live_readings_fanned_out_total";
/// Data frames sent to clients, by `format` (binary, json) (counter).
pub const FRAMES_SENT: &str = "telemux_live_frames_sent_total";
/// Encoded-frame cache lookups, by `result` (hit, miss) (counter).
pub const ENCODE_CACHE: &str = "telemux_live_encode_cache_total";
/// Times a client fell behind past its bound, by `kind` and `policy` (counter).
pub const OVERFLOWS: &str = "telemux_live_overflows_total";
/// Readings dropped by coalescing (older values of a (device, channel)), by `kind` (counter).
pub const COALESCED_READINGS: &str = "telemux_live_coalesced_readings_total";
/// Readings dropped by the `drop_oldest` policy, by `kind` (counter).
pub const DROPPED_READINGS: &str = "telemux_live_dropped_readings_total";
/// `gap` messages sent, by `reason` (counter).
pub const GAPS: &str = "telemux_live_gaps_total";
/// Clients closed by the `disconnect` policy, by `kind` (counter).
pub const POLICY_DISCONNECTS: &str = "telemux_live_policy_disconnects_total";
/// Clients closed with 4008 "slow consumer" (behind past the deadline) (counter).
pub const SLOW_CONSUMER_DISCONNECTS: &str = "telemux_live_slow_consumer_disconnects_total";
/// Resume requests, by `outcome` (exact, gap) (counter).
pub const RESUMES: &str = "telemux_live_resumes_total";
/// Refused control messages, by error `code` (counter).
pub const CONTROL_ERRORS: &str = "telemux_live_control_errors_total";
/// Presence events a client task missed (it was re-sent the presence of its devices) (counter).
pub const PRESENCE_LAGGED: &str = "telemux_live_presence_lagged_total";
/// Clients registered in the hub's routing table (woken by their devices' publishes) (gauge).
pub const ROUTED_CLIENTS: &str = "telemux_live_routed_clients";
/// Client wake-ups sent by publishes (one per publish per routed client) (counter).
pub const WAKEUPS: &str = "telemux_live_wakeups_total";
/// Readings held in the hub log (gauge).
pub const LOG_READINGS: &str = "telemux_live_log_readings";
/// Bytes allocated by the hub log (gauge).
pub const LOG_BYTES: &str = "telemux_live_log_bytes";
/// Readings evicted from the hub log (by time or bytes) (counter).
pub const LOG_EVICTED: &str = "telemux_live_log_evicted_total";

/// Unlabelled counters a server may export at 0 from the start.
pub const ZERO_COUNTERS: &[&str] = &[
    READINGS_PUBLISHED,
    READINGS_FANNED_OUT,
    WAKEUPS,
    SLOW_CONSUMER_DISCONNECTS,
    LOG_EVICTED,
];
