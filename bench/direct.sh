#!/usr/bin/env bash
# bench/direct.sh: the shim reading one >= 1 GiB blob directly from the Blob API, against
# parallel ranged curl of the same blob, in the same run, alternating, on two links:
#   loopback  Azurite on 127.0.0.1, clients beside it
#   shaped    Azurite inside a network namespace behind a veth pair shaped with tc (rate,
#             and delay where the kernel has sch_netem); clients in the root namespace
# It prints the median MiB/s of each client and the ratio shim/curl per link. Until the shim
# and blobswarm-read are built it measures curl alone. Everything it starts or creates is
# torn down on exit. See bench/README.md for the knobs and how to read the numbers.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"

# ---- knobs (environment) ---------------------------------------------------------------
BUILD="${BUILD:-$ROOT/build}"
SIZE="${BENCH_SIZE:-1073741824}"           # blob size in bytes
RUNS="${BENCH_RUNS:-3}"                    # runs per client per link (median taken)
PARALLEL="${BENCH_PARALLEL:-8}"            # curl transfers in flight = blobswarm-read threads
CHUNK="${BENCH_CHUNK:-8388608}"            # curl range size = blob_read size
LINKS="${BENCH_LINKS:-loopback shaped}"
RATE="${BENCH_RATE:-2gbit}"                # shaped link rate, both directions
DELAY_MS="${BENCH_DELAY_MS:-2}"            # shaped link one-way delay (needs sch_netem)
NS="${BENCH_NS:-bsbench}"
NET="${BENCH_NET:-10.77.0}"                # /30: .1 root side, .2 inside the namespace
SHIM_AUTH="${BENCH_SHIM_AUTH:-anonymous}"  # anonymous (public container, like curl) | connstr
STEP_TIMEOUT="${BENCH_STEP_TIMEOUT:-600}"  # seconds, any one step
KEEP="${BENCH_KEEP:-0}"                    # 1: keep the work directory
SHIM_LIB="${BENCH_SHIM_LIB:-$BUILD/provider-shim/libblobswarm.so}"
READER="${BENCH_READER:-$BUILD/tools/blobswarm-read}"

ACCOUNT=devstoreaccount1
# Azurite's well-known development key (public, documented by Microsoft).
KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
CONTAINER=bench
BLOB=big.bin
HEADER_JSON_BYTES=1234                     # safetensors JSON header: tensor data starts unaligned
VETH_HOST=bsb0
VETH_NS=bsb1
AZURITE="$ROOT/node_modules/.bin/azurite-blob"
AZURITE_MAX_SECONDS=7200                   # Azurite dies by itself even if we are SIGKILLed

log() { printf '[direct %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
for v in SIZE RUNS PARALLEL CHUNK DELAY_MS STEP_TIMEOUT; do
  is_uint "${!v}" || die "BENCH_$v='${!v}' is not an unsigned integer"
done
{ [ "$RUNS" -ge 1 ] && [ "$RUNS" -le 20 ]; } || die "BENCH_RUNS must be 1..20"
{ [ "$PARALLEL" -ge 1 ] && [ "$PARALLEL" -le 256 ]; } || die "BENCH_PARALLEL must be 1..256"
[ "$CHUNK" -ge 1 ] || die "BENCH_CHUNK must be > 0"
[ "$SIZE" -gt $((8 + HEADER_JSON_BYTES)) ] || die "BENCH_SIZE is too small"
[ "$SIZE" -ge 1073741824 ] || log "note: BENCH_SIZE=$SIZE is below 1 GiB (a smoke run)"
# The namespace's addresses are the project's own test hosts: private ranges only.
[[ "$NET" =~ ^(10\.[0-9]{1,3}\.[0-9]{1,3}|192\.168\.[0-9]{1,3})$ ]] ||
  die "BENCH_NET must be the first three octets of a 10.x or 192.168.x /30"
case "$SHIM_AUTH" in anonymous|connstr) ;; *) die "BENCH_SHIM_AUTH must be anonymous or connstr" ;; esac

