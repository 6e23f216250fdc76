#!/usr/bin/env bash
# Brings the shared integration-test environment up or down, all on 127.0.0.1:
#   - Azurite over HTTPS (private CA generated here, --oauth basic: accepts bearer tokens)
#   - Azurite over plain HTTP
#   - tests/tools/tokenserver.mjs (Entra ID, IMDS and App Service token endpoints)
# both Azurites kept in memory and filled with deterministic blobs (tests/tools/gendata.h).
#
# usage: itenv.sh start DIR    start everything, fill it, write DIR/env; fails (and stops what
#                              it started) rather than hang: every wait is bounded
#        itenv.sh stop DIR     stop everything a start in DIR started (safe to repeat)
#        itenv.sh status DIR   exit 0 if the environment in DIR is up
#
# DIR/env holds `export KEY='value'` lines (values never contain a single quote), for a shell
# to source or a C test to parse:
#   BS_IT_HTTPS_ENDPOINT  https://127.0.0.1:P/devstoreaccount1  (Azurite HTTPS + --oauth basic)
#   BS_IT_CA_BUNDLE       DIR/ca.pem, the CA that signed Azurite's certificate
#   BS_IT_HTTP_ENDPOINT   http://127.0.0.1:Q/devstoreaccount1   (Azurite HTTP)
#   BS_IT_HTTPS_CONN, BS_IT_HTTP_CONN   connection strings with the account key
#   BS_IT_TOKEN_URL       http://127.0.0.1:T (token server; Entra authority host, IMDS base
#                         URL, and $BS_IT_TOKEN_URL/msi/token for App Service)
#   BS_IT_TENANT, BS_IT_CLIENT_ID, BS_IT_CLIENT_SECRET, BS_IT_IDENTITY_HEADER
#   BS_IT_FEDERATED_TOKEN_FILE  the workload-identity assertion the token server expects; the
#                         server re-reads it on every request, so a test may rotate it
#   BS_IT_ACCOUNT_SAS_HTTPS, BS_IT_ACCOUNT_SAS_HTTP    account SAS, read+list, valid 2 h
#   BS_IT_SERVICE_SAS_HTTPS, BS_IT_SERVICE_SAS_HTTP    container SAS for `data`, read+list, 2 h
#   BS_IT_OTHER_SAS_HTTPS    container SAS for `other` (must be refused on `data`)
#   BS_IT_EXPIRED_SAS_HTTPS  container SAS for `data` that expired an hour ago
#   BS_IT_BIG_SIZE, BS_IT_BIG_SEED   size and seed of data/big.bin
# SAS values have no leading '?'.
#
# Content on both instances (bytes = bs-gendata --seed S --size N):
#   containers data (private), other (private), public (anonymous read of blobs)
#   data/ and public/:  small.bin                seed 1  1048576+123 bytes
#                       dir/ümlaut name %.bin    seed 2  5*1048576+7 bytes
#                       tiny.bin                 seed 4  8 bytes
#                       empty.bin                seed 5  0 bytes
#   other/:             tiny.bin                 seed 4  8 bytes
#   HTTPS instance only: data/big.bin and public/big.bin  seed 3  1 GiB (public/ is a
#                       server-side copy: Azurite shares the data)
#
# Environment: BS_GENDATA=path of bs-gendata (else it is compiled into DIR with $CC/cc).
# Needs node, openssl, curl and node_modules (scripts/setup.sh installs them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly ROOT
readonly TOOLS="$ROOT/tests/tools"
readonly AZURITE_MAIN="$ROOT/node_modules/azurite/dist/src/blob/main.js"
readonly ACCOUNT=devstoreaccount1
# Azurite's well-known development account key (public, documented by Microsoft).
readonly ACCOUNT_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
readonly BIG_SEED=3
readonly BIG_SIZE=1073741824
readonly SERVER_START_TIMEOUT=30 # seconds for each server to accept connections
readonly FILL_TIMEOUT=240        # seconds for each fixture batch (the 1 GiB upload dominates)
readonly STOP_GRACE=5            # seconds between SIGTERM and SIGKILL

die() {
  echo "itenv: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 start|stop|status DIR" >&2
  exit 2
}

# alive PID: see scripts/proc.sh
# shellcheck source=scripts/proc.sh
. "$ROOT/scripts/proc.sh"

