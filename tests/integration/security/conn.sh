# shellcheck shell=bash
# Adversarial cases: conn (see tests/integration/test_security.sh). Connection exhaustion of
# both listeners, descriptor exhaustion, fair fills between tenants, the answer deadline and
# the HTTP drain. Connection floods come from tests/tools/connhog.py.
#
#   conn_unix_hog        a uid holds every Unix slot with hellos: it gets only its per-peer
#                        share, its connections end at their lifetime, and another uid loads
#                        through the agent meanwhile
#   conn_http_slowloris  slowloris from one IP: the others still get in, the slow requests are
#                        cut at the request-read deadline, over the per-IP limit 503
#   conn_emfile          1,100 idle Unix connections against a low RLIMIT_NOFILE: /healthz
#                        answers and the agent's CPU stays low (no accept spin)
#   conn_fair_fills      tenant A's slow origin and flood of fills do not keep tenant B from
#                        getting its chunks filled
#   conn_answer_deadline hello announces the answer time, and a request whose access check and
#                        fill are slow is answered within it
#   conn_drain_body      SIGTERM while a large body is read slowly: the body arrives whole
#   conn_socket_mode     the socket file has BLOBSWARM_AGENT_SOCKET_MODE

# hog_start LABEL ARGS...: tests/tools/connhog.py ARGS in the background (output $T/LABEL.hog),
# once its connections are open.
hog_start() {
  local label=$1 i pid
  shift
  : >"$T/$label.hog"
  python3 "$TOOLS/connhog.py" "$@" >"$T/$label.hog" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  HOG_PID[$label]=$pid
  for ((i = 0; i < 600; i++)); do
    grep -q '^ready' "$T/$label.hog" && { log "hog $label: $(head -n1 "$T/$label.hog")"; return 0; }
    alive "$pid" || fail "connhog $label exited: $(cat "$T/$label.hog")"
    sleep 0.05
  done
  fail "connhog $label did not open its connections"
}
declare -A HOG_PID=()

# hog_end LABEL SECONDS: waits for the hog to finish; its JSON report in $T/LABEL.json.
hog_end() {
  wait_exit "${HOG_PID[$1]}" "$2" || fail "connhog $1 still running"
  [ "$EXIT_RC" = 0 ] || fail "connhog $1 exited $EXIT_RC: $(tail -n 3 "$T/$1.hog")"
  tail -n 1 "$T/$1.hog" >"$T/$1.json"
  log "hog $1: $(cat "$T/$1.json")"
}

# hog_field LABEL EXPR: a Python expression over the report r, printed.
hog_field() {
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
    "$T/$1.json" "$2"
}

# cpu_ticks PID: utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# served ID A B: chunk requests the agent served (hit + filled) between snapshots A and B.
served() {
  echo $(($(mdelta "$2" "$3" "$REQ{status=\"hit\"}") + $(mdelta "$2" "$3" "$REQ{status=\"filled\"}")))
}

# A directory other uids may traverse, for a socket they connect to.
open_dirs() { chmod 0755 "$T" "$T/$1"; }

case_conn_unix_hog() {
  local blob=conn-it/hog-$$.bin size=$((3 * MIB + 17)) hog_uid=12345 t_life=4
  upload http data "$blob" 301 "$size"
  # shellcheck disable=SC2034 # read by load (agentlib.sh)
  READ_ENV=("BLOBSWARM_BLOB_ENDPOINT=$BS_IT_HTTP_ENDPOINT")
  # New settings by environment, which an agent without them ignores.
  export BLOBSWARM_MAX_CLIENTS_PER_PEER=8 BLOBSWARM_CONN_LIFETIME_MS=$((t_life * 1000))
  export BLOBSWARM_AGENT_SOCKET_MODE=0666
  mkdir -p "$T/a"
  open_dirs a
  agent_start a --max-clients=32
  unset BLOBSWARM_MAX_CLIENTS_PER_PEER BLOBSWARM_CONN_LIFETIME_MS BLOBSWARM_AGENT_SOCKET_MODE
  # uid 12345 opens more connections than the agent has slots and keeps them busy with a
  # hello every second.
  hog_start hog unix "$(agent_sock a)" --conns 40 --uid "$hog_uid" --hello-s 1 --duration 12
  snap a 0
  load root-while-hogged sharedkey "$(agent_sock a)" data "$blob" "$size" 301
  snap a 1
  expect_ge "chunks the agent served to uid 0 while uid $hog_uid hogged" "$(served a 0 1)" 1
  hog_end hog 30
  expect_eq "hog: connections accepted (per-peer limit 8)" \
    "$(hog_field hog "r['opened'] - r['busy']")" 8
  expect_eq "hog: connections still open after ${t_life} s lifetime (hellos every 1 s)" \
    "$(hog_field hog "r['alive']")" 0
  expect_le "hog: longest connection (ms, lifetime ${t_life} s + 1.5 s)" \
    "$(hog_field hog "int(1000 * max(r['closed'] or [99]))")" $((t_life * 1000 + 1500))
}

