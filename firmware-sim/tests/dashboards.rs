//! Dashboard load mode against the real ingest server (in process, on 127.0.0.1:0), and the same
//! load through Mosquitto when its binary is installed.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use firmware_sim::config::SimConfig;
use firmware_sim::dashboards::{ClientKind, plans};
use firmware_sim::stats::Summary;

mod support;
use support::{Server, sim};

/// Asserts a clean dashboard run: every reading of every subscribed device arrived exactly once
/// and in order (the checker counts a reading out of order as a duplicate), with latency samples.
fn assert_exactly_once_in_order(s: &Summary, per_device: &HashMap<u64, u64>, cfg: &SimConfig) {
    let d = &s.dashboards;
    let table = s.table();
    assert!(s.ok, "a clean run:\n{table}");
    assert!(d.dashboard_ok, "{table}");
    assert_eq!(d.dashboard_connect_failures, 0, "{table}");
    assert_eq!(d.dashboard_gaps, 0, "no gap:\n{table}");
    assert_eq!(
        d.dashboard_duplicates, 0,
        "no duplicate, nothing out of order:\n{table}"
    );
    assert_eq!(d.dashboard_readings_missed, 0, "{table}");
    assert_eq!(d.dashboard_unexpected_readings, 0, "{table}");
    // The clients subscribed before any device sent: each must get every reading of its devices.
    let mut want_devices = 0;
    for plan in plans(cfg) {
        if plan.kind == ClientKind::Devices {
            want_devices += plan.devices.iter().map(|id| per_device[id]).sum::<u64>();
        }
    }
    let by_kind = &d.dashboard_by_client_kind;
    assert!(want_devices > 0);
    assert_eq!(
        by_kind["devices"].readings_expected, want_devices,
        "{table}"
    );
    assert_eq!(
        by_kind["devices"].readings_received, want_devices,
        "{table}"
    );
    assert_eq!(by_kind["all"].readings_received, s.readings_sent, "{table}");
    assert_eq!(
        d.dashboard_readings_received,
        want_devices + s.readings_sent,
        "{table}"
    );
    // One latency sample per frame per client that got it: the all-device client alone gets
    // every frame.
    assert!(
        d.dashboard_latency_ms.samples >= s.frames_sent,
        "latency measured on each frame's last reading:\n{table}"
    );
    assert!(d.dashboard_latency_ms.p50 > 0.0, "{table}");
    assert!(
        d.dashboard_latency_ms.max < 10_000.0,
        "latency in a plausible range:\n{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_of_a_subscribed_device_reaches_each_dashboard_once_in_order() {
    let mut server = Server::start().await;
    let url = format!("ws://{}", server.addr);
    let secret = server.secret();
    let cfg = sim(&[
        "--url",
        &url,
        "--secret-file",
        &secret,
        "--devices",
        "8",
        "--first-device",
        "50",
        "--rate",
        "20",
        "--readings",
        "5",
        "--duration",
        "3s",
        "--ramp",
        "0",
        "--dashboards",
        "4",
        "--dashboard-devices",
        "3",
        "--dashboard-all",
        "1",
    ]);
    let summary = firmware_sim::run(cfg.clone()).await.expect("run");
    eprintln!("{}", summary.table());
    server.stop().await;
    let stored = server.stored_per_device();
    assert_eq!(
        stored.values().sum::<u64>(),
        summary.readings_sent,
        "{}",
        summary.table()
    );
    assert_eq!(summary.dashboards.dashboard_transport, "websocket");
    assert_exactly_once_in_order(&summary, &stored, &cfg);
}

/// A local Mosquitto on a free port, if the binary is installed.
struct Mosquitto {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Option<Mosquitto> {
        let bin = [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("config");
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Mosquitto {
                    child,
                    port,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_load_through_mosquitto_is_checked_the_same_way() {
    let Some(broker) = Mosquitto::start() else {
        eprintln!("mosquitto not installed: skipped");
        return;
    };
    let addr = format!("127.0.0.1:{}", broker.port);
    let cfg = sim(&[
        "--mqtt-broker",
        &addr,
        "--devices",
        "6",
        "--rate",
        "20",
        "--readings",
        "5",
        "--duration",
        "2s",
        "--ramp",
        "0",
        "--dashboards",
        "3",
        "--dashboard-devices",
        "2",
        "--dashboard-all",
        "1",
    ]);
    let summary = firmware_sim::run(cfg.clone()).await.expect("run");
    eprintln!("{}", summary.table());
    assert_eq!(summary.dashboards.dashboard_transport, "mqtt");
    assert_eq!(
        summary.frames_acked, summary.frames_sent,
        "every publish got its PUBACK"
    );
    // Each device sent (readings_sent / frames) per frame; per device from the frames it sent
    // is not in the summary, so count what the all-device client got per device instead:
    // with no gap and no duplicate it got every reading once.
    let per_frame = 5;
    let d = &summary.dashboards;
    assert_eq!(
        d.dashboard_by_client_kind["all"].readings_received,
        summary.readings_sent
    );
    assert_eq!(summary.readings_sent, summary.frames_sent * per_frame);
    assert!(d.dashboard_ok, "{}", summary.table());
    assert_eq!(
        d.dashboard_gaps + d.dashboard_duplicates,
        0,
        "{}",
        summary.table()
    );
    assert_eq!(
        d.dashboard_readings_received,
        d.dashboard_readings_expected,
        "{}",
        summary.table()
    );
    assert!(d.dashboard_latency_ms.samples >= summary.frames_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_reconnect_after_a_server_restart_and_report_the_gap() {
    let server = Server::start().await;
    let url = format!("ws://{}", server.addr);
    let secret = server.secret();
    let cfg = sim(&[
        "--url",
        &url,
        "--secret-file",
        &secret,
        "--devices",
        "4",
        "--rate",
        "20",
        "--readings",
        "4",
        "--duration",
        "4s",
        "--ramp",
        "0",
        "--backoff-base",
        "50ms",
        "--backoff-cap",
        "300ms",
        "--dashboards",
        "2",
        "--dashboard-devices",
        "2",
        "--dashboard-all",
        "1",
        "--dashboard-grace",
        "2s",
    ]);
    let run = tokio::spawn(firmware_sim::run(cfg));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut server = server.restart(Duration::from_millis(300)).await;
    let summary = run.await.expect("sim task").expect("run");
    eprintln!("{}", summary.table());
    server.stop().await;
    let d = &summary.dashboards;
    let table = summary.table();
    assert_eq!(
        summary.lost, 0,
        "devices lose nothing across the restart:\n{table}"
    );
    assert_eq!(
        d.dashboard_closes_by_code.get("1001"),
        Some(&3),
        "every dashboard saw the shutdown (1001 going away):\n{table}"
    );
    assert!(d.dashboard_reconnects >= 3, "each reconnected:\n{table}");
    assert!(
        d.dashboard_gaps_by_kind["gap_message"] >= 3,
        "resuming with a position of the earlier run gives each a `gap`:\n{table}"
    );
    assert!(
        !d.dashboard_ok && !summary.ok,
        "a gap fails the run:\n{table}"
    );
    assert_eq!(d.dashboard_duplicates, 0, "{table}");
    assert!(
        d.dashboard_readings_received > 0 && d.dashboard_latency_ms.samples > 0,
        "{table}"
    );
}
