//! Counters shared by every virtual device, and the summary report built from them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::dashboards::DashboardSummary;

/// Live counters (relaxed atomics: read for progress, summed exactly at the end).
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames generated and sent at least once.
    pub frames_sent: AtomicU64,
    /// Readings in those frames.
    pub readings_sent: AtomicU64,
    /// Frames covered by an ack.
    pub frames_acked: AtomicU64,
    /// Readings in acked frames.
    pub readings_acked: AtomicU64,
    /// Frames dropped from a full store-and-forward buffer (loss).
    pub frames_dropped: AtomicU64,
    /// Frames sent again (after reconnects, or after a CRC error caused by `--corrupt`).
    pub frames_resent: AtomicU64,
    /// Frames the server refused for good (error frame other than a transient CRC error).
    pub frames_refused: AtomicU64,
    /// Connections re-established after the first one.
    pub reconnects: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Error frames received (any reason).
    pub errors: AtomicU64,
    /// Frames sent corrupted on purpose (`--corrupt`).
    pub corrupted: AtomicU64,
    /// Simulated reboots.
    pub reboots: AtomicU64,
    /// Simulated stalls.
    pub stalls: AtomicU64,
    /// Reconnects because no server ping arrived within the watchdog time.
    pub watchdog_reconnects: AtomicU64,
    /// Frames sent and not yet acked, dropped or refused.
    pub in_flight: AtomicU64,
    /// Readings received by dashboard clients (for the progress line).
    pub dashboard_readings: AtomicU64,
    /// Largest device-to-dashboard latency (microseconds, last reading of a frame) since the
    /// last progress line: shows when in a run the live path stalled.
    pub dashboard_max_latency_us: AtomicU64,
    /// Error frames by reason name.
    pub errors_by_reason: Mutex<BTreeMap<String, u64>>,
    /// Close codes received from the server, by code.
    pub closes_by_code: Mutex<BTreeMap<u16, u64>>,
    /// Ack latency (send to ack), microseconds; devices merge their own histograms in.
    pub ack_latency_us: Mutex<Option<Histogram<u64>>>,
}

/// A new latency histogram (1 us .. 10 min, 2 significant digits: within 1%). Every device and
/// dashboard client has its own; at 3 digits each took 170 KiB, and recording into 2,000 of
/// them missed the cache so often that it was 7% of the simulator's CPU at 100k readings/s.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 2).unwrap_or_else(|_| {
        Histogram::new(2).unwrap_or_else(|_| unreachable!("2 significant digits is valid"))
    })
}

