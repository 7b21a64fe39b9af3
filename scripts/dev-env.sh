# Sourced by the load scripts (bench-alloc.sh, memcheck.sh, soak.sh): the dev directory that
# `vvgated --dev` writes (PKI, keys, configuration), and a configuration for load made from it.

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# dev_dir VVGATED: ./dev as `vvgated --dev` writes it, without its database. Sets P (its PKI)
# and PRODUCER (the producer's TLS and signing arguments of `vvctl bench`).
dev_dir() {
  rm -rf dev
  timeout 5 "$1" --dev --dev-dir dev >/dev/null 2>&1 || true
  rm -f dev/vvgate.redb
  P=$PWD/dev/pki
  PRODUCER=(--ca "$P/ca.pem" --cert "$P/producer.pem" --key "$P/producer.key" --signing-key "$P/producer-signing.seed")
}

# load_config OUT LINES [SED_EXPR...]: dev/vvgate.toml with no rate limit in the way and LINES
# (sed replacement text: `\n`-separated `key = value` lines) added to [telemetry_gateway], both
# listeners on free ports, and any further sed expressions applied; written to OUT.
load_config() {
  local out=$1 lines=$2
  shift 2
  sed -e "s/^mode = \"dev\"\$/mode = \"dev\"\\nrate_limit_per_minute = 1000000000$lines/" \
    -e 's|^listen = "127.0.0.1:8443"|listen = "127.0.0.1:0"|' -e "s|^listen = \"127.0.0.1:9464\"|listen = \"127.0.0.1:$(free_port)\"|" \
    "$@" dev/vvgate.toml >"$out"
}
