//! Hostile HTTP (D6, D10): oversized heads get 431, a head trickled in is cut off at the head
//! timeout, hostile bytes in a resume id are never reflected into a stream, a client that keeps
//! sending on its stream is closed, and a body sent after an answer from the head meets no
//! reset. The floods (garbage connections, shedding) are in `floods.rs`, a test process of their
//! own, so that these timings never run beside them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sse_gateway_tests::http::{raw_exchange, RawReply};
use sse_gateway_tests::payloads::valid_text;
use sse_gateway_tests::token::user;
use sse_gateway_tests::{for_each_binary, Bin, ConfigBuilder, EventStreamParser, Fixture, GatewayProcess, WAIT};
use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
use ::tokio::net::TcpStream;

fn show(reply: &RawReply) -> String {
    String::from_utf8_lossy(&reply.bytes[..reply.bytes.len().min(400)]).into_owned()
}

async fn request_heads_past_the_bound_get_431(bin: Bin) {
    let gw = GatewayProcess::start(bin, &ConfigBuilder::new().render()).await;
    let auth = format!("Authorization: Bearer {}\r\n", user("alice", &[]));
    let pad = "a".repeat(64 * 1024);
    let many: String = (0..200).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    let cases = [
        ("a 64 KiB header", format!("GET /api/v1/streams/deals HTTP/1.1\r\nHost: h\r\n{auth}X-Pad: {pad}\r\n\r\n")),
        ("a 64 KiB request target", format!("GET /api/v1/streams/deals?x={pad} HTTP/1.1\r\nHost: h\r\n{auth}\r\n")),
        ("200 header fields", format!("GET /api/v1/streams/deals HTTP/1.1\r\nHost: h\r\n{auth}{many}\r\n")),
        ("a 64 KiB head to /healthz", format!("GET /healthz HTTP/1.1\r\nX-Pad: {pad}\r\n\r\n")),
        ("64 KiB with no line end at all", format!("GET /{pad}")),
    ];
    for (what, req) in cases {
        let reply = raw_exchange(gw.addr, req.into_bytes(), WAIT, |_| false).await;
        assert_eq!(reply.status(), Some(431), "{what}: {}", show(&reply));
        assert!(reply.closed && !reply.reset, "{what}: the connection is closed after the 431, not reset");
        let head = reply.head().expect("a whole head");
        let body: serde_json::Value = serde_json::from_slice(reply.body())
            .unwrap_or_else(|e| panic!("{what}: the 431 body is not JSON ({e}): {}", show(&reply)));
        assert!(body["code"].is_string(), "{what}: {body}");
        assert!(head.headers.iter().all(|(k, _)| !k.eq_ignore_ascii_case("x-pad")), "{what}: the head is not echoed");
    }
    gw.wait_metric("sse_gateway_http_responses_total{status=\"431\"}", 5.0).await;
    assert_eq!(gw.get("/healthz", &[]).await.status, 200);
}

/// Sends `request` one byte a second. Returns what came back, whether the server closed the
/// connection, and how long that took; gives up at `limit`.
async fn trickle(addr: SocketAddr, request: &[u8], limit: Duration) -> (Vec<u8>, bool, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    for &b in request {
        if start.elapsed() > limit {
            return (got, false, start.elapsed());
        }
        if s.write_all(&[b]).await.is_err() {
            return (got, true, start.elapsed()); // the server is gone
        }
        let second = ::tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match ::tokio::time::timeout_at(second, s.read(&mut chunk)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => return (got, true, start.elapsed()),
                Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            }
        }
    }
    (got, false, start.elapsed())
}

