//! The HTTP face of a stream request: heads, refusals and their bodies (D1, D2, D5, D10, D13).
//! These run on the in-process source: no broker needed.

use std::time::Duration;

use sse_gateway_tests::token::user;
use sse_gateway_tests::payloads::valid_text;
use sse_gateway_tests::{for_each_binary, token, Bin, ConfigBuilder, Fixture, GatewayProcess, SECRET, WAIT};

async fn gateway(bin: Bin) -> GatewayProcess {
    GatewayProcess::start(bin, &ConfigBuilder::new().render()).await
}

async fn the_gateway_prints_one_listening_line_and_answers_health(bin: Bin) {
    let gw = gateway(bin).await;
    let health = gw.get("/healthz", &[]).await;
    assert_eq!(health.status, 200, "{health:?}");
    let ready = gw.get("/readyz", &[]).await;
    assert_eq!(ready.status, 200, "in-process source is always ready: {ready:?}");
    let metrics = gw.get("/metrics", &[]).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap_or_default().starts_with("text/plain"), "{metrics:?}");
    assert!(metrics.body.contains("sse_gateway_streams_open{channel=\"deals\"} 0"), "{}", metrics.body);
    assert_eq!(gw.stdout().lines().count(), 1, "stdout: {:?}", gw.stdout());
}

async fn a_stream_is_a_close_delimited_event_stream_starting_with_retry(bin: Bin) {
    let gw = gateway(bin).await;
    let mut s = gw.stream("deals", &user("alice", &[])).await;
    assert_eq!(s.status_line.split(' ').next(), Some("HTTP/1.1"), "{}", s.status_line);
    assert_eq!(s.header("content-type").map(|v| v.split(';').next().unwrap().trim()), Some("text/event-stream"));
    assert_eq!(s.header("cache-control"), Some("no-cache, no-transform"));
    assert_eq!(s.header("x-accel-buffering"), Some("no"));
    assert_eq!(s.header("content-length"), None, "a stream has no length: {:?}", s.headers);
    assert_eq!(s.header("transfer-encoding"), None, "close-delimited, not chunked: {:?}", s.headers);
    // `retry:` comes first; it dispatches no event, so wait for it through the parser.
    assert!(s.until_retry_fields(1).await, "no retry: field at the start of the stream");
    assert!(s.retry().is_some());
    // Nothing was dispatched before it (nothing is published here; a heartbeat is 15 s away).
    let before = s.events_within(Duration::ZERO).await;
    assert!(before.is_empty(), "events before the retry: field: {before:?}");
    assert!(s.still_open().await);
}

async fn no_token_gets_401_with_a_bearer_challenge(bin: Bin) {
    let gw = gateway(bin).await;
    let mut s = gw.open("/api/v1/streams/deals", &[]).await;
    assert_eq!(s.status, 401);
    let challenge = s.header("www-authenticate").unwrap_or_default().to_string();
    assert!(challenge.starts_with("Bearer"), "WWW-Authenticate: {challenge:?}");
    assert!(!challenge.contains("invalid_token"), "no token was sent: {challenge:?}");
    let body = s.json_body().await;
    assert_eq!(body["code"], "unauthorized", "{body}");
    assert!(body["message"].is_string(), "error bodies carry a message: {body}");
}

async fn a_bad_token_gets_401_invalid_token(bin: Bin) {
    let gw = gateway(bin).await;
    let cases = [
        ("garbage", "not.a.jwt".to_string()),
        ("wrong secret", token("some-other-secret-0123456789abcd", "alice", &[], 3600)),
        ("expired", token(SECRET, "alice", &[], -3600)),
    ];
    for (what, t) in cases {
        let auth = format!("Bearer {t}");
        let mut s = gw.open("/api/v1/streams/deals", &[("Authorization", &auth)]).await;
        assert_eq!(s.status, 401, "{what}");
        let challenge = s.header("www-authenticate").unwrap_or_default().to_string();
        assert!(challenge.starts_with("Bearer"), "{what}: WWW-Authenticate: {challenge:?}");
        assert!(challenge.contains("error=\"invalid_token\""), "{what}: WWW-Authenticate: {challenge:?}");
        assert_eq!(s.json_body().await["code"], "unauthorized", "{what}");
    }
}

