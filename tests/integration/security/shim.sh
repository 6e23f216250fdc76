# shellcheck shell=bash
# Adversarial cases: shim (see tests/integration/test_security.sh). The shim side of the trust
# boundary: whom it hands a credential to, what it hands over, and how long it waits.

# fake_start NAME [UID [fakeagent options...]]: a fake agent (tests/tools/fakeagent.mjs)
# listening on $T/NAME/agent.sock, run as UID (default: ours) through setpriv; what it receives
# goes to $T/NAME/record.
fake_start() {
  local uid=${2:-$(id -u)} d=$T/$1 pid i
  shift
  [ $# -gt 0 ] && shift
  mkdir -p "$d"
  # The fake may run as another uid: it creates its socket and record in $d.
  chmod 0711 "$T"
  chmod 0777 "$d"
  local cmd=(node "$TOOLS/fakeagent.mjs" --socket "$d/agent.sock" --record "$d/record"
    --max-lifetime-s 600 "$@")
  if [ "$uid" != "$(id -u)" ]; then
    cmd=(setpriv --reuid="$uid" --regid="$uid" --clear-groups "${cmd[@]}")
  fi
  "${cmd[@]}" >"$d/fake.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for ((i = 0; i < 200; i++)); do
    grep -q '^listening$' "$d/fake.log" 2>/dev/null && break
    alive "$pid" || fail "fake agent exited: $(cat "$d/fake.log")"
    sleep 0.05
  done
  grep -q '^listening$' "$d/fake.log" || fail "fake agent did not start"
  [ "$(stat -c %u "$d/agent.sock")" = "$uid" ] || fail "fake agent's socket is not owned by $uid"
}

# A process of another uid bound the agent's socket path (a pod with the hostPath, or a
# process racing a restarting agent): the shim must send it nothing at all, not even a hello,
# and still load the blob byte-exact from Azure.
case_shim_fake_agent() {
  local size=$((20 * MIB)) mode
  upload https data sec-shim-fake.bin 61 "$size"
  fake_start fake 65534
  for mode in sharedkey client-secret service-sas; do
    load "fake-$mode" "$mode" "$(agent_sock fake)" data sec-shim-fake.bin "$size" 61
    [ ! -s "$T/fake/record" ] ||
      fail "$mode: the fake agent (uid 65534) received $(wc -l <"$T/fake/record") frame(s): $(head -c 300 "$T/fake/record")"
    log "ok: $mode: byte-exact, the fake agent received nothing"
  done
  grep -q 'event=agent_refused' "$T/fake-sharedkey.out" ||
    fail "the refusal was not logged: $(tail -n 3 "$T/fake-sharedkey.out")"
}

# tok_start: a private token server (tests/tools/tokenserver.mjs; the shared one is not ours to
# slow down); sets TOK_URL.
tok_start() {
  local pid i
  node "$TOOLS/tokenserver.mjs" --tenant "$BS_IT_TENANT" --client-id "$BS_IT_CLIENT_ID" \
    --client-secret "$BS_IT_CLIENT_SECRET" --federated-token-file "$BS_IT_FEDERATED_TOKEN_FILE" \
    --identity-header "$BS_IT_IDENTITY_HEADER" --port-file "$T/tok.port" >"$T/tok.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for ((i = 0; i < 200; i++)); do
    [ -s "$T/tok.port" ] && break
    alive "$pid" || fail "token server exited: $(cat "$T/tok.log")"
    sleep 0.05
  done
  [ -s "$T/tok.port" ] || fail "token server did not start"
  TOK_URL=http://127.0.0.1:$(cat "$T/tok.port")
}
tok_control() { curl -fsS --max-time 5 -X POST --data "$1" "$TOK_URL/control" >/dev/null || fail "token control $1"; }
# tok_count issued|rejected: client-secret tokens since the start.
tok_count() { curl -fsS --max-time 5 "$TOK_URL/stats" | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s)['$1'].client_secret))"; }

