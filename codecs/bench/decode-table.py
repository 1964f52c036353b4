#!/usr/bin/env python3
"""Markdown tables from the `decode` criterion bench (codecs/benches/decode.rs).

Reads `<criterion dir>/telemetry_<N>/<function>/new/{estimates,benchmark}.json` (median point
estimates; byte counts from the throughput each benchmark declared) and prints:
  1. throughput per batch size: validated decode (+ iterating every reading) vs CRC-32C alone vs
     memcpy vs serde_json;
  2. validation alone (`codecs::decode` without iterating) vs CRC-32C alone;
  3. the medians the tables are computed from;
  4. wire frame size vs compact JSON size of the same readings;
  5. the targets (256-record batch): decode >= 70% of CRC-32C-alone speed, >= 20x serde_json.

Usage: python3 codecs/bench/decode-table.py [CRITERION_DIR ...]
CRITERION_DIR defaults to $CARGO_TARGET_DIR/criterion, else <workspace>/target/criterion.
Given several directories (copies of target/criterion from repeated runs), each benchmark's
time is the median over the runs of criterion's median: steadier on a shared machine.
GB/s are decimal (1e9 bytes/s); readings/s (M) are millions of readings per second.
Standard library only.
"""

import glob
import json
import os
import re
import statistics
import sys

FUNCTIONS = ("codecs_decode", "codecs_decode_only", "crc32c", "memcpy", "serde_json")
TARGET_BATCH = 256
TARGET_CRC_RATIO = 0.70
TARGET_JSON_SPEEDUP = 20.0


def criterion_dirs():
    if len(sys.argv) > 1:
        return sys.argv[1:]
    if os.environ.get("CARGO_TARGET_DIR"):
        return [os.path.join(os.environ["CARGO_TARGET_DIR"], "criterion")]
    here = os.path.dirname(os.path.abspath(__file__))
    return [os.path.normpath(os.path.join(here, "..", "..", "target", "criterion"))]


def throughput_bytes(throughput):
    """Bytes per iteration from a benchmark.json `throughput` value."""
    if not throughput:
        return None
    (kind, value), = throughput.items()
    if kind in ("Bytes", "BytesDecimal"):
        return value
    if kind == "ElementsAndBytes":
        return value["bytes"]
    return None


def load(root):
    """{batch: {function: (median_ns, bytes)}}"""
    runs = {}
    pattern = os.path.join(root, "telemetry_*", "*", "new", "estimates.json")
    for path in glob.glob(pattern):
        new_dir = os.path.dirname(path)
        function = os.path.basename(os.path.dirname(new_dir))
        m = re.fullmatch(r"telemetry_(\d+)", os.path.basename(os.path.dirname(os.path.dirname(new_dir))))
        if not m or function not in FUNCTIONS:
            continue
        with open(path) as f:
            median_ns = json.load(f)["median"]["point_estimate"]
        with open(os.path.join(new_dir, "benchmark.json")) as f:
            nbytes = throughput_bytes(json.load(f).get("throughput"))
        runs.setdefault(int(m.group(1)), {})[function] = (median_ns, nbytes)
    return runs


