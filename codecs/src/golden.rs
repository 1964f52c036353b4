//! Golden vectors: valid frames and one invalid frame per refusal reason, with their expected
//! decoding, written to `codecs/golden/` by `cargo run -p codecs --bin wire-gen` and checked by the
//! Rust (`tests/golden.rs`), C (`tests/c_header.rs`) and JS (`js/test/`) tests alike.
//!
//! Expectations are stated here from the encoder's inputs, never read back from the decoder, and
//! the generator refuses to write a vector the decoder disagrees with.

use serde_json::{Value, json};

use crate::decode::{Limits, decode};
use crate::encode::{
    FrameMeta, encode_ack, encode_environment, encode_error, encode_live, encode_telemetry,
};
use crate::layout::{
    Channel, Direction, EnvPacket, ErrorBody, FrameFlag, FrameType, Header, LiveRecord, Quality,
    Reason, Record,
};

/// The clock the vectors are checked against: 2026-01-01T00:00:00Z in microseconds.
pub const NOW_US: i64 = 1_767_225_600_000_000;

/// Limits the vectors are checked with (a small record limit keeps the too-many vector small).
pub const LIMITS: Limits = Limits {
    max_records: 64,
    max_past_us: 30 * 24 * 3600 * 1_000_000,
    max_future_us: 5 * 60 * 1_000_000,
};

/// One golden frame.
#[derive(Clone, Debug)]
pub struct Vector {
    /// File stem (`<name>.bin`).
    pub name: &'static str,
    /// Direction the frame is decoded for.
    pub direction: Direction,
    /// The frame bytes.
    pub bytes: Vec<u8>,
    /// Expected decoding.
    pub expect: Value,
}

/// JSON for numbers that may not fit a double exactly (u64, i64) or a JSON number (NaN).
fn big(v: impl ToString) -> Value {
    Value::String(v.to_string())
}

/// A float as JSON: a number when finite, else "NaN" / "Infinity" / "-Infinity".
pub fn float(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(v)
    }
}

/// Direction name used in the manifest.
pub fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::DeviceToServer => "device_to_server",
        Direction::ServerToDevice => "server_to_device",
        Direction::ServerToDashboard => "server_to_dashboard",
    }
}

fn header_json(h: &Header) -> Value {
    json!({
        "magic": h.magic.get(), "version": h.version, "frame_type": h.frame_type,
        "flags": h.flags.get(), "count": h.count.get(), "device_id": big(h.device_id.get()),
        "seq": big(h.seq.get()), "payload_len": h.payload_len.get(), "payload_crc": h.payload_crc.get(),
    })
}

fn header_of(bytes: &[u8]) -> Header {
    use zerocopy::FromBytes;
    Header::read_from_prefix(bytes)
        .map(|(h, _)| h)
        .unwrap_or_else(|_| panic!("golden frame shorter than a header"))
}

fn meta(device_id: u64, seq: u64, flags: u16) -> FrameMeta {
    FrameMeta {
        device_id,
        seq,
        flags,
    }
}

fn telemetry(device: u64, seq: u64, flags: u16, base: i64, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_telemetry(&mut out, meta(device, seq, flags), base, records).expect("count fits");
    out
}

fn valid_telemetry(
    name: &'static str,
    device: u64,
    seq: u64,
    flags: u16,
    base: i64,
    records: &[Record],
) -> Vector {
    let bytes = telemetry(device, seq, flags, base, records);
    let recs: Vec<Value> = records
        .iter()
        .map(|r| json!({"channel": r.channel.get(), "quality": r.quality.get(), "offset_us": r.offset_us.get(), "value": float(r.value.get())}))
        .collect();
    let readings: Vec<Value> = records
        .iter()
        .map(|r| json!({"channel": r.channel.get(), "quality": r.quality.get(), "ts_us": big(base + i64::from(r.offset_us.get())), "value": float(r.value.get())}))
        .collect();
    let h = header_of(&bytes);
    Vector {
        name,
        direction: Direction::DeviceToServer,
        expect: json!({"valid": true, "header": header_json(&h), "frame": {"type": "telemetry", "base_ts_us": big(base), "records": recs}, "readings": readings}),
        bytes,
    }
}

