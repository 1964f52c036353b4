//! Telemetry decode throughput: validated wire decode vs CRC-32C alone vs memcpy vs serde_json.
//!
//! One criterion group per batch size (`telemetry/1`, `telemetry/16`, ...) so the four ways of
//! reading the same readings sit side by side:
//! - `codecs_decode`: `codecs::decode` (every check, CRC included) then every reading iterated,
//!   values summed and timestamps folded, so the work cannot be skipped;
//! - `codecs_decode_only`: the same `codecs::decode` call alone (validation, no iteration);
//! - `crc32c`: `crc32c::crc32c` over the whole frame (the floor any checked decode pays);
//! - `memcpy`: the frame copied into a preallocated buffer (the memory-bandwidth ceiling);
//! - `serde_json`: the same readings as compact JSON, parsed into structs and summed alike.
//!
//! Throughput is in bytes of the input each one reads (frame bytes, JSON bytes for serde_json),
//! with readings/s alongside for the decoders. `bench/decode-table.py` turns criterion's
//! `estimates.json` into the tables of BENCHMARKS.md.
//!
//! Run: `cargo bench -p codecs --bench decode` (about a minute on 2 cores).

use std::hint::black_box;
use std::time::Duration;

use codecs::{Direction, FrameMeta, Limits, TelemetryWriter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

/// Fixed "now" all batches are stamped against (2025-06-15T15:06:40Z), so runs are repeatable.
const NOW_US: i64 = 1_750_000_000_000_000;
/// Batch sizes measured.
const SIZES: [usize; 4] = [1, 16, 256, 4096];

/// The same batch as JSON: what a JSON ingest API would receive instead of the wire frame.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct JsonBatch {
    device_id: u64,
    seq: u64,
    base_ts_us: i64,
    records: Vec<JsonRecord>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct JsonRecord {
    channel: u16,
    quality: u16,
    offset_us: u32,
    value: f64,
}

/// One batch in both encodings.
struct Batch {
    n: usize,
    frame: Vec<u8>,
    json: Vec<u8>,
}

/// A plausible batch of `n` readings: 8 sensor channels sampled round-robin every 10 ms,
/// starting an hour before `NOW_US`; values with three decimals around typical sensor ranges;
/// an occasional ESTIMATED quality bit.
fn batch(n: usize) -> Batch {
    let base_ts_us = NOW_US - 3_600_000_000;
    let mut records = Vec::with_capacity(n);
    // Small LCG so the values vary without a rand dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ n as u64;
    for i in 0..n {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let channel = (i % 8) as u16 + 1;
        let centre = [21.0, 45.0, 1013.0, 3.7, 230.0, 0.5, 12.0, 400.0][usize::from(channel - 1)];
        let jitter = ((state >> 33) % 10_000) as f64 / 1000.0 - 5.0; // -5.000 ..= 4.999
        let value = ((centre + jitter) * 1000.0).round() / 1000.0;
        let quality = if i % 97 == 96 { 0x0002 } else { 0 };
        records.push(JsonRecord {
            channel,
            quality,
            offset_us: (i as u32) * 10_000,
            value,
        });
    }
    let doc = JsonBatch {
        device_id: 0x0000_1234_5678_9ABC,
        seq: 42,
        base_ts_us,
        records,
    };

    let mut frame = Vec::with_capacity(32 + 8 + 16 * n);
    let meta = FrameMeta {
        device_id: doc.device_id,
        seq: doc.seq,
        flags: 0,
    };
    let mut w = TelemetryWriter::begin(&mut frame, meta, base_ts_us);
    for r in &doc.records {
        w.push(r.channel, r.quality, r.offset_us, r.value).unwrap();
    }
    w.finish();
    let json = serde_json::to_vec(&doc).unwrap();

    // Both encodings must carry the same readings, or the comparison means nothing.
    let limits = Limits::default();
    let decoded = codecs::decode(&frame, Direction::DeviceToServer, &limits, NOW_US).unwrap();
    let parsed: JsonBatch = serde_json::from_slice(&json).unwrap();
    assert_eq!(parsed, doc);
    assert_eq!(decoded.reading_count(), n);
    for (r, j) in decoded.readings().zip(&parsed.records) {
        assert_eq!(
            (r.channel, r.quality, r.ts_us, r.value.to_bits()),
            (
                j.channel,
                j.quality,
                base_ts_us + i64::from(j.offset_us),
                j.value.to_bits()
            )
        );
    }
    Batch { n, frame, json }
}

/// Wire frame bytes vs compact JSON bytes per batch size, printed before the measurements.
fn print_size_table(batches: &[Batch]) {
    println!("\nframe size vs compact JSON (same readings)");
    println!("| batch | frame bytes | bytes/reading | JSON bytes | bytes/reading | JSON/frame |");
    println!("|------:|------------:|--------------:|-----------:|--------------:|-----------:|");
    for b in batches {
        println!(
            "| {} | {} | {:.1} | {} | {:.1} | {:.2}x |",
            b.n,
            b.frame.len(),
            b.frame.len() as f64 / b.n as f64,
            b.json.len(),
            b.json.len() as f64 / b.n as f64,
            b.json.len() as f64 / b.frame.len() as f64
        );
    }
    println!();
}

fn bench_decode(c: &mut Criterion) {
    let batches: Vec<Batch> = SIZES.iter().map(|&n| batch(n)).collect();
    print_size_table(&batches);
    let limits = Limits::default();

    for b in &batches {
        let n = b.n as u64;
        let mut group = c.benchmark_group(format!("telemetry/{}", b.n));

        group.throughput(Throughput::ElementsAndBytes {
            elements: n,
            bytes: b.frame.len() as u64,
        });
        group.bench_function("codecs_decode", |bench| {
            bench.iter(|| {
                let frame = codecs::decode(
                    black_box(&b.frame),
                    Direction::DeviceToServer,
                    &limits,
                    NOW_US,
                )
                .unwrap();
                let mut sum = 0.0f64;
                let mut ts = 0i64;
                for r in frame.readings() {
                    sum += r.value;
                    ts ^= r.ts_us;
                }
                black_box((sum, ts))
            })
        });

        // The same decode without touching the readings afterwards: the cost of validation alone.
        group.bench_function("codecs_decode_only", |bench| {
            bench.iter(|| {
                codecs::decode(
                    black_box(&b.frame),
                    Direction::DeviceToServer,
                    &limits,
                    NOW_US,
                )
                .is_ok()
            })
        });

        group.throughput(Throughput::Bytes(b.frame.len() as u64));
        group.bench_function("crc32c", |bench| {
            bench.iter(|| black_box(crc32c::crc32c(black_box(&b.frame))))
        });

        let mut dst = vec![0u8; b.frame.len()];
        group.bench_function("memcpy", |bench| {
            bench.iter(|| {
                dst.copy_from_slice(black_box(&b.frame));
                black_box(&mut dst);
            })
        });

        group.throughput(Throughput::ElementsAndBytes {
            elements: n,
            bytes: b.json.len() as u64,
        });
        group.bench_function("serde_json", |bench| {
            bench.iter(|| {
                let doc: JsonBatch = serde_json::from_slice(black_box(&b.json)).unwrap();
                let mut sum = 0.0f64;
                let mut ts = 0i64;
                for r in &doc.records {
                    sum += r.value;
                    ts ^= doc.base_ts_us.saturating_add(i64::from(r.offset_us));
                }
                black_box((sum, ts, doc.device_id, doc.seq))
            })
        });

        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench_decode
}
criterion_main!(benches);
