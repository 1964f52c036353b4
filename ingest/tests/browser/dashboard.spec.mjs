// The web dashboard in real Chromium (Debian's, through playwright-core). Run by
// ingest/tests/browser.rs, which starts the server and the devices and answers three requests on
// stdin: `RESTART_ME` (kill -9 and restart the server), `EXPECT?` (the channel-1 timestamps
// device 1 sent and had stored) and `SHORT_TOKEN?` (an operator token that expires in 8 s).
// Exits non-zero on the first failed check.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { join } from 'node:path';

const env = (k, d) => process.env[k] ?? d;
const DASHBOARD_URL = env('DASHBOARD_URL');
const DEVICES = env('DEVICES', '1').split(',');
const CHANNELS = Number(env('CHANNELS', '1'));
const ARTIFACTS = env('ARTIFACTS', '.');
/** Load phase: 1,000 readings/s for this long, then the JS heap must be under HEAP_BOUND. */
const HEAP_SECS = Number(env('HEAP_SECS', '120'));
const HEAP_BOUND = Number(env('HEAP_BOUND_MB', '16')) * 1024 * 1024;
const origin = new URL(DASHBOARD_URL).origin;

const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(request) {
  console.log(request);
  const { value, done } = await stdin.next();
  if (done) throw new Error(`no answer to ${request}`);
  return value;
}

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

/** Polls `fn` in the page until it returns a truthy value (a bound on waiting, not a timing check). */
async function until(page, fn, arg, what, timeout = 30_000) {
  try {
    const h = await page.waitForFunction(fn, arg, { timeout, polling: 100 });
    const v = await h.jsonValue();
    console.log(`ok: ${what}`);
    return v;
  } catch (e) {
    await shot(page, `failed-${what.replace(/\W+/g, '-').slice(0, 40)}`);
    throw new Error(`waiting for ${what}: ${e.message.split('\n')[0]}`);
  }
}

async function shot(page, name) {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true }).catch(() => {});
  console.log(`screenshot: ${path}`);
}

async function heapUsed(page) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('HeapProfiler.enable');
  await cdp.send('HeapProfiler.collectGarbage');
  await cdp.send('Performance.enable');
  const { metrics } = await cdp.send('Performance.getMetrics');
  await cdp.detach();
  return metrics.find((m) => m.name === 'JSHeapUsedSize').value;
}

/** JS heap of the SharedWorker (its own target, reached through the browser's CDP session). */
async function workerHeapUsed() {
  const cdp = await browser.newBrowserCDPSession();
  try {
    const { targetInfos } = await cdp.send('Target.getTargets');
    const worker = targetInfos.find((t) => t.type === 'shared_worker');
    if (!worker) return null;
    const { sessionId } = await cdp.send('Target.attachToTarget', { targetId: worker.targetId, flatten: false });
    let next = 1;
    const call = (method) => new Promise((resolve) => {
      const id = next++;
      const onMessage = (e) => {
        if (e.sessionId !== sessionId) return;
        const m = JSON.parse(e.message);
        if (m.id !== id) return;
        cdp.off('Target.receivedMessageFromTarget', onMessage);
        resolve(m.result);
      };
      cdp.on('Target.receivedMessageFromTarget', onMessage);
      cdp.send('Target.sendMessageToTarget', { sessionId, message: JSON.stringify({ id, method }) });
    });
    await call('HeapProfiler.collectGarbage');
    const usage = await call('Runtime.getHeapUsage');
    await cdp.send('Target.detachFromTarget', { sessionId });
    return usage.usedSize;
  } finally {
    await cdp.detach();
  }
}

const chartInfo = (ch) => {
  const c = window.__telemux?.view?.charts?.get(ch);
  return c ? { points: c.series.length, drawn: c.drawnPoints, mode: c.mode, last: c.series.last() } : null;
};

