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
#   tests/bench/run.sh idle    [SERVER...]        (c) IDLE_STREAMS idle streams: server memory per stream open,
#                                                 read IDLE_SETTLE s (the gateway's heartbeat + 5) after they opened
#   tests/bench/run.sh accept  [SERVER...]        (d) new streams per second (10,000 streams, HS256 tokens)
#   tests/bench/run.sh resume  [SERVER...]        (e) resume storm: 10,000 clients, each 100 events behind
#   tests/bench/run.sh flood   [SERVER...]        (f) 10 subscribers x 50 events/s through RabbitMQ for 15 s,
#                                                 alone, then while FLOOD_PROCS (2) x FLOOD_CONNS (200)
#                                                 connections send stream requests with bad tokens
#   tests/bench/run.sh floor                      what one loopback write costs here, no server at all
#                                                 (1,000 connections; FLOOR_BYTES "150 1800")
#   tests/bench/run.sh hotpath                    the core micro-benchmark
#   tests/bench/run.sh all                        every scenario above but scale (latency, burst and
#                                                 sweep on the two gateways only)
#
# SERVER is tokio (sse-gateway), smol (sse-gateway-smol) or nchan; default all three. Each
# scenario starts a fresh server, runs the load tool (tests/src/bin/load.rs) and stops it. Every
# run appends the tool's JSON line (with a label naming scenario, server, workers and the load
# average at its start) to $RESULTS and prints its table on stderr. A run that does not measure
# the server (publishes failed, streams did not open or did not stay open: its "invalid" field)
# is logged as INVALID, kept in $RESULTS (tables.py marks it) and makes the script exit 1 at the end.
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
# Runs found invalid so far (the script goes on with the next ones and exits 1 at the end).
FAILURES=0

log() { echo "== $*" >&2; }

# invalid WHAT: counts and logs an invalid run loudly.
invalid() { FAILURES=$((FAILURES + 1)); echo "== INVALID: $*" >&2; }

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
  # The load tool reads the workers' memory and CPU by PID: wait until every worker exists (a
  # worker forked late would be left out of every figure).
  local workers=""
  for _ in $(seq 1 100); do
    workers=$(pgrep -P "$SERVER_PID" || true)
    [ "$(echo "$workers" | grep -c .)" -ge "$WORKERS" ] && break
    sleep 0.1
  done
  if [ "$(echo "$workers" | grep -c .)" -lt "$WORKERS" ]; then
    log "nginx has $(echo "$workers" | grep -c .) of $WORKERS worker processes after 10 s"; cat "$dir/error.log" >&2; return 1
  fi
  PIDS=""
  for p in $workers; do PIDS="$PIDS --pid $p"; done
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

# The flood's processes (flood() starts them; they run until stopped).
FLOOD_PIDS=""
stop_flood() {
  [ -n "$FLOOD_PIDS" ] || return 0
  local p
  # shellcheck disable=SC2086
  kill -TERM $FLOOD_PIDS 2>/dev/null || true
  for p in $FLOOD_PIDS; do wait "$p" 2>/dev/null || log "flood process $p exited with status $?"; done
  FLOOD_PIDS=""
}
trap 'stop_flood; stop' EXIT

# The load average now (and, before the first run or with QUIET_EACH=1, after waiting for quiet).
# Sets LA (not a subshell: FIRST must stay changed).
FIRST=1
loadavg() {
  if [ "$FIRST" = 1 ] || [ "$QUIET_EACH" = 1 ]; then FIRST=0; LA=$(quiet); else LA=$(cut -d' ' -f1 /proc/loadavg); fi
}

# load SCENARIO SERVER ARGS...: one measurement on the running server, recorded (its JSON line
# also in $BENCH_DIR/last.json).
load() { measure "$@"; record "$1" "$2"; }

# measure SCENARIO SERVER ARGS...: the load tool's JSON line in $BENCH_DIR/last.json, not yet
# recorded (a scenario may add to its "invalid" reasons first: add_invalid, then record).
measure() {
  local scenario=$1 server=$2; shift 2
  local la; loadavg; la=$LA
  log "$scenario on $server (workers $WORKERS, load average $la)"
  # shellcheck disable=SC2086
  "$BIN/load" --target "$TARGET" --addr "$ADDR" $PIDS --secret "$SECRET" \
    --label "scenario=$scenario server=$server workers=$WORKERS loadavg=$la commit=$(cat "$BIN/commit")" "$@" > "$BENCH_DIR/last.json"
}

# add_invalid REASON: adds REASON (no quotes, slashes, ampersands or backslashes) to the
# "invalid" list of $BENCH_DIR/last.json, so record and tables.py treat the run as invalid.
add_invalid() {
  sed -i -e "s/\"invalid\":\[\]/\"invalid\":[\"$1\"]/; t" -e "s/\"invalid\":\[/\"invalid\":[\"$1\",/" "$BENCH_DIR/last.json"
  grep -qF "\"$1\"" "$BENCH_DIR/last.json" || { echo "== cannot record \"$1\" in $BENCH_DIR/last.json" >&2; exit 1; }
}

