#!/usr/bin/env bash
# The README's "Which binary" numbers: release binary size, idle RSS and RSS with COUNT idle
# streams, for sse-gateway (tokio) and sse-gateway-smol, measured the same way for both.
#
#   cargo build --release --workspace
#   tests/bench/which-binary.sh [sse-gateway|sse-gateway-smol]...    (default: both)
#
# Each binary starts with the default configuration (127.0.0.1:8080, server.workers = 0) and a
# known secret (SSE_GATEWAY_JWT_SECRET; the environment is not the configuration file), or with
# CONFIG=file. Idle RSS is VmRSS from /proc/PID/status 2 s after the listening line; then
# target/release/hold opens COUNT (default 10,000) streams, one user each, from 127.0.0.2,
# 127.0.0.3..., and VmRSS is read again 3 s after /metrics counts them all open. Needs port 8080
# free. The open-files limit here is 20,000 per process, so COUNT stays below about 19,900.
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${COUNT:-10000}
export SSE_GATEWAY_JWT_SECRET=measure-secret-0123456789abcdef
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
open_streams() { curl -s http://127.0.0.1:8080/metrics | awk '/^sse_gateway_streams_open\{/ {s+=$2} END {print s+0}'; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for bin in "${@:-sse-gateway sse-gateway-smol}"; do
  for b in $bin; do
    echo "$b: $(stat -c %s "target/release/$b") bytes (ls -l), $(strip -o "$out/$b" "target/release/$b" && stat -c %s "$out/$b") stripped"
    "target/release/$b" ${CONFIG:+--config "$CONFIG"} > "$out/gw.out" 2> "$out/gw.err" &
    gw=$!
    until grep -q listening "$out/gw.out" 2>/dev/null; do kill -0 $gw || { cat "$out/gw.err"; exit 1; }; sleep 0.1; done
    sleep 2
    echo "$b idle: VmRSS $(rss $gw) kB, $(ls /proc/$gw/task | wc -l) threads"
    target/release/hold --addr 127.0.0.1:8080 --secret "$SSE_GATEWAY_JWT_SECRET" --count "$COUNT" > "$out/hold.out" 2>&1 &
    hold=$!
    for _ in $(seq 1 600); do
      [ "$(open_streams)" = "$COUNT" ] && break
      kill -0 $hold 2>/dev/null || break
      sleep 0.2
    done
    sleep 3
    echo "$b with $(open_streams) streams: VmRSS $(rss $gw) kB ($(tr '\n' ' ' < "$out/hold.out"))"
    kill $hold; wait $hold 2>/dev/null || true
    kill -TERM $gw; wait $gw || true
  done
done
