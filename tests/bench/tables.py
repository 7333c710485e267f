#!/usr/bin/env python3
"""Markdown tables from tests/bench/run.sh results (one JSON line per run): `tests/bench/tables.py [RESULTS]`.

Every run is a row (RUNS=2 gives two rows per server), so both measurements stay visible. Beside
the losses, each row shows what a "zero loss, in order" claim rests on: events out of order,
duplicates, error events, streams the server closed, publishes that failed and streams that
failed to connect. A run whose publishes failed (their events never reached the server), whose
streams did not all connect, or whose idle streams were not all open when memory was read does
not measure the server: its "valid" cell says why, its "lost" cell is not a loss figure, and its
deliveries/s and latencies are in brackets. nchan's "out of order" is "-" when events were
published over several connections at once (they reach nchan out of order).
Older results lack some fields: "-" there (and "unchecked" for what was not checked then)."""
import json
import re
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/sse-bench/results.jsonl"
runs = []
for line in open(path):
    line = line.strip()
    if line.startswith("{"):
        r = json.loads(line)
        r["tags"] = dict(kv.split("=", 1) for kv in r.get("label", "").split() if "=" in kv)
        runs.append(r)


def of(scenario):
    return [r for r in runs if r["tags"].get("scenario", "").startswith(scenario)]


def server(r):
    return {"tokio": "sse-gateway", "smol": "sse-gateway-smol", "nchan": "nchan"}.get(r["tags"].get("server"), "?")


def machine(r):
    """The load tool's CPU seconds over the server's CPU span (publishing and the wait after it;
    older results, without "cpu_span_secs": over publishing only, so marked) and the machine's
    idle share while events were published."""
    own, idle = r.get("load_tool_cpu_secs"), r.get("machine_idle_pct")
    own = "-" if own is None else f"{own:.1f}" if r.get("cpu_span_secs") is not None else f"{own:.1f} (publishing only)"
    return [own, "-" if idle is None else f"{idle:.0f}"]


def shown(r, text):
    """A figure of the server's, in brackets when the run does not measure the server."""
    return f"({text})" if invalid(r) and text != "-" else text


def lat(r, q):
    l = (r.get("result") or {}).get("latency_ms")
    return "-" if not l else shown(r, f"{l[q]:.1f}")


def dps(r):
    return shown(r, f"{r['deliveries_per_s']:,.0f}")


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}"


def peak(r):
    """The sampled peak RSS, with the kernel's VmHWM beside it where recorded (it misses no short
    peak; the tables showing it are of scenarios that start a fresh server for each run, so it
    covers the run alone, connecting included)."""
    h = r.get("rss_kib_hwm")
    return mib(r.get("rss_kib_peak")) + ("" if h is None else f" (VmHWM {mib(h)})")


def res(r, k):
    v = (r.get("result") or {}).get(k)
    return "-" if v is None else v


def checks(r):
    """Out of order / duplicates / error events / streams closed by the server."""
    return " / ".join(str(res(r, k)) for k in ("out_of_order", "dups", "errors", "closed_by_server"))


def pub_failed(r):
    v = r.get("publish_failed")
    return "-" if v is None else v


def conn_failed(r, k="connect"):
    v = (r.get(k) or {}).get("failed")
    return "-" if v is None else v


def lag(r):
    """How far the publisher ran behind its schedule, at most and at the end (ms)."""
    m, e = r.get("publish_lag_max_ms"), r.get("publish_lag_end_ms")
    return "-" if m is None else f"{m:.1f} / {e:.1f}"


def lat_send(r, q):
    """Latency from the actual send (before: the only figure; now the schedule is the origin)."""
    l = (r.get("result") or {}).get("latency_from_send_ms")
    return "-" if not l else shown(r, f"{l[q]:.1f}")


def invalid(r):
    """Why the run does not measure the server (the tool's and run.sh's reasons, and the same
    checks made here, so results written before those existed are checked too)."""
    why = list(r.get("invalid") or [])
    pf = r.get("publish_failed") or 0
    if pf > 0 and not any("publishes failed" in w for w in why):
        why.append(f"{pf} publishes failed")
    if r.get("mode") in ("fanout", "resume"):
        for k in ("connect", "reconnect"):
            f = (r.get(k) or {}).get("failed") or 0
            if f > 0 and not any(f"failed to {k}" in w for w in why):
                why.append(f"{f} streams failed to {k}")
    if r.get("streams_open") is not None and r["streams_open"] < r.get("streams", 0) and not any("open" in w for w in why):
        why.append(f"only {r['streams_open']} of {r['streams']} streams open")
    return why


def valid(r):
    why = invalid(r)
    if why:
        return "**INVALID**: " + "; ".join(why)
    if r.get("mode") == "hold" and r.get("streams_open") is None:
        return "unchecked (streams open not recorded)"
    return "yes"


