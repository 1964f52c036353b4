//! One dashboard client on the server's `GET /v1/live` WebSocket: subscribes (to some devices or
//! to `*`), then reads binary `Live` frames and JSON events and feeds them to its [`Checker`];
//! when the server closes it during the run (a slow consumer), it reconnects, resumes after its
//! last position and subscribes again, as a dashboard would. Or, stalled, it subscribes and never
//! reads until the run is over.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use codecs::{Direction, FrameFlag};

use crate::check::Checker;
use crate::dashboards::{ClientKind, ClientPlan, ClientResult, Finish};
use crate::device::{Fleet, codecs_now_us};
use crate::stats::Stats;

/// Read buffer of an all-device dashboard connection (frames are at most ~29 KB at the server's
/// default batch of 1024 readings; tungstenite's default 128 KiB per connection adds up over
/// 1,000s).
const READ_BUFFER: usize = 16 * 1024;
/// Read buffer of a dashboard on a few devices: its frames are a few hundred bytes, and
/// tungstenite zero-fills the whole read buffer on every poll of the socket (16 KiB per poll was
/// 8% of the simulator's CPU with 1,000 such clients); a larger frame takes several reads.
const SMALL_READ_BUFFER: usize = 2 * 1024;
/// Largest message accepted from the server.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Time allowed for the connect, the upgrade and the subscribe reply.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// A stalled client, at the end, reads what is left for this long to learn how it was closed.
const STALLED_DRAIN: Duration = Duration::from_secs(3);
/// Pause before a client the server closed reconnects (and resumes).
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

type Socket = WebSocketStream<TcpStream>;

/// Why a client could not start.
type SetupError = Box<dyn std::error::Error + Send + Sync>;

/// What a successful setup gives.
struct Setup {
    /// The subscribed socket.
    ws: Socket,
    /// The subscribe reply's position.
    position: u64,
    /// When the reply arrived (Unix us).
    at_us: i64,
    /// `gap` events received before the reply (after a resume).
    gaps: u64,
}

/// Connects, upgrades with the operator token, resumes after `resume` (a reconnect), and
/// subscribes.
async fn setup(
    fleet: &Fleet,
    token: &str,
    plan: &ClientPlan,
    resume: Option<u64>,
) -> Result<Setup, SetupError> {
    let tcp = TcpStream::connect(fleet.server).await?;
    let _ = tcp.set_nodelay(true);
    let mut req = fleet.cfg.live_url().into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let read_buffer = if plan.devices.is_empty() {
        READ_BUFFER
    } else {
        SMALL_READ_BUFFER
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config)).await?;
    let devices = if plan.devices.is_empty() {
        json!("*")
    } else {
        json!(plan.devices)
    };
    if let Some(p) = resume {
        let request = json!({"id": 0, "op": "resume", "position": p.to_string()});
        ws.send(Message::text(request.to_string())).await?;
    }
    let request = json!({"id": 1, "op": "subscribe", "devices": devices, "snapshot": false});
    ws.send(Message::text(request.to_string())).await?;
    let mut gaps = 0;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["type"] == json!("gap") {
                    gaps += 1;
                }
                if v["id"] == json!(0) && v["ok"] != json!(true) {
                    return Err(format!("resume refused: {v}").into());
                }
                if v["id"] != json!(1) {
                    continue;
                }
                if v["ok"] != json!(true) {
                    return Err(format!("subscribe refused: {v}").into());
                }
                let position = crate::dashboards::json_u64(&v["position"]).unwrap_or(0);
                return Ok(Setup {
                    ws,
                    position,
                    at_us: codecs_now_us(),
                    gaps,
                });
            }
            Some(Ok(Message::Close(f))) => {
                return Err(format!("closed before the subscribe reply: {f:?}").into());
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err("connection ended before the subscribe reply".into()),
        }
    }
}

