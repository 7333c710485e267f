//! Valid payloads for every event type of the seed catalogue (`core/catalogue.toml`), written
//! out by hand from the seed's tables so a catalogue drift shows up as a failing test.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

/// Every `(channel, event type)` of the seed, in the seed's order.
pub const SEED_EVENTS: [(&str, &str); 12] = [
    ("deals", "deal.created"),
    ("deals", "deal.updated"),
    ("deals", "deal.journal.appended"),
    ("deals", "policy.status.changed"),
    ("deals", "calculation.added"),
    ("tasks", "task.created"),
    ("tasks", "task.updated"),
    ("tasks", "task.reminder"),
    ("notifications", "notification.sent"),
    ("notifications", "notification.read"),
    ("payments", "payment.status.changed"),
    ("payments", "payment.overdue"),
];

/// A fresh, well-formed uuid (random enough for tests; not RFC 4122 versioned).
pub fn uuid() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let a = t ^ (std::process::id() as u64) << 32;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        a as u16 & 0xfff,
        (n >> 48) as u16 & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

/// A valid payload for `event` (every required field, right kinds).
pub fn valid(event: &str) -> Value {
    match event {
        "deal.created" => json!({
            "deal_id": uuid(), "client_id": uuid(), "title": "Сделка №1: КАСКО \"Премиум\"",
            "status": "draft", "created_at": "2024-05-01T12:30:00Z"
        }),
        "deal.updated" => json!({
            "deal_id": uuid(), "changes": { "status": "issuing" },
            "updated_at": "2024-05-01T12:31:00.5+03:00", "version": 5
        }),
        "deal.journal.appended" => json!({
            "deal_id": uuid(), "entry_id": uuid(), "author_id": uuid(),
            "text": "line one\nline two", "created_at": "2024-05-01T12:32:00Z"
        }),
        "policy.status.changed" => json!({
            "policy_id": uuid(), "deal_id": uuid(), "status": "active",
            "effective_from": "2024-02-29", "effective_to": "2025-02-28"
        }),
        "calculation.added" => json!({
            "calculation_id": uuid(), "deal_id": uuid(), "insurance_company": "Ingosstrakh",
            "premium_amount": 12345.67
        }),
        "task.created" => json!({
            "task_id": uuid(), "subject": "Call the client", "assignee_id": uuid(),
            "due_date": "2024-06-01", "status": "open"
        }),
        "task.updated" => json!({
            "task_id": uuid(), "changes": { "status": "in_progress" }, "updated_at": "2024-05-02T09:00:00Z"
        }),
        "task.reminder" => json!({
            "task_id": uuid(), "remind_at": "2024-05-02T10:00:00+03:00", "channel": "sse"
        }),
        "notification.sent" => json!({
            "notification_id": uuid(), "template": "deal.status.changed", "title": "Deal issued",
            "body": "Your deal is issued", "created_at": "2024-05-02T11:00:00Z"
        }),
        "notification.read" => json!({
            "notification_id": uuid(), "read_at": "2024-05-02T11:05:00Z"
        }),
        "payment.status.changed" => json!({
            "payment_id": uuid(), "deal_id": uuid(), "status": "received",
            "actual_date": "2024-05-03", "amount": 12345.67, "currency": "RUB"
        }),
        "payment.overdue" => json!({
            "payment_id": uuid(), "deal_id": uuid(), "due_date": "2024-04-30", "amount": 100
        }),
        other => panic!("no sample payload for {other}"),
    }
}

/// A valid payload for `event` as compact JSON text.
pub fn valid_text(event: &str) -> String {
    valid(event).to_string()
}
