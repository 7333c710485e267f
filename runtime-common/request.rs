//! Accepting connections, reading request heads (bounded in time by `server.head_timeout`, in size
//! by the core's `max_head_bytes` check), routing them with the core's `Front` and answering what
//! is not a stream: ops endpoints, the demo page and the publish endpoint. Streams go to their
//! user's shard as a `std::net::TcpStream` with their `StreamRequest`.

use std::io;
use std::net::SocketAddr;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{future, AsyncReadExt};
use sse_gateway_core::cli::unix_now;
use sse_gateway_core::{demo, parse_publish, Front, PublishRequest, Refusal, Response, Routed};
use tracing::{debug, info, warn};

use super::inproc::Inproc;
use super::shards::Shards;
use super::{answer_and_close, has_bytes, sleep, until, until_zero, Budget};
use crate::driver::{spawn, Socket};
use crate::listener::Listener;

/// What every connection task needs.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The core's router.
    pub(crate) front: Front,
    /// The shards.
    pub(crate) shards: Shards,
    /// The in-process source, when there is no broker.
    pub(crate) inproc: Option<Inproc>,
    /// Which refusals get a line of their own.
    pub(crate) refusals: RefCell<RefusalLog>,
    /// Connections accepted and not answered and closed yet: a shutdown lets them finish
    /// ([`Ctx::settle`]).
    pub(crate) busy: Cell<usize>,
    /// Closed when the shutdown begins ([`Ctx::stopping`]): a connection that has sent nothing
    /// by then is closed, and a publish is refused.
    pub(crate) stop: (async_channel::Sender<()>, async_channel::Receiver<()>),
    /// Closed, and replaced, each time accept runs out of file descriptors ([`Ctx::shed`]).
    shed: RefCell<(async_channel::Sender<()>, async_channel::Receiver<()>)>,
}

impl Ctx {
    /// A context with no connection yet and no refusal logged.
    pub(crate) fn new(front: Front, shards: Shards, inproc: Option<Inproc>) -> Ctx {
        Ctx {
            front,
            shards,
            inproc,
            refusals: RefCell::new(RefusalLog::new(Instant::now())),
            busy: Cell::new(0),
            stop: async_channel::bounded(1),
            shed: RefCell::new(async_channel::bounded(1)),
        }
    }

    /// Accept ran out of file descriptors: every connection that has not sent a whole request
    /// head [`SHED_AGE`] after its accept is closed, unanswered ([`Ctx::unless_shed`]). Silent
    /// or trickling connections (a browser's preconnect, a slowloris, a flood of empty
    /// connects) would otherwise hold the descriptors until `server.head_timeout`, while every
    /// new request, a probe's included, waits in the accept queue.
    fn shed(&self) {
        let (was, _) = self.shed.replace(async_channel::bounded(1));
        was.close();
    }

    /// `fut`'s output, or `None` if a [`Ctx::shed`] comes at least [`SHED_AGE`] after
    /// `accepted` (checked only when `fut` is pending).
    async fn unless_shed<F: Future>(&self, accepted: Instant, fut: F) -> Option<F::Output> {
        future::or(async { Some(fut.await) }, async {
            loop {
                let shed = self.shed.borrow().1.clone();
                let _ = shed.recv().await;
                if accepted.elapsed() >= SHED_AGE {
                    return None;
                }
            }
        })
        .await
    }

    /// Says the shutdown has begun (the accept loop has ended; the listener closes once the
    /// connections queued in it are taken); the in-process source hands the shards nothing
    /// more (they are told to shut down next).
    pub(crate) fn stopping(&self) {
        self.stop.0.close();
        if let Some(inproc) = &self.inproc {
            inproc.stop();
        }
    }

    /// Whether the shutdown has begun.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stop.1.is_closed()
    }

    /// `fut`'s output, or `None` once the shutdown begins (checked only when `fut` is pending).
    pub(crate) async fn unless_stopping<F: Future>(&self, fut: F) -> Option<F::Output> {
        future::or(async { Some(fut.await) }, async {
            let _ = self.stop.1.recv().await;
            None
        })
        .await
    }

    /// At shutdown, once the listener is closed: waits until every connection that had begun
    /// its request is answered and closed, or `limit` passes (they are then dropped with this
    /// thread's tasks). A request whose head was still arriving at the signal gets its answer
    /// (a stream request: 503 `overloaded`), instead of a connection cut without one.
    pub(crate) async fn settle(&self, limit: Instant) {
        until_zero(&self.busy, limit, Duration::from_millis(20)).await;
    }
}

