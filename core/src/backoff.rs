//! Reconnect delays for a broker source (D8): capped exponential backoff with jitter.

use std::time::Duration;

/// The waits between a source's reconnect attempts. The delay starts at `min` and doubles after
/// every failed attempt up to `max`; each wait is drawn from the upper half of the current delay
/// (`[delay/2, delay]`), so instances that lost the broker together do not retry in step. A
/// consumer that got going resets it ([`Backoff::reset`]). Randomness comes in as an argument.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    delay: Duration,
}

impl Backoff {
    /// Starts at `min`; `max` below `min` is taken as `min`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max: max.max(min), delay: min }
    }

    /// Back to `min`, after a consumer ran.
    pub fn reset(&mut self) {
        self.delay = self.min;
    }

    /// The wait before the next attempt, drawn with `random` (any `u64`), then doubles the delay
    /// up to `max`.
    pub fn next_wait(&mut self, random: u64) -> Duration {
        let half = self.delay / 2;
        let span = (self.delay - half).as_millis() as u64;
        let wait = half + Duration::from_millis(random % (span + 1));
        self.delay = self.delay.saturating_mul(2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(MS(500), MS(30_000));
        // The largest draw shows the delay: 500, 1000, 2000, ... capped at 30 s.
        let tops: Vec<u64> = (0..9).map(|_| b.next_wait(u64::MAX).as_millis() as u64).collect();
        let expected_delays = [500u64, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
        for (top, delay) in tops.iter().zip(expected_delays) {
            assert!(*top <= delay && *top >= delay / 2, "{top} for a delay of {delay}");
        }
        assert_eq!(b.next_wait(0), MS(15_000), "the smallest draw is half the capped delay");
        b.reset();
        assert_eq!(b.next_wait(0), MS(250));
    }

    #[test]
    fn the_draw_spreads_over_the_upper_half() {
        let waits: std::collections::BTreeSet<Duration> = (0..1000u64).map(|r| Backoff::new(MS(1000), MS(1000)).next_wait(r)).collect();
        assert_eq!(waits.first(), Some(&MS(500)));
        assert_eq!(waits.last(), Some(&MS(1000)));
        assert_eq!(waits.len(), 501, "every millisecond of [500, 1000] is reachable");
    }

    proptest! {
        #[test]
        fn every_wait_stays_within_half_the_minimum_and_the_cap(
            min in 0u64..10_000, extra in 0u64..100_000, draws in proptest::collection::vec(any::<u64>(), 1..40), reset_at in 0usize..40,
        ) {
            let (min, max) = (MS(min), MS(min + extra));
            let mut b = Backoff::new(min, max);
            let mut delay = min;
            for (i, r) in draws.into_iter().enumerate() {
                if i == reset_at {
                    b.reset();
                    delay = min;
                }
                let w = b.next_wait(r);
                prop_assert!(w >= delay / 2 && w <= delay, "{w:?} outside [{:?}, {delay:?}]", delay / 2);
                prop_assert!(w <= max);
                delay = (delay * 2).min(max);
            }
        }
    }
}
