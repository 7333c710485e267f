//! Arbitrary operation sequences into one shard, with the clock taken from the input (jumps of
//! up to 200 s, past many deadlines at once): never a panic, never a user above the limit, a
//! refusal only for its reason (409 at the user's limit, 503 when the shard is full or shutting
//! down), never an event to a stream that may not see it (channel, role, recipients as
//! published), ids strictly increasing per stream, a stale stream id ignored, every stream
//! closed by a shutdown, and every stream forgotten once closed. The first channel keeps a log
//! (ids `5-<position>`): a resume older than its 4-event buffer is read back from it, a message
//! at a time, paused, ended early as if the broker fell silent, or failed, and the same holds;
//! its source may start by reading history for the buffer (`prime`), which never goes to a
//! stream opened without a resume unless the live source hands it over too.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sse_gateway_core::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;

#[derive(Debug, Arbitrary)]
enum Op {
    Open { user: u8, channel: u8, finance: bool, resume: Option<(u8, u16)> },
    Close { pick: u16 },
    /// On the first channel it goes to the log; with `lag` the live source hands it over later
    /// (with the next publish that has no lag), as a live consumer behind its log does.
    Publish { channel: u8, recipients: Option<Vec<u8>>, valid: bool, lag: bool },
    Advance { ms: u32 },
    Down { channel: u8 },
    Up { channel: u8 },
    Take { pick: u16 },
    /// A call with the id of a stream that was closed (the frontend's late wake-up).
    Stale { pick: u16 },
    Shutdown,
    /// Up to `n` messages of the log handed to a read-back the gateway asked for (its end, when
    /// the log has no more: nothing came at all is a failure, else the end).
    ReadBack { pick: u16, n: u8 },
    /// A read-back ends now: `complete` as if the broker fell silent (taken for the end, more
    /// or not), else failed.
    ReadBackEnd { pick: u16, complete: bool },
    /// The log channel's source starts reading history for the buffer (once, before the live
    /// source handed anything over), from position `from` of the log, after `older` more
    /// messages were published to it (before the gateway started); with `next` the live source
    /// starts at what is published after (else at the log's start).
    PrimeStart { from: u8, older: u8, next: bool },
    /// Up to `n` messages of that history.
    Prime { n: u8 },
    /// The history read ends, at the last position it handed over.
    PrimeEnd,
}

/// A read-back in progress: the next log position to hand over, and whether any was.
struct Reading {
    next: u64,
    started: bool,
}

const LIMIT: usize = 3;
/// Streams the shard holds: small, so that it fills.
const CAPACITY: usize = 8;

/// What the target knows of an open stream: user, channel, payments role, last event seq.
struct Watch {
    user: String,
    channel: usize,
    finance: bool,
    last_seq: Option<u64>,
    /// Opened without a resume: it only ever gets events handed over live.
    fresh: bool,
}

/// What it knows of a published event: channel, recipients as published.
type Published = HashMap<String, (usize, Option<Vec<String>>)>;

/// The first channel's log: each message with whether it is valid.
type Log = Vec<(UpstreamMessage, bool)>;

/// A history read in progress: the next position to hand over, the last one handed over.
struct History {
    next: u64,
    through: Option<u64>,
}

fn token(user: &str, finance: bool) -> String {
    let roles: &[&str] = if finance { &["finance_manager"] } else { &[] };
    let claims = serde_json::json!({"sub": user, "roles": roles, "exp": 1_900_003_600u64});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET),
    )
    .expect("signing")
}

