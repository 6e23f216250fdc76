#!/usr/bin/env bash
# bench/run.sh: runs every benchmark in bench/ in turn and fails if any fails. Each benchmark
# reads its knobs from the environment (BUILD, BENCH_*; see bench/README.md) and prints
# its own summary plus machine-readable 'RESULT {...}' lines.
set -uo pipefail
cd "$(dirname "$0")" || exit 2

BENCHMARKS=(checksum.sh direct.sh agent.sh cluster.sh)

failed=()
for b in "${BENCHMARKS[@]}"; do
  echo "=== bench/$b"
  if ! bash "./$b"; then
    failed+=("$b")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "bench: failed: ${failed[*]}" >&2
  exit 1
fi
echo "bench: all ${#BENCHMARKS[@]} benchmark(s) done"
