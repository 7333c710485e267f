//! The subscriber side, run in a child process (`load --child`): a range of the streams on one
//! current-thread runtime, driven by one command per stdin line, one JSON answer per stdout line.
//!
//! Commands: `prepare` (build the requests of the streams that are not open: sign their tokens,
//! so the clock of the next `connect` measures the server, not our signing), `connect` (open
//! every stream of the range, sending `Last-Event-ID` when a stream has seen an id: a
//! reconnect), `window BASE FIRST LAST` (the events, by payload `n`, each stream must get from
//! now on; `BASE` is the first `n` of this run), `open` (how many streams are open now),
//! `wait TIMEOUT_MS` (until every stream has got `LAST` or was closed, then report),
//! `disconnect`, `quit`.
//!
//! Each stream keeps a bitmap of the window's events it got, so it counts exactly: distinct
//! events received (the rest of the window is lost), duplicates, events that came after a later
//! one (out of order), events of this run from before the window (a resume that replayed too
//! much), the first `n` it got, and, for the gateway's ids (`<epoch>-<seq>`), whether `seq - n`
//! stays the same (the replay carries the right ids). Every run numbers its events from its own
//! base (the parent's wall clock at its start), so an event left over from an earlier run on the
//! same server (still queued in RabbitMQ, still in nchan's buffer) is below `BASE`: counted as
//! foreign, never as one of this run's. Before the first `window` no event is counted at all.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::frame::{Frame, FrameReader};
use crate::unix_ns;

/// Who we talk to.
#[derive(Debug, Clone)]
pub enum Target {
    /// sse-gateway (either binary): `GET /api/v1/streams/{channel}` with an HS256 token of
    /// user `bench-<stream index>`.
    Gateway { secret: String },
    /// nchan: `GET /sub/{channel}`, no credentials.
    Nchan,
}

/// What one child process runs.
#[derive(Debug, Clone)]
pub struct Spec {
    pub target: Target,
    pub addr: SocketAddr,
    pub channel: String,
    /// Global stream indices of this child.
    pub first: usize,
    pub count: usize,
    /// Source addresses are `127.<net>.<a/250>.<2 + a%250>` for address number `a`.
    pub net: u8,
    /// Streams per source address.
    pub per_addr: usize,
    /// Connections in flight (connect sent, head not yet received) at once.
    pub concurrency: usize,
}

impl Spec {
    fn source(&self, global: usize) -> Ipv4Addr {
        let a = global / self.per_addr.max(1);
        Ipv4Addr::new(127, self.net, (a / 250) as u8, (2 + a % 250) as u8)
    }
}

/// An event id kept without allocating per event.
#[derive(Clone, Copy)]
struct SmallId {
    len: u8,
    bytes: [u8; 47],
}

