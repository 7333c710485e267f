//! The publishing side: through RabbitMQ (sse-gateway's source) or over HTTP POST (nchan's
//! publisher location), at a fixed rate, each payload carrying its sequence `n`, its scheduled
//! publish time `t` and the time it was actually sent `s` (both Unix ns) so subscribers count
//! losses and latency without a shared map.
//!
//! Latency is measured from `t`, the schedule (start + k / rate), not from `s`: a server that
//! holds the publisher back (nchan answers a publish only after its fan-out) would otherwise
//! delay the clock's start along with the event and hide its own backlog (coordinated omission).
//! `s` stays in the payload so the latency from the actual send can be read beside it, and the
//! publisher reports how far behind its schedule it ran.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::unix_ns;

/// One HTTP publish (write, nchan's fan-out, its answer) or one `basic_publish` taking longer than
/// this counts as failed: the run must end even if the server stops answering. At 10,000
/// subscribers nchan answered a publish only after 30 s now and then (fan-out run of 89f9abe, 2 vCPUs):
/// its event was delivered all the same.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// [`Publisher::flush`] gives up once the server answered (confirmed) no publish for this long;
/// what is still outstanding then counts as failed. A stall, not a total: nchan's publishes
/// legitimately run minutes behind a 20-s schedule at 10,000 subscribers, and that slowness is
/// what the run measures. Requests that time out are not answers: a server that stopped
/// answering costs one stall, not [`REQUEST_TIMEOUT`] per queued event.
const STALL_TIMEOUT: Duration = Duration::from_secs(150);
/// Tries per HTTP publish when the connection turns out closed before any answer (nginx closes
/// a kept-alive connection after `keepalive_requests`, or when idle past `keepalive_timeout`):
/// the request was not taken, so it goes again on a new connection.
const HTTP_TRIES: u32 = 3;

/// A valid `deal.updated` payload (seed catalogue) with the bench fields first: `n`, the
/// scheduled time `t` and the send time `s`.
pub fn payload(n: u64, t: u64, s: u64) -> Vec<u8> {
    format!(
        r#"{{"n":{n},"t":{t},"s":{s},"deal_id":"6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b","changes":{{"status":"issuing"}},"updated_at":"2026-11-28T10:00:00Z","version":5}}"#
    )
    .into_bytes()
}

/// Counters shared with the HTTP connection tasks.
#[derive(Default)]
pub struct Stats {
    /// Publishes finished (answered, confirmed, failed or given up).
    done: AtomicU64,
    /// HTTP publishes the server answered (any status): the progress a flush waits on.
    answered: AtomicU64,
    failed: AtomicU64,
    /// HTTP publishes sent again on a new connection (the first one was closed under them).
    retries: AtomicU64,
    /// Connections opened again after the first ones.
    reconnects: AtomicU64,
    /// The latest send behind its scheduled time, at most, since [`Stats::reset_lag`].
    lag_max_ns: AtomicU64,
    /// The send time (Unix ns) of the latest send since [`Stats::reset_lag`] and how late it went
    /// out: at the end of a schedule, how far behind the publisher finished (with 8 nchan
    /// connections, the highest `n` is not always the last to go out).
    last: Mutex<(u64, u64)>,
}

impl Stats {
    /// An event due at `due_ns` goes out now; returns now (Unix ns).
    fn sending(&self, due_ns: u64) -> u64 {
        let now = unix_ns();
        let lag = now.saturating_sub(due_ns);
        self.lag_max_ns.fetch_max(lag, Ordering::Relaxed);
        let mut last = self.last.lock().expect("never poisoned");
        if now >= last.0 {
            *last = (now, lag);
        }
        now
    }

    fn reset_lag(&self) {
        self.lag_max_ns.store(0, Ordering::Relaxed);
        *self.last.lock().expect("never poisoned") = (0, 0);
    }

