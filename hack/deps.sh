#!/usr/bin/env bash
# Installs the Debian packages Ambit's tests need, when missing. Idempotent.
# Without root it only reports what is missing (and fails under CI=true).
set -euo pipefail
# command -> Debian package
declare -A need=(
  [ip]=iproute2      # inspecting test namespaces by hand
  [nft]=nftables     # the data plane's rules, inspected by tests
  [git]=git
  [haproxy]=haproxy  # make bench: the outside mTLS proxy baseline (Debian's 2.6)
  [gcc]=gcc          # make tools: runc is built with cgo
  [pkg-config]=pkg-config # make tools: runc finds libseccomp through it
)
# file -> Debian package, for packages that bring no command
declare -A need_files=(
  [/usr/include/seccomp.h]=libseccomp-dev  # make tools: runc -tags seccomp (kubelet asks for RuntimeDefault)
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
for f in "${!need_files[@]}"; do
  [ -e "$f" ] || missing+=("${need_files[$f]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing Debian packages: ${missing[*]} (install them as root)" >&2
  [ "${CI:-}" = true ] && exit 1
  exit 0
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
