# Adversarial cases: shim (see tests/integration/test_security.sh). The shim side of the trust
# boundary: whom it hands a credential to, what it hands over, and how long it waits.

# fake_start NAME [UID]: a fake agent (tests/tools/fakeagent.mjs) listening on $T/NAME/agent.sock,
# run as UID (default: ours) through setpriv; what it receives goes to $T/NAME/record.
fake_start() {
  local name=$1 uid=${2:-$(id -u)} d=$T/$1 pid i
  mkdir -p "$d"
  # The fake may run as another uid: it creates its socket and record in $d.
  chmod 0711 "$T"
  chmod 0777 "$d"
  local cmd=(node "$TOOLS/fakeagent.mjs" --socket "$d/agent.sock" --record "$d/record"
    --max-lifetime-s 600)
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