async fn payments_without_finance_manager_is_forbidden_with_a_long_retry_then_closed(bin: Bin) {
    let gw = gateway(bin).await;
    let mut s = gw.stream("payments", &user("bob", &["sales_manager"])).await;
    assert_eq!(s.header("content-type").map(|v| v.split(';').next().unwrap().trim()), Some("text/event-stream"));
    let events = s.until_closed(WAIT).await.expect("the server closes a forbidden stream");
    let errors: Vec<_> = events.iter().filter(|e| e.event == "error").collect();
    assert_eq!(errors.len(), 1, "one error frame: {events:?}");
    assert_eq!(errors[0].json()["code"], "forbidden");
    assert_eq!(errors[0].id, None, "error frames have no id");
    assert!(events.iter().all(|e| e.id.is_none() && e.event == "error"), "no event reaches a forbidden user: {events:?}");
    let retry = s.retry().expect("a retry: field");
    assert!(retry >= 60_000, "retry {retry} ms is below 60 s");
    assert_eq!(gw.metric("sse_gateway_forbidden_total").await, Some(1.0), "counted");
}

async fn a_finance_manager_may_open_payments_and_gets_its_events(bin: Bin) {
    let fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let mut s = fx.gw.stream("payments", &user("carol", &["finance_manager"])).await;
    let body = valid_text("payment.overdue");
    fx.publish("payments", "payment.overdue", &body).await;
    let ev = s.expect_event("a payments event").await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("payment.overdue", body.as_str()));
    assert!(ev.id.is_some(), "an event frame has an id");
}

async fn an_unknown_channel_is_404(bin: Bin) {
    let gw = gateway(bin).await;
    let auth = format!("Bearer {}", user("alice", &[]));
    let mut s = gw.open("/api/v1/streams/no-such-channel", &[("Authorization", &auth)]).await;
    assert_eq!(s.status, 404);
    let body = s.json_body().await;
    assert_eq!(body["code"], "unknown_channel", "{body}");
    assert!(body["message"].is_string(), "{body}");
}

async fn an_accept_without_event_stream_is_406(bin: Bin) {
    let gw = gateway(bin).await;
    let auth = format!("Bearer {}", user("alice", &[]));
    let mut s = gw
        .open("/api/v1/streams/deals", &[("Authorization", &auth), ("Accept", "application/json")])
        .await;
    assert_eq!(s.status, 406);
    assert!(s.json_body().await["code"].is_string());
    for ok in ["*/*", "text/*", "text/html, text/event-stream;q=0.9"] {
        let s = gw.open("/api/v1/streams/deals", &[("Authorization", &auth), ("Accept", ok)]).await;
        assert_eq!(s.status, 200, "Accept: {ok}");
    }
}

async fn an_unknown_version_is_400_listing_the_supported_ones(bin: Bin) {
    let gw = gateway(bin).await;
    let auth = format!("Bearer {}", user("alice", &[]));
    let mut s = gw.open("/api/v1/streams/deals?version=2", &[("Authorization", &auth)]).await;
    assert_eq!(s.status, 400);
    let body = s.json_body().await;
    assert_eq!(body["code"], "unsupported_version", "{body}");
    assert_eq!(body["supported"], serde_json::json!([1]), "{body}");
    let s = gw.open("/api/v1/streams/deals?version=1", &[("Authorization", &auth)]).await;
    assert_eq!(s.status, 200, "version 1 is the seed's");
}

