//! One shard: the loop that owns a core `Gateway`, and a writer task per stream.
//!
//! The loop waits for the first of: the core's deadline, a command. It applies one input, then
//! drains `poll_output()`: `Transmit(id)` wakes that stream's writer, `Close(id, why)` marks it
//! closing and wakes it. Each writer waits for its wake or for its socket to become readable
//! (EOF or error = the client left), writes what `take_output` returns with vectored writes, and
//! on close flushes the rest (bounded), shuts the socket down and calls `on_closed`. Everything
//! runs on the shard thread's executor: the `Gateway` sits in a `RefCell` borrowed only between
//! awaits, and a stream's wake is a `Cell`, not a lock.
//!
//! Neither executor preempts a task that is always ready, so the loop and the writers yield
//! after a bounded run of work ([`Budget`]). Once the events it queued since its writers last had
//! all run add up to a quarter of a stream's output bound (`streams.max_pending_bytes`), or would
//! with the next event, the loop waits until every writer it woke has run
//! ([`Shard::let_writers_run`]): they take them before the next, so a burst of events waiting in
//! the channel (large ones too) is never mistaken for a slow client.
//!
//! `Backfill` (a resume older than the buffer, on a channel read from a RabbitMQ stream) starts
//! a read-back task on this thread ([`read_back`]).

mod read_back;

use std::cell::{Cell, RefCell};
use std::future::{pending, poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_channel::Receiver;
use bytes::{Buf, Bytes};
use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use sse_gateway_core::cli::since_epoch;
use sse_gateway_core::{ChannelId, CloseReason, Gateway, Metrics, Output, Settings, StreamId, StreamRequest, KEEP_FRAMES};
use tracing::{info, warn};

use super::amqp::stream_log::LogReader;
use super::shards::Command;
use super::request::{log_refusals_summed, sum_up_refusals, RefusalLog};
use super::{answer_and_close, until, Budget};
use crate::driver::{spawn, Socket, Timer};

/// Time a closing stream (and a refused one) gets to take its last bytes: a stream whose socket
/// is full as it closes gets it for what it held, then again for its last frames (at most
/// twice); a stream closed by a shutdown has until the drain ends instead
/// ([`Shard::close_by`]).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Buffers handed to one `writev`.
const IOV_MAX: usize = 64;
/// Bytes a client may send on its open stream (it has nothing to say) before it is closed.
const MAX_CLIENT_BYTES: usize = 4096;

/// Runs a shard until it has drained after [`Command::Shutdown`] (or its senders are gone).
pub(crate) async fn run(gw: Gateway, rx: Receiver<Command>, settings: Arc<Settings>, metrics: Arc<Metrics>) {
    let shard = Rc::new(Shard {
        gw: RefCell::new(gw),
        woken: Rc::new(Cell::new(0)),
        log: RefCell::new(None),
        scratch: RefCell::new(Vec::new()),
        conns: RefCell::new(Vec::new()),
        refusals: RefCell::new(RefusalLog::new(Instant::now())),
        refusing: Rc::new(Cell::new(0)),
        drain_until: Cell::new(None),
        settings,
        metrics,
    });
    // A reconnect storm into a full gateway (503) or a user's limit (409) writes as many
    // `stream refused` lines as the main thread's refusals may: a burst, then a few a second,
    // and the rest summed up.
    spawn(sum_up_refusals(shard.clone(), |s| &s.refusals, log_refusals_summed));
    shard.clone().run(rx).await;
    shard.refusals.borrow_mut().sum_up_last(log_refusals_summed);
}

/// What woke the shard loop.
enum Wake {
    Deadline,
    Command(Command),
    /// Draining: time to look whether the streams are gone.
    Tick,
    DrainOver,
}

/// A stream's link between the shard loop and its writer task.
struct Conn {
    id: StreamId,
    /// What its `stream closed` line says.
    log: StreamLog,
    wake: Notify,
    closing: Cell<Option<CloseReason>>,
    /// The writer wrote what it took, or ended: a paused read-back looks again.
    drained: Notify,
}

/// A wake-up for the one task that waits on it, kept until that task looks (so none is lost
/// between two waits). Single-threaded: the shard loop and the writer share an executor.
#[derive(Default)]
struct Notify {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
    /// Counts the wakes set and not yet taken, across the notifies sharing it (the writers':
    /// [`Shard::woken`]).
    count: Option<Rc<Cell<usize>>>,
}

impl Drop for Notify {
    /// A wake never taken (the stream ended first) is not counted as waiting any more.
    fn drop(&mut self) {
        if self.set.get() {
            self.tally(false);
        }
    }
}

impl Notify {
    fn counted(count: Rc<Cell<usize>>) -> Notify {
        Notify { set: Cell::new(false), waker: Cell::new(None), count: Some(count) }
    }

    fn notify(&self) {
        if !self.set.replace(true) {
            self.tally(true);
        }
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// One more (`up`) or one fewer wake waiting in the shared count, if there is one.
    fn tally(&self, up: bool) {
        if let Some(c) = &self.count {
            c.set(if up { c.get() + 1 } else { c.get().saturating_sub(1) });
        }
    }

    fn notified(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.set.replace(false) {
                self.tally(false);
                return Poll::Ready(());
            }
            let w = match self.waker.take() {
                Some(w) if w.will_wake(cx.waker()) => w,
                _ => cx.waker().clone(),
            };
            self.waker.set(Some(w));
            Poll::Pending
        })
    }
}

