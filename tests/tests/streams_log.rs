//! RabbitMQ stream queues as the event log (D6, issue 5): a channel with `stream = true` numbers
//! its events by stream offset (`<epoch>-<offset>`), so a client resumes exactly across gateway
//! restarts and across instances, and resumes older than the in-memory buffer are read back
//! from the stream. Every test uses its own exchange and stream queue and deletes them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use sse_gateway_tests::broker::{amqp_addr, amqp_url};
use sse_gateway_tests::payloads::uuid;
use sse_gateway_tests::process::{events_in, events_replayed};
use sse_gateway_tests::raw_amqp::{long_long, publish as raw_publish, text, RawMessage};
use sse_gateway_tests::token::user;
use sse_gateway_tests::{
    for_each_binary, Bin, Broker, ConfigBuilder, GatewayProcess, Message, SseClient, SseEvent, TcpProxy, Topology, WAIT,
};

/// The epoch the test streams' ids carry.
const EPOCH: u64 = 42;

/// One test's stream channel: `deals`, read from a stream queue bound to the test's exchange;
/// the other channels are off. Its broker helper deletes the exchange and the stream when it is
/// dropped: declare gateways after it, so they stop first.
struct StreamSetup {
    broker: Broker,
    topo: Topology,
    config: String,
    n: AtomicU64,
}

impl StreamSetup {
    /// `cfg` plus the broker at `amqp_url` and `deals` on a stream.
    async fn new(cfg: ConfigBuilder, amqp_url: &str) -> StreamSetup {
        let topo = Topology::unique();
        let broker = Broker::connect().await;
        broker.declare_exchange(&topo.deals).await;
        broker.own_queue(&topo.bind_queue("deals"));
        let src = "channels.deals.source";
        let mut cfg = cfg
            .str("broker", "url", amqp_url)
            .str(src, "exchange", &topo.deals)
            .strs(src, "routing_keys", &["#"])
            .str(src, "bind_queue", &topo.bind_queue("deals"))
            .raw(src, "stream", "true")
            .raw(src, "epoch", &EPOCH.to_string());
        for other in ["tasks", "payments", "notifications"] {
            cfg = cfg.raw(&format!("channels.{other}"), "enabled", "false");
        }
        StreamSetup { broker, topo, config: cfg.render(), n: AtomicU64::new(0) }
    }

    /// The stream queue's name.
    fn queue(&self) -> String {
        self.topo.bind_queue("deals")
    }

    /// Starts a gateway on this configuration and waits until it consumes.
    async fn start(&self, bin: Bin) -> GatewayProcess {
        self.start_with_env(bin, &[]).await
    }

    /// [`StreamSetup::start`] with environment variables (`RUST_LOG`).
    async fn start_with_env(&self, bin: Bin, env: &[(&str, &str)]) -> GatewayProcess {
        let gw = GatewayProcess::start_with_env(bin, &self.config, env).await;
        gw.wait_ready().await;
        gw
    }

    /// Starts a gateway, opens `token`'s stream and reads one event published to it: the
    /// gateway, the stream and that event's id (a resume point older than what comes next).
    async fn start_after_one_event(&self, bin: Bin, token: &str) -> (GatewayProcess, SseClient, String) {
        let gw = self.start(bin).await;
        let mut s = gw.stream("deals", token).await;
        self.publish(1).await;
        read_events(&mut s, 1, "the first event").await;
        let last = s.last_event_id();
        (gw, s, last)
    }

    /// Starts a gateway, opens `token`'s stream, publishes `msgs` and reads them (`titles`, in
    /// order, ids increasing), then kills the gateway (SIGKILL: no drain, nothing saved): the id
    /// of the last one.
    async fn read_then_killed(&self, bin: Bin, token: &str, msgs: &[Message], titles: &[String]) -> String {
        let gw = self.start(bin).await;
        let mut s = gw.stream("deals", token).await;
        self.broker.publish_all(msgs).await;
        let got = read_events(&mut s, titles.len(), "before the restart").await;
        assert_eq!(got.titles, titles);
        assert_increasing(&got.ids, "before the restart");
        s.last_event_id()
    }

    /// `n` numbered `deal.created` messages (their titles are `ev-<k>`, unique in the test).
    fn messages(&self, n: usize) -> (Vec<Message>, Vec<String>) {
        self.messages_padded(n, 0)
    }

    /// Like [`StreamSetup::messages`], each title padded with `pad` bytes.
    fn messages_padded(&self, n: usize, pad: usize) -> (Vec<Message>, Vec<String>) {
        let mut msgs = Vec::with_capacity(n);
        let mut titles = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.n.fetch_add(1, Ordering::Relaxed);
            let title = format!("ev-{k}{}", ".".repeat(pad));
            let body = serde_json::json!({
                "deal_id": uuid(), "client_id": uuid(), "title": title,
                "status": "draft", "created_at": "2024-05-01T12:30:00Z"
            });
            msgs.push(self.topo.message("deals", "deal.created", body.to_string()).kind("deal.created"));
            titles.push(title);
        }
        (msgs, titles)
    }

    /// Publishes `n` numbered events (with confirms); returns their titles in order.
    async fn publish(&self, n: usize) -> Vec<String> {
        let (msgs, titles) = self.messages(n);
        self.broker.publish_all(&msgs).await;
        titles
    }
}

/// Logs at debug from the gateways' own code (the read-back's lines).
const DEBUG: [(&str, &str); 1] = [("RUST_LOG", "info,sse_gateway=debug,sse_gateway_smol=debug")];

/// The title of a `deal.created` event.
fn title(data: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data}"));
    v["title"].as_str().unwrap_or_else(|| panic!("no title: {data}")).to_string()
}

/// The offset part of a `<epoch>-<offset>` id, checking the epoch.
fn offset(id: &str) -> u64 {
    let (epoch, offset) = id.split_once('-').unwrap_or_else(|| panic!("id {id:?} is not <epoch>-<offset>"));
    assert_eq!(epoch, EPOCH.to_string(), "id {id:?} carries the stream's configured epoch");
    offset.parse().unwrap_or_else(|_| panic!("id {id:?}: the offset is not a number"))
}

/// Reads `want.len()` events from `s` and asserts they are `want` (by title), in order, with
/// increasing ids, and that nothing follows them.
async fn exactly(setup: &StreamSetup, s: &mut SseClient, want: &[String], who: &str) {
    let got = read_events(s, want.len(), who).await;
    assert_eq!(got.titles, want, "{who}: in order, once");
    assert_increasing(&got.ids, who);
    nothing_more(setup, s, who).await;
}

/// What a stream delivered: titles of its events (in order), their ids, and the warnings.
#[derive(Debug, Default)]
struct Got {
    titles: Vec<String>,
    ids: Vec<String>,
    warnings: Vec<String>,
}

/// Reads `s` until `n` events arrived; warnings are kept (a replay must have none). Panics on an
/// error frame, a close, or nothing for `3 x WAIT`.
async fn read_events(s: &mut SseClient, n: usize, who: &str) -> Got {
    let mut got = Got::default();
    while got.titles.len() < n {
        let ev = s.next_non_heartbeat(3 * WAIT).await.unwrap_or_else(|| {
            let state = if s.is_closed() { "closed" } else { "silent" };
            panic!("{who}: stream {state} after {} of {n} events ({got:?})", got.titles.len())
        });
        match (&ev.id, ev.event.as_str()) {
            (_, "error") => panic!("{who}: {ev:?}"),
            (None, _) => got.warnings.push(ev.data),
            (Some(id), _) => {
                got.ids.push(id.clone());
                got.titles.push(title(&ev.data));
            }
        }
    }
    got
}

/// Asserts that nothing but heartbeats came after what was read from `s`: a marker event
/// published now is its next frame (a late duplicate or extra event would come before it).
/// Returns the marker's title (it is on the channel now).
async fn nothing_more(setup: &StreamSetup, s: &mut SseClient, who: &str) -> String {
    let marker = setup.publish(1).await;
    let ev = s.next_non_heartbeat(3 * WAIT).await.unwrap_or_else(|| panic!("{who}: the marker event never came"));
    assert!(ev.id.is_some() && title(&ev.data) == marker[0], "{who}: unexpected frame after the expected ones: {ev:?}");
    marker[0].clone()
}

/// Like [`nothing_more`] where the test goes on reading the channel (a marker would be one
/// more event there): nothing but heartbeats for 2 s (a duplicate read back late, through the
/// broker, would come within that).
async fn nothing_for_a_while(s: &mut SseClient, who: &str) {
    let extra: Vec<_> = s.events_within(Duration::from_secs(2)).await.into_iter().filter(|e| e.event != "heartbeat").collect();
    assert!(extra.is_empty(), "{who}: unexpected frames after the expected ones: {extra:?}");
    assert!(!s.is_closed(), "{who}: the stream was closed (nothing arriving proves nothing then)");
}

