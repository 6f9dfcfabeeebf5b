//! [`Asking`]: how the compat driver asks original-schema branches for their records of one
//! snapshot until the answers will do, with no I/O and no clock of its own (the actor sends the
//! asks, keeps the timers and says when each ask's patience is over).
//!
//! Such branches ignore `wait_ms` and answer at once, or not at all, so one ask after a fixed
//! delay needs tuning to each implementation's speed. Instead the driver asks again, after a
//! capped backoff, every time an answer falls short, until the retrieve deadline. The rules:
//! - A shortfall is asked again, after [`FIRST_PAUSE`] doubling with each ask of that branch up
//!   to [`PAUSE_CAP`]: no answer
//!   (the connection closed, or nothing within [`ANSWER_PATIENCE`]), a record of another
//!   snapshot id, a `channel_state` of the wrong length, or a snapbank branch still recording.
//! - An earlier ask is never cancelled: its answer, should it still come, is taken like any.
//! - Once every branch holds a record: if they add up to the total, they are the answers. If
//!   not, each branch whose record may still change (an original-schema record, which carries
//!   no status) is asked again; a record that names its branch (a snapbank branch's) is final.
//! - A record that differs from the one the same branch gave for the same snapshot before is a
//!   finding (the report lists it), and the newer one is held.
//! - A snapbank status other than `COMPLETE` or `RECORDING` is that branch's final word.
//! - At the deadline, each branch has its latest record, or its last shortfall and the number
//!   of asks it was given.
//! - Confirming (the report card's `--grade`): once the records add up, each branch that has
//!   given one record only is asked once more, so that every record is asked for twice; a
//!   snapbank branch's second answer may say its record was already retrieved.

use std::time::Duration;

use super::collector::reason_for;
use super::report::{Shortfall, ShortfallKind};
use crate::wire::pb;
use crate::wire::pb::return_snapshot::LocalSnapshot;

/// First pause before asking again a branch whose answer fell short.
const FIRST_PAUSE: Duration = Duration::from_millis(50);

/// Longest pause between two asks of one branch: a branch whose record is finished is asked
/// again within about this long.
pub(super) const PAUSE_CAP: Duration = Duration::from_secs(1);

/// How long an ask may go unanswered before the branch is asked again (the earlier ask stays
/// open: a branch busy for longer still answers it).
pub(super) const ANSWER_PATIENCE: Duration = Duration::from_secs(1);

/// What one branch has said about the snapshot so far.
#[derive(Debug, Default)]
struct Asked {
    /// Asks sent so far.
    asks: u32,
    /// The latest ask is still within its patience.
    waiting: bool,
    /// An ask again is scheduled and not yet sent.
    scheduled: bool,
    /// The latest record of an original-schema branch (it may still change).
    held: Option<LocalSnapshot>,
    /// A snapbank branch's final word: its finished record, or why it has none.
    last_word: Option<Result<LocalSnapshot, String>>,
    /// Why the latest answer fell short.
    shortfall: Option<String>,
    /// Records (or confirmations of a final one) given so far.
    records: u32,
}

impl Asked {
    fn settled(&self) -> bool {
        self.held.is_some() || self.last_word.is_some()
    }
}

/// What the actor does next for the snapshot.
#[derive(Debug, PartialEq)]
pub(super) enum Next {
    /// Answers are still to come (or asks are scheduled): nothing to do.
    Wait,
    /// Ask each of these branches again after its pause.
    AskAgain(Vec<(usize, Duration)>),
    /// These are the answers, one per branch in file order: file them.
    Done(Vec<Result<LocalSnapshot, String>>),
}

/// One snapshot's asks of every branch.
#[derive(Debug)]
pub(super) struct Asking {
    id: u32,
    /// Branch names in file order.
    names: Vec<String>,
    /// The money the records must add up to.
    total: u64,
    branches: Vec<Asked>,
    /// Records that changed between asks, in words.
    findings: Vec<String>,
    /// Answers that fell short, once per branch and kind.
    shortfalls: Vec<Shortfall>,
    /// Ask every record twice (see the module doc).
    confirm: bool,
}

