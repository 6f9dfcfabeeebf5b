//! The report card of a controller, as one branch sees it (`branch --grade-controller FILE`).
//!
//! A branch can judge the controller driving it only by what reaches it: the `InitBranch` it
//! got, the snapshots it recorded (started here by `InitSnapshot`, or by a first marker), and
//! the retrieves it was sent. [`ControllerGrade`] keeps exactly that, fed at the branch actor's
//! command boundary and where records begin and finish; it reads no clock and does no I/O (the
//! caller passes the instants, and writes the card where it wants).
//!
//! The rules, one verdict each ([`Outcome::Pass`], [`Outcome::Fail`] or [`Outcome::Info`] when
//! one branch cannot judge):
//! - `init-split-evenly`: the balance and the member count; whether the split is even needs
//!   every branch's card (the balances may differ by at most 1), so it is `INFO` here, and the
//!   JSON form carries what a script needs to merge the cards.
//! - `init-lists-every-branch`: `all_branches` is non-empty, lists this branch, has no
//!   duplicate names.
//! - `asked-every-snapshot`: every snapshot recorded here was retrieved from here.
//! - `no-overlap`: no snapshot began here while another was recorded and not yet retrieved.
//! - `asked-after-recorded`: no retrieve arrived before this branch's record of that id was
//!   finished.
//! - `waited`: `INFO`, from a record finishing to its first retrieve (min/median/max ms).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;

/// How many examples of a broken rule the evidence names.
const EXAMPLES: usize = 5;

/// One rule's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The rule holds, as far as this branch saw.
    Pass,
    /// The rule is broken; the evidence says where.
    Fail,
    /// Not a verdict: a figure, or a rule one branch cannot judge alone.
    Info,
}

impl Outcome {
    /// The word that opens the rule's line.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Info => "INFO",
        }
    }
}

/// One line of the card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The rule's name, stable for scripts.
    pub rule: &'static str,
    /// Pass, fail or information.
    pub outcome: Outcome,
    /// What was seen.
    pub evidence: String,
}

/// The `InitBranch` this branch got.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InitSeen {
    /// The balance it gave this branch.
    balance: u64,
    /// The names in `all_branches`, in its order (empty when the list was unusable).
    members: Vec<String>,
    /// Why the branch could not use `all_branches` (a duplicate or bad name, a bad address).
    unusable: Option<String>,
}

/// What happened to one snapshot id here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SnapshotSeen {
    /// `InitSnapshot` for it came to this branch.
    initiated_here: bool,
    /// This branch's record of it began (from `InitSnapshot` or a first marker).
    begun: Option<Instant>,
    /// This branch's record of it was finished.
    finished: Option<Instant>,
    /// Retrieves for it, in all.
    retrieves: u32,
    /// Retrieves for it that arrived before the record was finished.
    early: u32,
    /// From the record finishing to the first retrieve after that.
    waited: Option<Duration>,
}

/// What a controller did to this branch, kept to grade it.
#[derive(Debug, Clone)]
pub struct ControllerGrade {
    /// This branch's name: the card is about the controller as this branch saw it.
    branch: String,
    /// The first `InitBranch`, if any came.
    init: Option<InitSeen>,
    /// How many `InitBranch` frames came (a repeat is refused by the branch).
    inits: u32,
    /// Every snapshot id this branch heard of, by id.
    snapshots: BTreeMap<u32, SnapshotSeen>,
    /// Pairs `(began, still unretrieved)`: a snapshot that began while another was recorded
    /// here and not yet retrieved.
    overlaps: Vec<(u32, u32)>,
}

impl ControllerGrade {
    /// An empty card for branch `branch`.
    pub fn new(branch: impl Into<String>) -> Self {
        Self {
            branch: branch.into(),
            init: None,
            inits: 0,
            snapshots: BTreeMap::new(),
            overlaps: Vec::new(),
        }
    }

    /// An `InitBranch` giving this branch `balance`, with the names of its `all_branches`.
    pub fn init_branch(&mut self, balance: u64, members: Vec<String>) {
        self.inits += 1;
        if self.init.is_none() {
            self.init = Some(InitSeen {
                balance,
                members,
                unusable: None,
            });
        }
    }

