#!/usr/bin/env bash
# End to end on this machine: what the Helm chart renders, run for real with podman.
#   1. build the images (deploy/build-image.sh: runtime and workload; cached while their
#      inputs do not change)
#   2. start the node's neighbours on loopback: redis-server (with a password) and a plain
#      HTTP Azurite holding one model blob
#   3. render the chart (helm template, tests/integration/k8s_e2e.values.yaml + this run's
#      ports), turn the DaemonSet's pod template into a Pod (tests/tools/k8s-pod-from-chart.py:
#      what the kubelet would do on one node) and run it with `podman kube play`
#   4. check the agent as the cluster would: the probes' endpoints, the init container's
#      exit, the securityContext in force in the agent's process (uid/gid, capabilities,
#      no_new_privs, seccomp, read-only root), its resolved env, what the init container
#      left on the node (store, socket directory, shim), the agent registered in Redis
#   5. a workload pod as NOTES.txt tells users to write one (the socket directory as a
#      read-only hostPath, RUNAI_STREAMER_EXPERIMENTAL_AZURE_CACHE_LIB, BLOBSWARM_AGENT_UID,
#      supplementalGroups; read-only root) loads the blob through the shim, cold then warm,
#      byte-exact (--expect-seed), each load through the agent; then once more through the
#      shim mounted at the streamer's auto-discovery path (docs/kubernetes.md, subPath)
#   6. the agent's /metrics: bytes served (>= 3 x the blob, warm from the store), the origin
#      read once, Redis up, the tamper protection mode; then SIGTERM: the agent exits 0.
# Steps 3-6 run twice, each on a node of its own: the chart's defaults (non-root agent), then
# agent.tamperProtection=true (uid 0 with CAP_LINUX_IMMUTABLE only, chunk files immutable).
# Pods run on the host's network (hostNetwork: true), as node agents usually do: the agent's
# ports are picked free for the run, and Redis and Azurite listen on 127.0.0.1 only. The node's
# filesystem (hostPath volumes) is a temporary directory.
#
# usage: test_k8s_e2e.sh       environment: BS_GENDATA (bs-gendata), optional BS_KEEP_TMP=1
# Needs root (rootful podman), podman, runc, catatonit, mmdebstrap, redis-server, node with
# node_modules (Azurite, helm: scripts/setup.sh), Debian's python3 with python3-yaml.
# Exit 77 when something is missing, except under CI=true, where that fails.
set -Eeuo pipefail
trap 'echo "k8s_e2e: line $LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly ROOT
readonly CHART=$ROOT/helm/blobswarm
readonly VALUES=$ROOT/tests/integration/k8s_e2e.values.yaml
readonly TO_POD=$ROOT/tests/tools/k8s-pod-from-chart.py
readonly AZURITE_MAIN=$ROOT/node_modules/azurite/dist/src/blob/main.js
readonly HELM=${HELM:-$ROOT/node_modules/.bin/helm}
readonly PY=/usr/bin/python3 # Debian's, with python3-yaml
readonly IMAGE=localhost/blobswarm:e2e     # what k8s_e2e.values.yaml names
readonly WORKLOAD=localhost/blobswarm-workload:e2e
readonly RELEASE=blobswarm NAMESPACE=blobswarm
readonly ACCOUNT=devstoreaccount1
# Azurite's well-known development account key (public, documented by Microsoft).
readonly ACCOUNT_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
readonly CONTAINER=models BLOB=e2e/model-00001-of-00001.safetensors
readonly SEED=41 SIZE=$((48 * 1048576 + 4321))
readonly WORKLOAD_UID=10002
readonly START_S=30 READY_S=60 LOAD_S=180 STOP_S=45 # bounded waits, seconds
readonly PODMAN_S=120 # any other podman command (play, run, rm)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/podman/containers.conf}

