//! RabbitMQ stream queues as the event log (D6): the queue and consumer arguments, a delivery's
//! offset, and [`LogReader`], which reads a stream back for resuming clients.
//!
//! Facts this relies on (RabbitMQ 3.9+, AMQP 0-9-1):
//! * A stream queue is declared durable, non-exclusive, `x-queue-type = "stream"`, with its
//!   retention (`x-max-age`, `x-max-length-bytes`). Retention removes whole segments (500 MB
//!   unless `x-stream-max-segment-size-bytes` says otherwise), oldest first: the resume window
//!   is at least the configured retention.
//! * Consuming needs `basic.qos` (prefetch) and manual acks; an ack only refills the prefetch
//!   window (nothing is removed). The consumer argument `x-stream-offset` says where to start:
//!   `"first"`, `"last"` (the last chunk), `"next"` or an offset (a long-long integer).
//! * Every delivery carries its offset in header `x-stream-offset`. Offsets increase, but not
//!   always by one: the stream spends single offsets on records of its own (measured on 3.10:
//!   one now and then at a segment start; never two in a row), which consumers do not see. A
//!   consumer that retention overtakes jumps a whole segment: the core's `log_continues` tells
//!   the two apart.
//! * An offset the stream no longer holds is clamped silently to its first one. So a reader
//!   starts at the offset the client (or the live source) already has: if the first delivery is
//!   that offset (or the next, when only that one is gone), nothing was lost; if it is later,
//!   the range is gone.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Consumer};
use sse_gateway_core::config::{SourceSettings, StreamLog};
use sse_gateway_core::{Backoff, ChannelId, Event, Ingest, Metrics, RecentIds, Settings, UpstreamMessage};
use tracing::warn;

use super::turns::{Turn, Turns};
use super::{answered, message, Acks, Link};
use crate::common::shards::Shards;
use crate::common::until;

/// Read-backs running at once in the process; more wait their turn (each holds an AMQP
/// channel, a consumer and up to [`PREFETCH`] messages in flight).
pub(crate) const READ_BACKS: usize = 8;
/// Messages a read-back has in flight (`basic.qos`).
const PREFETCH: u16 = 64;
/// Deliveries acked at once (`multiple`), to spare a frame per message.
pub(crate) const ACK_EVERY: u32 = 32;
/// A read-back that receives nothing for this long has reached the end of the stream.
pub(crate) const IDLE: Duration = Duration::from_millis(1500);
/// How long a read-back's consumer waits for its first message, the one at its offset (a stream
/// that holds it sends it at once; a broker seeking far into a long stream may take a while).
/// Nothing by then: nothing proves the client's place (`history_gap`).
pub(crate) const FIRST_WAIT: Duration = Duration::from_secs(5);
/// At most one `read-back could not start` line this often (the first failure gets one at once).
const FAILURE_LINES: Duration = Duration::from_secs(10);

/// The arguments that make a queue a stream with this retention.
pub(crate) fn queue_args(log: &StreamLog) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    args.insert("x-max-age".into(), AMQPValue::LongString(log.max_age.as_str().into()));
    if let Some(bytes) = log.max_length_bytes {
        args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(i64::try_from(bytes).unwrap_or(i64::MAX)));
    }
    args
}

/// Where a stream consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// The first chunk written at or after this time (POSIX seconds; the broker clamps it to
    /// the stream's first retained chunk).
    Since(u64),
    /// The stream's last chunk (its most recent messages).
    Last,
    /// What is written after the consumer starts.
    Next,
    /// This offset (clamped by the broker to the first retained one).
    Offset(u64),
}

impl StartAt {
    /// The `basic.consume` arguments.
    pub(crate) fn consumer_args(self) -> FieldTable {
        let value = match self {
            StartAt::Since(t) => AMQPValue::Timestamp(t),
            StartAt::Last => AMQPValue::LongString("last".into()),
            StartAt::Next => AMQPValue::LongString("next".into()),
            // A number sent as a string is refused: it must be a long-long integer.
            StartAt::Offset(o) => AMQPValue::LongLongInt(i64::try_from(o).unwrap_or(i64::MAX)),
        };
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), value);
        args
    }
}

impl fmt::Display for StartAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartAt::Since(t) => write!(f, "chunks written since unix time {t}"),
            StartAt::Last => f.write_str("last"),
            StartAt::Next => f.write_str("next"),
            StartAt::Offset(o) => write!(f, "offset {o}"),
        }
    }
}

