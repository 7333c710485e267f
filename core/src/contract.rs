//! The contract with the web UI, generated from the settings and catalogue the gateway runs with,
//! so it cannot drift from what the gateway validates: an AsyncAPI 3.0 document ([`asyncapi`]),
//! the payloads as one JSON Schema document ([`json_schemas`]) and TypeScript declarations
//! ([`typescript`]).
//!
//! Pure functions of [`Settings`]: the served channels (disabled ones are left out), their roles,
//! per-user flag, schema versions and default version, the event types and fields of each version
//! ([`EventSchema::json_schema`]), the token sources configured in `[auth]` and the stream timings
//! in `[streams]`. Both binaries print them (`sse-gateway catalogue --asyncapi | --json-schema |
//! --typescript`); `docs/asyncapi.json`, `docs/events.schema.json` and `docs/events.d.ts` are
//! their output for the shipped defaults, checked by `core/tests/docs.rs`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::catalogue::{EventSchema, FieldKind};
use crate::config::{ChannelSettings, Settings};
use crate::demo;

/// Codes of `event: error` frames, after which the gateway closes the stream (D1, D2, D9).
pub const ERROR_CODES: [&str; 3] = ["forbidden", "stream_limit", "token_expired"];

/// Codes of `event: warning` frames; the stream stays open (D6, D8).
pub const WARNING_CODES: [&str; 2] = ["source_unavailable", "history_gap"];

/// HTTP refusals of a stream request, answered instead of a stream: (status, code, meaning).
pub const HTTP_REFUSALS: [(u16, &str, &str); 10] = [
    (400, "bad_request", "The request head is not one the gateway can read (malformed, a repeated `Host`, an HTTP/1.1 request without `Host`)."),
    (400, "unsupported_version", "`?version=N` names a version the channel does not have; `supported` lists those it has."),
    (401, "unauthorized", "No token, or a token that does not verify (signature, algorithm, `exp`, `nbf`, `iss`, `aud`, `sub`). A `WWW-Authenticate: Bearer` header comes with it."),
    (403, "origin_not_allowed", "A token from the cookie on a request from another origin's page (`Origin` not the gateway's own nor in `server.cors_origins`, or, without `Origin`, `Sec-Fetch-Site: cross-site` or `same-site`)."),
    (404, "unknown_channel", "No channel of that name is served."),
    (405, "method_not_allowed", "Not `GET` (or a CORS preflight); `Allow` lists the methods."),
    (406, "not_acceptable", "`Accept` does not admit `text/event-stream`."),
    (409, "stream_limit", "The user already has the maximum number of open streams and none may be evicted (policy `reject`, or the oldest is younger than `min_stream_age`). A native EventSource does not retry a 409: the page decides when to open again."),
    (431, "head_too_large", "The request head is larger than `server.max_head_bytes` (a very large cookie, say), or has more than 100 header fields."),
    (503, "overloaded", "The gateway holds all the streams it can (`server.max_streams`), or is shutting down: retry (another instance)."),
];

/// One of the generated documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// [`asyncapi`], pretty JSON.
    AsyncApi,
    /// [`json_schemas`], pretty JSON.
    JsonSchema,
    /// [`typescript`].
    TypeScript,
}

/// The text of a generated document, as `sse-gateway catalogue` prints it and `docs/` holds it
/// (JSON pretty-printed, every document ending in a newline).
pub fn render(format: Format, settings: &Settings) -> String {
    let json = |v: Value| serde_json::to_string_pretty(&v).expect("a Value always serializes") + "\n";
    match format {
        Format::AsyncApi => json(asyncapi(settings)),
        Format::JsonSchema => json(json_schemas(settings)),
        Format::TypeScript => typescript(settings),
    }
}

/// The path of a channel's stream.
pub fn stream_path(channel: &str) -> String {
    format!("/api/v1/streams/{channel}")
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// The payload schema of an event type without the `$schema` keyword, for embedding in a larger
/// document (`$schema` belongs at a document's root only).
fn embedded(event: &EventSchema) -> Value {
    let mut schema = event.json_schema();
    if let Value::Object(map) = &mut schema {
        map.remove("$schema");
    }
    schema
}

/// A value of `kind` that the catalogue accepts (for examples).
fn example_value(kind: &FieldKind) -> Value {
    match kind {
        FieldKind::Uuid => json!("3f2504e0-4f89-41d3-9a0c-0305e82c3301"),
        FieldKind::String => json!("string"),
        FieldKind::DateTime => json!("2025-01-01T12:00:00Z"),
        FieldKind::Date => json!("2025-01-01"),
        FieldKind::Number => json!(12345.67),
        FieldKind::Integer => json!(1),
        FieldKind::Object => json!({}),
        FieldKind::Boolean => json!(true),
        FieldKind::Enum(values) => values.first().map_or(Value::Null, |v| json!(v)),
    }
}

/// The example payload of `name` (`event`) on `channel` at schema version `v`: every declared
/// field, and no other, set to the demo's sample value where the configured catalogue takes
/// the sample at `v` (the seed's values: statuses, currency, template names, what the UI will
/// see), else to a value of its kind ([`example_value`]). It passes [`EventSchema::validate`]
/// at `v` (unit-tested).
fn example(settings: &Settings, channel: &str, v: u32, name: &str, event: &EventSchema) -> Value {
    let sample: Option<Map<String, Value>> = (0..demo::SAMPLE_PERIOD)
        .filter_map(|n| demo::sample_at(settings, channel, v, n, demo::DEMO_USER))
        .find(|m| m.kind.as_deref() == Some(name))
        .and_then(|m| serde_json::from_slice(&m.body).ok());
    let mut o = Map::new();
    for f in event.fields() {
        let value = sample.as_ref().and_then(|s| s.get(&f.name)).filter(|v| !v.is_null()).cloned();
        o.insert(f.name.clone(), value.unwrap_or_else(|| example_value(&f.kind)));
    }
    Value::Object(o)
}

fn error_schema() -> Value {
    json!({
        "title": "error",
        "type": "object",
        "properties": {
            "code": {
                "type": "string",
                "enum": ERROR_CODES,
                "description": "forbidden: the user has none of the channel's roles (the stream is answered with a long `retry:` and closed). stream_limit: a newer stream of the same user evicted this one (with a long `retry:`; close the EventSource rather than let it evict another of the user's streams when it comes back). token_expired: the token's `exp` passed; reconnect with a fresh token."
            }
        },
        "required": ["code"],
        "additionalProperties": true,
    })
}

fn warning_schema(channels: &[&str]) -> Value {
    json!({
        "title": "warning",
        "type": "object",
        "properties": {
            "code": {
                "type": "string",
                "enum": WARNING_CODES,
                "description": "source_unavailable: the channel's upstream source is down; the stream stays open and the warning repeats until it is back. history_gap: the resume point (Last-Event-ID) is no longer (or never was) in the history, or the history lost events while the stream was open (an outage longer than the retention); events may have been missed, so refetch over REST."
            },
            "channel": {"type": "string", "enum": channels}
        },
        "required": ["code", "channel"],
        "additionalProperties": true,
    })
}

fn http_error_schema() -> Value {
    json!({
        "title": "http_error",
        "type": "object",
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "supported": {"type": "array", "items": {"type": "integer"}, "description": "with unsupported_version: the versions the channel has"}
        },
        "required": ["code"],
        "additionalProperties": true,
    })
}

