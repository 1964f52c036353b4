//! Liveness and limits at the edge, over real sockets: heartbeats cull zombies, idle connections
//! are closed, per-device rate limits close only the offender, connection caps and per-IP
//! connect rates are refused before the upgrade with JSON.

mod common;
use std::time::Duration;

use codecs::Reason;
use common::*;

const WAIT: Duration = Duration::from_secs(5);

fn ms(v: u64) -> ingest::config::HumanDuration {
    ingest::config::HumanDuration(Duration::from_millis(v))
}

/// Reads replies until the close frame; returns the error frames seen on the way and the close.
async fn errors_then_close(dev: &mut Device) -> (Vec<(u64, u16, u64)>, (u16, String)) {
    let mut errors = Vec::new();
    loop {
        match dev.next(WAIT).await {
            Some(Reply::Error {
                seq,
                reason,
                expected,
                ..
            }) => errors.push((seq, reason, expected)),
            Some(Reply::Ack(_)) => {}
            Some(Reply::Close(code, reason)) => return (errors, (code, reason)),
            other => panic!("device {}: expected a close, got {other:?}", dev.id),
        }
    }
}

#[tokio::test]
async fn client_that_never_answers_pings_is_closed_4001_and_counted() {
    let server = TestServer::start(|c| {
        c.ping_interval = ms(100);
        c.missed_pongs = 2;
    })
    .await;
    let before = metrics_text(server.addr).await;
    let auth = format!("Bearer {}", server.token(41));
    // A raw socket: upgraded, then never written to, so no ping is ever answered.
    let (reply, mut socket) =
        ws_upgrade(server.addr, "/v1/devices/ws", &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 101, "{reply:?}");
    let bytes = read_until_closed(&mut socket, WAIT).await;
    let frames = server_frames(&bytes);
    let pings = frames.iter().filter(|(op, _)| *op == 0x9).count();
    let close = frames
        .iter()
        .find(|(op, _)| *op == 0x8)
        .expect("a close frame");
    assert_eq!(pings, 2, "missed_pongs pings, then the close: {frames:?}");
    assert_eq!(u16::from_be_bytes([close.1[0], close.1[1]]), 4001);
    assert_eq!(&close.1[2..], b"ping timeout");
    let after = metrics_text(server.addr).await;
    let culled = metric(&after, "telemux_zombies_culled_total", &[])
        - metric(&before, "telemux_zombies_culled_total", &[]);
    assert!(culled >= 1.0, "zombie counted: {culled}");
    let key = [("code", "4001")];
    let closed = metric(&after, "telemux_device_connections_closed_total", &key)
        - metric(&before, "telemux_device_connections_closed_total", &key);
    assert!(closed >= 1.0, "close counted by code: {closed}");
}

#[tokio::test]
async fn client_that_answers_pings_keeps_its_connection() {
    let server = TestServer::start(|c| {
        c.ping_interval = ms(100);
        c.missed_pongs = 2;
    })
    .await;
    let mut dev = server.device(42).await;
    // Read (and so answer pings) for many ping intervals: pings come, no close.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(800);
    while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
        match dev.next_with_pings(left).await {
            Some(Reply::Ping) => pings += 1,
            None => break,
            other => panic!("unexpected while idle: {other:?}"),
        }
    }
    assert!(pings >= 3, "the server pinged: {pings}");
    dev.send(1, 1).await;
    assert_eq!(dev.wait_ack(1).await, 1);
}

#[tokio::test]
async fn connection_sending_no_frame_within_idle_timeout_is_closed_4002() {
    let server = TestServer::start(|c| c.idle_timeout = ms(300)).await;
    let before = metrics_text(server.addr).await;
    let mut silent = server.device(43).await;
    let mut busy = server.device(44).await;
    // Three idle timeouts long, with a frame every 100 ms: stays open.
    for seq in 1..=9 {
        busy.send(seq, 1).await;
        assert_eq!(busy.wait_ack(seq).await, seq);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        silent.next(WAIT).await,
        Some(Reply::Close(4002, "idle timeout".into()))
    );
    busy.send(10, 1).await;
    assert_eq!(busy.wait_ack(10).await, 10);
    let after = metrics_text(server.addr).await;
    let idle = metric(&after, "telemux_idle_closed_total", &[])
        - metric(&before, "telemux_idle_closed_total", &[]);
    assert!(idle >= 1.0, "idle close counted: {idle}");
}

