#!/usr/bin/env bash
# Benchmark vvgated the way the ingest issue measures it: the gateway pinned to one core,
# `vvctl bench` on the other, 32 keep-alive mTLS connections of pre-signed valid requests,
# durable group commit on; then the same with 1,000 extra idle connections for RSS.
#
# usage: scripts/bench.sh [SECONDS]        (default 10 measured seconds per run)
# env:   CONNS [32]  IDLE [1000]  RUNS [2]  WORK [a temp dir]
# Each run prints its figures, including the fixed reference of the run (ring's Ed25519
# verification of the same request on this machine, now) so runs on a noisy, shared machine
# can be compared by ratio. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${CONNS:-32}
IDLE=${IDLE:-1000}
RUNS=${RUNS:-2}
WORK=${WORK:-$(mktemp -d /tmp/vvgate-bench.XXXXXX)}

cargo build --release --bins --locked --quiet
R=$PWD/target/release
cd "$WORK"
rm -rf dev
# Create the dev configuration and PKI, then open it up for load.
timeout 5 "$R/vvgated" --dev --dev-dir dev >/dev/null 2>&1 || true
sed -i 's/^mode = "dev"$/mode = "dev"\nrate_limit_per_minute = 1000000000\nspool_max_events = 100000000\nspool_max_bytes = 68719476736/' dev/vvgate.toml
rm -f dev/vvgate.redb
taskset -c 1 "$R/vvgated" --config dev/vvgate.toml >gateway.out 2>gateway.log &
GW=$!
trap 'kill $GW 2>/dev/null; wait $GW 2>/dev/null' EXIT
for _ in $(seq 50); do grep -q ready gateway.out 2>/dev/null && break; sleep 0.1; done
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$RUNS"); do
  echo "== run $i: $CONNS connections, ${DUR}s"
  taskset -c 0 "$R/vvctl" bench --dev dev -c "$CONNS" -d "$DUR" --warmup 2
done
echo "== $IDLE idle connections + $CONNS busy"
taskset -c 0 "$R/vvctl" bench --dev dev -c "$CONNS" -d 5 --warmup 1 --idle "$IDLE"
echo "== work directory: $WORK"
