//! The reference model the property tests and the `model` fuzz target check one shard against.
//!
//! Users open and close streams on channels with random roles, versions, token lifetimes and
//! resume ids; upstream events carry random recipients, versions and sizes; clients stop and
//! start reading; time advances (stepping through every deadline, as a frontend does, or jumping
//! past several, as a late timer does); sources go down and up. After every step the model
//! asserts:
//! - no user holds more streams than the limit; an open past it evicts exactly the user's oldest
//!   stream when that is old enough (with an `error` frame `stream_limit`), else is refused 409
//!   (with `limit_policy = "reject"`: always 409, never an eviction);
//! - the shard holds at most its capacity (some cases use a small one): an open is refused 503
//!   `overloaded` exactly when the shard is full and no eviction frees a slot (the user is below
//!   the limit); an eviction in a full shard lets the new stream open;
//! - no event reaches a stream whose user may not see it (channel role, recipients, version);
//! - ids strictly increase on every stream;
//! - every stream that reads receives exactly the channel's events after its start it may see
//!   (after its resume id when that is inside the window, else after the last event when it
//!   opened); `history_gap` comes exactly when a resume id is not inside the window, and after
//!   the open only to a stream that resumed inside the window, whose catch-up was not over at
//!   the open (the buffered events after its id did not all fit in its first batch, or left its
//!   output over half the bound) and whose client had not read since, once the buffer no
//!   longer holds everything after its id: after the whole catch-up before it, in order, and
//!   then live from the channel's last event;
//! - a reading stream is never silent (no event, warning or heartbeat) for longer than the
//!   heartbeat interval (unless time jumped);
//! - every reading stream of a down source has been warned since it went down, and within the
//!   warning interval; a warning names the stream's channel and comes only while it is down;
//! - a stream is closed only for a reason it has: evicted as above, its token expired (at its
//!   `exp`, to the nanosecond: the gateway takes the time since the epoch as a `Duration`; never a stream open
//!   past it), or, for a client that stopped reading, too slow;
//! - a client that reads nothing while output waits for it is closed as `slow_client` within
//!   two heartbeat intervals of the output beginning to wait (the second heartbeat tick that
//!   finds output waiting with none taken since the first), time stepped or jumping.

use std::collections::HashMap;
use std::time::Duration;

use sse_gateway_core::*;

use super::*;

pub const USERS: usize = 5;
pub const CHANNELS: [&str; 4] = ["deals", "notifications", "payments", "tasks"];
const LIMIT: usize = 3;
/// `streams.buffer_events`: `ResumeChoice::Back(BUFFER)` resumes from the oldest id still
/// inside the window, `Back(BUFFER + 1)` from the newest one just outside it.
pub const BUFFER: usize = 6;
/// `streams.heartbeat`, `streams.warning_interval` and `streams.min_stream_age`: written into the
/// configuration of the model's gateway (`Model::with_shard`), not copied from its defaults.
const HEARTBEAT: Duration = Duration::from_secs(30);
const WARNING: Duration = Duration::from_secs(60);
const MIN_AGE: Duration = Duration::from_secs(5);
/// The smallest output bound the configuration takes: a resume of a few large events takes
/// several batches.
const MAX_PENDING: usize = 4096;
/// How far control frames (heartbeats, warnings) may take a stream's output past its bound, or
/// past the events it holds when those are over the bound (the gateway's `CONTROL_SLACK`, see
/// `Gateway::push`).
const CONTROL_SLACK: usize = 1024;

#[derive(Debug, Clone)]
pub enum Op {
    /// `ttl`: the token's lifetime in seconds (at least 1); `read`: whether the client reads
    /// from the start (or only after a `Read`).
    Open { user: usize, channel: usize, finance: bool, v2: bool, resume: ResumeChoice, ttl: u64, read: bool },
    Close { pick: usize },
    /// `pad`: characters added to the event's title (large events fill the output bound; one
    /// past `MAX_PENDING` is larger than the bound itself and still goes into an output with no
    /// event waiting).
    Publish { channel: usize, recipients: Option<Vec<usize>>, v2: bool, pad: usize },
    /// `step`: fire every deadline on the way (a frontend's timer); otherwise one late call.
    Advance { ms: u64, step: bool },
    /// The client of a stream stops reading (its output is not taken).
    Pause { pick: usize },
    /// The client of a stream reads again: what waits is taken at once.
    Read { pick: usize },
    Down { channel: usize },
    Up { channel: usize },
}

