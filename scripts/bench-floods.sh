#!/usr/bin/env bash
# A well-behaved producer's latency during each flood, against an optimised vvgated: valid
# signed requests at a steady rate on a few keep-alive connections while, in turn, nothing
# (the baseline), 1,000 idle connections, slowloris heads (300 at 1 byte/s), a TLS handshake
# flood (garbage ClientHellos and handshakes without a client certificate), connections past
# `max_connections`, rounds of 950 connections against LimitNOFILE=1024 (prlimit) with
# `max_connections = 900`, and 10 MB bodies announced plus 1 MB bodies trickled. Prints per
# flood: requests sent, errors (transport errors and answers other than 202), p50/p99/max
# latency, the load average before and after, and what the flood did. The target is p99
# under 50 ms; this prints, it does not judge (the machine is shared).
#
# Also per flood, from the gateway over the measured window: connections that went on to a TLS
# handshake per second, connections closed before TLS per second (of which over
# `max_new_connections_per_second`), and the gateway's CPU use.
#
# usage: scripts/bench-floods.sh [SECONDS_PER_FLOOD (12)] [RATE (200)] [CONNECTIONS (4)] [FLOOD...]
# env:   PROFILE [bench-fast]  GATEWAY_CPU: pin vvgated to this CPU (taskset), e.g. 1
#        VVGATED_BIN: measure this vvgated instead of the one built here (A/B runs)
#        VVGATE_BENCH_GATEWAY_TOML: extra `[telemetry_gateway]` lines, `;`-separated, e.g.
#          "max_new_connections_per_second = 200;new_connection_burst = 200"
# Not part of CI (about 2 minutes). Needs prlimit (util-linux).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-bench-fast}
cargo build --profile "$PROFILE" -p vvgate --bins --locked --quiet
cargo build --profile "$PROFILE" -p vvgate-e2e --bin flood-bench --locked --quiet
R=$PWD/target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
export VVGATED_BIN=${VVGATED_BIN:-$R/vvgated} VVCTL_BIN=$R/vvctl
if [ -n "${GATEWAY_CPU:-}" ]; then
  # exec keeps the PID, so the harness still signals and inspects vvgated itself.
  WRAP=$(mktemp /tmp/vvgated-pinned.XXXXXX)
  trap 'rm -f "$WRAP"' EXIT
  printf '#!/bin/sh\nexec taskset -c %s %s "$@"\n' "$GATEWAY_CPU" "$VVGATED_BIN" >"$WRAP"
  chmod +x "$WRAP"
  export VVGATED_BIN=$WRAP
fi
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$R/flood-bench" "$@"
echo "== load $(cut -d' ' -f1-3 /proc/loadavg)"
