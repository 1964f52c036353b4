//! Helpers shared by the hub's integration tests: a hub, small client limits, and a client driven
//! over channels (the same connection loop as a socket, with paused time).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use codecs::{Direction, Frame, Reading};
use dashboard::driver::{DriveOptions, Inbound, OUT_QUEUE, QueueOutlet, drive};
use dashboard::{ClientLimits, Close, Format, Grants, Hub, HubConfig, Outbound, Session};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const START: u64 = 1_000;

pub fn hub() -> Arc<Hub> {
    Hub::with_start(HubConfig::default(), START)
}

pub fn limits() -> ClientLimits {
    ClientLimits {
        max_backlog_readings: 8,
        max_backlog_bytes: 1 << 20,
        max_batch_readings: 4,
        slow_deadline: Duration::from_secs(1),
        ping_interval: Duration::from_secs(10),
        missed_pongs: 2,
    }
}

pub fn r(channel: u16, ts_us: i64, value: f64) -> Reading {
    Reading {
        channel,
        quality: 0,
        ts_us,
        value,
    }
}

pub struct Client {
    pub inbound: mpsc::Sender<Inbound>,
    pub out: mpsc::Receiver<Outbound>,
    pub task: JoinHandle<Close>,
}

pub fn start(
    hub: &Arc<Hub>,
    format: Format,
    grants: Grants,
    limits: ClientLimits,
    opts: DriveOptions,
) -> Client {
    let session = Session::new(hub.clone(), format, grants, limits);
    let (in_tx, in_rx) = mpsc::channel::<Inbound>(64);
    let (tx, rx) = mpsc::channel::<Outbound>(OUT_QUEUE);
    let inbound = Box::pin(futures_util::stream::unfold(in_rx, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    }));
    let task =
        tokio::spawn(async move { drive(session, inbound, &mut QueueOutlet::new(tx), opts).await });
    Client {
        inbound: in_tx,
        out: rx,
        task,
    }
}

pub fn client(hub: &Arc<Hub>) -> Client {
    start(
        hub,
        Format::Binary,
        Grants::All,
        limits(),
        DriveOptions::default(),
    )
}

/// A decoded data frame: (header seq, flags, records as (device, channel, ts, value)).
pub type Data = (u64, u16, Vec<(u64, u16, i64, f64)>);

pub fn decode(bytes: &[u8]) -> Data {
    match codecs::decode(
        bytes,
        Direction::ServerToDashboard,
        &codecs::Limits::default(),
        0,
    ) {
        Ok(Frame::Live { header, records }) => (
            header.seq.get(),
            header.flags.get(),
            records
                .iter()
                .map(|r| {
                    (
                        r.device_id.get(),
                        r.channel.get(),
                        r.ts_us.get(),
                        r.value.get(),
                    )
                })
                .collect(),
        ),
        other => panic!("not a live frame: {other:?}"),
    }
}

impl Client {
    pub async fn send(&self, text: &str) {
        self.inbound
            .send(Inbound::Text(text.into()))
            .await
            .expect("driver alive");
    }

    pub async fn next(&mut self) -> Outbound {
        tokio::time::timeout(Duration::from_secs(1), self.out.recv())
            .await
            .expect("a message within 1s")
            .expect("driver alive")
    }

    /// Next JSON message (skipping pings).
    pub async fn json(&mut self) -> Value {
        loop {
            match self.next().await {
                Outbound::Json { bytes, .. } => {
                    return serde_json::from_slice(&bytes).expect("json");
                }
                Outbound::Ping => continue,
                other => panic!("expected JSON, got {other:?}"),
            }
        }
    }

    /// Next binary data frame (skipping pings).
    pub async fn data(&mut self) -> Data {
        loop {
            match self.next().await {
                Outbound::Data {
                    bytes,
                    format: Format::Binary,
                    position,
                } => {
                    let d = decode(&bytes);
                    assert_eq!(d.0, position);
                    return d;
                }
                Outbound::Ping => continue,
                other => panic!("expected data, got {other:?}"),
            }
        }
    }

    /// Subscribes and returns (reply, snapshot).
    pub async fn subscribe(&mut self, body: &str) -> (Value, Value) {
        self.send(&format!(r#"{{"id":"s","op":"subscribe",{body}}}"#))
            .await;
        let reply = self.json().await;
        assert_eq!(reply["ok"], true, "{reply}");
        let snapshot = self.json().await;
        assert_eq!(snapshot["type"], "snapshot");
        (reply, snapshot)
    }

    pub async fn closed(self) -> Close {
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("driver ends")
            .expect("driver task")
    }
}
