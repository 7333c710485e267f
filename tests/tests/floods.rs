//! Floods, each in a test process of its own so that no other scenario's timings run beside
//! them: ten thousand garbage or half-open connections do not cost a hundred valid streams a
//! single event, and connections without a whole head are shed when file descriptors run out.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use sse_gateway_tests::payloads::valid_text;
use sse_gateway_tests::rng::Rng;
use sse_gateway_tests::token::user;
use sse_gateway_tests::{for_each_binary, Bin, ConfigBuilder, Fixture, GatewayProcess, SseClient, WAIT};
use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
use ::tokio::net::{TcpSocket, TcpStream};

const GARBAGE: usize = 10_000;
const STREAMS: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Garbage {
    RandomBytes,
    PartialHead,
    Idle,
}

/// Opens `count` connections to `addr` from source address `from`, each sent its kind of
/// garbage; returns them open.
async fn open_garbage(addr: SocketAddr, from: Ipv4Addr, first: usize, count: usize, seed: u64) -> Vec<(Garbage, TcpStream)> {
    let mut rng = Rng::new(seed);
    let mut conns = Vec::with_capacity(count);
    for i in first..first + count {
        let sock = TcpSocket::new_v4().expect("a socket");
        sock.bind(SocketAddr::new(from.into(), 0)).unwrap_or_else(|e| panic!("bind {from}: {e}"));
        let mut s = ::tokio::time::timeout(WAIT, sock.connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connection {i} from {from} not accepted within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("connection {i} from {from}: {e}"));
        let kind = [Garbage::RandomBytes, Garbage::PartialHead, Garbage::Idle][i % 3];
        let bytes = match kind {
            Garbage::RandomBytes => {
                let len = 1 + rng.below(512);
                rng.bytes(len)
            }
            Garbage::PartialHead => {
                let full = b"GET /api/v1/streams/deals HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\nAuthorization: Bearer eyJhbGciOi";
                full[..1 + rng.below(full.len() - 1)].to_vec()
            }
            Garbage::Idle => Vec::new(),
        };
        // The server may already have answered and closed (random bytes): ignore write errors.
        let _ = s.write_all(&bytes).await;
        conns.push((kind, s));
    }
    conns
}

/// Reads `s` until the marker; returns the data before it (a task of its own per stream).
async fn data_until(mut s: SseClient, marker: String, who: String) -> Vec<String> {
    s.data_until(&marker, &who).await
}

/// One flood at a time in this test process: the tokio and smol cases of the scenario run in
/// parallel threads of the same process, and two floods would not fit its file descriptors.
static ONE_FLOOD_AT_A_TIME: ::tokio::sync::Mutex<()> = ::tokio::sync::Mutex::const_new(());

