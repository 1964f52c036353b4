//! Dashboard load: starts the dashboard clients (WebSocket on `/v1/live`, or MQTT subscribers
//! with `--mqtt-broker`) before the devices, tells them when the devices are done, and sums
//! what their checkers saw into the report.
//!
//! Client kinds: `devices` (`--dashboards`, each on `--dashboard-devices` random devices), `all`
//! (`--dashboard-all`, every device) and `stalled` (`--stalled-dashboards`: subscribe to every
//! device, then never read).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::check::{Checker, Counts};
use crate::config::SimConfig;
use crate::device::Fleet;
use crate::stats::{Latency, latency_histogram};

/// Clients connecting and subscribing at the same time.
const CONNECT_CONCURRENCY: usize = 64;
/// Longest wait for every client to be subscribed before the devices start anyway.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// After the devices are done, how often a client checks whether it has everything.
const COMPLETE_CHECK: Duration = Duration::from_millis(100);

/// What a dashboard client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClientKind {
    /// Subscribed to some devices.
    Devices,
    /// Subscribed to every device.
    All,
    /// Subscribed to every device, never reads.
    Stalled,
}

impl ClientKind {
    /// Report name.
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Devices => "devices",
            ClientKind::All => "all",
            ClientKind::Stalled => "stalled",
        }
    }
}

/// One client to start.
#[derive(Clone, Debug)]
pub struct ClientPlan {
    /// Client number (MQTT client id, seed).
    pub number: u32,
    /// Its kind.
    pub kind: ClientKind,
    /// Devices it subscribes to; empty: every device.
    pub devices: Vec<u64>,
}

/// How a client ended.
#[derive(Debug)]
pub struct ClientResult {
    /// Its kind.
    pub kind: ClientKind,
    /// Whether it connected and subscribed.
    pub connected: bool,
    /// What it saw (clients that read).
    pub checker: Option<Checker>,
    /// Close codes the server sent, one per connection it ended (1006: without a close frame).
    pub closes: Vec<u16>,
    /// Reconnects (with resume) after the server closed the connection during the run.
    pub reconnects: u64,
    /// Reconnect attempts that failed.
    pub reconnect_failures: u64,
    /// Why it could not start.
    pub error: Option<String>,
}

impl ClientResult {
    /// A client that has not connected yet.
    pub fn new(kind: ClientKind) -> ClientResult {
        ClientResult {
            kind,
            connected: false,
            checker: None,
            closes: Vec::new(),
            reconnects: 0,
            reconnect_failures: 0,
            error: None,
        }
    }
}

/// When a reading client stops: once the devices are done, as soon as it has everything or
/// after `--dashboard-grace`.
#[derive(Debug)]
pub struct Finish {
    /// `--dashboard-grace`.
    grace: Duration,
    /// Set when the devices are done.
    deadline: Option<Instant>,
}

impl Finish {
    /// Not finishing yet.
    pub fn new(grace: Duration) -> Finish {
        Finish {
            grace,
            deadline: None,
        }
    }

    /// Resolves when the client should check whether it is done: once when the devices are
    /// done, then every [`COMPLETE_CHECK`].
    pub async fn tick(&mut self, done: &mut watch::Receiver<bool>) {
        match self.deadline {
            None => {
                let _ = done.wait_for(|d| *d).await;
                self.deadline = Some(Instant::now() + self.grace);
            }
            Some(_) => tokio::time::sleep(COMPLETE_CHECK).await,
        }
    }

    /// Starts the grace time if the devices are done (for a client that is not waiting in
    /// [`Finish::tick`]).
    pub fn note_done(&mut self, done: &watch::Receiver<bool>) {
        if self.deadline.is_none() && *done.borrow() {
            self.deadline = Some(Instant::now() + self.grace);
        }
    }

