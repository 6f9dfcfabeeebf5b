//! The report card for an implementation of the exercise's branches (`controller --compat MODE
//! --grade`): a run of the compat driver, asking every record twice and from right after
//! `InitSnapshot`, then one verdict per rule, each with its evidence.
//!
//! The rules, each a function below that reads only the run's reports and probes:
//! - `sums-to-total`: every snapshot's records add up to the bank's total.
//! - `channel-state-layout`: `channel_state` has one entry per other branch, in `all_branches`
//!   order. The length is seen directly. The order is proven by the peer names of a snapbank
//!   record's channel counters; an original-schema record names no channel, so its order is
//!   checked where Chandy-Lamport fixes a value: a branch records the channel its first marker
//!   came on as empty, and that marker comes from the initiator when a branch sends its markers
//!   together (as every implementation we know does). A non-zero entry in the initiator's slot
//!   is evidence of another order.
//! - `answer-stable`: a snapshot's record, once given, is the same when asked again (the first
//!   ask goes right after `InitSnapshot`, so a branch that answers before its record is
//!   finished shows it here).
//! - `money-moves`: balances change between snapshots.
//! - `no-negative-balance`: no balance or channel amount is negative. The wire's fields are
//!   `uint32`; an implementation keeping balances in a signed 32-bit int (Java's `int`) sends a
//!   negative one as 2^31 or more, which no bank of at most 2^31 - 1 holds.
//! - `answers-match-id`: every answer is for the snapshot id asked for.
//! - `survives-bad-frames`: after a garbage frame, a truncated frame and a frame with an unknown
//!   field, each on a connection of its own, the branch still accepts connections and answers
//!   the snapshots that follow.
//! - `init-connection-pattern`: the branch takes `InitBranch` on the connection pattern the mode
//!   says (it answers snapshots afterwards, which a branch never initialised cannot).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::compat::CompatMode;
use super::report::{ShortfallKind, SnapshotReport};

/// How long a probe's connection is kept open for the branch to read it (or close it).
const PROBE_LINGER: Duration = Duration::from_millis(300);

/// How long a probe may take to connect.
const PROBE_CONNECT: Duration = Duration::from_secs(2);

/// The bad frames sent to every branch before the snapshots: their names and bytes.
fn bad_frames() -> [(&'static str, Vec<u8>); 3] {
    // A RetrieveSnapshot for an id no run uses, with an unknown field 99 (varint 1) inside.
    let retrieve = [0x08, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x98, 0x06, 0x01];
    let mut message = vec![0x2a, retrieve.len() as u8];
    message.extend_from_slice(&retrieve);
    let mut unknown = vec![message.len() as u8];
    unknown.extend_from_slice(&message);
    [
        // A length prefix of 5, then bytes that are no protobuf message (field 0, bad wire types).
        ("a garbage frame", vec![0x05, 0xff, 0xff, 0xff, 0xff, 0xff]),
        // A prefix promising 40 bytes, then 3 of them and the end of the connection.
        ("a truncated frame", vec![0x28, 0x2a, 0x02, 0x08]),
        ("a frame with an unknown field", unknown),
    ]
}

/// What one probe of one branch came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The branch's name.
    pub branch: String,
    /// What was sent ("a garbage frame"...), or "a connection afterwards".
    pub what: String,
    /// `Err` says why the probe could not be made (the branch no longer accepts connections).
    pub outcome: Result<(), String>,
}

/// Sends each bad frame to the branch `name` at `addr` on a connection of its own, then checks
/// that it still accepts a connection.
pub(super) async fn probe_branch(name: String, addr: SocketAddr) -> Vec<Probe> {
    let mut probes = Vec::new();
    for (what, bytes) in bad_frames() {
        probes.push(Probe {
            branch: name.clone(),
            what: what.to_string(),
            outcome: send_bad(addr, &bytes).await,
        });
    }
    let afterwards = tokio::time::timeout(PROBE_CONNECT, TcpStream::connect(addr)).await;
    probes.push(Probe {
        branch: name,
        what: "a connection afterwards".to_string(),
        outcome: match afterwards {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(format!("refused a connection afterwards: {err}")),
            Err(_) => Err("did not accept a connection afterwards in time".to_string()),
        },
    });
    probes
}

