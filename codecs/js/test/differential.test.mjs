// The JS decoder against the Rust decoder on thousands of mutated frames. The corpus (bytes plus
// the Rust verdict for every direction) is written by codecs/tests/js.rs, which runs this file
// with TELEMUX_JS_DIFF_CORPUS set; run on its own (plain `node --test`), this file is skipped.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { decodeFrame, decodeLive, forEachLiveRecord, readingsOf, WireError, Reason } from '../telemux_wire.mjs';

const CORPUS = process.env.TELEMUX_JS_DIFF_CORPUS;

function fromHex(hex) {
  const b = new Uint8Array(hex.length / 2);
  for (let i = 0; i < b.length; i++) b[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return b;
}

/** A float as the corpus writes it (golden::float). */
function jsonFloat(v) {
  return Number.isNaN(v) ? 'NaN' : v === Infinity ? 'Infinity' : v === -Infinity ? '-Infinity' : v;
}

/** The JS verdict in the corpus's shape. */
function verdict(result) {
  if (!result.ok) {
    return {
      ok: false,
      reason: result.reason,
      reason_code: result.reasonCode,
      expected: result.expected.toString(),
      found: result.found.toString(),
    };
  }
  return {
    ok: true,
    frame_type: result.header.frame_type,
    seq: result.header.seq.toString(),
    readings: readingsOf(result.frame).map((r) => [r.channel, r.quality, r.tsUs.toString(), jsonFloat(r.value)]),
    live: result.frame.type === 'live'
      ? result.frame.records.map((r) => [r.device_id.toString(), r.channel, r.quality, r.ts_us.toString(), jsonFloat(r.value)])
      : [],
  };
}

test('JS decodeFrame gives the Rust decoder\'s verdict on every corpus frame', { skip: !CORPUS && 'TELEMUX_JS_DIFF_CORPUS not set (run by cargo test -p codecs --test js)' }, (t) => {
  const corpus = JSON.parse(readFileSync(CORPUS, 'utf8'));
  assert.ok(corpus.cases.length >= 1000, `corpus too small: ${corpus.cases.length}`);
  const mismatches = [];
  const outcomes = new Map();
  let compared = 0;
  for (const [n, c] of corpus.cases.entries()) {
    const bytes = fromHex(c.hex);
    const preset = corpus.presets[c.preset];
    for (const [direction, want] of Object.entries(c.results)) {
      const got = verdict(decodeFrame(bytes, { direction, limits: preset.limits, nowUs: preset.now_us }));
      compared++;
      const key = want.ok ? 'ok' : want.reason;
      outcomes.set(key, (outcomes.get(key) || 0) + 1);
      try {
        assert.deepStrictEqual(got, want);
      } catch {
        mismatches.push(`case ${n} ${direction} preset ${c.preset} ${c.hex}\n  rust: ${JSON.stringify(want)}\n  js:   ${JSON.stringify(got)}`);
      }
    }
    // The dashboard fast path takes the same decisions.
    const dash = c.results.server_to_dashboard;
    try {
      const live = decodeLive(bytes);
      if (!dash.ok) mismatches.push(`case ${n}: decodeLive accepted a frame Rust refuses (${dash.reason})`);
      else {
        const records = live.records.map((r) => [r.deviceId.toString(), r.channel, r.quality, r.tsUs.toString(), jsonFloat(r.value)]);
        try {
          assert.deepStrictEqual(records, dash.live);
        } catch {
          mismatches.push(`case ${n}: decodeLive records differ: ${JSON.stringify(records)}`);
        }
        // forEachLiveRecord: the same records, ts and (optionally) device id as nearest Numbers.
        for (const deviceIdAsNumber of [false, true]) {
          let i = 0;
          forEachLiveRecord(bytes, (deviceId, channel, quality, tsUs, value) => {
            const [d, ch, q, ts, v] = dash.live[i++];
            const okId = deviceIdAsNumber ? deviceId === Number(BigInt(d)) : deviceId === BigInt(d);
            if (!okId || ch !== channel || q !== quality || tsUs !== Number(BigInt(ts)) || jsonFloat(value) !== v) {
              mismatches.push(`case ${n} record ${i - 1}: forEachLiveRecord gave ${[deviceId, channel, quality, tsUs, value]}`);
            }
          }, { deviceIdAsNumber });
          if (i !== dash.live.length) mismatches.push(`case ${n}: forEachLiveRecord made ${i} calls`);
        }
      }
    } catch (e) {
      if (!(e instanceof WireError)) throw e;
      if (dash.ok || e.reason !== dash.reason) {
        mismatches.push(`case ${n}: decodeLive refused as ${e.reason}, Rust says ${dash.ok ? 'ok' : dash.reason}`);
      }
    }
  }
  t.diagnostic(`${corpus.cases.length} frames, ${compared} verdicts: ${[...outcomes].map(([k, v]) => `${k} ${v}`).join(', ')}`);
  assert.equal(mismatches.length, 0, `${mismatches.length} of ${compared} verdicts differ; first ones:\n${mismatches.slice(0, 10).join('\n')}`);
  // The corpus exercises every decoder outcome, so agreement means something.
  for (const [name, code] of Object.entries(Reason)) {
    if (code >= 32) continue;
    assert.ok(outcomes.has(name.toLowerCase()), `corpus has no ${name.toLowerCase()} case: ${[...outcomes]}`);
  }
  assert.ok((outcomes.get('ok') || 0) >= 100, `too few valid cases: ${outcomes.get('ok')}`);
});
