//! `snapbank-bench` (run through `./bench`): measures a real bank on this machine.
//!
//! For each bank size in the sweep it starts that many `branch` processes on loopback, sending
//! as fast as their connections take, and runs the controller in this process. Transfers per
//! second are counted exactly from the snapshots' own channel counters; snapshot latency is each
//! report's `elapsed`, under load and (in a second run of the same size) with idle branches;
//! memory and CPU come from `/proc`. At one size it also measures what snapshots cost: the same
//! load with a snapshot every 10 ms against one with only the two snapshots that bound the
//! window. Results go to stdout as a table, and to `<out-dir>/sweep.csv` and `sweep.svg`.
//!
//! `--soak-secs S` instead runs one bank for S seconds and samples every branch's resident
//! memory every 10 s, into `soak.csv` and `soak.svg`: flat lines mean nothing grows.
//!
//! Every process it starts is stopped on every exit path: banks are dropped when a run ends,
//! and Ctrl-C or SIGTERM drops the run in progress.
//!
//! The bench is tooling, not the product: it lives beside the binaries, outside the library's
//! API. `figures` is its pure half (percentiles, rates from counters, `/proc`, CSV and SVG).

mod ceiling;
mod figures;
mod rollbacks;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use figures::{
    CounterSample, LatencySummary, ProcessSample, SnapshotCost, SoakSample, SweepRow, Throughput,
    cpu_percent, describe_failure, draw_soak_plot, draw_sweep_plot, mean_in_transit,
    mean_money_in_transit_pct, write_soak_csv, write_sweep_csv,
};
use snapbank::controller::checkpoint::Checkpoint;
use snapbank::controller::checkpoint::dir::{CheckpointWriter, DEFAULT_KEEP, now_unix_ms};
use snapbank::controller::{ControllerConfig, SnapshotReport, run_controller};
use snapbank::local_bank::LocalBank;

/// Benchmarks a snapbank bank of real branch processes on loopback.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Bank sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [2, 4, 8, 16, 32, 64])]
    branches: Vec<usize>,
    /// How long each loaded run lasts, in seconds.
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Milliseconds between snapshot starts in the loaded runs.
    #[arg(long, default_value_t = 100)]
    snapshot_interval_ms: u64,
    /// Where to write sweep.csv and sweep.svg (or soak.csv and soak.svg).
    #[arg(long, default_value = "bench-results")]
    out_dir: PathBuf,
    /// Skip the idle-latency runs.
    #[arg(long)]
    skip_idle: bool,
    /// Skip the snapshot-cost runs.
    #[arg(long)]
    skip_cost: bool,
    /// Bank size at which to measure snapshot cost.
    #[arg(long, default_value_t = 4)]
    cost_branches: usize,
    /// Instead of the sweep: run one bank of 4 for this many seconds, sampling memory.
    #[arg(long)]
    soak_secs: Option<u64>,
    /// Seconds between memory samples in a soak run.
    #[arg(long, default_value_t = 10)]
    soak_sample_secs: u64,
    /// Skip measuring the transport's ceiling and the loopback round trip.
    #[arg(long)]
    skip_ceiling: bool,
    /// How long each ceiling run lasts, in seconds.
    #[arg(long, default_value_t = 3)]
    ceiling_secs: u64,
    /// Durable branches: each with a data directory (`branch --data-dir`), so every transfer
    /// is group-committed to its store; the branches' store figures (fsyncs per second, frames
    /// per commit, mean commit time) are printed after each run of at least 10 s.
    #[arg(long)]
    durable: bool,
    /// Run the whole sweep this many times, the bank sizes in turn each time, and report each
    /// figure as the median of the runs with the spread of throughput: one run on a machine
    /// shared with other work is off by 10 % or more. Every run's rows also go to
    /// `sweep-run<K>.csv`.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// The controller writes every ok snapshot of the loaded runs as a checkpoint into this
    /// directory (as `controller --checkpoint-dir` does, keeping the newest 10): what
    /// checkpoints cost.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Instead of the sweep: four in-memory branches at full load, a snapshot every
    /// --snapshot-interval-ms, and this many times a branch killed with SIGKILL and started
    /// again empty; measures the time from each kill to the bank trading again after its
    /// rollback, and to its first ok snapshot after.
    #[arg(long, value_name = "N", conflicts_with_all = ["soak_secs", "durable"])]
    rollbacks: Option<usize>,
}

