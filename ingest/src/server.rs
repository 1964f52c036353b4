//! The server: shared state, our own accept loop (hyper, with upgrades), routes served by warp,
//! background jobs, and graceful shutdown.
//!
//! We accept connections ourselves rather than through `warp::serve` because warp cannot size
//! the WebSocket read buffer (128 KiB per connection by default), has no TLS, and does not track
//! upgraded sockets at shutdown (see `shared/CRATES.md`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::auth::Authority;
use crate::config::Config;
use crate::devices::{Eviction, Registry};
use crate::limits::{ConnectRate, ConnectionLimit};
use crate::store::{Presence, Store};
use crate::telemetry as m;
use crate::writer::{Writer, WriterConfig};

/// The remote address of an HTTP connection, as a request extension.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// The socket of the connection a request came on, as a request extension, so that the
/// streaming routes (device and dashboard sockets, SSE) can set their own socket options.
#[derive(Clone, Copy, Debug)]
pub struct ConnSocket(RawFd);

impl ConnSocket {
    /// Caps the unsent bytes the kernel holds for this connection (`TCP_NOTSENT_LOWAT`; 0 leaves
    /// the socket as it is): writes wait once that much is queued unsent, so a dashboard that
    /// cannot keep up is seen as behind by the live hub (and coalesced) while what it missed is
    /// kilobytes, not megabytes, old. Bytes in flight are not capped, unlike `SO_SNDBUF`.
    pub fn limit_unsent(self, bytes: u32) {
        if bytes == 0 {
            return;
        }
        // SAFETY: a ConnSocket is made only for requests of the connection that owns the socket,
        // and a handler runs inside that connection's future, which closes the socket only when
        // it ends: the descriptor is open whenever a handler can call this.
        let fd = unsafe { BorrowedFd::borrow_raw(self.0) };
        if let Err(e) = socket2::SockRef::from(&fd).set_tcp_notsent_lowat(bytes) {
            debug!(error = %e, "cannot set TCP_NOTSENT_LOWAT");
        }
    }
}

/// State shared by every connection and route.
pub struct App {
    /// Settings.
    pub config: Config,
    /// Token signing and verification.
    pub authority: Arc<Authority>,
    /// The time-series store.
    pub store: Arc<dyn Store>,
    /// Per-device state.
    pub registry: Registry,
    /// The writer queue; taken (dropped) at shutdown once connections are done.
    writer: Mutex<Option<Writer>>,
    /// Writer health for `/readyz` (kept after the writer handle is dropped).
    pub writer_health: Arc<crate::writer::WriterHealth>,
    /// Open device connections against `max_connections`.
    pub connections: Arc<ConnectionLimit>,
    /// The live fan-out hub (dashboards read from it; `publish_live` feeds it).
    pub hub: Arc<dashboard::Hub>,
    /// Open dashboard connections (WebSocket and SSE) against `live_max_clients`.
    pub live_connections: Arc<ConnectionLimit>,
    /// New connections per IP.
    pub connect_rate: ConnectRate,
    /// Upgraded sockets, awaited at shutdown.
    pub tracker: TaskTracker,
    /// Cancelled when shutdown starts.
    pub shutdown: CancellationToken,
    /// Why the store failed, once it has ([`Store::failed`]).
    store_failure: std::sync::OnceLock<String>,
    /// Cancelled once the store has failed: connections stop waiting for acks that cannot come,
    /// whether the server was running or already shutting down.
    pub store_failed_token: CancellationToken,
    /// Next connection id.
    next_conn_id: AtomicU64,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Display names of devices from `--device-name`, for the history API.
    pub device_names: std::collections::HashMap<u64, String>,
}

impl App {
    /// Decoder limits from the config.
    pub fn limits(&self) -> codecs::Limits {
        codecs::Limits {
            max_records: self.config.max_records,
            max_past_us: i64::try_from(self.config.max_past.0.as_micros()).unwrap_or(i64::MAX),
            max_future_us: i64::try_from(self.config.max_future.0.as_micros()).unwrap_or(i64::MAX),
        }
    }

    /// The writer handle, unless shutdown has released it.
    pub fn writer(&self) -> Option<Writer> {
        self.writer.lock().ok().and_then(|w| w.clone())
    }

    /// Whether the server is stopping because the store failed ([`Store::failed`]): connections
    /// close at once with "store unavailable" instead of waiting for acks that cannot come.
    pub fn store_failed(&self) -> bool {
        self.store_failure.get().is_some()
    }

