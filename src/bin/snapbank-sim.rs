//! `snapbank-sim <topology> <events>`: replays a scenario on the deterministic simulator (one
//! `BranchNode` per branch) and prints the resulting snapshots. See `snapbank::sim` for the
//! delivery rule, crashes and pauses, and `snapbank::sim::topology` for the file formats.
//!
//! Exit codes: 0 on success, 1 when a snapshot can never complete (or, for a step script, a
//! property fails), 2 for bad input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use snapbank::check::scenario::{Scenario, is_step_script};
use snapbank::sim::{Delays, RunOptions, SimError, run_scenario};

/// Replays a snapbank scenario (topology + event script) on a simulated network with
/// deterministic delays and prints each snapshot.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Topology file: N, then N `<name> <balance>` lines, then `<src> <dst>` link lines.
    topology: PathBuf,
    /// Event script: first optional settings, `durable <name>` or `durable all` (the branch has
    /// a store, commits take a tick, it can crash) and `grace <ticks>` (how long snapshots wait
    /// for a peer that is down, default 20); then events: `send <src> <dst> <amount>`,
    /// `snapshot <name>`, `tick [n]`, `cut <a> <b>` (their connection fails and comes back at
    /// once), `crash <name>` (a durable branch dies, losing what it had not committed),
    /// `restart <name>` (it starts again from its store), `pause <name> <ticks>` (it takes no
    /// input for that long: a slow branch). A script whose first line is `steps` is a step
    /// script, as `snapbank-check` prints its counterexamples: one model action per line
    /// (`deliver`, `connect`, `fire`, `commit`, ...; see `snapbank::check::scenario`), replayed
    /// exactly, with every property checked after every step.
    events: PathBuf,
    /// Draw each message's delay uniformly from 1..=5 with this seed.
    #[arg(long, default_value_t = 0, conflicts_with = "delays")]
    seed: u64,
    /// Read delays from this file instead: one integer per line, used in the order transfers and
    /// markers are put on the wire (resends included).
    #[arg(long)]
    delays: Option<PathBuf>,
    /// Print every send and delivery with its tick, and every cut, crash, restart and pause.
    #[arg(long)]
    trace: bool,
    /// After each snapshot, print the consistent-cut checker's verdict.
    #[arg(long)]
    check: bool,
    /// Also draw the scenario's space-time diagram (branches as lines, messages as arrows,
    /// each snapshot's cut) to this SVG file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

// The help of `events` states the default grace period.
const _: () = assert!(snapbank::sim::DEFAULT_GRACE_TICKS == 20);

fn read(path: &Path) -> Result<String, SimError> {
    std::fs::read_to_string(path).map_err(|err| SimError::InFile {
        file: path.display().to_string(),
        reason: format!("cannot read file: {err}"),
    })
}

/// The run's delays, made afresh for each run (the diagram replays the same scenario).
fn delays(args: &Args) -> Result<Delays, SimError> {
    match &args.delays {
        Some(path) => Delays::parse_list(&path.display().to_string(), &read(path)?),
        None => Ok(Delays::seeded(args.seed)),
    }
}

/// Draws the space-time diagram to `--svg`'s file.
fn draw(args: &Args, file: &Path) -> Result<(), SimError> {
    let svg = snapbank::sim::svg::draw_scenario(
        &args.topology.display().to_string(),
        &read(&args.topology)?,
        &args.events.display().to_string(),
        &read(&args.events)?,
        delays(args)?,
    )?;
    std::fs::write(file, svg).map_err(|err| SimError::InFile {
        file: file.display().to_string(),
        reason: format!("cannot write the diagram: {err}"),
    })
}

/// Replays a step script (a model checker's counterexample): every property after every
/// step. Returns the output and whether a property failed.
fn replay(args: &Args, events: &str) -> Result<(String, bool), SimError> {
    let events_file = args.events.display().to_string();
    if let Some(path) = &args.delays {
        return Err(SimError::InFile {
            file: path.display().to_string(),
            reason: format!(
                "{events_file} is a step script: it states every delivery, so delays do not apply"
            ),
        });
    }
    let topology_file = args.topology.display().to_string();
    let scenario = Scenario::parse(&topology_file, &read(&args.topology)?, &events_file, events)?;
    let replay = scenario.replay(&events_file)?;
    if let Some(file) = &args.svg {
        let title = format!("{topology_file} · {events_file}");
        let svg = snapbank::sim::svg::draw(
            &scenario.bank.names,
            &replay.timeline,
            replay.snapshots,
            &title,
        );
        std::fs::write(file, svg).map_err(|err| SimError::InFile {
            file: file.display().to_string(),
            reason: format!("cannot write the diagram: {err}"),
        })?;
    }
    let mut output = replay.lines.join("\n");
    output.push('\n');
    Ok((output, !replay.failures.is_empty()))
}

fn run(args: &Args) -> Result<String, SimError> {
    let events = read(&args.events)?;
    if is_step_script(&events) {
        let (output, failed) = replay(args, &events)?;
        if failed {
            print!("{output}");
            return Err(SimError::Run(
                "a property fails on this run (see above)".to_string(),
            ));
        }
        return Ok(output);
    }
    let delays = delays(args)?;
    let output = run_scenario(
        &args.topology.display().to_string(),
        &read(&args.topology)?,
        &args.events.display().to_string(),
        &read(&args.events)?,
        delays,
        &RunOptions {
            trace: args.trace,
            check: args.check,
        },
    )?;
    if let Some(file) = &args.svg {
        draw(args, file)?;
    }
    Ok(output)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(err @ SimError::Run(_)) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}
