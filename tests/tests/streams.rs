//! Life of an open stream: heartbeats (D7), token expiry (D1), the per-user limit (D9), and the
//! open-streams gauge returning to zero (D13).

use std::time::Duration;

use futures_lite::future;

use sse_gateway_tests::payloads::valid_text;
use sse_gateway_tests::token::user;
use sse_gateway_tests::{for_each_binary, sleep, token, Bin, ConfigBuilder, Fixture, GatewayProcess, SseClient, SECRET, WAIT};

/// Heartbeats follow `streams.heartbeat`: a stream of a gateway at 1s gets three before one of a
/// gateway at 10s gets its first, and that one comes too (an order, not a clock reading: the
/// 10-s stream's first is due 7 s after the 1-s stream's third).
async fn heartbeats_come_at_the_configured_interval_not_the_default(bin: Bin) {
    let fast = GatewayProcess::start(bin, &ConfigBuilder::new().str("streams", "heartbeat", "1s").render()).await;
    let slow = GatewayProcess::start(bin, &ConfigBuilder::new().str("streams", "heartbeat", "10s").render()).await;
    let mut f = fast.stream("deals", &user("alice", &[])).await;
    let mut s = slow.stream("deals", &user("alice", &[])).await;
    let heartbeat = |ev: &sse_gateway_tests::SseEvent| (ev.event.as_str(), ev.data.as_str(), ev.id.as_deref()) == ("heartbeat", "", None);
    let first_slow = async { s.next_event(2 * WAIT).await };
    let three_fast = async {
        for n in 1..=3 {
            let ev = f.next_event(WAIT).await.unwrap_or_else(|| panic!("heartbeat {n} at 1s did not come"));
            assert!(heartbeat(&ev), "{ev:?}");
        }
    };
    // Three at 1s first; then the one at 10s comes too.
    let slow_first = future::or(async { Some(first_slow.await) }, async {
        three_fast.await;
        None
    })
    .await;
    assert!(slow_first.is_none(), "a heartbeat at 10s came before three at 1s: {slow_first:?}");
    let ev = s.next_event(2 * WAIT).await.expect("the heartbeat at 10s");
    assert!(heartbeat(&ev), "{ev:?}");
}

async fn a_token_expiring_mid_stream_ends_it_with_token_expired(bin: Bin) {
    // Heartbeats every second: the stream shows it lived before its token ran out.
    let cfg = ConfigBuilder::new().raw("auth", "leeway_secs", "0").str("streams", "heartbeat", "1s");
    let gw = GatewayProcess::start(bin, &cfg.render()).await;
    let mut s = gw.stream("deals", &token(SECRET, "alice", &[], 8)).await; // exp 7-8 s ahead: room to open on a slow machine
    let events = s.until_closed(2 * WAIT).await.expect("the stream closes when its token expires");
    let last = events.iter().rev().find(|e| e.event != "heartbeat").expect("an error frame before the close");
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(last.json()["code"], "token_expired");
    assert_eq!(last.id, None);
    // Mid-stream: open for a while first (closed at once, by a wrong expiry, it would have had
    // no heartbeat), and nothing but heartbeats before the error.
    let (error, before) = events.split_last().expect("the error frame");
    assert_eq!(error.event, "error");
    assert!(!before.is_empty(), "the stream closed with token_expired before its first heartbeat: {events:?}");
    assert!(before.iter().all(|e| e.event == "heartbeat"), "{events:?}");
}

async fn the_open_streams_gauge_counts_streams_and_returns_to_zero(bin: Bin) {
    let gw = GatewayProcess::start(bin, &ConfigBuilder::new().render()).await;
    let a = gw.stream("deals", &user("alice", &[])).await;
    let b = gw.stream("deals", &user("bob", &[])).await;
    let c = gw.stream("tasks", &user("bob", &[])).await;
    gw.wait_metric("sse_gateway_streams_open{channel=\"deals\"}", 2.0).await;
    gw.wait_metric("sse_gateway_streams_open{channel=\"tasks\"}", 1.0).await;
    drop(a);
    gw.wait_metric("sse_gateway_streams_open{channel=\"deals\"}", 1.0).await;
    drop((b, c));
    gw.wait_metric("sse_gateway_streams_open{channel=\"deals\"}", 0.0).await;
    gw.wait_metric("sse_gateway_streams_open{channel=\"tasks\"}", 0.0).await;
}

