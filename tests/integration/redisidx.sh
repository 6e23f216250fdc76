#!/usr/bin/env bash
# Runs tests/integration/test_redisidx against a private redis-server on a free 127.0.0.1
# port (no persistence), then stops it. The program restarts the server itself for its
# restart case (BS_REDIS_SERVER, same port, same directory) and shuts that one down.
# usage: redisidx.sh PROGRAM
# Without redis-server: exit 77 (skipped), or a failure under CI=true.
set -uo pipefail
readonly START_S=5 # bounded waits, seconds
readonly STOP_S=5
prog=${1:?usage: redisidx.sh PROGRAM}

server=$(command -v redis-server || true)
if [ -z "$server" ]; then
  if [ "${CI:-}" = true ]; then
    echo "redisidx: redis-server not found (required under CI)" >&2
    exit 1
  fi
  echo "redisidx: redis-server not found: skipped" >&2
  exit 77
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/bs-redisidx.XXXXXX")
pid=""
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq $((STOP_S * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

# A free port: start redis-server on a random one until it listens (a port in use makes it
# exit at once).
port=""
for _ in $(seq 20); do
  p=$((20000 + RANDOM % 40000))
  : >"$dir/redis.log"
  "$server" --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --logfile "$dir/redis.log" --daemonize no &
  pid=$!
  for _ in $(seq $((START_S * 10))); do
    if grep -q "Ready to accept connections" "$dir/redis.log" 2>/dev/null; then
      port=$p
      break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] && break
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  pid=""
done
if [ -z "$port" ]; then
  echo "redisidx: could not start redis-server on a free port:" >&2
  tail -n 20 "$dir/redis.log" >&2
  exit 1
fi

echo "redisidx: redis-server $("$server" --version | cut -d' ' -f3) on 127.0.0.1:$port"
BS_REDIS_URL="redis://127.0.0.1:$port" BS_REDIS_SERVER="$server" BS_REDIS_DIR="$dir" "$prog"
rc=$?
if [ "$rc" -ne 0 ]; then
  for f in "$dir"/redis*.log; do
    [ -s "$f" ] || continue
    echo "----- $(basename "$f") (last 20 lines) -----" >&2
    tail -n 20 "$f" >&2
  done
fi
exit "$rc"
