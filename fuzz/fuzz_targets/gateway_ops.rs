//! Arbitrary operation sequences into one shard, with the clock taken from the input: never a
//! panic, never a user above the limit, never an event to a stream that may not see it, and
//! every stream forgotten once closed.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sse_gateway_core::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;

#[derive(Debug, Arbitrary)]
enum Op {
    Open { user: u8, channel: u8, finance: bool, resume: Option<(u8, u16)> },
    Close { pick: u16 },
    Publish { channel: u8, recipients: Option<Vec<u8>>, valid: bool },
    Advance { ms: u32 },
    Down { channel: u8 },
    Up { channel: u8 },
    Take { pick: u16 },
    Shutdown,
}

const LIMIT: usize = 3;

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
    let mut gw = Gateway::new(s.clone(), m.clone(), 64, 1);
    let mut ingests: Vec<Ingest> = (0..s.channels.len())
        .map(|i| Ingest::new(s.clone(), m.clone(), s.channel_id(&s.channels[i].name).unwrap(), 5 + i as u64))
        .collect();
    let mut now = Instant::now();
    let unix = 1_900_000_000u64;
    let mut open: HashMap<StreamId, (String, usize)> = HashMap::new();
    // Event id -> (channel, recipients) of everything published.
    let mut published: HashMap<String, (usize, Option<Vec<String>>)> = HashMap::new();
    for op in ops {
        match op {
            Op::Open { user, channel, finance, resume } => {
                let user = format!("u{}", user % 6);
                let ch = channel as usize % s.channels.len();
                let mut head = format!(
                    "GET /api/v1/streams/{}?version=1 HTTP/1.1\r\nAuthorization: Bearer {}\r\n",
                    s.channels[ch].name,
                    token(&user, finance)
                );
                if let Some((e, q)) = resume {
                    head.push_str(&format!("Last-Event-ID: {}-{}\r\n", e % 8, q));
                }
                head.push_str("\r\n");
                if let Routed::Stream(req) = front.route(head.as_bytes(), unix) {
                    if let Ok(id) = gw.open(req, now, unix) {
                        open.insert(id, (user, ch));
                    }
                }
            }
            Op::Close { pick } => {
                let mut ids: Vec<_> = open.keys().copied().collect();
                ids.sort();
                if !ids.is_empty() {
                    let id = ids[pick as usize % ids.len()];
                    gw.on_closed(id);
                    open.remove(&id);
                }
            }
            Op::Publish { channel, recipients, valid } => {
                let ch = channel as usize % s.channels.len();
                let name = s.channels[ch].name.clone();
                let body = if valid { demo_body(&name) } else { "{\"x\":1}".to_string() };
                let kind = demo_kind(&name);
                let up = UpstreamMessage {
                    kind: Some(kind.into()),
                    routing_key: kind.into(),
                    recipient_ids: recipients.map(|r| {
                        HeaderValue::Text(r.iter().map(|u| format!("u{}", u % 6)).collect::<Vec<_>>().join(","))
                    }),
                    body: bytes::Bytes::from(body),
                    ..Default::default()
                };
                if let Ok(ev) = ingests[ch].handle_message(&up) {
                    let who = ev.recipients().map(|r| r.iter().map(|u| u.to_string()).collect());
                    published.insert(ev.id().to_string(), (ch, who));
                    gw.handle_event(&ev);
                }
            }
            Op::Advance { ms } => {
                now += Duration::from_millis(ms as u64 % 200_000);
                gw.handle_timeout(now);
            }
            Op::Down { channel } => {
                let ch = s.channel_id(&s.channels[channel as usize % s.channels.len()].name).unwrap();
                gw.source_down(ch, now);
            }
            Op::Up { channel } => {
                let ch = s.channel_id(&s.channels[channel as usize % s.channels.len()].name).unwrap();
                gw.source_up(ch);
            }
            Op::Take { pick } => {
                let mut ids: Vec<_> = open.keys().copied().collect();
                ids.sort();
                if !ids.is_empty() {
                    let id = ids[pick as usize % ids.len()];
                    let mut out = Vec::new();
                    gw.take_output(id, &mut out, now);
                    check_frames(&out, &open[&id], &published);
                }
            }
            Op::Shutdown => gw.shutdown(),
        }
        while let Some(out) = gw.poll_output() {
            if let Output::Close(id, _) = out {
                let mut rest = Vec::new();
                gw.take_output(id, &mut rest, now);
                if let Some(who) = open.get(&id) {
                    check_frames(&rest, who, &published);
                }
                gw.on_closed(id);
                open.remove(&id);
            }
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

/// Whole frames only, and every event is of the stream's channel and visible to its user.
fn check_frames(
    out: &[bytes::Bytes],
    (user, channel): &(String, usize),
    published: &HashMap<String, (usize, Option<Vec<String>>)>,
) {
    let text: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    let text = String::from_utf8(text).expect("utf-8");
    assert!(text.is_empty() || text.ends_with("\n\n"), "whole frames only: {text:?}");
    for id in text.lines().filter_map(|l| l.strip_prefix("id: ")) {
        let (ch, who) = published.get(id).expect("only published events are sent");
        assert_eq!(ch, channel, "an event of another channel");
        assert!(who.as_ref().is_none_or(|w| w.contains(user)), "{user} got an event for {who:?}");
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
