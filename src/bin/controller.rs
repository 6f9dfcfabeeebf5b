//! `controller <total> <branches-file>`: initialises a bank and prints its snapshots.
//!
//! Exit codes: 0 when every snapshot was complete and summed to the total, 1 otherwise (or when
//! the branches cannot be reached, another controller holds the bank's controller lease or took
//! it over, or `--web` cannot bind its address), 2 for bad input. With `--grade`: 0 when every
//! rule of the report card passed, 1 otherwise.
//!
//! Ctrl-C (SIGINT) and SIGTERM both stop it the same way: the reports finished so far are
//! printed, the snapshots still in flight are listed on stderr, and it exits with the code
//! above for the snapshots it reported.

use std::cell::Cell;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use snapbank::auth::Secret;
use snapbank::config::load_branches;
use snapbank::controller::checkpoint::dir::{CheckpointWriter, now_unix_ms};
use snapbank::controller::checkpoint::{self, Checkpoint};
use snapbank::controller::grade::ReportCard;
use snapbank::controller::rollback::RollbackDone;
use snapbank::controller::{
    BranchLoss, CompatConfig, CompatMode, ControllerConfig, ControllerError, Restore, RollbackSink,
    RollbackTo, RunSummary, SnapshotReport, run_compat_controller, run_controller,
};
use tokio_util::sync::CancellationToken;

/// The controller of a snapbank bank: splits TOTAL among the branches listed in
/// BRANCHES_FILE, then takes a Chandy-Lamport snapshot every --interval-ms and prints it.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The money the bank holds, split evenly (in integers) among the branches.
    total: u64,
    /// File of `<name> <ip> <port>` lines; blank lines and `#` comments are allowed.
    branches_file: PathBuf,
    /// Milliseconds between two snapshot starts (0: all at once, needs --snapshots).
    #[arg(long, default_value_t = 10_000)]
    interval_ms: u64,
    /// Stop after this many snapshots (default: run until Ctrl-C).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    snapshots: Option<u32>,
    /// Give up on a snapshot's missing records after this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    retrieve_timeout_ms: u64,
    /// Give up connecting to the branches after this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    connect_timeout_ms: u64,
    /// Output format of the snapshot reports.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Seed for choosing which branch starts each snapshot.
    #[arg(long)]
    seed: Option<u64>,
    /// File holding the bank's cluster secret (at least 16 bytes; trailing whitespace ignored).
    /// Without it a fresh random secret is made for the bank.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Attach to a running bank instead of initialising one: authenticate with --secret-file,
    /// skip InitBranch, and number snapshots after every id the branches have seen.
    #[arg(long)]
    attach: bool,
    /// With --attach: end the controller lease of the controller driving the bank now (the
    /// branches disconnect it and it stops) instead of being refused while it holds it.
    #[arg(long, requires = "attach")]
    take_over: bool,
    /// Largest frame accepted from a branch, in bytes (a record lists the transfers it found
    /// in transit, so this is larger than a branch's own limit).
    #[arg(long, default_value_t = snapbank::controller::DEFAULT_MAX_RECORD_BYTES)]
    max_frame_bytes: usize,
    /// A branch connection that has received nothing (not even an answer to a heartbeat probe)
    /// for this many milliseconds is declared broken and redialled.
    #[arg(long, default_value_t = snapbank::controller::DEFAULT_LINK_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(3..))]
    link_timeout_ms: u64,
    /// Serve a live web view of the bank and its snapshots (page, JSON API, event stream,
    /// Prometheus /metrics) on this address, e.g. 127.0.0.1:8080 (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    web: Option<std::net::SocketAddr>,
    /// How many recent snapshots the web view keeps.
    #[arg(long, default_value_t = snapbank::web::DEFAULT_KEEP, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    web_history: usize,
    /// Drive branches that speak only the exercise's original schema, with the connection
    /// pattern they expect: no handshake, no heartbeats, no wait_ms; each branch is asked for
    /// its record --retrieve-delay-ms after InitSnapshot, and again with capped backoff while
    /// its answer falls short, until --retrieve-timeout-ms.
    #[arg(long, value_enum, conflicts_with_all = ["secret_file", "attach"])]
    compat: Option<Compat>,
    /// With --compat: milliseconds between InitSnapshot and the first RetrieveSnapshot. A
    /// branch that answers nothing, another snapshot's record, a channel_state of the wrong
    /// length, or records that do not add up, is asked again (no tuning needed).
    #[arg(long, requires = "compat",
          default_value_t = snapbank::controller::compat::DEFAULT_RETRIEVE_DELAY.as_millis() as u64)]
    retrieve_delay_ms: u64,
    /// With --compat: grade the branches' implementation of the exercise instead of printing
    /// snapshots: probe each with bad frames, ask for every record from right after
    /// InitSnapshot and twice, then print one line per rule, pass or fail, with the evidence
    /// (--format json: one JSON object). Exit 0 when every rule passed, 1 otherwise.
    #[arg(long, requires = "compat", conflicts_with_all = ["web", "checkpoint_dir"])]
    grade: bool,
    /// Write every ok snapshot to this directory (created if missing) as a checkpoint file a
    /// bank can be restored from.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// How many checkpoints --checkpoint-dir keeps (the newest).
    #[arg(long, requires = "checkpoint_dir",
          default_value_t = snapbank::controller::checkpoint::dir::DEFAULT_KEEP,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    keep_checkpoints: usize,
    /// Initialise fresh branches from a checkpoint file, or from the newest checkpoint in a
    /// directory: each branch gets its recorded balance plus the money recorded in transit into
    /// it, and snapshot ids continue after the checkpoint's.
    #[arg(long, value_name = "FILE|DIR", conflicts_with = "attach")]
    restore: Option<PathBuf>,
    /// What to do when a branch loses its state (it comes back empty, or a durable branch's
    /// store is found to have lost a commit): wait for it as it is (the bank goes on without
    /// its money, every later snapshot is incomplete; a durable branch that lost a commit
    /// stops), or roll the whole bank back to its latest ok snapshot (the newest checkpoint) in
    /// a new epoch and trade on. A rollback prints one line.
    #[arg(long, value_enum, default_value_t = OnBranchLoss::Wait, conflicts_with = "compat")]
    on_branch_loss: OnBranchLoss,
    /// With --attach (and --take-over, if a controller drives the bank): first roll the running
    /// bank back to the checkpoint of snapshot ID in --checkpoint-dir, then drive it as usual.
    #[arg(long, value_name = "ID", requires_all = ["attach", "checkpoint_dir"])]
    rollback_to: Option<u32>,
}

