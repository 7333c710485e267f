//! HTTP/1.1 request heads in, decisions and response bytes out (D1, D2, D5, D6, D10).
//!
//! [`Front`] is stateless and `Sync`: any thread may route a request head. A stream request that
//! passes every check becomes a [`StreamRequest`], which the frontend hands to the shard that owns
//! the user ([`shard_of`]); that shard applies the per-user limit and opens the stream.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;

use crate::auth::{Identity, TokenError, TokenVerifier};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::{sse, ChannelId, EventId};

/// Header fields parsed at most; more gives 431 ([`TOO_MANY_HEADERS`]). A browser sends about
/// 20; each proxy on the way (a CDN, a load balancer, an ingress, a mesh) adds its own.
const MAX_HEADERS: usize = 100;
const TOO_MANY_HEADERS: &str = "request head has more than 100 header fields";
const HEAD_TOO_LARGE: &str = "request head too large";

/// A complete response: status line, headers and body. The connection closes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// The bytes to write.
    pub bytes: Bytes,
    /// Set when this answer refuses the request: what a frontend logs about it. `None` for
    /// answers that are not refusals.
    pub refusal: Option<Refusal>,
}

/// Why a request was refused, for the log (never the token, nor anything the client sent that
/// was not verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The `code` of the JSON body (`forbidden` for a forbidden stream).
    pub code: &'static str,
    /// A finer reason when there is one (why a token was invalid), else `""`.
    pub reason: &'static str,
    /// For `forbidden`: the (authenticated) user and the channel it may not read.
    pub forbidden: Option<(Box<str>, ChannelId)>,
}

impl Refusal {
    pub(crate) fn new(code: &'static str, reason: &'static str) -> Refusal {
        Refusal { code, reason, forbidden: None }
    }
}

/// Where a resumed stream starts (D6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// After this event.
    After(EventId),
    /// An id that is not one of ours (malformed): answered with `history_gap`.
    Malformed,
}

/// An authenticated, authorized request for a stream: hand it to the user's shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    /// Who asked (from the token).
    pub identity: Identity,
    /// Which channel.
    pub channel: ChannelId,
    /// Which schema version.
    pub version: u32,
    /// Resume point, if the client sent one.
    pub resume: Option<Resume>,
    /// The request's `Origin` when CORS allows it (echoed in the response head).
    pub cors_origin: Option<String>,
}

/// An authenticated request to the development publish endpoint (D14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// Target channel.
    pub channel: ChannelId,
    /// Body length announced by `Content-Length` (already checked against the bound).
    pub content_length: usize,
    /// Bytes of the buffer taken by the head; the body starts there.
    pub head_len: usize,
    /// Allowed CORS origin.
    pub cors_origin: Option<String>,
    /// The client sent `Expect: 100-continue` (HTTP/1.1) and waits for [`Response::CONTINUE`]
    /// before it sends the body: write it if no body byte has come yet (RFC 9110 10.1.1).
    pub expect_continue: bool,
}

/// What to do with the bytes a client sent so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// The head is not complete yet: read more (the frontend bounds time and size).
    Partial,
    /// Write this response and close.
    Respond(Response),
    /// Open a stream on the shard `shard_of(&req.identity.user, shards)`.
    Stream(StreamRequest),
    /// Read `content_length` body bytes, then call [`crate::parse_publish`].
    Publish(PublishRequest),
    /// `GET /healthz`: answer with [`Response::ok_text`].
    Health,
    /// `GET /readyz`: answer with [`Response::ready`] and the frontend's view of its sources.
    Ready,
    /// `GET /metrics`: answer with [`Response::metrics`].
    Metrics,
    /// `GET /` in demo mode: the demo page.
    DemoPage,
}

/// Every status the gateway answers with, and its reason phrase. Each is counted in
/// `sse_gateway_http_responses_total` (the metrics take their labels from this list).
pub(crate) const STATUSES: [(u16, &str); 17] = [
    (200, "OK"),
    (202, "Accepted"),
    (204, "No Content"),
    (400, "Bad Request"),
    (401, "Unauthorized"),
    (403, "Forbidden"),
    (404, "Not Found"),
    (405, "Method Not Allowed"),
    (406, "Not Acceptable"),
    (409, "Conflict"),
    (411, "Length Required"),
    (413, "Payload Too Large"),
    (415, "Unsupported Media Type"),
    (422, "Unprocessable Content"),
    (431, "Request Header Fields Too Large"),
    (500, "Internal Server Error"),
    (503, "Service Unavailable"),
];

