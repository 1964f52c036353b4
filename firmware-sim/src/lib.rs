//! telemux fleet simulator.
//!
//! # Layout
//! - [`config`]: command-line settings.
//! - [`device`]: one virtual device (good-firmware behaviour and chaos).
//! - [`backoff`]: exponential backoff with full jitter.
//! - [`signal`]: plausible sensor values.
//! - [`token`]: device tokens from the server's secret or a token file.
//! - [`stats`]: shared counters, latency histograms and the summary report.
//! - [`ledger`]: what each device sent, frame by frame, for the dashboard checks.
//! - [`dashboards`]: dashboard load clients: plans, start before the devices, the report part.
//! - [`live`]: one dashboard client on the server's `/v1/live` WebSocket.
//! - [`check`]: checks one client's stream against the ledger (gaps, duplicates, latency).
//! - [`mqtt`]: the same devices and dashboards through an MQTT broker (`--mqtt-broker`).
//!
//! [`run`] runs a whole simulation and returns its [`stats::Summary`].

pub mod backoff;
pub mod check;
pub mod config;
pub mod dashboards;
pub mod device;
pub mod ledger;
pub mod live;
pub mod mqtt;
pub mod signal;
pub mod stats;
pub mod token;

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::SimConfig;
use crate::dashboards::Dashboards;
use crate::device::{Device, Fleet};
use crate::ledger::Ledger;
use crate::stats::{Stats, Summary};
use crate::token::Tokens;

/// Loopback connections per source address before another 127.0.0.x is used.
const DEVICES_PER_SOURCE: u32 = 20_000;

/// Why a simulation could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Settings are inconsistent.
    #[error("{0}")]
    Config(String),
    /// Tokens unavailable.
    #[error(transparent)]
    Token(#[from] token::TokenError),
}

fn broker_addr(broker: &str) -> Result<SocketAddr, SimError> {
    broker
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| SimError::Config(format!("--mqtt-broker {broker}: expected HOST:PORT")))
}

fn server_addr(url: &str) -> Result<SocketAddr, SimError> {
    let parsed = url::Url::parse(url).map_err(|e| SimError::Config(format!("--url {url}: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| SimError::Config(format!("--url {url}: no host")))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| SimError::Config(format!("--url {url}: cannot resolve {host}")))
}

/// Runs the simulation described by `cfg`: dashboard clients first (subscribed before any
/// device sends), then the devices; when the devices are done, the dashboards get
/// `--dashboard-grace` to receive what is still on the way.
pub async fn run(cfg: SimConfig) -> Result<Summary, SimError> {
    cfg.validate().map_err(SimError::Config)?;
    let tokens = match (&cfg.secret_file, &cfg.token_file) {
        (Some(s), _) => Tokens::from_secret_file(s)?,
        (None, Some(t)) => Tokens::from_token_file(t)?,
        (None, None) if cfg.mqtt_broker.is_some() => Tokens::None,
        (None, None) => {
            return Err(SimError::Config(
                "give --secret-file or --token-file".into(),
            ));
        }
    };
    let server = match &cfg.mqtt_broker {
        Some(b) => broker_addr(b)?,
        None => server_addr(&cfg.url)?,
    };
    let mut sources = cfg.source_addrs.clone();
    if sources.is_empty()
        && server.ip().is_loopback()
        && server.is_ipv4()
        && cfg.devices > DEVICES_PER_SOURCE
    {
        let n = cfg.devices.div_ceil(DEVICES_PER_SOURCE).min(250);
        sources = (1..=n)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
            .collect();
    }
    let stats = Arc::new(Stats::default());
    let clients = cfg.dashboard_clients();
    let ledger = (clients > 0).then(|| Arc::new(Ledger::new(cfg.first_device, cfg.devices)));
    let ramp = if cfg.ramp == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(f64::from(cfg.devices) / f64::from(cfg.ramp))
    };
    // `--warmup 0` measures everything, the ramp included.
    let warmup = if cfg.warmup.0.is_zero() {
        Duration::ZERO
    } else {
        ramp + cfg.warmup.0
    };
    let measure_from = Instant::now() + warmup;
    let measure_from_us = device::codecs_now_us() + warmup.as_micros() as i64;
    let dashboards = if clients > 0 {
        let token: Option<Arc<str>> = match (&cfg.operator_token, &cfg.mqtt_broker) {
            (_, Some(_)) => None,
            (Some(t), None) => Some(t.as_str().into()),
            (None, None) => Some(tokens.operator("firmware-sim")?.into()),
        };
        // The clients' view of the run: same settings, counters and ledger; no deadlines.
        let far = Instant::now() + Duration::from_secs(365 * 86_400);
        let view = Arc::new(Fleet {
            cfg: cfg.clone(),
            tokens: Tokens::None,
            stats: stats.clone(),
            server,
            sources: Vec::new(),
            stop_at: far,
            drain_until: far,
            ledger: ledger.clone(),
            measure_from,
            measure_from_us,
        });
        Some(Dashboards::start(view, token).await)
    } else {
        None
    };
    let started = Instant::now();
    let stop_at = started + ramp + cfg.duration.0;
    let fleet = Arc::new(Fleet {
        drain_until: stop_at + cfg.drain_timeout.0,
        stop_at,
        server,
        sources,
        stats,
        tokens,
        cfg: cfg.clone(),
        ledger,
        measure_from,
        measure_from_us,
    });
    let progress = (!cfg.quiet).then(|| tokio::spawn(progress(fleet.clone(), started)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cfg.devices {
        if cfg.ramp > 0 && i > 0 && i % cfg.ramp.max(1).div_ceil(10).max(1) == 0 {
            let due = started + Duration::from_secs_f64(f64::from(i) / f64::from(cfg.ramp));
            tokio::time::sleep_until(due).await;
        }
        tasks.spawn(Device::new(fleet.clone(), i).run());
    }
    while tasks.join_next().await.is_some() {}
    let device_time = started.elapsed();
    let generating = stop_at.saturating_duration_since(started);
    let dashboards = match dashboards {
        Some(d) => Some(d.finish(&fleet, generating).await),
        None => None,
    };
    if let Some(p) = progress {
        p.abort();
    }
    let mut summary = fleet
        .stats
        .summary(cfg.devices, device_time, cfg.expects_errors());
    summary.latency_warmup_s = warmup.as_secs_f64();
    if let Some(d) = dashboards {
        summary.ok = summary.ok && d.dashboard_ok;
        summary.dashboards = d;
    }
    Ok(summary)
}

async fn progress(fleet: Arc<Fleet>, started: Instant) {
    let tty = std::io::stderr().is_terminal();
    if tty {
        let bar = indicatif::ProgressBar::new_spinner();
        loop {
            bar.set_message(fleet.stats.progress_line(started.elapsed()));
            bar.tick();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    } else {
        loop {
            tokio::time::sleep(fleet.cfg.progress_every.0).await;
            eprintln!("{}", fleet.stats.progress_line(started.elapsed()));
        }
    }
}
