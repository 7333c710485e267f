//! The configuration file (TOML), parsed and checked without IO.
//!
//! Both frontends read the file, hand its text to [`Config::from_toml`], read the files it names
//! (keys, catalogue) and build [`Settings`] from it. Every key has a default, so an empty file is a
//! valid configuration: the seed's four channels on the in-process source.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::auth::AuthConfig;
use crate::catalogue::Catalogue;

/// A configuration that could not be used: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: listener, HTTP bounds, CORS, shutdown.
    pub server: ServerConfig,
    /// `[auth]`: JWT verification and where tokens come from.
    pub auth: AuthConfig,
    /// `[streams]`: heartbeats, warnings, retry, buffers, the per-user limit.
    pub streams: StreamsConfig,
    /// `[broker]`: RabbitMQ. Absent means the in-process source (D14).
    pub broker: Option<BrokerConfig>,
    /// `[channels.NAME]`: per channel access and source; merged over the seed defaults.
    pub channels: BTreeMap<String, ChannelConfig>,
    /// Path of a catalogue file replacing the embedded seed catalogue.
    pub catalogue: Option<String>,
    /// `[demo]`: sample events on every channel (in-process source only).
    pub demo: DemoConfig,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address, `host:port`. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Worker threads, each owning a core shard. 0 = one per CPU core (tokio) / 1 (smol).
    pub workers: usize,
    /// Open streams the process holds at most (D10); further requests get 503.
    pub max_streams: usize,
    /// Largest request head accepted; larger gets 431. Default 16 KiB.
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head (slowloris bound). Default 10 s.
    #[serde(deserialize_with = "de_duration")]
    pub head_timeout: Duration,
    /// Largest body accepted on the development publish endpoint (413 above), and the in-process
    /// source's largest message (its body and `recipient_ids`, counted as for
    /// `broker.max_message_bytes`). Default 64 KiB.
    pub max_body_bytes: usize,
    /// Origins allowed by CORS (exact `scheme://host[:port]`, or `*` for any origin).
    pub cors_origins: Vec<String>,
    /// Enables `POST /api/v1/publish/{channel}` (in-process source only). Default off.
    pub publish_endpoint: bool,
    /// Role a token needs to use the publish endpoint. Default `publisher`.
    pub publish_role: String,
    /// Time given to streams to flush on SIGTERM/SIGINT before the process exits. Default 5 s.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_drain: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            max_streams: 19_000,
            max_head_bytes: 16 * 1024,
            head_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            cors_origins: Vec::new(),
            publish_endpoint: false,
            publish_role: "publisher".into(),
            shutdown_drain: Duration::from_secs(5),
        }
    }
}

/// What happens when a user opens a stream beyond the limit (D9).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitPolicy {
    /// Close the user's oldest stream (unless it is younger than `min_stream_age`: then 409).
    EvictOldest,
    /// Always answer 409.
    Reject,
}

/// `[streams]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Heartbeat interval (D7). Default 30 s.
    #[serde(deserialize_with = "de_duration")]
    pub heartbeat: Duration,
    /// Interval of `source_unavailable` warnings during an outage (D8). Default 60 s.
    #[serde(deserialize_with = "de_duration")]
    pub warning_interval: Duration,
    /// Base `retry:` sent at the start of each stream. Default 3 s.
    #[serde(deserialize_with = "de_duration")]
    pub retry: Duration,
    /// Random extra added to each stream's `retry:` (per connection). Default 2 s.
    #[serde(deserialize_with = "de_duration")]
    pub retry_jitter: Duration,
    /// `retry:` sent with a `forbidden` error (D2), at least 60 s. Default 60 s.
    #[serde(deserialize_with = "de_duration")]
    pub forbidden_retry: Duration,
    /// Unsent bytes a stream may hold; past it the stream is closed (D11). Default 256 KiB.
    pub max_pending_bytes: usize,
    /// Events kept per channel for Last-Event-ID resume. Default 1024.
    pub buffer_events: usize,
    /// Open streams per user across all channels (D9). Default 5.
    pub max_per_user: usize,
    /// `evict_oldest` (default) or `reject`.
    pub limit_policy: LimitPolicy,
    /// A stream younger than this is never evicted; the newcomer gets 409. Default 10 s.
    #[serde(deserialize_with = "de_duration")]
    pub min_stream_age: Duration,
    /// `retry:` sent with an evicted stream's `stream_limit` error (plus up to `retry_jitter`); a
    /// value under `min_stream_age` is raised to it. A native EventSource reconnects after it, and at the usual few
    /// seconds a user over the limit would evict their next oldest stream, and so on, for good.
    /// Default 60 s.
    #[serde(deserialize_with = "de_duration")]
    pub evicted_retry: Duration,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            heartbeat: Duration::from_secs(30),
            warning_interval: Duration::from_secs(60),
            retry: Duration::from_secs(3),
            retry_jitter: Duration::from_secs(2),
            forbidden_retry: Duration::from_secs(60),
            max_pending_bytes: 256 * 1024,
            buffer_events: 1024,
            max_per_user: 5,
            limit_policy: LimitPolicy::EvictOldest,
            min_stream_age: Duration::from_secs(10),
            evicted_retry: Duration::from_secs(60),
        }
    }
}

/// `[broker]`: RabbitMQ over AMQP 0-9-1.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// AMQP URI. The environment variable `SSE_GATEWAY_AMQP_URL` overrides it.
    pub url: String,
    /// Unacknowledged deliveries per consumer (`basic.qos`). Default 256.
    pub prefetch: u16,
    /// First reconnect delay after a loss. Default 200 ms.
    #[serde(deserialize_with = "de_duration")]
    pub reconnect_min: Duration,
    /// Largest reconnect delay (exponential backoff with jitter in between). Default 30 s.
    #[serde(deserialize_with = "de_duration")]
    pub reconnect_max: Duration,
    /// Largest message relayed, counting its body and its `recipient_ids` (the sorted,
    /// deduplicated names plus 4 bytes per name); larger ones are dropped (`oversized`). Default
    /// 256 KiB.
    pub max_message_bytes: usize,
    /// How often a consuming source checks its queue: binds it to its exchange again (RabbitMQ
    /// drops a queue's bindings, without telling its consumers, when the exchange is deleted
    /// and perhaps recreated) and counts the queue's other consumers (competing ones take part
    /// of the events). Default 30 s.
    #[serde(deserialize_with = "de_duration")]
    pub check_interval: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefetch: 256,
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            max_message_bytes: 256 * 1024,
            check_interval: Duration::from_secs(30),
        }
    }
}

/// `[demo]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Emit sample events on every channel (in-process source only).
    pub enabled: bool,
    /// Time between two sample events on one channel. Default 2 s.
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig { enabled: false, interval: Duration::from_secs(2) }
    }
}

/// `[channels.NAME]`: every key optional; missing keys take the seed default for that channel.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    /// `false` removes a channel the defaults define.
    pub enabled: Option<bool>,
    /// Roles that may read the channel; empty = any authenticated user (D2).
    pub roles: Option<Vec<String>>,
    /// Never broadcast: messages without `recipient_ids` are dropped (D3).
    pub per_user: Option<bool>,
    /// Events kept for resume; default `streams.buffer_events`.
    pub buffer_events: Option<usize>,
    /// Where the channel's events come from on RabbitMQ.
    pub source: Option<SourceConfig>,
}

