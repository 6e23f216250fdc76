#!/usr/bin/env bash
# bench/agent.sh: the shim reading a >= 1 GiB blob through the node agent (Unix socket), each
# figure against a baseline measured in the same run, alternating:
#   warm   agent store full, page cache hot      vs  pread of a local copy (blobswarm-read
#                                                    --local-file), same threads and pieces
#   cold   agent store empty, fills from Azurite vs  the shim reading Azurite directly
#   cpu    reader + agent CPU seconds per GiB served warm (pread baseline for reference)
#   rss    agent VmHWM/VmRSS under 200 concurrent small reads, cold and warm
#   sweep  the agent's chunk grid (4M..32M) against 8 MiB and 32 MiB streamer reads
#   cold_shaped  cold vs direct again, Azurite in a network namespace behind a tc-shaped veth
#          link (as direct.sh's "shaped" link): agent fills and direct reads cross the link
# Everything it starts or creates is torn down on exit. See bench/README.md.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH_NAME=agent
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"

# ---- knobs (environment; BUILD, SIZE, STEP_TIMEOUT, KEEP, SHIM_LIB, READER: lib.sh) -----
RUNS="${BENCH_RUNS:-3}"                    # rounds (median taken) for cold, sweep and rss
WARM_RUNS="${BENCH_WARM_RUNS:-5}"          # rounds for warm vs pread (cheap, noisier)
THREADS="${BENCH_PARALLEL:-8}"             # blobswarm-read threads (the streamer's default)
PIECES="${BENCH_PIECES:-8388608 33554432}" # blob_read bytes per call (streamer chunk sizes)
CHUNKS="${BENCH_CHUNKS:-4M 8M 16M 32M}"    # agent grids swept (BLOBSWARM_CHUNK_BYTES)
DEFAULT_CHUNK="${BENCH_DEFAULT_CHUNK:-8M}" # the agent's default grid: warm/cold/cpu/rss use it
MANY_THREADS="${BENCH_MANY_THREADS:-200}"  # concurrent reads for the rss section
MANY_PIECE="${BENCH_MANY_PIECE:-1048576}"  # their blob_read bytes
SECTIONS="${BENCH_SECTIONS:-warm sweep rss cold_shaped}" # sweep includes cold; warm includes cpu
AGENT="${BENCH_AGENT:-$BUILD/agent/blobswarm-agent}"

AZURITE_STORE_ARGS=(--inMemoryPersistence)
shaped_knobs bsagent 10.77.1 bsa # cold_shaped: namespace bsagent, 10.77.1.2 behind bsa0/bsa1

for v in SIZE RUNS WARM_RUNS THREADS MANY_THREADS MANY_PIECE STEP_TIMEOUT; do
  is_uint "${!v}" || die "$v='${!v}' is not an unsigned integer"
done
check_size_runs
{ [ "$WARM_RUNS" -ge 1 ] && [ "$WARM_RUNS" -le 50 ]; } || die "BENCH_WARM_RUNS must be 1..50"
{ [ "$THREADS" -ge 1 ] && [ "$THREADS" -le 1024 ]; } || die "BENCH_PARALLEL must be 1..1024"
{ [ "$MANY_THREADS" -ge 1 ] && [ "$MANY_THREADS" -le 1024 ]; } ||
  die "BENCH_MANY_THREADS must be 1..1024"
for p in $PIECES; do { is_uint "$p" && [ "$p" -ge 1 ]; } || die "BENCH_PIECES: '$p' is not a byte count"; done
for c in $CHUNKS $DEFAULT_CHUNK; do
  [[ "$c" =~ ^[0-9]+[KMG]?$ ]] || die "BENCH_CHUNKS: '$c' is not a size (e.g. 8M)"
done
for s in $SECTIONS; do
  case "$s" in
    warm | sweep | rss) ;;
    cold_shaped) preflight_namespace ;;
    *) die "unknown section '$s' (warm, sweep, rss, cold_shaped)" ;;
  esac
done

# ---- lifetime (see lib.sh for the rest) ------------------------------------------------
AG_TPID="" # the timeout wrapping the agent
AG_PID=""  # the agent itself (for /proc)
cleanup_hook() { stop_agent; }

