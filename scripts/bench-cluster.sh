#!/usr/bin/env bash
# What cluster-wide replay protection costs: the same load against one gateway with
# nonce_backend = "redb" and with nonce_backend = "jetstream_kv" (a create-only key per request
# in a KV bucket on the same nats-server), interleaved A B A B in one run. The gateway is pinned
# to core 1, nats-server and `vvctl bench` to core 0; both backends forward to the same
# JetStream server, so the difference is the bucket (a read at step 15, the create, and the
# second group commit of the claim). Prints each run's figures and the machine load.
#
# usage: scripts/bench-cluster.sh [SECONDS]   (default 10 measured seconds per run)
# env:   CONNS [32]  RUNS [2]  WORK [a temp dir]
# Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${CONNS:-32}
RUNS=${RUNS:-2}
WORK=${WORK:-$(mktemp -d /tmp/vvgate-bench-cluster.XXXXXX)}

cargo build --release --bins --locked --quiet
R=$PWD/target/release
cd "$WORK"
rm -rf dev
timeout 5 "$R/vvgated" --dev --dev-dir dev >/dev/null 2>&1 || true
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
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
taskset -c 0 nats-server -c nats/nats.conf >nats/nats.log 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do grep -q "Server is ready" nats/nats.log && break; sleep 0.1; done
sed -i "s|^mode = \"dev\"$|mode = \"dev\"\nrate_limit_per_minute = 1000000000\nspool_max_events = 100000000\nspool_max_bytes = 68719476736\nqueue_backend = \"nats\"\nnats_url = \"tls://127.0.0.1:$NPORT\"|" dev/vvgate.toml
printf '\n[nats]\nca_path = "pki/ca.pem"\ncert_path = "pki/nats-client.pem"\nkey = "file:pki/nats-client.key"\ncredentials_file = "pki/nats.creds"\ncreate_stream = true\n' >>dev/vvgate.toml
cp dev/vvgate.toml dev/redb.toml
sed "s|^mode = \"dev\"$|mode = \"dev\"\nnonce_backend = \"jetstream_kv\"|" dev/vvgate.toml >dev/kv.toml
printf '\n[cluster]\nappliance_id = "bench-a"\nreplicas = 1\ncreate_bucket = true\n' >>dev/kv.toml

run() { # BACKEND
  rm -f dev/vvgate.redb
  cp "dev/$1.toml" dev/vvgate.toml
  taskset -c 1 "$R/vvgated" --config dev/vvgate.toml >gateway.out 2>gateway.log &
  local gw=$!
  for _ in $(seq 80); do grep -q ready gateway.out 2>/dev/null && break; sleep 0.1; done
  grep -q ready gateway.out || { echo "vvgated did not start:"; cat gateway.log; exit 1; }
  echo "== nonce_backend $1: $CONNS connections, ${DUR}s, load $(cut -d' ' -f1-3 /proc/loadavg)"
  taskset -c 0 "$R/vvctl" bench --dev dev -c "$CONNS" -d "$DUR" --warmup 2 || true
  kill "$gw"; wait "$gw" 2>/dev/null || true
  rm -f gateway.out
}
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$RUNS"); do
  run redb
  run kv
done
echo "== work directory: $WORK"