/// Where a channel's events come from on RabbitMQ (D4). Exactly one of `exchange` / `queue`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Exchange to bind a gateway-owned queue to.
    pub exchange: Option<String>,
    /// Kind of that exchange, declared if missing: `topic` (default), `direct`, `fanout`, `headers`.
    pub exchange_kind: Option<String>,
    /// Binding keys for the exchange. Default `["#"]`.
    pub routing_keys: Option<Vec<String>>,
    /// A queue to consume as is (declared durable if missing).
    pub queue: Option<String>,
    /// For an exchange source: the gateway-owned queue bound to it. Durable, so what is published
    /// during a gateway or broker outage waits there. Default `sse-gateway.<channel>`, or
    /// `sse-gateway.<channel>.stream` when `stream = true`.
    pub bind_queue: Option<String>,
    /// Read the channel from a RabbitMQ stream queue (`x-queue-type: stream`): event ids are the
    /// stream offsets, so they hold across restarts and instances, and a resume older than the
    /// in-memory buffer is read back from the stream. Default false (a classic queue).
    pub stream: Option<bool>,
    /// Stream retention by age (`x-max-age`, RabbitMQ syntax: `7D`, `12h`, `30m`, ...). This is
    /// the resume window. Default `1h`.
    pub max_age: Option<String>,
    /// Stream retention by size (`x-max-length-bytes`). Default none.
    pub max_length_bytes: Option<u64>,
    /// The epoch event ids of this stream carry. Bump it after deleting and recreating the stream
    /// (its offsets start again at 0), so old ids get `history_gap`, never a wrong replay.
    /// Default 1.
    pub epoch: Option<u64>,
}

/// A channel read from a RabbitMQ stream queue: its retention and the epoch of its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLog {
    /// `x-max-age`.
    pub max_age: String,
    /// `x-max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// The epoch event ids carry.
    pub epoch: u64,
}

/// A channel as the gateway runs it: the config merged over the seed defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelSettings {
    /// Channel name (URL segment).
    pub name: String,
    /// Roles that may read it; empty = any authenticated user.
    pub roles: Vec<String>,
    /// Events need `recipient_ids`.
    pub per_user: bool,
    /// Events kept for resume.
    pub buffer_events: usize,
    /// The source on RabbitMQ.
    pub source: SourceSettings,
    /// The source is a stream queue (the queue of `source`): ids are its offsets.
    pub log: Option<StreamLog>,
    /// Schema versions the catalogue declares, ascending.
    pub versions: Vec<u32>,
    /// The version served without `?version=`.
    pub default_version: u32,
}

/// Resolved source of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSettings {
    /// Bind a gateway-owned queue to `exchange` with `routing_keys`.
    Exchange {
        /// Exchange name.
        exchange: String,
        /// Exchange kind.
        kind: String,
        /// Binding keys.
        routing_keys: Vec<String>,
        /// The gateway-owned queue bound to the exchange.
        queue: String,
    },
    /// Consume this queue.
    Queue {
        /// Queue name.
        queue: String,
    },
}

/// Everything a core needs, resolved and checked: shared by all shards.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The parsed file.
    pub config: Config,
    /// The event catalogue in force.
    pub catalogue: Catalogue,
    /// Channels in id order (sorted by name); a [`crate::ChannelId`] indexes this.
    pub channels: Vec<ChannelSettings>,
}

impl Config {
    /// Parses a configuration file. Errors name the key (TOML path and line) and the reason.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(format!("configuration: {}", redact_secrets(&e.to_string()))))
    }
}

/// A TOML error quotes the line at fault (`12 | key = value`): it is shown up to its `=` only,
/// since errors go to logs and journals, and a value may be a secret or a URL holding a password
/// under any key (a misspelled `secert`, `uri`, ...). The message names the key and the fault.
fn redact_secrets(message: &str) -> String {
    // A quoted value with a line break in it goes on over the next lines: redacted until its
    // `, expected ...` (serde prints an unknown variant as it is, not escaped).
    let mut inside = false;
    message
        .lines()
        .map(|l| {
            if inside {
                return match l.find(", expected") {
                    Some(e) => {
                        inside = false;
                        format!("<redacted>{}", &l[e..])
                    }
                    None => "<redacted>".to_string(),
                };
            }
            let quoted = l.trim_start().split_once(" |").filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if let Some((n, line)) = quoted {
                // `key = value`: the key is shown; any other line (a multi-line string's or
                // array's, `key: value`) not at all.
                let plain = |k: &str| !k.trim().is_empty() && k.trim().chars().all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c));
                // A table's header (`[channels.deals]`) names keys only: shown whole (one of this
                // file's tables: a line of an array may look like a header too).
                let header = line.trim().strip_prefix('[').and_then(|h| h.strip_suffix(']'));
                let bare = |h: &str| {
                    h.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                        && ["server", "auth", "streams", "broker", "channels", "demo"].contains(&h.split('.').next().unwrap_or_default())
                };
                if header.is_some_and(|h| bare(h.trim_start_matches('[').trim_end_matches(']').trim())) {
                    return l.to_string();
                }
                return match line.split_once('=') {
                    Some((key, _)) if plain(key) => format!("{}{n} |{key}= <redacted>", &l[..l.len() - l.trim_start().len()]),
                    _ => format!("{}{n} | <redacted>", &l[..l.len() - l.trim_start().len()]),
                };
            }
            // serde's own words may quote the value: `invalid type: string "amqp://u:pw@h", ...`.
            match ["invalid type: ", "invalid value: ", "unknown variant "].iter().find_map(|m| l.find(m).map(|i| i + m.len())) {
                Some(at) => {
                    let end = l[at..].find(", expected");
                    inside = end.is_none();
                    // The kind of value serde found is shown (`integer`, `string`), not the value.
                    let kind = KINDS.iter().find(|k| l[at..].starts_with(&format!("{k} "))).map_or(String::new(), |k| format!("{k} "));
                    let expected = end.map_or(String::new(), |e| with_range(&l[at + e..]));
                    format!("{}{kind}<redacted>{expected}", &l[..at])
                }
                None => with_range(l),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The kinds of value serde names in `invalid type: <kind> <value>`.
const KINDS: [&str; 8] = ["integer", "floating point", "string", "boolean", "sequence", "map", "datetime", "unit value"];

/// serde's `expected u16` and the like, with the range that says why a number was refused.
fn with_range(line: &str) -> String {
    const RANGES: [(&str, &str); 5] = [
        ("u8", "0 to 255"),
        ("u16", "0 to 65535"),
        ("u32", "0 to 4294967295"),
        ("u64", "0 to 18446744073709551615"),
        ("usize", "0 to 18446744073709551615"),
    ];
    match RANGES.iter().find(|(t, _)| line.trim_end().ends_with(&format!("expected {t}"))) {
        Some((_, range)) => format!("{} (a whole number from {range})", line.trim_end()),
        None => line.to_string(),
    }
}

/// The largest `server.max_head_bytes`.
pub const MAX_HEAD_BYTES: usize = 1 << 20;
/// The largest `streams.max_pending_bytes`.
pub const MAX_PENDING_BYTES: usize = 1 << 30;
/// The largest `broker.max_message_bytes`.
pub const MAX_MESSAGE_BYTES: usize = 128 << 20;

/// The most shard threads `server.workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

/// `scheme://host[:port]` in lower case, http or https, with no path: an origin as a browser
/// serializes it in `Origin`.
fn is_serialized_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else { return false };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    // A bracketed IPv6 literal (lower case, as browsers send it), or a host of lower-case ASCII
    // letters, digits, dots, hyphens and underscores
    // (browsers send an internationalised name in punycode); then, if any, a port as browsers
    // serialise it: digits, 1 to 65535, never the scheme's default (they leave that out).
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, after)) if !addr.is_empty() && addr.chars().all(|c| c.is_ascii_digit() || matches!(c, 'a'..='f' | ':' | '.')) => {
                (addr, if after.is_empty() { None } else { after.strip_prefix(':').map(Some).unwrap_or(Some("")) })
            }
            _ => return false,
        },
        None => match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let host_ok = rest.starts_with('[')
        || (!host.is_empty() && host.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !p.starts_with('0') && p.parse::<u16>().is_ok() && p != default_port
    });
    host_ok && port_ok
}

