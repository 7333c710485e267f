//! Hostile upstream messages (D3, D4): what events.rs does not cover yet. Oversized bodies,
//! headers of the wrong kind (array-valued `recipient_ids` included), empty recipient lists,
//! bodies that are not UTF-8 or nest too deep, event types that try to inject SSE lines, and a
//! flood of garbage: each is dropped, acked, counted by its reason and logged once, and the valid
//! events around them flow, exactly.

use sse_gateway_tests::payloads::{valid, valid_text};
use sse_gateway_tests::raw_amqp::{byte_array, nested_arrays, publish, text, RawMessage};
use sse_gateway_tests::token::user;
use sse_gateway_tests::{for_each_binary, Bin, ConfigBuilder, Fixture, Header, Message, SseClient};

const MAX: usize = 1024;

/// A valid `deal.created` body of exactly `len` bytes.
fn deal_of_len(len: usize) -> String {
    let mut v = valid("deal.created");
    v["title"] = "".into();
    let base = v.to_string().len();
    assert!(len >= base, "{len} < {base}");
    v["title"] = "t".repeat(len - base).into();
    let body = v.to_string();
    assert_eq!(body.len(), len);
    body
}

/// Reads events with ids until the marker's data arrives; returns the (type, data) before it.
async fn until_marker(s: &mut SseClient, marker: &str, who: &str) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    loop {
        let ev = s.expect_event(&format!("the marker on {who}")).await;
        assert_ne!(ev.event, "error", "{who}: {ev:?}");
        if ev.data == marker {
            return seen;
        }
        seen.push((ev.event, ev.data));
    }
}

