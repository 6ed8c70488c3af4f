# Sourced by the bench scripts: starts a release quantd ($QUANTD, default ./target/release/quantd)
# in the background with the given serve flags and sets $addr, $aaddr (admin), $maddr and $pid; the caller's EXIT
# trap should kill $pid.
start_quantd() {
  local log
  log=$(mktemp)
  "${QUANTD:-./target/release/quantd}" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --log-json true "$@" 2>"$log" &
  pid=$!
  for _ in $(seq 100); do
    addr=$(grep -o '"message":"serving","addr":"[^"]*"' "$log" | sed 's/.*"addr":"//; s/"$//' || true)
    aaddr=$(grep -o '"admin_addr":"[^"]*"' "$log" | sed 's/.*"admin_addr":"//; s/"$//' || true)
    maddr=$(grep -o '"metrics_addr":"[^"]*"' "$log" | sed 's/.*"metrics_addr":"//; s/"$//' || true)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$log"; echo "server did not start" >&2; exit 1; }
  rm -f "$log"
}
