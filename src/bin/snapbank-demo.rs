//! `snapbank-demo [branches] [total]` (run through `./demo`): starts a local bank on free
//! loopback ports with fast transfers, runs the controller against it with its reports on
//! stdout, and stops everything it started on Ctrl-C, SIGTERM or when the controller exits.
//!
//! `--chaos`: the branches keep their state in data directories, and every few seconds the demo
//! kills a random branch with SIGKILL and restarts it, saying so on stderr, so a newcomer sees
//! the total hold through crashes.
//!
//! With `--web` the controller also serves the live web view and prints its URL.

use std::process::ExitCode;

use clap::Parser;
use snapbank::local_bank::LocalBank;

/// Runs a whole snapbank bank on this machine and streams its snapshots.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// How many branches.
    #[arg(default_value_t = 4)]
    branches: usize,
    /// The money in the bank.
    #[arg(default_value_t = 4000)]
    total: u64,
    /// Milliseconds between snapshots.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Longest pause between a branch's transfers, in milliseconds: small, so that money is
    /// visibly in transit when a snapshot cuts.
    #[arg(long, default_value_t = 2)]
    max_interval_ms: u64,
    /// Stop after this many snapshots (default: until Ctrl-C).
    #[arg(long)]
    snapshots: Option<u32>,
    /// Print snapshots as JSON lines.
    #[arg(long)]
    json: bool,
    /// Durable branches (a data directory each), and every --chaos-every-ms a random branch is
    /// killed with SIGKILL and restarted 0.3 s later.
    #[arg(long)]
    chaos: bool,
    /// In-memory branches, and every --chaos-every-ms a random branch is killed with SIGKILL
    /// and restarted 0.3 s later without its state: the controller
    /// (`--on-branch-loss rollback`) rolls the whole bank back to its latest ok snapshot each
    /// time, and prints a line saying so.
    #[arg(long, conflicts_with = "chaos")]
    crash_rollback: bool,
    /// Milliseconds between two crashes with --chaos or --crash-rollback.
    #[arg(long, default_value_t = 3000)]
    chaos_every_ms: u64,
    /// Also serve the live web view of the bank (`controller --web`) on ADDR; `--web` alone
    /// uses 127.0.0.1:8080 (give 127.0.0.1:0 for any free port). The URL is printed.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8080")]
    web: Option<std::net::SocketAddr>,
}

/// The time of day, for the chaos lines.
fn now() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        since.subsec_millis()
    )
}

/// Kills a random branch every `every`, restarts it 0.3 s later (`how` says with what), and
/// says so; never returns.
async fn chaos(bank: &mut LocalBank, every: std::time::Duration, how: &str) {
    use rand::RngExt;
    let mut rng = rand::rng();
    loop {
        tokio::time::sleep(every).await;
        let victim = rng.random_range(0..bank.entries().len());
        let name = bank.entries()[victim].name.clone();
        bank.kill(victim);
        eprintln!("demo: chaos: {} killed {name} with SIGKILL", now());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        match bank.restart(victim, &[]) {
            Ok(()) => eprintln!("demo: chaos: {} restarted {name} {how}", now()),
            Err(err) => eprintln!("demo: chaos: cannot restart {name}: {err}"),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.branches < 2 {
        eprintln!(
            "error: a bank needs at least two branches, not {}",
            args.branches
        );
        return ExitCode::from(2);
    }
    let bin_dir = match snapbank::local_bank::binary_dir() {
        Ok(dir) => dir,
        Err(err) => {
            eprintln!("error: cannot locate the snapbank binaries: {err}");
            return ExitCode::FAILURE;
        }
    };
    let branch_args = vec![
        "--max-interval-ms".to_string(),
        args.max_interval_ms.to_string(),
    ];
    let started = if args.chaos {
        LocalBank::start_durable(&bin_dir.join("branch"), args.branches, &branch_args)
    } else {
        LocalBank::start(&bin_dir.join("branch"), args.branches, &branch_args)
    };
    let mut bank = match started {
        Ok(bank) => bank,
        Err(err) => {
            eprintln!("error: cannot start the branches: {err}");
            return ExitCode::FAILURE;
        }
    };
    bank.keep_dir();
    eprintln!(
        "demo: {} branches holding {} on loopback; branches file and logs in {}; Ctrl-C stops everything",
        args.branches,
        args.total,
        bank.dir().display()
    );
    let mut controller = tokio::process::Command::new(bin_dir.join("controller"));
    controller
        .arg(args.total.to_string())
        .arg(bank.branches_file())
        .args(["--interval-ms", &args.interval_ms.to_string()])
        .kill_on_drop(true);
    if let Some(count) = args.snapshots {
        controller.args(["--snapshots", &count.to_string()]);
    }
    if args.json {
        controller.args(["--format", "json"]);
    }
    if args.crash_rollback {
        controller.args(["--on-branch-loss", "rollback"]);
    }
    if let Some(addr) = args.web {
        // The controller prints `controller: web view at <URL>` once it listens.
        controller.args(["--web", &addr.to_string()]);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start a runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let chaos_every = (args.chaos || args.crash_rollback)
        .then(|| std::time::Duration::from_millis(args.chaos_every_ms.max(500)));
    let how = if args.crash_rollback {
        "empty (in memory, its state lost): the bank rolls back"
    } else {
        "from its data directory"
    };
    if chaos_every.is_some() {
        eprintln!(
            "demo: chaos: every {} ms a random branch is killed with SIGKILL and restarted 0.3 s later {how}; watch the totals",
            args.chaos_every_ms.max(500)
        );
    }
    let bank_ref = &mut bank;
    let code = runtime.block_on(async move {
        let mut child = match controller.spawn() {
            Ok(child) => child,
            Err(err) => {
                eprintln!("error: cannot start the controller: {err}");
                return ExitCode::FAILURE;
            }
        };
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(err) => {
                    eprintln!("error: cannot listen for SIGTERM: {err}");
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            status = child.wait() => match status {
                Ok(status) => ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)),
                Err(err) => {
                    eprintln!("error: waiting for the controller: {err}");
                    ExitCode::FAILURE
                }
            },
            _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
            _ = terminate.recv() => ExitCode::SUCCESS,
            _ = async {
                match chaos_every {
                    Some(every) => chaos(bank_ref, every, how).await,
                    None => std::future::pending().await,
                }
            } => ExitCode::SUCCESS,
        }
    });
    eprintln!("demo: stopping the bank");
    drop(bank);
    code
}
