//! A source outage (D8): the broker link is cut by a proxy; streams stay open, get
//! `source_unavailable` at once and every `warning_interval`, and after the link is back they get
//! everything published meanwhile, in order, once.

use std::time::Duration;

use sse_gateway_tests::broker::amqp_addr;
use sse_gateway_tests::payloads::valid_text;
use sse_gateway_tests::token::user;
use sse_gateway_tests::{for_each_binary, Bin, ConfigBuilder, Fixture, SseClient, SseEvent, TcpProxy, WAIT};

fn is_source_unavailable(ev: &SseEvent) -> bool {
    ev.event == "warning"
        && ev.id.is_none()
        && ev.json() == serde_json::json!({"code": "source_unavailable", "channel": "deals"})
}

async fn expect_warning(s: &mut SseClient, what: &str) {
    let ev = s.next_non_heartbeat(WAIT).await.unwrap_or_else(|| panic!("{what}: no warning within {WAIT:?}"));
    assert!(is_source_unavailable(&ev), "{what}: expected source_unavailable for deals, got {ev:?}");
}

/// The next events with an id on `s` are `during`'s bodies, in order, once (warnings, which
/// have no id, may come between them), under ids that go on from the last one before the outage
/// (same epoch, higher number: a browser's Last-Event-ID still resumes across it).
async fn expect_backlog(s: &mut SseClient, during: &[String], on: &str) {
    let mut got = Vec::new();
    let mut prev = sse_gateway_tests::sse::parse_id(&s.last_event_id());
    for _ in 0..during.len() {
        let ev = s.expect_event(&format!("an event published during the outage, on {on}")).await;
        assert_ne!(ev.event, "error", "{ev:?}");
        let id = ev.id.as_deref().and_then(sse_gateway_tests::sse::parse_id).unwrap_or_else(|| panic!("{on}: an id <epoch>-<seq>: {ev:?}"));
        if let Some(p) = prev {
            assert!(id.0 == p.0 && id.1 > p.1, "{on}: id {id:?} after {p:?}");
        }
        prev = Some(id);
        got.push(ev.data);
    }
    assert_eq!(got, during, "{on}: every event published during the outage, in order, once");
}

async fn a_broker_outage_warns_repeatedly_and_loses_nothing(bin: Bin) {
    let proxy = TcpProxy::start(&amqp_addr()).await;
    let cfg = ConfigBuilder::new().fast_outage();
    let fx = Fixture::start_with(bin, cfg, &proxy.amqp_url()).await;
    let alice = user("alice", &[]);
    let mut s = fx.gw.stream("deals", &alice).await;

    let before = valid_text("deal.created");
    fx.publish("deals", "deal.created", &before).await;
    assert_eq!(s.expect_event("the event before the outage").await.data, before);

    proxy.cut();
    expect_warning(&mut s, "at once after the cut").await;
    expect_warning(&mut s, "again after warning_interval").await;

    // Published straight to RabbitMQ (not through the proxy) while the gateway cannot reach it:
    // the gateway's durable queue keeps them.
    let mut during = Vec::new();
    for kind in ["deal.updated", "calculation.added", "deal.journal.appended"] {
        let body = valid_text(kind);
        fx.publish("deals", kind, &body).await;
        during.push(body);
    }
    // A stream opened during the outage is told at once.
    let mut late = fx.gw.stream("deals", &user("bob", &[])).await;
    expect_warning(&mut late, "on a stream opened during the outage").await;
    assert!(s.still_open().await && late.still_open().await, "streams stay open during an outage");

    proxy.restore();
    for (who, stream) in [("alice", &mut s), ("bob", &mut late)] {
        expect_backlog(stream, &during, &format!("{who}'s stream")).await;
    }
    let after = valid_text("deal.updated");
    fx.publish("deals", "deal.updated", &after).await;
    let marker = valid_text("deal.updated");
    fx.publish("deals", "deal.updated", &marker).await;
    for (who, stream) in [("alice", &mut s), ("bob", &mut late)] {
        assert_eq!(stream.expect_event("the event after the outage").await.data, after, "{who}: no duplicate before it");
        assert_eq!(stream.expect_event("the marker event").await.data, marker, "{who}: a duplicate trailed the event after the outage");
    }
    fx.gw.wait_metric("sse_gateway_source_up{channel=\"deals\"}", 1.0).await;
}

