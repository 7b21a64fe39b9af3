#!/usr/bin/env bash
# Heap allocations and instructions per accepted request at steady state (keep-alive, valid
# requests), both printed:
#   1. vvgated built with the `alloc-count` feature (a counting wrapper of the system
#      allocator); `vvctl bench` reads the gateway's heap counters from /metrics before and
#      after the measured window and divides by the requests answered 202. All gateway
#      threads count (event loop and storage thread), so the figure includes the group
#      commit's share.
#   2. the same gateway under `valgrind --tool=callgrind` with collection switched on only for
#      the measured window (callgrind_control): instructions (Ir) per accepted request. Unlike
#      wall time this is stable on a shared machine, so a regression shows.
#
# usage: scripts/bench-alloc.sh [SECONDS]   (default 5 measured seconds)
# env:   CONNS [8]  CALLGRIND [1]  WORK [a temp dir]
# Not part of CI. Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
CONNS=${CONNS:-8}
CALLGRIND=${CALLGRIND:-1}
WORK=${WORK:-$(mktemp -d /tmp/vvgate-bench-alloc.XXXXXX)}

# Optimised but without fat LTO, so the build stays short; the same profile every time.
cargo build --profile bench-fast -p vvgate --features alloc-count --bins --locked --quiet
R=$PWD/target/bench-fast
mkdir -p "$WORK" && cd "$WORK"
rm -rf dev
timeout 5 "$R/vvgated" --dev --dev-dir dev >/dev/null 2>&1 || true
rm -f dev/vvgate.redb
P=$PWD/dev/pki
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sed -e 's/^mode = "dev"$/mode = "dev"\nrate_limit_per_minute = 1000000000\nspool_max_events = 100000000\nspool_max_bytes = 68719476736/' \
  -e 's|^listen = "127.0.0.1:8443"|listen = "127.0.0.1:0"|' -e "s|^listen = \"127.0.0.1:9464\"|listen = \"127.0.0.1:$(free_port)\"|" \
  dev/vvgate.toml >dev/bench.toml
PRODUCER=(--ca "$P/ca.pem" --cert "$P/producer.pem" --key "$P/producer.key" --signing-key "$P/producer-signing.seed")

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

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
start
echo "== heap: $CONNS keep-alive connections, ${DUR}s measured after 2s warm-up"
"$R/vvctl" bench --config dev/bench.toml --target "$ADDR" --ops "$OPS" "${PRODUCER[@]}" -c "$CONNS" -d "$DUR" --warmup 2 | tee bench.txt
stop

if [ "$CALLGRIND" = 1 ]; then
  command -v valgrind >/dev/null || { echo "valgrind is not installed"; exit 1; }
  start valgrind --tool=callgrind --collect-atstart=no --callgrind-out-file="$WORK/callgrind.out.%p" -q
  # Warm up uncounted, then count exactly one fixed batch of requests.
  "$R/vvctl" bench --config dev/bench.toml --target "$ADDR" "${PRODUCER[@]}" -c "$CONNS" -d 2 --warmup 1 >/dev/null || true
  callgrind_control -z "$PID" >/dev/null
  callgrind_control -i on "$PID" >/dev/null
  "$R/vvctl" bench --config dev/bench.toml --target "$ADDR" "${PRODUCER[@]}" -c "$CONNS" -d "$DUR" --warmup 0 --json >cg.json || true
  callgrind_control -i off "$PID" >/dev/null
  callgrind_control -d "$PID" >/dev/null
  stop
  OUT=$(ls -t "$WORK"/callgrind.out.* | head -1)
  IR=$(callgrind_annotate "$OUT" 2>/dev/null | grep -m1 'PROGRAM TOTALS' | tr -d ',' | awk '{print $1}')
  N=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["accepted"])' cg.json)
  echo "== callgrind: $IR instructions for $N accepted requests (all gateway threads)"
  python3 -c "import sys; ir,n=int(sys.argv[1]),int(sys.argv[2]); print(f'instructions per accepted request: {ir/n:,.0f}')" "$IR" "$N"
fi
echo "== work directory: $WORK"
