//! The hand-written firmware header `include/telemux_wire.h` agrees with the Rust codec, both ways.
//!
//! `tests/c/harness.c` is compiled at test time with the system C compiler (`$CC`, else `cc`)
//! and driven over stdin/stdout (protocol in its opening comment):
//! - C checks every golden vector with the manifest's limits and clock, and its verdict and
//!   decoded fields match the manifest's expectations;
//! - C encodes telemetry and environment frames from inputs given here, and the bytes equal
//!   `codecs::encode_telemetry` / `TelemetryWriter` / `encode_environment` output exactly;
//! - Rust-encoded pseudo-random frames of every type pass the C check with the same fields, and
//!   corrupted ones get the same reason code and (expected, found) pair as `codecs::decode`.
//!
//! Floats cross the process boundary as their bit patterns, so NaN payloads compare exactly.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use codecs::{
    Direction, EnvPacket, ErrorBody, Frame, FrameMeta, Header, Limits, LiveRecord, Reason, Record,
    TelemetryWriter, decode, encode_ack, encode_environment, encode_error, encode_live,
    encode_telemetry,
};
use serde_json::Value;
use zerocopy::FromBytes;

/// Flags every build of the harness uses (the firmware baseline: strict C11, warnings fatal).
const C11_FLAGS: &[&str] = &[
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pedantic",
    "-O1",
];
/// Extra-strict C99 flags the header must also pass (no `-pedantic`: the generated layout
/// header's `_Static_assert` is C11 syntax that C99 compilers accept as an extension).
const C99_STRICT_FLAGS: &[&str] = &[
    "-std=c99",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wconversion",
    "-Wsign-conversion",
    "-Wshadow",
    "-Wcast-qual",
    "-Wstrict-prototypes",
    "-fsyntax-only",
];
/// Limits and clock of the generated (non-golden) frames: the golden ones.
const LIMITS: Limits = codecs::golden::LIMITS;
/// Clock of the generated (non-golden) frames.
const NOW_US: i64 = codecs::golden::NOW_US;
/// Limits that accept any count and any time: the encoder test feeds extreme timestamps.
const ANY_TIME: Limits = Limits {
    max_records: u16::MAX,
    max_past_us: i64::MAX,
    max_future_us: i64::MAX,
};
/// Pseudo-random frames per randomized test; enough to hit every refusal reason.
const RANDOM_FRAMES: usize = 400;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `$CC` split into program and leading arguments (e.g. `CC="gcc -m32"`), else `cc`.
fn compiler() -> (String, Vec<String>) {
    let cc = std::env::var("CC").unwrap_or_default();
    let mut words = cc.split_whitespace().map(str::to_owned);
    match words.next() {
        Some(program) => (program, words.collect()),
        None => ("cc".to_owned(), Vec::new()),
    }
}

/// Runs the C compiler with `flags` on the harness; panics with its diagnostics on failure.
fn compile(flags: &[&str], output: Option<&Path>) {
    let (program, pre) = compiler();
    let mut cmd = Command::new(&program);
    cmd.args(&pre)
        .args(flags)
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join("tests/c/harness.c"));
    if let Some(out) = output {
        cmd.arg("-o").arg(out);
    }
    let result = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run the C compiler `{program}`: {e}"));
    assert!(
        result.status.success(),
        "C compiler `{program}` {flags:?} failed ({}):\n{}{}",
        result.status,
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
}

/// The harness binary, compiled once per test process (the file name carries the pid so
/// concurrent `cargo test` runs do not overwrite each other's binary).
fn harness() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_header");
        std::fs::create_dir_all(&dir).expect("create the C harness output directory");
        let binary = dir.join(format!("harness-{}", std::process::id()));
        compile(C11_FLAGS, Some(&binary));
        binary
    })
}

/// Sends `input` to the harness and returns one response (lines of tokens) per command.
fn run_harness(input: String) -> Vec<Vec<Vec<String>>> {
    let mut child = Command::new(harness())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the C harness");
    let mut stdin = child.stdin.take().expect("harness stdin is piped");
    // Written from another thread so a large answer cannot block a large question.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("wait for the C harness");
    writer
        .join()
        .expect("stdin writer thread panicked")
        .expect("write commands to the C harness");
    assert!(
        output.status.success(),
        "C harness failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("harness output is UTF-8");
    let mut responses = Vec::new();
    let mut current = Vec::new();
    for line in text.lines() {
        if line == "end" {
            responses.push(std::mem::take(&mut current));
        } else {
            current.push(line.split_whitespace().map(str::to_owned).collect());
        }
    }
    assert!(
        current.is_empty(),
        "harness output ends without `end`: {current:?}"
    );
    responses
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "-".to_owned();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    assert!(
        s.len().is_multiple_of(2),
        "odd-length hex from the harness: {s}"
    );
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("harness hex is valid"))
        .collect()
}

fn num<T: std::str::FromStr>(line: &[String], i: usize) -> T
where
    T::Err: std::fmt::Debug,
{
    let token = line
        .get(i)
        .unwrap_or_else(|| panic!("harness line {line:?} has no field {i}"));
    token
        .parse()
        .unwrap_or_else(|e| panic!("harness field {i} of {line:?}: {e:?}"))
}

fn bits(line: &[String], i: usize) -> u64 {
    let token = line
        .get(i)
        .unwrap_or_else(|| panic!("harness line {line:?} has no field {i}"));
    u64::from_str_radix(token, 16).unwrap_or_else(|e| panic!("harness bits {token}: {e}"))
}

fn direction_code(d: Direction) -> u8 {
    match d {
        Direction::DeviceToServer => 0,
        Direction::ServerToDevice => 1,
        Direction::ServerToDashboard => 2,
    }
}

fn check_command(bytes: &[u8], direction: Direction, limits: &Limits, now_us: i64) -> String {
    format!(
        "check {} {} {} {} {} {} {}\n",
        direction_code(direction),
        limits.max_records,
        limits.max_past_us,
        limits.max_future_us,
        now_us,
        bytes.len(),
        hex(bytes)
    )
}

/// A header as both sides report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HeaderFields {
    magic: u16,
    version: u8,
    frame_type: u8,
    flags: u16,
    count: u16,
    device_id: u64,
    seq: u64,
    payload_len: u32,
    payload_crc: u32,
}

/// A telemetry record as both sides report it (value as bits, absolute time included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RecordFields {
    channel: u16,
    quality: u16,
    offset_us: u32,
    value_bits: u64,
    ts_us: i64,
}

/// An environment packet as both sides report it (floats as bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EnvFields {
    ts_us: i64,
    temperature_bits: u32,
    humidity_bits: u32,
    pressure_bits: u32,
    battery_mv: u16,
    quality: u16,
}

/// An error frame's body as both sides report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ErrorFields {
    refused_seq: u64,
    reason: u16,
    rejected_type: u8,
    reserved: u8,
    expected: u64,
    found: u64,
}

