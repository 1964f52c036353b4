//! The same fleet and dashboard load through an MQTT broker (`--mqtt-broker HOST:PORT`), so a
//! broker's fan-out can be compared with telemux's live hub using the same load generator, the
//! same frames and the same checks.
//!
//! - A device publishes each frame (the exact bytes it would send on the WebSocket) with QoS 1
//!   to `devices/<id>/telemetry`; the broker's PUBACK counts as its ack (the broker stores
//!   nothing durably, so this is not comparable with telemux's ack-after-commit). Store and
//!   forward as on the WebSocket: unacked frames are published again, in order, after a
//!   reconnect (clean session, so the library's own in-flight state is dropped).
//! - A dashboard client subscribes with QoS 0 to its devices' topics (`devices/+/telemetry` for
//!   all), decodes the frames and feeds the readings to its [`Checker`]; it subscribes again on
//!   every ConnAck (rumqttc does not). A stalled client subscribes, then stops polling its
//!   event loop, so nothing more is read from its socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use codecs::{Direction, FrameFlag};

use crate::check::Checker;
use crate::dashboards::{ClientKind, ClientPlan, ClientResult, Finish};
use crate::device::{Device, Fleet, codecs_now_us};
use crate::stats::Stats;

/// Topic filter matching every device's telemetry.
pub const ALL_DEVICES: &str = "devices/+/telemetry";
/// Largest MQTT packet either way (rumqttc's default caps incoming packets at 10 KiB; a frame
/// of 4096 readings is 64 KiB).
const MAX_PACKET: usize = 1024 * 1024;
/// MQTT keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Publishes in flight (sent, PUBACK pending) per device.
const INFLIGHT: u16 = 100;
/// Requests queued in a dashboard client's library (it only subscribes).
const SUBSCRIBER_REQUESTS: usize = 16;
/// Time allowed to connect and get the SUBACK.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause before a dashboard client's event loop tries to reconnect.
const SUBSCRIBER_RETRY: Duration = Duration::from_millis(200);

/// The topic a device publishes to.
pub fn topic(device_id: u64) -> String {
    format!("devices/{device_id}/telemetry")
}

fn options(client_id: String, broker: SocketAddr) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
    o.set_keep_alive(KEEP_ALIVE);
    o.set_clean_session(true);
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    o.set_inflight(INFLIGHT);
    o
}

/// Runs a device against the broker until the run is over and its buffer is acked (or the
/// drain timed out).
pub async fn run_device(mut dev: Device) {
    let fleet = dev.fleet.clone();
    let cfg = &fleet.cfg;
    let stats = &fleet.stats;
    // Room for every frame the buffer may hold, so a publish never finds the queue full.
    let requests = cfg.buffer_frames.saturating_add(16);
    let (client, mut events) = AsyncClient::new(
        options(format!("sim-device-{}", dev.id), fleet.server),
        requests,
    );
    let topic = topic(dev.id);
    let publish = |bytes: Vec<u8>| {
        if client
            .try_publish(topic.as_str(), QoS::AtLeastOnce, false, bytes)
            .is_err()
        {
            stats.error("mqtt_publish_queue_full");
        }
    };
    let period = Duration::from_secs_f64(1.0 / cfg.rate);
    let first = Instant::now() + period.mul_f64(rand::Rng::random::<f64>(&mut dev.rng));
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut connected = false;
    let mut up_since = Instant::now();
    loop {
        let now = Instant::now();
        if now >= fleet.drain_until || (now >= fleet.stop_at && dev.buffer.is_empty()) {
            break;
        }
        let generating = now < fleet.stop_at;
        tokio::select! {
            _ = tick.tick(), if generating => {
                let wire = dev.generate();
                // Offline, the frame waits in the buffer and goes after the next ConnAck.
                if connected {
                    publish(wire);
                }
            }
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if dev.connected_once {
                        Stats::inc(&stats.reconnects);
                    }
                    dev.connected_once = true;
                    connected = true;
                    up_since = Instant::now();
                    for p in dev.buffer.iter_mut() {
                        p.bytes[4] |= FrameFlag::Resent.wire() as u8;
                        p.sent_at = Instant::now();
                        Stats::inc(&stats.frames_resent);
                        publish(p.bytes.clone());
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    // PUBACKs come in publish order; a frame dropped from a full buffer may
                    // still be acked by the broker, then the count is off by that frame.
                    if let Some(p) = dev.buffer.pop_front() {
                        Stats::inc(&stats.frames_acked);
                        Stats::add(&stats.readings_acked, p.readings);
                        Stats::sub(&stats.in_flight, 1);
                        let us = p.sent_at.elapsed().as_micros().max(1) as u64;
                        let _ = dev.latency.record(us.min(600_000_000));
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    if !connected {
                        Stats::inc(&stats.connect_failures);
                    }
                    connected = false;
                    if up_since.elapsed() >= cfg.stable_after.0 {
                        dev.backoff.reset();
                    }
                    let d = dev.backoff.next_delay(&mut dev.rng);
                    dev.offline(&mut tick, Instant::now() + d).await;
                }
            },
            _ = tokio::time::sleep_until(fleet.stop_at), if generating => {}
            _ = tokio::time::sleep_until(fleet.drain_until) => {}
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    stats.merge_latency(&dev.latency);
}

/// Connects and subscribes; returns when the SUBACK arrived (Unix us).
async fn subscribe(
    client: &AsyncClient,
    events: &mut rumqttc::EventLoop,
    filters: &[SubscribeFilter],
) -> Result<i64, String> {
    loop {
        match events.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(Packet::ConnAck(_)) => client
                .try_subscribe_many(filters.to_vec())
                .map_err(|e| e.to_string())?,
            Event::Incoming(Packet::SubAck(ack)) => {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    return Err("subscription refused by the broker".into());
                }
                return Ok(codecs_now_us());
            }
            _ => {}
        }
    }
}

