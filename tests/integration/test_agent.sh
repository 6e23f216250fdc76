#!/usr/bin/env bash
# Integration tests of the node agent (blobswarm-agent) with the shim, against the Azurites of
# tests/tools/itenv.sh. Each case starts its own agent(s) in a temporary directory, and stops
# them and deletes what it uploaded when it ends, whatever happens.
#
# usage: test_agent.sh CASE...     (tests/integration/agent.cmake registers one CTest per case)
# Environment: BS_IT_DIR (the integration environment), BS_GENDATA, BS_AGENT_BIN (the agent),
#   BS_SHIM_LIB (libblobswarm.so), BS_READ_CLI (blobswarm-read), BS_AGENT_HERD (agent_herd,
#   case single_flight), BS_KEEP_TMP=1 keeps the temporary directory for a post-mortem.
#
# Origin requests are counted by tests/tools/faultproxy.mjs put in front of the plain-HTTP
# Azurite: the shim is pointed at it (BLOBSWARM_BLOB_ENDPOINT), so both the shim's own reads
# and the agent's fills (the agent reads the endpoint the shim delegates) pass through it, and
# its rangedGets count is every byte-range read that reached "Azure".
#
# Cases:
#   cold_warm        Unix route: cold then warm load byte-exact; warm: zero origin GETs
#   restart          the store survives an agent restart: the next load is warm; a chunk file
#                    truncated while the agent was down is dropped and refilled
#   overwrite        blob overwritten in Azurite: the next load returns the new bytes
#   sas_scope        a SAS for container A gets nothing cached from container B; expired SAS,
#                    anonymous caller, wrong account: nothing (POST /v1/chunk with curl)
#   endpoint_refused delegated requests naming a host/scheme/account not allowed are refused
#                    without any connection; a shim behind such an endpoint still loads
#   kill_midload     agent SIGKILLed mid-load: the load completes via Azure, byte-exact; then
#                    loads with the dead socket left behind
#   frozen           agent SIGSTOPped: a load gives up on it after BLOBSWARM_AGENT_TIMEOUT_MS
#                    and completes from Azure, byte-exact
#   http_route       BLOBSWARM_AGENT=http://...: cold + warm byte-exact, warm zero origin GETs,
#                    also with unaligned read sizes
#   single_flight    200 concurrent callers of one missing chunk: one origin fetch
#   pending          a fill slower than the answer time: callers are told "pending" and ask
#                    again; the chunk is read from the origin once
#   sigterm_drain    SIGTERM during a load whose fills end within BLOBSWARM_DRAIN_MS: exit 0
#                    in time, load byte-exact
#   sigterm_stuck    SIGTERM while a fill is stuck at the origin longer than the drain time:
#                    still exit 0 within BLOBSWARM_DRAIN_MS + slack, load byte-exact
#   sigterm_check    the same while an access check (HEAD) is stuck at the origin
#   grid_change      the agent restarted on its store with another BLOBSWARM_CHUNK_BYTES:
#                    loads stay byte-exact
#   http_grid        HTTP route, agent grid 16 MiB: a fresh shim's concurrent first reads
#                    (made on its 8 MiB guess) stay byte-exact
#   eviction         a 64 MiB store and a 100 MiB blob: within budget, byte-exact
#   corrupt_chunk    a byte flipped in a stored chunk: next load byte-exact, the chunk is
#                    dropped and refilled (Unix route)
#   corrupt_http     the same over the HTTP route
#   auth_modes       every identity delegates to the agent and loads byte-exact through it
#   metrics_lint     promtool check metrics on /metrics after traffic on both routes
set -Eeuo pipefail
SUITE=test_agent
[ $# -ge 1 ] || { sed -n '2,/^set -Eeuo/p' "$0" | sed '$d' >&2; exit 2; }
# shellcheck source=tests/integration/agentlib.sh
. "$(dirname "${BASH_SOURCE[0]}")/agentlib.sh"

# ---------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------
# Reads through the proxy with the account key (delegated to the agent as a per-blob SAS).
via_proxy() { READ_ENV=("BLOBSWARM_BLOB_ENDPOINT=$PROXY_EP"); }

case_cold_warm() {
  local blob=agent-it/cold-warm-$$.bin size=$((40 * MIB + 12345)) n
  n=$(chunks_of "$size")
  proxy_start
  via_proxy
  upload http data "$blob" 21 "$size"
  agent_start a
  snap a 0
  proxy_reset
  load cold sharedkey "$(agent_sock a)" data "$blob" "$size" 21
  snap a 1
  expect_eq "cold: agent origin fetches" "$(mdelta 0 1 "$FETCHES")" "$n"
  expect_eq "cold: agent origin bytes" "$(mdelta 0 1 "$OBYTES")" "$size"
  expect_eq "cold: ranged GETs at the origin (agent fills only)" "$(proxy_stat rangedGets)" "$n"
  expect_eq "cold: misses" "$(mdelta 0 1 "$REQ{status=\"miss\"}")" 0
  proxy_reset
  load warm sharedkey "$(agent_sock a)" data "$blob" "$size" 21
  snap a 2
  expect_eq "warm: ranged GETs at the origin" "$(proxy_stat rangedGets)" 0
  expect_eq "warm: agent origin fetches" "$(mdelta 1 2 "$FETCHES")" 0
  expect_eq "warm: bytes served from origin" "$(mdelta 1 2 "$SERVED_ORIGIN")" 0
  expect_eq "warm: filled" "$(mdelta 1 2 "$REQ{status=\"filled\"}")" 0
  expect_eq "warm: misses" "$(mdelta 1 2 "$REQ{status=\"miss\"}")" 0
  expect_ge "warm: bytes served from the store" "$(mdelta 1 2 "$SERVED_LOCAL")" "$size"
  # The streamer's unaligned pattern (pieces straddle chunks and blocks), still warm.
  proxy_reset
  load warm-unaligned sharedkey "$(agent_sock a)" data "$blob" "$size" 21 \
    --chunk-bytes 3000017 --threads 5
  expect_eq "warm unaligned: ranged GETs at the origin" "$(proxy_stat rangedGets)" 0
  # Served bytes are the bytes used, not the chunks touched: each of the 15 pieces uses a
  # part of at most 2 chunks, each part rounded out to at most 2 extra 64 KiB blocks.
  snap a 3
  expect_ge "warm unaligned: bytes served" "$(mdelta 2 3 "$SERVED_LOCAL")" "$size"
  expect_le "warm unaligned: bytes served" "$(mdelta 2 3 "$SERVED_LOCAL")" \
    $((size + 15 * 2 * 2 * 65536))
}

case_restart() {
  local blob=agent-it/restart-$$.bin size=$((24 * MIB + 999)) n
  n=$(chunks_of "$size")
  proxy_start
  via_proxy
  upload http data "$blob" 22 "$size"
  agent_start a
  load cold sharedkey "$(agent_sock a)" data "$blob" "$size" 22
  agent_stop a TERM
  expect_eq "agent exit status after SIGTERM" "$EXIT_RC" 0
  agent_start a
  grep -q "event=store_open .* chunks=$n " "$T/a/agent.log" ||
    fail "restarted agent did not index $n chunks: $(grep event=store_open "$T/a/agent.log" | tail -n1)"
  snap a 0
  expect_eq "restart: blobswarm_store_chunks" "$(mval 0 blobswarm_store_chunks)" "$n"
  proxy_reset
  load warm-after-restart sharedkey "$(agent_sock a)" data "$blob" "$size" 22
  snap a 1
  expect_eq "after restart: ranged GETs at the origin" "$(proxy_stat rangedGets)" 0
  expect_eq "after restart: agent origin fetches" "$(mval 1 "$FETCHES")" 0
  expect_ge "after restart: hits" "$(mval 1 "$REQ{status=\"hit\"}")" "$n"
  # A chunk file cut short while the agent was down (a crash mid-write, a full disk): the
  # start-up scan drops it, the next load refills that one chunk.
  agent_stop a TERM
  local victim
  victim=$(find "$T/a/store" -name '*.chunk' | sort | head -n1)
  chattr -i "$victim" 2>/dev/null || true # immutable where the agent could make it so
  truncate -s $(($(stat -c %s "$victim") / 2)) "$victim"
  agent_start a
  grep -q "event=store_open .* chunks=$((n - 1)) .*dropped=1" "$T/a/agent.log" ||
    fail "restart over a truncated chunk file: $(grep event=store_open "$T/a/agent.log" | tail -n1)"
  log "ok: the truncated chunk file was dropped at start-up"
  proxy_reset
  load after-truncation sharedkey "$(agent_sock a)" data "$blob" "$size" 22
  snap a 2
  expect_eq "after truncation: agent origin fetches" "$(mval 2 "$FETCHES")" 1
  expect_eq "after truncation: ranged GETs at the origin" "$(proxy_stat rangedGets)" 1
}

case_overwrite() {
  local blob=agent-it/overwrite-$$.bin size=$((16 * MIB + 4097)) n
  n=$(chunks_of "$size")
  proxy_start
  via_proxy
  upload http data "$blob" 31 "$size"
  agent_start a
  load v1 sharedkey "$(agent_sock a)" data "$blob" "$size" 31
  load v1-warm sharedkey "$(agent_sock a)" data "$blob" "$size" 31
  # Same name, same size, other bytes: only the ETag tells the versions apart.
  upload http data "$blob" 32 "$size"
  snap a 0
  proxy_reset
  load v2 sharedkey "$(agent_sock a)" data "$blob" "$size" 32
  snap a 1
  expect_eq "after overwrite: agent fills of the new version" "$(mdelta 0 1 "$FETCHES")" "$n"
  proxy_reset
  load v2-warm sharedkey "$(agent_sock a)" data "$blob" "$size" 32
  expect_eq "new version warm: ranged GETs at the origin" "$(proxy_stat rangedGets)" 0
  # A different size too: the old version's geometry must not leak into the new one.
  upload http data "$blob" 33 $((size - 3 * MIB))
  load v3 sharedkey "$(agent_sock a)" data "$blob" $((size - 3 * MIB)) 33
}

case_sas_scope() {
  local st ep=$BS_IT_HTTPS_ENDPOINT small=$((MIB + 123))
  agent_start a
  # Cache data/small.bin with the container SAS of `data`, through the shim.
  load data-sas service-sas "$(agent_sock a)" data small.bin "$small" 1
  snap a 0
  expect_ge "data/small.bin cached" "$(mval 0 blobswarm_store_chunks)" 1
  # Positive control of the curl harness: the same SAS gets the cached bytes.
  st=$(chunk_post a "$(chunk_json data small.bin 0 sas "$ep" "$BS_IT_SERVICE_SAS_HTTPS")" "$T/ok")
  expect_eq "control: HTTP status" "$st" 200
  expect_eq "control: chunk status" "$(meta_field "$T/ok" status)" hit
  "$BS_GENDATA" --seed 1 --size "$small" | cmp -s - "$T/ok.body" ||
    fail "control: body is not data/small.bin"
  log "ok: control body is byte-exact"
  local who secret kind
  for who in other-container-sas expired-sas anonymous; do
    case $who in
      other-container-sas) kind=sas secret=$BS_IT_OTHER_SAS_HTTPS ;;
      expired-sas) kind=sas secret=$BS_IT_EXPIRED_SAS_HTTPS ;;
      anonymous) kind=none secret= ;;
    esac
    st=$(chunk_post a "$(chunk_json data small.bin 0 "$kind" "$ep" "$secret")" "$T/$who")
    expect_eq "$who: HTTP status" "$st" 200
    expect_eq "$who: chunk status" "$(meta_field "$T/$who" status)" denied
    expect_eq "$who: body bytes" "$(stat -c %s "$T/$who.body")" 0
  done
  # The other container's SAS through the shim: the read fails, nothing is served.
  snap a 1
  READ_ENV=("AZURE_STORAGE_SAS_TOKEN=$BS_IT_OTHER_SAS_HTTPS")
  if load_rc other-sas-shim service-sas "$(agent_sock a)" data small.bin "$small" 1; then
    fail "a SAS for container other read data/small.bin"
  fi
  READ_ENV=()
  snap a 2
  expect_eq "other SAS via shim: chunks served" \
    $(($(mdelta 1 2 "$REQ{status=\"hit\"}") + $(mdelta 1 2 "$REQ{status=\"filled\"}"))) 0
  # The right SAS still works afterwards (the refusals did not poison the grant).
  st=$(chunk_post a "$(chunk_json data small.bin 0 sas "$ep" "$BS_IT_SERVICE_SAS_HTTPS")" "$T/ok2")
  expect_eq "control again: chunk status" "$(meta_field "$T/ok2" status)" hit
  # The other SAS does read its own container through the agent.
  READ_ENV=("AZURE_STORAGE_SAS_TOKEN=$BS_IT_OTHER_SAS_HTTPS")
  load other-own service-sas "$(agent_sock a)" other tiny.bin 8 4 \
    --chunk-bytes 8
  snap a 3
  # The expired SAS is refused before any access check (its se is in the past).
  expect_ge "refused access checks" "$(mval 3 'blobswarm_agent_access_checks_total{result="refused"}')" 2
  expect_ge "refused as expired" "$(mval 3 'blobswarm_agent_refusals_total{reason="expired"}')" 1
}