# start_agent CHUNK STORE_DIR: an agent with grid CHUNK over STORE_DIR (kept as it is: empty
# for a cold store, filled for a warm one). Sets AG_TPID, AG_PID, AG_PORT.
start_agent() {
  local chunk="$1" store="$2" alog="$WORK/agent.log"
  rm -f "$WORK/agent.sock" "$WORK/agent.port"
  mkdir -p "$store"
  BLOBSWARM_LOG_LEVEL=warn timeout -k 5 "$MAX_SECONDS" "$AGENT" \
    --agent-socket="$WORK/agent.sock" --agent-listen=127.0.0.1:0 \
    --agent-port-file="$WORK/agent.port" --store-dir="$store" --store-budget=4G \
    --allowed-endpoints="http://$AZ_HOST:*/$ACCOUNT" --chunk-bytes="$chunk" --drain-ms=0 \
    >>"$alog" 2>&1 &
  AG_TPID=$!
  AG_PID=""
  AG_PORT=""
  for _ in $(seq 1 300); do
    [ -n "$AG_PID" ] || AG_PID="$(cut -d' ' -f1 "/proc/$AG_TPID/task/$AG_TPID/children" 2>/dev/null || true)"
    [ -s "$WORK/agent.port" ] && [ -S "$WORK/agent.sock" ] && [ -n "$AG_PID" ] && break
    kill -0 "$AG_TPID" 2>/dev/null || die "agent exited: $(tail -n 20 "$alog")"
    sleep 0.1
  done
  { [ -s "$WORK/agent.port" ] && [ -n "$AG_PID" ]; } ||
    die "agent not ready within 30 s: $(tail -n 20 "$alog")"
  AG_PORT="$(cat "$WORK/agent.port")"
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$AG_PORT/readyz")" = 200 ] ||
    die "agent /readyz is not 200"
}

stop_agent() {
  stop_pid "$AG_TPID"
  AG_TPID=""
  AG_PID=""
}

# A fresh agent over an empty store.
fresh_agent() {
  stop_agent
  chattr -R -i "$WORK/store" 2>/dev/null || true # chunk files are immutable where possible
  rm -rf "$WORK/store"
  start_agent "$1" "$WORK/store"
}

# agent_cpu_ticks: utime + stime of the agent (clock ticks).
agent_cpu_ticks() {
  local stat
  stat="$(cat "/proc/$AG_PID/stat")"
  stat="${stat##*) }" # after "pid (comm) ": state is field 1, utime 12, stime 13
  awk '{print $12 + $13}' <<<"$stat"
}

agent_status() { # FIELD: VmHWM, VmRSS (kB) or Threads
  awk -v f="$1:" '$1 == f {print $2}' "/proc/$AG_PID/status"
}

# metric NAME_WITH_LABELS: a counter's value from the agent's /metrics (0 when absent).
metric() {
  curl -s "http://127.0.0.1:$AG_PORT/metrics" |
    awk -v m="$1" 'index($0, m " ") == 1 {v = $2} END {printf "%d\n", v + 0}'
}
served() { # "hit filled miss" chunk request counts so far
  printf '%s %s %s\n' "$(metric 'blobswarm_agent_chunk_requests_total{status="hit"}')" \
    "$(metric 'blobswarm_agent_chunk_requests_total{status="filled"}')" \
    "$(metric 'blobswarm_agent_chunk_requests_total{status="miss"}')"
}

# ---- one read ----------------------------------------------------------------------------
per_gib() { awk -v c="$1" -v s="$SIZE" -v g="$GIB" 'BEGIN {printf "%.2f\n", c / (s / g)}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f\n", a / b; else print "null"}'; }