fn seed_channel(name: &str) -> Option<(Vec<String>, bool, SourceSettings)> {
    let exchange = |x: &str| SourceSettings::Exchange {
        exchange: x.into(),
        kind: "topic".into(),
        routing_keys: vec!["#".into()],
        queue: format!("sse-gateway.{name}"),
    };
    Some(match name {
        "deals" => (vec![], false, exchange("crm.domain")),
        "tasks" => (vec![], false, exchange("tasks.events")),
        "notifications" => (
            vec![],
            true,
            SourceSettings::Queue { queue: "notifications.internal".into() },
        ),
        "payments" => (vec!["finance_manager".into()], false, exchange("payments.status")),
        _ => return None,
    })
}

impl Settings {
    /// Resolves `config` against `catalogue`: every catalogue channel is served unless disabled;
    /// a configured channel must exist in the catalogue.
    pub fn new(config: Config, catalogue: Catalogue) -> Result<Settings, ConfigError> {
        let s = &config.streams;
        // Each is a timer per stream (heartbeat) or a frame to every stream of a channel
        // (warning): at millisecond intervals they would be the gateway's whole work.
        if s.heartbeat < Duration::from_secs(1) {
            return Err(ConfigError("streams.heartbeat: must be at least 1s".into()));
        }
        if s.warning_interval < Duration::from_secs(1) {
            return Err(ConfigError("streams.warning_interval: must be at least 1s".into()));
        }
        if s.max_per_user == 0 {
            return Err(ConfigError("streams.max_per_user: must be at least 1".into()));
        }
        if s.forbidden_retry < Duration::from_secs(60) {
            return Err(ConfigError(
                "streams.forbidden_retry: must be at least 60s (D2: a forbidden client must not hammer)".into(),
            ));
        }
        if s.max_pending_bytes < 4096 {
            return Err(ConfigError("streams.max_pending_bytes: must be at least 4096".into()));
        }
        // Sums over it (its control slack, a catch-up's half) must not wrap.
        if s.max_pending_bytes > MAX_PENDING_BYTES {
            return Err(ConfigError(format!("streams.max_pending_bytes: must be at most {MAX_PENDING_BYTES} (1 GiB)")));
        }
        if config.broker.is_some() && config.server.publish_endpoint {
            return Err(ConfigError(
                "server.publish_endpoint: the publish endpoint feeds the in-process source; turn it off or remove [broker] (or unset SSE_GATEWAY_AMQP_URL)".into(),
            ));
        }
        if config.broker.is_some() && config.demo.enabled {
            return Err(ConfigError(
                "demo.enabled: demo events use the in-process source; turn it off or remove [broker] (or unset SSE_GATEWAY_AMQP_URL)".into(),
            ));
        }
        if config.server.max_streams == 0 {
            return Err(ConfigError("server.max_streams: must be at least 1".into()));
        }
        // `host:port` (the host resolved when binding): a port is needed, a name may do.
        let listen = &config.server.listen;
        // An IPv6 address is bracketed (`[::1]:8080`) and must parse as one (a zone by number):
        // `::1` alone would split into host `:`, `[fe80::1%eth0]` does not bind.
        let host_ok = |host: &str| match host.starts_with('[') {
            true => listen.parse::<std::net::SocketAddr>().is_ok(),
            false => !host.is_empty() && !host.contains(':'),
        };
        if !listen.rsplit_once(':').is_some_and(|(host, port)| host_ok(host) && port.parse::<u16>().is_ok()) {
            return Err(ConfigError(
                "server.listen (or --listen): not host:port (127.0.0.1:8080, [::1]:8080, 0.0.0.0:8080)".into(),
            ));
        }
        if config.server.workers > MAX_WORKERS {
            return Err(ConfigError(format!("server.workers: at most {MAX_WORKERS} (one thread each)")));
        }
        if config.server.publish_role.is_empty() {
            return Err(ConfigError("server.publish_role: must not be empty (no token holds an empty role)".into()));
        }
        // What a browser sends as `Origin` (RFC 6454): written back as configured, and browsers
        // compare it exactly.
        if let Some(i) = config.server.cors_origins.iter().position(|o| o != "*" && !is_serialized_origin(o)) {
            return Err(ConfigError(format!(
                "server.cors_origins: entry {} is not an origin as browsers send it: scheme://host[:port], lower case (a name in punycode), no path, no default port (https://crm.example.com)",
                i + 1
            )));
        }
        if config.server.workers > config.server.max_streams {
            return Err(ConfigError(
                "server.workers: must be at most server.max_streams (each worker holds a share of the streams)".into(),
            ));
        }
        // Any origin echoed with credentials while a cookie carries the token: any web page the
        // user visits could open and read that user's streams.
        if config.auth.cookie.is_some() && config.server.cors_origins.iter().any(|o| o == "*") {
            return Err(ConfigError(
                "server.cors_origins: \"*\" cannot be used while auth.cookie is on (any site could read the user's streams): list the origins, or turn the cookie off (auth.cookie = \"\"; --demo turns it on)".into(),
            ));
        }
        // A browser's head with a token is 1-3 KiB (an RS256 token alone is about 1 KiB, and the
        // site's other cookies come with it): below this, every stream would get 431.
        if config.server.max_head_bytes < 4096 {
            return Err(ConfigError("server.max_head_bytes: must be at least 4096 (a browser's head with its token is 1-3 KiB)".into()));
        }
        // Each connection reading its head may hold that much.
        if config.server.max_head_bytes > MAX_HEAD_BYTES {
            return Err(ConfigError(format!("server.max_head_bytes: must be at most {MAX_HEAD_BYTES} (1 MiB)")));
        }
        // Below that, every publish (or every message) is `oversized`, with /readyz green.
        if config.server.max_body_bytes < 1024 {
            return Err(ConfigError("server.max_body_bytes: must be at least 1024".into()));
        }
        // The publish endpoint holds a whole body in memory, room made for it before it comes.
        if config.server.max_body_bytes > MAX_BODY_BYTES {
            return Err(ConfigError(format!("server.max_body_bytes: must be at most {MAX_BODY_BYTES} (16 MiB)")));
        }
        if config.broker.as_ref().is_some_and(|b| b.max_message_bytes < 1024) {
            return Err(ConfigError("broker.max_message_bytes: must be at least 1024".into()));
        }
        if config.broker.as_ref().is_some_and(|b| b.max_message_bytes > MAX_MESSAGE_BYTES) {
            return Err(ConfigError(format!(
                "broker.max_message_bytes: must be at most {MAX_MESSAGE_BYTES} (128 MiB, RabbitMQ's own largest message by default)"
            )));
        }
        // Shorter, a client on a slow or lossy link (a retransmitted packet takes a second) is
        // closed unanswered before its head arrives.
        if config.server.head_timeout < Duration::from_secs(1) {
            return Err(ConfigError("server.head_timeout: must be at least 1s".into()));
        }
        if config.demo.interval < Duration::from_millis(10) {
            return Err(ConfigError("demo.interval: must be at least 10ms".into()));
        }
        if let Some(b) = &config.broker {
            // The URL may hold a password: only its scheme is shown.
            let scheme = b.url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            match scheme.as_deref() {
                Some("amqp") if b.url.len() > "amqp://".len() => check_broker_authority(&b.url)?,
                Some("amqps") => {
                    return Err(ConfigError(
                        "broker.url (or SSE_GATEWAY_AMQP_URL): amqps:// is not supported (this build has no TLS; it would \
                         send the credentials in clear): use amqp:// on a trusted network, or a TLS-terminating proxy"
                            .into(),
                    ))
                }
                _ => {
                    return Err(ConfigError(
                        "broker.url (or SSE_GATEWAY_AMQP_URL): not an amqp://user:password@host:port/vhost URL".into(),
                    ))
                }
            }
            // AMQP's prefetch 0 means no limit: a backlog would be delivered into memory at once.
            if b.prefetch == 0 {
                return Err(ConfigError("broker.prefetch: must be at least 1 (0 would be unbounded)".into()));
            }
            // A zero delay would reconnect to a broker that is down as fast as the CPU allows.
            if b.reconnect_min < Duration::from_millis(10) {
                return Err(ConfigError("broker.reconnect_min: must be at least 10ms".into()));
            }
            if b.reconnect_max < b.reconnect_min {
                return Err(ConfigError("broker.reconnect_max: must be at least broker.reconnect_min".into()));
            }
            if b.check_interval < Duration::from_secs(1) {
                return Err(ConfigError("broker.check_interval: must be at least 1s".into()));
            }
        }
        for name in config.channels.keys() {
            if catalogue.channel(name).is_none() {
                return Err(ConfigError(format!(
                    "channels.{name}: no such channel in the catalogue (known: {})",
                    catalogue.channel_names().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let mut channels = Vec::new();
        for name in catalogue.channel_names() {
            let schema = catalogue.channel(name).expect("name comes from the catalogue");
            let file = config.channels.get(name).cloned().unwrap_or_default();
            let (roles, per_user, source) = seed_channel(name).unwrap_or_else(|| {
                (vec![], false, SourceSettings::Queue { queue: name.to_string() })
            });
            let (source, log) = match file.source {
                None => (source, None),
                Some(src) => resolve_source(name, with_default_origin(src, source))?,
            };
            let buffer_events = file.buffer_events.unwrap_or(s.buffer_events);
            // A token's roles are never empty (an empty one in the claim is skipped).
            if file.roles.iter().flatten().any(String::is_empty) {
                return Err(ConfigError(format!("channels.{name}.roles: an empty role can never match a token's role")));
            }
            // Checked above like an enabled one's: not found wrong on the restart that enables it.
            if file.enabled == Some(false) {
                continue;
            }
            channels.push(ChannelSettings {
                name: name.to_string(),
                roles: file.roles.unwrap_or(roles),
                per_user: file.per_user.unwrap_or(per_user),
                buffer_events,
                source,
                log,
                versions: schema.versions(),
                default_version: schema.default_version(),
            });
        }
        if channels.is_empty() {
            return Err(ConfigError("channels: every channel is disabled".into()));
        }
        if channels.len() > crate::ids::MAX_CHANNELS {
            return Err(ConfigError(format!("channels: more than {} channels", crate::ids::MAX_CHANNELS)));
        }
        // Ids of one epoch are read as positions in one history: two stream channels sharing an
        // epoch would take each other's ids for their own (a replay from the wrong place).
        let mut epochs = std::collections::BTreeMap::new();
        for c in &channels {
            if let Some(log) = &c.log {
                if let Some(other) = epochs.insert(log.epoch, &c.name) {
                    return Err(ConfigError(format!(
                        "channels.{}.source.epoch and channels.{other}.source.epoch are both {}: give each stream channel its own epoch (an id of one would be read as a position in the other); keep the current one on one of them, as a changed epoch gives each client of its channel one history_gap",
                        c.name, log.epoch
                    )));
                }
            }
        }
        // A queue is consumed by one channel: two consuming one queue would each get about half
        // its messages (the broker deals them out in turn), and the other channel's would be
        // dropped as unknown types there (or, if both channels take a type, relayed on the wrong
        // one, under its roles).
        let mut queues = std::collections::BTreeMap::new();
        for c in &channels {
            let (SourceSettings::Exchange { queue, .. } | SourceSettings::Queue { queue }) = &c.source;
            if let Some(other) = queues.insert(queue.as_str(), &c.name) {
                return Err(ConfigError(format!(
                    "channels.{}.source and channels.{other}.source both consume the queue {queue:?}: give each channel its own (`bind_queue` or `queue`)",
                    c.name
                )));
            }
        }
        Ok(Settings { config, catalogue, channels })
    }

    /// The seed catalogue with the default configuration.
    pub fn seed() -> Settings {
        Settings::new(Config::default(), Catalogue::seed()).expect("the defaults are valid")
    }

    /// The channel called `name`.
    pub fn channel_id(&self, name: &str) -> Option<crate::ChannelId> {
        self.channels
            .iter()
            .position(|c| c.name == name)
            .map(|i| crate::ChannelId(i as u16))
    }

    /// Settings of a channel.
    pub fn channel(&self, id: crate::ChannelId) -> &ChannelSettings {
        &self.channels[id.0 as usize]
    }
}

/// A `[channels.<name>.source]` that names neither an exchange nor a queue keeps the channel's
/// default origin (the shipped one, or the queue of its own name) and changes only the keys it
/// sets: `stream = true` alone moves the shipped exchange's channel onto a stream queue. One that
/// names either replaces the default origin as a whole.
fn with_default_origin(mut src: SourceConfig, default: SourceSettings) -> SourceConfig {
    if src.exchange.is_some() || src.queue.is_some() {
        return src;
    }
    match default {
        SourceSettings::Exchange { exchange, kind, routing_keys, queue: _ } => {
            // The bound queue's default follows `stream` (resolve_source names it).
            src.exchange = Some(exchange);
            src.exchange_kind = src.exchange_kind.or(Some(kind));
            src.routing_keys = src.routing_keys.or(Some(routing_keys));
        }
        SourceSettings::Queue { queue } => src.queue = Some(queue),
    }
    src
}

fn resolve_source(name: &str, src: SourceConfig) -> Result<(SourceSettings, Option<StreamLog>), ConfigError> {
    let stream = src.stream.unwrap_or(false);
    let log = if stream {
        let max_age = src.max_age.clone().unwrap_or_else(|| "1h".into());
        let ok = {
            let (num, unit) = max_age.split_at(max_age.find(|c: char| !c.is_ascii_digit()).unwrap_or(max_age.len()));
            !num.is_empty() && ["Y", "M", "D", "h", "m", "s"].contains(&unit)
        };
        if !ok {
            return Err(ConfigError(format!(
                "channels.{name}.source.max_age: not a RabbitMQ age like 7D, 12h, 30m, 60s"
            )));
        }
        // RabbitMQ refuses an age of 0: the stream would never be declared.
        if max_age.bytes().take_while(u8::is_ascii_digit).all(|b| b == b'0') {
            return Err(ConfigError(format!("channels.{name}.source.max_age: must be more than 0 (RabbitMQ refuses 0)")));
        }
        Some(StreamLog { max_age, max_length_bytes: src.max_length_bytes, epoch: src.epoch.unwrap_or(1) })
    } else {
        if src.max_age.is_some() || src.max_length_bytes.is_some() || src.epoch.is_some() {
            return Err(ConfigError(format!(
                "channels.{name}.source: max_age/max_length_bytes/epoch only apply with stream = true"
            )));
        }
        None
    };
    let source = match (src.exchange, src.queue) {
        (Some(exchange), None) => {
            let kind = src.exchange_kind.unwrap_or_else(|| "topic".into());
            if !["topic", "direct", "fanout", "headers"].contains(&kind.as_str()) {
                return Err(ConfigError(format!(
                    "channels.{name}.source.exchange_kind: not one of topic, direct, fanout, headers"
                )));
            }
            let default_queue = if stream { format!("sse-gateway.{name}.stream") } else { format!("sse-gateway.{name}") };
            let routing_keys = src.routing_keys.unwrap_or_else(|| vec!["#".into()]);
            // A direct exchange matches keys exactly: bound with `#` (the default), the queue
            // would get only messages whose key is `#`, and the channel nothing, /readyz green.
            if kind == "direct" && routing_keys.iter().any(|k| k.split('.').any(|w| w == "#" || w == "*")) {
                return Err(ConfigError(format!(
                    "channels.{name}.source.routing_keys: a direct exchange matches routing keys exactly (`#` and `*` are \
                     no wildcards there): list the keys of the channel's events"
                )));
            }
            SourceSettings::Exchange {
                exchange,
                kind,
                routing_keys,
                queue: src.bind_queue.unwrap_or(default_queue),
            }
        }
        (None, Some(queue)) => {
            if src.exchange_kind.is_some() || src.routing_keys.is_some() || src.bind_queue.is_some() {
                return Err(ConfigError(format!(
                    "channels.{name}.source: exchange_kind/routing_keys/bind_queue only apply to an exchange source"
                )));
            }
            SourceSettings::Queue { queue }
        }
        _ => {
            return Err(ConfigError(format!(
                "channels.{name}.source: set exactly one of `exchange` or `queue`"
            )))
        }
    };
    check_amqp_names(name, &source)?;
    Ok((source, log))
}

/// AMQP names are short strings: at most 255 bytes (a longer one cannot be sent at all). An
/// empty queue name asks the broker for a new server-named queue, and an empty exchange is the
/// default exchange, which takes no bindings: neither is what the gateway would read.
fn check_amqp_names(name: &str, source: &SourceSettings) -> Result<(), ConfigError> {
    let check = |key: &str, value: &str| {
        if value.is_empty() {
            return Err(ConfigError(format!("channels.{name}.source.{key}: must not be empty")));
        }
        if value.len() > 255 {
            return Err(ConfigError(format!("channels.{name}.source.{key}: longer than AMQP's 255 bytes")));
        }
        Ok(())
    };
    match source {
        SourceSettings::Exchange { exchange, routing_keys, queue, .. } => {
            check("exchange", exchange)?;
            check("bind_queue", queue)?;
            if routing_keys.is_empty() {
                return Err(ConfigError(format!(
                    "channels.{name}.source.routing_keys: bind at least one key (\"#\" takes every message of a topic exchange)"
                )));
            }
            // A routing key may be empty (a direct or fanout binding), not longer.
            if routing_keys.iter().any(|k| k.len() > 255) {
                return Err(ConfigError(format!("channels.{name}.source.routing_keys: a key longer than AMQP's 255 bytes")));
            }
            Ok(())
        }
        SourceSettings::Queue { queue } => check("queue", queue),
    }
}

/// The largest `server.max_body_bytes`.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The host and port of an `amqp://` URL, checked without showing the URL (it may hold a
/// password): the AMQP client reads a bracketed IPv6 host as no host and connects to localhost,
/// and an out-of-range port would only fail at every connect.
fn check_broker_authority(url: &str) -> Result<(), ConfigError> {
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.starts_with('[') {
        return Err(ConfigError(
            "broker.url (or SSE_GATEWAY_AMQP_URL): an IPv6 address as host is not supported by the AMQP client (it would connect to localhost): use a host name".into(),
        ));
    }
    if let Some((host, port)) = host_port.rsplit_once(':') {
        // Digits only, as the client's URL parser takes them (`u16` parsing takes a `+`), and one.
        let digits = port.bytes().all(|b| b.is_ascii_digit());
        if host.contains(':') || (!port.is_empty() && (!digits || port.parse::<u16>().map_or(true, |p| p == 0))) {
            return Err(ConfigError("broker.url (or SSE_GATEWAY_AMQP_URL): the port is not a number from 1 to 65535".into()));
        }
    }
    // The rest as the AMQP client reads it at every connect (query options such as heartbeat or
    // frame_max, percent-escapes in the credentials): one it cannot read would fail every connect.
    // Its error repeats the URL, password included: not shown.
    match url.parse::<amq_protocol_uri::AMQPUri>() {
        Err(_) => Err(ConfigError(
            "broker.url (or SSE_GATEWAY_AMQP_URL): the AMQP client cannot read it (check the query options, e.g. heartbeat=, \
             frame_max=, auth_mechanism=, and percent-escapes in the user name and password)"
                .into(),
        )),
        // `amqp://host/`: the path after the slash is the virtual host, here the empty one,
        // which RabbitMQ refuses at every connect.
        Ok(uri) if uri.vhost.is_empty() => Err(ConfigError(
            "broker.url (or SSE_GATEWAY_AMQP_URL): a path of `/` names the empty virtual host, which RabbitMQ refuses: \
             leave the path out, or write `/%2f`, for the default virtual host `/`"
                .into(),
        )),
        Ok(_) => Ok(()),
    }
}

/// Parses `"30s"`, `"500ms"`, `"2m"`, `"1h"`, or a bare integer (seconds). The error does not
/// repeat the text (a value put in the wrong key may be a URL with its password).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| "not a duration like 30s, 500ms, 2m, 1h".to_string())?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err("not a duration like 30s, 500ms, 2m, 1h".to_string()),
    };
    bounded(d)
}

/// The longest duration any setting takes: a year. Longer ones are refused when the file is
/// read, not found later as an overflowing deadline.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn bounded(d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err("longer than a year (8760h), the longest any setting takes".into());
    }
    Ok(d)
}

const DURATION_FORMS: &str = "a duration is whole seconds (0 or more) or a string such as \"30s\" or \"1500ms\"";

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        // Read only to say what is wrong (else: "did not match any variant of untagged enum").
        Signed(i64),
        Float(f64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(n) => bounded(Duration::from_secs(n)).map_err(|e| serde::de::Error::custom(format!("{n}: {e}"))),
        Raw::Signed(n) => Err(serde::de::Error::custom(format!("{n}: {DURATION_FORMS}"))),
        Raw::Float(f) => Err(serde::de::Error::custom(format!("{f}: {DURATION_FORMS}"))),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's source of `deals`, bound with `queue`.
    fn crm_domain(queue: &str) -> SourceSettings {
        SourceSettings::Exchange {
            exchange: "crm.domain".into(),
            kind: "topic".into(),
            routing_keys: vec!["#".into()],
            queue: queue.into(),
        }
    }

    #[test]
    fn empty_file_gives_the_seed_defaults() {
        let c = Config::from_toml("").unwrap();
        let s = Settings::new(c, Catalogue::seed()).unwrap();
        let names: Vec<_> = s.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["deals", "notifications", "payments", "tasks"]);
        let pay = &s.channels[s.channel_id("payments").unwrap().0 as usize];
        assert_eq!(pay.roles, ["finance_manager"]);
        // D4's sources: deals <- crm.domain, tasks <- tasks.events, payments <- payments.status,
        // notifications <- notifications.internal.
        let source = |name: &str| s.channel(s.channel_id(name).unwrap()).source.clone();
        assert_eq!(source("deals"), crm_domain("sse-gateway.deals"));
        assert!(matches!(source("tasks"), SourceSettings::Exchange { exchange, .. } if exchange == "tasks.events"));
        assert!(matches!(source("payments"), SourceSettings::Exchange { exchange, queue, .. } if exchange == "payments.status" && queue == "sse-gateway.payments"));
        assert_eq!(source("notifications"), SourceSettings::Queue { queue: "notifications.internal".into() });
        assert!(s.channels[s.channel_id("notifications").unwrap().0 as usize].per_user);
        assert_eq!(s.config.streams.heartbeat, Duration::from_secs(30));
        assert_eq!(s.config.streams.warning_interval, Duration::from_secs(60));
        assert_eq!(s.config.streams.max_per_user, 5);
        assert!(s.config.broker.is_none());
    }

