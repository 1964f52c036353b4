//! The web dashboard's files over real HTTP: the page at `/`, its modules under `/ui/`, with
//! the right content types, a Content-Security-Policy, ETags that turn a repeat into a 304, and
//! a JSON 404 for a file that does not exist.

mod common;

use common::{TestServer, get_with as get};

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
