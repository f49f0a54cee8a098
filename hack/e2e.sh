#!/usr/bin/env bash
# `make e2e`: the end-to-end tier. Brings the one-machine Kubernetes up
# (hack/cluster.sh), imports the images `make images` built, and runs the e2e
# tests (integration/e2e, integration/cluster; build tag e2e), which install
# Ambit from manifests/ and remove it again. The cluster is torn down at the
# end unless AMBIT_E2E_KEEP=1 (then `make cluster-down` removes it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}

if [ "$(id -u)" -ne 0 ]; then
  if [ "${CI:-}" = true ]; then echo "e2e: needs root (CI=true)" >&2; exit 1; fi
  echo "e2e: skipped: needs root" >&2; exit 0
fi
for f in controller ztunnel waypoint demo pause; do
  [ -f "bin/images/$f.tar" ] || { echo "e2e: bin/images/$f.tar is missing: run make images" >&2; exit 1; }
done

start=$(date +%s)
if [ "${AMBIT_E2E_KEEP:-}" != 1 ]; then
  trap 'hack/cluster.sh down || true' EXIT
fi
hack/cluster.sh up -pause-image bin/images/pause.tar
hack/cluster.sh import bin/images/{controller,ztunnel,waypoint,demo}.tar
echo "e2e: cluster up and images imported in $(( $(date +%s) - start ))s"

AMBIT_E2E_KUBECONFIG=$(hack/cluster.sh kubeconfig) \
AMBIT_E2E_KUBECTL="$(hack/tools.sh dir kube)/kubectl" \
AMBIT_E2E_VERSION=$version \
AMBIT_E2E_KEEP=1 \
GOTEST_PKGS="./cluster/ ./e2e/" GOTEST_FLAGS="-p=1" GOTEST_TIMEOUT=30m \
  hack/gotest.sh e2e e2e integration
