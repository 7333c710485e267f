//! Shards: each a thread with a current-thread tokio runtime that owns one core `Gateway` and the
//! sockets of its streams (STYLE.md point 8). Everything else talks to a shard through
//! [`Shards`], which sends [`Command`]s over bounded channels (awaiting = backpressure).
//!
//! Inside a shard, the loop waits for the first of: a command, the core's deadline. It applies
//! one input, then drains `poll_output()`: `Transmit(id)` wakes that stream's writer task,
//! `Close(id, why)` marks it closing and wakes it. Each writer task waits for its wake or for its
//! socket to become readable (EOF or error = the client left), writes what `take_output` returns
//! with vectored writes, and on close flushes the rest (bounded), shuts the socket down and calls
//! `on_closed`. The `Gateway` sits in a `RefCell` borrowed only between awaits.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice};
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use sse_gateway_core::{
    shard_of, ChannelId, CloseReason, Event, Gateway, Metrics, Output, Settings, StreamId, StreamRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::WriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

/// Time a closing stream (and a refused one) gets to take its last bytes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Commands queued per shard before senders wait.
const QUEUE: usize = 1024;
/// Buffers handed to one `writev`.
const IOV_MAX: usize = 64;

/// Seconds since the Unix epoch (token `exp` is placed against it).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a shard is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Open a stream on this accepted, routed connection.
    Open(std::net::TcpStream, StreamRequest),
    /// An event for every stream of its channel.
    Event(Event),
    /// The channel's source is unreachable (D8).
    SourceDown(ChannelId),
    /// The channel's source is back.
    SourceUp(ChannelId),
    /// Stop (D12): close every stream, exit once they are gone or the drain time passed.
    Shutdown,
}

/// The handle to every shard, plus the process's view of its sources (for `/readyz`).
#[derive(Clone, Debug)]
pub struct Shards {
    txs: Arc<[mpsc::Sender<Command>]>,
    /// Per channel: [`UNREACHED`], [`UP`] or [`DOWN`].
    sources: Arc<[AtomicU8]>,
}

const UNREACHED: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

impl Shards {
    /// Number of shards.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Hands a routed stream to its user's shard.
    pub async fn open(&self, sock: std::net::TcpStream, req: StreamRequest) {
        let i = shard_of(&req.identity.user, self.len());
        if self.txs[i].send(Command::Open(sock, req)).await.is_err() {
            debug!("shard {i} is gone; connection dropped");
        }
    }

    /// Gives every shard a clone of `ev` (one `Arc`), waiting while a shard's queue is full.
    pub async fn event(&self, ev: &Event) {
        for tx in self.txs.iter() {
            let _ = tx.send(Command::Event(ev.clone())).await;
        }
    }

    /// Records a source's state and tells every shard when it changed (a source that fails
    /// again while down, during reconnects, is no news).
    pub async fn source(&self, ch: ChannelId, up: bool) {
        let new = if up { UP } else { DOWN };
        if self.sources[ch.index()].swap(new, Ordering::Relaxed) == new {
            return;
        }
        for tx in self.txs.iter() {
            let _ = tx.send(if up { Command::SourceUp(ch) } else { Command::SourceDown(ch) }).await;
        }
    }

    /// Names of the channels whose source is not up now (never reached yet, or lost): `/readyz`
    /// is ready when this is empty.
    pub fn down<'a>(&self, settings: &'a Settings) -> Vec<&'a str> {
        settings
            .channels
            .iter()
            .zip(self.sources.iter())
            .filter(|(_, s)| s.load(Ordering::Relaxed) != UP)
            .map(|(c, _)| c.name.as_str())
            .collect()
    }

    /// Asks every shard to drain and stop.
    pub async fn shutdown(&self) {
        for tx in self.txs.iter() {
            let _ = tx.send(Command::Shutdown).await;
        }
    }
}

/// Starts `n` shard threads splitting `max_streams` between them.
pub fn spawn(
    n: usize,
    settings: &Arc<Settings>,
    metrics: &Arc<Metrics>,
    max_streams: usize,
) -> io::Result<(Shards, Vec<std::thread::JoinHandle<()>>)> {
    let mut txs = Vec::with_capacity(n);
    let mut threads = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = mpsc::channel(QUEUE);
        txs.push(tx);
        // The remainder goes to the first shards, so the shards hold max_streams in total.
        let cap = max_streams / n + usize::from(i < max_streams % n);
        let seed = getrandom::u64().unwrap_or(0x5eed) ^ i as u64;
        let gw = Gateway::new(settings.clone(), metrics.clone(), cap, seed);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (settings, metrics) = (settings.clone(), metrics.clone());
        let thread = std::thread::Builder::new().name(format!("shard-{i}")).spawn(move || {
            let local = tokio::task::LocalSet::new();
            let shard = Rc::new(Shard { gw: RefCell::new(gw), conns: RefCell::new(Vec::new()), settings, metrics });
            local.block_on(&rt, shard.run(rx));
        })?;
        threads.push(thread);
    }
    let sources = settings.channels.iter().map(|_| AtomicU8::new(UNREACHED)).collect();
    Ok((Shards { txs: txs.into(), sources }, threads))
}

