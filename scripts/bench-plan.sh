#!/usr/bin/env bash
# Benchmarks `etcdimg plan` against answering part of its question with skopeo, in one run, on
# Debian's docker-registry at 127.0.0.1, and rewrites the plan section of BENCHMARKS.md.
#
#   bash scripts/bench-plan.sh          # RUNS=10 by default
#
# The release: amd64 + arm64 images and their index, already pushed (with the release report).
# plan --no-build: digests from the layout, 3 tag HEADs, the report artifact HEAD.
# plan:            the same after a warm build of both arches (what `etcdimg plan` does by default).
# skopeo:          `skopeo inspect --raw` of the same 3 tags, i.e. only the registry's half of
#                  the answer (what each tag points to now), with nothing computed locally.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
source scripts/bench-lib.sh
bench_setup

start_mirror "$fixtures/mirror"
start_registry "$work"
host=127.0.0.1:$reg
cat >"$work/images.toml" <<TOML
[etcd]
latest = "3.5.1"
bundled = ["3.4.23", "3.5.1"]
revision = 0
release_url = "http://127.0.0.1:$mirror"

[image]
push_registry = "$host/k8s"
name = "etcd"
arches = ["amd64", "arm64"]
base = "oci:$fixtures/busybox-oci:1.35"
insecure_registries = ["$host"]

[arch.arm64]
source = "release"

[migrate]
source_dir = "$PWD/migrate"
TOML
export ETCDIMG_CONFIG=$work/images.toml ETCDIMG_CACHE=$work/cache ETCDIMG_NO_PROGRESS=1
export ETCDIMG_OUTPUT=$work/oci ETCDIMG_REPORT_DIR=$work/report
# The fixture versions (3.5.1 is below etcd's production minimum): allowed explicitly.
export ETCDIMG_ALLOW_UNSAFE_VERSIONS=1 ETCDIMG_ALLOW_UNSUPPORTED_GO=1
"$bin" all-push >/dev/null 2>&1
"$bin" plan --json 2>/dev/null | python3 -c 'import json, sys; s = json.load(sys.stdin)["summary"]; assert s["uploads"] == 0 and s["tags_unchanged"] == 3, s'

hyperfine --style basic --runs "$RUNS" --warmup 2 --export-json "$work/h.json" \
    -n "etcdimg plan --no-build" "$bin plan --no-build" \
    -n "etcdimg plan" "$bin plan" \
    -n "skopeo inspect --raw x3" "for t in 3.5.1-0-linux-amd64 3.5.1-0-linux-arm64 3.5.1-0; do skopeo inspect --raw --tls-verify=false docker://$host/k8s/etcd:\$t >/dev/null; done" >&2

python3 - "$work/h.json" "$RUNS" <<'PY'
import json, re, subprocess, sys, datetime
h = json.load(open(sys.argv[1]))
runs = sys.argv[2]
r = {x["command"]: x for x in h["results"]}
skopeo = r["skopeo inspect --raw x3"]
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
lines = [
    "<!-- plan-bench:start -->",
    "## `etcdimg plan` vs `skopeo inspect --raw`",
    "",
    f"Measured {datetime.date.today()} on {cpu}, 2 cores; {runs} runs each after two warm-ups (hyperfine).",
    "A release already pushed (amd64 + arm64 + index + release report) to Debian's docker-registry 2.8 on loopback;",
    "skopeo only reads what the 3 tags point to, `plan` also computes every local digest and the report artifact.",
    "Reproduce: `bash scripts/bench-plan.sh`.",
    "",
    "| case | mean | min | max | vs skopeo |",
    "|---|---|---|---|---|",
]
for name, x in [
    ("etcdimg plan --no-build (layout digests, 3 tag HEADs, report HEAD)", r["etcdimg plan --no-build"]),
    ("etcdimg plan (warm build of 2 arches first)", r["etcdimg plan"]),
    ("skopeo inspect --raw, the 3 tags", skopeo),
]:
    lines.append(f"| {name} | {x['mean']:.3f} s | {x['min']:.3f} s | {x['max']:.3f} s | {x['mean']/skopeo['mean']:.2f}x |")
lines.append("<!-- plan-bench:end -->")
sys.path.insert(0, "scripts")
import bench_md
bench_md.write_section(lines)
PY
