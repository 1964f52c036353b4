// decodeFrame never throws: thousands of random and mutated buffers, in every direction, and
// each result is well formed. Mutations whose outcome is known (a truncated header, an extra
// byte, a flipped payload bit) must give exactly that refusal.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  decodeFrame,
  decodeLive,
  forEachLiveRecord,
  readingsOf,
  crc32c,
  WireError,
  Direction,
  ReasonName,
  Structs,
  MAGIC,
  VERSION,
  FrameType,
} from '../telemux_wire.mjs';
import { manifest, bytesOf, rng } from './support.mjs';

const SEED = Number(process.env.TELEMUX_FUZZ_SEED || 0x7e1e3);
const DIRECTIONS = Object.values(Direction);
const HEADER = Object.fromEntries(Structs.Header.fields.map((f) => [f.name, f.offset]));
const HEADER_SIZE = Structs.Header.size;
const TYPES = Object.values(FrameType);
const OPTS = { limits: manifest.limits, nowUs: manifest.now_us };

function setU16(b, at, v) { b[at] = v & 0xff; b[at + 1] = (v >>> 8) & 0xff; }
function setU32(b, at, v) { new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(at, v, true); }

/** Payload bytes a frame of `type` with `count` records needs (decode.rs). */
function payloadSize(type, count) {
  const size = (name) => Structs[name].size;
  switch (type) {
    case FrameType.TELEMETRY: return size('TelemetryBase') + count * size('Record');
    case FrameType.ENVIRONMENT: return count * size('EnvPacket');
    case FrameType.ERROR: return count * size('ErrorBody');
    case FrameType.LIVE: return count * size('LiveRecord');
    default: return 0;
  }
}

/** Rewrites payload_crc so the later checks are reached. */
function fixCrc(b) {
  if (b.length >= HEADER_SIZE) setU32(b, HEADER.payload_crc, crc32c(b.subarray(HEADER_SIZE)));
}

/** Decodes in every direction, asserting no throw and a well-formed result. */
function decodeAll(bytes, what) {
  const results = [];
  for (const direction of DIRECTIONS) {
    let r;
    try {
      r = decodeFrame(bytes, { direction, ...OPTS });
    } catch (e) {
      assert.fail(`${what} (${direction}): decodeFrame threw ${e && e.stack}`);
    }
    if (r.ok) {
      assert.equal(typeof r.header, 'object');
      assert.equal(typeof r.frame.type, 'string');
      assert.equal(typeof r.header.seq, 'bigint');
      assert.equal(r.header.magic, MAGIC);
      assert.ok(Array.isArray(readingsOf(r.frame)));
    } else {
      assert.equal(r.ok, false);
      assert.equal(ReasonName[r.reasonCode], r.reason, `${what}: reason ${r.reason} / ${r.reasonCode}`);
      assert.equal(typeof r.message, 'string');
      assert.equal(typeof r.expected, 'bigint');
      assert.equal(typeof r.found, 'bigint');
    }
    results.push(r);
  }
  // The fast path agrees with the checked decoder on every buffer.
  const dash = results[DIRECTIONS.indexOf('server_to_dashboard')];
  try {
    const live = decodeLive(bytes);
    assert.ok(dash.ok, `${what}: decodeLive accepted what decodeFrame refused (${dash.reason})`);
    assert.equal(live.count, dash.frame.records.length);
    let n = 0;
    forEachLiveRecord(bytes, () => n++);
    assert.equal(n, live.count);
  } catch (e) {
    if (!(e instanceof WireError)) throw e;
    assert.equal(dash.ok, false, `${what}: decodeLive refused a valid live frame: ${e.message}`);
    assert.equal(e.reason, dash.reason);
  }
  return results;
}

test(`random buffers never make decodeFrame throw (seed ${SEED})`, () => {
  const r = rng(SEED);
  const seen = new Set();
  for (let i = 0; i < 3000; i++) {
    let b;
    if (r.int(3) === 0) {
      // Any bytes at all.
      b = r.bytes(r.int(4) === 0 ? r.int(HEADER_SIZE) : HEADER_SIZE + r.int(200));
    } else {
      // A plausible header over a payload of the size its type and count need (random content),
      // mostly with the right CRC: these get past the frame checks to the per-record ones.
      const type = TYPES[r.int(TYPES.length)];
      const count = r.int(6);
      const b0 = r.bytes(HEADER_SIZE + payloadSize(type, count) + (r.int(8) === 0 ? r.int(3) : 0));
      setU16(b0, HEADER.magic, MAGIC);
      b0[HEADER.version] = r.int(16) === 0 ? r.int(256) : VERSION;
      b0[HEADER.frame_type] = r.int(16) === 0 ? r.int(256) : type;
      setU16(b0, HEADER.flags, r.int(4) === 0 ? r.int(65536) : r.int(4));
      setU16(b0, HEADER.count, count);
      if (r.int(16) === 0) b0.fill(0, HEADER.seq, HEADER.seq + 8);
      if (type === FrameType.TELEMETRY && count > 0 && r.int(4) === 0) {
        // A non-finite value in some record (refused unless raw channel or FAULT).
        const rec = HEADER_SIZE + Structs.TelemetryBase.size + r.int(count) * Structs.Record.size;
        const value = Structs.Record.fields.find((f) => f.name === 'value').offset;
        new DataView(b0.buffer).setFloat64(rec + value, [NaN, Infinity, -Infinity][r.int(3)], true);
      }
      setU32(b0, HEADER.payload_len, r.int(16) === 0 ? r.int(1000) : b0.length - HEADER_SIZE);
      if (r.int(4) !== 0) fixCrc(b0);
      b = b0;
    }
    const len = b.length;
    for (const res of decodeAll(b, `random #${i}`)) seen.add(res.ok ? 'ok' : res.reason);
    if (len < HEADER_SIZE) {
      for (const direction of DIRECTIONS) assert.equal(decodeFrame(b, { direction, ...OPTS }).reason, 'truncated');
    }
  }
  // The generator reaches deep into the checks, not just the first ones.
  for (const reason of ['ok', 'truncated', 'bad_magic', 'unsupported_version', 'unknown_frame_type', 'unexpected_frame_type', 'reserved_flags', 'length_mismatch', 'zero_sequence', 'empty_batch', 'count_mismatch', 'crc_mismatch', 'non_finite_value', 'timestamp_out_of_range']) {
    assert.ok(seen.has(reason), `random inputs never produced ${reason}: ${[...seen]}`);
  }
});

