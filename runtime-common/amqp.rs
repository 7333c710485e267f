//! RabbitMQ sources (D4, D6, D8): one connection, one AMQP channel and consumer per gateway
//! channel.
//!
//! Each source runs its own loop: get a channel on the shared connection (connecting if needed),
//! declare its topology, consume with manual acks; each delivery is mapped to an
//! `UpstreamMessage`, validated by the channel's `Ingest`, sent to every shard, then acked (a
//! dropped message is logged once and acked too: nothing is redelivered in a loop). Acks are
//! sent as one `multiple` ack for what was handled, once no delivery waits or after
//! [`ACK_BATCH`] (each single ack was a round of thread wake-ups through lapin's I/O loop). When the
//! connection, the channel or the consumer ends, the source is down (the shards warn its
//! streams), and it retries with capped exponential backoff and jitter.
//!
//! A channel with `stream = true` reads a RabbitMQ stream queue instead ([`stream_log`] has the
//! details): its event ids are `<epoch>-<offset>`, the same on every instance and after restarts;
//! it starts at what is written next (reading the stream's last chunk apart, into the shards'
//! buffers only), resumes after a loss from the last offset it saw (and
//! tells the shards when the stream no longer held it), and resumes older than the shards'
//! buffers are read back from the stream on a connection of their own.
//!
//! Runtime-neutral: lapin connects with the `async_rs` runtime handle the binary passes in
//! (`crate::driver::amqp_runtime()`), the shared connection sits behind an `async-lock` mutex,
//! and the sources run as tasks on the calling thread's executor.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_lock::Mutex;
use futures_lite::{future, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use async_rs::traits::Reactor;
use lapin::tcp::{AsyncTcpStream, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use sse_gateway_core::config::{BrokerConfig, SourceSettings};
use sse_gateway_core::{log_continues, misnamed_header, log_resumes, logs_meet, process_epoch, Backoff, ChannelId, HeaderValue, Ingest, Metrics, Settings, UpstreamMessage};
use tracing::{debug, error, info, warn};

use super::shards::{Command, Shards};
use super::{sleep, until};
use crate::driver::{spawn, AmqpRuntime};

pub(crate) mod stream_log;
mod turns;

use stream_log::{LogReader, StartAt};

/// Time to establish the connection before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A source whose consumer is not running this long after it began to set it up (connect if
/// need be, open its channel, declare, bind, qos, consume) is reported down while the setup goes
/// on: a broker that accepts connections, or completes them, and then answers nothing is an
/// outage for the streams (D8: at once) long before a call times out ([`CONNECT_TIMEOUT`],
/// [`CALL_TIMEOUT`]).
const SLOW_SETUP: Duration = Duration::from_secs(2);
/// Deliveries handled before their ack is sent even if more are waiting (under the default
/// prefetch, so the broker does not stop delivering for want of acks; with a prefetch below it,
/// the ack sent before each wait frees the window: a round trip per `prefetch` messages).
const ACK_BATCH: u32 = 32;
/// How long an ack may take to be handed to the connection. An ack queued as the connection
/// dies may never be answered by lapin (its promise stays pending): past this, the link is
/// taken for lost, so the source goes down (and its streams are warned) instead of hanging.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// How long any other call to the broker (a channel, a declare, a bind, qos, consume) may take.
/// As with acks, lapin may leave a call made as the connection dies unsettled: past this the
/// attempt fails (the source goes down and retries) instead of hanging.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the history read at a first start waits for its first message (a stream that holds
/// any sends its last chunk at once; an empty one sends nothing), then for each next one (the
/// chunk comes in one go). Ending early only leaves the buffers colder.
const PRIME_FIRST: Duration = Duration::from_secs(1);
const PRIME_IDLE: Duration = Duration::from_millis(250);

/// At most this long for the history read at a first start, in all.
const PRIME_MAX: Duration = Duration::from_secs(5);

/// A stream consumer resumed at an offset the stream holds is sent the message there at once: one
/// that has sent nothing this long after it started is on a stream that does not reach that
/// offset (deleted and made again, shorter): it is said once, and the source stays down.
const RESUME_WAIT: Duration = Duration::from_secs(5);

/// Why a source whose consumer's channel lapin no longer reports connected went down.
const NOT_CONNECTED: &str = "the channel is no longer connected";

/// What a consumer yields.
type Next = Option<Result<Delivery, lapin::Error>>;

/// Closes `chan` in a task of its own (the broker may take its time to answer), cancelling
/// `consumer` first ([`cancel_then_close`]).
fn close_later(chan: Channel, consumer: Option<Consumer>, why: &'static str) {
    spawn(async move { cancel_then_close(&chan, consumer.as_ref(), why).await });
}

/// Cancels `consumer`, then closes `chan`, each within [`CALL_TIMEOUT`]. Dropped while active, a
/// consumer has lapin send its basic.cancel later, which could reach the broker after the
/// channel's close, and a method on a closed channel is a connection error (the live source on
/// that connection went down with it).
pub(crate) async fn cancel_then_close(chan: &Channel, consumer: Option<&Consumer>, why: &str) {
    if let Some(consumer) = consumer {
        let _ = answered(chan.basic_cancel(consumer.tag(), lapin::options::BasicCancelOptions::default())).await;
    }
    let _ = answered(chan.close(200, why.into())).await;
}

/// What the history read at a first start found (`Source::prime_history`).
#[derive(Default)]
struct HistoryRead {
    /// The last messages read (as many as the buffer holds), in log order.
    msgs: VecDeque<UpstreamMessage>,
    /// The position of the last message read.
    through: Option<u64>,
    /// Where the live consumer began: the position of its first delivery, if one came.
    live_from: Option<u64>,
    /// That first delivery (or the live consumer's error), and when it came.
    held: Option<(Next, Instant)>,
}

/// `call`'s own result, or an error when the broker did not answer within [`CALL_TIMEOUT`].
pub(crate) async fn answered<T>(call: impl Future<Output = Result<T, lapin::Error>>) -> Result<Result<T, lapin::Error>, String> {
    until(Instant::now() + CALL_TIMEOUT, call).await.ok_or_else(|| format!("the broker did not answer within {CALL_TIMEOUT:?}"))
}

/// Acks every delivery of the channel up to `acker`'s (one `multiple` ack), within
/// [`ACK_TIMEOUT`].
async fn ack_through(acker: &lapin::Acker) -> Result<(), String> {
    match until(Instant::now() + ACK_TIMEOUT, acker.ack(BasicAckOptions { multiple: true })).await {
        Some(Ok(true)) => Ok(()),
        Some(Ok(false)) => Err("basic.ack not sent: the channel failed".into()),
        Some(Err(e)) => Err(format!("basic.ack: {e}")),
        None => Err(format!("basic.ack not sent within {ACK_TIMEOUT:?}: the connection is gone")),
    }
}

/// Acks owed on one consumer's channel: the last handled delivery's acker and how many it
/// stands for. Deliveries on a channel are handled in order, so one `multiple` ack of the last
/// covers them all. Unsent acks are lost with the channel, and the broker redelivers those
/// messages to the next consumer, as it would any unacked message. Used by the live sources and
/// by the stream read-backs.
pub(crate) struct Acks {
    last: Option<lapin::Acker>,
    owed: u32,
    /// Owed acks sent at once even while more deliveries wait.
    batch: u32,
}

impl Acks {
    pub(crate) fn new(batch: u32) -> Acks {
        Acks { last: None, owed: 0, batch }
    }

    /// Records a handled delivery; sends the ack once `batch` are owed.
    pub(crate) async fn handled(&mut self, acker: lapin::Acker) -> Result<(), String> {
        self.last = Some(acker);
        self.owed += 1;
        if self.owed >= self.batch {
            self.flush().await?;
        }
        Ok(())
    }

    /// Acks every delivery handled so far, in one frame.
    pub(crate) async fn flush(&mut self) -> Result<(), String> {
        self.owed = 0;
        match self.last.take() {
            Some(acker) => ack_through(&acker).await,
            None => Ok(()),
        }
    }
}

/// A shared connection, (re)established by whichever user needs it first.
struct Link {
    uri: String,
    runtime: AmqpRuntime,
    /// The connection's name in the broker's management views.
    name: &'static str,
    conn: Mutex<LinkState>,
    /// Connection attempts ended so far (read before taking the lock: see [`Link::channel`]).
    attempts: AtomicU64,
    /// Connection attempts that failed so far (not a channel refused on a connection).
    connects_failed: AtomicU64,
}

#[derive(Default)]
struct LinkState {
    /// Shared with queue checks in progress ([`Link::channel_if_connected`]).
    conn: Option<Arc<Connection>>,
    /// Why the last attempt failed, if it did.
    failed: Option<String>,
}

impl Link {
    fn new(uri: String, runtime: AmqpRuntime, name: &'static str) -> Link {
        Link { uri, runtime, name, conn: Mutex::new(LinkState::default()), attempts: AtomicU64::new(0), connects_failed: AtomicU64::new(0) }
    }

    /// A new channel on the connection, only if there is one and no source is using the link
    /// right now (`None`): the queue check's, which never connects, never waits behind a
    /// connect, never holds the link while the broker answers, and never takes the connection
    /// for lost (its consumers notice that themselves).
    async fn channel_if_connected(&self) -> Result<Option<Channel>, String> {
        let conn = {
            let Some(state) = self.conn.try_lock() else { return Ok(None) };
            let Some(conn) = state.conn.clone().filter(|c| c.status().connected()) else { return Ok(None) };
            conn
        };
        Ok(Some(answered(conn.create_channel()).await?.map_err(|e| e.to_string())?))
    }

    /// A new channel on the connection, connecting first when there is none. Users that waited
    /// while another one's attempt failed get that failure at once rather than each trying in
    /// turn: with a broker that does not answer, every channel's source reports its outage
    /// after one connect timeout, not one timeout per channel (D8: warn at once).
    async fn channel(&self) -> Result<Channel, String> {
        let seen = self.attempts.load(Ordering::Acquire);
        let mut state = self.conn.lock().await;
        if let Some(c) = state.conn.as_ref().filter(|c| c.status().connected()) {
            return match answered(c.create_channel()).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(why) => {
                    // The connection is taken for lost: an attempt that failed, so the users
                    // that waited meanwhile get this failure at once, not one timeout each.
                    self.attempts.fetch_add(1, Ordering::AcqRel);
                    Err(state.fail(why))
                }
            };
        }
        if self.attempts.load(Ordering::Acquire) != seen {
            if let Some(e) = &state.failed {
                return Err(e.clone()); // an attempt failed while this one waited for the lock
            }
        }
        let props = ConnectionProperties::default().with_connection_name(self.name.into());
        let uri: AMQPUri = match self.uri.parse() {
            Ok(uri) => uri,
            Err(e) => {
                self.connects_failed.fetch_add(1, Ordering::AcqRel);
                return Err(state.fail(format!("cannot connect to the broker: {e}")));
            }
        };
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        // Until the attempt is over: given up (timed out, or this future dropped), its TCP
        // connect ends and its socket is shut down (`Keep`).
        let mut keep = Keep::new();
        let connect = Connection::connector(uri, self.runtime.clone(), connect_keeping(keep.slot.clone(), keep.over.clone()), props);
        let attempt = until(deadline, connect).await;
        let connected = matches!(attempt, Some(Ok(_)));
        keep.succeeded = connected;
        drop(keep);
        self.attempts.fetch_add(1, Ordering::AcqRel);
        if !connected {
            self.connects_failed.fetch_add(1, Ordering::AcqRel);
        }
        let c = match attempt {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(state.fail(format!("cannot connect to the broker: {e}"))),
            None => return Err(state.fail("cannot connect to the broker: timed out".into())),
        };
        info!(connection = self.name, "connected to the broker");
        let ch = answered(c.create_channel()).await.and_then(|r| r.map_err(|e| e.to_string()));
        *state = LinkState { conn: Some(Arc::new(c)), failed: None };
        ch
    }
}

/// The socket of a connect in progress, as far as [`connect_keeping`] got.
enum Kept {
    /// Not connected yet.
    Waiting,
    /// A duplicate of the connected socket (closing it alone leaves the connection be).
    Socket(socket2::Socket),
    /// The attempt is over: a socket connected from now on is not used.
    Over,
}

/// Ends a connect attempt when dropped: a TCP connect still in progress ends (`over` closes),
/// and a socket it connected is shut down unless the attempt `succeeded`. lapin's I/O thread
/// (started by `Connection::connector`) would otherwise wait on it for as long as a silent broker
/// keeps it open: a thread and a socket per attempt, through a whole outage. Shut down, the
/// thread sees the end of the stream and exits.
///
/// A channel, not a timer, tells the connect on lapin's thread: a tokio timer polled there while
/// the runtime shuts down panics (and a panic aborts the process).
struct Keep {
    slot: Arc<std::sync::Mutex<Kept>>,
    /// Never sent to: closed by the drop.
    over: async_channel::Receiver<()>,
    _over: async_channel::Sender<()>,
    succeeded: bool,
}

impl Keep {
    fn new() -> Keep {
        let (tx, rx) = async_channel::bounded(1);
        Keep { slot: Arc::new(std::sync::Mutex::new(Kept::Waiting)), over: rx, _over: tx, succeeded: false }
    }
}

impl Drop for Keep {
    fn drop(&mut self) {
        self.over.close();
        let kept = std::mem::replace(&mut *self.slot.lock().unwrap_or_else(|e| e.into_inner()), Kept::Over);
        if let (Kept::Socket(socket), false) = (kept, self.succeeded) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// lapin's own way to open the TCP connection (`amq_protocol_tcp`'s, TLS for `amqps`) until the
/// attempt is over (`over` closed: a TCP connect the network leaves unanswered ends with it),
/// keeping a duplicate of the socket in `keep` ([`Keep`]; taken before a TLS handshake, which
/// the shutdown then ends). One that connects after the attempt is over is dropped, unused.
fn connect_keeping(
    keep: Arc<std::sync::Mutex<Kept>>,
    over: async_channel::Receiver<()>,
) -> impl AsyncFn(AMQPUri, AmqpRuntime) -> lapin::Result<AsyncTcpStream<<AmqpRuntime as Reactor>::TcpStream>> + Send + Sync + 'static {
    async move |uri: AMQPUri, runtime: AmqpRuntime| {
        let timed_out = || lapin::Error::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "the connect attempt is over"));
        let addrs = runtime.to_socket_addrs((uri.authority.host.clone(), uri.authority.port));
        let tcp = async { Some(AsyncTcpStream::connect(&runtime, addrs).await) };
        let ended = async {
            let _ = over.recv().await;
            None
        };
        let stream = future::or(ended, tcp).await.ok_or_else(timed_out)??;
        {
            let mut kept = keep.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(*kept, Kept::Over) {
                return Err(timed_out());
            }
            if let AsyncTcpStream::Plain(tcp) = &stream {
                use std::os::fd::AsFd;
                if let Ok(dup) = socket2::SockRef::from(&tcp.get_ref().as_fd()).try_clone() {
                    *kept = Kept::Socket(dup);
                }
            }
        }
        Ok(match uri.scheme {
            AMQPScheme::AMQP => stream,
            AMQPScheme::AMQPS => stream.into_tls(&uri.authority.host, OwnedTLSConfig::default().as_ref()).await?,
        })
    }
}

