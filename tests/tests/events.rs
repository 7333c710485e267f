//! Events from RabbitMQ to the browser: every event type of the seed arrives exactly as
//! published (D4, D5, D6), invalid messages are dropped and counted (D4), and a message naming
//! its recipients reaches only them (D3).

use std::time::Duration;

use sse_gateway_tests::payloads::{valid, valid_text, SEED_EVENTS};
use sse_gateway_tests::process::events_in;
use sse_gateway_tests::sse::parse_id;
use sse_gateway_tests::token::user;
use sse_gateway_tests::{for_each_binary, Bin, ConfigBuilder, Fixture, Header, SseClient, SseEvent};

fn assert_ids_increase(events: &[SseEvent]) {
    for pair in events.windows(2) {
        let (a, b) = (pair[0].id.as_deref().unwrap(), pair[1].id.as_deref().unwrap());
        let parse = |id| parse_id(id).unwrap_or_else(|| panic!("an id not of the form <epoch>-<seq>: {id:?}"));
        let ((ea, sa), (eb, sb)) = (parse(a), parse(b));
        assert!(ea == eb && sa < sb, "ids must increase within a channel: {a} then {b}");
    }
}

async fn every_seed_event_type_arrives_with_id_type_and_data_exactly(bin: Bin) {
    let fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let roles = ["finance_manager"];
    let mut streams: Vec<(&str, SseClient)> = Vec::new();
    for channel in ["deals", "tasks", "notifications", "payments"] {
        let s = if channel == "deals" {
            // `?version=1` is what no version means; ask for it explicitly once.
            let auth = format!("Bearer {}", user("ursula", &roles));
            let s = fx.gw.open("/api/v1/streams/deals?version=1", &[("Authorization", &auth)]).await;
            assert_eq!(s.status, 200);
            s
        } else {
            fx.gw.stream(channel, &user("ursula", &roles)).await
        };
        streams.push((channel, s));
    }

    let mut published: Vec<(&str, &str, String)> = Vec::new();
    for (i, (channel, kind)) in SEED_EVENTS.iter().enumerate() {
        // Vary how the message says what it is, within the contract:
        let body = match i {
            // Multi-line JSON: its line breaks are whitespace, left out of the frame.
            2 => serde_json::to_string_pretty(&valid(kind)).unwrap(),
            4 => {
                let mut v = valid(kind); // a field the catalogue does not know passes through
                v["broker_note"] = serde_json::json!({"nested": [1, 2, 3]});
                v.to_string()
            }
            _ => valid_text(kind),
        };
        let mut m = fx.msg(channel, kind, &body);
        if *channel == "notifications" {
            m = m.recipients("ursula"); // a per-user channel never broadcasts
        }
        m = match i {
            1 => {
                m.kind = None; // no `type` property: the routing key is the event type
                m
            }
            3 => m.header("schema_version", Header::Int(1)),
            5 => m.header("schema_version", Header::Long(1)),
            _ => m,
        };
        if i != 1 && *channel != "notifications" {
            m.routing_key = "some.routing.key".into(); // the `type` property decides
        }
        fx.publish_msg(m).await;
        published.push((channel, kind, body));
    }

    // A marker on each channel, after the seed: what comes before it is all the stream got.
    let mut markers = Vec::new();
    for (channel, _) in &streams {
        let (_, kind) = SEED_EVENTS.iter().find(|(c, _)| c == channel).expect("a seed event per channel");
        let body = valid_text(kind);
        let mut m = fx.msg(channel, kind, &body);
        if *channel == "notifications" {
            m = m.recipients("ursula");
        }
        fx.publish_msg(m).await;
        markers.push(body);
    }

    for ((channel, stream), marker) in streams.iter_mut().zip(&markers) {
        let expected: Vec<_> = published.iter().filter(|(c, _, _)| c == channel).collect();
        let mut got = Vec::new();
        loop {
            let ev = stream.expect_event(&format!("the marker on {channel}")).await;
            if ev.data == *marker {
                break;
            }
            got.push(ev);
        }
        assert_eq!(got.len(), expected.len(), "events on {channel} before the marker: {got:?}");
        for ((_, kind, body), ev) in expected.iter().zip(&got) {
            assert_eq!(ev.event, *kind, "event type on {channel}: {ev:?}");
            let sent = body.replace(['\r', '\n'], "");
            assert_eq!(ev.data, sent, "data of {kind} must be the published body, byte for byte but its line breaks");
            assert!(ev.id.as_deref().is_some_and(|id| !id.is_empty()), "{kind} has no id: {ev:?}");
        }
        assert_ids_increase(&got);
    }
}

