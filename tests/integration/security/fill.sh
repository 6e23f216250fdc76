# shellcheck shell=bash disable=SC2034,SC2153 # sourced by test_security.sh: agentlib.sh globals
# Adversarial cases: fill (see tests/integration/test_security.sh). A pod on the node speaks
# to the agent's HTTP route with curl (POST /v1/chunk) and tries to make the agent fetch,
# store or serve something other than the bytes of the blob version its credential reads:
#   fill_sas_operation    a delegated SAS with extra query fields (comp=tags, rscd=...)
#   fill_bad_answer       the origin answers a fill wrongly (no ETag, other range, short body)
#   fill_path_escape      blob names with dot segments, backslashes, control characters
#   fill_expired_encoded  a SAS whose se= is hidden as s%65=
#   fill_bearer_exp       a bearer token used past its exp claim
# Each case counts what reached the origin at the faultproxy (or the agent's access checks)
# and what the agent stored and served.

readonly FILL_STORE_CHUNKS='blobswarm_store_chunks'
readonly FILL_CHECKS='blobswarm_agent_access_checks_total'

# fill_post LABEL CONTAINER BLOB CHUNK KIND ENDPOINT SECRET: POST /v1/chunk to agent a; sets
# FILL_HTTP (HTTP status), FILL_ST (the chunk status) and FILL_BYTES (body bytes).
fill_post() {
  FILL_LAST=$T/$1
  FILL_HTTP=$(chunk_post a "$(chunk_json "$2" "$3" "$4" "$5" "$6" "$7")" "$T/$1")
  FILL_ST=$(meta_field "$T/$1" status)
  FILL_BYTES=$(stat -c %s "$T/$1.body")
}

# fill_expect_refused LABEL: the last fill_post served nothing.
fill_expect_refused() {
  [ "$FILL_HTTP" = 200 ] || [ "$FILL_HTTP" = 400 ] || [ "$FILL_HTTP" = 403 ] ||
    fail "$1: HTTP $FILL_HTTP"
  case $FILL_ST in
    hit | filled) fail "$1: served as $FILL_ST ($FILL_BYTES bytes): $(cat "$FILL_LAST.meta")" ;;
  esac
  expect_eq "$1: body bytes (status ${FILL_ST:-none})" "$FILL_BYTES" 0
}

# fill_expect_exact LABEL SEED SIZE START LEN: the last fill_post served the blob's bytes.
fill_expect_exact() {
  case $FILL_ST in
    hit | filled) ;;
    *) fail "$1: status ${FILL_ST:-none} (HTTP $FILL_HTTP): $(cat "$FILL_LAST.meta")" ;;
  esac
  "$BS_GENDATA" --seed "$2" --size "$3" | tail -c +$(($4 + 1)) | head -c "$5" |
    cmp -s - "$FILL_LAST.body" || fail "$1: body is not bytes $4+$5 of the blob"
  log "ok: $1: $FILL_ST, $5 bytes byte-exact"
}

case_fill_sas_operation() {
  local blob=fill-it/op-$$.bin size=$((MIB + 123)) sas=$BS_IT_SERVICE_SAS_HTTP extra n=0 m=0 secret
  proxy_start
  upload http data "$blob" 61 "$size"
  agent_start a
  snap a 0
  proxy_reset
  # Fields that change the operation or the answer, hidden or not, before or after the SAS;
  # duplicates, empty names, a second '?', a '#', a bare '+'.
  while IFS= read -r extra; do
    [ -n "$extra" ] || continue
    for secret in "$sas&$extra" "$extra&$sas"; do
      n=$((n + 1))
      fill_post "op$n" data "$blob" 0 sas "$PROXY_EP" "$secret"
      fill_expect_refused "op$n [$extra]"
      # The request codec already refuses characters no SAS has ('?', '#'): not the service.
      grep -q 'secret has characters' "$T/op$n.meta" || m=$((m + 1))
    done
  done <<'EOF'
comp=tags
comp=metadata
c%6Fmp=tags
%63omp=tags
restype=container
snapshot=2026-01-01T00:00:00.0000000Z
versionid=2026-01-01T00:00:00.0000000Z
rscd=attachment
rsct=text%2Fhtml
rscc=no-store
rsce=gzip
rscl=en
timeout=1
sp=rw
SE=2099-01-01
=x
x
?comp=tags
#frag
comp+=tags
EOF
  snap a 1
  expect_eq "poisoned SAS: requests that reached the origin" "$(proxy_stat requests)" 0
  expect_eq "poisoned SAS: chunks stored" "$(mdelta 0 1 "$FILL_STORE_CHUNKS")" 0
  expect_eq "poisoned SAS: chunks served" \
    $(($(mdelta 0 1 "$REQ{status=\"hit\"}") + $(mdelta 0 1 "$REQ{status=\"filled\"}"))) 0
  expect_eq "poisoned SAS: refusals{bad_credential}" \
    "$(mdelta 0 1 'blobswarm_agent_refusals_total{reason="bad_credential"}')" "$m"
  # The SAS as issued still reads the blob, byte-exact: nothing was poisoned.
  fill_post ok data "$blob" 0 sas "$PROXY_EP" "$sas"
  fill_expect_exact ok 61 "$size" 0 "$size"
  # Encoded differently but the same fields (as a portal or SDK may write it): accepted.
  fill_post ok2 data "$blob" 0 sas "$PROXY_EP" "$(printf '%s' "$sas" | sed 's/^sv=/s%76=/')"
  fill_expect_exact ok2 61 "$size" 0 "$size"
}

