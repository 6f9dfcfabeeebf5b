//! What the controller learns from one snapshot, and how it is printed.
//!
//! [`SnapshotReport::assemble`] turns the branches' `LocalSnapshot`s into a report, runs the
//! consistent-cut checker ([`crate::core::audit`]) over them, and draws a verdict;
//! [`SnapshotReport::to_text`] prints the assignment's format plus a verdict line, and
//! [`SnapshotReport::to_json`] one JSON object for machines.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use crate::core::audit::{Audit, ChannelCounters, ChannelEvidence, CutEvidence};
use crate::wire::pb::return_snapshot::{ChannelAudit, LocalSnapshot};

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
    /// The branch's channel counters, one per other branch in file order, when it sent them.
    pub audits: Option<Vec<ChannelAudit>>,
}

impl BranchRecord {
    /// Transfers the branch had sent, to all peers, before its cut (when it sent counters).
    pub fn transfers_sent(&self) -> Option<u64> {
        self.audits
            .as_ref()
            .map(|audits| audits.iter().map(|a| a.sent_count).sum())
    }

    /// Transfers the branch had received, from all peers, before its cut (when it sent
    /// counters).
    pub fn transfers_received(&self) -> Option<u64> {
        self.audits
            .as_ref()
            .map(|audits| audits.iter().map(|a| a.received_count).sum())
    }
}

/// Whether a snapshot accounts for all the money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every branch returned a finished record, every channel checked passed every rule, and the
    /// money sums to the bank's total.
    Ok,
    /// Every branch returned a finished record, but some channel broke a consistent-cut rule.
    Inconsistent,
    /// Every branch returned a finished record and the cut checks pass, but the sum is wrong.
    Mismatch,
    /// At least one branch has no usable record.
    Incomplete,
}

/// How the compat driver's asks for one snapshot went (`controller --compat`): original-schema
/// branches answer at once or not at all, so each is asked until its answer will do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AskNotes {
    /// How many asks each branch was given, in branches-file order.
    pub asks: Vec<u32>,
    /// Records that changed between asks, in words: an implementation's defect worth naming,
    /// since a controller that asks once would have taken the first.
    pub findings: Vec<String>,
    /// The answers that fell short, once per branch and kind, for the report card.
    pub shortfalls: Vec<Shortfall>,
}

/// One way a branch's answer fell short, once per snapshot (`controller --compat --grade`
/// names the rule each breaks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// The branch's index in branches-file order.
    pub branch: usize,
    /// What kind of shortfall.
    pub kind: ShortfallKind,
    /// In words.
    pub detail: String,
}

