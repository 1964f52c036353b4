// The dashboard fast path (decodeLive, forEachLiveRecord) on the golden live vectors.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { decodeLive, forEachLiveRecord, decodeFrame, WireError, FrameFlag, Reason } from '../telemux_wire.mjs';
import { manifest, bytesOf, optionsFor, assertMatches } from './support.mjs';

const live = manifest.vectors.filter((v) => v.direction === 'server_to_dashboard');
const validLive = live.filter((v) => v.valid);
const byName = Object.fromEntries(manifest.vectors.map((v) => [v.name, v]));

test('there are valid and invalid live vectors, and one is coalesced', () => {
  assert.ok(validLive.length >= 2);
  assert.ok(live.some((v) => !v.valid));
  assert.ok(validLive.some((v) => v.header.flags & FrameFlag.COALESCED));
});

for (const v of validLive) {
  test(`decodeLive ${v.name}`, () => {
    const got = decodeLive(bytesOf(v));
    assertMatches(got.position, v.frame.position, '$.position');
    assert.equal(got.coalesced, (v.header.flags & FrameFlag.COALESCED) !== 0);
    assert.equal(got.count, v.header.count);
    assertMatches(
      got.records.map((r) => ({ device_id: r.deviceId, channel: r.channel, quality: r.quality, ts_us: r.tsUs, value: r.value })),
      v.frame.records,
      '$.records',
    );
    // Same records as the checked decoder.
    const full = decodeFrame(bytesOf(v), optionsFor(v));
    assert.equal(full.ok, true);
    assert.equal(full.frame.position, got.position);
    assert.equal(full.frame.coalesced, got.coalesced);
  });

  test(`forEachLiveRecord ${v.name} (BigInt and Number device ids)`, () => {
    for (const deviceIdAsNumber of [false, true]) {
      const seen = [];
      const summary = forEachLiveRecord(
        bytesOf(v),
        (deviceId, channel, quality, tsUs, value) => seen.push({ deviceId, channel, quality, tsUs, value }),
        { deviceIdAsNumber },
      );
      assertMatches(summary.position, v.frame.position, '$.position');
      assert.equal(summary.coalesced, (v.header.flags & FrameFlag.COALESCED) !== 0);
      assert.equal(summary.count, v.frame.records.length);
      assert.equal(seen.length, v.frame.records.length);
      seen.forEach((r, i) => {
        const want = v.frame.records[i];
        if (deviceIdAsNumber) {
          assert.equal(typeof r.deviceId, 'number');
          assert.equal(r.deviceId, Number(BigInt(want.device_id)));
        } else {
          assert.equal(r.deviceId, BigInt(want.device_id));
        }
        assert.equal(typeof r.tsUs, 'number');
        assert.equal(r.tsUs, Number(want.ts_us));
        assert.ok(Number.isSafeInteger(r.tsUs));
        assert.equal(r.channel, want.channel);
        assert.equal(r.quality, want.quality);
        assertMatches(r.value, want.value, `$.records[${i}].value`);
      });
    }
  });
}

test('the near-u64::MAX device id survives as a BigInt and rounds like Number(BigInt) otherwise', () => {
  const v = byName.live_three_records;
  const ids = [];
  forEachLiveRecord(bytesOf(v), (id) => ids.push(id));
  assert.equal(ids[2], 18446744073709551614n);
  const nums = [];
  forEachLiveRecord(bytesOf(v), (id) => nums.push(id), { deviceIdAsNumber: true });
  assert.equal(nums[2], Number(18446744073709551614n));
});

test('decodeLive and forEachLiveRecord refuse bad frames with a WireError, before any callback', () => {
  const cases = [
    ['live_count_mismatch', 'count_mismatch'],
    ['telemetry_three_records', 'unexpected_frame_type'],
    ['ack', 'unexpected_frame_type'],
    ['truncated', 'truncated'],
    ['bad_magic', 'bad_magic'],
  ];
  for (const [name, reason] of cases) {
    const bytes = bytesOf(byName[name]);
    for (const call of [() => decodeLive(bytes), () => forEachLiveRecord(bytes, () => assert.fail('callback on a refused frame'))]) {
      assert.throws(call, (e) => {
        assert.ok(e instanceof WireError, `${name}: ${e}`);
        assert.ok(e instanceof Error);
        assert.equal(e.reason, reason, name);
        assert.equal(e.reasonCode, Reason[reason.toUpperCase()]);
        assert.match(e.message, new RegExp(reason));
        return true;
      });
    }
  }
});

test('a live frame with a corrupted payload is refused as crc_mismatch', () => {
  for (const v of validLive) {
    const bytes = bytesOf(v);
    bytes[bytes.length - 5] ^= 0x40;
    assert.throws(() => decodeLive(bytes), (e) => e instanceof WireError && e.reason === 'crc_mismatch');
    let called = 0;
    assert.throws(() => forEachLiveRecord(bytes, () => called++), WireError);
    assert.equal(called, 0);
  }
});

test('misuse throws TypeError', () => {
  assert.throws(() => decodeLive(null), TypeError);
  assert.throws(() => forEachLiveRecord(bytesOf(validLive[0])), TypeError);
});