fn reason(status: u16) -> &'static str {
    STATUSES.iter().find(|(s, _)| *s == status).map_or("Error", |(_, r)| r)
}

fn cors_headers(out: &mut String, origin: Option<&str>) {
    if let Some(o) = origin {
        let _ = write!(
            out,
            "Access-Control-Allow-Origin: {o}\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
        );
    }
}

/// The head of an answer that closes the connection: the status line, `fields` (the body's, if
/// any), then `Cache-Control`, `Connection`, `extra` and the CORS fields, and the blank line.
fn closing_head(status: u16, fields: &str, extra: &str, cors: Option<&str>) -> String {
    let mut h = format!("HTTP/1.1 {status} {}\r\n{fields}Cache-Control: no-store\r\nConnection: close\r\n{extra}", reason(status));
    cors_headers(&mut h, cors);
    h.push_str("\r\n");
    h
}

impl Response {
    /// The interim answer to `Expect: 100-continue` ([`PublishRequest::expect_continue`]).
    pub const CONTINUE: &'static [u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

    /// A response with a body of `content_type`, closing the connection.
    pub fn with_body(status: u16, content_type: &str, extra: &str, cors: Option<&str>, body: &[u8]) -> Response {
        let fields = format!("Content-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
        let mut v = closing_head(status, &fields, extra, cors).into_bytes();
        v.extend_from_slice(body);
        Response { status, bytes: Bytes::from(v), refusal: None }
    }

    /// A 200 event stream that is only an answer (D1, D2): the head, `retry:` (ms), then
    /// `event: error` with `refusal`'s code; the connection closes after it.
    pub(crate) fn stream_refusal(retry_ms: u64, cors: Option<&str>, refusal: Refusal) -> Response {
        let mut v = Response::stream_head(cors).to_vec();
        v.extend_from_slice(&sse::retry(retry_ms));
        v.extend_from_slice(&sse::error(refusal.code));
        Response { status: 200, bytes: Bytes::from(v), refusal: Some(refusal) }
    }

    /// A JSON error `{"code":..,"message":..}` (D10), with `extra` header lines (each ending `\r\n`).
    pub fn error(status: u16, code: &'static str, message: &str, extra: &str, cors: Option<&str>) -> Response {
        let body = serde_json::json!({ "code": code, "message": message }).to_string();
        let refusal = Some(Refusal::new(code, ""));
        Response { refusal, ..Response::with_body(status, "application/json", extra, cors, body.as_bytes()) }
    }

    /// 503 `overloaded` for a stream asked for while the gateway shuts down (D12): the client
    /// retries, another instance or this one once it is back.
    pub fn shutting_down(cors: Option<&str>) -> Response {
        Response::stopping("overloaded", cors)
    }

    /// 503 `unavailable` for a publish while the gateway shuts down (D12): the shards take no
    /// more events.
    pub fn publish_shutting_down(cors: Option<&str>) -> Response {
        Response::stopping("unavailable", cors)
    }

    /// 503 `code` "the gateway is shutting down", its refusal logged with the reason
    /// `shutting_down`.
    fn stopping(code: &'static str, cors: Option<&str>) -> Response {
        let r = Response::error(503, code, "the gateway is shutting down", "", cors);
        Response { refusal: Some(Refusal::new(code, "shutting_down")), ..r }
    }

    /// `/readyz` once a shutdown began: 503 `not_ready`, so that a balancer sends no new
    /// streams to an instance that drains.
    pub fn not_ready_stopping() -> Response {
        let body = serde_json::json!({ "code": "not_ready", "message": "the gateway is shutting down" }).to_string();
        Response::with_body(503, "application/json", "", None, body.as_bytes())
    }

    /// `200 ok` in plain text (`/healthz`).
    pub fn ok_text(text: &str) -> Response {
        Response::with_body(200, "text/plain; charset=utf-8", "", None, text.as_bytes())
    }

    /// `/readyz`: 200 `ready` when every source has been reached, else 503 naming the ones down.
    pub fn ready(down: &[&str]) -> Response {
        if down.is_empty() {
            Response::ok_text("ready\n")
        } else {
            let body = serde_json::json!({ "code": "not_ready", "message": "a source has not reached its broker", "sources_down": down }).to_string();
            Response::with_body(503, "application/json", "", None, body.as_bytes())
        }
    }

    /// `/metrics` in the Prometheus text format.
    pub fn metrics(metrics: &Metrics) -> Response {
        Response::with_body(200, "text/plain; version=0.0.4; charset=utf-8", "", None, metrics.render().as_bytes())
    }

    /// `202 {"id":"<event id>"}`: the publish endpoint took the event (D14).
    pub fn published(id: EventId, cors: Option<&str>) -> Response {
        let body = serde_json::json!({ "id": id.to_string() }).to_string();
        Response::with_body(202, "application/json", "", cors, body.as_bytes())
    }

    /// `422 {"code":"<reason>","message":"<detail>"}`: the publish endpoint's event was dropped
    /// by validation (D4, D14); the code is the drop reason's metric label.
    pub fn dropped(d: &crate::Dropped, cors: Option<&str>) -> Response {
        Response::error(422, d.reason.label(), &d.detail, "", cors)
    }

    /// The head of a `200 text/event-stream` response (D10). The body is close-delimited.
    /// `no-transform`: a compressing proxy or middleware (a dev server's, Express's
    /// `compression()`) would otherwise gzip the stream and hold events in its buffer.
    pub fn stream_head(cors: Option<&str>) -> Bytes {
        let mut h = String::from(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache, no-transform\r\n\
             X-Accel-Buffering: no\r\nConnection: close\r\n",
        );
        cors_headers(&mut h, cors);
        h.push_str("\r\n");
        Bytes::from(h)
    }
}

/// The shard that owns `user`'s streams, so the per-user limit needs no lock (FNV-1a).
pub fn shard_of(user: &str, shards: usize) -> usize {
    (fnv1a(user) % shards.max(1) as u64) as usize
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Routes request heads: parsing, auth, channel access. Immutable and shareable between threads.
pub struct Front {
    settings: Arc<Settings>,
    verifier: Arc<dyn TokenVerifier + Send + Sync>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front").finish_non_exhaustive()
    }
}

/// The parts of a head the gateway looks at.
#[derive(Default)]
struct Head<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    authorization: Option<&'a [u8]>,
    last_event_id: Option<&'a [u8]>,
    origin: Option<&'a [u8]>,
    sec_fetch_site: Option<&'a [u8]>,
    host: Option<&'a [u8]>,
    content_length: Option<&'a [u8]>,
    transfer_encoding: Option<&'a [u8]>,
    expect: Option<&'a [u8]>,
    content_type: Option<&'a [u8]>,
    /// The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    minor: u8,
    len: usize,
    /// Every header field, for those that may come on several lines: `Accept` (a list: the
    /// lines are one list, RFC 9110 5.3) and `Cookie` (one per request from a browser, but an
    /// intermediary may split them).
    fields: &'a [httparse::Header<'a>],
}

