//! Plain HTTP/1.1 over a raw `TcpStream`: requests written by hand, heads parsed by hand, so the
//! tests see exactly what the gateway sends.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// A complete non-stream response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The status line as sent (`HTTP/1.1 200 OK`).
    pub status_line: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (lossy UTF-8).
    pub body: String,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body of a {} is not JSON ({e}): {:?}", self.status, self.body))
    }
}

/// The first header called `name` (case-insensitive) in a parsed head.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// A parsed response head: status line, status, headers.
#[derive(Debug, Clone)]
pub struct Head {
    /// The status line as sent.
    pub status_line: String,
    /// Status code.
    pub status: u16,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
}

/// Parses a response head (everything before the blank line, CRLF or LF line ends). Panics on a
/// head that is not UTF-8 or that repeats a field other than `Set-Cookie`: the gateway sends
/// neither, and [`header`] would see only the first of two.
pub fn parse_head(raw: &[u8]) -> Head {
    let text = std::str::from_utf8(raw).unwrap_or_else(|e| panic!("a response head that is not UTF-8 ({e}): {:?}", String::from_utf8_lossy(raw)));
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default().to_string();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap_or_else(|| panic!("not a header line: {l:?}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect::<Vec<_>>();
    for (i, (k, _)) in headers.iter().enumerate() {
        let again = headers[..i].iter().any(|(seen, _)| seen.eq_ignore_ascii_case(k));
        assert!(!again || k.eq_ignore_ascii_case("set-cookie"), "a response head with {k} twice: {headers:?}");
    }
    Head { status_line, status, headers }
}

/// Index just past the blank line ending a head, if `buf` holds a whole head.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Writes `GET path` with `Host` and these headers.
pub async fn write_get(stream: &mut TcpStream, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) {
    write_request(stream, addr, "GET", path, headers, b"").await
}

/// Writes a request with `Host`, these headers and, when `body` is not empty, `Content-Length`
/// and the body.
pub async fn write_request(
    stream: &mut TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.expect("write the request");
}

/// `GET path` with `Connection: close` and these headers; reads the whole response (to
/// `Content-Length`, else to the end). Panics after [`WAIT`].
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    http_request(addr, "GET", path, headers, b"").await
}

/// Any request, like [`http_get`].
pub async fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    tokio::time::timeout(WAIT, async {
        let mut s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let mut all = vec![("Connection", "close")];
        all.extend_from_slice(headers);
        write_request(&mut s, addr, method, path, &all, body).await;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = head_end(&buf) {
                let head = parse_head(&buf[..end]);
                let len = header(&head.headers, "content-length").and_then(|l| l.parse::<usize>().ok());
                // A 204/304 or a length-delimited body is complete without the close.
                let len = if head.status == 204 || head.status == 304 { Some(0) } else { len };
                if let Some(len) = len {
                    if buf.len() >= end + len {
                        return finish(head, &buf[end..end + len]);
                    }
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = head_end(&buf).unwrap_or_else(|| {
            panic!("{method} {path}: connection closed before a full head: {:?}", String::from_utf8_lossy(&buf))
        });
        let head = parse_head(&buf[..end]);
        if let Some(len) = header(&head.headers, "content-length").and_then(|l| l.parse::<usize>().ok()) {
            assert!(
                head.status == 204 || head.status == 304 || buf.len() >= end + len,
                "{method} {path}: closed after {} of the {len} body bytes its Content-Length promised",
                buf.len() - end
            );
        }
        finish(head, &buf[end..])
    })
    .await
    .unwrap_or_else(|_| panic!("{method} {path}: no complete response within {WAIT:?}"))
}

fn finish(head: Head, body: &[u8]) -> Response {
    Response {
        status: head.status,
        status_line: head.status_line,
        headers: head.headers,
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

/// What came back on a connection driven by [`raw_exchange`].
#[derive(Debug, Clone)]
pub struct RawReply {
    /// Every byte received, head and body.
    pub bytes: Vec<u8>,
    /// Whether the server closed the connection (end of stream or reset) before the reading
    /// stopped.
    pub closed: bool,
    /// The close was a reset (what was read may be short of what the server wrote).
    pub reset: bool,
}

impl RawReply {
    /// The response status, when a status line arrived.
    pub fn status(&self) -> Option<u16> {
        let line_end = self.bytes.iter().position(|&b| b == b'\n')?;
        let line = std::str::from_utf8(&self.bytes[..line_end]).ok()?;
        line.split(' ').nth(1)?.parse().ok()
    }

    /// The parsed head, when a whole one arrived.
    pub fn head(&self) -> Option<Head> {
        head_end(&self.bytes).map(|end| parse_head(&self.bytes[..end]))
    }

    /// The bytes after the head (empty without a whole head).
    pub fn body(&self) -> &[u8] {
        head_end(&self.bytes).map_or(&[], |end| &self.bytes[end..])
    }

    /// Whether `needle` occurs anywhere in what was received.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.bytes.windows(needle.len()).any(|w| w == needle)
    }
}

/// Sends `request` byte for byte as given (no `Host` added, nothing checked) while reading the
/// answer, and reads until the server closes, `enough(bytes so far)` is true, or `timeout`
/// passes. Write errors are ignored: a server may answer (431, 400) and close before it has read
/// the whole request.
pub async fn raw_exchange(
    addr: SocketAddr,
    request: Vec<u8>,
    timeout: std::time::Duration,
    enough: impl Fn(&[u8]) -> bool,
) -> RawReply {
    let s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr // kept open (no FIN): the server must not see an early end of the request
    });
    let deadline = tokio::time::Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    let (mut closed, mut reset) = (false, false);
    while !enough(&bytes) {
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) => {
                closed = true;
                break;
            }
            Ok(Err(_)) => {
                (closed, reset) = (true, true);
                break;
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
    writer.abort();
    RawReply { bytes, closed, reset }
}
