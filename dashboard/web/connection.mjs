// The one live connection to /v1/live (JSON subprotocol), shared by every view of every tab that
// talks to it (see worker.mjs). It reconnects by itself with exponential backoff and full
// jitter, resumes from the last stream position so nothing is duplicated or skipped, and
// re-creates the subscriptions of its clients. Runs in a SharedWorker or in the page.
//
// Clients are objects { post(msg) }. Messages from clients:
//   {t:'sub', key, devices: '*' | [ids]}   {t:'unsub', key}
// Messages to clients:
//   {t:'status', state, retryInMs?, code?, message?}   state: connecting|live|reconnecting|offline|auth
//   {t:'event', key?, data}   a server event (snapshot: only to the subscribing client, with key)
//   {t:'readings', position, readings}   only the readings of devices the client watches

/** Backoff: first retry within BASE, doubling up to CAP; reset after STABLE_AFTER connected. */
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 30_000;
export const STABLE_AFTER_MS = 10_000;
/** Client heartbeat: a ping every PING_EVERY; no reply within PING_TIMEOUT means a dead socket. */
const PING_EVERY_MS = 20_000;
const PING_TIMEOUT_MS = 10_000;
/** Close codes after which retrying with the same token cannot succeed. */
const AUTH_CLOSES = new Map([[4003, 'token expired'], [1008, 'token revoked']]);

/** Full jitter: a uniform delay in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt, rand = Math.random) {
  return Math.floor(rand() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt));
}

/** Position strings exceed 2^53: compare them as BigInt. */
const later = (a, b) => b == null || BigInt(a) > BigInt(b);

export class Connection {
  /** @param {string} base ws://host:port of the server */
  constructor(base) {
    this.base = base;
    this.token = null;
    this.ws = null;
    this.attempt = 0;
    this.position = null; // last stream position received (string)
    this.subs = new Map(); // "clientId/key" -> {client, key, devices, serverSub}
    this.bySub = new Map(); // server sub id -> subs entry
    this.clients = new Map(); // client -> {id, all, ids:Set}
    this.nextClient = 1;
    this.nextReq = 1;
    this.pending = new Map(); // request id -> entry to bind on reply
    this.status = { t: 'status', state: 'connecting' };
    this.timers = new Set();
    this.openedAt = 0;
    this.closed = false;
  }

  /** A client joins: it gets the current status at once. */
  attach(client) {
    this.clients.set(client, { id: this.nextClient++, all: false, ids: new Set() });
    client.post(this.status);
  }

  /** A client leaves: its subscriptions go; with no client left the socket closes. */
  detach(client) {
    for (const [k, s] of this.subs) if (s.client === client) this.unsubscribe(k);
    this.clients.delete(client);
    if (this.clients.size === 0) this.close();
  }

  /** A (new) token: reconnect with it now if the old one was refused or the socket is down. */
  setToken(token) {
    const changed = token !== this.token;
    this.token = token;
    if (this.closed) return;
    if (!this.ws || (changed && this.status.state !== 'live')) this.reconnectNow();
  }

  handle(client, m) {
    const c = this.clients.get(client);
    if (!c) return;
    if (m.t === 'sub') {
      const k = `${c.id}/${m.key}`;
      if (this.subs.has(k)) this.unsubscribe(k);
      const entry = { client, key: m.key, devices: m.devices, serverSub: null };
      this.subs.set(k, entry);
      this.recomputeInterest(client);
      this.sendSubscribe(entry);
    } else if (m.t === 'unsub') {
      this.unsubscribe(`${c.id}/${m.key}`);
    }
  }

  unsubscribe(k) {
    const s = this.subs.get(k);
    if (!s) return;
    this.subs.delete(k);
    if (s.serverSub != null) {
      this.bySub.delete(s.serverSub);
      this.send({ op: 'unsubscribe', sub: s.serverSub });
    }
    this.recomputeInterest(s.client);
  }

  recomputeInterest(client) {
    const c = this.clients.get(client);
    if (!c) return;
    c.all = false;
    c.ids = new Set();
    for (const s of this.subs.values()) {
      if (s.client !== client) continue;
      if (s.devices === '*') c.all = true;
      else for (const id of [].concat(s.devices)) c.ids.add(String(id));
    }
  }

  setStatus(state, extra = {}) {
    this.status = { t: 'status', state, ...extra };
    for (const client of this.clients.keys()) client.post(this.status);
  }

  after(ms, fn) {
    const t = setTimeout(() => { this.timers.delete(t); fn(); }, ms);
    this.timers.add(t);
    return t;
  }

  clearTimers() {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }

  reconnectNow() {
    this.clearTimers();
    if (this.ws) this.dropSocket();
    this.connect();
  }

  connect() {
    if (this.closed || !this.token) return;
    this.setStatus(this.attempt === 0 ? 'connecting' : 'reconnecting', { retryInMs: 0 });
    const url = `${this.base}/v1/live?token=${encodeURIComponent(this.token)}`;
    let ws;
    try {
      ws = new WebSocket(url, 'telemux.json');
    } catch (e) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => this.onOpen();
    ws.onmessage = (ev) => this.onMessage(ev.data);
    ws.onclose = (ev) => this.onClose(ev.code, ev.reason, ws);
    ws.onerror = () => {}; // followed by close
  }

