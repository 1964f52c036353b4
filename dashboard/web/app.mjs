// Entry point: takes the operator token (from ?token= once, then sessionStorage), opens the live
// connection, shows the connection state, and routes #/ (fleet) and #/device/<id> (device).
import { Api } from './api.mjs';
import { Live } from './live.mjs';
import { FleetView } from './fleet.mjs';
import { DeviceView } from './device.mjs';

const TOKEN_KEY = 'telemux.token';

/** The token from the address bar (then removed from it) or from this tab's session. */
function takeToken() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete('token');
    history.replaceState(null, '', url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

const main = document.querySelector('main');
const banner = document.querySelector('#banner');
const indicator = document.querySelector('#conn');

function showProblem(title, detail) {
  banner.hidden = false;
  banner.replaceChildren();
  const h = document.createElement('strong');
  h.textContent = title;
  const p = document.createElement('p');
  p.textContent = detail;
  const form = document.createElement('form');
  form.innerHTML = '<input name="token" placeholder="paste an operator token" autocomplete="off" size="40"> <button>Use token</button>';
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = form.token.value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    location.reload();
  });
  banner.append(h, p, form);
}

const HOW = 'Open the dashboard URL the server prints at startup (http://HOST:8080/?token=...), or mint one with `ingest token operator` and paste it here.';

function start() {
  const token = takeToken();
  if (!token) {
    showProblem('No operator token.', HOW);
    indicator.dataset.state = 'auth';
    indicator.textContent = 'no token';
    return;
  }
  const params = new URLSearchParams(location.search);
  const live = new Live(token, { shared: params.get('shared') !== '0' });
  const api = new Api(token);
  const authError = (e) => showProblem(`The server refused the token (${e.code ?? e.status}).`, `${e.message}. ${HOW}`);

  let retryTimer = 0;
  live.listen((m) => {
    if (m.t !== 'status') return;
    clearInterval(retryTimer);
    indicator.dataset.state = m.state;
    if (m.state === 'reconnecting' || m.state === 'offline') {
      const until = Date.now() + (m.retryInMs ?? 0);
      const show = () => {
        const s = Math.max(0, Math.ceil((until - Date.now()) / 1000));
        indicator.textContent = `${m.state === 'offline' ? 'offline' : 'reconnecting'}${s ? ` in ${s}s` : '…'}`;
      };
      show();
      retryTimer = setInterval(show, 500);
    } else if (m.state === 'auth') {
      indicator.textContent = 'not authorized';
      authError(m);
    } else {
      indicator.textContent = m.state === 'live' ? 'live' : 'connecting…';
      if (m.state === 'live') banner.hidden = true;
    }
  });

  let view = null;
  const route = () => {
    view?.close();
    const m = location.hash.match(/^#\/device\/([^/]+)$/);
    view = m ? new DeviceView(decodeURIComponent(m[1]), live, api, authError) : new FleetView(live, api, authError);
    view.open(main);
    window.__telemux.view = view;
  };
  window.__telemux = {
    live,
    view: null,
    /** The chart buffer of `channel` in the device view: {ts: [us], values: []}. */
    series: (channel) => view?.charts?.get(channel)?.series.toArrays() ?? null,
  };
  addEventListener('hashchange', route);
  route();
}

start();
