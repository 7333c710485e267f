//! The shard side of reading a stream back for a resuming client (`Output::Backfill`).
//!
//! A read-back is a task on the shard's thread. Right after a start it first waits (up to
//! `FIRST_WAIT`) for the channel's source to reach the broker. It waits for a turn (the process
//! runs at most `READ_BACKS` at once; the rest queue in arrival order, holding nothing but their
//! place, for at most [`TURN_WAIT`], then `history_gap`), opens a consumer at the client's last offset
//! (from [`WARM_MAX`] or the channel's `buffer_events` messages before it, whichever is fewer:
//! those only fill the read-back's `message_id` window, so that a publisher's retry of an event
//! the client had is dropped as live) and hands each message from there to
//! `Gateway::backfill_message` until the core says `Finished`. One that has
//! held its turn for [`TURN`] while others wait gives it up and queues again, continuing where it
//! stopped (as after a pause, below): a long catch-up for a client that reads slowly but
//! steadily does not keep the others, which get no live events meanwhile, waiting.
//! The first message proves the stream still holds that offset; the core
//! answers `history_gap` otherwise. When the stream's output is at its bound (`Pause`) the task
//! waits for the writer; if the client takes longer than [`PAUSE_HOLD`], the task closes its
//! consumer and gives its turn up, and opens a new one at the last offset it handed over once
//! the client has read (the core checks its first message as a first read's, against what the
//! client already has: `Gateway::backfill_reopened`; a loss past that is `history_gap`).
//! Nothing delivered for `IDLE` after that is the end of the stream: `backfill_done(true)`, and
//! the core continues from where it got to (or says `history_gap` if that was nothing past the
//! client's place while the buffer begins later). Nothing from a consumer within `FIRST_WAIT`,
//! the client's place not reached within [`PLACE_WAIT`] of the consumer's start (the warm-up,
//! the messages before it read only for the `message_id` window, included: an offset past the
//! stream's end reads only messages below it, as does a lagging replica), or any error:
//! `backfill_done(false)` (`history_gap`, then live after the client's id).
//!
//! So a read-back holds at most one AMQP channel, `PREFETCH` messages and the stream's output
//! bound, and a client that stops reading holds none of the shared turns for long.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use sse_gateway_core::{BackfillStep, ChannelId, EventId, StreamId};
use tracing::{debug, info};

use super::Shard;
use crate::common::amqp::stream_log::{LogReader, FIRST_WAIT, IDLE};
use crate::common::until;
use crate::driver::spawn;

/// How long a paused read-back keeps its consumer and its turn for a client to read.
const PAUSE_HOLD: Duration = Duration::from_secs(2);
/// How long a read-back keeps its turn while others wait for one.
const TURN: Duration = Duration::from_secs(5);
/// How long a read-back waits for a turn before its stream gets `history_gap` (and goes live).
const TURN_WAIT: Duration = Duration::from_secs(30);

/// How long after a read-back's consumer starts the client's place (the message at its offset)
/// may come, the warm-up before it included (at most [`WARM_MAX`] messages and a chunk).
const PLACE_WAIT: Duration = Duration::from_secs(15);

/// Most messages read before the client's place only to fill the `message_id` window (a
/// channel's `buffer_events` may be far larger: the warm-up holds a turn).
const WARM_MAX: usize = 4096;

/// The client's place did not come within [`PLACE_WAIT`] of the read-back's start: said at info
/// (an operator's cue for a forged or stale id, or a lagging replica); the read-back's error.
fn place_missed(id: StreamId, at: u64) -> String {
    info!(stream = %id, offset = at, "the client's place did not come within {PLACE_WAIT:?} of reading the stream back (an id past the stream's end?); the stream gets history_gap");
    format!("offset {at} did not come within {PLACE_WAIT:?} of the start")
}

/// How a read-back ended without an error.
enum End {
    /// The core has what it needs (or the stream is gone).
    Finished,
    /// Nothing more arrived: the end of the stream.
    LogEnd,
}