#[derive(Debug, Clone)]
pub enum ResumeChoice {
    None,
    /// The id of the event this many back from the channel's last (`Back(0)`: the last), taken
    /// modulo the channel's event count (an empty channel: no resume): `Back(BUFFER)` is the
    /// oldest id inside the window, `Back(BUFFER + 1)` the newest one outside it.
    Back(usize),
    /// An id of this epoch this far past the channel's last event (another instance was ahead).
    Ahead(usize),
    /// `<epoch>-0`: before the first event.
    Zero,
    Malformed,
    OtherEpoch,
    /// The id of the event this many back from the last of the next channel (in `CHANNELS`),
    /// modulo its event count (as `Back`): a page that keeps one remembered id for all its
    /// streams.
    OtherChannel(usize),
}

/// A published event as the model knows it.
#[derive(Debug, Clone)]
struct Published {
    seq: u64,
    version: u32,
    recipients: Option<Vec<String>>,
    /// Its frame, as the stream must carry it (its length is what it takes of the output bound).
    frame: String,
}

impl Published {
    fn visible(&self, user: &str, version: u32) -> bool {
        self.version == version && self.recipients.as_ref().is_none_or(|r| r.iter().any(|u| u == user))
    }
}

/// What the model knows of a stream.
#[derive(Debug)]
struct Watch {
    user: String,
    channel: usize,
    version: u32,
    finance: bool,
    /// It must receive every event after this seq that it may see (the resume id inside the
    /// window, else the channel's last event when it opened), and nothing else.
    /// Reset when a `history_gap` after the open makes it live from the channel's last event.
    after_seq: Option<u64>,
    received: Vec<u64>,
    last_id: Option<u64>,
    /// When it last received a frame (an event, a warning, a heartbeat): a heartbeat is due
    /// only after an interval of silence.
    last_frame: std::time::Instant,
    /// Time jumped, or the client did not read, since the last heartbeat: the next may be late.
    heartbeat_excused: bool,
    /// Its client stopped reading: what it parses next was sent earlier (a warning, say, from
    /// before the source came back).
    late_frames: bool,
    last_warning: Option<std::time::Instant>,
    parsed_upto: usize,
    /// 1 when its resume id is not inside the window: the first `history_gap` answers it.
    gaps_owed: u32,
    /// The answer to its resume was checked (once it first read).
    open_checked: bool,
    /// It resumed inside the window and its catch-up was not over when it opened (ARCHITECTURE,
    /// "Resume": a replay goes in batches bounded by the output bound as the socket drains, and
    /// goes live once its output is at most half the bound), and its client has not read since:
    /// the live events meanwhile wait in the buffer, which may move past its place; it learns
    /// that as a `history_gap` once it reads. Only such a stream gets a `history_gap` after its
    /// open. Cleared once it has read (the harness takes every batch, so a client that reads
    /// finishes its catch-up at once).
    ///
    /// Holds the gateway's cursor: the seq of the last event its first batch walked, visible
    /// to it or not (the gateway moves the cursor past every event of the batch). Meanwhile it
    /// gets no live event (they wait in the buffer). Once its client reads, the next batch
    /// starts from there: `history_gap` is due exactly when the buffer no longer holds
    /// everything after it (the cursor is below the buffer's floor), not when the resume id is.
    catch_up: Option<u64>,
    /// Its paused catch-up's client read while the cursor was below the buffer's floor: the
    /// `history_gap` is owed with what it read.
    late_gap_due: bool,
    /// What its output may hold of events (and, at the open, of the response head, `retry:`,
    /// `history_gap` and `source_unavailable`), control frames aside, when that is over the
    /// bound (`MAX_PENDING` otherwise): a live event goes in only below the bound, or into an
    /// output with no event waiting whatever its size (what waits then, head and control
    /// frames included, counts here: a little more lenient than the gateway's rule); a catch-up's batch fills the output until it reaches the
    /// bound, so its last event may take it past (the model knows the batch: `open`). Control
    /// frames take at most `CONTROL_SLACK` more (`Gateway::push`). Reset when the client reads.
    level: usize,
    /// The `error` frames it received (their `code`).
    errors: Vec<String>,
    /// Open order (the gateway evicts a user's oldest) and time.
    opened: u64,
    opened_at: std::time::Instant,
    /// When its token expires (Unix seconds).
    expires: u64,
    /// Its client does not read and output waits for it: by this time it must have been closed
    /// as `slow_client` (config-reference, `streams.heartbeat`: output waiting at two ticks in a
    /// row with none of it taken between them; ticks come every interval, so the second comes
    /// at most two intervals after the output began to wait). Moved on when a late timer
    /// (time jumped past deadlines) fires a single tick for several intervals.
    stall_deadline: Option<std::time::Instant>,
    /// When output began to wait for a client that does not read: closed as slow before a
    /// heartbeat interval has passed since, it must have passed the output bound.
    stall_start: Option<std::time::Instant>,
    /// An event would have taken its waiting output past `MAX_PENDING` (closed at once).
    bound_passed: bool,
    /// Event frames wait in its output (not only the response head, `retry:` and control
    /// frames): a live event then goes in only within the bound. Cleared when the client reads.
    events_waiting: bool,
}

