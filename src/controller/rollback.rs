//! [`Rollback`]: the controller's half of rolling the whole bank back to its latest checkpoint
//! when a branch lost its state, with no I/O: which command each branch is owed next, and when
//! each phase is over. [`super::ControllerActor`] carries it over its links.
//!
//! The rules, each a test below:
//! - A rollback starts in the next epoch, from the latest ok snapshot the controller holds
//!   (every branch's checkpointed balance, with the money recorded in transit to it credited).
//! - Phase one asks every branch that still holds a bank to stop and drop it
//!   (`RollbackPrepare`); a branch that came back empty has nothing to drop and counts as
//!   prepared at once.
//! - Phase two begins only once every branch is prepared: none of them trades or holds a
//!   channel of the old epoch any more, so nothing of it can reach the new one. Each branch
//!   then gets its balance in the new epoch: `RollbackCommit`, or `InitBranch` for one that came
//!   back empty (with a `RollbackCommit` after it, whose answer says it is done).
//! - An answer for another epoch or phase changes nothing; a branch asked again answers again.
//! - A branch that comes back empty while phase two runs may have lost money of the new epoch
//!   already: the rollback starts over, from phase one, in the epoch after.
//! - The rollback is over when every branch has answered phase two.

use std::time::{Duration, Instant};

/// Which phase a rollback is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Branches are stopping and dropping the old epoch.
    Prepare,
    /// Branches are taking their balances in the new epoch.
    Commit,
}

/// What a branch is owed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owed {
    /// Nothing (it has answered this phase).
    Nothing,
    /// `RollbackPrepare { epoch }`.
    Prepare { epoch: u64 },
    /// `RollbackCommit { epoch, balance }`.
    Commit { epoch: u64, balance: u64 },
    /// `InitBranch` into `epoch` with `balance` (it came back empty), then a `RollbackCommit`.
    Init { epoch: u64, balance: u64 },
}

/// One rollback of the bank to a checkpoint.
#[derive(Debug, Clone)]
pub struct Rollback {
    /// The epoch it starts.
    pub epoch: u64,
    /// The checkpoint's snapshot id.
    pub checkpoint: u32,
    /// Each branch's balance in the new epoch.
    balances: Vec<u64>,
    /// The branches that came back empty (they get `InitBranch`).
    empty: Vec<bool>,
    /// Which branches have answered the current phase.
    answered: Vec<bool>,
    phase: Phase,
    /// The branches whose loss caused it, by index.
    pub lost: Vec<usize>,
    /// Per branch, the transfers it reported sending in the ending epoch (phase one's answer;
    /// `None` for a branch that came back empty, whose count was lost with it).
    pub sent: Vec<Option<u64>>,
    /// When it began.
    pub started: Instant,
}

impl Rollback {
    /// A rollback to `epoch` from the checkpoint of snapshot `checkpoint` giving each branch
    /// `balances[i]`, because branch `lost` came back empty, begun at `now`.
    pub fn new(epoch: u64, checkpoint: u32, balances: Vec<u64>, lost: usize, now: Instant) -> Self {
        let mut rollback = Self::requested(epoch, checkpoint, balances, now);
        rollback.came_back_empty(lost);
        rollback
    }

    /// A rollback an operator asked for (`controller --attach --rollback-to`), with no branch
    /// lost: every branch prepares, then commits.
    pub fn requested(epoch: u64, checkpoint: u32, balances: Vec<u64>, now: Instant) -> Self {
        let n = balances.len();
        Self {
            epoch,
            checkpoint,
            balances,
            empty: vec![false; n],
            answered: vec![false; n],
            phase: Phase::Prepare,
            lost: Vec::new(),
            sent: vec![None; n],
            started: now,
        }
    }

    /// The phase it is in.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// What branch `index` is owed now.
    pub fn owed(&self, index: usize) -> Owed {
        if self.answered.get(index).is_none_or(|&done| done) {
            return Owed::Nothing;
        }
        let epoch = self.epoch;
        let balance = self.balances[index];
        match self.phase {
            Phase::Prepare => Owed::Prepare { epoch },
            Phase::Commit if self.empty[index] => Owed::Init { epoch, balance },
            Phase::Commit => Owed::Commit { epoch, balance },
        }
    }