/// Counts a connection in [`Ctx::busy`] from its accept (before its task first runs: a
/// shutdown right after must not miss it) until its task ends.
struct Busy(Rc<Ctx>);

impl Busy {
    fn new(ctx: &Rc<Ctx>) -> Busy {
        ctx.busy.set(ctx.busy.get() + 1);
        Busy(ctx.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.set(self.0.busy.get() - 1);
    }
}

/// A connection is not shed ([`Ctx::shed`]) before this: a client's request head follows its
/// connect within a round trip.
const SHED_AGE: Duration = Duration::from_secs(1);

/// Whether an accept error says the process or the system is out of file descriptors (EMFILE,
/// ENFILE).
fn out_of_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Refusal lines written in a burst before [`REFUSALS_PER_SEC`] applies.
const REFUSALS_BURST: f64 = 200.0;
/// Refusal lines written per second once a burst is spent.
const REFUSALS_PER_SEC: f64 = 20.0;
/// How long refusals left without a line of their own are counted before a line sums them up.
const REFUSALS_SUMMED: Duration = Duration::from_secs(10);

/// Bounds the `request refused` lines: a flood of requests (bad tokens from a misconfigured
/// client, or an attack) would write thousands a second, each a synchronous write to stderr on
/// the accepting thread, and push out of a rate-limited journal the lines that matter. After a
/// burst of [`REFUSALS_BURST`] lines, [`REFUSALS_PER_SEC`]; the rest are counted and summed up
/// in one line every [`REFUSALS_SUMMED`] while they last (every refusal is also counted in
/// `sse_gateway_http_responses_total`).
#[derive(Debug)]
pub(crate) struct RefusalLog {
    /// Lines that may be written now (a token bucket).
    tokens: f64,
    refilled: Instant,
    /// Refusals without a line since the first of them.
    unlogged: u64,
    first_unlogged: Option<Instant>,
}

impl RefusalLog {
    pub(crate) fn new(now: Instant) -> RefusalLog {
        RefusalLog { tokens: REFUSALS_BURST, refilled: now, unlogged: 0, first_unlogged: None }
    }

    /// A refusal at `now`: whether it gets a line of its own, and the refusals to sum up in a
    /// line first (how many, over how long), when it is time to.
    pub(crate) fn admit(&mut self, now: Instant) -> (bool, Option<(u64, Duration)>) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * REFUSALS_PER_SEC).min(REFUSALS_BURST);
        self.refilled = now;
        let own = self.tokens >= 1.0;
        if own {
            self.tokens -= 1.0;
        } else {
            self.unlogged += 1;
            self.first_unlogged.get_or_insert(now);
        }
        (own, self.due(now, false))
    }

    /// [`RefusalLog::admit`], writing the summing line with `say` when one is due: whether this
    /// refusal (or drop) gets a line of its own.
    pub(crate) fn line(&mut self, now: Instant, say: fn(Option<(u64, Duration)>)) -> bool {
        let (own, summary) = self.admit(now);
        say(summary);
        own
    }

    /// At shutdown: the summing line, written with `say`, for what is left without a line.
    pub(crate) fn sum_up_last(&mut self, say: fn(Option<(u64, Duration)>)) {
        say(self.due(Instant::now(), true));
    }

    /// The refusals left without a line, to sum up in one (how many, over how long), once the
    /// first of them is [`REFUSALS_SUMMED`] old, or now when `all` (at shutdown).
    pub(crate) fn due(&mut self, now: Instant, all: bool) -> Option<(u64, Duration)> {
        let first = self.first_unlogged?;
        let over = now.saturating_duration_since(first);
        if !all && over < REFUSALS_SUMMED {
            return None;
        }
        self.first_unlogged = None;
        Some((std::mem::take(&mut self.unlogged), over))
    }
}

/// Writes the line that sums up refusals left without one of their own, if there are any.
pub(crate) fn log_refusals_summed(summary: Option<(u64, Duration)>) {
    if let Some((refused, over)) = summary {
        warn!(refused, seconds = over.as_secs(), "requests refused without a line of their own (more than {REFUSALS_PER_SEC} a second after a burst of {REFUSALS_BURST}); all are counted in sse_gateway_http_responses_total");
    }
}

/// Writes the line that sums up dropped upstream messages left without one of their own.
pub(crate) fn log_drops_summed(summary: Option<(u64, Duration)>) {
    if let Some((dropped, over)) = summary {
        warn!(dropped, seconds = over.as_secs(), "upstream messages dropped without a line of their own (more than {REFUSALS_PER_SEC} a second after a burst of {REFUSALS_BURST}); all are counted in sse_gateway_events_dropped_total");
    }
}

