//! A TCP forwarder between the gateway and RabbitMQ that a test can cut, freeze, slow down and
//! restore, to make the broker unreachable (or silent, or slow to answer, or refusing new
//! connections, or hanging after the handshake) without touching the broker itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{copy_bidirectional, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with the bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Link {
    /// Forwards both ways.
    Open,
    /// Live connections are dropped; new ones are accepted and closed at once (the client sees
    /// the broker go away).
    Cut,
    /// Nothing moves and nothing closes: live connections and new ones are held open, never
    /// written to (a hung broker, or a link that drops packets: no FIN, no RST). They are dropped
    /// when the link is restored, or (new ones) when the client closes them.
    Frozen,
    /// Live connections forward; new ones are held silent and go through once restored (a
    /// broker slow to answer a connect).
    Slow,
    /// Live connections forward; new ones are accepted and closed at once (a broker that
    /// refuses further connections, while the ones it has go on).
    RefuseNew,
    /// Live connections forward; new ones forward until the client's first AMQP method that
    /// is not of the connection or channel class (the handshake and channel opening pass):
    /// from that frame on nothing moves either way and nothing closes (a broker that completes
    /// connections, then hangs), until the link changes.
    FreezeAfterChannelOpen,
}

/// Forwards `127.0.0.1:PORT` to an upstream address; see [`TcpProxy::cut`], [`TcpProxy::freeze`]
/// and [`TcpProxy::slow_connects`].
pub struct TcpProxy {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    link: watch::Sender<Link>,
    held: Arc<AtomicUsize>,
    /// Connections held by a freeze that the client closed meanwhile.
    given_up: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (link, link_rx) = watch::channel(Link::Open);
        let upstream = upstream.to_string();
        let held = Arc::new(AtomicUsize::new(0));
        let count = held.clone();
        let given_up = Arc::new(AtomicUsize::new(0));
        let closed = given_up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let mut rx = link_rx.clone();
                let now = *rx.borrow();
                match now {
                    Link::Cut => drop(client),
                    Link::Frozen => {
                        count.fetch_add(1, Ordering::SeqCst);
                        let closed = closed.clone();
                        tokio::spawn(async move {
                            // Never answered; what the client sends is read (and dropped) only
                            // to see whether it closes the connection (a connect given up).
                            let mut client = client;
                            let gone = async {
                                let mut buf = [0u8; 512];
                                while let Ok(1..) = client.read(&mut buf).await {}
                            };
                            tokio::select! {
                                _ = gone => {
                                    closed.fetch_add(1, Ordering::SeqCst);
                                }
                                _ = rx.wait_for(|l| *l != Link::Frozen) => {}
                            }
                        });
                    }
                    Link::Slow => {
                        let upstream = upstream.clone();
                        tokio::spawn(async move {
                            if rx.wait_for(|l| *l != Link::Slow).await.is_ok_and(|l| *l == Link::Open) {
                                forward(client, &upstream, rx).await;
                            }
                        });
                    }
                    Link::Open => {
                        let upstream = upstream.clone();
                        tokio::spawn(async move { forward(client, &upstream, rx).await });
                    }
                    Link::RefuseNew => drop(client),
                    Link::FreezeAfterChannelOpen => {
                        let upstream = upstream.clone();
                        tokio::spawn(async move { forward_until_topology(client, &upstream, rx).await });
                    }
                }
            }
        });
        TcpProxy { addr, link, held, given_up, task }
    }

    /// Holds new connections silent (no bytes either way) until [`TcpProxy::restore`], which
    /// lets them through; live connections go on: a broker slow to answer a connect.
    pub fn slow_connects(&self) {
        self.link.send_replace(Link::Slow);
    }

    /// Closes new connections at once (a broker refusing more of them) until
    /// [`TcpProxy::restore`]; live connections go on.
    pub fn refuse_new(&self) {
        self.link.send_replace(Link::RefuseNew);
    }

    /// New connections pass the AMQP handshake and `channel.open`, then hang: the client's first
    /// other method (a declare, say) and everything after it is held, both ways, and nothing is
    /// closed (a broker that completes connections and then answers nothing), until the link
    /// changes ([`TcpProxy::restore`] drops them). Live connections go on.
    pub fn freeze_after_channel_open(&self) {
        self.link.send_replace(Link::FreezeAfterChannelOpen);
    }

    /// An AMQP URL through the proxy (guest/guest, vhost `/`).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Drops every live connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
    }

    /// Stops forwarding without closing anything: live connections and new ones are held open
    /// and silent until [`TcpProxy::restore`], which drops them (a new one the client closes
    /// meanwhile is counted: [`TcpProxy::closed_while_frozen`]).
    pub fn freeze(&self) {
        self.link.send_replace(Link::Frozen);
    }

    /// How many connections were accepted (and held) while frozen, over the proxy's life.
    pub fn accepted_while_frozen(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// How many of those the client closed while they were held (a connect it gave up).
    pub fn closed_while_frozen(&self) -> usize {
        self.given_up.load(Ordering::SeqCst)
    }

    /// Forwards again (connections held by a freeze are dropped).
    pub fn restore(&self) {
        self.link.send_replace(Link::Open);
    }
}

