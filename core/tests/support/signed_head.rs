//! A request head that carries a validly signed token, built from a few choices, and what the
//! router must make of it (`core/src/http.rs`, README, docs/config-reference.md). Shared by the
//! property tests (`core/tests/properties.rs`) and the `route` fuzz target, so both reach what
//! lies past authentication: the role checks, version and resume selection, the publish
//! endpoint's body framing.
//!
//! The router under test is configured with `[auth] cookie = "t"`, `query_param = true`, and
//! `[server] publish_endpoint = true`, `cors_origins = [ORIGIN]`, the seed catalogue (version 1
//! of every channel; `payments` needs `finance_manager`), `publish_role` and `max_body_bytes` at
//! their defaults.
#![allow(dead_code)]

use sse_gateway_core::{EventId, Resume, Routed, Settings};

pub const ORIGIN: &str = "https://a.example";
/// The last is no channel.
pub const CHANNELS: [&str; 5] = ["deals", "notifications", "payments", "tasks", "nope"];
pub const ROLES: [&str; 3] = ["finance_manager", "publisher", "viewer"];
/// `version=` values (the first, repeated, is the one the seed catalogue has).
pub const VERSIONS: [&str; 6] = ["1", "2", "x", "", "%201", "1"];
/// `last_event_id=` values (`%20` decodes to a space: says nothing, as empty does).
pub const QUERY_IDS: [&str; 4] = ["1000-5", "garbage", "", "%20"];
pub const HEADER_IDS: [&str; 4] = ["1000-7", "junk", "", "   "];
pub const ACCEPTS: [&str; 5] = ["text/event-stream", "*/*", "application/json", "text/event-stream;q=0", "text/*"];
pub const CONTENT_LENGTHS: [&str; 12] =
    ["0", "17", " 42 ", "+5", "5,5", "", "99999999999999999999999", "70000", "65536", "65537", "1", "300"];
pub const TRANSFER_ENCODINGS: [&str; 3] = ["chunked", "identity", "gzip, chunked"];
pub const EXPECTS: [&str; 5] = ["100-continue", "100-Continue ", "  100-continue", "nope", ""];
pub const ORIGINS: [&str; 3] = [ORIGIN, "https://evil.example", "null"];
/// `Content-Type` values of a publish (the last: none sent); the first five are JSON.
pub const CONTENT_TYPES: [&str; 8] = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    " application/json;charset=UTF-8",
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "",
];
pub const BEARERS: [&str; 4] = ["Bearer ", "bearer ", "BEARER ", "Bearer  "];
/// The default `server.max_body_bytes`.
const MAX_BODY: usize = 64 * 1024;

/// Every choice is an index, taken modulo its table (so any value will do).
#[derive(Debug, Clone, Default)]
pub struct SignedHead {
    /// 0: a stream path, 1: the publish path, else another path.
    pub kind: u8,
    /// The method the path takes (GET for a stream, POST for a publish), or another.
    pub method_ok: bool,
    pub channel: u8,
    /// `version=` parameters, in order.
    pub versions: Vec<u8>,
    /// `last_event_id=` parameters, in order.
    pub query_ids: Vec<u8>,
    pub header_id: Option<u8>,
    pub accept: Option<u8>,
    /// 0: `Authorization`, 1: the cookie `t`, else the `access_token` query parameter.
    pub token_at: u8,
    pub bearer: u8,
    pub user: String,
    /// A bit per role of [`ROLES`].
    pub roles: u8,
    pub content_lengths: Vec<u8>,
    pub transfer_encoding: Option<u8>,
    pub expect: Option<u8>,
    /// A [`CONTENT_TYPES`] index.
    pub content_type: u8,
    /// HTTP/1.0 when 0, else HTTP/1.1.
    pub minor: u8,
    pub origin: Option<u8>,
    /// Headers the router ignores (names made `X-` + letters, values printable ASCII).
    pub noise: Vec<(String, String)>,
    /// Bytes after the head (the start of a body, or of anything).
    pub after: Vec<u8>,
}

/// What the router must answer.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Stream { channel: &'static str, version: u32, resume: Option<Resume> },
    /// The 200 `event: error` `forbidden` answer to a stream on a channel the roles do not open.
    Forbidden,
    Publish { channel: &'static str, content_length: usize, expect_continue: bool },
    Refused(u16),
}

fn pick<T: Copy>(table: &[T], i: u8) -> T {
    table[i as usize % table.len()]
}