impl LinkState {
    fn fail(&mut self, why: String) -> String {
        self.conn = None;
        self.failed = Some(why.clone());
        why
    }
}

/// Adds `heartbeat=10` to a URI without one, so a dead peer is noticed within seconds.
fn with_heartbeat(uri: &str) -> String {
    let query = uri.split_once('?').map_or("", |(_, q)| q);
    if query.split('&').any(|kv| kv.starts_with("heartbeat=")) {
        uri.to_string()
    } else {
        format!("{uri}{}heartbeat=10", if uri.contains('?') { '&' } else { '?' })
    }
}

/// The running sources, to stop at shutdown ([`Sources::stop`]).
pub(crate) struct Sources {
    stop: async_channel::Sender<()>,
    done: async_channel::Receiver<()>,
}

impl Sources {
    /// Tells every source to stop taking deliveries and waits until each has acked what it
    /// handled and ended (a classic queue would otherwise deliver those again to the next
    /// consumer: duplicates under new ids). A source in the middle of connecting ends when that
    /// returns; the caller bounds the wait.
    pub(crate) async fn stop(self) {
        self.stop.close();
        // An error once every source has ended (dropped its sender).
        let _ = self.done.recv().await;
    }
}

/// Starts every channel's source on the broker ([`start`]) on a thread of their own, `sources`,
/// whose executor lapin also runs on: the main thread's accept loop verifies a signature per
/// request, and a flood of requests (with bad tokens, say) there would slow every channel's
/// deliveries. The thread serves until `quit`'s sender is dropped (after the shards closed their
/// streams: read-backs run on its executor too).
pub(crate) fn start_thread(
    settings: &Arc<Settings>,
    metrics: &Arc<Metrics>,
    broker: &BrokerConfig,
    shards: &Shards,
    began: std::time::Duration,
) -> std::io::Result<(Sources, async_channel::Sender<()>)> {
    let (quit_tx, quit_rx) = async_channel::bounded::<()>(1);
    let (settings, metrics, broker, shards) = (settings.clone(), metrics.clone(), broker.clone(), shards.clone());
    let sources = crate::common::serve_on_thread("sources", move |started| async move {
        let sources = start(crate::driver::amqp_runtime(), &settings, &metrics, &broker, &shards, began);
        if started.report(sources) {
            // An error once the main thread drops its sender.
            let _ = quit_rx.recv().await;
        }
        Ok(())
    })?;
    Ok((sources, quit_tx))
}