/// Every event payload as one JSON Schema (draft 2020-12) document: `$defs` holds
/// `<channel key>.<event type>` (`deals_v1.deal.created`) for each event type of each version
/// of each served channel, and `error`, `warning` and `http_error` for the gateway's own payloads.
pub fn json_schemas(settings: &Settings) -> Value {
    let mut defs = Map::new();
    for (ch, v, ev) in events(settings) {
        defs.insert(event_key(&ch.name, v, ev.name()), embedded(ev));
    }
    defs.insert("error".into(), error_schema());
    defs.insert("warning".into(), warning_schema(&channel_names(settings)));
    defs.insert("http_error".into(), http_error_schema());
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "sse-gateway event payloads",
        "description": "The `data` of every SSE event the gateway sends, generated from its event catalogue. Keys of $defs: `<channel key>.<event type>`, the channel key being the channel name with `_` doubled and any character but a letter, digit or `-` written `_<hex code>_`, then `_v<version>` (`deals_v1.deal.created`, `a_2e_b_v2.x` for channel `a.b`); `error`, `warning` (gateway events); `http_error` (JSON body of a refused request).",
        "$defs": defs,
    })
}

fn channel_names(settings: &Settings) -> Vec<&str> {
    settings.channels.iter().map(|c| c.name.as_str()).collect()
}

/// (channel, version, event type) for every served channel, in channel, version, type order.
fn events(settings: &Settings) -> Vec<(&ChannelSettings, u32, &EventSchema)> {
    let mut out = Vec::new();
    for ch in &settings.channels {
        let Some(schema) = settings.catalogue.channel(&ch.name) else { continue };
        for v in schema.versions() {
            let Some(version) = schema.version(v) else { continue };
            for (_, ev) in version.event_types() {
                out.push((ch, v, ev));
            }
        }
    }
    out
}

/// An AsyncAPI identifier (`[A-Za-z0-9_-]`) from a channel name and version, one per name
/// whatever other channels there are: letters, digits and `-` as they are, `_` doubled, any
/// other character as `_<hex code>_` (`a.b` is `a_2e_b_v1`, `a_b` is `a__b_v1`), then `_v` and
/// the version (`v` is no hex digit, so no name's key is another's).
fn channel_key(channel: &str, version: u32) -> String {
    let mut key = String::with_capacity(channel.len() + 4);
    for c in channel.chars() {
        match c {
            c if c.is_ascii_alphanumeric() || c == '-' => key.push(c),
            '_' => key.push_str("__"),
            c => key.push_str(&format!("_{:x}_", u32::from(c))),
        }
    }
    format!("{key}_v{version}")
}

/// The identifier of an event type's schema and message: its channel's key ([`channel_key`], which
/// holds no `.`), a `.`, the type (`deals_v1.deal.created`): the first `.` splits it, so no two
/// (channel, version, type) share one (`{channel}.v{n}.{type}` did: `a.v1.b` + `c`, `a` + `b.v1.c`).
fn event_key(channel: &str, version: u32, event: &str) -> String {
    format!("{}.{event}", channel_key(channel, version))
}

/// `base`, or `base` with the first number from 2 that makes it one not among `taken` (where it
/// goes).
fn unique(taken: &mut BTreeSet<String>, base: String) -> String {
    let mut name = base.clone();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}{n}");
        n += 1;
    }
    name
}

fn roles_text(ch: &ChannelSettings) -> String {
    if ch.roles.is_empty() {
        "any authenticated user".into()
    } else {
        format!("a token with one of the roles {}", ch.roles.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", "))
    }
}

