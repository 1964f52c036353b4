//! telemux ingest server: devices stream binary frames over WebSocket; readings are checked,
//! stored exactly once, and acknowledged only after commit.
//!
//! # Layout
//! - [`config`]: the one typed configuration (flags, `TELEMUX_*` env, TOML file).
//! - [`cli`]: the binary's command line (settings and token subcommands).
//! - [`auth`]: signed device/operator tokens, the secret file, revocation.
//! - [`routes`]: HTTP routes (warp): device WebSocket upgrade, `/healthz`, `/readyz`, `/metrics`.
//! - [`ui`]: the web dashboard: `/` and `/ui/<file>` from the files embedded in `dashboard::web`.
//! - [`edge`]: one task per device connection: check, admit, ack, heartbeat, limits.
//! - [`live`]: dashboard endpoints `/v1/live` (WebSocket) and `/v1/live/sse`: origin and operator
//!   token checks, then the `dashboard` crate's hub sessions.
//! - [`operator`]: operator authentication (origin, token, grants) shared by live and the API.
//! - [`api`]: the operator history API `/v1/devices`, `/v1/series`, `/v1/openapi.json`.
//! - [`devices`]: per-device state shared by the connection and the writer (dedup, acks).
//! - [`dedup`]: the per-device duplicate window.
//! - [`writer`]: the bounded queue and the batching writer (acks after commit).
//! - [`store`]: the storage trait, the embedded SQLite store, the conformance suite.
//! - [`limits`]: connection caps and rate limits.
//! - [`server`]: shared state, the accept loop, background jobs, graceful shutdown.
//! - [`telemetry`]: metric names and the Prometheus recorder.
//!
//! [`run`] is the whole server; the binary only parses arguments and binds the listener.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod dedup;
pub mod devices;
pub mod edge;
pub mod limits;
pub mod live;
pub mod operator;
pub mod routes;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod ui;
pub mod writer;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
pub use server::{App, ServerError};

/// Microseconds since the Unix epoch, from the system clock.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Binds the server's listening socket with a pending-connection queue of `backlog` (tokio's
/// `TcpListener::bind` fixes it at 1024, too short for a fleet reconnecting at once).
/// Must be called within a tokio runtime.
pub fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do on Unix: a restarted server can bind while old connections linger.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Opens the embedded store and the token secret under `config.data_dir`.
pub async fn open(
    config: &Config,
) -> Result<(Arc<auth::Authority>, Arc<dyn store::Store>), ServerError> {
    // The metrics recorder goes in before anything records: parts that keep metric handles
    // (the live hub) would otherwise hold ones that count nowhere.
    telemetry::handle();
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ServerError::DataDir {
        path: config.data_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let authority = Arc::new(auth::Authority::load_or_create(&config.data_dir)?);
    let options = store::sqlite::SqliteOptions {
        synchronous: match config.sqlite_synchronous {
            config::SyncMode::Full => store::sqlite::Synchronous::Full,
            config::SyncMode::Normal => store::sqlite::Synchronous::Normal,
        },
        writer_nice: config.storage_nice,
        staging: store::sqlite::StagingLimits {
            rows: config.staging_rows,
            rows_per_device: config.staging_rows_per_device,
            age: config.staging_max_age.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let store =
        store::sqlite::SqliteStore::open(&config.data_dir.join(store::sqlite::DB_FILE), options)?;
    let store: Arc<dyn store::Store> = Arc::new(store);
    let revocations = store.revocations().await?;
    authority.set_revocations(&revocations);
    Ok((authority, store))
}

/// Runs the server on `listener` until `shutdown` resolves, then shuts down gracefully; returns
/// [`ServerError::StoreFailed`] early if the store fails for good.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (authority, store) = open(&config).await?;
    let (app, writer_task) = server::build(config, authority, store);
    server::serve(app, writer_task, listener, shutdown).await
}
