#!/usr/bin/env bash
# Idempotent: creates training/.venv with training/requirements.txt (PyTorch, torchao, ONNX,
# ONNX Runtime). Re-running it does nothing unless the requirements changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=training/.venv
if [ ! -x "$VENV/bin/python" ] || ! cmp -s training/requirements.txt "$VENV/.requirements"; then
  echo "train-setup: creating $VENV (PyTorch from PyPI is ~5 GB; a few minutes)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --no-cache-dir --upgrade pip
  "$VENV/bin/pip" install --quiet --no-cache-dir -r training/requirements.txt
  cp training/requirements.txt "$VENV/.requirements"
fi
"$VENV/bin/python" -c "import torch, torchao, onnx, onnxscript, onnxruntime; print('train-setup: ok (torch', torch.__version__, 'torchao', torchao.__version__, 'onnxruntime', onnxruntime.__version__ + ')')"