impl SmallId {
    fn set(&mut self, id: &[u8]) {
        let k = id.len().min(self.bytes.len());
        self.bytes[..k].copy_from_slice(&id[..k]);
        self.len = k as u8;
    }
    fn get(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl Default for SmallId {
    fn default() -> Self {
        SmallId { len: 0, bytes: [0; 47] }
    }
}

#[derive(Default, Clone)]
struct StreamState {
    last_id: SmallId,
    /// Bit `n - first` is set once event `n` of the window arrived.
    seen: Vec<u64>,
    max_n: Option<u64>,
    received: u32,
    out_of_order: u32,
    dups: u32,
    stale: u32,
    /// Events not of this run (`n` below the run's base or past the window's end).
    foreign: u32,
    first_n: Option<u64>,
    id_offset: Option<i64>,
    id_mismatch: u32,
    errors: u32,
    done: bool,
    open: bool,
    closed_by_server: bool,
}

struct Shared {
    spec: Spec,
    streams: RefCell<Vec<StreamState>>,
    /// Latency from the event's scheduled publish time `t` (µs).
    hist: RefCell<Histogram<u64>>,
    /// Latency from the time the publisher actually sent it `s` (µs): the figure before the
    /// schedule became the origin, kept beside it.
    hist_sent: RefCell<Histogram<u64>>,
    /// (base, first, last) of the window; `None` until the parent sets one.
    window: Cell<Option<(u64, u64, u64)>>,
    done: Cell<usize>,
    /// Streams the server had closed when the window was set: all their events count as lost.
    closed_before_window: Cell<usize>,
    last_rx_ns: Cell<u64>,
    done_at_ns: Cell<u64>,
    connected: Cell<usize>,
    failed: Cell<usize>,
    /// When the latest stream of a `connect` got its answer (or failed), Unix ns.
    last_head_ns: Cell<u64>,
    /// Requests built by `prepare`, taken by the next `connect`.
    prepared: RefCell<Vec<(usize, Vec<u8>)>>,
    statuses: RefCell<BTreeMap<String, usize>>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
}

/// Events in the window `first..=last` (none when `last` is before `first`).
fn width(first: u64, last: u64) -> u64 {
    last.checked_sub(first).map_or(0, |d| d.saturating_add(1))
}

/// The gateway's `<epoch>-<seq>`: the seq.
fn id_seq(id: &[u8]) -> Option<i64> {
    let (_, seq) = std::str::from_utf8(id).ok()?.rsplit_once('-')?;
    seq.parse().ok()
}

impl Shared {
    fn on_frame(&self, i: usize, f: Frame<'_>, now_ns: u64) {
        let mut streams = self.streams.borrow_mut();
        let st = &mut streams[i];
        if f.event == Some(b"error") {
            st.errors += 1;
        }
        if let Some(id) = f.id {
            st.last_id.set(id);
        }
        let Some(n) = f.n else { return };
        let Some((base, first, last)) = self.window.get() else { return };
        if n < base || n > last {
            st.foreign += 1;
            return;
        }
        if n < first {
            st.stale += 1;
            return;
        }
        let bit = (n - first) as usize;
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        // The bitmap covers the window; a miss here would be a bug of ours, not the server's.
        let Some(w) = st.seen.get_mut(word) else { return };
        st.first_n.get_or_insert(n);
        if *w & mask != 0 {
            // A duplicate: counted, and nothing else (no latency sample, no later last
            // delivery).
            st.dups += 1;
            return;
        }
        *w |= mask;
        st.received += 1;
        if st.max_n.is_some_and(|m| n < m) {
            st.out_of_order += 1;
        }
        st.max_n = Some(st.max_n.map_or(n, |m| m.max(n)));
        if let Some(seq) = f.id.and_then(id_seq) {
            let off = seq - n as i64;
            match st.id_offset {
                None => st.id_offset = Some(off),
                Some(o) if o != off => st.id_mismatch += 1,
                Some(_) => {}
            }
        }
        // Both clocks are the machine's wall clock (publisher and subscribers run on it), read
        // here once per socket read, right after it returned.
        if let Some(t) = f.t {
            // Saturating: a latency past the histogram's 600 s shows as 600 s, not as nothing.
            let us = now_ns.saturating_sub(t) / 1000;
            self.hist.borrow_mut().saturating_record(us.max(1));
        }
        if let Some(s) = f.s {
            let us = now_ns.saturating_sub(s) / 1000;
            self.hist_sent.borrow_mut().saturating_record(us.max(1));
        }
        self.last_rx_ns.set(now_ns);
        if st.received as u64 == width(first, last) && !st.done {
            st.done = true;
            self.done.set(self.done.get() + 1);
            self.done_at_ns.set(now_ns);
        }
    }

    fn set_window(&self, base: u64, first: u64, last: u64) {
        // Events of this run from before the window count as stale, so the window starts at the
        // base at the earliest.
        let first = first.max(base);
        self.window.set(Some((base, first, last)));
        self.closed_before_window.set(self.streams.borrow().iter().filter(|s| s.closed_by_server && !s.open).count());
        let words = (width(first, last) as usize).div_ceil(64);
        for st in self.streams.borrow_mut().iter_mut() {
            st.seen.clear();
            st.seen.resize(words, 0);
            st.max_n = None;
            st.received = 0;
            st.out_of_order = 0;
            st.dups = 0;
            st.stale = 0;
            st.foreign = 0;
            st.first_n = None;
            st.id_mismatch = 0;
            st.errors = 0;
            st.done = false;
            st.closed_by_server = false;
        }
        self.done.set(0);
        self.last_rx_ns.set(0);
        self.done_at_ns.set(0);
        self.hist.borrow_mut().reset();
        self.hist_sent.borrow_mut().reset();
    }

    fn request(&self, global: usize, last_id: &[u8]) -> Vec<u8> {
        let mut r = match &self.spec.target {
            Target::Gateway { secret } => {
                let token = sse_gateway_tests::token::token(secret, &format!("bench-{global}"), &[], 24 * 3600);
                format!(
                    "GET /api/v1/streams/{} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n",
                    self.spec.channel, self.spec.addr
                )
            }
            Target::Nchan => format!(
                "GET /sub/{} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
                self.spec.channel, self.spec.addr
            ),
        }
        .into_bytes();
        if !last_id.is_empty() {
            r.extend_from_slice(b"Last-Event-ID: ");
            r.extend_from_slice(last_id);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"\r\n");
        r
    }

    fn count_status(&self, what: String) {
        *self.statuses.borrow_mut().entry(what).or_default() += 1;
    }
}

/// Runs the child until `quit` or the end of stdin.
pub fn run(spec: Spec) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(spec));
}

