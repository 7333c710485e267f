//! The listening socket both runtimes adopt, bound here with a deep accept queue, and the
//! options of a stream's socket.
//!
//! `std`, mio (under tokio) and async-net (under smol) all listen with a backlog of 128. A
//! connection storm (every client of a restarted instance reconnecting, the resume storm of
//! BENCHMARKS.md) overflows that queue at once: the kernel drops the SYNs past it and the clients
//! retry after a second (`TcpExtListenOverflows` in `nstat`). Measured with 512 clients
//! connecting at once: 1.0-1.4 s for 2,000 streams with 128, the time of the retries.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

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

/// A stream's socket: a client that acknowledges nothing for two heartbeat intervals is gone
/// (`TCP_USER_TIMEOUT`). A client that vanishes without a FIN or RST (a laptop put to sleep, a
/// network switched) is otherwise noticed only when TCP gives up retransmitting, about 15
/// minutes later: its heartbeats fit in the send buffer, so nothing else notices, and meanwhile
/// the stream holds one of the user's slots (`limit_policy = "reject"` refuses the user's new
/// ones) and a file descriptor.
pub(crate) fn stream_socket(sock: &TcpStream, heartbeat: Duration) -> io::Result<()> {
    // The kernel takes milliseconds as a C int: a heartbeat over about 12 days would be refused.
    #[cfg(target_os = "linux")]
    {
        let timeout = heartbeat.saturating_mul(2).min(Duration::from_millis(i32::MAX as u64));
        socket2::SockRef::from(sock).set_tcp_user_timeout(Some(timeout))?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (sock, heartbeat);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_stream_socket_gives_up_on_a_silent_client_after_two_heartbeats() {
        let l = bind("127.0.0.1:0").expect("bind");
        let _client = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
        l.set_nonblocking(false).unwrap();
        let (server, _) = l.accept().expect("accept");
        stream_socket(&server, Duration::from_secs(30)).expect("set");
        assert_eq!(socket2::SockRef::from(&server).tcp_user_timeout().unwrap(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn binds_port_zero_with_the_deep_queue() {
        let l = bind("127.0.0.1:0").expect("bind");
        assert_ne!(l.local_addr().expect("an address").port(), 0);
        assert!(bind("no-such-host.invalid:1").is_err());
    }
}
