//! [`Collector`]: the half of a controller that does no I/O, shared by [`super::ControllerActor`]
//! and [`super::compat::CompatController`]. It decides; the actors carry its decisions over
//! their own connections and timers. Time comes in as an `Instant`, the initiator's random draw
//! as a function of the number of candidates; it keeps no clock and no generator of its own.
//!
//! The rules, each a test below:
//! - Ids: snapshots are numbered from the run's first id, one per start; a run with a limit
//!   starts no more than the limit; at most [`MAX_IN_FLIGHT`] are in progress at once, and a tick
//!   that finds that many is skipped and counted.
//! - Initiator: drawn among the branches whose link is up, or among all when none is.
//! - Retrieval: it opens (at the start, or after the compat driver's delay) with a deadline of
//!   the retrieve timeout. A branch's answer fills its slot once; an answer before the retrieval
//!   opens, after its slot is filled, or for a snapshot no longer in flight is ignored.
//! - Status to reason: a `COMPLETE` record (an original-schema branch's, which has no status, reads
//!   so) is the record; any other status is the one wording of [`reason_for`].
//! - Still recording: with asking again on (the normal controller, whose branches wait before
//!   answering), a branch that answers `RECORDING` while more than the answer margin and a retry
//!   pause are left is asked again; otherwise the answer is final.
//! - Expiry: at the deadline every empty slot says why: unreachable since when (and why), or no
//!   answer.
//! - Reports: a snapshot whose every slot is filled is assembled into a [`SnapshotReport`];
//!   reports are handed out in id order; the run is complete once every snapshot has started
//!   and been handed out. Stopping early hands out those held behind an unfinished one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use log::warn;

use super::report::AskNotes;
use super::schedule::UnfinishedSnapshot;
use super::{ControllerConfig, RunSummary, SnapshotReport};
use crate::wire::pb;
use crate::wire::pb::return_snapshot::LocalSnapshot;

/// Most snapshots in progress at once. Far below a branch's cap on kept records (1024), so
/// snapshots started back to back never make a branch discard one.
pub const MAX_IN_FLIGHT: usize = 256;

/// Pause before asking again a branch that answered "still recording" without waiting (an
/// original-schema branch ignores `wait_ms`).
pub(super) const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// How long before the retrieve deadline a branch is asked to answer, at most: a branch still
/// recording then says so in time, and the report can tell "still waiting for a marker" (the
/// branch answered) from "did not answer" (the branch is gone or cut off).
fn answer_margin(timeout: Duration) -> Duration {
    (timeout / 10).min(Duration::from_millis(250))
}

/// One branch's answer for one snapshot: `Some(Ok)` a finished record, `Some(Err)` why there
/// is none, `None` not yet.
type Slot = Option<Result<LocalSnapshot, String>>;

/// Why a branch's answer with a status other than `COMPLETE` is no record, `elapsed` after the
/// snapshot started. The one wording both controllers report.
pub(super) fn reason_for(local: &LocalSnapshot, elapsed: Duration) -> String {
    let ms = elapsed.as_millis();
    match pb::SnapshotStatus::try_from(local.status) {
        Ok(pb::SnapshotStatus::Complete) => "answered with its record".to_string(),
        Ok(pb::SnapshotStatus::Recording) => {
            format!("was still recording {ms} ms after the snapshot started")
        }
        Ok(pb::SnapshotStatus::CutShort) => format!(
            "lost its connection to {} before their marker came",
            local.lost_peers.join(", ")
        ),
        Ok(pb::SnapshotStatus::UnknownSnapshot) => {
            format!("had not taken part in the snapshot {ms} ms after it started")
        }
        Ok(pb::SnapshotStatus::Discarded) => {
            "discarded its record before it was retrieved (over its cap of kept records, or kept too long)"
                .to_string()
        }
        Ok(pb::SnapshotStatus::AlreadyRetrieved) => {
            "its record was already retrieved (by another controller?) and released".to_string()
        }
        Err(_) => format!("answered with unknown status {}", local.status),
    }
}

/// A snapshot whose records are still being collected.
struct InFlight {
    /// Index of the branch asked to start it.
    initiator: usize,
    /// When it started (`InitSnapshot` went out).
    started: Instant,
    /// When the retrieval ends; `None` until it opens.
    deadline: Option<Instant>,
    /// One slot per branch, in file order.
    answers: Vec<Slot>,
    /// The bank epoch it was started in.
    epoch: u64,
    /// The compat driver's asks, for the report.
    notes: Option<AskNotes>,
}

