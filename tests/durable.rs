//! Durable branches, crashed for real: SIGKILL at random instants under flat-out load, and
//! failpoints that abort a branch exactly between a commit and the send it allows, between a
//! credit's commit and its acknowledgement, in the middle of recording a snapshot, and in the
//! middle of a commit. Each is restarted with the same command line; the assertions are on money
//! and snapshots: no snapshot ever wrong, the total exact at the end.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{ControllerProcess, transfers_sent, verdicts};
use serde_json::Value;
use snapbank::local_bank::LocalBank;

const BRANCH: &str = env!("CARGO_BIN_EXE_branch");
const CONTROLLER: &str = env!("CARGO_BIN_EXE_controller");

/// No snapshot is ever wrong: each is ok (with the exact total) or incomplete.
fn assert_never_wrong(reports: &[Value], total: u64) {
    for report in reports {
        match report["verdict"].as_str() {
            Some("ok") => assert_eq!(report["total"], total, "{report}"),
            Some("incomplete") => {}
            other => panic!("a wrong snapshot ({other:?}): {report}"),
        }
    }
}

/// Sum of every branch's balance plus money in transit, from a quiet snapshot taken by an
/// attached-less raw check: the last report must be ok with `total`.
fn assert_last_ok(reports: &[Value], last: usize, total: u64) {
    let tail = &reports[reports.len().saturating_sub(last)..];
    assert!(
        tail.iter()
            .all(|r| r["verdict"] == "ok" && r["total"] == total),
        "the last {last} snapshots: {:?}",
        verdicts(tail)
    );
}

/// The acceptance run: 4 branches flat out with data directories, a snapshot every
/// 50 ms for 30 s, a branch killed with SIGKILL and restarted 0.3 s later every 1.5 s for the
/// first 15 s.
#[test]
fn branches_killed_at_random_and_restarted_lose_not_one_unit() {
    let args = ["--max-interval-ms", "0", "--peer-timeout-ms", "1000"].map(String::from);
    let mut bank = LocalBank::start_durable(BRANCH.as_ref(), 4, &args).unwrap();
    let controller = ControllerProcess::start(
        &bank,
        "4000",
        &[
            "--interval-ms",
            "50",
            "--snapshots",
            "600",
            "--retrieve-timeout-ms",
            "3000",
            "--link-timeout-ms",
            "1000",
        ],
    );
    // Ten crashes 1.5 s apart, victims in a fixed but irregular order.
    for round in 0..10u64 {
        std::thread::sleep(Duration::from_millis(1200));
        let victim = ((round * 7 + 3) % 4) as usize;
        bank.kill(victim);
        std::thread::sleep(Duration::from_millis(300));
        bank.restart(victim, &[]).unwrap();
    }
    let (_code, reports, stderr) = controller.finish(Duration::from_secs(90));
    let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
    assert_eq!(reports.len(), 600, "{tail:?}");
    assert_never_wrong(&reports, 4000);
    let ok = verdicts(&reports).iter().filter(|v| *v == "ok").count();
    eprintln!("{ok} of 600 snapshots ok across 10 crashes");
    assert!(ok >= 540, "{ok} of 600 ok: {:?}", verdicts(&reports));
    assert_last_ok(&reports, 100, 4000);
    assert!(bank.exited().is_empty(), "{:?}", bank.exited());
    // Still trading at the end: the counters grow over the last snapshots.
    assert!(transfers_sent(&reports[599]) > transfers_sent(&reports[560]));
    // The crashes really happened and the branches really came back from their stores.
    let restored = (1..=4)
        .map(|i| std::fs::read_to_string(bank.log_path(&format!("branch{i}"))).unwrap())
        .filter(|log| log.contains("restored from its store"))
        .count();
    assert!(restored >= 3, "{restored} branches restored");
}

