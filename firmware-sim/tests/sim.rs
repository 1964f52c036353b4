//! Short simulated runs against the real ingest server (in process, on 127.0.0.1:0).

mod support;
use support::{Server, sim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_sent_is_acked_and_stored_exactly_once_across_forced_reconnects() {
    let mut server = Server::start().await;
    let url = format!("ws://{}", server.addr);
    let secret = server.secret();
    let cfg = sim(&[
        "--url",
        &url,
        "--secret-file",
        &secret,
        "--devices",
        "12",
        "--first-device",
        "100",
        "--rate",
        "25",
        "--readings",
        "8",
        "--duration",
        "3s",
        "--disconnect-rate",
        "0.4",
        "--backoff-base",
        "20ms",
        "--backoff-cap",
        "200ms",
        "--ramp",
        "0",
    ]);
    let summary = firmware_sim::run(cfg).await.expect("run");
    assert!(summary.ok, "no loss expected:\n{}", summary.table());
    assert!(
        summary.frames_sent > 100,
        "the run sent frames:\n{}",
        summary.table()
    );
    assert_eq!(summary.frames_acked, summary.frames_sent);
    assert_eq!(summary.readings_acked, summary.readings_sent);
    assert!(
        summary.reconnects > 0,
        "forced disconnects happened:\n{}",
        summary.table()
    );
    server.stop().await;

    let stored = server.stored();
    let total: u64 = stored.iter().map(|(_, _, n)| n).sum();
    assert_eq!(
        total, summary.readings_sent,
        "every reading stored exactly once"
    );
    for device in 100..112u64 {
        let seqs: Vec<u64> = stored
            .iter()
            .filter(|(d, _, _)| *d == device)
            .map(|(_, s, _)| *s)
            .collect();
        assert!(!seqs.is_empty(), "device {device} stored frames");
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(
            seqs, expected,
            "device {device}: sequence continuity 1..=N across reconnects"
        );
    }
    assert!(
        stored.iter().all(|(_, _, n)| *n == 8),
        "each frame stored with its 8 readings once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboots_keep_sequences_increasing_and_lose_nothing() {
    let mut server = Server::start().await;
    let url = format!("ws://{}", server.addr);
    let secret = server.secret();
    let cfg = sim(&[
        "--url",
        &url,
        "--secret-file",
        &secret,
        "--devices",
        "5",
        "--rate",
        "20",
        "--readings",
        "4",
        "--duration",
        "3s",
        "--reboot-rate",
        "0.5",
        "--backoff-base",
        "10ms",
        "--backoff-cap",
        "100ms",
        "--ramp",
        "0",
        "--layout",
        "environment",
    ]);
    let summary = firmware_sim::run(cfg).await.expect("run");
    assert!(summary.ok, "{}", summary.table());
    assert!(summary.reboots > 0, "{}", summary.table());
    server.stop().await;
    let stored = server.stored();
    assert_eq!(
        stored.len() as u64,
        summary.frames_sent,
        "every frame stored once"
    );
    for device in 1..=5u64 {
        let seqs: Vec<u64> = stored
            .iter()
            .filter(|(d, _, _)| *d == device)
            .map(|(_, s, _)| *s)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "device {device}: strictly increasing"
        );
    }
    assert!(
        stored.iter().any(|(_, s, _)| *s > 1000),
        "a reboot moved a counter to its next persisted block"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_overflow_while_the_server_is_down_is_counted_as_loss() {
    // A port nobody listens on: the server is down for the whole run.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    ingest::auth::Authority::load_or_create(dir.path()).expect("secret");
    let secret = dir.path().join("token-secret").display().to_string();
    let url = format!("ws://127.0.0.1:{port}");
    let cfg = sim(&[
        "--url",
        &url,
        "--secret-file",
        &secret,
        "--devices",
        "1",
        "--rate",
        "50",
        "--duration",
        "1s",
        "--buffer-frames",
        "5",
        "--drain-timeout",
        "300ms",
        "--backoff-base",
        "10ms",
        "--backoff-cap",
        "50ms",
        "--ramp",
        "0",
    ]);
    let s = firmware_sim::run(cfg).await.expect("run");
    // The device keeps sampling while the server is down: the buffer overflows and that loss is
    // counted, reported, and fails the run.
    assert_eq!(s.frames_acked, 0);
    assert!(
        s.connect_failures > 3,
        "reconnect attempts were made: {}",
        s.table()
    );
    assert!(s.frames_dropped > 10, "overflow counted: {}", s.table());
    assert!(!s.ok && s.lost == s.frames_sent, "{}", s.table());
    assert_eq!(
        s.frames_sent,
        s.frames_dropped + s.frames_unacked,
        "{}",
        s.table()
    );
}
