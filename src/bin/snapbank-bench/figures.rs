//! The pure half of `snapbank-bench` (behind `./bench`): the numbers a benchmark run boils down
//! to, and the files it writes.
//!
//! The binary starts real branch processes and runs the controller; everything here only
//! computes, parses and writes, so it can be tested on data made up for the test:
//!
//! - [`percentile`] and [`LatencySummary`]: snapshot latencies (`SnapshotReport::elapsed`) as
//!   p50 / p99 / max, nearest-rank.
//! - [`CounterSample`] and [`Throughput`]: transfers per second counted exactly from the
//!   snapshots' own channel counters. Every branch reports, per peer, how many transfers it had
//!   sent before its cut; the difference between the first and the last good snapshot, over the
//!   time between their starts, is the rate. No sampling, no estimate.
//! - [`ProcessSample`]: a branch process's resident memory and CPU time from `/proc`.
//! - [`SweepRow`] / [`write_sweep_csv`] / [`draw_sweep_plot`]: one row per bank size, as CSV and
//!   as an SVG chart; [`SoakSample`] / [`write_soak_csv`] / [`draw_soak_plot`]: resident memory
//!   over a long run.
//!
//! Nothing here prints: the binary decides what a person sees.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plotters::prelude::*;

use snapbank::controller::SnapshotReport;

/// Why a benchmark file could not be read, written or drawn.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Parse { path: PathBuf, what: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot draw {path}: {reason}")]
    Plot { path: PathBuf, reason: String },
}

/// The `p`-th percentile (0..=100) of `sorted` (ascending), by nearest rank: the smallest value
/// with at least `p` % of the values at or below it. `None` for no values or a `p` outside
/// 0..=100; `p = 0` is the minimum and `p = 100` the maximum.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Snapshot latencies of one run, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    /// How many latencies went in.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile: with fewer than 100 snapshots this is the maximum.
    pub p99_ms: f64,
    /// The slowest.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises `latencies` (any order); `None` when there are none.
    pub fn from_durations(latencies: &[Duration]) -> Option<Self> {
        let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Some(Self {
            count: ms.len(),
            p50_ms: percentile(&ms, 50.0)?,
            p99_ms: percentile(&ms, 99.0)?,
            max_ms: *ms.last()?,
        })
    }
}

/// Each branch's transfers-sent counter at one snapshot's cut, and when that snapshot started.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterSample {
    /// When the snapshot started (its `InitSnapshot` was sent), from the start of the run.
    pub at: Duration,
    /// Per branch, in branches-file order: transfers it had sent to all its peers at its cut.
    pub sent: Vec<u64>,
    /// Transfers the snapshot found in transit, all channels together.
    pub in_transit: u64,
    /// The money in those transfers, as a percentage of the bank's total.
    pub money_in_transit_pct: f64,
}

impl CounterSample {
    /// The counters of a good snapshot (`report.is_ok()`) in which every branch sent channel
    /// counters; `None` otherwise. `at` is when the snapshot started: the moment the report
    /// arrived minus `report.elapsed`, measured from the start of the run.
    pub fn from_report(report: &SnapshotReport, at: Duration) -> Option<Self> {
        if !report.is_ok() {
            return None;
        }
        let sent = report
            .branches
            .iter()
            .map(|branch| {
                let audits = branch.record.as_ref().ok()?.audits.as_ref()?;
                Some(audits.iter().map(|audit| audit.sent_count).sum())
            })
            .collect::<Option<Vec<u64>>>()?;
        let in_transit = report
            .branches
            .iter()
            .filter_map(|branch| branch.record.as_ref().ok()?.audits.as_ref())
            .flatten()
            .map(|audit| audit.in_transit_seq.len() as u64)
            .sum();
        let money: u64 = report
            .branches
            .iter()
            .filter_map(|branch| branch.record.as_ref().ok())
            .flat_map(|record| record.incoming.iter().map(|(_, amount)| amount))
            .sum();
        let money_in_transit_pct = if report.expected_total == 0 {
            0.0
        } else {
            money as f64 / report.expected_total as f64 * 100.0
        };
        Some(Self {
            at,
            sent,
            in_transit,
            money_in_transit_pct,
        })
    }
}

/// The mean share of the bank's money the good snapshots of a run found in transit. Near 100 %,
/// every branch has spent what it holds and throughput waits on money coming back; well below,
/// branches hold money they have not spent yet. `None` without samples.
pub fn mean_money_in_transit_pct(samples: &[CounterSample]) -> Option<f64> {
    mean_over(samples, |s| s.money_in_transit_pct)
}

/// The mean number of transfers the good snapshots of a run found in transit: by Little's law,
/// throughput is this number divided by a transfer's mean time in flight (from the sender's
/// debit to the receiver's credit). `None` without samples.
pub fn mean_in_transit(samples: &[CounterSample]) -> Option<f64> {
    mean_over(samples, |s| s.in_transit as f64)
}

/// The mean of `figure` over `samples`; `None` without samples.
fn mean_over(samples: &[CounterSample], figure: impl Fn(&CounterSample) -> f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    Some(samples.iter().map(figure).sum::<f64>() / samples.len() as f64)
}

/// Transfers per second over a run, from its first and last good snapshots.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    /// Time between the two snapshots' starts.
    pub window: Duration,
    /// Transfers sent by all branches in that window.
    pub transfers: u64,
    /// `transfers / window`.
    pub aggregate: f64,
    /// Per branch, in branches-file order.
    pub per_branch: Vec<f64>,
}

