#!/usr/bin/env bash
# check-metrics.sh FILE|URL: checks a Prometheus text exposition with `promtool check metrics`
# (format errors and lint warnings alike). A URL (http:// or https://) is fetched with curl.
# Empty input fails too: promtool accepts it, but it means nothing was exposed.
# Exit: 0 clean, 1 promtool reported something (printed), 2 usage or fetch/read error,
# 77 promtool missing (ctest SKIP_RETURN_CODE; under CI=true a missing tool fails: exit 1).
# PROMTOOL overrides the promtool binary.
# promtool comes from Debian's `prometheus` package:
#   apt-get install -y --no-install-recommends prometheus
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 FILE|URL" >&2
    exit 2
fi
src=$1
promtool=${PROMTOOL:-promtool}
if ! command -v "$promtool" >/dev/null 2>&1; then
    echo "check-metrics: $promtool not found (apt-get install -y --no-install-recommends" \
        "prometheus)" >&2
    [ "${CI:-}" = true ] && exit 1
    exit 77
fi

text=$(mktemp)
trap 'rm -f "$text"' EXIT
case $src in
http://* | https://*)
    if ! curl -fsS --max-time 30 -o "$text" "$src"; then
        echo "check-metrics: cannot fetch $src" >&2
        exit 2
    fi
    ;;
*)
    if ! cat -- "$src" >"$text"; then
        echo "check-metrics: cannot read $src" >&2
        exit 2
    fi
    ;;
esac
if [ ! -s "$text" ]; then
    echo "check-metrics: $src: empty exposition" >&2
    exit 1
fi

rc=0
report=$("$promtool" check metrics <"$text" 2>&1) || rc=$?
if [ "$rc" -ne 0 ] || [ -n "$report" ]; then
    echo "check-metrics: $src: promtool check metrics exited $rc:" >&2
    printf '%s\n' "$report" >&2
    exit 1
fi
echo "check-metrics: $src: OK ($(grep -vc '^#' "$text") samples, $(grep -c '^# TYPE ' "$text") families)"
