#!/usr/bin/env bash
# The benchmark peer's venv (.venv-peer): Seldon MLServer with ONNX Runtime, for
# `make bench` / `make bench-peers` (scripts/bench.py --only peers). Not needed by `make test`.
# Idempotent: re-running does nothing once requirements-peer.txt is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-peer/bin/python ] || ! cmp -s requirements-peer.txt .venv-peer/.requirements; then
  echo "peer-setup: creating .venv-peer (mlserver, onnxruntime; ~400 MB)"
  "$PY" -m venv .venv-peer
  .venv-peer/bin/pip install --quiet --no-cache-dir -r requirements-peer.txt
  cp requirements-peer.txt .venv-peer/.requirements
fi
echo "peer-setup: ok"
