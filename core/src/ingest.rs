//! Upstream messages in, validated and encoded [`Event`]s out (D3, D4, D5, D6).
//!
//! One [`Ingest`] per channel sits where that channel's source is consumed. It validates each
//! message against the catalogue, removes duplicates, gives it its id and encodes its SSE frame
//! once. The resulting [`Event`] is cheap to clone (one `Arc`) and is handed to every shard.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::catalogue::Invalid;
use crate::config::Settings;
use crate::http::Response;
use crate::metrics::{DropReason, Metrics};
use crate::{sse, ChannelId, EventId};

/// A header value as the broker delivered it (AMQP field values mapped by the frontend).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HeaderValue {
    /// Any integer type.
    Int(i64),
    /// A short or long string.
    Text(String),
    /// Anything else (arrays, tables, floats, ...): refused.
    #[default]
    Other,
}

impl HeaderValue {
    /// A `recipient_ids` that is present but void (AMQP's void value, JSON `null`): it names no
    /// one, as an empty string does (dropped `no_recipient` on every channel), never everyone
    /// (D3: when present, only the listed users receive it).
    pub fn no_recipients() -> HeaderValue {
        HeaderValue::Text(String::new())
    }
}

/// One message from a channel's source, as the frontend received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamMessage {
    /// The AMQP `type` property; when absent or empty the routing key is the event type.
    pub kind: Option<String>,
    /// The routing key.
    pub routing_key: String,
    /// Header `recipient_ids`: comma-separated user ids (D3).
    pub recipient_ids: Option<HeaderValue>,
    /// Header `schema_version` (absent = 1, D5).
    pub schema_version: Option<HeaderValue>,
    /// The AMQP `message_id` property: duplicates within the window are dropped.
    pub message_id: Option<String>,
    /// The body: the event's JSON payload.
    pub body: Bytes,
    /// The source's own position (a stream offset), when it has one; else the ingest numbers
    /// events itself.
    pub position: Option<u64>,
    /// When the frontend received it: `sse_gateway_delivery_delay_seconds` counts from here.
    /// `None`: not timed (read-backs, tests).
    pub received: Option<Instant>,
    /// A header (or publish field) whose name is a near miss of `recipient_ids` or
    /// `schema_version` ([`misnamed_header`]): the message is dropped `bad_header`.
    pub misnamed: Option<String>,
}

/// The first of `names` that stands for `recipient_ids` or `schema_version` while that name
/// itself is absent: the name with its case and every character but letters and digits left
/// out reads `recipientids`, `recipientid` or `recipients` (`Recipient_Ids`, `recipient-ids`,
/// `recipientIds`), or `schemaversion` (`schemaVersion`, `Schema-Version`).
///
/// Header names are exact (D3, D4): read as absent, a misspelled `recipient_ids` would send an
/// event meant for a few users to everyone on the channel, and a misspelled `schema_version`
/// would serve a body as version 1. Such a message is dropped instead.
pub fn misnamed_header<'a>(names: impl IntoIterator<Item = &'a str> + Clone) -> Option<String> {
    const NEAR: [(&str, &str); 4] = [
        ("recipientids", "recipient_ids"),
        ("recipientid", "recipient_ids"),
        ("recipients", "recipient_ids"),
        ("schemaversion", "schema_version"),
    ];
    // One pass for the exact names, not one per near name: a message may carry thousands of
    // headers that all fold to a near name, beside the exact one.
    let (recipients, version) = names
        .clone()
        .into_iter()
        .fold((false, false), |(r, v), n| (r || n == "recipient_ids", v || n == "schema_version"));
    let present = |exact: &str| if exact == "recipient_ids" { recipients } else { version };
    names.into_iter().find(|name| {
        if name.len() > 32 {
            return false;
        }
        let mut folded = [0u8; 32];
        let mut n = 0;
        for b in name.bytes().filter(u8::is_ascii_alphanumeric) {
            folded[n] = b.to_ascii_lowercase();
            n += 1;
        }
        NEAR.iter().any(|(near, exact)| near.as_bytes() == &folded[..n] && !present(exact))
    }).map(str::to_string)
}

#[derive(Debug)]
struct EventInner {
    channel: ChannelId,
    id: EventId,
    version: u32,
    recipients: Option<Recipients>,
    event_type: Box<str>,
    frame: Bytes,
    received: Option<Instant>,
}

/// A validated event with its encoded frame; clones share everything.
#[derive(Debug, Clone)]
pub struct Event(Arc<EventInner>);