impl Shard {
    /// Answers `Output::Backfill` for `stream`: reads `channel`'s stream from `after`'s offset
    /// in a task of its own; without a reader (no stream source) the stream gets `history_gap`.
    /// The client's place must come within [`PLACE_WAIT`].
    pub(super) fn read_back(self: &Rc<Self>, stream: StreamId, channel: ChannelId, after: EventId) {
        let reader = self.log.borrow().clone();
        match reader {
            Some(reader) => {
                debug!(stream = %stream, offset = after.seq, "reading the stream back");
                spawn(self.clone().read_back_task(reader, stream, channel, after.seq))
            }
            None => self.gw.borrow_mut().backfill_done(stream, false),
        }
    }

    async fn read_back_task(self: Rc<Self>, reader: Arc<LogReader>, id: StreamId, channel: ChannelId, from: u64) {
        let end = self.read_log(&reader, id, channel, from).await;
        // The end of a read-back may go live from the buffer (`backfill_done`): a token that
        // expired meanwhile is closed first.
        self.handle_due();
        match end {
            Ok(End::Finished) => {}
            Ok(End::LogEnd) => self.gw.borrow_mut().backfill_done(id, true),
            Err(e) => {
                // At debug: most are the client's own place (one the stream no longer holds, or
                // never held) or an outage the source logs. One that could not start (the
                // read-back connection, its channel or consumer) was logged at warn by
                // `LogReader::open`, rate-limited.
                debug!(stream = %id, error = %e, "read-back failed; the stream gets history_gap");
                self.gw.borrow_mut().backfill_done(id, false);
            }
        }
        self.drain();
    }

