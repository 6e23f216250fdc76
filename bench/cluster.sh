#!/usr/bin/env bash
# bench/cluster.sh: a cold cluster load, N nodes (default 8) loading one >= 1 GiB
# safetensors-shaped model at once over shaped links, measured in the same run for three
# systems, each starting cold:
#   nocache    each node's shim reads Azure directly (through the origin proxy)
#   nginx      a caching nginx per node (proxy_cache + slice 8m) between its shim and Azure
#   blobswarm  Redis + one agent per node, the shims asking their agent
# For each: origin bytes / model size, per-node completion, last node / ideal. Then
# warm-from-peer (a fresh node loads the model the others hold) and Redis work per GiB per
# node with an extrapolation to 1,000 nodes. Writes a data file and a PNG (completion CDF).
# The cluster itself (namespaces, shaped links, origin proxy, Redis, agents, loads) is
# tests/tools/cluster.sh, shared with the cluster tests. See bench/README.md.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH_NAME=cluster
MODEL_MB="${BENCH_MODEL_MB:-1024}" # model size in MiB (>= 1024 for the real figure)
{ [[ "$MODEL_MB" =~ ^[0-9]+$ ]] && [ "$MODEL_MB" -ge 1 ]; } || {
  echo "BENCH_MODEL_MB='$MODEL_MB' is not a positive whole number of MiB" >&2
  exit 2
}
BENCH_SIZE=$((MODEL_MB * 1048576))
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"
# shellcheck source=../tests/tools/cluster.sh
. "$ROOT/tests/tools/cluster.sh"

# ---- knobs (environment; BUILD, STEP_TIMEOUT, KEEP, SHIM_LIB, READER: lib.sh) -------------
NODES="${BENCH_NODES:-8}"                       # nodes loading at once
NODE_MBIT="${BENCH_NODE_MBIT:-200}"             # each node's link, each way (tc HTB)
ORIGIN_MBIT="${BENCH_ORIGIN_MBIT:-400}"         # the origin link, all nodes together
SYSTEMS="${BENCH_SYSTEMS:-nocache nginx blobswarm}"
WARM="${BENCH_WARM:-1}"                         # 1: warm-from-peer after blobswarm
THREADS="${BENCH_PARALLEL:-8}"                  # blobswarm-read threads per node
PIECE="${BENCH_CHUNK:-8388608}"                 # blob_read bytes per call
SLICE="${BENCH_NGINX_SLICE:-8m}"                # nginx slice size
LOAD_S="${BENCH_LOAD_S:-480}"                   # one node's load, at most
IDLE_S="${BENCH_IDLE_S:-10}"                    # quiet window for Redis background commands
PLOT="${BENCH_PLOT-$ROOT/docs/img/cluster-bench.png}" # PNG ('' for none)
DATA="${BENCH_DATA-${PLOT%.png}.dat}"           # per-node completion times ('' for none)
X_NODES="${BENCH_X_NODES:-1000}"                # extrapolation: nodes
X_MODEL_GB="${BENCH_X_MODEL_GB:-140}"           # extrapolation: model size, 10^9 bytes
X_NODE_GBIT="${BENCH_X_NODE_GBIT:-25 50 100 200}" # extrapolation: node links, Gbit/s
X_ORIGIN_GBIT="${BENCH_X_ORIGIN_GBIT:-200}"     # extrapolation: account egress, Gbit/s
X_REDIS_UTIL="${BENCH_X_REDIS_UTIL:-0.5}"       # extrapolation: busy share one Redis core may run at
# The agents' settings beyond what cluster.sh sets (space-separated VAR=VALUE).
# Read-ahead takes blobs up to a quarter of the store budget: the budget admits the model.
AGENT_ENV="BLOBSWARM_STORE_BUDGET=$((MODEL_MB * 4 + 1024))M BLOBSWARM_READAHEAD=1 BLOBSWARM_LOG_LEVEL=warn ${BENCH_AGENT_ENV:-}"

NGINX_PORT=18080      # the node's nginx, front (x-ms-range -> Range), on the node's loopback
NGINX_CACHE_PORT=18081 # its caching server (slice, proxy_cache), same nginx
SEED=21               # model body: bs-gendata --seed SEED
MAX_NODES=64          # a sanity bound for this machine
CPU_HZ=$(getconf CLK_TCK)

for v in NODES NODE_MBIT ORIGIN_MBIT THREADS PIECE LOAD_S IDLE_S X_NODES X_MODEL_GB X_ORIGIN_GBIT; do
  { is_uint "${!v}" && [ "${!v}" -ge 1 ]; } || die "$v='${!v}' is not a positive integer"
done
[ "$NODES" -le "$MAX_NODES" ] || die "BENCH_NODES must be 1..$MAX_NODES"
[ "$SIZE" -gt $((8 + HEADER_JSON_BYTES)) ] || die "BENCH_MODEL_MB is too small"
[ "$SIZE" -ge "$GIB" ] || log "note: BENCH_MODEL_MB=$MODEL_MB is below 1 GiB (a smoke run)"
[[ "$SLICE" =~ ^[0-9]+[km]$ ]] || die "BENCH_NGINX_SLICE='$SLICE' is not a size like 8m"
[[ "$X_REDIS_UTIL" =~ ^0?\.[0-9]+$|^1(\.0*)?$ ]] || die "BENCH_X_REDIS_UTIL must be in (0, 1]"
for g in $X_NODE_GBIT; do { is_uint "$g" && [ "$g" -ge 1 ]; } || die "BENCH_X_NODE_GBIT: '$g'"; done
for s in $SYSTEMS; do
  case "$s" in nocache | nginx | blobswarm) ;; *) die "unknown system '$s' (nocache nginx blobswarm)" ;; esac