impl Event {
    /// Its channel.
    pub fn channel(&self) -> ChannelId {
        self.0.channel
    }
    /// Its id.
    pub fn id(&self) -> EventId {
        self.0.id
    }
    /// Its schema version.
    pub fn version(&self) -> u32 {
        self.0.version
    }
    /// Its type (`deal.created`, ...).
    pub fn event_type(&self) -> &str {
        &self.0.event_type
    }
    /// The users it is for, when it names them (D3); `None` = everyone on the channel.
    pub fn recipients(&self) -> Option<&Recipients> {
        self.0.recipients.as_ref()
    }
    /// When the frontend received its message ([`UpstreamMessage::received`]).
    pub fn received(&self) -> Option<Instant> {
        self.0.received
    }
    /// The SSE frame: `id:`, `event:`, `data:` lines.
    pub fn frame(&self) -> &Bytes {
        &self.0.frame
    }
    /// May `user` see it (recipients only; channel access is checked when a stream opens)?
    pub fn visible_to(&self, user: &str) -> bool {
        match &self.0.recipients {
            None => true,
            Some(r) => r.contains(user),
        }
    }
}

/// The users an event names (D3): sorted and deduplicated, held in two allocations however many
/// there are (the names back to back, and where each ends), so a long `recipient_ids` header
/// costs about its own size in the resume buffer, not a heap string per name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Recipients {
    names: Box<str>,
    ends: Box<[u32]>,
}

impl Recipients {
    /// The names of a comma-separated list, each trimmed of ASCII whitespace (only: a `sub`
    /// ending in a no-break space is another user than one without it, and a list naming the
    /// first must not reach the second), empty ones skipped; `None` when the text is too long
    /// to index (4 GiB, far past any broker's frame).
    fn parse(text: &str) -> Option<Recipients> {
        let mut list: Vec<&str> = text.split(',').map(str::trim_ascii).filter(|s| !s.is_empty()).collect();
        list.sort_unstable();
        list.dedup();
        let mut names = String::with_capacity(list.iter().map(|n| n.len()).sum());
        let mut ends = Vec::with_capacity(list.len());
        for n in list {
            names.push_str(n);
            ends.push(u32::try_from(names.len()).ok()?);
        }
        Some(Recipients { names: names.into_boxed_str(), ends: ends.into_boxed_slice() })
    }

    /// How many users it names.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it names no one.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `i`th name in sorted order.
    fn name(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.names[start..self.ends[i] as usize]
    }

    /// The names, in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.name(i))
    }

    /// Whether `user` is among them (a binary search).
    pub fn contains(&self, user: &str) -> bool {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid).cmp(user) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    /// The bytes it holds.
    fn size(&self) -> usize {
        self.names.len() + self.ends.len() * 4
    }
}

/// Why a message was not sent to anyone; the message is still acknowledged (D4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The counted reason.
    pub reason: DropReason,
    /// A one-line explanation for the log.
    pub detail: String,
}

/// Validation, dedup and numbering for one channel.
#[derive(Debug)]
pub struct Ingest {
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    channel: ChannelId,
    epoch: u64,
    last_seq: Option<u64>,
    recent: RecentIds,
    max_body: usize,
}

/// The `message_id`s of the last `window` events, to drop a publisher's retries (D4).
///
/// A retry is the same message again: the same `message_id` with the same event type, schema
/// version and recipients. Two messages that share a `message_id` but differ in one of those
/// (the v1 and v2 copies of a dual-published event, D5; one notification per user under one
/// id) are different events and both go out; only their payloads may differ between retries.
/// The same message read twice from a log (at the same position) is not a retry of itself.
#[derive(Debug)]
pub struct RecentIds {
    order: VecDeque<(Box<str>, u64)>,
    /// Each remembered id, with the log position of the message that had it.
    set: HashMap<(Box<str>, u64), Option<u64>>,
    window: usize,
}

impl RecentIds {
    /// Remembers the last `window` ids (at least one).
    pub fn new(window: usize) -> RecentIds {
        RecentIds { order: VecDeque::new(), set: HashMap::new(), window: window.max(1) }
    }

    /// How many ids it remembers.
    pub fn window(&self) -> usize {
        self.window
    }