# record SCENARIO SERVER: appends $BENCH_DIR/last.json to $RESULTS (and prints it); an invalid
# run is logged and counted.
record() {
  local scenario=$1 server=$2
  tee -a "$RESULTS" < "$BENCH_DIR/last.json"
  grep -q '"invalid":\[\]' "$BENCH_DIR/last.json" || invalid "$scenario on $server: $(sed -n 's/.*"invalid":\(\[[^]]*\]\).*/\1/p' "$BENCH_DIR/last.json")"
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
        # A step whose publishes failed says nothing about the server: stop there (load logged it).
        if ! echo "$out" | grep -q '"invalid":\[\]'; then log "$s: step $rate invalid, steps end here"; break; fi
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

# (f) Events while the listener is flooded with requests that carry bad tokens (14 KB HS256,
# wrong signature: a signature check each, then 401): what the flood costs the events already
# flowing. Each run measures the same load without the flood first, on a fresh server. The flood
# runs until stopped once the load tool returned, so it covers the whole measurement however
# long publishing and the wait take; a flood process that ended before (it died) makes the run
# invalid.
flood() {
  local s r i p gone procs=${FLOOD_PROCS:-2}
  for s in $(gateways "$@"); do
    for r in $(seq 1 "$RUNS"); do
      start "$s"
      load "flood-none run=$r" "$s" --mode fanout --streams 10 --procs 1 --rate 50 --duration 15 --drain 5
      stop
      start "$s"
      for i in $(seq 1 "$procs"); do
        python3 "$ROOT/tests/bench/flood.py" "$GW_PORT" "${FLOOD_CONNS:-200}" 0 10000 >> "$BENCH_DIR/flood.txt" &
        FLOOD_PIDS="$FLOOD_PIDS $!"
      done
      sleep 2
      measure "flood-bad-tokens run=$r" "$s" --mode fanout --streams 10 --procs 1 --rate 50 --duration 15 --drain 5
      gone=0
      for p in $FLOOD_PIDS; do kill -0 "$p" 2>/dev/null || gone=$((gone + 1)); done
      [ "$gone" -eq 0 ] || add_invalid "$gone of $procs flood processes ended before the load tool did (the flood did not cover the measurement)"
      record "flood-bad-tokens run=$r" "$s"
      stop_flood
      tail -n "$procs" "$BENCH_DIR/flood.txt" >&2
      log "$s: $(grep -c 'request refused' "$BENCH_DIR/gw/stderr") request refused lines, $(grep -c 'without a line of their own' "$BENCH_DIR/gw/stderr") summaries"
      stop
    done
  done
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

# Server memory: VmRSS of the watched PIDs, summed, in KiB. A process that is gone counts 0, with
# a warning (not an abort: the caller checks the server and records the run as invalid).
rss_kib() {
  local t=0 p v
  for p in $(echo "$PIDS" | sed 's/--pid//g'); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    if [ -z "$v" ]; then echo "== warning: process $p is gone, its RSS counts 0" >&2; v=0; fi
    t=$((t + v))
  done
  echo "$t"
}

# The gateway's heartbeat interval in whole seconds (rounded up): `heartbeat` under [streams] in
# tests/bench/gateway.toml, else the gateway's default, 30 s.
heartbeat_secs() {
  local v
  v=$(awk '/^\[/ { s = ($1 == "[streams]") } s && /^[ \t]*heartbeat[ \t]*=/ { sub(/^[^=]*=[ \t]*/, ""); sub(/[ \t]*#.*/, ""); gsub(/"/, ""); print; exit }' "$ROOT/tests/bench/gateway.toml")
  case $v in
    "") echo 30 ;;
    *[0-9]ms) echo $(( (${v%ms} + 999) / 1000 )) ;;
    *[0-9]s) echo "${v%s}" ;;
    *[0-9]min) echo $(( ${v%min} * 60 )) ;;
    *[0-9]m) echo $(( ${v%m} * 60 )) ;;
    *[0-9]h) echo $(( ${v%h} * 3600 )) ;;
    *[!0-9]*) echo "cannot read streams.heartbeat = $v in tests/bench/gateway.toml" >&2; return 1 ;;
    *) echo "$v" ;;
  esac
}

# Streams the gateway holds now: established TCP connections on its port, its side (hold's own
# sockets have the port as their peer).
open_streams() { ss -Htn state established "( sport = :$GW_PORT )" | wc -l; }

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
# which hold cannot speak to, with the load tool's connect mode (the same measurement). Memory is
# read IDLE_SETTLE s after the last stream opened, by default one heartbeat interval of the
# gateway and 5 s more: every stream has written a heartbeat by then (its writer's state after
# one is in the figure, not only a freshly opened stream's), and nchan gets the same wait. The
# growth is divided by the streams still open at that moment.
idle() {
  local n=${IDLE_STREAMS:-19000} hb settle
  hb=$(heartbeat_secs)
  settle=${IDLE_SETTLE:-$((hb + 5))}
  for s in $(servers "$@"); do
    for r in $(seq 1 "$RUNS"); do
      start "$s"
      if [ "$s" = nchan ]; then
        load "idle run=$r" "$s" --mode connect --streams "$n" --settle "$settle"
      else
        idle_hold "$r" "$s" "$n" "$settle"
      fi
      stop
    done
  done
}