/// D8 with a broker that stops answering mid-session (a hung broker, or a link that drops
/// packets: no FIN, no RST, the TCP connection stays up): the gateway notices from the missing
/// AMQP heartbeats (`heartbeat=1` in the URL: silence for 2 s), warns its streams, keeps trying,
/// and once the broker answers again delivers what was published meanwhile, in order, once.
async fn a_broker_that_stops_answering_is_an_outage_and_loses_nothing(bin: Bin) {
    let proxy = TcpProxy::start(&amqp_addr()).await;
    let cfg = ConfigBuilder::new().fast_outage();
    let fx = Fixture::start_with(bin, cfg, &format!("{}?heartbeat=1", proxy.amqp_url())).await;
    let mut s = fx.gw.stream("deals", &user("erin", &[])).await;
    let before = valid_text("deal.created");
    fx.publish("deals", "deal.created", &before).await;
    assert_eq!(s.expect_event("the event before the freeze").await.data, before);

    proxy.freeze();
    expect_warning(&mut s, "after the broker went silent").await;
    let mut during = Vec::new();
    for kind in ["deal.updated", "calculation.added"] {
        let body = valid_text(kind);
        fx.publish("deals", kind, &body).await;
        during.push(body);
    }
    // A reconnect attempt to the silent broker hangs; it is given up (the connect timeout, 10 s)
    // and another made: a second connection reaches the frozen proxy. A generous bound, not a timing.
    let patience = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.accepted_while_frozen() < 2 {
        assert!(std::time::Instant::now() < patience, "no second reconnect attempt:\n{}", fx.gw.stderr());
        ::tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(s.still_open().await, "the stream stays open while the broker is silent");
    // The attempt given up is closed, not left to a thread waiting on it for the whole outage
    // (one thread and one socket more per attempt).
    while proxy.closed_while_frozen() < 1 {
        assert!(std::time::Instant::now() < patience, "the connect given up still holds its connection:\n{}", fx.gw.stderr());
        ::tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fx.gw.wait_metric("sse_gateway_source_up{channel=\"deals\"}", 0.0).await;

    proxy.restore();
    expect_backlog(&mut s, &during, "erin's stream").await;
    let marker = valid_text("deal.updated");
    fx.publish("deals", "deal.updated", &marker).await;
    assert_eq!(s.expect_event("the marker event").await.data, marker, "a duplicate came before the marker");
    let log = fx.gw.log_until(WAIT, |l| l.contains("source unavailable")).await;
    assert!(
        log.lines().any(|l| l.contains("source unavailable") && l.contains("heartbeat")),
        "the source unavailable line does not say why the source went down:\n{log}"
    );
}

/// D8: a consumer the broker cancels (its queue deleted under it) is an outage like a lost
/// connection: the streams are told, the source declares and binds its queue again, and events
/// flow on the same streams, after `history_gap` (what the deleted queue held is lost).
async fn a_consumer_cancelled_by_the_broker_is_an_outage_and_the_source_comes_back(bin: Bin) {
    // One worker: the resumes below meet the shard that has the loss and the event after it.
    let fx = Fixture::start(bin, ConfigBuilder::new().fast_outage().raw("server", "workers", "1")).await;
    let mut s = fx.gw.stream("deals", &user("carol", &[])).await;
    let before = valid_text("deal.created");
    fx.publish("deals", "deal.created", &before).await;
    let ev = s.expect_event("the event before the cancel").await;
    assert_eq!(ev.data, before);
    let before_id = ev.id.expect("an id");

    fx.broker.delete_queue(&fx.topo.bind_queue("deals")).await;
    expect_warning(&mut s, "after the gateway's queue was deleted").await;
    // Back once it consumes again (the publish below needs the queue bound: it is mandatory).
    fx.gw.wait_metric("sse_gateway_source_up{channel=\"deals\"}", 1.0).await;
    let after = valid_text("deal.updated");
    fx.publish("deals", "deal.updated", &after).await;
    // Warnings sent while it was down may come first. The queue was declared again, empty: what
    // it held (and what was published while it was missing) is lost, and the stream is told.
    let mut gap = false;
    let ev = loop {
        let ev = s.next_non_heartbeat(WAIT).await.expect("the event after the cancel");
        if is_source_unavailable(&ev) {
            continue;
        }
        if ev.id.is_none() && ev.json() == serde_json::json!({"code": "history_gap", "channel": "deals"}) {
            gap = true;
            continue;
        }
        break ev;
    };
    assert!(gap, "no history_gap before the first event from the queue declared again");
    assert_eq!(ev.data, after, "{ev:?}");
    assert!(s.still_open().await, "the stream stays open");
    // A client away during the loss, resuming from the last event before it, is told too (the
    // ids go on in number across the loss), and is not handed what came after as if it followed.
    let mut away = fx.gw.stream_with("deals", &user("dave", &[]), &[("Last-Event-ID", &before_id)]).await;
    let first = away.next_non_heartbeat(WAIT).await.expect("a first frame for the resume");
    assert_eq!(first.json(), serde_json::json!({"code": "history_gap", "channel": "deals"}), "{first:?}");
    assert_eq!(first.id, None, "{first:?}");
    let next = valid_text("deal.created");
    fx.publish("deals", "deal.created", &next).await;
    assert_eq!(away.expect_event("live after the gap").await.data, next, "the event after the loss was replayed");
    // One that has the first event after the loss resumes without a warning.
    let mut current = fx.gw.stream_with("deals", &user("erin", &[]), &[("Last-Event-ID", ev.id.as_deref().expect("an id"))]).await;
    assert_eq!(current.expect_event("the event after its id").await.data, next);
    let log = fx.gw.log_until(WAIT, |l| l.contains("source unavailable") && l.contains("was gone")).await;
    assert!(log.contains("source unavailable"), "the cancel is not logged:\n{log}");
    assert!(log.contains("was gone (deleted, or expired) and was declared again"), "the loss is not logged:\n{log}");
}

/// RabbitMQ drops a queue's bindings when their exchange is deleted and tells no consumer: the
/// source binds again every `check_interval`. An exchange deleted is an outage (the
/// streams are told; the reconnect declares it again); one deleted and declared again by
/// someone else (a deploy tool) is bound again. Either way events reach the same streams.
async fn a_deleted_or_recreated_exchange_is_noticed_and_bound_again(bin: Bin) {
    let cfg = ConfigBuilder::new().fast_outage().str("broker", "check_interval", "1s");
    let fx = Fixture::start(bin, cfg).await;
    let mut s = fx.gw.stream("deals", &user("frank", &[])).await;
    let exchange = fx.topo.exchange("deals");

    fx.broker.delete_exchange(exchange).await;
    expect_warning(&mut s, "after the exchange was deleted").await;
    // Up again once the gateway declared and bound it (a publish before that would find no exchange).
    fx.gw.wait_metric("sse_gateway_source_up{channel=\"deals\"}", 1.0).await;
    let back = valid_text("deal.created");
    publish_once_routed(&fx, &fx.msg("deals", "deal.created", &back)).await;
    assert_eq!(s.expect_event("the event after the exchange was declared again").await.data, back);

    fx.broker.delete_exchange(exchange).await;
    fx.broker.declare_exchange(exchange).await;
    let rebound = valid_text("deal.updated");
    publish_once_routed(&fx, &fx.msg("deals", "deal.updated", &rebound)).await;
    assert_eq!(s.expect_event("the event on the recreated exchange").await.data, rebound);
    assert!(s.still_open().await, "the stream stays open");
}

/// Consumers of one classic queue compete (two instances with the same `bind_queue` each get
/// part of the events): a source that finds others on its queue says so in its log, and says
/// when they are gone.
async fn a_classic_queue_shared_with_another_consumer_is_reported(bin: Bin) {
    let cfg = ConfigBuilder::new().str("broker", "check_interval", "1s");
    let fx = Fixture::start(bin, cfg).await;
    let queue = fx.topo.bind_queue("deals");
    let (other, consumer) = fx.broker.consume(&queue).await;
    let log = fx.gw.log_until(WAIT, |l| l.contains("queue shared")).await;
    let line = log.lines().find(|l| l.contains("queue shared")).unwrap_or_else(|| panic!("not reported:\n{log}"));
    assert!(line.contains("deals") && line.contains(&queue), "{line}");
    drop(consumer);
    other.close(200, "done".into()).await.expect("close the other consumer's channel");
    let log = fx.gw.log_until(WAIT, |l| l.contains("queue no longer shared")).await;
    assert!(log.contains("queue no longer shared"), "its end is not reported:\n{log}");
}

/// Publishes `m` (mandatory) until a queue takes it: unroutable ones are returned, not kept.
async fn publish_once_routed(fx: &Fixture, m: &sse_gateway_tests::Message) {
    // A generous bound, not a timing: check_interval is 1 s.
    let patience = std::time::Instant::now() + Duration::from_secs(30);
    while !fx.broker.publish_routed(m).await {
        assert!(std::time::Instant::now() < patience, "the gateway's queue was not bound again:\n{}", fx.gw.stderr());
        ::tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// D8 "at once" with a broker that accepts connections and never answers (a hung broker, a
/// black-holing firewall): every channel's source is reported down while the one connect
/// attempt is still in flight (after 2 s of silence, not when it times out at 10 s), rather
/// than each trying in turn, one connect timeout after the other. Counted without a clock: when
/// both streams have their warning, the broker address has seen one connection (retries are
/// minutes away), and the log says each channel was reported before the attempt failed.
async fn a_broker_that_never_answers_is_reported_on_every_channel_after_one_attempt(bin: Bin) {
    let silent = ::tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = silent.local_addr().expect("address");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let holder = ::tokio::spawn(async move {
        let mut held = Vec::new(); // open, never written to
        while let Ok((sock, _)) = silent.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(sock);
        }
    });
    let cfg = ConfigBuilder::new()
        .str("broker", "url", &format!("amqp://guest:guest@{addr}/%2f"))
        .str("broker", "reconnect_min", "5m")
        .str("broker", "reconnect_max", "5m");
    let gw = sse_gateway_tests::GatewayProcess::start(bin, &cfg.render()).await;
    let mut deals = gw.stream("deals", &user("dana", &[])).await;
    let mut tasks = gw.stream("tasks", &user("dana", &[])).await;
    // Up to a connect timeout (10 s) and the gateway's own start: a generous bound, not a timing.
    let patience = Duration::from_secs(40);
    for (name, s) in [("deals", &mut deals), ("tasks", &mut tasks)] {
        let ev = s.next_non_heartbeat(patience).await.unwrap_or_else(|| panic!("{name}: no warning"));
        assert_eq!(ev.event, "warning", "{name}: {ev:?}");
        assert_eq!(ev.json(), serde_json::json!({"code": "source_unavailable", "channel": name}));
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "the channels connected in turn:\n{}", gw.stderr());
    let failed = "cannot connect to the broker: timed out";
    let log = gw.log_until(patience, |l| l.contains(failed)).await;
    let at = |what: &str, channel: &str| log.lines().position(|l| l.contains(what) && l.contains(channel));
    let end = at(failed, "").unwrap_or_else(|| panic!("the attempt did not fail:\n{log}"));
    for name in ["deals", "tasks"] {
        let told = at("has not answered yet", name).unwrap_or_else(|| panic!("{name}: not reported while waiting:\n{log}"));
        assert!(told < end, "{name}: reported only once the attempt failed:\n{log}");
    }
    holder.abort();
}

/// D8 "at once" on the very first start with a broker that completes the connection (the AMQP
/// handshake and `channel.open` pass) and then answers nothing (its first declare hangs): the
/// source is reported down while that call waits, not only once it fails at its 10 s timeout,
/// so a stream opened right after the start gets `source_unavailable` then. Clock-free: the log
/// says the channel was reported (`has not answered yet`) before its setup failed (`source
/// unavailable`, the declare's timeout).
async fn a_broker_that_hangs_after_the_handshake_at_the_first_start_is_reported_before_the_call_times_out(bin: Bin) {
    let proxy = TcpProxy::start(&amqp_addr()).await;
    proxy.freeze_after_channel_open();
    let cfg = ConfigBuilder::new()
        .str("broker", "url", &proxy.amqp_url())
        .str("broker", "reconnect_min", "5m")
        .str("broker", "reconnect_max", "5m");
    let gw = sse_gateway_tests::GatewayProcess::start(bin, &cfg.render()).await;
    let mut deals = gw.stream("deals", &user("gina", &[])).await;
    // Up to a call timeout (10 s) and the gateway's own start: a generous bound, not a timing.
    let patience = Duration::from_secs(40);
    let ev = deals.next_non_heartbeat(patience).await.unwrap_or_else(|| panic!("no warning:\n{}", gw.stderr()));
    assert!(is_source_unavailable(&ev), "expected source_unavailable for deals, got {ev:?}");
    assert!(deals.still_open().await, "the stream stays open");
    let log = gw.log_until(patience, |l| l.lines().any(|l| l.contains("source unavailable") && l.contains("deals"))).await;
    assert!(log.contains("connected to the broker"), "the connection was not completed (the test's premise):\n{log}");
    let at = |what: &str| log.lines().position(|l| l.contains(what) && l.contains("deals"));
    let failed = at("source unavailable").unwrap_or_else(|| panic!("the hung setup did not fail:\n{log}"));
    let told = at("has not answered yet").unwrap_or_else(|| panic!("not reported while the broker hung:\n{log}"));
    assert!(told < failed, "reported only once the hung call failed:\n{log}");
}

/// The backlog an outage leaves reaches the shard as a burst, faster than it can fan events out
/// to many streams: the shard must let every stream's writer take one run of events before it
/// queues the next. More streams on one shard than tokio's LocalSet runs before it polls the
/// loop again (61 tasks; without the wait, this test failed on tokio, while smol's executor
/// queued the loop behind the woken writers), a small output bound, and clients that read: no
/// stream is closed as slow, and each gets the whole backlog in order.
async fn a_backlog_burst_reaches_many_streams_on_one_shard_without_slow_client_closes(bin: Bin) {
    const STREAMS: usize = 300;
    const BACKLOG: usize = 150;
    let proxy = TcpProxy::start(&amqp_addr()).await;
    let cfg = ConfigBuilder::new()
        .fast_outage()
        .raw("server", "workers", "1")
        .raw("streams", "max_pending_bytes", "8192");
    let fx = Fixture::start_with(bin, cfg, &proxy.amqp_url()).await;
    let mut streams = Vec::with_capacity(STREAMS);
    for i in 0..STREAMS {
        streams.push(fx.gw.stream("deals", &user(&format!("reader-{i}"), &[])).await);
    }
    proxy.cut();
    fx.gw.wait_metric("sse_gateway_source_up{channel=\"deals\"}", 0.0).await;
    let mut backlog = Vec::with_capacity(BACKLOG);
    for _ in 0..BACKLOG {
        let body = valid_text("deal.updated");
        fx.publish("deals", "deal.updated", &body).await;
        backlog.push(body);
    }
    let marker = valid_text("deal.created");
    fx.publish("deals", "deal.created", &marker).await;
    proxy.restore();
    for (i, s) in streams.iter_mut().enumerate() {
        let got = s.data_until(&marker, &format!("stream {i}")).await;
        assert_eq!(got.len(), BACKLOG, "stream {i}: {} of {BACKLOG} backlog events", got.len());
        assert!(got == backlog, "stream {i}: the backlog out of order or altered");
    }
    let slow = fx.gw.metric("sse_gateway_streams_closed_total{reason=\"slow_client\"}").await;
    assert_eq!(slow, Some(0.0), "streams whose clients read were closed as slow");
}

for_each_binary!(
    a_backlog_burst_reaches_many_streams_on_one_shard_without_slow_client_closes,
    a_broker_outage_warns_repeatedly_and_loses_nothing,
    a_broker_that_stops_answering_is_an_outage_and_loses_nothing,
    a_deleted_or_recreated_exchange_is_noticed_and_bound_again,
    a_classic_queue_shared_with_another_consumer_is_reported,
    a_consumer_cancelled_by_the_broker_is_an_outage_and_the_source_comes_back,
    a_broker_that_never_answers_is_reported_on_every_channel_after_one_attempt,
    a_broker_that_hangs_after_the_handshake_at_the_first_start_is_reported_before_the_call_times_out,
);