case_fill_bad_answer() {
  local size=$((MIB + 123)) big=$((CHUNK + 123)) v blob rule seed=70 n=0
  proxy_start
  for v in noetag etag range short part head; do
    seed=$((seed + 1))
    if [ "$v" = part ]; then
      upload http data "fill-it/bad-$v-$$.bin" "$seed" "$big"
    else
      upload http data "fill-it/bad-$v-$$.bin" "$seed" "$size"
    fi
  done
  agent_start a
  seed=70
  for v in noetag etag range short part head; do
    seed=$((seed + 1))
    blob=fill-it/bad-$v-$$.bin
    local chunk=0 start=0 len=$size total=$size
    [ "$v" = part ] && chunk=1 start=$CHUNK len=123 total=$big
    case $v in
      # Another operation's answer (a tags read): 200, no ETag, no Content-Range.
      noetag) rule='{"kind":"rewrite","status":200,"dropHeaders":["etag","content-range"],"fillByte":60}' ;;
      # Another version's bytes.
      etag) rule='{"kind":"rewrite","setHeaders":{"etag":"\"0x8D0000000000BAD\""},"fillByte":61}' ;;
      # Another range of the right version.
      range) rule="{\"kind\":\"rewrite\",\"setHeaders\":{\"content-range\":\"bytes 1-$len/$((len + 1))\"},\"fillByte\":62}" ;;
      # A body one byte short, declared as such (Content-Range still claims the whole range).
      short) rule="{\"kind\":\"rewrite\",\"bodyBytes\":$((len - 1))}" ;;
      # A 200 for a range that is not the whole blob.
      part) rule='{"kind":"rewrite","status":200,"dropHeaders":["content-range"],"fillByte":63}' ;;
      # Properties without an ETag: no grant.
      head) rule='{"kind":"rewrite","methods":["HEAD"],"dropHeaders":["etag"]}' ;;
    esac
    rule=${rule%\}},\"match\":\"bad-$v-$$\",\"count\":5\}
    proxy_rule "$rule"
    snap a "b$v"
    fill_post "bad-$v" data "$blob" "$chunk" sas "$PROXY_EP" "$BS_IT_SERVICE_SAS_HTTP"
    fill_expect_refused "bad answer $v"
    snap a "a$v"
    expect_eq "bad answer $v: chunks stored" "$(mdelta "b$v" "a$v" "$FILL_STORE_CHUNKS")" 0
    [ "$(curl -fsS "$PROXY_URL/__stats" | grep -o '"injected":[0-9]*' | cut -d: -f2)" -gt "$n" ] ||
      fail "bad answer $v: the proxy did not answer wrongly (rule not used)"
    n=$(curl -fsS "$PROXY_URL/__stats" | grep -o '"injected":[0-9]*' | cut -d: -f2)
    # The origin answers correctly again: the next request fills the right bytes.
    proxy_rule '{"kind":"none"}'
    fill_post "good-$v" data "$blob" "$chunk" sas "$PROXY_EP" "$BS_IT_SERVICE_SAS_HTTP"
    fill_expect_exact "good-$v" "$seed" "$total" "$start" "$len"
  done
}

