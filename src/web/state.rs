//! [`ViewState`]: what the web view knows about the bank, kept in bounded memory.
//!
//! Fed by the controller (reports through `on_report`, live events through the
//! [`crate::controller::ControllerObserver`] hook) and read by the HTTP handlers. It does no I/O
//! and takes the time as an argument, so it is unit-tested directly:
//!
//! - the last `keep` snapshots, each as its API object (the `--format json` object plus a `view`
//!   section: start time, per-branch time to record, money in transit, transfers per second)
//!   and its history summary, both serialized once when the report arrives and then shared
//!   immutably ([`Retained`] behind an `Arc`): a reader takes [`ViewState::recent`], a copy of
//!   pointers, and writes the response after letting go of the lock, so a long history never
//!   holds up the controller, which takes the same lock to add a report;
//! - Flink-style counters (started, in progress, by verdict), the latest ok and latest failed
//!   snapshot, and a duration histogram over every snapshot since the start (constant memory);
//! - the state of the controller's connection to each branch.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::controller::checkpoint::dir::CheckpointStats;
use crate::controller::{SnapshotReport, Verdict};

/// Upper bounds (seconds) of the snapshot duration histogram's buckets (`+Inf` is implied).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// At most this many snapshots' per-branch record times are held while waiting for their
/// reports; older ones are dropped (their reports then show no record times).
const PENDING_LIMIT: usize = 1024;

/// The controller's connection to one branch, as last heard.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkStatus {
    /// Not connected yet (the controller is still dialling).
    Connecting,
    /// Connected.
    Up,
    /// Lost, and why.
    Down(String),
}

/// One retained snapshot, immutable once made: the history and every reader in the middle of
/// writing a response share it.
#[derive(Debug)]
pub struct Retained {
    id: u32,
    /// The API object (`/api/snapshots/{id}`), serialized once.
    json: String,
    /// The compact form used by the history table and charts (`/api/history`), serialized once.
    summary: String,
    /// Whether its verdict is ok (for the latest-ok lookup).
    ok: bool,
    /// Its duration, for the overview's min/avg/max.
    elapsed_ms: f64,
    /// Money in transit at its cut when it is complete, for the overview's min/avg/max.
    in_transit: Option<u64>,
}

impl Retained {
    /// The snapshot's API object.
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// Some retained snapshots, newest first, taken from the state under its lock (a copy of
/// pointers) and written out after it is released.
#[derive(Debug, Clone, Default)]
pub struct Recent(Vec<Arc<Retained>>);

impl Recent {
    /// `/api/snapshots`: their API objects as one JSON array.
    pub fn write_snapshots(&self, out: &mut impl Write) -> io::Result<()> {
        self.write_array(out, |entry| &entry.json)
    }

    /// `/api/history`: their summaries as one JSON array.
    pub fn write_history(&self, out: &mut impl Write) -> io::Result<()> {
        self.write_array(out, |entry| &entry.summary)
    }

    fn write_array(
        &self,
        out: &mut impl Write,
        text: impl Fn(&Retained) -> &str,
    ) -> io::Result<()> {
        out.write_all(b"[")?;
        for (index, entry) in self.0.iter().enumerate() {
            if index > 0 {
                out.write_all(b",")?;
            }
            out.write_all(text(entry).as_bytes())?;
        }
        out.write_all(b"]")
    }

    /// How many snapshots.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Counts of reported snapshots per verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerdictCounts {
    /// Complete, proven consistent (or sum-checked) and summing to the total.
    pub ok: u64,
    /// Some channel broke a consistent-cut rule.
    pub inconsistent: u64,
    /// Consistent, but the sum is wrong.
    pub mismatch: u64,
    /// Some branch has no record.
    pub incomplete: u64,
}

/// A Prometheus-style cumulative histogram with fixed buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or below each bound of [`DURATION_BUCKETS`] (not cumulative here).
    pub counts: [u64; DURATION_BUCKETS.len()],
    /// Every observation, `+Inf` included.
    pub count: u64,
    /// Sum of the observations.
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        if let Some(bucket) = DURATION_BUCKETS.iter().position(|&bound| value <= bound) {
            self.counts[bucket] += 1;
        }
        self.count += 1;
        self.sum += value;
    }
}

