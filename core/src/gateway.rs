//! The stream state machine: one [`Gateway`] per shard.
//!
//! Inputs (`open`, `handle_event`, `source_down`/`source_up`, `on_closed`, `handle_timeout`, the
//! backfill pair) change state and queue work; outputs are drained with [`Gateway::poll_output`],
//! [`Gateway::take_output`] and [`Gateway::poll_timeout`]. Every input leaves the state
//! consistent, so the drain order is free; the frontend's loop is:
//!
//! 1. apply one input;
//! 2. drain `poll_output()` until `None`: `Transmit(id)` wakes the writer of stream `id`, which
//!    calls `take_output(id, ..)` when its socket is writable; `Close(id, _)` tells it to write
//!    what `take_output` still returns, close the socket and call `on_closed(id)`;
//!    `Backfill` asks it to read older events from the source;
//! 3. re-arm its timer at `poll_timeout()` if that moved.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::buffer::{Lookup, ResumeBuffer};
use crate::config::{LimitPolicy, Settings};
use crate::http::{Refusal, Response, Resume, StreamRequest};
use crate::ingest::Event;
use crate::metrics::{CloseReason, DelayHistogram, Metrics};
use crate::{sse, ChannelId, EventId, StreamId};

/// What the frontend must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Output {
    /// Stream has bytes waiting: call [`Gateway::take_output`] when its socket can take them.
    Transmit(StreamId),
    /// Flush what `take_output` still returns, close the connection, then call
    /// [`Gateway::on_closed`]. The stream receives nothing more.
    Close(StreamId, CloseReason),
    /// Read the channel's log from position `after.seq` (the client's own last event, so the
    /// first message proves the log still holds the range) and hand every message (valid or
    /// dropped) to [`Gateway::backfill_message`] until it answers `Finished`; if the log ends or
    /// fails first, call [`Gateway::backfill_done`]. Positions increase, with at most
    /// [`LOG_SKIP`] left out between two messages. Only asked for channels marked with
    /// [`Gateway::set_history`].
    Backfill {
        /// The stream waiting for them.
        stream: StreamId,
        /// Its channel.
        channel: ChannelId,
        /// The last event the client has.
        after: EventId,
        /// The last position to read: the buffer holds everything after it (`u64::MAX`: this shard
        /// has seen nothing of the log yet; read to its end).
        until: u64,
    },
}

/// Positions a log may leave out between two of its messages without having lost one: a
/// RabbitMQ stream spends single offsets on records of its own (a tracking snapshot at some
/// segment starts), while retention removes whole segments, far more than one position. A
/// longer jump between two messages read in one go means the log lost messages meanwhile (its
/// retention overtook the reader).
pub const LOG_SKIP: u64 = 1;

/// Whether a log read in one go went from position `prev` to `next` without losing a message
/// (see [`LOG_SKIP`]).
pub fn log_continues(prev: u64, next: u64) -> bool {
    next <= prev.saturating_add(1 + LOG_SKIP)
}

/// Whether two reads of a log by different consumers, one that ended at position `end` and one
/// whose first message is at `start`, leave nothing out between them. No skip is allowed (unlike
/// [`log_continues`] within one read): a position neither delivered may be a message the first
/// did not get to before it ended (it ends on silence). A skipped record of the log's own costs a
/// needless read-back, not an event.
pub fn logs_meet(end: u64, start: u64) -> bool {
    start <= end.saturating_add(1)
}

/// Whether a read of a log opened at position `at` (the last one its reader has) and first
/// delivering `first` still holds what follows `at`: it starts at `at`, or right after it if only
/// `at` itself is gone.
pub fn log_resumes(at: u64, first: u64) -> bool {
    first <= at.saturating_add(1)
}

/// What [`Gateway::backfill_message`] wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum BackfillStep {
    /// Hand over the next message.
    Continue,
    /// The stream's output is at its bound: wait until it drained (its `Transmit` was taken),
    /// then continue.
    Pause,
    /// Stop reading: the stream has what it needs from the log (or the log lost the range and
    /// the stream got `history_gap`).
    Finished,
}

/// Why [`Gateway::poll_timeout`] wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerReason {
    /// A stream's heartbeat is due (D7).
    Heartbeat,
    /// A stream's token expires (D1).
    TokenExpiry,
    /// A down source's warning is due (D8).
    SourceWarning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Heartbeat(StreamId),
    Expiry(StreamId),
    Warning(ChannelId),
}

impl Timer {
    fn reason(self) -> TimerReason {
        match self {
            Timer::Heartbeat(_) => TimerReason::Heartbeat,
            Timer::Expiry(_) => TimerReason::TokenExpiry,
            Timer::Warning(_) => TimerReason::SourceWarning,
        }
    }
}

/// Frames a stream's drained output queue keeps room for; a larger one (grown by a catch-up)
/// is freed.
pub const KEEP_FRAMES: usize = 32;

/// How far control frames may take a catching-up stream's output past its bound ([`Gateway::push`]).
const CONTROL_SLACK: usize = 1024;

#[derive(Debug)]
struct Stream {
    user: Arc<str>,
    channel: ChannelId,
    version: u32,
    opened_at: Instant,
    heartbeat_at: Instant,
    expires_at: Option<Instant>,
    pending: Vec<Bytes>,
    pending_bytes: usize,
    /// When the oldest live event in `pending` arrived (`Event::received`), for the delay
    /// histogram; cleared when the output is taken.
    waiting_since: Option<Instant>,
    transmit_queued: bool,
    /// Bytes of control frames (heartbeats, warnings) in `pending`: what is left is the events'
    /// level, which a catch-up may take past the bound and the slack is counted from.
    control_bytes: u32,
    /// Bytes in `pending` that are neither events nor control frames counted against the slack:
    /// the response head, `retry:`, a warning queued at the open and a resume's `history_gap`
    /// (a log gap's goes through `push`, a control frame), until taken. An output holding only
    /// these and control frames takes any one event, as an empty one does.
    raw_bytes: u32,
    /// Output was waiting at the last heartbeat tick and none has been taken since: at the next
    /// tick, a stream still in that state has not taken a frame for a whole interval (stalled).
    unsent_at_tick: bool,
    /// Index in its channel's member list; `None` once closing.
    member: Option<usize>,
    /// Resuming: the last event the client has. While set, live events are not queued directly;
    /// the stream reads them from the buffer (or the source) in order, as its socket drains.
    cursor: Option<EventId>,
    /// The cursor is older than the buffer and the source is reading back for it.
    backfilling: Option<ReadBack>,
    /// Live events up to this seq are not sent: the client resumed from an id of a log channel
    /// that this shard had not seen yet (another instance was ahead, or the read-back ended before
    /// the live source reached it), so it already has them. Also after a `history_gap` on a
    /// resume from the log's epoch: the client refetches what it missed, but its ids must still
    /// only grow.
    skip_through: Option<u64>,
    /// Went live where a read-back found the log's end before anything had arrived live: the
    /// first live event past this seq must follow it (`logs_meet`). One that does not shows
    /// the read-back ended early (a broker slow to send, taken for the end): the stream reads
    /// the log again from here instead of skipping what lies between.
    live_check: Option<u64>,
}

