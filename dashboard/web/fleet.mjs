// Fleet view: every device with its online status, last seen (ticking) and latest value per
// channel, updated live; a filter box over id, name and tags. Rows are updated in place, at most
// once per animation frame.

const ago = (ms) => {
  if (ms == null) return 'never';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
};

const fmt = (v) => (v == null ? '–' : Math.abs(v) >= 1e5 ? v.toExponential(3) : v.toFixed(2));

export class FleetView {
  constructor(live, api, showError) {
    this.live = live;
    this.api = api;
    this.showError = showError;
    this.devices = new Map(); // id -> {id, name, tags, online, lastSeenMs, latest: Map(ch -> value), row, dirty}
    this.pendingRender = 0;
    this.cleanups = [];
  }

  open(root) {
    root.innerHTML = `
      <section class="fleet">
        <div class="toolbar">
          <input id="filter" type="search" placeholder="Filter by id, name or tag" autocomplete="off">
          <span id="count" class="muted"></span>
        </div>
        <table><thead><tr><th></th><th>Device</th><th>Tags</th><th>Last seen</th><th>Latest values</th></tr></thead>
        <tbody id="rows"></tbody></table>
        <p id="empty" class="muted" hidden>No devices yet: start a device or the simulator (see the README).</p>
      </section>`;
    this.tbody = root.querySelector('#rows');
    this.count = root.querySelector('#count');
    this.empty = root.querySelector('#empty');
    this.filterBox = root.querySelector('#filter');
    const onFilter = () => this.applyFilter();
    this.filterBox.addEventListener('input', onFilter);
    this.cleanups.push(() => this.filterBox.removeEventListener('input', onFilter));
    this.cleanups.push(this.live.listen((m) => this.onLive(m)));
    this.live.subscribe('fleet', '*');
    this.cleanups.push(() => this.live.unsubscribe('fleet'));
    const tick = setInterval(() => this.tick(), 1000);
    this.cleanups.push(() => clearInterval(tick));
    this.reloadTimer = 0;
    this.cleanups.push(() => clearTimeout(this.reloadTimer));
    this.abort = new AbortController();
    this.listed = this.load();
  }

  /** Loads the device list again soon: a burst of gaps costs one request, not one each. */
  reload() {
    if (this.reloadTimer) return;
    this.reloadTimer = setTimeout(() => {
      this.reloadTimer = 0;
      this.listed = this.load();
    }, 1000);
  }

  /** Merges the API's device list (names, tags, last seen); resolves to the listed ids. */
  async load() {
    try {
      const body = await this.api.devices(this.abort.signal);
      for (const d of body.devices ?? []) {
        const dev = this.device(d.id);
        dev.name = d.name ?? dev.name;
        dev.tags = d.tags ?? dev.tags;
        if (dev.onlineAt == null) dev.online = d.online;
        if (d.last_seen_ms != null) dev.lastSeenMs = Math.max(dev.lastSeenMs ?? 0, d.last_seen_ms);
        for (const l of d.latest ?? []) if (!dev.latest.has(l.channel)) dev.latest.set(l.channel, l.value);
        this.touch(dev);
      }
      return (body.devices ?? []).map((d) => d.id);
    } catch (e) {
      if (e.name === 'AbortError') return [];
      if (e.status === 401) this.showError(e);
      // Otherwise the live snapshot still lists every device the server has seen this run.
      else console.warn('device list unavailable:', e.message);
      return [];
    }
  }

  device(id) {
    let d = this.devices.get(id);
    if (!d) {
      d = { id, name: null, tags: [], online: false, onlineAt: null, lastSeenMs: null, latest: new Map(), row: null, dirty: true };
      this.devices.set(id, d);
    }
    return d;
  }

  touch(d) {
    d.dirty = true;
    if (!this.pendingRender) this.pendingRender = requestAnimationFrame(() => this.render());
  }

