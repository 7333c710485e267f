//! The publishing side: through RabbitMQ (sse-gateway's source) or over HTTP POST (nchan's
//! publisher location), at a fixed rate, each payload carrying its sequence `n` and its publish
//! time `t` (Unix ns) so subscribers count losses and latency without a shared map.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A valid `deal.updated` payload (seed catalogue) with the bench fields first.
pub fn payload(n: u64) -> Vec<u8> {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!(
        r#"{{"n":{n},"t":{t},"deal_id":"6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b","changes":{{"status":"issuing"}},"updated_at":"2026-11-28T10:00:00Z","version":5}}"#
    )
    .into_bytes()
}

/// Where events go.
#[allow(clippy::large_enum_variant)] // one per process
pub enum Publisher {
    /// RabbitMQ: a topic exchange the gateway's channel is bound to; publisher confirms on,
    /// mandatory (an unroutable message counts as failed, not as the gateway's loss).
    Amqp { _conn: Connection, channel: Channel, exchange: String, routing_key: String, confirms: Vec<PublisherConfirm>, failed: u64 },
    /// nchan: `POST /pub/{channel}` over several kept-alive connections, event `n` on connection
    /// `n % k`, each one request at a time (nchan answers a publish once it has fanned it out,
    /// so one connection alone would hold the rate down to its fan-out time).
    Http { txs: Vec<mpsc::UnboundedSender<u64>>, sent: u64, done: Arc<AtomicU64>, failed: Arc<AtomicU64> },
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
            failed: 0,
        })
    }

    /// `k` publishing connections to nchan at `addr`.
    pub async fn http(addr: SocketAddr, channel: &str, k: usize) -> anyhow::Result<Publisher> {
        let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut txs = Vec::new();
        for _ in 0..k.max(1) {
            let mut sock = TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
            sock.set_nodelay(true)?;
            let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
            let (path, done, failed) = (format!("/pub/{channel}"), done.clone(), failed.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(n) = rx.recv().await {
                    let body = payload(n);
                    let head = format!(
                        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let ok = match sock.write_all(&[head.as_bytes(), &body].concat()).await {
                        Ok(()) => read_response(&mut sock, &mut buf).await.is_ok_and(|s| s.starts_with('2')),
                        Err(_) => false,
                    };
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
            txs.push(tx);
        }
        Ok(Publisher::Http { txs, sent: 0, done, failed })
    }

    /// Publishes event `n` now (nchan: hands it to its connection, which sends it when free).
    pub async fn publish(&mut self, n: u64) -> anyhow::Result<()> {
        match self {
            Publisher::Amqp { channel, exchange, routing_key, confirms, .. } => {
                let body = payload(n);
                let props = BasicProperties::default().with_type("deal.updated".into());
                let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
                let c = channel
                    .basic_publish(exchange.as_str().into(), routing_key.as_str().into(), opts, &body, props)
                    .await?;
                confirms.push(c);
            }
            Publisher::Http { txs, sent, .. } => {
                let k = txs.len() as u64;
                txs[(n % k) as usize].send(n).context("a publishing connection ended")?;
                *sent += 1;
            }
        }
        Ok(())
    }

    /// Waits until the server took everything published so far (confirms; nchan's answers).
    pub async fn flush(&mut self) {
        match self {
            Publisher::Amqp { confirms, failed, .. } => {
                for c in confirms.drain(..) {
                    if !matches!(c.await, Ok(Confirmation::Ack(None))) {
                        *failed += 1;
                    }
                }
            }
            Publisher::Http { sent, done, .. } => {
                while done.load(Ordering::Relaxed) < *sent {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    /// Publishes that failed so far (not confirmed, returned as unroutable, refused by nchan);
    /// call after [`Publisher::flush`].
    pub fn failed(&self) -> u64 {
        match self {
            Publisher::Amqp { failed, .. } => *failed,
            Publisher::Http { failed, .. } => failed.load(Ordering::Relaxed),
        }
    }
}

/// Reads one response (Content-Length or chunked body) and returns its status code.
async fn read_response(sock: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<String> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        let k = sock.read(&mut chunk).await?;
        if k == 0 {
            bail!("publisher connection closed");
        }
        buf.extend_from_slice(&chunk[..k]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap_or("?").to_string();
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
        let k = sock.read(&mut chunk).await?;
        if k == 0 {
            bail!("publisher connection closed");
        }
        buf.extend_from_slice(&chunk[..k]);
    };
    buf.drain(..end);
    Ok(status)
}

/// Publishes `count` events numbered from `first` at `rate` per second (on schedule: a late
/// tick publishes what is due) and waits until the server took them all ([`Publisher::flush`]).
/// Returns the time it took.
pub async fn at_rate(p: &mut Publisher, first: u64, count: u64, rate: f64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0;
    while sent < count {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(count);
        while sent < due {
            p.publish(first + sent).await?;
            sent += 1;
        }
    }
    p.flush().await;
    Ok(start.elapsed())
}