async fn the_jwt_secret_comes_from_the_environment_when_set(bin: Bin) {
    let env_secret = "secret-from-the-environment-0123";
    let gw = GatewayProcess::start_with_env(
        bin,
        &ConfigBuilder::new().render(),
        &[("SSE_GATEWAY_JWT_SECRET", env_secret)],
    )
    .await;
    let good = format!("Bearer {}", token(env_secret, "alice", &[], 3600));
    assert_eq!(gw.open("/api/v1/streams/deals", &[("Authorization", &good)]).await.status, 200);
    let config_secret = format!("Bearer {}", token(SECRET, "alice", &[], 3600));
    assert_eq!(gw.open("/api/v1/streams/deals", &[("Authorization", &config_secret)]).await.status, 401);
}

async fn a_token_may_come_from_the_configured_cookie_or_query_parameter_and_is_never_logged(bin: Bin) {
    let t = user("alice", &[]);
    let cookie = format!("theme=dark; sse_token={t}; other=1");
    let query = format!("/api/v1/streams/deals?access_token={t}");

    // By default (D1): the cookie `sse_token` is read, the query parameter is not.
    let gw = gateway(bin).await;
    assert_eq!(gw.open("/api/v1/streams/deals", &[("Cookie", &cookie)]).await.status, 200, "the cookie by default");
    assert_eq!(gw.open(&query, &[]).await.status, 401, "query parameter off by default");
    let off = GatewayProcess::start(bin, &ConfigBuilder::new().str("auth", "cookie", "").render()).await;
    assert_eq!(off.open("/api/v1/streams/deals", &[("Cookie", &cookie)]).await.status, 401, "cookie = \"\" turns it off");

    let cfg = ConfigBuilder::new().str("auth", "cookie", "jwt").raw("auth", "query_param", "true");
    let gw = GatewayProcess::start_with_env(bin, &cfg.render(), &[("RUST_LOG", "debug")]).await;
    let named = format!("theme=dark; jwt={t}");
    assert_eq!(gw.open("/api/v1/streams/deals", &[("Cookie", &named)]).await.status, 200, "token in the named cookie");
    assert_eq!(gw.open("/api/v1/streams/deals", &[("Cookie", &cookie)]).await.status, 401, "only the named cookie");
    assert_eq!(gw.open(&query, &[]).await.status, 200, "token in access_token");
    let log = gw.settled_log().await;
    assert!(log.contains("stream opened"), "no `stream opened` line at debug:\n{log}");
    gw.assert_never_logged(&[&t]).await;
}

async fn refusals_are_logged_with_status_code_and_peer_but_never_the_token(bin: Bin) {
    let gw = gateway(bin).await;
    let forged = token("not-the-gateway-secret-0123456789-abcdef", "mallory", &["finance_manager"], 3600);
    let sales = user("bob", &["sales_manager"]);
    let bearer = |t: &str| format!("Bearer {t}");
    assert_eq!(gw.get("/no/such/route", &[]).await.status, 404);
    assert_eq!(gw.open("/api/v1/streams/deals", &[("Authorization", &bearer(&forged))]).await.status, 401);
    // The query parameter is off by default: a token there is not read, and not logged either.
    assert_eq!(gw.open(&format!("/api/v1/streams/deals?access_token={forged}"), &[]).await.status, 401);
    let mut s = gw.stream("payments", &sales).await;
    let _ = s.until_closed(WAIT).await;
    let _ = gw.log_until(WAIT, |l| l.matches("request refused").count() >= 4).await;
    let log = gw.settled_log().await; // and any extra line has shown up too
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("request refused")).collect();
    // (status, code, reason): the forged token's bad signature, the query's token never read.
    let expected = [
        (404, "not_found", None),
        (401, "unauthorized", Some("bad_signature")),
        (401, "unauthorized", None),
        (200, "forbidden", None),
    ];
    for (status, code, reason) in expected {
        let lines: Vec<_> = refused
            .iter()
            .filter(|l| l.contains(&format!("status={status} ")) && l.contains(&format!("code=\"{code}\"")))
            .filter(|l| match reason {
                Some(r) => l.contains(&format!("reason=\"{r}\"")),
                None => !l.contains("reason="),
            })
            .collect();
        assert_eq!(lines.len(), 1, "refusal {status} {code} {reason:?} logged {} times:\n{log}", lines.len());
        assert!(lines.iter().all(|l| l.contains("peer=127.0.0.1:")), "no peer in {lines:?}");
    }
    let forbidden: Vec<_> = refused.iter().filter(|l| l.contains("code=\"forbidden\"")).collect();
    assert!(forbidden[0].contains("user=bob") && forbidden[0].contains("channel=payments"), "{forbidden:?}");
    gw.assert_never_logged(&[&forged, &sales]).await;
}

