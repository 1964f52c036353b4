//! Browser tests of the web dashboard in real Chromium: the real `ingest` binary on a free port
//! and a temp data dir, a few devices streaming over the real device WebSocket, and the
//! Playwright script `tests/browser/dashboard.spec.mjs` driving Debian's Chromium. The script
//! asks this test to restart the server mid-run (`RESTART_ME` on its stdout, `RESTARTED` on
//! its stdin), for what the devices have had acknowledged (`EXPECT?` -> one JSON line), so the
//! page's chart can be compared with what was really sent, and for a short-lived operator token
//! (`SHORT_TOKEN?`). Screenshots go to
//! `target/browser-artifacts/`.
//!
//! Needs `/usr/bin/chromium` (`apt-get install -y chromium`) and `npm ci` in
//! `ingest/tests/browser/`; `.ci/run` installs both. Without them this test fails and says so.

mod common;
mod firmware;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use common::Device;

/// Simulated devices (ids 1..=DEVICES).
const DEVICES: u64 = 5;
/// Readings per frame: one per channel 1..=CHANNELS.
const CHANNELS: usize = 8;
/// Frame period per device: 5 devices x 25 frames/s x 8 readings = 1,000 readings/s.
const FRAME_PERIOD: Duration = Duration::from_millis(40);
const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The real server binary, started over `data_dir` on `port`.
struct Server {
    child: Child,
    dashboard_url: String,
}

impl Server {
    fn start(data_dir: &Path, port: u16) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ingest"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--sqlite-synchronous", "normal"])
            .args([
                "--device-name",
                "2:pump-2",
                "--device-tag",
                "4:site-b/line-1",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the ingest binary");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let dashboard_url = loop {
            let line = lines
                .next()
                .expect("ingest exited before printing its dashboard URL")
                .expect("read ingest stdout");
            if let Some(rest) = line.trim().strip_prefix("dashboard:") {
                break rest.split_whitespace().next().expect("url").to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Server {
            child,
            dashboard_url,
        }
    }

    /// kill -9: no goodbye to anyone, like a crash.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// What one device sent: frame seq -> the timestamp of its channel-1 reading; and its acks.
#[derive(Default)]
struct Sent {
    ts_by_seq: Mutex<BTreeMap<u64, i64>>,
    acked: AtomicU64,
}

/// One device's frames: numbered, remembered in `sent`, buffered until acknowledged.
struct Frames {
    id: u64,
    next_seq: u64,
    next_due: tokio::time::Instant,
    unacked: BTreeMap<u64, Vec<u8>>,
    sent: Arc<Sent>,
}

impl Frames {
    /// Samples every period that has come due (also while disconnected, like firmware does);
    /// returns the new frames.
    fn sample(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while self.next_due <= tokio::time::Instant::now() {
            self.next_due += FRAME_PERIOD;
            let seq = self.next_seq;
            self.next_seq += 1;
            let bytes = common::frame(self.id, seq, CHANNELS);
            if let Some(&(_, _, ts, _)) = firmware::rows_of(seq, &bytes).iter().find(|r| r.1 == 1) {
                self.sent.ts_by_seq.lock().expect("sent").insert(seq, ts);
            }
            self.unacked.insert(seq, bytes.clone());
            out.push(bytes);
        }
        let acked = self.sent.acked.load(Ordering::Acquire);
        self.unacked.retain(|s, _| *s > acked);
        out
    }
}

/// A device that samples a frame every FRAME_PERIOD like good firmware: frames not yet
/// acknowledged are kept (also while the server is away) and re-sent with the RESENT flag after
/// a reconnect; it reconnects until `stop`.
async fn run_device(id: u64, url: String, token: String, sent: Arc<Sent>, stop: Arc<AtomicBool>) {
    let mut frames = Frames {
        id,
        next_seq: 1,
        next_due: tokio::time::Instant::now(),
        unacked: BTreeMap::new(),
        sent: sent.clone(),
    };
    while !stop.load(Ordering::Relaxed) {
        frames.sample();
        let Ok(device) = Device::connect(&url, &token, id).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (mut sink, mut stream) = device.ws.split();
        let reader_sent = sent.clone();
        let mut reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Binary(b) = msg
                    && let Ok(codecs::Frame::Ack { header }) = codecs::decode(
                        &b,
                        codecs::Direction::ServerToDevice,
                        &codecs::Limits::default(),
                        common::now_us(),
                    )
                {
                    reader_sent
                        .acked
                        .fetch_max(header.seq.get(), Ordering::AcqRel);
                }
            }
        });
        frames.sample();
        let backlog: Vec<Vec<u8>> = frames
            .unacked
            .values()
            .map(|f| firmware::resent(f))
            .collect();
        let mut ok = true;
        for f in backlog {
            if sink.send(Message::Binary(Bytes::from(f))).await.is_err() {
                ok = false;
                break;
            }
        }
        while ok && !stop.load(Ordering::Relaxed) && !reader.is_finished() {
            tokio::time::sleep_until(frames.next_due).await;
            for bytes in frames.sample() {
                ok = ok && sink.send(Message::Binary(Bytes::from(bytes))).await.is_ok();
            }
        }
        let _ = sink.send(Message::Close(None)).await;
        if tokio::time::timeout(Duration::from_secs(2), &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }
}