/// A live record as both sides report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LiveFields {
    device_id: u64,
    ts_us: i64,
    value_bits: u64,
    channel: u16,
    quality: u16,
}

/// The outcome of checking one frame: verdict, error detail, header and every decoded field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Checked {
    /// 0 when valid, else the reason code.
    reason: u16,
    /// Error detail (`DecodeError::expected_found`), 0 when valid.
    expected: u64,
    /// Error detail (`DecodeError::expected_found`), 0 when valid.
    found: u64,
    /// Header as read (zeros for frames shorter than a header).
    header: HeaderFields,
    base_ts_us: Option<i64>,
    records: Vec<RecordFields>,
    packets: Vec<EnvFields>,
    acked_seq: Option<u64>,
    error: Option<ErrorFields>,
    live: Vec<LiveFields>,
}

fn parse_checked(response: &[Vec<String>]) -> Checked {
    let mut c = Checked::default();
    for line in response {
        match line.first().map(String::as_str) {
            Some("result") => {
                c.reason = num(line, 1);
                c.expected = num(line, 2);
                c.found = num(line, 3);
            }
            Some("header") => {
                c.header = HeaderFields {
                    magic: num(line, 1),
                    version: num(line, 2),
                    frame_type: num(line, 3),
                    flags: num(line, 4),
                    count: num(line, 5),
                    device_id: num(line, 6),
                    seq: num(line, 7),
                    payload_len: num(line, 8),
                    payload_crc: num(line, 9),
                }
            }
            Some("base") => c.base_ts_us = Some(num(line, 1)),
            Some("record") => c.records.push(RecordFields {
                channel: num(line, 1),
                quality: num(line, 2),
                offset_us: num(line, 3),
                value_bits: bits(line, 4),
                ts_us: num(line, 5),
            }),
            Some("env") => c.packets.push(EnvFields {
                ts_us: num(line, 1),
                temperature_bits: bits(line, 2) as u32,
                humidity_bits: bits(line, 3) as u32,
                pressure_bits: bits(line, 4) as u32,
                battery_mv: num(line, 5),
                quality: num(line, 6),
            }),
            Some("ack") => c.acked_seq = Some(num(line, 1)),
            Some("error") => {
                c.error = Some(ErrorFields {
                    refused_seq: num(line, 1),
                    reason: num(line, 2),
                    rejected_type: num(line, 3),
                    reserved: num(line, 4),
                    expected: num(line, 5),
                    found: num(line, 6),
                })
            }
            Some("live") => c.live.push(LiveFields {
                device_id: num(line, 1),
                ts_us: num(line, 2),
                value_bits: bits(line, 3),
                channel: num(line, 4),
                quality: num(line, 5),
            }),
            _ => panic!("unexpected harness line {line:?}"),
        }
    }
    c
}

fn header_fields(h: &Header) -> HeaderFields {
    HeaderFields {
        magic: h.magic.get(),
        version: h.version,
        frame_type: h.frame_type,
        flags: h.flags.get(),
        count: h.count.get(),
        device_id: h.device_id.get(),
        seq: h.seq.get(),
        payload_len: h.payload_len.get(),
        payload_crc: h.payload_crc.get(),
    }
}

/// What the Rust decoder makes of `bytes`, in the harness's shape.
fn rust_checked(bytes: &[u8], direction: Direction, limits: &Limits, now_us: i64) -> Checked {
    let mut c = Checked {
        header: Header::read_from_prefix(bytes)
            .map(|(h, _)| header_fields(&h))
            .unwrap_or_default(),
        ..Checked::default()
    };
    let frame = match decode(bytes, direction, limits, now_us) {
        Ok(frame) => frame,
        Err(e) => {
            c.reason = e.reason().wire();
            (c.expected, c.found) = e.expected_found();
            return c;
        }
    };
    match frame {
        Frame::Telemetry { base, records, .. } => {
            let base = base.base_ts_us.get();
            c.base_ts_us = Some(base);
            c.records = records
                .iter()
                .map(|r| RecordFields {
                    channel: r.channel.get(),
                    quality: r.quality.get(),
                    offset_us: r.offset_us.get(),
                    value_bits: r.value.get().to_bits(),
                    ts_us: base.saturating_add(i64::from(r.offset_us.get())),
                })
                .collect();
        }
        Frame::Environment { packets, .. } => {
            c.packets = packets
                .iter()
                .map(|p| EnvFields {
                    ts_us: p.ts_us.get(),
                    temperature_bits: p.temperature_c.get().to_bits(),
                    humidity_bits: p.humidity_pct.get().to_bits(),
                    pressure_bits: p.pressure_hpa.get().to_bits(),
                    battery_mv: p.battery_mv.get(),
                    quality: p.quality.get(),
                })
                .collect();
        }
        Frame::Ack { header } => c.acked_seq = Some(header.seq.get()),
        Frame::Error { header, body } => {
            c.error = Some(ErrorFields {
                refused_seq: header.seq.get(),
                reason: body.reason.get(),
                rejected_type: body.rejected_type,
                reserved: body.reserved,
                expected: body.expected.get(),
                found: body.found.get(),
            })
        }
        Frame::Live { records, .. } => {
            c.live = records
                .iter()
                .map(|r| LiveFields {
                    device_id: r.device_id.get(),
                    ts_us: r.ts_us.get(),
                    value_bits: r.value.get().to_bits(),
                    channel: r.channel.get(),
                    quality: r.quality.get(),
                })
                .collect();
        }
    }
    c
}

// ---- Manifest reading -------------------------------------------------------------------------

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key)
        .unwrap_or_else(|| panic!("manifest entry lacks `{key}`: {v}"))
}

fn json_u64(v: &Value, key: &str) -> u64 {
    let f = field(v, key);
    match f {
        Value::String(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("manifest `{key}` = {s}: {e}")),
        _ => f
            .as_u64()
            .unwrap_or_else(|| panic!("manifest `{key}` is not an unsigned number: {f}")),
    }
}

fn json_i64(v: &Value, key: &str) -> i64 {
    let f = field(v, key);
    match f {
        Value::String(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("manifest `{key}` = {s}: {e}")),
        _ => f
            .as_i64()
            .unwrap_or_else(|| panic!("manifest `{key}` is not a signed number: {f}")),
    }
}

fn json_f64(v: &Value, key: &str) -> f64 {
    let f = field(v, key);
    match f.as_str() {
        Some("NaN") => f64::NAN,
        Some("Infinity") => f64::INFINITY,
        Some("-Infinity") => f64::NEG_INFINITY,
        Some(other) => panic!("manifest `{key}` is an unknown float string {other}"),
        None => f
            .as_f64()
            .unwrap_or_else(|| panic!("manifest `{key}` is not a number: {f}")),
    }
}