async fn a_head_sent_one_byte_a_second_is_cut_off_at_the_head_timeout(bin: Bin) {
    let cfg = ConfigBuilder::new().str("server", "head_timeout", "5s");
    let gw = GatewayProcess::start(bin, &cfg.render()).await;
    // A second gateway with a longer head timeout, over the 10 s default: its silent client
    // connects first and must outlive the first gateway's (an order, not a time measured here:
    // were `head_timeout` ignored, the default would cut the second gateway's client first). The
    // timeouts leave seconds for the checks below on a busy machine.
    let longer = ConfigBuilder::new().str("server", "head_timeout", "20s");
    let gw20 = GatewayProcess::start(bin, &longer.render()).await;
    let mut silent20 = TcpStream::connect(gw20.addr).await.expect("connect");
    // A valid stream request: were it ever completed, it would be answered 200. Sent at one
    // byte a second it would take minutes.
    let request = format!(
        "GET /api/v1/streams/deals HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {}\r\n\r\n",
        gw.addr,
        user("alice", &[])
    );
    assert!(request.len() > 120);
    // Five clients that connect and say nothing: the head timeout cuts them off too.
    let mut silent = ::tokio::task::JoinSet::new();
    for _ in 0..5 {
        let addr = gw.addr;
        silent.spawn(async move {
            let start = Instant::now();
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mut buf = [0u8; 64];
            let read = ::tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await;
            (matches!(read, Ok(Ok(0)) | Ok(Err(_))), start.elapsed())
        });
    }
    // Twenty such clients at once; the gateway keeps answering others meanwhile.
    let mut slow = ::tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (addr, req) = (gw.addr, request.clone().into_bytes());
        slow.spawn(async move { trickle(addr, &req, Duration::from_secs(60)).await });
    }
    sse_gateway_tests::sleep(Duration::from_millis(500)).await; // they have connected and begun
    assert_eq!(gw.get("/healthz", &[]).await.status, 200, "answered while slow heads are pending");
    let s = gw.stream("deals", &user("bob", &[])).await;
    assert_eq!(s.status, 200, "a stream opens while slow heads are pending");
    assert!(slow.try_join_next().is_none(), "a slow head had ended before the two requests above: they were not checked while it was pending");
    let mut times = Vec::new();
    let mut answers = std::collections::BTreeSet::new();
    while let Some(r) = slow.join_next().await {
        let (got, closed, took) = r.expect("a trickle task");
        assert!(closed, "the server still held a trickled head after {took:?}");
        assert!(!got.starts_with(b"HTTP/1.1 200"), "a trickled head was answered 200: {:?}", String::from_utf8_lossy(&got));
        times.push(took);
        answers.insert(String::from_utf8_lossy(&got[..got.len().min(40)]).into_owned());
    }
    while let Some(r) = silent.join_next().await {
        let (closed, took) = r.expect("a silent client");
        assert!(closed, "a silent connection was still open after {took:?} (head_timeout is 5s)");
    }
    let mut buf = [0u8; 64];
    match silent20.try_read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the 20-s gateway's silent client (connected first) was cut before the 5-s one's: {other:?}"),
    }
    let read = ::tokio::time::timeout(Duration::from_secs(30), silent20.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the 20-s gateway never cut its silent client: {read:?}");
    // Every one of the 25 cut off is counted, and nothing else: the stream and /healthz were answered.
    assert_eq!(gw.metric("sse_gateway_head_timeouts_total").await, Some(25.0), "head timeouts counted");
    times.sort();
    eprintln!(
        "{}: 20 trickled heads cut off after {:?} to {:?} (head_timeout 5s); answers: {answers:?}",
        bin.file_name(),
        times[0],
        times[times.len() - 1]
    );
    assert_eq!(gw.get("/healthz", &[]).await.status, 200);
}

async fn hostile_bytes_in_last_event_id_are_never_reflected_into_a_stream(bin: Bin) {
    let gw = GatewayProcess::start(bin, &ConfigBuilder::new().render()).await;
    let auth = user("alice", &[]);
    let head = |target: &str, extra: &[u8]| -> Vec<u8> {
        let mut r = format!(
            "GET {target} HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\nAuthorization: Bearer {auth}\r\n"
        )
        .into_bytes();
        r.extend_from_slice(extra);
        r.extend_from_slice(b"\r\n");
        r
    };
    let stream = "/api/v1/streams/deals";
    let q = |v: &str| format!("{stream}?last_event_id={v}");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("CR inside the header", head(stream, b"Last-Event-ID: 1-1\revent: pwned\rdata: pwned\r\n")),
        ("CRLF CRLF inside the header", head(stream, b"Last-Event-ID: 1-1\r\n\r\nevent: pwned\r\ndata: pwned\r\n")),
        ("bare LF inside the header", head(stream, b"Last-Event-ID: 1-1\nevent: pwned\ndata: pwned\r\n")),
        ("non-UTF-8 header", head(stream, b"Last-Event-ID: \xff\xfe1-1\xc3(pwned\r\n")),
        ("NUL in the header", head(stream, b"Last-Event-ID: 1-1\x00pwned\r\n")),
        ("markup in the header", head(stream, b"Last-Event-ID: <script>pwned</script>\r\n")),
        ("an id line in the header", head(stream, b"Last-Event-ID: id: pwned\r\n")),
        ("a 4 KiB id", head(stream, format!("Last-Event-ID: 1-{}pwned\r\n", "9".repeat(4096)).as_bytes())),
        ("percent-encoded CRLF", head(&q("1-1%0D%0Aevent%3A%20pwned%0D%0Adata%3A%20pwned%0D%0A%0D%0A"), b"")),
        ("percent-encoded bare CR", head(&q("1-1%0Devent%3Apwned%0Ddata%3Apwned"), b"")),
        ("percent-encoded LF", head(&q("%0Aid%3A%20pwned%0A"), b"")),
        ("percent-encoded non-UTF-8", head(&q("%FF%FE1-1%C3%28pwned"), b"")),
        ("percent-encoded NUL", head(&q("1-1%00pwned"), b"")),
        ("raw non-UTF-8 in the query", {
            let mut r = head(&format!("{stream}?last_event_id=1-1XX"), b"");
            let at = r.windows(2).position(|w| w == b"XX").expect("the placeholder");
            r[at..at + 2].copy_from_slice(b"\xff\xfe");
            r
        }),
    ];
    for (what, req) in cases {
        let reply = raw_exchange(gw.addr, req, WAIT, |b| {
            b.windows(11).any(|w| w == b"history_gap") && b.ends_with(b"\n\n")
        })
        .await;
        for needle in [&b"pwned"[..], b"\xff\xfe", b"\xc3(", b"\x00"] {
            assert!(!reply.contains(needle), "{what}: {needle:?} reflected: {}", show(&reply));
        }
        eprintln!("{}: {what}: {:?}", bin.file_name(), reply.status());
        match reply.status() {
            Some(400) => {}
            Some(200) => {
                let mut p = EventStreamParser::new();
                p.feed(reply.body());
                let first = std::iter::from_fn(|| p.next_event()).find(|e| e.event != "heartbeat");
                let first = first.unwrap_or_else(|| panic!("{what}: no first frame: {}", show(&reply)));
                assert_eq!(first.event, "warning", "{what}: {first:?}");
                assert_eq!(first.json(), serde_json::json!({"code": "history_gap", "channel": "deals"}), "{what}");
                assert_eq!(first.id, None, "{what}");
                assert!(p.id_buffer().is_empty(), "{what}: the stream sent an id: {:?}", p.id_buffer());
            }
            other => panic!("{what}: expected 200 with history_gap or 400, got {other:?}: {}", show(&reply)),
        }
    }
    assert_eq!(gw.get("/healthz", &[]).await.status, 200);
}

