# bench/lib.sh: what bench/direct.sh and bench/agent.sh share, sourced by both (not run).
# Before sourcing, the script sets BENCH_NAME (the log prefix) and ROOT; sourcing reads the
# knobs both share (BUILD, SIZE, STEP_TIMEOUT, KEEP, SHIM_LIB, READER); after it the script
# sets its own (RUNS, ...) and AZURITE_STORE_ARGS.
# Sourcing installs the exit trap: cleanup stops Azurite, deletes the namespace and veth pair
# this run made, and removes WORK; a script that starts more defines cleanup_hook, run first.
# shellcheck shell=bash

# ---- knobs both benchmarks read (environment) -------------------------------------------
BUILD="${BUILD:-$ROOT/build}"
SIZE="${BENCH_SIZE:-1073741824}"           # blob size in bytes
STEP_TIMEOUT="${BENCH_STEP_TIMEOUT:-600}"  # seconds, any one step
KEEP="${BENCH_KEEP:-0}"                    # 1: keep the work directory
# shellcheck disable=SC2034 # SHIM_LIB and READER: used by the sourcing scripts
SHIM_LIB="${BENCH_SHIM_LIB:-$BUILD/provider-shim/libblobswarm.so}"
# shellcheck disable=SC2034
READER="${BENCH_READER:-$BUILD/tools/blobswarm-read}"

ACCOUNT=devstoreaccount1
# Azurite's well-known development key (public, documented by Microsoft).
KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
CONTAINER=bench
BLOB=big.bin
HEADER_JSON_BYTES=1234                     # safetensors JSON header: tensor data starts unaligned
AZURITE="$ROOT/node_modules/.bin/azurite-blob"
MAX_SECONDS=7200                           # Azurite (and agents) die by themselves even if we are SIGKILLed
GIB=1073741824

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) exit 1; if (NR%2) print v[(NR+1)/2]; else printf "%.2f\n", (v[NR/2]+v[NR/2+1])/2}'; }

# check_size_runs: the checks of SIZE and RUNS every benchmark makes.
check_size_runs() {
  { [ "$RUNS" -ge 1 ] && [ "$RUNS" -le 20 ]; } || die "BENCH_RUNS must be 1..20"
  [ "$SIZE" -gt $((8 + HEADER_JSON_BYTES)) ] || die "BENCH_SIZE is too small"
  [ "$SIZE" -ge "$GIB" ] || log "note: BENCH_SIZE=$SIZE is below 1 GiB (a smoke run)"
}

# Clients reach Azurite (and the agent) directly, never through a proxy from the environment.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy

