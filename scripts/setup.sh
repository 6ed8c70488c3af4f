#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: ONNX Runtime's shared library from the PyPI wheel,
# the Python venv for the interop client and model scripts, and the release build.
# Re-running it does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.32.0
CACHE=.cache/onnxruntime
PY=${PYTHON:-python3}

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi

# 1. Python venv (grpcio client, onnx tooling, pytest).
if [ ! -x .venv/bin/python ] || ! cmp -s requirements-dev.txt .venv/.requirements; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install --quiet --no-cache-dir --upgrade pip
  .venv/bin/pip install --quiet --no-cache-dir -r requirements-dev.txt
  cp requirements-dev.txt .venv/.requirements
fi

# 1b. NVIDIA's Triton client in a venv of its own, for the Open Inference Protocol interop test
#     (tests/python/test_kserve.py): tritonclient[grpc] pins protobuf < 7, grpcio-tools 1.85 needs 7.
if [ ! -x .venv-triton/bin/python ] || ! cmp -s requirements-triton.txt .venv-triton/.requirements; then
  echo "setup: creating .venv-triton (tritonclient[grpc])"
  "$PY" -m venv .venv-triton
  .venv-triton/bin/pip install --quiet --no-cache-dir -r requirements-triton.txt
  cp requirements-triton.txt .venv-triton/.requirements
fi

# 2. libonnxruntime from the PyPI wheel (no other download source is reachable or needed).
if [ ! -f "$CACHE/libonnxruntime.so.$ORT_VERSION" ]; then
  echo "setup: fetching the onnxruntime $ORT_VERSION wheel for its shared library"
  mkdir -p .cache/wheels "$CACHE"
  .venv/bin/pip download --quiet --no-deps --only-binary=:all: -d .cache/wheels "onnxruntime==$ORT_VERSION"
  wheel=$(ls .cache/wheels/onnxruntime-"$ORT_VERSION"-*.whl | head -n1)
  .venv/bin/python - "$wheel" "$CACHE" "$ORT_VERSION" <<'PY'
import sys, zipfile, os
wheel, dest, ver = sys.argv[1:]
name = f"onnxruntime/capi/libonnxruntime.so.{ver}"
with zipfile.ZipFile(wheel) as z:
    data = z.read(name)
tmp = os.path.join(dest, f"libonnxruntime.so.{ver}.tmp")
with open(tmp, "wb") as f:
    f.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, os.path.join(dest, f"libonnxruntime.so.{ver}"))
PY
fi
ln -sfn "libonnxruntime.so.$ORT_VERSION" "$CACHE/libonnxruntime.so.1"
ln -sfn "libonnxruntime.so.1" "$CACHE/libonnxruntime.so"

# 3. A TrueType font for plot labels (replay equity plots, quantd-load plots).
if [ -z "${QUANTD_PLOT_FONT:-}" ] && ! ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf >/dev/null 2>&1; then
  echo "setup: installing fonts-dejavu-core for plot labels"
  if [ "$(id -u)" = 0 ]; then APT=apt-get; else APT="sudo apt-get"; fi
  $APT install -y --no-install-recommends fonts-dejavu-core >/dev/null 2>&1 \
    || { $APT update >/dev/null 2>&1 && $APT install -y --no-install-recommends fonts-dejavu-core >/dev/null 2>&1; } \
    || echo "setup: could not install fonts-dejavu-core; plots need QUANTD_PLOT_FONT=<a .ttf>" >&2
fi

# 4. Prometheus and promtool (Debian's package) for the deploy/ tests: a real scrape of a running
#    quantd, `promtool check` of its exposition and of the alert rules.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "setup: installing Debian's prometheus package (prometheus + promtool, for the tests)"
  if [ "$(id -u)" = 0 ]; then APT=apt-get; else APT="sudo apt-get"; fi
  export DEBIAN_FRONTEND=noninteractive
  $APT install -y --no-install-recommends prometheus >/dev/null 2>&1 \
    || { $APT update >/dev/null 2>&1 && $APT install -y --no-install-recommends prometheus >/dev/null; }
fi

# 5. Build.
cargo build --release --locked --workspace --bins
echo "setup: ok (ONNX Runtime at $CACHE/libonnxruntime.so.1)"
