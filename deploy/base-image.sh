#!/usr/bin/env bash
# Local base images for deploy/Dockerfile, made without any registry (none is reachable here):
#
#   localhost/quantd-base:bookworm        Debian bookworm minbase from Debian's mirror (debootstrap),
#                                         docs, locales and apt lists removed; the runtime stage's base.
#   localhost/quantd-prometheus:bookworm  that base plus Debian's prometheus package (the compose
#                                         stack's Prometheus; deploy/prometheus/Containerfile).
#
# Idempotent: the debootstrap tarball is cached in .cache/deploy/ and reused when present, and an
# image that already exists is not rebuilt (QUANTD_BASE_REBUILD=1 forces both). Needs root (or
# rootless podman with user namespaces), podman, runc and debootstrap: scripts/deploy-setup.sh.
# Usage: deploy/base-image.sh [--prometheus]
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=.cache/deploy
TARBALL=$CACHE/$SUITE-minbase.tar
BASE=localhost/quantd-base:$SUITE
PROM=localhost/quantd-prometheus:$SUITE
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}

have_image() { [ "${QUANTD_BASE_REBUILD:-0}" != 1 ] && podman image exists "$1"; }

if [ ! -s "$TARBALL" ] || [ "${QUANTD_BASE_REBUILD:-0}" = 1 ]; then
  echo "base-image: debootstrap --variant=minbase $SUITE from $MIRROR (cached in $CACHE)"
  mkdir -p "$CACHE"
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # Nothing at run time reads these; the image budget is 150 MB.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/usr/share/info/* "$root"/var/log/*
  tar -C "$root" --numeric-owner -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$root"
  trap - EXIT
fi

if ! have_image "$BASE"; then
  echo "base-image: importing $TARBALL as $BASE"
  podman import --quiet --change 'CMD ["/bin/bash"]' "$TARBALL" "$BASE" >/dev/null
fi

if [ "${1:-}" = --prometheus ] && ! have_image "$PROM"; then
  echo "base-image: building $PROM (Debian's prometheus package)"
  podman build --quiet --network host --format docker --build-arg "BASE=$BASE" \
    -f deploy/prometheus/Containerfile -t "$PROM" deploy/prometheus >/dev/null
fi
