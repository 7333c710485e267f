//! The reference model the property tests and the `model` fuzz target check one shard against.
//!
//! Users open and close streams on channels with random roles, versions and resume ids; upstream
//! events carry random recipients and versions; time advances (stepping through every deadline,
//! as a frontend does); sources go down and up. After every step the model asserts:
//! - no user holds more streams than the limit;
//! - no event reaches a stream whose user may not see it (channel role, recipients, version);
//! - ids strictly increase on every stream;
//! - every stream receives exactly the channel's events after its start it may see (after its
//!   resume id when that is inside the window, else after the last event when it opened);
//! - no two heartbeats on a stream are further apart than the interval;
//! - every stream of a down source has been warned since it went down, and within the warning
//!   interval;
//! - a stream is closed only for a reason it has: evicted by its user's new stream past the
//!   limit (its oldest, and old enough), or its token expired.

use std::collections::HashMap;
use std::time::Duration;

use sse_gateway_core::*;

use super::*;

pub const USERS: usize = 5;
pub const CHANNELS: [&str; 4] = ["deals", "notifications", "payments", "tasks"];
const LIMIT: usize = 3;
const BUFFER: usize = 6;
const HEARTBEAT: Duration = Duration::from_secs(30);
const WARNING: Duration = Duration::from_secs(60);
const MIN_AGE: Duration = Duration::from_secs(5);
/// Tokens the harness signs last this long.
const TOKEN_TTL: u64 = 3600;

#[derive(Debug, Clone)]
pub enum Op {
    Open { user: usize, channel: usize, finance: bool, v2: bool, resume: ResumeChoice },
    Close { pick: usize },
    Publish { channel: usize, recipients: Option<Vec<usize>>, v2: bool },
    Advance { ms: u64 },
    Down { channel: usize },
    Up { channel: usize },
}

#[derive(Debug, Clone)]
pub enum ResumeChoice {
    None,
    /// The id of the event this many back from the channel's last (may fall outside the window).
    Back(usize),
    Malformed,
    OtherEpoch,
}

/// A published event as the model knows it.
#[derive(Debug, Clone)]
struct Published {
    seq: u64,
    version: u32,
    recipients: Option<Vec<String>>,
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
    after_seq: Option<u64>,
    received: Vec<u64>,
    last_heartbeat: std::time::Instant,
    last_warning: Option<std::time::Instant>,
    parsed_upto: usize,
    saw_gap: bool,
    /// Open order (the gateway evicts a user's oldest) and time.
    opened: u64,
    opened_at: std::time::Instant,
    /// When its token expires (Unix seconds).
    expires: u64,
}

pub struct Model {
    h: Harness,
    events: Vec<Vec<Published>>,
    watches: HashMap<StreamId, Watch>,
    down: [Option<std::time::Instant>; 4],
    opens: u64,
}

