//! The event stream as a browser reads it: [`EventStreamParser`] applies the WHATWG rules
//! (HTML "Server-sent events", *interpreting an event stream*) to bytes, without IO;
//! [`SseClient`] feeds it from a raw TCP connection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http::{self, head_end, parse_head, write_get};
use crate::WAIT;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` field of this event's block, if it had one (heartbeat, warning and error
    /// frames must not).
    pub id: Option<String>,
    /// The event type (`message` when the block had no `event:` field).
    pub event: String,
    /// The data lines joined with `\n`.
    pub data: String,
    /// The last event id as a browser holds it after this event (what it would send as
    /// `Last-Event-ID` on reconnect).
    pub last_event_id: String,
}

impl SseEvent {
    /// The data as JSON; panics with the event when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {self:?}"))
    }
}

/// Incremental event-stream parser: feed bytes as they come, take events as they complete.
#[derive(Debug, Default)]
pub struct EventStreamParser {
    line: Vec<u8>,
    after_cr: bool,
    started: bool,
    data: String,
    event_type: String,
    block_id: Option<String>,
    /// A field (any: `retry` too) was read since the last blank line.
    in_block: bool,
    /// The last event ID buffer: set by an `id` field.
    id_buffer: String,
    /// The last event ID string: the buffer, as of the last blank line (what a browser sends).
    last_event_id: String,
    retry: Option<u64>,
    retry_fields: usize,
    comments: usize,
    /// Lines that were not UTF-8 (a browser decodes them with U+FFFD in place of the bad bytes).
    invalid_utf8: usize,
    ready: std::collections::VecDeque<SseEvent>,
}

impl EventStreamParser {
    /// A parser at the start of a stream.
    pub fn new() -> EventStreamParser {
        EventStreamParser::default()
    }

    /// Consumes bytes of the body.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut bytes = bytes;
        if !self.started && !bytes.is_empty() {
            self.started = true;
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes); // one leading BOM
        }
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue; // CRLF: the CR ended the line already
                }
            }
            match b {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line();
                }
                b'\n' => self.end_line(),
                _ => self.line.push(b),
            }
        }
    }

    /// The next complete event, if any.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// The reconnection time the stream set last (`retry:`), in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Valid `retry:` fields seen so far.
    pub fn retry_fields(&self) -> usize {
        self.retry_fields
    }

    /// Lines seen that were not UTF-8 (decoded leniently, as a browser does).
    pub fn invalid_utf8(&self) -> usize {
        self.invalid_utf8
    }

    /// Comment lines seen (`:` first).
    pub fn comments(&self) -> usize {
        self.comments
    }

    /// The last event ID string: what a browser sends as `Last-Event-ID`, the `id` of the last
    /// block ended by a blank line (an `id` in a block not ended yet does not count).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The last event ID buffer: the last `id` field read, its block ended or not.
    pub fn id_buffer(&self) -> &str {
        &self.id_buffer
    }

    /// Bytes of a frame that has not ended: a line without its end, or fields without the blank
    /// line that dispatches them. At a close, a frame cut in half.
    pub fn partial(&self) -> bool {
        !self.line.is_empty() || self.in_block
    }

    fn end_line(&mut self) {
        let raw = std::mem::take(&mut self.line);
        if std::str::from_utf8(&raw).is_err() {
            self.invalid_utf8 += 1;
        }
        let line = String::from_utf8_lossy(&raw);
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }
        self.in_block = true;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.event_type = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                self.id_buffer = value.to_string();
                self.block_id = Some(value.to_string());
            }
            // Digits past u64 are ignored too (a browser's reconnection time cannot hold them).
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    self.retry = Some(ms);
                    self.retry_fields += 1;
                }
            }
            _ => {} // unknown fields, an id with NUL and a non-numeric retry are ignored
        }
    }

    fn dispatch(&mut self) {
        let block_id = self.block_id.take();
        self.in_block = false;
        // Set at every blank line, with data or not (WHATWG: dispatch the event, step 1).
        self.last_event_id.clone_from(&self.id_buffer);
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the trailing LF
        let event = match std::mem::take(&mut self.event_type) {
            t if t.is_empty() => "message".to_string(),
            t => t,
        };
        self.ready.push_back(SseEvent { id: block_id, event, data, last_event_id: self.last_event_id.clone() });
    }
}

/// A client holding one `GET` open on a raw TCP connection.
pub struct SseClient {
    /// Status code.
    pub status: u16,
    /// The status line as sent.
    pub status_line: String,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
    stream: TcpStream,
    /// Body bytes read but not parsed yet (only before the body is known to be a stream).
    body: Vec<u8>,
    parser: EventStreamParser,
    closed: bool,
    /// The read error that ended the stream (a reset), if it did not end with a clean close.
    reset: Option<std::io::ErrorKind>,
}

impl SseClient {
    /// Connects, sends `GET path` (with `Accept: text/event-stream` unless `headers` has an
    /// `Accept`) and reads the response head. Panics after [`WAIT`].
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        tokio::time::timeout(WAIT, async {
            let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            let mut all: Vec<(&str, &str)> = Vec::new();
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("accept")) {
                all.push(("Accept", "text/event-stream"));
            }
            all.extend_from_slice(headers);
            write_get(&mut stream, addr, path, &all).await;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let end = loop {
                if let Some(end) = head_end(&buf) {
                    break end;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => panic!(
                        "GET {path}: connection closed before a full head: {:?}",
                        String::from_utf8_lossy(&buf)
                    ),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = parse_head(&buf[..end]);
            let mut client = SseClient {
                status: head.status,
                status_line: head.status_line,
                headers: head.headers,
                stream,
                body: Vec::new(),
                parser: EventStreamParser::new(),
                closed: false,
                reset: None,
            };
            let rest = buf[end..].to_vec();
            if client.status == 200 {
                // As a browser: a 200 that is not an event stream, or one framed by a length or
                // chunked (not read to the close), fails the EventSource.
                let ctype = client.header("content-type").unwrap_or_default();
                assert!(ctype.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream")), "GET {path}: 200 with Content-Type {ctype:?}");
                assert!(client.header("content-length").is_none() && client.header("transfer-encoding").is_none(), "GET {path}: a stream framed by length: {:?}", client.headers);
                client.parser.feed(&rest);
            } else {
                client.body = rest;
            }
            client
        })
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no response head within {WAIT:?}"))
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        http::header(&self.headers, name)
    }

    /// Whether the server closed the connection (end of body seen, or a read error).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether the stream is still open, found by reading for a moment (50 ms; what comes is kept
    /// for the next reads): [`SseClient::is_closed`] knows only what earlier reads saw, so a
    /// close since the last read would go unseen.
    pub async fn still_open(&mut self) -> bool {
        let until = Instant::now() + Duration::from_millis(50);
        while !self.closed && self.read_some(until).await {}
        !self.closed
    }

    /// The read error that ended the stream (a reset: the server discarded what it had not
    /// sent or the client had sent), `None` while open or after a clean close.
    pub fn reset(&self) -> Option<std::io::ErrorKind> {
        self.reset
    }

    /// Sends `bytes` on the open stream, as a client that talks on it would (an SSE client has
    /// nothing to say after its request). A write error (the server closed) is returned.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The last `retry:` value received, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.parser.retry()
    }

    /// Valid `retry:` fields received so far.
    pub fn retry_fields(&self) -> usize {
        self.parser.retry_fields()
    }

    /// The id a browser would send as `Last-Event-ID` on reconnect.
    pub fn last_event_id(&self) -> String {
        self.parser.last_event_id().to_string()
    }

    /// The next event, waiting at most `timeout`; `None` on timeout or when the server closed.
    /// Panics if the stream held a line that is not UTF-8 (the gateway only sends UTF-8).
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            assert_eq!(self.parser.invalid_utf8(), 0, "the stream sent a line that is not UTF-8");
            if let Some(ev) = self.parser.next_event() {
                return Some(ev);
            }
            if self.closed || !self.read_some(deadline).await {
                return None;
            }
        }
    }

    /// Reads once into the parser (marking the stream closed at its end); false if `deadline`
    /// passed first.
    async fn read_some(&mut self, deadline: Instant) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) => self.closed = true,
            Ok(Err(e)) => {
                self.closed = true;
                self.reset = Some(e.kind());
            }
            Ok(Ok(n)) => self.parser.feed(&chunk[..n]),
        }
        true
    }

    /// Reads until the stream has carried `n` `retry:` fields (they dispatch no event, so
    /// [`SseClient::next_event`] does not stop at one), within [`WAIT`]; false on timeout or close.
    pub async fn until_retry_fields(&mut self, n: usize) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            // Events read on the way stay queued in the parser for the next `next_event`.
            if self.parser.retry_fields() >= n {
                return true;
            }
            if self.closed || !self.read_some(deadline).await {
                return false;
            }
        }
    }

    /// The next event that is not a heartbeat, within `timeout`.
    pub async fn next_non_heartbeat(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Some(ev) if ev.event == "heartbeat" => continue,
                other => return other,
            }
        }
    }

    /// The next event that carries an `id:` (a domain event), skipping heartbeats and
    /// `source_unavailable` warnings, within `timeout`. Errors and any other warning (a
    /// `history_gap`: something was lost) are returned: a test usually fails on them.
    pub async fn next_with_id(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Some(ev) if ev.event == "heartbeat" => continue,
                Some(ev) if ev.event == "warning" && ev.data.contains("\"source_unavailable\"") => continue,
                // A domain event without its id: a browser shows it but cannot resume after it.
                Some(ev) if ev.id.is_none() && ev.event != "warning" && ev.event != "error" => {
                    panic!("a {} event without an id: {ev:?}", ev.event)
                }
                other => return other,
            }
        }
    }

    /// Reads events with ids until one whose data is `marker`; returns the data of those before
    /// it. Panics (naming `who`) on an error frame, a `history_gap`, an id that does not come
    /// after the one before it (a duplicate, or one going back), a close, or [`WAIT`] x 3
    /// without an event: for "exactly these events, in order" checks under load, with a marker
    /// published last. Other warnings (`source_unavailable`) and heartbeats are passed over.
    pub async fn data_until(&mut self, marker: &str, who: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let mut last: Option<(u64, u64)> = None;
        loop {
            let ev = self.next_non_heartbeat(3 * WAIT).await.unwrap_or_else(|| {
                let state = if self.closed { "closed" } else { "silent" };
                panic!("{who}: stream {state} after {} events, before the marker", seen.len())
            });
            assert_ne!(ev.event, "error", "{who}: {ev:?}");
            let Some(id) = &ev.id else {
                assert!(!ev.data.contains("history_gap"), "{who}: history_gap after {} events: {ev:?}", seen.len());
                continue;
            };
            let at = parse_id(id).unwrap_or_else(|| panic!("{who}: an id not of the form <epoch>-<seq>: {id:?}"));
            if let Some(prev) = last {
                assert!(at.0 == prev.0 && at.1 > prev.1, "{who}: id {id} after {prev:?}: another epoch, a duplicate or out of order");
            }
            last = Some(at);
            if ev.data == marker {
                return seen;
            }
            seen.push(ev.data);
        }
    }

    /// Like [`SseClient::next_with_id`], panicking with `what` after [`WAIT`].
    pub async fn expect_event(&mut self, what: &str) -> SseEvent {
        match self.next_with_id(WAIT).await {
            Some(ev) => ev,
            None if self.closed => panic!("expected {what}: the server closed the stream"),
            None => panic!("expected {what}: nothing within {WAIT:?}"),
        }
    }

    /// The next event of type `event` (skipping others), panicking after [`WAIT`].
    pub async fn expect_type(&mut self, event: &str) -> SseEvent {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Some(ev) if ev.event == event => return ev,
                Some(_) => continue,
                None if self.closed => panic!("expected an `{event}` event: the server closed the stream"),
                None => panic!("expected an `{event}` event: none within {WAIT:?}"),
            }
        }
    }

    /// Reads until the server closes, returning every event on the way; `None` when it is still
    /// open after `timeout`. Panics if the close cut a frame in half (the gateway ends a stream
    /// after whole frames only) or was a reset (what was still unsent would be lost).
    pub async fn until_closed(&mut self, timeout: Duration) -> Option<Vec<SseEvent>> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Some(ev) => events.push(ev),
                None if self.closed => {
                    assert!(!self.parser.partial(), "the stream closed in the middle of a frame, after {events:?}");
                    assert_eq!(self.reset, None, "the stream ended with a reset, not a close, after {events:?}");
                    return Some(events);
                }
                None => return None,
            }
        }
    }

    /// Events (any type) arriving within `window`: used to show that nothing unexpected comes.
    pub async fn events_within(&mut self, window: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + window;
        let mut events = Vec::new();
        while let Some(ev) = self.next_event(deadline.saturating_duration_since(Instant::now())).await {
            events.push(ev);
        }
        events
    }

    /// The body of a non-200 response: to `Content-Length`, else to the end, within `timeout`.
    pub async fn read_body(&mut self, timeout: Duration) -> String {
        let want = self.header("content-length").and_then(|l| l.parse::<usize>().ok());
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 8192];
        while want.is_none_or(|w| self.body.len() < w) && !self.closed {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.body.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body of a non-200 response as JSON.
    pub async fn json_body(&mut self) -> serde_json::Value {
        let body = self.read_body(WAIT).await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("body of a {} is not JSON ({e}): {body:?}", self.status))
    }
}

/// An event id's parts, `<epoch>-<seq>`.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (e, s) = id.split_once('-')?;
    Some((e.parse().ok()?, s.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> (Vec<SseEvent>, EventStreamParser) {
        let mut p = EventStreamParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c);
            while let Some(e) = p.next_event() {
                out.push(e);
            }
        }
        (out, p)
    }

    #[test]
    fn an_event_is_dispatched_on_the_blank_line_with_its_fields() {
        let (evs, _) = parse(&[b"id: 1-7\nevent: deal.created\ndata: {\"a\":1}\n", b"\n"]);
        assert_eq!(
            evs,
            [SseEvent {
                id: Some("1-7".into()),
                event: "deal.created".into(),
                data: "{\"a\":1}".into(),
                last_event_id: "1-7".into()
            }]
        );
    }

    #[test]
    fn cr_lf_and_crlf_all_end_lines_even_split_across_reads() {
        let (evs, _) = parse(&[b"data: a\r", b"\ndata: b\rdata: c\n\r", b"\n", b"data: d\r\r"]);
        let data: Vec<_> = evs.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["a\nb\nc", "d"]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored_and_one_space_is_stripped() {
        let (evs, p) = parse(&[b": hi\nfoo: bar\ndata:  two spaces\ndata\n\n"]);
        assert_eq!(evs[0].data, " two spaces\n");
        assert_eq!(evs[0].event, "message");
        assert_eq!(p.comments(), 1);
    }

    #[test]
    fn a_block_without_data_dispatches_nothing_but_keeps_retry_and_id() {
        let (evs, p) = parse(&[b"retry: 3500\n\nid: 9\nevent: x\n\nretry: 12a\n\nretry: 99999999999999999999\n\ndata: y\n\n"]);
        assert_eq!(p.retry(), Some(3500));
        assert_eq!(p.retry_fields(), 1, "`retry: 12a` and a retry past u64 are no retry fields");
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].event, "message", "the event type is reset by the empty block");
        assert_eq!(evs[0].id, None, "the id field belonged to the earlier block");
        assert_eq!(evs[0].last_event_id, "9", "but the browser's last event id kept it");
    }

    #[test]
    fn an_id_counts_for_a_reconnect_once_its_block_ended() {
        let (evs, p) = parse(&[b"id: 6
data: a

id: 7
event: deal.created
"]);
        assert_eq!(evs.len(), 1);
        assert_eq!(p.last_event_id(), "6", "a browser cut here resumes after 6");
        assert_eq!(p.id_buffer(), "7");
        assert!(p.partial());
        let (_, p) = parse(&[b"data: a\n\nretry: 5000\n"]);
        assert!(p.partial(), "a retry block without its blank line is cut too");
        let (_, p) = parse(&[b"data: a\n\n: comment\n"]);
        assert!(!p.partial(), "a comment is no block");
    }

    #[test]
    fn a_heartbeat_with_an_empty_data_line_is_an_event_with_empty_data() {
        let (evs, _) = parse(&[b"event: heartbeat\ndata:\n\n"]);
        assert_eq!(evs.len(), 1);
        assert_eq!((evs[0].event.as_str(), evs[0].data.as_str(), evs[0].id.as_deref()), ("heartbeat", "", None));
    }

    #[test]
    fn an_id_with_nul_is_ignored_and_an_empty_id_resets() {
        let (evs, p) = parse(&[b"id: 5\ndata: a\n\nid: x\0y\ndata: b\n\nid\ndata: c\n\n"]);
        assert_eq!(evs[1].last_event_id, "5");
        assert_eq!(evs[2].last_event_id, "");
        assert_eq!(p.last_event_id(), "");
    }

    #[test]
    fn a_frame_cut_in_half_is_partial_and_whole_frames_are_not() {
        assert!(!parse(&[b"retry: 1\n\nid: 1-1\ndata: a\n\n"]).1.partial());
        for cut in [&b"data: a\n"[..], b"data: a", b"id: 1-2\n", b"event: x\n"] {
            assert!(parse(&[b"data: whole\n\n", cut]).1.partial(), "{:?}", String::from_utf8_lossy(cut));
        }
    }

    #[test]
    fn a_line_that_is_not_utf8_is_counted_and_decoded_as_a_browser_would() {
        let (evs, p) = parse(&[b"data: a\xFFb\n\n", b"data: ok\n\n"]);
        assert_eq!(evs[0].data, "a\u{FFFD}b");
        assert_eq!(evs[1].data, "ok");
        assert_eq!(p.invalid_utf8(), 1);
        assert_eq!(parse(&[b"data: \xC3", b"\xA9\n\n"]).1.invalid_utf8(), 0, "a character split across reads is whole");
    }

    #[test]
    fn a_leading_bom_is_skipped_once() {
        let (evs, _) = parse(&[b"\xEF\xBB\xBFdata: x\n\n"]);
        assert_eq!(evs[0].data, "x");
    }
}