/// Sums up the refusals left without a line every [`REFUSALS_SUMMED`] while a flood lasts, and
/// its tail at most a second after that, however quiet it is then (runs until the process ends).
/// `refusals(&owner)` is the log it looks at (the main thread's, a shard's, the sources'), `say`
/// writes the summing line.
pub(crate) async fn sum_up_refusals<T>(owner: Rc<T>, refusals: fn(&T) -> &RefCell<RefusalLog>, say: fn(Option<(u64, Duration)>)) {
    loop {
        sleep(Duration::from_secs(1)).await;
        say(refusals(&owner).borrow_mut().due(Instant::now(), false));
    }
}

/// A thread's budget of `message dropped` lines, shared by its sources ([`drop_log`]).
pub(crate) type DropLog = Rc<RefCell<RefusalLog>>;

/// The budget of `message dropped` lines of a thread's sources: a publisher sending what the
/// catalogue does not take (a schema version it lacks, say) at thousands a second would write
/// as many lines, on the thread that takes every channel's deliveries. Same budget as refusals.
pub(crate) fn drop_log() -> DropLog {
    let log = Rc::new(RefCell::new(RefusalLog::new(Instant::now())));
    spawn(sum_up_refusals(log.clone(), |l| l, log_drops_summed));
    log
}

/// Whether a dropped message gets a line of its own (the rest are summed up).
pub(crate) fn drop_line(log: &RefCell<RefusalLog>) -> bool {
    log.borrow_mut().line(Instant::now(), log_drops_summed)
}

/// Accepts forever (the caller drops this future to stop), a task per connection.
pub(crate) async fn serve(listener: &Listener, ctx: Rc<Ctx>) {
    let mut budget = Budget::default();
    // Accept failures in a row that were not one connection's own.
    let mut failing = 0u64;
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                failing = 0;
                spawn(connection(sock, peer, Busy::new(&ctx)))
            }
            // A connection that went away before it was accepted: the next one is accepted now
            // (a pause would hold every other client back).
            Err(e) if lost_before_accept(&e) => debug!(error = %e, "a connection ended before it was accepted"),
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning, and say so
                // once, then every 100th time while it lasts. Out of descriptors, connections
                // that began no request in time give theirs back meanwhile.
                if out_of_files(&e) {
                    ctx.shed();
                }
                if failing.is_multiple_of(100) {
                    warn!(error = %e, failures = failing + 1, "accept failed");
                }
                failing += 1;
                sleep(Duration::from_millis(100)).await;
            }
        }
        budget.step().await;
    }
}

/// At the shutdown ([`Ctx::stopping`] first), before the listener is closed: the connections the
/// kernel completed and that were not accepted yet are accepted and handled as any connection
/// at the shutdown (a request already sent gets its answer, a stream request 503; one that has
/// sent nothing is closed). Closing the listener with them queued would reset them, answered
/// or not. At most the accept queue's depth: clients that go on connecting meanwhile (a
/// reconnect storm) do not keep the shutdown here. Out of file descriptors, it waits for the
/// connections that began no request to give theirs back (they close at the shutdown; none is
/// shed: a request begun before the signal gets its answer), for at most [`QUEUED_WAIT`].
pub(crate) async fn accept_queued(listener: &Listener, ctx: &Rc<Ctx>) {
    let mut taken = 0usize;
    let give_up = Instant::now() + QUEUED_WAIT;
    for _ in 0..super::listen::BACKLOG {
        let Some(r) = listener.accept_now() else { break };
        match r {
            Ok((sock, peer)) => {
                taken += 1;
                spawn(connection(sock, peer, Busy::new(ctx)))
            }
            Err(e) if lost_before_accept(&e) => {}
            Err(e) if out_of_files(&e) && Instant::now() < give_up => sleep(Duration::from_millis(10)).await,
            Err(_) => break,
        }
    }
    if taken > 0 {
        debug!(connections = taken, "accepted the connections queued at the shutdown");
    }
}

/// How long the shutdown waits for file descriptors to accept the connections queued at it.
const QUEUED_WAIT: Duration = Duration::from_millis(500);