/// Connects to `addr`, writes `bytes`, closes the writing half and reads until the branch
/// closes or [`PROBE_LINGER`] passes.
async fn send_bad(addr: SocketAddr, bytes: &[u8]) -> Result<(), String> {
    let mut stream = tokio::time::timeout(PROBE_CONNECT, TcpStream::connect(addr))
        .await
        .map_err(|_| "did not accept a connection in time".to_string())?
        .map_err(|err| format!("refused the connection: {err}"))?;
    stream
        .write_all(bytes)
        .await
        .map_err(|err| format!("write failed: {err}"))?;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 512];
    let reading = async {
        while let Ok(read) = stream.read(&mut sink).await {
            if read == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(PROBE_LINGER, reading).await;
    Ok(())
}

/// One rule's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleResult {
    /// The rule's name.
    pub rule: &'static str,
    /// Whether the implementation kept it.
    pub pass: bool,
    /// What was seen, in words.
    pub evidence: String,
}

/// Every rule's verdict for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportCard {
    /// In the order of the module doc.
    pub rules: Vec<RuleResult>,
}

/// At most this many examples of a rule broken are listed as its evidence.
const EXAMPLES: usize = 3;

impl ReportCard {
    /// Grades a run over the branches `names` (file order) of a bank of `total`, driven in
    /// `mode`: its reports in id order and the probes made before them.
    pub fn grade(
        names: &[String],
        total: u64,
        mode: CompatMode,
        reports: &[SnapshotReport],
        probes: &[Probe],
    ) -> Self {
        let run = Run {
            names,
            total,
            reports,
        };
        Self {
            rules: vec![
                run.sums_to_total(),
                run.channel_state_layout(),
                run.answer_stable(),
                run.money_moves(),
                run.no_negative_balance(),
                run.answers_match_id(),
                run.survives_bad_frames(probes),
                run.init_connection_pattern(mode),
            ],
        }
    }

    /// Whether every rule passed.
    pub fn all_pass(&self) -> bool {
        self.rules.iter().all(|rule| rule.pass)
    }

    /// One line per rule: `PASS rule: evidence` or `FAIL rule: evidence`, then a tally.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for rule in &self.rules {
            let verdict = if rule.pass { "PASS" } else { "FAIL" };
            out += &format!("{verdict} {}: {}\n", rule.rule, rule.evidence);
        }
        let passed = self.rules.iter().filter(|rule| rule.pass).count();
        out += &format!("{passed} of {} rules passed\n", self.rules.len());
        out
    }

    /// One JSON object: `{"rules": [{"rule", "pass", "evidence"}...], "passed", "failed"}`.
    pub fn to_json(&self) -> String {
        let passed = self.rules.iter().filter(|rule| rule.pass).count();
        json!({
            "rules": self.rules.iter().map(|rule| json!({
                "rule": rule.rule,
                "pass": rule.pass,
                "evidence": rule.evidence,
            })).collect::<Vec<_>>(),
            "passed": passed,
            "failed": self.rules.len() - passed,
        })
        .to_string()
    }
}

/// A run's reports, read rule by rule.
struct Run<'a> {
    names: &'a [String],
    total: u64,
    reports: &'a [SnapshotReport],
}