# Clients must reach Azurite directly, never through a proxy from the environment.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy

# ---- lifetime ---------------------------------------------------------------------------
WORK=""
AZ_PID=""
NS_CREATED=0
cleanup() {
  set +e
  stop_azurite
  if [ "$NS_CREATED" -eq 1 ]; then
    ip link del "$VETH_HOST" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
  fi
  if [ -n "$WORK" ] && [ "$KEEP" != 1 ]; then
    rm -rf "$WORK"
  elif [ -n "$WORK" ]; then
    log "kept $WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stop_azurite() {
  [ -n "$AZ_PID" ] || return 0
  kill "$AZ_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$AZ_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$AZ_PID" 2>/dev/null || true
  wait "$AZ_PID" 2>/dev/null || true
  AZ_PID=""
}

# start_azurite HOST [command prefix...]: starts Azurite on HOST with a free port over the
# shared data directory; sets AZ_PID and AZ_PORT.
start_azurite() {
  local host="$1"
  shift
  local alog="$WORK/azurite.log"
  : >"$alog"
  "$@" timeout -k 5 "$AZURITE_MAX_SECONDS" "$AZURITE" --blobHost "$host" --blobPort 0 \
    --location "$WORK/azurite" --silent --disableTelemetry --skipApiVersionCheck \
    >"$alog" 2>&1 &
  AZ_PID=$!
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

# ---- the blob ----------------------------------------------------------------------------
# Safetensors-shaped: u64 LE header length, a JSON header padded with spaces, then the body,
# so the shim sees the streamer's pattern (8 bytes, the header, then unaligned chunks).
make_blob() {
  local f="$1" body=$((SIZE - 8 - HEADER_JSON_BYTES)) json le="" i gen
  json="$(printf '{"__metadata__":{"format":"pt","source":"blobswarm bench"},"data":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}' "$body" "$body")"
  [ "${#json}" -le "$HEADER_JSON_BYTES" ] || die "header JSON longer than $HEADER_JSON_BYTES"
  for i in 0 1 2 3 4 5 6 7; do
    le+="$(printf '\\x%02x' $(((HEADER_JSON_BYTES >> (8 * i)) & 255)))"
  done
  {
    printf '%b' "$le"
    printf '%-*s' "$HEADER_JSON_BYTES" "$json"
  } >"$f"
  gen="$(find "$BUILD" -name bs-gendata -type f -perm -u+x 2>/dev/null | head -n 1 || true)"
  if [ -n "$gen" ] && timeout "$STEP_TIMEOUT" "$gen" --seed 7 --size "$body" >>"$f" 2>/dev/null &&
    [ "$(stat -c %s "$f")" -eq "$SIZE" ]; then
    log "blob body from $gen --seed 7"
  else
    truncate -s $((8 + HEADER_JSON_BYTES)) "$f"
    head -c "$body" /dev/urandom >>"$f"
    log "blob body from /dev/urandom"
  fi
  [ "$(stat -c %s "$f")" -eq "$SIZE" ] || die "generated blob has the wrong size"
}

# ---- clients -----------------------------------------------------------------------------
median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) exit 1; if (NR%2) print v[(NR+1)/2]; else printf "%.2f\n", (v[NR/2]+v[NR/2+1])/2}'; }

