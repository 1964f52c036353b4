//! Test support for the history API: an HTTP/1.1 GET over a raw socket that understands
//! chunked bodies (the API streams), operator tokens, and seeding the store through the real
//! device WebSocket with readings the tests know exactly.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

pub use crate::common::get_with;
use crate::common::{Device, HttpReply, TestServer, now_us};

/// An operator token for `devices` (ids, `*`, `tag:..`), valid for an hour.
pub fn operator(server: &TestServer, devices: &[&str]) -> String {
    server
        .authority
        .mint_operator(
            "api-test",
            devices.iter().map(|s| s.to_string()).collect(),
            Some(Duration::from_secs(3600)),
        )
        .expect("mint")
}

/// `GET path` with optional bearer token; reads the whole response (content-length or chunked).
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> HttpReply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    get_with(addr, path, &headers).await
}

/// One reading the tests sent: (device, channel, ts_us, value).
pub type Sent = (u64, u16, i64, f64);

/// A small deterministic generator (the tests must know every value they send).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// When readings are taken: `frames` frames of `per_frame` readings per channel, one every
/// `spacing_us` from `base_us`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub base_us: i64,
    pub spacing_us: u32,
    pub frames: u64,
    pub per_frame: u32,
}

/// Sends the readings of `schedule` for `channels` from `device` (values from `rng`) and waits
/// until all are acknowledged, that is stored.
pub async fn seed(
    server: &TestServer,
    device: u64,
    channels: &[u16],
    schedule: Schedule,
    rng: &mut Lcg,
) -> Vec<Sent> {
    let Schedule {
        base_us,
        spacing_us,
        frames,
        per_frame,
    } = schedule;
    let mut dev: Device = server.device(device).await;
    let mut sent = Vec::new();
    for f in 0..frames {
        let frame_base = base_us + (f as i64) * i64::from(per_frame) * i64::from(spacing_us);
        let mut records = Vec::new();
        for i in 0..per_frame {
            for &c in channels {
                let value = (rng.next() % 20_001) as f64 / 100.0 - 100.0;
                let offset = i * spacing_us;
                records.push(codecs::Record::new(c, 0, offset, value));
                sent.push((device, c, frame_base + i64::from(offset), value));
            }
        }
        let mut out = Vec::new();
        codecs::encode_telemetry(
            &mut out,
            codecs::FrameMeta {
                device_id: device,
                seq: f + 1,
                flags: 0,
            },
            frame_base,
            &records,
        )
        .expect("encode");
        dev.send_raw(out).await;
    }
    dev.wait_ack(frames).await;
    sent
}

/// A base time an hour ago, on a whole minute, so buckets line up with the data.
pub fn base_us() -> i64 {
    let t = now_us() - 3_600_000_000;
    t - t.rem_euclid(60_000_000)
}
