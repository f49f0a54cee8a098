#!/usr/bin/env bash
# Builds Ambit's pinned tools from the Go module proxy into versioned folders
# under bin/tools/. Each tools/<group> module pins one group; a group is rebuilt
# only when its go.mod, go.sum or this script changes, so a second run is a
# no-op that finishes in well under a second.
#
#   hack/tools.sh          build what is missing or stale
#   hack/tools.sh dir G    print the folder of group G (kube, etcd, dev, bench)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# version of a group, read from its go.mod: the folder is named after it.
group_version() {
  case "$1" in
    kube) awk '$1=="k8s.io/kubernetes"{print $2}' tools/kube/go.mod ;;
    etcd) awk '$1=="go.etcd.io/etcd/server/v3"{print $2}' tools/etcd/go.mod ;;
    bench) awk '$1=="fortio.org/fortio"{print $2}' tools/bench/go.mod ;;
    dev) cat tools/dev/go.mod tools/dev/go.sum | sha256sum | cut -c1-12 ;;
  esac
}

group_dir() { echo "$root/bin/tools/$1-$(group_version "$1")"; }

# what each group builds: main packages, and extra link flags.
group_pkgs() {
  case "$1" in
    kube) echo k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ;;
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    dev) echo sigs.k8s.io/controller-tools/cmd/controller-gen honnef.co/go/tools/cmd/staticcheck \
      github.com/bufbuild/buf/cmd/buf google.golang.org/protobuf/cmd/protoc-gen-go \
      google.golang.org/grpc/cmd/protoc-gen-go-grpc ;;
    bench) echo fortio.org/fortio ;;
  esac
}

group_ldflags() {
  local v
  v=$(group_version "$1")
  case "$1" in
    kube) echo "-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/client-go/pkg/version.gitVersion=$v" ;;
    *) echo "-s -w" ;;
  esac
}

build_group() {
  local g=$1 dir key tmp ldflags
  dir=$(group_dir "$g")
  ldflags=$(group_ldflags "$g")
  key=$(cat "tools/$g/go.mod" "tools/$g/go.sum" hack/tools.sh | sha256sum | cut -c1-16)
  if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$key" ]; then
    return 0
  fi
  echo "tools: building $g into ${dir#"$root"/}"
  tmp="$dir.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  # shellcheck disable=SC2046
  (cd "tools/$g" && GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=readonly \
    go build -trimpath -ldflags "$ldflags" -o "$tmp/" $(group_pkgs "$g"))
  # etcd's main package is the module root, so its binary is named "server".
  if [ "$g" = etcd ]; then mv "$tmp/server" "$tmp/etcd"; fi
  echo "$key" > "$tmp/.stamp"
  rm -rf "$dir" && mv "$tmp" "$dir"
}

case "${1:-build}" in
  build)
    for g in dev etcd kube bench; do build_group "$g"; done ;;
  dir)
    group_dir "$2" ;;
  *)
    echo "usage: $0 [build | dir GROUP]" >&2; exit 2 ;;
esac