/// At the drain's end, how long writers and refusals still ready to run get (each writes what
/// its socket takes at once) before the shard ends.
const LAST_WRITES: Duration = Duration::from_millis(50);

struct Shard {
    gw: RefCell<Gateway>,
    /// Writers woken and not yet run ([`Shard::let_writers_run`]).
    woken: Rc<Cell<usize>>,
    /// Reads streams back for `Output::Backfill` (set by `Command::History`).
    log: RefCell<Option<Arc<LogReader>>>,
    /// Where a writer takes its stream's output to write it at once: shared, so an idle stream
    /// keeps no buffer of its own (only what its socket did not take waits in the writer).
    /// Borrowed only between awaits.
    scratch: RefCell<Vec<Bytes>>,
    /// Writer links by `StreamId::index` (the full id is checked on use).
    conns: RefCell<Vec<Option<Rc<Conn>>>>,
    /// How many `stream refused` lines may be written ([`RefusalLog`]).
    refusals: RefCell<RefusalLog>,
    /// Refusals being written (each by a task of its own, for at most `WRITE_TIMEOUT` and its
    /// linger): the shard does not end before them.
    refusing: Rc<Cell<usize>>,
    /// When the drain ends, once [`Command::Shutdown`] came: streams closed by it have until
    /// then to take their last bytes (`server.shutdown_drain`).
    drain_until: Cell<Option<Instant>>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
}

impl Shard {
    async fn run(self: Rc<Self>, rx: Receiver<Command>) {
        let mut timer = Timer::at(Instant::now());
        let mut armed: Option<Instant> = None;
        let mut budget = Budget::default();
        let yield_after = self.settings.config.streams.max_pending_bytes / 4;
        let mut unread = 0usize;
        // A `Shutdown` taken from the queue is applied once the queue is empty (with what came
        // after it: events a source was still handing over reach the streams first; stream
        // requests are held and answered 503 after it).
        let mut shutdown_at: Option<Instant> = None;
        let mut held: Vec<Command> = Vec::new();
        loop {
            let next = self.gw.borrow().poll_timeout().map(|(at, _)| at);
            if next != armed {
                if let Some(at) = next {
                    timer.set_at(at);
                }
                armed = next;
            }
            let deadline = async {
                match armed {
                    Some(_) => (&mut timer).await,
                    None => pending().await,
                };
                Wake::Deadline
            };
            let other = async {
                match self.drain_until.get() {
                    None => Wake::Command(rx.recv().await.unwrap_or_else(|_| {
                        Command::Shutdown(Instant::now() + self.settings.config.server.shutdown_drain)
                    })),
                    // While draining, writers finish on their own; look again every 50 ms.
                    Some(until) => {
                        Timer::at(until.min(Instant::now() + Duration::from_millis(50))).await;
                        if Instant::now() >= until {
                            Wake::DrainOver
                        } else {
                            Wake::Tick
                        }
                    }
                }
            };
            let mut queued = 0;
            let wake = future::or(deadline, other).await;
            if self.woken.get() == 0 {
                unread = 0; // every writer has taken what it was woken for
            }
            match wake {
                Wake::Deadline => {
                    self.gw.borrow_mut().handle_timeout(Instant::now());
                    // Re-arm from the core's answer, even if it is the same instant.
                    armed = None;
                }
                Wake::Command(cmd) => {
                    let cmd = match cmd {
                        Command::Shutdown(until) if shutdown_at.is_none() => {
                            // Nothing more is taken (a source's send fails: it does not ack).
                            rx.close();
                            shutdown_at = Some(until);
                            continue;
                        }
                        // The queue is empty and closed (the value `recv`'s error gives).
                        Command::Shutdown(until) => Command::Shutdown(shutdown_at.map_or(until, |at| at.min(until))),
                        cmd @ Command::Open(..) if shutdown_at.is_some() => {
                            held.push(cmd);
                            continue;
                        }
                        cmd => cmd,
                    };
                    if let Command::Event(ev) = &cmd {
                        queued = ev.frame().len();
                        // One that would take what is still unwritten past a quarter of the bound
                        // waits until the writers took that: else two large events in a row
                        // (the second already in the channel) would pass the output bound of
                        // every stream of the channel, readers or not. Writers woken for output
                        // no event queued (a resume's catch-up of up to half the bound when a
                        // stream opens or its history read or read-back ends, a stream's head)
                        // count too: a large event would find that unwritten.
                        if self.woken.get() > 0 && unread + queued > yield_after {
                            self.let_writers_run().await;
                            unread = 0;
                        }
                    }
                    // Once the writers ran, if they did: right before the command.
                    if self.handle_due() {
                        armed = None;
                    }
                    let shutdown = matches!(cmd, Command::Shutdown(_));
                    self.apply(cmd);
                    if shutdown {
                        // Stream requests queued behind the shutdown get their 503 now, and later
                        // ones fail to send (their connections close): none waits, unanswered,
                        // for the process to end.
                        for cmd in held.drain(..) {
                            self.apply(cmd);
                        }
                    }
                }
                Wake::Tick => {}
                Wake::DrainOver => {
                    let left = self.gw.borrow().slots_in_use();
                    warn!(streams = left, "shutdown drain time passed; closing the remaining streams");
                    // Writers and refusals woken and not run yet (with a drain of 0s the shutdown
                    // closed their streams just now) write what their sockets take at once (a
                    // `retry:`, the last events, a 503), on either executor: smol's timer for a
                    // past instant is ready at its first poll, before they ran. Those still
                    // writing then give up.
                    Timer::at(Instant::now() + LAST_WRITES).await;
                    // Their writers end with the process, past their own `stream closed` line.
                    for conn in self.conns.borrow().iter().flatten() {
                        self.log_closed(conn, conn.closing.get().unwrap_or(CloseReason::Shutdown));
                    }
                    return;
                }
            }
            self.drain();
            if self.drain_until.get().is_some() && self.gw.borrow().slots_in_use() == 0 && self.refusing.get() == 0 {
                return;
            }
            // Bytes queued to writers since they last had all run: past a quarter of the bound
            // (one event larger than that), the loop waits for them (not after every run of
            // events: that would hold each new event back for a whole round of writers).
            unread += queued;
            if unread >= yield_after {
                self.let_writers_run().await;
                unread = 0;
            }
            budget.spend(queued, yield_after).await;
        }
    }

