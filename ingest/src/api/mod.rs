//! The HTTP history API for operators (issue 7), served by `ingest`:
//! `GET /v1/devices`, `/v1/devices/{id}`, `/v1/devices/{id}/latest`, `/v1/series` (raw readings
//! with cursor pagination, or time-bucketed aggregates computed by the store's SQL) and the
//! OpenAPI document `/v1/openapi.json`. Authentication is the live endpoints' (`operator`):
//! operator tokens only, and a token sees only the devices its grants cover.
//!
//! # Layout
//! - [`error`]: the one error type, turned into status + JSON body.
//! - [`params`]: query parsing and validation.
//! - [`cursor`]: the opaque pagination cursor.
//! - [`devices`]: device listing, one device, its latest values.
//! - [`series`]: raw and aggregate series, streamed.
//! - [`encode`]: JSON and CSV serialisation of series, piece by piece.
//! - [`openapi`]: the served OpenAPI 3.1 document.

pub mod cursor;
pub mod devices;
pub mod encode;
pub mod error;
pub mod openapi;
pub mod params;
pub mod series;

use std::collections::BTreeMap;
use std::sync::Arc;

use dashboard::filter::Resolved;
use tracing::{Instrument, info_span};
use warp::Filter;

use crate::operator::Operator;
use crate::server::App;
use crate::store::DeviceInfo;
use crate::telemetry as m;
use error::ApiError;

/// Every route of the history API.
pub fn routes(app: Arc<App>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let doc_app = app.clone();
    let with_app = warp::any().map(move || app.clone());
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let common = warp::get()
        .and(with_app)
        .and(warp::header::headers_cloned())
        .and(query);
    let list = warp::path!("v1" / "devices")
        .and(common.clone())
        .then(|app, headers, query| handle("devices", app, headers, query, None, devices::list));
    let one = warp::path!("v1" / "devices" / String)
        .and(common.clone())
        .then(|id, app, headers, query| {
            handle("device", app, headers, query, Some(id), devices::one)
        });
    let latest = warp::path!("v1" / "devices" / String / "latest")
        .and(common.clone())
        .then(|id, app, headers, query| {
            handle("latest", app, headers, query, Some(id), devices::latest)
        });
    let series = warp::path!("v1" / "series")
        .and(common)
        .then(|app, headers, query| handle("series", app, headers, query, None, series::get));
    let openapi = warp::path!("v1" / "openapi.json")
        .and(warp::get())
        .map(move || openapi::response(&doc_app.config));
    list.or(one)
        .unify()
        .or(latest)
        .unify()
        .or(series)
        .unify()
        .or(openapi)
        .unify()
        .boxed()
}

/// One authenticated request: what a handler gets.
pub struct Request {
    /// Shared state.
    pub app: Arc<App>,
    /// The authenticated operator.
    pub operator: Operator,
    /// The raw query string.
    pub query: String,
    /// The `{id}` path segment, on per-device routes.
    pub path_id: Option<String>,
}

/// Authenticates, runs the handler inside a span naming the operator, turns its error into
/// the JSON response, and counts the outcome.
async fn handle<F, Fut>(
    route: &'static str,
    app: Arc<App>,
    headers: http::HeaderMap,
    query: String,
    path_id: Option<String>,
    handler: F,
) -> warp::reply::Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Result<warp::reply::Response, ApiError>>,
{
    let response = match crate::operator::authenticate(&app, &headers, &query) {
        Err(refused) => {
            metrics::counter!(m::API_ERRORS, "route" => route, "code" => "unauthorized")
                .increment(1);
            *refused
        }
        Ok(operator) => {
            let span = info_span!("api", route, operator = %operator.claims.sub, device = path_id.as_deref());
            let req = Request {
                app,
                operator,
                query,
                path_id,
            };
            match handler(req).instrument(span).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(route, error = %e, "api request refused");
                    metrics::counter!(m::API_ERRORS, "route" => route, "code" => e.code())
                        .increment(1);
                    e.response()
                }
            }
        }
    };
    metrics::counter!(m::API_REQUESTS, "route" => route, "status" => response.status().as_str().to_string())
        .increment(1);
    response
}

/// What the server knows of a device, merged from the store, the live hub and the config.
#[derive(Clone, Debug, Default)]
pub struct Known {
    /// Stored presence and last-seen times, if the store has the device.
    pub stored: Option<DeviceInfo>,
    /// Connected now per this node's live hub, if the hub heard of its connection.
    pub live_online: Option<bool>,
    /// Configured tags.
    pub tags: Vec<String>,
    /// Configured display name.
    pub name: Option<String>,
}

impl Known {
    /// Connected now: the hub's view. Device connections end at this process, and the hub
    /// hears of every connect and disconnect since it started, so a device it never heard of is
    /// offline, whatever the store last recorded (after a crash the stored flag can still say
    /// online, because the disconnect was never written).
    pub fn online(&self) -> bool {
        self.live_online.unwrap_or(false)
    }
}

/// Every device the server knows (stored, live, or configured), by id, limited to those the
/// operator's grants cover.
pub async fn known_devices(
    app: &App,
    operator: &Operator,
) -> Result<BTreeMap<u64, Known>, ApiError> {
    let mut out: BTreeMap<u64, Known> = BTreeMap::new();
    for info in app.store.devices().await? {
        let id = info.device_id;
        out.entry(id).or_default().stored = Some(info);
    }
    let (live, _) = app.hub.snapshot(&Resolved::All, usize::MAX);
    for (id, state) in live {
        let k = out.entry(id).or_default();
        k.live_online = state.online;
        k.tags = state.tags.to_vec();
    }
    for (&id, name) in &app.device_names {
        out.entry(id).or_default().name = Some(name.clone());
    }
    out.retain(|&id, k| operator.grants.allows(id, &k.tags));
    Ok(out)
}

/// Refuses a device outside the grants (403), then an unknown device (404); returns what the
/// server knows of it.
pub async fn granted_device(app: &App, operator: &Operator, id: u64) -> Result<Known, ApiError> {
    if !operator.grants.allows(id, &app.hub.tags_of(id)) {
        return Err(ApiError::NotGranted(id));
    }
    known_devices(app, operator)
        .await?
        .remove(&id)
        .ok_or(ApiError::UnknownDevice(id))
}