/// The AsyncAPI 3.0 document of the gateway as `settings` configure it: one AsyncAPI channel per
/// served channel and schema version (address `/api/v1/streams/{channel}`, `?version=N`), its
/// event types as messages (payload schemas from the catalogue, SSE `event`/`id` fields as
/// headers), the `error`, `warning` and `heartbeat` events, the HTTP refusals, one `send`
/// operation per channel version with the roles it needs, and the security schemes (bearer JWT
/// always; cookie and query parameter when configured).
pub fn asyncapi(settings: &Settings) -> Value {
    let cfg = &settings.config;
    let streams = &cfg.streams;
    let names = channel_names(settings);

    // Security schemes: what `[auth]` turns on.
    let mut schemes = Map::new();
    let mut bearer_note = format!(
        "A JWT in `Authorization: Bearer <token>`, always accepted. Algorithms: {}. `sub` is the user id; roles come from the `{}` claim; `exp` is required (a stream closes with `error` `token_expired` at `exp`).",
        cfg.auth.algorithms.join(", "),
        cfg.auth.roles_claim
    );
    // Where this configuration lets a browser's native EventSource put the token.
    bearer_note.push_str(match (&cfg.auth.cookie, cfg.auth.query_param) {
        (Some(_), false) => " A browser's native EventSource cannot set headers: the token goes in the cookie (`cookie` scheme).",
        (Some(_), true) => " A browser's native EventSource cannot set headers: the token goes in the cookie (`cookie` scheme) or the `access_token` query parameter (`query` scheme).",
        (None, true) => " A browser's native EventSource cannot set headers: the token goes in the `access_token` query parameter (`query` scheme); cookies are off.",
        (None, false) => " Cookies and the query parameter are off (`auth.cookie`, `auth.query_param`): a browser's native EventSource, which cannot set headers, cannot authenticate.",
    });
    schemes.insert(
        "bearer".into(),
        json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": bearer_note}),
    );
    let mut security = vec![json!({"$ref": "#/components/securitySchemes/bearer"})];
    if let Some(cookie) = &cfg.auth.cookie {
        schemes.insert(
            "cookie".into(),
            json!({"type": "httpApiKey", "in": "cookie", "name": cookie, "description": "The same JWT in a cookie (`auth.cookie`), for the native EventSource (send it with `withCredentials` across origins). Used when no Authorization header is sent."}),
        );
        security.push(json!({"$ref": "#/components/securitySchemes/cookie"}));
    }
    if cfg.auth.query_param {
        schemes.insert(
            "query".into(),
            json!({"type": "httpApiKey", "in": "query", "name": "access_token", "description": "The same JWT in the `access_token` query parameter (`auth.query_param`). Used when neither header nor cookie carries one; the gateway never logs query strings."}),
        );
        security.push(json!({"$ref": "#/components/securitySchemes/query"}));
    }

    // Messages shared by every channel.
    let mut messages = Map::new();
    let sse_headers = |event: Value, id: bool| {
        let mut props = json!({"event": event});
        let mut required = vec!["event"];
        if id {
            props["id"] = json!({"type": "string", "description": "SSE `id:` field: opaque, strictly increasing within the channel; the browser sends the last one back as `Last-Event-ID`."});
            required.push("id");
        }
        json!({"type": "object", "description": "SSE fields of the frame.", "properties": props, "required": required})
    };
    messages.insert(
        "error".into(),
        json!({
            "name": "error",
            "title": "error",
            "summary": "The stream is refused or ends; the gateway closes it after this frame.",
            "description": format!("`forbidden`: the user lacks the channel's roles; the frame is preceded by `retry:` of at least {} so a native EventSource waits before retrying. `stream_limit`: evicted by a newer stream of the same user (more than {} open); the frame is preceded by `retry:` of at least {}: close the EventSource (else it comes back then and evicts the user's oldest stream in turn). `token_expired`: the token's `exp` passed; reconnect with a fresh token. No `id:` field.", secs(streams.forbidden_retry), streams.max_per_user, secs(streams.evicted_retry)),
            "contentType": "application/json",
            "headers": sse_headers(json!({"const": "error"}), false),
            "payload": error_schema(),
            "examples": [{"name": "forbidden", "headers": {"event": "error"}, "payload": {"code": "forbidden"}}],
        }),
    );
    messages.insert(
        "warning".into(),
        json!({
            "name": "warning",
            "title": "warning",
            "summary": "Something the UI should know; the stream stays open.",
            "description": format!("`source_unavailable`: the channel's source is down; sent at once and every {} until it recovers (events published meanwhile are delivered afterwards). `history_gap`: sent first when the resume point is not in the history (unknown, expired, from an earlier epoch, malformed), or later on an open stream when events were lost (the channel's log dropped them during an outage, or a read-back could not get them); the stream goes on live from there, so refetch over REST. No `id:` field.", secs(streams.warning_interval)),
            "contentType": "application/json",
            "headers": sse_headers(json!({"const": "warning"}), false),
            "payload": warning_schema(&names),
            "examples": [{"name": "source_unavailable", "headers": {"event": "warning"}, "payload": {"code": "source_unavailable", "channel": names.first().copied().unwrap_or("deals")}}],
        }),
    );
    messages.insert(
        "heartbeat".into(),
        json!({
            "name": "heartbeat",
            "title": "heartbeat",
            "summary": format!("Keeps the connection alive: every {} on every open stream.", secs(streams.heartbeat)),
            "description": "An empty `data:` line and no `id:` field. A native EventSource dispatches it only to a `heartbeat` listener.",
            "contentType": "text/plain",
            "headers": sse_headers(json!({"const": "heartbeat"}), false),
            "payload": {"type": "string", "const": "", "description": "empty"},
        }),
    );
    for (status, code, meaning) in HTTP_REFUSALS {
        messages.insert(
            format!("http_{code}"),
            json!({
                "name": format!("http_{code}"),
                "title": format!("HTTP {status} {code}"),
                "summary": "An HTTP response instead of a stream (the connection closes).",
                "description": meaning,
                "contentType": "application/json",
                "payload": {"$ref": "#/components/schemas/http_error"},
                "bindings": {"http": {"statusCode": status, "bindingVersion": "0.3.0"}},
            }),
        );
    }

    let mut schemas = Map::new();
    schemas.insert("http_error".into(), http_error_schema());

    let mut channels = Map::new();
    let mut operations = Map::new();
    for ch in &settings.channels {
        let Some(schema) = settings.catalogue.channel(&ch.name) else { continue };
        for v in schema.versions() {
            let Some(version) = schema.version(v) else { continue };
            let key = channel_key(&ch.name, v);
            let mut ch_messages = Map::new();
            let mut op_messages = Vec::new();
            for (name, ev) in version.event_types() {
                let id = event_key(&ch.name, v, name);
                schemas.insert(id.clone(), embedded(ev));
                let fields: Vec<String> =
                    ev.fields().iter().map(|f| format!("`{}` {}{}", f.name, f.kind, if f.required { "" } else { " (optional)" })).collect();
                messages.insert(
                    id.clone(),
                    json!({
                        "name": name,
                        "title": name,
                        "summary": format!("`{name}` on `{}`, schema version {v}.", ch.name),
                        "description": format!("Fields: {}. Fields the catalogue does not declare may also appear (publishers may add fields before the catalogue lists them).", if fields.is_empty() { "none".to_string() } else { fields.join(", ") }),
                        "contentType": "application/json",
                        "headers": sse_headers(json!({"const": name}), true),
                        "payload": {"$ref": format!("#/components/schemas/{id}")},
                        "examples": [{"name": name, "headers": {"event": name, "id": "1732761600000000000-1"}, "payload": example(settings, &ch.name, v, name, ev)}],
                    }),
                );
                ch_messages.insert(name.to_string(), json!({"$ref": format!("#/components/messages/{id}")}));
                op_messages.push(json!({"$ref": format!("#/channels/{key}/messages/{name}")}));
            }
            let mut control: Vec<String> = vec!["error".into(), "warning".into(), "heartbeat".into()];
            control.extend(HTTP_REFUSALS.iter().map(|(_, code, _)| format!("http_{code}")));
            for m in control {
                // An event type of the catalogue keeps its name; the gateway's own message yields.
                if ch_messages.contains_key(&m) {
                    continue;
                }
                ch_messages.insert(m.clone(), json!({"$ref": format!("#/components/messages/{m}")}));
                op_messages.push(json!({"$ref": format!("#/channels/{key}/messages/{m}")}));
            }
            let default = v == ch.default_version;
            let version_note = if default {
                format!("Version {v} is the channel's default: served without `?version=` (or with `?version={v}`).")
            } else {
                format!("Served with `?version={v}` (the default is {}).", ch.default_version)
            };
            let per_user = if ch.per_user {
                " Per-user channel: an event reaches only the users its publisher named as recipients."
            } else {
                " An event reaches every user allowed on the channel, unless its publisher named recipients."
            };
            channels.insert(
                key.clone(),
                json!({
                    "address": stream_path(&ch.name),
                    "title": format!("{} (schema version {v})", ch.name),
                    "description": format!("`GET {}` with `Accept: text/event-stream`. {version_note} Needs {}.{per_user} Resume: the browser sends `Last-Event-ID` on reconnect; a first connect may carry `?last_event_id=` (the header wins). The events after it that are still retained are replayed in order, then the stream goes live (no gap, no duplicate); otherwise `warning` `history_gap` comes first.", stream_path(&ch.name), roles_text(ch)),
                    "messages": ch_messages,
                    "x-sse-gateway": {"channel": ch.name, "version": v, "default_version": default, "roles": ch.roles, "per_user": ch.per_user},
                }),
            );
            let mut query_props = json!({
                "last_event_id": {"type": "string", "description": "Resume after this event id (first connect); the `Last-Event-ID` header wins when both are sent."}
            });
            query_props["version"] = if default {
                json!({"type": "integer", "enum": [v], "description": "Optional: the default version."})
            } else {
                json!({"type": "integer", "const": v})
            };
            if cfg.auth.query_param {
                query_props["access_token"] = json!({"type": "string", "description": "The JWT (when `auth.query_param` is on)."});
            }
            let mut query = json!({"type": "object", "properties": query_props});
            if !default {
                query["required"] = json!(["version"]);
            }
            operations.insert(
                format!("send_{key}"),
                json!({
                    "action": "send",
                    "channel": {"$ref": format!("#/channels/{key}")},
                    "title": format!("Stream {} v{v}", ch.name),
                    "summary": format!("The gateway streams `{}` events (schema version {v}) to the client.", ch.name),
                    "description": format!("Needs {}. Stream response: 200 `text/event-stream`, `Cache-Control: no-cache, no-transform`, a first `retry:` of {} plus up to {} jitter, then events; `heartbeat` every {}. Request headers: `Accept` admitting `text/event-stream`, `Authorization: Bearer <JWT>` (or the configured cookie/query parameter), optional `Last-Event-ID`. At most {} open streams per user across channels (policy `{}`).", roles_text(ch), secs(streams.retry), secs(streams.retry_jitter), secs(streams.heartbeat), streams.max_per_user, match streams.limit_policy { crate::config::LimitPolicy::EvictOldest => "evict_oldest", crate::config::LimitPolicy::Reject => "reject" }),
                    "security": security,
                    "messages": op_messages,
                    "bindings": {"http": {"method": "GET", "query": query, "bindingVersion": "0.3.0"}},
                    "x-required-roles": ch.roles,
                    "x-request-headers": {
                        "Accept": "text/event-stream (or */*, text/*)",
                        "Authorization": "Bearer <JWT>",
                        "Last-Event-ID": "the id of the last event received (browsers send it on reconnect)",
                    },
                }),
            );
        }
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "sse-gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Server-Sent Events from the RabbitMQ event bus to web UIs. Each channel is `GET /api/v1/streams/{channel}` with a JWT; every frame's `event:` is the event type and its `data:` the JSON payload. Generated from the event catalogue the gateway validates with (`sse-gateway catalogue --asyncapi`).",
        },
        "defaultContentType": "application/json",
        "servers": {
            "gateway": {
                "host": cfg.server.listen,
                "protocol": "http",
                "description": "The gateway (`server.listen`); put TLS in front of it.",
                "security": security,
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": schemes,
        },
    })
}

