#!/usr/bin/env bash
# One live fan-out run against one server binary, for quick A/Bs of server builds (127.0.0.1
# only, bounded: DUR of sending, then the simulator drains). The scenario of bench/fanout.py's
# telemux rows: DEVICES devices x RATE frames/s x 10 readings, DASHBOARDS dashboards on 10 random
# devices each plus one on all devices, sync normal, latency after a 5 s warm-up. Prints one
# line: the binary, dashboard readings/s, latency p50/p99/max ms, gaps, device ack p50, and the
# CPU seconds the server and the simulator used over the whole run. With PROGRESS=1s the
# simulator's progress lines (largest latency per second) are left in /tmp/last/live-sim.err.
#
#   bench/live_load.sh BINARY [RATE] [DASHBOARDS] [DUR] [DEVICES]     (defaults 10 1000 15s 1000)
#   STALLED=10 bench/live_load.sh ...   (plus 10 clients that subscribe to all and never read)
#   READINGS=1 bench/live_load.sh BIN 100   (one reading per frame: 100 frames/s per device)
#   e.g. for i in 1 2 3; do for b in /tmp/ingest-a /tmp/ingest-b; do bench/live_load.sh $b; done; done
set -euo pipefail
bin=${1:?server binary}; rate=${2:-10}; dashboards=${3:-1000}; dur=${4:-15s}; devices=${5:-1000}
root=$(cd "$(dirname "$0")/.." && pwd)
sim="$root/target/release/firmware-sim"
[ -x "$sim" ] || cargo build --release -q -p firmware-sim --bin firmware-sim
ulimit -n "$(ulimit -Hn)"
dir=$(mktemp -d /tmp/telemux-live-XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=warn "$bin" --listen "127.0.0.1:$port" --data-dir "$dir" --sqlite-synchronous normal \
  --connect-rate-per-ip 100000 --connect-burst-per-ip 100000 --ping-interval 30s --idle-timeout 1h \
  ${SERVER_ARGS:-} > "$dir/server.log" 2>&1 &
server=$!
mkdir -p /tmp/last
trap 'kill -INT $server 2>/dev/null; wait $server 2>/dev/null; cp "$dir/server.log" /tmp/last/server.log; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -f "$dir/token-secret" ] && curl -sf "127.0.0.1:$port/healthz" > /dev/null && break; sleep 0.1; done
"$sim" --url "ws://127.0.0.1:$port" --secret-file "$dir/token-secret" --devices "$devices" \
  --rate "$rate" --readings "${READINGS:-10}" --duration "$dur" --ramp 5000 --drain-timeout 10s \
  --dashboards "$dashboards" --dashboard-devices 10 --dashboard-all 1 \
  --stalled-dashboards "${STALLED:-0}" --dashboard-grace 3s --warmup 5s \
  --progress-every "${PROGRESS:-5s}" --json "$dir/sim.json" > /dev/null 2> /tmp/last/live-sim.err &
sim_pid=$!
wait $sim_pid || true # a failed dashboard check (gaps) still writes its summary
server_cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$server/stat")
python3 - "$dir/sim.json" "$bin" "$server_cpu" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["dashboard_latency_ms"]
print(f"{sys.argv[2]}: delivered {r['dashboard_readings_per_s']:,.0f} readings/s, live p50 {l['p50']:.2f} ms, "
      f"p99 {l['p99']:.2f} ms, max {l['max']:.1f} ms, gaps {r['dashboard_gaps']}, dups {r['dashboard_duplicates']}, "
      f"ack p50 {r['ack_latency_ms']['p50']:.1f} ms, server CPU {float(sys.argv[3]):.1f} s")
PY
