#!/usr/bin/env bash
# Fuzzes migrate's bbolt reader with cargo-fuzz (libFuzzer, nightly Rust), seeded with real etcd
# backends from the fixtures (written by etcd 3.4.23, 3.5 and 3.6 on amd64, and by s390x etcd
# under qemu: both byte orders).
#
#   bash scripts/fuzz.sh                # SECONDS_PER_TARGET=600
#
# A crash leaves its input under fuzz/artifacts/bbolt/; add it to migrate/tests/fuzz_regressions/
# and the test there replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-600}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
bash scripts/install-deps.sh >/dev/null
bash scripts/fixtures.sh
fixtures=${ETCDIMG_TEST_FIXTURES:-$PWD/target/fixtures}
corpus=fuzz/corpus/bbolt
mkdir -p "$corpus"
# seed NAME ETCD [QEMU]: a small backend written by ETCD (a few keys, a lease, two revisions).
seed() {
    local dir port peer pid
    dir=$(mktemp -d)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    peer=$((port + 1))
    ${3:-} "$2" --data-dir "$dir/d" --listen-client-urls "http://127.0.0.1:$port" \
        --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "default=http://127.0.0.1:$peer" \
        >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
    for k in a b c; do
        curl -sf -X POST -d "{\"key\":\"$(printf /registry/$k | base64)\",\"value\":\"dg==\"}" "http://127.0.0.1:$port/v3/kv/put" >/dev/null
    done
    curl -sf -X POST -d '{"TTL":3600}' "http://127.0.0.1:$port/v3/lease/grant" >/dev/null
    kill "$pid"; wait "$pid" 2>/dev/null || true
    cp "$dir/d/member/snap/db" "$corpus/seed-$1"
    rm -rf "$dir"
}
for v in $(cat "$fixtures/etcd-versions"); do seed "$v-amd64" "$fixtures/bin/etcd-$v"; done
for v in $(ls "$fixtures/bin-s390x" | sed -n 's/^etcd-//p'); do
    seed "$v-s390x" "$fixtures/bin-s390x/etcd-$v" qemu-s390x-static
done
for seed in migrate/tests/fuzz_regressions/*; do
    if [ -f "$seed" ] && [ "${seed%.md}" = "$seed" ]; then cp "$seed" "$corpus/"; fi
done
cd fuzz
cargo +nightly fuzz run bbolt -- -max_total_time="$SECONDS_PER_TARGET" -max_len=262144 -rss_limit_mb=1024 -timeout=10