/// Starts every channel's source on the broker, as tasks on this thread's executor; lapin runs
/// on `runtime`. Event ids carry [`process_epoch`] of `started` (the process start), except on
/// stream channels, whose ids carry their stream's configured epoch. With any stream channel, the shards get the
/// [`LogReader`] that reads resumes back from the streams (before any stream can open: the
/// shards' queues are empty now).
pub(crate) fn start(
    runtime: AmqpRuntime,
    settings: &Arc<Settings>,
    metrics: &Arc<Metrics>,
    broker: &BrokerConfig,
    shards: &Shards,
    started: std::time::Duration,
) -> Sources {
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let (done_tx, done_rx) = async_channel::bounded::<()>(1);
    let uri = with_heartbeat(&broker.url);
    let link = Arc::new(Link::new(uri.clone(), runtime.clone(), "sse-gateway"));
    let drops = super::request::drop_log();
    if settings.channels.iter().any(|c| c.log.is_some()) {
        // Read-backs get a connection of their own: a resume storm never delays live events.
        let reader = LogReader::new(Link::new(uri, runtime, "sse-gateway read-back"), settings, metrics, shards.clone());
        shards.history(Arc::new(reader));
    }
    for ch in &settings.channels {
        let Some(id) = settings.channel_id(&ch.name) else { continue };
        let epoch = ch.log.as_ref().map_or_else(|| process_epoch(started, id), |log| log.epoch);
        let ingest = Ingest::new(settings.clone(), metrics.clone(), id, epoch);
        let source = Source {
            link: link.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            shards: shards.clone(),
            id,
            name: ch.name.clone(),
            stop: stop_rx.clone(),
            _done: done_tx.clone(),
            drops: drops.clone(),
        };
        spawn(source.run(ingest, broker.clone()));
    }
    Sources { stop: stop_tx, done: done_rx }
}

struct Source {
    link: Arc<Link>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    shards: Shards,
    id: ChannelId,
    name: String,
    /// Closed at shutdown ([`Sources::stop`]).
    stop: async_channel::Receiver<()>,
    /// Dropped when the source ends: what [`Sources::stop`] waits for.
    _done: async_channel::Sender<()>,
    /// The budget of `message dropped` lines, shared by the thread's sources.
    drops: super::request::DropLog,
}

/// Where a stream source is in its stream, across reconnects.
#[derive(Debug, Default)]
struct Offsets {
    /// When the source started (POSIX seconds): before any stream of its channel could open.
    started: u64,
    /// The offset of the last delivery taken (valid or dropped).
    last: Option<u64>,
    /// That delivery's message (moved here once handled): a consumer resumed at `last` gets it
    /// first, the same message unless the stream was deleted and recreated (and refilled past
    /// `last`) while the source was away.
    last_taken: Option<UpstreamMessage>,
    /// With nothing delivered yet, what was written from then on (POSIX seconds) is new: when
    /// the first consumer was established, or [`Offsets::started`] if streams were open before
    /// it was (the broker was not reached at once). Not "the stream's first message": a consumer
    /// that failed before its first delivery would then replay the whole stream as live events.
    consumed_at: Option<u64>,
    /// Set once the stream's offsets went back (it was deleted and recreated under its name):
    /// its offsets would give out event ids already given out, so the source stays down, saying
    /// why, until the gateway restarts with a new `epoch`.
    went_back: Option<String>,
    /// The buffers were warmed with the stream's last chunk (`prime_history`): once, at the first
    /// consumer.
    primed: bool,
    /// Where that history ended, until the first live delivery: it must follow (or the buffers
    /// start again there, `Command::PrimeGap`).
    history_through: Option<u64>,
    /// The message at `history_through`, if the history read kept it (not oversized): the
    /// `last_taken` of a consumer that resumes there.
    history_last: Option<UpstreamMessage>,
}

impl Offsets {
    /// Stops the source of `channel` for good (see `went_back`) because of `what`; returns why,
    /// with what to do, for the caller's error.
    fn stop(&mut self, what: &str, channel: &str) -> String {
        let why = format!(
            "{what}, and its offsets would give out event ids already given out; set channels.{channel}.source.epoch \
             to a new value and restart the gateway"
        );
        self.went_back = Some(why.clone());
        why
    }
}

/// A queue check in progress ([`Source::check_queue`]).
type QueueCheck<'a> = Pin<Box<dyn Future<Output = Result<bool, String>> + 'a>>;

/// A queue check's result; before an error (an outage) is returned, the deliveries handled so
/// far are acked.
async fn acked_first(checked: Result<bool, String>, acks: &mut Acks) -> Result<bool, String> {
    if checked.is_err() {
        acks.flush().await?;
    }
    checked
}

/// What ended a source's wait for its next delivery.
enum Wake<T> {
    Delivery(T),
    /// The consumer's channel is no longer connected.
    Dead,
    /// The queue check finished (`Source::check_queue`).
    Checked(Result<bool, String>),
    /// The queue check is due.
    CheckDue,
    /// Shutdown ([`Sources::stop`]).
    Stop,
    /// A resumed stream consumer has not sent its resume point within [`RESUME_WAIT`].
    ResumeLate,
}

