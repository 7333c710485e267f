//! One test per rule of the core, on a fake clock, asserting the bytes on the wire.

mod support;

use std::time::Duration;

use bytes::Bytes;
use sse_gateway_core::*;
use support::*;

const STREAM_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache, no-transform\r\n\
X-Accel-Buffering: no\r\nConnection: close\r\n\r\n";

fn respond(r: Routed) -> String {
    match r {
        Routed::Respond(r) => String::from_utf8(r.bytes.to_vec()).unwrap(),
        other => panic!("expected a response, got {other:?}"),
    }
}

fn error_response(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
}

#[test]
fn a_stream_starts_with_the_event_stream_head_and_a_retry_field() {
    let mut h = Harness::new("");
    let id = h.open("u1", "deals");
    assert_eq!(h.take_wire(id), format!("{STREAM_HEAD}retry: 3000\n\n"));
    assert_eq!(h.gw.stream_count(), 1);
}

#[test]
fn retry_jitter_stays_within_its_bound_and_varies_per_connection() {
    let mut h = Harness::new("retry_jitter = \"1s\"\nmax_per_user = 100\n");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let id = h.open("u1", "deals");
        let w = h.take_events(id);
        let ms: u64 = w.trim_start_matches("retry: ").trim().parse().unwrap();
        assert!((3000..=4000).contains(&ms), "{ms}");
        seen.insert(ms);
    }
    assert!(seen.len() > 1, "jitter gave the same retry every time");
}

#[test]
fn an_event_reaches_the_stream_with_id_event_and_data() {
    let mut h = Harness::new("");
    let id = h.open("u1", "deals");
    h.take_wire(id);
    let body = deal_created("first");
    h.publish("deals", "deal.created", body.clone());
    assert_eq!(h.take_wire(id), frame("1000-1", "deal.created", &body));
}

#[test]
fn heartbeat_follows_thirty_idle_seconds() {
    let mut h = Harness::new("");
    let id = h.open("u1", "tasks");
    h.take_wire(id);
    h.advance(Duration::from_millis(29_999));
    assert_eq!(h.take_wire(id), "");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.take_wire(id), "event: heartbeat\ndata:\n\n");
    h.advance(Duration::from_secs(30));
    assert_eq!(h.take_wire(id), "event: heartbeat\ndata:\n\n");
    assert_eq!(h.gw.poll_timeout().map(|t| t.1), Some(TimerReason::Heartbeat));
}

#[test]
fn heartbeat_interval_is_configurable() {
    let mut h = Harness::new("heartbeat = \"1s\"\n");
    let id = h.open("u1", "tasks");
    h.take_wire(id);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.take_wire(id), "event: heartbeat\ndata:\n\n");
}

#[test]
fn source_outage_warns_at_once_and_every_sixty_seconds_until_it_recovers() {
    let mut h = Harness::new("");
    let id = h.open("u1", "deals");
    let other = h.open("u2", "tasks");
    h.take_wire(id);
    h.take_wire(other);
    let deals = h.channel("deals");
    let warning = "event: warning\ndata: {\"code\":\"source_unavailable\",\"channel\":\"deals\"}\n\n";
    h.gw.source_down(deals, h.now);
    h.drain();
    assert_eq!(h.take_wire(id), warning);
    h.gw.source_down(deals, h.now); // repeated: no second warning
    h.drain();
    assert_eq!(h.take_wire(id), "");
    h.advance(Duration::from_secs(59));
    assert_eq!(h.take_wire(id), "event: heartbeat\ndata:\n\n", "only the 30 s heartbeat");
    h.advance(Duration::from_secs(1));
    // At 60 s the warning repeats, beside the 60 s heartbeat.
    let w = h.take_wire(id);
    assert_eq!(w.matches(warning).count(), 1, "{w}");
    assert_eq!(w.matches("event: heartbeat").count(), 1, "{w}");
    // A stream opened during the outage is warned at once.
    let late = h.open("u3", "deals");
    assert!(h.take_events(late).ends_with(warning));
    h.gw.source_up(deals);
    h.advance(Duration::from_secs(120));
    assert!(!h.take_wire(id).contains("warning"));
    assert!(!h.take_wire(other).contains("warning"), "other channels are not warned");
}

#[test]
fn a_user_without_the_channel_role_gets_forbidden_and_the_connection_closes() {
    let h = Harness::new("");
    let t = h.token("u1", &["sales"], 3600);
    let raw = Harness::head("/api/v1/streams/payments", &["Accept: text/event-stream", &format!("Authorization: Bearer {t}")]);
    assert_eq!(
        respond(h.route(&raw)),
        format!("{STREAM_HEAD}retry: 60000\n\nevent: error\ndata: {{\"code\":\"forbidden\"}}\n\n")
    );
    // Asking for a version it does not have: still forbidden, not its list of versions.
    let raw = Harness::head("/api/v1/streams/payments?version=9", &["Accept: text/event-stream", &format!("Authorization: Bearer {t}")]);
    let answer = respond(h.route(&raw));
    assert!(answer.contains("\"code\":\"forbidden\"") && !answer.contains("supported"), "{answer}");
    let t = h.token("u1", &["finance_manager"], 3600);
    let raw = Harness::head("/api/v1/streams/payments", &[&format!("Authorization: Bearer {t}")]);
    assert!(matches!(h.route(&raw), Routed::Stream(_)));
}

#[test]
fn no_token_gets_401_with_www_authenticate() {
    let h = Harness::new("");
    let raw = Harness::head("/api/v1/streams/deals", &["Accept: text/event-stream"]);
    assert_eq!(
        respond(h.route(&raw)),
        error_response(
            "401 Unauthorized",
            "WWW-Authenticate: Bearer realm=\"sse-gateway\"\r\n",
            r#"{"code":"unauthorized","message":"a bearer token is required"}"#
        )
    );
}

#[test]
fn a_bad_token_gets_401_with_invalid_token() {
    let h = Harness::new("");
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "u1", "exp": h.unix + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-!!"),
    )
    .unwrap();
    let raw = Harness::head("/api/v1/streams/deals", &[&format!("Authorization: Bearer {forged}")]);
    let r = respond(h.route(&raw));
    assert!(r.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{r}");
    assert!(r.contains("WWW-Authenticate: Bearer realm=\"sse-gateway\", error=\"invalid_token\"\r\n"), "{r}");
    assert!(r.ends_with(r#"{"code":"unauthorized","message":"invalid token: bad_signature"}"#), "{r}");
    assert!(!r.contains(&forged), "the token is never reflected");
}

#[test]
fn every_refusal_says_its_code_for_the_log_and_an_invalid_token_why() {
    let h = Harness::new("");
    let refusal = |raw: &[u8]| match h.route(raw) {
        Routed::Respond(r) => r.refusal,
        other => panic!("not answered at once: {other:?}"),
    };
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "u1", "exp": h.unix + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-!!"),
    )
    .unwrap();
    let bad = format!("Authorization: Bearer {forged}");
    let sales = format!("Authorization: Bearer {}", h.token("u1", &["sales"], 3600));
    let cases: [(&[u8], &str, &str); 6] = [
        (&Harness::head("/api/v1/streams/deals", &[]), "unauthorized", ""),
        (&Harness::head("/api/v1/streams/deals", &[&bad]), "unauthorized", "bad_signature"),
        (&Harness::head("/api/v1/streams/payments", &[&sales]), "forbidden", ""),
        (&Harness::head("/api/v1/streams/deals", &[&sales, "Accept: text/html"]), "not_acceptable", ""),
        (&Harness::head("/nowhere", &[]), "not_found", ""),
        (b"\x00\x01 garbage\r\n\r\n", "bad_request", ""),
    ];
    for (raw, code, reason) in cases {
        let got = refusal(raw).unwrap_or_else(|| panic!("not a refusal: {}", String::from_utf8_lossy(raw)));
        assert_eq!((got.code, got.reason), (code, reason), "{}", String::from_utf8_lossy(raw));
        let who = (code == "forbidden").then(|| ("u1".into(), h.channel("payments")));
        assert_eq!(got.forbidden, who, "only a forbidden answer names the user and channel");
    }
}

#[test]
fn an_expired_token_gets_401() {
    let mut h = Harness::new(""); // the default leeway of 30 s
    let t = h.token("u1", &[], 10);
    h.unix += 41;
    let raw = Harness::head("/api/v1/streams/deals", &[&format!("Authorization: Bearer {t}")]);
    assert!(respond(h.route(&raw)).contains("invalid token: expired"));
}

#[test]
fn unknown_channel_gets_404_and_unknown_route_404() {
    let mut h = Harness::new("");
    let r = h.open_path("u1", &[], "/api/v1/streams/invoices", &[]).unwrap_err();
    assert_eq!(
        String::from_utf8(r.bytes.to_vec()).unwrap(),
        error_response("404 Not Found", "", r#"{"code":"unknown_channel","message":"no such channel"}"#)
    );
    let raw = Harness::head("/api/v2/whatever", &[]);
    assert_eq!(
        respond(h.route(&raw)),
        error_response("404 Not Found", "", r#"{"code":"not_found","message":"no such route"}"#)
    );
}

#[test]
fn a_wrong_method_gets_405_with_allow() {
    let h = Harness::new("");
    let raw = b"POST /api/v1/streams/deals HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        respond(h.route(raw)),
        error_response(
            "405 Method Not Allowed",
            "Allow: GET, OPTIONS\r\n",
            r#"{"code":"method_not_allowed","message":"method not allowed"}"#
        )
    );
}

#[test]
fn an_accept_without_event_stream_gets_406() {
    let mut h = Harness::new("");
    let r = h.open_path("u1", &[], "/api/v1/streams/deals", &["Accept: application/json"]);
    // open_path already sends "Accept: text/event-stream": the lines are one list, which admits it.
    assert!(r.is_ok());
    // In either order (a client or proxy that puts its own line first).
    let t = h.token("u1", &[], 3600);
    let split = Harness::head(
        "/api/v1/streams/deals",
        &["Accept: application/json", "Accept: text/event-stream", &format!("Authorization: Bearer {t}")],
    );
    assert!(matches!(h.route(&split), Routed::Stream(_)));
    // And a later line may refuse it too (the most specific range decides).
    let refused = Harness::head("/api/v1/streams/deals", &["Accept: */*", "Accept: text/event-stream;q=0", &format!("Authorization: Bearer {t}")]);
    assert!(respond(h.route(&refused)).starts_with("HTTP/1.1 406"));
    let t = h.token("u1", &[], 3600);
    let raw = Harness::head("/api/v1/streams/deals", &["Accept: application/json", &format!("Authorization: Bearer {t}")]);
    assert_eq!(
        respond(h.route(&raw)),
        error_response(
            "406 Not Acceptable",
            "",
            r#"{"code":"not_acceptable","message":"Accept must admit text/event-stream"}"#
        )
    );
}

#[test]
fn an_unknown_version_gets_400_listing_the_supported_ones() {
    let mut h = Harness::new("");
    for q in ["?version=2", "?version=abc", "?version=0"] {
        let r = h.open_path("u1", &[], &format!("/api/v1/streams/deals{q}"), &[]).unwrap_err();
        let body = r#"{"code":"unsupported_version","message":"unsupported schema version","supported":[1]}"#;
        assert_eq!(
            String::from_utf8(r.bytes.to_vec()).unwrap(),
            format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        );
    }
    assert!(h.open_path("u1", &[], "/api/v1/streams/deals?version=1", &[]).is_ok());
}

#[test]
fn an_oversized_head_gets_431_and_a_partial_head_asks_for_more() {
    let h = Harness::new("");
    let mut raw = b"GET /api/v1/streams/deals HTTP/1.1\r\nX-Big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 17 * 1024));
    assert_eq!(
        respond(h.route(&raw)),
        error_response(
            "431 Request Header Fields Too Large",
            "",
            r#"{"code":"head_too_large","message":"request head too large"}"#
        )
    );
    // Header fields: 100 are read (a browser's and what proxies add), more are refused.
    let t = h.token("u1", &[], 3600);
    let fields = |n: usize| {
        let mut head = format!("GET /api/v1/streams/deals HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t}\r\n");
        head.extend((2..n).map(|i| format!("X-Forwarded-{i}: {i}\r\n")));
        head + "\r\n"
    };
    assert!(matches!(h.route(fields(100).as_bytes()), Routed::Stream(_)));
    assert_eq!(
        respond(h.route(fields(101).as_bytes())),
        error_response(
            "431 Request Header Fields Too Large",
            "",
            r#"{"code":"head_too_large","message":"request head has more than 100 header fields"}"#
        )
    );
    assert_eq!(h.route(b"GET /api/v1/streams/deals HTTP/1.1\r\nAccept: text/"), Routed::Partial);
    assert!(respond(h.route(b"\x00\x01garbage\r\n\r\n")).starts_with("HTTP/1.1 400 Bad Request"));
    let text = h.metrics.render();
    assert!(text.contains("sse_gateway_http_responses_total{status=\"431\"} 2\n"), "{text}");
    assert!(text.contains("sse_gateway_http_responses_total{status=\"400\"} 1\n"), "{text}");
}

#[test]
fn the_sixth_stream_is_refused_409_while_the_oldest_is_younger_than_min_age() {
    let mut h = Harness::new("");
    let ids: Vec<_> = (0..5).map(|_| h.open("u1", "deals")).collect();
    h.advance(Duration::from_secs(9));
    let r = h.open_path("u1", &[], "/api/v1/streams/tasks", &[]).unwrap_err();
    assert_eq!(
        String::from_utf8(r.bytes.to_vec()).unwrap(),
        error_response("409 Conflict", "", r#"{"code":"stream_limit","message":"too many open streams for this user"}"#)
    );
    assert_eq!(h.gw.streams_of("u1"), 5);
    assert!(h.closed.is_empty());
    // Other users are not affected.
    h.open("u2", "deals");
    // Past min age, the oldest is evicted with a stream_limit error and the new one opens.
    h.advance(Duration::from_secs(1));
    for id in &ids {
        h.take_wire(*id);
    }
    let new = h.open_path("u1", &[], "/api/v1/streams/tasks", &[]).unwrap();
    // With a long `retry:` (60 s and up to 2 s of jitter): back sooner, it would evict the next
    // oldest, and so on (D9's loop).
    let wire = h.take_wire(ids[0]);
    let (retry, rest) = wire.strip_prefix("retry: ").and_then(|w| w.split_once("\n\n")).unwrap_or_else(|| panic!("{wire:?}"));
    assert!((60_000..=62_000).contains(&retry.parse::<u64>().unwrap()), "{wire:?}");
    assert_eq!(rest, "event: error\ndata: {\"code\":\"stream_limit\"}\n\n");
    assert_eq!(h.closed.get(&ids[0]), Some(&CloseReason::StreamLimit));
    assert!(h.take_wire(new).starts_with(STREAM_HEAD));
    assert_eq!(h.gw.streams_of("u1"), 5);
}

#[test]
fn an_evicted_streams_retry_is_never_shorter_than_min_stream_age() {
    // A configuration that only raised min_stream_age (past evicted_retry's 60 s) still loads.
    let mut h = Harness::new("min_stream_age = \"2m\"\n");
    let ids: Vec<_> = (0..5).map(|_| h.open("u1", "deals")).collect();
    h.advance(Duration::from_secs(121));
    h.take_wire(ids[0]);
    h.open_path("u1", &[], "/api/v1/streams/tasks", &[]).unwrap();
    assert_eq!(h.take_wire(ids[0]), "retry: 120000\n\nevent: error\ndata: {\"code\":\"stream_limit\"}\n\n");
}

#[test]
fn a_full_shard_still_lets_a_user_at_the_limit_replace_their_oldest_stream() {
    let mut h = Harness::new("");
    h.gw = Gateway::new(h.settings.clone(), h.metrics.clone(), 5, 7); // room for 5 streams
    let ids: Vec<_> = (0..5).map(|_| h.open("u1", "deals")).collect();
    h.advance(Duration::from_secs(10));
    let r = h.open_path("u2", &[], "/api/v1/streams/deals", &[]).unwrap_err();
    assert_eq!(r.status, 503, "full");
    // u1's sixth evicts its oldest, which frees the slot the new one takes.
    let new = h.open_path("u1", &[], "/api/v1/streams/tasks", &[]).expect("not 503");
    assert_eq!(h.closed.get(&ids[0]), Some(&CloseReason::StreamLimit));
    assert!(h.take_wire(new).starts_with(STREAM_HEAD));
    assert_eq!(h.gw.stream_count(), 5);
}

#[test]
fn the_reject_policy_always_answers_409() {
    let mut h = Harness::new("limit_policy = \"reject\"\nmax_per_user = 2\n");
    h.open("u1", "deals");
    h.open("u1", "deals");
    // However old the open streams (their tokens last an hour).
    h.advance(Duration::from_secs(3599));
    let r = h.open_path("u1", &[], "/api/v1/streams/deals", &[]).unwrap_err();
    assert_eq!(r.status, 409);
    assert!(h.closed.is_empty());
}

#[test]
fn a_token_that_expires_mid_stream_ends_it_with_token_expired() {
    let mut h = Harness::new("");
    // Token valid for 100 s: closed at exp (D1), not at exp + leeway (30 s by default).
    let t = h.token("u1", &[], 100);
    let raw = Harness::head("/api/v1/streams/deals", &[&format!("Authorization: Bearer {t}")]);
    let Routed::Stream(req) = h.route(&raw) else { panic!() };
    let id = h.gw.open(req, h.now, h.since_epoch()).unwrap();
    h.drain();
    h.take_wire(id);
    h.advance(Duration::from_secs(99));
    assert!(!h.closed.contains_key(&id));
    h.take_wire(id);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.take_wire(id), "event: error\ndata: {\"code\":\"token_expired\"}\n\n");
    assert_eq!(h.closed.get(&id), Some(&CloseReason::TokenExpired));
    assert_eq!(h.gw.stream_count(), 0);
}

#[test]
fn a_stream_opened_late_in_a_second_ends_at_exp_not_up_to_a_second_after() {
    let mut h = Harness::new("");
    let t = h.token("u1", &[], 10);
    // The wall clock reads 0.9 s into the second the token was issued in: `exp` is 9.1 s away.
    h.subsec = Duration::from_millis(900);
    let raw = Harness::head("/api/v1/streams/deals", &[&format!("Authorization: Bearer {t}")]);
    let Routed::Stream(req) = h.route(&raw) else { panic!() };
    let id = h.gw.open(req, h.now, h.since_epoch()).unwrap();
    h.drain();
    h.take_wire(id);
    h.advance(Duration::from_millis(9_099));
    assert!(!h.closed.contains_key(&id), "closed before exp");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.take_wire(id), "event: error\ndata: {\"code\":\"token_expired\"}\n\n");
    assert_eq!(h.closed.get(&id), Some(&CloseReason::TokenExpired));
}

#[test]
fn a_token_presented_within_the_leeway_after_exp_is_answered_token_expired_without_taking_a_slot() {
    let mut h = Harness::new("");
    let mine: Vec<_> = (0..5).map(|_| h.open("u1", "deals")).collect();
    h.advance(Duration::from_secs(600)); // all five older than min_stream_age: evictable
    let t = h.token("u1", &[], 0);
    h.advance(Duration::from_secs(10)); // 10 s past exp, inside the 30-s leeway: it verifies
    let raw = Harness::head("/api/v1/streams/deals", &[&format!("Authorization: Bearer {t}")]);
    let Routed::Stream(req) = h.route(&raw) else { panic!("a token within the leeway verifies") };
    let r = h.gw.open(req, h.now, h.since_epoch()).unwrap_err();
    let text = String::from_utf8(r.bytes.to_vec()).unwrap();
    assert_eq!(r.status, 200);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nretry: 3000\n\nevent: error\ndata: {\"code\":\"token_expired\"}\n\n"), "{text}");
    assert_eq!(r.refusal.map(|r| r.code), Some("token_expired"));
    h.drain();
    assert!(h.closed.is_empty(), "none of the user's streams evicted: {:?}", h.closed);
    assert_eq!(h.gw.streams_of("u1"), 5);
    assert!(mine.iter().all(|id| !h.closed.contains_key(id)));
}