impl Throughput {
    /// The rate between the earliest and the latest sample (by `at`). `None` with fewer than two
    /// samples, no time between them, or samples of different bank sizes.
    pub fn from_samples(samples: &[CounterSample]) -> Option<Self> {
        let first = samples.iter().min_by_key(|sample| sample.at)?;
        let last = samples.iter().max_by_key(|sample| sample.at)?;
        let window = last.at.checked_sub(first.at)?;
        if window.is_zero() || first.sent.len() != last.sent.len() {
            return None;
        }
        let secs = window.as_secs_f64();
        let deltas: Vec<u64> = first
            .sent
            .iter()
            .zip(&last.sent)
            .map(|(before, after)| after.saturating_sub(*before))
            .collect();
        Some(Self {
            window,
            transfers: deltas.iter().sum(),
            aggregate: deltas.iter().sum::<u64>() as f64 / secs,
            per_branch: deltas.iter().map(|&d| d as f64 / secs).collect(),
        })
    }

    /// The slowest branch's rate.
    pub fn per_branch_min(&self) -> f64 {
        self.per_branch
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
    }

    /// The mean branch's rate.
    pub fn per_branch_mean(&self) -> f64 {
        if self.per_branch.is_empty() {
            return 0.0;
        }
        self.per_branch.iter().sum::<f64>() / self.per_branch.len() as f64
    }

    /// The fastest branch's rate.
    pub fn per_branch_max(&self) -> f64 {
        self.per_branch.iter().copied().fold(0.0, f64::max)
    }
}

/// The percentage by which `with` falls short of `baseline` (negative when it is faster).
pub fn percent_drop(baseline: f64, with: f64) -> Option<f64> {
    (baseline > 0.0).then(|| (baseline - with) / baseline * 100.0)
}

/// One process's memory and CPU time, read from `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSample {
    /// Resident memory now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// The most resident memory ever (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// User plus system CPU time so far (`utime + stime`), in clock ticks.
    pub cpu_ticks: u64,
}

impl ProcessSample {
    /// Reads process `pid`'s figures from `/proc`.
    pub fn read(pid: u32) -> Result<Self, BenchError> {
        let status_path = PathBuf::from(format!("/proc/{pid}/status"));
        let stat_path = PathBuf::from(format!("/proc/{pid}/stat"));
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| BenchError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let status = read(&status_path)?;
        let stat = read(&stat_path)?;
        let field = |name: &str| {
            status_kib(&status, name).ok_or_else(|| BenchError::Parse {
                path: status_path.clone(),
                what: format!("no {name} line"),
            })
        };
        Ok(Self {
            rss_kib: field("VmRSS")?,
            peak_rss_kib: field("VmHWM")?,
            cpu_ticks: cpu_ticks(&stat).ok_or_else(|| BenchError::Parse {
                path: stat_path.clone(),
                what: "no utime/stime fields".to_string(),
            })?,
        })
    }
}

/// The value of a `Name:   1234 kB` line of `/proc/<pid>/status`, in KiB.
pub fn status_kib(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks. The command
/// name (field 2) is in parentheses and may hold spaces or parentheses itself, so fields are
/// counted from the last `)`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name, so fields 14 and 15 are the 12th and 13th.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU use as a percentage of one core: `ticks` clock ticks (at `ticks_per_sec`) over `wall`.
pub fn cpu_percent(ticks: u64, ticks_per_sec: u64, wall: Duration) -> Option<f64> {
    if ticks_per_sec == 0 || wall.is_zero() {
        return None;
    }
    Some(ticks as f64 / ticks_per_sec as f64 / wall.as_secs_f64() * 100.0)
}

/// Everything measured for one bank size. `None` is a figure that was not measured (a skipped
/// part) or could not be (too few good snapshots, a process gone).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepRow {
    /// Branches in the bank.
    pub branches: usize,
    /// How long the loaded run lasted, seconds.
    pub duration_secs: f64,
    /// Pause between snapshot starts in the loaded run, ms.
    pub snapshot_interval_ms: u64,
    /// Snapshots reported in the loaded run.
    pub snapshots: u32,
    /// Of those, how many were not ok.
    pub failed: u32,
    /// Transfers per second, from the snapshots' counters.
    pub throughput: Option<Throughput>,
    /// Snapshot latency under load (good snapshots only).
    pub latency: Option<LatencySummary>,
    /// Snapshots and failures of the idle run.
    pub idle_snapshots: Option<(u32, u32)>,
    /// Snapshot latency with branches not sending.
    pub idle_latency: Option<LatencySummary>,
    /// The largest peak resident memory (`VmHWM`) of any branch, KiB.
    pub peak_rss_max_kib: Option<u64>,
    /// Mean CPU use of the branches, % of one core.
    pub cpu_mean_pct: Option<f64>,
    /// Highest CPU use of any branch, % of one core.
    pub cpu_max_pct: Option<f64>,
    /// Snapshot cost, where measured at this size.
    pub cost: Option<SnapshotCost>,
    /// Frames per second that N processes in the same full mesh move with no per-frame work
    /// (the transport's ceiling here, measured in the same run).
    pub ceiling_per_sec: Option<f64>,
    /// Median round trip of a transfer-sized ping-pong over one loopback connection, ms.
    pub rtt_p50_ms: Option<f64>,
    /// Mean transfers in transit at the loaded run's snapshots ([`mean_in_transit`]).
    pub in_transit_mean: Option<f64>,
    /// Mean share of the money in transit at those snapshots ([`mean_money_in_transit_pct`]).
    pub money_in_transit_pct: Option<f64>,
    /// How many runs this row sums up ([`SweepRow::median_of`]); 0 or 1 for a single run.
    pub runs: usize,
    /// Over those runs: the lowest and the highest throughput.
    pub throughput_range: Option<(f64, f64)>,
}

/// The median of `values` by nearest rank (the lower middle of an even count); `None` for none.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut sorted: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0)
}

/// The element of `items` whose `key` is the median of all keys (`None` keys are left out).
fn median_by<T: Clone>(items: &[T], key: impl Fn(&T) -> Option<f64>) -> Option<T> {
    let mut keyed: Vec<(f64, &T)> = items
        .iter()
        .filter_map(|item| key(item).filter(|k| k.is_finite()).map(|k| (k, item)))
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let rank = keyed.len().div_ceil(2);
    keyed
        .get(rank.checked_sub(1)?)
        .map(|(_, item)| (*item).clone())
}

