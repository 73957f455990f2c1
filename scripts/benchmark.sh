#!/usr/bin/env bash
# The benchmark run behind docs/benchmarks.md: for each scenario, starts a fresh release
# server with --dev pinned to one core, runs the loadtest scenario against it with the tool
# pinned to the other, and writes the table (.md), JSON and SVG plot to target/bench/.
#
# Usage: scripts/benchmark.sh [SCENARIO...]     (default: B1 B4 B2 B3 B5; takes ~15 min)
# Environment:
#   SB_BENCH_OUT     output directory (default target/bench)
#   SB_SERVER_CPU    core for the server (default 1; `all`: not pinned, for several media
#                    threads); SB_TOOL_CPU core for the tool (default 0)
#   SB_B1_SWEEP      B1 subscribers (default 25,50,100,150,200)
#   SB_B4_CAPACITY   the B1 capacity B4 runs 10/50/80 % of (default 150)
#   SB_DURATION      measurement window per point, s (default 15); SB_WARMUP (default 5)
#   SB_MEDIA_THREADS the server's rtc.media_threads (default 1: one media thread on the
#                    server's core; with 2, set SB_SERVER_CPU=all)
#   SB_B3_SWEEP      B3 subscribers (default 25,50,100,200)
#   SB_SERVER_BIN    the server binary (default target/release/switchboard), e.g. a build of
#                    an older commit to compare; SB_NO_BUILD=1 skips the build
# Ports 7880 (TCP) and 7882 (UDP) must be free. Needs no root.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${SB_BENCH_OUT:-target/bench}
SCPU=${SB_SERVER_CPU:-1}
TCPU=${SB_TOOL_CPU:-0}
DUR=${SB_DURATION:-15}
WARM=${SB_WARMUP:-5}
THREADS=${SB_MEDIA_THREADS:-1}
SERVER_BIN=${SB_SERVER_BIN:-target/release/switchboard}
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(B1 B4 B2 B3 B5)
mkdir -p "$OUT"

# separately: built together, the loadtest's dependency features would change the server's
# (scripts/test-all.sh says more), and this would measure another binary than users run
if [ -z "${SB_NO_BUILD:-}" ]; then
  cargo build --release --locked -p switchboard
  cargo build --release --locked -p switchboard-loadtest
fi

SERVER=
stop_server() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true; fi
  SERVER=
}
trap stop_server EXIT

# run NAME ARGS...: one scenario against a fresh server (so its memory figures start clean)
run() {
  local name=$1; shift
  echo "=== $name: $*" >&2
  # An older build has no --media-threads: pass it only when it is not 1.
  local threads=()
  [ "$THREADS" != 1 ] && threads=(--media-threads "$THREADS")
  local pin=(taskset -c "$SCPU") server_cpu=(--server-cpu "$SCPU")
  [ "$SCPU" = all ] && pin=() && server_cpu=()
  "${pin[@]}" "$SERVER_BIN" --dev "${threads[@]}" > "$OUT/server-$name.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 50); do
    curl -fsS http://127.0.0.1:7880/ > /dev/null 2>&1 && break
    sleep 0.2
  done
  timeout 1800 target/release/switchboard-loadtest run --api-key devkey --api-secret secret \
    --server-pid "$SERVER" "${server_cpu[@]}" --cpu "$TCPU" \
    --duration "$DUR" --warmup "$WARM" \
    --json "$OUT/$name.json" --plot "$OUT/$name.svg" "$@" | tee "$OUT/$name.md"
  # The server's own counters after the run (per media thread, dispatcher).
  curl -fsS http://127.0.0.1:7880/metrics > "$OUT/metrics-$name.txt" 2>/dev/null || true
  stop_server
}

for s in "${SCENARIOS[@]}"; do
  case "$s" in
    B1) run b1 --scenario B1 --publishers 10 --subscribers "${SB_B1_SWEEP:-25,50,100,150,200}" ;;
    B4) run b4 --scenario B4 --publishers 10 --subscribers "${SB_B4_CAPACITY:-150}" ;;
    B2) run b2 --scenario B2 --participants 4,8,12,16 ;;
    B3) run b3 --scenario B3 --subscribers "${SB_B3_SWEEP:-25,50,100,200}" ;;
    B5) run b5 --scenario B5 --participants 50 --storm 50 ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done
echo "tables, JSON and plots in $OUT/" >&2
