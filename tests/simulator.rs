//! The deterministic simulator: shipped scenarios replay to their expected output, the
//! `snapbank-sim` binary reports bad input by line, and randomized scenarios (proptest) always
//! produce snapshots the consistent-cut checker proves, while the checker rejects every
//! corruption of them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::RunLimited;

use proptest::prelude::*;
use snapbank::core::{Audit, SnapshotId};
use snapbank::sim::{
    Delays, Event, RunOptions, Script, Settings, Simulator, Topology, run_scenario,
};

const SIM: &str = env!("CARGO_BIN_EXE_snapbank-sim");

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// A scenario's delays: `<name>.delays` if present, else `--seed N` from `<name>.args`.
fn delays_of(dir: &Path, name: &str) -> Delays {
    let list = dir.join(format!("{name}.delays"));
    if list.exists() {
        return Delays::parse_list(&list.display().to_string(), &read(&list)).unwrap();
    }
    let args = read(&dir.join(format!("{name}.args")));
    let seed = args
        .trim()
        .strip_prefix("--seed ")
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| panic!("{name}.args: expected `--seed N`, found {args:?}"));
    Delays::seeded(seed)
}

#[test]
fn shipped_scenarios_replay_to_their_expected_output_and_pass_the_checker() {
    let dir = scenarios_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.unwrap().path();
            (path.extension()? == "topo").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    assert!(names.len() >= 4, "scenarios found: {names:?}");
    for name in &names {
        let topology = dir.join(format!("{name}.topo"));
        let events = dir.join(format!("{name}.events"));
        let run = |options: &RunOptions| {
            run_scenario(
                &topology.display().to_string(),
                &read(&topology),
                &events.display().to_string(),
                &read(&events),
                delays_of(&dir, name),
                options,
            )
            .unwrap_or_else(|err| panic!("{name}: {err}"))
        };
        let output = run(&RunOptions::default());
        assert_eq!(
            output,
            read(&dir.join(format!("{name}.expected"))),
            "{name}"
        );
        let checked = run(&RunOptions {
            check: true,
            trace: false,
        });
        let verdicts: Vec<&str> = checked
            .lines()
            .filter(|l| l.starts_with("check: "))
            .collect();
        assert!(!verdicts.is_empty(), "{name}");
        assert!(
            verdicts
                .iter()
                .all(|v| v.starts_with("check: ok (consistent cut")),
            "{name}: {verdicts:?}"
        );
    }
}

/// The scenario in `fifo_marker` worked out by hand: a's marker waits behind its slow transfer,
/// b's transfer to a arrives while a records that channel.
#[test]
fn the_binary_replays_a_scenario_with_a_delays_file_and_traces_it() {
    let dir = scenarios_dir();
    let output = Command::new(SIM)
        .arg(dir.join("fifo_marker.topo"))
        .arg(dir.join("fifo_marker.events"))
        .arg("--delays")
        .arg(dir.join("fifo_marker.delays"))
        .arg("--trace")
        .run_limited();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout,
        "tick 0: send a -> b transfer #1 (10), due at tick 2\n\
         tick 0: send a -> b marker 0, due at tick 1\n\
         tick 1: send b -> a transfer #1 (5), due at tick 2\n\
         tick 2: deliver a -> b transfer #1 (10)\n\
         tick 2: deliver b -> a transfer #1 (5)\n\
         tick 3: deliver a -> b marker 0\n\
         tick 3: send b -> a marker 0, due at tick 4\n\
         tick 4: deliver b -> a marker 0\n\
         snapshot 0\n\
         a 90\n\
         b 55\n\
         b a token(5)\n"
    );
}