    /// `Err(Duplicate)` when a non-empty `message_id` is among the remembered ones for the same
    /// type, version and recipients (unless it is the message remembered, at the same log
    /// `position`); otherwise it is remembered (forgetting the oldest past the window).
    fn admit(&mut self, message_id: Option<&str>, checked: &Checked<'_>, position: Option<u64>) -> Result<(), Dropped> {
        let Some(mid) = message_id.filter(|m| !m.is_empty()) else { return Ok(()) };
        let key: (Box<str>, u64) = (mid.into(), checked.fingerprint());
        if let Some(&at) = self.set.get(&key) {
            if at.is_some() && at == position {
                return Ok(());
            }
            return Err(Dropped { reason: DropReason::Duplicate, detail: format!("message_id {mid:?} already seen") });
        }
        self.set.insert(key.clone(), position);
        self.order.push_back(key);
        if self.order.len() > self.window {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        Ok(())
    }
}

impl Ingest {
    /// An ingest for `channel` whose ids belong to `epoch`: one no other channel's ids use, and
    /// for the in-process source one that differs on every process start
    /// ([`crate::process_epoch`]).
    pub fn new(settings: Arc<Settings>, metrics: Arc<Metrics>, channel: ChannelId, epoch: u64) -> Ingest {
        let window = settings.channel(channel).buffer_events;
        // The in-process source's messages are the publish endpoint's bodies.
        let max_body = settings.config.broker.as_ref().map_or(settings.config.server.max_body_bytes, |b| b.max_message_bytes);
        Ingest {
            settings,
            metrics,
            channel,
            epoch,
            last_seq: None,
            recent: RecentIds::new(window),
            max_body,
        }
    }

    /// The channel.
    pub fn channel(&self) -> ChannelId {
        self.channel
    }

    /// The id of the last event produced, if any.
    pub fn last_id(&self) -> Option<EventId> {
        self.last_seq.map(|seq| EventId { epoch: self.epoch, seq })
    }

    /// Validates one message. `Ok` is to be handed to every shard; `Err` was counted in the
    /// metrics and is to be logged once and acknowledged. Never panics.
    pub fn handle_message(&mut self, msg: &UpstreamMessage) -> Result<Event, Dropped> {
        let r = self.check(msg);
        match &r {
            Ok(_) => self.metrics.event_in(self.channel),
            Err(d) => self.metrics.dropped(self.channel, d.reason),
        }
        r
    }

    /// Counts a message whose handling panicked (the frontend caught it) as dropped, `internal`:
    /// it was sent to no one, and `sse_gateway_events_dropped_total` says so.
    pub fn handling_failed(&self) {
        self.metrics.handling_failed(self.channel);
    }

    /// Validates and encodes one message read back from the channel's log (a RabbitMQ stream)
    /// for a resuming client: the same rules as [`Ingest::handle_message`] and the id its
    /// `position` gives, but nothing is counted and the live state (the last position, the
    /// `message_id` window) is neither read nor changed, so read-backs can run beside the live
    /// consumer, in any number, in any order. A message without a position is dropped
    /// (`bad_header`): a log's messages always carry one. `seen` is the read-back's own window
    /// ([`Ingest::read_back_window`]): a publisher's retry that the live consumer dropped as a
    /// duplicate is dropped here too when its original is in the same read-back (which starts
    /// a window's worth of messages before the client's place to hold it). Never panics.
    pub fn read_back(&self, msg: &UpstreamMessage, seen: &mut RecentIds) -> Result<Event, Dropped> {
        let (position, checked) = self.checked_from_log(msg)?;
        seen.admit(msg.message_id.as_deref(), &checked, Some(position))?;
        Ok(self.encode(checked, position, None))
    }

    /// Validates and encodes one message of the history a source reads from its log at start,
    /// for the buffers (`Gateway::prime`): the same rules and id as [`Ingest::read_back`], nothing
    /// counted and the last position unchanged, but its `message_id` goes into the live window,
    /// so a publisher's retry of it that comes live is dropped as if the live source had seen the
    /// original. A message at or before the last history position that then comes live (read by
    /// both) is not taken for a retry of itself. Never panics.
    pub fn history(&mut self, msg: &UpstreamMessage) -> Result<Event, Dropped> {
        let (position, checked) = self.checked_from_log(msg)?;
        self.recent.admit(msg.message_id.as_deref(), &checked, Some(position))?;
        Ok(self.encode(checked, position, None))
    }

    /// A message read from the log (back, or as history): its position, which it must have
    /// (`bad_header` otherwise), and the channel's rules.
    fn checked_from_log<'m>(&self, msg: &'m UpstreamMessage) -> Result<(u64, Checked<'m>), Dropped> {
        let Some(position) = msg.position else {
            return Err(Dropped { reason: DropReason::BadHeader, detail: "a message read from the log has no position".into() });
        };
        Ok((position, self.validate(msg)?))
    }

    /// A fresh `message_id` window for one read-back, as wide as the live one.
    pub fn read_back_window(&self) -> RecentIds {
        RecentIds::new(self.recent.window)
    }

