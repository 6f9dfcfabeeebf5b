//! What both controllers ([`super::ControllerActor`] and the `--compat` driver) share about a
//! run: when the next snapshot is due ([`Ticker`]), handing finished reports out in id order
//! until the run ends ([`Reports`]), and what was still in flight when a run is stopped early
//! ([`UnfinishedSnapshot`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use log::{error, warn};
use tokio::sync::oneshot;

use super::{ControllerError, RunSummary, SnapshotReport};
use crate::wire::pb::return_snapshot::LocalSnapshot;

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

/// Finished reports, handed to the caller in id order, and the run's outcome.
pub(super) struct Reports {
    /// Finished reports waiting for a lower id to finish.
    finished: BTreeMap<u32, SnapshotReport>,
    /// Id of the next report to hand out.
    next_to_emit: u32,
    /// The run so far.
    pub(super) summary: RunSummary,
    on_report: Box<dyn FnMut(&SnapshotReport)>,
    /// Where the outcome goes; `None` once it has gone.
    done: Option<oneshot::Sender<Result<RunSummary, ControllerError>>>,
}

impl Reports {
    /// Reports from snapshot `first_id` on, handed to `on_report`; the outcome goes to `done`.
    pub(super) fn new(
        first_id: u32,
        on_report: Box<dyn FnMut(&SnapshotReport)>,
        done: oneshot::Sender<Result<RunSummary, ControllerError>>,
    ) -> Self {
        Self {
            finished: BTreeMap::new(),
            next_to_emit: first_id,
            summary: RunSummary::default(),
            on_report,
            done: Some(done),
        }
    }

    /// A snapshot is finished: hands out every report now in order.
    pub(super) fn add(&mut self, id: u32, report: SnapshotReport) {
        self.finished.insert(id, report);
        while let Some(report) = self.finished.remove(&self.next_to_emit) {
            self.next_to_emit = self.next_to_emit.wrapping_add(1);
            self.summary.snapshots += 1;
            self.summary.ok += u32::from(report.is_ok());
            (self.on_report)(&report);
        }
    }

    /// Snapshot `id` (started at `started` by branch `initiator`) has an answer from every
    /// branch: assembles its report against `total` and hands out what is now in order.
    pub(super) fn add_answers(
        &mut self,
        id: u32,
        initiator: usize,
        names: &[String],
        answers: Vec<Option<Result<LocalSnapshot, String>>>,
        total: u64,
        started: Instant,
    ) {
        let answers = answers.into_iter().flatten().collect();
        let report = SnapshotReport::assemble(
            id,
            &names[initiator],
            names,
            answers,
            total,
            started.elapsed(),
        );
        self.add(id, report);
    }

    /// Whether some finished report still waits for an earlier one.
    pub(super) fn waiting(&self) -> bool {
        !self.finished.is_empty()
    }

    /// Whether the run's outcome has been given.
    pub(super) fn over(&self) -> bool {
        self.done.is_none()
    }

    /// The run is complete: gives its summary.
    pub(super) fn complete(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(Ok(self.summary.clone()));
        }
    }

    /// The run was stopped early (Ctrl-C, SIGTERM): hands out every finished report still held
    /// behind an unfinished one, in id order, then gives the summary with the `unfinished`
    /// snapshots.
    pub(super) fn stop(&mut self, unfinished: Vec<UnfinishedSnapshot>) {
        if self.over() {
            return;
        }
        for (id, report) in std::mem::take(&mut self.finished) {
            self.next_to_emit = id.wrapping_add(1);
            self.summary.snapshots += 1;
            self.summary.ok += u32::from(report.is_ok());
            (self.on_report)(&report);
        }
        self.summary.unfinished = unfinished;
        self.complete();
    }

    /// The run cannot go on: gives `error`.
    pub(super) fn fail(&mut self, error: ControllerError) {
        if let Some(done) = self.done.take() {
            error!("{error}");
            let _ = done.send(Err(error));
        }
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

impl UnfinishedSnapshot {
    /// The snapshots in `in_flight` (id, initiator's index, start, one answer slot per branch),
    /// named with `names`.
    pub(super) fn list<'a, T: 'a>(
        names: &[String],
        in_flight: impl IntoIterator<Item = (u32, usize, Instant, &'a [Option<T>])>,
    ) -> Vec<Self> {
        in_flight
            .into_iter()
            .map(|(id, initiator, started, answers)| Self {
                id,
                initiator: names[initiator].clone(),
                age: started.elapsed(),
                waiting_for: answers
                    .iter()
                    .zip(names)
                    .filter(|(answer, _)| answer.is_none())
                    .map(|(_, name)| name.clone())
                    .collect(),
            })
            .collect()
    }
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
    fn an_unfinished_snapshot_names_its_initiator_and_the_branches_it_waits_for() {
        let names = ["b1", "b2", "b3"].map(String::from);
        let answers: [Option<()>; 3] = [Some(()), None, None];
        let started = Instant::now() - Duration::from_millis(50);
        let list = UnfinishedSnapshot::list(&names, [(7, 1, started, &answers[..])]);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].waiting_for, ["b2", "b3"]);
        let line = list[0].to_string();
        assert!(line.starts_with("snapshot 7 (started "), "{line}");
        assert!(
            line.ends_with(" ms ago at b2): waiting for b2, b3"),
            "{line}"
        );
    }
}
