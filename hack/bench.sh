#!/usr/bin/env bash
# `make bench`: the Go benchmarks of every module, then the data-plane
# benchmark (integration/meshbench: TCP paths direct, an HAProxy mTLS pair and
# the mesh; HTTP paths direct, an L7 HAProxy, the L4 mesh and the mesh through
# the waypoint; one netlab run, needs root). See docs/reference/benchmarks.md.
# usage: hack/bench.sh MODULE...
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

for m in "$@"; do
  (cd "$root/$m" && go test -run '^$' -bench . -benchmem ./...)
done

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: the data-plane benchmark (integration/meshbench) needs root: run 'sudo make bench'" >&2
  [ "${CI:-}" != true ]
  exit
fi
mkdir -p "$root/bin/test-logs" "$root/bin/bench"
log="$root/bin/test-logs/bench.log" report="$root/bin/bench/meshbench.md"
rm -f "$report"
echo "== bench: integration/meshbench (about 3 min; log in bin/test-logs/bench.log)"
if ! (cd "$root/integration" && AMBIT_BENCH_REPORT="$report" \
  go test -tags netns -run '^$' -bench . -benchtime 1x -timeout 10m ./meshbench/) >"$log" 2>&1; then
  tail -n 100 "$log"
  echo "bench: meshbench failed (full log: bin/test-logs/bench.log)" >&2
  exit 1
fi
grep -E '^(Benchmark|ok|PASS)' "$log"
if [ -f "$report" ]; then
  cat "$report"
else
  grep -E -- '--- SKIP|prerequisite' "$log" || true
  echo "bench: meshbench wrote no report" >&2
fi