    fn check(&mut self, msg: &UpstreamMessage) -> Result<Event, Dropped> {
        let checked = self.validate(msg)?;
        let seq = match (msg.position, self.last_seq) {
            (Some(p), Some(last)) if p <= last => {
                return Err(Dropped { reason: DropReason::Duplicate, detail: format!("position {p} already seen") });
            }
            (Some(p), _) => p,
            (None, last) => last.map_or(1, |l| l.saturating_add(1)),
        };
        self.recent.admit(msg.message_id.as_deref(), &checked, msg.position)?;
        self.last_seq = Some(seq);
        Ok(self.encode(checked, seq, msg.received))
    }

    /// Whether `msg`'s body alone is past the bound ([`DropReason::Oversized`]), so that a
    /// frontend holding messages before handling them (a history read) keeps only their place.
    pub fn oversized(&self, msg: &UpstreamMessage) -> bool {
        msg.body.len() > self.max_body
    }

    /// The channel's rules (D3, D4, D5), without state.
    fn validate<'m>(&self, msg: &'m UpstreamMessage) -> Result<Checked<'m>, Dropped> {
        let drop = |reason, detail: String| Err(Dropped { reason, detail });
        let ch = self.settings.channel(self.channel);
        if self.oversized(msg) {
            return drop(DropReason::Oversized, format!("body of {} bytes > {}", msg.body.len(), self.max_body));
        }
        // A frontend reads a `message_id` that is not UTF-8 with U+FFFD in place of the bad
        // bytes (lapin's short strings, vendor/README.md): not the id the publisher meant, and
        // two different ones could read the same. (A `recipient_ids` header is a long string:
        // one that is not UTF-8 reaches the core as `HeaderValue::Other`.)
        if msg.message_id.as_deref().is_some_and(|m| m.contains(char::REPLACEMENT_CHARACTER)) {
            return drop(DropReason::BadHeader, "message_id is not UTF-8 text".into());
        }
        if let Some(name) = &msg.misnamed {
            let detail = format!("{name:?} is not recipient_ids nor schema_version (names are exact)");
            return drop(DropReason::BadHeader, detail);
        }
        let version = match &msg.schema_version {
            None => 1,
            Some(HeaderValue::Int(v)) if *v >= 1 && *v <= u32::MAX as i64 => *v as u32,
            Some(HeaderValue::Text(t)) if t.trim().parse::<u32>().is_ok_and(|v| v >= 1) => {
                t.trim().parse().expect("checked just above")
            }
            Some(_) => return drop(DropReason::BadHeader, "schema_version is not a positive integer".into()),
        };
        let recipients = match &msg.recipient_ids {
            None => None,
            // Sorted and deduplicated: a user named twice still gets the event once.
            Some(HeaderValue::Text(t)) => match Recipients::parse(t) {
                Some(r) => Some(r),
                None => return drop(DropReason::Oversized, format!("recipient_ids of {} bytes", t.len())),
            },
            Some(HeaderValue::Int(i)) => Recipients::parse(&i.to_string()),
            Some(HeaderValue::Other) => {
                return drop(DropReason::BadHeader, "recipient_ids is not a comma-separated string".into())
            }
        };
        // The recipients are kept with the event as long as its body (the resume buffer): they
        // count against the same bound, so a message costs at most about its size there.
        let size = msg.body.len() + recipients.as_ref().map_or(0, Recipients::size);
        if size > self.max_body {
            return drop(DropReason::Oversized, format!("body and recipients of {size} bytes > {}", self.max_body));
        }
        match &recipients {
            Some(r) if r.is_empty() => return drop(DropReason::NoRecipient, "recipient_ids is empty".into()),
            None if ch.per_user => {
                return drop(DropReason::NoRecipient, format!("channel {} is per-user and names no recipient", ch.name))
            }
            _ => {}
        }
        let event_type = match msg.kind.as_deref() {
            Some(k) if !k.is_empty() => k,
            _ => msg.routing_key.as_str(),
        };
        let payload: serde_json::Value = match serde_json::from_slice(&msg.body) {
            Ok(v) => v,
            Err(e) => return drop(DropReason::NotJson, format!("body is not JSON: {e}")),
        };
        if let Err(inv) = self.settings.catalogue.validate(&ch.name, version, event_type, &payload) {
            let reason = match inv {
                Invalid::UnknownChannel | Invalid::UnknownEventType => DropReason::UnknownType,
                Invalid::UnsupportedVersion => DropReason::UnsupportedVersion,
                Invalid::NotAnObject => DropReason::NotAnObject,
                Invalid::MissingField(_) => DropReason::MissingField,
                Invalid::WrongKind { .. } => DropReason::WrongKind,
            };
            let shown: String = event_type.chars().take(64).collect();
            return drop(reason, format!("{shown:?} v{version}: {inv}"));
        }
        let data = std::str::from_utf8(&msg.body)
            .map_err(|_| Dropped { reason: DropReason::NotJson, detail: "body is not UTF-8".into() })?;
        // Valid JSON cannot hold a raw line break inside a string: every CR and LF in it is
        // whitespace between tokens, and dropping it changes nothing the client parses. Kept,
        // each would start a `data:` line of its own: a body of line breaks would frame at six
        // times its size, past the bound it was checked against.
        let data = if data.contains(['\r', '\n']) { Cow::Owned(data.replace(['\r', '\n'], "")) } else { Cow::Borrowed(data) };
        Ok(Checked { version, recipients, event_type, data })
    }

    fn encode(&self, c: Checked<'_>, seq: u64, received: Option<Instant>) -> Event {
        let id = EventId { epoch: self.epoch, seq };
        let frame = sse::frame(Some(&id.to_string()), c.event_type, c.data.trim());
        Event(Arc::new(EventInner {
            channel: self.channel,
            id,
            version: c.version,
            recipients: c.recipients,
            event_type: c.event_type.into(),
            frame,
            received,
        }))
    }
}