    #[test]
    fn durations_take_units_or_seconds() {
        let c = Config::from_toml("[streams]\nheartbeat = \"1500ms\"\nwarning_interval = 2\n").unwrap();
        assert_eq!(c.streams.heartbeat, Duration::from_millis(1500));
        assert_eq!(c.streams.warning_interval, Duration::from_secs(2));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 days").is_err());
    }

    #[test]
    fn durations_past_a_year_are_refused_when_read() {
        assert_eq!(parse_duration("8760h").unwrap(), MAX_DURATION);
        assert!(parse_duration("8761h").unwrap_err().contains("longer than a year"));
        assert!(parse_duration("18446744073709551615h").unwrap_err().contains("longer than a year"));
        for toml in [
            "[streams]\nheartbeat = 18446744073709551615\n",
            "[server]\nhead_timeout = \"9999999h\"\n",
            "[server]\nshutdown_drain = 31536001\n",
        ] {
            let e = Config::from_toml(toml).unwrap_err();
            assert!(e.0.contains("longer than a year"), "{toml}: {e:?}");
        }
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let e = Config::from_toml("[streams]\nheartbeet = 3\n").unwrap_err();
        assert!(e.0.contains("heartbeet"), "{e}");
        let e = Config::from_toml("[streams]\nheartbeat = \"often\"\n").unwrap_err();
        assert!(e.0.contains("heartbeat") && e.0.contains("not a duration like 30s"), "{e}");
        // A value in the wrong key is not shown (it may be a URL with its password).
        for bad in [
            "[streams]\nheartbeat = \"amqp://u:PassWord@h\"\n",
            "[streams]\nlimit_policy = \"amqp://u:PassWord@h\"\n",
            "[streams]\nlimit_policy = \"amqp://u:x\\nPassWord@h\"\n",
            "[channels.deals.source]\nexchange = \"x\"\nexchange_kind = \"amqp://u:PassWord@h\"\n",
            "[channels.deals.source]\nexchange = \"x\"\nstream = true\nmax_age = \"amqp://u:PassWord@h\"\n",
            "[server]\nlisten = \"amqp://u:PassWord@h\"\n",
            "[server]\ncors_origins = [\"amqp://u:PassWord@h/x\"]\n",
        ] {
            let e = Config::from_toml(bad).and_then(|c| Settings::new(c, Catalogue::seed())).unwrap_err();
            assert!(!e.0.contains("PassWord"), "{e}");
        }
        // What is shown instead: a table's header, the kind of value found, a number's range.
        let e = Config::from_toml("[channels.deals]\nroles = [\"a\"]\n[channels.deals]\nroles = [\"b\"]\n").unwrap_err();
        assert!(e.0.contains("3 | [channels.deals]") && e.0.contains("duplicate key"), "{e}");
        let e = Config::from_toml("[server]\ncors_origins = [\n \"https://a.example\",\n 42,\n]\n").unwrap_err();
        assert!(e.0.contains("invalid type: integer <redacted>, expected a string"), "{e}");
        let e = Config::from_toml("[server]\nworkers = -1\n").unwrap_err();
        assert!(e.0.contains("invalid value: integer <redacted>, expected usize (a whole number from 0 to"), "{e}");
        let e = Config::from_toml("[broker]\nurl = \"amqp://h\"\nprefetch = 70000\n").unwrap_err();
        assert!(e.0.contains("expected u16 (a whole number from 0 to 65535)"), "{e}");
        let e = Config::from_toml("[server]\nworkers = \"amqp://u:PassWord@h\"\n").unwrap_err();
        assert!(e.0.contains("invalid type: string <redacted>, expected usize") && !e.0.contains("PassWord"), "{e}");
        // A line that looks like a header but holds a value (an array of arrays, a bare word) is
        // not shown.
        for bad in ["[\"PassWord\"],", "[PassWord]"] {
            let e = Config::from_toml(&format!("[server]\ncors_origins = [\n{bad}\n]\n")).unwrap_err();
            assert!(!e.0.contains("PassWord"), "{e}");
        }
        for bad in ["-5", "1.5"] {
            let e = Config::from_toml(&format!("[streams]\nheartbeat = {bad}\n")).unwrap_err();
            assert!(e.0.contains("whole seconds (0 or more)") && e.0.contains("heartbeat"), "{bad}: {e}");
        }
    }

