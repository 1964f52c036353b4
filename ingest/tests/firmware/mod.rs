//! A device client that behaves like good firmware, for the durability tests: it numbers its
//! frames 1, 2, 3, ..., keeps every unacknowledged frame buffered, forgets frames once an ack
//! covers them, and after a reconnect re-sends its buffer (with the `RESENT` flag) before anything
//! new. It remembers every frame it ever sent, so a test can compare the store with exactly what
//! left the device.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::{self, Device, Reply};

/// A stored or expected reading: (seq, channel, ts_us, value), as `TestServer::stored` returns.
pub type Row = (u64, u16, i64, f64);

/// Called by the socket reader with every ack value, the moment the ack is received.
pub type AckHook = Box<dyn FnMut(u64) + Send>;

/// How long a session waits for an ack before it gives up and reports itself incomplete.
pub const STALL: Duration = Duration::from_secs(20);

/// How long a finished session waits for the server to close the socket.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How one streaming session ended.
#[derive(Debug, Default)]
pub struct Session {
    /// Whether every frame up to the planned last sequence was sent and acknowledged.
    pub complete: bool,
    /// The close frame the server sent, if any.
    pub close: Option<(u16, String)>,
    /// Error frames received.
    pub errors: Vec<Reply>,
}

/// One good-firmware device.
pub struct Firmware {
    /// Device id.
    pub id: u64,
    /// Readings per frame.
    readings: usize,
    /// Sequence of the next new frame.
    next_seq: u64,
    /// Every frame ever sent (original bytes, without the RESENT flag), by sequence.
    pub sent: BTreeMap<u64, Vec<u8>>,
    /// Sent and not yet acknowledged: re-sent after a reconnect.
    pub unacked: BTreeSet<u64>,
    /// Highest ack received.
    pub acked: u64,
    /// Every ack received, in arrival order.
    pub acks: Vec<u64>,
    /// `acked`, readable by the test while the device streams in its own task.
    progress: Arc<AtomicU64>,
}

/// `frame` with the RESENT flag set (the flag is in the header, outside the payload CRC).
pub fn resent(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    let flags = u16::from_le_bytes([out[4], out[5]]) | codecs::FrameFlag::Resent.wire();
    out[4..6].copy_from_slice(&flags.to_le_bytes());
    out
}

/// The readings a device frame carries, as the store should hold them.
pub fn rows_of(seq: u64, frame: &[u8]) -> Vec<Row> {
    let view = codecs::decode::view(frame).expect("a frame this test encoded");
    view.readings()
        .map(|r| (seq, r.channel, r.ts_us, r.value))
        .collect()
}

/// Sorts rows the way `TestServer::stored` orders them.
pub fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by_key(|r| (r.0, r.1, r.2));
    rows
}

/// Asserts `stored` holds exactly the `expected` readings, each once; on failure names the
/// sequences that are missing, duplicated or unexpected rather than dumping both lists.
pub fn assert_exactly_once(device_id: u64, stored: &[Row], expected: &[Row], what: &str) {
    let stored = sorted(stored.to_vec());
    let expected = sorted(expected.to_vec());
    if stored == expected {
        return;
    }
    let count = |rows: &[Row]| {
        let mut by_seq = BTreeMap::<u64, usize>::new();
        for r in rows {
            *by_seq.entry(r.0).or_default() += 1;
        }
        by_seq
    };
    let (have, want) = (count(&stored), count(&expected));
    let seqs: BTreeSet<u64> = have.keys().chain(want.keys()).copied().collect();
    let differing: Vec<String> = seqs
        .into_iter()
        .filter(|s| have.get(s) != want.get(s))
        .take(12)
        .map(|s| {
            format!(
                "seq {s}: stored {} readings, expected {}",
                have.get(&s).unwrap_or(&0),
                want.get(&s).unwrap_or(&0)
            )
        })
        .collect();
    panic!(
        "device {device_id}: {what}: {} readings stored, {} expected; first differences: {differing:?}{}",
        stored.len(),
        expected.len(),
        if differing.is_empty() {
            " (same counts, different values)"
        } else {
            ""
        }
    );
}

/// Readings and distinct frames of `device_id` with sequence <= `upto` readable in the store now.
pub fn readable_upto(db: &rusqlite::Connection, device_id: u64, upto: u64) -> (u64, u64) {
    db.query_row(
        "SELECT COUNT(*), COUNT(DISTINCT seq) FROM stored_readings WHERE device_id = ?1 AND seq <= ?2",
        [device_id as i64, upto as i64],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .expect("count readings")
}

/// Every reading of `device_id` in the SQLite file at `db_path`, ordered like `TestServer::stored`.
pub fn stored_in(db_path: &std::path::Path, device_id: u64) -> Vec<Row> {
    let db = rusqlite::Connection::open(db_path).expect("open db");
    let mut stmt = db
        .prepare(
            "SELECT seq, channel, ts_us, value FROM stored_readings WHERE device_id = ?1 \
             ORDER BY seq, channel, ts_us",
        )
        .expect("prepare");
    stmt.query_map([device_id as i64], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            r.get::<_, i64>(1)? as u16,
            r.get(2)?,
            r.get::<_, Option<f64>>(3)?.unwrap_or(f64::NAN),
        ))
    })
    .expect("query")
    .collect::<Result<Vec<_>, _>>()
    .expect("rows")
}