# read_once MODE THREADS PIECE VERIFY: one blobswarm-read process.
#   MODE local: --local-file of the local copy; agent: the shim with BLOBSWARM_AGENT=socket;
#   direct: the shim with BLOBSWARM_AGENT=off. VERIFY 1: --sha256 (hashing is after the timed
#   reads, but costs reader CPU, so CPU figures come from VERIFY 0 runs).
# Sets R_MIBS (as blobswarm-read timed the reads), R_CPU (reader user+sys seconds, whole
# process), R_ACPU (agent CPU seconds during the process, 0 when no agent runs).
read_once() {
  local mode="$1" threads="$2" piece="$3" verify="$4" out="$WORK/read.out" a0=0 a1=0 line
  local -a cmd=(/usr/bin/time -f '%U %S' -o "$WORK/read.time" timeout "$STEP_TIMEOUT")
  local -a args=(--size "$SIZE" --threads "$threads" --chunk-bytes "$piece")
  [ "$verify" = 1 ] && args+=(--sha256 "$SHA")
  if [ "$mode" = local ]; then
    cmd+=("$READER" --local-file "$WORK/blob.bin")
  else
    cmd=(env -u AZURE_STORAGE_ACCOUNT_NAME -u AZURE_STORAGE_ACCOUNT_KEY -u AZURE_STORAGE_SAS_TOKEN
      -u AZURE_CLIENT_ID -u AZURE_CLIENT_SECRET -u AZURE_TENANT_ID -u AZURE_FEDERATED_TOKEN_FILE
      -u IDENTITY_ENDPOINT -u IDENTITY_HEADER -u BLOBSWARM_BLOB_ENDPOINT -u BLOBSWARM_READ_SIZE
      -u BLOBSWARM_RANGE_BYTES AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:9
      AZURE_STORAGE_CONNECTION_STRING="$CONN"
      BLOBSWARM_AGENT="$([ "$mode" = agent ] && echo "$WORK/agent.sock" || echo off)"
      "${cmd[@]}" "$READER" --lib "$SHIM_LIB" --account "$ACCOUNT" --container "$CONTAINER"
      --blob "$BLOB")
  fi
  if [ -n "$AG_PID" ]; then a0="$(agent_cpu_ticks)"; fi
  if ! "${cmd[@]}" "${args[@]}" >"$out" 2>"$out.err"; then
    die "blobswarm-read ($mode, $threads x $piece) failed: $(head -c 2000 "$out.err")"
  fi
  if [ -n "$AG_PID" ]; then a1="$(agent_cpu_ticks)"; fi
  line="$(grep -m1 ' MiB/s' "$out" || true)"
  R_MIBS="$(sed -n 's/.* = \([0-9.]*\) MiB\/s.*/\1/p' <<<"$line")"
  [ -n "$R_MIBS" ] || die "blobswarm-read printed no result: $(cat "$out" "$out.err")"
  [ "$verify" != 1 ] || [[ "$line" == *", verified"* ]] || die "not verified: $line"
  R_CPU="$(awk 'NR == 1 {printf "%.2f\n", $1 + $2}' "$WORK/read.time")"
  R_ACPU="$(awk -v d=$((a1 - a0)) -v hz="$HZ" 'BEGIN {printf "%.2f\n", d / hz}')"
}

# ---- sections ----------------------------------------------------------------------------
declare -A MED # medians by key, for the summary