fn json_array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    field(v, key)
        .as_array()
        .unwrap_or_else(|| panic!("manifest `{key}` is not an array"))
}

/// Asserts a C-reported value equals the manifest's (NaN matches any NaN; otherwise exact bits).
fn assert_float(what: &str, c: f64, manifest: f64) {
    if manifest.is_nan() {
        assert!(c.is_nan(), "{what}: C reports {c}, manifest says NaN");
    } else {
        assert_eq!(
            c.to_bits(),
            manifest.to_bits(),
            "{what}: C {c} vs manifest {manifest}"
        );
    }
}

fn direction_named(name: &str) -> Direction {
    match name {
        "device_to_server" => Direction::DeviceToServer,
        "server_to_device" => Direction::ServerToDevice,
        "server_to_dashboard" => Direction::ServerToDashboard,
        other => panic!("manifest names an unknown direction {other}"),
    }
}

/// Compares the C view of a valid golden vector with its manifest entry, field by field.
fn assert_matches_manifest(name: &str, c: &Checked, v: &Value) {
    let h = field(v, "header");
    let want = HeaderFields {
        magic: json_u64(h, "magic") as u16,
        version: json_u64(h, "version") as u8,
        frame_type: json_u64(h, "frame_type") as u8,
        flags: json_u64(h, "flags") as u16,
        count: json_u64(h, "count") as u16,
        device_id: json_u64(h, "device_id"),
        seq: json_u64(h, "seq"),
        payload_len: json_u64(h, "payload_len") as u32,
        payload_crc: json_u64(h, "payload_crc") as u32,
    };
    assert_eq!(c.header, want, "{name}: header");
    let frame = field(v, "frame");
    match field(frame, "type").as_str() {
        Some("telemetry") => {
            assert_eq!(
                c.base_ts_us,
                Some(json_i64(frame, "base_ts_us")),
                "{name}: base"
            );
            let records = json_array(frame, "records");
            let readings = json_array(v, "readings");
            assert_eq!(c.records.len(), records.len(), "{name}: record count");
            for (i, ((got, want), reading)) in
                c.records.iter().zip(records).zip(readings).enumerate()
            {
                assert_eq!(
                    got.channel as u64,
                    json_u64(want, "channel"),
                    "{name}[{i}]: channel"
                );
                assert_eq!(
                    got.quality as u64,
                    json_u64(want, "quality"),
                    "{name}[{i}]: quality"
                );
                assert_eq!(
                    got.offset_us as u64,
                    json_u64(want, "offset_us"),
                    "{name}[{i}]: offset"
                );
                assert_float(
                    &format!("{name}[{i}]: value"),
                    f64::from_bits(got.value_bits),
                    json_f64(want, "value"),
                );
                assert_eq!(
                    got.ts_us,
                    json_i64(reading, "ts_us"),
                    "{name}[{i}]: reading time"
                );
            }
        }
        Some("environment") => {
            let packets = json_array(frame, "packets");
            assert_eq!(c.packets.len(), packets.len(), "{name}: packet count");
            for (i, (got, want)) in c.packets.iter().zip(packets).enumerate() {
                assert_eq!(got.ts_us, json_i64(want, "ts_us"), "{name}[{i}]: ts_us");
                for (what, got_bits) in [
                    ("temperature_c", got.temperature_bits),
                    ("humidity_pct", got.humidity_bits),
                    ("pressure_hpa", got.pressure_bits),
                ] {
                    assert_float(
                        &format!("{name}[{i}]: {what}"),
                        f64::from(f32::from_bits(got_bits)),
                        json_f64(want, what),
                    );
                }
                assert_eq!(
                    got.battery_mv as u64,
                    json_u64(want, "battery_mv"),
                    "{name}[{i}]: battery"
                );
                assert_eq!(
                    got.quality as u64,
                    json_u64(want, "quality"),
                    "{name}[{i}]: quality"
                );
            }
        }
        Some("ack") => {
            assert_eq!(
                c.acked_seq,
                Some(json_u64(frame, "acked_seq")),
                "{name}: acked seq"
            );
        }
        Some("error") => {
            let want = ErrorFields {
                refused_seq: json_u64(frame, "refused_seq"),
                reason: json_u64(frame, "reason") as u16,
                rejected_type: json_u64(frame, "rejected_type") as u8,
                reserved: 0,
                expected: json_u64(frame, "expected"),
                found: json_u64(frame, "found"),
            };
            assert_eq!(c.error, Some(want), "{name}: error body");
        }
        Some("live") => {
            assert_eq!(
                c.header.seq,
                json_u64(frame, "position"),
                "{name}: position"
            );
            let records = json_array(frame, "records");
            assert_eq!(c.live.len(), records.len(), "{name}: live record count");
            for (i, (got, want)) in c.live.iter().zip(records).enumerate() {
                assert_eq!(
                    got.device_id,
                    json_u64(want, "device_id"),
                    "{name}[{i}]: device"
                );
                assert_eq!(got.ts_us, json_i64(want, "ts_us"), "{name}[{i}]: ts_us");
                assert_eq!(
                    got.channel as u64,
                    json_u64(want, "channel"),
                    "{name}[{i}]: channel"
                );
                assert_eq!(
                    got.quality as u64,
                    json_u64(want, "quality"),
                    "{name}[{i}]: quality"
                );
                assert_float(
                    &format!("{name}[{i}]: value"),
                    f64::from_bits(got.value_bits),
                    json_f64(want, "value"),
                );
            }
        }
        other => panic!("{name}: manifest frame type {other:?} is not covered by this test"),
    }
}

// ---- Deterministic pseudo-random inputs -------------------------------------------------------

/// xorshift64*: a fixed-seed generator, so every run checks the same frames.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// An f64 that is finite: small integers, fractions, -0.0, subnormals or random finite bits.
    fn finite_f64(&mut self) -> f64 {
        match self.below(5) {
            0 => self.below(2000) as f64 - 1000.0,
            1 => (self.next() as i64 as f64) / 1e12,
            2 => -0.0,
            3 => f64::from_bits(self.below(1 << 52)),
            _ => {
                let v = f64::from_bits(self.next());
                if v.is_finite() { v } else { 1.5 }
            }
        }
    }

    /// Any f64 bit pattern, often NaN (with payloads) or infinite.
    fn any_f64(&mut self) -> f64 {
        match self.below(4) {
            0 => {
                f64::from_bits(0x7FF0_0000_0000_0000 | self.below(1 << 52) | (self.below(2) << 63))
            }
            1 => f64::INFINITY,
            2 => f64::NEG_INFINITY,
            _ => self.finite_f64(),
        }
    }

    fn finite_f32(&mut self) -> f32 {
        match self.below(3) {
            0 => self.below(20_000) as f32 / 8.0 - 1000.0,
            1 => -0.0,
            _ => {
                let v = f32::from_bits(self.next() as u32);
                if v.is_finite() { v } else { 2.5 }
            }
        }
    }
}

