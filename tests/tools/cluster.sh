# tests/tools/cluster.sh: a multi-node blobswarm cluster on one machine, for the cluster
# tests (tests/integration/test_cluster.sh) and benchmarks. Sourced, never run; needs bash,
# root, iproute2 (ip, tc), redis-server, node, curl.
#
# Layout: one Linux bridge on 10.<a>.<b>.1/24 in the root namespace; node i (1..N) is the
# network namespace <id>n<i> at 10.<a>.<b>.(10+i), joined to the bridge by a veth pair. The
# origin (tests/tools/faultproxy.mjs in front of Azurite) and Redis listen on the bridge
# address; agents and loads run inside the node namespaces. Stores, sockets and logs are in
# DIR/n<i>/.
#
# API (every wait is bounded; a failure prints "cluster: ..." and returns non-zero):
#   cl_init DIR              work dir (created if missing) and a unique short id; installs an
#                            EXIT trap that calls cl_down_hook (if defined) then cl_down, and a
#                            watchdog that tears down the cluster if this shell dies first
#   cl_net N [NODE_MBIT [ORIGIN_MBIT]]
#                            bridge + N namespaces. NODE_MBIT: tc HTB on each node's download
#                            (host-side veth egress) and upload (node-side veth egress).
#                            ORIGIN_MBIT: the total rate of all origin traffic, enforced by the
#                            origin proxy (faultproxy --rate-mbit: one token bucket shared by
#                            all its connections), not by tc
#   cl_origin AZURITE_HTTP_URL   the origin proxy on the bridge address; exports CL_ORIGIN_URL
#                            (http://10.a.b.1:port) and CL_ORIGIN_EP (.../devstoreaccount1)
#   cl_origin_bytes          response body bytes the origin served since cl_origin_reset
#   cl_origin_reset, cl_origin_stat FIELD, cl_origin_rule JSON   (faultproxy control)
#   cl_redis                 redis-server on the bridge address (free port, no persistence);
#                            exports CL_REDIS_URL; cl_redis_stop, cl_redis_start (same port),
#                            cl_redis_flush, cl_redis_cli ARGS...
#   cl_secret                DIR/secret (0600, 48 random bytes as hex)
#   cl_agent_start I [VAR=VALUE...]   blobswarm-agent in namespace I, waits for /readyz
#   cl_agent_stop I [SIG]    default TERM (reaped, CL_AGENT_RC[I] = exit status); KILL crashes
#   cl_agent_ip I, cl_agent_http I, cl_agent_sock I, cl_agent_running I
#   cl_load I [blobswarm-read args...]   one load in namespace I through the shim and agent
#                            I, origin = the proxy; output in DIR/n<I>/load.log; returns
#                            blobswarm-read's exit status. The caller gives --container,
#                            --blob, --size, --expect-seed, ...; CL_LOAD_ENV=(VAR=VALUE...)
#                            adds shim settings
#   cl_load_bg I [args...]   the same in the background: CL_LOAD_PID[I]; cl_load_running I
#   cl_load_wait I           waits (bounded) for it; returns and sets CL_LOAD_RC[I]
#   cl_metric I NAME [LABELS]   agent I's metric: the sum of the series of NAME whose labels
#                            include every pair of LABELS ('kind="digest"'); 0 when absent
#   cl_upload CONTAINER BLOB SIZE SEED   the bs-gendata stream SEED into Azurite (direct);
#                            prints the blob's new ETag
#   cl_spawn NAME CMD..., cl_spawn_port NAME   a helper process stopped by cl_down
#   cl_ns_exec I CMD...      a command inside namespace I
#   cl_down                  stops everything started here, deletes the blobs cl_upload made,
#                            the namespaces, veths and bridge, removes DIR's content
#                            (chattr -R -i first); idempotent. A caller may replace the EXIT
#                            trap as long as its own calls cl_down.
#                            CL_KEEP=1 keeps DIR for a post-mortem.
# Settings (environment, read by cl_init): CL_BUILD (default ROOT/build), CL_AGENT_BIN,
#   CL_SHIM_LIB, CL_READ_CLI, CL_GENDATA, CL_LOAD_S (one load's limit, default 300),
#   CL_AGENT_START_S (15), CL_AGENT_STOP_S (20), CL_MAX_S (lifetime bound of servers, 3600).
# shellcheck shell=bash disable=SC2034 # CL_AGENT_RC, CL_LOAD_RC: read by the sourcing script