    /// Whether the grace time is over.
    pub fn over(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// A u64 sent as a JSON string or number (positions are strings).
pub fn json_u64(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// The clients a configuration asks for, with their random devices (seeded per client, so the
/// same settings give the same subscriptions).
pub fn plans(cfg: &SimConfig) -> Vec<ClientPlan> {
    let mut out = Vec::new();
    let k = cfg.dashboard_devices.min(cfg.devices) as usize;
    for number in 0..cfg.dashboards {
        let mut rng = SmallRng::seed_from_u64(0xDA5B_0A2D ^ u64::from(number));
        let mut devices: Vec<u64> = rand::seq::index::sample(&mut rng, cfg.devices as usize, k)
            .into_iter()
            .map(|i| cfg.first_device + i as u64)
            .collect();
        devices.sort_unstable();
        out.push(ClientPlan {
            number,
            kind: ClientKind::Devices,
            devices,
        });
    }
    for (kind, n) in [
        (ClientKind::All, cfg.dashboard_all),
        (ClientKind::Stalled, cfg.stalled_dashboards),
    ] {
        for _ in 0..n {
            out.push(ClientPlan {
                number: out.len() as u32,
                kind,
                devices: Vec::new(),
            });
        }
    }
    out
}

/// The running dashboard clients.
pub struct Dashboards {
    /// Client tasks.
    tasks: JoinSet<ClientResult>,
    /// Set to true when the devices are done.
    done: watch::Sender<bool>,
    /// Clients started.
    clients: usize,
}

impl Dashboards {
    /// Starts every client and waits until each is subscribed (or failed), at most
    /// [`READY_TIMEOUT`]. `token`: the operator token (WebSocket clients).
    pub async fn start(fleet: Arc<Fleet>, token: Option<Arc<str>>) -> Dashboards {
        let plans = plans(&fleet.cfg);
        let clients = plans.len();
        let (done, done_rx) = watch::channel(false);
        let (ready_tx, mut ready_rx) = mpsc::channel::<()>(clients.max(1));
        let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let mut tasks = JoinSet::new();
        for plan in plans {
            let fleet = fleet.clone();
            let token = token.clone();
            let ready = ready_tx.clone();
            let done = done_rx.clone();
            let permits = permits.clone();
            tasks.spawn(async move {
                let permit = permits.acquire_owned().await;
                let (tx, mut rx) = mpsc::channel::<()>(1);
                let run = async {
                    match (&fleet.cfg.mqtt_broker, token) {
                        (Some(_), _) => {
                            crate::mqtt::run_subscriber(fleet.clone(), plan, tx, done).await
                        }
                        (None, Some(token)) => {
                            crate::live::run(fleet.clone(), token, plan, tx, done).await
                        }
                        (None, None) => {
                            let _ = tx.send(()).await;
                            let mut r = ClientResult::new(plan.kind);
                            r.error = Some("no operator token".into());
                            r
                        }
                    }
                };
                tokio::pin!(run);
                // Hold the connect permit until this client is subscribed, then pass it on.
                let mut permit = Some(permit);
                loop {
                    tokio::select! {
                        r = &mut run => {
                            if permit.take().is_some() {
                                let _ = ready.try_send(());
                            }
                            return r;
                        }
                        Some(()) = rx.recv(), if permit.is_some() => {
                            drop(permit.take());
                            let _ = ready.send(()).await;
                        }
                    }
                }
            });
        }
        drop(ready_tx);
        let until = Instant::now() + READY_TIMEOUT;
        for _ in 0..clients {
            match tokio::time::timeout_at(until, ready_rx.recv()).await {
                Ok(Some(())) => {}
                _ => break,
            }
        }
        Dashboards {
            tasks,
            done,
            clients,
        }
    }

    /// Tells the clients the devices are done; waits for them and sums up what they saw.
    /// `generating`: how long the devices generated (for the delivery rate).
    pub async fn finish(mut self, fleet: &Fleet, generating: Duration) -> DashboardSummary {
        let _ = self.done.send(true);
        let mut acc = Accumulator::default();
        while let Some(r) = self.tasks.join_next().await {
            match r {
                Ok(r) => acc.add(r),
                Err(_) => acc.panicked += 1,
            }
        }
        acc.summary(fleet, self.clients, generating)
    }
}

/// Per kind: counts and latency.
#[derive(Default)]
struct KindAcc {
    /// Clients of this kind.
    clients: u64,
    /// Of those, connected and subscribed.
    connected: u64,
    /// Summed counts.
    counts: Counts,
    /// Merged latency.
    latency: Option<Histogram<u64>>,
    /// Close codes, by code.
    closes: BTreeMap<String, u64>,
    /// Reconnects after a close during the run.
    reconnects: u64,
}

/// Sums client results.
#[derive(Default)]
struct Accumulator {
    /// By kind.
    kinds: BTreeMap<ClientKind, KindAcc>,
    /// Close codes the server sent, by code.
    closes: BTreeMap<String, u64>,
    /// Setup errors, by message.
    errors: BTreeMap<String, u64>,
    /// Client tasks that panicked.
    panicked: u64,
    /// Reconnects after a close during the run.
    reconnects: u64,
    /// Reconnect attempts that failed.
    reconnect_failures: u64,
}

impl Accumulator {
    fn add(&mut self, r: ClientResult) {
        let k = self.kinds.entry(r.kind).or_default();
        k.clients += 1;
        k.connected += u64::from(r.connected);
        if let Some(c) = &r.checker {
            k.counts.add(&c.counts);
            merge(&mut k.latency, &c.latency);
        }
        for code in &r.closes {
            *self.closes.entry(code.to_string()).or_default() += 1;
            *k.closes.entry(code.to_string()).or_default() += 1;
        }
        k.reconnects += r.reconnects;
        self.reconnects += r.reconnects;
        self.reconnect_failures += r.reconnect_failures;
        if let Some(e) = r.error {
            let short: String = e.chars().take(120).collect();
            *self.errors.entry(short).or_default() += 1;
        }
    }

    fn summary(self, fleet: &Fleet, clients: usize, generating: Duration) -> DashboardSummary {
        let mut total = Counts::default();
        let mut latency = None;
        let mut by_kind = BTreeMap::new();
        let mut connect_failures = self.panicked;
        for (kind, k) in &self.kinds {
            connect_failures += k.clients - k.connected;
            if *kind != ClientKind::Stalled {
                total.add(&k.counts);
                if let Some(h) = &k.latency {
                    merge(&mut latency, h);
                }
            }
            by_kind.insert(
                kind.name().to_string(),
                KindSummary {
                    clients: k.clients,
                    connected: k.connected,
                    readings_received: k.counts.readings_received,
                    readings_expected: k.counts.readings_expected,
                    readings_missed: k.counts.readings_missed,
                    gaps: k.counts.gaps(),
                    duplicates: k.counts.duplicates(),
                    latency_ms: Latency::from_histogram(k.latency.as_ref()),
                    closes_by_code: k.closes.clone(),
                    reconnects: k.reconnects,
                },
            );
        }
        let gaps = total.gaps();
        let duplicates = total.duplicates();
        let secs = generating.as_secs_f64().max(0.001);
        DashboardSummary {
            dashboard_transport: match (clients, &fleet.cfg.mqtt_broker) {
                (0, _) => "none",
                (_, Some(_)) => "mqtt",
                (_, None) => "websocket",
            }
            .into(),
            dashboard_clients: clients as u64,
            dashboard_connect_failures: connect_failures,
            dashboard_readings_received: total.readings_received,
            dashboard_readings_expected: total.readings_expected,
            dashboard_readings_missed: total.readings_missed,
            dashboard_readings_per_s: total.readings_received as f64 / secs,
            dashboard_latency_ms: Latency::from_histogram(latency.as_ref()),
            dashboard_gaps: gaps,
            dashboard_duplicates: duplicates,
            dashboard_gaps_by_kind: BTreeMap::from([
                ("gap_message".into(), total.gap_messages),
                ("coalesced".into(), total.coalesced_messages),
                ("reading_hole".into(), total.reading_holes),
                ("position_hole".into(), total.position_holes),
            ]),
            dashboard_duplicates_by_kind: BTreeMap::from([
                ("repeated_reading".into(), total.repeated_readings),
                ("position_backwards".into(), total.positions_backwards),
            ]),
            dashboard_coalesced_readings: total.coalesced_dropped,
            dashboard_unexpected_readings: total.unexpected_readings,
            dashboard_by_client_kind: by_kind,
            dashboard_closes_by_code: self.closes,
            dashboard_reconnects: self.reconnects,
            dashboard_reconnect_failures: self.reconnect_failures,
            dashboard_errors: self.errors,
            dashboard_ok: connect_failures == 0
                && gaps == 0
                && duplicates == 0
                && total.readings_missed == 0
                && total.unexpected_readings == 0,
        }
    }
}

fn merge(into: &mut Option<Histogram<u64>>, h: &Histogram<u64>) {
    match into {
        Some(total) => {
            let _ = total.add(h);
        }
        None => {
            let mut fresh = latency_histogram();
            let _ = fresh.add(h);
            *into = Some(fresh);
        }
    }
}

/// One client kind in the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KindSummary {
    /// Clients of this kind.
    pub clients: u64,
    /// Of those, connected and subscribed.
    pub connected: u64,
    /// Readings received.
    pub readings_received: u64,
    /// Readings that should have arrived.
    pub readings_expected: u64,
    /// Readings that never arrived.
    pub readings_missed: u64,
    /// Gaps (messages and holes).
    pub gaps: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Device-to-dashboard latency.
    pub latency_ms: Latency,
    /// Close codes the server sent to these clients, by code.
    pub closes_by_code: BTreeMap<String, u64>,
    /// Reconnects (with resume) after the server closed a connection during the run.
    pub reconnects: u64,
}

/// The dashboard part of the report (flattened into the summary; zeros without dashboards).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DashboardSummary {
    /// `websocket`, `mqtt`, or `none`.
    pub dashboard_transport: String,
    /// Dashboard clients started (all kinds).
    pub dashboard_clients: u64,
    /// Clients that could not connect and subscribe.
    pub dashboard_connect_failures: u64,
    /// Readings received by reading clients (`devices` and `all`; duplicates included).
    pub dashboard_readings_received: u64,
    /// Readings those clients should have received.
    pub dashboard_readings_expected: u64,
    /// Readings that never arrived.
    pub dashboard_readings_missed: u64,
    /// Readings received per second of device generation time.
    pub dashboard_readings_per_s: f64,
    /// Device send to dashboard receive, of each frame's last reading.
    pub dashboard_latency_ms: Latency,
    /// Gaps: `gap` and `coalesced` messages plus holes in a device's sequence.
    pub dashboard_gaps: u64,
    /// Duplicates: readings again or out of order, positions not increasing.
    pub dashboard_duplicates: u64,
    /// Gaps by kind (`position_hole` is informational: all-device clients only, not summed).
    pub dashboard_gaps_by_kind: BTreeMap<String, u64>,
    /// Duplicates by kind.
    pub dashboard_duplicates_by_kind: BTreeMap<String, u64>,
    /// Readings the server said it coalesced away.
    pub dashboard_coalesced_readings: u64,
    /// Readings of devices a client did not subscribe to (or that no device sent).
    pub dashboard_unexpected_readings: u64,
    /// The same, by client kind (`devices`, `all`, `stalled`).
    pub dashboard_by_client_kind: BTreeMap<String, KindSummary>,
    /// Close codes the server sent to dashboard clients, by code.
    pub dashboard_closes_by_code: BTreeMap<String, u64>,
    /// Reconnects (with resume) after the server closed a reading client during the run.
    pub dashboard_reconnects: u64,
    /// Reconnect attempts that failed.
    pub dashboard_reconnect_failures: u64,
    /// Why clients could not start, by message.
    pub dashboard_errors: BTreeMap<String, u64>,
    /// No reading client failed, missed, or got a duplicate (stalled clients excluded).
    pub dashboard_ok: bool,
}

impl DashboardSummary {
    /// Rows for the summary table.
    pub fn rows(&self) -> Vec<(String, String)> {
        let l = &self.dashboard_latency_ms;
        let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        let mut rows = vec![
            (
                "dashboard clients / failed".into(),
                format!(
                    "{} / {} ({})",
                    self.dashboard_clients,
                    self.dashboard_connect_failures,
                    self.dashboard_transport
                ),
            ),
            (
                "dashboard readings received / expected".into(),
                format!(
                    "{} / {}",
                    self.dashboard_readings_received, self.dashboard_readings_expected
                ),
            ),
            (
                "dashboard readings/s".into(),
                format!("{:.0}", self.dashboard_readings_per_s),
            ),
            (
                "dashboard latency ms p50/p90/p99/p99.9/max".into(),
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2} / {:.2}",
                    l.p50, l.p90, l.p99, l.p999, l.max
                ),
            ),
            (
                "dashboard gaps (msg/coalesced/holes)".into(),
                format!(
                    "{} ({} / {} / {}), {} readings missed",
                    self.dashboard_gaps,
                    get(&self.dashboard_gaps_by_kind, "gap_message"),
                    get(&self.dashboard_gaps_by_kind, "coalesced"),
                    get(&self.dashboard_gaps_by_kind, "reading_hole"),
                    self.dashboard_readings_missed
                ),
            ),
            (
                "dashboard duplicates".into(),
                self.dashboard_duplicates.to_string(),
            ),
        ];
        for (kind, k) in &self.dashboard_by_client_kind {
            rows.push((
                format!("  dashboards {kind}"),
                format!(
                    "{} clients, {} / {} readings, {} gaps, {} dups, p99 {:.2} ms, {} reconnects",
                    k.clients,
                    k.readings_received,
                    k.readings_expected,
                    k.gaps,
                    k.duplicates,
                    k.latency_ms.p99,
                    k.reconnects
                ),
            ));
        }
        for (code, n) in &self.dashboard_closes_by_code {
            rows.push((format!("  dashboard close {code}"), n.to_string()));
        }
        for (e, n) in &self.dashboard_errors {
            rows.push((format!("  dashboard error: {e}"), n.to_string()));
        }
        rows
    }
}