    /// Branch `index` came back empty. In phase one it is prepared; in phase two the rollback
    /// must start over (`true`: the caller starts the next one).
    pub fn came_back_empty(&mut self, index: usize) -> bool {
        if index >= self.empty.len() {
            return false;
        }
        if !self.lost.contains(&index) {
            self.lost.push(index);
        }
        self.empty[index] = true;
        match self.phase {
            Phase::Prepare => {
                self.answered[index] = true;
                self.advance();
                false
            }
            Phase::Commit => true,
        }
    }

    /// Branch `index` answered phase `phase` of `epoch`, having sent `transfers_sent` in the
    /// ending epoch (phase one). Returns whether the rollback is now over.
    pub fn answered(
        &mut self,
        index: usize,
        epoch: u64,
        phase: Phase,
        transfers_sent: u64,
    ) -> bool {
        if epoch != self.epoch || phase != self.phase || index >= self.answered.len() {
            return false;
        }
        if !std::mem::replace(&mut self.answered[index], true) && phase == Phase::Prepare {
            self.sent[index] = Some(transfers_sent);
        }
        if phase == Phase::Commit {
            // It holds a bank of the new epoch now: if it is lost again, it must be prepared.
            self.empty[index] = false;
        }
        self.advance()
    }

    /// Moves to phase two once every branch is prepared; whether every branch has committed.
    fn advance(&mut self) -> bool {
        if !self.answered.iter().all(|&done| done) {
            return false;
        }
        match self.phase {
            Phase::Prepare => {
                self.phase = Phase::Commit;
                self.answered.fill(false);
                false
            }
            Phase::Commit => true,
        }
    }

    /// Branch `index` proved it holds a bank (the controller reconnected to it): in phase two
    /// it is owed a commit, not an `InitBranch`.
    pub fn reachable(&mut self, index: usize) {
        if self.phase == Phase::Commit
            && let Some(empty) = self.empty.get_mut(index)
        {
            *empty = false;
        }
    }

    /// Transfers undone, by the counters: what each branch that answered phase one had sent
    /// beyond `at_cut[i]`, its count at the checkpoint's cut (zeros when the checkpoint is of
    /// an earlier epoch than the one ending: counts start over per epoch). A branch that came
    /// back empty lost its count, so this is a lower bound when one did.
    pub fn undone(&self, at_cut: &[u64]) -> u64 {
        self.sent
            .iter()
            .enumerate()
            .filter_map(|(i, sent)| Some(sent.as_ref()?.saturating_sub(*at_cut.get(i)?)))
            .sum()
    }

    /// How long it has taken so far.
    pub fn took(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// The rollback after this one, because branch `lost` came back empty in phase two: the
    /// same checkpoint, the next epoch, from phase one. Every other branch is asked to prepare,
    /// even one that came back empty before: it may have been initialised since (one that is
    /// still empty says so when the controller reconnects, and counts as prepared then).
    pub fn next(&self, lost: usize, now: Instant) -> Self {
        let mut next = Self::new(
            self.epoch + 1,
            self.checkpoint,
            self.balances.clone(),
            lost,
            now,
        );
        for index in &self.lost {
            if !next.lost.contains(index) {
                next.lost.push(*index);
            }
        }
        next
    }
}

/// A finished rollback, as the controller reports it (one line on its output, an event in the
/// web view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackDone {
    /// The epoch the bank trades in now.
    pub epoch: u64,
    /// The checkpoint's snapshot id.
    pub checkpoint: u32,
    /// The branches that came back empty.
    pub lost: Vec<String>,
    /// Transfers undone by the counters (see [`Rollback::undone`]); `None` when the
    /// controller does not know the checkpoint's counters (a rollback to a checkpoint file).
    pub undone: Option<u64>,
    /// From the loss being noticed to every branch trading again.
    pub took: Duration,
}

impl RollbackDone {
    /// Its JSON form, as `controller --format json` prints it (inside `{"rollback": ...}`)
    /// and the web view lists it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "epoch": self.epoch,
            "checkpoint": self.checkpoint,
            "lost": self.lost,
            "undone": self.undone,
            "took_ms": self.took.as_secs_f64() * 1000.0,
        })
    }
}