    /// Yields until every writer woken so far has run (or none of them runs any more: those left
    /// wait on their sockets). One yield is not always enough: an executor may run only so many
    /// tasks before it polls the loop again (tokio's LocalSet: 61), so with more streams than
    /// that the loop would queue its next run of events to writers that have not taken the last
    /// one, and a stream whose client reads would pass its output bound and be closed as slow
    /// (`tests/tests/outage.rs`, the backlog burst).
    async fn let_writers_run(&self) {
        loop {
            let before = self.woken.get();
            if before == 0 {
                return;
            }
            future::yield_now().await;
            if self.woken.get() >= before {
                return;
            }
        }
    }

    fn apply(self: &Rc<Self>, cmd: Command) {
        match cmd {
            Command::Open(sock, req) => self.open(sock, req),
            Command::Event(ev) => self.gw.borrow_mut().handle_event(&ev),
            Command::SourceDown(ch) => self.gw.borrow_mut().source_down(ch, Instant::now()),
            Command::SourceUp(ch) => self.gw.borrow_mut().source_up(ch),
            Command::History(reader) => {
                let mut gw = self.gw.borrow_mut();
                for (ch, epoch) in reader.channels() {
                    gw.set_history(ch, Some(epoch));
                }
                *self.log.borrow_mut() = Some(reader);
            }
            Command::LogGap(ch) => self.gw.borrow_mut().log_gap(ch),
            Command::PrimeStart(ch) => self.gw.borrow_mut().prime_start(ch),
            Command::Prime(ev) => self.gw.borrow_mut().prime(&ev),
            Command::PrimeEnd(ch, through) => self.gw.borrow_mut().prime_end(ch, through),
            Command::PrimeGap(ch) => self.gw.borrow_mut().prime_gap(ch),
            Command::PrimeOver(ch) => self.gw.borrow_mut().prime_over(ch),
            Command::Shutdown(until) => {
                self.gw.borrow_mut().shutdown();
                self.drain_until.set(Some(until.min(Instant::now() + self.settings.config.server.shutdown_drain)));
            }
        }
    }

    fn conn(&self, id: StreamId) -> Option<Rc<Conn>> {
        self.conns.borrow().get(id.index()).and_then(|c| c.clone()).filter(|c| c.id == id)
    }

    /// Handles the core's deadlines already past, before something that may queue an event for
    /// a stream (a command, a read-back's message; a writer's `take_output` does it in the
    /// core): the timer may run late behind a burst (tokio runs its timers every so many task
    /// polls), and an event must not reach a stream whose token expired by now. Whether any was
    /// due. The caller drains the outputs.
    pub(crate) fn handle_due(&self) -> bool {
        let now = Instant::now();
        let due = self.gw.borrow().poll_timeout().is_some_and(|(at, _)| at <= now);
        if due {
            self.gw.borrow_mut().handle_timeout(now);
        }
        due
    }

    fn drain(self: &Rc<Self>) {
        loop {
            let out = self.gw.borrow_mut().poll_output();
            match out {
                None => return,
                Some(Output::Transmit(id)) => {
                    if let Some(c) = self.conn(id) {
                        c.wake.notify();
                    }
                }
                Some(Output::Close(id, why)) => match self.conn(id) {
                    Some(c) => {
                        c.closing.set(Some(why));
                        c.wake.notify();
                        // A read-back waiting for its turn or for the client gives up now, not
                        // once a client that takes nothing lets the connection go.
                        c.drained.notify();
                    }
                    None => self.gw.borrow_mut().on_closed(id),
                },
                Some(Output::Backfill { stream, channel, after, .. }) => self.read_back(stream, channel, after),
            }
        }
    }