async fn cors_answers_configured_origins_only_with_credentials_and_the_resume_header(bin: Bin) {
    let origin = "https://app.example.com";
    let cfg = ConfigBuilder::new().strs("server", "cors_origins", &[origin]);
    let gw = GatewayProcess::start(bin, &cfg.render()).await;
    let pre = gw
        .request(
            "OPTIONS",
            "/api/v1/streams/deals",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "authorization, last-event-id"),
            ],
            b"",
        )
        .await;
    assert!(pre.status == 200 || pre.status == 204, "preflight: {pre:?}");
    assert_eq!(pre.header("access-control-allow-origin"), Some(origin), "{pre:?}");
    assert_eq!(pre.header("access-control-allow-credentials"), Some("true"), "{pre:?}");
    let allowed = pre.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    for h in ["authorization", "last-event-id"] {
        assert!(allowed.split(',').any(|a| a.trim() == h), "{h} not in Access-Control-Allow-Headers: {allowed:?}");
    }
    let auth = format!("Bearer {}", user("alice", &[]));
    let s = gw.open("/api/v1/streams/deals", &[("Authorization", &auth), ("Origin", origin)]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("access-control-allow-origin"), Some(origin));
    assert_eq!(s.header("access-control-allow-credentials"), Some("true"));
    let other = gw.open("/api/v1/streams/deals", &[("Authorization", &auth), ("Origin", "https://evil.example")]).await;
    assert_eq!(other.header("access-control-allow-origin"), None, "an unlisted origin is not allowed");
    // Nor is its preflight: no CORS header would let its page read the stream.
    let evil = gw
        .request(
            "OPTIONS",
            "/api/v1/streams/deals",
            &[("Origin", "https://evil.example"), ("Access-Control-Request-Method", "GET"), ("Access-Control-Request-Headers", "authorization")],
            b"",
        )
        .await;
    assert_eq!(evil.header("access-control-allow-origin"), None, "{evil:?}");
    assert_eq!(evil.header("access-control-allow-credentials"), None, "{evil:?}");
}

async fn a_wrong_method_on_a_stream_is_405(bin: Bin) {
    let gw = gateway(bin).await;
    let auth = format!("Bearer {}", user("alice", &[]));
    let r = gw.request("POST", "/api/v1/streams/deals", &[("Authorization", &auth)], b"{}").await;
    assert_eq!(r.status, 405, "{r:?}");
    assert!(r.json()["code"].is_string(), "{r:?}");
}

/// The head of a publisher's `POST /api/v1/publish/deals` with a body of `len` bytes.
fn publish_head(gw: &GatewayProcess, len: usize, extra: &str) -> String {
    format!(
        "POST /api/v1/publish/deals HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n{extra}\r\n",
        gw.addr,
        user("svc", &["publisher"]),
    )
}