/// Runs a 3-branch durable bank where branch2 aborts at failpoint `point`, restarts it without
/// the failpoint, and checks the snapshots afterwards.
fn crash_at(point: &str) {
    let args = ["--max-interval-ms", "0", "--peer-timeout-ms", "1000"].map(String::from);
    let mut bank = LocalBank::start_durable(BRANCH.as_ref(), 3, &args).unwrap();
    // branch2 runs armed: it dies at the failpoint's 50th pass, mid-run.
    let armed = format!("{point}:50");
    bank.restart_with_env(1, &[], &[("SNAPBANK_FAILPOINT", &armed)])
        .unwrap();
    let controller = ControllerProcess::start(
        &bank,
        "3000",
        &[
            "--interval-ms",
            "40",
            "--snapshots",
            "100",
            "--retrieve-timeout-ms",
            "3000",
            "--link-timeout-ms",
            "1000",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bank.exited().contains(&"branch2".to_string()) {
        assert!(Instant::now() < deadline, "failpoint {point} never fired");
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = std::fs::read_to_string(bank.log_path("branch2")).unwrap();
    assert!(log.contains(&format!("failpoint {point}")), "{log}");
    std::thread::sleep(Duration::from_millis(200));
    bank.restart(1, &[]).unwrap();
    let (_code, reports, stderr) = controller.finish(Duration::from_secs(60));
    assert_eq!(reports.len(), 100, "{stderr}");
    assert_never_wrong(&reports, 3000);
    assert_last_ok(&reports, 20, 3000);
    assert!(bank.exited().is_empty());
}

#[test]
fn a_crash_between_commit_and_send_loses_nothing() {
    crash_at("before-send");
}

#[test]
fn a_crash_between_credit_and_ack_creates_nothing() {
    crash_at("before-ack");
}

#[test]
fn a_crash_while_recording_a_snapshot_loses_nothing() {
    crash_at("mid-record");
}

#[test]
fn a_crash_in_the_middle_of_a_commit_loses_nothing() {
    crash_at("mid-commit");
}

#[test]
fn a_restart_without_the_data_directory_is_refused_by_its_peers() {
    let args = ["--max-interval-ms", "5"].map(String::from);
    let mut bank = LocalBank::start(BRANCH.as_ref(), 2, &args).unwrap();
    let output = Command::new(CONTROLLER)
        .arg("200")
        .arg(bank.branches_file())
        .args(["--snapshots", "2", "--interval-ms", "20"])
        .output()
        .unwrap();
    assert!(output.status.success());
    // branch2 restarts with no state: branch1 (which dials it) knows its old incarnation and
    // is refused at once, with the reason, instead of waiting forever. The refusal comes before
    // any proof, so branch1 keeps retrying (with backoff) rather than believe it.
    bank.restart(1, &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(bank.log_path("branch1")).unwrap();
        if log.contains("refused before proving the cluster secret, so retrying")
            && log.contains("restarted without its data")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_corrupt_or_foreign_store_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("snapbank-corrupt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join(snapbank::store::FILE_NAME);
    std::fs::write(&store, b"garbage, not a store").unwrap();
    // Private, as the store holds the secret: refused for what it holds, not for its mode.
    for path in [&dir, &store] {
        let mode = if path.is_dir() { 0o700 } else { 0o600 };
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let output = Command::new(BRANCH)
        .args(["branch1", "0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not a snapbank store or corrupt"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_record_retrieved_just_before_a_crash_can_be_retrieved_again_after_it() {
    use common::RawController;
    use snapbank::wire::{self, Body, pb};
    let args = ["--max-interval-ms", "2"].map(String::from);
    let mut bank = LocalBank::start_durable(BRANCH.as_ref(), 2, &args).unwrap();
    let init = |balance| {
        Body::InitBranch(pb::InitBranch {
            epoch: 0,
            balance,
            all_branches: wire::branch_list(bank.entries()),
            secret: Vec::new(),
            ..Default::default()
        })
    };
    let mut first = RawController::connect(bank.entries()[0].addr);
    let mut second = RawController::connect(bank.entries()[1].addr);
    first.send(init(100));
    second.send(init(100));
    first.send(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: 1 }));
    let before = first.retrieve(1);
    assert_eq!(before.status, pb::SnapshotStatus::Complete as i32);
    let _ = second.retrieve(1);
    // The answer reached us; a controller whose connection died with the branch would ask
    // again after the restart, and must get the same record.
    std::thread::sleep(Duration::from_millis(200));
    bank.kill(0);
    bank.restart(0, &[]).unwrap();
    let mut again = RawController::connect(bank.entries()[0].addr);
    let after = again.retrieve(1);
    assert_eq!(after, before);
}