impl Asking {
    /// The asks for snapshot `id` of the branches `names` (file order), whose records must add
    /// up to `total`.
    pub(super) fn new(id: u32, names: &[String], total: u64) -> Self {
        Self {
            id,
            names: names.to_vec(),
            total,
            branches: names.iter().map(|_| Asked::default()).collect(),
            findings: Vec::new(),
            shortfalls: Vec::new(),
            confirm: false,
        }
    }

    /// The same, asking every record twice.
    pub(super) fn confirming(mut self) -> Self {
        self.confirm = true;
        self
    }

    /// Notes that branch `index` fell short in this `kind` of way (once per kind).
    fn note(&mut self, index: usize, kind: ShortfallKind, detail: &str) {
        let noted = self
            .shortfalls
            .iter()
            .any(|s| s.branch == index && s.kind == kind);
        if !noted {
            self.shortfalls.push(Shortfall {
                branch: index,
                kind,
                detail: detail.to_string(),
            });
        }
    }

    /// An ask goes to branch `index` now: returns its number (1 for the first ask).
    pub(super) fn asking(&mut self, index: usize) -> u32 {
        let asked = &mut self.branches[index];
        asked.asks += 1;
        asked.waiting = true;
        asked.scheduled = false;
        asked.asks
    }

    /// Ask number `ask` of branch `index` got no record, for `reason` (closed, nothing within
    /// the patience, the connection down). Ignored unless it is the branch's latest ask and
    /// still awaited.
    pub(super) fn no_answer(&mut self, index: usize, ask: u32, reason: String) {
        let asked = &mut self.branches[index];
        if asked.asks != ask || !asked.waiting {
            return;
        }
        asked.waiting = false;
        self.note(index, ShortfallKind::NoAnswer, &reason);
        self.branches[index].shortfall = Some(reason);
    }

    /// Branch `index` answered `local`, `elapsed` after the snapshot started. `ask` is the number
    /// of the ask whose own connection carried the answer (`None` on a persistent connection,
    /// where answers are matched by their id): a record of another id there falls short.
    pub(super) fn answered(
        &mut self,
        index: usize,
        ask: Option<u32>,
        local: LocalSnapshot,
        elapsed: Duration,
    ) {
        let others = self.names.len().saturating_sub(1);
        let name = self.names[index].clone();
        let id = self.id;
        let latest = {
            let asked = &self.branches[index];
            ask.is_none_or(|ask| ask == asked.asks) && asked.waiting
        };
        let status = pb::SnapshotStatus::try_from(local.status);
        let asked = &mut self.branches[index];
        match &asked.last_word {
            Some(Ok(before)) => {
                // A final record asked for again: the same, or released once retrieved.
                asked.waiting = false;
                let same = (before.balance, &before.channel_state)
                    == (local.balance, &local.channel_state);
                if same || status == Ok(pb::SnapshotStatus::AlreadyRetrieved) {
                    asked.records += 1;
                } else if local.snapshot_id == id {
                    self.findings.push(format!(
                        "{name} changed its record of snapshot {id} between asks: {}, then {}",
                        describe(before),
                        describe(&local)
                    ));
                }
                return;
            }
            Some(Err(_)) => {
                asked.waiting = false;
                return;
            }
            None => {}
        }
        let shortfall = if local.snapshot_id != id {
            Some((
                ShortfallKind::OtherSnapshot,
                format!("answered with its record of snapshot {}", local.snapshot_id),
            ))
        } else {
            match status {
                Ok(pb::SnapshotStatus::Complete) if local.channel_state.len() != others => Some((
                    ShortfallKind::ChannelCount,
                    format!(
                        "returned {} channel states for {others} incoming channels",
                        local.channel_state.len()
                    ),
                )),
                Ok(pb::SnapshotStatus::Complete) => None,
                Ok(pb::SnapshotStatus::Recording) => {
                    Some((ShortfallKind::StillRecording, reason_for(&local, elapsed)))
                }
                _ => {
                    asked.waiting = false;
                    asked.last_word = Some(Err(reason_for(&local, elapsed)));
                    return;
                }
            }
        };
        if let Some((kind, reason)) = shortfall {
            self.note(index, kind, &reason);
            if latest {
                let asked = &mut self.branches[index];
                asked.waiting = false;
                asked.shortfall = Some(reason);
            }
            return;
        }
        // A record settles the branch whichever ask it answers.
        asked.waiting = false;
        asked.shortfall = None;
        asked.records += 1;
        if !local.branch_name.is_empty() {
            asked.last_word = Some(Ok(local));
            return;
        }
        if let Some(before) = &asked.held
            && (before.balance, &before.channel_state) != (local.balance, &local.channel_state)
        {
            self.findings.push(format!(
                "{name} changed its record of snapshot {id} between asks: {}, then {}",
                describe(before),
                describe(&local)
            ));
        }
        asked.held = Some(local);
    }

