#!/usr/bin/env bash
# Builds Ambit's OCI image archives without Docker (`make images`, which runs
# `make build` first): bin/images/<name>.tar for controller, ztunnel, waypoint,
# demo and pause, tagged docker.io/ambit/<name>:$VERSION, importable with
# `ctr -n k8s.io images import`. See docs/reference/images.md.
#
#   VERSION=v1 hack/images.sh                  build every image
#   IMAGES="demo pause" hack/images.sh         build some of them
#   PUSH=registry.example.com/ambit hack/images.sh
#                                              also push <PUSH>/<name>:$VERSION
#   PUSH_INSECURE=1                            push over plain HTTP
#   SOURCE_DATE_EPOCH=<unix seconds>           creation time (default: the
#                                              last commit's time)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
revision=$(git rev-parse HEAD 2>/dev/null || true)
ldflags="-s -w -X github.com/ambit-mesh/ambit/pkg/version.Version=$VERSION"

# `make build` builds the mesh's binaries; the demo application and the pause
# binary live in the integration module and are built here, the same way.
mkdir -p bin
(cd integration && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$root/bin/" ./cmd/ambit-demo ./cmd/ambit-pause)

tool_dir=$(mktemp -d)
trap 'rm -rf "$tool_dir"' EXIT
(cd integration && go build -o "$tool_dir/ambit-image" ./cmd/ambit-image)

args=(-bin-dir bin -out-dir bin/images -version "$VERSION"
  -created "$SOURCE_DATE_EPOCH" -revision "$revision" -push "${PUSH:-}")
if [ -n "${PUSH_INSECURE:-}" ]; then
  args+=(-insecure)
fi
# shellcheck disable=SC2086 # IMAGES is a space-separated list of names
"$tool_dir/ambit-image" "${args[@]}" ${IMAGES:-}