fuzz_target!(|ops: Vec<Op>| {
    let s = common::settings("[streams]\nmax_per_user = 3\nbuffer_events = 4\nmax_pending_bytes = 4096\n");
    let m = Arc::new(Metrics::new(&s));
    let front = common::front(&s, &m);
    let mut gw = Gateway::new(s.clone(), m.clone(), CAPACITY, 1);
    let mut ingests: Vec<Ingest> = (0..s.channels.len())
        .map(|i| Ingest::new(s.clone(), m.clone(), s.channel_id(&s.channels[i].name).unwrap(), 5 + i as u64))
        .collect();
    let mut now = Instant::now();
    let unix = 1_900_000_000u64;
    let mut open: HashMap<StreamId, Watch> = HashMap::new();
    let mut closed: Vec<StreamId> = Vec::new();
    let mut shut = false;
    // Event id -> (channel, recipients) of everything published.
    let mut published: Published = HashMap::new();
    // The channel that needs the finance role.
    let payments = s.channel_id("payments").map(|c| c.index());
    // The first channel's log: every message published to it, at position index + 1.
    let log_ch = s.channel_id(&s.channels[0].name).unwrap();
    gw.set_history(log_ch, Some(5));
    let mut log: Log = Vec::new();
    // How much of the log the live source has handed over.
    let mut live = 0;
    let mut reads: HashMap<StreamId, Reading> = HashMap::new();
    let mut history: Option<History> = None;
    let mut primed_once = false;
    // Where the history read ended, until the live source hands something over: it must follow,
    // or the source says the history stopped short (`prime_gap`).
    let mut history_through: Option<u64> = None;
    // Ids of events read as history that the live source never hands over.
    let mut history_only: HashSet<String> = HashSet::new();
    for op in ops {
        match op {
            Op::Open { user, channel, finance, resume } => {
                let user = format!("u{}", user % 6);
                let ch = channel as usize % s.channels.len();
                let mut head = format!(
                    "GET /api/v1/streams/{}?version=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n",
                    s.channels[ch].name,
                    token(&user, finance)
                );
                // A resume from the log's epoch: the stream never gets that id or one below it.
                let mut from_log = None;
                if let Some((e, q)) = resume {
                    // Half of them from the log's epoch (5), the rest any.
                    let epoch = if e % 2 == 0 { 5 } else { e % 8 };
                    head.push_str(&format!("Last-Event-ID: {epoch}-{}\r\n", q % 64));
                    from_log = (ch == 0 && epoch == 5).then_some(u64::from(q % 64));
                }
                head.push_str("\r\n");
                // A well-formed head with a valid token: a stream, or `forbidden` (D2) on payments
                // without the role; anything else means no stream opens and every check below is moot.
                let forbidden = |r: &Response| r.refusal.as_ref().is_some_and(|f| f.code == "forbidden");
                match front.route(head.as_bytes(), unix) {
                    Routed::Respond(r) if forbidden(&r) && s.channels[ch].name == "payments" && !finance => {}
                    Routed::Stream(req) => {
                    assert!(s.channels[ch].name != "payments" || finance, "payments routed without the role");
                    let mine = gw.streams_of(&user);
                    match gw.open(req, now, Duration::from_secs(unix)) {
                        Ok(id) => {
                            assert!(!shut, "opened while shutting down");
                            assert!(open.len() < CAPACITY || mine >= LIMIT, "opened past the shard's capacity");
                            let fresh = resume.is_none();
                            open.insert(id, Watch { user, channel: ch, finance, last_seq: from_log, fresh });
                        }
                        Err(r) if r.status == 409 => assert!(mine >= LIMIT && !shut, "409 with {mine} streams"),
                        Err(r) if r.status == 503 => {
                            assert!(shut || open.len() >= CAPACITY && mine < LIMIT, "503 with {} open", open.len())
                        }
                        Err(r) => panic!("refused {}", r.status),
                    }
                    }
                    other => panic!("no stream for a valid head and token: {other:?}"),
                }
            }
            Op::Close { pick } => {
                if let Some(id) = pick_stream(&open, pick) {
                    gw.on_closed(id);
                    open.remove(&id);
                    reads.remove(&id);
                    closed.push(id);
                }
            }
            Op::Publish { channel, recipients, valid, lag } => {
                let ch = channel as usize % s.channels.len();
                let name = s.channels[ch].name.clone();
                let body = if valid { demo_body(&name) } else { "{\"x\":1}".to_string() };
                let kind = demo_kind(&name);
                let who: Option<Vec<String>> = recipients.map(|r| r.iter().map(|u| format!("u{}", u % 6)).collect());
                // Valid unless built invalid or, on a per-user channel, naming no recipient.
                let ok = valid && who.as_ref().map_or(!s.channels[ch].per_user, |w| !w.is_empty());
                let up = UpstreamMessage {
                    kind: Some(kind.into()),
                    routing_key: kind.into(),
                    recipient_ids: who.as_ref().map(|w| HeaderValue::Text(w.join(","))),
                    body: bytes::Bytes::from(body),
                    position: (ch == 0).then_some(log.len() as u64 + 1),
                    ..Default::default()
                };
                if ch == 0 {
                    to_log(up, who, ok, &ingests[0], &mut log, &mut published);
                    if !lag {
                        let through = history.take().and_then(|h| h.through).or(history_through.take());
                        if through.is_some_and(|t| !logs_meet(t, live as u64 + 1)) {
                            gw.prime_gap(log_ch);
                        }
                        for (up, ok) in &log[live..] {
                            let r = ingests[0].handle_message(up);
                            assert_eq!(r.is_ok(), *ok, "handed over live: {r:?}");
                            if let Ok(ev) = r {
                                gw.handle_event(&ev);
                            }
                        }
                        live = log.len(); // a live event ends a history read (the core says so too)
                    }
                } else {
                    let r = ingests[ch].handle_message(&up);
                    assert_eq!(r.is_ok(), ok, "published: {r:?}");
                    if let Ok(ev) = r {
                        published.insert(ev.id().to_string(), (ch, who));
                        gw.handle_event(&ev);
                    }
                }
            }
            Op::Advance { ms } => {
                now += Duration::from_millis(ms as u64 % 200_000);
                gw.handle_timeout(now);
            }
            Op::Down { channel } => {
                let ch = s.channel_id(&s.channels[channel as usize % s.channels.len()].name).unwrap();
                gw.source_down(ch, now);
                if ch == log_ch {
                    if let Some(h) = history.take() {
                        history_through = h.through; // so does an outage
                    }
                }
            }
            Op::Up { channel } => {
                let ch = s.channel_id(&s.channels[channel as usize % s.channels.len()].name).unwrap();
                gw.source_up(ch);
            }
            Op::Take { pick } => {
                if let Some(id) = pick_stream(&open, pick) {
                    let mut out = Vec::new();
                    gw.take_output(id, &mut out, now);
                    check_frames(&out, open.get_mut(&id).expect("open"), &published, &history_only, payments);
                }
            }
            Op::Stale { pick } => {
                if !closed.is_empty() {
                    let id = closed[pick as usize % closed.len()];
                    let mut out = Vec::new();
                    assert_eq!(gw.take_output(id, &mut out, now), 0, "output for a closed stream");
                    assert!(out.is_empty());
                    let before = gw.stream_count();
                    gw.on_closed(id);
                    assert_eq!(gw.stream_count(), before, "a stale id closed a stream");
                }
            }
            Op::Shutdown => {
                gw.shutdown();
                shut = true;
            }
            Op::ReadBack { pick, n } => {
                if let Some(id) = pick_stream(&reads, pick) {
                    let mut seen = ingests[0].read_back_window();
                    for _ in 0..n.max(1) {
                        let r = reads.get_mut(&id).expect("reading");
                        let Some((msg, ok)) = log.get(r.next as usize - 1) else {
                            // The log's end: nothing at all came is a failure.
                            let started = r.started;
                            reads.remove(&id);
                            gw.backfill_done(id, started);
                            break;
                        };
                        let ev = ingests[0].read_back(msg, &mut seen).ok();
                        assert_eq!(ev.is_some(), *ok, "read back");
                        let pos = r.next;
                        r.next += 1;
                        r.started = true;
                        match gw.backfill_message(id, pos, ev.as_ref()) {
                            BackfillStep::Continue => {}
                            BackfillStep::Pause => break,
                            BackfillStep::Finished => {
                                reads.remove(&id);
                                break;
                            }
                        }
                    }
                }
            }
            Op::ReadBackEnd { pick, complete } => {
                if let Some(id) = pick_stream(&reads, pick) {
                    reads.remove(&id);
                    gw.backfill_done(id, complete);
                }
            }
            Op::PrimeStart { from, older, next } => {
                if live == 0 && !primed_once {
                    primed_once = true;
                    let name = &s.channels[0].name;
                    for _ in 0..older % 6 {
                        let kind = demo_kind(name);
                        let up = UpstreamMessage {
                            kind: Some(kind.into()),
                            routing_key: kind.into(),
                            body: bytes::Bytes::from(demo_body(name)),
                            position: Some(log.len() as u64 + 1),
                            ..Default::default()
                        };
                        let ok = !s.channels[0].per_user;
                        to_log(up, None, ok, &ingests[0], &mut log, &mut published);
                    }
                    gw.prime_start(log_ch);
                    history = Some(History { next: u64::from(from) % (log.len() as u64 + 1) + 1, through: None });
                    if next {
                        live = log.len(); // what is in the log now is never handed over live
                    }
                }
            }
            Op::Prime { n } => {
                if let Some(h) = history.as_mut() {
                    let mut seen = ingests[0].read_back_window();
                    for _ in 0..n.max(1) {
                        let Some((msg, ok)) = log.get(h.next as usize - 1) else { break };
                        let r = ingests[0].read_back(msg, &mut seen);
                        assert_eq!(r.is_ok(), *ok, "history: {r:?}");
                        if let Ok(ev) = r {
                            if h.next <= live as u64 {
                                history_only.insert(ev.id().to_string());
                            }
                            gw.prime(&ev);
                        }
                        h.through = Some(h.next);
                        h.next += 1;
                    }
                }
            }
            Op::PrimeEnd => {
                if let Some(h) = history.take() {
                    gw.prime_end(log_ch, h.through);
                    history_through = h.through;
                }
            }
        }
        while let Some(out) = gw.poll_output() {
            if let Output::Backfill { stream, channel, after, .. } = out {
                assert_eq!(channel, log_ch, "a read-back of a channel without a log");
                assert_eq!(after.epoch, 5, "a read-back from another epoch");
                assert!(open.contains_key(&stream), "a read-back for a stream not open");
                // The reader starts at the client's own position (proof the log still holds it).
                reads.insert(stream, Reading { next: after.seq.max(1), started: false });
            }
            if let Output::Close(id, _) = out {
                reads.remove(&id);
                let mut rest = Vec::new();
                gw.take_output(id, &mut rest, now);
                if let Some(w) = open.get_mut(&id) {
                    check_frames(&rest, w, &published, &history_only, payments);
                }
                gw.on_closed(id);
                open.remove(&id);
                closed.push(id);
            }
        }
        if shut {
            assert!(open.is_empty(), "streams open after a shutdown");
        }
        for u in 0..6 {
            assert!(gw.streams_of(&format!("u{u}")) <= LIMIT);
        }
        assert_eq!(gw.stream_count(), open.len());
        for (id, _) in &open {
            assert!(gw.pending_bytes(*id) <= 4096 + 1024, "the bound holds (control frames may top it slightly)");
        }
    }
    for id in open.keys().copied().collect::<Vec<_>>() {
        gw.on_closed(id);
    }
    assert_eq!(gw.stream_count(), 0);
    assert_eq!(gw.slots_in_use(), 0);
    assert_eq!(gw.user_count(), 0);
    // Every stream's timers are gone; with every source back, no timer at all is left.
    for c in &s.channels {
        gw.source_up(s.channel_id(&c.name).unwrap());
    }
    assert_eq!(gw.poll_timeout(), None);
});