def lost(r):
    """Lost events, or why the figure is not one (publishes failed: not the server's loss)."""
    return f"({res(r, 'lost')}: invalid run)" if invalid(r) else res(r, "lost")


def table(head, rows):
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print()


# The columns every fan-out table ends with.
CHECK_HEAD = ["out of order / dups / errors / closed by server", "publish failed", "connect failed", "p99 from send ms", "publisher behind max / end ms", "valid"]


def check_cells(r):
    return [checks(r), pub_failed(r), conn_failed(r), lat_send(r, "p99"), lag(r), valid(r)]


print("### (a) Fan-out, 10,000 subscribers\n")
print("Latency from each event's scheduled publish time; \"p99 from send\" from when the publisher actually sent it.\n")
table(
    ["server", "run", "load avg", "events/s", "deliveries/s", "lost", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "publish s", "CPU s", "RSS connected / peak (VmHWM) MiB", *CHECK_HEAD],
    [
        [server(r), r["tags"].get("run"), r["tags"].get("loadavg"), r["rate"], dps(r), lost(r),
         lat(r, "p50"), lat(r, "p99"), lat(r, "p999"), lat(r, "max"), f"{r['publish_secs']:.1f}", f"{r['cpu_secs']:.1f}",
         f"{mib(r.get('rss_kib_connected'))} / {peak(r)}", *check_cells(r)]
        for r in of("fanout-10k")
    ],
)

print("### (a) Rate steps, 10,000 subscribers (each step STEP_SECS s; a run ends at the first step not sustained)\n")
table(
    ["server", "run", "events/s", "offered/s", "deliveries/s", "lost", "p99 ms", "publish s", "sustained", *CHECK_HEAD],
    [
        [server(r), r["tags"].get("run"), r["rate"], f"{r['offered_per_s']:,.0f}", dps(r), lost(r),
         lat(r, "p99"), f"{r['publish_secs']:.1f}",
         "invalid" if invalid(r) else "yes" if r["result"]["lost"] == 0 and r["deliveries_per_s"] >= 0.9 * r["offered_per_s"] else "no",
         *check_cells(r)]
        for r in of("steps-10k")
    ],
)

print("### (b) 1,000 subscribers x 1,000 events/s\n")
table(
    ["server", "commit", "workers", "run", "load avg", "deliveries/s", "lost", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "CPU s", "load tool CPU s", "machine idle %", "RSS peak (VmHWM) MiB", *CHECK_HEAD],
    [
        [server(r), r["tags"].get("commit", "?"), r["tags"].get("workers", "?"), r["tags"].get("run"), r["tags"].get("loadavg"), dps(r), lost(r),
         lat(r, "p50"), lat(r, "p99"), lat(r, "p999"), lat(r, "max"), f"{r['cpu_secs']:.1f}", *machine(r), peak(r), *check_cells(r)]
        for r in of("latency-1k")
    ],
)

print("### (b') A burst through RabbitMQ: 10 subscribers, 20,000 events/s offered for 2 s\n")
table(
    ["server", "commit", "run", "load avg", "published in s", "events/s taken", "deliveries/s", "lost", "p50 ms", "p99 ms", "max ms", "CPU s", *CHECK_HEAD],
    [
        [server(r), r["tags"].get("commit", "?"), r["tags"].get("run"), r["tags"].get("loadavg"), f"{r['publish_secs']:.2f}",
         shown(r, f"{r['deliveries_per_s'] / r['streams']:,.0f}"), dps(r), lost(r),
         lat(r, "p50"), lat(r, "p99"), lat(r, "max"), f"{r['cpu_secs']:.2f}", *check_cells(r)]
        for r in of("burst-10")
    ],
)

print("### (f) Events during a flood of stream requests with bad tokens (10 subscribers x 50 events/s)\n")
print("Each flooded run follows one without the flood on a fresh server; the flood must last the whole measurement (\"valid\").\n")
table(
    ["server", "commit", "run", "load avg", "flood", "deliveries/s", "lost", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "CPU s", "load tool CPU s", "machine idle %", *CHECK_HEAD],
    [
        [server(r), r["tags"].get("commit", "?"), r["tags"].get("run"), r["tags"].get("loadavg"), "bad tokens" if r["tags"]["scenario"] == "flood-bad-tokens" else "none",
         dps(r), lost(r), lat(r, "p50"), lat(r, "p99"), lat(r, "p999"), lat(r, "max"), f"{r['cpu_secs']:.1f}", *machine(r), *check_cells(r)]
        for r in of("flood")
    ],
)

print("### (b) around it: 1,000 subscribers at lower rates\n")
table(
    ["server", "run", "load avg", "events/s", "deliveries/s", "lost", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "CPU s", *CHECK_HEAD],
    [
        [server(r), r["tags"].get("run"), r["tags"].get("loadavg"), r["rate"], dps(r), lost(r),
         lat(r, "p50"), lat(r, "p99"), lat(r, "p999"), lat(r, "max"), f"{r['cpu_secs']:.1f}", *check_cells(r)]
        for r in of("sweep-1k")
    ],
)

