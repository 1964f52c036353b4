//! `GET /v1/live` over real sockets: readings from a device reach dashboards (binary and JSON),
//! grants, auth and origin checks, resume, gaps, slow consumers, presence, token expiry.

mod common;
mod live_support;

use std::time::Duration;

use common::*;
use live_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_json_subscribers_receive_the_readings_a_device_sends() {
    let server = TestServer::start(|_| {}).await;
    let token = operator(&server, &["*"]);
    let mut bin = connect(&server, &token, None).await;
    let mut text = connect(&server, &token, Some("telemux.json")).await;
    bin.subscribe(json!({"devices": [5]})).await;
    text.subscribe(json!({"devices": "*"})).await;
    let mut dev = server.device(5).await;
    dev.send(1, 3).await;
    dev.wait_ack(1).await;
    let got = bin.records(3).await;
    let values: Vec<f64> = got.iter().map(|(_, r)| r.3).collect();
    assert_eq!(values, frame_values(1, 3));
    assert!(got.iter().all(|(_, r)| r.0 == 5));
    let position = got.last().map(|(p, _)| *p).expect("position");
    // The JSON form carries the same readings and the same position (as a string).
    let msg = text.event("readings").await;
    assert_eq!(msg["position"], position.to_string());
    let readings = msg["readings"].as_array().expect("readings");
    let json_values: Vec<f64> = readings
        .iter()
        .filter_map(|r| r["value"].as_f64())
        .collect();
    assert_eq!(json_values, values);
    assert_eq!(readings[0]["device"], "5");
    assert_eq!(readings[0]["channel"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_outside_the_token_grant_are_refused() {
    let server = TestServer::start(|_| {}).await;
    let token = operator(&server, &["1", "2"]);
    let mut live = connect(&server, &token, None).await;
    for devices in [json!([3]), json!([1, 3]), json!("*")] {
        let id = live.request("subscribe", json!({"devices": devices})).await;
        let reply = live.reply(id).await;
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["error"], "not_granted", "{reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    live.subscribe(json!({"devices": [1, 2]})).await;
    let id = live.request("fly", json!({})).await;
    assert_eq!(live.reply(id).await["error"], "unknown_op");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_needs_an_operator_token_and_an_allowed_origin() {
    let server =
        TestServer::start(|c| c.live_allowed_origins = vec!["https://ops.example.com".into()])
            .await;
    let (reply, _) = ws_upgrade(server.addr, "/v1/live", &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"], "missing_token");
    let device_token = server.token(3);
    let (reply, _) = ws_upgrade(server.addr, &format!("/v1/live?token={device_token}"), &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"], "wrong_token_kind");
    let token = operator(&server, &["*"]);
    let path = format!("/v1/live?token={token}");
    let (reply, _) = ws_upgrade(server.addr, &path, &[("Origin", "https://evil.example")]).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["error"], "origin_not_allowed");
    let own = format!("http://{}", server.addr);
    for origin in [own.as_str(), "https://ops.example.com"] {
        let (reply, _) = ws_upgrade(server.addr, &path, &[("Origin", origin)]).await;
        assert_eq!(reply.status, 101, "{origin}");
    }
    let (reply, _) = ws_upgrade(server.addr, &path, &[]).await;
    assert_eq!(reply.status, 101, "no Origin: not a browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_reconnect_gets_exactly_the_missed_readings() {
    let server = TestServer::start(|_| {}).await;
    let token = operator(&server, &["*"]);
    let mut dev = server.device(7).await;
    let mut other = server.device(8).await;
    let mut live = connect(&server, &token, None).await;
    live.subscribe(json!({"devices": [7]})).await;
    for seq in 1..=3 {
        dev.send(seq, 2).await;
        other.send(seq, 2).await;
    }
    dev.wait_ack(3).await;
    let seen = live.records(6).await;
    let last = seen.last().map(|(p, _)| *p).expect("position");
    drop(live);
    // Missed while disconnected (device 8's readings interleave but are not subscribed).
    for seq in 4..=6 {
        dev.send(seq, 2).await;
        other.send(seq, 2).await;
    }
    dev.wait_ack(6).await;
    other.wait_ack(6).await;
    let mut live = connect(&server, &token, None).await;
    let id = live
        .request("resume", json!({"position": last.to_string()}))
        .await;
    let reply = live.reply(id).await;
    assert_eq!(
        (reply["ok"].as_bool(), reply["gap"].as_bool()),
        (Some(true), Some(false)),
        "{reply}"
    );
    live.subscribe(json!({"devices": [7]})).await;
    let missed = live.records(6).await;
    let values: Vec<f64> = missed.iter().map(|(_, r)| r.3).collect();
    let want: Vec<f64> = (4..=6).flat_map(|s| frame_values(s, 2)).collect();
    assert_eq!(values, want, "exactly the missed readings, in order");
    let positions: Vec<u64> = missed.iter().map(|(p, _)| *p).filter(|p| *p > 0).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase: {positions:?}"
    );
    assert!(
        positions.iter().all(|p| *p > last),
        "nothing at or before the resumed position"
    );
    dev.send(7, 2).await;
    let live_now: Vec<f64> = live.records(2).await.iter().map(|(_, r)| r.3).collect();
    assert_eq!(live_now, frame_values(7, 2), "then live, no duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_a_position_older_than_the_window_gets_a_gap() {
    let server =
        TestServer::start(|c| c.live_resume_window = "1s".parse().expect("duration")).await;
    let token = operator(&server, &["*"]);
    let mut live = connect(&server, &token, None).await;
    live.subscribe(json!({"devices": [4]})).await;
    let mut dev = server.device(4).await;
    dev.send(1, 2).await;
    let first = live.records(2).await;
    let old = first.last().map(|(p, _)| *p).expect("position") - 2;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    dev.send(2, 2).await; // publishing evicts what is older than the window
    dev.wait_ack(2).await;
    drop(live);
    let mut live = connect(&server, &token, None).await;
    let id = live
        .request("resume", json!({"position": old.to_string()}))
        .await;
    assert_eq!(live.reply(id).await["gap"], true);
    let gap = live.event("gap").await;
    assert_eq!(gap["reason"], "resume_window");
    assert_eq!(gap["from_position"], (old + 1).to_string());
    assert_eq!(gap["to_position"], (old + 2).to_string());
    assert!(
        gap["from_ts_us"].is_i64() && gap["to_ts_us"].is_i64(),
        "{gap}"
    );
    live.subscribe(json!({"devices": [4]})).await;
    let rest: Vec<f64> = live.records(2).await.iter().map(|(_, r)| r.3).collect();
    assert_eq!(rest, frame_values(2, 2), "then what the log still holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_and_a_snapshot_on_subscribe() {
    let server = TestServer::start(|_| {}).await;
    let token = operator(&server, &["*"]);
    let mut dev = server.device(9).await;
    dev.send(1, 2).await;
    dev.wait_ack(1).await;
    let mut live = connect(&server, &token, Some("telemux.json")).await;
    let (_, snap) = live.subscribe(json!({"devices": [9]})).await;
    let d = &snap["devices"][0];
    assert_eq!(d["device"], "9");
    assert_eq!(d["online"], true, "{snap}");
    let values: Vec<f64> = d["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .filter_map(|c| c["value"].as_f64())
        .collect();
    assert_eq!(values, frame_values(1, 2));
    dev.ws.close(None).await.expect("close");
    drop(dev);
    let off = live.event("offline").await;
    assert_eq!(off["device"], "9");
    let _dev = server.device(9).await;
    assert_eq!(live.event("online").await["device"], "9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_closes_the_socket_with_4003() {
    let server = TestServer::start(|_| {}).await;
    let token = server
        .authority
        .mint_operator("brief", vec!["*".into()], Some(Duration::from_secs(1)))
        .expect("mint");
    let mut live = connect(&server, &token, None).await;
    live.subscribe(json!({"devices": "*"})).await;
    let end = live.next(Duration::from_secs(5)).await;
    assert_eq!(end, Got::Close(4003, "token expired".into()));
}
