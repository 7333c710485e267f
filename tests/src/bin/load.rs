//! `load`: the side-by-side load tool for sse-gateway (both binaries) and nchan (issue 7).
//!
//! One parent process publishes and measures; `--procs` child processes (this binary with
//! `--child`) hold the streams, each on one thread, because the open-files limit is 20,000 per
//! process here (FIELD-NOTES). Streams come from source addresses `127.<net>.0.2`, `.3`, ...
//! (`--per-addr` each, bind before connect) so ephemeral ports do not run out; `<net>` is picked
//! per run so the TIME_WAIT sockets of the previous run are not in the way.
//!
//! Modes (each bounded in time and count; loopback only):
//! - `connect`: open `--streams` streams (`--concurrency` in flight per process), report the time
//!   to have every response head and the rate (from the earliest process's start to the latest
//!   one's last head, wall clock); after `--settle` seconds, the server's memory per stream still
//!   open then.
//! - `fanout`: open the streams, publish `--rate` events/s for `--duration` s (RabbitMQ for the
//!   gateway, HTTP POST for nchan), wait up to `--drain` s, report deliveries/s, lost events (every
//!   stream must get every event), latency from each event's scheduled publish time (and from its
//!   actual send, with how far the publisher fell behind its schedule), server memory and CPU.
//! - `resume`: open the streams, publish `--warm` events, disconnect every stream, publish
//!   `--behind` events, reconnect every stream at once with its `Last-Event-ID`, report whether
//!   each replay is exact (every missed event, once, in order, nothing older; for the gateway its
//!   ids), the time to serve all of them, and the server's peak memory.
//!
//! Every run numbers its events from its own base (wall-clock ms at its start x 1,000), so events
//! left over from an earlier run on the same server are told apart (`foreign`), not counted.
//! A run whose publishes failed, whose streams did not all open, or whose server process was gone
//! at the end, is not a measurement of the server: its `invalid` field says why. A subscriber
//! process's answer that is an error, or lacks a count, fails the tool.
//!
//! Output: one line of JSON on stdout, a human table on stderr.

#[path = "load/client.rs"]
mod client;
#[path = "load/frame.rs"]
mod frame;
#[path = "load/procfs.rs"]
mod procfs;
#[path = "load/publish.rs"]
mod publish;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use client::{Spec, Target};
use publish::Publisher;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Server {
    /// sse-gateway or sse-gateway-smol (HS256 tokens, RabbitMQ publishing).
    Gateway,
    /// nginx + nchan (no credentials, HTTP publishing).
    Nchan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Connect,
    Fanout,
    Resume,
}

