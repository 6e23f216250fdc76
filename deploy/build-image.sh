#!/usr/bin/env bash
# Builds blobswarm's container images from deploy/Dockerfile with podman, where no container
# registry is reachable: the Dockerfile's default base (ARG BASE, debian:12-slim) is made
# here from Debian's packages with mmdebstrap and imported under that name, then the same
# Dockerfile is built with `podman build --pull=never`. Elsewhere, `podman build` or
# `docker build -f deploy/Dockerfile .` pulls the real base and gives the same image.
#
# usage: deploy/build-image.sh [--image NAME] [--workload-image NAME] [--no-workload]
#                              [--new-base] [--force]
#   --image NAME           the runtime image (default localhost/blobswarm:dev)
#   --workload-image NAME  the `workload` stage: python3 + blobswarm-read, no shim
#                          (default localhost/blobswarm-workload:dev)
#   --no-workload          build the runtime image only
#   --new-base             make the base again even if an image of that name exists
#   --force                build even if the images carry the current inputs' hash
#
# Caching: each image is labelled with a hash of its inputs (the Dockerfile, .dockerignore,
# every file the build context admits, the base image's ID), by the Dockerfile's last step
# (ARG BS_INPUTS: a label given with --label would stay as it was on an image rebuilt
# wholly from podman's cache). When the images of that name
# already carry the current hash, nothing is built. Otherwise podman's layer cache keeps the
# package layers, so only the compile step runs again after a source change.
# Podman settings: CONTAINERS_CONF, default deploy/podman/containers.conf (runc, cgroupfs,
# no default ulimits: what Debian 12's podman needs on these machines).
# Prints the time taken and the images' sizes. Needs root (rootful podman) here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly DOCKERFILE=$ROOT/deploy/Dockerfile
readonly IGNORE=$ROOT/.dockerignore
readonly LABEL=org.blobswarm.inputs
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/podman/containers.conf}

IMAGE=localhost/blobswarm:dev
WORKLOAD=localhost/blobswarm-workload:dev
BUILD_WORKLOAD=1
NEW_BASE=0
FORCE=0

die() {
  echo "build-image: $*" >&2
  exit 1
}
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
    --image) IMAGE=${2:?}; shift 2 ;;
    --workload-image) WORKLOAD=${2:?}; shift 2 ;;
    --no-workload) BUILD_WORKLOAD=0; shift ;;
    --new-base) NEW_BASE=1; shift ;;
    --force) FORCE=1; shift ;;
    -h | --help) usage ;;
    *) echo "build-image: unknown argument $1" >&2; usage ;;
  esac
done

command -v podman >/dev/null 2>&1 ||
  die "podman is missing (Debian: apt-get install podman runc mmdebstrap; scripts/setup.sh does)"
[ -r "$CONTAINERS_CONF" ] || die "CONTAINERS_CONF=$CONTAINERS_CONF is not readable"

# The Dockerfile's default base: its one source of truth.
BASE=$(sed -n 's/^ARG BASE=//p' "$DOCKERFILE")
[ -n "$BASE" ] || die "no 'ARG BASE=' line in $DOCKERFILE"
readonly BASE

now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }
T0=$(now_ms)

