//! What the controller learns from one snapshot, and how it is printed.
//!
//! [`SnapshotReport::assemble`] turns the branches' `LocalSnapshot`s into a report and a verdict;
//! [`SnapshotReport::to_text`] prints the assignment's format plus a verdict line, and
//! [`SnapshotReport::to_json`] one JSON object for machines.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use crate::wire::pb::return_snapshot::LocalSnapshot;

/// One branch's part of a global snapshot, as the controller understood it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchState {
    /// The branch's name.
    pub name: String,
    /// Its balance and the money in transit towards it per sender, or why there is no record.
    pub record: Result<BranchRecord, String>,
}

/// A finished record, with channels named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchRecord {
    /// The branch's balance at its cut.
    pub balance: u64,
    /// `(sender, amount)`: money in transit on the channel from `sender`, in branches-file order.
    pub incoming: Vec<(String, u64)>,
}

/// Whether a snapshot accounts for all the money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every branch returned a finished record and the money sums to the bank's total.
    Ok,
    /// Every branch returned a finished record but the sum is wrong.
    Mismatch,
    /// At least one branch has no usable record.
    Incomplete,
}

/// One global snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotReport {
    /// The snapshot id.
    pub id: u32,
    /// The branch that was asked to start it.
    pub initiator: String,
    /// From sending `InitSnapshot` to holding every record (or giving up).
    pub elapsed: Duration,
    /// One entry per branch, in branches-file order.
    pub branches: Vec<BranchState>,
    /// The money the bank holds.
    pub expected_total: u64,
    /// Balances plus money in transit, when every record is there.
    pub total: Option<u64>,
    /// The conclusion.
    pub verdict: Verdict,
}

impl SnapshotReport {
    /// Builds a report from each branch's answer (`Err` says why a branch has none). A record
    /// whose channel list does not have one entry per other branch is treated as missing.
    pub fn assemble(
        id: u32,
        initiator: &str,
        names: &[String],
        answers: Vec<Result<LocalSnapshot, String>>,
        expected_total: u64,
        elapsed: Duration,
    ) -> Self {
        let branches: Vec<BranchState> = names
            .iter()
            .zip(answers)
            .map(|(name, answer)| BranchState {
                name: name.clone(),
                record: answer.and_then(|local| name_channels(name, names, &local)),
            })
            .collect();
        let total = branches.iter().try_fold(0u64, |sum, branch| {
            let record = branch.record.as_ref().ok()?;
            let in_transit: u64 = record.incoming.iter().map(|(_, amount)| amount).sum();
            Some(sum + record.balance + in_transit)
        });
        let verdict = match total {
            None => Verdict::Incomplete,
            Some(total) if total == expected_total => Verdict::Ok,
            Some(_) => Verdict::Mismatch,
        };
        Self {
            id,
            initiator: initiator.to_string(),
            elapsed,
            branches,
            expected_total,
            total,
            verdict,
        }
    }

    /// Whether the snapshot is complete and sums to the total.
    pub fn is_ok(&self) -> bool {
        self.verdict == Verdict::Ok
    }

    /// Branches without a usable record, with the reason.
    pub fn missing(&self) -> impl Iterator<Item = (&str, &str)> {
        self.branches
            .iter()
            .filter_map(|branch| match &branch.record {
                Ok(_) => None,
                Err(reason) => Some((branch.name.as_str(), reason.as_str())),
            })
    }

    /// The assignment's text format, then a verdict line.
    pub fn to_text(&self) -> String {
        let mut out = format!("snapshot_id: {}\n", self.id);
        for branch in &self.branches {
            match &branch.record {
                Ok(record) => {
                    let _ = write!(out, "{}: {}", branch.name, record.balance);
                    for (from, amount) in &record.incoming {
                        let _ = write!(out, ", {from}->{}: {amount}", branch.name);
                    }
                    out.push('\n');
                }
                Err(reason) => {
                    let _ = writeln!(out, "{}: no record ({reason})", branch.name);
                }
            }
        }
        match (&self.verdict, self.total) {
            (Verdict::Ok, Some(total)) => {
                let _ = writeln!(out, "total: {total} (ok)");
            }
            (Verdict::Mismatch, Some(total)) => {
                let _ = writeln!(
                    out,
                    "total: {total} (MISMATCH: expected {})",
                    self.expected_total
                );
            }
            _ => {
                let missing: Vec<String> = self
                    .missing()
                    .map(|(name, reason)| format!("{name} {reason}"))
                    .collect();
                let _ = writeln!(out, "total: unknown (INCOMPLETE: {})", missing.join("; "));
            }
        }
        out
    }

