//! The web dashboard's files over real HTTP: the page at `/`, its modules under `/ui/`, with
//! the right content types, a Content-Security-Policy, ETags that turn a repeat into a 304, and
//! a JSON 404 for a file that does not exist.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{HttpReply, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GET `path` on a raw socket; the whole response with its headers.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpReply {
        status,
        headers,
        body: body.to_string(),
    }
}

#[tokio::test]
async fn page_and_modules_are_served_with_csp_and_etags() {
    let mut server = TestServer::start(|_| {}).await;
    let page = get(server.addr, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains(r#"src="/ui/app.mjs""#), "{}", page.body);
    let csp = page.header("content-security-policy").expect("csp");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    // The token in the query does not change what is served.
    assert_eq!(get(server.addr, "/?token=abc", &[]).await.status, 200);

    for (name, ct) in [
        ("app.mjs", "text/javascript; charset=utf-8"),
        ("worker.mjs", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
    ] {
        let r = get(server.addr, &format!("/ui/{name}"), &[]).await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.header("content-type"), Some(ct), "{name}");
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{name}");
        let etag = r.header("etag").expect("etag").to_string();
        let again = get(
            server.addr,
            &format!("/ui/{name}"),
            &[("If-None-Match", &etag)],
        )
        .await;
        assert_eq!(
            again.status, 304,
            "{name}: a current copy is not sent again"
        );
        assert!(again.body.is_empty(), "{name}");
        let stale = get(
            server.addr,
            &format!("/ui/{name}"),
            &[("If-None-Match", "\"old\"")],
        )
        .await;
        assert_eq!(stale.status, 200, "{name}: a stale copy is replaced");
    }

    let missing = get(server.addr, "/ui/nope.mjs", &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "not_found");
    assert!(
        missing.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope.mjs"))
    );
    let escape = get(server.addr, "/ui/..%2FCargo.toml", &[]).await;
    assert_eq!(escape.status, 404, "only embedded files are served");
    server.shutdown().await;
}