/// An accept error that concerns one connection only (accept(2): to be retried at once), not the
/// listener or the process.
fn lost_before_accept(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    // Linux's accept passes a network error already pending on the new connection; accept(2)
    // says to treat those of TCP/IP as EAGAIN: ENONET (64), EPROTO (71), ENOPROTOOPT (92),
    // EOPNOTSUPP (95), ENETDOWN (100), ENETUNREACH (101), EHOSTDOWN (112), EHOSTUNREACH (113).
    // (EOPNOTSUPP is also a listener that is not SOCK_STREAM: never here, the listener is TCP.)
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        || matches!(e.raw_os_error(), Some(64 | 71 | 92 | 95 | 100 | 101 | 112 | 113))
}

/// Bytes read at once from a connection's request, at most.
const READ_CHUNK: usize = 4096;
/// The first read of a request head: most heads fit, and a connection that stalls after a few
/// bytes holds no more than this.
const FIRST_READ: usize = 1024;

/// Reads up to `want` more bytes onto the end of `buf`, before `deadline` (`None` after it).
/// Into the buffer's own heap memory: a read array in the connection's task would make every
/// task 4 KiB larger, and a task is copied as it is spawned.
/// The buffer grows by exactly what is asked (not doubled): a head that stalls near
/// `server.max_head_bytes` holds about that much, not twice it.
async fn read_more(sock: &mut Socket, buf: &mut Vec<u8>, want: usize, deadline: Instant) -> Option<io::Result<usize>> {
    let len = buf.len();
    buf.reserve_exact(want);
    buf.resize(len + want, 0);
    let read = until(deadline, sock.read(&mut buf[len..])).await;
    buf.truncate(len + read.as_ref().and_then(|r| r.as_ref().ok()).copied().unwrap_or(0));
    read
}

/// When a partial request is worth parsing again: the core parses the whole buffer each time
/// (httparse keeps no state), so a head that arrives a few bytes at a time is parsed when its
/// request line is complete (a bad one is refused at once), when its end has arrived (and after
/// it, for a body), or when it is too large; not on every read in between.
/// Empty lines before the request line are skipped, as the core's parser (httparse) skips them:
/// else they would read as the end of the head, and every read after them would be parsed.
#[derive(Default)]
struct HeadScan {
    /// Where the request line begins, once a byte other than CR and LF came.
    start: Option<usize>,
    line_seen: bool,
    end_seen: bool,
}

impl HeadScan {
    /// `buf[before..]` was just read.
    fn worth_routing(&mut self, buf: &[u8], before: usize, max_head: usize) -> bool {
        if self.end_seen {
            return true;
        }
        let start = match self.start {
            Some(start) => start,
            None => match buf[before..].iter().position(|b| !matches!(b, b'\r' | b'\n')) {
                Some(i) => *self.start.insert(before + i),
                None => return buf.len() > max_head,
            },
        };
        let before = before.max(start);
        // The end may straddle two reads: look from up to 3 bytes back.
        let tail = &buf[before.saturating_sub(3).max(start)..];
        self.end_seen = tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n");
        let line_now = !self.line_seen && buf[before..].contains(&b'\n');
        self.line_seen |= line_now;
        self.end_seen || line_now || buf.len() > max_head
    }
}

