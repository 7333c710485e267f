//! A bare AMQP 0-9-1 publisher for the messages lapin cannot send: its short strings
//! (`message_id`, `type`, header names) are Rust `String`s, while RabbitMQ takes any bytes there
//! and hands them on as they are. One connection per message, blocking, publisher confirm awaited.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::broker::{amqp_addr, amqp_url};

/// One raw message.
#[derive(Debug, Clone, Default)]
pub struct RawMessage {
    /// Exchange (`""`: the default exchange, routing to the queue named by the key).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// The `type` property, as bytes.
    pub kind: Vec<u8>,
    /// The `message_id` property, as bytes.
    pub message_id: Vec<u8>,
    /// Headers: name (any bytes), then the value encoded as a field value (its type byte first:
    /// [`text`], [`nested_arrays`]).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Body.
    pub body: Vec<u8>,
}

/// A long-string field value holding `v`.
pub fn text(v: &[u8]) -> Vec<u8> {
    let mut out = vec![b'S'];
    long(&mut out, v);
    out
}

/// A byte-array field value (`x`, RabbitMQ's) holding `v`: how pika sends Python `bytes`, Go
/// `[]byte` and Java `byte[]`.
pub fn byte_array(v: &[u8]) -> Vec<u8> {
    let mut out = vec![b'x'];
    long(&mut out, v);
    out
}

/// A long-long (signed 64-bit) field value holding `v`.
pub fn long_long(v: i64) -> Vec<u8> {
    let mut out = vec![b'l'];
    out.extend_from_slice(&v.to_be_bytes());
    out
}

/// A field value that is an array holding an array ... `depth` deep, with nothing inside.
pub fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut v = vec![b'V'];
    for _ in 0..depth {
        let mut outer = vec![b'A'];
        long(&mut outer, &v);
        v = outer;
    }
    v
}

fn short(out: &mut Vec<u8>, s: &[u8]) {
    out.push(u8::try_from(s.len()).expect("a short string is at most 255 bytes"));
    out.extend_from_slice(s);
}

fn long(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap().to_be_bytes());
    out.extend_from_slice(s);
}

fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

fn method(channel: u16, class: u16, id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(args);
    frame(1, channel, &p)
}

/// Reads frames until a method frame; returns (class, method, arguments). Heartbeats skipped.
fn read_method(s: &mut TcpStream) -> (u16, u16, Vec<u8>) {
    loop {
        let mut head = [0u8; 7];
        s.read_exact(&mut head).expect("read a frame header from the broker");
        let size = u32::from_be_bytes(head[3..7].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; size + 1];
        s.read_exact(&mut payload).expect("read a frame from the broker");
        assert_eq!(payload[size], 0xCE, "frame end");
        if head[0] == 1 {
            let class = u16::from_be_bytes([payload[0], payload[1]]);
            let id = u16::from_be_bytes([payload[2], payload[3]]);
            return (class, id, payload[4..size].to_vec());
        }
    }
}

/// Reads the next method and checks it is `class.id`; a `connection.close` or `channel.close`
/// from the broker fails with its reply text.
fn expect(s: &mut TcpStream, class: u16, id: u16, what: &str) -> Vec<u8> {
    let (c, m, args) = read_method(s);
    if (c, m) != (class, id) {
        // connection.close and channel.close carry a reply code, then the reply text.
        let text = if (c, m) == (10, 50) || (c, m) == (20, 40) {
            let len = args.get(2).copied().unwrap_or(0) as usize;
            String::from_utf8_lossy(args.get(3..3 + len).unwrap_or_default()).into_owned()
        } else if (c, m) == (60, 50) {
            "basic.return: no queue is bound for this message (unroutable)".to_string()
        } else {
            String::new()
        };
        panic!("{what}: the broker answered {c}.{m} {text:?}");
    }
    args
}

/// User, password and virtual host of [`amqp_url`].
fn credentials() -> (String, String, String) {
    let url = amqp_url();
    let rest = url.trim_start_matches("amqp://");
    let (userinfo, hostpath) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let vhost = hostpath.split_once('/').map_or("/", |(_, v)| v);
    let vhost = if vhost.is_empty() { "/".to_string() } else { vhost.replace("%2f", "/").replace("%2F", "/") };
    (user.to_string(), pass.to_string(), vhost)
}

/// Publishes `m` (persistent, mandatory, content type `application/json`) and waits for the broker's
/// confirm; panics on a nack or an error from the broker.
pub fn publish(m: &RawMessage) {
    let (user, pass, vhost) = credentials();
    let mut s = TcpStream::connect(amqp_addr()).expect("connect to RabbitMQ");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    expect(&mut s, 10, 10, "connection.start");
    let mut args = 0u32.to_be_bytes().to_vec(); // no client properties
    short(&mut args, b"PLAIN");
    long(&mut args, format!("\0{user}\0{pass}").as_bytes());
    short(&mut args, b"en_US");
    s.write_all(&method(0, 10, 11, &args)).unwrap();
    let tune = expect(&mut s, 10, 30, "connection.tune");
    let mut args = tune[..6].to_vec(); // channel max, frame max as offered
    args.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
    s.write_all(&method(0, 10, 31, &args)).unwrap();
    let mut args = Vec::new();
    short(&mut args, vhost.as_bytes());
    short(&mut args, b"");
    args.push(0);
    s.write_all(&method(0, 10, 40, &args)).unwrap();
    expect(&mut s, 10, 41, "connection.open");
    s.write_all(&method(1, 20, 10, &[0])).unwrap();
    expect(&mut s, 20, 11, "channel.open");
    s.write_all(&method(1, 85, 10, &[0])).unwrap();
    expect(&mut s, 85, 11, "confirm.select");

    let mut args = 0u16.to_be_bytes().to_vec();
    short(&mut args, m.exchange.as_bytes());
    short(&mut args, m.routing_key.as_bytes());
    args.push(1); // mandatory: a message no queue takes comes back (basic.return, 60.50) and fails
    s.write_all(&method(1, 60, 40, &args)).unwrap();
    // Content header: class, weight, body size, property flags, then the properties in order.
    let mut head = 60u16.to_be_bytes().to_vec();
    head.extend_from_slice(&0u16.to_be_bytes());
    head.extend_from_slice(&(m.body.len() as u64).to_be_bytes());
    let flags: u16 = 1 << 15 | 1 << 13 | 1 << 12 | 1 << 7 | 1 << 5;
    head.extend_from_slice(&flags.to_be_bytes());
    short(&mut head, b"application/json");
    let mut table = Vec::new();
    for (name, value) in &m.headers {
        short(&mut table, name);
        table.extend_from_slice(value);
    }
    long(&mut head, &table);
    head.push(2); // persistent
    short(&mut head, &m.message_id);
    short(&mut head, &m.kind);
    s.write_all(&frame(2, 1, &head)).unwrap();
    s.write_all(&frame(3, 1, &m.body)).unwrap();
    expect(&mut s, 60, 80, "the publisher confirm");

    let mut args = 200u16.to_be_bytes().to_vec();
    short(&mut args, b"");
    args.extend_from_slice(&[0, 0, 0, 0]);
    s.write_all(&method(0, 10, 50, &args)).unwrap();
    expect(&mut s, 10, 51, "connection.close");
}
