#!/usr/bin/env bash
# Idempotent set-up for `make test-deploy`: Debian's podman (with its recommends: catatonit for the
# pod pause image, netavark, aardvark-dns), runc and debootstrap. Installs only what is missing, and
# only as root on a Debian-like machine; anywhere else it says what is missing and leaves the
# decision to scripts/test-deploy.py (which skips, or fails under QUANTD_DEPLOY_REQUIRE=1).
set -euo pipefail
need=()
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "deploy-setup: missing ${need[*]}; install them (Debian: apt-get install podman runc debootstrap)" >&2
  exit 0
fi
echo "deploy-setup: installing Debian's ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q podman runc debootstrap >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null && apt-get install -y -q podman runc debootstrap >/dev/null; }