# ---------------------------------------------------------------------------------------
# the base
# ---------------------------------------------------------------------------------------
# Debian 12 as the official debian:12-slim has it: minbase, merged /usr, the slim image's dpkg
# excludes (no manuals, docs but copyright files, locales) and its apt/dpkg speed-ups (no
# translations, no fsync while unpacking); they stay in the image's dpkg and apt
# configuration, so the Dockerfile's own installs follow them too.
readonly MMDEBSTRAP_ARGS=(
  --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt=force-unsafe-io --aptopt='Acquire::Languages "none"'
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/groff/*' --dpkgopt='path-exclude=/usr/share/lintian/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  bookworm
)
# A base made here carries this label (a hash of how it was made); one made with other
# arguments is made again. An image of that name without the label (a real debian:12-slim)
# is used as it is.
readonly BASE_LABEL=org.blobswarm.base
BASE_RECIPE=mmdebstrap-$(printf '%s\n' "${MMDEBSTRAP_ARGS[@]}" | sha256sum | cut -c1-16)
readonly BASE_RECIPE

make_base() {
  command -v mmdebstrap >/dev/null 2>&1 ||
    die "mmdebstrap is missing (Debian: apt-get install mmdebstrap; scripts/setup.sh does)"
  local tmp t0
  t0=$(now_ms)
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/bs-base.XXXXXX")
  # shellcheck disable=SC2064 # expand now: tmp is local
  trap "rm -rf '$tmp'" EXIT
  echo "build-image: making $BASE with mmdebstrap (Debian bookworm, minbase)"
  if ! mmdebstrap --quiet "${MMDEBSTRAP_ARGS[@]}" "$tmp/base.tar" >"$tmp/mmdebstrap.log" 2>&1; then
    tail -n 30 "$tmp/mmdebstrap.log" >&2
    die "mmdebstrap failed"
  fi
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --change "LABEL $BASE_LABEL=$BASE_RECIPE" \
    "$tmp/base.tar" "$BASE" >/dev/null || die "podman import failed"
  rm -rf "$tmp"
  trap - EXIT
  echo "build-image: base made in $(secs $(($(now_ms) - t0))) s"
}

base_label() {
  podman image inspect --format "{{index .Labels \"$BASE_LABEL\"}}" "$BASE" 2>/dev/null || true
}

if [ "$NEW_BASE" = 1 ] || ! podman image exists "$BASE"; then
  make_base
elif [ -n "$(base_label)" ] && [ "$(base_label)" != "$BASE_RECIPE" ]; then
  echo "build-image: $BASE was made here with other arguments"
  make_base
else
  echo "build-image: using the existing $BASE (--new-base makes it again)"
fi
BASE_ID=$(podman image inspect --format '{{.Id}}' "$BASE")

# ---------------------------------------------------------------------------------------
# the inputs' hash
# ---------------------------------------------------------------------------------------
# The files the build context admits: the `!path` lines of .dockerignore (which starts by
# excluding everything), so the list lives in one place.
inputs_hash() {
  local paths=() p
  while IFS= read -r p; do
    paths+=("${p%/}")
  done < <(sed -n 's/^!//p' "$IGNORE")
  [ ${#paths[@]} -gt 0 ] || die "no '!path' lines in $IGNORE"
  {
    echo "base $BASE_ID"
    (cd "$ROOT" && sha256sum deploy/Dockerfile .dockerignore)
    (cd "$ROOT" && find "${paths[@]}" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-32
}
HASH=$(inputs_hash)
readonly HASH

label_of() {
  podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$1" 2>/dev/null || true
}

up_to_date() {
  [ "$FORCE" = 0 ] || return 1
  [ "$(label_of "$IMAGE")" = "$HASH" ] || return 1
  [ "$BUILD_WORKLOAD" = 0 ] || [ "$(label_of "$WORKLOAD")" = "$HASH" ]
}

size_of() {
  podman image inspect --format '{{.Size}}' "$1" |
    awk '{ printf "%d bytes (%.1f MB)", $1, $1 / 1e6 }'
}

# ---------------------------------------------------------------------------------------
# the build
# ---------------------------------------------------------------------------------------
if up_to_date; then
  echo "build-image: inputs unchanged ($HASH): keeping the built images"
else
  t0=$(now_ms)
  build() { # TARGET NAME
    echo "build-image: building target $1 as $2"
    podman build --pull=never --layers --jobs 2 --file "$DOCKERFILE" --target "$1" \
      --build-arg "BS_INPUTS=$HASH" --tag "$2" "$ROOT" || die "podman build of target $1 failed"
  }
  build runtime "$IMAGE"
  [ "$BUILD_WORKLOAD" = 0 ] || build workload "$WORKLOAD"
  echo "build-image: built in $(secs $(($(now_ms) - t0))) s"
fi
echo "build-image: $IMAGE: $(size_of "$IMAGE")"
[ "$BUILD_WORKLOAD" = 0 ] || echo "build-image: $WORKLOAD: $(size_of "$WORKLOAD")"
echo "build-image: done in $(secs $(($(now_ms) - T0))) s"