#[tokio::test]
async fn frame_rate_limit_closes_only_the_offending_device_with_4029() {
    let mut server = TestServer::start(|c| {
        c.device_frames_per_sec = 2;
        c.device_rate_burst = ms(1000);
    })
    .await;
    let before = metrics_text(server.addr).await;
    let mut calm = server.device(45).await;
    calm.send(1, 1).await;
    assert_eq!(calm.wait_ack(1).await, 1);
    let mut noisy = server.device(46).await;
    for seq in 1..=3 {
        noisy.send(seq, 1).await;
    }
    let (errors, close) = errors_then_close(&mut noisy).await;
    assert_eq!(errors, [(3, Reason::RateLimited.wire(), 2)]);
    assert_eq!(close, (4029, "rate limited".into()));
    // The other device on the same server is unaffected.
    calm.send(2, 1).await;
    assert_eq!(calm.wait_ack(2).await, 2);
    assert_eq!(
        calm.next(Duration::from_millis(200)).await,
        None,
        "still open"
    );
    let after = metrics_text(server.addr).await;
    let key = [("limit", "device_frames")];
    let limited = metric(&after, "telemux_rate_limited_total", &key)
        - metric(&before, "telemux_rate_limited_total", &key);
    assert!(limited >= 1.0, "rate limit counted: {limited}");
    server.shutdown().await;
    let seqs: Vec<u64> = server.stored(46).iter().map(|r| r.0).collect();
    assert_eq!(
        seqs,
        [1, 2],
        "frames within the rate are stored, the refused one is not"
    );
}

/// Frames that waited in the socket (the server was slow to read them, or the device resends its
/// unacked frames after a reconnect) arrive together: within `--device-rate-burst` seconds of
/// the device's rate they are accepted; past it the device is closed as before.
#[tokio::test]
async fn a_burst_within_the_rate_burst_is_accepted_and_past_it_closed() {
    let mut server = TestServer::start(|c| {
        c.device_frames_per_sec = 2;
        c.device_rate_burst = ms(3000);
    })
    .await;
    let mut dev = server.device(44).await;
    for seq in 1..=7 {
        dev.send(seq, 1).await;
    }
    let (errors, close) = errors_then_close(&mut dev).await;
    assert_eq!(errors, [(7, Reason::RateLimited.wire(), 2)]);
    assert_eq!(close, (4029, "rate limited".into()));
    server.shutdown().await;
    let seqs: Vec<u64> = server.stored(44).iter().map(|r| r.0).collect();
    assert_eq!(
        seqs,
        [1, 2, 3, 4, 5, 6],
        "three seconds' worth at once is stored"
    );
}

#[tokio::test]
async fn reading_rate_limit_closes_the_device_with_4029() {
    let server = TestServer::start(|c| {
        c.device_readings_per_sec = 10;
        c.device_rate_burst = ms(1000);
    })
    .await;
    let mut dev = server.device(47).await;
    dev.send(1, 6).await;
    dev.send(2, 6).await;
    let (errors, close) = errors_then_close(&mut dev).await;
    assert_eq!(errors, [(2, Reason::RateLimited.wire(), 10)]);
    assert_eq!(close, (4029, "rate limited".into()));
}

#[tokio::test]
async fn upgrade_over_max_connections_gets_503_json_until_a_slot_frees() {
    let server = TestServer::start(|c| c.max_connections = 2).await;
    let mut first = server.device(48).await;
    let _second = server.device(49).await;
    let auth = format!("Bearer {}", server.token(50));
    let (reply, _) = ws_upgrade(server.addr, "/v1/devices/ws", &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.header("upgrade").is_none());
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert_eq!(reply.json()["error"], "too_many_connections");
    // Closing one connection frees its slot.
    first.ws.close(None).await.expect("close");
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut third = loop {
        match Device::connect(&server.ws_url(), &server.token(50), 50).await {
            Ok(d) => break d,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "no slot freed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    third.send(1, 1).await;
    assert_eq!(third.wait_ack(1).await, 1);
}

#[tokio::test]
async fn connects_over_the_per_ip_rate_get_429_json() {
    let server = TestServer::start(|c| {
        c.connect_rate_per_ip = 1;
        c.connect_burst_per_ip = 2;
    })
    .await;
    let _a = server.device(51).await;
    let _b = server.device(52).await;
    let auth = format!("Bearer {}", server.token(53));
    let (reply, _) = ws_upgrade(server.addr, "/v1/devices/ws", &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert!(reply.header("upgrade").is_none());
    assert_eq!(reply.header("retry-after"), Some("1"));
    let body = reply.json();
    assert_eq!(body["error"], "connect_rate_limited");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("127.0.0.1")),
        "{body}"
    );
}