/// The stream offset of a delivery (header `x-stream-offset`), if it has one.
pub(crate) fn offset(d: &Delivery) -> Option<u64> {
    let headers = d.properties.headers().as_ref()?;
    offset_of(headers.inner().get("x-stream-offset")?)
}

fn offset_of(v: &AMQPValue) -> Option<u64> {
    match v {
        AMQPValue::LongLongInt(o) => u64::try_from(*o).ok(),
        AMQPValue::LongInt(o) => u64::try_from(*o).ok(),
        AMQPValue::LongUInt(o) => Some((*o).into()),
        _ => None,
    }
}

/// A consumer of `queue` (a stream) on `chan` from `at`, with `prefetch` messages in flight.
pub(crate) async fn consume_at(chan: &Channel, queue: &str, prefetch: u16, at: StartAt) -> Result<Consumer, String> {
    let e = |what: &'static str| move |e: lapin::Error| format!("{what}: {e}");
    answered(chan.basic_qos(prefetch, BasicQosOptions::default())).await?.map_err(e("basic.qos"))?;
    let consume = chan.basic_consume(queue.into(), ShortString::from(""), BasicConsumeOptions::default(), at.consumer_args());
    answered(consume).await?.map_err(e("basic.consume"))
}

/// A stream delivery's position (`x-stream-offset`, which it must have) and message (with it).
pub(crate) fn log_message(d: &mut Delivery) -> Result<(u64, UpstreamMessage), String> {
    let pos = offset(d).ok_or("a stream delivery without x-stream-offset")?;
    let mut msg = message(d);
    msg.position = Some(pos);
    Ok((pos, msg))
}

/// A stream channel as the reader sees it.
struct Log {
    id: ChannelId,
    /// The channel's name (for the log).
    name: String,
    queue: String,
    epoch: u64,
    /// Validates and numbers what is read back (`Ingest::read_back`: no live state, no counts).
    ingest: Ingest,
}

/// Reads streams back for resuming clients (`Output::Backfill`), shared by every shard: one
/// connection of its own (opened on first use), at most [`READ_BACKS`] read-backs at once in the
/// process, each on its own AMQP channel with a small prefetch.
pub(crate) struct LogReader {
    link: Link,
    /// Served in arrival order: a turn given up goes to the read-back that waited longest.
    turns: Arc<Turns>,
    /// Turns being given up for waiters now ([`LogReader::claim_handoff`]): one waiter, one
    /// holder giving its turn up, not every holder past its time.
    handing_off: AtomicUsize,
    /// By channel index; `None` for a channel that is not a stream.
    logs: Vec<Option<Log>>,
    /// The live sources' state: a read-back is only tried while its channel's source is up.
    shards: Shards,
    /// Read-backs that could not start (`LogReader::open`), for their rate-limited line.
    failures: Mutex<FailureLog>,
    /// After the read-back connection could not be connected, the time until the next try.
    pause: Mutex<ConnectPause>,
}

/// After a failure to connect the read-back connection, read-backs fail at once
/// with that failure (their streams get `history_gap`, as they would after the attempt) until a
/// pause is over: 0.5-1 s after the first failure, doubling up to 15-30 s, back to the start once
/// a channel is had. A resume storm against a broker that refuses the second connection (its
/// per-user limit) or does not answer it would otherwise make a connect attempt per resume.
#[derive(Debug)]
struct ConnectPause {
    until: Option<(Instant, String)>,
    backoff: Backoff,
    /// The link's failed connects counted so far: the read-backs that waited for one attempt
    /// each see its failure, which lengthens the pause once.
    counted: u64,
}

impl Default for ConnectPause {
    fn default() -> ConnectPause {
        ConnectPause { until: None, backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)), counted: 0 }
    }
}

impl ConnectPause {
    /// The last failure, while its pause lasts at `now`.
    fn paused(&self, now: Instant) -> Option<String> {
        self.until.as_ref().filter(|(end, _)| now < *end).map(|(_, e)| e.clone())
    }

    /// The link's `failed`-th failed connect, seen at `now` (`random`: any `u64`, for the spread
    /// of the pause); one already counted, or older (read before another thread's), changes
    /// nothing.
    fn failed(&mut self, failed: u64, now: Instant, error: &str, random: u64) {
        if failed <= self.counted {
            return;
        }
        self.counted = failed;
        self.until = Some((now + self.backoff.next_wait(random), error.to_string()));
    }

