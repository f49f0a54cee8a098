#!/usr/bin/env bash
# Runs one test tier over modules and prints a closing count.
# usage: hack/gotest.sh TIER BUILD_TAGS MODULE...
# The full -v log goes to bin/test-logs/TIER.log; the console shows results
# and failures. Under CI=true a tier that ran no test fails. GOTEST_PKGS
# narrows the packages (default ./...), GOTEST_TIMEOUT sets go test's -timeout,
# GOTEST_FLAGS adds flags.
set -euo pipefail
tier=$1 tags=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/bin/test-logs"
log="$root/bin/test-logs/$tier.log"
: > "$log"

args=(-race -v)
if [ -n "$tags" ]; then args+=(-tags "$tags" -count=1); fi
[ -n "${GOTEST_TIMEOUT:-}" ] && args+=(-timeout "$GOTEST_TIMEOUT")
# shellcheck disable=SC2206
[ -n "${GOTEST_FLAGS:-}" ] && args+=(${GOTEST_FLAGS})

status=0
for m in "$@"; do
  echo "== $tier: $m"
  # go test's status is read from PIPESTATUS right after the pipeline (grep
  # exits 1 when it prints nothing, which is fine); `|| true` here would
  # replace PIPESTATUS with true's and hide every failure.
  set +e
  # shellcheck disable=SC2086
  (cd "$root/$m" && go test "${args[@]}" ${GOTEST_PKGS:-./...}) 2>&1 | tee -a "$log" |
    grep -vE '^[[:space:]]*(=== (RUN|PAUSE|CONT|NAME)|--- PASS|--- SKIP)|^(PASS|ok[[:space:]].*no test files)'
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || status=1
done

passed=$(grep -cE '^[[:space:]]*--- PASS' "$log" || true)
failed=$(grep -cE '^[[:space:]]*--- FAIL' "$log" || true)
skipped=$(grep -cE '^[[:space:]]*--- SKIP' "$log" || true)
if [ "$skipped" -gt 0 ]; then grep -E '^[[:space:]]*--- SKIP' -A1 "$log" | sed 's/^/  /'; fi
echo "$tier: $passed passed, $failed failed, $skipped skipped"
# A failed test fails the tier even if go test's status were lost.
if [ "$status" -ne 0 ] || [ "$failed" -gt 0 ]; then exit 1; fi
if [ "${CI:-}" = true ] && [ "$passed" -eq 0 ]; then
  echo "$tier: no test ran (CI=true)" >&2; exit 1
fi
