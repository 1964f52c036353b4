// Reconnect delays: exponential with full jitter, capped (the random source is injected, no clock).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, BACKOFF_BASE_MS, BACKOFF_CAP_MS } from '../connection.mjs';

test('full jitter: anywhere from 0 up to the exponential bound', () => {
  for (let attempt = 0; attempt < 5; attempt++) {
    const bound = BACKOFF_BASE_MS * 2 ** attempt;
    assert.equal(backoffDelay(attempt, () => 0), 0);
    assert.equal(backoffDelay(attempt, () => 0.5), Math.floor(bound / 2));
    assert.ok(backoffDelay(attempt, () => 0.999999) < bound);
  }
});

test('the bound stops growing at the cap', () => {
  assert.ok(backoffDelay(30, () => 0.999999) < BACKOFF_CAP_MS);
  assert.equal(backoffDelay(30, () => 0.5), BACKOFF_CAP_MS / 2);
  assert.equal(backoffDelay(1000, () => 0.5), BACKOFF_CAP_MS / 2, 'no overflow for huge attempts');
});
