//! Interoperability with other implementations of the exercise, both ways, against
//! a minimal original-schema controller and branch written here from the v1 messages only:
//!
//! - their controller, our branches: one connection per command, and one persistent
//!   connection; retrieving right after `InitSnapshot`, so our branches must hold answers for
//!   snapshots still recording or not seen yet, or the sums come out wrong;
//! - our `controller --compat` driving their branches: `per-command` against branches that
//!   read one frame per connection, `persistent` against branches that serve only their first
//!   connection; and the wrong mode failing, as it must;
//! - `--compat` with its default settings driving slow branches (markers after a pause, records
//!   answered only once finished, the connection closed unanswered before), in both modes;
//! - `--compat` driving our own branches too;
//! - the report card (`--grade`, in `grading`): our branches pass every rule, and each broken
//!   branch is caught with its rule named.
//! - the report card of a controller (`branch --grade-controller`, in `controller_card`): the
//!   original-schema controller passes, and a bad controller's every fault is named.

#[path = "../common/mod.rs"]
mod common;
mod controller_card;
mod grading;
mod original_branch;
mod original_controller;
mod v1;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use original_branch::{Behaviour, ControllerPattern, OriginalBank};
use original_controller::Pattern;
use snapbank::local_bank::{LocalBank, output_within};

const BRANCH: &str = env!("CARGO_BIN_EXE_branch");
const CONTROLLER: &str = env!("CARGO_BIN_EXE_controller");

/// Our branches, sending fast so that money is in transit when snapshots are taken.
fn our_bank(count: usize) -> LocalBank {
    let args = ["--max-interval-ms", "2"].map(String::from);
    LocalBank::start(BRANCH.as_ref(), count, &args).expect("start the branches")
}

fn entries(bank: &LocalBank) -> Vec<(String, SocketAddr)> {
    bank.entries()
        .iter()
        .map(|entry| (entry.name.clone(), entry.addr))
        .collect()
}

fn log(bank: &LocalBank, name: &str) -> String {
    std::fs::read_to_string(bank.log_path(name)).unwrap_or_default()
}

/// Opens a connection to the branch at `addr` and sends a v1 `RetrieveSnapshot` (no `wait_ms`)
/// for snapshot `id` on it.
fn ask_for(addr: SocketAddr, id: u32) -> std::net::TcpStream {
    let mut asking = std::net::TcpStream::connect(addr).unwrap();
    v1::write(
        &mut asking,
        v1::Msg::RetrieveSnapshot(v1::RetrieveSnapshot { snapshot_id: id }),
    )
    .unwrap();
    asking
}

/// Starts snapshot `id` at the branch at `addr`, on a connection of its own (returned, so that
/// it stays open as long as the caller wants).
fn start_at(addr: SocketAddr, id: u32) -> std::net::TcpStream {
    let mut start = std::net::TcpStream::connect(addr).unwrap();
    v1::write(
        &mut start,
        v1::Msg::InitSnapshot(v1::InitSnapshot { snapshot_id: id }),
    )
    .unwrap();
    start
}

/// Reads the answer held for a request on `asking` (within 4 s); `what` says which answer.
fn read_held(asking: &mut std::net::TcpStream, what: &str) -> v1::LocalSnapshot {
    asking
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    match v1::read(asking) {
        Ok(Some(Some(v1::Msg::ReturnSnapshot(v1::ReturnSnapshot {
            local_snapshot: Some(held),
        })))) => held,
        other => panic!("{what}: {other:?}"),
    }
}

/// The money a set of records accounts for: balances plus money in transit.
fn money(records: &[&v1::LocalSnapshot]) -> u64 {
    records
        .iter()
        .map(|r| u64::from(r.balance) + r.channel_state.iter().map(|&c| u64::from(c)).sum::<u64>())
        .sum()
}

fn controller(file: &std::path::Path, args: &[&str]) -> Output {
    let mut command = Command::new(CONTROLLER);
    command.arg("4000").arg(file).args(args);
    output_within(&mut command, Duration::from_secs(60)).expect("the controller finishes")
}