/// Waits until the gateway's logs contain `needle` (they are read from its stderr as they come).
async fn logged(gw: &GatewayProcess, needle: &str, what: &str) {
    let log = gw.log_until(WAIT, |l| l.contains(needle)).await;
    assert!(log.contains(needle), "{what}: no {needle:?} in the gateway's logs");
}

fn assert_increasing(ids: &[String], who: &str) {
    let offsets: Vec<u64> = ids.iter().map(|id| offset(id)).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{who}: ids do not increase: {ids:?}");
}

/// A consumer of the test's own on `queue` at `at`: the offset of the first delivery.
async fn first_offset(queue: &str, at: AMQPValue) -> Option<u64> {
    let conn = Connection::connect_with_runtime(&amqp_url(), ConnectionProperties::default(), async_rs::Runtime::tokio_current())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("a channel");
    ch.basic_qos(1, BasicQosOptions::default()).await.expect("qos");
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), at);
    let mut consumer = ch.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), args).await.expect("consume");
    let next = ::tokio::time::timeout(WAIT, consumer.next()).await.ok().flatten().and_then(Result::ok);
    let first = next.map(|d| {
        match d.properties.headers().as_ref().and_then(|h| h.inner().get("x-stream-offset").cloned()) {
            Some(AMQPValue::LongLongInt(o)) => o as u64,
            other => panic!("a stream delivery without an integer x-stream-offset: {other:?}"),
        }
    });
    let _ = conn.close(200, "done".into()).await;
    first
}

/// Declares `queue` as a stream of `retain` bytes in segments of `segment` bytes, as an
/// operator would ahead of the gateway (whose own declare then differs: it uses it as it is).
/// Retention drops whole segments, so small ones make a small retention truly truncate.
async fn declare_small_stream(queue: &str, retain: i64, segment: i64) {
    let conn = Connection::connect_with_runtime(&amqp_url(), ConnectionProperties::default(), async_rs::Runtime::tokio_current())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("a channel");
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(retain));
    args.insert("x-stream-max-segment-size-bytes".into(), AMQPValue::LongLongInt(segment));
    let opts = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(queue.into(), opts, args).await.expect("declare the stream");
    let _ = conn.close(200, "done".into()).await;
}

// ---- the scenarios ----

async fn a_client_resumes_exactly_across_a_gateway_killed_and_restarted(bin: Bin) {
    let setup = StreamSetup::new(ConfigBuilder::new(), &amqp_url()).await;
    let alice = user("alice", &[]);
    let (msgs, before) = setup.messages(5);
    let last = setup.read_then_killed(bin, &alice, &msgs, &before).await;
    let missed = setup.publish(7).await;
    let gw = setup.start(bin).await;
    let mut s = gw.stream_with("deals", &alice, &[("Last-Event-ID", &last)]).await;
    let got = read_events(&mut s, 7, "after the restart").await;
    assert_eq!(got.titles, missed, "exactly the missed events, in order");
    assert!(got.warnings.is_empty(), "no history_gap: {:?}", got.warnings);
    assert!(offset(&got.ids[0]) > offset(&last));
    assert_increasing(&got.ids, "after the restart");
    let live = setup.publish(1).await;
    assert_eq!(read_events(&mut s, 1, "live after the replay").await.titles, live);
    nothing_more(&setup, &mut s, "after the restart").await;
}

async fn a_client_moves_between_two_instances_with_its_last_event_id(bin: Bin) {
    let setup = StreamSetup::new(ConfigBuilder::new(), &amqp_url()).await;
    let alice = user("alice", &[]);
    let a = setup.start(bin).await;
    let b = setup.start(bin).await;
    let mut s = a.stream("deals", &alice).await;
    let first = setup.publish(4).await;
    let got_a = read_events(&mut s, 4, "on instance A").await;
    assert_eq!(got_a.titles, first);
    let last = s.last_event_id();
    drop(s);

    let missed = setup.publish(6).await;
    // B has them all before the client comes: they can only reach it as a replay.
    b.wait_metric(&events_in("deals"), 10.0).await;
    let replays_b = b.metric(&events_replayed("deals")).await.expect("the sample is on /metrics");
    let mut s = b.stream_with("deals", &alice, &[("Last-Event-ID", &last)]).await;
    let got_b = read_events(&mut s, 6, "on instance B").await;
    assert_eq!(got_b.titles, missed, "exactly the events missed while moving, in order");
    assert_eq!(b.metric(&events_replayed("deals")).await.expect("the sample is on /metrics") - replays_b, 6.0, "replayed by B");
    assert!(got_b.warnings.is_empty(), "no history_gap: {:?}", got_b.warnings);
    // Both instances number an event the same: B's ids continue A's.
    let all: Vec<String> = got_a.ids.iter().chain(&got_b.ids).cloned().collect();
    assert_increasing(&all, "A then B");
    let last = s.last_event_id();
    drop(s);

    // And back to A, which saw every event live meanwhile.
    let missed = setup.publish(3).await;
    a.wait_metric(&events_in("deals"), 13.0).await;
    let replays_a = a.metric(&events_replayed("deals")).await.expect("the sample is on /metrics");
    let mut s = a.stream_with("deals", &alice, &[("Last-Event-ID", &last)]).await;
    let got = read_events(&mut s, 3, "back on instance A").await;
    assert_eq!(got.titles, missed);
    assert_eq!(a.metric(&events_replayed("deals")).await.expect("the sample is on /metrics") - replays_a, 3.0, "replayed by A");
    assert!(got.warnings.is_empty(), "{:?}", got.warnings);
    nothing_more(&setup, &mut s, "back on A").await;
}

async fn a_cold_replay_reads_a_thousand_events_back_from_the_stream_then_goes_live(bin: Bin) {
    let cfg = ConfigBuilder::new().raw("channels.deals", "buffer_events", "10");
    let setup = StreamSetup::new(cfg, &amqp_url()).await;
    let alice = user("alice", &[]);
    let gw = setup.start_with_env(bin, &DEBUG).await;
    let mut s = gw.stream("deals", &alice).await;
    setup.publish(1).await;
    read_events(&mut s, 1, "the first event").await;
    let last = s.last_event_id();
    drop(s);

    let missed = setup.publish(1000).await; // the buffer holds the last 10 of them
    // All taken by the live consumer before the resume: every one of them is then replayed
    // (read back, or from the buffer), none reaches the stream live.
    // (1,001 with the first event.)
    gw.wait_metric("sse_gateway_events_in_total{channel=\"deals\"}", 1001.0).await;
    let mut s = gw.stream_with("deals", &alice, &[("Last-Event-ID", &last)]).await;
    let got = read_events(&mut s, 1000, "the cold replay").await;
    assert!(got.warnings.is_empty(), "no history_gap: {:?}", got.warnings);
    assert_eq!(got.titles, missed, "all 1,000 missed events, in order");
    assert_increasing(&got.ids, "the cold replay");
    let live = setup.publish(2).await;
    assert_eq!(read_events(&mut s, 2, "live after the cold replay").await.titles, live);
    nothing_more(&setup, &mut s, "after the cold replay").await;
    let replays = gw.metric(&events_replayed("deals")).await;
    assert!(replays.unwrap_or(0.0) >= 1000.0, "replayed events counted: {replays:?}");
    // From the stream, not from memory (the buffer holds 10).
    let log = gw.settled_log().await;
    assert_eq!(log.matches("reading the stream back").count(), 1, "one read-back:\n{log}");
}

