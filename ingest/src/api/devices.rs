//! `GET /v1/devices` (filtered by `q` and `tag`), `GET /v1/devices/{id}` and
//! `GET /v1/devices/{id}/latest`: presence, names and tags, and the newest stored value of each
//! channel. Devices outside the token's grants are left out of listings and refused (403) when
//! asked for by id.

use serde::Serialize;
use warp::Reply;

use super::error::ApiError;
use super::params::{self, DEVICE_PARAMS, DEVICES_PARAMS, Params};
use super::{Known, Request, granted_device, known_devices};
use crate::server::App;
use crate::store::Latest;

/// Newest value of one channel, as the API shows it.
#[derive(Debug, Serialize)]
pub struct LatestView {
    /// Channel id.
    pub channel: u16,
    /// Reading time (ms since the epoch, floored).
    pub ts_ms: i64,
    /// Reading time (us since the epoch).
    pub ts_us: i64,
    /// Value; `null` for NaN.
    pub value: Option<f64>,
    /// Quality bits.
    pub quality: u16,
}

impl From<Latest> for LatestView {
    fn from(l: Latest) -> Self {
        LatestView {
            channel: l.channel,
            ts_ms: l.ts_us.div_euclid(1000),
            ts_us: l.ts_us,
            value: l.value.is_finite().then_some(l.value),
            quality: l.quality,
        }
    }
}

/// One device, as the API shows it.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    /// Device id (a string: u64 does not fit a JS number).
    pub id: String,
    /// Display name from `--device-name`.
    pub name: Option<String>,
    /// Tags from `--device-tag`.
    pub tags: Vec<String>,
    /// Connected now.
    pub online: bool,
    /// Start of the current or last connection (ms).
    pub connected_at_ms: Option<i64>,
    /// Last frame received (ms).
    pub last_seen_ms: Option<i64>,
    /// Newest stored value per channel, by channel.
    pub latest: Vec<LatestView>,
}

async fn view(app: &App, id: u64, k: Known) -> Result<DeviceView, ApiError> {
    let latest = app.store.latest(id).await?;
    Ok(DeviceView {
        id: id.to_string(),
        online: k.online(),
        connected_at_ms: k
            .stored
            .as_ref()
            .and_then(|s| s.connected_at_us)
            .map(|us| us.div_euclid(1000)),
        last_seen_ms: k
            .stored
            .as_ref()
            .and_then(|s| s.last_seen_us)
            .map(|us| us.div_euclid(1000)),
        name: k.name,
        tags: k.tags,
        latest: latest.into_iter().map(LatestView::from).collect(),
    })
}

/// Whether `q` (lower-cased) is a substring of the id, name or a tag, ignoring case.
fn matches_q(id: u64, k: &Known, q: &str) -> bool {
    id.to_string().contains(q)
        || k.name
            .as_deref()
            .is_some_and(|n| n.to_lowercase().contains(q))
        || k.tags.iter().any(|t| t.to_lowercase().contains(q))
}

/// `GET /v1/devices?q=..&tag=..`: `{"devices": [...]}` sorted by id.
pub async fn list(req: Request) -> Result<warp::reply::Response, ApiError> {
    let p = Params::parse(&req.query, DEVICES_PARAMS)?;
    let q = p.scalar("q")?.map(str::to_lowercase);
    let tag = p.scalar("tag")?;
    if tag.is_some_and(|t| t.trim().is_empty()) {
        return Err(ApiError::invalid("tag", "a non-empty tag", ""));
    }
    let mut devices = Vec::new();
    for (id, k) in known_devices(&req.app, &req.operator).await? {
        if q.as_deref().is_some_and(|q| !matches_q(id, &k, q)) {
            continue;
        }
        if tag.is_some_and(|t| !k.tags.iter().any(|have| have == t.trim())) {
            continue;
        }
        devices.push(view(&req.app, id, k).await?);
    }
    Ok(warp::reply::json(&serde_json::json!({ "devices": devices })).into_response())
}

/// The `{id}` of a per-device route.
fn path_id(req: &Request) -> Result<u64, ApiError> {
    params::device_id("id", req.path_id.as_deref().unwrap_or(""))
}

/// `GET /v1/devices/{id}`: one device object.
pub async fn one(req: Request) -> Result<warp::reply::Response, ApiError> {
    Params::parse(&req.query, DEVICE_PARAMS)?;
    let id = path_id(&req)?;
    let k = granted_device(&req.app, &req.operator, id).await?;
    let v = view(&req.app, id, k).await?;
    Ok(warp::reply::json(&v).into_response())
}

/// `GET /v1/devices/{id}/latest`: `{"device": id, "latest": [...]}`.
pub async fn latest(req: Request) -> Result<warp::reply::Response, ApiError> {
    Params::parse(&req.query, DEVICE_PARAMS)?;
    let id = path_id(&req)?;
    granted_device(&req.app, &req.operator, id).await?;
    let latest: Vec<LatestView> = req
        .app
        .store
        .latest(id)
        .await?
        .into_iter()
        .map(LatestView::from)
        .collect();
    Ok(
        warp::reply::json(&serde_json::json!({"device": id.to_string(), "latest": latest}))
            .into_response(),
    )
}
