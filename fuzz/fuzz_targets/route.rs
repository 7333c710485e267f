//! Raw request bytes into the router: never a panic; every answer is a complete HTTP response.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sse_gateway_core::*;
use std::sync::{Arc, OnceLock};

#[path = "common.rs"]
mod common;

static FRONT: OnceLock<Front> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let front = FRONT.get_or_init(|| {
        let s = common::settings("");
        let m = Arc::new(Metrics::new(&s));
        common::front(&s, &m)
    });
    if let Routed::Respond(r) = front.route(data, 1_900_000_000) {
        assert!(r.bytes.starts_with(b"HTTP/1.1 "), "every refusal is a response");
        let head_end = r.bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
        // Nothing from the request is reflected into the response head except an allowed origin.
        let head = &r.bytes[..head_end];
        assert!(!head.windows(2).any(|w| w == b"\n\n"), "no header injection");
    }
});
