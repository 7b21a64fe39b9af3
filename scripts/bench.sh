#!/usr/bin/env bash
# Benchmark vvgated the way the ingest issue measures it: the gateway pinned to one core,
# `vvctl bench` on the other, 32 keep-alive mTLS connections of pre-signed valid requests,
# durable group commit on; then the same with 1,000 extra idle connections for RSS.
#
# usage: scripts/bench.sh [SECONDS]        (default 10 measured seconds per run)
# env:   CONNS [32]  IDLE [1000]  RUNS [2]  WORK [a temp dir]
#        QUEUE=nats: forward to a real nats-server (TLS, JetStream on disk) pinned to core 0,
#        and report PubAcks/s and how long the spool takes to drain after the load.
#        BENCH_ARGS: extra arguments of `vvctl bench` in VARIANTS runs (e.g. --requests N when
#        pre-signing on a loaded core would take longer than the clock-skew window).
#        VARIANTS='signature_verification = "single";signature_verification = "batch"': A/B
#        of configurations (variants separated by ';', lines within one by ', ', added to
#        [telemetry_gateway]): RUNS rounds, one fresh gateway per variant and round,
#        interleaved (A B A B ...), each followed by its signature and commit counters.
#        VVGATED: the gateway binary to measure (default: this tree's release build), e.g. an
#        older build to compare against in the same hour.
#        BIN: take vvctl (and the default vvgated) from this directory instead of building the
#        release binaries, e.g. two bench-fast builds compared in alternating runs.
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

if [ -z "${BIN:-}" ]; then
  cargo build --release --bins --locked --quiet
  R=$PWD/target/release
else
  R=$(cd "$BIN" && pwd)
fi
GATED=$(readlink -f "${VVGATED:-$R/vvgated}")
cd "$WORK"
rm -rf dev
# Create the dev configuration and PKI, then open it up for load.
timeout 5 "$GATED" --dev --dev-dir dev >/dev/null 2>&1 || true
sed -i 's/^mode = "dev"$/mode = "dev"\nrate_limit_per_minute = 1000000000\nspool_max_events = 100000000\nspool_max_bytes = 68719476736/' dev/vvgate.toml
rm -f dev/vvgate.redb
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
if [ "${QUEUE:-spool}" = nats ]; then
  P=$PWD/dev/pki
  NPORT=$((20000 + RANDOM % 20000))
  issue() { # NAME CN EXT
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" -keyout "$P/$1.key" -out "$P/$1.csr" 2>/dev/null
    openssl x509 -req -in "$P/$1.csr" -CA "$P/ca.pem" -CAkey "$P/ca.key" -set_serial "0x$(openssl rand -hex 8)" -days 2 -extfile <(printf '%s' "$3") -out "$P/$1.pem" 2>/dev/null
    chmod 600 "$P/$1.key"
  }
  issue nats-server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
  issue nats-client vvgate-gateway "extendedKeyUsage=clientAuth"
  printf 'vvgate:bench-pass' >"$P/nats.creds"; chmod 600 "$P/nats.creds"
  mkdir -p nats
  cat >nats/nats.conf <<EOF2
listen: 127.0.0.1:$NPORT
max_payload: 4MB
jetstream { store_dir: "$PWD/nats/js" }
tls { cert_file: "$P/nats-server.pem", key_file: "$P/nats-server.key", ca_file: "$P/ca.pem", verify: true }
authorization { user: vvgate, password: "bench-pass" }
EOF2
  taskset -c 0 nats-server -c nats/nats.conf >nats/nats.log 2>&1 &
  PIDS+=($!)
  sed -i "s|^mode = \"dev\"$|mode = \"dev\"\nqueue_backend = \"nats\"\nnats_url = \"tls://127.0.0.1:$NPORT\"|" dev/vvgate.toml
  printf '\n[nats]\nca_path = "pki/ca.pem"\ncert_path = "pki/nats-client.pem"\nkey = "file:pki/nats-client.key"\ncredentials_file = "pki/nats.creds"\ncreate_stream = true\n' >>dev/vvgate.toml
  for _ in $(seq 50); do grep -q "Server is ready" nats/nats.log && break; sleep 0.1; done
fi
start_gateway() { # [CONFIG]
  rm -f gateway.out
  taskset -c 1 "$GATED" --config "${1:-dev/vvgate.toml}" >gateway.out 2>gateway.log &
  GW=$!
  PIDS+=($GW)
  for _ in $(seq 50); do grep -q ready gateway.out 2>/dev/null && break; sleep 0.1; done
  grep -q ready gateway.out || { echo "vvgated did not start:"; cat gateway.log; exit 1; }
}
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load $(cut -d' ' -f1-3 /proc/loadavg), queue ${QUEUE:-spool}"
if [ -n "${VARIANTS:-}" ]; then
  # A/B: for each run, one fresh gateway per variant, interleaved (A B A B ...).
  OPS=$(sed -n '/^\[ops\]/,/^listen/s/^listen = "\(.*\)"/\1/p' dev/vvgate.toml)
  IFS=';' read -r -a VARS <<<"$VARIANTS"
  for i in $(seq "$RUNS"); do
    for v in $(seq 0 $((${#VARS[@]} - 1))); do
      lines=$(printf '%s' "${VARS[$v]}" | sed 's/, */\n/g')
      awk -v extra="$lines" '{print} /^mode = "dev"$/ {gsub(/\\n/, "\n", extra); print extra}' dev/vvgate.toml >"dev/vvgate-$v.toml"
      start_gateway "dev/vvgate-$v.toml"
      echo "== run $i, variant $v [${VARS[$v]}]: $CONNS connections, ${DUR}s"
      # shellcheck disable=SC2086 # BENCH_ARGS: extra words for vvctl bench
      taskset -c 0 "$R/vvctl" bench --dev dev -c "$CONNS" -d "$DUR" --warmup 2 ${BENCH_ARGS:-}
      curl -s "http://$OPS/metrics" | grep -E '^vvgate_(signature|storage_commi)' | tr '\n' ' '; echo
      kill "$GW"; wait "$GW" 2>/dev/null || true
    done
  done
  echo "== work directory: $WORK"
  exit 0
fi
start_gateway
for i in $(seq "$RUNS"); do
  echo "== run $i: $CONNS connections, ${DUR}s"
  taskset -c 0 "$R/vvctl" bench --dev dev -c "$CONNS" -d "$DUR" --warmup 2
done
echo "== $IDLE idle connections + $CONNS busy"
taskset -c 0 "$R/vvctl" bench --dev dev -c "$CONNS" -d 5 --warmup 1 --idle "$IDLE"
echo "== work directory: $WORK"
