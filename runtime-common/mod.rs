//! The frontend code that is the same on every runtime, compiled into both binaries.
//!
//! `sse-gateway` (tokio, `runtime-tokio/`) and `sse-gateway-smol` (smol, `runtime-smol/`) each
//! include this directory with `#[path = "../../runtime-common/mod.rs"] mod common;`. It is not a
//! library crate because it is written against a small set of names each binary defines for its
//! runtime, which a crate could only reach through traits and generics on every function:
//!
//! * `crate::driver::Executor`: `new() -> io::Result<Executor>`, `block_on(&self, fut)`; runs a
//!   thread's single-threaded executor (the main thread, the `sources` thread and each shard
//!   thread).
//! * `crate::driver::spawn(fut)`: spawns a `'static` (not necessarily `Send`) task on the
//!   current thread's executor.
//! * `crate::driver::Timer`: `Timer::at(Instant)`, `set_at(&mut self, Instant)`, a `Future +
//!   Unpin` that completes at that instant (re-armed with `set_at`; once completed, it must be
//!   re-armed before it is awaited again: async-io's then never completes, tokio's at once).
//! * `crate::driver::Socket`: a registered TCP stream implementing futures-io `AsyncRead +
//!   AsyncWrite + Unpin`; `Socket::new(std::net::TcpStream)` adopts one (blocking or not) on the
//!   current thread, `into_inner()` gives it back (to move it to a shard thread), `get_ref()` reaches the socket,
//!   `readable()` waits until a read would not block (without reading), `poll_readable(cx)`
//!   polls the same through the socket's own waker slot (no re-registration per wait).
//! * `crate::driver::AmqpRuntime` and `amqp_runtime()`: the `async_rs` runtime handle lapin
//!   connects with. Chosen explicitly: with both runtime features on in one workspace build,
//!   lapin's default would pick tokio even under smol.
//! * `crate::listener::Listener`: `bind(&str)`, `local_addr()`, `accept() -> (Socket, SocketAddr)`.
//! * `crate::Signals`: `new() -> io::Result<Signals>` installs the SIGTERM, SIGINT and SIGHUP
//!   handlers; `next(&mut self)` completes at the next of them, as a [`Signalled`]. Created and
//!   awaited on the `signals` thread ([`signals`]).
//!
//! Channels and locks here are runtime-neutral (`async-channel`, `async-lock`), and every
//! `select` is a `futures_lite::future::or` with the rarely-ready side first.
//!
//! Files: [`shards`] (the handle to the shard threads, and starting them), [`shard`] (one
//! shard's loop and its streams' writers), [`request`] (accepting, request heads, the answers
//! that are not streams), [`listen`] (the listening socket, bound with a deep accept queue),
//! [`amqp`] and [`inproc`] (the two kinds of source), and [`run`] below.

pub(crate) mod amqp;
pub(crate) mod inproc;
pub(crate) mod listen;
pub(crate) mod request;
pub(crate) mod shard;
pub(crate) mod shards;

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_lite::future;
use sse_gateway_core::cli::{KeyReload, Launch};
use tracing::info;

use crate::driver::{Executor, Timer};
use crate::listener::Listener;

/// A signal the process handles.
pub(crate) enum Signalled {
    /// SIGTERM or SIGINT (its number): the graceful stop.
    Stop(i32),
    /// SIGHUP: the key files are read again ([`KeyReload`]). (Unhandled, it would end the
    /// process at once, every stream with it: a closed terminal, a `kill -HUP` meant as a reload.)
    Hangup,
}

