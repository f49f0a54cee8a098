#!/usr/bin/env bash
# Lints every module: gofmt, go vet (all build tags), staticcheck, a
# stand-alone build and vet (GOWORK=off), and go mod tidy leaving no diff.
# usage: hack/lint.sh DEV_TOOLS_DIR MODULE...
set -euo pipefail
dev=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
tags=envtest,netns,e2e,conformance
status=0
fail() { echo "lint: $*" >&2; status=1; }

unformatted=$(cd "$root" && git ls-files -co --exclude-standard -- '*.go' | xargs -r gofmt -l)
[ -z "$unformatted" ] || fail "gofmt would change: $unformatted"

for m in "$@"; do
  echo "== lint: $m"
  cd "$root/$m"
  go vet -tags "$tags" ./... || fail "$m: go vet"
  GOWORK=off go build ./... || fail "$m: build without go.work"
  GOWORK=off go vet ./... || fail "$m: vet without go.work"
  GOWORK=off go mod tidy -diff >/dev/null || fail "$m: go mod tidy would change go.mod/go.sum (run it with GOWORK=off)"
  GOWORK=off "$dev/staticcheck" -tags "$tags" ./... || fail "$m: staticcheck"
done
exit $status
