//! Upstream messages into the validator, live and read back from a log: never a panic; an
//! accepted event's frame is well formed (only id/event/data lines, ending in one blank line,
//! one data line whose JSON is the body's).
//!
//! An input starting with a NUL byte is read instead as messages built from a valid template
//! per (channel, event type) of the seed catalogue: fuzzed string values (escaped as `\uXXXX`
//! or not), numbers in several spellings, optional fields absent, null or present, an undeclared
//! field, and any JSON whitespace between tokens (CR and LF too); at most one deliberate fault
//! (a required field left out or null, a value of another JSON type, a string that is not a
//! uuid, date, date-time or enum value). A message without a fault must be accepted, live and
//! read back, as the type and recipients it was sent with; one with a fault must be dropped for
//! it (`missing_field`, `wrong_kind`).
#![no_main]
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use sse_gateway_core::catalogue::FieldKind;
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
    /// Other header names (a near miss of `recipient_ids` or `schema_version` drops it).
    header_names: Vec<String>,
}

/// A message from a valid template (see the top of the file).
#[derive(Debug, Arbitrary)]
struct Templated {
    channel: u8,
    event: u8,
    /// Values of the string fields, in order (cycled; "x" when there are none).
    strings: Vec<String>,
    /// Values of the number and integer fields, in order (cycled), and how each is spelt.
    numbers: Vec<(i32, u8)>,
    /// Per field: 0 absent (if optional), 1 null (if optional), else present; also picks enum
    /// values, booleans and objects.
    choices: Vec<u8>,
    /// Whitespace between tokens, one choice per gap (cycled).
    ws: Vec<u8>,
    /// Which characters of strings are written as `\uXXXX` (cycled).
    escapes: Vec<bool>,
    /// An undeclared field (passed through).
    extra: Option<(String, String)>,
    /// The fault: (field, how).
    fault: Option<(u8, u8)>,
    /// Recipients (u0..u3); a per-user channel always names one.
    recipients: Vec<u8>,
    /// The type in the `type` property (else the routing key).
    kind_property: bool,
    /// `schema_version`: absent, 1, or " 1 " as text.
    version: u8,
    /// A `message_id` (each a new one).
    message_id: bool,
}

fuzz_target!(|data: &[u8]| {
    if let Some(rest) = data.strip_prefix(&[0]) {
        if let Ok(msgs) = Vec::<Templated>::arbitrary_take_rest(Unstructured::new(rest)) {
            templated(msgs);
        }
    } else if let Ok(msgs) = Vec::<Msg>::arbitrary_take_rest(Unstructured::new(data)) {
        raw(msgs);
    }
});

/// The seed settings, an ingest per channel, and a read-back window for each.
fn ingests() -> (Arc<Settings>, Vec<Ingest>, Vec<RecentIds>) {
    let s = common::settings("");
    let m = Arc::new(Metrics::new(&s));
    let ingests: Vec<Ingest> = (0..s.channels.len())
        .map(|i| Ingest::new(s.clone(), m.clone(), s.channel_id(&s.channels[i].name).unwrap(), 7))
        .collect();
    let seen = ingests.iter().map(Ingest::read_back_window).collect();
    (s, ingests, seen)
}

fn raw(msgs: Vec<Msg>) {
    let (s, mut ingests, mut seen) = ingests();
    let n = s.channels.len();
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
            misnamed: misnamed_header(msg.header_names.iter().map(String::as_str)),
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
}

/// A JSON value as written: numbers keep their spelling.
enum J {
    Obj(Vec<(String, J)>),
    Str(String),
    Num(String),
    Bool(bool),
    Null,
}

/// Writes `v` with the whitespace `ws` picks between tokens and the escapes `esc` picks.
fn write(v: &J, out: &mut String, ws: &mut dyn FnMut() -> &'static str, esc: &mut dyn FnMut() -> bool) {
    match v {
        J::Obj(fields) => {
            out.push('{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(ws());
                    out.push(',');
                }
                out.push_str(ws());
                write_str(k, out, esc);
                out.push_str(ws());
                out.push(':');
                out.push_str(ws());
                write(v, out, ws, esc);
            }
            out.push_str(ws());
            out.push('}');
        }
        J::Str(t) => write_str(t, out, esc),
        J::Num(n) => out.push_str(n),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Null => out.push_str("null"),
    }
}