# herd LABEL MODE BLOB THREADS OFFSET LENGTH SEED: THREADS blob_reads released at once
# (agent_herd, no agent) with READ_ENV; output in $T/LABEL.out; returns agent_herd's status.
herd() {
  local label=$1 mode=$2
  shift 2
  : "${BS_AGENT_HERD:?set BS_AGENT_HERD to agent_herd}"
  BLOBSWARM_AGENT=off BLOBSWARM_LOG_LEVEL=${SHIM_LOG_LEVEL:-warn} timeout "$LOAD_S" \
    bash "$TOOLS/run-with-auth.sh" "$mode" -- env "${READ_ENV[@]}" \
    "$BS_AGENT_HERD" "$BS_SHIM_LIB" "$ACCOUNT" data "$@" >"$T/$label.out" 2>&1
}

# A slow, failing token endpoint meets 8 concurrent blob_reads of a process without a token:
# one fetch is in flight at a time and everyone waiting for it shares its result, instead of
# each caller retrying it in turn behind a lock (8 x the endpoint's delay).
case_shim_token_single_flight() {
  local size=$((8 * MIB)) t0 ms n
  upload https data sec-shim-tok.bin 62 "$size"
  tok_start
  READ_ENV=(AZURE_AUTHORITY_HOST="$TOK_URL")
  # Every token request waits 1.5 s, then fails (HTTP 500).
  tok_control '{"delay_ms":{"client_secret":1500},"fail":{"client_secret":{"count":1000,"status":500}}}'
  t0=$(date +%s%N)
  if herd tok-fail client-secret sec-shim-tok.bin 8 0 "$size" 62; then
    fail "the reads succeeded without a token"
  fi
  ms=$((($(date +%s%N) - t0) / 1000000))
  n=$(tok_count rejected)
  log "8 concurrent readers, failing endpoint: $n token request(s), load failed after $ms ms"
  expect_le "token requests while 8 callers wanted one (failing endpoint)" "$n" 2
  # The endpoint recovers: the next load works and fetches one token for all 8 readers.
  tok_control '{"reset":true}'
  tok_control '{"delay_ms":{"client_secret":1500}}'
  herd tok-ok client-secret sec-shim-tok.bin 8 0 "$size" 62 ||
    fail "reads after the token endpoint recovered (exit $?): $(tail -n 3 "$T/tok-ok.out")"
  expect_eq "tokens issued for 8 concurrent readers" "$(tok_count issued)" 1
}

# What each credential hands the agent, recorded by an accepted fake agent (ours, same uid):
# Shared Key and bearer identities -> a read-only SAS for exactly the one blob (sr=b, sp=r;
# bearer: user-delegation, skoid=...), never an account key or a bearer token; a user's own
# SAS -> as it is (docs/protocol.md). A minted SAS reads that blob from Azure and nothing else.
case_shim_narrow_delegation() {
  local size=$((9 * MIB)) mode rec kind secret st key
  upload https data sec-shim-narrow.bin 63 "$size"
  upload https data sec-shim-narrow-other.bin 64 "$MIB"
  fake_start narrow
  READ_ENV=(BLOBSWARM_AGENT_UID="$(id -u)")
  for mode in sharedkey client-secret workload-identity imds appservice service-sas; do
    : >"$T/narrow/record"
    load "narrow-$mode" "$mode" "$(agent_sock narrow)" data sec-shim-narrow.bin "$size" 63
    rec=$(grep '"op\\":\\"chunk' "$T/narrow/record" | head -n1)
    [ -n "$rec" ] || fail "$mode: the accepted agent received no chunk request"
    kind=$(node -e 'const r=JSON.parse(process.argv[1]);console.log(JSON.parse(r.frame).auth.kind)' "$rec")
    secret=$(node -e 'const r=JSON.parse(process.argv[1]);console.log(JSON.parse(r.frame).auth.secret)' "$rec")
    grep -q 'eyJ' "$T/narrow/record" && fail "$mode: a JWT (bearer token) reached the agent"
    key=${BS_IT_HTTPS_CONN#*AccountKey=}
    grep -qF "${key%%;*}" "$T/narrow/record" &&
      fail "$mode: the account key reached the agent"
    case $mode in
      service-sas)
        expect_eq "$mode: delegated kind" "$kind" sas
        [ "$secret" = "$BS_IT_SERVICE_SAS_HTTPS" ] || fail "$mode: the user's SAS was altered"
        ;;
      *)
        expect_eq "$mode: delegated kind" "$kind" sas
        case "&$secret&" in *"&sr=b&"*) ;; *) fail "$mode: SAS not scoped to one blob: sr=${secret#*sr=}" ;; esac
        case "&$secret&" in *"&sp=r&"*) ;; *) fail "$mode: SAS not read-only" ;; esac
        if [ "$mode" != sharedkey ]; then
          case "&$secret&" in *"&skoid="*) ;; *) fail "$mode: not a user-delegation SAS" ;; esac
        fi
        # The SAS reads this blob from Azure, and no other.
        st=$(curl -s --cacert "$BS_IT_CA_BUNDLE" -o /dev/null -w '%{http_code}' -r 0-15 \
          "$BS_IT_HTTPS_ENDPOINT/data/sec-shim-narrow.bin?$secret")
        expect_eq "$mode: minted SAS reads its blob (HTTP)" "$st" 206
        st=$(curl -s --cacert "$BS_IT_CA_BUNDLE" -o /dev/null -w '%{http_code}' -r 0-15 \
          "$BS_IT_HTTPS_ENDPOINT/data/sec-shim-narrow-other.bin?$secret")
        expect_eq "$mode: minted SAS reads another blob (HTTP)" "$st" 403
        ;;
    esac
    log "ok: $mode delegates $kind ($(echo "$secret" | tr '&' '\n' | cut -d= -f1 | tr '\n' ' '))"
  done
  # The longest delegation window (1 day: each SAS lives up to 2 days) still gets a user
  # delegation key that outlives the SAS, so bearer identities still delegate.
  : >"$T/narrow/record"
  READ_ENV=(BLOBSWARM_AGENT_UID="$(id -u)" BLOBSWARM_DELEGATE_WINDOW_S=86400)
  load narrow-long-window client-secret "$(agent_sock narrow)" data sec-shim-narrow.bin "$size" 63
  grep -q '"op\\":\\"chunk.*skoid=' "$T/narrow/record" ||
    fail "a 1-day window: no user-delegation SAS reached the agent"
  log "ok: a 1-day delegation window still delegates a user-delegation SAS"
}

