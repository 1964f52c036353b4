// The page's handle on the live connection: a SharedWorker (one socket for all tabs) where the
// browser has one, else a Connection in this page. Views subscribe with a key and listen for
// messages; both are removed when the view closes.
import { Connection } from './connection.mjs';

export class Live {
  /** @param {string} token operator token; `shared` false forces one socket per tab */
  constructor(token, { shared = true } = {}) {
    this.listeners = new Set();
    this.status = { t: 'status', state: 'connecting' };
    const base = location.origin.replace(/^http/, 'ws');
    const deliver = (m) => {
      if (m.t === 'status') this.status = m;
      for (const fn of [...this.listeners]) fn(m);
    };
    if (shared && typeof SharedWorker === 'function') {
      this.mode = 'shared-worker';
      this.worker = new SharedWorker('/ui/worker.mjs', { type: 'module', name: 'telemux-live' });
      this.port = this.worker.port;
      this.port.onmessage = (e) => deliver(e.data);
      this.port.start();
      this.post = (m) => this.port.postMessage(m);
      this.post({ t: 'hello', base, token });
      this.onHide = () => this.post({ t: 'bye' });
      addEventListener('pagehide', this.onHide);
    } else {
      this.mode = 'page';
      this.conn = new Connection(base);
      this.client = { post: deliver };
      this.conn.attach(this.client);
      this.conn.setToken(token);
      this.post = (m) => this.conn.handle(this.client, m);
      this.onOnline = () => this.conn.reconnectNow();
      addEventListener('online', this.onOnline);
    }
  }

  /** Calls `fn` with every message; returns the function that removes it. */
  listen(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Watches `devices` ('*' or a list of ids) under `key` (one subscription per key). */
  subscribe(key, devices) {
    this.post({ t: 'sub', key, devices });
  }

  unsubscribe(key) {
    this.post({ t: 'unsub', key });
  }

  setToken(token) {
    if (this.conn) this.conn.setToken(token);
    else this.post({ t: 'token', token });
  }
}
