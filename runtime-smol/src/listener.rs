//! The listening socket on async-net / async-io (`runtime-common/request.rs` accepts from it).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use smol::Async;

use crate::driver::Socket;

/// A bound listener; accepting yields `Async<TcpStream>`, the socket type of [`crate::driver`].
pub(crate) struct Listener(Arc<Async<std::net::TcpListener>>);

impl Listener {
    /// Binds `addr` (`host:port`, resolved) with the deep accept queue of `common::listen`.
    pub(crate) async fn bind(addr: &str) -> io::Result<Listener> {
        Async::new(crate::common::listen::bind(addr)?).map(|l| Listener(Arc::new(l)))
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