/// Asserts the controller exited 0 with `count` snapshots, ids 1.., each verdict ok.
fn assert_all_ok(output: &Output, count: usize, verdict: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    let ids: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("snapshot_id: "))
        .collect();
    let expected: Vec<String> = (1..=count).map(|id| id.to_string()).collect();
    assert_eq!(ids, expected, "{stdout}");
    let totals: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("total: "))
        .collect();
    assert_eq!(totals.len(), count, "{stdout}");
    for total in totals {
        assert!(
            total.starts_with(&format!("total: 4000 (ok; {verdict}")),
            "{total}\n{stdout}\n{stderr}"
        );
    }
}

fn original_controller_drives_our_branches(pattern: Pattern) {
    let bank = our_bank(4);
    let names: Vec<String> = bank.entries().iter().map(|e| e.name.clone()).collect();
    // No delay at all between InitSnapshot and RetrieveSnapshot: our branches must hold each
    // answer until the record is finished, for branches the marker has not reached too.
    let snapshots = original_controller::run(&entries(&bank), 4000, pattern, 4, Duration::ZERO);
    assert_eq!(snapshots.len(), 4);
    for snapshot in &snapshots {
        print!("{}", snapshot.to_text(&names));
        for record in &snapshot.records {
            assert_eq!(record.snapshot_id, snapshot.id, "{snapshot:?}");
            assert_eq!(record.channel_state.len(), 3, "{snapshot:?}");
        }
        assert_eq!(
            snapshot.total(),
            4000,
            "snapshot {} does not sum to the total: {snapshot:?}",
            snapshot.id
        );
    }
    let transfers_moved = snapshots
        .iter()
        .flat_map(|s| &s.records)
        .any(|r| r.balance != 1000);
    assert!(transfers_moved, "no money moved: {snapshots:?}");
    assert!(log(&bank, "branch1").contains("InitBranch carries no secret"));
}

#[test]
fn an_original_controller_opening_a_connection_per_command_drives_our_branches() {
    original_controller_drives_our_branches(Pattern::PerCommand);
}

#[test]
fn an_original_controller_keeping_one_connection_drives_our_branches() {
    original_controller_drives_our_branches(Pattern::Persistent);
}

#[test]
fn a_retrieve_without_wait_for_an_unseen_snapshot_is_held_until_its_marker_comes() {
    let bank = our_bank(2);
    let branches = entries(&bank);
    // Initialise (one connection per command), then ask branch2 for snapshot 7 before anyone
    // has started it.
    let _ = original_controller::run(&branches, 1000, Pattern::PerCommand, 0, Duration::ZERO);
    let mut asking = ask_for(branches[1].1, 7);
    asking
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let early = v1::read(&mut asking);
    assert!(
        matches!(&early, Err(err) if err.kind() == std::io::ErrorKind::WouldBlock),
        "answered before the snapshot began: {early:?}"
    );
    let _start = start_at(branches[0].1, 7);
    let held = read_held(&mut asking, "no answer once the snapshot began");
    assert_eq!(held.snapshot_id, 7);
    let first = original_controller::run_retrieve(branches[0].1, 7);
    assert_eq!(money(&[&first, &held]), 1000, "{first:?} {held:?}");
    assert!(log(&bank, "branch2").contains("serving it as an original-schema controller"));
}

#[test]
fn a_controller_that_closes_its_half_after_asking_still_gets_the_held_answer() {
    let bank = our_bank(2);
    let branches = entries(&bank);
    let _ = original_controller::run(&branches, 1000, Pattern::PerCommand, 0, Duration::ZERO);
    // Ask branch2 for a snapshot nobody has started, then close the writing half at once:
    // the branch holds the request, and still owes the answer on this connection.
    let mut asking = ask_for(branches[1].1, 9);
    asking.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _start = start_at(branches[0].1, 9);
    let held = read_held(&mut asking, "the half-closed connection got no answer");
    assert_eq!(held.snapshot_id, 9);
    // Nothing more is owed: the branch closes the connection.
    let end = v1::read(&mut asking);
    assert!(
        matches!(end, Ok(None)),
        "expected the end of the stream, got {end:?}"
    );
    let first = original_controller::run_retrieve(branches[0].1, 9);
    assert_eq!(money(&[&first, &held]), 1000, "{first:?} {held:?}");
}

