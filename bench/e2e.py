#!/usr/bin/env python3
"""End-to-end benchmarks: the real `ingest` server and `firmware-sim`, on 127.0.0.1 only.

Scenarios (each bounded in time, everything stops by itself):
  throughput   sustained acked readings/s at 1k and 10k devices (offered load above capacity,
               so TCP backpressure sets the pace), side by side with a bare loop of prepared
               inserts into the same schema (`ingest/examples/bare_insert.rs`), same sync mode,
               as many readings as the sustained run stored (up to 12M). 10k devices run longer
               (45 s overload, 60 s sustained) so several 10M-reading staging cycles fall inside.
  latency      ack latency p50/p99 at half the 1k-device maximum sustained rate.
  rss          server RSS per idle device connection at 10k and 50k connections (from /proc).
  ab           capacity under overload (1k devices x 64 readings, sync full), this build's server
               against another build's (`--baseline BINARY`, e.g. the previous commit built into
               another target dir), alternating, 3 runs each: an A/B of a server change.
  soak         10k devices for 60 s at 80% of the 10k-device sustained rate (sync full), then
               the loss accounting: the simulator's sent/acked/dropped/unacked frames against
               the rows the server committed, counted in the database after it stopped
               (stored == acked readings, no (device, seq, channel) stored twice).

Usage: python3 bench/e2e.py [--quick] [--scenarios throughput,latency,rss,soak,ab] [--baseline BINARY] [--write BENCHMARKS.md]
The full mode (no --quick) runs all four scenarios; --quick leaves out the soak unless named.
Builds release binaries first. Prints Markdown tables; --write replaces the section between
the `<!-- e2e:begin -->` and `<!-- e2e:end -->` markers of the given file.
"""
import argparse, json, os, resource, shutil, signal, socket, sqlite3, subprocess, sys, tempfile, time, urllib.request

from mdsection import write_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
# Ack latency is steady state: frames sent during the connection ramp and the next WARMUP_S
# seconds are left out of the histograms (`firmware-sim --warmup`; still sent, acked, counted).
WARMUP_S = 5
# The server's default `--batch-max-rows`; the bare-insert loop commits batches of the same size.
BATCH_ROWS = 262144


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20
    try:  # root may raise the hard limit too (up to fs.nr_open)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Server:
    def __init__(self, sync="full", extra=(), binary=None):
        self.dir = tempfile.mkdtemp(prefix="telemux-bench-")
        self.port = free_port()
        args = [binary or os.path.join(REL, "ingest"), "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.dir,
                "--sqlite-synchronous", sync, "--connect-rate-per-ip", "100000", "--connect-burst-per-ip", "100000",
                "--max-connections", "200000", "--ping-interval", "30s", "--idle-timeout", "1h", *extra]
        env = dict(os.environ, RUST_LOG="warn")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "server.log"), "w"), env=env)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url("/healthz"), timeout=1).read(); break
            except Exception:
                time.sleep(0.1)
        else:
            self.stop(); raise RuntimeError("server did not start")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def metric(self, name):
        text = urllib.request.urlopen(self.url("/metrics"), timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.split()[-1])
        return 0.0

    def stop(self, keep=False):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill(); self.proc.wait()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def stored(self):
        """(rows, distinct (device, seq, channel)) in the stopped server's database."""
        db = sqlite3.connect(os.path.join(self.dir, "telemux.sqlite3"))
        try:
            rows = db.execute("SELECT count(*) FROM stored_readings").fetchone()[0]
            distinct = db.execute("SELECT count(*) FROM (SELECT DISTINCT device_id, seq, channel FROM stored_readings)").fetchone()[0]
        finally:
            db.close()
        return rows, distinct


def sim(server, devices, rate, readings, duration, extra=(), wait=True):
    out = os.path.join(server.dir, f"sim-{devices}-{rate}.json")
    args = [os.path.join(REL, "firmware-sim"), "--url", f"ws://127.0.0.1:{server.port}", "--secret-file",
            os.path.join(server.dir, "token-secret"), "--devices", str(devices), "--rate", str(rate),
            "--readings", str(readings), "--duration", duration, "--json", out, "--quiet", "--ramp", "5000",
            "--warmup", f"{WARMUP_S}s", *extra]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait:
        return p, out
    p.wait()
    with open(out) as f:
        return json.load(f)