async fn oversized_and_malformed_messages_are_dropped_by_reason_and_the_valid_ones_flow(bin: Bin) {
    let cfg = ConfigBuilder::new().raw("broker", "max_message_bytes", &MAX.to_string());
    // Before the gateway starts: every `message dropped` line of this test comes after.
    let started = std::time::Instant::now();
    let fx = Fixture::start(bin, cfg).await;
    let mut deals = fx.gw.stream("deals", &user("alice", &[])).await;
    let mut notes = fx.gw.stream("notifications", &user("alice", &[])).await;

    let deal = |body: &str| fx.msg("deals", "deal.created", body);
    let note = |body: &str| fx.msg("notifications", "notification.sent", body);
    let good_note = valid_text("notification.sent");
    let mut bad: Vec<(Message, &str)> = vec![
        // Bodies past broker.max_message_bytes, however valid.
        (deal(&deal_of_len(MAX + 1)), "oversized"),
        (deal(&deal_of_len(1024 * 1024)), "oversized"),
        // Headers of a kind the contract does not have.
        (deal(&valid_text("deal.created")).header("schema_version", Header::Str("abc".into())), "bad_header"),
        (deal(&valid_text("deal.created")).header("schema_version", Header::Float(1.0)), "bad_header"),
        (deal(&valid_text("deal.created")).header("schema_version", Header::Int(0)), "bad_header"),
        (deal(&valid_text("deal.created")).header("schema_version", Header::Long(-1)), "bad_header"),
        (deal(&valid_text("deal.created")).header("schema_version", Header::Array(vec![Header::Int(1)])), "bad_header"),
        (note(&good_note).header("recipient_ids", Header::Array(vec![Header::Str("alice".into())])), "bad_header"),
        (
            note(&good_note).header("recipient_ids", Header::Array(vec![Header::Str("alice".into()), Header::Str("bob".into())])),
            "bad_header",
        ),
        (note(&good_note).header("recipient_ids", Header::Float(1.0)), "bad_header"),
        // Header names are exact: read as absent, a misspelled recipient list would broadcast an
        // event meant for bob to alice, a misspelled version would serve version 2 as 1.
        (deal(&valid_text("deal.created")).header("Recipient_Ids", Header::Str("bob".into())), "bad_header"),
        (deal(&valid_text("deal.created")).header("recipient-ids", Header::Str("bob".into())), "bad_header"),
        (deal(&valid_text("deal.created")).header("recipients", Header::Str("bob".into())), "bad_header"),
        (deal(&valid_text("deal.created")).header("schemaVersion", Header::Int(2)), "bad_header"),
        // A per-user channel never broadcasts: no recipient, or an empty list.
        (note(&good_note), "no_recipient"),
        (note(&good_note).recipients(""), "no_recipient"),
        (note(&good_note).recipients(" , ,, "), "no_recipient"),
        // Recipients are kept with the event as its body is: they count against the same bound.
        (note(&good_note).recipients(&(0..300).map(|i| format!("u{i}")).chain(["alice".into()]).collect::<Vec<_>>().join(",")), "oversized"),
        // Each under the bound, together over it (700 + 49 x (7 + 4) + 5 + 4 bytes), for alice.
        (
            deal(&deal_of_len(700)).recipients(&(0..49).map(|i| format!("u{i:06}")).chain(["alice".into()]).collect::<Vec<_>>().join(",")),
            "oversized",
        ),
        // Bodies that are not JSON text.
        (deal("\u{feff}"), "not_json"),
        (Message { body: b"\xff\xfe{}".to_vec(), ..deal("") }, "not_json"),
        (Message { body: b"{\"title\":\"\xff\"}".to_vec(), ..deal("") }, "not_json"),
        (deal(&"[".repeat(MAX - 24)), "not_json"),
        (deal("{\"deal_id\": NaN}"), "not_json"),
        (deal(""), "not_json"),
        // Types that are not the channel's, some trying to write SSE lines of their own.
        (fx.msg("deals", "deal.created\r\nevent: pwned\r\ndata: pwned", &valid_text("deal.created")), "unknown_type"),
        (fx.msg("deals", "deal.created\nid: 999999-1", &valid_text("deal.created")), "unknown_type"),
        (fx.msg("deals", &"x".repeat(255), &valid_text("deal.created")), "unknown_type"),
        (fx.msg("deals", "notification.sent", &valid_text("notification.sent")), "unknown_type"),
    ];
    // No type property and a routing key that is no event type: the routing key is the type.
    let mut untyped = fx.msg("deals", "pwned.event", &valid_text("deal.created"));
    untyped.kind = None;
    bad.push((untyped, "unknown_type"));

    let boundary = deal_of_len(MAX);
    let after = valid_text("deal.updated");
    // Line breaks between JSON tokens are whitespace: relayed as one `data:` line without them
    // (each would have been a `data:` line of its own, a frame six times the body's size).
    let spread = valid_text("deal.created").replace(",\"", ",\r\n\r\"").replace("\":", "\"\n:");
    serde_json::from_str::<serde_json::Value>(&spread).expect("still JSON");
    let mut msgs: Vec<Message> = bad.iter().map(|(m, _)| m.clone()).collect();
    msgs.push(deal(&boundary)); // exactly the bound: valid
    msgs.push(fx.msg("deals", "deal.updated", &after));
    msgs.push(deal(&spread));
    msgs.push(note(&good_note).recipients("alice"));
    fx.publish_all(&msgs).await;

    let deal_marker = valid_text("calculation.added");
    fx.publish("deals", "calculation.added", &deal_marker).await;
    let note_marker = valid_text("notification.read");
    fx.publish_msg(fx.msg("notifications", "notification.read", &note_marker).recipients("alice")).await;
    let got = until_marker(&mut deals, &deal_marker, "deals").await;
    let want = vec![
        ("deal.created".to_string(), boundary.clone()),
        ("deal.updated".to_string(), after.clone()),
        ("deal.created".to_string(), spread.replace(['\r', '\n'], "")),
    ];
    assert!(got == want, "deals: expected exactly the body at the bound, the next event and the spread one, got {got:?}");
    let got = until_marker(&mut notes, &note_marker, "notifications").await;
    assert_eq!(got, vec![("notification.sent".to_string(), good_note.clone())], "notifications");

    // Counted by channel (notifications are published to its queue through the default exchange)
    // and reason; logged by reason.
    let channel_of = |m: &Message| if m.exchange.is_empty() { "notifications" } else { "deals" };
    let mut by_channel = std::collections::BTreeMap::<(&str, &str), usize>::new();
    let mut expected = std::collections::BTreeMap::<&str, usize>::new();
    for (m, reason) in &bad {
        *by_channel.entry((channel_of(m), reason)).or_default() += 1;
        *expected.entry(reason).or_default() += 1;
    }
    for ((channel, reason), n) in &by_channel {
        let sample = format!("sse_gateway_events_dropped_total{{channel=\"{channel}\",reason=\"{reason}\"}}");
        assert_eq!(fx.gw.metric(&sample).await, Some(*n as f64), "{sample}");
    }
    // D4: logged once, with the reason.
    let count = |log: &str, reason: &str| log.lines().filter(|l| l.contains(reason)).count();
    let log = fx.gw.log_until(sse_gateway_tests::WAIT, |l| expected.iter().all(|(r, n)| count(l, r) >= *n)).await;
    for (reason, n) in &expected {
        let lines = count(&log, reason);
        assert_eq!(lines, *n, "{reason}: {n} drops but {lines} log lines name the reason:\n{log}");
    }
    assert!(!log.contains("\nevent: pwned"), "a type's line break went into the log raw:\n{log}");

    // A flood of garbage stalls nothing: 2,000 invalid messages, then a valid one flows.
    let flood: Vec<Message> = (0..2000)
        .map(|i| match i % 4 {
            0 => deal("{not json"),
            1 => deal(&deal_of_len(MAX + 1 + i)),
            2 => fx.msg("deals", "deal.exploded", &valid_text("deal.created")),
            _ => deal("[1,2,3]"),
        })
        .collect();
    fx.publish_all(&flood).await;
    let last = valid_text("deal.created");
    fx.publish("deals", "deal.created", &last).await;
    let ev = deals.expect_event("the valid event after the flood").await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("deal.created", last.as_str()), "nothing of the flood leaked");
    for (reason, n) in [("not_json", 500), ("oversized", 500), ("unknown_type", 500), ("not_an_object", 500)] {
        let sample = format!("sse_gateway_events_dropped_total{{channel=\"deals\",reason=\"{reason}\"}}");
        let total = n + by_channel.get(&("deals", reason)).copied().unwrap_or(0);
        fx.gw.wait_metric(&sample, total as f64).await;
    }
    let marker = valid_text("deal.updated");
    fx.publish("deals", "deal.updated", &marker).await;
    assert_eq!(deals.expect_event("the marker event").await.data, marker, "something of the flood trailed the valid event");
    assert!(deals.still_open().await && notes.still_open().await);
    assert_eq!(fx.gw.get("/healthz", &[]).await.status, 200);

    // The flood's lines: a burst of 200, then 20 a second; the rest are summed up in a line
    // once the first left without one is 10 s old. Every drop is a line or in a sum.
    let metrics = fx.gw.get("/metrics", &[]).await.body;
    let dropped: usize = metrics
        .lines()
        .filter(|l| l.starts_with("sse_gateway_events_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as usize)
        .sum();
    let count = |log: &str| sse_gateway_tests::lines_and_summed(log, "message dropped", "dropped without a line of their own", "dropped");
    let log = fx.gw.log_until(2 * sse_gateway_tests::WAIT, |log| {
        let (lines, summed) = count(log);
        lines + summed >= dropped
    }).await;
    let (lines, summed) = count(&log);
    assert_eq!(lines + summed, dropped, "{lines} `message dropped` lines and {summed} summed up for {dropped} drops");
    // At the rule's pace since the gateway started.
    sse_gateway_tests::assert_rate_limited(lines, dropped, started, "drops");
}


/// A bare-AMQP `deal.created` message (`body`) to the test's deals exchange. Headers are
/// encoded field values ([`text`], [`nested_arrays`]).
fn raw_deal(fx: &Fixture, kind: &[u8], message_id: &[u8], headers: Vec<(Vec<u8>, Vec<u8>)>, body: &str) -> RawMessage {
    RawMessage {
        exchange: fx.topo.exchange("deals").into(),
        routing_key: "deal.created".into(),
        kind: kind.into(),
        message_id: message_id.into(),
        headers,
        body: body.into(),
    }
}

/// A bare-AMQP `notification.sent` message (`body`) to the test's notifications queue.
fn raw_note(fx: &Fixture, message_id: &[u8], headers: Vec<(Vec<u8>, Vec<u8>)>, body: &str) -> RawMessage {
    RawMessage {
        routing_key: fx.topo.notifications.clone(),
        kind: b"notification.sent".to_vec(),
        message_id: message_id.into(),
        headers,
        body: body.into(),
        ..RawMessage::default()
    }
}

/// RabbitMQ hands on a `message_id`, `type` or header name that is not UTF-8 as it is; the AMQP
/// client used to fail the whole connection on it, and the broker gave the message out again on
/// the next one, so every channel stayed down (vendor/README.md). Now such a message is dropped
/// by its reason, and nothing else notices.
async fn a_property_that_is_not_utf8_drops_one_message_and_closes_nothing(bin: Bin) {
    let fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let mut deals = fx.gw.stream("deals", &user("alice", &[])).await;
    let mut notes = fx.gw.stream("notifications", &user("alice", &[])).await;
    let deal = valid_text("deal.created");
    let note = valid_text("notification.sent");
    // Dropped: an id that is not UTF-8 (bad_header), a type that is not (unknown_type), a
    // recipient list that is not (a long string: bad_header, as before the patch).
    publish(&raw_deal(&fx, b"deal.created", b"m-\xff\xfe", vec![], &deal));
    publish(&raw_deal(&fx, b"deal.\xffcreated", b"m-raw-2", vec![], &deal));
    publish(&raw_note(&fx, b"m-raw-3", vec![(b"recipient_ids".to_vec(), text(b"alice\xff"))], &note));
    // Delivered: a header name that is not UTF-8 is a header the contract does not have.
    let odd_name = vec![(b"x-\xff\xfe".to_vec(), text(b"1")), (b"recipient_ids".to_vec(), text(b"alice"))];
    publish(&raw_note(&fx, b"m-raw-4", odd_name, &note));

    let deal_marker = valid_text("deal.updated");
    fx.publish("deals", "deal.updated", &deal_marker).await;
    let note_marker = valid_text("notification.read");
    fx.publish_msg(fx.msg("notifications", "notification.read", &note_marker).recipients("alice")).await;
    // Exactly these events before the markers (warnings are passed over here: a lost connection
    // shows as a second "connected to the broker" in the log, checked below).
    assert_eq!(until_marker(&mut deals, &deal_marker, "deals").await, vec![], "deals: only the marker");
    assert_eq!(
        until_marker(&mut notes, &note_marker, "notifications").await,
        vec![("notification.sent".to_string(), note.clone())],
        "notifications: the message with the odd header name, then the marker"
    );
    for (channel, reason, n) in [("deals", "bad_header", 1.0), ("deals", "unknown_type", 1.0), ("notifications", "bad_header", 1.0)] {
        let sample = format!("sse_gateway_events_dropped_total{{channel=\"{channel}\",reason=\"{reason}\"}}");
        assert_eq!(fx.gw.metric(&sample).await, Some(n), "{sample}");
    }
    let log = fx.gw.log_until(sse_gateway_tests::WAIT, |l| l.contains("message_id is not UTF-8 text")).await;
    assert!(log.contains("message_id is not UTF-8 text"), "the drop is logged with its reason:\n{log}");
    assert_eq!(log.matches("connected to the broker").count(), 1, "one connection all along:\n{log}");
    assert!(deals.still_open().await && notes.still_open().await);
}

/// RabbitMQ passes a header nested as deep as a frame allows; the AMQP client's parser used to
/// recurse into it without a bound and abort the process (a stack overflow), and the broker gave
/// the message out again after each restart (vendor/README.md). Now nesting past 32 levels reads
/// as empty: an event with such a header flows, a `recipient_ids` of that kind is `bad_header`.
async fn a_header_nested_twenty_thousand_deep_crashes_nothing(bin: Bin) {
    let fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let mut deals = fx.gw.stream("deals", &user("alice", &[])).await;
    let mut notes = fx.gw.stream("notifications", &user("alice", &[])).await;
    let deal = valid_text("deal.created");
    // Two notifications with distinct bodies: the one that arrives says which it was.
    let (bad_note, note) = (valid_text("notification.sent"), valid_text("notification.sent"));
    let deep = || (b"x-deep".to_vec(), nested_arrays(20_000));
    publish(&raw_deal(&fx, b"deal.created", b"m-deep-1", vec![deep()], &deal));
    publish(&raw_note(&fx, b"m-deep-2", vec![(b"recipient_ids".to_vec(), nested_arrays(40)), deep()], &bad_note));
    publish(&raw_note(&fx, b"m-deep-3", vec![(b"recipient_ids".to_vec(), text(b"alice")), deep()], &note));

    let ev = deals.expect_event("the event with a deep header").await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("deal.created", deal.as_str()));
    let ev = notes.expect_event("the notification with a deep header").await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("notification.sent", note.as_str()), "only the one with recipients");
    let sample = "sse_gateway_events_dropped_total{channel=\"notifications\",reason=\"bad_header\"}";
    assert_eq!(fx.gw.metric(sample).await, Some(1.0), "{sample}");
    let log = fx.gw.stderr();
    assert_eq!(log.matches("connected to the broker").count(), 1, "one connection all along:\n{log}");
    assert!(deals.still_open().await && notes.still_open().await);
}

