//! The tokio glue `runtime-common/` runs on (its `mod.rs` lists what it needs): a current-thread
//! runtime with a `LocalSet` per thread, `spawn_local`, `Sleep` as a re-armable timer, and
//! tokio's `TcpStream` behind the futures-io traits.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncRead as _, AsyncWrite as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// A thread's executor: a current-thread runtime; futures run inside a `LocalSet` so that
/// [`spawn`] may take tasks that are not `Send`.
pub(crate) struct Executor(tokio::runtime::Runtime);

impl Executor {
    pub(crate) fn new() -> io::Result<Executor> {
        tokio::runtime::Builder::new_current_thread().enable_all().build().map(Executor)
    }

    /// Runs `fut` (and what it spawns) on this thread until it completes.
    pub(crate) fn block_on<F: Future>(&self, fut: F) -> F::Output {
        tokio::task::LocalSet::new().block_on(&self.0, fut)
    }
}

/// Spawns a task on this thread's executor; it runs to its end unless the thread stops first.
pub(crate) fn spawn(fut: impl Future<Output = ()> + 'static) {
    drop(tokio::task::spawn_local(fut));
}

/// A timer completing at an instant, re-armed with [`Timer::set_at`] (one allocation, reused).
pub(crate) struct Timer(Pin<Box<Sleep>>);

impl Timer {
    pub(crate) fn at(at: Instant) -> Timer {
        Timer(Box::pin(tokio::time::sleep_until(at.into())))
    }

    pub(crate) fn set_at(&mut self, at: Instant) {
        self.0.as_mut().reset(at.into());
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

/// A connection registered with this thread's runtime.
pub(crate) struct Socket(TcpStream);

impl Socket {
    /// Registers an accepted connection (non-blocking, as `into_inner` leaves it).
    pub(crate) fn new(sock: std::net::TcpStream) -> io::Result<Socket> {
        // tokio needs it and does not set it (a blocking socket would block the whole thread);
        // async-io's `Async::new` sets it itself.
        sock.set_nonblocking(true)?;
        TcpStream::from_std(sock).map(Socket)
    }

    /// Deregisters the connection, to move it to another thread.
    pub(crate) fn into_inner(self) -> io::Result<std::net::TcpStream> {
        self.0.into_std()
    }

    pub(crate) fn get_ref(&self) -> &TcpStream {
        &self.0
    }

    /// Ready once the connection is readable (data, EOF or an error), reading nothing; as
    /// async-io's `Async::poll_readable`, which the smol frontend's `Socket` is.
    pub(crate) fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_read_ready(cx)
    }

    /// Waits until the connection is readable (data, EOF or an error), reading nothing.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.0.readable().await
    }
}

impl From<TcpStream> for Socket {
    fn from(sock: TcpStream) -> Socket {
        Socket(sock)
    }
}

impl AsyncRead for Socket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().len()))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    /// Shuts the write side down (FIN), as tokio's `shutdown` does.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The runtime handle lapin connects with: the tokio runtime of the calling thread.
pub(crate) type AmqpRuntime = async_rs::TokioRuntime;

pub(crate) fn amqp_runtime() -> AmqpRuntime {
    async_rs::Runtime::tokio_current()
}