/// The bank as the web view shows it.
#[derive(Debug)]
pub struct ViewState {
    /// Branch names in branches-file order.
    names: Vec<String>,
    /// Their addresses, for `/api/bank`.
    addrs: Vec<String>,
    /// The money the bank holds.
    expected_total: u64,
    /// How many snapshots to retain.
    keep: usize,
    /// The retained snapshots, oldest first.
    history: VecDeque<Arc<Retained>>,
    /// Snapshots started (from the observer; at least the number reported).
    started: u64,
    /// Snapshots reported.
    reported: u64,
    /// Reported snapshots by verdict.
    verdicts: VerdictCounts,
    /// Summary of the latest ok snapshot, kept even once it leaves `history`.
    latest_ok: Option<Value>,
    /// Summary of the latest snapshot that was not ok, with its reason.
    latest_failed: Option<Value>,
    /// Duration of every reported snapshot, in seconds.
    durations: Histogram,
    /// Per branch, the controller's connection.
    links: Vec<LinkStatus>,
    /// Per in-flight snapshot id, each branch's time to answer in ms (file order).
    pending: BTreeMap<u32, Vec<Option<f64>>>,
    /// Start time (ms since the epoch) and transfers sent at the cut of the last snapshot that
    /// had counters from every branch: the base of the next transfers-per-second figure.
    last_counters: Option<(f64, u64)>,
    /// The latest transfers-per-second figure.
    transfers_per_second: Option<f64>,
    /// Transfers sent by all branches at the latest counted cut.
    transfers_sent: Option<u64>,
    /// Money in transit at the latest complete snapshot.
    in_transit: Option<u64>,
    /// Balances at the latest complete snapshot, in file order.
    balances: Option<Vec<u64>>,
    /// Id of the latest reported snapshot.
    latest_id: Option<u32>,
    /// What the checkpoint writer has done (`--checkpoint-dir`); `None` without one.
    checkpoints: Option<Arc<CheckpointStats>>,
    /// Rollbacks of the bank so far.
    rollbacks_total: u64,
    /// The latest rollbacks, newest last (at most [`KEPT_ROLLBACKS`]), for the page's history.
    rollbacks: VecDeque<Value>,
}

/// How many rollbacks the view keeps for the page.
pub const KEPT_ROLLBACKS: usize = 20;

impl ViewState {
    /// An empty view of a bank of `names` (at `addrs`) holding `expected_total`, retaining the
    /// last `keep` snapshots (at least 1).
    pub fn new(names: Vec<String>, addrs: Vec<String>, expected_total: u64, keep: usize) -> Self {
        let links = vec![LinkStatus::Connecting; names.len()];
        Self {
            names,
            addrs,
            expected_total,
            keep: keep.max(1),
            history: VecDeque::new(),
            started: 0,
            reported: 0,
            verdicts: VerdictCounts::default(),
            latest_ok: None,
            latest_failed: None,
            durations: Histogram::default(),
            links,
            pending: BTreeMap::new(),
            last_counters: None,
            transfers_per_second: None,
            transfers_sent: None,
            in_transit: None,
            balances: None,
            latest_id: None,
            checkpoints: None,
            rollbacks_total: 0,
            rollbacks: VecDeque::new(),
        }
    }

    /// The bank was rolled back (`done`) at `now_ms`.
    pub fn rolled_back(&mut self, done: &crate::controller::rollback::RollbackDone, now_ms: f64) {
        self.rollbacks_total += 1;
        if self.rollbacks.len() == KEPT_ROLLBACKS {
            self.rollbacks.pop_front();
        }
        let mut entry = done.json();
        entry["at_ms"] = json!(now_ms);
        self.rollbacks.push_back(entry);
    }

    /// Rollbacks of the bank so far.
    pub fn rollbacks_total(&self) -> u64 {
        self.rollbacks_total
    }

    /// The bank epoch now: that of the latest rollback (0 before any).
    pub fn epoch(&self) -> u64 {
        self.rollbacks
            .back()
            .and_then(|latest| latest["epoch"].as_u64())
            .unwrap_or(0)
    }

    /// Follows a checkpoint writer's counters, for `/metrics`.
    pub fn track_checkpoints(&mut self, stats: Arc<CheckpointStats>) {
        self.checkpoints = Some(stats);
    }

    /// The checkpoint writer's counters, when the controller writes checkpoints.
    pub fn checkpoints(&self) -> Option<&CheckpointStats> {
        self.checkpoints.as_deref()
    }

