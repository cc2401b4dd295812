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
# incompatible_msrv: std APIs newer than a crate's `rust-version` fail the run, so that every
# Cargo.toml's rust-version stays true.
cargo clippy --workspace --all-targets --locked -q -- -D warnings -D clippy::incompatible_msrv
cargo test --workspace --locked "$@"
