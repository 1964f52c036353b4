// A small canvas line chart for one series. Draws on requestAnimationFrame only when something
// changed, and never more than two points per pixel column (min and max of the column), so
// thousands of points per series cost a few thousand canvas operations per frame at most.
import { Series } from './series.mjs';

/** Time shown by a live chart, ending at its newest point. */
export const LIVE_WINDOW_US = 5 * 60 * 1e6;
const PAD = { left: 56, right: 12, top: 22, bottom: 22 };

const fmtTime = (us) => new Date(us / 1000).toLocaleTimeString([], { hour12: false });
const fmtValue = (v) => (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(2) : v.toFixed(2));

export class Chart {
  /** @param {HTMLElement} parent  @param {string} title */
  constructor(parent, title) {
    this.series = new Series();
    this.mode = 'live'; // or 'history': fixed [from, to] range of buckets
    this.range = null;
    this.root = document.createElement('figure');
    this.root.className = 'chart';
    this.caption = document.createElement('figcaption');
    this.caption.textContent = title;
    this.canvas = document.createElement('canvas');
    this.root.append(this.caption, this.canvas);
    parent.append(this.root);
    this.ctx = this.canvas.getContext('2d');
    this.dirty = true;
    this.frame = 0;
    this.draws = 0;
    this.drawnPoints = 0;
    this.resize = new ResizeObserver(() => this.invalidate());
    this.resize.observe(this.canvas);
    this.invalidate();
  }

  /** Canvas width in CSS pixels (what history requests aggregate to). */
  get width() {
    return Math.max(100, Math.round(this.canvas.clientWidth || 600) - PAD.left - PAD.right);
  }

  add(tsUs, value) {
    if (this.series.add(tsUs, value)) this.invalidate();
  }

  /** History mode: the series becomes the buckets of [fromUs, toUs]. */
  showHistory(points, fromUs, toUs) {
    this.mode = 'history';
    this.range = [fromUs, toUs];
    this.series.clear();
    for (const [t, v] of points) this.series.add(t, v);
    this.invalidate();
  }

  showLive() {
    this.mode = 'live';
    this.range = null;
    this.series.clear();
    this.invalidate();
  }

  invalidate() {
    this.dirty = true;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.frame = 0;
    if (!this.dirty) return;
    this.dirty = false;
    this.draws++;
    const dpr = devicePixelRatio || 1;
    const cssW = this.canvas.clientWidth || 600;
    const cssH = this.canvas.clientHeight || 180;
    if (this.canvas.width !== Math.round(cssW * dpr) || this.canvas.height !== Math.round(cssH * dpr)) {
      this.canvas.width = Math.round(cssW * dpr);
      this.canvas.height = Math.round(cssH * dpr);
    }
    const ctx = this.ctx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    const s = this.series;
    const w = cssW - PAD.left - PAD.right;
    const h = cssH - PAD.top - PAD.bottom;
    const color = (name, fallback) => getComputedStyle(this.root).getPropertyValue(name).trim() || fallback;
    this.colors ??= { muted: color('--muted', '#888'), grid: color('--grid', '#ddd'), line: color('--line', '#2a6fdb') };
    ctx.font = '11px system-ui, sans-serif';
    ctx.fillStyle = this.colors.muted;
    if (!s.length) {
      ctx.fillText(this.mode === 'live' ? 'waiting for readings…' : 'no data in this range', PAD.left, PAD.top + h / 2);
      this.drawnPoints = 0;
      return;
    }
    const [x0, x1] = this.range ?? [Math.max(s.first(), s.last() - LIVE_WINDOW_US), s.last()];
    const span = Math.max(1, x1 - x0);
    const from = s.lowerBound(x0);
    // Column min/max over the visible points: the decimation to screen width.
    const cols = Math.max(1, Math.floor(w));
    const mins = new Float64Array(cols).fill(Infinity);
    const maxs = new Float64Array(cols).fill(-Infinity);
    let lo = Infinity;
    let hi = -Infinity;
    let n = 0;
    for (let i = from; i < s.length; i++) {
      const t = s.tsAt(i);
      if (t > x1) break;
      const v = s.valAt(i);
      if (!Number.isFinite(v)) continue;
      const c = Math.min(cols - 1, Math.floor(((t - x0) / span) * cols));
      if (v < mins[c]) mins[c] = v;
      if (v > maxs[c]) maxs[c] = v;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
      n++;
    }
    this.drawnPoints = n;
    if (!n) return;
    if (hi === lo) {
      hi += 1;
      lo -= 1;
    }
    const pad = (hi - lo) * 0.08;
    lo -= pad;
    hi += pad;
    const y = (v) => PAD.top + h - ((v - lo) / (hi - lo)) * h;
    // Grid and labels.
    ctx.strokeStyle = this.colors.grid;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let k = 0; k <= 4; k++) {
      const gy = Math.round(PAD.top + (h * k) / 4) + 0.5;
      ctx.moveTo(PAD.left, gy);
      ctx.lineTo(PAD.left + w, gy);
      ctx.fillText(fmtValue(hi - ((hi - lo) * k) / 4), 4, gy + 4);
    }
    ctx.stroke();
    ctx.fillText(fmtTime(x0), PAD.left, cssH - 6);
    const right = fmtTime(x1);
    ctx.fillText(right, PAD.left + w - ctx.measureText(right).width, cssH - 6);
    // The line: through each column's min and max, broken where the data has a gap (empty
    // columns for much longer than the average spacing: the device was silent).
    ctx.strokeStyle = this.colors.line;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    const maxGap = Math.max(3, (5 * cols) / n);
    let prev = -Infinity;
    for (let c = 0; c < cols; c++) {
      if (mins[c] === Infinity) continue;
      const x = PAD.left + c + 0.5;
      if (c - prev > maxGap) ctx.moveTo(x, y(mins[c]));
      else ctx.lineTo(x, y(mins[c]));
      if (maxs[c] !== mins[c]) ctx.lineTo(x, y(maxs[c]));
      else if (c - prev > maxGap) ctx.lineTo(x + 0.5, y(mins[c])); // a lone point stays visible
      prev = c;
    }
    ctx.stroke();
  }

  /** Removes the chart: no frame pending, no observer left. */
  destroy() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.resize.disconnect();
    this.root.remove();
  }
}
