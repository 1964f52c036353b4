//! Crash durability across the process boundary: the real `ingest` binary with
//! `--sqlite-synchronous full` is killed with SIGKILL while devices stream, restarted on the same
//! data directory, and the devices re-send what was never acknowledged (ARCHITECTURE.md
//! invariants 1 and 2).

mod common;
mod firmware;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Device, http_get};
use firmware::{Firmware, assert_exactly_once, stored_in};

/// How long the binary may take to start accepting connections.
const START_WAIT: Duration = Duration::from_secs(30);
/// How long a test waits for devices to make progress.
const WAIT: Duration = Duration::from_secs(30);
/// Attempts at starting the binary (a free port may be taken between probing and binding).
const START_ATTEMPTS: usize = 5;

/// A running `ingest` process; killed (SIGKILL) and reaped when dropped, even on panic.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts the binary on a free loopback port over `data_dir` and waits until `/healthz`
    /// answers.
    async fn start(data_dir: &Path, log_dir: &Path, run: usize) -> ServerProcess {
        for attempt in 0..START_ATTEMPTS {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("probe a free port")
                .port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let log = log_dir.join(format!("ingest-{run}-{attempt}.log"));
            let child = Command::new(env!("CARGO_BIN_EXE_ingest"))
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--data-dir")
                .arg(data_dir)
                .args(["--sqlite-synchronous", "full"])
                .args(["--device-frames-per-sec", "10000000"])
                .args(["--device-readings-per-sec", "1000000000"])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .expect("spawn ingest");
            let mut server = ServerProcess { child, addr, log };
            if server.wait_healthy().await {
                return server;
            }
            // Dropping `server` kills it; try another port.
        }
        panic!("ingest did not start in {START_ATTEMPTS} attempts (logs in {log_dir:?})");
    }

    /// Polls `/healthz` until it answers 200; false if the process exited or time ran out.
    async fn wait_healthy(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + START_WAIT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && http_get(self.addr, "/healthz", &[]).await.0 == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// SIGKILL, then reap.
    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/v1/devices/ws", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// A device token minted by the binary itself (`ingest token device ID --data-dir DIR`).
fn mint_token(data_dir: &Path, device_id: u64) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ingest"))
        .args(["token", "device", &device_id.to_string(), "--data-dir"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run ingest token");
    assert!(
        out.status.success(),
        "ingest token device {device_id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf-8 token");
    token.trim().to_string()
}

/// Streams every device over `server` until each has `more` further frames acknowledged, then
/// kills the server with SIGKILL; returns the devices with what they still hold unacked.
async fn stream_then_kill_9(
    mut server: ServerProcess,
    devices: Vec<(Firmware, String)>,
    more: u64,
) -> Vec<(Firmware, String)> {
    let mut tasks = Vec::new();
    let mut targets = Vec::new();
    for (mut fw, token) in devices {
        let device = Device::connect(&server.ws_url(), &token, fw.id)
            .await
            .expect("connect");
        targets.push((fw.progress(), fw.acked + more));
        tasks.push(tokio::spawn(async move {
            // Re-sends its buffer, then streams until the connection dies.
            let session = fw.stream(device, u64::MAX, 128, None).await;
            (fw, token, session)
        }));
    }
    let streaming = async {
        while targets
            .iter()
            .any(|(p, target)| p.load(Ordering::Acquire) < *target)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    if tokio::time::timeout(WAIT, streaming).await.is_err() {
        panic!("devices did not stream; server log:\n{}", server.log());
    }
    server.kill_9();
    let mut devices = Vec::new();
    for task in tasks {
        let (fw, token, session) = tokio::time::timeout(WAIT, task)
            .await
            .expect("device notices the kill")
            .expect("device task");
        assert!(!session.complete, "device {}: the stream is endless", fw.id);
        assert!(
            session.errors.is_empty(),
            "device {}: errors {:?}",
            fw.id,
            session.errors
        );
        devices.push((fw, token));
    }
    devices
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_frames_survive_kill_9_and_resent_frames_are_stored_once() {
    const DEVICES: u64 = 4;
    const READINGS: usize = 5;
    /// Kill-restart cycles before the final run.
    const KILLS: usize = 3;
    /// Further acks every device must have before each kill (so the kill lands mid-stream).
    const ACKS_PER_RUN: u64 = 100;
    /// New frames each device sends in the final run, behind its resends.
    const AFTER_RESTART: u64 = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let log_dir = dir.path().to_path_buf();
    let mut devices: Vec<(Firmware, String)> = (1..=DEVICES)
        .map(|id| (Firmware::new(id, READINGS), mint_token(&data_dir, id)))
        .collect();

    let mut cut_off = 0;
    for run in 0..KILLS {
        let server = ServerProcess::start(&data_dir, &log_dir, run).await;
        devices = stream_then_kill_9(server, devices, ACKS_PER_RUN).await;
        cut_off += devices
            .iter()
            .filter(|(fw, _)| !fw.unacked.is_empty())
            .count();
    }
    assert!(
        cut_off > 0,
        "no kill landed while frames were unacknowledged"
    );
    let acked_before_kill: Vec<u64> = devices.iter().map(|(fw, _)| fw.acked).collect();

    let server = ServerProcess::start(&data_dir, &log_dir, KILLS).await;
    let mut tasks = Vec::new();
    for (mut fw, token) in devices {
        let device = Device::connect(&server.ws_url(), &token, fw.id)
            .await
            .expect("reconnect");
        tasks.push(tokio::spawn(async move {
            let last = fw.last_sent() + AFTER_RESTART;
            let session = fw.stream(device, last, 128, None).await;
            (fw, session)
        }));
    }
    let db = data_dir.join(ingest::store::sqlite::DB_FILE);
    for (task, acked_before) in tasks.into_iter().zip(acked_before_kill) {
        let (fw, session) = tokio::time::timeout(WAIT + firmware::STALL, task)
            .await
            .expect("device finishes after the restart")
            .expect("device task");
        assert!(
            session.complete,
            "device {}: after the restart only acked {} of {} (errors {:?}); server log:\n{}",
            fw.id,
            fw.acked,
            fw.last_sent(),
            session.errors,
            server.log()
        );
        let stored = stored_in(&db, fw.id);
        let acked: Vec<_> = stored
            .iter()
            .copied()
            .filter(|r| r.0 <= acked_before)
            .collect();
        assert_exactly_once(
            fw.id,
            &acked,
            &fw.expected_rows_where(|s| s <= acked_before),
            "frames acked before the last kill",
        );
        assert_exactly_once(fw.id, &stored, &fw.expected_rows(), "every frame ever sent");
    }
    drop(server);
}

/// The process side of `Store::failed` (the in-process side is `store_failure.rs`): when the
/// store can never confirm a commit again, the binary exits with a failure status and says why,
/// so a supervisor restarts it instead of it accepting frames it can never ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_with_an_error_when_its_store_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let token = mint_token(&data_dir, 3);
    let mut server = ServerProcess::start(&data_dir, dir.path(), 0).await;
    let mut device = Device::connect(&server.ws_url(), &token, 3)
        .await
        .expect("connect");
    device.send(1, 2).await;
    assert_eq!(device.wait_ack(1).await, 1);

    // The WAL it writes disappears: the next fsync cannot confirm anything (a real poisoning).
    let wal = data_dir.join(format!("{}-wal", ingest::store::sqlite::DB_FILE));
    std::fs::remove_file(&wal).expect("remove the WAL");
    device.send(2, 2).await;
    assert_eq!(
        device.wait_close().await,
        (1011, "store unavailable".to_string())
    );

    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait for ingest") {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest still runs with a failed store; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(1), "log:\n{}", server.log());
    let log = server.log();
    assert!(
        log.contains("the store failed, the server stopped") && log.contains("-wal"),
        "stderr names the failure and the file:\n{log}"
    );
}
