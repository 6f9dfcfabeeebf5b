//! The random transfer generator's pace and draws: when to send next, the random numbers each
//! turn gives the node (where to start looking for a peer, how much), and whether it is parked.
//! The node decides what a draw sends ([`crate::core::node::generator`]).
//!
//! With a positive interval the generator sends one transfer per interval (drawn uniformly from
//! `[min, max]`) and simply skips a turn it cannot afford. Flat out (`max` = 0) it sends bursts,
//! yielding to the event loop between them, and when it cannot go on it *parks* rather than
//! polling: for money (resumed by the next incoming transfer), for room (resumed when a peer's
//! outbox drains), or for a peer (resumed when a connection comes up). A flat-out branch thus
//! runs exactly as fast as money and connections allow, and idles at zero CPU when it can't.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How many transfers a flat-out generator sends before yielding to the event loop, so reads,
/// writes and markers interleave with its sends.
pub const BURST: usize = 64;

pub use crate::core::node::Pause;

/// The generator's settings and state.
#[derive(Debug)]
pub struct Traffic {
    /// Shortest pause between transfers.
    min: Duration,
    /// Longest pause; zero means flat out.
    max: Duration,
    /// Every random choice of the branch (seeded for repeatable runs).
    rng: StdRng,
    /// Amounts are drawn from this inclusive range (1-5 % of the initial balance).
    amounts: (u64, u64),
    /// Why a flat-out generator is parked, if it is.
    paused: Option<Pause>,
    /// A burst is already scheduled: a resume must not schedule another.
    scheduled: bool,
}

impl Traffic {
    /// A generator pausing `[min, max]` between transfers, drawing from `seed` (or entropy).
    pub fn new(min: Duration, max: Duration, seed: Option<u64>) -> Self {
        Self {
            min,
            max,
            rng: match seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => rand::make_rng(),
            },
            amounts: (1, 1),
            paused: None,
            scheduled: false,
        }
    }

    /// Sets the amount range from the initial balance: 1-5 %, at least 1.
    pub fn set_initial_balance(&mut self, balance: u64) {
        let low = (balance / 100).max(1);
        self.amounts = (low, (balance * 5 / 100).max(low));
    }

    /// Whether the generator sends as fast as it can.
    pub fn flat_out(&self) -> bool {
        self.max.is_zero()
    }

    /// Transfers to attempt in one turn.
    pub fn burst(&self) -> usize {
        if self.flat_out() { BURST } else { 1 }
    }

    /// The pause before the next transfer.
    pub fn next_delay(&mut self) -> Duration {
        if self.max > self.min {
            self.rng.random_range(self.min..=self.max)
        } else {
            self.max
        }
    }

    /// A random amount.
    pub fn amount(&mut self) -> u64 {
        self.rng.random_range(self.amounts.0..=self.amounts.1)
    }

    /// A random index below `count` (which must be positive), where the search for a target
    /// starts.
    pub fn start_index(&mut self, count: usize) -> usize {
        self.rng.random_range(0..count.max(1))
    }

    /// Parks the generator for `pause`.
    pub fn park(&mut self, pause: Pause) {
        self.paused = Some(pause);
    }

    /// If the generator is parked for `pause`, unparks it and returns true: the caller should
    /// schedule a burst.
    pub fn unpark(&mut self, pause: Pause) -> bool {
        if self.paused == Some(pause) {
            self.paused = None;
            true
        } else {
            false
        }
    }

    /// Marks a burst scheduled; false if one already was.
    pub fn schedule(&mut self) -> bool {
        !std::mem::replace(&mut self.scheduled, true)
    }

    /// The scheduled burst is running.
    pub fn run(&mut self) {
        self.scheduled = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_one_to_five_percent_of_the_initial_balance() {
        let mut traffic = Traffic::new(Duration::ZERO, Duration::ZERO, Some(1));
        traffic.set_initial_balance(1000);
        for _ in 0..1000 {
            assert!((10..=50).contains(&traffic.amount()));
        }
        traffic.set_initial_balance(7);
        assert_eq!(traffic.amount(), 1);
    }

    #[test]
    fn delays_stay_in_range_and_flat_out_bursts() {
        let mut traffic = Traffic::new(Duration::from_millis(5), Duration::from_millis(9), Some(2));
        for _ in 0..100 {
            let delay = traffic.next_delay();
            assert!(delay >= Duration::from_millis(5) && delay <= Duration::from_millis(9));
        }
        assert_eq!(traffic.burst(), 1);
        assert_eq!(
            Traffic::new(Duration::ZERO, Duration::ZERO, None).burst(),
            BURST
        );
    }

    #[test]
    fn only_the_matching_event_unparks_and_bursts_are_not_scheduled_twice() {
        let mut traffic = Traffic::new(Duration::ZERO, Duration::ZERO, Some(3));
        traffic.park(Pause::Funds);
        assert!(!traffic.unpark(Pause::Room));
        assert!(traffic.unpark(Pause::Funds));
        assert!(!traffic.unpark(Pause::Funds));
        assert!(traffic.schedule());
        assert!(!traffic.schedule());
        traffic.run();
        assert!(traffic.schedule());
    }
}