/// A client has nothing to say on its stream. A few bytes are ignored (the stream goes on); one
/// that keeps sending (past 4 KiB) would cost its shard a read per 16 bytes, and is closed.
async fn a_client_that_keeps_sending_on_its_stream_is_closed(bin: Bin) {
    let fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let mut quiet = fx.gw.stream("deals", &user("quiet", &[])).await;
    let mut chatty = fx.gw.stream("deals", &user("chatty", &[])).await;
    quiet.send(&[b'\n'; 100]).await.expect("a few bytes");
    let body = valid_text("deal.created");
    fx.publish("deals", "deal.created", &body).await;
    let ev = quiet.expect_event("the event after a few bytes from the client").await;
    assert_eq!(ev.data, body, "the stream goes on after a few bytes from its client");

    let _ = chatty.send(&[b'x'; 8192]).await;
    let deadline = Instant::now() + WAIT;
    while !chatty.is_closed() && Instant::now() < deadline {
        let _ = chatty.next_event(deadline.saturating_duration_since(Instant::now())).await;
    }
    assert!(chatty.is_closed(), "a client that keeps sending is not closed");
    let closed_line = |l: &str| l.contains("stream closed") && l.contains("user=chatty");
    let log = fx.gw.log_until(WAIT, |log| log.lines().any(closed_line)).await;
    assert!(log.lines().any(|l| closed_line(l) && l.contains("reason=\"client_gone\"")), "{log}");
}

/// A request answered from its head alone, its body unread (here a POST to a stream, 405): a
/// client that sends its whole body before it reads (curl, most HTTP libraries) can send it
/// and then reads the answer. A socket closed with the body unread is reset by the kernel, and
/// the client meets the reset mid-body instead of the answer.
async fn a_body_sent_after_an_answer_from_the_head_does_not_meet_a_reset(bin: Bin) {
    let gw = GatewayProcess::start(bin, &ConfigBuilder::new().render()).await;
    let body_len = 512 * 1024;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!("POST /api/v1/streams/deals HTTP/1.1\r\nHost: h\r\nContent-Length: {body_len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("the head");
    // The answer is there before the body goes out.
    let mut first = [0u8; 12];
    let n = ::tokio::time::timeout(WAIT, s.peek(&mut first)).await.expect("an answer").expect("peek");
    assert_eq!(&first[..n], b"HTTP/1.1 405", "answered from the head");
    let chunk = vec![b'x'; 16 * 1024];
    for i in 0..body_len / chunk.len() {
        if let Err(e) = s.write_all(&chunk).await {
            panic!("the body's chunk {i} of {}: {e}", body_len / chunk.len());
        }
        ::tokio::time::sleep(Duration::from_millis(2)).await; // time for a reset to arrive
    }
    s.shutdown().await.expect("the client is done");
    let mut got = Vec::new();
    ::tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await.expect("the end").expect("the answer, then a clean end");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && text.contains("\"code\":\"method_not_allowed\""), "{text}");
}

for_each_binary!(
    a_body_sent_after_an_answer_from_the_head_does_not_meet_a_reset,
    a_client_that_keeps_sending_on_its_stream_is_closed,
    request_heads_past_the_bound_get_431,
    a_head_sent_one_byte_a_second_is_cut_off_at_the_head_timeout,
    hostile_bytes_in_last_event_id_are_never_reflected_into_a_stream,
);