/// The kinds of answer that fall short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortfallKind {
    /// The connection closed unanswered, or nothing came in time.
    NoAnswer,
    /// A record of another snapshot id.
    OtherSnapshot,
    /// A `channel_state` of the wrong length.
    ChannelCount,
    /// A snapbank branch still recording.
    StillRecording,
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
    /// The consistent-cut check, when every record is there.
    pub audit: Option<Audit>,
    /// The conclusion.
    pub verdict: Verdict,
    /// The bank epoch the snapshot was taken in: 0 until the bank's first rollback.
    pub epoch: u64,
    /// With `--compat`: the asks each branch needed and what changed between them.
    pub asking: Option<AskNotes>,
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
        let audit = cut_evidence(&branches, expected_total).map(|evidence| Audit::check(&evidence));
        let verdict = match &audit {
            None => Verdict::Incomplete,
            Some(audit) if !audit.is_consistent() => Verdict::Inconsistent,
            Some(audit) if !audit.sums_to_total() => Verdict::Mismatch,
            Some(_) => Verdict::Ok,
        };
        Self {
            id,
            initiator: initiator.to_string(),
            elapsed,
            branches,
            expected_total,
            total: audit.as_ref().map(|audit| audit.total),
            epoch: 0,
            audit,
            verdict,
            asking: None,
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
        let mut out = format!("snapshot_id: {}", self.id);
        if self.epoch > 0 {
            let _ = write!(out, " (bank epoch {})", self.epoch);
        }
        out.push('\n');
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
        let _ = writeln!(out, "total: {}", self.verdict_text());
        if let Some(notes) = &self.asking {
            let asks: Vec<String> = self
                .branches
                .iter()
                .zip(&notes.asks)
                .map(|(branch, asks)| format!("{} {asks}", branch.name))
                .collect();
            let _ = writeln!(out, "asks: {}", asks.join(", "));
            for finding in &notes.findings {
                let _ = writeln!(out, "finding: {finding}");
            }
        }
        out
    }

    /// The verdict line's text after `total: `.
    fn verdict_text(&self) -> String {
        let Some(audit) = &self.audit else {
            let missing: Vec<String> = self
                .missing()
                .map(|(name, reason)| format!("{name} {reason}"))
                .collect();
            return format!("unknown (INCOMPLETE: {})", missing.join("; "));
        };
        let mut problems: Vec<String> = audit.violations.iter().map(ToString::to_string).collect();
        if !audit.sums_to_total() {
            problems.insert(0, format!("expected {}", self.expected_total));
        }
        match self.verdict {
            Verdict::Inconsistent => {
                format!("{} (INCONSISTENT: {})", audit.total, problems.join("; "))
            }
            Verdict::Mismatch => format!("{} (MISMATCH: {})", audit.total, problems.join("; ")),
            _ if audit.unchecked_channels.is_empty() => format!(
                "{} (ok; consistent cut, {} channels checked)",
                audit.total, audit.checked_channels
            ),
            _ => {
                let silent: Vec<&str> = self
                    .branches
                    .iter()
                    .filter(|b| b.record.as_ref().is_ok_and(|r| r.audits.is_none()))
                    .map(|b| b.name.as_str())
                    .collect();
                format!(
                    "{} (ok; sum only, no channel counters from {})",
                    audit.total,
                    silent.join(", ")
                )
            }
        }
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
                    "transfers_sent": record.transfers_sent(),
                    "transfers_received": record.transfers_received(),
                }),
                Err(reason) => json!({"name": branch.name, "missing": reason}),
            })
            .collect();
        let verdict = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Inconsistent => "inconsistent",
            Verdict::Mismatch => "mismatch",
            Verdict::Incomplete => "incomplete",
        };
        let consistency = self.audit.as_ref().map(|audit| {
            json!({
                "checked_channels": audit.checked_channels,
                "unchecked_channels": audit.unchecked_channels
                    .iter()
                    .map(|(from, to)| json!({"from": from, "to": to}))
                    .collect::<Vec<_>>(),
                "violations": audit.violations
                    .iter()
                    .map(|v| json!({"from": v.from, "to": v.to, "rule": v.rule.name(), "detail": v.detail}))
                    .collect::<Vec<_>>(),
            })
        });
        let mut object = json!({
            "snapshot_id": self.id,
            "epoch": self.epoch,
            "initiator": self.initiator,
            "elapsed_ms": self.elapsed.as_secs_f64() * 1000.0,
            "branches": branches,
            "total": self.total,
            "expected_total": self.expected_total,
            "verdict": verdict,
            "consistency": consistency,
        });
        if let Some(notes) = &self.asking {
            let asks: serde_json::Map<String, serde_json::Value> = self
                .branches
                .iter()
                .zip(&notes.asks)
                .map(|(branch, &asks)| (branch.name.clone(), asks.into()))
                .collect();
            object["asks"] = asks.into();
            object["findings"] = notes.findings.clone().into();
        }
        object.to_string()
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
    let audits = if local.channels.is_empty() {
        None
    } else {
        let well_formed = local.channels.len() == senders.len()
            && local.channels.iter().zip(&senders).all(|(audit, sender)| {
                audit.peer == **sender
                    && audit.in_transit_seq.len() == audit.in_transit_amount.len()
            });
        if !well_formed {
            return Err("returned malformed channel counters".to_string());
        }
        Some(local.channels.clone())
    };
    Ok(BranchRecord {
        balance: u64::from(local.balance),
        incoming: senders
            .into_iter()
            .cloned()
            .zip(local.channel_state.iter().map(|&amount| u64::from(amount)))
            .collect(),
        audits,
    })
}