impl<'a> Head<'a> {
    /// The values of every field called `name` (lowercase), in order.
    fn all(&self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }
}

// Lives on the stack for one call; boxing the head would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Parsed<'a> {
    Partial,
    Complete(Head<'a>),
    /// Past `max_head_bytes`, or past [`MAX_HEADERS`]; the message says which.
    TooLarge(&'static str),
    /// Not a request the gateway can read; the message says why.
    Bad(&'static str),
}

fn parse_head<'a>(buf: &'a [u8], headers: &'a mut [httparse::Header<'a>], max: usize) -> Parsed<'a> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > max => return Parsed::TooLarge(HEAD_TOO_LARGE),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max => return Parsed::TooLarge(HEAD_TOO_LARGE),
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::TooLarge(TOO_MANY_HEADERS),
        Err(_) => return Parsed::Bad(MALFORMED),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Parsed::Bad(MALFORMED);
    };
    // The absolute form (RFC 9112 3.2.2: `GET http://gw/api/v1/streams/deals`), as a forward
    // proxy sends it: the path starts after the authority.
    let target = match target.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => {
            let at = rest.find(['/', '?']).unwrap_or(rest.len());
            if rest[at..].starts_with('/') {
                &rest[at..]
            } else {
                "/"
            }
        }
        _ => target,
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let fields: &'a [httparse::Header<'a>] = req.headers;
    let mut head = Head { method, path, query, minor, len, fields, ..Default::default() };
    for h in fields {
        let slot = match h.name.to_ascii_lowercase().as_str() {
            "authorization" => &mut head.authorization,
            "last-event-id" => &mut head.last_event_id,
            "origin" => &mut head.origin,
            "sec-fetch-site" => &mut head.sec_fetch_site,
            "host" => &mut head.host,
            "content-length" => &mut head.content_length,
            "transfer-encoding" => &mut head.transfer_encoding,
            "expect" => &mut head.expect,
            "content-type" => &mut head.content_type,
            _ => continue,
        };
        // The first occurrence wins; a repeated Content-Length could smuggle a body, a
        // repeated Host (RFC 9112 3.2: 400) makes "the gateway's own origin" ambiguous, and a
        // repeated Authorization (not a list, RFC 9110 11.6.2) who the caller is: a proxy in
        // front reading another of them than the gateway would check someone else.
        let single = ["content-length", "host", "authorization"];
        if slot.is_some() && single.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            return Parsed::Bad(MALFORMED);
        }
        slot.get_or_insert(h.value);
    }
    // RFC 9112 3.2: an HTTP/1.1 request without Host gets 400 (HTTP/1.0 had none).
    if head.minor >= 1 && head.host.is_none() {
        return Parsed::Bad("an HTTP/1.1 request needs a Host header field");
    }
    // RFC 9112 6.3: a request whose body framing cannot be known (a Content-Length that is not
    // 1*DIGIT, or one beside a Transfer-Encoding) gets 400 on every route, a stream's too.
    if let Some(len) = head.content_length.map(<[u8]>::trim_ascii) {
        if len.is_empty() || !len.iter().all(u8::is_ascii_digit) {
            return Parsed::Bad("Content-Length is not a number");
        }
        if head.transfer_encoding.is_some() {
            return Parsed::Bad("Content-Length and Transfer-Encoding together");
        }
    }
    Parsed::Complete(head)
}