#[derive(Debug, Parser)]
#[command(about = "Load tool for sse-gateway and nchan: fan-out, latency, idle memory, accept rate, resume storm")]
struct Args {
    /// Which kind of server listens at --addr.
    #[arg(long, value_enum)]
    target: Server,
    /// The server's address (loopback).
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, value_enum, default_value = "fanout")]
    mode: Mode,
    /// Channel (gateway: `/api/v1/streams/{channel}`; nchan: `/sub/{channel}`, `/pub/{channel}`).
    #[arg(long, default_value = "deals")]
    channel: String,
    /// Streams to open in total.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Events published per second (fanout).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of publishing (fanout).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// After the last publish, the wait for the last deliveries ends once no event arrived for
    /// this many seconds (at most 600 s in all while events still arrive: the run is invalid then).
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Seconds between the last response head and the idle memory reading (connect).
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Events each stream gets before the storm (resume).
    #[arg(long, default_value_t = 10)]
    warm: u64,
    /// Events published while the streams are away (resume). At least 1: with none missed there
    /// is nothing to replay, and the storm would measure nothing.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    behind: u64,
    /// Server process id(s) whose memory and CPU time are read (repeat for nginx workers).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Publishing connections to nchan (events spread over them round-robin).
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Subscriber processes (each holds streams/procs; keep each under the open-files limit).
    #[arg(long, default_value_t = 2)]
    procs: usize,
    /// Connections in flight per subscriber process.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Streams per source address.
    #[arg(long, default_value_t = 5000)]
    per_addr: usize,
    /// HS256 secret of the gateway's tokens.
    #[arg(long, default_value = "bench-secret-0123456789-0123456789")]
    secret: String,
    /// RabbitMQ (gateway target).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Exchange the gateway's channel is bound to.
    #[arg(long, default_value = "bench.deals")]
    exchange: String,
    #[arg(long, default_value = "deal.updated")]
    routing_key: String,
    /// A free-form label copied into the output (binary name, scenario).
    #[arg(long, default_value = "")]
    label: String,
    /// Internal: run as a subscriber process for streams FIRST..FIRST+COUNT.
    #[arg(long, hide = true)]
    child: bool,
    #[arg(long, hide = true, default_value_t = 0)]
    first: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    count: usize,
    #[arg(long, hide = true, default_value_t = 1)]
    net: u8,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Every stream is a file descriptor: up to the hard limit (20,000 here).
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::Resource::NOFILE.set(hard, hard)?;
    if args.child {
        let target = match args.target {
            Server::Gateway => Target::Gateway { secret: args.secret.clone() },
            Server::Nchan => Target::Nchan,
        };
        client::run(Spec {
            target,
            addr: args.addr,
            channel: args.channel.clone(),
            first: args.first,
            count: args.count,
            net: args.net,
            per_addr: args.per_addr,
            concurrency: args.concurrency,
        });
        return Ok(());
    }
    if args.streams / args.procs.max(1) + 64 > hard as usize {
        bail!("{} streams over {} processes is above the open-files limit ({hard}) per process: raise --procs", args.streams, args.procs);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let out = rt.block_on(parent(&args))?;
    println!("{out}");
    eprint!("{}", table(&out));
    Ok(())
}

/// The subscriber processes.
struct Children {
    procs: Vec<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)>,
}

