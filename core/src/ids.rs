//! Small `Copy` ids: channels, streams and events.

use std::fmt;
use std::time::Duration;

/// A channel, as an index into [`crate::Settings::channels`]. Minted only by [`crate::Settings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelId(pub(crate) u16);

impl ChannelId {
    /// The index into `Settings::channels`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// At most this many channels: [`process_epoch`] gives each its own three digits.
pub const MAX_CHANNELS: usize = 1000;

/// The epoch of `channel`'s ids when they count from the process start (the in-process source, a
/// classic queue): the start in microseconds since the Unix epoch, then the channel's index (its
/// place among the enabled channels, by name) in three digits. Two channels' ids never share an epoch (an id of one channel sent to resume
/// another gets `history_gap`, not a replay from its number), nor do two processes' unless they
/// start in the same microsecond; a later start has a greater epoch.
pub fn process_epoch(started: Duration, channel: ChannelId) -> u64 {
    (started.as_micros() as u64).saturating_mul(MAX_CHANNELS as u64).saturating_add(channel.index() as u64)
}

/// A stream of one [`crate::Gateway`] shard: slot index plus generation, so an id kept after its
/// stream ended can never reach the slot's next occupant. Minted only by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl StreamId {
    /// Slot index, dense from 0: a frontend may key a `Vec` by it (check the full id on use).
    pub fn index(self) -> usize {
        self.index as usize
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}.{}", self.index, self.generation)
    }
}

/// An event id: `<epoch>-<seq>`, strictly increasing within a channel and epoch (D6).
///
/// The epoch names the history the sequence belongs to (a process start for the in-process
/// source, a stream for a broker stream), so an id from another history is never mistaken for one
/// of this history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// The history this id belongs to.
    pub epoch: u64,
    /// Position within the epoch.
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl EventId {
    /// Parses `<epoch>-<seq>` (ASCII digits only, each at most 20). Anything else is `None`.
    pub fn parse(text: &[u8]) -> Option<EventId> {
        let dash = text.iter().position(|&b| b == b'-')?;
        let (e, s) = (&text[..dash], &text[dash + 1..]);
        Some(EventId { epoch: digits(e)?, seq: digits(s)? })
    }
}

fn digits(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 20 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(t).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_round_trips_through_text() {
        let id = EventId { epoch: 1_700_000_000_123, seq: 42 };
        assert_eq!(id.to_string(), "1700000000123-42");
        assert_eq!(EventId::parse(b"1700000000123-42"), Some(id));
    }

    #[test]
    fn every_channel_of_a_process_has_its_own_epoch_and_a_later_start_a_greater_one() {
        let start = Duration::from_micros(1_796_035_737_017_123);
        let ch = |i: u16| ChannelId(i);
        let epochs: Vec<u64> = (0..MAX_CHANNELS as u16).map(|i| process_epoch(start, ch(i))).collect();
        assert!(epochs.windows(2).all(|w| w[0] < w[1]), "distinct per channel");
        assert_eq!(epochs[0], 1_796_035_737_017_123_000);
        let later = start + Duration::from_micros(1);
        assert!(process_epoch(later, ch(0)) > epochs[MAX_CHANNELS - 1], "a later start is above every channel of this one");
        // The text form parses back (at most 20 digits).
        let id = EventId { epoch: epochs[MAX_CHANNELS - 1], seq: u64::MAX };
        assert_eq!(EventId::parse(id.to_string().as_bytes()), Some(id));
    }

    #[test]
    fn malformed_event_ids_do_not_parse() {
        for bad in [&b""[..], b"-", b"1-", b"-1", b"1-2-3", b"+1-2", b"1-2\n", b"a-1", b"1 -2", b"99999999999999999999-1"] {
            assert_eq!(EventId::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