async fn connection(mut sock: Socket, peer: SocketAddr, busy: Busy) {
    let ctx = &busy.0;
    let _ = sock.get_ref().set_nodelay(true);
    let server = &ctx.front.settings().config.server;
    let accepted = Instant::now();
    let deadline = accepted + server.head_timeout;
    // No buffer until the client sends something: a connection that stays silent costs its task
    // and socket only (10,000 of them, half-open, in the hostile-input tests). One still silent
    // when the shutdown begins is closed then: it began no request (a browser's preconnect).
    // Until its head is complete, a connection is shed when accept runs out of descriptors.
    let silent = ctx.unless_stopping(until(deadline, sock.readable()));
    match ctx.unless_shed(accepted, silent).await {
        Some(Some(Some(Ok(())))) => {}
        Some(None) | None if has_bytes(&sock) => {} // its request came before: answered
        None => return shed(ctx, peer),
        Some(Some(Some(Err(_)))) | Some(None) => return,
        Some(Some(None)) => return head_timeout(ctx, peer),
    }
    let mut buf = Vec::new();
    let mut scan = HeadScan::default();
    let routed = loop {
        // 1 KiB first; then as much as is there (at least 1 KiB, at most READ_CHUNK), and no
        // more than one byte past the largest head (what would make it too large).
        let want = buf.len().clamp(FIRST_READ, READ_CHUNK).min((server.max_head_bytes + 1).saturating_sub(buf.len()).max(1));
        let before = buf.len();
        let read = async {
            let read = read_more(&mut sock, &mut buf, want, deadline);
            // Readiness may be spurious (tokio's `readable()` says so): until its first byte, a
            // connection still began no request, and the shutdown closes it.
            if before == 0 {
                match ctx.unless_stopping(read).await {
                    // Its first bytes are there, the runtime had not said so yet (a socket
                    // accepted as the shutdown began): a request begun before it, answered.
                    None if has_bytes(&sock) => {
                        buf.truncate(before);
                        Some(read_more(&mut sock, &mut buf, want, deadline).await)
                    }
                    read => read,
                }
            } else {
                Some(read.await)
            }
        };
        let Some(read) = ctx.unless_shed(accepted, read).await else {
            // Its next bytes came, the runtime had not said so yet (tokio's readiness is cached):
            // read on, until the next shed.
            if has_bytes(&sock) {
                buf.truncate(before); // what the dropped read had made room for
                continue;
            }
            return shed(ctx, peer);
        };
        match read {
            None | Some(Some(Ok(0))) | Some(Some(Err(_))) => return,
            Some(None) => return head_timeout(ctx, peer),
            Some(Some(Ok(_))) => {}
        }
        if !scan.worth_routing(&buf, before, server.max_head_bytes) {
            continue;
        }
        match ctx.front.route(&buf, unix_now()) {
            Routed::Partial => continue,
            r => break r,
        }
    };
    let metrics = ctx.front.metrics();
    let settings = ctx.front.settings();
    let resp = match routed {
        Routed::Partial => return,
        // Counted by the core; refusals logged here (never the token, nor the query: it may
        // carry one).
        Routed::Respond(r) => {
            log_refusal(ctx, peer, &r);
            return respond(sock, r, deadline).await;
        }
        Routed::Stream(req) => {
            match sock.into_inner() {
                Ok(std) => {
                    if let Err(e) = super::listen::stream_socket(&std, settings.config.streams.heartbeat) {
                        debug!(%peer, error = %e, "cannot set the stream socket's options");
                    }
                    // Its head completed after the shutdown began: refused here (the shards take
                    // streams until the sources have stopped, up to 3 s later), or by the shards
                    // once they stopped taking them.
                    let refused = if ctx.is_stopping() { Some((std, req)) } else { ctx.shards.open(std, req).await.err() };
                    if let Some((std, req)) = refused {
                        let resp = Response::shutting_down(req.cors_origin.as_deref());
                        match Socket::new(std) {
                            Ok(sock) => {
                                metrics.response(resp.status);
                                log_refusal(ctx, peer, &resp);
                                respond(sock, resp, deadline).await
                            }
                            Err(e) => debug!(%peer, error = %e, "cannot answer a connection"),
                        }
                    }
                }
                Err(e) => debug!(%peer, error = %e, "cannot hand over a connection"),
            }
            return;
        }
        Routed::Publish(p) => match publish(&mut sock, peer, &mut buf, p, deadline, ctx).await {
            // A dropped event (422) has its `event dropped` line.
            Some(r) if r.status == 422 => r,
            Some(r) => {
                log_refusal(ctx, peer, &r);
                r
            }
            None => return,
        },
        Routed::Health => Response::ok_text("ok\n"),
        // A balancer that probes during the drain sends no new streams here.
        Routed::Ready if ctx.is_stopping() => Response::not_ready_stopping(),
        Routed::Ready => Response::ready(&ctx.shards.down(settings)),
        Routed::Metrics => Response::metrics(metrics),
        Routed::DemoPage => {
            let cookie = settings.config.auth.cookie.as_deref().unwrap_or(demo::DEMO_COOKIE);
            Response::with_body(200, "text/html; charset=utf-8", "", None, demo::page(cookie, settings).as_bytes())
        }
    };
    metrics.response(resp.status);
    respond(sock, resp, deadline).await;
}

/// The `request refused` line of a refusal (at most as many as [`RefusalLog`] lets through).
fn log_refusal(ctx: &Ctx, peer: SocketAddr, r: &Response) {
    let Some(refusal) = &r.refusal else { return };
    if !ctx.refusals.borrow_mut().line(Instant::now(), log_refusals_summed) {
        return;
    }
    match refusal {
        Refusal { code, forbidden: Some((user, ch)), .. } => {
            let channel = &ctx.front.settings().channel(*ch).name;
            info!(%peer, status = r.status, code, %user, %channel, "request refused");
        }
        Refusal { code, reason: "", .. } => info!(%peer, status = r.status, code, "request refused"),
        Refusal { code, reason, .. } => info!(%peer, status = r.status, code, reason, "request refused"),
    }
}