/// The checker's view of a complete snapshot of a full-mesh bank: every channel `i -> j`, with
/// counters where both ends sent them. `None` when some record is missing.
fn cut_evidence(branches: &[BranchState], expected_total: u64) -> Option<CutEvidence> {
    let records: Vec<&BranchRecord> = branches
        .iter()
        .map(|branch| branch.record.as_ref().ok())
        .collect::<Option<_>>()?;
    // Position of branch `other` in branch `of`'s channel lists (which skip `of` itself).
    let slot = |of: usize, other: usize| if other < of { other } else { other - 1 };
    let mut channels = Vec::new();
    for (to, receiver) in records.iter().enumerate() {
        for from in (0..records.len()).filter(|&from| from != to) {
            let incoming = slot(to, from);
            let counters = match (&records[from].audits, &receiver.audits) {
                (Some(sender_audits), Some(receiver_audits)) => {
                    let sent = &sender_audits[slot(from, to)];
                    let received = &receiver_audits[incoming];
                    Some(ChannelCounters {
                        sent: sent.sent(),
                        received: received.received(),
                        in_transit: received
                            .in_transit_seq
                            .iter()
                            .zip(&received.in_transit_amount)
                            .map(|(&seq, &amount)| (seq, u64::from(amount)))
                            .collect(),
                    })
                }
                _ => None,
            };
            channels.push(ChannelEvidence {
                from,
                to,
                recorded_sum: receiver.incoming[incoming].1,
                counters,
            });
        }
    }
    Some(CutEvidence {
        names: branches.iter().map(|branch| branch.name.clone()).collect(),
        balances: records.iter().map(|record| record.balance).collect(),
        channels,
        expected_total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pb::return_snapshot::ChannelAudit;

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
             total: 3000 (ok; sum only, no channel counters from branch1, branch2, branch3)\n"
        );
    }

    /// Records with counters for a 3-branch bank where branch1 sent transfer #1 (10) to
    /// branch2, which had not received it at its cut; nothing else moved. Total 3010.
    fn audited() -> Vec<Result<LocalSnapshot, String>> {
        let digest = |(count, amount): (u64, u64)| match count {
            0 => 0,
            _ => crate::core::ChannelCount::default().after(amount).digest,
        };
        let audit = |peer: &str, sent: (u64, u64), received: (u64, u64), transit: &[(u64, u32)]| {
            ChannelAudit {
                peer: peer.into(),
                sent_count: sent.0,
                sent_amount: sent.1,
                received_count: received.0,
                received_amount: received.1,
                in_transit_seq: transit.iter().map(|t| t.0).collect(),
                in_transit_amount: transit.iter().map(|t| t.1).collect(),
                // At most one transfer per channel in this bank: its digest, or none.
                sent_digest: digest(sent),
                received_digest: digest(received),
            }
        };
        let record = |name: &str, balance, state: &[u32], channels| {
            Ok(LocalSnapshot {
                snapshot_id: 3,
                balance,
                channel_state: state.to_vec(),
                branch_name: name.into(),
                channels,
                ..Default::default()
            })
        };
        vec![
            record(
                "branch1",
                990,
                &[0, 0],
                vec![
                    audit("branch2", (1, 10), (0, 0), &[]),
                    audit("branch3", (0, 0), (0, 0), &[]),
                ],
            ),
            record(
                "branch2",
                1000,
                &[10, 0],
                vec![
                    audit("branch1", (0, 0), (0, 0), &[(1, 10)]),
                    audit("branch3", (0, 0), (0, 0), &[]),
                ],
            ),
            record(
                "branch3",
                1010,
                &[0, 0],
                vec![
                    audit("branch1", (0, 0), (0, 0), &[]),
                    audit("branch2", (0, 0), (0, 0), &[]),
                ],
            ),
        ]
    }

    #[test]
    fn records_with_counters_are_proven_consistent() {
        let report =
            SnapshotReport::assemble(3, "branch1", &names(), audited(), 3010, Duration::ZERO);
        assert!(report.is_ok(), "{}", report.to_text());
        assert!(
            report
                .to_text()
                .ends_with("total: 3010 (ok; consistent cut, 6 channels checked)\n")
        );
    }

    #[test]
    fn a_broken_record_gets_a_verdict_naming_channel_and_rule() {
        // branch2 counts the in-transit transfer twice, and its sum follows.
        let mut answers = audited();
        let broken = answers[1].as_mut().unwrap();
        broken.channel_state[0] = 20;
        broken.channels[0].in_transit_seq = vec![1, 1];
        broken.channels[0].in_transit_amount = vec![10, 10];
        let report =
            SnapshotReport::assemble(3, "branch1", &names(), answers, 3010, Duration::ZERO);
        assert_eq!(report.verdict, Verdict::Inconsistent);
        let text = report.to_text();
        assert!(
            text.ends_with(
                "total: 3020 (INCONSISTENT: expected 3010; \
                 branch1->branch2 in-transit-sequence: recorded transfers #1 #1 in transit, expected #1; \
                 branch1->branch2 in-transit-amount: recorded 20 in transit, but branch1 sent 10 before its cut that branch2 received after its own)\n"
            ),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["verdict"], "inconsistent");
        assert_eq!(
            json["consistency"]["violations"][0]["rule"],
            "in-transit-sequence"
        );
        assert_eq!(json["consistency"]["violations"][0]["from"], "branch1");

        // branch3 closes its channel from branch1 early... there is nothing in transit there;
        // instead branch2 drops the in-transit transfer: a channel closed too early.
        let mut answers = audited();
        let early = answers[1].as_mut().unwrap();
        early.channel_state[0] = 0;
        early.channels[0].in_transit_seq.clear();
        early.channels[0].in_transit_amount.clear();
        let report =
            SnapshotReport::assemble(3, "branch1", &names(), answers, 3010, Duration::ZERO);
        assert_eq!(report.verdict, Verdict::Inconsistent);
        assert!(report.to_text().contains(
            "branch1->branch2 in-transit-sequence: recorded transfers none in transit, expected #1"
        ));
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
