# shellcheck shell=bash
# Adversarial cases: store (see tests/integration/test_security.sh). The chunk store as seen
# by another pod on the node, a root client holding a chunk descriptor, a node-level process
# planting links in the store directory, and a tenant filling the store.
#
#   store_modes        the store is the agent's alone: directories 0700, chunk files 0400,
#                      whatever the agent's umask; an older store with 0755/0444 is tightened
#                      at start; another uid can neither list the store nor read a chunk
#   store_tamper       a root client without CAP_LINUX_IMMUTABLE (setpriv) holding a chunk's
#                      descriptor cannot rewrite, unflag or unlink the chunk (EPERM each);
#                      the next load is a byte-exact hit
#   store_link_chunk   chunk files replaced by links to a root-only file while the agent runs:
#                      neither route serves that file; loads stay byte-exact (refills); the
#                      file and nothing but the links change
#   store_link_fanout  a fan-out directory and tmp/ replaced by links to directories with
#                      decoys before a restart: the decoys survive the scan; loads byte-exact
#   store_tenant_share tenant A (the proxy endpoint) loads a blob; tenant B (another endpoint)
#                      loads more than the whole budget; A's chunks are still there (A's next
#                      load: no origin GET)
#
# Cases that need root and CAP_LINUX_IMMUTABLE (tests run as root in CI) fail under CI=true
# when they do not have them, and are skipped (saying so) elsewhere.

# The tool of these cases: next to bs-gendata in the build tree (tests/CMakeLists.txt).
store_client() { echo "${BS_AGENT_CLIENT:-$(dirname "$BS_GENDATA")/bs-agent-client}"; }

# store_need_root WHY: skips the case (exit 77) when not root outside CI; fails it under CI=true.
store_need_root() {
  local missing=""
  [ "$(id -u)" = 0 ] || missing="root"
  command -v setpriv >/dev/null || missing="$missing setpriv(util-linux)"
  command -v chattr >/dev/null || missing="$missing chattr(e2fsprogs)"
  [ -x "$(store_client)" ] || missing="$missing $(store_client)"
  [ -z "$missing" ] && return 0
  [ "${CI:-}" = true ] && fail "$1 needs$missing (CI=true: not skipped)"
  log "SKIP: $1 needs$missing"
  exit 77 # reported as skipped by ctest (SKIP_RETURN_CODE), never under CI=true
}

# store_wait_fills SIZE: every chunk of a SIZE-byte blob filled by agent a (a slow agent may
# have answered CACHEMISS and finished the fill after the load).
store_wait_fills() { wait_metric a "$FETCHES" "$(chunks_of "$1")" 60; }

# Chunk files of the store of agent ID, one per line, sorted.
store_files() { find "$T/$1/store" -name '*.chunk' | sort; }

# store_unflag PATH...: clears the immutable flag as a node administrator (or a disk fault) can.
store_unflag() { chattr -R -i "$@" 2>/dev/null || true; }

# A chunk request for container data on the proxy endpoint with the HTTP service SAS.
store_client_run() {
  "$@" --socket "$(agent_sock a)" --endpoint "$PROXY_EP" --account "$ACCOUNT" \
    --container data --blob "$STORE_BLOB" --sas "$BS_IT_SERVICE_SAS_HTTP"
}

