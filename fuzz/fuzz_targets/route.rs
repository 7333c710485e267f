//! Raw request bytes into the router: never a panic; every answer is a complete HTTP response.
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
    if let Routed::Respond(r) = front.route(data, 1_900_000_000) {
        response::assert_complete_response(&r.bytes, "https://a.example");
    }
});