/// A connection whose head (or publish body, or `100 Continue` write) was not done by
/// `server.head_timeout`: closed unanswered.
fn head_timeout(ctx: &Ctx, peer: SocketAddr) {
    ctx.front.metrics().head_timeout();
    debug!(%peer, "head timeout");
}

/// Counts a connection closed unanswered by a [`Ctx::shed`].
fn shed(ctx: &Ctx, peer: SocketAddr) {
    ctx.front.metrics().shed();
    debug!(%peer, "shed: its request head was not complete when file descriptors ran out");
}

/// Writes a whole response and closes, within the head deadline (at least a second).
async fn respond(sock: Socket, resp: Response, deadline: Instant) {
    answer_and_close(sock, &resp.bytes, deadline.max(Instant::now() + Duration::from_secs(1))).await;
}

/// Reads the body (the rest of it: part may have come with the head), validates and publishes
/// it. `None` when the client did not send the whole body in time (the connection is dropped).
async fn publish(
    sock: &mut Socket,
    peer: SocketAddr,
    buf: &mut Vec<u8>,
    p: PublishRequest,
    deadline: Instant,
    ctx: &Ctx,
) -> Option<Response> {
    let end = p.head_len + p.content_length;
    let cors = p.cors_origin.as_deref();
    if p.expect_continue && buf.len() == p.head_len {
        // The shards take no more events: accepted now, it would reach no stream. A client
        // waiting for `100 Continue` has not sent its body: answered at once, not asked for it.
        // (One sending its body anyway is read as before: closed with a large body unread, the
        // connection would be reset, the answer lost.)
        if ctx.is_stopping() {
            return Some(Response::publish_shutting_down(cors));
        }
        use futures_lite::AsyncWriteExt;
        match until(deadline, sock.write_all(Response::CONTINUE)).await {
            Some(Ok(())) => {}
            None => {
                head_timeout(ctx, peer);
                return None;
            }
            Some(Err(_)) => return None,
        }
    }
    // Room for the whole body at once (bounded by max_body_bytes): reads then never reallocate.
    buf.reserve_exact(end.saturating_sub(buf.len()));
    while buf.len() < end {
        let want = (end - buf.len()).min(READ_CHUNK);
        match read_more(sock, buf, want, deadline).await {
            Some(Ok(n)) if n > 0 => {}
            None => {
                head_timeout(ctx, peer);
                return None;
            }
            _ => return None,
        }
    }
    // The body is an upstream message: a panic parsing it (a bug) fails this request only, and
    // is counted and logged as the in-process source's own are.
    let failed = || Response::error(500, "internal", "handling the message failed (a bug, logged)", "", cors);
    let msg = match super::contained(|| parse_publish(&buf[p.head_len..end], cors)) {
        Some(Ok(msg)) => msg,
        Some(Err(r)) => return Some(r),
        None => {
            let channel = &ctx.front.settings().channel(p.channel).name;
            super::inproc::handling_panicked(|| ctx.front.metrics().handling_failed(p.channel), channel);
            return Some(failed());
        }
    };
    let unavailable = || Response::error(503, "unavailable", "the in-process source is not running", "", cors);
    let shutting_down = || Response::publish_shutting_down(cors);
    let Some(inproc) = &ctx.inproc else { return Some(unavailable()) };
    if ctx.is_stopping() {
        return Some(shutting_down());
    }
    Some(match inproc.publish(p.channel, msg).await {
        Some(Some(Ok(id))) => Response::published(id, cors),
        Some(Some(Err(d))) => Response::dropped(&d, cors),
        Some(None) => failed(),
        // The shutdown began while it waited its turn: it was not handed to the shards.
        None if ctx.is_stopping() => shutting_down(),
        None => unavailable(),
    })
}

#[cfg(test)]
mod tests {
    use super::{lost_before_accept, HeadScan, RefusalLog};
    use std::io;
    use std::time::{Duration, Instant};