/// RFC 9110 10.1.1: a publisher that sends `Expect: 100-continue` (curl for large bodies, .NET's
/// and Java's clients when set to) waits for the interim answer before it sends its body.
async fn a_publisher_expecting_100_continue_gets_it_and_its_event_is_taken(bin: Bin) {
    use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = GatewayProcess::start(bin, &ConfigBuilder::new().raw("server", "publish_endpoint", "true").render()).await;
    let mut s = gw.stream("deals", &user("alice", &[])).await;
    let data = sse_gateway_tests::payloads::valid("deal.created");
    let body = serde_json::json!({"type": "deal.created", "data": data}).to_string();
    let mut c = ::tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    let head = publish_head(&gw, body.len(), "Expect: 100-continue\r\n");
    c.write_all(head.as_bytes()).await.expect("write the head");
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = Vec::new();
    let read = ::tokio::time::timeout(WAIT, async {
        while got.len() < interim.len() {
            let mut b = [0u8; 64];
            let n = c.read(&mut b[..interim.len() - got.len()]).await.expect("read");
            assert!(n > 0, "closed before an interim answer: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no 100 Continue within {WAIT:?} (body not sent yet); got {:?}", String::from_utf8_lossy(&got));
    assert_eq!(got, interim);
    c.write_all(body.as_bytes()).await.expect("write the body");
    let mut rest = Vec::new();
    ::tokio::time::timeout(WAIT, c.read_to_end(&mut rest)).await.expect("an answer within WAIT").expect("read");
    let end = sse_gateway_tests::http::head_end(&rest).expect("a whole head");
    let answer = sse_gateway_tests::http::parse_head(&rest[..end]);
    assert!(answer.status_line.starts_with("HTTP/1.1 202 "), "{:?}", String::from_utf8_lossy(&rest));
    let id: serde_json::Value = serde_json::from_slice(&rest[end..]).expect("a JSON body");
    assert!(id["id"].is_string(), "the 202 names the event's id: {id}");
    let ev = s.expect_event("the published event").await;
    assert_eq!(ev.id.as_deref(), id["id"].as_str(), "{ev:?}");
    assert_eq!(ev.event, "deal.created", "{ev:?}");
    assert_eq!(ev.json(), data, "the body read after the interim answer: {ev:?}");
}

/// A publish whose body stops short of its Content-Length is closed unanswered at the head
/// timeout (the deadline covers head and body), counted, and publishes nothing.
async fn a_publish_body_cut_short_is_closed_at_the_head_timeout_and_counted(bin: Bin) {
    use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = ConfigBuilder::new().raw("server", "publish_endpoint", "true").str("server", "head_timeout", "2s");
    let gw = GatewayProcess::start(bin, &cfg.render()).await;
    let mut s = gw.stream("deals", &user("alice", &[])).await;
    let body = serde_json::json!({"type": "deal.created", "data": sse_gateway_tests::payloads::valid("deal.created")}).to_string();
    let mut c = ::tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    let head = publish_head(&gw, body.len(), "");
    c.write_all(head.as_bytes()).await.expect("write the head");
    c.write_all(&body.as_bytes()[..body.len() - 1]).await.expect("all of the body but its last byte");
    let mut got = Vec::new();
    let read = ::tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut got)).await;
    assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "still open 30 s after a 2 s head timeout");
    assert!(got.is_empty(), "a body cut short was answered: {:?}", String::from_utf8_lossy(&got));
    assert_eq!(gw.metric("sse_gateway_head_timeouts_total").await, Some(1.0), "the timeout is counted");
    assert_eq!(gw.metric("sse_gateway_http_responses_total{status=\"202\"}").await, Some(0.0), "nothing published");
    // A whole publish after it is the first event the stream gets.
    let marker = serde_json::json!({"type": "deal.updated", "data": sse_gateway_tests::payloads::valid("deal.updated")}).to_string();
    let auth = format!("Bearer {}", user("svc", &["publisher"]));
    let r = gw.request("POST", "/api/v1/publish/deals", &[("Authorization", &auth), ("Content-Type", "application/json")], marker.as_bytes()).await;
    assert_eq!(r.status, 202, "{r:?}");
    let ev = s.next_with_id(WAIT).await.expect("the whole publish's event");
    assert_eq!(ev.event, "deal.updated", "the cut-short publish reached the stream: {ev:?}");
}

