//! What the edge answers to each kind of message on an open device connection: error frames with
//! the right reason code and sequence, and the documented close codes.

mod common;
use std::time::Duration;

use codecs::{FrameMeta, Quality, RAW_CHANNEL_MIN, Reason, Record};
use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);
const MINUTE_US: i64 = 60_000_000;
const DAY_US: i64 = 24 * 60 * MINUTE_US;

/// A telemetry frame with `records` at `base_ts_us`.
fn telemetry(device_id: u64, seq: u64, base_ts_us: i64, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    let meta = FrameMeta {
        device_id,
        seq,
        flags: 0,
    };
    codecs::encode_telemetry(&mut out, meta, base_ts_us, records).expect("encode");
    out
}

/// `n` finite readings on channels 1..=n.
fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record::new(i as u16 + 1, 0, i as u32, i as f64))
        .collect()
}

/// A valid one-record frame with `edit` applied to its bytes.
fn edited(device_id: u64, seq: u64, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut f = telemetry(device_id, seq, now_us(), &records(1));
    edit(&mut f);
    f
}

/// A refused-frame case: name, bytes, refused seq, reason, (expected, found) when pinned.
type Case = (&'static str, Vec<u8>, u64, Reason, Option<(u64, u64)>);

async fn expect_error(dev: &mut Device) -> (u64, u16, u64, u64) {
    match dev.next(WAIT).await {
        Some(Reply::Error {
            seq,
            reason,
            expected,
            found,
        }) => (seq, reason, expected, found),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn each_refused_frame_gets_an_error_frame_with_its_reason_and_sequence() {
    let server = TestServer::start(|c| {
        c.bad_frame_limit = 100;
        c.max_records = 8;
    })
    .await;
    let before = metrics_text(server.addr).await;
    let d = 11;
    let now = now_us();
    let mut nan = records(2);
    nan[1] = Record::new(5, 0, 1, f64::NAN);
    let one = telemetry(d, 1, now, &records(1));
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("truncated", one[..10].to_vec(), 0, Reason::Truncated, Some((32, 10))),
        ("bad magic", edited(d, 101, |f| f[..2].copy_from_slice(b"XX")), 101, Reason::BadMagic, Some((0x4D54, 0x5858))),
        ("version", edited(d, 102, |f| f[2] = 2), 102, Reason::UnsupportedVersion, Some((1, 2))),
        ("unknown type", edited(d, 103, |f| f[3] = 0x7F), 103, Reason::UnknownFrameType, Some((0, 0x7F))),
        ("ack from device", edited(d, 104, |f| f[3] = 0x81), 104, Reason::UnexpectedFrameType, Some((0, 0x81))),
        ("reserved flags", edited(d, 105, |f| f[4..6].copy_from_slice(&0x8000u16.to_le_bytes())), 105, Reason::ReservedFlags, Some((1, 0x8000))),
        ("trailing byte", edited(d, 106, |f| f.push(0)), 106, Reason::LengthMismatch, Some((56, 57))),
        ("zero sequence", telemetry(d, 0, now, &records(1)), 0, Reason::ZeroSequence, None),
        ("empty batch", telemetry(d, 107, now, &[]), 107, Reason::EmptyBatch, None),
        ("too many records", telemetry(d, 108, now, &records(9)), 108, Reason::TooManyRecords, Some((8, 9))),
        ("count mismatch", edited(d, 109, |f| f[6..8].copy_from_slice(&2u16.to_le_bytes())), 109, Reason::CountMismatch, Some((40, 24))),
        ("crc mismatch", edited(d, 110, |f| *f.last_mut().expect("byte") ^= 0xFF), 110, Reason::CrcMismatch, None),
        ("non-finite", telemetry(d, 111, now, &nan), 111, Reason::NonFiniteValue, Some((1, 5))),
        ("too old", telemetry(d, 112, now - 31 * DAY_US, &records(1)), 112, Reason::TimestampOutOfRange, Some((0, (now - 31 * DAY_US) as u64))),
        ("in the future", telemetry(d, 113, now + 10 * MINUTE_US, &records(1)), 113, Reason::TimestampOutOfRange, Some((0, (now + 10 * MINUTE_US) as u64))),
    ];
    let mut dev = server.device(d).await;
    for (case, bytes, seq, reason, pair) in &cases {
        dev.send_raw(bytes.clone()).await;
        let (got_seq, got_reason, expected, found) = expect_error(&mut dev).await;
        assert_eq!(
            (got_seq, got_reason),
            (*seq, reason.wire()),
            "{case}: error frame (seq, reason)"
        );
        if let Some(pair) = pair {
            assert_eq!((expected, found), *pair, "{case}: (expected, found)");
        }
    }
    // The connection survives refusals below the limit, and what the rules allow is stored:
    // non-finite values on a raw channel and with the FAULT quality bit.
    let allowed = [
        Record::new(1, 0, 0, 1.5),
        Record::new(RAW_CHANNEL_MIN, 0, 1, f64::NAN),
        Record::new(2, Quality::Fault.wire(), 2, f64::INFINITY),
    ];
    dev.send_raw(telemetry(d, 1, now, &allowed)).await;
    assert_eq!(dev.wait_ack(1).await, 1);
    let rows = server.stored(d);
    assert_eq!(rows.len(), 3, "only the valid frame is stored: {rows:?}");
    assert!(rows.iter().all(|r| r.0 == 1));
    let after = metrics_text(server.addr).await;
    for (case, _, _, reason, _) in &cases {
        let key = [("reason", reason.name())];
        let delta = metric(&after, "telemux_frames_refused_total", &key)
            - metric(&before, "telemux_frames_refused_total", &key);
        assert!(
            delta >= 1.0,
            "{case}: refusal counted by reason {}",
            reason.name()
        );
    }
}

#[tokio::test]
async fn bad_frame_limit_refused_frames_close_with_1007() {
    let server = TestServer::start(|c| c.bad_frame_limit = 3).await;
    let mut dev = server.device(12).await;
    let bad = |seq| edited(12, seq, |f| *f.last_mut().expect("byte") ^= 1);
    dev.send_raw(bad(1)).await;
    dev.send_raw(bad(2)).await;
    assert_eq!(expect_error(&mut dev).await.0, 1);
    assert_eq!(expect_error(&mut dev).await.0, 2);
    // A valid frame in between does not reset the count.
    dev.send(3, 1).await;
    assert_eq!(dev.wait_ack(3).await, 3);
    dev.send_raw(bad(4)).await;
    let (seq, reason, _, _) = expect_error(&mut dev).await;
    assert_eq!((seq, reason), (4, Reason::CrcMismatch.wire()));
    assert_eq!(
        dev.next(WAIT).await,
        Some(Reply::Close(1007, "too many invalid frames".into()))
    );
}

#[tokio::test]
async fn text_message_closes_with_1003() {
    let server = TestServer::start(|_| {}).await;
    let mut dev = server.device(13).await;
    dev.ws
        .send(Message::Text("hello".into()))
        .await
        .expect("send text");
    assert_eq!(
        dev.next(WAIT).await,
        Some(Reply::Close(1003, "binary frames only".into()))
    );
}

#[tokio::test]
async fn message_over_max_frame_bytes_closes_with_1009() {
    let server = TestServer::start(|c| c.max_frame_bytes = 1024).await;
    let mut dev = server.device(14).await;
    // 32 + 8 + 60 * 16 = 1000 bytes: within the limit.
    let fits = telemetry(14, 1, now_us(), &records(60));
    assert!(fits.len() <= 1024);
    dev.send_raw(fits).await;
    assert_eq!(dev.wait_ack(1).await, 1);
    dev.send_raw(telemetry(14, 2, now_us(), &records(64))).await;
    assert_eq!(
        dev.next(WAIT).await,
        Some(Reply::Close(1009, "frame too large".into()))
    );
    assert_eq!(
        server.stored(14).len(),
        60,
        "the oversized frame is not stored"
    );
}

#[tokio::test]
async fn frame_for_another_device_gets_device_mismatch_then_close_1008() {
    let server = TestServer::start(|_| {}).await;
    let mut dev = server.device(15).await;
    dev.send_raw(telemetry(16, 7, now_us(), &records(1))).await;
    let (seq, reason, expected, found) = expect_error(&mut dev).await;
    assert_eq!(
        (seq, reason, expected, found),
        (7, Reason::DeviceMismatch.wire(), 15, 16)
    );
    assert_eq!(
        dev.next(WAIT).await,
        Some(Reply::Close(1008, "device id mismatch".into()))
    );
    assert!(server.stored(15).is_empty() && server.stored(16).is_empty());
}

#[tokio::test]
async fn new_connection_replaces_the_old_one_with_4000() {
    let server = TestServer::start(|_| {}).await;
    let mut old = server.device(17).await;
    old.send(1, 1).await;
    assert_eq!(old.wait_ack(1).await, 1);
    let mut new = server.device(17).await;
    assert_eq!(
        old.next(WAIT).await,
        Some(Reply::Close(4000, "replaced".into()))
    );
    // The newcomer is told what is stored, then keeps being served.
    assert_eq!(new.next(WAIT).await, Some(Reply::Ack(1)));
    for seq in 2..=4 {
        new.send(seq, 1).await;
    }
    assert_eq!(new.wait_ack(4).await, 4);
    assert_eq!(
        new.next(Duration::from_millis(200)).await,
        None,
        "still open"
    );
    let seqs: Vec<u64> = server.stored(17).iter().map(|r| r.0).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
}

#[tokio::test]
async fn old_sequence_gets_sequence_too_old_and_duplicate_is_acked_again() {
    let server = TestServer::start(|c| c.dedup_window = 64).await;
    let mut dev = server.device(18).await;
    dev.send(1, 1).await;
    dev.send(100, 1).await;
    assert_eq!(dev.wait_ack(100).await, 100);
    dev.send(2, 1).await;
    let (seq, reason, lowest, found) = expect_error(&mut dev).await;
    assert_eq!(
        (seq, reason, lowest, found),
        (2, Reason::SequenceTooOld.wire(), 37, 2)
    );
    dev.send(100, 1).await;
    assert_eq!(
        dev.next(WAIT).await,
        Some(Reply::Ack(100)),
        "duplicate re-acked"
    );
    let seqs: Vec<u64> = server.stored(18).iter().map(|r| r.0).collect();
    assert_eq!(seqs, [1, 100], "stored once each");
}