# warm: for each piece size, WARM_RUNS alternating rounds of pread of the local copy and the
# shim through a warm agent; CPU of both sides from the unverified runs.
section_warm() {
  local piece i
  log "warm: agent grid $DEFAULT_CHUNK, store filled by a verified read; load $(loadavg)"
  fresh_agent "$DEFAULT_CHUNK"
  read_once agent "$THREADS" 8388608 1 # fills the store
  read_once agent "$THREADS" 8388608 1 # verified from the store
  read_once local "$THREADS" 8388608 1 # the local copy is right and hot
  for piece in $PIECES; do
    local -a lv=() av=() rv=() cl=() ca=() ag=()
    for ((i = 1; i <= WARM_RUNS; i++)); do
      read_once local "$THREADS" "$piece" 0
      lv+=("$R_MIBS")
      cl+=("$R_CPU")
      read_once agent "$THREADS" "$piece" 0
      av+=("$R_MIBS")
      rv+=("$(ratio "$R_MIBS" "${lv[-1]}")")
      ca+=("$R_CPU")
      ag+=("$R_ACPU")
      log "warm piece $piece run $i/$WARM_RUNS: pread ${lv[-1]} MiB/s (cpu ${cl[-1]} s), agent $R_MIBS MiB/s (reader cpu $R_CPU s, agent cpu $R_ACPU s); load $(loadavg)"
    done
    local lm am r clm cam agm tot
    lm="$(printf '%s\n' "${lv[@]}" | median)"
    am="$(printf '%s\n' "${av[@]}" | median)"
    r="$(printf '%s\n' "${rv[@]}" | median)" # of adjacent pairs: cancels drift
    clm="$(printf '%s\n' "${cl[@]}" | median)"
    cam="$(printf '%s\n' "${ca[@]}" | median)"
    agm="$(printf '%s\n' "${ag[@]}" | median)"
    tot="$(awk -v a="$cam" -v b="$agm" 'BEGIN {print a + b}')"
    MED[warm_local_$piece]="$lm"
    MED[warm_agent_$piece]="$am"
    MED[warm_ratio_$piece]="$r"
    MED[cpu_local_$piece]="$(per_gib "$clm")"
    MED[cpu_reader_$piece]="$(per_gib "$cam")"
    MED[cpu_agent_$piece]="$(per_gib "$agm")"
    MED[cpu_total_$piece]="$(per_gib "$tot")"
    printf 'RESULT {"bench":"agent","case":"warm","piece_bytes":%d,"threads":%d,"agent_chunk":"%s","bytes":%d,"runs":%d,"pread_mib_per_s":%s,"agent_mib_per_s":%s,"ratio":%s,"goal":0.8,"load":"%s"}\n' \
      "$piece" "$THREADS" "$DEFAULT_CHUNK" "$SIZE" "$WARM_RUNS" "$lm" "$am" "$r" "$(loadavg)"
    printf 'RESULT {"bench":"agent","case":"cpu_warm","piece_bytes":%d,"threads":%d,"agent_chunk":"%s","pread_cpu_s_per_gib":%s,"reader_cpu_s_per_gib":%s,"agent_cpu_s_per_gib":%s,"total_cpu_s_per_gib":%s,"load":"%s"}\n' \
      "$piece" "$THREADS" "$DEFAULT_CHUNK" "${MED[cpu_local_$piece]}" "${MED[cpu_reader_$piece]}" \
      "${MED[cpu_agent_$piece]}" "${MED[cpu_total_$piece]}" "$(loadavg)"
  done
}