/// D3's recipients sent as a byte array (pika's Python `bytes`, Go's `[]byte`, Java's `byte[]`)
/// are the text they hold when it is UTF-8 (they were `bad_header`: every such notification lost);
/// bytes that are not UTF-8 stay `bad_header`, never read as "no recipients".
async fn recipients_sent_as_a_byte_array_are_read_as_the_text_they_hold(bin: Bin) {
    let fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let mut alice = fx.gw.stream("notifications", &user("alice", &[])).await;
    let mut bob = fx.gw.stream("notifications", &user("bob", &[])).await;
    let note = valid_text("notification.sent");
    let to = |v: &[u8]| vec![(b"recipient_ids".to_vec(), byte_array(v))];
    publish(&raw_note(&fx, b"m-bytes-1", to(b"carol, alice"), &note));
    publish(&raw_note(&fx, b"m-bytes-2", to(b"alice\xff"), &note));
    let marker = valid_text("notification.read");
    fx.publish_msg(fx.msg("notifications", "notification.read", &marker).recipients("alice,bob")).await;
    assert_eq!(until_marker(&mut alice, &marker, "alice").await, vec![("notification.sent".to_string(), note.clone())]);
    assert_eq!(until_marker(&mut bob, &marker, "bob").await, vec![], "bob is not named");
    let sample = "sse_gateway_events_dropped_total{channel=\"notifications\",reason=\"bad_header\"}";
    assert_eq!(fx.gw.metric(sample).await, Some(1.0), "{sample}");
}