/// Where the controller writes checkpoints (`--checkpoint-dir`), set once in `main`.
static CHECKPOINT_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Whether this run's branches are durable (`--durable`), set once in `main`.
static DURABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Branch arguments for sending as fast as the connections take.
const FULL_LOAD: &[&str] = &["--max-interval-ms", "0"];
/// Branch arguments for (practically) never sending.
const IDLE: &[&str] = &[
    "--min-interval-ms",
    "3600000",
    "--max-interval-ms",
    "3600000",
];
/// Idle runs: 200 snapshots, one every 10 ms (more for large banks, below). Snapshots of the idle runs follow each other this closely, per branch (at least 10 ms): one
/// snapshot of N branches is N*(N-1) markers, so at N=64 a 10 ms pace would overlap a dozen
/// snapshots and measure their own load rather than the latency of one.
const IDLE_INTERVAL_PER_BRANCH: Duration = Duration::from_millis(2);
/// How many snapshots an idle run takes.
const IDLE_SNAPSHOTS: u32 = 200;
/// Cost runs: a snapshot this often, against none in between.
const COST_INTERVAL: Duration = Duration::from_millis(10);
/// Money per branch; the total is capped at what the wire's 32-bit balances hold.
const MONEY_PER_BRANCH: u64 = 1_000_000;

/// One run of a bank: how big, how loaded, how often snapshots are taken.
#[derive(Debug, Clone)]
struct Plan {
    /// For progress lines.
    label: String,
    branches: usize,
    branch_args: &'static [&'static str],
    interval: Duration,
    snapshots: u32,
    /// Sample every branch's resident memory this often (soak runs).
    sample_memory: Option<Duration>,
}

/// What the controller's callback collects during a run.
#[derive(Debug, Default)]
struct Collected {
    /// Snapshots reported.
    snapshots: u32,
    /// Latencies of the good snapshots.
    latencies: Vec<Duration>,
    /// One line per snapshot that was not ok.
    failures: Vec<String>,
    /// Counters of every good snapshot.
    samples: Vec<CounterSample>,
}

/// Everything one run measured.
#[derive(Debug)]
struct RunResult {
    collected: Collected,
    throughput: Option<Throughput>,
    latency: Option<LatencySummary>,
    /// Per branch, from `/proc` right before the bank was stopped (`None`: unreadable).
    processes: Vec<Option<ProcessSample>>,
    /// Per branch, CPU % of one core from the controller's start to the end of the run.
    cpu: Vec<Option<f64>>,
    /// Memory samples (soak runs only).
    memory: Vec<SoakSample>,
    /// Branches whose process had exited before the end.
    exited: Vec<String>,
    /// Where the branches' logs were kept, when something went wrong.
    logs: Option<PathBuf>,
}

impl RunResult {
    fn failed(&self) -> u32 {
        self.collected.snapshots - self.collected.latencies.len() as u32
    }

    fn peak_rss_max_kib(&self) -> Option<u64> {
        self.processes
            .iter()
            .flatten()
            .map(|p| p.peak_rss_kib)
            .max()
    }