impl SweepRow {
    /// One row for several runs of the same bank size: each figure the median of the runs'
    /// (a machine shared with other work moves single runs by 10 % or more). Throughput and
    /// snapshot cost are taken whole from the median run, so a row's per-branch rates belong
    /// together; counts of snapshots and failures are summed, so no failure is hidden; peak
    /// memory and the busiest branch's CPU are the highest seen. `None` for no rows.
    pub fn median_of(rows: &[SweepRow]) -> Option<SweepRow> {
        let first = rows.first()?;
        let med = |f: &dyn Fn(&SweepRow) -> Option<f64>| median(rows.iter().filter_map(f));
        let latency = |pick: &dyn Fn(&SweepRow) -> Option<LatencySummary>| {
            let all: Vec<LatencySummary> = rows.iter().filter_map(pick).collect();
            Some(LatencySummary {
                count: all.iter().map(|l| l.count).sum(),
                p50_ms: median(all.iter().map(|l| l.p50_ms))?,
                p99_ms: median(all.iter().map(|l| l.p99_ms))?,
                max_ms: median(all.iter().map(|l| l.max_ms))?,
            })
        };
        let throughputs: Vec<Throughput> =
            rows.iter().filter_map(|r| r.throughput.clone()).collect();
        let rates: Vec<f64> = throughputs.iter().map(|t| t.aggregate).collect();
        let idle_runs: Vec<(u32, u32)> = rows.iter().filter_map(|r| r.idle_snapshots).collect();
        let costs: Vec<SnapshotCost> = rows.iter().filter_map(|r| r.cost).collect();
        Some(SweepRow {
            branches: first.branches,
            duration_secs: first.duration_secs,
            snapshot_interval_ms: first.snapshot_interval_ms,
            snapshots: rows.iter().map(|r| r.snapshots).sum(),
            failed: rows.iter().map(|r| r.failed).sum(),
            throughput: median_by(&throughputs, |t| Some(t.aggregate)),
            latency: latency(&|r| r.latency),
            idle_snapshots: (!idle_runs.is_empty()).then(|| {
                (
                    idle_runs.iter().map(|(count, _)| count).sum(),
                    idle_runs.iter().map(|(_, failed)| failed).sum(),
                )
            }),
            idle_latency: latency(&|r| r.idle_latency),
            peak_rss_max_kib: rows.iter().filter_map(|r| r.peak_rss_max_kib).max(),
            cpu_mean_pct: med(&|r| r.cpu_mean_pct),
            cpu_max_pct: rows.iter().filter_map(|r| r.cpu_max_pct).reduce(f64::max),
            cost: median_by(&costs, SnapshotCost::drop_pct),
            ceiling_per_sec: med(&|r| r.ceiling_per_sec),
            rtt_p50_ms: med(&|r| r.rtt_p50_ms),
            in_transit_mean: med(&|r| r.in_transit_mean),
            money_in_transit_pct: med(&|r| r.money_in_transit_pct),
            runs: rows.len(),
            throughput_range: (!rates.is_empty()).then(|| {
                (
                    rates.iter().copied().fold(f64::INFINITY, f64::min),
                    rates.iter().copied().fold(0.0, f64::max),
                )
            }),
        })
    }

    /// Transfers per second as a percentage of the same-run ceiling.
    pub fn pct_of_ceiling(&self) -> Option<f64> {
        let ceiling = self.ceiling_per_sec.filter(|&c| c > 0.0)?;
        self.throughput
            .as_ref()
            .map(|t| t.aggregate / ceiling * 100.0)
    }

    /// A transfer's mean time in flight under load, in microseconds, by Little's law: transfers
    /// in transit over transfers per second. With the balances spent (flat out, every branch
    /// waiting for money), throughput can only grow by shortening this time.
    pub fn flight_us(&self) -> Option<f64> {
        let rate = self.throughput.as_ref()?.aggregate;
        (rate > 0.0).then(|| self.in_transit_mean.map(|n| n / rate * 1e6))?
    }

    /// [`Self::flight_us`] in one-way trips (half the loopback round trip).
    pub fn flight_one_ways(&self) -> Option<f64> {
        let one_way_us = self.rtt_p50_ms.filter(|&r| r > 0.0)? * 1e3 / 2.0;
        self.flight_us().map(|us| us / one_way_us)
    }

    /// Idle snapshot p50 in loopback round trips.
    pub fn idle_p50_round_trips(&self) -> Option<f64> {
        let rtt = self.rtt_p50_ms.filter(|&r| r > 0.0)?;
        self.idle_latency.map(|l| l.p50_ms / rtt)
    }
}

/// What taking snapshots costs the bank's throughput.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotCost {
    /// Pause between snapshot starts in the run with snapshots, ms.
    pub interval_ms: u64,
    /// Transfers per second with a snapshot every `interval_ms`.
    pub with_snapshots: f64,
    /// Transfers per second with only the two snapshots that bound the window.
    pub baseline: f64,
}

impl SnapshotCost {
    /// How much slower the bank is with snapshots, in % of the baseline.
    pub fn drop_pct(&self) -> Option<f64> {
        percent_drop(self.baseline, self.with_snapshots)
    }
}

