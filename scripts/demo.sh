#!/usr/bin/env bash
# The blobswarm demo (`make demo`): everything on this machine, nothing leaves 127.0.0.1.
# Starts Azurite (in memory) and a node agent in a temporary directory, uploads a synthetic
# safetensors model, loads it through the shim twice with blobswarm-read (which loads
# libblobswarm.so exactly as the model streamer does) -- cold, then warm -- and prints where
# the bytes came from according to the agent's metrics. Stops everything and deletes the
# temporary directory when it ends, whatever happens.
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
readonly START_S=30 # bounded waits, seconds
readonly LOAD_S=600

readonly AGENT=$BUILD/agent/blobswarm-agent
readonly SHIM=$BUILD/provider-shim/libblobswarm.so
readonly READER=$BUILD/tools/blobswarm-read
readonly GENDATA=$BUILD/tests/bs-gendata
readonly AZURITE_MAIN=$ROOT/node_modules/azurite/dist/src/blob/main.js
readonly AZFIXTURE=$ROOT/tests/tools/azfixture.mjs

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' D=$'\e[2m' N=$'\e[0m'; else B='' G='' R='' D='' N=''; fi
W=""
AZURITE_PID=""
AGENT_PID=""

say() { printf '%s\n' "$*"; }
step() { printf '  %s%-44s%s ' "$B" "$1" "$N"; }
done_() { printf '%s%s%s\n' "$G" "$*" "$N"; }

die() {
  printf '\n%sdemo: FAILED: %s%s\n' "$R" "$*" "$N" >&2
  local f
  for f in "$W"/azurite.log "$W"/agent.log "$W"/*.out; do
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
  stop_pid "$AGENT_PID"
  stop_pid "$AZURITE_PID"
  [ -n "$W" ] && { chattr -R -i "$W" 2>/dev/null || true; } # immutable chunk files
  [ -n "$W" ] && rm -rf "$W"
  [ "$rc" -eq 0 ] && say "  ${D}stopped the agent and Azurite, removed the temporary directory${N}"
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
for c in node curl sha256sum awk; do
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
[ "$avail_mb" -ge $((MODEL_MB * 2 + 256)) ] ||
  die "$W has ${avail_mb} MiB free; the demo needs about $((MODEL_MB * 2 + 256)) MiB (set DEMO_MODEL_MB lower)"

say ""
say "${B}blobswarm demo${N}: a model loaded through the shim and the node agent, all on 127.0.0.1"
say "  ${D}workdir $W${N}"
say ""

# ---------------------------------------------------------------------------------------
# Azurite
# ---------------------------------------------------------------------------------------
step "[1/5] Azurite (blob service, in memory)"
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
readonly ENDPOINT=$az_url/$ACCOUNT
readonly CONN="DefaultEndpointsProtocol=http;AccountName=$ACCOUNT;AccountKey=$ACCOUNT_KEY;BlobEndpoint=$ENDPOINT;"
done_ "$ENDPOINT"

# ---------------------------------------------------------------------------------------
# agent
# ---------------------------------------------------------------------------------------
step "[2/5] node agent (blobswarm-agent)"
budget_mb=$((MODEL_MB * 2 > 1024 ? MODEL_MB * 2 : 1024))
"$AGENT" --agent-socket="$W/agent.sock" --agent-listen=127.0.0.1:0 --agent-port-file="$W/port" \
  --store-dir="$W/store" --store-budget="${budget_mb}M" --allowed-endpoints="$ENDPOINT" \
  </dev/null >"$W/agent.log" 2>&1 &
AGENT_PID=$!
metrics_url=""
for ((i = 0; i < START_S * 10; i++)); do
  alive "$AGENT_PID" || die "the agent exited during start-up"
  if [ -s "$W/port" ] && [ -S "$W/agent.sock" ]; then
    agent_url=http://127.0.0.1:$(cat "$W/port")
    if curl -fsS --max-time 2 -o /dev/null "$agent_url/readyz" 2>/dev/null; then
      metrics_url=$agent_url/metrics
      break
    fi
  fi
  sleep 0.1
done
[ -n "$metrics_url" ] || die "the agent was not ready within ${START_S}s"
done_ "socket $W/agent.sock, HTTP $agent_url"

# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------
# A safetensors file shaped like a small decoder: an 8-byte little-endian header length, a
# JSON header (F16 tensors, data_offsets into the data), then the tensor bytes, which here
# come from bs-gendata (deterministic, incompressible).
step "[3/5] synthetic model (safetensors)"
model=$W/model.safetensors
data_bytes=$(node - "$MODEL_MB" "$W/header.bin" <<'EOF'
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
EOF
) || die "could not write the safetensors header"
read -r data_bytes ntensors <<<"$data_bytes"
cp "$W/header.bin" "$model"
"$GENDATA" --seed "$SEED" --size "$data_bytes" >>"$model" || die "bs-gendata failed"
model_size=$(stat -c %s "$model")
model_sha=$(sha256sum "$model" | cut -d' ' -f1)
done_ "$(awk -v b="$model_size" 'BEGIN { printf "%.1f MiB", b / 1048576 }'), $ntensors tensors, sha256 ${model_sha:0:16}..."

step "[4/5] upload to Azurite"
t0=$(date +%s%N)
printf '%s\n' \
  "[\"container\",\"--conn\",\"$CONN\",\"--container\",\"$CONTAINER\"]" \
  "[\"upload\",\"--conn\",\"$CONN\",\"--container\",\"$CONTAINER\",\"--blob\",\"$BLOB\",\"--file\",\"$model\",\"--single-shot\"]" |
  timeout "$LOAD_S" node "$AZFIXTURE" batch >"$W/upload.out" 2>&1 ||
  die "the upload to Azurite failed"
rm -f "$model" # Azurite holds it now; the loads are checked against its SHA-256
done_ "az://$CONTAINER/$BLOB in $(awk -v t="$(($(date +%s%N) - t0))" 'BEGIN { printf "%.1f s", t / 1e9 }')"

# ---------------------------------------------------------------------------------------
# loads
# ---------------------------------------------------------------------------------------
metric() { # FILE SERIES: the value, 0 when absent
  awk -v s="$2" '$1 == s { v = $2 } END { printf "%.0f\n", (v == "" ? 0 : v) }' "$1"
}
snapshot() { curl -fsS --max-time 10 "$metrics_url" >"$1" || die "cannot read $metrics_url"; }

readonly S_LOCAL='blobswarm_agent_served_bytes_total{source="local"}'
readonly S_ORIGIN='blobswarm_agent_served_bytes_total{source="origin"}'
readonly O_BYTES='blobswarm_agent_origin_bytes_total'
readonly REQ='blobswarm_agent_chunk_requests_total'
row() { printf '  %-5s  %-42s %9s %13s   %s\n' "$@"; } # the result table

human_bytes() {
  awk -v b="$1" 'BEGIN {
    if (b >= 1073741824) printf "%.2f GiB", b / 1073741824
    else if (b >= 1048576) printf "%.1f MiB", b / 1048576
    else if (b >= 1024) printf "%.1f KiB", b / 1024
    else printf "%d B", b }'
}

# load NAME: one whole-model read through the shim and the agent's Unix socket; appends a
# row to $W/rows.
load() {
  local name=$1 before=$W/m.$1.0 after=$W/m.$1.1 json
  snapshot "$before"
  # The shim's credential: the account key, from a connection string as a user would set it.
  # The agent never sees the key: the shim hands it a read-only SAS for this one blob.
  json=$(AZURE_STORAGE_CONNECTION_STRING=$CONN \
    AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:9 \
    BLOBSWARM_AGENT=$W/agent.sock BLOBSWARM_LOG_LEVEL=warn \
    timeout "$LOAD_S" "$READER" --lib "$SHIM" --container "$CONTAINER" --blob "$BLOB" \
    --size "$model_size" --sha256 "$model_sha" --json 2>"$W/$name.out") ||
    die "the $name load failed (blobswarm-read exited $?)"
  snapshot "$after"
  local secs mibs local_b origin_b fetched fallbacks src
  secs=$(sed -n 's/.*"seconds":\([0-9.]*\).*/\1/p' <<<"$json")
  mibs=$(sed -n 's/.*"mib_per_s":\([0-9.]*\).*/\1/p' <<<"$json")
  grep -q '"verified":true' <<<"$json" || die "the $name load was not verified: $json"
  local_b=$(($(metric "$after" "$S_LOCAL") - $(metric "$before" "$S_LOCAL")))
  origin_b=$(($(metric "$after" "$S_ORIGIN") - $(metric "$before" "$S_ORIGIN")))
  fetched=$(($(metric "$after" "$O_BYTES") - $(metric "$before" "$O_BYTES")))
  fallbacks=0
  for st in miss denied error; do
    fallbacks=$((fallbacks + $(metric "$after" "$REQ{status=\"$st\"}") - \
      $(metric "$before" "$REQ{status=\"$st\"}")))
  done
  if [ $((local_b + origin_b)) -eq 0 ]; then
    src="shim read Azure itself (agent served nothing)"
  else
    src=$(awk -v l="$local_b" -v o="$origin_b" 'BEGIN {
      pl = 100 * l / (l + o); po = 100 - pl
      if (po < 0.05) printf "100%% local store"
      else if (pl < 0.05) printf "100%% origin (agent fills)"
      else printf "%.0f%% local, %.0f%% origin", pl, po }')
    [ "$fallbacks" -eq 0 ] || src="$src, $fallbacks chunk(s) read by the shim from Azure"
  fi
  row "$name" "$src" "$(printf '%.2f s' "$secs")" "$(printf '%.1f MiB/s' "$mibs")" \
    "$(human_bytes "$fetched")" >>"$W/rows"
}

step "[5/5] load through the shim, cold then warm"
: >"$W/rows"
load cold
load warm
done_ "both loads byte-exact (SHA-256 of the whole model)"

say ""
printf '%s' "$B"
row load "bytes came from (agent metrics)" time throughput "fetched from Azure"
printf '%s' "$N"
row ---- ------------------------------- ---- ---------- ------------------
cat "$W/rows"
say ""
say "  Metrics (Prometheus): ${B}$metrics_url${N}"
snapshot "$W/m.final"
grep -E '^blobswarm_(agent_chunk_requests_total|agent_origin_fetches_total|agent_origin_bytes_total|store_bytes |store_chunks )' \
  "$W/m.final" | sed 's/^/    /'
say ""
[ "$KEEP" = 1 ] || say "  ${D}(DEMO_KEEP=1 keeps Azurite and the agent running after the loads to explore it)${N}"

if [ "$KEEP" = 1 ]; then
  say "  DEMO_KEEP=1: Azurite and the agent keep running. Try:"
  say "    curl -s $metrics_url | grep blobswarm_"
  say "  Press Ctrl-C to stop and clean up (or wait $KEEP_S s)."
  for ((i = 0; i < KEEP_S; i++)); do
    alive "$AGENT_PID" || die "the agent exited"
    sleep 1
  done
fi
