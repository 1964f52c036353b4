// The HTTP history API (/v1/devices, /v1/series) with the operator token as a bearer token.

/** A refused request: HTTP status plus the server's JSON error code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  /** GET `path` with `params` (arrays repeat the key); resolves to the JSON body. */
  async get(path, params = {}, { signal } = {}) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v == null) continue;
      for (const one of [].concat(v)) q.append(k, String(one));
    }
    const url = q.size ? `${path}?${q}` : path;
    const r = await fetch(url, { headers: { authorization: `Bearer ${this.token}` }, signal });
    const body = await r.json().catch(() => null);
    if (!r.ok) {
      throw new ApiError(r.status, body?.error ?? 'http_error', body?.message ?? `${path}: HTTP ${r.status}`);
    }
    return body;
  }

  devices(signal) {
    return this.get('/v1/devices', {}, { signal });
  }

  /** Aggregated history: one bucket per `stepMs`. */
  buckets(device, channels, fromMs, toMs, stepMs, agg = 'avg', signal) {
    return this.get('/v1/series', {
      device, channel: channels, from: Math.floor(fromMs), to: Math.ceil(toMs), step: stepMs, agg,
    }, { signal });
  }

  /** Every raw reading of the range, following `next_cursor` (at most `maxPages` pages of the
   *  server's default size, which stays within its `api_max_rows`). */
  async points(device, channels, fromMs, toMs, { signal, maxPages = 20 } = {}) {
    const out = new Map(); // channel -> points
    let cursor = null;
    for (let page = 0; page < maxPages; page++) {
      const body = await this.get('/v1/series', {
        device, channel: channels, from: Math.floor(fromMs), to: Math.ceil(toMs), cursor,
      }, { signal });
      for (const s of body.series ?? []) {
        if (!out.has(s.channel)) out.set(s.channel, []);
        out.get(s.channel).push(...(s.points ?? []));
      }
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    return out;
  }
}
