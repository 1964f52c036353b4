//! One virtual device with good-firmware behaviour: monotonic sequence numbers, a bounded
//! store-and-forward buffer re-sent in order after every reconnect, reconnect with backoff and
//! jitter, ping watchdog, and the chaos the options ask for.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use codecs::{Direction, FrameFlag, FrameMeta, Reason};

use crate::backoff::Backoff;
use crate::config::{Layout, SimConfig};
use crate::signal::Signal;
use crate::stats::{Stats, latency_histogram};
use crate::token::Tokens;

/// Sequence numbers a device persists at a time (a reboot resumes at the next block).
const SEQ_BLOCK: u64 = 1000;

/// A frame sent and not yet acked.
pub(crate) struct Pending {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// Its bytes (flags patched to RESENT when re-sent).
    pub(crate) bytes: Vec<u8>,
    /// Readings it carries.
    pub(crate) readings: u64,
    /// When it was last sent.
    pub(crate) sent_at: Instant,
}

/// Shared run context.
pub struct Fleet {
    /// Settings.
    pub cfg: SimConfig,
    /// Token source.
    pub tokens: Tokens,
    /// Counters (shared with the dashboard clients).
    pub stats: Arc<Stats>,
    /// Server address (host:port) for the TCP connect.
    pub server: SocketAddr,
    /// Source addresses to bind.
    pub sources: Vec<IpAddr>,
    /// When generation stops.
    pub stop_at: Instant,
    /// When draining gives up.
    pub drain_until: Instant,
    /// What each device sent, when dashboard clients check their streams against it.
    pub ledger: Option<Arc<crate::ledger::Ledger>>,
    /// Frames sent before this instant are left out of the latency histograms (`--warmup`).
    pub measure_from: Instant,
    /// The same instant as Unix microseconds, for the dashboards' send-time comparison.
    pub measure_from_us: i64,
}

/// How a connection ended.
enum Ended {
    /// Stop generating: the run is over and the buffer is empty (or the drain timed out).
    Finished,
    /// Reconnect (the reason was counted already).
    Reconnect,
    /// Simulated reboot: reconnect with the sequence counter moved to the next persisted block.
    Reboot,
}

/// The device's state across connections.
pub struct Device {
    /// Shared run context.
    pub(crate) fleet: Arc<Fleet>,
    /// Device id.
    pub(crate) id: u64,
    /// Index in the fleet (source address, ledger).
    pub(crate) index: u32,
    /// Next sequence number.
    next_seq: u64,
    /// Store-and-forward buffer: sent and not yet acked, oldest first.
    pub(crate) buffer: VecDeque<Pending>,
    /// Randomness (seeded per device).
    pub(crate) rng: SmallRng,
    /// Sensor values.
    signal: Signal,
    /// Reconnect delays.
    pub(crate) backoff: Backoff,
    /// Ack latency of this device (merged into the fleet's at the end).
    pub(crate) latency: Histogram<u64>,
    /// Whether a connection succeeded before (the next one is a reconnect).
    pub(crate) connected_once: bool,
    /// Time of the last reading of the previous frame (the next frame's readings come after it).
    last_ts: i64,
}

type Socket = WebSocketStream<TcpStream>;