const MALFORMED: &str = "malformed HTTP request";

/// Do the `Accept` values (one per line: together, one list) admit `text/event-stream` (D10)?
/// Absent means anything (RFC 9110). The most specific range that matches decides (RFC 9110
/// 12.5.1): `text/event-stream;q=0, */*` refuses event streams.
fn accepts_event_stream<'v>(lines: impl IntoIterator<Item = &'v [u8]>) -> bool {
    let mut lines = lines.into_iter().peekable();
    if lines.peek().is_none() {
        return true;
    }
    // (specificity, acceptable) of the most specific matching range so far.
    let mut best: Option<(u8, bool)> = None;
    for v in lines {
        let Ok(v) = std::str::from_utf8(v) else { return false };
        for range in v.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let specificity = match media.as_str() {
                "text/event-stream" => 3,
                "text/*" => 2,
                "*/*" => 1,
                _ => continue,
            };
            let zero_q = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")).is_some_and(|q| {
                    q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                })
            });
            best = match best {
                // Two ranges as specific as each other: either one admitting is enough.
                Some((s, ok)) if s == specificity => Some((s, ok || !zero_q)),
                Some((s, ok)) if s > specificity => Some((s, ok)),
                _ => Some((specificity, !zero_q)),
            };
        }
    }
    best.is_some_and(|(_, ok)| ok)
}

/// Whether `Content-Type` is `application/json`, parameters allowed (`; charset=utf-8`).
fn is_json(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|v| {
        let media = v.split(|&b| b == b';').next().unwrap_or_default();
        media.trim_ascii().eq_ignore_ascii_case(b"application/json")
    })
}

/// The first non-empty value of cookie `name`: a browser sends two cookies of one name when
/// their paths or domains differ (say, one a logout emptied, one set since), in no set order.
/// Only the value taken must be UTF-8: another cookie of the site (an old one in Latin-1, say)
/// does not hide it.
fn cookie_value<'a>(cookies: &'a [u8], name: &str) -> Option<&'a str> {
    cookies.split(|&b| b == b';').find_map(|kv| {
        let eq = kv.iter().position(|&b| b == b'=')?;
        let (k, v) = (kv[..eq].trim_ascii(), kv[eq + 1..].trim_ascii());
        // Quotes around the value are not part of it (RFC 6265 4.1.1); quotes alone are nothing.
        let start = v.iter().position(|&b| b != b'"').unwrap_or(v.len());
        let end = v.iter().rposition(|&b| b != b'"').map_or(start, |i| i + 1);
        let v = &v[start..end.max(start)];
        (k == name.as_bytes() && !v.is_empty()).then(|| std::str::from_utf8(v).ok()).flatten()
    })
}

/// Whether the request's `Origin` names the host it was sent to (`Host`): the gateway's own
/// page (some browsers send `Origin` on same-origin requests too).
fn same_origin(head: &Head<'_>) -> bool {
    let (Some(origin), Some(host)) = (head.origin, head.host) else { return false };
    let authority = origin.split(|&b| b == b'/').nth(2).unwrap_or_default();
    !authority.is_empty() && origin.windows(3).any(|w| w == b"://") && authority.eq_ignore_ascii_case(host.trim_ascii())
}

