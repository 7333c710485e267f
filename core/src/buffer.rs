//! The per-channel resume buffer: the last N events of a channel, all versions and recipients.

use std::collections::VecDeque;

use crate::ingest::Event;
use crate::EventId;

/// What a resume id means against the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Every event after the id is in the buffer, starting at this index.
    From(usize),
    /// The id is from this epoch but older than what the buffer holds: the source may have it.
    Older,
    /// The id is from this epoch but after the last event held: another gateway instance may
    /// have seen it first. Carries how far ahead it is.
    Ahead(u64),
    /// Another epoch, or nothing known of this epoch yet.
    Unknown,
}

#[derive(Debug)]
pub(crate) struct ResumeBuffer {
    events: VecDeque<Event>,
    capacity: usize,
    epoch: Option<u64>,
    /// Every event with a seq greater than this is in `events` (or was never published).
    floor: u64,
    last: Option<u64>,
    /// Events were lost before the next one ([`ResumeBuffer::clear_after_loss`]): it starts the
    /// buffer with nothing before it held, not even the id it follows in number.
    after_loss: bool,
}

impl ResumeBuffer {
    pub(crate) fn new(capacity: usize) -> ResumeBuffer {
        ResumeBuffer { events: VecDeque::with_capacity(capacity.min(4096)), capacity, epoch: None, floor: 0, last: None, after_loss: false }
    }

    /// Appends an event. Returns false (and keeps nothing) if its id does not follow the last one.
    pub(crate) fn push(&mut self, ev: &Event) -> bool {
        let id = ev.id();
        if self.epoch != Some(id.epoch) {
            // A new history (first event, or the source's log was recreated): start over.
            self.events.clear();
            self.epoch = Some(id.epoch);
            self.floor = if std::mem::take(&mut self.after_loss) { id.seq } else { id.seq.saturating_sub(1) };
            self.last = None;
        } else if self.last.is_some_and(|l| id.seq <= l) {
            return false;
        }
        self.last = Some(id.seq);
        if self.capacity == 0 {
            self.floor = id.seq;
            return true;
        }
        if self.events.len() == self.capacity {
            if let Some(old) = self.events.pop_front() {
                self.floor = old.id().seq;
            }
        }
        self.events.push_back(ev.clone());
        true
    }

    /// Forgets everything: the next event starts the buffer again, as after a restart.
    pub(crate) fn clear(&mut self) {
        self.events.clear();
        self.epoch = None;
        self.floor = 0;
        self.last = None;
        self.after_loss = false;
    }

    /// [`ResumeBuffer::clear`] after a loss the ids do not show (a classic queue numbers what it
    /// takes one after another: the next event's id follows the last before the loss). A resume
    /// from that last id is older than what the buffer holds then, not continued from it.
    pub(crate) fn clear_after_loss(&mut self) {
        self.clear();
        self.after_loss = true;
    }

    pub(crate) fn lookup(&self, after: EventId) -> Lookup {
        match (self.epoch, self.last) {
            (Some(e), Some(last)) if e == after.epoch && after.seq > last => Lookup::Ahead(after.seq - last),
            (Some(e), Some(_)) if e == after.epoch => {
                if after.seq < self.floor {
                    Lookup::Older
                } else {
                    Lookup::From(self.events.partition_point(|ev| ev.id().seq <= after.seq))
                }
            }
            _ => Lookup::Unknown,
        }
    }

    pub(crate) fn from(&self, index: usize) -> impl Iterator<Item = &Event> {
        self.events.range(index.min(self.events.len())..)
    }

    /// Every event after this seq (in the current epoch) is held.
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn last(&self) -> Option<EventId> {
        Some(EventId { epoch: self.epoch?, seq: self.last? })
    }
}