#[test]
fn bad_scenarios_are_errors_naming_the_line() {
    let dir = std::env::temp_dir().join(format!("snapbank-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topology = dir.join("t.topo");
    std::fs::write(&topology, "2\na 10\nb 10\na b\n").unwrap();
    let cases = [
        ("send b a 1\n", "e.events:1: there is no link b -> a"),
        (
            "tick\nsend a b 11\n",
            "e.events:2: a has 10, cannot send 11",
        ),
        ("snapshot z\n", "e.events:1: unknown branch \"z\""),
        (
            "tick\n\nfly a\n",
            "e.events:3: expected `send <src> <dst> <amount>`",
        ),
        (
            "tick\ncrash a\n",
            "e.events:2: a is not durable: a crash would lose its money",
        ),
        (
            "durable a\ncrash a\ncrash a\n",
            "e.events:3: a is already down",
        ),
        ("durable b\nrestart b\n", "e.events:2: b is not down"),
    ];
    for (events, expected) in cases {
        let path = dir.join("e.events");
        std::fs::write(&path, events).unwrap();
        let output = Command::new(SIM).arg(&topology).arg(&path).run_limited();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{events:?}: {stderr}");
        assert!(stderr.contains(expected), "{events:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1);
    }
    // Running out of listed delays is named too.
    std::fs::write(dir.join("e.events"), "send a b 1\nsnapshot a\n").unwrap();
    std::fs::write(dir.join("d"), "1\n").unwrap();
    let output = Command::new(SIM)
        .arg(&topology)
        .arg(dir.join("e.events"))
        .arg("--delays")
        .arg(dir.join("d"))
        .run_limited();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("e.events:2: the delays list has 1 entries; message #2 needs another"),
        "{stderr}"
    );
    // b can never record: no link reaches it from... it has no way to send a marker back to a.
    std::fs::write(dir.join("e.events"), "snapshot b\n").unwrap();
    let output = Command::new(SIM)
        .arg(&topology)
        .arg(dir.join("e.events"))
        .run_limited();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("snapshot 0 can never complete"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A randomly generated scenario step, resolved against the topology when applied.
#[derive(Debug, Clone)]
enum Op {
    /// `src % n` sends `1 + amount % 25` on its `link`-th outgoing link (if it has the money
    /// and the channel is live).
    Send {
        src: usize,
        link: usize,
        amount: u64,
    },
    /// Branch `b % n` starts a snapshot (if it is up and not paused).
    Snapshot(usize),
    /// Advance 1-3 ticks.
    Tick(u64),
    /// Cut the connection of link `l % links`: what is in flight on it is lost and resent.
    Cut(usize),
    /// Branch `b % n` crashes, if it is durable and up.
    Crash(usize),
    /// Branch `b % n` restarts, if it is down.
    Restart(usize),
    /// Branch `b % n` pauses for 1-4 ticks, if it is up and not paused.
    Pause(usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..8usize, 0..8usize, 0..100u64).prop_map(|(src, link, amount)| Op::Send { src, link, amount }),
        1 => (0..8usize).prop_map(Op::Snapshot),
        3 => (1..=3u64).prop_map(Op::Tick),
        1 => (0..32usize).prop_map(Op::Cut),
    ]
}

/// The steps of the crash search: those of [`op`], and crashes, restarts and pauses.
fn crash_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..8usize, 0..8usize, 0..100u64).prop_map(|(src, link, amount)| Op::Send { src, link, amount }),
        1 => (0..8usize).prop_map(Op::Snapshot),
        3 => (1..=3u64).prop_map(Op::Tick),
        1 => (0..32usize).prop_map(Op::Cut),
        1 => (0..8usize).prop_map(Op::Crash),
        1 => (0..8usize).prop_map(Op::Restart),
        1 => (0..8usize, 1..=4u64).prop_map(|(b, ticks)| Op::Pause(b, ticks)),
    ]
}

/// A strongly connected topology (a one-way ring plus random chords), a script with at least one
/// snapshot, a delay seed, which branches are durable and the grace period.
#[derive(Debug, Clone)]
struct Scenario {
    balances: Vec<u64>,
    chords: Vec<(usize, usize)>,
    ops: Vec<Op>,
    snapshot_at: (usize, usize),
    seed: u64,
    durable: Vec<bool>,
    grace_ticks: u64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (2..=5usize)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec(0..80u64, n),
                proptest::collection::vec((0..n, 0..n), 0..10),
                proptest::collection::vec(op(), 0..40),
                (0..n, 0..41usize),
                any::<u64>(),
            )
        })
        .prop_map(|(balances, chords, ops, snapshot_at, seed)| Scenario {
            durable: vec![false; balances.len()],
            grace_ticks: snapbank::sim::DEFAULT_GRACE_TICKS,
            balances,
            chords,
            ops,
            snapshot_at,
            seed,
        })
}

