#!/usr/bin/env bash
# Rewrite the seed corpus (fuzz/seeds/<target>/) from `vvgate::fuzzing::seeds`.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf fuzz/seeds
VVGATE_FUZZ_SEEDS="$PWD/fuzz/seeds" cargo test -p vvgate --lib fuzzing::tests::write_seed_corpus -- --ignored --exact
ls fuzz/seeds/*