    fn index(&self, branch: &str) -> Option<usize> {
        self.names.iter().position(|name| name == branch)
    }

    /// The controller's connection to `branch` changed.
    pub fn set_link(&mut self, branch: &str, status: LinkStatus) {
        if let Some(index) = self.index(branch) {
            self.links[index] = status;
        }
    }

    /// Snapshot `id` was started.
    pub fn snapshot_started(&mut self, id: u32) {
        self.started += 1;
        self.pending.insert(id, vec![None; self.names.len()]);
        while self.pending.len() > PENDING_LIMIT {
            self.pending.pop_first();
        }
    }

    /// `branch` answered snapshot `id` after `elapsed_ms`.
    pub fn record_answered(&mut self, id: u32, branch: &str, elapsed_ms: f64) {
        let Some(index) = self.index(branch) else {
            return;
        };
        if let Some(times) = self.pending.get_mut(&id) {
            times[index] = Some(elapsed_ms);
        }
    }

    /// Takes in a finished snapshot, reported at `now_ms` (ms since the epoch); returns its API
    /// object, serialized.
    pub fn add_report(&mut self, report: &SnapshotReport, now_ms: f64) -> String {
        let elapsed_ms = report.elapsed.as_secs_f64() * 1000.0;
        let started_at_ms = now_ms - elapsed_ms;
        let record_ms = self
            .pending
            .remove(&report.id)
            .unwrap_or_else(|| vec![None; self.names.len()]);
        let complete = report.missing().next().is_none();
        let in_transit: Option<u64> = complete.then(|| {
            report
                .branches
                .iter()
                .filter_map(|branch| branch.record.as_ref().ok())
                .flat_map(|record| &record.incoming)
                .map(|(_, amount)| amount)
                .sum()
        });
        let transfers_sent: Option<u64> = report
            .branches
            .iter()
            .map(|branch| branch.record.as_ref().ok()?.transfers_sent())
            .sum();
        let mut transfers_per_second = None;
        if let Some(sent) = transfers_sent {
            if let Some((then_ms, then_sent)) = self.last_counters {
                let seconds = (started_at_ms - then_ms) / 1000.0;
                if seconds > 0.0 && sent >= then_sent {
                    transfers_per_second = Some((sent - then_sent) as f64 / seconds);
                }
            }
            self.last_counters = Some((started_at_ms, sent));
            self.transfers_sent = Some(sent);
            if transfers_per_second.is_some() {
                self.transfers_per_second = transfers_per_second;
            }
        }
        let balances: Vec<Option<u64>> = report
            .branches
            .iter()
            .map(|branch| branch.record.as_ref().ok().map(|record| record.balance))
            .collect();
        if complete {
            self.in_transit = in_transit;
            self.balances = balances.iter().copied().collect();
        }
        let reason = failure_reason(report);
        let verdict = verdict_name(&report.verdict);
        let view = json!({
            "started_at_ms": started_at_ms,
            "record_ms": record_ms,
            "in_transit": in_transit,
            "transfers_sent": transfers_sent,
            "transfers_per_second": transfers_per_second,
            "reason": reason,
        });
        let view_text = view.to_string();
        let summary = json!({
            "snapshot_id": report.id,
            "initiator": report.initiator,
            "verdict": verdict,
            "elapsed_ms": elapsed_ms,
            "total": report.total,
            "balances": balances,
            "view": view,
        });
        // The `--format json` object, plus the view's own section (spliced in before its
        // closing brace rather than parsed and written again).
        let mut json = report.to_json();
        if json.ends_with('}') {
            json.pop();
            json.push_str(",\"view\":");
            json.push_str(&view_text);
            json.push('}');
        }

        self.reported += 1;
        self.started = self.started.max(self.reported);
        self.latest_id = Some(report.id);
        self.durations.observe(report.elapsed.as_secs_f64());
        match report.verdict {
            Verdict::Ok => self.verdicts.ok += 1,
            Verdict::Inconsistent => self.verdicts.inconsistent += 1,
            Verdict::Mismatch => self.verdicts.mismatch += 1,
            Verdict::Incomplete => self.verdicts.incomplete += 1,
        }
        let latest = if report.is_ok() {
            &mut self.latest_ok
        } else {
            &mut self.latest_failed
        };
        *latest = Some(summary.clone());
        self.history.push_back(Arc::new(Retained {
            id: report.id,
            json: json.clone(),
            summary: summary.to_string(),
            ok: report.is_ok(),
            elapsed_ms,
            in_transit,
        }));
        while self.history.len() > self.keep {
            self.history.pop_front();
        }
        json
    }