/// The columns of `sweep.csv`, in order.
pub const SWEEP_CSV_HEADER: &[&str] = &[
    "branches",
    "duration_s",
    "snapshot_interval_ms",
    "snapshots",
    "failed",
    "window_s",
    "transfers",
    "transfers_per_s",
    "per_branch_min",
    "per_branch_mean",
    "per_branch_max",
    "per_branch_transfers_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "idle_snapshots",
    "idle_failed",
    "idle_p50_ms",
    "idle_p99_ms",
    "idle_max_ms",
    "peak_rss_max_kib",
    "cpu_mean_pct",
    "cpu_max_pct",
    "cost_interval_ms",
    "cost_transfers_per_s_with_snapshots",
    "cost_transfers_per_s_baseline",
    "cost_drop_pct",
    "ceiling_frames_per_s",
    "pct_of_ceiling",
    "rtt_p50_ms",
    "idle_p50_round_trips",
    "in_transit_mean",
    "money_in_transit_pct",
    "flight_us",
    "flight_one_ways",
    "runs",
    "transfers_per_s_min",
    "transfers_per_s_max",
];

/// A float with three decimals, or an empty field.
fn field(value: Option<f64>) -> String {
    value.map(|v| format!("{v:.3}")).unwrap_or_default()
}

/// An integer, or an empty field.
fn int_field<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

impl SweepRow {
    /// The row's fields, in [`SWEEP_CSV_HEADER`] order. None contains a comma.
    pub fn csv_fields(&self) -> Vec<String> {
        let tp = self.throughput.as_ref();
        let lat = self.latency.as_ref();
        let idle = self.idle_latency.as_ref();
        let cost = self.cost.as_ref();
        vec![
            self.branches.to_string(),
            format!("{:.3}", self.duration_secs),
            self.snapshot_interval_ms.to_string(),
            self.snapshots.to_string(),
            self.failed.to_string(),
            field(tp.map(|t| t.window.as_secs_f64())),
            int_field(tp.map(|t| t.transfers)),
            field(tp.map(|t| t.aggregate)),
            field(tp.map(Throughput::per_branch_min)),
            field(tp.map(Throughput::per_branch_mean)),
            field(tp.map(Throughput::per_branch_max)),
            tp.map(|t| {
                t.per_branch
                    .iter()
                    .map(|rate| format!("{rate:.1}"))
                    .collect::<Vec<_>>()
                    .join(";")
            })
            .unwrap_or_default(),
            field(lat.map(|l| l.p50_ms)),
            field(lat.map(|l| l.p99_ms)),
            field(lat.map(|l| l.max_ms)),
            int_field(self.idle_snapshots.map(|(count, _)| count)),
            int_field(self.idle_snapshots.map(|(_, failed)| failed)),
            field(idle.map(|l| l.p50_ms)),
            field(idle.map(|l| l.p99_ms)),
            field(idle.map(|l| l.max_ms)),
            int_field(self.peak_rss_max_kib),
            field(self.cpu_mean_pct),
            field(self.cpu_max_pct),
            int_field(cost.map(|c| c.interval_ms)),
            field(cost.map(|c| c.with_snapshots)),
            field(cost.map(|c| c.baseline)),
            field(cost.and_then(SnapshotCost::drop_pct)),
            field(self.ceiling_per_sec),
            field(self.pct_of_ceiling()),
            field(self.rtt_p50_ms),
            field(self.idle_p50_round_trips()),
            field(self.in_transit_mean),
            field(self.money_in_transit_pct),
            field(self.flight_us()),
            field(self.flight_one_ways()),
            self.runs.max(1).to_string(),
            field(self.throughput_range.map(|(low, _)| low)),
            field(self.throughput_range.map(|(_, high)| high)),
        ]
    }
}

