#!/usr/bin/env python3
"""Markdown tables from tests/bench/run.sh results (one JSON line per run): `tests/bench/tables.py [RESULTS]`.

Every run is a row (RUNS=2 gives two rows per server), so both measurements stay visible."""
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
    """The load tool's CPU seconds and the machine's idle share while events were published."""
    own, idle = r.get("load_tool_cpu_secs"), r.get("machine_idle_pct")
    return ["-" if own is None else f"{own:.1f}", "-" if idle is None else f"{idle:.0f}"]


def lat(r, q):
    l = (r.get("result") or {}).get("latency_ms")
    return "-" if not l else f"{l[q]:.1f}"


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}"


def table(head, rows):
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print()


print("### (a) Fan-out, 10,000 subscribers\n")
table(
    ["server", "run", "load avg", "events/s", "deliveries/s", "lost", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "publish s", "CPU s", "RSS connected / peak MiB"],
    [
        [server(r), r["tags"].get("run"), r["tags"].get("loadavg"), r["rate"], f"{r['deliveries_per_s']:,.0f}", r["result"]["lost"],
         lat(r, "p50"), lat(r, "p99"), lat(r, "p999"), lat(r, "max"), f"{r['publish_secs']:.1f}", f"{r['cpu_secs']:.1f}",
         f"{mib(r.get('rss_kib_connected'))} / {mib(r.get('rss_kib_peak'))}"]
        for r in of("fanout-10k")
    ],
)

print("### (a) Rate steps, 10,000 subscribers (each step STEP_SECS s; a run ends at the first step not sustained)\n")
table(
    ["server", "run", "events/s", "offered/s", "deliveries/s", "lost", "p99 ms", "publish s", "sustained"],
    [
        [server(r), r["tags"].get("run"), r["rate"], f"{r['offered_per_s']:,.0f}", f"{r['deliveries_per_s']:,.0f}", r["result"]["lost"],
         lat(r, "p99"), f"{r['publish_secs']:.1f}",
         "yes" if r["result"]["lost"] == 0 and r["deliveries_per_s"] >= 0.9 * r["offered_per_s"] else "no"]
        for r in of("steps-10k")
    ],
)

print("### (b) 1,000 subscribers x 1,000 events/s\n")
table(
    ["server", "commit", "workers", "run", "load avg", "deliveries/s", "lost", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "CPU s", "load tool CPU s", "machine idle %", "RSS peak MiB"],
    [
        [server(r), r["tags"].get("commit", "?"), r["tags"].get("workers", "?"), r["tags"].get("run"), r["tags"].get("loadavg"), f"{r['deliveries_per_s']:,.0f}", r["result"]["lost"],
         lat(r, "p50"), lat(r, "p99"), lat(r, "p999"), lat(r, "max"), f"{r['cpu_secs']:.1f}", *machine(r), mib(r.get("rss_kib_peak"))]
        for r in of("latency-1k")
    ],
)

print("### (b') A burst through RabbitMQ: 10 subscribers, 20,000 events/s offered for 2 s\n")
table(
    ["server", "commit", "run", "load avg", "published in s", "events/s taken", "deliveries/s", "lost", "p50 ms", "p99 ms", "max ms", "CPU s"],
    [
        [server(r), r["tags"].get("commit", "?"), r["tags"].get("run"), r["tags"].get("loadavg"), f"{r['publish_secs']:.2f}",
         f"{r['deliveries_per_s'] / r['streams']:,.0f}", f"{r['deliveries_per_s']:,.0f}", r["result"]["lost"],
         lat(r, "p50"), lat(r, "p99"), lat(r, "max"), f"{r['cpu_secs']:.2f}"]
        for r in of("burst-10")
    ],
)

