//! Arbitrary operation sequences into one shard, with the clock taken from the input (jumps of
//! up to 200 s, past many deadlines at once): never a panic, never a user above the limit, a
//! refusal only for its reason (409 at the user's limit, 503 when the shard is full or shutting
//! down), never an event to a stream that may not see it (channel, role, recipients as
//! published), ids strictly increasing per stream, a stale stream id ignored, every stream
//! closed by a shutdown, and every stream forgotten once closed. The first channel keeps a log
//! (ids `5-<position>`): a resume older than its 4-event buffer is read back from it, a message
//! at a time, paused, ended early as if the broker fell silent, or failed, and the same holds;
//! its source may start by reading history for the buffer (`prime`), which never goes to a
//! stream opened without a resume unless the live source hands it over too. The log's source
//! may also report a hole retention made (`log_gap`) or a next consumer that reads again from
//! before where the history ended (`prime_over`); a channel without a log may lose what its queue
//! held (`log_gap` there). Every frame is kept: warnings name the
//! stream's channel (`history_gap` comes only to a stream with a cause for it: a resume the
//! buffer and the log cannot answer, a read-back that failed or ended early, `prime_gap` or
//! `log_gap`), `error` frames and closes have their reason (eviction at the user's limit, token
//! expiry, shutdown, a slow client). At the end the target settles (a history read ends, the
//! live source hands the whole log over, every read-back is read to the log's end and every
//! stream drained): each log-channel stream that got no `history_gap` then has exactly the
//! valid log events after its resume id (without one: those handed over live after its open,
//! but for re-sent ones the buffer already held) that its user may see, and each stream of
//! another channel opened without a resume every event published after its open it may see.
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
    /// (with the next publish that has no lag), as a live consumer behind its log does. A deal
    /// carries `pad` % 3,600 bytes more (its frame up to near the 4,096-byte output bound).
    Publish { channel: u8, recipients: Option<Vec<u8>>, valid: bool, lag: bool, pad: u16 },
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
    /// A read-back that handed something over gives its consumer up and opens a new one at the
    /// last position it handed over (`backfill_reopened`), which comes again first: the log lost
    /// nothing, so this is never a cause for `history_gap`.
    ReadBackReopen { pick: u16 },
    /// The log channel's source starts reading history for the buffer (once, before the live
    /// source handed anything over), from position `from` of the log, after `older` more
    /// messages were published to it (before the gateway started); with `next` the live source
    /// starts at what is published after (else at the log's start).
    PrimeStart { from: u8, older: u8, next: bool },
    /// Up to `n` messages of that history.
    Prime { n: u8 },
    /// The history read ends, at the last position it handed over.
    PrimeEnd,
    /// The log channel's source came back and found a hole retention made: `log_gap`; it goes
    /// on past what it had not handed over yet.
    LogGap,
    /// After the history read ended, and before the live source handed anything over, its next
    /// consumer reads again from `back` positions before where the history ended
    /// (`prime_over`): what it re-sends at or before the buffer's last event is old.
    PrimeOver { back: u8 },
    /// A channel without a log (a classic queue) lost what it held (its queue was found gone
    /// and declared again): `log_gap` there; its ids go on from where they were.
    ClassicLoss { channel: u8 },
}

/// A read-back in progress: the next log position to hand over, and whether any was.
struct Reading {
    next: u64,
    started: bool,
    /// The gateway said `Pause`: nothing more is handed over until the stream's output was
    /// taken (as the frontend waits for the writer).
    paused: bool,
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
    /// The resume id it opened with (epoch, seq).
    resume: Option<(u64, u64)>,
    /// How many live hand-overs there were when it opened (`Handed`).
    handed_at_open: usize,
    /// The seqs of the events it received, in order.
    received: Vec<u64>,
    /// `history_gap` warnings it received.
    gaps: usize,
    /// It has a cause for `history_gap`: a resume the buffer and the log cannot answer, a
    /// read-back that failed or was ended early, `prime_gap` or `log_gap` while it was open.
    gap_cause: bool,
    /// Losses of its channel's queue while it was open (`ClassicLoss`): a stream opened without
    /// a resume gets one `history_gap` for each.
    losses: usize,
    /// The `error` frames it received (their codes).
    errors: Vec<String>,
    opened_at: Instant,
    /// It was read back from the log: a read-back queues messages until the output reaches the
    /// bound, so it may pass it by one message.
    read_back: bool,
}