/// A consumer [`Source::set_up`] started, and what [`Source::consume`] needs of its setup.
struct Setup<'a> {
    /// The consumer's channel.
    chan: Channel,
    consumer: Consumer,
    queue: &'a str,
    /// The queue's consumers when it was declared (before this one).
    consumers: u32,
    /// The buffers are warmed first with the stream's last chunk, read on `history` (if that
    /// consumer could be started): `Source::prime_history`.
    prime: bool,
    history: Option<(Channel, Consumer)>,
    /// Where a stream channel's consumer started.
    start: Option<StartAt>,
}

/// How far one connection of a source got.
#[derive(Debug, Default)]
struct Attempt {
    /// When its consumer started.
    consuming_since: Option<Instant>,
    /// It took a new delivery (handled and acked it; a stream's resume point, delivered again
    /// first on every resume, does not count).
    took: bool,
    /// Its source was reported up (when the consumer started or, resumed at a stream's offset,
    /// when the stream sent it).
    up: bool,
}

impl Attempt {
    /// A consumer that took a delivery, or that ran as long as the longest reconnect wait, was
    /// healthy: the next outage starts the backoff afresh. One that fails at once every time (a
    /// message it cannot take, a queue of the wrong kind) backs off instead of reconnecting, and
    /// telling its streams `source_unavailable`, several times a second.
    fn healthy(&self, reconnect_max: Duration, now: Instant) -> bool {
        self.took || self.consuming_since.is_some_and(|t| now.saturating_duration_since(t) >= reconnect_max)
    }
}

impl Drop for Source {
    /// At shutdown, the drops left without a line are summed up (the summing task ends with the
    /// thread, before its next turn); the first source to end says it for all of them.
    fn drop(&mut self) {
        if self.stop.is_closed() {
            self.drops.borrow_mut().sum_up_last(super::request::log_drops_summed);
        }
    }
}

impl Source {
    /// Tells the shards this attempt's source is up (its streams hear of it).
    async fn report_up(&self, attempt: &mut Attempt) {
        attempt.up = true;
        self.shards.source(self.id, true).await;
    }

    async fn run(self, mut ingest: Ingest, broker: BrokerConfig) {
        let mut backoff = Backoff::new(broker.reconnect_min, broker.reconnect_max);
        let mut failures = 0u64;
        let mut offsets = Offsets { started: sse_gateway_core::cli::unix_now(), ..Offsets::default() };
        loop {
            let mut attempt = Attempt::default();
            let result = self.consume(&mut ingest, &broker, &mut attempt, &mut offsets).await;
            if self.stop.is_closed() {
                return; // shutdown: what was handled is acked (or the channel could not take it)
            }
            let why = match result {
                Ok(()) => "the consumer was cancelled".to_string(),
                Err(e) => e,
            };
            if attempt.healthy(broker.reconnect_max, Instant::now()) {
                backoff.reset();
                failures = 0;
            } else if attempt.up {
                // It was up (its streams were told): losing it again is news, said at warn,
                // though the backoff goes on from where it was.
                failures = 0;
            }
            failures += 1;
            // The loss is news; the retries that follow are not (every 10th is logged).
            if failures == 1 {
                warn!(channel = %self.name, error = %why, "source unavailable");
            } else if failures.is_multiple_of(10) {
                warn!(channel = %self.name, error = %why, failures, "source still unavailable");
            } else {
                debug!(channel = %self.name, error = %why, failures, "reconnect failed");
            }
            self.shards.source(self.id, false).await;
            let wait = backoff.next_wait(getrandom::u64().unwrap_or(0));
            if future::or(async { sleep(wait).await; false }, async { self.stop.recv().await.is_err() }).await {
                return;
            }
        }
    }

