//! The listening socket on async-net / async-io (`runtime-common/request.rs` accepts from it).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use smol::Async;

use crate::driver::Socket;

/// A bound listener; accepting yields `Async<TcpStream>`, the socket type of [`crate::driver`].
pub(crate) struct Listener(Arc<Async<std::net::TcpListener>>);

impl Listener {
    /// Binds `addr` (`host:port`, resolved).
    pub(crate) async fn bind(addr: &str) -> io::Result<Listener> {
        smol::net::TcpListener::bind(addr).await.map(|l| Listener(l.into()))
    }

    /// The bound address (the port chosen for `:0`).
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }

    /// The next connection.
    pub(crate) async fn accept(&self) -> io::Result<(Socket, SocketAddr)> {
        self.0.accept().await
    }
}
