//! Per-user isolation at volume (D3): ten thousand notifications published through RabbitMQ,
//! each naming one to three of a hundred users at random (seeded), reach exactly the users they
//! name, in publish order: no more, no less. User ids that are prefixes of one another (`u1`,
//! `u10`, `u19`) must not be confused; users never named get nothing.

use std::time::Instant;

use sse_gateway_tests::payloads::valid_text;
use sse_gateway_tests::process::events_in;
use sse_gateway_tests::rng::Rng;
use sse_gateway_tests::token::user;
use sse_gateway_tests::{for_each_binary, Bin, ConfigBuilder, Fixture, SseClient, WAIT};

const USERS: usize = 100;
const NOTIFICATIONS: usize = 10_000;
const SEED: u64 = 0x1501_a7e5;

/// Reads `s` until the marker; returns the data before it (a task of its own per stream).
async fn data_until(mut s: SseClient, marker: String, who: String) -> Vec<String> {
    s.data_until(&marker, &who).await
}

async fn every_user_gets_exactly_the_notifications_naming_them(bin: Bin) {
    let fx = Fixture::start(bin, ConfigBuilder::new()).await;
    let names: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    let never_named = ["x0", "x1", "u", "U1"];
    let marker = valid_text("notification.read");

    // One stream per user, a second one for every tenth user, and streams of users never named.
    let mut readers = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let copies = if i % 10 == 0 { 2 } else { 1 };
        for c in 0..copies {
            let s = fx.gw.stream("notifications", &user(name, &[])).await;
            readers.push((Some(i), ::tokio::spawn(data_until(s, marker.clone(), format!("{name}#{c}")))));
        }
    }
    for name in never_named {
        let s = fx.gw.stream("notifications", &user(name, &[])).await;
        readers.push((None, ::tokio::spawn(data_until(s, marker.clone(), format!("{name:?}")))));
    }
    let open = readers.len() as f64;
    fx.gw.wait_metric("sse_gateway_streams_open{channel=\"notifications\"}", open).await;

    let mut rng = Rng::new(SEED);
    let mut expected: Vec<Vec<String>> = vec![Vec::new(); USERS];
    let mut msgs = Vec::with_capacity(NOTIFICATIONS);
    for _ in 0..NOTIFICATIONS {
        let k = 1 + rng.below(3);
        let mut to: Vec<usize> = Vec::with_capacity(k);
        while to.len() < k {
            let u = rng.below(USERS);
            if !to.contains(&u) {
                to.push(u);
            }
        }
        let kind = ["notification.sent", "notification.read"][rng.below(2)];
        let body = valid_text(kind);
        for &u in &to {
            expected[u].push(body.clone());
        }
        let ids: Vec<&str> = to.iter().map(|&u| names[u].as_str()).collect();
        msgs.push(fx.msg("notifications", kind, &body).recipients(&ids.join(",")));
    }
    let started = Instant::now();
    fx.publish_all(&msgs).await;
    let everyone: Vec<&str> = names.iter().map(String::as_str).chain(never_named).collect();
    fx.publish_msg(fx.msg("notifications", "notification.read", &marker).recipients(&everyone.join(","))).await;
    let published_in = started.elapsed();

    let mut deliveries = 0;
    for (who, r) in readers {
        let got = ::tokio::time::timeout(6 * WAIT, r).await.expect("a reader finished in time").expect("a reader");
        deliveries += got.len();
        match who {
            Some(i) => {
                let want = &expected[i];
                assert_eq!(got.len(), want.len(), "{}: {} notifications, expected {}", names[i], got.len(), want.len());
                assert!(&got == want, "{}: the notifications naming them, but not in publish order or altered", names[i]);
            }
            None => assert!(got.is_empty(), "a user never named got {} notifications", got.len()),
        }
    }
    eprintln!(
        "{}: {NOTIFICATIONS} notifications to {USERS} users (seed {SEED:#x}) published in {published_in:?}; \
         {deliveries} deliveries checked, every one to a user it named, in order",
        bin.file_name()
    );
    fx.gw.wait_metric(&events_in("notifications"), (NOTIFICATIONS + 1) as f64).await;
}

for_each_binary!(every_user_gets_exactly_the_notifications_naming_them);