# ---- lifetime ---------------------------------------------------------------------------
WORK=""
AZ_PID=""
AZ_HOST=""
AZ_PORT=""
NS_CREATED=0
cleanup() {
  set +e
  if declare -F cleanup_hook >/dev/null; then cleanup_hook; fi
  stop_azurite
  teardown_namespace
  if [ -n "$WORK" ] && [ "$KEEP" != 1 ]; then
    chattr -R -i "$WORK" 2>/dev/null || true # the agent's chunk files are immutable
    rm -rf "$WORK"
  elif [ -n "$WORK" ]; then
    log "kept $WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# stop_pid PID: SIGTERM (timeout forwards it to its child), SIGKILL after 10 s.
stop_pid() {
  local pid="$1"
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# ---- Azurite -----------------------------------------------------------------------------
# need_tools: curl and node; need_azurite: the pinned Azurite (npm ci when node_modules is
# missing).
need_tools() {
  command -v curl >/dev/null || die "needs curl"
  command -v node >/dev/null || die "needs node"
}
need_azurite() {
  if [ ! -x "$AZURITE" ]; then
    log "node_modules missing: npm ci"
    (cd "$ROOT" && timeout "$STEP_TIMEOUT" npm ci --no-audit --no-fund --loglevel=error)
  fi
}

stop_azurite() {
  stop_pid "$AZ_PID"
  AZ_PID=""
}

# start_azurite HOST [command prefix...]: starts Azurite on HOST with a free port and the
# storage options AZURITE_STORE_ARGS (a data directory or in-memory); sets AZ_PID, AZ_HOST
# and AZ_PORT.
start_azurite() {
  local host="$1"
  shift
  local alog="$WORK/azurite.log"
  : >"$alog"
  "$@" timeout -k 5 "$MAX_SECONDS" "$AZURITE" --blobHost "$host" --blobPort 0 \
    "${AZURITE_STORE_ARGS[@]}" --silent --disableTelemetry --skipApiVersionCheck \
    >"$alog" 2>&1 &
  AZ_PID=$!
  AZ_HOST="$host"
  AZ_PORT=""
  for _ in $(seq 1 300); do
    AZ_PORT="$(sed -n 's#.*successfully listens on http://[^ ]*:\([0-9][0-9]*\).*#\1#p' "$alog")"
    [ -n "$AZ_PORT" ] && break
    kill -0 "$AZ_PID" 2>/dev/null || die "Azurite exited: $(cat "$alog")"
    sleep 0.1
  done
  [ -n "$AZ_PORT" ] || die "Azurite did not report a port within 30 s: $(cat "$alog")"
  log "Azurite listening on $host:$AZ_PORT (pid $AZ_PID)"
}

conn_string() { # HOST PORT
  printf 'DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=http://%s:%s/%s;' \
    "$ACCOUNT" "$KEY" "$1" "$2" "$ACCOUNT"
}

# upload_blob FILE [--public] [--single-shot]: creates CONTAINER (public with --public) on
# the running Azurite and uploads FILE as BLOB (in one Put Blob with --single-shot).
upload_blob() {
  local file="$1" conn a
  shift
  local -a cargs=() uargs=()
  for a in "$@"; do
    case "$a" in
      --public) cargs+=(--public) ;;
      --single-shot) uargs+=(--single-shot) ;;
      *) die "upload_blob: unknown option $a" ;;
    esac
  done
  conn="$(conn_string "$AZ_HOST" "$AZ_PORT")"
  log "uploading to $CONTAINER/$BLOB"
  timeout "$STEP_TIMEOUT" node "$ROOT/tests/tools/azfixture.mjs" container --conn "$conn" \
    --container "$CONTAINER" "${cargs[@]}"
  timeout "$STEP_TIMEOUT" node "$ROOT/tests/tools/azfixture.mjs" upload --conn "$conn" \
    --container "$CONTAINER" --blob "$BLOB" --file "$file" "${uargs[@]}" >/dev/null
}

# ---- the blob ----------------------------------------------------------------------------
# make_blob FILE SEED GENERATOR: safetensors-shaped: u64 LE header length, a JSON header
# padded with spaces, then the body (GENERATOR --seed SEED if it is executable, otherwise
# /dev/urandom), so reads follow the streamer's pattern (8 bytes, the header, then unaligned).
make_blob() {
  local f="$1" seed="$2" gen="$3" body=$((SIZE - 8 - HEADER_JSON_BYTES)) json le="" i
  json="$(printf '{"__metadata__":{"format":"pt","source":"blobswarm bench"},"data":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}' "$body" "$body")"
  [ "${#json}" -le "$HEADER_JSON_BYTES" ] || die "header JSON longer than $HEADER_JSON_BYTES"
  for i in 0 1 2 3 4 5 6 7; do
    le+="$(printf '\\x%02x' $(((HEADER_JSON_BYTES >> (8 * i)) & 255)))"
  done
  {
    printf '%b' "$le"
    printf '%-*s' "$HEADER_JSON_BYTES" "$json"
  } >"$f"
  if [ -n "$gen" ] && [ -x "$gen" ] &&
    timeout "$STEP_TIMEOUT" "$gen" --seed "$seed" --size "$body" >>"$f" 2>/dev/null &&
    [ "$(stat -c %s "$f")" -eq "$SIZE" ]; then
    log "blob body from $gen --seed $seed"
  else
    truncate -s $((8 + HEADER_JSON_BYTES)) "$f"
    head -c "$body" /dev/urandom >>"$f"
    log "blob body from /dev/urandom"
  fi
  [ "$(stat -c %s "$f")" -eq "$SIZE" ] || die "generated blob has the wrong size"
}

