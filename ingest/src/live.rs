//! Live endpoints for dashboards: `GET /v1/live` (WebSocket) and `GET /v1/live/sse` (Server-Sent
//! Events). Before anything is upgraded or streamed: the `Origin` is checked (403), the operator
//! token is verified (401), the connection cap applies (503). Then the socket or the event
//! stream is handed to the `dashboard` crate, which does the rest (subscriptions, resume,
//! backpressure, heartbeats, close codes; see its docs and the README).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::{Instrument, debug, info, info_span, warn};
use warp::Reply;

use dashboard::protocol::{self, ProtocolError, SubscribeArgs};
use dashboard::ws::{BINARY_SUBPROTOCOL, JSON_SUBPROTOCOL};
use dashboard::{DriveOptions, Format, Grants, Session};

use crate::auth::Claims;
use crate::limits::ConnectionSlot;
use crate::routes::{is_websocket_request, json_error, retry_later, switching_protocols};
use crate::server::{App, ConnSocket, PeerAddr};
use crate::telemetry as m;

/// WebSocket read buffer per dashboard connection: clients send only small control messages
/// (a longer one takes several reads). tungstenite zero-fills this much on every poll of the
/// socket, and a session is polled each time it is woken to send, so it is kept small.
const WS_READ_BUFFER: usize = 1024;

/// A client that passed the checks.
struct Admitted {
    /// Token claims (revocation is re-checked against them).
    claims: Claims,
    /// What the token may watch.
    grants: Grants,
    /// The dashboard-connection slot, released when the connection ends.
    slot: ConnectionSlot,
}

/// Origin, token, grants and the connection cap, in that order.
fn admit(
    app: &App,
    headers: &http::HeaderMap,
    query: &str,
) -> Result<Admitted, Box<warp::reply::Response>> {
    if app.shutdown.is_cancelled() {
        return Err(Box::new(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server is shutting down",
        )));
    }
    let crate::operator::Operator { claims, grants } =
        crate::operator::authenticate(app, headers, query)?;
    let Some(slot) = app.live_connections.try_acquire() else {
        metrics::counter!(m::RATE_LIMITED, "limit" => "live_max_clients").increment(1);
        return Err(Box::new(retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_live_clients",
            format!(
                "the server holds its maximum of {} dashboard connections",
                app.config.live_max_clients
            ),
            "5",
        )));
    };
    Ok(Admitted {
        claims,
        grants,
        slot,
    })
}

/// Loop options from the claims: expiry (4003), revocation (1008), shutdown (1001).
fn drive_options(app: &Arc<App>, claims: &Claims) -> DriveOptions {
    let expires_at = claims.exp.map(|exp| {
        let left_us = (exp as i64).saturating_mul(1_000_000) - crate::now_us();
        tokio::time::Instant::now() + Duration::from_micros(left_us.max(0) as u64)
    });
    let check_app = app.clone();
    let check_claims = claims.clone();
    DriveOptions {
        expires_at,
        shutdown: app.shutdown.clone(),
        revoked: Some(Arc::new(move || {
            check_app.authority.is_revoked(&check_claims)
        })),
        expects_pongs: true,
    }
}

/// The subprotocol chosen from `Sec-WebSocket-Protocol`: JSON if offered, else binary.
fn negotiate(headers: &http::HeaderMap) -> (Format, Option<&'static str>) {
    let offered: Vec<String> = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_ascii_lowercase())
        .collect();
    if offered.iter().any(|p| p == JSON_SUBPROTOCOL) {
        (Format::Json, Some(JSON_SUBPROTOCOL))
    } else if offered.iter().any(|p| p == BINARY_SUBPROTOCOL) {
        (Format::Binary, Some(BINARY_SUBPROTOCOL))
    } else {
        (Format::Binary, None)
    }
}