# The HTTP route must work for every geometry the agent accepts: 64 MiB chunks of 16 KiB
# blocks (4,096 block checksums, the most a reply carries) over HTTP, byte-exact and served by
# the agent (a reply that does not fit its transport silently sends every read to Azure).
case_shim_http_meta() {
  local size=$((70 * MIB)) served
  upload https data sec-shim-meta.bin 65 "$size"
  agent_start big --chunk-bytes=64M --block-bytes=16K
  READ_ENV=(BLOBSWARM_AGENT_TIMEOUT_MS=60000)
  load meta-cold sharedkey "$(agent_http big)" data sec-shim-meta.bin "$size" 65
  snap big 0
  load meta-warm sharedkey "$(agent_http big)" data sec-shim-meta.bin "$size" 65
  snap big 1
  served=$(($(mdelta 0 1 "$REQ{status=\"hit\"}") + $(mdelta 0 1 "$REQ{status=\"filled\"}")))
  log "warm load over HTTP: $served chunk requests served, $(mdelta 0 1 "$REQ{status=\"miss\"}") misses"
  # 10 calls of 8 MiB, each inside one 64 MiB chunk: every one served by the agent.
  expect_ge "warm load over HTTP with 4096-block chunks: chunk requests served" "$served" 10
}

# A SAS connection string with only BlobEndpoint (no AccountName), and no account passed to
# blob_read: the account comes from the endpoint, as the Azure SDKs derive it.
case_shim_connstr_endpoint_only() {
  BLOBSWARM_AGENT=off timeout "$LOAD_S" bash "$TOOLS/run-with-auth.sh" conn-sas -- \
    "$BS_AGENT_HERD" "$BS_SHIM_LIB" "" data small.bin 4 0 $((MIB + 120)) 1 >"$T/endpoint-only.out" 2>&1 ||
    fail "reads without an account name: $(tail -n 1 "$T/endpoint-only.out")"
  log "ok: $(tail -n 1 "$T/endpoint-only.out")"
}