    #[test]
    fn channel_overrides_merge_over_seed_defaults() {
        let c = Config::from_toml(
            "[channels.deals]\nroles = [\"sales\"]\n[channels.tasks]\nenabled = false\n\
             [channels.payments.source]\nqueue = \"pay.q\"\n",
        )
        .unwrap();
        let s = Settings::new(c, Catalogue::seed()).unwrap();
        assert!(s.channel_id("tasks").is_none());
        let deals = s.channel(s.channel_id("deals").unwrap());
        assert_eq!(deals.roles, ["sales"]);
        assert_eq!(deals.source, crm_domain("sse-gateway.deals"));
        let pay = s.channel(s.channel_id("payments").unwrap());
        assert_eq!(pay.source, SourceSettings::Queue { queue: "pay.q".into() });
        assert_eq!(pay.roles, ["finance_manager"]);
    }

    #[test]
    fn a_role_no_token_can_hold_is_refused() {
        let c = Config::from_toml("[channels.deals]\nroles = [\"sales\", \"\"]\n").unwrap();
        let e = Settings::new(c, Catalogue::seed()).unwrap_err().to_string();
        assert!(e.contains("channels.deals.roles") && e.contains("never match"), "{e}");
        // A role with a space can come in an array claim (Keycloak allows them).
        let c = Config::from_toml("[channels.deals]\nroles = [\"finance manager\"]\n").unwrap();
        assert!(Settings::new(c, Catalogue::seed()).is_ok());
    }