  onOpen() {
    this.openedAt = Date.now();
    this.pending.clear();
    this.bySub.clear();
    // Resume before subscribing: every subscription then continues after `position`. Each
    // subscribe says `after` too: one the server takes once it has already streamed past the
    // position gets a `late_subscription` gap for exactly what it misses (backfilled).
    const after = this.position;
    if (after != null) this.send({ op: 'resume', position: after });
    for (const s of this.subs.values()) {
      s.serverSub = null;
      this.sendSubscribe(s, after);
    }
    this.setStatus('live');
    this.heartbeat();
  }

  heartbeat() {
    const ws = this.ws;
    this.after(PING_EVERY_MS, () => {
      if (ws !== this.ws) return;
      const id = this.send({ op: 'ping' });
      this.pending.set(id, { ping: true });
      this.after(PING_TIMEOUT_MS, () => {
        if (ws === this.ws && this.pending.has(id)) ws.close(4000, 'ping timeout');
      });
      this.heartbeat();
    });
  }

  send(msg) {
    const id = this.nextReq++;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ id, ...msg }));
    }
    return id;
  }

  sendSubscribe(entry, after = null) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return; // sent on open
    const req = { op: 'subscribe', devices: entry.devices, snapshot: true };
    if (after != null) req.after = after;
    const id = this.send(req);
    this.pending.set(id, entry);
  }

  onMessage(text) {
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    if (m.type === 'readings') return this.onReadings(m);
    if (m.id !== undefined && m.ok !== undefined) return this.onReply(m);
    this.onEvent(m);
  }

  onReply(m) {
    const entry = this.pending.get(m.id);
    this.pending.delete(m.id);
    if (m.ok && this.position == null && m.position) this.position = m.position;
    if (!entry || entry.ping) return;
    const live = [...this.subs.values()].includes(entry);
    if (!m.ok) {
      entry.client.post({ t: 'event', key: entry.key, data: { type: 'sub_error', error: m.error, message: m.message } });
      return;
    }
    if (!live) {
      this.send({ op: 'unsubscribe', sub: m.sub }); // unsubscribed while the reply was on its way
      return;
    }
    entry.serverSub = m.sub;
    this.bySub.set(m.sub, entry);
  }

  onEvent(m) {
    if (m.type === 'coalesced' && later(m.to_position, this.position)) this.position = m.to_position;
    // After a gap the stream continues from the server's cursor, which may lie below our last
    // position (a position the server never gave out, e.g. its clock went back): start over there.
    // A `late_subscription` gap concerns one new subscription only: the position stays.
    if (m.type === 'gap' && m.reason === 'late_subscription') {
      const entry = this.bySub.get(m.subs?.[0]);
      if (entry) entry.client.post({ t: 'event', key: entry.key, data: m });
      return;
    }
    if (m.type === 'gap') this.position = m.to_position ?? null;
    if (m.type === 'snapshot') {
      const entry = this.bySub.get(m.sub);
      if (entry) entry.client.post({ t: 'event', key: entry.key, data: m });
      return;
    }
    if (m.type === 'online' || m.type === 'offline') {
      for (const [client, c] of this.clients) {
        if (c.all || c.ids.has(m.device)) client.post({ t: 'event', data: m });
      }
      return;
    }
    for (const client of this.clients.keys()) client.post({ t: 'event', data: m });
  }

  onReadings(m) {
    if (!later(m.position, this.position)) return; // already seen (never expected, but cheap)
    this.position = m.position;
    for (const [client, c] of this.clients) {
      const readings = c.all ? m.readings : m.readings.filter((r) => c.ids.has(r.device));
      if (readings.length) client.post({ t: 'readings', position: m.position, coalesced: m.coalesced, readings });
    }
  }

  async onClose(code, reason, ws) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.clearTimers();
    if (this.closed) return;
    if (this.openedAt && Date.now() - this.openedAt >= STABLE_AFTER_MS) this.attempt = 0;
    const wasOpen = this.openedAt !== 0;
    this.openedAt = 0;
    if (AUTH_CLOSES.has(code)) {
      this.setStatus('auth', { code, message: `the live connection was closed: ${AUTH_CLOSES.get(code)}` });
      return;
    }
    if (!wasOpen) {
      // The upgrade was refused; a browser does not say why, so ask the server.
      const refusal = await this.probe();
      if (this.ws || this.closed) return; // reconnected or closed meanwhile
      if (refusal && (refusal.status === 401 || refusal.status === 403)) {
        this.setStatus('auth', { code: refusal.status, error: refusal.error, message: refusal.message });
        return;
      }
    }
    this.scheduleReconnect();
  }

  /** What the server answers a plain GET of /v1/live with our token (401/403 say why). */
  async probe() {
    try {
      const http = this.base.replace(/^ws/, 'http');
      const r = await fetch(`${http}/v1/live`, { headers: { authorization: `Bearer ${this.token}` } });
      const body = await r.json().catch(() => ({}));
      return { status: r.status, error: body.error, message: body.message };
    } catch {
      return null; // server unreachable
    }
  }

  scheduleReconnect() {
    if (this.closed) return;
    const delay = backoffDelay(this.attempt++);
    const offline = typeof navigator !== 'undefined' && navigator.onLine === false;
    this.setStatus(offline ? 'offline' : 'reconnecting', { retryInMs: delay, at: Date.now() });
    this.after(delay, () => this.connect());
  }

  dropSocket() {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = ws.onmessage = ws.onopen = null;
      ws.close(1000, 'closed by client');
    }
  }

  /** Stops for good: socket closed, timers cleared. */
  close() {
    this.closed = true;
    this.clearTimers();
    this.dropSocket();
  }
}
