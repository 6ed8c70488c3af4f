#!/usr/bin/env bash
# Streams the recorded Binance BTCUSDT quotes and trades at a fixed rate (default 10k ticks/s) at a
# freshly started release quantd serving the default model, with quantd-load (open loop), and
# prints end-to-end, its split, and the server's own per-stage percentiles.
# Usage: scripts/stream-bench.sh [RATE] [SECONDS] [extra quantd-load flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-10000}
SECS=${2:-20}
shift $(( $# < 2 ? $# : 2 ))
TICKS=${TICKS:-../shared/data/ticks}
cargo build --release --quiet --locked --workspace --bins
. scripts/serve-bg.sh
# shellcheck disable=SC2086 # QUANTD_ARGS: extra serve flags, word-split on purpose
start_quantd ${QUANTD_ARGS:-}
trap 'kill $pid 2>/dev/null || true' EXIT
echo "quantd at $addr; $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
./target/release/quantd-load --target "$addr" --admin "$aaddr" --metrics "$maddr" --rate "$RATE" --duration "$SECS" --warmup 2 \
  --ticks "$TICKS/binance_usdm_btcusdt_20240808_quotes.csv.gz" "$TICKS/binance_usdm_btcusdt_20240808_trades.csv.gz" "$@"
kill -TERM $pid
wait $pid