    /// An `InitBranch` giving this branch `balance` whose `all_branches` this branch could not
    /// use, for `reason` (the branch refused it).
    pub fn init_branch_unusable(&mut self, balance: u64, reason: String) {
        self.inits += 1;
        if self.init.is_none() {
            self.init = Some(InitSeen {
                balance,
                members: Vec::new(),
                unusable: Some(reason),
            });
        }
    }

    /// `InitSnapshot` for `id` came to this branch.
    pub fn init_snapshot(&mut self, id: u32) {
        self.snapshots.entry(id).or_default().initiated_here = true;
    }

    /// This branch's record of `id` began at `now`.
    pub fn record_begun(&mut self, id: u32, now: Instant) {
        let unretrieved: Vec<u32> = self
            .snapshots
            .iter()
            .filter(|&(&other, seen)| other != id && seen.begun.is_some() && seen.retrieves == 0)
            .map(|(&other, _)| other)
            .collect();
        for other in unretrieved {
            self.overlaps.push((id, other));
        }
        let seen = self.snapshots.entry(id).or_default();
        seen.begun.get_or_insert(now);
    }

    /// This branch's record of `id` was finished at `now`.
    pub fn record_finished(&mut self, id: u32, now: Instant) {
        let seen = self.snapshots.entry(id).or_default();
        seen.finished.get_or_insert(now);
    }

