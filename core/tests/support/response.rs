//! What every answer the router gives at once must look like. Shared by the property tests
//! (`core/tests/properties.rs`) and the `route` fuzz target (`fuzz/fuzz_targets/route.rs`).

/// Every header the router writes.
pub const HEADERS: [&str; 13] = [
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

/// A complete HTTP/1.1 response: a status line, then only the headers the gateway writes, each
/// `Name: value` on a line of its own with no control byte, nothing from the request reflected
/// except `allowed_origin`, and a `Content-Length` that is the body's.
pub fn assert_complete_response(bytes: &[u8], allowed_origin: &str) {
    assert!(bytes.starts_with(b"HTTP/1.1 "), "every refusal is a response");
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = std::str::from_utf8(&bytes[..head_end]).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    assert!(status.len() > 13 && status[9..12].bytes().all(|b| b.is_ascii_digit()), "status line {status:?}");
    for line in lines {
        let (name, value) = line.split_once(": ").unwrap_or_else(|| panic!("not a header line: {line:?}"));
        assert!(HEADERS.contains(&name), "a header the gateway does not write: {line:?}");
        assert!(!value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0), "a control byte in {line:?}");
        if name == "Access-Control-Allow-Origin" {
            assert_eq!(value, allowed_origin, "only the allowed origin is echoed");
        }
        if name == "Content-Length" {
            assert_eq!(value.parse::<usize>().ok(), Some(bytes.len() - head_end - 4), "Content-Length is the body's");
        }
    }
}