# sweep (and cold): RUNS rounds; in each, for each piece size and agent grid: the shim reading
# Azurite directly, then a fresh agent over an empty store: a cold read (every chunk filled
# from Azurite) and a warm read of the same store, all verified. The cold/direct ratio is the
# median of the ratios of adjacent pairs, which cancels most of the drift of a shared machine.
section_sweep() {
  local r piece chunk key s0 s1 d c
  log "sweep: grids ($CHUNKS) x pieces ($PIECES), $RUNS rounds; load $(loadavg)"
  declare -A SW=()
  for ((r = 1; r <= RUNS; r++)); do
    for piece in $PIECES; do
      for chunk in $CHUNKS; do
        key="${chunk}_$piece"
        stop_agent
        read_once direct "$THREADS" "$piece" 1
        d="$R_MIBS"
        fresh_agent "$chunk"
        s0="$(served)"
        read_once agent "$THREADS" "$piece" 1
        c="$R_MIBS"
        s1="$(served)"
        SW[hwm_$key]+="$(agent_status VmHWM) " # a fresh agent: the cold read's peak
        # requests answered "miss" during a cold read were read from Azure by the shim itself
        SW[miss_$key]+="$(($(cut -d' ' -f3 <<<"$s1") - $(cut -d' ' -f3 <<<"$s0"))) "
        read_once agent "$THREADS" "$piece" 1
        SW[direct_$key]+="$d "
        SW[cold_$key]+="$c "
        SW[warm_$key]+="$R_MIBS "
        SW[ratio_$key]+="$(ratio "$c" "$d") "
        log "round $r piece $piece grid $chunk: direct $d, cold $c, warm $R_MIBS MiB/s (agent hit/filled/miss: $(served)); load $(loadavg)"
      done
    done
  done
  stop_agent
  for key in "${!SW[@]}"; do
    MED[sw_$key]="$(tr ' ' '\n' <<<"${SW[$key]}" | grep . | median)"
  done
  for piece in $PIECES; do
    for chunk in $CHUNKS; do
      key="${chunk}_$piece"
      printf 'RESULT {"bench":"agent","case":"sweep","agent_chunk":"%s","piece_bytes":%d,"threads":%d,"runs":%d,"direct_mib_per_s":%s,"cold_mib_per_s":%s,"warm_mib_per_s":%s,"cold_ratio":%s,"cold_miss_requests":%s,"cold_vmhwm_kb":%s,"load":"%s"}\n' \
        "$chunk" "$piece" "$THREADS" "$RUNS" "${MED[sw_direct_$key]}" "${MED[sw_cold_$key]}" \
        "${MED[sw_warm_$key]}" "${MED[sw_ratio_$key]}" "${MED[sw_miss_$key]}" \
        "${MED[sw_hwm_$key]}" "$(loadavg)"
    done
    key="${DEFAULT_CHUNK}_$piece"
    [ -n "${MED[sw_cold_$key]:-}" ] || continue
    printf 'RESULT {"bench":"agent","case":"cold","agent_chunk":"%s","piece_bytes":%d,"threads":%d,"runs":%d,"direct_mib_per_s":%s,"agent_mib_per_s":%s,"ratio":%s,"goal":0.9,"load":"%s"}\n' \
      "$DEFAULT_CHUNK" "$piece" "$THREADS" "$RUNS" "${MED[sw_direct_$key]}" \
      "${MED[sw_cold_$key]}" "${MED[sw_ratio_$key]}" "$(loadavg)"
  done
}

# rss_read MODE-LABEL: one MANY_THREADS x MANY_PIECE read through the running agent while its
# VmRSS is sampled; sets X_HWM, X_RSS (max sampled), X_THR (max threads), X_MIBS.
rss_read() {
  local out="$WORK/many.out" pid rss thr
  env -u AZURE_STORAGE_ACCOUNT_NAME -u AZURE_STORAGE_ACCOUNT_KEY -u AZURE_STORAGE_SAS_TOKEN \
    -u BLOBSWARM_BLOB_ENDPOINT AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:9 \
    AZURE_STORAGE_CONNECTION_STRING="$CONN" BLOBSWARM_AGENT="$WORK/agent.sock" \
    timeout "$STEP_TIMEOUT" "$READER" --lib "$SHIM_LIB" --account "$ACCOUNT" \
    --container "$CONTAINER" --blob "$BLOB" --size "$SIZE" --threads "$MANY_THREADS" \
    --chunk-bytes "$MANY_PIECE" --sha256 "$SHA" >"$out" 2>"$out.err" &
  pid=$!
  X_RSS=0
  X_THR=0
  while kill -0 "$pid" 2>/dev/null; do
    rss="$(agent_status VmRSS)"
    thr="$(agent_status Threads)"
    [ "${rss:-0}" -gt "$X_RSS" ] && X_RSS="$rss"
    [ "${thr:-0}" -gt "$X_THR" ] && X_THR="$thr"
    sleep 0.05
  done
  wait "$pid" || die "blobswarm-read ($MANY_THREADS x $MANY_PIECE) failed: $(head -c 2000 "$out.err")"
  grep -q ', verified' "$out" || die "not verified: $(cat "$out")"
  X_MIBS="$(sed -n 's/.* = \([0-9.]*\) MiB\/s.*/\1/p' "$out" | head -n 1)"
  X_HWM="$(agent_status VmHWM)"
}

