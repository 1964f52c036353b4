//! HTTP routes (warp filters): the device WebSocket upgrade, the live dashboard endpoints
//! (`/v1/live`, `/v1/live/sse`, see `live`), the history API (`/v1/devices`, `/v1/series`, see
//! `api`), the web dashboard (`/`, `/ui/...`, see `ui`), health, readiness and metrics.
//! Every refusal is an HTTP status with a JSON body `{"error": code, "message": text}`.

use std::convert::Infallible;
use std::sync::Arc;

use http::StatusCode;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::{debug, warn};
use warp::{Filter, Reply};

use crate::auth::AuthError;
use crate::edge::Peer;
use crate::server::{App, ConnSocket, PeerAddr};
use crate::telemetry as m;

/// WebSocket read buffer per device connection. Frames are small, so the library's 128 KiB
/// default would dominate memory at 10k+ connections; at 1 KiB an idle connection costs the
/// server about 7.6 KiB (BENCHMARKS.md), and a larger frame simply takes several reads.
const WS_READ_BUFFER: usize = 1024;

/// A JSON error response.
pub fn json_error(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
) -> warp::reply::Response {
    let body = serde_json::json!({"error": code, "message": message.into()});
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// A JSON error that asks the client to come back later (`Retry-After: seconds`).
pub fn retry_later(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    seconds: &'static str,
) -> warp::reply::Response {
    let mut r = json_error(status, code, message);
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static(seconds),
    );
    r
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade request with `Sec-WebSocket-Key`
/// `key`, naming the chosen subprotocol, if any.
pub fn switching_protocols(key: &str, subprotocol: Option<&'static str>) -> warp::reply::Response {
    let mut resp = warp::reply::reply().into_response();
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = subprotocol {
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(p),
        );
    }
    resp
}

/// Every route of the server.
pub fn routes(app: Arc<App>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let with_app = {
        let app = app.clone();
        warp::any().map(move || app.clone())
    };
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})).into_response());
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_app.clone())
        .then(readyz);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_app.clone())
        .map(|app: Arc<App>| {
            if let Some(w) = app.writer() {
                metrics::gauge!(m::QUEUE_FRAMES).set(w.queued_frames() as f64);
            }
            warp::reply::with_header(
                app.metrics.render(),
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response()
        });
    let device_ws = warp::path!("v1" / "devices" / "ws")
        .and(warp::get())
        .and(with_app.clone())
        .and(warp::header::headers_cloned())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::ext::get::<PeerAddr>())
        .and(warp::ext::get::<ConnSocket>())
        .and(warp::ext::optional::<OnUpgrade>())
        .map(device_upgrade);
    let live_ws = warp::path!("v1" / "live")
        .and(warp::get())
        .and(with_app.clone())
        .and(warp::header::headers_cloned())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::ext::get::<PeerAddr>())
        .and(warp::ext::get::<ConnSocket>())
        .and(warp::ext::optional::<OnUpgrade>())
        .map(crate::live::upgrade);
    let live_sse = warp::path!("v1" / "live" / "sse")
        .and(warp::get())
        .and(with_app.clone())
        .and(warp::header::headers_cloned())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::ext::get::<ConnSocket>())
        .map(crate::live::sse);
    crate::ui::routes()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(device_ws)
        .unify()
        .or(live_ws)
        .unify()
        .or(live_sse)
        .unify()
        .or(crate::api::routes(app))
        .unify()
        .recover(|r: warp::Rejection| async move { Ok::<_, Infallible>(rejection(r)) })
        .unify()
        .boxed()
}

fn rejection(r: warp::Rejection) -> warp::reply::Response {
    if r.is_not_found() {
        json_error(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        // Every route of this server is GET (RFC 9110: a 405 lists the allowed methods).
        let mut resp = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route; use GET",
        );
        resp.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
        resp
    } else if let Some(e) = r.find::<warp::reject::InvalidQuery>() {
        json_error(StatusCode::BAD_REQUEST, "invalid_query", e.to_string())
    } else {
        json_error(StatusCode::BAD_REQUEST, "bad_request", format!("{r:?}"))
    }
}

