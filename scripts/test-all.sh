#!/usr/bin/env bash
# Install everything the tests need, then run every check and test of the workspace.
# This is the README's second command, and exactly what CI runs (.ci/run).
# Needs: a Debian machine with the Rust toolchain, root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive

echo "== installing test dependencies (apt)"
$SUDO apt-get update
# nats-server (queue tests), softhsm2 + opensc (PKCS#11 tests: pkcs11-tool makes weak keys,
# opensc-pkcs11's pkcs11-spy counts the gateway's logins), curl/openssl/python3 (independent
# TLS clients in the end-to-end tests), haproxy (the L4 balancer of the scale-out tests),
# python3-cryptography (the producer-side feedback verifier), systemd (systemd-analyze
# security for the unit hardening test), util-linux (setpriv runs a control client as
# another user), fdisk (sfdisk makes the A/B disks of the update tests).
$SUDO apt-get install -y --no-install-recommends \
  ca-certificates curl openssl python3 nats-server softhsm2 opensc opensc-pkcs11 \
  golang-go golang-golang-x-mod-dev haproxy python3-cryptography systemd util-linux fdisk

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build (the end-to-end tests run the real binaries)"
cargo build --workspace --bins --locked

echo "== tests: unit, then end to end against the real vvgated"
cargo test --workspace --locked

# The smoke keeps the targets building and running; the long campaigns (docs/fuzzing.md) use
# the default optimised, sanitised build. Here: dev profile, no sanitizer, to keep CI short.
echo "== fuzz smoke: every target builds and runs briefly on its seed corpus (about 30 s in all)"
if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi
(
  cd fuzz
  cargo +nightly fuzz build --dev --sanitizer none
  for target in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$target"
    cargo +nightly fuzz run --dev --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time=4 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 |
      grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)' | tr '\n' ' '
    echo "($target)"
  done
)

echo "== all tests passed"
