#!/usr/bin/env bash
# Benchmarks building etcd from its Go modules and rewrites that section of BENCHMARKS.md:
# `etcdimg fetch --source module` of one version for one arch (resolve the modules, assemble and
# check the tree, compile etcd, etcdctl and etcdutl, check each under qemu, store) against a
# plain `go build` of the same three binaries in a copy of the same tree with the same
# environment and flags. The modules are already in the module cache for both (GOPROXY=off: no
# network in the comparison); the Go build cache is emptied before each cold run.
#
#   bash scripts/bench-modules.sh          # VERSION=3.6.17 ARCH=arm64 RUNS=3 WARM_RUNS=5
#   ARCH=amd64 bash scripts/bench-modules.sh   # native: its own section
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VERSION:-3.6.17}
ARCH=${ARCH:-arm64}
RUNS=${RUNS:-3}
WARM_RUNS=${WARM_RUNS:-5}
source scripts/bench-lib.sh
bench_setup
export GOMODCACHE=${GOMODCACHE:-$PWD/target/go/mod} GOPATH=$PWD/target/go/path GOPROXY=off GOFLAGS=-buildvcs=false

export ETCDIMG_CONFIG=$PWD/images.toml ETCDIMG_NO_PROGRESS=1 GOCACHE=$work/gocache

# The tree etcdimg assembles, copied once for the plain build.
"$bin" --cache-dir "$work/tree-cache" fetch --source module --arch "$ARCH" --versions "$VERSION" --bin-dir "$work/first" >/dev/null
tree=$(dirname "$(dirname "$(ls -d "$work"/tree-cache/sources/*/server/go.mod)")")
cp -a "$tree" "$work/tree"

cat >"$work/plain.sh" <<SH
set -e
rm -rf $work/plain && mkdir -p $work/plain
for m in server:etcd etcdctl:etcdctl etcdutl:etcdutl; do
    (cd $work/tree/\${m%%:*} && GOWORK=off GO111MODULE=on CGO_ENABLED=0 GOOS=linux GOARCH=$ARCH \
        go build -mod=readonly -trimpath -installsuffix=cgo \
        "-ldflags=-s -w -X=go.etcd.io/etcd/api/v3/version.GitSHA=GitNotFound" -o $work/plain/\${m#*:} .)
done
SH
plain="bash $work/plain.sh"
ours="$bin --cache-dir $work/cache fetch --source module --arch $ARCH --versions $VERSION --bin-dir $work/ours"

# Same bytes, or the comparison is meaningless.
$plain
for b in etcd etcdctl etcdutl; do
    cmp "$work/plain/$b" "$work/first/$b-$VERSION"
done

hyperfine --style basic --export-json "$work/warm.json" --runs "$WARM_RUNS" --warmup 1 \
    --prepare "rm -rf $work/cache $work/ours" -n "etcdimg fetch --source module (warm GOCACHE)" "$ours" \
    --prepare "true" -n "plain go build (warm GOCACHE)" "$plain" >&2
# Cold runs alternate between the two (one hyperfine call per run), so that drift over the
# minutes this takes favours neither.
for i in $(seq "$RUNS"); do
    hyperfine --style basic --export-json "$work/cold-go-$i.json" --runs 1 \
        --prepare "rm -rf $work/gocache" -n "plain go build (cold GOCACHE)" "$plain" >&2
    hyperfine --style basic --export-json "$work/cold-us-$i.json" --runs 1 \
        --prepare "rm -rf $work/gocache $work/cache $work/ours" -n "etcdimg fetch --source module (cold GOCACHE)" "$ours" >&2
done

python3 - "$work" "$RUNS" "$WARM_RUNS" "$VERSION" "$ARCH" <<'PY'
import json, re, subprocess, sys, datetime
work, runs, warm_runs, version, arch = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
warm = {x["command"]: x for x in json.load(open(f"{work}/warm.json"))["results"]}
cold = {}
for tool in ("go", "us"):
    times, name = [], None
    for i in range(1, runs + 1):
        r = json.load(open(f"{work}/cold-{tool}-{i}.json"))["results"][0]
        name = r["command"]
        times += r["times"]
    cold[name] = {"mean": sum(times) / len(times), "min": min(times), "max": max(times)}
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
go = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()
ec, gc = cold["etcdimg fetch --source module (cold GOCACHE)"], cold["plain go build (cold GOCACHE)"]
ew, gw = warm["etcdimg fetch --source module (warm GOCACHE)"], warm["plain go build (warm GOCACHE)"]
# arm64 keeps the section's first name; another arch gets its own section.
marker = "modules-bench" if arch == "arm64" else f"modules-bench-{arch}"
native = arch == subprocess.run(["go", "env", "GOHOSTARCH"], capture_output=True, text=True).stdout.strip()
fixed = ("With a warm Go cache the compile is mostly linking, so etcdimg's fixed costs show: module resolution, the tree's sums, storing the binaries, "
         + ("and three `--version` runs (native here)." if native else "and three `--version` runs under qemu (about 1.2 s of CPU on this machine, overlapping the next compile where one follows; the plain build checks nothing)."))
row = lambda name, x, ref: f"| {name} | {x['mean']:.2f} s | {x['min']:.2f} s | {x['max']:.2f} s | {x['mean']/ref['mean']:.2f}x |"
lines = [
    f"<!-- {marker}:start -->",
    f"## etcd from Go modules (`fetch --source module`) vs a plain `go build`: {arch}",
    "",
    f"Measured {datetime.date.today()} on {cpu}, 2 cores, {go}; hyperfine. etcd {version} for {arch}.",
    f"Reproduce: `ARCH={arch} VERSION={version} RUNS={runs} WARM_RUNS={warm_runs} bash scripts/bench-modules.sh`.",
    "",
    "etcdimg resolves the release's modules (`go mod download -json`, from the module cache: GOPROXY=off), assembles and checks the tree (h1 sums), compiles etcd, etcdctl and etcdutl, checks each (ELF, `--version`, under qemu for a foreign arch) and stores them in its cache (written durably, then installed into the bin dir); the plain build is `go build` of the same three in a copy of the same tree with the same environment and flags. Both produce the same bytes (the script compares them first).",
    "",
    "| case | mean | min | max | vs plain go build |",
    "|---|---|---|---|---|",
    row(f"etcdimg, cold GOCACHE ({runs} runs)", ec, gc),
    row(f"plain go build, cold GOCACHE ({runs} runs)", gc, gc),
    row(f"etcdimg, warm GOCACHE ({warm_runs} runs)", ew, gw),
    row(f"plain go build, warm GOCACHE ({warm_runs} runs)", gw, gw),
    "",
    f"Target (issue #20): at most 1.1x a plain go build: cold {'met' if ec['mean'] <= 1.1*gc['mean'] else 'NOT met'} ({ec['mean']/gc['mean']:.2f}x); "
    f"warm {'met' if ew['mean'] <= 1.1*gw['mean'] else 'NOT met'} ({ew['mean']/gw['mean']:.2f}x). {fixed}",
    f"<!-- {marker}:end -->",
]
sys.path.insert(0, "scripts")
import bench_md
bench_md.write_section(lines)
PY