/// `pass` when `broken` is empty, the evidence `ok` or the first examples of `broken`.
fn verdict(rule: &'static str, broken: Vec<String>, ok: String) -> RuleResult {
    if broken.is_empty() {
        return RuleResult {
            rule,
            pass: true,
            evidence: ok,
        };
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
    RuleResult {
        rule,
        pass: false,
        evidence,
    }
}

impl Run<'_> {
    /// The branches' shortfalls of `kind`, in words with the snapshot id.
    fn shortfalls(&self, kind: ShortfallKind) -> Vec<String> {
        self.reports
            .iter()
            .flat_map(|report| {
                let notes = report.asking.iter().flat_map(|notes| &notes.shortfalls);
                notes.filter(move |s| s.kind == kind).map(move |s| {
                    format!(
                        "{} {} (snapshot {})",
                        self.names[s.branch], s.detail, report.id
                    )
                })
            })
            .collect()
    }

    fn sums_to_total(&self) -> RuleResult {
        let broken = self
            .reports
            .iter()
            .filter(|report| report.total != Some(self.total))
            .map(|report| match report.total {
                Some(sum) => format!("snapshot {} summed to {sum}", report.id),
                None => {
                    let missing: Vec<String> = report
                        .missing()
                        .map(|(name, why)| format!("{name} {why}"))
                        .collect();
                    format!(
                        "snapshot {} had no complete set of records: {}",
                        report.id,
                        missing.join(", ")
                    )
                }
            })
            .collect();
        let ok = match self.reports.len() {
            0 => String::new(),
            n => format!("{n} of {n} snapshots summed to {}", self.total),
        };
        if self.reports.is_empty() {
            return verdict("sums-to-total", vec!["no snapshot was reported".into()], ok);
        }
        verdict("sums-to-total", broken, ok)
    }

    fn channel_state_layout(&self) -> RuleResult {
        let mut broken = self.shortfalls(ShortfallKind::ChannelCount);
        let mut by_names = 0;
        let mut by_initiator = 0;
        for report in self.reports {
            let Some(initiator) = self.names.iter().position(|n| *n == report.initiator) else {
                continue;
            };
            for (index, branch) in report.branches.iter().enumerate() {
                let record = match &branch.record {
                    Ok(record) => record,
                    Err(why) if why.contains("malformed channel counters") => {
                        broken.push(format!("{} {why} (snapshot {})", branch.name, report.id));
                        continue;
                    }
                    Err(_) => continue,
                };
                if record.audits.is_some() {
                    // Paired with their peers' names when the report was assembled.
                    by_names += 1;
                    continue;
                }
                if index == initiator {
                    continue;
                }
                by_initiator += 1;
                let slot = if initiator < index {
                    initiator
                } else {
                    initiator - 1
                };
                if let Some((_, amount)) = record.incoming.get(slot)
                    && *amount != 0
                {
                    broken.push(format!(
                        "{}'s entry {slot} (for the initiator {}) was {amount} in snapshot {}, but the channel a branch's first marker came on is recorded empty: the entries are not in all_branches order",
                        branch.name, report.initiator, report.id
                    ));
                }
            }
        }
        let ok = format!(
            "every record had {} entries; {by_names} records' order proven by their channels' peer names, {by_initiator} records' initiator entry empty as Chandy-Lamport requires",
            self.names.len().saturating_sub(1)
        );
        verdict("channel-state-layout", broken, ok)
    }

    fn answer_stable(&self) -> RuleResult {
        let broken: Vec<String> = self
            .reports
            .iter()
            .flat_map(|report| {
                report
                    .asking
                    .iter()
                    .flat_map(|notes| notes.findings.clone())
            })
            .collect();
        let asked: u32 = self
            .reports
            .iter()
            .flat_map(|report| report.asking.iter().flat_map(|notes| &notes.asks))
            .sum();
        let ok = format!(
            "every record was asked for at least twice ({asked} asks over {} snapshots) and was the same each time",
            self.reports.len()
        );
        verdict("answer-stable", broken, ok)
    }

    fn money_moves(&self) -> RuleResult {
        let balances: Vec<(u32, Vec<u64>)> = self
            .reports
            .iter()
            .filter_map(|report| {
                let balances = report
                    .branches
                    .iter()
                    .map(|b| b.record.as_ref().ok().map(|r| r.balance))
                    .collect::<Option<Vec<u64>>>()?;
                Some((report.id, balances))
            })
            .collect();
        if balances.len() < 2 {
            return verdict(
                "money-moves",
                vec![format!(
                    "{} complete snapshot(s): at least two are needed to see money move",
                    balances.len()
                )],
                String::new(),
            );
        }
        let changed = balances.windows(2).filter(|w| w[0].1 != w[1].1).count();
        let ok = format!(
            "balances changed between {changed} of {} pairs of consecutive complete snapshots",
            balances.len() - 1
        );
        if changed == 0 {
            let (first, last) = (balances[0].0, balances[balances.len() - 1].0);
            return verdict(
                "money-moves",
                vec![format!(
                    "every balance was the same from snapshot {first} to snapshot {last}: no transfers"
                )],
                ok,
            );
        }
        verdict("money-moves", Vec::new(), ok)
    }

    fn no_negative_balance(&self) -> RuleResult {
        let negative = |amount: u64| amount > i32::MAX as u64;
        let as_int = |amount: u64| amount as u32 as i32;
        let mut broken = Vec::new();
        let mut seen = 0;
        for report in self.reports {
            for branch in &report.branches {
                let Ok(record) = &branch.record else {
                    continue;
                };
                seen += 1;
                if negative(record.balance) {
                    broken.push(format!(
                        "{}'s balance in snapshot {} was {}, which is {} as a 32-bit int",
                        branch.name,
                        report.id,
                        record.balance,
                        as_int(record.balance)
                    ));
                }
                for (from, amount) in &record.incoming {
                    if negative(*amount) {
                        broken.push(format!(
                            "{} recorded {amount} in transit from {from} in snapshot {}, which is {} as a 32-bit int",
                            branch.name, report.id, as_int(*amount)
                        ));
                    }
                }
            }
        }
        verdict(
            "no-negative-balance",
            broken,
            format!("{seen} records, every balance and channel amount between 0 and 2^31 - 1"),
        )
    }

    fn answers_match_id(&self) -> RuleResult {
        let broken = self.shortfalls(ShortfallKind::OtherSnapshot);
        let answered = self
            .reports
            .iter()
            .flat_map(|report| &report.branches)
            .filter(|b| b.record.is_ok())
            .count();
        verdict(
            "answers-match-id",
            broken,
            format!("every one of {answered} records named the snapshot id asked for"),
        )
    }

    /// The snapshots branch `index` answered: with a record, or with an answer that fell short
    /// in its content (not by silence).
    fn answered_by(&self, index: usize) -> usize {
        self.reports
            .iter()
            .filter(|report| {
                let recorded = report.branches.get(index).is_some_and(|b| b.record.is_ok());
                let spoke = report
                    .asking
                    .iter()
                    .flat_map(|n| &n.shortfalls)
                    .any(|s| s.branch == index && s.kind != ShortfallKind::NoAnswer);
                recorded || spoke
            })
            .count()
    }

    fn survives_bad_frames(&self, probes: &[Probe]) -> RuleResult {
        let mut broken: Vec<String> = probes
            .iter()
            .filter_map(|probe| match &probe.outcome {
                Ok(()) => None,
                Err(why) => Some(format!("{} after {}: {why}", probe.branch, probe.what)),
            })
            .collect();
        if probes.is_empty() {
            broken.push("no probe was made".to_string());
        }
        for (index, name) in self.names.iter().enumerate() {
            if self.answered_by(index) == 0 {
                broken.push(format!("{name} answered no snapshot after the bad frames"));
            }
        }
        let answered: Vec<String> = (0..self.names.len())
            .map(|index| format!("{} {}", self.names[index], self.answered_by(index)))
            .collect();
        let ok = format!(
            "each branch was sent a garbage frame, a truncated frame and a frame with an unknown field, each on a connection of its own, then accepted a connection and answered snapshots afterwards ({})",
            answered.join(", ")
        );
        verdict("survives-bad-frames", broken, ok)
    }

    fn init_connection_pattern(&self, mode: CompatMode) -> RuleResult {
        let (pattern, other) = match mode {
            CompatMode::PerCommand => ("on a connection of its own, closed at once", "persistent"),
            CompatMode::Persistent => (
                "on the one connection that carried every command",
                "per-command",
            ),
        };
        let broken = (0..self.names.len())
            .filter(|&index| self.answered_by(index) == 0)
            .map(|index| {
                format!(
                    "{} answered no snapshot after InitBranch came {pattern} (does it expect --compat {other}?)",
                    self.names[index]
                )
            })
            .collect();
        verdict(
            "init-connection-pattern",
            broken,
            format!("every branch took InitBranch {pattern} and answered snapshots afterwards"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pb::return_snapshot::LocalSnapshot;
    use std::time::Duration;

    fn names() -> Vec<String> {
        ["b1", "b2", "b3"].map(String::from).to_vec()
    }

    fn report(id: u32, initiator: &str, records: [(u32, [u32; 2]); 3]) -> SnapshotReport {
        let answers = records
            .into_iter()
            .map(|(balance, channels)| {
                Ok(LocalSnapshot {
                    snapshot_id: id,
                    balance,
                    channel_state: channels.to_vec(),
                    ..Default::default()
                })
            })
            .collect();
        SnapshotReport::assemble(id, initiator, &names(), answers, 30, Duration::ZERO)
    }

    fn probes() -> Vec<Probe> {
        names()
            .into_iter()
            .map(|branch| Probe {
                branch,
                what: "a garbage frame".into(),
                outcome: Ok(()),
            })
            .collect()
    }

    fn card(reports: &[SnapshotReport]) -> ReportCard {
        ReportCard::grade(&names(), 30, CompatMode::PerCommand, reports, &probes())
    }

    fn failed(card: &ReportCard) -> Vec<&'static str> {
        card.rules
            .iter()
            .filter(|r| !r.pass)
            .map(|r| r.rule)
            .collect()
    }

    #[test]
    fn a_well_behaved_run_passes_every_rule() {
        // Snapshot 1 at b1: b2 and b3 hold 0 in b1's slot (entry 0); money in transit b3->b2.
        let reports = [
            report(1, "b1", [(10, [0, 0]), (5, [0, 5]), (10, [0, 0])]),
            report(2, "b2", [(12, [0, 0]), (8, [0, 0]), (10, [0, 0])]),
        ];
        let card = card(&reports);
        assert!(card.all_pass(), "{}", card.to_text());
        assert!(card.to_text().ends_with("8 of 8 rules passed\n"));
    }

    #[test]
    fn an_entry_in_the_initiators_slot_a_negative_balance_and_no_movement_are_named() {
        // At b2's snapshot, b1's entry 0 (b2's slot) holds money: another order.
        let out_of_order = [
            report(1, "b2", [(10, [5, 0]), (5, [0, 0]), (10, [0, 0])]),
            report(2, "b2", [(10, [5, 0]), (5, [0, 0]), (10, [0, 0])]),
        ];
        assert_eq!(
            failed(&card(&out_of_order)),
            ["channel-state-layout", "money-moves"]
        );
        let negative = (-5i32) as u32;
        let overdrawn = [
            report(1, "b1", [(negative, [0, 0]), (20, [0, 0]), (15, [0, 0])]),
            report(2, "b1", [(10, [0, 0]), (10, [0, 0]), (10, [0, 0])]),
        ];
        let card = card(&overdrawn);
        assert_eq!(failed(&card), ["sums-to-total", "no-negative-balance"]);
        let evidence = &card.rules[4].evidence;
        assert!(
            evidence.contains("which is -5 as a 32-bit int"),
            "{evidence}"
        );
        let json: serde_json::Value = serde_json::from_str(&card.to_json()).unwrap();
        assert_eq!(json["failed"], 2);
        assert_eq!(json["rules"][4]["rule"], "no-negative-balance");
        assert_eq!(json["rules"][4]["pass"], false);
    }
}
