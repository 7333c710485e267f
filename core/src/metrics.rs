//! Counters shared by every shard and ingest of one process, rendered as Prometheus text (D13).
//!
//! Plain relaxed atomics: each is bumped at most once per event per shard (never per delivery),
//! so sharing them across worker threads costs nothing measurable. The one count per write, the
//! delivery-delay histogram, is kept per shard and summed when rendered.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Settings;
use crate::http::STATUSES;
use crate::ChannelId;

/// Why an upstream message was not sent to anyone (D4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Body is not JSON.
    NotJson,
    /// Body is JSON but not an object.
    NotAnObject,
    /// Type is not one of the channel's event types for that version.
    UnknownType,
    /// A required field is missing.
    MissingField,
    /// A field has the wrong kind.
    WrongKind,
    /// `schema_version` is not a version of the channel.
    UnsupportedVersion,
    /// A per-user channel message without recipients, or an empty recipient list.
    NoRecipient,
    /// `message_id` or source position already seen.
    Duplicate,
    /// Body larger than `broker.max_message_bytes`.
    Oversized,
    /// A header of the wrong type (`schema_version`, `recipient_ids`).
    BadHeader,
    /// Handling it panicked (a bug; the frontend logged it): [`crate::Ingest::handling_failed`].
    Internal,
}

impl DropReason {
    /// All reasons, in label order.
    pub const ALL: [DropReason; 11] = [
        DropReason::NotJson,
        DropReason::NotAnObject,
        DropReason::UnknownType,
        DropReason::MissingField,
        DropReason::WrongKind,
        DropReason::UnsupportedVersion,
        DropReason::NoRecipient,
        DropReason::Duplicate,
        DropReason::Oversized,
        DropReason::BadHeader,
        DropReason::Internal,
    ];

    /// Stable snake_case label (`reason="..."` in `/metrics`, `reason=` in logs).
    pub fn label(self) -> &'static str {
        match self {
            DropReason::NotJson => "not_json",
            DropReason::NotAnObject => "not_an_object",
            DropReason::UnknownType => "unknown_type",
            DropReason::MissingField => "missing_field",
            DropReason::WrongKind => "wrong_kind",
            DropReason::UnsupportedVersion => "unsupported_version",
            DropReason::NoRecipient => "no_recipient",
            DropReason::Duplicate => "duplicate",
            DropReason::Oversized => "oversized",
            DropReason::BadHeader => "bad_header",
            DropReason::Internal => "internal",
        }
    }
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client went away.
    ClientGone,
    /// Evicted by a newer stream of the same user (D9).
    StreamLimit,
    /// Its token expired (D1).
    TokenExpired,
    /// Its unsent output passed the bound (D11).
    SlowClient,
    /// The gateway is shutting down (D12).
    Shutdown,
}

impl CloseReason {
    /// All reasons, in label order.
    pub const ALL: [CloseReason; 5] = [
        CloseReason::ClientGone,
        CloseReason::StreamLimit,
        CloseReason::TokenExpired,
        CloseReason::SlowClient,
        CloseReason::Shutdown,
    ];

    /// Stable snake_case label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientGone => "client_gone",
            CloseReason::StreamLimit => "stream_limit",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::SlowClient => "slow_client",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Default)]
struct PerChannel {
    streams_open: AtomicI64,
    streams_opened: AtomicU64,
    events_in: AtomicU64,
    deliveries: AtomicU64,
    replayed: AtomicU64,
    source_up: AtomicI64,
    /// By [`DropReason::ALL`] index.
    dropped: [AtomicU64; DropReason::ALL.len()],
}

/// Upper bounds, in microseconds, of the buckets of `sse_gateway_delivery_delay_seconds`.
const DELAY_BOUNDS_US: [u64; 13] =
    [500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000];

