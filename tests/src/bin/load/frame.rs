//! A fast event-stream reader for the load tool: it only needs each frame's `id:`, `event:` and
//! the numbers the publisher put in the data (`"n"`: sequence, `"t"`: scheduled publish time,
//! `"s"`: actual send time, both Unix ns),
//! so it finds frame ends with `memchr`, parses frames where they were read and never builds
//! strings. The full WHATWG parser (`sse_gateway_tests::EventStreamParser`) allocates per event;
//! at a million deliveries a second that would measure the client, not the server.
//!
//! Both servers end lines with LF only; a body sent with `Transfer-Encoding: chunked` (nchan) is
//! de-chunked first.

/// What the load tool keeps of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The `id:` value, if the frame had one.
    pub id: Option<&'a [u8]>,
    /// The `event:` value, if any.
    pub event: Option<&'a [u8]>,
    /// `"n":<digits>` in the data.
    pub n: Option<u64>,
    /// `"t":<digits>` in the data.
    pub t: Option<u64>,
    /// `"s":<digits>` in the data.
    pub s: Option<u64>,
}

/// Feed body bytes as they arrive; complete frames come out of [`FrameReader::feed`].
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    chunk: Option<Dechunk>,
}

impl FrameReader {
    /// A reader for a plain body (`chunked = false`) or a chunked one.
    pub fn new(chunked: bool) -> FrameReader {
        FrameReader { buf: Vec::new(), chunk: chunked.then(Dechunk::default) }
    }

    /// Consumes `bytes`, calling `each` for every frame completed by them. Frames are parsed in
    /// place; only an unfinished frame's bytes are kept for the next read (at a million
    /// deliveries a second, copying every byte and building a `memmem` searcher per read cost
    /// the client more CPU than the server under test spent in user space).
    pub fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(Frame<'_>)) {
        if let Some(d) = &mut self.chunk {
            d.push(bytes, &mut self.buf);
        } else if self.buf.is_empty() {
            let used = frames(bytes, &mut each);
            self.buf.extend_from_slice(&bytes[used..]);
            return;
        } else {
            self.buf.extend_from_slice(bytes);
        }
        let used = frames(&self.buf, &mut each);
        self.buf.drain(..used);
    }
}

/// Calls `each` for every whole frame at the start of `buf`; returns the bytes they took.
fn frames(buf: &[u8], each: &mut impl FnMut(Frame<'_>)) -> usize {
    let mut start = 0;
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let nl = from + i;
        match buf.get(nl + 1) {
            Some(b'\n') => {
                each(parse_frame(&buf[start..nl + 1]));
                start = nl + 2;
                from = start;
            }
            Some(_) => from = nl + 1,
            None => break,
        }
    }
    start
}

/// One frame (its lines, each ending in LF, without the blank line; a last line without its LF
/// is not read).
fn parse_frame(frame: &[u8]) -> Frame<'_> {
    let mut f = Frame { id: None, event: None, n: None, t: None, s: None };
    for line in memchr::memchr_iter(b'\n', frame).scan(0, |start, nl| {
        let line = &frame[*start..nl];
        *start = nl + 1;
        Some(line)
    }) {
        let value = |name: &[u8]| -> Option<&[u8]> {
            let v = line.strip_prefix(name)?;
            Some(v.strip_prefix(b" ").unwrap_or(v))
        };
        if let Some(v) = value(b"data:") {
            f.n = f.n.or_else(|| number_after(v, b"\"n\":"));
            f.t = f.t.or_else(|| number_after(v, b"\"t\":"));
            f.s = f.s.or_else(|| number_after(v, b"\"s\":"));
        } else if let Some(v) = value(b"id:") {
            f.id = Some(v);
        } else if let Some(v) = value(b"event:") {
            f.event = Some(v);
        }
    }
    f
}

/// The decimal number right after `key` in `hay` (a plain scan: the keys are short and near the
/// start of the payload, where a `memmem` searcher would cost more to build than to run).
fn number_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = hay.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = &hay[at..];
    let k = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if k == 0 || k > 19 {
        return None;
    }
    Some(digits[..k].iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0')))
}

/// `Transfer-Encoding: chunked` decoding (RFC 9112 §7.1), incremental. Trailers are not expected
/// on an endless stream; chunk extensions are skipped.
#[derive(Debug, Default)]
struct Dechunk {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    /// Reading the hex size; `ext` once a `;` started an extension.
    #[default]
    SizeStart,
    Size { size: usize, ext: bool },
    /// Inside the data: bytes left.
    Data(usize),
    /// The CRLF after the data.
    DataEnd,
    /// The zero-size chunk was seen: nothing more belongs to the body.
    Done,
}