impl Stream {
    /// Bytes of event frames in `pending` (what is neither raw nor a control frame).
    fn events_bytes(&self) -> usize {
        self.pending_bytes.saturating_sub(self.control_bytes as usize + self.raw_bytes as usize)
    }

    /// The client has the event at `seq` already (`skip_through`): it is not sent, so ids only
    /// grow.
    fn already_has(&self, seq: u64) -> bool {
        self.skip_through.is_some_and(|s| seq <= s)
    }
}

/// A read-back in progress for one stream.
#[derive(Debug, Clone, Copy)]
struct ReadBack {
    /// The last position to read: the buffer holds everything after it.
    until: u64,
    /// A first message was handed over (and proved the log still holds the cursor).
    started: bool,
    /// A message past the client's place was handed over.
    moved: bool,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    stream: Option<Stream>,
}

#[derive(Debug)]
struct Channel {
    members: Vec<StreamId>,
    buffer: ResumeBuffer,
    down_since: Option<Instant>,
    warning_at: Option<Instant>,
    /// The epoch of the source's own log, when it keeps one the frontend can read back.
    history: Option<u64>,
    /// Streams with a `live_check` pending (looked at by the next live event only).
    live_checks: Vec<StreamId>,
    /// The source is reading recent history into the buffer ([`Gateway::prime_start`]):
    /// resumes wait for it to end.
    priming: bool,
    /// The last log position read while priming, until a live event passes it: live events at
    /// or before it are already buffered (a chunk written after the live consumer started,
    /// read by both), and go only to the streams that do not have them.
    primed: Option<u64>,
}

/// A small deterministic RNG (SplitMix64) for `retry:` jitter: no global randomness in the core.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// One shard of the gateway: its streams, users, channel buffers and timers.
#[derive(Debug)]
pub struct Gateway {
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    /// This shard's `sse_gateway_delivery_delay_seconds` counts.
    delays: Arc<DelayHistogram>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    open: usize,
    max_streams: usize,
    users: HashMap<Arc<str>, Vec<StreamId>>,
    channels: Vec<Channel>,
    timers: BTreeSet<(Instant, Timer)>,
    outputs: VecDeque<Output>,
    rng: Rng,
    shutting_down: bool,
}

impl Gateway {
    /// A shard holding at most `max_streams` streams; `seed` drives its `retry:` jitter.
    pub fn new(settings: Arc<Settings>, metrics: Arc<Metrics>, max_streams: usize, seed: u64) -> Gateway {
        let channels = settings
            .channels
            .iter()
            .map(|c| Channel {
                members: Vec::new(),
                buffer: ResumeBuffer::new(c.buffer_events),
                down_since: None,
                warning_at: None,
                history: None,
                live_checks: Vec::new(),
                priming: false,
                primed: None,
            })
            .collect();
        Gateway {
            settings,
            delays: metrics.delay_histogram(),
            metrics,
            slots: Vec::new(),
            free: Vec::new(),
            open: 0,
            max_streams,
            users: HashMap::new(),
            channels,
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            rng: Rng(seed),
            shutting_down: false,
        }
    }

    // ---- getters ----

    /// Streams open (not closing) in this shard.
    pub fn stream_count(&self) -> usize {
        self.open
    }

