//! The web dashboard over HTTP: `GET /` serves the page and `GET /ui/<file>` its scripts and
//! styles, all embedded in the binary by the `dashboard` crate (`dashboard::web`). Responses
//! carry a strong ETag (`If-None-Match` gets 304), `Cache-Control: no-cache` (always revalidate,
//! so a new build is picked up at once) and the page's Content-Security-Policy.

use http::{HeaderValue, StatusCode, header};
use warp::{Filter, Reply};

use crate::routes::json_error;
use dashboard::web::{self, Asset};

/// `GET /` and `GET /ui/<file>` (HEAD too: warp answers HEAD through GET filters).
pub fn routes() -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let index = warp::path::end()
        .and(warp::get().or(warp::head()).unify())
        .and(warp::header::optional::<String>("if-none-match"))
        .map(|inm: Option<String>| serve(web::index(), inm.as_deref()));
    let file = warp::path!("ui" / String)
        .and(warp::get().or(warp::head()).unify())
        .and(warp::header::optional::<String>("if-none-match"))
        .map(
            |name: String, inm: Option<String>| match web::asset(&name) {
                Some(a) => serve(a, inm.as_deref()),
                None => json_error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no dashboard file `{name}`"),
                ),
            },
        );
    index.or(file).unify().boxed()
}

/// The asset, or 304 when the client's copy is current.
fn serve(asset: &'static Asset, if_none_match: Option<&str>) -> warp::reply::Response {
    let etag = asset.etag();
    let fresh =
        if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        let mut r = warp::reply::reply().into_response();
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = warp::reply::Response::new(asset.bytes.into());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(web::CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}
