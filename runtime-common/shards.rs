//! Shards: each a thread with a single-threaded executor that owns one core `Gateway` and the
//! sockets of its streams (STYLE.md point 8; the loop itself is in [`super::shard`]). Everything
//! else talks to a shard through [`Shards`], which sends [`Command`]s over bounded channels
//! (awaiting a full one = backpressure).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use async_channel::Sender;
use sse_gateway_core::{shard_of, ChannelId, Event, Gateway, Metrics, Settings, StreamRequest};
use tracing::error;

use super::amqp::stream_log::LogReader;
use crate::driver::Executor;

/// Commands queued per shard before senders wait.
const QUEUE: usize = 1024;

/// What a shard is asked to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Open a stream on this accepted, routed connection.
    Open(std::net::TcpStream, StreamRequest),
    /// An event for every stream of its channel.
    Event(Event),
    /// The channel's source is unreachable (D8).
    SourceDown(ChannelId),
    /// The channel's source is back.
    SourceUp(ChannelId),
    /// Streams read back from RabbitMQ stream queues: mark those channels (`set_history`) and
    /// answer `Output::Backfill` with this reader.
    History(Arc<LogReader>),
    /// The channel's stream lost events this process never received (`Gateway::log_gap`).
    LogGap(ChannelId),
    /// The channel's source starts reading recent history for the buffers (`Gateway::prime_start`).
    PrimeStart(ChannelId),
    /// One event of that history (`Gateway::prime`).
    Prime(Event),
    /// The history read ended at this log position (`Gateway::prime_end`).
    PrimeEnd(ChannelId, Option<u64>),
    /// The live source's first delivery did not follow that position (`Gateway::prime_gap`).
    PrimeGap(ChannelId),
    /// The source reads again from before where the history ended (`Gateway::prime_over`).
    PrimeOver(ChannelId),
    /// Stop (D12): close every stream, exit once they are gone or the drain time passed, and by
    /// this instant at the latest (set at the signal: a shard that reads this behind a backlog
    /// of events does not drain past the process's own bound).
    Shutdown(Instant),
}

/// The handle to every shard, plus the process's view of its sources (for `/readyz`).
#[derive(Clone, Debug)]
pub(crate) struct Shards {
    txs: Arc<[Sender<Command>]>,
    /// Per channel: [`UNREACHED`], [`UP`] or [`DOWN`].
    sources: Arc<[AtomicU8]>,
    /// Per channel: its source has been up at some time since the process started.
    ever_up: Arc<[AtomicBool]>,
    /// `sse_gateway_source_up` is set here, with `/readyz`'s state: one writer, at once (each
    /// shard reads the change later, behind what its queue holds).
    metrics: Arc<Metrics>,
}

const UNREACHED: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

impl Shards {
    /// Hands a routed stream to its user's shard; gives it back when the shard takes no more
    /// (it is shutting down).
    pub(crate) async fn open(&self, sock: std::net::TcpStream, req: StreamRequest) -> Result<(), (std::net::TcpStream, StreamRequest)> {
        let i = shard_of(&req.identity.user, self.txs.len());
        match self.txs[i].send(Command::Open(sock, req)).await {
            Err(async_channel::SendError(Command::Open(sock, req))) => Err((sock, req)),
            _ => Ok(()), // the command sent is the one that comes back
        }
    }

    /// Gives every shard a clone of `ev` (one `Arc`), waiting while a shard's queue is full.
    /// `false` if a shard had ended its queue (a shutdown): the event did not reach its streams,
    /// though it may have reached other shards' (those that took it before their `Shutdown`).
    #[must_use]
    pub(crate) async fn event(&self, ev: &Event) -> bool {
        self.broadcast(|| Command::Event(ev.clone())).await
    }

