// Device view (#/device/<id>): one live chart per channel; a range picker switches the charts to
// aggregated history from the API (one bucket per pixel column) and back to live. In live mode a
// `gap` from the server is backfilled with the raw readings of the missing time range.
import { Chart, LIVE_WINDOW_US } from './chart.mjs';

const RANGES = { '15m': 15 * 60e3, '1h': 3600e3, '24h': 24 * 3600e3 };

export class DeviceView {
  constructor(id, live, api, showError) {
    this.id = id;
    this.live = live;
    this.api = api;
    this.showError = showError;
    this.charts = new Map(); // channel -> Chart
    this.cleanups = [];
    this.mode = 'live';
    this.backfills = 0;
  }

  open(root) {
    root.innerHTML = `
      <section class="device">
        <div class="toolbar">
          <a href="#/">← Fleet</a>
          <h2><span class="dot" id="online"></span> <span id="title"></span></h2>
          <label>Range
            <select id="range">
              <option value="live">Live</option><option value="15m">Last 15 min</option>
              <option value="1h">Last hour</option><option value="24h">Last 24 h</option>
              <option value="custom">Custom…</option>
            </select></label>
          <span id="custom" hidden>
            <input type="datetime-local" id="from" step="1"> – <input type="datetime-local" id="to" step="1">
            <button id="apply">Show</button></span>
          <span id="mode" class="muted"></span>
        </div>
        <div id="charts" class="charts"></div>
        <p id="none" class="muted">Waiting for this device's readings…</p>
      </section>`;
    this.el = {
      title: root.querySelector('#title'), online: root.querySelector('#online'),
      range: root.querySelector('#range'), custom: root.querySelector('#custom'),
      from: root.querySelector('#from'), to: root.querySelector('#to'),
      apply: root.querySelector('#apply'), mode: root.querySelector('#mode'),
      charts: root.querySelector('#charts'), none: root.querySelector('#none'),
    };
    this.el.title.textContent = `device ${this.id}`;
    this.on(this.el.range, 'change', () => this.pickRange());
    this.on(this.el.apply, 'click', () => this.showCustom());
    this.cleanups.push(this.live.listen((m) => this.onLive(m)));
    this.cleanups.push(() => this.live.unsubscribe('device'));
    this.abort = new AbortController();
    this.info = this.loadInfo();
    this.goLive();
  }

  on(el, ev, fn) {
    el.addEventListener(ev, fn);
    this.cleanups.push(() => el.removeEventListener(ev, fn));
  }

  /** Name, online status and the channels the device has stored (the charts to show). */
  async loadInfo() {
    try {
      const d = await this.api.get(`/v1/devices/${encodeURIComponent(this.id)}`, {}, { signal: this.abort.signal });
      if (d.name) this.el.title.textContent = `${d.name} (${this.id})`;
      this.setOnline(d.online);
      for (const l of d.latest ?? []) this.chart(l.channel);
    } catch (e) {
      if (e.status === 401) this.showError(e);
    }
  }

  /** The channels to query: those charted, else those the device info lists. */
  async channels() {
    if (!this.charts.size) await this.info;
    return [...this.charts.keys()];
  }

  setOnline(online) {
    this.el.online.className = online ? 'dot on' : 'dot';
    this.el.online.title = online ? 'online' : 'offline';
  }

  chart(channel) {
    let c = this.charts.get(channel);
    if (!c) {
      c = new Chart(this.el.charts, `channel ${channel}`);
      c.root.dataset.channel = channel;
      this.charts.set(channel, c);
      // Keep charts in channel order.
      const sorted = [...this.charts.entries()].sort((a, b) => a[0] - b[0]).map(([, ch]) => ch.root);
      this.el.charts.replaceChildren(...sorted);
      this.el.none.hidden = true;
    }
    return c;
  }

  goLive() {
    this.mode = 'live';
    this.el.mode.textContent = 'live';
    for (const c of this.charts.values()) c.showLive();
    this.live.subscribe('device', [this.id]);
    const now = Date.now();
    this.backfill((now * 1000 - LIVE_WINDOW_US) / 1000, now);
  }

