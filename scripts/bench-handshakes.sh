#!/usr/bin/env bash
# TLS key in memory (file key store) against TLS key in a SoftHSM token, in one run: two
# gateways from the same dev PKI and configuration, one with `[keystore] backend = "file"`,
# one with `backend = "pkcs11"` on a throwaway SoftHSM token provisioned with `vvctl keys`
# (init, generate, csr; the CSR signed by the dev CA). Both run pinned to core 1, `vvctl bench`
# on core 0, alternating A B A B:
#   - `vvctl bench --handshakes`: full mutual-TLS handshakes (+ GET /healthz) per second,
#   - `vvctl bench`: valid signed requests per second on keep-alive connections.
#
# usage: scripts/bench-handshakes.sh [SECONDS]     (default 10 measured seconds per run)
# env:   RUNS [2]  HS_CONNS [4]  CONNS [32]  WORK [a temp dir]
#        VVGATE_PKCS11_MODULE [/usr/lib/softhsm/libsofthsm2.so]
# Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
RUNS=${RUNS:-2}
HS_CONNS=${HS_CONNS:-4}
CONNS=${CONNS:-32}
MODULE=${VVGATE_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
WORK=${WORK:-$(mktemp -d /tmp/vvgate-bench-hs.XXXXXX)}

cargo build --release --bins --locked --quiet
R=$PWD/target/release
cd "$WORK"
rm -rf dev hsm file.toml hsm.toml

# The dev configuration and PKI (file keys), opened up for load.
timeout 5 "$R/vvgated" --dev --dev-dir dev >/dev/null 2>&1 || true
rm -f dev/vvgate.redb
P=$PWD/dev/pki

# A throwaway SoftHSM token with the gateway's keys, made by the ceremonies.
mkdir -p hsm/tokens hsm/transcripts
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$PWD/hsm/tokens" >hsm/softhsm2.conf
export SOFTHSM2_CONF=$PWD/hsm/softhsm2.conf
O=(--module "$MODULE" --token-label vvgate-bench --officer-a Security --share-a hsm/share-a.txt --officer-b Platform --share-b hsm/share-b.txt --transcript-dir hsm/transcripts)
"$R/vvctl" keys init "${O[@]}" --pin-file hsm/hsm-pin --no-audit >/dev/null
"$R/vvctl" keys generate "${O[@]}" --purpose tls --purpose checkpoint --purpose feedback --purpose kek --no-audit >/dev/null
"$R/vvctl" keys csr "${O[@]}" --cn localhost --san localhost --san 127.0.0.1 --out hsm/server.csr --no-audit >/dev/null
openssl x509 -req -in hsm/server.csr -CA "$P/ca.pem" -CAkey "$P/ca.key" -set_serial "0x$(openssl rand -hex 8)" -days 2 \
  -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n') -out hsm/server.pem 2>/dev/null

# Opened up for load; the new-connection rate cap is lifted, since this measures the ceiling.
open_up='s/^mode = "dev"$/mode = "dev"\nmax_new_connections_per_second = 1000000\nrate_limit_per_minute = 1000000000\nspool_max_events = 100000000\nspool_max_bytes = 68719476736/'
# Both listeners on free ports; state (and the control socket) per gateway.
sed -e "$open_up" -e 's|^state_dir = "."$|state_dir = "state-file"|' -e 's|^listen = .*|listen = "127.0.0.1:0"|' \
  dev/vvgate.toml >dev/file.toml
sed -e "$open_up" -e 's|^state_dir = "."$|state_dir = "state-hsm"|' -e 's|^listen = .*|listen = "127.0.0.1:0"|' \
  -e 's|"file:pki/feedback.pem"|"pkcs11:0301"|' -e 's|"file:pki/evidence-kek.bin"|"pkcs11:0401"|' \
  -e 's|^server_cert_path = .*|server_cert_path = "../hsm/server.pem"|' -e 's|^server_key = .*|server_key = "pkcs11:0101"|' \
  -e 's|^checkpoint_key = .*|checkpoint_key = "pkcs11:0201"|' \
  -e "s|^backend = \"file\"\$|backend = \"pkcs11\"\nmodule = \"$MODULE\"\ntoken_label = \"vvgate-bench\"\npin_file = \"../hsm/hsm-pin\"|" \
  dev/vvgate.toml >dev/hsm.toml

PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
declare -A ADDR
for g in file hsm; do
  taskset -c 1 "$R/vvgated" --config "dev/$g.toml" >"$g.out" 2>"$g.log" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q ready "$g.out" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$g.out" || { echo "vvgated ($g) did not start:"; cat "$g.log"; exit 1; }
  ADDR[$g]=$(grep -o 'producer=[0-9.:]*' "$g.out" | cut -d= -f2)
done
PRODUCER=(--ca "$P/ca.pem" --cert "$P/producer.pem" --key "$P/producer.key" --signing-key "$P/producer-signing.seed")
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== gateways: file ${ADDR[file]} (TLS key in memory), hsm ${ADDR[hsm]} (TLS key in SoftHSM: $MODULE)"
for i in $(seq "$RUNS"); do
  for g in file hsm; do
    echo "== run $i, $g: handshakes, $HS_CONNS connection threads, ${DUR}s"
    taskset -c 0 "$R/vvctl" bench --config "dev/$g.toml" --target "${ADDR[$g]}" "${PRODUCER[@]}" --handshakes -c "$HS_CONNS" -d "$DUR" --warmup 1
  done
done
for i in $(seq "$RUNS"); do
  for g in file hsm; do
    echo "== run $i, $g: keep-alive requests, $CONNS connections, ${DUR}s"
    taskset -c 0 "$R/vvctl" bench --config "dev/$g.toml" --target "${ADDR[$g]}" "${PRODUCER[@]}" -c "$CONNS" -d "$DUR" --warmup 2
  done
done
echo "== work directory: $WORK"