async fn serve(spec: Spec) {
    let n = spec.count;
    let shared = Rc::new(Shared {
        spec,
        streams: RefCell::new(vec![StreamState::default(); n]),
        hist: RefCell::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")),
        hist_sent: RefCell::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")),
        window: Cell::new(None),
        done: Cell::new(0),
        closed_before_window: Cell::new(0),
        last_rx_ns: Cell::new(0),
        done_at_ns: Cell::new(0),
        connected: Cell::new(0),
        failed: Cell::new(0),
        last_head_ns: Cell::new(0),
        prepared: RefCell::new(Vec::new()),
        statuses: RefCell::new(BTreeMap::new()),
        tasks: RefCell::new(Vec::new()),
    });
    // Commands come from a thread reading stdin (blocking reads stay off the runtime).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let mut words = line.split_whitespace();
        let reply = match words.next() {
            Some("prepare") => {
                let todo = prepare(&shared);
                let k = todo.len();
                *shared.prepared.borrow_mut() = todo;
                json!({ "prepared": k })
            }
            Some("connect") => connect(&shared).await,
            Some("window") => {
                let nums: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
                match nums[..] {
                    [base, first, last] => {
                        shared.set_window(base, first, last);
                        json!({})
                    }
                    _ => json!({ "error": "window needs BASE FIRST LAST" }),
                }
            }
            Some("open") => {
                let open = shared.streams.borrow().iter().filter(|s| s.open).count();
                json!({ "open": open })
            }
            Some("wait") => {
                let ms = words.next().and_then(|w| w.parse().ok()).unwrap_or(10_000);
                wait(&shared, Duration::from_millis(ms)).await
            }
            Some("disconnect") => {
                for t in shared.tasks.borrow_mut().drain(..) {
                    t.abort();
                }
                for st in shared.streams.borrow_mut().iter_mut() {
                    st.open = false;
                }
                // Let the aborted tasks drop (and so close) their sockets.
                tokio::time::sleep(Duration::from_millis(100)).await;
                json!({})
            }
            Some("quit") | None => break,
            Some(other) => json!({ "error": format!("unknown command {other}") }),
        };
        println!("{reply}");
    }
}

