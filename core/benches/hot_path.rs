//! Core hot path: one event in, frames queued for N streams, outputs drained as a frontend would.
//! Reports ns per delivery and heap allocations per delivery (a counting global allocator), after
//! checking that every stream was handed every event (frames and bytes drained = streams x
//! events): a delivery skipped would otherwise make the figure look better. Then, on its own
//! line, what one event costs on its way in (validation and encoding, `Ingest::handle_message`),
//! paid once per event whatever the streams, so not part of the per-delivery figures.
//!
//! Run: `cargo bench -p sse-gateway-core --bench hot_path`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sse_gateway_core::*;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SECRET: &str = "bench-secret-of-at-least-32-bytes!";

fn main() {
    for n in [1_000usize, 10_000] {
        run(n, 200, 1);
    }
    // A busy channel: events come faster than a stream's writes, so each write takes several
    // (at 1,000 events/s, 5 to 100 per write were seen); a stream's queue must not be freed and
    // grown again on every write.
    for n in [1_000usize, 10_000] {
        run(n, 200, 50);
    }
    ingest(20_000);
}

/// `events` events to `streams` streams, the outputs drained after every `batch` events.
fn run(streams: usize, events: usize, batch: usize) {
    let text = format!("[auth]\nsecret = \"{SECRET}\"\n[streams]\nmax_per_user = 1\nbuffer_events = 64\n");
    let settings = Arc::new(Settings::new(Config::from_toml(&text).unwrap(), Catalogue::seed()).unwrap());
    let metrics = Arc::new(Metrics::new(&settings));
    let keys = KeyMaterial { secret: Some(SECRET.as_bytes().to_vec()), ..Default::default() };
    let front = Front::new(settings.clone(), Arc::new(JwtVerifier::new(&settings.config.auth, &keys).unwrap()), metrics.clone());
    let mut gw = Gateway::new(settings.clone(), metrics.clone(), streams + 1, 1);
    let deals = settings.channel_id("deals").unwrap();
    let mut ingest = Ingest::new(settings.clone(), metrics.clone(), deals, 1);
    let now = Instant::now();
    let unix = 1_900_000_000;

    // Open N streams, one user each, through the real router (HS256 tokens).
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(streams);
    for i in 0..streams {
        let claims = serde_json::json!({"sub": format!("user-{i}"), "exp": unix + 3600});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let head = format!(
            "GET /api/v1/streams/deals HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let Routed::Stream(req) = front.route(head.as_bytes(), unix) else { panic!("routing") };
        ids.push(gw.open(req, now, Duration::from_secs(unix)).unwrap());
    }
    let open_time = t0.elapsed();
    let mut out = Vec::with_capacity(64);
    drain(&mut gw, &mut out, now);
    let mut drained = Drained::default();

    let body = r#"{"deal_id":"6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b","changes":{"status":"issuing"},"updated_at":"2026-11-28T10:00:00Z","version":5}"#;
    let msg = |_| UpstreamMessage {
        kind: Some("deal.updated".into()),
        routing_key: "deal.updated".into(),
        body: bytes::Bytes::from_static(body.as_bytes()),
        // Timed as the frontends' are: each take records a delay.
        received: Some(now),
        ..Default::default()
    };
    // Warm-up: grow every queue to its steady-state capacity.
    for i in 0..2 * batch.max(5) {
        let ev = ingest.handle_message(&msg(i)).unwrap();
        gw.handle_event(&ev);
        if (i + 1) % batch == 0 {
            drain(&mut gw, &mut out, now);
        }
    }
    // Whatever the warm-up left queued goes now, so the timed loop drains only its own events.
    drain(&mut gw, &mut out, now);
    let evs: Vec<Event> = (0..events).map(|i| ingest.handle_message(&msg(i)).unwrap()).collect();
    let a0 = ALLOCS.load(Relaxed);
    let t0 = Instant::now();
    let mut fanout = Duration::ZERO;
    for (i, ev) in evs.iter().enumerate() {
        let f0 = Instant::now();
        gw.handle_event(ev);
        fanout += f0.elapsed();
        if (i + 1) % batch == 0 {
            drained += drain(&mut gw, &mut out, now);
        }
    }
    // A last partial batch (none when `batch` divides `events`).
    drained += drain(&mut gw, &mut out, now);
    let total = t0.elapsed();
    let allocs = ALLOCS.load(Relaxed) - a0;
    let want = Drained {
        frames: (streams * events) as u64,
        bytes: streams as u64 * evs.iter().map(|e| e.frame().len() as u64).sum::<u64>(),
    };
    assert_eq!(drained, want, "streams={streams} events={events}: every stream must be handed every event, once");
    let deliveries = (streams * events) as f64;
    println!(
        "streams={streams:>6} events={events} per write={batch:>2} deliveries={deliveries:.0}: fan-out {:.1} ns/delivery, \
         fan-out+drain {:.1} ns/delivery, {:.4} allocations/delivery; open {:.2} µs/stream (route+verify+open)",
        fanout.as_nanos() as f64 / deliveries,
        total.as_nanos() as f64 / deliveries,
        allocs as f64 / deliveries,
        open_time.as_nanos() as f64 / streams as f64 / 1000.0,
    );
}

/// Frames and bytes handed out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Drained {
    frames: u64,
    bytes: u64,
}