# curl_once URL: ranged GETs of CHUNK bytes over the whole blob, PARALLEL at a time, to /dev/null;
# prints MiB/s. Every range must come back 206 with exactly its bytes.
curl_once() {
  local url="$1" cfg="$WORK/curl.cfg" out="$WORK/curl.out" off end t0 t1 bad got
  : >"$cfg"
  for ((off = 0; off < SIZE; off += CHUNK)); do
    end=$((off + CHUNK - 1))
    [ "$end" -lt "$SIZE" ] || end=$((SIZE - 1))
    printf 'url = "%s"\nrange = "%d-%d"\noutput = "/dev/null"\n' "$url" "$off" "$end" >>"$cfg"
  done
  t0="$(date +%s.%N)"
  if ! timeout "$STEP_TIMEOUT" curl --no-progress-meter --fail --parallel --parallel-immediate \
    --parallel-max "$PARALLEL" -K "$cfg" -w '%{http_code} %{size_download}\n' >"$out" 2>"$out.err"; then
    die "curl failed: $(head -c 2000 "$out.err")"
  fi
  t1="$(date +%s.%N)"
  bad="$(awk '$1 != 206' "$out" | head -n 3)"
  [ -z "$bad" ] || die "curl: unexpected status: $bad"
  got="$(awk '{s += $2} END {printf "%d", s}' "$out")"
  [ "$got" -eq "$SIZE" ] || die "curl: $got bytes, expected $SIZE"
  awk -v b="$SIZE" -v a="$t0" -v z="$t1" 'BEGIN {printf "%.1f\n", b / (z - a) / 1048576}'
}

# shim_once HOST PORT: blobswarm-read through the shim, verified by SHA-256; prints MiB/s
# as blobswarm-read timed it (the reads only: not the load, not the verification).
shim_once() {
  local host="$1" port="$2" out="$WORK/shim.out" mibs
  local -a envs=(env -u AZURE_STORAGE_CONNECTION_STRING -u AZURE_STORAGE_ACCOUNT_NAME
    -u AZURE_STORAGE_ACCOUNT_KEY -u AZURE_STORAGE_SAS_TOKEN -u AZURE_CLIENT_ID
    -u AZURE_CLIENT_SECRET -u AZURE_TENANT_ID -u AZURE_FEDERATED_TOKEN_FILE
    -u IDENTITY_ENDPOINT -u IDENTITY_HEADER -u BLOBSWARM_READ_SIZE
    AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:9)
  if [ "$SHIM_AUTH" = connstr ]; then
    envs+=(AZURE_STORAGE_CONNECTION_STRING="$(conn_string "$host" "$port")")
  else
    envs+=(BLOBSWARM_BLOB_ENDPOINT="http://$host:$port/$ACCOUNT")
  fi
  if ! timeout "$STEP_TIMEOUT" "${envs[@]}" "$READER" --lib "$SHIM_LIB" --account "$ACCOUNT" \
    --container "$CONTAINER" --blob "$BLOB" --size "$SIZE" --threads "$PARALLEL" \
    --chunk-bytes "$CHUNK" --sha256 "$SHA" --json >"$out" 2>"$out.err"; then
    die "blobswarm-read failed: $(head -c 2000 "$out.err")"
  fi
  mibs="$(sed -n 's/.*"mib_per_s":\([0-9.]*\).*/\1/p' "$out" | tail -n 1)"
  [ -n "$mibs" ] || die "blobswarm-read printed no result: $(cat "$out" "$out.err")"
  printf '%s\n' "$mibs"
}

# bench_link NAME HOST PORT: RUNS alternating rounds of curl and shim; appends a result row.
RESULTS=()
bench_link() {
  local name="$1" host="$2" port="$3" url i c s cm sm ratio
  local -a cv=() sv=()
  url="http://$host:$port/$ACCOUNT/$CONTAINER/$BLOB"
  [ "$(curl -sS -o /dev/null -w '%{http_code}' -I "$url")" = 200 ] || die "$url is not readable"
  curl_once "$url" >/dev/null # warm-up: Azurite's file cache, curl's first connections
  for ((i = 1; i <= RUNS; i++)); do
    c="$(curl_once "$url")"
    cv+=("$c")
    if [ "$HAVE_SHIM" -eq 1 ]; then
      s="$(shim_once "$host" "$port")"
      sv+=("$s")
      log "$name run $i/$RUNS: curl $c MiB/s, shim $s MiB/s"
    else
      log "$name run $i/$RUNS: curl $c MiB/s"
    fi
  done
  cm="$(printf '%s\n' "${cv[@]}" | median)"
  sm="-"
  ratio="-"
  if [ "$HAVE_SHIM" -eq 1 ]; then
    sm="$(printf '%s\n' "${sv[@]}" | median)"
    ratio="$(awk -v s="$sm" -v c="$cm" 'BEGIN {printf "%.2f", s / c}')"
  fi
  RESULTS+=("$(printf '%-9s %-26s %10s %10s %9s' "$name" "$LINK_DESC" "$cm" "$sm" "$ratio")")
  printf 'RESULT {"bench":"direct","link":"%s","shaping":"%s","bytes":%d,"parallel":%d,"chunk_bytes":%d,"runs":%d,"curl_mib_per_s":%s,"shim_mib_per_s":%s,"ratio":%s}\n' \
    "$name" "$LINK_DESC" "$SIZE" "$PARALLEL" "$CHUNK" "$RUNS" "$cm" \
    "$([ "$sm" = - ] && echo null || echo "$sm")" "$([ "$ratio" = - ] && echo null || echo "$ratio")"
}