print("### (b) around it: 1,000 subscribers at lower rates\n")
table(
    ["server", "run", "load avg", "events/s", "deliveries/s", "lost", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "CPU s"],
    [
        [server(r), r["tags"].get("run"), r["tags"].get("loadavg"), r["rate"], f"{r['deliveries_per_s']:,.0f}", r["result"]["lost"],
         lat(r, "p50"), lat(r, "p99"), lat(r, "p999"), lat(r, "max"), f"{r['cpu_secs']:.1f}"]
        for r in of("sweep-1k")
    ],
)

print("### (b) underneath it: 1,000 events/s to fewer subscribers\n")
table(
    ["server", "workers", "run", "load avg", "streams", "deliveries/s", "lost", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "CPU s", "load tool CPU s", "machine idle %"],
    [
        [server(r), r["tags"].get("workers", "?"), r["tags"].get("run"), r["tags"].get("loadavg"), f"{r['streams']:,}", f"{r['deliveries_per_s']:,.0f}",
         r["result"]["lost"], lat(r, "p50"), lat(r, "p99"), lat(r, "p999"), lat(r, "max"), f"{r['cpu_secs']:.1f}", *machine(r)]
        for r in of("scale")
    ],
)

print("### (c) Idle streams\n")
rows = []
for r in of("idle"):
    n = r["streams"]
    per = r["rss_bytes_per_stream"]
    before = r["rss_kib_before"]
    at100k = (before * 1024 + per * 100_000) / 2**20
    held = r.get("connect", {}).get("ok", n) if r.get("mode") == "connect" else n
    rows.append([server(r), r["tags"].get("run"), held, mib(before), mib(r["rss_kib_connected"]), f"{per:,.0f}", f"{at100k:.0f}",
                 "-" if "pss_bytes_per_stream" not in r else f"{r['pss_bytes_per_stream']:,.0f}"])
table(["server", "run", "streams", "RSS idle MiB", "RSS with streams MiB", "RSS bytes / stream", "100,000 streams MiB (extrapolated)", "PSS bytes / stream"], rows)

print("### (d) New streams per second (10,000 streams, 256 connecting at once per load process, 2 processes)\n")
table(
    ["server", "run", "load avg", "ok", "failed", "seconds", "streams/s"],
    [[server(r), r["tags"].get("run"), r["tags"].get("loadavg"), r["connect"]["ok"], r["connect"]["failed"], f"{r['connect']['secs']:.3f}", f"{r['connect']['per_s']:,.0f}"]
     for r in of("accept-10k")],
)

print("### (e) Resume storm: 10,000 clients, each 100 events behind\n")
table(
    ["server", "run", "load avg", "exact replays", "lost", "dups", "stale", "id mismatch", "reconnect s", "time to serve all s", "RSS before / peak MiB", "CPU s"],
    [[server(r), r["tags"].get("run"), r["tags"].get("loadavg"), f"{r['result']['exact']:,} / {r['streams']:,}", r["result"]["lost"], r["result"]["dups"],
      r["result"]["stale"], r["result"]["id_mismatch"], f"{r['reconnect']['secs']:.3f}",
      "-" if r.get("serve_all_secs") is None else f"{r['serve_all_secs']:.3f}", f"{mib(r['rss_kib_before'])} / {mib(r['rss_kib_peak'])}", f"{r['cpu_secs']:.1f}"]
     for r in of("resume-storm")],
)

print("### (b) underneath it: one loopback write, no server (1,000 connections)\n")
table(
    ["bytes per write", "reader", "run", "load avg", "µs per write (CPU)", "µs per read (CPU)", "1,000 writes, ms of one core"],
    [[f"{r['bytes']:,}", ("waits" if r.get("wait") else "spins") if r["reader"] else "no", r["tags"].get("run"), r["tags"].get("loadavg"), f"{r['us_per_write_cpu']:.2f}",
      "-" if r.get("us_per_read_cpu") is None else f"{r['us_per_read_cpu']:.2f}", f"{r['round_ms_cpu']:.1f}"]
     for r in of("floor")],
)