fn write_str(t: &str, out: &mut String, esc: &mut dyn FnMut() -> bool) {
    out.push('"');
    for c in t.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || esc() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

const UUID: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";
// Valid datetimes (never a leap second: refused, browsers' `Date` cannot read one).
const DATETIMES: [&str; 4] = ["2026-01-01T00:00:00Z", "2026-05-01t12:30:00.250+03:00", "2024-02-29T23:59:59z", "2016-12-31T23:59:59.999999999-12:00"];

fn templated(msgs: Vec<Templated>) {
    let (s, mut ingests, mut seen) = ingests();
    let n = s.channels.len();
    for (k, t) in msgs.into_iter().enumerate() {
        let i = t.channel as usize % n;
        let schema = s.catalogue.channel(&s.channels[i].name).expect("a channel of the catalogue");
        let version = schema.version(schema.default_version()).expect("its default version");
        let types: Vec<_> = version.event_types().collect();
        let (kind, event) = types[t.event as usize % types.len()];
        let cycle = |v: &[u8], j: usize| v.get(j % v.len().max(1)).copied().unwrap_or(2);
        let fault = t.fault.filter(|_| !event.fields().is_empty()).map(|(f, how)| (f as usize % event.fields().len(), how % 4));
        // Whether the message has a fault the validator must drop it for.
        let mut expect: Option<DropReason> = None;
        let (mut si, mut ni) = (0, 0);
        let mut fields = Vec::new();
        for (j, f) in event.fields().iter().enumerate() {
            let choice = cycle(&t.choices, j);
            let mut value = match &f.kind {
                FieldKind::Uuid => J::Str(if choice % 2 == 0 { UUID.into() } else { UUID.to_uppercase() }),
                FieldKind::String => {
                    si += 1;
                    J::Str(t.strings.get((si - 1) % t.strings.len().max(1)).cloned().unwrap_or_else(|| "x".into()))
                }
                FieldKind::DateTime => J::Str(DATETIMES[choice as usize % DATETIMES.len()].into()),
                FieldKind::Date => J::Str(if choice % 2 == 0 { "2026-01-01" } else { "2024-02-29" }.into()),
                FieldKind::Number | FieldKind::Integer => {
                    ni += 1;
                    let (x, how) = t.numbers.get((ni - 1) % t.numbers.len().max(1)).copied().unwrap_or((1, 0));
                    let integer = f.kind == FieldKind::Integer;
                    J::Num(match how % 4 {
                        0 => x.to_string(),
                        1 if !integer => format!("{x}.25"),
                        1 => format!("{x}.0"),
                        2 => format!("{x}e2"),
                        _ => format!("{}E-0", x),
                    })
                }
                FieldKind::Object => J::Obj(if choice % 2 == 0 { vec![] } else { vec![("k".into(), J::Num("1".into()))] }),
                FieldKind::Boolean => J::Bool(choice % 2 == 0),
                FieldKind::Enum(values) => J::Str(values[choice as usize % values.len()].clone()),
            };
            let mut present = f.required || choice > 1;
            if !f.required && choice == 1 {
                value = J::Null;
                present = true;
            }
            if let Some((_, how)) = fault.filter(|(at, _)| *at == j) {
                let wrong = |k: &FieldKind| match k {
                    FieldKind::Number | FieldKind::Integer | FieldKind::Boolean | FieldKind::Object => J::Str("1".into()),
                    _ => J::Num("1".into()),
                };
                match how {
                    // Left out.
                    0 => {
                        present = false;
                        expect = f.required.then_some(DropReason::MissingField);
                    }
                    // Null.
                    1 => {
                        value = J::Null;
                        present = true;
                        expect = f.required.then_some(DropReason::MissingField);
                    }
                    // Another JSON type.
                    2 => {
                        value = wrong(&f.kind);
                        present = true;
                        expect = Some(DropReason::WrongKind);
                    }
                    // Not a uuid, date, date-time or enum value.
                    _ => {
                        if matches!(f.kind, FieldKind::Uuid | FieldKind::Date | FieldKind::DateTime | FieldKind::Enum(_)) {
                            let base = t.strings.first().map_or("", String::as_str);
                            value = J::Str(format!("~{base}"));
                            present = true;
                            expect = Some(DropReason::WrongKind);
                        }
                    }
                }
            }
            if present {
                fields.push((f.name.clone(), value));
            }
        }
        if let Some((key, value)) = t.extra.filter(|(key, _)| event.field(key).is_none()) {
            fields.push((key, J::Str(value)));
        }
        let (mut w, mut e) = (0usize, 0usize);
        let mut ws = || {
            w += 1;
            match cycle(&t.ws, w) % 8 {
                0 | 1 | 2 => "",
                3 => " ",
                4 => "\t",
                5 => "\n",
                6 => "\r\n",
                _ => " \r\n\t ",
            }
        };
        let mut esc = || {
            e += 1;
            t.escapes.get(e % t.escapes.len().max(1)).copied().unwrap_or(false)
        };
        let mut body = String::new();
        body.push_str(ws());
        write(&J::Obj(fields), &mut body, &mut ws, &mut esc);
        body.push_str(ws());
        let per_user = s.channels[i].per_user;
        let mut who: Vec<String> = t.recipients.iter().map(|u| format!("u{}", u % 4)).collect();
        if per_user && who.is_empty() {
            who.push("u0".into());
        }
        let up = UpstreamMessage {
            kind: t.kind_property.then(|| kind.to_string()),
            routing_key: if t.kind_property { "routing.key".into() } else { kind.to_string() },
            recipient_ids: (!who.is_empty()).then(|| HeaderValue::Text(who.join(","))),
            schema_version: match t.version % 3 {
                0 => None,
                1 => Some(HeaderValue::Int(1)),
                _ => Some(HeaderValue::Text(" 1 ".into())),
            },
            message_id: t.message_id.then(|| format!("m{k}")),
            body: bytes::Bytes::from(body),
            position: Some(k as u64 + 1),
            received: None,
            misnamed: None,
        };
        // What a bound on the message's size leaves out of the rule (the fuzzer's inputs are
        // far smaller).
        if up.body.len() + who.iter().map(|u| u.len() + 1).sum::<usize>() > 60_000 {
            continue;
        }
        let before = ingests[i].last_id();
        let live = ingests[i].handle_message(&up);
        let read = ingests[i].read_back(&up, &mut seen[i]);
        let body = String::from_utf8_lossy(&up.body);
        match expect {
            Some(reason) => {
                assert_eq!(live.map(|_| ()).map_err(|d| d.reason), Err(reason), "{kind} {body}");
                assert_eq!(read.map(|_| ()).map_err(|d| d.reason), Err(reason), "read back: {kind} {body}");
            }
            None => {
                let ev = live.unwrap_or_else(|d| panic!("a valid {kind} dropped: {d:?}: {body}"));
                assert!(before.is_none_or(|b| b < ev.id()), "ids strictly increase");
                let back = read.unwrap_or_else(|d| panic!("a valid {kind} dropped when read back: {d:?}: {body}"));
                assert_eq!(back.id().seq, k as u64 + 1, "a read-back is numbered by its position");
                for ev in [&ev, &back] {
                    assert_eq!(ev.event_type(), kind);
                    assert_eq!(ev.version(), 1);
                    let named: Option<std::collections::BTreeSet<&str>> = (!who.is_empty()).then(|| who.iter().map(String::as_str).collect());
                    assert_eq!(ev.recipients().map(|r| r.iter().collect()), named, "the recipients as sent");
                    let frame = std::str::from_utf8(ev.frame()).expect("UTF-8");
                    assert!(frame.contains(&format!("\nevent: {kind}\n")), "the type line: {frame:?}");
                    check_frame(ev, &up.body, per_user);
                }
            }
        }
    }
}

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