/// Channel-1 timestamps the device sent and the server acknowledged (stored), in order.
fn acked_ts(sent: &Sent) -> (Vec<i64>, Vec<i64>) {
    let acked = sent.acked.load(Ordering::Acquire);
    let map = sent.ts_by_seq.lock().expect("sent");
    let stored = map.range(..=acked).map(|(_, ts)| *ts).collect();
    let all = map.values().copied().collect();
    (stored, all)
}

fn check_prerequisites() -> Result<(), String> {
    if !Path::new(CHROMIUM).exists() {
        return Err(format!(
            "{CHROMIUM} is missing: install it with `apt-get update && apt-get install -y chromium` (.ci/run does)"
        ));
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Err(format!(
            "playwright-core is missing: run `npm ci` in {} (.ci/run does)",
            browser_dir().display()
        ));
    }
    Ok(())
}

/// Relays the script's output and answers its requests; returns the (restarted) server, the
/// number of restarts and the script's other output lines.
fn talk_to_script(
    from_node: BufReader<std::process::ChildStdout>,
    mut to_node: std::process::ChildStdin,
    mut server: Server,
    data_dir: &Path,
    port: u16,
    sents: &[Arc<Sent>],
) -> (Server, usize, Vec<String>) {
    let mut restarts = 0;
    let mut out = Vec::new();
    for line in from_node.lines() {
        let Ok(line) = line else { break };
        println!("[browser] {line}");
        match line.trim() {
            "RESTART_ME" => {
                server.kill();
                // Devices keep sampling (and buffering) while the server is down.
                std::thread::sleep(Duration::from_secs(2));
                server = Server::start(data_dir, port);
                restarts += 1;
                let _ = writeln!(to_node, "RESTARTED");
            }
            "EXPECT?" => {
                let (stored, sent) = acked_ts(&sents[0]);
                let reply = serde_json::json!({"device": "1", "channel": 1, "stored": stored, "sent": sent});
                let _ = writeln!(to_node, "{reply}");
            }
            "SHORT_TOKEN?" => {
                // Expires while the script watches the page (close 4003 on its socket).
                let authority = ingest::auth::Authority::load_or_create(data_dir).expect("secret");
                let token = authority
                    .mint_operator("expiring", vec!["*".into()], Some(Duration::from_secs(8)))
                    .expect("mint");
                let _ = writeln!(to_node, "{token}");
            }
            _ => out.push(line),
        }
        let _ = to_node.flush();
    }
    (server, restarts, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium_shows_fleet_live_charts_history_and_survives_restart() {
    if let Err(why) = check_prerequisites() {
        panic!("browser test cannot run: {why}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let server = Server::start(dir.path(), port);
    let authority = ingest::auth::Authority::load_or_create(dir.path()).expect("secret");
    let ws_url = format!("ws://127.0.0.1:{port}/v1/devices/ws");

    let stop = Arc::new(AtomicBool::new(false));
    let mut sents = Vec::new();
    let mut tasks = Vec::new();
    for id in 1..=DEVICES {
        let sent = Arc::new(Sent::default());
        let token = authority.mint_device(id, None).expect("mint");
        tasks.push(tokio::spawn(run_device(
            id,
            ws_url.clone(),
            token,
            sent.clone(),
            stop.clone(),
        )));
        sents.push(sent);
    }
    for s in &sents {
        while s.acked.load(Ordering::Acquire) == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let narrow_token = authority
        .mint_operator("narrow", vec!["2".into(), "3".into()], None)
        .expect("mint");
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let mut node = Command::new("node")
        .arg("dashboard.spec.mjs")
        .current_dir(browser_dir())
        .env("DASHBOARD_URL", &server.dashboard_url)
        .env(
            "DEVICES",
            (1..=DEVICES)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .env("CHANNELS", CHANNELS.to_string())
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", CHROMIUM)
        .env("NARROW_TOKEN", &narrow_token)
        .env("NARROW_DEVICES", "2,3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node (Node >= 20 is needed)");
    let to_node = node.stdin.take().expect("stdin");
    let from_node = BufReader::new(node.stdout.take().expect("stdout"));
    let talk_sents = sents.clone();
    let data_dir = dir.path().to_path_buf();
    // Node's output is read with blocking I/O, off the runtime the devices run on.
    let (server, restarts, out) = tokio::task::spawn_blocking(move || {
        talk_to_script(from_node, to_node, server, &data_dir, port, &talk_sents)
    })
    .await
    .expect("script driver");
    let status = node.wait().expect("node exit");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    assert_eq!(
        restarts, 1,
        "the script asks for exactly one server restart"
    );
    assert!(
        status.success(),
        "the browser script failed ({status}); its output:\n{}\nscreenshots: {}",
        out.join("\n"),
        artifacts.display()
    );
    let (stored, _) = acked_ts(&sents[0]);
    assert!(!stored.is_empty(), "device 1 had readings stored");
    drop(server);
}