pub struct Model {
    h: Harness,
    /// Streams the shard holds at most.
    capacity: usize,
    /// `streams.limit_policy = "reject"` (else `"evict_oldest"`).
    reject: bool,
    /// The harness's clock at Unix time 1_900_000_000.
    start: std::time::Instant,
    /// During an `Advance` that does not step through deadlines: the time it jumped from.
    late_from: Option<std::time::Instant>,
    events: Vec<Vec<Published>>,
    watches: HashMap<StreamId, Watch>,
    down: [Option<std::time::Instant>; 4],
    opens: u64,
    /// `history_gap`s after an open (to a client that did not read during its catch-up).
    pub late_gaps: usize,
}

fn payload(channel: &str, v2: bool, pad: usize) -> (&'static str, serde_json::Value) {
    let title = "t".repeat(pad + 1);
    match channel {
        "deals" if v2 => (
            "deal.created",
            serde_json::json!({"deal_id": UUID1, "client_id": UUID2, "owner_id": UUID2, "name": title,
                               "status": "draft", "created_at": "2026-11-28T10:00:00Z"}),
        ),
        "deals" => ("deal.created", deal_created(&title)),
        "notifications" => ("notification.sent", notification_sent(&title)),
        "payments" => (
            "payment.overdue",
            serde_json::json!({"payment_id": UUID1, "deal_id": UUID2, "due_date": "2026-12-01", "amount": 10.5}),
        ),
        _ => (
            "task.reminder",
            serde_json::json!({"task_id": UUID1, "remind_at": "2026-11-28T10:00:00Z", "channel": "sse"}),
        ),
    }
}

/// Everything after this seq is in the channel's buffer (the seq of the last event it dropped;
/// 0 while it has dropped none).
fn floor_of(evs: &[Published]) -> u64 {
    if evs.len() > BUFFER {
        evs[evs.len() - 1 - BUFFER].seq
    } else {
        0
    }
}

impl Model {
    /// A shard that never fills, with the `evict_oldest` policy.
    pub fn new() -> Model {
        Model::with_shard(10_000, false)
    }

    /// A shard holding at most `capacity` streams, with the `reject` policy or `evict_oldest`.
    pub fn with_shard(capacity: usize, reject: bool) -> Model {
        let cat = Catalogue::from_toml(include_str!("../fixtures/catalogue_v2.toml")).unwrap();
        let policy = if reject { "reject" } else { "evict_oldest" };
        let ms = |d: Duration| d.as_millis();
        let extra = format!(
            "max_per_user = {LIMIT}\nbuffer_events = {BUFFER}\nmin_stream_age = \"{}ms\"\nmax_pending_bytes = {MAX_PENDING}\n\
             heartbeat = \"{}ms\"\nwarning_interval = \"{}ms\"\nlimit_policy = \"{policy}\"\n",
            ms(MIN_AGE),
            ms(HEARTBEAT),
            ms(WARNING),
        );
        let h = Harness::build_sized("", &extra, cat, capacity);
        let s = &h.settings.config.streams;
        assert_eq!((s.heartbeat, s.warning_interval, s.min_stream_age), (HEARTBEAT, WARNING, MIN_AGE), "the model's timings are its gateway's");
        assert_eq!((s.max_pending_bytes, s.max_per_user), (MAX_PENDING, LIMIT));
        Model {
            start: h.now,
            late_from: None,
            h,
            capacity,
            reject,
            events: vec![Vec::new(); 4],
            watches: HashMap::new(),
            down: [None; 4],
            opens: 0,
            late_gaps: 0,
        }
    }

