//! Server configuration: one typed struct read from CLI flags, `TELEMUX_*` environment variables
//! and an optional TOML file (`--config`), in that order of precedence, with documented defaults
//! (`ingest --help` lists them all).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches, Parser, ValueEnum};
use serde::{Deserialize, Serialize};

pub use crate::cli::{Cli, Command, TokenCommand};

/// A duration written like `15s`, `250ms`, `2m`, `30d` (humantime syntax) in flags, env and TOML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = humantime::DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// SQLite durability on commit (see README, "Durability").
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// No ack before an fsync of the WAL after the commit: an acknowledged reading survives
    /// power loss.
    Full,
    /// fsync at WAL checkpoints only: survives a process crash, may lose the last commits on power loss.
    Normal,
}

/// Settings of the `ingest` server (the default command).
#[derive(Clone, Debug, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on for HTTP, device and dashboard WebSockets.
    #[arg(long, env = "TELEMUX_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Pending-connection queue of the listening socket (capped by the kernel's
    /// `net.core.somaxconn`). A fleet reconnecting at once after a restart overflows a short
    /// queue, and each dropped SYN costs its device a 1 s retransmission.
    #[arg(long, env = "TELEMUX_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,

    /// Directory of the embedded store and the token secret.
    #[arg(long, env = "TELEMUX_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Optional TOML file with any of these settings (keys as the long flag names, with `_`).
    #[arg(long = "config", env = "TELEMUX_CONFIG")]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,

    /// SQLite durability: `full` (acks wait for an fsync after the commit) or `normal` (survives
    /// process crashes only).
    #[arg(
        long,
        env = "TELEMUX_SQLITE_SYNCHRONOUS",
        value_enum,
        default_value = "full"
    )]
    pub sqlite_synchronous: SyncMode,

    /// Nice value (0-19) of the SQLite writer and checkpoint threads. Above 0, when the CPU is
    /// busy a long commit yields to the threads that send live readings (lower live latency)
    /// at some cost in ack latency; the writer still gets every idle cycle. Default 0: same
    /// priority as the rest (BENCHMARKS.md has the trade-off measured at 19).
    #[arg(long, env = "TELEMUX_STORAGE_NICE", default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub storage_nice: i32,

    /// Store: readings a staging table takes at least before the writer moves it into series
    /// order (README "Sizing the embedded store"). Larger: fewer, cheaper-per-reading moves, and
    /// more staged rows for a query to scan per device.
    #[arg(long, env = "TELEMUX_STAGING_ROWS", default_value_t = 1_000_000)]
    pub staging_rows: u64,

    /// Store: readings per device a staging table takes before it is moved, so a large fleet
    /// still moves several readings per series at once (the table's limit is this times the
    /// devices in it, between `staging_rows` and 16 x `staging_rows`).
    #[arg(long, env = "TELEMUX_STAGING_ROWS_PER_DEVICE", default_value_t = 1_000)]
    pub staging_rows_per_device: u64,

    /// Store: longest a staging table keeps readings before it is moved, if the row limit is not
    /// reached first (a quiet fleet).
    #[arg(long, env = "TELEMUX_STAGING_MAX_AGE", default_value = "30s")]
    pub staging_max_age: HumanDuration,

    /// Writer: commit a batch once it holds this many readings. Under overload each commit
    /// rewrites one index page per (device, channel) series it touches, so a batch holding
    /// several frames per device costs the writer less per reading (a quarter of the default
    /// queue; at light load `batch_max_delay` decides and batches stay small).
    #[arg(long, env = "TELEMUX_BATCH_MAX_ROWS", default_value_t = 262_144)]
    pub batch_max_rows: usize,

    /// Writer: commit a batch at the latest this long after its first frame arrived.
    #[arg(long, env = "TELEMUX_BATCH_MAX_DELAY", default_value = "5ms")]
    pub batch_max_delay: HumanDuration,

    /// Writer queue bound in frames; when full, device sockets stop being read (TCP backpressure).
    #[arg(long, env = "TELEMUX_QUEUE_MAX_FRAMES", default_value_t = 16_384)]
    pub queue_max_frames: usize,

    /// Writer queue bound in bytes of frames.
    #[arg(long, env = "TELEMUX_QUEUE_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub queue_max_bytes: usize,

    /// Dedup window per device, in sequence numbers (older frames are refused as `sequence_too_old`).
    #[arg(long, env = "TELEMUX_DEDUP_WINDOW", default_value_t = 1024)]
    pub dedup_window: u32,

    /// Largest WebSocket message accepted from a device, in bytes (larger: close 1009).
    #[arg(long, env = "TELEMUX_MAX_FRAME_BYTES", default_value_t = 128 * 1024)]
    pub max_frame_bytes: usize,

    /// Largest record count in one device frame (more: error `too_many_records`).
    #[arg(long, env = "TELEMUX_MAX_RECORDS", default_value_t = 4096)]
    pub max_records: u16,

    /// Oldest reading accepted, relative to the server clock.
    #[arg(long, env = "TELEMUX_MAX_PAST", default_value = "30days")]
    pub max_past: HumanDuration,

    /// Newest reading accepted, relative to the server clock.
    #[arg(long, env = "TELEMUX_MAX_FUTURE", default_value = "5m")]
    pub max_future: HumanDuration,

    /// Close a device connection (1007) after this many refused frames on it.
    #[arg(long, env = "TELEMUX_BAD_FRAME_LIMIT", default_value_t = 10)]
    pub bad_frame_limit: u32,

    /// Server ping interval on device connections.
    #[arg(long, env = "TELEMUX_PING_INTERVAL", default_value = "15s")]
    pub ping_interval: HumanDuration,

    /// Close a connection (4001 "ping timeout") after this many pings went unanswered.
    #[arg(long, env = "TELEMUX_MISSED_PONGS", default_value_t = 2)]
    pub missed_pongs: u32,

    /// Close a device connection (4002 "idle") that sent no frame for this long.
    #[arg(long, env = "TELEMUX_IDLE_TIMEOUT", default_value = "5m")]
    pub idle_timeout: HumanDuration,

    /// Most simultaneous device connections (more: HTTP 503 before upgrade).
    #[arg(long, env = "TELEMUX_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// New device connections per second allowed from one IP address (more: HTTP 429).
    #[arg(long, env = "TELEMUX_CONNECT_RATE_PER_IP", default_value_t = 1000)]
    pub connect_rate_per_ip: u32,

    /// Burst of new connections allowed from one IP address above the rate.
    #[arg(long, env = "TELEMUX_CONNECT_BURST_PER_IP", default_value_t = 2000)]
    pub connect_burst_per_ip: u32,

    /// Frames per second allowed per device (token bucket; more: close 4029 "rate limited").
    #[arg(long, env = "TELEMUX_DEVICE_FRAMES_PER_SEC", default_value_t = 200)]
    pub device_frames_per_sec: u32,

    /// Readings per second allowed per device (token bucket, burst of one second's worth).
    #[arg(
        long,
        env = "TELEMUX_DEVICE_READINGS_PER_SEC",
        default_value_t = 200_000
    )]
    pub device_readings_per_sec: u32,

    /// How far ahead of its frame and reading rates a device may get (the token buckets' depth,
    /// in seconds of its rate). Frames that waited in the socket while the server was slow to
    /// read, or unacked frames resent after a reconnect, arrive together; a device within its
    /// rate on average is not closed for them. 1s: the strictest bucket.
    #[arg(long, env = "TELEMUX_DEVICE_RATE_BURST", default_value = "10s")]
    pub device_rate_burst: HumanDuration,

    /// On SIGINT/SIGTERM, give connections and the writer this long to finish.
    #[arg(long, env = "TELEMUX_SHUTDOWN_TIMEOUT", default_value = "10s")]
    pub shutdown_timeout: HumanDuration,

    /// Delete readings older than this many days (0: keep forever).
    #[arg(long, env = "TELEMUX_RETENTION_DAYS", default_value_t = 90)]
    pub retention_days: u32,

    /// How often the retention job runs.
    #[arg(long, env = "TELEMUX_RETENTION_INTERVAL", default_value = "1h")]
    pub retention_interval: HumanDuration,

    /// How often token revocations are reloaded from the store (revoked devices are disconnected).
    #[arg(long, env = "TELEMUX_REVOCATION_POLL", default_value = "2s")]
    pub revocation_poll: HumanDuration,

    /// `/readyz` fails when the writer has had work but no commit for this long.
    #[arg(long, env = "TELEMUX_WRITER_STALL", default_value = "10s")]
    pub writer_stall: HumanDuration,

    /// Kernel send buffer per connection in bytes (`SO_SNDBUF`); 0 keeps the kernel's
    /// autotuning (up to 4 MiB on Linux). A small value bounds what a peer that stops reading
    /// costs in kernel memory and lets the live hub notice a stalled dashboard sooner.
    #[arg(long, env = "TELEMUX_TCP_SEND_BUFFER", default_value_t = 0)]
    pub tcp_send_buffer: usize,

    /// Most unsent bytes the kernel holds per device or dashboard connection (WebSocket or SSE;
    /// `TCP_NOTSENT_LOWAT`; 0 keeps the kernel's default, no limit below the send buffer; the
    /// history API keeps the default too). Unlike `--tcp-send-buffer` it does not
    /// cap bytes in flight, so throughput over long links is unchanged; it makes a dashboard
    /// that reads slower than its readings arrive push back on the live hub after this many
    /// bytes instead of megabytes, so it is coalesced while its view is still fresh.
    #[arg(long, env = "TELEMUX_TCP_NOTSENT_LOWAT", default_value_t = 32 * 1024)]
    pub tcp_notsent_lowat: u32,

    /// Live: how long a reading stays resumable after it arrived (the resume window).
    #[arg(long, env = "TELEMUX_LIVE_RESUME_WINDOW", default_value = "2m")]
    pub live_resume_window: HumanDuration,

    /// Live: byte bound of the shared log of live readings (36 bytes per reading; the oldest go
    /// first, so at high rates this, not the window, limits how far back a client can resume).
    #[arg(long, env = "TELEMUX_LIVE_LOG_MAX_BYTES", default_value_t = dashboard::config::DEFAULT_LOG_MAX_BYTES)]
    pub live_log_max_bytes: usize,

    /// Live: a client with more unsent readings than this is over its bound and the policy of
    /// its subscriptions applies (coalesce, drop_oldest, disconnect).
    #[arg(long, env = "TELEMUX_LIVE_MAX_BACKLOG_READINGS", default_value_t = dashboard::config::DEFAULT_MAX_BACKLOG_READINGS)]
    pub live_max_backlog_readings: usize,

    /// Live: the same bound in encoded bytes (28 per reading in binary, about 96 in JSON).
    #[arg(long, env = "TELEMUX_LIVE_MAX_BACKLOG_BYTES", default_value_t = dashboard::config::DEFAULT_MAX_BACKLOG_BYTES)]
    pub live_max_backlog_bytes: usize,

    /// Live: most readings in one data frame to a dashboard.
    #[arg(long, env = "TELEMUX_LIVE_MAX_BATCH_READINGS", default_value_t = dashboard::config::DEFAULT_MAX_BATCH_READINGS)]
    pub live_max_batch_readings: usize,

    /// Live: close a client still behind this long after it fell behind (4008 "slow consumer").
    #[arg(long, env = "TELEMUX_LIVE_SLOW_DEADLINE", default_value = "10s")]
    pub live_slow_deadline: HumanDuration,

    /// Live: server ping interval on dashboard WebSockets (SSE: a comment line); `missed_pongs`
    /// unanswered pings close the socket with 4001.
    #[arg(long, env = "TELEMUX_LIVE_PING_INTERVAL", default_value = "15s")]
    pub live_ping_interval: HumanDuration,

    /// Live: most dashboard connections (WebSocket and SSE together); more get HTTP 503.
    #[arg(long, env = "TELEMUX_LIVE_MAX_CLIENTS", default_value_t = 10_000)]
    pub live_max_clients: usize,

    /// Live: extra `Origin`s allowed on `/v1/live` (exact, like `https://ops.example.com`, or
    /// `*` for any; comma-separated in the environment). Requests without `Origin` (non-browser
    /// clients) and from the server's own host are always allowed; others get HTTP 403.
    #[arg(
        long = "live-allowed-origin",
        env = "TELEMUX_LIVE_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub live_allowed_origins: Vec<String>,

    /// Device tags for live tag subscriptions and `tag:` grants, as `ID:TAG` (repeatable;
    /// comma-separated in the environment), e.g. `--device-tag 7:line-a --device-tag 7:floor-2`.
    #[arg(
        long = "device-tag",
        env = "TELEMUX_DEVICE_TAGS",
        value_delimiter = ','
    )]
    pub device_tags: Vec<String>,

    /// Display names of devices in the history API, as `ID:NAME` (repeatable; comma-separated in
    /// the environment), e.g. `--device-name 7:pump-7`. Named devices are listed even before
    /// they first connect.
    #[arg(
        long = "device-name",
        env = "TELEMUX_DEVICE_NAMES",
        value_delimiter = ','
    )]
    pub device_names: Vec<String>,

    /// History API: largest `limit` (raw readings per `/v1/series` response; larger: HTTP 400).
    /// Bigger results are paged with `cursor`.
    #[arg(long, env = "TELEMUX_API_MAX_ROWS", default_value_t = 100_000)]
    pub api_max_rows: u32,

    /// History API: most buckets per series of an aggregate query, `(to - from) / step`
    /// (more: HTTP 400).
    #[arg(long, env = "TELEMUX_API_MAX_BUCKETS", default_value_t = 10_000)]
    pub api_max_buckets: u32,

    /// History API: longest `to - from` of one query (longer: HTTP 400).
    #[arg(long, env = "TELEMUX_API_MAX_RANGE", default_value = "366days")]
    pub api_max_range: HumanDuration,

    /// History API: most (device, channel) series in one `/v1/series` call (more: HTTP 400).
    #[arg(long, env = "TELEMUX_API_MAX_SERIES", default_value_t = 100)]
    pub api_max_series: u32,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A key in the TOML file is not a setting.
    #[error(
        "config file {path}: unknown setting `{key}` (settings are the long flag names with `_`)"
    )]
    UnknownKey {
        /// The file.
        path: String,
        /// The key.
        key: String,
    },
    /// A setting has an invalid value.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