    /// A channel was had, the link's failed connects at `failed` by then: a failure counted
    /// before it (a read-back late to report it) pauses nothing.
    fn succeeded(&mut self, failed: u64) {
        self.until = None;
        self.backoff.reset();
        self.counted = self.counted.max(failed);
    }
}

/// Rate-limits the `read-back could not start` line: the first failure gets a line at once,
/// later ones at most one every [`FAILURE_LINES`], each line counting the failures since the
/// last one (itself included). Failures after the last line are counted in the next one (none
/// if none comes).
#[derive(Debug, Default)]
struct FailureLog {
    /// When the last line was written.
    said: Option<Instant>,
    /// Failures since then, without a line.
    unsaid: u64,
}

impl FailureLog {
    /// A failure at `now`: the failures the line to write now stands for, if one is due.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.unsaid += 1;
        if self.said.is_some_and(|at| now.saturating_duration_since(at) < FAILURE_LINES) {
            return None;
        }
        self.said = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }
}

impl fmt::Debug for LogReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogReader").field("streams", &self.channels().count()).finish_non_exhaustive()
    }
}

impl LogReader {
    pub(super) fn new(link: Link, settings: &Arc<Settings>, metrics: &Arc<Metrics>, shards: Shards) -> LogReader {
        let logs = settings
            .channels
            .iter()
            .map(|ch| {
                let log = ch.log.as_ref()?;
                let id = settings.channel_id(&ch.name)?;
                let queue = match &ch.source {
                    SourceSettings::Exchange { queue, .. } | SourceSettings::Queue { queue } => queue.clone(),
                };
                let ingest = Ingest::new(settings.clone(), metrics.clone(), id, log.epoch);
                Some(Log { id, name: ch.name.clone(), queue, epoch: log.epoch, ingest })
            })
            .collect();
        LogReader { link, turns: Turns::new(READ_BACKS), handing_off: AtomicUsize::new(0), logs, shards, failures: Mutex::default(), pause: Mutex::default() }
    }