    /// What to do now that something came in.
    pub(super) fn next(&mut self) -> Next {
        if self.branches.iter().any(|b| b.waiting || b.scheduled) {
            return Next::Wait;
        }
        let short: Vec<usize> = (0..self.branches.len())
            .filter(|&i| !self.branches[i].settled())
            .collect();
        if !short.is_empty() {
            return self.ask_again(short);
        }
        if self
            .branches
            .iter()
            .any(|b| matches!(b.last_word, Some(Err(_))))
        {
            return Next::Done(self.answers());
        }
        if self.sum() == self.total {
            let unconfirmed: Vec<usize> = (0..self.branches.len())
                .filter(|&i| self.confirm && self.branches[i].records < 2)
                .collect();
            if unconfirmed.is_empty() {
                return Next::Done(self.answers());
            }
            return self.ask_again(unconfirmed);
        }
        let revisable: Vec<usize> = (0..self.branches.len())
            .filter(|&i| self.branches[i].held.is_some())
            .collect();
        if revisable.is_empty() {
            return Next::Done(self.answers());
        }
        self.ask_again(revisable)
    }

    /// Schedules an ask again of each of `indices`, each after its backoff pause (doubling with
    /// every ask the branch was given, up to the cap).
    fn ask_again(&mut self, indices: Vec<usize>) -> Next {
        let asks = indices
            .into_iter()
            .map(|index| {
                let asked = &mut self.branches[index];
                asked.scheduled = true;
                let doublings = asked.asks.saturating_sub(1).min(16);
                (index, (FIRST_PAUSE * (1u32 << doublings)).min(PAUSE_CAP))
            })
            .collect();
        Next::AskAgain(asks)
    }

    /// Balances plus money in transit of the records held.
    fn sum(&self) -> u64 {
        self.branches
            .iter()
            .filter_map(|b| match (&b.held, &b.last_word) {
                (Some(local), _) | (None, Some(Ok(local))) => Some(local),
                _ => None,
            })
            .map(|local| {
                u64::from(local.balance)
                    + local
                        .channel_state
                        .iter()
                        .map(|&c| u64::from(c))
                        .sum::<u64>()
            })
            .sum()
    }

    /// Each branch's record, or why it has none.
    fn answers(&self) -> Vec<Result<LocalSnapshot, String>> {
        self.branches
            .iter()
            .map(|asked| match (&asked.last_word, &asked.held) {
                (Some(word), _) => word.clone(),
                (None, Some(local)) => Ok(local.clone()),
                (None, None) => Err(format!(
                    "{} ({})",
                    asked
                        .shortfall
                        .clone()
                        .unwrap_or_else(|| "did not answer".to_string()),
                    plural(asked.asks, "ask")
                )),
            })
            .collect()
    }

    /// The deadline has passed: each branch's latest record, or its last shortfall.
    pub(super) fn conclude(&self) -> Vec<Result<LocalSnapshot, String>> {
        self.answers()
    }

    /// How many asks each branch was given, in file order.
    pub(super) fn asks(&self) -> Vec<u32> {
        self.branches.iter().map(|b| b.asks).collect()
    }

    /// Records that changed between asks.
    pub(super) fn findings(&self) -> &[String] {
        &self.findings
    }

    /// Answers that fell short, once per branch and kind.
    pub(super) fn shortfalls(&self) -> &[Shortfall] {
        &self.shortfalls
    }
}

/// A record in words, for a finding.
fn describe(local: &LocalSnapshot) -> String {
    format!(
        "balance {} channel_state {:?}",
        local.balance, local.channel_state
    )
}