fn payload(channel: &str, v2: bool) -> (&'static str, serde_json::Value) {
    match channel {
        "deals" if v2 => (
            "deal.created",
            serde_json::json!({"deal_id": UUID1, "client_id": UUID2, "owner_id": UUID2, "name": "n",
                               "status": "draft", "created_at": "2026-11-28T10:00:00Z"}),
        ),
        "deals" => ("deal.created", deal_created("t")),
        "notifications" => ("notification.sent", notification_sent("t")),
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

impl Model {
    pub fn new() -> Model {
        let cat = Catalogue::from_toml(include_str!("../fixtures/catalogue_v2.toml")).unwrap();
        let extra = format!("max_per_user = {LIMIT}\nbuffer_events = {BUFFER}\nmin_stream_age = \"5s\"\n");
        Model {
            h: Harness::with_catalogue(&extra, cat),
            events: vec![Vec::new(); 4],
            watches: HashMap::new(),
            down: [None; 4],
            opens: 0,
        }
    }

    pub fn apply(&mut self, op: Op) {
        match op {
            Op::Open { user, channel, finance, v2, resume } => self.open(user, channel, finance, v2, resume),
            Op::Close { pick } => {
                let mut ids: Vec<_> = self.watches.keys().copied().collect();
                ids.sort();
                if !ids.is_empty() {
                    let id = ids[pick % ids.len()];
                    self.h.gw.on_closed(id);
                    self.h.drain();
                    self.collect(id);
                    self.watches.remove(&id);
                }
            }
            Op::Publish { channel, recipients, v2 } => {
                let name = CHANNELS[channel];
                let v2 = v2 && name == "deals";
                let (kind, body) = payload(name, v2);
                let mut m = msg(kind, body);
                if v2 {
                    m.schema_version = Some(HeaderValue::Int(2));
                }
                let recipients: Option<Vec<String>> =
                    recipients.map(|r| r.iter().map(|u| format!("u{u}")).collect());
                if let Some(r) = &recipients {
                    m.recipient_ids = Some(HeaderValue::Text(r.join(",")));
                }
                match self.h.publish_msg(name, m) {
                    Ok(ev) => self.events[channel].push(Published {
                        seq: ev.id().seq,
                        version: ev.version(),
                        recipients,
                    }),
                    Err(d) => assert!(
                        matches!(d.reason, DropReason::NoRecipient),
                        "only recipient-less or empty-recipient messages are refused here: {d:?}"
                    ),
                }
            }
            Op::Advance { ms } => {
                let target = self.h.now + Duration::from_millis(ms);
                // Step through every deadline, as a frontend's timer does.
                while let Some((at, _)) = self.h.gw.poll_timeout() {
                    if at > target {
                        break;
                    }
                    self.h.now = at.max(self.h.now);
                    self.h.gw.handle_timeout(self.h.now);
                    self.h.drain();
                    self.collect_all();
                }
                self.h.now = target;
                self.h.unix = 1_900_000_000 + (target - self.start()).as_secs();
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
        self.check();
    }

    fn start(&self) -> std::time::Instant {
        // The harness clock started at `now` with unix 1_900_000_000; tokens last an hour, so
        // advance no further than that in one case (the strategy keeps sequences short).
        self.h.now - Duration::from_secs(self.h.unix - 1_900_000_000)
    }

    fn open(&mut self, user: usize, channel: usize, finance: bool, v2: bool, resume: ResumeChoice) {
        let name = CHANNELS[channel];
        let version = if v2 && name == "deals" { 2 } else { 1 };
        let evs = &self.events[channel];
        let (header, window_index) = match resume {
            ResumeChoice::None => (None, None),
            ResumeChoice::Malformed => (Some("Last-Event-ID: not-an-id".to_string()), None),
            ResumeChoice::OtherEpoch => (Some("Last-Event-ID: 999-1".to_string()), None),
            ResumeChoice::Back(k) if k < evs.len() => {
                let i = evs.len() - 1 - k;
                (Some(format!("Last-Event-ID: 1000-{}", evs[i].seq)), Some(i))
            }
            ResumeChoice::Back(_) => (None, None),
        };
        let roles: &[&str] = if finance { &["finance_manager"] } else { &[] };
        let user_name = format!("u{user}");
        let path = format!("/api/v1/streams/{name}?version={version}");
        let extra: Vec<&str> = header.iter().map(String::as_str).collect();
        let before = self.h.gw.streams_of(&user_name);
        match self.h.open_path(&user_name, roles, &path, &extra) {
            Ok(id) => {
                assert!(name != "payments" || finance, "payments opened without the role");
                // Inside the window: the events after the resume id are all still buffered.
                let inside = window_index.filter(|&i| evs.len() - 1 - i <= BUFFER);
                let after_seq = match inside {
                    Some(i) => Some(evs[i].seq),
                    None => evs.last().map(|e| e.seq),
                };
                let gap_expected = header.is_some() && inside.is_none();
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
                        last_heartbeat: self.h.now,
                        last_warning: None,
                        parsed_upto: 0,
                        saw_gap: false,
                        opened: self.opens,
                        opened_at: self.h.now,
                        expires: self.h.unix + TOKEN_TTL,
                    },
                );
                self.collect(id);
                if gap_expected {
                    assert!(self.watches[&id].saw_gap, "resume outside the window without history_gap");
                }
            }
            Err(r) => {
                let forbidden = r.status == 200 && String::from_utf8_lossy(&r.bytes).contains("forbidden");
                assert!(
                    forbidden && name == "payments" && !finance || r.status == 409 && before >= LIMIT,
                    "unexpected refusal {} with {before} streams",
                    r.status
                );
            }
        }
        // A stream evicted by this open: the user's oldest, old enough, and only past the limit.
        let mut evicted: Vec<_> = self.h.closed.iter().filter(|(_, &why)| why == CloseReason::StreamLimit).map(|(&id, _)| id).collect();
        assert!(evicted.len() <= 1, "one open evicted {evicted:?}");
        if let Some(id) = evicted.pop() {
            self.h.closed.remove(&id);
            self.collect(id);
            let w = self.watches.remove(&id).expect("an evicted stream was open");
            assert!(w.user == user_name && before >= LIMIT, "evicted {}'s stream for {user_name} at {before} streams", w.user);
            let oldest = self.watches.values().filter(|o| o.user == w.user).all(|o| o.opened > w.opened);
            assert!(oldest, "evicted a stream of {} that was not its oldest", w.user);
            assert!(self.h.now - w.opened_at >= MIN_AGE, "evicted a stream {:?} old", self.h.now - w.opened_at);
        }
    }

    fn collect_all(&mut self) {
        let ids: Vec<_> = self.watches.keys().copied().collect();
        for id in ids {
            self.collect(id);
        }
        // Anything else the gateway closed: only a stream whose token expired.
        let closed: Vec<_> = self.h.closed.drain().collect();
        for (id, why) in closed {
            let Some(w) = self.watches.remove(&id) else { continue };
            assert_eq!(why, CloseReason::TokenExpired, "{}'s stream on {} closed", w.user, CHANNELS[w.channel]);
            assert!(self.h.unix >= w.expires, "closed as expired {} s before its token's exp", w.expires - self.h.unix);
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
            let field = |name: &str| {
                frame.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_string()))
            };
            let event = field("event:");
            if let Some(idtext) = field("id:") {
                let eid = EventId::parse(idtext.as_bytes()).expect("event ids parse");
                let seq = eid.seq;
                assert!(w.received.last().is_none_or(|&l| l < seq), "ids must strictly increase: {:?} then {seq}", w.received);
                let published = self.events[w.channel]
                    .iter()
                    .find(|e| e.seq == seq)
                    .expect("only published events arrive");
                assert!(published.visible(&w.user, w.version), "{} got event {seq} it may not see", w.user);
                assert!(CHANNELS[w.channel] != "payments" || w.finance);
                w.received.push(seq);
            } else if event.as_deref() == Some("heartbeat") {
                let gap = self.h.now - w.last_heartbeat;
                assert!(gap <= HEARTBEAT, "heartbeats {gap:?} apart");
                w.last_heartbeat = self.h.now;
            } else if event.as_deref() == Some("warning") {
                if frame.contains("history_gap") {
                    w.saw_gap = true;
                } else {
                    w.last_warning = Some(self.h.now);
                }
            }
        }
        w.parsed_upto = consumed;
    }

    fn check(&mut self) {
        for u in 0..USERS {
            let name = format!("u{u}");
            assert!(self.h.gw.streams_of(&name) <= LIMIT, "{name} above the limit");
            let model = self.watches.values().filter(|w| w.user == name).count();
            assert_eq!(model, self.h.gw.streams_of(&name), "model and gateway disagree on {name}");
        }
        for w in self.watches.values() {
            assert!(self.h.now - w.last_heartbeat < HEARTBEAT, "no heartbeat for {:?}", self.h.now - w.last_heartbeat);
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