async fn ten_thousand_garbage_connections_cost_a_hundred_streams_nothing(bin: Bin) {
    let _flood = ONE_FLOOD_AT_A_TIME.lock().await;
    // Client side: 10,000 garbage + 100 streams + the rest, under the 20,000 hard limit.
    let limit = rlimit::increase_nofile_limit(19_000).expect("raise RLIMIT_NOFILE");
    assert!(limit as usize > GARBAGE + STREAMS + 500, "RLIMIT_NOFILE only {limit}");
    // Half-open heads stay half-open for the whole scenario: nothing is cut off by the timeout.
    let cfg = ConfigBuilder::new().str("server", "head_timeout", "120s");
    let fx = Fixture::start(bin, cfg).await;
    let rss_start = fx.gw.rss_kib();

    let mut readers = Vec::new();
    let marker = valid_text("deal.updated");
    for i in 0..STREAMS {
        let who = format!("u{i}");
        let s = fx.gw.stream("deals", &user(&who, &[])).await;
        readers.push(::tokio::spawn(data_until(s, marker.clone(), who)));
    }
    fx.gw.wait_metric("sse_gateway_streams_open{channel=\"deals\"}", STREAMS as f64).await;

    // Open the garbage from ten source addresses at once (1,000 each) while publishing.
    let addr = fx.gw.addr;
    let started = Instant::now();
    let opening = ::tokio::spawn(async move {
        let mut openers = ::tokio::task::JoinSet::new();
        for k in 0..10usize {
            let from = Ipv4Addr::new(127, 0, 0, 2 + k as u8);
            let per = GARBAGE / 10;
            openers.spawn(open_garbage(addr, from, k * per, per, 0x5eed_0000 + k as u64));
        }
        let mut all = Vec::with_capacity(GARBAGE);
        while let Some(r) = openers.join_next().await {
            all.extend(r.expect("an opener"));
        }
        all
    });
    let mut sent = Vec::new();
    while !opening.is_finished() {
        let body = valid_text("deal.created");
        fx.publish("deals", "deal.created", &body).await;
        sent.push(body);
        sse_gateway_tests::sleep(Duration::from_millis(5)).await;
    }
    let garbage = opening.await.expect("the openers");
    let opened_in = started.elapsed();
    let during_opening = sent.len();
    assert_eq!(garbage.len(), GARBAGE);
    let rss_held = fx.gw.rss_kib();

    // Every garbage connection open at once: publish more, check health, then the marker.
    let more: Vec<String> = (0..200).map(|i| valid_text(["deal.created", "deal.updated", "calculation.added"][i % 3])).collect();
    let kinds = ["deal.created", "deal.updated", "calculation.added"];
    let msgs: Vec<_> = more.iter().enumerate().map(|(i, b)| fx.msg("deals", kinds[i % 3], b)).collect();
    fx.publish_all(&msgs).await;
    sent.extend(more);
    assert_eq!(fx.gw.get("/healthz", &[]).await.status, 200, "/healthz with {GARBAGE} garbage connections open");
    fx.publish("deals", "deal.updated", &marker).await;

    for (i, r) in readers.into_iter().enumerate() {
        let got = ::tokio::time::timeout(6 * WAIT, r).await.unwrap_or_else(|_| panic!("u{i} still reading")).expect("a reader");
        assert_eq!(got.len(), sent.len(), "u{i} got {} of {} events", got.len(), sent.len());
        assert!(got == sent, "u{i} got the events out of order or altered");
    }

    // What became of the garbage: answered (400 to random bytes), closed, or still held.
    let (mut answered, mut closed, mut held) = (0usize, 0usize, 0usize);
    let mut buf = [0u8; 1024];
    for (kind, s) in &garbage {
        match s.try_read(&mut buf) {
            Ok(0) => closed += 1,
            Ok(n) => {
                assert!(!buf[..n].starts_with(b"HTTP/1.1 200"), "{kind:?} garbage was answered 200");
                assert!(buf[..n].starts_with(b"HTTP/1.1 4"), "{kind:?} garbage got {:?}", String::from_utf8_lossy(&buf[..n]));
                answered += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held += 1,
            Err(_) => closed += 1,
        }
    }
    let healthz = fx.gw.get("/healthz", &[]).await.status;
    drop(garbage);
    sse_gateway_tests::sleep(Duration::from_millis(500)).await;
    let rss_after = fx.gw.rss_kib();
    eprintln!(
        "{}: {GARBAGE} garbage connections opened in {opened_in:?} ({during_opening} events published meanwhile, {} in all); \
         {answered} answered 4xx, {closed} closed, {held} still held; gateway RSS {rss_start} KiB at start, \
         {rss_held} KiB with the garbage open, {rss_after} KiB after it was dropped",
        bin.file_name(),
        sent.len()
    );
    assert_eq!(healthz, 200);
    assert_eq!(fx.gw.get("/healthz", &[]).await.status, 200, "/healthz after the garbage left");

    // And it still serves new streams.
    let mut late = fx.gw.stream("deals", &user("late", &[])).await;
    let last = valid_text("deal.created");
    fx.publish("deals", "deal.created", &last).await;
    assert_eq!(late.expect_event("an event on a stream opened after the flood").await.data, last);
}

/// Out of file descriptors, connections that have not sent a whole request head a second after
/// their accept (silent ones, and one trickling a head) are shed: closed unanswered and counted,
/// so that a probe and a stream request are answered, not left in the accept queue until the
/// head timeout (here longer than the test) frees a descriptor. A stream opened before, and a
/// publish whose head came whole before (its body half sent), are not touched.
async fn connections_without_a_whole_head_are_shed_when_descriptors_run_out(bin: Bin) {
    // Not beside the other binary's flood (a stalled main thread would leave the half heads
    // unread at the shed, and spared: nothing sheds again once descriptors are free).
    let _flood = ONE_FLOOD_AT_A_TIME.lock().await;
    // One worker: each holds a few descriptors of its own, the rest are the connections'.
    let cfg = ConfigBuilder::new()
        .str("server", "head_timeout", "600s")
        .raw("server", "workers", "1")
        .raw("server", "publish_endpoint", "true")
        .render();
    let gw = GatewayProcess::start_with_open_files(bin, &cfg, 200).await;
    let mut before = gw.stream("deals", &user("bob", &[])).await;
    let body = serde_json::json!({"type": "deal.updated", "data": sse_gateway_tests::payloads::valid("deal.updated")}).to_string();
    let head = format!(
        "POST /api/v1/publish/deals HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        user("svc", &["publisher"]),
        body.len()
    );
    let mut publish = TcpStream::connect(gw.addr).await.expect("connect");
    publish.write_all(head.as_bytes()).await.expect("the head");
    publish.write_all(&body.as_bytes()[..body.len() / 2]).await.expect("half the body");
    // More than the gateway can hold: the rest wait in its accept queue.
    let mut idle = Vec::new();
    for i in 0..260 {
        let mut c = TcpStream::connect(gw.addr).await.expect("connect");
        if i % 10 == 0 {
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n").await.expect("half a head");
        }
        idle.push(c);
    }
    // Each waits in the queue behind them (the request helpers give up after WAIT).
    let health = gw.request("GET", "/healthz", &[], b"").await;
    assert_eq!(health.status, 200, "{health:?}");
    let _stream = gw.stream("deals", &user("alice", &[])).await; // asserts its 200
    let shed = gw.metric("sse_gateway_connections_shed_total").await.expect("the counter");
    assert!(shed >= 20.0, "{shed} shed");
    // The first connections (accepted first, each a second old at the first failed accept after
    // that) were closed unanswered, the half heads among them.
    for (i, c) in idle.iter_mut().take(20).enumerate() {
        let mut got = Vec::new();
        let read = ::tokio::time::timeout(WAIT, c.read_to_end(&mut got)).await;
        assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "connection {i} still open");
        assert!(got.is_empty(), "connection {i} was answered: {:?}", String::from_utf8_lossy(&got));
    }
    // The publish, its head whole before the descriptors ran out, was not shed: the rest of its
    // body is taken (202), and the stream opened before delivers its event.
    publish.write_all(&body.as_bytes()[body.len() / 2..]).await.expect("the rest of the body");
    let mut answer = Vec::new();
    let read = ::tokio::time::timeout(WAIT, publish.read_to_end(&mut answer)).await;
    assert!(matches!(read, Ok(Ok(_))), "the publish's answer: {read:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let ev = before.next_with_id(WAIT).await.expect("the event on the stream opened before");
    assert_eq!(ev.event, "deal.updated", "{ev:?}");
}

for_each_binary!(
    connections_without_a_whole_head_are_shed_when_descriptors_run_out,
    ten_thousand_garbage_connections_cost_a_hundred_streams_nothing,
);