    pub fn apply(&mut self, op: Op) {
        match op {
            Op::Open { user, channel, finance, v2, resume, ttl, read } => self.open(user, channel, finance, v2, resume, ttl, read),
            Op::Close { pick } => {
                if let Some(id) = self.pick(pick) {
                    self.h.gw.on_closed(id);
                    self.h.drain();
                    self.collect(id);
                    self.watches.remove(&id);
                    self.h.reading.remove(&id);
                }
            }
            Op::Pause { pick } => {
                if let Some(id) = self.pick(pick) {
                    self.h.reading.insert(id, false);
                    // What it is sent meanwhile is parsed when it reads (or closes): late.
                    if let Some(w) = self.watches.get_mut(&id) {
                        w.heartbeat_excused = true;
                        w.late_frames = true;
                    }
                }
            }
            Op::Read { pick } => {
                if let Some(id) = self.pick(pick) {
                    if self.h.reading.insert(id, true) == Some(false) {
                        // A paused catch-up reads on from its cursor: passed by the buffer, it
                        // is owed a history_gap.
                        let floor = floor_of(&self.events[self.watches[&id].channel]);
                        if let Some(w) = self.watches.get_mut(&id) {
                            w.late_gap_due = w.catch_up.is_some_and(|c| c < floor);
                        }
                        let waiting = self.h.gw.pending_bytes(id) > 0;
                        self.h.flush(id);
                        self.h.drain();
                        if let Some(w) = self.watches.get_mut(&id) {
                            w.heartbeat_excused = true;
                            // The connection carries what waited now (a response head, say).
                            if waiting {
                                w.last_frame = self.h.now;
                            }
                        }
                    }
                }
            }
            Op::Publish { channel, recipients, v2, pad } => {
                let name = CHANNELS[channel];
                let v2 = v2 && name == "deals";
                let (kind, body) = payload(name, v2, pad);
                let mut m = msg(kind, body);
                if v2 {
                    m.schema_version = Some(HeaderValue::Int(2));
                }
                let recipients: Option<Vec<String>> =
                    recipients.map(|r| r.iter().map(|u| format!("u{u}")).collect());
                if let Some(r) = &recipients {
                    m.recipient_ids = Some(HeaderValue::Text(r.join(",")));
                }
                // What each stream held before: an event that takes waiting output past the bound
                // closes it at once (a stream with nothing waiting takes any one event).
                let before: Vec<(StreamId, usize)> = self.watches.keys().map(|id| (*id, self.h.gw.pending_bytes(*id))).collect();
                // Refused exactly when it names no one: an empty list, or none on a per-user
                // channel (D3).
                let names_no_one = match &recipients {
                    Some(r) => r.is_empty(),
                    None => self.h.settings.channel(self.h.channel(name)).per_user,
                };
                match self.h.publish_msg(name, m) {
                    Ok(ev) => {
                        assert!(!names_no_one, "published on {name} though it names no one: {recipients:?}");
                        let version = if v2 { 2 } else { 1 };
                        let seen = |w: &Watch| {
                            w.channel == channel && w.version == version && recipients.as_ref().is_none_or(|r| r.contains(&w.user))
                        };
                        // A stream still in its catch-up takes no live event (it reads them from
                        // the buffer later): it passes no bound with one.
                        for (id, pending) in before {
                            let Some(w) = self.watches.get_mut(&id).filter(|w| seen(w) && w.catch_up.is_none()) else { continue };
                            if w.events_waiting && pending + ev.frame().len() > MAX_PENDING {
                                w.bound_passed = true;
                            } else if !w.events_waiting {
                                // An output with no event in it (empty, or only the response
                                // head, `retry:` and control frames not read yet) takes any one
                                // event, even one over the bound.
                                w.level = w.level.max(pending + ev.frame().len());
                            }
                            w.events_waiting |= self.h.reading.get(&id) == Some(&false);
                        }
                        assert_eq!(ev.version(), version, "published as v{version}");
                        self.events[channel].push(Published { seq: ev.id().seq, version, recipients, frame: String::from_utf8(ev.frame().to_vec()).expect("a frame is UTF-8") });
                    }
                    Err(d) => assert!(
                        names_no_one && matches!(d.reason, DropReason::NoRecipient),
                        "only recipient-less or empty-recipient messages are refused here: {d:?} (recipients {recipients:?} on {name})"
                    ),
                }
            }
            Op::Advance { ms, step } => {
                let target = self.h.now + Duration::from_millis(ms);
                // Step through every deadline, as a frontend's timer does.
                while let Some((at, _)) = self.h.gw.poll_timeout().filter(|_| step) {
                    if at > target {
                        break;
                    }
                    self.set_now(at.max(self.h.now));
                    self.h.gw.handle_timeout(self.h.now);
                    self.h.drain();
                    self.collect_all();
                    self.check_stalls();
                }
                if !step && self.h.gw.poll_timeout().is_some_and(|(at, _)| at < target) {
                    for w in self.watches.values_mut() {
                        w.heartbeat_excused = true;
                        // A late timer ticks once for all the intervals it missed: the two ticks
                        // a stalled stream is closed at come at most two intervals from now.
                        if let Some(d) = &mut w.stall_deadline {
                            *d = (*d).max(target + 2 * HEARTBEAT);
                        }
                    }
                }
                if !step {
                    self.late_from = Some(self.h.now);
                }
                self.set_now(target);
                self.h.gw.handle_timeout(self.h.now);
                self.h.drain();
            }
            Op::Down { channel } => {
                let ch = self.h.channel(CHANNELS[channel]);
                if self.down[channel].is_none() {
                    // A new outage: its streams must be warned now, not count an earlier warning.
                    for w in self.watches.values_mut().filter(|w| w.channel == channel) {
                        w.last_warning = None;
                    }
                }
                self.h.gw.source_down(ch, self.h.now);
                self.h.drain();
                self.down[channel].get_or_insert(self.h.now);
            }
            Op::Up { channel } => {
                let ch = self.h.channel(CHANNELS[channel]);
                self.h.gw.source_up(ch);
                self.down[channel] = None;
            }
        }
        self.collect_all();
        self.check_stalls();
        self.late_from = None;
        self.check();
    }

