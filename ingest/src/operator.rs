//! Operator authentication shared by the live endpoints (`/v1/live`, `/v1/live/sse`) and the
//! history API (`/v1/devices`, `/v1/series`): the `Origin` allow-list (403), then an operator
//! token from `Authorization: Bearer` or `?token=` (401; device tokens are a wrong kind), then
//! the token's device grants.

use http::StatusCode;

use dashboard::Grants;

use crate::auth::{AuthError, Claims};
use crate::routes::{bearer, json_error};
use crate::server::App;
use crate::telemetry as m;

/// An operator whose request passed the origin and token checks.
#[derive(Clone, Debug)]
pub struct Operator {
    /// Token claims (the live endpoints re-check revocation against them).
    pub claims: Claims,
    /// What the token may see.
    pub grants: Grants,
}

/// The `host[:port]` of an origin like `https://host:port`.
fn origin_authority(origin: &str) -> &str {
    let rest = origin.split_once("://").map_or(origin, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// Whether the request's `Origin` may call an operator endpoint: no `Origin` (not a browser), the
/// server's own host, or an origin in `live_allowed_origins` (or `*` there).
fn origin_allowed(app: &App, headers: &http::HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| "non-ASCII Origin".to_string())?
        .trim();
    let allowed = &app.config.live_allowed_origins;
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host.is_empty() && origin_authority(origin).eq_ignore_ascii_case(host) {
        return Ok(());
    }
    Err(format!(
        "origin `{origin}` is not allowed: only the server's own host and --live-allowed-origin entries may connect"
    ))
}

/// Origin, then operator token and its grants. Refusals are counted and come back as the JSON
/// response to send (403 origin, 401 token).
pub fn authenticate(
    app: &App,
    headers: &http::HeaderMap,
    query: &str,
) -> Result<Operator, Box<warp::reply::Response>> {
    if let Err(why) = origin_allowed(app, headers) {
        metrics::counter!(m::AUTH_FAILURES, "code" => "origin_not_allowed").increment(1);
        return Err(Box::new(json_error(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            why,
        )));
    }
    let verified = bearer(headers, query)
        .and_then(|t| app.authority.verify(&t))
        .and_then(|claims| {
            if claims.sub.starts_with("operator:") {
                Ok(claims)
            } else {
                Err(AuthError::WrongKind {
                    expected: "operator",
                    found: claims.kind().to_string(),
                })
            }
        })
        .and_then(|claims| {
            Grants::parse(&claims.devices)
                .map(|grants| Operator { claims, grants })
                .map_err(|e| AuthError::Invalid(e.to_string()))
        });
    verified.map_err(|e| {
        metrics::counter!(m::AUTH_FAILURES, "code" => e.code()).increment(1);
        Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            e.code(),
            e.to_string(),
        ))
    })
}