case_conn_http_slowloris() {
  local st read_ms=3000
  export BLOBSWARM_MAX_CLIENTS_PER_PEER=4 BLOBSWARM_REQUEST_READ_MS=$read_ms
  agent_start a --max-clients=16
  unset BLOBSWARM_MAX_CLIENTS_PER_PEER BLOBSWARM_REQUEST_READ_MS
  # 127.0.0.2 opens more connections than the agent has slots, each an HTTP request whose
  # headers never end (a header line every second).
  hog_start slow tcp 127.0.0.1 "${AGENT_PORT[a]}" --source 127.0.0.2 --conns 20 --trickle-s 1 \
    --duration 10
  st=$(curl -sS --max-time 3 -o /dev/null -w '%{http_code}' "$(agent_http a)/healthz" 2>/dev/null) || true
  expect_eq "/healthz from 127.0.0.1 while 127.0.0.2 hogs" "$st" 200
  hog_end slow 30
  expect_eq "slowloris: connections still open at the end" "$(hog_field slow "r['alive']")" 0
  expect_le "slowloris: longest connection (ms, read deadline $read_ms + 1500)" \
    "$(hog_field slow "int(1000 * max(r['closed'] or [99]))")" $((read_ms + 1500))
  # Within the per-IP limit's grace: a complete request over the limit gets 503.
  hog_start four tcp 127.0.0.1 "${AGENT_PORT[a]}" --source 127.0.0.2 --conns 4 --trickle-s 1 \
    --duration 2
  st=$(curl -sS --max-time 3 --interface 127.0.0.2 -o /dev/null -w '%{http_code}' \
    "$(agent_http a)/healthz" 2>/dev/null) || true
  expect_eq "/healthz from 127.0.0.2 over its per-IP limit" "$st" 503
  hog_end four 20
}