    fn cpu_mean(&self) -> Option<f64> {
        let known: Vec<f64> = self.cpu.iter().flatten().copied().collect();
        (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
    }

    fn cpu_max(&self) -> Option<f64> {
        self.cpu.iter().flatten().copied().reduce(f64::max)
    }
}

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times: `getconf CLK_TCK`, or the usual
/// 100 when that cannot be asked.
fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

/// Starts the bank, runs the controller to the end of the plan, reads `/proc`, stops the bank.
async fn run(plan: &Plan, bin_dir: &Path, ticks_per_sec: u64) -> Result<RunResult, String> {
    let branch_args: Vec<String> = plan.branch_args.iter().map(|a| a.to_string()).collect();
    let durable = DURABLE.load(std::sync::atomic::Ordering::Relaxed);
    let started_bank = if durable {
        LocalBank::start_durable(&bin_dir.join("branch"), plan.branches, &branch_args)
    } else {
        LocalBank::start(&bin_dir.join("branch"), plan.branches, &branch_args)
    };
    let mut bank =
        started_bank.map_err(|err| format!("cannot start {} branches: {err}", plan.branches))?;
    let pids = bank.pids();
    let ticks_before: Vec<Option<u64>> = pids
        .iter()
        .map(|&pid| ProcessSample::read(pid).ok().map(|s| s.cpu_ticks))
        .collect();
    let started = Instant::now();

    let checkpoints = match CHECKPOINT_DIR.get() {
        Some(dir) => Some(
            std::fs::create_dir_all(dir)
                .and_then(|()| CheckpointWriter::start(dir.clone(), DEFAULT_KEEP))
                .map_err(|err| format!("--checkpoint-dir {}: {err}", dir.display()))?,
        ),
        None => None,
    };
    let checkpoint_stats = checkpoints.as_ref().map(|writer| writer.stats.clone());
    let members = bank.entries().to_vec();
    let collected = Rc::new(RefCell::new(Collected::default()));
    let sink = collected.clone();
    let on_report = Box::new(move |report: &SnapshotReport| {
        if let Some(writer) = &checkpoints
            && let Some(checkpoint) = Checkpoint::of_report(report, &members, now_unix_ms())
        {
            writer.submit(checkpoint);
        }
        let now = Instant::now();
        let snapshot_start = now.checked_sub(report.elapsed).unwrap_or(started);
        let at = snapshot_start.saturating_duration_since(started);
        let mut collected = sink.borrow_mut();
        collected.snapshots += 1;
        if report.is_ok() {
            collected.latencies.push(report.elapsed);
        } else {
            collected.failures.push(describe_failure(report));
        }
        if let Some(sample) = CounterSample::from_report(report, at) {
            collected.samples.push(sample);
        }
    });

    let memory = Rc::new(RefCell::new(Vec::new()));
    let sampler = plan.sample_memory.map(|every| {
        let (pids, memory) = (pids.clone(), memory.clone());
        actix_rt::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                let sample = sample_memory(&pids, started);
                print_memory_sample(&sample);
                memory.borrow_mut().push(sample);
            }
        })
    });

    let total = (MONEY_PER_BRANCH * plan.branches as u64).min(u64::from(u32::MAX));
    let config = ControllerConfig {
        interval: plan.interval,
        snapshots: Some(plan.snapshots),
        retrieve_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        ..ControllerConfig::new(total, bank.entries().to_vec())
    };
    let outcome = run_controller(config, on_report).await;
    if let Some(stats) = checkpoint_stats {
        eprintln!(
            "  checkpoints: {} written, {} failed",
            stats.written.load(std::sync::atomic::Ordering::Relaxed),
            stats.failed.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    if let Some(sampler) = sampler {
        sampler.abort();
        let sample = sample_memory(&pids, started);
        print_memory_sample(&sample);
        memory.borrow_mut().push(sample);
    }
    let wall = started.elapsed();
    let processes: Vec<Option<ProcessSample>> = pids
        .iter()
        .map(|&pid| ProcessSample::read(pid).ok())
        .collect();
    let exited = bank.exited();
    let collected = std::mem::take(&mut *collected.borrow_mut());
    let logs =
        (outcome.is_err() || !exited.is_empty() || !collected.failures.is_empty()).then(|| {
            bank.keep_dir();
            bank.dir().to_path_buf()
        });
    if durable {
        for entry in bank.entries() {
            let log = std::fs::read_to_string(bank.log_path(&entry.name)).unwrap_or_default();
            if let Some(line) = log.lines().rfind(|line| line.contains("store: ")) {
                let figures = line.split_once("store: ").map_or(line, |(_, rest)| rest);
                eprintln!("  {} store: {figures}", entry.name);
            }
        }
    }
    bank.stop();
    drop(bank);
    if let Err(err) = outcome {
        let logs = logs.map(|dir| format!(" (branch logs in {})", dir.display()));
        return Err(format!("controller: {err}{}", logs.unwrap_or_default()));
    }

    let cpu = processes
        .iter()
        .zip(&ticks_before)
        .map(|(now, before)| {
            let used = now.as_ref()?.cpu_ticks.checked_sub((*before)?)?;
            cpu_percent(used, ticks_per_sec, wall)
        })
        .collect();
    let memory = std::mem::take(&mut *memory.borrow_mut());
    Ok(RunResult {
        throughput: Throughput::from_samples(&collected.samples),
        latency: LatencySummary::from_durations(&collected.latencies),
        collected,
        processes,
        cpu,
        memory,
        exited,
        logs,
    })
}

/// Every branch's resident memory now.
fn sample_memory(pids: &[u32], started: Instant) -> SoakSample {
    SoakSample {
        at: started.elapsed(),
        rss_kib: pids
            .iter()
            .map(|&pid| ProcessSample::read(pid).ok().map(|p| p.rss_kib))
            .collect(),
    }
}

fn print_memory_sample(sample: &SoakSample) {
    let values: Vec<String> = sample
        .rss_kib
        .iter()
        .map(|rss| rss.map_or("?".to_string(), |kib| kib.to_string()))
        .collect();
    println!(
        "soak {:>6.1} s  VmRSS KiB per branch: {}",
        sample.at.as_secs_f64(),
        values.join(" ")
    );
}

/// Prints what a run found wrong: failed snapshots, dead branches, where the logs are.
fn report_problems(plan: &Plan, result: &RunResult) {
    for failure in &result.collected.failures {
        println!("  {}: FAILED {failure}", plan.label);
    }
    if !result.exited.is_empty() {
        println!(
            "  {}: branches exited early: {}",
            plan.label,
            result.exited.join(", ")
        );
    }
    if let Some(dir) = &result.logs {
        println!("  {}: branch logs kept in {}", plan.label, dir.display());
    }
}

fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.decimals$}"))
}

