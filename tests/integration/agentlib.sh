#!/usr/bin/env bash
# The shared harness of the agent integration suites (test_agent.sh, test_security.sh): starts
# agents, a counting faultproxy and loads through the shim in a temporary directory $T, and
# stops and deletes all of it when the suite exits. A suite sets SUITE (its name, for
# messages), sources this file, defines case_NAME functions and ends with `run_cases "$@"`.
# Environment: BS_IT_DIR (the integration environment), BS_GENDATA, BS_AGENT_BIN (the agent),
#   BS_SHIM_LIB (libblobswarm.so), BS_READ_CLI (blobswarm-read), BS_AGENT_HERD (agent_herd),
#   BS_KEEP_TMP=1 keeps the temporary directory for a post-mortem.
# A command that fails outside a test's own checks names itself instead of ending silently.
trap 'echo "${SUITE:-agent}: line $LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly ROOT
readonly TOOLS=$ROOT/tests/tools
readonly ACCOUNT=devstoreaccount1
readonly MIB=1048576
readonly CHUNK=$((8 * MIB)) # the agent's default grid (cases that set --chunk-bytes aside)
readonly AGENT_START_S=15   # bounded waits, seconds
readonly AGENT_STOP_S=20
readonly LOAD_S=120

: "${BS_IT_DIR:?set BS_IT_DIR (tests/tools/itenv.sh start DIR)}"
: "${BS_GENDATA:?set BS_GENDATA to bs-gendata}"
: "${BS_AGENT_BIN:?set BS_AGENT_BIN to blobswarm-agent}"
: "${BS_SHIM_LIB:?set BS_SHIM_LIB to libblobswarm.so}"
: "${BS_READ_CLI:?set BS_READ_CLI to blobswarm-read}"
[ -f "$BS_IT_DIR/env" ] || { echo "${SUITE:-agent}: no $BS_IT_DIR/env: is itenv.sh up?" >&2; exit 2; }
# shellcheck source=/dev/null
. "$BS_IT_DIR/env"
for f in "$BS_AGENT_BIN" "$BS_SHIM_LIB" "$BS_READ_CLI" "$BS_GENDATA"; do
  [ -e "$f" ] || { echo "${SUITE:-agent}: missing $f (is it built?)" >&2; exit 2; }
done

T=$(mktemp -d "${TMPDIR:-/tmp}/bs-agent-it.XXXXXX")
readonly T
CASE=setup
declare -A AGENT_PID=() AGENT_PORT=()
PIDS=()     # every background process started here, killed on exit
UPLOADS=()  # "conn|container|blob" to delete on exit
PROXY_URL=""
PROXY_EP=""
READ_ENV=() # extra VAR=value for every shim process of the current case

# ---------------------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------------------
log() { printf '[%s %s] %s\n' "$(date +%T)" "$CASE" "$*"; }