impl Dechunk {
    fn push(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        use ChunkState::*;
        while !bytes.is_empty() {
            match self.state {
                SizeStart => self.state = Size { size: 0, ext: false },
                Size { size, ext } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    self.state = match b {
                        b'\n' if size == 0 => Done,
                        b'\n' => Data(size),
                        b'\r' => Size { size, ext },
                        b';' => Size { size, ext: true },
                        _ if ext => Size { size, ext },
                        _ => match (b as char).to_digit(16) {
                            Some(d) => Size { size: size * 16 + d as usize, ext },
                            None => Size { size, ext: true },
                        },
                    };
                }
                Data(left) => {
                    let k = left.min(bytes.len());
                    out.extend_from_slice(&bytes[..k]);
                    bytes = &bytes[k..];
                    self.state = if k == left { DataEnd } else { Data(left - k) };
                }
                DataEnd => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if b == b'\n' {
                        self.state = SizeStart;
                    }
                }
                Done => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(reader: &mut FrameReader, chunks: &[&[u8]]) -> Vec<(Option<String>, Option<u64>, Option<u64>)> {
        let mut out = Vec::new();
        for c in chunks {
            reader.feed(c, |f| out.push((f.id.map(|i| String::from_utf8_lossy(i).into_owned()), f.n, f.t)));
        }
        out
    }

    #[test]
    fn frames_split_across_reads_give_their_id_and_numbers() {
        let mut r = FrameReader::new(false);
        let got = frames(
            &mut r,
            &[b"retry: 3000\n\nid: 17-4\nevent: deal.updated\ndata: {\"n\":12,\"t\":99", b"7,\"x\":1}\n", b"\nevent: heartbeat\ndata:\n\n"],
        );
        assert_eq!(got, [(None, None, None), (Some("17-4".into()), Some(12), Some(997)), (None, None, None)]);
    }

    #[test]
    fn the_publishers_payload_gives_back_its_numbers() {
        let body = [b"id: 3-9\ndata: ".as_slice(), &crate::publish::payload(1_700_000_000_000_000, 42, 47), b"\n\n"].concat();
        let mut got = Vec::new();
        FrameReader::new(false).feed(&body, |f| got.push((f.n, f.t, f.s)));
        assert_eq!(got, [(Some(1_700_000_000_000_000), Some(42), Some(47))]);
    }

    #[test]
    fn every_split_point_of_a_plain_body_gives_the_same_frames() {
        let body: &[u8] = b"retry: 3000\n\nid: 1-1\ndata: {\"n\":1,\"t\":5}\n\n: hb\n\nid: 1-2\ndata: {\"n\":2,\"t\":6}\n\n";
        for at in 0..=body.len() {
            let mut r = FrameReader::new(false);
            let got = frames(&mut r, &[&body[..at], &body[at..]]);
            let with_n: Vec<_> = got.iter().filter(|f| f.1.is_some()).cloned().collect();
            assert_eq!(got.len(), 4, "split at {at}");
            assert_eq!(with_n, [(Some("1-1".into()), Some(1), Some(5)), (Some("1-2".into()), Some(2), Some(6))], "split at {at}");
        }
    }

    #[test]
    fn a_chunked_body_is_decoded_whatever_the_read_boundaries() {
        let body = b"id: 1:0\ndata: {\"n\":1,\"t\":5}\n\n: hi\n\nid: 1:1\ndata: {\"n\":2,\"t\":6}\n\n";
        let mut wire = Vec::new();
        for part in body.chunks(13) {
            wire.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
            wire.extend_from_slice(part);
            wire.extend_from_slice(b"\r\n");
        }
        for step in [1, 3, 7, wire.len()] {
            let mut r = FrameReader::new(true);
            let pieces: Vec<&[u8]> = wire.chunks(step).collect();
            let got = frames(&mut r, &pieces);
            let with_n: Vec<_> = got.iter().filter(|f| f.1.is_some()).cloned().collect();
            assert_eq!(with_n, [(Some("1:0".into()), Some(1), Some(5)), (Some("1:1".into()), Some(2), Some(6))], "step {step}");
        }
    }
}
