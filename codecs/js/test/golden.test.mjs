// Every golden vector (codecs/golden/) decodes in JS exactly as the manifest, written from the
// Rust encoder's inputs and checked against the Rust decoder, says it must.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';

import {
  decodeFrame,
  readingsOf,
  crc32c,
  Direction,
  Reason,
  ReasonName,
  FrameFlag,
  Structs,
} from '../telemux_wire.mjs';
import { manifest, optionsFor, bytesOf, goldenBinFiles, assertMatches } from './support.mjs';

/** Keys decodeFrame adds beyond the manifest's (checked separately below). */
const EXTRAS = { error: ['reserved'], live: ['coalesced'] };

test('the manifest lists every golden .bin file, and each once', () => {
  const listed = manifest.vectors.map((v) => v.file).sort();
  assert.deepEqual(listed, goldenBinFiles());
  assert.equal(new Set(listed).size, listed.length);
  assert.ok(manifest.vectors.length >= 20, 'expected a full set of vectors');
});

test('every decoder reason code (1..=14) has an invalid golden vector', () => {
  const seen = new Set(manifest.vectors.filter((v) => !v.valid).map((v) => v.reason_code));
  for (const [name, code] of Object.entries(Reason)) {
    if (code >= 32) continue; // server-side refusals, not decided by the decoder
    assert.ok(seen.has(code), `no invalid vector for ${name}`);
  }
});

test('crc32c: standard check value and empty input', () => {
  assert.equal(crc32c(new TextEncoder().encode('123456789')), 0xe3069283);
  assert.equal(crc32c(new Uint8Array(0)), 0);
  assert.equal(crc32c(new Uint8Array(32)), 0x8a9136aa);
});

for (const v of manifest.vectors) {
  test(`golden ${v.name}: ${v.valid ? 'decodes as expected' : `refused as ${v.reason}`}`, () => {
    const bytes = bytesOf(v);
    const got = decodeFrame(bytes, optionsFor(v));
    if (!v.valid) {
      assert.equal(got.ok, false, `expected refusal ${v.reason}, got a ${got.frame?.type} frame`);
      assert.equal(got.reason, v.reason);
      assert.equal(got.reasonCode, v.reason_code);
      assert.equal(ReasonName[got.reasonCode], got.reason);
      assert.equal(typeof got.message, 'string');
      assert.ok(got.message.length > 10, `message: ${got.message}`);
      assert.equal(typeof got.expected, 'bigint');
      assert.equal(typeof got.found, 'bigint');
      return;
    }
    assert.equal(got.ok, true, `expected a valid frame, got ${got.reason}: ${got.message}`);
    assertMatches(got.header, v.header, '$.header');
    assertMatches(got.frame, v.frame, '$.frame', { '$.frame': EXTRAS[v.frame.type] || [] });
    if (v.frame.type === 'error') assert.equal(got.frame.reserved, 0);
    if (v.frame.type === 'live') {
      assert.equal(got.frame.coalesced, (v.header.flags & FrameFlag.COALESCED) !== 0);
    }
    const readings = readingsOf(got.frame);
    if (v.readings) {
      assertMatches(
        readings.map((r) => ({ channel: r.channel, quality: r.quality, ts_us: r.tsUs, value: r.value })),
        v.readings,
        '$.readings',
      );
      for (const r of readings) assert.equal(typeof r.tsUs, 'bigint');
    } else {
      assert.deepEqual(readings, [], 'only device frames have readings');
    }
    // The header's CRC is the CRC of the payload.
    assert.equal(crc32c(bytes.subarray(Structs.Header.size)), v.header.payload_crc);
  });
}

test('valid golden frames are refused as unexpected_frame_type in the other directions', () => {
  let checked = 0;
  for (const v of manifest.vectors.filter((x) => x.valid)) {
    for (const direction of Object.values(Direction)) {
      if (direction === v.direction) continue;
      const got = decodeFrame(bytesOf(v), { ...optionsFor(v), direction });
      assert.equal(got.ok, false, `${v.name} accepted as ${direction}`);
      assert.equal(got.reason, 'unexpected_frame_type', v.name);
      assert.equal(got.found, BigInt(v.header.frame_type));
      checked++;
    }
  }
  assert.ok(checked >= 20);
});

test('every byte source and any alignment give the same result', () => {
  for (const v of manifest.vectors) {
    const bytes = bytesOf(v);
    const want = decodeFrame(bytes, optionsFor(v));
    const padded = new Uint8Array(bytes.length + 7);
    padded.set(bytes, 3);
    const sources = [
      bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength),
      padded.subarray(3, 3 + bytes.length),
      new DataView(padded.buffer, 3, bytes.length),
      Buffer.from(bytes),
    ];
    for (const src of sources) {
      assert.deepEqual(decodeFrame(src, optionsFor(v)), want, `${v.name} via ${src.constructor.name}`);
    }
  }
});