/// One line per run as it finishes.
fn print_run(plan: &Plan, result: &RunResult) {
    let rate = result.throughput.as_ref();
    let mut line = format!(
        "{:<26} {:>4} snapshots, {} failed, {} transfers/s",
        plan.label,
        result.collected.snapshots,
        result.failed(),
        fmt_opt(rate.map(|t| t.aggregate), 0),
    );
    if let Some(latency) = &result.latency {
        line += &format!(
            ", latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
            latency.p50_ms, latency.p99_ms, latency.max_ms
        );
    }
    println!("{line}");
    if let Some(rate) = rate.filter(|rate| rate.per_branch.len() <= 16 && rate.transfers > 0) {
        let per_branch: Vec<String> = rate.per_branch.iter().map(|r| format!("{r:.0}")).collect();
        println!("{:<26} per branch: {}", "", per_branch.join(" "));
    }
    report_problems(plan, result);
}

fn print_table(rows: &[SweepRow]) {
    println!();
    println!(
        "{:>4} {:>6} {:>5} {:>11} {:>7} {:>9} {:>8} {:>9} {:>23} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "N",
        "snaps",
        "fail",
        "transfers/s",
        "% ceil",
        "in flight",
        "% money",
        "flight us",
        "per branch min/mean/max",
        "p50 ms",
        "p99 ms",
        "max ms",
        "idle p50",
        "idle RTTs",
        "idle p99",
        "RSS MiB",
        "CPU %"
    );
    for row in rows {
        let tp = row.throughput.as_ref();
        let per_branch = tp.map_or("-".to_string(), |t| {
            format!(
                "{:.0}/{:.0}/{:.0}",
                t.per_branch_min(),
                t.per_branch_mean(),
                t.per_branch_max()
            )
        });
        println!(
            "{:>4} {:>6} {:>5} {:>11} {:>7} {:>9} {:>8} {:>9} {:>23} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>7}",
            row.branches,
            row.snapshots,
            row.failed,
            fmt_opt(tp.map(|t| t.aggregate), 0),
            fmt_opt(row.pct_of_ceiling(), 2),
            fmt_opt(row.in_transit_mean, 1),
            fmt_opt(row.money_in_transit_pct, 1),
            fmt_opt(row.flight_us(), 1),
            per_branch,
            fmt_opt(row.latency.map(|l| l.p50_ms), 2),
            fmt_opt(row.latency.map(|l| l.p99_ms), 2),
            fmt_opt(row.latency.map(|l| l.max_ms), 2),
            fmt_opt(row.idle_latency.map(|l| l.p50_ms), 2),
            fmt_opt(row.idle_p50_round_trips(), 1),
            fmt_opt(row.idle_latency.map(|l| l.p99_ms), 2),
            fmt_opt(row.peak_rss_max_kib.map(|kib| kib as f64 / 1024.0), 1),
            fmt_opt(row.cpu_mean_pct, 0),
        );
    }
    for row in rows {
        if let Some(cost) = &row.cost {
            println!(
                "\nsnapshot cost at N={}: {:.0} transfers/s with a snapshot every {} ms, {:.0} without: {} % drop",
                row.branches,
                cost.with_snapshots,
                cost.interval_ms,
                cost.baseline,
                fmt_opt(cost.drop_pct(), 1)
            );
        }
    }
    if let Some(runs) = rows
        .iter()
        .map(|row| row.runs)
        .max()
        .filter(|&runs| runs > 1)
    {
        let ranges: Vec<String> = rows
            .iter()
            .filter_map(|row| {
                let (low, high) = row.throughput_range?;
                Some(format!("N={} {low:.0}-{high:.0}", row.branches))
            })
            .collect();
        println!(
            "\nMedians of {runs} runs (snapshots and failures summed, RSS and max CPU the highest). \
             transfers/s ranged: {}",
            ranges.join(", ")
        );
    }
    println!(
        "\nRSS: the largest peak (VmHWM) of any branch; CPU: mean over branches, % of one core; \
         latency: good snapshots only."
    );
    println!(
        "in flight: mean transfers the loaded run's snapshots found in transit; % money: \
         their share of the bank's money; flight us: a transfer's mean time in flight (in flight / transfers/s, Little's law)."
    );
}