print("### (b) underneath it: 1,000 events/s to fewer subscribers\n")
table(
    ["server", "workers", "run", "load avg", "streams", "deliveries/s", "lost", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "CPU s", "load tool CPU s", "machine idle %", *CHECK_HEAD],
    [
        [server(r), r["tags"].get("workers", "?"), r["tags"].get("run"), r["tags"].get("loadavg"), f"{r['streams']:,}", dps(r),
         lost(r), lat(r, "p50"), lat(r, "p99"), lat(r, "p999"), lat(r, "max"), f"{r['cpu_secs']:.1f}", *machine(r), *check_cells(r)]
        for r in of("scale")
    ],
)

print("### (c) Idle streams\n")
print("Memory growth divided by the streams open when it was read (\"open\"; older results: the streams asked for),")
print("read \"settle\" s after the last one opened.\n")
rows = []
for r in of("idle"):
    n = r["streams"]
    per = r.get("rss_bytes_per_stream")
    before = r["rss_kib_before"]
    at100k = "-" if per is None or invalid(r) else f"{(before * 1024 + per * 100_000) / 2**20:.0f}"
    if r.get("streams_open") is not None:
        held = r["streams_open"]
    else:
        held = r.get("connect", {}).get("ok", n) if r.get("mode") == "connect" else n
    pss = r.get("pss_bytes_per_stream")
    rows.append([server(r), r["tags"].get("run"), f"{n:,}", f"{held:,}", r.get("settle_secs", "-"), mib(before), mib(r["rss_kib_connected"]),
                 "-" if per is None or invalid(r) else f"{per:,.0f}", at100k, "-" if pss is None or invalid(r) else f"{pss:,.0f}", valid(r)])
table(["server", "run", "streams asked", "open", "settle s", "RSS idle MiB", "RSS with streams MiB", "RSS bytes / stream", "100,000 streams MiB (extrapolated)", "PSS bytes / stream", "valid"], rows)

print("### (d) New streams per second (10,000 streams, 256 connecting at once per load process, 2 processes)\n")
print("Seconds from the earliest subscriber process's start to the latest one's last response head (older results: the slowest process alone).\n")
table(
    ["server", "run", "load avg", "ok", "failed", "statuses", "seconds", "streams/s", "open after", "valid"],
    [[server(r), r["tags"].get("run"), r["tags"].get("loadavg"), r["connect"]["ok"], r["connect"]["failed"],
      ", ".join(f"{k}: {v}" for k, v in (r["connect"].get("statuses") or {}).items()),
      f"{r['connect']['secs']:.3f}", f"{r['connect']['per_s']:,.0f}", r.get("streams_open", "-"), valid(r)]
     for r in of("accept-10k")],
)

print("### (e) Resume storm: 10,000 clients, each 100 events behind\n")
table(
    ["server", "run", "load avg", "exact replays", "lost", "dups", "stale", "id mismatch", "out of order", "errors", "closed by server", "publish failed",
     "connect / reconnect failed", "reconnect s", "time to serve all s", "RSS before / peak (VmHWM) MiB", "CPU s", "valid"],
    [[server(r), r["tags"].get("run"), r["tags"].get("loadavg"), f"{r['result']['exact']:,} / {r['streams']:,}", lost(r), res(r, "dups"),
      res(r, "stale"), res(r, "id_mismatch"), res(r, "out_of_order"), res(r, "errors"), res(r, "closed_by_server"), pub_failed(r),
      f"{conn_failed(r)} / {conn_failed(r, 'reconnect')}", f"{r['reconnect']['secs']:.3f}",
      "-" if r.get("serve_all_secs") is None else f"{r['serve_all_secs']:.3f}", f"{mib(r['rss_kib_before'])} / {peak(r)}", f"{r['cpu_secs']:.1f}", valid(r)]
     for r in of("resume-storm")],
)

print("### (b) underneath it: one loopback write, no server (1,000 connections)\n")
print("A read's CPU cost only for the reader that waits: a spinning reader's CPU time is mostly its empty reads")
print("(older results gave it a per-read figure that was really the writer's wall time per write: \"-\" here too).\n")


def per_read(r):
    v = r.get("us_per_read_cpu")
    return "-" if v is None or not r.get("wait") else f"{v:.2f}"


table(
    ["bytes per write", "reader", "run", "load avg", "µs per write (CPU)", "µs per read (CPU)", "empty reads", "1,000 writes, ms of one core"],
    [[f"{r['bytes']:,}", ("waits" if r.get("wait") else "spins") if r["reader"] else "no", r["tags"].get("run"), r["tags"].get("loadavg"), f"{r['us_per_write_cpu']:.2f}",
      per_read(r), "-" if r.get("empty_reads") is None else f"{r['empty_reads']:,}", f"{r['round_ms_cpu']:.1f}"]
     for r in of("floor")],
)
