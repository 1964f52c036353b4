//! Metric names and the Prometheus recorder. Every refusal, drop and limit is counted here so
//! `/metrics` tells an operator what the server did and why.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Device WebSocket connections open now (gauge).
pub const CONNECTIONS: &str = "telemux_device_connections";
/// Device connections accepted (counter).
pub const CONNECTIONS_OPENED: &str = "telemux_device_connections_opened_total";
/// Device connections closed, by close `code` (counter).
pub const CONNECTIONS_CLOSED: &str = "telemux_device_connections_closed_total";
/// Frames accepted for storage (counter).
pub const FRAMES_ACCEPTED: &str = "telemux_frames_accepted_total";
/// Readings accepted for storage (counter).
pub const READINGS_ACCEPTED: &str = "telemux_readings_accepted_total";
/// Frames recognised as duplicates and acknowledged again without storing (counter).
pub const FRAMES_DUPLICATE: &str = "telemux_frames_duplicate_total";
/// Frames refused, by `reason` (counter).
pub const FRAMES_REFUSED: &str = "telemux_frames_refused_total";
/// Ack frames sent (counter).
pub const ACKS_SENT: &str = "telemux_acks_sent_total";
/// Requests or connections refused by a limit, by `limit` (counter).
pub const RATE_LIMITED: &str = "telemux_rate_limited_total";
/// Upgrade requests refused for authentication, by `code` (counter).
pub const AUTH_FAILURES: &str = "telemux_auth_failures_total";
/// Connections closed because pings went unanswered (counter).
pub const ZOMBIES_CULLED: &str = "telemux_zombies_culled_total";
/// Connections closed for sending no frame within the idle timeout (counter).
pub const IDLE_CLOSED: &str = "telemux_idle_closed_total";
/// Readings durably stored (counted when their batch is acked) (counter).
pub const ROWS_STORED: &str = "telemux_rows_stored_total";
/// Readings per committed batch (histogram).
pub const BATCH_ROWS: &str = "telemux_writer_batch_rows";
/// Seconds per batch commit; under `--sqlite-synchronous full` without the fsync that its acks
/// then wait for (`telemux_store_fsync_seconds`) (histogram).
pub const COMMIT_SECONDS: &str = "telemux_writer_commit_seconds";
/// Seconds from a frame's acceptance (queue space reserved) to its ack: batching wait, the
/// commit ahead of it, its own commit and the fsync after it (histogram). What a device sees,
/// minus the network.
pub const ACK_WAIT_SECONDS: &str = "telemux_writer_ack_wait_seconds";
/// Failed commit attempts (retried; nothing is dropped), and batches that could not be made
/// durable (a failed fsync: never acked) (counter).
pub const COMMIT_ERRORS: &str = "telemux_writer_commit_errors_total";
/// Frames waiting for the writer (gauge).
pub const QUEUE_FRAMES: &str = "telemux_writer_queue_frames";
/// Bytes of frames waiting for the writer (gauge).
pub const QUEUE_BYTES: &str = "telemux_writer_queue_bytes";
/// Readings in the staging table batches append to, not yet moved into series order (gauge).
pub const STAGED_READINGS: &str = "telemux_store_staged_readings";
/// Readings moved from staging into series order (counter).
pub const MOVED_READINGS: &str = "telemux_store_moved_readings_total";
/// Seconds per move transaction: how long a move step holds the write lock (histogram).
pub const MOVE_SECONDS: &str = "telemux_store_move_seconds";
/// Seconds per fsync of the WAL that acks wait for under `--sqlite-synchronous full`; one fsync
/// covers every commit that returned before it started (histogram).
pub const FSYNC_SECONDS: &str = "telemux_store_fsync_seconds";
/// Readings deleted by the retention job (counter).
pub const RETENTION_DELETED: &str = "telemux_retention_deleted_total";

/// History API requests answered, by `route` and `status` (counter).
pub const API_REQUESTS: &str = "telemux_api_requests_total";
/// History API requests refused or failed, by `route` and `code` (counter; a stream that
/// fails after its first byte counts here with code `stream_aborted`).
pub const API_ERRORS: &str = "telemux_api_errors_total";

/// Histogram buckets for batch sizes (readings).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 8192.0, 16384.0, 65536.0, 262144.0,
];
/// Histogram buckets for commit latency (seconds).
const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];
/// Histogram buckets for ack waits (seconds): fine around a 25 ms target.
const ACK_WAIT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25,
    0.5, 1.0, 5.0,
];

/// Unlabelled counters exported (at 0) before their first event.
const ZERO_COUNTERS: &[&str] = &[
    CONNECTIONS_OPENED,
    FRAMES_ACCEPTED,
    READINGS_ACCEPTED,
    FRAMES_DUPLICATE,
    ACKS_SENT,
    ZOMBIES_CULLED,
    IDLE_CLOSED,
    ROWS_STORED,
    COMMIT_ERRORS,
    MOVED_READINGS,
    RETENTION_DELETED,
];
/// Gauges exported (at 0) before their first update.
const ZERO_GAUGES: &[&str] = &[CONNECTIONS, QUEUE_FRAMES, QUEUE_BYTES, STAGED_READINGS];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns the handle that renders `/metrics`.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(BATCH_ROWS.into()),
                    BATCH_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(COMMIT_SECONDS.into()),
                        COMMIT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(MOVE_SECONDS.into()),
                        COMMIT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(FSYNC_SECONDS.into()),
                        COMMIT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(ACK_WAIT_SECONDS.into()),
                        ACK_WAIT_BUCKETS,
                    )
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (an embedding program's).
            let _ = metrics::set_global_recorder(recorder);
            // Export the unlabelled series at 0 from the start: a series that only appears with
            // its first event hides that event from `rate()`/`increase()` and from alerts.
            for name in ZERO_COUNTERS {
                metrics::counter!(*name).increment(0);
            }
            for name in ZERO_GAUGES {
                metrics::gauge!(*name).increment(0.0);
            }
            handle
        })
        .clone()
}