async fn invalid_messages_are_dropped_counted_and_logged_while_valid_ones_flow(bin: Bin) {
    let fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let mut s = fx.gw.stream("deals", &user("alice", &[])).await;

    let mut missing = valid("deal.created");
    missing.as_object_mut().unwrap().remove("client_id");
    let mut wrong_kind = valid("deal.updated");
    wrong_kind["version"] = "five".into();
    let bad = [
        ("deal.created", missing.to_string(), "missing_field"),
        ("deal.created", "{not json".to_string(), "not_json"),
        ("deal.exploded", valid_text("deal.created"), "unknown_type"),
        ("deal.updated", wrong_kind.to_string(), "wrong_kind"),
        ("deal.created", "[1,2,3]".to_string(), "not_an_object"),
    ];
    for (kind, body, _) in &bad {
        fx.publish("deals", kind, body).await;
    }
    let v2 = fx.msg("deals", "deal.created", &valid_text("deal.created")).header("schema_version", Header::Int(2));
    fx.publish_msg(v2).await; // the channel has only version 1
    let good = valid_text("deal.created");
    let twice = fx.msg("deals", "deal.created", &good);
    fx.publish_msg(twice.clone()).await;
    fx.publish_msg(twice).await; // the same message_id again: a redelivered duplicate

    let ev = s.expect_event("the valid event after the invalid ones").await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("deal.created", good.as_str()));
    // Nothing stalled: the next one flows too, right after the first (the duplicate is gone).
    let next = valid_text("deal.updated");
    fx.publish("deals", "deal.updated", &next).await;
    assert_eq!(s.expect_event("the next valid event").await.data, next, "the duplicate was delivered");

    let reasons: Vec<&str> = bad.iter().map(|(_, _, r)| *r).chain(["unsupported_version", "duplicate"]).collect();
    let log = fx.gw.log_until(sse_gateway_tests::WAIT, |l| reasons.iter().all(|r| l.contains(r))).await;
    for reason in reasons {
        let sample = format!("sse_gateway_events_dropped_total{{channel=\"deals\",reason=\"{reason}\"}}");
        assert_eq!(fx.gw.metric(&sample).await, Some(1.0), "{sample}");
        assert!(log.contains(reason), "the drop for {reason} is not logged with its reason");
    }
    assert_eq!(fx.gw.get("/healthz", &[]).await.status, 200);
}

/// Reads events with ids until `marker`'s data arrives; returns the data seen before it.
async fn data_until(s: &mut SseClient, marker: &str, who: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let ev = s.expect_event(&format!("the end marker on {who}'s stream")).await;
        assert_ne!(ev.event, "error", "{who}: {ev:?}");
        if ev.data == marker {
            return seen;
        }
        seen.push(ev.data);
    }
}

async fn a_message_with_recipients_reaches_only_them(bin: Bin) {
    let fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let users = ["u1", "u2", "u3"];
    let mut notif = Vec::new();
    let mut deals = Vec::new();
    for u in users {
        notif.push(fx.gw.stream("notifications", &user(u, &[])).await);
        deals.push(fx.gw.stream("deals", &user(u, &[])).await);
    }

    let n = |_: usize| valid_text("notification.sent");
    let (for_u1, for_u2_u3, for_u3, for_nobody) = (n(1), n(2), n(3), n(4));
    let send = |body: &str, to: Option<&str>| {
        let mut m = fx.msg("notifications", "notification.sent", body);
        if let Some(to) = to {
            m = m.recipients(to);
        }
        m
    };
    fx.publish_msg(send(&for_u1, Some("u1"))).await;
    fx.publish_msg(send(&for_u2_u3, Some("u2,u3"))).await;
    fx.publish_msg(send(&for_nobody, None)).await; // per-user channel: dropped, counted
    fx.publish_msg(send(&for_u3, Some("u3"))).await;
    let marker = valid_text("notification.read");
    fx.publish_msg(fx.msg("notifications", "notification.read", &marker).recipients("u1,u2,u3")).await;

    let expected = [vec![for_u1.clone()], vec![for_u2_u3.clone()], vec![for_u2_u3.clone(), for_u3.clone()]];
    for ((u, s), want) in users.iter().zip(&mut notif).zip(&expected) {
        assert_eq!(&data_until(s, &marker, u).await, want, "notifications seen by {u}");
    }
    fx.gw.wait_metric("sse_gateway_events_dropped_total{channel=\"notifications\",reason=\"no_recipient\"}", 1.0).await;

    // On a broadcast channel too, recipients narrow who gets it; without them all do.
    let only_u2 = valid_text("deal.created");
    let everyone = valid_text("deal.updated");
    fx.publish_msg(fx.msg("deals", "deal.created", &only_u2).recipients("u2")).await;
    fx.publish("deals", "deal.updated", &everyone).await;
    for (u, s) in users.iter().zip(&mut deals) {
        let want: Vec<String> = if *u == "u2" { vec![only_u2.clone()] } else { vec![] };
        assert_eq!(data_until(s, &everyone, u).await, want, "deals seen by {u}");
    }
    // And nothing else trails behind: the next notification is one sent to all after it.
    let last = valid_text("notification.read");
    fx.publish_msg(fx.msg("notifications", "notification.read", &last).recipients("u1,u2,u3")).await;
    for (u, s) in users.iter().zip(&mut notif) {
        assert_eq!(data_until(s, &last, u).await, Vec::<String>::new(), "{u} got more");
    }
}