/// Forwards `client` to `upstream` until either ends or the link is cut or frozen (a slow link
/// lets live connections be).
async fn forward(mut client: TcpStream, upstream: &str, mut rx: watch::Receiver<Link>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let changed = tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => None,
        l = rx.wait_for(|l| matches!(l, Link::Cut | Link::Frozen)) => l.ok().map(|l| *l),
    };
    if changed == Some(Link::Frozen) {
        let _ = rx.wait_for(|l| *l != Link::Frozen).await;
    }
    // Both sockets drop here: the gateway sees its broker connection end.
}

/// AMQP 0-9-1 classes that open a connection and its channels.
const CONNECTION_CLASS: u16 = 10;
const CHANNEL_CLASS: u16 = 20;

/// Forwards `client` to `upstream` as [`Link::FreezeAfterChannelOpen`] says: frame by frame from
/// the client, until its first method of another class than connection and channel; from there
/// on nothing is forwarded either way, and both sockets are held open until the link changes.
async fn forward_until_topology(mut client: TcpStream, upstream: &str, mut rx: watch::Receiver<Link>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let (mut from_client, mut to_client) = client.split();
    let (mut from_server, mut to_server) = server.split();
    // Client to server: the protocol header, then whole frames (type, channel, size, payload,
    // frame end); a method frame's payload starts with its class id. Whether it froze.
    let up = async {
        let (mut buf, mut chunk, mut header) = (Vec::new(), [0u8; 4096], true);
        loop {
            let n = match from_client.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let (mut whole, mut froze) = (0, false);
            loop {
                let rest = &buf[whole..];
                if header {
                    if rest.len() < 8 {
                        break;
                    }
                    (whole, header) = (whole + 8, false);
                    continue;
                }
                if rest.len() < 7 {
                    break;
                }
                let size = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
                if rest.len() < 7 + size + 1 {
                    break;
                }
                if rest[0] == 1 && size >= 2 && ![CONNECTION_CLASS, CHANNEL_CLASS].contains(&u16::from_be_bytes([rest[7], rest[8]])) {
                    froze = true;
                    break;
                }
                whole += 7 + size + 1;
            }
            if to_server.write_all(&buf[..whole]).await.is_err() {
                return false;
            }
            if froze {
                return true;
            }
            buf.drain(..whole);
        }
    };
    let down = tokio::io::copy(&mut from_server, &mut to_client);
    let froze = tokio::select! {
        froze = up => froze,
        _ = down => false,
        _ = rx.wait_for(|l| *l != Link::FreezeAfterChannelOpen) => false,
    };
    if froze {
        let _ = rx.wait_for(|l| *l != Link::FreezeAfterChannelOpen).await;
    }
    // Both sockets drop here.
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.link.send_replace(Link::Cut);
        self.task.abort();
    }
}
