//! The plain HTTP surface next to the device socket: health, readiness, metrics, unknown routes.

mod common;
use std::time::Duration;

use common::*;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

#[tokio::test]
async fn healthz_answers_200() {
    let server = TestServer::start(|_| {}).await;
    let (status, body) = http_get(server.addr, "/healthz", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["status"], "ok");
}

#[tokio::test]
async fn readyz_answers_200_json_when_the_store_is_writable() {
    let server = TestServer::start(|_| {}).await;
    let (status, body) = http_get(server.addr, "/readyz", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["status"], "ready");
}

#[tokio::test]
async fn unknown_route_answers_404_json() {
    let server = TestServer::start(|_| {}).await;
    // (`/v1/devices` used to be here; it is the history API now.)
    for path in ["/nope", "/v1/nope", "/v1/devices/7/nope", "/healthz/extra"] {
        let (status, body) = http_get(server.addr, path, &[]).await;
        assert_eq!(status, 404, "{path}: {body}");
        let body = json(&body);
        assert_eq!(body["error"], "not_found", "{path}");
        assert!(body["message"].is_string(), "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_accepted_refused_duplicate_frames_and_acks() {
    let server = TestServer::start(|_| {}).await;
    // The recorder is process-wide: compare before and after (no other test here sends frames).
    let before = metrics_text(server.addr).await;
    let mut dev = server.device(61).await;
    for seq in 1..=3 {
        dev.send(seq, 4).await;
    }
    assert_eq!(dev.wait_ack(3).await, 3);
    dev.send(3, 4).await; // duplicate: acked again, not stored
    assert_eq!(dev.wait_ack(3).await, 3);
    let mut bad = frame(61, 4, 1);
    *bad.last_mut().expect("byte") ^= 1;
    dev.send_raw(bad).await;
    dev.send_raw(vec![0u8; 40]).await; // bad magic
    for _ in 0..2 {
        assert!(matches!(
            dev.next(Duration::from_secs(5)).await,
            Some(Reply::Error { .. })
        ));
    }
    let after = metrics_text(server.addr).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    assert_eq!(delta("telemux_frames_accepted_total", &[]), 3.0);
    assert_eq!(delta("telemux_readings_accepted_total", &[]), 12.0);
    assert_eq!(delta("telemux_frames_duplicate_total", &[]), 1.0);
    assert_eq!(delta("telemux_rows_stored_total", &[]), 12.0);
    let refused = "telemux_frames_refused_total";
    assert_eq!(delta(refused, &[("reason", "crc_mismatch")]), 1.0);
    assert_eq!(delta(refused, &[("reason", "bad_magic")]), 1.0);
    assert_eq!(delta(refused, &[]), 2.0);
    let acks = delta("telemux_acks_sent_total", &[]);
    assert!(
        (2.0..=4.0).contains(&acks),
        "one ack per commit or fewer, plus the re-ack: {acks}"
    );
    assert_eq!(metric(&after, "telemux_device_connections", &[]), 1.0);
    assert!(delta("telemux_device_connections_opened_total", &[]) >= 1.0);
    // Histograms and gauges of the writer are exported too.
    for name in [
        "telemux_writer_batch_rows_count",
        "telemux_writer_commit_seconds_count",
        "telemux_writer_ack_wait_seconds_count",
    ] {
        assert!(metric(&after, name, &[]) >= 1.0, "{name} in:\n{after}");
    }
    assert!(after.contains("telemux_writer_queue_frames"), "{after}");
}

#[tokio::test]
async fn metrics_export_documented_series_before_their_first_event() {
    let server = TestServer::start(|_| {}).await;
    let text = metrics_text(server.addr).await;
    // Nothing in this test binary culls a zombie or an idle connection, yet both are exported.
    for name in [
        "telemux_device_connections",
        "telemux_device_connections_opened_total",
        "telemux_frames_accepted_total",
        "telemux_readings_accepted_total",
        "telemux_frames_duplicate_total",
        "telemux_acks_sent_total",
        "telemux_zombies_culled_total",
        "telemux_idle_closed_total",
        "telemux_rows_stored_total",
        "telemux_writer_queue_frames",
    ] {
        let sample = text
            .lines()
            .find(|l| l.split([' ', '{']).next() == Some(name));
        assert!(sample.is_some(), "{name} missing from /metrics:\n{text}");
    }
    assert_eq!(metric(&text, "telemux_zombies_culled_total", &[]), 0.0);
}

/// A fleet reconnecting at once: 1,500 connections arrive before the server accepts any. With
/// tokio's fixed backlog of 1024 the kernel drops the SYNs beyond it and those devices retry
/// only after 1 s; `--listen-backlog` (4096) queues them all, so every connect completes on its
/// first SYN (well under the 1 s retransmission).
#[tokio::test]
async fn the_listen_backlog_queues_a_reconnecting_fleet() {
    const FLEET: usize = 1500;
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    if somaxconn < FLEET {
        eprintln!("skipped: net.core.somaxconn is {somaxconn}, below {FLEET}");
        return;
    }
    let listener = ingest::bind("127.0.0.1:0".parse().expect("addr"), 4096).expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Nothing accepts: every connection waits in the queue.
    let connects = (0..FLEET).map(|_| {
        tokio::time::timeout(
            Duration::from_millis(900),
            tokio::net::TcpStream::connect(addr),
        )
    });
    let results = futures_util::future::join_all(connects).await;
    let completed = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    assert_eq!(completed, FLEET, "connections completed on their first SYN");
    drop(listener);
}