# ---- the shaped link ---------------------------------------------------------------------
# A network namespace NS holding Azurite on NET.2, joined to the root namespace (NET.1) by
# the veth pair VETH_HOST/VETH_NS, both ends shaped to RATE (plus DELAY_MS with sch_netem).
# shaped_knobs NS_DEFAULT NET_DEFAULT VETH_PREFIX: reads BENCH_RATE, BENCH_DELAY_MS,
# BENCH_NS, BENCH_NET and checks them.
shaped_knobs() {
  RATE="${BENCH_RATE:-2gbit}"     # shaped link rate, both directions
  DELAY_MS="${BENCH_DELAY_MS:-2}" # shaped link one-way delay (needs sch_netem)
  NS="${BENCH_NS:-$1}"
  NET="${BENCH_NET:-$2}"          # /30: .1 root side, .2 inside the namespace
  VETH_HOST="${3}0"
  VETH_NS="${3}1"
  is_uint "$DELAY_MS" || die "BENCH_DELAY_MS='$DELAY_MS' is not an unsigned integer"
  # The namespace's addresses are the project's own test hosts: private ranges only.
  [[ "$NET" =~ ^(10\.[0-9]{1,3}\.[0-9]{1,3}|192\.168\.[0-9]{1,3})$ ]] ||
    die "BENCH_NET must be the first three octets of a 10.x or 192.168.x /30"
}

# shape_dev DEV [ip netns exec NS]: HTB at RATE, with a netem leaf for DELAY_MS when the
# kernel has it. Sets SHAPE_DELAY to what was applied.
shape_dev() {
  local dev="$1"
  shift
  "$@" tc qdisc add dev "$dev" root handle 1: htb default 10
  "$@" tc class add dev "$dev" parent 1: classid 1:10 htb rate "$RATE" ceil "$RATE" \
    burst 256k cburst 256k quantum 60000
  SHAPE_DELAY="no delay"
  if [ "$DELAY_MS" -gt 0 ]; then
    if "$@" tc qdisc add dev "$dev" parent 1:10 handle 10: netem delay "${DELAY_MS}ms" \
      limit 100000 2>/dev/null; then
      SHAPE_DELAY="+${DELAY_MS}ms"
    else
      SHAPE_DELAY="no delay (no netem)"
    fi
  fi
}

# Checked before any work, and again right before the namespace is made.
preflight_namespace() {
  [ "$(id -u)" -eq 0 ] || die "the shaped link needs root (network namespace, tc)"
  { command -v ip >/dev/null && command -v tc >/dev/null; } || die "needs ip and tc (iproute2)"
  ! ip netns list | grep -qw "$NS" ||
    die "network namespace $NS exists (left by an earlier run?): 'ip netns del $NS' or set BENCH_NS"
  ! ip link show "$VETH_HOST" >/dev/null 2>&1 ||
    die "interface $VETH_HOST exists (left by an earlier run?): 'ip link del $VETH_HOST'"
}

# setup_namespace: makes and shapes the link; sets LINK_DESC ("RATE, delay").
setup_namespace() {
  preflight_namespace
  ip netns add "$NS"
  NS_CREATED=1
  ip link add "$VETH_HOST" type veth peer name "$VETH_NS" netns "$NS"
  ip addr add "$NET.1/30" dev "$VETH_HOST"
  ip link set "$VETH_HOST" up
  ip netns exec "$NS" ip addr add "$NET.2/30" dev "$VETH_NS"
  ip netns exec "$NS" ip link set "$VETH_NS" up
  ip netns exec "$NS" ip link set lo up
  shape_dev "$VETH_NS" ip netns exec "$NS" # server -> client: the data
  shape_dev "$VETH_HOST"                   # client -> server: requests and ACKs
  if [ "$DELAY_MS" -gt 0 ] && [ "$SHAPE_DELAY" != "+${DELAY_MS}ms" ]; then
    log "warning: this kernel has no sch_netem: the shaped link has rate $RATE but no added delay"
  fi
  LINK_DESC="$RATE, $SHAPE_DELAY"
  log "namespace $NS: $NET.2 behind $VETH_HOST ($LINK_DESC each way)"
}

# teardown_namespace: deletes the veth pair and the namespace, if this run made them.
teardown_namespace() {
  [ "$NS_CREATED" -eq 1 ] || return 0
  ip link del "$VETH_HOST" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  NS_CREATED=0
}