case_fill_path_escape() {
  local dir=fill-it/esc-$$ size=$((MIB + 123)) name n=0
  proxy_start
  upload http data "$dir/x" 81 "$size"
  agent_start a
  snap a 0
  proxy_reset
  local names=("$dir/sub/../x" "$dir/./x" "./$dir/x" "../data/$dir/x"
    "../../devstoreaccount1/data/$dir/x" "$dir/x/." "$dir/x/.." ".." "." "/../$dir/x"
    "${dir//\//\\}\\x" "$dir\\x" "" "$dir/x"$'\n'"y" "$dir/x"$'\r' "$dir/"$'\t'"x"
    "$dir/x"$'\x7f')
  for name in "${names[@]}"; do
    n=$((n + 1))
    fill_post "esc$n" data "$name" 0 sas "$PROXY_EP" "$BS_IT_SERVICE_SAS_HTTP"
    fill_expect_refused "name [$(printf %q "$name")]"
  done
  snap a 1
  expect_eq "escaping names: requests that reached the origin" "$(proxy_stat requests)" 0
  expect_eq "escaping names: chunks stored (alias copies)" "$(mdelta 0 1 "$FILL_STORE_CHUNKS")" 0
  expect_eq "escaping names: refusals{bad_name}" \
    "$(mdelta 0 1 'blobswarm_agent_refusals_total{reason="bad_name"}')" "$n"
  # The shim applies the same rule to its own reads: no request for another path.
  READ_ENV=("BLOBSWARM_BLOB_ENDPOINT=$PROXY_EP")
  if load_rc shim-dot sharedkey "" data "$dir/sub/../x" "$size" 81; then
    fail "the shim read $dir/sub/../x (it resolves to $dir/x)"
  fi
  expect_eq "shim with a dot-segment name: requests that reached the origin" \
    "$(proxy_stat requests)" 0
  # The real name works, through the agent, byte-exact (and once only in the store).
  fill_post ok data "$dir/x" 0 sas "$PROXY_EP" "$BS_IT_SERVICE_SAS_HTTP"
  fill_expect_exact ok 81 "$size" 0 "$size"
  load real sharedkey "$(agent_sock a)" data "$dir/x" "$size" 81
  READ_ENV=()
}

# fill_wait_until EPOCH: sleeps until the wall clock is past EPOCH (bounded: 30 s).
fill_wait_until() {
  local left=$(($1 - $(date +%s) + 1))
  [ "$left" -le 30 ] || fail "refusing to wait $left s"
  [ "$left" -le 0 ] || sleep "$left"
}

