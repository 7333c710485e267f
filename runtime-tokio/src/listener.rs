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
}
