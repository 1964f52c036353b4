//! A store that can never commit again stops the server (`Store::failed`): devices are closed at
//! once with 1011 "store unavailable" and keep what was not acked, and the server returns the
//! error for its supervisor to restart it. The failure is a real one: the WAL the server writes
//! is removed, so the next fsync cannot confirm anything and the store is poisoned.

mod common;

use std::time::Duration;

use common::{Reply, TestServer};
use ingest::ServerError;
use ingest::config::SyncMode;
use ingest::store::sqlite::DB_FILE;

/// How long the test waits for the server to notice.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_server_and_closes_devices_with_store_unavailable() {
    // `full`: acks wait for the fsync thread, which is what notices the failure.
    let mut server = TestServer::start(|c| c.sqlite_synchronous = SyncMode::Full).await;
    let mut device = server.device(7).await;
    device.send(1, 4).await;
    assert_eq!(device.wait_ack(1).await, 1);

    std::fs::remove_file(server.data_dir.join(format!("{DB_FILE}-wal"))).expect("remove the WAL");
    device.send(2, 4).await;

    // Frame 2 is committed but can never be confirmed on disk: it is not acked, and the device
    // is told to come back later.
    let close = loop {
        match device.next(WAIT).await {
            Some(Reply::Close(code, reason)) => break (code, reason),
            // What was durable before the failure may be acked again, nothing after it.
            Some(Reply::Ack(1) | Reply::Ping) => continue,
            other => panic!("waiting for the close, got {other:?}"),
        }
    };
    assert_eq!(close, (1011, "store unavailable".to_string()));

    match server.finished(WAIT).await {
        Some(Err(ServerError::StoreFailed(why))) => {
            assert!(why.contains("-wal"), "the reason names the file: {why}");
            let shown = ServerError::StoreFailed(why).to_string();
            assert!(shown.contains("restart it"), "{shown}");
        }
        other => panic!("the server should stop with StoreFailed, got {other:?}"),
    }
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_store_keeps_the_server_running() {
    let mut server = TestServer::start(|c| c.sqlite_synchronous = SyncMode::Full).await;
    let mut device = server.device(8).await;
    for seq in 1..=20 {
        device.send(seq, 4).await;
    }
    assert_eq!(device.wait_ack(20).await, 20);
    assert!(
        server.finished(Duration::from_millis(300)).await.is_none(),
        "nothing failed: the server is still serving"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failing_while_the_server_shuts_down_still_ends_it_with_the_error() {
    // A shutdown deadline far beyond the test's wait: waiting for acks that cannot come would
    // show as a timeout here.
    let mut server = TestServer::start(|c| {
        c.sqlite_synchronous = SyncMode::Full;
        c.shutdown_timeout = "120s".parse().expect("duration");
    })
    .await;
    let mut device = server.device(9).await;
    device.send(1, 4).await;
    assert_eq!(device.wait_ack(1).await, 1);

    std::fs::remove_file(server.data_dir.join(format!("{DB_FILE}-wal"))).expect("remove the WAL");
    device.send(2, 4).await;
    // Shutdown starts while frame 2 waits for an fsync that will fail (or has just failed), or
    // before the server has read it: then the device is closed as going away with nothing
    // pending, and the presence update of its disconnect is what meets the failed store.
    server.signal_stop();

    let close = loop {
        match device.next(WAIT).await {
            Some(Reply::Close(code, reason)) => break (code, reason),
            Some(Reply::Ack(1) | Reply::Ping) => continue,
            other => panic!("waiting for the close, got {other:?}"),
        }
    };
    assert!(
        close == (1011, "store unavailable".to_string())
            || close == (1001, "going away".to_string()),
        "{close:?}"
    );
    match server.finished(WAIT).await {
        Some(Err(ServerError::StoreFailed(why))) => assert!(why.contains("-wal"), "{why}"),
        other => panic!("the server should stop with StoreFailed, got {other:?}"),
    }
}
