//! Device authentication at the edge, over real sockets: every refusal is an HTTP 401 with a JSON
//! body naming the problem and no upgrade; revocation reaches new and connected devices.

mod common;
use std::time::Duration;

use common::*;
use ingest::auth::{Claims, secret_path};

/// Revocation poll used by these tests (the default is 2 s).
const POLL: &str = "100ms";

/// Upgrades with `headers` and asserts a 401 with JSON error `code`, no upgrade; returns the
/// message.
async fn refused_401(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    code: &str,
) -> String {
    let (reply, _socket) = ws_upgrade(server.addr, path, headers).await;
    assert_eq!(reply.status, 401, "expected 401 {code}, got {reply:?}");
    assert!(
        reply.header("upgrade").is_none(),
        "no upgrade on a refusal: {reply:?}"
    );
    assert!(reply.header("sec-websocket-accept").is_none(), "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["error"], code, "{body}");
    body["message"].as_str().expect("message").to_string()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Signs `claims` with the server's own secret (as a token minted elsewhere would be).
fn sign(server: &TestServer, claims: &Claims) -> String {
    let secret = std::fs::read_to_string(secret_path(&server.data_dir)).expect("secret");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes()),
    )
    .expect("sign")
}

/// Runs the real binary: `ingest token revoke <args> --data-dir <server's dir>`.
async fn revoke_with_cli(server: &TestServer, args: &[&str]) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ingest"));
    cmd.args(["token", "revoke"])
        .args(args)
        .arg("--data-dir")
        .arg(&server.data_dir)
        .env_remove("TELEMUX_DATA_DIR");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run ingest token revoke");
    assert!(
        out.status.success(),
        "ingest token revoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Upgrades with `token` until the server has reloaded revocations and refuses it (deadline 5 s).
async fn wait_refused(server: &TestServer, token: &str, code: &str) -> String {
    let auth = bearer(token);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (reply, _socket) =
            ws_upgrade(server.addr, "/v1/devices/ws", &[("authorization", &auth)]).await;
        if reply.status != 101 {
            assert_eq!(reply.status, 401, "{reply:?}");
            let body = reply.json();
            assert_eq!(body["error"], code, "{body}");
            return body["message"].as_str().expect("message").to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "token still accepted after 5s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn missing_token_gets_401_missing_token_without_upgrade() {
    let server = TestServer::start(|_| {}).await;
    let before = metrics_text(server.addr).await;
    let message = refused_401(&server, "/v1/devices/ws", &[], "missing_token").await;
    assert!(message.contains("Authorization: Bearer"), "{message}");
    // An empty query token is no token either.
    refused_401(&server, "/v1/devices/ws?token=", &[], "missing_token").await;
    let after = metrics_text(server.addr).await;
    let key = [("code", "missing_token")];
    let failures = metric(&after, "telemux_auth_failures_total", &key)
        - metric(&before, "telemux_auth_failures_total", &key);
    assert!(failures >= 2.0, "auth failures counted: {failures}");
}

#[tokio::test]
async fn invalid_tokens_get_401_invalid_token_without_upgrade() {
    let server = TestServer::start(|_| {}).await;
    let foreign = ingest::auth::Authority::from_secret(b"another-secret-another-secret-xx")
        .mint_device(1, None)
        .expect("mint");
    for auth in [
        bearer(&foreign),
        bearer("not.a.jwt"),
        "Basic dXNlcjpwYXNz".to_string(),
    ] {
        refused_401(
            &server,
            "/v1/devices/ws",
            &[("authorization", &auth)],
            "invalid_token",
        )
        .await;
    }
    // A valid token with one character in the middle of its signature changed.
    let mut tampered = server.token(1);
    let at = tampered.len() - 10;
    let swap = if &tampered[at..=at] == "A" { "B" } else { "A" };
    tampered.replace_range(at..=at, swap);
    refused_401(
        &server,
        "/v1/devices/ws",
        &[("authorization", &bearer(&tampered))],
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn expired_token_gets_401_token_expired_without_upgrade() {
    let server = TestServer::start(|_| {}).await;
    let now_s = (now_us() / 1_000_000) as u64;
    let claims = Claims {
        sub: "device:3".into(),
        iat: now_s - 3600,
        iat_ms: (now_s - 3600) * 1000,
        exp: Some(now_s - 60),
        jti: "expired-1".into(),
        devices: vec![],
    };
    let token = sign(&server, &claims);
    let message = refused_401(
        &server,
        "/v1/devices/ws",
        &[("authorization", &bearer(&token))],
        "token_expired",
    )
    .await;
    assert!(message.contains("expired"), "{message}");
    // The same claims without the past expiry are accepted: only the expiry was wrong.
    let fine = sign(
        &server,
        &Claims {
            exp: Some(now_s + 3600),
            ..claims
        },
    );
    let mut dev = Device::connect(&server.ws_url(), &fine, 3)
        .await
        .expect("connect");
    dev.send(1, 1).await;
    assert_eq!(dev.wait_ack(1).await, 1);
}

#[tokio::test]
async fn revoked_token_gets_401_token_revoked_without_upgrade() {
    let server = TestServer::start(|c| c.revocation_poll = POLL.parse().expect("duration")).await;
    let token = server.token(21);
    revoke_with_cli(&server, &["--device", "21"]).await;
    let message = wait_refused(&server, &token, "token_revoked").await;
    assert!(message.contains("revoked"), "{message}");
    // Revocation covers tokens issued until then: a token minted afterwards works.
    let mut dev = server.device(21).await;
    dev.send(1, 1).await;
    assert_eq!(dev.wait_ack(1).await, 1);
}

#[tokio::test]
async fn revoking_one_token_leaves_other_tokens_of_the_device_working() {
    let server = TestServer::start(|c| c.revocation_poll = POLL.parse().expect("duration")).await;
    let revoked = server.token(22);
    let other = server.token(22);
    revoke_with_cli(&server, &["--token", &revoked]).await;
    wait_refused(&server, &revoked, "token_revoked").await;
    let mut dev = Device::connect(&server.ws_url(), &other, 22)
        .await
        .expect("connect");
    dev.send(1, 1).await;
    assert_eq!(dev.wait_ack(1).await, 1);
}

#[tokio::test]
async fn token_in_query_parameter_is_accepted() {
    let server = TestServer::start(|_| {}).await;
    let url = format!("{}?token={}", server.ws_url(), server.token(4));
    let mut dev = Device::connect_url(&url, 4)
        .await
        .expect("connect with ?token=");
    dev.send(1, 2).await;
    assert_eq!(dev.wait_ack(1).await, 1);
    assert_eq!(server.stored(4).len(), 2);
    // A bad query token is refused like a bad header token.
    refused_401(
        &server,
        "/v1/devices/ws?x=1&token=garbage",
        &[],
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn operator_token_is_refused_on_the_device_endpoint() {
    let server = TestServer::start(|_| {}).await;
    let token = server
        .authority
        .mint_operator("alice", vec!["*".into()], None)
        .expect("mint");
    let message = refused_401(
        &server,
        "/v1/devices/ws",
        &[("authorization", &bearer(&token))],
        "wrong_token_kind",
    )
    .await;
    assert!(
        message.contains("device") && message.contains("operator"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_device_is_closed_1008_when_its_token_is_revoked() {
    let server = TestServer::start(|c| c.revocation_poll = POLL.parse().expect("duration")).await;
    let mut dev = server.device(23).await;
    let mut bystander = server.device(24).await;
    dev.send(1, 1).await;
    assert_eq!(dev.wait_ack(1).await, 1);
    revoke_with_cli(&server, &["--device", "23"]).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), dev.wait_close())
        .await
        .expect("closed within a few revocation polls");
    assert_eq!(closed, (1008, "token revoked".to_string()));
    // Another device's connection is untouched.
    bystander.send(1, 1).await;
    assert_eq!(bystander.wait_ack(1).await, 1);
    assert_eq!(server.stored(23).len(), 1, "what was acked stays stored");
}
