//! The publishing side: through RabbitMQ (sse-gateway's source) or over HTTP POST (nchan's
//! publisher location), at a fixed rate, each payload carrying its sequence `n` and its publish
//! time `t` (Unix ns) so subscribers count losses and latency without a shared map.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A valid `deal.updated` payload (seed catalogue) with the bench fields first.
pub fn payload(n: u64) -> Vec<u8> {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!(
        r#"{{"n":{n},"t":{t},"deal_id":"6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b","changes":{{"status":"issuing"}},"updated_at":"2026-11-28T10:00:00Z","version":5}}"#
    )
    .into_bytes()
}

/// Where events go.
pub enum Publisher {
    /// RabbitMQ: a topic exchange the gateway's channel is bound to; publisher confirms on,
    /// mandatory (an unroutable message counts as failed, not as the gateway's loss).
    Amqp { _conn: Connection, channel: Channel, exchange: String, routing_key: String, confirms: Vec<PublisherConfirm> },
    /// nchan: `POST /pub/{channel}` on a kept-alive connection, one request at a time.
    Http { sock: TcpStream, addr: SocketAddr, path: String, buf: Vec<u8>, failed: u64 },
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
        })
    }

    pub async fn http(addr: SocketAddr, channel: &str) -> anyhow::Result<Publisher> {
        let sock = TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
        sock.set_nodelay(true)?;
        Ok(Publisher::Http { sock, addr, path: format!("/pub/{channel}"), buf: Vec::new(), failed: 0 })
    }

    /// Publishes event `n` now.
    pub async fn publish(&mut self, n: u64) -> anyhow::Result<()> {
        let body = payload(n);
        match self {
            Publisher::Amqp { channel, exchange, routing_key, confirms, .. } => {
                let props = BasicProperties::default().with_type("deal.updated".into());
                let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
                let c = channel
                    .basic_publish(exchange.as_str().into(), routing_key.as_str().into(), opts, &body, props)
                    .await?;
                confirms.push(c);
            }
            Publisher::Http { sock, addr, path, buf, failed } => {
                let head = format!(
                    "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                sock.write_all(&[head.as_bytes(), &body].concat()).await?;
                if !read_response(sock, buf).await?.starts_with('2') {
                    *failed += 1;
                }
            }
        }
        Ok(())
    }

    /// Waits for every confirm; returns how many publishes failed (not confirmed, or returned
    /// as unroutable, or refused by nchan).
    pub async fn settle(&mut self) -> u64 {
        match self {
            Publisher::Amqp { confirms, .. } => {
                let mut failed = 0;
                for c in confirms.drain(..) {
                    if !matches!(c.await, Ok(Confirmation::Ack(None))) {
                        failed += 1;
                    }
                }
                failed
            }
            Publisher::Http { failed, .. } => std::mem::take(failed),
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
/// tick publishes what is due). Returns the time it took.
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
    Ok(start.elapsed())
}