/// D4 on a read-back: a publisher's retry (the same `message_id`) that the live consumer dropped
/// is in the stream queue too (a stream keeps everything); a resume read back from the stream
/// drops it as well.
async fn a_read_back_drops_a_publishers_retry_as_the_live_consumer_did(bin: Bin) {
    let cfg = ConfigBuilder::new().raw("channels.deals", "buffer_events", "4");
    let setup = StreamSetup::new(cfg, &amqp_url()).await;
    let alice = user("alice", &[]);
    let (gw, mut s, last) = setup.start_after_one_event(bin, &alice).await;

    let (mut msgs, titles) = setup.messages(20);
    for (m, t) in msgs.iter_mut().zip(&titles) {
        m.message_id = Some(format!("mid-{t}"));
    }
    // Two retries: of the 6th event right after it, of the 10th after the 12th.
    let (first, second) = (msgs[5].clone(), msgs[9].clone());
    msgs.insert(12, second);
    msgs.insert(6, first);
    setup.broker.publish_all(&msgs).await;
    let live = read_events(&mut s, 20, "live").await;
    assert_eq!(live.titles, titles, "live: the retries are dropped");
    nothing_for_a_while(&mut s, "live").await;
    assert_eq!(gw.metric("sse_gateway_events_dropped_total{channel=\"deals\",reason=\"duplicate\"}").await, Some(2.0));

    // From the 11th event: the original of the second retry lies before the client's place,
    // so the read-back (which starts there) must have read it too to drop the retry.
    let mut r = gw.stream_with("deals", &alice, &[("Last-Event-ID", &live.ids[10])]).await;
    let got = read_events(&mut r, 9, "the read-back from the 11th").await;
    assert!(got.warnings.is_empty(), "no history_gap: {:?}", got.warnings);
    assert_eq!(got.titles, titles[11..], "the read-back from the 11th: every later event once, the retry dropped");
    // A marker, not a quiet while: a duplicate comes before it whenever it comes.
    let marker = nothing_more(&setup, &mut r, "after the read-back from the 11th").await;
    drop(r);
    let mut titles = titles;
    titles.push(marker);

    // Older than the 4-event buffer: read back from the stream, where the retry is.
    let mut r = gw.stream_with("deals", &alice, &[("Last-Event-ID", &last)]).await;
    let got = read_events(&mut r, titles.len(), "the read-back").await;
    assert!(got.warnings.is_empty(), "no history_gap: {:?}", got.warnings);
    assert_eq!(got.titles, titles, "the read-back: every event once, the retry dropped, then the marker");
    assert_increasing(&got.ids, "the read-back");
    nothing_more(&setup, &mut r, "after the read-back").await;
}