case_store_modes() {
  local size=$((8 * MIB + 77)) old f
  STORE_BLOB=agent-it/store-modes-$$.bin
  store_need_root "store_modes (reads as another uid with setpriv)"
  proxy_start
  READ_ENV=("BLOBSWARM_BLOB_ENDPOINT=$PROXY_EP")
  upload http data "$STORE_BLOB" 61 "$size"
  old=$(umask)
  umask 000 # the agent's modes must not depend on it
  agent_start a
  umask "$old"
  load cold sharedkey "$(agent_sock a)" data "$STORE_BLOB" "$size" 61
  store_wait_fills "$size"
  store_modes_check
  # The way to the store open to all, as a hostPath mount shows it to a pod: only the store's
  # own modes may keep other uids out.
  chmod 0711 "$T" "$T/a"
  # Another uid (a pod with a hostPath over the store, not the agent's user) reads nothing.
  f=$(store_files a | sed -n 1p)
  if setpriv --reuid=65534 --regid=65534 --clear-groups cat "$f" >/dev/null 2>&1; then
    fail "uid 65534 read chunk file $f"
  fi
  if setpriv --reuid=65534 --regid=65534 --clear-groups ls "$T/a/store/$(basename "$(dirname "$f")")" \
    >/dev/null 2>&1; then
    fail "uid 65534 listed a fan-out directory of the store"
  fi
  log "ok: uid 65534 can neither read a chunk file nor list the store"
  # An older store (0755 directories, 0444 files): tightened when the agent starts on it.
  agent_stop a TERM
  store_unflag "$T/a/store"
  find "$T/a/store" -type d -exec chmod 0755 {} +
  find "$T/a/store" -type f -name '*.chunk' -exec chmod 0444 {} +
  agent_start a
  store_modes_check
  proxy_reset
  load warm sharedkey "$(agent_sock a)" data "$STORE_BLOB" "$size" 61
  expect_eq "after tightening: ranged GETs at the origin" "$(proxy_stat rangedGets)" 0
}

# Every directory of the store 0700, every chunk file 0400, lock 0600, all of the agent's uid.
store_modes_check() {
  local bad n
  bad=$(find "$T/a/store" -type d ! -perm 0700 | sed -n 1,3p)
  [ -z "$bad" ] || fail "store directories not 0700: $bad ($(stat -c %a "${bad%%$'\n'*}"))"
  n=$(find "$T/a/store" -type d | wc -l)
  expect_eq "store directories (store, tmp, 256 fan-out), all 0700" "$n" 258
  bad=$(find "$T/a/store" -type f -name '*.chunk' ! -perm 0400 | sed -n 1,3p)
  [ -z "$bad" ] || fail "chunk files not 0400: $bad ($(stat -c %a "${bad%%$'\n'*}"))"
  expect_ge "chunk files, all 0400" "$(store_files a | wc -l)" 1
  expect_eq "lock file mode" "$(stat -c %a "$T/a/store/lock")" 600
  bad=$(find "$T/a/store" ! -uid "$(id -u)" | sed -n 1,3p)
  [ -z "$bad" ] || fail "store entries not of the agent's uid: $bad"
}

case_store_tamper() {
  local size=$((8 * MIB + 4099)) out rc=0
  STORE_BLOB=agent-it/store-tamper-$$.bin
  store_need_root "store_tamper (a root client without CAP_LINUX_IMMUTABLE)"
  proxy_start
  READ_ENV=("BLOBSWARM_BLOB_ENDPOINT=$PROXY_EP")
  upload http data "$STORE_BLOB" 62 "$size"
  agent_start a
  load cold sharedkey "$(agent_sock a)" data "$STORE_BLOB" "$size" 62
  store_wait_fills "$size"
  # The attacker: root in a container with default capabilities (no CAP_LINUX_IMMUTABLE).
  for chunk in 0 1; do
    out=$T/tamper$chunk.out
    rc=0
    store_client_run setpriv --bounding-set=-linux_immutable --inh-caps=-linux_immutable \
      "$(store_client)" --chunk "$chunk" --tamper >"$out" 2>&1 || rc=$?
    sed "s/^/  chunk $chunk: /" "$out"
    grep -q '^status=hit ' "$out" || fail "chunk $chunk: not served from the store: $(head -n1 "$out")"
    [ "$rc" = 0 ] || fail "chunk $chunk: a root client changed the chunk (exit $rc): $(grep -v 'errno=EPERM' "$out" | tail -n +2 | tr '\n' ' ')"
  done
  log "ok: every attack on both chunks refused with EPERM"
  grep -q 'tamper_protection=immutable' "$T/a/agent.log" ||
    fail "the agent did not report tamper_protection=immutable"
  snap a 0
  expect_eq "gauge blobswarm_store_tamper_protection{mode=\"immutable\"}" \
    "$(mval 0 'blobswarm_store_tamper_protection{mode="immutable"}')" 1
  proxy_reset
  load after-attack sharedkey "$(agent_sock a)" data "$STORE_BLOB" "$size" 62
  snap a 1
  expect_eq "after the attack: ranged GETs at the origin" "$(proxy_stat rangedGets)" 0
  expect_ge "after the attack: hits" "$(mdelta 0 1 "$REQ{status=\"hit\"}")" 2
  expect_eq "after the attack: chunks dropped as corrupt" \
    "$(mdelta 0 1 blobswarm_store_dropped_corrupt_total)" 0
}