    /// Records begun and not finished: the ids whose finishing the caller must watch for.
    pub fn unfinished(&self) -> impl Iterator<Item = u32> + '_ {
        self.snapshots
            .iter()
            .filter(|(_, seen)| seen.begun.is_some() && seen.finished.is_none())
            .map(|(&id, _)| id)
    }

    /// Whether some record is begun and not finished (cheap, for the hot path).
    pub fn has_unfinished(&self) -> bool {
        self.unfinished().next().is_some()
    }

    /// A `RetrieveSnapshot` for `id` arrived at `now`.
    pub fn retrieve(&mut self, id: u32, now: Instant) {
        let seen = self.snapshots.entry(id).or_default();
        seen.retrieves += 1;
        match seen.finished {
            Some(finished) => {
                seen.waited
                    .get_or_insert(now.saturating_duration_since(finished));
            }
            None => seen.early += 1,
        }
    }

    /// The card's verdicts, one per rule, in a fixed order.
    pub fn verdicts(&self) -> Vec<Verdict> {
        vec![
            self.init_split_evenly(),
            self.init_lists_every_branch(),
            self.asked_every_snapshot(),
            self.no_overlap(),
            self.asked_after_recorded(),
            self.waited(),
        ]
    }

    /// Whether no rule failed.
    pub fn all_pass(&self) -> bool {
        self.verdicts()
            .iter()
            .all(|verdict| verdict.outcome != Outcome::Fail)
    }

    /// One `PASS|FAIL|INFO rule: evidence` line per rule.
    pub fn to_text(&self) -> String {
        let mut out = format!("# the controller as {} saw it\n", self.branch);
        for verdict in self.verdicts() {
            out += &format!(
                "{} {}: {}\n",
                verdict.outcome.word(),
                verdict.rule,
                verdict.evidence
            );
        }
        out
    }

    /// One JSON object holding the verdicts and the facts behind them (this branch's name,
    /// the `InitBranch` it got, the snapshots recorded and retrieved here), so that a script
    /// can merge every branch's card into the bank-wide rules one branch cannot judge.
    pub fn to_json(&self) -> String {
        let recorded: Vec<u32> = self.recorded().collect();
        let retrieved: Vec<u32> = self
            .snapshots
            .iter()
            .filter(|(_, seen)| seen.retrieves > 0)
            .map(|(&id, _)| id)
            .collect();
        let initiated: Vec<u32> = self
            .snapshots
            .iter()
            .filter(|(_, seen)| seen.initiated_here)
            .map(|(&id, _)| id)
            .collect();
        let verdicts = self.verdicts();
        json!({
            "branch": self.branch,
            "init": self.init.as_ref().map(|init| json!({
                "balance": init.balance,
                "members": init.members,
                "unusable": init.unusable,
            })),
            "init_branch_frames": self.inits,
            "snapshots": {
                "recorded": recorded,
                "retrieved": retrieved,
                "initiated_here": initiated,
            },
            "rules": verdicts.iter().map(|verdict| json!({
                "rule": verdict.rule,
                "outcome": verdict.outcome.word(),
                "evidence": verdict.evidence,
            })).collect::<Vec<_>>(),
            "failed": verdicts.iter().filter(|v| v.outcome == Outcome::Fail).count(),
        })
        .to_string()
    }

    /// Ids of the snapshots this branch recorded.
    fn recorded(&self) -> impl Iterator<Item = u32> + '_ {
        self.snapshots
            .iter()
            .filter(|(_, seen)| seen.begun.is_some())
            .map(|(&id, _)| id)
    }

    fn init_split_evenly(&self) -> Verdict {
        let rule = "init-split-evenly";
        let Some(init) = &self.init else {
            return fail(rule, "no InitBranch came".to_string());
        };
        let count = init.members.len();
        info(
            rule,
            format!(
                "balance {} of {count} members: one branch sees only its own share; the split is even when every branch's balance is within 1 of the others' (merge the cards of all {count}, see docs/grading.md)",
                init.balance
            ),
        )
    }

    fn init_lists_every_branch(&self) -> Verdict {
        let rule = "init-lists-every-branch";
        let Some(init) = &self.init else {
            return fail(rule, "no InitBranch came".to_string());
        };
        let mut broken = Vec::new();
        if let Some(reason) = &init.unusable {
            broken.push(format!("all_branches unusable: {reason}"));
        } else if init.members.is_empty() {
            broken.push("all_branches is empty".to_string());
        } else if !init.members.contains(&self.branch) {
            broken.push(format!("all_branches does not list {}", self.branch));
        }
        let mut seen = BTreeSet::new();
        let duplicates: BTreeSet<&str> = init
            .members
            .iter()
            .filter(|name| !seen.insert(name.as_str()))
            .map(String::as_str)
            .collect();
        if !duplicates.is_empty() {
            let names: Vec<&str> = duplicates.into_iter().collect();
            broken.push(format!("listed twice: {}", names.join(", ")));
        }
        if self.inits > 1 {
            broken.push(format!("{} InitBranch frames, not one", self.inits));
        }
        verdict(
            rule,
            broken,
            format!(
                "{} branches listed, {} among them, no name twice: {}",
                init.members.len(),
                self.branch,
                init.members.join(", ")
            ),
        )
    }

    fn asked_every_snapshot(&self) -> Verdict {
        let rule = "asked-every-snapshot";
        let recorded: Vec<u32> = self.recorded().collect();
        if recorded.is_empty() {
            return info(rule, "no snapshot was recorded here".to_string());
        }
        let never: Vec<u32> = self
            .snapshots
            .iter()
            .filter(|(_, seen)| seen.begun.is_some() && seen.retrieves == 0)
            .map(|(&id, _)| id)
            .collect();
        if never.is_empty() {
            pass(
                rule,
                format!(
                    "all {} snapshots recorded here were retrieved from here (ids {})",
                    recorded.len(),
                    ids(&recorded)
                ),
            )
        } else {
            fail(
                rule,
                format!(
                    "{} of {} snapshots recorded here never retrieved from here: ids {}",
                    never.len(),
                    recorded.len(),
                    ids(&never)
                ),
            )
        }
    }

    fn no_overlap(&self) -> Verdict {
        let rule = "no-overlap";
        let recorded = self.recorded().count();
        if recorded == 0 {
            return info(rule, "no snapshot was recorded here".to_string());
        }
        let broken = self
            .overlaps
            .iter()
            .map(|(began, open)| format!("{began} began while {open} was not yet retrieved"))
            .collect();
        verdict(
            rule,
            broken,
            format!("{recorded} snapshots, each began after the one before was retrieved"),
        )
    }

    fn asked_after_recorded(&self) -> Verdict {
        let rule = "asked-after-recorded";
        let total: u32 = self.snapshots.values().map(|seen| seen.retrieves).sum();
        if total == 0 {
            return info(rule, "no retrieve came".to_string());
        }
        let early: Vec<u32> = self
            .snapshots
            .iter()
            .filter(|(_, seen)| seen.early > 0)
            .map(|(&id, _)| id)
            .collect();
        if early.is_empty() {
            return pass(
                rule,
                format!("all {total} retrieves came after the record was finished"),
            );
        }
        let count: u32 = self.snapshots.values().map(|seen| seen.early).sum();
        fail(
            rule,
            format!(
                "{count} of {total} retrieves came before this branch's record was finished: ids {}",
                ids(&early)
            ),
        )
    }

    fn waited(&self) -> Verdict {
        let rule = "waited";
        let mut waits: Vec<Duration> = self.snapshots.values().filter_map(|s| s.waited).collect();
        if waits.is_empty() {
            return info(rule, "no retrieve came after a finished record".to_string());
        }
        waits.sort();
        let ms = |wait: Duration| wait.as_millis();
        info(
            rule,
            format!(
                "from the record finished to its retrieve, over {} snapshots: min {} ms, median {} ms, max {} ms",
                waits.len(),
                ms(waits[0]),
                ms(waits[waits.len() / 2]),
                ms(waits[waits.len() - 1])
            ),
        )
    }
}

