//! A test harness for the core: one shard, a fake clock, real HS256 tokens, and the bytes each
//! stream would have put on the wire.
#![allow(dead_code)]

pub mod model;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sse_gateway_core::*;

pub const SECRET: &str = "test-secret-of-at-least-32-bytes!!";

/// The epoch of a channel's ids here: one of its own per channel, as the frontends give them
/// (`process_epoch`); `deals` (the first) has 1000.
pub fn epoch_of(ch: ChannelId) -> u64 {
    1000 + ch.index() as u64
}

pub struct Harness {
    pub now: Instant,
    /// The wall clock: whole seconds since the Unix epoch, and the fraction of the current one.
    pub unix: u64,
    pub subsec: Duration,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub front: Front,
    pub gw: Gateway,
    pub ingest: Vec<Ingest>,
    /// Bytes written per stream since the last `take_wire`.
    pub wire: HashMap<StreamId, Vec<u8>>,
    /// Streams the gateway closed, with the reason.
    pub closed: HashMap<StreamId, CloseReason>,
    /// Backfill requests seen.
    pub backfills: Vec<Output>,
    /// When false, Transmit outputs are not drained (a client that stops reading).
    pub reading: HashMap<StreamId, bool>,
}

/// A configuration with the given extra TOML, a known secret and no retry jitter, so frames are
/// exact.
/// `auth` adds keys to `[auth]`; `extra` follows `[streams]` (keys, then any other tables).
pub fn config(auth: &str, extra: &str) -> String {
    let jitter = if extra.contains("retry_jitter") { "" } else { "retry_jitter = 0\n" };
    format!("[auth]\nsecret = \"{SECRET}\"\n{auth}\n[streams]\n{jitter}{extra}")
}

impl Harness {
    pub fn new(extra: &str) -> Harness {
        Harness::build("", extra, Catalogue::seed())
    }

    pub fn with_auth(auth: &str, extra: &str) -> Harness {
        Harness::build(auth, extra, Catalogue::seed())
    }

    pub fn with_catalogue(extra: &str, catalogue: Catalogue) -> Harness {
        Harness::build("", extra, catalogue)
    }

    pub fn build(auth: &str, extra: &str, catalogue: Catalogue) -> Harness {
        Harness::build_sized(auth, extra, catalogue, 10_000)
    }

    /// [`Harness::build`] with a shard that holds at most `max_streams` streams.
    pub fn build_sized(auth: &str, extra: &str, catalogue: Catalogue, max_streams: usize) -> Harness {
        let text = config(auth, extra);
        let cfg = Config::from_toml(&text).expect("test config parses");
        let settings = Arc::new(Settings::new(cfg, catalogue).expect("test settings are valid"));
        let metrics = Arc::new(Metrics::new(&settings));
        let keys = KeyMaterial { secret: Some(SECRET.as_bytes().to_vec()), ..Default::default() };
        let verifier = JwtVerifier::new(&settings.config.auth, &keys).expect("verifier");
        let front = Front::new(settings.clone(), Arc::new(verifier), metrics.clone());
        let gw = Gateway::new(settings.clone(), metrics.clone(), max_streams, 7);
        let ingest = (0..settings.channels.len())
            .map(|i| {
                let ch = settings.channel_id(&settings.channels[i].name).unwrap();
                Ingest::new(settings.clone(), metrics.clone(), ch, epoch_of(ch))
            })
            .collect();
        Harness {
            now: Instant::now(),
            unix: 1_900_000_000,
            subsec: Duration::ZERO,
            settings,
            metrics,
            front,
            gw,
            ingest,
            wire: HashMap::new(),
            closed: HashMap::new(),
            backfills: Vec::new(),
            reading: HashMap::new(),
        }
    }

    pub fn channel(&self, name: &str) -> ChannelId {
        self.settings.channel_id(name).expect("channel exists")
    }

    /// A real HS256 JWT.
    pub fn token(&self, user: &str, roles: &[&str], ttl: u64) -> String {
        let claims = serde_json::json!({ "sub": user, "roles": roles, "exp": self.unix + ttl, "iat": self.unix });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign")
    }

