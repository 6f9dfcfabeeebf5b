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

/// A controller of `bank` (holding `total`) that rolls it back when a branch comes back empty,
/// a snapshot every 50 ms, with `extra` arguments.
fn rolling_back(bank: &LocalBank, total: &str, extra: &[&str]) -> ControllerProcess {
    let mut args = vec!["--interval-ms", "50", "--on-branch-loss", "rollback"];
    args.extend_from_slice(extra);
    ControllerProcess::start(bank, total, &args)
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
    let controller = rolling_back(&bank, "4000", &["--retrieve-timeout-ms", "2000"]);
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
    let controller = rolling_back(&bank, "4000", &[]);
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
    let controller = rolling_back(&bank, "4000", &[]);
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

#[test]
fn an_operator_rolls_a_running_bank_back_to_a_chosen_checkpoint() {
    let secret = common::SecretDir::new("rollback-to");
    // Branches that send nothing during the test, so a snapshot shows exactly their balances.
    let args = [
        "--secret-file",
        secret.path(),
        "--min-interval-ms",
        "600000",
        "--max-interval-ms",
        "600000",
    ]
    .map(String::from);
    let bank = LocalBank::start(env!("CARGO_BIN_EXE_branch").as_ref(), 3, &args)
        .expect("start the branches");
    let driving = ControllerProcess::start_named(
        &bank,
        "first",
        "900",
        &["--secret-file", secret.path(), "--interval-ms", "50"],
    );
    wait_for(&driving, 0, 2, Duration::from_secs(30));
    // A checkpoint of this bank with other balances (and money in transit to branch3).
    let dir = secret.dir.join("checkpoints");
    std::fs::create_dir_all(&dir).expect("create the checkpoint directory");
    let member = |index: usize, balance: u64, incoming: Vec<u64>| {
        let entries = bank.entries();
        snapbank::controller::checkpoint::Member {
            name: entries[index].name.clone(),
            addr: entries[index].addr,
            balance,
            incoming: (0..3)
                .filter(|&other| other != index)
                .zip(incoming)
                .map(
                    |(other, amount)| snapbank::controller::checkpoint::InTransit {
                        from: entries[other].name.clone(),
                        amount,
                        transfers: None,
                    },
                )
                .collect(),
        }
    };
    let checkpoint = snapbank::controller::checkpoint::Checkpoint {
        snapshot_id: 5,
        total: 900,
        verdict: "ok".into(),
        taken_unix_ms: 0,
        members: vec![
            member(0, 100, vec![0, 0]),
            member(1, 200, vec![0, 0]),
            member(2, 500, vec![60, 40]),
        ],
    };
    snapbank::controller::checkpoint::dir::write_atomically(&dir, &checkpoint)
        .expect("write the checkpoint");
    let operator = ControllerProcess::start_named(
        &bank,
        "operator",
        "900",
        &[
            "--secret-file",
            secret.path(),
            "--attach",
            "--take-over",
            "--checkpoint-dir",
            dir.to_str().expect("a UTF-8 path"),
            "--rollback-to",
            "5",
            "--interval-ms",
            "50",
            "--snapshots",
            "3",
        ],
    );
    let (code, lines, log) = operator.finish(Duration::from_secs(30));
    let (reports, rollbacks) = split(lines);
    assert_eq!(rollbacks.len(), 1, "{log}");
    assert_eq!(rollbacks[0]["rollback"]["checkpoint"].as_u64(), Some(5));
    assert_eq!(rollbacks[0]["rollback"]["lost"], serde_json::json!([]));
    let last = reports.last().expect("a report after the rollback");
    assert_eq!(last["verdict"].as_str(), Some("ok"), "{last}");
    assert_eq!(last["epoch"].as_u64(), Some(1));
    let balances: Vec<u64> = last["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .filter_map(|branch| branch["balance"].as_u64())
        .collect();
    assert_eq!(balances, [100, 200, 600], "in-transit money credited");
    // The rollback came first: every snapshot of this run is of the new epoch, and ok.
    assert_eq!(reports.len(), 3);
    assert_eq!(code, Some(0), "{log}");
    drop(driving);
}

#[test]
fn a_bank_with_a_secret_file_rolls_back_when_a_branch_comes_back_empty() {
    let secret = common::SecretDir::new("rollback-secret-file");
    let args = ["--secret-file", secret.path(), "--max-interval-ms", "0"].map(String::from);
    let mut bank = LocalBank::start(env!("CARGO_BIN_EXE_branch").as_ref(), 3, &args)
        .expect("start the branches");
    let controller = rolling_back(&bank, "3000", &["--secret-file", secret.path()]);
    wait_for(&controller, 0, 3, Duration::from_secs(30));
    // It comes back with the secret but without its bank: it proves the secret to the
    // controller, and says it holds no bank.
    bank.kill(1);
    bank.restart(1, &[]).expect("restart branch2 empty");
    let (reports, rollbacks) = wait_for(&controller, 1, 10, Duration::from_secs(30));
    assert_eq!(
        rollbacks[0]["rollback"]["lost"],
        serde_json::json!(["branch2"])
    );
    for report in reports.iter().rev().take(10) {
        assert_eq!(report["verdict"].as_str(), Some("ok"), "{report}");
        assert_eq!(report["total"].as_u64(), Some(3000));
        assert_eq!(report["epoch"].as_u64(), Some(1));
    }
    for report in &reports {
        assert!(
            matches!(report["verdict"].as_str(), Some("ok" | "incomplete")),
            "{report}"
        );
    }
}