    /// The newest `limit` retained snapshots, newest first: pointers only, so this is all a
    /// reader does under the lock (no serializing, no copying of the objects).
    pub fn recent(&self, limit: usize) -> Recent {
        Recent(self.history.iter().rev().take(limit).cloned().collect())
    }

    /// One retained snapshot.
    pub fn snapshot(&self, id: u32) -> Option<Arc<Retained>> {
        self.history.iter().rfind(|entry| entry.id == id).cloned()
    }

    /// Snapshots started so far.
    pub fn started(&self) -> u64 {
        self.started
    }

    /// Snapshots started and not reported yet.
    pub fn in_progress(&self) -> u64 {
        self.started.saturating_sub(self.reported)
    }

    /// Reported snapshots by verdict.
    pub fn verdicts(&self) -> VerdictCounts {
        self.verdicts
    }

    /// Durations of every reported snapshot.
    pub fn durations(&self) -> &Histogram {
        &self.durations
    }

    /// The latest transfers-per-second figure (from two snapshots' counters).
    pub fn transfers_per_second(&self) -> Option<f64> {
        self.transfers_per_second
    }

    /// Transfers sent by all branches at the latest counted cut.
    pub fn transfers_sent(&self) -> Option<u64> {
        self.transfers_sent
    }

    /// Money in transit at the latest complete snapshot.
    pub fn in_transit(&self) -> Option<u64> {
        self.in_transit
    }

    /// The money the bank holds.
    pub fn expected_total(&self) -> u64 {
        self.expected_total
    }

    /// Branch names, in file order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Balances at the latest complete snapshot.
    pub fn balances(&self) -> Option<&[u64]> {
        self.balances.as_deref()
    }

    /// Per branch, the controller's connection.
    pub fn links(&self) -> &[LinkStatus] {
        &self.links
    }

    /// How many branch connections are up.
    pub fn branches_up(&self) -> usize {
        self.links
            .iter()
            .filter(|link| **link == LinkStatus::Up)
            .count()
    }

    /// Id of the latest reported snapshot.
    pub fn latest_id(&self) -> Option<u32> {
        self.latest_id
    }

    /// The Flink-style overview: counts, latest ok and failed, min/avg/max of the retained
    /// snapshots' durations and money in transit.
    pub fn overview_json(&self) -> Value {
        let stats = |field: &dyn Fn(&Retained) -> Option<f64>| {
            let values: Vec<f64> = self
                .history
                .iter()
                .filter_map(|entry| field(entry))
                .collect();
            if values.is_empty() {
                return Value::Null;
            }
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let avg = values.iter().sum::<f64>() / values.len() as f64;
            json!({"min": min, "avg": avg, "max": max, "count": values.len()})
        };
        let latest_ok_retained = self.history.iter().rev().find(|entry| entry.ok).is_some();
        json!({
            "started": self.started,
            "in_progress": self.in_progress(),
            "reported": self.reported,
            "ok": self.verdicts.ok,
            "incomplete": self.verdicts.incomplete,
            "inconsistent": self.verdicts.inconsistent,
            "mismatch": self.verdicts.mismatch,
            "latest_ok": self.latest_ok,
            "latest_ok_retained": latest_ok_retained,
            "latest_failed": self.latest_failed,
            "retained": self.history.len(),
            "keep": self.keep,
            "duration_ms": stats(&|entry| Some(entry.elapsed_ms)),
            "in_transit": stats(&|entry| entry.in_transit.map(|amount| amount as f64)),
            "transfers_per_second": self.transfers_per_second,
            "checkpoints": self.checkpoints.as_deref().map(checkpoints_json),
            "rollbacks": {
                "total": self.rollbacks_total,
                "epoch": self.epoch(),
                "recent": self.rollbacks,
            },
        })
    }

