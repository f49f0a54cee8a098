#!/usr/bin/env bash
# `make run`: for now, shows the binaries that exist and where each feature
# stands. It becomes "bring up a one-machine cluster with Ambit and a sample
# application" when the local Kubernetes harness lands.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
echo "Ambit binaries in bin/:"
for b in bin/controller bin/ambitctl bin/ztunnel bin/ambit-cni bin/waypoint; do
  printf '  %-18s %s\n' "$b" "$("$b" -version 2>&1 | head -n 1 || true)"
done
echo
echo "Feature status (docs/features.md):"
grep -E '^\| ' docs/features.md | sed 's/^/  /'