    /// Gets a channel (connecting first if need be), declares the source's queue (and exchange,
    /// and binds them) and starts its consumer, and at a stream channel's first start the history
    /// read's too ([`Source::open_history`]): every call to the broker until the consumer runs.
    async fn set_up(&self, broker: &BrokerConfig, offsets: &mut Offsets) -> Result<Setup<'_>, String> {
        let e = |what: &'static str| move |e: lapin::Error| format!("{what}: {e}");
        let log = self.settings.channel(self.id).log.as_ref();
        let queue_args = log.map(stream_log::queue_args).unwrap_or_default();
        // A stream this source has read from (live, or as history for the buffers, whose ids
        // resumes may hold) can only be missing if it was deleted; a classic queue it has
        // consumed, if it was deleted or expired (an `expires` policy, during an outage).
        let read_up_to = offsets.last.or(offsets.history_through);
        let known = match log {
            Some(_) => read_up_to.is_some(),
            None => offsets.consumed_at.is_some(),
        };
        let (gone, consumers);
        let mut chan = self.link.channel().await?;
        let queue = match &self.settings.channel(self.id).source {
            SourceSettings::Exchange { exchange, kind, routing_keys, queue } => {
                let kind = match kind.as_str() {
                    "topic" => ExchangeKind::Topic,
                    "direct" => ExchangeKind::Direct,
                    "fanout" => ExchangeKind::Fanout,
                    "headers" => ExchangeKind::Headers,
                    other => ExchangeKind::Custom(other.to_string()),
                };
                let opts = ExchangeDeclareOptions { durable: true, ..Default::default() };
                if let Err(err) = answered(chan.exchange_declare(exchange.as_str().into(), kind.clone(), opts, FieldTable::default())).await? {
                    // It exists with other settings: use it as it is (the failed declare closed the channel).
                    warn!(channel = %self.name, exchange = %exchange, error = %err, "exchange declare refused; checking it exists");
                    chan = self.link.channel().await?;
                    let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
                    answered(chan.exchange_declare(exchange.as_str().into(), kind, passive, FieldTable::default()))
                        .await?
                        .map_err(e("exchange declare"))?;
                }
                (chan, gone, consumers) = self.declare_queue(chan, queue, &queue_args, known).await?;
                bind(&chan, queue, exchange, routing_keys).await?.map_err(e("queue bind"))?;
                queue
            }
            SourceSettings::Queue { queue } => {
                (chan, gone, consumers) = self.declare_queue(chan, queue, &queue_args, known).await?;
                queue
            }
        };
        if gone && log.is_none() {
            // Declared (and bound) again, empty: what it held, and what was published while it
            // was missing, is lost. The streams are told (and the buffer, which no longer meets
            // what comes next, is emptied).
            warn!(channel = %self.name, queue = %queue,
                  "the queue was gone (deleted, or expired) and was declared again, empty: what it held is lost; streams get history_gap");
            self.shards.log_gap(self.id).await;
        } else if gone {
            // Declared (and bound) again so that it keeps what is published meanwhile, but not
            // read: its offsets restart at 0 and would give out ids already given out.
            let last = read_up_to.unwrap_or_default();
            let what = format!("stream queue {queue} is gone (it had offset {last}) and was declared again, empty: its offsets restart at 0");
            return Err(offsets.stop(&what, &self.name));
        }
        answered(chan.basic_qos(broker.prefetch, BasicQosOptions::default())).await?.map_err(e("basic.qos"))?;
        let tag = format!("sse-gateway.{}", self.name);
        // The first consumer warms the buffers with the stream's last chunk (for the resumes a
        // restart brings), read apart from the live events (`prime_history`), so that no stream
        // gets that history as if it were new. Its consumer starts first: the last chunk it is
        // given ends before where the live one starts, and it reads on to there.
        let prime = log.is_some() && !offsets.primed && self.settings.channel(self.id).buffer_events > 0;
        let history = if prime { self.open_history(queue, broker.prefetch).await } else { None };
        // A stream is read from where this source left it (the last offset it took or, before
        // any, the history read at start ended, which must still be there), else from the
        // chunks written since its first consumer (a second of
        // slack for the seconds' resolution: at most that and one chunk come again), else from
        // what is written next. Streams that opened before the first consumer (the broker was
        // not reached at once) are owed everything since they opened: then it starts at the
        // chunks written since the source started.
        if log.is_some() && offsets.consumed_at.is_none() && self.metrics.streams_open(self.id) > 0 {
            offsets.consumed_at = Some(offsets.started);
        }
        if offsets.last.is_none() && offsets.primed {
            // Nothing taken live since the history read (an outage came first): from where that
            // read ended, by offset, as if taken there. `Since` would compare this machine's
            // clock with the broker's: one behind would skip what was written meanwhile, unseen.
            offsets.last = offsets.history_through;
            offsets.last_taken = offsets.history_last.take();
        }
        let start = match (log, offsets.last) {
            (None, _) => None,
            (Some(_), Some(last)) => Some(StartAt::Offset(last)),
            (Some(_), None) => Some(offsets.consumed_at.map_or(StartAt::Next, |t| StartAt::Since(t.saturating_sub(1)))),
        };
        if offsets.primed && matches!(start, Some(StartAt::Since(_))) {
            // It reads again from before where the history ended: what it sends at or before
            // the buffer's last event is old now (`Gateway::prime_over`).
            let id = self.id;
            self.shards.broadcast(|| Command::PrimeOver(id)).await;
        }
        let args = start.map(StartAt::consumer_args).unwrap_or_default();
        let consumed = answered(chan.basic_consume(queue.as_str().into(), tag.into(), BasicConsumeOptions::default(), args))
            .await
            .and_then(|r| r.map_err(e("basic.consume")));
        let consumer = match consumed {
            Ok(consumer) => consumer,
            Err(why) => {
                if let Some((history_chan, history_consumer)) = history {
                    close_later(history_chan, Some(history_consumer), "history read");
                }
                return Err(why);
            }
        };
        Ok(Setup { chan, consumer, queue: queue.as_str(), consumers, prime, history, start })
    }

    /// Sets a consumer up ([`Source::set_up`]) and consumes until it ends; `attempt` says how far
    /// it got.
    async fn consume(&self, ingest: &mut Ingest, broker: &BrokerConfig, attempt: &mut Attempt, offsets: &mut Offsets) -> Result<(), String> {
        if let Some(why) = &offsets.went_back {
            return Err(why.clone());
        }
        let setup = self.reported_if_slow(self.set_up(broker, offsets)).await?;
        // However it ends, its consumer is cancelled before its channel is closed, in one task
        // (`close_later`): dropped while active, lapin would queue the two apart, and a cancel
        // reaching the broker after the close is a connection error that takes every source
        // on the connection down.
        let (chan, consumer) = (setup.chan.clone(), setup.consumer.clone());
        let result = self.consume_from(setup, ingest, broker, attempt, offsets).await;
        if chan.status().connected() {
            close_later(chan, Some(consumer), "source consumer ended");
        }
        result
    }

    /// [`Source::consume`] once its consumer runs.
    async fn consume_from(
        &self, setup: Setup<'_>, ingest: &mut Ingest, broker: &BrokerConfig, attempt: &mut Attempt, offsets: &mut Offsets,
    ) -> Result<(), String> {
        let e = |what: &'static str| move |e: lapin::Error| format!("{what}: {e}");
        let log = self.settings.channel(self.id).log.as_ref();
        let Setup { chan, mut consumer, queue, consumers, prime, history, start } = setup;
        match start {
            None => info!(channel = %self.name, queue = %queue, "source consuming"),
            Some(at) => info!(channel = %self.name, queue = %queue, from = %at, "source consuming the stream"),
        }
        attempt.consuming_since = Some(Instant::now());
        offsets.consumed_at.get_or_insert_with(sse_gateway_core::cli::unix_now);
        if prime {
            // Before the source is up (`/readyz`): no resume finds the buffer empty meanwhile.
            let id = self.id;
            self.shards.broadcast(|| Command::PrimeStart(id)).await;
        }
        // Resumed at an offset, the source is up once the stream has shown it still holds it
        // (its first delivery, checked below): a stream deleted and made again, shorter, while
        // the source was away would send nothing until it reached that offset (the broker skips
        // what lies below it), and the channel would be silent while reported up.
        let mut resume_due = matches!(start, Some(StartAt::Offset(_))).then(|| Instant::now() + RESUME_WAIT);
        if resume_due.is_none() {
            self.report_up(attempt).await;
        }
        let mut held = None;
        if prime {
            offsets.primed = true;
            let (first, through, at_through) = self.prime_history(history, ingest, broker.prefetch, &mut consumer).await;
            (held, offsets.history_through, offsets.history_last) = (first, through, at_through);
        }
        let mut resuming = offsets.last;
        let mut acks = Acks::new(ACK_BATCH);
        // Every check_interval, the queue is checked beside the deliveries (`check_queue`).
        let classic = log.is_none();
        let mut shared = classic && self.note_sharing(queue, consumers, false);
        let mut checked_at = Instant::now();
        let mut check: Option<QueueCheck<'_>> = None;
        loop {
            if self.stop.is_closed() {
                // Shutdown: ack what was handled, take nothing more (unacked, the rest stays
                // in a classic queue for the next consumer).
                acks.flush().await?;
                return Ok(());
            }
            if check.is_none() && checked_at.elapsed() >= broker.check_interval {
                checked_at = Instant::now();
                check = Some(Box::pin(self.check_queue(queue, classic, shared)));
            }
            if let Some(done) = check.as_mut().map(|c| future::poll_once(c.as_mut())) {
                if let Some(r) = done.await {
                    check = None;
                    // The consumer's channel is healthy: what was handled is acked before the
                    // outage a check found ends it (else it comes again, a duplicate).
                    shared = acked_first(r, &mut acks).await?;
                }
            }
            // The live consumer's first delivery, if it came while the history was read (with
            // the time it came, for the delay histogram).
            let (polled, came) = match held.take() {
                Some((first, at)) => (Some(first), Some(at)),
                None => (future::poll_once(consumer.next()).await, None),
            };
            let next = match polled {
                Some(next) => next,
                None => {
                    // Nothing waits: ack what was handled before waiting. lapin may leave a
                    // consumer whose connection just died waiting, so the channel's state is
                    // looked at every second meanwhile; a check in progress goes on, and one
                    // that falls due is started. A channel already dead takes no ack: its
                    // deliveries come again on the next consumer. (lapin poisons a channel's
                    // ackers before it marks the channel closed or failed, so the flush would
                    // fail at once too, as `basic.ack not sent`, rather than wait ACK_TIMEOUT.)
                    if !chan.status().connected() {
                        return Err(NOT_CONNECTED.to_string());
                    }
                    acks.flush().await?;
                    let other = async {
                        loop {
                            if !chan.status().connected() {
                                return Wake::Dead;
                            }
                            if resume_due.is_some_and(|due| Instant::now() >= due) {
                                return Wake::ResumeLate;
                            }
                            match check.as_mut() {
                                Some(c) => {
                                    if let Some(r) = until(Instant::now() + Duration::from_secs(1), c.as_mut()).await {
                                        return Wake::Checked(r);
                                    }
                                }
                                None if checked_at.elapsed() >= broker.check_interval => return Wake::CheckDue,
                                None => sleep(Duration::from_secs(1)).await,
                            }
                        }
                    };
                    let stop = async {
                        let _ = self.stop.recv().await;
                        Wake::Stop
                    };
                    match future::or(async { Wake::Delivery(consumer.next().await) }, future::or(other, stop)).await {
                        Wake::Delivery(next) => next,
                        Wake::Dead => return Err(NOT_CONNECTED.to_string()),
                        Wake::Checked(r) => {
                            check = None;
                            shared = acked_first(r, &mut acks).await?;
                            continue;
                        }
                        Wake::ResumeLate => {
                            resume_due = None;
                            warn!(channel = %self.name, queue = %queue, offset = offsets.last,
                                  "the stream has not sent the message at the source's resume point within {RESUME_WAIT:?}: it does not reach that offset (deleted and made again?); the source stays down until it does");
                            continue;
                        }
                        Wake::CheckDue | Wake::Stop => continue,
                    }
                }
            };
            let Some(delivery) = next else {
                acks.flush().await?; // cancelled by the broker: the channel still takes acks
                break;
            };
            let mut delivery = delivery.map_err(e("consumer"))?;
            if delivery.acker.poisoned() {
                // Delivered before the channel failed, not acked, and never will be: it comes
                // again on the next consumer, so it is not passed on now (no duplicate).
                return Err("the channel failed (deliveries it had buffered come again)".into());
            }
            let mut msg = message(&mut delivery);
            msg.received = Some(came.unwrap_or_else(Instant::now));
            if log.is_some() {
                let Some(pos) = stream_log::offset(&delivery) else {
                    // Unacked, so a classic queue keeps it; the source goes down and says why.
                    return Err(format!("queue {queue} delivered a message without x-stream-offset: is it a stream queue?"));
                };
                if let Some(last) = offsets.last {
                    let resumed = resuming.take().is_some();
                    // Offsets only grow in a stream: one below the last taken (or equal to it,
                    // other than as a resume's first delivery) is another stream by that name.
                    if pos < last || (pos == last && !resumed) {
                        let what = format!("stream queue {queue} went back from offset {last} to {pos}: it was deleted and recreated");
                        return Err(offsets.stop(&what, &self.name));
                    }
                    if pos == last && offsets.last_taken.as_ref().is_some_and(|taken| !same_message(taken, &msg)) {
                        let what = format!(
                            "stream queue {queue} holds another message at offset {last} than the one this source took there: \
                             it was deleted and recreated"
                        );
                        return Err(offsets.stop(&what, &self.name));
                    }
                    // Resumed at `last`, the stream must start there (or right after it, if
                    // only `last` itself is gone); later, offsets may skip one (LOG_SKIP).
                    let lost = if resumed { !log_resumes(last, pos) } else { !log_continues(last, pos) };
                    if resumed && !attempt.up {
                        resume_due = None;
                        self.report_up(attempt).await;
                    }
                    if lost {
                        // Retention removed what came between (during an outage, or because
                        // this source fell that far behind): the shards must not pretend
                        // continuity.
                        warn!(channel = %self.name, queue = %queue, last_seen = last, next = pos,
                              "the stream lost events before this source read them (retention); streams get history_gap");
                        self.shards.log_gap(self.id).await;
                    }
                }
                // Set by the first consumer's history read, before anything was taken.
                offsets.history_last = None;
                if let Some(through) = offsets.history_through.take() {
                    if !logs_meet(through, pos) {
                        // The history read stopped short of where live deliveries begin (a broker
                        // that paused, an outage): what lies between is in neither. Not a loss:
                        // resumes and the streams resumed from the buffers read the stream back.
                        info!(channel = %self.name, through, next = pos, "the history read at start stopped short of the live events; the buffers start again here");
                        let id = self.id;
                        self.shards.broadcast(|| Command::PrimeGap(id)).await;
                    }
                }
                if offsets.last.is_some_and(|last| pos <= last) {
                    // Where it left off (proof the stream still holds it): already handled. Not
                    // progress: every resume gets it first, so a consumer that fails right after
                    // it every time must still back off (`Attempt::healthy`).
                    acks.handled(delivery.acker).await?;
                    continue;
                }
                offsets.last = Some(pos);
                msg.position = Some(pos);
            }
            match crate::common::contained(|| ingest.handle_message(&msg)) {
                Some(Ok(ev)) => {
                    if !self.shards.event(&ev).await {
                        // The shutdown went on without this source (it waited too long for room
                        // in a shard's queue): not acked, the event stays for the next consumer.
                        acks.flush().await?;
                        return Ok(());
                    }
                }
                Some(Err(d)) => {
                    if super::request::drop_line(&self.drops) {
                        warn!(channel = %self.name, reason = d.reason.label(), detail = %d.detail, "message dropped");
                    }
                }
                None => {
                    ingest.handling_failed();
                    error!(channel = %self.name, "message dropped: handling it panicked (a bug, logged above); acked so that it is not delivered again")
                }
            }
            if log.is_some() {
                offsets.last_taken = Some(msg);
            }
            // A message given out again (its ack did not reach the broker before the last attempt
            // ended) is no progress: an attempt that fails right after handling its deliveries
            // every time must back off, not reconnect at the shortest delay and relay them again.
            attempt.took |= !delivery.redelivered;
            acks.handled(delivery.acker).await?;
        }
        Ok(())
    }

    /// Opens the consumer of the history read at the first start (`prime_history`) at the
    /// stream's last chunk, on a channel of its own; `None` (logged) if that failed: the buffers
    /// are only colder.
    async fn open_history(&self, queue: &str, prefetch: u16) -> Option<(Channel, Consumer)> {
        let chan = match self.link.channel().await {
            Ok(chan) => chan,
            Err(e) => {
                warn!(channel = %self.name, error = %e, "no channel to read the stream's last chunk for the buffers; resumes read the stream back");
                return None;
            }
        };
        match stream_log::consume_at(&chan, queue, prefetch, StartAt::Last).await {
            Ok(consumer) => Some((chan, consumer)),
            Err(e) => {
                warn!(channel = %self.name, error = %e, "could not read the stream's last chunk for the buffers; resumes read the stream back");
                close_later(chan, None, "history read failed");
                None
            }
        }
    }

    /// Reads history for the shards' buffers at the first start (from [`Source::open_history`],
    /// which started before the live consumer), while the live consumer waits: until the history
    /// reaches where the live consumer began (its first delivery, taken and returned with the
    /// time it came, for the caller to handle first), or nothing came for [`PRIME_IDLE`]
    /// ([`PRIME_FIRST`] before the first message), at most [`PRIME_MAX`]. The shards get what
    /// lies before that point (`Gateway::prime`; the caller sent `prime_start`) and where the
    /// read ended (`prime_end`), which is returned too. A failure only leaves the buffers colder:
    /// it is logged, and the shards are told the read ended in any case.
    async fn prime_history(
        &self,
        history: Option<(Channel, Consumer)>,
        ingest: &mut Ingest,
        prefetch: u16,
        live: &mut Consumer,
    ) -> (Option<(Next, Instant)>, Option<u64>, Option<UpstreamMessage>) {
        let id = self.id;
        let mut read = HistoryRead::default();
        let keep = self.settings.channel(id).buffer_events;
        let history = match history {
            Some((chan, mut consumer)) => {
                match self.read_history(&mut consumer, prefetch, keep, ingest, live, &mut read).await {
                    Ok(()) => debug!(channel = %self.name, through = ?read.through, live_from = ?read.live_from, "history read for the buffers"),
                    Err(e) => warn!(channel = %self.name, error = %e, "reading the stream's last chunk for the buffers failed; resumes read the stream back"),
                }
                Some((chan, consumer))
            }
            None => None,
        };
        // What the live consumer sends itself (from where it began) is not history.
        let through = match (read.through, read.live_from) {
            (Some(at), Some(from)) => from.checked_sub(1).map(|before| at.min(before)),
            (at, _) => at,
        };
        for msg in &read.msgs {
            if read.live_from.is_some_and(|from| msg.position.is_some_and(|p| p >= from)) {
                break;
            }
            // Dropped history is not logged: it was when a live source met it (this process's
            // or an earlier one's).
            if let Some(Ok(ev)) = crate::common::contained(|| ingest.history(msg)) {
                self.shards.broadcast(|| Command::Prime(ev.clone())).await;
            }
        }
        self.shards.broadcast(|| Command::PrimeEnd(id, through)).await;
        if let Some((chan, consumer)) = history {
            close_later(chan, Some(consumer), "history read");
        }
        // The message at `through`, if kept: a consumer that resumes there must find it again.
        let at_through = read.msgs.iter().rposition(|m| through.is_some() && m.position == through).and_then(|i| read.msgs.remove(i));
        (read.held.take(), through, at_through)
    }

    /// The reading part of [`Source::prime_history`]: the last `keep` messages into `read`
    /// (an oversized one is dropped at once: only its position counts).
    async fn read_history(
        &self,
        history: &mut Consumer,
        prefetch: u16,
        keep: usize,
        ingest: &Ingest,
        live: &mut Consumer,
        read: &mut HistoryRead,
    ) -> Result<(), String> {
        let e = |what: &'static str| move |e: lapin::Error| format!("{what}: {e}");
        // Acked at most `prefetch` at a time: the broker never waits for an ack that waits for it.
        let mut acks = Acks::new(stream_log::ACK_EVERY.min(u32::from(prefetch)));
        let ends = Instant::now() + PRIME_MAX;
        enum Got {
            History(Option<Next>),
            Live(Next),
        }
        loop {
            if Instant::now() >= ends {
                return Ok(());
            }
            if let (Some(from), Some(at)) = (read.live_from, read.through) {
                if at + 1 >= from {
                    return Ok(()); // the history reached the live events
                }
            }
            if self.stop.is_closed() {
                return Ok(());
            }
            let wait = Instant::now() + if read.through.is_none() { PRIME_FIRST } else { PRIME_IDLE };
            let from_history = async { Got::History(until(wait.min(ends), history.next()).await) };
            // The live consumer first: where it began bounds what is read.
            let got = match read.held {
                None => future::or(async { Got::Live(live.next().await) }, from_history).await,
                Some(_) => from_history.await,
            };
            let mut d = match got {
                Got::Live(next) => {
                    read.live_from = next.as_ref().and_then(|r| r.as_ref().ok()).and_then(stream_log::offset);
                    let failed = read.live_from.is_none();
                    read.held = Some((next, Instant::now()));
                    if failed {
                        return Ok(()); // the caller meets the live consumer's error
                    }
                    continue;
                }
                Got::History(None) => return Ok(()), // nothing more: the chunk was read
                Got::History(Some(None)) => return Err("the consumer was cancelled".into()),
                Got::History(Some(Some(r))) => r.map_err(e("consumer"))?,
            };
            let (pos, msg) = stream_log::log_message(&mut d)?;
            // Held until the read ends: up to `keep` of them, so not one past the bound (up to
            // the broker's `max_message_size`), which `ingest.history` would drop anyway.
            if !ingest.oversized(&msg) {
                if read.msgs.len() == keep {
                    read.msgs.pop_front();
                }
                read.msgs.push_back(msg);
            }
            read.through = Some(pos);
            acks.handled(d.acker).await?;
        }
    }

    /// Runs `setup` ([`Source::set_up`]); once it has taken [`SLOW_SETUP`], the source is
    /// reported down (its streams get `source_unavailable`) while it goes on. A broker that
    /// leaves any of the setup's calls unanswered (the connect, or a call after a connection it
    /// completed) is an outage at once (D8), not only once that call fails after its timeout.
    /// Only news at a first start: a source sets a consumer up again only once it was reported
    /// down.
    async fn reported_if_slow<T>(&self, setup: impl Future<Output = T>) -> T {
        futures_lite::pin!(setup);
        if let Some(done) = until(Instant::now() + SLOW_SETUP, setup.as_mut()).await {
            return done;
        }
        if self.shards.source(self.id, false).await {
            info!(channel = %self.name, "the broker has not answered yet; the source is reported unavailable meanwhile");
        }
        setup.await
    }

    /// The periodic check of a consuming source's queue (`broker.check_interval`). RabbitMQ drops
    /// a queue's bindings with their exchange and tells no consumer: the queue is bound to its
    /// exchange again. A classic queue's consumers compete (a second instance on it takes part of
    /// the events from this one's streams): they are counted. Returns whether the queue is shared
    /// (`was`: it was). Done on a channel of its own, closed after: lapin records every bind on
    /// the channel that made it, and an error closes the channel it came on, not the consumer's.
    /// A deleted exchange (or queue) is an outage (`Err`: the reconnect declares it again); a
    /// check the broker does not answer, or refuses otherwise, is logged and made again at the
    /// next interval.
    async fn check_queue(&self, queue: &str, classic: bool, was: bool) -> Result<bool, String> {
        let checked = match self.link.channel_if_connected().await {
            Ok(Some(chan)) => {
                let checked = self.check_on(&chan, queue, classic, was).await;
                let _ = answered(chan.close(200, "queue check done".into())).await;
                checked
            }
            Ok(None) => return Ok(was), // the link is busy or down: the next interval
            Err(why) => Err(Err(why)),
        };
        let shared = match checked {
            Ok(shared) => shared,
            Err(Ok(e)) if is_not_found(&e) => return Err(format!("queue check: {e}")),
            Err(Ok(e)) => {
                warn!(channel = %self.name, queue = %queue, error = %e, "queue check refused; made again after check_interval");
                was
            }
            Err(Err(why)) => {
                warn!(channel = %self.name, queue = %queue, error = %why, "queue check failed; made again after check_interval");
                was
            }
        };
        Ok(shared)
    }

    /// [`Source::check_queue`]'s calls on `chan`: the broker's error, or a call it did not answer.
    async fn check_on(&self, chan: &Channel, queue: &str, classic: bool, was: bool) -> Result<bool, Result<lapin::Error, String>> {
        if let SourceSettings::Exchange { exchange, routing_keys, .. } = &self.settings.channel(self.id).source {
            bind(chan, queue, exchange, routing_keys).await.map_err(Err)?.map_err(Ok)?;
        }
        if !classic {
            return Ok(was);
        }
        let q = look_up(chan, queue).await.map_err(Err)?.map_err(Ok)?;
        // Less this source's own consumer, on its other channel.
        Ok(self.note_sharing(queue, q.consumer_count().saturating_sub(1), was))
    }

    /// Says when the classic queue `queue` has `others` consumers besides this source, or no
    /// longer has (`was`: it had); returns whether it has.
    fn note_sharing(&self, queue: &str, others: u32, was: bool) -> bool {
        if others > 0 && !was {
            warn!(channel = %self.name, queue = %queue, others,
                  "queue shared: its consumers compete, so each gets only part of the events (another instance on the same \
                   queue, or this one's previous connection not yet closed by the broker); give each instance its own bind_queue");
        } else if others == 0 && was {
            info!(channel = %self.name, queue = %queue, "queue no longer shared");
        }
        others > 0
    }

    /// Declares `queue` durable with `args` (a stream's type and retention, or none); if it
    /// exists with other arguments, checks it passively instead and uses it as it is. With
    /// `known` (a queue this source has read), first looks whether it still exists: the flag
    /// returned says it did not (it was deleted; the declare made a new, empty one). Also
    /// returns how many consumers the queue has (before this source's).
    async fn declare_queue(&self, mut chan: Channel, queue: &str, args: &FieldTable, known: bool) -> Result<(Channel, bool, u32), String> {
        let mut gone = false;
        if known {
            if let Err(err) = look_up(&chan, queue).await? {
                if !is_not_found(&err) {
                    return Err(format!("queue declare (passive): {err}"));
                }
                // The 404 closed the channel.
                gone = true;
                chan = self.link.channel().await?;
            }
        }
        let opts = QueueDeclareOptions { durable: true, ..Default::default() };
        match answered(chan.queue_declare(queue.into(), opts, args.clone())).await? {
            Ok(q) => Ok((chan, gone, q.consumer_count())),
            Err(err) => {
                warn!(channel = %self.name, queue = %queue, error = %err, "queue declare refused; checking it exists");
                let chan = self.link.channel().await?;
                let q = look_up(&chan, queue).await?.map_err(|e| format!("queue declare: {e}"))?;
                Ok((chan, gone, q.consumer_count()))
            }
        }
    }
}

