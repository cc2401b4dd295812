#!/usr/bin/env bash
# Runs the main job on the defaults in images.toml: `etcdimg build --arch amd64`.
#
# These machines reach only package registries (the Go module proxy among them), not GitHub or
# Docker Hub, so this script first stands up what the defaults point at, on loopback: a release
# mirror laid out like the GitHub releases URL (etcd 3.5.36 and 3.6.17 built from their Go
# modules by scripts/fixtures.sh, packed like the official tarballs, with SHA256SUMS) and a real
# docker-registry holding a multi-arch busybox. Everything else comes from images.toml as it
# is: etcd 3.6.17 bundling 3.5.36, revision, arch, naming, modes. With internet access, plain
# `cargo run --release -- build --arch amd64` builds the same defaults from GitHub's tarballs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/fixtures.sh
fixtures=${ETCDIMG_TEST_FIXTURES:-$PWD/target/fixtures}
cargo build --release --locked

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
work=$(mktemp -d)
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; exit 1; }

mirror_port=$(port)
python3 -m http.server "$mirror_port" --bind 127.0.0.1 --directory "$fixtures/mirror" >/dev/null 2>&1 &
pids+=($!)
registry_port=$(port)
cat >"$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$registry_port}
YML
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
pids+=($!)
wait_port "$mirror_port"
wait_port "$registry_port"
skopeo copy --all --quiet --dest-tls-verify=false "oci:$fixtures/busybox-oci:1.35" \
    "docker://127.0.0.1:$registry_port/library/busybox:1.35"

ETCD_RELEASE_URL="http://127.0.0.1:$mirror_port" \
BASEIMAGE="127.0.0.1:$registry_port/library/busybox:1.35" \
    ./target/release/etcdimg build --arch amd64 --insecure-registry "127.0.0.1:$registry_port" "$@"
echo "image layout: _output/oci (inspect with: skopeo inspect oci:_output/oci:$(./target/release/etcdimg settings | python3 -c 'import json,sys; print(json.load(sys.stdin)["tag"])')-linux-amd64)" >&2