const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
let exitCode = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });

  // No token, then a bad token: a clear message, not a blank page.
  const lost = await context.newPage();
  await lost.goto(`${origin}/`);
  await until(lost, () => document.querySelector('#banner:not([hidden])')?.textContent.includes('No operator token'), null, 'no token: the page says so');
  await shot(lost, 'no-token');
  await lost.evaluate(() => sessionStorage.clear());
  await lost.goto(`${origin}/?token=not-a-token`);
  await until(lost, () => document.querySelector('#banner:not([hidden])')?.textContent.includes('refused'), null, 'bad token: the page says the server refused it');
  await shot(lost, 'bad-token');
  await lost.close();

  // A token that expires while the page is open: the page says so (close 4003) and takes a new one.
  const other = await browser.newContext({ viewport: { width: 1280, height: 600 } }); // its own SharedWorker
  const expiring = await other.newPage();
  // Minted on request, just before use: it lives 8 s, the page connects within a second or two.
  await expiring.goto(`${origin}/?token=${await ask('SHORT_TOKEN?')}`);
  await until(expiring, () => document.querySelector('#conn').dataset.state === 'live', null, 'short-lived token: live');
  await until(expiring, () => document.querySelector('#banner:not([hidden])')?.textContent.includes('token expired'), null, 'token expiry: the page says so', 60_000);
  await shot(expiring, 'token-expired');
  await expiring.fill('#banner input[name=token]', new URL(DASHBOARD_URL).searchParams.get('token'));
  await expiring.click('#banner button');
  await until(expiring, () => document.querySelector('#conn').dataset.state === 'live' && document.querySelector('#banner').hidden, null, 'a fresh token pasted: live again');
  await other.close();

  // A token for some devices only: the fleet shows those, live (subscribed by id, not `*`).
  const narrowIds = env('NARROW_DEVICES', '').split(',');
  const narrowCtx = await browser.newContext({ viewport: { width: 1280, height: 400 } });
  const narrow = await narrowCtx.newPage();
  await narrow.goto(`${origin}/?token=${env('NARROW_TOKEN')}`);
  await until(narrow, (ids) => ids.every((id) => document.querySelector(`tr[data-device="${id}"] .dot.on`)), narrowIds, `narrow token: devices ${narrowIds} shown online`);
  const narrowFirst = await narrow.textContent(`tr[data-device="${narrowIds[0]}"] td.values`);
  await until(narrow, ([id, before]) => document.querySelector(`tr[data-device="${id}"] td.values`).textContent !== before, [narrowIds[0], narrowFirst], 'narrow token: a live value changes');
  const narrowRows = await narrow.$$eval('#rows tr', (rows) => rows.map((r) => r.dataset.device));
  check(narrowRows.length === narrowIds.length, `narrow token: only its devices are listed (${narrowRows})`);
  await shot(narrow, 'fleet-narrow-token');
  await narrowCtx.close();

  // Fleet view: every device, online, live values changing, the filter.
  const page = await context.newPage();
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));
  await page.goto(DASHBOARD_URL);
  check(!page.url().includes('token='), 'the token is stripped from the address bar');
  await until(page, (ids) => ids.every((id) => document.querySelector(`tr[data-device="${id}"] .dot.on`)), DEVICES, `all ${DEVICES.length} devices shown online`);
  await until(page, () => document.querySelector('#conn').dataset.state === 'live', null, 'connection indicator says live');
  const first = await page.textContent(`tr[data-device="${DEVICES[0]}"] td.values`);
  await until(page, ([id, before]) => document.querySelector(`tr[data-device="${id}"] td.values`).textContent !== before, [DEVICES[0], first], 'a live value changes');
  // Waited for, not read once: names and tags come from the device list API, which may answer
  // after the live snapshot (on a loaded machine a one-shot read saw no row for "pump").
  const last = DEVICES[DEVICES.length - 1];
  for (const [q, id] of [[last, last], ['pump', '2'], ['site-b', '4']]) {
    await page.fill('#filter', q);
    await until(page, (want) => {
      const rows = [...document.querySelectorAll('#rows tr:not([hidden])')].map((r) => r.dataset.device);
      return rows.length === 1 && rows[0] === want;
    }, id, `filter "${q}" (id, name or tag) shows device ${id} only`).catch(async (e) => {
      const shown = await page.$$eval('#rows tr:not([hidden])', (r) => r.map((x) => x.dataset.device));
      throw new Error(`${e.message} (rows shown: ${shown})`);
    });
  }
  await page.fill('#filter', '');
  await until(page, () => document.querySelector('tr[data-device="2"] td.name').textContent.includes('pump-2'), null, 'device names from the API are shown');
  await shot(page, 'fleet');

  // Device view: a chart per channel, drawing.
  const openedUs = await page.evaluate((id) => { location.hash = `#/device/${id}`; return Date.now() * 1000; }, DEVICES[0]);
  await until(page, (n) => document.querySelectorAll('.chart canvas').length === n, CHANNELS, `${CHANNELS} charts`);
  await until(page, (ch) => (window.__telemux?.view?.charts?.get(ch)?.series.length ?? 0) > 0, 1, 'chart 1 has points');
  await until(page, () => { const c = window.__telemux.view.charts.get(1); return c.drawnPoints > 20; }, null, 'chart 1 draws more than 20 points');
  const inked = await page.evaluate(() => {
    const cv = document.querySelector('.chart[data-channel="1"] canvas');
    const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
    let n = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
    return n;
  });
  check(inked > 500, `chart 1 canvas has ink (${inked} pixels)`);
  await until(page, (t) => window.__telemux.series(1).ts[0] < t - 2e6, openedUs, 'chart 1 is filled from history on open');
  await shot(page, 'device-live');

  // Restart the server (kill -9): the page reconnects by itself and resumes.
  const before = await page.evaluate(chartInfo, 1);
  await page.evaluate(() => { window.__states = []; window.__telemux.live.listen((m) => m.t === 'status' && window.__states.push(m.state)); });
  check((await ask('RESTART_ME')) === 'RESTARTED', 'server restarted');
  await until(page, () => window.__states.includes('reconnecting'), null, 'indicator shows reconnecting');
  await until(page, () => document.querySelector('#conn').dataset.state === 'live', null, 'reconnected by itself', 60_000);
  await until(page, ([last]) => window.__telemux.view.charts.get(1).series.last() > last + 3e6, [before.last], 'chart 1 gets readings after the restart', 60_000);
  await shot(page, 'device-after-restart');
  await until(page, () => window.__telemux.view.backfills >= 2, null, 'the restart gap was backfilled from the API');
  const expected = JSON.parse(await ask('EXPECT?'));
  const got = await page.evaluate(() => window.__telemux.series(1).ts);
  let dups = 0;
  for (let i = 1; i < got.length; i++) if (got[i] <= got[i - 1]) dups++;
  check(dups === 0, `chart 1 has no duplicate or out-of-order point (${got.length} points)`);
  const sent = new Set(expected.sent);
  const lastSent = expected.sent[expected.sent.length - 1];
  // (Points after `lastSent` were sent after the answer was taken.)
  const stray = got.filter((t) => t <= lastSent && !sent.has(t));
  check(stray.length === 0, `every chart point is a reading the device sent (${stray.length} not${stray.length ? `: ${stray.slice(0, 3)}` : ''})`);
  const have = new Set(got);
  const hi = Math.min(got[got.length - 1], expected.stored[expected.stored.length - 1]);
  const holes = expected.stored.filter((t) => t >= got[0] && t <= hi && !have.has(t));
  check(holes.length === 0, `no hole: every stored reading from the chart's first to ${hi} is drawn (${holes.length} missing${holes.length ? `, first ${holes.slice(0, 3)}` : ''})`);

  // History: a range from the API, aggregated to the chart width; then back to live.
  await page.selectOption('#range', '15m');
  await until(page, () => { const c = window.__telemux.view.charts.get(1); return c.mode === 'history' && c.drawnPoints > 0; }, null, 'history range renders', 30_000);
  await until(page, () => document.querySelector('#mode').textContent.includes('step'), null, 'history mode shows its step');
  await shot(page, 'device-history');
  await page.selectOption('#range', 'custom');
  await page.click('#apply'); // prefilled with the last hour
  await until(page, () => document.querySelector('#mode').textContent.includes('step') && window.__telemux.view.charts.get(1).drawnPoints > 0, null, 'custom range renders');
  await page.selectOption('#range', 'live');
  await until(page, () => { const c = window.__telemux.view.charts.get(1); return c.mode === 'live' && c.drawnPoints > 0; }, null, 'back to live');

  // Views come and go without leaving listeners, charts or subscriptions behind.
  const listenersBefore = await page.evaluate(() => window.__telemux.live.listeners.size);
  for (let i = 0; i < 10; i++) {
    await page.evaluate(() => { location.hash = '#/'; });
    await until(page, () => document.querySelector('#rows'), null, `fleet view ${i + 1}`, 10_000);
    await page.evaluate((id) => { location.hash = `#/device/${id}`; }, DEVICES[0]);
    await until(page, (n) => document.querySelectorAll('.chart canvas').length === n, CHANNELS, `device view ${i + 1}`, 10_000);
  }
  const listenersAfter = await page.evaluate(() => window.__telemux.live.listeners.size);
  check(listenersAfter === listenersBefore, `no listener left behind by 20 view changes (${listenersBefore} -> ${listenersAfter})`);
  await until(page, () => window.__telemux.view.charts.get(1).drawnPoints > 0, null, 'device view live again');

  // A second tab shares the first one's connection (SharedWorker): one socket on the server.
  const [fleetTab] = await Promise.all([context.waitForEvent('page'), page.evaluate(() => window.open('/#/'))]);
  await until(fleetTab, (n) => document.querySelectorAll('#rows tr').length === n, DEVICES.length, 'second tab shows the fleet');
  const mode = await fleetTab.evaluate(() => window.__telemux.live.mode);
  check(mode === 'shared-worker', `second tab uses the SharedWorker (${mode})`);
  const liveSockets = async () => {
    const text = await (await fetch(`${origin}/metrics`)).text();
    return Number(/telemux_live_clients\{transport="ws"\} (\d+)/.exec(text)?.[1] ?? NaN);
  };
  check((await liveSockets()) === 1, 'two tabs, one live socket on the server');
  // Without a SharedWorker (?shared=0 forces it) a tab has its own socket, in the page.
  const [ownTab] = await Promise.all([context.waitForEvent('page'), page.evaluate(() => window.open('/?shared=0#/'))]);
  await until(ownTab, (n) => document.querySelectorAll('#rows tr .dot.on').length === n, DEVICES.length, 'per-tab fallback shows the fleet live');
  check((await ownTab.evaluate(() => window.__telemux.live.mode)) === 'page', 'per-tab fallback runs the connection in the page');
  check((await liveSockets()) === 2, 'the fallback tab has its own socket');
  // A tab with another token (narrower grants) gets its own socket from the same worker, and
  // sees only what its token grants, even beside a tab whose token grants everything.
  const [narrowTab] = await Promise.all([
    context.waitForEvent('page'),
    page.evaluate((t) => window.open(`/?token=${t}#/`), env('NARROW_TOKEN')),
  ]);
  await until(narrowTab, (ids) => ids.every((id) => document.querySelector(`tr[data-device="${id}"] .dot.on`)), narrowIds, 'narrow-token tab shows its devices online');
  check((await narrowTab.evaluate(() => window.__telemux.live.mode)) === 'shared-worker', 'narrow-token tab uses the SharedWorker');
  const narrowTabRows = await narrowTab.$$eval('#rows tr', (rows) => rows.map((r) => r.dataset.device));
  check(narrowTabRows.length === narrowIds.length, `narrow-token tab beside a full-token tab lists only its devices (${narrowTabRows})`);
  check((await liveSockets()) === 3, 'a tab with another token gets a socket of its own');
  await narrowTab.close({ runBeforeUnload: true });

  // Memory under load: 1,000 readings/s for HEAP_SECS, heap measured after a forced GC.
  const tabs = { device: page, fleet: fleetTab, own_socket: ownTab };
  const heaps = async () => ({
    ...Object.fromEntries(await Promise.all(Object.entries(tabs).map(async ([k, p]) => [k, await heapUsed(p)]))),
    shared_worker: await workerHeapUsed(),
  });
  const mib = (h) => Object.entries(h).map(([k, v]) => `${k} ${(v / 1048576).toFixed(2)} MiB`).join(', ');
  const start = await heaps();
  console.log(`heap at start: ${mib(start)}`);
  const startPoints = (await page.evaluate(chartInfo, 1)).points;
  for (let s = 0; s < HEAP_SECS; s += 30) {
    await page.waitForTimeout(Math.min(30, HEAP_SECS - s) * 1000);
    const info = await page.evaluate(chartInfo, 1);
    console.log(`load ${Math.min(s + 30, HEAP_SECS)}s: chart 1 holds ${info.points} points`);
  }
  const end = await heaps();
  const endPoints = (await page.evaluate(chartInfo, 1)).points;
  console.log(`heap after ${HEAP_SECS}s: ${mib(end)} (bound ${HEAP_BOUND / 1048576} MiB each)`);
  check(endPoints > startPoints, `chart kept receiving readings (${startPoints} -> ${endPoints} points)`);
  check(end.shared_worker != null, 'the SharedWorker was found and measured');
  for (const [k, v] of Object.entries(end)) check(v < HEAP_BOUND, `${k}: JS heap after ${HEAP_SECS}s of load under ${HEAP_BOUND / 1048576} MiB`);
  await shot(page, 'device-after-load');

  // Draw cost of one chart holding a full buffer (reported, not asserted: the machine is shared).
  const cost = await page.evaluate(async () => {
    const { Chart } = await import('/ui/chart.mjs');
    const { SERIES_CAPACITY } = await import('/ui/series.mjs');
    const box = document.createElement('div');
    box.style.width = '600px';
    document.body.append(box);
    const c = new Chart(box, 'draw cost');
    const t0 = Date.now() * 1000;
    for (let i = 0; i < SERIES_CAPACITY; i++) c.add(t0 + i * 10_000, Math.sin(i / 50) + Math.random() * 0.1);
    const times = [];
    for (let k = 0; k < 101; k++) {
      c.dirty = true;
      const a = performance.now();
      c.draw();
      times.push(performance.now() - a);
    }
    c.destroy();
    box.remove();
    times.sort((x, y) => x - y);
    return { points: SERIES_CAPACITY, drawn: c.drawnPoints, median_ms: times[50], p90_ms: times[90] };
  });
  console.log(`chart draw cost: ${cost.points} points (${cost.drawn} in the 5-min window) median ${cost.median_ms.toFixed(3)} ms, p90 ${cost.p90_ms.toFixed(3)} ms per draw`);
  await shot(fleetTab, 'fleet-after-load');
  await ownTab.close(); // pagehide: its socket closes; the device tab's view stays subscribed
  await fleetTab.close();
} catch (e) {
  console.log(`FAILED: ${e.message}`);
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
