#!/usr/bin/env bash
# Soak: steady valid load at about 80 % of the measured peak for 30 minutes, with 2 % bad
# requests of every kind mixed in (vvctl bench --bad-percent), forwarded to a real nats-server
# with JetStream over mutual TLS, so the spool drains and nonces expire as in production.
# Prints, per minute: throughput, gateway RSS (KiB), open descriptors, redb file size (bytes),
# spool depth;
# at the end: throughput drift between the first and last 5 minutes, RSS and descriptor
# growth, the largest redb file, and `vvctl audit verify`.
#
# usage: scripts/soak.sh [MINUTES]      (default 30)
# env:   CONNS [16]  RATE [80 % of a 10 s peak measurement]  WORK [a temp dir]
#        PEAK_REQUESTS [15,000 per second of the peak run]
#        PROFILE [bench-fast] (cargo profile of the binaries; `dev` for a quick trial)
# Not part of CI. Needs nats-server (apt), openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
CONNS=${CONNS:-16}
WORK=${WORK:-$(mktemp -d /tmp/vvgate-soak.XXXXXX)}

PROFILE=${PROFILE:-bench-fast}
cargo build --profile "$PROFILE" -p vvgate --bins --locked --quiet
R=$PWD/target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
. scripts/dev-env.sh
mkdir -p "$WORK" && cd "$WORK"
rm -rf nats
dev_dir "$R/vvgated"

# nats-server with JetStream and mutual TLS (server certificate from the dev CA).
mkdir -p nats
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout nats/server.key -out nats/server.csr 2>/dev/null
openssl x509 -req -in nats/server.csr -CA "$P/ca.pem" -CAkey "$P/ca.key" -set_serial "0x$(openssl rand -hex 8)" -days 2 \
  -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n') -out nats/server.pem 2>/dev/null
NPORT=$(free_port)
cat >nats/nats.conf <<CONF
listen: 127.0.0.1:$NPORT
max_payload: 4MB
jetstream { store_dir: "$WORK/nats/js" }
tls { cert_file: "$WORK/nats/server.pem", key_file: "$WORK/nats/server.key", ca_file: "$P/ca.pem", verify: true, timeout: 5 }
authorization { user: vvgate, password: "soak-pass" }
CONF
printf 'vvgate:soak-pass' >nats/creds && chmod 600 nats/creds

# Skew 300 s: each minute's requests are signed before the minute starts.
load_config dev/soak.toml '\nallowed_clock_skew_seconds = 300\nqueue_backend = "nats"\nnats_url = "tls:\/\/127.0.0.1:'"$NPORT"'"' \
  -e 's|^state_dir = .*|state_dir = "state"|'
cat >>dev/soak.toml <<CONF

[nats]
ca_path = "pki/ca.pem"
cert_path = "pki/producer.pem"
key = "file:pki/producer.key"
credentials_file = "../nats/creds"
create_stream = true
CONF

NPID=; GPID=
trap '[ -n "$GPID" ] && kill "$GPID" 2>/dev/null; [ -n "$NPID" ] && kill "$NPID" 2>/dev/null; wait 2>/dev/null' EXIT
taskset -c 0 nats-server -c nats/nats.conf >nats/out.log 2>&1 &
NPID=$!
for _ in $(seq 100); do grep -q "Server is ready" nats/out.log && break; sleep 0.1; done
taskset -c 1 "$R/vvgated" --config dev/soak.toml >gw.out 2>gw.log &
GPID=$!
for _ in $(seq 300); do grep -q ready gw.out 2>/dev/null && break; sleep 0.1; done
grep -q ready gw.out || { echo "vvgated did not start:"; cat gw.log; exit 1; }
ADDR=$(grep -o 'producer=[0-9.:]*' gw.out | cut -d= -f2)
OPS=$(grep -o 'ops=[0-9.:]*' gw.out | cut -d= -f2)
PRODUCER=(--config dev/soak.toml --target "$ADDR" "${PRODUCER[@]}")
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -z "${RATE:-}" ]; then
  PEAK=$(taskset -c 0 "$R/vvctl" bench "${PRODUCER[@]}" -c "$CONNS" -d 10 --warmup 2 --requests "${PEAK_REQUESTS:-0}" --json | json '["rps"]')
  RATE=$(python3 -c "print(round($PEAK * 0.8))")
  echo "== peak $PEAK req/s; soaking at $RATE req/s with 2 % bad requests for $MINUTES min"
fi

rss() { awk '/VmRSS/ {print $2}' "/proc/$GPID/status"; }
fds() { ls "/proc/$GPID/fd" | wc -l; }
dbsize() { stat -c %s dev/state/vvgate.redb; }
: >soak.tsv
for m in $(seq "$MINUTES"); do
  out=$(taskset -c 0 "$R/vvctl" bench "${PRODUCER[@]}" -c "$CONNS" -d 58 --warmup 0 --rate "$RATE" \
    --requests "$(python3 -c "print(int($RATE * 60))")" --bad-percent 2 --json)
  rps=$(echo "$out" | json '["rps"]')
  spool=$(curl -s "http://$OPS/metrics" | awk '/^vvgate_spool_events / {print $2}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$rps" "$(rss)" "$(fds)" "$(dbsize)" "$spool" | tee -a soak.tsv
done
echo "== audit verify"
"$R/vvctl" audit verify --config dev/soak.toml
python3 - "$MINUTES" <<'PY'
import sys
rows = [l.split('\t') for l in open('soak.tsv').read().split('\n') if l]
m = int(sys.argv[1]); k = min(5, max(1, m // 2))
first = sum(float(r[1]) for r in rows[:k]) / k
last = sum(float(r[1]) for r in rows[-k:]) / k
rss = [int(r[2]) for r in rows]; fds = [int(r[3]) for r in rows]; db = [int(r[4]) for r in rows]
print(f"throughput  first {k} min {first:.0f} req/s, last {k} min {last:.0f} req/s, drift {100*(last-first)/first:+.1f} %")
print(f"RSS         {rss[0]/1024:.1f} -> {rss[-1]/1024:.1f} MiB (max {max(rss)/1024:.1f})")
print(f"descriptors {fds[0]} -> {fds[-1]} (max {max(fds)})")
print(f"redb file   {db[0]/2**20:.1f} -> {db[-1]/2**20:.1f} MiB (max {max(db)/2**20:.1f})")
PY
echo "== work directory: $WORK"
