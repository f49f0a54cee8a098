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
# meshbench NAME MINUTES [VAR=VALUE...]: one meshbench run with the given
# environment, stopped after three times MINUTES (at least an hour); the log goes to
# bin/test-logs/NAME.log, the report to bin/bench/NAME.md, which is printed.
meshbench() {
  local name=$1 minutes=$2
  shift 2
  local log="$root/bin/test-logs/$name.log" report="$root/bin/bench/$name.md"
  rm -f "$report"
  echo "== bench: integration/meshbench $* (about $minutes min; log in bin/test-logs/$name.log)"
  if ! (cd "$root/integration" && env AMBIT_BENCH_REPORT="$report" "$@" \
    go test -tags netns -run '^$' -bench BenchmarkPaths -benchtime 1x -timeout "$((minutes * 3 > 60 ? minutes * 3 : 60))m" ./meshbench/) >"$log" 2>&1; then
    tail -n 100 "$log"
    echo "bench: meshbench failed (full log: bin/test-logs/$name.log)" >&2
    exit 1
  fi
  grep -E '^(Benchmark|ok|PASS)' "$log"
  if [ -f "$report" ]; then
    cat "$report"
  else
    grep -E -- '--- SKIP|prerequisite' "$log" || true
    echo "bench: meshbench wrote no report" >&2
  fi
}
# Every path, five rounds.
meshbench meshbench 6
# Issue 5's latency goal: the TCP paths alone, 240 rounds of about 20 s
# (docs/reference/benchmarks.md, Goals). AMBIT_BENCH_LATENCY_ROUNDS sets
# another number; 0 leaves it out.
latency_rounds=${AMBIT_BENCH_LATENCY_ROUNDS:-240}
if [ "$latency_rounds" -gt 0 ]; then
  meshbench meshbench-latency $((latency_rounds / 3 + 5)) AMBIT_BENCH_PATHS=direct,haproxy,mesh AMBIT_BENCH_ROUNDS="$latency_rounds"
fi