#[test]
fn a_held_retrieve_answers_what_it_has_after_the_bound_and_warns() {
    let bank = our_bank(2);
    let branches = entries(&bank);
    let _ = original_controller::run(&branches, 1000, Pattern::PerCommand, 0, Duration::ZERO);
    // branch2 frozen: branch1's record of snapshot 3 cannot finish (no marker from branch2).
    let pid = bank.pids()[1].to_string();
    let stop = |signal: &str| {
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    };
    stop("-STOP");
    let mut start = std::net::TcpStream::connect(branches[0].1).unwrap();
    v1::write(
        &mut start,
        v1::Msg::InitSnapshot(v1::InitSnapshot { snapshot_id: 3 }),
    )
    .unwrap();
    let asked = Instant::now();
    let record = original_controller::run_retrieve(branches[0].1, 3);
    let waited = asked.elapsed();
    stop("-CONT");
    assert_eq!(record.snapshot_id, 3);
    assert!(
        waited >= Duration::from_millis(4500) && waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    let log = log(&bank, "branch1");
    assert!(
        log.contains("snapshot 3: answering a RetrieveSnapshot without wait_ms")
            && log.contains("(RECORDING)"),
        "{log}"
    );
}

#[test]
fn compat_per_command_drives_branches_that_read_one_frame_per_connection() {
    let bank = OriginalBank::start(4, ControllerPattern::OneFramePerConnection);
    let output = controller(
        &bank.branches_file(),
        &[
            "--compat",
            "per-command",
            "--interval-ms",
            "3000",
            "--snapshots",
            "3",
        ],
    );
    print!("{}", String::from_utf8_lossy(&output.stdout));
    assert_all_ok(
        &output,
        3,
        "sum only, no channel counters from b1, b2, b3, b4",
    );
    for branch in &bank.branches {
        // InitBranch, and a RetrieveSnapshot per snapshot, each on a connection of its own.
        let served = branch
            .stats()
            .controller_connections
            .load(Ordering::Relaxed);
        assert!(served >= 4, "{served} connections served");
    }
}

#[test]
fn compat_persistent_drives_branches_that_serve_only_their_first_connection() {
    let bank = OriginalBank::start(4, ControllerPattern::Persistent);
    let output = controller(
        &bank.branches_file(),
        &[
            "--compat",
            "persistent",
            "--interval-ms",
            "3000",
            "--snapshots",
            "3",
        ],
    );
    print!("{}", String::from_utf8_lossy(&output.stdout));
    assert_all_ok(
        &output,
        3,
        "sum only, no channel counters from b1, b2, b3, b4",
    );
    for branch in &bank.branches {
        let stats = branch.stats();
        assert_eq!(stats.controller_connections.load(Ordering::Relaxed), 1);
        assert_eq!(stats.refused_connections.load(Ordering::Relaxed), 0);
        // InitBranch and three RetrieveSnapshot at least, all on that one connection.
        assert!(stats.commands.load(Ordering::Relaxed) >= 4);
    }
}

/// The asks each branch needed, per snapshot, from the `asks: b1 2, b2 3` lines of a report.
fn asks_per_snapshot(stdout: &str) -> Vec<Vec<(String, u32)>> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("asks: "))
        .map(|asks| {
            asks.split(", ")
                .map(|entry| {
                    let (name, count) = entry.split_once(' ').expect("`name count`");
                    (name.to_string(), count.parse().expect("a count of asks"))
                })
                .collect()
        })
        .collect()
}

