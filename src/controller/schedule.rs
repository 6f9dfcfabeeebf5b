//! What both controllers ([`super::ControllerActor`] and the `--compat` driver) share about a
//! run: when the next snapshot is due ([`Ticker`]), and handing finished reports out in id order
//! until the run ends ([`Reports`]).

use std::collections::BTreeMap;
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
            summary: RunSummary {
                snapshots: 0,
                ok: 0,
                max_in_flight: 0,
                skipped_ticks: 0,
                reconnects: 0,
            },
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

    /// The run cannot go on: gives `error`.
    pub(super) fn fail(&mut self, error: ControllerError) {
        if let Some(done) = self.done.take() {
            error!("{error}");
            let _ = done.send(Err(error));
        }
    }
}
