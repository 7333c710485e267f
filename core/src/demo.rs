//! Demo mode (D14): the sample events and the page both frontends serve with `--demo`.
//!
//! Pure data: [`sample`] builds the `n`-th sample message of a channel (deterministic, valid for
//! the seed catalogue, cycling through every event type of the channel), [`page`] the HTML page
//! that opens a native `EventSource` on each channel. [`configure`] applies what `--demo` forces
//! on a configuration. The frontend supplies the timer, the randomness and the sockets.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::config::Config;
use crate::ingest::{HeaderValue, UpstreamMessage};

/// The demo page template; its cookie name placeholder is `__SSE_COOKIE__` (see [`page`]).
pub const PAGE: &str = include_str!("demo.html");

/// Cookie name `--demo` configures when `auth.cookie` is unset.
pub const DEMO_COOKIE: &str = "sse_token";

/// User id of the development token `--demo` prints.
pub const DEMO_USER: &str = "demo-user";

/// Roles of the development token `--demo` prints: every seed channel and the publish endpoint.
pub const DEMO_ROLES: [&str; 2] = ["finance_manager", "publisher"];

/// The demo page with the cookie name the gateway reads tokens from.
pub fn page(cookie: &str) -> String {
    PAGE.replace("__SSE_COOKIE__", cookie)
}

/// What `--demo` forces: sample events on, the publish endpoint on, and a token cookie (so the
/// page's native `EventSource` can authenticate). Returns `true` when no key material is
/// configured, i.e. the frontend must supply a random per-process secret (and set
/// [`crate::KeyMaterial::secret`]).
pub fn configure(config: &mut Config) -> bool {
    config.demo.enabled = true;
    config.server.publish_endpoint = true;
    if config.auth.cookie.is_none() {
        config.auth.cookie = Some(DEMO_COOKIE.to_string());
    }
    config.auth.secret.is_none() && config.auth.public_key_file.is_none() && config.auth.jwks_file.is_none()
}

fn uuid(kind: u16, n: u64) -> String {
    format!("00000000-{kind:04x}-4000-8000-{:012x}", n & 0xffff_ffff_ffff)
}

/// A date-time derived from `n` (the core reads no clock; the page shows arrival times).
fn datetime(n: u64) -> String {
    format!("2025-01-{:02}T{:02}:{:02}:{:02}Z", 1 + (n / 86_400) % 28, (n / 3600) % 24, (n / 60) % 60, n % 60)
}

fn date(n: u64) -> String {
    format!("2025-{:02}-{:02}", 1 + (n / 28) % 12, 1 + n % 28)
}

/// The `n`-th sample message of `channel` (seed channels only; `None` for any other). Event
/// types come in turn; notifications are addressed to `user` (the channel is per-user, D3).
pub fn sample(channel: &str, n: u64, user: &str) -> Option<UpstreamMessage> {
    let deal = uuid(1, n / 5);
    let (kind, data, recipient): (&str, Value, bool) = match channel {
        "deals" => match n % 5 {
            0 => ("deal.created", json!({"deal_id": deal, "client_id": uuid(2, n), "title": format!("Demo deal #{n}"), "status": "draft", "created_at": datetime(n)}), false),
            1 => ("deal.updated", json!({"deal_id": deal, "changes": {"status": "issuing"}, "updated_at": datetime(n), "version": n / 5 + 2}), false),
            2 => ("deal.journal.appended", json!({"deal_id": deal, "entry_id": uuid(3, n), "author_id": uuid(4, 1), "text": format!("Called the client ({n})"), "created_at": datetime(n)}), false),
            3 => ("policy.status.changed", json!({"policy_id": uuid(5, n), "deal_id": deal, "status": "active", "effective_from": date(n), "effective_to": date(n + 14)}), false),
            _ => ("calculation.added", json!({"calculation_id": uuid(6, n), "deal_id": deal, "insurance_company": "Demo Insurance", "premium_amount": 12345.67 + n as f64}), false),
        },
        "tasks" => match n % 3 {
            0 => ("task.created", json!({"task_id": uuid(7, n), "subject": format!("Demo task #{n}"), "assignee_id": uuid(4, 1), "due_date": date(n), "status": "open"}), false),
            1 => ("task.updated", json!({"task_id": uuid(7, n - 1), "changes": {"status": "in_progress"}, "updated_at": datetime(n)}), false),
            _ => ("task.reminder", json!({"task_id": uuid(7, n - 2), "remind_at": datetime(n + 600), "channel": "sse"}), false),
        },
        "notifications" => match n % 2 {
            0 => ("notification.sent", json!({"notification_id": uuid(8, n), "template": "deal.status.changed", "title": format!("Demo notification #{n}"), "body": "A deal changed status", "created_at": datetime(n)}), true),
            _ => ("notification.read", json!({"notification_id": uuid(8, n - 1), "read_at": datetime(n)}), true),
        },
        "payments" => match n % 2 {
            0 => ("payment.status.changed", json!({"payment_id": uuid(9, n), "deal_id": deal, "status": "received", "actual_date": date(n), "amount": 1000.5 + n as f64, "currency": "RUB"}), false),
            _ => ("payment.overdue", json!({"payment_id": uuid(9, n), "deal_id": deal, "due_date": date(n), "amount": 500.25}), false),
        },
        _ => return None,
    };
    Some(UpstreamMessage {
        kind: Some(kind.to_string()),
        routing_key: kind.to_string(),
        recipient_ids: recipient.then(|| HeaderValue::Text(user.to_string())),
        schema_version: None,
        message_id: None,
        body: Bytes::from(data.to_string()),
        position: None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Ingest, Metrics, Settings};

    #[test]
    fn every_sample_passes_ingest_and_every_event_type_comes_in_turn() {
        let settings = Arc::new(Settings::seed());
        let metrics = Arc::new(Metrics::new(&settings));
        for (i, ch) in settings.channels.iter().enumerate() {
            let id = settings.channel_id(&ch.name).unwrap();
            assert_eq!(id.index(), i);
            let mut ingest = Ingest::new(settings.clone(), metrics.clone(), id, 1);
            let mut seen = std::collections::BTreeSet::new();
            for n in 0..40 {
                let msg = sample(&ch.name, n, DEMO_USER).expect("a seed channel");
                let ev = ingest.handle_message(&msg).unwrap_or_else(|d| panic!("{} #{n}: {d:?}", ch.name));
                assert!(ev.visible_to(DEMO_USER));
                seen.insert(ev.event_type().to_string());
            }
            let schema = settings.catalogue.channel(&ch.name).unwrap().version(1).unwrap();
            assert_eq!(seen.len(), schema.event_types().count(), "{}", ch.name);
        }
        assert!(sample("invoices", 0, DEMO_USER).is_none());
    }

    #[test]
    fn demo_configuration_turns_on_events_publishing_and_the_cookie() {
        let mut c = Config::default();
        assert!(configure(&mut c), "no key material: the frontend must generate a secret");
        assert!(c.demo.enabled && c.server.publish_endpoint);
        assert_eq!(c.auth.cookie.as_deref(), Some(DEMO_COOKIE));
        let mut c = Config::from_toml("[auth]\nsecret = \"0123456789abcdef0123\"\ncookie = \"tok\"\n").unwrap();
        assert!(!configure(&mut c));
        assert_eq!(c.auth.cookie.as_deref(), Some("tok"));
        assert!(page("tok").contains("\"tok\"") && !page("tok").contains("__SSE_COOKIE__"));
    }
}
