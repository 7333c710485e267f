//! Property tests: random sequences of operations against one shard, checked against a reference
//! model after every step.
//!
//! The operations and the invariants checked after each are the reference model's
//! (`support/model.rs`): the per-user limit and its eviction rule, visibility, strictly
//! increasing ids, exact delivery after a resume and `history_gap` exactly when due, heartbeat
//! spacing, outage warnings, token expiry, and closes only for a reason the stream has. The
//! routing properties check that any bytes get a complete response and never a stream without a
//! validly signed token.

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
        1 => (0usize..4).prop_map(ResumeChoice::Ahead),
        1 => Just(ResumeChoice::Zero),
        1 => Just(ResumeChoice::Malformed),
        1 => Just(ResumeChoice::OtherEpoch),
    ];
    // Mostly long-lived tokens; some expire within the case.
    let ttl = prop_oneof![3 => Just(3600u64), 1 => 1u64..180];
    // Mostly small events; some large enough that a few fill a stream's output bound; a few
    // larger than the bound itself (MAX_PENDING): an empty output takes any one event, so a
    // client that reads is not closed as slow for one.
    let pad = prop_oneof![6 => 0usize..40, 2 => 500usize..2500, 1 => 4000usize..9000];
    prop_oneof![
        4 => (0..USERS, 0..4usize, any::<bool>(), any::<bool>(), resume, ttl, prop_oneof![4 => Just(true), 1 => Just(false)])
            .prop_map(|(user, channel, finance, v2, resume, ttl, read)| Op::Open { user, channel, finance, v2, resume, ttl, read }),
        2 => any::<usize>().prop_map(|pick| Op::Close { pick }),
        6 => (0..4usize, proptest::option::weighted(0.4, proptest::collection::vec(0..USERS, 0..3)), any::<bool>(), pad)
            .prop_map(|(channel, recipients, v2, pad)| Op::Publish { channel, recipients, v2, pad }),
        3 => (0u64..70_000, prop_oneof![4 => Just(true), 1 => Just(false)]).prop_map(|(ms, step)| Op::Advance { ms, step }),
        1 => any::<usize>().prop_map(|pick| Op::Pause { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Read { pick }),
        1 => (0..4usize).prop_map(|channel| Op::Down { channel }),
        1 => (0..4usize).prop_map(|channel| Op::Up { channel }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_every_invariant(ops in proptest::collection::vec(op(), 1..80)) {
        let mut m = Model::new();
        for op in ops {
            m.apply(op);
        }
    }
}

/// An answer is a complete response; nothing opens a stream without a validly signed token (no
/// generated input carries one).
fn check_routed(r: Routed) {
    match r {
        Routed::Respond(r) => response::assert_complete_response(&r.bytes, ORIGIN),
        r @ (Routed::Stream(_) | Routed::Publish(_)) => panic!("opened without a valid token: {r:?}"),
        _ => {}
    }
}

proptest! {
    #[test]
    fn routing_arbitrary_bytes_never_panics_and_answers_complete_responses(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let h = Harness::new(ORIGIN_CONFIG);
        check_routed(h.route(&raw));
    }

    #[test]
    fn routing_arbitrary_heads_never_panics_and_answers_complete_responses(
        method in "[A-Z]{1,8}",
        path in "/[ -~]{0,64}",
        headers in proptest::collection::vec(("[A-Za-z-]{1,16}", "[ -~]{0,64}"), 0..8),
        origin in proptest::option::of(prop_oneof![Just(ORIGIN.to_string()), Just("null".to_string()), "[ -~]{0,40}"]),
        host in proptest::option::of("[ -~]{0,24}"),
        minor in 0u8..2,
    ) {
        let h = Harness::new(ORIGIN_CONFIG);
        let mut raw = format!("{method} {path} HTTP/1.{minor}\r\n");
        if let Some(host) = host {
            raw.push_str(&format!("Host: {host}\r\n"));
        }
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(o) = origin {
            raw.push_str(&format!("Origin: {o}\r\n"));
        }
        raw.push_str("\r\n");
        check_routed(h.route(raw.as_bytes()));
    }
}

/// How a token is forged in [`a_stream_request_with_a_forged_token_never_opens`].
#[derive(Debug, Clone, Copy)]
enum Forgery {
    /// `alg: none` with the real claims and no signature.
    AlgNone,
    /// Signed with another secret.
    WrongSecret,
    /// The real header and signature around another user's claims.
    GraftedClaims,
    /// Signed right, but expired a day ago.
    Expired,
    /// `HS384` (not a configured algorithm), signed with the right secret.
    OtherAlgorithm,
    /// The signature cut short.
    Truncated,
}

fn sign(claims: &serde_json::Value, alg: jsonwebtoken::Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, &jsonwebtoken::EncodingKey::from_secret(secret)).expect("sign")
}

proptest! {
    /// A well-formed stream request whose token is forged in any of these ways is refused with
    /// 401 and opens nothing (the byte-level properties above almost never reach a stream path
    /// with a token at all).
    #[test]
    fn a_stream_request_with_a_forged_token_never_opens(
        forgery in prop_oneof![
            Just(Forgery::AlgNone), Just(Forgery::WrongSecret), Just(Forgery::GraftedClaims),
            Just(Forgery::Expired), Just(Forgery::OtherAlgorithm), Just(Forgery::Truncated),
        ],
        channel in prop_oneof![Just("deals"), Just("tasks"), Just("payments"), Just("notifications")],
        user in "[a-z]{1,12}",
    ) {
        let h = Harness::new(ORIGIN_CONFIG);
        let claims = |sub: &str, exp: u64| serde_json::json!({"sub": sub, "roles": ["finance_manager"], "exp": exp, "iat": h.unix});
        let good = h.token(&user, &["finance_manager"], 3600);
        let parts: Vec<&str> = good.split('.').collect();
        let token = match forgery {
            // base64url of {"alg":"none","typ":"JWT"}
            Forgery::AlgNone => format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]),
            Forgery::WrongSecret => sign(&claims(&user, h.unix + 3600), jsonwebtoken::Algorithm::HS256, b"another-secret-of-at-least-32-bytes!"),
            Forgery::GraftedClaims => {
                let other = sign(&claims("someone-else", h.unix + 3600), jsonwebtoken::Algorithm::HS256, b"x");
                format!("{}.{}.{}", parts[0], other.split('.').nth(1).expect("payload"), parts[2])
            }
            Forgery::Expired => sign(&claims(&user, h.unix - 86_400), jsonwebtoken::Algorithm::HS256, SECRET.as_bytes()),
            Forgery::OtherAlgorithm => sign(&claims(&user, h.unix + 3600), jsonwebtoken::Algorithm::HS384, SECRET.as_bytes()),
            Forgery::Truncated => good[..good.len() - 3].to_string(),
        };
        let auth = format!("Authorization: Bearer {token}");
        let raw = Harness::head(&format!("/api/v1/streams/{channel}"), &["Accept: text/event-stream", &auth]);
        match h.route(&raw) {
            Routed::Respond(r) => {
                prop_assert_eq!(r.status, 401, "{:?}: {}", forgery, String::from_utf8_lossy(&r.bytes));
                response::assert_complete_response(&r.bytes, ORIGIN);
            }
            other => prop_assert!(false, "{:?} routed as {:?}", forgery, other),
        }
    }
}

