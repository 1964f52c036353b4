#!/usr/bin/env python3
"""History API read benchmark against a running ingest server (127.0.0.1 only).

Times /v1/series requests (raw JSON pages, one large streamed CSV export, aggregates) repeated
--runs times and reports medians, plus the server's resident memory (VmRSS, VmHWM from
/proc/PID/status) before and after the large export, to show the body is streamed, not buffered.

    python3 bench/api.py --url http://127.0.0.1:18088 --token "$TOKEN" --pid $PID \
        --devices 1-10 --channels 1-10 --from-ms $FROM --to-ms $TO --runs 5
"""
import argparse
import json
import statistics
import sys
import time
import urllib.parse
import urllib.request


def span(s):
    a, _, b = s.partition("-")
    return list(range(int(a), int(b or a) + 1))


def mem(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) // 1024  # MiB
    return out


def fetch(base, token, params):
    url = base + "/v1/series?" + urllib.parse.urlencode(params, doseq=True)
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    t0 = time.perf_counter()
    n = lines = 0
    with urllib.request.urlopen(req, timeout=600) as r:
        while True:
            chunk = r.read(1 << 16)
            if not chunk:
                break
            n += len(chunk)
            lines += chunk.count(b"\n")
        headers = {k.lower(): v for k, v in r.headers.items()}
    return time.perf_counter() - t0, n, lines, headers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--devices", required=True)
    ap.add_argument("--channels", required=True)
    ap.add_argument("--from-ms", type=int, required=True)
    ap.add_argument("--to-ms", type=int, required=True)
    ap.add_argument("--export-rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    if not a.url.startswith(("http://127.", "http://localhost")):
        sys.exit("load tests only against 127.0.0.0/8")
    devs, chans = span(a.devices), span(a.channels)
    base = {"device": ",".join(map(str, devs)), "channel": ",".join(map(str, chans)),
            "from": a.from_ms, "to": a.to_ms}
    cases = [
        ("raw json, 1 series, limit 1000", {**base, "device": devs[0], "channel": chans[0], "limit": 1000}),
        ("raw json, all series, limit 100000", {**base, "limit": 100000}),
        (f"raw json, all series, limit {a.export_rows}", {**base, "limit": a.export_rows}),
        (f"raw csv, all series, limit {a.export_rows}", {**base, "limit": a.export_rows, "format": "csv"}),
        ("agg avg step=1s, all series", {**base, "step": "1s", "agg": "avg"}),
        ("agg last step=1m, all series", {**base, "step": "1m", "agg": "last"}),
    ]
    results = []
    for name, params in cases:
        before = mem(a.pid)
        times, size, lines, headers = [], 0, 0, {}
        for _ in range(a.runs):
            dt, size, lines, headers = fetch(a.url, a.token, params)
            times.append(dt)
        after = mem(a.pid)
        med = statistics.median(times)
        row = {"case": name, "median_s": round(med, 4), "bytes": size,
               "MB_per_s": round(size / med / 1e6, 1),
               "rss_mib_before": before["VmRSS"], "rss_mib_after": after["VmRSS"],
               "hwm_mib_after": after["VmHWM"], "chunked": headers.get("transfer-encoding") == "chunked"}
        if params.get("format") == "csv":
            row["csv_rows"] = lines - 1
            row["csv_rows_per_s"] = round((lines - 1) / med)
        results.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