    #[test]
    fn a_channel_missing_from_the_catalogue_is_refused() {
        let c = Config::from_toml("[channels.invoices]\nroles = []\n").unwrap();
        let e = Settings::new(c, Catalogue::seed()).unwrap_err();
        assert!(e.0.starts_with("channels.invoices"), "{e}");
    }

    #[test]
    fn a_source_with_both_exchange_and_queue_is_refused() {
        let c = Config::from_toml("[channels.deals.source]\nexchange = \"x\"\nqueue = \"q\"\n").unwrap();
        let e = Settings::new(c, Catalogue::seed()).unwrap_err();
        assert!(e.0.contains("exactly one"), "{e}");
    }

    #[test]
    fn two_channels_consuming_one_queue_are_refused() {
        for toml in [
            "[channels.deals.source]\nexchange = \"crm\"\nbind_queue = \"gw-host1\"\n[channels.tasks.source]\nexchange = \"crm\"\nbind_queue = \"gw-host1\"\n",
            "[channels.deals.source]\nqueue = \"q\"\n[channels.tasks.source]\nqueue = \"q\"\n",
            "[channels.deals.source]\nqueue = \"sse-gateway.tasks\"\n", // the default of tasks
        ] {
            let e = Settings::new(Config::from_toml(toml).unwrap(), Catalogue::seed()).unwrap_err();
            assert!(e.0.contains("both consume the queue"), "{toml}: {e}");
        }
        let own = "[channels.deals.source]\nexchange = \"crm\"\nbind_queue = \"gw-host1.deals\"\n[channels.tasks.source]\nexchange = \"crm\"\nbind_queue = \"gw-host1.tasks\"\n";
        assert!(Settings::new(Config::from_toml(own).unwrap(), Catalogue::seed()).is_ok());
    }