    /// `/api/bank`: members with address, link status and latest balance, the total, and how
    /// many links are up.
    pub fn bank_json(&self) -> Value {
        let branches: Vec<Value> = self
            .names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let (link, reason) = match &self.links[index] {
                    LinkStatus::Connecting => ("connecting", None),
                    LinkStatus::Up => ("up", None),
                    LinkStatus::Down(reason) => ("down", Some(reason.as_str())),
                };
                json!({
                    "name": name,
                    "addr": self.addrs.get(index),
                    "link": link,
                    "link_reason": reason,
                    "balance": self.balances.as_ref().and_then(|b| b.get(index)),
                })
            })
            .collect();
        json!({
            "branches": branches,
            "expected_total": self.expected_total,
            "branches_up": self.branches_up(),
            "latest_snapshot_id": self.latest_id,
            "in_transit": self.in_transit,
        })
    }

    /// What the live stream sends on every change: the overview and the bank.
    pub fn status_json(&self) -> Value {
        json!({"overview": self.overview_json(), "bank": self.bank_json()})
    }
}

/// The overview's `checkpoints`: what the writer has done; the latest's id and time (Unix ms)
/// are `null` until one is written.
fn checkpoints_json(stats: &CheckpointStats) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let written = stats.written.load(Relaxed);
    let latest = |value: u64| (written > 0).then_some(value);
    json!({
        "written": written,
        "failed": stats.failed.load(Relaxed),
        "kept": stats.kept.load(Relaxed),
        "latest_id": latest(stats.latest_id.load(Relaxed)),
        "latest_unix_ms": latest(stats.latest_unix_ms.load(Relaxed)),
    })
}

/// The verdict's name in the JSON reports.
fn verdict_name(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Ok => "ok",
        Verdict::Inconsistent => "inconsistent",
        Verdict::Mismatch => "mismatch",
        Verdict::Incomplete => "incomplete",
    }
}