/// Whether a page of another origin made the request: as the browser's `Sec-Fetch-Site` says
/// when it is sent ([`other_origin`]), else an `Origin` that is not the gateway's own. Neither
/// sent (a same-origin `EventSource`, or a browser that sends no fetch metadata: an old one, or
/// any over plain `http://`): taken for the user's own.
fn from_another_origin(head: &Head<'_>) -> bool {
    match head.sec_fetch_site {
        Some(_) => other_origin(head),
        None => head.origin.is_some() && !same_origin(head),
    }
}

/// Whether the browser says a page of another origin made the request (`Sec-Fetch-Site`
/// `cross-site`, or `same-site`: a sibling subdomain is another origin and gets the cookie even
/// when it is `SameSite=Strict`). `same-origin` and `none` (the address bar) are the user's own.
fn other_origin(head: &Head<'_>) -> bool {
    head.sec_fetch_site.is_some_and(|v| {
        let v = v.trim_ascii();
        !v.eq_ignore_ascii_case(b"same-origin") && !v.eq_ignore_ascii_case(b"none")
    })
}

/// A CORS preflight, answered for `cors` (the request's origin when allowed). An `OPTIONS`
/// without `Origin` is no preflight (a probe, `curl -X OPTIONS`): 204 with the methods in `Allow`.
fn preflight(head: &Head<'_>, cors: Option<&str>, methods: &str) -> Routed {
    if head.origin.is_none() {
        let allow = format!("Allow: {methods}\r\n");
        return Routed::Respond(Response { status: 204, bytes: Bytes::from(closing_head(204, "", &allow, None)), refusal: None });
    }
    let Some(origin) = cors else { return origin_not_allowed() };
    let extra = format!(
        "Access-Control-Allow-Methods: {methods}\r\n\
         Access-Control-Allow-Headers: Authorization, Last-Event-ID, Accept, Cache-Control, Content-Type\r\n\
         Access-Control-Max-Age: 600\r\n"
    );
    // RFC 9110 8.6: no Content-Length (nor a body's type) in a 204.
    Routed::Respond(Response { status: 204, bytes: Bytes::from(closing_head(204, "", &extra, Some(origin))), refusal: None })
}

/// 403 for a request from an origin the gateway does not serve.
fn origin_not_allowed() -> Routed {
    Routed::Respond(Response::error(403, "origin_not_allowed", "origin not allowed", "", None))
}

