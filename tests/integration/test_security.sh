#!/usr/bin/env bash
# The adversarial suite: each case attacks one claim of docs/security.md as a pod on the node,
# a root container, a fake agent or a peer would, against a real agent, the shim and Azurite
# (tests/tools/itenv.sh), and fails if the attack works. The cases live in
# tests/integration/security/*.sh, one file per area; docs/security.md maps each claim to its
# case.
#
# usage: test_security.sh CASE...   (tests/integration/security.cmake registers one CTest each)
# Environment: as tests/integration/agentlib.sh.
set -Eeuo pipefail
SUITE=test_security
[ $# -ge 1 ] || { sed -n '2,/^set -Eeuo/p' "$0" | sed '$d' >&2; exit 2; }
# shellcheck source=tests/integration/agentlib.sh
. "$(dirname "${BASH_SOURCE[0]}")/agentlib.sh"
for f in "$(dirname "${BASH_SOURCE[0]}")"/security/*.sh; do
  # shellcheck source=/dev/null
  . "$f"
done

run_cases "$@"