async fn readyz(app: Arc<App>) -> warp::reply::Response {
    if let Err(e) = app.store.ping().await {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unwritable",
            e.to_string(),
        );
    }
    if app
        .writer_health
        .stalled(app.config.writer_stall.0, crate::now_us() / 1000)
    {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "writer_stalled",
            format!(
                "writer has had work but no commit for over {}",
                app.config.writer_stall
            ),
        );
    }
    if app.shutdown.is_cancelled() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server is shutting down",
        );
    }
    warp::reply::json(&serde_json::json!({"status": "ready"})).into_response()
}

/// The token from `Authorization: Bearer` or the `token` query parameter.
pub(crate) fn bearer(headers: &http::HeaderMap, query: &str) -> Result<String, AuthError> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| AuthError::Invalid("authorization header is not ASCII".into()))?;
        return match v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            Some(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            _ => Err(AuthError::Invalid(
                "authorization header must be `Bearer <token>`".into(),
            )),
        };
    }
    for pair in query.split('&') {
        if let Some(t) = pair.strip_prefix("token=")
            && !t.is_empty()
        {
            return Ok(t.to_string());
        }
    }
    Err(AuthError::Missing)
}

pub(crate) fn is_websocket_request(headers: &http::HeaderMap) -> Option<String> {
    let has_token = |name: http::header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(http::header::UPGRADE, "websocket")
        || !has_token(http::header::CONNECTION, "upgrade")
    {
        return None;
    }
    if headers
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return None;
    }
    headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Authenticates and applies the connection limits before upgrading; on success answers 101
/// and starts the connection task once the upgrade completes.
fn device_upgrade(
    app: Arc<App>,
    headers: http::HeaderMap,
    query: String,
    peer: PeerAddr,
    socket: ConnSocket,
    on_upgrade: Option<OnUpgrade>,
) -> warp::reply::Response {
    let addr = peer.0;
    if app.shutdown.is_cancelled() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server is shutting down",
        );
    }
    // Rate first: refusing a flood must not cost a signature check per attempt.
    if !app.connect_rate.check(addr.ip()) {
        metrics::counter!(m::RATE_LIMITED, "limit" => "connect_rate_per_ip").increment(1);
        return retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "connect_rate_limited",
            format!(
                "more than {} new connections per second from {}",
                app.config.connect_rate_per_ip,
                addr.ip()
            ),
            "1",
        );
    }
    let (device_id, claims) =
        match bearer(&headers, &query).and_then(|t| app.authority.verify_device(&t)) {
            Ok(ok) => ok,
            Err(e) => {
                metrics::counter!(m::AUTH_FAILURES, "code" => e.code()).increment(1);
                debug!(%addr, error = %e, "device upgrade refused");
                return json_error(StatusCode::UNAUTHORIZED, e.code(), e.to_string());
            }
        };
    let (Some(key), Some(on_upgrade)) = (is_websocket_request(&headers), on_upgrade) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "not_a_websocket_request",
            "expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13)",
        );
    };
    socket.limit_unsent(app.config.tcp_notsent_lowat);
    let Some(slot) = app.connections.try_acquire() else {
        metrics::counter!(m::RATE_LIMITED, "limit" => "max_connections").increment(1);
        return retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!(
                "the server holds its maximum of {} device connections",
                app.config.max_connections
            ),
            "5",
        );
    };
    let conn_id = app.next_conn_id();
    let max = app.config.max_frame_bytes;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(max.max(64 * 1024))
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let task_app = app.clone();
    app.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config),
                )
                .await;
                let peer = Peer {
                    conn_id,
                    device_id,
                    addr,
                    slot,
                    claims,
                };
                crate::edge::run(task_app, ws, peer).await;
            }
            Err(e) => warn!(%addr, error = %e, "websocket upgrade failed"),
        }
    });
    switching_protocols(&key, None)
}