impl Device {
    /// A device; `index` spreads it over source addresses.
    pub fn new(fleet: Arc<Fleet>, index: u32) -> Device {
        let id = fleet.cfg.first_device + u64::from(index);
        let mut rng = SmallRng::seed_from_u64(id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let signal = Signal::new(&mut rng);
        let backoff = Backoff::new(fleet.cfg.backoff_base.0, fleet.cfg.backoff_cap.0);
        Device {
            fleet,
            id,
            index,
            next_seq: 1,
            buffer: VecDeque::new(),
            rng,
            signal,
            backoff,
            latency: latency_histogram(),
            connected_once: false,
            last_ts: i64::MIN,
        }
    }

    /// Runs until the run is over and everything is acked (or the drain timed out). Sampling
    /// goes on while disconnected: frames wait in the buffer (store-and-forward).
    pub async fn run(mut self) {
        if self.fleet.cfg.mqtt_broker.is_some() {
            return crate::mqtt::run_device(self).await;
        }
        let period = Duration::from_secs_f64(1.0 / self.fleet.cfg.rate);
        let first = Instant::now()
            + Duration::from_secs_f64(self.rng.random::<f64>() * period.as_secs_f64());
        let mut tick = tokio::time::interval_at(first, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if Instant::now() >= self.fleet.drain_until
                || (Instant::now() >= self.fleet.stop_at && self.buffer.is_empty())
            {
                break;
            }
            let connect = connect(self.fleet.clone(), self.id, self.index);
            tokio::pin!(connect);
            let connected = loop {
                let generating = Instant::now() < self.fleet.stop_at;
                tokio::select! {
                    r = &mut connect => break r,
                    _ = tick.tick(), if generating => { self.generate(); }
                }
            };
            let ws = match connected {
                Ok(ws) => ws,
                Err(_) => {
                    Stats::inc(&self.fleet.stats.connect_failures);
                    let d = self.backoff.next_delay(&mut self.rng);
                    self.offline(&mut tick, Instant::now() + d).await;
                    continue;
                }
            };
            if self.connected_once {
                Stats::inc(&self.fleet.stats.reconnects);
            }
            self.connected_once = true;
            let up_since = Instant::now();
            let ended = self.session(ws, &mut tick).await;
            if up_since.elapsed() >= self.fleet.cfg.stable_after.0 {
                self.backoff.reset();
            }
            match ended {
                Ended::Finished => break,
                Ended::Reboot => {
                    self.next_seq = self.next_seq.div_ceil(SEQ_BLOCK) * SEQ_BLOCK + 1;
                }
                Ended::Reconnect => {}
            }
            let d = self.backoff.next_delay(&mut self.rng);
            self.offline(&mut tick, Instant::now() + d).await;
        }
        self.fleet.stats.merge_latency(&self.latency);
    }

    /// Waits until `until` (bounded by the drain deadline), still sampling into the buffer.
    pub(crate) async fn offline(&mut self, tick: &mut tokio::time::Interval, until: Instant) {
        let until = until.min(self.fleet.drain_until);
        loop {
            let generating = Instant::now() < self.fleet.stop_at;
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                _ = tick.tick(), if generating => { self.generate(); }
            }
        }
    }