/// `count` and `word`, pluralised.
fn plural(count: u32, word: &str) -> String {
    if count == 1 {
        format!("1 {word}")
    } else {
        format!("{count} {word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("b{i}")).collect()
    }

    fn record(id: u32, balance: u32, channels: &[u32]) -> LocalSnapshot {
        LocalSnapshot {
            snapshot_id: id,
            balance,
            channel_state: channels.to_vec(),
            ..Default::default()
        }
    }

    fn asked_all(asking: &mut Asking) -> Vec<u32> {
        (0..asking.branches.len())
            .map(|i| asking.asking(i))
            .collect()
    }

    #[test]
    fn records_that_add_up_are_the_answers_at_once() {
        let mut asking = Asking::new(1, &names(2), 20);
        asked_all(&mut asking);
        asking.answered(0, Some(1), record(1, 10, &[0]), Duration::ZERO);
        assert_eq!(asking.next(), Next::Wait);
        asking.answered(1, Some(1), record(1, 7, &[3]), Duration::ZERO);
        match asking.next() {
            Next::Done(answers) => assert!(answers.iter().all(Result::is_ok)),
            other => panic!("{other:?}"),
        }
        assert_eq!(asking.asks(), [1, 1]);
        assert!(asking.findings().is_empty());
    }

    #[test]
    fn every_kind_of_shortfall_is_asked_again_with_a_growing_capped_pause() {
        let mut asking = Asking::new(4, &names(3), 30);
        let asks = asked_all(&mut asking);
        asking.no_answer(0, asks[0], "closed the connection without answering".into());
        asking.answered(1, Some(asks[1]), record(3, 10, &[0, 0]), Duration::ZERO);
        asking.answered(2, Some(asks[2]), record(4, 10, &[0]), Duration::ZERO);
        let Next::AskAgain(again) = asking.next() else {
            panic!("expected asks again");
        };
        assert_eq!(
            again,
            [(0, FIRST_PAUSE), (1, FIRST_PAUSE), (2, FIRST_PAUSE)]
        );
        assert_eq!(asking.next(), Next::Wait, "asks are scheduled");
        let mut pauses = Vec::new();
        for _ in 0..8 {
            let ask = asking.asking(0);
            asking.no_answer(0, ask, "said nothing".into());
            asking.asking(1);
            asking.answered(1, None, record(4, 10, &[0, 0]), Duration::ZERO);
            asking.asking(2);
            asking.answered(2, None, record(4, 10, &[0, 0]), Duration::ZERO);
            match asking.next() {
                Next::AskAgain(again) => pauses.push(again[0].1),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(pauses[0], FIRST_PAUSE * 2);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), PAUSE_CAP);
        let answers = asking.conclude();
        assert_eq!(answers[0], Err("said nothing (9 asks)".to_string()));
        assert_eq!(asking.asks(), [9, 9, 9]);
    }

    #[test]
    fn records_that_do_not_add_up_are_asked_again_and_a_change_is_a_finding() {
        let mut asking = Asking::new(2, &names(2), 20);
        asked_all(&mut asking);
        // b2 answered before its record was finished: 5 in transit not yet recorded.
        asking.answered(0, Some(1), record(2, 10, &[0]), Duration::ZERO);
        asking.answered(1, Some(1), record(2, 5, &[0]), Duration::ZERO);
        let Next::AskAgain(again) = asking.next() else {
            panic!("records that do not add up must be asked again");
        };
        assert_eq!(again.len(), 2);
        asking.asking(0);
        asking.asking(1);
        asking.answered(0, Some(2), record(2, 10, &[0]), Duration::ZERO);
        asking.answered(1, Some(2), record(2, 5, &[5]), Duration::ZERO);
        let Next::Done(answers) = asking.next() else {
            panic!("they add up now");
        };
        assert_eq!(answers[1], Ok(record(2, 5, &[5])));
        assert_eq!(
            asking.findings(),
            [
                "b2 changed its record of snapshot 2 between asks: balance 5 channel_state [0], then balance 5 channel_state [5]"
            ]
        );
    }

    #[test]
    fn a_late_answer_to_an_earlier_ask_is_taken_and_a_stale_failure_is_not() {
        let mut asking = Asking::new(1, &names(2), 20);
        let first = asking.asking(0);
        asking.asking(1);
        asking.answered(1, Some(1), record(1, 10, &[0]), Duration::ZERO);
        asking.no_answer(0, first, "said nothing within 1000 ms".into());
        assert!(matches!(asking.next(), Next::AskAgain(_)));
        let second = asking.asking(0);
        // The first ask's connection ends now: not the latest ask, ignored.
        asking.no_answer(0, first, "closed".into());
        assert_eq!(asking.next(), Next::Wait);
        asking.answered(0, Some(first), record(1, 10, &[0]), Duration::ZERO);
        assert!(matches!(asking.next(), Next::Done(_)));
        assert_eq!(second, 2);
    }

    #[test]
    fn confirming_asks_every_record_twice_and_takes_a_released_one_as_the_same() {
        let mut asking = Asking::new(3, &names(2), 20).confirming();
        asked_all(&mut asking);
        let snapbank = LocalSnapshot {
            branch_name: "b1".into(),
            ..record(3, 10, &[0])
        };
        asking.answered(0, Some(1), snapbank, Duration::ZERO);
        asking.answered(1, Some(1), record(3, 10, &[0]), Duration::ZERO);
        let Next::AskAgain(again) = asking.next() else {
            panic!("each record is asked for again");
        };
        assert_eq!(again.len(), 2);
        asking.asking(0);
        asking.asking(1);
        let released = LocalSnapshot {
            branch_name: "b1".into(),
            status: pb::SnapshotStatus::AlreadyRetrieved as i32,
            ..record(3, 0, &[])
        };
        asking.answered(0, Some(2), released, Duration::ZERO);
        asking.answered(1, Some(2), record(3, 10, &[0]), Duration::ZERO);
        let Next::Done(answers) = asking.next() else {
            panic!("both records confirmed");
        };
        assert!(answers.iter().all(Result::is_ok));
        assert!(asking.findings().is_empty());
        assert_eq!(asking.asks(), [2, 2]);
    }

    #[test]
    fn each_kind_of_shortfall_is_noted_once_per_branch() {
        let mut asking = Asking::new(5, &names(2), 20);
        for _ in 0..2 {
            let ask = asking.asking(0);
            asking.answered(0, Some(ask), record(4, 10, &[0]), Duration::ZERO);
            let ask = asking.asking(1);
            asking.answered(1, Some(ask), record(5, 10, &[0, 0]), Duration::ZERO);
        }
        let kinds: Vec<(usize, ShortfallKind)> = asking
            .shortfalls()
            .iter()
            .map(|s| (s.branch, s.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                (0, ShortfallKind::OtherSnapshot),
                (1, ShortfallKind::ChannelCount)
            ]
        );
    }

    #[test]
    fn a_snapbank_record_is_final_and_its_statuses_are_kept() {
        let snapbank = |status: pb::SnapshotStatus, balance| LocalSnapshot {
            branch_name: "b1".into(),
            status: status as i32,
            ..record(1, balance, &[0])
        };
        let mut asking = Asking::new(1, &names(2), 20);
        asked_all(&mut asking);
        asking.answered(
            0,
            Some(1),
            snapbank(pb::SnapshotStatus::Recording, 0),
            Duration::ZERO,
        );
        asking.answered(1, Some(1), record(1, 10, &[0]), Duration::ZERO);
        assert!(
            matches!(asking.next(), Next::AskAgain(again) if again == [(0, FIRST_PAUSE)]),
            "still recording is asked again"
        );
        asking.asking(0);
        asking.answered(
            0,
            Some(2),
            snapbank(pb::SnapshotStatus::Complete, 9),
            Duration::ZERO,
        );
        // 9 + 10 is not 20: only the original-schema branch is asked again.
        assert!(
            matches!(asking.next(), Next::AskAgain(again) if again.len() == 1 && again[0].0 == 1)
        );
        asking.asking(1);
        asking.answered(1, Some(2), record(1, 10, &[0]), Duration::ZERO);
        assert!(matches!(asking.next(), Next::AskAgain(_)));

        let mut asking = Asking::new(1, &names(2), 20);
        asked_all(&mut asking);
        asking.answered(
            0,
            Some(1),
            snapbank(pb::SnapshotStatus::CutShort, 0),
            Duration::ZERO,
        );
        asking.answered(1, Some(1), record(1, 10, &[0]), Duration::ZERO);
        let Next::Done(answers) = asking.next() else {
            panic!("a final word without a record ends the asking");
        };
        assert!(
            answers[0]
                .as_ref()
                .is_err_and(|why| why.starts_with("lost its connection"))
        );
    }
}
