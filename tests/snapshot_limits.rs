//! The bank at its limits: thousands of back-to-back snapshots, a bank of three units over four
//! branches, the cap on kept records, and a controller stalled past its ticks. Each runs the
//! real binaries.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{RawController, bank, json_reports, run_controller};
use serde_json::Value;
use snapbank::wire::{self, Body, pb};

const CONTROLLER: &str = env!("CARGO_BIN_EXE_controller");

#[test]
fn five_thousand_back_to_back_snapshots_on_two_busy_branches_all_come_back_ok() {
    let bank = bank(2, "0");
    let output = run_controller(
        "2000",
        &bank.branches_file(),
        &[
            "--interval-ms",
            "0",
            "--snapshots",
            "5000",
            "--format",
            "json",
        ],
    );
    let reports = json_reports(&output);
    let ok = reports.iter().filter(|r| r["verdict"] == "ok").count();
    assert_eq!(
        (ok, reports.len()),
        (5000, 5000),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success());
}

#[test]
fn a_bank_of_three_units_over_four_branches_keeps_moving_money() {
    // Balances 1, 1, 1 and 0: the branch that starts empty must start sending once money
    // arrives, or all the money ends up there for good.
    let bank = bank(4, "1");
    let output = run_controller(
        "3",
        &bank.branches_file(),
        &[
            "--interval-ms",
            "20",
            "--snapshots",
            "150",
            "--format",
            "json",
        ],
    );
    assert!(output.status.success());
    let reports = json_reports(&output);
    let holders = |report: &Value| {
        report["branches"]
            .as_array()
            .map(|branches| {
                branches
                    .iter()
                    .filter(|b| b["balance"].as_u64().unwrap_or(0) > 0)
                    .count()
            })
            .unwrap_or(0)
    };
    // Late in the run (after 2 s), money is still spread: at least 3 branches hold some at
    // some snapshot.
    assert!(
        reports[100..].iter().any(|r| holders(r) >= 3),
        "holders per snapshot: {:?}",
        reports.iter().map(holders).collect::<Vec<_>>()
    );
}

#[test]
fn a_record_discarded_by_the_cap_is_reported_as_discarded() {
    let bank = bank(2, "1000");
    let mut first = RawController::connect(bank.entries()[0].addr);
    let mut second = RawController::connect(bank.entries()[1].addr);
    let init = |balance| {
        Body::InitBranch(pb::InitBranch {
            epoch: 0,
            balance,
            all_branches: wire::branch_list(bank.entries()),
            secret: Vec::new(),
            ..Default::default()
        })
    };
    first.send(init(10));
    second.send(init(10));
    // 1100 snapshots nobody retrieves: beyond 1024 kept records the oldest are discarded.
    for id in 1..=1100 {
        first.send(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: id }));
    }
    let last = first.retrieve(1100);
    assert_eq!(last.status, pb::SnapshotStatus::Complete as i32);
    let oldest = first.retrieve(1);
    assert_eq!(
        oldest.status,
        pb::SnapshotStatus::Discarded as i32,
        "{oldest:?}"
    );
}

#[test]
fn a_stalled_controller_skips_the_ticks_it_missed_instead_of_bursting() {
    let bank = bank(3, "1");
    let out = bank.dir().join("stalled.out");
    let mut child = Command::new(CONTROLLER)
        .arg("3000")
        .arg(bank.branches_file())
        .args([
            "--interval-ms",
            "50",
            "--snapshots",
            "60",
            "--format",
            "json",
        ])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(800));
    let signal = |name: &str| {
        assert!(
            Command::new("kill")
                .args([name, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_millis(2000));
    signal("-CONT");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the controller did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    let reports: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(reports.len(), 60);
    assert!(reports.iter().all(|r| r["verdict"] == "ok"));
    // 60 snapshots 50 ms apart take 3 s; missed ticks were skipped, not fired at once after
    // the 2 s stall, so the run lasted the stall on top.
    assert!(
        elapsed >= Duration::from_millis(4500),
        "finished after {} ms: missed ticks were fired in a burst",
        elapsed.as_millis()
    );
    assert!(stderr.contains("skipping"), "{stderr}");
}