/// `GET /v1/live`: checks, then upgrades and runs the dashboard session.
pub fn upgrade(
    app: Arc<App>,
    headers: http::HeaderMap,
    query: String,
    peer: PeerAddr,
    socket: ConnSocket,
    on_upgrade: Option<OnUpgrade>,
) -> warp::reply::Response {
    let admitted = match admit(&app, &headers, &query) {
        Ok(a) => a,
        Err(response) => return *response,
    };
    let (Some(key), Some(on_upgrade)) = (is_websocket_request(&headers), on_upgrade) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "not_a_websocket_request",
            "expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13); use /v1/live/sse for Server-Sent Events",
        );
    };
    socket.limit_unsent(app.config.tcp_notsent_lowat);
    let (format, subprotocol) = negotiate(&headers);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(protocol::MAX_CONTROL_BYTES))
        .max_frame_size(Some(protocol::MAX_CONTROL_BYTES));
    let opts = drive_options(&app, &admitted.claims);
    let conn_id = app.next_conn_id();
    let addr = peer.0;
    let span = info_span!("live", conn = conn_id, operator = %admitted.claims.sub, peer = %addr);
    let task_app = app.clone();
    app.tracker.spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    warn!(error = %e, "websocket upgrade failed");
                    return;
                }
            };
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(ws_config),
            )
            .await;
            let session = Session::new(
                task_app.hub.clone(),
                format,
                admitted.grants,
                task_app.config.live_limits(),
            );
            info!(?format, "dashboard connected");
            let close = dashboard::ws::serve(ws, session, opts).await;
            info!(
                code = close.code,
                reason = close.reason,
                "dashboard disconnected"
            );
            drop(admitted.slot);
        }
        .instrument(span),
    );
    switching_protocols(&key, subprotocol)
}

/// A refused SSE query: 400 for malformed parameters, 403 outside the grants.
fn query_error(e: &ProtocolError) -> warp::reply::Response {
    let status = match e {
        ProtocolError::NotGranted(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    json_error(status, e.code(), e.to_string())
}

/// `GET /v1/live/sse?devices=1,2|*&tag=..&policy=..`: checks, then streams JSON events.
pub fn sse(
    app: Arc<App>,
    headers: http::HeaderMap,
    query: String,
    socket: ConnSocket,
) -> warp::reply::Response {
    let admitted = match admit(&app, &headers, &query) {
        Ok(a) => a,
        Err(response) => return *response,
    };
    socket.limit_unsent(app.config.tcp_notsent_lowat);
    let mut session = Session::new(
        app.hub.clone(),
        Format::Json,
        admitted.grants.clone(),
        app.config.live_limits(),
    );
    let mut initial = Vec::new();
    match sse_setup(&mut session, &headers, &query) {
        Ok(events) => initial.extend(events),
        Err(e) => return query_error(&e),
    }
    let opts = drive_options(&app, &admitted.claims);
    let conn_id = app.next_conn_id();
    let span = info_span!("live_sse", conn = conn_id, operator = %admitted.claims.sub);
    let (body, task) = dashboard::sse::serve(session, initial, opts);
    app.tracker.spawn(
        async move {
            debug!("sse client connected");
            let close = task.await;
            info!(
                code = close.code,
                reason = close.reason,
                "sse client disconnected"
            );
            drop(admitted.slot);
        }
        .instrument(span),
    );
    let mut resp = warp::reply::stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    // nginx and similar proxies must not buffer the stream.
    h.insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    resp
}

/// Applies the SSE query (`devices`, `tag`, `policy`, `last_event_id`) and the `Last-Event-ID`
/// header; returns the events to send first (gap, snapshots).
fn sse_setup(
    session: &mut Session,
    headers: &http::HeaderMap,
    query: &str,
) -> Result<Vec<dashboard::Outbound>, ProtocolError> {
    let mut devices = None;
    let mut tag = None;
    let mut policy = dashboard::Policy::default();
    let mut last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let mut snapshot = true;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "devices" => {
                let v = v.trim();
                let value = if v == "*" {
                    serde_json::Value::String("*".into())
                } else {
                    serde_json::Value::Array(
                        v.split(',')
                            .map(|s| serde_json::Value::String(s.trim().to_string()))
                            .collect(),
                    )
                };
                devices = Some(protocol::parse_devices(&value)?);
            }
            "tag" => {
                tag = Some(protocol::parse_tag(&serde_json::Value::String(
                    v.into_owned(),
                ))?)
            }
            "policy" => {
                policy = protocol::parse_policy(&serde_json::Value::String(v.into_owned()))?
            }
            "snapshot" => snapshot = v != "false" && v != "0",
            "last_event_id" if last_id.is_none() => last_id = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut events = Vec::new();
    if let Some(id) = last_id {
        let position = id.parse().map_err(|_| ProtocolError::InvalidField {
            field: "Last-Event-ID",
            expected: "a stream position (decimal)",
            found: id.chars().take(64).collect(),
        })?;
        events.extend(session.resume(position));
    }
    if devices.is_none() && tag.is_none() {
        return Err(ProtocolError::MissingField("devices"));
    }
    for selector in [devices, tag].into_iter().flatten() {
        let (_, snap) = session.subscribe(SubscribeArgs {
            selector,
            policy,
            snapshot,
            after: None,
        })?;
        events.extend(snap);
    }
    Ok(events)
}