# ---- the shaped link ---------------------------------------------------------------------
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

# ---- main --------------------------------------------------------------------------------
command -v curl >/dev/null || die "needs curl"
command -v node >/dev/null || die "needs node"
if [ ! -x "$AZURITE" ]; then
  log "node_modules missing: npm ci"
  (cd "$ROOT" && timeout "$STEP_TIMEOUT" npm ci --no-audit --no-fund --loglevel=error)
fi
for link in $LINKS; do
  case "$link" in
    loopback) ;;
    shaped) preflight_namespace ;;
    *) die "unknown link '$link' in BENCH_LINKS (loopback, shaped)" ;;
  esac
done
HAVE_SHIM=0
if [ -f "$SHIM_LIB" ] && [ -x "$READER" ]; then
  HAVE_SHIM=1
  log "shim: $SHIM_LIB via $READER ($SHIM_AUTH)"
else
  log "shim not built ($SHIM_LIB, $READER): stand-in run, curl only"
fi

WORK="$(mktemp -d /tmp/bsbench.XXXXXX)"
mkdir -p "$WORK/azurite"
log "generating a $SIZE-byte blob"
make_blob "$WORK/blob.bin"
SHA="$(sha256sum "$WORK/blob.bin" | cut -d' ' -f1)"

start_azurite 127.0.0.1
CONN="$(conn_string 127.0.0.1 "$AZ_PORT")"
log "uploading to $CONTAINER/$BLOB"
timeout "$STEP_TIMEOUT" node "$ROOT/tests/tools/azfixture.mjs" container --conn "$CONN" \
  --container "$CONTAINER" --public
timeout "$STEP_TIMEOUT" node "$ROOT/tests/tools/azfixture.mjs" upload --conn "$CONN" \
  --container "$CONTAINER" --blob "$BLOB" --file "$WORK/blob.bin" >/dev/null
rm -f "$WORK/blob.bin" # Azurite has its own copy

for link in $LINKS; do
  case "$link" in
    loopback)
      [ -n "$AZ_PID" ] || start_azurite 127.0.0.1
      LINK_DESC="loopback"
      bench_link loopback 127.0.0.1 "$AZ_PORT"
      ;;
    shaped)
      stop_azurite # the same data directory, served from inside the namespace
      setup_namespace
      start_azurite "$NET.2" ip netns exec "$NS"
      bench_link shaped "$NET.2" "$AZ_PORT"
      stop_azurite
      ;;
  esac
done

printf '\nbench/direct: %d-byte blob, %d parallel, %d-byte ranges, median of %d (MiB/s)\n' \
  "$SIZE" "$PARALLEL" "$CHUNK" "$RUNS"
printf '%-9s %-26s %10s %10s %9s\n' link shaping curl shim shim/curl
printf '%s\n' "${RESULTS[@]}"
[ "$HAVE_SHIM" -eq 1 ] || printf '(shim not built: curl only)\n'