/// Writes `header` and `rows` as CSV to `path` (fields must not contain commas or quotes).
fn write_csv(path: &Path, header: &[&str], rows: &[Vec<String>]) -> Result<(), BenchError> {
    let mut text = header.join(",");
    text.push('\n');
    for row in rows {
        text.push_str(&row.join(","));
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes one line per row of the sweep to `path`, under [`SWEEP_CSV_HEADER`].
pub fn write_sweep_csv(path: &Path, rows: &[SweepRow]) -> Result<(), BenchError> {
    let rows: Vec<Vec<String>> = rows.iter().map(SweepRow::csv_fields).collect();
    write_csv(path, SWEEP_CSV_HEADER, &rows)
}

/// Every branch's resident memory at one moment of a soak run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoakSample {
    /// Since the controller started.
    pub at: Duration,
    /// Per branch, in branches-file order: `VmRSS` in KiB, `None` when it could not be read.
    pub rss_kib: Vec<Option<u64>>,
}

/// Writes a soak run's samples to `path`: `elapsed_s`, then `branchN_rss_kib` per branch.
pub fn write_soak_csv(path: &Path, samples: &[SoakSample]) -> Result<(), BenchError> {
    let branches = samples.iter().map(|s| s.rss_kib.len()).max().unwrap_or(0);
    let names: Vec<String> = (1..=branches)
        .map(|i| format!("branch{i}_rss_kib"))
        .collect();
    let mut header = vec!["elapsed_s"];
    header.extend(names.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = samples
        .iter()
        .map(|sample| {
            let mut row = vec![format!("{:.1}", sample.at.as_secs_f64())];
            row.extend((0..branches).map(|i| int_field(sample.rss_kib.get(i).copied().flatten())));
            row
        })
        .collect();
    write_csv(path, &header, &rows)
}

/// A `[low, high]` range around `values` with a margin, for a log-scale axis (so strictly
/// positive): from the smallest divided by `margin` to the largest times `margin`.
fn log_range(values: impl Iterator<Item = f64>, margin: f64) -> std::ops::Range<f64> {
    let (low, high) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if high <= 0.0 {
        return 0.1..10.0;
    }
    low / margin..high * margin
}

/// A rate as a short axis label: `850`, `12k`, `2.5M`.
fn short_rate(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.0}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// Ticks for a log axis over `range`: every 1, 2 and 5 times a power of ten inside it.
fn one_two_five(range: &std::ops::Range<f64>) -> Vec<f64> {
    let (low, high) = (range.start.max(1e-9), range.end);
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(low.log10().floor());
    while decade <= high {
        ticks.extend(
            [1.0, 2.0, 5.0]
                .map(|step| step * decade)
                .into_iter()
                .filter(|tick| (low..=high).contains(tick)),
        );
        decade *= 10.0;
    }
    ticks
}

/// The idle series' colour: a green dark enough to read on white.
const DARK_GREEN: RGBColor = RGBColor(0, 140, 0);

/// A plotters failure, with the file it was drawing.
fn plot_error(path: &Path, err: impl std::fmt::Display) -> BenchError {
    BenchError::Plot {
        path: path.to_path_buf(),
        reason: err.to_string(),
    }
}

/// Draws the sweep as an SVG at `path`: on the left, aggregate transfers per second against the
/// number of branches; on the right, snapshot latency p50 and p99 under load and p50 idle (log
/// scale). Both x axes are log2 with a tick at every size measured.
pub fn draw_sweep_plot(path: &Path, rows: &[SweepRow]) -> Result<(), BenchError> {
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let (left, right) = root.split_horizontally(600);

    let sizes: Vec<f64> = rows.iter().map(|row| row.branches as f64).collect();
    let x_range = log_range(sizes.iter().copied(), 1.4);
    let x_range = x_range.start.max(1.0)..x_range.end;
    let x_axis = || {
        x_range
            .clone()
            .log_scale()
            .base(2.0)
            .with_key_points(sizes.clone())
    };
    let x_label = |n: &f64| format!("{n:.0}");

    let rates: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|row| Some((row.branches as f64, row.throughput.as_ref()?.aggregate)))
        .collect();
    let y_top = rates.iter().map(|r| r.1).fold(0.0, f64::max).max(1.0) * 1.15;
    let mut chart = ChartBuilder::on(&left)
        .caption("Throughput (max-speed transfers)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(x_axis(), 0.0..y_top)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("branches")
        .y_desc("transfers / s (all branches)")
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&x_label)
        .y_label_formatter(&|v| short_rate(*v))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(LineSeries::new(rates.iter().copied(), BLUE.stroke_width(2)))
        .map_err(|e| plot_error(path, e))?
        .label("aggregate transfers/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(
            rates
                .iter()
                .map(|&point| Circle::new(point, 4, BLUE.filled())),
        )
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_error(path, e))?;

    type Pick = fn(&SweepRow) -> Option<f64>;
    let series: [(&str, RGBColor, Pick); 3] = [
        ("p50 under load", BLUE, |row| {
            row.latency.map(|latency| latency.p50_ms)
        }),
        ("p99 under load", RED, |row| {
            row.latency.map(|latency| latency.p99_ms)
        }),
        ("p50 idle", DARK_GREEN, |row| {
            row.idle_latency.map(|latency| latency.p50_ms)
        }),
    ];
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, _, pick)| {
            rows.iter()
                .filter_map(|row| Some((row.branches as f64, pick(row)?)))
                .filter(|point| point.1 > 0.0)
                .collect()
        })
        .collect();
    let y_range = log_range(points.iter().flatten().map(|point| point.1), 2.0);
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "Snapshot latency (InitSnapshot to all records)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            x_axis(),
            y_range
                .clone()
                .log_scale()
                .with_key_points(one_two_five(&y_range)),
        )
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("branches")
        .y_desc("latency, ms (log scale)")
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&x_label)
        .y_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}").trim_end_matches('0').to_string()
            }
        })
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for ((label, color, _), points) in series.iter().zip(&points) {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_error(path, e))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(
                points
                    .iter()
                    .map(move |&point| Circle::new(point, 4, color.filled())),
            )
            .map_err(|e| plot_error(path, e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

/// Draws a soak run as an SVG at `path`: each branch's resident memory (MiB) against time.
pub fn draw_soak_plot(path: &Path, samples: &[SoakSample]) -> Result<(), BenchError> {
    let root = SVGBackend::new(path, (900, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let end = samples
        .iter()
        .map(|s| s.at.as_secs_f64())
        .fold(1.0, f64::max);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let top = samples
        .iter()
        .flat_map(|s| s.rss_kib.iter().flatten().copied())
        .map(mib)
        .fold(1.0, f64::max)
        * 1.25;
    let branches = samples.iter().map(|s| s.rss_kib.len()).max().unwrap_or(0);
    let mut chart = ChartBuilder::on(&root)
        .caption("Branch resident memory over a soak run", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..top)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("VmRSS, MiB")
        .light_line_style(TRANSPARENT)
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for branch in 0..branches {
        let color = Palette99::pick(branch).to_rgba();
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|s| Some((s.at.as_secs_f64(), mib(s.rss_kib.get(branch).copied()??))))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| plot_error(path, e))?
            .label(format!("branch{}", branch + 1))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

/// A one-line, human-readable form of a failed snapshot: its id, initiator and verdict line.
pub fn describe_failure(report: &SnapshotReport) -> String {
    let text = report.to_text();
    let verdict = text
        .lines()
        .last()
        .unwrap_or("")
        .trim_start_matches("total: ");
    let mut line = format!(
        "snapshot {} (from {}, {:.1} ms): {verdict}",
        report.id,
        report.initiator,
        report.elapsed.as_secs_f64() * 1e3
    );
    for (name, reason) in report.missing() {
        let _ = write!(line, " [{name}: {reason}]");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapbank::controller::{BranchRecord, BranchState, Verdict};
    use snapbank::wire::pb::return_snapshot::{ChannelAudit, LocalSnapshot};

    #[test]
    fn percentile_of_nothing_or_a_bad_rank_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0], -1.0), None);
        assert_eq!(percentile(&[1.0], 100.5), None);
        assert_eq!(percentile(&[1.0], f64::NAN), None);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        assert_eq!(percentile(&[7.0], 0.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 50.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 100.0), Some(7.0));
        let two = [1.0, 2.0];
        assert_eq!(percentile(&two, 0.0), Some(1.0));
        assert_eq!(percentile(&two, 50.0), Some(1.0));
        assert_eq!(percentile(&two, 50.1), Some(2.0));
        assert_eq!(percentile(&two, 100.0), Some(2.0));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 50.0), Some(50.0));
        assert_eq!(percentile(&hundred, 99.0), Some(99.0));
        assert_eq!(percentile(&hundred, 100.0), Some(100.0));
        // With fewer than 100 values, p99 is the maximum.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 99.0), Some(10.0));
    }

    #[test]
    fn latency_summary_sorts_its_input() {
        let latencies = [5, 1, 3, 2, 4].map(Duration::from_millis);
        let summary = LatencySummary::from_durations(&latencies).unwrap();
        assert_eq!(summary.count, 5);
        assert_eq!(summary.p50_ms, 3.0);
        assert_eq!(summary.p99_ms, 5.0);
        assert_eq!(summary.max_ms, 5.0);
        assert_eq!(LatencySummary::from_durations(&[]), None);
    }

    fn names(count: usize) -> Vec<String> {
        (1..=count).map(|i| format!("branch{i}")).collect()
    }

    /// A consistent record of a two-branch bank (1000 each at the start) in which branch1 had
    /// sent `a` transfers of 1 to branch2 and branch2 `b` of 1 to branch1, all received.
    fn two_branch_answers(a: u64, b: u64) -> Vec<Result<LocalSnapshot, String>> {
        let audit = |peer: &str, sent: u64, received: u64| ChannelAudit {
            peer: peer.into(),
            sent_count: sent,
            sent_amount: sent,
            received_count: received,
            received_amount: received,
            ..Default::default()
        };
        let record = |name: &str, balance: u64, channel: ChannelAudit| {
            Ok(LocalSnapshot {
                balance: u32::try_from(balance).unwrap(),
                channel_state: vec![0],
                branch_name: name.into(),
                channels: vec![channel],
                ..Default::default()
            })
        };
        vec![
            record("branch1", 1000 - a + b, audit("branch2", a, b)),
            record("branch2", 1000 - b + a, audit("branch1", b, a)),
        ]
    }

    fn assembled(id: u32, a: u64, b: u64) -> SnapshotReport {
        SnapshotReport::assemble(
            id,
            "branch1",
            &names(2),
            two_branch_answers(a, b),
            2000,
            Duration::from_millis(3),
        )
    }

    #[test]
    fn counters_come_from_every_branchs_audits() {
        let report = assembled(1, 10, 4);
        assert!(report.is_ok(), "{}", report.to_text());
        let sample = CounterSample::from_report(&report, Duration::from_secs(1)).unwrap();
        assert_eq!(sample.sent, vec![10, 4]);
        assert_eq!(sample.at, Duration::from_secs(1));
        assert_eq!(sample.in_transit, 0, "every transfer was received");
        assert_eq!(sample.money_in_transit_pct, 0.0);
    }

    #[test]
    fn transfers_in_transit_are_counted_on_every_channel_and_averaged() {
        // branch1 sent 10 transfers and branch2 had received 7 of them at its cut: branch2
        // recorded the other 3 in transit on its channel from branch1.
        let mut report = assembled(1, 10, 4);
        let Ok(record) = report.branches[1].record.as_mut() else {
            panic!("branch2 answered");
        };
        let audit = &mut record.audits.as_mut().unwrap()[0];
        audit.in_transit_seq = vec![8, 9, 10];
        audit.in_transit_amount = vec![1, 1, 1];
        record.incoming = vec![("branch1".into(), 3)];
        assert!(report.is_ok());
        let sample = CounterSample::from_report(&report, Duration::ZERO).unwrap();
        assert_eq!(sample.in_transit, 3);
        // 3 of the bank's 2000 in transit.
        assert!((sample.money_in_transit_pct - 0.15).abs() < 1e-9);
        let at = |in_transit| CounterSample {
            at: Duration::ZERO,
            sent: vec![0],
            in_transit,
            money_in_transit_pct: in_transit as f64 * 10.0,
        };
        assert_eq!(mean_in_transit(&[]), None);
        assert_eq!(mean_in_transit(&[at(3), at(5), at(10)]), Some(6.0));
        assert_eq!(mean_money_in_transit_pct(&[]), None);
        assert_eq!(
            mean_money_in_transit_pct(&[at(3), at(5), at(10)]),
            Some(60.0)
        );
    }

    #[test]
    fn bad_or_counterless_snapshots_give_no_sample() {
        // Wrong total: a mismatch, not ok.
        let report = SnapshotReport::assemble(
            1,
            "branch1",
            &names(2),
            two_branch_answers(1, 1),
            2001,
            Duration::ZERO,
        );
        assert!(!report.is_ok());
        assert_eq!(CounterSample::from_report(&report, Duration::ZERO), None);
        // Ok, but a branch without counters (original schema).
        let report = SnapshotReport {
            epoch: 0,
            id: 2,
            initiator: "branch1".into(),
            elapsed: Duration::ZERO,
            branches: vec![BranchState {
                name: "branch1".into(),
                record: Ok(BranchRecord {
                    balance: 5,
                    incoming: Vec::new(),
                    audits: None,
                }),
            }],
            expected_total: 5,
            total: Some(5),
            audit: None,
            verdict: Verdict::Ok,
            asking: None,
        };
        assert_eq!(CounterSample::from_report(&report, Duration::ZERO), None);
    }

    #[test]
    fn throughput_is_the_counter_difference_over_the_time_between_starts() {
        let samples: Vec<CounterSample> = [(0, 10, 4), (1, 30, 20), (2, 110, 54)]
            .into_iter()
            .enumerate()
            .map(|(i, (secs, a, b))| {
                let report = assembled(i as u32, a, b);
                CounterSample::from_report(&report, Duration::from_millis(500 + secs * 1000))
                    .unwrap()
            })
            .collect();
        // Order does not matter: first and last are by start time.
        let shuffled = vec![samples[2].clone(), samples[0].clone(), samples[1].clone()];
        let throughput = Throughput::from_samples(&shuffled).unwrap();
        assert_eq!(throughput.window, Duration::from_secs(2));
        assert_eq!(throughput.transfers, 150);
        assert_eq!(throughput.aggregate, 75.0);
        assert_eq!(throughput.per_branch, vec![50.0, 25.0]);
        assert_eq!(throughput.per_branch_min(), 25.0);
        assert_eq!(throughput.per_branch_mean(), 37.5);
        assert_eq!(throughput.per_branch_max(), 50.0);
    }

    #[test]
    fn throughput_needs_two_samples_apart_in_time() {
        let at = |ms| CounterSample {
            at: Duration::from_millis(ms),
            sent: vec![1, 2],
            in_transit: 0,
            money_in_transit_pct: 0.0,
        };
        assert_eq!(Throughput::from_samples(&[]), None);
        assert_eq!(Throughput::from_samples(&[at(5)]), None);
        assert_eq!(Throughput::from_samples(&[at(5), at(5)]), None);
        let other_size = CounterSample {
            at: Duration::from_millis(9),
            sent: vec![1, 2, 3],
            in_transit: 0,
            money_in_transit_pct: 0.0,
        };
        assert_eq!(Throughput::from_samples(&[at(5), other_size]), None);
        assert_eq!(
            Throughput::from_samples(&[at(5), at(1005)]).map(|t| t.aggregate),
            Some(0.0)
        );
    }

    #[test]
    fn log_ticks_are_one_two_five_per_decade() {
        let ticks = one_two_five(&(0.15..6.0));
        let expected = [0.2, 0.5, 1.0, 2.0, 5.0];
        assert_eq!(ticks.len(), expected.len(), "{ticks:?}");
        for (tick, want) in ticks.iter().zip(expected) {
            assert!((tick - want).abs() < 1e-9, "{ticks:?}");
        }
        assert!(one_two_five(&(3.0..4.0)).is_empty());
    }

    #[test]
    fn rates_are_labelled_short() {
        assert_eq!(short_rate(850.0), "850");
        assert_eq!(short_rate(12_345.0), "12k");
        assert_eq!(short_rate(2_461_050.0), "2.5M");
    }

    #[test]
    fn cost_is_a_percentage_of_the_baseline() {
        assert_eq!(percent_drop(200.0, 150.0), Some(25.0));
        assert_eq!(percent_drop(200.0, 250.0), Some(-25.0));
        assert_eq!(percent_drop(0.0, 1.0), None);
    }

    #[test]
    fn proc_files_are_parsed_past_odd_command_names() {
        let status =
            "Name:\tbranch\nVmPeak:\t  9000 kB\nVmHWM:\t    4321 kB\nVmRSS:\t    4000 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(4321));
        assert_eq!(status_kib(status, "VmRSS"), Some(4000));
        assert_eq!(status_kib(status, "VmSwap"), None);
        let stat = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 3 0 99 0 0";
        assert_eq!(cpu_ticks(stat), Some(42));
        assert_eq!(cpu_ticks("1234 (x) S 1 2"), None);
        assert_eq!(cpu_ticks("no parenthesis"), None);
        assert_eq!(cpu_percent(50, 100, Duration::from_secs(1)), Some(50.0));
        assert_eq!(cpu_percent(50, 100, Duration::ZERO), None);
    }

    #[test]
    fn this_process_can_be_read_from_proc() {
        let sample = ProcessSample::read(std::process::id()).unwrap();
        assert!(sample.rss_kib > 0);
        assert!(sample.peak_rss_kib >= sample.rss_kib);
    }

    fn sample_rows() -> Vec<SweepRow> {
        let latency = |p50| LatencySummary {
            count: 10,
            p50_ms: p50,
            p99_ms: p50 * 3.0,
            max_ms: p50 * 4.0,
        };
        [2usize, 4, 8]
            .into_iter()
            .map(|n| SweepRow {
                branches: n,
                duration_secs: 5.0,
                snapshot_interval_ms: 100,
                snapshots: 50,
                failed: u32::from(n == 8),
                throughput: Some(Throughput {
                    window: Duration::from_secs(4),
                    transfers: 4000 * n as u64,
                    aggregate: 1000.0 * n as f64,
                    per_branch: vec![1000.0; n],
                }),
                latency: Some(latency(n as f64 / 4.0)),
                idle_snapshots: (n != 8).then_some((200, 0)),
                idle_latency: (n != 8).then(|| latency(0.2)),
                peak_rss_max_kib: Some(5000),
                cpu_mean_pct: Some(40.0),
                cpu_max_pct: Some(45.5),
                cost: (n == 4).then_some(SnapshotCost {
                    interval_ms: 10,
                    with_snapshots: 900.0,
                    baseline: 1000.0,
                }),
                ceiling_per_sec: Some(100_000.0 * n as f64),
                rtt_p50_ms: Some(0.05),
                in_transit_mean: Some(50.0 * n as f64),
                money_in_transit_pct: Some(40.0),
                runs: 1,
                throughput_range: None,
            })
            .collect()
    }

    #[test]
    fn throughput_is_a_share_of_the_ceiling_and_latency_a_count_of_round_trips() {
        let rows = sample_rows();
        let row = &rows[1];
        assert_eq!(row.branches, 4);
        let pct = row.pct_of_ceiling().unwrap();
        assert!((pct - 1.0).abs() < 1e-9, "{pct}");
        let rtts = row.idle_p50_round_trips().unwrap();
        assert!((rtts - 4.0).abs() < 1e-9, "{rtts}");
        assert_eq!(rows[2].idle_p50_round_trips(), None, "no idle run at N=8");
        // 200 transfers in transit at 4000 transfers/s: each is in flight 50 ms, which is 2000
        // one-way trips of 25 us.
        let flight = row.flight_us().unwrap();
        assert!((flight - 50_000.0).abs() < 1e-6, "{flight}");
        let one_ways = row.flight_one_ways().unwrap();
        assert!((one_ways - 2000.0).abs() < 1e-6, "{one_ways}");
        let idle = SweepRow {
            throughput: None,
            ..row.clone()
        };
        assert_eq!(idle.flight_us(), None, "no throughput, no time in flight");
    }

    #[test]
    fn several_runs_sum_up_as_medians_with_failures_kept_and_peaks_the_highest() {
        let base = sample_rows()[1].clone();
        let run = |rate: f64, p99: f64, rss: u64, failed: u32, drop: f64| {
            let mut row = base.clone();
            row.throughput = Some(Throughput {
                aggregate: rate,
                per_branch: vec![rate / 4.0; 4],
                ..base.throughput.clone().unwrap()
            });
            row.latency = Some(LatencySummary {
                p99_ms: p99,
                ..base.latency.unwrap()
            });
            row.peak_rss_max_kib = Some(rss);
            row.failed = failed;
            row.cost = Some(SnapshotCost {
                interval_ms: 10,
                with_snapshots: 1000.0 - drop * 10.0,
                baseline: 1000.0,
            });
            row
        };
        let rows = [
            run(3000.0, 9.0, 5000, 0, 3.0),
            run(1000.0, 1.0, 7000, 1, 1.0),
            run(2000.0, 4.0, 6000, 0, 2.0),
        ];
        let median = SweepRow::median_of(&rows).unwrap();
        assert_eq!(median.runs, 3);
        let throughput = median.throughput.clone().unwrap();
        assert_eq!(throughput.aggregate, 2000.0);
        assert_eq!(
            throughput.per_branch,
            vec![500.0; 4],
            "taken whole from the median run"
        );
        assert_eq!(median.throughput_range, Some((1000.0, 3000.0)));
        assert_eq!(median.latency.unwrap().p99_ms, 4.0);
        assert_eq!(median.latency.unwrap().count, 30, "counts are summed");
        assert_eq!(median.failed, 1, "a failure in any run shows");
        assert_eq!(median.snapshots, 150);
        assert_eq!(median.peak_rss_max_kib, Some(7000));
        let drop = median.cost.unwrap().drop_pct().unwrap();
        assert!((drop - 2.0).abs() < 1e-9, "{drop}");
        assert_eq!(SweepRow::median_of(&[]), None);
        // Two runs: the lower middle.
        let two = SweepRow::median_of(&rows[..2]).unwrap();
        assert_eq!(two.throughput.unwrap().aggregate, 1000.0);
        let fields = median.csv_fields();
        assert_eq!(fields.len(), SWEEP_CSV_HEADER.len());
        assert_eq!(&fields[fields.len() - 3..], ["3", "1000.000", "3000.000"]);
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("snapbank-bench-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sweep_csv_has_one_row_per_size_and_every_column() {
        let dir = scratch("csv");
        let path = dir.join("sweep.csv");
        write_sweep_csv(&path, &sample_rows()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], SWEEP_CSV_HEADER.join(","));
        for line in &lines[1..] {
            assert_eq!(line.split(',').count(), SWEEP_CSV_HEADER.len(), "{line}");
        }
        let column = |name: &str| SWEEP_CSV_HEADER.iter().position(|h| *h == name).unwrap();
        let row4: Vec<&str> = lines[2].split(',').collect();
        assert_eq!(row4[column("branches")], "4");
        assert_eq!(row4[column("transfers_per_s")], "4000.000");
        assert_eq!(
            row4[column("per_branch_transfers_per_s")],
            "1000.0;1000.0;1000.0;1000.0"
        );
        assert_eq!(row4[column("cost_drop_pct")], "10.000");
        let row8: Vec<&str> = lines[3].split(',').collect();
        assert_eq!(row8[column("failed")], "1");
        assert_eq!(row8[column("idle_p50_ms")], "");
        assert_eq!(row8[column("cost_drop_pct")], "");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn soak_csv_has_a_column_per_branch() {
        let dir = scratch("soak");
        let path = dir.join("soak.csv");
        let samples = vec![
            SoakSample {
                at: Duration::ZERO,
                rss_kib: vec![Some(100), Some(200)],
            },
            SoakSample {
                at: Duration::from_secs(10),
                rss_kib: vec![Some(110), None],
            },
        ];
        write_soak_csv(&path, &samples).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "elapsed_s,branch1_rss_kib,branch2_rss_kib\n0.0,100,200\n10.0,110,\n"
        );
        draw_soak_plot(&dir.join("soak.svg"), &samples).unwrap();
        let svg = std::fs::read_to_string(dir.join("soak.svg")).unwrap();
        assert!(svg.contains("VmRSS, MiB"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sweep_plot_is_an_svg_with_both_charts_and_legends() {
        let dir = scratch("plot");
        let path = dir.join("sweep.svg");
        draw_sweep_plot(&path, &sample_rows()).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        for text in [
            "transfers / s (all branches)",
            "latency, ms (log scale)",
            "branches",
            "aggregate transfers/s",
            "p99 under load",
            "p50 idle",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
        // One size, or no data at all, still draws.
        draw_sweep_plot(&path, &sample_rows()[..1]).unwrap();
        draw_sweep_plot(&path, &[]).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failures_are_described_in_one_line() {
        let report = SnapshotReport::assemble(
            4,
            "branch2",
            &names(2),
            vec![two_branch_answers(1, 1).remove(0), Err("no answer".into())],
            2000,
            Duration::from_millis(10),
        );
        let line = describe_failure(&report);
        assert!(line.starts_with("snapshot 4 (from branch2, 10.0 ms): unknown (INCOMPLETE"));
        assert!(line.ends_with("[branch2: no answer]"), "{line}");
    }
}