/// How many snapshots a run of `duration` at `interval` takes (at least 2, for a rate).
fn snapshots_for(duration: Duration, interval: Duration) -> u32 {
    let count = duration.as_millis() / interval.as_millis().max(1);
    u32::try_from(count).unwrap_or(u32::MAX).max(2)
}

/// Results so far, kept outside the run so an interrupted sweep still writes what it has.
#[derive(Debug, Default)]
struct Progress {
    /// The rows of the run in progress.
    rows: Vec<SweepRow>,
    /// The rows of every finished run (with `--runs`).
    finished: Vec<Vec<SweepRow>>,
    any_failure: bool,
}

impl Progress {
    /// Every run's rows so far, the one in progress included if it has any.
    fn all_runs(&self) -> Vec<Vec<SweepRow>> {
        let mut runs = self.finished.clone();
        if !self.rows.is_empty() {
            runs.push(self.rows.clone());
        }
        runs
    }
}

/// One row per bank size: each figure the median over `runs` ([`SweepRow::median_of`]).
fn median_rows(runs: &[Vec<SweepRow>]) -> Vec<SweepRow> {
    // Every run measures the same sizes in the same order.
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|row| row.branches)
        .filter_map(|n| {
            let rows: Vec<SweepRow> = runs
                .iter()
                .flatten()
                .filter(|row| row.branches == n)
                .cloned()
                .collect();
            SweepRow::median_of(&rows)
        })
        .collect()
}