# rss: RUNS rounds of a cold read (fresh agent, empty store) then a warm one (the agent
# restarted over the filled store, so its high-water mark is the warm read's alone).
section_rss() {
  local r m
  log "rss: $MANY_THREADS threads x $MANY_PIECE-byte reads, grid $DEFAULT_CHUNK; load $(loadavg)"
  declare -A V=()
  for ((r = 1; r <= RUNS; r++)); do
    fresh_agent "$DEFAULT_CHUNK"
    V[idle]+="$(agent_status VmRSS) "
    for m in cold warm; do
      if [ "$m" = warm ]; then # same store, new process: the high-water mark is this read's
        stop_agent
        start_agent "$DEFAULT_CHUNK" "$WORK/store"
      fi
      rss_read
      V[hwm_$m]+="$X_HWM "
      V[max_$m]+="$X_RSS "
      V[thr_$m]+="$X_THR "
      V[mibs_$m]+="$X_MIBS "
      log "rss round $r $m: agent VmHWM $X_HWM kB, max VmRSS $X_RSS kB, max threads $X_THR, reader $X_MIBS MiB/s, hit/filled/miss $(served); load $(loadavg)"
    done
  done
  stop_agent
  med() { tr ' ' '\n' <<<"${V[$1]}" | grep . | median; }
  MED[rss_idle]="$(med idle)"
  for m in cold warm; do
    MED[rss_hwm_$m]="$(med "hwm_$m")"
    MED[rss_max_$m]="$(med "max_$m")"
    MED[rss_thr_$m]="$(med "thr_$m")"
    MED[rss_mibs_$m]="$(med "mibs_$m")"
    printf 'RESULT {"bench":"agent","case":"rss_%s","threads":%d,"piece_bytes":%d,"agent_chunk":"%s","runs":%d,"idle_rss_kb":%s,"vmhwm_kb":%s,"max_vmrss_kb":%s,"max_threads":%s,"reader_mib_per_s":%s,"load":"%s"}\n' \
      "$m" "$MANY_THREADS" "$MANY_PIECE" "$DEFAULT_CHUNK" "$RUNS" "${MED[rss_idle]}" \
      "${MED[rss_hwm_$m]}" "${MED[rss_max_$m]}" "${MED[rss_thr_$m]}" "${MED[rss_mibs_$m]}" \
      "$(loadavg)"
  done
}

# cold_shaped: the cold comparison of the sweep (direct, then a fresh agent over an empty
# store, grid DEFAULT_CHUNK, every piece size, RUNS rounds, verified) with Azurite moved into
# the namespace behind the shaped veth link; the agent and the reader stay in the root
# namespace, so the agent's fills and the shim's direct reads both cross the link.
section_cold_shaped() {
  local r piece s0 s1 d c k
  declare -A CS=()
  stop_agent
  stop_azurite # in memory: the blob is uploaded again, over the shaped link
  setup_namespace
  serve_blob "$NET.2" ip netns exec "$NS"
  log "cold_shaped: grid $DEFAULT_CHUNK, pieces ($PIECES), $RUNS rounds, Azurite on $NET.2 ($LINK_DESC); load $(loadavg)"
  for ((r = 1; r <= RUNS; r++)); do
    for piece in $PIECES; do
      stop_agent
      read_once direct "$THREADS" "$piece" 1
      d="$R_MIBS"
      fresh_agent "$DEFAULT_CHUNK"
      s0="$(served)"
      read_once agent "$THREADS" "$piece" 1
      c="$R_MIBS"
      s1="$(served)"
      CS[direct_$piece]+="$d "
      CS[cold_$piece]+="$c "
      CS[ratio_$piece]+="$(ratio "$c" "$d") "
      CS[miss_$piece]+="$(($(cut -d' ' -f3 <<<"$s1") - $(cut -d' ' -f3 <<<"$s0"))) "
      log "cold_shaped round $r piece $piece: direct $d, cold $c MiB/s (agent hit/filled/miss: $s1); load $(loadavg)"
    done
  done
  stop_agent
  stop_azurite
  teardown_namespace
  for piece in $PIECES; do
    for k in direct cold ratio miss; do
      MED[cs_${k}_$piece]="$(tr ' ' '\n' <<<"${CS[${k}_$piece]}" | grep . | median)"
    done
    printf 'RESULT {"bench":"agent","case":"cold_shaped","link":"%s","rate":"%s","rate_mib_per_s":%s,"agent_chunk":"%s","piece_bytes":%d,"threads":%d,"bytes":%d,"runs":%d,"direct_mib_per_s":%s,"agent_mib_per_s":%s,"ratio":%s,"cold_miss_requests":%s,"goal":0.9,"load":"%s"}\n' \
      "$LINK_DESC" "$RATE" "$(rate_mibs "$RATE")" "$DEFAULT_CHUNK" "$piece" "$THREADS" "$SIZE" \
      "$RUNS" "${MED[cs_direct_$piece]}" "${MED[cs_cold_$piece]}" "${MED[cs_ratio_$piece]}" \
      "${MED[cs_miss_$piece]}" "$(loadavg)"
  done
}