/// A stream's link between the shard loop and its writer task.
struct Conn {
    id: StreamId,
    wake: Notify,
    closing: Cell<Option<CloseReason>>,
}

struct Shard {
    gw: RefCell<Gateway>,
    /// Writer links by `StreamId::index` (the full id is checked on use).
    conns: RefCell<Vec<Option<Rc<Conn>>>>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
}

impl Shard {
    async fn run(self: Rc<Self>, mut rx: mpsc::Receiver<Command>) {
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let mut drain_until: Option<Instant> = None;
        loop {
            let next = self.gw.borrow().poll_timeout().map(|(at, _)| at);
            if next != armed {
                if let Some(at) = next {
                    timer.as_mut().reset(at.into());
                }
                armed = next;
            }
            let stop = drain_until.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                cmd = rx.recv(), if drain_until.is_none() => match cmd {
                    Some(cmd) => self.apply(cmd, &mut drain_until),
                    None => self.apply(Command::Shutdown, &mut drain_until),
                },
                () = &mut timer, if armed.is_some() => {
                    self.gw.borrow_mut().handle_timeout(Instant::now());
                    // Re-arm from the core's answer, even if it is the same instant.
                    armed = None;
                }
                () = tokio::time::sleep_until(stop.into()), if drain_until.is_some() => {
                    let left = self.gw.borrow().slots_in_use();
                    warn!(streams = left, "shutdown drain time passed; closing the remaining streams");
                    return;
                }
                // While draining, writers finish on their own; look again every 50 ms.
                () = tokio::time::sleep(Duration::from_millis(50)), if drain_until.is_some() => {}
            }
            self.drain();
            if drain_until.is_some() && self.gw.borrow().slots_in_use() == 0 {
                return;
            }
        }
    }

    fn apply(self: &Rc<Self>, cmd: Command, drain_until: &mut Option<Instant>) {
        match cmd {
            Command::Open(sock, req) => self.open(sock, req),
            Command::Event(ev) => self.gw.borrow_mut().handle_event(&ev),
            Command::SourceDown(ch) => self.gw.borrow_mut().source_down(ch, Instant::now()),
            Command::SourceUp(ch) => self.gw.borrow_mut().source_up(ch),
            Command::Shutdown => {
                self.gw.borrow_mut().shutdown();
                *drain_until = Some(Instant::now() + self.settings.config.server.shutdown_drain);
            }
        }
    }

    fn conn(&self, id: StreamId) -> Option<Rc<Conn>> {
        self.conns.borrow().get(id.index()).and_then(|c| c.clone()).filter(|c| c.id == id)
    }

    fn drain(&self) {
        loop {
            let out = self.gw.borrow_mut().poll_output();
            match out {
                None => return,
                Some(Output::Transmit(id)) => {
                    if let Some(c) = self.conn(id) {
                        c.wake.notify_one();
                    }
                }
                Some(Output::Close(id, why)) => match self.conn(id) {
                    Some(c) => {
                        c.closing.set(Some(why));
                        c.wake.notify_one();
                    }
                    None => self.gw.borrow_mut().on_closed(id),
                },
                // Only asked for channels marked with `set_history`, which this frontend never
                // calls yet; answer "incomplete" so the stream gets history_gap and goes live.
                Some(Output::Backfill { stream, .. }) => self.gw.borrow_mut().backfill_done(stream, false),
            }
        }
    }

    fn open(self: &Rc<Self>, sock: std::net::TcpStream, req: StreamRequest) {
        let sock = match TcpStream::from_std(sock) {
            Ok(s) => s,
            Err(e) => return debug!(error = %e, "cannot adopt a connection"),
        };
        let log = StreamLog {
            user: req.identity.user.clone(),
            channel: req.channel,
            version: req.version,
            opened: Instant::now(),
        };
        let result = self.gw.borrow_mut().open(req, log.opened, unix_now());
        let metrics_status = match &result {
            Ok(_) => 200,
            Err(resp) => resp.status,
        };
        self.metrics.response(metrics_status);
        match result {
            Ok(id) => {
                let conn = Rc::new(Conn { id, wake: Notify::new(), closing: Cell::new(None) });
                {
                    let mut conns = self.conns.borrow_mut();
                    if conns.len() <= id.index() {
                        conns.resize(id.index() + 1, None);
                    }
                    conns[id.index()] = Some(conn.clone());
                }
                let channel = self.settings.channel(log.channel).name.clone();
                info!(stream = %id, user = %log.user, channel = %channel, version = log.version, "stream opened");
                tokio::task::spawn_local(self.clone().writer(conn, sock, log, channel));
            }
            Err(resp) => {
                info!(user = %log.user, status = resp.status, "stream refused");
                tokio::task::spawn_local(async move {
                    let mut sock = sock;
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
                        sock.write_all(&resp.bytes).await?;
                        sock.shutdown().await
                    })
                    .await;
                });
            }
        }
    }

    /// Writes one stream until it closes, then releases it.
    async fn writer(self: Rc<Self>, conn: Rc<Conn>, mut sock: TcpStream, log: StreamLog, channel: String) {
        let (mut rd, mut wr) = sock.split();
        let mut out: Vec<Bytes> = Vec::new();
        let mut scratch = [0u8; 256];
        let why = loop {
            self.gw.borrow_mut().take_output(conn.id, &mut out);
            // A resume continues inside take_output and may queue outputs of its own.
            self.drain();
            if !out.is_empty() && write_out(&mut wr, &mut out, &conn).await.is_err() {
                break conn.closing.get().unwrap_or(CloseReason::ClientGone);
            }
            if let Some(why) = conn.closing.get() {
                self.gw.borrow_mut().take_output(conn.id, &mut out);
                let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
                    write_all_vectored(&mut wr, &mut out).await?;
                    wr.shutdown().await
                })
                .await;
                break why;
            }
            tokio::select! {
                () = conn.wake.notified() => {}
                r = rd.read(&mut scratch) => match r {
                    Ok(0) | Err(_) => break CloseReason::ClientGone,
                    Ok(_) => {} // A client has nothing to say on a stream; ignore it.
                },
            }
        };
        drop(sock);
        self.gw.borrow_mut().on_closed(conn.id);
        if let Some(slot) = self.conns.borrow_mut().get_mut(conn.id.index()) {
            if slot.as_ref().is_some_and(|c| c.id == conn.id) {
                *slot = None;
            }
        }
        let secs = log.opened.elapsed().as_secs_f64();
        info!(stream = %conn.id, user = %log.user, channel = %channel, version = log.version,
              reason = why.label(), duration_s = format_args!("{secs:.1}"), "stream closed");
    }
}