/// Runs one MQTT dashboard client until the run is over.
pub async fn run_subscriber(
    fleet: Arc<Fleet>,
    plan: ClientPlan,
    ready: mpsc::Sender<()>,
    mut done: watch::Receiver<bool>,
) -> ClientResult {
    let mut result = ClientResult::new(plan.kind);
    let opts = options(format!("sim-dashboard-{}", plan.number), fleet.server);
    let (client, mut events) = AsyncClient::new(opts, SUBSCRIBER_REQUESTS);
    let filters: Vec<SubscribeFilter> = if plan.devices.is_empty() {
        vec![SubscribeFilter::new(ALL_DEVICES.into(), QoS::AtMostOnce)]
    } else {
        plan.devices
            .iter()
            .map(|&d| SubscribeFilter::new(topic(d), QoS::AtMostOnce))
            .collect()
    };
    let setup =
        tokio::time::timeout(SETUP_TIMEOUT, subscribe(&client, &mut events, &filters)).await;
    let _ = ready.send(()).await;
    let subscribed_at = match setup {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            result.error = Some(format!("mqtt: {e}"));
            return result;
        }
        Err(_) => {
            result.error = Some("mqtt: timed out connecting and subscribing".into());
            return result;
        }
    };
    result.connected = true;
    let Some(ledger) = fleet.ledger.as_ref() else {
        return result;
    };
    if plan.kind == ClientKind::Stalled {
        // Not polling the event loop: nothing is read from the socket any more.
        let _ = done.wait_for(|d| *d).await;
        return result;
    }
    let all_devices: Vec<u64>;
    let devices = if plan.devices.is_empty() {
        all_devices = ledger.device_ids().collect();
        &all_devices
    } else {
        &plan.devices
    };
    let mut checker = Checker::new(ledger, devices, subscribed_at, None, false);
    checker.latency_from_us = fleet.measure_from_us;
    let mut finish = Finish::new(fleet.cfg.dashboard_grace.0);
    let limits = codecs::Limits {
        max_records: u16::MAX,
        max_past_us: i64::MAX / 4,
        max_future_us: i64::MAX / 4,
    };
    let stats = &fleet.stats;
    loop {
        tokio::select! {
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = codecs_now_us();
                    match codecs::decode(&p.payload, Direction::DeviceToServer, &limits, now) {
                        Ok(frame) => {
                            let device = frame.header().device_id.get();
                            let mut n = 0;
                            for r in frame.readings() {
                                checker.on_reading(ledger, device, r.channel, r.ts_us, now);
                                n += 1;
                            }
                            Stats::add(&stats.dashboard_readings, n);
                        }
                        Err(e) => stats.error(&format!("dashboard_undecodable_{}", e.reason().name())),
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // Reconnected with a clean session: subscribe again.
                    result.reconnects += 1;
                    if client.try_subscribe_many(filters.clone()).is_err() {
                        stats.error("mqtt_resubscribe_failed");
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    result.closes.push(1006);
                    tokio::time::sleep(SUBSCRIBER_RETRY).await;
                }
            },
            _ = finish.tick(&mut done) => if finish.over() || checker.complete(ledger) { break },
        }
    }
    let _ = client.try_disconnect();
    checker.finish(ledger);
    result.checker = Some(checker);
    result
}
