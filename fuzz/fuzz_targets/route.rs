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
        // Nothing from the request is reflected into the response head except an allowed origin:
        // a status line, then only the headers the gateway writes, each `Name: value` on a line
        // of its own, and a Content-Length that is the body's.
        let head = std::str::from_utf8(&r.bytes[..head_end]).expect("an ASCII head");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        assert!(status.len() > 13 && status[9..12].bytes().all(|b| b.is_ascii_digit()), "status line {status:?}");
        for line in lines {
            let (name, value) = line.split_once(": ").unwrap_or_else(|| panic!("not a header line: {line:?}"));
            assert!(HEADERS.contains(&name), "a header the gateway does not write: {line:?}");
            assert!(!value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0), "a control byte in {line:?}");
            if name == "Access-Control-Allow-Origin" {
                assert_eq!(value, "https://a.example", "only the allowed origin is echoed");
            }
            if name == "Content-Length" {
                assert_eq!(value.parse::<usize>().ok(), Some(r.bytes.len() - head_end - 4), "Content-Length is the body's");
            }
        }
    }
});

/// Every header the router writes.
const HEADERS: [&str; 13] = [
    "Access-Control-Allow-Credentials",
    "Access-Control-Allow-Headers",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Origin",
    "Access-Control-Max-Age",
    "Allow",
    "Cache-Control",
    "Connection",
    "Content-Length",
    "Content-Type",
    "Vary",
    "WWW-Authenticate",
    "X-Accel-Buffering",
];