    /// Notes when output began to wait for a client that does not read (the clock is exact
    /// here: every op and every stepped deadline comes through), and asserts that no such
    /// stream is still open at its deadline (`stall_deadline`).
    fn check_stalls(&mut self) {
        let now = self.h.now;
        // After a jump of the clock, late timers ran at once: the output may have begun to
        // wait at any time the jump passed over (a timer's own time counts for its cadence).
        let began = self.late_from.unwrap_or(now);
        for (id, w) in self.watches.iter_mut() {
            if self.h.reading.get(id) != Some(&false) {
                w.stall_deadline = None;
                w.stall_start = None;
                w.bound_passed = false;
                w.events_waiting = false;
                w.level = MAX_PENDING;
            } else if self.h.gw.pending_bytes(*id) > 0 {
                w.stall_start.get_or_insert(began);
                let d = *w.stall_deadline.get_or_insert(now + 2 * HEARTBEAT);
                assert!(
                    now < d,
                    "{}'s client has read nothing for {:?} with output waiting ({} bytes) and its stream is still open (slow_client is due two heartbeat intervals after the output began to wait)",
                    w.user,
                    now + 2 * HEARTBEAT - d,
                    self.h.gw.pending_bytes(*id)
                );
            }
        }
    }

    /// Moves the clock; the wall clock follows, to the sub-second as the frontends give it.
    fn set_now(&mut self, at: std::time::Instant) {
        self.h.now = at;
        self.h.set_epoch(Duration::from_secs(1_900_000_000) + (at - self.start));
    }

    /// One of the open streams, by a random pick.
    fn pick(&self, pick: usize) -> Option<StreamId> {
        let mut ids: Vec<_> = self.watches.keys().copied().collect();
        ids.sort();
        (!ids.is_empty()).then(|| ids[pick % ids.len()])
    }