/// Serves until SIGTERM/SIGINT, then drains (D12): the whole gateway once [`Launch`] is known.
///
/// Threads: this one runs the listener (accept, request heads, ops endpoints, publish) and the
/// in-process source; RabbitMQ's sources run on a `sources` thread of their own
/// ([`amqp::start_thread`]); `launch.workers` shard threads each own one core `Gateway` and the
/// sockets of its streams; the `signals` and `key-reload` threads are [`signals`]'.
pub(crate) fn run(launch: Launch) -> anyhow::Result<()> {
    abort_on_panic();
    // The handlers before anything else: a SIGHUP while starting reads the key files again
    // instead of ending the process, and a SIGTERM is a graceful stop (it takes effect once
    // the gateway serves).
    let signal = signals(launch.key_reload())?;
    let settings = launch.settings().clone();
    let server = &settings.config.server;
    let (shards, threads) = shards::spawn(launch.workers, &settings, &launch.metrics, server.max_streams)?;
    // Held until the shard threads end: the sources' thread serves their read-backs.
    let quit = Executor::new()?.block_on(async {
        let listener =
            Listener::bind(&server.listen).await.with_context(|| format!("cannot listen on {}", server.listen))?;
        let addr = listener.local_addr()?;
        let (inproc, sources) = match &settings.config.broker {
            Some(broker) => (None, Some(amqp::start_thread(&settings, &launch.metrics, broker, &shards, launch.started)?)),
            None => (Some(inproc::Inproc::start(&settings, &launch.metrics, &shards, launch.started).await), None),
        };
        if let (true, Some(inproc)) = (settings.config.demo.enabled, &inproc) {
            inproc::start_demo(&settings, inproc.clone());
        }
        launch.ready(addr, if inproc.is_some() { "in-process" } else { "rabbitmq" }).map_err(anyhow::Error::msg)?;
        let ctx = Rc::new(request::Ctx::new(launch.front(), shards.clone(), inproc));
        crate::driver::spawn(request::sum_up_refusals(ctx.clone(), |c| &c.refusals, request::log_refusals_summed));
        // The accept loop never ends by itself: it is dropped at the signal, and the listener
        // closed once the connections already queued in it are taken.
        future::or(request::serve(&listener, ctx.clone()), async {
            let _ = signal.recv().await;
        })
        .await;
        // The documented bounds count from the signal: taking the queued connections may wait
        // for descriptors (up to half a second) first.
        let signalled = Instant::now();
        ctx.stopping();
        request::accept_queued(&listener, &ctx).await;
        drop(listener);
        ctx.refusals.borrow_mut().sum_up_last(request::log_refusals_summed);
        info!("shutting down: draining streams");
        // Shards end once their streams are closed or `shutdown_drain` passed; a watchdog makes
        // sure the process exits even if a shard does not, or if dropping an executor waits
        // (tokio's waits for its blocking tasks with no time limit).
        let total = SOURCE_STOP + server.shutdown_drain + Duration::from_secs(2);
        let limit = total.saturating_sub(signalled.elapsed());
        // The shards' drain ends by then however long the sources and the shards' backlogs took,
        // 2 s before the watchdog (which would cut the streams with an exit status of 1).
        let drained_by = signalled + SOURCE_STOP + server.shutdown_drain;
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            // Not a clean stop: a service manager should be able to tell.
            tracing::error!(seconds = total.as_secs(), "shutdown did not finish in time; exiting");
            std::process::exit(1);
        });
        // The sources ack what they handled before anything else stops (bounded: one may be in
        // the middle of connecting); the shards then send what they hold and close.
        let quit = match sources {
            Some((sources, quit)) => {
                until(Instant::now() + SOURCE_STOP, sources.stop()).await;
                Some(quit)
            }
            None => None,
        };
        // Events the in-process source was handing over at the signal reach the shards before
        // their `Shutdown` (their publishers were or will be answered 202).
        // (Bounded by the drain's end, not by less: given up on, an event still waiting for room
        // in a shard's queue could lose it to the `Shutdown` sent next.)
        if let Some(inproc) = &ctx.inproc {
            inproc.handed(drained_by).await;
        }
        shards.shutdown(drained_by).await;
        // Requests begun before the signal (a head still arriving, an answer being written or
        // lingering, a publish) finish, within a bound, while the shards drain: SETTLE, however
        // short the drain (a publish whose event was handed over is answered), but ending a
        // second past the drain's end, a second before the watchdog.
        ctx.settle((Instant::now() + SETTLE).min(drained_by + Duration::from_secs(1))).await;
        // Connections still reading their heads ran meanwhile (while the sources stopped and
        // the shards were told to): their refusals too, before this executor and its tasks are
        // dropped. The in-process source's drops too.
        ctx.refusals.borrow_mut().sum_up_last(request::log_refusals_summed);
        if let Some(inproc) = &ctx.inproc {
            inproc.drops.borrow_mut().sum_up_last(request::log_drops_summed);
        }
        anyhow::Ok(quit)
    })?;
    for t in threads {
        let _ = t.join();
    }
    drop(quit);
    info!("stopped");
    Ok(())
}