# Prints the PID in pid file $1 if that process is alive and is one this DIR started (its
# working directory is DIR), so a recycled PID is never signalled.
owned_pid() {
  local f=$1 pid
  pid=$(cat "$f" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$DIR" ] || return 1
  echo "$pid"
}

# Stops every process recorded in DIR/pids: SIGTERM, then SIGKILL after STOP_GRACE seconds.
stop_all() {
  local f pid pids=() deadline
  rm -f "$DIR/env"
  [ -d "$DIR/pids" ] || return 0
  for f in "$DIR"/pids/*.pid; do
    [ -e "$f" ] || continue
    if pid=$(owned_pid "$f"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  deadline=$((SECONDS + STOP_GRACE))
  for pid in "${pids[@]}"; do
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if alive "$pid"; then
      echo "itenv: pid $pid ignored SIGTERM, killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${pids[@]}"; do
    deadline=$((SECONDS + STOP_GRACE))
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if alive "$pid"; then echo "itenv: pid $pid is still alive after SIGKILL" >&2; fi
  done
  rm -f "$DIR"/pids/*.pid
}

# start_bg NAME CMD...: runs CMD as a daemon in its own session (so it outlives this script
# and the CTest step that ran it), output to DIR/logs/NAME.log; records its PID. The caller's
# working directory is DIR already, so the daemon's is DIR from its first instant.
start_bg() {
  local name=$1
  shift
  (
    exec 9>&- # do not hand the start lock to the daemon
    exec setsid "$@" </dev/null >"$DIR/logs/$name.log" 2>&1
  ) &
  echo $! >"$DIR/pids/$name.pid"
}

# wait_for NAME SECONDS REGEX FILE: waits until FILE has a line matching REGEX while process
# NAME lives; prints the first match. Fails with the log's tail otherwise.
wait_for() {
  local name=$1 timeout=$2 regex=$3 file=$4 deadline line
  deadline=$((SECONDS + timeout))
  while :; do
    if line=$(grep -m1 -oE "$regex" "$file" 2>/dev/null); then
      echo "$line"
      return 0
    fi
    if ! owned_pid "$DIR/pids/$name.pid" >/dev/null; then
      echo "itenv: $name exited during start-up; log $DIR/logs/$name.log:" >&2
      tail -n 20 "$DIR/logs/$name.log" >&2 || true
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "itenv: $name did not come up within ${timeout}s; log $DIR/logs/$name.log:" >&2
      tail -n 20 "$DIR/logs/$name.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
}

# Writes one env line; refuses values the single-quoted form cannot hold.
env_line() {
  case $2 in *"'"*) die "value of $1 contains a single quote" ;; esac
  printf "export %s='%s'\n" "$1" "$2"
}

# JSON string literal for $1 (our values hold no control characters).
json_str() {
  local s=${1//\\/\\\\}
  printf '"%s"' "${s//\"/\\\"}"
}

# JSON array of the arguments, one azfixture batch line.
json_argv() {
  local sep='' a
  printf '['
  for a in "$@"; do
    printf '%s%s' "$sep" "$(json_str "$a")"
    sep=,
  done
  printf ']\n'
}

# A batch line whose output goes to env as NAME.
json_export() {
  local name=$1
  shift
  printf '{"export":"%s","argv":%s}\n' "$name" "$(json_argv "$@")"
}

gen_certs() {
  local d=$DIR/certs
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$d/ca-key.pem" -out "$DIR/ca.pem" -days 7 -subj "/CN=blobswarm test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    >"$DIR/logs/openssl.log" 2>&1 || { cat "$DIR/logs/openssl.log" >&2; die "CA generation failed"; }
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$d/key.pem" -out "$d/server.csr" -subj "/CN=127.0.0.1" \
    >>"$DIR/logs/openssl.log" 2>&1 || { cat "$DIR/logs/openssl.log" >&2; die "server key generation failed"; }
  cat >"$d/server.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
EOF
  openssl x509 -req -in "$d/server.csr" -CA "$DIR/ca.pem" -CAkey "$d/ca-key.pem" \
    -CAserial "$d/ca.srl" -CAcreateserial -out "$d/cert.pem" -days 7 -extfile "$d/server.ext" \
    >>"$DIR/logs/openssl.log" 2>&1 || { cat "$DIR/logs/openssl.log" >&2; die "server certificate signing failed"; }
}

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# A fake projected service-account token (a JWT, as Kubernetes writes one); only its exact
# content matters: the token server compares the client assertion against this file.
gen_federated_token() {
  local now header payload
  now=$(date +%s)
  header=$(printf '{"alg":"RS256","kid":"blobswarm-test"}' | b64url)
  payload=$(printf '{"aud":["api://AzureADTokenExchange"],"iss":"https://oidc.blobswarm.test/","sub":"system:serviceaccount:default:blobswarm","iat":%d,"nbf":%d,"exp":%d,"jti":"%s"}' \
    "$now" "$now" $((now + 86400)) "$(cat /proc/sys/kernel/random/uuid)" | b64url)
  printf '%s.%s.%s\n' "$header" "$payload" "$(head -c 32 /dev/urandom | b64url)" >"$1"
}

find_gendata() {
  if [ -n "${BS_GENDATA:-}" ]; then
    [ -x "$BS_GENDATA" ] || die "BS_GENDATA=$BS_GENDATA is not an executable"
    echo "$BS_GENDATA"
    return
  fi
  "${CC:-cc}" -O2 -std=c11 -I"$TOOLS" "$TOOLS/bs-gendata.c" -o "$DIR/bs-gendata" ||
    die "cannot compile $TOOLS/bs-gendata.c (set BS_GENDATA to a built bs-gendata)"
  echo "$DIR/bs-gendata"
}

# gen_file GENDATA SEED SIZE NAME: writes the test stream to DIR/data/NAME.
gen_file() {
  "$1" --seed "$2" --size "$3" >"$DIR/data/$4" || die "$1 --seed $2 --size $3 failed"
}

FILL_JOBS=() # PIDs of running `timeout node azfixture.mjs batch` jobs

# Starts `azfixture.mjs batch` on DIR/data/fill-$1.jsonl in the background (bounded by
# FILL_TIMEOUT), output to DIR/data/fill-$1.out, errors to DIR/logs/fill-$1.log.
start_batch() {
  NODE_EXTRA_CA_CERTS="$DIR/ca.pem" timeout --kill-after=5 "$FILL_TIMEOUT" \
    node "$TOOLS/azfixture.mjs" batch <"$DIR/data/fill-$1.jsonl" >"$DIR/data/fill-$1.out" \
    2>"$DIR/logs/fill-$1.log" &
  FILL_JOBS+=($!)
}

on_start_exit() {
  local rc=$?
  trap - EXIT
  if [ "$rc" -ne 0 ]; then
    echo "itenv: start failed; stopping what it started" >&2
    local j
    for j in "${FILL_JOBS[@]}"; do kill -TERM "$j" 2>/dev/null || true; done
    stop_all
    rm -rf "$DIR/data"
  fi
  exit "$rc"
}

cmd_start() {
  local t0=$SECONDS gendata conn_https conn_http https_ep http_ep token_url
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock -n 9 || die "another itenv.sh is working on $DIR"

  command -v node >/dev/null || die "node not found (run scripts/setup.sh)"
  command -v openssl >/dev/null || die "openssl not found (run scripts/setup.sh)"
  [ -f "$AZURITE_MAIN" ] || die "Azurite not installed at $ROOT/node_modules (run scripts/setup.sh or npm ci)"

  # A previous run that was interrupted may have left servers behind.
  if compgen -G "$DIR/pids/*.pid" >/dev/null; then
    echo "itenv: stopping a previous environment in $DIR" >&2
    stop_all
  fi
  rm -rf "$DIR/env" "$DIR/env.tmp" "$DIR/data" "$DIR/logs"
  mkdir -p "$DIR/pids" "$DIR/logs" "$DIR/data"
  trap on_start_exit EXIT
  trap 'exit 130' INT TERM

  gendata=$(find_gendata)
  cd "$DIR" # the daemons' working directory, which marks them as ours (owned_pid)
  gen_certs

  local tenant client_id secret identity_header fed_file
  tenant=$(cat /proc/sys/kernel/random/uuid)
  client_id=$(cat /proc/sys/kernel/random/uuid)
  identity_header=$(cat /proc/sys/kernel/random/uuid)
  # Characters that need form encoding (+ / = & %) and those real secrets use (~ . _).
  secret="bs~$(head -c 12 /dev/urandom | base64 | tr -d '+/=').Sec_ret+/=&%"
  fed_file="$DIR/federated-token"
  gen_federated_token "$fed_file"

  # The three servers start in parallel; the test data is generated meanwhile.
  local azurite_common=(--blobHost 127.0.0.1 --blobPort 0 --inMemoryPersistence --silent
    --disableTelemetry --skipApiVersionCheck)
  start_bg azurite-https node "$AZURITE_MAIN" "${azurite_common[@]}" \
    --cert "$DIR/certs/cert.pem" --key "$DIR/certs/key.pem" --oauth basic
  start_bg azurite-http node "$AZURITE_MAIN" "${azurite_common[@]}"
  rm -f "$DIR/tokenserver.port"
  start_bg tokenserver node "$TOOLS/tokenserver.mjs" --tenant "$tenant" --client-id "$client_id" \
    --client-secret "$secret" --federated-token-file "$fed_file" \
    --identity-header "$identity_header" --port-file "$DIR/tokenserver.port"

  gen_file "$gendata" 1 $((1048576 + 123)) small.bin
  gen_file "$gendata" 2 $((5 * 1048576 + 7)) umlaut.bin
  gen_file "$gendata" 4 8 tiny.bin
  gen_file "$gendata" 5 0 empty.bin
  gen_file "$gendata" "$BIG_SEED" "$BIG_SIZE" big.bin

  local listen='successfully listens on https?://127\.0\.0\.1:[0-9]+'
  https_ep=$(wait_for azurite-https "$SERVER_START_TIMEOUT" "$listen" "$DIR/logs/azurite-https.log")
  http_ep=$(wait_for azurite-http "$SERVER_START_TIMEOUT" "$listen" "$DIR/logs/azurite-http.log")
  token_url=$(wait_for tokenserver "$SERVER_START_TIMEOUT" 'http://127\.0\.0\.1:[0-9]+' \
    "$DIR/logs/tokenserver.log")
  https_ep="https://${https_ep##*://}/$ACCOUNT"
  http_ep="http://${http_ep##*://}/$ACCOUNT"
  conn_https="DefaultEndpointsProtocol=https;AccountName=$ACCOUNT;AccountKey=$ACCOUNT_KEY;BlobEndpoint=$https_ep;"
  conn_http="DefaultEndpointsProtocol=http;AccountName=$ACCOUNT;AccountKey=$ACCOUNT_KEY;BlobEndpoint=$http_ep;"

  # Three fixture batches in parallel: the 1 GiB upload, the rest of HTTPS, and HTTP.
  local c inst cont
  {
    json_argv container --conn "$conn_https" --container data
    json_argv container --conn "$conn_https" --container public --public
    json_argv upload --conn "$conn_https" --container data --blob big.bin \
      --file "$DIR/data/big.bin" --single-shot
    json_argv copy --conn "$conn_https" --from-container data --from-blob big.bin --container public
  } >"$DIR/data/fill-big.jsonl"
  for inst in https http; do
    if [ "$inst" = https ]; then c=$conn_https; else c=$conn_http; fi
    {
      json_argv container --conn "$c" --container data
      json_argv container --conn "$c" --container other
      json_argv container --conn "$c" --container public --public
      for cont in data public; do
        json_argv upload --conn "$c" --container "$cont" --blob small.bin --file "$DIR/data/small.bin" --single-shot
        json_argv upload --conn "$c" --container "$cont" --blob 'dir/ümlaut name %.bin' --file "$DIR/data/umlaut.bin" --single-shot
        json_argv upload --conn "$c" --container "$cont" --blob tiny.bin --file "$DIR/data/tiny.bin" --single-shot
        json_argv upload --conn "$c" --container "$cont" --blob empty.bin --file "$DIR/data/empty.bin" --single-shot
      done
      json_argv upload --conn "$c" --container other --blob tiny.bin --file "$DIR/data/tiny.bin" --single-shot
      if [ "$inst" = https ]; then
        json_export BS_IT_ACCOUNT_SAS_HTTPS account-sas --conn "$c" --minutes 120
        json_export BS_IT_SERVICE_SAS_HTTPS service-sas --conn "$c" --container data --perms rl --minutes 120
        json_export BS_IT_OTHER_SAS_HTTPS service-sas --conn "$c" --container other --perms rl --minutes 120
        json_export BS_IT_EXPIRED_SAS_HTTPS service-sas --conn "$c" --container data --perms rl \
          --start-minutes -120 --minutes -60
      else
        json_export BS_IT_ACCOUNT_SAS_HTTP account-sas --conn "$c" --minutes 120
        json_export BS_IT_SERVICE_SAS_HTTP service-sas --conn "$c" --container data --perms rl --minutes 120
      fi
    } >"$DIR/data/fill-$inst.jsonl"
  done
  local i failed=0 names=(big https http)
  for i in "${names[@]}"; do start_batch "$i"; done
  for i in "${!names[@]}"; do
    if ! wait "${FILL_JOBS[$i]}"; then
      echo "itenv: filling ${names[$i]} failed (or took over ${FILL_TIMEOUT}s):" >&2
      cat "$DIR/logs/fill-${names[$i]}.log" >&2
      failed=1
    fi
  done
  FILL_JOBS=()
  [ "$failed" -eq 0 ] || die "filling Azurite failed"
  rm -f "$DIR/data"/*.bin

  {
    echo "# Integration environment written by tests/tools/itenv.sh on $(date -u +%FT%TZ)."
    env_line BS_IT_HTTPS_ENDPOINT "$https_ep"
    env_line BS_IT_CA_BUNDLE "$DIR/ca.pem"
    env_line BS_IT_HTTP_ENDPOINT "$http_ep"
    env_line BS_IT_HTTPS_CONN "$conn_https"
    env_line BS_IT_HTTP_CONN "$conn_http"
    env_line BS_IT_TOKEN_URL "$token_url"
    env_line BS_IT_TENANT "$tenant"
    env_line BS_IT_CLIENT_ID "$client_id"
    env_line BS_IT_CLIENT_SECRET "$secret"
    env_line BS_IT_FEDERATED_TOKEN_FILE "$fed_file"
    env_line BS_IT_IDENTITY_HEADER "$identity_header"
    cat "$DIR/data/fill-https.out" "$DIR/data/fill-http.out"
    env_line BS_IT_BIG_SIZE "$BIG_SIZE"
    env_line BS_IT_BIG_SEED "$BIG_SEED"
  } >"$DIR/env.tmp"
  local key
  for key in ACCOUNT_SAS_HTTPS ACCOUNT_SAS_HTTP SERVICE_SAS_HTTPS SERVICE_SAS_HTTP OTHER_SAS_HTTPS \
    EXPIRED_SAS_HTTPS; do
    grep -q "^export BS_IT_$key='[^']" "$DIR/env.tmp" || die "no BS_IT_$key from the fixture"
  done
  rm -rf "$DIR/data"
  mv "$DIR/env.tmp" "$DIR/env"
  trap - EXIT INT TERM
  echo "itenv: up in $((SECONDS - t0))s: HTTPS $https_ep, HTTP $http_ep, tokens $token_url; env in $DIR/env"
}

cmd_stop() {
  [ -d "$DIR" ] || return 0
  exec 9>"$DIR/.lock"
  flock -w 30 9 || die "another itenv.sh kept $DIR locked for 30s"
  stop_all
  rm -rf "$DIR/data" "$DIR/env.tmp"
  echo "itenv: stopped the environment in $DIR"
}

cmd_status() {
  local f up=0
  [ -f "$DIR/env" ] || { echo "itenv: no environment in $DIR"; return 1; }
  for f in "$DIR"/pids/*.pid; do
    if ! owned_pid "$f" >/dev/null; then
      echo "itenv: $(basename "$f" .pid) is not running"
      up=1
    fi
  done
  [ "$up" -eq 0 ] && echo "itenv: up ($DIR/env)"
  return "$up"
}

[ $# -eq 2 ] || usage
if [ "$1" = start ]; then
  mkdir -p "$2" || die "cannot create $2"
elif [ ! -d "$2" ]; then
  [ "$1" = stop ] && exit 0
  echo "itenv: no environment in $2"
  exit 1
fi
DIR=$(cd "$2" && pwd -P)
readonly DIR
case $1 in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) usage ;;
esac