    #[test]
    fn the_publish_endpoint_and_demo_need_the_in_process_source() {
        let c = Config::from_toml("[server]\npublish_endpoint = true\n[broker]\n").unwrap();
        assert!(Settings::new(c, Catalogue::seed()).unwrap_err().0.starts_with("server.publish_endpoint"));
        let c = Config::from_toml("[demo]\nenabled = true\n[broker]\n").unwrap();
        assert!(Settings::new(c, Catalogue::seed()).unwrap_err().0.starts_with("demo.enabled"));
    }

    #[test]
    fn a_stream_source_gets_its_own_queue_retention_and_epoch() {
        let c = Config::from_toml(
            "[channels.deals.source]\nexchange = \"crm.domain\"\nstream = true\nmax_age = \"7D\"\nepoch = 3\n",
        )
        .unwrap();
        let s = Settings::new(c, Catalogue::seed()).unwrap();
        let deals = s.channel(s.channel_id("deals").unwrap());
        assert_eq!(deals.log, Some(StreamLog { max_age: "7D".into(), max_length_bytes: None, epoch: 3 }));
        assert!(matches!(&deals.source, SourceSettings::Exchange { queue, .. } if queue == "sse-gateway.deals.stream"));
        assert_eq!(s.channel(s.channel_id("tasks").unwrap()).log, None);
        let bad = Config::from_toml("[channels.deals.source]\nexchange = \"x\"\nstream = true\nmax_age = \"soon\"\n").unwrap();
        assert!(Settings::new(bad, Catalogue::seed()).unwrap_err().0.contains("max_age"));
        for zero in ["0D", "00h", "0s"] {
            let bad = Config::from_toml(&format!("[channels.deals.source]\nexchange = \"x\"\nstream = true\nmax_age = \"{zero}\"\n")).unwrap();
            assert!(Settings::new(bad, Catalogue::seed()).unwrap_err().0.contains("max_age: must be more than 0"), "{zero}");
        }
        // A disabled channel's settings are checked too: not found wrong on the restart that
        // enables it.
        let off = Config::from_toml("[channels.deals]\nenabled = false\n[channels.deals.source]\nexchange = \"x\"\nstream = true\nmax_age = \"soon\"\n").unwrap();
        assert!(Settings::new(off, Catalogue::seed()).unwrap_err().0.contains("max_age"));
        let off = Config::from_toml("[channels.deals]\nenabled = false\nroles = [\"\"]\n").unwrap();
        assert!(Settings::new(off, Catalogue::seed()).unwrap_err().0.contains("channels.deals.roles"));
        let off = Config::from_toml("[channels.deals]\nenabled = false\n").unwrap();
        assert!(Settings::new(off, Catalogue::seed()).unwrap().channel_id("deals").is_none());
        let stray = Config::from_toml("[channels.deals.source]\nexchange = \"x\"\nepoch = 2\n").unwrap();
        assert!(Settings::new(stray, Catalogue::seed()).unwrap_err().0.contains("stream = true"));
    }

    #[test]
    fn amqp_names_must_fit_a_short_string_and_not_be_empty() {
        let long = "x".repeat(256);
        let err = |t: &str| Settings::new(Config::from_toml(t).unwrap(), Catalogue::seed()).unwrap_err().0;
        for (t, key) in [
            (format!("[channels.notifications.source]\nqueue = \"{long}\"\n"), "queue"),
            (format!("[channels.deals.source]\nexchange = \"{long}\"\n"), "exchange"),
            (format!("[channels.deals.source]\nbind_queue = \"{long}\"\n"), "bind_queue"),
            (format!("[channels.deals.source]\nrouting_keys = [\"{long}\"]\n"), "routing_keys"),
            ("[channels.notifications.source]\nqueue = \"\"\n".to_string(), "queue"),
            ("[channels.deals.source]\nexchange = \"\"\n".to_string(), "exchange"),
            ("[channels.deals.source]\nbind_queue = \"\"\n".to_string(), "bind_queue"),
            ("[channels.deals.source]\nrouting_keys = []\n".to_string(), "routing_keys"),
        ] {
            let e = err(&t);
            assert!(e.starts_with("channels.") && e.contains(key), "{t}: {e}");
        }
        // 255 bytes, and an empty routing key (a direct binding), are fine.
        let fits = format!("[channels.deals.source]\nexchange = \"{}\"\nrouting_keys = [\"\"]\n", "x".repeat(255));
        assert!(Settings::new(Config::from_toml(&fits).unwrap(), Catalogue::seed()).is_ok());
    }

    #[test]
    fn a_broker_url_the_client_would_misread_is_refused_without_showing_it() {
        let err = |url: &str| Settings::new(Config::from_toml(&format!("[broker]\nurl = \"{url}\"\n")).unwrap(), Catalogue::seed()).err().map(|e| e.0);
        for url in [
            "amqp://g:secret@[fd00::5]:5672/%2f",
            "amqp://g:secret@rabbit:99999/%2f",
            "amqp://g:secret@rabbit:0/%2f",
            "amqp://g:secret@rabbit:x/",
            "amqp://g:secret@rabbit:+5672/",
            "amqp://g:secret@rabbit:5672:5673/",
            "amqp://g:secret@rabbit/%2f?heartbeat=abc",
            "amqp://g:secret@rabbit/%2f?frame_max=-1",
            "amqp://g:secret@rabbit/%2f?auth_mechanism=foo",
            "amqp://g:secret%FF@rabbit/",
        ] {
            let e = err(url).unwrap_or_else(|| panic!("{url} accepted"));
            assert!(e.starts_with("broker.url") && !e.contains("secret"), "{e}");
        }
        for url in [
            "amqp://g:g@rabbit:5672/%2f",
            "amqp://g:g@rabbit/%2f",
            "amqp://rabbit",
            "amqp://u:p@h:5672/v?heartbeat=10",
            "AMQP://u:p@s:s[w@rabbit:5672/%2f",
        ] {
            assert_eq!(err(url), None, "{url}");
        }
    }

    #[test]
    fn a_source_table_without_exchange_or_queue_keeps_the_default_origin() {
        let c = Config::from_toml(
            "[channels.deals.source]\nstream = true\n[channels.tasks.source]\nrouting_keys = [\"task.#\"]\n\
             [channels.notifications.source]\nstream = true\nmax_age = \"1D\"\nepoch = 2\n",
        )
        .unwrap();
        let s = Settings::new(c, Catalogue::seed()).unwrap();
        let deals = s.channel(s.channel_id("deals").unwrap());
        assert_eq!(deals.source, crm_domain("sse-gateway.deals.stream"));
        assert_eq!(deals.log, Some(StreamLog { max_age: "1h".into(), max_length_bytes: None, epoch: 1 }));
        let tasks = s.channel(s.channel_id("tasks").unwrap());
        assert!(matches!(&tasks.source, SourceSettings::Exchange { exchange, routing_keys, queue, .. }
            if exchange == "tasks.events" && routing_keys == &["task.#"] && queue == "sse-gateway.tasks"));
        let notes = s.channel(s.channel_id("notifications").unwrap());
        assert_eq!(notes.source, SourceSettings::Queue { queue: "notifications.internal".into() });
        assert_eq!(notes.log.as_ref().map(|l| l.max_age.as_str()), Some("1D"));
        assert_eq!(notes.log.as_ref().map(|l| l.epoch), Some(2));
        // Two stream channels on one epoch (both default 1) would read each other's ids.
        let c = Config::from_toml("[channels.deals.source]\nstream = true\n[channels.notifications.source]\nstream = true\n").unwrap();
        let e = Settings::new(c, Catalogue::seed()).unwrap_err().0;
        assert!(e.contains("are both 1: give each stream channel its own epoch"), "{e}");
        // Keys of the other kind of origin are still refused.
        let c = Config::from_toml("[channels.notifications.source]\nrouting_keys = [\"a\"]\n").unwrap();
        assert!(Settings::new(c, Catalogue::seed()).unwrap_err().0.contains("only apply to an exchange source"));
    }

