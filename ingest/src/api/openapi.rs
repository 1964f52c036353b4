//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of every `/v1` HTTP route, hand-written in
//! `openapi.json` next to this file and embedded at build time, with this server's `limit`
//! maximum (`api_max_rows`) filled in when served. It is public (no token) so tools can fetch
//! it; `tests/api_openapi.rs` checks it against the running server.

use warp::Reply;

use crate::config::Config;

/// The document as written (its `limit` maximum is the default `api_max_rows`).
pub const DOCUMENT: &str = include_str!("openapi.json");

/// The document for a server with `config`.
pub fn document(config: &Config) -> serde_json::Value {
    let mut doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap_or_default();
    if let Some(params) = doc
        .pointer_mut("/paths/~1v1~1series/get/parameters")
        .and_then(|p| p.as_array_mut())
    {
        for p in params.iter_mut().filter(|p| p["name"] == "limit") {
            p["schema"]["maximum"] = config.api_max_rows.into();
        }
    }
    doc
}

/// The document as a response.
pub fn response(config: &Config) -> warp::reply::Response {
    warp::reply::json(&document(config)).into_response()
}