async fn a_storm_of_a_thousand_resumes_gets_exact_replays_in_bounded_memory(bin: Bin) {
    const CLIENTS: usize = 1000;
    const EVENTS: usize = 400;
    let _ = rlimit::increase_nofile_limit(8192);
    let cfg = ConfigBuilder::new().raw("channels.deals", "buffer_events", "20").raw("streams", "max_per_user", "1");
    let setup = StreamSetup::new(cfg, &amqp_url()).await;
    let gw = setup.start(bin).await;

    // One reader learns every event's id.
    let mut s = gw.stream("deals", &user("observer", &[])).await;
    let titles = setup.publish(EVENTS).await;
    let got = read_events(&mut s, EVENTS, "the observer").await;
    assert_eq!(got.titles, titles);
    let ids = got.ids;
    drop(s);
    let rss_before = gw.rss_kib();

    // Client k resumes after event k % (EVENTS - 1): most of them far older than the buffer.
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = {
        let (peak, pid) = (peak.clone(), gw.pid());
        ::tokio::spawn(async move {
            loop {
                if let Some(kib) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| sse_gateway_tests::process::parse_vm_rss_kib(&s))
                {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                ::tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let addr = gw.addr;
    let mut clients = Vec::with_capacity(CLIENTS);
    for k in 0..CLIENTS {
        let from = k % (EVENTS - 1);
        let id = ids[from].clone();
        let token = user(&format!("storm-{k}"), &[]);
        clients.push(::tokio::spawn(async move {
            let auth = format!("Bearer {token}");
            let s = SseClient::open(addr, "/api/v1/streams/deals", &[("Authorization", &auth), ("Last-Event-ID", &id)]).await;
            assert_eq!(s.status, 200, "client {k}");
            (k, from, s)
        }));
    }
    let mut open = Vec::with_capacity(CLIENTS);
    for c in clients {
        open.push(c.await.expect("a client connects"));
    }
    let marker = setup.publish(1).await.remove(0);
    let mut readers = Vec::with_capacity(CLIENTS);
    for (k, from, mut s) in open {
        let want: Vec<String> = titles[from + 1..].iter().cloned().chain([marker.clone()]).collect();
        readers.push(::tokio::spawn(async move {
            let got = read_events(&mut s, want.len(), &format!("client {k}")).await;
            assert!(got.warnings.is_empty(), "client {k} (after event {from}): {:?}", got.warnings);
            assert_eq!(got.titles, want, "client {k} resuming after event {from}: exact replay, then live");
        }));
    }
    for r in readers {
        r.await.expect("every client gets its exact replay");
    }
    let took = started.elapsed();
    sampling.abort();
    let peak = peak.load(Ordering::Relaxed);
    let replayed: usize = (0..CLIENTS).map(|k| EVENTS - 1 - k % (EVENTS - 1)).sum();
    eprintln!(
        "resume storm on {}: {CLIENTS} clients, {replayed} events replayed in {:.1}s; VmRSS {} KiB before, peak {} KiB during, {} KiB after",
        bin.file_name(),
        took.as_secs_f64(),
        rss_before,
        peak,
        gw.rss_kib()
    );
    // 1,000 streams at their 256 KiB output bound would be 250 MiB; the read-backs run 8 at a
    // time and pause at that bound, so the gateway stays far below it.
    assert!(peak < rss_before + 128 * 1024, "VmRSS peaked at {peak} KiB (before: {rss_before} KiB)");
}

async fn read_backs_for_clients_that_stop_reading_give_their_turn_up(bin: Bin) {
    // More stalled clients than read-backs run at once (8), each owed about 8 MB: far past the
    // socket buffers and the 256 KiB output bound, so every one of their read-backs pauses.
    const STALLED: usize = 10;
    let cfg = ConfigBuilder::new().raw("channels.deals", "buffer_events", "10");
    let setup = StreamSetup::new(cfg, &amqp_url()).await;
    let gw = setup.start_with_env(bin, &DEBUG).await;
    let mut s = gw.stream("deals", &user("alice", &[])).await;
    setup.publish(1).await;
    read_events(&mut s, 1, "the first event").await;
    let first = s.last_event_id();
    drop(s);
    let (big, titles) = setup.messages_padded(1000, 8 * 1024);
    // Each message after the first is followed by a publisher's retry of the one before it (its
    // message_id, a small body of its own): wherever a read-back pauses and reopens its
    // consumer, a retry right after that point must still be dropped, as live.
    let mut msgs = Vec::with_capacity(2 * big.len());
    for (k, mut m) in big.into_iter().enumerate() {
        m.message_id = Some(format!("mid-{k}"));
        msgs.push(m);
        if k > 0 {
            let (mut retry, _) = setup.messages(1);
            let mut retry = retry.pop().expect("one message");
            retry.message_id = Some(format!("mid-{}", k - 1));
            msgs.push(retry);
        }
    }
    setup.broker.publish_all(&msgs).await;

    let mut stalled = Vec::new();
    for k in 0..STALLED {
        stalled.push(gw.stream_with("deals", &user(&format!("stalled-{k}"), &[]), &[("Last-Event-ID", &first)]).await);
    }
    // Each read-back pauses at the client's bound; after holding its turn 2 s it gives it up.
    let paused = gw.log_until(3 * WAIT, |l| l.matches("read-back paused").count() >= STALLED).await.matches("read-back paused").count();
    assert!(paused >= STALLED, "stalled read-backs gave their turn up: {paused}");
    // A client that reads gets its whole replay while the stalled ones wait for their readers.
    let started = Instant::now();
    let mut prompt = gw.stream_with("deals", &user("prompt", &[]), &[("Last-Event-ID", &first)]).await;
    let got = read_events(&mut prompt, 1000, "the prompt client").await;
    assert_eq!(got.titles, titles);
    assert!(got.warnings.is_empty(), "{:?}", got.warnings);
    eprintln!("{}: a replay of 8 MB beside {STALLED} stalled ones took {:.1}s; VmRSS {} KiB", bin.file_name(), started.elapsed().as_secs_f64(), gw.rss_kib());

    // The stalled clients read now: each gets everything, exactly, from where it paused.
    for (k, s) in stalled.iter_mut().enumerate() {
        let got = read_events(s, 1000, &format!("stalled client {k}")).await;
        assert!(got.warnings.is_empty(), "stalled client {k}: {:?}", got.warnings);
        if let Some(i) = got.titles.iter().zip(&titles).position(|(a, b)| a != b) {
            panic!("stalled client {k}: not the exact replay from event {i}: got {:?}, want {:?}", &got.titles[i.saturating_sub(2)..(i + 3).min(got.titles.len())].iter().map(|t| t.trim_end_matches('.')).collect::<Vec<_>>(), &titles[i.saturating_sub(2)..i + 3].iter().map(|t| t.trim_end_matches('.')).collect::<Vec<_>>());
        }
    }
    let live = setup.publish(1).await;
    for (k, s) in stalled.iter_mut().enumerate() {
        assert_eq!(read_events(s, 1, &format!("stalled client {k}, live")).await.titles, live);
    }
}

/// When the broker answers the restarted instance.
enum Answer {
    /// This long after the stream opened.
    After(Duration),
    /// Once the stream was told `source_unavailable` (2 s after the start).
    AtTheWarning,
}

/// A client resuming right after a restart, before the new instance has reached the broker, is
/// read back once it has (D6: resume holds across restarts), not answered `history_gap` for
/// coming a moment early: the broker answers as `answer` says.
async fn resume_before_the_broker_answers(bin: Bin, answer: Answer) -> Got {
    let proxy = TcpProxy::start(&amqp_addr()).await;
    let setup = StreamSetup::new(ConfigBuilder::new(), &proxy.amqp_url()).await;
    let alice = user("alice", &[]);
    let (gw, s, last) = setup.start_after_one_event(bin, &alice).await;
    drop(s);
    drop(gw);
    let missed = setup.publish(5).await;
    proxy.slow_connects();
    let gw = GatewayProcess::start(bin, &setup.config).await;
    if matches!(answer, Answer::AtTheWarning) {
        // The stream opens late in the 2 s before the warning (or after it: the warning comes at
        // the open), so most of the read-back's 5-s wait for the broker is left after it, for the
        // connect to finish on a loaded machine.
        ::tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let mut s = gw.stream_with("deals", &alice, &[("Last-Event-ID", &last)]).await;
    let mut early = Vec::new();
    match answer {
        Answer::After(after) => ::tokio::time::sleep(after).await,
        // At once: the read-back waits 5 s from the open for the broker; a fixed sleep past the
        // warning would leave a slow machine less of that for the connect.
        Answer::AtTheWarning => {
            let ev = s.next_non_heartbeat(3 * WAIT).await.expect("source_unavailable while the broker does not answer");
            assert!(ev.id.is_none() && ev.data.contains("source_unavailable"), "{ev:?}");
            early.push(ev.data);
        }
    }
    assert_eq!(gw.get("/readyz", &[]).await.status, 503, "the source had not reached the broker");
    proxy.restore();
    let mut got = read_events(&mut s, 5, "resumed before the broker answered").await;
    got.warnings.splice(0..0, early);
    assert_eq!(got.titles, missed, "exactly the missed events, in order");
    assert!(got.warnings.iter().all(|w| !w.contains("history_gap")), "no history_gap: {:?}", got.warnings);
    nothing_more(&setup, &mut s, "resumed before the broker answered").await;
    got
}

/// The broker answers about 500 ms after the stream opened. The 2 s after which a source that
/// does not answer is reported unavailable count from the instance's start, not the stream's, so
/// on a slow machine `source_unavailable` may come first; no other warning may.
async fn a_resume_before_the_broker_answers_a_restarted_instance_is_read_back_once_it_does(bin: Bin) {
    let got = resume_before_the_broker_answers(bin, Answer::After(Duration::from_millis(500))).await;
    assert!(got.warnings.iter().all(|w| w.contains("source_unavailable")), "only source_unavailable, if any: {:?}", got.warnings);
}

/// The broker answers only once the stream was told `source_unavailable` (the source is
/// reported down 2 s after the start), and the stream's read-back still waited for it.
async fn a_resume_waits_for_a_broker_slower_than_the_outage_warning_after_a_restart(bin: Bin) {
    let got = resume_before_the_broker_answers(bin, Answer::AtTheWarning).await;
    assert!(got.warnings.iter().any(|w| w.contains("source_unavailable")), "source_unavailable while waiting: {:?}", got.warnings);
}

async fn a_broker_outage_delivers_what_the_stream_kept_afterwards(bin: Bin) {
    let proxy = TcpProxy::start(&amqp_addr()).await;
    let cfg = ConfigBuilder::new().fast_outage();
    let setup = StreamSetup::new(cfg, &proxy.amqp_url()).await;
    let gw = setup.start(bin).await;
    let alice = user("alice", &[]);
    let mut s = gw.stream("deals", &alice).await;
    let first = setup.publish(3).await;
    assert_eq!(read_events(&mut s, 3, "before the cut").await.titles, first);

    // A burst, and the cut right behind it: some of it is not delivered before the link drops.
    let (burst, burst_titles) = setup.messages(300);
    setup.broker.publish_all(&burst).await;
    proxy.cut();
    let during = setup.publish(20).await; // straight to RabbitMQ: the stream keeps them
    let mut warned = false;
    let deadline = Instant::now() + WAIT;
    let mut got = Got::default();
    // Whatever of the burst arrived before the cut, then the warning.
    while !warned {
        let ev = s.next_non_heartbeat(deadline.saturating_duration_since(Instant::now())).await.expect("a warning after the cut");
        match ev.id {
            Some(id) => {
                got.ids.push(id);
                got.titles.push(title(&ev.data));
            }
            None => {
                assert_eq!(ev.json(), serde_json::json!({"code": "source_unavailable", "channel": "deals"}), "{ev:?}");
                warned = true;
            }
        }
    }
    proxy.restore();
    let want: Vec<String> = burst_titles.iter().chain(&during).cloned().collect();
    let rest = read_events(&mut s, want.len() - got.titles.len(), "after the outage").await;
    assert!(
        rest.warnings.iter().all(|w| w.contains("source_unavailable")),
        "only source_unavailable warnings, no history_gap: {:?}",
        rest.warnings
    );
    got.titles.extend(rest.titles);
    got.ids.extend(rest.ids);
    assert_eq!(got.titles, want, "every event published before and during the cut, in order, once");
    assert_increasing(&got.ids, "across the outage");
    gw.wait_metric("sse_gateway_source_up{channel=\"deals\"}", 1.0).await;
    let live = setup.publish(1).await;
    let after = read_events(&mut s, 1, "live after the outage").await;
    assert_eq!(after.titles, live);
    nothing_more(&setup, &mut s, "after the outage").await;
    logged(&gw, "source unavailable", "the loss is logged").await;
}

/// The source's first consumer took nothing (the stream was empty) before the link was cut:
/// after the outage it reads the chunks written since that consumer began, so what was
/// published meanwhile arrives, once, in order, and nothing older would.
async fn a_source_that_took_nothing_before_an_outage_delivers_what_came_during_it(bin: Bin) {
    let proxy = TcpProxy::start(&amqp_addr()).await;
    let setup = StreamSetup::new(ConfigBuilder::new().fast_outage(), &proxy.amqp_url()).await;
    let gw = setup.start(bin).await;
    let mut s = gw.stream("deals", &user("erin", &[])).await;
    proxy.cut();
    let ev = s.next_non_heartbeat(WAIT).await.expect("a warning after the cut");
    assert_eq!(ev.json(), serde_json::json!({"code": "source_unavailable", "channel": "deals"}), "{ev:?}");
    let during = setup.publish(3).await; // straight to RabbitMQ: the stream keeps them
    proxy.restore();
    exactly(&setup, &mut s, &during, "after the outage: what was published during it").await;
    logged(&gw, "from=chunks written since unix time", "the second consumer starts at its first one's time").await;
}

/// As above, but the stream held events when the gateway started (read as history, sent to no
/// stream): the second consumer starts where that read ended, by offset (not by time, which
/// would lean on the broker's clock agreeing with the gateway's).
async fn a_source_that_took_nothing_after_its_history_read_resumes_from_its_end_after_an_outage(bin: Bin) {
    let proxy = TcpProxy::start(&amqp_addr()).await;
    let setup = StreamSetup::new(ConfigBuilder::new().fast_outage(), &proxy.amqp_url()).await;
    let first = setup.start(bin).await;
    setup.publish(3).await; // history for the next instance, sent to none of its streams
    drop(first);
    let gw = setup.start(bin).await;
    let mut s = gw.stream("deals", &user("erin", &[])).await;
    gw.wait_metric("sse_gateway_source_up{channel=\"deals\"}", 1.0).await;
    proxy.cut();
    let ev = s.next_non_heartbeat(WAIT).await.expect("a warning after the cut");
    assert_eq!(ev.json(), serde_json::json!({"code": "source_unavailable", "channel": "deals"}), "{ev:?}");
    let during = setup.publish(3).await;
    proxy.restore();
    exactly(&setup, &mut s, &during, "after the outage: what was published during it, none of the history").await;
    logged(&gw, "from=offset", "the second consumer starts at the history's end").await;
}

async fn streams_opened_before_the_broker_is_reached_get_everything_published_since(bin: Bin) {
    let proxy = TcpProxy::start(&amqp_addr()).await;
    let setup = StreamSetup::new(ConfigBuilder::new().fast_outage(), &proxy.amqp_url()).await;
    // A first gateway declares and binds the stream (empty), so that it keeps what comes next.
    drop(setup.start(bin).await);
    proxy.cut();
    let gw = GatewayProcess::start(bin, &setup.config).await;
    let mut s = gw.stream("deals", &user("erin", &[])).await;
    let ev = s.next_non_heartbeat(WAIT).await.expect("a warning while the broker is not reached");
    assert_eq!(ev.json(), serde_json::json!({"code": "source_unavailable", "channel": "deals"}), "{ev:?}");
    // One at a time, with confirms: three chunks, of which only the last is the stream's "last".
    let mut during = Vec::new();
    for _ in 0..3 {
        during.extend(setup.publish(1).await);
    }
    proxy.restore();
    exactly(&setup, &mut s, &during, "once the broker is reached: everything published since the stream opened").await;
    logged(&gw, "from=chunks written since unix time", "the first consumer starts at the source's start").await;
}

async fn an_id_older_than_the_retention_gets_history_gap(bin: Bin) {
    let cfg = ConfigBuilder::new().raw("channels.deals", "buffer_events", "5");
    let setup = StreamSetup::new(cfg, &amqp_url()).await;
    // Retention drops whole segments: small ones (10 KB), so 50 KB of retention truly truncates.
    // The gateway finds the stream declared with other arguments and uses it as it is.
    declare_small_stream(&setup.queue(), 50_000, 10_000).await;
    let gw = setup.start(bin).await;
    logged(&gw, "queue declare refused", "the gateway used the stream as it was declared").await;
    let alice = user("alice", &[]);
    let mut s = gw.stream("deals", &alice).await;
    setup.publish(1).await;
    read_events(&mut s, 1, "the first event").await;
    let oldest = s.last_event_id();
    drop(s);

    // About 180 KB in 20-event steps the gateway keeps up with: the first segments go.
    let mut bob = gw.stream("deals", &user("bob", &[])).await;
    let mut recent = Vec::new();
    for _ in 0..30 {
        let titles = setup.publish(20).await;
        let got = read_events(&mut bob, 20, "bob, live").await;
        assert!(got.warnings.is_empty(), "{:?}", got.warnings);
        assert_eq!(got.titles, titles);
        recent = got.ids.into_iter().zip(titles).collect::<Vec<_>>();
    }
    // Offset 0 is gone: a consumer at "first" starts later.
    let first = first_offset(&setup.queue(), AMQPValue::LongString("first".into())).await.expect("the stream has messages");
    assert!(first > offset(&oldest), "retention removed the start of the stream (first offset now {first})");

    // Alice's id is older than what the stream holds: history_gap, then live events only.
    let mut s = gw.stream_with("deals", &alice, &[("Last-Event-ID", &oldest)]).await;
    let ev = s.next_non_heartbeat(WAIT).await.expect("a first frame");
    assert_eq!(ev.event, "warning", "{ev:?}");
    assert_eq!(ev.json(), serde_json::json!({"code": "history_gap", "channel": "deals"}));
    let live = setup.publish(1).await;
    let got = read_events(&mut s, 1, "live after the gap").await;
    assert_eq!(got.titles, live, "no partial replay after a gap");
    assert!(got.warnings.is_empty());

    // An id the stream still holds, older than the 5-event buffer, still replays exactly.
    let (from, _) = &recent[9];
    let mut carol = gw.stream_with("deals", &user("carol", &[]), &[("Last-Event-ID", from)]).await;
    let want: Vec<String> = recent[10..].iter().map(|(_, t)| t.clone()).chain(live).collect();
    let got = read_events(&mut carol, want.len(), "carol, inside the retention").await;
    assert!(got.warnings.is_empty(), "{:?}", got.warnings);
    assert_eq!(got.titles, want);
    nothing_more(&setup, &mut carol, "carol").await;
}

async fn a_stream_that_lost_events_during_an_outage_says_history_gap_then_goes_on(bin: Bin) {
    let proxy = TcpProxy::start(&amqp_addr()).await;
    let cfg = ConfigBuilder::new().fast_outage();
    let setup = StreamSetup::new(cfg, &proxy.amqp_url()).await;
    // 50 KB of retention in 10 KB segments: what is published during the outage pushes the
    // events the gateway saw last out of the stream.
    declare_small_stream(&setup.queue(), 50_000, 10_000).await;
    let gw = setup.start(bin).await;
    let bob = user("bob", &[]);
    let mut s = gw.stream("deals", &bob).await;
    let before = setup.publish(5).await;
    assert_eq!(read_events(&mut s, 5, "before the cut").await.titles, before);
    let last_before = s.last_event_id();

    proxy.cut();
    let ev = s.next_non_heartbeat(WAIT).await.expect("a warning after the cut");
    assert_eq!(ev.json(), serde_json::json!({"code": "source_unavailable", "channel": "deals"}), "{ev:?}");
    let during = setup.publish(600).await; // about 180 KB: most of it goes too
    let first = first_offset(&setup.queue(), AMQPValue::LongString("first".into())).await.expect("messages");
    assert!(first > offset(&last_before) + 1, "retention removed what followed the last event seen (first offset now {first})");
    proxy.restore();

    // A history_gap before anything past the hole, then what the stream kept, in order, to the end.
    let mut gap = false;
    let mut titles = Vec::new();
    let mut offsets = Vec::new();
    while titles.last() != during.last() {
        let ev = s.next_non_heartbeat(3 * WAIT).await.expect("events after the outage");
        match &ev.id {
            None if ev.json()["code"] == "source_unavailable" => {}
            None => {
                assert_eq!(ev.json(), serde_json::json!({"code": "history_gap", "channel": "deals"}), "{ev:?}");
                assert!(titles.is_empty(), "history_gap comes before the events after the hole");
                gap = true;
            }
            Some(id) => {
                assert!(gap, "an event after the hole came before history_gap: {ev:?}");
                titles.push(title(&ev.data));
                offsets.push(offset(id));
            }
        }
    }
    // Exactly what the stream kept: the events from its first offset on (the stream's offsets are
    // not one per message, so the first is checked by its id: between the first offset before the
    // restore and the first now, as retention may still have been at work), each once, in order,
    // to the last.
    let first_now = first_offset(&setup.queue(), AMQPValue::LongString("first".into())).await.expect("messages");
    let from = offsets.first().copied().expect("events after the hole");
    assert!(first <= from && from <= first_now, "the first event after the hole is at {from}, the stream's first was {first} and is {first_now}");
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    let kept = &during[during.len() - titles.len()..];
    assert_eq!(titles, kept, "what the stream kept, in order, once");
    assert!(titles.len() < during.len());
    logged(&gw, "the stream lost events", "the loss is logged").await;

    // A client resuming from before the hole is told too (the buffer forgot across it).
    let mut late = gw.stream_with("deals", &user("carol", &[]), &[("Last-Event-ID", &last_before)]).await;
    let ev = late.next_non_heartbeat(WAIT).await.expect("a first frame");
    assert_eq!(ev.json(), serde_json::json!({"code": "history_gap", "channel": "deals"}), "{ev:?}");
    let live = setup.publish(1).await;
    assert_eq!(read_events(&mut late, 1, "carol, live").await.titles, live);
    assert_eq!(read_events(&mut s, 1, "bob, live").await.titles, live);
}

/// A read-back that gets nothing at all (not even the message at the client's offset: what a
/// broker slow to seek looks like, or an id the stream never had) cannot vouch for the client's
/// place: the stream says `history_gap` before going live, and ids still never go back.
async fn a_read_back_that_gets_nothing_at_all_says_history_gap(bin: Bin) {
    let setup = StreamSetup::new(ConfigBuilder::new(), &amqp_url()).await;
    let gw = setup.start(bin).await;
    // The stream is empty and so is this instance's buffer: the id is read back from the
    // stream, which does not hold offset 5.
    let claimed = format!("{EPOCH}-5");
    let mut s = gw.stream_with("deals", &user("dave", &[]), &[("Last-Event-ID", &claimed)]).await;
    let ev = s.next_non_heartbeat(WAIT).await.expect("a first frame: the read-back found nothing to vouch for the id");
    assert_eq!(ev.json(), serde_json::json!({"code": "history_gap", "channel": "deals"}), "{ev:?}");
    let titles = setup.publish(8).await;
    let got = read_events(&mut s, 2, "live after the gap").await;
    assert_eq!(got.titles, titles[6..], "only the events past the client's id");
    assert_eq!(got.ids.iter().map(|id| offset(id)).collect::<Vec<_>>(), [6, 7]);
    nothing_more(&setup, &mut s, "after the gap").await;
}

/// An id past the stream's end by less than the read-back's warm-up (forged, or from a stream
/// recreated without a new epoch) while messages keep coming: the read-back, which reads every
/// message below the client's offset as warm-up, gives up 15 s after its start (it held a turn
/// for as long as messages came, and the stream got nothing): `history_gap`, then nothing, since
/// every event is below the id.
async fn a_resume_past_the_streams_end_says_history_gap_though_messages_keep_coming(bin: Bin) {
    let setup = StreamSetup::new(ConfigBuilder::new(), &amqp_url()).await;
    let gw = setup.start(bin).await;
    // The stream is empty and so is this instance's buffer: the id is read back from the stream,
    // from its window's worth (1,024) of messages before it, offset 0 here, which the stream will
    // hold. (One further ahead than that gets nothing from the broker until the stream holds its
    // warm-up's first offset: history_gap after 5 s, `a_read_back_that_gets_nothing_at_all_...`.)
    let ahead = format!("{EPOCH}-500");
    let mut s = gw.stream_with("deals", &user("erin", &[]), &[("Last-Event-ID", &ahead)]).await;
    // One message every 300 ms, for at most 30 s: never 5 s without one (the read-back's wait
    // for a first message).
    let publishing = async {
        for _ in 0..100 {
            setup.publish(1).await;
            sse_gateway_tests::sleep(Duration::from_millis(300)).await;
        }
        None
    };
    let first = async { Some(s.next_non_heartbeat(4 * WAIT).await) };
    let first = futures_lite::future::or(first, publishing).await;
    let ev = first.expect("no frame at all while messages kept coming for 30 s").expect("the stream closed or stayed silent");
    assert_eq!(ev.json(), serde_json::json!({"code": "history_gap", "channel": "deals"}), "{ev:?}");
    // Messages go on (the publishing above stopped with the gap): the gateway takes them, its
    // counter says so, and the stream gets none of them.
    let taken = gw.metric(&events_in("deals")).await.expect("the sample is on /metrics");
    setup.publish(3).await;
    let until = std::time::Instant::now() + WAIT;
    while gw.metric(&events_in("deals")).await.expect("the sample is on /metrics") < taken + 3.0 {
        assert!(std::time::Instant::now() < until, "the gateway did not take the messages published after the gap");
        sse_gateway_tests::sleep(Duration::from_millis(100)).await;
    }
    nothing_for_a_while(&mut s, "after the gap (every event is below its id)").await;
}

/// A read-back that cannot start (here the read-back connection is refused, while the live one
/// goes on) replays nothing: the stream gets `history_gap` and goes live, and the log says why at
/// warn (a resume from a place the stream no longer holds is the client's own, at debug): the
/// first failure at once, then at most one line every 10 s, so a second failure right after
/// gets none of its own.
async fn a_read_back_that_cannot_connect_says_history_gap_and_logs_why_at_warn(bin: Bin) {
    let proxy = TcpProxy::start(&amqp_addr()).await;
    let cfg = ConfigBuilder::new().raw("channels.deals", "buffer_events", "2");
    let setup = StreamSetup::new(cfg, &proxy.amqp_url()).await;
    let alice = user("alice", &[]);
    let (gw, s, last) = setup.start_after_one_event(bin, &alice).await;
    drop(s);
    setup.publish(5).await; // past the 2-event buffer: a resume from `last` is read back
    gw.wait_metric(&events_in("deals"), 6.0).await;
    // The read-back connection is opened on first use: from now on, refused.
    proxy.refuse_new();
    for who in ["alice", "bob"] {
        let mut s = gw.stream_with("deals", &user(who, &[]), &[("Last-Event-ID", &last)]).await;
        let ev = s.next_non_heartbeat(3 * WAIT).await.unwrap_or_else(|| panic!("{who}: no first frame"));
        assert_eq!(ev.json(), serde_json::json!({"code": "history_gap", "channel": "deals"}), "{who}: {ev:?}");
        let live = setup.publish(1).await;
        assert_eq!(read_events(&mut s, 1, &format!("{who}, live after the gap")).await.titles, live);
    }
    let needle = "read-back could not start";
    let log = gw.settled_log().await;
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(lines.len(), 1, "one line for two failures within 10 s:\n{log}");
    let line = lines[0];
    for part in ["WARN", "channel=deals", "failures=1", "cannot connect to the broker"] {
        assert!(line.contains(part), "no {part:?} in {line:?}");
    }
}

/// Deletes `queue` (as an operator purging a stream would).
async fn a_stream_deleted_under_the_gateway_stops_the_source_instead_of_reusing_ids(bin: Bin) {
    let setup = StreamSetup::new(ConfigBuilder::new().fast_outage(), &amqp_url()).await;
    let gw = setup.start(bin).await;
    let carol = user("carol", &[]);
    let mut s = gw.stream("deals", &carol).await;
    let before = setup.publish(5).await;
    let got = read_events(&mut s, 5, "before the delete").await;
    assert_eq!(got.titles, before);

    // The stream goes; the gateway's consumer is cancelled and it reconnects. It finds the stream
    // gone: declaring it makes a new one whose offsets start at 0 again.
    setup.broker.delete_queue(&setup.queue()).await;
    let ev = s.next_non_heartbeat(WAIT).await.expect("a warning when the stream goes");
    assert_eq!(ev.json(), serde_json::json!({"code": "source_unavailable", "channel": "deals"}), "{ev:?}");
    logged(&gw, "is gone (it had offset 4)", "the log names the lost stream").await;
    logged(&gw, "set channels.deals.source.epoch to a new value", "the log says what to do").await;
    assert_eq!(gw.get("/readyz", &[]).await.status, 503, "not ready while the source is stopped");
    // The new stream is declared and bound (it keeps what is published), but not read: none of
    // its events reaches the client under an id it may already hold, nor is taken in at all
    // (the events-in counter stands). The warnings repeat.
    let taken = gw.metric("sse_gateway_events_in_total{channel=\"deals\"}").await;
    let kept = setup.publish(3).await;
    let mut frames = s.events_within(Duration::from_secs(2)).await;
    let warned = |frames: &[SseEvent]| frames.iter().any(|e| e.event == "warning" && e.json()["code"] == "source_unavailable");
    if !warned(&frames) {
        // A stalled machine: the repeat (every second) comes later.
        frames.extend(s.next_non_heartbeat(WAIT).await);
    }
    assert_eq!(gw.metric("sse_gateway_events_in_total{channel=\"deals\"}").await, taken, "the new stream was read");
    assert!(warned(&frames), "no repeated warning: {frames:?}");
    assert!(frames.iter().all(|e| e.id.is_none()), "an event came from the new stream: {frames:?}");
    assert_eq!(gw.metric("sse_gateway_source_up{channel=\"deals\"}").await, Some(0.0), "the source stays stopped");
    assert_eq!(first_offset(&setup.queue(), AMQPValue::LongString("first".into())).await, Some(0), "the new stream kept them");
    drop(s);
    drop(gw);

    // The remedy: a new epoch. The new gateway's ids cannot be confused with the old ones.
    let config = setup.config.replace(&format!("epoch = {EPOCH}"), &format!("epoch = {}", EPOCH + 1));
    assert_ne!(config, setup.config, "the epoch is in the rendered configuration");
    let gw = GatewayProcess::start(bin, &config).await;
    gw.wait_ready().await;
    let mut s = gw.stream("deals", &carol).await;
    let live = setup.publish(2).await;
    let got = read_events(&mut s, 2, "after the epoch bump").await;
    assert_eq!(got.titles, live);
    let new_epoch = format!("{}-", EPOCH + 1);
    let offsets: Vec<u64> = got.ids.iter().filter_map(|id| id.strip_prefix(&new_epoch)?.parse().ok()).collect();
    assert_eq!(offsets, [kept.len() as u64, kept.len() as u64 + 1], "the new epoch, the new stream's offsets: {:?}", got.ids);
}

/// A stream deleted and made again while the source was away, and refilled past where the
/// source was: the consumer resumed at that offset finds another message there (no offset went
/// back, no 404). It used to take the new stream's messages under ids clients may already hold
/// (a wrong replay); now the source stops as when the offsets go back.
async fn a_stream_recreated_and_refilled_during_an_outage_stops_the_source(bin: Bin) {
    let (proxy, setup, gw, mut s) = five_taken_live(bin).await;
    recreated_during_a_cut_stops_the_source(&setup, &proxy, &gw, &mut s).await;
}

/// A gateway (its link to the broker through the returned proxy) whose source took offsets 0
/// to 4 live, and carol's stream on deals that read them.
async fn five_taken_live(bin: Bin) -> (TcpProxy, StreamSetup, GatewayProcess, SseClient) {
    let proxy = TcpProxy::start(&amqp_addr()).await;
    let setup = StreamSetup::new(ConfigBuilder::new().fast_outage(), &proxy.amqp_url()).await;
    let gw = setup.start(bin).await;
    let mut s = gw.stream("deals", &user("carol", &[])).await;
    let before = setup.publish(5).await;
    assert_eq!(read_events(&mut s, 5, "before the outage").await.titles, before);
    (proxy, setup, gw, s)
}

/// Cuts the link (`s` is warned), deletes the stream and makes it again under its name, fills
/// it with the first `now` of 8 messages straight to it (its binding went with it; the gateway
/// binds it again when it reconnects), then lets the link back; returns the other messages.
async fn recreate_during_a_cut(setup: &StreamSetup, proxy: &TcpProxy, s: &mut SseClient, now: usize) -> Vec<Message> {
    proxy.cut();
    let ev = s.next_non_heartbeat(WAIT).await.expect("a warning at the cut");
    assert_eq!(ev.json()["code"], "source_unavailable", "{ev:?}");
    setup.broker.delete_queue(&setup.queue()).await;
    declare_small_stream(&setup.queue(), 1 << 30, 1 << 24).await;
    let (msgs, _) = setup.messages(8);
    let mut direct: Vec<Message> = msgs.into_iter().map(|m| Message { exchange: String::new(), routing_key: setup.queue(), ..m }).collect();
    let later = direct.split_off(now);
    setup.broker.publish_all(&direct).await;
    proxy.restore();
    later
}

/// The same when the source took nothing live before the outage: it resumes where its history
/// read at start ended, and the message there must be the one that read took.
async fn a_stream_recreated_during_an_outage_before_any_live_event_stops_the_source(bin: Bin) {
    let proxy = TcpProxy::start(&amqp_addr()).await;
    let setup = StreamSetup::new(ConfigBuilder::new().fast_outage(), &proxy.amqp_url()).await;
    let first = setup.start(bin).await;
    setup.publish(5).await; // offsets 0 to 4: the next instance's history
    drop(first);
    let gw = setup.start(bin).await;
    let mut s = gw.stream("deals", &user("carol", &[])).await;
    gw.wait_metric("sse_gateway_source_up{channel=\"deals\"}", 1.0).await;
    recreated_during_a_cut_stops_the_source(&setup, &proxy, &gw, &mut s).await;
}

/// A stream deleted and made again while the source was away, shorter than where the source
/// was (offsets 0 and 1; it had taken 4): the broker sends a consumer resumed at 4 nothing until
/// the stream reaches it. The source used to be reported up meanwhile, the channel silent with
/// no warning; now it stays down (`source_unavailable`, `/readyz`), says why, and stops once the
/// stream reaches offset 4 with another message there.
async fn a_stream_recreated_shorter_during_an_outage_keeps_the_source_down(bin: Bin) {
    let (proxy, setup, gw, mut s) = five_taken_live(bin).await;
    let later = recreate_during_a_cut(&setup, &proxy, &mut s, 2).await;
    // The reconnect, then 5 s (RESUME_WAIT) and up to a second more: a wider wait than `logged`'s.
    let needle = "has not sent the message at the source's resume point";
    let log = gw.log_until(WAIT + Duration::from_secs(10), |l| l.contains(needle)).await;
    assert!(log.contains(needle), "the log says the stream does not reach the source's offset");
    assert_eq!(gw.metric("sse_gateway_source_up{channel=\"deals\"}").await, Some(0.0), "the source is not reported up");
    let frames = s.events_within(Duration::from_secs(2)).await;
    assert!(frames.iter().all(|e| e.id.is_none()), "an event of the new stream reached the client: {frames:?}");
    assert!(
        frames.iter().any(|e| e.event == "warning" && e.json()["code"] == "source_unavailable"),
        "the outage warning goes on: {frames:?}"
    );
    // The stream reaches offset 4, another message there: the source stops, saying why.
    setup.broker.publish_all(&later).await;
    logged(&gw, "holds another message at offset 4 than the one this source took there", "the log says why the source stopped").await;
    assert_eq!(gw.metric("sse_gateway_source_up{channel=\"deals\"}").await, Some(0.0), "the source stays stopped");
    assert!(s.events_within(Duration::from_secs(1)).await.iter().all(|e| e.id.is_none()), "no event of the new stream");
}

/// [`recreate_during_a_cut`], refilled past offset 4: the source stops, saying why, and takes
/// none of the new stream's events, while `s` stays open with no event.
async fn recreated_during_a_cut_stops_the_source(setup: &StreamSetup, proxy: &TcpProxy, gw: &GatewayProcess, s: &mut SseClient) {
    let taken = gw.metric(&events_in("deals")).await;
    recreate_during_a_cut(setup, proxy, s, 8).await;
    logged(gw, "holds another message at offset 4 than the one this source took there", "the log says why the source stopped").await;
    let frames = s.events_within(Duration::from_secs(2)).await;
    assert!(frames.iter().all(|e| e.id.is_none()), "an event of the new stream reached the client: {frames:?}");
    assert!(!s.is_closed(), "the stream stays open (a source outage)");
    assert_eq!(gw.metric(&events_in("deals")).await, taken, "no event of the new stream was taken (into the buffer either)");
    assert_eq!(gw.metric("sse_gateway_source_up{channel=\"deals\"}").await, Some(0.0), "the source stays stopped");
}

/// The same before any live event: the ids a starting gateway read as history for its buffers
/// are ids resumes may hold, so a stream deleted then stops the source too (not a new stream's
/// events dropped, unseen, until its offsets passed the old ones).
async fn a_stream_deleted_before_any_live_event_stops_the_source_too(bin: Bin) {
    let setup = StreamSetup::new(ConfigBuilder::new().fast_outage(), &amqp_url()).await;
    let carol = user("carol", &[]);
    let (msgs, titles) = setup.messages(5);
    setup.read_then_killed(bin, &carol, &msgs, &titles).await;
    let gw = setup.start(bin).await;
    // The new instance read them as history: a resume from the second is served from memory.
    let mut resumed = gw.stream_with("deals", &carol, &[("Last-Event-ID", &format!("{EPOCH}-1"))]).await;
    assert_eq!(read_events(&mut resumed, 3, "resumed from the history").await.titles, titles[2..]);
    let mut s = gw.stream("deals", &carol).await;
    setup.broker.delete_queue(&setup.queue()).await;
    let ev = s.next_non_heartbeat(WAIT).await.expect("a warning when the stream goes");
    assert_eq!(ev.json(), serde_json::json!({"code": "source_unavailable", "channel": "deals"}), "{ev:?}");
    logged(&gw, "is gone (it had offset 4)", "the log names the lost stream").await;
    let taken = gw.metric("sse_gateway_events_in_total{channel=\"deals\"}").await;
    setup.publish(3).await;
    let frames = s.events_within(Duration::from_secs(2)).await;
    assert!(!s.is_closed(), "the stream stays open through the outage: {frames:?}");
    assert!(frames.iter().all(|e| e.id.is_none()), "an event came from the new stream: {frames:?}");
    assert_eq!(gw.metric("sse_gateway_events_in_total{channel=\"deals\"}").await, taken, "the new stream was read");
    assert_eq!(gw.metric("sse_gateway_source_up{channel=\"deals\"}").await, Some(0.0), "the source stays stopped");
}

/// A starting gateway reads the stream's last chunk for its buffers: a client that had every
/// event resumes from memory, not by reading the stream back. Streams opened meanwhile, from the
/// gateway's first moment to after it is ready, get none of that history as if it were new:
/// only what is published after they opened. A publisher's retry of that history that comes
/// live is dropped, as the live source drops any retry.
async fn a_starting_gateway_reads_recent_history_for_resumes_and_sends_it_to_no_new_stream(bin: Bin) {
    let setup = StreamSetup::new(ConfigBuilder::new(), &amqp_url()).await;
    let alice = user("alice", &[]);
    let (mut msgs, old) = setup.messages(301);
    // The last one (the stream's last chunk may hold only it) carries a message_id.
    msgs[300].message_id = Some(format!("mid-{}", old[300]));
    let retry = msgs[300].clone();
    let last = setup.read_then_killed(bin, &alice, &msgs, &old).await;
    // Older than the slack with which streams open before the first consumer are owed what
    // came since the gateway started (a second, plus up to one of the timestamps' resolution).
    ::tokio::time::sleep(Duration::from_millis(2500)).await;
    let gw = GatewayProcess::start_with_env(bin, &setup.config, &DEBUG).await;
    let mut fresh = streams_while_starting(&gw).await;
    let mut resumed = gw.stream_with("deals", &alice, &[("Last-Event-ID", &last)]).await;
    setup.broker.publish_all(&[retry]).await; // the publisher's retry
    let new = setup.publish(1).await;
    let got = read_events(&mut resumed, 1, "resumed after the restart").await;
    assert_eq!(got.titles, new);
    assert!(got.warnings.is_empty(), "{:?}", got.warnings);
    let log = gw.settled_log().await;
    assert!(!log.contains("reading the stream back"), "served from the buffer:\n{log}");
    assert_eq!(gw.metric("sse_gateway_events_dropped_total{channel=\"deals\",reason=\"duplicate\"}").await, Some(1.0));
    for (i, s) in fresh.iter_mut().enumerate() {
        let got = read_events(s, 1, &format!("stream {i}")).await;
        assert_eq!(got.titles, new, "stream {i} of {}: the first event it gets is the one published after it opened", fresh.len());
    }
}

/// Opens streams of new users from the gateway's first moment until 300 ms after it is ready.
async fn streams_while_starting(gw: &GatewayProcess) -> Vec<SseClient> {
    let mut fresh = Vec::new();
    let mut ready_at = None;
    while ready_at.is_none_or(|t: Instant| t.elapsed() < Duration::from_millis(300)) {
        let who = user(&format!("early-{}", fresh.len()), &[]);
        fresh.push(gw.stream("deals", &who).await);
        if ready_at.is_none() && gw.get("/readyz", &[]).await.status == 200 {
            ready_at = Some(Instant::now());
        }
    }
    fresh
}

/// A gateway restarted while events keep coming (one every 3 ms, from before it starts until
/// 50 after the resumed stream opened): the history read, the live consumer and the resumes
/// meet on a busy stream. A client that had the events before the restart gets every later one exactly once,
/// in order; each stream opened while it started gets an unbroken run of them, in order, up to
/// the last.
async fn a_gateway_restarted_while_events_keep_coming_resumes_and_streams_them_exactly(bin: Bin) {
    let setup = StreamSetup::new(ConfigBuilder::new(), &amqp_url()).await;
    let alice = user("alice", &[]);
    let (msgs, before) = setup.messages(20);
    let last = setup.read_then_killed(bin, &alice, &msgs, &before).await;
    // Enough for 10 s of publishing; it stops 50 events after the resumed stream opened.
    let (msgs, titles) = setup.messages(3000);
    let opened = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = ::tokio::spawn({
        let opened = opened.clone();
        async move {
            let broker = Broker::connect().await;
            let mut after = 0;
            for (i, m) in msgs.iter().enumerate() {
                broker.publish(m).await;
                ::tokio::time::sleep(Duration::from_millis(3)).await;
                after += usize::from(opened.load(Ordering::Relaxed));
                if after == 50 {
                    return i + 1;
                }
            }
            panic!("the resumed stream had not opened after {} events", msgs.len());
        }
    });
    ::tokio::time::sleep(Duration::from_millis(300)).await;
    let gw = GatewayProcess::start(bin, &setup.config).await;
    let mut fresh = streams_while_starting(&gw).await;
    let mut resumed = gw.stream_with("deals", &alice, &[("Last-Event-ID", &last)]).await;
    opened.store(true, Ordering::Relaxed);
    let titles = &titles[..publisher.await.expect("the publisher")];
    let got = read_events(&mut resumed, titles.len(), "resumed").await;
    assert!(got.warnings.is_empty(), "{:?}", got.warnings);
    assert_eq!(got.titles, titles, "resumed: every event after its own, once, in order");
    assert_increasing(&got.ids, "resumed");
    // Those opened before the first consumer are owed what came since the start (and a little
    // before): a run of everything published, which may begin before the restart.
    let all: Vec<String> = before.iter().chain(titles).cloned().collect();
    let end = all.last().unwrap().clone();
    for (i, s) in fresh.iter_mut().enumerate() {
        let mut run = Vec::new();
        while run.last() != Some(&end) {
            let ev = s.next_non_heartbeat(3 * WAIT).await.unwrap_or_else(|| panic!("stream {i}: silent after {run:?}"));
            // Opened at the start: a broker slower to answer than 2 s is reported to them.
            if ev.id.is_none() && ev.event == "warning" && ev.json()["code"] == "source_unavailable" {
                continue;
            }
            assert!(ev.id.is_some() && ev.event != "error", "stream {i}: {ev:?}");
            run.push(title(&ev.data));
        }
        let from = all.iter().position(|t| *t == run[0]).unwrap_or_else(|| panic!("stream {i}: {} was never published", run[0]));
        assert_eq!(run, all[from..], "stream {i} of {}: an unbroken run, in order, once", fresh.len());
    }
}

/// A publisher's own `x-stream-offset` header, which RabbitMQ keeps beside its own (its own
/// first), is not the offset: a large one read as lost retention (`history_gap` to every stream),
/// then the next message as a recreated stream (the source stopped until an operator came); one
/// of another type as a message without an offset (the source failed on it after every
/// reconnect). Live, from the history read at a restart, and in a resume after it.
async fn a_publishers_own_x_stream_offset_header_is_not_the_offset(bin: Bin) {
    let setup = StreamSetup::new(ConfigBuilder::new().fast_outage(), &amqp_url()).await;
    let gw = setup.start(bin).await;
    let carol = user("carol", &[]);
    let mut s = gw.stream("deals", &carol).await;
    let mut want = setup.publish(1).await;
    let (forged, titles) = setup.messages(2);
    let name = || b"x-stream-offset".to_vec();
    let headers = [
        vec![(name(), long_long(999_999)), (name(), long_long(777_777))],
        vec![(name(), text(b"x")), (name(), text(b"y"))],
    ];
    for (i, (m, headers)) in forged.iter().zip(headers).enumerate() {
        raw_publish(&RawMessage {
            exchange: m.exchange.clone(),
            routing_key: m.routing_key.clone(),
            kind: b"deal.created".to_vec(),
            message_id: format!("forged-offset-{i}").into_bytes(),
            headers,
            body: m.body.clone(),
        });
    }
    want.extend(titles);
    want.extend(setup.publish(2).await);
    let got = read_events(&mut s, want.len(), "live, around the forged headers").await;
    assert_eq!(got.titles, want, "live: every event, in order");
    assert!(got.warnings.is_empty(), "live: no warning: {:?}", got.warnings);
    assert_increasing(&got.ids, "live");
    assert!(got.ids.iter().all(|id| offset(id) < 1000), "an id from a forged header: {:?}", got.ids);
    nothing_more(&setup, &mut s, "live").await;
    assert_eq!(gw.metric("sse_gateway_source_up{channel=\"deals\"}").await, Some(1.0), "the source runs");
    assert_eq!(gw.stderr().matches("connected to the broker").count(), 1, "one connection all along:\n{}", gw.stderr());
    drop(s);
    drop(gw);

    // Restarted: its history read takes the same messages; a client that had the first event
    // resumes to exactly the rest, the marker included.
    let gw = setup.start(bin).await;
    let mut s = gw.stream_with("deals", &carol, &[("Last-Event-ID", &got.ids[0])]).await;
    let rest = read_events(&mut s, want.len(), "resumed after a restart").await;
    assert!(rest.warnings.is_empty(), "resumed: no warning: {:?}", rest.warnings);
    assert_eq!(rest.ids[..want.len() - 1], got.ids[1..], "resumed: the same ids");
    assert_eq!(rest.titles[..want.len() - 1], want[1..], "resumed: the same events under them");
    nothing_more(&setup, &mut s, "resumed").await;
}

for_each_binary!(
    a_publishers_own_x_stream_offset_header_is_not_the_offset,
    a_gateway_restarted_while_events_keep_coming_resumes_and_streams_them_exactly,
    a_starting_gateway_reads_recent_history_for_resumes_and_sends_it_to_no_new_stream,
    streams_opened_before_the_broker_is_reached_get_everything_published_since,
    a_read_back_drops_a_publishers_retry_as_the_live_consumer_did,
    a_source_that_took_nothing_after_its_history_read_resumes_from_its_end_after_an_outage,
    a_stream_deleted_under_the_gateway_stops_the_source_instead_of_reusing_ids,
    a_stream_deleted_before_any_live_event_stops_the_source_too,
    a_stream_recreated_and_refilled_during_an_outage_stops_the_source,
    a_stream_recreated_during_an_outage_before_any_live_event_stops_the_source,
    a_stream_recreated_shorter_during_an_outage_keeps_the_source_down,
    a_client_resumes_exactly_across_a_gateway_killed_and_restarted,
    a_client_moves_between_two_instances_with_its_last_event_id,
    a_cold_replay_reads_a_thousand_events_back_from_the_stream_then_goes_live,
    a_storm_of_a_thousand_resumes_gets_exact_replays_in_bounded_memory,
    read_backs_for_clients_that_stop_reading_give_their_turn_up,
    a_resume_before_the_broker_answers_a_restarted_instance_is_read_back_once_it_does,
    a_resume_waits_for_a_broker_slower_than_the_outage_warning_after_a_restart,
    a_broker_outage_delivers_what_the_stream_kept_afterwards,
    a_source_that_took_nothing_before_an_outage_delivers_what_came_during_it,
    an_id_older_than_the_retention_gets_history_gap,
    a_stream_that_lost_events_during_an_outage_says_history_gap_then_goes_on,
    a_read_back_that_gets_nothing_at_all_says_history_gap,
    a_resume_past_the_streams_end_says_history_gap_though_messages_keep_coming,
    a_read_back_that_cannot_connect_says_history_gap_and_logs_why_at_warn,
);