/// Records accepted under [`LIMITS`] at base `base`: finite values below the raw channels,
/// anything on raw channels or with the FAULT bit, offsets inside the window.
fn random_records(rng: &mut Rng, n: usize) -> Vec<Record> {
    (0..n)
        .map(|_| {
            let offset = rng.next() as u32;
            match rng.below(4) {
                0 => Record::new(
                    0xF000 | rng.below(0x1000) as u16,
                    rng.below(16) as u16,
                    offset,
                    rng.any_f64(),
                ),
                1 => Record::new(
                    rng.below(0xF000) as u16,
                    1 | rng.below(16) as u16,
                    offset,
                    rng.any_f64(),
                ),
                _ => Record::new(
                    rng.below(0xF000) as u16,
                    rng.below(16) as u16 & !1,
                    offset,
                    rng.finite_f64(),
                ),
            }
        })
        .collect()
}

/// A base time such that base + any u32 offset stays inside the window around [`NOW_US`].
fn random_base(rng: &mut Rng) -> i64 {
    let two_hours = 2 * 3600 * 1_000_000;
    NOW_US - two_hours - rng.below((LIMITS.max_past_us - two_hours) as u64) as i64
}

fn random_packets(rng: &mut Rng, n: usize) -> Vec<EnvPacket> {
    (0..n)
        .map(|_| {
            let ts = NOW_US - LIMITS.max_past_us
                + rng.below((LIMITS.max_past_us + LIMITS.max_future_us) as u64 + 1) as i64;
            let fault = rng.chance(20);
            let f = |rng: &mut Rng| {
                if fault && rng.chance(50) {
                    f32::from_bits(0x7F80_0000 | rng.below(1 << 23) as u32)
                } else {
                    rng.finite_f32()
                }
            };
            let (t, h, p) = (f(rng), f(rng), f(rng));
            let quality = (rng.below(16) as u16 & !1) | u16::from(fault);
            EnvPacket::new(ts, t, h, p, rng.next() as u16, quality)
        })
        .collect()
}

fn random_seq(rng: &mut Rng) -> u64 {
    if rng.chance(10) {
        u64::MAX - rng.below(3)
    } else {
        1 + rng.below(1 << 40)
    }
}

/// A valid frame of a random type with the direction it is checked for.
fn random_frame(rng: &mut Rng) -> (Vec<u8>, Direction) {
    let mut out = Vec::new();
    let device_id = rng.next();
    let direction = match rng.below(5) {
        0 | 1 => {
            let n = 1 + rng.below(u64::from(LIMITS.max_records)) as usize;
            let meta = FrameMeta {
                device_id,
                seq: random_seq(rng),
                flags: rng.below(2) as u16,
            };
            let records = random_records(rng, n);
            encode_telemetry(&mut out, meta, random_base(rng), &records).expect("count fits");
            Direction::DeviceToServer
        }
        2 => {
            let n = 1 + rng.below(u64::from(LIMITS.max_records)) as usize;
            let meta = FrameMeta {
                device_id,
                seq: random_seq(rng),
                flags: rng.below(2) as u16,
            };
            encode_environment(&mut out, meta, &random_packets(rng, n)).expect("count fits");
            Direction::DeviceToServer
        }
        3 => {
            if rng.chance(50) {
                encode_ack(&mut out, device_id, rng.next());
            } else {
                let reason = Reason::ALL[rng.below(Reason::ALL.len() as u64) as usize];
                let body = ErrorBody::new(reason, rng.next() as u8, rng.next(), rng.next());
                encode_error(&mut out, device_id, rng.next(), &body);
            }
            Direction::ServerToDevice
        }
        _ => {
            let n = 1 + rng.below(40) as usize;
            let records: Vec<LiveRecord> = (0..n)
                .map(|_| {
                    LiveRecord::new(
                        rng.next(),
                        rng.next() as u16,
                        rng.next() as u16,
                        rng.next() as i64,
                        rng.any_f64(),
                    )
                })
                .collect();
            encode_live(&mut out, rng.next(), (rng.below(4) as u16) & 2, &records)
                .expect("count fits");
            Direction::ServerToDashboard
        }
    };
    (out, direction)
}