/// Declares `queue` passively: whether it exists, and its counts. As [`answered`].
async fn look_up(chan: &Channel, queue: &str) -> Result<Result<lapin::Queue, lapin::Error>, String> {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    answered(chan.queue_declare(queue.into(), passive, FieldTable::default())).await
}

/// Binds `queue` to `exchange` with each of `keys` (again: a binding that exists is kept). As
/// [`answered`]: the outer error is a call not answered in time, the inner one the broker's.
async fn bind(chan: &Channel, queue: &str, exchange: &str, keys: &[String]) -> Result<Result<(), lapin::Error>, String> {
    for key in keys {
        let bind = chan.queue_bind(queue.into(), exchange.into(), key.as_str().into(), QueueBindOptions::default(), FieldTable::default());
        if let Err(e) = answered(bind).await? {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

/// Whether the broker answered 404 NOT_FOUND (a passive declare of a queue that does not exist).
fn is_not_found(err: &lapin::Error) -> bool {
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(e)
        if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)))
}

/// Maps a delivery to the core's message (D4): type property, routing key, two headers,
/// message id, body. The position is `None` here (classic queues have no offsets); a stream's
/// reader sets it from [`stream_log::offset`]. `received` is set by the live source only.
/// The message of a delivery; its body is moved out (a message may be as large as the broker
/// allows, checked against `max_message_bytes` only later: never held twice).
fn message(d: &mut Delivery) -> UpstreamMessage {
    let p = &d.properties;
    let raw = |name: &str| p.headers().as_ref().and_then(|h| h.inner().get(name));
    let header = |name: &str| raw(name).and_then(header_value);
    UpstreamMessage {
        kind: p.kind().as_ref().map(|k| k.as_str().to_string()),
        routing_key: d.routing_key.as_str().to_string(),
        recipient_ids: recipients(raw("recipient_ids")),
        schema_version: header("schema_version"),
        message_id: p.message_id().as_ref().map(|m| m.as_str().to_string()),
        body: std::mem::take(&mut d.data).into(),
        position: None,
        received: None,
        misnamed: p.headers().as_ref().and_then(|h| misnamed_header(h.inner().keys().map(|k| k.as_str()))),
    }
}

