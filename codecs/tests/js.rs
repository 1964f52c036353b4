//! The JS decoder (`js/telemux_wire.mjs`) agrees with the golden vectors and with the Rust decoder.
//!
//! Runs `node --test` on `js/test/*.test.mjs`, so `cargo test` checks the JS side too, and feeds
//! the JS decoder a corpus of thousands of mutated frames together with the Rust decoder's verdict
//! on each (reason, expected/found pair, readings), so both must apply the same rules in the same
//! order, not only on the golden vectors.
//!
//! Needs Node.js >= 20 on PATH (or `NODE=/path/to/node`). Without Node the tests fail; set
//! `TELEMUX_SKIP_JS_TESTS=1` to skip them explicitly.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use codecs::golden::{self, LIMITS, NOW_US};
use codecs::{
    Direction, EnvPacket, ErrorBody, Frame, FrameType, Header, Limits, LiveRecord, Record,
    TelemetryBase, decode,
};
use serde_json::{Value, json};

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// The node binary, or `None` when the JS tests are explicitly skipped.
fn node() -> Option<OsString> {
    if std::env::var_os("TELEMUX_SKIP_JS_TESTS").is_some_and(|v| !v.is_empty() && v != "0") {
        eprintln!("TELEMUX_SKIP_JS_TESTS is set: skipping the JS decoder tests");
        return None;
    }
    let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
    match Command::new(&node).arg("--version").output() {
        Ok(out) if out.status.success() => Some(node),
        Ok(out) => panic!(
            "`{} --version` failed ({}): {}",
            node.to_string_lossy(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "cannot run `{}` ({e}): the JS decoder tests need Node.js >= 20 on PATH \
             (or NODE=/path/to/node); set TELEMUX_SKIP_JS_TESTS=1 to skip them",
            node.to_string_lossy()
        ),
    }
}

/// Runs `node --test` on `files` with `envs`; panics with node's whole output on failure.
fn node_test(node: &OsString, files: &[PathBuf], envs: &[(&str, &Path)]) {
    let mut cmd = Command::new(node);
    cmd.arg("--test").args(files).current_dir(js_dir());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running node --test: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node --test {:?} failed ({}):\n{stdout}\n{stderr}",
        files,
        out.status
    );
    // Visible with --nocapture: node's summary lines.
    for line in stdout.lines().filter(|l| l.starts_with("# ")) {
        println!("{line}");
    }
}

/// Every `*.test.mjs` in `js/test/` (listed explicitly: `node --test <dir>` differs across Node versions).
fn test_files() -> Vec<PathBuf> {
    let dir = js_dir().join("test");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("read js/test entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    assert!(
        files.iter().any(|p| p.ends_with("golden.test.mjs")),
        "js/test/golden.test.mjs is missing"
    );
    files
}

#[test]
fn js_decoder_agrees_with_golden_vectors() {
    let Some(node) = node() else { return };
    node_test(&node, &test_files(), &[]);
}

#[test]
fn js_decoder_agrees_with_rust_decoder_on_mutated_frames() {
    let Some(node) = node() else { return };
    let corpus = differential_corpus();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("telemux_js_diff_corpus.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&corpus).expect("corpus serializes"),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    node_test(
        &node,
        &[js_dir().join("test").join("differential.test.mjs")],
        &[("TELEMUX_JS_DIFF_CORPUS", &path)],
    );
}

// ---------------------------------------------------------------------------------------------
// The differential corpus: mutated golden frames and the Rust decoder's verdict on each.

/// splitmix64: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const HS: usize = Header::SIZE;
const DIRECTIONS: [Direction; 3] = [
    Direction::DeviceToServer,
    Direction::ServerToDevice,
    Direction::ServerToDashboard,
];

