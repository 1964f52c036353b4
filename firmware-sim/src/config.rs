//! Simulator settings (flags and `SIM_*` environment variables), with documented defaults.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// A duration in humantime syntax (`250ms`, `60s`, `2m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = humantime::DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(Dur)
    }
}

/// Frame layout the devices send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// Generic telemetry batch: K records on channels 1..=K.
    Telemetry,
    /// Fixed environmental packets (4 readings each); K/4 packets per frame, at least one.
    Environment,
}

/// `firmware-sim` command line.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "firmware-sim",
    version,
    about = "Simulates a fleet of devices with good-firmware behaviour against a telemux ingest server and reports what was sent, acked and lost."
)]
pub struct SimConfig {
    /// Server base URL (`ws://HOST:PORT`); the device path `/v1/devices/ws` is appended unless given.
    #[arg(long, env = "SIM_URL", default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// Number of virtual devices.
    #[arg(long, env = "SIM_DEVICES", default_value_t = 10)]
    pub devices: u32,
    /// Device id of the first device; the others follow.
    #[arg(long, env = "SIM_FIRST_DEVICE", default_value_t = 1)]
    pub first_device: u64,
    /// Frames per second per device.
    #[arg(long, env = "SIM_RATE", default_value_t = 1.0)]
    pub rate: f64,
    /// Readings per frame.
    #[arg(long, env = "SIM_READINGS", default_value_t = 16)]
    pub readings: u16,
    /// Frame layout.
    #[arg(long, value_enum, default_value = "telemetry")]
    pub layout: Layout,
    /// How long devices generate frames (then they drain: wait for outstanding acks).
    #[arg(long, env = "SIM_DURATION", default_value = "10s")]
    pub duration: Dur,
    /// Latency histograms (ack and dashboard) leave out frames sent in the first `warmup` after
    /// the connection ramp, so a report shows steady state rather than the start-up burst of
    /// connects and subscribes. Every frame is still sent, acked and checked; 0: measure all.
    #[arg(long, env = "SIM_WARMUP", default_value = "0s")]
    pub warmup: Dur,
    /// Longest wait for outstanding acks after `duration`.
    #[arg(long, default_value = "15s")]
    pub drain_timeout: Dur,
    /// The server's token secret (`<data-dir>/token-secret`); tokens are minted from it.
    #[arg(long, env = "SIM_SECRET_FILE", conflicts_with = "token_file")]
    pub secret_file: Option<PathBuf>,
    /// A file of `DEVICE_ID TOKEN` lines, instead of `--secret-file`.
    #[arg(long, env = "SIM_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Source addresses to spread connections over (several 127.0.0.x when ephemeral ports run
    /// out); default: automatic (one per 20,000 devices on loopback).
    #[arg(long, value_delimiter = ',')]
    pub source_addrs: Vec<IpAddr>,
    /// Store-and-forward buffer per device, in frames; when full the oldest is dropped (loss).
    #[arg(long, default_value_t = 10_000)]
    pub buffer_frames: usize,
    /// Reconnect backoff base.
    #[arg(long, default_value = "100ms")]
    pub backoff_base: Dur,
    /// Reconnect backoff cap.
    #[arg(long, default_value = "10s")]
    pub backoff_cap: Dur,
    /// A connection that stayed up this long resets the backoff.
    #[arg(long, default_value = "10s")]
    pub stable_after: Dur,
    /// Reconnect when no server ping arrived for this long (0: watchdog off).
    #[arg(long, default_value = "45s")]
    pub watchdog: Dur,
    /// Connect this many devices per second at start (0: all at once).
    #[arg(long, default_value_t = 2000)]
    pub ramp: u32,
    /// Chaos: probability per device per second of dropping the connection.
    #[arg(long, default_value_t = 0.0)]
    pub disconnect_rate: f64,
    /// Chaos: probability per device per second of a reboot (RAM lost; sequence counter and
    /// flash buffer kept, counter resumes from its next persisted block).
    #[arg(long, default_value_t = 0.0)]
    pub reboot_rate: f64,
    /// Chaos: probability that a frame is corrupted in transit (the device resends it on the
    /// server's CRC error).
    #[arg(long, default_value_t = 0.0)]
    pub corrupt: f64,
    /// Chaos: probability per device per second of stalling (no reads, no sends) for `stall_for`.
    #[arg(long, default_value_t = 0.0)]
    pub stall_rate: f64,
    /// How long a stall lasts.
    #[arg(long, default_value = "5s")]
    pub stall_for: Dur,
    /// Chaos: device clock offset added to every timestamp (negative: `--clock-skew=-30s` is not
    /// supported by humantime; use `--clock-behind`).
    #[arg(long, default_value = "0s")]
    pub clock_skew: Dur,
    /// Apply `clock_skew` backwards (device clock behind the server's).
    #[arg(long)]
    pub clock_behind: bool,
    /// Dashboard load: clients on `/v1/live` (or MQTT subscribers with `--mqtt-broker`), each
    /// subscribed to `--dashboard-devices` random devices of the fleet.
    #[arg(long, env = "SIM_DASHBOARDS", default_value_t = 0)]
    pub dashboards: u32,
    /// Devices each `--dashboards` client subscribes to (distinct, chosen at random).
    #[arg(long, default_value_t = 10)]
    pub dashboard_devices: u32,
    /// Dashboard clients subscribed to all devices (`*`; MQTT: `devices/+/telemetry`).
    #[arg(long, default_value_t = 0)]
    pub dashboard_all: u32,
    /// Dashboard clients that subscribe to all devices and then never read (slow consumers).
    #[arg(long, default_value_t = 0)]
    pub stalled_dashboards: u32,
    /// Operator token for the dashboard clients; default: minted from `--secret-file`.
    #[arg(long, env = "SIM_OPERATOR_TOKEN")]
    pub operator_token: Option<String>,
    /// After the devices finished, how long dashboard clients wait for readings still on the way.
    #[arg(long, default_value = "5s")]
    pub dashboard_grace: Dur,
    /// MQTT broker `HOST:PORT`: devices publish their frames (QoS 1) to `devices/<id>/telemetry`
    /// there and dashboard clients subscribe there (QoS 0), instead of using `--url`.
    #[arg(long, env = "SIM_MQTT_BROKER")]
    pub mqtt_broker: Option<String>,
    /// Write the summary as JSON to this path (`-` for stdout).
    #[arg(long)]
    pub json: Option<String>,
    /// Print progress every this often when stdout is not a terminal.
    #[arg(long, default_value = "5s")]
    pub progress_every: Dur,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

impl SimConfig {
    /// The device WebSocket URL.
    pub fn device_url(&self) -> String {
        let base = self.url.trim_end_matches('/');
        if base.ends_with("/v1/devices/ws") {
            base.to_string()
        } else {
            format!("{base}/v1/devices/ws")
        }
    }

