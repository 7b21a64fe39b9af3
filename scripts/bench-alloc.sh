#!/usr/bin/env bash
# Heap allocations and instructions per accepted request at steady state (keep-alive, valid
# requests), both printed:
#   1. vvgated built with the `alloc-count` feature (a counting wrapper of the system
#      allocator); `vvctl bench` reads the gateway's heap counters from /metrics before and
#      after the measured window and divides by the requests answered 202. All gateway
#      threads count (event loop and storage thread), so the figure includes the group
#      commit's share.
#   2. the same gateway under `valgrind --tool=callgrind`, instrumented only for the measured
#      window (`--instr-atstart=no`, then `callgrind_control -i on`, `-z`, `-d`): instructions
#      (Ir) per accepted request. Unlike wall time this is stable on a shared machine, so a
#      regression shows.
#
# The allocation count of the TLS/HTTP framing path alone (no check chain, no storage) is
# the test `cargo test -p vvgate --test framing_alloc` (0 expected for HTTP, rustls's two
# record buffers behind TLS).
#
# usage: scripts/bench-alloc.sh [SECONDS]   (default 5 measured seconds)
# env:   HEAP_CONNS ["1 8 32"] connection counts of the heap runs, one gateway each
#        CONNS [8]  connections of the callgrind run
#        REQUESTS [20000] pre-signed requests per run (signed before the run: keep their
#          signing time plus the run inside the gateway's clock skew window)
#        CALLGRIND [1]  WORK [a temp dir]
#        BIN [target/bench-fast]: take vvgated and vvctl from there instead of building
#          (to compare two builds in one run: BIN=/tmp/old scripts/bench-alloc.sh, then again)
# Not part of CI. Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
HEAP_CONNS=${HEAP_CONNS:-1 8 32}
CONNS=${CONNS:-8}
REQUESTS=${REQUESTS:-20000}
CALLGRIND=${CALLGRIND:-1}
WORK=${WORK:-$(mktemp -d /tmp/vvgate-bench-alloc.XXXXXX)}

if [ -z "${BIN:-}" ]; then
  # Optimised but without fat LTO, so the build stays short; the same profile every time.
  cargo build --profile bench-fast -p vvgate --features alloc-count --bins --locked --quiet
  R=$PWD/target/bench-fast
else
  R=$(cd "$BIN" && pwd)
fi
. scripts/dev-env.sh
mkdir -p "$WORK" && cd "$WORK"
dev_dir "$R/vvgated"
load_config dev/bench.toml '\nspool_max_events = 100000000\nspool_max_bytes = 68719476736'

PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null' EXIT
start() { # start [wrapper...]: the gateway, waits for its ready line
  rm -rf dev/state && mkdir -p dev/state
  sed -i 's|^state_dir = .*|state_dir = "state"|' dev/bench.toml
  "$@" "$R/vvgated" --config dev/bench.toml >gw.out 2>gw.log &
  PID=$!
  for _ in $(seq 600); do grep -q ready gw.out 2>/dev/null && break; sleep 0.1; done
  grep -q ready gw.out || { echo "vvgated did not start:"; cat gw.log; exit 1; }
  ADDR=$(grep -o 'producer=[0-9.:]*' gw.out | cut -d= -f2)
  OPS=$(grep -o 'ops=[0-9.:]*' gw.out | cut -d= -f2)
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); binaries: $R"
for c in $HEAP_CONNS; do
  start
  echo "== heap: $c keep-alive connections, ${DUR}s measured after 2s warm-up"
  "$R/vvctl" bench --config dev/bench.toml --target "$ADDR" --ops "$OPS" "${PRODUCER[@]}" -c "$c" -d "$DUR" --warmup 2 --requests "$REQUESTS" | tee "bench-$c.txt"
  stop
done

if [ "$CALLGRIND" = 1 ]; then
  command -v valgrind >/dev/null || { echo "valgrind is not installed"; exit 1; }
  rm -f "$WORK"/callgrind.out.*
  start valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out.%p" -q
  # Warm up uncounted, then count exactly one fixed batch of requests.
  "$R/vvctl" bench --config dev/bench.toml --target "$ADDR" "${PRODUCER[@]}" -c "$CONNS" -d 2 --warmup 1 --requests 2000 >/dev/null || true
  callgrind_control -i on "$PID" >/dev/null 2>&1
  callgrind_control -z "$PID" >/dev/null 2>&1
  "$R/vvctl" bench --config dev/bench.toml --target "$ADDR" "${PRODUCER[@]}" -c "$CONNS" -d "$DUR" --warmup 0 --requests 3000 --json >cg.json || true
  callgrind_control -d "$PID" >/dev/null 2>&1
  callgrind_control -i off "$PID" >/dev/null 2>&1
  CGPID=$PID
  stop
  # The dump asked for above (part 1) holds what was counted since the zeroing.
  IR=$(awk '/^summary:/ {print $2}' "$WORK/callgrind.out.$CGPID.1")
  N=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["accepted"])' cg.json)
  echo "== callgrind: $IR instructions for $N accepted requests (all gateway threads)"
  python3 -c "import sys; ir,n=int(sys.argv[1]),int(sys.argv[2]); print(f'instructions per accepted request: {ir/n:,.0f}')" "$IR" "$N"
fi
echo "== work directory: $WORK"