/// Scenarios of the crash search: some branches durable (crashed and restarted at random),
/// grace periods of 1-6 ticks so that some crashes outlast them.
fn crash_scenario() -> impl Strategy<Value = Scenario> {
    (2..=5usize)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec(0..80u64, n),
                proptest::collection::vec((0..n, 0..n), 0..10),
                proptest::collection::vec(crash_op(), 0..40),
                (0..n, 0..41usize),
                any::<u64>(),
                proptest::collection::vec(proptest::bool::weighted(0.75), n),
                1..=6u64,
            )
        })
        .prop_map(
            |(balances, chords, ops, snapshot_at, seed, durable, grace_ticks)| Scenario {
                balances,
                chords,
                ops,
                snapshot_at,
                seed,
                durable,
                grace_ticks,
            },
        )
}

impl Scenario {
    fn topology(&self) -> Topology {
        let n = self.balances.len();
        let mut links: Vec<(usize, usize)> = (0..n).map(|i| (i, (i + 1) % n)).collect();
        for &(src, dst) in &self.chords {
            if src != dst && !links.contains(&(src, dst)) {
                links.push((src, dst));
            }
        }
        Topology {
            names: (0..n).map(|i| format!("b{i}")).collect(),
            balances: self.balances.clone(),
            links,
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            durable: self.durable.clone(),
            grace_ticks: self.grace_ticks,
        }
    }

    /// Runs the scenario; returns the simulator and the script actually applied (steps that
    /// cannot apply, such as sends a branch cannot afford, are left out), as script text. Every
    /// branch that is down at the end is restarted before the simulator finishes. Any error of
    /// the simulator (a node that halts or refuses a frame, a failed commit) fails the test with
    /// the scenario.
    fn run(&self) -> (Simulator, String) {
        let topology = self.topology();
        let n = topology.names.len();
        let mut ops = self.ops.clone();
        let position = self.snapshot_at.1.min(ops.len());
        ops.insert(position, Op::Snapshot(self.snapshot_at.0));
        let mut sim =
            Simulator::with_settings(topology.clone(), Delays::seeded(self.seed), self.settings())
                .unwrap_or_else(|err| panic!("{err}\n{}", self.describe("")));
        let mut script = self.settings().to_lines(&topology);
        let mut events = Vec::new();
        for op in ops {
            let event = match op {
                Op::Send { src, link, amount } => {
                    let src = src % n;
                    let outgoing: Vec<usize> = topology
                        .links
                        .iter()
                        .filter(|(s, _)| *s == src)
                        .map(|&(_, d)| d)
                        .collect();
                    let dst = outgoing[link % outgoing.len()];
                    let amount = 1 + amount % 25;
                    if amount > sim.balance(src)
                        || sim.is_paused(src)
                        || !sim.channel_is_live(src, dst)
                    {
                        continue;
                    }
                    Event::Send { src, dst, amount }
                }
                Op::Snapshot(branch) if sim.is_up(branch % n) && !sim.is_paused(branch % n) => {
                    Event::Snapshot { branch: branch % n }
                }
                Op::Tick(ticks) => Event::Tick(ticks),
                Op::Cut(link) => {
                    let (src, dst) = topology.links[link % topology.links.len()];
                    if !sim.connection_is_up(src, dst) {
                        continue;
                    }
                    Event::Cut { src, dst }
                }
                Op::Crash(branch) if sim.is_durable(branch % n) && sim.is_up(branch % n) => {
                    Event::Crash { branch: branch % n }
                }
                Op::Restart(branch) if !sim.is_up(branch % n) => {
                    Event::Restart { branch: branch % n }
                }
                Op::Pause(branch, ticks) if sim.is_up(branch % n) && !sim.is_paused(branch % n) => {
                    Event::Pause {
                        branch: branch % n,
                        ticks,
                    }
                }
                Op::Snapshot(_) | Op::Crash(_) | Op::Restart(_) | Op::Pause(..) => continue,
            };
            events.push(event);
            script.push_str(&event.to_line(&topology));
            script.push('\n');
            apply(&mut sim, event)
                .unwrap_or_else(|err| panic!("{err}\n{}", self.describe(&script)));
        }
        let down: Vec<usize> = (0..n).filter(|&b| !sim.is_up(b)).collect();
        for branch in down {
            let event = Event::Restart { branch };
            script.push_str(&event.to_line(&topology));
            script.push('\n');
            apply(&mut sim, event)
                .unwrap_or_else(|err| panic!("{err}\n{}", self.describe(&script)));
        }
        sim.finish()
            .unwrap_or_else(|err| panic!("{err}\n{}", self.describe(&script)));
        (sim, script)
    }