CL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CL_TOOLS=$CL_ROOT/tests/tools
CL_ACCOUNT=devstoreaccount1
# Azurite's well-known development account key (public, documented by Microsoft).
CL_ACCOUNT_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
CL_AGENT_PORT=8787      # node API, on the node's address
CL_PEER_PORT=7070       # peer server, on the node's address
CL_MAX_NODES=200        # addresses .11 .. .210 of the /24
CL_NAME_TRIES=50        # attempts at an unused id / subnet / port
CL_STATE_ROOT=/run/blobswarm-cl # one directory per live cluster id: its owner and its DIR

CL_DIR=""
CL_ID=""
CL_NET=""       # 10.a.b
CL_NODES=0
CL_ORIGIN_MBIT=""
CL_ORIGIN_URL=""
CL_ORIGIN_EP=""
CL_AZURITE_URL=""
CL_REDIS_URL=""
CL_REDIS_PORT=""
CL_REDIS_PID=""
CL_PROXY_PID=""
CL_WATCHDOG_PID=""
CL_LOAD_ENV=()
declare -A CL_AGENT_PID=() CL_AGENT_RC=() CL_LOAD_PID=() CL_LOAD_RC=()

cl_log() { printf '[cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
cl_err() {
  printf 'cluster: %s\n' "$*" >&2
  return 1
}

# cl_alive PID: exists and is not a zombie.
cl_alive() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# _cl_reap PID SECONDS: waits for PID (a child of this shell) to end; sets CL_RC. 1 if it did
# not end in time.
_cl_reap() {
  local pid=$1 i
  for ((i = 0; i < $2 * 20; i++)); do
    cl_alive "$pid" || break
    sleep 0.05
  done
  cl_alive "$pid" && return 1
  CL_RC=0
  wait "$pid" 2>/dev/null || CL_RC=$?
  return 0
}

# _cl_stop PID: TERM, KILL after 5 s, reaped.
_cl_stop() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  if ! _cl_reap "$pid" 5; then
    kill -KILL "$pid" 2>/dev/null || true
    _cl_reap "$pid" 5 || true
  fi
}

# Records a started process in DIR/.cl/pids so cl_down (or the watchdog) finds it.
_cl_track() { echo "$1" >>"$CL_DIR/.cl/pids"; }

