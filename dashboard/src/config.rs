//! Settings of the hub and of each live client, with their documented defaults. The server maps
//! its own configuration (flags, environment, TOML) onto these.

use std::time::Duration;

/// Default resume window: how long a reading stays in the log for clients that reconnect.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(120);
/// Default byte bound of the log (whichever of time and bytes is reached first evicts).
/// 256 MiB hold 7.4M readings (36 bytes each: record, arrival tick, per-device link): two
/// minutes at ~60k readings/s.
pub const DEFAULT_LOG_MAX_BYTES: usize = 256 * 1024 * 1024;
/// Default bound of one client's backlog, in readings.
pub const DEFAULT_MAX_BACKLOG_READINGS: usize = 4096;
/// Default bound of one client's backlog, in encoded bytes.
pub const DEFAULT_MAX_BACKLOG_BYTES: usize = 1024 * 1024;
/// Default most readings per data frame sent to a client.
pub const DEFAULT_MAX_BATCH_READINGS: usize = 1024;
/// Default time a client may stay behind before it is closed with 4008 "slow consumer".
pub const DEFAULT_SLOW_DEADLINE: Duration = Duration::from_secs(10);
/// Default server ping interval on live sockets (and SSE comment heartbeat).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(15);
/// Default number of unanswered pings after which a socket is closed with 4001.
pub const DEFAULT_MISSED_PONGS: u32 = 2;

/// Settings of the shared log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubConfig {
    /// Readings older than this (by arrival) are evicted; a client may resume within it.
    pub resume_window: Duration,
    /// The log never holds more than this many bytes of readings; the oldest go first.
    pub log_max_bytes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            resume_window: DEFAULT_RESUME_WINDOW,
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
        }
    }
}

/// Per-client bounds and timers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// A client whose unsent readings exceed this count is over its bound: the policy of its
    /// subscriptions applies (coalesce, drop oldest, disconnect).
    pub max_backlog_readings: usize,
    /// Same bound in encoded bytes (28 per reading in binary, about 96 in JSON).
    pub max_backlog_bytes: usize,
    /// Most readings in one data frame (a client that is behind gets full frames).
    pub max_batch_readings: usize,
    /// A client still behind this long after it first fell behind is closed (4008).
    pub slow_deadline: Duration,
    /// Server ping (WebSocket) or comment (SSE) interval.
    pub ping_interval: Duration,
    /// Unanswered pings before the socket is closed (4001); 0 disables the check.
    pub missed_pongs: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_backlog_readings: DEFAULT_MAX_BACKLOG_READINGS,
            max_backlog_bytes: DEFAULT_MAX_BACKLOG_BYTES,
            max_batch_readings: DEFAULT_MAX_BATCH_READINGS,
            slow_deadline: DEFAULT_SLOW_DEADLINE,
            ping_interval: DEFAULT_PING_INTERVAL,
            missed_pongs: DEFAULT_MISSED_PONGS,
        }
    }
}

/// A setting out of its range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid live setting `{key}`: {reason}")]
pub struct ConfigError {
    /// The setting.
    pub key: &'static str,
    /// What was expected and what was found.
    pub reason: String,
}

impl HubConfig {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.resume_window < Duration::from_secs(1) {
            return Err(ConfigError {
                key: "resume_window",
                reason: format!("must be at least 1s, found {:?}", self.resume_window),
            });
        }
        let min = 2 * crate::log::CHUNK_BYTES;
        if self.log_max_bytes < min {
            return Err(ConfigError {
                key: "log_max_bytes",
                reason: format!(
                    "must be at least {min} (two log chunks), found {}",
                    self.log_max_bytes
                ),
            });
        }
        Ok(())
    }
}

impl ClientLimits {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_batch_readings == 0 || self.max_batch_readings > usize::from(u16::MAX) {
            return Err(ConfigError {
                key: "max_batch_readings",
                reason: format!(
                    "must be 1..=65535 (a frame's count is 16 bits), found {}",
                    self.max_batch_readings
                ),
            });
        }
        if self.max_backlog_readings < self.max_batch_readings {
            return Err(ConfigError {
                key: "max_backlog_readings",
                reason: format!(
                    "must be at least max_batch_readings ({}), found {}",
                    self.max_batch_readings, self.max_backlog_readings
                ),
            });
        }
        let one_frame = self.max_batch_readings * codecs::LiveRecord::SIZE;
        if self.max_backlog_bytes < one_frame {
            return Err(ConfigError {
                key: "max_backlog_bytes",
                reason: format!(
                    "must hold one full frame ({one_frame} bytes), found {}",
                    self.max_backlog_bytes
                ),
            });
        }
        if self.ping_interval.is_zero() {
            return Err(ConfigError {
                key: "ping_interval",
                reason: "must be greater than 0".into(),
            });
        }
        if self.slow_deadline.is_zero() {
            return Err(ConfigError {
                key: "slow_deadline",
                reason: "must be greater than 0".into(),
            });
        }
        Ok(())
    }
}