#[test]
fn a_notification_reaches_only_its_recipients() {
    let mut h = Harness::new("");
    let a = h.open("alice", "notifications");
    let b = h.open("bob", "notifications");
    let c = h.open("carol", "notifications");
    let d = h.open("alice", "deals");
    for id in [a, b, c, d] {
        h.take_wire(id);
    }
    let body = notification_sent("hi");
    h.publish_to("notifications", "notification.sent", body.clone(), "alice, carol");
    assert_eq!(h.take_wire(a), frame("1001-1", "notification.sent", &body));
    assert_eq!(h.take_wire(b), "");
    assert_eq!(h.take_wire(c), frame("1001-1", "notification.sent", &body));
    assert_eq!(h.take_wire(d), "", "recipients are matched on the event's channel only");
}

#[test]
fn a_per_user_message_without_recipients_is_dropped_and_counted() {
    let mut h = Harness::new("");
    let a = h.open("alice", "notifications");
    h.take_wire(a);
    let r = h.publish_msg("notifications", msg("notification.sent", notification_sent("x")));
    assert_eq!(r.unwrap_err().reason, DropReason::NoRecipient);
    assert_eq!(h.metrics.dropped_count(DropReason::NoRecipient), 1);
    assert_eq!(h.take_wire(a), "");
    assert!(h.metrics.render().contains("sse_gateway_events_dropped_total{channel=\"notifications\",reason=\"no_recipient\"} 1\n"));
}

#[test]
fn recipients_also_narrow_a_broadcast_channel() {
    let mut h = Harness::new("");
    let a = h.open("alice", "deals");
    let b = h.open("bob", "deals");
    h.take_wire(a);
    h.take_wire(b);
    let body = deal_created("private");
    h.publish_to("deals", "deal.created", body.clone(), "bob");
    assert_eq!(h.take_wire(a), "");
    assert_eq!(h.take_wire(b), frame("1000-1", "deal.created", &body));
}

#[test]
fn invalid_messages_are_dropped_by_reason_and_the_next_valid_one_flows() {
    let mut h = Harness::new("");
    let id = h.open("u1", "deals");
    h.take_wire(id);
    let mut not_json = msg("deal.created", serde_json::json!({}));
    not_json.body = bytes::Bytes::from_static(b"{not json");
    let cases = [
        (not_json, DropReason::NotJson),
        (msg("deal.created", serde_json::json!([1])), DropReason::NotAnObject),
        (msg("deal.exploded", deal_created("x")), DropReason::UnknownType),
        (msg("deal.created", serde_json::json!({"deal_id": UUID1})), DropReason::MissingField),
        (msg("deal.created", serde_json::json!({"deal_id": 5, "client_id": UUID2, "title": "t", "status": "s", "created_at": "2026-01-01T00:00:00Z"})), DropReason::WrongKind),
        ({ let mut m = msg("deal.created", deal_created("x")); m.schema_version = Some(HeaderValue::Int(9)); m }, DropReason::UnsupportedVersion),
        ({ let mut m = msg("deal.created", deal_created("x")); m.schema_version = Some(HeaderValue::Other); m }, DropReason::BadHeader),
    ];
    for (m, why) in cases {
        assert_eq!(h.publish_msg("deals", m).unwrap_err().reason, why);
        assert_eq!(h.metrics.dropped_count(why), 1, "{why:?}");
    }
    assert_eq!(h.take_wire(id), "");
    let body = deal_created("ok");
    h.publish("deals", "deal.created", body.clone());
    assert_eq!(h.take_wire(id), frame("1000-1", "deal.created", &body), "drops take no id");
}

#[test]
fn a_redelivered_message_id_is_dropped_as_duplicate() {
    let mut h = Harness::new("");
    let id = h.open("u1", "deals");
    h.take_wire(id);
    let mut m = msg("deal.created", deal_created("x"));
    m.message_id = Some("m-1".into());
    assert!(h.publish_msg("deals", m.clone()).is_ok());
    assert_eq!(h.publish_msg("deals", m).unwrap_err().reason, DropReason::Duplicate);
    assert_eq!(h.take_wire(id).matches("event: deal.created").count(), 1);
}

/// A harness with version 2 of `deals` (fixtures/catalogue_v2.toml) and a stream of each
/// version, their heads taken.
fn two_version_streams() -> (Harness, StreamId, StreamId) {
    let cat = Catalogue::from_toml(include_str!("fixtures/catalogue_v2.toml")).unwrap();
    let mut h = Harness::with_catalogue("", cat);
    let v1 = h.open_path("u1", &[], "/api/v1/streams/deals", &[]).unwrap();
    let v2 = h.open_path("u2", &[], "/api/v1/streams/deals?version=2", &[]).unwrap();
    h.take_wire(v1);
    h.take_wire(v2);
    (h, v1, v2)
}

/// A valid version-2 `deal.created` payload.
fn deal_created_v2(name: &str) -> serde_json::Value {
    serde_json::json!({"deal_id": UUID1, "client_id": UUID2, "owner_id": UUID2, "name": name, "status": "draft", "created_at": "2026-11-28T10:00:00Z"})
}

#[test]
fn one_message_id_on_different_versions_or_recipients_is_not_a_duplicate() {
    let (mut h, v1, v2) = two_version_streams();
    let alice = h.open("alice", "notifications");
    let bob = h.open("bob", "notifications");
    for id in [alice, bob] {
        h.take_wire(id);
    }
    // A dual-published event (D5): its v1 and v2 copies carry the same message_id.
    let b1 = deal_created("v1 title");
    let mut m1 = msg("deal.created", b1.clone());
    m1.message_id = Some("deal-42".into());
    let b2 = deal_created_v2("v2 name");
    let mut m2 = msg("deal.created", b2.clone());
    m2.schema_version = Some(HeaderValue::Int(2));
    m2.message_id = Some("deal-42".into());
    h.publish_msg("deals", m1.clone()).unwrap();
    h.publish_msg("deals", m2.clone()).unwrap();
    assert_eq!(h.take_wire(v1), frame("1000-1", "deal.created", &b1));
    assert_eq!(h.take_wire(v2), frame("1000-2", "deal.created", &b2));
    // A retry of either copy is still a duplicate, even with a payload that changed.
    assert_eq!(h.publish_msg("deals", m2).unwrap_err().reason, DropReason::Duplicate);
    m1.body = bytes::Bytes::from(deal_created("retried").to_string());
    assert_eq!(h.publish_msg("deals", m1).unwrap_err().reason, DropReason::Duplicate);

    // One notification per user under one message_id: each reaches its own user.
    let body = notification_sent("hi");
    for user in ["alice", "bob"] {
        let mut m = msg("notification.sent", body.clone());
        m.recipient_ids = Some(HeaderValue::Text(user.into()));
        m.message_id = Some("n-7".into());
        h.publish_msg("notifications", m).unwrap();
    }
    assert_eq!(h.take_wire(alice), frame("1001-1", "notification.sent", &body));
    assert_eq!(h.take_wire(bob), frame("1001-2", "notification.sent", &body));
}

#[test]
fn the_type_falls_back_to_the_routing_key() {
    let mut h = Harness::new("");
    let id = h.open("u1", "deals");
    h.take_wire(id);
    let mut m = msg("deal.created", deal_created("rk"));
    m.kind = None;
    h.publish_msg("deals", m).unwrap();
    assert!(h.take_wire(id).contains("event: deal.created\n"));
}