/// The requests of the streams that are not open (tokens signed, `Last-Event-ID` of a reconnect).
fn prepare(shared: &Shared) -> Vec<(usize, Vec<u8>)> {
    let streams = shared.streams.borrow();
    (0..shared.spec.count)
        .filter(|&i| !streams[i].open)
        .map(|i| (i, shared.request(shared.spec.first + i, streams[i].last_id.get())))
        .collect()
}

/// Opens every stream of the range that is not open; answers once each has its response head
/// (or failed). Start and end are wall-clock instants (Unix ns), so the parent can take the rate
/// over all processes from the earliest start to the latest end: each process's own duration
/// would leave out the time one ran while the other had not started.
async fn connect(shared: &Rc<Shared>) -> Value {
    let t0 = Instant::now();
    shared.connected.set(0);
    shared.failed.set(0);
    shared.last_head_ns.set(0);
    shared.statuses.borrow_mut().clear();
    let sem = Rc::new(Semaphore::new(shared.spec.concurrency.max(1)));
    // Requests (tokens signed) before the clock starts: the stream opens, not our signing. Done
    // by `prepare` when the parent sent it (every process signs before any connects).
    let prepared = std::mem::take(&mut *shared.prepared.borrow_mut());
    let todo = if prepared.is_empty() { prepare(shared) } else { prepared };
    let want = todo.len();
    let (t_start, start_ns) = (Instant::now(), unix_ns());
    for (i, req) in todo {
        let task = tokio::task::spawn_local(stream(shared.clone(), i, req, sem.clone()));
        shared.tasks.borrow_mut().push(task);
    }
    while shared.connected.get() + shared.failed.get() < want {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The last answer's own time, not when this loop noticed it (up to 2 ms later).
    let end_ns = if want == 0 { start_ns } else { shared.last_head_ns.get().max(start_ns) };
    json!({
        "ok": shared.connected.get(),
        "failed": shared.failed.get(),
        "secs": (end_ns - start_ns) as f64 / 1e9,
        "start_unix_ns": start_ns,
        "end_unix_ns": end_ns,
        "loop_secs": t_start.elapsed().as_secs_f64(),
        "prepare_secs": (t_start - t0).as_secs_f64(),
        "statuses": *shared.statuses.borrow(),
    })
}

/// One stream: connect from its source address, send the request, read the head, then parse
/// frames until the server closes (or the task is aborted).
async fn stream(shared: Rc<Shared>, i: usize, req: Vec<u8>, sem: Rc<Semaphore>) {
    let permit = sem.acquire().await.expect("semaphore open");
    let src = shared.spec.source(shared.spec.first + i);
    let opened = tokio::time::timeout(Duration::from_secs(60), async {
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(src.into(), 0))?;
        let mut s = sock.connect(shared.spec.addr).await?;
        s.set_nodelay(true)?;
        s.write_all(&req).await?;
        let mut head = Vec::with_capacity(512);
        let mut chunk = [0u8; 2048];
        loop {
            let k = s.read(&mut chunk).await?;
            if k == 0 {
                return Err(std::io::Error::other("closed before the head"));
            }
            head.extend_from_slice(&chunk[..k]);
            if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
                let rest = head.split_off(end + 4);
                return Ok((s, head, rest));
            }
        }
    })
    .await;
    drop(permit);
    shared.last_head_ns.set(unix_ns());
    let (mut s, head, rest) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            shared.count_status(format!("io: {}", e.kind()));
            shared.failed.set(shared.failed.get() + 1);
            return;
        }
        Err(_) => {
            shared.count_status("timeout".into());
            shared.failed.set(shared.failed.get() + 1);
            return;
        }
    };
    let head_text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head_text.split(' ').nth(1).unwrap_or("?").to_string();
    shared.count_status(status.clone());
    if status != "200" {
        shared.failed.set(shared.failed.get() + 1);
        return;
    }
    let chunked = head_text.contains("transfer-encoding: chunked");
    shared.streams.borrow_mut()[i].open = true;
    shared.connected.set(shared.connected.get() + 1);
    let mut reader = FrameReader::new(chunked);
    let now = unix_ns();
    reader.feed(&rest, |f| shared.on_frame(i, f, now));
    let mut buf = vec![0u8; 8192];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                let now = unix_ns();
                reader.feed(&buf[..k], |f| shared.on_frame(i, f, now));
            }
        }
    }
    let mut streams = shared.streams.borrow_mut();
    streams[i].open = false;
    streams[i].closed_by_server = true;
}

