// Shared helpers for the JS decoder tests (no tests here): the golden manifest and vectors, and
// comparison of decoded values against the manifest's JSON encoding.

import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';

/** codecs/golden/ */
export const GOLDEN_DIR = new URL('../../golden/', import.meta.url);

/** The parsed codecs/golden/vectors.json. */
export const manifest = JSON.parse(readFileSync(new URL('vectors.json', GOLDEN_DIR), 'utf8'));

/** Options that decode a vector exactly as the manifest says it was checked. */
export function optionsFor(vector) {
  return { direction: vector.direction, limits: manifest.limits, nowUs: manifest.now_us };
}

/** The bytes of a golden vector, as a Uint8Array over a fresh ArrayBuffer. */
export function bytesOf(vector) {
  return new Uint8Array(readFileSync(new URL(vector.file, GOLDEN_DIR)));
}

/** Every `.bin` file in codecs/golden/. */
export function goldenBinFiles() {
  return readdirSync(GOLDEN_DIR).filter((f) => f.endsWith('.bin')).sort();
}

/**
 * Asserts that `got` equals the manifest's JSON `want`: u64/i64 as decimal strings (got must be
 * a BigInt), floats as numbers or "NaN"/"Infinity"/"-Infinity" (got must be a Number), other
 * strings, numbers and booleans exactly, arrays element-wise, and objects key by key with no
 * keys beyond `want`'s except those listed in `extraKeys` (path -> allowed names).
 */
export function assertMatches(got, want, path = '$', extraKeys = {}) {
  if (Array.isArray(want)) {
    assert.ok(Array.isArray(got), `${path}: expected an array, got ${typeof got}`);
    assert.equal(got.length, want.length, `${path}: length`);
    want.forEach((w, i) => assertMatches(got[i], w, `${path}[${i}]`, extraKeys));
    return;
  }
  if (want !== null && typeof want === 'object') {
    assert.ok(got !== null && typeof got === 'object', `${path}: expected an object, got ${got}`);
    const allowed = new Set([...Object.keys(want), ...(extraKeys[path.replace(/\[\d+\]/g, '[]')] || [])]);
    for (const k of Object.keys(got)) assert.ok(allowed.has(k), `${path}: unexpected key ${k}`);
    for (const k of Object.keys(want)) {
      assert.ok(k in got, `${path}: missing key ${k}`);
      assertMatches(got[k], want[k], `${path}.${k}`, extraKeys);
    }
    return;
  }
  if (typeof want === 'string' && typeof got === 'bigint') {
    assert.equal(got.toString(), want, `${path}: BigInt value`);
    return;
  }
  if (typeof want === 'string' && typeof got === 'number') {
    assert.ok(['NaN', 'Infinity', '-Infinity'].includes(want), `${path}: ${want} given for a Number ${got}`);
    assert.ok(Object.is(got, Number(want)), `${path}: expected ${want}, got ${got}`);
    return;
  }
  if (typeof want === 'number') {
    assert.equal(typeof got, 'number', `${path}: expected a Number, got ${typeof got} ${String(got)}`);
    assert.ok(Object.is(got, want), `${path}: expected ${want}, got ${got}`);
    return;
  }
  assert.equal(got, want, path);
}

/** Deterministic PRNG (mulberry32); `seed` is printed by failing tests to reproduce them. */
export function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n) => Math.floor(next() * n),
    bytes(n) {
      const b = new Uint8Array(n);
      for (let i = 0; i < n; i++) b[i] = Math.floor(next() * 256);
      return b;
    },
  };
}
