#!/usr/bin/env bash
# Renders deploy/manifests/blobswarm.yaml, the plain manifests for `kubectl apply` users, from
# the Helm chart's defaults (plus deploy/manifests/values.yaml: secrets from a Secret the user
# creates). CI fails when the committed file differs from this render (tests/tools/check-chart.sh
# manifests). It changes nothing but the output file.
#
# usage: scripts/render-manifests.sh [OUTPUT]   (default: deploy/manifests/blobswarm.yaml)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HELM="${HELM:-$ROOT/node_modules/.bin/helm}"
OUT="${1:-$ROOT/deploy/manifests/blobswarm.yaml}"
[ -x "$HELM" ] || { echo "render-manifests: $HELM missing: run scripts/setup.sh" >&2; exit 1; }

tmp="$(mktemp "$OUT.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
{
  cat <<'HEAD'
# blobswarm: plain Kubernetes manifests, rendered from helm/blobswarm with its defaults by
# scripts/render-manifests.sh (do not edit; CI checks that they match the chart).
# Namespace blobswarm; the image localhost/blobswarm:<appVersion> (change it to your
# registry's). Before `kubectl apply -f` this file:
#   kubectl create namespace blobswarm
#   kubectl -n blobswarm create secret generic blobswarm-secrets \
#     --from-literal=cluster-secret="$(openssl rand -hex 32)" \
#     --from-literal=redis-password="$(openssl rand -hex 24)"
# docs/kubernetes.md has the rest; the Helm chart is the better way to change settings.
HEAD
  "$HELM" template blobswarm "$ROOT/helm/blobswarm" --namespace blobswarm \
    -f "$ROOT/deploy/manifests/values.yaml"
} >"$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$OUT"
trap - EXIT
echo "render-manifests: wrote $OUT"
