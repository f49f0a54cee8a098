#!/usr/bin/env bash
# The one-machine Kubernetes (package integration/cluster; docs/reference/cluster.md).
#
#   hack/cluster.sh up [-pause-image FILE]  start it (idempotent), print the KUBECONFIG line
#   hack/cluster.sh down                    stop it, remove all it made (also after a crash)
#   hack/cluster.sh status                  processes, memory, health
#   hack/cluster.sh import FILE...          import OCI image archives into containerd (k8s.io)
#   hack/cluster.sh kubeconfig              print the kubeconfig path
#   hack/cluster.sh test                    the smoke test (go test -tags e2e ./cluster/...);
#                                           AMBIT_E2E_KEEP=1 leaves the cluster up
#
# AMBIT_CLUSTER_STATE overrides the state folder (default /var/lib/ambit-cluster).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

cmd=${1:-}
[ -n "$cmd" ] || { sed -n '2,13p' "$0" >&2; exit 2; }
shift

if [ "$cmd" = test ]; then
  cd integration
  exec go test -tags e2e -count=1 -timeout 15m -v ./cluster/... "$@"
fi

mkdir -p bin
(cd integration && CGO_ENABLED=0 go build -trimpath -o "$root/bin/ambit-cluster" ./cmd/ambit-cluster)
state=()
[ -n "${AMBIT_CLUSTER_STATE:-}" ] && state=(-state-dir "$AMBIT_CLUSTER_STATE")
exec "$root/bin/ambit-cluster" "${state[@]}" -repo "$root" "$cmd" "$@"