/// A header's value as the core reads it; a void one (`V`: what pika, Go's, Java's and amqplib's
/// clients send for None / nil / null) is no header, as `null` is at the publish endpoint.
fn header_value(v: &AMQPValue) -> Option<HeaderValue> {
    Some(match v {
        AMQPValue::Void => return None,
        AMQPValue::ShortShortInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::ShortInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::ShortUInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::LongInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::LongUInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::ShortString(s) => HeaderValue::Text(s.as_str().to_string()),
        // A byte array is how several clients send bytes (pika `bytes`, Go `[]byte`, Java
        // `byte[]`): as text when it is UTF-8, like a long string.
        AMQPValue::LongString(s) => utf8_text(s.as_bytes()),
        AMQPValue::ByteArray(b) => utf8_text(b.as_slice()),
        _ => HeaderValue::Other,
    })
}

/// The `recipient_ids` header: present and void (a publisher's None / nil / null, say for a list
/// that came out empty) is [`HeaderValue::no_recipients`], never read as absent.
fn recipients(v: Option<&AMQPValue>) -> Option<HeaderValue> {
    match v {
        Some(AMQPValue::Void) => Some(HeaderValue::no_recipients()),
        v => v.and_then(header_value),
    }
}

/// Whether two deliveries carry the same message: what every delivery of one stream position
/// has alike (not when or where it was received).
/// The headers that decide who gets it and in which version are part of it.
fn same_message(a: &UpstreamMessage, b: &UpstreamMessage) -> bool {
    (&a.kind, &a.routing_key, &a.message_id, &a.body, &a.recipient_ids, &a.schema_version, &a.misnamed)
        == (&b.kind, &b.routing_key, &b.message_id, &b.body, &b.recipient_ids, &b.schema_version, &b.misnamed)
}