  onLive(m) {
    if (m.t === 'readings') {
      for (const r of m.readings) {
        const d = this.device(r.device);
        d.latest.set(r.channel, r.value);
        d.lastSeenMs = Math.max(d.lastSeenMs ?? 0, r.ts_us / 1000);
        this.touch(d);
      }
    } else if (m.t === 'event') {
      const e = m.data;
      if (e.type === 'sub_error' && m.key === 'fleet' && e.error === 'not_granted' && !this.narrowed) {
        // A token for some devices only: watch those the API lists instead of every device.
        this.narrowed = true;
        this.listed.then((ids) => ids.length && this.live.subscribe('fleet', ids.slice(0, 10_000)));
      } else if (e.type === 'sub_error') {
        console.warn(`live subscription refused: ${e.error}: ${e.message}`);
      }
      if (e.type === 'snapshot' || e.type === 'presence') {
        for (const s of e.devices) {
          const d = this.device(s.device);
          d.online = s.online;
          d.onlineAt = s.since_us;
          if (s.tags) d.tags = s.tags;
          for (const c of s.channels ?? []) {
            d.latest.set(c.channel, c.value);
            d.lastSeenMs = Math.max(d.lastSeenMs ?? 0, c.ts_us / 1000);
          }
          this.touch(d);
        }
      } else if (e.type === 'online' || e.type === 'offline') {
        const d = this.device(e.device);
        d.online = e.type === 'online';
        d.onlineAt = e.at_us;
        this.touch(d);
      } else if (e.type === 'gap') {
        this.reload(); // latest values may have moved on while we were away
      }
    }
  }

  render() {
    this.pendingRender = 0;
    let added = false;
    for (const d of this.devices.values()) {
      if (!d.dirty) continue;
      d.dirty = false;
      if (!d.row) {
        d.row = document.createElement('tr');
        d.row.dataset.device = d.id;
        d.row.innerHTML = '<td><span class="dot"></span></td><td class="name"><a></a></td><td class="tags"></td><td class="seen"></td><td class="values"></td>';
        d.row.querySelector('a').href = `#/device/${encodeURIComponent(d.id)}`;
        added = true;
      }
      const [dotCell, nameCell, tagCell, seenCell, valCell] = d.row.children;
      dotCell.firstChild.className = d.online ? 'dot on' : 'dot';
      dotCell.title = d.online ? 'online' : 'offline';
      nameCell.firstChild.textContent = d.name ? `${d.name} (${d.id})` : `device ${d.id}`;
      tagCell.textContent = d.tags.join(', ');
      seenCell.textContent = ago(d.lastSeenMs);
      const chans = [...d.latest.keys()].sort((a, b) => a - b);
      valCell.textContent = chans.map((c) => `ch${c} ${fmt(d.latest.get(c))}`).join('  ');
      d.row.dataset.search = `${d.id} ${d.name ?? ''} ${d.tags.join(' ')}`.toLowerCase();
    }
    if (added) {
      const sorted = [...this.devices.values()].sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1));
      this.tbody.replaceChildren(...sorted.map((d) => d.row));
    }
    this.applyFilter();
  }

  applyFilter() {
    const q = this.filterBox.value.trim().toLowerCase();
    let shown = 0;
    for (const d of this.devices.values()) {
      if (!d.row) continue;
      const hit = !q || d.row.dataset.search.includes(q);
      d.row.hidden = !hit;
      if (hit) shown++;
    }
    const online = [...this.devices.values()].filter((d) => d.online).length;
    this.count.textContent = `${shown} of ${this.devices.size} devices · ${online} online`;
    this.empty.hidden = this.devices.size > 0;
  }

  tick() {
    for (const d of this.devices.values()) {
      if (d.row) d.row.children[3].textContent = ago(d.lastSeenMs);
    }
  }

  close() {
    this.abort?.abort();
    for (const c of this.cleanups.splice(0)) c();
    if (this.pendingRender) cancelAnimationFrame(this.pendingRender);
    this.devices.clear();
  }
}