log() { printf '[%s k8s_e2e] %s\n' "$(date +%T)" "$*"; }
missing() {
  echo "k8s_e2e: $*" >&2
  [ "${CI:-}" = true ] && exit 1 # CI installs it (scripts/setup.sh): missing is a failure
  echo "k8s_e2e: skipped" >&2
  exit 77
}

# ---------------------------------------------------------------------------------------
# what it needs
# ---------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || missing "needs root (rootful podman, hostPath volumes)"
for t in podman runc catatonit mmdebstrap redis-server redis-cli node curl; do
  command -v "$t" >/dev/null 2>&1 ||
    missing "$t is missing: apt-get install podman runc catatonit mmdebstrap redis-server" \
      "nodejs curl (scripts/setup.sh installs them)"
done
[ -x "$HELM" ] || missing "helm is missing at $HELM (scripts/setup.sh unpacks it)"
[ -f "$AZURITE_MAIN" ] || missing "Azurite is missing in node_modules (scripts/setup.sh runs npm ci)"
"$PY" -c 'import yaml' 2>/dev/null || missing "$PY cannot import yaml: apt-get install python3-yaml"
: "${BS_GENDATA:?set BS_GENDATA to bs-gendata}"

T=$(mktemp -d "${TMPDIR:-/tmp}/bs-k8s-e2e.XXXXXX")
readonly T
# Pod names carry this run's id: runs on one machine (two checkouts) do not collide.
RUN=$(printf '%s' "${T##*.}" | tr '[:upper:]' '[:lower:]')
readonly RUN
PIDS=()
PODS=()
STEP=setup
T0=$(date +%s%N)