case_conn_emfile() {
  local t0 t1 pid st ticks hz
  hz=$(getconf CLK_TCK)
  # The agent runs with RLIMIT_NOFILE 400 (soft and hard).
  printf '#!/bin/sh\nexec prlimit --nofile=400:400 -- "%s" "$@"\n' "$BS_AGENT_BIN" >"$T/lowfd-agent"
  chmod +x "$T/lowfd-agent"
  local real=$BS_AGENT_BIN nfd
  BS_AGENT_BIN=$T/lowfd-agent
  export BLOBSWARM_AGENT_SOCKET_MODE=0666
  mkdir -p "$T/a"
  open_dirs a
  agent_start a
  unset BLOBSWARM_AGENT_SOCKET_MODE
  BS_AGENT_BIN=$real
  pid=${AGENT_PID[a]}
  hog_start idle unix "$(agent_sock a)" --conns 1100 --duration 10
  t0=$(cpu_ticks "$pid")
  sleep 3
  t1=$(cpu_ticks "$pid")
  ticks=$((t1 - t0))
  log "agent CPU over 3 s with 1,100 connections attempted: $ticks ticks ($hz per second)"
  expect_le "agent CPU over 3 s (ticks, 20 % of one core)" "$ticks" $((3 * hz / 5))
  st=$(curl -sS --max-time 3 -o /dev/null -w '%{http_code}' "$(agent_http a)/healthz" 2>/dev/null) || true
  expect_eq "/healthz while the Unix socket is flooded" "$st" 200
  # Out of descriptors all the same (the limit lowered under the running agent), another uid
  # connects: accept fails with EMFILE, and the accept loop must pause, not spin.
  nfd=$(find "/proc/$pid/fd" -mindepth 1 | wc -l)
  prlimit --pid "$pid" --nofile=$((nfd / 2)):$((nfd / 2)) # below the descriptors it holds
  hog_start more unix "$(agent_sock a)" --conns 200 --uid 12346 --duration 6
  t0=$(cpu_ticks "$pid")
  sleep 3
  t1=$(cpu_ticks "$pid")
  ticks=$((t1 - t0))
  log "agent CPU over 3 s at EMFILE: $ticks ticks"
  expect_le "agent CPU over 3 s at EMFILE (ticks, 20 % of one core)" "$ticks" $((3 * hz / 5))
  grep -q 'event=accept_failed errno=24' "$T/a/agent.log" || fail "no EMFILE seen: the test did not reach it"
  hog_end more 30
  hog_end idle 30
  alive "$pid" || fail "agent died"
  st=$(curl -sS --max-time 3 -o /dev/null -w '%{http_code}' "$(agent_http a)/healthz" 2>/dev/null) || true
  expect_eq "/healthz after the floods" "$st" 200
}

# Tenant A (the blob endpoint through the proxy, whose GETs take 15 s) floods fills; tenant B
# (the Azurite endpoint, direct) must still get its chunks filled, not missed.
case_conn_fair_fills() {
  local blob_a=conn-it/fair-a-$$.bin blob_b=conn-it/fair-b-$$.bin i st
  local secret=$BS_IT_SERVICE_SAS_HTTP
  proxy_start
  upload http data "$blob_a" 311 $((24 * MIB))
  upload http data "$blob_b" 312 $((4 * MIB))
  export BLOBSWARM_FILL_WORKERS_PER_TENANT=3
  agent_start a --chunk-bytes=1M --fill-workers=4
  unset BLOBSWARM_FILL_WORKERS_PER_TENANT
  proxy_rule "{\"kind\":\"stall\",\"ms\":15000,\"count\":1000,\"match\":\"$blob_a\"}"
  for ((i = 0; i < 20; i++)); do
    chunk_post a "$(chunk_json data "$blob_a" "$i" sas "$PROXY_EP" "$secret")" "$T/a$i" \
      >"$T/a$i.st" 2>&1 &
    PIDS+=("$!")
  done
  wait_metric a blobswarm_agent_fill_queue 10 20
  snap a 0
  for ((i = 0; i < 4; i++)); do
    st=$(chunk_post a "$(chunk_json data "$blob_b" "$i" sas "$BS_IT_HTTP_ENDPOINT" "$secret")" "$T/b$i")
    expect_eq "tenant B chunk $i: HTTP status" "$st" 200
    expect_eq "tenant B chunk $i while tenant A floods" "$(meta_field "$T/b$i" status)" filled
  done
  snap a 1
  expect_eq "tenant B: fills" "$(mdelta 0 1 "$FETCHES")" 4
}

# hello_answer_ms SOCKET: the answer_ms the agent announces in hello (0 when absent).
hello_answer_ms() {
  python3 - "$1" <<'PY'
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
m = json.dumps({'v': 1, 'op': 'hello'}).encode()
s.sendall(struct.pack('<I', len(m)) + m)
buf = b''
while len(buf) < 4 or len(buf) < 4 + struct.unpack('<I', buf[:4])[0]:
    d = s.recv(65536)
    if not d:
        break
    buf += d
print(json.loads(buf[4:]).get('answer_ms', 0))
PY
}

# timed_post ID JSON OUT: chunk_post in the background; its duration (ms) lands in OUT.ms.
timed_post() {
  (
    t0=$(date +%s%N)
    chunk_post "$1" "$2" "$3" >"$3.st" 2>&1 || true
    echo $((($(date +%s%N) - t0) / 1000000)) >"$3.ms"
  ) &
  PIDS+=("$!")
  TIMED_PID=$!
}