# rate_mibs RATE: a tc rate (bit, kbit, mbit, gbit, tbit; or bps, kbps, mbps, gbps) in MiB/s,
# null for anything else.
rate_mibs() {
  awk -v r="$1" 'BEGIN {
    if (!match(r, /^[0-9.]+/)) { print "null"; exit }
    n = substr(r, 1, RLENGTH); u = tolower(substr(r, RLENGTH + 1))
    m["bit"] = 1; m["kbit"] = 1e3; m["mbit"] = 1e6; m["gbit"] = 1e9; m["tbit"] = 1e12
    m["bps"] = 8; m["kbps"] = 8e3; m["mbps"] = 8e6; m["gbps"] = 8e9
    if (!(u in m)) { print "null"; exit }
    printf "%.1f\n", n * m[u] / 8 / 1048576 }'
}

# serve_blob HOST [command prefix...]: Azurite on HOST (run under the prefix) holding the
# blob in the private container; sets CONN for the readers.
serve_blob() {
  start_azurite "$@"
  upload_blob "$WORK/blob.bin" --single-shot
  CONN="$(conn_string "$AZ_HOST" "$AZ_PORT")"
}

# ---- main --------------------------------------------------------------------------------
need_tools
[ -x /usr/bin/time ] || die "needs /usr/bin/time (Debian package 'time')"
for f in "$SHIM_LIB" "$READER" "$AGENT"; do [ -e "$f" ] || die "$f is not built"; done
need_azurite
HZ="$(getconf CLK_TCK)"
T0="$(date +%s)"

WORK="$(mktemp -d /tmp/bsagent.XXXXXX)"

log "generating a $SIZE-byte blob; load $(loadavg)"
make_blob "$WORK/blob.bin" 11 "$BUILD/tests/bs-gendata" # kept: the pread baseline reads it
SHA="$(sha256sum "$WORK/blob.bin" | cut -d' ' -f1)"

serve_blob 127.0.0.1

for s in $SECTIONS; do
  if [ "$s" != cold_shaped ] && [ -z "$AZ_PID" ]; then
    serve_blob 127.0.0.1 # back on loopback after cold_shaped
  fi
  "section_$s"
done

# ---- summary -----------------------------------------------------------------------------
mib() { awk -v b="$1" 'BEGIN {printf "%g MiB", b / 1048576}'; }
printf '\nbench/agent: %d-byte blob, %d threads, median of %d rounds (warm: %d); load average %s; %ds\n' \
  "$SIZE" "$THREADS" "$RUNS" "$WARM_RUNS" "$(loadavg)" $(($(date +%s) - T0))
if [[ " $SECTIONS " == *" warm "* ]]; then
  printf '\n1. warm local hit (grid %s) vs pread of a hot local copy, MiB/s (goal >= 0.8)\n' "$DEFAULT_CHUNK"
  printf '%-10s %10s %10s %8s\n' piece pread agent ratio
  for p in $PIECES; do
    printf '%-10s %10s %10s %8s\n' "$(mib "$p")" "${MED[warm_local_$p]}" "${MED[warm_agent_$p]}" "${MED[warm_ratio_$p]}"
  done
  printf '\n3. CPU seconds per GiB served warm (reader process incl. start-up and page faults of its buffer)\n'
  printf '%-10s %12s %12s %12s %12s\n' piece pread-only reader agent reader+agent
  for p in $PIECES; do
    printf '%-10s %12s %12s %12s %12s\n' "$(mib "$p")" "${MED[cpu_local_$p]}" "${MED[cpu_reader_$p]}" \
      "${MED[cpu_agent_$p]}" "${MED[cpu_total_$p]}"
  done
