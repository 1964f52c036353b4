#!/usr/bin/env python3
"""CPU cost per stored reading of each part of the end-to-end path, for before/after comparisons
on a noisy machine (throughput there says how much CPU the other processes left us; CPU time
per reading does not depend on that as much).

Usage: python3 bench/cpu_cost.py DEVICES RATE SYNC BUILD[:--flag=value...],BUILD2 [REPEATS]
BUILD is a directory holding `ingest` and `firmware-sim` binaries (e.g. target/release, or a
copy of an older build); flags after `:` go to the server. Runs each build in turn, REPEATS times:
the server and the simulator (64 readings per frame, overload at RATE frames/s per device), and
over 6 s in the middle reads the rows committed (`telemux_rows_stored_total`) and the CPU time of
every thread from /proc. Prints microseconds of CPU per committed reading per thread group
(SQLite writer, checkpointer, server runtime, server total, simulator) and the bytes the server
wrote per reading (`wchar`, mostly WAL). 127.0.0.1 only; each run lasts 12 s plus the drain.
"""
import os, sys, time

import e2e


def threads(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            x = open(f"/proc/{pid}/task/{t}/stat").read()
        except OSError:
            continue
        name = x[x.index("(") + 1:x.rindex(")")]
        f = x[x.rindex(")") + 2:].split()
        out[(t, name)] = int(f[11]) + int(f[12])
    return out


def by_name(before, after):
    g = {}
    for k, v in after.items():
        g[k[1]] = g.get(k[1], 0) + v - before.get(k, 0)
    return g


def wchar(pid):
    for line in open(f"/proc/{pid}/io"):
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def main():
    devices, rate, sync, builds = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4].split(",")
    repeats = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    e2e.raise_nofile()
    tick = os.sysconf("SC_CLK_TCK")
    for _ in range(repeats):
        for build in builds:
            path, *flags = build.split(":")
            e2e.REL = os.path.abspath(path)
            s = e2e.Server(sync, [x for f in flags for x in f.split("=", 1)])
            try:
                p, _ = e2e.sim(s, devices, rate, 64, "12s", extra=["--drain-timeout", "30s"], wait=False)
                time.sleep(4)
                r0, w0 = s.metric("telemux_rows_stored_total"), wchar(s.proc.pid)
                a0, b0, t0 = threads(s.proc.pid), threads(p.pid), time.time()
                time.sleep(6)
                r1, w1 = s.metric("telemux_rows_stored_total"), wchar(s.proc.pid)
                a1, b1, t1 = threads(s.proc.pid), threads(p.pid), time.time()
                rows = max(r1 - r0, 1)
                srv, simc = by_name(a0, a1), by_name(b0, b1)
                us = lambda ticks: ticks / tick / rows * 1e6
                print(f"{build}: {rows / (t1 - t0):,.0f} readings/s; CPU us/reading: writer {us(srv.get('sqlite-writer', 0)):.2f} "
                      f"checkpointer {us(srv.get('sqlite-checkpoi', 0)):.2f} runtime {us(srv.get('tokio-rt-worker', 0)):.2f} "
                      f"server {us(sum(srv.values())):.2f} sim {us(sum(simc.values())):.2f}; wchar {(w1 - w0) / rows:.0f} B/reading; "
                      f"load {open('/proc/loadavg').read().split()[0]}", flush=True)
                p.wait()
            finally:
                s.stop()


if __name__ == "__main__":
    main()
