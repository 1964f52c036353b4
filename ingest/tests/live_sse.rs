//! `GET /v1/live/sse` over real sockets: the same readings as JSON events with positions as
//! event ids, resume through `Last-Event-ID`, the same auth and grants as the WebSocket.

mod common;
mod live_support;

use std::time::Duration;

use common::*;
use live_support::*;

/// Readings values of the `readings` events, with the event ids, until `n` values arrived.
async fn readings(sse: &mut Sse, n: usize) -> (Vec<f64>, Vec<u64>) {
    let mut values = Vec::new();
    let mut ids = Vec::new();
    while values.len() < n {
        let ev = sse.event("readings").await;
        let id: u64 = ev
            .id
            .as_deref()
            .and_then(|i| i.parse().ok())
            .expect("numeric event id");
        assert_eq!(
            ev.data["position"],
            id.to_string(),
            "the id is the position"
        );
        ids.push(id);
        for r in ev.data["readings"].as_array().expect("readings") {
            values.push(r["value"].as_f64().expect("value"));
        }
    }
    (values, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_readings_and_resumes_with_last_event_id() {
    let server = TestServer::start(|_| {}).await;
    let token = operator(&server, &["*"]);
    let path = format!("/v1/live/sse?devices=3&token={token}");
    let mut sse = Sse::open(server.addr, &path, &[]).await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    assert!(
        sse.head
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream")
    );
    let snap = sse.event("snapshot").await;
    assert_eq!(snap.id, None, "only readings carry ids");
    let mut dev = server.device(3).await;
    let mut other = server.device(4).await;
    dev.send(1, 3).await;
    other.send(1, 3).await;
    dev.wait_ack(1).await;
    let (values, ids) = readings(&mut sse, 3).await;
    assert_eq!(values, frame_values(1, 3));
    let last = *ids.last().expect("an id");
    drop(sse);
    for seq in 2..=3 {
        dev.send(seq, 2).await;
        other.send(seq, 2).await;
    }
    dev.wait_ack(3).await;
    let last_id = last.to_string();
    let mut sse = Sse::open(server.addr, &path, &[("Last-Event-ID", &last_id)]).await;
    assert_eq!(sse.status, 200);
    let (missed, ids) = readings(&mut sse, 4).await;
    let want: Vec<f64> = (2..=3).flat_map(|s| frame_values(s, 2)).collect();
    assert_eq!(
        missed, want,
        "exactly the missed readings, in order, no duplicate"
    );
    assert!(ids.iter().all(|&i| i > last));
    dev.send(4, 1).await;
    assert_eq!(
        readings(&mut sse, 1).await.0,
        frame_values(4, 1),
        "then live"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_with_a_too_old_last_event_id_starts_with_a_gap() {
    let server =
        TestServer::start(|c| c.live_resume_window = "1s".parse().expect("duration")).await;
    let token = operator(&server, &["*"]);
    let mut dev = server.device(6).await;
    dev.send(1, 2).await;
    dev.wait_ack(1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    dev.send(2, 2).await;
    dev.wait_ack(2).await;
    let path = format!("/v1/live/sse?devices=*&token={token}");
    let mut sse = Sse::open(server.addr, &path, &[("Last-Event-ID", "5")]).await;
    let gap = sse.event("gap").await;
    assert_eq!(
        gap.data["reason"], "restart",
        "position 5 is from before this run"
    );
    assert_eq!(gap.data["from_position"], "6");
    assert_eq!(gap.data["from_ts_us"], serde_json::Value::Null);
    let (values, _) = readings(&mut sse, 2).await;
    assert_eq!(values, frame_values(2, 2), "then what the log still holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_checks_token_origin_grants_and_query() {
    let server = TestServer::start(|_| {}).await;
    let sse = Sse::open(server.addr, "/v1/live/sse?devices=1", &[]).await;
    assert_eq!(sse.status, 401);
    assert!(sse.full_body().await.contains("missing_token"));
    let token = operator(&server, &["1"]);
    let bearer = format!("Bearer {token}");
    let sse = Sse::open(
        server.addr,
        "/v1/live/sse?devices=2",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(sse.status, 403);
    assert!(sse.full_body().await.contains("not_granted"));
    let sse = Sse::open(
        server.addr,
        "/v1/live/sse?devices=x",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(sse.status, 400);
    assert!(sse.full_body().await.contains("invalid_field"));
    let sse = Sse::open(
        server.addr,
        "/v1/live/sse?devices=1",
        &[
            ("Authorization", &bearer),
            ("Origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(sse.status, 403);
    assert!(sse.full_body().await.contains("origin_not_allowed"));
    let mut sse = Sse::open(
        server.addr,
        "/v1/live/sse?devices=1",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(sse.status, 200);
    let snap = sse.event("snapshot").await;
    assert_eq!(snap.data["devices"][0]["device"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_ends_with_a_close_event_when_the_token_expires() {
    let server = TestServer::start(|_| {}).await;
    let token = server
        .authority
        .mint_operator("brief", vec!["*".into()], Some(Duration::from_secs(1)))
        .expect("mint");
    let mut sse = Sse::open(
        server.addr,
        &format!("/v1/live/sse?devices=*&token={token}"),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    let close = sse.event("close").await;
    assert_eq!(close.data["code"], 4003);
    assert_eq!(close.data["reason"], "token expired");
}
