// SharedWorker hosting the one live connection for every open tab of the dashboard. Each tab
// talks to it over a MessagePort ({t:'hello', base, token} first, then sub/unsub, 'bye' when
// the tab goes); the connection routes each tab only what it watches (connection.mjs).
import { Connection } from './connection.mjs';

let conn = null;

self.onconnect = (e) => {
  const port = e.ports[0];
  const client = { post: (m) => port.postMessage(m) };
  port.onmessage = ({ data: m }) => {
    if (m.t === 'hello') {
      if (!conn || conn.closed) conn = new Connection(m.base);
      conn.attach(client);
      conn.setToken(m.token);
    } else if (m.t === 'token') {
      conn?.setToken(m.token);
    } else if (m.t === 'bye') {
      conn?.detach(client);
      port.close();
    } else {
      conn?.handle(client, m);
    }
  };
  port.start();
};

self.addEventListener('online', () => conn?.reconnectNow());
