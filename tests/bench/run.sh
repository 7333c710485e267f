#!/usr/bin/env bash
# Side-by-side benchmarks of sse-gateway (tokio), sse-gateway-smol and nchan (BENCHMARKS.md).
#
#   tests/bench/run.sh build                      build the binaries and the load tool, snapshot them
#   tests/bench/run.sh fanout  [SERVER...]        (a) 10,000 subscribers, RATE (100) events/s for DURATION (20) s
#   tests/bench/run.sh steps   [SERVER...]        (a) the highest rate in RATES sustained without loss (STEP_SECS each)
#   tests/bench/run.sh latency [SERVER...]        (b) 1,000 subscribers x 1,000 events/s for DURATION (20) s,
#                                                 with LATENCY_WORKERS ("1 2") workers in turn
#   tests/bench/run.sh sweep   [SERVER...]        (b) the same 1,000 subscribers at SWEEP_RATES (100 300 600) events/s
#   tests/bench/run.sh scale   [SERVER...]        (b) 1,000 events/s to SCALE_STREAMS (10 100 300 1000) subscribers
#   tests/bench/run.sh burst   [SERVER...]        (b') 10 subscribers, a burst of BURST_RATE (20000) events/s for BURST_SECS (2) s
#   tests/bench/run.sh idle    [SERVER...]        (c) IDLE_STREAMS idle streams: server memory per stream
#   tests/bench/run.sh accept  [SERVER...]        (d) new streams per second (10,000 streams, HS256 tokens)
#   tests/bench/run.sh resume  [SERVER...]        (e) resume storm: 10,000 clients, each 100 events behind
#   tests/bench/run.sh floor                      what one loopback write costs here, no server at all
#                                                 (1,000 connections; FLOOR_BYTES "150 1800")
#   tests/bench/run.sh hotpath                    the core micro-benchmark
#   tests/bench/run.sh all                        every scenario above but scale (latency, burst and
#                                                 sweep on the two gateways only)
#
# SERVER is tokio (sse-gateway), smol (sse-gateway-smol) or nchan; default all three. Each
# scenario starts a fresh server, runs the load tool (tests/src/bin/load.rs) and stops it. Every
# run appends the tool's JSON line (with a label naming scenario, server, workers and the load
# average at its start) to $RESULTS and prints its table on stderr.
#
# Environment: WORKERS (server.workers of both gateways = nchan's worker_processes, default 2),
# RUNS (repetitions of each measurement, default 2), QUIET (before the first measurement of a
# command, wait until the 1-minute load average is below this, default 0.5; QUIET_MAX seconds at
# most, default 600, then it runs anyway and the label says so; the benchmark's own runs keep the
# load average up afterwards, so later runs only record it: QUIET_EACH=1 waits before every run),
# BENCH_DIR (default /tmp/sse-bench).
#
# Loopback only: servers listen on 127.0.0.1, clients come from 127.x.y.z. Needs RabbitMQ
# (.ci/ensure-rabbitmq starts it) and `apt-get install -y nginx libnginx-mod-nchan` for nchan;
# nginx runs from a temp dir with its own pid, logs and temp paths, never as the system service.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/sse-bench}
RESULTS=${RESULTS:-$BENCH_DIR/results.jsonl}
WORKERS=${WORKERS:-2}
RUNS=${RUNS:-2}
QUIET=${QUIET:-0.5}
QUIET_MAX=${QUIET_MAX:-600}
QUIET_EACH=${QUIET_EACH:-0}
GW_PORT=${GW_PORT:-18080}
NCHAN_PORT=${NCHAN_PORT:-18090}
BIN=$BENCH_DIR/bin
SECRET=bench-secret-0123456789-0123456789
mkdir -p "$BENCH_DIR"

log() { echo "== $*" >&2; }

build() {
  (cd "$ROOT" && cargo build --release -p sse-gateway-tokio -p sse-gateway-smol -p sse-gateway-tests --bin sse-gateway --bin sse-gateway-smol --bin load --bin hold --bin floor)
  mkdir -p "$BIN"
  # A snapshot: other builds in the work tree do not change the binaries under test mid-run.
  cp "$ROOT/target/release/sse-gateway" "$ROOT/target/release/sse-gateway-smol" "$ROOT/target/release/load" "$ROOT/target/release/hold" "$ROOT/target/release/floor" "$BIN/"
  (cd "$ROOT" && git rev-parse --short HEAD) > "$BIN/commit"
  log "binaries of $(cat "$BIN/commit") in $BIN"
}