def bare_insert(rows, batch, sync, devices, channels):
    r = subprocess.run([os.path.join(REL, "examples", "bare_insert"), str(rows), str(batch), sync, str(devices), str(channels)], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def throughput(q):
    """Capacity under overload (TCP backpressure sets the pace), then a run at 90% of it that
    must be sustained with nothing lost: that one is the figure we quote."""
    rows = []
    for devices, readings in [(1000, 64), (10000, 64)]:
        # Both runs must span several staging cycles (a table takes 1,000 readings per device:
        # 10,000,000 at 10,000 devices, ~15 s of overload), or moves fall outside them and the
        # figures overstate what the store sustains.
        over_dur, dur = ("8s", "10s" if q else "20s") if devices == 1000 else ("45s", "20s" if q else "60s")
        for sync in ["full", "normal"]:
            s = Server(sync)
            try:
                over = sim(s, devices, 50 if devices == 1000 else 5, readings, over_dur, extra=["--drain-timeout", "30s"])
            finally:
                s.stop()
            cap = over["readings_acked_per_s"]
            rate = max(round(0.9 * cap / (devices * readings), 3), 0.01)
            s = Server(sync)
            try:
                r = sim(s, devices, rate, readings, dur)
            finally:
                s.stop()
            # The same number of readings as the sustained run stored (into a fresh database, as the
            # server started with one): the bare loop slows as the index grows (at 1,000 devices
            # 483k rows/s for 4M rows, 241k for 9M), so a smaller count flatters it.
            bare = bare_insert(int(min(max(r["readings_acked"], 1_000_000), 12_000_000)), BATCH_ROWS, sync, devices, readings)
            e2e = r["readings_acked_per_s"]
            rows.append((devices, sync, cap, devices * rate * readings, e2e, bare["rows_per_s"], e2e / bare["rows_per_s"],
                         r["ack_latency_ms"]["p50"], r["ack_latency_ms"]["p99"], r["lost"]))
            print(f"  throughput {devices} devices sync={sync}: capacity {cap:,.0f}/s, sustained {e2e:,.0f}/s (bare {bare['rows_per_s']:,.0f}/s, lost {r['lost']})", file=sys.stderr)
    t = ["| devices | sync | capacity under overload, readings/s | offered (90%) | acked readings/s, sustained | bare inserts rows/s | sustained / bare | ack p50 ms | ack p99 ms | lost |",
         "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d, sync, cap, off, e2e, bare, ratio, p50, p99, lost in rows:
        t.append(f"| {d:,} | {sync} | {cap:,.0f} | {off:,.0f} | {e2e:,.0f} | {bare:,.0f} | {ratio:.0%} | {p50:.1f} | {p99:.1f} | {lost} |")
    return "\n".join(t), rows


def latency(q, max_rate):
    dur = "10s" if q else "20s"
    rows = []
    for sync in ["full", "normal"]:
        half = max_rate.get(sync, 100_000) / 2
        devices, readings = 1000, 64
        rate = max(half / (devices * readings), 0.1)
        s = Server(sync)
        try:
            r = sim(s, devices, round(rate, 2), readings, dur)
        finally:
            s.stop()
        l = r["ack_latency_ms"]
        rows.append(f"| {sync} | {devices:,} | {half:,.0f} | {r['readings_acked_per_s']:,.0f} | {l['p50']:.2f} | {l['p90']:.2f} | {l['p99']:.2f} | {l['p999']:.2f} | {l['max']:.2f} | {r['lost']} |")
        print(f"  latency sync={sync}: p50 {l['p50']:.2f} ms p99 {l['p99']:.2f} ms", file=sys.stderr)
    return "\n".join(["| sync | devices | offered readings/s (half of max) | acked readings/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | lost |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"] + rows)


def rss(q):
    limit = raise_nofile()
    rows = []
    for n in ([10000] if q else [10000, 50000]):
        if n + 1000 > limit:
            rows.append(f"| {n:,} | skipped: open-file limit {limit} | | |")
            continue
        s = Server("normal")
        try:
            time.sleep(0.5)
            before = s.rss_kib()
            p, _ = sim(s, n, 0.001, 1, "60s", extra=["--watchdog", "0s", "--drain-timeout", "1s"], wait=False)
            deadline = time.time() + 90
            while time.time() < deadline and s.metric("telemux_device_connections") < n:
                time.sleep(0.5)
            connected = int(s.metric("telemux_device_connections"))
            time.sleep(2)
            after = s.rss_kib()
            p.send_signal(signal.SIGKILL); p.wait()
        finally:
            s.stop()
        per = (after - before) * 1024 / max(connected, 1)
        rows.append(f"| {n:,} | {connected:,} | {before/1024:.1f} -> {after/1024:.1f} | {per/1024:.2f} |")
        print(f"  rss {n}: {per/1024:.2f} KiB per connection ({connected} connected)", file=sys.stderr)
    return "\n".join(["| idle device connections asked | connected | server RSS MiB before -> after | KiB per connection |",
                      "|---:|---:|---|---:|"] + rows)


def ab(q, baseline):
    """Capacity under overload of this build's server and of `baseline`, alternating."""
    devices, readings, runs = 1000, 64, 3
    dur = "8s" if q else "15s"
    results = {"this build": [], "baseline": []}
    for i in range(runs):
        for name, binary in [("this build", None), ("baseline", baseline)]:
            s = Server("full", binary=binary)
            try:
                r = sim(s, devices, 50, readings, dur, extra=["--drain-timeout", "30s"])
            finally:
                s.stop()
            results[name].append((r["readings_acked_per_s"], r["ack_latency_ms"]["p50"], r["lost"]))
            print(f"  ab run {i + 1} {name}: {r['readings_acked_per_s']:,.0f} readings/s, lost {r['lost']}", file=sys.stderr)
    med = lambda xs: sorted(xs)[len(xs) // 2]
    t = [f"Baseline: `{baseline}`. {runs} alternating runs each, {devices:,} devices x {readings} readings offered 3.2M readings/s for {dur} (TCP backpressure sets the pace, so the simulator's store-and-forward buffers overflow by design and ack latency is queueing), sync full.", "",
         "| server | acked readings/s, each run | median | ack p50 ms, each run |", "|---|---|---:|---|"]
    for name, rs in results.items():
        t.append(f"| {name} | {' / '.join(f'{x[0]:,.0f}' for x in rs)} | {med([x[0] for x in rs]):,.0f} | "
                 f"{' / '.join(f'{x[1]:.0f}' for x in rs)} |")
    ratio = med([x[0] for x in results["this build"]]) / max(med([x[0] for x in results["baseline"]]), 1)
    t += ["", f"This build / baseline (medians): {ratio:.2f}x."]
    # Ack latency at half of the baseline's capacity, the same offered load for both builds.
    half = med([x[0] for x in results["baseline"]]) / 2
    rate = round(max(half / (devices * readings), 0.1), 2)
    lat = {"this build": [], "baseline": []}
    for i in range(runs):
        for name, binary in [("this build", None), ("baseline", baseline)]:
            s = Server("full", binary=binary)
            try:
                r = sim(s, devices, rate, readings, "20s" if not q else "10s")
            finally:
                s.stop()
            l = r["ack_latency_ms"]
            lat[name].append((l["p50"], l["p99"], l["max"], r["lost"]))
            print(f"  ab latency run {i + 1} {name}: p50 {l['p50']:.1f} ms p99 {l['p99']:.1f} ms, lost {r['lost']}", file=sys.stderr)
    t += ["", f"Ack latency at half the baseline's capacity ({devices * rate * readings:,.0f} readings/s offered, "
              f"{runs} alternating runs each, sync full):", "",
          "| server | ack p50 ms, each run | ack p99 ms, each run | median p99 ms | max ms, each run | lost |", "|---|---|---|---:|---|---:|"]
    for name, rs in lat.items():
        t.append(f"| {name} | {' / '.join(f'{x[0]:.1f}' for x in rs)} | {' / '.join(f'{x[1]:.1f}' for x in rs)} | "
                 f"{med([x[1] for x in rs]):.1f} | {' / '.join(f'{x[2]:.0f}' for x in rs)} | {sum(x[3] for x in rs)} |")
    return "\n".join(t)


def soak(q, sustained_10k):
    """The issue's done-when run: 10,000 devices for 60 s against one server, every frame
    accounted for."""
    devices, readings = 10000, 64
    offered = 0.8 * sustained_10k if sustained_10k else 100_000
    rate = max(round(offered / (devices * readings), 3), 0.01)
    s = Server("full")
    try:
        r = sim(s, devices, rate, readings, "60s", extra=["--drain-timeout", "60s"])
        committed = s.metric("telemux_rows_stored_total")
        s.stop(keep=True)
        rows, distinct = s.stored()
    finally:
        s.stop()
    explained = r["lost"] == 0 and rows == r["readings_acked"] and distinct == rows
    print(f"  soak {devices} devices 60 s: sent {r['frames_sent']} frames, acked {r['frames_acked']}, lost {r['lost']}, "
          f"stored {rows} rows (acked readings {r['readings_acked']}, distinct {distinct})", file=sys.stderr)
    head = ["| devices | sync | offered readings/s | acked readings/s | frames sent | acked | resent | dropped | unacked | refused | reconnects | readings acked | rows stored | distinct (device, seq, channel) | ack p50 ms | ack p99 ms | lost | verdict |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    l = r["ack_latency_ms"]
    verdict = "zero loss, exactly once" if explained else "**LOSS OR MISMATCH**"
    head.append(f"| {devices:,} | full | {devices * rate * readings:,.0f} | {r['readings_acked_per_s']:,.0f} | {r['frames_sent']:,} | {r['frames_acked']:,} | "
                f"{r['frames_resent']:,} | {r['frames_dropped']:,} | {r['frames_unacked']:,} | {r['frames_refused']:,} | {r['reconnects']:,} | "
                f"{r['readings_acked']:,} | {rows:,} | {distinct:,} | {l['p50']:.1f} | {l['p99']:.1f} | {r['lost']} | {verdict} |")
    return "\n".join(head) + f"\n\nServer counter `telemux_rows_stored_total` at the end: {committed:,.0f}."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scenarios")
    ap.add_argument("--write")
    ap.add_argument("--baseline", help="another build's ingest binary, for the ab scenario")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ingest", "-p", "firmware-sim", "--bin", "ingest", "--bin", "firmware-sim", "--example", "bare_insert"], cwd=ROOT, check=True)
    limit = raise_nofile()
    if a.scenarios is None:
        a.scenarios = "throughput,latency,rss" if a.quick else "throughput,latency,rss,soak"
    out = [f"Command: `python3 bench/e2e.py{' --quick' if a.quick else ''} --scenarios {a.scenarios}`; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
           f"{os.cpu_count()} cores shared by the server and the simulator; open-file limit {limit} "
           f"(hard limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}). Ack latencies leave out frames sent during the "
           f"connection ramp (5,000 devices/s) and the {WARMUP_S} s after it (`firmware-sim --warmup {WARMUP_S}s`): the start-up "
           "burst of connects is not steady state; every frame is still sent, acked and counted.", ""]
    max_rate = {}
    sustained_10k = 0
    sc = a.scenarios.split(",")
    if "throughput" in sc:
        table, rows = throughput(a.quick)
        for d, sync, _cap, _off, e2e, *_ in rows:
            if d == 1000:
                max_rate[sync] = e2e
            if d == 10000 and sync == "full":
                sustained_10k = e2e
        out += ["### Sustained ingest (acks after commit)", "", table, ""]
    if "latency" in sc:
        out += ["### Ack latency at half the maximum load (1k devices)", "", latency(a.quick, max_rate), ""]
    if "rss" in sc:
        out += ["### Server memory per idle device connection", "", rss(a.quick), ""]
    if "soak" in sc:
        out += ["### 10,000 devices for 60 s: loss accounting", "", soak(a.quick, sustained_10k), ""]
    if "ab" in sc:
        if not a.baseline:
            sys.exit("the ab scenario needs --baseline BINARY")
        out += ["### A/B: capacity of this build against a baseline build", "", ab(a.quick, a.baseline), ""]
    text = "\n".join(out)
    print(text)
    if a.write:
        section = "e2e-ab" if sc == ["ab"] else "e2e"
        write_section(os.path.join(ROOT, a.write), section, "End to end (ingest + firmware-sim)", text)


if __name__ == "__main__":
    main()
