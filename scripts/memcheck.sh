#!/usr/bin/env bash
# vvgated under valgrind memcheck while it answers real requests: accepted telemetry on
# keep-alive mutual-TLS connections (`vvctl bench` with a fixed request count) with bad
# requests of every kind mixed in (`--bad-percent`: bad signature, stale timestamp, replay,
# unknown identity, schema failure; scripts/bad-requests.py: wrong tenant, malformed JSON,
# oversized body, malformed HTTP, missing headers, forbidden header byte, a TLS handshake
# without client certificate), then SIGTERM.
#
# Two runs of different lengths (SHORT and LONG accepted requests), each on a fresh state
# directory; for each it prints the answers per status, memcheck's error count and the
# definitely / indirectly / possibly lost bytes. "No leak growth" means definitely and
# indirectly lost bytes of the long run are not above the short run's: a leak per request or
# per connection would scale with the load.
#
# usage: scripts/memcheck.sh            exit status 0 when both runs are clean and nothing grew
# env:   SHORT [1000] LONG [4000] accepted requests per run (plus the bad ones)
#        BAD_PERCENT [5] of the bench's requests; BAD_EACH [10] of each other kind per 1000
#        ROUND [1000] accepted requests per vvctl bench round (signed just before it)
#        PROFILE [bench-fast] or dev (cargo profile of vvgated and vvctl)
#        WORK [a temp dir]
# Not part of CI (a few minutes). Needs valgrind, python3-cryptography.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHORT=${SHORT:-1000}
LONG=${LONG:-4000}
BAD_PERCENT=${BAD_PERCENT:-5}
BAD_EACH=${BAD_EACH:-10}
ROUND=${ROUND:-1000}
PROFILE=${PROFILE:-bench-fast}
WORK=${WORK:-$(mktemp -d /tmp/vvgate-memcheck.XXXXXX)}
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 1; }

cargo build --profile "$PROFILE" -p vvgate --bins --locked --quiet
R=$ROOT/target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
. scripts/dev-env.sh
mkdir -p "$WORK" && cd "$WORK"
# The dev defaults: PKI, keys and configuration as `vvgated --dev` writes them. Only what a
# load of a few thousand requests needs differs: no rate limit in the way, free ports.
dev_dir "$R/vvgated"
load_config dev/memcheck.toml "" -e 's|^state_dir = .*|state_dir = "state"|'

PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null' EXIT

# run NAME ACCEPTED: one gateway under memcheck; leaves NAME.vg (valgrind's log) and NAME.*.
run() {
  local name=$1 n=$2
  rm -rf dev/state && mkdir -p dev/state
  valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99 \
    --suppressions="$ROOT/scripts/memcheck.supp" \
    --num-callers=30 --log-file="$name.vg" "$R/vvgated" --config dev/memcheck.toml >"$name.out" 2>"$name.log" &
  PID=$!
  for _ in $(seq 1800); do grep -q ready "$name.out" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$name.out" || { echo "vvgated did not start under valgrind:"; tail "$name.log" "$name.vg"; exit 1; }
  local addr
  addr=$(grep -o 'producer=[0-9.:]*' "$name.out" | cut -d= -f2)
  # The accepted load, with the bench's bad kinds mixed in, in rounds of ROUND accepted
  # requests (each round's requests are signed just before it, and the gateway is slow under
  # valgrind: a round must stay inside the 30 s clock skew window); then the other bad kinds.
  : >"$name.bench.json"
  local left=$n
  while [ "$left" -gt 0 ]; do
    local r=$((left < ROUND ? left : ROUND))
    left=$((left - r))
    "$R/vvctl" bench --config dev/memcheck.toml --target "$addr" "${PRODUCER[@]}" -c 4 -d 1800 --warmup 0 \
      --requests $((r * 100 / (100 - BAD_PERCENT))) --bad-percent "$BAD_PERCENT" --json >>"$name.bench.json" 2>"$name.bench.log" ||
      echo "  (vvctl bench reported a failure: $(tail -1 "$name.bench.log"))"
  done
  python3 "$ROOT/scripts/bad-requests.py" "$addr" "$P" "$ROOT/daemon/data/sample-event.json" \
    $((BAD_EACH * n / 1000)) >"$name.bad.json"
  kill -TERM "$PID"
  local rc=0
  wait "$PID" || rc=$?
  PID=
  echo "$rc" >"$name.rc"
}

# lost KIND FILE: bytes of a leak kind in valgrind's summary (0 if absent).
lost() { grep -o "$1 lost: [0-9,]* bytes" "$2" | tail -1 | tr -dc '0-9' | sed 's/^$/0/'; }

report() {
  local name=$1
  python3 - "$name" <<'PY'
import json, sys
name = sys.argv[1]
from collections import Counter
rounds = [json.loads(l) for l in open(f"{name}.bench.json") if l.strip()]
statuses = Counter()
for b in rounds:
    statuses.update(b["statuses"])
print(f"  bench: {sum(b['requests'] for b in rounds)} answered in {len(rounds)} round(s) of 4 keep-alive connections, {sum(b['duration_s'] for b in rounds):.1f} s, statuses {dict(sorted(statuses.items()))}, transport errors {sum(b['errors'] for b in rounds)}, {sum(b['bad_mixed'] for b in rounds)} bad mixed in")
valid = sum(b["requests"] - b["bad_mixed"] for b in rounds)
accepted = statuses.get("202", 0)
print(f"  valid requests accepted: {accepted} of {valid}")
open(f"{name}.accepted", "w").write("ok" if accepted == valid else "short")
for kind, counts in sorted(json.load(open(f"{name}.bad.json")).items()):
    print(f"  {kind:24} {counts}")
PY
  local errors
  errors=$(grep -o 'ERROR SUMMARY: [0-9,]* errors' "$name.vg" | tail -1 | tr -dc '0-9')
  echo "  memcheck: ${errors:-?} errors ($(grep -o 'suppressed: [0-9,]* from [0-9]*' "$name.vg" | tail -1) known false positives of ring's AES-GCM, scripts/memcheck.supp); definitely lost $(lost definitely "$name.vg") B, indirectly lost $(lost indirectly "$name.vg") B, possibly lost $(lost possibly "$name.vg") B; vvgated exit status $(cat "$name.rc")"
}

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); binaries: $R"
for spec in "short $SHORT" "long $LONG"; do
  set -- $spec
  echo "== run $1: $2 accepted requests under memcheck"
  run "$1" "$2"
  report "$1"
done
echo "== load $(cut -d' ' -f1-3 /proc/loadavg); valgrind logs in $WORK (short.vg, long.vg)"

fail=0
for name in short long; do
  if [ "$(cat "$name.rc")" != 0 ]; then echo "FAIL: $name run: vvgated exited $(cat "$name.rc") (99: memcheck errors or definite leaks)"; fail=1; fi
  if grep -q '"5[0-9][0-9]"' "$name.bench.json" "$name.bad.json"; then echo "FAIL: $name run: 5xx answers"; fail=1; fi
  if [ "$(cat "$name.accepted")" != ok ]; then echo "FAIL: $name run: not every valid request was accepted"; fail=1; fi
done
for kind in definitely indirectly; do
  s=$(lost "$kind" short.vg) l=$(lost "$kind" long.vg)
  echo "no leak growth, $kind lost: short $s B, long $l B"
  if [ "$l" -gt "$s" ]; then echo "FAIL: $kind lost grew with the load"; fail=1; fi
done
exit "$fail"
