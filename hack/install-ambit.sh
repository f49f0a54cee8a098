#!/usr/bin/env bash
# Installs Ambit from manifests/ on a cluster, as an installer would: an
# overlay in DIR that sets the images' tag, one server-side apply, then waits
# for the controller and ztunnel to roll out. Used by hack/run.sh and
# hack/conformance.sh.
# usage: hack/install-ambit.sh KUBECONFIG DIR VERSION [ROLLOUT_TIMEOUT]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kubeconfig=$1 dir=$2 version=$3 timeout=${4:-180s}
kubectl=("$(cd "$root" && hack/tools.sh dir kube)/kubectl" --kubeconfig "$kubeconfig")

mkdir -p "$dir"
# kustomize takes only a relative path to a base.
cat > "$dir/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $(realpath --relative-to="$dir" "$root/manifests")
images:
- {name: docker.io/ambit/controller, newTag: "$version"}
- {name: docker.io/ambit/ztunnel, newTag: "$version"}
- {name: docker.io/ambit/waypoint, newTag: "$version"}
YAML
# One apply installs everything (the controller creates the GatewayClass
# itself); a few retries cover an apiserver that is still settling.
for i in 1 2 3 4 5 6; do
  if out=$("${kubectl[@]}" apply --server-side --force-conflicts -k "$dir" 2>&1); then break; fi
  [ "$i" -lt 6 ] || { echo "$out" >&2; echo "install-ambit: kubectl apply -k $dir failed" >&2; exit 1; }
  sleep 5
done
"${kubectl[@]}" -n ambit-system rollout status deployment/ambit-controller --timeout="$timeout" >/dev/null
"${kubectl[@]}" -n ambit-system rollout status daemonset/ztunnel --timeout="$timeout" >/dev/null