case_endpoint_refused() {
  local st ep port
  proxy_start
  # An agent that delegates only to the HTTPS Azurite: the proxy (HTTP) is not allowed.
  agent_start a --allowed-endpoints='https://127.0.0.1:*/devstoreaccount1'
  port=${BS_IT_HTTPS_ENDPOINT#https://127.0.0.1:}
  port=${port%%/*}
  snap a 0
  proxy_reset
  local n=0 case_ep acct
  while IFS='|' read -r case_ep acct; do
    [ -n "$case_ep" ] || continue
    n=$((n + 1))
    st=$(chunk_post a "$(chunk_json data small.bin 0 sas "$case_ep" "$BS_IT_SERVICE_SAS_HTTP" "$acct")" "$T/ep$n")
    expect_eq "endpoint $case_ep ($acct): HTTP status" "$st" 200
    expect_eq "endpoint $case_ep ($acct): chunk status" "$(meta_field "$T/ep$n" status)" error
    grep -q 'not allowed' "$T/ep$n.meta" || fail "reason does not say 'not allowed': $(cat "$T/ep$n.meta")"
  done <<EOF
$PROXY_EP|$ACCOUNT
https://evil.example.com/$ACCOUNT|$ACCOUNT
https://$ACCOUNT.blob.core.windows.net.evil.example.com|$ACCOUNT
https://127.0.0.1:$port@evil.example.com/$ACCOUNT|$ACCOUNT
https://127.0.0.1:$port/$ACCOUNT/../other|$ACCOUNT
https://127.0.0.1:$port/$ACCOUNT?x=1|$ACCOUNT
https://127.0.0.1:$port/otheraccount|otheraccount
https://127.0.0.1:$port/$ACCOUNT|otheraccount
EOF
  snap a 1
  expect_eq "refused: errors{endpoint_not_allowed}" \
    "$(mdelta 0 1 "$ERRORS{kind=\"endpoint_not_allowed\"}")" "$n"
  expect_eq "refused: requests that reached the disallowed proxy" "$(proxy_stat requests)" 0
  expect_eq "refused: origin fetches" "$(mval 1 "$FETCHES")" 0
  # A shim whose endpoint is not allowed still loads, from Azure itself.
  via_proxy
  load shim-not-allowed sharedkey "$(agent_sock a)" data small.bin $((MIB + 123)) 1
  snap a 2
  expect_eq "shim behind a disallowed endpoint: chunks served by the agent" \
    $(($(mdelta 1 2 "$REQ{status=\"hit\"}") + $(mdelta 1 2 "$REQ{status=\"filled\"}"))) 0
  expect_ge "shim behind a disallowed endpoint: its own GETs" "$(proxy_stat rangedGets)" 1
}

case_kill_midload() {
  local blob=agent-it/kill-$$.bin size=$((64 * MIB + 77))
  proxy_start
  via_proxy
  upload http data "$blob" 41 "$size"
  agent_start a
  proxy_rule '{"kind":"stall","ms":400,"count":100000}' # every GET takes 0.4 s
  load_bg killed sharedkey "$(agent_sock a)" data "$blob" "$size" 41
  wait_metric a "$FETCHES" 1 30
  alive "$LOAD_PID" || fail "the load ended before the agent could be killed; slow it down"
  agent_stop a KILL
  log "agent SIGKILLed after its first fill, load still running"
  wait_exit "$LOAD_PID" "$LOAD_S" || fail "load did not finish"
  [ "$EXIT_RC" = 0 ] || fail "load after SIGKILL: exit $EXIT_RC: $(tail -n 3 "$T/killed.out")"
  log "load killed: $(grep -o '[0-9.]* MiB/s.*' "$T/killed.out")"
  proxy_rule '{"kind":"none"}'
  [ -S "$(agent_sock a)" ] || fail "expected the dead agent's socket file to remain"
  load dead-socket sharedkey "$(agent_sock a)" data "$blob" "$size" 41
  load dead-http sharedkey "$(agent_http a)" data "$blob" "$size" 41
}

case_frozen() {
  local blob=agent-it/frozen-$$.bin size=$((32 * MIB + 5)) t0 ms
  proxy_start
  via_proxy
  upload http data "$blob" 42 "$size"
  agent_start a
  load warmup sharedkey "$(agent_sock a)" data "$blob" $((9 * MIB)) 42 # chunk 0 and 1 stored
  kill -STOP "${AGENT_PID[a]}"
  READ_ENV+=("BLOBSWARM_AGENT_TIMEOUT_MS=1500")
  t0=$(date +%s%N)
  load frozen sharedkey "$(agent_sock a)" data "$blob" "$size" 42
  ms=$((($(date +%s%N) - t0) / 1000000))
  kill -CONT "${AGENT_PID[a]}"
  expect_le "load with a frozen agent (ms)" "$ms" 15000
  agent_stop a TERM
  expect_eq "agent exit status after SIGCONT+SIGTERM" "$EXIT_RC" 0
}

case_http_route() {
  local blob=agent-it/http-$$.bin size=$((40 * MIB + 54321)) n
  n=$(chunks_of "$size")
  proxy_start
  via_proxy
  upload http data "$blob" 51 "$size"
  agent_start a
  snap a 0
  proxy_reset
  load http-cold sharedkey "$(agent_http a)" data "$blob" "$size" 51
  snap a 1
  expect_eq "http cold: agent origin fetches" "$(mdelta 0 1 "$FETCHES")" "$n"
  expect_eq "http cold: ranged GETs at the origin" "$(proxy_stat rangedGets)" "$n"
  proxy_reset
  load http-warm sharedkey "$(agent_http a)" data "$blob" "$size" 51
  snap a 2
  expect_eq "http warm: ranged GETs at the origin" "$(proxy_stat rangedGets)" 0
  expect_eq "http warm: agent origin fetches" "$(mdelta 1 2 "$FETCHES")" 0
  expect_eq "http warm: misses" "$(mdelta 1 2 "$REQ{status=\"miss\"}")" 0
  expect_ge "http warm: chunk requests over HTTP" \
    "$(mdelta 1 2 'blobswarm_agent_http_requests_total{endpoint="chunk"}')" "$n"
  # Unaligned calls: sub-ranges that start and end inside 64 KiB blocks.
  local cb
  for cb in 1000003 65537 12345678; do
    proxy_reset
    load "http-warm-$cb" sharedkey "$(agent_http a)" data "$blob" "$size" 51 \
      --chunk-bytes "$cb" --threads 6
    expect_eq "http warm, calls of $cb bytes: ranged GETs at the origin" \
      "$(proxy_stat rangedGets)" 0
  done
}

case_single_flight() {
  : "${BS_AGENT_HERD:?set BS_AGENT_HERD to agent_herd}"
  local blob=agent-it/herd-$$.bin size=$CHUNK callers=200
  proxy_start
  upload http data "$blob" 61 "$size"
  agent_start a --fill-wait-ms=20000 --answer-ms=25000
  # The one fill takes 3 s at the origin, so the callers arrive while it is in progress.
  proxy_rule '{"kind":"stall","ms":3000,"count":100000}'
  snap a 0
  proxy_reset
  load_herd herd "$(agent_sock a)" "$blob" "$callers" 0 "$size" 61
  snap a 1
  expect_eq "herd: agent origin fetches" "$(mdelta 0 1 "$FETCHES")" 1
  expect_eq "herd: ranged GETs at the origin" "$(proxy_stat rangedGets)" 1
  # Normally all 200 wait for the fill; on a loaded machine a few may connect after it.
  expect_ge "herd: requests answered 'filled' (waited for the one fill)" \
    "$(mdelta 0 1 "$REQ{status=\"filled\"}")" $((callers / 2))
  log "note: access checks (HEAD) for the herd: $(mdelta 0 1 'blobswarm_agent_access_checks_total{result="granted"}'), origin HEADs $(proxy_stat heads)"
}

# A fill slower than the request's fill wait (500 ms) and the answer time: the agent answers
# "pending" while fills move and the herd asks again instead of reading Azure a second time.
# Before the pending status, each caller got miss and read the chunk from Azure itself.
case_pending() {
  : "${BS_AGENT_HERD:?set BS_AGENT_HERD to agent_herd}"
  local blob=agent-it/pending-$$.bin size=$CHUNK callers=20
  proxy_start
  upload http data "$blob" 62 "$size"
  agent_start a --fill-wait-ms=500 --answer-ms=1000 --check-ms=500
  proxy_rule "{\"kind\":\"stall\",\"ms\":3000,\"count\":1,\"match\":\"$blob\",\"methods\":[\"GET\"]}"
  snap a 0
  proxy_reset
  load_herd herd "$(agent_sock a)" "$blob" "$callers" 0 "$size" 62
  snap a 1
  expect_eq "pending: ranged GETs at the origin (the fill only)" "$(proxy_stat rangedGets)" 1
  expect_ge "pending: answers 'pending' (asked again)" "$(mdelta 0 1 "$REQ{status=\"pending\"}")" "$callers"
  expect_eq "pending: answers 'miss'" "$(mdelta 0 1 "$REQ{status=\"miss\"}")" 0
}

# sigterm_case FILL_MS DRAIN_MS: SIGTERM while the first fills are at the origin.
sigterm_case() {
  local fill_ms=$1 drain_ms=$2 blob=agent-it/sigterm-$$.bin size=$((48 * MIB + 3))
  local slack_ms=3000
  proxy_start
  via_proxy
  upload http data "$blob" 71 "$size"
  agent_start a --drain-ms="$drain_ms" --fill-wait-ms=30000 --answer-ms=35000
  proxy_rule "{\"kind\":\"stall\",\"ms\":$fill_ms,\"count\":1,\"match\":\"$blob\"}"
  READ_ENV+=("BLOBSWARM_AGENT_TIMEOUT_MS=60000")
  load_bg drained sharedkey "$(agent_sock a)" data "$blob" "$size" 71
  # The first request (the 8-byte read of chunk 0) is being answered: its fill is stalled.
  wait_metric a 'blobswarm_agent_inflight_requests{transport="unix"}' 1 30
  kill -TERM "${AGENT_PID[a]}"
  log "SIGTERM with a fill in progress (origin answers after ${fill_ms} ms, drain ${drain_ms} ms)"
  wait_exit "${AGENT_PID[a]}" $(((drain_ms + fill_ms + 20000) / 1000)) ||
    fail "agent still running long after SIGTERM"
  log "agent exited $EXIT_RC after $EXIT_MS ms"
  expect_eq "agent exit status after SIGTERM" "$EXIT_RC" 0
  expect_le "agent exit time after SIGTERM (ms, drain $drain_ms + slack $slack_ms)" \
    "$EXIT_MS" $((drain_ms + slack_ms))
  wait_exit "$LOAD_PID" "$LOAD_S" || fail "load did not finish"
  [ "$EXIT_RC" = 0 ] || fail "load during SIGTERM: exit $EXIT_RC: $(tail -n 3 "$T/drained.out")"
  log "load drained: $(grep -o '[0-9.]* MiB/s.*' "$T/drained.out")"
  grep -q 'event=exit rc=0' "$T/a/agent.log" || fail "agent log has no event=exit rc=0"
}

case_sigterm_drain() { sigterm_case 1000 3000; }
case_sigterm_stuck() { sigterm_case 8000 1000; }

# SIGTERM while a Unix-socket request is in its access check (the agent's HEAD to the origin),
# which outlasts the drain time. The agent must neither wait for it unboundedly nor free the
# service under it (an ASan build of the agent shows a heap-use-after-free here).
case_sigterm_check() {
  local small=$((MIB + 123)) drain_ms=500 slack_ms=3000
  proxy_start
  via_proxy
  agent_start a --drain-ms="$drain_ms"
  # The shim's own HEAD, then the agent's access check: each answered after 4 s.
  proxy_rule '{"kind":"stall","ms":4000,"count":2,"methods":["HEAD"]}'
  READ_ENV+=("BLOBSWARM_AGENT_TIMEOUT_MS=20000")
  load_bg checking sharedkey "$(agent_sock a)" data small.bin "$small" 1
  wait_metric a 'blobswarm_agent_inflight_requests{transport="unix"}' 1 20
  kill -TERM "${AGENT_PID[a]}"
  wait_exit "${AGENT_PID[a]}" 30 || fail "agent still running 30 s after SIGTERM"
  log "agent exited $EXIT_RC after $EXIT_MS ms"
  expect_eq "agent exit status after SIGTERM" "$EXIT_RC" 0
  expect_le "agent exit time after SIGTERM (ms)" "$EXIT_MS" $((drain_ms + slack_ms))
  ! grep -q 'AddressSanitizer' "$T/a/agent.log" || fail "the agent's sanitizer reported an error"
  wait_exit "$LOAD_PID" "$LOAD_S" || fail "load did not finish"
  [ "$EXIT_RC" = 0 ] || fail "load during SIGTERM: exit $EXIT_RC: $(tail -n 3 "$T/checking.out")"
}

# The store outlives an agent whose chunk grid changed (BLOBSWARM_CHUNK_BYTES 8M -> 4M on the
# same store directory): chunks of the old grid must never be served as chunks of the new one.
# 12 MiB: chunk 1 of the 8 MiB grid is [8M, 12M), 4 MiB long, exactly as long as chunk 1
# of the 4 MiB grid, [4M, 8M).
case_grid_change() {
  local blob=agent-it/grid-$$.bin size=$((12 * MIB))
  proxy_start
  via_proxy
  upload http data "$blob" 91 "$size"
  agent_start a --chunk-bytes=8M
  load grid8 sharedkey "$(agent_sock a)" data "$blob" "$size" 91
  agent_stop a TERM
  agent_start a --chunk-bytes=4M
  load grid4 sharedkey "$(agent_sock a)" data "$blob" "$size" 91
  load grid4-http sharedkey "$(agent_http a)" data "$blob" "$size" 91 --chunk-bytes 1000000
  agent_stop a TERM
  agent_start a --chunk-bytes=16M
  load grid16 sharedkey "$(agent_sock a)" data "$blob" "$size" 91
}

# HTTP route: a fresh shim does not know the agent's grid until a reply tells it; its first,
# concurrent reads must not take another grid's chunk for theirs. Agent grid 16 MiB, blob
# 24 MiB: the agent's chunk 1 is [16M, 24M), 8 MiB long like the shim's guessed [8M, 16M).
case_http_grid() {
  : "${BS_AGENT_HERD:?set BS_AGENT_HERD to agent_herd}"
  local blob=agent-it/http-grid-$$.bin size=$((24 * MIB))
  proxy_start
  upload http data "$blob" 92 "$size"
  agent_start a --chunk-bytes=16M
  load_herd first-reads "$(agent_http a)" "$blob" 24 0 "$size" 92
  load_herd again "$(agent_http a)" "$blob" 24 0 "$size" 92
}

# load_herd LABEL AGENT BLOB THREADS OFFSET LENGTH SEED: agent_herd through the proxy.
load_herd() {
  BLOBSWARM_AGENT=$2 BLOBSWARM_AGENT_TIMEOUT_MS=30000 BLOBSWARM_LOG_LEVEL=warn \
    timeout "$LOAD_S" bash "$TOOLS/run-with-auth.sh" sharedkey -- \
    env "BLOBSWARM_BLOB_ENDPOINT=$PROXY_EP" "$BS_AGENT_HERD" "$BS_SHIM_LIB" "$ACCOUNT" data \
    "$3" "$4" "$5" "$6" "$7" >"$T/$1.out" 2>&1 ||
    fail "agent_herd $1 exited $?: $(tail -n 3 "$T/$1.out")"
  log "herd $1: $(tail -n1 "$T/$1.out")"
}

# A store smaller than the blob: eviction keeps it within its budget, loads stay byte-exact.
case_eviction() {
  local blob=agent-it/evict-$$.bin size=$((100 * MIB + 3)) budget=$((64 * MIB))
  proxy_start
  via_proxy
  upload http data "$blob" 93 "$size"
  agent_start a --store-budget=64M
  load evict1 sharedkey "$(agent_sock a)" data "$blob" "$size" 93
  load evict2 sharedkey "$(agent_http a)" data "$blob" "$size" 93 --chunk-bytes 3000000
  load evict3 sharedkey "$(agent_sock a)" data "$blob" "$size" 93 --threads 3
  snap a 1
  expect_le "store bytes" "$(mval 1 blobswarm_store_bytes)" "$budget"
  expect_ge "evicted chunks" "$(mval 1 blobswarm_store_evicted_chunks_total)" 1
  expect_eq "store put errors" "$(mval 1 blobswarm_store_put_errors_total)" 0
  local du_b
  du_b=$(du -sb "$T/a/store" | cut -f1)
  expect_le "bytes on disk under the store" "$du_b" $((budget + MIB))
}

# corrupt_case ROUTE(unix|http)
corrupt_case() {
  local route=$1 blob=agent-it/corrupt-$1-$$.bin size=$((16 * MIB + 200011)) n addr f files
  n=$(chunks_of "$size")
  proxy_start
  via_proxy
  upload http data "$blob" 81 "$size"
  agent_start a
  if [ "$route" = unix ]; then addr=$(agent_sock a); else addr=$(agent_http a); fi
  load cold sharedkey "$addr" data "$blob" "$size" 81
  mapfile -t files < <(find "$T/a/store" -name '*.chunk' | sort)
  expect_eq "chunk files on disk" "${#files[@]}" "$n"
  # One byte in the middle of a block of every chunk file (the data precede the trailer).
  for f in "${files[@]}"; do
    flip_byte "$f" 100000
  done
  log "flipped byte 100000 of $n chunk files"
  snap a 0
  proxy_reset
  load after-corruption sharedkey "$addr" data "$blob" "$size" 81
  snap a 1
  log "after corruption: origin GETs $(proxy_stat rangedGets), agent fills $(mdelta 0 1 "$FETCHES"), dropped $(mdelta 0 1 blobswarm_store_dropped_corrupt_total)"
  # The agent must have learnt that the chunks were bad: dropped, and refilled by now or by
  # the next load; after that every load is warm and byte-exact again.
  load settle sharedkey "$addr" data "$blob" "$size" 81
  snap a 2
  expect_eq "corrupt chunks dropped by the agent" \
    "$(mdelta 0 2 blobswarm_store_dropped_corrupt_total)" "$n"
  expect_eq "refills of the dropped chunks" "$(mdelta 0 2 "$FETCHES")" "$n"
  proxy_reset
  load warm-again sharedkey "$addr" data "$blob" "$size" 81
  expect_eq "warm again: ranged GETs at the origin" "$(proxy_stat rangedGets)" 0
}

case_corrupt_chunk() { corrupt_case unix; }
case_corrupt_http() { corrupt_case http; }

case_auth_modes() {
  local mode container small=$((MIB + 123))
  agent_start a
  snap a 0
  local served=0
  for mode in sharedkey conn-https conn-sas account-sas service-sas public client-secret \
    workload-identity imds appservice; do
    container=data
    [ "$mode" = public ] && container=public
    snap a before
    load "mode-$mode" "$mode" "$(agent_sock a)" "$container" small.bin "$small" 1
    snap a after
    served=$(($(mdelta before after "$REQ{status=\"hit\"}") + $(mdelta before after "$REQ{status=\"filled\"}")))
    [ "$served" -ge 1 ] || fail "mode $mode: the agent served nothing ($(grep -h . "$T/m.after" | grep "$REQ" | tr '\n' ' '))"
    log "ok: mode $mode: $served chunk requests served by the agent"
  done
  snap a 1
  expect_eq "denied" "$(mdelta 0 1 "$REQ{status=\"denied\"}")" 0
  expect_eq "errors" "$(mdelta 0 1 "$REQ{status=\"error\"}")" 0
  expect_eq "misses" "$(mdelta 0 1 "$REQ{status=\"miss\"}")" 0
}

case_metrics_lint() {
  local small=$((MIB + 123)) rc=0
  agent_start a
  load unix service-sas "$(agent_sock a)" data small.bin "$small" 1
  load http service-sas "$(agent_http a)" data small.bin "$small" 1
  chunk_post a "$(chunk_json data small.bin 0 sas https://evil.example.com/$ACCOUNT x)" "$T/bad" >/dev/null
  curl -fsS --max-time 5 "$(agent_http a)/healthz" >/dev/null || fail "/healthz"
  [ -x "$TOOLS/check-metrics.sh" ] || [ -f "$TOOLS/check-metrics.sh" ] ||
    fail "tests/tools/check-metrics.sh missing"
  bash "$TOOLS/check-metrics.sh" "$(agent_http a)/metrics" || rc=$?
  [ "$rc" = 77 ] && exit 77
  [ "$rc" = 0 ] || fail "check-metrics.sh exited $rc"
  log "ok: promtool check metrics"
}


run_cases "$@"
