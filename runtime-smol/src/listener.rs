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

    /// The next connection. Waits through the listener's own waker slot (`poll_readable`):
    /// async-io's `accept()` waits "optimistically", trying again at every wake of the task it
    /// runs in, and the main thread's task is woken by every task of its executor (an `accept4`
    /// and an `epoll_ctl` per wake: about one per event with a RabbitMQ source).
    pub(crate) async fn accept(&self) -> io::Result<(Socket, SocketAddr)> {
        loop {
            if let Some(accepted) = self.accept_now() {
                return accepted;
            }
            std::future::poll_fn(|cx| self.0.poll_readable(cx)).await?;
        }
    }

    /// A connection already in the accept queue, without waiting (`None`: none is).
    pub(crate) fn accept_now(&self) -> Option<io::Result<(Socket, SocketAddr)>> {
        match self.0.get_ref().accept() {
            Ok((sock, peer)) => Some(Async::new(sock).map(|s| (s, peer))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(Err(e)),
        }
    }
}