/// Ids as `1, 2, 3`, the first few, then how many more.
fn ids(ids: &[u32]) -> String {
    let mut out: Vec<String> = ids.iter().take(EXAMPLES).map(u32::to_string).collect();
    if ids.len() > EXAMPLES {
        out.push(format!("and {} more", ids.len() - EXAMPLES));
    }
    out.join(", ")
}

fn pass(rule: &'static str, evidence: String) -> Verdict {
    Verdict {
        rule,
        outcome: Outcome::Pass,
        evidence,
    }
}

fn fail(rule: &'static str, evidence: String) -> Verdict {
    Verdict {
        rule,
        outcome: Outcome::Fail,
        evidence,
    }
}

fn info(rule: &'static str, evidence: String) -> Verdict {
    Verdict {
        rule,
        outcome: Outcome::Info,
        evidence,
    }
}

/// `Pass` with `ok` when `broken` is empty, else `Fail` with its first examples.
fn verdict(rule: &'static str, broken: Vec<String>, ok: String) -> Verdict {
    if broken.is_empty() {
        return pass(rule, ok);
    }
    let more = broken.len().saturating_sub(EXAMPLES);
    let mut evidence = broken
        .into_iter()
        .take(EXAMPLES)
        .collect::<Vec<_>>()
        .join("; ");
    if more > 0 {
        evidence += &format!("; and {more} more");
    }
    fail(rule, evidence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    fn outcome(grade: &ControllerGrade, rule: &str) -> (Outcome, String) {
        let verdict = grade
            .verdicts()
            .into_iter()
            .find(|verdict| verdict.rule == rule)
            .expect("the rule is on the card");
        (verdict.outcome, verdict.evidence)
    }

    /// A branch of three that recorded `ids` one after another, each finished 5 ms after it
    /// began and retrieved 10 ms after that.
    fn well_driven(ids: &[u32]) -> ControllerGrade {
        let mut grade = ControllerGrade::new("b1");
        grade.init_branch(1334, names(&["b1", "b2", "b3"]));
        let mut now = Instant::now();
        for &id in ids {
            grade.record_begun(id, now);
            now += Duration::from_millis(5);
            grade.record_finished(id, now);
            now += Duration::from_millis(10);
            grade.retrieve(id, now);
            now += Duration::from_millis(100);
        }
        grade
    }

    #[test]
    fn a_controller_that_waits_for_each_record_passes_every_rule() {
        let grade = well_driven(&[1, 2, 3]);
        assert!(grade.all_pass(), "{}", grade.to_text());
        for rule in [
            "init-lists-every-branch",
            "asked-every-snapshot",
            "no-overlap",
            "asked-after-recorded",
        ] {
            assert_eq!(outcome(&grade, rule).0, Outcome::Pass, "{rule}");
        }
        let (waited, evidence) = outcome(&grade, "waited");
        assert_eq!(waited, Outcome::Info);
        assert!(
            evidence.contains("min 10 ms, median 10 ms, max 10 ms"),
            "{evidence}"
        );
        let (split, evidence) = outcome(&grade, "init-split-evenly");
        assert_eq!(split, Outcome::Info);
        assert!(evidence.contains("balance 1334 of 3 members"), "{evidence}");
    }

    #[test]
    fn a_snapshot_never_retrieved_is_named() {
        let mut grade = well_driven(&[1]);
        grade.record_begun(2, Instant::now());
        grade.record_finished(2, Instant::now());
        let (verdict, evidence) = outcome(&grade, "asked-every-snapshot");
        assert_eq!(verdict, Outcome::Fail);
        assert!(
            evidence.contains("1 of 2") && evidence.ends_with("ids 2"),
            "{evidence}"
        );
    }

    #[test]
    fn a_snapshot_begun_while_another_is_unretrieved_is_an_overlap() {
        let mut grade = well_driven(&[]);
        let now = Instant::now();
        grade.record_begun(1, now);
        grade.record_begun(2, now);
        grade.record_finished(1, now);
        grade.record_finished(2, now);
        grade.retrieve(1, now);
        grade.retrieve(2, now);
        let (verdict, evidence) = outcome(&grade, "no-overlap");
        assert_eq!(verdict, Outcome::Fail);
        assert_eq!(evidence, "2 began while 1 was not yet retrieved");
        assert_eq!(outcome(&grade, "asked-every-snapshot").0, Outcome::Pass);
    }

    #[test]
    fn a_retrieve_before_the_record_finished_is_counted() {
        let mut grade = well_driven(&[1]);
        let now = Instant::now();
        // Asked before the marker came, then again while recording, then after.
        grade.retrieve(2, now);
        grade.record_begun(2, now);
        grade.retrieve(2, now);
        grade.record_finished(2, now);
        grade.retrieve(2, now);
        let (verdict, evidence) = outcome(&grade, "asked-after-recorded");
        assert_eq!(verdict, Outcome::Fail);
        assert_eq!(
            evidence,
            "2 of 4 retrieves came before this branch's record was finished: ids 2"
        );
    }

    #[test]
    fn a_bad_member_list_is_named() {
        let mut grade = ControllerGrade::new("b1");
        grade.init_branch(10, names(&["b2", "b2", "b3"]));
        let (verdict, evidence) = outcome(&grade, "init-lists-every-branch");
        assert_eq!(verdict, Outcome::Fail);
        assert_eq!(evidence, "all_branches does not list b1; listed twice: b2");
        let mut refused = ControllerGrade::new("b1");
        refused.init_branch_unusable(10, "duplicate branch name \"b2\"".to_string());
        refused.init_branch(10, names(&["b1", "b2"]));
        assert_eq!(
            outcome(&refused, "init-lists-every-branch").1,
            "all_branches unusable: duplicate branch name \"b2\"; 2 InitBranch frames, not one"
        );
        let mut empty = ControllerGrade::new("b1");
        empty.init_branch(10, Vec::new());
        assert_eq!(
            outcome(&empty, "init-lists-every-branch").1,
            "all_branches is empty"
        );
    }

    #[test]
    fn no_init_branch_fails_the_init_rules_and_leaves_the_rest_unjudged() {
        let grade = ControllerGrade::new("b1");
        assert_eq!(outcome(&grade, "init-split-evenly").0, Outcome::Fail);
        assert_eq!(outcome(&grade, "init-lists-every-branch").0, Outcome::Fail);
        for rule in [
            "asked-every-snapshot",
            "no-overlap",
            "asked-after-recorded",
            "waited",
        ] {
            assert_eq!(outcome(&grade, rule).0, Outcome::Info, "{rule}");
        }
    }

    #[test]
    fn the_json_form_carries_what_a_merge_needs() {
        let mut grade = well_driven(&[1, 2]);
        grade.init_snapshot(3);
        grade.record_begun(3, Instant::now());
        let json: serde_json::Value = serde_json::from_str(&grade.to_json()).unwrap();
        assert_eq!(json["branch"], "b1");
        assert_eq!(json["init"]["balance"], 1334);
        assert_eq!(json["init"]["members"], json!(["b1", "b2", "b3"]));
        assert_eq!(json["snapshots"]["recorded"], json!([1, 2, 3]));
        assert_eq!(json["snapshots"]["retrieved"], json!([1, 2]));
        assert_eq!(json["snapshots"]["initiated_here"], json!([3]));
        assert_eq!(json["failed"], 1);
        assert_eq!(json["rules"].as_array().unwrap().len(), 6);
    }
}