/// Tries to open `channel` for `tok` until it is accepted, every 200 ms, within [`WAIT`];
/// every refusal on the way must be a 409 `stream_limit`.
async fn open_once_allowed(gw: &GatewayProcess, channel: &str, tok: &str) -> sse_gateway_tests::SseClient {
    let auth = format!("Bearer {tok}");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut s = gw.open(&format!("/api/v1/streams/{channel}"), &[("Authorization", &auth)]).await;
        if s.status == 200 {
            return s;
        }
        assert_eq!(s.status, 409, "only a 409 may refuse it while the oldest stream is young");
        assert_eq!(s.json_body().await["code"], "stream_limit");
        assert!(std::time::Instant::now() < deadline, "still 409 after {WAIT:?}");
        sleep(Duration::from_millis(200)).await;
    }
}

async fn past_the_limit_a_young_oldest_stream_means_409_and_an_older_one_is_evicted(bin: Bin) {
    let cfg = ConfigBuilder::new()
        .raw("streams", "max_per_user", "2")
        // Room for three opens in a row on a busy machine before the oldest comes of age.
        .str("streams", "min_stream_age", "5s")
        .str("streams", "limit_policy", "evict_oldest");
    let fx = Fixture::start(bin, cfg).await;
    let alice = user("alice", &[]);
    let mut oldest = fx.gw.stream("deals", &alice).await;
    let mut second = fx.gw.stream("tasks", &alice).await;

    // Both of alice's streams are younger than min_stream_age: the third is refused.
    let mut third = fx.gw.open("/api/v1/streams/deals", &[("Authorization", &format!("Bearer {alice}"))]).await;
    assert_eq!(third.status, 409);
    let body = third.json_body().await;
    assert_eq!(body["code"], "stream_limit", "{body}");
    assert!(body["message"].is_string(), "{body}");

    // The limit is per user: bob is not affected.
    let mut bob = fx.gw.stream("deals", &user("bob", &[])).await;

    // Once the oldest is old enough, the newcomer evicts it.
    let mut newest = open_once_allowed(&fx.gw, "deals", &alice).await;
    let events = oldest.until_closed(WAIT).await.expect("the evicted stream is closed");
    let errors: Vec<_> = events.iter().filter(|e| e.event == "error").collect();
    assert_eq!(errors.len(), 1, "{events:?}");
    assert_eq!(errors[0].json()["code"], "stream_limit");
    // With `streams.evicted_retry` (60 s): back after the stream's few seconds, a native
    // EventSource would evict alice's next oldest stream, that one the next, and so on.
    let retry = oldest.retry().expect("a retry: field");
    assert!((60_000..=62_000).contains(&retry), "the evicted stream's retry: {retry}");

    // The others stay and keep receiving.
    let deal = valid_text("deal.created");
    fx.publish("deals", "deal.created", &deal).await;
    let task = valid_text("task.created");
    fx.publish("tasks", "task.created", &task).await;
    assert_eq!(newest.expect_event("the deal on the new stream").await.data, deal);
    assert_eq!(bob.expect_event("the deal on bob's stream").await.data, deal);
    assert_eq!(second.expect_event("the task on the second stream").await.data, task);
    assert!(second.still_open().await && newest.still_open().await);

    fx.gw.wait_metric("sse_gateway_evictions_total", 1.0).await;
    assert!(fx.gw.metric("sse_gateway_stream_limit_rejections_total").await >= Some(1.0));
}

async fn with_the_reject_policy_the_limit_always_answers_409(bin: Bin) {
    let cfg = ConfigBuilder::new()
        .raw("streams", "max_per_user", "1")
        .str("streams", "min_stream_age", "0s")
        .str("streams", "limit_policy", "reject");
    let gw = GatewayProcess::start(bin, &cfg.render()).await;
    let alice = user("alice", &[]);
    let mut first = gw.stream("deals", &alice).await;
    sleep(Duration::from_millis(300)).await;
    let mut second = gw.open("/api/v1/streams/tasks", &[("Authorization", &format!("Bearer {alice}"))]).await;
    assert_eq!(second.status, 409);
    assert_eq!(second.json_body().await["code"], "stream_limit");
    let early = first.events_within(Duration::from_millis(300)).await;
    assert!(early.iter().all(|e| e.event != "error") && !first.is_closed(), "{early:?}");
    assert_eq!(gw.metric("sse_gateway_evictions_total").await, Some(0.0), "nothing evicted under the reject policy");
}