  onLive(m) {
    if (this.mode !== 'live') return;
    if (m.t === 'readings') {
      for (const r of m.readings) {
        if (r.device === this.id) this.chart(r.channel).add(r.ts_us, r.value);
      }
      return;
    }
    if (m.t !== 'event') return;
    const e = m.data;
    if (e.type === 'snapshot') {
      for (const d of e.devices) {
        if (d.device !== this.id) continue;
        this.setOnline(d.online);
        for (const c of d.channels ?? []) this.chart(c.channel).add(c.ts_us, c.value);
      }
    } else if ((e.type === 'online' || e.type === 'offline') && e.device === this.id) {
      this.setOnline(e.type === 'online');
    } else if (e.type === 'gap' || e.type === 'coalesced') {
      // Readings the live stream will not deliver (a gap, or older values the server coalesced
      // away while this client was behind): fetch them from storage.
      const lasts = [...this.charts.values()].map((c) => c.series.last()).filter((t) => t != null);
      const fromUs = e.from_ts_us ?? (lasts.length ? Math.min(...lasts) : Date.now() * 1000 - LIVE_WINDOW_US);
      const toUs = e.to_ts_us ?? Date.now() * 1000;
      this.backfill(fromUs / 1000, toUs / 1000 + 1);
    }
  }

  /** Raw readings of [fromMs, toMs] merged into the live charts (duplicates are ignored). */
  async backfill(fromMs, toMs) {
    try {
      const channels = await this.channels();
      if (!channels.length) return; // nothing stored yet: nothing to fill in
      const byChannel = await this.api.points(this.id, channels, fromMs, toMs, { signal: this.abort.signal });
      if (this.mode !== 'live') return;
      for (const [ch, points] of byChannel) {
        const c = this.chart(ch);
        for (const p of points) c.add(p.ts_us, p.value);
      }
      this.backfills++;
    } catch (e) {
      if (e.name === 'AbortError') return;
      if (e.status === 401) this.showError(e);
      else console.warn('backfill failed:', e.message);
    }
  }

  pickRange() {
    const v = this.el.range.value;
    this.el.custom.hidden = v !== 'custom';
    if (v === 'live') return this.goLive();
    if (v === 'custom') {
      const now = Date.now();
      const local = (ms) => new Date(ms - new Date().getTimezoneOffset() * 60e3).toISOString().slice(0, 19);
      if (!this.el.from.value) this.el.from.value = local(now - 3600e3);
      if (!this.el.to.value) this.el.to.value = local(now);
      return;
    }
    const now = Date.now();
    this.showHistory(now - RANGES[v], now);
  }

  showCustom() {
    const from = new Date(this.el.from.value).getTime();
    const to = new Date(this.el.to.value).getTime();
    if (!(from < to)) {
      this.el.mode.textContent = 'custom range: "from" must be before "to"';
      return;
    }
    this.showHistory(from, to);
  }

  /** Aggregated history of [fromMs, toMs], one bucket per pixel column of the charts. */
  async showHistory(fromMs, toMs) {
    this.mode = 'history';
    this.live.unsubscribe('device');
    const width = this.charts.values().next().value?.width ?? 600;
    const step = Math.max(1, Math.ceil((toMs - fromMs) / width));
    this.el.mode.textContent = `history · ${new Date(fromMs).toLocaleString()} – ${new Date(toMs).toLocaleString()} · step ${step} ms`;
    try {
      const channels = await this.channels();
      if (!channels.length) {
        this.el.mode.textContent = 'history: this device has no stored readings';
        return;
      }
      const body = await this.api.buckets(this.id, channels, fromMs, toMs, step, 'avg', this.abort.signal);
      if (this.mode !== 'history') return;
      const seen = new Set();
      for (const s of body.series ?? []) {
        seen.add(s.channel);
        const pts = s.buckets.map((b) => [b.start_ms * 1000, b.value]);
        this.chart(s.channel).showHistory(pts, fromMs * 1000, toMs * 1000);
      }
      for (const [ch, c] of this.charts) if (!seen.has(ch)) c.showHistory([], fromMs * 1000, toMs * 1000);
    } catch (e) {
      if (e.name === 'AbortError') return;
      if (e.status === 401) this.showError(e);
      this.el.mode.textContent = `history unavailable: ${e.message}`;
    }
  }

  close() {
    this.abort.abort();
    for (const c of this.cleanups.splice(0)) c();
    for (const c of this.charts.values()) c.destroy();
    this.charts.clear();
  }
}