    fn open(self: &Rc<Self>, sock: std::net::TcpStream, req: StreamRequest) {
        let sock = match Socket::new(sock) {
            Ok(s) => s,
            // Rare (the kernel short of memory or of epoll watches), and the client gets no
            // answer: said at warn, as many lines as refusals get.
            Err(e) => {
                self.metrics.unregistered();
                if self.refusals.borrow_mut().line(Instant::now(), log_refusals_summed) {
                    warn!(error = %e, "cannot adopt a stream's connection (its socket could not be registered); closed unanswered");
                }
                return;
            }
        };
        let log = StreamLog { channel: req.channel, version: req.version, opened: Instant::now() };
        let user = req.identity.user.clone();
        let result = self.gw.borrow_mut().open(req, log.opened, since_epoch());
        self.metrics.response(match &result {
            Ok(_) => 200,
            Err(resp) => resp.status,
        });
        match result {
            Ok(id) => {
                let wake = Notify::counted(self.woken.clone());
                let conn = Rc::new(Conn { id, log, wake, closing: Cell::new(None), drained: Notify::default() });
                {
                    let mut conns = self.conns.borrow_mut();
                    if conns.len() <= id.index() {
                        conns.resize(id.index() + 1, None);
                    }
                    conns[id.index()] = Some(conn.clone());
                }
                let channel = &self.settings.channel(conn.log.channel).name;
                info!(stream = %id, user = %user, channel = %channel, version = conn.log.version, "stream opened");
                spawn(self.clone().writer(conn, sock));
            }
            Err(resp) => {
                let channel = &self.settings.channel(log.channel).name;
                let code = resp.refusal.as_ref().map_or("-", |r| r.code);
                if self.refusals.borrow_mut().line(Instant::now(), log_refusals_summed) {
                    info!(user = %user, channel = %channel, status = resp.status, code, "stream refused");
                }
                // Counted until written: a draining shard waits for it (its executor would drop it).
                let refusing = self.refusing.clone();
                refusing.set(refusing.get() + 1);
                spawn(async move {
                    answer_and_close(sock, &resp.bytes, Instant::now() + WRITE_TIMEOUT).await;
                    refusing.set(refusing.get() - 1);
                });
            }
        }
    }

    /// Writes one stream until it closes, then releases it.
    ///
    /// Kept small, because every idle stream holds one: its output goes from the core straight
    /// into the shard's scratch and the socket ([`Shard::write_now`]); only what the socket does
    /// not take at once waits in `out`, and the rare paths (a close, its last bytes, the log
    /// line) are boxed or computed when they happen.
    async fn writer(self: Rc<Self>, conn: Rc<Conn>, mut sock: Socket) {
        let mut out: Vec<Bytes> = Vec::new();
        let mut budget = Budget::default();
        let mut client_sent = 0usize;
        let why = loop {
            if out.is_empty() {
                if self.write_now(&conn, &mut sock, &mut out).is_err() {
                    break conn.closing.get().unwrap_or(CloseReason::ClientGone);
                }
            } else {
                self.gw.borrow_mut().take_output(conn.id, &mut out, Instant::now());
                self.drain();
            }
            // The socket is full: wait until it takes the rest (or the stream is closed), telling
            // the core each time it takes some (a client that reads slowly is not one that stopped).
            let moving = || self.gw.borrow_mut().output_moving(conn.id);
            let close_by = || self.close_by(&conn);
            if !out.is_empty() && write_out(&mut sock, &mut out, &conn, &moving, &close_by).await.is_err() {
                break conn.closing.get().unwrap_or(CloseReason::ClientGone);
            }
            if out.capacity() > KEEP_FRAMES {
                out = Vec::new(); // what a burst grew is not kept by a stream that idles after it
            }
            conn.drained.notify();
            if let Some(why) = conn.closing.get() {
                Box::pin(self.finish(&conn, &mut sock, &mut out)).await;
                break why;
            }
            budget.step().await;
            let client_left = future::or(
                async {
                    conn.wake.notified().await;
                    false
                },
                async {
                    // A client has nothing to say on a stream; what it sends is ignored. Wait for
                    // readiness before reading (smol's read tries the socket first: a `recv` per
                    // write on every stream), through the socket's own waker slot (smol's
                    // `readable()` future re-arms epoll each time: an `epoll_ctl` per write).
                    if poll_fn(|cx| sock.poll_readable(cx)).await.is_err() {
                        return true;
                    }
                    let mut scratch = [0u8; 16];
                    match sock.read(&mut scratch).await {
                        Ok(0) | Err(_) => true,
                        // A client that keeps sending would cost the shard a read per 16
                        // bytes; past a few KiB it is not an SSE client: closed.
                        Ok(n) => {
                            client_sent += n;
                            client_sent > MAX_CLIENT_BYTES
                        }
                    }
                },
            );
            if client_left.await {
                break CloseReason::ClientGone;
            }
        };
        self.log_closed(&conn, why);
        drop(sock);
        conn.drained.notify();
        self.gw.borrow_mut().on_closed(conn.id);
        if let Some(slot) = self.conns.borrow_mut().get_mut(conn.id.index()) {
            if slot.as_ref().is_some_and(|c| c.id == conn.id) {
                *slot = None;
            }
        }
    }

    /// The `stream closed` line, while the core still knows the stream's user.
    fn log_closed(&self, conn: &Conn, why: CloseReason) {
        let gw = self.gw.borrow();
        let user = gw.user_of(conn.id).unwrap_or_default();
        let secs = conn.log.opened.elapsed().as_secs_f64();
        let channel = &self.settings.channel(conn.log.channel).name;
        info!(stream = %conn.id, user = %user, channel = %channel, version = conn.log.version,
              reason = why.label(), duration_s = format_args!("{secs:.1}"), "stream closed");
    }