impl Config {
    /// Builds the config from parsed arguments, then fills settings left at their default from
    /// the TOML file, if one is given. Flags and environment variables win over the file.
    pub fn from_matches(m: &ArgMatches) -> Result<Config, anyhow::Error> {
        let cfg = Config::from_arg_matches(m)?;
        let Some(path) = cfg.config_file.clone() else {
            cfg.validate()?;
            return Ok(cfg);
        };
        let show = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            path: show.clone(),
            reason: e.to_string(),
        })?;
        let file: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: show.clone(),
            reason: e.to_string(),
        })?;
        let mut merged = toml::Table::try_from(&cfg)?;
        for (key, value) in file {
            if !merged.contains_key(&key) {
                return Err(ConfigError::UnknownKey { path: show, key }.into());
            }
            if matches!(m.value_source(&key), Some(ValueSource::DefaultValue) | None) {
                merged.insert(key, value);
            }
        }
        let mut out: Config =
            merged
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::File {
                    path: show,
                    reason: e.to_string(),
                })?;
        out.config_file = Some(path);
        out.validate()?;
        Ok(out)
    }

    /// Range checks that clap's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("batch_max_rows", self.batch_max_rows),
            ("staging_rows", self.staging_rows as usize),
            ("queue_max_frames", self.queue_max_frames),
            ("max_connections", self.max_connections),
            ("listen_backlog", self.listen_backlog as usize),
            ("dedup_window", self.dedup_window as usize),
            ("device_frames_per_sec", self.device_frames_per_sec as usize),
            (
                "device_readings_per_sec",
                self.device_readings_per_sec as usize,
            ),
            ("connect_rate_per_ip", self.connect_rate_per_ip as usize),
            ("max_records", self.max_records as usize),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if !(0..=19).contains(&self.storage_nice) {
            return Err(ConfigError::Invalid {
                key: "storage_nice",
                reason: format!("{} is not a nice value from 0 to 19", self.storage_nice),
            });
        }
        if self.device_rate_burst.0 < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "device_rate_burst",
                reason: "must be at least 1s (a device may always send one second's worth at once)"
                    .into(),
            });
        }
        if self.queue_max_bytes < self.max_frame_bytes {
            return Err(ConfigError::Invalid {
                key: "queue_max_bytes",
                reason: format!(
                    "must be at least max_frame_bytes ({}) so one frame always fits",
                    self.max_frame_bytes
                ),
            });
        }
        self.hub_config()
            .validate()
            .and_then(|()| self.live_limits().validate())
            .map_err(|e| ConfigError::Invalid {
                key: e.key,
                reason: e.reason,
            })?;
        self.parsed_device_tags()?;
        self.parsed_device_names()?;
        let api = [
            ("api_max_rows", self.api_max_rows),
            ("api_max_buckets", self.api_max_buckets),
            ("api_max_series", self.api_max_series),
        ];
        for (key, v) in api {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.api_max_range.0.as_millis() < 1 {
            return Err(ConfigError::Invalid {
                key: "api_max_range",
                reason: "must be at least 1ms".into(),
            });
        }
        if self.live_max_clients == 0 {
            return Err(ConfigError::Invalid {
                key: "live_max_clients",
                reason: "must be at least 1".into(),
            });
        }
        if self.ping_interval.0.is_zero() {
            return Err(ConfigError::Invalid {
                key: "ping_interval",
                reason: "must be greater than 0".into(),
            });
        }
        Ok(())
    }

    /// Settings of the live hub.
    pub fn hub_config(&self) -> dashboard::HubConfig {
        dashboard::HubConfig {
            resume_window: self.live_resume_window.0,
            log_max_bytes: self.live_log_max_bytes,
        }
    }

    /// Bounds and timers of each live client.
    pub fn live_limits(&self) -> dashboard::ClientLimits {
        dashboard::ClientLimits {
            max_backlog_readings: self.live_max_backlog_readings,
            max_backlog_bytes: self.live_max_backlog_bytes,
            max_batch_readings: self.live_max_batch_readings,
            slow_deadline: self.live_slow_deadline.0,
            ping_interval: self.live_ping_interval.0,
            missed_pongs: self.missed_pongs,
        }
    }

    /// `device_tags` as (device id, tag) pairs.
    pub fn parsed_device_tags(&self) -> Result<Vec<(u64, String)>, ConfigError> {
        self.device_tags
            .iter()
            .map(|t| {
                t.split_once(':')
                    .and_then(|(id, tag)| Some((id.trim().parse().ok()?, tag.trim())))
                    .filter(|(_, tag)| !tag.is_empty() && !tag.contains('*'))
                    .map(|(id, tag)| (id, tag.to_string()))
                    .ok_or_else(|| ConfigError::Invalid {
                        key: "device_tags",
                        reason: format!("expected `ID:TAG` (tag without `*`), found `{t}`"),
                    })
            })
            .collect()
    }

    /// `device_names` as (device id, name) pairs; a later entry for the same id wins.
    pub fn parsed_device_names(&self) -> Result<Vec<(u64, String)>, ConfigError> {
        self.device_names
            .iter()
            .map(|t| {
                t.split_once(':')
                    .and_then(|(id, name)| Some((id.trim().parse().ok()?, name.trim())))
                    .filter(|(_, name)| !name.is_empty())
                    .map(|(id, name)| (id, name.to_string()))
                    .ok_or_else(|| ConfigError::Invalid {
                        key: "device_names",
                        reason: format!("expected `ID:NAME` with a non-empty name, found `{t}`"),
                    })
            })
            .collect()
    }

    /// A config with every default, for tests and embedding (`data_dir` as given).
    pub fn with_defaults(data_dir: impl Into<PathBuf>) -> Config {
        let data_dir = data_dir.into();
        let cli = Cli::parse_from(["ingest", "--data-dir", &data_dir.to_string_lossy()]);
        cli.serve
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn load(args: &[&str]) -> Result<Config, anyhow::Error> {
        let m = Cli::command().try_get_matches_from(args)?;
        Config::from_matches(&m)
    }

    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("telemux.toml");
        std::fs::write(&path, text).expect("write");
        let p = path.display().to_string();
        (dir, p)
    }

    #[test]
    fn defaults_match_the_documented_interface() {
        let c = load(&["ingest"]).expect("defaults");
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.sqlite_synchronous, SyncMode::Full);
        assert_eq!(c.ping_interval.0, Duration::from_secs(15));
        assert_eq!(c.missed_pongs, 2);
        assert_eq!(c.listen_backlog, 4096);
        assert_eq!(c.storage_nice, 0);
        assert_eq!(c.staging_rows, 1_000_000);
        assert_eq!(c.staging_rows_per_device, 1_000);
        assert_eq!(c.staging_max_age.0, Duration::from_secs(30));
        assert_eq!(c.device_frames_per_sec, 200);
        assert_eq!(c.device_rate_burst.0, Duration::from_secs(10));
        assert_eq!(c.tcp_notsent_lowat, 32 * 1024);
        let e = load(&["ingest", "--device-rate-burst", "500ms"]).expect_err("burst range");
        assert!(e.to_string().contains("device_rate_burst"), "{e}");
    }

    #[test]
    fn toml_file_fills_settings_that_flags_leave_at_default() {
        let (_d, path) =
            file("batch_max_rows = 123\nping_interval = \"3s\"\nlisten = \"127.0.0.1:9\"\n");
        let c = load(&["ingest", "--config", &path, "--listen", "127.0.0.1:7"]).expect("load");
        assert_eq!(c.batch_max_rows, 123, "from the file");
        assert_eq!(c.ping_interval.0, Duration::from_secs(3), "from the file");
        assert_eq!(
            c.listen.to_string(),
            "127.0.0.1:7",
            "the flag beats the file"
        );
    }

    #[test]
    fn unknown_or_invalid_file_settings_are_named() {
        let (_d, path) = file("batch_max_rowz = 1\n");
        let e = load(&["ingest", "--config", &path]).expect_err("unknown key");
        assert!(
            e.to_string().contains("unknown setting `batch_max_rowz`"),
            "{e}"
        );
        let (_d, path) = file("batch_max_rows = 0\n");
        let e = load(&["ingest", "--config", &path]).expect_err("range");
        assert!(e.to_string().contains("batch_max_rows"), "{e}");
        let e = load(&["ingest", "--staging-rows", "0"]).expect_err("staging rows");
        assert!(e.to_string().contains("staging_rows"), "{e}");
        let (_d, path) = file("storage_nice = 20\n");
        let e = load(&["ingest", "--config", &path]).expect_err("nice range");
        assert!(e.to_string().contains("storage_nice"), "{e}");
        let e = load(&["ingest", "--storage-nice", "20"]).expect_err("flag range");
        assert!(e.to_string().contains("storage-nice"), "{e}");
        let (_d, path) = file("ping_interval = \"soon\"\n");
        let e = load(&["ingest", "--config", &path]).expect_err("bad duration");
        assert!(
            e.to_string().contains("ping_interval") || e.to_string().contains("soon"),
            "{e}"
        );
    }

    #[test]
    fn device_names_and_api_limits_are_checked() {
        let c = load(&[
            "ingest",
            "--device-name",
            "7:pump-7",
            "--device-name",
            "9: spare ",
        ])
        .expect("names");
        let names = c.parsed_device_names().expect("parsed");
        assert_eq!(names, vec![(7, "pump-7".into()), (9, "spare".into())]);
        assert_eq!(
            (c.api_max_rows, c.api_max_buckets, c.api_max_series),
            (100_000, 10_000, 100)
        );
        for bad in [
            ["--device-name", "pump"],
            ["--device-name", "7:"],
            ["--api-max-rows", "0"],
        ] {
            let e = load(&["ingest", bad[0], bad[1]]).expect_err(bad[1]);
            let key = if bad[0] == "--device-name" {
                "device_names"
            } else {
                "api_max_rows"
            };
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let e = load(&["ingest", "--listen", "nowhere"]).expect_err("bad addr");
        assert!(e.to_string().contains("--listen"), "{e}");
    }
}