    /// One JSON object (a single line) with the same content.
    pub fn to_json(&self) -> String {
        let branches: Vec<_> = self
            .branches
            .iter()
            .map(|branch| match &branch.record {
                Ok(record) => json!({
                    "name": branch.name,
                    "balance": record.balance,
                    "channels": record.incoming.iter()
                        .map(|(from, amount)| json!({"from": from, "amount": amount}))
                        .collect::<Vec<_>>(),
                }),
                Err(reason) => json!({"name": branch.name, "missing": reason}),
            })
            .collect();
        let verdict = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Mismatch => "mismatch",
            Verdict::Incomplete => "incomplete",
        };
        json!({
            "snapshot_id": self.id,
            "initiator": self.initiator,
            "elapsed_ms": self.elapsed.as_secs_f64() * 1000.0,
            "branches": branches,
            "total": self.total,
            "expected_total": self.expected_total,
            "verdict": verdict,
        })
        .to_string()
    }
}

/// Pairs a record's `channel_state` (all branches in file order, skipping the answering one)
/// with the senders' names.
fn name_channels(
    name: &str,
    names: &[String],
    local: &LocalSnapshot,
) -> Result<BranchRecord, String> {
    let senders: Vec<&String> = names.iter().filter(|other| *other != name).collect();
    if local.channel_state.len() != senders.len() {
        return Err(format!(
            "returned {} channel states for {} incoming channels",
            local.channel_state.len(),
            senders.len()
        ));
    }
    if !local.branch_name.is_empty() && local.branch_name != name {
        return Err(format!("answered as {:?}", local.branch_name));
    }
    Ok(BranchRecord {
        balance: u64::from(local.balance),
        incoming: senders
            .into_iter()
            .cloned()
            .zip(local.channel_state.iter().map(|&amount| u64::from(amount)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["branch1", "branch2", "branch3"].map(String::from).to_vec()
    }

    fn local(balance: u32, channels: &[u32]) -> Result<LocalSnapshot, String> {
        Ok(LocalSnapshot {
            snapshot_id: 10,
            balance,
            channel_state: channels.to_vec(),
            ..Default::default()
        })
    }

    #[test]
    fn complete_snapshot_prints_the_assignment_format() {
        let answers = vec![
            local(1000, &[10, 0]),
            local(1000, &[0, 15]),
            local(960, &[15, 0]),
        ];
        let report =
            SnapshotReport::assemble(10, "branch2", &names(), answers, 3000, Duration::ZERO);
        assert!(report.is_ok());
        assert_eq!(
            report.to_text(),
            "snapshot_id: 10\n\
             branch1: 1000, branch2->branch1: 10, branch3->branch1: 0\n\
             branch2: 1000, branch1->branch2: 0, branch3->branch2: 15\n\
             branch3: 960, branch1->branch3: 15, branch2->branch3: 0\n\
             total: 3000 (ok)\n"
        );
    }

    #[test]
    fn mismatch_and_incomplete_verdicts_are_explicit() {
        let answers = vec![
            local(1000, &[0, 0]),
            local(1000, &[0, 0]),
            local(999, &[0, 0]),
        ];
        let report =
            SnapshotReport::assemble(1, "branch1", &names(), answers, 3000, Duration::ZERO);
        assert_eq!(report.verdict, Verdict::Mismatch);
        assert!(
            report
                .to_text()
                .ends_with("total: 2999 (MISMATCH: expected 3000)\n")
        );

        let answers = vec![
            local(1000, &[0, 0]),
            Err("did not answer within 50 ms".into()),
            local(1000, &[0]),
        ];
        let report =
            SnapshotReport::assemble(2, "branch1", &names(), answers, 3000, Duration::ZERO);
        assert_eq!(report.verdict, Verdict::Incomplete);
        let text = report.to_text();
        assert!(
            text.contains("branch2: no record (did not answer within 50 ms)"),
            "{text}"
        );
        assert!(
            text.contains("branch3 returned 1 channel states for 2 incoming channels"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["verdict"], "incomplete");
        assert_eq!(json["total"], serde_json::Value::Null);
        assert_eq!(
            json["branches"][1]["missing"],
            "did not answer within 50 ms"
        );
    }

    #[test]
    fn json_carries_ids_balances_channels_and_timing() {
        let answers = vec![local(1, &[1, 0]), local(1, &[0, 0]), local(0, &[0, 0])];
        let report =
            SnapshotReport::assemble(7, "branch3", &names(), answers, 3, Duration::from_millis(2));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["snapshot_id"], 7);
        assert_eq!(json["initiator"], "branch3");
        assert_eq!(json["verdict"], "ok");
        assert_eq!(json["total"], 3);
        assert_eq!(json["branches"][0]["channels"][0]["from"], "branch2");
        assert_eq!(json["branches"][0]["channels"][0]["amount"], 1);
        assert_eq!(json["elapsed_ms"], 2.0);
    }
}