    /// The default configuration's router and one shard on a thread (joined after its
    /// `Shutdown`).
    /// And a token for alice that the router takes.
    fn gateway_parts() -> (sse_gateway_core::Front, super::Shards, Vec<std::thread::JoinHandle<()>>, String) {
        use sse_gateway_core::setup::{load, Env, Overrides};
        let setup = load(None, &Env::default(), &Overrides::default(), &mut |_| Err("no files".into()), &mut || vec![7; 32]).unwrap();
        let secret = setup.hmac_secret().expect("a generated secret");
        let token = sse_gateway_core::issue_hs256(&setup.settings.config.auth, secret, "alice", &[], super::unix_now(), 3600).unwrap();
        let metrics = std::sync::Arc::new(sse_gateway_core::Metrics::new(&setup.settings));
        let (shards, threads) = super::super::shards::spawn(1, &setup.settings, &metrics, 16).unwrap();
        let front = sse_gateway_core::Front::new(setup.settings.clone(), std::sync::Arc::new(setup.verifier), metrics.clone());
        (front, shards, threads, token)
    }

    /// A connection accepted as the shutdown begins, its request already sent, whose task first
    /// runs after the shutdown began: the runtime has not seen the socket readable yet (smol's
    /// readiness waits for a reactor turn; tokio's for the driver's), and it used to be closed
    /// unanswered (a reset) as if it had sent nothing. It is answered.
    #[test]
    fn a_request_sent_before_the_shutdown_is_answered_though_its_task_runs_after() {
        use std::io::{Read, Write};
        use std::rc::Rc;
        let (front, shards, threads, _) = gateway_parts();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
        let (server, peer) = listener.accept().unwrap();
        // Until the request is in the server's socket (a blocking peek), then as a listener hands it over.
        server.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        server.peek(&mut [0u8; 1]).expect("the request arrives");
        server.set_nonblocking(true).unwrap();
        crate::driver::Executor::new().unwrap().block_on(async {
            let ctx = Rc::new(super::Ctx::new(front, shards.clone(), None));
            ctx.stopping();
            let sock = crate::driver::Socket::new(server).unwrap();
            super::connection(sock, peer, super::Busy::new(&ctx)).await;
            shards.shutdown(Instant::now()).await;
        });
        for t in threads {
            t.join().unwrap();
        }
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let read = client.read_to_end(&mut got);
        let got = String::from_utf8_lossy(&got);
        assert!(read.is_ok() && got.starts_with("HTTP/1.1 200"), "{read:?}: {got:?}");
    }

    /// Connections the kernel completed and queued, not accepted yet when the shutdown begins
    /// (here: none was ever accepted), are taken before the listener closes: a request already
    /// sent is answered (a stream request 503), a connection that sent nothing is closed. Closing
    /// the listener with them queued reset them all.
    #[test]
    fn connections_queued_at_the_shutdown_are_answered_not_reset() {
        use std::io::{Read, Write};
        use std::rc::Rc;
        let (front, shards, threads, token) = gateway_parts();
        let mut clients = Vec::new();
        crate::driver::Executor::new().unwrap().block_on(async {
            let listener = crate::listener::Listener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stream = format!("GET /api/v1/streams/deals HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n");
            let requests: [&[u8]; 3] = [b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n", stream.as_bytes(), b""];
            for req in requests {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(req).unwrap();
                clients.push(c);
            }
            std::thread::sleep(Duration::from_millis(50)); // the requests are in the queued sockets
            let ctx = Rc::new(super::Ctx::new(front, shards.clone(), None));
            ctx.stopping();
            super::accept_queued(&listener, &ctx).await;
            drop(listener);
            ctx.settle(Instant::now() + Duration::from_secs(5)).await;
            shards.shutdown(Instant::now()).await;
        });
        for t in threads {
            t.join().unwrap();
        }
        let mut got = Vec::new();
        for mut c in clients {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut bytes = Vec::new();
            let read = c.read_to_end(&mut bytes);
            let end = read.map_or_else(|e| format!("{:?}", e.kind()), |_| "closed".to_string());
            got.push(format!("{end} {}", String::from_utf8_lossy(&bytes[..bytes.len().min(12)])));
        }
        assert_eq!(got, ["closed HTTP/1.1 200", "closed HTTP/1.1 503", "closed "], "how each ended, what it read first");
    }

    #[test]
    fn refusal_lines_are_a_burst_then_a_rate_and_the_rest_are_summed_up() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(t0);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A flood of 1,000 refusals a second for 25 s: 200 lines at once, then 20 a second.
        let (mut own, mut sums) = (0u64, Vec::new());
        for i in 0..25_000u64 {
            let (line, sum) = log.admit(at(i));
            own += u64::from(line);
            sums.extend(sum);
        }
        assert!((200 + 20 * 24..=200 + 20 * 25 + 1).contains(&own), "{own} lines of their own");
        // Summed up every 10 s from the first refusal left without a line (at 0.2 s).
        assert_eq!(sums.len(), 2, "{sums:?}");
        assert!(sums.iter().all(|(_, over)| *over == Duration::from_secs(10)), "{sums:?}");
        let summed: u64 = sums.iter().map(|(n, _)| n).sum();
        // Every refusal is either a line or counted; what is not summed up yet waits for the next.
        assert_eq!(own + summed + log.unlogged, 25_000);
        // Quiet again: the tail is summed up 10 s after its first refusal (the task that asks
        // every second), not at the next refusal.
        let first = log.first_unlogged.expect("a tail");
        let tail = 25_000 - own - summed;
        assert_eq!(log.due(first + Duration::from_millis(9_999), false), None);
        assert_eq!(log.due(first + Duration::from_secs(10), false), Some((tail, Duration::from_secs(10))));
        assert_eq!(log.due(at(60_000), true), None, "summed up once");
        let (line, sum) = log.admit(at(60_000));
        assert!(line);
        assert_eq!(sum, None);
        for i in 1..200 {
            assert!(log.admit(at(60_000 + i)).0, "the burst is back: refusal {i}");
        }
        // At shutdown what is left is summed up however young.
        let skipped = (0..50).filter(|i| !log.admit(at(60_200 + i)).0).count() as u64;
        assert!(skipped >= 40, "past the burst, {skipped} of 50 without a line");
        assert_eq!(log.due(at(60_300), false), None);
        assert_eq!(log.due(at(60_300), true).map(|(n, _)| n), Some(skipped));
    }

