#!/usr/bin/env bash
# Integration tests of peer sharing (issue 7): N agents, each in its own network namespace
# (tests/tools/cluster.sh), sharing chunks over HTTP with Redis as the index, in front of a
# counting origin proxy (tests/tools/faultproxy.mjs before the HTTP Azurite). Each case builds
# its own cluster in a temporary directory and tears it down when it ends, whatever happens.
#
# usage: test_cluster.sh CASE...   (tests/integration/cluster.cmake registers one CTest per
#                                   case, named cluster_<case>)
# Needs root (namespaces, veth, tc), iproute2, redis-server, node, curl. Outside CI a missing
# one skips the case (exit 77); under CI=true it fails it.
# Environment: BS_IT_DIR (the integration environment), BS_GENDATA, BS_AGENT_BIN, BS_SHIM_LIB,
#   BS_READ_CLI (as for test_agent.sh), BS_KEEP_TMP=1 keeps the work directory.
#
# Origin bytes are the response body bytes the proxy served: the agents' fills and the shims'
# own fallback reads both pass through it (the shim's blob endpoint is the proxy).
#
# Cases (4 nodes, 8 MiB chunks):
#   cold4            all nodes load the same blob at once: byte-exact everywhere, origin bytes
#                    <= 1.05x the blob, bytes served from peers on at least 2 nodes;
#                    blobswarmctl holders lists a holder for every chunk and all 4 nodes, refuses
#                    a non-canonical endpoint (2) and fails without printing the URL when
#                    Redis is down (1)
#   cold4_streamer   the same with the streamer's concurrency (190 threads, ~1 MB pieces)
#   kill_holder      node 1 SIGKILLed while the others fetch from it: their loads byte-exact;
#                    node 1 restarted with an empty store loads byte-exact from its peers
#                    whatever the holder entries of its killed incarnation say
#   redis_restart    Redis stopped, restarted and flushed mid-load: every load byte-exact;
#                    after a flush the agents re-announce what they hold (every node in every
#                    chunk's holder set)
#   corrupt_peer     node 2 advertises a relay that inverts a byte of its answers: receivers
#                    count digest errors and still load byte-exact
#   no_secret        unsigned or badly signed peer requests get 401 and no chunk bytes; an
#                    agent with another secret loads from Azure only (auth errors counted)
#   lease_killed     the lessee of a chunk is SIGKILLed while its fill stalls at the origin:
#                    the waiters break its lease (deleted, not expired: 90 s left) and get the
#                    chunk within 7 s
#   overwrite        a blob loaded everywhere is overwritten in Azure: the next loads return
#                    the new bytes, origin bytes <= 1.05x the blob
#   redis_down_start agents started with Redis unreachable: ready, loads byte-exact; they
#                    register once Redis comes up
set -Eeuo pipefail
SUITE=test_cluster
[ $# -ge 1 ] || { sed -n '2,/^set -Eeuo/p' "$0" | sed '$d' >&2; exit 2; }
trap 'echo "$SUITE: line $LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly ROOT
readonly MIB=1048576
readonly CHUNK=$((8 * MIB)) # the agents' default grid
readonly NODES=4
readonly POLL_S=30          # bounded waits on a metric or a Redis key, seconds (the
                            # agents' heartbeat: every BLOBSWARM_NODE_TTL_MS / 3)
CASE=setup

log() { printf '[%s %s] %s\n' "$(date +%T)" "$CASE" "$*"; }

# ---------------------------------------------------------------------------------------
# can this machine run it?
# ---------------------------------------------------------------------------------------
missing=""
[ "$(id -u)" -eq 0 ] || missing+=" root"
command -v ip >/dev/null && ip netns list >/dev/null 2>&1 || missing+=" ip-netns"
for t in tc redis-server redis-cli node curl chattr setsid; do
  command -v "$t" >/dev/null || missing+=" $t"
done
if [ -n "$missing" ]; then
  if [ "${CI:-}" = true ]; then
    echo "FAIL: $SUITE needs$missing (CI=true: not skipped)" >&2
    exit 1
  fi
  echo "SKIP: $SUITE needs$missing" >&2
  exit 77 # reported as skipped by ctest (SKIP_RETURN_CODE), never under CI=true
fi

: "${BS_IT_DIR:?set BS_IT_DIR (tests/tools/itenv.sh start DIR)}"
[ -f "$BS_IT_DIR/env" ] || { echo "$SUITE: no $BS_IT_DIR/env: is itenv.sh up?" >&2; exit 2; }
# shellcheck source=/dev/null
. "$BS_IT_DIR/env"
CL_AGENT_BIN=${BS_AGENT_BIN:?set BS_AGENT_BIN to blobswarm-agent}
CL_SHIM_LIB=${BS_SHIM_LIB:?set BS_SHIM_LIB to libblobswarm.so}
CL_READ_CLI=${BS_READ_CLI:?set BS_READ_CLI to blobswarm-read}
CL_GENDATA=${BS_GENDATA:?set BS_GENDATA to bs-gendata}
CL_CTL=${BS_CTL_BIN:-$(dirname "$CL_READ_CLI")/blobswarmctl} # built next to blobswarm-read
[ -x "$CL_CTL" ] || { echo "$SUITE: no blobswarmctl at $CL_CTL (set BS_CTL_BIN)" >&2; exit 2; }
[ "${BS_KEEP_TMP:-0}" = 1 ] && CL_KEEP=1
CL_LOAD_S=120
# shellcheck source=tests/tools/cluster.sh
. "$ROOT/tests/tools/cluster.sh"

T=$(mktemp -d "${TMPDIR:-/tmp}/bs-cluster-it.XXXXXX")
readonly T

# ---------------------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------------------
dump_logs() {
  local f
  [ -n "$CL_DIR" ] || return 0
  for f in "$CL_DIR"/n*/agent.log "$CL_DIR"/n*/load.log "$CL_DIR"/*.log "$CL_DIR"/redis/redis.log; do
    [ -s "$f" ] || continue
    echo "----- ${f#"$CL_DIR"/} (last 20 lines) -----" >&2
    tail -n 20 "$f" >&2
  done
}

fail() {
  echo "FAIL [$CASE]: $*" >&2
  dump_logs
  exit 1
}

expect_eq() { [ "$2" = "$3" ] || fail "$1: got $2, expected $3"; log "ok: $1 = $2"; }
expect_ge() { [ "$2" -ge "$3" ] || fail "$1: got $2, expected >= $3"; log "ok: $1 = $2 (>= $3)"; }
expect_le() { [ "$2" -le "$3" ] || fail "$1: got $2, expected <= $3"; log "ok: $1 = $2 (<= $3)"; }
expect_gt() { [ "$2" -gt "$3" ] || fail "$1: got $2, expected > $3"; log "ok: $1 = $2 (> $3)"; }

metric() { cl_metric "$@" || fail "cannot read /metrics of agent $1"; }

# cluster_up N [NODE_MBIT [ORIGIN_MBIT]]: a fresh cluster in $T: net, origin proxy, Redis,
# secret. The EXIT trap (cl_down, then $T itself) replaces the one cl_init installs.
cluster_up() {
  cl_init "$T" || fail "cl_init failed"
  trap 'rc=$?; cl_down; rmdir "$T" 2>/dev/null || true; exit $rc' EXIT
  cl_net "$@" || fail "cl_net $* failed"
  cl_origin "$BS_IT_HTTP_ENDPOINT" || fail "cl_origin failed"
  cl_redis || fail "cl_redis failed"
  cl_secret || fail "cl_secret failed"
  CL_LOAD_ENV=()
}

# agents_start FIRST LAST [VAR=VALUE...]
agents_start() {
  local i first=$1 last=$2
  shift 2
  for ((i = first; i <= last; i++)); do
    cl_agent_start "$i" "$@" || fail "agent $i did not start"
  done
}

blob_name() { echo "cluster-it/$CASE-$$-$1.bin"; }

# upload BLOB SIZE SEED: prints the ETag.
upload() { cl_upload data "$1" "$2" "$3" || fail "upload of $1 failed"; }

# load_args BLOB SIZE SEED [more...]: the blobswarm-read arguments of a verified load.
load_args() {
  LOAD_ARGS=(--container data --blob "$1" --size "$2" --expect-seed "$3")
  shift 3
  LOAD_ARGS+=("$@")
}

# check_load I [WHAT]: load I ended byte-exact (exit 0), else the case fails.
check_load() {
  local i=$1 rc=${CL_LOAD_RC[$1]:-none}
  case $rc in
    0) log "ok: load on node $i byte-exact: $(grep -o '[0-9.]* MiB/s' "$CL_DIR/n$i/load.log" | head -n1)" ;;
    3) fail "load on node $i${2:+ ($2)}: WRONG BYTES: $(tail -n 3 "$CL_DIR/n$i/load.log")" ;;
    *) fail "load on node $i${2:+ ($2)}: blobswarm-read exited $rc: $(tail -n 3 "$CL_DIR/n$i/load.log")" ;;
  esac
}

# wait_loads I...: waits for the background loads of these nodes (bounded by CL_LOAD_S).
wait_loads() {
  local i
  for i in "$@"; do
    cl_load_wait "$i" || true
  done
}

# load_nodes "I..." BLOB SIZE SEED [args...]: loads on these nodes at once; all byte-exact.
load_nodes() {
  local nodes=$1 i
  shift
  load_args "$@"
  for i in $nodes; do cl_load_bg "$i" "${LOAD_ARGS[@]}"; done
  # shellcheck disable=SC2086 # a list of node numbers
  wait_loads $nodes
  for i in $nodes; do check_load "$i"; done
}

all_nodes() { seq 1 "$NODES" | tr '\n' ' '; }

# nonzero I NAME: the non-zero series of NAME on agent I, as label=value pairs.
nonzero() {
  curl -fsS --max-time 10 "$(cl_agent_http "$1")/metrics" 2>/dev/null |
    awk -v n="$2" 'index($1, n "{") == 1 && $2 + 0 > 0 {
      l = substr($1, length(n) + 2); sub(/}$/, "", l); gsub(/"/, "", l)
      printf "%s%s=%s", sep, l, $2; sep = " " }'
}

# summary I: what agent I did, for the log.
summary() {
  local i=$1 s="" k
  for k in local origin peer; do
    s+=" served_$k=$(metric "$i" blobswarm_agent_served_bytes_total "source=\"$k\"")"
  done
  for k in no_holder lease_won peer_failed redis_down lease_timeout; do
    s+=" fetch_$k=$(metric "$i" blobswarm_agent_origin_fetches_total "reason=\"$k\"")"
  done
  s+=" peer_in=$(metric "$i" blobswarm_peer_bytes_in_total)"
  s+=" peer_out=$(metric "$i" blobswarm_peer_bytes_out_total)"
  s+=" peer_errors={$(nonzero "$i" blobswarm_peer_errors_total)}"
  s+=" lease_waits={$(nonzero "$i" blobswarm_lease_waits_total)}"
  s+=" redis_errors={$(nonzero "$i" blobswarm_redis_errors_total)}"
  log "node $i:$s"
}
summaries() {
  local i
  for ((i = 1; i <= NODES; i++)); do
    cl_agent_running "$i" && summary "$i"
  done
  return 0
}

# origin_at_most SIZE: origin bytes since the last reset <= 1.05 x SIZE.
origin_at_most() {
  local o
  o=$(cl_origin_bytes) || fail "cannot read the origin's stats"
  log "origin: $o bytes for a $1-byte blob ($(awk -v o="$o" -v s="$1" 'BEGIN { printf "%.3f", o / s }')x)"
  expect_le "origin bytes" "$o" $(($1 * 105 / 100))
}

# wait_metric I NAME LABELS MIN SECONDS: polls agent I until the metric reaches MIN.
wait_metric() {
  local i=$1 name=$2 labels=$3 min=$4 k v=0
  for ((k = 0; k < $5 * 10; k++)); do
    v=$(metric "$i" "$name" "$labels")
    [ "$v" -ge "$min" ] && return 0
    sleep 0.1
  done
  fail "$name{$labels} of agent $i did not reach $min within $5 s (last $v)"
}

# redis_keys PATTERN: how many keys match.
redis_keys() { cl_redis_cli --scan --pattern "$1" | grep -c . || true; }

# wait_redis_keys PATTERN MIN SECONDS
wait_redis_keys() {
  local k n=0
  for ((k = 0; k < $3 * 10; k++)); do
    n=$(redis_keys "$1")
    [ "$n" -ge "$2" ] && { log "ok: $n keys match $1 (>= $2)"; return 0; }
    sleep 0.1
  done
  fail "keys matching $1: $n after $3 s, expected >= $2"
}

chunks_of() { echo $((($1 + CHUNK - 1) / CHUNK)); }

# blob_tag BLOB ETAG: the index's tag of that version of data/BLOB on the agents' grid (peer/
# redisidx.h: the first 16 bytes of SHA-256 over account, container, blob and ETag, each
# followed by a newline; the account is the origin endpoint the agents key by, plus the grid).
blob_tag() {
  printf '%s\n%s\n%s\n%s\n' "$CL_ORIGIN_EP#grid=$CHUNK" data "$1" "$2" | sha256sum | cut -c1-32
}

# holders_missing TAG N: "chunk C: nodeI" for each node missing from a chunk's holder set
# bs:v1:{TAG}:h:C, C in [0, N); nothing when every node holds every chunk.
holders_missing() {
  local tag=$1 n=$2 c i
  local -a members=() scores
  for i in $(all_nodes); do members+=("node$i $(cl_agent_ip "$i"):$CL_PEER_PORT"); done
  for ((c = 0; c < n; c++)); do
    mapfile -t scores < <(cl_redis_cli ZMSCORE "bs:v1:{$tag}:h:$c" "${members[@]}")
    for ((i = 0; i < ${#members[@]}; i++)); do
      [ -n "${scores[$i]:-}" ] || echo "chunk $c: ${members[$i]%% *}"
    done
  done
}

# wait_all_hold TAG N SECONDS: every node appears in the holder set of every chunk of the
# version (and there is no holder set past chunk N-1).
wait_all_hold() {
  local k missing="" keys
  for ((k = 0; k < $3 * 2; k++)); do
    missing=$(holders_missing "$1" "$2")
    [ -z "$missing" ] && break
    sleep 0.5
  done
  [ -z "$missing" ] ||
    fail "holder sets after $3 s: $(grep -c . <<<"$missing") (chunk, node) pairs missing: $(head -n 5 <<<"$missing" | tr '\n' ';')"
  log "ok: all $NODES nodes in the holder set of each of the $2 chunks"
  keys=$(redis_keys "bs:v1:{$1}:h:*")
  expect_eq "holder sets of the version" "$keys" "$2"
}

# ---------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------
case_cold4() {
  local size=$((128 * MIB + 4321)) blob i peers=0 v etag
  blob=$(blob_name a)
  cluster_up "$NODES"
  etag=$(upload "$blob" "$size" 41)
  agents_start 1 "$NODES"
  cl_origin_reset
  load_nodes "$(all_nodes)" "$blob" "$size" 41
  summaries
  origin_at_most "$size"
  for ((i = 1; i <= NODES; i++)); do
    v=$(metric "$i" blobswarm_agent_served_bytes_total 'source="peer"')
    [ "$v" -gt 0 ] && peers=$((peers + 1))
  done
  expect_ge "nodes that served bytes from peers" "$peers" 2
  ctl_holders "$blob" "$etag" "$size"
}

# ctl_holders BLOB ETAG SIZE: blobswarmctl holders, with the endpoint the agents key by (the
# shims' blob endpoint, the origin proxy) and the ETag as Azure returns it (quoted), finds a
# holder for every chunk and all nodes; it refuses endpoints spelled otherwise (2); with Redis
# down it fails (1) without printing the URL (which may carry a password).
ctl_holders() {
  local blob=$1 etag=$2 size=$3 n out rc i c line nodes bad pw url
  n=$(chunks_of "$size")
  local -a args=(--container data --blob "$blob" --etag "$etag" --size "$size")
  rc=0
  out=$("$CL_CTL" holders --redis "$CL_REDIS_URL" --endpoint "$CL_ORIGIN_EP" "${args[@]}" 2>&1) || rc=$?
  expect_eq "blobswarmctl holders exit status" "$rc" 0
  printf '%s\n' "$out" | sed -n '/^blob version/,$p' | while IFS= read -r line; do log "ctl: $line"; done
  expect_eq "blobswarmctl summary" "$(grep '^blob version' <<<"$out")" \
    "blob version $(blob_tag "$blob" "$etag"): $n chunks, $n with a holder, 0 without"
  for ((c = 0; c < n; c++)); do
    line=$(grep "^chunk $c:" <<<"$out") || fail "blobswarmctl: no line for chunk $c"
    [[ "$line" == *"node"[0-9]*"("*")"* ]] || fail "blobswarmctl: chunk $c has no holder: $line"
  done
  log "ok: blobswarmctl lists a holder for each of the $n chunks"
  nodes=$(grep -cE '^  node[0-9]+ +[0-9]+ chunks$' <<<"$out" || true)
  expect_eq "nodes in the blobswarmctl summary" "$nodes" "$NODES"
  for ((i = 1; i <= NODES; i++)); do
    grep -qE "^  node$i +[1-9][0-9]* chunks$" <<<"$out" || fail "blobswarmctl: node$i missing from the summary"
  done
  # Redis down (nothing listens on port 1): exit 1, and neither the URL nor its password shown.
  pw=pw-$$-$RANDOM
  url="redis://:$pw@127.0.0.1:1"
  rc=0
  out=$("$CL_CTL" holders --redis "$url" --endpoint "$CL_ORIGIN_EP" "${args[@]}" 2>&1) || rc=$?
  expect_eq "blobswarmctl exit status with Redis down" "$rc" 1
  if grep -qF -e "$pw" -e "127.0.0.1:1" <<<"$out"; then
    fail "blobswarmctl printed the Redis URL: $out"
  fi
  log "ok: with Redis down blobswarmctl says: $out"
  # The endpoint spelled another way than the agents key it: refused, not an empty answer.
  for bad in "${CL_ORIGIN_EP/http:/HTTP:}" "$CL_ORIGIN_EP/"; do
    rc=0
    out=$("$CL_CTL" holders --redis "$CL_REDIS_URL" --endpoint "$bad" "${args[@]}" 2>&1) || rc=$?
    expect_eq "blobswarmctl exit status for --endpoint $bad" "$rc" 2
  done
}

case_cold4_streamer() {
  local size=$((160 * MIB + 777)) blob
  blob=$(blob_name a)
  cluster_up "$NODES"
  upload "$blob" "$size" 42 >/dev/null
  agents_start 1 "$NODES"
  cl_origin_reset
  # The streamer's pattern: ~190 reads in flight, pieces that straddle chunks.
  load_nodes "$(all_nodes)" "$blob" "$size" 42 --threads 190 --chunk-bytes 1000003
  summaries
  origin_at_most "$size"
}

case_kill_holder() {
  local size=$((128 * MIB + 99)) blob i etag stale
  blob=$(blob_name a)
  # 400 Mbit/s node links: a node needs >= 2.7 s for the blob, so the kill lands mid-load.
  cluster_up "$NODES" 400
  etag=$(upload "$blob" "$size" 43)
  agents_start 1 "$NODES"
  load_args "$blob" "$size" 43
  cl_load_bg 1 "${LOAD_ARGS[@]}"
  # Node 1 holds a few chunks before the others start: they fetch those from it.
  wait_metric 1 blobswarm_agent_origin_bytes_total "" $((3 * CHUNK)) "$POLL_S"
  for i in 2 3 4; do cl_load_bg "$i" "${LOAD_ARGS[@]}"; done
  wait_metric 1 blobswarm_peer_bytes_out_total "" 1 "$POLL_S"
  for i in 2 3 4; do
    cl_load_running "$i" || fail "the load on node $i ended before the kill (the case proves nothing)"
  done
  summary 1
  cl_agent_stop 1 KILL || fail "agent 1 did not die"
  log "agent 1 SIGKILLed while nodes 2-4 fetch from it"
  wait_loads 1 2 3 4
  for i in 2 3 4; do check_load "$i" "survivor"; done
  # Node 1's own load lost its agent: its shim reads Azure instead.
  check_load 1 "its agent killed"
  summaries
  # Node 1 comes back (same name and address) with an empty store: Redis may still list the
  # killed incarnation as a holder of chunks it had. Its load must be byte-exact, from its
  # peers (which hold the whole blob), not from Azure.
  stale=$(holders_missing "$(blob_tag "$blob" "$etag")" "$(chunks_of "$size")" | grep -c ': node1$' || true)
  log "holder sets that list the killed node 1: $(($(chunks_of "$size") - stale)) of $(chunks_of "$size")"
  cl_agent_start 1 BLOBSWARM_STORE_DIR="$CL_DIR/n1/store.new" || fail "agent 1 did not restart"
  cl_origin_reset
  load_nodes 1 "$blob" "$size" 43
  summary 1
  # (Read-ahead fetches chunks before the load asks: they count as served locally.)
  expect_ge "bytes the new node 1 fetched from peers" "$(metric 1 blobswarm_peer_bytes_in_total)" \
    $((size - 2 * CHUNK))
  expect_le "origin bytes of the new node 1's load" "$(cl_origin_bytes)" $((2 * CHUNK))
}

case_redis_restart() {
  local size=$((160 * MIB + 5)) blob i n etag
  blob=$(blob_name a)
  n=$(chunks_of "$size")
  # 200 Mbit/s node links: each load needs >= 6.7 s, so the Redis events land mid-load.
  cluster_up "$NODES" 200
  etag=$(upload "$blob" "$size" 44)
  # A heartbeat every second: a restarted or flushed Redis is noticed within 3 s.
  agents_start 1 "$NODES" BLOBSWARM_NODE_TTL_MS=3000
  load_args "$blob" "$size" 44
  for i in $(all_nodes); do cl_load_bg "$i" "${LOAD_ARGS[@]}"; done
  sleep 1
  cl_redis_stop
  log "Redis stopped"
  sleep 1.5
  cl_redis_start || fail "Redis did not restart"
  log "Redis restarted (empty)"
  sleep 1.5
  cl_redis_flush || fail "FLUSHALL failed"
  log "Redis flushed"
  for i in $(all_nodes); do
    cl_load_running "$i" || fail "the load on node $i ended before the FLUSHALL (the case proves nothing)"
  done
  # shellcheck disable=SC2046 # node numbers
  wait_loads $(all_nodes)
  for i in $(all_nodes); do check_load "$i"; done
  summaries
  # Once idle: a flush makes every agent re-announce its chunks and re-register. Each holds
  # all n chunks and a holder set keeps the newest 8 (>= 4 nodes): every node in every set.
  cl_redis_flush || fail "FLUSHALL failed"
  wait_redis_keys 'bs:v1:{nodes}:n:*' "$NODES" "$POLL_S"
  wait_all_hold "$(blob_tag "$blob" "$etag")" "$n" "$POLL_S"
}

case_corrupt_peer() {
  local size=$((96 * MIB + 31)) blob i port digest=0 tampered
  blob=$(blob_name a)
  cluster_up "$NODES"
  upload "$blob" "$size" 45 >/dev/null
  # Node 2's peers reach it only through the relay, which inverts a byte of every answer.
  cl_spawn relay node "$CL_TOOLS/tamperproxy.mjs" --target "http://$(cl_agent_ip 2):$CL_PEER_PORT" \
    --host "$CL_NET.1" --max-lifetime-s 600 --cluster "$CL_ID"
  port=$(cl_spawn_port relay) || fail "the tampering relay did not start"
  cl_agent_start 2 BLOBSWARM_ADVERTISE_ADDR="$CL_NET.1:$port" || fail "agent 2 did not start"
  for i in 1 3 4; do cl_agent_start "$i" || fail "agent $i did not start"; done
  # Node 2 alone first: it fills every chunk from the origin and becomes their only holder.
  load_nodes 2 "$blob" "$size" 45
  load_nodes "1 3 4" "$blob" "$size" 45
  summaries
  for i in 1 3 4; do
    digest=$((digest + $(metric "$i" blobswarm_peer_errors_total 'kind="digest"')))
  done
  tampered=$(curl -fsS --max-time 5 "http://$CL_NET.1:$port/__stats" | grep -o '"tampered":[0-9]*' | cut -d: -f2)
  log "relay: ${tampered:-0} answers tampered with"
  expect_gt "answers the relay tampered with" "${tampered:-0}" 0
  expect_gt "digest errors on nodes 1, 3, 4" "$digest" 0
}

# peer_get I ETAG HEADER OUT: GET chunk 0 of the case's blob from node I's peer server with
# header HEADER ("" = none); the body in OUT; prints the HTTP status.
peer_get() {
  local -a h=()
  [ -z "$3" ] || h=(-H "$3")
  curl -sS --max-time 10 -o "$4" -w '%{http_code}' "${h[@]}" -G \
    --data-urlencode "a=$CL_ORIGIN_EP#grid=$CHUNK" --data-urlencode "c=data" \
    --data-urlencode "b=$PEER_BLOB" --data-urlencode "e=$2" --data-urlencode "i=0" \
    --data-urlencode "w=0" "http://$(cl_agent_ip "$1"):$CL_PEER_PORT/v1/peer/chunk" || true
}

case_no_secret() {
  local size=$((64 * MIB + 64)) etag code body=$T/peer.body i auth zeros now
  PEER_BLOB=$(blob_name a)
  cluster_up "$NODES"
  etag=$(upload "$PEER_BLOB" "$size" 46)
  agents_start 1 3
  (umask 077 && od -An -N48 -tx1 /dev/urandom | tr -d ' \n' >"$CL_DIR/secret2")
  cl_agent_start 4 BLOBSWARM_CLUSTER_SECRET_FILE="$CL_DIR/secret2" || fail "agent 4 did not start"
  load_nodes 1 "$PEER_BLOB" "$size" 46 # node 1 holds every chunk
  zeros=$(printf '0%.0s' $(seq 1 64))
  now=$(date +%s%3N)
  # No signature, a malformed one, and a well-formed one that is not the cluster's.
  for h in "" "X-Blobswarm-Peer: garbage" \
    "X-Blobswarm-Peer: v1 node=node2 ts=$now mac=$zeros" \
    "X-Blobswarm-Peer: v1 node=node2 ts=$now mac=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"; do
    code=$(peer_get 1 "$etag" "$h" "$body")
    expect_eq "peer answer to [${h:-no signature}]" "$code" 401
    # An error text at most: never the chunk's bytes.
    expect_le "body bytes of that answer" "$(stat -c %s "$body" 2>/dev/null || echo 0)" 1024
  done
  load_nodes "2 3" "$PEER_BLOB" "$size" 46
  # The control: signed with the cluster's secret, the same peer servers do answer.
  expect_gt "peer bytes into nodes 2 and 3" \
    $(($(metric 2 blobswarm_peer_bytes_in_total) + $(metric 3 blobswarm_peer_bytes_in_total))) 0
  # Node 4 has another secret: the holders refuse it; its load comes from Azure.
  load_nodes 4 "$PEER_BLOB" "$size" 46
  summaries
  auth=$(metric 4 blobswarm_peer_errors_total 'kind="auth"')
  expect_gt "auth errors on node 4" "$auth" 0
  expect_eq "bytes node 4 served from peers" "$(metric 4 blobswarm_agent_served_bytes_total 'source="peer"')" 0
  expect_eq "peer bytes into node 4" "$(metric 4 blobswarm_peer_bytes_in_total)" 0
}

case_lease_killed() {
  # The lease is the default (90 s): the waiters must break a dead lessee's lease (it refuses
  # their connection), not wait for it to expire. margin_ms: how long after the kill they may
  # take; the lease has far more than that left at the kill (lease_min_ms).
  local size=$((6 * MIB + 7)) blob i k margin_ms=7000 lease_min_ms=60000 key val t0 left ms pttl
  local -A done_ms=()
  blob=$(blob_name a)
  cluster_up "$NODES"
  upload "$blob" "$size" 47 >/dev/null
  # Waits far longer than the margin on every layer, so the waiters' agents (not their shims'
  # fallback) must deliver the chunk once they broke the dead lessee's lease.
  agents_start 1 "$NODES" BLOBSWARM_ANSWER_MS=30000 BLOBSWARM_FILL_WAIT_MS=30000
  CL_LOAD_ENV=(BLOBSWARM_AGENT_TIMEOUT_MS=40000)
  # The origin holds the first GET of the blob (node 1's fill) far beyond the lease.
  cl_origin_rule "{\"kind\":\"stall\",\"count\":1,\"ms\":60000,\"match\":\"$blob\"}" ||
    fail "cannot set the stall rule"
  load_args "$blob" "$size" 47
  cl_load_bg 1 "${LOAD_ARGS[@]}"
  key=""
  for ((k = 0; k < POLL_S * 10; k++)); do
    key=$(cl_redis_cli --scan --pattern 'bs:v1:*:l:*' | head -n1)
    [ -n "$key" ] && [ "$(cl_origin_stat stall)" -ge 1 ] && break
    sleep 0.1
  done
  [ -n "$key" ] || fail "no fill lease appeared in Redis within $POLL_S s"
  val=$(cl_redis_cli GET "$key")
  case $val in node1\ *) log "ok: node 1 holds the lease ($key = $val), its fill stalls" ;;
    *) fail "the lease is held by '$val', expected node1" ;; esac
  for i in 2 3 4; do cl_load_bg "$i" "${LOAD_ARGS[@]}"; done
  sleep 1 # the waiters ask, find the lease held and wait
  # Still node 1's, with most of its 90 s ahead: expiry cannot be what ends the waits below.
  val=$(cl_redis_cli GET "$key")
  pttl=$(cl_redis_cli PTTL "$key")
  case $val in node1\ *) ;; *) fail "before the kill the lease is held by '$val', expected node1" ;; esac
  expect_ge "the lease's time left before the kill (ms)" "$pttl" "$lease_min_ms"
  cl_agent_stop 1 KILL || fail "agent 1 did not die"
  t0=$(date +%s%3N)
  log "agent 1 (the lessee) SIGKILLed"
  left=3
  for ((k = 0; k < margin_ms / 50 + 1 && left > 0; k++)); do
    for i in 2 3 4; do
      if [ -z "${done_ms[$i]:-}" ] && ! cl_load_running "$i"; then
        done_ms[$i]=$(($(date +%s%3N) - t0))
        left=$((left - 1))
      fi
    done
    sleep 0.05
  done
  for i in 2 3 4; do
    [ -n "${done_ms[$i]:-}" ] || fail "the load on node $i did not end within ${margin_ms} ms of the kill"
  done
  # Broken and then released by the waiter that filled the chunk: deleted, not expired (it had
  # $pttl ms left at the kill).
  [ "$(cl_redis_cli EXISTS "$key")" = 0 ] ||
    fail "the lease key is still there after the waiters: $(cl_redis_cli GET "$key") (PTTL $(cl_redis_cli PTTL "$key") ms)"
  log "ok: the lease key is gone $(($(date +%s%3N) - t0)) ms after the kill (it had $pttl ms left)"
  wait_loads 1 2 3 4
  for i in 2 3 4; do
    check_load "$i" "waiter"
    ms=${done_ms[$i]}
    expect_le "node $i done after the kill (ms)" "$ms" "$margin_ms"
    # Through its agent, not the shim's own Azure read.
    expect_ge "bytes agent $i served" "$(metric "$i" blobswarm_agent_served_bytes_total)" "$size"
  done
  check_load 1 "its agent killed"
  summaries
  local waits=0
  for i in 2 3 4; do waits=$((waits + $(metric "$i" blobswarm_lease_waits_total))); done
  expect_gt "lease waits on nodes 2-4" "$waits" 0
}

case_overwrite() {
  local size=$((64 * MIB + 3)) blob
  blob=$(blob_name a)
  cluster_up "$NODES"
  upload "$blob" "$size" 48 >/dev/null
  agents_start 1 "$NODES"
  load_nodes "$(all_nodes)" "$blob" "$size" 48
  # Same name and size, other content (a new ETag).
  upload "$blob" "$size" 49 >/dev/null
  cl_origin_reset
  load_nodes "$(all_nodes)" "$blob" "$size" 49
  summaries
  # The new version is read from Azure once, the rest from peers.
  origin_at_most "$size"
}

case_redis_down_start() {
  local size=$((64 * MIB + 1)) blob i code
  blob=$(blob_name a)
  cluster_up "$NODES"
  upload "$blob" "$size" 50 >/dev/null
  cl_redis_stop # CL_REDIS_URL now names a closed port
  agents_start 1 "$NODES" BLOBSWARM_NODE_TTL_MS=3000
  log "ok: $NODES agents ready with Redis unreachable"
  load_nodes "$(all_nodes)" "$blob" "$size" 50
  for i in $(all_nodes); do
    code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$(cl_agent_http "$i")/readyz" || true)
    expect_eq "node $i /readyz" "$code" 200
  done
  summaries
  # Redis comes up: every agent registers within the bound.
  cl_redis_start || fail "Redis did not start"
  wait_redis_keys 'bs:v1:{nodes}:n:*' "$NODES" "$POLL_S"
}

# ---------------------------------------------------------------------------------------
for CASE in "$@"; do
  declare -F "case_$CASE" >/dev/null || { echo "$SUITE: unknown case $CASE" >&2; exit 2; }
done
for CASE in "$@"; do
  t0=$(date +%s)
  log "start"
  "case_$CASE"
  # Every agent still running stops cleanly.
  for ((i = 1; i <= NODES; i++)); do
    if cl_agent_running "$i"; then
      cl_agent_stop "$i" TERM || fail "agent $i did not stop on SIGTERM"
      [ "${CL_AGENT_RC[$i]}" = 0 ] || fail "agent $i exited ${CL_AGENT_RC[$i]} on SIGTERM"
    fi
  done
  cl_down
  log "PASS in $(($(date +%s) - t0)) s"
done
