//! Raw request bytes into the router: never a panic; every answer is a complete HTTP response;
//! nothing opens a stream or takes a publish without a validly signed token.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sse_gateway_core::*;
use std::sync::{Arc, OnceLock};

#[path = "common.rs"]
mod common;
#[path = "../../core/tests/support/response.rs"]
mod response;

static FRONT: OnceLock<Front> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let front = FRONT.get_or_init(|| {
        let s = common::settings("");
        let m = Arc::new(Metrics::new(&s));
        common::front(&s, &m)
    });
    match front.route(data, 1_900_000_000) {
        Routed::Respond(r) => response::assert_complete_response(&r.bytes, "https://a.example"),
        // No input here carries a token signed with the secret: a stream or a publish opened
        // from one would be an authentication bypass.
        r @ (Routed::Stream(_) | Routed::Publish(_)) => panic!("opened without a valid token: {r:?}"),
        _ => {}
    }
});