case_fill_expired_encoded() {
  local blob=fill-it/exp-$$.bin size=$((MIB + 123)) sas hidden se_enc se_s v n=0
  proxy_start
  upload http data "$blob" 91 "$size"
  agent_start a
  # A SAS valid for about 8 more seconds, its se= renamed s%65= (Azure decodes names).
  sas=$(NODE_EXTRA_CA_CERTS=$BS_IT_CA_BUNDLE node "$TOOLS/azfixture.mjs" service-sas \
    --conn "$BS_IT_HTTP_CONN" --container data --minutes 0.14)
  se_enc=$(printf '%s' "$sas" | tr '&' '\n' | sed -n 's/^se=//p')
  se_s=$(date -u -d "$(printf '%b' "${se_enc//%/\\x}")" +%s)
  hidden=$(printf '%s' "$sas" | sed 's/\(^\|&\)se=/\1s%65=/')
  log "SAS expires at $(date -u -d "@$se_s" +%T), in $((se_s - $(date +%s))) s"
  fill_post live data "$blob" 0 sas "$PROXY_EP" "$hidden"
  fill_expect_exact live 91 "$size" 0 "$size"
  fill_post live2 data "$blob" 0 sas "$PROXY_EP" "$hidden"
  expect_eq "while valid: chunk status" "$FILL_ST" hit
  fill_wait_until "$se_s"
  proxy_reset
  fill_post after data "$blob" 0 sas "$PROXY_EP" "$hidden"
  fill_expect_refused "after se (s%65=)"
  expect_eq "after se: chunk status" "$FILL_ST" denied
  # Already expired, hidden in other encodings: denied without asking Azure.
  snap a 0
  proxy_reset
  for v in 's%65=' '%73e=' '%73%65=' 's%45='; do
    n=$((n + 1))
    fill_post "old$n" data "$blob" 0 sas "$PROXY_EP" \
      "$(printf '%s' "$BS_IT_EXPIRED_SAS_HTTPS" | sed "s/\\(^\\|&\\)se=/\\1$v/")"
    fill_expect_refused "expired SAS with $v"
  done
  # An se that is not a time (and no si): refused, not trusted for the grant TTL.
  for v in 'se=tomorrow' 'se=2026-13-01T00%3A00%3A00Z' 'se=' 'se=2099-01-01T00%3A00%3A00'; do
    n=$((n + 1))
    fill_post "bad$n" data "$blob" 0 sas "$PROXY_EP" \
      "$(printf '%s' "$BS_IT_SERVICE_SAS_HTTP" | sed "s/\\(^\\|&\\)se=[^&]*/\\1$v/")"
    fill_expect_refused "SAS with $v"
  done
  snap a 1
  expect_eq "expired or unreadable se: requests that reached the origin" "$(proxy_stat requests)" 0
  expect_eq "expired or unreadable se: refusals" \
    $(($(mdelta 0 1 'blobswarm_agent_refusals_total{reason="expired"}') +
      $(mdelta 0 1 'blobswarm_agent_refusals_total{reason="bad_credential"}'))) "$n"
}

# fill_jwt EXP|none: a token shaped like Entra ID's for Storage (Azurite --oauth basic checks
# aud, iss, nbf and exp, never the signature), with exp EXP (Unix seconds) or none.
fill_jwt() {
  # shellcheck disable=SC2016 # JavaScript, not shell
  node -e '
    const [exp, tenant] = process.argv.slice(1);
    const now = Math.floor(Date.now() / 1000);
    const b = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const p = { aud: "https://storage.azure.com", iss: `https://sts.windows.net/${tenant}/`,
      iat: now - 60, nbf: now - 60, oid: "00000000-0000-4000-8000-0000000000b5",
      sub: "00000000-0000-4000-8000-0000000000b5", tid: tenant, ver: "1.0",
      uti: String(Math.random()) };
    if (exp !== "none") p.exp = Number(exp);
    console.log(`${b({ typ: "JWT", alg: "HS256" })}.${b(p)}.${Buffer.from("unsigned").toString("base64url")}`);' \
    "$1" "$BS_IT_TENANT"
}

case_fill_bearer_exp() {
  local blob=fill-it/jwt-$$.bin size=$((MIB + 123)) ep=$BS_IT_HTTPS_ENDPOINT tok exp
  upload https data "$blob" 95 "$size"
  agent_start a
  exp=$(($(date +%s) + 8))
  tok=$(fill_jwt "$exp")
  fill_post live data "$blob" 0 bearer "$ep" "$tok"
  fill_expect_exact live 95 "$size" 0 "$size"
  fill_post live2 data "$blob" 0 bearer "$ep" "$tok"
  expect_eq "while valid: chunk status" "$FILL_ST" hit
  fill_wait_until "$exp"
  fill_post after data "$blob" 0 bearer "$ep" "$tok"
  fill_expect_refused "token after its exp"
  # Past exp, or no exp at all: refused without an access check at Azure.
  snap a 0
  fill_post old data "$blob" 0 bearer "$ep" "$(fill_jwt $(($(date +%s) - 5)))"
  fill_expect_refused "token with a past exp"
  fill_post noexp data "$blob" 0 bearer "$ep" "$(fill_jwt none)"
  fill_expect_refused "token without exp"
  fill_post opaque data "$blob" 0 bearer "$ep" "not-a-jwt"
  fill_expect_refused "opaque token"
  snap a 1
  expect_eq "expired or exp-less tokens: access checks at Azure" \
    $(($(mdelta 0 1 "$FILL_CHECKS{result=\"granted\"}") + $(mdelta 0 1 "$FILL_CHECKS{result=\"refused\"}"))) 0
  # A fresh token reads again.
  fill_post fresh data "$blob" 0 bearer "$ep" "$(fill_jwt $(($(date +%s) + 600)))"
  fill_expect_exact fresh 95 "$size" 0 "$size"
}
