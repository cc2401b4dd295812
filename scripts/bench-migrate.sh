#!/usr/bin/env bash
# Benchmarks `migrate` against raw etcd runs on the same data, in one run, and rewrites the
# migrate section of BENCHMARKS.md.
#
# Small case: KEYS keys written by etcd 3.4.23 (a 64 MB data dir); migrate 3.4.23 -> 3.5.1 vs a
#   raw start of etcd 3.5.1 on a copy (wait for /health, SIGTERM; the copy is not timed).
# Large case: LARGE_KEYS values of 1 MiB written by etcd 3.4.23 through its API (a keyspace of
#   more than 1 GB); timed against the raw step done by hand, copy included:
#   upgrade 3.4.23 -> 3.5.1  vs  cp -a, etcd 3.5.1 start, /health, SIGTERM;
#   rollback 3.5.1 -> 3.4.23 vs  etcdctl 3.4.23 snapshot restore of the db, etcd 3.4.23 start,
#                                /health, SIGTERM.
#   Plus peak RSS: migrate itself, the largest etcdctl/etcdutl it ran, the largest etcd it ran.
# HUGE_KEYS (default 0, off) adds one upgrade above 2 GiB of keyspace, one run.
#
#   bash scripts/bench-migrate.sh               # RUNS=5, LARGE_RUNS=3, LARGE_KEYS=1100
#   HUGE_KEYS=2200 bash scripts/bench-migrate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
KEYS=${KEYS:-10000}
LARGE_RUNS=${LARGE_RUNS:-3}
LARGE_KEYS=${LARGE_KEYS:-1100}
HUGE_KEYS=${HUGE_KEYS:-0}
source scripts/bench-lib.sh
bench_setup -p migrate
migrate=$PWD/target/release/migrate


mkdir -p "$work/bin"
for b in etcd etcdctl; do
    for v in 3.4.23 3.5.1; do ln -s "$fixtures/bin/$b-$v" "$work/bin/$b-$v"; done
done
ln -s "$fixtures/bin/etcdutl-3.5.1" "$work/bin/etcdutl-3.5.1"