    /// The stream channels and the epoch of their ids (for `Gateway::set_history`).
    pub(crate) fn channels(&self) -> impl Iterator<Item = (ChannelId, u64)> + '_ {
        self.logs.iter().flatten().map(|log| (log.id, log.epoch))
    }

    /// Waits for a turn (one of [`READ_BACKS`], in arrival order) until `by`; `None` if none
    /// came by then.
    pub(crate) async fn permit(&self, by: Instant) -> Option<Turn> {
        match self.turns.take() {
            Ok(turn) => Some(turn),
            Err(mut waiter) => until(by, waiter.turn()).await,
        }
    }

    /// For the caller, a read-back past its time: `Some` if it should give its turn up, for as
    /// many callers as there are waiters no turn is being given up for already. Hold the
    /// [`Handoff`] until the turn is let go (it then goes straight to the first waiter).
    pub(crate) fn claim_handoff(&self) -> Option<Handoff<'_>> {
        let mut given = self.handing_off.load(Ordering::Relaxed);
        loop {
            if self.turns.waiting() <= given {
                return None;
            }
            match self.handing_off.compare_exchange(given, given + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(Handoff(self)),
                Err(now) => given = now,
            }
        }
    }

    /// Waits while `channel`'s source has never been up since the process started (up to
    /// [`FIRST_WAIT`], whether its first connects are slow or refused meanwhile): a client
    /// resuming right after a restart is read back once the broker answers, rather than
    /// answered `history_gap` because the gateway was a moment early. An error when the source
    /// is down after having been up (an outage), or still not up by then.
    pub(crate) async fn source_ready(&self, channel: ChannelId) -> Result<(), String> {
        let by = Instant::now() + FIRST_WAIT;
        while !self.shards.is_up(channel) {
            if self.shards.ever_up(channel) || Instant::now() >= by {
                return Err("the channel's source is down".into());
            }
            crate::common::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// The `message_id` window one read-back of `channel` keeps across its cursors (a paused
    /// read-back opens a new one): a publisher's retry is dropped as it was live.
    pub(crate) fn window(&self, channel: ChannelId) -> Result<RecentIds, String> {
        Ok(self.log(channel)?.ingest.read_back_window())
    }

    fn log(&self, channel: ChannelId) -> Result<&Log, String> {
        self.logs.get(channel.index()).and_then(Option::as_ref).ok_or_else(|| "not a stream channel".to_string())
    }

    /// A channel on the read-back connection; during the pause after a failed connect, that
    /// failure at once ([`ConnectPause`]).
    async fn link_channel(&self) -> Result<Channel, String> {
        let pause = || self.pause.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = pause().paused(Instant::now()) {
            return Err(e);
        }
        let failed_before = self.link.connects_failed.load(Ordering::Acquire);
        let got = self.link.channel().await;
        let failed = self.link.connects_failed.load(Ordering::Acquire);
        match &got {
            Ok(_) => pause().succeeded(failed),
            // A connect failed (this one's, or the one it waited for): not a channel refused on
            // a connection, which the next read-back tries again on a new one at once.
            Err(e) if failed != failed_before => pause().failed(failed, Instant::now(), e, getrandom::u64().unwrap_or(0)),
            Err(_) => {}
        }
        got
    }

    /// Opens a consumer on `channel`'s stream at offset `at`, holding `permit` until the cursor
    /// is closed or dropped. A failure to get the read-back connection, a channel on it, or the
    /// consumer (never the client's doing, and every resume past the buffers gets
    /// `history_gap` while it lasts) is logged at warn, rate-limited ([`FailureLog`]).
    pub(crate) async fn open(&self, channel: ChannelId, at: u64, permit: Turn) -> Result<LogCursor<'_>, String> {
        let log = self.log(channel)?;
        if !self.shards.is_up(channel) {
            // During an outage a read-back would only wait for the connect timeout, one after
            // the other: answer at once (the stream gets history_gap). The source logs the outage.
            return Err("the channel's source is down".into());
        }
        let opened = async {
            let chan = self.link_channel().await?;
            let consumer = consume_at(&chan, &log.queue, PREFETCH, StartAt::Offset(at)).await?;
            Ok::<_, String>((chan, consumer))
        };
        match opened.await {
            Ok((chan, consumer)) => Ok(LogCursor { log, chan, consumer, acks: Acks::new(ACK_EVERY), _permit: permit }),
            Err(e) => {
                let line = self.failures.lock().unwrap_or_else(|p| p.into_inner()).failed(Instant::now());
                if let Some(failures) = line {
                    warn!(channel = %log.name, error = %e, failures, "read-back could not start; resumes older than the buffer get history_gap");
                }
                Err(e)
            }
        }
    }
}

/// A turn being given up for a waiter ([`LogReader::claim_handoff`]); counted until dropped.
pub(crate) struct Handoff<'r>(&'r LogReader);

impl Drop for Handoff<'_> {
    fn drop(&mut self) {
        self.0.handing_off.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One read-back's consumer. Close it with [`LogCursor::close`]: dropping it has lapin close the
/// AMQP channel in the background (its last `Channel` handle gone), with no answer awaited.
pub(crate) struct LogCursor<'r> {
    log: &'r Log,
    chan: Channel,
    consumer: Consumer,
    acks: Acks,
    _permit: Turn,
}

