#!/usr/bin/env bash
# bench/checksum.sh: runs bs-bench-checksum (bench/checksum.c) for bench/run.sh: the CPU cost
# per byte of CRC-32C and of each digest or MAC peers could verify chunks with. Needs only the
# build (BUILD, default build/); BENCH_CHECKSUM_RUNS (default 1) rounds, median reported.
# About 15-20 s per round on the project machine.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${BUILD:-$ROOT/build}"
RUNS="${BENCH_CHECKSUM_RUNS:-1}"
BIN="$BUILD/bench/bs-bench-checksum"
[ -x "$BIN" ] || { echo "checksum: $BIN not built (cmake --build $BUILD)" >&2; exit 1; }
if ! [[ "$RUNS" =~ ^[0-9]+$ ]] || [ "$RUNS" -lt 1 ] || [ "$RUNS" -gt 20 ]; then
  echo "checksum: BENCH_CHECKSUM_RUNS must be 1..20" >&2
  exit 1
fi
exec timeout 600 "$BIN" --runs "$RUNS"
