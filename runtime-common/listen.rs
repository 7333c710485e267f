//! The listening socket both runtimes adopt: bound here with a deep accept queue.
//!
//! `std`, mio (under tokio) and async-net (under smol) all listen with a backlog of 128. A
//! connection storm (every client of a restarted instance reconnecting, the resume storm of
//! BENCHMARKS.md) overflows that queue at once: the kernel drops the SYNs past it and the clients
//! retry after a second (`TcpExtListenOverflows` in `nstat`). Measured with 512 clients
//! connecting at once: 1.0-1.4 s for 2,000 streams with 128, the time of the retries.

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use socket2::{Domain, Socket, Type};

/// Accept queue asked for; the kernel caps it at `net.core.somaxconn` (4096 by default since
/// Linux 5.4). nginx is configured with the same in the benchmarks.
pub(crate) const BACKLOG: i32 = 4096;

/// Binds `addr` (`host:port`, resolved; the first address that binds wins) with
/// `SO_REUSEADDR` and [`BACKLOG`], non-blocking, ready for a runtime to adopt.
pub(crate) fn bind(addr: &str) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, format!("{addr} resolves to no address"));
    for a in addr.to_socket_addrs()? {
        match bind_one(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_port_zero_with_the_deep_queue() {
        let l = bind("127.0.0.1:0").expect("bind");
        assert_ne!(l.local_addr().expect("an address").port(), 0);
        assert!(bind("no-such-host.invalid:1").is_err());
    }
}