    /// The scenario in the files' formats, for a person to replay with `snapbank-sim`.
    fn describe(&self, script: &str) -> String {
        format!(
            "--- topology ---\n{}--- events ---\n{script}--- replay with: snapbank-sim TOPO EVENTS --seed {} ---",
            self.topology().to_text(),
            self.seed
        )
    }
}

/// Applies one event to the simulator.
fn apply(sim: &mut Simulator, event: Event) -> Result<(), String> {
    match event {
        Event::Send { src, dst, amount } => sim.send(src, dst, amount),
        Event::Snapshot { branch } => sim.start_snapshot(branch).map(|_| ()),
        Event::Tick(ticks) => (0..ticks).try_for_each(|_| sim.step()),
        Event::Cut { src, dst } => sim.cut(src, dst),
        Event::Crash { branch } => sim.crash(branch),
        Event::Restart { branch } => sim.restart(branch),
        Event::Pause { branch, ticks } => sim.pause(branch, ticks),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn every_simulated_snapshot_is_a_proven_consistent_cut(scenario in scenario()) {
        let (sim, script) = scenario.run();
        prop_assert!(sim.snapshot_count() >= 1);
        for id in 0..sim.snapshot_count() as SnapshotId {
            let evidence = sim.evidence(id).expect("finish() completes every snapshot");
            let audit = Audit::check(&evidence);
            prop_assert!(
                audit.is_proven(),
                "snapshot {id} failed the check: {:?}\n{}\n{}",
                audit,
                sim.report(id),
                scenario.describe(&script)
            );
        }
    }

    #[test]
    fn the_checker_rejects_every_corrupted_record(scenario in scenario(), pick in any::<usize>(), how in 0..5u8) {
        let (sim, script) = scenario.run();
        let mut evidence = sim.evidence(0).expect("snapshot 0 completes");
        let channel = pick % evidence.channels.len();
        let target = &mut evidence.channels[channel];
        let counters = target.counters.as_mut().unwrap();
        match (how, counters.in_transit.first().copied()) {
            // A transfer counted twice (its amount lands in the sum too).
            (0, Some(first)) => {
                counters.in_transit.insert(0, first);
                target.recorded_sum += first.1;
            }
            // A channel closed early: the last transfer in transit is lost from the record.
            (1, Some(_)) => {
                let (_, amount) = counters.in_transit.pop().unwrap();
                target.recorded_sum -= amount;
            }
            // Two in-transit transfers swapped (same sum, wrong order) when there are two
            // different ones; else a reported sum that disagrees with the list.
            (2, _) if counters.in_transit.len() >= 2 && counters.in_transit[0] != counters.in_transit[1] => {
                counters.in_transit.swap(0, 1);
            }
            (2, _) => target.recorded_sum += 1,
            // Two amounts in transit changed while keeping their sum: only the digest sees it.
            (3, _) if counters.in_transit.len() >= 2 && counters.in_transit[0].1 >= 2 => {
                counters.in_transit[0].1 -= 1;
                counters.in_transit[1].1 += 1;
            }
            // A receipt from the future: the receiver counts one more transfer than was sent
            // before the sender's cut, and the balance follows so the sum still holds.
            _ => {
                counters.received.count = counters.sent.count + 1;
                counters.received.amount = counters.sent.amount + 1;
            }
        }
        let audit = Audit::check(&evidence);
        prop_assert!(
            !audit.is_proven(),
            "corruption {how} of channel {channel} went unnoticed\n{}",
            scenario.describe(&script)
        );
    }
}

/// A cut while a snapshot's marker and transfers are in flight: they are lost and resent, and
/// the snapshot is still a proven consistent cut with every unit accounted for. The branches
/// are durable, so a receiver's `Resume` states only what its store holds (a commit takes a
/// tick): frames it had delivered since its last commit arrive again and are dropped by
/// position. Over a range of delay seeds, some runs really do drop duplicates.
#[test]
fn a_cut_link_resends_what_was_lost_and_the_snapshot_stays_consistent() {
    let topology = Topology::parse("t", "2\na 100\nb 100\na b\nb a\n").unwrap();
    let events = "durable all\nsend a b 10\ntick\nsend a b 7\nsnapshot a\nsend a b 5\ntick\ncut a b\ntick 2\ncut a b\nsend b a 3\n";
    let script = Script::parse("e", events, &topology).unwrap();
    let mut duplicates = 0;
    for seed in 0..64 {
        let mut sim = Simulator::with_settings(
            topology.clone(),
            Delays::seeded(seed),
            script.settings.clone(),
        )
        .unwrap();
        sim.enable_trace();
        sim.run_script("e", &script).unwrap();
        sim.finish().unwrap();
        assert_eq!(sim.cut_count(), 2);
        let audit = Audit::check(&sim.evidence(0).unwrap());
        assert!(
            audit.is_proven(),
            "seed {seed}: {audit:?}\n{}",
            sim.trace().join("\n")
        );
        sim.settle().unwrap();
        assert_eq!(sim.balance(0) + sim.balance(1), 200, "seed {seed}");
        duplicates += sim.duplicates_dropped();
    }
    assert!(
        duplicates > 0,
        "no seed resent a frame the receiver already had"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Under random cuts, every frame is still delivered exactly once: all the money sent
    /// arrives, nothing lost and nothing twice.
    #[test]
    fn cuts_lose_and_duplicate_nothing(scenario in scenario()) {
        let (mut sim, _script) = scenario.run();
        sim.settle().unwrap();
        let total: u64 = (0..scenario.balances.len()).map(|b| sim.balance(b)).sum();
        prop_assert_eq!(total, scenario.balances.iter().sum::<u64>());
    }
}

/// What the crash search saw, over all its cases: so that it is known to have exercised what it
/// checks.
#[derive(Debug, Default)]
struct CrashSearchTally {
    cases: usize,
    /// Cases with at least one crash.
    cases_with_crash: usize,
    /// Snapshots proven consistent in cases with a crash.
    proven_after_crash: usize,
    /// Snapshots some branch's record of which was cut short.
    cut_short: usize,
    /// Snapshots lost with their initiator's crash (no record anywhere).
    lost: usize,
    duplicates: usize,
}

/// The crash search: random scenarios of durable and in-memory branches with random cuts,
/// crashes, restarts and pauses. In every case:
/// - every snapshot is either proven a consistent cut by the audit or incomplete (a record cut
///   short by a grace period, or the snapshot lost with its initiator's crash): never wrong;
/// - exactly once: after settling, on every link the receiver's counters (count, amount, digest
///   of every transfer in order) equal the sender's;
/// - no balance ever goes negative and no node refuses anything: the simulator surfaces any
///   node error, halt or failed commit, and the case fails on it;
/// - after settling, the balances add up to the bank's total.
#[test]
fn under_crashes_restarts_pauses_and_cuts_snapshots_are_never_wrong_and_transfers_arrive_exactly_once()
 {
    use proptest::test_runner::{Config, TestRunner};
    let tally = std::cell::RefCell::new(CrashSearchTally::default());
    let mut runner = TestRunner::new(Config {
        cases: 4000,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&crash_scenario(), |scenario| {
        let (mut sim, script) = scenario.run();
        let mut tally = tally.borrow_mut();
        tally.cases += 1;
        tally.cases_with_crash += usize::from(sim.crash_count() > 0);
        tally.duplicates += sim.duplicates_dropped();
        for id in 0..sim.snapshot_count() as SnapshotId {
            match sim.evidence(id) {
                Some(evidence) => {
                    let audit = Audit::check(&evidence);
                    prop_assert!(
                        audit.is_proven(),
                        "snapshot {id} failed the check: {:?}\n{}\n{}",
                        audit,
                        sim.report(id),
                        scenario.describe(&script)
                    );
                    if sim.crash_count() > 0 {
                        tally.proven_after_crash += 1;
                    }
                }
                None => {
                    let report = sim.report(id);
                    let lost = report.lines().skip(1).all(|line| line.ends_with(" unrecorded"));
                    if lost {
                        tally.lost += 1;
                    } else {
                        prop_assert!(
                            sim.is_complete(id) && report.contains("cut short"),
                            "snapshot {id} incomplete, but neither cut short nor lost\n{report}\n{}",
                            scenario.describe(&script)
                        );
                        tally.cut_short += 1;
                    }
                }
            }
        }
        sim.settle()
            .unwrap_or_else(|err| panic!("{err}\n{}", scenario.describe(&script)));
        let violations = sim.exactly_once_violations();
        prop_assert!(
            violations.is_empty(),
            "not exactly once: {violations:?}\n{}",
            scenario.describe(&script)
        );
        let total: u64 = (0..scenario.balances.len()).map(|b| sim.balance(b)).sum();
        prop_assert_eq!(
            total,
            scenario.balances.iter().sum::<u64>(),
            "{}",
            scenario.describe(&script)
        );
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let tally = tally.into_inner();
    assert!(
        tally.cases_with_crash > tally.cases / 3
            && tally.proven_after_crash > tally.cases / 4
            && tally.cut_short > 0
            && tally.lost > 0
            && tally.duplicates > 0,
        "the search did not exercise what it checks: {tally:?}"
    );
}

/// A crash longer than the grace period: its peers stop waiting for its marker, so their records
/// are cut short (reported so, and not proven: incomplete), while the crashed branch, back from
/// its store, finishes its own record; every unit is still accounted for.
#[test]
fn a_crash_longer_than_the_grace_period_cuts_the_peers_records_short() {
    let dir = scenarios_dir();
    let topology = read(&dir.join("crash_restart.topo"));
    let events = "durable all\ngrace 4\nsend a b 10\ntick 3\nsnapshot a\nsend b a 7\ntick\ncrash c\ntick 8\nrestart c\ntick 3\n";
    let output = run_scenario(
        "t",
        &topology,
        "e",
        events,
        Delays::seeded(2),
        &RunOptions {
            check: true,
            trace: false,
        },
    )
    .unwrap();
    assert_eq!(
        output,
        "snapshot 0\n\
         a 90 (cut short: no marker from c)\n\
         b 103 (cut short: no marker from c)\n\
         c 100\n\
         b a token(7)\n\
         check: incomplete\n"
    );
    // The same crash within the grace period: nobody stops waiting.
    let short = events.replace("tick 8", "tick 3");
    let output = run_scenario(
        "t",
        &topology,
        "e",
        &short,
        Delays::seeded(2),
        &RunOptions {
            check: true,
            trace: false,
        },
    )
    .unwrap();
    assert!(!output.contains("cut short"), "{output}");
    assert!(output.contains("check: ok (consistent cut"), "{output}");
}

/// A paused branch keeps its connections: however long the pause, its peers wait for its
/// markers (a slow peer is not a lost one), and the snapshot completes and is proven.
#[test]
fn a_pause_longer_than_the_grace_period_only_delays_the_snapshot() {
    let topology = Topology::parse("t", "2\na 100\nb 100\na b\nb a\n").unwrap();
    let events = "grace 2\nsend a b 10\nsnapshot a\npause b 12\nsend a b 5\n";
    let script = Script::parse("e", events, &topology).unwrap();
    let mut sim =
        Simulator::with_settings(topology, Delays::seeded(1), script.settings.clone()).unwrap();
    sim.run_script("e", &script).unwrap();
    for _ in 0..12 {
        sim.step().unwrap();
    }
    // Six grace periods later, b has taken nothing in and a still waits for its marker.
    assert!(sim.is_paused(1));
    assert_eq!(sim.balance(1), 100);
    assert_eq!(
        sim.report(0),
        "snapshot 0\na 90 (still recording)\nb unrecorded\n"
    );
    sim.finish().unwrap();
    let report = sim.report(0);
    assert_eq!(report, "snapshot 0\na 90\nb 110\n");
    assert!(
        Audit::check(&sim.evidence(0).unwrap()).is_proven(),
        "{report}"
    );
}

/// A branch that crashes before the commit holding its snapshot's start is durable takes the
/// snapshot with it: nobody ever records it, and the simulator still finishes (it reports the
/// snapshot unrecorded and incomplete).
#[test]
fn a_snapshot_whose_start_was_never_committed_is_lost_and_finish_terminates() {
    // At tick 0 a's first commit is being written: the snapshot waits for the next one.
    let events = "durable a\nsnapshot a\ncrash a\ntick\nrestart a\ntick 3\nsnapshot b\n";
    let output = run_scenario(
        "t",
        "2\na 100\nb 100\na b\nb a\n",
        "e",
        events,
        Delays::seeded(0),
        &RunOptions {
            check: true,
            trace: false,
        },
    )
    .unwrap();
    assert_eq!(
        output,
        "snapshot 0\na unrecorded\nb unrecorded\ncheck: incomplete\n\
         snapshot 1\na 100\nb 100\ncheck: ok (consistent cut, 2 channels, total 200)\n"
    );
}