    /// Records that the store failed (the first reason stands) and wakes whoever waits for it.
    fn record_store_failure(&self, why: String) {
        let _ = self.store_failure.set(why);
        self.store_failed_token.cancel();
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records a presence change in the background (presence never delays frames) and tells
    /// the live subscribers of that device at once.
    pub fn presence(&self, p: Presence) {
        self.hub.set_online(p.device_id, p.online, p.at_us);
        let store = self.store.clone();
        self.tracker.spawn(async move {
            if let Err(e) = store.set_presence(p).await {
                warn!(error = %e, "presence update failed");
            }
        });
    }

    /// Hands freshly accepted readings to the live fan-out hub, before storage (never blocks on
    /// dashboards). `_seq` is the device's frame sequence; live positions are the hub's own.
    pub fn publish_live(&self, device_id: u64, _seq: u64, frame: &codecs::Frame<'_>) {
        self.hub.publish_frame(device_id, frame);
    }
}

/// Errors that stop the server from starting, or stop it while it runs.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store can never commit again ([`Store::failed`]): the server stopped so that its
    /// supervisor restarts it. Devices resend what was not acknowledged.
    #[error(
        "the store failed, the server stopped (restart it; devices resend what was not acknowledged): {0}"
    )]
    StoreFailed(String),
    /// The token secret could not be loaded or created.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The data directory could not be created.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Builds the shared state and starts the writer; returns the writer task too.
pub fn build(
    config: Config,
    authority: Arc<Authority>,
    store: Arc<dyn Store>,
) -> (Arc<App>, tokio::task::JoinHandle<()>) {
    let (writer, writer_task) = Writer::spawn(
        store.clone(),
        WriterConfig {
            max_rows: config.batch_max_rows,
            max_delay: config.batch_max_delay.0,
            max_frames: config.queue_max_frames,
            max_bytes: config.queue_max_bytes,
        },
    );
    let hub = dashboard::Hub::new(config.hub_config());
    // Validated at config load; a bad entry here is skipped rather than stopping the server.
    let mut tags: std::collections::HashMap<u64, Vec<String>> = std::collections::HashMap::new();
    for (id, tag) in config.parsed_device_tags().unwrap_or_default() {
        tags.entry(id).or_default().push(tag);
    }
    for (id, t) in tags {
        hub.set_tags(id, t);
    }
    let device_names = config
        .parsed_device_names()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let metrics_handle = m::handle();
    for name in dashboard::metrics::ZERO_COUNTERS {
        metrics::counter!(*name).increment(0);
    }
    let app = Arc::new(App {
        hub,
        live_connections: ConnectionLimit::new(config.live_max_clients),
        registry: Registry::new(store.clone(), config.dedup_window),
        connections: ConnectionLimit::new(config.max_connections),
        connect_rate: ConnectRate::new(config.connect_rate_per_ip, config.connect_burst_per_ip),
        writer_health: writer.health.clone(),
        writer: Mutex::new(Some(writer)),
        tracker: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        store_failure: std::sync::OnceLock::new(),
        store_failed_token: CancellationToken::new(),
        next_conn_id: AtomicU64::new(0),
        metrics: metrics_handle,
        device_names,
        config,
        authority,
        store,
    });
    (app, writer_task)
}

/// Serves on `listener` until `shutdown` resolves, then shuts down gracefully: stop accepting,
/// let device connections drain and send their final acks, commit the writer queue, exit within
/// `shutdown_timeout`. If the store fails first ([`Store::failed`]), connections close at once
/// with "store unavailable" and the error is returned, for the process to exit with it.
pub async fn serve(
    app: Arc<App>,
    mut writer_task: tokio::task::JoinHandle<()>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let routes = warp::service(crate::routes::routes(app.clone()));
    let http = auto::Builder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let jobs = spawn_jobs(app.clone());
    tokio::pin!(shutdown);
    // Watches the store for the whole run, shutdown included.
    let watcher = {
        let app = app.clone();
        tokio::spawn(async move {
            let why = app.store.failed().await;
            error!(error = %why, "the store failed: stopping the server so that it is restarted");
            app.record_store_failure(why);
        })
    };
    loop {
        let (stream, addr) = tokio::select! {
            _ = &mut shutdown => break,
            _ = app.store_failed_token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        limit_send_buffer(&stream, app.config.tcp_send_buffer);
        let svc = routes.clone();
        let socket = ConnSocket(stream.as_raw_fd());
        let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(PeerAddr(addr));
            req.extensions_mut().insert(socket);
            let mut svc = svc.clone();
            async move { Ok::<_, Infallible>(tower_call(&mut svc, req).await) }
        });
        let conn = http
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, %addr, "http connection ended with an error");
            }
        });
    }
    info!("shutting down: no new connections; draining devices and the writer");
    drop(listener);
    app.shutdown.cancel();
    let deadline = app.config.shutdown_timeout.0;
    let started = tokio::time::Instant::now();
    app.tracker.close();
    // A store failing now cuts the connections' wait for their final acks (see `edge`).
    if tokio::time::timeout(deadline, app.tracker.wait())
        .await
        .is_err()
    {
        warn!("some device connections did not finish before the shutdown deadline");
    }
    // Every connection is done: release the writer so it commits what is queued and stops.
    if let Ok(mut w) = app.writer.lock() {
        w.take();
    }
    let left = deadline
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    tokio::select! {
        finished = tokio::time::timeout(left, &mut writer_task) => {
            if finished.is_err() {
                error!("writer did not finish before the shutdown deadline");
            }
        }
        // It would retry its batch forever against a store that will never take it.
        _ = app.store_failed_token.cancelled() => {}
    }
    writer_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
    for job in jobs {
        job.abort();
    }
    watcher.abort();
    // A failure met by the last writes of the shutdown (presence updates), which the watcher
    // may not have reported yet.
    if let Some(why) = app.store.failed().now_or_never() {
        app.record_store_failure(why);
    }
    match app.store_failure.get() {
        Some(why) => Err(ServerError::StoreFailed(why.clone())),
        None => {
            info!("shutdown complete");
            Ok(())
        }
    }
}

