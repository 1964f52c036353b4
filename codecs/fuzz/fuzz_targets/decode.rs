//! Fuzz `codecs::decode` with arbitrary bytes in every direction.
//!
//! Each input is decoded twice per direction:
//! 1. as given (any bytes: the decoder must return `Ok` or `Err`, never panic);
//! 2. with its header "fixed up" (payload_len = bytes after the header, payload_crc = CRC-32C of
//!    them), so mutated payloads get past the length and CRC checks and the per-record checks
//!    and views are exercised too, not only the header checks.
//!
//! For every `Ok` frame: the readings are iterated (count must match `reading_count`), and a
//! telemetry frame is re-encoded with both `encode_telemetry` and `TelemetryWriter`; the
//! re-encoding must be byte-identical to the input and decode to an equal frame.

#![no_main]

use codecs::golden::{LIMITS, NOW_US};
use codecs::{Direction, Frame, FrameMeta, Header, TelemetryWriter, decode, encode_telemetry};
use libfuzzer_sys::fuzz_target;

const DIRECTIONS: [Direction; 3] = [
    Direction::DeviceToServer,
    Direction::ServerToDevice,
    Direction::ServerToDashboard,
];

fuzz_target!(|data: &[u8]| {
    check_all(data);
    if data.len() >= Header::SIZE {
        let mut fixed = data.to_vec();
        let payload_len = (data.len() - Header::SIZE) as u32;
        let crc = crc32c(&data[Header::SIZE..]);
        fixed[24..28].copy_from_slice(&payload_len.to_le_bytes());
        fixed[28..32].copy_from_slice(&crc.to_le_bytes());
        check_all(&fixed);
    }
});

/// CRC-32C as the wire defines it, bit by bit (independent of the `crc32c` crate the codec uses).
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn check_all(data: &[u8]) {
    for direction in DIRECTIONS {
        let Ok(frame) = decode(data, direction, &LIMITS, NOW_US) else {
            continue;
        };
        check_frame(data, direction, frame);
    }
}

fn check_frame(data: &[u8], direction: Direction, frame: Frame<'_>) {
    let header = frame.header();
    assert_eq!(
        codecs::FrameType::from_wire(header.frame_type).map(|t| t.direction()),
        Some(direction)
    );
    assert_eq!(Header::SIZE + header.payload_len.get() as usize, data.len());

    let mut n = 0usize;
    let mut sum = 0.0f64;
    for r in frame.readings() {
        n += 1;
        sum += r.value;
    }
    std::hint::black_box(sum);
    assert_eq!(n, frame.reading_count());

    if let Frame::Telemetry {
        header,
        base,
        records,
    } = frame
    {
        let meta = FrameMeta {
            device_id: header.device_id.get(),
            seq: header.seq.get(),
            flags: header.flags.get(),
        };
        let base_ts_us = base.base_ts_us.get();

        let mut out = Vec::new();
        let range = encode_telemetry(&mut out, meta, base_ts_us, records).expect("count fits u16");
        assert_eq!(range, 0..data.len());
        assert_eq!(out.as_slice(), data, "encode_telemetry re-encoding differs");

        let mut out2 = Vec::new();
        let mut w = TelemetryWriter::begin(&mut out2, meta, base_ts_us);
        for r in frame.readings() {
            let offset_us = u32::try_from(r.ts_us - base_ts_us).expect("offset fits u32");
            w.push(r.channel, r.quality, offset_us, r.value)
                .expect("count fits u16");
        }
        assert_eq!(w.finish(), data, "TelemetryWriter re-encoding differs");

        match decode(&out, direction, &LIMITS, NOW_US) {
            Ok(Frame::Telemetry {
                header: h2,
                base: b2,
                records: r2,
            }) => {
                assert_eq!(h2, header);
                assert_eq!(b2, base);
                assert_eq!(r2, records);
                assert!(
                    frame.readings().map(bits).eq(Frame::Telemetry {
                        header: h2,
                        base: b2,
                        records: r2
                    }
                    .readings()
                    .map(bits))
                );
            }
            other => panic!("re-encoded telemetry frame did not decode as telemetry: {other:?}"),
        }
    }
}

/// A reading as comparable bits (NaN values compare equal to themselves).
fn bits(r: codecs::Reading) -> (u16, u16, i64, u64) {
    (r.channel, r.quality, r.ts_us, r.value.to_bits())
}
