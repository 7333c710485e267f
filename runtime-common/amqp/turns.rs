//! Turns: a counting semaphore that serves its waiters strictly in the order they came, handing
//! a released turn straight to the first of them. `async_lock::Semaphore` lets a caller that
//! finds a turn free take it even while others wait (the released turn is only *offered* to the
//! first waiter, whose task must still run to take it), so a read-back giving its turn up could
//! take it straight back before the waiter it gave it up for was even polled.
//!
//! Runtime-neutral (a `std` mutex, never held across an await, and one `async-channel` of one
//! per waiter), and shared between threads (read-backs run on every shard thread).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_channel::{bounded, Receiver, Sender};

/// The turns and their queue; clone the `Arc` to share it.
#[derive(Debug)]
pub(crate) struct Turns {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Turns nobody holds (only ever non-zero while nobody waits).
    free: usize,
    /// Waiters in arrival order: a number (to find one that leaves) and where its turn goes.
    queue: VecDeque<(u64, Sender<()>)>,
    next_waiter: u64,
}

/// A turn, held until dropped (then it goes to the first waiter, or back to the free ones).
#[derive(Debug)]
pub(crate) struct Turn {
    turns: Arc<Turns>,
}

/// A place in the queue ([`Turns::take`]). Dropping it (given up, timed out, or its task gone)
/// leaves the queue; a turn that reached it meanwhile goes on to the next waiter.
#[derive(Debug)]
pub(crate) struct Waiter {
    turns: Arc<Turns>,
    place: Option<(u64, Receiver<()>)>,
}

impl Turns {
    pub(crate) fn new(n: usize) -> Arc<Turns> {
        Arc::new(Turns { state: Mutex::new(State { free: n, queue: VecDeque::new(), next_waiter: 0 }) })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds consistent counts.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A turn now if one is free and nobody waits; else a place at the end of the queue
    /// ([`Waiter::turn`] waits for it).
    pub(crate) fn take(self: &Arc<Self>) -> Result<Turn, Waiter> {
        let mut st = self.state();
        if st.free > 0 && st.queue.is_empty() {
            st.free -= 1;
            return Ok(Turn { turns: self.clone() });
        }
        let (tx, rx) = bounded(1);
        let n = st.next_waiter;
        st.next_waiter += 1;
        st.queue.push_back((n, tx));
        Err(Waiter { turns: self.clone(), place: Some((n, rx)) })
    }

    /// Waiters in the queue now.
    pub(crate) fn waiting(&self) -> usize {
        self.state().queue.len()
    }

    /// A turn let go: to the first waiter still waiting, else back to the free ones. The first
    /// waiter leaves the queue under the lock and is sent its turn after it; one that left
    /// meanwhile has closed its channel, and the turn goes on to the next.
    fn release(&self) {
        loop {
            let tx = {
                let mut st = self.state();
                match st.queue.pop_front() {
                    Some((_, tx)) => tx,
                    None => {
                        st.free += 1;
                        return;
                    }
                }
            };
            if tx.try_send(()).is_ok() {
                return;
            }
            // That waiter left (its channel is closed): the next one.
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.turns.release();
    }
}

impl Waiter {
    /// Waits until the turns reach this place.
    pub(crate) async fn turn(&mut self) -> Turn {
        if let Some((_, rx)) = &self.place {
            if rx.recv().await.is_ok() {
                self.place = None;
                return Turn { turns: self.turns.clone() };
            }
        }
        // Only a drop closes the channel, and the place is kept until a turn came: unreachable,
        // but waiting forever is the honest answer to "no turn".
        std::future::pending().await
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let Some((n, rx)) = self.place.take() else { return };
        // Closed first: a release from now on skips this place; one sent before is taken here
        // and passed on.
        rx.close();
        self.turns.state().queue.retain(|(m, _)| *m != n);
        if rx.try_recv().is_ok() {
            self.turns.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    #[test]
    fn a_released_turn_goes_to_the_first_waiter_not_to_a_newcomer() {
        let turns = Turns::new(1);
        let held = turns.take().expect("one free turn");
        let mut a = turns.take().expect_err("the only turn is held");
        let mut b = turns.take().expect_err("still held");
        assert_eq!(turns.waiting(), 2);
        drop(held);
        // A's before it has even run again: nobody else gets it, however fast.
        assert!(turns.take().ok().is_none());
        let c = turns.take().expect_err("two wait");
        assert!(block_on(poll_once(b.turn())).is_none(), "B comes after A");
        let a_turn = block_on(a.turn());
        drop(a_turn);
        let b_turn = block_on(b.turn());
        assert!(turns.take().ok().is_none(), "C waits");
        drop(b_turn);
        drop(c); // C leaves with the turn it was handed: the turn is free again
        let again = turns.take().expect("free once nobody waits");
        drop(again);
        assert_eq!(turns.waiting(), 0);
    }

    #[test]
    fn a_waiter_that_leaves_passes_its_place_on_and_turns_are_never_lost() {
        let turns = Turns::new(2);
        let (x, y) = (turns.take().ok().unwrap(), turns.take().ok().unwrap());
        let a = turns.take().expect_err("both held");
        let mut b = turns.take().expect_err("both held");
        drop(a); // left before its turn came
        assert_eq!(turns.waiting(), 1);
        drop(x);
        let b_turn = block_on(b.turn());
        drop(y); // nobody waits: free
        drop(b_turn);
        let all: Vec<Turn> = (0..2).map(|_| turns.take().expect("both free")).collect();
        assert!(turns.take().ok().is_none());
        drop(all);
        assert!(turns.take().ok().is_some());
    }
}