/// Every event the sources handed over live, in order: (channel, seq, recipients, whether it went
/// to streams: the live source re-sends after `prime_over` what the buffer already holds, and
/// that goes to no stream).
type Handed = Vec<(usize, u64, Option<Vec<String>>, bool)>;

/// What it knows of a published event: channel, recipients as published.
type Published = HashMap<String, (usize, Option<Vec<String>>)>;

/// The first channel's log: each message with whether it is valid, and its recipients.
type Log = Vec<(UpstreamMessage, bool, Option<Vec<String>>)>;

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
    let mut handed: Handed = Vec::new();
    // After `prime_over`: the live source re-sends what the buffer holds up to this seq, old now.
    let mut dup_through: Option<u64> = None;
    // The live source of the log channel handed something over.
    let mut live_handed = false;
    // The user of the open being handled (an eviction closes one of theirs).
    let mut opening: Option<String> = None;
    // Settling: every stream is drained before each hand-over, so none is slow.
    let mut settling = false;
    let mut read_back_asked = false;
    // Applies every output: read-backs asked for, closes (each for a reason the stream has).
    macro_rules! drain {
        () => {
            while let Some(out) = gw.poll_output() {
                if let Output::Backfill { stream, channel, after, .. } = out {
                    assert_eq!(channel, log_ch, "a read-back of a channel without a log");
                    assert_eq!(after.epoch, 5, "a read-back from another epoch");
                    assert!(open.contains_key(&stream), "a read-back for a stream not open");
                    // The reader starts at the client's own position (proof the log still holds it).
                    reads.insert(stream, Reading { next: after.seq.max(1), started: false, paused: false });
                    open.get_mut(&stream).expect("checked above").read_back = true;
                    read_back_asked = true;
                }
                if let Output::Close(id, why) = out {
                    reads.remove(&id);
                    let mut rest = Vec::new();
                    gw.take_output(id, &mut rest, now);
                    let mut w = open.remove(&id).expect("a close for an open stream");
                    check_frames(&rest, &mut w, &s, &published, &history_only, payments);
                    match why {
                        CloseReason::StreamLimit => {
                            assert_eq!(opening.as_ref(), Some(&w.user), "evicted by another user's open");
                            assert_eq!(w.errors, ["stream_limit"]);
                        }
                        CloseReason::TokenExpired => {
                            assert!(now >= w.opened_at + Duration::from_secs(3600), "closed as expired before its exp");
                            assert_eq!(w.errors, ["token_expired"]);
                        }
                        CloseReason::Shutdown => assert!(shut, "closed for a shutdown that did not come"),
                        CloseReason::SlowClient => assert!(!settling, "closed as slow while settling (every output taken)"),
                        other => panic!("closed: {other:?}"),
                    }
                    if !matches!(why, CloseReason::StreamLimit | CloseReason::TokenExpired) {
                        assert!(w.errors.is_empty(), "error frames {:?} for a close as {why:?}", w.errors);
                    }
                    gw.on_closed(id);
                    closed.push(id);
                }
            }
        };
    }
    // Hands over the log up to index `$to` (at least one more message), as the live source does.
    macro_rules! hand_over {
        ($to:expr) => {{
            let through = history.take().and_then(|h| h.through).or(history_through.take());
            if through.is_some_and(|t| !logs_meet(t, live as u64 + 1)) {
                gw.prime_gap(log_ch);
                dup_through = None;
                for w in open.values_mut().filter(|w| w.channel == 0) {
                    w.gap_cause = true;
                }
            }
            let to: usize = $to;
            for (up, ok, who) in &log[live..to] {
                let r = ingests[0].handle_message(up);
                assert_eq!(r.is_ok(), *ok, "handed over live: {r:?}");
                if let Ok(ev) = r {
                    let seq = ev.id().seq;
                    handed.push((0, seq, who.clone(), dup_through.is_none_or(|d| seq > d)));
                    gw.handle_event(&ev);
                }
            }
            live = to; // a live event ends a history read (the core says so too)
            live_handed = true;
        }};
    }
    // Hands read-back `$id` the log's next message: `Ok(true)` to read on, `Ok(false)` when the
    // gateway paused or finished it, `Err(started)` at the log's end (whether anything came).
    macro_rules! read_next {
        ($id:expr, $seen:expr) => {{
            let r = reads.get_mut(&$id).expect("reading");
            match log.get(r.next as usize - 1) {
                None => Err(r.started),
                Some((msg, ok, _)) => {
                    let ev = ingests[0].read_back(msg, $seen).ok();
                    assert_eq!(ev.is_some(), *ok, "read back");
                    let pos = r.next;
                    r.next += 1;
                    r.started = true;
                    match gw.backfill_message($id, pos, ev.as_ref()) {
                        BackfillStep::Continue => Ok(true),
                        BackfillStep::Pause => {
                            r.paused = true;
                            Ok(false)
                        }
                        BackfillStep::Finished => {
                            reads.remove(&$id);
                            Ok(false)
                        }
                    }
                }
            }
        }};
    }
    // Takes every stream's output and reads every read-back to the log's end (pausing where the
    // gateway says, the stream's output taken then), until nothing is left to do.
    macro_rules! quiesce {
        () => {
            for round in 0.. {
                assert!(round < 10_000, "the gateway does not settle");
                drain!();
                let mut busy = false;
                for id in pick_all(&open) {
                    let mut out = Vec::new();
                    if gw.take_output(id, &mut out, now) > 0 {
                        busy = true;
                    }
                    check_frames(&out, open.get_mut(&id).expect("open"), &s, &published, &history_only, payments);
                }
                for r in reads.values_mut() {
                    r.paused = false; // every output was taken
                }
                drain!();
                for id in pick_all(&reads) {
                    busy = true;
                    let mut seen = ingests[0].read_back_window();
                    loop {
                        match read_next!(id, &mut seen) {
                            Ok(true) => {}
                            Ok(false) => break,
                            Err(_) => {
                                // The log's end.
                                reads.remove(&id);
                                gw.backfill_done(id, true);
                                break;
                            }
                        }
                    }
                }
                drain!();
                if !busy && reads.is_empty() {
                    break;
                }
            }
        };
    }
    // The end: what is left of a history read ends, the live source hands the whole log over a
    // message at a time, and each stream then has what it must.
    macro_rules! settle {
        () => {
            settling = true;
            if let Some(h) = history.take() {
                gw.prime_end(log_ch, h.through);
                history_through = h.through;
            }
            quiesce!();
            // One more event after the others: a stream that went live where a read-back found
            // the log's end learns from the next live event whether the read ended early.
            let name = s.channels[0].name.clone();
            let up = UpstreamMessage {
                kind: Some(demo_kind(&name).into()),
                routing_key: demo_kind(&name).into(),
                body: bytes::Bytes::from(demo_body(&name)),
                position: Some(log.len() as u64 + 1),
                ..Default::default()
            };
            to_log(up, None, !s.channels[0].per_user, &ingests[0], &mut log, &mut published);
            while live < log.len() {
                hand_over!(live + 1);
                quiesce!();
            }
            assert!(reads.is_empty());
            let _ = (live_handed, read_back_asked);
            for w in open.values() {
                let expected: Vec<u64> = if w.channel == 0 {
                    if w.gaps > 0 {
                        assert!(w.gap_cause, "{} on the log channel (resume {:?}) got history_gap without a cause", w.user, w.resume);
                        // What it missed is not known, but it went live: the last event (to
                        // everyone, on a channel that is not per-user) is the last it got, unless
                        // its resume id of the log's epoch is at or past it (a client never gets
                        // an id at or below the one it said it has).
                        let last = log.len() as u64;
                        if !s.channels[0].per_user && !matches!(w.resume, Some((5, q)) if q >= last) {
                            assert_eq!(w.received.last(), Some(&last), "{} on the log channel (resume {:?}) did not go live after its history_gap", w.user, w.resume);
                        }
                        continue;
                    }
                    match w.resume {
                        // Every valid event of the log after its resume id.
                        Some((_, q)) => (q as usize..log.len())
                            .filter(|&i| log[i].1 && log[i].2.as_ref().is_none_or(|r| r.contains(&w.user)))
                            .map(|i| i as u64 + 1)
                            .collect(),
                        // Every event handed over live after its open (and not already buffered).
                        None => handed[w.handed_at_open..]
                            .iter()
                            .filter(|(ch, _, who, sent)| *ch == 0 && *sent && who.as_ref().is_none_or(|r| r.contains(&w.user)))
                            .map(|(_, seq, _, _)| *seq)
                            .collect(),
                    }
                } else if w.fresh {
                    assert_eq!(w.gaps, w.losses, "history_gap to a stream opened without a resume, but for its queue's losses");
                    handed[w.handed_at_open..]
                        .iter()
                        .filter(|(ch, _, who, _)| *ch == w.channel && who.as_ref().is_none_or(|r| r.contains(&w.user)))
                        .map(|(_, seq, _, _)| *seq)
                        .collect()
                } else {
                    continue;
                };
                assert_eq!(w.received, expected, "{} on {} (resume {:?}) after settling", w.user, s.channels[w.channel].name, w.resume);
            }
        };
    }
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
                let mut resume_id = None;
                if let Some((e, q)) = resume {
                    // Half of them from the log's epoch (5), the rest any.
                    let epoch = if e % 2 == 0 { 5 } else { e % 8 };
                    head.push_str(&format!("Last-Event-ID: {epoch}-{}\r\n", q % 64));
                    from_log = (ch == 0 && epoch == 5).then_some(u64::from(q % 64));
                    resume_id = Some((u64::from(epoch), u64::from(q % 64)));
                }
                // `history_gap` answers a resume on a channel without a log, from another epoch,
                // past the log's end, or further ahead of this shard than its buffer holds.
                let gap_cause = match (ch, resume_id) {
                    (_, None) => false,
                    (0, Some((5, q))) => {
                        q > log.len() as u64 || gw.last_event(log_ch).is_some_and(|l| q > l.seq + 4)
                    }
                    _ => true,
                };
                head.push_str("\r\n");
                // A well-formed head with a valid token: a stream, or `forbidden` (D2) on payments
                // without the role; anything else means no stream opens and every check below is moot.
                let forbidden = |r: &Response| r.refusal.as_ref().is_some_and(|f| f.code == "forbidden");
                match front.route(head.as_bytes(), unix) {
                    Routed::Respond(r) if forbidden(&r) && s.channels[ch].name == "payments" && !finance => {}
                    Routed::Stream(req) => {
                    assert!(s.channels[ch].name != "payments" || finance, "payments routed without the role");
                    let mine = gw.streams_of(&user);
                    opening = Some(user.clone());
                    match gw.open(req, now, Duration::from_secs(unix)) {
                        Ok(id) => {
                            assert!(open.len() < CAPACITY || mine >= LIMIT, "opened past the shard's capacity");
                            let fresh = resume.is_none();
                            open.insert(id, Watch {
                                user, channel: ch, finance, last_seq: from_log, fresh, resume: resume_id,
                                handed_at_open: handed.len(), received: Vec::new(), gaps: 0, gap_cause, losses: 0,
                                errors: Vec::new(), opened_at: now, read_back: false,
                            });
                        }
                        Err(r) if r.status == 409 => assert!(mine >= LIMIT, "409 with {mine} streams"),
                        Err(r) if r.status == 503 => {
                            assert!(open.len() >= CAPACITY && mine < LIMIT, "503 with {} open", open.len())
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
            Op::Publish { channel, recipients, valid, lag, pad } => {
                let ch = channel as usize % s.channels.len();
                let name = s.channels[ch].name.clone();
                let body = match valid {
                    true if name == "deals" => demo_body(&name).replace("\"changes\":{}", &format!("\"changes\":{{\"note\":\"{}\"}}", "x".repeat(usize::from(pad) % 3600))),
                    true => demo_body(&name),
                    false => "{\"x\":1}".to_string(),
                };
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
                        hand_over!(log.len());
                    }
                } else {
                    let r = ingests[ch].handle_message(&up);
                    assert_eq!(r.is_ok(), ok, "published: {r:?}");
                    if let Ok(ev) = r {
                        published.insert(ev.id().to_string(), (ch, who.clone()));
                        handed.push((ch, ev.id().seq, who, true));
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
                    check_frames(&out, open.get_mut(&id).expect("open"), &s, &published, &history_only, payments);
                    if let Some(r) = reads.get_mut(&id) {
                        r.paused = false;
                    }
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
                // The end of the input: what every stream must have is checked first (after a
                // shutdown, the gateway refuses everything, so later ops would test nothing).
                settle!();
                shut = true;
                gw.shutdown();
                // Ops stop here: one more open, valid and within every limit, must be refused 503.
                let head = format!(
                    "GET /api/v1/streams/{}?version=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n\r\n",
                    s.channels[0].name,
                    token("late", false)
                );
                let Routed::Stream(req) = front.route(head.as_bytes(), unix) else { panic!("no stream for a valid head") };
                match gw.open(req, now, Duration::from_secs(unix)) {
                    Err(r) => assert_eq!(r.status, 503, "a refusal after the shutdown"),
                    Ok(_) => panic!("opened while shutting down"),
                }
            }
            Op::ReadBack { pick, n } => {
                if let Some(id) = pick_stream(&reads, pick).filter(|id| !reads[id].paused) {
                    let mut seen = ingests[0].read_back_window();
                    for _ in 0..n.max(1) {
                        match read_next!(id, &mut seen) {
                            Ok(true) => {}
                            Ok(false) => break,
                            Err(started) => {
                                // The log's end: nothing at all came is a failure.
                                reads.remove(&id);
                                if !started {
                                    open.get_mut(&id).expect("reading for an open stream").gap_cause = true;
                                }
                                gw.backfill_done(id, started);
                                break;
                            }
                        }
                    }
                }
            }
            Op::ReadBackReopen { pick } => {
                if let Some(id) = pick_stream(&reads, pick).filter(|id| reads[id].started && !reads[id].paused) {
                    let r = reads.get_mut(&id).expect("picked from the reads");
                    r.next -= 1;
                    gw.backfill_reopened(id);
                }
            }
            Op::ReadBackEnd { pick, complete } => {
                if let Some(id) = pick_stream(&reads, pick) {
                    reads.remove(&id);
                    // Failed, or ended early (taken for the log's end): either may be a gap.
                    open.get_mut(&id).expect("reading for an open stream").gap_cause = true;
                    gw.backfill_done(id, complete);
                }
            }
            Op::PrimeStart { from, older, next } => {
                // Those messages were published before the gateway started: no read-back can
                // have found the log without them.
                if live == 0 && !primed_once && !read_back_asked {
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
                        let Some((msg, ok, _)) = log.get(h.next as usize - 1) else { break };
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
            Op::LogGap => {
                // The source comes back from an outage (any history read ended with it) past a
                // hole: what it had not handed over is lost to it, and it goes on after that
                // (read-backs still find it all: this log lost nothing).
                if history.is_none() {
                    gw.log_gap(log_ch);
                    live = log.len();
                    dup_through = None; // the buffer starts again
                    history_through = None;
                    for w in open.values_mut().filter(|w| w.channel == 0) {
                        w.gap_cause = true;
                    }
                }
            }
            Op::ClassicLoss { channel } => {
                let ch = 1 + usize::from(channel) % (s.channels.len() - 1);
                gw.log_gap(s.channel_id(&s.channels[ch].name).expect("a configured channel"));
                for w in open.values_mut().filter(|w| w.channel == ch) {
                    w.gap_cause = true;
                    w.losses += 1;
                }
            }
            Op::PrimeOver { back } => {
                if let (true, None, false, Some(t)) = (primed_once, &history, live_handed, history_through) {
                    dup_through = gw.last_event(log_ch).map(|l| l.seq);
                    gw.prime_over(log_ch);
                    live = live.min(t.saturating_sub(u64::from(back % 4)) as usize);
                    // What it re-sends is handed over live now, not history only.
                    history_only.retain(|id| id.split_once('-').and_then(|(_, q)| q.parse::<usize>().ok()).is_some_and(|q| q <= live));
                }
            }
        }
        drain!();
        opening = None;
        if shut {
            assert!(open.is_empty(), "streams open after a shutdown");
        }
        for u in 0..6 {
            assert!(gw.streams_of(&format!("u{u}")) <= LIMIT);
        }
        assert_eq!(gw.stream_count(), open.len());
        for (id, w) in &open {
            // Events up to the bound (a read-back's one message more, under 4,096 bytes here);
            // warnings and heartbeats beside them are bounded on their own, by the bound and
            // 1 KiB when each is queued.
            let events = if w.read_back { 4096 + 4096 } else { 4096 };
            assert!(gw.pending_bytes(*id) <= events + 4096 + 1024, "the bound holds: {} bytes", gw.pending_bytes(*id));
        }
        if shut {
            break;
        }
    }
    if !shut {
        settle!();
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
        published.insert(ev.id().to_string(), (0, who.clone()));
    }
    log.push((up, ok, who));
}

/// The streams `of` holds, in id order.
fn pick_all<V>(of: &HashMap<StreamId, V>) -> Vec<StreamId> {
    let mut ids: Vec<_> = of.keys().copied().collect();
    ids.sort();
    ids
}

/// One of the streams `of` holds (open ones, read-backs in progress), by a pick from the input
/// (in id order, so the same input picks the same stream).
fn pick_stream<V>(of: &HashMap<StreamId, V>, pick: u16) -> Option<StreamId> {
    let mut ids: Vec<_> = of.keys().copied().collect();
    ids.sort();
    (!ids.is_empty()).then(|| ids[pick as usize % ids.len()])
}

/// Whole frames only, and every event is of the stream's channel, visible to its user (and
/// role: `payments` is the channel that needs it), with ids strictly increasing; warnings name
/// the stream's channel; error frames are `stream_limit` or `token_expired`. Keeps the events'
/// seqs, the `history_gap`s and the error codes in `w`.
fn check_frames(
    out: &[bytes::Bytes],
    w: &mut Watch,
    s: &Settings,
    published: &Published,
    history_only: &HashSet<String>,
    payments: Option<usize>,
) {
    let text: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    let text = String::from_utf8(text).expect("utf-8");
    // The response head comes first (once).
    let text = match text.strip_prefix("HTTP/1.1 200 OK\r\n") {
        Some(rest) => rest.split_once("\r\n\r\n").expect("a whole response head").1.to_string(),
        None => text,
    };
    assert!(text.is_empty() || text.ends_with("\n\n"), "whole frames only: {text:?}");
    for frame in text.split_terminator("\n\n") {
        let field = |name: &str| frame.lines().find_map(|l| l.strip_prefix(name));
        let data = || -> serde_json::Value { serde_json::from_str(field("data: ").expect("a data line")).expect("JSON data") };
        match field("event: ") {
            _ if field("id: ").is_some() => {}
            Some("warning") => {
                let d = data();
                assert_eq!(d["channel"], s.channels[w.channel].name.as_str(), "a warning names the stream's channel: {d}");
                match d["code"].as_str() {
                    Some("history_gap") => w.gaps += 1,
                    Some("source_unavailable") => {}
                    _ => panic!("unknown warning {d}"),
                }
            }
            Some("error") => {
                let code = data()["code"].as_str().expect("an error code").to_string();
                assert!(code == "stream_limit" || code == "token_expired", "error {code}");
                w.errors.push(code);
            }
            Some("heartbeat") => assert_eq!(field("data:"), Some(""), "a heartbeat has empty data"),
            None if frame.starts_with("retry: ") && frame.lines().count() == 1 => {}
            _ => panic!("unexpected frame {frame:?}"),
        }
    }
    for id in text.lines().filter_map(|l| l.strip_prefix("id: ")) {
        let (ch, who) = published.get(id).expect("only published events are sent");
        assert_eq!(*ch, w.channel, "an event of another channel");
        assert!(who.as_ref().is_none_or(|r| r.contains(&w.user)), "{} got an event for {who:?}", w.user);
        assert!(w.finance || Some(*ch) != payments, "a payments event without the role");
        assert!(!w.fresh || !history_only.contains(id), "{id} was read as history only, and went to a new stream");
        let seq: u64 = id.split_once('-').and_then(|(_, q)| q.parse().ok()).expect("<epoch>-<seq>");
        assert!(w.last_seq.is_none_or(|l| l < seq), "ids must strictly increase: {:?} then {seq}", w.last_seq);
        w.last_seq = Some(seq);
        w.received.push(seq);
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