    /// Takes the stream's output into the shard's scratch and writes what the socket takes now,
    /// without waiting; what it does not take moves into `out` (so `out` is empty unless the
    /// socket is full). An error means the connection is gone.
    fn write_now(self: &Rc<Self>, conn: &Conn, sock: &mut Socket, out: &mut Vec<Bytes>) -> io::Result<()> {
        let mut scratch = self.scratch.borrow_mut();
        self.gw.borrow_mut().take_output(conn.id, &mut scratch, Instant::now());
        // A resume continues inside take_output and may queue outputs of its own.
        self.drain();
        // A waker that does nothing: when the socket is full, the writer awaits the rest in
        // `write_out`, which polls again with the task's own waker.
        let mut cx = Context::from_waker(Waker::noop());
        let mut start = 0;
        let result = loop {
            match poll_write_from(&mut cx, sock, &mut scratch, &mut start) {
                Poll::Ready(Ok(true)) | Poll::Pending => break Ok(()),
                Poll::Ready(Ok(false)) => continue,
                Poll::Ready(Err(e)) => break Err(e),
            }
        };
        out.extend(scratch.drain(..).skip(start));
        result
    }

    /// The stream is closing: its last bytes, by [`Shard::close_by`], then the write side shut
    /// down. Bytes the client sent that were not read yet are read and dropped first (for at
    /// most [`super::LINGER`]): closed with them unread, the socket would be reset, and a reset
    /// may discard the last frames before the client reads them. Boxed by the caller, so idle
    /// writers do not carry its state.
    async fn finish(self: &Rc<Self>, conn: &Conn, sock: &mut Socket, out: &mut Vec<Bytes>) {
        self.gw.borrow_mut().take_output(conn.id, out, Instant::now());
        // It may have handled due timers: their outputs, for other streams.
        self.drain();
        let shut = until(self.close_by(conn), async {
            write_all_vectored(sock, out, &|| {}).await?;
            sock.flush().await?;
            // Not `close()`: tokio's shuts the write side down, async-io's only flushes.
            socket2::SockRef::from(sock.get_ref()).shutdown(std::net::Shutdown::Write)
        })
        .await;
        if matches!(shut, Some(Ok(()))) && super::has_bytes(sock) {
            super::linger(sock).await;
        }
    }

    /// When a closing stream must have taken its last bytes: the drain's end if a shutdown
    /// closed it, [`WRITE_TIMEOUT`] from now otherwise.
    fn close_by(&self, conn: &Conn) -> Instant {
        match (conn.closing.get(), self.drain_until.get()) {
            (Some(CloseReason::Shutdown), Some(end)) => end,
            _ => Instant::now() + WRITE_TIMEOUT,
        }
    }
}

/// What is logged about a stream (never its token; its user is read from the core when it
/// closes).
struct StreamLog {
    channel: ChannelId,
    version: u32,
    opened: Instant,
}

/// Writes `out`; if the stream is told to close meanwhile, gives the rest until `close_by()`.
/// `moving` is called when the socket takes some of it after a wait.
async fn write_out(
    sock: &mut Socket,
    out: &mut Vec<Bytes>,
    conn: &Conn,
    moving: &dyn Fn(),
    close_by: &dyn Fn() -> Instant,
) -> io::Result<()> {
    let mut write = pin!(write_all_vectored(sock, out, moving));
    let mut woken = false;
    let result = loop {
        if conn.closing.get().is_some() {
            // Boxed: the timer is needed only by a stream that closes while its socket is full.
            let timed_out = || Err(io::ErrorKind::TimedOut.into());
            break Box::pin(until(close_by(), write)).await.unwrap_or_else(timed_out);
        }
        // A wake here is either more output (picked up after this write) or a close.
        let done = future::or(async { Some((&mut write).await) }, async {
            conn.wake.notified().await;
            None
        });
        match done.await {
            Some(r) => break r,
            None => woken = true,
        }
    };
    if woken {
        // The wake was taken here: give it back, or the writer would wait for another one while
        // the core, its Transmit already sent, waits for the writer (until the stream passes its
        // bound and is closed as slow although its client reads).
        conn.wake.notify();
    }
    result
}

/// Writes every buffer with `writev`, handling partial writes; leaves `bufs` empty on success.
/// `moving` is called when a write after a wait (the socket was full) took something.
async fn write_all_vectored(sock: &mut Socket, bufs: &mut Vec<Bytes>, moving: &dyn Fn()) -> io::Result<()> {
    let mut start = 0;
    let mut waited = false;
    poll_fn(|cx| loop {
        let r = poll_write_from(cx, sock, bufs, &mut start);
        if matches!(r, Poll::Ready(Ok(_))) && std::mem::take(&mut waited) {
            moving();
        }
        match r {
            Poll::Ready(Ok(true)) => {
                bufs.clear();
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Ok(false)) => continue,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                waited = true;
                return Poll::Pending;
            }
        }
    })
    .await
}