/// Rewrites the payload CRC so a later rule is the one a mutation trips.
fn fix_crc(bytes: &mut [u8]) {
    if bytes.len() >= Header::SIZE {
        let crc = crc32c::crc32c(&bytes[Header::SIZE..]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    }
}

/// One damage to a valid frame, aimed at a different rule each time.
fn corrupt(rng: &mut Rng, bytes: &mut Vec<u8>) {
    if bytes.len() < Header::SIZE {
        return;
    }
    if bytes.len() == Header::SIZE && rng.chance(50) {
        // An ack has no payload; give some mutations below one to work on.
        bytes.push(rng.next() as u8);
    }
    let len = bytes.len();
    let payload = (len - Header::SIZE) as u64;
    match rng.below(13) {
        0 => bytes.truncate(rng.below(Header::SIZE as u64) as usize),
        1 => bytes[rng.below(2) as usize] ^= 1 << rng.below(8),
        2 => bytes[2] = rng.next() as u8,
        3 => bytes[3] = rng.next() as u8,
        4 => bytes[4..6].copy_from_slice(&(1u16 << rng.below(16)).to_le_bytes()),
        5 if payload > 0 && rng.chance(50) => {
            bytes.truncate(len - 1 - rng.below(payload) as usize);
        }
        5 => bytes.extend((0..1 + rng.below(20)).map(|_| rng.next() as u8)),
        6 => bytes[16..24].copy_from_slice(&0u64.to_le_bytes()),
        7 => {
            let count = if rng.chance(40) {
                0
            } else {
                rng.below(70) as u16
            };
            bytes[6..8].copy_from_slice(&count.to_le_bytes());
        }
        8 if payload > 0 => {
            let i = Header::SIZE + rng.below(payload) as usize;
            bytes[i] ^= 1 << rng.below(8);
        }
        9 => bytes[28] ^= 1,
        10 => {
            make_non_finite(rng, bytes);
            fix_crc(bytes);
        }
        11 => {
            // Resize the payload and rewrite payload_len, so the length agrees but the count
            // may not.
            let new_len = if rng.chance(50) {
                rng.below(payload + 1)
            } else {
                payload + rng.below(60)
            };
            bytes.resize(Header::SIZE + new_len as usize, 0);
            bytes[24..28].copy_from_slice(&(new_len as u32).to_le_bytes());
            fix_crc(bytes);
        }
        _ if payload > 0 => {
            // Flip a payload bit and repair the CRC: the payload rules must catch it, or not.
            let i = Header::SIZE + rng.below(payload) as usize;
            bytes[i] ^= 1 << rng.below(8);
            fix_crc(bytes);
        }
        _ => bytes[3] = rng.next() as u8,
    }
    if rng.chance(30) {
        fix_crc(bytes);
    }
}

/// Puts a NaN or infinity into a telemetry record or environment packet, usually on a channel
/// and quality that require finite values.
fn make_non_finite(rng: &mut Rng, bytes: &mut [u8]) {
    // Slots that fit the bytes present (earlier damage may have changed count or length).
    let payload = bytes.len() - Header::SIZE;
    let strict = rng.chance(75);
    match bytes[3] {
        0x01 if payload >= 8 + Record::SIZE => {
            let slots = (payload - 8) / Record::SIZE;
            let r = Header::SIZE + 8 + Record::SIZE * rng.below(slots as u64) as usize;
            let nan = 0x7FF0_0000_0000_0000 | rng.below(1 << 52) | (rng.below(2) << 63);
            bytes[r + 8..r + 16].copy_from_slice(&nan.to_le_bytes());
            if strict {
                let channel = rng.below(0xF000) as u16;
                bytes[r..r + 2].copy_from_slice(&channel.to_le_bytes());
                bytes[r + 2] &= !1;
            }
        }
        0x02 if payload >= EnvPacket::SIZE => {
            let slots = payload / EnvPacket::SIZE;
            let p = Header::SIZE + EnvPacket::SIZE * rng.below(slots as u64) as usize;
            let field = p + 8 + 4 * rng.below(3) as usize;
            let inf = 0x7F80_0000 | rng.below(1 << 23) as u32;
            bytes[field..field + 4].copy_from_slice(&inf.to_le_bytes());
            if strict {
                bytes[p + 22] &= !1;
            }
        }
        _ => {}
    }
}

/// Runs every case through C and Rust, asserts identical outcomes and returns the C outcomes.
fn assert_c_agrees_with_rust(cases: &[(Vec<u8>, Direction, Limits, i64)]) -> Vec<Checked> {
    let input: String = cases
        .iter()
        .map(|(bytes, dir, limits, now)| check_command(bytes, *dir, limits, *now))
        .collect();
    let responses = run_harness(input);
    assert_eq!(responses.len(), cases.len(), "one harness answer per frame");
    let mut results = Vec::with_capacity(cases.len());
    for (i, ((bytes, dir, limits, now), response)) in cases.iter().zip(&responses).enumerate() {
        let c = parse_checked(response);
        let rust = rust_checked(bytes, *dir, limits, *now);
        assert_eq!(
            c,
            rust,
            "case {i} ({dir:?}, {limits:?}, now {now}): {}",
            hex(bytes)
        );
        results.push(c);
    }
    results
}

fn reasons(results: &[Checked]) -> BTreeSet<u16> {
    results.iter().map(|c| c.reason).collect()
}

// ---- Tests ------------------------------------------------------------------------------------

#[test]
fn header_compiles_as_strict_c99_with_conversion_warnings() {
    compile(C99_STRICT_FLAGS, None);
}

#[test]
fn c_checker_matches_every_golden_vector_in_the_manifest() {
    let golden = crate_dir().join("golden");
    let text =
        std::fs::read_to_string(golden.join("vectors.json")).expect("read golden/vectors.json");
    let manifest: Value = serde_json::from_str(&text).expect("golden/vectors.json is JSON");
    let l = field(&manifest, "limits");
    let limits = Limits {
        max_records: json_u64(l, "max_records") as u16,
        max_past_us: json_i64(l, "max_past_us"),
        max_future_us: json_i64(l, "max_future_us"),
    };
    let now_us = json_i64(&manifest, "now_us");
    let vectors = json_array(&manifest, "vectors");
    assert!(
        vectors.len() >= 20,
        "manifest lists only {} vectors",
        vectors.len()
    );

    let mut input = String::new();
    let mut frames = Vec::new();
    for v in vectors {
        let file = field(v, "file")
            .as_str()
            .expect("vector `file` is a string");
        let bytes =
            std::fs::read(golden.join(file)).unwrap_or_else(|e| panic!("read golden/{file}: {e}"));
        let direction = direction_named(
            field(v, "direction")
                .as_str()
                .expect("direction is a string"),
        );
        input.push_str(&check_command(&bytes, direction, &limits, now_us));
        frames.push((bytes, direction));
    }
    let responses = run_harness(input);
    assert_eq!(
        responses.len(),
        vectors.len(),
        "one harness answer per vector"
    );

    let mut valid = 0;
    let mut reasons = BTreeSet::new();
    for ((v, (bytes, direction)), response) in vectors.iter().zip(&frames).zip(&responses) {
        let name = field(v, "name")
            .as_str()
            .expect("vector `name` is a string");
        let c = parse_checked(response);
        if field(v, "valid").as_bool().expect("`valid` is a boolean") {
            assert_eq!(c.reason, 0, "{name}: C refuses a valid vector ({c:?})");
            assert_matches_manifest(name, &c, v);
            valid += 1;
        } else {
            let want = json_u64(v, "reason_code") as u16;
            assert_eq!(
                c.reason, want,
                "{name}: C reason {} vs manifest {want}",
                c.reason
            );
            reasons.insert(c.reason);
        }
        // Beyond the manifest: the error detail and header fields equal the Rust decoder's.
        assert_eq!(
            c,
            rust_checked(bytes, *direction, &limits, now_us),
            "{name}: C vs Rust decode"
        );
    }
    assert_eq!(valid, 10, "valid golden vectors checked");
    let every_check_reason: BTreeSet<u16> = (1..=14).collect();
    assert_eq!(
        reasons, every_check_reason,
        "each refusal reason has a golden vector"
    );
}

#[test]
fn c_encoder_matches_rust_byte_for_byte() {
    let base = NOW_US - 1_000_000;
    let mut rng = Rng(0x5EED_0001);
    let mut telemetry_cases: Vec<(FrameMeta, i64, Vec<Record>)> = vec![
        (
            FrameMeta {
                device_id: 1,
                seq: 1,
                flags: 0,
            },
            base,
            vec![Record::new(1, 0, 0, 20.0)],
        ),
        (
            FrameMeta {
                device_id: 1001,
                seq: 6,
                flags: codecs::FrameFlag::Resent.wire(),
            },
            base,
            vec![
                Record::new(1, 0, 0, 21.5),
                Record::new(2, 0, 250_000, 1013.25),
                Record::new(3, 2, 500_000, -40.0),
            ],
        ),
        (
            FrameMeta {
                device_id: u64::MAX,
                seq: u64::MAX - 3,
                flags: 0,
            },
            base,
            vec![
                Record::new(4, 1, 0, f64::from_bits(0x7FF8_0000_DEAD_BEEF)),
                Record::new(0xF001, 0, 1, f64::INFINITY),
                Record::new(0xF002, 0, 2, f64::NEG_INFINITY),
                Record::new(
                    0xFFFF,
                    0xFFFF,
                    u32::MAX,
                    f64::from_bits(0xFFF0_0000_0000_0001),
                ),
                Record::new(0, 0, 3, -0.0),
                Record::new(5, 8, 4, f64::MIN_POSITIVE / 4.0),
            ],
        ),
        (
            FrameMeta {
                device_id: 7,
                seq: 9,
                flags: 0,
            },
            -1,
            vec![Record::new(9, 0, 1, f64::MAX)],
        ),
        (
            FrameMeta {
                device_id: 7,
                seq: 10,
                flags: 0,
            },
            base,
            Vec::new(),
        ),
    ];
    for _ in 0..12 {
        let n = 1 + rng.below(300) as usize;
        let meta = FrameMeta {
            device_id: rng.next(),
            seq: random_seq(&mut rng),
            flags: rng.below(2) as u16,
        };
        let base = random_base(&mut rng);
        telemetry_cases.push((meta, base, random_records(&mut rng, n)));
    }
    let mut env_cases: Vec<(FrameMeta, Vec<EnvPacket>)> = vec![
        (
            FrameMeta {
                device_id: 42,
                seq: 7,
                flags: 0,
            },
            vec![
                EnvPacket::new(NOW_US - 60_000_000, 21.5, 40.25, 1013.25, 3712, 0),
                EnvPacket::new(NOW_US, -3.75, 88.5, 998.0, 3650, 2),
            ],
        ),
        (
            FrameMeta {
                device_id: 43,
                seq: u64::MAX,
                flags: 1,
            },
            vec![EnvPacket::new(
                NOW_US,
                f32::from_bits(0x7FC0_1234),
                f32::INFINITY,
                -0.0,
                u16::MAX,
                1,
            )],
        ),
    ];
    for _ in 0..8 {
        let n = 1 + rng.below(100) as usize;
        let meta = FrameMeta {
            device_id: rng.next(),
            seq: random_seq(&mut rng),
            flags: rng.below(2) as u16,
        };
        env_cases.push((meta, random_packets(&mut rng, n)));
    }

    let mut input = String::new();
    for (meta, base, records) in &telemetry_cases {
        let cap = Header::SIZE + 8 + records.len() * Record::SIZE;
        input.push_str(&format!(
            "telemetry {cap} {} {} {} {base} {}",
            meta.device_id,
            meta.seq,
            meta.flags,
            records.len()
        ));
        for r in records {
            input.push_str(&format!(
                " {} {} {} {:x}",
                r.channel.get(),
                r.quality.get(),
                r.offset_us.get(),
                r.value.get().to_bits()
            ));
        }
        input.push('\n');
    }
    for (meta, packets) in &env_cases {
        let cap = Header::SIZE + packets.len() * EnvPacket::SIZE;
        input.push_str(&format!(
            "environment {cap} {} {} {} {}",
            meta.device_id,
            meta.seq,
            meta.flags,
            packets.len()
        ));
        for p in packets {
            input.push_str(&format!(
                " {} {:x} {:x} {:x} {} {}",
                p.ts_us.get(),
                p.temperature_c.get().to_bits(),
                p.humidity_pct.get().to_bits(),
                p.pressure_hpa.get().to_bits(),
                p.battery_mv.get(),
                p.quality.get()
            ));
        }
        input.push('\n');
    }
    let responses = run_harness(input);
    assert_eq!(
        responses.len(),
        telemetry_cases.len() + env_cases.len(),
        "one answer per frame"
    );

    let encoded = |response: &[Vec<String>]| -> Vec<u8> {
        let line = response
            .iter()
            .find(|l| l[0] == "encoded")
            .expect("harness reports the encoding");
        let len: i64 = num(line, 1);
        let bytes = unhex(&line[2]);
        assert_eq!(
            len,
            bytes.len() as i64,
            "C return value is the frame length"
        );
        bytes
    };
    for (i, ((meta, base, records), response)) in telemetry_cases.iter().zip(&responses).enumerate()
    {
        let pushes: Vec<i64> = response
            .iter()
            .filter(|l| l[0] == "push")
            .map(|l| num(l, 1))
            .collect();
        assert_eq!(
            pushes,
            vec![0; records.len()],
            "telemetry case {i}: every push succeeds"
        );
        let c = encoded(response);
        let mut rust = Vec::new();
        encode_telemetry(&mut rust, *meta, *base, records).expect("count fits");
        assert_eq!(
            hex(&c),
            hex(&rust),
            "telemetry case {i}: C vs encode_telemetry"
        );
        let mut writer_buf = Vec::new();
        let mut w = TelemetryWriter::begin(&mut writer_buf, *meta, *base);
        for r in records {
            w.push(
                r.channel.get(),
                r.quality.get(),
                r.offset_us.get(),
                r.value.get(),
            )
            .expect("count fits");
        }
        assert_eq!(
            hex(&c),
            hex(w.finish()),
            "telemetry case {i}: C vs TelemetryWriter"
        );

        let got = decode(&c, Direction::DeviceToServer, &ANY_TIME, NOW_US);
        if records.is_empty() {
            assert!(
                matches!(got, Err(codecs::DecodeError::EmptyBatch)),
                "case {i}: {got:?}"
            );
            continue;
        }
        let (h, got_base, got_records) = match got {
            Ok(Frame::Telemetry {
                header,
                base,
                records,
            }) => (header, base.base_ts_us.get(), records),
            other => panic!("telemetry case {i}: C frame does not decode as telemetry: {other:?}"),
        };
        assert_eq!(
            (h.device_id.get(), h.seq.get(), h.flags.get()),
            (meta.device_id, meta.seq, meta.flags)
        );
        assert_eq!(got_base, *base, "telemetry case {i}: base");
        assert_eq!(
            got_records,
            records.as_slice(),
            "telemetry case {i}: records"
        );
    }
    for (i, ((meta, packets), response)) in env_cases
        .iter()
        .zip(&responses[telemetry_cases.len()..])
        .enumerate()
    {
        let c = encoded(response);
        let mut rust = Vec::new();
        encode_environment(&mut rust, *meta, packets).expect("count fits");
        assert_eq!(
            hex(&c),
            hex(&rust),
            "environment case {i}: C vs encode_environment"
        );
        match decode(&c, Direction::DeviceToServer, &ANY_TIME, NOW_US) {
            Ok(Frame::Environment {
                header,
                packets: got,
            }) => {
                assert_eq!(
                    (header.device_id.get(), header.seq.get(), header.flags.get()),
                    (meta.device_id, meta.seq, meta.flags)
                );
                assert_eq!(got, packets.as_slice(), "environment case {i}: packets");
            }
            other => {
                panic!("environment case {i}: C frame does not decode as environment: {other:?}")
            }
        }
    }
}

#[test]
fn c_encoders_refuse_frames_past_capacity_and_finish_reports_it() {
    let two = Header::SIZE + 8 + 2 * Record::SIZE;
    let input = format!(
        "telemetry {two} 5 1 0 {NOW_US} 3 1 0 0 0 2 0 1 0 3 0 2 0\n\
         telemetry {two} 5 1 0 {NOW_US} 2 1 0 0 0 2 0 1 0\n\
         telemetry 39 5 1 0 {NOW_US} 1 1 0 0 0\n\
         environment {} 5 1 0 2 {NOW_US} 0 0 0 1 0 {NOW_US} 0 0 0 1 0\n\
         environment {} 5 1 0 2 {NOW_US} 0 0 0 1 0 {NOW_US} 0 0 0 1 0\n",
        Header::SIZE + 2 * EnvPacket::SIZE - 1,
        Header::SIZE + 2 * EnvPacket::SIZE,
    );
    let r = run_harness(input);
    let lines = |i: usize| -> Vec<String> { r[i].iter().map(|l| l.join(" ")).collect() };
    // Third record does not fit: refused, and the error sticks so finish cannot drop it silently.
    let over = lines(0);
    assert_eq!(
        &over[..4],
        ["room 2", "push 0", "push 0", "push -1"],
        "{over:?}"
    );
    assert_eq!(over[4], "encoded -1 -", "finish reports the capacity error");
    // Exactly two records fit a buffer sized with TM_TELEMETRY_FRAME_SIZE(2).
    let exact = lines(1);
    assert_eq!(&exact[..3], ["room 2", "push 0", "push 0"], "{exact:?}");
    assert!(
        exact[3].starts_with(&format!("encoded {two} ")),
        "{exact:?}"
    );
    // A buffer smaller than header + base cannot start a frame.
    assert_eq!(lines(2), ["room 0", "push -1", "encoded -1 -"]);
    // Environment: one byte short is refused, the exact size is accepted.
    assert_eq!(lines(3), ["encoded -1 -"]);
    assert!(lines(4)[0].starts_with(&format!("encoded {} ", Header::SIZE + 2 * EnvPacket::SIZE)));
}

#[test]
fn c_crc32c_matches_rust_crc32c_append() {
    let mut rng = Rng(0x5EED_0002);
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"123456789".to_vec(),
        vec![0; 32],
        vec![0xFF; 33],
    ];
    for _ in 0..50 {
        let n = rng.below(600) as usize;
        inputs.push((0..n).map(|_| rng.next() as u8).collect());
    }
    let splits: Vec<usize> = inputs
        .iter()
        .map(|b| rng.below(b.len() as u64 + 1) as usize)
        .collect();
    let input: String = inputs
        .iter()
        .zip(&splits)
        .map(|(b, split)| format!("crc {split} {} {}\n", b.len(), hex(b)))
        .collect();
    let responses = run_harness(input);
    assert_eq!(responses.len(), inputs.len(), "one answer per input");
    assert_eq!(
        crc32c::crc32c(b"123456789"),
        0xE306_9283,
        "CRC-32C check value"
    );
    for ((bytes, split), response) in inputs.iter().zip(&splits).zip(&responses) {
        let line = &response[0];
        let whole: u32 = num(line, 1);
        let parts: u32 = num(line, 2);
        let rust = crc32c::crc32c(bytes);
        assert_eq!(whole, rust, "tm_crc32c vs crc32c over {}", hex(bytes));
        let appended = crc32c::crc32c_append(crc32c::crc32c(&bytes[..*split]), &bytes[*split..]);
        assert_eq!(
            parts, appended,
            "tm_crc32c_update split at {split} vs crc32c_append"
        );
    }
}