case_store_link_chunk() {
  local size=$((8 * MIB + 1234)) f secret=$T/secret sum out rc st
  STORE_BLOB=agent-it/store-link-$$.bin
  store_need_root "store_link_chunk (plants links in a root-owned store)"
  proxy_start
  READ_ENV=("BLOBSWARM_BLOB_ENDPOINT=$PROXY_EP")
  upload http data "$STORE_BLOB" 63 "$size"
  agent_start a
  load cold sharedkey "$(agent_sock a)" data "$STORE_BLOB" "$size" 63
  store_wait_fills "$size"
  # A root-only file the size of a chunk file, recognisable by its content.
  f=$(store_files a | sed -n 1p)
  printf 'ROOT-ONLY-SECRET\n' >"$secret"
  while [ "$(stat -c %s "$secret")" -lt "$(stat -c %s "$f")" ]; do
    cat "$secret" "$secret" >"$secret.2"
    mv "$secret.2" "$secret"
  done
  truncate -s "$(stat -c %s "$f")" "$secret"
  chmod 0600 "$secret"
  sum=$(sha256sum <"$secret")
  # Every chunk file of the blob becomes a link to it, while the agent runs.
  while IFS= read -r f; do
    store_unflag "$f"
    rm -f "$f"
    ln -s "$secret" "$f"
  done < <(store_files a)
  log "planted $(find "$T/a/store" -type l | wc -l) links to $secret"
  # Unix route, chunk 0: a descriptor of the secret must never come back.
  rc=0
  store_client_run "$(store_client)" --chunk 0 --forbid "$secret" >"$T/link0.out" 2>&1 || rc=$?
  sed 's/^/  unix chunk 0: /' "$T/link0.out"
  [ "$rc" = 0 ] || [ "$rc" = 3 ] || fail "unix route served the linked file (exit $rc)"
  # HTTP route, chunk 1: no byte of the secret in the body.
  st=$(chunk_post a "$(chunk_json data "$STORE_BLOB" 1 sas "$PROXY_EP" "$BS_IT_SERVICE_SAS_HTTP")" \
    "$T/link1")
  log "http chunk 1: HTTP $st, meta $(cat "$T/link1.meta")"
  if grep -q 'ROOT-ONLY-SECRET' "$T/link1.body" 2>/dev/null; then
    fail "http route served the linked root-only file"
  fi
  log "ok: neither route served the linked file"
  load after-links sharedkey "$(agent_sock a)" data "$STORE_BLOB" "$size" 63
  load again sharedkey "$(agent_http a)" data "$STORE_BLOB" "$size" 63
  expect_eq "links left in the store" "$(find "$T/a/store" -type l | wc -l)" 0
  expect_eq "the linked file is unchanged" "$(sha256sum <"$secret")" "$sum"
  expect_eq "chunk files after refill" "$(store_files a | wc -l)" 2
}