    /// Records a source's state and tells every shard when it changed (a source that fails
    /// again while down, during reconnects, is no news); returns whether it changed.
    pub(crate) async fn source(&self, ch: ChannelId, up: bool) -> bool {
        let new = if up { UP } else { DOWN };
        if up {
            self.ever_up[ch.index()].store(true, Ordering::Relaxed);
        }
        if self.sources[ch.index()].swap(new, Ordering::Relaxed) == new {
            return false;
        }
        self.metrics.source_state(ch, up);
        self.broadcast(|| if up { Command::SourceUp(ch) } else { Command::SourceDown(ch) }).await;
        true
    }

    /// Hands every shard the stream reader. Called once at start, before any stream can open,
    /// while the shards' queues are still empty (so it never waits).
    pub(crate) fn history(&self, reader: Arc<LogReader>) {
        for tx in self.txs.iter() {
            if tx.try_send(Command::History(reader.clone())).is_err() {
                error!("a shard did not take the stream reader: resumes past its buffer get history_gap");
            }
        }
    }

    /// Tells every shard that the channel's source lost events this process never received (a
    /// stream's retention, a classic queue gone).
    pub(crate) async fn log_gap(&self, ch: ChannelId) {
        self.broadcast(|| Command::LogGap(ch)).await;
    }

    /// Hands every shard a command (made for each), waiting while a shard's queue is full;
    /// `false` if a shard had ended its queue (a shutdown) and did not take it.
    pub(crate) async fn broadcast(&self, cmd: impl Fn() -> Command) -> bool {
        let mut all = true;
        for tx in self.txs.iter() {
            all &= tx.send(cmd()).await.is_ok();
        }
        all
    }

    /// Whether the channel's source is up now.
    pub(crate) fn is_up(&self, ch: ChannelId) -> bool {
        self.sources.get(ch.index()).is_some_and(|s| s.load(Ordering::Relaxed) == UP)
    }

    /// Whether the channel's source has been up at some time since the process started (it
    /// may be down now). A source whose first connects were refused, or slow enough to be
    /// reported unavailable, has not.
    pub(crate) fn ever_up(&self, ch: ChannelId) -> bool {
        self.ever_up.get(ch.index()).is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// Names of the channels whose source is not up now (never reached yet, or lost): `/readyz`
    /// is ready when this is empty.
    pub(crate) fn down<'a>(&self, settings: &'a Settings) -> Vec<&'a str> {
        settings
            .channels
            .iter()
            .zip(self.sources.iter())
            .filter(|(_, s)| s.load(Ordering::Relaxed) != UP)
            .map(|(c, _)| c.name.as_str())
            .collect()
    }

    /// Asks every shard to drain and stop, by `until` at the latest.
    pub(crate) async fn shutdown(&self, until: Instant) {
        self.broadcast(|| Command::Shutdown(until)).await;
    }
}

/// Starts `n` shard threads (`shard-0`...) splitting `max_streams` between them.
pub(crate) fn spawn(
    n: usize,
    settings: &Arc<Settings>,
    metrics: &Arc<Metrics>,
    max_streams: usize,
) -> io::Result<(Shards, Vec<JoinHandle<()>>)> {
    let mut txs = Vec::with_capacity(n);
    let mut threads = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = async_channel::bounded(QUEUE);
        txs.push(tx);
        // The remainder goes to the first shards, so the shards hold max_streams in total.
        let cap = max_streams / n + usize::from(i < max_streams % n);
        let seed = getrandom::u64().unwrap_or(0x5eed) ^ i as u64;
        let gw = Gateway::new(settings.clone(), metrics.clone(), cap, seed);
        let executor = Executor::new()?;
        let (settings, metrics) = (settings.clone(), metrics.clone());
        let thread = std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || executor.block_on(super::shard::run(gw, rx, settings, metrics)))?;
        threads.push(thread);
    }
    let sources = settings.channels.iter().map(|_| AtomicU8::new(UNREACHED)).collect();
    let ever_up = settings.channels.iter().map(|_| AtomicBool::new(false)).collect();
    Ok((Shards { txs: txs.into(), sources, ever_up, metrics: metrics.clone() }, threads))
}
