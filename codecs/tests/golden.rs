//! The Rust decoder reads every golden vector on disk exactly as its manifest says.

use std::path::Path;

use codecs::golden::{direction_name, float};
use codecs::{Direction, Frame, Limits, decode};
use serde_json::{Value, json};

fn s(v: impl ToString) -> Value {
    Value::String(v.to_string())
}

fn frame_json(f: &Frame<'_>) -> Value {
    match f {
        Frame::Telemetry { base, records, .. } => json!({
            "type": "telemetry",
            "base_ts_us": s(base.base_ts_us.get()),
            "records": records.iter().map(|r| json!({"channel": r.channel.get(), "quality": r.quality.get(), "offset_us": r.offset_us.get(), "value": float(r.value.get())})).collect::<Vec<_>>(),
        }),
        Frame::Environment { packets, .. } => json!({
            "type": "environment",
            "packets": packets.iter().map(|p| json!({"ts_us": s(p.ts_us.get()), "temperature_c": float(p.temperature_c.get().into()), "humidity_pct": float(p.humidity_pct.get().into()), "pressure_hpa": float(p.pressure_hpa.get().into()), "battery_mv": p.battery_mv.get(), "quality": p.quality.get()})).collect::<Vec<_>>(),
        }),
        Frame::Ack { header } => json!({"type": "ack", "acked_seq": s(header.seq.get())}),
        Frame::Error { header, body } => {
            let reason = codecs::Reason::from_wire(body.reason.get()).expect("known reason");
            json!({"type": "error", "refused_seq": s(header.seq.get()), "reason": body.reason.get(), "reason_name": reason.name(), "rejected_type": body.rejected_type, "expected": s(body.expected.get()), "found": s(body.found.get())})
        }
        Frame::Live { header, records } => json!({
            "type": "live",
            "position": s(header.seq.get()),
            "records": records.iter().map(|r| json!({"device_id": s(r.device_id.get()), "channel": r.channel.get(), "quality": r.quality.get(), "ts_us": s(r.ts_us.get()), "value": float(r.value.get())})).collect::<Vec<_>>(),
        }),
    }
}

fn parse_i64(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .expect("decimal string")
}

#[test]
fn rust_decoder_matches_every_golden_vector_on_disk() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("vectors.json")).expect("manifest"))
            .expect("json");
    let now_us = parse_i64(&manifest["now_us"]);
    let limits = Limits {
        max_records: manifest["limits"]["max_records"]
            .as_u64()
            .expect("max_records") as u16,
        max_past_us: parse_i64(&manifest["limits"]["max_past_us"]),
        max_future_us: parse_i64(&manifest["limits"]["max_future_us"]),
    };
    let vectors = manifest["vectors"].as_array().expect("vectors");
    assert!(vectors.len() >= 25, "expected the full vector set");
    for v in vectors {
        let name = v["name"].as_str().expect("name");
        let bytes =
            std::fs::read(dir.join(v["file"].as_str().expect("file"))).expect("vector file");
        let direction = [
            Direction::DeviceToServer,
            Direction::ServerToDevice,
            Direction::ServerToDashboard,
        ]
        .into_iter()
        .find(|d| direction_name(*d) == v["direction"])
        .expect("known direction");
        match decode(&bytes, direction, &limits, now_us) {
            Ok(frame) => {
                assert_eq!(v["valid"], true, "{name}: decoded but expected a refusal");
                assert_eq!(frame_json(&frame), v["frame"], "{name}: frame");
                let h = frame.header();
                assert_eq!(h.count.get() as u64, v["header"]["count"], "{name}: count");
                assert_eq!(s(h.seq.get()), v["header"]["seq"], "{name}: seq");
                assert_eq!(
                    h.payload_crc.get() as u64,
                    v["header"]["payload_crc"],
                    "{name}: crc"
                );
                if let Some(readings) = v.get("readings") {
                    let got: Vec<Value> = frame
                        .readings()
                        .map(|r| json!({"channel": r.channel, "quality": r.quality, "ts_us": s(r.ts_us), "value": float(r.value)}))
                        .collect();
                    assert_eq!(&Value::Array(got), readings, "{name}: readings");
                    assert_eq!(
                        frame.reading_count(),
                        readings.as_array().map_or(0, Vec::len)
                    );
                }
            }
            Err(e) => {
                assert_eq!(
                    v["valid"], false,
                    "{name}: refused ({e}) but expected valid"
                );
                assert_eq!(e.reason().name(), v["reason"], "{name}: reason ({e})");
                assert_eq!(
                    u64::from(e.reason().wire()),
                    v["reason_code"],
                    "{name}: reason code"
                );
            }
        }
    }
}

#[test]
fn wire_md_worked_example_matches_the_encoder() {
    let mut buf = Vec::new();
    codecs::encode_telemetry(
        &mut buf,
        codecs::FrameMeta {
            device_id: 7,
            seq: 1,
            flags: 0,
        },
        1_767_225_600_000_000,
        &[codecs::Record::new(1, 0, 0, 21.5)],
    )
    .expect("encode");
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("WIRE.md"))
        .expect("WIRE.md");
    // The example's byte column, in order, from the "Worked example" code block.
    let block = doc
        .split("## Worked example")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("example block");
    let doc_hex: String = block
        .lines()
        .filter_map(|l| {
            let l = l
                .trim_start_matches("header")
                .trim_start_matches("payload")
                .trim();
            let bytes: Vec<&str> = l
                .split_whitespace()
                .take_while(|t| t.len() == 2 && u8::from_str_radix(t, 16).is_ok())
                .collect();
            (!bytes.is_empty()).then(|| bytes.concat())
        })
        .collect();
    assert_eq!(doc_hex, hex);
}