need_bins() { [ -x "$BIN/load" ] || build; }

# Waits until the 1-minute load average is below $QUIET; echoes the load average it ran at.
quiet() {
  local waited=0 la
  while :; do
    la=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v a="$la" -v q="$QUIET" 'BEGIN { exit !(a < q) }'; then echo "$la"; return; fi
    if [ "$waited" -ge "$QUIET_MAX" ]; then echo "${la}-not-quiet"; return; fi
    [ "$waited" -eq 0 ] && log "load average $la, waiting for < $QUIET"
    sleep 10; waited=$((waited + 10))
  done
}

# ---- servers: start_<server> sets PIDS (what the load tool watches), ADDR and TARGET ----

SERVER_PID=""
start_gateway() { # $1 = binary name
  local dir=$BENCH_DIR/gw
  rm -rf "$dir"; mkdir -p "$dir"
  sed -e "s/@PORT@/$GW_PORT/" -e "s/@WORKERS@/$WORKERS/" "$ROOT/tests/bench/gateway.toml" > "$dir/gateway.toml"
  # A fresh queue: nothing left over from an earlier run reaches the new process.
  rabbitmqctl -q delete_queue sse-gateway.bench.deals >/dev/null 2>&1 || true
  "$BIN/$1" --config "$dir/gateway.toml" > "$dir/stdout" 2> "$dir/stderr" &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    grep -q "listening on" "$dir/stdout" 2>/dev/null && break
    sleep 0.1
  done
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW_PORT/readyz")" = 200 ] && break
    sleep 0.1
  done
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW_PORT/readyz")" = 200 ] || { cat "$dir/stderr" >&2; return 1; }
  PIDS="--pid $SERVER_PID"; ADDR=127.0.0.1:$GW_PORT; TARGET=gateway
}

start_nchan() {
  local dir=$BENCH_DIR/nchan
  rm -rf "$dir"; mkdir -p "$dir"
  sed -e "s|@DIR@|$dir|g" -e "s/@PORT@/$NCHAN_PORT/" -e "s/@WORKERS@/$WORKERS/" "$ROOT/tests/bench/nchan/nginx.conf" > "$dir/nginx.conf"
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
  for _ in $(seq 1 50); do [ -s "$dir/nginx.pid" ] && break; sleep 0.1; done
  [ -s "$dir/nginx.pid" ] || { cat "$dir/error.log" >&2; return 1; }
  SERVER_PID=$(cat "$dir/nginx.pid")
  sleep 0.5
  PIDS=""
  for p in $(pgrep -P "$SERVER_PID"); do PIDS="$PIDS --pid $p"; done
  ADDR=127.0.0.1:$NCHAN_PORT; TARGET=nchan
}

start() { # $1 = tokio | smol | nchan
  case $1 in
    tokio) start_gateway sse-gateway ;;
    smol) start_gateway sse-gateway-smol ;;
    nchan) start_nchan ;;
    *) echo "unknown server $1" >&2; exit 2 ;;
  esac
}

stop() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop EXIT

# The load average now (and, before the first run or with QUIET_EACH=1, after waiting for quiet).
# Sets LA (not a subshell: FIRST must stay changed).
FIRST=1
loadavg() {
  if [ "$FIRST" = 1 ] || [ "$QUIET_EACH" = 1 ]; then FIRST=0; LA=$(quiet); else LA=$(cut -d' ' -f1 /proc/loadavg); fi
}

# load SCENARIO SERVER ARGS...: one measurement on the running server.
load() {
  local scenario=$1 server=$2; shift 2
  local la; loadavg; la=$LA
  log "$scenario on $server (workers $WORKERS, load average $la)"
  # shellcheck disable=SC2086
  "$BIN/load" --target "$TARGET" --addr "$ADDR" $PIDS --secret "$SECRET" \
    --label "scenario=$scenario server=$server workers=$WORKERS loadavg=$la commit=$(cat "$BIN/commit")" "$@" | tee -a "$RESULTS"
}