/// A message that passed the channel's rules, not yet numbered.
struct Checked<'m> {
    version: u32,
    recipients: Option<Recipients>,
    event_type: &'m str,
    data: Cow<'m, str>,
}

impl Checked<'_> {
    /// What tells a retry from another event under the same `message_id` ([`RecentIds`]): the
    /// type, the version and the (sorted) recipients. The same on every run (fixed-key hasher).
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        (self.event_type, self.version, &self.recipients).hash(&mut h);
        h.finish()
    }
}

/// Reads the development publish endpoint's body (D14); a refusal (400) carries `cors`'s headers:
/// `{"type": "...", "data": {...}, "recipient_ids": "u1,u2", "schema_version": 1, "message_id": "..."}`.
pub fn parse_publish(body: &[u8], cors: Option<&str>) -> Result<UpstreamMessage, Response> {
    let bad = |m: &str| Response::error(400, "bad_request", m, "", cors);
    // Read strictly first: a field present but unreadable (a lone surrogate escape, `1e400`, past
    // 128 levels) is refused, never taken for an absent one (absent recipients broadcast, D3).
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| bad("body is not JSON"))?;
    let obj = v.as_object().ok_or_else(|| bad("body must be a JSON object"))?;
    let kind = obj.get("type").and_then(|t| t.as_str()).ok_or_else(|| bad("`type` (string) is required"))?;
    // `data` goes on as it was sent, as an AMQP body does (its keys' order, its numbers' text).
    // A repeated field: the last one, in both readings.
    let raw: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_slice(body).map_err(|_| bad("body is not JSON"))?;
    let data = raw.get("data").ok_or_else(|| bad("`data` is required"))?;
    // An optional string field: absent or null is none; anything else but a string is refused
    // (a list of recipients read as "none" would broadcast a message meant for a few, D3).
    let text = |k: &str| match obj.get(k) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(&format!("`{k}` must be a string"))),
    };
    // As the AMQP header: an integer, or text holding one (checked by the channel's rules).
    let schema_version = match obj.get("schema_version") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(HeaderValue::Text(s.clone())),
        Some(x) => Some(x.as_i64().map(HeaderValue::Int).unwrap_or(HeaderValue::Other)),
    };
    Ok(UpstreamMessage {
        kind: Some(kind.to_string()),
        routing_key: kind.to_string(),
        recipient_ids: match obj.get("recipient_ids") {
            Some(serde_json::Value::Null) => Some(HeaderValue::no_recipients()),
            _ => text("recipient_ids")?.map(HeaderValue::Text),
        },
        schema_version,
        message_id: text("message_id")?,
        body: Bytes::copy_from_slice(data.get().as_bytes()),
        position: None,
        received: None,
        misnamed: misnamed_header(obj.keys().map(String::as_str)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deal(position: Option<u64>, message_id: &str) -> UpstreamMessage {
        let body = r#"{"deal_id":"7f1c2a4e-0000-4000-8000-000000000001","client_id":"7f1c2a4e-0000-4000-8000-000000000002","title":"t","status":"new","created_at":"2024-01-01T00:00:00Z"}"#;
        UpstreamMessage {
            kind: Some("deal.created".into()),
            message_id: Some(message_id.into()),
            body: Bytes::from(body),
            position,
            ..UpstreamMessage::default()
        }
    }

    /// The seed configuration's `deals` channel, ids of epoch 9, and its metrics.
    fn deals_ingest() -> (Arc<Metrics>, Ingest) {
        let settings = Arc::new(Settings::seed());
        let metrics = Arc::new(Metrics::new(&settings));
        let deals = settings.channel_id("deals").unwrap();
        (metrics.clone(), Ingest::new(settings, metrics, deals, 9))
    }

    /// The names of a message, counting every name an iteration over them yields.
    #[derive(Clone)]
    struct Counted<'a> {
        names: std::slice::Iter<'a, String>,
        yielded: &'a std::cell::Cell<usize>,
    }

    impl<'a> Iterator for Counted<'a> {
        type Item = &'a str;
        fn next(&mut self) -> Option<&'a str> {
            let n = self.names.next()?;
            self.yielded.set(self.yielded.get() + 1);
            Some(n)
        }
    }

    #[test]
    fn thousands_of_near_names_beside_the_exact_one_cost_a_pass_or_two() {
        // 8,192 spellings that all fold to `recipientids` (every case of its letters, `_` or
        // `-`), and the exact name after them (its place in a sorted header table).
        let mut names: Vec<String> = (0..4096u32)
            .flat_map(|mask| {
                let cased: String = "recipientids"
                    .chars()
                    .enumerate()
                    .map(|(i, c)| if mask >> i & 1 == 1 { c.to_ascii_uppercase() } else { c })
                    .collect();
                ["_", "-"].map(|sep| format!("{}{sep}{}", &cased[..9], &cased[9..]))
            })
            .collect();
        names.retain(|n| n != "recipient_ids");
        names.push("recipient_ids".into());
        let yielded = std::cell::Cell::new(0);
        let counted = Counted { names: names.iter(), yielded: &yielded };
        assert_eq!(misnamed_header(counted), None);
        assert!(yielded.get() <= 3 * names.len(), "{} names yielded for {} headers", yielded.get(), names.len());
    }

    #[test]
    fn a_header_spelled_near_recipient_ids_or_schema_version_drops_the_message() {
        for near in ["Recipient_Ids", "recipient-ids", "recipientIds", "RECIPIENT_IDS", "recipients", "recipient_id", "schemaVersion", "Schema-Version"] {
            assert_eq!(misnamed_header(["x-trace", near]), Some(near.to_string()), "{near}");
        }
        for other in ["recipient_ids", "schema_version", "x-stream-offset", "recipient_ids_v2", "recipient", "version", "", "recipientsrecipientsrecipientsrecipients"] {
            assert_eq!(misnamed_header([other]), None, "{other}");
        }
        // Beside the exact name, the exact one decides: nothing is read as absent.
        assert_eq!(misnamed_header(["recipient_ids", "recipientIds"]), None);
        assert_eq!(misnamed_header(["schemaVersion", "schema_version"]), None);
        assert_eq!(misnamed_header(["recipient_ids", "schemaVersion"]), Some("schemaVersion".to_string()));
        let (metrics, mut ingest) = deals_ingest();
        // Read as absent, "Recipient_Ids: bob" would have gone to everyone on deals.
        let m = UpstreamMessage { misnamed: Some("Recipient_Ids".into()), ..deal(None, "m1") };
        let e = ingest.handle_message(&m).unwrap_err();
        assert_eq!(e.reason, DropReason::BadHeader);
        assert!(e.detail.contains("\"Recipient_Ids\""), "{}", e.detail);
        assert_eq!(metrics.dropped_count(DropReason::BadHeader), 1);
        assert!(ingest.handle_message(&deal(None, "m2")).is_ok(), "the same message, names exact");
        // The publish endpoint's fields are names too.
        let p = parse_publish(br#"{"type":"deal.created","data":{},"recipientIds":"bob"}"#, None).unwrap();
        assert_eq!(p.misnamed.as_deref(), Some("recipientIds"));
        let p = parse_publish(br#"{"type":"deal.created","data":{},"recipient_ids":"bob"}"#, None).unwrap();
        assert_eq!(p.misnamed, None);
    }

    #[test]
    fn a_message_whose_handling_failed_is_counted_as_dropped_internal() {
        let (metrics, ingest) = deals_ingest();
        ingest.handling_failed();
        assert_eq!(metrics.dropped_count(DropReason::Internal), 1);
        assert!(metrics.render().contains("sse_gateway_events_dropped_total{channel=\"deals\",reason=\"internal\"} 1\n"));
    }

    #[test]
    fn a_read_back_validates_and_numbers_by_position_without_touching_the_live_state() {
        let (metrics, mut ingest) = deals_ingest();
        let live = ingest.handle_message(&deal(Some(10), "m10")).expect("valid");
        assert_eq!(live.id(), EventId { epoch: 9, seq: 10 });
        let before = metrics.render();

        // Older than the live position, and a message_id the live window holds: both fine here.
        let mut seen = ingest.read_back_window();
        let old = ingest.read_back(&deal(Some(3), "m10"), &mut seen).expect("a read-back ignores the live state");
        assert_eq!(old.id(), EventId { epoch: 9, seq: 3 });
        assert!(std::str::from_utf8(old.frame()).unwrap().starts_with("id: 9-3\nevent: deal.created\ndata: {"));
        // The channel's rules still apply, and a message without a position is refused.
        let mut bad = deal(Some(4), "m4");
        bad.body = Bytes::from_static(b"[1]");
        assert_eq!(ingest.read_back(&bad, &mut seen).unwrap_err().reason, DropReason::NotAnObject);
        assert_eq!(ingest.read_back(&deal(None, "m5"), &mut seen).unwrap_err().reason, DropReason::BadHeader);
        // A retry of a message this read-back met is a duplicate here as it was live; another
        // read-back has its own window.
        assert_eq!(ingest.read_back(&deal(Some(5), "m10"), &mut seen).unwrap_err().reason, DropReason::Duplicate);
        assert_eq!(ingest.read_back(&deal(Some(6), "m6"), &mut seen).unwrap().id().seq, 6);
        assert!(ingest.read_back(&deal(Some(5), "m10"), &mut ingest.read_back_window()).is_ok());
        assert_eq!(metrics.render(), before, "a read-back counts nothing");

        // The live ingest is where it was: 11 is next, 10 and m10 are still duplicates.
        assert_eq!(ingest.last_id(), Some(EventId { epoch: 9, seq: 10 }));
        assert_eq!(ingest.handle_message(&deal(Some(10), "m-other")).unwrap_err().reason, DropReason::Duplicate);
        assert_eq!(ingest.handle_message(&deal(Some(11), "m10")).unwrap_err().reason, DropReason::Duplicate);
        assert_eq!(ingest.handle_message(&deal(Some(11), "m11")).unwrap().id().seq, 11);
    }

    #[test]
    fn line_breaks_between_json_tokens_frame_as_one_data_line_no_larger_than_the_body() {
        let (_, mut ingest) = deals_ingest();
        let mut msg = deal(None, "m1");
        // Legal JSON whitespace: bare CRs, LFs and CRLFs between tokens, 8,000 per comma.
        let breaks = "\r\n\r".repeat(2_000) + "\n".repeat(2_000).as_str();
        let spread = std::str::from_utf8(&msg.body).unwrap().replace(',', &format!("{breaks},\r"));
        msg.body = Bytes::from(spread.clone());
        let ev = ingest.handle_message(&msg).unwrap();
        let frame = std::str::from_utf8(ev.frame()).unwrap();
        let data: Vec<&str> = frame.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(data.len(), 1, "one data line");
        assert!(ev.frame().len() < 200 + spread.len() / 10, "frame of {} bytes for a body of {}", ev.frame().len(), spread.len());
        let sent: serde_json::Value = serde_json::from_str(&spread).unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(data[0]).unwrap(), sent, "the client parses what was sent");
        // A line break inside a string is escaped in JSON and stays so.
        msg.body = Bytes::from(std::str::from_utf8(&deal(None, "m2").body).unwrap().replace("\"t\"", "\"a\\nb\\r\""));
        msg.message_id = Some("m2".into());
        let ev = ingest.handle_message(&msg).unwrap();
        assert!(std::str::from_utf8(ev.frame()).unwrap().contains("\"title\":\"a\\nb\\r\""));
    }

    #[test]
    fn recipients_are_sorted_deduplicated_and_held_at_about_the_header_size() {
        let r = Recipients::parse(" bob,alice,,bob , carol,").unwrap();
        assert_eq!(r.iter().collect::<Vec<_>>(), ["alice", "bob", "carol"]);
        for (user, named) in [("alice", true), ("bob", true), ("carol", true), ("", false), ("al", false), ("dave", false), ("bob ", false)] {
            assert_eq!(r.contains(user), named, "{user:?}");
        }
        assert!(Recipients::parse(" , ").unwrap().is_empty());
        // Only ASCII whitespace is trimmed: `alice\u{a0}` (a no-break space) is not `alice`.
        let nbsp = Recipients::parse("alice\u{a0}, \u{3000}bob\t").unwrap();
        assert_eq!(nbsp.iter().collect::<Vec<_>>(), ["alice\u{a0}", "\u{3000}bob"]);
        // 30,000 names of 4 characters: a 149,999-byte header.
        let names: Vec<String> = (0..30_000).map(|i| format!("{:03}", i % 1000) + &((b'a' + (i / 1000) as u8) as char).to_string()).collect();
        let header = names.join(",");
        let r = Recipients::parse(&header).unwrap();
        assert_eq!(r.len(), 30_000);
        assert!(names.iter().all(|n| r.contains(n)));
        assert!(r.size() <= 2 * header.len(), "{} bytes held for a {}-byte header", r.size(), header.len());
    }

    #[test]
    fn a_body_past_the_bound_is_oversized_before_and_when_handled() {
        let (_, mut ingest) = deals_ingest();
        let mut msg = deal(None, "m1");
        assert!(!ingest.oversized(&msg));
        // The seed's bound is server.max_body_bytes (64 KiB).
        msg.body = Bytes::from(vec![b' '; 65_537]);
        assert!(ingest.oversized(&msg));
        assert_eq!(ingest.handle_message(&msg).unwrap_err().reason, DropReason::Oversized);
    }

    #[test]
    fn recipients_count_against_the_message_bound() {
        let (metrics, mut ingest) = deals_ingest();
        let mut msg = deal(None, "m1");
        // The seed's bound is server.max_body_bytes (64 KiB): the body is small, the header not.
        let header = (0..20_000).map(|i| format!("u{i}")).collect::<Vec<_>>().join(",");
        msg.recipient_ids = Some(HeaderValue::Text(header));
        let err = ingest.handle_message(&msg).unwrap_err();
        assert_eq!(err.reason, DropReason::Oversized, "{}", err.detail);
        assert!(err.detail.starts_with("body and recipients of "), "{}", err.detail);
        assert_eq!(metrics.dropped_count(DropReason::Oversized), 1);
        msg.recipient_ids = Some(HeaderValue::Text("u1,u2".into()));
        let ev = ingest.handle_message(&msg).unwrap();
        assert!(ev.visible_to("u2") && !ev.visible_to("u3"));
        // Each under the bound, together over it: the body, then each name and 4 bytes for it.
        let names = |n: usize| (0..n).map(|i| format!("{i:07}")).collect::<Vec<_>>().join(",");
        let at_bound = (65_536 - msg.body.len()) / 11;
        for (n, fits) in [(at_bound, true), (at_bound + 1, false)] {
            msg.recipient_ids = Some(HeaderValue::Text(names(n)));
            msg.message_id = Some(format!("m-{n}"));
            assert!(names(n).len() < 65_536 && msg.body.len() < 65_536);
            assert_eq!(ingest.handle_message(&msg).is_ok(), fits, "{n} names of 7 bytes and a body of {}", msg.body.len());
        }
    }

    #[test]
    fn an_id_read_with_replacement_characters_is_dropped_as_a_bad_header() {
        let (metrics, mut ingest) = deals_ingest();
        let bad_id = deal(None, "m\u{FFFD}\u{FFFD}");
        let err = ingest.handle_message(&bad_id).unwrap_err();
        assert_eq!((err.reason, err.detail.as_str()), (DropReason::BadHeader, "message_id is not UTF-8 text"));
        // It took no number: the next message is the first.
        assert_eq!(ingest.handle_message(&deal(None, "mxx")).unwrap().id().seq, 1);
        assert!(metrics.render().contains("sse_gateway_events_dropped_total{channel=\"deals\",reason=\"bad_header\"} 1"));
    }

    #[test]
    fn history_read_at_start_makes_a_live_retry_of_it_a_duplicate_but_not_the_same_message_read_by_both() {
        let (metrics, mut ingest) = deals_ingest();
        let before = metrics.render();
        assert_eq!(ingest.history(&deal(Some(7), "m7")).unwrap().id(), EventId { epoch: 9, seq: 7 });
        assert_eq!(ingest.history(&deal(Some(8), "m8")).unwrap().id().seq, 8);
        assert_eq!(ingest.history(&deal(Some(9), "m7")).unwrap_err().reason, DropReason::Duplicate, "a retry within the history");
        assert_eq!(ingest.history(&deal(Some(9), "m7")).unwrap_err().reason, DropReason::Duplicate, "still, read again");
        assert_eq!(ingest.history(&deal(None, "m10")).unwrap_err().reason, DropReason::BadHeader);
        assert_eq!(metrics.render(), before, "history counts nothing");
        assert_eq!(ingest.last_id(), None, "nor moves the live position");
        // The live consumer began at 8: 8 comes live too (the same message), then the retry of
        // 7 that the history dropped, and another.
        assert_eq!(ingest.handle_message(&deal(Some(8), "m8")).unwrap().id().seq, 8);
        assert_eq!(ingest.handle_message(&deal(Some(9), "m7")).unwrap_err().reason, DropReason::Duplicate);
        assert_eq!(ingest.handle_message(&deal(Some(10), "m7")).unwrap_err().reason, DropReason::Duplicate);
        assert_eq!(ingest.handle_message(&deal(Some(11), "m11")).unwrap().id().seq, 11);
    }
}
