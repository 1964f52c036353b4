#!/usr/bin/env python3
"""Live fan-out benchmark: telemux's live hub vs Mosquitto, same load generator, 127.0.0.1 only.

Scenario (issue 6): 1,000 simulated devices at 100 readings/s each (10 frames/s x 10 readings,
100k readings/s in). Dashboards: 1, 100 and 1,000 clients each subscribed to 10 random devices,
plus one client subscribed to all devices; then the same with 10 stalled clients added (they
subscribe to all devices and never read). Each dashboard count runs twice side by side:

  telemux    the real `ingest` server (SQLite store, sync=normal); devices on /v1/devices/ws,
             dashboards on /v1/live (binary Live frames).
  mosquitto  `mosquitto` on its own port (child process, minimal config, no persistence);
             devices publish the same frames with QoS 1 to devices/<id>/telemetry, dashboards
             subscribe with QoS 0 to the same 10 device topics (all: devices/+/telemetry).

Both use `firmware-sim` (`--dashboards`, `--dashboard-all`, `--stalled-dashboards`, and
`--mqtt-broker` for Mosquitto), which checks every dashboard's stream against what each device
sent (gaps, duplicates) and measures device-send -> dashboard-receive latency on the last
reading of each frame (its timestamp is the send time).

Reported per run: readings delivered/s to the reading dashboards (and % of what they should
have received), latency p50/p99/max, gaps, duplicates, server CPU (utime+stime from
/proc/<pid>/stat over the steady part of the run, in % of one core) and peak RSS (VmRSS).
The telemux server also decodes, dedups and commits the 100k readings/s to SQLite; Mosquitto
stores nothing.

Latency is steady state: readings sent during the connection ramp and the next --warmup seconds
(default 5) are left out of the histograms (still checked for gaps and duplicates). With
--repeat N each configuration runs N times and the run with the median p99 is the one shown.

Usage: python3 bench/fanout.py [--quick] [--duration 20] [--dashboards 1,100,1000]
                               [--stalled 0,10] [--rate 10,5] [--readings 10] [--warmup 5] [--repeat 1]
                               [--server-cpus LIST --sim-cpus LIST]
                               [--write BENCHMARKS.md] [--section fanout]
Builds release binaries first. The defaults run the whole issue table twice: at 10 frames/s per
device (100k readings/s in, where ingest itself is near capacity on 2 cores) and at 5 (50k/s).
`--rate 100 --readings 1` sends the same readings as one message each (BENCHMARKS.md, "One message
per reading"). Repeats run as interleaved rounds over every configuration.
Prints Markdown (per rate: the runs, the telemux/Mosquitto ratios, the effect of the stalled
clients, and the issue's targets met or not); --write replaces the section between the
`<!-- fanout:begin -->` and `<!-- fanout:end -->` markers (or appends a "Live fan-out" section).
"""
import argparse, json, os, resource, shutil, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request

from mdsection import write_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEVICES, PER_CLIENT = 1000, 10
READINGS = 10  # readings per frame; --readings sets it
PIN = {"server": None, "sim": None}  # taskset CPU lists; --server-cpus and --sim-cpus set them


def pinned(role, args):
    """`args` run under `taskset -c LIST` when CPUs are set for `role` (taskset execs: same pid)."""
    return ["taskset", "-c", PIN[role], *args] if PIN[role] else args


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
    except ValueError:
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(port, proc, what):
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close(); return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