case_store_link_fanout() {
  local size=$((8 * MIB + 4321)) f sub victim=$T/victim tmpvictim=$T/tmpvictim decoy n_sub
  STORE_BLOB=agent-it/store-fanout-$$.bin
  store_need_root "store_link_fanout (plants links in a root-owned store)"
  proxy_start
  READ_ENV=("BLOBSWARM_BLOB_ENDPOINT=$PROXY_EP")
  upload http data "$STORE_BLOB" 64 "$size"
  agent_start a
  load cold sharedkey "$(agent_sock a)" data "$STORE_BLOB" "$size" 64
  store_wait_fills "$size"
  agent_stop a TERM
  # The fan-out directory of one chunk becomes a link to a directory holding a decoy that
  # looks like a damaged chunk file (what the scan deletes), and tmp/ one to a directory
  # holding a decoy "partial" file.
  f=$(store_files a | sed -n 1p)
  sub=$(dirname "$f")
  n_sub=$(find "$sub" -name '*.chunk' | wc -l)
  mkdir -p "$victim" "$tmpvictim"
  decoy=$victim/$(basename "$f")
  head -c 70000 /dev/urandom >"$decoy"
  echo keep >"$tmpvictim/interrupted.tmp"
  store_unflag "$sub" "$T/a/store/tmp"
  rm -rf "$sub" "$T/a/store/tmp"
  ln -s "$victim" "$sub"
  ln -s "$tmpvictim" "$T/a/store/tmp"
  agent_start a
  [ -f "$decoy" ] || fail "the restart scan deleted $decoy through the linked fan-out directory"
  [ -f "$tmpvictim/interrupted.tmp" ] || fail "the restart deleted a file through the linked tmp/"
  log "ok: both decoys survived the restart"
  if [ -L "$sub" ] || [ ! -d "$sub" ]; then fail "$sub is not a real directory after the restart"; fi
  if [ -L "$T/a/store/tmp" ] || [ ! -d "$T/a/store/tmp" ]; then fail "tmp/ is not a real directory"; fi
  proxy_reset
  load after-restart sharedkey "$(agent_sock a)" data "$STORE_BLOB" "$size" 64
  expect_eq "after restart: ranged GETs (the chunks of the replaced directory refilled)" \
    "$(proxy_stat rangedGets)" "$n_sub"
}

case_store_tenant_share() {
  local a_blob=agent-it/tenant-a-$$.bin b_blob=agent-it/tenant-b-$$.bin
  local a_size=$((16 * MIB)) b_size=$((100 * MIB + 17)) budget=$((64 * MIB))
  proxy_start
  upload http data "$a_blob" 65 "$a_size"
  upload http data "$b_blob" 66 "$b_size"
  agent_start a --store-budget=64M
  # Tenant A: the proxy's endpoint. Tenant B: the plain-HTTP Azurite's, another account URL.
  READ_ENV=("BLOBSWARM_BLOB_ENDPOINT=$PROXY_EP")
  load a-cold sharedkey "$(agent_sock a)" data "$a_blob" "$a_size" 65
  READ_ENV=()
  load b-cold conn-http "$(agent_sock a)" data "$b_blob" "$b_size" 66
  load b-again conn-http "$(agent_sock a)" data "$b_blob" "$b_size" 66 --threads 3
  # Fills finish after a slow agent (a sanitizer build) answered CACHEMISS: wait for all of
  # them (A's 2 and B's 13 chunks at least) before looking at the store.
  wait_metric a "$FETCHES" $((2 + $(chunks_of "$b_size"))) 60
  wait_metric a blobswarm_store_evicted_chunks_total 1 30
  snap a 1
  expect_le "store bytes" "$(mval 1 blobswarm_store_bytes)" "$budget"
  expect_ge "evicted chunks (B's own)" "$(mval 1 blobswarm_store_evicted_chunks_total)" 1
  # shellcheck disable=SC2034 # read by load (agentlib.sh)
  READ_ENV=("BLOBSWARM_BLOB_ENDPOINT=$PROXY_EP")
  proxy_reset
  load a-warm sharedkey "$(agent_sock a)" data "$a_blob" "$a_size" 65
  expect_eq "tenant A after tenant B filled the store: ranged GETs at the origin" \
    "$(proxy_stat rangedGets)" 0
}