servers() { if [ $# -eq 0 ]; then echo tokio smol nchan; else echo "$@"; fi; }
# The scenarios through RabbitMQ default to the gateways only.
gateways() { if [ $# -eq 0 ]; then echo tokio smol; else echo "$@"; fi; }

# each SERVERS SCENARIO LOAD-ARGS...: RUNS runs on each server of the list, a fresh server for
# each, one measurement labelled "SCENARIO run=N".
each() {
  local list=$1 scenario=$2 s r; shift 2
  for s in $list; do
    for r in $(seq 1 "$RUNS"); do
      start "$s"
      load "$scenario run=$r" "$s" "$@"
      stop
    done
  done
}

# ---- scenarios ----

fanout() {
  each "$(servers "$@")" fanout-10k --mode fanout --streams 10000 --rate "${RATE:-100}" --duration "${DURATION:-20}" --drain 15
}

# (a) Max rate without loss: the first rate in RATES that loses an event or is not delivered at
# 90 % of the offered deliveries/s (nchan does not drop: its publish waits for its fan-out, so it
# falls behind instead) ends the run; the rate before it is the answer.
steps() {
  for s in $(servers "$@"); do
    for r in $(seq 1 "$RUNS"); do
      start "$s"
      for rate in ${RATES:-2 5 10 20 40 70 100 150 200 300 400 600}; do
        load "steps-10k rate=$rate run=$r" "$s" --mode fanout --streams 10000 --rate "$rate" --duration "${STEP_SECS:-5}" --drain 10 > "$BENCH_DIR/step.json"
        out=$(cat "$BENCH_DIR/step.json"); echo "$out"
        lost=$(echo "$out" | sed -n 's/.*"lost":\([0-9]*\).*/\1/p')
        dps=$(echo "$out" | sed -n 's/.*"deliveries_per_s":\([0-9.e+]*\).*/\1/p')
        if [ "${lost:-1}" != 0 ] || ! awk -v d="${dps:-0}" -v o="$((rate * 10000))" 'BEGIN { exit !(d >= 0.9 * o) }'; then
          log "$s: not sustained at $rate events/s (lost ${lost:-?}, ${dps:-?} deliveries/s)"; break
        fi
      done
      stop
    done
  done
}

# (b) Through RabbitMQ: the gateways by default (nchan on request: `latency nchan`).
latency() {
  local w workers=$WORKERS
  for w in ${LATENCY_WORKERS:-1 2}; do
    WORKERS=$w
    each "$(gateways "$@")" latency-1k-x-1000 --mode fanout --streams 1000 --rate 1000 --duration "${DURATION:-20}" --drain 10
  done
  WORKERS=$workers
}

# (b') A burst through RabbitMQ: BURST_RATE events/s for BURST_SECS s to 10 subscribers, so the
# source's per-message cost (consume, validate, ack) is what is measured, not the fan-out.
burst() {
  each "$(gateways "$@")" "burst-10 rate=${BURST_RATE:-20000}" --mode fanout --streams 10 --rate "${BURST_RATE:-20000}" --duration "${BURST_SECS:-2}" --drain 10
}

# (b), underneath it: the kernel's cost of one write to a loopback connection, from one thread to
# 1,000 connections in turn, with a thread reading them (spinning, or waiting for readiness as
# subscribers do) and without one (only the sender's side). A server's fan-out round costs at least 1,000 times this.
floor() {
  need_bins
  local b r mode la; loadavg; la=$LA
  for b in ${FLOOR_BYTES:-150 1800}; do
    for mode in --reader --reader-wait --no-reader; do
      for r in $(seq 1 "$RUNS"); do
        log "floor: 1,000 connections, $b bytes per write, $mode, run $r (load average $la)"
        # shellcheck disable=SC2046
        "$BIN/floor" --label "scenario=floor $mode run=$r loadavg=$la commit=$(cat "$BIN/commit")" \
          --streams 1000 --bytes "$b" $(case $mode in --reader) echo --reader ;; --reader-wait) echo --reader --wait ;; esac) | tee -a "$RESULTS"
      done
    done
  done
}

# Server memory: VmRSS of the watched PIDs, summed, in KiB.
rss_kib() { local t=0 p; for p in $(echo "$PIDS" | sed 's/--pid//g'); do t=$((t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }

# (b), around it: the same 1,000 subscribers at lower rates (SWEEP_RATES), to show where the
# p99 goal holds on this machine.
sweep() {
  for s in $(gateways "$@"); do
    for r in $(seq 1 "$RUNS"); do
      start "$s"
      for rate in ${SWEEP_RATES:-100 300 600}; do
        load "sweep-1k rate=$rate run=$r" "$s" --mode fanout --streams 1000 --rate "$rate" --duration "${SWEEP_SECS:-10}" --drain 10
      done
      stop
    done
  done
}

# (b), underneath it: the same 1,000 events/s to SCALE_STREAMS (10 100 300 1000) subscribers, to
# show what the path through RabbitMQ costs alone (10) and what the fan-out adds.
scale() {
  for s in $(gateways "$@"); do
    for r in $(seq 1 "$RUNS"); do
      start "$s"
      for n in ${SCALE_STREAMS:-10 100 300 1000}; do
        load "scale streams=$n run=$r" "$s" --mode fanout --streams "$n" --rate 1000 --duration "${SCALE_SECS:-10}" --drain 10
      done
      stop
    done
  done
}

# (c) The gateways hold the streams with tests/src/bin/hold.rs (the smol issue's tool); nchan,
# which hold cannot speak to, with the load tool's connect mode (the same measurement).
idle() {
  local n=${IDLE_STREAMS:-19000}
  for s in $(servers "$@"); do
    for r in $(seq 1 "$RUNS"); do
      start "$s"
      if [ "$s" = nchan ]; then
        load "idle run=$r" "$s" --mode connect --streams "$n" --settle 5
      else
        local la before after line
        loadavg; la=$LA
        log "idle run=$r on $s: $n streams held by hold (load average $la)"
        before=$(rss_kib)
        "$BIN/hold" --addr "$ADDR" --secret "$SECRET" --count "$n" --seconds 3600 > "$BENCH_DIR/hold.out" &
        local hold=$!
        for _ in $(seq 1 600); do grep -q "^open" "$BENCH_DIR/hold.out" && break; kill -0 $hold 2>/dev/null || break; sleep 0.2; done
        line=$(head -1 "$BENCH_DIR/hold.out")
        sleep 5
        after=$(rss_kib)
        kill $hold 2>/dev/null || true; wait $hold 2>/dev/null || true
        printf '{"label":"scenario=idle run=%s server=%s workers=%s loadavg=%s commit=%s","mode":"hold","streams":%s,"hold":"%s","rss_kib_before":%s,"rss_kib_connected":%s,"rss_bytes_per_stream":%s}\n' \
          "$r" "$s" "$WORKERS" "$la" "$(cat "$BIN/commit")" "$n" "$line" "$before" "$after" "$(( (after - before) * 1024 / n ))" | tee -a "$RESULTS"
      fi
      stop
    done
  done
}

accept() {
  each "$(servers "$@")" accept-10k --mode connect --streams 10000 --settle 1
}

resume() {
  # One publishing connection: nchan orders a channel's messages as their publishes arrive,
  # and the replay is checked against the publishing order.
  each "$(servers "$@")" resume-storm-10k --mode resume --streams 10000 --warm 10 --behind 100 --drain 60 --publishers 1
}

hotpath() {
  for r in $(seq 1 "$RUNS"); do
    loadavg
    log "core hot path, run $r (load average $LA)"
    (cd "$ROOT" && cargo bench -p sse-gateway-core --bench hot_path 2>/dev/null) | tee -a "$BENCH_DIR/hotpath.txt"
  done
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  build) build ;;
  fanout | steps | latency | burst | sweep | scale | idle | accept | resume) need_bins; "$ROOT/.ci/ensure-rabbitmq" >&2; "$cmd" "$@" ;;
  hotpath) hotpath ;;
  floor) floor ;;
  all)
    build; "$ROOT/.ci/ensure-rabbitmq" >&2
    fanout; steps; latency; burst; sweep; idle; accept; resume; floor; hotpath ;;
  *) sed -n '2,33p' "$0"; exit 2 ;;
esac