# The agent's worst answer stays within the answer time it announces (default 4 s, below the
# shim's 5 s agent timeout): request 2 waits for request 1's access check, which times out,
# then makes its own slow check, then waits for a slow fill. Each wait alone is within its
# own limit; together they were not.
case_conn_answer_deadline() {
  local blob=conn-it/deadline-$$.bin size=$((2 * MIB)) answer=4000 req
  proxy_start
  upload http data "$blob" 321 "$size"
  agent_start a
  req=$(chunk_json data "$blob" 0 sas "$PROXY_EP" "$BS_IT_SERVICE_SAS_HTTP")
  proxy_rule '{"kind":"stall","ms":2500,"count":1,"methods":["HEAD"]}' # 1's check times out
  timed_post a "$req" "$T/r1"
  sleep 0.2
  timed_post a "$req" "$T/r2"
  local r2=$TIMED_PID
  sleep 0.8
  proxy_rule '{"kind":"stall","ms":1900,"count":1,"methods":["HEAD"]}' # 2's check: slow, ok
  sleep 2
  proxy_rule "{\"kind\":\"stall\",\"ms\":10000,\"count\":1,\"match\":\"$blob\"}" # the fill
  wait_exit "$r2" 30 || fail "request 2 not answered"
  log "request 2: $(meta_field "$T/r2" status) ($(meta_field "$T/r2" reason)) after $(cat "$T/r2.ms") ms"
  expect_le "request 2's answer time (ms, answer_ms $answer + 300)" "$(cat "$T/r2.ms")" $((answer + 300))
  expect_eq "hello: answer_ms" "$(hello_answer_ms "$(agent_sock a)")" "$answer"
}

# SIGTERM while a client reads a 64 MiB chunk body at 8 MiB/s (more than the socket buffers
# hold): the drain waits for it.
case_conn_drain_body() {
  local blob=conn-it/drain-$$.bin size=$((64 * MIB)) st cpid
  upload http data "$blob" 331 "$size"
  agent_start a --drain-ms=30000 --chunk-bytes=64M
  local req
  req=$(chunk_json data "$blob" 0 sas "$BS_IT_HTTP_ENDPOINT" "$BS_IT_SERVICE_SAS_HTTP")
  st=$(chunk_post a "$req" "$T/fill")
  expect_eq "fill: chunk status" "$(meta_field "$T/fill" status)" filled
  curl -sS --max-time 60 --limit-rate 8M -o "$T/slow.body" -H 'Content-Type: application/json' \
    --data-binary "$req" "$(agent_http a)/v1/chunk" 2>"$T/slow.err" &
  cpid=$!
  PIDS+=("$cpid")
  sleep 1.5
  kill -TERM "${AGENT_PID[a]}"
  log "SIGTERM while the body is being read"
  wait_exit "$cpid" 60 || fail "curl still reading"
  [ "$EXIT_RC" = 0 ] || fail "body read during drain: curl exit $EXIT_RC: $(cat "$T/slow.err")"
  "$BS_GENDATA" --seed 331 --size "$size" | cmp -s - "$T/slow.body" ||
    fail "body read during drain is not the chunk ($(stat -c %s "$T/slow.body") bytes)"
  log "ok: the body read during the drain is whole and byte-exact"
  wait_exit "${AGENT_PID[a]}" 40 || fail "agent still running after the drain"
  expect_eq "agent exit status after SIGTERM" "$EXIT_RC" 0
}

case_conn_socket_mode() {
  local mode
  export BLOBSWARM_AGENT_SOCKET_MODE=0600
  agent_start a
  unset BLOBSWARM_AGENT_SOCKET_MODE
  mode=$(stat -c %a "$(agent_sock a)")
  expect_eq "socket mode with BLOBSWARM_AGENT_SOCKET_MODE=0600" "$mode" 600
  agent_stop a
  agent_start a
  mode=$(stat -c %a "$(agent_sock a)")
  expect_eq "socket mode by default" "$mode" 660
}
