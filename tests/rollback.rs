//! Rollback of a running in-memory bank (`controller --on-branch-loss rollback`), with real
//! processes: branches are killed with SIGKILL (and stopped with SIGSTOP) from outside and
//! started again empty; the bank rolls back to its latest ok snapshot each time and goes on
//! with the exact total. Rollback commands from anyone but the bank's controller are refused.

mod common;

use std::time::{Duration, Instant};

use common::{ControllerProcess, closed_within, write_frame};
use snapbank::local_bank::LocalBank;
use snapbank::wire::{Body, pb};

const TOTAL: u64 = 4000;

/// Four branches sending as fast as their connections take it.
fn flat_out_bank() -> LocalBank {
    let args = ["--max-interval-ms", "0"].map(String::from);
    LocalBank::start(env!("CARGO_BIN_EXE_branch").as_ref(), 4, &args).expect("start the branches")
}

/// The controller's output split into snapshot reports and rollback lines.
fn split(lines: Vec<serde_json::Value>) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    lines
        .into_iter()
        .partition(|line| line.get("rollback").is_none())
}

/// Waits (at most `limit`) until the controller has printed `rollbacks` rollback lines and then
/// `reports_after` snapshot reports after the last of them; returns reports and rollbacks.
fn wait_for(
    controller: &ControllerProcess,
    rollbacks: usize,
    reports_after: usize,
    limit: Duration,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let deadline = Instant::now() + limit;
    loop {
        let lines = controller.wait_for_reports(0, Duration::from_secs(1));
        let after = lines
            .iter()
            .rposition(|line| line.get("rollback").is_some())
            .map_or(lines.len(), |last| lines.len() - last - 1);
        let (reports, done) = split(lines);
        if done.len() >= rollbacks && (done.len() > rollbacks || after >= reports_after) {
            return (reports, done);
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for {rollbacks} rollback(s) and {reports_after} report(s) after: got {} rollback(s), {after} report(s) after the last",
            done.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that no report is wrong: every one is ok (summing to the total) or incomplete.
fn assert_none_wrong(reports: &[serde_json::Value]) {
    for report in reports {
        match report["verdict"].as_str() {
            Some("ok") => assert_eq!(report["total"].as_u64(), Some(TOTAL), "{report}"),
            Some("incomplete") => {}
            _ => panic!("a snapshot judged wrong: {report}"),
        }
    }
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

#[test]
fn a_flat_out_bank_rolls_back_after_each_of_ten_empty_restarts_and_keeps_the_exact_total() {
    let mut bank = flat_out_bank();
    let controller = ControllerProcess::start(
        &bank,
        "4000",
        &[
            "--interval-ms",
            "50",
            "--on-branch-loss",
            "rollback",
            "--retrieve-timeout-ms",
            "2000",
        ],
    );
    wait_for(&controller, 0, 5, Duration::from_secs(30));
    for kill in 0..10 {
        // Every branch in turn, the dialling and the dialled ends alike.
        let victim = (kill * 3) % 4;
        bank.kill(victim);
        bank.restart(victim, &[]).expect("restart the branch empty");
        // The rollback, then an ok snapshot of the new epoch to roll back to next time.
        let (reports, _) = wait_for(&controller, kill + 1, 1, Duration::from_secs(30));
        let last = reports.last().expect("a report");
        assert_eq!(last["epoch"].as_u64(), Some(kill as u64 + 1), "{last}");
    }
    let (reports, rollbacks) = wait_for(&controller, 10, 100, Duration::from_secs(60));
    assert_eq!(rollbacks.len(), 10, "one rollback per empty restart");
    for (n, rollback) in rollbacks.iter().enumerate() {
        assert_eq!(rollback["rollback"]["epoch"].as_u64(), Some(n as u64 + 1));
    }
    assert_none_wrong(&reports);
    let last_100 = &reports[reports.len() - 100..];
    for report in last_100 {
        assert_eq!(report["verdict"].as_str(), Some("ok"), "{report}");
        assert_eq!(report["total"].as_u64(), Some(TOTAL));
        assert_eq!(report["epoch"].as_u64(), Some(10));
    }
    // All four alive and trading: transfers keep being sent between the last snapshots.
    assert!(bank.exited().is_empty(), "exited: {:?}", bank.exited());
    let sent = |report: &serde_json::Value| common::transfers_sent(report);
    assert!(sent(&last_100[99]) > sent(&last_100[0]), "money moves");
}

#[test]
fn a_branch_that_comes_back_empty_while_a_rollback_waits_for_another_joins_that_rollback() {
    let mut bank = flat_out_bank();
    let controller = ControllerProcess::start(
        &bank,
        "4000",
        &["--interval-ms", "50", "--on-branch-loss", "rollback"],
    );
    wait_for(&controller, 0, 3, Duration::from_secs(30));
    let stopped = bank.pids()[3];
    // branch4 cannot answer the rollback's first phase while it is stopped.
    signal(stopped, "-STOP");
    let resume = scopeguard(stopped);
    bank.kill(0);
    bank.restart(0, &[]).expect("restart branch1 empty");
    std::thread::sleep(Duration::from_millis(500));
    bank.kill(1);
    bank.restart(1, &[]).expect("restart branch2 empty");
    std::thread::sleep(Duration::from_millis(500));
    drop(resume);
    let (reports, rollbacks) = wait_for(&controller, 1, 10, Duration::from_secs(30));
    let lost: Vec<&str> = rollbacks[0]["rollback"]["lost"]
        .as_array()
        .expect("the lost branches")
        .iter()
        .filter_map(|name| name.as_str())
        .collect();
    assert_eq!(lost, ["branch1", "branch2"], "one rollback for both");
    assert_eq!(rollbacks.len(), 1);
    assert_none_wrong(&reports);
    let after: Vec<_> = reports.iter().rev().take(10).collect();
    for report in after {
        assert_eq!(report["verdict"].as_str(), Some("ok"), "{report}");
        assert_eq!(report["epoch"].as_u64(), Some(1));
    }
}

/// Sends SIGCONT to `pid` when dropped, so a failing test leaves no stopped process behind.
fn scopeguard(pid: u32) -> impl Drop {
    struct Continue(u32);
    impl Drop for Continue {
        fn drop(&mut self) {
            signal(self.0, "-CONT");
        }
    }
    Continue(pid)
}

#[test]
fn a_rollback_command_from_a_stranger_is_refused_and_changes_nothing() {
    let bank = flat_out_bank();
    let controller = ControllerProcess::start(
        &bank,
        "4000",
        &["--interval-ms", "50", "--on-branch-loss", "rollback"],
    );
    wait_for(&controller, 0, 3, Duration::from_secs(30));
    let addr = bank.entries()[2].addr;
    for forged in [
        Body::RollbackPrepare(pb::RollbackPrepare { epoch: 7 }),
        Body::RollbackCommit(pb::RollbackCommit {
            epoch: 7,
            balance: 1_000_000,
        }),
    ] {
        let mut stranger = std::net::TcpStream::connect(addr).expect("connect");
        write_frame(&mut stranger, forged).expect("send the forged command");
        assert!(
            closed_within(&mut stranger, Duration::from_secs(5)),
            "the branch closes a connection that opens with a rollback command"
        );
    }
    let seen = controller.wait_for_reports(0, Duration::from_secs(1)).len();
    let (reports, rollbacks) = wait_for(&controller, 0, seen + 10, Duration::from_secs(30));
    assert!(rollbacks.is_empty(), "no rollback happened");
    assert_none_wrong(&reports);
    for report in reports.iter().rev().take(10) {
        assert_eq!(report["verdict"].as_str(), Some("ok"), "{report}");
        assert_eq!(report["epoch"].as_u64(), Some(0));
    }
}