    #[test]
    fn only_a_lost_connection_is_accepted_past_at_once() {
        for kind in [io::ErrorKind::ConnectionAborted, io::ErrorKind::ConnectionReset, io::ErrorKind::Interrupted] {
            assert!(lost_before_accept(&io::Error::from(kind)), "{kind:?}");
        }
        // accept(2): the TCP/IP errors pending on the new connection, retried as EAGAIN.
        for errno in [64, 71, 92, 95, 100, 101, 112, 113] {
            assert!(lost_before_accept(&io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
        // EMFILE, ENFILE, ENOBUFS, ENOMEM: the process or the system; backed off.
        for errno in [24, 23, 105, 12] {
            assert!(!lost_before_accept(&io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
    }

    /// Feeds `head` in pieces of `step` bytes; returns after which pieces a route was worth it.
    fn routes(head: &[u8], step: usize, max: usize) -> Vec<usize> {
        let mut scan = HeadScan::default();
        let mut buf = Vec::new();
        let mut at = Vec::new();
        for (i, piece) in head.chunks(step).enumerate() {
            let before = buf.len();
            buf.extend_from_slice(piece);
            if scan.worth_routing(&buf, before, max) {
                at.push(i);
            }
        }
        at
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_is_parsed_at_its_first_line_and_its_end() {
        let head = b"GET /api/v1/streams/deals HTTP/1.1\r\nHost: x\r\nCookie: a=1\r\n\r\n";
        let line = head.iter().position(|&b| b == b'\n').unwrap();
        assert_eq!(routes(head, 1, 16384), [line, head.len() - 1]);
        // Bare line feeds, and the end split over reads in every way.
        let bare = b"GET / HTTP/1.1\nHost: x\n\n";
        assert_eq!(routes(bare, 1, 16384).last(), Some(&(bare.len() - 1)));
        for step in 1..head.len() {
            let at = routes(head, step, 16384);
            assert_eq!(at.last(), Some(&((head.len() - 1) / step)), "step {step}");
        }
        // After the end (a body), every read; past the size limit, every read (431).
        assert_eq!(routes(b"POST / HTTP/1.1\r\n\r\nabc", 1, 16384), [16, 18, 19, 20, 21]);
        assert_eq!(routes(b"GET / HTTP/1.1\r\nX: yyyyyy", 1, 20), [15, 20, 21, 22, 23, 24]);
        // Empty lines before the request line (httparse skips them) are not the end of the head.
        let lead = b"\r\n\r\n\nGET / HTTP/1.1\r\nX: y\r\n\r\n";
        assert_eq!(routes(lead, 1, 16384), [20, lead.len() - 1]);
        for step in 1..lead.len() {
            assert!(routes(lead, step, 16384).len() <= 3, "step {step}");
        }
        // Only empty lines: parsed once past the size limit (431).
        assert_eq!(routes(&[b'\n'; 24], 1, 20), [20, 21, 22, 23]);
    }
}
