#!/usr/bin/env bash
# Hot-swap benchmark: a release quantd serving two versions of the default model (a temporary
# models directory with quantd-mlp@1 and an identical @2), recorded ticks streamed open loop by
# quantd-load at RATE ticks/s, a swap every SWAP_EVERY seconds through ModelAdmin.ActivateModel,
# and the server latency of ticks around the swaps against the rest of the same run.
# Usage: scripts/swap-bench.sh [RATE] [SECONDS] [SWAP_EVERY]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-50000}
SECS=${2:-30}
EVERY=${3:-3}
TICKS=${TICKS:-../shared/data/ticks}
cargo build --release --quiet --locked --workspace --bins
work=$(mktemp -d)
mkdir -p "$work/models/quantd-mlp"
cp -r models/quantd-mlp/1 "$work/models/quantd-mlp/1"
mkdir -p "$work/stage" && cp models/quantd-mlp/1/model.onnx models/quantd-mlp/1/verify.npy "$work/stage/"
sed 's/^version = "1"$/version = "2"/' models/quantd-mlp/1/manifest.toml > "$work/stage/manifest.toml"
mv "$work/stage" "$work/models/quantd-mlp/2"
. scripts/serve-bg.sh
start_quantd --models "$work/models" --model quantd-mlp@1
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
./target/release/quantd-load --target "$addr" --admin "$aaddr" --rate "$RATE" --duration "$SECS" --warmup 2 \
  --swap-every "$EVERY" --swap-versions quantd-mlp@2,quantd-mlp@1 \
  --ticks "$TICKS/binance_usdm_btcusdt_20240808_quotes.csv.gz" "$TICKS/binance_usdm_btcusdt_20240808_trades.csv.gz"
kill -TERM $pid
wait $pid