/// Acks go out as one `multiple` ack per run of deliveries (runtime-common/amqp.rs): once a
/// burst is handled and the source is idle, everything in it is acked, so a gateway that takes
/// over the queue gets none of it again (each redelivered message would be a duplicate event).
/// Invalid messages in the burst are acked too (D4: dropped, never redelivered in a loop).
async fn a_burst_is_acked_once_handled_so_the_next_consumer_gets_none_of_it_again(bin: Bin) {
    const BURST: usize = 517; // not a multiple of the ack batch: the rest is acked when idle
    const INVALID: usize = 11; // one after every 47th valid message
    let not_json = "sse_gateway_events_dropped_total{channel=\"deals\",reason=\"not_json\"}";
    let mut fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let mut s = fx.gw.stream("deals", &user("ursula", &[])).await;
    let bodies: Vec<String> = (0..BURST).map(|_| valid_text("deal.updated")).collect();
    let mut burst = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        burst.push(fx.msg("deals", "deal.updated", b));
        if i % 47 == 46 {
            burst.push(fx.msg("deals", "deal.updated", "{not json"));
        }
    }
    assert_eq!(burst.len(), BURST + INVALID);
    fx.publish_all(&burst).await;
    for (i, body) in bodies.iter().enumerate() {
        let ev = s.expect_event(&format!("burst event {i}")).await;
        assert_eq!(&ev.data, body, "burst event {i}");
    }
    fx.gw.wait_metric(&events_in("deals"), BURST as f64).await;
    fx.gw.wait_metric(not_json, INVALID as f64).await;
    // Each write to the stream is one sample of the delay histogram (writes carry several).
    let writes = fx.gw.metric("sse_gateway_delivery_delay_seconds_count").await.expect("the delay histogram");
    assert!((1.0..=BURST as f64).contains(&writes), "{writes} writes for {BURST} events");
    assert_eq!(fx.gw.metric("sse_gateway_delivery_delay_seconds_bucket{le=\"+Inf\"}").await, Some(writes));
    drop(s);

    let config = fx.gw.config().to_string();
    fx.gw.terminate();
    assert!(fx.gw.wait_exit(Duration::from_secs(10)).await.is_some(), "the first gateway did not stop");
    fx.gw = sse_gateway_tests::GatewayProcess::start(bin, &config).await;
    fx.gw.wait_ready().await;
    let mut s = fx.gw.stream("deals", &user("ursula", &[])).await;
    let marker = valid_text("deal.updated");
    fx.publish("deals", "deal.updated", &marker).await;
    // Anything redelivered sits in the queue ahead of the marker: the stream sees it first if
    // it opened in time, and the count of events in says so either way.
    assert_eq!(s.expect_event("the marker").await.data, marker, "a burst message came again");
    assert_eq!(fx.gw.metric(&events_in("deals")).await, Some(1.0), "burst messages came again");
    assert!(fx.gw.metric(not_json).await.expect("the sample is on /metrics") == 0.0, "invalid messages came again");
}