    #[allow(clippy::too_many_arguments)]
    fn open(&mut self, user: usize, channel: usize, finance: bool, v2: bool, resume: ResumeChoice, ttl: u64, read: bool) {
        let name = CHANNELS[channel];
        let version = if v2 && name == "deals" { 2 } else { 1 };
        let evs = self.events[channel].clone();
        let epoch = super::epoch_of(self.h.settings.channel_id(name).expect("a channel of the model"));
        let (header, window_index) = match resume {
            ResumeChoice::None => (None, None),
            ResumeChoice::Malformed => (Some("Last-Event-ID: not-an-id".to_string()), None),
            ResumeChoice::OtherEpoch => (Some("Last-Event-ID: 999-1".to_string()), None),
            ResumeChoice::OtherChannel(k) => {
                let other = (channel + 1) % CHANNELS.len();
                let epoch = super::epoch_of(self.h.settings.channel_id(CHANNELS[other]).expect("a channel of the model"));
                let evs = &self.events[other];
                match evs.len() {
                    0 => (None, None),
                    n => (Some(format!("Last-Event-ID: {epoch}-{}", evs[n - 1 - k % n].seq)), None),
                }
            }
            ResumeChoice::Back(_) if evs.is_empty() => (None, None),
            ResumeChoice::Back(k) => {
                let i = evs.len() - 1 - k % evs.len();
                (Some(format!("Last-Event-ID: {epoch}-{}", evs[i].seq)), Some(i))
            }
            ResumeChoice::Ahead(n) => {
                let last = evs.last().map_or(0, |e| e.seq);
                (Some(format!("Last-Event-ID: {epoch}-{}", last + 1 + n as u64)), None)
            }
            // Before the first event: inside the window while the buffer still holds it.
            ResumeChoice::Zero if !evs.is_empty() && evs.len() <= BUFFER => {
                (Some(format!("Last-Event-ID: {epoch}-0")), Some(usize::MAX))
            }
            ResumeChoice::Zero => (Some(format!("Last-Event-ID: {epoch}-0")), None),
        };
        let roles: &[&str] = if finance { &["finance_manager"] } else { &[] };
        let user_name = format!("u{user}");
        let path = format!("/api/v1/streams/{name}?version={version}");
        let extra: Vec<&str> = header.iter().map(String::as_str).collect();
        let before = self.h.gw.streams_of(&user_name);
        // What must happen: refused (no role); past the limit, refused 409 (policy `reject`, or
        // the user's oldest is too young to evict) or the user's oldest evicted (which frees
        // the slot the new one takes); else refused 503 when the shard is full; or open.
        let oldest = self.watches.iter().filter(|(_, w)| w.user == user_name).min_by_key(|(_, w)| w.opened);
        let expect_evict = match oldest {
            Some((&old, w)) if !self.reject && before >= LIMIT && self.h.now - w.opened_at >= MIN_AGE => Some(old),
            _ => None,
        };
        let expect_409 = before >= LIMIT && expect_evict.is_none();
        let expect_503 = !expect_409 && expect_evict.is_none() && self.watches.len() >= self.capacity;
        let forbidden_expected = name == "payments" && !finance;
        let ttl = ttl.max(1);
        let result = self.h.open_path_with(&user_name, roles, &path, &extra, ttl, read);
        // A stream evicted by this open: exactly the one expected.
        let evicted: Vec<_> = self.h.closed.iter().filter(|(_, &why)| why == CloseReason::StreamLimit).map(|(&id, _)| id).collect();
        let expected_evicted: Vec<_> = expect_evict.filter(|_| result.is_ok()).into_iter().collect();
        assert_eq!(evicted, expected_evicted, "{user_name} opened at {before} streams: evictions");
        for id in evicted {
            self.h.closed.remove(&id);
            self.collect(id);
            self.h.reading.remove(&id);
            let w = self.watches.remove(&id).expect("an evicted stream was open");
            assert_eq!(w.errors, ["stream_limit"], "the evicted stream's error frames");
        }
        match result {
            Ok(id) => {
                assert!(!forbidden_expected, "payments opened without the role");
                assert!(!expect_409, "{user_name} opened a stream at {before} (policy reject: {}, or its oldest too young to evict)", self.reject);
                assert!(!expect_503, "{user_name} opened a stream in a full shard ({} streams) without evicting one", self.watches.len());
                // Inside the window: the events after the resume id are all still buffered.
                let inside = window_index.filter(|&i| i == usize::MAX || evs.len() - 1 - i <= BUFFER);
                let after_seq = match inside {
                    Some(usize::MAX) => Some(0),
                    Some(i) => Some(evs[i].seq),
                    None => evs.last().map(|e| e.seq),
                };
                let gap_expected = header.is_some() && inside.is_none();
                // A client that does not read from the start, resuming inside the window: is its
                // catch-up over at the open? The first batch (after the response head and the
                // `retry:`) walks the buffered events after its id, moving the cursor past each
                // (visible or not) and queueing the ones it may see, until its output reaches the
                // bound (its last event may take it past); it goes live if that took them all
                // and left the output at most half the bound.
                let s = &self.h.settings.config.streams;
                let mut pending = Response::stream_head(None).len() + sse::retry(s.retry.as_millis() as u64).len();
                let mut catch_up = None;
                let mut events_waiting = false;
                if let (Some(a), Some(_)) = (after_seq, inside) {
                    let mut cursor = a;
                    let mut done = true;
                    for e in evs.iter().filter(|e| e.seq > a) {
                        if pending >= MAX_PENDING {
                            done = false;
                            break;
                        }
                        cursor = e.seq;
                        if e.visible(&user_name, version) {
                            pending += e.frame.len();
                            events_waiting = !read;
                        }
                    }
                    let live = done && pending <= MAX_PENDING / 2;
                    if !read && !live {
                        catch_up = Some(cursor);
                    }
                }
                if gap_expected {
                    pending += sse::warning("history_gap", name).len();
                }
                if self.down[channel].is_some() {
                    pending += sse::warning("source_unavailable", name).len();
                }
                // A client that does not read holds all of it (a catch-up's batch exactly as
                // walked above).
                if !read {
                    assert_eq!(self.h.gw.pending_bytes(id), pending, "{user_name}'s output at the open (catch-up at {catch_up:?})");
                }
                self.opens += 1;
                self.watches.insert(
                    id,
                    Watch {
                        user: user_name.clone(),
                        channel,
                        version,
                        finance,
                        after_seq,
                        received: Vec::new(),
                        last_id: None,
                        last_frame: self.h.now,
                        heartbeat_excused: !read,
                        late_frames: !read,
                        last_warning: None,
                        parsed_upto: 0,
                        gaps_owed: u32::from(gap_expected),
                        open_checked: false,
                        catch_up,
                        late_gap_due: false,
                        level: pending.max(MAX_PENDING),
                        errors: Vec::new(),
                        opened: self.opens,
                        opened_at: self.h.now,
                        expires: self.h.unix + ttl,
                        stall_deadline: None,
                        stall_start: None,
                        bound_passed: false,
                        events_waiting,
                    },
                );
                self.collect(id);
            }
            Err(r) => {
                let body = String::from_utf8_lossy(&r.bytes);
                if forbidden_expected {
                    assert!(r.status == 200 && body.contains("forbidden"), "payments without the role: {} {body}", r.status);
                } else if expect_503 {
                    assert!(r.status == 503 && body.contains("\"overloaded\""), "a full shard: {} {body}", r.status);
                } else {
                    assert!(expect_409, "{user_name} refused {} at {before} streams, {} in the shard: {body}", r.status, self.watches.len());
                    assert!(r.status == 409 && body.contains("\"stream_limit\""), "past the limit: {} {body}", r.status);
                }
            }
        }
    }

