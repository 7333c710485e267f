//! The listening socket on tokio (`runtime-common/request.rs` accepts from it).

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::driver::Socket;

/// A bound listener.
pub(crate) struct Listener(TcpListener);

impl Listener {
    /// Binds `addr` (`host:port`, resolved) with the deep accept queue of `common::listen`.
    pub(crate) async fn bind(addr: &str) -> io::Result<Listener> {
        TcpListener::from_std(crate::common::listen::bind(addr)?).map(Listener)
    }

    /// The bound address (the port chosen for `:0`).
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// The next connection.
    pub(crate) async fn accept(&self) -> io::Result<(Socket, SocketAddr)> {
        self.0.accept().await.map(|(sock, peer)| (Socket::from(sock), peer))
    }

    /// A connection already in the accept queue, without waiting (`None`: none is). Asks the
    /// socket itself: tokio's own accept trusts the readiness its driver last saw, which may
    /// not yet include connections queued since.
    pub(crate) fn accept_now(&self) -> Option<io::Result<(Socket, SocketAddr)>> {
        let accepted = socket2::SockRef::from(&self.0).accept().and_then(|(sock, peer)| {
            let peer = peer.as_socket().ok_or_else(|| io::Error::other("not an IP peer"))?;
            Ok((Socket::new(sock.into())?, peer))
        });
        match accepted {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            r => Some(r),
        }
    }
}