/// A void header (a publisher's None / nil / null) is no header, as `null` is at the publish
/// endpoint: a deal with a void `schema_version` is version 1. A void `recipient_ids` names no
/// one (`no_recipient`), on a broadcast channel too: read as absent it would reach everyone (D3).
/// They were `bad_header`.
async fn a_void_header_is_no_header_but_a_void_recipient_list_names_no_one(bin: Bin) {
    let fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let mut deals = fx.gw.stream("deals", &user("alice", &[])).await;
    let mut notes = fx.gw.stream("notifications", &user("alice", &[])).await;
    let unnamed = valid_text("deal.updated");
    fx.publish_msg(fx.msg("deals", "deal.updated", &unnamed).header("recipient_ids", Header::Void)).await;
    let deal = valid_text("deal.created");
    fx.publish_msg(fx.msg("deals", "deal.created", &deal).header("schema_version", Header::Void)).await;
    fx.publish_msg(fx.msg("notifications", "notification.sent", &valid_text("notification.sent")).header("recipient_ids", Header::Void)).await;
    let marker = valid_text("notification.read");
    fx.publish_msg(fx.msg("notifications", "notification.read", &marker).recipients("alice")).await;
    let ev = deals.expect_event("the deal with a void schema_version").await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("deal.created", deal.as_str()), "not the deal with a void recipient list");
    assert_eq!(until_marker(&mut notes, &marker, "alice").await, vec![], "a void recipient list names no one");
    let dropped = |channel: &str, reason: &str| format!("sse_gateway_events_dropped_total{{channel=\"{channel}\",reason=\"{reason}\"}}");
    assert_eq!(fx.gw.metric(&dropped("notifications", "no_recipient")).await, Some(1.0));
    assert_eq!(fx.gw.metric(&dropped("deals", "no_recipient")).await, Some(1.0));
    assert_eq!(fx.gw.metric(&dropped("deals", "bad_header")).await, Some(0.0));
}

for_each_binary!(
    a_void_header_is_no_header_but_a_void_recipient_list_names_no_one,
    recipients_sent_as_a_byte_array_are_read_as_the_text_they_hold,
    oversized_and_malformed_messages_are_dropped_by_reason_and_the_valid_ones_flow,
    a_property_that_is_not_utf8_drops_one_message_and_closes_nothing,
    a_header_nested_twenty_thousand_deep_crashes_nothing
);