# ---------------------------------------------------------------------------------------
# cl_init
# ---------------------------------------------------------------------------------------
cl_init() {
  local dir=${1:?cl_init DIR} i hex a b
  [ "$(id -u)" -eq 0 ] || { cl_err "needs root (network namespaces, tc)"; return 77; }
  local t
  for t in ip tc redis-server redis-cli node curl chattr setsid; do
    command -v "$t" >/dev/null || { cl_err "needs $t"; return 77; }
  done
  local build=${CL_BUILD:-$CL_ROOT/build}
  CL_AGENT_BIN=${CL_AGENT_BIN:-$build/agent/blobswarm-agent}
  CL_SHIM_LIB=${CL_SHIM_LIB:-$build/provider-shim/libblobswarm.so}
  CL_READ_CLI=${CL_READ_CLI:-$build/tools/blobswarm-read}
  CL_GENDATA=${CL_GENDATA:-$build/tests/bs-gendata}
  for t in "$CL_AGENT_BIN" "$CL_SHIM_LIB" "$CL_READ_CLI" "$CL_GENDATA"; do
    [ -e "$t" ] || { cl_err "missing $t (is it built?)"; return 2; }
  done
  CL_LOAD_S=${CL_LOAD_S:-300}
  CL_AGENT_START_S=${CL_AGENT_START_S:-15}
  CL_AGENT_STOP_S=${CL_AGENT_STOP_S:-20}
  CL_MAX_S=${CL_MAX_S:-3600}
  mkdir -p "$dir" "$CL_STATE_ROOT"
  CL_DIR=$(cd "$dir" && pwd)
  _cl_sweep
  # A 16-bit id: names "bs<4 hex>..." stay within 15 characters; the subnet 10.<a>.<b>.0/24
  # (a in 160..223) comes from it. Claimed by mkdir under CL_STATE_ROOT, checked free.
  for ((i = 0; i < CL_NAME_TRIES; i++)); do
    hex=$(od -An -N2 -tx2 /dev/urandom | tr -d ' \n')
    a=$((160 + (0x$hex >> 8) % 64))
    b=$((0x$hex & 255))
    ip -4 addr show | grep -q "inet 10\.$a\.$b\." && continue
    ip -4 route show | grep -q "^10\.$a\.$b\." && continue
    ip link show "bs$hex" >/dev/null 2>&1 && continue
    mkdir "$CL_STATE_ROOT/bs$hex" 2>/dev/null || continue
    CL_ID=bs$hex
    CL_NET=10.$a.$b
    break
  done
  [ -n "$CL_ID" ] || { cl_err "no free cluster id after $CL_NAME_TRIES tries"; return 1; }
  mkdir -p "$CL_DIR/.cl"
  : >"$CL_DIR/.cl/pids"
  echo "$CL_DIR" >"$CL_STATE_ROOT/$CL_ID/dir"
  echo "$$" >"$CL_STATE_ROOT/$CL_ID/owner"
  echo "$CL_NET" >"$CL_STATE_ROOT/$CL_ID/net"
  echo "$CL_ID" >"$CL_DIR/.cl/id"
  trap '_cl_on_exit' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # The watchdog: its own session, so a signal to our process group spares it; once this
  # shell is gone it tears the cluster down from what DIR/.cl and CL_STATE_ROOT record.
  # shellcheck disable=SC2016 # expanded by the watchdog's own shell
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done
    . "$2"; _cl_teardown "$3"' cl-watchdog "$$" "${BASH_SOURCE[0]}" "$CL_ID" \
    </dev/null >/dev/null 2>&1 &
  CL_WATCHDOG_PID=$!
  cl_log "cluster $CL_ID: net $CL_NET.0/24, dir $CL_DIR"
}

_cl_on_exit() {
  local rc=$?
  if declare -F cl_down_hook >/dev/null; then cl_down_hook || true; fi
  cl_down
  exit "$rc"
}

# _cl_teardown ID: kills the processes recorded for cluster ID (each checked to still be one
# of ours: its command line mentions the cluster's DIR or id), deletes its links and
# namespaces, and its DIR content unless CL_KEEP=1. Used by cl_down, the watchdog and the
# sweep of clusters whose owner died.
_cl_teardown() {
  local id=$1 dir="" net="" pid ns
  [ -d "$CL_STATE_ROOT/$id" ] || return 0
  dir=$(cat "$CL_STATE_ROOT/$id/dir" 2>/dev/null || true)
  net=$(cat "$CL_STATE_ROOT/$id/net" 2>/dev/null || echo "$id")
  if [ -n "$dir" ] && [ -f "$dir/.cl/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] || continue
      # redis-server retitles itself "redis-server ADDR:PORT": the subnet names it.
      if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" |
        grep -q -F -e "$dir" -e "$id" -e "$net.1:"; then
        kill -CONT "$pid" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done <"$dir/.cl/pids"
  fi
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${id}n[0-9]*$" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' |
    grep "^${id}\(h[0-9]*\)\{0,1\}$" || true); do
    ip link del "$l" 2>/dev/null || true
  done
  if [ -n "$dir" ] && [ -d "$dir" ] && [ "${CL_KEEP:-0}" != 1 ]; then
    chattr -R -i "$dir" 2>/dev/null || true # the agents' chunk files are immutable
    find "$dir" -mindepth 1 -delete 2>/dev/null || rm -rf "${dir:?}"/* "$dir"/.cl 2>/dev/null || true
  fi
  rm -rf "${CL_STATE_ROOT:?}/$id"
}

# Tears down clusters whose owner shell no longer exists (a run killed before its watchdog).
_cl_sweep() {
  local d owner
  for d in "$CL_STATE_ROOT"/bs*; do
    [ -d "$d" ] || continue
    owner=$(cat "$d/owner" 2>/dev/null || true)
    if [ -n "$owner" ] && ! kill -0 "$owner" 2>/dev/null; then
      cl_log "removing the leftovers of cluster ${d##*/} (owner $owner is gone)"
      CL_KEEP=0 _cl_teardown "${d##*/}"
    fi
  done
}