/// What became of a branch's answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// Not awaited from that branch (unknown or finished snapshot, slot already filled, or the
    /// retrieval not open yet).
    Ignored,
    /// The branch is still recording and time is left: ask it again after [`RETRY_PAUSE`].
    AskAgain,
    /// The answer is in its slot, `elapsed` after the snapshot started.
    Filed { elapsed: Duration },
}

/// What the actors hand out after a step: snapshots reported (their timers can go) and the
/// reports now due, in id order.
#[derive(Default)]
pub(super) struct Progress {
    /// Ids of the snapshots reported since the last step.
    pub(super) finished: Vec<u32>,
    /// Reports to hand out, in id order.
    pub(super) reports: Vec<SnapshotReport>,
}

/// In-flight snapshots, their deadlines and answers, and the reports made of them.
pub(super) struct Collector {
    /// Branch names in file order.
    names: Vec<String>,
    /// The money the bank holds, which a snapshot must sum to.
    total: u64,
    /// How long a retrieval lasts.
    retrieve_timeout: Duration,
    /// Snapshots to start in all; `None`: no end.
    limit: Option<u32>,
    /// Whether a branch still recording is asked again while time is left.
    ask_again: bool,
    /// Id of the next snapshot to start.
    next_id: u32,
    /// Snapshots started so far.
    started: u32,
    in_flight: BTreeMap<u32, InFlight>,
    /// Per branch: why and since when its link is down, while it is.
    down: Vec<Option<(Instant, String)>>,
    /// Reports made and waiting for a lower id to be made.
    held: BTreeMap<u32, SnapshotReport>,
    /// Id of the next report to hand out.
    next_to_emit: u32,
    /// What the actors have not taken yet.
    progress: Progress,
    /// The run so far.
    pub(super) summary: RunSummary,
    /// The bank epoch new snapshots are taken in.
    epoch: u64,
    /// A rollback is under way: no snapshot starts until it ends.
    paused: bool,
}

impl Collector {
    /// A collector for `config`'s run, numbering snapshots from `first_id`; with `ask_again`, a
    /// branch still recording is asked again while time is left.
    pub(super) fn new(config: &ControllerConfig, first_id: u32, ask_again: bool) -> Self {
        Self {
            names: config.branches.iter().map(|b| b.name.clone()).collect(),
            total: config.total,
            retrieve_timeout: config.retrieve_timeout,
            limit: config.snapshots,
            ask_again,
            next_id: first_id,
            started: 0,
            in_flight: BTreeMap::new(),
            down: vec![None; config.branches.len()],
            held: BTreeMap::new(),
            next_to_emit: first_id,
            progress: Progress::default(),
            summary: RunSummary::default(),
            epoch: 0,
            paused: false,
        }
    }

    /// Branch names in file order.
    pub(super) fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether every snapshot of a run with a limit has started.
    pub(super) fn started_all(&self) -> bool {
        self.limit.is_some_and(|limit| self.started >= limit)
    }

    /// Whether another snapshot may start now (back to back: keep the pipeline full).
    pub(super) fn wants_more(&self) -> bool {
        !self.paused && !self.started_all() && self.in_flight.len() < MAX_IN_FLIGHT
    }

    /// A rollback to bank epoch `epoch` begins at `now`: no snapshot starts until
    /// [`Collector::resume`], and every snapshot in flight is concluded at once, each empty slot
    /// saying that the epoch it was taken in was rolled back (its records are gone).
    pub(super) fn pause_for_rollback(&mut self, epoch: u64, now: Instant) {
        self.paused = true;
        let ids: Vec<u32> = self.in_flight.keys().copied().collect();
        for id in ids {
            if let Some(snapshot) = self.in_flight.get_mut(&id) {
                for answer in snapshot.answers.iter_mut().filter(|a| a.is_none()) {
                    *answer = Some(Err(format!(
                        "lost its record: the bank was rolled back to epoch {epoch} before it answered"
                    )));
                }
            }
            self.try_finish(id, now);
        }
    }

    /// The rollback ended: snapshots start again, in bank epoch `epoch`.
    pub(super) fn resume(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.paused = false;
    }