    #[test]
    fn zero_delays_timeouts_and_prefetch_are_refused() {
        for (toml, key) in [
            ("[broker]\nreconnect_min = \"0s\"\n", "broker.reconnect_min"),
            ("[broker]\nreconnect_min = \"2s\"\nreconnect_max = \"1s\"\n", "broker.reconnect_max"),
            ("[broker]\nprefetch = 0\n", "broker.prefetch"),
            ("[broker]\ncheck_interval = \"500ms\"\n", "broker.check_interval"),
            ("[server]\nhead_timeout = \"0s\"\n", "server.head_timeout"),
            ("[server]\nhead_timeout = \"999ms\"\n", "server.head_timeout"),
            ("[server]\nmax_head_bytes = 18446744073709551615\n", "server.max_head_bytes"),
            ("[server]\nmax_head_bytes = 1048577\n", "server.max_head_bytes"),
            ("[streams]\nmax_pending_bytes = 1073741825\n", "streams.max_pending_bytes"),
            ("[broker]\nurl = \"amqp://h\"\nmax_message_bytes = 134217729\n", "broker.max_message_bytes"),
            ("[demo]\ninterval = \"0s\"\n", "demo.interval"),
            ("[streams]\nheartbeat = \"999ms\"\n", "streams.heartbeat"),
            ("[streams]\nwarning_interval = \"1ms\"\n", "streams.warning_interval"),
            ("[server]\nmax_streams = 0\n", "server.max_streams"),
            ("[server]\nmax_streams = 3\nworkers = 4\n", "server.workers"),
            ("[auth]\ncookie = \"jwt\"\n[server]\ncors_origins = [\"https://crm.example\", \"*\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"*\"]\n", "server.cors_origins"), // the default cookie is on
        ] {
            let c = Config::from_toml(toml).unwrap();
            assert!(Settings::new(c, Catalogue::seed()).unwrap_err().0.starts_with(key), "{toml}");
        }
        let c = Config::from_toml("[streams]\nheartbeat = \"1s\"\nwarning_interval = \"1s\"\n").unwrap();
        assert!(Settings::new(c, Catalogue::seed()).is_ok(), "the shortest intervals allowed");
        let c = Config::from_toml("[broker]\nreconnect_min = \"10ms\"\nreconnect_max = \"10ms\"\n").unwrap();
        assert!(Settings::new(c, Catalogue::seed()).is_ok(), "the smallest delays allowed");
        for origin in ["https://crm.example.com:8443", "http://localhost:3000", "https://xn--bcher-kva.example", "http://[::1]:8080", "http://127.0.0.1", "http://my_app.internal:8080"] {
            let c = Config::from_toml(&format!("[server]\ncors_origins = [\"{origin}\"]\n")).unwrap();
            assert!(Settings::new(c, Catalogue::seed()).is_ok(), "{origin}");
        }
        for ok in ["[auth]\ncookie = \"\"\n[server]\ncors_origins = [\"*\"]\n", "[auth]\ncookie = \"jwt\"\n[server]\ncors_origins = [\"https://crm.example\"]\n"] {
            let c = Config::from_toml(ok).unwrap();
            assert!(Settings::new(c, Catalogue::seed()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused_when_read_naming_the_key() {
        for (toml, key) in [
            ("[server]\nlisten = \"garbage\"\n", "server.listen"),
            ("[server]\nlisten = \"127.0.0.1\"\n", "server.listen"),
            ("[server]\nlisten = \"\"\n", "server.listen"),
            ("[server]\nlisten = \":8080\"\n", "server.listen"),
            ("[server]\nlisten = \"::1\"\n", "server.listen"),
            ("[server]\nlisten = \"fe80::1:8080\"\n", "server.listen"),
            ("[server]\nlisten = \"[fe80::1%eth0]:8080\"\n", "server.listen"),
            ("[server]\nlisten = \"[foo]:80\"\n", "server.listen"),
            ("[broker]\nurl = \"amqp://h\"\nmax_message_bytes = 0\n", "broker.max_message_bytes"),
            ("[server]\nmax_body_bytes = 1023\n", "server.max_body_bytes"),
            ("[server]\nworkers = 1025\n", "server.workers"),
            ("[server]\npublish_role = \"\"\n", "server.publish_role"),
            ("[server]\ncors_origins = [\"https://crm.example.com/\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"HTTPS://CRM.example.com\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"crm.example.com\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"null\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"https://crm.example.com:443\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"http://crm.example.com:80\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"https://crm.example.com:\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"https://crm.example.com:08443\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"https://crm.example.com:70000\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"https://bücher.example\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"https://:8080\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"https://[::1]x\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"https://[]\"]\n", "server.cors_origins"),
            ("[server]\ncors_origins = [\"http://[FE80::1]:8080\"]\n", "server.cors_origins"),
            ("[broker]\nurl = \"amqps://svc:SeCrEt@rabbit:5671/%2f\"\n", "broker.url"),
            ("[broker]\nurl = \"http://rabbit/\"\n", "broker.url"),
            ("[broker]\nurl = \"not a url\"\n", "broker.url"),
            ("[broker]\nurl = \"amqp://\"\n", "broker.url"),
            ("[broker]\nurl = \"amqp://svc:SeCrEt@rabbit:5672/\"\n", "broker.url"),
            ("[server]\nmax_body_bytes = 16777217\n", "server.max_body_bytes"),
            ("[server]\nmax_head_bytes = 4095\n", "server.max_head_bytes"),
            ("[channels.deals.source]\nexchange_kind = \"direct\"\n", "channels.deals.source.routing_keys"),
            ("[channels.deals.source]\nexchange = \"x\"\nexchange_kind = \"direct\"\nrouting_keys = [\"deal.*\"]\n", "channels.deals.source.routing_keys"),
        ] {
            let c = Config::from_toml(toml).unwrap();
            let e = Settings::new(c, Catalogue::seed()).unwrap_err().0;
            assert!(e.starts_with(key), "{toml}: {e}");
            assert!(!e.contains("SeCrEt"), "the URL's password is not shown: {e}");
        }
        for ok in [
            "[server]\nlisten = \"localhost:8080\"\n",
            "[server]\nlisten = \"[::1]:0\"\n",
            "[server]\nlisten = \"[fe80::1%2]:0\"\n",
            "[server]\ncors_origins = [\"https://crm.example.com:8443\", \"http://localhost:3000\"]\n",
            "[broker]\nurl = \"AMQP://svc:pw@rabbit:5672/%2f\"\n",
            "[broker]\nurl = \"amqp://svc:pw@rabbit:5672\"\n",
            "[server]\nmax_body_bytes = 16777216\n",
            "[channels.deals.source]\nexchange_kind = \"direct\"\nrouting_keys = [\"deal.created\", \"deal.updated\"]\n",
        ] {
            let c = Config::from_toml(ok).unwrap();
            assert!(Settings::new(c, Catalogue::seed()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_short_forbidden_retry_is_refused() {
        let c = Config::from_toml("[streams]\nforbidden_retry = \"5s\"\n").unwrap();
        assert!(Settings::new(c, Catalogue::seed()).unwrap_err().0.contains("forbidden_retry"));
    }
}
