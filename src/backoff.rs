//! [`Backoff`]: the pause between two attempts to reach a party that is not answering, shared by
//! a branch redialling a peer and a controller redialling a branch.
//!
//! Capped exponential backoff with "equal jitter" (each pause drawn between half the current
//! delay and all of it), so parties cut off together do not retry in lock step, and a party that
//! comes back is found within about the cap.

use std::time::Duration;

/// The retry schedule of one reconnect loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The delay the next pause is drawn from.
    delay: Duration,
    /// The longest delay.
    cap: Duration,
}

impl Backoff {
    /// A schedule starting at `first` and doubling up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            delay: first.min(cap),
            cap,
        }
    }

    /// The next pause: between half the current delay and all of it; the delay then doubles.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.delay.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        self.delay = (self.delay * 2).min(self.cap);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let pauses: Vec<Duration> = (0..8).map(|_| backoff.next_pause()).collect();
        assert!(pauses[0] >= Duration::from_millis(5) && pauses[0] <= Duration::from_millis(10));
        for pause in &pauses[4..] {
            assert!(*pause >= Duration::from_millis(50) && *pause <= Duration::from_millis(100));
        }
    }
}