impl LogCursor<'_> {
    /// The next message: its offset, and its event if it passes the channel's rules. `None`
    /// once nothing arrived for `idle` (the end of the stream, as far as anyone can tell).
    /// `seen` is the read-back's `message_id` window ([`LogReader::window`]).
    pub(crate) async fn next(&mut self, idle: Duration, seen: &mut RecentIds) -> Result<Option<(u64, Option<Event>)>, String> {
        let mut d = match until(Instant::now() + idle, self.consumer.next()).await {
            None => return Ok(None),
            Some(None) => return Err("the read-back consumer was cancelled".into()),
            Some(Some(Err(e))) => return Err(format!("read-back consumer: {e}")),
            Some(Some(Ok(d))) => d,
        };
        let (pos, msg) = log_message(&mut d)?;
        // Dropped messages were logged when the live source met them; here they only hold a place.
        let ev = crate::common::contained(|| self.log.ingest.read_back(&msg, seen).ok()).flatten();
        // Acks only refill the prefetch window here.
        self.acks.handled(d.acker).await?;
        Ok(Some((pos, ev)))
    }

    /// Cancels the consumer and closes its channel; lets the permit go in any case, at the
    /// latest when the broker did not answer (each call within its timeout).
    pub(crate) async fn close(mut self) {
        let _ = self.acks.flush().await;
        super::cancel_then_close(&self.chan, Some(&self.consumer), "read-back done").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_backs_fail_at_once_for_a_while_after_the_connection_could_not_be_had() {
        let t0 = Instant::now();
        let mut p = ConnectPause::default();
        assert_eq!(p.paused(t0), None);
        p.failed(1, t0, "refused", 0);
        // The first pause is 0.5-1 s (here its shortest), the next one twice as long. The
        // read-backs that waited for the same connect see its failure too: counted once.
        for _ in 0..7 {
            p.failed(1, t0, "refused", u64::MAX);
        }
        // A count read before another's failure raced in: not counted again.
        p.failed(0, t0, "refused", u64::MAX);
        assert_eq!(p.paused(t0 + Duration::from_millis(499)).as_deref(), Some("refused"));
        assert_eq!(p.paused(t0 + Duration::from_millis(500)), None);
        let t1 = t0 + Duration::from_secs(1);
        p.failed(2, t1, "refused again", 1000);
        assert_eq!(p.paused(t1 + Duration::from_millis(1999)).as_deref(), Some("refused again"));
        assert_eq!(p.paused(t1 + Duration::from_secs(2)), None);
        // Doubling stops at 30 s.
        for n in 3..13 {
            p.failed(n, t1, "down", 15_000);
        }
        assert_eq!(p.paused(t1 + Duration::from_secs(30)), None);
        assert!(p.paused(t1 + Duration::from_millis(29_999)).is_some());
        // A channel had: no pause, and the next failure's is the first again.
        p.succeeded(12);
        assert_eq!(p.paused(t1), None);
        // A failure reported late, after a channel was had: no pause on a working connection.
        p.failed(12, t1, "refused", 500);
        assert_eq!(p.paused(t1), None);
        p.failed(13, t1, "refused", 500);
        assert!(p.paused(t1 + Duration::from_millis(999)).is_some());
        assert_eq!(p.paused(t1 + Duration::from_secs(1)), None);
    }

    #[test]
    fn read_back_failures_get_a_line_at_once_then_at_most_one_every_interval_counting_the_rest() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut log = FailureLog::default();
        assert_eq!(log.failed(at(0)), Some(1), "the first failure, at once");
        assert_eq!(log.failed(at(1)), None);
        assert_eq!(log.failed(at(9_999)), None);
        assert_eq!(log.failed(at(10_000)), Some(3), "two without a line, and this one");
        assert_eq!(log.failed(at(10_001)), None);
        // Quiet for a while: the next failure gets its line at once, counting the one unsaid.
        assert_eq!(log.failed(at(60_000)), Some(2));
        assert_eq!(log.failed(at(70_000)), Some(1));
    }

    #[test]
    fn a_stream_is_declared_with_its_type_and_retention() {
        let log = StreamLog { max_age: "7D".into(), max_length_bytes: Some(1 << 30), epoch: 1 };
        let args = queue_args(&log);
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-queue-type"), Some(AMQPValue::LongString("stream".into())));
        assert_eq!(get("x-max-age"), Some(AMQPValue::LongString("7D".into())));
        assert_eq!(get("x-max-length-bytes"), Some(AMQPValue::LongLongInt(1 << 30)));
        let no_size = queue_args(&StreamLog { max_length_bytes: None, ..log });
        assert!(no_size.inner().get("x-max-length-bytes").is_none());
    }

    #[test]
    fn an_offset_is_asked_for_as_a_long_long_integer_and_read_back_from_any_integer() {
        let args = StartAt::Offset(42).consumer_args();
        assert_eq!(args.inner().get("x-stream-offset"), Some(&AMQPValue::LongLongInt(42)));
        assert_eq!(StartAt::Last.consumer_args().inner().get("x-stream-offset"), Some(&AMQPValue::LongString("last".into())));
        assert_eq!(StartAt::Next.consumer_args().inner().get("x-stream-offset"), Some(&AMQPValue::LongString("next".into())));
        assert_eq!(StartAt::Since(1_800_000_000).consumer_args().inner().get("x-stream-offset"), Some(&AMQPValue::Timestamp(1_800_000_000)));
        assert_eq!(offset_of(&AMQPValue::LongLongInt(7)), Some(7));
        assert_eq!(offset_of(&AMQPValue::LongLongInt(-1)), None);
        assert_eq!(offset_of(&AMQPValue::LongString("7".into())), None);
    }
}
