#!/usr/bin/env bash
# Idempotent: creates training/.venv with training/requirements.txt (PyTorch, torchao, ONNX,
# ONNX Runtime). Re-running it does nothing unless the requirements changed.
#
# PyTorch from PyPI is a CUDA build: ~5 GB installed, ~3 GB of wheels. One `pip install -r`
# downloads every wheel before it installs any, so the disk must hold both at once (a CI run
# failed on that with ENOSPC). This resolves the whole set first (metadata only), then installs
# one package per pip call with --no-deps, so at most one wheel waits on disk beside what is
# installed, and finishes with `pip check`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=training/.venv
PIP=(--quiet --no-cache-dir --disable-pip-version-check)
free() { df -h --output=avail "$1" | tail -1 | tr -d ' '; }
if [ ! -x "$VENV/bin/python" ] || ! cmp -s training/requirements.txt "$VENV/.requirements"; then
  echo "train-setup: creating $VENV (PyTorch from PyPI is ~5 GB; a few minutes; $(free .) free here)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install "${PIP[@]}" --upgrade pip
  "$VENV/bin/pip" install "${PIP[@]}" --dry-run --ignore-installed --report "$VENV/.plan.json" \
    -r training/requirements.txt
  "$VENV/bin/python" - "$VENV/.plan.json" >"$VENV/.plan.txt" <<'PY'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    print(f'{meta["name"]}=={meta["version"]}')
PY
  n=$(wc -l <"$VENV/.plan.txt")
  i=0
  while read -r pkg; do
    i=$((i + 1))
    if ! "$VENV/bin/pip" install "${PIP[@]}" --no-deps "$pkg"; then
      echo "train-setup: installing $pkg ($i of $n) failed; $(free "$VENV") free on the venv's disk," \
        "$(free "${TMPDIR:-/tmp}") on pip's temporary directory" >&2
      exit 1
    fi
  done <"$VENV/.plan.txt"
  "$VENV/bin/pip" check --disable-pip-version-check
  cp training/requirements.txt "$VENV/.requirements"
fi
"$VENV/bin/python" -c "import torch, torchao, onnx, onnxscript, onnxruntime; print('train-setup: ok (torch', torch.__version__, 'torchao', torchao.__version__, 'onnxruntime', onnxruntime.__version__ + ')')"