/// One shard's counts for `sse_gateway_delivery_delay_seconds`: only that shard writes them, so
/// a count per write never bounces a cache line between cores.
#[derive(Debug, Default)]
pub(crate) struct DelayHistogram {
    /// Per bucket (not cumulative); above the last bound only `count` has it.
    buckets: [AtomicU64; 13],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl DelayHistogram {
    /// Called by the owning shard only: a load and a store, no locked read-modify-write (this is
    /// once per write, on the hot path).
    pub(crate) fn record(&self, d: Duration) {
        let bump = |a: &AtomicU64, n: u64| a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
        let us = d.as_secs().saturating_mul(1_000_000).saturating_add(u64::from(d.subsec_micros()));
        if let Some(i) = DELAY_BOUNDS_US.iter().position(|b| us <= *b) {
            bump(&self.buckets[i], 1);
        }
        bump(&self.count, 1);
        bump(&self.sum_us, us);
    }
}

/// The process's counters. Create one, share it (`Arc`) with every shard and ingest.
#[derive(Debug)]
pub struct Metrics {
    channels: Vec<(String, PerChannel)>,
    closed: [AtomicU64; 5],
    responses: [AtomicU64; STATUSES.len()],
    replays: AtomicU64,
    history_gaps: AtomicU64,
    evictions: AtomicU64,
    limit_rejections: AtomicU64,
    forbidden: AtomicU64,
    head_timeouts: AtomicU64,
    shed: AtomicU64,
    unregistered: AtomicU64,
    /// One per shard ([`Metrics::delay_histogram`]), summed when rendered.
    delays: Mutex<Vec<Arc<DelayHistogram>>>,
}

impl Metrics {
    /// Counters for the channels of `settings`.
    pub fn new(settings: &Settings) -> Metrics {
        Metrics {
            channels: settings
                .channels
                .iter()
                .map(|c| (c.name.clone(), PerChannel { source_up: AtomicI64::new(0), ..Default::default() }))
                .collect(),
            closed: Default::default(),
            responses: Default::default(),
            replays: AtomicU64::new(0),
            history_gaps: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            limit_rejections: AtomicU64::new(0),
            forbidden: AtomicU64::new(0),
            head_timeouts: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            unregistered: AtomicU64::new(0),
            delays: Mutex::new(Vec::new()),
        }
    }

    /// A new shard's delay histogram, counted in `/metrics` from now on.
    pub(crate) fn delay_histogram(&self) -> Arc<DelayHistogram> {
        let h = Arc::new(DelayHistogram::default());
        self.delays.lock().unwrap_or_else(|e| e.into_inner()).push(h.clone());
        h
    }

    fn ch(&self, c: ChannelId) -> &PerChannel {
        &self.channels[c.index()].1
    }

    pub(crate) fn stream_opened(&self, c: ChannelId) {
        self.ch(c).streams_open.fetch_add(1, Relaxed);
        self.ch(c).streams_opened.fetch_add(1, Relaxed);
    }

    pub(crate) fn stream_closed(&self, c: ChannelId, why: CloseReason) {
        self.ch(c).streams_open.fetch_sub(1, Relaxed);
        let i = CloseReason::ALL.iter().position(|r| *r == why).expect("ALL lists every reason");
        self.closed[i].fetch_add(1, Relaxed);
    }

    pub(crate) fn event_in(&self, c: ChannelId) {
        self.ch(c).events_in.fetch_add(1, Relaxed);
    }