    fn collect_all(&mut self) {
        let ids: Vec<_> = self.watches.keys().copied().collect();
        for id in ids {
            self.collect(id);
        }
        // Anything else the gateway closed: a stream whose token expired, or one whose client
        // stopped reading, as too slow.
        let closed: Vec<_> = self.h.closed.drain().collect();
        for (id, why) in closed {
            let reading = self.h.reading.remove(&id).unwrap_or(true);
            let Some(w) = self.watches.remove(&id) else { continue };
            match why {
                CloseReason::TokenExpired => {
                    let exp = Duration::from_secs(w.expires);
                    assert!(self.h.since_epoch() >= exp, "closed as expired {:?} before its token's exp", exp - self.h.since_epoch());
                    assert_eq!(w.errors, ["token_expired"], "the expired stream's error frames");
                }
                CloseReason::SlowClient => {
                    assert!(!reading, "{}'s stream closed as slow while its client reads", w.user);
                    // Output waiting at two heartbeat ticks in a row (at least an interval after
                    // it began to wait), or an event past the bound: not sooner.
                    let waited = w.stall_start.map(|s| self.h.now.saturating_duration_since(s));
                    assert!(
                        w.bound_passed || waited.is_some_and(|d| d >= HEARTBEAT),
                        "{}'s stream closed as slow with its output waiting {waited:?} (under a heartbeat interval) and never past the bound",
                        w.user
                    );
                    if let Some(d) = w.stall_deadline {
                        assert!(self.h.now <= d, "{}'s stalled stream closed as slow {:?} late", w.user, self.h.now - d);
                    }
                }
                _ => panic!("{}'s stream on {} closed: {why:?}", w.user, CHANNELS[w.channel]),
            }
        }
    }