# ---------------------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------------------
_cl_need() { [ -n "$CL_ID" ] || { cl_err "call cl_init first"; return 1; }; }

# _cl_shape DEV MBIT [ip netns exec NS]: HTB root at MBIT on DEV's egress.
_cl_shape() {
  local dev=$1 mbit=$2
  shift 2
  "$@" tc qdisc add dev "$dev" root handle 1: htb default 10 &&
    "$@" tc class add dev "$dev" parent 1: classid 1:10 htb rate "${mbit}mbit" \
      ceil "${mbit}mbit" burst 256k cburst 256k quantum 60000
}

cl_net() {
  local n=${1:?cl_net N [NODE_MBIT [ORIGIN_MBIT]]} mbit=${2:-} i ns
  _cl_need || return 1
  if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt "$CL_MAX_NODES" ]; then
    cl_err "cl_net: N must be 1..$CL_MAX_NODES"
    return 2
  fi
  [ -z "$mbit" ] || [[ "$mbit" =~ ^[0-9]+$ ]] || { cl_err "cl_net: NODE_MBIT '$mbit'"; return 2; }
  CL_ORIGIN_MBIT=${3:-}
  [ -z "$CL_ORIGIN_MBIT" ] || [[ "$CL_ORIGIN_MBIT" =~ ^[0-9]+$ ]] ||
    { cl_err "cl_net: ORIGIN_MBIT '$CL_ORIGIN_MBIT'"; return 2; }
  ip link add "$CL_ID" type bridge || return 1
  ip addr add "$CL_NET.1/24" dev "$CL_ID" || return 1
  ip link set "$CL_ID" up || return 1
  for ((i = 1; i <= n; i++)); do
    ns=${CL_ID}n$i
    ip netns add "$ns" || return 1
    ip link add "${CL_ID}h$i" type veth peer name eth0 netns "$ns" || return 1
    ip link set "${CL_ID}h$i" master "$CL_ID" up || return 1
    ip netns exec "$ns" ip addr add "$CL_NET.$((10 + i))/24" dev eth0 || return 1
    ip netns exec "$ns" ip link set eth0 up || return 1
    ip netns exec "$ns" ip link set lo up || return 1
    if [ -n "$mbit" ]; then
      _cl_shape "${CL_ID}h$i" "$mbit" || return 1                # download of node i
      _cl_shape eth0 "$mbit" ip netns exec "$ns" || return 1      # upload of node i
    fi
    mkdir -p "$CL_DIR/n$i"
  done
  CL_NODES=$n
  cl_log "net: $n nodes${mbit:+, ${mbit} Mbit/s each way per node}${CL_ORIGIN_MBIT:+, origin ${CL_ORIGIN_MBIT} Mbit/s}"
}

cl_ns_exec() {
  local i=$1
  shift
  ip netns exec "${CL_ID}n$i" "$@"
}
cl_agent_ip() { echo "$CL_NET.$((10 + $1))"; }
cl_agent_http() { echo "http://$CL_NET.$((10 + $1)):$CL_AGENT_PORT"; }
cl_agent_sock() { echo "$CL_DIR/n$1/agent.sock"; }

# ---------------------------------------------------------------------------------------
# origin
# ---------------------------------------------------------------------------------------
cl_origin() {
  local target=${1:?cl_origin AZURITE_HTTP_URL} i port="" log=$CL_DIR/origin.log
  _cl_need || return 1
  [ "$CL_NODES" -gt 0 ] || { cl_err "cl_origin: call cl_net first"; return 1; }
  target=${target%/}
  target=${target%/"$CL_ACCOUNT"}
  CL_AZURITE_URL=$target
  local -a rate=()
  [ -z "$CL_ORIGIN_MBIT" ] || rate=(--rate-mbit "$CL_ORIGIN_MBIT")
  : >"$log"
  node "$CL_TOOLS/faultproxy.mjs" --target "$target" --host "$CL_NET.1" "${rate[@]}" \
    --max-lifetime-s "$CL_MAX_S" --cluster "$CL_ID" >"$log" 2>&1 &
  CL_PROXY_PID=$!
  _cl_track "$CL_PROXY_PID"
  for ((i = 0; i < 200; i++)); do
    port=$(sed -n 's/^listening \([0-9]*\)$/\1/p' "$log")
    [ -n "$port" ] && break
    cl_alive "$CL_PROXY_PID" || { cl_err "origin proxy exited: $(cat "$log")"; return 1; }
    sleep 0.05
  done
  [ -n "$port" ] || { cl_err "origin proxy did not start within 10 s"; return 1; }
  CL_ORIGIN_URL=http://$CL_NET.1:$port
  CL_ORIGIN_EP=$CL_ORIGIN_URL/$CL_ACCOUNT
  export CL_ORIGIN_URL CL_ORIGIN_EP
  # Every node reaches it (a bounded check that the wiring works).
  for ((i = 1; i <= CL_NODES; i++)); do
    cl_ns_exec "$i" curl -fsS --max-time 5 -o /dev/null "$CL_ORIGIN_URL/__stats" ||
      { cl_err "node $i cannot reach the origin at $CL_ORIGIN_URL"; return 1; }
  done
  cl_log "origin: $CL_ORIGIN_URL -> $target${CL_ORIGIN_MBIT:+ at ${CL_ORIGIN_MBIT} Mbit/s}"
}