/// Runs one WebSocket dashboard client until the run is over.
pub async fn run(
    fleet: Arc<Fleet>,
    token: Arc<str>,
    plan: ClientPlan,
    ready: tokio::sync::mpsc::Sender<()>,
    mut done: watch::Receiver<bool>,
) -> ClientResult {
    let mut result = ClientResult::new(plan.kind);
    let first = tokio::time::timeout(SETUP_TIMEOUT, setup(&fleet, &token, &plan, None)).await;
    let _ = ready.send(()).await;
    let Setup {
        ws,
        position,
        at_us: subscribed_at,
        ..
    } = match first {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            result.error = Some(e.to_string());
            return result;
        }
        Err(_) => {
            result.error = Some("timed out connecting and subscribing".into());
            return result;
        }
    };
    result.connected = true;
    let Some(ledger) = fleet.ledger.as_ref() else {
        return result;
    };
    if plan.kind == ClientKind::Stalled {
        // Never read until the run is over (the server sees a client that stopped reading).
        let mut ws = ws;
        let _ = done.wait_for(|d| *d).await;
        result.closes.extend(drain_close(&mut ws).await);
        return result;
    }
    let all_devices: Vec<u64>;
    let devices = if plan.devices.is_empty() {
        all_devices = ledger.device_ids().collect();
        &all_devices
    } else {
        &plan.devices
    };
    let mut checker = Checker::new(
        ledger,
        devices,
        subscribed_at,
        Some(position),
        plan.devices.is_empty(),
    );
    checker.latency_from_us = fleet.measure_from_us;
    let mut finish = Finish::new(fleet.cfg.dashboard_grace.0);
    let stats = &fleet.stats;
    let mut ws = Some(ws);
    loop {
        let Some(socket) = ws.as_mut() else {
            // The server closed the connection during the run: reconnect and resume after the
            // last position received, as a dashboard would, until the run is over.
            finish.note_done(&done);
            if finish.over() {
                break;
            }
            tokio::time::sleep(RECONNECT_DELAY).await;
            let resume = checker.position();
            match tokio::time::timeout(SETUP_TIMEOUT, setup(&fleet, &token, &plan, resume)).await {
                Ok(Ok(s)) => {
                    for _ in 0..s.gaps {
                        checker.on_gap();
                    }
                    result.reconnects += 1;
                    ws = Some(s.ws);
                }
                _ => result.reconnect_failures += 1,
            }
            continue;
        };
        tokio::select! {
            msg = socket.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    let now = codecs_now_us();
                    match codecs::decode(&b, Direction::ServerToDashboard, &codecs::Limits::default(), now) {
                        Ok(codecs::Frame::Live { header, records }) => {
                            let coalesced = header.flags.get() & FrameFlag::Coalesced.wire() != 0;
                            checker.on_position(header.seq.get(), records.len() as u64, coalesced);
                            for r in records {
                                checker.on_reading(ledger, r.device_id.get(), r.channel.get(), r.ts_us.get(), now);
                            }
                            Stats::add(&stats.dashboard_readings, records.len() as u64);
                            if let Some(last) = records.last() {
                                let us = now.saturating_sub(last.ts_us.get()).max(0) as u64;
                                stats.dashboard_max_latency_us.fetch_max(us, Ordering::Relaxed);
                            }
                        }
                        Ok(_) => stats.error("dashboard_unexpected_frame"),
                        Err(e) => stats.error(&format!("dashboard_undecodable_{}", e.reason().name())),
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                        match v["type"].as_str() {
                            Some("gap") => checker.on_gap(),
                            Some("coalesced") => checker.on_coalesced(v["dropped"].as_u64().unwrap_or(0)),
                            _ => {}
                        }
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    result.closes.push(f.map_or(1005, |f| u16::from(f.code)));
                    ws = None;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    result.closes.push(1006);
                    ws = None;
                }
            },
            _ = finish.tick(&mut done) => if finish.over() || checker.complete(ledger) { break },
        }
    }
    if let Some(mut socket) = ws {
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    }
    checker.finish(ledger);
    result.checker = Some(checker);
    result
}

/// Reads what is left on a stalled client's socket, for a short time, and returns the close
/// code the server sent (1006: the connection ended without one; none: still open).
async fn drain_close(ws: &mut Socket) -> Option<u16> {
    let until = Instant::now() + STALLED_DRAIN;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => return Some(f.map_or(1005, |f| u16::from(f.code))),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return Some(1006),
            Err(_) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return None;
            }
        }
    }
}