/// Limits and clocks the cases are decoded with: the golden ones, plus edges (a record limit of 1,
/// saturating windows at both ends of i64, an empty window).
fn presets() -> Vec<(Limits, i64)> {
    let l = |max_records, max_past_us, max_future_us| Limits {
        max_records,
        max_past_us,
        max_future_us,
    };
    vec![
        (LIMITS, NOW_US),
        (l(1, LIMITS.max_past_us, LIMITS.max_future_us), NOW_US),
        (l(u16::MAX, i64::MAX, i64::MAX), 0),
        (l(u16::MAX, 0, i64::MAX), i64::MAX - 5),
        (l(u16::MAX, i64::MAX, 10), i64::MIN + 5),
        (l(64, 0, 0), NOW_US - 1_000_000),
    ]
}

fn set_u16(b: &mut [u8], at: usize, v: u16) {
    if at + 2 <= b.len() {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
}
fn set_u32(b: &mut [u8], at: usize, v: u32) {
    if at + 4 <= b.len() {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
}
fn set_u64(b: &mut [u8], at: usize, v: u64) {
    if at + 8 <= b.len() {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
}

fn fix_len(b: &mut [u8]) {
    if b.len() >= HS {
        let len = (b.len() - HS) as u32;
        set_u32(b, 24, len);
    }
}
fn fix_crc(b: &mut [u8]) {
    if b.len() >= HS {
        let crc = crc32c::crc32c(&b[HS..]);
        set_u32(b, 28, crc);
    }
}

/// Payload layout of a frame type: (prefix bytes, record bytes).
fn shape(frame_type: u8) -> Option<(usize, usize)> {
    Some(match FrameType::from_wire(frame_type)? {
        FrameType::Telemetry => (TelemetryBase::SIZE, Record::SIZE),
        FrameType::Environment => (0, EnvPacket::SIZE),
        FrameType::Ack => (0, 0),
        FrameType::Error => (0, ErrorBody::SIZE),
        FrameType::Live => (0, LiveRecord::SIZE),
    })
}

/// Start offsets of the records of a well-shaped frame (empty if the shape is unknown).
fn record_starts(b: &[u8]) -> Vec<usize> {
    let Some((prefix, size)) = b.get(3).and_then(|&t| shape(t)) else {
        return Vec::new();
    };
    if size == 0 || b.len() < HS + prefix {
        return Vec::new();
    }
    (0..(b.len() - HS - prefix) / size)
        .map(|i| HS + prefix + i * size)
        .collect()
}

fn interesting_ts(rng: &mut Rng) -> i64 {
    let edges = [
        NOW_US,
        NOW_US - LIMITS.max_past_us,
        NOW_US - LIMITS.max_past_us - 1,
        NOW_US + LIMITS.max_future_us,
        NOW_US + LIMITS.max_future_us + 1,
        NOW_US - 1_000_000,
        0,
        -1,
        i64::MAX,
        i64::MAX - 3,
        i64::MIN,
        i64::MIN + 3,
    ];
    if rng.below(8) == 0 {
        rng.next() as i64
    } else {
        rng.pick(&edges)
    }
}

fn mutate(rng: &mut Rng, original: &[u8]) -> Vec<u8> {
    let mut b = original.to_vec();
    let n = b.len();
    match rng.below(13) {
        0 if n > 0 => {
            let at = rng.below(n);
            b[at] ^= 1 << rng.below(8);
        }
        1 if n > 0 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(n);
                b[at] = rng.byte();
            }
            if rng.below(2) == 0 {
                fix_crc(&mut b);
            }
        }
        2 => b.truncate(rng.below(n + 1)),
        3 => {
            for _ in 0..1 + rng.below(40) {
                b.push(rng.byte());
            }
            if rng.below(2) == 0 {
                fix_len(&mut b);
                fix_crc(&mut b);
            }
        }
        4 if n > HS => {
            let at = HS + rng.below(n - HS);
            let any = rng.byte();
            b[at] = rng.pick(&[0xFF, 0x7F, 0x80, 0xF0, 0x00, any]);
            fix_crc(&mut b);
        }
        5 if n >= HS => {
            // A new count, with the payload resized to fit it (or not), then consistent len/CRC.
            let any = rng.below(70);
            let count = rng.pick(&[0, 1, 2, 3, 16, 63, 64, 65, any]);
            set_u16(&mut b, 6, count as u16);
            if let Some((prefix, size)) = shape(b[3])
                && rng.below(4) != 0
            {
                let want = HS + prefix + count * size;
                let mut i = HS;
                while b.len() < want {
                    let byte = original.get(i).copied().unwrap_or(0);
                    b.push(byte);
                    i = if i + 1 < original.len() { i + 1 } else { HS };
                }
                b.truncate(want);
            }
            fix_len(&mut b);
            fix_crc(&mut b);
        }
        6 => {
            // Non-finite and edge values, FAULT and raw channels, in the records' value fields.
            for start in record_starts(&b) {
                if rng.below(2) == 0 {
                    continue;
                }
                let f64s = [
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    f64::MAX,
                    -0.0,
                    1.5,
                ];
                let f32s = [
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    f32::MAX,
                    -0.0,
                    2.5,
                ];
                match FrameType::from_wire(b[3]) {
                    Some(FrameType::Telemetry) => {
                        let v = rng.pick(&f64s);
                        b[start + 8..start + 16].copy_from_slice(&v.to_le_bytes());
                        if rng.below(3) == 0 {
                            set_u16(
                                &mut b,
                                start,
                                rng.pick(&[0, 0xE000, 0xEFFF, 0xF000, 0xFFFF]),
                            );
                        }
                        if rng.below(3) == 0 {
                            set_u16(&mut b, start + 2, rng.pick(&[0, 1, 2, 0xFFFE, 0xFFFF]));
                        }
                    }
                    Some(FrameType::Environment) => {
                        // temperature, humidity, pressure: each replaced or not, so
                        // several can be non-finite at once.
                        for field in [8, 12, 16] {
                            if rng.below(2) == 0 {
                                let v = rng.pick(&f32s);
                                b[start + field..start + field + 4]
                                    .copy_from_slice(&v.to_le_bytes());
                            }
                        }
                        if rng.below(3) == 0 {
                            set_u16(&mut b, start + 22, rng.pick(&[0, 1, 2, 0xFFFF]));
                        }
                    }
                    Some(FrameType::Live) => {
                        let v = rng.pick(&f64s);
                        b[start + 16..start + 24].copy_from_slice(&v.to_le_bytes());
                    }
                    _ => {}
                }
            }
            fix_crc(&mut b);
        }
        7 => {
            // Timestamps at the window edges and the ends of i64; offsets up to u32::MAX.
            match b.get(3).and_then(|&t| FrameType::from_wire(t)) {
                Some(FrameType::Telemetry) if n >= HS + 8 => {
                    let base = interesting_ts(rng);
                    set_u64(&mut b, HS, base as u64);
                    for start in record_starts(&b) {
                        if rng.below(3) == 0 {
                            let off = rng.pick(&[0, 1, 300_000_000, 300_000_001, u32::MAX]);
                            set_u32(&mut b, start + 4, off);
                        }
                    }
                }
                Some(FrameType::Environment) | Some(FrameType::Live) => {
                    let at = if b[3] == FrameType::Live.wire() { 8 } else { 0 };
                    for start in record_starts(&b) {
                        if rng.below(2) == 0 {
                            let ts = interesting_ts(rng);
                            set_u64(&mut b, start + at, ts as u64);
                        }
                    }
                }
                _ => {}
            }
            fix_crc(&mut b);
        }
        8 => {
            let len = rng.below(200);
            b = (0..len).map(|_| rng.byte()).collect();
            if len >= HS && rng.below(2) == 0 {
                b[0..3].copy_from_slice(&[0x54, 0x4D, 1]);
                let any = rng.byte();
                b[3] = rng.pick(&[0x01, 0x02, 0x81, 0x82, 0xC1, any]);
                if rng.below(2) == 0 {
                    fix_len(&mut b);
                    fix_crc(&mut b);
                }
            }
        }
        9 if n >= HS => b[3] = rng.pick(&[0x00, 0x01, 0x02, 0x03, 0x81, 0x82, 0xC1, 0xFF]),
        10 if n >= HS => {
            let any = rng.next() as u16;
            set_u16(&mut b, 4, rng.pick(&[0, 1, 2, 3, 0x8000, any]));
        }
        11 if n >= HS => set_u64(&mut b, 16, rng.pick(&[0, 1, u64::MAX])),
        12 => {
            // Error frames whose count/payload disagree with one ErrorBody, CRC fixed.
            let mut e = Vec::new();
            codecs::encode_error(
                &mut e,
                rng.next(),
                rng.next(),
                &ErrorBody::new(codecs::Reason::CrcMismatch, 1, 2, 3),
            );
            match rng.below(3) {
                0 => e.truncate(HS),
                1 => e.extend_from_within(HS..),
                _ => {}
            }
            set_u16(&mut e, 6, rng.pick(&[0, 1, 2]) as u16);
            fix_len(&mut e);
            fix_crc(&mut e);
            b = e;
        }
        _ => {
            let at = rng.below(n + 1);
            b.insert(at, rng.byte());
        }
    }
    b
}

/// The Rust decoder's verdict, in the shape differential.test.mjs compares against.
fn verdict(bytes: &[u8], direction: Direction, limits: &Limits, now_us: i64) -> Value {
    match decode(bytes, direction, limits, now_us) {
        Ok(frame) => {
            let readings: Vec<Value> = frame
                .readings()
                .map(|r| {
                    json!([
                        r.channel,
                        r.quality,
                        r.ts_us.to_string(),
                        golden::float(r.value)
                    ])
                })
                .collect();
            let live: Vec<Value> = match frame {
                Frame::Live { records, .. } => records
                    .iter()
                    .map(|r| {
                        json!([
                            r.device_id.get().to_string(),
                            r.channel.get(),
                            r.quality.get(),
                            r.ts_us.get().to_string(),
                            golden::float(r.value.get())
                        ])
                    })
                    .collect(),
                _ => Vec::new(),
            };
            json!({
                "ok": true,
                "frame_type": frame.header().frame_type,
                "seq": frame.header().seq.get().to_string(),
                "readings": readings,
                "live": live,
            })
        }
        Err(e) => {
            let (expected, found) = e.expected_found();
            json!({
                "ok": false,
                "reason": e.reason().name(),
                "reason_code": e.reason().wire(),
                "expected": expected.to_string(),
                "found": found.to_string(),
            })
        }
    }
}

fn differential_corpus() -> Value {
    let presets = presets();
    let originals: Vec<Vec<u8>> = golden::vectors().into_iter().map(|v| v.bytes).collect();
    let mut rng = Rng(0x7E1E_3F00_D5EE_D001);
    let mut frames: Vec<Vec<u8>> = originals.clone();
    for _ in 0..6000 {
        let i = rng.below(originals.len());
        let mut b = mutate(&mut rng, &originals[i]);
        if rng.below(4) == 0 {
            b = mutate(&mut rng, &b);
        }
        frames.push(b);
    }
    let cases: Vec<Value> = frames
        .iter()
        .enumerate()
        .map(|(n, bytes)| {
            // Golden frames under the golden preset; mutations mostly too, else an edge preset.
            let preset = if n < originals.len() || rng.below(2) == 0 {
                0
            } else {
                1 + rng.below(presets.len() - 1)
            };
            let (limits, now_us) = &presets[preset];
            let results: serde_json::Map<String, Value> = DIRECTIONS
                .iter()
                .map(|&d| {
                    (
                        golden::direction_name(d).to_string(),
                        verdict(bytes, d, limits, *now_us),
                    )
                })
                .collect();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            json!({"hex": hex, "preset": preset, "results": results})
        })
        .collect();
    let presets: Vec<Value> = presets
        .iter()
        .map(|(l, now)| {
            json!({
                "limits": {
                    "max_records": l.max_records,
                    "max_past_us": l.max_past_us.to_string(),
                    "max_future_us": l.max_future_us.to_string(),
                },
                "now_us": now.to_string(),
            })
        })
        .collect();
    json!({"presets": presets, "cases": cases})
}