    pub(crate) fn delivered(&self, c: ChannelId, n: u64) {
        if n > 0 {
            self.ch(c).deliveries.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn replay_started(&self) {
        self.replays.fetch_add(1, Relaxed);
    }

    pub(crate) fn replayed(&self, c: ChannelId, n: u64) {
        if n > 0 {
            self.ch(c).replayed.fetch_add(n, Relaxed);
        }
    }

    /// A message for `c` whose handling panicked (the frontend caught it): dropped, `internal`.
    pub fn handling_failed(&self, c: ChannelId) {
        self.dropped(c, DropReason::Internal);
    }

    pub(crate) fn dropped(&self, c: ChannelId, why: DropReason) {
        let i = DropReason::ALL.iter().position(|r| *r == why).expect("ALL lists every reason");
        self.ch(c).dropped[i].fetch_add(1, Relaxed);
    }

    pub(crate) fn history_gap(&self) {
        self.history_gaps.fetch_add(1, Relaxed);
    }

    pub(crate) fn eviction(&self) {
        self.evictions.fetch_add(1, Relaxed);
    }

    pub(crate) fn limit_rejected(&self) {
        self.limit_rejections.fetch_add(1, Relaxed);
    }

    pub(crate) fn forbidden(&self) {
        self.forbidden.fetch_add(1, Relaxed);
    }

    /// Counts one HTTP response by status (the frontend calls this for every response it writes,
    /// stream heads included).
    pub fn response(&self, status: u16) {
        if let Some(i) = STATUSES.iter().position(|(s, _)| *s == status) {
            self.responses[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a connection closed unanswered because its request head (or a publish's body) was
    /// not complete within `server.head_timeout` (the frontend calls this).
    pub fn head_timeout(&self) {
        self.head_timeouts.fetch_add(1, Relaxed);
    }

    /// Counts a connection closed unanswered, its request head not complete a second after its
    /// accept, because accept ran out of file descriptors (the frontend calls this).
    pub fn shed(&self) {
        self.shed.fetch_add(1, Relaxed);
    }

    /// Counts a stream's connection closed unanswered because its shard could not register the
    /// socket with its event loop (the kernel short of memory or of epoll watches; the frontend
    /// calls this).
    pub fn unregistered(&self) {
        self.unregistered.fetch_add(1, Relaxed);
    }

    /// Records whether a channel's source is up (1) or down (0), for `/metrics` (the frontend
    /// calls this once per change, where it keeps the state `/readyz` reads).
    pub fn source_state(&self, c: ChannelId, up: bool) {
        self.ch(c).source_up.store(up as i64, Relaxed);
    }

    /// Messages dropped for `why` so far, on every channel.
    pub fn dropped_count(&self, why: DropReason) -> u64 {
        let i = DropReason::ALL.iter().position(|r| *r == why).expect("ALL lists every reason");
        self.channels.iter().map(|(_, p)| p.dropped[i].load(Relaxed)).sum()
    }

    /// Streams open on a channel now.
    pub fn streams_open(&self, c: ChannelId) -> i64 {
        self.ch(c).streams_open.load(Relaxed)
    }

    /// Prometheus text exposition (version 0.0.4) of every counter.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        type Row = (&'static str, &'static str, &'static str, fn(&PerChannel) -> i64);
        let per_channel: [Row; 6] = [
            ("sse_gateway_streams_open", "gauge", "Streams open now.", |p| p.streams_open.load(Relaxed)),
            ("sse_gateway_streams_opened_total", "counter", "Streams opened.", |p| {
                p.streams_opened.load(Relaxed) as i64
            }),
            ("sse_gateway_events_in_total", "counter", "Valid events received from the source.", |p| {
                p.events_in.load(Relaxed) as i64
            }),
            ("sse_gateway_events_out_total", "counter", "Event frames queued to streams (live).", |p| {
                p.deliveries.load(Relaxed) as i64
            }),
            ("sse_gateway_events_replayed_total", "counter", "Event frames replayed on resume.", |p| {
                p.replayed.load(Relaxed) as i64
            }),
            ("sse_gateway_source_up", "gauge", "1 while the channel's source is up (0 before it was first reached, and during an outage).", |p| {
                p.source_up.load(Relaxed)
            }),
        ];
        for (name, kind, help, get) in per_channel {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (ch, p) in &self.channels {
                let _ = writeln!(o, "{name}{{channel=\"{ch}\"}} {}", get(p));
            }
        }
        let name = "sse_gateway_events_dropped_total";
        let _ = writeln!(o, "# HELP {name} Upstream messages sent to no one, by channel and reason.\n# TYPE {name} counter");
        for (ch, p) in &self.channels {
            for (r, c) in DropReason::ALL.iter().zip(&p.dropped) {
                let _ = writeln!(o, "{name}{{channel=\"{ch}\",reason=\"{}\"}} {}", r.label(), c.load(Relaxed));
            }
        }
        let name = "sse_gateway_streams_closed_total";
        let _ = writeln!(o, "# HELP {name} Streams ended, by reason.\n# TYPE {name} counter");
        for (r, c) in CloseReason::ALL.iter().zip(&self.closed) {
            let _ = writeln!(o, "{name}{{reason=\"{}\"}} {}", r.label(), c.load(Relaxed));
        }
        let name = "sse_gateway_http_responses_total";
        let _ = writeln!(o, "# HELP {name} HTTP responses, by status.\n# TYPE {name} counter");
        for ((s, _), c) in STATUSES.iter().zip(&self.responses) {
            let _ = writeln!(o, "{name}{{status=\"{s}\"}} {}", c.load(Relaxed));
        }
        let singles = [
            ("sse_gateway_replays_total", "Streams that asked to resume (Last-Event-ID).", &self.replays),
            ("sse_gateway_history_gaps_total", "Warnings history_gap sent: resumes the retained history could not serve, and streams warned of events their source lost.", &self.history_gaps),
            ("sse_gateway_evictions_total", "Streams evicted by the per-user limit.", &self.evictions),
            ("sse_gateway_stream_limit_rejections_total", "Requests answered 409 stream_limit.", &self.limit_rejections),
            ("sse_gateway_forbidden_total", "Streams refused with the forbidden error.", &self.forbidden),
            (
                "sse_gateway_head_timeouts_total",
                "Connections closed unanswered: no complete request head (or publish body) within server.head_timeout.",
                &self.head_timeouts,
            ),
            (
                "sse_gateway_connections_shed_total",
                "Connections closed unanswered to free file descriptors: no complete request head a second after the accept when accept ran out of them.",
                &self.shed,
            ),
            (
                "sse_gateway_connections_unregistered_total",
                "Stream connections closed unanswered because their shard could not register the socket with its event loop (the kernel short of memory or of epoll watches).",
                &self.unregistered,
            ),
        ];
        for (name, help, c) in singles {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", c.load(Relaxed));
        }
        self.render_delays(&mut o);
        o
    }

    fn render_delays(&self, o: &mut String) {
        let (mut buckets, mut count, mut sum_us) = ([0u64; 13], 0u64, 0u64);
        for h in self.delays.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for (b, c) in buckets.iter_mut().zip(&h.buckets) {
                *b += c.load(Relaxed);
            }
            count += h.count.load(Relaxed);
            sum_us += h.sum_us.load(Relaxed);
        }
        let name = "sse_gateway_delivery_delay_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} From an event's arrival at the gateway to the write that carries it, per write (its oldest event).\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (bound, b) in DELAY_BOUNDS_US.iter().zip(buckets) {
            cumulative += b;
            let _ = writeln!(o, "{name}_bucket{{le=\"{}\"}} {cumulative}", *bound as f64 / 1e6);
        }
        // Read without a lock, the total may trail the buckets for a moment.
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", count.max(cumulative));
        let _ = writeln!(o, "{name}_sum {}\n{name}_count {}", sum_us as f64 / 1e6, count.max(cumulative));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::Catalogue;

    fn metrics() -> (Settings, Metrics) {
        let settings = Settings::new(Config::from_toml("").unwrap(), Catalogue::seed()).unwrap();
        let m = Metrics::new(&settings);
        (settings, m)
    }

    /// A stream's connection its shard could not register is counted (it gets no answer, so
    /// no response status counts it).
    #[test]
    fn an_unregistered_connection_is_counted() {
        let (_, m) = metrics();
        assert!(m.render().contains("\nsse_gateway_connections_unregistered_total 0\n"));
        m.unregistered();
        m.unregistered();
        assert!(m.render().contains("\nsse_gateway_connections_unregistered_total 2\n"));
    }

    #[test]
    fn a_source_is_down_until_first_reached() {
        let (settings, m) = metrics();
        let deals = settings.channel_id("deals").unwrap();
        assert!(m.render().contains("sse_gateway_source_up{channel=\"deals\"} 0\n"));
        m.source_state(deals, true);
        assert!(m.render().contains("sse_gateway_source_up{channel=\"deals\"} 1\n"));
        m.source_state(deals, false);
        assert!(m.render().contains("sse_gateway_source_up{channel=\"deals\"} 0\n"));
    }

    /// The text format (0.0.4): each family's HELP and TYPE once, before its samples, which
    /// follow one another; label values need no escaping (channel names are `[a-z0-9._-]`); a
    /// histogram's buckets are cumulative, `+Inf` equal to `_count`.
    #[test]
    fn the_exposition_is_prometheus_text() {
        let (settings, m) = metrics();
        let deals = settings.channel_id("deals").unwrap();
        m.stream_opened(deals);
        m.response(415);
        let h = m.delay_histogram();
        for ms in [0, 3, 30, 300, 9000] {
            h.record(Duration::from_millis(ms));
        }
        let text = m.render();
        let mut seen: Vec<String> = Vec::new();
        let mut current: Option<(String, String)> = None; // family, type
        let mut last_bucket = 0u64;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let family = rest.split(' ').next().unwrap().to_string();
                assert!(!seen.contains(&family), "{family}: HELP twice");
                seen.push(family);
                current = None;
                last_bucket = 0;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (family, kind) = rest.split_once(' ').unwrap();
                assert_eq!(Some(family), seen.last().map(String::as_str), "TYPE right after its HELP");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                current = Some((family.to_string(), kind.to_string()));
            } else {
                let (family, kind) = current.clone().unwrap_or_else(|| panic!("a sample before its TYPE: {line}"));
                let (series, value) = line.rsplit_once(' ').unwrap();
                let name = series.split('{').next().unwrap();
                let suffixes: &[&str] = if kind == "histogram" { &["_bucket", "_sum", "_count"] } else { &[""] };
                assert!(suffixes.iter().any(|s| name == format!("{family}{s}")), "{line} under {family}");
                if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                    let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).unwrap_or_else(|| panic!("{line}"));
                    for pair in inner.split(',') {
                        let (k, v) = pair.split_once('=').unwrap();
                        assert!(k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{line}");
                        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or_else(|| panic!("{line}"));
                        assert!(v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b)), "a label value to escape: {line}");
                    }
                }
                let v: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
                if name.ends_with("_bucket") {
                    assert!(v as u64 >= last_bucket, "buckets not cumulative: {line}");
                    last_bucket = v as u64;
                }
            }
        }
        let inf = text.lines().find(|l| l.contains("le=\"+Inf\"")).unwrap();
        let count = text.lines().find(|l| l.starts_with("sse_gateway_delivery_delay_seconds_count ")).unwrap();
        assert_eq!(inf.rsplit(' ').next(), count.rsplit(' ').next());
        assert_eq!(count, "sse_gateway_delivery_delay_seconds_count 5");
        assert!(text.contains("sse_gateway_http_responses_total{status=\"415\"} 1\n"));
        assert!(text.contains("sse_gateway_streams_open{channel=\"deals\"} 1\n"));
    }
}
