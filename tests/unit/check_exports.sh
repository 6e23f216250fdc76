#!/bin/sh
# Fails unless the shared library LIB defines exactly the cache-provider ABI in its dynamic
# symbol table: cache_abi_version, runai_cache_abi_version, blob_read, shutdown, all text
# (code) symbols. Anything else exported would be visible to the host process. NM may name
# the nm to use (default: nm).
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 LIB" >&2
    exit 2
fi
lib=$1
nm=${NM:-nm}
if [ ! -f "$lib" ]; then
    echo "check_exports: $lib: no such file" >&2
    exit 2
fi

# "ADDRESS TYPE NAME[@VERSION]" -> "TYPE NAME", sorted.
if ! out=$("$nm" -D --defined-only "$lib"); then
    echo "check_exports: $nm -D --defined-only $lib failed" >&2
    exit 1
fi
got=$(printf '%s\n' "$out" | awk 'NF >= 2 { name = $NF; sub(/@.*/, "", name); print $(NF-1), name }' | LC_ALL=C sort)
want=$(printf '%s\n' "T blob_read" "T cache_abi_version" "T runai_cache_abi_version" "T shutdown" | LC_ALL=C sort)

if [ "$got" != "$want" ]; then
    echo "check_exports: $lib exports the wrong set of symbols" >&2
    echo "expected:" >&2
    printf '%s\n' "$want" | sed 's/^/  /' >&2
    echo "got:" >&2
    printf '%s\n' "$got" | sed 's/^/  /' >&2
    exit 1
fi
echo "check_exports: $lib exports exactly the 4 ABI symbols"