cl_origin_reset() { curl -fsS --max-time 5 -X POST "$CL_ORIGIN_URL/__stats/reset" >/dev/null; }
# cl_origin_stat FIELD: a number of /__stats (requests, rangedGets, blobGets, heads, bytesOut).
cl_origin_stat() {
  local v
  v=$(curl -fsS --max-time 5 "$CL_ORIGIN_URL/__stats") || { cl_err "cannot read the origin's stats"; return 1; }
  v=$(grep -o "\"$1\":[0-9]*" <<<"$v" | head -n1 | cut -d: -f2)
  echo "${v:-0}"
}
cl_origin_bytes() { cl_origin_stat bytesOut; }
cl_origin_rule() {
  curl -fsS --max-time 5 -X POST --data "$1" "$CL_ORIGIN_URL/__fault" >/dev/null ||
    { cl_err "cannot set the origin rule $1"; return 1; }
}

# cl_upload CONTAINER BLOB SIZE SEED: uploads bs-gendata --seed SEED --size SIZE to Azurite
# directly (not through the proxy: uploads are not origin traffic). Needs cl_origin.
cl_upload() {
  local container=${1:?} blob=${2:?} size=${3:?} seed=${4:?} f conn
  [ -n "$CL_AZURITE_URL" ] || { cl_err "cl_upload: call cl_origin first"; return 1; }
  f=$CL_DIR/upload.$$.bin
  conn="DefaultEndpointsProtocol=http;AccountName=$CL_ACCOUNT;AccountKey=$CL_ACCOUNT_KEY;BlobEndpoint=$CL_AZURITE_URL/$CL_ACCOUNT;"
  "$CL_GENDATA" --seed "$seed" --size "$size" >"$f" || { cl_err "bs-gendata failed"; return 1; }
  {
    printf '["container","--conn","%s","--container","%s"]\n' "$conn" "$container"
    printf '{"argv":["upload","--conn","%s","--container","%s","--blob","%s","--file","%s","--single-shot"],"export":"ETAG"}\n' \
      "$conn" "$container" "$blob" "$f"
  } | timeout 300 node "$CL_TOOLS/azfixture.mjs" batch >"$f.out" ||
    { rm -f "$f" "$f.out"; cl_err "upload of $container/$blob failed"; return 1; }
  sed -n "s/^export ETAG='\\(.*\\)'\$/\\1/p" "$f.out"
  rm -f "$f" "$f.out"
  grep -qxF "$container|$blob" "$CL_DIR/.cl/uploads" 2>/dev/null ||
    echo "$container|$blob" >>"$CL_DIR/.cl/uploads"
}