fi
if [[ " $SECTIONS " == *" sweep "* ]]; then
  printf '\n2. cold through the agent (grid %s, empty store) vs the shim reading Azurite directly, MiB/s (goal >= 0.9)\n' "$DEFAULT_CHUNK"
  printf '%-10s %10s %10s %8s\n' piece direct agent ratio
  for p in $PIECES; do
    k="${DEFAULT_CHUNK}_$p"
    printf '%-10s %10s %10s %8s\n' "$(mib "$p")" "${MED[sw_direct_$k]:--}" "${MED[sw_cold_$k]:--}" \
      "${MED[sw_ratio_$k]:--}"
  done
  printf '\n5. agent grid sweep, MiB/s; cold/direct is the median ratio of adjacent pairs; miss = chunk\n'
  printf '   requests answered "miss" in a cold read (the shim read those from Azure); HWM = agent peak RSS\n'
  printf '%-6s %-8s %8s %8s %8s %10s %5s %9s\n' grid piece warm direct cold cold/direct miss "HWM MiB"
  for p in $PIECES; do
    best_w="" best_c="" bw=0 bc=0
    for c in $CHUNKS; do
      k="${c}_$p"
      printf '%-6s %-8s %8s %8s %8s %10s %5s %9s\n' "$c" "$(mib "$p")" "${MED[sw_warm_$k]}" \
        "${MED[sw_direct_$k]}" "${MED[sw_cold_$k]}" "${MED[sw_ratio_$k]}" "${MED[sw_miss_$k]}" \
        "$(awk -v k="${MED[sw_hwm_$k]}" 'BEGIN {printf "%.0f", k / 1024}')"
      if awk -v a="${MED[sw_warm_$k]}" -v b="$bw" 'BEGIN {exit !(a > b)}'; then
        bw="${MED[sw_warm_$k]}" best_w="$c"
      fi
      if awk -v a="${MED[sw_ratio_$k]}" -v b="$bc" 'BEGIN {exit !(a > b)}'; then
        bc="${MED[sw_ratio_$k]}" best_c="$c"
      fi
    done
    printf '  %s pieces: warm best grid %s (%s MiB/s); cold best grid %s (%sx direct)\n' \
      "$(mib "$p")" "$best_w" "$bw" "$best_c" "$bc"
  done
fi
if [[ " $SECTIONS " == *" rss "* ]]; then
  printf '\n4. agent memory under %d concurrent %s reads (grid %s), kB; idle after start %s kB\n' \
    "$MANY_THREADS" "$(mib "$MANY_PIECE")" "$DEFAULT_CHUNK" "${MED[rss_idle]}"
  printf '%-6s %10s %12s %11s %12s\n' store VmHWM max-VmRSS max-threads reader-MiB/s
  for m in cold warm; do
    printf '%-6s %10s %12s %11s %12s\n' "$m" "${MED[rss_hwm_$m]}" "${MED[rss_max_$m]}" "${MED[rss_thr_$m]}" "${MED[rss_mibs_$m]}"
  done
fi
if [[ " $SECTIONS " == *" cold_shaped "* ]]; then
  printf '\n6. cold through the agent (grid %s, empty store) vs the shim reading Azurite directly over a\n' "$DEFAULT_CHUNK"
  printf '   shaped link (%s, %s MiB/s; Azurite in namespace %s), MiB/s (goal >= 0.9)\n' \
    "$LINK_DESC" "$(rate_mibs "$RATE")" "$NS"
  printf '%-10s %10s %10s %8s %5s\n' piece direct agent ratio miss
  for p in $PIECES; do
    printf '%-10s %10s %10s %8s %5s\n' "$(mib "$p")" "${MED[cs_direct_$p]}" "${MED[cs_cold_$p]}" \
      "${MED[cs_ratio_$p]}" "${MED[cs_miss_$p]}"
  done
fi