/// A storm of requests into a user's limit: a shard writes `stream refused` lines for a burst
/// of them, then a few a second, and sums up the rest (here at shutdown): every refusal is
/// either a line or counted in a summary, and far fewer lines are written than refusals.
async fn a_shards_refusals_are_logged_in_a_burst_and_the_rest_summed_up(bin: Bin) {
    const REFUSED: usize = 1000;
    let cfg = ConfigBuilder::new()
        .raw("streams", "max_per_user", "1")
        .str("streams", "limit_policy", "reject")
        .str("server", "shutdown_drain", "1s");
    let mut gw = GatewayProcess::start(bin, &cfg.render()).await;
    let alice = user("alice", &[]);
    let bearer = format!("Bearer {alice}");
    let first = gw.stream("deals", &alice).await;
    // Four clients at once: the 1,000 take well under the 40 s after which a slow machine's
    // lines (a burst of 200, then 20 a second) could reach the number of refusals.
    let refuse = |n: usize| {
        let (gw, bearer) = (&gw, &bearer);
        async move {
            for _ in 0..n {
                let r = gw.open("/api/v1/streams/tasks", &[("Authorization", bearer)]).await;
                assert_eq!(r.status, 409);
            }
        }
    };
    let quarter = REFUSED / 4;
    let started = std::time::Instant::now();
    future::zip(future::zip(refuse(quarter), refuse(quarter)), future::zip(refuse(quarter), refuse(quarter))).await;
    gw.terminate();
    gw.wait_exit(3 * WAIT).await.expect("the gateway stops");
    drop(first);
    let log = gw.log_until(WAIT, |l| l.contains("stopped")).await;
    let (lines, summed) = sse_gateway_tests::lines_and_summed(&log, "stream refused", "refused without a line of their own", "refused");
    assert_eq!(lines + summed, REFUSED, "{lines} lines and {summed} summed up for {REFUSED} refusals");
    // Lines can only have come at the rule's pace since the refusals began.
    sse_gateway_tests::assert_rate_limited(lines, REFUSED, started, "refusals");
}