# write DIR MODE N: etcd 3.4.23 writes N keys into DIR through its JSON gateway (keep-alive):
# MODE small: short values, a tenth with a second revision; MODE large: 1 MiB pseudo-random.
write() {
    local port peer pid
    port=$(free_port); peer=$(free_port)
    "$fixtures/bin/etcd-3.4.23" --data-dir "$1" --name default --quota-backend-bytes=8589934592 \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "default=http://127.0.0.1:$peer" >/dev/null 2>&1 &
    pid=$!
    python3 - "$port" "$2" "$3" <<'PY'
import base64, http.client, json, os, sys, time
port, mode, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for _ in range(400):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/health"); r = c.getresponse(); r.read()
        if r.status == 200: break
    except OSError:
        time.sleep(0.05)
b = lambda s: base64.b64encode(s).decode()
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for i in range(n):
    revs = 2 if mode == "small" and i % 10 == 0 else 1
    for rev in range(revs):
        if mode == "small":
            key, value = f"/registry/bench/{i:06d}", f"value-{i}-{rev}-" + "x" * (i % 200)
            value = value.encode()
        else:
            key, value = f"/registry/configmaps/big-{i:05d}", os.urandom(1 << 20)
        body = json.dumps({"key": b(key.encode()), "value": b(value)})
        c.request("POST", "/v3/kv/put", body, {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
PY
    kill "$pid"; wait "$pid" || true
    echo -n "3.4.23/etcd3" >"$1/version.txt"
}

# raw.sh VERSION DATA [etcd flags]: etcd VERSION on DATA until /health, then SIGTERM.
cat >"$work/raw.sh" <<SH
set -e
version=\$1; data=\$2; shift 2
port=\$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
peer=\$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$fixtures/bin/etcd-\$version --data-dir \$data --name default \\
    --listen-client-urls http://127.0.0.1:\$port --advertise-client-urls http://127.0.0.1:\$port \\
    --listen-peer-urls http://127.0.0.1:\$peer --initial-advertise-peer-urls http://127.0.0.1:\$peer \\
    --initial-cluster default=http://127.0.0.1:\$peer "\$@" >/dev/null 2>&1 &
pid=\$!
until python3 -c "import http.client,sys; c=http.client.HTTPConnection('127.0.0.1',\$port,timeout=1); c.request('GET','/health'); sys.exit(0 if b'true' in c.getresponse().read() else 1)" 2>/dev/null; do sleep 0.025; done
kill -TERM \$pid; wait \$pid || true
SH
run_migrate="$migrate --name default --bin-dir $work/bin --data-dir $work/data --target-storage etcd3"

# --- small -----------------------------------------------------------------------------------
write "$work/small" small "$KEYS"
small_mb=$(du -sm "$work/small" | cut -f1)
hyperfine --style basic --runs "$RUNS" --warmup 1 --export-json "$work/small.json" \
    --prepare "rm -rf $work/data $work/.data.migrate-*; cp -a $work/small $work/data" \
    -n "migrate 3.4.23 -> 3.5.1" "$run_migrate --target-version 3.5.1" \
    -n "raw etcd 3.5.1 start, /health, stop" "bash $work/raw.sh 3.5.1 $work/data" \
    -n "raw etcd 3.5.1, migrate's raft timers" "bash $work/raw.sh 3.5.1 $work/data --heartbeat-interval=10 --election-timeout=100" >&2
rm -rf "$work/small" "$work/data"

# --- large -----------------------------------------------------------------------------------
write "$work/large" large "$LARGE_KEYS"
large_mb=$(du -sm "$work/large" | cut -f1)
db_mb=$(du -sm "$work/large/member/snap/db" | cut -f1)
cat >"$work/raw-upgrade.sh" <<SH
set -e
rm -rf $work/copy; cp -a $work/data $work/copy
bash $work/raw.sh 3.5.1 $work/copy
SH
cat >"$work/raw-rollback.sh" <<SH
set -e
rm -rf $work/restored
ETCDCTL_API=3 $fixtures/bin/etcdctl-3.4.23 snapshot restore $work/data/member/snap/db --skip-hash-check \\
    --data-dir $work/restored --name default --initial-cluster default=http://localhost:2380 \\
    --initial-advertise-peer-urls http://localhost:2380 >/dev/null 2>&1
bash $work/raw.sh 3.4.23 $work/restored
SH
hyperfine --style basic --runs "$LARGE_RUNS" --warmup 1 --export-json "$work/up.json" \
    --prepare "rm -rf $work/data $work/copy $work/.data.migrate-*; cp -a $work/large $work/data; sync" \
    -n "migrate upgrade" "$run_migrate --target-version 3.5.1" \
    -n "raw upgrade step" "bash $work/raw-upgrade.sh" >&2
# The peak memory of one more upgrade, from migrate's own JSON report; it leaves 3.5.1 data.
rm -rf "$work/data" "$work/copy"; cp -a "$work/large" "$work/data"
$run_migrate --target-version 3.5.1 --json >"$work/up-report.json"
rm -rf "$work/large"; mv "$work/data" "$work/large35"
hyperfine --style basic --runs "$LARGE_RUNS" --warmup 1 --export-json "$work/down.json" \
    --prepare "rm -rf $work/data $work/restored $work/.data.migrate-*; cp -a $work/large35 $work/data; sync" \
    -n "migrate rollback" "$run_migrate --target-version 3.4.23" \
    -n "raw rollback step" "bash $work/raw-rollback.sh" >&2
rm -rf "$work/data" "$work/restored"; cp -a "$work/large35" "$work/data"
$run_migrate --target-version 3.4.23 --json >"$work/down-report.json"
rm -rf "$work/data" "$work/large35"

# --- huge (optional) -------------------------------------------------------------------------
huge=""
if [ "$HUGE_KEYS" -gt 0 ]; then
    write "$work/data" large "$HUGE_KEYS"
    huge_mb=$(du -sm "$work/data" | cut -f1)
    sync
    start=$(date +%s.%N); bash "$work/raw-upgrade.sh"
    raw_s=$(python3 -c "import time; print(time.time() - $start)")
    rm -rf "$work/copy"; sync
    start=$(date +%s.%N); $run_migrate --target-version 3.5.1 --json >"$work/huge-report.json"
    mig_s=$(python3 -c "import time; print(time.time() - $start)")
    huge="$HUGE_KEYS $huge_mb $raw_s $mig_s"
    rm -rf "$work/data"
fi

python3 - "$work" "$KEYS" "$small_mb" "$RUNS" "$LARGE_KEYS" "$large_mb" "$db_mb" "$LARGE_RUNS" "$huge" <<'PY'
import json, re, subprocess, sys, datetime
work, keys, small_mb, runs, lkeys, large_mb, db_mb, lruns, huge = sys.argv[1:10]
res = lambda f: {x["command"]: x for x in json.load(open(f"{work}/{f}"))["results"]}
s, up, down = res("small.json"), res("up.json"), res("down.json")
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
row = lambda name, r, base: f"| {name} | {r['mean']:.3f} s | {r['min']:.3f} s | {r['max']:.3f} s | {r['mean'] / base['mean']:.2f}x |"
m, raw, fast = s["migrate 3.4.23 -> 3.5.1"], s["raw etcd 3.5.1 start, /health, stop"], s["raw etcd 3.5.1, migrate's raft timers"]
mu, ru, md, rd = up["migrate upgrade"], up["raw upgrade step"], down["migrate rollback"], down["raw rollback step"]
def report(f):
    r = json.load(open(f"{work}/{f}"))
    fp = r["fingerprints"][0]
    return r["peak_rss_kib"], fp["seconds"], fp["after"]["bytes"]
(up_rss, up_sec, kbytes), (down_rss, down_sec, _) = report("up-report.json"), report("down-report.json")
mib = lambda k: f"{k / 1024:.0f} MiB"
order = ["settle", "stage", "restore", "etcd", "verify", "durable", "swap"]
phases = lambda sec: ", ".join(f"{k} {sec[k]:.2f} s" for k in sorted(sec, key=lambda k: order.index(k) if k in order else 99))
small_ratio, up_ratio = m["mean"] / raw["mean"], mu["mean"] / ru["mean"]
lines = [
    "<!-- migrate-bench:start -->",
    "## `migrate` vs raw etcd runs on the same data",
    "",
    f"Measured {datetime.date.today()} on {cpu}, 2 cores (hyperfine, one warm-up each). Reproduce: `bash scripts/bench-migrate.sh`.",
    "",
    f"**Small**: {keys} keys written by etcd 3.4.23 ({small_mb} MB data dir), {runs} runs; the raw runs start on a copy made before timing.",
    "",
    "| case | mean | min | max | vs raw |",
    "|---|---|---|---|---|",
    row("migrate 3.4.23 -> 3.5.1 (stage a working copy, run 3.5.1 on it, compare backends offline, swap)", m, raw),
    row("raw etcd 3.5.1 on a copy: start, wait for /health, SIGTERM", raw, raw),
    row("the same raw run with migrate's raft timers (`--heartbeat-interval=10 --election-timeout=100`)", fast, raw),
    "",
    f"Target (issue #13): at or under the earlier 0.38x: {'met' if small_ratio <= 0.38 else 'NOT met'} ({small_ratio:.2f}x). "
    f"Against a raw start with the same raft timers migrate costs {m['mean'] / fast['mean']:.2f}x: one etcd run (no etcd runs for the \"before\" side of a cleanly stopped member) plus the staged copy and two offline fingerprints.",
    "",
    f"**Large**: {lkeys} values of 1 MiB written by etcd 3.4.23 through its API ({kbytes / 2**30:.2f} GiB keyspace, {db_mb} MB bbolt file, {large_mb} MB data dir), {lruns} runs; the raw steps are what a careful operator does by hand, copy or restore included.",
    "",
    "| case | mean | min | max | vs raw |",
    "|---|---|---|---|---|",
    row("migrate upgrade 3.4.23 -> 3.5.1", mu, ru),
    row("raw upgrade step: `cp -a`, etcd 3.5.1 start, /health, SIGTERM", ru, ru),
    row("migrate rollback 3.5.1 -> 3.4.23", md, rd),
    row("raw rollback step: `etcdctl snapshot restore --skip-hash-check` of the db, etcd 3.4.23 start, /health, SIGTERM", rd, rd),
    "",
    f"Peak RSS (migrate's own `--json` report): upgrade: migrate {mib(up_rss['migrate'])}, largest etcdctl/etcdutl {mib(up_rss['tools'])} (none runs), largest etcd {mib(up_rss['etcd'])}; "
    f"rollback: migrate {mib(down_rss['migrate'])}, largest etcdctl/etcdutl {mib(down_rss['tools'])} (the restore), largest etcd {mib(down_rss['etcd'])}. "
    "etcd's figure is its own (it maps the bbolt file); migrate's does not grow with the data.",
    f"Phases of the upgrade: {phases(up_sec)}; of the rollback: {phases(down_sec)}.",
    "",
    f"Target (issue #13): upgrade at most 1.5x the raw step: {'met' if up_ratio <= 1.5 else 'NOT met'} ({up_ratio:.2f}x). "
    "Before issue #13 the same kind of data (1.3 GB, 600 x 1 MB) took 36.2 s and 5.99 GB of migrate RSS, 9.3x the raw step.",
]
if huge:
    hk, hmb, hraw, hmig = huge.split()
    r = json.load(open(f"{work}/huge-report.json"))
    hb = r["fingerprints"][0]["after"]["bytes"]
    lines += ["", f"**Above 2 GiB** (one run): {hk} values of 1 MiB ({hb / 2**30:.2f} GiB keyspace, {hmb} MB data dir): migrate upgrade {float(hmig):.1f} s vs raw step {float(hraw):.1f} s ({float(hmig) / float(hraw):.2f}x), migrate peak RSS {mib(r['peak_rss_kib']['migrate'])}. No etcdctl response carries the keyspace, so etcdctl's 2 GiB `--max-recv-bytes` cap does not apply."]
lines.append("<!-- migrate-bench:end -->")
section = "\n".join(lines)
text = open("BENCHMARKS.md").read()
if "<!-- migrate-bench:start -->" in text:
    text = re.sub(r"<!-- migrate-bench:start -->.*<!-- migrate-bench:end -->", section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open("BENCHMARKS.md", "w").write(text)
print(section)
PY
