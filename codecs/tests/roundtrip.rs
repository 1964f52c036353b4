//! Property tests: every frame type round-trips through encode and decode, and no input panics.

use codecs::{
    Direction, EnvPacket, ErrorBody, Frame, FrameMeta, Limits, LiveRecord, Reason, Record,
    TelemetryWriter, decode, encode_ack, encode_environment, encode_error, encode_live,
    encode_telemetry,
};
use proptest::prelude::*;

const NOW: i64 = 1_767_225_600_000_000;

fn limits() -> Limits {
    Limits::default()
}

fn finite() -> impl Strategy<Value = f64> {
    prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO
}

fn record() -> impl Strategy<Value = Record> {
    (0u16..0xF000, 0u16..16, 0u32..60_000_000, finite())
        .prop_map(|(c, q, o, v)| Record::new(c, q, o, v))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn telemetry_round_trips(device in any::<u64>(), seq in 1u64.., resent in any::<bool>(),
                             base in (NOW - 1_000_000_000)..NOW, records in prop::collection::vec(record(), 1..300)) {
        let mut buf = vec![0xAA; 3]; // frames may start at any offset, at any alignment
        let flags = if resent { codecs::FrameFlag::Resent.wire() } else { 0 };
        let range = encode_telemetry(&mut buf, FrameMeta { device_id: device, seq, flags }, base, &records).unwrap();
        let frame = decode(&buf[range], Direction::DeviceToServer, &limits(), NOW).unwrap();
        let Frame::Telemetry { header, base: b, records: got } = frame else { panic!("not telemetry") };
        prop_assert_eq!(header.device_id.get(), device);
        prop_assert_eq!(header.seq.get(), seq);
        prop_assert_eq!(header.flags.get(), flags);
        prop_assert_eq!(b.base_ts_us.get(), base);
        prop_assert_eq!(got, &records[..]);
        let readings: Vec<_> = frame.readings().collect();
        prop_assert_eq!(readings.len(), records.len());
        for (r, rec) in readings.iter().zip(&records) {
            prop_assert_eq!(r.ts_us, base + i64::from(rec.offset_us.get()));
            prop_assert_eq!(r.value.to_bits(), rec.value.get().to_bits());
        }
    }

    #[test]
    fn telemetry_writer_matches_slice_encoder(device in any::<u64>(), seq in 1u64.., base in (NOW - 1_000_000)..NOW,
                                              records in prop::collection::vec(record(), 1..64)) {
        let mut a = Vec::new();
        encode_telemetry(&mut a, FrameMeta { device_id: device, seq, flags: 0 }, base, &records).unwrap();
        let mut b = Vec::new();
        let mut w = TelemetryWriter::begin(&mut b, FrameMeta { device_id: device, seq, flags: 0 }, base);
        for r in &records {
            w.push(r.channel.get(), r.quality.get(), r.offset_us.get(), r.value.get()).unwrap();
        }
        prop_assert_eq!(w.finish(), &a[..]);
    }

    #[test]
    fn environment_round_trips(device in any::<u64>(), seq in 1u64..,
                               packets in prop::collection::vec((NOW - 1_000_000..NOW, -50f32..60.0, 0f32..100.0, 800f32..1100.0, any::<u16>(), 0u16..16), 1..50)) {
        let packets: Vec<EnvPacket> = packets.into_iter().map(|(t, a, b, c, d, q)| EnvPacket::new(t, a, b, c, d, q)).collect();
        let mut buf = Vec::new();
        let range = encode_environment(&mut buf, FrameMeta { device_id: device, seq, flags: 0 }, &packets).unwrap();
        let frame = decode(&buf[range], Direction::DeviceToServer, &limits(), NOW).unwrap();
        let Frame::Environment { packets: got, .. } = frame else { panic!("not environment") };
        prop_assert_eq!(got, &packets[..]);
        prop_assert_eq!(frame.readings().count(), packets.len() * 4);
    }

    #[test]
    fn ack_and_error_round_trip(device in any::<u64>(), seq in any::<u64>(), expected in any::<u64>(), found in any::<u64>(),
                                reason in prop::sample::select(Reason::ALL.to_vec())) {
        let mut buf = Vec::new();
        let r = encode_ack(&mut buf, device, seq);
        let Frame::Ack { header } = decode(&buf[r], Direction::ServerToDevice, &limits(), NOW).unwrap() else { panic!("not ack") };
        prop_assert_eq!(header.seq.get(), seq);
        prop_assert_eq!(header.device_id.get(), device);
        buf.clear();
        let body = ErrorBody::new(reason, 1, expected, found);
        let r = encode_error(&mut buf, device, seq, &body);
        let Frame::Error { header, body: got } = decode(&buf[r], Direction::ServerToDevice, &limits(), NOW).unwrap() else { panic!("not error") };
        prop_assert_eq!(header.seq.get(), seq);
        prop_assert_eq!(got, &body);
    }

    #[test]
    fn live_round_trips(position in any::<u64>(), records in prop::collection::vec((any::<u64>(), any::<u16>(), any::<u16>(), any::<i64>(), any::<f64>()), 0..200)) {
        let records: Vec<LiveRecord> = records.into_iter().map(|(d, c, q, t, v)| LiveRecord::new(d, c, q, t, v)).collect();
        let mut buf = Vec::new();
        let r = encode_live(&mut buf, position, 0, &records).unwrap();
        let Frame::Live { header, records: got } = decode(&buf[r], Direction::ServerToDashboard, &limits(), NOW).unwrap() else { panic!("not live") };
        prop_assert_eq!(header.seq.get(), position);
        prop_assert_eq!(got, &records[..]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        for d in [Direction::DeviceToServer, Direction::ServerToDevice, Direction::ServerToDashboard] {
            if let Ok(f) = decode(&bytes, d, &limits(), NOW) {
                let _ = f.readings().count();
            }
        }
    }

    #[test]
    fn corrupted_payload_byte_is_refused(records in prop::collection::vec(record(), 1..40), idx in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut buf = Vec::new();
        encode_telemetry(&mut buf, FrameMeta { device_id: 1, seq: 1, flags: 0 }, NOW, &records).unwrap();
        let payload = 32..buf.len();
        let i = payload.start + idx.index(payload.len());
        buf[i] ^= 1 << bit;
        let err = decode(&buf, Direction::DeviceToServer, &limits(), NOW).unwrap_err();
        prop_assert_eq!(err.reason(), Reason::CrcMismatch);
    }
}

#[test]
fn too_many_records_is_an_encode_error_not_a_panic() {
    let records = vec![Record::new(1, 0, 0, 1.0); 70_000];
    let mut buf = Vec::new();
    let err = encode_telemetry(
        &mut buf,
        FrameMeta {
            device_id: 1,
            seq: 1,
            flags: 0,
        },
        NOW,
        &records,
    )
    .unwrap_err();
    assert_eq!(
        err,
        codecs::EncodeError::TooManyRecords {
            limit: 65_535,
            found: 70_000
        }
    );
    assert!(buf.is_empty(), "nothing written on error");
}

#[test]
fn errors_name_expected_and_found() {
    let mut buf = Vec::new();
    encode_telemetry(
        &mut buf,
        FrameMeta {
            device_id: 1,
            seq: 1,
            flags: 0,
        },
        NOW,
        &[Record::new(1, 0, 0, 1.0)],
    )
    .unwrap();
    buf.push(0);
    let err = decode(&buf, Direction::DeviceToServer, &limits(), NOW).unwrap_err();
    assert_eq!(
        err.to_string(),
        "length mismatch: header says 56 bytes, received 57"
    );
    assert_eq!(err.expected_found(), (56, 57));
}