/// `server.max_streams` split between two workers: each shard holds its share, and a stream past
/// it gets 503 `overloaded` (not a hang, not a stream), while the streams already open go on.
async fn streams_past_the_process_bound_get_503_overloaded(bin: Bin) {
    let cfg = ConfigBuilder::new().raw("server", "workers", "2").raw("server", "max_streams", "4");
    let fx = Fixture::start(bin, cfg).await;
    // (`/readyz` may have answered 503 while the broker was being reached.)
    let before = fx.gw.metric("sse_gateway_http_responses_total{status=\"503\"}").await.expect("the sample is on /metrics");
    let (mut open, mut refused) = (Vec::new(), 0);
    // Users spread over both shards (by a hash of their id): each shard takes 2.
    for i in 0..12 {
        let mut s = fx.gw.open("/api/v1/streams/deals", &[("Authorization", &format!("Bearer {}", user(&format!("u{i}"), &[])))]).await;
        match s.status {
            200 => open.push(s),
            503 => {
                assert_eq!(s.json_body().await["code"], "overloaded");
                refused += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert_eq!((open.len(), refused), (4, 8), "4 streams held (2 per shard), the rest refused");
    assert_eq!(fx.gw.metric("sse_gateway_http_responses_total{status=\"503\"}").await, Some(before + 8.0));
    // The streams held go on: each gets the next event.
    let body = valid_text("deal.created");
    fx.publish("deals", "deal.created", &body).await;
    for s in &mut open {
        let ev = s.next_with_id(WAIT).await.expect("an event on a stream held");
        assert_eq!(ev.data, body, "{ev:?}");
    }
}

/// Reads `s` until the marker; returns the data before it, counting each event in `progress`.
async fn data_until(
    mut s: sse_gateway_tests::SseClient,
    marker: String,
    who: String,
    progress: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let ev = s.next_with_id(3 * WAIT).await.unwrap_or_else(|| {
            panic!("{who}: stream {} after {} events", if s.is_closed() { "closed" } else { "silent" }, seen.len())
        });
        // Not an error, nor a warning (a history_gap: something was lost).
        assert!(ev.event != "error" && ev.id.is_some(), "{who}: {ev:?}");
        if ev.data == marker {
            return seen;
        }
        seen.push(ev.data);
        progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// D11: a client that stops reading is closed once its unsent output passes
/// `streams.max_pending_bytes`, while a hundred others get every event, and the gateway's memory
/// stays bounded (its RSS is reported).
async fn a_client_that_stops_reading_is_closed_without_delaying_a_hundred_others(bin: Bin) {
    const READERS: usize = 100;
    const EVENT_BYTES: usize = 16 * 1024;
    const MAX_EVENTS: usize = 1000; // 16 MB: far past the kernel buffers and the 256 KiB bound
    let fx = Fixture::start(bin, ConfigBuilder::new().raw("streams", "max_pending_bytes", "262144")).await;
    // A client that never reads, with a small receive buffer so the gateway's output backs up.
    let sock = ::tokio::net::TcpSocket::new_v4().expect("a socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stalled = sock.connect(fx.gw.addr).await.expect("connect");
    let auth = format!("Bearer {}", user("sloth", &[]));
    sse_gateway_tests::http::write_get(
        &mut stalled,
        fx.gw.addr,
        "/api/v1/streams/deals",
        &[("Accept", "text/event-stream"), ("Authorization", &auth)],
    )
    .await;
    fx.gw.wait_metric("sse_gateway_streams_open{channel=\"deals\"}", 1.0).await;

    // A hundred clients that read everything, concurrently.
    let marker = valid_text("deal.updated");
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = Vec::with_capacity(READERS);
    for i in 0..READERS {
        let who = format!("hare{i}");
        let s = fx.gw.stream("deals", &user(&who, &[])).await;
        readers.push(::tokio::spawn(data_until(s, marker.clone(), who, progress.clone())));
    }
    fx.gw.wait_metric("sse_gateway_streams_open{channel=\"deals\"}", (READERS + 1) as f64).await;
    let rss_before = fx.gw.rss_kib();

    // Publish as fast as the broker confirms until the stalled client is closed at its bound.
    // The readers keep up: the gateway must let their writers run between events (a burst of
    // events queued in a shard once overran the readers' 256 KiB bound before any writer ran:
    // every reader was closed as slow; the close reasons and the readers' progress are in the
    // failure message).
    let closed = "sse_gateway_streams_closed_total{reason=\"slow_client\"}";
    let mut sent = Vec::new();
    let mut rss_peak = rss_before;
    while fx.gw.metric(closed).await.expect("the sample is on /metrics") < 1.0 {
        if sent.len() >= MAX_EVENTS {
            let m = fx.gw.metrics().await;
            let closes: Vec<&str> = m.lines().filter(|l| l.starts_with("sse_gateway_streams_closed_total{")).collect();
            panic!(
                "the stalled client is still open after {} events of {EVENT_BYTES} bytes; gateway RSS {} KiB \
                 (at start {rss_before} KiB); the readers had {} of {} events; {closes:?}",
                sent.len(),
                fx.gw.rss_kib(),
                progress.load(std::sync::atomic::Ordering::Relaxed),
                READERS * sent.len()
            );
        }
        for _ in 0..4 {
            let mut v = sse_gateway_tests::payloads::valid("deal.created");
            v["title"] = format!("{}:{}", sent.len(), "x".repeat(EVENT_BYTES)).into();
            let body = v.to_string();
            fx.publish("deals", "deal.created", &body).await;
            sent.push(body);
        }
        rss_peak = rss_peak.max(fx.gw.rss_kib());
    }
    assert_eq!(fx.gw.metric(closed).await, Some(1.0), "only the stalled client was closed as slow");
    let until_closed = sent.len();
    // A few more after the close: the others keep getting everything.
    for _ in 0..20 {
        let body = valid_text("deal.created");
        fx.publish("deals", "deal.created", &body).await;
        sent.push(body);
    }
    fx.publish("deals", "deal.updated", &marker).await;
    for (i, r) in readers.into_iter().enumerate() {
        let got = ::tokio::time::timeout(6 * WAIT, r).await.unwrap_or_else(|_| panic!("hare{i} still reading")).unwrap();
        assert_eq!(got.len(), sent.len(), "hare{i} got {} of {} events", got.len(), sent.len());
        assert!(got == sent, "hare{i} got the events reordered or altered");
    }
    // The gateway really closed the stalled connection: what the kernel held, then the end.
    let mut drained = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let eof = ::tokio::time::timeout(WAIT, async {
        loop {
            match ::tokio::io::AsyncReadExt::read(&mut stalled, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "the stalled connection is still open ({drained} bytes read from it)");
    let rss_after = fx.gw.rss_kib();
    eprintln!(
        "{}: stalled client closed after {until_closed} events of ~{EVENT_BYTES} bytes ({drained} bytes had reached it); \
         {READERS} readers got all {} events; gateway RSS {rss_before} KiB before, {rss_peak} KiB at most while \
         publishing, {rss_after} KiB after",
        bin.file_name(),
        sent.len()
    );
    const BOUND_KIB: u64 = 200 * 1024;
    assert!(rss_peak < BOUND_KIB && rss_after < BOUND_KIB, "gateway RSS {rss_peak} / {rss_after} KiB past {BOUND_KIB} KiB");
}

async fn sigterm_sends_every_stream_a_retry_closes_them_and_exits(bin: Bin) {
    stop_sends_every_stream_a_retry_closes_them_and_exits(bin, GatewayProcess::terminate, ConfigBuilder::new()).await;
}

/// D12: SIGINT is a stop like SIGTERM.
async fn sigint_stops_the_gateway_as_sigterm_does(bin: Bin) {
    stop_sends_every_stream_a_retry_closes_them_and_exits(bin, GatewayProcess::interrupt, ConfigBuilder::new()).await;
}

/// With `shutdown_drain = "0s"` each stream still gets what its socket takes at once: its
/// `retry:` (the smol binary used to end its shards before their writers ran).
async fn sigterm_with_no_drain_still_sends_every_stream_its_retry(bin: Bin) {
    let cfg = ConfigBuilder::new().str("server", "shutdown_drain", "0s");
    stop_sends_every_stream_a_retry_closes_them_and_exits(bin, GatewayProcess::terminate, cfg).await;
}

async fn stop_sends_every_stream_a_retry_closes_them_and_exits(bin: Bin, stop: fn(&GatewayProcess), cfg: ConfigBuilder) {
    let mut gw = GatewayProcess::start(bin, &cfg.render()).await;
    let mut a = gw.stream("deals", &user("alice", &[])).await;
    let mut b = gw.stream("tasks", &user("bob", &[])).await;
    for s in [&mut a, &mut b] {
        assert!(s.until_retry_fields(1).await, "a retry: at the start");
        assert_eq!(s.retry_fields(), 1, "one retry: at the start");
    }
    stop(&gw);
    for (who, s) in [("alice", &mut a), ("bob", &mut b)] {
        s.until_closed(WAIT).await.unwrap_or_else(|| panic!("{who}'s stream still open after the signal"));
        assert_eq!(s.retry_fields(), 2, "{who}: a retry: before the close");
        assert!(s.retry().unwrap() > 0);
    }
    let status = gw.wait_exit(WAIT).await.expect("the gateway exits after the signal");
    assert!(status.success(), "exit status {status:?}");
}

/// Returns once the gateway has accepted every connection made before: it accepts them in
/// order, so a `/healthz` answered on a new one comes after them (a fixed sleep may not, on a
/// loaded machine).
async fn accepted_so_far(gw: &GatewayProcess) {
    let r = sse_gateway_tests::http::http_get(gw.addr, "/healthz", &[]).await;
    assert_eq!(r.status, 200, "/healthz: {r:?}");
}

/// D12: a request begun before SIGTERM is answered, not cut with the connection: a `/healthz`
/// whose head ends after the signal gets its 200, a stream request whose head ends then gets
/// 503 `overloaded` (the shards take no more streams), a publish 503 `unavailable` (its
/// event would reach no stream; one that asked for `100 Continue` gets its 503 at once, not a
/// `100` and a wait for a body it will not take), and `/readyz` 503 `not_ready` (a balancer sends
/// no new streams to a draining instance), each as a whole response and a close. A connection that had
/// sent nothing at the signal began no request: it is closed, and what it sends after is not
/// served.
async fn requests_begun_before_sigterm_are_answered(bin: Bin) {
    requests_begun_before_the_signal_are_answered(bin, ConfigBuilder::new()).await;
}

/// As [`requests_begun_before_sigterm_are_answered`] with `shutdown_drain = "0s"` (a
/// developer's machine): requests begun before the signal still get their time to finish (they
/// used to get at most the drain, here none).
async fn requests_begun_before_sigterm_are_answered_with_no_drain(bin: Bin) {
    requests_begun_before_the_signal_are_answered(bin, ConfigBuilder::new().str("server", "shutdown_drain", "0s")).await;
}

async fn requests_begun_before_the_signal_are_answered(bin: Bin, cfg: ConfigBuilder) {
    use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = cfg.raw("server", "publish_endpoint", "true");
    let mut gw = GatewayProcess::start(bin, &cfg.render()).await;
    let auth = format!("Authorization: Bearer {}\r\n", user("alice", &[]));
    let body = serde_json::json!({"type": "deal.created", "data": sse_gateway_tests::payloads::valid("deal.created")}).to_string();
    let heads = [
        "GET /healthz HTTP/1.1\r\nHost: gw\r\n".to_string(),
        format!("GET /api/v1/streams/deals HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\n{auth}"),
        format!(
            "POST /api/v1/publish/deals HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            user("svc", &["publisher"]),
            body.len()
        ),
        "GET /readyz HTTP/1.1\r\nHost: gw\r\n".to_string(),
        format!(
            "POST /api/v1/publish/deals HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 60000\r\nExpect: 100-continue\r\n",
            user("svc", &["publisher"]),
        ),
    ];
    let mut socks = Vec::new();
    for head in &heads {
        let mut s = ::tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
        s.write_all(head.as_bytes()).await.expect("all of the head but its blank line");
        socks.push(s);
    }
    let mut silent = ::tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    accepted_so_far(&gw).await;
    gw.terminate();
    let log = gw.log_until(WAIT, |l| l.contains("shutting down")).await;
    assert!(log.contains("shutting down"), "no shutdown line after SIGTERM:\n{log}");
    let mut answers = Vec::new();
    for (i, s) in socks.iter_mut().enumerate() {
        let rest = if i == 2 { format!("\r\n{body}") } else { "\r\n".to_string() };
        s.write_all(rest.as_bytes()).await.expect("the head's end, after the signal");
    }
    for s in &mut socks {
        let mut got = Vec::new();
        match ::tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("reset instead of an answer and a close: {e} (read {:?})", String::from_utf8_lossy(&got)),
            Err(_) => panic!("no close within {WAIT:?}: {:?}", String::from_utf8_lossy(&got)),
        }
        let end = sse_gateway_tests::http::head_end(&got).unwrap_or_else(|| panic!("no whole head: {:?}", String::from_utf8_lossy(&got)));
        answers.push((sse_gateway_tests::http::parse_head(&got[..end]), String::from_utf8_lossy(&got[end..]).into_owned()));
    }
    assert_eq!((answers[0].0.status, answers[0].1.as_str()), (200, "ok\n"), "/healthz: {:?}", answers[0]);
    let refusals = [(1, "the stream request", "overloaded"), (2, "the publish", "unavailable"), (3, "/readyz", "not_ready"), (4, "the publish expecting 100 Continue", "unavailable")];
    for (i, what, code) in refusals {
        assert_eq!(answers[i].0.status, 503, "{what}: {:?}", answers[i]);
        let refused: serde_json::Value = serde_json::from_str(&answers[i].1).expect("a JSON error body");
        assert_eq!(refused["code"], code, "{what}: {refused}");
    }
    // The silent one: closed (a request written now finds it closed, or is not answered).
    let _ = silent.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    let mut got = Vec::new();
    let read = ::tokio::time::timeout(WAIT, silent.read_to_end(&mut got)).await.expect("closed within WAIT");
    assert!(got.is_empty(), "a connection silent at the signal was served after it ({read:?}): {:?}", String::from_utf8_lossy(&got));
    let status = gw.wait_exit(WAIT).await.expect("the gateway exits after the signal");
    assert!(status.success(), "exit status {status:?}");
}

/// SIGHUP (a closed terminal, a `kill -HUP` meant as a reload) with no key file configured to read
/// again is logged and changes nothing: it used to end the process at once, every stream with it
/// and no drain. (With key files: hostile_tokens.rs.)
async fn sighup_is_logged_and_ends_nothing(bin: Bin) {
    let mut fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let mut s = fx.gw.stream("deals", &user("alice", &[])).await;
    fx.gw.hangup();
    const LINE: &str = "SIGHUP: no key file is configured";
    let log = fx.gw.log_until(WAIT, |l| l.contains(LINE)).await;
    assert!(log.contains(LINE), "no line for SIGHUP:\n{log}");
    let body = valid_text("deal.created");
    fx.publish("deals", "deal.created", &body).await;
    assert_eq!(s.expect_event("an event after SIGHUP").await.data, body);
    assert!(s.still_open().await, "the stream closed");
    assert!(fx.gw.is_running(), "the gateway stopped");
}

/// A stream for `sloth` whose client reads nothing, holding 8 MiB of output the gateway has not
/// written yet (the fixture's `max_pending_bytes` must allow it), and a stream for `hare` that
/// read everything; returns both connections.
async fn a_stalled_stream_and_a_reader(fx: &Fixture) -> (::tokio::net::TcpStream, SseClient) {
    const EVENT_BYTES: usize = 16 * 1024;
    let sock = ::tokio::net::TcpSocket::new_v4().expect("a socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stalled = sock.connect(fx.gw.addr).await.expect("connect");
    let auth = format!("Bearer {}", user("sloth", &[]));
    let path = "/api/v1/streams/deals";
    sse_gateway_tests::http::write_get(&mut stalled, fx.gw.addr, path, &[("Accept", "text/event-stream"), ("Authorization", &auth)]).await;
    let mut reader = fx.gw.stream("deals", &user("hare", &[])).await;
    fx.gw.wait_metric("sse_gateway_streams_open{channel=\"deals\"}", 2.0).await;
    // 8 MiB for a client that reads nothing: far past what the kernel's buffers take, well
    // inside its output bound, so its writer still has output when the signal comes.
    let mut last = String::new();
    for i in 0..512 {
        let mut v = sse_gateway_tests::payloads::valid("deal.created");
        v["title"] = format!("{i}:{}", "x".repeat(EVENT_BYTES)).into();
        last = v.to_string();
        fx.publish("deals", "deal.created", &last).await;
    }
    loop {
        let ev = reader.expect_event("the reader's events").await;
        if ev.data == last {
            break;
        }
    }
    assert_eq!(fx.gw.metric("sse_gateway_streams_open{channel=\"deals\"}").await, Some(2.0), "the stalled stream is still open");
    (stalled, reader)
}

/// D12's bound: a client that stopped reading cannot hold the shutdown past `shutdown_drain`.
async fn sigterm_exits_after_the_drain_time_even_with_a_client_that_stopped_reading(bin: Bin) {
    let cfg = ConfigBuilder::new().str("server", "shutdown_drain", "5s").raw("streams", "max_pending_bytes", "67108864");
    let mut fx = Fixture::start(bin, cfg).await;
    let (stalled, mut reader) = a_stalled_stream_and_a_reader(&fx).await;
    // A connection that has not sent its whole head: closed within a few seconds of the signal
    // (the time given to requests begun before it), not left open until the process exits.
    let mut silent = ::tokio::net::TcpStream::connect(fx.gw.addr).await.expect("connect");
    ::tokio::io::AsyncWriteExt::write_all(&mut silent, b"GET /api/v1/str").await.expect("part of a head");
    accepted_so_far(&fx.gw).await;

    fx.gw.terminate();
    reader.until_closed(WAIT).await.expect("the reading client's stream closes at SIGTERM");
    assert_eq!(reader.retry_fields(), 2, "a retry: before the close");
    let mut rest = Vec::new();
    let read = ::tokio::time::timeout(WAIT, ::tokio::io::AsyncReadExt::read_to_end(&mut silent, &mut rest)).await;
    // Closed by the gateway (an end of stream, not a reset: it had accepted the connection) while
    // it still drains the stalled stream, not as the process exited after the drain.
    match read {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("the connection without a head was reset, not closed: {e}"),
        Err(_) => panic!("the connection without a head is still open {WAIT:?} after SIGTERM"),
    }
    assert!(fx.gw.is_running(), "the connection without a head was closed only as the process exited, not at the signal");
    let status = fx.gw.wait_exit(3 * WAIT).await.expect("the gateway exits though a client stopped reading");
    assert!(status.success(), "exit status {status:?}");
    let drained = "shutdown drain time passed; closing the remaining streams";
    // The process's last line, `stopped`, comes after every `stream closed` line (the lines are
    // read from its stderr as they come: not all of them may be here at its exit).
    let log = fx.gw.log_until(WAIT, |l| l.lines().any(|l| l.trim_end().ends_with(" stopped"))).await;
    assert!(log.contains(drained), "the drain did not run out:\n{log}");
    // Both streams have their `stream closed` line, the one cut at the drain's end too.
    for who in ["hare", "sloth"] {
        let closed = log.lines().filter(|l| l.contains("stream closed") && l.contains(who) && l.contains("shutdown")).count();
        assert_eq!(closed, 1, "{who}: one `stream closed` line with reason shutdown:\n{log}");
    }
    drop(stalled);
}

/// An operator who will not wait for the drain: a second SIGTERM or SIGINT ends the process at
/// once (exit status 128 + the signal's number, said in the log), however long
/// `shutdown_drain` is; SIGTERM twice (`kill` again), then SIGTERM and SIGINT (Ctrl-C).
async fn a_second_signal_during_the_drain_exits_at_once(bin: Bin) {
    for (second, status) in [("TERM", 143), ("INT", 130)] {
        let cfg = ConfigBuilder::new().str("server", "shutdown_drain", "600s").raw("streams", "max_pending_bytes", "67108864");
        let mut fx = Fixture::start(bin, cfg).await;
        let (stalled, mut reader) = a_stalled_stream_and_a_reader(&fx).await;
        fx.gw.terminate();
        reader.until_closed(WAIT).await.expect("the reading client's stream closes at SIGTERM");
        assert!(fx.gw.is_running(), "draining the stalled stream");
        match second {
            "TERM" => fx.gw.terminate(),
            _ => fx.gw.interrupt(),
        }
        let exited = fx.gw.wait_exit(WAIT).await.expect("the second signal ends the process, not the 600 s drain");
        assert_eq!(exited.code(), Some(status), "SIGTERM then SIG{second}: exit status {exited:?}");
        let line = "a second SIGTERM or SIGINT: exiting without finishing the drain";
        let log = fx.gw.log_until(WAIT, |l| l.contains(line)).await;
        assert!(log.contains(line), "{log}");
        drop(stalled);
    }
}

for_each_binary!(
    a_second_signal_during_the_drain_exits_at_once,
    a_shards_refusals_are_logged_in_a_burst_and_the_rest_summed_up,
    streams_past_the_process_bound_get_503_overloaded,
    sigterm_exits_after_the_drain_time_even_with_a_client_that_stopped_reading,
    heartbeats_come_at_the_configured_interval_not_the_default,
    a_token_expiring_mid_stream_ends_it_with_token_expired,
    the_open_streams_gauge_counts_streams_and_returns_to_zero,
    past_the_limit_a_young_oldest_stream_means_409_and_an_older_one_is_evicted,
    with_the_reject_policy_the_limit_always_answers_409,
    a_client_that_stops_reading_is_closed_without_delaying_a_hundred_others,
    sigterm_sends_every_stream_a_retry_closes_them_and_exits,
    sigterm_with_no_drain_still_sends_every_stream_its_retry,
    requests_begun_before_sigterm_are_answered,
    requests_begun_before_sigterm_are_answered_with_no_drain,
    sigint_stops_the_gateway_as_sigterm_does,
    sighup_is_logged_and_ends_nothing,
);