async fn sweep(args: &Args, bin_dir: &Path, progress: &RefCell<Progress>) -> Result<(), String> {
    let ticks = clock_ticks_per_sec();
    let duration = Duration::from_secs(args.duration_secs);
    let interval = Duration::from_millis(args.snapshot_interval_ms);
    let frame = ceiling::transfer_frame_bytes();
    let rtt = if args.skip_ceiling {
        None
    } else {
        let rtt = ceiling::round_trip(frame, 4000)?;
        eprintln!(
            "bench: loopback round trip of a {frame}-byte message: p50 {:.1} us",
            rtt.as_secs_f64() * 1e6
        );
        Some(rtt.as_secs_f64() * 1000.0)
    };
    let bench = std::env::current_exe().map_err(|err| err.to_string())?;
    for &n in &args.branches {
        let plan = Plan {
            label: format!("N={n} load"),
            branches: n,
            branch_args: FULL_LOAD,
            interval,
            snapshots: snapshots_for(duration, interval),
            sample_memory: None,
        };
        eprintln!(
            "bench: N={n}: {} s at full load, a snapshot every {} ms",
            args.duration_secs, args.snapshot_interval_ms
        );
        let result = run(&plan, bin_dir, ticks).await?;
        print_run(&plan, &result);
        let mut row = SweepRow {
            branches: n,
            duration_secs: duration.as_secs_f64(),
            snapshot_interval_ms: args.snapshot_interval_ms,
            snapshots: result.collected.snapshots,
            failed: result.failed(),
            throughput: result.throughput.clone(),
            latency: result.latency,
            peak_rss_max_kib: result.peak_rss_max_kib(),
            cpu_mean_pct: result.cpu_mean(),
            cpu_max_pct: result.cpu_max(),
            rtt_p50_ms: rtt,
            in_transit_mean: mean_in_transit(&result.collected.samples),
            money_in_transit_pct: mean_money_in_transit_pct(&result.collected.samples),
            ..SweepRow::default()
        };
        if !args.skip_ceiling {
            let ceiling = ceiling::mesh_ceiling(&bench, n, args.ceiling_secs, frame)?;
            eprintln!(
                "bench: N={n}: ceiling {ceiling:.0} {frame}-byte frames/s (full mesh, 4 KiB writes, no per-frame work)"
            );
            row.ceiling_per_sec = Some(ceiling);
        }
        let mut failed = result.failed() > 0 || !result.exited.is_empty();
        if !args.skip_idle {
            let plan = Plan {
                label: format!("N={n} idle"),
                branch_args: IDLE,
                interval: (IDLE_INTERVAL_PER_BRANCH * n as u32).max(Duration::from_millis(10)),
                snapshots: IDLE_SNAPSHOTS,
                ..plan
            };
            let result = run(&plan, bin_dir, ticks).await?;
            print_run(&plan, &result);
            row.idle_snapshots = Some((result.collected.snapshots, result.failed()));
            row.idle_latency = result.latency;
            failed |= result.failed() > 0 || !result.exited.is_empty();
        }
        let mut progress = progress.borrow_mut();
        progress.any_failure |= failed;
        progress.rows.push(row);
    }
    if !args.skip_cost {
        let n = args.cost_branches;
        eprintln!(
            "bench: N={n}: snapshot cost, {} s with a snapshot every {} ms and {} s with none between",
            args.duration_secs,
            COST_INTERVAL.as_millis(),
            args.duration_secs
        );
        let with = Plan {
            label: format!("N={n} cost, snapshots"),
            branches: n,
            branch_args: FULL_LOAD,
            interval: COST_INTERVAL,
            snapshots: snapshots_for(duration, COST_INTERVAL),
            sample_memory: None,
        };
        let with_result = run(&with, bin_dir, ticks).await?;
        print_run(&with, &with_result);
        // Two snapshots `duration` apart bound the window: one at its start, one at its end.
        let baseline = Plan {
            label: format!("N={n} cost, baseline"),
            interval: duration,
            snapshots: 2,
            ..with.clone()
        };
        let baseline_result = run(&baseline, bin_dir, ticks).await?;
        print_run(&baseline, &baseline_result);
        let cost = match (&with_result.throughput, &baseline_result.throughput) {
            (Some(with), Some(baseline)) => Some(SnapshotCost {
                interval_ms: COST_INTERVAL.as_millis() as u64,
                with_snapshots: with.aggregate,
                baseline: baseline.aggregate,
            }),
            _ => {
                println!("  N={n} cost: not enough good snapshots to compare");
                None
            }
        };
        let mut progress = progress.borrow_mut();
        progress.any_failure |= with_result.failed() + baseline_result.failed() > 0;
        match progress.rows.iter_mut().find(|row| row.branches == n) {
            Some(row) => row.cost = cost,
            None => progress.rows.push(SweepRow {
                branches: n,
                cost,
                ..SweepRow::default()
            }),
        }
    }
    Ok(())
}