test(`mutated golden frames never make decodeFrame throw (seed ${SEED})`, () => {
  const r = rng(SEED ^ 0x5bd1e995);
  const originals = manifest.vectors.map((v) => ({ v, bytes: bytesOf(v) }));
  const seen = new Set();
  for (let i = 0; i < 4000; i++) {
    const { v, bytes } = originals[r.int(originals.length)];
    let b = bytes.slice();
    const op = r.int(6);
    if (op === 0 && b.length) {
      b[r.int(b.length)] ^= 1 << r.int(8);
    } else if (op === 1 && b.length) {
      for (let k = 1 + r.int(4); k > 0; k--) b[r.int(b.length)] = r.int(256);
      if (r.int(2)) fixCrc(b);
    } else if (op === 2) {
      b = b.slice(0, r.int(b.length + 1));
    } else if (op === 3) {
      const ext = new Uint8Array(b.length + 1 + r.int(40));
      ext.set(b);
      ext.set(r.bytes(ext.length - b.length), b.length);
      b = ext;
      if (r.int(2) && b.length >= HEADER_SIZE) { setU32(b, HEADER.payload_len, b.length - HEADER_SIZE); fixCrc(b); }
    } else if (op === 4 && b.length > HEADER_SIZE) {
      // Payload-only change with a fixed CRC: reaches the per-record checks.
      const at = HEADER_SIZE + r.int(b.length - HEADER_SIZE);
      b[at] = [0xff, 0x7f, 0x80, 0x00, r.int(256)][r.int(5)];
      fixCrc(b);
    } else if (b.length >= HEADER_SIZE) {
      setU16(b, HEADER.count, r.int(70));
      if (r.int(2)) { setU32(b, HEADER.payload_len, b.length - HEADER_SIZE); }
      fixCrc(b);
    }
    for (const res of decodeAll(b, `mutation #${i} of ${v.name} (op ${op})`)) seen.add(res.ok ? 'ok' : res.reason);
  }
  for (const reason of ['ok', 'crc_mismatch', 'count_mismatch', 'length_mismatch', 'non_finite_value', 'timestamp_out_of_range']) {
    assert.ok(seen.has(reason), `mutations never produced ${reason}: ${[...seen]}`);
  }
});

test('mutations with a known outcome give exactly that refusal', () => {
  const r = rng(SEED + 1);
  for (const v of manifest.vectors.filter((x) => x.valid)) {
    const bytes = bytesOf(v);
    const opts = { direction: v.direction, ...OPTS };
    // Any cut inside the header: truncated.
    for (let cut = 0; cut < HEADER_SIZE; cut++) {
      const got = decodeFrame(bytes.subarray(0, cut), opts);
      assert.equal(got.reason, 'truncated', `${v.name} cut at ${cut}`);
      assert.equal(got.found, BigInt(cut));
    }
    // Any cut after the header, or extra bytes: length_mismatch.
    for (let cut = HEADER_SIZE; cut < bytes.length; cut++) {
      assert.equal(decodeFrame(bytes.subarray(0, cut), opts).reason, 'length_mismatch', `${v.name} cut at ${cut}`);
    }
    const longer = new Uint8Array(bytes.length + 1 + r.int(8));
    longer.set(bytes);
    assert.equal(decodeFrame(longer, opts).reason, 'length_mismatch', v.name);
    // Any single flipped payload bit: crc_mismatch (CRC-32C detects every 1-bit error).
    for (let at = HEADER_SIZE; at < bytes.length; at++) {
      const b = bytes.slice();
      b[at] ^= 1 << r.int(8);
      const got = decodeFrame(b, opts);
      assert.equal(got.reason, 'crc_mismatch', `${v.name} bit flip at ${at}`);
      assert.equal(got.expected, BigInt(v.header.payload_crc));
    }
    // The magic's bytes: bad_magic; the version byte: unsupported_version.
    const m = bytes.slice();
    m[HEADER.magic + r.int(2)] ^= 1 + r.int(255);
    assert.equal(decodeFrame(m, opts).reason, 'bad_magic', v.name);
    const ver = bytes.slice();
    ver[HEADER.version] = 2 + r.int(254);
    assert.equal(decodeFrame(ver, opts).reason, 'unsupported_version', v.name);
  }
});