#[test]
fn c_checker_accepts_rust_encoded_random_frames_with_matching_fields() {
    let mut rng = Rng(0x5EED_0003);
    let cases: Vec<_> = (0..RANDOM_FRAMES)
        .map(|_| {
            let (bytes, dir) = random_frame(&mut rng);
            (bytes, dir, LIMITS, NOW_US)
        })
        .collect();
    for (bytes, dir, limits, now) in &cases {
        assert!(
            decode(bytes, *dir, limits, *now).is_ok(),
            "generator made an invalid frame: {}",
            hex(bytes)
        );
    }
    let results = assert_c_agrees_with_rust(&cases);
    assert_eq!(
        reasons(&results),
        BTreeSet::from([0]),
        "every random valid frame passes the C check"
    );
}

#[test]
fn c_checker_agrees_with_rust_on_corrupted_frames() {
    let mut rng = Rng(0x5EED_0004);
    let directions = [
        Direction::DeviceToServer,
        Direction::ServerToDevice,
        Direction::ServerToDashboard,
    ];
    let cases: Vec<_> = (0..RANDOM_FRAMES * 3)
        .map(|_| {
            let (mut bytes, mut dir) = random_frame(&mut rng);
            // Up to three damages at once, so rules that sit next to each other in the order
            // (seq 0 and count 0, flags and length, ...) fail together and the first must win.
            for _ in 0..1 + rng.below(3) {
                corrupt(&mut rng, &mut bytes);
            }
            if rng.chance(10) {
                dir = directions[rng.below(3) as usize];
            }
            let mut limits = LIMITS;
            if rng.chance(15) {
                limits.max_records = rng.below(8) as u16;
            }
            // Move the clock now and then, far enough to push readings out of the window.
            let now = match rng.below(8) {
                0 => NOW_US + LIMITS.max_past_us,
                1 => NOW_US - 3 * 3600 * 1_000_000,
                2 => i64::MIN + rng.below(1000) as i64,
                3 => i64::MAX - rng.below(1000) as i64,
                _ => NOW_US,
            };
            (bytes, dir, limits, now)
        })
        .collect();
    let results = assert_c_agrees_with_rust(&cases);
    let every: BTreeSet<u16> = (0..=14).collect();
    assert_eq!(
        reasons(&results),
        every,
        "the corruptions exercised every check rule (and some passed)"
    );
}