/// Writes the sweep's CSV and plot (of `rows`, the medians when there were several runs) and,
/// with several `runs`, each run's own CSV, printing where.
fn write_sweep(out_dir: &Path, rows: &[SweepRow], runs: &[Vec<SweepRow>]) -> Result<(), String> {
    std::fs::create_dir_all(out_dir)
        .map_err(|err| format!("cannot create {}: {err}", out_dir.display()))?;
    if runs.len() > 1 {
        for (k, run) in runs.iter().enumerate() {
            let csv = out_dir.join(format!("sweep-run{}.csv", k + 1));
            write_sweep_csv(&csv, run).map_err(|err| err.to_string())?;
        }
        println!("wrote sweep-run1.csv .. sweep-run{}.csv", runs.len());
    }
    let csv = out_dir.join("sweep.csv");
    write_sweep_csv(&csv, rows).map_err(|err| err.to_string())?;
    let svg = out_dir.join("sweep.svg");
    draw_sweep_plot(&svg, rows).map_err(|err| err.to_string())?;
    println!("wrote {} and {}", csv.display(), svg.display());
    Ok(())
}

async fn soak(args: &Args, secs: u64, bin_dir: &Path) -> Result<bool, String> {
    let duration = Duration::from_secs(secs);
    let interval = Duration::from_millis(args.snapshot_interval_ms);
    let plan = Plan {
        label: "N=4 soak".to_string(),
        branches: 4,
        branch_args: FULL_LOAD,
        interval,
        snapshots: snapshots_for(duration, interval),
        sample_memory: Some(Duration::from_secs(args.soak_sample_secs.max(1))),
    };
    eprintln!(
        "bench: soak: 4 branches at full load for {secs} s, a snapshot every {} ms, memory every {} s",
        args.snapshot_interval_ms,
        args.soak_sample_secs.max(1)
    );
    let result = run(&plan, bin_dir, clock_ticks_per_sec()).await?;
    print_run(&plan, &result);
    let first = result.memory.first();
    let last = result.memory.last();
    if let (Some(first), Some(last)) = (first, last) {
        for (i, (a, b)) in first.rss_kib.iter().zip(&last.rss_kib).enumerate() {
            if let (Some(a), Some(b)) = (a, b) {
                println!(
                    "branch{}: VmRSS {a} KiB at {:.0} s, {b} KiB at {:.0} s ({:+} KiB)",
                    i + 1,
                    first.at.as_secs_f64(),
                    last.at.as_secs_f64(),
                    *b as i64 - *a as i64
                );
            }
        }
    }
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|err| format!("cannot create {}: {err}", args.out_dir.display()))?;
    let csv = args.out_dir.join("soak.csv");
    write_soak_csv(&csv, &result.memory).map_err(|err| err.to_string())?;
    let svg = args.out_dir.join("soak.svg");
    draw_soak_plot(&svg, &result.memory).map_err(|err| err.to_string())?;
    println!("wrote {} and {}", csv.display(), svg.display());
    Ok(result.failed() == 0 && result.exited.is_empty())
}