    /// One connection: resend the buffer, then generate, send and take acks until it ends.
    async fn session(&mut self, mut ws: Socket, tick: &mut tokio::time::Interval) -> Ended {
        let cfg = self.fleet.cfg.clone();
        // Store-and-forward: everything unacked goes again, in order, flagged RESENT.
        for i in 0..self.buffer.len() {
            let p = &mut self.buffer[i];
            p.bytes[4] |= FrameFlag::Resent.wire() as u8;
            p.sent_at = Instant::now();
            let msg = Message::Binary(Bytes::copy_from_slice(&p.bytes));
            Stats::inc(&self.fleet.stats.frames_resent);
            if ws.send(msg).await.is_err() {
                return Ended::Reconnect;
            }
        }
        let mut chaos = tokio::time::interval(Duration::from_secs(1));
        chaos.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // The timers live across iterations: one created per loop turn was a tenth of the
        // simulator's CPU (timer wheel insert and removal for every frame sent).
        let (drain_until, watchdog_after) = (self.fleet.drain_until, cfg.watchdog.0);
        let watchdog_at = |last_ping: Instant| {
            if watchdog_after.is_zero() {
                drain_until
            } else {
                last_ping + watchdog_after
            }
        };
        let watchdog = tokio::time::sleep_until(watchdog_at(Instant::now()));
        let stop = tokio::time::sleep_until(self.fleet.stop_at);
        let drain = tokio::time::sleep_until(self.fleet.drain_until);
        tokio::pin!(watchdog, stop, drain);
        loop {
            let now = Instant::now();
            if now >= self.fleet.drain_until
                || (now >= self.fleet.stop_at && self.buffer.is_empty())
            {
                let _ = ws.close(None).await;
                return Ended::Finished;
            }
            let generating = now < self.fleet.stop_at;
            tokio::select! {
                _ = tick.tick(), if generating => {
                    let wire = self.generate();
                    if ws.send(Message::Binary(Bytes::from(wire))).await.is_err() {
                        return Ended::Reconnect;
                    }
                }
                _ = chaos.tick() => {
                    if let Some(ended) = self.chaos(&mut ws).await {
                        return ended;
                    }
                }
                _ = &mut watchdog => {
                    Stats::inc(&self.fleet.stats.watchdog_reconnects);
                    return Ended::Reconnect;
                }
                _ = &mut stop, if generating => {}
                _ = &mut drain => {}
                msg = ws.next() => match msg {
                    Some(Ok(Message::Binary(b))) => {
                        if self.on_server_frame(&mut ws, &b).await.is_err() {
                            return Ended::Reconnect;
                        }
                    }
                    Some(Ok(Message::Ping(_))) => {
                        watchdog.as_mut().reset(watchdog_at(Instant::now()));
                    }
                    Some(Ok(Message::Close(frame))) => {
                        if let Some(f) = frame {
                            self.fleet.stats.close(u16::from(f.code));
                        }
                        return Ended::Reconnect;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Ended::Reconnect,
                },
            }
        }
    }

    /// The reading times of the next frame, `n` of them: strictly increasing, after the previous
    /// frame's last reading, spread over at most one period, and the last one is the send time
    /// (now, plus the configured clock skew), so dashboards measure latency from it.
    fn reading_times(&mut self, n: usize) -> Vec<i64> {
        let cfg = &self.fleet.cfg;
        let skew = i64::try_from(cfg.clock_skew.0.as_micros()).unwrap_or(i64::MAX);
        let now = codecs_now_us() + if cfg.clock_behind { -skew } else { skew };
        let n = n.max(1) as i64;
        // Distinct times need n microseconds after the previous frame (a clock step back, or
        // two frames within n us, moves the send time by at most that).
        let now = now.max(self.last_ts.saturating_add(n));
        let period = (1_000_000.0 / cfg.rate) as i64;
        let span = now
            .saturating_sub(self.last_ts)
            .saturating_sub(1)
            .min(period)
            .max(n - 1);
        self.last_ts = now;
        (0..n)
            .map(|i| {
                if n == 1 {
                    now
                } else {
                    now - span + span * i / (n - 1)
                }
            })
            .collect()
    }

    /// Samples the next frame into the buffer; returns the bytes to put on the wire now
    /// (possibly corrupted in transit, as `--corrupt` asks). Counted as sent: if the device is
    /// offline it goes out with the buffer on the next connection.
    pub(crate) fn generate(&mut self) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let meta = FrameMeta {
            device_id: self.id,
            seq,
            flags: 0,
        };
        let layout = self.fleet.cfg.layout;
        let n_readings = self.fleet.cfg.readings;
        let mut bytes = Vec::with_capacity(64 + usize::from(n_readings) * 16);
        let readings = match layout {
            Layout::Telemetry => {
                let times = self.reading_times(usize::from(n_readings));
                let base = times[0];
                let mut w = codecs::TelemetryWriter::begin(&mut bytes, meta, base);
                // One daily-sine angle per frame: its readings are at most a period apart.
                let day = self.signal.day(base);
                for (i, ts) in (1..=n_readings).zip(&times) {
                    let v = self.signal.value_at(&mut self.rng, i, day);
                    let off = u32::try_from(ts - base).unwrap_or(u32::MAX);
                    if w.push(i, 0, off, v).is_err() {
                        break;
                    }
                }
                let n = w.len() as u64;
                w.finish();
                n
            }
            Layout::Environment => {
                let packets = usize::from(n_readings / 4).max(1);
                let times = self.reading_times(packets);
                let mut list = Vec::with_capacity(packets);
                for ts in times {
                    let (t, h, p, b) = self.signal.environment(&mut self.rng, ts);
                    list.push(codecs::EnvPacket::new(ts, t, h, p, b, 0));
                }
                if codecs::encode_environment(&mut bytes, meta, &list).is_err() {
                    return Vec::new();
                }
                packets as u64 * 4
            }
        };
        if let Some(ledger) = &self.fleet.ledger {
            ledger.record(self.index as usize, self.last_ts, readings);
        }
        let cfg = &self.fleet.cfg;
        let stats = &self.fleet.stats;
        Stats::inc(&stats.frames_sent);
        Stats::add(&stats.readings_sent, readings);
        Stats::inc(&stats.in_flight);
        if self.buffer.len() >= cfg.buffer_frames && self.buffer.pop_front().is_some() {
            Stats::inc(&stats.frames_dropped);
            Stats::sub(&stats.in_flight, 1);
        }
        let corrupt = cfg.corrupt > 0.0 && self.rng.random::<f64>() < cfg.corrupt;
        let mut wire = bytes.clone();
        if corrupt && wire.len() > 33 {
            let i = self.rng.random_range(32..wire.len());
            wire[i] ^= 0x5A;
            Stats::inc(&stats.corrupted);
        }
        self.buffer.push_back(Pending {
            seq,
            bytes,
            readings,
            sent_at: Instant::now(),
        });
        wire
    }

