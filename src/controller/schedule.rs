//! What both controllers ([`super::ControllerActor`] and the `--compat` driver) share about a
//! run's time: when the next snapshot is due ([`Ticker`]), and what was still in flight when a
//! run is stopped early ([`UnfinishedSnapshot`]).

use std::fmt;
use std::time::{Duration, Instant};

use log::warn;

/// Snapshot starts every `interval`, skipping the ticks a stall (a suspended or starved
/// controller) made it miss rather than firing them all at once.
#[derive(Debug)]
pub(super) struct Ticker {
    interval: Duration,
    /// When the next tick is due.
    next: Instant,
}

impl Ticker {
    /// Ticks every `interval`, the first one now.
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            next: Instant::now(),
        }
    }

    /// A tick is running: advances past it and returns how many earlier ticks were missed
    /// (and are skipped), saying so when there are some.
    pub(super) fn on_tick(&mut self) -> u64 {
        let late = Instant::now().saturating_duration_since(self.next);
        let missed = (late.as_nanos() / self.interval.as_nanos().max(1)) as u64;
        if missed > 0 {
            warn!(
                "the controller was stalled for {} ms: skipping {missed} missed snapshot tick(s)",
                late.as_millis()
            );
        }
        self.next += self.interval * u32::try_from(missed + 1).unwrap_or(u32::MAX);
        missed
    }

    /// How long until the next tick.
    pub(super) fn wait(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }
}

/// A snapshot started and not reported when the run was stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfinishedSnapshot {
    pub id: u32,
    /// The branch that was asked to start it.
    pub initiator: String,
    /// How long it had been in progress.
    pub age: Duration,
    /// The branches whose answer had not come (all of them answered: none).
    pub waiting_for: Vec<String>,
}

/// One line: `snapshot 7 (started 120 ms ago at branch2): waiting for branch1, branch3`.
impl fmt::Display for UnfinishedSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "snapshot {} (started {} ms ago at {}): ",
            self.id,
            self.age.as_millis(),
            self.initiator
        )?;
        if self.waiting_for.is_empty() {
            write!(f, "every branch answered")
        } else {
            write!(f, "waiting for {}", self.waiting_for.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_snapshot_line_names_its_initiator_and_the_branches_it_waits_for() {
        let unfinished = UnfinishedSnapshot {
            id: 7,
            initiator: "b2".to_string(),
            age: Duration::from_millis(50),
            waiting_for: vec!["b2".to_string(), "b3".to_string()],
        };
        let line = unfinished.to_string();
        assert_eq!(
            line,
            "snapshot 7 (started 50 ms ago at b2): waiting for b2, b3"
        );
    }
}
