//! What one write to a loopback TCP connection costs on this machine, with no server around it:
//! the floor under any SSE server's fan-out round (BENCHMARKS.md, (b)). A server that writes one
//! event to N streams makes N `write` calls; on loopback each one also runs the receiver's TCP
//! input inside the sender's call, so N x (the figure here) is the least CPU a round can take.
//!
//! It opens `--streams` connections to itself on 127.0.0.1, then writes `--bytes` bytes to each in
//! turn, `--rounds` times, from one thread (as a gateway shard does), with `TCP_NODELAY` on. With
//! `--reader`, a second thread reads every connection in turn (non-blocking, as a subscriber process
//! would); without it the bytes stay queued at the receiver, so only the sender's side is counted.
//! With `--wait` too, the reader waits for readiness instead (a tokio current-thread runtime, a
//! task per connection, like the load tool's subscribers): a write to a connection whose reader
//! sleeps also wakes it, which a spinning reader never needs.
//! Prints one JSON line: wall and on-CPU time per write (the thread's own schedstat), and, for
//! the waiting reader, its on-CPU time per read that got bytes. A spinning reader's CPU time is
//! mostly its empty passes (reads that found nothing: `empty_reads`) and lasts as long as the
//! writer does, so divided by the reads that got bytes it would be the writer's wall time per
//! write, not a read's cost: `us_per_read_cpu` is null there.
//!
//!   floor [--streams 1000] [--bytes 150] [--rounds N] [--reader [--wait]] [--label TEXT]
//!
//! `--rounds` defaults to 300 with a reader, and to what fits in 32 KiB per connection without.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;

/// Nanoseconds this thread has run on a CPU (the first field of /proc/thread-self/schedstat).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()))
        .unwrap_or(0)
}

#[derive(Debug, Parser)]
#[command(about = "What one write to a loopback TCP connection costs here, with no server")]
struct Args {
    /// Connections written to in turn.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Bytes per write.
    #[arg(long, default_value_t = 150)]
    bytes: usize,
    /// Writes per connection (default: 300 with a reader, what fits in 32 KiB without).
    #[arg(long)]
    rounds: Option<usize>,
    /// A second thread reads every connection in turn.
    #[arg(long)]
    reader: bool,
    /// The reader waits for readiness (epoll, through tokio) instead of spinning.
    #[arg(long, requires = "reader")]
    wait: bool,
    /// Copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

fn main() -> std::io::Result<()> {
    let Args { streams, bytes, rounds, reader, wait, label } = Args::parse();
    let rounds = rounds.unwrap_or(if reader { 300 } else { (32 * 1024 / bytes.max(1)).max(1) });
    // Without a reader everything written stays queued at the receiver: keep it well inside the
    // receive buffer, so no write ever waits for room.
    assert!(reader || rounds * bytes <= 64 * 1024, "without --reader, rounds x bytes must stay under 64 KiB per stream");

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut senders = Vec::with_capacity(streams);
    let mut receivers = Vec::with_capacity(streams);
    for _ in 0..streams {
        let r = TcpStream::connect(addr)?;
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        r.set_nonblocking(true)?;
        senders.push(s);
        receivers.push(r);
    }

    let done = Arc::new(AtomicBool::new(false));
    // Without a reader the receiving ends stay open, unread, until the end.
    let (mut receivers, idle) = if reader { (receivers, Vec::new()) } else { (Vec::new(), receivers) };
    let read_thread = reader.then(|| {
        let done = done.clone();
        let mut receivers = std::mem::take(&mut receivers);
        std::thread::spawn(move || {
            if wait {
                return read_waiting(receivers, &done);
            }
            let (cpu0, mut reads, mut empty, mut buf) = (thread_cpu_ns(), 0u64, 0u64, vec![0u8; 64 * 1024]);
            while !done.load(Ordering::Relaxed) {
                for r in receivers.iter_mut() {
                    match r.read(&mut buf) {
                        Ok(n) if n > 0 => reads += 1,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => empty += 1,
                        Err(e) => panic!("read: {e}"),
                        // End of stream: the writers stay open until the end, so never here.
                        Ok(_) => {}
                    }
                }
            }
            (thread_cpu_ns() - cpu0, reads, Some(empty))
        })
    });

    let payload = vec![b'x'; bytes];
    let (cpu0, start) = (thread_cpu_ns(), Instant::now());
    for _ in 0..rounds {
        for s in senders.iter_mut() {
            s.write_all(&payload)?;
        }
    }
    let (wall, cpu) = (start.elapsed().as_nanos() as f64, (thread_cpu_ns() - cpu0) as f64);
    done.store(true, Ordering::Relaxed);
    let (read_cpu, reads, empty) = read_thread.map(|t| t.join().expect("reader")).unwrap_or((0, 0, None));
    drop(idle);

    let writes = (streams * rounds) as f64;
    // A read's cost only where the reader's CPU time is its reads': the waiting reader (a
    // spinning one's is mostly empty passes, see the top).
    let per_read = if wait && reads > 0 { format!("{:.2}", read_cpu as f64 / reads as f64 / 1e3) } else { "null".into() };
    // Counted by the spinning reader only (the waiting one's, after a readiness with nothing to
    // read, stay inside tokio).
    let empty = empty.map_or("null".into(), |n| n.to_string());
    println!(
        "{{\"label\":{label:?},\"streams\":{streams},\"bytes\":{bytes},\"rounds\":{rounds},\"reader\":{reader},\"wait\":{wait},\"writes\":{writes},\
         \"us_per_write_wall\":{:.2},\"us_per_write_cpu\":{:.2},\"round_ms_cpu\":{:.2},\"reads\":{reads},\"empty_reads\":{empty},\"us_per_read_cpu\":{per_read}}}",
        wall / writes / 1e3,
        cpu / writes / 1e3,
        cpu / rounds as f64 / 1e6,
    );
    Ok(())
}

/// The reader of `--wait`: a task per connection on a current-thread runtime, each reading
/// whenever its connection is readable, until `done`. Returns its on-CPU ns and the reads that
/// got bytes (empty reads are not counted: tokio retries them inside after the next readiness).
fn read_waiting(receivers: Vec<TcpStream>, done: &AtomicBool) -> (u64, u64, Option<u64>) {
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    let reads = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let cpu0 = thread_cpu_ns();
    local.block_on(&rt, async {
        for r in receivers {
            let mut r = tokio::net::TcpStream::from_std(r).expect("adopt");
            let reads = reads.clone();
            tokio::task::spawn_local(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    reads.set(reads.get() + 1);
                }
            });
        }
        while !done.load(Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    (thread_cpu_ns() - cpu0, reads.get(), None)
}