dump_logs() {
  local f
  for f in "$T"/*/agent.log "$T"/*.out "$T"/proxy.log; do
    [ -s "$f" ] || continue
    echo "----- ${f#"$T"/} (last 25 lines) -----" >&2
    tail -n 25 "$f" >&2
  done
}

fail() {
  echo "FAIL [$CASE]: $*" >&2
  dump_logs
  exit 1
}

# alive PID: see scripts/proc.sh
# shellcheck source=scripts/proc.sh
. "$ROOT/scripts/proc.sh"

# wait_exit PID SECONDS: reaps PID (a child) within SECONDS; sets EXIT_RC and EXIT_MS.
# Returns 1 if it is still running then.
wait_exit() {
  local pid=$1 limit_ms=$(($2 * 1000)) t0
  t0=$(date +%s%N)
  while alive "$pid"; do
    EXIT_MS=$((($(date +%s%N) - t0) / 1000000))
    [ "$EXIT_MS" -lt "$limit_ms" ] || return 1
    sleep 0.05
  done
  EXIT_MS=$((($(date +%s%N) - t0) / 1000000))
  EXIT_RC=0
  wait "$pid" || EXIT_RC=$?
}

cleanup() {
  local rc=$? pid u
  for pid in "${PIDS[@]}"; do
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait_exit "$pid" 5 || { kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  done
  if [ ${#UPLOADS[@]} -gt 0 ]; then
    # Connection strings and the names used here hold no '"' or '\': plain JSON strings.
    for u in "${UPLOADS[@]}"; do
      IFS='|' read -r conn container blob <<<"$u"
      printf '["delete","--conn","%s","--container","%s","--blob","%s"]\n' \
        "$conn" "$container" "$blob"
    done | NODE_EXTRA_CA_CERTS=$BS_IT_CA_BUNDLE timeout 30 node "$TOOLS/azfixture.mjs" batch \
      >/dev/null 2>&1 || echo "${SUITE:-agent}: note: could not delete the uploaded blobs" >&2
  fi
  if [ "${BS_KEEP_TMP:-0}" = 1 ]; then
    echo "${SUITE:-agent}: kept $T" >&2
  else
    chattr -R -i "$T" 2>/dev/null || true # chunk files are immutable where the agent can
    rm -rf "$T"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------
# agents
# ---------------------------------------------------------------------------------------
readonly ALLOWED='http://127.0.0.1:*/devstoreaccount1,https://127.0.0.1:*/devstoreaccount1'

# agent_start ID [flags...]: starts an agent with state in $T/ID (store $T/ID/store, kept
# across restarts of the same ID) and waits until /readyz answers.
agent_start() {
  local id=$1 d=$T/$1 i pid
  shift
  mkdir -p "$d"
  rm -f "$d/port"
  # The case's flags last: the agent takes the last occurrence of a flag.
  "$BS_AGENT_BIN" --agent-socket="$d/agent.sock" --agent-listen=127.0.0.1:0 \
    --agent-port-file="$d/port" --store-dir="$d/store" --store-budget=2G \
    --allowed-endpoints="$ALLOWED" --ca-bundle="$BS_IT_CA_BUNDLE" "$@" >>"$d/agent.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  AGENT_PID[$id]=$pid
  for ((i = 0; i < AGENT_START_S * 20; i++)); do
    alive "$pid" || fail "agent $id exited during start-up"
    if [ -s "$d/port" ] && [ -S "$d/agent.sock" ]; then
      AGENT_PORT[$id]=$(cat "$d/port")
      if curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:${AGENT_PORT[$id]}/readyz" \
        2>/dev/null; then
        return 0
      fi
    fi
    sleep 0.05
  done
  fail "agent $id not ready within ${AGENT_START_S}s"
}

agent_sock() { echo "$T/$1/agent.sock"; }
agent_http() { echo "http://127.0.0.1:${AGENT_PORT[$1]}"; }

# agent_stop ID [SIGNAL]: signals the agent (default TERM) and reaps it; sets EXIT_RC, EXIT_MS.
agent_stop() {
  local id=$1 sig=${2:-TERM}
  kill "-$sig" "${AGENT_PID[$id]}"
  wait_exit "${AGENT_PID[$id]}" "$AGENT_STOP_S" ||
    fail "agent $id still running ${AGENT_STOP_S}s after SIG$sig"
}

# snap ID NAME: saves the agent's /metrics as $T/m.NAME.
snap() {
  curl -fsS --max-time 10 "$(agent_http "$1")/metrics" >"$T/m.$2" ||
    fail "cannot read /metrics of agent $1"
}

# mval NAME SERIES: the value of one series in snapshot NAME (0 when absent).
mval() {
  awk -v s="$2" '$1 == s { v = $2 } END { printf "%.0f\n", (v == "" ? 0 : v) }' "$T/m.$1"
}

# mdelta A B SERIES: value in snapshot B minus value in A.
mdelta() { echo $(($(mval "$2" "$3") - $(mval "$1" "$3"))); }

# Metric series the test scripts that source this file read.
# shellcheck disable=SC2034
readonly REQ='blobswarm_agent_chunk_requests_total'
# shellcheck disable=SC2034
readonly FETCHES='blobswarm_agent_origin_fetches_total{reason="no_holder"}'
# shellcheck disable=SC2034
readonly OBYTES='blobswarm_agent_origin_bytes_total'
# shellcheck disable=SC2034
readonly SERVED_LOCAL='blobswarm_agent_served_bytes_total{source="local"}'
# shellcheck disable=SC2034
readonly SERVED_ORIGIN='blobswarm_agent_served_bytes_total{source="origin"}'
# shellcheck disable=SC2034
readonly ERRORS='blobswarm_agent_errors_total'

expect_eq() { [ "$2" = "$3" ] || fail "$1: got $2, expected $3"; log "ok: $1 = $2"; }
expect_ge() { [ "$2" -ge "$3" ] || fail "$1: got $2, expected >= $3"; log "ok: $1 = $2 (>= $3)"; }
expect_le() { [ "$2" -le "$3" ] || fail "$1: got $2, expected <= $3"; log "ok: $1 = $2 (<= $3)"; }

# ---------------------------------------------------------------------------------------
# origin, blobs and loads
# ---------------------------------------------------------------------------------------
# proxy_start: a counting faultproxy in front of the HTTP Azurite; sets PROXY_URL and PROXY_EP
# (the blob endpoint through it).
proxy_start() {
  local target=${BS_IT_HTTP_ENDPOINT%/"$ACCOUNT"} i pid port
  : >"$T/proxy.log" # before the child opens it: the polling below reads it at once
  node "$TOOLS/faultproxy.mjs" --target "$target" --max-lifetime-s 900 >"$T/proxy.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for ((i = 0; i < 200; i++)); do
    port=$(sed -n 's/^listening \([0-9]*\)$/\1/p' "$T/proxy.log")
    [ -n "$port" ] && break
    alive "$pid" || fail "faultproxy exited: $(cat "$T/proxy.log")"
    sleep 0.05
  done
  [ -n "$port" ] || fail "faultproxy did not start"
  PROXY_URL=http://127.0.0.1:$port
  # shellcheck disable=SC2034  # used by the test scripts that source this file
  PROXY_EP=$PROXY_URL/$ACCOUNT
}

proxy_rule() {
  curl -fsS --max-time 5 -X POST --data "$1" "$PROXY_URL/__fault" >/dev/null ||
    fail "cannot set the proxy rule $1"
}
proxy_reset() { curl -fsS --max-time 5 -X POST "$PROXY_URL/__stats/reset" >/dev/null; }
# proxy_stat FIELD: rangedGets, blobGets, heads or requests since the last reset.
proxy_stat() {
  curl -fsS --max-time 5 "$PROXY_URL/__stats" | grep -o "\"$1\":[0-9]*" | head -n1 | cut -d: -f2
}

# upload INSTANCE(http|https) CONTAINER BLOB SEED SIZE: uploads gendata content.
upload() {
  local inst=$1 container=$2 blob=$3 seed=$4 size=$5 conn f=$T/upload.bin
  conn=$BS_IT_HTTP_CONN
  [ "$inst" = https ] && conn=$BS_IT_HTTPS_CONN
  "$BS_GENDATA" --seed "$seed" --size "$size" >"$f"
  NODE_EXTRA_CA_CERTS=$BS_IT_CA_BUNDLE timeout 120 node "$TOOLS/azfixture.mjs" upload \
    --conn "$conn" --container "$container" --blob "$blob" --file "$f" --single-shot \
    >/dev/null || fail "upload of $container/$blob failed"
  rm -f "$f"
  UPLOADS+=("$conn|$container|$blob")
}

# load LABEL MODE AGENT CONTAINER BLOB SIZE SEED [blobswarm-read args...]: one blobswarm-read
# through the shim (with READ_ENV) using AGENT ("" = none); output in $T/LABEL.out.
# Fails the case unless the load is byte-exact.
load() {
  local label=$1 mode=$2 agent=$3 container=$4 blob=$5 size=$6 seed=$7
  shift 7
  if ! load_rc "$label" "$mode" "$agent" "$container" "$blob" "$size" "$seed" "$@"; then
    fail "load $label: blobswarm-read exited $LOAD_RC: $(tail -n 3 "$T/$label.out")"
  fi
  log "load $label: $(grep -o '[0-9.]* MiB/s.*' "$T/$label.out" | head -n1)"
}

# load_rc: as load, but returns blobswarm-read's exit status (also in LOAD_RC).
load_rc() {
  local label=$1 mode=$2 agent=$3 container=$4 blob=$5 size=$6 seed=$7
  shift 7
  LOAD_RC=0
  BLOBSWARM_AGENT=${agent:-off} BLOBSWARM_LOG_LEVEL=${SHIM_LOG_LEVEL:-warn} \
    timeout "$LOAD_S" bash "$TOOLS/run-with-auth.sh" "$mode" -- env "${READ_ENV[@]}" \
    "$BS_READ_CLI" --lib "$BS_SHIM_LIB" --account "$ACCOUNT" --container "$container" \
    --blob "$blob" --size "$size" --expect-seed "$seed" "$@" >"$T/$label.out" 2>&1 ||
    LOAD_RC=$?
  return "$LOAD_RC"
}

# load_bg LABEL ...: load_rc in the background; LOAD_PID is its pid.
load_bg() {
  (load_rc "$@") &
  LOAD_PID=$!
  PIDS+=("$LOAD_PID")
}

chunks_of() { echo $((($1 + CHUNK - 1) / CHUNK)); }

# wait_metric ID SERIES MIN SECONDS: polls until the series reaches MIN.
wait_metric() {
  local i v
  for ((i = 0; i < $4 * 20; i++)); do
    snap "$1" poll
    v=$(mval poll "$2")
    [ "$v" -ge "$3" ] && return 0
    sleep 0.05
  done
  fail "$2 did not reach $3 within $4 s (last $v)"
}

# chunk_post ID JSON OUT: POST /v1/chunk; the meta header's JSON in OUT.meta, the body in
# OUT.body; prints the HTTP status.
chunk_post() {
  curl -sS --max-time 30 -o "$3.body" -D "$3.hdr" -w '%{http_code}' \
    -H 'Content-Type: application/json' --data-binary "$2" "$(agent_http "$1")/v1/chunk"
  tr -d '\r' <"$3.hdr" | sed -n 's/^[Xx]-[Bb]lobswarm-[Mm]eta: //p' >"$3.meta"
}

# chunk_json CONTAINER BLOB CHUNK KIND ENDPOINT SECRET [ACCOUNT]: a request body.
chunk_json() {
  node -e '
    const [container, blob, chunk, kind, endpoint, secret, account] = process.argv.slice(1);
    console.log(JSON.stringify({v: 1, op: "chunk", account, container, blob, etag: "",
      chunk: Number(chunk), auth: {kind, endpoint, account, secret}}));' \
    "$1" "$2" "$3" "$4" "$5" "$6" "${7:-$ACCOUNT}"
}

meta_field() { sed -n "s/.*\"$2\": *\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p" "$1.meta"; }

# flip_byte FILE OFFSET: inverts one byte in place.
flip_byte() {
  local b
  chattr -i "$1" 2>/dev/null || true # a disk fault bypasses the agent's immutable flag
  b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
  # shellcheck disable=SC2059 # the format is the one octal escape of the new byte
  printf "$(printf '\\%03o' $((255 - b)))" |
    dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# run_cases CASE...: runs each case_CASE in order; every agent a case left running must stop
# cleanly (SIGTERM, exit 0).
run_cases() {
  for CASE in "$@"; do
    declare -F "case_$CASE" >/dev/null || { echo "${SUITE:-agent}: unknown case $CASE" >&2; exit 2; }
  done
  for CASE in "$@"; do
    t0=$(date +%s)
    log "start"
    "case_$CASE"
    # Every agent of the case stops cleanly (SIGTERM, exit 0) unless the case already stopped it.
    for id in "${!AGENT_PID[@]}"; do
      if alive "${AGENT_PID[$id]}"; then
        agent_stop "$id" TERM
        [ "$EXIT_RC" = 0 ] || fail "agent $id exited $EXIT_RC on SIGTERM"
      fi
    done
    AGENT_PID=()
    READ_ENV=()
    log "PASS in $(($(date +%s) - t0)) s"
  done
}