    /// Users with at least one open stream.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Open streams of `user`.
    pub fn streams_of(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, Vec::len)
    }

    /// Slots allocated (open plus closing streams the frontend has not released).
    pub fn slots_in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Unsent bytes held for a stream.
    pub fn pending_bytes(&self, id: StreamId) -> usize {
        self.stream(id).map_or(0, |s| s.pending_bytes)
    }

    /// Frames a stream's output queue has room for without growing (memory held per stream).
    pub fn output_capacity(&self, id: StreamId) -> usize {
        self.stream(id).map_or(0, |s| s.pending.capacity())
    }

    /// The user of a stream.
    pub fn user_of(&self, id: StreamId) -> Option<&str> {
        self.stream(id).map(|s| &*s.user)
    }

    /// The channel of a stream.
    pub fn channel_of(&self, id: StreamId) -> Option<ChannelId> {
        self.stream(id).map(|s| s.channel)
    }

    /// Is the stream waiting for, or in, a read-back ([`Output::Backfill`])? False once it ended,
    /// and once the stream is closed (evicted, expired, shut down), before its connection is.
    pub fn is_backfilling(&self, id: StreamId) -> bool {
        self.stream(id).is_some_and(|s| s.backfilling.is_some())
    }

    /// Is the channel's source down as far as this shard knows?
    pub fn source_is_down(&self, channel: ChannelId) -> bool {
        self.channels[channel.index()].down_since.is_some()
    }

    /// The last event this shard saw on a channel.
    pub fn last_event(&self, channel: ChannelId) -> Option<EventId> {
        self.channels[channel.index()].buffer.last()
    }

    fn stream(&self, id: StreamId) -> Option<&Stream> {
        let slot = self.slots.get(id.index as usize)?;
        (slot.generation == id.generation).then_some(slot.stream.as_ref()).flatten()
    }

    fn stream_mut(&mut self, id: StreamId) -> Option<&mut Stream> {
        let slot = self.slots.get_mut(id.index as usize)?;
        (slot.generation == id.generation).then_some(slot.stream.as_mut()).flatten()
    }

    // ---- inputs ----

    /// Marks a channel whose source keeps a log the frontend can read back (a RabbitMQ stream),
    /// with the epoch its event ids carry. Then a resume older than the buffer asks for
    /// [`Output::Backfill`] instead of answering `history_gap`, and an id slightly ahead of this
    /// shard (seen first by another gateway instance) goes live from that id. `None` turns it off.
    pub fn set_history(&mut self, channel: ChannelId, epoch: Option<u64>) {
        self.channels[channel.index()].history = epoch;
    }

    /// The channel's source starts reading recent history from its log into the buffer (at
    /// start, so that the resumes a restart brings are served from memory), apart from its
    /// live events: until [`Gateway::prime_end`], resumes of the channel wait, and
    /// [`Gateway::prime`] buffers events without sending them to any stream.
    pub fn prime_start(&mut self, channel: ChannelId) {
        if let Some(c) = self.channels.get_mut(channel.index()) {
            c.priming = true;
        }
    }

    /// One event of that history, in log order: buffered for resumes, sent to no stream.
    /// Ignored outside [`Gateway::prime_start`]..[`Gateway::prime_end`].
    pub fn prime(&mut self, ev: &Event) {
        if let Some(c) = self.channels.get_mut(ev.channel().index()).filter(|c| c.priming) {
            c.buffer.push(ev);
        }
    }

    /// The history read ends at log position `through` (the last message read, valid or not;
    /// `None` if none came). Resumes that waited are served from the buffer. Live events at
    /// or before `through` (a chunk both read) are already buffered: they go only to streams
    /// that do not have them (until [`Gateway::prime_over`]). Also ended by a live event or the
    /// source going down. Drain [`Gateway::poll_output`] after.
    pub fn prime_end(&mut self, channel: ChannelId, through: Option<u64>) {
        let Some(c) = self.channels.get_mut(channel.index()).filter(|c| c.priming) else { return };
        c.priming = false;
        c.primed = through.max(c.buffer.last().map(|l| l.seq));
        let members = c.members.clone();
        for id in members {
            if self.stream(id).is_some_and(|s| s.cursor.is_some() && s.backfilling.is_none()) {
                self.refill(id);
            }
        }
    }

    /// The live source's first delivery after the history read did not follow where that read
    /// ended (it stopped short: a broker that paused, an outage): what lies between is in
    /// neither. The buffer starts again at the next live event (a resume from before reads the
    /// log), and so do streams caught up from the history (their `live_check` finds their place
    /// older than the buffer then, and they read the log from it). Drain
    /// [`Gateway::poll_output`] after.
    pub fn prime_gap(&mut self, channel: ChannelId) {
        if let Some(c) = self.channels.get_mut(channel.index()) {
            c.buffer.clear();
            c.primed = None;
        }
    }

    /// The source's next consumer reads again from before where the history read ended (after
    /// an outage before it took anything): what it sends at or before the buffer's last event is
    /// old now, dropped as any duplicate is.
    pub fn prime_over(&mut self, channel: ChannelId) {
        if let Some(c) = self.channels.get_mut(channel.index()) {
            c.primed = None;
        }
    }

    /// Opens a stream for a routed request. On success the stream's first bytes (response head,
    /// `retry:`, replay or `history_gap`, a `source_unavailable` warning during an outage) are
    /// queued: drain [`Gateway::poll_output`]. On refusal (409, 503) write the response and close.
    /// `since_epoch` (the wall clock as time since the Unix epoch, to the sub-second) places the
    /// token's `exp` on the `now` clock.
    pub fn open(&mut self, req: StreamRequest, now: Instant, since_epoch: Duration) -> Result<StreamId, Response> {
        let cors = req.cors_origin.as_deref();
        let exp = Duration::from_secs(req.identity.expires_at);
        if exp <= since_epoch {
            // D1: a token presented within the verifier's leeway after its `exp` (clock skew)
            // would open a stream that ends at once with `token_expired`, telling the client to
            // fetch a fresh one. Answered so without opening it: it takes no slot and evicts
            // none of the user's streams.
            let retry = self.retry_ms();
            return Err(Response::stream_refusal(retry, cors, Refusal::new("token_expired", "within_leeway")));
        }
        let overloaded = || Err(Response::error(503, "overloaded", "the gateway holds all the streams it can", "", cors));
        if self.shutting_down {
            return Err(Response::shutting_down(cors));
        }
        let limits = &self.settings.config.streams;
        let mut evict = None;
        if let Some(mine) = self.users.get(req.identity.user.as_str()) {
            if mine.len() >= limits.max_per_user {
                let oldest = mine[0];
                let young = self.stream(oldest).is_some_and(|s| now.saturating_duration_since(s.opened_at) < limits.min_stream_age);
                if limits.limit_policy == LimitPolicy::Reject || young {
                    self.metrics.limit_rejected();
                    return Err(Response::error(409, "stream_limit", "too many open streams for this user", "", cors));
                }
                evict = Some(oldest);
            }
        }
        // A user at the limit whose oldest stream gives way frees the slot it takes.
        if evict.is_none() && self.open >= self.max_streams {
            return overloaded();
        }
        if let Some(old) = evict {
            self.metrics.eviction();
            // A native EventSource reconnects after the last `retry:` it got: at the stream's
            // few seconds, the evicted one would evict the user's next oldest, that one the next,
            // and so on for as long as the user holds one stream too many.
            let base = limits.evicted_retry.max(limits.min_stream_age);
            let mut last = sse::retry(self.retry_ms_from(base)).to_vec();
            last.extend_from_slice(&sse::error("stream_limit"));
            self.close_with(old, Bytes::from(last), CloseReason::StreamLimit);
        }

        let ch = req.channel;
        let user: Arc<str> = match self.users.get_key_value(req.identity.user.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(req.identity.user.as_str()),
        };
        // Closed at `exp` (D1), not up to a second after it: the wall clock is taken to the
        // sub-second. The verifier's leeway only tolerates clock skew when a token is presented.
        let expires_at = now.checked_add(exp.saturating_sub(since_epoch));
        let heartbeat_at = now + self.settings.config.streams.heartbeat;
        let id = self.alloc(Stream {
            user: user.clone(),
            channel: ch,
            version: req.version,
            opened_at: now,
            heartbeat_at,
            expires_at,
            pending: Vec::new(),
            pending_bytes: 0,
            waiting_since: None,
            transmit_queued: false,
            unsent_at_tick: false,
            member: None,
            cursor: None,
            backfilling: None,
            skip_through: None,
            live_check: None,
            control_bytes: 0,
            raw_bytes: 0,
        });
        self.open += 1;
        self.metrics.stream_opened(ch);
        self.users.entry(user).or_default().push(id);
        let members = &mut self.channels[ch.index()].members;
        members.push(id);
        let pos = members.len() - 1;
        self.timers.insert((heartbeat_at, Timer::Heartbeat(id)));
        if let Some(at) = expires_at {
            self.timers.insert((at, Timer::Expiry(id)));
        }

        let retry = self.retry_ms();
        let stream = self.stream_mut(id).expect("just allocated");
        stream.member = Some(pos);
        push_not_event(stream, Response::stream_head(cors));
        push_not_event(stream, sse::retry(retry));
        match req.resume {
            None => {}
            Some(Resume::Malformed) => self.history_gap(id),
            Some(Resume::After(after)) => self.resume(id, after),
        }
        if self.channels[ch.index()].down_since.is_some() {
            let name = &self.settings.channel(ch).name;
            let frame = sse::warning("source_unavailable", name);
            if let Some(st) = self.stream_mut(id) {
                push_not_event(st, frame);
            }
        }
        self.wake(id);
        Ok(id)
    }

    /// The `retry:` a stream gets: the configured time plus jitter, so clients dropped together
    /// do not come back together.
    fn retry_ms(&mut self) -> u64 {
        self.retry_ms_from(self.settings.config.streams.retry)
    }

    /// `base` plus up to `streams.retry_jitter`, in milliseconds.
    fn retry_ms_from(&mut self, base: Duration) -> u64 {
        base.as_millis() as u64 + self.rng.below(self.settings.config.streams.retry_jitter.as_millis() as u64 + 1)
    }

    fn resume(&mut self, id: StreamId, after: EventId) {
        let Some(st) = self.stream_mut(id) else { return };
        st.cursor = Some(after);
        self.metrics.replay_started();
        self.refill(id);
    }

    /// Moves a resuming stream's cursor forward: queues buffered events it may see until its
    /// output reaches the bound (the rest follows as it drains), asks the source for what the
    /// buffer no longer has, or answers `history_gap` and goes live.
    fn refill(&mut self, id: StreamId) {
        let max = self.settings.config.streams.max_pending_bytes;
        let (slots, channels) = (&mut self.slots, &self.channels);
        let Some(st) = slots.get_mut(id.index as usize).filter(|s| s.generation == id.generation).and_then(|s| s.stream.as_mut()) else {
            return;
        };
        let (Some(after), None) = (st.cursor, st.backfilling) else { return };
        let channel = &channels[st.channel.index()];
        if channel.priming {
            return; // the buffer is being filled with history: `prime_end` looks again
        }
        enum Next {
            Queued,
            Backfill(Output),
            Gap,
        }
        let mut n = 0;
        let mut check = false;
        let history = channel.history == Some(after.epoch);
        let next = match channel.buffer.lookup(after) {
            Lookup::From(i) => {
                let mut done = true;
                for ev in channel.buffer.from(i) {
                    if st.pending_bytes >= max {
                        done = false;
                        break;
                    }
                    st.cursor = Some(ev.id());
                    if ev.version() == st.version && ev.visible_to(&st.user) && !st.already_has(ev.id().seq) {
                        push_raw(st, ev.frame().clone());
                        n += 1;
                    }
                }
                // Caught up: live from here, unless the output is still over half its bound:
                // the next live event could overrun it and close a client that reads (a stalled
                // one is closed by the heartbeat tick); the next drain finishes the catch-up.
                if done && st.pending_bytes <= max / 2 {
                    let at = st.cursor.take();
                    if channel.primed.is_some() {
                        // Live events up to the primed position may come again (`primed`);
                        // and one past it that does not follow would show the history read
                        // at start stopped short: the stream reads the log from here then.
                        st.skip_through = at.map(|c| c.seq).max(st.skip_through);
                        st.live_check = st.skip_through;
                        check = true;
                    }
                }
                Next::Queued
            }
            // The log has it, or (nothing consumed yet) may have it: read it back.
            Lookup::Older | Lookup::Unknown if history => {
                let until = channel.buffer.last().map_or(u64::MAX, |_| channel.buffer.floor());
                st.backfilling = Some(ReadBack { until, started: false, moved: false });
                Next::Backfill(Output::Backfill { stream: id, channel: st.channel, after, until })
            }
            // Another instance is a little ahead of this one: live from the client's id; with
            // the output still over half its bound (a read-back that overtook the live source),
            // once it drained (the next `take_output` looks again), as a catch-up does.
            Lookup::Ahead(by) if history && by <= channel.buffer.capacity().max(1) as u64 => {
                if st.pending_bytes <= max / 2 {
                    st.cursor = None;
                    st.skip_through = Some(after.seq).max(st.skip_through);
                    if channel.primed.is_some() {
                        st.live_check = st.skip_through;
                        check = true;
                    }
                }
                Next::Queued
            }
            Lookup::Older | Lookup::Unknown | Lookup::Ahead(_) => {
                gap_then_live(st, history, channel.buffer.last(), max);
                Next::Gap
            }
        };
        let ch = st.channel;
        if check {
            self.channels[ch.index()].live_checks.push(id);
        }
        self.metrics.replayed(ch, n);
        match next {
            Next::Queued => {}
            Next::Backfill(b) => self.outputs.push_back(b),
            Next::Gap => self.history_gap(id),
        }
        self.wake(id);
    }

    fn history_gap(&mut self, id: StreamId) {
        let Some(st) = self.stream(id) else { return };
        self.metrics.history_gap();
        let frame = sse::warning("history_gap", &self.settings.channel(st.channel).name);
        if let Some(st) = self.stream_mut(id) {
            push_not_event(st, frame);
        }
    }

    /// Delivers an event (from [`crate::Ingest`]) to every stream of its channel that may see it,
    /// and keeps it for resume. Drain [`Gateway::poll_output`] after. Run due timers
    /// ([`Gateway::handle_timeout`]) first, as for [`Gateway::backfill_message`]: the event does
    /// not look at the time, so a stream whose token expired by now but whose expiry has not
    /// fired yet would get it ahead of its `token_expired`.
    pub fn handle_event(&mut self, ev: &Event) {
        let ch = ev.channel();
        if self.channels.get(ch.index()).is_some_and(|c| c.priming) {
            self.prime_end(ch, None); // live events end a history read that was not ended
        }
        let Some(channel) = self.channels.get_mut(ch.index()) else { return };
        let seq = ev.id().seq;
        if channel.primed.is_some_and(|p| seq > p) {
            channel.primed = None;
        }
        if !channel.buffer.push(ev) && channel.primed.is_none_or(|p| seq > p) {
            return;
        }
        if !channel.live_checks.is_empty() {
            self.check_live(ev);
        }
        let frame = ev.frame();
        let max = self.settings.config.streams.max_pending_bytes;
        let mut delivered = 0u64;
        let mut overflow = Vec::new();
        let mut wake = |slots: &mut Vec<Slot>, id: StreamId, outputs: &mut VecDeque<Output>| {
            let Some(st) = slots[id.index as usize].stream.as_mut() else { return };
            if st.version != ev.version() || st.cursor.is_some() || st.member.is_none() {
                return;
            }
            if st.already_has(ev.id().seq) {
                return;
            }
            // A frame larger than the bound still goes into an output that holds no event (as in
            // a catch-up): one large event is not a slow client, and neither is a stream whose
            // head, `retry:` or a heartbeat or warning has not gone out yet.
            if st.events_bytes() > 0 && st.pending_bytes + frame.len() > max {
                overflow.push(id);
                return;
            }
            st.pending_bytes += frame.len();
            st.pending.push(frame.clone());
            if st.waiting_since.is_none() {
                st.waiting_since = ev.received();
            }
            delivered += 1;
            if !st.transmit_queued {
                st.transmit_queued = true;
                outputs.push_back(Output::Transmit(id));
            }
        };
        match ev.recipients() {
            None => {
                for &id in &self.channels[ch.index()].members {
                    wake(&mut self.slots, id, &mut self.outputs);
                }
            }
            Some(users) => {
                for u in users.iter() {
                    if let Some(ids) = self.users.get(u) {
                        for &id in ids {
                            if self.slots[id.index as usize].stream.as_ref().is_some_and(|s| s.channel == ch) {
                                wake(&mut self.slots, id, &mut self.outputs);
                            }
                        }
                    }
                }
            }
        }
        self.metrics.delivered(ch, delivered);
        for id in overflow {
            self.close_stream(id, CloseReason::SlowClient);
        }
    }

    /// The first live event past a `live_check`: streams it does not follow read the log again
    /// from their place (it is buffered now, so `refill` finds that place older than the buffer,
    /// and the read-back ends where the buffer takes over).
    fn check_live(&mut self, ev: &Event) {
        let ch = ev.channel();
        let seq = ev.id().seq;
        // Everything after the floor is buffered: a place at or past it needs no read-back
        // (the live source read on from there itself; what it dropped is no one's loss).
        let floor = self.channels[ch.index()].buffer.floor();
        let mut pending = std::mem::take(&mut self.channels[ch.index()].live_checks);
        let mut reread = Vec::new();
        pending.retain(|&id| {
            let Some(st) = self.stream_mut(id) else { return false };
            let Some(from) = st.live_check.filter(|_| st.channel == ch && st.member.is_some()) else { return false };
            if seq <= from {
                return true; // one the client has: the check waits for the next
            }
            st.live_check = None;
            // A jump past messages the live source dropped (invalid) looks the same: that costs
            // a read-back that finds nothing to send, not an event.
            if from < floor && !logs_meet(from, seq) && st.cursor.is_none() {
                st.cursor = Some(EventId { epoch: ev.id().epoch, seq: from });
                reread.push(id);
            }
            false
        });
        self.channels[ch.index()].live_checks = pending;
        for id in reread {
            self.refill(id);
        }
    }

    /// The channel's source became unreachable (D8): every stream of it gets a warning now and
    /// every `warning_interval` until [`Gateway::source_up`]. Repeated calls are no-ops.
    pub fn source_down(&mut self, channel: ChannelId, now: Instant) {
        self.prime_end(channel, None); // resumes waiting for it are served from what came
        let c = &mut self.channels[channel.index()];
        if c.down_since.is_some() {
            return;
        }
        c.down_since = Some(now);
        self.warn_channel(channel, now);
    }

    /// The channel's source is back: warnings stop.
    pub fn source_up(&mut self, channel: ChannelId) {
        let c = &mut self.channels[channel.index()];
        c.down_since = None;
        if let Some(at) = c.warning_at.take() {
            self.timers.remove(&(at, Timer::Warning(channel)));
        }
    }

    /// The channel's log lost events this shard never received: its source came back from an
    /// outage and the log no longer held everything after the last event seen (retention
    /// removed it meanwhile). Every open stream of the channel that is live gets `history_gap`
    /// (its client refetches), and the buffer forgets what it holds, so no later resume is
    /// replayed across the hole: an id from before it is read back from the log, which answers
    /// `history_gap` too. On a channel without a log (a classic queue declared again, empty),
    /// the next event's id follows the last before the loss: a resume from that id, or a
    /// catch-up parked there, gets `history_gap` too. Drain [`Gateway::poll_output`] after.
    pub fn log_gap(&mut self, channel: ChannelId) {
        let Some(c) = self.channels.get_mut(channel.index()) else { return };
        if c.history.is_none() {
            c.buffer.clear_after_loss();
        } else {
            // A log's next position is past the hole: its ids show the loss.
            c.buffer.clear();
        }
        c.primed = None;
        // Streams live from a read-back's end are told of the loss below like the others; the
        // next live event comes after it, and is no sign the read-back ended early.
        let checks = std::mem::take(&mut c.live_checks);
        // A copy: `push` may close a stream over its bound, which edits the member list.
        let members = c.members.clone();
        for id in checks {
            if let Some(st) = self.stream_mut(id) {
                st.live_check = None;
            }
        }
        let frame = sse::warning("history_gap", &self.settings.channel(channel).name);
        for id in members {
            // A stream still resuming finds its cursor older than the buffer on its next batch.
            if self.stream(id).is_some_and(|s| s.cursor.is_none()) && self.push(id, frame.clone()) {
                self.metrics.history_gap();
            }
        }
    }

    fn warn_channel(&mut self, channel: ChannelId, now: Instant) {
        let frame = sse::warning("source_unavailable", &self.settings.channel(channel).name);
        // A copy: `push` closes a stream over its bound, which edits the member list.
        let members = self.channels[channel.index()].members.clone();
        for id in members {
            self.push(id, frame.clone());
        }
        let c = &mut self.channels[channel.index()];
        let at = now + self.settings.config.streams.warning_interval;
        c.warning_at = Some(at);
        self.timers.insert((at, Timer::Warning(channel)));
    }

    /// The connection of `id` is gone (client left, or the frontend finished a `Close`). Frees
    /// the stream. Unknown or stale ids are ignored.
    pub fn on_closed(&mut self, id: StreamId) {
        if self.stream(id).is_none() {
            return;
        }
        if self.stream(id).is_some_and(|s| s.member.is_some()) {
            self.detach(id, CloseReason::ClientGone);
        }
        let slot = &mut self.slots[id.index as usize];
        slot.stream = None;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
    }

    /// The stream's writer got some of what it took earlier into its socket, after waiting for
    /// it to take more: its client reads, if slowly. Until the writer has written all it holds,
    /// it takes no output, and the heartbeat tick would take output left waiting for a whole
    /// interval for a client that stopped reading (`slow_client`); this says it did not. The
    /// output bound still holds: a live event past it closes the stream (D11).
    pub fn output_moving(&mut self, id: StreamId) {
        if let Some(st) = self.stream_mut(id) {
            st.unsent_at_tick = false;
        }
    }

    /// Moves the stream's unsent bytes into `out` (appending); returns how many bytes. A resuming
    /// stream's replay continues here, a bounded batch at a time. `now` is when they are written:
    /// the wait of the oldest live event among them goes into `sse_gateway_delivery_delay_seconds`.
    /// Timers due by `now` are handled first ([`Gateway::handle_timeout`]): a frontend whose
    /// timer runs late behind a burst does not continue a replay past its token's expiry.
    pub fn take_output(&mut self, id: StreamId, out: &mut Vec<Bytes>, now: Instant) -> usize {
        self.handle_timeout(now);
        let mut n = self.drain_pending(id, out, now);
        if self.stream(id).is_some_and(|s| s.cursor.is_some() && s.backfilling.is_none() && s.member.is_some()) {
            self.refill(id);
            n += self.drain_pending(id, out, now);
        }
        n
    }

    fn drain_pending(&mut self, id: StreamId, out: &mut Vec<Bytes>, now: Instant) -> usize {
        let Some(st) = self.stream_mut(id) else { return 0 };
        let n = st.pending_bytes;
        let (frames, live) = (st.pending.len(), st.waiting_since.is_some());
        // A move of the handles (no reference count touched), keeping `pending`'s room.
        out.append(&mut st.pending);
        // What a burst grew (a catch-up, a backlog) is freed once it is over, so a stream that
        // idles after it does not keep it. A stream whose live events keep filling most of it
        // (a busy channel, several events per write) keeps it, rather than growing it again,
        // an allocation per doubling, on every write.
        let cap = st.pending.capacity();
        if cap > KEEP_FRAMES && !(live && frames * 4 > cap) {
            st.pending = Vec::new();
        }
        st.pending_bytes = 0;
        st.control_bytes = 0;
        st.raw_bytes = 0;
        st.transmit_queued = false;
        st.unsent_at_tick = false;
        if let Some(since) = st.waiting_since.take() {
            self.delays.record(now.saturating_duration_since(since));
        }
        n
    }

    /// One message read back from the log for stream `id` (see [`Output::Backfill`]): its
    /// position, and its event when it passed validation (`None` for a dropped message).
    /// Positions at or before the cursor are overlaps, skipped. The log lost part of the range
    /// (retention) when the first message of a read-back is past `after.seq + 1` (asked for the
    /// client's last event, the log starts later), or when a later one jumps further than
    /// [`log_continues`] allows: the stream then gets `history_gap` and goes live. Run due timers
    /// first ([`Gateway::handle_event`]).
    pub fn backfill_message(&mut self, id: StreamId, position: u64, ev: Option<&Event>) -> BackfillStep {
        let max = self.settings.config.streams.max_pending_bytes;
        let Some(ch) = self.stream(id).map(|s| s.channel) else { return BackfillStep::Finished };
        if self.channels[ch.index()].priming {
            // The buffer is being filled with history: this read-back stops (its message is
            // not taken) and the stream continues from its place once it is (`prime_end`),
            // from the buffer or the log again.
            if let Some(st) = self.stream_mut(id) {
                st.backfilling = None;
            }
            return BackfillStep::Finished;
        }
        // Where the buffer takes over: once live events are buffered, where they begin now (on a
        // busy channel the log would otherwise never fall idle, and a read-back asked for before
        // anything arrived live, with no end, never end). The live source may move it on while
        // the read-back runs (it was catching up): reading on to there, rather than ending and
        // leaving the rest to a new read-back, keeps this one's `message_id` window.
        let buffer = &self.channels[ch.index()].buffer;
        let live_point = buffer.last();
        let live_from = live_point.map(|_| buffer.floor());
        let Some(st) = self.stream_mut(id) else { return BackfillStep::Finished };
        let (Some(after), Some(rb)) = (st.cursor, st.backfilling.as_mut()) else { return BackfillStep::Finished };
        if let Some(floor) = live_from {
            rb.until = floor;
        }
        let first = !rb.started;
        rb.started = true;
        // A loss at or below what the client already has (a catch-up parked behind its id) is
        // none of its concern: it would only be warned twice.
        let have = st.skip_through.map_or(after.seq, |s| s.max(after.seq));
        let lost = if first { !log_resumes(have, position) } else { !log_continues(have, position) };
        if lost {
            st.backfilling = None;
            // What lies between is gone and the client is told so once: from here on, the
            // client's place is just before this message (a read-back after its output drained
            // starts there, and does not find the same loss again).
            st.cursor = Some(EventId { epoch: after.epoch, seq: position - 1 });
            gap_then_live(st, true, live_point, max);
            self.history_gap(id);
            self.wake(id);
            return BackfillStep::Finished;
        }
        if live_from.is_some_and(|floor| after.seq >= floor) {
            // Live events arrived and the buffer holds everything after the cursor (or the
            // cursor is ahead of them: a log that starts before it would only overlap, forever
            // on a busy channel): the buffer takes over.
            self.backfill_done(id, true);
            return BackfillStep::Finished;
        }
        if position <= after.seq {
            return BackfillStep::Continue; // an overlap: already sent
        }
        rb.moved = true;
        let until = rb.until;
        st.cursor = Some(EventId { epoch: after.epoch, seq: position });
        // Ids never go back below what the client already has (a read-back from a live point
        // older than that, after a gap).
        let skipped = st.already_has(position);
        if let Some(ev) = ev.filter(|e| !skipped && e.channel() == st.channel && e.version() == st.version && e.visible_to(&st.user)) {
            push_raw(st, ev.frame().clone());
            let ch = st.channel;
            self.metrics.replayed(ch, 1);
        }
        let step = if position >= until {
            self.backfill_done(id, true);
            BackfillStep::Finished
        } else if self.stream(id).is_some_and(|s| s.pending_bytes >= max) {
            BackfillStep::Pause
        } else {
            BackfillStep::Continue
        };
        self.wake(id);
        step
    }

    /// The read-back for `id` was closed and opened again at the last position it handed over
    /// (the frontend gave its turn up while the client read nothing): its next message is
    /// checked as a first one is ([`log_resumes`]), against what the client already has (a
    /// loss at or below that is none of its concern, as for the first read).
    pub fn backfill_reopened(&mut self, id: StreamId) {
        if let Some(rb) = self.stream_mut(id).and_then(|s| s.backfilling.as_mut()) {
            rb.started = false;
        }
    }

    /// The read-back for `id` ended before [`BackfillStep::Finished`]: `complete` when the log
    /// simply had nothing more (the stream continues from where it got to: the buffer, or the log
    /// again), `false` when reading failed (the stream gets `history_gap` and goes live, unless
    /// the buffer holds everything after its cursor by then: it continues from there). A
    /// complete one that got nothing past the client's place while the buffer begins later is
    /// taken for a failure: reading the same place again would find the same.
    pub fn backfill_done(&mut self, id: StreamId, complete: bool) {
        let Some(ch) = self.stream(id).map(|s| s.channel) else { return };
        let live_point = self.channels[ch.index()].buffer.last();
        let floor = self.channels[ch.index()].buffer.floor();
        // While history is read for the buffer the log's end is not where live events begin:
        // the stream waits for it (`refill`) and continues from the buffer.
        let priming = self.channels[ch.index()].priming;
        let max = self.settings.config.streams.max_pending_bytes;
        let Some(st) = self.stream_mut(id) else { return };
        let Some(rb) = st.backfilling.take() else { return };
        // Nothing past the client's place before the log fell silent, while the buffer begins
        // later: a broker that stalls there (a replica behind the live one) would be read again
        // and again from the same place, each time for nothing. The stream is told instead, as
        // for a read-back that got nothing at all.
        let stalled = live_point.is_some() && !priming && !rb.moved && st.cursor.is_some_and(|c| c.seq < floor);
        // Live events arrived meanwhile and the buffer holds everything after the cursor, which
        // lies within it (not past its last event: an id the log never reached is no place the
        // buffer proves): how the read-back ended does not matter, the buffer takes over (as it
        // does for a message at or past its floor), exactly.
        let covered = !priming
            && live_point.is_some_and(|last| st.cursor.is_some_and(|c| c.epoch == last.epoch && c.seq >= floor && c.seq <= last.seq));
        if covered {
            self.refill(id);
        } else if !complete || stalled {
            gap_then_live(st, true, live_point, max);
            self.history_gap(id);
        } else if live_point.is_none() && !priming {
            // The log had nothing more and nothing has arrived live yet: live from here; with
            // the output still over half its bound, once it drained (`take_output` reads on from
            // the cursor then: the log, or the buffer if live events arrived meanwhile), or the
            // next live event could overrun it and close a client that reads.
            if st.pending_bytes <= max / 2 {
                // Never below what the client already has (a catch-up parked behind its id).
                st.skip_through = st.cursor.take().map(|c| c.seq).max(st.skip_through);
                st.live_check = st.skip_through;
                let ch = st.channel;
                self.channels[ch.index()].live_checks.push(id);
            }
        } else {
            self.refill(id);
        }
        self.wake(id);
    }

    /// Fires every timer due at `now`. Safe to call early (nothing happens) or twice.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Heartbeat(id) => {
                    let interval = self.settings.config.streams.heartbeat;
                    let Some(st) = self.stream_mut(id) else { continue };
                    if st.member.is_none() || st.heartbeat_at != at {
                        continue;
                    }
                    // Keep the cadence, but never schedule into the past after a stall.
                    let next = if at + interval > now { at + interval } else { now + interval };
                    st.heartbeat_at = next;
                    // Output waiting keeps the connection busy: no heartbeat then. Waiting at two
                    // ticks with nothing taken between them: the client stopped reading for a
                    // whole interval (a catch-up waits on it too); it resumes by id.
                    let (idle, stalled) = (st.pending.is_empty(), st.unsent_at_tick);
                    st.unsent_at_tick = !idle;
                    self.timers.insert((next, Timer::Heartbeat(id)));
                    if idle {
                        self.push(id, sse::heartbeat());
                    } else if stalled {
                        self.close_stream(id, CloseReason::SlowClient);
                    }
                }
                Timer::Expiry(id) => {
                    if self.stream(id).is_some_and(|s| s.member.is_some() && s.expires_at == Some(at)) {
                        self.close_with(id, sse::error("token_expired"), CloseReason::TokenExpired);
                    }
                }
                Timer::Warning(ch) => {
                    let c = &mut self.channels[ch.index()];
                    if c.down_since.is_some() && c.warning_at == Some(at) {
                        self.warn_channel(ch, now);
                    }
                }
            }
        }
    }

    /// Stops taking streams (D12): each open stream gets a jittered `retry:` and a `Close`.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        let s = &self.settings.config.streams;
        let (base, jitter) = (s.retry.as_millis() as u64, s.retry_jitter.as_millis() as u64);
        let live: Vec<StreamId> = self.channels.iter().flat_map(|c| c.members.iter().copied()).collect();
        for id in live {
            let retry = base + self.rng.below(jitter + 1);
            self.close_with(id, sse::retry(retry), CloseReason::Shutdown);
        }
    }

    // ---- outputs ----

    /// The next thing the frontend must do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Gateway::handle_timeout`] should next run, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        self.timers.first().map(|(at, t)| (*at, t.reason()))
    }

    // ---- internals ----

    fn alloc(&mut self, stream: Stream) -> StreamId {
        match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                slot.stream = Some(stream);
                StreamId { index, generation: slot.generation }
            }
            None => {
                let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 streams per shard");
                self.slots.push(Slot { generation: 0, stream: Some(stream) });
                StreamId { index, generation: 0 }
            }
        }
    }

    fn wake(&mut self, id: StreamId) {
        let Some(st) = self.stream_mut(id) else { return };
        if !st.transmit_queued && !st.pending.is_empty() {
            st.transmit_queued = true;
            self.outputs.push_back(Output::Transmit(id));
        }
    }

    /// Queues a control frame (heartbeat, warning); closes a stream it would take over its bound.
    /// Every stream gets [`CONTROL_SLACK`] more, over its bound or over the events it has queued
    /// (one event larger than the bound goes into an output with no event waiting; a catch-up's last event may
    /// take it past the bound): a catch-up fills the output by design, and a live stream may be
    /// in the middle of writing one large event, so a warning arriving then says nothing about
    /// the client (one that stopped reading is closed by the heartbeat tick; D8: an outage keeps
    /// streams open). Control frames already queued count against the slack: however often a
    /// source flaps, the output stays bounded.
    /// Whether it was queued (not when the stream is gone or closed over its bound).
    fn push(&mut self, id: StreamId, frame: Bytes) -> bool {
        let max = self.settings.config.streams.max_pending_bytes;
        let Some(st) = self.stream_mut(id) else { return false };
        if st.member.is_none() {
            return false;
        }
        let not_control = st.pending_bytes - st.control_bytes as usize;
        let bound = max.max(not_control) + CONTROL_SLACK;
        if st.pending_bytes + frame.len() > bound {
            self.close_stream(id, CloseReason::SlowClient);
            return false;
        }
        st.control_bytes = st.control_bytes.saturating_add(u32::try_from(frame.len()).unwrap_or(u32::MAX));
        push_raw(st, frame);
        self.wake(id);
        true
    }

    /// Removes a stream from its channel, its user and the timers; it stays allocated (closing)
    /// until `on_closed`.
    fn detach(&mut self, id: StreamId, why: CloseReason) {
        let Some(st) = self.stream_mut(id) else { return };
        let Some(pos) = st.member.take() else { return };
        let (ch, user, hb, exp) = (st.channel, st.user.clone(), st.heartbeat_at, st.expires_at);
        st.cursor = None;
        st.backfilling = None;
        if st.live_check.take().is_some() {
            self.channels[ch.index()].live_checks.retain(|s| *s != id);
        }
        let members = &mut self.channels[ch.index()].members;
        members.swap_remove(pos);
        if let Some(&moved) = members.get(pos) {
            if let Some(m) = self.stream_mut(moved) {
                m.member = Some(pos);
            }
        }
        if let Some(list) = self.users.get_mut(&*user) {
            list.retain(|s| *s != id);
            if list.is_empty() {
                self.users.remove(&*user);
            }
        }
        self.timers.remove(&(hb, Timer::Heartbeat(id)));
        if let Some(at) = exp {
            self.timers.remove(&(at, Timer::Expiry(id)));
        }
        self.open -= 1;
        self.metrics.stream_closed(ch, why);
    }

    /// Ends a stream with a last frame (error, retry) and asks the frontend to close it.
    fn close_with(&mut self, id: StreamId, last: Bytes, why: CloseReason) {
        if let Some(st) = self.stream_mut(id) {
            if st.member.is_some() {
                push_raw(st, last);
            }
        }
        self.close_stream(id, why);
    }

    fn close_stream(&mut self, id: StreamId, why: CloseReason) {
        if self.stream(id).is_none_or(|s| s.member.is_none()) {
            return;
        }
        self.detach(id, why);
        if why == CloseReason::SlowClient {
            // The client resumes with Last-Event-ID; what it has not read is not kept for it.
            if let Some(st) = self.stream_mut(id) {
                st.pending.clear();
                st.pending_bytes = 0;
                st.control_bytes = 0;
                st.raw_bytes = 0;
                st.waiting_since = None;
            }
        }
        self.outputs.push_back(Output::Close(id, why));
    }
}