    /// A GET head for `path` with `headers` (each "Name: value").
    pub fn head(path: &str, headers: &[&str]) -> Vec<u8> {
        let mut s = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n");
        for h in headers {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    pub fn route(&self, raw: &[u8]) -> Routed {
        self.front.route(raw, self.unix)
    }

    /// Opens a stream for `user` on `path` (token in the Authorization header).
    pub fn open_path(&mut self, user: &str, roles: &[&str], path: &str, extra: &[&str]) -> Result<StreamId, Response> {
        self.open_path_with(user, roles, path, extra, 3600, true)
    }

    /// [`Harness::open_path`] with a token that expires `ttl` seconds from now, for a client
    /// that reads from the start, or not (`reading`).
    pub fn open_path_with(&mut self, user: &str, roles: &[&str], path: &str, extra: &[&str], ttl: u64, reading: bool) -> Result<StreamId, Response> {
        let auth = format!("Authorization: Bearer {}", self.token(user, roles, ttl));
        let mut headers = vec!["Accept: text/event-stream", auth.as_str()];
        headers.extend_from_slice(extra);
        let raw = Self::head(path, &headers);
        match self.route(&raw) {
            Routed::Stream(req) => {
                let r = self.gw.open(req, self.now, self.since_epoch());
                if let (Ok(id), false) = (&r, reading) {
                    self.reading.insert(*id, false);
                }
                self.drain();
                r
            }
            Routed::Respond(r) => Err(r),
            other => panic!("unexpected routing {other:?}"),
        }
    }

    pub fn open(&mut self, user: &str, channel: &str) -> StreamId {
        self.open_path(user, &[], &format!("/api/v1/streams/{channel}"), &[]).expect("stream opens")
    }

    /// Publishes a message on a channel through its ingest and every event into the shard.
    pub fn publish_msg(&mut self, channel: &str, msg: UpstreamMessage) -> Result<Event, Dropped> {
        let ch = self.channel(channel);
        let r = self.ingest[ch.index()].handle_message(&msg);
        if let Ok(ev) = &r {
            self.gw.handle_event(ev);
            self.drain();
        }
        r
    }

    pub fn publish(&mut self, channel: &str, kind: &str, body: serde_json::Value) -> Event {
        self.publish_msg(channel, msg(kind, body)).expect("valid event")
    }

    pub fn publish_to(&mut self, channel: &str, kind: &str, body: serde_json::Value, recipients: &str) -> Event {
        let mut m = msg(kind, body);
        m.recipient_ids = Some(HeaderValue::Text(recipients.into()));
        self.publish_msg(channel, m).expect("valid event")
    }

    /// Applies every output: writes what readers would read, closes what must close.
    pub fn drain(&mut self) {
        while let Some(out) = self.gw.poll_output() {
            match out {
                Output::Transmit(id) => {
                    if *self.reading.get(&id).unwrap_or(&true) {
                        self.flush(id);
                    }
                }
                Output::Close(id, why) => {
                    self.flush(id);
                    self.closed.insert(id, why);
                    self.gw.on_closed(id);
                }
                b @ Output::Backfill { .. } => self.backfills.push(b),
            }
        }
    }

    pub fn flush(&mut self, id: StreamId) {
        let mut out = Vec::new();
        self.gw.take_output(id, &mut out, self.now);
        let w = self.wire.entry(id).or_default();
        for b in out {
            w.extend_from_slice(&b);
        }
    }

    /// The wall clock as the frontends give it to [`Gateway::open`].
    pub fn since_epoch(&self) -> Duration {
        Duration::from_secs(self.unix) + self.subsec
    }

    /// Sets the wall clock to `t` since the Unix epoch.
    pub fn set_epoch(&mut self, t: Duration) {
        self.unix = t.as_secs();
        self.subsec = t - Duration::from_secs(self.unix);
    }

    /// Moves both clocks and fires due timers.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.set_epoch(self.since_epoch() + d);
        self.gw.handle_timeout(self.now);
        self.drain();
    }

    /// Everything stream `id` received since the last call, as text.
    pub fn take_wire(&mut self, id: StreamId) -> String {
        String::from_utf8(self.wire.remove(&id).unwrap_or_default()).expect("utf-8 on the wire")
    }

    /// The SSE part of what `id` received (after the response head).
    pub fn take_events(&mut self, id: StreamId) -> String {
        let w = self.take_wire(id);
        match w.find("\r\n\r\n") {
            Some(i) => w[i + 4..].to_string(),
            None => w,
        }
    }
}

pub fn msg(kind: &str, body: serde_json::Value) -> UpstreamMessage {
    UpstreamMessage {
        kind: Some(kind.into()),
        routing_key: kind.into(),
        body: Bytes::from(body.to_string()),
        ..Default::default()
    }
}

pub const UUID1: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";
pub const UUID2: &str = "0b3f6a8e-1c2d-4e5f-9a0b-1c2d3e4f5a6b";

pub fn deal_created(title: &str) -> serde_json::Value {
    serde_json::json!({
        "deal_id": UUID1, "client_id": UUID2, "title": title,
        "status": "draft", "created_at": "2026-11-28T10:00:00Z"
    })
}

pub fn notification_sent(title: &str) -> serde_json::Value {
    serde_json::json!({
        "notification_id": UUID1, "template": "deal.status.changed", "title": title,
        "body": "b", "created_at": "2026-11-28T10:00:00Z"
    })
}

/// The frame an event with this id, type and payload has on the wire.
pub fn frame(id: &str, kind: &str, body: &serde_json::Value) -> String {
    format!("id: {id}\nevent: {kind}\ndata: {body}\n\n")
}