    async fn read_log(self: &Rc<Self>, reader: &LogReader, id: StreamId, channel: ChannelId, from: u64) -> Result<End, String> {
        let mut at = from;
        let mut reopened = false;
        // One window for the whole read-back: a retry after a pause is still a retry. It is
        // filled first with the messages up to the client's place, as many as it holds, read
        // and not handed over: a publisher's retry of one of them, which the live source
        // dropped (its window held the original), is dropped here too.
        let mut seen = reader.window(channel)?;
        let warm_from = from.saturating_sub(seen.window().min(WARM_MAX) as u64);
        reader.source_ready(channel).await?;
        loop {
            // A client that leaves while its read-back waits gives its place up at once: left
            // in the queue, it would count as waiting, and a working read-back would give its
            // turn up for it.
            let wait = async { Some(reader.permit(Instant::now() + TURN_WAIT).await) };
            let permit = future::or(wait, async {
                self.gone(id).await;
                None
            })
            .await;
            let Some(permit) = permit.filter(|_| self.gw.borrow().is_backfilling(id)) else {
                return Ok(End::Finished); // the stream closed, or the client left, while waiting its turn
            };
            let Some(permit) = permit else {
                info!(stream = %id, offset = at, "no read-back turn within 30 s; the stream gets history_gap");
                return Err(format!("no read-back turn within {TURN_WAIT:?}"));
            };
            let mut cursor = reader.open(channel, if reopened { at } else { warm_from }, permit).await?;
            let opened = Instant::now();
            let turn_ends = opened + TURN;
            // The client's place must come within PLACE_WAIT of the open, the warm-up before it
            // included: an offset past the stream's end (a forged id, a stream recreated without
            // a new epoch; only a shard that holds nothing of the log asks for one) would
            // otherwise read every new message as warm-up, for as long as they keep coming, as
            // would a warm-up from a replica lagging behind, holding the turn and leaving the
            // stream without events.
            let place_by = (!reopened).then_some(opened + PLACE_WAIT);
            let mut first = true;
            loop {
                let wait = match place_by {
                    Some(by) if first => FIRST_WAIT.min(by.saturating_duration_since(Instant::now())),
                    _ if first => FIRST_WAIT,
                    _ => IDLE,
                };
                let next = cursor.next(wait, &mut seen).await;
                let (pos, ev) = match next {
                    Ok(Some(m)) => m,
                    Ok(None) if first => {
                        // The message at `at` did not come: a broker slow to seek, or an offset
                        // the stream does not hold (yet). Going live would skip whatever it holds
                        // past `at`; nothing proves the client's place: history_gap.
                        cursor.close().await;
                        if place_by.is_some_and(|by| Instant::now() >= by) {
                            return Err(place_missed(id, at));
                        }
                        return Err(format!("offset {at} did not come (nothing for {FIRST_WAIT:?})"));
                    }
                    Ok(None) => {
                        cursor.close().await;
                        return Ok(End::LogEnd);
                    }
                    Err(e) => {
                        cursor.close().await;
                        return Err(e);
                    }
                };
                if !reopened && pos < from {
                    // Only for the window (`seen`); `first` waits for the client's place.
                    if !self.gw.borrow().is_backfilling(id) {
                        cursor.close().await;
                        return Ok(End::Finished); // the stream closed, or the client left
                    }
                    // Messages below the client's place that keep coming (a broker's replica
                    // behind the one the live source reads, say) would hold the turn, and the
                    // stream without events, for as long as they come: `history_gap` at
                    // PLACE_WAIT, as a place past the stream's end gets (a warm-up that slow, from
                    // a slow broker, too: the client is told and refetches; reopened at its place
                    // instead, the first message would no longer prove that place).
                    if place_by.is_some_and(|by| Instant::now() >= by) {
                        cursor.close().await;
                        return Err(place_missed(id, at));
                    }
                    continue;
                }
                if std::mem::take(&mut first) && reopened {
                    // The core checks it as it checked the first read.
                    self.gw.borrow_mut().backfill_reopened(id);
                }
                self.handle_due();
                let step = self.gw.borrow_mut().backfill_message(id, pos, ev.as_ref());
                self.drain();
                at = pos;
                match step {
                    BackfillStep::Continue => {}
                    BackfillStep::Finished => {
                        cursor.close().await;
                        return Ok(End::Finished);
                    }
                    BackfillStep::Pause => {
                        if !self.drained(id, Some(Instant::now() + PAUSE_HOLD)).await {
                            // A slow reader: give the turn and the consumer up meanwhile.
                            debug!(stream = %id, offset = at, "read-back paused: the client is not reading; its turn goes to the next");
                            cursor.close().await;
                            self.drained(id, None).await;
                            reopened = true;
                            break;
                        }
                    }
                }
                if Instant::now() >= turn_ends {
                    if let Some(handoff) = reader.claim_handoff() {
                        debug!(stream = %id, offset = at, "read-back gives its turn to a waiting one");
                        // The turn goes straight to the read-back that waited longest; this
                        // one queues again behind the rest.
                        cursor.close().await;
                        drop(handoff);
                        reopened = true;
                        break;
                    }
                }
            }
        }
    }

    /// Resolves once the core no longer reads the stream back: it closed the stream (a `Close`
    /// notifies `drained`, though its client may take seconds to let the connection go) or let
    /// it go (its writer ends with a last `drained`); never while the read-back is wanted, even
    /// without a writer to wait on.
    async fn gone(&self, id: StreamId) {
        loop {
            if !self.gw.borrow().is_backfilling(id) {
                return;
            }
            match self.conn(id) {
                Some(conn) => conn.drained.notified().await,
                None => std::future::pending().await,
            }
        }
    }

    /// Waits until the stream's output is below its bound again (or the stream is gone); false
    /// if `deadline` passed first.
    async fn drained(&self, id: StreamId, deadline: Option<Instant>) -> bool {
        let max = self.settings.config.streams.max_pending_bytes;
        loop {
            let below = {
                let gw = self.gw.borrow();
                !gw.is_backfilling(id) || gw.pending_bytes(id) < max
            };
            let Some(conn) = self.conn(id).filter(|_| !below) else { return true };
            match deadline {
                Some(at) => {
                    if until(at, conn.drained.notified()).await.is_none() {
                        return false;
                    }
                }
                None => conn.drained.notified().await,
            }
        }
    }
}
