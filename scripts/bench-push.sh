#!/usr/bin/env bash
# Benchmarks `etcdimg push --arch amd64` against `skopeo copy` of the same OCI layout, in one run,
# to Debian's docker-registry on 127.0.0.1, and rewrites the push section of BENCHMARKS.md.
#
#   bash scripts/bench-push.sh          # RUNS=5 by default
#
# first push: every run pushes to a new, empty repository (a counter names it), so every blob is
#             uploaded; the command includes etcdimg's warm build check, as `push` always does.
# skopeo:     `skopeo copy oci:LAYOUT:REF docker://...` to a new, empty repository, the same way.
# re-push:    the same image to the repository that already has it (nothing to upload).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
source scripts/bench-lib.sh
bench_setup

# skopeo remembers which repositories hold a blob (its blob-info cache) and mounts from them,
# which would make its "first" copy a mount. Set the cache aside, clear it before each skopeo
# run, and put it back at the end.
bic=/var/lib/containers/cache/blob-info-cache-v1.boltdb
[ "$(id -u)" = 0 ] || bic=${XDG_DATA_HOME:-$HOME/.local/share}/containers/cache/blob-info-cache-v1.boltdb
[ -f "$bic" ] && mv "$bic" "$work/bic.saved"
bench_extra_cleanup() { rm -f "$bic"; if [ -f "$work/bic.saved" ]; then mv "$work/bic.saved" "$bic"; fi; }
start_mirror "$fixtures/mirror"
start_registry "$work"

host=127.0.0.1:$reg
export ETCDIMG_CACHE=$work/cache ETCDIMG_NO_PROGRESS=1 ETCDIMG_OUTPUT=$work/oci
export ETCD_RELEASE_URL=http://127.0.0.1:$mirror BASEIMAGE=oci:$fixtures/busybox-oci:1.35
fixture_versions
"$bin" build --arch amd64 --json >"$work/build.json" 2>"$work/build.err" \
    || { cat "$work/build.err" >&2; exit 1; }
"$bin" push --arch amd64 --insecure-registry "$host" --push-registry "$host/again" >/dev/null 2>&1
echo 0 >"$work/n"

cat >"$work/ours.sh" <<SH
n=\$(cat $work/n); echo \$((n+1)) >$work/n
exec $bin push --arch amd64 --insecure-registry $host --push-registry $host/ours\$n >/dev/null 2>&1
SH
cat >"$work/skopeo.sh" <<SH
n=\$(cat $work/n); echo \$((n+1)) >$work/n
exec skopeo copy --quiet --dest-tls-verify=false oci:$work/oci:3.5.1-0-linux-amd64 docker://$host/skopeo\$n/etcd:3.5.1-0-linux-amd64
SH

hyperfine --style basic --runs "$RUNS" --warmup 1 --export-json "$work/h.json" \
    --prepare "true" -n "etcdimg push (first, empty repository)" "bash $work/ours.sh" \
    --prepare "rm -f $bic" -n "skopeo copy (first, empty repository)" "bash $work/skopeo.sh" \
    --prepare "true" -n "etcdimg push (again, nothing to upload)" "$bin push --arch amd64 --insecure-registry $host --push-registry $host/again" \
    --prepare "true" -n "skopeo copy (again)" "skopeo copy --quiet --dest-tls-verify=false oci:$work/oci:3.5.1-0-linux-amd64 docker://$host/again/etcd:3.5.1-0-linux-amd64" >&2

size=$(python3 -c "import json; r=json.load(open('$work/build.json')); print(r['total_size'])")
python3 - "$work/h.json" "$size" "$RUNS" <<'PY'
import json, re, subprocess, sys, datetime
h = json.load(open(sys.argv[1]))
size, runs = int(sys.argv[2]), sys.argv[3]
r = {x["command"]: x for x in h["results"]}
ours, skopeo = r["etcdimg push (first, empty repository)"], r["skopeo copy (first, empty repository)"]
again, skopeo_again = r["etcdimg push (again, nothing to upload)"], r["skopeo copy (again)"]
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
lines = [
    "<!-- push-bench:start -->",
    "## `etcdimg push --arch amd64` vs `skopeo copy`",
    "",
    f"Measured {datetime.date.today()} on {cpu}, 2 cores; {runs} runs each after one warm-up (hyperfine).",
    f"Image: the amd64 image ({size/1e6:.1f} MB in 5 blobs), pushed over loopback to Debian's docker-registry 2.8.",
    "Reproduce: `bash scripts/bench-push.sh`.",
    "",
    "| case | mean | min | max | vs skopeo first copy |",
    "|---|---|---|---|---|",
]
for name, x in [
    ("etcdimg push, first (empty repository; includes the warm build check)", ours),
    ("skopeo copy oci: -> docker://, first (empty repository)", skopeo),
    ("etcdimg push, again (nothing to upload)", again),
    ("skopeo copy, again", skopeo_again),
]:
    lines.append(f"| {name} | {x['mean']:.3f} s | {x['min']:.3f} s | {x['max']:.3f} s | {x['mean']/skopeo['mean']:.2f}x |")
lines += [
    "",
    f"Targets (issue #3): first push <= 1.0x skopeo: {'met' if ours['mean'] <= skopeo['mean'] else 'NOT met'} "
    f"({ours['mean']/skopeo['mean']:.2f}x); re-push < 0.2 s: {'met' if again['mean'] < 0.2 else 'NOT met'} "
    f"({again['mean']*1000:.0f} ms).",
    "<!-- push-bench:end -->",
]
sys.path.insert(0, "scripts")
import bench_md
bench_md.write_section(lines)
PY