# error_buf (512 bytes, as the streamer passes) names the cause even for a long blob name:
# the cause comes first, the name last (where it is cut).
case_shim_error_cause_first() {
  local long
  long=models/$(printf 'x%.0s' $(seq 1 900)).safetensors
  if SHIM_LOG_LEVEL=off load_rc cause sharedkey "" data "$long" 16 1; then
    fail "a read of a blob that does not exist succeeded"
  fi
  grep -q 'failed: blobswarm: blob not found (HTTP 404 BlobNotFound)' "$T/cause.out" ||
    fail "the cause is missing from the message: $(grep -m1 'failed' "$T/cause.out" | cut -c1-200)..."
  log "ok: $(grep -m1 -o 'blobswarm: blob not found[^[]*' "$T/cause.out")"
}

# blobswarm-read says why reads did not use the agent: a socket of a foreign uid, an agent whose
# allow-list refuses the endpoint (the misconfiguration that silently sent every read to Azure).
case_shim_read_explains() {
  local size=$((3 * MIB))
  upload https data sec-shim-explain.bin 66 "$size"
  fake_start foreign 65534
  load explain-uid sharedkey "$(agent_sock foreign)" data sec-shim-explain.bin "$size" 66
  grep -q "agent .*socket's owner is not BLOBSWARM_AGENT_UID" "$T/explain-uid.out" ||
    fail "no explanation of the refused socket: $(tail -n 2 "$T/explain-uid.out")"
  log "ok: $(grep -m1 '^blobswarm-read: agent' "$T/explain-uid.out")"
  agent_start strict --allowed-endpoints='https://*.blob.core.windows.net'
  load explain-refused sharedkey "$(agent_sock strict)" data sec-shim-explain.bin "$size" 66
  grep -q "agent .*error answer(s).*last reason: \"[^\"]" "$T/explain-refused.out" ||
    fail "no explanation of the refusals: $(tail -n 2 "$T/explain-refused.out")"
  log "ok: $(grep -m1 '^blobswarm-read: agent' "$T/explain-refused.out")"
}

# A slow but correct agent (it announces 3 s in hello and answers after 2 s) is waited for,
# even with a shorter BLOBSWARM_AGENT_TIMEOUT_MS: it never trips the breaker, so every read
# keeps asking it. And one deadline covers the whole blob_read: an agent slower than
# BLOBSWARM_DEADLINE_MS does not get a fresh deadline for the Azure read after it.
case_shim_agent_deadlines() {
  local size=$((16 * MIB)) n t0 ms calls
  upload https data sec-shim-deadline.bin 67 "$size"
  fake_start slow "$(id -u)" --answer-ms 3000 --delay-ms 2000
  READ_ENV=(BLOBSWARM_AGENT_UID="$(id -u)" BLOBSWARM_AGENT_TIMEOUT_MS=500)
  load slow1 sharedkey "$(agent_sock slow)" data sec-shim-deadline.bin "$size" 67 --threads 1
  load slow2 sharedkey "$(agent_sock slow)" data sec-shim-deadline.bin "$size" 67 --threads 1
  ! grep -q 'event=agent_skipped' "$T/slow1.out" "$T/slow2.out" ||
    fail "a slow but correct agent tripped the breaker: $(grep -h -m1 'agent_skipped' "$T/slow1.out" "$T/slow2.out")"
  n=$(grep -c '"op\\":\\"chunk' "$T/slow/record")
  calls=$(($(grep -o '[0-9]* calls' "$T/slow1.out" | cut -d' ' -f1) + $(grep -o '[0-9]* calls' "$T/slow2.out" | cut -d' ' -f1)))
  expect_eq "chunk requests the slow agent received (one per blob_read of both loads)" "$n" "$calls"
  # Now the agent takes 4 s and the whole read may take 1.5 s.
  fake_start slower "$(id -u)" --answer-ms 10000 --delay-ms 4000
  READ_ENV=(BLOBSWARM_AGENT_UID="$(id -u)" BLOBSWARM_DEADLINE_MS=1500)
  t0=$(date +%s%N)
  # The agent gets half of the deadline; Azure completes the read in the other half.
  load late sharedkey "$(agent_sock slower)" data sec-shim-deadline.bin "$MIB" 67 --threads 1
  ms=$((($(date +%s%N) - t0) / 1000000))
  log "blob_read with a 1.5 s deadline and a 4 s agent: completed after $ms ms"
  # blobswarm-read's own start and the shim's set-up take well under a second.
  expect_le "ms until a 1.5 s-deadline read returned" "$ms" 3500
}

