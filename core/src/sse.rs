//! SSE framing: every frame the gateway writes is built here, once.
//!
//! Event frames are encoded when an event is ingested and shared (`Bytes` is a refcount) by the
//! resume buffer and every stream that receives it. Data is split at line breaks so no payload can
//! inject a field; event names and ids come from the catalogue and the core, which only allow
//! `[A-Za-z0-9._-]`, so they cannot carry a line break either.

use bytes::{BufMut, Bytes, BytesMut};

/// `event: heartbeat` with an empty data line (D7).
pub const HEARTBEAT: &[u8] = b"event: heartbeat\ndata:\n\n";

/// The heartbeat frame as shared bytes (no allocation per use).
pub fn heartbeat() -> Bytes {
    Bytes::from_static(HEARTBEAT)
}

/// Builds one frame: optional `id:`, `event:`, and `data:` lines (one per line of `data`).
pub fn frame(id: Option<&str>, event: &str, data: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(32 + event.len() + data.len() + id.map_or(0, str::len));
    if let Some(id) = id {
        b.put_slice(b"id: ");
        b.put_slice(id.as_bytes());
        b.put_u8(b'\n');
    }
    b.put_slice(b"event: ");
    b.put_slice(event.as_bytes());
    b.put_u8(b'\n');
    // SSE treats CRLF, LF and CR as line ends: each becomes its own `data:` line.
    let data_line = |b: &mut BytesMut, line: &str| {
        b.put_slice(b"data:");
        if !line.is_empty() {
            b.put_u8(b' ');
            b.put_slice(line.as_bytes());
        }
        b.put_u8(b'\n');
    };
    let mut rest = data;
    while let Some(i) = rest.find(['\r', '\n']) {
        data_line(&mut b, &rest[..i]);
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    data_line(&mut b, rest);
    b.put_u8(b'\n');
    b.freeze()
}

/// `event: error` with `{"code":CODE}` (forbidden, stream_limit, token_expired).
pub fn error(code: &str) -> Bytes {
    frame(None, "error", &format!("{{\"code\":\"{code}\"}}"))
}

/// `event: warning` with `{"code":CODE,"channel":CHANNEL}` (source_unavailable, history_gap).
pub fn warning(code: &str, channel: &str) -> Bytes {
    frame(None, "warning", &format!("{{\"code\":\"{code}\",\"channel\":\"{channel}\"}}"))
}

/// `retry: MS` on its own (a field without data dispatches nothing).
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frame_has_id_event_and_one_data_line() {
        assert_eq!(
            &frame(Some("7-1"), "deal.created", "{\"a\":1}")[..],
            b"id: 7-1\nevent: deal.created\ndata: {\"a\":1}\n\n"
        );
    }

    #[test]
    fn line_breaks_in_data_become_separate_data_lines() {
        assert_eq!(
            &frame(None, "x", "a\nb\r\nc\rd")[..],
            b"event: x\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(&frame(None, "x", "a\n")[..], b"event: x\ndata: a\ndata:\n\n");
    }

    #[test]
    fn heartbeat_has_an_empty_data_line() {
        assert_eq!(&frame(None, "heartbeat", "")[..], HEARTBEAT);
    }

    #[test]
    fn error_and_warning_frames_carry_no_id() {
        assert_eq!(&error("forbidden")[..], b"event: error\ndata: {\"code\":\"forbidden\"}\n\n");
        assert_eq!(
            &warning("source_unavailable", "deals")[..],
            b"event: warning\ndata: {\"code\":\"source_unavailable\",\"channel\":\"deals\"}\n\n"
        );
    }
}