    /// Handles an ack or error frame.
    async fn on_server_frame(&mut self, ws: &mut Socket, b: &[u8]) -> Result<(), ()> {
        let stats = &self.fleet.stats;
        let frame = match codecs::decode(
            b,
            Direction::ServerToDevice,
            &codecs::Limits::default(),
            codecs_now_us(),
        ) {
            Ok(f) => f,
            Err(e) => {
                stats.error(&format!("undecodable_server_frame_{}", e.reason().name()));
                return Ok(());
            }
        };
        match frame {
            codecs::Frame::Ack { header } => {
                let acked = header.seq.get();
                let now = Instant::now();
                while self.buffer.front().is_some_and(|p| p.seq <= acked) {
                    if let Some(p) = self.buffer.pop_front() {
                        Stats::inc(&stats.frames_acked);
                        Stats::add(&stats.readings_acked, p.readings);
                        Stats::sub(&stats.in_flight, 1);
                        if p.sent_at >= self.fleet.measure_from {
                            let us =
                                now.saturating_duration_since(p.sent_at).as_micros().max(1) as u64;
                            let _ = self.latency.record(us.min(600_000_000));
                        }
                    }
                }
            }
            codecs::Frame::Error { header, body } => {
                let reason = Reason::from_wire(body.reason.get());
                stats.error(reason.map_or("unknown", |r| r.name()));
                let seq = header.seq.get();
                let Some(pos) = self.buffer.iter().position(|p| p.seq == seq) else {
                    return Ok(());
                };
                if reason == Some(Reason::CrcMismatch) {
                    // Corrupted in transit: send the good copy again.
                    let p = &mut self.buffer[pos];
                    p.bytes[4] |= FrameFlag::Resent.wire() as u8;
                    p.sent_at = Instant::now();
                    Stats::inc(&stats.frames_resent);
                    return ws
                        .send(Message::Binary(Bytes::copy_from_slice(&p.bytes)))
                        .await
                        .map_err(|_| ());
                }
                // Refused for good: it will never be stored, stop holding it.
                self.buffer.remove(pos);
                Stats::inc(&stats.frames_refused);
                Stats::sub(&stats.in_flight, 1);
            }
            _ => stats.error("unexpected_server_frame"),
        }
        Ok(())
    }

    /// Once a second: maybe disconnect, reboot or stall, as the chaos options ask.
    async fn chaos(&mut self, ws: &mut Socket) -> Option<Ended> {
        let cfg = self.fleet.cfg.clone();
        let stats = &self.fleet.stats;
        if Instant::now() >= self.fleet.stop_at {
            return None; // no chaos while draining
        }
        if cfg.reboot_rate > 0.0 && self.rng.random::<f64>() < cfg.reboot_rate {
            Stats::inc(&stats.reboots);
            return Some(Ended::Reboot); // power loss: no close frame
        }
        if cfg.disconnect_rate > 0.0 && self.rng.random::<f64>() < cfg.disconnect_rate {
            let _ = ws.close(None).await;
            return Some(Ended::Reconnect);
        }
        if cfg.stall_rate > 0.0 && self.rng.random::<f64>() < cfg.stall_rate {
            Stats::inc(&stats.stalls);
            tokio::time::sleep(cfg.stall_for.0).await;
        }
        None
    }
}

/// Opens a device connection (TCP from the device's source address, then the upgrade).
async fn connect(
    fleet: Arc<Fleet>,
    id: u64,
    index: u32,
) -> Result<Socket, Box<dyn std::error::Error + Send + Sync>> {
    let token = fleet.tokens.for_device(id)?;
    let socket = if fleet.server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if !fleet.sources.is_empty() {
        let src = fleet.sources[index as usize % fleet.sources.len()];
        socket.bind(SocketAddr::new(src, 0))?;
    }
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(fleet.server)).await??;
    let _ = tcp.set_nodelay(true);
    let mut req = fleet.cfg.device_url().into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    // Acks and error frames are tens of bytes, and tungstenite zero-fills the whole read buffer
    // on every poll of the socket.
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async_with_config(req, tcp, Some(config)),
    )
    .await??;
    Ok(ws)
}

/// Microseconds since the Unix epoch.
pub fn codecs_now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
