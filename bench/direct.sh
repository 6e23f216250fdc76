#!/usr/bin/env bash
# bench/direct.sh: the shim reading one >= 1 GiB blob directly from the Blob API, against
# parallel ranged curl of the same blob, in the same run, alternating, on two links:
#   loopback  Azurite on 127.0.0.1, clients beside it
#   shaped    Azurite inside a network namespace behind a veth pair shaped with tc (rate,
#             and delay where the kernel has sch_netem); clients in the root namespace
# It prints the median MiB/s of each client and the ratio shim/curl per link. Until the shim
# and blobswarm-read are built it measures curl alone. Everything it starts or creates is
# torn down on exit. See bench/README.md for the knobs and how to read the numbers.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH_NAME=direct
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"

# ---- knobs (environment; BUILD, SIZE, STEP_TIMEOUT, KEEP, SHIM_LIB, READER: lib.sh) -----
RUNS="${BENCH_RUNS:-3}"                    # runs per client per link (median taken)
PARALLEL="${BENCH_PARALLEL:-8}"            # curl transfers in flight = blobswarm-read threads
CHUNK="${BENCH_CHUNK:-8388608}"            # curl range size = blob_read size
LINKS="${BENCH_LINKS:-loopback shaped}"
SHIM_AUTH="${BENCH_SHIM_AUTH:-anonymous}"  # anonymous (public container, like curl) | connstr

shaped_knobs bsbench 10.77.0 bsb # namespace bsbench, 10.77.0.2 behind bsb0/bsb1

for v in SIZE RUNS PARALLEL CHUNK STEP_TIMEOUT; do
  is_uint "${!v}" || die "BENCH_$v='${!v}' is not an unsigned integer"
done
check_size_runs
{ [ "$PARALLEL" -ge 1 ] && [ "$PARALLEL" -le 256 ]; } || die "BENCH_PARALLEL must be 1..256"
[ "$CHUNK" -ge 1 ] || die "BENCH_CHUNK must be > 0"
case "$SHIM_AUTH" in anonymous|connstr) ;; *) die "BENCH_SHIM_AUTH must be anonymous or connstr" ;; esac

# ---- clients -----------------------------------------------------------------------------
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

# ---- main --------------------------------------------------------------------------------
need_tools
need_azurite
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
make_blob "$WORK/blob.bin" 7 "$(find "$BUILD" -name bs-gendata -type f -perm -u+x 2>/dev/null | head -n 1 || true)"
SHA="$(sha256sum "$WORK/blob.bin" | cut -d' ' -f1)"

AZURITE_STORE_ARGS=(--location "$WORK/azurite")
start_azurite 127.0.0.1
upload_blob "$WORK/blob.bin" --public
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