# Deletes what cl_upload put in Azurite (Azurite keeps blobs in memory). Best effort, 60 s.
_cl_delete_uploads() {
  local u container blob conn
  [ -s "$CL_DIR/.cl/uploads" ] && [ -n "$CL_AZURITE_URL" ] || return 0
  conn="DefaultEndpointsProtocol=http;AccountName=$CL_ACCOUNT;AccountKey=$CL_ACCOUNT_KEY;BlobEndpoint=$CL_AZURITE_URL/$CL_ACCOUNT;"
  while IFS= read -r u; do
    container=${u%%|*}
    blob=${u#*|}
    printf '["delete","--conn","%s","--container","%s","--blob","%s"]\n' "$conn" "$container" "$blob"
  done <"$CL_DIR/.cl/uploads" | timeout 60 node "$CL_TOOLS/azfixture.mjs" batch >/dev/null 2>&1 ||
    cl_log "note: could not delete the uploaded blobs"
  : >"$CL_DIR/.cl/uploads"
}

# cl_spawn NAME CMD...: a helper process (a relay, a tool) stopped by cl_down, output in
# DIR/NAME.log; CL_SPAWN_PID. For a server that prints "listening PORT" (faultproxy.mjs,
# tamperproxy.mjs), cl_spawn_port NAME waits for it (10 s) and prints PORT.
cl_spawn() {
  local name=${1:?cl_spawn NAME CMD...}
  shift
  _cl_need || return 1
  : >"$CL_DIR/$name.log"
  "$@" >"$CL_DIR/$name.log" 2>&1 &
  CL_SPAWN_PID=$!
  _cl_track "$CL_SPAWN_PID"
}
cl_spawn_port() {
  local name=${1:?} i port
  for ((i = 0; i < 200; i++)); do
    port=$(sed -n 's/^listening \([0-9]*\)$/\1/p' "$CL_DIR/$name.log")
    [ -n "$port" ] && { echo "$port"; return 0; }
    sleep 0.05
  done
  cl_err "$name did not report a port: $(tail -n 3 "$CL_DIR/$name.log")"
}

# ---------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------
_cl_redis_run() {
  mkdir -p "$CL_DIR/redis"
  redis-server --bind "$CL_NET.1" --port "$CL_REDIS_PORT" --save '' --appendonly no \
    --protected-mode no --dir "$CL_DIR/redis" --daemonize no --logfile "$CL_DIR/redis/redis.log" \
    --unixsocket '' --tcp-backlog 511 >/dev/null 2>&1 &
  CL_REDIS_PID=$!
  _cl_track "$CL_REDIS_PID"
  local i
  for ((i = 0; i < 100; i++)); do
    cl_alive "$CL_REDIS_PID" || return 1
    redis-cli -h "$CL_NET.1" -p "$CL_REDIS_PORT" PING 2>/dev/null | grep -q PONG && return 0
    sleep 0.05
  done
  return 1
}

cl_redis() {
  local i
  _cl_need || return 1
  for ((i = 0; i < CL_NAME_TRIES; i++)); do
    CL_REDIS_PORT=$((20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 40000))
    ss -ltnH "sport = :$CL_REDIS_PORT" 2>/dev/null | grep -q . && continue
    _cl_redis_run && break
    _cl_stop "$CL_REDIS_PID"
    CL_REDIS_PID=""
  done
  [ -n "$CL_REDIS_PID" ] || { cl_err "redis-server did not start: $(tail -n 3 "$CL_DIR/redis/redis.log")"; return 1; }
  CL_REDIS_URL=redis://$CL_NET.1:$CL_REDIS_PORT
  export CL_REDIS_URL
  cl_log "redis: $CL_REDIS_URL"
}
cl_redis_stop() {
  _cl_stop "$CL_REDIS_PID"
  CL_REDIS_PID=""
}
cl_redis_start() {
  [ -n "$CL_REDIS_PORT" ] || { cl_err "cl_redis_start: call cl_redis first"; return 1; }
  cl_alive "${CL_REDIS_PID:-0}" && return 0
  local i
  # The port may linger for a moment after a stop.
  for ((i = 0; i < 20; i++)); do
    _cl_redis_run && return 0
    _cl_stop "$CL_REDIS_PID"
    sleep 0.25
  done
  CL_REDIS_PID=""
  cl_err "redis-server did not restart on port $CL_REDIS_PORT"
}
cl_redis_cli() { timeout 10 redis-cli -h "$CL_NET.1" -p "$CL_REDIS_PORT" "$@"; }
cl_redis_flush() { cl_redis_cli FLUSHALL >/dev/null; }

# ---------------------------------------------------------------------------------------
# agents
# ---------------------------------------------------------------------------------------
cl_secret() {
  _cl_need || return 1
  (umask 077 && od -An -N48 -tx1 /dev/urandom | tr -d ' \n' >"$CL_DIR/secret")
  chmod 600 "$CL_DIR/secret"
}

# cl_agent_start I [VAR=VALUE...]: the settings below, then the caller's (which win).
cl_agent_start() {
  local i=${1:?cl_agent_start I [VAR=VALUE...]} ip d pid k
  shift
  _cl_need || return 1
  if ! [[ "$i" =~ ^[0-9]+$ ]] || [ "$i" -lt 1 ] || [ "$i" -gt "$CL_NODES" ]; then
    cl_err "no node $i"
    return 2
  fi
  [ -n "$CL_ORIGIN_URL" ] || { cl_err "cl_agent_start: call cl_origin first"; return 1; }
  if cl_alive "${CL_AGENT_PID[$i]:-0}"; then
    cl_err "agent $i is running"
    return 1
  fi
  ip=$(cl_agent_ip "$i")
  d=$CL_DIR/n$i
  mkdir -p "$d"
  rm -f "$d/agent.sock"
  echo "----- start $(date +%T) $*" >>"$d/agent.log"
  ip netns exec "${CL_ID}n$i" env -i PATH="$PATH" HOME="${HOME:-/root}" \
    BLOBSWARM_NODE_NAME="node$i" \
    BLOBSWARM_STORE_DIR="$d/store" \
    BLOBSWARM_STORE_BUDGET=4G \
    BLOBSWARM_AGENT_SOCKET="$d/agent.sock" \
    BLOBSWARM_AGENT_LISTEN="$ip:$CL_AGENT_PORT" \
    BLOBSWARM_PEER_LISTEN="$ip:$CL_PEER_PORT" \
    BLOBSWARM_ADVERTISE_ADDR="$ip:$CL_PEER_PORT" \
    BLOBSWARM_REDIS_URL="$CL_REDIS_URL" \
    BLOBSWARM_CLUSTER_SECRET_FILE="$CL_DIR/secret" \
    BLOBSWARM_ALLOWED_ENDPOINTS="$CL_ORIGIN_EP" \
    "$@" "$CL_AGENT_BIN" >>"$d/agent.log" 2>&1 &
  pid=$!
  _cl_track "$pid"
  CL_AGENT_PID[$i]=$pid
  for ((k = 0; k < CL_AGENT_START_S * 20; k++)); do
    if ! cl_alive "$pid"; then
      wait "$pid" 2>/dev/null || true
      cl_err "agent $i exited during start-up: $(tail -n 5 "$d/agent.log")"
      return 1
    fi
    if [ -S "$d/agent.sock" ] &&
      curl -fsS --max-time 2 -o /dev/null "http://$ip:$CL_AGENT_PORT/readyz" 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  cl_err "agent $i not ready within ${CL_AGENT_START_S}s: $(tail -n 5 "$d/agent.log")"
}

# cl_agent_stop I [SIG]: signals agent I and reaps it (CL_AGENT_RC[I]); 1 if it is still
# running CL_AGENT_STOP_S after the signal.
cl_agent_stop() {
  local i=${1:?} sig=${2:-TERM} pid
  pid=${CL_AGENT_PID[$i]:-}
  [ -n "$pid" ] || { cl_err "agent $i was not started"; return 1; }
  kill "-$sig" "$pid" 2>/dev/null || true
  _cl_reap "$pid" "$CL_AGENT_STOP_S" ||
    { cl_err "agent $i still running ${CL_AGENT_STOP_S}s after SIG$sig"; return 1; }
  CL_AGENT_RC[$i]=$CL_RC
  CL_AGENT_PID[$i]=""
}

cl_agent_running() { cl_alive "${CL_AGENT_PID[$1]:-0}"; }

# cl_metric I NAME [LABELS]
cl_metric() {
  local i=${1:?} name=${2:?} labels=${3:-} m
  m=$(curl -fsS --max-time 10 "$(cl_agent_http "$i")/metrics") ||
    { cl_err "cannot read /metrics of agent $i"; return 1; }
  awk -v name="$name" -v want="$labels" '
    BEGIN { nw = (want == "") ? 0 : split(want, w, ",") }
    /^#/ { next }
    {
      series = $1; lab = ""
      p = index(series, "{")
      if (p) { lab = substr(series, p + 1, length(series) - p - 1); series = substr(series, 1, p - 1) }
      if (series != name) next
      n = split(lab, have, ",")
      for (k = 1; k <= nw; k++) {
        found = 0
        for (j = 1; j <= n; j++) if (have[j] == w[k]) found = 1
        if (!found) next
      }
      sum += $2
    }
    END { if (sum == int(sum)) printf "%.0f\n", sum; else printf "%s\n", sum }' <<<"$m"
}

# ---------------------------------------------------------------------------------------
# loads
# ---------------------------------------------------------------------------------------
# Sets CL_ARGV to the command of one load on node $1 with blobswarm-read args $2...: one
# simple command (ip netns exec -> timeout -> blobswarm-read), so a background load's pid is
# the timeout process, which passes signals on to the reader.
_cl_load_argv() {
  local i=$1
  shift
  local conn="DefaultEndpointsProtocol=http;AccountName=$CL_ACCOUNT;AccountKey=$CL_ACCOUNT_KEY;BlobEndpoint=$CL_ORIGIN_EP;"
  CL_ARGV=(ip netns exec "${CL_ID}n$i" timeout -k 5 "$CL_LOAD_S" env -i PATH="$PATH"
    HOME="${HOME:-/root}" AZURE_STORAGE_CONNECTION_STRING="$conn"
    BLOBSWARM_AGENT="$CL_DIR/n$i/agent.sock" BLOBSWARM_LOG_LEVEL=warn "${CL_LOAD_ENV[@]}"
    "$CL_READ_CLI" --lib "$CL_SHIM_LIB" --account "$CL_ACCOUNT" "$@")
}

cl_load() {
  local i=${1:?cl_load I [blobswarm-read args...]} rc=0
  shift
  _cl_load_argv "$i" "$@"
  "${CL_ARGV[@]}" >"$CL_DIR/n$i/load.log" 2>&1 || rc=$?
  CL_LOAD_RC[$i]=$rc
  return "$rc"
}

cl_load_bg() {
  local i=${1:?cl_load_bg I [blobswarm-read args...]}
  shift
  _cl_load_argv "$i" "$@"
  "${CL_ARGV[@]}" >"$CL_DIR/n$i/load.log" 2>&1 &
  CL_LOAD_PID[$i]=$!
  _cl_track "${CL_LOAD_PID[$i]}"
}

cl_load_running() { cl_alive "${CL_LOAD_PID[$1]:-0}"; }

cl_load_wait() {
  local i=${1:?} pid
  pid=${CL_LOAD_PID[$i]:-}
  [ -n "$pid" ] || { cl_err "no load running on node $i"; return 1; }
  # timeout inside ends the load after CL_LOAD_S; the margin covers its -k.
  _cl_reap "$pid" $((CL_LOAD_S + 15)) || { cl_err "load on node $i did not end"; return 1; }
  CL_LOAD_PID[$i]=""
  CL_LOAD_RC[$i]=$CL_RC
  return "$CL_RC"
}

# ---------------------------------------------------------------------------------------
# cl_down
# ---------------------------------------------------------------------------------------
cl_down() {
  local i pid
  [ -n "$CL_ID" ] || return 0
  for i in "${!CL_LOAD_PID[@]}"; do _cl_stop "${CL_LOAD_PID[$i]}"; done
  for i in "${!CL_AGENT_PID[@]}"; do _cl_stop "${CL_AGENT_PID[$i]}"; done
  _cl_stop "$CL_REDIS_PID"
  _cl_stop "$CL_PROXY_PID"
  if [ -f "$CL_DIR/.cl/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] && cl_alive "$pid" && _cl_stop "$pid"
    done <"$CL_DIR/.cl/pids"
  fi
  _cl_delete_uploads
  _cl_teardown "$CL_ID"
  if [ -n "$CL_WATCHDOG_PID" ]; then
    kill -TERM "$CL_WATCHDOG_PID" 2>/dev/null || true
    wait "$CL_WATCHDOG_PID" 2>/dev/null || true
  fi
  [ "${CL_KEEP:-0}" = 1 ] && cl_log "kept $CL_DIR"
  CL_LOAD_PID=()
  CL_AGENT_PID=()
  CL_REDIS_PID=""
  CL_PROXY_PID=""
  CL_WATCHDOG_PID=""
  CL_ID=""
  CL_NODES=0
}
