#!/bin/sh
# migrate-if-needed.sh: the image's migration wrapper (Kubernetes etcd image contract).
#
# Reads the environment the Kubernetes manifests set, applies the same defaults as the original
# wrapper, and runs /usr/local/bin/migrate. Its exit status is migrate's: a failed migration must
# stop etcd from starting (`set -o errexit` in the caller, k/k#91171).
#
# Environment:
#   TARGET_STORAGE, TARGET_VERSION, DATA_DIRECTORY   required
#   ETCD_NAME                 default etcd-$ETCD_HOSTNAME, etcd-$HOSTNAME, or etcd-<hostname>;
#                             MIGRATE_ETCD_NAME too, which etcd itself does not read: a container
#                             whose command runs `etcd --name ...` must not have ETCD_NAME in its
#                             environment (etcd refuses a flag its environment also sets)
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

case "$DATA_DIRECTORY" in
    *event*) PEER_PORT=2381; CLIENT_PORT=18631 ;;
    *) PEER_PORT=2380; CLIENT_PORT=18629 ;;
esac

# The member name and the cluster (ETCD_NAME or MIGRATE_ETCD_NAME, ETCD_HOSTNAME, HOSTNAME,
# INITIAL_CLUSTER, LISTEN_PEER_URLS, INITIAL_ADVERTISE_PEER_URLS, LISTEN_CLIENT_URLS) are read
# from the environment by migrate itself, with the same defaults as the original wrapper
# (etcd-<hostname>, <name>=http://localhost:<peer port>), so that its errors can say where
# each value came from.
set -- --port "$CLIENT_PORT" --peer-port "$PEER_PORT" \
    --data-dir "$DATA_DIRECTORY" \
    --target-version "$TARGET_VERSION" \
    --target-storage "$TARGET_STORAGE" \
    --etcd-data-prefix "${ETCD_DATA_PREFIX:-/registry}" \
    --etcd-server-extra-args "${ETCD_CREDS:-}" \
    --bin-dir "$BIN_DIR"
if [ -n "${TTL_KEYS_DIRECTORY:-}" ]; then
    set -- "$@" --ttl-keys-directory "$TTL_KEYS_DIRECTORY"
fi
if [ -n "${BUNDLED_VERSIONS:-}" ]; then
    set -- "$@" --bundled-versions "$BUNDLED_VERSIONS"
fi

# When migrate exits, the default etcd/etcdctl are those of the version version.txt names (the
# target after a success, the data's own after a failure), swapped by rename, never through a
# hard link; DO_NOT_MOVE_BINARIES=true keeps them as they are.
"$BIN_DIR/migrate" "$@"
