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
            Some(Reply::Ping) => continue,
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
