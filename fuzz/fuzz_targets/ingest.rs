//! Upstream messages into the validator, live and read back from a log: never a panic; an
//! accepted event's frame is well formed (only id/event/data lines, ending in one blank line).
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sse_gateway_core::*;
use std::sync::Arc;

#[path = "common.rs"]
mod common;

#[derive(Debug, Arbitrary)]
struct Msg {
    channel: u8,
    kind: Option<String>,
    routing_key: String,
    recipients: Option<String>,
    version: Option<i64>,
    message_id: Option<String>,
    body: Vec<u8>,
    position: Option<u64>,
}

fuzz_target!(|msgs: Vec<Msg>| {
    let s = common::settings("");
    let m = Arc::new(Metrics::new(&s));
    let n = s.channels.len();
    let mut ingests: Vec<Ingest> = (0..n)
        .map(|i| Ingest::new(s.clone(), m.clone(), s.channel_id(&s.channels[i].name).unwrap(), 7))
        .collect();
    let mut seen: Vec<RecentIds> = ingests.iter().map(Ingest::read_back_window).collect();
    for msg in msgs {
        let i = msg.channel as usize % n;
        let up = UpstreamMessage {
            kind: msg.kind,
            routing_key: msg.routing_key,
            recipient_ids: msg.recipients.map(HeaderValue::Text),
            schema_version: msg.version.map(HeaderValue::Int),
            message_id: msg.message_id,
            body: bytes::Bytes::from(msg.body),
            position: msg.position,
            received: None,
        };
        let before = ingests[i].last_id();
        if let Ok(ev) = ingests[i].handle_message(&up) {
            assert!(before.is_none_or(|b| b < ev.id()), "ids strictly increase");
            check_frame(&ev, &up.body, s.channels[i].per_user);
        }
        // The same message read back from a log: numbered by its position, the same frame rules.
        if let Ok(ev) = ingests[i].read_back(&up, &mut seen[i]) {
            assert_eq!(Some(ev.id().seq), up.position, "a read-back is numbered by its position");
            check_frame(&ev, &up.body, s.channels[i].per_user);
        }
    }
});

/// Only id/event lines and one data line, ending in one blank line; the data is the body's JSON
/// (line breaks between its tokens are whitespace, left out); a per-user event names someone.
fn check_frame(ev: &Event, sent: &[u8], per_user: bool) {
    let frame = std::str::from_utf8(ev.frame()).expect("frames are UTF-8");
    let body = frame.strip_suffix("\n\n").expect("a frame ends with a blank line");
    for line in body.split('\n') {
        assert!(
            line.starts_with("id: ") || line.starts_with("event: ") || line.starts_with("data:"),
            "unexpected line {line:?}"
        );
        assert!(!line.contains('\r'));
    }
    let data: Vec<&str> = body.split('\n').filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.len(), 1, "one data line: {frame:?}");
    let v: serde_json::Value = serde_json::from_str(data[0]).expect("data is the JSON payload");
    assert!(v.is_object());
    let body: serde_json::Value = serde_json::from_slice(sent).expect("an accepted body is JSON");
    assert_eq!(v, body, "the data is what was sent");
    if per_user {
        assert!(ev.recipients().is_some_and(|r| !r.is_empty()), "per-user events name someone");
    }
}