fn utf8_text(bytes: &[u8]) -> HeaderValue {
    std::str::from_utf8(bytes).map_or(HeaderValue::Other, |t| HeaderValue::Text(t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_added_only_when_missing() {
        assert_eq!(with_heartbeat("amqp://h/%2f"), "amqp://h/%2f?heartbeat=10");
        assert_eq!(with_heartbeat("amqp://h/%2f?frame_max=8192"), "amqp://h/%2f?frame_max=8192&heartbeat=10");
        assert_eq!(with_heartbeat("amqp://h/%2f?heartbeat=30"), "amqp://h/%2f?heartbeat=30");
    }

    #[test]
    fn integer_and_string_headers_map_and_others_are_refused() {
        assert_eq!(header_value(&AMQPValue::LongInt(2)), Some(HeaderValue::Int(2)));
        assert_eq!(header_value(&AMQPValue::LongString("a,b".into())), Some(HeaderValue::Text("a,b".into())));
        assert_eq!(header_value(&AMQPValue::Double(1.0)), Some(HeaderValue::Other));
        assert_eq!(header_value(&AMQPValue::ByteArray(b"u1,u2".to_vec().into())), Some(HeaderValue::Text("u1,u2".into())));
        assert_eq!(header_value(&AMQPValue::ByteArray(b"u1\xff".to_vec().into())), Some(HeaderValue::Other));
        assert_eq!(header_value(&AMQPValue::LongString(b"u1\xff".to_vec().into())), Some(HeaderValue::Other));
        // Void (a client's None / nil / null) is no header: a broadcast, version 1.
        assert_eq!(header_value(&AMQPValue::Void), None);
        // The same message at a position: headers deciding who gets it, and its version, count.
        let m = UpstreamMessage { kind: Some("deal.created".into()), routing_key: "deal.created".into(), body: "{}".into(), ..Default::default() };
        assert!(same_message(&m, &UpstreamMessage { position: Some(3), received: Some(Instant::now()), ..m.clone() }));
        assert!(!same_message(&m, &UpstreamMessage { recipient_ids: Some(HeaderValue::Text("bob".into())), ..m.clone() }));
        assert!(!same_message(&m, &UpstreamMessage { schema_version: Some(HeaderValue::Int(2)), ..m.clone() }));
        assert!(!same_message(&m, &UpstreamMessage { body: "{\"a\":1}".into(), ..m.clone() }));
        // But a void recipient list names no one: it is not a broadcast.
        assert_eq!(recipients(Some(&AMQPValue::Void)), Some(HeaderValue::no_recipients()));
        assert_eq!(recipients(None), None);
        assert_eq!(recipients(Some(&AMQPValue::LongString("u1".into()))), Some(HeaderValue::Text("u1".into())));
    }

    #[test]
    fn only_a_consumer_that_took_a_delivery_or_ran_a_while_restarts_the_backoff() {
        let max = Duration::from_secs(30);
        let t0 = Instant::now();
        assert!(!Attempt::default().healthy(max, t0 + max), "never consumed");
        let just_now = Attempt { consuming_since: Some(t0), took: false, up: true };
        assert!(!just_now.healthy(max, t0), "consumed and failed at once (a delivery it cannot take, a flapping link)");
        assert!(!just_now.healthy(max, t0 + max - Duration::from_millis(1)), "ran a little less than reconnect_max");
        assert!(Attempt { took: true, ..just_now }.healthy(max, t0), "took a delivery");
        assert!(just_now.healthy(max, t0 + max), "an idle consumer that ran a while");
    }
}