/// A resume that ends in `history_gap` goes live. From an id of the channel's log (`in_log`),
/// live events up to it are still not sent: this shard may be behind that id (another instance
/// delivered it, or the read-back failed before anything arrived live), and ids only grow.
fn gap_then_live(st: &mut Stream, in_log: bool, live_point: Option<EventId>, max: usize) {
    let cursor = st.cursor.take();
    if in_log {
        st.skip_through = cursor.map(|c| c.seq).max(st.skip_through);
    }
    // An output still over half its bound (a catch-up stopped by the gap) goes live through the
    // buffer, as a catch-up does: from its newest event, once it drained (`refill`). Live at
    // once, the next live event could overrun it and close a client that reads. With nothing
    // live yet on a log channel, from the client's own place (once drained, the buffer or the
    // log takes it from there).
    if st.pending_bytes > max / 2 {
        st.cursor = live_point.or(if in_log { cursor } else { None });
    }
}

fn push_raw(st: &mut Stream, frame: Bytes) {
    st.pending_bytes += frame.len();
    st.pending.push(frame);
}

/// [`push_raw`] for a frame that is not an event (the response head, `retry:`, a warning queued
/// at the open or `history_gap`), counted in `raw_bytes`.
fn push_not_event(st: &mut Stream, frame: Bytes) {
    st.raw_bytes = st.raw_bytes.saturating_add(u32::try_from(frame.len()).unwrap_or(u32::MAX));
    push_raw(st, frame);
}