/// How long a `wait` goes on at most while events still arrive.
const WAIT_CAP: Duration = Duration::from_secs(600);

/// Waits until every stream got every event of the window or is closed, or until no event
/// arrived for `stall` (what is missing then is lost, not late), at most [`WAIT_CAP`]. Says
/// which ended it (`wait_end`): `complete`, `stalled` or `cap` (events were still arriving).
async fn wait(shared: &Rc<Shared>, stall: Duration) -> Value {
    let t0 = Instant::now();
    let (mut seen, mut since) = (shared.last_rx_ns.get(), Instant::now());
    let end = loop {
        let finished = {
            let streams = shared.streams.borrow();
            streams.iter().filter(|s| s.done || !s.open).count()
        };
        if finished >= shared.spec.count {
            break "complete";
        }
        let rx = shared.last_rx_ns.get();
        if rx != seen {
            (seen, since) = (rx, Instant::now());
        } else if since.elapsed() >= stall {
            break "stalled";
        }
        if t0.elapsed() >= WAIT_CAP {
            break "cap";
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (first, span) = match shared.window.get() {
        Some((_, first, last)) => (first, width(first, last)),
        None => (0, 0),
    };
    let streams = shared.streams.borrow();
    let mut r = json!({});
    let (mut received, mut lost, mut lossy, mut dups, mut stale, mut mism, mut errors, mut closed, mut exact, mut open) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut ooo, mut foreign) = (0u64, 0u64);
    for st in streams.iter() {
        received += st.received as u64;
        let missing = span.saturating_sub(st.received as u64);
        lost += missing;
        lossy += u64::from(missing > 0);
        ooo += st.out_of_order as u64;
        dups += st.dups as u64;
        stale += st.stale as u64;
        foreign += st.foreign as u64;
        mism += st.id_mismatch as u64;
        errors += st.errors as u64;
        closed += u64::from(st.closed_by_server);
        open += u64::from(st.open);
        exact += u64::from(
            missing == 0
                && st.dups == 0
                && st.stale == 0
                && st.out_of_order == 0
                && st.id_mismatch == 0
                && st.first_n == Some(first),
        );
    }
    let pairs = |h: &Histogram<u64>| -> Vec<[u64; 2]> { h.iter_recorded().map(|v| [v.value_iterated_to(), v.count_at_value()]).collect() };
    r["streams"] = json!(shared.spec.count);
    r["open"] = json!(open);
    r["complete"] = json!(shared.done.get());
    r["received"] = json!(received);
    r["lost"] = json!(lost);
    r["lossy_streams"] = json!(lossy);
    r["out_of_order"] = json!(ooo);
    r["dups"] = json!(dups);
    r["stale"] = json!(stale);
    r["foreign"] = json!(foreign);
    r["id_mismatch"] = json!(mism);
    r["errors"] = json!(errors);
    r["closed_by_server"] = json!(closed);
    r["exact"] = json!(exact);
    r["last_rx_ns"] = json!(shared.last_rx_ns.get());
    r["done_at_ns"] = json!(shared.done_at_ns.get());
    r["waited_secs"] = json!(t0.elapsed().as_secs_f64());
    r["wait_end"] = json!(end);
    r["closed_before_window"] = json!(shared.closed_before_window.get());
    r["hist"] = json!(pairs(&shared.hist.borrow()));
    r["hist_sent"] = json!(pairs(&shared.hist_sent.borrow()));
    r
}
