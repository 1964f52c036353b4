//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of every `/v1` HTTP route, hand-written in
//! `openapi.json` next to this file and embedded at build time. It is public (no token) so tools
//! can fetch it; `tests/api_openapi.rs` checks it against the running server.

use warp::Reply;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// The document as a response.
pub fn response() -> warp::reply::Response {
    warp::reply::with_header(DOCUMENT, "content-type", "application/json").into_response()
}