/// What `--on-branch-loss` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnBranchLoss {
    /// Keep trying to reach the branch as it is.
    Wait,
    /// Roll the bank back to its latest ok snapshot.
    Rollback,
}

/// The connection pattern of `--compat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Compat {
    /// One connection per branch for every command.
    Persistent,
    /// A new connection for every command.
    PerCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// The assignment's format plus a verdict line.
    Text,
    /// One JSON object per snapshot, one per line.
    Json,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_micros()
        .init();
    let args = Args::parse();
    let branches = match load_branches(&args.branches_file) {
        Ok(branches) => branches,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let rollback_to = match (args.rollback_to, args.checkpoint_dir.as_deref()) {
        (Some(id), Some(dir)) => match load_rollback_to(dir, id, args.total, &branches) {
            Ok(to) => Some(to),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let restore = match args.restore.as_deref() {
        Some(path) => match load_restore(path, args.total, &branches) {
            Ok(restore) => Some(restore),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let checkpoints = match args.checkpoint_dir.clone() {
        Some(dir) => match std::fs::create_dir_all(&dir)
            .and_then(|()| CheckpointWriter::start(dir.clone(), args.keep_checkpoints))
        {
            Ok(writer) => Some(writer),
            Err(err) => {
                eprintln!(
                    "error: --checkpoint-dir {}: cannot use it: {err}",
                    dir.display()
                );
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let secret = match args.secret_file.as_deref().map(Secret::load).transpose() {
        Ok(secret) => secret,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    // The web view, when asked for: fed by the observer hook and every report.
    let web_view = args
        .web
        .map(|_| snapbank::web::WebView::new(&branches, args.total, args.web_history));
    if let (Some(view), Some(writer)) = (&web_view, &checkpoints) {
        view.track_checkpoints(writer.stats.clone());
    }
    let stop = CancellationToken::new();
    let config = ControllerConfig {
        secret,
        attach: args.attach,
        take_over: args.take_over,
        stop: Some(stop.clone()),
        interval: Duration::from_millis(args.interval_ms),
        snapshots: args.snapshots,
        retrieve_timeout: Duration::from_millis(args.retrieve_timeout_ms),
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        seed: args.seed,
        max_frame: args.max_frame_bytes,
        link_timeout: Duration::from_millis(args.link_timeout_ms),
        observer: web_view.clone().map(|view| Arc::new(view) as _),
        restore,
        rollback_to,
        on_branch_loss: match args.on_branch_loss {
            OnBranchLoss::Wait => BranchLoss::Wait,
            OnBranchLoss::Rollback => BranchLoss::Rollback,
        },
        on_rollback: Some(RollbackSink(Arc::new(move |done: &RollbackDone| {
            let line = match args.format {
                Format::Text => format!("{done}\n"),
                Format::Json => format!("{}\n", serde_json::json!({"rollback": done.json()})),
            };
            let mut stdout = std::io::stdout().lock();
            let _ = stdout
                .write_all(line.as_bytes())
                .and_then(|()| stdout.flush());
        }))),
        ..ControllerConfig::new(args.total, branches.clone())
    };
    let format = args.format;
    let grading = args.grade;
    let graded: Rc<std::cell::RefCell<Vec<SnapshotReport>>> = Rc::default();
    let grade_reports = graded.clone();
    let report_view = web_view.clone();
    let checkpoints = Rc::new(std::cell::RefCell::new(checkpoints));
    let checkpoint_writer = checkpoints.clone();
    let print = Box::new(move |report: &SnapshotReport| {
        if let Some(writer) = checkpoint_writer.borrow().as_ref()
            && let Some(checkpoint) = Checkpoint::of_report(report, &branches, now_unix_ms())
        {
            writer.submit(checkpoint);
        }
        if let Some(view) = &report_view {
            view.add_report(report);
        }
        if grading {
            grade_reports.borrow_mut().push(report.clone());
            return;
        }
        let text = match format {
            Format::Text => report.to_text(),
            Format::Json => report.to_json() + "\n",
        };
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (e.g. piped into `head`) must not kill the bank's controller.
        let _ = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush());
    });
    let compat = args.compat.map(|mode| CompatConfig {
        mode: match mode {
            Compat::Persistent => CompatMode::Persistent,
            Compat::PerCommand => CompatMode::PerCommand,
        },
        // Grading asks right after InitSnapshot: an answer before the record is finished shows.
        retrieve_delay: if args.grade {
            Duration::ZERO
        } else {
            Duration::from_millis(args.retrieve_delay_ms)
        },
        grade: args.grade,
    });
    let grade_mode = compat.as_ref().map(|compat| compat.mode);
    let names: Vec<String> = config.branches.iter().map(|b| b.name.clone()).collect();
    let total = args.total;
    let system = actix_rt::System::new();
    // Bind the web view before reaching the branches, so a bad address fails at once.
    let _web_server = match web_view.zip(args.web) {
        Some((view, addr)) => {
            match system.block_on(async move { snapbank::web::serve(view, addr) }) {
                Ok(server) => {
                    eprintln!("controller: web view at {}", server.url());
                    Some(server)
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    let stopped_by = Rc::new(Cell::new(None));
    let outcome = system.block_on(async move {
        stop_on_signals(stop, stopped_by.clone());
        let outcome = match compat {
            Some(compat) => run_compat_controller(config, compat, print).await,
            None => run_controller(config, print).await,
        };
        if let (Some(signal), Ok(summary)) = (stopped_by.get(), &outcome) {
            report_unfinished(signal, summary);
        }
        outcome
    });
    // The checkpoints still queued are written before the controller exits.
    if let Some(writer) = checkpoints.borrow_mut().take() {
        writer.finish();
    }
    if let (true, Some(mode), Ok(summary)) = (grading, grade_mode, &outcome) {
        let card = ReportCard::grade(&names, total, mode, &graded.borrow(), &summary.probes);
        let text = match format {
            Format::Text => card.to_text(),
            Format::Json => card.to_json() + "\n",
        };
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush());
        return if card.all_pass() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match outcome {
        Ok(summary) if summary.all_ok() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(
            err @ (ControllerError::TotalTooLarge(_)
            | ControllerError::UnboundedBurst
            | ControllerError::NoSnapshots
            | ControllerError::AttachNeedsSecret
            | ControllerError::BadRestore { .. }
            | ControllerError::RestoreAttached
            | ControllerError::CompatWithSecret),
        ) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The restore `--restore PATH` asks for, for a bank of `total` over `branches`: the
/// checkpoint at PATH, or the newest in the directory PATH, read and checked. The error is one
/// line naming the file and the problem.
fn load_restore(
    path: &std::path::Path,
    total: u64,
    branches: &[snapbank::config::BranchEntry],
) -> Result<Restore, String> {
    let file = if path.is_dir() {
        match checkpoint::dir::newest(path) {
            Ok(Some(file)) => file,
            Ok(None) => {
                return Err(format!(
                    "--restore {}: the directory holds no checkpoint",
                    path.display()
                ));
            }
            Err(err) => return Err(format!("--restore {}: {err}", path.display())),
        }
    } else {
        path.to_path_buf()
    };
    let problem = |what: String| format!("checkpoint {}: {what}", file.display());
    let bytes = std::fs::read(&file).map_err(|err| problem(err.to_string()))?;
    let checkpoint = Checkpoint::decode(&bytes).map_err(|err| problem(err.to_string()))?;
    let balances = checkpoint
        .restore_balances(total, branches)
        .map_err(|err| problem(err.to_string()))?;
    Ok(Restore {
        balances,
        after_id: checkpoint.snapshot_id,
    })
}

/// The rollback `--rollback-to ID` asks for: the checkpoint of snapshot `id` in `dir`, read and
/// checked against the bank of `total` over `branches`. The error is one line naming the
/// problem (and the file, once one is found).
fn load_rollback_to(
    dir: &std::path::Path,
    id: u32,
    total: u64,
    branches: &[snapbank::config::BranchEntry],
) -> Result<RollbackTo, String> {
    let files = checkpoint::dir::list(dir)
        .map_err(|err| format!("--checkpoint-dir {}: {err}", dir.display()))?;
    for file in files {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        let Ok(checkpoint) = Checkpoint::decode(&bytes) else {
            continue;
        };
        if checkpoint.snapshot_id != id {
            continue;
        }
        let balances = checkpoint
            .restore_balances(total, branches)
            .map_err(|err| format!("checkpoint {}: {err}", file.display()))?;
        return Ok(RollbackTo {
            checkpoint: id,
            balances,
        });
    }
    Err(format!(
        "--rollback-to {id}: {} holds no readable checkpoint of snapshot {id}",
        dir.display()
    ))
}

/// Cancels `stop` on the first SIGINT or SIGTERM, noting which in `stopped_by`. The handlers
/// are installed before this returns, so a signal from then on never kills the process.
fn stop_on_signals(stop: CancellationToken, stopped_by: Rc<Cell<Option<&'static str>>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    let (mut terminate, mut interrupt) = match (terminate, interrupt) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("error: cannot handle SIGINT and SIGTERM: {err}");
            std::process::exit(1);
        }
    };
    actix_rt::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        log::info!("{name}: stopping");
        stopped_by.set(Some(name));
        stop.cancel();
        // Stopping takes no time; a second signal is someone who will not wait.
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("error: a second signal: exiting at once");
        std::process::exit(1);
    });
}

/// After a stop by `signal`: what was still in flight, on stderr, one snapshot a line.
fn report_unfinished(signal: &str, summary: &RunSummary) {
    let mut stderr = std::io::stderr().lock();
    let count = summary.unfinished.len();
    let _ = writeln!(
        stderr,
        "controller: stopped by {signal} after {} report(s), with {count} snapshot(s) in flight{}",
        summary.snapshots,
        if count == 0 { "" } else { ":" }
    );
    for snapshot in &summary.unfinished {
        let _ = writeln!(stderr, "controller:   {snapshot}");
    }
}