impl Stats {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` from a gauge.
    pub fn sub(c: &AtomicU64, n: u64) {
        c.fetch_sub(n, Ordering::Relaxed);
    }

    /// Counts an error frame.
    pub fn error(&self, reason: &str) {
        Stats::inc(&self.errors);
        if let Ok(mut m) = self.errors_by_reason.lock() {
            *m.entry(reason.to_string()).or_default() += 1;
        }
    }

    /// Counts a close frame from the server.
    pub fn close(&self, code: u16) {
        if let Ok(mut m) = self.closes_by_code.lock() {
            *m.entry(code).or_default() += 1;
        }
    }

    /// Merges a device's latency histogram.
    pub fn merge_latency(&self, h: &Histogram<u64>) {
        if let Ok(mut g) = self.ack_latency_us.lock() {
            match g.as_mut() {
                Some(total) => {
                    let _ = total.add(h);
                }
                None => *g = Some(h.clone()),
            }
        }
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// One progress line.
    pub fn progress_line(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(0.001);
        let live = Stats::get(&self.dashboard_readings);
        let live_max = self.dashboard_max_latency_us.swap(0, Ordering::Relaxed);
        format!(
            "{:>6.1}s sent {} acked {} in-flight {} reconnects {} errors {} readings/s {:.0}{}",
            secs,
            Stats::get(&self.frames_sent),
            Stats::get(&self.frames_acked),
            Stats::get(&self.in_flight),
            Stats::get(&self.reconnects),
            Stats::get(&self.errors),
            Stats::get(&self.readings_acked) as f64 / secs,
            if live > 0 {
                format!(
                    " dashboard readings {live} max latency {:.1} ms",
                    live_max as f64 / 1000.0
                )
            } else {
                String::new()
            },
        )
    }

    /// The final summary.
    pub fn summary(&self, devices: u32, duration: Duration, expected_errors: bool) -> Summary {
        let lat = self.ack_latency_us.lock().ok().and_then(|g| g.clone());
        let secs = duration.as_secs_f64().max(0.001);
        let frames_sent = Stats::get(&self.frames_sent);
        let frames_acked = Stats::get(&self.frames_acked);
        let frames_dropped = Stats::get(&self.frames_dropped);
        let frames_refused = Stats::get(&self.frames_refused);
        let unacked = frames_sent.saturating_sub(frames_acked + frames_dropped + frames_refused);
        let errors = Stats::get(&self.errors);
        let lost = frames_dropped + unacked + if expected_errors { 0 } else { frames_refused };
        Summary {
            devices,
            duration_s: secs,
            frames_sent,
            frames_acked,
            readings_sent: Stats::get(&self.readings_sent),
            readings_acked: Stats::get(&self.readings_acked),
            frames_dropped,
            frames_resent: Stats::get(&self.frames_resent),
            frames_refused,
            frames_unacked: unacked,
            reconnects: Stats::get(&self.reconnects),
            connect_failures: Stats::get(&self.connect_failures),
            errors,
            errors_by_reason: self
                .errors_by_reason
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
            closes_by_code: self
                .closes_by_code
                .lock()
                .map(|m| m.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                .unwrap_or_default(),
            corrupted_sent: Stats::get(&self.corrupted),
            reboots: Stats::get(&self.reboots),
            stalls: Stats::get(&self.stalls),
            watchdog_reconnects: Stats::get(&self.watchdog_reconnects),
            frames_acked_per_s: frames_acked as f64 / secs,
            readings_acked_per_s: Stats::get(&self.readings_acked) as f64 / secs,
            ack_latency_ms: Latency::from_histogram(lat.as_ref()),
            latency_warmup_s: 0.0,
            lost,
            ok: lost == 0,
            dashboards: DashboardSummary::default(),
        }
    }
}

impl Latency {
    /// Percentiles of a histogram of microseconds (zeros without one).
    pub fn from_histogram(h: Option<&Histogram<u64>>) -> Latency {
        let q = |p: f64| h.map_or(0.0, |h| h.value_at_quantile(p) as f64 / 1000.0);
        Latency {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: h.map_or(0.0, |h| h.max() as f64 / 1000.0),
            samples: h.map_or(0, |h| h.len()),
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Number of samples.
    pub samples: u64,
}

/// What a run did (printed as a table; `--json` writes it as JSON).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    /// Virtual devices.
    pub devices: u32,
    /// Wall time of the run including the drain, seconds.
    pub duration_s: f64,
    /// Frames generated and sent.
    pub frames_sent: u64,
    /// Frames acked.
    pub frames_acked: u64,
    /// Readings generated and sent.
    pub readings_sent: u64,
    /// Readings acked.
    pub readings_acked: u64,
    /// Frames dropped from full buffers.
    pub frames_dropped: u64,
    /// Frames re-sent.
    pub frames_resent: u64,
    /// Frames refused for good by the server.
    pub frames_refused: u64,
    /// Frames still unacked at the end.
    pub frames_unacked: u64,
    /// Reconnects.
    pub reconnects: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// Error frames received.
    pub errors: u64,
    /// Error frames by reason.
    pub errors_by_reason: BTreeMap<String, u64>,
    /// Close frames received by code.
    pub closes_by_code: BTreeMap<String, u64>,
    /// Frames corrupted on purpose.
    pub corrupted_sent: u64,
    /// Simulated reboots.
    pub reboots: u64,
    /// Simulated stalls.
    pub stalls: u64,
    /// Watchdog reconnects.
    pub watchdog_reconnects: u64,
    /// Acked frames per second over the run.
    pub frames_acked_per_s: f64,
    /// Acked readings per second over the run.
    pub readings_acked_per_s: f64,
    /// Send-to-ack latency (of frames sent after the warm-up).
    pub ack_latency_ms: Latency,
    /// Seconds at the start (connection ramp + `--warmup`) left out of the latency histograms.
    pub latency_warmup_s: f64,
    /// Frames lost that the options did not ask to lose (dropped + unacked + unexpected refusals).
    pub lost: u64,
    /// `lost == 0`, and with dashboard clients `dashboard_ok` too.
    pub ok: bool,
    /// Dashboard clients (the `dashboard_*` keys).
    #[serde(flatten)]
    pub dashboards: DashboardSummary,
}

impl Summary {
    /// The summary as an aligned text table.
    pub fn table(&self) -> String {
        let l = &self.ack_latency_ms;
        let mut rows: Vec<(String, String)> = vec![
            ("devices".into(), self.devices.to_string()),
            ("duration".into(), format!("{:.1} s", self.duration_s)),
            (
                "latency measured after".into(),
                format!("{:.1} s (ramp + warm-up)", self.latency_warmup_s),
            ),
            (
                "frames sent / acked".into(),
                format!("{} / {}", self.frames_sent, self.frames_acked),
            ),
            (
                "readings sent / acked".into(),
                format!("{} / {}", self.readings_sent, self.readings_acked),
            ),
            (
                "acked frames/s".into(),
                format!("{:.0}", self.frames_acked_per_s),
            ),
            (
                "acked readings/s".into(),
                format!("{:.0}", self.readings_acked_per_s),
            ),
            (
                "ack latency ms p50/p90/p99/p99.9/max".into(),
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2} / {:.2}",
                    l.p50, l.p90, l.p99, l.p999, l.max
                ),
            ),
            ("frames resent".into(), self.frames_resent.to_string()),
            (
                "frames dropped (buffer full)".into(),
                self.frames_dropped.to_string(),
            ),
            ("frames refused".into(), self.frames_refused.to_string()),
            (
                "frames unacked at end".into(),
                self.frames_unacked.to_string(),
            ),
            (
                "reconnects / failed connects".into(),
                format!("{} / {}", self.reconnects, self.connect_failures),
            ),
            (
                "reboots / stalls / corrupted".into(),
                format!(
                    "{} / {} / {}",
                    self.reboots, self.stalls, self.corrupted_sent
                ),
            ),
            ("errors".into(), self.errors.to_string()),
        ];
        for (reason, n) in &self.errors_by_reason {
            rows.push((format!("  error {reason}"), n.to_string()));
        }
        for (code, n) in &self.closes_by_code {
            rows.push((format!("  close {code}"), n.to_string()));
        }
        if self.dashboards.dashboard_clients > 0 {
            rows.extend(self.dashboards.rows());
        }
        if self.dashboards.dashboard_clients > 0 {
            rows.push((
                "dashboard check".into(),
                if self.dashboards.dashboard_ok {
                    "ok".into()
                } else {
                    "FAILED  <-- gaps, duplicates or failed clients".into()
                },
            ));
        }
        rows.push((
            "LOST".into(),
            format!(
                "{}{}",
                self.lost,
                if self.lost == 0 {
                    ""
                } else {
                    "  <-- data loss"
                }
            ),
        ));
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<w$}  {v}\n"))
            .collect()
    }
}