/// Caps the kernel send buffer of a connection (`SO_SNDBUF`; 0 keeps the kernel's autotuning,
/// up to 4 MiB on Linux): a peer that stops reading then blocks our writes after about `bytes`,
/// so a stalled dashboard is noticed by the live hub's backpressure promptly and costs little
/// kernel memory.
fn limit_send_buffer(stream: &tokio::net::TcpStream, bytes: usize) {
    if bytes > 0
        && let Err(e) = socket2::SockRef::from(stream).set_send_buffer_size(bytes)
    {
        debug!(error = %e, "cannot set SO_SNDBUF");
    }
}

async fn tower_call<S>(
    svc: &mut S,
    req: hyper::Request<hyper::body::Incoming>,
) -> warp::reply::Response
where
    S: tower_service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
            Error = Infallible,
        >,
{
    match svc.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Periodic jobs: retention, revocation reload, limiter upkeep, metrics upkeep.
fn spawn_jobs(app: Arc<App>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut jobs = Vec::new();
    if app.config.retention_days > 0 {
        let app = app.clone();
        jobs.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(app.config.retention_interval.0);
            loop {
                tick.tick().await;
                let cutoff =
                    crate::now_us() - i64::from(app.config.retention_days) * 86_400_000_000;
                match app.store.delete_older_than(cutoff).await {
                    Ok(n) => {
                        metrics::counter!(m::RETENTION_DELETED).increment(n);
                        if n > 0 {
                            info!(deleted = n, "retention job removed old readings");
                        }
                    }
                    Err(e) => warn!(error = %e, "retention job failed"),
                }
            }
        }));
    }
    {
        let app = app.clone();
        jobs.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(app.config.revocation_poll.0);
            loop {
                tick.tick().await;
                match app.store.revocations().await {
                    Ok(r) => app.authority.set_revocations(&r),
                    Err(e) => warn!(error = %e, "cannot reload revocations"),
                }
                evict_revoked(&app);
            }
        }));
    }
    {
        let app = app.clone();
        jobs.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                app.connect_rate.retain_recent();
                app.metrics.run_upkeep();
            }
        }));
    }
    jobs
}

/// Closes connections whose device tokens were revoked since they connected.
fn evict_revoked(app: &App) {
    for (_, device) in app.registry.connected() {
        let state = device.lock();
        if let Some(link) = &state.link
            && app.authority.is_revoked(&link.claims)
        {
            if let Ok(mut why) = link.evicted.lock() {
                *why = Some(Eviction::Revoked);
            }
            link.close.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_conn_socket_sets_the_unsent_limit_and_0_leaves_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        ConnSocket(stream.as_raw_fd()).limit_unsent(32 * 1024);
        let lowat = socket2::SockRef::from(&stream)
            .tcp_notsent_lowat()
            .expect("getsockopt");
        assert_eq!(lowat, 32 * 1024);
        ConnSocket(stream.as_raw_fd()).limit_unsent(0);
        let kept = socket2::SockRef::from(&stream)
            .tcp_notsent_lowat()
            .expect("getsockopt");
        assert_eq!(kept, 32 * 1024, "0 leaves the socket as it is");
    }
}
