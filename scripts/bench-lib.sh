# Shared by the benchmark scripts (sourced): loopback servers that die with the script.
#
#   source scripts/bench-lib.sh
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
    export ETCD_VERSION=3.5.1 BUNDLED_ETCD_VERSIONS="3.4.23 3.5.1" ETCDIMG_ALLOW_UNSAFE_VERSIONS=1
}