def fmt(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"


def pct(x):
    return "n/a" if x is None else f"{x * 100:.0f}%"


def load_all(roots):
    """{batch: {function: (median over runs of median_ns, bytes)}}"""
    times = {}
    for root in roots:
        for n, funcs in load(root).items():
            for name, (ns, nbytes) in funcs.items():
                times.setdefault(n, {}).setdefault(name, ([], nbytes))[0].append(ns)
    return {
        n: {name: (statistics.median(ns), nbytes) for name, (ns, nbytes) in funcs.items()}
        for n, funcs in times.items()
    }


def main():
    roots = criterion_dirs()
    runs = load_all(roots)
    if not runs:
        sys.exit(f"no telemetry_* results under {roots}: run `cargo bench -p codecs --bench decode` first")
    if len(roots) > 1:
        print(f"Median over {len(roots)} runs of each benchmark's criterion median\n")

    rows, only_rows, medians, sizes, verdicts = [], [], [], [], []
    for n in sorted(runs):
        r = runs[n]
        get = lambda name: r.get(name, (None, None))
        dec_ns, frame_bytes = get("codecs_decode")
        only_ns, only_bytes = get("codecs_decode_only")
        crc_ns, crc_bytes = get("crc32c")
        cpy_ns, cpy_bytes = get("memcpy")
        js_ns, json_bytes = get("serde_json")
        gbps = lambda nbytes, ns: nbytes / ns if nbytes and ns else None  # bytes/ns == GB/s
        mrps = lambda ns: n / ns * 1e3 if ns else None  # readings/ns * 1e3 == M readings/s
        dec_gb, crc_gb = gbps(frame_bytes, dec_ns), gbps(crc_bytes, crc_ns)
        ratio = dec_gb / crc_gb if dec_gb and crc_gb else None
        speedup = js_ns / dec_ns if js_ns and dec_ns else None
        rows.append(
            f"| {n} | {fmt(dec_gb)} | {fmt(mrps(dec_ns), 1)} | {fmt(crc_gb)} | "
            f"{pct(ratio)} | {fmt(gbps(cpy_bytes, cpy_ns))} | "
            f"{fmt(gbps(json_bytes, js_ns), 3)} | {fmt(mrps(js_ns), 2)} | {fmt(speedup, 1)}{'x' if speedup else ''} |"
        )
        only_gb = gbps(only_bytes, only_ns)
        only_ratio = only_gb / crc_gb if only_gb and crc_gb else None
        only_rows.append(
            f"| {n} | {fmt(only_gb)} | {fmt(mrps(only_ns), 1)} | {fmt(crc_gb)} | "
            f"{pct(only_ratio)} |"
        )
        medians.append(
            f"| {n} | {fmt(dec_ns, 1)} | {fmt(only_ns, 1)} | {fmt(crc_ns, 1)} | {fmt(cpy_ns, 1)} | "
            f"{fmt(js_ns, 1)} |"
        )
        if frame_bytes and json_bytes:
            sizes.append(
                f"| {n} | {frame_bytes} | {frame_bytes / n:.1f} | {json_bytes} | "
                f"{json_bytes / n:.1f} | {json_bytes / frame_bytes:.2f}x |"
            )
        if n == TARGET_BATCH:
            if ratio is not None:
                ok = "met" if ratio >= TARGET_CRC_RATIO else "NOT met"
                verdicts.append(
                    f"- decode (+ iterate) >= {TARGET_CRC_RATIO:.0%} of CRC-32C-alone speed at {n} "
                    f"records: {ratio:.0%} ({ok})"
                )
            if only_ratio is not None:
                ok = "met" if only_ratio >= TARGET_CRC_RATIO else "NOT met"
                verdicts.append(
                    f"- validation alone >= {TARGET_CRC_RATIO:.0%} of CRC-32C-alone speed at {n} "
                    f"records: {only_ratio:.0%} ({ok})"
                )
            if speedup is not None:
                ok = "met" if speedup >= TARGET_JSON_SPEEDUP else "NOT met"
                verdicts.append(
                    f"- decode >= {TARGET_JSON_SPEEDUP:.0f}x serde_json in readings/s at {n} records: "
                    f"{speedup:.1f}x ({ok})"
                )

    print("Throughput (median of each benchmark; GB/s = 1e9 bytes/s of the input each one reads)\n")
    print(
        "| batch size | decode GB/s | decode readings/s (M) | CRC-32C alone GB/s | decode/CRC | "
        "memcpy GB/s | serde_json GB/s (JSON bytes) | serde_json readings/s (M) | "
        "decode vs serde_json (readings/s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print("\nValidation alone (`codecs::decode`, readings not iterated) vs CRC-32C alone\n")
    print("| batch size | decode-only GB/s | decode-only readings/s (M) | CRC-32C alone GB/s | decode-only/CRC |")
    print("|---:|---:|---:|---:|---:|")
    print("\n".join(only_rows))
    print("\nMedian time per batch (ns)\n")
    print("| batch size | decode + iterate | decode only | CRC-32C alone | memcpy | serde_json + iterate |")
    print("|---:|---:|---:|---:|---:|---:|")
    print("\n".join(medians))
    print("\nSize of the same readings: wire frame vs compact JSON\n")
    print("| batch size | frame bytes | bytes/reading | JSON bytes | bytes/reading | JSON/frame |")
    print("|---:|---:|---:|---:|---:|---:|")
    print("\n".join(sizes))
    if verdicts:
        print("\nTargets\n")
        print("\n".join(verdicts))


if __name__ == "__main__":
    main()