#[test]
fn version_streams_each_get_only_their_own_events() {
    let (mut h, v1, v2) = two_version_streams();
    let b1 = deal_created("v1 title");
    h.publish("deals", "deal.created", b1.clone());
    let b2 = deal_created_v2("v2 name");
    let mut m = msg("deal.created", b2.clone());
    m.schema_version = Some(HeaderValue::Int(2));
    h.publish_msg("deals", m).unwrap();
    // A v1 payload published as v2 fails v2's schema.
    let mut bad = msg("deal.created", b1.clone());
    bad.schema_version = Some(HeaderValue::Int(2));
    assert_eq!(h.publish_msg("deals", bad).unwrap_err().reason, DropReason::MissingField);
    assert_eq!(h.take_wire(v1), frame("1000-1", "deal.created", &b1));
    assert_eq!(h.take_wire(v2), frame("1000-2", "deal.created", &b2));
    let r = h.open_path("u3", &[], "/api/v1/streams/deals?version=3", &[]).unwrap_err();
    assert!(String::from_utf8(r.bytes.to_vec()).unwrap().contains(r#""supported":[1,2]"#));
}

#[test]
fn a_resume_inside_the_window_replays_every_later_event_without_gap_or_duplicate() {
    let mut h = Harness::new("");
    let bodies: Vec<_> = (0..5).map(|i| deal_created(&format!("d{i}"))).collect();
    for b in &bodies {
        h.publish("deals", "deal.created", b.clone());
    }
    let id = h
        .open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-3"])
        .unwrap();
    h.publish("deals", "deal.created", deal_created("live"));
    let expect = format!(
        "retry: 3000\n\n{}{}{}",
        frame("1000-4", "deal.created", &bodies[3]),
        frame("1000-5", "deal.created", &bodies[4]),
        frame("1000-6", "deal.created", &deal_created("live"))
    );
    assert_eq!(h.take_events(id), expect);
    // The query parameter works too; the header wins when both are sent.
    let q = h
        .open_path("u2", &[], "/api/v1/streams/deals?last_event_id=1000-5", &["Last-Event-ID: 1000-6"])
        .unwrap();
    assert_eq!(h.take_events(q), "retry: 3000\n\n");
    let q = h.open_path("u3", &[], "/api/v1/streams/deals?last_event_id=1000-5", &[]).unwrap();
    assert_eq!(h.take_events(q), format!("retry: 3000\n\n{}", frame("1000-6", "deal.created", &deal_created("live"))));
    // An empty header says nothing: the query's id applies.
    let q = h.open_path("u4", &[], "/api/v1/streams/deals?last_event_id=1000-5", &["Last-Event-ID: "]).unwrap();
    assert_eq!(h.take_events(q), format!("retry: 3000\n\n{}", frame("1000-6", "deal.created", &deal_created("live"))));
    // So does an empty query value: a fresh stream, not a malformed id's history_gap.
    let q = h.open_path("u5", &[], "/api/v1/streams/deals?last_event_id=", &[]).unwrap();
    assert_eq!(h.take_events(q), "retry: 3000\n\n");
    let q = h.open_path("u6", &[], "/api/v1/streams/deals?last_event_id=&last_event_id=1000-5", &[]).unwrap();
    assert_eq!(h.take_events(q), format!("retry: 3000\n\n{}", frame("1000-6", "deal.created", &deal_created("live"))));
}

#[test]
fn a_stream_that_idles_after_a_catch_up_does_not_keep_the_room_the_catch_up_took() {
    let mut h = Harness::new("buffer_events = 200\n");
    for i in 0..150 {
        h.publish("deals", "deal.created", deal_created(&format!("d{i}")));
    }
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-0"]).unwrap();
    let (ids, _) = read_on(&mut h, id, 2);
    assert_eq!(ids, (1..=150).collect::<Vec<u64>>());
    assert!(h.gw.output_capacity(id) <= KEEP_FRAMES, "{} frames of room kept", h.gw.output_capacity(id));
    h.publish("deals", "deal.created", deal_created("live"));
    assert_eq!(ids_in(&h.take_wire(id)), ["1000-151"]);
}

#[test]
fn a_stream_kept_busy_by_live_events_keeps_its_room_until_the_burst_is_over() {
    let mut h = Harness::new("");
    let id = h.open("u1", "deals");
    h.take_wire(id);
    // Live events faster than the stream is written: many per write, write after write. (A
    // frontend stamps when it received each message; the delay histogram and this rule use it.)
    let now = h.now;
    let live = |body: serde_json::Value| UpstreamMessage { received: Some(now), ..msg("deal.created", body) };
    for round in 0..3 {
        h.reading.insert(id, false); // the writer's turn comes after 100 events
        for i in 0..100 {
            h.publish_msg("deals", live(deal_created(&format!("r{round}e{i}")))).expect("valid event");
        }
        h.reading.insert(id, true);
        h.flush(id);
        assert_eq!(ids_in(&h.take_wire(id)).len(), 100);
        assert!(h.gw.output_capacity(id) >= 100, "round {round}: the room was freed ({} frames)", h.gw.output_capacity(id));
    }
    // Then one event per write: the burst is over, the room goes.
    h.publish_msg("deals", live(deal_created("last"))).expect("valid event");
    assert_eq!(ids_in(&h.take_wire(id)), ["1000-301"]);
    assert!(h.gw.output_capacity(id) <= KEEP_FRAMES, "{} frames of room kept", h.gw.output_capacity(id));
}

#[test]
fn a_replay_skips_what_the_user_may_not_see() {
    let mut h = Harness::new("");
    h.publish_to("notifications", "notification.sent", notification_sent("for bob"), "bob");
    let mine = notification_sent("for alice");
    h.publish_to("notifications", "notification.sent", mine.clone(), "alice");
    let id = h.open_path("alice", &[], "/api/v1/streams/notifications", &["Last-Event-ID: 1001-0"]).unwrap();
    assert_eq!(h.take_events(id), format!("retry: 3000\n\n{}", frame("1001-2", "notification.sent", &mine)));
}

#[test]
fn an_unknown_expired_or_malformed_resume_id_gets_history_gap_then_live() {
    let gap = "event: warning\ndata: {\"code\":\"history_gap\",\"channel\":\"deals\"}\n\n";
    let mut h = Harness::new("buffer_events = 3\n");
    for i in 0..6 {
        h.publish("deals", "deal.created", deal_created(&format!("d{i}")));
    }
    // Buffer holds 4..6: resuming after 3 is exact, after 2 is too old.
    let ok = h.open_path("a", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-3"]).unwrap();
    assert_eq!(h.take_events(ok).matches("event: deal.created").count(), 3);
    for (user, last) in [("b", "1000-2"), ("c", "999-5"), ("d", "1000-77"), ("e", "garbage"), ("f", "1000-3%0d%0aevent: evil")] {
        let raw_header = format!("Last-Event-ID: {last}");
        let id = h.open_path(user, &[], "/api/v1/streams/deals", &[&raw_header]).unwrap();
        let w = h.take_events(id);
        assert_eq!(w, format!("retry: 3000\n\n{gap}"), "{last:?}");
    }
    // A control byte makes the head malformed: 400, nothing reflected.
    let bad = h.open_path("e2", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-\u{1}"]).unwrap_err();
    assert_eq!(bad.status, 400);
    // Through the query string a CR/LF arrives decoded: it is still only a malformed id.
    let q = h.open_path("h", &[], "/api/v1/streams/deals?last_event_id=1000-3%0D%0Aevent:%20evil", &[]).unwrap();
    let w = h.take_events(q);
    assert_eq!(w, format!("retry: 3000\n\n{gap}"));
    // A raw CR/LF in the header ends the line: what follows is another header, never a frame.
    let r = h.open_path("i", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-6\r\nevent: evil"]).unwrap();
    assert!(!h.take_events(r).contains("evil"));
    let live = h.open_path("g", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-1"]).unwrap();
    h.take_wire(live);
    h.publish("deals", "deal.created", deal_created("live"));
    assert_eq!(h.take_wire(live), frame("1000-7", "deal.created", &deal_created("live")));
}

#[test]
fn a_stream_that_stops_reading_is_closed_at_its_bound_and_others_keep_receiving() {
    let mut h = Harness::new("max_pending_bytes = 4096\n");
    let slow = h.open("slow", "deals");
    let fast = h.open("fast", "deals");
    h.reading.insert(slow, false);
    let mut n = 0;
    while !h.closed.contains_key(&slow) {
        h.publish("deals", "deal.created", deal_created(&"x".repeat(100)));
        n += 1;
        assert!(n < 100, "never closed");
        assert!(h.gw.pending_bytes(slow) <= 4096);
    }
    assert_eq!(h.closed[&slow], CloseReason::SlowClient);
    h.publish("deals", "deal.created", deal_created("after"));
    assert_eq!(h.take_events(fast).matches("event: deal.created").count(), n + 1);
    assert_eq!(h.gw.stream_count(), 1);
    assert_eq!(h.gw.slots_in_use(), 1);
}

#[test]
fn a_stream_whose_writer_reports_its_socket_taking_bytes_is_not_closed_as_slow() {
    let mut h = Harness::new("max_pending_bytes = 4096\n");
    let slow = h.open("slow", "deals");
    let stalled = h.open("stalled", "deals");
    h.reading.insert(slow, false);
    h.reading.insert(stalled, false);
    h.publish("deals", "deal.created", deal_created("x"));
    // Output waits on both at every tick; the writer of `slow` says its socket takes bytes (it
    // writes what it took earlier, slowly), that of `stalled` says nothing.
    for _ in 0..4 {
        h.gw.output_moving(slow);
        h.advance(Duration::from_secs(31));
    }
    assert!(!h.closed.contains_key(&slow), "a client that reads, if slowly, was closed as slow");
    assert_eq!(h.closed.get(&stalled), Some(&CloseReason::SlowClient));
    // Once nothing moves any more for a whole interval, it is closed as well.
    h.advance(Duration::from_secs(31));
    h.advance(Duration::from_secs(31));
    assert_eq!(h.closed.get(&slow), Some(&CloseReason::SlowClient));
}

#[test]
fn an_outage_warning_does_not_close_a_stalled_stream_its_heartbeat_tick_does() {
    let mut h = Harness::new("max_pending_bytes = 4096\n");
    let deals = h.channel("deals");
    let stalled = h.open("slow", "deals");
    let other = h.open("other", "deals");
    h.reading.insert(stalled, false);
    // Fill the stalled stream to just under its bound.
    while h.gw.pending_bytes(stalled) + 400 < 4096 {
        h.publish("deals", "deal.created", deal_created("x"));
    }
    let fill = 4096 - h.gw.pending_bytes(stalled) - 10;
    let mut m = msg("deal.created", deal_created(&"y".repeat(fill.saturating_sub(200))));
    m.message_id = None;
    h.publish_msg("deals", m).expect("the fill is an event");
    assert!(!h.closed.contains_key(&stalled));
    h.gw.source_down(deals, h.now);
    h.drain();
    // The warning takes it past its bound by the control slack, no more (D8: an outage closes no
    // stream); a client that does not read for a whole heartbeat interval is closed by the tick,
    // as slow, with nothing half-written.
    assert!(!h.closed.contains_key(&stalled), "closed by the warning");
    assert!(h.gw.pending_bytes(stalled) <= 4096 + 1024);
    assert!(h.take_events(other).contains("source_unavailable"));
    h.advance(Duration::from_secs(31));
    assert!(!h.closed.contains_key(&stalled), "closed at the first tick");
    h.advance(Duration::from_secs(31));
    assert_eq!(h.closed.get(&stalled), Some(&CloseReason::SlowClient));
    let wire = h.take_wire(stalled);
    assert!(wire.is_empty() || wire.ends_with("\n\n"), "whole frames only: {wire:?}");
    assert!(h.take_events(other).contains("source_unavailable"), "the other stream goes on being warned");
    assert_eq!(h.gw.stream_count(), 1);
}

#[test]
fn shutdown_sends_each_stream_a_retry_and_closes_it() {
    let mut h = Harness::new("");
    let a = h.open("u1", "deals");
    let b = h.open("u2", "tasks");
    h.take_wire(a);
    h.take_wire(b);
    h.gw.shutdown();
    h.drain();
    assert_eq!(h.take_wire(a), "retry: 3000\n\n");
    assert_eq!(h.closed.get(&b), Some(&CloseReason::Shutdown));
    assert_eq!(h.gw.stream_count(), 0);
    assert_eq!(h.open_path("u3", &[], "/api/v1/streams/deals", &[]).unwrap_err().status, 503);
}

#[test]
fn the_shutdown_retry_is_jittered_per_stream_within_its_bound() {
    let mut h = Harness::new("retry_jitter = \"1s\"\nmax_per_user = 100\n");
    let ids: Vec<StreamId> = (0..20).map(|_| h.open("u1", "deals")).collect();
    for &id in &ids {
        h.take_wire(id);
    }
    h.gw.shutdown();
    h.drain();
    let retries: std::collections::HashSet<u64> = ids
        .iter()
        .map(|&id| h.take_wire(id).trim_start_matches("retry: ").trim().parse().expect("a retry: line"))
        .collect();
    assert!(retries.iter().all(|ms| (3000..=4000).contains(ms)), "{retries:?}");
    assert!(retries.len() > 1, "every stream was told the same retry: {retries:?}");
}

#[test]
fn events_out_and_replays_are_counted() {
    let mut h = Harness::new("");
    let a = h.open("u1", "deals");
    h.open("u2", "deals");
    let first = h.publish("deals", "deal.created", deal_created("a"));
    h.publish("deals", "deal.created", deal_created("b"));
    h.drain();
    h.take_wire(a);
    let m = h.metrics.render();
    assert!(m.contains("sse_gateway_events_out_total{channel=\"deals\"} 4\n"), "{m}");
    let resumed = h.open_path("u3", &[], "/api/v1/streams/deals", &[&format!("Last-Event-ID: {}", first.id())]).unwrap();
    h.drain();
    assert_eq!(ids_in(&h.take_wire(resumed)).len(), 1);
    let m = h.metrics.render();
    assert!(m.contains("sse_gateway_replays_total 1\n") && m.contains("sse_gateway_events_replayed_total{channel=\"deals\"} 1\n"), "{m}");
}

#[test]
fn a_catalogue_whose_default_version_is_not_the_lowest_serves_it_without_version() {
    let text = include_str!("fixtures/catalogue_v2.toml").replacen("[channels.deals]\ndefault_version = 1", "[channels.deals]\ndefault_version = 2", 1);
    assert_ne!(text, include_str!("fixtures/catalogue_v2.toml"));
    let h = Harness::with_catalogue("", Catalogue::from_toml(&text).unwrap());
    let t = h.token("u1", &[], 3600);
    let version = |path: &str| match h.route(&Harness::head(path, &[&format!("Authorization: Bearer {t}")])) {
        Routed::Stream(r) => r.version,
        other => panic!("{other:?}"),
    };
    assert_eq!(version("/api/v1/streams/deals"), 2, "D5: none means the channel's default");
    assert_eq!(version("/api/v1/streams/deals?version=1"), 1);
    assert_eq!(version("/api/v1/streams/tasks"), 1);
    // An empty value is no value (`?version=${v ?? ''}`); the first one given counts.
    assert_eq!(version("/api/v1/streams/deals?version="), 2);
    assert_eq!(version("/api/v1/streams/deals?version=&version=1"), 1);
    assert_eq!(version("/api/v1/streams/deals?version=1&version=2"), 1);
}

#[test]
fn a_closed_stream_is_forgotten_and_its_stale_id_is_harmless() {
    let mut h = Harness::new("");
    let a = h.open("u1", "deals");
    h.gw.on_closed(a);
    assert_eq!(h.gw.stream_count(), 0);
    assert_eq!(h.gw.user_count(), 0);
    assert_eq!(h.gw.poll_timeout(), None, "its timers are gone");
    let b = h.open("u2", "deals");
    assert_eq!(a.index(), b.index(), "the slot is reused");
    h.gw.on_closed(a); // stale: no effect on b
    let mut out = Vec::new();
    assert_eq!(h.gw.take_output(a, &mut out, h.now), 0);
    assert_eq!(h.gw.stream_count(), 1);
    assert_eq!(h.gw.user_of(b), Some("u2"));
}

#[test]
fn a_resume_older_than_the_buffer_reads_the_log_back_when_the_source_keeps_one() {
    let mut h = Harness::new("buffer_events = 3\n");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    let evs: Vec<Event> = (0..5).map(|i| h.publish("deals", "deal.created", deal_created(&format!("d{i}")))).collect();
    // The buffer holds 3..5; the client has 1: the log is asked for 2.
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-1"]).unwrap();
    let after = |seq| EventId { epoch: 1000, seq };
    assert_eq!(h.backfills, vec![Output::Backfill { stream: id, channel: deals, after: after(1), until: 2 }]);
    // A live event meanwhile pushes 3 out of the buffer: it is not sent ahead of the read-back.
    let live = h.publish("deals", "deal.created", deal_created("live"));
    // The read starts at the client's own event: it proves the log still holds it, and is skipped.
    assert_eq!(h.gw.backfill_message(id, 1, Some(&evs[0])), BackfillStep::Continue, "an overlap is skipped");
    // So the read-back goes on past 2, to where the buffer begins now.
    assert_eq!(h.gw.backfill_message(id, 2, Some(&evs[1])), BackfillStep::Continue);
    assert_eq!(h.gw.backfill_message(id, 3, Some(&evs[2])), BackfillStep::Finished);
    h.drain();
    assert_eq!(h.backfills.len(), 1, "{:?}", h.backfills);
    let w = h.take_events(id);
    let ids = ids_in(&w);
    assert_eq!(ids, ["1000-2", "1000-3", "1000-4", "1000-5", "1000-6"], "{w}");
    assert_eq!(live.id().seq, 6);
}

#[test]
fn a_log_that_no_longer_holds_the_range_ends_the_read_back_in_history_gap() {
    let mut h = Harness::new("buffer_events = 1\n");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    let evs: Vec<Event> = (0..4).map(|i| h.publish("deals", "deal.created", deal_created(&format!("d{i}")))).collect();
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-1"]).unwrap();
    // The log starts at 3 now (retention): asked for 1, it answers from 3; 2 is lost.
    assert_eq!(h.gw.backfill_message(id, 3, Some(&evs[2])), BackfillStep::Finished);
    h.drain();
    let w = h.take_events(id);
    assert!(w.ends_with("event: warning\ndata: {\"code\":\"history_gap\",\"channel\":\"deals\"}\n\n"), "{w}");
    assert!(!w.contains("id: "), "nothing after a gap is replayed: {w}");
    h.publish("deals", "deal.created", deal_created("live"));
    assert!(h.take_wire(id).contains("id: 1000-5\n"));
}

#[test]
fn a_failed_read_back_ends_in_history_gap() {
    let mut h = Harness::new("buffer_events = 1\n");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    for i in 0..3 {
        h.publish("deals", "deal.created", deal_created(&format!("d{i}")));
    }
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-1"]).unwrap();
    h.gw.backfill_done(id, false);
    h.drain();
    assert!(h.take_events(id).ends_with("event: warning\ndata: {\"code\":\"history_gap\",\"channel\":\"deals\"}\n\n"));
}

/// A read-back that fails (no turn in time, a lost connection) after live events arrived that
/// the buffer holds from the client's place on: the stream continues from the buffer, exactly,
/// with no history_gap (before: history_gap, and the event the buffer held was never sent).
#[test]
fn a_failed_read_back_continues_from_the_buffer_when_it_covers_the_client() {
    let mut h = Harness::new("");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-7"]).unwrap();
    h.publish_msg("deals", deal_at(8)).unwrap(); // the buffer now holds everything after 7
    h.gw.backfill_done(id, false);
    h.drain();
    h.publish_msg("deals", deal_at(9)).unwrap();
    h.drain();
    let w = h.take_events(id);
    assert_eq!(ids_in(&w), ["1000-8", "1000-9"], "{w}");
    assert!(!w.contains("history_gap"), "{w}");
    // An id past the buffer's last event (read back while the buffer was empty) is no place
    // the buffer proves: history_gap still.
    let mut h = Harness::new("");
    h.gw.set_history(deals, Some(1000));
    let ahead = h.open_path("u2", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-50"]).unwrap();
    h.publish_msg("deals", deal_at(8)).unwrap();
    h.gw.backfill_done(ahead, false);
    h.drain();
    let w = h.take_events(ahead);
    assert!(w.contains("history_gap") && ids_in(&w).is_empty(), "an id ahead of the buffer: {w}");
}

#[test]
fn a_read_back_pauses_at_the_output_bound() {
    let mut h = Harness::new("buffer_events = 1\nmax_pending_bytes = 4096\n");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    let evs: Vec<Event> = (0..40).map(|i| h.publish("deals", "deal.created", deal_created(&"x".repeat(i % 3 + 100)))).collect();
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-1"]).unwrap();
    h.reading.insert(id, false);
    let mut pos = 1;
    loop {
        match h.gw.backfill_message(id, pos, Some(&evs[pos as usize - 1])) {
            BackfillStep::Continue => pos += 1,
            BackfillStep::Pause => break,
            BackfillStep::Finished => panic!("finished before the bound"),
        }
    }
    assert!(h.gw.pending_bytes(id) >= 4096 && h.gw.pending_bytes(id) < 4096 + 400);
    h.flush(id); // the client read: continue
    pos += 1;
    while h.gw.backfill_message(id, pos, Some(&evs[pos as usize - 1])) != BackfillStep::Finished {
        pos += 1;
        h.flush(id);
    }
    h.reading.insert(id, true);
    h.drain();
    h.flush(id);
    let w = h.take_events(id);
    let ids: Vec<u64> = w.lines().filter_map(|l| l.strip_prefix("id: 1000-")).map(|s| s.parse().unwrap()).collect();
    assert_eq!(ids, (2..=40).collect::<Vec<u64>>());
    assert!(h.closed.is_empty());
}

#[test]
fn a_read_back_accepts_positions_the_log_skipped() {
    // A RabbitMQ stream spends offsets on records of its own: 3 and 6 are not messages.
    let mut h = Harness::new("buffer_events = 1\n");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    let mut evs = Vec::new();
    for pos in [1, 2, 4, 5, 7, 8] {
        let mut m = msg("deal.created", deal_created(&format!("d{pos}")));
        m.position = Some(pos);
        evs.push(h.publish_msg("deals", m).unwrap());
    }
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-2"]).unwrap();
    assert_eq!(h.backfills, vec![Output::Backfill { stream: id, channel: deals, after: EventId { epoch: 1000, seq: 2 }, until: 7 }]);
    assert_eq!(h.gw.backfill_message(id, 2, Some(&evs[1])), BackfillStep::Continue);
    assert_eq!(h.gw.backfill_message(id, 4, Some(&evs[2])), BackfillStep::Continue);
    assert_eq!(h.gw.backfill_message(id, 5, Some(&evs[3])), BackfillStep::Continue);
    assert_eq!(h.gw.backfill_message(id, 7, Some(&evs[4])), BackfillStep::Finished);
    h.drain();
    let w = h.take_events(id);
    let ids = ids_in(&w);
    assert_eq!(ids, ["1000-4", "1000-5", "1000-7", "1000-8"], "{w}");
    assert!(!w.contains("history_gap"), "{w}");
}

#[test]
fn a_read_back_that_jumps_over_more_than_one_position_ends_in_history_gap() {
    let mut h = Harness::new("buffer_events = 1\n");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    let evs: Vec<Event> = (0..10).map(|i| h.publish("deals", "deal.created", deal_created(&format!("d{i}")))).collect();
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-2"]).unwrap();
    // The client's own event is gone but the next is there: nothing lost.
    assert_eq!(h.gw.backfill_message(id, 3, Some(&evs[2])), BackfillStep::Continue);
    // Then retention overtakes the reader: 4 and 5 are gone.
    assert_eq!(h.gw.backfill_message(id, 6, Some(&evs[5])), BackfillStep::Finished);
    h.drain();
    let w = h.take_events(id);
    let ids = ids_in(&w);
    assert_eq!(ids, ["1000-3"], "{w}");
    assert!(w.ends_with("event: warning\ndata: {\"code\":\"history_gap\",\"channel\":\"deals\"}\n\n"), "{w}");
    assert!(log_continues(3, 5) && !log_continues(3, 6));
    assert!(log_resumes(3, 3) && log_resumes(3, 4) && !log_resumes(3, 5));
    assert!(logs_meet(3, 3) && logs_meet(3, 4) && !logs_meet(3, 5), "two reads meet only with nothing left out");
}

/// `sse_gateway_history_gaps_total` counts warnings sent: a stream whose output has no room
/// left for the `history_gap` warning is closed as slow, and that warning is not counted.
#[test]
fn a_history_gap_that_closes_a_full_stream_instead_is_not_counted() {
    let mut h = Harness::new("max_pending_bytes = 4096\nheartbeat = \"600s\"\nwarning_interval = \"1s\"\n");
    let deals = h.channel("deals");
    let stalled = h.open("slow", "deals");
    h.reading.insert(stalled, false);
    let gap = "event: warning\ndata: {\"code\":\"history_gap\",\"channel\":\"deals\"}\n\n".len();
    let outage = "event: warning\ndata: {\"code\":\"source_unavailable\",\"channel\":\"deals\"}\n\n".len();
    let bound = 4096 + 1024;
    // Events, until the room the outage warnings leave (they come until the next would not fit)
    // is too small for the history_gap warning.
    h.publish("deals", "deal.created", deal_created("x"));
    while (bound - h.gw.pending_bytes(stalled)) % outage >= gap {
        h.publish("deals", "deal.created", deal_created("x"));
        assert!(h.gw.pending_bytes(stalled) <= 4096, "no fill found under the bound");
    }
    h.gw.source_down(deals, h.now);
    h.drain();
    while h.gw.pending_bytes(stalled) + outage <= bound {
        h.advance(Duration::from_secs(1));
    }
    assert!(!h.closed.contains_key(&stalled), "closed by an outage warning");
    h.gw.log_gap(deals);
    h.drain();
    assert_eq!(h.closed.get(&stalled), Some(&CloseReason::SlowClient));
    let text = h.metrics.render();
    assert!(text.contains("sse_gateway_history_gaps_total 0\n"), "{text}");
}

#[test]
fn a_log_gap_warns_live_streams_and_no_resume_replays_across_it() {
    let mut h = Harness::new("buffer_events = 8\n");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    let at = |h: &mut Harness, pos: u64| {
        let mut m = msg("deal.created", deal_created(&format!("d{pos}")));
        m.position = Some(pos);
        h.publish_msg("deals", m).unwrap()
    };
    for pos in 1..=3 {
        at(&mut h, pos);
    }
    let live = h.open("u1", "deals");
    h.take_events(live);
    // The source was away; when it came back, the log had lost 4..=9 (retention).
    h.gw.log_gap(deals);
    h.drain();
    assert_eq!(h.take_events(live), "event: warning\ndata: {\"code\":\"history_gap\",\"channel\":\"deals\"}\n\n");
    at(&mut h, 10);
    assert!(h.take_events(live).starts_with("id: 1000-10\n"));
    // A client that had 2 is not replayed 3 then 10 from memory: the log is asked, from 2.
    let resumed = h.open_path("u2", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-2"]).unwrap();
    assert_eq!(h.backfills, vec![Output::Backfill { stream: resumed, channel: deals, after: EventId { epoch: 1000, seq: 2 }, until: 9 }]);
    // The log starts at 10 now: history_gap, then live.
    assert_eq!(h.gw.backfill_message(resumed, 10, None), BackfillStep::Finished);
    h.drain();
    let w = h.take_events(resumed);
    assert!(w.ends_with("event: warning\ndata: {\"code\":\"history_gap\",\"channel\":\"deals\"}\n\n"), "{w}");
    assert!(!w.contains("id: "), "{w}");
}

#[test]
fn a_resume_at_the_last_id_before_a_queue_loss_gets_history_gap() {
    // A classic queue's ids follow one another in the order they are taken: what was lost while
    // the queue was gone (deleted, expired) leaves no hole in them. A client away during the
    // loss, holding the last id before it, is not replayed across it as if nothing were missing.
    let mut h = Harness::new("buffer_events = 8\n");
    let deals = h.channel("deals");
    let before: Vec<EventId> = (1..=5).map(|i| h.publish("deals", "deal.created", deal_created(&format!("d{i}"))).id()).collect();
    h.gw.log_gap(deals);
    h.drain();
    let after = h.publish("deals", "deal.created", deal_created("d6")).id();
    let last = before[4];
    assert_eq!(after.seq, last.seq + 1, "the ids follow on across the loss");
    let resumed = h.open_path("u1", &[], "/api/v1/streams/deals", &[&format!("Last-Event-ID: {last}")]).unwrap();
    let w = h.take_events(resumed);
    assert!(w.contains("event: warning\ndata: {\"code\":\"history_gap\",\"channel\":\"deals\"}\n\n"), "{w}");
    assert!(!w.contains("id: "), "replayed across the loss: {w}");
    // A client that has the first event after the loss is not warned, and one from before the
    // last is warned as before.
    let current = h.open_path("u2", &[], "/api/v1/streams/deals", &[&format!("Last-Event-ID: {after}")]).unwrap();
    assert_eq!(h.take_events(current), "retry: 3000\n\n");
    let older = h.open_path("u3", &[], "/api/v1/streams/deals", &[&format!("Last-Event-ID: {}", before[1])]).unwrap();
    assert!(h.take_events(older).contains("history_gap"));
    let next = h.publish("deals", "deal.created", deal_created("d7")).id();
    for id in [resumed, current, older] {
        assert!(h.take_events(id).starts_with(&format!("id: {next}\n")), "live after");
    }
}

#[test]
fn a_catch_up_parked_over_a_queue_loss_gets_history_gap() {
    // A resume's catch-up ends with its output over half the bound: the stream stays on the
    // buffer until its client drained. The queue's loss then empties the buffer; the next event
    // follows the last before the loss in its id: the parked stream is warned, not handed it.
    let mut h = Harness::new("buffer_events = 64\nmax_pending_bytes = 4096\n");
    let deals = h.channel("deals");
    let first = h.publish("deals", "deal.created", deal_created("d1")).id();
    let mut held = 0;
    while held < 2600 {
        held += h.publish("deals", "deal.created", deal_created("dn")).frame().len();
    }
    let id = h.open_path_with("u1", &[], "/api/v1/streams/deals", &[&format!("Last-Event-ID: {first}")], 3600, false).unwrap();
    assert!(h.gw.pending_bytes(id) > 2048, "not parked: {}", h.gw.pending_bytes(id));
    h.gw.log_gap(deals);
    h.drain();
    let lost_after = h.publish("deals", "deal.created", deal_created("after the loss")).id();
    h.reading.insert(id, true);
    for _ in 0..4 {
        h.flush(id);
        h.drain();
    }
    let w = h.take_events(id);
    assert!(w.contains("\"code\":\"history_gap\""), "{w}");
    assert!(!w.contains(&format!("id: {lost_after}\n")), "handed the event after the loss as if it followed on: {w}");
    assert!(!h.closed.contains_key(&id));
}

#[test]
fn an_id_slightly_ahead_of_this_shard_goes_live_after_it_without_duplicates() {
    let mut h = Harness::new("buffer_events = 8\n");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    h.publish("deals", "deal.created", deal_created("d1"));
    // Another instance already delivered 2 and 3 to this client.
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-3"]).unwrap();
    assert_eq!(h.take_events(id), "retry: 3000\n\n");
    for i in 2..=4 {
        h.publish("deals", "deal.created", deal_created(&format!("d{i}")));
    }
    let w = h.take_wire(id);
    let ids = ids_in(&w);
    assert_eq!(ids, ["1000-4"]);
    // Far ahead (more than a buffer) is not believed: history_gap.
    let far = h.open_path("u2", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-400"]).unwrap();
    assert!(h.take_events(far).contains("history_gap"));
    // Without a log, an id ahead is unknown: history_gap.
    h.gw.set_history(deals, None);
    let no_log = h.open_path("u3", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-5"]).unwrap();
    assert!(h.take_events(no_log).contains("history_gap"));
}

/// A deal at a source position (a stream offset).
fn deal_at(seq: u64) -> UpstreamMessage {
    big_deal_at(seq, 0)
}

/// Hands stream `id` the deal at `seq` as a read-back of `channel`'s log gives it.
fn read_back(h: &mut Harness, channel: ChannelId, id: StreamId, seq: u64) -> BackfillStep {
    read_back_msg(h, channel, id, &deal_at(seq))
}

/// The `id:` values of an SSE text, in order.
fn ids_in(w: &str) -> Vec<&str> {
    w.lines().filter_map(|l| l.strip_prefix("id: ")).collect()
}

#[test]
fn a_read_back_that_ends_in_history_gap_with_a_full_output_goes_live_once_it_drained() {
    let (mut h, deals, id) = resumed_from_one_without_reading("buffer_events = 1\n", &[40]); // the buffer holds 40 only
    let last = read_back_until_paused(&mut h, deals, id);
    fail_then_live_event(&mut h, id, 41);
    let (ids, w) = read_on(&mut h, id, 3);
    let want: Vec<u64> = (2..=last).chain([41]).collect();
    assert_eq!(ids, want, "the read-back, then live after the gap: nothing at or below the client's id");
    assert!(w.find("history_gap").unwrap() > w.find(&format!("id: 1000-{last}")).unwrap(), "the gap after what was read back");
    h.publish_msg("deals", deal_at(42)).unwrap();
    assert_eq!(ids_in(&h.take_wire(id)), ["1000-42"], "live");
}

#[test]
fn a_read_back_that_fails_with_a_full_output_before_anything_arrived_live_goes_live_once_drained() {
    let (mut h, deals, id) = resumed_from_one_without_reading("", &[]);
    let last = read_back_until_paused(&mut h, deals, id);
    fail_then_live_event(&mut h, id, 71); // the live consumer's first event
    let (ids, w) = read_on(&mut h, id, 2);
    assert_eq!(ids, (2..=last).collect::<Vec<u64>>());
    assert!(w.contains("history_gap"));
    // Drained: the log is asked again from where the client is, up to where the buffer begins.
    let Some(&Output::Backfill { after, until, .. }) = h.backfills.last() else { panic!("a read-back: {:?}", h.backfills) };
    assert_eq!((after.seq, until), (last, 70));
    let (then, _) = read_back_then_live(&mut h, deals, id, last..=70, 72, 4);
    assert_eq!(then, (last + 1..=72).collect::<Vec<u64>>(), "in order, once, then live");
}

#[test]
fn a_catch_up_parked_after_a_gap_behind_the_clients_id_never_sends_an_id_at_or_below_it() {
    let (mut h, deals, id) = parked_at_3_behind_a_client_at_13();
    let (then, _) = read_back_then_live(&mut h, deals, id, 3..=7, 14, 3);
    assert_eq!(then, [14], "nothing at or below the client's 13 again");
}

#[test]
fn a_parked_catch_up_reading_back_again_is_not_warned_of_a_loss_it_does_not_care_about() {
    let (mut h, deals, id) = parked_at_3_behind_a_client_at_13();
    // The log lost 4 meanwhile: the client, at 13, has it, so that is no gap for it.
    let (then, w) = read_back_then_live(&mut h, deals, id, 5..=7, 14, 3);
    assert!(!w.contains("history_gap"), "a second history_gap for a loss below the client's id: {w}");
    assert_eq!(then, [14]);
}

#[test]
fn a_reopened_read_back_whose_log_lost_what_follows_the_clients_place_says_history_gap() {
    let (mut h, deals, id) = resumed_from_one_without_reading("", &[]);
    let last = read_back_until_paused(&mut h, deals, id);
    let (ids, w) = read_on(&mut h, id, 2);
    assert_eq!(ids, (2..=last).collect::<Vec<u64>>());
    assert!(!w.contains("history_gap"), "{w}");
    // Its turn was given up while the client did not read; opened again at `last`, the log now
    // begins two past it (retention overtook the paused reader): the message after `last` is
    // gone. Within one read such a step is allowed (`LOG_SKIP`); a reopened read is checked as
    // a first one.
    h.gw.backfill_reopened(id);
    assert_eq!(read_back(&mut h, deals, id, last + 2), BackfillStep::Finished);
    h.publish_msg("deals", deal_at(last + 3)).unwrap();
    let (ids, w) = read_on(&mut h, id, 2);
    assert!(w.contains("history_gap"), "{w}");
    assert!(ids.iter().all(|&q| q > last), "{ids:?}");
    assert_eq!(ids.last(), Some(&(last + 3)), "live after the gap: {w}");
}

#[test]
fn a_parked_catch_up_reopened_past_a_loss_below_the_clients_id_is_not_warned_again() {
    let (mut h, deals, id) = parked_at_3_behind_a_client_at_13();
    for seq in 4..=5 {
        assert_eq!(read_back(&mut h, deals, id, seq), BackfillStep::Continue);
    }
    // Opened again at 5, the log begins at 7: 6 is gone, but the client, at 13, has it.
    h.gw.backfill_reopened(id);
    let (then, w) = read_back_then_live(&mut h, deals, id, 7..=7, 14, 3);
    assert!(!w.contains("history_gap"), "a second history_gap for a loss below the client's id: {w}");
    assert_eq!(then, [14]);
}

#[test]
fn a_parked_catch_up_whose_read_back_ends_before_the_clients_id_after_a_log_gap_sends_nothing_it_had() {
    let (mut h, deals, id) = parked_at_3_behind_a_client_at_13();
    // The log lost events meanwhile (the buffer is emptied); the read-back from 3 reaches its
    // end (7) with nothing live yet: live from there, but the client is at 13 already.
    h.gw.log_gap(deals);
    h.drain();
    for seq in 4..=7 {
        let _ = read_back(&mut h, deals, id, seq);
    }
    // The live source, which had reached 8, goes on. No read-back is asked (one from 7, as
    // before this was mended, would hand the client 8 to 13 again): the client is at 13.
    let asked = h.backfills.len();
    for seq in 9..=14 {
        h.publish_msg("deals", deal_at(seq)).unwrap();
    }
    assert_eq!(h.backfills.len(), asked, "a read-back for what the client has: {:?}", &h.backfills[asked..]);
    let (then, _) = read_on(&mut h, id, 3);
    assert_eq!(then, [14], "nothing at or below the client's 13 again");
}

/// Hands `id` the deals at `log` as its read-back, then the deal at `live` arrives live; what the
/// client reads then in `rounds` reads (ids and text).
fn read_back_then_live(h: &mut Harness, channel: ChannelId, id: StreamId, log: std::ops::RangeInclusive<u64>, live: u64, rounds: usize) -> (Vec<u64>, String) {
    for seq in log {
        let _ = read_back(h, channel, id, seq);
    }
    h.publish_msg("deals", deal_at(live)).unwrap();
    read_on(h, id, rounds)
}

/// A catch-up read back to 13 whose live point (3) lagged more than a buffer behind it
/// (history_gap, parked at 3), then left the buffer before the client read: reading on asks
/// the log again, from 3.
fn parked_at_3_behind_a_client_at_13() -> (Harness, ChannelId, StreamId) {
    let (mut h, deals, id) = resumed_from_one_without_reading("buffer_events = 1\n", &[]);
    for seq in 1..=13 {
        assert_eq!(read_back(&mut h, deals, id, seq), BackfillStep::Continue);
    }
    assert!(h.gw.pending_bytes(id) > 2048, "over half the bound");
    h.publish_msg("deals", deal_at(3)).unwrap();
    assert_eq!(read_back(&mut h, deals, id, 14), BackfillStep::Finished);
    for seq in 4..=8 {
        h.publish_msg("deals", deal_at(seq)).unwrap();
    }
    let (first, w) = read_on(&mut h, id, 2);
    assert_eq!(first, (2..=13).collect::<Vec<u64>>());
    assert_eq!(w.matches("history_gap").count(), 1);
    let Some(&Output::Backfill { after, .. }) = h.backfills.last() else { panic!("a read-back: {:?}", h.backfills) };
    assert_eq!(after.seq, 3);
    (h, deals, id)
}

#[test]
fn a_flapping_source_cannot_grow_a_catch_ups_output_past_its_slack() {
    let (mut h, id, _, _) = catch_up_over_equal_events(|len| 4096 / len + 2);
    let deals = h.channel("deals");
    let level = h.gw.pending_bytes(id);
    for _ in 0..200 {
        h.gw.source_down(deals, h.now);
        h.gw.source_up(deals);
        h.drain();
        if !h.closed.is_empty() {
            break;
        }
        assert!(h.gw.pending_bytes(id) <= level.max(4096) + 1024, "{} queued", h.gw.pending_bytes(id));
    }
    assert_eq!(h.closed.get(&id), Some(&CloseReason::SlowClient), "the slack ran out: closed as slow");
}

/// `deals` with a log (epoch 1000) and a 4 KiB output bound (plus `extra` settings), the deals
/// at `live` arrived live, and a stream of `u1` resuming from 1000-1 (a read-back) whose client
/// does not read yet.
fn resumed_from_one_without_reading(extra: &str, live: &[u64]) -> (Harness, ChannelId, StreamId) {
    let mut h = Harness::new(&format!("max_pending_bytes = 4096\n{extra}"));
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    for &seq in live {
        h.publish_msg("deals", deal_at(seq)).unwrap();
    }
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-1"]).unwrap();
    h.reading.insert(id, false);
    (h, deals, id)
}

/// The read-back of `id` fails (its consumer broke): history_gap, then live. A live event (the
/// deal at `seq`) before the client's next read must not find its output full and close it as
/// slow.
fn fail_then_live_event(h: &mut Harness, id: StreamId, seq: u64) {
    h.gw.backfill_done(id, false);
    h.drain();
    h.publish_msg("deals", deal_at(seq)).unwrap();
    assert!(h.closed.is_empty(), "a client that had not read its catch-up yet was closed as slow: {:?}", h.closed);
}

/// Hands `id` the deals at 1, 2, ... until its output is at the bound; the last position handed.
fn read_back_until_paused(h: &mut Harness, channel: ChannelId, id: StreamId) -> u64 {
    for seq in 1..1000 {
        match read_back(h, channel, id, seq) {
            BackfillStep::Continue => {}
            BackfillStep::Pause => {
                assert!(h.gw.pending_bytes(id) >= 4096, "paused at the bound");
                return seq;
            }
            BackfillStep::Finished => panic!("finished at {seq}"),
        }
    }
    panic!("never paused");
}

/// A stream resuming from 1000-7 on a channel with a log, before anything arrived live: the
/// read-back it asks for has no known end.
fn resumed_before_anything_arrived() -> (Harness, ChannelId, StreamId) {
    let mut h = Harness::new("");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-7"]).unwrap();
    assert_eq!(h.backfills, vec![Output::Backfill { stream: id, channel: deals, after: EventId { epoch: 1000, seq: 7 }, until: u64::MAX }]);
    (h, deals, id)
}

#[test]
fn a_resume_before_anything_arrived_reads_the_log_to_its_end_then_goes_live() {
    let (mut h, _, id) = resumed_before_anything_arrived();
    h.gw.backfill_done(id, true); // the log ends at 7
    h.drain();
    assert!(h.gw.poll_output().is_none(), "no second read-back");
    // The live consumer then catches up from its start position: 7 is skipped, 8 is sent.
    h.publish_msg("deals", deal_at(7)).unwrap();
    h.publish_msg("deals", deal_at(8)).unwrap();
    let w = h.take_events(id);
    let ids = ids_in(&w);
    assert_eq!(ids, ["1000-8"], "{w}");
}

#[test]
fn a_read_back_that_gets_nothing_past_the_clients_place_says_history_gap_rather_than_read_again() {
    // The client has 1; the buffer begins at 10. The log gives 1 (the client's own) and falls
    // silent: a broker stalled there (a replica behind the live one). Reading again from 1 would
    // find the same, every 1.5 s, for as long as it stays behind.
    let (mut h, deals, id) = resumed_from_one_without_reading("", &[10, 11]);
    h.reading.insert(id, true);
    assert_eq!(h.backfills.len(), 1, "{:?}", h.backfills);
    assert_eq!(read_back(&mut h, deals, id, 1), BackfillStep::Continue);
    h.gw.backfill_done(id, true);
    h.drain();
    assert_eq!(h.backfills.len(), 1, "not read again from the same place: {:?}", h.backfills);
    let w = h.take_wire(id);
    assert!(w.contains("history_gap"), "{w}");
    // Then live, as after any read-back that failed.
    h.publish_msg("deals", deal_at(12)).unwrap();
    h.drain();
    assert_eq!(ids_in(&h.take_wire(id)), ["1000-12"]);
    // One that moved on, then fell silent, is read again from where it got to.
    let (mut h, deals, id) = resumed_from_one_without_reading("", &[10, 11]);
    h.reading.insert(id, true);
    assert_eq!(read_back(&mut h, deals, id, 1), BackfillStep::Continue);
    assert_eq!(read_back(&mut h, deals, id, 2), BackfillStep::Continue);
    h.gw.backfill_done(id, true);
    h.drain();
    let Some(&Output::Backfill { after, .. }) = h.backfills.last() else { panic!("{:?}", h.backfills) };
    assert_eq!((h.backfills.len(), after), (2, EventId { epoch: 1000, seq: 2 }));
    assert!(!h.take_wire(id).contains("history_gap"));
}

#[test]
fn a_read_back_that_took_a_slow_broker_for_the_logs_end_reads_again_when_live_events_do_not_follow() {
    // The read-back got 8, then nothing for a while (a broker slow to send, taken for the end),
    // before anything arrived live: the stream went live from 8.
    let (mut h, deals, id) = resumed_before_anything_arrived();
    assert_eq!(read_back(&mut h, deals, id, 8), BackfillStep::Continue);
    h.gw.backfill_done(id, true);
    h.drain();
    assert!(h.gw.poll_output().is_none());
    // The live consumer's first events are past 9 and 10: what lies between is read back (to
    // where the buffer begins), not skipped.
    h.publish_msg("deals", deal_at(11)).unwrap();
    h.publish_msg("deals", deal_at(12)).unwrap();
    let Some(&Output::Backfill { after, until, .. }) = h.backfills.last() else { panic!("a second read-back: {:?}", h.backfills) };
    assert_eq!((after, until), (EventId { epoch: 1000, seq: 8 }, 10));
    assert_eq!(read_back(&mut h, deals, id, 8), BackfillStep::Continue, "it starts where the client is");
    assert_eq!(read_back(&mut h, deals, id, 9), BackfillStep::Continue);
    assert_eq!(read_back(&mut h, deals, id, 10), BackfillStep::Finished);
    h.drain();
    let w = h.take_events(id);
    assert_eq!(ids_in(&w), ["1000-8", "1000-9", "1000-10", "1000-11", "1000-12"], "{w}");
    assert!(!w.contains("history_gap"), "{w}");
    // One position left out between the two reads is read back too: it may be a message the
    // read-back had not got to when it took the silence for the end.
    let (mut h, deals, id) = resumed_before_anything_arrived();
    assert_eq!(read_back(&mut h, deals, id, 8), BackfillStep::Continue);
    h.gw.backfill_done(id, true);
    h.publish_msg("deals", deal_at(10)).unwrap();
    assert_eq!(h.backfills.len(), 2, "a second read-back: {:?}", h.backfills);
    let Some(&Output::Backfill { after, until, .. }) = h.backfills.last() else { panic!("{:?}", h.backfills) };
    assert_eq!((after, until), (EventId { epoch: 1000, seq: 8 }, 9));
    assert_eq!(read_back(&mut h, deals, id, 8), BackfillStep::Continue);
    assert_eq!(read_back(&mut h, deals, id, 9), BackfillStep::Finished);
    h.drain();
    assert_eq!(ids_in(&h.take_events(id)), ["1000-8", "1000-9", "1000-10"]);
    // A read-back that really reached the end: the next live event follows, and goes out live.
    let (mut h, deals, id) = resumed_before_anything_arrived();
    assert_eq!(read_back(&mut h, deals, id, 8), BackfillStep::Continue);
    h.gw.backfill_done(id, true);
    h.publish_msg("deals", deal_at(9)).unwrap();
    h.publish_msg("deals", deal_at(13)).unwrap(); // later gaps are the live source's concern
    h.drain();
    assert_eq!(h.backfills.len(), 1, "no second read-back: {:?}", h.backfills);
    assert_eq!(ids_in(&h.take_events(id)), ["1000-8", "1000-9", "1000-13"]);
    // The live source started before the stream's place (7): it read on from there itself, so
    // a jump after it (messages it dropped) is no read-back's concern, and 11 goes out once.
    let (mut h, deals, id) = resumed_before_anything_arrived();
    assert_eq!(read_back(&mut h, deals, id, 8), BackfillStep::Continue);
    h.gw.backfill_done(id, true);
    h.publish_msg("deals", deal_at(7)).unwrap();
    h.publish_msg("deals", deal_at(11)).unwrap();
    h.drain();
    assert_eq!(h.backfills.len(), 1, "no second read-back: {:?}", h.backfills);
    assert_eq!(ids_in(&h.take_events(id)), ["1000-8", "1000-11"]);
    // The log lost events meanwhile (the source says so): the stream is told once, and the next
    // live event, past the loss, does not send it reading the log again.
    let (mut h, deals, id) = resumed_before_anything_arrived();
    assert_eq!(read_back(&mut h, deals, id, 8), BackfillStep::Continue);
    h.gw.backfill_done(id, true);
    h.gw.log_gap(deals);
    h.publish_msg("deals", deal_at(20)).unwrap();
    h.drain();
    assert_eq!(h.backfills.len(), 1, "no second read-back: {:?}", h.backfills);
    let w = h.take_events(id);
    assert_eq!(ids_in(&w), ["1000-8", "1000-20"], "{w}");
    assert_eq!(w.matches("history_gap").count(), 1, "{w}");
}

#[test]
fn a_read_back_asked_for_before_anything_arrived_ends_where_live_events_begin() {
    let (mut h, deals, id) = resumed_before_anything_arrived();
    assert_eq!(read_back(&mut h, deals, id, 8), BackfillStep::Continue, "nothing live yet: no end known");
    // The live consumer starts meanwhile (the channel is busy: the log never falls idle).
    h.publish_msg("deals", deal_at(10)).unwrap();
    h.publish_msg("deals", deal_at(11)).unwrap();
    assert_eq!(read_back(&mut h, deals, id, 9), BackfillStep::Finished, "the buffer takes over from 10");
    h.drain();
    let w = h.take_events(id);
    let ids = ids_in(&w);
    assert_eq!(ids, ["1000-8", "1000-9", "1000-10", "1000-11"], "{w}");
    assert!(h.gw.poll_output().is_none(), "no second read-back");
}

#[test]
fn a_read_back_behind_a_cursor_that_live_events_reach_ends_instead_of_skipping_overlaps_forever() {
    // The client's id (7) is ahead of what this instance's log delivers (it starts at 3).
    let (mut h, deals, id) = resumed_before_anything_arrived();
    assert_eq!(read_back(&mut h, deals, id, 3), BackfillStep::Continue, "an overlap, nothing live yet");
    h.publish_msg("deals", deal_at(3)).unwrap();
    h.publish_msg("deals", deal_at(4)).unwrap();
    assert_eq!(read_back(&mut h, deals, id, 4), BackfillStep::Finished, "the buffer takes over");
    h.drain();
    h.publish_msg("deals", deal_at(8)).unwrap();
    let w = h.take_wire(id);
    let ids = ids_in(&w);
    assert_eq!(ids, ["1000-8"], "{w}");
}

#[test]
fn a_read_back_overtaken_by_the_buffer_reads_on_instead_of_asking_for_another() {
    let mut h = Harness::new("buffer_events = 2\n");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    for pos in 1..=5 {
        h.publish_msg("deals", deal_at(pos)).unwrap();
    }
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-1"]).unwrap();
    assert_eq!(h.backfills, vec![Output::Backfill { stream: id, channel: deals, after: EventId { epoch: 1000, seq: 1 }, until: 3 }]);
    assert_eq!(read_back(&mut h, deals, id, 2), BackfillStep::Continue);
    // The live source, catching up, moves the buffer on past where the read-back was to end.
    for pos in 6..=8 {
        h.publish_msg("deals", deal_at(pos)).unwrap();
    }
    for pos in 3..=5 {
        assert_eq!(read_back(&mut h, deals, id, pos), BackfillStep::Continue, "{pos}: the buffer begins after 6 now");
    }
    assert_eq!(read_back(&mut h, deals, id, 6), BackfillStep::Finished);
    h.drain();
    assert_eq!(h.backfills.len(), 1, "one read-back (one message_id window) all the way: {:?}", h.backfills);
    let w = h.take_events(id);
    let ids = ids_in(&w);
    assert_eq!(ids, ["1000-2", "1000-3", "1000-4", "1000-5", "1000-6", "1000-7", "1000-8"], "{w}");
}

#[test]
fn the_cookie_is_read_unless_turned_off_and_the_query_only_when_enabled() {
    let h = Harness::new("");
    let t = h.token("u1", &[], 3600);
    let cookie = Harness::head("/api/v1/streams/deals", &[&format!("Cookie: sse_token={t}")]);
    let query = Harness::head(&format!("/api/v1/streams/deals?access_token={t}"), &[]);
    assert!(matches!(h.route(&cookie), Routed::Stream(_)), "D1: the cookie `sse_token` by default");
    assert!(respond(h.route(&query)).starts_with("HTTP/1.1 401"), "D1: the query parameter is off by default");
    let off = Harness::with_auth("cookie = \"\"\n", "");
    assert!(respond(off.route(&cookie)).starts_with("HTTP/1.1 401"), "cookie = \"\" turns it off");
    let h = Harness::with_auth("cookie = \"sse_token\"\nquery_param = true\n", "");
    let front = &h.front;
    let now = 1_900_000_000;
    assert!(matches!(front.route(&cookie, now), Routed::Stream(_)));
    assert!(matches!(front.route(&query, now), Routed::Stream(_)));
    // An intermediary may split the cookies over several lines: the token is found on any.
    let split = Harness::head("/api/v1/streams/deals", &["Cookie: theme=dark", &format!("Cookie: lang=ru; sse_token={t}")]);
    assert!(matches!(front.route(&split, now), Routed::Stream(_)));
}

#[test]
fn a_token_is_taken_from_the_first_place_that_has_one_bearer_then_cookie_then_query() {
    let h = Harness::with_auth("cookie = \"sse_token\"\nquery_param = true\n", "");
    let (t1, t2, t3) = (h.token("u1", &[], 3600), h.token("u2", &[], 3600), h.token("u3", &[], 3600));
    let user = |target: &str, headers: &[&str]| match h.front.route(&Harness::head(target, headers), 1_900_000_000) {
        Routed::Stream(r) => r.identity.user,
        other => panic!("{other:?}"),
    };
    let query = format!("/api/v1/streams/deals?access_token={t3}");
    let (bearer, cookie) = (format!("Authorization: Bearer {t1}"), format!("Cookie: sse_token={t2}"));
    assert_eq!(user(&query, &[&cookie, &bearer]), "u1", "D1: Bearer first");
    assert_eq!(user(&query, &[&cookie]), "u2", "then the cookie");
    assert_eq!(user(&query, &[]), "u3", "then the query parameter");
}

#[test]
fn a_configured_forbidden_retry_is_the_one_sent() {
    let h = Harness::new("forbidden_retry = \"120s\"\n");
    let t = h.token("u1", &["sales"], 3600);
    let raw = Harness::head("/api/v1/streams/payments", &[&format!("Authorization: Bearer {t}")]);
    let r = respond(h.route(&raw));
    let ms: u64 = r.split("retry: ").nth(1).and_then(|x| x.lines().next()).and_then(|x| x.parse().ok()).unwrap_or_else(|| panic!("{r}"));
    assert!((120_000..=122_000).contains(&ms), "{ms}: 120 s and at most the 2 s of jitter");
}

#[test]
fn an_empty_token_is_no_token_and_the_next_place_is_looked_at() {
    let h = Harness::with_auth("cookie = \"sse_token\"\nquery_param = true\n", "");
    let t = h.token("u1", &[], 3600);
    let route = |target: &str, headers: &[&str]| h.front.route(&Harness::head(target, headers), 1_900_000_000);
    let cookie = format!("Cookie: sse_token={t}");
    let query = format!("/api/v1/streams/deals?access_token=&access_token={t}");
    for (target, headers) in [
        ("/api/v1/streams/deals", vec!["Authorization: Bearer   ", cookie.as_str()]),
        (query.as_str(), vec!["Authorization: Bearer ", "Cookie: sse_token=; other=1"]),
        (query.as_str(), vec!["Cookie: sse_token=\"\""]),
    ] {
        assert!(matches!(route(target, &headers), Routed::Stream(_)), "{target} {headers:?}");
    }
    // Empty everywhere: no token at all (401 without `error="invalid_token"`).
    let r = respond(route("/api/v1/streams/deals?access_token=", &["Authorization: Bearer ", "Cookie: sse_token="]));
    assert!(r.starts_with("HTTP/1.1 401") && r.contains("WWW-Authenticate: Bearer realm=\"sse-gateway\"\r\n"), "{r}");
}

#[test]
fn a_request_target_in_absolute_form_is_routed_by_its_path() {
    let h = Harness::new("");
    let bearer = format!("Authorization: Bearer {}", h.token("u1", &[], 3600));
    for target in ["http://gw/api/v1/streams/deals", "HTTPS://gw:8443/api/v1/streams/deals?version=1"] {
        let head = Harness::head(target, &[bearer.as_str()]);
        assert!(matches!(h.route(&head), Routed::Stream(_)), "{target}");
    }
    let r = respond(h.route(&Harness::head("http://gw", &[])));
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    assert!(matches!(h.route(&Harness::head("http://gw/healthz", &[])), Routed::Health));
}

#[test]
fn a_cookie_token_from_a_page_of_another_origin_is_refused() {
    let h = Harness::with_auth("cookie = \"sse_token\"\n", "[server]\ncors_origins = [\"https://crm.example\"]\n");
    let t = h.token("u1", &[], 3600);
    let cookie = format!("Cookie: sse_token={t}");
    let bearer = format!("Authorization: Bearer {t}");
    let route = |headers: &[&str]| h.route(&Harness::head("/api/v1/streams/deals", headers));
    // No Origin (a same-origin EventSource), the gateway's own origin, an allowed one: the user.
    for origin in [None, Some("Origin: http://gw"), Some("Origin: https://crm.example")] {
        let headers: Vec<&str> = [cookie.as_str()].into_iter().chain(origin).collect();
        assert!(matches!(route(&headers), Routed::Stream(_)), "{origin:?}");
    }
    // Any other page the user visits: its EventSource carries the cookie, not the user's intent.
    for origin in ["Origin: https://evil.example", "Origin: null", "Origin: http://gw.evil.example"] {
        let r = respond(route(&[cookie.as_str(), origin]));
        assert!(r.starts_with("HTTP/1.1 403 Forbidden\r\n") && r.contains("\"code\":\"origin_not_allowed\""), "{origin}: {r}");
    }
    // Requests of another site's page that carry no Origin (an `<img>`, a `<script>`, a
    // navigation): the browser's fetch metadata says so. Without it (older browsers), or from
    // the user's own address bar (`none`) or a page of this site, the request stands.
    // A sibling subdomain (`same-site`) is another origin: it gets the cookie even when the
    // cookie is `SameSite=Strict`, and a stream it opens could evict the user's.
    for site in ["Sec-Fetch-Site: cross-site", "Sec-Fetch-Site: same-site", "sec-fetch-site: Same-Site"] {
        for origin in [None, Some("Origin: https://evil.example")] {
            let headers: Vec<&str> = [cookie.as_str(), site].into_iter().chain(origin).collect();
            let r = respond(route(&headers));
            assert!(r.starts_with("HTTP/1.1 403 Forbidden\r\n") && r.contains("\"code\":\"origin_not_allowed\""), "{site} {origin:?}: {r}");
        }
    }
    for site in ["Sec-Fetch-Site: same-origin", "Sec-Fetch-Site: none", "Sec-Fetch-Site: NONE"] {
        assert!(matches!(route(&[cookie.as_str(), site]), Routed::Stream(_)), "{site}");
    }
    // When the browser sends fetch metadata, it decides: an `Origin` naming the gateway's host
    // may be a page of another scheme (`http://` the host, against the gateway's `https://`: a
    // network attacker's injected script), and behind a proxy that rewrites `Host` the
    // gateway's own page has an `Origin` other than `Host`.
    for site in ["Sec-Fetch-Site: cross-site", "Sec-Fetch-Site: same-site"] {
        let r = respond(route(&[cookie.as_str(), site, "Origin: http://gw"]));
        assert!(r.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{site} from http://gw: {r}");
    }
    let proxied = [cookie.as_str(), "Sec-Fetch-Site: same-origin", "Origin: https://crm-gw.example"];
    assert!(matches!(route(&proxied), Routed::Stream(_)), "the gateway's own page behind a proxy that rewrites Host");
    // A cross-site (or same-site: a sibling subdomain) request from an allowed origin is the
    // CORS case the configuration asks for.
    for site in ["Sec-Fetch-Site: cross-site", "Sec-Fetch-Site: same-site"] {
        let allowed = [cookie.as_str(), site, "Origin: https://crm.example"];
        assert!(matches!(route(&allowed), Routed::Stream(_)), "{site}");
    }
    // A bearer header cannot come from another site without CORS's consent: not concerned.
    assert!(matches!(route(&[bearer.as_str(), "Origin: https://evil.example"]), Routed::Stream(_)));
}

#[test]
fn cors_preflight_allows_configured_origins_with_credentials() {
    let h = Harness::new("").front; // default: no origins
    let pre = b"OPTIONS /api/v1/streams/deals HTTP/1.1\r\nHost: gw\r\nOrigin: https://crm.example\r\nAccess-Control-Request-Headers: authorization, last-event-id\r\n\r\n";
    assert!(respond(h.route(pre, 0)).starts_with("HTTP/1.1 403"));
    let front = Harness::new("[server]\ncors_origins = [\"https://crm.example\"]\n").front;
    let r = respond(front.route(pre, 0));
    assert!(r.starts_with("HTTP/1.1 204 No Content\r\n"), "{r}");
    assert!(r.contains("Access-Control-Allow-Origin: https://crm.example\r\n"));
    assert!(r.contains("Access-Control-Allow-Credentials: true\r\n"));
    assert!(r.contains("Access-Control-Allow-Headers: Authorization, Last-Event-ID"));
    // RFC 9110 8.6: a 204 has no Content-Length, nor a body's type.
    assert!(!r.contains("\r\nContent-Length:") && !r.contains("\r\nContent-Type:") && r.ends_with("\r\n\r\n"), "{r}");
    let other = b"OPTIONS /api/v1/streams/deals HTTP/1.1\r\nHost: gw\r\nOrigin: https://evil.example\r\n\r\n";
    assert!(respond(front.route(other, 0)).starts_with("HTTP/1.1 403"));
    // Matched without regard to case; the configured origin is written back, not the request's
    // spelling of it (found by the route fuzz target).
    let cased = b"OPTIONS /api/v1/streams/deals HTTP/1.1\r\nHost: gw\r\nOrigin: HTTPS://CRM.example\r\n\r\n";
    assert!(respond(front.route(cased, 0)).contains("Access-Control-Allow-Origin: https://crm.example\r\n"));
    // No Origin: no preflight but a plain OPTIONS (a probe): the methods, no CORS headers.
    for front in [&h, &front] {
        let r = respond(front.route(b"OPTIONS /api/v1/streams/deals HTTP/1.1\r\nHost: gw\r\n\r\n", 0));
        assert_eq!(r, "HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\nConnection: close\r\nAllow: GET, OPTIONS\r\n\r\n");
    }
}

#[test]
fn a_shard_at_its_stream_bound_answers_503_overloaded_until_one_closes() {
    let mut h = Harness::new("");
    h.gw = Gateway::new(h.settings.clone(), h.metrics.clone(), 3, 7);
    let open: Vec<StreamId> = ["a", "b", "c"].iter().map(|u| h.open(u, "deals")).collect();
    let r = h.open_path("d", &[], "/api/v1/streams/deals", &[]).unwrap_err();
    assert_eq!(r.status, 503);
    let text = String::from_utf8_lossy(&r.bytes).into_owned();
    assert!(text.contains("\"code\":\"overloaded\""), "{text}");
    assert!(h.closed.is_empty(), "a full shard closes nothing to make room");
    assert_eq!(h.gw.stream_count(), 3);
    // A stream that ends frees its place.
    h.gw.on_closed(open[1]);
    let d = h.open("d", "deals");
    assert_eq!(h.gw.stream_count(), 3);
    h.take_wire(d);
    h.publish("deals", "deal.created", deal_created("after"));
    assert!(h.take_wire(d).contains("event: deal.created"));
}

#[test]
fn ops_routes_are_recognised() {
    let h = Harness::new("");
    assert_eq!(h.route(&Harness::head("/healthz", &[])), Routed::Health);
    assert_eq!(h.route(&Harness::head("/readyz", &[])), Routed::Ready);
    assert_eq!(h.route(&Harness::head("/metrics", &[])), Routed::Metrics);
    assert!(respond(h.route(&Harness::head("/", &[]))).starts_with("HTTP/1.1 404"), "no page outside demo mode");
    let r = Response::ready(&["deals"]);
    assert_eq!(r.status, 503);
}

#[test]
fn the_publish_endpoint_is_off_by_default_and_needs_the_publisher_role() {
    let h = Harness::new("");
    let t = h.token("svc", &["publisher"], 3600);
    let raw = format!("POST /api/v1/publish/deals HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}");
    assert!(respond(h.route(raw.as_bytes())).starts_with("HTTP/1.1 404"));
    let front = Harness::new("[server]\npublish_endpoint = true\n").front;
    match front.route(raw.as_bytes(), 1_900_000_000) {
        Routed::Publish(p) => {
            assert_eq!(p.content_length, 2);
            assert_eq!(&raw.as_bytes()[p.head_len..], b"{}");
        }
        other => panic!("{other:?}"),
    }
    let plain = Harness::new("").token("user", &[], 3600);
    let raw = format!("POST /api/v1/publish/deals HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {plain}\r\nContent-Length: 2\r\n\r\n{{}}");
    assert!(respond(front.route(raw.as_bytes(), 1_900_000_000)).starts_with("HTTP/1.1 403"));
    let m = parse_publish(br#"{"type":"deal.created","data":{"a":1},"recipient_ids":"u1","schema_version":1}"#, None).unwrap();
    assert_eq!(m.kind.as_deref(), Some("deal.created"));
    assert_eq!(&m.body[..], br#"{"a":1}"#);
    assert_eq!(m.recipient_ids, Some(HeaderValue::Text("u1".into())));
    assert_eq!(parse_publish(b"[]", None).unwrap_err().status, 400);
    // `data` goes on as it was sent, as an AMQP body does: its keys' order, its numbers' text.
    let m = parse_publish(br#"{"type":"deal.created","data":{"title":"t","deal_id":"x","n":1e2,"big":123456789012345678901234}}"#, None).unwrap();
    assert_eq!(&m.body[..], br#"{"title":"t","deal_id":"x","n":1e2,"big":123456789012345678901234}"#);
    // A field present but unreadable is refused, never taken for an absent one (recipients
    // read as absent would broadcast).
    let deep = format!(r#"{{"type":"deal.created","data":{{}},"recipient_ids":{}{}}}"#, "[".repeat(200), "]".repeat(200));
    for body in [
        r#"{"type":"deal.created","data":{},"recipient_ids":"alice\ud800"}"#,
        r#"{"type":"deal.created","data":{},"recipient_ids":1e400}"#,
        &deep,
        r#"{"type":"deal.created","data":{},"schema_version":"2\udc00"}"#,
        r#"{"type":"deal.created","data":{},"message_id":"m\ud800"}"#,
    ] {
        assert_eq!(parse_publish(body.as_bytes(), None).unwrap_err().status, 400, "{body}");
    }
    for (body, says) in [(&b"{\"type\":"[..], "body is not JSON"), (b"[1]", "body must be a JSON object"), (b"{\"data\":{}}", "`type` (string) is required"), (b"{\"type\":\"deal.created\"}", "`data` is required")] {
        let e = parse_publish(body, None).unwrap_err();
        assert!(e.status == 400 && String::from_utf8_lossy(&e.bytes).contains(says), "{:?}", String::from_utf8_lossy(&e.bytes));
    }
    // Recipients that are not a string are refused, never read as "no recipients" (which would
    // broadcast the event); null is the same as absent.
    for body in [
        &br#"{"type":"deal.created","data":{},"recipient_ids":["u1"]}"#[..],
        br#"{"type":"deal.created","data":{},"recipient_ids":42}"#,
        br#"{"type":"deal.created","data":{},"message_id":7}"#,
    ] {
        let e = parse_publish(body, None).unwrap_err();
        assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(body));
        assert!(String::from_utf8_lossy(&e.bytes).contains("must be a string"), "{:?}", e.bytes);
    }
    // A null recipient list names no one (dropped as no_recipient), never everyone.
    let m = parse_publish(br#"{"type":"deal.created","data":{},"recipient_ids":null}"#, None).unwrap();
    assert_eq!(m.recipient_ids, Some(HeaderValue::Text(String::new())));
    let m = parse_publish(br#"{"type":"deal.created","data":{}}"#, None).unwrap();
    assert_eq!(m.recipient_ids, None);
    // schema_version as the AMQP header takes it: an integer, or text (the channel's rules check it).
    let m = parse_publish(br#"{"type":"deal.created","data":{},"schema_version":"2"}"#, None).unwrap();
    assert_eq!(m.schema_version, Some(HeaderValue::Text("2".into())));
    let m = parse_publish(br#"{"type":"deal.created","data":{},"schema_version":1.5}"#, None).unwrap();
    assert_eq!(m.schema_version, Some(HeaderValue::Other));
    // A page allowed by CORS can read why its body was refused.
    let e = parse_publish(b"{bad", Some("https://crm.example")).unwrap_err();
    assert!(String::from_utf8_lossy(&e.bytes).contains("Access-Control-Allow-Origin: https://crm.example\r\n"));
}

#[test]
fn a_publish_body_is_framed_by_a_plain_content_length_only() {
    let front = Harness::new("[server]\npublish_endpoint = true\nmax_body_bytes = 1024\n").front;
    let t = Harness::new("").token("svc", &["publisher"], 3600);
    let status = |headers: &str| {
        let raw = format!("POST /api/v1/publish/deals HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\n{headers}\r\n{{}}");
        match front.route(raw.as_bytes(), 1_900_000_000) {
            Routed::Publish(p) => (200, p.content_length),
            Routed::Respond(r) => (r.status, 0),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(status("Content-Length: 2\r\n"), (200, 2));
    assert_eq!(status("Content-Length:  2 \r\n"), (200, 2));
    assert_eq!(status(""), (411, 0));
    assert_eq!(status("Transfer-Encoding: chunked\r\n").0, 400);
    assert_eq!(status("Transfer-Encoding: chunked\r\nContent-Length: 2\r\n").0, 400);
    for bad in ["+2", "-1", "2,2", "0x2", "2 2", ""] {
        assert_eq!(status(&format!("Content-Length: {bad}\r\n")).0, 400, "{bad:?}");
    }
    assert_eq!(status("Content-Length: 2\r\nContent-Length: 2\r\n").0, 400);
    assert_eq!(status("Host: a.example\r\nHost: b.example\r\nContent-Length: 2\r\n").0, 400);
    assert_eq!(status("Content-Length: 1025\r\n").0, 413);
    assert_eq!(status("Content-Length: 99999999999999999999999999\r\n").0, 413);
}

#[test]
fn a_publish_body_must_be_declared_json() {
    // A page of another site can POST a form's types, or no type at all (a `no-cors` fetch of a
    // Blob), with the user's cookie and without a preflight; an old browser may send neither
    // Origin nor Sec-Fetch-Site. Only `application/json` is taken, which needs a preflight
    // from another origin.
    let h = Harness::with_auth("cookie = \"t\"\n", "[server]\npublish_endpoint = true\n");
    let front = h.front;
    let t = Harness::new("").token("svc", &["publisher"], 3600);
    let status = |credential: &str, content_type: &str| {
        let raw = format!("POST /api/v1/publish/deals HTTP/1.1\r\nHost: gw\r\n{credential}{content_type}Content-Length: 2\r\n\r\n{{}}");
        match front.route(raw.as_bytes(), 1_900_000_000) {
            Routed::Publish(_) => 202,
            Routed::Respond(r) => {
                if r.status == 415 {
                    assert!(String::from_utf8_lossy(&r.bytes).contains("\"code\":\"unsupported_media_type\""));
                }
                r.status
            }
            other => panic!("{other:?}"),
        }
    };
    for credential in [format!("Authorization: Bearer {t}\r\n"), format!("Cookie: t={t}\r\n")] {
        assert_eq!(status(&credential, "Content-Type: application/json\r\n"), 202);
        assert_eq!(status(&credential, "Content-Type: application/json; charset=utf-8\r\n"), 202);
        for refused in ["", "Content-Type: text/plain\r\n", "Content-Type: application/x-www-form-urlencoded\r\n", "Content-Type: multipart/form-data; boundary=b\r\n"] {
            assert_eq!(status(&credential, refused), 415, "{refused:?}");
        }
    }
    // Counted like every other answer (an operator's alert on a flood of cross-site posts).
    let counted = h.metrics.render();
    assert!(counted.contains("sse_gateway_http_responses_total{status=\"415\"} 8\n"), "{counted}");
}

#[test]
fn a_stream_request_whose_body_framing_is_unknown_is_refused_and_a_spaced_version_is_read() {
    let h = Harness::new("");
    let t = h.token("alice", &[], 3600);
    let route = |target: &str, headers: &str| {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t}\r\n{headers}\r\n");
        h.front.route(raw.as_bytes(), 1_900_000_000)
    };
    let status = |headers: &str| match route("/api/v1/streams/deals", headers) {
        Routed::Stream(_) => 200,
        Routed::Respond(r) => r.status,
        other => panic!("{other:?}"),
    };
    assert_eq!(status(""), 200);
    assert_eq!(status("Content-Length: 0\r\n"), 200);
    // RFC 9112 6.3: a length that is not 1*DIGIT, or one beside a transfer coding, is 400 here too.
    assert_eq!(status("Content-Length: abc\r\n"), 400);
    // A second Authorization (here after the valid one): whose request is it? 400.
    assert_eq!(status("Authorization: Bearer x\r\n"), 400);
    assert_eq!(status("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"), 400);
    // `?version=+1` (a space, decoded) and `1%20` are version 1, as blank is no version.
    for q in ["version=+1", "version=1%20", "version=%201"] {
        match route(&format!("/api/v1/streams/deals?{q}"), "") {
            Routed::Stream(req) => assert_eq!(req.version, 1, "{q}"),
            other => panic!("{q}: {other:?}"),
        }
    }
}

#[test]
fn readyz_says_what_is_down_with_a_code_and_a_message() {
    let r = Response::ready(&["deals"]);
    assert_eq!(r.status, 503);
    let body = String::from_utf8_lossy(&r.bytes);
    let json: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["code"], "not_ready");
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
    assert_eq!(json["sources_down"], serde_json::json!(["deals"]));
}

#[test]
fn a_publisher_that_expects_100_continue_is_told_to_send_its_body() {
    let front = Harness::new("[server]\npublish_endpoint = true\n").front;
    let t = Harness::new("").token("svc", &["publisher"], 3600);
    let expects = |version: &str, headers: &str| {
        let raw = format!("POST /api/v1/publish/deals HTTP/{version}\r\nHost: gw\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\n{headers}\r\n");
        match front.route(raw.as_bytes(), 1_900_000_000) {
            Routed::Publish(p) => p.expect_continue,
            other => panic!("{other:?}"),
        }
    };
    assert!(expects("1.1", "Content-Length: 2\r\nExpect: 100-continue\r\n"));
    assert!(expects("1.1", "Content-Length: 2\r\nExpect:  100-Continue \r\n"));
    assert!(!expects("1.1", "Content-Length: 2\r\n"));
    // RFC 9110 10.1.1: ignored from an HTTP/1.0 client; no body, nothing to wait for.
    assert!(!expects("1.0", "Content-Length: 2\r\nExpect: 100-continue\r\n"));
    assert!(!expects("1.1", "Content-Length: 0\r\nExpect: 100-continue\r\n"));
    assert_eq!(Response::CONTINUE, b"HTTP/1.1 100 Continue\r\n\r\n");
    // A refused request is answered at once: the client never sends the body.
    let plain = Harness::new("").token("user", &[], 3600);
    let raw = format!("POST /api/v1/publish/deals HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {plain}\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
    assert!(respond(front.route(raw.as_bytes(), 1_900_000_000)).starts_with("HTTP/1.1 403"));
}

#[test]
fn an_http_1_1_request_without_host_is_refused_and_an_http_1_0_one_is_served() {
    let h = Harness::new("");
    let t = h.token("u1", &[], 3600);
    let ask = |version: &str, host: &str| {
        let raw = format!("GET /api/v1/streams/deals HTTP/{version}\r\n{host}Authorization: Bearer {t}\r\n\r\n");
        h.route(raw.as_bytes())
    };
    let text = respond(ask("1.1", ""));
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("\"code\":\"bad_request\"") && text.contains("Host"), "{text}");
    assert!(matches!(ask("1.1", "Host: gw\r\n"), Routed::Stream(_)));
    assert!(matches!(ask("1.0", ""), Routed::Stream(_)));
    // Ops routes too: a probe that speaks HTTP/1.1 sends Host.
    assert!(respond(h.route(b"GET /healthz HTTP/1.1\r\n\r\n")).starts_with("HTTP/1.1 400"));
    assert_eq!(h.route(b"GET /healthz HTTP/1.0\r\n\r\n"), Routed::Health);
}

#[test]
fn metrics_count_streams_by_channel_and_responses_by_status() {
    let mut h = Harness::new("");
    let a = h.open("u1", "deals");
    h.open("u2", "deals");
    let _ = h.route(&Harness::head("/api/v1/streams/deals", &[]));
    h.gw.on_closed(a);
    let text = h.metrics.render();
    assert!(text.contains("sse_gateway_streams_open{channel=\"deals\"} 1\n"), "{text}");
    assert!(text.contains("sse_gateway_streams_opened_total{channel=\"deals\"} 2\n"));
    assert!(text.contains("sse_gateway_http_responses_total{status=\"401\"} 1\n"));
    assert!(text.contains("sse_gateway_streams_closed_total{reason=\"client_gone\"} 1\n"));
}

#[test]
fn a_replay_larger_than_the_output_bound_flows_in_batches_without_closing_the_stream() {
    let mut h = Harness::new("max_pending_bytes = 4096\nbuffer_events = 100\n");
    for i in 0..60 {
        h.publish("deals", "deal.created", deal_created(&format!("title {i:03}")));
    }
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-0"]).unwrap();
    assert!(h.gw.pending_bytes(id) <= 4096, "the replay waits in the buffer, not in the stream");
    // Live events published while the replay is under way come after it, in order.
    h.publish("deals", "deal.created", deal_created("live"));
    h.drain();
    let w = h.take_events(id);
    let ids: Vec<u64> = w.lines().filter_map(|l| l.strip_prefix("id: 1000-")).map(|s| s.parse().unwrap()).collect();
    assert_eq!(ids, (1..=61).collect::<Vec<u64>>());
    assert!(h.closed.is_empty());
}

/// A frontend's timer may run late behind a burst: a writer that takes a stream's output after
/// its token expired, before the expiry timer was handled, gets no more of its replay, only
/// `token_expired` (the core handles the due timer first).
#[test]
fn a_replay_does_not_go_on_past_the_tokens_expiry_when_the_timer_runs_late() {
    let mut h = Harness::new("max_pending_bytes = 4096\nbuffer_events = 100\n");
    for i in 0..60 {
        h.publish("deals", "deal.created", deal_created(&format!("title {i:03}")));
    }
    // Not read by the harness: this test takes the output itself.
    let id = h.open_path_with("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-0"], 10, false).unwrap();
    let text = |out: &mut Vec<Bytes>| out.drain(..).map(|b| String::from_utf8(b.to_vec()).unwrap()).collect::<String>();
    let mut out = Vec::new();
    h.gw.take_output(id, &mut out, h.now);
    let first = text(&mut out);
    let replayed = first.matches("id: 1000-").count();
    assert!(replayed > 0 && replayed < 60, "a first batch of the replay: {replayed}");
    // 11 s later (exp was 10 s after the open); handle_timeout has not run.
    h.gw.take_output(id, &mut out, h.now + Duration::from_secs(11));
    let rest = text(&mut out);
    assert_eq!(rest, "event: error\ndata: {\"code\":\"token_expired\"}\n\n", "after {replayed} replayed");
    h.drain();
    assert_eq!(h.closed.get(&id), Some(&CloseReason::TokenExpired));
}

#[test]
fn a_catch_up_that_fills_the_output_bound_waits_for_the_client_before_going_live() {
    // Just enough events that the replay's last one takes the output to its bound.
    let (mut h, id, n, _) = catch_up_over_equal_events(|len| 4096usize.div_ceil(len));
    assert!(h.gw.pending_bytes(id) >= 4096, "the replay filled the output");
    // The client is stalled; live events meanwhile must not overrun its bound.
    h.publish("deals", "deal.created", deal_created("same size title"));
    h.publish("deals", "deal.created", deal_created("same size title"));
    assert!(h.closed.is_empty(), "a stalled catch-up was closed as slow: {:?}", h.closed);
    let (ids, _) = read_on(&mut h, id, 4);
    assert_eq!(ids, (1..=n as u64 + 2).collect::<Vec<u64>>());
}

#[test]
fn a_catch_up_that_ends_near_its_bound_goes_live_only_once_a_live_event_cannot_overrun_it() {
    // A replay that ends between half the bound and the bound, one frame short of it.
    let (mut h, id, n, len) = catch_up_over_equal_events(|len| (4096 - len - 1) / len);
    assert!(h.gw.pending_bytes(id) > 2048 && h.gw.pending_bytes(id) < 4096);
    // A live event larger than what is left of the bound, before the client's first read.
    h.publish("deals", "deal.created", deal_created(&"t".repeat(len * 2)));
    assert!(h.closed.is_empty(), "a catch-up whose client had not read yet was closed as slow: {:?}", h.closed);
    let (ids, _) = read_on(&mut h, id, 3);
    assert_eq!(ids, (1..=n as u64 + 1).collect::<Vec<u64>>());
}

#[test]
fn an_outage_warning_does_not_close_a_catch_up_whose_last_event_took_it_past_its_bound() {
    // Events of about 3 KB under a 4 KiB bound: the catch-up's second event takes the output
    // past the bound (by most of an event, not by the 1 KiB a warning may add).
    let mut h = Harness::new("max_pending_bytes = 4096\nbuffer_events = 100\n");
    let deals = h.channel("deals");
    for k in 0..4 {
        h.publish("deals", "deal.created", deal_created(&format!("{k}{}", "t".repeat(3000))));
    }
    let id = resume_without_reading(&mut h, "u1");
    assert!(h.gw.pending_bytes(id) > 4096 + 1024, "the catch-up passed its bound by a whole event");
    h.gw.source_down(deals, h.now);
    h.drain();
    assert!(h.closed.is_empty(), "a catch-up whose client had not read yet was closed as slow: {:?}", h.closed);
    let (ids, w) = read_on(&mut h, id, 6);
    assert_eq!(ids, [1, 2, 3, 4], "every event once, in order");
    assert!(w.contains("source_unavailable"), "the warning reached the client: {w}");
}

#[test]
fn an_outage_warning_does_not_close_a_live_stream_writing_a_large_event() {
    // One event of nearly the whole bound, not yet written, then the source goes down: D8 keeps
    // the stream open; it gets the event, then the warning.
    let mut h = Harness::new("max_pending_bytes = 4096\n");
    let deals = h.channel("deals");
    let id = h.open("u1", "deals");
    h.take_wire(id);
    h.reading.insert(id, false);
    for size in [4000, 6000] {
        let big = h.publish("deals", "deal.created", deal_created(&"x".repeat(size)));
        assert!(h.gw.pending_bytes(id) + 100 > 4096, "the output is at its bound");
        h.gw.source_down(deals, h.now);
        h.drain();
        assert!(h.closed.is_empty(), "a live stream was closed as slow by a warning: {:?}", h.closed);
        h.flush(id);
        let w = h.take_wire(id);
        assert!(w.starts_with(std::str::from_utf8(big.frame()).unwrap()), "the event first: {w}");
        assert!(w.contains("source_unavailable"), "then the warning: {w}");
        h.gw.source_up(deals);
        h.drain();
        h.take_wire(id);
    }
}

#[test]
fn a_large_event_is_not_refused_by_output_that_holds_no_event() {
    // Near the bound, for a stream whose writer has not taken its response head and `retry:`
    // yet (a new stream), or a heartbeat or warning: no event waits, so it goes in, as into an
    // empty output. Before, those bytes counted as waiting output: the stream was closed as
    // slow with nothing written, its head included (the client got no response at all).
    let mut h = Harness::new("max_pending_bytes = 4096\n");
    let deals = h.channel("deals");
    let new = h.open_path_with("u1", &[], "/api/v1/streams/deals", &[], 3600, false).unwrap();
    let warned = h.open("u2", "deals");
    h.take_wire(warned);
    h.reading.insert(warned, false);
    h.gw.source_down(deals, h.now);
    h.drain();
    assert!(h.gw.pending_bytes(new) > 0 && h.gw.pending_bytes(warned) > 0, "both hold output that is not an event");
    let big = h.publish("deals", "deal.created", deal_created(&"x".repeat(3850)));
    assert!(h.closed.is_empty(), "closed as slow: {:?}", h.closed);
    assert!(big.frame().len() < 4096 && h.gw.pending_bytes(new) > 4096, "the event fits the bound alone, not with the head");
    for id in [new, warned] {
        h.flush(id);
        let w = h.take_wire(id);
        assert!(w.contains(std::str::from_utf8(big.frame()).unwrap()), "the event reached the client: {w}");
    }
    // With an event waiting, the bound holds: a second one past it closes the stream.
    h.reading.insert(new, false);
    h.publish("deals", "deal.created", deal_created(&"y".repeat(3000)));
    h.publish("deals", "deal.created", deal_created(&"z".repeat(3000)));
    assert_eq!(h.closed.get(&new), Some(&CloseReason::SlowClient));
}

#[test]
fn an_event_larger_than_the_output_bound_reaches_idle_streams() {
    let mut h = Harness::new("max_pending_bytes = 4096\n");
    let a = h.open("u1", "deals");
    let b = h.open("u2", "deals");
    h.take_wire(a);
    h.take_wire(b);
    let big = h.publish("deals", "deal.created", deal_created(&"x".repeat(6000)));
    assert!(big.frame().len() > 4096);
    assert!(h.closed.is_empty(), "streams with nothing queued were closed as slow: {:?}", h.closed);
    for id in [a, b] {
        assert_eq!(h.take_wire(id), String::from_utf8(big.frame().to_vec()).unwrap());
    }
}

#[test]
fn a_resume_that_ends_in_history_gap_on_a_log_channel_gets_no_id_at_or_below_its_own() {
    // Far ahead of this shard (more than a buffer): history_gap, and this shard's live events up
    // to the client's id are not sent when it catches up.
    let mut h = Harness::new("buffer_events = 8\n");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    h.publish_msg("deals", deal_at(1)).unwrap();
    let far = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-400"]).unwrap();
    assert!(h.take_events(far).contains("history_gap"));
    for pos in [2, 399, 400, 401] {
        h.publish_msg("deals", deal_at(pos)).unwrap();
    }
    let w = h.take_wire(far);
    let ids = ids_in(&w);
    assert_eq!(ids, ["1000-401"]);

    // A read-back that failed before anything arrived live: the same.
    let (mut h, _, id) = resumed_before_anything_arrived();
    h.gw.backfill_done(id, false);
    h.drain();
    assert!(h.take_events(id).contains("history_gap"));
    for pos in [5, 7, 8] {
        h.publish_msg("deals", deal_at(pos)).unwrap();
    }
    let w = h.take_wire(id);
    let ids = ids_in(&w);
    assert_eq!(ids, ["1000-8"]);

    // The log lost the range after the client's id (retention): the same.
    let (mut h, _, id) = resumed_before_anything_arrived();
    assert_eq!(h.gw.backfill_message(id, 12, None), BackfillStep::Finished);
    h.drain();
    assert!(h.take_events(id).contains("history_gap"));
    for pos in [6, 13] {
        h.publish_msg("deals", deal_at(pos)).unwrap();
    }
    let w = h.take_wire(id);
    let ids = ids_in(&w);
    assert_eq!(ids, ["1000-13"]);
}

/// `n` equal events on `deals` (`n` from one event's frame length) and a stream resuming from
/// the start whose client does not read yet (4 KiB output bound): the harness, the stream, `n`
/// and the frame length.
fn catch_up_over_equal_events(n: impl Fn(usize) -> usize) -> (Harness, StreamId, usize, usize) {
    let mut h = Harness::new("max_pending_bytes = 4096\nbuffer_events = 100\n");
    let len = h.publish("deals", "deal.created", deal_created("same size title")).frame().len();
    let n = n(len);
    for _ in 1..n {
        h.publish("deals", "deal.created", deal_created("same size title"));
    }
    let id = resume_without_reading(&mut h, "u1");
    (h, id, n, len)
}

/// A `deals` stream resuming from the start (1000-0) whose client does not read yet.
fn resume_without_reading(h: &mut Harness, user: &str) -> StreamId {
    let t = h.token(user, &[], 3600);
    let raw = Harness::head("/api/v1/streams/deals", &[&format!("Authorization: Bearer {t}"), "Last-Event-ID: 1000-0"]);
    let Routed::Stream(req) = h.route(&raw) else { panic!("routing") };
    let id = h.gw.open(req, h.now, h.since_epoch()).unwrap();
    h.reading.insert(id, false);
    h.drain();
    id
}

/// The client of `id` reads again, for `rounds` writes: the ids (of `deals`, epoch 1000) and
/// the text it got.
fn read_on(h: &mut Harness, id: StreamId, rounds: usize) -> (Vec<u64>, String) {
    h.reading.insert(id, true);
    for _ in 0..rounds {
        h.flush(id);
        h.drain();
    }
    let w = h.take_events(id);
    let ids = w.lines().filter_map(|l| l.strip_prefix("id: 1000-")).map(|s| s.parse().unwrap()).collect();
    (ids, w)
}

/// A catch-up at its output bound with a client that reads slowly: a heartbeat tick or an
/// outage warning then must not close it (the catch-up filled the output, not the client); a
/// client that takes nothing for a whole heartbeat interval is closed as slow.
#[test]
fn a_catch_up_at_its_bound_survives_a_heartbeat_and_a_warning_but_not_a_whole_stalled_interval() {
    let mut h = Harness::new("max_pending_bytes = 4096
buffer_events = 200
");
    let deals = h.channel("deals");
    for i in 0..100 {
        h.publish("deals", "deal.created", deal_created(&format!("title {i}")));
    }
    let slow = resume_without_reading(&mut h, "slow");
    let stalled = resume_without_reading(&mut h, "stalled");
    for id in [slow, stalled] {
        assert!(h.gw.pending_bytes(id) >= 4096 - 1024, "the catch-up filled the output");
    }
    // Past the first heartbeat tick, with the source down (a warning each).
    h.gw.source_down(deals, h.now);
    h.drain();
    h.advance(Duration::from_secs(31));
    assert!(h.closed.is_empty(), "closed at its bound: {:?}", h.closed);
    // `slow` takes one batch before the next tick; `stalled` takes nothing.
    h.flush(slow);
    h.drain();
    h.advance(Duration::from_secs(30));
    assert_eq!(h.closed.get(&stalled), Some(&CloseReason::SlowClient));
    assert!(!h.closed.contains_key(&slow));
    h.gw.source_up(deals);
    let (ids, w) = read_on(&mut h, slow, 40);
    assert_eq!(ids, (1..=100).collect::<Vec<u64>>(), "every event, once, in order");
    assert!(w.contains("source_unavailable"), "{w}");
}

#[test]
fn the_delay_histogram_counts_from_an_events_arrival_to_the_write_that_carries_it() {
    let mut h = Harness::new("");
    let a = h.open("u1", "deals");
    let b = h.open("u2", "deals");
    h.reading.insert(b, false); // b's writer is busy: its output waits
    let _ = h.take_events(a);
    let mut m = msg("deal.created", deal_created("first"));
    m.received = Some(h.now);
    h.publish_msg("deals", m).unwrap();
    // a took it at once (0 s); b takes it 3 ms later, with a second event that came at 2 ms:
    // one write, counted once, from the older arrival.
    h.advance(Duration::from_millis(2));
    let mut m = msg("deal.created", deal_created("second"));
    m.received = Some(h.now);
    h.publish_msg("deals", m).unwrap();
    h.advance(Duration::from_millis(1));
    h.flush(b);
    assert_eq!(h.take_events(b).matches("event: deal.created").count(), 2);
    // Frames that are not live events (a heartbeat) are not counted.
    h.advance(Duration::from_secs(30));
    h.flush(b);
    let text = h.metrics.render();
    // a: twice at once; b: once, 3 ms after the first event came.
    for line in [
        "sse_gateway_delivery_delay_seconds_count 3\n",
        "sse_gateway_delivery_delay_seconds_bucket{le=\"0.0005\"} 2\n",
        "sse_gateway_delivery_delay_seconds_bucket{le=\"0.0025\"} 2\n",
        "sse_gateway_delivery_delay_seconds_bucket{le=\"0.005\"} 3\n",
        "sse_gateway_delivery_delay_seconds_bucket{le=\"+Inf\"} 3\n",
        "sse_gateway_delivery_delay_seconds_sum 0.003\n",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
}

/// A deal at log position `seq` with a title of about `size` bytes.
fn big_deal_at(seq: u64, size: usize) -> UpstreamMessage {
    let mut m = msg("deal.created", deal_created(&format!("d{seq}{}", "x".repeat(size))));
    m.position = Some(seq);
    m
}

/// Hands stream `id` `m` as a read-back of `channel`'s log gives it.
fn read_back_msg(h: &mut Harness, channel: ChannelId, id: StreamId, m: &UpstreamMessage) -> BackfillStep {
    let ingest = &h.ingest[channel.index()];
    let ev = ingest.read_back(m, &mut ingest.read_back_window()).unwrap();
    h.gw.backfill_message(id, m.position.unwrap(), Some(&ev))
}

/// A stream of `u1` on a log channel (bound 4 KiB) resuming from `1000-7`, whose client does not
/// read for now.
fn resuming_without_reading() -> (Harness, ChannelId, StreamId) {
    let mut h = Harness::new("max_pending_bytes = 4096\n");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    let id = h.open_path("u1", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-7"]).unwrap();
    h.reading.insert(id, false);
    (h, deals, id)
}

/// The client reads again: everything it is sent until its output stays empty.
fn read_all(h: &mut Harness, id: StreamId) -> String {
    h.reading.insert(id, true);
    for _ in 0..4 {
        h.flush(id);
        h.drain();
    }
    h.take_events(id)
}

#[test]
fn a_loss_a_read_back_finds_while_the_output_is_full_is_reported_once() {
    let (mut h, deals, id) = resuming_without_reading();
    assert_eq!(read_back_msg(&mut h, deals, id, &big_deal_at(8, 3000)), BackfillStep::Continue);
    assert!(h.gw.pending_bytes(id) > 2048, "the output is over half its bound");
    // 9..19 are gone from the log.
    assert_eq!(read_back_msg(&mut h, deals, id, &big_deal_at(20, 10)), BackfillStep::Finished);
    h.drain();
    let w = read_all(&mut h, id);
    // Once drained, the read-back goes on from just before 20: not from 8, which would find the
    // same loss again and warn a second time.
    let after = EventId { epoch: 1000, seq: 19 };
    assert_eq!(h.backfills.last(), Some(&Output::Backfill { stream: id, channel: deals, after, until: u64::MAX }));
    assert_eq!(read_back_msg(&mut h, deals, id, &big_deal_at(20, 10)), BackfillStep::Continue);
    h.gw.backfill_done(id, true);
    h.drain();
    let w = w + &read_all(&mut h, id);
    assert_eq!(w.matches("history_gap").count(), 1, "{w}");
    assert_eq!(ids_in(&w), ["1000-8", "1000-20"]);
    assert!(h.closed.is_empty());
}

#[test]
fn a_read_back_that_ends_with_a_full_output_before_anything_arrived_goes_live_once_it_drained() {
    let (mut h, deals, id) = resuming_without_reading();
    assert_eq!(read_back_msg(&mut h, deals, id, &big_deal_at(8, 3000)), BackfillStep::Continue);
    h.gw.backfill_done(id, true); // the log ends at 8
    h.drain();
    // Live at once, this would overrun the output and close a client that reads as slow.
    h.publish_msg("deals", big_deal_at(9, 3000)).unwrap();
    assert!(h.closed.is_empty(), "closed as slow: {:?}", h.closed);
    let w = read_all(&mut h, id);
    h.publish_msg("deals", deal_at(10)).unwrap();
    let w = w + &h.take_events(id);
    assert_eq!(ids_in(&w), ["1000-8", "1000-9", "1000-10"], "{w}");
    assert!(!w.contains("history_gap"), "{w}");
}

#[test]
fn a_read_back_that_overtook_the_live_source_with_a_full_output_goes_live_once_it_drained() {
    let (mut h, deals, id) = resuming_without_reading();
    assert_eq!(read_back_msg(&mut h, deals, id, &big_deal_at(8, 1500)), BackfillStep::Continue);
    assert_eq!(read_back_msg(&mut h, deals, id, &big_deal_at(9, 1500)), BackfillStep::Continue);
    // The live source, behind the read-back, delivers 8: the buffer takes over, one event behind
    // the client's place.
    h.publish_msg("deals", big_deal_at(8, 1500)).unwrap();
    assert_eq!(read_back_msg(&mut h, deals, id, &big_deal_at(10, 10)), BackfillStep::Finished);
    h.drain();
    h.publish_msg("deals", big_deal_at(9, 1500)).unwrap();
    h.publish_msg("deals", big_deal_at(10, 3000)).unwrap();
    assert!(h.closed.is_empty(), "closed as slow: {:?}", h.closed);
    let w = read_all(&mut h, id);
    h.publish_msg("deals", deal_at(11)).unwrap();
    let w = w + &h.take_events(id);
    assert_eq!(ids_in(&w), ["1000-8", "1000-9", "1000-10", "1000-11"], "{w}");
    assert!(!w.contains("history_gap"), "{w}");
}

/// Primes `deals` with the deals at `seqs` as the source's history read gives them (`Gateway::prime`).
fn prime(h: &mut Harness, channel: ChannelId, seqs: impl IntoIterator<Item = u64>) {
    for seq in seqs {
        let ingest = &h.ingest[channel.index()];
        let ev = ingest.read_back(&deal_at(seq), &mut ingest.read_back_window()).unwrap();
        h.gw.prime(&ev);
    }
}

/// A log channel whose source is reading history (`prime_start`), and a stream of `u2` that
/// resumed from `1000-5` meanwhile.
fn resumed_while_priming() -> (Harness, ChannelId, StreamId) {
    let mut h = Harness::new("");
    let deals = h.channel("deals");
    h.gw.set_history(deals, Some(1000));
    h.gw.prime_start(deals);
    let resumed = h.open_path("u2", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-5"]).unwrap();
    (h, deals, resumed)
}

#[test]
fn the_history_read_at_start_is_for_resumes_only_and_live_events_it_also_read_go_to_the_others() {
    let (mut h, deals, resumed) = resumed_while_priming();
    let fresh = h.open_path("u1", &[], "/api/v1/streams/deals", &[]).unwrap();
    h.drain();
    assert!(h.backfills.is_empty(), "a resume waits for the history read, it does not read the log: {:?}", h.backfills);
    assert_eq!(ids_in(&h.take_events(resumed)), Vec::<&str>::new());
    prime(&mut h, deals, 4..=8);
    h.drain();
    assert_eq!(ids_in(&h.take_events(resumed)), Vec::<&str>::new(), "nothing before the read ends");
    h.gw.prime_end(deals, Some(8));
    h.drain();
    assert_eq!(ids_in(&h.take_events(resumed)), ["1000-6", "1000-7", "1000-8"]);
    // The live consumer began at 8 (a chunk written after it started, read by both): 8 is new
    // to the fresh stream, not to the resumed one.
    h.publish_msg("deals", deal_at(8)).unwrap();
    h.publish_msg("deals", deal_at(9)).unwrap();
    h.drain();
    assert_eq!(ids_in(&h.take_events(fresh)), ["1000-8", "1000-9"], "history (4-7) never goes out as new");
    assert_eq!(ids_in(&h.take_events(resumed)), ["1000-9"]);
    assert!(h.backfills.is_empty(), "{:?}", h.backfills);
    // A later resume is served from the buffer, history and live alike.
    let later = h.open_path("u3", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-3"]).unwrap();
    h.drain();
    assert_eq!(ids_in(&h.take_events(later)), ["1000-4", "1000-5", "1000-6", "1000-7", "1000-8", "1000-9"]);
    assert!(h.backfills.is_empty(), "{:?}", h.backfills);
}

#[test]
fn a_history_read_that_stopped_short_of_the_live_events_leaves_no_hole() {
    let (mut h, deals, resumed) = resumed_while_priming();
    prime(&mut h, deals, 4..=6);
    h.gw.prime_end(deals, Some(6)); // ended by silence at 6
    h.drain();
    assert_eq!(ids_in(&h.take_events(resumed)), ["1000-6"]);
    // The live consumer began at 9: 7 and 8 are in neither (the source says so, from the
    // positions it saw). The resumed stream reads them back.
    h.gw.prime_gap(deals);
    h.publish_msg("deals", deal_at(9)).unwrap();
    h.drain();
    let Some(&Output::Backfill { after, until, .. }) = h.backfills.last() else { panic!("a read-back: {:?}", h.backfills) };
    assert_eq!((after, until), (EventId { epoch: 1000, seq: 6 }, 8));
    assert_eq!(read_back(&mut h, deals, resumed, 6), BackfillStep::Continue);
    assert_eq!(read_back(&mut h, deals, resumed, 7), BackfillStep::Continue);
    assert_eq!(read_back(&mut h, deals, resumed, 8), BackfillStep::Finished);
    h.drain();
    let w = h.take_events(resumed);
    assert_eq!(ids_in(&w), ["1000-7", "1000-8", "1000-9"], "{w}");
    assert!(!w.contains("history_gap"), "{w}");
    // Nor does a later resume from before the hole find the buffer continuous: it reads the log.
    let before = h.backfills.len();
    h.open_path("u3", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-5"]).unwrap();
    h.drain();
    let Some(&Output::Backfill { after, until, .. }) = h.backfills.get(before) else { panic!("a read-back: {:?}", h.backfills) };
    assert_eq!((after, until), (EventId { epoch: 1000, seq: 5 }, 8));
}

#[test]
fn live_events_past_messages_the_live_source_dropped_continue_the_history() {
    let (mut h, deals, resumed) = resumed_while_priming();
    prime(&mut h, deals, 4..=6);
    h.gw.prime_end(deals, Some(6));
    // 7 and 8 came live and were dropped (invalid): no gap, 9 follows.
    h.publish_msg("deals", deal_at(9)).unwrap();
    h.drain();
    assert_eq!(ids_in(&h.take_events(resumed)), ["1000-6", "1000-9"]);
    assert!(h.backfills.is_empty(), "nothing read back: {:?}", h.backfills);
    let later = h.open_path("u3", &[], "/api/v1/streams/deals", &["Last-Event-ID: 1000-5"]).unwrap();
    h.drain();
    assert_eq!(ids_in(&h.take_events(later)), ["1000-6", "1000-9"], "from the buffer");
}

#[test]
fn a_read_back_under_way_when_history_is_read_stops_and_continues_from_the_buffer() {
    let (mut h, deals, id) = resumed_before_anything_arrived(); // from 1000-7, nothing buffered
    h.gw.prime_start(deals);
    // Its first message comes while the history is read: the read-back stops there.
    assert_eq!(read_back(&mut h, deals, id, 7), BackfillStep::Finished);
    prime(&mut h, deals, 5..=9);
    h.gw.prime_end(deals, Some(9));
    h.publish_msg("deals", deal_at(10)).unwrap();
    h.drain();
    assert_eq!(h.backfills.len(), 1, "no second read-back: {:?}", h.backfills);
    assert_eq!(ids_in(&h.take_events(id)), ["1000-8", "1000-9", "1000-10"]);
}

#[test]
fn a_history_read_not_ended_by_the_source_ends_with_a_live_event_or_an_outage() {
    for how in ["live event", "outage"] {
        let (mut h, deals, resumed) = resumed_while_priming();
        prime(&mut h, deals, 4..=6);
        match how {
            "live event" => {
                h.publish_msg("deals", deal_at(7)).unwrap();
            }
            _ => h.gw.source_down(deals, h.now),
        }
        h.drain();
        let w = h.take_events(resumed);
        let want: &[&str] = if how == "outage" { &["1000-6"] } else { &["1000-6", "1000-7"] };
        assert_eq!(ids_in(&w), want, "{how}: the waiting resume is served: {w}");
        // Later history is ignored: it would be sent to no one, and the buffer moved on.
        prime(&mut h, deals, [8]);
        h.publish_msg("deals", deal_at(8)).unwrap();
        h.drain();
        assert_eq!(ids_in(&h.take_events(resumed)), ["1000-8"], "{how}: the next live event, once");
    }
}

#[test]
fn after_an_outage_what_the_next_consumer_sends_again_of_the_history_is_old_news() {
    let (mut h, deals, resumed) = resumed_while_priming();
    prime(&mut h, deals, 4..=8);
    h.gw.prime_end(deals, Some(8));
    let fresh = h.open_path("u1", &[], "/api/v1/streams/deals", &[]).unwrap();
    h.gw.source_down(deals, h.now);
    // The next consumer starts at the chunks written since the first one began (it had taken
    // nothing): the history comes again, then what is new.
    h.gw.prime_over(deals);
    h.gw.source_up(deals);
    for seq in 4..=9 {
        h.publish_msg("deals", deal_at(seq)).unwrap();
    }
    h.drain();
    assert_eq!(ids_in(&h.take_events(fresh)), ["1000-9"]);
    assert_eq!(ids_in(&h.take_events(resumed)), ["1000-6", "1000-7", "1000-8", "1000-9"]);
}

#[test]
fn after_an_outage_a_consumer_resuming_where_the_last_one_stopped_still_sends_what_both_read() {
    let (mut h, deals, resumed) = resumed_while_priming();
    let fresh = h.open_path("u1", &[], "/api/v1/streams/deals", &[]).unwrap();
    prime(&mut h, deals, 4..=10); // read on past where the live consumer began (8)
    h.gw.prime_end(deals, Some(10));
    h.publish_msg("deals", deal_at(8)).unwrap();
    h.gw.source_down(deals, h.now);
    h.gw.source_up(deals);
    // The next consumer resumes at 8, where the last one stopped: 9 and 10 are new to the fresh stream.
    for seq in 9..=11 {
        h.publish_msg("deals", deal_at(seq)).unwrap();
    }
    h.drain();
    let w = h.take_events(fresh);
    assert_eq!(ids_in(&w), ["1000-8", "1000-9", "1000-10", "1000-11"], "{w}");
    let w = h.take_events(resumed);
    assert_eq!(ids_in(&w), ["1000-6", "1000-7", "1000-8", "1000-9", "1000-10", "1000-11"], "{w}");
}

#[test]
fn a_read_back_that_finds_the_logs_end_while_history_is_read_continues_from_it() {
    let (mut h, deals, id) = resumed_before_anything_arrived(); // from 1000-7, nothing buffered
    assert_eq!(read_back(&mut h, deals, id, 7), BackfillStep::Continue);
    h.gw.prime_start(deals);
    h.gw.backfill_done(id, true); // silence, taken for the log's end
    h.drain();
    assert_eq!(ids_in(&h.take_events(id)), Vec::<&str>::new());
    // The history holds what came after: the stream gets it, not only what comes live next.
    prime(&mut h, deals, 6..=9);
    h.gw.prime_end(deals, Some(9));
    h.publish_msg("deals", deal_at(10)).unwrap();
    h.drain();
    assert_eq!(ids_in(&h.take_events(id)), ["1000-8", "1000-9", "1000-10"]);
}
