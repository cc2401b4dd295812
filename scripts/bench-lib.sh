# Shared by the benchmark scripts (sourced): the common setup, and loopback servers that die
# with the script.
#
#   source scripts/bench-lib.sh
#   bench_setup [ARGS]    # install-deps, fixtures, `cargo build --release --locked -q ARGS`;
#                         # sets $fixtures, $bin (etcdimg), $work (a temp dir removed on exit,
#                         # with every server; define bench_extra_cleanup for more)
#   start_mirror DIR      # python http.server on DIR; sets $mirror (its port)
#   start_registry WORK   # Debian's docker-registry, storage under WORK; sets $reg (its port)
#   kill_servers          # call from the script's EXIT trap
#   fixture_versions      # the etcd versions the fixtures hold, instead of images.toml's
pids=()
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
kill_servers() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }

start_mirror() {
    mirror=$(free_port)
    python3 -m http.server "$mirror" --bind 127.0.0.1 --directory "$1" >/dev/null 2>&1 &
    pids+=($!)
    wait_port "$mirror"
}

start_registry() {
    reg=$(free_port)
    cat >"$1/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $1/registry
http:
  addr: 127.0.0.1:$reg
YML
    docker-registry serve "$1/registry.yml" >/dev/null 2>&1 &
    pids+=($!)
    wait_port "$reg"
}

# The loopback mirror holds etcd 3.4.23 and 3.5.1 (machines.md), not images.toml's defaults.
# 3.5.1 is below etcd's production minimum, so releasing it is allowed explicitly: these are
# benchmarks of the tool, not releases.
fixture_versions() {
    export ETCD_VERSION=3.5.1 BUNDLED_ETCD_VERSIONS="3.4.23 3.5.1" ETCDIMG_ALLOW_UNSAFE_VERSIONS=1 ETCDIMG_ALLOW_UNSUPPORTED_GO=1
}

bench_setup() {
    bash scripts/install-deps.sh >/dev/null
    bash scripts/fixtures.sh
    fixtures=${ETCDIMG_TEST_FIXTURES:-$PWD/target/fixtures}
    cargo build --release --locked -q "$@"
    bin=$PWD/target/release/etcdimg
    work=$(mktemp -d -p "${BENCH_DIR:-${TMPDIR:-/tmp}}")
    trap bench_cleanup EXIT
}

bench_cleanup() {
    kill_servers
    if [ "$(type -t bench_extra_cleanup)" = function ]; then bench_extra_cleanup; fi
    rm -rf "$work"
}
