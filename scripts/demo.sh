#!/usr/bin/env bash
# The blobswarm demo (`make demo`): a three-node cluster on this machine, nothing leaves
# 127.0.0.1 and nothing needs root. Starts Azurite (in memory) behind a counting proxy (the
# "origin": every byte any agent or shim reads from Azure crosses it), Redis, and three node
# agents that share chunks with each other (each its own store, Unix socket, node API and
# peer port). Uploads a synthetic safetensors model, loads it on all three nodes at once
# through the shim with blobswarm-read (which loads libblobswarm.so exactly as the model
# streamer does), and prints how many bytes came from the origin against the model's size,
# and where each node's bytes came from according to its agent's metrics. Stops everything
# and deletes the temporary directory when it ends, whatever happens.
#
# Settings (environment):
#   DEMO_MODEL_MB   size of the synthetic model in MiB, 16..8192 (default 512)
#   DEMO_KEEP=1     keep everything running after the loads until Ctrl-C (at most
#                   DEMO_KEEP_S seconds, default 3600), to look at /metrics
#   BUILD           the CMake build directory (default: build)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
BUILD=${BUILD:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
readonly BUILD
readonly MODEL_MB=${DEMO_MODEL_MB:-512}
readonly KEEP=${DEMO_KEEP:-0}
readonly KEEP_S=${DEMO_KEEP_S:-3600}
readonly ACCOUNT=devstoreaccount1
# Azurite's well-known development account key (public, documented by Microsoft).
readonly ACCOUNT_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
readonly CONTAINER=models
readonly BLOB=demo/model.safetensors
readonly SEED=7
readonly NODES=3
readonly START_S=30 # bounded waits, seconds
readonly LOAD_S=600

readonly AGENT=$BUILD/agent/blobswarm-agent
readonly SHIM=$BUILD/provider-shim/libblobswarm.so
readonly READER=$BUILD/tools/blobswarm-read
readonly GENDATA=$BUILD/tests/bs-gendata
readonly AZURITE_MAIN=$ROOT/node_modules/azurite/dist/src/blob/main.js
readonly AZFIXTURE=$ROOT/tests/tools/azfixture.mjs
readonly PROXY=$ROOT/tests/tools/faultproxy.mjs

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' D=$'\e[2m' N=$'\e[0m'; else B='' G='' R='' D='' N=''; fi
W=""
AZURITE_PID=""
PROXY_PID=""
REDIS_PID=""
AGENT_PIDS=()
LOAD_PIDS=()

say() { printf '%s\n' "$*"; }
step() { printf '  %s%-44s%s ' "$B" "$1" "$N"; }
done_() { printf '%s%s%s\n' "$G" "$*" "$N"; }

die() {
  printf '\n%sdemo: FAILED: %s%s\n' "$R" "$*" "$N" >&2
  local f
  for f in "$W"/azurite.log "$W"/proxy.log "$W"/redis.log "$W"/agent*.log "$W"/*.out; do
    if [ -z "$W" ] || [ ! -s "$f" ]; then continue; fi
    printf '%s----- %s (last 15 lines) -----%s\n' "$D" "${f##*/}" "$N" >&2
    tail -n 15 "$f" >&2
  done
  exit 1
}

# alive PID: see scripts/proc.sh
# shellcheck source=scripts/proc.sh
. "$ROOT/scripts/proc.sh"

stop_pid() {
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${LOAD_PIDS[@]}" "${AGENT_PIDS[@]}"; do stop_pid "$p"; done
  stop_pid "$REDIS_PID"
  stop_pid "$PROXY_PID"
  stop_pid "$AZURITE_PID"
  [ -n "$W" ] && { chattr -R -i "$W" 2>/dev/null || true; } # immutable chunk files
  [ -n "$W" ] && rm -rf "$W"
  [ "$rc" -eq 0 ] && say "  ${D}stopped the agents, Redis, the proxy and Azurite, removed the temporary directory${N}"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------
for f in "$AGENT" "$SHIM" "$READER" "$GENDATA"; do
  [ -e "$f" ] || die "$f is missing: build first (make build, or make demo which does it)"
done
[ -f "$AZURITE_MAIN" ] || die "Azurite is not installed in node_modules: run make setup"
for c in node curl sha256sum awk redis-server redis-cli; do
  command -v "$c" >/dev/null || die "$c not found: run make setup"
done
if ! [[ $MODEL_MB =~ ^[0-9]+$ ]] || ((MODEL_MB < 16 || MODEL_MB > 8192)); then
  die "DEMO_MODEL_MB must be a whole number of MiB in 16..8192, got '$MODEL_MB'"
fi

# Nothing of the caller's Azure or blobswarm settings may leak into this demo.
for v in $(compgen -e); do
  case $v in
    AZURE_* | MSI_* | IDENTITY_* | IMDS_* | BLOBSWARM_*) unset "$v" ;;
    http_proxy | https_proxy | HTTP_PROXY | HTTPS_PROXY | ALL_PROXY | all_proxy) unset "$v" ;;
  esac
done

W=$(mktemp -d "${TMPDIR:-/tmp}/blobswarm-demo.XXXXXX")
# The model, the store and Azurite's memory all hold the model: ask for room up front.
avail_mb=$(df -Pm "$W" | awk 'NR == 2 { print $4 }')
# (Azurite's copy is in memory; each of the three stores holds the whole model.)
[ "$avail_mb" -ge $((MODEL_MB * (NODES + 1) + 256)) ] ||
  die "$W has ${avail_mb} MiB free; the demo needs about $((MODEL_MB * (NODES + 1) + 256)) MiB (set DEMO_MODEL_MB lower)"

say ""
say "${B}blobswarm demo${N}: one model loaded on three nodes at once, the agents sharing chunks, all on 127.0.0.1"
say "  ${D}workdir $W${N}"
say ""

# ---------------------------------------------------------------------------------------
# Azurite and the origin proxy
# ---------------------------------------------------------------------------------------
step "[1/6] Azurite (in memory) behind a counting proxy"
mkdir -p "$W/azurite"
(cd "$W/azurite" && exec node "$AZURITE_MAIN" --blobHost 127.0.0.1 --blobPort 0 \
  --inMemoryPersistence --disableTelemetry --silent --skipApiVersionCheck </dev/null >"$W/azurite.log" 2>&1) &
AZURITE_PID=$!
az_url=""
for ((i = 0; i < START_S * 10; i++)); do
  az_url=$(grep -m1 -oE 'http://127\.0\.0\.1:[0-9]+' "$W/azurite.log" 2>/dev/null || true)
  [ -n "$az_url" ] && break
  alive "$AZURITE_PID" || die "Azurite exited during start-up"
  sleep 0.1
done
[ -n "$az_url" ] || die "Azurite did not start within ${START_S}s"
# The uploads go to Azurite itself; every read (agents' fills, shims' own reads) goes through
# the proxy, which counts the bytes it forwards: the demo's "origin bytes".
readonly UPLOAD_CONN="DefaultEndpointsProtocol=http;AccountName=$ACCOUNT;AccountKey=$ACCOUNT_KEY;BlobEndpoint=$az_url/$ACCOUNT;"
: >"$W/proxy.log" # exists before the first look at it
node "$PROXY" --target "$az_url" --max-lifetime-s $((LOAD_S + KEEP_S + 600)) </dev/null >"$W/proxy.log" 2>&1 &
PROXY_PID=$!
proxy_port=""
for ((i = 0; i < START_S * 10; i++)); do
  proxy_port=$(sed -n 's/^listening \([0-9]*\)$/\1/p' "$W/proxy.log")
  [ -n "$proxy_port" ] && break
  alive "$PROXY_PID" || die "the origin proxy exited during start-up"
  sleep 0.1
done
[ -n "$proxy_port" ] || die "the origin proxy did not start within ${START_S}s"
readonly ORIGIN=http://127.0.0.1:$proxy_port
readonly ENDPOINT=$ORIGIN/$ACCOUNT
readonly CONN="DefaultEndpointsProtocol=http;AccountName=$ACCOUNT;AccountKey=$ACCOUNT_KEY;BlobEndpoint=$ENDPOINT;"
done_ "$ENDPOINT -> $az_url"

# free_ports N: N TCP ports of 127.0.0.1 free right now (held together while chosen).
free_ports() {
  node -e '
    const net = require("net"); const n = Number(process.argv[1]); const s = [];
    const next = () => {
      if (s.length === n) { console.log(s.map((x) => x.address().port).join(" ")); s.forEach((x) => x.close()); return; }
      const x = net.createServer(); x.listen(0, "127.0.0.1", () => { s.push(x); next(); });
    };
    next();' "$1"
}
read -r -a PORTS <<<"$(free_ports $((NODES + 1)))" || die "cannot find free ports on 127.0.0.1"
[ "${#PORTS[@]}" -eq $((NODES + 1)) ] || die "cannot find free ports on 127.0.0.1"

# ---------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------
step "[2/6] Redis (who holds which chunk)"
readonly REDIS_PORT=${PORTS[0]}
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --protected-mode yes \
  --dir "$W" --logfile "$W/redis.log" --daemonize no </dev/null >/dev/null 2>&1 &
REDIS_PID=$!
for ((i = 0; i < START_S * 10; i++)); do
  alive "$REDIS_PID" || die "redis-server exited during start-up"
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" PING 2>/dev/null | grep -q PONG && break
  sleep 0.1
done
redis-cli -h 127.0.0.1 -p "$REDIS_PORT" PING 2>/dev/null | grep -q PONG ||
  die "Redis did not answer within ${START_S}s"
readonly REDIS_URL=redis://127.0.0.1:$REDIS_PORT
done_ "$REDIS_URL"

# ---------------------------------------------------------------------------------------
# agents
# ---------------------------------------------------------------------------------------
step "[3/6] three node agents (blobswarm-agent)"
# The cluster secret: peers answer only requests signed with it.
(umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$W/cluster.secret")
# Read-ahead (fetch the rest of a blob once a reader asked for it) takes blobs up to a
# quarter of the budget; the store itself holds one model.
budget_mb=$((MODEL_MB * 4 + 64 > 1024 ? MODEL_MB * 4 + 64 : 1024))
for ((n = 1; n <= NODES; n++)); do
  BLOBSWARM_NODE_NAME=node$n BLOBSWARM_REDIS_URL=$REDIS_URL \
    BLOBSWARM_PEER_LISTEN=127.0.0.1:${PORTS[n]} BLOBSWARM_CLUSTER_SECRET_FILE=$W/cluster.secret \
    BLOBSWARM_READAHEAD=1 BLOBSWARM_LOG_LEVEL=warn \
    "$AGENT" --agent-socket="$W/agent$n.sock" --agent-listen=127.0.0.1:0 \
    --agent-port-file="$W/port$n" --store-dir="$W/store$n" --store-budget="${budget_mb}M" \
    --allowed-endpoints="$ENDPOINT" </dev/null >"$W/agent$n.log" 2>&1 &
  AGENT_PIDS[n]=$!
done
declare -a METRICS_URL=()
for ((n = 1; n <= NODES; n++)); do
  for ((i = 0; i < START_S * 10; i++)); do
    alive "${AGENT_PIDS[n]}" || die "agent $n exited during start-up"
    if [ -s "$W/port$n" ] && [ -S "$W/agent$n.sock" ]; then
      url=http://127.0.0.1:$(cat "$W/port$n")
      if curl -fsS --max-time 2 -o /dev/null "$url/readyz" 2>/dev/null; then
        METRICS_URL[n]=$url/metrics
        break
      fi
    fi
    sleep 0.1
  done
  [ -n "${METRICS_URL[n]:-}" ] || die "agent $n was not ready within ${START_S}s"
done
done_ "node1..3: sockets $W/agent{1,2,3}.sock, peers on :${PORTS[1]} :${PORTS[2]} :${PORTS[3]}"

# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------
# A safetensors file shaped like a small decoder: an 8-byte little-endian header length, a
# JSON header (F16 tensors, data_offsets into the data), then the tensor bytes, which here
# come from bs-gendata (deterministic, incompressible).
step "[4/6] synthetic model (safetensors)"
model=$W/model.safetensors
data_bytes=$(node - "$MODEL_MB" "$W/header.bin" <<'JS'
const fs = require('fs');
const [mb, out] = [Number(process.argv[2]), process.argv[3]];
const H = 1024, V = 4096, F16 = 2;
const layers = Math.max(1, Math.floor((mb - 16) / 8)); // 8 MiB a layer, 16 MiB embed + head
const header = { __metadata__: { format: 'pt', note: 'synthetic blobswarm demo model' } };
let off = 0;
const add = (name, shape) => {
  const n = shape.reduce((a, b) => a * b, 1) * F16;
  header[name] = { dtype: 'F16', shape, data_offsets: [off, off + n] };
  off += n;
};
add('model.embed_tokens.weight', [V, H]);
for (let i = 0; i < layers; i++) {
  add(`model.layers.${i}.input_layernorm.weight`, [H]);
  for (const p of ['q', 'k', 'v', 'o']) add(`model.layers.${i}.self_attn.${p}_proj.weight`, [H, H]);
  add(`model.layers.${i}.post_attention_layernorm.weight`, [H]);
}
add('model.norm.weight', [H]);
add('lm_head.weight', [V, H]);
let json = JSON.stringify(header);
json += ' '.repeat((8 - (json.length % 8)) % 8); // the data start 8-byte aligned
const len = Buffer.alloc(8);
len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
fs.writeFileSync(out, Buffer.concat([len, Buffer.from(json)]));
console.log(`${off} ${Object.keys(header).length - 1}`);
JS
) || die "could not write the safetensors header"
read -r data_bytes ntensors <<<"$data_bytes"
cp "$W/header.bin" "$model"
"$GENDATA" --seed "$SEED" --size "$data_bytes" >>"$model" || die "bs-gendata failed"
model_size=$(stat -c %s "$model")
model_sha=$(sha256sum "$model" | cut -d' ' -f1)
done_ "$(awk -v b="$model_size" 'BEGIN { printf "%.1f MiB", b / 1048576 }'), $ntensors tensors, sha256 ${model_sha:0:16}..."

step "[5/6] upload to Azurite"
t0=$(date +%s%N)
printf '%s\n' \
  "[\"container\",\"--conn\",\"$UPLOAD_CONN\",\"--container\",\"$CONTAINER\"]" \
  "[\"upload\",\"--conn\",\"$UPLOAD_CONN\",\"--container\",\"$CONTAINER\",\"--blob\",\"$BLOB\",\"--file\",\"$model\",\"--single-shot\"]" |
  timeout "$LOAD_S" node "$AZFIXTURE" batch >"$W/upload.out" 2>&1 ||
  die "the upload to Azurite failed"
rm -f "$model" # Azurite holds it now; the loads are checked against its SHA-256
done_ "az://$CONTAINER/$BLOB in $(awk -v t="$(($(date +%s%N) - t0))" 'BEGIN { printf "%.1f s", t / 1e9 }')"

# ---------------------------------------------------------------------------------------
# the cluster load
# ---------------------------------------------------------------------------------------
metric() { # FILE SERIES: the value, 0 when absent
  awk -v s="$2" '$1 == s { v = $2 } END { printf "%.0f\n", (v == "" ? 0 : v) }' "$1"
}
snapshot() { # NODE FILE
  curl -fsS --max-time 10 "${METRICS_URL[$1]}" >"$2" || die "cannot read ${METRICS_URL[$1]}"
}
delta() { # NODE SERIES: after - before
  echo $(($(metric "$W/m.$1.1" "$2") - $(metric "$W/m.$1.0" "$2")))
}
origin_bytes() {
  local s
  s=$(curl -fsS --max-time 10 "$ORIGIN/__stats") || die "cannot read the origin proxy's counters"
  sed -n 's/.*"bytesOut":\([0-9]*\).*/\1/p' <<<"$s"
}

human_bytes() {
  awk -v b="$1" 'BEGIN {
    if (b >= 1073741824) printf "%.2f GiB", b / 1073741824
    else if (b >= 1048576) printf "%.1f MiB", b / 1048576
    else if (b >= 1024) printf "%.1f KiB", b / 1024
    else printf "%d B", b }'
}
row() { printf '  %-6s %8s %12s   %10s %10s %10s %12s   %s\n' "$@"; } # the result table

step "[6/6] load on all three nodes at once (shim)"
curl -fsS --max-time 10 -X POST "$ORIGIN/__stats/reset" >/dev/null || die "cannot reset the origin proxy's counters"
for ((n = 1; n <= NODES; n++)); do snapshot "$n" "$W/m.$n.0"; done
t0=$(date +%s%N)
for ((n = 1; n <= NODES; n++)); do
  # The shim's credential: the account key, from a connection string as a user would set it.
  # The agent never sees the key: the shim hands it a read-only SAS for this one blob.
  AZURE_STORAGE_CONNECTION_STRING=$CONN \
    AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:9 \
    BLOBSWARM_AGENT=$W/agent$n.sock BLOBSWARM_AGENT_UID=$(id -u) BLOBSWARM_LOG_LEVEL=warn \
    timeout "$LOAD_S" "$READER" --lib "$SHIM" --container "$CONTAINER" --blob "$BLOB" \
    --size "$model_size" --sha256 "$model_sha" --json >"$W/load$n.json" 2>"$W/load$n.out" &
  LOAD_PIDS[n]=$!
done
for ((n = 1; n <= NODES; n++)); do
  wait "${LOAD_PIDS[n]}" || die "the load on node$n failed (blobswarm-read exited $?)"
  LOAD_PIDS[n]=""
  grep -q '"verified":true' "$W/load$n.json" || die "the load on node$n was not verified"
done
wall=$(awk -v t="$(($(date +%s%N) - t0))" 'BEGIN { printf "%.1f", t / 1e9 }')
for ((n = 1; n <= NODES; n++)); do snapshot "$n" "$W/m.$n.1"; done
from_origin=$(origin_bytes)
[ -n "$from_origin" ] || die "the origin proxy does not count bytes (tests/tools/faultproxy.mjs too old?)"
done_ "all three byte-exact (SHA-256 of the whole model) in ${wall} s"

readonly S_LOCAL='blobswarm_agent_served_bytes_total{source="local"}'
readonly S_PEER='blobswarm_agent_served_bytes_total{source="peer"}'
readonly S_ORIGIN='blobswarm_agent_served_bytes_total{source="origin"}'
readonly O_BYTES='blobswarm_agent_origin_bytes_total'
say ""
printf '%s' "$B"
row node time throughput "local" "peer" "origin" "shim->Azure" "agent fetched from Azure"
printf '%s' "$N"
row ---- ---- ---------- ----- ---- ------ ----------- ------------------------
for ((n = 1; n <= NODES; n++)); do
  secs=$(sed -n 's/.*"seconds":\([0-9.]*\).*/\1/p' "$W/load$n.json")
  mibs=$(sed -n 's/.*"mib_per_s":\([0-9.]*\).*/\1/p' "$W/load$n.json")
  l=$(delta "$n" "$S_LOCAL")
  p=$(delta "$n" "$S_PEER")
  o=$(delta "$n" "$S_ORIGIN")
  # What the agent did not serve, the shim read from Azure itself.
  own=$((model_size - l - p - o))
  ((own >= 0)) || own=0
  row "node$n" "$(printf '%.2f s' "$secs")" "$(printf '%.1f MiB/s' "$mibs")" "$(human_bytes "$l")" \
    "$(human_bytes "$p")" "$(human_bytes "$o")" "$(human_bytes "$own")" "$(human_bytes "$(delta "$n" "$O_BYTES")")"
done
ratio=$(awk -v o="$from_origin" -v m="$model_size" 'BEGIN { printf "%.2f", o / m }')
say ""
say "  ${B}Origin bytes${N} (counted by the proxy in front of Azurite): $(human_bytes "$from_origin")" \
  "= ${B}${ratio}x${N} the model ($(human_bytes "$model_size")), for $NODES nodes"
say "  ${D}local: from the node's own store; peer: from another agent; origin: filled from Azure by"
say "  the agent; shim->Azure: the rest of the model, read by the shim itself${N}"
say ""
say "  Metrics (Prometheus): ${B}${METRICS_URL[1]}${N} (node2, node3: ${METRICS_URL[2]#http://}, ${METRICS_URL[3]#http://})"
snapshot 1 "$W/m.final"
grep -E '^blobswarm_(agent_origin_fetches_total|peer_bytes_(in|out)_total|cluster_nodes|redis_commands_total|store_chunks )' \
  "$W/m.final" | sed 's/^/    node1 /'
say ""
[ "$KEEP" = 1 ] || say "  ${D}(DEMO_KEEP=1 keeps Azurite, Redis and the agents running after the load to explore it)${N}"

if [ "$KEEP" = 1 ]; then
  say "  DEMO_KEEP=1: Azurite, Redis and the agents keep running. Try:"
  say "    curl -s ${METRICS_URL[1]} | grep blobswarm_"
  say "    redis-cli -p $REDIS_PORT --scan | head"
  say "  Press Ctrl-C to stop and clean up (or wait $KEEP_S s)."
  for ((i = 0; i < KEEP_S; i++)); do
    for ((n = 1; n <= NODES; n++)); do alive "${AGENT_PIDS[n]}" || die "agent $n exited"; done
    sleep 1
  done
fi