/// Turns a received WebSocket message into a [`Reply`] (pings and pongs: `None`).
fn reply_of(msg: Message) -> Option<Reply> {
    Some(match msg {
        Message::Binary(b) => match codecs::decode(
            &b,
            codecs::Direction::ServerToDevice,
            &codecs::Limits::default(),
            common::now_us(),
        ) {
            Ok(codecs::Frame::Ack { header }) => Reply::Ack(header.seq.get()),
            Ok(codecs::Frame::Error { header, body }) => Reply::Error {
                seq: header.seq.get(),
                reason: body.reason.get(),
                expected: body.expected.get(),
                found: body.found.get(),
            },
            other => Reply::Other(format!("{other:?}")),
        },
        Message::Close(Some(f)) => Reply::Close(u16::from(f.code), f.reason.to_string()),
        Message::Close(None) => Reply::Close(u16::from(CloseCode::Status), String::new()),
        Message::Ping(_) | Message::Pong(_) => return None,
        other => Reply::Other(format!("{other:?}")),
    })
}

impl Firmware {
    /// A device that has never sent anything, with `readings` readings per frame.
    pub fn new(id: u64, readings: usize) -> Firmware {
        Firmware {
            id,
            readings,
            next_seq: 1,
            sent: BTreeMap::new(),
            unacked: BTreeSet::new(),
            acked: 0,
            acks: Vec::new(),
            progress: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The highest ack received so far, readable from another task.
    pub fn progress(&self) -> Arc<AtomicU64> {
        self.progress.clone()
    }

    /// Highest sequence sent so far (0: none).
    pub fn last_sent(&self) -> u64 {
        self.next_seq - 1
    }

    /// The readings of every frame ever sent, each once.
    pub fn expected_rows(&self) -> Vec<Row> {
        self.expected_rows_where(|_| true)
    }

    /// The readings of the frames sent whose sequence satisfies `keep`.
    pub fn expected_rows_where(&self, keep: impl Fn(u64) -> bool) -> Vec<Row> {
        self.sent
            .iter()
            .filter(|(seq, _)| keep(**seq))
            .flat_map(|(seq, frame)| rows_of(*seq, frame))
            .collect()
    }

    /// Applies a cumulative ack: frames it covers leave the buffer.
    fn absorb(&mut self, ack: u64) {
        if ack > self.acked {
            self.acked = ack;
            self.progress.store(ack, Ordering::Release);
            self.unacked = self.unacked.split_off(&(ack + 1));
        }
    }

    /// A new frame: numbered, remembered, buffered.
    fn new_frame(&mut self) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let bytes = common::frame(self.id, seq, self.readings);
        self.sent.insert(seq, bytes.clone());
        self.unacked.insert(seq);
        bytes
    }

    /// Streams over `device` like firmware does: first re-sends the buffer (RESENT flag), then
    /// sends new frames up to sequence `last`, never holding more than `window` unacknowledged.
    /// Ends when everything up to `last` is acknowledged, when the connection ends, or after
    /// [`STALL`] without an ack (then `complete` is false). `on_ack` sees every ack on arrival.
    pub async fn stream(
        &mut self,
        device: Device,
        last: u64,
        window: usize,
        mut on_ack: Option<AckHook>,
    ) -> Session {
        let (mut sink, mut stream) = device.ws.split();
        let (ack_tx, mut ack_rx) = watch::channel(self.acked);
        let replies = Arc::new(Mutex::new(Vec::new()));
        let mut reader = {
            let replies = replies.clone();
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let Some(reply) = reply_of(msg) else { continue };
                    if let Reply::Ack(a) = reply {
                        if let Some(hook) = on_ack.as_mut() {
                            hook(a);
                        }
                        ack_tx.send_modify(|v| *v = (*v).max(a));
                    }
                    replies.lock().expect("replies").push(reply);
                }
                // Dropping `ack_tx` here tells the sender that the connection has ended.
            })
        };
        let mut resend = self.unacked.clone().into_iter();
        let complete = loop {
            let ack = *ack_rx.borrow_and_update();
            self.absorb(ack);
            if ack_rx.has_changed().is_err() {
                break false; // the connection ended
            }
            let acked = self.acked;
            let next = match resend.by_ref().find(|&s| s > acked) {
                Some(seq) => Some(resent(&self.sent[&seq])),
                None if self.next_seq <= last && self.unacked.len() < window => {
                    Some(self.new_frame())
                }
                None => None,
            };
            if let Some(bytes) = next {
                if sink
                    .send(Message::Binary(Bytes::from(bytes)))
                    .await
                    .is_err()
                {
                    break false;
                }
                continue;
            }
            if self.acked >= last && self.next_seq > last {
                break true;
            }
            match tokio::time::timeout(STALL, ack_rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    let ack = *ack_rx.borrow();
                    self.absorb(ack);
                    break self.acked >= last && self.next_seq > last;
                }
            }
        };
        if complete {
            let _ = sink.send(Message::Close(None)).await;
        }
        if tokio::time::timeout(CLOSE_WAIT, &mut reader).await.is_err() {
            reader.abort();
        }
        let ack = *ack_rx.borrow();
        self.absorb(ack);
        let replies = std::mem::take(&mut *replies.lock().expect("replies"));
        let mut session = Session {
            complete,
            ..Session::default()
        };
        for reply in replies {
            match reply {
                Reply::Ack(a) => self.acks.push(a),
                Reply::Close(code, reason) if session.close.is_none() => {
                    session.close = Some((code, reason));
                }
                e @ Reply::Error { .. } => session.errors.push(e),
                _ => {}
            }
        }
        session
    }
}
