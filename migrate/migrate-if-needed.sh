#!/bin/sh
# migrate-if-needed.sh: the image's migration wrapper (Kubernetes etcd image contract).
#
# Reads the environment the Kubernetes manifests set, applies the same defaults as the original
# wrapper, and runs /usr/local/bin/migrate. Its exit status is migrate's: a failed migration must
# stop etcd from starting (`set -o errexit` in the caller, k/k#91171).
#
# Environment:
#   TARGET_STORAGE, TARGET_VERSION, DATA_DIRECTORY   required
#   ETCD_NAME                 default etcd-$ETCD_HOSTNAME, etcd-$HOSTNAME, or etcd-$(hostname)
#   INITIAL_CLUSTER           default <ETCD_NAME>=http://localhost:<peer port>
#   LISTEN_PEER_URLS, INITIAL_ADVERTISE_PEER_URLS, LISTEN_CLIENT_URLS
#   ETCD_DATA_PREFIX          default /registry
#   TTL_KEYS_DIRECTORY        default $ETCD_DATA_PREFIX/events
#   ETCD_CREDS                extra flags for the temporary etcd
#   BUNDLED_VERSIONS          default: every etcd-<V> in the bin dir
#   DO_NOT_MOVE_BINARIES      "true" keeps the default etcd/etcdctl as they are
#   BIN_DIR                   default /usr/local/bin (the directory of this script)
set -o errexit
set -o nounset

BIN_DIR=${BIN_DIR:-$(cd "$(dirname "$0")" && pwd)}

if [ -z "${DATA_DIRECTORY:-}" ]; then
    echo "DATA_DIRECTORY variable unset - unexpected failure"
    exit 1
fi
if [ -z "${TARGET_VERSION:-}" ]; then
    echo "TARGET_VERSION variable unset - unexpected failure"
    exit 1
fi
if [ -z "${TARGET_STORAGE:-}" ]; then
    echo "TARGET_STORAGE variable unset - unexpected failure"
    exit 1
fi

if [ -z "${ETCD_NAME:-}" ]; then
    host=${ETCD_HOSTNAME:-${HOSTNAME:-}}
    if [ -z "$host" ]; then
        host=$(hostname)
    fi
    ETCD_NAME="etcd-$host"
fi

case "$DATA_DIRECTORY" in
    *event*) PEER_PORT=2381; CLIENT_PORT=18631 ;;
    *) PEER_PORT=2380; CLIENT_PORT=18629 ;;
esac

if [ -z "${INITIAL_CLUSTER:-}" ]; then
    echo "Warn: INITIAL_CLUSTER variable unset - defaulting to ${ETCD_NAME}=http://localhost:${PEER_PORT}"
    INITIAL_CLUSTER="${ETCD_NAME}=http://localhost:${PEER_PORT}"
fi
if [ -z "${LISTEN_PEER_URLS:-}" ]; then
    echo "Warn: LISTEN_PEER_URLS variable unset - defaulting to http://localhost:${PEER_PORT}"
    LISTEN_PEER_URLS="http://localhost:${PEER_PORT}"
fi
if [ -z "${INITIAL_ADVERTISE_PEER_URLS:-}" ]; then
    echo "Warn: INITIAL_ADVERTISE_PEER_URLS variable unset - defaulting to http://localhost:${PEER_PORT}"
    INITIAL_ADVERTISE_PEER_URLS="http://localhost:${PEER_PORT}"
fi
ETCD_DATA_PREFIX=${ETCD_DATA_PREFIX:-/registry}
ETCD_CREDS=${ETCD_CREDS:-}

set -- --name "$ETCD_NAME" --port "$CLIENT_PORT" --peer-port "$PEER_PORT" \
    --listen-peer-urls "$LISTEN_PEER_URLS" \
    --initial-advertise-peer-urls "$INITIAL_ADVERTISE_PEER_URLS" \
    --data-dir "$DATA_DIRECTORY" \
    --initial-cluster "$INITIAL_CLUSTER" \
    --target-version "$TARGET_VERSION" \
    --target-storage "$TARGET_STORAGE" \
    --etcd-data-prefix "$ETCD_DATA_PREFIX" \
    --ttl-keys-directory "${TTL_KEYS_DIRECTORY:-${ETCD_DATA_PREFIX}/events}" \
    --etcd-server-extra-args "$ETCD_CREDS" \
    --bin-dir "$BIN_DIR"
if [ -n "${LISTEN_CLIENT_URLS:-}" ]; then
    set -- "$@" --listen-client-urls "$LISTEN_CLIENT_URLS"
fi
if [ -n "${BUNDLED_VERSIONS:-}" ]; then
    set -- "$@" --bundled-versions "$BUNDLED_VERSIONS"
fi

# migrate swaps the default etcd/etcdctl for the TARGET_VERSION pair (by rename, never through
# a hard link) unless DO_NOT_MOVE_BINARIES=true.
"$BIN_DIR/migrate" "$@"