    /// The live (dashboard) WebSocket URL.
    pub fn live_url(&self) -> String {
        let base = self.url.trim_end_matches('/');
        let base = base.strip_suffix("/v1/devices/ws").unwrap_or(base);
        if base.ends_with("/v1/live") {
            base.to_string()
        } else {
            format!("{base}/v1/live")
        }
    }

    /// Dashboard clients of every kind.
    pub fn dashboard_clients(&self) -> u32 {
        self.dashboards
            .saturating_add(self.dashboard_all)
            .saturating_add(self.stalled_dashboards)
    }

    /// Checks combinations clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.mqtt_broker.is_none() && self.secret_file.is_none() && self.token_file.is_none() {
            return Err(
                "give --secret-file (the server's <data-dir>/token-secret) or --token-file".into(),
            );
        }
        if self.mqtt_broker.is_none()
            && self.dashboard_clients() > 0
            && self.secret_file.is_none()
            && self.operator_token.is_none()
        {
            return Err("dashboard clients need --secret-file or --operator-token".into());
        }
        if self.dashboards > 0 && !(1..=self.devices).contains(&self.dashboard_devices) {
            return Err(format!(
                "--dashboard-devices must be 1..=--devices ({}), got {}",
                self.devices, self.dashboard_devices
            ));
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err(format!(
                "--rate must be a positive number of frames per second, got {}",
                self.rate
            ));
        }
        if self.readings == 0 {
            return Err("--readings must be at least 1".into());
        }
        for (name, p) in [
            ("--disconnect-rate", self.disconnect_rate),
            ("--reboot-rate", self.reboot_rate),
            ("--corrupt", self.corrupt),
            ("--stall-rate", self.stall_rate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be a probability in [0, 1], got {p}"));
            }
        }
        if self.buffer_frames == 0 {
            return Err("--buffer-frames must be at least 1".into());
        }
        if self.backoff_cap.0 < self.backoff_base.0 {
            return Err("--backoff-cap must be at least --backoff-base".into());
        }
        Ok(())
    }

    /// Whether chaos options can legitimately make frames fail (errors are then expected).
    pub fn expects_errors(&self) -> bool {
        self.corrupt > 0.0 || self.clock_skew.0 > Duration::from_secs(240)
    }
}