impl Children {
    fn spawn(args: &Args) -> anyhow::Result<Children> {
        let exe = std::env::current_exe()?;
        let k = args.procs.max(1);
        let net = 2 + (SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() % 250) as u8;
        let mut procs = Vec::new();
        for p in 0..k {
            let first = args.streams * p / k;
            let count = args.streams * (p + 1) / k - first;
            let mut cmd = Command::new(&exe);
            cmd.args(["--child", "--target", if args.target == Server::Gateway { "gateway" } else { "nchan" }])
                .args(["--addr", &args.addr.to_string(), "--channel", &args.channel, "--secret", &args.secret])
                .args(["--first", &first.to_string(), "--count", &count.to_string(), "--net", &net.to_string()])
                .args(["--per-addr", &args.per_addr.to_string(), "--concurrency", &args.concurrency.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let mut child = cmd.spawn().context("spawn a subscriber process")?;
            let stdin = child.stdin.take().expect("piped");
            let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
            procs.push((child, stdin, lines));
        }
        Ok(Children { procs })
    }

    /// This process and the subscriber processes.
    fn own_pids(&self) -> Vec<u32> {
        std::iter::once(std::process::id()).chain(self.procs.iter().filter_map(|(c, _, _)| c.id())).collect()
    }

    /// Sends `cmd` to every child, returns their answers. An answer that is an error (or no
    /// object) fails the run: discarded, or read as zero counts, it would pass for a child that
    /// saw nothing lost.
    async fn all(&mut self, cmd: &str) -> anyhow::Result<Vec<Value>> {
        for (_, stdin, _) in &mut self.procs {
            stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
            stdin.flush().await?;
        }
        let mut out = Vec::new();
        for (_, _, lines) in &mut self.procs {
            let line = lines.next_line().await?.context("a subscriber process ended early")?;
            let answer: Value = serde_json::from_str(&line).with_context(|| format!("answer {line:?}"))?;
            if !answer.is_object() || answer.get("error").is_some() {
                bail!("a subscriber process answered {cmd:?} with {line}");
            }
            out.push(answer);
        }
        Ok(out)
    }

    async fn quit(mut self) {
        for (_, stdin, _) in &mut self.procs {
            let _ = stdin.write_all(b"quit\n").await;
        }
        for (child, _, _) in &mut self.procs {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

/// Now, in Unix nanoseconds (the clock the payloads' `t`/`s`, the subscribers' receive times and
/// the children's start/end share).
fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The count under `key` of one child's answer. A missing one is an error, not 0: as 0 it would
/// pass for nothing lost (or nothing received) without a word.
fn count(v: &Value, key: &str) -> anyhow::Result<u64> {
    v[key].as_u64().with_context(|| format!("a subscriber process's answer has no count {key:?}"))
}

fn sum(vals: &[Value], key: &str) -> anyhow::Result<u64> {
    vals.iter().map(|v| count(v, key)).sum()
}

fn max(vals: &[Value], key: &str) -> anyhow::Result<u64> {
    vals.iter().try_fold(0, |m, v| Ok(m.max(count(v, key)?)))
}

/// The children's connect answers as one object.
fn connect_summary(answers: &[Value], wall: Duration) -> anyhow::Result<Value> {
    let ok = sum(answers, "ok")?;
    let mut statuses = serde_json::Map::new();
    for a in answers {
        if let Some(m) = a["statuses"].as_object() {
            for (k, v) in m {
                let prev = statuses.get(k).and_then(Value::as_u64).unwrap_or(0);
                statuses.insert(k.clone(), json!(prev + v.as_u64().unwrap_or(0)));
            }
        }
    }
    // Over all processes, wall clock: from the earliest start to the latest last head (the
    // longest process's own duration would leave out the time one ran before another started).
    let starts = answers.iter().map(|a| count(a, "start_unix_ns")).collect::<anyhow::Result<Vec<u64>>>()?;
    let start = starts.into_iter().min().unwrap_or(0);
    let end = max(answers, "end_unix_ns")?.max(start);
    let secs = end.saturating_sub(start) as f64 / 1e9;
    Ok(json!({
        "ok": ok,
        "failed": sum(answers, "failed")?,
        "secs": secs,
        "child_secs_max": answers.iter().map(|a| a["secs"].as_f64().unwrap_or(0.0)).fold(0.0, f64::max),
        "start_unix_ns": start,
        "end_unix_ns": end,
        "wall_secs": wall.as_secs_f64(),
        "per_s": if secs > 0.0 { ok as f64 / secs } else { 0.0 },
        "statuses": statuses,
    }))
}

/// The children's histograms under `key` merged, as quantiles in ms.
fn latency(answers: &[Value], key: &str) -> Value {
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
    for a in answers {
        for pair in a[key].as_array().into_iter().flatten() {
            let (v, c) = (pair[0].as_u64().unwrap_or(1), pair[1].as_u64().unwrap_or(0));
            h.saturating_record_n(v.max(1), c);
        }
    }
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "p50": h.value_at_quantile(0.5) as f64 / 1000.0,
        "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
        "p999": h.value_at_quantile(0.999) as f64 / 1000.0,
        "max": h.max() as f64 / 1000.0,
        "samples": h.len(),
    })
}

/// The children's wait answers as one object (latency histograms merged).
fn wait_summary(answers: &[Value]) -> anyhow::Result<Value> {
    let mut r = json!({});
    for k in ["streams", "open", "complete", "received", "lost", "lossy_streams", "out_of_order", "dups", "stale", "foreign", "id_mismatch", "errors", "closed_by_server", "closed_before_window", "exact"] {
        r[k] = json!(sum(answers, k)?);
    }
    r["last_rx_ns"] = json!(max(answers, "last_rx_ns")?);
    r["waited_secs_max"] = json!(answers.iter().filter_map(|a| a["waited_secs"].as_f64()).fold(0.0, f64::max));
    // Any child cut off while events still arrived: what it counted lost may only be late.
    r["wait_cut_off"] = json!(answers.iter().filter(|a| a["wait_end"] == "cap").count());
    r["done_at_ns"] = json!(max(answers, "done_at_ns")?);
    // From each event's scheduled publish time (the figure), and from its actual send.
    r["latency_ms"] = latency(answers, "hist");
    r["latency_from_send_ms"] = latency(answers, "hist_sent");
    Ok(r)
}

/// The first `n` of a run: wall-clock ms at its start x 1,000 (room for 1,000 events per ms of
/// the run before the next run's numbers; under 2^53, so exact in any JSON reader).
fn n_base() -> u64 {
    unix_ns() / 1_000_000 * 1_000
}

/// What the publisher reports about one schedule.
fn schedule_fields(out: &mut Value, p: &Publisher, s: &publish::Schedule) {
    out["publish_failed"] = json!(p.failed());
    let (retries, reconnects) = p.retries();
    out["publish_retries"] = json!(retries);
    out["publish_reconnects"] = json!(reconnects);
    out["publish_secs"] = json!(s.took.as_secs_f64());
    out["publish_lag_max_ms"] = json!(s.lag_max.as_secs_f64() * 1000.0);
    out["publish_lag_end_ms"] = json!(s.lag_end.as_secs_f64() * 1000.0);
}

/// Why a run does not measure the server (empty: it does).
fn invalid(out: &Value) -> Value {
    let mut why = Vec::new();
    let failed = out["publish_failed"].as_u64().unwrap_or(0);
    if failed > 0 {
        why.push(format!("{failed} publishes failed (their events are not the server's loss)"));
    }
    for k in ["connect", "reconnect"] {
        let f = out[k]["failed"].as_u64().unwrap_or(0);
        if f > 0 {
            let costs = if out["mode"] == "connect" { "the rate is not every stream's" } else { "their events count as lost" };
            why.push(format!("{f} streams failed to {k} ({costs})"));
        }
    }
    if let Some(open) = out["streams_open"].as_u64() {
        if open < out["streams"].as_u64().unwrap_or(0) {
            why.push(format!("only {open} of {} streams open when memory was read", out["streams"]));
        }
    }
    let closed = out["result"]["closed_before_window"].as_u64().unwrap_or(0);
    if closed > 0 {
        why.push(format!("{closed} streams were closed by the server before the events (their events count as lost)"));
    }
    if out["result"]["wait_cut_off"].as_u64().unwrap_or(0) > 0 {
        why.push("the wait for deliveries was cut off while events still arrived (lost may be late)".to_string());
    }
    let gone = out["pids_gone"].as_array().map_or(0, Vec::len);
    if gone > 0 {
        // Its memory read 0 and its CPU time was left out of the sums: the figures are short.
        let watched = out["pids"].as_array().map_or(0, Vec::len);
        why.push(format!("{gone} of {watched} watched server processes were gone at the end (their memory and CPU figures are not readings)"));
    } else if out["pids"].as_array().is_some_and(|p| !p.is_empty()) && out["rss_kib_end"].as_u64() == Some(0) {
        why.push("the server process was gone at the end (its memory and CPU figures are not readings)".to_string());
    }
    json!(why)
}

async fn parent(args: &Args) -> anyhow::Result<Value> {
    let pids = args.pids.clone();
    let mut out = json!({
        "label": args.label,
        "target": format!("{:?}", args.target).to_lowercase(),
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "streams": args.streams,
        "procs": args.procs,
        "pids": pids,
    });
    let mem0 = procfs::mem(&pids);
    out["rss_kib_before"] = json!(mem0.rss_kib);
    out["pss_kib_before"] = json!(mem0.pss_kib);
    let mut publisher = match args.mode {
        Mode::Connect => None,
        _ => Some(match args.target {
            Server::Gateway => Publisher::amqp(&args.amqp_url, &args.exchange, &args.routing_key).await?,
            Server::Nchan => Publisher::http(args.addr, &args.channel, args.publishers).await?,
        }),
    };
    let mut kids = Children::spawn(args)?;
    // Every process signs its tokens before any connects (signing is the client's work).
    kids.all("prepare").await?;
    let t0 = Instant::now();
    let conn = connect_summary(&kids.all("connect").await?, t0.elapsed())?;
    out["connect"] = conn;

    match args.mode {
        Mode::Connect => {
            tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
            let mem = procfs::mem(&pids);
            // The streams open when memory is read (one the server closed during the settle
            // holds nothing), not the ones asked for.
            let open = sum(&kids.all("open").await?, "open")?;
            out["streams_open"] = json!(open);
            out["settle_secs"] = json!(args.settle);
            out["rss_kib_connected"] = json!(mem.rss_kib);
            out["pss_kib_connected"] = json!(mem.pss_kib);
            let per = |now: u64, before: u64| if open > 0 { json!((now.saturating_sub(before) * 1024) as f64 / open as f64) } else { json!(null) };
            out["rss_bytes_per_stream"] = per(mem.rss_kib, mem0.rss_kib);
            out["pss_bytes_per_stream"] = per(mem.pss_kib, mem0.pss_kib);
        }
        Mode::Fanout => {
            let p = publisher.as_mut().expect("a publisher");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mem = procfs::mem(&pids);
            out["rss_kib_connected"] = json!(mem.rss_kib);
            let count = (args.rate * args.duration).round() as u64;
            let base = n_base();
            out["n_base"] = json!(base);
            kids.all(&format!("window {base} {base} {}", (base + count).saturating_sub(1))).await?;
            let (cpu0, own0, cpu_t0) = (procfs::cpu_secs(&pids), procfs::cpu_secs(&kids.own_pids()), Instant::now());
            let machine0 = procfs::machine_ticks();
            let sampler = procfs::PeakSampler::start(pids.clone(), Duration::from_millis(50));
            let start_ns = unix_ns();
            let sched = publish::at_rate(p, base, count, args.rate).await?;
            let machine1 = procfs::machine_ticks();
            let wait = wait_summary(&kids.all(&format!("wait {}", (args.drain * 1000.0) as u64)).await?)?;
            let (cpu1, own1, cpu_span) = (procfs::cpu_secs(&pids), procfs::cpu_secs(&kids.own_pids()), cpu_t0.elapsed().as_secs_f64());
            // Who else used the machine: this tool (the publisher and the subscriber processes),
            // over the same span as the server's CPU time (publishing and the wait after it), so
            // the two figures side by side compare; and how much of every CPU stayed idle while
            // events were published (BENCHMARKS.md: "the machine's idle share while
            // publishing"), the load the server's latency was measured under; the wait after
            // it, with nothing published, would dilute that.
            out["load_tool_cpu_secs"] = json!(own1 - own0);
            out["cpu_span_secs"] = json!(cpu_span);
            let (idle, total) = (machine1.0.saturating_sub(machine0.0), machine1.1.saturating_sub(machine0.1));
            out["machine_idle_pct"] = json!(if total > 0 { 100.0 * idle as f64 / total as f64 } else { 0.0 });
            out["rss_kib_peak"] = json!(sampler.finish());
            schedule_fields(&mut out, p, &sched);
            out["rate"] = json!(args.rate);
            out["events"] = json!(count);
            let received = wait["received"].as_u64().unwrap_or(0);
            // From the first publish to the last delivery, but never shorter than the schedule
            // (with few events the span between the first and the last is one interval short).
            let end_ns = wait["last_rx_ns"].as_u64().unwrap_or(start_ns).max(start_ns + 1);
            let secs = ((end_ns - start_ns) as f64 / 1e9).max(count as f64 / args.rate);
            out["deliveries_per_s"] = json!(received as f64 / secs);
            out["offered_per_s"] = json!(args.rate * args.streams as f64);
            out["cpu_secs"] = json!(cpu1 - cpu0);
            // Over the span the CPU time was read across (publishing and the wait after it).
            out["cpu_pct"] = json!(100.0 * (cpu1 - cpu0) / cpu_span);
            out["result"] = wait;
            if args.target == Server::Nchan && args.publishers > 1 {
                // Events go out over several connections at once, so they reach nchan out of
                // order: not a figure of the server's.
                out["result"]["out_of_order"] = json!(null);
                out["result"]["exact"] = json!(null); // "exact" includes "in order"
                out["out_of_order_note"] = json!(format!("not measured: published over {} connections at once", args.publishers));
            }
        }
        Mode::Resume => {
            let p = publisher.as_mut().expect("a publisher");
            let warm = args.warm.max(1);
            let base = n_base();
            out["n_base"] = json!(base);
            kids.all(&format!("window {base} {base} {}", base + warm - 1)).await?;
            publish::at_rate(p, base, warm, 100.0).await?;
            let first = wait_summary(&kids.all(&format!("wait {}", (args.drain * 1000.0) as u64)).await?)?;
            out["warm"] = first;
            kids.all("disconnect").await?;
            // Let the server see the closes before the events the streams will miss.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let sched = publish::at_rate(p, base + warm, args.behind, 2000.0).await?;
            schedule_fields(&mut out, p, &sched);
            tokio::time::sleep(Duration::from_secs(1)).await;
            kids.all(&format!("window {base} {} {}", base + warm, (base + warm + args.behind).saturating_sub(1))).await?;
            // Tokens signed (with each stream's Last-Event-ID) before the storm's clock starts.
            kids.all("prepare").await?;
            let cpu0 = procfs::cpu_secs(&pids);
            let sampler = procfs::PeakSampler::start(pids.clone(), Duration::from_millis(10));
            let start_ns = unix_ns();
            let t0 = Instant::now();
            let conn = connect_summary(&kids.all("connect").await?, t0.elapsed())?;
            let wait = wait_summary(&kids.all(&format!("wait {}", (args.drain * 1000.0) as u64)).await?)?;
            let cpu1 = procfs::cpu_secs(&pids);
            out["rss_kib_peak"] = json!(sampler.finish());
            let done = wait["done_at_ns"].as_u64().unwrap_or(0);
            let complete = wait["complete"].as_u64().unwrap_or(0) == args.streams as u64;
            out["serve_all_secs"] = if complete { json!((done.saturating_sub(start_ns)) as f64 / 1e9) } else { json!(null) };
            out["reconnect"] = conn;
            out["cpu_secs"] = json!(cpu1 - cpu0);
            out["behind"] = json!(args.behind);
            out["result"] = wait;
        }
    }
    let mem = procfs::mem(&pids);
    out["rss_kib_end"] = json!(mem.rss_kib);
    // The kernel's own peak (VmHWM), which no sampling interval can miss, beside the sampled
    // `rss_kib_peak`. It covers each process's whole life: for a server started for this run
    // (run.sh's fanout, latency, burst, resume, flood) that is the run's peak, connecting
    // included; for one that served earlier runs (steps, sweep, scale) those runs too, so the
    // sampled peak stays the run's own figure.
    out["rss_kib_hwm"] = json!(procfs::hwm_kib(&pids));
    // A watched process gone by now had its memory read as 0 and its CPU time left out.
    out["pids_gone"] = json!(procfs::gone(&pids));
    out["invalid"] = invalid(&out);
    kids.quit().await;
    drop(publisher);
    Ok(out)
}

/// The human table.
fn table(o: &Value) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
    row("label", o["label"].as_str().unwrap_or("").to_string());
    row("target / mode", format!("{} / {}", o["target"].as_str().unwrap_or(""), o["mode"].as_str().unwrap_or("")));
    row("streams", format!("{} over {} processes", o["streams"], o["procs"]));
    if let Some(why) = o["invalid"].as_array().filter(|w| !w.is_empty()) {
        let why: Vec<&str> = why.iter().filter_map(Value::as_str).collect();
        row("INVALID", why.join("; "));
    }
    let c = &o["connect"];
    row("connected", format!("{} ok, {} failed {}", c["ok"], c["failed"], c["statuses"]));
    row(
        "connect time",
        format!(
            "{:.3} s, earliest start to latest head ({:.0} streams/s; slowest process alone {:.3} s)",
            c["secs"].as_f64().unwrap_or(0.0),
            c["per_s"].as_f64().unwrap_or(0.0),
            c["child_secs_max"].as_f64().unwrap_or(0.0)
        ),
    );
    if let Some(open) = o["streams_open"].as_u64() {
        row("open at the memory reading", open.to_string());
    }
    let kib = |k: &str| o[k].as_u64().map(|v| format!("{:.1} MiB", v as f64 / 1024.0)).unwrap_or_else(|| "-".into());
    row("server RSS before", kib("rss_kib_before"));
    row("server RSS connected", kib("rss_kib_connected"));
    if let Some(b) = o["rss_bytes_per_stream"].as_f64() {
        row("RSS per idle stream", format!("{b:.0} B (PSS {:.0} B)", o["pss_bytes_per_stream"].as_f64().unwrap_or(0.0)));
    }
    row("server RSS peak (sampled)", kib("rss_kib_peak"));
    row("server RSS VmHWM (process's life)", kib("rss_kib_hwm"));
    row("server RSS end", kib("rss_kib_end"));
    if let Some(r) = o["rate"].as_f64() {
        row("published", format!("{} events at {r}/s in {:.2} s ({} failed)", o["events"], o["publish_secs"].as_f64().unwrap_or(0.0), o["publish_failed"]));
        row("publisher behind schedule", format!("max {:.1} ms, at the end {:.1} ms", o["publish_lag_max_ms"].as_f64().unwrap_or(0.0), o["publish_lag_end_ms"].as_f64().unwrap_or(0.0)));
        if o["target"] == "nchan" {
            row("publish retries / reconnects", format!("{} / {}", o["publish_retries"], o["publish_reconnects"]));
        }
        row("deliveries/s", format!("{:.0} (offered {:.0})", o["deliveries_per_s"].as_f64().unwrap_or(0.0), o["offered_per_s"].as_f64().unwrap_or(0.0)));
    }
    if let Some(cpu) = o["cpu_secs"].as_f64() {
        row("server CPU", format!("{cpu:.2} s ({:.0} %)", o["cpu_pct"].as_f64().unwrap_or(0.0)));
    }
    if let Some(own) = o["load_tool_cpu_secs"].as_f64() {
        row("load tool CPU", format!("{own:.2} s (the server CPU's span: publishing and the wait)"));
    }
    if let Some(idle) = o["machine_idle_pct"].as_f64() {
        row("machine idle while publishing", format!("{idle:.0} %"));
    }
    let r = &o["result"];
    if !r.is_null() {
        row("received", format!("{} (complete streams {}/{})", r["received"], r["complete"], r["streams"]));
        row("lost", format!("{} events on {} streams (closed by server {})", r["lost"], r["lossy_streams"], r["closed_by_server"]));
        row("dups / out of order / stale / id mismatch", format!("{} / {} / {} / {}", r["dups"], r["out_of_order"], r["stale"], r["id_mismatch"]));
        row("error events / foreign (other runs')", format!("{} / {}", r["errors"], r["foreign"]));
        let l = &r["latency_ms"];
        if !l.is_null() {
            row("latency ms p50/p99/p99.9/max", format!("{} / {} / {} / {} (from the schedule)", l["p50"], l["p99"], l["p999"], l["max"]));
        }
        let l = &r["latency_from_send_ms"];
        if !l.is_null() {
            row("  from the actual send", format!("{} / {} / {} / {}", l["p50"], l["p99"], l["p999"], l["max"]));
        }
    }
    if o["mode"] == "resume" {
        row("exact replays", format!("{} / {}", r["exact"], o["streams"]));
        row("time to serve all", o["serve_all_secs"].as_f64().map_or("not all served".into(), |s| format!("{s:.3} s")));
    }
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter().map(|(k, v)| format!("{k:<w$}  {v}\n")).collect()
}
