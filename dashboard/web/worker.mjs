// SharedWorker hosting the live connections for every open tab of the dashboard: one socket per
// operator token, so tabs share a socket only when they share a token (and so its grants; a tab
// never sees devices its own token does not grant). Each tab talks to it over a MessagePort
// ({t:'hello', base, token} first, then sub/unsub, 'bye' when the tab goes); the connection
// routes each tab only what it watches (connection.mjs).
import { Connection } from './connection.mjs';

/** token -> Connection */
const conns = new Map();

function forget(conn) {
  for (const [t, c] of conns) if (c === conn) conns.delete(t);
}

self.onconnect = (e) => {
  const port = e.ports[0];
  const client = { post: (m) => port.postMessage(m) };
  let conn = null;
  port.onmessage = ({ data: m }) => {
    if (m.t === 'hello') {
      conn = conns.get(m.token);
      if (!conn || conn.closed) {
        conn = new Connection(m.base);
        conns.set(m.token, conn);
      }
      conn.attach(client);
      conn.setToken(m.token);
    } else if (m.t === 'token') {
      // A refreshed token (after expiry): the tabs on this socket shared the old one.
      if (!conn) return;
      forget(conn);
      conns.set(m.token, conn);
      conn.setToken(m.token);
    } else if (m.t === 'bye') {
      conn?.detach(client);
      if (conn?.closed) forget(conn);
      port.close();
    } else {
      conn?.handle(client, m);
    }
  };
  port.start();
};

self.addEventListener('online', () => {
  for (const c of conns.values()) c.reconnectNow();
});
