//! The web dashboard's files (`dashboard/web/`), embedded at compile time so the server binary
//! serves the page with no build step and no files next to it. Transport-free: the server maps
//! a request path to an [`Asset`] and turns it into an HTTP response (ETag, cache headers,
//! [`CONTENT_SECURITY_POLICY`]).

use std::sync::OnceLock;

/// The Content-Security-Policy sent with every asset: only our own scripts, styles, workers and
/// connections (the live WebSocket and the HTTP API are same-origin), nothing inline, no
/// framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     worker-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Name under `dashboard/web/` (also its URL path under `/ui/`).
    pub name: &'static str,
    /// File contents.
    pub bytes: &'static [u8],
    /// `Content-Type` header value.
    pub content_type: &'static str,
}

impl Asset {
    /// A strong ETag of the contents (stable across runs of the same build), so browsers
    /// revalidate cheaply with `If-None-Match` instead of downloading again.
    pub fn etag(&self) -> &'static str {
        static TAGS: OnceLock<Vec<String>> = OnceLock::new();
        let tags = TAGS.get_or_init(|| ASSETS.iter().map(|a| etag_of(a.bytes)).collect());
        ASSETS
            .iter()
            .position(|a| std::ptr::eq(a, self))
            .and_then(|i| tags.get(i))
            .map_or("\"0\"", String::as_str)
    }
}

/// FNV-1a 64 of the bytes, quoted: deterministic across runs (unlike `RandomState`).
fn etag_of(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}-{}\"", bytes.len())
}

const JS: &str = "text/javascript; charset=utf-8";

macro_rules! asset {
    ($name:literal, $ct:expr) => {
        Asset {
            name: $name,
            bytes: include_bytes!(concat!("../web/", $name)),
            content_type: $ct,
        }
    };
}

/// Every file of the page. Adding a file under `dashboard/web/` means adding a line here.
pub static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.mjs", JS),
    asset!("api.mjs", JS),
    asset!("connection.mjs", JS),
    asset!("worker.mjs", JS),
    asset!("live.mjs", JS),
    asset!("fleet.mjs", JS),
    asset!("device.mjs", JS),
    asset!("chart.mjs", JS),
    asset!("series.mjs", JS),
];

/// The page itself (served at `/`).
pub fn index() -> &'static Asset {
    &ASSETS[0]
}

/// The asset named `name` (a URL path segment under `/ui/`), if there is one.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_by_name_with_a_distinct_etag() {
        let mut tags = std::collections::HashSet::new();
        for a in ASSETS {
            assert!(!a.bytes.is_empty(), "{} is empty", a.name);
            assert!(std::ptr::eq(asset(a.name).expect("found"), a));
            assert!(tags.insert(a.etag()), "{} shares an etag", a.name);
        }
        assert_eq!(index().name, "index.html");
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("nope.js").is_none());
    }
}
