#!/usr/bin/env bash
# Installs libblobswarm.so where an unmodified run:ai model streamer finds it by itself:
# <site-packages>/dacs_client/libStorageDirect.so (current streamers) and
# <site-packages>/py_tachyon_client/libStorageDirect.so (the first release with the hook),
# in the site-packages of the given Python interpreter. --uninstall removes what it installed.
# It does not install the streamer, and it never touches a file it did not put there.
set -euo pipefail

usage() {
  cat <<EOF
usage: $(basename "$0") [--python PY] [--lib PATH] [--uninstall]

  --python PY   interpreter whose site-packages (purelib) gets the library
                (default: python3; use the venv's python to install into a venv)
  --lib PATH    the library to install (default: build/provider-shim/libblobswarm.so)
  --uninstall   remove the installed copies (only files this script installed) and their
                directories if they are then empty
  -h, --help    this text

Alternative without installing: point the streamer at the library directly with
  RUNAI_STREAMER_EXPERIMENTAL_AZURE_CACHE_LIB=/path/to/libblobswarm.so
EOF
}

die() { echo "install-shim: $*" >&2; exit 2; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=python3
LIB="$ROOT/build/provider-shim/libblobswarm.so"
UNINSTALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || die "--python needs a value"; PY="$2"; shift 2 ;;
    --python=*) PY="${1#*=}"; shift ;;
    --lib) [ $# -ge 2 ] || die "--lib needs a value"; LIB="$2"; shift 2 ;;
    --lib=*) LIB="${1#*=}"; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

command -v "$PY" >/dev/null 2>&1 || die "python interpreter not found: $PY"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
  || die "$PY could not report its site-packages"
[ -n "$SITE" ] || die "$PY reported an empty site-packages path"

# The two layouts the streamer auto-discovers, relative to site-packages.
TARGETS=(dacs_client/libStorageDirect.so py_tachyon_client/libStorageDirect.so)
# Each installed copy gets this marker beside it, holding its SHA-256: uninstall removes a
# library only when the marker is there and the library still has that content.
MARKER_SUFFIX=.installed-by-blobswarm

if [ "$UNINSTALL" -eq 1 ]; then
  for t in "${TARGETS[@]}"; do
    dst="$SITE/$t"
    marker="$dst$MARKER_SUFFIX"
    if [ ! -e "$marker" ]; then
      [ -e "$dst" ] && echo "install-shim: leaving $dst (not installed by this script)"
      continue
    fi
    if [ -e "$dst" ] && [ "$(sha256sum "$dst" | cut -d' ' -f1)" != "$(cat "$marker")" ]; then
      echo "install-shim: leaving $dst (changed since it was installed)"
    elif [ -e "$dst" ]; then
      rm -f "$dst"
      echo "install-shim: removed $dst"
    fi
    rm -f "$marker"
    dir="$(dirname "$dst")"
    if rmdir "$dir" 2>/dev/null; then
      echo "install-shim: removed empty directory $dir"
    fi
  done
  exit 0
fi

[ -f "$LIB" ] || die "library not found: $LIB (build it first, or pass --lib)"
LIB="$(cd "$(dirname "$LIB")" && pwd)/$(basename "$LIB")"
sum="$(sha256sum "$LIB" | cut -d' ' -f1)"

for t in "${TARGETS[@]}"; do
  dst="$SITE/$t"
  marker="$dst$MARKER_SUFFIX"
  if [ -e "$dst" ] && [ ! -e "$marker" ]; then
    die "$dst exists and was not installed by this script; not overwriting it"
  fi
  if [ -e "$dst" ] && [ "$(sha256sum "$dst" | cut -d' ' -f1)" != "$(cat "$marker")" ]; then
    die "$dst changed since this script installed it; not overwriting it"
  fi
  mkdir -p "$(dirname "$dst")"
  # Copy (not a symlink into the build tree) through a temporary name, so a process that is
  # loading the old copy never sees a half-written file.
  tmp="$(mktemp "$dst.XXXXXX")"
  if ! { cp "$LIB" "$tmp" && chmod 0755 "$tmp" && mv -f "$tmp" "$dst"; }; then
    rm -f "$tmp"
    die "could not install $dst"
  fi
  echo "$sum" >"$marker"
  echo "install-shim: installed $LIB -> $dst"
done

cat <<EOF
install-shim: the streamer in $SITE now finds the provider by itself
  (RUNAI_STREAMER_EXPERIMENTAL_AZURE_CACHE_ENABLED unset or 'auto': used when found;
   '1': required, the streamer fails if it cannot load it; '0': never used).
install-shim: alternative without installing:
  export RUNAI_STREAMER_EXPERIMENTAL_AZURE_CACHE_LIB=$LIB
EOF