class Telemux:
    name = "telemux"

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="telemux-fanout-")
        self.port = free_port()
        args = [os.path.join(REL, "ingest"), "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.dir,
                "--sqlite-synchronous", "normal", "--connect-rate-per-ip", "100000", "--connect-burst-per-ip", "100000",
                "--ping-interval", "30s", "--idle-timeout", "1h"]
        self.proc = subprocess.Popen(pinned("server", args), stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "server.log"), "w"),
                                     env=dict(os.environ, RUST_LOG="warn"))
        wait_port(self.port, self.proc, "ingest")
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1).read(); break
            except Exception:
                time.sleep(0.1)

    def sim_args(self):
        return ["--url", f"ws://127.0.0.1:{self.port}", "--secret-file", os.path.join(self.dir, "token-secret")]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill(); self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Mosquitto:
    name = "mosquitto"

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mosquitto-fanout-")
        self.port = free_port()
        conf = os.path.join(self.dir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\n"
                    "log_dest none\n")
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(pinned("server", [binary, "-c", conf]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "mosquitto")

    def sim_args(self):
        return ["--mqtt-broker", f"127.0.0.1:{self.port}"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill(); self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def run(server_cls, dashboards, stalled, duration, rate, warmup):
    """One bounded run at `rate` frames/s per device; returns the sim summary plus server CPU and RSS."""
    server = server_cls()
    try:
        out = os.path.join(server.dir, "sim.json")
        args = [os.path.join(REL, "firmware-sim"), *server.sim_args(), "--devices", str(DEVICES), "--rate", f"{rate:g}",
                "--readings", str(READINGS), "--duration", f"{duration}s", "--ramp", "5000", "--drain-timeout", "10s",
                "--dashboards", str(dashboards), "--dashboard-devices", str(PER_CLIENT), "--dashboard-all", "1",
                "--stalled-dashboards", str(stalled), "--dashboard-grace", "3s", "--warmup", f"{warmup}s", "--progress-every", "1s", "--json", out]
        sim = subprocess.Popen(pinned("sim", args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Progress lines start once every dashboard is subscribed and the devices start; sample the
        # server's CPU and RSS at each, and keep the window from the 2nd line to the end of sending.
        samples = []
        def read():
            for line in sim.stderr:
                parts = line.split()
                if len(parts) > 1 and parts[0].endswith("s") and parts[1] == "sent":
                    try:
                        samples.append((float(parts[0][:-1]), time.time(), cpu_ticks(server.proc.pid), rss_kib(server.proc.pid),
                                        cpu_ticks(sim.pid)))
                    except (OSError, ValueError, IndexError):
                        pass
        t = threading.Thread(target=read, daemon=True); t.start()
        try:
            sim.wait(timeout=duration + 180)
        except subprocess.TimeoutExpired:
            sim.kill(); sim.wait()
            raise RuntimeError("firmware-sim did not finish in time")
        t.join(5)
        with open(out) as f:
            summary = json.load(f)
        steady = [s for s in samples if 1.0 <= s[0] <= duration + 0.5]
        if len(steady) >= 2:
            (_, w0, c0, _, s0), (_, w1, c1, _, s1) = steady[0], steady[-1]
            cpu = (c1 - c0) / CLK_TCK / max(w1 - w0, 0.001) * 100
            sim_cpu = (s1 - s0) / CLK_TCK / max(w1 - w0, 0.001) * 100
        else:
            cpu = sim_cpu = float("nan")
        summary["server_cpu_pct"] = cpu
        summary["sim_cpu_pct"] = sim_cpu
        summary["generating_s"] = duration + DEVICES / 5000  # --duration plus the --ramp time
        summary["server_rss_mib"] = max((s[3] for s in samples), default=0) / 1024
        return summary
    finally:
        server.stop()


def closes(kinds, names):
    merged = {}
    for n in names:
        for code, c in kinds.get(n, {}).get("closes_by_code", {}).items():
            merged[code] = merged.get(code, 0) + c
    return ", ".join(f"{k}x{v}" for k, v in sorted(merged.items())) or "-"


def row(name, dashboards, stalled, s):
    d = s["dashboard_readings_received"]
    exp = max(s["dashboard_readings_expected"], 1)
    lat = s["dashboard_latency_ms"]
    kinds = s.get("dashboard_by_client_kind", {})
    return (f"| {name} | {dashboards:,} + 1 all | {stalled} | {s['readings_sent'] / s['generating_s']:,.0f} "
            f"| {s['ack_latency_ms']['p50']:.1f} "
            f"| {s['dashboard_readings_per_s']:,.0f} | {d / exp:.1%} | {lat['p50']:.2f} | {lat['p99']:.2f} | {lat['max']:.1f} "
            f"| {kinds.get('devices', {}).get('latency_ms', {}).get('p99', 0):.2f} "
            f"| {s['dashboard_gaps']:,} | {s['dashboard_duplicates']:,} | {closes(kinds, ['devices', 'all'])} "
            f"| {closes(kinds, ['stalled'])} | {s['server_cpu_pct']:.0f}% | {s['server_rss_mib']:.0f} | {s['sim_cpu_pct']:.0f}% |")


def report(results, counts, stalls, rate, duration, limit, cmd):
    """The Markdown block of one rate: runs, ratios, stalled-client effect, issue targets."""
    first = next(iter(results.values()))
    reps = len(first.get("p99_runs", [0]))
    out = [f"Command: `{cmd}`; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {duration} s of sending per run, "
           f"latency measured after the first {first.get('latency_warmup_s', 0):.1f} s (connection ramp + warm-up: the "
           "start-up burst of 2,000 connects and subscribes is left out, every reading is still checked), "
           + (f"{reps} rounds over every configuration, the row shown is the run with the median p99 (each round's p99 in the last column), " if reps > 1 else "")
           + (f"the server (or Mosquitto) pinned to CPUs {PIN['server']} and `firmware-sim` (devices and dashboards in one process) to CPUs {PIN['sim']} (`taskset`), {os.cpu_count()} cores in all; "
              if PIN["server"] and PIN["sim"] else
              f"{os.cpu_count()} cores shared by the server (or Mosquitto) and `firmware-sim` (devices and dashboards in one process); ")
           + f"open-file limit {limit}.",
           f"Load: {DEVICES:,} devices x {rate:g} frames/s x {READINGS} readings = {DEVICES * rate * READINGS:,.0f} readings/s in; "
           f"each dashboard on {PER_CLIENT} random devices (the same ones for both), plus one on all devices; stalled "
           "dashboards subscribe to all devices and never read.", "",
           "| server | dashboards | stalled | readings/s in | device ack p50 ms | delivered readings/s | of expected | p50 ms "
           "| p99 ms | max ms | p99 ms (10-device clients) | gaps | dups | closes (reading clients) | closes (stalled) "
           "| server CPU | server RSS MiB | sim CPU |" + (" p99 of each run |" if reps > 1 else ""),
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|" + ("---|" if reps > 1 else "")]
    for stalled in stalls:
        for n in counts:
            for name in ("telemux", "mosquitto"):
                r = results[(name, n, stalled)]
                out.append(row(name, n, stalled, r) + (" " + " / ".join(f"{p:.1f}" for p in r["p99_runs"]) + " |" if reps > 1 else ""))
    out += ["", "Ratios (telemux / Mosquitto, same dashboards and stalled clients):", "",
            "| dashboards | stalled | deliveries/s ratio | p99 ratio (lower is better for telemux) | server CPU ratio |",
            "|---|---:|---:|---:|---:|"]
    ratios = {}
    for stalled in stalls:
        for n in counts:
            t, m = results[("telemux", n, stalled)], results[("mosquitto", n, stalled)]
            dr = t["dashboard_readings_per_s"] / max(m["dashboard_readings_per_s"], 1e-9)
            pr = t["dashboard_latency_ms"]["p99"] / max(m["dashboard_latency_ms"]["p99"], 1e-9)
            cr = t["server_cpu_pct"] / max(m["server_cpu_pct"], 1e-9)
            ratios[(n, stalled)] = (dr, pr)
            out.append(f"| {n:,} + 1 all | {stalled} | {dr:.2f}x | {pr:.2f}x | {cr:.2f}x |")
    changes = {}
    if len(stalls) > 1 and 0 in stalls:
        out += ["", "Effect of stalled clients on the others' p99 (same server, same dashboards):", "",
                "| server | dashboards | p99 ms without (median) | p99 ms with " + " / ".join(str(x) for x in stalls if x)
                + " stalled (median) | change of the medians | change in each round |",
                "|---|---|---:|---:|---:|---|"]
        for name in ("telemux", "mosquitto"):
            for n in counts:
                base = results[(name, n, 0)]["dashboard_latency_ms"]["p99"]
                for st in (x for x in stalls if x):
                    w = results[(name, n, st)]["dashboard_latency_ms"]["p99"]
                    changes[(name, n, st)] = (w - base) / max(base, 1e-9)
                    # Round by round: each "with" run against the "without" run of its round.
                    pairs = zip(results[(name, n, 0)]["p99_runs"], results[(name, n, st)]["p99_runs"])
                    per_round = [(y - x) / max(x, 1e-9) for x, y in pairs]
                    out.append(f"| {name} | {n:,} + 1 all | {base:.2f} | {w:.2f} | {(w - base) / max(base, 1e-9):+.0%} | "
                               + " / ".join(f"{c:+.0%}" for c in per_round) + " |")
    verdict = lambda ok: "met" if ok else "**not met**"
    dr_all = [v[0] for v in ratios.values()]
    pr_all = [v[1] for v in ratios.values()]
    out += ["", "Issue 6 targets at this rate:", "", "| target | result |", "|---|---|",
            f"| >= 2x Mosquitto's deliveries/s | {verdict(min(dr_all) >= 2)}: {min(dr_all):.2f}-{max(dr_all):.2f}x |",
            f"| lower p99 than Mosquitto | {verdict(max(pr_all) < 1)}: p99 ratio {min(pr_all):.2f}-{max(pr_all):.2f}x |"]
    if 1000 in counts:
        p99s = [results[("telemux", 1000, st)]["dashboard_latency_ms"]["p99"] for st in stalls]
        out.append(f"| p99 <= 10 ms at 1,000 clients | {verdict(max(p99s) <= 10)}: "
                   + ", ".join(f"{p:.2f} ms ({st} stalled)" for p, st in zip(p99s, stalls)) + " |")
    tch = [v for (name, _, _), v in changes.items() if name == "telemux"]
    if tch:
        out.append(f"| stalled clients change the others' p99 by < 10% | {verdict(max(abs(c) for c in tch) < 0.10)}: "
                   + ", ".join(f"{c:+.0%}" for c in tch) + " |")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="8 s per run instead of 20 s")
    ap.add_argument("--duration", type=int)
    ap.add_argument("--dashboards", default="1,100,1000")
    ap.add_argument("--stalled", default="0,10")
    ap.add_argument("--rate", default="10,5",
                    help="frames/s per device (10 readings each), comma-separated: one table per rate; default 10,5")
    ap.add_argument("--readings", type=int, default=10,
                    help="readings per device frame (default 10); --rate 100 --readings 1 offers the same "
                         "readings/s as one message per reading, the way many MQTT fleets publish")
    ap.add_argument("--warmup", type=int, default=5,
                    help="seconds after the connection ramp left out of the latency histograms (default 5)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per configuration; the row shown is the run with the median p99 (default 1)")
    ap.add_argument("--server-cpus",
                    help="CPU list (taskset -c) for the server and Mosquitto, e.g. 0-3; with --sim-cpus on other CPUs "
                         "the load generator no longer takes the server's cores")
    ap.add_argument("--sim-cpus", help="CPU list (taskset -c) for firmware-sim, e.g. 4-7")
    ap.add_argument("--write")
    ap.add_argument("--section", default="fanout",
                    help="marker name of the BENCHMARKS.md section --write replaces (default fanout)")
    a = ap.parse_args()
    global READINGS
    READINGS = a.readings
    if bool(a.server_cpus) != bool(a.sim_cpus):
        sys.exit("--server-cpus and --sim-cpus go together (pinning one side only still shares its cores)")
    if a.server_cpus and not shutil.which("taskset"):
        sys.exit("taskset not found (util-linux): needed for --server-cpus/--sim-cpus")
    PIN["server"], PIN["sim"] = a.server_cpus, a.sim_cpus
    duration = a.duration or (8 if a.quick else 20)
    if not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")):
        sys.exit("mosquitto not found: apt-get install mosquitto")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ingest", "-p", "firmware-sim", "--bin", "ingest",
                    "--bin", "firmware-sim"], cwd=ROOT, check=True)
    limit = raise_nofile()
    counts = [int(x) for x in a.dashboards.split(",")]
    stalls = [int(x) for x in a.stalled.split(",")]
    rates = [float(x) for x in a.rate.split(",")]
    cmd = "python3 bench/fanout.py" + (" --quick" if a.quick else "") + (f" --duration {a.duration}" if a.duration else "") \
        + (f" --dashboards {a.dashboards}" if a.dashboards != "1,100,1000" else "") + (f" --stalled {a.stalled}" if a.stalled != "0,10" else "") \
        + (f" --rate {a.rate}" if a.rate != "10,5" else "") + (f" --readings {a.readings}" if a.readings != 10 else "") + (f" --warmup {a.warmup}" if a.warmup != 5 else "") \
        + (f" --repeat {a.repeat}" if a.repeat != 1 else "") \
        + (f" --server-cpus {a.server_cpus} --sim-cpus {a.sim_cpus}" if a.server_cpus else "") \
        + (f" --section {a.section}" if a.section != "fanout" else "")
    blocks = []
    for rate in rates:
        # Repeats are rounds over every configuration (not one configuration's runs back to
        # back), so what a comparison sets side by side ran minutes apart at most, whatever the
        # shared machine was doing.
        all_runs = {}
        for rnd in range(max(a.repeat, 1)):
            for stalled in stalls:
                for n in counts:
                    for cls in (Telemux, Mosquitto):
                        r = run(cls, n, stalled, duration, rate, a.warmup)
                        all_runs.setdefault((cls.name, n, stalled), []).append(r)
                        print(f"  round {rnd + 1} rate={rate:g} {cls.name} dashboards={n}+1 stalled={stalled}: "
                              f"{r['dashboard_readings_per_s']:,.0f} readings/s delivered, "
                              f"p99 {r['dashboard_latency_ms']['p99']:.2f} ms, gaps {r['dashboard_gaps']}, "
                              f"cpu {r['server_cpu_pct']:.0f}%", file=sys.stderr)
        results = {}
        for key, runs in all_runs.items():
            p99_rounds = [r["dashboard_latency_ms"]["p99"] for r in runs]
            runs = sorted(runs, key=lambda r: r["dashboard_latency_ms"]["p99"])
            s = runs[len(runs) // 2]
            s["p99_runs"] = p99_rounds  # in round order
            results[key] = s
        blocks.append("\n".join(report(results, counts, stalls, rate, duration, limit, cmd)))
    text = "\n\n".join(blocks)
    print(text)
    if a.write:
        write_section(os.path.join(ROOT, a.write), a.section, "Live fan-out (telemux live hub vs Mosquitto)", text)


if __name__ == "__main__":
    main()