impl std::ops::AddAssign for Drained {
    fn add_assign(&mut self, o: Drained) {
        self.frames += o.frames;
        self.bytes += o.bytes;
    }
}

/// What a frontend does after an input: every Transmit takes the stream's frames. Counts them
/// as it goes: the frames are what `take_output` put in `out`, the bytes what it says it moved
/// (two additions per write, nothing per frame, so the count does not weigh on the timing).
fn drain(gw: &mut Gateway, out: &mut Vec<bytes::Bytes>, now: Instant) -> Drained {
    let mut d = Drained::default();
    while let Some(o) = gw.poll_output() {
        if let Output::Transmit(id) = o {
            d.bytes += gw.take_output(id, out, now) as u64;
            d.frames += out.len() as u64;
            out.clear();
        }
    }
    d
}

/// One event's way in, `events` times: `Ingest::handle_message` (the catalogue's validation of
/// the payload, the SSE frame's encoding), with the heap allocations it makes. The messages are
/// built before the clock starts and the events dropped after it stops.
fn ingest(events: usize) {
    let text = format!("[auth]\nsecret = \"{SECRET}\"\n");
    let settings = Arc::new(Settings::new(Config::from_toml(&text).unwrap(), Catalogue::seed()).unwrap());
    let metrics = Arc::new(Metrics::new(&settings));
    let deals = settings.channel_id("deals").unwrap();
    let mut ingest = Ingest::new(settings.clone(), metrics.clone(), deals, 1);
    let body = r#"{"deal_id":"6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b","changes":{"status":"issuing"},"updated_at":"2026-11-28T10:00:00Z","version":5}"#;
    let msgs: Vec<UpstreamMessage> = (0..events)
        .map(|_| UpstreamMessage {
            kind: Some("deal.updated".into()),
            routing_key: "deal.updated".into(),
            body: bytes::Bytes::from_static(body.as_bytes()),
            received: Some(Instant::now()),
            ..Default::default()
        })
        .collect();
    // Warm-up (first-use allocations: metric labels, lazily built validators).
    for m in msgs.iter().take(100) {
        ingest.handle_message(m).unwrap();
    }
    let mut evs = Vec::with_capacity(events);
    let a0 = ALLOCS.load(Relaxed);
    let t0 = Instant::now();
    for m in &msgs {
        evs.push(ingest.handle_message(m).unwrap());
    }
    let took = t0.elapsed();
    let allocs = ALLOCS.load(Relaxed) - a0;
    let frame_bytes = evs.iter().map(|e| e.frame().len()).sum::<usize>() as f64 / events as f64;
    println!(
        "ingest events={events}: {:.1} ns/event, {:.2} allocations/event (validate + encode, {frame_bytes:.0}-byte frame; once per event, not per delivery)",
        took.as_nanos() as f64 / events as f64,
        allocs as f64 / events as f64,
    );
    drop(evs);
}