impl std::fmt::Display for RollbackDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = if self.lost.is_empty() {
            "asked for".to_string()
        } else {
            format!("{} came back empty", self.lost.join(", "))
        };
        write!(
            f,
            "rollback: {why}; the bank was rolled back to snapshot {} and trades in epoch {} again after {} ms; {}",
            self.checkpoint,
            self.epoch,
            self.took.as_millis(),
            match self.undone {
                Some(undone) if self.lost.is_empty() => format!("{undone} transfer(s) undone"),
                Some(undone) => format!("at least {undone} transfer(s) undone"),
                None =>
                    "transfers undone: not known (the checkpoint file holds no counts)".to_string(),
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three(lost: usize) -> Rollback {
        Rollback::new(4, 9, vec![10, 20, 30], lost, Instant::now())
    }

    #[test]
    fn phase_one_asks_every_branch_but_the_empty_one_to_prepare() {
        let rollback = three(1);
        assert_eq!(rollback.owed(0), Owed::Prepare { epoch: 4 });
        assert_eq!(rollback.owed(1), Owed::Nothing);
        assert_eq!(rollback.owed(2), Owed::Prepare { epoch: 4 });
        assert_eq!(rollback.phase(), Phase::Prepare);
    }

    #[test]
    fn phase_two_begins_only_once_every_branch_is_prepared() {
        let mut rollback = three(1);
        assert!(!rollback.answered(0, 4, Phase::Prepare, 5));
        assert_eq!(rollback.phase(), Phase::Prepare);
        assert_eq!(rollback.owed(0), Owed::Nothing);
        assert!(!rollback.answered(2, 4, Phase::Prepare, 7));
        assert_eq!(rollback.phase(), Phase::Commit);
        assert_eq!(rollback.sent, vec![Some(5), None, Some(7)]);
        assert_eq!(rollback.undone(&[2, 9, 3]), 3 + 4);
        assert_eq!(
            rollback.owed(0),
            Owed::Commit {
                epoch: 4,
                balance: 10
            }
        );
        assert_eq!(
            rollback.owed(1),
            Owed::Init {
                epoch: 4,
                balance: 20
            }
        );
    }

    #[test]
    fn the_rollback_is_over_when_every_branch_has_committed() {
        let mut rollback = three(0);
        rollback.answered(1, 4, Phase::Prepare, 0);
        rollback.answered(2, 4, Phase::Prepare, 0);
        assert!(!rollback.answered(0, 4, Phase::Commit, 0));
        assert!(!rollback.answered(1, 4, Phase::Commit, 0));
        assert!(rollback.answered(2, 4, Phase::Commit, 0));
    }

    #[test]
    fn answers_of_another_epoch_or_phase_change_nothing() {
        let mut rollback = three(0);
        assert!(!rollback.answered(1, 3, Phase::Prepare, 100));
        assert!(!rollback.answered(1, 4, Phase::Commit, 100));
        assert_eq!(rollback.owed(1), Owed::Prepare { epoch: 4 });
        assert_eq!(rollback.sent[1], None);
        // Twice the same answer counts once.
        rollback.answered(1, 4, Phase::Prepare, 3);
        rollback.answered(1, 4, Phase::Prepare, 30);
        assert_eq!(rollback.sent[1], Some(3));
    }

    #[test]
    fn a_branch_empty_in_phase_one_counts_as_prepared() {
        let mut rollback = three(0);
        rollback.answered(1, 4, Phase::Prepare, 0);
        assert!(!rollback.came_back_empty(2));
        assert_eq!(rollback.phase(), Phase::Commit);
        assert_eq!(rollback.lost, vec![0, 2]);
        assert_eq!(
            rollback.owed(2),
            Owed::Init {
                epoch: 4,
                balance: 30
            }
        );
    }

    #[test]
    fn a_branch_empty_in_phase_two_starts_the_next_rollback_from_phase_one() {
        let mut rollback = three(0);
        rollback.answered(1, 4, Phase::Prepare, 0);
        rollback.answered(2, 4, Phase::Prepare, 0);
        rollback.answered(1, 4, Phase::Commit, 0);
        assert!(rollback.came_back_empty(1));
        let next = rollback.next(1, Instant::now());
        assert_eq!(next.epoch, 5);
        assert_eq!(next.phase(), Phase::Prepare);
        // Branch 0 was initialised in epoch 4 (or says it is empty when asked).
        assert_eq!(next.owed(0), Owed::Prepare { epoch: 5 });
        assert_eq!(next.owed(1), Owed::Nothing);
        assert_eq!(next.owed(2), Owed::Prepare { epoch: 5 });
        assert_eq!(next.lost, vec![1, 0]);
    }
}
