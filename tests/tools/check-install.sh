#!/usr/bin/env bash
# Checks scripts/install-shim.sh against a throwaway Python virtual environment: both
# auto-discovered layouts get the library, each copy loads as the streamer loads it
# (unit_dlopen_bare), and --uninstall removes exactly what was installed.
# usage: check-install.sh LIB DLOPEN_BARE
set -euo pipefail
lib=$1 bare=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
py=$(command -v python3 || true)
if [ -z "$py" ] || ! "$py" -c 'import venv' 2>/dev/null; then
  echo "check-install: python3 with venv not available (apt-get install python3-venv)"
  [ "${CI:-}" = true ] && exit 1 # CI installs it (scripts/setup.sh): missing is a failure
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m venv --without-pip "$tmp/venv"
vpy=$tmp/venv/bin/python
site=$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
bash "$here/scripts/install-shim.sh" --python "$vpy" --lib "$lib"
for layout in dacs_client py_tachyon_client; do
  f=$site/$layout/libStorageDirect.so
  [ -f "$f" ] || { echo "check-install: $f missing"; exit 1; }
  cmp -s "$f" "$lib" || { echo "check-install: $f differs from $lib"; exit 1; }
  "$bare" "$f"
done
bash "$here/scripts/install-shim.sh" --python "$vpy" --uninstall
for layout in dacs_client py_tachyon_client; do
  [ ! -e "$site/$layout/libStorageDirect.so" ] || { echo "check-install: $layout not removed"; exit 1; }
done
echo "check-install: OK (both layouts installed, loaded, removed)"