enum Token<'a> {
    None,
    Found(std::borrow::Cow<'a, str>),
    /// From the cookie: the browser sends it on requests any site makes.
    Cookie(&'a str),
}

impl Front {
    /// A router for `settings`, verifying tokens with `verifier`.
    pub fn new(settings: Arc<Settings>, verifier: Arc<dyn TokenVerifier + Send + Sync>, metrics: Arc<Metrics>) -> Front {
        Front { settings, verifier, metrics }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// The process counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn allowed_origin(&self, origin: Option<&[u8]>) -> Option<String> {
        let o = std::str::from_utf8(origin?).ok()?;
        let list = &self.settings.config.server.cors_origins;
        let entry = list.iter().find(|a| *a == "*" || a.eq_ignore_ascii_case(o))?;
        // The configured origin is written back, not the request's spelling of it; only `"*"`
        // echoes the request's, and only plain ASCII without controls or spaces.
        let echoed = if entry == "*" { o } else { entry.as_str() };
        echoed.bytes().all(|b| b.is_ascii_graphic()).then(|| echoed.to_string())
    }

    /// Routes the bytes read so far from a new connection. `unix_now` (seconds) judges `exp`/`nbf`.
    ///
    /// Never panics; every refusal is a complete response. Call again with more bytes on
    /// [`Routed::Partial`]; the frontend answers 408-by-closing when its head timeout passes.
    pub fn route(&self, buf: &[u8], unix_now: u64) -> Routed {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let max = self.settings.config.server.max_head_bytes;
        let routed = match parse_head(buf, &mut headers, max) {
            Parsed::Partial => Routed::Partial,
            Parsed::TooLarge(message) => {
                Routed::Respond(Response::error(431, "head_too_large", message, "", None))
            }
            Parsed::Bad(message) => Routed::Respond(Response::error(400, "bad_request", message, "", None)),
            Parsed::Complete(head) => {
                let cors = self.allowed_origin(head.origin);
                self.route_head(&head, cors.as_deref(), unix_now)
            }
        };
        // Every refusal is counted here, the 431 and 400 of unparsable heads included.
        if let Routed::Respond(r) = &routed {
            self.metrics.response(r.status);
        }
        routed
    }

    fn route_head(&self, head: &Head<'_>, cors: Option<&str>, unix_now: u64) -> Routed {
        let server = &self.settings.config.server;
        let not_allowed = |allow: &str| {
            Routed::Respond(Response::error(
                405,
                "method_not_allowed",
                "method not allowed",
                &format!("Allow: {allow}\r\n"),
                cors,
            ))
        };
        if let Some(channel) = head.path.strip_prefix("/api/v1/streams/") {
            return match head.method {
                "GET" => self.route_stream(head, channel, cors, unix_now),
                "OPTIONS" => preflight(head, cors, "GET, OPTIONS"),
                _ => not_allowed("GET, OPTIONS"),
            };
        }
        if let Some(channel) = head.path.strip_prefix("/api/v1/publish/").filter(|_| server.publish_endpoint) {
            return match head.method {
                "POST" => self.route_publish(head, channel, cors, unix_now),
                "OPTIONS" => preflight(head, cors, "POST, OPTIONS"),
                _ => not_allowed("POST, OPTIONS"),
            };
        }
        let ops = match head.path {
            "/healthz" => Routed::Health,
            "/readyz" => Routed::Ready,
            "/metrics" => Routed::Metrics,
            "/" if self.settings.config.demo.enabled => Routed::DemoPage,
            _ => return Routed::Respond(Response::error(404, "not_found", "no such route", "", cors)),
        };
        if head.method == "GET" {
            ops
        } else {
            not_allowed("GET")
        }
    }

    fn token<'a>(&self, head: &Head<'a>) -> Token<'a> {
        let auth = &self.settings.config.auth;
        // An empty value (`sse_token=` as a logout leaves it, `access_token=`) is no token: the
        // next place in D1's order is looked at. (A bare `Bearer` is one already: httparse trims
        // a value's trailing spaces.)
        if let Some(v) = head.authorization {
            if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
                return Token::Found(String::from_utf8_lossy(v[7..].trim_ascii()));
            }
        }
        if let Some(name) = &auth.cookie {
            if let Some(t) = head.all("cookie").find_map(|c| cookie_value(c, name)) {
                return Token::Cookie(t);
            }
        }
        if auth.query_param {
            let mut query = form_urlencoded::parse(head.query.as_bytes());
            if let Some((_, t)) = query.find(|(k, v)| k == "access_token" && !v.is_empty()) {
                return Token::Found(t);
            }
        }
        Token::None
    }

    fn authenticate(&self, head: &Head<'_>, cors: Option<&str>, unix_now: u64) -> Result<Identity, Routed> {
        match self.token(head) {
            Token::None => Err(Routed::Respond(Response::error(
                401,
                "unauthorized",
                "a bearer token is required",
                "WWW-Authenticate: Bearer realm=\"sse-gateway\"\r\n",
                cors,
            ))),
            // A cookie goes with requests that any page makes (an `EventSource` or a form on
            // another site): from an origin that is neither allowed nor this one, it is not the
            // user asking. A page elsewhere could otherwise open streams as the user (evicting
            // theirs) or publish. Browsers send no `Origin` on a same-origin `EventSource`, nor
            // on a page's `<img>`/`<script>` loads or navigations: for those, the fetch metadata
            // browsers send (`Sec-Fetch-Site`) tells another origin's request apart. When the
            // browser sends it, it decides: `Origin` against `Host` leaves the scheme out (a page
            // of `http://` the gateway's host is another origin than `https://` it), and a proxy
            // may rewrite `Host`.
            Token::Cookie(_) if cors.is_none() && from_another_origin(head) => Err(origin_not_allowed()),
            Token::Cookie(t) => self.verify(t, cors, unix_now),
            Token::Found(t) => self.verify(&t, cors, unix_now),
        }
    }

    fn verify(&self, t: &str, cors: Option<&str>, unix_now: u64) -> Result<Identity, Routed> {
        self.verifier.verify(t, unix_now).map_err(|e: TokenError| {
            let resp = Response::error(
                401,
                "unauthorized",
                &format!("invalid token: {}", e.reason()),
                "WWW-Authenticate: Bearer realm=\"sse-gateway\", error=\"invalid_token\"\r\n",
                cors,
            );
            let refusal = Some(Refusal::new("unauthorized", e.reason()));
            Routed::Respond(Response { refusal, ..resp })
        })
    }

    fn route_stream(&self, head: &Head<'_>, channel: &str, cors: Option<&str>, unix_now: u64) -> Routed {
        if !accepts_event_stream(head.all("accept")) {
            return Routed::Respond(Response::error(406, "not_acceptable", "Accept must admit text/event-stream", "", cors));
        }
        let identity = match self.authenticate(head, cors, unix_now) {
            Ok(i) => i,
            Err(r) => return r,
        };
        let Some(id) = self.settings.channel_id(channel) else {
            return Routed::Respond(Response::error(404, "unknown_channel", "no such channel", "", cors));
        };
        let ch = self.settings.channel(id);
        // Before the query: a user who may not read the channel learns nothing of it (its versions).
        if !ch.roles.is_empty() && !identity.roles.iter().any(|r| ch.roles.contains(r)) {
            self.metrics.forbidden();
            let s = &self.settings.config.streams;
            // D2: a long retry so a native EventSource does not hammer; this is an answer, not a stream.
            let retry = s.forbidden_retry.as_millis() as u64 + jitter_ms(&identity.user, unix_now, s.retry_jitter.as_millis() as u64);
            let refusal = Refusal { forbidden: Some((identity.user.as_str().into(), id)), ..Refusal::new("forbidden", "") };
            return Routed::Respond(Response::stream_refusal(retry, cors, refusal));
        }
        let mut version = None;
        let mut query_resume = None;
        for (k, v) in form_urlencoded::parse(head.query.as_bytes()) {
            match &*k {
                // An empty value says nothing, as an empty header (a page that always appends
                // the id it remembers, or the version it was told, sends one before it has any).
                "version" if version.is_none() && !v.trim().is_empty() => version = Some(v.trim().parse::<u32>().ok()),
                "last_event_id" if query_resume.is_none() && !v.trim().is_empty() => query_resume = Some(v.into_owned()),
                _ => {}
            }
        }
        let version = match version {
            None => ch.default_version,
            Some(Some(v)) if ch.versions.contains(&v) => v,
            Some(_) => {
                let body = serde_json::json!({
                    "code": "unsupported_version",
                    "message": "unsupported schema version",
                    "supported": ch.versions,
                })
                .to_string();
                let resp = Response::with_body(400, "application/json", "", cors, body.as_bytes());
                return Routed::Respond(Response { refusal: Some(Refusal::new("unsupported_version", "")), ..resp });
            }
        };
        // An empty header says nothing (browsers send none before the first id): the query's
        // id, if any, applies.
        let header = head.last_event_id.filter(|v| !v.trim_ascii().is_empty());
        let resume = header.map(<[u8]>::to_vec).or(query_resume.map(String::into_bytes)).map(|raw| {
            match EventId::parse(raw.trim_ascii()) {
                Some(id) => Resume::After(id),
                None => Resume::Malformed,
            }
        });
        Routed::Stream(StreamRequest { identity, channel: id, version, resume, cors_origin: cors.map(str::to_string) })
    }

    fn route_publish(&self, head: &Head<'_>, channel: &str, cors: Option<&str>, unix_now: u64) -> Routed {
        let identity = match self.authenticate(head, cors, unix_now) {
            Ok(i) => i,
            Err(r) => return r,
        };
        let role = &self.settings.config.server.publish_role;
        if !identity.roles.iter().any(|r| r == role) {
            return Routed::Respond(Response::error(403, "forbidden", "the publisher role is required", "", cors));
        }
        let Some(id) = self.settings.channel_id(channel) else {
            return Routed::Respond(Response::error(404, "unknown_channel", "no such channel", "", cors));
        };
        let error = |status, code, message| Routed::Respond(Response::error(status, code, message, "", cors));
        // A body is framed by Content-Length only: one sent with a transfer coding (chunked, or
        // both, which RFC 9112 6.3 says must not be framed by the length) is refused.
        if head.transfer_encoding.is_some() {
            return error(400, "bad_request", "Transfer-Encoding is not supported: send the body with a Content-Length");
        }
        let Some(len) = head.content_length.map(<[u8]>::trim_ascii) else {
            return error(411, "length_required", "Content-Length is required");
        };
        // 1*DIGIT (RFC 9112 6.3, checked by `parse_head`): no sign, no list; too many digits is too large.
        let n = std::str::from_utf8(len).ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(usize::MAX);
        match n {
            n if n > self.settings.config.server.max_body_bytes => error(413, "body_too_large", "body too large"),
            // Only a JSON body: a page of another site can send a form's types or none (a
            // `no-cors` fetch of a Blob) with the user's cookie and no preflight, and a browser too
            // old to send `Origin` or `Sec-Fetch-Site` leaves no other sign that it is not the
            // user's own page. `application/json` from another origin needs a CORS preflight.
            _ if !is_json(head.content_type) => {
                error(415, "unsupported_media_type", "Content-Type must be application/json")
            }
            n => Routed::Publish(PublishRequest {
                channel: id,
                content_length: n,
                head_len: head.len,
                cors_origin: cors.map(str::to_string),
                // RFC 9110 10.1.1: ignored in an HTTP/1.0 request; nothing to wait for with no body.
                expect_continue: n > 0
                    && head.minor >= 1
                    && head.expect.is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue")),
            }),
        }
    }
}