/// One `writev` of `bufs[*start..]` (at most [`IOV_MAX`] buffers); moves `*start` past what was
/// written (the first buffer not wholly written is advanced). `Ready(Ok(true))` once nothing is
/// left. The `IoSlice` array lives on this call's stack, not in any task (it is 1 KiB).
fn poll_write_from(cx: &mut Context<'_>, sock: &mut Socket, bufs: &mut [Bytes], start: &mut usize) -> Poll<io::Result<bool>> {
    while bufs.get(*start).is_some_and(Bytes::is_empty) {
        *start += 1;
    }
    if *start >= bufs.len() {
        return Poll::Ready(Ok(true));
    }
    let pending = &bufs[*start..];
    let mut iov = [IoSlice::new(&[]); IOV_MAX];
    let k = pending.len().min(IOV_MAX);
    for (slot, b) in iov.iter_mut().zip(pending) {
        *slot = IoSlice::new(b);
    }
    let mut n = match Pin::new(&mut *sock).poll_write_vectored(cx, &iov[..k]) {
        Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
        Poll::Ready(Ok(n)) => n,
        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        Poll::Pending => return Poll::Pending,
    };
    while n > 0 {
        let b = &mut bufs[*start];
        if n >= b.len() {
            n -= b.len();
            *start += 1;
        } else {
            b.advance(n);
            n = 0;
        }
    }
    Poll::Ready(Ok(*start >= bufs.len()))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use bytes::Bytes;
    use sse_gateway_core::{Event, Identity, Ingest, Resume, UpstreamMessage};

    use super::*;

    /// A valid `deal.created` event whose frame is about `len` bytes.
    fn deal(ingest: &mut Ingest, len: usize) -> Event {
        let body = format!(
            r#"{{"deal_id":"7f1c2a4e-0000-4000-8000-000000000001","client_id":"7f1c2a4e-0000-4000-8000-000000000002","title":"{}","status":"new","created_at":"2024-01-01T00:00:00Z"}}"#,
            "t".repeat(len)
        );
        let msg = UpstreamMessage { kind: Some("deal.created".into()), body: Bytes::from(body), ..UpstreamMessage::default() };
        ingest.handle_message(&msg).expect("a valid event")
    }

    /// The seed settings with events up to 1 MiB from the in-process source (its limit is
    /// `server.max_body_bytes`), their metrics, the streams' output bound and `deals`' ingest.
    fn large_events() -> (Arc<Settings>, Arc<Metrics>, usize, Ingest) {
        large_events_and("")
    }

    /// [`large_events`], with `more` configuration after the `[server]` table.
    fn large_events_and(more: &str) -> (Arc<Settings>, Arc<Metrics>, usize, Ingest) {
        let config = sse_gateway_core::config::Config::from_toml(&format!("[server]\nmax_body_bytes = 1048576\n{more}")).unwrap();
        let settings = Arc::new(Settings::new(config, sse_gateway_core::Catalogue::seed()).unwrap());
        let metrics = Arc::new(Metrics::new(&settings));
        let bound = settings.config.streams.max_pending_bytes;
        let deals = settings.channel_id("deals").unwrap();
        let ingest = Ingest::new(settings.clone(), metrics.clone(), deals, 1);
        (settings, metrics, bound, ingest)
    }

    /// A client's socket and the commands of one shard running on a thread of its own: `before`
    /// goes in first (to the buffers), then a stream of alice's on `deals` opens with `resume`,
    /// then `after`, all queued before the shard starts. With `small_buffers`, both ends' socket
    /// buffers are 16 KiB (a slow link).
    fn open_stream(
        settings: &Arc<Settings>, metrics: &Arc<Metrics>, resume: Option<Resume>, before: &[Event], after: &[Event], small_buffers: bool,
    ) -> (TcpStream, async_channel::Sender<Command>, std::thread::JoinHandle<()>) {
        open_stream_then(settings, metrics, resume, before, after, small_buffers, |_, _| {})
    }

    /// [`open_stream`], with `then` run on the client and the commands before the shard starts.
    fn open_stream_then(
        settings: &Arc<Settings>, metrics: &Arc<Metrics>, resume: Option<Resume>, before: &[Event], after: &[Event], small_buffers: bool,
        then: impl FnOnce(&mut TcpStream, &async_channel::Sender<Command>),
    ) -> (TcpStream, async_channel::Sender<Command>, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if small_buffers {
            client.set_recv_buffer_size(16 * 1024).unwrap();
        }
        client.connect(&listener.local_addr().unwrap().into()).unwrap();
        let mut client: TcpStream = client.into();
        let (server, _) = listener.accept().unwrap();
        if small_buffers {
            socket2::SockRef::from(&server).set_send_buffer_size(16 * 1024).unwrap();
        }
        server.set_nonblocking(true).unwrap(); // as the listener hands it over
        let identity = Identity { user: "alice".into(), roles: vec![], expires_at: sse_gateway_core::cli::unix_now() + 3600 };
        let deals = settings.channel_id("deals").unwrap();
        let req = StreamRequest { identity, channel: deals, version: 1, resume, cors_origin: None };
        let (tx, rx) = async_channel::unbounded();
        let events = |evs: &[Event]| evs.iter().cloned().map(Command::Event).collect::<Vec<_>>();
        for cmd in events(before).into_iter().chain([Command::Open(server, req)]).chain(events(after)) {
            tx.try_send(cmd).unwrap();
        }
        then(&mut client, &tx);
        let gw = Gateway::new(settings.clone(), metrics.clone(), 16, 1);
        let (s, m) = (settings.clone(), metrics.clone());
        let shard = std::thread::spawn(move || crate::driver::Executor::new().unwrap().block_on(run(gw, rx, s, m)));
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (client, tx, shard)
    }

    /// What a client reads from its stream on one shard ([`open_stream`]) until a shutdown
    /// queued behind `after` ends it.
    fn read_stream(settings: Arc<Settings>, metrics: Arc<Metrics>, resume: Option<Resume>, before: &[Event], after: &[Event]) -> String {
        let (mut client, tx, shard) = open_stream(&settings, &metrics, resume, before, after, false);
        tx.try_send(Command::Shutdown(Instant::now() + Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("the stream ends after the shutdown");
        shard.join().unwrap();
        String::from_utf8(got).unwrap()
    }

    /// Where `ev`'s frame is in `got`; panics if it is not.
    fn place(got: &str, ev: &Event) -> usize {
        let frame = std::str::from_utf8(ev.frame()).unwrap();
        got.find(frame).unwrap_or_else(|| panic!("{} bytes, without the frame of {}", got.len(), ev.id()))
    }

    /// Two events queued back to back, together past a stream's output bound: the loop lets the
    /// stream's writer take the first before it queues the second, so a client that reads gets
    /// both and is not closed as slow (before, the second found the first unwritten and closed
    /// every stream of the channel, the first with it).
    #[test]
    fn two_large_events_in_a_row_reach_a_client_that_reads() {
        let (settings, metrics, bound, mut ingest) = large_events();
        let (first, second) = (deal(&mut ingest, bound / 5), deal(&mut ingest, bound * 4 / 5));
        assert!(first.frame().len() + second.frame().len() > bound && second.frame().len() < bound);
        let got = read_stream(settings, metrics, None, &[], &[first.clone(), second.clone()]);
        assert!(place(&got, &first) < place(&got, &second), "in order");
    }

    /// A resume's catch-up (up to half the bound, queued when the stream opens, not by an event)
    /// then a large event already in the channel: the loop lets the new stream's writer take the
    /// catch-up first, so a client that reads gets both (before, the event found the catch-up
    /// unwritten, passed the bound, and the stream was closed with nothing written, not even its
    /// head).
    #[test]
    fn a_large_event_right_after_a_resume_reaches_a_client_that_reads() {
        let (settings, metrics, bound, mut ingest) = large_events();
        let older: Vec<_> = (0..6).map(|_| deal(&mut ingest, bound / 15)).collect();
        let large = deal(&mut ingest, bound * 4 / 5);
        let replay: usize = older[1..].iter().map(|e| e.frame().len()).sum();
        assert!(replay <= bound / 2 && replay + large.frame().len() > bound && large.frame().len() < bound);
        let got = read_stream(settings, metrics, Some(Resume::After(older[0].id())), &older, std::slice::from_ref(&large));
        let places: Vec<usize> = older[1..].iter().chain([&large]).map(|e| place(&got, e)).collect();
        assert!(places.is_sorted(), "in order: {places:?}");
    }

    /// A client that reads slowly but steadily through a long catch-up (small socket buffers
    /// both ends, 4 KiB every 50 ms: each batch the writer takes, up to the 256 KiB bound, needs
    /// more than a 2-s heartbeat interval to go out) gets all of it: the writer tells the core
    /// that its socket takes bytes. Before, the heartbeat tick saw output waiting untaken for a
    /// whole interval and closed the stream as `slow_client`, a catch-up that never finished.
    #[test]
    fn a_client_that_reads_slowly_but_steadily_gets_a_long_catch_up_whole() {
        let (settings, metrics, bound, mut ingest) = large_events_and("[streams]\nheartbeat = \"2s\"\n[channels.deals]\nbuffer_events = 64\n");
        let events: Vec<_> = (0..41).map(|_| deal(&mut ingest, bound / 8)).collect();
        let catch_up: usize = events[1..].iter().map(|e| e.frame().len()).sum();
        assert!(catch_up > 4 * bound, "{catch_up} bytes: several batches");

        let (mut client, tx, shard) = open_stream(&settings, &metrics, Some(Resume::After(events[0].id())), &events, &[], true);
        let last = std::str::from_utf8(events[40].frame()).unwrap().to_string();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(&last) {
            let n = client.read(&mut chunk).expect("the stream stays open while the client reads");
            assert!(n > 0, "closed after {} of about {catch_up} bytes:\n{}", got.len(), String::from_utf8_lossy(&got[got.len().saturating_sub(300)..]));
            got.extend_from_slice(&chunk[..n]);
            // Steady, and slow; a heartbeat interval of 2 s leaves a loaded machine's stalls of
            // this thread (a second, say) short of the two ticks that close a stalled stream.
            std::thread::sleep(Duration::from_millis(50));
        }
        tx.try_send(Command::Shutdown(Instant::now() + Duration::from_secs(10))).unwrap();
        client.read_to_end(&mut got).expect("the stream ends after the shutdown");
        shard.join().unwrap();
        let got = String::from_utf8(got).unwrap();
        let places: Vec<usize> = events[1..].iter().map(|e| place(&got, e)).collect();
        assert!(places.is_sorted(), "in order");
        let rendered = metrics.render();
        assert!(rendered.contains("sse_gateway_streams_closed_total{reason=\"slow_client\"} 0\n"), "closed as slow:\n{rendered}");
        assert!(rendered.contains("sse_gateway_streams_closed_total{reason=\"shutdown\"} 1\n"), "closed by the shutdown:\n{rendered}");
    }

    /// A client that sent bytes on its stream (pipelined, junk) that the writer had not read
    /// when the stream closed (here: shut down right after it opened) still gets all of it: the
    /// unread bytes are read and dropped before the socket is closed. Closed with them unread,
    /// the kernel resets the connection and discards what its send buffer still held: a client
    /// that paused with the stream's last 48 KiB to come (its buffer, 32 KiB, full; the rest in
    /// the gateway's) lost the part not sent yet.
    #[test]
    fn a_stream_closed_with_client_bytes_unread_ends_cleanly() {
        let (settings, metrics, bound, mut ingest) = large_events();
        let events: Vec<_> = (0..14).map(|_| deal(&mut ingest, bound / 16)).collect();
        let (mut client, _tx, shard) = open_stream_then(&settings, &metrics, None, &[], &events, true, |client, tx| {
            client.write_all(&[b'x'; 3000]).unwrap();
            tx.try_send(Command::Shutdown(Instant::now() + Duration::from_secs(30))).unwrap();
        });
        let tenth = std::str::from_utf8(events[10].frame()).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(tenth) {
            let n = client.read(&mut chunk).expect("the stream is open");
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
        std::thread::sleep(Duration::from_secs(1)); // the gateway takes the rest into its buffer, and closes
        let end = client.read_to_end(&mut got);
        shard.join().unwrap();
        let got = String::from_utf8_lossy(&got);
        assert!(end.is_ok(), "{end:?} after {} bytes", got.len());
        let places: Vec<usize> = events.iter().map(|e| place(&got, e)).collect();
        assert!(places.is_sorted(), "in order");
        assert!(got.rfind("retry: ").is_some_and(|r| r > *places.last().unwrap()) && got.ends_with("\n\n"), "the retry: last");
    }

    /// An event queued behind the shutdown (a source still handing it over when the main thread
    /// sent the shutdown: it may have acked it) reaches the streams before they close; before,
    /// everything but stream requests queued behind a shutdown was dropped. A stream request
    /// queued behind it is answered 503.
    #[test]
    fn an_event_queued_behind_the_shutdown_reaches_the_streams_first() {
        let (settings, metrics, _, mut ingest) = large_events();
        let late = deal(&mut ingest, 300);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut second = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let (mut client, _tx, shard) = open_stream_then(&settings, &metrics, None, &[], &[], false, |_, tx| {
            tx.try_send(Command::Shutdown(Instant::now() + Duration::from_secs(30))).unwrap();
            tx.try_send(Command::Event(late.clone())).unwrap();
            let identity = Identity { user: "bob".into(), roles: vec![], expires_at: sse_gateway_core::cli::unix_now() + 3600 };
            let req = StreamRequest { identity, channel: settings.channel_id("deals").unwrap(), version: 1, resume: None, cors_origin: None };
            tx.try_send(Command::Open(server, req)).unwrap();
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("the stream ends after the shutdown");
        let got = String::from_utf8(got).unwrap();
        assert!(got.rfind("retry: ").is_some_and(|r| r > place(&got, &late)), "the event, then the shutdown's retry:");
        second.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        second.read_to_end(&mut answer).expect("the stream request behind the shutdown is answered");
        assert!(answer.starts_with(b"HTTP/1.1 503"), "{}", String::from_utf8_lossy(&answer));
        shard.join().unwrap();
    }

    /// A stream closed by a shutdown has the whole drain (`server.shutdown_drain`, 30 s here) to
    /// take what it holds, not `WRITE_TIMEOUT`: a client whose socket is full and that reads
    /// again only 6 s after the shutdown still gets every event, then the shutdown's `retry:`.
    /// Before, the writer gave up 5 s after the shutdown and the client got what the sockets held.
    #[test]
    fn a_stream_closed_by_a_shutdown_has_the_whole_drain_to_take_its_last_bytes() {
        let (settings, metrics, bound, mut ingest) = large_events_and("shutdown_drain = \"30s\"\n");
        let events: Vec<_> = (0..6).map(|_| deal(&mut ingest, bound / 8)).collect();
        let (mut client, tx, shard) = open_stream(&settings, &metrics, None, &[], &events, true);
        tx.try_send(Command::Shutdown(Instant::now() + Duration::from_secs(30))).unwrap();
        std::thread::sleep(WRITE_TIMEOUT + Duration::from_secs(1));
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("the stream ends after the shutdown");
        shard.join().unwrap();
        let got = String::from_utf8(got).unwrap();
        let places: Vec<usize> = events.iter().map(|e| place(&got, e)).collect();
        assert!(places.is_sorted(), "in order");
        let retry = got.rfind("retry: ").expect("the shutdown's retry:");
        assert!(retry > *places.last().unwrap() && got.ends_with("\n\n"), "the retry: last: {}", &got[retry..]);
    }
}