# Ranges the agent does not serve are read from Azure together, not one after another: chunks
# 0 and 2 are in the store, the agent's fills of 1 and 3 stall STALL_MS (past its fill wait:
# misses), and the shim's own reads of 1 and 3 stall STALL_MS each. Counted at the proxy: in
# parallel, both shim reads are open while both stalled fills still are (4 at once); one after
# another, at most 3.
case_shim_parallel_misses() {
  : "${BS_AGENT_HERD:?set BS_AGENT_HERD to agent_herd}"
  local size=$((32 * MIB)) t0 ms stall=4000
  proxy_start
  upload http data sec-shim-par.bin 68 "$size"
  # A fill stalled longer than FILL_STALL_MS is not "moving": the agent answers miss, not
  # pending, and the shim reads those ranges from Azure (the case under test).
  agent_start p --fill-wait-ms=1500 --fill-stall-ms=100
  READ_ENV=(BLOBSWARM_BLOB_ENDPOINT="$PROXY_EP" BLOBSWARM_AGENT_TIMEOUT_MS=20000)
  READ_ENV+=(BLOBSWARM_AGENT="$(agent_sock p)")
  herd_agent warm0 sec-shim-par.bin 1 0 $((8 * MIB)) 68
  herd_agent warm2 sec-shim-par.bin 1 $((16 * MIB)) $((8 * MIB)) 68
  proxy_rule "{\"kind\":\"stall\",\"count\":4,\"ms\":$stall,\"match\":\"sec-shim-par.bin\"}"
  snap p 0
  proxy_reset
  t0=$(date +%s%N)
  herd_agent whole sec-shim-par.bin 1 0 "$size" 68
  ms=$((($(date +%s%N) - t0) / 1000000))
  snap p 1
  expect_eq "hits of the whole read" "$(mdelta 0 1 "$REQ{status=\"hit\"}")" 2
  expect_eq "misses of the whole read" "$(mdelta 0 1 "$REQ{status=\"miss\"}")" 2
  log "one blob_read of 4 chunks, 2 hits and 2 stalled misses: $ms ms (parallel ~5500, serial ~9500)"
  expect_ge "stalled requests open at once at the origin (2 fills + 2 shim reads)" \
    "$(proxy_stat maxInflight)" 4
}

# herd_agent LABEL BLOB THREADS OFFSET LENGTH SEED: agent_herd with READ_ENV (and its agent).
herd_agent() {
  local label=$1
  shift
  timeout "$LOAD_S" bash "$TOOLS/run-with-auth.sh" conn-http -- env BLOBSWARM_LOG_LEVEL=warn \
    "${READ_ENV[@]}" "$BS_AGENT_HERD" "$BS_SHIM_LIB" "$ACCOUNT" data "$@" >"$T/$label.out" 2>&1 ||
    fail "agent_herd $label: $(tail -n 2 "$T/$label.out")"
}

# An agent at its per-client HTTP limit answers 503: busy, not broken. The shim reads those
# ranges from Azure and keeps asking the agent (no breaker trip), as for the Unix route's busy
# frame. One connection per client IP is allowed; the shim's second pooled connection gets 503.
case_shim_http_busy() {
  local size=$((32 * MIB))
  upload https data sec-shim-busy.bin 68 "$size"
  agent_start a --max-clients-per-peer=1
  load busy sharedkey "$(agent_http a)" data sec-shim-busy.bin "$size" 68 \
    --threads 2 --chunk-bytes $((4 * MIB))
  grep -q 'time(s) the agent was at its connection limit' "$T/busy.out" ||
    fail "no 503 reached the shim (the case proves nothing): $(grep -m1 '^blobswarm-read: agent' "$T/busy.out")"
  ! grep -q 'event=agent_skipped' "$T/busy.out" ||
    fail "a 503 tripped the breaker: $(grep -m1 'agent_skipped' "$T/busy.out")"
  grep -q 'chunk(s) served by the agent' "$T/busy.out" || fail "the agent served nothing"
  log "ok: $(grep -m1 '^blobswarm-read: agent' "$T/busy.out")"
}
