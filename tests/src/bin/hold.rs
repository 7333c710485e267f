//! `hold`: opens many idle SSE streams on a gateway and holds them, to measure what a stream
//! costs the gateway (see the README's "Which binary").
//!
//! ```sh
//! cargo run --release -p sse-gateway-tests --bin hold -- \
//!     --addr 127.0.0.1:8080 --secret "$SECRET" --count 10000 [--channel deals] [--per-address 5000]
//! ```
//!
//! Each stream has its own user (`hold-0`, `hold-1`, ...: the per-user limit never bites) with an
//! HS256 token signed with `--secret`, valid for a day. Connections leave from 127.0.0.2,
//! 127.0.0.3, ... (`--per-address` each, bound before connecting) so the ephemeral ports of one
//! source address never run out (`SO_REUSEADDR`, so back-to-back runs do not either). At most
//! `--parallel` connections are being opened at once.
//! Prints `open N streams in S s` on stdout once every stream answered 200, then holds them
//! (reading and discarding what arrives) until killed, or for `--seconds`. Raises its own
//! open-files limit to the hard limit first (one descriptor a stream).
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sse_gateway_tests::token::token;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

struct Args {
    addr: SocketAddr,
    secret: String,
    count: usize,
    channel: String,
    per_address: usize,
    parallel: usize,
    seconds: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:8080".parse().expect("a literal address"),
        secret: String::new(),
        count: 1000,
        channel: "deals".into(),
        per_address: 5000,
        parallel: 256,
        seconds: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--addr" => args.addr = value()?.parse().map_err(|e| format!("--addr: {e}"))?,
            "--secret" => args.secret = value()?,
            "--count" => args.count = num(value()?)?,
            "--channel" => args.channel = value()?,
            "--per-address" => args.per_address = num(value()?)?.max(1),
            "--parallel" => args.parallel = num(value()?)?.max(1),
            "--seconds" => args.seconds = Some(num(value()?)? as u64),
            other => return Err(format!("unknown argument {other} (see the file's doc comment)")),
        }
    }
    if args.secret.is_empty() {
        return Err("--secret is required (the gateway's HMAC secret)".into());
    }
    Ok(args)
}

/// The source address of the `i`-th connection: 127.0.0.2 for the first `per_address`, then
/// 127.0.0.3, ...
fn source(i: usize, per_address: usize) -> SocketAddr {
    let n = 2 + (i / per_address) as u32;
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + n);
    SocketAddr::new(IpAddr::V4(ip), 0)
}

/// Connects from `from`, sends the stream request and reads the head; the socket once the
/// gateway answered 200.
async fn open(args: &Args, from: SocketAddr, user: &str) -> Result<TcpStream, String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    // Ports left in TIME_WAIT by an earlier run may be taken again (loopback allows the reuse).
    sock.set_reuseaddr(true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    sock.bind(from).map_err(|e| format!("bind {from}: {e}"))?;
    let mut s = sock.connect(args.addr).await.map_err(|e| format!("connect from {from}: {e}"))?;
    let t = token(&args.secret, user, &[], 86_400);
    let req = format!(
        "GET /api/v1/streams/{} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {t}\r\n\r\n",
        args.channel, args.addr
    );
    s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) => return Err(format!("closed before a head ({} bytes)", head.len())),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let status = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
    if status.split(' ').nth(1) != Some("200") {
        return Err(format!("answered {status:?}"));
    }
    Ok(s)
}

/// Reads and discards until the gateway closes the stream.
async fn drain(mut s: TcpStream, closed: Arc<AtomicUsize>) {
    let mut buf = [0u8; 512];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    closed.fetch_add(1, Ordering::Relaxed);
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("hold: {e}");
            return ExitCode::from(2);
        }
    };
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < args.count + 64 => eprintln!("hold: only {n} open files allowed; expect failures"),
        Ok(_) => {}
        Err(e) => eprintln!("hold: cannot raise the open-files limit: {e}"),
    }
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.parallel));
    let closed = Arc::new(AtomicUsize::new(0));
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let permit = gate.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (args, closed) = (args.clone(), closed.clone());
        opening.spawn(async move {
            let r = open(&args, source(i, args.per_address), &format!("hold-{i}")).await;
            drop(permit);
            r.map(|s| {
                tokio::spawn(drain(s, closed));
            })
            .map_err(|e| format!("stream {i}: {e}"))
        });
    }
    let mut failed = 0;
    while let Some(r) = opening.join_next().await {
        if let Err(e) = r.expect("an opening task never panics") {
            if failed < 5 {
                eprintln!("hold: {e}");
            }
            failed += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if failed > 0 {
        eprintln!("hold: {failed} of {} streams failed to open", args.count);
        return ExitCode::FAILURE;
    }
    println!("open {} streams in {secs:.1} s", args.count);
    match args.seconds {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => std::future::pending().await,
    }
    let gone = closed.load(Ordering::Relaxed);
    println!("held {} streams for {} s ({gone} closed by the gateway)", args.count, args.seconds.unwrap_or(0));
    ExitCode::SUCCESS
}
