#!/usr/bin/env bash
# The GPU execution-provider check. With one GPU build of ONNX Runtime loaded, it
#   1. times the default model's session per call at batch 1 and 64 on the CPU provider, then on
#      CUDA (`quantd bench-model`), and tries TensorRT (reported unavailable without TensorRT);
#   2. serves the model on each provider in turn, checks `quantd_model_info{provider=...}`, and
#      streams the same recorded ticks at the same fixed rate through it with quantd-load;
#   3. prints the figures side by side and writes them under $RESULTS.
#
# Needs an NVIDIA GPU and driver, and:
#   - quantd and quantd-load built with the cuda feature: built here with cargo unless
#     QUANTD_BIN_DIR names a folder holding both;
#   - the GPU build of ONNX Runtime, matching the `ort` crate's API level (1.31): ORT_GPU_LIB names
#     its libonnxruntime.so.1.31.x, with libonnxruntime_providers_{shared,cuda,tensorrt}.so beside
#     it (all in the PyPI onnxruntime-gpu wheel, onnxruntime/capi/); default: a .venv-gpu made here
#     with `pip install onnxruntime-gpu[cuda,cudnn]==1.31.1`, which also brings CUDA 13 and cuDNN 9;
#   - CUDA 13 and cuDNN 9 libraries: CUDA_LIB_DIRS (colon-separated), default the lib folders of
#     the pip `nvidia-*` packages that $PY (python3) sees.
# Usage: scripts/gpu-check.sh [RATE ticks/s, default 2000] [SECONDS, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-2000}
SECS=${2:-10}
TICKS=${TICKS:-../shared/data/ticks}
RESULTS=${RESULTS:-target/gpu-check}
MODEL=${MODEL:-models/quantd-mlp/1}
CALLS=${CALLS:-20000}
PY=${PY:-python3}
mkdir -p "$RESULTS"

BIN=${QUANTD_BIN_DIR:-}
if [ -z "$BIN" ]; then
  cargo build --release --locked --workspace --bins --features quantd/cuda
  BIN=target/release
fi
if [ -z "${ORT_GPU_LIB:-}" ]; then
  if [ ! -d .venv-gpu ]; then
    python3 -m venv .venv-gpu
    .venv-gpu/bin/pip install --quiet "onnxruntime-gpu[cuda,cudnn]==1.31.1"
  fi
  ORT_GPU_LIB=$(ls .venv-gpu/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.* | head -n1)
  PY=.venv-gpu/bin/python
fi
if [ -z "${CUDA_LIB_DIRS:-}" ]; then
  CUDA_LIB_DIRS=$("$PY" - <<'EOF'
import glob, os, site
dirs = set()
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for f in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
EOF
  )
fi
export LD_LIBRARY_PATH="$(dirname "$ORT_GPU_LIB"):$CUDA_LIB_DIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ORT_DYLIB_PATH=$ORT_GPU_LIB
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: no GPU driver"
  echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "onnxruntime: $ORT_GPU_LIB"
} | tee "$RESULTS/machine.txt"

echo "== session per call (quantd bench-model, $CALLS calls per batch size)"
for p in cpu cuda tensorrt; do
  if ! "$BIN/quantd" bench-model "$MODEL" --execution-provider "$p" --calls "$CALLS" \
      --json "$RESULTS/bench-model-$p.json" 2>"$RESULTS/bench-model-$p.err"; then
    echo "$p: unavailable: $(grep -v '^$' "$RESULTS/bench-model-$p.err" | head -n3 | tr '\n' ' ')"
  fi
done

echo "== served end to end ($RATE ticks/s for ${SECS}s of recorded BTCUSDT quotes and trades, quantd-load)"
. scripts/serve-bg.sh
metric() { "$PY" -c "import sys, urllib.request; print(urllib.request.urlopen('http://' + sys.argv[1] + '/metrics').read().decode())" "$1"; }
for p in cpu cuda; do
  QUANTD="$BIN/quantd" start_quantd --models models --execution-provider "$p"
  trap 'kill $pid 2>/dev/null || true' EXIT
  sleep 1.5 # one metrics publication
  metric "$maddr" | grep '^quantd_model_info' | grep ' 1$' | tee "$RESULTS/model-info-$p.txt"
  grep -q "provider=\"$p\"" "$RESULTS/model-info-$p.txt" || { echo "quantd_model_info does not say provider=$p" >&2; exit 1; }
  "$BIN/quantd-load" --target "$addr" --metrics "$maddr" --rate "$RATE" --duration "$SECS" --warmup 2 --quiet \
    --label "quantd on $p" --json "$RESULTS/stream-$p.json" \
    --ticks "$TICKS/binance_usdm_btcusdt_20240808_quotes.csv.gz" "$TICKS/binance_usdm_btcusdt_20240808_trades.csv.gz"
  kill -TERM "$pid"
  wait "$pid" || true
done

"$PY" - "$RESULTS" <<'EOF' | tee "$RESULTS/summary.md"
import json, os, sys
d = sys.argv[1]
print("| provider | batch | p50 µs/call | p99 µs/call |")
print("|---|---|---|---|")
for p in ("cpu", "cuda", "tensorrt"):
    f = os.path.join(d, f"bench-model-{p}.json")
    if not os.path.exists(f):
        print(f"| {p} | — | unavailable | |")
        continue
    for c in json.load(open(f))["calls"]:
        print(f"| {p} | {c['batch']} | {c['p50_us']:.1f} | {c['p99_us']:.1f} |")
print()
print("| provider | achieved ticks/s | errors | e2e p50 µs | e2e p99 µs | server p50 µs | server p99 µs | inference stage p50 µs |")
print("|---|---|---|---|---|---|---|---|")
for p in ("cpu", "cuda"):
    r = json.load(open(os.path.join(d, f"stream-{p}.json")))
    inf = r.get("server_stages", {}).get("inference", {}).get("p50_us", float("nan"))
    print(f"| {p} | {r['achieved_rate']:.0f} | {len(r['errors'])} | {r['end_to_end']['p50_us']:.1f} | "
          f"{r['end_to_end']['p99_us']:.1f} | {r['server_internal']['p50_us']:.1f} | "
          f"{r['server_internal']['p99_us']:.1f} | {inf:.1f} |")
EOF