# The end of hold's stderr on one line, without what would break the JSON string it goes into.
hold_err() { tail -n 3 "$BENCH_DIR/hold.err" | tr -d '"\\' | tr '\n' ' ' | sed 's/ *$//'; }

# idle_hold RUN SERVER N SETTLE: N streams held by hold on the running gateway; one JSON line.
idle_hold() {
  local r=$1 s=$2 n=$3 settle=$4 la before after=0 line opened open_now=0 hold why="" per=null err
  loadavg; la=$LA
  log "idle run=$r on $s: $n streams held by hold, memory read $settle s after they opened (load average $la)"
  before=$(rss_kib)
  "$BIN/hold" --addr "$ADDR" --secret "$SECRET" --count "$n" --seconds 3600 > "$BENCH_DIR/hold.out" 2> "$BENCH_DIR/hold.err" &
  hold=$!
  for _ in $(seq 1 600); do grep -q "^open" "$BENCH_DIR/hold.out" && break; kill -0 $hold 2>/dev/null || break; sleep 0.2; done
  # hold prints `open N streams in S s` only once every stream answered 200; otherwise it says
  # on stderr how many failed and exits.
  line=$(grep -m1 "^open" "$BENCH_DIR/hold.out" || true)
  opened=$(echo "$line" | sed -n 's/^open \([0-9][0-9]*\) streams.*/\1/p')
  if [ -z "$opened" ]; then
    err=$(hold_err); why="hold opened no full set of $n streams${err:+: $err}"
  elif [ "$opened" -lt "$n" ]; then
    why="hold opened $opened of $n streams"
  else
    sleep "$settle"
    after=$(rss_kib)
    open_now=$(open_streams)
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      why="the gateway exited while the streams were held"
    elif ! kill -0 $hold 2>/dev/null; then
      err=$(hold_err); why="hold exited while holding${err:+: $err}"
    elif [ "$open_now" -lt "$opened" ]; then
      why="only $open_now of $opened streams still open after $settle s"
    fi
  fi
  kill $hold 2>/dev/null || true; wait $hold 2>/dev/null || true
  if [ -z "$why" ]; then
    per=$(( (after - before) * 1024 / open_now ))
  else
    invalid "idle run=$r on $s: $why"
  fi
  printf '{"label":"scenario=idle run=%s server=%s workers=%s loadavg=%s commit=%s","mode":"hold","streams":%s,"streams_open":%s,"settle_secs":%s,"hold":"%s","rss_kib_before":%s,"rss_kib_connected":%s,"rss_bytes_per_stream":%s,"invalid":[%s]}\n' \
    "$r" "$s" "$WORKERS" "$la" "$(cat "$BIN/commit")" "$n" "$open_now" "$settle" "$line" "$before" "$after" "$per" \
    "$([ -z "$why" ] || printf '"%s"' "$why")" | tee -a "$RESULTS"
}

accept() {
  each "$(servers "$@")" accept-10k --mode connect --streams 10000 --settle 1
}

resume() {
  # One publishing connection: nchan orders a channel's messages as their publishes arrive,
  # and the replay is checked against the publishing order.
  each "$(servers "$@")" resume-storm-10k --mode resume --streams 10000 --warm 10 --behind 100 --drain 60 --publishers 1
}

# The core's micro-benchmark, built from the working tree (its commit, "-dirty" with local
# changes, heads each run's lines); a build failure stops here, visibly.
hotpath() {
  local commit
  commit=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- core || echo -dirty)
  (cd "$ROOT" && cargo bench -p sse-gateway-core --bench hot_path --no-run) >&2 || return 1
  for r in $(seq 1 "$RUNS"); do
    loadavg
    log "core hot path, run $r (load average $LA)"
    # Criterion's progress goes to a log, not the terminal; a failing run (an assertion of the
    # benchmark's) shows it.
    if ! { echo "commit=$commit run=$r loadavg=$LA"; (cd "$ROOT" && cargo bench -p sse-gateway-core --bench hot_path 2> "$BENCH_DIR/hotpath.err"); } | tee -a "$BENCH_DIR/hotpath.txt"; then
      cat "$BENCH_DIR/hotpath.err" >&2
      log "core hot path run $r failed (its stderr above, also in $BENCH_DIR/hotpath.err)"
      return 1
    fi
  done
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  build) build ;;
  fanout | steps | latency | burst | sweep | scale | idle | accept | resume | flood) need_bins; "$ROOT/.ci/ensure-rabbitmq" >&2; "$cmd" "$@" ;;
  hotpath) hotpath ;;
  floor) floor ;;
  all)
    build; "$ROOT/.ci/ensure-rabbitmq" >&2
    fanout; steps; latency; burst; sweep; idle; accept; resume; flood; floor; hotpath ;;
  *) sed -n '2,41p' "$0"; exit 2 ;;
esac
if [ "$FAILURES" -gt 0 ]; then log "$FAILURES invalid run(s): see the INVALID lines above (kept in $RESULTS, marked by tables.py)"; exit 1; fi