impl SignedHead {
    /// The user named in the token: `user` made `[a-z0-9]`, never empty.
    pub fn sub(&self) -> String {
        let s: String = self.user.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).take(16).collect();
        if s.is_empty() {
            "u".to_string()
        } else {
            s
        }
    }

    pub fn role_names(&self) -> Vec<&'static str> {
        ROLES.iter().enumerate().filter(|(i, _)| self.roles & (1 << i) != 0).map(|(_, r)| *r).collect()
    }

    /// An HS256 token for [`SignedHead::sub`] with [`SignedHead::role_names`], valid an hour
    /// from `now`.
    pub fn token(&self, secret: &[u8], now: u64) -> String {
        let claims = serde_json::json!({ "sub": self.sub(), "roles": self.role_names(), "exp": now + 3600, "iat": now });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .expect("sign")
    }

    fn channel_name(&self) -> &'static str {
        pick(&CHANNELS, self.channel)
    }

    /// The request bytes, `token` in its place.
    pub fn bytes(&self, token: &str) -> Vec<u8> {
        let (path, method) = match self.kind % 3 {
            0 => (format!("/api/v1/streams/{}", self.channel_name()), if self.method_ok { "GET" } else { "POST" }),
            1 => (format!("/api/v1/publish/{}", self.channel_name()), if self.method_ok { "POST" } else { "PUT" }),
            _ => ("/api/v1/nothing".to_string(), if self.method_ok { "GET" } else { "POST" }),
        };
        let mut query: Vec<String> = Vec::new();
        query.extend(self.versions.iter().map(|&v| format!("version={}", pick(&VERSIONS, v))));
        query.extend(self.query_ids.iter().map(|&v| format!("last_event_id={}", pick(&QUERY_IDS, v))));
        if self.token_at % 3 == 2 {
            query.push(format!("access_token={token}"));
        }
        let target = if query.is_empty() { path } else { format!("{path}?{}", query.join("&")) };
        let mut s = format!("{method} {target} HTTP/1.{}\r\nHost: gw\r\n", u8::from(self.minor != 0));
        match self.token_at % 3 {
            0 => s.push_str(&format!("Authorization: {}{token}\r\n", pick(&BEARERS, self.bearer))),
            1 => s.push_str(&format!("Cookie: a=1; t={token}\r\n")),
            _ => {}
        }
        if let Some(a) = self.accept {
            s.push_str(&format!("Accept: {}\r\n", pick(&ACCEPTS, a)));
        }
        if let Some(i) = self.header_id {
            s.push_str(&format!("Last-Event-ID: {}\r\n", pick(&HEADER_IDS, i)));
        }
        // Field names are case-insensitive: the spelling comes from the choice's higher digits
        // (its value from the lower), so a repeated Content-Length is also two spellings of it.
        for &c in &self.content_lengths {
            let name = ["Content-Length", "content-length", "CONTENT-length"][c as usize / CONTENT_LENGTHS.len() % 3];
            s.push_str(&format!("{name}: {}\r\n", pick(&CONTENT_LENGTHS, c)));
        }
        if let Some(t) = self.transfer_encoding {
            let name = ["Transfer-Encoding", "transfer-encoding", "TRANSFER-ENCODING"][t as usize / TRANSFER_ENCODINGS.len() % 3];
            s.push_str(&format!("{name}: {}\r\n", pick(&TRANSFER_ENCODINGS, t)));
        }
        if let Some(e) = self.expect {
            s.push_str(&format!("Expect: {}\r\n", pick(&EXPECTS, e)));
        }
        match pick(&CONTENT_TYPES, self.content_type) {
            "" => {}
            t => s.push_str(&format!("Content-Type: {t}\r\n")),
        }
        if let Some(o) = self.origin {
            s.push_str(&format!("Origin: {}\r\n", pick(&ORIGINS, o)));
        }
        for (k, v) in self.noise.iter().take(8) {
            let k: String = k.chars().filter(char::is_ascii_alphabetic).take(12).collect();
            let v: String = v.chars().filter(|c| (' '..='~').contains(c)).take(40).collect();
            s.push_str(&format!("X-{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        let mut b = s.into_bytes();
        b.extend_from_slice(&self.after);
        b
    }

    fn origin(&self) -> Option<&'static str> {
        self.origin.map(|o| pick(&ORIGINS, o))
    }

    /// The rules, from the request's parts (not from the bytes).
    fn expected(&self) -> Expected {
        use Expected::*;
        // A repeated Content-Length could smuggle a body: 400 for any request.
        if self.content_lengths.len() > 1 {
            return Refused(400);
        }
        // A body whose framing cannot be known (RFC 9112 6.3), on any route: a Content-Length
        // that is not 1*DIGIT, or one beside a Transfer-Encoding.
        if let Some(&cl) = self.content_lengths.first() {
            let cl = pick(&CONTENT_LENGTHS, cl).trim();
            if cl.is_empty() || !cl.bytes().all(|b| b.is_ascii_digit()) || self.transfer_encoding.is_some() {
                return Refused(400);
            }
        }
        let roles = self.role_names();
        // A cookie from an origin that is neither allowed nor the gateway's own is not the user.
        let cookie_refused = self.token_at % 3 == 1 && self.origin().is_some_and(|o| o != ORIGIN);
        let channel = self.channel_name();
        match self.kind % 3 {
            0 => {
                if !self.method_ok {
                    return Refused(405);
                }
                if self.accept.is_some_and(|a| matches!(pick(&ACCEPTS, a), "application/json" | "text/event-stream;q=0")) {
                    return Refused(406);
                }
                if cookie_refused {
                    return Refused(403);
                }
                if channel == "nope" {
                    return Refused(404);
                }
                // The role before the query: one who may not read the channel learns nothing of it.
                if channel == "payments" && !roles.contains(&"finance_manager") {
                    return Forbidden;
                }
                // The first `version=` that says something decides (empty says nothing); the
                // seed catalogue has only version 1.
                // `%20` decodes to a space, which says nothing around a number.
                let decoded = |v: u8| pick(&VERSIONS, v).replace("%20", " ").trim().to_string();
                let version = match self.versions.iter().map(|&v| decoded(v)).find(|v| !v.is_empty()).as_deref() {
                    None | Some("1") => 1,
                    Some(_) => return Refused(400),
                };
                // The header wins when it says something; else the first query id that does.
                let said = |v: &str| {
                    let v = v.trim();
                    (!v.is_empty()).then(|| EventId::parse(v.as_bytes()).map_or(Resume::Malformed, Resume::After))
                };
                let resume = self
                    .header_id
                    .and_then(|i| said(pick(&HEADER_IDS, i)))
                    .or_else(|| self.query_ids.iter().find_map(|&q| said(&pick(&QUERY_IDS, q).replace("%20", " "))));
                Stream { channel, version, resume }
            }
            1 => {
                if !self.method_ok {
                    return Refused(405);
                }
                if cookie_refused {
                    return Refused(403);
                }
                if !roles.contains(&"publisher") {
                    return Refused(403);
                }
                if channel == "nope" {
                    return Refused(404);
                }
                if self.transfer_encoding.is_some() {
                    return Refused(400);
                }
                let Some(&cl) = self.content_lengths.first() else { return Refused(411) };
                let cl = pick(&CONTENT_LENGTHS, cl).trim();
                let n = cl.parse::<usize>().unwrap_or(usize::MAX);
                if n > MAX_BODY {
                    return Refused(413);
                }
                // Only a JSON body: a form's types (or none) come from any page without a preflight.
                if (self.content_type as usize % CONTENT_TYPES.len()) >= 5 {
                    return Refused(415);
                }
                let expect_continue = n > 0
                    && self.minor != 0
                    && self.expect.is_some_and(|e| pick(&EXPECTS, e).trim().eq_ignore_ascii_case("100-continue"));
                Publish { channel, content_length: n, expect_continue }
            }
            _ => Refused(404),
        }
    }

    /// Checks what the router made of `raw` (from [`SignedHead::bytes`]).
    pub fn check(&self, raw: &[u8], routed: &Routed, settings: &Settings) {
        let expected = self.expected();
        let cors = self.origin().filter(|o| *o == ORIGIN).map(str::to_string);
        match (routed, &expected) {
            (Routed::Stream(req), Expected::Stream { channel, version, resume }) => {
                assert_eq!(req.identity.user, self.sub(), "a stream is the signed sub's");
                assert_eq!(req.identity.roles, self.role_names(), "with the signed roles");
                assert_eq!(Some(req.channel), settings.channel_id(channel), "on the path's channel");
                assert_eq!(req.version, *version, "version");
                assert_eq!(req.resume, *resume, "resume: Last-Event-ID, else the first last_event_id");
                assert_eq!(req.cors_origin, cors, "the allowed origin only");
                if *channel == "payments" {
                    assert!(req.identity.roles.iter().any(|r| r == "finance_manager"), "payments opened without the role");
                }
            }
            (Routed::Publish(p), Expected::Publish { channel, content_length, expect_continue }) => {
                assert!(self.transfer_encoding.is_none(), "a publish with Transfer-Encoding");
                assert_eq!(self.content_lengths.len(), 1, "a publish needs exactly one Content-Length");
                assert_eq!(p.content_length, *content_length, "content_length is the Content-Length");
                let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
                assert_eq!(p.head_len, head_end, "head_len is just past the blank line");
                assert_eq!(Some(p.channel), settings.channel_id(channel), "on the path's channel");
                assert_eq!(p.expect_continue, *expect_continue, "expect_continue");
                assert_eq!(p.cors_origin, cors, "the allowed origin only");
                assert!(self.role_names().contains(&"publisher"), "a publish without the publisher role");
            }
            (Routed::Respond(r), Expected::Forbidden) => {
                let body = String::from_utf8_lossy(&r.bytes);
                assert_eq!(r.status, 200, "{body}");
                assert!(body.contains("\r\n\r\nretry: ") && body.ends_with("event: error\ndata: {\"code\":\"forbidden\"}\n\n"), "{body}");
                assert!(r.refusal.as_ref().is_some_and(|f| f.forbidden.as_ref().is_some_and(|(u, _)| **u == *self.sub())), "{:?}", r.refusal);
            }
            (Routed::Respond(r), Expected::Refused(status)) => {
                assert_eq!(r.status, *status, "{}", String::from_utf8_lossy(&r.bytes));
            }
            (other, _) => panic!("expected {expected:?}, routed {other:?}\n{}", String::from_utf8_lossy(raw)),
        }
        if let Routed::Respond(r) = routed {
            super::response::assert_complete_response(&r.bytes, ORIGIN);
        }
    }
}