/// `deal.journal.appended` -> `DealJournalAppended`.
fn pascal(name: &str) -> String {
    let mut out = String::new();
    for part in name.split(|c: char| !c.is_ascii_alphanumeric()).filter(|p| !p.is_empty()) {
        let mut cs = part.chars();
        if let Some(first) = cs.next() {
            out.push(first.to_ascii_uppercase());
            out.push_str(cs.as_str());
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'T');
    }
    out
}

fn ts_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

fn ts_key(name: &str) -> String {
    let ident = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if ident {
        name.to_string()
    } else {
        ts_string(name)
    }
}

fn ts_type(kind: &FieldKind) -> (String, Option<&'static str>) {
    match kind {
        FieldKind::Uuid => ("string".into(), Some("uuid")),
        FieldKind::String => ("string".into(), None),
        FieldKind::DateTime => ("string".into(), Some("RFC 3339 date-time, never a leap second (`new Date()` reads it)")),
        FieldKind::Date => ("string".into(), Some("date, YYYY-MM-DD")),
        FieldKind::Number => ("number".into(), None),
        FieldKind::Integer => ("number".into(), Some("integer")),
        FieldKind::Object => ("Record<string, unknown>".into(), None),
        FieldKind::Boolean => ("boolean".into(), None),
        FieldKind::Enum(values) if values.is_empty() => ("never".into(), None),
        FieldKind::Enum(values) => (values.iter().map(|v| ts_string(v)).collect::<Vec<_>>().join(" | "), None),
    }
}

