//! Black-box harness for sse-gateway: starts a real gateway binary on `127.0.0.1:0`, talks to it
//! over raw TCP (so every byte of the HTTP head and the event stream is checked, nothing hidden by
//! an HTTP client), publishes through a real RabbitMQ, and cuts the broker link with a TCP proxy.
//!
//! Every scenario is written once, as `async fn scenario(bin: Bin)`, and [`for_each_binary!`]
//! turns it into one `#[tokio::test]` per gateway binary (`tokio::scenario`, `smol::scenario`).
//!
//! Running: `.ci/ensure-rabbitmq`, `cargo build --release --workspace`, then
//! `cargo test --release -p sse-gateway-tests` (the test build's profile picks the binaries'
//! profile directory). `SSE_GATEWAY_TARGET_DIR` points at another target directory,
//! `SSE_GATEWAY_TEST_AMQP_URL` at another broker. Each test uses its own exchanges and queues
//! (unique suffix) and deletes them at the end, so tests run in parallel.
//!
//! Modules, one concern each:
//! - [`bin`]: which gateway binaries exist and where.
//! - [`process`]: [`GatewayProcess`], a running gateway with its stderr kept for log checks and its
//!   resident memory readable.
//! - [`config`]: [`ConfigBuilder`], the TOML file a test hands the gateway.
//! - [`sse`]: [`EventStreamParser`] (the WHATWG event-stream rules, sans IO) and [`SseClient`].
//! - [`http`]: [`http_get`] / [`http_request`] for plain responses, [`Response`]; [`http::raw_exchange`]
//!   for requests sent byte for byte (oversized, malformed, hostile).
//! - [`broker`]: [`Broker`] (lapin publisher) and [`Topology`] (unique names per test).
//! - [`proxy`]: [`TcpProxy`], a forwarder to RabbitMQ that can be cut and restored.
//! - [`token`]: [`token`], real HS256 JWTs; RS256, hand-assembled and forged ones for hostile cases.
//! - [`fixture`]: [`Fixture`], a gateway wired to a fresh topology on RabbitMQ, ready.
//! - [`payloads`]: valid sample payloads for every event type of the seed catalogue.
//! - [`rng`]: [`rng::Rng`], a seeded generator for reproducible random test data.

#![forbid(unsafe_code)]

pub mod bin;
pub mod broker;
pub mod config;
pub mod fixture;
pub mod http;
pub mod payloads;
pub mod process;
pub mod proxy;
pub mod raw_amqp;
pub mod rng;
pub mod sse;
pub mod token;

use std::time::Duration;

pub use bin::Bin;
pub use broker::{Broker, Header, Message, Topology};
pub use config::ConfigBuilder;
pub use fixture::Fixture;
pub use http::{http_get, http_request, Response};
pub use process::GatewayProcess;
pub use proxy::TcpProxy;
pub use sse::{EventStreamParser, SseClient, SseEvent};
pub use token::token;

/// Upper bound for anything a test waits for. Only a failure bound: no test asserts that
/// something happens faster than this.
pub const WAIT: Duration = Duration::from_secs(10);

/// The HMAC secret the test configurations use.
pub const SECRET: &str = "black-box-test-secret-0123456789";

/// Rate-limited log lines in `log`: how many lines contain `line`, and the sum of the `field=N`
/// values of the lines containing `summary` (what was left without a line of its own).
pub fn lines_and_summed(log: &str, line: &str, summary: &str, field: &str) -> (usize, usize) {
    let lines = log.lines().filter(|l| l.contains(line)).count();
    let prefix = format!("{field}=");
    let summed = log
        .lines()
        .filter(|l| l.contains(summary))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str())).and_then(|n| n.parse::<usize>().ok()))
        .sum();
    (lines, summed)
}

/// Asserts that `lines` rate-limited lines (of `events` that each could have had one) follow the
/// gateway's rule since `started`: the burst of 200, then at most 20 a second, and fewer than the
/// events (the measured time only widens the bound; it is no timing a run must meet).
pub fn assert_rate_limited(lines: usize, events: usize, started: std::time::Instant, what: &str) {
    let at_most = 200 + 20 * (started.elapsed().as_secs() as usize + 1);
    assert!(
        lines >= 200 && lines <= at_most.min(events - 1),
        "{lines} lines for {events} {what}: a burst of 200, then 20 a second (at most {at_most} here)"
    );
}

/// Sleeps (re-exported so test files need not name `tokio` next to the generated `mod tokio`).
pub async fn sleep(d: Duration) {
    tokio::time::sleep(d).await
}

/// Runs one scenario against one binary; panics with the build command when it is missing.
pub async fn run<F, Fut>(bin: Bin, scenario: F, name: &str)
where
    F: FnOnce(Bin) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Both binaries are built by the test command; a missing one fails, never skips.
    assert!(
        bin.exists(),
        "{name}: {} not found at {}: build it first: cargo build --release --workspace",
        bin.file_name(),
        bin.path().display()
    );
    scenario(bin).await
}

/// Generates one test per gateway binary for each scenario named:
/// `for_each_binary!(a, b)` gives `tokio::a`, `tokio::b`, `smol::a`, `smol::b`, each calling the
/// scenario `async fn a(bin: Bin)` of the including file.
#[macro_export]
macro_rules! for_each_binary {
    ($($scenario:ident),+ $(,)?) => {
        $crate::for_each_binary!(@module tokio, Tokio, $($scenario),+);
        $crate::for_each_binary!(@module smol, Smol, $($scenario),+);
    };
    (@module $module:ident, $variant:ident, $($scenario:ident),+) => {
        mod $module {
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    $crate::run($crate::Bin::$variant, super::$scenario, stringify!($scenario)).await
                }
            )+
        }
    };
}
