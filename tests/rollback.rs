//! Rollback of a running in-memory bank (`controller --on-branch-loss rollback`), with real
//! processes: branches are killed with SIGKILL (and stopped with SIGSTOP) from outside and
//! started again empty; the bank rolls back to its latest ok snapshot each time and goes on
//! with the exact total. Durable branches take part too: one whose store lost a commit is
//! rolled back with the bank rather than stopping, and a rolled-back durable bank keeps its new
//! epoch and balances across SIGKILL. Rollback commands from anyone but the bank's controller
//! are refused.

mod common;

use std::time::{Duration, Instant};

use common::{ControllerProcess, closed_within, signal, write_frame};
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

/// Asserts that no report of the bank of [`TOTAL`] is wrong.
fn assert_none_wrong(reports: &[serde_json::Value]) {
    assert_none_wrong_of(reports, TOTAL);
}

/// Asserts that no report is wrong: every one is ok (summing to `total`) or incomplete.
fn assert_none_wrong_of(reports: &[serde_json::Value], total: u64) {
    for report in reports {
        match report["verdict"].as_str() {
            Some("ok") => assert_eq!(report["total"].as_u64(), Some(total), "{report}"),
            Some("incomplete") => {}
            _ => panic!("a snapshot judged wrong: {report}"),
        }
    }
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
    signal(stopped, "STOP");
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
            signal(self.0, "CONT");
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

/// Branch arguments for a bank with `secret` whose branches send nothing during a test, so a
/// snapshot shows exactly their balances.
fn quiet(secret: &common::SecretDir) -> [String; 6] {
    [
        "--secret-file",
        secret.path(),
        "--min-interval-ms",
        "600000",
        "--max-interval-ms",
        "600000",
    ]
    .map(String::from)
}

/// Writes into `dir` an ok checkpoint, snapshot 5, of the three-branch `bank` holding 900:
/// balances 100, 200 and 500, with 60 and 40 in transit to the third.
fn write_checkpoint(bank: &LocalBank, dir: &std::path::Path) {
    use snapbank::controller::checkpoint::{Checkpoint, InTransit, Member};
    std::fs::create_dir_all(dir).expect("create the checkpoint directory");
    let member = |index: usize, balance: u64, incoming: Vec<u64>| {
        let entries = bank.entries();
        Member {
            name: entries[index].name.clone(),
            addr: entries[index].addr,
            balance,
            incoming: (0..3)
                .filter(|&other| other != index)
                .zip(incoming)
                .map(|(other, amount)| InTransit {
                    from: entries[other].name.clone(),
                    amount,
                    transfers: None,
                })
                .collect(),
        }
    };
    let checkpoint = Checkpoint {
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
    snapbank::controller::checkpoint::dir::write_atomically(dir, &checkpoint)
        .expect("write the checkpoint");
}

/// Each branch's balance in `report`.
fn balances(report: &serde_json::Value) -> Vec<u64> {
    report["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .filter_map(|branch| branch["balance"].as_u64())
        .collect()
}

/// Starts a controller that attaches to `bank` (with `secret`), takes the lease over, rolls
/// the bank back to the checkpoint [`write_checkpoint`] writes, and takes 3 snapshots.
fn start_rolling_back_to_the_checkpoint(
    bank: &LocalBank,
    secret: &common::SecretDir,
) -> ControllerProcess {
    let dir = secret.dir.join("checkpoints");
    write_checkpoint(bank, &dir);
    ControllerProcess::start_named(
        bank,
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
    )
}

/// Asserts that `operator` ([`start_rolling_back_to_the_checkpoint`]) rolled the bank back
/// once and left it holding the checkpoint's balances in epoch 1.
fn assert_rolled_back_to_the_checkpoint(operator: ControllerProcess) {
    let (code, lines, log) = operator.finish(Duration::from_secs(30));
    let (reports, rollbacks) = split(lines);
    assert_eq!(rollbacks.len(), 1, "{log}");
    assert_eq!(rollbacks[0]["rollback"]["checkpoint"].as_u64(), Some(5));
    assert_eq!(rollbacks[0]["rollback"]["lost"], serde_json::json!([]));
    let last = reports.last().expect("a report after the rollback");
    assert_eq!(last["verdict"].as_str(), Some("ok"), "{last}");
    assert_eq!(last["epoch"].as_u64(), Some(1));
    assert_eq!(balances(last), [100, 200, 600], "in-transit money credited");
    // The rollback came first: every snapshot of this run is of the new epoch, and ok.
    assert_eq!(reports.len(), 3);
    assert_eq!(code, Some(0), "{log}");
}

/// Rolls `bank` back to the checkpoint and asserts that it did.
fn roll_back_to_the_checkpoint(bank: &LocalBank, secret: &common::SecretDir) {
    assert_rolled_back_to_the_checkpoint(start_rolling_back_to_the_checkpoint(bank, secret));
}

/// A controller driving the three-branch `bank` with `secret`, once it has taken two
/// snapshots.
fn driving(bank: &LocalBank, secret: &common::SecretDir) -> ControllerProcess {
    let driving = ControllerProcess::start_named(
        bank,
        "first",
        "900",
        &["--secret-file", secret.path(), "--interval-ms", "50"],
    );
    wait_for(&driving, 0, 2, Duration::from_secs(30));
    driving
}

/// A durable bank of three quiet branches with `secret`, and its [`driving`] controller.
fn quiet_durable_bank(secret: &common::SecretDir) -> (LocalBank, ControllerProcess) {
    let bank = LocalBank::start_durable(env!("CARGO_BIN_EXE_branch").as_ref(), 3, &quiet(secret))
        .expect("start the branches");
    let driving = driving(&bank, secret);
    (bank, driving)
}

#[test]
fn an_operator_rolls_a_running_bank_back_to_a_chosen_checkpoint() {
    let secret = common::SecretDir::new("rollback-to");
    let bank = LocalBank::start(env!("CARGO_BIN_EXE_branch").as_ref(), 3, &quiet(&secret))
        .expect("start the branches");
    let driving = driving(&bank, &secret);
    roll_back_to_the_checkpoint(&bank, &secret);
    drop(driving);
}

#[test]
fn a_durable_bank_rolled_back_holds_the_new_epoch_and_balances_after_every_branch_is_killed() {
    let secret = common::SecretDir::new("durable-rollback-to");
    let (mut bank, driving) = quiet_durable_bank(&secret);
    roll_back_to_the_checkpoint(&bank, &secret);
    drop(driving);
    // Each branch acknowledged the rollback once its store held the new epoch and balance: a
    // SIGKILL of every branch at once loses neither.
    for index in 0..3 {
        bank.kill(index);
    }
    for index in 0..3 {
        bank.restart(index, &[])
            .expect("restart the branch from its store");
    }
    let after = ControllerProcess::start_named(
        &bank,
        "after",
        "900",
        &[
            "--secret-file",
            secret.path(),
            "--attach",
            "--interval-ms",
            "50",
            "--snapshots",
            "3",
        ],
    );
    let (code, lines, log) = after.finish(Duration::from_secs(30));
    let (reports, rollbacks) = split(lines);
    assert!(rollbacks.is_empty(), "{log}");
    assert_eq!(reports.len(), 3, "{log}");
    for report in &reports {
        assert_eq!(report["verdict"].as_str(), Some("ok"), "{report}");
        assert_eq!(report["epoch"].as_u64(), Some(1), "{report}");
        assert_eq!(balances(report), [100, 200, 600], "{report}");
    }
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn a_durable_branch_killed_between_the_two_phases_is_rolled_back_from_its_older_epoch() {
    let secret = common::SecretDir::new("durable-rollback-crash");
    let (mut bank, driving) = quiet_durable_bank(&secret);
    // branch2 dies as the second phase reaches it: it prepared (dropped its state in memory),
    // but its store still holds the epoch before.
    bank.kill(1);
    bank.restart_with_env(1, &[], &[("SNAPBANK_FAILPOINT", "rollback-commit")])
        .expect("restart branch2 with the failpoint");
    let operator = start_rolling_back_to_the_checkpoint(&bank, &secret);
    let died = bank.wait_for_exit(1, Duration::from_secs(20));
    if died.is_none() {
        let log = std::fs::read_to_string(bank.log_path("branch2")).unwrap_or_default();
        let (_, _, operator_log) = operator.finish(Duration::from_secs(5));
        panic!(
            "branch2 did not reach the rollback's second phase; its log ends: {}\nthe operator's: {operator_log}",
            &log[log.len().saturating_sub(3000)..]
        );
    }
    bank.restart(1, &[])
        .expect("restart branch2 from its store");
    assert_rolled_back_to_the_checkpoint(operator);
    drop(driving);
}

#[test]
fn a_durable_branch_whose_store_lost_a_commit_is_rolled_back_with_the_bank_and_trades_on() {
    let secret = common::SecretDir::new("rollback-lost-commit");
    let args = ["--secret-file", secret.path(), "--max-interval-ms", "5"].map(String::from);
    let mut bank = LocalBank::start_durable(env!("CARGO_BIN_EXE_branch").as_ref(), 3, &args)
        .expect("start the branches");
    let controller = rolling_back(&bank, "3000", &["--secret-file", secret.path()]);
    wait_for(&controller, 0, 3, Duration::from_secs(30));
    common::restart_on_an_older_store(&mut bank, 0, &secret.dir, Duration::from_millis(1500));
    let (reports, rollbacks) = wait_for(&controller, 1, 10, Duration::from_secs(30));
    assert_eq!(
        rollbacks[0]["rollback"]["lost"],
        serde_json::json!(["branch1"])
    );
    assert_none_wrong_of(&reports, 3000);
    let last_10 = &reports[reports.len() - 10..];
    for report in last_10 {
        assert_eq!(report["verdict"].as_str(), Some("ok"), "{report}");
        assert_eq!(report["total"].as_u64(), Some(3000));
        assert_eq!(report["epoch"].as_u64(), Some(1));
    }
    // branch1 did not stop: all three are alive, and money moves.
    assert!(bank.exited().is_empty(), "exited: {:?}", bank.exited());
    let sent = |report: &serde_json::Value| common::transfers_sent(report);
    assert!(sent(&last_10[9]) > sent(&last_10[0]), "money moves");
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
    assert_none_wrong_of(&reports, 3000);
}