/// Starts the `signals` thread, which installs the handlers before it returns and listens for as
/// long as the process runs: each SIGHUP has the key files read again (`reload`, on a
/// `key-reload` thread of its own, so that a slow read never holds a SIGTERM up; SIGHUPs that
/// come while one is being handled count as one more); the first SIGTERM or SIGINT is sent on
/// the channel returned (the
/// graceful stop, D12); a second one (an operator who will not wait for the drain) ends the
/// process at once, with status 128 + its number (143, 130), as if it had killed it. One
/// listener for both: none is dropped between them. Two signals of one kind that come before
/// this thread has read the first may count as one, as the kernel merges them before a handler
/// runs (tokio's listener does so up to the read; smol's counts each).
fn signals(reload: KeyReload) -> std::io::Result<async_channel::Receiver<()>> {
    let (stop, stopping) = async_channel::bounded(1);
    let (hangup, hangups) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new().name("key-reload".into()).spawn(move || {
        for () in hangups {
            reload.on_hangup();
        }
    })?;
    serve_on_thread("signals", move |started| async move {
        let mut signals = crate::Signals::new()?;
        started.report(());
        next_stop(&mut signals, &hangup).await;
        let _ = stop.try_send(());
        let second = next_stop(&mut signals, &hangup).await;
        tracing::warn!(signal = second, "a second SIGTERM or SIGINT: exiting without finishing the drain");
        std::process::exit(128 + second)
    })?;
    Ok(stopping)
}

/// The next SIGTERM or SIGINT (its number), each SIGHUP passed to `hangup` meanwhile (dropped
/// when one is already waiting: that reload reads the files after this signal).
async fn next_stop(signals: &mut crate::Signals, hangup: &std::sync::mpsc::SyncSender<()>) -> i32 {
    loop {
        match signals.next().await {
            Signalled::Stop(n) => return n,
            Signalled::Hangup => {
                let _ = hangup.try_send(());
            }
        }
    }
}

/// How a thread started by [`serve_on_thread`] hands its caller what it set up.
pub(crate) struct Started<T>(std::sync::mpsc::SyncSender<std::io::Result<T>>);

impl<T> Started<T> {
    /// Hands `value` to the caller waiting in [`serve_on_thread`]; `false` if it is gone.
    pub(crate) fn report(self, value: T) -> bool {
        self.0.try_send(Ok(value)).is_ok()
    }
}

/// Starts a thread named `name` that runs `serve` on an executor of its own, and waits until
/// `serve` reports what it set up ([`Started::report`]), which this returns; the thread then
/// goes on serving. An error before the report (the executor, or `serve`'s own) is returned
/// here instead.
pub(crate) fn serve_on_thread<T, F, Fut>(name: &str, serve: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce(Started<T>) -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<()>>,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let failed = tx.clone();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        if let Err(e) = Executor::new().and_then(|executor| executor.block_on(serve(Started(tx)))) {
            // Ignored once a report took the one slot: the caller has its value.
            let _ = failed.try_send(Err(e));
        }
    })?;
    rx.recv().map_err(|_| std::io::Error::other(format!("the {name} thread ended before starting")))?
}