/// Why a snapshot is not ok, in one line (`None` when it is).
fn failure_reason(report: &SnapshotReport) -> Option<String> {
    match report.verdict {
        Verdict::Ok => None,
        Verdict::Incomplete => Some(
            report
                .missing()
                .map(|(name, reason)| format!("{name}: {reason}"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Verdict::Inconsistent | Verdict::Mismatch => {
            let audit = report.audit.as_ref()?;
            let mut problems: Vec<String> =
                audit.violations.iter().map(ToString::to_string).collect();
            if !audit.sums_to_total() {
                problems.insert(
                    0,
                    format!("total {}, expected {}", audit.total, report.expected_total),
                );
            }
            Some(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::wire::pb::return_snapshot::LocalSnapshot;

    /// What `write` writes, parsed as a JSON array.
    fn written(write: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> Vec<Value> {
        let mut out = Vec::new();
        write(&mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    fn names() -> Vec<String> {
        ["b1", "b2", "b3"].map(String::from).to_vec()
    }

    fn view(keep: usize) -> ViewState {
        let addrs = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"].map(String::from);
        ViewState::new(names(), addrs.to_vec(), 30, keep)
    }

    /// A complete report with balances and money in transit on b2's channel from b1.
    fn report(id: u32, balances: [u32; 3], in_transit: u32) -> SnapshotReport {
        let answers = vec![
            Ok(LocalSnapshot {
                snapshot_id: id,
                balance: balances[0],
                channel_state: vec![0, 0],
                ..Default::default()
            }),
            Ok(LocalSnapshot {
                snapshot_id: id,
                balance: balances[1],
                channel_state: vec![in_transit, 0],
                ..Default::default()
            }),
            Ok(LocalSnapshot {
                snapshot_id: id,
                balance: balances[2],
                channel_state: vec![0, 0],
                ..Default::default()
            }),
        ];
        SnapshotReport::assemble(id, "b2", &names(), answers, 30, Duration::from_millis(4))
    }

    fn incomplete(id: u32) -> SnapshotReport {
        let answers = vec![
            Ok(LocalSnapshot {
                snapshot_id: id,
                balance: 10,
                channel_state: vec![0, 0],
                ..Default::default()
            }),
            Err("connection lost: reset".into()),
            Ok(LocalSnapshot {
                snapshot_id: id,
                balance: 10,
                channel_state: vec![0, 0],
                ..Default::default()
            }),
        ];
        SnapshotReport::assemble(id, "b1", &names(), answers, 30, Duration::from_millis(20))
    }

    #[test]
    fn api_objects_are_the_json_reports_plus_a_view_section() {
        let mut state = view(10);
        state.snapshot_started(1);
        state.record_answered(1, "b2", 1.5);
        let report = report(1, [10, 5, 10], 5);
        let json = state.add_report(&report, 10_000.0);
        let mut object: Value = serde_json::from_str(&json).unwrap();
        let view = object.as_object_mut().unwrap().remove("view").unwrap();
        let plain: Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(
            object, plain,
            "the rest is exactly the --format json object"
        );
        assert_eq!(view["started_at_ms"], 9_996.0);
        assert_eq!(view["record_ms"], json!([null, 1.5, null]));
        assert_eq!(view["in_transit"], 5);
        assert_eq!(view["reason"], Value::Null);
        assert_eq!(state.snapshot(1).unwrap().json(), json);
        assert!(state.snapshot(2).is_none());
    }

    #[test]
    fn only_the_last_keep_snapshots_are_retained_newest_first() {
        let mut state = view(3);
        for id in 1..=5 {
            state.snapshot_started(id);
            state.add_report(&report(id, [10, 10, 10], 0), f64::from(id) * 1000.0);
        }
        let list = written(|out| state.recent(usize::MAX).write_snapshots(out));
        let ids: Vec<u64> = list
            .iter()
            .map(|o| o["snapshot_id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [5, 4, 3]);
        let list = written(|out| state.recent(1).write_snapshots(out));
        assert_eq!(list.len(), 1);
        let history = written(|out| state.recent(2).write_history(out));
        let ids: Vec<u64> = history
            .iter()
            .map(|o| o["snapshot_id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [5, 4]);
        assert!(history.iter().all(|o| o["balances"] == json!([10, 10, 10])));
        assert!(state.snapshot(1).is_none(), "dropped");
        assert!(written(|out| Recent::default().write_history(out)).is_empty());
        // Counters cover every snapshot, not only the retained ones.
        assert_eq!(state.verdicts().ok, 5);
        assert_eq!(state.durations().count, 5);
    }

    #[test]
    fn overview_counts_rollbacks_and_keeps_the_latest_as_history() {
        let mut state = ViewState::new(vec!["a".into(), "b".into()], Vec::new(), 10, 5);
        assert_eq!(state.overview_json()["rollbacks"]["total"], 0);
        for epoch in 1..=(KEPT_ROLLBACKS as u64 + 2) {
            state.rolled_back(
                &crate::controller::rollback::RollbackDone {
                    epoch,
                    checkpoint: 7,
                    lost: vec!["b".into()],
                    undone: Some(3),
                    took: std::time::Duration::from_millis(4),
                },
                1000.0,
            );
        }
        let rollbacks = &state.overview_json()["rollbacks"];
        assert_eq!(rollbacks["total"], KEPT_ROLLBACKS as u64 + 2);
        assert_eq!(rollbacks["epoch"], KEPT_ROLLBACKS as u64 + 2);
        let recent = rollbacks["recent"].as_array().expect("recent rollbacks");
        assert_eq!(recent.len(), KEPT_ROLLBACKS);
        assert_eq!(recent[0]["epoch"], 3);
        assert_eq!(recent[0]["lost"][0], "b");
    }

    #[test]
    fn overview_shows_the_checkpoints_only_when_the_controller_writes_them() {
        use std::sync::atomic::Ordering::Relaxed;
        let mut state = view(10);
        assert_eq!(state.overview_json()["checkpoints"], Value::Null);
        let stats = Arc::new(CheckpointStats::default());
        state.track_checkpoints(stats.clone());
        let none = &state.overview_json()["checkpoints"];
        assert_eq!(none["written"], 0);
        assert_eq!(none["latest_id"], Value::Null);
        stats.written.store(2, Relaxed);
        stats.kept.store(2, Relaxed);
        stats.latest_id.store(9, Relaxed);
        stats.latest_unix_ms.store(123_456, Relaxed);
        let some = &state.overview_json()["checkpoints"];
        assert_eq!(some["latest_id"], 9);
        assert_eq!(some["latest_unix_ms"], 123_456);
        assert_eq!(some["kept"], 2);
    }

    #[test]
    fn overview_counts_started_in_progress_verdicts_and_latest() {
        let mut state = view(10);
        for id in 1..=4 {
            state.snapshot_started(id);
        }
        state.add_report(&report(1, [10, 10, 10], 0), 1000.0);
        state.add_report(&incomplete(2), 2000.0);
        state.add_report(&report(3, [10, 10, 9], 0), 3000.0); // sums to 29: mismatch
        let overview = state.overview_json();
        assert_eq!(overview["started"], 4);
        assert_eq!(overview["in_progress"], 1);
        assert_eq!(overview["ok"], 1);
        assert_eq!(overview["incomplete"], 1);
        assert_eq!(overview["mismatch"], 1);
        assert_eq!(overview["latest_ok"]["snapshot_id"], 1);
        assert_eq!(overview["latest_failed"]["snapshot_id"], 3);
        assert_eq!(
            overview["latest_failed"]["view"]["reason"],
            "total 29, expected 30"
        );
        assert_eq!(overview["duration_ms"]["max"], 20.0);
        assert_eq!(overview["duration_ms"]["min"], 4.0);
        let failed: Value = serde_json::from_str(state.snapshot(2).unwrap().json()).unwrap();
        assert_eq!(failed["view"]["reason"], "b2: connection lost: reset");
        assert_eq!(failed["view"]["in_transit"], Value::Null);
    }

    #[test]
    fn links_and_balances_make_the_bank() {
        let mut state = view(10);
        assert_eq!(state.branches_up(), 0);
        for name in names() {
            state.set_link(&name, LinkStatus::Up);
        }
        state.set_link("b3", LinkStatus::Down("closed by the branch".into()));
        state.set_link("nobody", LinkStatus::Up);
        state.add_report(&report(1, [12, 3, 10], 5), 1000.0);
        let bank = state.bank_json();
        assert_eq!(bank["branches_up"], 2);
        assert_eq!(bank["branches"][2]["link"], "down");
        assert_eq!(bank["branches"][2]["link_reason"], "closed by the branch");
        assert_eq!(bank["branches"][0]["balance"], 12);
        assert_eq!(bank["in_transit"], 5);
        assert_eq!(bank["expected_total"], 30);
    }

    /// A report whose branches each had sent `sent` transfers per peer at their cut.
    fn counted(id: u32, sent: u64, elapsed_ms: u64) -> SnapshotReport {
        use crate::wire::pb::return_snapshot::ChannelAudit;
        let answers = names()
            .iter()
            .map(|name| {
                let channels = names()
                    .into_iter()
                    .filter(|peer| peer != name)
                    .map(|peer| ChannelAudit {
                        peer,
                        sent_count: sent,
                        ..Default::default()
                    })
                    .collect();
                Ok(LocalSnapshot {
                    snapshot_id: id,
                    balance: 10,
                    channel_state: vec![0, 0],
                    branch_name: name.clone(),
                    channels,
                    ..Default::default()
                })
            })
            .collect();
        SnapshotReport::assemble(
            id,
            "b1",
            &names(),
            answers,
            30,
            Duration::from_millis(elapsed_ms),
        )
    }

    #[test]
    fn transfers_per_second_come_from_two_snapshots_counters() {
        let mut state = view(10);
        state.add_report(&counted(1, 10, 0), 1_000.0);
        assert_eq!(
            state.transfers_per_second(),
            None,
            "one snapshot is no rate"
        );
        assert_eq!(state.transfers_sent(), Some(60));
        // 6 branch-peer channels x 100 more transfers, between starts 2 s apart (the second
        // took 500 ms, reported at 3.5 s).
        let json = state.add_report(&counted(2, 110, 500), 3_500.0);
        assert_eq!(state.transfers_per_second(), Some(300.0));
        let object: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(object["view"]["transfers_per_second"], 300.0);
        assert_eq!(object["view"]["transfers_sent"], 660);
    }

    #[test]
    fn pending_record_times_stay_bounded() {
        let mut state = view(10);
        for id in 0..(PENDING_LIMIT as u32 + 50) {
            state.snapshot_started(id);
        }
        assert_eq!(state.pending.len(), PENDING_LIMIT);
        assert_eq!(state.in_progress(), PENDING_LIMIT as u64 + 50);
    }

    #[test]
    fn histogram_counts_each_duration_in_its_bucket() {
        let mut histogram = Histogram::default();
        histogram.observe(0.000_1);
        histogram.observe(0.003);
        histogram.observe(60.0);
        assert_eq!(histogram.counts[0], 1);
        assert_eq!(histogram.counts[3], 1);
        assert_eq!(histogram.counts.iter().sum::<u64>(), 2);
        assert_eq!(histogram.count, 3);
    }
}