fn check(args: &Args) -> Result<(), String> {
    if let Some(n) = args.branches.iter().find(|&&n| n < 2) {
        return Err(format!("a bank needs at least two branches, not {n}"));
    }
    if args.branches.is_empty() {
        return Err("--branches needs at least one size".to_string());
    }
    if !args.skip_cost && args.cost_branches < 2 {
        return Err(format!(
            "--cost-branches needs at least two branches, not {}",
            args.cost_branches
        ));
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1".to_string());
    }
    if args.duration_secs == 0 || args.snapshot_interval_ms == 0 {
        return Err("--duration-secs and --snapshot-interval-ms must be at least 1".to_string());
    }
    if args.duration_secs * 1000 < 2 * args.snapshot_interval_ms {
        return Err("a run needs room for two snapshots: --duration-secs too short for --snapshot-interval-ms".to_string());
    }
    Ok(())
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some(ceiling::WORKER_FLAG) {
        return match ceiling::run_worker(&raw[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: mesh worker: {err}");
                ExitCode::FAILURE
            }
        };
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
    let args = Args::parse();
    DURABLE.store(args.durable, std::sync::atomic::Ordering::Relaxed);
    if let Some(dir) = &args.checkpoint_dir {
        let _ = CHECKPOINT_DIR.set(dir.clone());
    }
    if let Err(err) = check(&args) {
        eprintln!("error: {err}");
        return ExitCode::from(2);
    }
    let bin_dir = match snapbank::local_bank::binary_dir() {
        Ok(dir) => dir,
        Err(err) => {
            eprintln!("error: cannot locate the snapbank binaries: {err}");
            return ExitCode::FAILURE;
        }
    };
    let began = Instant::now();
    let progress = RefCell::new(Progress::default());
    let system = actix_rt::System::new();
    let outcome = system.block_on(async {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(err) => return Some(Err(format!("cannot listen for SIGTERM: {err}"))),
            };
        // Dropping the losing branch's future drops any bank it holds, which kills its branches.
        let work = async {
            if let Some(count) = args.rollbacks {
                let interval = Duration::from_millis(args.snapshot_interval_ms);
                return rollbacks::measure(count.max(1), interval, &bin_dir).await;
            }
            match args.soak_secs {
                Some(secs) => soak(&args, secs, &bin_dir).await,
                None => {
                    for run in 1..=args.runs {
                        if args.runs > 1 {
                            eprintln!("bench: run {run} of {}", args.runs);
                        }
                        sweep(&args, &bin_dir, &progress).await?;
                        let mut progress = progress.borrow_mut();
                        let rows = std::mem::take(&mut progress.rows);
                        progress.finished.push(rows);
                    }
                    Ok(!progress.borrow().any_failure)
                }
            }
        };
        tokio::select! {
            result = work => Some(result),
            _ = tokio::signal::ctrl_c() => None,
            _ = terminate.recv() => None,
        }
    });
    let runs = progress.into_inner().all_runs();
    if args.soak_secs.is_none() && args.rollbacks.is_none() && !runs.is_empty() {
        let rows = if runs.len() == 1 {
            runs[0].clone()
        } else {
            median_rows(&runs)
        };
        print_table(&rows);
        if let Err(err) = write_sweep(&args.out_dir, &rows, &runs) {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    }
    eprintln!("bench: took {:.0} s", began.elapsed().as_secs_f64());
    match outcome {
        Some(Ok(true)) => ExitCode::SUCCESS,
        Some(Ok(false)) => {
            eprintln!("bench: some snapshots failed or branches died (see above)");
            ExitCode::FAILURE
        }
        Some(Err(err)) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("bench: interrupted; every branch it started has been stopped");
            ExitCode::from(130)
        }
    }
}