/// A message into the first channel's log, with whether it is valid (`ok`). Valid or not, it is
/// there; a valid one may be read back (or as history) before the live source hands it over.
fn to_log(up: UpstreamMessage, who: Option<Vec<String>>, ok: bool, ingest: &Ingest, log: &mut Log, published: &mut Published) {
    let r = ingest.read_back(&up, &mut ingest.read_back_window());
    assert_eq!(r.is_ok(), ok, "into the log: {r:?}");
    if let Ok(ev) = r {
        published.insert(ev.id().to_string(), (0, who));
    }
    log.push((up, ok));
}

/// One of the streams `of` holds (open ones, read-backs in progress), by a pick from the input
/// (in id order, so the same input picks the same stream).
fn pick_stream<V>(of: &HashMap<StreamId, V>, pick: u16) -> Option<StreamId> {
    let mut ids: Vec<_> = of.keys().copied().collect();
    ids.sort();
    (!ids.is_empty()).then(|| ids[pick as usize % ids.len()])
}

/// Whole frames only, and every event is of the stream's channel, visible to its user (and
/// role: `payments` is the channel that needs it), with ids strictly increasing.
fn check_frames(out: &[bytes::Bytes], w: &mut Watch, published: &Published, history_only: &HashSet<String>, payments: Option<usize>) {
    let text: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    let text = String::from_utf8(text).expect("utf-8");
    assert!(text.is_empty() || text.ends_with("\n\n"), "whole frames only: {text:?}");
    for id in text.lines().filter_map(|l| l.strip_prefix("id: ")) {
        let (ch, who) = published.get(id).expect("only published events are sent");
        assert_eq!(*ch, w.channel, "an event of another channel");
        assert!(who.as_ref().is_none_or(|r| r.contains(&w.user)), "{} got an event for {who:?}", w.user);
        assert!(w.finance || Some(*ch) != payments, "a payments event without the role");
        assert!(!w.fresh || !history_only.contains(id), "{id} was read as history only, and went to a new stream");
        let seq: u64 = id.split_once('-').and_then(|(_, q)| q.parse().ok()).expect("<epoch>-<seq>");
        assert!(w.last_seq.is_none_or(|l| l < seq), "ids must strictly increase: {:?} then {seq}", w.last_seq);
        w.last_seq = Some(seq);
    }
}


fn demo_kind(channel: &str) -> &'static str {
    match channel {
        "deals" => "deal.updated",
        "notifications" => "notification.read",
        "payments" => "payment.overdue",
        _ => "task.updated",
    }
}

fn demo_body(channel: &str) -> String {
    let u = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";
    match channel {
        "deals" => format!(r#"{{"deal_id":"{u}","changes":{{}},"updated_at":"2026-01-01T00:00:00Z","version":1}}"#),
        "notifications" => format!(r#"{{"notification_id":"{u}","read_at":"2026-01-01T00:00:00Z"}}"#),
        "payments" => format!(r#"{{"payment_id":"{u}","deal_id":"{u}","due_date":"2026-01-01","amount":1}}"#),
        _ => format!(r#"{{"task_id":"{u}","changes":{{}},"updated_at":"2026-01-01T00:00:00Z"}}"#),
    }
}