/// D12 with a RabbitMQ source: a SIGTERM while deliveries flow acks what the gateway handled
/// (all of it reached the open stream before the close) and leaves the rest queued, so the
/// instance that takes over the queue gets every other event once: none lost, none again (a
/// redelivered one would be a duplicate under a new id).
async fn a_graceful_stop_mid_burst_acks_what_was_handled_and_leaves_the_rest(bin: Bin) {
    const TOTAL: usize = 4000;
    // Fan-out to this many streams makes each event cost the gateway a few hundred writes: the
    // burst is published faster than it is taken, so the stop comes while deliveries flow (owed
    // acks, and more deliveries waiting), not while the source idles with everything acked.
    const FAN: usize = 300;
    let mut fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let mut s = fx.gw.stream("deals", &user("ursula", &[])).await;
    let mut readers = Vec::new();
    for i in 0..FAN {
        let mut r = fx.gw.stream("deals", &user(&format!("fan-{i}"), &[])).await;
        readers.push(::tokio::spawn(async move { r.until_closed(6 * sse_gateway_tests::WAIT).await.is_some() }));
    }
    let bodies: Vec<String> = (0..TOTAL).map(|_| valid_text("deal.updated")).collect();
    assert_eq!(bodies.iter().collect::<std::collections::HashSet<_>>().len(), TOTAL, "distinct bodies");
    let msgs: Vec<_> = bodies.iter().map(|b| fx.msg("deals", "deal.updated", b)).collect();
    // Published from another connection while the gateway takes them and is stopped.
    let publisher = ::tokio::spawn(async move {
        let broker = sse_gateway_tests::broker::Broker::connect().await;
        for chunk in msgs.chunks(200) {
            broker.publish_all(chunk).await;
        }
    });
    let mut first = Vec::new();
    while first.len() < 300 {
        first.push(s.expect_event("an event before the stop").await.data);
    }
    fx.gw.terminate();
    let rest = s.until_closed(3 * sse_gateway_tests::WAIT).await.expect("the stream closes at SIGTERM");
    first.extend(rest.into_iter().filter(|e| e.id.is_some()).map(|e| e.data));
    assert!(fx.gw.wait_exit(3 * sse_gateway_tests::WAIT).await.is_some(), "the first gateway did not stop");
    publisher.await.expect("the publisher");
    for r in readers {
        assert!(r.await.expect("a reader"), "a fan-out stream still open after the stop");
    }
    assert!(first.len() < TOTAL, "the stop came after the whole burst: nothing tested");
    assert!(first == bodies[..first.len()], "the first gateway's stream: the burst's start, in order, once");

    // What the first gateway left in the queue is exactly the rest, each once (read by a
    // consumer that acks nothing: closing its channel puts them back for the next instance).
    let (reader, mut consumer) = fx.broker.consume(&fx.topo.bind_queue("deals")).await;
    let mut left = Vec::new();
    while left.len() < TOTAL - first.len() {
        let next = ::tokio::time::timeout(sse_gateway_tests::WAIT, futures_lite::StreamExt::next(&mut consumer)).await;
        let d = next.ok().flatten().and_then(Result::ok).unwrap_or_else(|| panic!("{} of the {} left in the queue", left.len(), TOTAL - first.len()));
        left.push(String::from_utf8(d.data).expect("a UTF-8 body"));
    }
    let more = ::tokio::time::timeout(Duration::from_millis(500), futures_lite::StreamExt::next(&mut consumer)).await;
    assert!(more.is_err(), "more than the rest was left in the queue: {:?}", more.map(|d| d.map(|d| d.map(|d| String::from_utf8_lossy(&d.data).into_owned()))));
    let mut want = bodies[first.len()..].to_vec();
    want.sort();
    left.sort();
    assert!(left == want, "the queue holds other messages than the rest of the burst (lost, or handled and left again)");
    drop(consumer);
    reader.close(200, "done".into()).await.expect("close the reading channel");

    // The next instance on the same queue takes the rest (it starts consuming at once, before a
    // stream can open: counted by events in), then a marker published after everything.
    let config = fx.gw.config().to_string();
    fx.gw = sse_gateway_tests::GatewayProcess::start(bin, &config).await;
    fx.gw.wait_ready().await;
    let mut s = fx.gw.stream("deals", &user("ursula", &[])).await;
    let marker = valid_text("deal.created");
    fx.publish("deals", "deal.created", &marker).await;
    loop {
        if s.expect_event("the marker").await.data == marker {
            break;
        }
    }
    // Redelivered messages sit ahead of the marker: all of them are counted by now.
    let took = fx.gw.metric(&events_in("deals")).await.expect("the sample is on /metrics") as usize;
    assert_eq!(took, TOTAL - first.len() + 1, "the second gateway took {took} for the {} left and the marker", TOTAL - first.len());
}