/// Deterministic per-request jitter for the forbidden `retry:` (the router holds no RNG).
fn jitter_ms(user: &str, unix_now: u64, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    (fnv1a(user) ^ unix_now.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_rules() {
        assert!(accepts_event_stream([]));
        assert!(accepts_event_stream([&b"text/event-stream"[..]]));
        assert!(accepts_event_stream([&b"application/json, text/*;q=0.5"[..]]));
        assert!(accepts_event_stream([&b"*/*"[..]]));
        assert!(!accepts_event_stream([&b"application/json"[..]]));
        assert!(!accepts_event_stream([&b"text/event-stream;q=0"[..]]));
        assert!(!accepts_event_stream([&b"\xff"[..]]));
    }

    #[test]
    fn the_most_specific_accept_range_decides() {
        // RFC 9110 12.5.1: an explicit refusal is not overridden by a wildcard.
        assert!(!accepts_event_stream([&b"text/event-stream;q=0, */*"[..]]));
        assert!(!accepts_event_stream([&b"*/*, text/*;q=0"[..]]));
        assert!(accepts_event_stream([&b"text/*;q=0, text/event-stream"[..]]));
        assert!(accepts_event_stream([&b"*/*;q=0, text/event-stream;q=0.1"[..]]));
        assert!(accepts_event_stream([&b"text/event-stream;q=0, text/event-stream"[..]]));
        // Several lines are one list (RFC 9110 5.3): the second may admit, or refuse.
        assert!(accepts_event_stream([&b"application/json"[..], b"text/event-stream"]));
        assert!(!accepts_event_stream([&b"*/*"[..], b"text/event-stream;q=0"]));
        assert!(!accepts_event_stream([&b"text/event-stream"[..], b"\xff"]));
    }

    #[test]
    fn only_a_json_body_type_is_taken() {
        assert!(is_json(Some(b"application/json")));
        assert!(is_json(Some(b"Application/JSON; charset=utf-8")));
        assert!(is_json(Some(b" application/json ;charset=UTF-8")));
        for v in [&b"text/plain"[..], b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x", b"", b"application/jsonx", b"\xff"] {
            assert!(!is_json(Some(v)), "{:?}", String::from_utf8_lossy(v));
        }
        assert!(!is_json(None));
    }

    #[test]
    fn cookie_lookup_finds_the_named_cookie() {
        assert_eq!(cookie_value(b"a=1; sse_token=abc.def.ghi; b=2", "sse_token"), Some("abc.def.ghi"));
        assert_eq!(cookie_value(b"a=1", "sse_token"), None);
        // Two of one name (paths or domains differ): the first that holds a value.
        assert_eq!(cookie_value(b"sse_token=; a=1; sse_token=abc", "sse_token"), Some("abc"));
        assert_eq!(cookie_value(b"sse_token=\"\"; sse_token=", "sse_token"), None);
        // Another cookie's bytes need not be UTF-8; the token's must.
        assert_eq!(cookie_value(b"legacy=caf\xe9; sse_token=abc", "sse_token"), Some("abc"));
        assert_eq!(cookie_value(b"sse_token=ab\xe9; sse_token=abc", "sse_token"), Some("abc"));
        assert_eq!(cookie_value(b"sse_token=\"abc\"", "sse_token"), Some("abc"));
        assert_eq!(cookie_value(b"sse_token=\"; sse_token=abc", "sse_token"), Some("abc"));
    }

    #[test]
    fn users_spread_over_shards_deterministically() {
        // FNV-1a (64 bits): the published test vector, then users pinned to their shards.
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!([shard_of("alice", 4), shard_of("bob", 4), shard_of("carol", 4)], [3, 0, 2]);
        assert_eq!(shard_of("alice", 1), 0);
        let used: std::collections::HashSet<_> = (0..100).map(|i| shard_of(&format!("u{i}"), 4)).collect();
        assert_eq!(used.len(), 4);
    }
}
