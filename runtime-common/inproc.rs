//! The in-process source (D14): one task per channel owns that channel's `Ingest`; the publish
//! endpoint and the demo generator hand it messages and get the event id or the drop back.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use async_channel::{bounded, Sender};

use sse_gateway_core::{demo, process_epoch, ChannelId, Dropped, EventId, Ingest, Metrics, Settings, UpstreamMessage};
use tracing::{error, info, warn};

use super::shards::Shards;
use crate::driver::{spawn, Timer};

/// What became of one message: its event id or why it was dropped; `None` if handling it
/// panicked (a bug).
pub(crate) type Outcome = Option<Result<EventId, Dropped>>;

/// Where a channel's task sends the outcome of one message (a channel of one).
type Reply = Sender<Outcome>;

/// Senders to each channel's ingest task, by channel index.
#[derive(Clone, Debug)]
pub(crate) struct Inproc {
    txs: Arc<[Sender<(UpstreamMessage, Reply)>]>,
    /// The budget of `event dropped` lines (summed up one last time at shutdown).
    pub(crate) drops: super::request::DropLog,
    /// Set when the shutdown begins, before the shards are told: none is handed over from then
    /// on (a shard still takes what its queue holds when its `Shutdown` comes, then closes the
    /// queue; an event handed over later would fail, its publisher answered 503).
    stopped: Rc<Cell<bool>>,
    /// Events being handed to the shards now (a shard's queue may be full): the shutdown waits
    /// for them ([`Inproc::handed`]) before it tells the shards, so none comes behind a shard's
    /// `Shutdown` after its publisher was answered 202.
    handing: Rc<Cell<usize>>,
}

impl Inproc {
    /// Starts one ingest task per channel (ids `<epoch>-<seq>`, the epoch [`process_epoch`] of `started`) and marks the sources up.
    pub(crate) async fn start(settings: &Arc<Settings>, metrics: &Arc<Metrics>, shards: &Shards, started: std::time::Duration) -> Inproc {
        let mut txs = Vec::new();
        let drops = super::request::drop_log();
        let stopped = Rc::new(Cell::new(false));
        let handing = Rc::new(Cell::new(0));
        for (i, ch) in settings.channels.iter().enumerate() {
            let Some(id) = settings.channel_id(&ch.name) else { continue };
            debug_assert_eq!(id.index(), i);
            let (tx, rx) = bounded(256);
            txs.push(tx);
            let ingest = Ingest::new(settings.clone(), metrics.clone(), id, process_epoch(started, id));
            let ends = Ends { stopped: stopped.clone(), handing: handing.clone() };
            spawn(run(ingest, rx, shards.clone(), ch.name.clone(), drops.clone(), ends));
            shards.source(id, true).await;
        }
        Inproc { txs: txs.into(), drops, stopped, handing }
    }

    /// The shutdown begins: messages not handed to the shards yet get no event id (their
    /// publishers are refused 503), instead of an id for an event no stream would get.
    pub(crate) fn stop(&self) {
        self.stopped.set(true);
    }

    /// After [`Inproc::stop`]: waits until no event is being handed to the shards (they take
    /// their queues meanwhile, so this is short), or `limit` passes.
    pub(crate) async fn handed(&self, limit: Instant) {
        super::until_zero(&self.handing, limit, std::time::Duration::from_millis(1)).await;
    }

    /// Validates and publishes one message; `None` if the channel's task is gone or the
    /// shutdown began before the message was handed to the shards.
    pub(crate) async fn publish(&self, ch: ChannelId, mut msg: UpstreamMessage) -> Option<Outcome> {
        msg.received = Some(Instant::now());
        let (tx, rx) = bounded(1);
        self.txs.get(ch.index())?.send((msg, tx)).await.ok()?;
        rx.recv().await.ok()
    }
}

/// What a channel's task shares with [`Inproc`] for the shutdown.
struct Ends {
    stopped: Rc<Cell<bool>>,
    handing: Rc<Cell<usize>>,
}

async fn run(
    mut ingest: Ingest,
    rx: async_channel::Receiver<(UpstreamMessage, Reply)>,
    shards: Shards,
    name: String,
    drops: super::request::DropLog,
    ends: Ends,
) {
    while let Ok((msg, reply)) = rx.recv().await {
        if ends.stopped.get() {
            continue; // the reply is dropped: the publisher is told 503
        }
        // A panic (a bug) drops the event; the publisher's request is told so.
        let Some(result) = crate::common::contained(|| ingest.handle_message(&msg)) else {
            handling_panicked(|| ingest.handling_failed(), &name);
            let _ = reply.try_send(None);
            continue;
        };
        match &result {
            Ok(ev) => {
                ends.handing.set(ends.handing.get() + 1);
                let reached = shards.event(ev).await;
                ends.handing.set(ends.handing.get() - 1);
                if !reached {
                    continue; // a shard had shut down: no reply, the publisher gets 503 shutting_down
                }
            }
            Err(d) => {
                if super::request::drop_line(&drops) {
                    warn!(channel = %name, reason = d.reason.label(), detail = %d.detail, "event dropped");
                }
            }
        }
        let _ = reply.try_send(Some(result.map(|ev| ev.id())));
    }
}

/// Demo mode: a sample event on every channel every `demo.interval`, event types in turn (the
/// first at once; after a stall the next comes an interval later, not in a burst).
pub(crate) fn start_demo(settings: &Arc<Settings>, inproc: Inproc) {
    let channels: Vec<(ChannelId, String)> =
        settings.channels.iter().filter_map(|c| Some((settings.channel_id(&c.name)?, c.name.clone()))).collect();
    let interval = settings.config.demo.interval;
    let settings = settings.clone();
    let fits = move |name: &str, n| demo::sample_for(&settings, name, n, demo::DEMO_USER);
    for (_, name) in channels.iter().filter(|(_, name)| (0..demo::SAMPLE_PERIOD).all(|n| fits(name, n).is_none())) {
        info!(channel = %name, "no demo samples for this channel (not a seed channel, or none its catalogue takes)");
    }
    spawn(async move {
        let mut n = 0u64;
        let mut at = Instant::now();
        let mut tick = Timer::at(at);
        loop {
            (&mut tick).await;
            for (id, name) in &channels {
                if let Some(msg) = fits(name, n) {
                    let _ = inproc.publish(*id, msg).await;
                }
            }
            n += 1;
            let now = Instant::now();
            at = if at + interval > now { at + interval } else { now + interval };
            tick.set_at(at);
        }
    });
}

/// A message whose handling panicked (a bug, logged by the panic hook): `count` counts it as
/// dropped, `internal`, and the line says so.
pub(crate) fn handling_panicked(count: impl FnOnce(), channel: &str) {
    count();
    error!(%channel, "event dropped: handling it panicked (a bug, logged above)");
}
