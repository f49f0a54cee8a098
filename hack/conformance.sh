#!/usr/bin/env bash
# `make conformance`: the Gateway API conformance suite's mesh profiles
# (MESH-HTTP, MESH-GRPC) against Ambit on the one-machine Kubernetes
# (integration/conformance, build tag conformance; docs/conformance/README.md).
#
#   1. builds the images the suite's manifests name (echo-advanced: Istio's
#      echo server and client from their published sources, module
#      integration/conformance/echoapp) into bin/conformance-images/, tagged
#      exactly as the manifests say, so nothing is pulled;
#   2. brings the cluster up (hack/cluster.sh up, idempotent) and imports
#      those and Ambit's images (bin/images/, `make images`; built first when
#      missing or when AMBIT_CONFORMANCE_BUILD=1);
#   3. installs Ambit from manifests/ through an overlay with the images' tag;
#   4. runs the suite, which writes its report to
#      docs/conformance/mesh-report.yaml (AMBIT_CONFORMANCE_REPORT overrides);
#   5. removes Ambit again and tears the cluster down, unless
#      AMBIT_CONFORMANCE_KEEP=1 (then `make cluster-down` removes it).
#
# Knobs passed to the test: AMBIT_CONFORMANCE_RUN_TEST (one test's short
# name), AMBIT_CONFORMANCE_SKIP_TESTS, AMBIT_CONFORMANCE_FEATURES,
# AMBIT_CONFORMANCE_PROFILES (see integration/conformance/doc.go).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { printf 'conformance: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  if [ "${CI:-}" = true ]; then echo "conformance: needs root (CI=true)" >&2; exit 1; fi
  echo "conformance: skipped: needs root (it runs a Kubernetes node on this machine)" >&2; exit 0
fi
start=$(date +%s)

# Ambit's images: their tag is read from the archives, so the version under
# test is the one that was built, even when the tree changed since.
need_build=${AMBIT_CONFORMANCE_BUILD:-}
for f in controller ztunnel waypoint pause; do
  [ -f "bin/images/$f.tar" ] || need_build=1
done
if [ "$need_build" = 1 ]; then
  say "building Ambit's images (make images)"
  make images
fi
archive_tag() {
  tar -xOf "bin/images/$1.tar" index.json |
    sed -n "s|.*\"io.containerd.image.name\":\"docker.io/ambit/$1:\([^\"]*\)\".*|\1|p"
}
version=$(archive_tag controller)
[ -n "$version" ] || { echo "conformance: cannot read the tag of bin/images/controller.tar" >&2; exit 1; }
for f in ztunnel waypoint; do
  if [ "$(archive_tag "$f")" != "$version" ]; then
    echo "conformance: bin/images/$f.tar is not tagged $version like controller.tar: run make images" >&2
    exit 1
  fi
done

# The suite's images.
say "building the suite's images (bin/conformance-images)"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
echo_dir=bin/conformance/echo
mkdir -p "$echo_dir"
(
  cd integration/conformance/echoapp
  GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$root/$echo_dir/" \
    istio.io/istio/pkg/test/echo/cmd/server istio.io/istio/pkg/test/echo/cmd/client
)
istio_dir=$(cd integration/conformance/echoapp && GOWORK=off go list -m -f '{{.Dir}}' istio.io/istio)
istio_version=$(cd integration/conformance/echoapp && GOWORK=off go list -m -f '{{.Version}}' istio.io/istio)
(cd integration && go build -o "$root/bin/ambit-conformance-images" ./cmd/ambit-conformance-images)
bin/ambit-conformance-images -echo-bin-dir "$echo_dir" \
  -echo-cert "$istio_dir/tests/testdata/certs/dns/cert-chain.pem" \
  -echo-key "$istio_dir/tests/testdata/certs/dns/key.pem" \
  -out-dir bin/conformance-images -created "$SOURCE_DATE_EPOCH" -revision "istio.io/istio@$istio_version"

if [ "${AMBIT_CONFORMANCE_KEEP:-}" != 1 ]; then
  trap 'hack/cluster.sh down || true' EXIT
fi
say "starting the cluster"
hack/cluster.sh up -pause-image bin/images/pause.tar
hack/cluster.sh import bin/images/{controller,ztunnel,waypoint}.tar bin/conformance-images/echo-advanced.tar
kubeconfig=$(hack/cluster.sh kubeconfig)
kubectl=("$(hack/tools.sh dir kube)/kubectl" --kubeconfig "$kubeconfig")
say "cluster up and images imported in $(( $(date +%s) - start ))s"

# Install Ambit: manifests/ with the images' tag.
say "installing Ambit $version"
overlay=$(dirname "$kubeconfig")/conformance/ambit
hack/install-ambit.sh "$kubeconfig" "$overlay" "$version" 300s

report=${AMBIT_CONFORMANCE_REPORT:-$root/docs/conformance/mesh-report.yaml}
# The suite runs in integration/conformance: a relative path is the caller's.
report=$(realpath -m "$report")
mkdir -p "$(dirname "$report")"
suite_start=$(date +%s)
status=0
AMBIT_CONFORMANCE_KUBECONFIG=$kubeconfig \
AMBIT_CONFORMANCE_VERSION=$version \
AMBIT_CONFORMANCE_REPORT=$report \
GOTEST_PKGS=./conformance/ GOTEST_TIMEOUT=60m \
  hack/gotest.sh conformance conformance integration || status=$?
# Judge from the log as well: the suite must have run and no test failed.
log=bin/test-logs/conformance.log
if grep -qE '^[[:space:]]*--- FAIL|^FAIL' "$log" || ! grep -qE '^--- PASS: TestMeshConformance ' "$log"; then
  status=1
fi
if [ "$status" -ne 0 ]; then
  say "FAILED:"
  grep -E '^[[:space:]]*--- FAIL: TestMeshConformance/[^/ ]+ ' "$log" | sed 's/^[[:space:]]*/  /' || true
fi
say "suite ran in $(( $(date +%s) - suite_start ))s (log: bin/test-logs/conformance.log, report: $report)"

if [ "${AMBIT_CONFORMANCE_KEEP:-}" != 1 ]; then
  say "removing Ambit"
  "${kubectl[@]}" delete -k "$overlay" --ignore-not-found --wait=true --timeout=180s >/dev/null || true
fi
say "done in $(( $(date +%s) - start ))s"
exit "$status"
