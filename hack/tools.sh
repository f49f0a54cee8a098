#!/usr/bin/env bash
# Builds Ambit's pinned tools from the Go module proxy into versioned folders
# under bin/tools/. Each tools/<group> module pins one group; a group is rebuilt
# only when its go.mod, go.sum or this script changes, so a second run is a
# no-op that finishes in well under a second.
#
#   hack/tools.sh                build every group that is missing or stale
#   hack/tools.sh build G...     build only the named groups
#   hack/tools.sh dir G          print the folder of group G
#   hack/tools.sh groups         list the groups
#
# Groups: dev (generators, linters), etcd, kube (control plane, kubelet,
# kube-proxy, kubectl), bench (fortio), and the one-machine cluster's node
# runtime: containerd (containerd, shim, ctr), runc (cgo, seccomp), cni
# (bridge, host-local, loopback, portmap), coredns.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

all_groups="dev etcd kube bench containerd runc cni coredns"

# version a group's main module is pinned at, read from its go.mod.
mod_version() { awk -v m="$2" '$1==m{print $2; exit}' "tools/$1/go.mod"; }

# version of a group: the folder is named after it.
group_version() {
  case "$1" in
    kube) mod_version kube k8s.io/kubernetes ;;
    etcd) mod_version etcd go.etcd.io/etcd/server/v3 ;;
    bench) mod_version bench fortio.org/fortio ;;
    containerd) mod_version containerd github.com/containerd/containerd/v2 ;;
    runc) mod_version runc github.com/opencontainers/runc ;;
    cni) mod_version cni github.com/containernetworking/plugins ;;
    coredns) mod_version coredns github.com/coredns/coredns ;;
    dev) cat tools/dev/go.mod tools/dev/go.sum | sha256sum | cut -c1-12 ;;
    *) echo "tools: unknown group $1 (groups: $all_groups)" >&2; return 2 ;;
  esac
}

group_dir() {
  local v
  v=$(group_version "$1")
  [ -n "$v" ] || { echo "tools: no version for group $1 in tools/$1/go.mod" >&2; return 2; }
  echo "$root/bin/tools/$1-$v"
}

# what each group builds: main packages.
group_pkgs() {
  case "$1" in
    kube) echo k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl \
      k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy ;;
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    dev) echo sigs.k8s.io/controller-tools/cmd/controller-gen honnef.co/go/tools/cmd/staticcheck \
      github.com/bufbuild/buf/cmd/buf google.golang.org/protobuf/cmd/protoc-gen-go \
      google.golang.org/grpc/cmd/protoc-gen-go-grpc ;;
    bench) echo fortio.org/fortio ;;
    containerd) echo github.com/containerd/containerd/v2/cmd/containerd \
      github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
      github.com/containerd/containerd/v2/cmd/ctr ;;
    runc) echo github.com/opencontainers/runc ;;
    cni) echo github.com/containernetworking/plugins/plugins/main/bridge \
      github.com/containernetworking/plugins/plugins/ipam/host-local \
      github.com/containernetworking/plugins/plugins/main/loopback \
      github.com/containernetworking/plugins/plugins/meta/portmap ;;
    coredns) echo github.com/coredns/coredns ;;
  esac
}

# extra link flags: version stamps, so the binaries report what they are.
group_ldflags() {
  local v
  v=$(group_version "$1")
  case "$1" in
    kube) echo "-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/client-go/pkg/version.gitVersion=$v" ;;
    containerd) echo "-s -w -X github.com/containerd/containerd/v2/version.Version=$v" ;;
    runc) echo "-s -w -X main.version=${v#v}" ;;
    *) echo "-s -w" ;;
  esac
}

# runc needs cgo (its nsenter) and libseccomp: kubelet asks for the
# RuntimeDefault seccomp profile. Everything else is static.
group_cgo() { case "$1" in runc) echo 1 ;; *) echo 0 ;; esac; }
group_tags() { case "$1" in runc) echo seccomp ;; *) echo "" ;; esac; }

build_group() {
  local g=$1 dir key tmp ldflags
  dir=$(group_dir "$g")
  ldflags=$(group_ldflags "$g")
  key=$(cat "tools/$g/go.mod" "tools/$g/go.sum" hack/tools.sh | sha256sum | cut -c1-16)
  if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$key" ]; then
    return 0
  fi
  if [ "$g" = runc ] && ! pkg-config --exists libseccomp 2>/dev/null && [ ! -e /usr/include/seccomp.h ]; then
    echo "tools: runc needs libseccomp-dev (run make deps as root)" >&2
    return 1
  fi
  echo "tools: building $g into ${dir#"$root"/}"
  tmp="$dir.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  # shellcheck disable=SC2046
  (cd "tools/$g" && GOWORK=off CGO_ENABLED=$(group_cgo "$g") GOFLAGS=-mod=readonly \
    go build -trimpath -tags "$(group_tags "$g")" -ldflags "$ldflags" -o "$tmp/" $(group_pkgs "$g"))
  # etcd's main package is the module root, so its binary is named "server".
  if [ "$g" = etcd ]; then mv "$tmp/server" "$tmp/etcd"; fi
  echo "$key" > "$tmp/.stamp"
  rm -rf "$dir" && mv "$tmp" "$dir"
}

# one builder at a time: parallel `make tools` runs wait instead of building
# the same group twice.
lock() {
  mkdir -p bin/tools
  exec 9>bin/tools/.lock
  flock 9
}

case "${1:-build}" in
  build)
    shift || true
    groups=${*:-$all_groups}
    lock
    for g in $groups; do build_group "$g"; done ;;
  dir)
    [ $# -eq 2 ] || { echo "usage: $0 dir GROUP" >&2; exit 2; }
    group_dir "$2" ;;
  groups)
    echo "$all_groups" ;;
  *)
    echo "usage: $0 [build [GROUP...] | dir GROUP | groups]" >&2; exit 2 ;;
esac
