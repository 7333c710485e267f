//! Property tests: random sequences of operations against one shard, checked against a reference
//! model after every step.
//!
//! Users open and close streams on channels with random roles, versions and resume ids; upstream
//! events carry random recipients and versions; time advances (stepping through every deadline,
//! as a frontend does); sources go down and up. The invariants:
//! - no user holds more streams than the limit;
//! - no event reaches a stream whose user may not see it (channel role, recipients, version);
//! - ids strictly increase on every stream;
//! - a stream resumed inside the window receives exactly the channel's later events it may see;
//! - no two heartbeats on a stream are further apart than the interval;
//! - every stream of a down source has had a warning within the warning interval.

mod support;
#[path = "support/response.rs"]
mod response;

/// The one origin allowed in the routing properties: the only one a response may echo.
const ORIGIN: &str = "https://a.example";
const ORIGIN_CONFIG: &str = "[server]\ncors_origins = [\"https://a.example\"]\n";

use proptest::prelude::*;
use sse_gateway_core::Routed;
use support::model::*;
use support::*;

fn op() -> impl Strategy<Value = Op> {
    let resume = prop_oneof![
        3 => Just(ResumeChoice::None),
        4 => (0usize..10).prop_map(ResumeChoice::Back),
        1 => Just(ResumeChoice::Malformed),
        1 => Just(ResumeChoice::OtherEpoch),
    ];
    prop_oneof![
        4 => (0..USERS, 0..4usize, any::<bool>(), any::<bool>(), resume)
            .prop_map(|(user, channel, finance, v2, resume)| Op::Open { user, channel, finance, v2, resume }),
        2 => any::<usize>().prop_map(|pick| Op::Close { pick }),
        6 => (0..4usize, proptest::option::weighted(0.4, proptest::collection::vec(0..USERS, 0..3)), any::<bool>())
            .prop_map(|(channel, recipients, v2)| Op::Publish { channel, recipients, v2 }),
        3 => (0u64..70_000).prop_map(|ms| Op::Advance { ms }),
        1 => (0..4usize).prop_map(|channel| Op::Down { channel }),
        1 => (0..4usize).prop_map(|channel| Op::Up { channel }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_every_invariant(ops in proptest::collection::vec(op(), 1..80)) {
        let mut m = Model::new();
        for op in ops {
            m.apply(op);
        }
    }
}

proptest! {
    #[test]
    fn routing_arbitrary_bytes_never_panics_and_answers_complete_responses(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let h = Harness::new(ORIGIN_CONFIG);
        if let Routed::Respond(r) = h.route(&raw) {
            response::assert_complete_response(&r.bytes, ORIGIN);
        }
    }

    #[test]
    fn routing_arbitrary_heads_never_panics_and_answers_complete_responses(
        method in "[A-Z]{1,8}",
        path in "/[ -~]{0,64}",
        headers in proptest::collection::vec(("[A-Za-z-]{1,16}", "[ -~]{0,64}"), 0..8),
        origin in proptest::option::of(prop_oneof![Just(ORIGIN.to_string()), Just("null".to_string()), "[ -~]{0,40}"]),
    ) {
        let h = Harness::new(ORIGIN_CONFIG);
        let mut raw = format!("{method} {path} HTTP/1.1\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(o) = origin {
            raw.push_str(&format!("Origin: {o}\r\n"));
        }
        raw.push_str("\r\n");
        if let Routed::Respond(r) = h.route(raw.as_bytes()) {
            response::assert_complete_response(&r.bytes, ORIGIN);
        }
    }
}