fn env_packets() -> Vec<EnvPacket> {
    vec![
        EnvPacket::new(NOW_US - 60_000_000, 21.5, 40.25, 1013.25, 3712, 0),
        EnvPacket::new(NOW_US, -3.75, 88.5, 998.0, 3650, Quality::Estimated.wire()),
    ]
}

fn valid_environment() -> Vector {
    let packets = env_packets();
    let mut bytes = Vec::new();
    encode_environment(&mut bytes, meta(42, 7, 0), &packets).expect("count fits");
    let mut pk = Vec::new();
    let mut readings = Vec::new();
    for p in &packets {
        pk.push(json!({"ts_us": big(p.ts_us.get()), "temperature_c": float(p.temperature_c.get().into()), "humidity_pct": float(p.humidity_pct.get().into()), "pressure_hpa": float(p.pressure_hpa.get().into()), "battery_mv": p.battery_mv.get(), "quality": p.quality.get()}));
        for (ch, v) in [
            (Channel::EnvTemperature, f64::from(p.temperature_c.get())),
            (Channel::EnvHumidity, f64::from(p.humidity_pct.get())),
            (Channel::EnvPressure, f64::from(p.pressure_hpa.get())),
            (Channel::EnvBattery, f64::from(p.battery_mv.get())),
        ] {
            readings.push(json!({"channel": ch.wire(), "quality": p.quality.get(), "ts_us": big(p.ts_us.get()), "value": float(v)}));
        }
    }
    let h = header_of(&bytes);
    Vector {
        name: "environment_two_packets",
        direction: Direction::DeviceToServer,
        expect: json!({"valid": true, "header": header_json(&h), "frame": {"type": "environment", "packets": pk}, "readings": readings}),
        bytes,
    }
}

fn valid_ack() -> Vector {
    let mut bytes = Vec::new();
    encode_ack(&mut bytes, 42, 1_000_000_007);
    let h = header_of(&bytes);
    Vector {
        name: "ack",
        direction: Direction::ServerToDevice,
        expect: json!({"valid": true, "header": header_json(&h), "frame": {"type": "ack", "acked_seq": big(1_000_000_007u64)}}),
        bytes,
    }
}

fn valid_error() -> Vector {
    let body = ErrorBody::new(
        Reason::CrcMismatch,
        FrameType::Telemetry.wire(),
        0xDEAD_BEEF,
        0x1234_5678,
    );
    let mut bytes = Vec::new();
    encode_error(&mut bytes, 42, 99, &body);
    let h = header_of(&bytes);
    Vector {
        name: "error_crc_mismatch",
        direction: Direction::ServerToDevice,
        expect: json!({"valid": true, "header": header_json(&h), "frame": {"type": "error", "refused_seq": "99", "reason": Reason::CrcMismatch.wire(), "reason_name": Reason::CrcMismatch.name(), "rejected_type": FrameType::Telemetry.wire(), "expected": big(0xDEAD_BEEFu64), "found": big(0x1234_5678u64)}}),
        bytes,
    }
}

fn live_records() -> Vec<LiveRecord> {
    vec![
        LiveRecord::new(1, 1, 0, NOW_US, 21.5),
        LiveRecord::new(2, 0xE001, Quality::Estimated.wire(), NOW_US + 1_000, 55.0),
        LiveRecord::new(u64::MAX - 1, 7, 0, NOW_US + 2_000, -0.125),
    ]
}

fn valid_live(name: &'static str, flags: u16) -> Vector {
    let records = live_records();
    let mut bytes = Vec::new();
    encode_live(&mut bytes, 123_456, flags, &records).expect("count fits");
    let recs: Vec<Value> = records
        .iter()
        .map(|r| json!({"device_id": big(r.device_id.get()), "channel": r.channel.get(), "quality": r.quality.get(), "ts_us": big(r.ts_us.get()), "value": float(r.value.get())}))
        .collect();
    let h = header_of(&bytes);
    Vector {
        name,
        direction: Direction::ServerToDashboard,
        expect: json!({"valid": true, "header": header_json(&h), "frame": {"type": "live", "position": "123456", "records": recs}}),
        bytes,
    }
}

