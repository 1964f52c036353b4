#!/usr/bin/env bash
# One load run against one server binary, for quick A/Bs of server builds (127.0.0.1 only,
# bounded: DUR of sending, then the simulator drains). Prints one line: the binary, acked
# readings/s, ack p50/p99 ms, lost, and the server's store metrics at the end of sending.
# The server log and its /metrics at the end of sending are left in /tmp/last/.
#
#   bench/server_load.sh BINARY RATE [DUR] [DEVICES]     (RATE: frames/s per device, 64 readings each)
#   SERVER_ARGS='--staging-rows 4000000' bench/server_load.sh ...   (extra server flags)
#   e.g. for b in /tmp/ingest-a /tmp/ingest-b; do bench/server_load.sh $b 2.5 30s; done
set -euo pipefail
bin=${1:?server binary}; rate=${2:?frames/s per device}; dur=${3:-30s}; devices=${4:-1000}
root=$(cd "$(dirname "$0")/.." && pwd)
sim="$root/target/release/firmware-sim"
[ -x "$sim" ] || cargo build --release -q -p firmware-sim --bin firmware-sim
dir=$(mktemp -d /tmp/telemux-load-XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=warn "$bin" --listen "127.0.0.1:$port" --data-dir "$dir" --connect-rate-per-ip 100000 \
  --connect-burst-per-ip 100000 --max-connections 200000 ${SERVER_ARGS:-} > "$dir/server.log" 2>&1 &
server=$!
mkdir -p /tmp/last
trap 'kill -INT $server 2>/dev/null; wait $server 2>/dev/null; cp "$dir/server.log" /tmp/last/server.log; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -f "$dir/token-secret" ] && break; sleep 0.1; done
"$sim" --url "ws://127.0.0.1:$port" --secret-file "$dir/token-secret" --devices "$devices" \
  --rate "$rate" --readings 64 --duration "$dur" --json "$dir/sim.json" --quiet --ramp 5000 \
  --warmup 5s > /dev/null &
sim_pid=$!
secs=${dur%s}
# /metrics at the end of the warm-up too, so histograms can be read for the measured window only.
sleep 6; curl -s "127.0.0.1:$port/metrics" > /tmp/last/load-metrics-start.txt
sleep "$((secs > 8 ? secs - 7 : 1))"
curl -s "127.0.0.1:$port/metrics" > /tmp/last/load-metrics.txt; metrics=$(grep -E "^telemux_(store_move_seconds_(sum|count)|writer_commit_seconds_sum|writer_batch_rows_sum) " /tmp/last/load-metrics.txt | awk '{printf "%s=%s ", $1, $2}')
wait $sim_pid || true
python3 - "$dir/sim.json" "$bin" "$metrics" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["ack_latency_ms"]
print(f"{sys.argv[2]}: acked {r['readings_acked_per_s']:,.0f} readings/s, ack p50 {l['p50']:.1f} ms, p99 {l['p99']:.1f} ms, p99.9 {l['p999']:.1f} ms, max {l['max']:.0f} ms, lost {r['lost']} | {sys.argv[3]}")
PY
