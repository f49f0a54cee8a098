#!/usr/bin/env bash
# `make run`: Ambit's main job on one machine. Brings up the one-machine
# Kubernetes (hack/cluster.sh), imports the images `make images` built,
# installs Ambit from manifests/ (an overlay that sets the image tag), deploys
# the sample application of examples/sample-app in the enrolled namespace
# ambit-demo with its steady load generator, prints what to try, and stays up
# until interrupted; then it tears everything down.
#
#   AMBIT_RUN_DETACH=1  return after printing the instructions and leave the
#                       cluster running (`make cluster-down` removes it)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
start=$(date +%s)
say() { printf '\033[1mrun:\033[0m %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "make run needs root: it starts a Kubernetes node (kubelet, containerd) on this machine" >&2
  exit 1
fi

down() {
  echo
  say "tearing down (hack/cluster.sh down)"
  hack/cluster.sh down
}
if [ "${AMBIT_RUN_DETACH:-}" != 1 ]; then
  trap down EXIT
  trap 'exit 130' INT TERM
fi

say "starting the one-machine Kubernetes"
hack/cluster.sh up -pause-image bin/images/pause.tar >/dev/null
kubeconfig=$(hack/cluster.sh kubeconfig)
kubectl=("$(hack/tools.sh dir kube)/kubectl" --kubeconfig "$kubeconfig")
say "importing images (tag $version)"
hack/cluster.sh import bin/images/{controller,ztunnel,waypoint,demo}.tar >/dev/null

# Installer overlays: manifests/ and examples/sample-app with the tag of this
# build. They live in the cluster's state folder, next to its kubeconfig.
work=$(dirname "$kubeconfig")/run
mkdir -p "$work/sample-app"
cat > "$work/sample-app/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $(realpath --relative-to="$work/sample-app" "$root/examples/sample-app")
images:
- {name: docker.io/ambit/demo, newTag: "$version"}
EOF

say "installing Ambit from manifests/"
hack/install-ambit.sh "$kubeconfig" "$work/ambit" "$version"

say "deploying the sample application (namespace ambit-demo)"
"${kubectl[@]}" apply --server-side --force-conflicts -k "$work/sample-app" >/dev/null
for d in $("${kubectl[@]}" -n ambit-demo get deployments -o name); do
  "${kubectl[@]}" -n ambit-demo rollout status "$d" --timeout=180s >/dev/null
done
ztunnel_ip=$("${kubectl[@]}" -n ambit-system get pods -l app.kubernetes.io/name=ztunnel -o jsonpath='{.items[0].status.podIP}')
loadgen_ip=$("${kubectl[@]}" -n ambit-demo get pods -l app=loadgen -o jsonpath='{.items[0].status.podIP}')

cat <<EOF

Ambit $version is running on a one-machine Kubernetes (up in $(( $(date +%s) - start ))s).

  export KUBECONFIG=$kubeconfig
  export PATH=$(hack/tools.sh dir kube):\$PATH

  kubectl get pods -A                                   # controller, ztunnel, sample app
  kubectl -n ambit-demo logs deploy/loadgen -f          # steady traffic: codes and versions every 10 s

Things to try (examples/, walked through in README.md):
  bin/ambitctl check                                    # Ambit installed and healthy?
  bin/ambitctl ztunnel-config pods                      # what the node's ztunnel captures
  kubectl apply -f examples/catalog-90-10.yaml          # HTTPRoute: catalog 90% v1, 10% v2
  bin/ambitctl waypoint apply -n ambit-demo -enroll-namespace -wait   # a waypoint for ambit-demo, used by its services
  kubectl apply -f examples/catalog-header-v2.yaml      # x-version: v2 goes to v2
  kubectl apply -f examples/authz-metrics-get-only.yaml # L7 policy at the waypoint

Metrics (Prometheus text, reachable from this machine):
  curl -s http://$ztunnel_ip:15020/metrics | grep istio_tcp       # ztunnel
  curl -s http://$loadgen_ip:9090/metrics | grep ambit_demo_load   # the load generator's view
  waypoint: curl http://<waypoint pod IP>:15020/metrics | grep istio_requests
  controller: kubectl -n ambit-system port-forward deploy/ambit-controller 15020

Cluster logs: $(dirname "$kubeconfig")/logs/   Docs: docs/reference/cluster.md
EOF

if [ "${AMBIT_RUN_DETACH:-}" = 1 ]; then
  echo "Left running (AMBIT_RUN_DETACH=1): make cluster-down removes it."
  exit 0
fi
echo "Press Ctrl-C to stop and tear everything down."
while true; do sleep 3600 & wait $!; done