    /// Parses what stream `id` received since the last call and checks each frame.
    fn collect(&mut self, id: StreamId) {
        let Some(w) = self.watches.get_mut(&id) else { return };
        let Some(wire) = self.h.wire.get(&id) else { return };
        let text = String::from_utf8(wire.clone()).unwrap();
        let body_start = text.find("\r\n\r\n").map_or(0, |i| i + 4);
        let from = w.parsed_upto.max(body_start);
        let mut consumed = from;
        for frame in text[from..].split_inclusive("\n\n") {
            if !frame.ends_with("\n\n") {
                break;
            }
            consumed += frame.len();
            let silence = self.h.now - w.last_frame;
            if !frame.starts_with("retry:") {
                w.last_frame = self.h.now;
            }
            let field = |name: &str| {
                frame.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_string()))
            };
            let event = field("event:");
            let data = || -> serde_json::Value { serde_json::from_str(&field("data:").expect("a data line")).expect("data is JSON") };
            if let Some(idtext) = field("id:") {
                let eid = EventId::parse(idtext.as_bytes()).expect("event ids parse");
                let seq = eid.seq;
                assert!(w.last_id.is_none_or(|l| l < seq), "ids must strictly increase: {:?} then {seq}", w.last_id);
                w.last_id = Some(seq);
                let published = self.events[w.channel]
                    .iter()
                    .find(|e| e.seq == seq)
                    .expect("only published events arrive");
                assert!(published.visible(&w.user, w.version), "{} got event {seq} it may not see", w.user);
                // The very frame published on this channel: every channel numbers its events
                // from 1, so a seq alone would not tell another channel's event (or altered
                // bytes) apart.
                assert_eq!(frame, published.frame, "{} on {}: event {seq} is not the frame published", w.user, CHANNELS[w.channel]);
                assert!(CHANNELS[w.channel] != "payments" || w.finance);
                w.received.push(seq);
            } else if event.as_deref() == Some("heartbeat") {
                assert!(w.heartbeat_excused || silence <= HEARTBEAT, "a heartbeat after {silence:?} of silence");
                w.heartbeat_excused = false;
            } else if event.as_deref() == Some("warning") {
                let d = data();
                assert_eq!(d["channel"], CHANNELS[w.channel], "a warning names the stream's channel: {d}");
                match d["code"].as_str() {
                    Some("history_gap") if w.gaps_owed > 0 => w.gaps_owed -= 1,
                    Some("history_gap") => {
                        // Not the answer to its resume id: a stream whose client did not read
                        // during its catch-up, passed by the buffer meanwhile; live from the
                        // channel's last event.
                        let Some(cursor) = w.catch_up else {
                            panic!("history_gap to a stream not in a catch-up (live, or one that has read since its open)")
                        };
                        let evs = &self.events[w.channel];
                        let floor = floor_of(evs);
                        let from = w.after_seq.unwrap_or(0);
                        // Due on the gateway's cursor (where its first batch got to), not on the
                        // resume id: the buffer moved past the cursor.
                        assert!(
                            w.late_gap_due && cursor < floor,
                            "history_gap to a catch-up whose cursor {cursor} (resumed from {from}) the buffer still holds everything after (it begins after {floor})"
                        );
                        // What came before it: its first batch, in order, with nothing left out:
                        // the events it may see up to the cursor.
                        let expected: Vec<u64> = evs
                            .iter()
                            .filter(|e| e.seq > from && e.seq <= cursor && e.visible(&w.user, w.version))
                            .map(|e| e.seq)
                            .collect();
                        assert_eq!(w.received, expected, "the catch-up before history_gap (from {from} to the cursor {cursor})");
                        w.after_seq = evs.last().map(|e| e.seq);
                        w.received.clear();
                        w.catch_up = None;
                        w.late_gap_due = false;
                        self.late_gaps += 1;
                    }
                    Some("source_unavailable") => {
                        assert!(self.down[w.channel].is_some() || w.late_frames, "source_unavailable while {} is up", CHANNELS[w.channel]);
                        w.last_warning = Some(self.h.now);
                    }
                    _ => panic!("unknown warning {d}"),
                }
            } else if event.as_deref() == Some("error") {
                w.errors.push(data()["code"].as_str().expect("an error code").to_string());
            } else if let Some(e) = event {
                panic!("unexpected event {e} in {frame:?}");
            } else if !frame.starts_with("retry:") {
                // No id, no event: a browser would dispatch it as a `message`.
                panic!("unexpected frame {frame:?}");
            }
        }
        w.parsed_upto = consumed;
        if self.h.reading.get(&id) != Some(&false) {
            w.late_frames = false;
            if !w.open_checked {
                assert_eq!(w.gaps_owed, 0, "a resume outside the window without history_gap");
                w.open_checked = true;
            }
            // A client that reads has its catch-up done (the harness takes every batch): the
            // history_gap due came with what it just read; with none due, the catch-up went on
            // from the cursor (`check` wants every event after the resume id).
            if let Some(cursor) = w.catch_up.take() {
                assert!(!w.late_gap_due, "{}'s catch-up read from its cursor {cursor}, below the buffer's floor, without history_gap", w.user);
            }
        }
    }

    fn check(&mut self) {
        assert_eq!(self.h.gw.stream_count(), self.watches.len(), "model and gateway disagree on the streams open");
        assert!(self.watches.len() <= self.capacity, "the shard holds more than it can");
        for u in 0..USERS {
            let name = format!("u{u}");
            assert!(self.h.gw.streams_of(&name) <= LIMIT, "{name} above the limit");
            let model = self.watches.values().filter(|w| w.user == name).count();
            assert_eq!(model, self.h.gw.streams_of(&name), "model and gateway disagree on {name}");
        }
        for (id, w) in &self.watches {
            let exp = Duration::from_secs(w.expires);
            assert!(self.h.since_epoch() <= exp, "{}'s stream open {:?} past its token's exp", w.user, self.h.since_epoch() - exp);
            assert!(w.errors.is_empty(), "an open stream got error frames {:?}", w.errors);
            // The output bound (D11), control frames' slack included: its events (or its
            // catch-up's first batch) at most at `level`, control frames at most
            // `CONTROL_SLACK` over that or the bound.
            let pending = self.h.gw.pending_bytes(*id);
            let bound = MAX_PENDING.max(w.level) + CONTROL_SLACK;
            assert!(
                pending <= bound,
                "{}'s stream on {} holds {pending} bytes, over its bound {bound} (events at most {}, catch-up {:?})",
                w.user,
                CHANNELS[w.channel],
                w.level,
                w.catch_up
            );
            if self.h.reading.get(id) == Some(&false) {
                // What it has not read is not checked until it reads.
                continue;
            }
            assert!(self.h.now - w.last_frame < HEARTBEAT, "no frame, not even a heartbeat, for {:?}", self.h.now - w.last_frame);
            if self.down[w.channel].is_some() {
                let last = w.last_warning.expect("a stream of a down source has been warned");
                assert!(self.h.now - last < WARNING, "no warning for {:?}", self.h.now - last);
            }
            let expected: Vec<u64> = self.events[w.channel]
                .iter()
                .filter(|e| w.after_seq.is_none_or(|a| e.seq > a) && e.visible(&w.user, w.version))
                .map(|e| e.seq)
                .collect();
            assert_eq!(w.received, expected, "{} on {} v{}", w.user, CHANNELS[w.channel], w.version);
        }
    }
}
