#!/usr/bin/env bash
# Writes a docker config.json (read by etcdimg, like docker and skopeo do) with basic-auth
# credentials for the registry of images.toml's push_registry, and points DOCKER_CONFIG at it
# for the following GitHub Actions steps. Credentials come from REGISTRY_USERNAME and
# REGISTRY_PASSWORD (repository secrets); nothing is printed.
set -euo pipefail
: "${REGISTRY_USERNAME:?set the REGISTRY_USERNAME secret}" "${REGISTRY_PASSWORD:?set the REGISTRY_PASSWORD secret}"
registry=$(cargo run --release --locked -q -- settings --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["push_image"].split("/")[0])')
dir="${RUNNER_TEMP:-$(mktemp -d)}/docker"
mkdir -p "$dir"
umask 077
auth=$(printf '%s:%s' "$REGISTRY_USERNAME" "$REGISTRY_PASSWORD" | base64 -w0)
printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$registry" "$auth" >"$dir/config.json"
echo "DOCKER_CONFIG=$dir" >>"${GITHUB_ENV:-/dev/null}"
echo "registry-login: credentials for $registry in $dir/config.json" >&2
