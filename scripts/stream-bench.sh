#!/usr/bin/env bash
# Streams a recorded Binance tick file at a fixed rate (default 10k ticks/s) at a freshly started
# release quantd serving the default model, and prints the server's own tick->signal percentiles
# beside the open-loop end-to-end latency. Usage: scripts/stream-bench.sh [RATE] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-10000}
SECS=${2:-20}
TICKS=${TICKS:-../shared/data/ticks}
cargo build --release --quiet --bins --example stream_bench
log=$(mktemp)
# shellcheck disable=SC2086 # QUANTD_ARGS: extra serve flags, word-split on purpose
./target/release/quantd serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --log-json true ${QUANTD_ARGS:-} 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do
  addr=$(grep -o '"message":"serving","addr":"[^"]*"' "$log" | sed 's/.*"addr":"//; s/"$//' || true)
  maddr=$(grep -o '"metrics_addr":"[^"]*"' "$log" | sed 's/.*"metrics_addr":"//; s/"$//' || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$log"; echo "server did not start" >&2; exit 1; }
echo "quantd at $addr; $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
./target/release/examples/stream_bench --target "$addr" --rate "$RATE" --duration "$SECS" --warmup 2 --metrics "$maddr" \
  --ticks "$TICKS/binance_usdm_btcusdt_20240808_quotes.csv.gz" "$TICKS/binance_usdm_btcusdt_20240808_trades.csv.gz"
kill -TERM $pid
wait $pid
