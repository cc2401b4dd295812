#!/usr/bin/env bash
# Runs every test on a fresh machine: installs the tools, builds the fixtures, runs the suite.
#
#   bash scripts/test.sh                          # skips tests whose tools are missing
#   ETCDIMG_TEST_REQUIRE=all bash scripts/test.sh # CI: a missing tool fails the run
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/fixtures.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -q -- -D warnings
cargo test --workspace --locked "$@"