/// Makes every panic, on any thread, log `panic; aborting the process` at error (the panic's
/// message, where, the thread, a backtrace) and abort the process.
///
/// Both executors catch a panicking task and drop it silently, and a shard thread that panics
/// just ends: the process would run on with a RabbitMQ source that no longer feeds its channel
/// (every stream stalled behind heartbeats), or a shard whose streams are gone and which refuses
/// every new one. A panic is a bug, so the process ends at once instead, loudly, for its
/// supervisor to restart (the systemd unit's `Restart=on-failure`); browsers reconnect and
/// resume with `Last-Event-ID` like after any restart. A plain line goes to stderr first: a
/// panic inside the log subscriber itself would make the log line a no-op. The one exception is
/// a panic inside [`contained`] (one upstream message's handling): logged, and left to unwind.
fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let contained = CONTAINED.with(Cell::get);
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let location = info.location().map(ToString::to_string).unwrap_or_default();
        let panic = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(not a string)");
        let backtrace = std::backtrace::Backtrace::force_capture();
        if contained {
            tracing::error!(thread, location, panic, %backtrace, "panic handling one message; the message is dropped");
            return;
        }
        eprintln!("panic in thread {thread} at {location}: {panic}; aborting the process");
        tracing::error!(thread, location, panic, %backtrace, "panic; aborting the process");
        std::process::abort();
    }));
}

