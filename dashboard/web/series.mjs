// A bounded, time-ordered buffer of one series: a ring of (ts_us, value) in typed arrays. New
// readings append in O(1); a late one (backfill) is inserted in order; a timestamp already held
// is ignored, so replays and overlapping backfills never duplicate a point. When full, the
// oldest point goes: memory per series is fixed.

/** Points kept per series (16 bytes each). */
export const SERIES_CAPACITY = 10_000;

export class Series {
  constructor(capacity = SERIES_CAPACITY) {
    this.cap = capacity;
    this.ts = new Float64Array(capacity);
    this.val = new Float64Array(capacity);
    this.start = 0;
    this.length = 0;
  }

  at(i) {
    return (this.start + i) % this.cap;
  }

  tsAt(i) {
    return this.ts[this.at(i)];
  }

  valAt(i) {
    return this.val[this.at(i)];
  }

  first() {
    return this.length ? this.tsAt(0) : null;
  }

  last() {
    return this.length ? this.tsAt(this.length - 1) : null;
  }

  clear() {
    this.start = 0;
    this.length = 0;
  }

  /** Index of the first point with ts >= `t`. */
  lowerBound(t) {
    let lo = 0;
    let hi = this.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.tsAt(mid) < t) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Adds a point; false if its timestamp is already held or it is older than a full buffer. */
  add(tsUs, value) {
    const v = value == null ? NaN : value;
    if (this.length === 0 || tsUs > this.last()) {
      if (this.length === this.cap) {
        this.start = (this.start + 1) % this.cap;
        this.length--;
      }
      const j = this.at(this.length);
      this.ts[j] = tsUs;
      this.val[j] = v;
      this.length++;
      return true;
    }
    const i = this.lowerBound(tsUs);
    if (i < this.length && this.tsAt(i) === tsUs) return false;
    if (this.length === this.cap) {
      if (i === 0) return false; // older than everything a full buffer holds
      this.start = (this.start + 1) % this.cap; // drop the oldest, insert before index i - 1
      this.length--;
      return this.insertAt(i - 1, tsUs, v);
    }
    return this.insertAt(i, tsUs, v);
  }

  insertAt(i, tsUs, v) {
    for (let k = this.length; k > i; k--) {
      const to = this.at(k);
      const from = this.at(k - 1);
      this.ts[to] = this.ts[from];
      this.val[to] = this.val[from];
    }
    const j = this.at(i);
    this.ts[j] = tsUs;
    this.val[j] = v;
    this.length++;
    return true;
  }

  /** Plain arrays of the timestamps and values (for tests and debugging). */
  toArrays() {
    const ts = new Array(this.length);
    const values = new Array(this.length);
    for (let i = 0; i < this.length; i++) {
      ts[i] = this.tsAt(i);
      values[i] = this.valAt(i);
    }
    return { ts, values };
  }
}
