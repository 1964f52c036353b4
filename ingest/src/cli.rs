//! The command line of the `ingest` binary: the server settings ([`Config`]) flattened in, plus
//! the subcommands that mint and revoke tokens instead of serving.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, HumanDuration};

/// Command line of the `ingest` binary.
#[derive(Debug, Parser)]
#[command(
    name = "ingest",
    version,
    about = "telemux ingest server: devices stream binary frames over WebSocket; readings are stored exactly once and acknowledged after commit."
)]
pub struct Cli {
    /// Server settings (used when no subcommand is given).
    #[command(flatten)]
    pub serve: Config,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands of `ingest`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve,
    /// Mint or revoke tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `ingest token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a device token (alone on stdout).
    Device {
        /// Device id (the `device_id` its frames carry).
        device_id: u64,
        /// Directory holding the token secret.
        #[arg(long, env = "TELEMUX_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Token lifetime (`30d`, `12h`, ...); no expiry when omitted.
        #[arg(long)]
        ttl: Option<HumanDuration>,
    },
    /// Print an operator token for the live endpoints (`/v1/live`, `/v1/live/sse`) and the
    /// history API (`/v1/devices`, `/v1/series`), alone on stdout.
    Operator {
        /// Devices the token may watch: `*`, a device id, or `tag:<tag>` / `tag:<prefix>*`
        /// (repeatable; `*` when omitted).
        #[arg(long = "devices", value_name = "PATTERN")]
        devices: Vec<String>,
        /// Token lifetime (`12h`, `30d`, ...); at expiry live sockets close with 4003.
        #[arg(long, default_value = "12h")]
        ttl: HumanDuration,
        /// Operator name (the token subject is `operator:<name>`).
        #[arg(long, default_value = "operator")]
        name: String,
        /// Directory holding the token secret.
        #[arg(long, env = "TELEMUX_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Revoke every token issued so far to a device, or one token. Connected holders are
    /// disconnected within `--revocation-poll`.
    Revoke {
        /// Device id whose tokens (all issued until now) to revoke.
        #[arg(long, conflicts_with = "token", required_unless_present = "token")]
        device: Option<u64>,
        /// One token to revoke (the token string itself).
        #[arg(long)]
        token: Option<String>,
        /// Directory of the store.
        #[arg(long, env = "TELEMUX_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
}
