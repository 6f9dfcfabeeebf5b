//! `snapbank-check`: checks every interleaving of a small bank of production branch nodes,
//! with cuts, crashes and restarts, and prints each property's result. Exits 1 if a property
//! fails (with the path that breaks it), 2 on bad arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use snapbank::check::scenario::Scenario;
use snapbank::check::{Bank, Bounds, report};
use stateright::{Checker, Model};

/// Checking clones a state for every transition, most of it small allocations: mimalloc makes
/// them about twice as cheap as the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Model-checks a bank of branch nodes: breadth-first over every interleaving within the bounds.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Branches in the bank (2 to 4; 2 and 3 finish quickly).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=4))]
    branches: u8,
    /// Each branch's initial balance.
    #[arg(long, default_value_t = 2)]
    balance: u64,
    /// Transfers (of 1) each branch may send.
    #[arg(long, default_value_t = 1)]
    transfers: u8,
    /// Snapshots the controller may start.
    #[arg(long, default_value_t = 1)]
    snapshots: u8,
    /// Connection cuts.
    #[arg(long, default_value_t = 1)]
    cuts: u8,
    /// Crashes of durable branches (each may be followed by a restart).
    #[arg(long, default_value_t = 0)]
    crashes: u8,
    /// Restarts without state (a new incarnation holding nothing).
    #[arg(long, default_value_t = 0)]
    wipes: u8,
    /// Rollbacks of the whole bank to its latest ok snapshot, in a new epoch (with --crashes,
    /// of durable branches, the one that may crash dying between the two phases too; not
    /// with --wipes)
    #[arg(long, default_value_t = 0)]
    rollbacks: u8,
    /// Instead of checking, serve stateright's explorer on this address (loopback only, e.g.
    /// 127.0.0.1:3000), to step through the states in a browser.
    #[arg(long, value_name = "ADDR")]
    explore: Option<std::net::SocketAddr>,
    /// Checker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Write each counterexample found to this directory as a `snapbank-sim` scenario
    /// (`<n>.topology` and `<n>.events`, n = 1, 2, ...), to replay and draw with
    /// `snapbank-sim <n>.topology <n>.events --svg <n>.svg`.
    #[arg(long, value_name = "DIR")]
    counterexamples: Option<PathBuf>,
    /// Write an example of each *sometimes* property (a snapshot with money in transit, one
    /// across a cut, one after a crash and restart) to this directory, as `--counterexamples`
    /// does: runs to step through and draw.
    #[arg(long, value_name = "DIR")]
    examples: Option<PathBuf>,
    /// Search depth-first instead of breadth-first: memory for the states seen only, not for
    /// a whole frontier of them, so bigger bounds fit (a counterexample is then not the
    /// shortest; it is still cut back to its first failing state).
    #[arg(long)]
    dfs: bool,
    /// Explore every interleaving of a calm bank too (no fault or snapshot start left to
    /// come), not only a persistent set of its steps: slower, for comparison.
    #[arg(long)]
    no_reduction: bool,
    /// Every 10 seconds, print the states explored so far to stderr.
    #[arg(long)]
    progress: bool,
    /// Stop after this many states (the result then says the check stopped before the end).
    #[arg(long)]
    max_states: Option<usize>,
}

/// Waits for `checker` to finish, printing its progress every 10 s to stderr if `progress`.
fn watch<C: Checker<Bank>>(checker: C, progress: bool, started: Instant) -> C {
    let mut last = Instant::now();
    while progress && !checker.is_done() {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if last.elapsed().as_secs() >= 10 {
            last = Instant::now();
            let failing: Vec<&str> = checker
                .model()
                .properties()
                .into_iter()
                .filter(|p| p.expectation.discovery_is_failure())
                .filter(|p| checker.discovery(p.name).is_some())
                .map(|p| p.name)
                .collect();
            eprintln!(
                "{:.0} s: {} unique states ({} visits), depth {}; failed so far: {}",
                started.elapsed().as_secs_f64(),
                checker.unique_state_count(),
                checker.state_count(),
                checker.max_depth(),
                if failing.is_empty() {
                    "none".to_string()
                } else {
                    failing.join(", ")
                }
            );
        }
    }
    checker.join()
}

/// Writes `scenario` as `<n>.topology` and `<n>.events` in `dir`; returns the two paths.
fn write_scenario(
    dir: &Path,
    n: usize,
    scenario: &Scenario,
) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let base = dir.join(n.to_string());
    let (topology, events) = (
        base.with_extension("topology"),
        base.with_extension("events"),
    );
    std::fs::write(&topology, scenario.topology_text())?;
    std::fs::write(&events, scenario.events_text())?;
    Ok((topology, events))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let args = Args::parse();
    let bounds = Bounds {
        branches: usize::from(args.branches),
        balance: args.balance,
        transfers: args.transfers,
        snapshots: args.snapshots,
        cuts: args.cuts,
        crashes: args.crashes,
        wipes: args.wipes,
        rollbacks: args.rollbacks,
    };
    if bounds.rollbacks > 0 && bounds.wipes > 0 {
        eprintln!(
            "error: --rollbacks is not checked with --wipes (a wiped branch's rollback is the in-memory one, checked without --crashes)"
        );
        return ExitCode::from(2);
    }
    if let Some(addr) = args.explore {
        if !addr.ip().is_loopback() {
            eprintln!("error: --explore {addr}: the explorer serves loopback addresses only");
            return ExitCode::from(2);
        }
        println!("explorer: http://{addr}/ (Ctrl-C to stop)");
        let _explorer = Bank::new(bounds).checker().serve(addr);
        loop {
            std::thread::park();
        }
    }
    let started = Instant::now();
    let mut bank = Bank::new(bounds);
    bank.reduce = !args.no_reduction;
    let mut builder = bank.checker().threads(args.threads.max(1));
    if let Some(max) = args.max_states {
        builder = builder.target_state_count(max);
    }
    let outcome = if args.dfs {
        let checker = watch(builder.spawn_dfs(), args.progress, started);
        report(&checker, started.elapsed())
    } else {
        let checker = watch(builder.spawn_bfs(), args.progress, started);
        report(&checker, started.elapsed())
    };
    print!("{}", outcome.text);
    let written = [
        (
            &args.counterexamples,
            &outcome.counterexamples,
            "counterexample",
        ),
        (&args.examples, &outcome.examples, "example"),
    ];
    for (dir, scenarios, what) in written {
        let Some(dir) = dir else { continue };
        for (index, (property, scenario)) in scenarios.iter().enumerate() {
            match write_scenario(dir, index + 1, scenario) {
                Ok((topology, events)) => println!(
                    "{what} of \"{property}\": snapbank-sim {} {}",
                    topology.display(),
                    events.display()
                ),
                Err(err) => {
                    eprintln!(
                        "error: cannot write {what} {} in {}: {err}",
                        index + 1,
                        dir.display()
                    );
                    return ExitCode::from(2);
                }
            }
        }
    }
    if outcome.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