/// `SMOL_THREADS=0` in the environment (smol's global executor, which runs the AMQP client's
/// tasks, would get no thread): both binaries consume and deliver all the same.
async fn smol_threads_of_zero_leaves_the_sources_running(bin: Bin) {
    let fx = Fixture::start_with_env(bin, ConfigBuilder::new(), &sse_gateway_tests::broker::amqp_url(), &[("SMOL_THREADS", "0")]).await;
    let mut s = fx.gw.stream("deals", &user("zoe", &[])).await;
    let body = valid("deal.created");
    fx.publish("deals", "deal.created", &body.to_string()).await;
    let ev = s.expect_event("the event").await;
    assert_eq!(ev.event, "deal.created");
    assert_eq!(ev.json(), body);
}

/// D12, D14: SIGTERM while publishes wait for the in-process source: each one answered 202 is
/// on the stream before it closes (the rest are refused 503, or cut off unanswered as the
/// process ends). Before, those still queued at the signal got 202 and an id, and the shards,
/// told to shut down first, never took their events. 200 publishers publish one after another
/// until one is not taken (a 503, a connection refused or cut): publishes are in flight at the
/// signal however fast the gateway answers.
async fn a_publish_answered_202_as_the_gateway_stops_reached_the_stream(bin: Bin) {
    use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The stream is read only after the stop: room for every event taken meanwhile (else it
    // would be closed as a slow client and miss the later ones).
    let cfg = ConfigBuilder::new().raw("server", "publish_endpoint", "true").raw("streams", "max_pending_bytes", "67108864");
    let mut gw = sse_gateway_tests::GatewayProcess::start(bin, &cfg.render()).await;
    let mut s = gw.stream("deals", &user("alice", &[])).await;
    let body = serde_json::json!({"type": "deal.created", "data": valid("deal.created")}).to_string();
    let request = format!(
        "POST /api/v1/publish/deals HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        gw.addr,
        user("svc", &["publisher"]),
        body.len()
    );
    let (first_tx, first_rx) = ::tokio::sync::oneshot::channel::<()>();
    let first_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(first_tx)));
    let mut tasks = ::tokio::task::JoinSet::new();
    let addr = gw.addr;
    for _ in 0..200 {
        let (request, first_tx) = (request.clone(), first_tx.clone());
        tasks.spawn(async move {
            let mut answers = Vec::new();
            loop {
                let Ok(mut sock) = ::tokio::net::TcpStream::connect(addr).await else { break };
                if sock.write_all(request.as_bytes()).await.is_err() {
                    break;
                }
                let mut got = Vec::new();
                let _ = ::tokio::time::timeout(sse_gateway_tests::WAIT, sock.read_to_end(&mut got)).await;
                let got = String::from_utf8_lossy(&got).into_owned();
                let taken = got.starts_with("HTTP/1.1 202");
                if taken {
                    if let Some(tx) = first_tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                }
                answers.push(got);
                if !taken {
                    break;
                }
            }
            answers
        });
    }
    // Once the first is taken, the others are in flight: stop now.
    ::tokio::time::timeout(sse_gateway_tests::WAIT, first_rx).await.expect("a first publish answered").expect("answered 202");
    gw.terminate();
    let mut accepted = Vec::new();
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        for got in r.expect("a publishing task") {
            if got.starts_with("HTTP/1.1 202") {
                let json = got.split("\r\n\r\n").nth(1).unwrap_or_default();
                let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {got}"));
                accepted.push(v["id"].as_str().expect("an id").to_string());
            } else if got.starts_with("HTTP/1.1 503") {
                refused += 1;
            } else {
                assert!(got.is_empty(), "neither 202 nor 503: {got}");
            }
        }
    }
    assert!(refused > 0, "no publish was refused ({} taken): none was in flight at the stop, nothing tested", accepted.len());
    let frames = s.until_closed(3 * sse_gateway_tests::WAIT).await.expect("the stream closes at the shutdown");
    let ids: std::collections::HashSet<String> = frames.iter().filter_map(|f| f.id.clone()).collect();
    let lost: Vec<&String> = accepted.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(lost.is_empty(), "{} of {} answered 202 never reached the stream ({refused} refused 503): {lost:?}", lost.len(), accepted.len());
    gw.wait_exit(3 * sse_gateway_tests::WAIT).await.expect("the gateway exits");
}

for_each_binary!(
    a_publish_answered_202_as_the_gateway_stops_reached_the_stream,
    smol_threads_of_zero_leaves_the_sources_running,
    a_graceful_stop_mid_burst_acks_what_was_handled_and_leaves_the_rest,
    every_seed_event_type_arrives_with_id_type_and_data_exactly,
    invalid_messages_are_dropped_counted_and_logged_while_valid_ones_flow,
    a_message_with_recipients_reaches_only_them,
    a_burst_is_acked_once_handled_so_the_next_consumer_gets_none_of_it_again,
);
