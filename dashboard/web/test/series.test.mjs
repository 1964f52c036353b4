// The chart's ring buffer: ordered, bounded, and never holding a timestamp twice.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Series } from '../series.mjs';

test('appends in order and ignores a timestamp already held', () => {
  const s = new Series(8);
  for (const t of [1, 2, 3]) assert.equal(s.add(t, t * 10), true);
  assert.equal(s.add(2, 99), false, 'a replayed reading is not added again');
  assert.deepEqual(s.toArrays(), { ts: [1, 2, 3], values: [10, 20, 30] });
});

test('a late reading (backfill) is inserted in order', () => {
  const s = new Series(8);
  for (const t of [10, 20, 40]) s.add(t, t);
  assert.equal(s.add(30, 30), true);
  assert.equal(s.add(5, 5), true);
  assert.deepEqual(s.toArrays().ts, [5, 10, 20, 30, 40]);
  assert.equal(s.lowerBound(25), 3);
});

test('a full buffer drops its oldest point and refuses points older than all it holds', () => {
  const s = new Series(4);
  for (let t = 1; t <= 10; t++) s.add(t, t);
  assert.equal(s.length, 4);
  assert.deepEqual(s.toArrays().ts, [7, 8, 9, 10]);
  assert.equal(s.add(3, 3), false, 'older than everything held');
  assert.equal(s.add(8.5, 8.5), true, 'a late point inside the range evicts the oldest');
  assert.deepEqual(s.toArrays().ts, [8, 8.5, 9, 10]);
  s.clear();
  assert.equal(s.length, 0);
  assert.equal(s.last(), null);
});

test('wraps around the ring many times and stays ordered', () => {
  const s = new Series(100);
  for (let t = 0; t < 10_000; t += 2) s.add(t, t);
  for (let t = 9_801; t < 10_000; t += 20) s.add(t, t); // late odd ones inside the window
  const { ts } = s.toArrays();
  assert.equal(ts.length, 100);
  for (let i = 1; i < ts.length; i++) assert.ok(ts[i] > ts[i - 1], `ordered at ${i}`);
  assert.equal(ts[ts.length - 1], 9_998);
});