    fn finished(&self, ok: bool) {
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where events go.
#[allow(clippy::large_enum_variant)] // one per process
pub enum Publisher {
    /// RabbitMQ: a topic exchange the gateway's channel is bound to; publisher confirms on,
    /// mandatory (an unroutable message counts as failed, not as the gateway's loss).
    /// After a `basic_publish` timed out (flow control that did not lift) nothing more is tried:
    /// `dead`, the rest count as failed.
    Amqp { _conn: Connection, channel: Channel, exchange: String, routing_key: String, confirms: Vec<PublisherConfirm>, stats: Arc<Stats>, dead: bool },
    /// nchan: `POST /pub/{channel}` over several kept-alive connections, event `n` on connection
    /// `n % k`, each one request at a time (nchan answers a publish once it has fanned it out,
    /// so one connection alone would hold the rate down to its fan-out time).
    Http { txs: Vec<mpsc::UnboundedSender<(u64, u64)>>, tasks: Vec<JoinHandle<()>>, sent: u64, stats: Arc<Stats>, dead: bool },
}

impl Publisher {
    pub async fn amqp(url: &str, exchange: &str, routing_key: &str) -> anyhow::Result<Publisher> {
        let conn = Connection::connect_with_runtime(url, ConnectionProperties::default(), async_rs::Runtime::tokio_current())
            .await
            .with_context(|| format!("connect to RabbitMQ at {url}"))?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher::Amqp {
            _conn: conn,
            channel,
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            confirms: Vec::new(),
            stats: Arc::default(),
            dead: false,
        })
    }

    /// `k` publishing connections to nchan at `addr` (the first ones opened here, so a wrong
    /// address fails at once; each is opened again when nginx closes it).
    pub async fn http(addr: SocketAddr, channel: &str, k: usize) -> anyhow::Result<Publisher> {
        let stats = Arc::new(Stats::default());
        let (mut txs, mut tasks) = (Vec::new(), Vec::new());
        for _ in 0..k.max(1) {
            let sock = connect(addr).await.with_context(|| format!("connect to {addr}"))?;
            let (tx, rx) = mpsc::unbounded_channel::<(u64, u64)>();
            let path = format!("/pub/{channel}");
            tasks.push(tokio::spawn(http_connection(addr, path, sock, rx, stats.clone())));
            txs.push(tx);
        }
        Ok(Publisher::Http { txs, tasks, sent: 0, stats, dead: false })
    }

    fn stats(&self) -> &Stats {
        match self {
            Publisher::Amqp { stats, .. } | Publisher::Http { stats, .. } => stats,
        }
    }

    /// Publishes event `n`, scheduled at `due_ns` (Unix ns), now (nchan: hands it to its
    /// connection, which sends it when free).
    pub async fn publish(&mut self, n: u64, due_ns: u64) -> anyhow::Result<()> {
        match self {
            Publisher::Amqp { channel, exchange, routing_key, confirms, stats, dead, .. } => {
                if *dead {
                    stats.finished(false);
                    return Ok(());
                }
                let body = payload(n, due_ns, stats.sending(due_ns));
                let props = BasicProperties::default().with_type("deal.updated".into());
                let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
                let publish = channel.basic_publish(exchange.as_str().into(), routing_key.as_str().into(), opts, &body, props);
                match tokio::time::timeout(REQUEST_TIMEOUT, publish).await {
                    Ok(Ok(c)) => confirms.push(c),
                    // The channel or the connection is gone (no reconnect here): this one and
                    // the rest count as failed, and the run is reported (invalid), not lost.
                    Ok(Err(e)) => {
                        eprintln!("load: RabbitMQ refused a publish ({e}): the rest count as failed");
                        *dead = true;
                        stats.finished(false);
                    }
                    // Flow control that did not lift: this one and the rest count as failed; the
                    // run ends (invalid) instead of waiting this long for every event.
                    Err(_) => {
                        eprintln!("load: RabbitMQ took no publish for {} s: the rest count as failed", REQUEST_TIMEOUT.as_secs());
                        *dead = true;
                        stats.finished(false);
                    }
                }
            }
            Publisher::Http { txs, sent, stats, dead, .. } => {
                let k = txs.len() as u64;
                *sent += 1;
                // A connection given up by a flush that timed out: the event is not sent.
                if *dead || txs[(n % k) as usize].send((n, due_ns)).is_err() {
                    stats.finished(false);
                }
            }
        }
        Ok(())
    }

    /// Waits until the server took everything published so far (confirms; nchan's answers), or
    /// until nothing completed for [`STALL_TIMEOUT`]: what is outstanding then counts as failed.
    pub async fn flush(&mut self) {
        match self {
            Publisher::Amqp { confirms, stats, .. } => {
                // Awaited in order; the deadline moves on with every confirm. Once it passed, the
                // rest are only checked (a timeout polls its future once before it looks at the
                // clock), so a broker that stopped confirming costs one stall, not one each.
                let mut deadline = tokio::time::Instant::now() + STALL_TIMEOUT;
                for c in confirms.drain(..) {
                    let ok = matches!(tokio::time::timeout_at(deadline, c).await, Ok(Ok(Confirmation::Ack(None))));
                    if ok {
                        deadline = tokio::time::Instant::now() + STALL_TIMEOUT;
                    }
                    stats.finished(ok);
                }
            }
            Publisher::Http { sent, stats, tasks, dead, .. } => {
                let (mut seen, mut since) = (stats.answered.load(Ordering::Relaxed), Instant::now());
                loop {
                    let (done, answered) = (stats.done.load(Ordering::Relaxed), stats.answered.load(Ordering::Relaxed));
                    if done >= *sent {
                        break;
                    }
                    if answered != seen {
                        (seen, since) = (answered, Instant::now());
                    } else if since.elapsed() >= STALL_TIMEOUT {
                        // Stop the connections (the queued events are never sent) and count
                        // everything outstanding as failed.
                        for t in tasks.iter() {
                            t.abort();
                        }
                        // Counted once they stopped: one that finished meanwhile is not also
                        // counted as outstanding.
                        for t in tasks.iter_mut() {
                            let _ = t.await;
                        }
                        *dead = true;
                        let left = sent.saturating_sub(stats.done.load(Ordering::Relaxed));
                        stats.failed.fetch_add(left, Ordering::Relaxed);
                        stats.done.fetch_add(left, Ordering::Relaxed);
                        eprintln!("load: nchan answered no publish for {} s: {left} publishes counted as failed", STALL_TIMEOUT.as_secs());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    /// Publishes that failed so far (not confirmed, returned as unroutable, refused by nchan,
    /// timed out, connection lost and not sent again); call after [`Publisher::flush`].
    pub fn failed(&self) -> u64 {
        self.stats().failed.load(Ordering::Relaxed)
    }

    /// HTTP publishes sent again on a new connection, and connections opened again.
    pub fn retries(&self) -> (u64, u64) {
        let s = self.stats();
        (s.retries.load(Ordering::Relaxed), s.reconnects.load(Ordering::Relaxed))
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    sock.set_nodelay(true)?;
    Ok(sock)
}

/// One publishing connection to nchan: sends the events it is handed, one request at a time.
/// When nginx closes the connection (it says `Connection: close` on its last answer, or the
/// socket ends before an answer) it connects again; an event whose request got no byte of answer
/// is sent again (nginx did not take it), up to [`HTTP_TRIES`] times.
async fn http_connection(addr: SocketAddr, path: String, sock: TcpStream, mut rx: mpsc::UnboundedReceiver<(u64, u64)>, stats: Arc<Stats>) {
    let mut conn = Some(sock);
    let mut buf = Vec::new();
    while let Some((n, due_ns)) = rx.recv().await {
        let mut ok = false;
        let mut sends = 0;
        for _ in 0..HTTP_TRIES {
            let sock = match &mut conn {
                Some(s) => s,
                None => match connect(addr).await {
                    Ok(s) => {
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        buf.clear();
                        conn.insert(s)
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Every try is a send: a retried event's lag is the one it finally went out with.
            sends += 1;
            if sends > 1 {
                stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            let body = payload(n, due_ns, stats.sending(due_ns));
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let request = async {
                sock.write_all(&[head.as_bytes(), &body].concat()).await.map_err(|_| Answer::NotTaken)?;
                read_response(sock, &mut buf).await
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
                Ok(Ok((status, close))) => {
                    stats.answered.fetch_add(1, Ordering::Relaxed);
                    if close {
                        conn = None;
                    }
                    ok = status.starts_with('2');
                    break;
                }
                Ok(Err(Answer::NotTaken)) => conn = None,
                // Part of an answer, or none in time: nginx may have published it; sending it
                // again could deliver it twice, so it counts as failed.
                Ok(Err(Answer::Broken)) | Err(_) => {
                    conn = None;
                    break;
                }
            }
        }
        stats.finished(ok);
    }
}

/// Why a publish got no answer.
enum Answer {
    /// The connection ended (or failed) before any byte of the answer: send it again.
    NotTaken,
    /// It ended in the middle of the answer.
    Broken,
}

/// Reads one response (Content-Length or chunked body); returns its status code and whether the
/// server closes the connection after it (`Connection: close`).
async fn read_response(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(String, bool), Answer> {
    let mut chunk = [0u8; 4096];
    let fail = |buf: &Vec<u8>| if buf.is_empty() { Answer::NotTaken } else { Answer::Broken };
    let head_end = loop {
        if let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(fail(buf)),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap_or("?").to_string();
    let close = head.lines().any(|l| l.strip_prefix("connection:").is_some_and(|v| v.trim() == "close"));
    let body_done = |b: &[u8]| -> Option<usize> {
        if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
            let len: usize = len.trim().parse().ok()?;
            return (b.len() >= head_end + len).then_some(head_end + len);
        }
        if head.contains("transfer-encoding: chunked") {
            return memchr::memmem::find(&b[head_end..], b"0\r\n\r\n").map(|i| head_end + i + 5);
        }
        Some(head_end)
    };
    let end = loop {
        if let Some(end) = body_done(buf) {
            break end;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(Answer::Broken),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    };
    buf.drain(..end);
    Ok((status, close))
}

/// How a schedule went.
pub struct Schedule {
    /// From the first due time until the server took everything ([`Publisher::flush`]).
    pub took: Duration,
    /// The latest any event went out after its due time.
    pub lag_max: Duration,
    /// How late the last event went out: how far behind its schedule the publisher finished.
    pub lag_end: Duration,
}

/// Publishes `count` events numbered from `first` at `rate` per second and waits until the
/// server took them all ([`Publisher::flush`]). Event `first + k` is due at start + k / rate and
/// carries that time as `t`, whenever it is actually sent (a late tick publishes what is due).
pub async fn at_rate(p: &mut Publisher, first: u64, count: u64, rate: f64) -> anyhow::Result<Schedule> {
    if rate.is_nan() || rate <= 0.0 {
        bail!("the rate must be above 0, not {rate}");
    }
    p.stats().reset_lag();
    // The schedule in Unix ns (what the subscribers compare with their receive time), the ticks
    // on the monotonic clock.
    let (start, start_ns) = (Instant::now(), unix_ns());
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0;
    while sent < count {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(count);
        while sent < due {
            let due_ns = start_ns + (sent as f64 * 1e9 / rate) as u64;
            p.publish(first + sent, due_ns).await?;
            sent += 1;
        }
    }
    p.flush().await;
    let s = p.stats();
    let lag_end = s.last.lock().expect("never poisoned").1;
    Ok(Schedule {
        took: start.elapsed(),
        lag_max: Duration::from_nanos(s.lag_max_ns.load(Ordering::Relaxed)),
        lag_end: Duration::from_nanos(lag_end),
    })
}
