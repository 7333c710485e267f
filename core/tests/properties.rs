//! Property tests: random sequences of operations against one shard, checked against a reference
//! model after every step.
//!
//! The operations and the invariants checked after each are the reference model's
//! (`support/model.rs`): the per-user limit and its eviction rule, visibility, strictly
//! increasing ids, exact delivery after a resume and `history_gap` exactly when due, heartbeat
//! spacing, outage warnings, token expiry, and closes only for a reason the stream has. The
//! routing properties check that any bytes get a complete response and never a stream without a
//! validly signed token, and that a head carrying one routes as the rules say
//! (`support/signed_head.rs`). The SSE framing properties parse `sse::frame`'s bytes with an
//! event-stream parser written here from the HTML standard: one frame is one event, whatever its
//! data. The `message_id` properties check duplicate removal against a reference window (a
//! queue of the last W keys admitted).

mod support;
#[path = "support/response.rs"]
mod response;
#[path = "support/signed_head.rs"]
mod signed_head;

/// The one origin allowed in the routing properties: the only one a response may echo.
const ORIGIN: &str = "https://a.example";
const ORIGIN_CONFIG: &str = "[server]\ncors_origins = [\"https://a.example\"]\n";

use proptest::prelude::*;
use sse_gateway_core::Routed;
use support::model::*;
use support::*;

/// How many events back a resume goes (`ResumeChoice::Back`, taken modulo the channel's event
/// count): often the window's edges (the oldest id inside it, the newest outside), inside it,
/// or anywhere in the channel's events.
fn back() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => Just(BUFFER),
        2 => Just(BUFFER + 1),
        4 => 0..BUFFER,
        2 => any::<usize>(),
    ]
}

