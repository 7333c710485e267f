//! Raw request bytes into the router: never a panic; every answer is a complete HTTP response;
//! nothing opens a stream or takes a publish without a validly signed token.
//!
//! An input that starts with a NUL byte (no request does) is instead read as the choices of a
//! request head that carries a token signed with the router's secret
//! (`core/tests/support/signed_head.rs`, as the property test
//! `a_validly_signed_request_routes_as_the_rules_say`): what lies past authentication is fuzzed
//! too, and routed as the rules say (the signed user and the path's channel for a stream,
//! version and resume selection, the role checks, a publish's Content-Length framing and
//! `head_len`).
#![no_main]
use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sse_gateway_core::*;
use std::sync::{Arc, OnceLock};

#[path = "common.rs"]
mod common;
#[path = "../../core/tests/support/response.rs"]
mod response;
#[path = "../../core/tests/support/signed_head.rs"]
mod signed_head;

const NOW: u64 = 1_900_000_000;

static FRONT: OnceLock<Front> = OnceLock::new();

fn small(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let n = u.int_in_range(0usize..=2)?;
    (0..n).map(|_| u.arbitrary()).collect()
}

fn signed_head(u: &mut Unstructured<'_>) -> Result<signed_head::SignedHead> {
    Ok(signed_head::SignedHead {
        kind: u.arbitrary()?,
        method_ok: !u.ratio(1, 8)?,
        channel: u.arbitrary()?,
        versions: small(u)?,
        query_ids: small(u)?,
        header_id: u.arbitrary()?,
        accept: u.arbitrary()?,
        token_at: u.arbitrary()?,
        bearer: u.arbitrary()?,
        user: u.arbitrary()?,
        roles: u.arbitrary()?,
        content_lengths: small(u)?,
        transfer_encoding: if u.ratio(1, 5)? { Some(u.arbitrary()?) } else { None },
        expect: u.arbitrary()?,
        content_type: u.arbitrary()?,
        minor: u.arbitrary()?,
        origin: u.arbitrary()?,
        noise: {
            let n = u.int_in_range(0usize..=2)?;
            (0..n).map(|_| u.arbitrary()).collect::<Result<_>>()?
        },
        after: u.arbitrary()?,
    })
}

fuzz_target!(|data: &[u8]| {
    let front = FRONT.get_or_init(|| {
        let s = common::settings("");
        let m = Arc::new(Metrics::new(&s));
        common::front(&s, &m)
    });
    if let Some(choices) = data.strip_prefix(b"\0") {
        let Ok(req) = signed_head(&mut Unstructured::new(choices)) else { return };
        let raw = req.bytes(&req.token(common::SECRET, NOW));
        let routed = front.route(&raw, NOW);
        req.check(&raw, &routed, front.settings());
        return;
    }
    match front.route(data, NOW) {
        Routed::Respond(r) => response::assert_complete_response(&r.bytes, "https://a.example"),
        // No input here carries a token signed with the secret: a stream or a publish opened
        // from one would be an authentication bypass.
        r @ (Routed::Stream(_) | Routed::Publish(_)) => panic!("opened without a valid token: {r:?}"),
        _ => {}
    }
});