/// One hand-made frame with the outcome both checkers must report.
struct EdgeCase {
    /// What the case proves.
    what: &'static str,
    bytes: Vec<u8>,
    direction: Direction,
    now_us: i64,
    /// The refusal, or `None` for a valid frame.
    reason: Option<Reason>,
    /// The refusal's (expected, found) detail; (0, 0) when valid.
    detail: (u64, u64),
}

#[test]
fn c_checker_window_edges_and_payload_rule_order_match_rust() {
    let min = NOW_US - LIMITS.max_past_us;
    let max = NOW_US + LIMITS.max_future_us;
    let meta = FrameMeta {
        device_id: 3,
        seq: 4,
        flags: 0,
    };
    // Records as (channel, quality, offset_us, value).
    let telemetry = |base: i64, records: &[(u16, u16, u32, f64)]| {
        let records: Vec<Record> = records
            .iter()
            .map(|&(channel, quality, offset, value)| Record::new(channel, quality, offset, value))
            .collect();
        let mut out = Vec::new();
        encode_telemetry(&mut out, meta, base, &records).expect("count fits");
        out
    };
    // Packets as (ts_us, temperature, humidity, pressure).
    let environment = |packets: &[(i64, f32, f32, f32)]| {
        let packets: Vec<EnvPacket> = packets
            .iter()
            .map(|&(ts, t, h, p)| EnvPacket::new(ts, t, h, p, 3300, 0))
            .collect();
        let mut out = Vec::new();
        encode_environment(&mut out, meta, &packets).expect("count fits");
        out
    };
    // An error frame whose count and payload agree but are not one body.
    let error_frame = |bodies: usize| {
        let body = ErrorBody::new(Reason::RateLimited, 1, 10, 0);
        let mut out = Vec::new();
        encode_error(&mut out, 3, 4, &body);
        let payload: Vec<u8> = out[Header::SIZE..].repeat(bodies);
        out.truncate(Header::SIZE);
        out[6..8].copy_from_slice(&(bodies as u16).to_le_bytes());
        out[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        fix_crc(&mut out);
        out
    };
    let inf = f32::INFINITY;
    let d2s = Direction::DeviceToServer;
    let case = |what, bytes, now_us, reason, detail| EdgeCase {
        what,
        bytes,
        direction: d2s,
        now_us,
        reason,
        detail,
    };
    let cases = vec![
        case(
            "oldest accepted time",
            telemetry(min, &[(1, 0, 0, 1.0)]),
            NOW_US,
            None,
            (0, 0),
        ),
        case(
            "base too old, reading not",
            telemetry(min - 1, &[(1, 0, 1, 1.0)]),
            NOW_US,
            None,
            (0, 0),
        ),
        case(
            "newest accepted time",
            telemetry(max - 6, &[(1, 0, 6, 1.0)]),
            NOW_US,
            None,
            (0, 0),
        ),
        case(
            "one microsecond too old",
            telemetry(min - 1, &[(1, 0, 0, 1.0)]),
            NOW_US,
            Some(Reason::TimestampOutOfRange),
            (0, (min - 1) as u64),
        ),
        case(
            "first reading past the window is named",
            telemetry(
                max - 5,
                &[
                    (1, 0, 0, 1.0),
                    (1, 0, 5, 2.0),
                    (1, 0, 6, 3.0),
                    (1, 0, 7, 3.0),
                ],
            ),
            NOW_US,
            Some(Reason::TimestampOutOfRange),
            (2, (max + 1) as u64),
        ),
        case(
            "telemetry checks every value before any time",
            telemetry(min - 1, &[(1, 0, 0, 1.0), (7, 0, 1, f64::NAN)]),
            NOW_US,
            Some(Reason::NonFiniteValue),
            (1, 7),
        ),
        case(
            "0xF000 is the first raw channel",
            telemetry(min, &[(0xF000, 0, 0, f64::NAN)]),
            NOW_US,
            None,
            (0, 0),
        ),
        case(
            "0xEFFF requires finite values",
            telemetry(min, &[(0xEFFF, 2, 0, f64::INFINITY)]),
            NOW_US,
            Some(Reason::NonFiniteValue),
            (0, 0xEFFF),
        ),
        case(
            "FAULT allows non-finite values",
            telemetry(min, &[(5, 1, 0, f64::NEG_INFINITY)]),
            NOW_US,
            None,
            (0, 0),
        ),
        case(
            "window end saturates at i64::MAX, reading times too",
            telemetry(i64::MAX - 5, &[(1, 0, u32::MAX, 1.0)]),
            i64::MAX - 10,
            None,
            (0, 0),
        ),
        case(
            "window start saturates at i64::MIN",
            telemetry(i64::MIN, &[(1, 0, 0, 1.0)]),
            i64::MIN + 10,
            None,
            (0, 0),
        ),
        case(
            "environment edges are inclusive",
            environment(&[(min, 1.0, 2.0, 3.0), (max, 1.0, 2.0, 3.0)]),
            NOW_US,
            None,
            (0, 0),
        ),
        case(
            "environment time one past the end",
            environment(&[(min, 1.0, 2.0, 3.0), (max + 1, 1.0, 2.0, 3.0)]),
            NOW_US,
            Some(Reason::TimestampOutOfRange),
            (1, (max + 1) as u64),
        ),
        case(
            "environment checks packet by packet: an earlier time beats a later value",
            environment(&[(min - 1, 1.0, 2.0, 3.0), (NOW_US, inf, 2.0, 3.0)]),
            NOW_US,
            Some(Reason::TimestampOutOfRange),
            (0, (min - 1) as u64),
        ),
        case(
            "within a packet the value beats the time; humidity before pressure",
            environment(&[(min - 1, 1.0, inf, -inf)]),
            NOW_US,
            Some(Reason::NonFiniteValue),
            (0, u64::from(codecs::Channel::EnvHumidity.wire())),
        ),
        case(
            "temperature named first",
            environment(&[(NOW_US, f32::NAN, 2.0, inf)]),
            NOW_US,
            Some(Reason::NonFiniteValue),
            (0, u64::from(codecs::Channel::EnvTemperature.wire())),
        ),
        case(
            "pressure named when alone",
            environment(&[(NOW_US, 1.0, 2.0, -inf)]),
            NOW_US,
            Some(Reason::NonFiniteValue),
            (0, u64::from(codecs::Channel::EnvPressure.wire())),
        ),
        EdgeCase {
            what: "error frame without a body",
            bytes: error_frame(0),
            direction: Direction::ServerToDevice,
            now_us: NOW_US,
            reason: Some(Reason::CountMismatch),
            detail: (0, 0),
        },
        EdgeCase {
            what: "error frame with two bodies",
            bytes: error_frame(2),
            direction: Direction::ServerToDevice,
            now_us: NOW_US,
            reason: Some(Reason::CountMismatch),
            detail: (40, 40),
        },
        EdgeCase {
            what: "error frame with one body",
            bytes: error_frame(1),
            direction: Direction::ServerToDevice,
            now_us: NOW_US,
            reason: None,
            detail: (0, 0),
        },
    ];
    let checks: Vec<_> = cases
        .iter()
        .map(|c| (c.bytes.clone(), c.direction, LIMITS, c.now_us))
        .collect();
    let results = assert_c_agrees_with_rust(&checks);
    for (case, c) in cases.iter().zip(&results) {
        let what = case.what;
        assert_eq!(
            c.reason,
            case.reason.map_or(0, Reason::wire),
            "{what}: reason"
        );
        assert_eq!((c.expected, c.found), case.detail, "{what}: detail");
    }
}