thread_local! {
    /// Set while [`contained`] runs its closure on this thread.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, the core's handling of one upstream message (pure code whose only input is that
/// message), with a panic in it contained: logged (`panic handling one message; the message is
/// dropped`) and `None`, where any other panic aborts the process. A message that makes the
/// core panic (a bug) is then dropped and acked like an invalid one (D4: nothing in a message
/// takes the gateway down), not delivered again to crash every restart.
pub(crate) fn contained<T>(f: impl FnOnce() -> T) -> Option<T> {
    let was = CONTAINED.with(|c| c.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(was));
    r.ok()
}

/// How long shutdown waits for the sources to ack what they handled.
const SOURCE_STOP: Duration = Duration::from_secs(3);
/// At a shutdown, how long requests begun before the signal may take to finish (ending at the
/// latest a second past the drain's end): an answer's [`LINGER`] and a second.
const SETTLE: Duration = Duration::from_secs(3);

/// `fut`'s output, or `None` once `at` has passed (checked only when `fut` is pending).
pub(crate) async fn until<F: Future>(at: Instant, fut: F) -> Option<F::Output> {
    future::or(async { Some(fut.await) }, async {
        Timer::at(at).await;
        None
    })
    .await
}

/// How long an answer that ends a connection waits for the client to stop sending
/// ([`answer_and_close`]), and how much it reads meanwhile.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Writes `bytes`, an answer after which the connection ends (by `write_by`), then closes so
/// that the client gets it: the write side is shut down (FIN) and what the client still sends
/// is read and dropped, until it closes too, for at most [`LINGER`] and [`LINGER_BYTES`]. A
/// socket closed with bytes unread (a request body refused by its head, a head cut off at
/// 431) is reset by the kernel instead, and a client still sending (curl, a browser) gets
/// "connection reset" in place of the answer, or loses it.
pub(crate) async fn answer_and_close(mut sock: crate::driver::Socket, bytes: &[u8], write_by: Instant) {
    use futures_lite::AsyncWriteExt;
    let written = until(write_by, async {
        sock.write_all(bytes).await?;
        sock.flush().await
    })
    .await;
    if !matches!(written, Some(Ok(()))) || socket2::SockRef::from(sock.get_ref()).shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    linger(&mut sock).await;
}

/// Reads and drops what the client still sends on a connection whose write side is shut down,
/// until it closes too, for at most [`LINGER`] and [`LINGER_BYTES`] (the socket may then be
/// closed without a reset).
pub(crate) async fn linger(sock: &mut crate::driver::Socket) {
    use futures_lite::AsyncReadExt;
    // Small: a flood of refused requests has thousands of connections lingering at once (a
    // client that sends the whole LINGER_BYTES costs 512 reads instead of 64).
    let mut sink = vec![0u8; 2048];
    let mut left = LINGER_BYTES;
    until(Instant::now() + LINGER, async {
        while let Ok(n @ 1..) = sock.read(&mut sink).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// Whether bytes wait to be read on `sock` (a peek that does not block: the socket is
/// non-blocking), whatever its runtime has noticed yet.
pub(crate) fn has_bytes(sock: &crate::driver::Socket) -> bool {
    let mut one = [std::mem::MaybeUninit::uninit(); 1];
    matches!(socket2::SockRef::from(sock.get_ref()).peek(&mut one), Ok(n) if n > 0)
}

/// Work a task does in a row before it lets the others on its thread run: neither executor
/// preempts a task that is always ready (a busy channel, a backlog of accepts or of output).
#[derive(Debug, Default)]
pub(crate) struct Budget {
    steps: u32,
    bytes: usize,
}

impl Budget {
    /// Steps in a row between two yields.
    const STEPS: u32 = 64;

    /// Counts one step; every [`Budget::STEPS`]-th yields to the executor.
    pub(crate) async fn step(&mut self) {
        self.spend(0, usize::MAX).await;
    }

    /// Counts one step that queued `bytes` for other tasks to write; yields after
    /// [`Budget::STEPS`] steps or once `max_bytes` were queued since the last yield.
    pub(crate) async fn spend(&mut self, bytes: usize, max_bytes: usize) {
        self.steps += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        if self.steps >= Budget::STEPS || self.bytes >= max_bytes {
            (self.steps, self.bytes) = (0, 0);
            future::yield_now().await;
        }
    }
}

/// Sleeps for `d`.
pub(crate) async fn sleep(d: Duration) {
    Timer::at(Instant::now() + d).await;
}

/// Waits until `count` is zero or `limit` passes, looking every `every`.
pub(crate) async fn until_zero(count: &Cell<usize>, limit: Instant, every: Duration) {
    while count.get() > 0 && Instant::now() < limit {
        sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::{Command, Output};

    /// Set in the child processes the tests below start.
    const CHILD: &str = "SSE_GATEWAY_TEST_PANIC_CHILD";

    /// In the child (`true`): logs and the hook installed. In the parent (`false`): `test` run
    /// again as a child process, its output.
    fn child(test: &str) -> Result<(), Output> {
        if std::env::var_os(CHILD).is_some() {
            sse_gateway_core::cli::init_logs(false);
            super::abort_on_panic();
            return Ok(());
        }
        Err(Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("common::tests::{test}"), "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env("RUST_LOG", "info")
            .output()
            .unwrap())
    }

    /// A panic inside [`super::contained`] (the core handling one message) is logged and
    /// contained: the process goes on; the same hook still aborts on any other panic (below).
    #[test]
    fn a_panic_handling_one_message_is_contained_and_logged() {
        let out = match child("a_panic_handling_one_message_is_contained_and_logged") {
            Ok(()) => {
                let got: Option<u32> = super::contained(|| panic!("poison message"));
                assert!(got.is_none());
                assert_eq!(super::contained(|| 7), Some(7));
                std::process::exit(3);
            }
            Err(out) => out,
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "the child went on after the contained panic; stderr: {stderr}");
        let line = stderr.lines().find(|l| l.contains("panic handling one message; the message is dropped")).unwrap_or_else(|| panic!("no log line in: {stderr}"));
        assert!(line.contains("panic=\"poison message\""), "{line}");
        assert!(!stderr.contains("aborting the process"), "{stderr}");
    }

    /// A panic in a thread other than main (as in a shard or a task) ends the whole process by
    /// SIGABRT, with the panic logged. The test runs itself again as a child process that
    /// installs the hook and panics in a named thread.
    #[test]
    fn a_panic_in_any_thread_aborts_the_process() {
        let out = match child("a_panic_in_any_thread_aborts_the_process") {
            Ok(()) => {
                let t = std::thread::Builder::new().name("shard-7".into()).spawn(|| panic!("invariant broken: {}", 42)).unwrap();
                let _ = t.join();
                // Reached only if the panic did not end the process: the parent sees exit 0.
                std::process::exit(0);
            }
            Err(out) => out,
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(6), "expected SIGABRT, got {:?}; stderr: {stderr}", out.status);
        assert!(stderr.contains("panic in thread shard-7 at "), "no plain panic line in: {stderr}");
        let line = stderr.lines().find(|l| l.contains("panic; aborting the process")).unwrap_or_else(|| panic!("no panic line in: {stderr}"));
        for field in ["thread=\"shard-7\"", "panic=\"invariant broken: 42\"", "location=", "mod.rs:", "backtrace="] {
            assert!(line.contains(field), "{field} missing from {line}");
        }
    }
}