    /// A scheduled tick, after `missed` ticks a stall skipped: whether to start a snapshot.
    /// Skips (and counts) the tick when [`MAX_IN_FLIGHT`] snapshots are in progress.
    pub(super) fn on_tick(&mut self, missed: u64) -> bool {
        self.summary.skipped_ticks += missed;
        if self.paused {
            self.summary.skipped_ticks += 1;
            return false;
        }
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            warn!(
                "{MAX_IN_FLIGHT} snapshots are still in progress: skipping this tick (is --interval-ms shorter than a snapshot takes?)"
            );
            self.summary.skipped_ticks += 1;
            return false;
        }
        true
    }

    /// Starts a snapshot at `now` unless all have started: returns its id and initiator, drawn
    /// by `draw(n)` (a number below `n`) among the branches whose link is up (all when none is).
    pub(super) fn start(
        &mut self,
        now: Instant,
        link_up: impl Fn(usize) -> bool,
        draw: impl FnOnce(usize) -> usize,
    ) -> Option<(u32, usize)> {
        if self.started_all() {
            return None;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.started += 1;
        let live: Vec<usize> = (0..self.names.len()).filter(|&i| link_up(i)).collect();
        let initiator = if live.is_empty() {
            draw(self.names.len()).min(self.names.len().saturating_sub(1))
        } else {
            live[draw(live.len()).min(live.len() - 1)]
        };
        self.in_flight.insert(
            id,
            InFlight {
                initiator,
                started: now,
                deadline: None,
                answers: vec![None; self.names.len()],
                epoch: self.epoch,
                notes: None,
            },
        );
        let summary = &mut self.summary;
        summary.max_in_flight = summary.max_in_flight.max(self.in_flight.len());
        Some((id, initiator))
    }

    /// Opens the retrieval of snapshot `id` at `now`: answers count from now until the retrieve
    /// timeout has passed (the actor calls [`Collector::expire`] then).
    pub(super) fn open(&mut self, id: u32, now: Instant) {
        if let Some(snapshot) = self.in_flight.get_mut(&id) {
            snapshot.deadline = Some(now + self.retrieve_timeout);
        }
    }

    /// The `wait_ms` to ask for snapshot `id` with at `now`: the time left before its deadline
    /// less the answer margin. `None` when its retrieval is not open (or it is over).
    pub(super) fn wait_ms(&self, id: u32, now: Instant) -> Option<u32> {
        let deadline = self.in_flight.get(&id)?.deadline?;
        let left = deadline.saturating_duration_since(now);
        let wait = left.saturating_sub(answer_margin(self.retrieve_timeout));
        Some(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX))
    }

    /// How long ago snapshot `id` started; `None` when it is not in flight.
    pub(super) fn elapsed(&self, id: u32, now: Instant) -> Option<Duration> {
        Some(now.saturating_duration_since(self.in_flight.get(&id)?.started))
    }

    /// When snapshot `id`'s retrieval ends; `None` when it is not open (or it is over).
    pub(super) fn deadline(&self, id: u32) -> Option<Instant> {
        self.in_flight.get(&id)?.deadline
    }

    /// Branch `index`'s answer `local` (filed under the snapshot it names) at `now`.
    pub(super) fn on_answer(&mut self, index: usize, local: LocalSnapshot, now: Instant) -> Answer {
        let id = local.snapshot_id;
        let margin = answer_margin(self.retrieve_timeout);
        let Some(snapshot) = self.in_flight.get_mut(&id) else {
            return Answer::Ignored;
        };
        let Some(deadline) = snapshot.deadline else {
            return Answer::Ignored;
        };
        if snapshot.answers.get(index).is_none_or(Option::is_some) {
            return Answer::Ignored;
        }
        let elapsed = now.saturating_duration_since(snapshot.started);
        let answer = match pb::SnapshotStatus::try_from(local.status) {
            Ok(pb::SnapshotStatus::Complete) => Ok(local),
            Ok(pb::SnapshotStatus::Recording)
                if self.ask_again
                    && deadline.saturating_duration_since(now) > margin + RETRY_PAUSE =>
            {
                return Answer::AskAgain;
            }
            _ => Err(reason_for(&local, elapsed)),
        };
        snapshot.answers[index] = Some(answer);
        self.try_finish(id, now);
        Answer::Filed { elapsed }
    }

    /// The compat driver's asks for snapshot `id`, for its report (given before its last answer).
    pub(super) fn note(&mut self, id: u32, notes: AskNotes) {
        if let Some(snapshot) = self.in_flight.get_mut(&id) {
            snapshot.notes = Some(notes);
        }
    }

    /// A request for snapshot `id` to branch `index` got no record, for `reason`.
    pub(super) fn on_failure(&mut self, index: usize, id: u32, reason: String, now: Instant) {
        let Some(slot) = self
            .in_flight
            .get_mut(&id)
            .and_then(|snapshot| snapshot.answers.get_mut(index))
        else {
            return;
        };
        if slot.is_none() {
            *slot = Some(Err(reason));
            self.try_finish(id, now);
        }
    }

    /// Snapshot `id`'s deadline has passed at `now`: every slot still empty says why.
    pub(super) fn expire(&mut self, id: u32, now: Instant) {
        let Some(snapshot) = self.in_flight.get_mut(&id) else {
            return;
        };
        let timeout = self.retrieve_timeout.as_millis();
        for (answer, down) in snapshot.answers.iter_mut().zip(&self.down) {
            if answer.is_some() {
                continue;
            }
            *answer = Some(Err(match down {
                Some((since, reason)) => format!(
                    "unreachable for the last {} ms ({reason}); no answer within {timeout} ms",
                    now.saturating_duration_since(*since).as_millis()
                ),
                None => format!("did not answer within {timeout} ms"),
            }));
        }
        self.try_finish(id, now);
    }

    /// Branch `index`'s link went down at `now` for `reason`.
    pub(super) fn link_down(&mut self, index: usize, now: Instant, reason: String) {
        if let Some(down) = self.down.get_mut(index) {
            *down = Some((now, reason));
        }
    }

    /// Branch `index`'s link is back at `now`: counts the reconnect and returns how long it was
    /// down (`None` if it was not).
    pub(super) fn link_up(&mut self, index: usize, now: Instant) -> Option<Duration> {
        self.summary.reconnects += 1;
        let (since, _) = self.down.get_mut(index)?.take()?;
        Some(now.saturating_duration_since(since))
    }

    /// Snapshots whose retrieval is open and whose answer from branch `index` has not come, in
    /// id order: what to ask it again after a reconnect.
    pub(super) fn awaited_from(&self, index: usize) -> Vec<u32> {
        self.in_flight
            .iter()
            .filter(|(_, snapshot)| {
                snapshot.deadline.is_some()
                    && snapshot.answers.get(index).is_some_and(Option::is_none)
            })
            .map(|(&id, _)| id)
            .collect()
    }

    /// Snapshots in flight that branch `index` was asked to start.
    pub(super) fn initiated_by(&self, index: usize) -> Vec<u32> {
        self.in_flight
            .iter()
            .filter(|(_, snapshot)| snapshot.initiator == index)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Whether snapshot `id` is still being collected.
    pub(super) fn in_flight(&self, id: u32) -> bool {
        self.in_flight.contains_key(&id)
    }

    /// Whether the run is complete: every snapshot started, reported and handed out.
    pub(super) fn run_complete(&self) -> bool {
        self.started_all() && self.in_flight.is_empty() && self.held.is_empty()
    }

    /// What to hand out since the last call.
    pub(super) fn take_progress(&mut self) -> Progress {
        std::mem::take(&mut self.progress)
    }

    /// The run is stopped early at `now`: the reports held behind an unfinished snapshot become
    /// due (in id order), and the snapshots still in flight are listed.
    pub(super) fn stop(&mut self, now: Instant) -> Vec<UnfinishedSnapshot> {
        for (id, report) in std::mem::take(&mut self.held) {
            self.next_to_emit = id.wrapping_add(1);
            self.hand_out(report);
        }
        self.in_flight
            .iter()
            .map(|(&id, snapshot)| UnfinishedSnapshot {
                id,
                initiator: self.names[snapshot.initiator].clone(),
                age: now.saturating_duration_since(snapshot.started),
                waiting_for: snapshot
                    .answers
                    .iter()
                    .zip(&self.names)
                    .filter(|(answer, _)| answer.is_none())
                    .map(|(_, name)| name.clone())
                    .collect(),
            })
            .collect()
    }

    /// Reports snapshot `id` if every branch has answered, then makes due what is in order.
    fn try_finish(&mut self, id: u32, now: Instant) {
        let complete = self
            .in_flight
            .get(&id)
            .is_some_and(|snapshot| snapshot.answers.iter().all(Option::is_some));
        if !complete {
            return;
        }
        let Some(snapshot) = self.in_flight.remove(&id) else {
            return;
        };
        let mut report = SnapshotReport::assemble(
            id,
            &self.names[snapshot.initiator],
            &self.names,
            snapshot.answers.into_iter().flatten().collect(),
            self.total,
            now.saturating_duration_since(snapshot.started),
        );
        report.epoch = snapshot.epoch;
        report.asking = snapshot.notes;
        self.progress.finished.push(id);
        self.held.insert(id, report);
        while let Some(report) = self.held.remove(&self.next_to_emit) {
            self.next_to_emit = self.next_to_emit.wrapping_add(1);
            self.hand_out(report);
        }
    }

    fn hand_out(&mut self, report: SnapshotReport) {
        self.summary.snapshots += 1;
        self.summary.ok += u32::from(report.is_ok());
        self.progress.reports.push(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BranchEntry;

    fn config(branches: usize, snapshots: Option<u32>) -> ControllerConfig {
        let entries = (0..branches)
            .map(|i| BranchEntry {
                name: format!("b{}", i + 1),
                addr: ([127, 0, 0, 1], 9000 + i as u16).into(),
            })
            .collect();
        let mut config = ControllerConfig::new(30, entries);
        config.snapshots = snapshots;
        config.retrieve_timeout = Duration::from_millis(1000);
        config
    }

    fn collector(branches: usize, ask_again: bool) -> Collector {
        Collector::new(&config(branches, Some(10)), 1, ask_again)
    }

    fn complete(id: u32, balance: u32, branches: usize) -> LocalSnapshot {
        LocalSnapshot {
            snapshot_id: id,
            balance,
            channel_state: vec![0; branches - 1],
            ..Default::default()
        }
    }

    fn with_status(id: u32, status: pb::SnapshotStatus) -> LocalSnapshot {
        LocalSnapshot {
            snapshot_id: id,
            status: status as i32,
            ..Default::default()
        }
    }

    /// Starts a snapshot at `now` with every link up, the draw always the first candidate,
    /// and opens its retrieval.
    fn start_open(collector: &mut Collector, now: Instant) -> u32 {
        let (id, _) = collector.start(now, |_| true, |_| 0).unwrap();
        collector.open(id, now);
        id
    }

    /// A collector over `branches` with one snapshot started and opened now.
    fn one_open(branches: usize, ask_again: bool) -> (Collector, Instant, u32) {
        let mut collector = collector(branches, ask_again);
        let now = Instant::now();
        let id = start_open(&mut collector, now);
        (collector, now, id)
    }

    #[test]
    fn snapshots_are_numbered_from_the_first_id_up_to_the_limit() {
        let mut collector = Collector::new(&config(2, Some(2)), 7, true);
        let now = Instant::now();
        assert_eq!(collector.start(now, |_| true, |_| 0).map(|s| s.0), Some(7));
        assert_eq!(collector.start(now, |_| true, |_| 0).map(|s| s.0), Some(8));
        assert!(collector.started_all());
        assert_eq!(collector.start(now, |_| true, |_| 0), None);
    }

    #[test]
    fn a_tick_with_the_most_snapshots_in_flight_is_skipped_and_counted() {
        let mut collector = Collector::new(&config(2, None), 1, true);
        let now = Instant::now();
        for _ in 0..MAX_IN_FLIGHT {
            assert!(collector.on_tick(0));
            collector.start(now, |_| true, |_| 0);
        }
        assert!(!collector.wants_more());
        assert!(!collector.on_tick(2));
        assert_eq!(collector.summary.skipped_ticks, 3);
        assert_eq!(collector.summary.max_in_flight, MAX_IN_FLIGHT);
    }

    #[test]
    fn the_initiator_is_drawn_among_the_branches_whose_link_is_up() {
        let mut collector = collector(4, true);
        let now = Instant::now();
        let up = |index: usize| index == 1 || index == 3;
        let (_, first) = collector.start(now, up, |_| 0).unwrap();
        let (_, last) = collector.start(now, up, |n| n - 1).unwrap();
        assert_eq!((first, last), (1, 3));
        let (_, any) = collector.start(now, |_| false, |n| n - 1).unwrap();
        assert_eq!(any, 3, "with no link up, every branch is a candidate");
    }

    #[test]
    fn an_answer_before_the_retrieval_opens_is_ignored() {
        let mut collector = collector(2, false);
        let now = Instant::now();
        let (id, _) = collector.start(now, |_| true, |_| 0).unwrap();
        assert_eq!(
            collector.on_answer(0, complete(id, 10, 2), now),
            Answer::Ignored
        );
        assert_eq!(collector.wait_ms(id, now), None);
        collector.open(id, now);
        assert!(matches!(
            collector.on_answer(0, complete(id, 10, 2), now),
            Answer::Filed { .. }
        ));
    }

    #[test]
    fn a_second_answer_from_a_branch_is_ignored() {
        let (mut collector, now, id) = one_open(2, false);
        collector.on_answer(0, complete(id, 10, 2), now);
        assert_eq!(
            collector.on_answer(0, complete(id, 99, 2), now),
            Answer::Ignored
        );
        assert_eq!(
            collector.on_answer(0, complete(id + 5, 10, 2), now),
            Answer::Ignored
        );
        assert_eq!(collector.awaited_from(0), Vec::<u32>::new());
        assert_eq!(collector.awaited_from(1), vec![id]);
    }

    #[test]
    fn an_original_branch_record_without_status_reads_as_final() {
        let (mut collector, now, id) = one_open(2, false);
        collector.on_answer(0, complete(id, 10, 2), now);
        collector.on_answer(1, complete(id, 20, 2), now);
        let progress = collector.take_progress();
        assert_eq!(progress.finished, [id]);
        assert_eq!(progress.reports.len(), 1);
        assert!(
            progress.reports[0].is_ok(),
            "{}",
            progress.reports[0].to_text()
        );
    }

    #[test]
    fn a_record_that_is_not_final_is_no_record_with_one_wording_per_status() {
        let elapsed = Duration::from_millis(40);
        let cut = LocalSnapshot {
            lost_peers: vec!["b2".into(), "b3".into()],
            ..with_status(1, pb::SnapshotStatus::CutShort)
        };
        let cases = [
            (
                with_status(1, pb::SnapshotStatus::Recording),
                "was still recording 40 ms after the snapshot started",
            ),
            (
                with_status(1, pb::SnapshotStatus::UnknownSnapshot),
                "had not taken part in the snapshot 40 ms after it started",
            ),
            (
                cut,
                "lost its connection to b2, b3 before their marker came",
            ),
            (
                with_status(1, pb::SnapshotStatus::Discarded),
                "discarded its record before it was retrieved (over its cap of kept records, or kept too long)",
            ),
            (
                with_status(1, pb::SnapshotStatus::AlreadyRetrieved),
                "its record was already retrieved (by another controller?) and released",
            ),
            (
                LocalSnapshot {
                    status: 99,
                    ..Default::default()
                },
                "answered with unknown status 99",
            ),
        ];
        for (local, reason) in cases {
            assert_eq!(reason_for(&local, elapsed), reason);
            let mut collector = collector(1, false);
            let started = Instant::now();
            let id = start_open(&mut collector, started);
            let local = LocalSnapshot {
                snapshot_id: id,
                ..local
            };
            collector.on_answer(0, local, started + elapsed);
            let report = &collector.take_progress().reports[0];
            assert_eq!(report.missing().next(), Some(("b1", reason)));
        }
    }

    #[test]
    fn a_branch_still_recording_is_asked_again_while_time_is_left() {
        let (mut collector, now, id) = one_open(1, true);
        let recording = || with_status(id, pb::SnapshotStatus::Recording);
        assert_eq!(collector.on_answer(0, recording(), now), Answer::AskAgain);
        assert_eq!(collector.awaited_from(0), vec![id]);
        // 100 ms margin (a tenth of the timeout) and the retry pause left: final.
        let late = now + Duration::from_millis(1000 - 100) - RETRY_PAUSE;
        assert!(matches!(
            collector.on_answer(0, recording(), late),
            Answer::Filed { .. }
        ));
    }

    #[test]
    fn without_asking_again_still_recording_is_final_at_once() {
        let (mut collector, now, id) = one_open(1, false);
        let answer = collector.on_answer(0, with_status(id, pb::SnapshotStatus::Recording), now);
        assert_eq!(
            answer,
            Answer::Filed {
                elapsed: Duration::ZERO
            }
        );
    }

    #[test]
    fn wait_ms_is_the_time_left_less_the_answer_margin() {
        let (collector, now, id) = one_open(1, true);
        assert_eq!(collector.wait_ms(id, now), Some(900));
        assert_eq!(
            collector.wait_ms(id, now + Duration::from_millis(400)),
            Some(500)
        );
        assert_eq!(collector.wait_ms(id, now + Duration::from_secs(5)), Some(0));
    }

    #[test]
    fn expiry_says_why_each_missing_branch_did_not_answer() {
        let (mut collector, now, id) = one_open(3, true);
        collector.on_answer(0, complete(id, 10, 3), now);
        collector.link_down(2, now, "closed by the branch".into());
        collector.expire(id, now + Duration::from_millis(1000));
        let report = &collector.take_progress().reports[0];
        let missing: Vec<_> = report.missing().collect();
        assert_eq!(
            missing,
            [
                ("b2", "did not answer within 1000 ms"),
                (
                    "b3",
                    "unreachable for the last 1000 ms (closed by the branch); no answer within 1000 ms"
                ),
            ]
        );
    }

    #[test]
    fn a_failed_request_fills_only_an_empty_slot() {
        let (mut collector, now, id) = one_open(2, false);
        collector.on_answer(0, complete(id, 10, 2), now);
        collector.on_failure(0, id, "refused the request: no".into(), now);
        collector.on_failure(1, id, "closed the connection without answering".into(), now);
        let report = &collector.take_progress().reports[0];
        let missing: Vec<_> = report.missing().collect();
        assert_eq!(missing, [("b2", "closed the connection without answering")]);
    }

    #[test]
    fn reports_are_handed_out_in_id_order() {
        let mut collector = collector(1, false);
        let now = Instant::now();
        let first = start_open(&mut collector, now);
        let second = start_open(&mut collector, now);
        collector.on_answer(0, complete(second, 30, 1), now);
        let progress = collector.take_progress();
        assert_eq!(progress.finished, [second]);
        assert!(progress.reports.is_empty(), "held behind snapshot {first}");
        collector.on_answer(0, complete(first, 30, 1), now);
        let ids: Vec<u32> = collector
            .take_progress()
            .reports
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [first, second]);
        assert_eq!((collector.summary.snapshots, collector.summary.ok), (2, 2));
    }

    #[test]
    fn the_run_is_complete_once_every_snapshot_is_handed_out() {
        let mut collector = Collector::new(&config(1, Some(1)), 1, false);
        let now = Instant::now();
        let id = start_open(&mut collector, now);
        assert!(!collector.run_complete());
        collector.on_answer(0, complete(id, 30, 1), now);
        assert!(collector.run_complete());
    }

    #[test]
    fn stopping_hands_out_held_reports_and_lists_what_is_in_flight() {
        let mut collector = collector(3, false);
        let started = Instant::now();
        let first = start_open(&mut collector, started);
        let (second, _) = collector.start(started, |i| i == 1, |_| 0).unwrap();
        collector.open(second, started);
        collector.on_answer(0, complete(first, 10, 3), started);
        for index in 0..3 {
            collector.on_answer(index, complete(second, 10, 3), started);
        }
        let unfinished = collector.stop(started + Duration::from_millis(50));
        let ids: Vec<u32> = collector
            .take_progress()
            .reports
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [second]);
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].id, first);
        assert_eq!(unfinished[0].initiator, "b1");
        assert_eq!(unfinished[0].age, Duration::from_millis(50));
        assert_eq!(unfinished[0].waiting_for, ["b2", "b3"]);
    }

    #[test]
    fn a_reconnected_branch_is_asked_again_for_what_it_owes_and_starts() {
        let mut collector = collector(2, true);
        let now = Instant::now();
        let (started_at_b2, _) = collector.start(now, |i| i == 1, |_| 0).unwrap();
        collector.open(started_at_b2, now);
        let other = start_open(&mut collector, now);
        collector.on_answer(1, complete(other, 10, 2), now);
        assert_eq!(collector.initiated_by(1), [started_at_b2]);
        assert_eq!(collector.awaited_from(1), [started_at_b2]);
        collector.link_down(1, now, "reset".into());
        let later = now + Duration::from_millis(30);
        assert_eq!(collector.link_up(1, later), Some(Duration::from_millis(30)));
        assert_eq!(collector.summary.reconnects, 1);
    }
}