/// A publish whose body is not declared `application/json` (a form's types, or none: what a page
/// of another site may send with the user's cookie and no preflight) is 415 and publishes nothing.
async fn a_publish_not_declared_json_is_415_and_publishes_nothing(bin: Bin) {
    let cfg = ConfigBuilder::new().raw("server", "publish_endpoint", "true").render();
    let gw = GatewayProcess::start(bin, &cfg).await;
    let mut s = gw.stream("deals", &user("alice", &[])).await;
    let publisher = user("svc", &["publisher"]);
    let cookie = format!("sse_token={publisher}");
    let body = serde_json::json!({"type": "deal.created", "data": sse_gateway_tests::payloads::valid("deal.created")}).to_string();
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut headers = vec![("Cookie", cookie.as_str())];
        headers.extend(content_type.map(|t| ("Content-Type", t)));
        let r = gw.request("POST", "/api/v1/publish/deals", &headers, body.as_bytes()).await;
        assert_eq!(r.status, 415, "{content_type:?}: {r:?}");
        assert_eq!(r.json()["code"], "unsupported_media_type", "{r:?}");
    }
    let marker = serde_json::json!({"type": "deal.updated", "data": sse_gateway_tests::payloads::valid("deal.updated")}).to_string();
    let r = gw.request("POST", "/api/v1/publish/deals", &[("Cookie", &cookie), ("Content-Type", "application/json")], marker.as_bytes()).await;
    assert_eq!(r.status, 202, "the same publish declared JSON is taken: {r:?}");
    let ev = s.next_with_id(WAIT).await.expect("the JSON publish's event");
    assert_eq!(ev.event, "deal.updated", "a publish not declared JSON reached the stream: {ev:?}");
}

/// A publish refused for its body (400: not JSON, no `type`) has its `request refused` line, as
/// a refusal decided from the head has: an operator sees why the 400s rise.
async fn a_publish_refused_for_its_body_is_logged(bin: Bin) {
    let cfg = ConfigBuilder::new().raw("server", "publish_endpoint", "true").render();
    let gw = GatewayProcess::start(bin, &cfg).await;
    let auth = format!("Bearer {}", user("svc", &["publisher"]));
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    for body in ["{not json", "{\"data\":{}}"] {
        let r = gw.request("POST", "/api/v1/publish/deals", &headers, body.as_bytes()).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
    }
    let refused = |log: &str| log.lines().filter(|l| l.contains("request refused") && l.contains("status=400")).count();
    let log = gw.log_until(WAIT, |l| refused(l) >= 2).await;
    assert_eq!(refused(&log), 2, "a `request refused` line for each 400:\n{log}");
}

for_each_binary!(
    a_publish_refused_for_its_body_is_logged,
    a_publish_not_declared_json_is_415_and_publishes_nothing,
    a_publish_body_cut_short_is_closed_at_the_head_timeout_and_counted,
    a_publisher_expecting_100_continue_gets_it_and_its_event_is_taken,
    the_gateway_prints_one_listening_line_and_answers_health,
    a_stream_is_a_close_delimited_event_stream_starting_with_retry,
    no_token_gets_401_with_a_bearer_challenge,
    a_bad_token_gets_401_invalid_token,
    payments_without_finance_manager_is_forbidden_with_a_long_retry_then_closed,
    a_finance_manager_may_open_payments_and_gets_its_events,
    an_unknown_channel_is_404,
    an_accept_without_event_stream_is_406,
    an_unknown_version_is_400_listing_the_supported_ones,
    the_jwt_secret_comes_from_the_environment_when_set,
    a_token_may_come_from_the_configured_cookie_or_query_parameter_and_is_never_logged,
    refusals_are_logged_with_status_code_and_peer_but_never_the_token,
    cors_answers_configured_origins_only_with_credentials_and_the_resume_header,
    a_wrong_method_on_a_stream_is_405,
);