done
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, tc)"

# ---- tools: nginx (with the slice module) and gnuplot are installed when missing ---------
apt_install() {
  log "installing $* (apt-get)"
  DEBIAN_FRONTEND=noninteractive timeout "$STEP_TIMEOUT" apt-get install -y -q \
    --no-install-recommends "$@" >/dev/null 2>&1 ||
    { timeout "$STEP_TIMEOUT" apt-get update -q >/dev/null 2>&1 &&
      DEBIAN_FRONTEND=noninteractive timeout "$STEP_TIMEOUT" apt-get install -y -q \
        --no-install-recommends "$@" >/dev/null; } || die "could not install $*"
}
if [[ " $SYSTEMS " == *" nginx "* ]]; then
  command -v nginx >/dev/null || apt_install nginx-light
  nginx -V 2>&1 | grep -q -- --with-http_slice_module || die "this nginx has no slice module"
fi
if [ -n "$PLOT" ] && ! command -v gnuplot >/dev/null; then apt_install gnuplot-nox; fi
need_tools
need_azurite
for f in "$SHIM_LIB" "$READER" "$BUILD/agent/blobswarm-agent" "$BUILD/tests/bs-gendata"; do
  [ -e "$f" ] || die "$f is missing: build first (make build)"
done

# ---- lifetime ------------------------------------------------------------------------------
# cl_init replaces lib.sh's EXIT trap with its own (cl_down_hook, then cl_down): the hook
# stops Azurite; the work directory goes after the cluster is down.
WORK="$(mktemp -d /tmp/bscluster.XXXXXX)"
cl_down_hook() { stop_azurite; }
on_exit() {
  local rc=$?
  trap - EXIT
  set +e
  cl_down_hook
  cl_down
  if [ "$KEEP" != 1 ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
  exit "$rc"
}

# ---- model and cluster -----------------------------------------------------------------------
MODEL="$WORK/model.safetensors"
make_blob "$MODEL" "$SEED" "$BUILD/tests/bs-gendata"
SHA="$(sha256sum "$MODEL" | cut -d' ' -f1)"
AZURITE_STORE_ARGS=(--inMemoryPersistence)
start_azurite 127.0.0.1
upload_blob "$MODEL" --public --single-shot # public: nginx caches anonymous answers
rm -f "$MODEL"

export CL_BUILD="$BUILD" CL_LOAD_S="$LOAD_S" CL_KEEP="$KEEP"
cl_init "$WORK/cl" || die "cl_init failed"
trap on_exit EXIT
cl_net $((NODES + 1)) "$NODE_MBIT" "$ORIGIN_MBIT" || die "cl_net failed" # node N+1: the fresh node
cl_origin "http://$AZ_HOST:$AZ_PORT" || die "cl_origin failed"

# Figures every system shares.
MIB_S_NODE=$(awk -v m="$NODE_MBIT" 'BEGIN { printf "%.2f", m * 1e6 / 8 / 1048576 }')
MIB_S_ORIGIN=$(awk -v m="$ORIGIN_MBIT" 'BEGIN { printf "%.2f", m * 1e6 / 8 / 1048576 }')
IDEAL_S=$(awk -v s="$SIZE" -v n="$NODE_MBIT" -v o="$ORIGIN_MBIT" \
  'BEGIN { a = s * 8 / (n * 1e6); b = s * 8 / (o * 1e6); printf "%.2f", (a > b ? a : b) }')
log "model $(awk -v s="$SIZE" 'BEGIN { printf "%.0f MiB", s / 1048576 }'), $NODES nodes," \
  "node links $NODE_MBIT Mbit/s ($MIB_S_NODE MiB/s), origin $ORIGIN_MBIT Mbit/s" \
  "($MIB_S_ORIGIN MiB/s): ideal ${IDEAL_S}s"

: >"$WORK/times" # "system node seconds" rows
SUMMARY=()

# ---- one cluster load --------------------------------------------------------------------------
# cluster_load SYSTEM: loads the model on nodes 1..NODES at once (CL_LOAD_ENV already set),
# each verified against the SHA-256; appends "SYSTEM I SECONDS" to WORK/times, where SECONDS
# is from the common start to the end of node I's reads (its launch offset plus the read
# time blobswarm-read reports, so the SHA-256 check after the reads is not counted).
cluster_load() {
  local sys="$1" i t0 launch secs bad=0
  local -a off=()
  local c0 o0 w0
  c0=$(cpu_snap)
  own_cpu
  o0=$OWN_CPU
  w0=$(date +%s.%N)
  t0=$(date +%s.%N)
  for ((i = 1; i <= NODES; i++)); do
    off[i]=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.3f", a - b }')
    cl_load_bg "$i" --container "$CONTAINER" --blob "$BLOB" --size "$SIZE" \
      --threads "$THREADS" --chunk-bytes "$PIECE" --sha256 "$SHA" --json
  done
  for ((i = 1; i <= NODES; i++)); do
    if ! cl_load_wait "$i"; then
      log "$sys: node $i failed (exit ${CL_LOAD_RC[$i]:-?}): $(tail -n 5 "$CL_DIR/n$i/load.log")"
      bad=1
      continue
    fi
    secs=$(sed -n 's/^{.*"seconds":\([0-9.]*\).*"verified":true.*/\1/p' "$CL_DIR/n$i/load.log" | head -n1)
    [ -n "$secs" ] || { log "$sys: node $i: no verified read in its output"; bad=1; continue; }
    launch=$(awk -v o="${off[i]}" -v s="$secs" 'BEGIN { printf "%.3f", o + s }')
    echo "$sys $i $launch" >>"$WORK/times"
    cp "$CL_DIR/n$i/load.log" "$WORK/load.$sys.$i.log"
  done
  [ "$bad" -eq 0 ] || die "$sys: a load failed (see above)"
  CPU_BUSY=$(awk -v a="$c0" -v b="$(cpu_snap)" 'BEGIN { split(a, x, " "); split(b, y, " ")
    printf "%.2f", 1 - (y[2] - x[2]) / (y[1] - x[1]) }')
  own_cpu
  CPU_OWN=$(awk -v a="$o0" -v b="$OWN_CPU" -v w0="$w0" -v w1="$(date +%s.%N)" \
    'BEGIN { printf "%.2f", (b - a) / (w1 - w0) }')
}

# own_cpu: sets OWN_CPU to the CPU seconds used so far by this benchmark's processes:
# everything in the node namespaces (agents, nginx), the origin proxy, Redis, Azurite, and the
# children this shell has reaped (the loads, with their readers). Not in a subshell: there
# `times` would not see this shell's children.
own_cpu() {
  local -a pids=()
  local i
  for ((i = 1; i <= CL_NODES; i++)); do
    mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "${CL_ID}n$i" 2>/dev/null)
  done
  pids+=("$CL_PROXY_PID" "${CL_REDIS_PID:-}")
  mapfile -t -O "${#pids[@]}" pids < <(cat /proc/"$AZ_PID"/task/*/children 2>/dev/null | tr ' ' '\n')
  times >"$WORK/times.now"
  OWN_CPU=$({ for i in "${pids[@]}"; do [ -z "$i" ] || sed 's/.*) //' "/proc/$i/stat" 2>/dev/null; done; cat "$WORK/times.now"; } |
    awk -v hz="$CPU_HZ" '
      NF > 20 { t += ($12 + $13) / hz; next }     # a /proc/PID/stat line
      /^[0-9]+m[0-9.]+s / { n++; if (n == 2) {     # times: the children line
        for (k = 1; k <= 2; k++) { split($k, m, "m"); t += m[1] * 60 + m[2] } } }
      END { printf "%.2f\n", t }')
}

# cpu_snap: "total idle" jiffies of the whole machine (/proc/stat; iowait counts as idle).
cpu_snap() { awk '$1 == "cpu" { t = 0; for (k = 2; k <= NF; k++) t += $k; print t, $5 + $6; exit }' /proc/stat; }

# report_system SYSTEM EXTRA_JSON: origin bytes and completion figures of the last load.
report_system() {
  local sys="$1" extra="${2:-}" ob ratio stats
  ob=$(cl_origin_bytes)
  ratio=$(awk -v b="$ob" -v s="$SIZE" 'BEGIN { printf "%.3f", b / s }')
  # first median last, and the node times in node order
  stats=$(awk -v s="$sys" '$1 == s { print $3, $2 }' "$WORK/times" | sort -g |
    awk '{ v[NR] = $1; t[$2] = $1 }
    END { n = NR; m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
          list = ""; for (i = 1; i <= n; i++) list = list (i > 1 ? "," : "") t[i]
          printf "%.2f %.2f %.2f %s\n", v[1], m, v[n], list }')
  local first median last list over
  read -r first median last list <<<"$stats"
  over=$(awk -v l="$last" -v i="$IDEAL_S" 'BEGIN { printf "%.2f", l / i }')
  SUMMARY+=("$(printf '%-10s %11s %9s %9s %9s %9s %11s %11s %9s' "$sys" "$(awk -v b="$ob" 'BEGIN { printf "%.2f GiB", b / 1073741824 }')" \
    "${ratio}x" "${first}s" "${median}s" "${last}s" "${over}x" "$CPU_OWN" "$(awk -v c="$CPU_BUSY" 'BEGIN { printf "%.0f%%", c * 100 }')")")
  log "$sys: origin $ob bytes (${ratio}x model), nodes done in ${first}..${last}s (median ${median}s), last/ideal ${over}; CPU: the bench's processes ${CPU_OWN} cores, the machine $(awk -v c="$CPU_BUSY" 'BEGIN { printf "%.0f%%", c * 100 }') busy"
  printf 'RESULT {"bench":"cluster","system":"%s","nodes":%d,"model_bytes":%d,"node_mbit":%d,"origin_mbit":%d,"threads":%d,"origin_bytes":%d,"origin_ratio":%s,"ideal_s":%s,"first_s":%s,"median_s":%s,"last_s":%s,"last_over_ideal":%s,"node_s":[%s]%s,"cpu_busy":%s,"bench_cores":%s,"load":"%s"}\n' \
    "$sys" "$NODES" "$SIZE" "$NODE_MBIT" "$ORIGIN_MBIT" "$THREADS" "$ob" "$ratio" "$IDEAL_S" \
    "$first" "$median" "$last" "$over" "$list" "$extra" "$CPU_BUSY" "$CPU_OWN" "$(loadavg)"
}

# ---- (a) no cache ----------------------------------------------------------------------------
run_nocache() {
  log "nocache: $NODES shims read the origin directly"
  CL_LOAD_ENV=(BLOBSWARM_AGENT=off)
  cl_origin_reset
  cluster_load nocache
  report_system nocache
}

# ---- (b) nginx per node -------------------------------------------------------------------
# nginx_conf DIR: the node's nginx. The front server turns the Azure client's x-ms-range into
# Range (the slice and range filters read only Range) and passes on to the caching server,
# which fetches SLICE-sized slices anonymously from the origin (public container; no
# Authorization passed, so answers are cacheable and keyed by path and slice alone), one
# fetch per slice at a time (proxy_cache_lock).
nginx_conf() {
  local d="$1" up="${CL_ORIGIN_URL#http://}"
  cat <<EOF
# one node's caching proxy (bench/cluster.sh); runs in the node's namespace as root
user root;
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  proxy_cache_path $d/cache levels=1:2 keys_zone=blobs:16m max_size=$((SIZE * 2 / 1048576 + 256))m
                   inactive=1h use_temp_path=off;
  upstream origin { server $up; keepalive 32; }
  upstream cache { server 127.0.0.1:$NGINX_CACHE_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location = /__ready { return 204; }
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Range \$http_x_ms_range;
      proxy_set_header x-ms-range "";
      proxy_buffering off;
      proxy_read_timeout ${LOAD_S}s;
      proxy_pass http://cache;
    }
  }
  server {
    listen 127.0.0.1:$NGINX_CACHE_PORT;
    location / {
      slice $SLICE;
      proxy_cache blobs;
      proxy_cache_key \$uri\$slice_range;
      proxy_cache_valid 200 206 1h;
      proxy_cache_lock on;
      proxy_cache_lock_timeout ${LOAD_S}s;
      proxy_cache_lock_age ${LOAD_S}s;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Range \$slice_range;
      proxy_set_header x-ms-range "";
      proxy_set_header Authorization "";
      proxy_read_timeout ${LOAD_S}s;
      proxy_pass http://origin;
    }
  }
}
EOF
}

NGINX_PIDS=()
stop_nginx() {
  local p
  for p in "${NGINX_PIDS[@]}"; do stop_pid "$p"; done
  NGINX_PIDS=()
}

run_nginx() {
  local i d k ok
  log "nginx: a caching nginx per node (slice $SLICE) in front of the origin"
  for ((i = 1; i <= NODES; i++)); do
    d="$CL_DIR/n$i/nginx"
    mkdir -p "$d/tmp" "$d/cache"
    nginx_conf "$d" >"$d/nginx.conf"
    cl_spawn "nginx$i" ip netns exec "${CL_ID}n$i" timeout -k 5 "$MAX_SECONDS" \
      nginx -e "$d/error.log" -p "$d" -c "$d/nginx.conf"
    NGINX_PIDS+=("$CL_SPAWN_PID")
  done
  for ((i = 1; i <= NODES; i++)); do
    ok=0
    for ((k = 0; k < 100; k++)); do
      if cl_ns_exec "$i" curl -fsS --max-time 1 -o /dev/null "http://127.0.0.1:$NGINX_PORT/__ready" 2>/dev/null; then
        ok=1
        break
      fi
      sleep 0.1
    done
    [ "$ok" -eq 1 ] || die "nginx on node $i did not start: $(tail -n 5 "$CL_DIR/n$i/nginx/error.log" 2>/dev/null)"
  done
  CL_LOAD_ENV=(BLOBSWARM_AGENT=off AZURE_STORAGE_CONNECTION_STRING=
    "BLOBSWARM_BLOB_ENDPOINT=http://127.0.0.1:$NGINX_PORT/$ACCOUNT"
    AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:9)
  cl_origin_reset
  cluster_load nginx
  report_system nginx
  stop_nginx
  for ((i = 1; i <= NODES; i++)); do rm -rf "$CL_DIR/n$i/nginx/cache"; done
}

# ---- (c) blobswarm -----------------------------------------------------------------------------
# redis_info: "commands cpu_ticks net_in_bytes net_out_bytes user_ticks" of the Redis server
# now (CPU: utime + stime of redis-server from /proc, every thread, networking and timers
# included; user_ticks: utime alone).
redis_info() {
  local info st
  info=$(cl_redis_cli INFO stats | tr -d '\r') || die "cannot read Redis INFO"
  st=$(sed 's/.*) //' "/proc/$CL_REDIS_PID/stat") || die "cannot read redis-server's /proc stat"
  awk -v st="$st" -F: '
    $1 == "total_commands_processed" { c = $2 }
    $1 == "total_net_input_bytes" { ni = $2 }
    $1 == "total_net_output_bytes" { no = $2 }
    END { split(st, f, " "); printf "%d %d %d %d %d\n", c, f[12] + f[13], ni, no, f[12] }' <<<"$info"
}

# redis_top: the commands Redis ran since CONFIG RESETSTAT, most time first: "name calls
# usec_per_call" (a script's own commands are counted both alone and in the script's time).
redis_top() {
  cl_redis_cli INFO commandstats | tr -d '\r' |
    sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),usec=\([0-9]*\),usec_per_call=\([0-9.]*\).*/\3 \1 \2 \4/p' |
    sort -rn | head -n 8 | awk '{ printf "%s %s %s\n", $2, $3, $4 }'
}

# agent_counters I: "commands bytes_out bytes_in" of agent I's Redis client.
agent_counters() {
  printf '%s %s %s\n' "$(cl_metric "$1" blobswarm_redis_commands_total)" \
    "$(cl_metric "$1" blobswarm_redis_bytes_total 'dir="out"')" \
    "$(cl_metric "$1" blobswarm_redis_bytes_total 'dir="in"')"
}

# why_origin SYSTEM: one line on why bytes came from the origin in the last load: the agents'
# origin fetches by reason and lease waits by outcome (summed over nodes 1..N), and what the
# shims report (chunks their agent served, miss answers: ranges the shim read itself).
why_origin() {
  local i m="" served miss
  for ((i = 1; i <= NODES; i++)); do
    m+="$(curl -fsS --max-time 10 "$(cl_agent_http "$i")/metrics" || true)"$'\n'
  done
  served=$(cat "$WORK/load.$1".*.log | sed -n 's/.* \([0-9][0-9]*\) chunk(s) served by the agent.*/\1/p' |
    awk '{ s += $1 } END { print s + 0 }')
  miss=$(cat "$WORK/load.$1".*.log | sed -n 's/.* \([0-9][0-9]*\) miss answer(s).*/\1/p' |
    awk '{ s += $1 } END { print s + 0 }')
  awk -v served="$served" -v miss="$miss" '
    /^blobswarm_agent_origin_fetches_total\{/ || /^blobswarm_lease_waits_total\{/ {
      split($1, p, "\""); key = ($1 ~ /^blobswarm_lease/ ? "lease wait " : "origin fetch ") p[2]
      sum[key] += $2
    }
    END {
      out = ""
      for (k in sum) if (sum[k] > 0) out = out sprintf("%s %d; ", k, sum[k])
      printf "%sshims: %d chunk(s) served by their agent, %d miss answer(s)\n", out, served, miss
    }' <<<"$m"
}

# start_agent I: agent I with the bench's settings.
start_agent() {
  # shellcheck disable=SC2086 # AGENT_ENV: VAR=VALUE words
  cl_agent_start "$1" $AGENT_ENV || die "agent $1 did not start"
}

# Redis figures of the blobswarm load (RX_*), per GiB each node loaded:
#   RX_AGENT_CMDS/_MAX/_BYTES  commands (round trips: a pipeline counts each command) and
#                              bytes both ways, from the agents' blobswarm_redis_* counters
#                              (mean and largest over the nodes)
#   RX_SRV_CMDS, RX_SRV_BYTES  the server's count (total_commands_processed: the commands a
#                              script runs count too) and its network bytes
#   RX_CPU_S_GIB               redis-server CPU seconds, less what it spends idle (timers,
#                              heartbeats: the rate of a quiet window after the load)
#   RX_CPU_US, RX_IDLE_CMDS, RX_IDLE_CPU   CPU per server command; commands per node per
#                              second and CPU share while nobody loads
RX_AGENT_CMDS=""
run_blobswarm() {
  local i r0 r1 q0 q1 a1 t0 wall gib per_node="" srcs=""
  local -a before=()
  log "blobswarm: Redis and an agent per node"
  cl_redis || die "cl_redis failed"
  cl_secret || die "cl_secret failed"
  for ((i = 1; i <= NODES; i++)); do start_agent "$i"; done
  CL_LOAD_ENV=()
  for ((i = 1; i <= NODES; i++)); do before[i]=$(agent_counters "$i"); done
  cl_redis_cli CONFIG RESETSTAT >/dev/null || die "cannot reset Redis' statistics"
  r0=$(redis_info)
  cl_origin_reset
  t0=$(date +%s.%N)
  cluster_load blobswarm
  wall=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.3f", a - b }')
  r1=$(redis_info)
  redis_top >"$WORK/redis_top"
  gib=$(awk -v s="$SIZE" 'BEGIN { printf "%.6f", s / 1073741824 }')
  for ((i = 1; i <= NODES; i++)); do
    a1=$(agent_counters "$i")
    per_node+="${before[i]} $a1"$'\n'
    srcs+="$(printf '%s %s %s %s %s' "$i" \
      "$(cl_metric "$i" blobswarm_agent_served_bytes_total 'source="local"')" \
      "$(cl_metric "$i" blobswarm_agent_served_bytes_total 'source="peer"')" \
      "$(cl_metric "$i" blobswarm_agent_served_bytes_total 'source="origin"')" \
      "$(cl_metric "$i" blobswarm_agent_origin_bytes_total)")"$'\n'
  done
  printf '%s' "$srcs" >"$WORK/sources"
  why_origin blobswarm >"$WORK/why"
  # Background work while nobody loads (heartbeats, Redis' own timers).
  q0=$(redis_info)
  sleep "$IDLE_S"
  q1=$(redis_info)
  read -r RX_AGENT_CMDS RX_AGENT_CMDS_MAX RX_AGENT_BYTES RX_SRV_CMDS RX_SRV_BYTES RX_CPU_S_GIB \
    RX_CPU_US RX_IDLE_CMDS RX_IDLE_CPU RX_SRV_TOTAL RX_CPU_S RX_USER_S < <(
    awk -v pn="$per_node" -v r0="$r0" -v r1="$r1" -v q0="$q0" -v q1="$q1" -v hz="$CPU_HZ" \
      -v n="$NODES" -v g="$gib" -v wall="$wall" -v idle="$IDLE_S" 'BEGIN {
      m = split(pn, rows, "\n"); k = 0
      for (r = 1; r <= m; r++) {
        if (split(rows[r], f, " ") < 6) continue
        c = (f[4] - f[1]) / g; c_sum += c; if (c > c_max) c_max = c
        b_sum += (f[5] - f[2] + f[6] - f[3]) / g; k++
      }
      split(r0, x, " "); split(r1, y, " "); split(q0, p, " "); split(q1, q, " ")
      cmds = y[1] - x[1] - 1                        # less the first INFO
      cpu = (y[2] - x[2]) / hz
      idle_cmds = (q[1] - p[1] - 1) / n / idle
      idle_cpu = (q[2] - p[2]) / hz / idle           # share of one core
      cpu_load = cpu - idle_cpu * wall; if (cpu_load < 0) cpu_load = 0
      printf "%.1f %.1f %.0f %.1f %.0f %.4f %.2f %.2f %.4f %d %.2f %.2f\n",
        (k ? c_sum / k : 0), c_max, (k ? b_sum / k : 0), cmds / n / g,
        (y[3] - x[3] + y[4] - x[4]) / n / g, cpu_load / n / g,
        (cmds > 0 ? cpu_load * 1e6 / cmds : 0), idle_cmds, idle_cpu, cmds, cpu, (y[5] - x[5]) / hz
    }')
  [ "$RX_SRV_TOTAL" -ge 1000 ] ||
    log "note: only $RX_SRV_TOTAL Redis commands: its CPU figures are coarse (1/$CPU_HZ s clock)"
  local top
  top=$(awk '{ printf "%s{\"cmd\":\"%s\",\"calls\":%s,\"usec_per_call\":%s}", (NR > 1 ? "," : ""), $1, $2, $3 }' "$WORK/redis_top")
  REDIS_JSON=$(printf '{"agent_cmds_per_gib_node":%s,"agent_cmds_per_gib_node_max":%s,"agent_bytes_per_gib_node":%s,"server_cmds":%s,"server_cmds_per_gib_node":%s,"server_bytes_per_gib_node":%s,"server_cpu_s":%s,"server_user_cpu_s":%s,"cpu_s_per_gib_node":%s,"cpu_us_per_cmd":%s,"idle_cmds_per_node_s":%s,"idle_cpu_share":%s,"top":[%s]}' \
    "$RX_AGENT_CMDS" "$RX_AGENT_CMDS_MAX" "$RX_AGENT_BYTES" "$RX_SRV_TOTAL" "$RX_SRV_CMDS" \
    "$RX_SRV_BYTES" "$RX_CPU_S" "$RX_USER_S" "$RX_CPU_S_GIB" "$RX_CPU_US" "$RX_IDLE_CMDS" "$RX_IDLE_CPU" "$top")
  report_system blobswarm ",\"redis\":$REDIS_JSON"
}

# ---- warm from peer --------------------------------------------------------------------------
run_warm() {
  local f=$((NODES + 1)) secs mibs ratio ob peer origin
  log "warm-from-peer: node $f (empty store) loads while nodes 1..$NODES hold the model"
  start_agent "$f"
  CL_LOAD_ENV=()
  cl_origin_reset
  cl_load "$f" --container "$CONTAINER" --blob "$BLOB" --size "$SIZE" --threads "$THREADS" \
    --chunk-bytes "$PIECE" --sha256 "$SHA" --json ||
    die "warm-from-peer load failed: $(tail -n 5 "$CL_DIR/n$f/load.log")"
  cp "$CL_DIR/n$f/load.log" "$WORK/load.warm.log"
  secs=$(sed -n 's/^{.*"seconds":\([0-9.]*\).*"verified":true.*/\1/p' "$CL_DIR/n$f/load.log" | head -n1)
  [ -n "$secs" ] || die "warm-from-peer: no verified read"
  ob=$(cl_origin_bytes)
  peer=$(cl_metric "$f" blobswarm_agent_served_bytes_total 'source="peer"')
  origin=$(cl_metric "$f" blobswarm_agent_served_bytes_total 'source="origin"')
  mibs=$(awk -v s="$SIZE" -v t="$secs" 'BEGIN { printf "%.2f", s / 1048576 / t }')
  ratio=$(awk -v m="$mibs" -v l="$MIB_S_NODE" 'BEGIN { printf "%.2f", m / l }')
  WARM_LINE=$(printf 'warm-from-peer: %.1f s, %s MiB/s = %sx the %s MiB/s link; agent served %s peer, %s origin; origin sent %s' \
    "$secs" "$mibs" "$ratio" "$MIB_S_NODE" "$(human "$peer")" "$(human "$origin")" "$(human "$ob")")
  log "$WARM_LINE"
  printf 'RESULT {"bench":"cluster","case":"warm_from_peer","model_bytes":%d,"node_mbit":%d,"seconds":%s,"mib_per_s":%s,"link_mib_per_s":%s,"ratio":%s,"goal":0.9,"peer_bytes":%d,"agent_origin_bytes":%d,"origin_bytes":%d,"load":"%s"}\n' \
    "$SIZE" "$NODE_MBIT" "$secs" "$mibs" "$MIB_S_NODE" "$ratio" "$peer" "$origin" "$ob" "$(loadavg)"
}

human() { awk -v b="$1" 'BEGIN { if (b >= 1073741824) printf "%.2f GiB", b / 1073741824; else printf "%.1f MiB", b / 1048576 }'; }

# ---- Redis at full rate ---------------------------------------------------------------------
# During the load Redis sees a few hundred commands a second, each round trip its own wakeup:
# its CPU per command is mostly that fixed cost, which a busy Redis spreads over many
# commands. redis_calibrate measures the same redis-server at saturation, on a stand-in: 8
# clients calling a Lua script of 5 ZADD and a PEXPIRE on random keys of an otherwise unused
# database (CAL_DB, flushed after), like the index's scripts, 7 server commands per call. Sets
# RX_CAL_US (CPU per server command) and RX_CAL_RATE (server commands per second).
CAL_DB=15
CAL_CALLS=40000
RX_CAL_US=""
redis_calibrate() {
  command -v redis-benchmark >/dev/null || { log "note: no redis-benchmark: no full-rate figure"; return 0; }
  local sha r0 r1 t0 t1
  sha=$(cl_redis_cli SCRIPT LOAD 'for i = 1, 5 do redis.call("ZADD", KEYS[1], i, ARGV[1] .. i) end
    redis.call("PEXPIRE", KEYS[1], 60000) return 1') || { log "note: SCRIPT LOAD failed"; return 0; }
  r0=$(redis_info)
  t0=$(date +%s.%N)
  timeout "$STEP_TIMEOUT" redis-benchmark -h "$CL_NET.1" -p "$CL_REDIS_PORT" --dbnum "$CAL_DB" \
    -c 8 -n "$CAL_CALLS" -q evalsha "$sha" 1 'bsbench:{__rand_int__}' m >/dev/null 2>&1 ||
    { log "note: redis-benchmark failed: no full-rate figure"; return 0; }
  t1=$(date +%s.%N)
  r1=$(redis_info)
  cl_redis_cli -n "$CAL_DB" FLUSHDB >/dev/null || true
  read -r RX_CAL_US RX_CAL_RATE < <(awk -v a="$r0" -v b="$r1" -v hz="$CPU_HZ" -v t0="$t0" -v t1="$t1" \
    'BEGIN { split(a, x, " "); split(b, y, " "); c = y[1] - x[1] - 1
      printf "%.2f %.0f\n", (c > 0 ? (y[2] - x[2]) / hz * 1e6 / c : 0), c / (t1 - t0) }')
  log "Redis at full rate (stand-in script): $RX_CAL_US us CPU per server command, $RX_CAL_RATE server commands/s"
}

# ---- Redis extrapolation ---------------------------------------------------------------------
# Linear in nodes x GiB: the measured commands, bytes and redis-server CPU per GiB per node
# (CPU less the idle rate), times X_NODES x the model. The ideal time is the cluster's:
# max(model / node link, model / origin). Shards: cores / X_REDIS_UTIL, rounded up (one Redis
# shard is one core; Redis Cluster spreads blob versions by their hash tag).
extrapolate() {
  [ -n "$RX_AGENT_CMDS" ] || return 0
  local g per_gib="$RX_AGENT_CMDS" bytes="$RX_AGENT_BYTES"
  if awk -v c="$per_gib" 'BEGIN { exit !(c == 0) }'; then # agents without the counters
    per_gib=$RX_SRV_CMDS
    bytes=$RX_SRV_BYTES
  fi
  echo ""
  printf 'Redis at scale: %s nodes loading a %s GB model at once, origin %s Gbit/s, a shard at most %s busy\n' \
    "$X_NODES" "$X_MODEL_GB" "$X_ORIGIN_GBIT" "$X_REDIS_UTIL"
  printf '  measured here, per GiB per node: %s agent commands (%s bytes), %s server commands,\n' \
    "$per_gib" "$bytes" "$RX_SRV_CMDS"
  printf '  %s s redis-server CPU (%s us per server command); idle: %s commands per node per second\n' \
    "$RX_CPU_S_GIB" "$RX_CPU_US" "$RX_IDLE_CMDS"
  local cal="${RX_CAL_US:-0}"
  [ "$cal" = 0 ] ||
    printf '  at full rate (stand-in script): %s us per server command: CPU, cores and shards in [ ]\n' "$cal"
  printf '  %-11s %7s %10s %10s %16s %10s %14s %13s\n' "node link" "ideal" "agent cmds" \
    "server cmds" "Redis CPU" "Redis net" "cores" "shards"
  : >"$WORK/xresults"
  for g in $X_NODE_GBIT; do
    awk -v n="$X_NODES" -v gb="$X_MODEL_GB" -v lg="$g" -v og="$X_ORIGIN_GBIT" -v c="$per_gib" \
      -v sc="$RX_SRV_CMDS" -v cpu_gib="$RX_CPU_S_GIB" -v u="$X_REDIS_UTIL" -v by="$bytes" \
      -v sby="$RX_SRV_BYTES" -v cal="$cal" -v out="$WORK/xresults" '
      function up(x) { x = (x == int(x) ? x : int(x) + 1); return (x < 1 ? 1 : x) }
      BEGIN {
        a = gb * 8 / lg; b = gb * 8 / og; ideal = (a > b ? a : b)
        gib = n * gb * 1e9 / 1073741824                # GiB loaded, all nodes together
        cmds = gib * c; scmds = gib * sc; cpu = gib * cpu_gib
        cores = cpu / ideal; shards = up(cores / u)
        fcpu = scmds * cal / 1e6; fcores = fcpu / ideal; fshards = up(fcores / u)
        gbit = gib * sby * 8 / ideal / 1e9
        if (cal > 0)
          printf "  %-11s %6.1fs %10.3g %10.3g %7.0fs [%5.0fs] %5.2f Gb/s %6.1f [%5.1f] %5d [%4d]\n", lg " Gbit/s", ideal, cmds, scmds, cpu, fcpu, gbit, cores, fcores, shards, fshards
        else
          printf "  %-11s %6.1fs %10.3g %10.3g %7.0fs %8s %5.2f Gb/s %6.1f %7s %5d\n", lg " Gbit/s", ideal, cmds, scmds, cpu, "", gbit, cores, "", shards
        printf "RESULT {\"bench\":\"cluster\",\"case\":\"redis_extrapolation\",\"nodes\":%d,\"model_gb\":%d,\"node_gbit\":%d,\"origin_gbit\":%d,\"ideal_s\":%.2f,\"agent_commands\":%.0f,\"server_commands\":%.0f,\"redis_bytes\":%.0f,\"redis_gbit_per_s\":%.3f,\"redis_cpu_s\":%.1f,\"redis_cores\":%.2f,\"shards\":%d,\"full_rate_us_per_cmd\":%s,\"full_rate_cpu_s\":%.1f,\"full_rate_cores\":%.2f,\"full_rate_shards\":%d,\"redis_util\":%s}\n", \
          n, gb, lg, og, ideal, cmds, scmds, gib * sby, gbit, cpu, cores, shards, cal, fcpu, fcores, fshards, u >> out
      }'
  done
  cat "$WORK/xresults"
}

# ---- plot ---------------------------------------------------------------------------------------
plot() {
  [ -n "$DATA" ] || return 0
  local sys first=1
  mkdir -p "$(dirname "$DATA")"
  {
    echo "# bench/cluster.sh: per-node completion, seconds from the common start ($(date -u +%FT%TZ))"
    echo "# $NODES nodes, model $SIZE bytes, node links $NODE_MBIT Mbit/s, origin $ORIGIN_MBIT Mbit/s, ideal $IDEAL_S s"
    echo "# one block per system: seconds, fraction of nodes done"
    for sys in $SYSTEMS; do
      grep -q "^$sys " "$WORK/times" || continue
      [ "$first" -eq 1 ] || printf '\n\n'
      first=0
      echo "# $sys"
      awk -v s="$sys" '$1 == s { print $3 }' "$WORK/times" | sort -g |
        awk -v n="$NODES" 'BEGIN { print "0 0" } { printf "%s %.4f\n", $1, NR / n }'
    done
  } >"$DATA"
  log "wrote $DATA"
  [ -n "$PLOT" ] || return 0
  local -a titles=()
  for sys in $SYSTEMS; do
    grep -q "^$sys " "$WORK/times" || continue
    case "$sys" in
      nocache) titles+=("no cache (shim reads Azure)") ;;
      nginx) titles+=("nginx cache per node (slice $SLICE)") ;;
      blobswarm) titles+=("blobswarm (Redis + peers)") ;;
    esac
  done
  local cmd="" k
  for k in "${!titles[@]}"; do
    cmd+="${cmd:+, }'$DATA' index $k using 1:2 with steps lw 2 title '${titles[$k]}'"
  done
  timeout 60 gnuplot <<EOF || die "gnuplot failed"
set terminal pngcairo size 900,540 font ",11"
set output '$PLOT'
set title "Cold load of a $(human "$SIZE") model on $NODES nodes at once\\nnode links $NODE_MBIT Mbit/s, origin $ORIGIN_MBIT Mbit/s"
set xlabel 'seconds since all nodes started'
set ylabel 'nodes done (fraction)'
set yrange [0:1.05]
set xrange [0:*]
set key top left opaque box
set grid
set arrow from $IDEAL_S, graph 0 to $IDEAL_S, graph 1 nohead dt 2 lc rgb 'gray40'
set label 'ideal ${IDEAL_S}s' at $IDEAL_S, graph 0.5 offset 0.5,0 textcolor rgb 'gray40'
plot $cmd
EOF
  log "wrote $PLOT"
}

# ---- run ---------------------------------------------------------------------------------------
WARM_LINE=""
for s in $SYSTEMS; do "run_$s"; done
if [ "$WARM" = 1 ] && [[ " $SYSTEMS " == *" blobswarm "* ]]; then run_warm; fi

echo ""
echo "Cluster load: $NODES nodes at once, model $(human "$SIZE"), node links $NODE_MBIT Mbit/s, origin $ORIGIN_MBIT Mbit/s, ideal ${IDEAL_S}s"
printf '%-10s %11s %9s %9s %9s %9s %11s %11s %9s\n' system "origin" "x model" "first" "median" "last" "last/ideal" "bench cores" "machine"
printf '%s\n' "${SUMMARY[@]}"
if [ -s "$WORK/sources" ]; then
  echo ""
  echo "blobswarm: what each agent served (local store, peers, its own origin fills)"
  printf '  %-5s %12s %12s %12s %14s\n' node local peer origin "fetched origin"
  while read -r i l p o f; do
    printf '  %-5s %12s %12s %12s %14s\n' "$i" "$(human "$l")" "$(human "$p")" "$(human "$o")" "$(human "$f")"
  done <"$WORK/sources"
  echo "  why from the origin: $(cat "$WORK/why")"
fi
if [ -n "$RX_AGENT_CMDS" ]; then
  echo ""
  echo "Redis during the blobswarm load ($RX_SRV_TOTAL server commands, redis-server ${RX_CPU_S}s CPU, ${RX_USER_S}s of it user):"
  printf '  per GiB per node: %s agent commands (largest node %s), %s bytes; %s server commands, %s bytes\n' \
    "$RX_AGENT_CMDS" "$RX_AGENT_CMDS_MAX" "$RX_AGENT_BYTES" "$RX_SRV_CMDS" "$RX_SRV_BYTES"
  printf '  most time (INFO commandstats):'
  awk '{ printf " %s %s x %s us;", $1, $2, $3 }' "$WORK/redis_top"
  echo ""
  printf 'RESULT {"bench":"cluster","case":"redis","nodes":%d,"model_bytes":%d,"redis":%s}\n' "$NODES" "$SIZE" "$REDIS_JSON"
fi
[ -z "$WARM_LINE" ] || { echo ""; echo "$WARM_LINE"; }
[ -z "$RX_AGENT_CMDS" ] || redis_calibrate
extrapolate
plot