/// What is logged about a stream (never its token).
struct StreamLog {
    user: String,
    channel: ChannelId,
    version: u32,
    opened: Instant,
}

/// Writes `out`; if the stream is told to close meanwhile, gives the rest [`WRITE_TIMEOUT`].
async fn write_out(wr: &mut WriteHalf<'_>, out: &mut Vec<Bytes>, conn: &Conn) -> io::Result<()> {
    let write = write_all_vectored(wr, out);
    tokio::pin!(write);
    let mut deadline = conn.closing.get().map(|_| Instant::now() + WRITE_TIMEOUT);
    loop {
        let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            r = &mut write => return r,
            // A wake here is either more output (picked up after this write) or a close.
            () = conn.wake.notified(), if deadline.is_none() => {
                if conn.closing.get().is_some() {
                    deadline = Some(Instant::now() + WRITE_TIMEOUT);
                }
            }
            () = tokio::time::sleep_until(until.into()), if deadline.is_some() => {
                return Err(io::ErrorKind::TimedOut.into());
            }
        }
    }
}

/// Writes every buffer with `writev`, handling partial writes; leaves `bufs` empty on success.
async fn write_all_vectored(wr: &mut WriteHalf<'_>, bufs: &mut Vec<Bytes>) -> io::Result<()> {
    let mut start = 0;
    loop {
        while bufs.get(start).is_some_and(Bytes::is_empty) {
            start += 1;
        }
        if start >= bufs.len() {
            bufs.clear();
            return Ok(());
        }
        let mut n = {
            let mut iov = [IoSlice::new(&[]); IOV_MAX];
            let k = bufs[start..].len().min(IOV_MAX);
            for (slot, b) in iov.iter_mut().zip(&bufs[start..start + k]) {
                *slot = IoSlice::new(b);
            }
            wr.write_vectored(&iov[..k]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let b = &mut bufs[start];
            if n >= b.len() {
                n -= b.len();
                start += 1;
            } else {
                b.advance(n);
                n = 0;
            }
        }
    }
}