/// TypeScript declarations of the stream contract: one payload interface per event type and
/// version (`<Channel>V<N><EventType>`), a discriminated union per channel version
/// (`<Channel>V<N>Event`, on `event`), the `error` / `warning` payloads, the gateway's own events,
/// a map from channel and version to its union (`StreamEvents`) and the HTTP error body.
pub fn typescript(settings: &Settings) -> String {
    let mut o = String::new();
    let mut taken = BTreeSet::new();
    let mut unique = |base: String| unique(&mut taken, base);
    let names = channel_names(settings);
    o.push_str(
        "// sse-gateway stream contract: TypeScript declarations generated from the event catalogue\n\
         // (`sse-gateway catalogue --typescript`). Do not edit: regenerate.\n\
         //\n\
         // Each channel is `GET /api/v1/streams/{channel}` (`?version=N` selects a schema version).\n\
         // An SSE frame's `event:` is the event type, its `data:` the JSON payload and its `id:` the\n\
         // resume point (`Last-Event-ID`). Payloads may carry fields not declared here.\n\n",
    );
    let _ = writeln!(o, "/** The channels the gateway serves. */");
    let _ = writeln!(
        o,
        "export type ChannelName = {};\n",
        if names.is_empty() { "never".to_string() } else { names.iter().map(|n| ts_string(n)).collect::<Vec<_>>().join(" | ") }
    );
    o.push_str(
        "/** `event: error`: the gateway closes the stream after it. */\n\
         export interface ErrorPayload {\n",
    );
    let _ = writeln!(o, "  code: {};", ERROR_CODES.iter().map(|c| ts_string(c)).collect::<Vec<_>>().join(" | "));
    o.push_str("}\n\n/** `event: warning`: the stream stays open. */\nexport interface WarningPayload {\n");
    let _ = writeln!(o, "  code: {};", WARNING_CODES.iter().map(|c| ts_string(c)).collect::<Vec<_>>().join(" | "));
    o.push_str("  channel: ChannelName;\n}\n\n");
    o.push_str(
        "/** The gateway's own events, on every channel (no `id:` field). */\n\
         export type GatewayEvent =\n  \
         | { event: \"error\"; data: ErrorPayload }\n  \
         | { event: \"warning\"; data: WarningPayload }\n  \
         | { event: \"heartbeat\"; data: \"\" };\n\n",
    );
    o.push_str("/** JSON body of an HTTP refusal (400, 401, 403, 404, 405, 406, 409, 431, 503) instead of a stream. */\nexport interface HttpError {\n");
    let _ = writeln!(
        o,
        "  code: {} | (string & {{}});",
        HTTP_REFUSALS.iter().map(|(_, c, _)| ts_string(c)).collect::<Vec<_>>().join(" | ")
    );
    o.push_str("  message?: string;\n  /** With `unsupported_version`: the versions the channel has. */\n  supported?: number[];\n}\n");

    let mut map: Vec<(String, Vec<(u32, String)>)> = Vec::new();
    for ch in &settings.channels {
        let Some(schema) = settings.catalogue.channel(&ch.name) else { continue };
        let mut versions = Vec::new();
        for v in schema.versions() {
            let Some(version) = schema.version(v) else { continue };
            let prefix = format!("{}V{v}", pascal(&ch.name));
            let mut arms = Vec::new();
            for (name, ev) in version.event_types() {
                let iface = unique(format!("{prefix}{}", pascal(name)));
                let _ = writeln!(o, "\n/** `{name}` on `{}`, schema version {v}. */", ch.name);
                let _ = writeln!(o, "export interface {iface} {{");
                for f in ev.fields() {
                    let (ty, note) = ts_type(&f.kind);
                    if let Some(note) = note {
                        let _ = writeln!(o, "  /** {note} */");
                    }
                    if f.required {
                        let _ = writeln!(o, "  {}: {ty};", ts_key(&f.name));
                    } else {
                        let _ = writeln!(o, "  {}?: {ty} | null;", ts_key(&f.name));
                    }
                }
                o.push_str("}\n");
                arms.push(format!("{{ event: {}; id: string; data: {iface} }}", ts_string(name)));
            }
            let union = unique(format!("{prefix}Event"));
            // Roles are the operator's free text: one holding `*/` would end the comment.
            let roles = if ch.roles.is_empty() { "any authenticated user".to_string() } else { format!("roles: {}", ch.roles.join(", ").replace("*/", "*\\/")) };
            let default = if v == ch.default_version { ", the default" } else { "" };
            let _ = writeln!(o, "\n/** Events of `{}` version {v}{default} ({roles}). Discriminated on `event`. */", ch.name);
            let _ = writeln!(o, "export type {union} =");
            for arm in &arms {
                let _ = writeln!(o, "  | {arm}");
            }
            o.push_str("  | GatewayEvent;\n");
            versions.push((v, union));
        }
        map.push((ch.name.clone(), versions));
    }

    o.push_str("\n/** Channel name -> schema version -> the union of the events a stream of it carries. */\nexport interface StreamEvents {\n");
    for (name, versions) in &map {
        let _ = write!(o, "  {}: {{", ts_key(name));
        for (v, union) in versions {
            let _ = write!(o, " {v}: {union};");
        }
        o.push_str(" };\n");
    }
    o.push_str("}\n\n/** The version a channel serves without `?version=`. */\nexport interface DefaultVersions {\n");
    for ch in &settings.channels {
        let _ = writeln!(o, "  {}: {};", ts_key(&ch.name), ch.default_version);
    }
    o.push_str("}\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::Catalogue;
    use crate::config::Config;

    const V2_TOML: &str = include_str!("../tests/fixtures/catalogue_v2.toml");

    fn v2() -> Settings {
        Settings::new(Config::default(), Catalogue::from_toml(V2_TOML).unwrap()).unwrap()
    }

    fn both() -> [Settings; 2] {
        [Settings::seed(), v2()]
    }

    /// Follows a local `$ref` (`#/a/b`) in `doc`.
    fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let path = r.strip_prefix('#').expect("local ref");
                doc.pointer(path).unwrap_or_else(|| panic!("dangling $ref {r}"))
            }
            None => v,
        }
    }

    fn kind_matches(schema: &Value, kind: &FieldKind, required: bool) -> bool {
        let want = kind.json_schema();
        let ty = &schema["type"];
        let ty_ok = if required { *ty == want["type"] } else { *ty == json!([want["type"], "null"]) };
        ty_ok && schema.get("format") == want.get("format")
    }

    #[test]
    fn asyncapi_has_every_channel_version_event_type_and_field_with_its_type() {
        for settings in both() {
            let doc = asyncapi(&settings);
            assert_eq!(doc["asyncapi"], "3.0.0");
            // Valid JSON, round trip.
            let text = serde_json::to_string_pretty(&doc).unwrap();
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), doc);
            let mut seen_channels = 0;
            for ch in &settings.channels {
                let schema = settings.catalogue.channel(&ch.name).unwrap();
                for v in schema.versions() {
                    seen_channels += 1;
                    let key = channel_key(&ch.name, v);
                    let c = &doc["channels"][&key];
                    assert_eq!(c["address"], format!("/api/v1/streams/{}", ch.name), "{key}");
                    let op = &doc["operations"][format!("send_{key}")];
                    assert_eq!(op["action"], "send");
                    assert_eq!(deref(&doc, &op["channel"]), c);
                    assert_eq!(op["x-required-roles"], json!(ch.roles));
                    assert_eq!(op["bindings"]["http"]["method"], "GET");
                    assert!(op["bindings"]["http"]["query"]["properties"]["last_event_id"].is_object());
                    let q_version = &op["bindings"]["http"]["query"]["properties"]["version"];
                    assert!(q_version["const"] == v || q_version["enum"] == json!([v]), "{key}");
                    for (name, ev) in schema.version(v).unwrap().event_types() {
                        let msg = deref(&doc, &c["messages"][name]);
                        assert_eq!(msg["name"], name);
                        assert_eq!(msg["headers"]["properties"]["event"]["const"], name);
                        assert!(op["messages"].as_array().unwrap().iter().any(|m| deref(&doc, m) == msg || m["$ref"] == format!("#/channels/{key}/messages/{name}")));
                        let payload = deref(&doc, &msg["payload"]);
                        assert_eq!(payload["type"], "object");
                        assert_eq!(payload["properties"].as_object().unwrap().len(), ev.fields().len());
                        for f in ev.fields() {
                            let p = &payload["properties"][&f.name];
                            assert!(kind_matches(p, &f.kind, f.required), "{key} {name}.{}: {p}", f.name);
                            let listed = payload["required"].as_array().unwrap().contains(&json!(f.name));
                            assert_eq!(listed, f.required, "{key} {name}.{}", f.name);
                        }
                        // The example is a payload the gateway accepts.
                        let example = &msg["examples"][0]["payload"];
                        settings.catalogue.validate(&ch.name, v, name, example).unwrap();
                    }
                    for m in ["error", "warning", "heartbeat", "http_stream_limit", "http_unauthorized"] {
                        assert!(deref(&doc, &c["messages"][m]).is_object(), "{key} {m}");
                    }
                }
            }
            assert_eq!(doc["channels"].as_object().unwrap().len(), seen_channels);
            assert_eq!(doc["operations"].as_object().unwrap().len(), seen_channels);
            let error = deref(&doc, &doc["components"]["messages"]["error"]["payload"]);
            assert_eq!(error["properties"]["code"]["enum"], json!(["forbidden", "stream_limit", "token_expired"]));
            let warning = &doc["components"]["messages"]["warning"]["payload"];
            assert_eq!(warning["properties"]["code"]["enum"], json!(["source_unavailable", "history_gap"]));
            assert_eq!(doc["components"]["messages"]["http_stream_limit"]["bindings"]["http"]["statusCode"], 409);
            let bearer = &doc["components"]["securitySchemes"]["bearer"];
            assert_eq!((&bearer["type"], &bearer["scheme"], &bearer["bearerFormat"]), (&json!("http"), &json!("bearer"), &json!("JWT")));
        }
    }

    /// The seed's event types show the seed's sample values (what the UI will see); a type the
    /// demo has no accepted sample for shows a value of each field's kind.
    #[test]
    fn asyncapi_examples_carry_the_seeds_values() {
        let example = |doc: &Value, id: &str| doc["components"]["messages"][id]["examples"][0]["payload"].clone();
        let seed = asyncapi(&Settings::seed());
        let payment = example(&seed, "payments_v1.payment.status.changed");
        assert_eq!((&payment["currency"], &payment["status"]), (&json!("RUB"), &json!("received")), "{payment}");
        assert_eq!(example(&seed, "notifications_v1.notification.sent")["template"], "deal.status.changed");
        assert_eq!(example(&seed, "deals_v1.deal.updated")["changes"], json!({"status": "issuing"}));
        assert_eq!(example(&seed, "tasks_v1.task.reminder")["channel"], "sse");
        for (id, msg) in seed["components"]["messages"].as_object().unwrap() {
            if id.contains("_v1.") {
                assert!(!msg["examples"][0]["payload"].to_string().contains("\"string\""), "{id}: {msg}");
            }
        }
        // `deal.created` with a field the demo's sample lacks: the kinds' values.
        let custom = "[channels.deals.versions.1.\"deal.created\"]\ndeal_id = \"uuid\"\nregion = \"string\"\n";
        let custom = Settings::new(Config::default(), Catalogue::from_toml(custom).unwrap()).unwrap();
        let created = example(&asyncapi(&custom), "deals_v1.deal.created");
        assert_eq!(created, json!({"deal_id": "3f2504e0-4f89-41d3-9a0c-0305e82c3301", "region": "string"}));
        // Declaring fewer fields than the sample has, one of them optional: the example has
        // exactly the declared fields, the sample's values where it has them.
        let custom = "[channels.deals.versions.1.\"deal.created\"]\ndeal_id = \"uuid\"\nstatus = \"string\"\nname = \"string?\"\n";
        let custom = Settings::new(Config::default(), Catalogue::from_toml(custom).unwrap()).unwrap();
        let created = example(&asyncapi(&custom), "deals_v1.deal.created");
        let keys: BTreeSet<&str> = created.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["deal_id", "name", "status"]), "{created}");
        assert_eq!((&created["status"], &created["name"]), (&json!("draft"), &json!("string")));
        // Each version's example fits that version, whatever the default: with `deals` at
        // version 2 by default, v1's `deal.created` is still the seed's sample, v2's (which
        // needs `owner_id` and `name`) the kinds' values, v2's `deal.updated` the seed's sample.
        let toml = V2_TOML.replacen("[channels.deals]\ndefault_version = 1\n", "[channels.deals]\ndefault_version = 2\n", 1);
        assert_ne!(toml, V2_TOML);
        let settings = Settings::new(Config::default(), Catalogue::from_toml(&toml).unwrap()).unwrap();
        let doc = asyncapi(&settings);
        assert_eq!(example(&doc, "deals_v1.deal.created")["status"], "draft");
        assert_eq!(example(&doc, "deals_v2.deal.created")["status"], "string");
        assert_eq!(example(&doc, "deals_v2.deal.updated")["changes"], json!({"status": "issuing"}));
        for (id, msg) in doc["components"]["messages"].as_object().unwrap() {
            let Some((key, name)) = id.split_once('.') else { continue };
            let Some(v) = key.rsplit_once("_v").and_then(|(_, v)| v.parse().ok()) else { continue };
            let channel = key.rsplit_once("_v").unwrap().0;
            settings.catalogue.validate(channel, v, name, &msg["examples"][0]["payload"]).unwrap_or_else(|e| panic!("{id}: {e:?}"));
        }
    }

    #[test]
    fn asyncapi_refs_all_resolve() {
        fn walk(doc: &Value, v: &Value) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(_)) = m.get("$ref") {
                        deref(doc, v);
                    }
                    m.values().for_each(|x| walk(doc, x));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(doc, x)),
                _ => {}
            }
        }
        for settings in both() {
            let doc = asyncapi(&settings);
            walk(&doc, &doc);
        }
    }

    #[test]
    fn roles_and_versions_come_from_the_settings() {
        let doc = asyncapi(&Settings::seed());
        assert_eq!(doc["operations"]["send_payments_v1"]["x-required-roles"], json!(["finance_manager"]));
        assert_eq!(doc["operations"]["send_deals_v1"]["x-required-roles"], json!([]));
        assert_eq!(doc["channels"]["notifications_v1"]["x-sse-gateway"]["per_user"], true);
        let doc = asyncapi(&v2());
        assert_eq!(doc["operations"]["send_deals_v2"]["bindings"]["http"]["query"]["required"], json!(["version"]));
        let created = &doc["components"]["schemas"]["deals_v2.deal.created"];
        assert!(created["required"].as_array().unwrap().contains(&json!("owner_id")));
        assert!(doc["components"]["schemas"]["deals_v1.deal.created"]["properties"].get("owner_id").is_none());
    }

    #[test]
    fn cookie_and_query_schemes_appear_when_configured() {
        let seed = asyncapi(&Settings::seed());
        assert_eq!(seed["components"]["securitySchemes"]["cookie"]["name"], json!("sse_token"), "on by default");
        assert!(seed["components"]["securitySchemes"].get("query").is_none(), "off by default");
        let off = Config::from_toml("[auth]\ncookie = \"\"\n").unwrap();
        let off = asyncapi(&Settings::new(off, Catalogue::seed()).unwrap());
        assert!(off["components"]["securitySchemes"].get("cookie").is_none());
        let note = |doc: &Value| doc["components"]["securitySchemes"]["bearer"]["description"].as_str().unwrap().to_string();
        assert!(note(&off).contains("cannot authenticate") && note(&seed).contains("`cookie` scheme"), "{}", note(&off));
        let c = Config::from_toml("[auth]\ncookie = \"sse_token\"\nquery_param = true\n").unwrap();
        let doc = asyncapi(&Settings::new(c, Catalogue::seed()).unwrap());
        let s = &doc["components"]["securitySchemes"];
        assert_eq!((&s["cookie"]["in"], &s["cookie"]["name"]), (&json!("cookie"), &json!("sse_token")));
        assert_eq!((&s["query"]["in"], &s["query"]["name"]), (&json!("query"), &json!("access_token")));
        assert_eq!(doc["servers"]["gateway"]["security"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn disabled_channels_are_left_out() {
        let c = Config::from_toml("[channels.tasks]\nenabled = false\n").unwrap();
        let s = Settings::new(c, Catalogue::seed()).unwrap();
        assert!(asyncapi(&s)["channels"].get("tasks_v1").is_none());
        assert!(!typescript(&s).contains("task.created"));
        assert!(json_schemas(&s)["$defs"].get("tasks_v1.task.created").is_none());
    }

    #[test]
    fn json_schemas_hold_every_payload() {
        for settings in both() {
            let doc = json_schemas(&settings);
            assert_eq!(doc["$schema"], "https://json-schema.org/draft/2020-12/schema");
            let defs = doc["$defs"].as_object().unwrap();
            let mut n = 0;
            for ch in &settings.channels {
                let schema = settings.catalogue.channel(&ch.name).unwrap();
                for v in schema.versions() {
                    for (name, ev) in schema.version(v).unwrap().event_types() {
                        n += 1;
                        let mut want = ev.json_schema();
                        want.as_object_mut().unwrap().remove("$schema");
                        assert_eq!(defs[&event_key(&ch.name, v, name)], want);
                    }
                }
            }
            assert_eq!(defs.len(), n + 3); // error, warning, http_error
        }
    }

    #[test]
    fn typescript_declares_every_event_type_field_and_union() {
        for settings in both() {
            let ts = typescript(&settings);
            for ch in &settings.channels {
                let schema = settings.catalogue.channel(&ch.name).unwrap();
                assert!(ts.contains(&format!("  {}: {{", ch.name)), "StreamEvents.{}", ch.name);
                for v in schema.versions() {
                    let prefix = format!("{}V{v}", pascal(&ch.name));
                    assert!(ts.contains(&format!("export type {prefix}Event =")), "{prefix}Event");
                    for (name, ev) in schema.version(v).unwrap().event_types() {
                        let iface = format!("{prefix}{}", pascal(name));
                        let body_at = ts.find(&format!("export interface {iface} {{")).unwrap_or_else(|| panic!("{iface}"));
                        let body = &ts[body_at..body_at + ts[body_at..].find("\n}\n").unwrap()];
                        for f in ev.fields() {
                            let (ty, _) = ts_type(&f.kind);
                            let line = if f.required { format!("  {}: {ty};", f.name) } else { format!("  {}?: {ty} | null;", f.name) };
                            assert!(body.contains(&line), "{iface}: {line}");
                        }
                        assert!(ts.contains(&format!("{{ event: \"{name}\"; id: string; data: {iface} }}")), "{iface} arm");
                    }
                }
            }
            for code in ERROR_CODES.iter().chain(&WARNING_CODES) {
                assert!(ts.contains(&format!("\"{code}\"")), "{code}");
            }
            assert!(ts.contains("export interface ErrorPayload") && ts.contains("export interface WarningPayload"));
            // Balanced braces: a cheap syntax sanity check.
            assert_eq!(ts.matches('{').count(), ts.matches('}').count());
        }
    }

    #[test]
    fn typescript_quotes_odd_field_names_and_renders_kinds() {
        let cat = Catalogue::from_toml(
            "[channels.x.versions.1.\"a.b\"]\n\"odd-name\" = \"string\"\nopt = \"integer?\"\n\
             state = { kind = \"enum\", values = [\"on\", \"off\"] }\nflag = \"boolean\"\nbag = \"object\"\n",
        )
        .unwrap();
        let ts = typescript(&Settings::new(Config::default(), cat).unwrap());
        assert!(ts.contains("  \"odd-name\": string;"), "{ts}");
        assert!(ts.contains("  opt?: number | null;"));
        assert!(ts.contains("  state: \"on\" | \"off\";"));
        assert!(ts.contains("  flag: boolean;") && ts.contains("  bag: Record<string, unknown>;"));
        assert!(ts.contains("export interface XV1AB {"));
    }

    #[test]
    fn channels_whose_keys_would_be_the_same_each_get_their_own() {
        let cat = Catalogue::from_toml("[channels.\"a.b\".versions.1.e]\nx = \"string\"\n[channels.a_b.versions.1.e]\ny = \"string\"\n").unwrap();
        let settings = Settings::new(Config::default(), cat).unwrap();
        let doc = asyncapi(&settings);
        let addresses: BTreeSet<String> = doc["channels"].as_object().unwrap().values().map(|c| c["address"].as_str().unwrap().to_string()).collect();
        assert_eq!(addresses, BTreeSet::from(["/api/v1/streams/a.b".to_string(), "/api/v1/streams/a_b".to_string()]));
        let keys: Vec<&String> = doc["channels"].as_object().unwrap().keys().collect();
        // Each name's own key, whatever other channels there are.
        assert_eq!(keys, ["a_2e_b_v1", "a__b_v1"]);
        for key in keys {
            assert_eq!(doc["operations"][format!("send_{key}")]["channel"]["$ref"], format!("#/channels/{key}"));
        }
    }

    #[test]
    fn event_types_whose_ids_would_be_the_same_each_get_their_own() {
        // `{channel}.v{n}.{type}` made both `a.v1.b.v1.c`: the second overwrote the first.
        let cat = Catalogue::from_toml("[channels.\"a.v1.b\".versions.1.c]\nx = \"string\"\n[channels.a.versions.1.\"b.v1.c\"]\ny = \"integer\"\n").unwrap();
        let settings = Settings::new(Config::default(), cat).unwrap();
        let doc = asyncapi(&settings);
        let messages = doc["components"]["messages"].as_object().unwrap();
        let x = &doc["components"]["schemas"]["a_2e_v1_2e_b_v1.c"];
        let y = &doc["components"]["schemas"]["a_v1.b.v1.c"];
        assert_eq!((x["properties"]["x"]["type"].as_str(), y["properties"]["y"]["type"].as_str()), (Some("string"), Some("integer")), "{x} {y}");
        assert!(messages.contains_key("a_2e_v1_2e_b_v1.c") && messages.contains_key("a_v1.b.v1.c"));
        let defs = &json_schemas(&settings)["$defs"];
        assert!(defs["a_2e_v1_2e_b_v1.c"]["properties"]["x"].is_object() && defs["a_v1.b.v1.c"]["properties"]["y"].is_object());
    }

    #[test]
    fn a_role_cannot_end_a_typescript_comment() {
        let config = Config::from_toml("[channels.deals]\nroles = [\"x*/ declare const y: 1; /*\"]\n").unwrap();
        let ts = typescript(&Settings::new(config, Catalogue::seed()).unwrap());
        let line = ts.lines().find(|l| l.contains("Events of `deals`")).expect("the deals union's comment");
        assert_eq!(line.matches("*/").count(), 1, "{line}");
        assert!(line.ends_with("*/"), "{line}");
    }
}