test('refusal details match decode.rs (expected/found pairs and first-offender indices)', () => {
  const byName = Object.fromEntries(manifest.vectors.map((v) => [v.name, v]));
  const run = (name) => decodeFrame(bytesOf(byName[name]), optionsFor(byName[name]));
  assert.deepEqual(pick(run('truncated')), [32n, 20n]);
  assert.deepEqual(pick(run('bad_magic')), [0x4d54n, 0x4d58n]);
  assert.deepEqual(pick(run('unsupported_version')), [1n, 2n]);
  assert.deepEqual(pick(run('unknown_frame_type')), [0n, 3n]);
  assert.deepEqual(pick(run('unexpected_frame_type')), [0n, 0x81n]);
  assert.deepEqual(pick(run('reserved_flags')), [1n, 0x8000n]);
  assert.deepEqual(pick(run('length_mismatch')), [32n + 56n, 32n + 56n + 1n]);
  assert.deepEqual(pick(run('zero_sequence')), [1n, 0n]);
  assert.deepEqual(pick(run('empty_batch')), [0n, 0n]);
  assert.deepEqual(pick(run('too_many_records')), [64n, 65n]);
  assert.deepEqual(pick(run('count_mismatch')), [8n + 2n * 16n, 56n]);
  // non_finite_value: record 1 (channel 2) is NaN; environment: packet 1 humidity is +inf.
  assert.deepEqual(pick(run('non_finite_value')), [1n, 2n]);
  assert.deepEqual(pick(run('environment_non_finite_value')), [1n, 0xe001n]);
  // timestamp_too_new: record 1 is max_future_us + 1 after now.
  const nowUs = BigInt(manifest.now_us);
  const future = BigInt(manifest.limits.max_future_us);
  assert.deepEqual(pick(run('timestamp_too_new')), [1n, nowUs + future + 1n]);
  assert.deepEqual(pick(run('timestamp_too_old')), [0n, nowUs - BigInt(manifest.limits.max_past_us) - 1n]);
  const crc = run('crc_mismatch');
  assert.equal(crc.expected, BigInt(byName.telemetry_three_records.header.payload_crc));
  assert.notEqual(crc.found, crc.expected);
});

function pick(result) {
  assert.equal(result.ok, false);
  return [result.expected, result.found];
}

test('decodeFrame rejects misuse with a TypeError, not a refusal', () => {
  const bytes = bytesOf(manifest.vectors[0]);
  assert.throws(() => decodeFrame(bytes, { direction: 'sideways' }), TypeError);
  assert.throws(() => decodeFrame(bytes), TypeError);
  assert.throws(() => decodeFrame('not bytes', { direction: 'device_to_server' }), TypeError);
  assert.throws(() => decodeFrame(bytes, { direction: 'device_to_server', nowUs: 1.5 }), TypeError);
  assert.throws(() => decodeFrame(bytes, { direction: 'device_to_server', limits: { maxRecords: 70000 } }), TypeError);
});

test('limits and nowUs are honoured (camelCase, snake_case, BigInt, Number, string)', () => {
  const v = manifest.vectors.find((x) => x.name === 'telemetry_sixteen_records');
  const bytes = bytesOf(v);
  const nowUs = BigInt(manifest.now_us);
  assert.equal(decodeFrame(bytes, { direction: v.direction, nowUs, limits: { maxRecords: 16 } }).ok, true);
  const tooMany = decodeFrame(bytes, { direction: v.direction, nowUs, limits: { max_records: 15 } });
  assert.equal(tooMany.reason, 'too_many_records');
  assert.equal(tooMany.expected, 15n);
  // Readings are 1 s before now; a 0.5 s past window refuses record 0.
  const old = decodeFrame(bytes, { direction: v.direction, nowUs: Number(nowUs), limits: { maxPastUs: 500000 } });
  assert.equal(old.reason, 'timestamp_out_of_range');
  assert.equal(old.expected, 0n);
  // Record i is at base + i ms; with max_future 0 and now = base + 7.5 ms, record 8 is the first too new.
  const base = BigInt(v.frame.base_ts_us);
  const early = decodeFrame(bytes, { direction: v.direction, nowUs: String(base + 7500n), limits: { maxFutureUs: 0n } });
  assert.equal(early.reason, 'timestamp_out_of_range');
  assert.equal(early.expected, 8n);
  assert.equal(early.found, base + 8000n);
  // Default limits and clock: readings from 2026-01-01 are accepted until 2026-01-31.
  const defaults = decodeFrame(bytes, { direction: v.direction });
  const inWindow = BigInt(Date.now()) * 1000n - base < 30n * 24n * 3600n * 1000000n;
  assert.equal(defaults.ok, inWindow, defaults.message);
});