dump() {
  local p c
  for p in "${PODS[@]}"; do
    for c in $(podman pod inspect "$p" --format '{{range .Containers}}{{.Name}} {{end}}' 2>/dev/null ||
      true); do
      echo "----- podman logs $c (last 30 lines) -----" >&2
      podman logs --tail 30 "$c" >&2 2>&1 || true
    done
  done
  for p in "$T"/*.log; do
    [ -s "$p" ] || continue
    echo "----- ${p#"$T"/} (last 15 lines) -----" >&2
    tail -n 15 "$p" >&2
  done
}

fail() {
  echo "FAIL [$STEP]: $*" >&2
  dump
  exit 1
}

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  local rc=$? p pid
  trap - ERR
  for p in "${PODS[@]}"; do
    timeout "$PODMAN_S" podman pod rm -f -t 5 "$p" >/dev/null 2>&1 || echo "k8s_e2e: note: could not remove pod $p" >&2
  done
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    timeout 5 tail --pid="$pid" -f /dev/null 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "${BS_KEEP_TMP:-0}" = 1 ]; then
    echo "k8s_e2e: kept $T" >&2
  else
    chattr -R -i "$T" 2>/dev/null || true # chunk files are immutable where the agent can
    rm -rf "$T"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }

# free_port: a TCP port nothing listens on (and not handed out before in this run).
USED_PORTS=" "
free_port() {
  local p i
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 40000))
    case $USED_PORTS in *" $p "*) continue ;; esac
    if [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]; then
      USED_PORTS+="$p "
      echo "$p"
      return 0
    fi
  done
  fail "no free port found"
}

# wait_log FILE REGEX SECONDS PID: until FILE matches REGEX; fails if PID dies first.
wait_log() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -Eq "$2" "$1" 2>/dev/null && return 0
    kill -0 "$4" 2>/dev/null || fail "$(basename "$1" .log) exited during start-up"
    sleep 0.1
  done
  fail "$(basename "$1" .log) did not start within $3 s"
}

# metric FILE SERIES: the value of one series in a /metrics snapshot (0 when absent).
metric() {
  awk -v s="$2" '$1 == s { v = $2 } END { printf "%.0f\n", (v == "" ? 0 : v) }' "$1"
}

# ---------------------------------------------------------------------------------------
# 1. images
# ---------------------------------------------------------------------------------------
STEP=image
t=$(date +%s%N)
bash "$ROOT/deploy/build-image.sh" --image "$IMAGE" --workload-image "$WORKLOAD" \
  >"$T/build-image.log" 2>&1 || fail "deploy/build-image.sh failed"
grep '^build-image:' "$T/build-image.log"
BUILD_MS=$(ms_since "$t")
IMAGE_SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
CACHED=no
grep -q 'inputs unchanged' "$T/build-image.log" && CACHED=yes

# ---------------------------------------------------------------------------------------
# 2. Redis and Azurite on loopback, one model blob
# ---------------------------------------------------------------------------------------
STEP=servers
REDIS_PORT=$(free_port)
REDIS_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '+/=')
mkdir -p "$T/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --requirepass "$REDIS_PASSWORD" \
  --save '' --appendonly no --dir "$T/redis" --logfile "$T/redis.log" --daemonize no &
PIDS+=($!)
wait_log "$T/redis.log" 'Ready to accept connections' "$START_S" "${PIDS[-1]}"

(cd "$T" && exec node "$AZURITE_MAIN" --blobHost 127.0.0.1 --blobPort 0 --inMemoryPersistence \
  --silent --disableTelemetry --skipApiVersionCheck >"$T/azurite.log" 2>&1) &
PIDS+=($!)
wait_log "$T/azurite.log" 'successfully listens on http://127\.0\.0\.1:[0-9]+' "$START_S" "${PIDS[-1]}"
AZ_PORT=$(grep -Eo 'http://127\.0\.0\.1:[0-9]+' "$T/azurite.log" | head -n1 | sed 's/.*://')
readonly ENDPOINT=http://127.0.0.1:$AZ_PORT/$ACCOUNT
readonly CONN="DefaultEndpointsProtocol=http;AccountName=$ACCOUNT;AccountKey=$ACCOUNT_KEY;BlobEndpoint=$ENDPOINT;"
"$BS_GENDATA" --seed "$SEED" --size "$SIZE" >"$T/model.bin"
printf '["container","--conn","%s","--container","%s"]\n' "$CONN" "$CONTAINER" >"$T/upload.jsonl"
printf '["upload","--conn","%s","--container","%s","--blob","%s","--file","%s","--single-shot"]\n' \
  "$CONN" "$CONTAINER" "$BLOB" "$T/model.bin" >>"$T/upload.jsonl"
timeout 120 node "$ROOT/tests/tools/azfixture.mjs" batch <"$T/upload.jsonl" >"$T/upload.log" 2>&1 ||
  fail "upload to Azurite failed: $(tail -n 5 "$T/upload.log")"
rm -f "$T/model.bin"
log "redis-server 127.0.0.1:$REDIS_PORT (password), Azurite $ENDPOINT with $CONTAINER/$BLOB ($SIZE bytes)"

# ---------------------------------------------------------------------------------------
# 3-6. one scenario: the chart rendered with some values, played, checked, loaded through
# ---------------------------------------------------------------------------------------
# pod_field PATH...: a value of DIR/pod.json (the converter's description of the Pod).
pod_field() {
  "$PY" -c 'import json,sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$SC/pod.json" "$@"
}

# caps_mask NAME...: the /proc/PID/status bit mask of capabilities named as in Kubernetes.
caps_mask() {
  "$PY" -c 'import sys
bits = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "KILL": 5, "SETGID": 6, "SETUID": 7,
        "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10, "SYS_ADMIN": 21, "SYS_PTRACE": 19}
m = 0
for n in sys.argv[1:]:
    n = n.upper().removeprefix("CAP_")
    if n not in bits:
        sys.exit(f"unknown capability {n}")
    m |= 1 << bits[n]
print(f"{m:016x}")' "$@"
}

# scenario NAME [helm --set KEY=VALUE...]
scenario() {
  local name=$1 t i state ready kind path port pid st want_uid want_gid caps cap_mask s op f
  local store_dir socket_dir shim agent_pod wl_uid wl_groups rc n served local_b origin_b
  local redis_up tamper node=node-$1
  shift
  SC=$T/$name
  mkdir -p "$SC"
  local agent_port peer_port
  agent_port=$(free_port)
  peer_port=$(free_port)

  STEP=$name/render
  local sets=(--set "agent.httpPort=$agent_port" --set "peers.port=$peer_port"
    --set "redis.external.url=redis://127.0.0.1:$REDIS_PORT")
  for i in "$@"; do sets+=(--set "$i"); done
  "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --values "$VALUES" "${sets[@]}" \
    >"$SC/rendered.yaml" 2>"$SC/helm.log" || fail "helm template failed: $(cat "$SC/helm.log")"
  "$PY" "$TO_POD" --rendered "$SC/rendered.yaml" --objects "$T/objects.yaml" --dir "$SC" \
    --node-name "$node" --node-ip 127.0.0.1 --pod-name "blobswarm-$name-$RUN" --out "$SC/pod.yaml" ||
    fail "the DaemonSet's pod template could not be turned into a Pod"
  agent_pod=$(pod_field pod)
  store_dir=$(pod_field hostPaths store host)
  socket_dir=$(pod_field hostPaths socket host)
  [ -n "$store_dir" ] || fail "no hostPath volume named store"
  [ -n "$socket_dir" ] || fail "no hostPath volume named socket"

  STEP=$name/play
  t=$(date +%s%N)
  PODS+=("$agent_pod")
  timeout "$PODMAN_S" podman kube play "$SC/pod.yaml" >"$SC/play.log" 2>&1 ||
    fail "podman kube play failed: $(cat "$SC/play.log")"
  ready=0
  for ((i = 0; i < READY_S * 10; i++)); do
    state=$(podman inspect --format '{{.State.Status}}' "$agent_pod-agent" 2>/dev/null || true)
    case $state in exited | stopped | dead) fail "the agent container is $state" ;; esac
    if curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$agent_port/readyz" 2>/dev/null; then
      ready=1
      break
    fi
    sleep 0.1
  done
  [ "$ready" = 1 ] || fail "the agent was not ready within $READY_S s"
  log "[$name] agent pod $agent_pod ready in $(secs "$(ms_since "$t")") s (HTTP :$agent_port, peers :$peer_port)"

  STEP=$name/probes
  grep -q livenessProbe "$SC/probes.json" || fail "the DaemonSet has no liveness probe"
  grep -q readinessProbe "$SC/probes.json" || fail "the DaemonSet has no readiness probe"
  while read -r kind path port; do
    curl -fsS --max-time 5 -o /dev/null "http://127.0.0.1:$port$path" ||
      fail "$kind: GET http://127.0.0.1:$port$path failed"
    log "[$name] ok: $kind GET :$port$path answers 2xx"
  done < <("$PY" -c 'import json,sys
for p in json.load(open(sys.argv[1])): print(p["kind"], p["path"], p["port"])' "$SC/probes.json")

  STEP=$name/securityContext
  # The init container ran and succeeded; the agent's process runs as the rendered
  # securityContext says: uid/gid, capabilities (bounding set = added ones; effective only
  # for uid 0: Kubernetes gives a non-root process no capability), no_new_privs, seccomp,
  # read-only root. Its environment is the one the chart rendered, resolved.
  rc=$(podman inspect --format '{{.State.ExitCode}} {{.State.Status}}' "$agent_pod-prepare-node") ||
    fail "no init container prepare-node"
  [ "$rc" = "0 exited" ] || fail "the init container: $rc"
  pid=$(podman inspect --format '{{.State.Pid}}' "$agent_pod-agent")
  st=/proc/$pid/status
  want_uid=$(pod_field containers agent runAsUser)
  want_gid=$(pod_field containers agent runAsGroup)
  [ -n "$want_uid" ] || want_uid=65532 # the image's USER
  [ -n "$want_gid" ] || want_gid=65532
  [ "$(awk '/^Uid:/ { print $2 ":" $3 ":" $4 }' "$st")" = "$want_uid:$want_uid:$want_uid" ] ||
    fail "agent uids: $(grep Uid "$st"), expected $want_uid"
  [ "$(awk '/^Gid:/ { print $2 }' "$st")" = "$want_gid" ] || fail "agent gid: $(grep Gid "$st")"
  caps=$("$PY" -c 'import json,sys
sc = json.load(open(sys.argv[1]))["containers"]["agent"]["securityContext"]
print(" ".join(sc.get("capabilities", {}).get("add", [])))' "$SC/pod.json")
  # shellcheck disable=SC2086 # one word per capability
  cap_mask=$(caps_mask $caps)
  [ "$(awk '/^CapBnd:/ { print $2 }' "$st")" = "$cap_mask" ] ||
    fail "agent's bounding set $(awk '/^CapBnd:/ { print $2 }' "$st"), expected $cap_mask (drop ALL, add: $caps)"
  if [ "$want_uid" = 0 ]; then
    [ "$(awk '/^CapEff:/ { print $2 }' "$st")" = "$cap_mask" ] ||
      fail "agent's effective capabilities: $(grep CapEff "$st")"
  fi
  [ "$(awk '/^NoNewPrivs:/ { print $2 }' "$st")" = 1 ] || fail "allowPrivilegeEscalation: false not in force"
  [ "$(awk '/^Seccomp:/ { print $2 }' "$st")" = 2 ] || fail "no seccomp filter (RuntimeDefault)"
  grep -Eq '^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ / ro[, ]' "/proc/$pid/mountinfo" ||
    fail "the root filesystem is not read-only"
  [ "$(pod_field containers agent env BLOBSWARM_NODE_NAME)" = "$node" ] ||
    fail "BLOBSWARM_NODE_NAME is not the node's name"
  [ "$(pod_field containers agent env BLOBSWARM_ADVERTISE_ADDR)" = "127.0.0.1:$peer_port" ] ||
    fail "BLOBSWARM_ADVERTISE_ADDR is '$(pod_field containers agent env BLOBSWARM_ADVERTISE_ADDR)'"
  log "[$name] ok: init container exit 0; agent uid/gid $want_uid:$want_gid," \
    "capabilities {${caps:-none}}, no_new_privs, seccomp, read-only root"

  STEP=$name/node
  # What the init container left on the node: the store root's (0711) holding the agent's
  # (chunks-UID, 0700), the socket directory nobody's (65534) with the agent's group (1775),
  # lib/ and the shim nobody's (0755, 0444: the agent, root or not, cannot change them), the
  # socket the agent's.
  [ "$(stat -c '%u:%g %a' "$store_dir")" = "0:0 711" ] ||
    fail "store dir: $(stat -c '%u:%g %a' "$store_dir")"
  [ "$(stat -c '%u:%g %a' "$store_dir/chunks-$want_uid")" = "$want_uid:$want_gid 700" ] ||
    fail "store: $(stat -c '%u:%g %a' "$store_dir/chunks-$want_uid" 2>&1)"
  [ "$(stat -c '%u:%g %a' "$socket_dir")" = "65534:$want_gid 1775" ] ||
    fail "socket dir: $(stat -c '%u:%g %a' "$socket_dir")"
  [ -S "$socket_dir/agent.sock" ] || fail "no socket in $socket_dir"
  [ "$(stat -c %u "$socket_dir/agent.sock")" = "$want_uid" ] || fail "the socket is not the agent's"
  [ "$(stat -c '%u:%g %a' "$socket_dir/lib")" = "65534:65534 755" ] ||
    fail "lib dir: $(stat -c '%u:%g %a' "$socket_dir/lib")"
  shim=$socket_dir/lib/libblobswarm.so
  [ "$(stat -c '%u:%g %a' "$shim")" = "65534:65534 444" ] || fail "shim: $(stat -c '%u:%g %a' "$shim")"
  cmp -s "$shim" "$T/image-shim.so" || fail "the shim on the node differs from the image's"
  log "[$name] ok: store dir, socket dir, socket, lib dir, shim on the node as the chart says"

  STEP=$name/shim-readonly
  # A process with the agent's identity (podman exec in the agent's container: same uid, gid,
  # capabilities, checked) cannot open the shim for writing, replace or rename it or lib/,
  # nor change their modes; it can create and remove a file of its own in the socket dir.
  podman exec "$agent_pod-agent" sh -c 'command -v mv && command -v chmod && command -v cat' \
    >/dev/null || fail "the image lacks mv, chmod or cat (needed by this check)"
  podman exec "$agent_pod-agent" cat /proc/self/status >"$SC/exec-status" ||
    fail "podman exec in the agent's container failed"
  for f in Uid Gid CapEff CapBnd; do
    [ "$(awk -v f="$f:" '$1 == f { $1 = ""; print }' "$SC/exec-status")" = \
      "$(awk -v f="$f:" '$1 == f { $1 = ""; print }' "$st")" ] ||
      fail "podman exec's $f differs from the agent's: $(grep "^$f:" "$SC/exec-status")"
  done
  s=/run/blobswarm
  for op in "exec 3>>$s/lib/libblobswarm.so" "exec 3<>$s/lib/libblobswarm.so" \
    "mv -f $s/lib $s/lib.moved" "mv -f $s/lib/libblobswarm.so $s/lib/x.so" \
    ": >$s/lib/x.so" "chmod 0777 $s/lib" "chmod 0666 $s/lib/libblobswarm.so" "chmod 0777 $s"; do
    if podman exec "$agent_pod-agent" sh -c "$op" >/dev/null 2>&1; then
      fail "the agent's process could: $op"
    fi
  done
  if [ "$(stat -c '%u:%g %a' "$shim")" != "65534:65534 444" ] || ! cmp -s "$shim" "$T/image-shim.so"; then
    fail "the shim changed under the checks above"
  fi
  podman exec "$agent_pod-agent" sh -c ": >$s/.probe-$RUN && rm -f $s/.probe-$RUN" ||
    fail "the agent's process cannot create and remove a file in the socket dir"
  log "[$name] ok: the agent's uid cannot write, rename or chmod the shim or lib/"

  STEP=$name/redis
  for ((i = 0; i < 100; i++)); do
    rcli --scan | grep -q -- "$node" && break
    sleep 0.1
  done
  rcli --scan | grep -q -- "$node" || fail "the agent did not register in Redis (password, URL?)"
  log "[$name] ok: the agent registered in Redis"

  STEP=$name/workload
  curl -fsS --max-time 10 "http://127.0.0.1:$agent_port/metrics" >"$SC/m.0" || fail "no /metrics"
  # The pod as NOTES.txt and docs/kubernetes.md tell users to write it: the socket directory
  # read-only, (a) RUNAI_STREAMER_EXPERIMENTAL_AZURE_CACHE_LIB naming the shim in it and
  # (b) the shim mounted at the streamer's auto-discovery path; BLOBSWARM_AGENT_UID
  # = the agent's uid, a non-root pod joins the agent's group; plus its own Azure identity.
  # A non-root workload in both modes: it joins the agent's group (agent.runAsGroup, kept
  # with tamperProtection) to reach the socket (0660).
  wl_uid=$WORKLOAD_UID
  wl_groups="[$want_gid]"
  cat >"$SC/workload.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: workload-$name-$RUN
spec:
  hostNetwork: true
  restartPolicy: Never
  securityContext:
    runAsUser: $wl_uid
    runAsGroup: $wl_uid
    supplementalGroups: $wl_groups
  containers:
    - name: loader
      image: $WORKLOAD
      imagePullPolicy: Never
      command: [python3, /loader/loader.py, $CONTAINER, $BLOB, "$SIZE", "$SEED"]
      env:
        - {name: RUNAI_STREAMER_EXPERIMENTAL_AZURE_CACHE_LIB, value: /run/blobswarm/lib/libblobswarm.so}
        - {name: BLOBSWARM_AGENT_UID, value: "$want_uid"}
        - {name: AZURE_STORAGE_CONNECTION_STRING, value: "$CONN"}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: [ALL]}
      volumeMounts:
        - {name: blobswarm, mountPath: /run/blobswarm, readOnly: true}
        - {name: shim, mountPath: $PURELIB/dacs_client/libStorageDirect.so, readOnly: true}
        - {name: loader, mountPath: /loader, readOnly: true}
        - {name: tmp, mountPath: /tmp}
  volumes:
    - name: blobswarm
      hostPath: {path: $socket_dir, type: Directory}
    # docs/kubernetes.md mounts the volume blobswarm with subPath lib/libblobswarm.so; podman
    # 4.3 ignores subPath on hostPath volumes (it mounts the whole directory), so the file
    # that subPath names is given as a hostPath of its own: the same bind mount.
    - name: shim
      hostPath: {path: $socket_dir/lib/libblobswarm.so, type: File}
    - name: loader
      hostPath: {path: $T/loader, type: Directory}
    - name: tmp
      emptyDir: {}
EOF
  t=$(date +%s%N)
  PODS+=("workload-$name-$RUN")
  timeout "$PODMAN_S" podman kube play "$SC/workload.yaml" >"$SC/play-workload.log" 2>&1 ||
    fail "podman kube play (workload) failed: $(cat "$SC/play-workload.log")"
  rc=$(timeout "$LOAD_S" podman wait "workload-$name-$RUN-loader" 2>/dev/null) ||
    fail "the workload did not finish within $LOAD_S s"
  LOAD_MS=$(ms_since "$t")
  podman logs "workload-$name-$RUN-loader" >"$SC/workload.out" 2>&1 || true
  sed 's/^/  | /' "$SC/workload.out"
  [ "$rc" = 0 ] || fail "the workload exited $rc"
  n=$(grep -c 'chunk(s) served by the agent' "$SC/workload.out" || true)
  [ "$n" = 3 ] || fail "not every load went through the agent (blobswarm-read's report above)"
  ! grep -Eq 'refused|every read went to Azure' "$SC/workload.out" || fail "the shim bypassed the agent"

  STEP=$name/metrics
  curl -fsS --max-time 10 "http://127.0.0.1:$agent_port/metrics" >"$SC/m.1" || fail "no /metrics"
  served=0
  while read -r src; do
    served=$((served + $(metric "$SC/m.1" "$src") - $(metric "$SC/m.0" "$src")))
  done < <(grep -o 'blobswarm_agent_served_bytes_total{source="[a-z_]*"}' "$SC/m.1" | sort -u)
  local_b=$(($(metric "$SC/m.1" 'blobswarm_agent_served_bytes_total{source="local"}') - \
    $(metric "$SC/m.0" 'blobswarm_agent_served_bytes_total{source="local"}')))
  origin_b=$(($(metric "$SC/m.1" blobswarm_agent_origin_bytes_total) - \
    $(metric "$SC/m.0" blobswarm_agent_origin_bytes_total)))
  redis_up=$(metric "$SC/m.1" blobswarm_redis_up)
  tamper=$(sed -n 's/^blobswarm_store_tamper_protection{mode="\([a-z]*\)"} 1$/\1/p' "$SC/m.1")
  log "[$name] agent /metrics: served $served bytes (from its store: $local_b), read" \
    "$origin_b bytes from the origin; redis_up $redis_up; tamper protection: ${tamper:-?}"
  [ "$served" -gt 0 ] || fail "the agent served no bytes"
  [ "$served" -ge $((3 * SIZE)) ] || fail "served $served bytes, expected >= 3 x $SIZE (3 loads)"
  [ "$local_b" -ge $((2 * SIZE)) ] || fail "the warm loads were not served from the store ($local_b bytes)"
  [ "$origin_b" = "$SIZE" ] || fail "the origin was read $origin_b bytes, expected the blob once ($SIZE)"
  [ "$redis_up" = 1 ] || fail "blobswarm_redis_up is $redis_up"
  [ "$tamper" = "$WANT_TAMPER" ] || fail "tamper protection is '$tamper', expected $WANT_TAMPER"
  SERVED=$served

  STEP=$name/stop
  t=$(date +%s%N)
  timeout $((STOP_S + 30)) podman pod stop -t "$STOP_S" "$agent_pod" >/dev/null 2>&1 ||
    fail "podman pod stop failed"
  rc=$(podman inspect --format '{{.State.ExitCode}}' "$agent_pod-agent")
  [ "$rc" = 0 ] || fail "the agent exited $rc on SIGTERM"
  log "[$name] ok: agent stopped (SIGTERM) with status 0 in $(secs "$(ms_since "$t")") s"
}

# The Secret an admin would have created for the external Redis's password.
cat >"$T/objects.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: e2e-redis, namespace: $NAMESPACE}
stringData: {password: "$REDIS_PASSWORD"}
EOF
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --no-auth-warning -a "$REDIS_PASSWORD" "$@"; }
timeout "$PODMAN_S" podman run --rm --pull=never --entrypoint cat "$IMAGE" /usr/lib/blobswarm/libblobswarm.so \
  >"$T/image-shim.so" || fail "cannot read the shim out of $IMAGE"
# What the workload runs: where the streamer would find the shim, (a) the library the env
# var names and (b) the auto-discovery path in site-packages; for each, the streamer's load
# check (cache_abi_version) and blobswarm-read (which loads it as the streamer does), byte-
# exact: (a) cold then warm, (b) warm.
mkdir -p "$T/loader"
cat >"$T/loader/loader.py" <<'EOF'
import ctypes, os, subprocess, sys, sysconfig
routes = [
    ("env", os.environ["RUNAI_STREAMER_EXPERIMENTAL_AZURE_CACHE_LIB"], ("cold", "warm")),
    ("site-packages", os.path.join(sysconfig.get_paths()["purelib"], "dacs_client",
                                   "libStorageDirect.so"), ("warm",)),
]
for route, lib, runs in routes:
    v = ctypes.CDLL(lib, mode=os.RTLD_NOW | os.RTLD_LOCAL).cache_abi_version()
    print(f"loader: ({route}) {lib}: cache_abi_version() = {v}", flush=True)
    if v != 1:
        sys.exit(4)
    for run in runs:
        rc = subprocess.call(["blobswarm-read", "--lib", lib, "--container", sys.argv[1],
                              "--blob", sys.argv[2], "--size", sys.argv[3],
                              "--expect-seed", sys.argv[4]])
        print(f"loader: ({route}) {run} load exit status {rc}", flush=True)
        if rc != 0:
            sys.exit(rc)
EOF
# The workload image's site-packages, found as docs/kubernetes.md says.
PURELIB=$(timeout "$PODMAN_S" podman run --rm --pull=never "$WORKLOAD" python3 -c \
  'import sysconfig; print(sysconfig.get_paths()["purelib"])') || fail "no python3 in $WORKLOAD"
chmod 0755 "$T" "$T/loader"
chmod 0644 "$T/loader/loader.py"

# The chart's defaults (non-root agent, no capability), then agent.tamperProtection (uid 0
# with CAP_LINUX_IMMUTABLE only: chunk files immutable). Each on a node of its own.
WANT_TAMPER=none
scenario default
WANT_TAMPER=immutable
scenario tamper agent.tamperProtection=true

STEP=summary
echo "k8s_e2e: PASS: image $IMAGE $((IMAGE_SIZE / 1000000)) MB ($IMAGE_SIZE bytes), build" \
  "$(secs "$BUILD_MS") s (cached: $CACHED); last workload (3 loads of $SIZE bytes)" \
  "$(secs "$LOAD_MS") s, agent served $SERVED bytes; e2e $(secs "$(ms_since "$T0")") s"