fn invalid(name: &'static str, direction: Direction, bytes: Vec<u8>, reason: Reason) -> Vector {
    Vector {
        name,
        direction,
        expect: json!({"valid": false, "reason": reason.name(), "reason_code": reason.wire()}),
        bytes,
    }
}

/// Rewrites the payload CRC after a payload mutation, so a later check is the one that fails.
fn fix_crc(bytes: &mut [u8]) {
    let crc = crc32c::crc32c(&bytes[Header::SIZE..]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
}

fn basic_records() -> Vec<Record> {
    vec![
        Record::new(1, 0, 0, 21.5),
        Record::new(2, 0, 250_000, 1013.25),
        Record::new(3, Quality::Estimated.wire(), 500_000, -40.0),
    ]
}

/// Every golden vector, valid ones first.
pub fn vectors() -> Vec<Vector> {
    use Direction::*;
    let base = NOW_US - 1_000_000;
    let recs = basic_records();
    let good = || telemetry(1001, 5, 0, base, &basic_records());
    let mut v = vec![
        valid_telemetry(
            "telemetry_one_record",
            1,
            1,
            0,
            base,
            &[Record::new(1, 0, 0, 20.0)],
        ),
        valid_telemetry("telemetry_three_records", 1001, 5, 0, base, &recs),
        valid_telemetry(
            "telemetry_resent_flag",
            1001,
            6,
            FrameFlag::Resent.wire(),
            base,
            &recs,
        ),
        valid_telemetry(
            "telemetry_sixteen_records",
            u64::MAX,
            u64::MAX - 3,
            0,
            base,
            &(0..16)
                .map(|i| Record::new(i, 0, u32::from(i) * 1000, f64::from(i) * 0.5 - 3.0))
                .collect::<Vec<_>>(),
        ),
        valid_telemetry(
            "telemetry_fault_nan_and_raw_infinity",
            9,
            10,
            0,
            base,
            &[
                Record::new(4, Quality::Fault.wire(), 0, f64::NAN),
                Record::new(0xF001, 0, 1, f64::INFINITY),
                Record::new(0xF002, 0, 2, f64::NEG_INFINITY),
            ],
        ),
        valid_environment(),
        valid_ack(),
        valid_error(),
        valid_live("live_three_records", 0),
        valid_live("live_coalesced", FrameFlag::Coalesced.wire()),
    ];

    let mut b = good();
    b.truncate(20);
    v.push(invalid("truncated", DeviceToServer, b, Reason::Truncated));
    let mut b = good();
    b[0] = b'X';
    v.push(invalid("bad_magic", DeviceToServer, b, Reason::BadMagic));
    let mut b = good();
    b[2] = 2;
    v.push(invalid(
        "unsupported_version",
        DeviceToServer,
        b,
        Reason::UnsupportedVersion,
    ));
    let mut b = good();
    b[3] = 0x03;
    v.push(invalid(
        "unknown_frame_type",
        DeviceToServer,
        b,
        Reason::UnknownFrameType,
    ));
    let mut b = Vec::new();
    encode_ack(&mut b, 1001, 5);
    v.push(invalid(
        "unexpected_frame_type",
        DeviceToServer,
        b,
        Reason::UnexpectedFrameType,
    ));
    let b = telemetry(1001, 5, 0x8000, base, &recs);
    v.push(invalid(
        "reserved_flags",
        DeviceToServer,
        b,
        Reason::ReservedFlags,
    ));
    let mut b = good();
    b.push(0);
    v.push(invalid(
        "length_mismatch",
        DeviceToServer,
        b,
        Reason::LengthMismatch,
    ));
    let b = telemetry(1001, 0, 0, base, &recs);
    v.push(invalid(
        "zero_sequence",
        DeviceToServer,
        b,
        Reason::ZeroSequence,
    ));
    let b = telemetry(1001, 5, 0, base, &[]);
    v.push(invalid(
        "empty_batch",
        DeviceToServer,
        b,
        Reason::EmptyBatch,
    ));
    let many: Vec<Record> = (0..65).map(|i| Record::new(1, 0, i, 1.0)).collect();
    v.push(invalid(
        "too_many_records",
        DeviceToServer,
        telemetry(1001, 5, 0, base, &many),
        Reason::TooManyRecords,
    ));
    let mut b = good();
    b[6..8].copy_from_slice(&2u16.to_le_bytes());
    v.push(invalid(
        "count_mismatch",
        DeviceToServer,
        b,
        Reason::CountMismatch,
    ));
    let mut b = good();
    let last = b.len() - 1;
    b[last] ^= 0x01;
    v.push(invalid(
        "crc_mismatch",
        DeviceToServer,
        b,
        Reason::CrcMismatch,
    ));
    let b = telemetry(
        1001,
        5,
        0,
        base,
        &[Record::new(1, 0, 0, 1.0), Record::new(2, 0, 1, f64::NAN)],
    );
    v.push(invalid(
        "non_finite_value",
        DeviceToServer,
        b,
        Reason::NonFiniteValue,
    ));
    let mut packets = env_packets();
    packets[1].humidity_pct = zerocopy::little_endian::F32::new(f32::INFINITY);
    let mut b = Vec::new();
    encode_environment(&mut b, meta(42, 8, 0), &packets).expect("count fits");
    v.push(invalid(
        "environment_non_finite_value",
        DeviceToServer,
        b,
        Reason::NonFiniteValue,
    ));
    let old = NOW_US - LIMITS.max_past_us - 1;
    v.push(invalid(
        "timestamp_too_old",
        DeviceToServer,
        telemetry(1001, 5, 0, old, &recs),
        Reason::TimestampOutOfRange,
    ));
    let b = telemetry(
        1001,
        5,
        0,
        NOW_US,
        &[
            Record::new(1, 0, 0, 1.0),
            Record::new(1, 0, (LIMITS.max_future_us + 1) as u32, 2.0),
        ],
    );
    v.push(invalid(
        "timestamp_too_new",
        DeviceToServer,
        b,
        Reason::TimestampOutOfRange,
    ));
    let mut b = Vec::new();
    encode_error(
        &mut b,
        42,
        99,
        &ErrorBody::new(Reason::CrcMismatch, 1, 0, 0),
    );
    b[Header::SIZE] ^= 0xFF;
    v.push(invalid(
        "error_crc_mismatch_corrupted",
        ServerToDevice,
        b,
        Reason::CrcMismatch,
    ));
    let mut b = Vec::new();
    encode_live(&mut b, 1, 0, &live_records()).expect("count fits");
    b.truncate(b.len() - 4);
    let new_len = (b.len() - Header::SIZE) as u32;
    b[24..28].copy_from_slice(&new_len.to_le_bytes());
    fix_crc(&mut b);
    v.push(invalid(
        "live_count_mismatch",
        ServerToDashboard,
        b,
        Reason::CountMismatch,
    ));
    v
}

/// The manifest (`golden/vectors.json`) describing every vector.
pub fn manifest(vectors: &[Vector]) -> Value {
    let list: Vec<Value> = vectors
        .iter()
        .map(|v| {
            let mut e = json!({"name": v.name, "file": format!("{}.bin", v.name), "direction": direction_name(v.direction)});
            if let (Some(obj), Some(exp)) = (e.as_object_mut(), v.expect.as_object()) {
                obj.extend(exp.clone());
            }
            e
        })
        .collect();
    json!({
        "format": 1,
        "generated_by": "cargo run -p codecs --bin wire-gen",
        "now_us": big(NOW_US),
        "limits": {"max_records": LIMITS.max_records, "max_past_us": big(LIMITS.max_past_us), "max_future_us": big(LIMITS.max_future_us)},
        "vectors": list,
    })
}

/// Checks every vector against the Rust decoder; returns the first disagreement.
pub fn self_check(vectors: &[Vector]) -> Result<(), String> {
    for v in vectors {
        let got = decode(&v.bytes, v.direction, &LIMITS, NOW_US);
        let valid = v.expect["valid"].as_bool().unwrap_or(false);
        match (got, valid) {
            (Ok(_), true) => {}
            (Err(e), false) if e.reason().name() == v.expect["reason"] => {}
            (got, _) => {
                return Err(format!(
                    "vector {}: decoder says {:?}, expected {}",
                    v.name,
                    got.map(|f| f.header().frame_type),
                    v.expect
                ));
            }
        }
    }
    Ok(())
}