/// Milliseconds an `Advance` moves the clock: often exactly the eviction's minimum age, a
/// millisecond under or over it, or a heartbeat interval; else anything up to past two
/// warning intervals.
fn advance_ms(max: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(5_000u64),
        1 => Just(4_999u64),
        1 => Just(5_001u64),
        1 => Just(30_000u64),
        6 => 0..max,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let resume = prop_oneof![
        3 => Just(ResumeChoice::None),
        4 => back().prop_map(ResumeChoice::Back),
        1 => (0usize..4).prop_map(ResumeChoice::Ahead),
        1 => Just(ResumeChoice::Zero),
        1 => Just(ResumeChoice::Malformed),
        1 => Just(ResumeChoice::OtherEpoch),
        1 => any::<usize>().prop_map(ResumeChoice::OtherChannel),
    ];
    // Mostly long-lived tokens; some expire within the case.
    let ttl = prop_oneof![3 => Just(3600u64), 1 => 1u64..180];
    // Mostly small events; some large enough that a few fill a stream's output bound; a few
    // larger than the bound itself (MAX_PENDING): an output with no event waiting takes any one event, so a
    // client that reads is not closed as slow for one.
    let pad = prop_oneof![6 => 0usize..40, 2 => 500usize..2500, 1 => 4000usize..9000];
    prop_oneof![
        4 => (0..USERS, 0..4usize, any::<bool>(), any::<bool>(), resume, ttl, prop_oneof![4 => Just(true), 1 => Just(false)])
            .prop_map(|(user, channel, finance, v2, resume, ttl, read)| Op::Open { user, channel, finance, v2, resume, ttl, read }),
        2 => any::<usize>().prop_map(|pick| Op::Close { pick }),
        6 => (0..4usize, proptest::option::weighted(0.4, proptest::collection::vec(0..USERS, 0..3)), any::<bool>(), pad)
            .prop_map(|(channel, recipients, v2, pad)| Op::Publish { channel, recipients, v2, pad }),
        3 => (advance_ms(70_000), prop_oneof![4 => Just(true), 1 => Just(false)]).prop_map(|(ms, step)| Op::Advance { ms, step }),
        1 => any::<usize>().prop_map(|pick| Op::Pause { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Read { pick }),
        1 => (0..4usize).prop_map(|channel| Op::Down { channel }),
        1 => (0..4usize).prop_map(|channel| Op::Up { channel }),
    ]
}

/// Operations on one channel, with more clients that read nothing at first, resuming inside the
/// window, and larger events: catch-ups that the buffer passes before their client reads.
fn catch_up_op() -> impl Strategy<Value = Op> {
    let pad = prop_oneof![3 => 0usize..40, 2 => 1500usize..2500, 1 => 4000usize..9000];
    prop_oneof![
        3 => (0..2usize, back(), any::<bool>()).prop_map(|(user, back, read)| Op::Open {
            user, channel: 0, finance: false, v2: false, resume: ResumeChoice::Back(back), ttl: 3600, read,
        }),
        1 => any::<usize>().prop_map(|pick| Op::Close { pick }),
        8 => (proptest::option::weighted(0.2, proptest::collection::vec(0..2usize, 0..2)), pad)
            .prop_map(|(recipients, pad)| Op::Publish { channel: 0, recipients, v2: false, pad }),
        2 => (advance_ms(40_000), any::<bool>()).prop_map(|(ms, step)| Op::Advance { ms, step }),
        1 => any::<usize>().prop_map(|pick| Op::Pause { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Read { pick }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// Some cases in a shard of 7 streams (15 could be open: 5 users, 3 each), some with the
    /// `reject` policy.
    #[test]
    fn random_operations_keep_every_invariant(
        (capacity, reject) in prop_oneof![2 => Just((10_000usize, false)), 1 => Just((7, false)), 1 => Just((7, true)), 1 => Just((10_000, true))],
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut m = Model::with_shard(capacity, reject);
        for op in ops {
            m.apply(op);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// The same invariants where `history_gap` after an open is frequent (and allowed only as
    /// the model says).
    #[test]
    fn catch_ups_passed_by_the_buffer_keep_every_invariant(ops in proptest::collection::vec(catch_up_op(), 1..60)) {
        let mut m = Model::new();
        for op in ops {
            m.apply(op);
        }
    }
}

/// An answer is a complete response; nothing opens a stream without a validly signed token (no
/// generated input carries one).
fn check_routed(r: Routed) {
    match r {
        Routed::Respond(r) => response::assert_complete_response(&r.bytes, ORIGIN),
        r @ (Routed::Stream(_) | Routed::Publish(_)) => panic!("opened without a valid token: {r:?}"),
        _ => {}
    }
}

proptest! {
    #[test]
    fn routing_arbitrary_bytes_never_panics_and_answers_complete_responses(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let h = Harness::new(ORIGIN_CONFIG);
        check_routed(h.route(&raw));
    }

    #[test]
    fn routing_arbitrary_heads_never_panics_and_answers_complete_responses(
        method in "[A-Z]{1,8}",
        path in "/[ -~]{0,64}",
        headers in proptest::collection::vec(("[A-Za-z-]{1,16}", "[ -~]{0,64}"), 0..8),
        origin in proptest::option::of(prop_oneof![Just(ORIGIN.to_string()), Just("null".to_string()), "[ -~]{0,40}"]),
        host in proptest::option::of("[ -~]{0,24}"),
        minor in 0u8..2,
    ) {
        let h = Harness::new(ORIGIN_CONFIG);
        let mut raw = format!("{method} {path} HTTP/1.{minor}\r\n");
        if let Some(host) = host {
            raw.push_str(&format!("Host: {host}\r\n"));
        }
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(o) = origin {
            raw.push_str(&format!("Origin: {o}\r\n"));
        }
        raw.push_str("\r\n");
        let r = h.route(raw.as_bytes());
        // The head is whole (no generated value holds a line break): waiting for more would
        // leave the client unanswered until the head timeout.
        prop_assert!(!matches!(r, Routed::Partial), "a whole head read as partial: {raw:?}");
        check_routed(r);
    }
}

/// How a token is forged in [`a_stream_request_with_a_forged_token_never_opens`].
#[derive(Debug, Clone, Copy)]
enum Forgery {
    /// `alg: none` with the real claims and no signature.
    AlgNone,
    /// Signed with another secret.
    WrongSecret,
    /// The real header and signature around another user's claims.
    GraftedClaims,
    /// Signed right, but expired a day ago.
    Expired,
    /// `HS384` (not a configured algorithm), signed with the right secret.
    OtherAlgorithm,
    /// The signature cut short.
    Truncated,
}

fn sign(claims: &serde_json::Value, alg: jsonwebtoken::Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, &jsonwebtoken::EncodingKey::from_secret(secret)).expect("sign")
}

proptest! {
    /// A well-formed stream request whose token is forged in any of these ways is refused with
    /// 401 and opens nothing (the byte-level properties above almost never reach a stream path
    /// with a token at all).
    #[test]
    fn a_stream_request_with_a_forged_token_never_opens(
        forgery in prop_oneof![
            Just(Forgery::AlgNone), Just(Forgery::WrongSecret), Just(Forgery::GraftedClaims),
            Just(Forgery::Expired), Just(Forgery::OtherAlgorithm), Just(Forgery::Truncated),
        ],
        channel in prop_oneof![Just("deals"), Just("tasks"), Just("payments"), Just("notifications")],
        user in "[a-z]{1,12}",
    ) {
        let h = Harness::new(ORIGIN_CONFIG);
        let claims = |sub: &str, exp: u64| serde_json::json!({"sub": sub, "roles": ["finance_manager"], "exp": exp, "iat": h.unix});
        let good = h.token(&user, &["finance_manager"], 3600);
        let parts: Vec<&str> = good.split('.').collect();
        let token = match forgery {
            // base64url of {"alg":"none","typ":"JWT"}
            Forgery::AlgNone => format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]),
            Forgery::WrongSecret => sign(&claims(&user, h.unix + 3600), jsonwebtoken::Algorithm::HS256, b"another-secret-of-at-least-32-bytes!"),
            Forgery::GraftedClaims => {
                let other = sign(&claims("someone-else", h.unix + 3600), jsonwebtoken::Algorithm::HS256, b"x");
                format!("{}.{}.{}", parts[0], other.split('.').nth(1).expect("payload"), parts[2])
            }
            Forgery::Expired => sign(&claims(&user, h.unix - 86_400), jsonwebtoken::Algorithm::HS256, SECRET.as_bytes()),
            Forgery::OtherAlgorithm => sign(&claims(&user, h.unix + 3600), jsonwebtoken::Algorithm::HS384, SECRET.as_bytes()),
            Forgery::Truncated => good[..good.len() - 3].to_string(),
        };
        let auth = format!("Authorization: Bearer {token}");
        let raw = Harness::head(&format!("/api/v1/streams/{channel}"), &["Accept: text/event-stream", &auth]);
        match h.route(&raw) {
            Routed::Respond(r) => {
                prop_assert_eq!(r.status, 401, "{:?}: {}", forgery, String::from_utf8_lossy(&r.bytes));
                response::assert_complete_response(&r.bytes, ORIGIN);
            }
            other => prop_assert!(false, "{:?} routed as {:?}", forgery, other),
        }
    }
}


/// A minimal event-stream parser written from the HTML standard (§ 9.2.6, "Interpreting an
/// event stream"), independent of `sse.rs`: it is what a browser makes of the gateway's bytes.
mod event_stream {
    /// One event the parser dispatched.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Dispatched {
        pub kind: String,
        pub data: String,
        pub last_event_id: String,
    }

    #[derive(Debug, Default)]
    pub struct Parsed {
        pub events: Vec<Dispatched>,
        /// Every field name seen, in order (comments excluded).
        pub fields: Vec<String>,
        /// The reconnection time a valid `retry` field set.
        pub retry: Option<u64>,
        /// Text after the last line end (an incomplete line), and whether data or an event type
        /// was buffered and never dispatched when the stream ended.
        pub trailing: String,
        pub undispatched: bool,
    }

    pub fn parse(bytes: &[u8]) -> Parsed {
        // The stream is UTF-8 decoded; one leading BOM is dropped.
        let text = String::from_utf8_lossy(bytes);
        let mut rest: &str = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut p = Parsed::default();
        let (mut data, mut kind, mut id_buffer) = (String::new(), String::new(), String::new());
        // Lines end in CRLF, LF or CR.
        while let Some(i) = rest.find(['\r', '\n']) {
            let line = &rest[..i];
            rest = &rest[i + if rest[i..].starts_with("\r\n") { 2 } else { 1 }..];
            if line.is_empty() {
                // Dispatch: the last event id is set even when nothing is dispatched.
                let last_event_id = id_buffer.clone();
                if data.is_empty() {
                    kind.clear();
                    continue;
                }
                if data.ends_with('\n') {
                    data.pop();
                }
                let kind_now = if kind.is_empty() { "message".to_string() } else { std::mem::take(&mut kind) };
                p.events.push(Dispatched { kind: kind_now, data: std::mem::take(&mut data), last_event_id });
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            p.fields.push(field.to_string());
            match field {
                "event" => kind = value.to_string(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" if !value.contains('\0') => id_buffer = value.to_string(),
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => p.retry = value.parse().ok(),
                _ => {}
            }
        }
        p.trailing = rest.to_string();
        p.undispatched = !data.is_empty() || !kind.is_empty();
        p
    }
}

/// Text weighted toward what could break a frame: line ends of every kind, NUL, leading spaces,
/// colons, field-looking text, a BOM and the Unicode line separators SSE does not split on.
fn sse_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-z{}\":, ]{1,4}",
        3 => Just("\r".to_string()),
        3 => Just("\n".to_string()),
        3 => Just("\r\n".to_string()),
        1 => Just("\n\r".to_string()),
        1 => Just("\0".to_string()),
        2 => Just(" ".to_string()),
        1 => Just(":".to_string()),
        1 => Just("data: x".to_string()),
        1 => Just("retry: 5".to_string()),
        1 => Just("id: 9-9".to_string()),
        1 => Just("event: evil".to_string()),
        1 => Just("\u{feff}".to_string()),
        1 => Just("\u{2028}\u{85}".to_string()),
        1 => any::<String>(),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|p| p.concat())
}

/// What the data must read as in the browser: CRLF and CR become LF.
fn normalised(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

/// An event name or id: the core allows only `[A-Za-z0-9._-]` in either.
const SSE_NAME: &str = "[A-Za-z0-9._-]{1,24}";

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever the data, a frame is exactly one event to an HTML event-stream parser: its data
    /// is the text (line ends as LF), its type and id are the ones given, and no other field
    /// (no `retry:`, no second `id:` or `event:`) is injected.
    #[test]
    fn an_sse_frame_is_exactly_one_event_whatever_its_data(
        data in sse_text(),
        event in SSE_NAME,
        id in proptest::option::of(SSE_NAME),
    ) {
        let bytes = sse_gateway_core::sse::frame(id.as_deref(), &event, &data);
        let p = event_stream::parse(&bytes);
        prop_assert_eq!(p.events.len(), 1, "{:?}", String::from_utf8_lossy(&bytes));
        let ev = &p.events[0];
        prop_assert_eq!(&ev.data, &normalised(&data));
        prop_assert_eq!(&ev.kind, &event);
        prop_assert_eq!(ev.last_event_id.as_str(), id.as_deref().unwrap_or(""));
        prop_assert_eq!(p.retry, None);
        prop_assert!(p.fields.iter().all(|f| f == "data" || f == "event" || f == "id"), "fields {:?}", p.fields);
        prop_assert_eq!(p.fields.iter().filter(|f| *f == "event").count(), 1);
        prop_assert_eq!(p.fields.iter().filter(|f| *f == "id").count(), usize::from(id.is_some()));
        prop_assert!(p.trailing.is_empty() && !p.undispatched, "the frame ends with its event dispatched");
    }

    /// Frames written one after another stay apart: two frames are two events, each with its
    /// own type and data (nothing of the first leaks into the second).
    #[test]
    fn consecutive_sse_frames_are_separate_events(
        a in sse_text(), b in sse_text(), ea in SSE_NAME, eb in SSE_NAME, ida in SSE_NAME, idb in SSE_NAME,
    ) {
        let mut bytes = sse_gateway_core::sse::frame(Some(&ida), &ea, &a).to_vec();
        bytes.extend_from_slice(&sse_gateway_core::sse::frame(Some(&idb), &eb, &b));
        let p = event_stream::parse(&bytes);
        let got: Vec<_> = p.events.iter().map(|e| (e.kind.as_str(), e.data.clone(), e.last_event_id.as_str())).collect();
        prop_assert_eq!(got, vec![(ea.as_str(), normalised(&a), ida.as_str()), (eb.as_str(), normalised(&b), idb.as_str())]);
        prop_assert_eq!(p.retry, None);
    }

    /// `retry:` frames set the reconnection time and dispatch nothing; a heartbeat is one
    /// `heartbeat` event with empty data.
    #[test]
    fn retry_and_heartbeat_frames_parse_as_documented(ms in any::<u64>()) {
        let p = event_stream::parse(&sse_gateway_core::sse::retry(ms));
        prop_assert!(p.events.is_empty());
        prop_assert_eq!(p.retry, Some(ms));
        let p = event_stream::parse(&sse_gateway_core::sse::heartbeat());
        let hb: Vec<_> = p.events.iter().map(|e| (e.kind.as_str(), e.data.as_str())).collect();
        prop_assert_eq!(hb, vec![("heartbeat", "")]);
        prop_assert!(p.trailing.is_empty() && !p.undispatched);
    }
}

/// The reference parser itself: it sees what a frame that did not split at every line end would
/// inject (a bare CR ends a line), and follows the standard's examples.
#[test]
fn the_reference_event_stream_parser_sees_injections() {
    let p = event_stream::parse(b"event: x\ndata: a\rretry: 5\rid: 1-1\n\n");
    assert_eq!(p.retry, Some(5));
    assert_eq!(p.events.len(), 1);
    assert_eq!((p.events[0].data.as_str(), p.events[0].last_event_id.as_str()), ("a", "1-1"));
    let p = event_stream::parse(b"data: a\r\n\r\ndata:b\n\n: comment\ndata\ndata\n\ndata: c");
    let got: Vec<_> = p.events.iter().map(|e| (e.kind.as_str(), e.data.as_str())).collect();
    assert_eq!(got, [("message", "a"), ("message", "b"), ("message", "\n")]);
    assert_eq!(p.trailing, "data: c");
    let p = event_stream::parse(b"\xef\xbb\xbfevent: e\n\nid: a\0b\ndata:  x\n\n");
    assert_eq!(p.events, [event_stream::Dispatched { kind: "message".into(), data: " x".into(), last_event_id: String::new() }]);
}

/// One upstream message in the `message_id` properties: each part of what tells a retry from
/// another event, in the several spellings a publisher may use for it.
#[derive(Debug, Clone)]
struct DedupeMsg {
    /// `None`, empty (no id either), or one of a few ids.
    message_id: Option<&'static str>,
    /// `deal.updated` or `calculation.added` (the same fields in versions 1 and 2).
    kind: usize,
    /// 0: the `type` property; 1: no `type`, the routing key; 2: an empty `type`, the routing key.
    kind_via: u8,
    version: u32,
    /// 0: absent when 1 (else an integer); 1: an integer; 2: text with spaces around it.
    version_via: u8,
    /// The recipient ids in the order and with the repeats the header lists them; `None`: none.
    recipients: Option<Vec<usize>>,
    /// One recipient sent as an integer header, not text.
    recipient_as_int: bool,
    /// Varies the payload: a retry's payload may differ from the original's.
    payload: u16,
}

const DEDUPE_TYPES: [&str; 2] = ["deal.updated", "calculation.added"];

fn dedupe_msg() -> impl Strategy<Value = DedupeMsg> {
    (
        prop_oneof![2 => Just(None), 1 => Just(Some("")), 2 => Just(Some("a")), 2 => Just(Some("b")), 1 => Just(Some("c"))],
        0..2usize,
        0..3u8,
        1..3u32,
        0..3u8,
        proptest::option::weighted(0.6, proptest::collection::vec(1..4usize, 0..4)),
        any::<bool>(),
        any::<u16>(),
    )
        .prop_map(|(message_id, kind, kind_via, version, version_via, recipients, recipient_as_int, payload)| DedupeMsg {
            message_id,
            kind,
            kind_via,
            version,
            version_via,
            recipients,
            recipient_as_int,
            payload,
        })
}

impl DedupeMsg {
    fn upstream(&self, position: Option<u64>) -> sse_gateway_core::UpstreamMessage {
        use sse_gateway_core::HeaderValue;
        let kind = DEDUPE_TYPES[self.kind];
        let body = match kind {
            "deal.updated" => serde_json::json!({"deal_id": UUID1, "changes": {"n": self.payload}, "updated_at": "2026-11-28T10:00:00Z", "version": self.payload}),
            _ => serde_json::json!({"calculation_id": UUID1, "deal_id": UUID2, "insurance_company": "x", "premium_amount": self.payload}),
        };
        let mut m = msg(kind, body);
        match self.kind_via {
            0 => {}
            1 => m.kind = None,
            _ => m.kind = Some(String::new()),
        }
        m.schema_version = match (self.version_via, self.version) {
            (0, 1) => None,
            (0 | 1, v) => Some(HeaderValue::Int(i64::from(v))),
            (_, v) => Some(HeaderValue::Text(format!(" {v} "))),
        };
        m.recipient_ids = self.recipients.as_ref().map(|r| match r.as_slice() {
            [one] if self.recipient_as_int => HeaderValue::Int(*one as i64),
            r => HeaderValue::Text(r.iter().map(|u| format!(" {u}")).collect::<Vec<_>>().join(",")),
        });
        m.message_id = self.message_id.map(str::to_string);
        m.position = position;
        m
    }

    /// What the documented rule compares (README, `RecentIds`): the `message_id` with the event
    /// type, the schema version and the recipients (a set: order, repeats and spelling aside).
    /// `None` without a (non-empty) `message_id`: never a duplicate.
    fn key(&self) -> Option<(&'static str, &'static str, u32, Option<std::collections::BTreeSet<String>>)> {
        let mid = self.message_id.filter(|m| !m.is_empty())?;
        let recipients = self.recipients.as_ref().map(|r| r.iter().map(|u| u.to_string()).collect());
        Some((mid, DEDUPE_TYPES[self.kind], self.version, recipients))
    }

    /// A recipient header that names no one: dropped (`no_recipient`) before any `message_id`
    /// is looked at.
    fn names_no_one(&self) -> bool {
        self.recipients.as_ref().is_some_and(Vec::is_empty)
    }
}

fn dedupe_harness(window: usize) -> Harness {
    let cat = sse_gateway_core::Catalogue::from_toml(include_str!("fixtures/catalogue_v2.toml")).unwrap();
    Harness::with_catalogue(&format!("buffer_events = {window}\n"), cat)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Live messages (no log position): one is dropped as `duplicate` exactly when an earlier
    /// message with the same `message_id`, type, version and recipients is among the last W
    /// admitted messages that carried a `message_id` (W = the channel's `buffer_events`);
    /// messages without one are never dropped as duplicates and take no place in the window; a
    /// dropped duplicate does not refresh its original. Every other message goes out as the
    /// next event with the type, version and recipients it was sent with.
    #[test]
    fn message_id_dedupe_follows_the_window_rule(window in 1usize..5, msgs in proptest::collection::vec(dedupe_msg(), 0..40)) {
        let mut h = dedupe_harness(window);
        let ch = h.channel("deals");
        let mut recent = std::collections::VecDeque::new();
        let mut next_seq = 1;
        for (i, m) in msgs.iter().enumerate() {
            let got = h.ingest[ch.index()].handle_message(&m.upstream(None));
            if m.names_no_one() {
                prop_assert_eq!(got.map(|_| ()).map_err(|d| d.reason), Err(sse_gateway_core::DropReason::NoRecipient), "message {}", i);
                continue;
            }
            let key = m.key();
            if key.as_ref().is_some_and(|k| recent.contains(k)) {
                prop_assert_eq!(got.map(|_| ()).map_err(|d| d.reason), Err(sse_gateway_core::DropReason::Duplicate), "message {}: {:?} in {:?}", i, key, recent);
                continue;
            }
            let ev = match got {
                Ok(ev) => ev,
                Err(d) => return Err(TestCaseError::fail(format!("message {i} {m:?} dropped: {d:?} (window {recent:?})"))),
            };
            prop_assert_eq!(ev.id().seq, next_seq);
            next_seq += 1;
            prop_assert_eq!(ev.event_type(), DEDUPE_TYPES[m.kind]);
            prop_assert_eq!(ev.version(), m.version);
            let sent: Option<std::collections::BTreeSet<String>> = ev.recipients().map(|r| r.iter().map(|u| u.to_string()).collect());
            let named: Option<std::collections::BTreeSet<String>> = m.recipients.as_ref().map(|r| r.iter().map(|u| u.to_string()).collect());
            prop_assert_eq!(sent, named);
            if let Some(k) = key {
                recent.push_back(k);
                if recent.len() > window {
                    recent.pop_front();
                }
            }
        }
    }

    /// A read-back's own window: the same rule, and a message read again at the position it was
    /// remembered at is not a retry of itself (it goes out again); the same key at another
    /// position is a duplicate. Reads come in any order, with repeats (overlapping read-backs).
    #[test]
    fn read_back_dedupe_takes_the_same_position_again(
        window in 1usize..5,
        log in proptest::collection::vec(dedupe_msg(), 1..20),
        reads in proptest::collection::vec(any::<proptest::sample::Index>(), 0..40),
    ) {
        let h = dedupe_harness(window);
        let ing = &h.ingest[h.channel("deals").index()];
        let mut seen = ing.read_back_window();
        let mut recent: std::collections::VecDeque<(_, u64)> = std::collections::VecDeque::new();
        for r in reads {
            let i = r.index(log.len());
            let (m, position) = (&log[i], i as u64 + 1);
            let got = ing.read_back(&m.upstream(Some(position)), &mut seen).map(|ev| ev.id().seq).map_err(|d| d.reason);
            if m.names_no_one() {
                prop_assert_eq!(got, Err(sse_gateway_core::DropReason::NoRecipient));
                continue;
            }
            let key = m.key();
            match key.as_ref().and_then(|k| recent.iter().find(|(r, _)| r == k)) {
                Some(&(_, at)) if at == position => prop_assert_eq!(got, Ok(position), "read again at {}", position),
                Some(&(_, at)) => prop_assert_eq!(got, Err(sse_gateway_core::DropReason::Duplicate), "{:?} at {} after {}", key, position, at),
                None => {
                    prop_assert_eq!(got, Ok(position), "{:?} at {}: window {:?}", key, position, recent);
                    if let Some(k) = key {
                        recent.push_back((k, position));
                        if recent.len() > window {
                            recent.pop_front();
                        }
                    }
                }
            }
        }
    }
}

fn signed_head() -> impl Strategy<Value = signed_head::SignedHead> {
    // Mostly a single choice or none, so that most requests get past the refusals.
    let few = |none: u32| prop_oneof![none => Just(Vec::new()), 2 => proptest::collection::vec(any::<u8>(), 1..2), 1 => proptest::collection::vec(any::<u8>(), 2..3)];
    (
        (
            prop_oneof![4 => Just(0u8), 4 => Just(1u8), 1 => Just(2u8)],
            prop_oneof![8 => Just(true), 1 => Just(false)],
            any::<u8>(),
            few(4),
            few(2),
            proptest::option::of(any::<u8>()),
        ),
        (proptest::option::of(any::<u8>()), any::<u8>(), any::<u8>(), "[a-z0-9]{1,12}", any::<u8>()),
        (
            prop_oneof![1 => Just(Vec::new()), 5 => proptest::collection::vec(any::<u8>(), 1..2), 1 => proptest::collection::vec(any::<u8>(), 2..3)],
            proptest::option::weighted(0.2, any::<u8>()),
            proptest::option::of(any::<u8>()),
            prop_oneof![1 => Just(0u8), 4 => Just(1u8)],
            proptest::option::of(any::<u8>()),
        ),
        (
            proptest::collection::vec(("[A-Za-z]{1,8}", "[ -~]{0,20}"), 0..3),
            proptest::collection::vec(any::<u8>(), 0..40),
            // Mostly a JSON type, so that most publishes get past it.
            prop_oneof![4 => 0u8..5, 1 => any::<u8>()],
        ),
    )
        .prop_map(|((kind, method_ok, channel, versions, query_ids, header_id), (accept, token_at, bearer, user, roles), (content_lengths, transfer_encoding, expect, minor, origin), (noise, after, content_type))| {
            signed_head::SignedHead {
                kind, method_ok, channel, versions, query_ids, header_id, accept, token_at, bearer, user, roles,
                content_lengths, transfer_encoding, expect, content_type, minor, origin, noise, after,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Past authentication: a head carrying a validly signed token for a chosen user and roles
    /// (in the Authorization header, the cookie or the query) routes exactly as the rules say
    /// (support/signed_head.rs): a stream is the signed user's, on the path's channel, with the
    /// first `version=`, resuming from Last-Event-ID over the first non-empty
    /// `last_event_id=`; payments without `finance_manager` is the `forbidden` answer; a
    /// publish needs the publisher role, a JSON Content-Type, no Transfer-Encoding and exactly one all-digit
    /// Content-Length (its value), with `head_len` just past the blank line and
    /// `expect_continue` only for a body on HTTP/1.1; anything else is refused with its
    /// status, as a complete response.
    #[test]
    fn a_validly_signed_request_routes_as_the_rules_say(req in signed_head()) {
        let h = Harness::with_auth("cookie = \"t\"\nquery_param = true\n", &format!("{ORIGIN_CONFIG}publish_endpoint = true\n"));
        let raw = req.bytes(&req.token(SECRET.as_bytes(), h.unix));
        let routed = h.route(&raw);
        req.check(&raw, &routed, &h.settings);
    }
}

/// The one case where `history_gap` may follow an open: a client that resumed inside the window
/// and reads nothing while its catch-up is not over (its output holds an event over half the
/// bound) is passed by the buffer; once it reads it gets what was queued, `history_gap`, then
/// live events. A client that did not read from the start but resumed nothing is live: the
/// events published meanwhile wait in its output, and it gets no `history_gap`.
#[test]
fn only_a_catch_up_the_buffer_passed_gets_history_gap_after_the_open() {
    let publish = |pad| Op::Publish { channel: 0, recipients: None, v2: false, pad };
    let open = |user, resume| Op::Open { user, channel: 0, finance: false, v2: false, resume, ttl: 3600, read: false };
    let mut m = Model::new();
    m.apply(publish(0));
    m.apply(publish(2500));
    m.apply(open(0, ResumeChoice::Back(1)));
    m.apply(open(1, ResumeChoice::None));
    for _ in 0..7 {
        m.apply(publish(0));
    }
    m.apply(Op::Read { pick: 0 });
    m.apply(Op::Read { pick: 1 });
    m.apply(publish(0));
    assert_eq!(m.late_gaps, 1);
}

/// The cases proptest once shrank a failure to (`properties.proptest-regressions` keeps their
/// seeds, which no longer replay them since `Op` gained fields), as fixed sequences: the fields
/// added since take the values that were implied then (long tokens, clients that read, no pad,
/// stepped time).
#[test]
fn the_shrunk_failures_of_the_past_replay_as_fixed_sequences() {
    let open = |user, channel, finance, resume| Op::Open { user, channel, finance, v2: false, resume, ttl: 3600, read: true };
    let publish = |channel, recipients: Option<Vec<usize>>| Op::Publish { channel, recipients, v2: false, pad: 0 };
    let none = || ResumeChoice::None;
    // An event naming one recipient twice, on a channel others watch too.
    let mut m = Model::new();
    for op in [open(0, 0, false, none()), open(3, 1, false, none()), open(0, 0, false, none()), open(0, 0, false, none()), open(0, 0, false, none())] {
        m.apply(op);
    }
    m.apply(publish(1, Some(vec![3, 3])));
    // A resume six events back on a channel with seven (the window's oldest id).
    let mut m = Model::new();
    for _ in 0..7 {
        m.apply(publish(2, None));
    }
    m.apply(open(0, 2, true, ResumeChoice::Back(6)));
    // Evictions at the limit, then again at exactly the minimum age.
    let mut m = Model::new();
    for user in [4, 4, 0, 0, 4, 0, 0, 0] {
        m.apply(open(user, 0, false, none()));
    }
    m.apply(Op::Advance { ms: 5_000, step: true });
    m.apply(open(0, 0, false, none()));
    m.apply(open(0, 0, false, none()));
    // A short token across two heartbeat intervals.
    let mut m = Model::new();
    m.apply(Op::Advance { ms: 19_430, step: true });
    m.apply(Op::Open { user: 0, channel: 0, finance: false, v2: false, resume: none(), ttl: 74, read: true });
    m.apply(Op::Advance { ms: 61_926, step: true });
    m.apply(Op::Advance { ms: 11_645, step: true });
    // An event larger than the output bound to an output with no event waiting.
    let mut m = Model::new();
    m.apply(open(0, 0, false, none()));
    m.apply(Op::Publish { channel: 0, recipients: None, v2: false, pad: 4000 });
}

/// A full shard: a user below the limit is refused 503; one at the limit whose oldest stream
/// is old enough evicts it and opens in the slot it frees (`evict_oldest`), and with `reject`
/// is refused 409 (the model asserts each outcome).
#[test]
fn a_full_shard_refuses_503_unless_an_eviction_frees_a_slot() {
    let open = |user| Op::Open { user, channel: 1, finance: false, v2: false, resume: ResumeChoice::None, ttl: 3600, read: true };
    for reject in [false, true] {
        let mut m = Model::with_shard(3, reject);
        for _ in 0..3 {
            m.apply(open(0));
        }
        m.apply(open(1)); // 503
        m.apply(Op::Advance { ms: 6_000, step: true });
        m.apply(open(1)); // 503 still
        m.apply(open(0)); // evicts u0's oldest (or 409 with reject)
        m.apply(Op::Close { pick: 0 });
        m.apply(open(1)); // a slot is free
    }
}
