# shellcheck shell=bash
# Process helpers shared by the scripts that start servers (demo, integration harness, agent
# tests). Sourced, not run. Needs bash.

# True if process $1 exists and is not a zombie (a server that died during start-up stays a
# zombie child of the script that started it until that script exits).
alive() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