/// Four slow branches serving `pattern`, driven by `--compat mode` with the default retrieval
/// settings: every snapshot ok, each branch asked more than once (no record can be finished
/// at the first ask, which comes before the initiator's marker pause is over), the asks said
/// in the report, and the branches having left asks unanswered.
fn compat_defaults_drive_slow_branches(pattern: ControllerPattern, mode: &str) {
    let bank = OriginalBank::start_with(4, Behaviour::slow(pattern));
    let output = controller(
        &bank.branches_file(),
        &[
            "--compat",
            mode,
            "--interval-ms",
            "1000",
            "--snapshots",
            "3",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    assert_all_ok(
        &output,
        3,
        "sum only, no channel counters from b1, b2, b3, b4",
    );
    let asks = asks_per_snapshot(&stdout);
    assert_eq!(asks.len(), 3, "{stdout}");
    for snapshot in &asks {
        let names: Vec<&str> = snapshot.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["b1", "b2", "b3", "b4"], "{stdout}");
        for (name, count) in snapshot {
            assert!(*count >= 2, "{name} answered at its first ask: {stdout}");
        }
    }
    assert!(!stdout.contains("finding:"), "{stdout}");
    for branch in &bank.branches {
        let unanswered = branch.stats().unanswered.load(Ordering::Relaxed);
        assert!(
            unanswered >= 1,
            "a branch that never left an ask unanswered"
        );
    }
}

#[test]
fn compat_per_command_defaults_drive_branches_that_close_until_recorded() {
    compat_defaults_drive_slow_branches(ControllerPattern::OneFramePerConnection, "per-command");
}

#[test]
fn compat_persistent_defaults_drive_branches_that_say_nothing_until_recorded() {
    compat_defaults_drive_slow_branches(ControllerPattern::Persistent, "persistent");
}

#[test]
fn compat_per_command_fails_on_branches_that_serve_only_their_first_connection() {
    // The two patterns conflict: the mode matters, and a wrong one is reported, not hidden.
    let bank = OriginalBank::start(3, ControllerPattern::Persistent);
    let output = controller(
        &bank.branches_file(),
        &[
            "--compat",
            "per-command",
            "--interval-ms",
            "100",
            "--snapshots",
            "1",
            "--retrieve-delay-ms",
            "200",
            "--retrieve-timeout-ms",
            "2000",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("INCOMPLETE"), "{stdout}");
    let refused: usize = bank
        .branches
        .iter()
        .map(|b| b.stats().refused_connections.load(Ordering::Relaxed))
        .sum();
    assert!(refused >= 3, "{refused}");
}

#[test]
fn compat_modes_drive_our_branches_too() {
    for mode in ["per-command", "persistent"] {
        let bank = our_bank(4);
        let output = controller(
            &bank.branches_file(),
            &[
                "--compat",
                mode,
                "--interval-ms",
                "300",
                "--snapshots",
                "3",
                "--retrieve-delay-ms",
                "200",
            ],
        );
        assert_all_ok(&output, 3, "consistent cut, 12 channels checked");
    }
}

#[test]
fn compat_per_command_stops_with_the_reason_when_a_branch_refuses_its_init() {
    let bank = our_bank(2);
    // The file says branch2 is where branch1 listens, and the reverse: each branch refuses the
    // InitBranch that gives it another branch's name and port.
    let swapped = common::swapped_branches_file(&bank);
    let started = Instant::now();
    let output = controller(
        &swapped,
        &[
            "--compat",
            "per-command",
            "--snapshots",
            "2",
            "--interval-ms",
            "100",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused") && stderr.contains("names and ports swapped"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).is_empty(),
        "no snapshot of an uninitialised bank is reported"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{stderr}");
}

#[test]
fn compat_refuses_a_secret() {
    let bank = OriginalBank::start(2, ControllerPattern::Persistent);
    let secret = bank.branches_file().with_file_name("secret");
    std::fs::write(&secret, "0123456789abcdef0123").unwrap();
    let output = controller(
        &bank.branches_file(),
        &[
            "--compat",
            "persistent",
            "--secret-file",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--secret-file"), "{stderr}");
}
