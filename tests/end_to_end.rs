//! The real `branch` and `controller` binaries, as a user runs them.

mod common;

use std::process::{Command, Output};

use common::RunLimited;
use std::time::Duration;

use snapbank::local_bank::LocalBank;

const BRANCH: &str = env!("CARGO_BIN_EXE_branch");
const CONTROLLER: &str = env!("CARGO_BIN_EXE_controller");

fn fast_bank(count: usize) -> LocalBank {
    let args = ["--max-interval-ms", "1"].map(String::from);
    LocalBank::start(BRANCH.as_ref(), count, &args).expect("start the branches")
}

fn controller(bank: &LocalBank, total: &str, args: &[&str]) -> Output {
    Command::new(CONTROLLER)
        .arg(total)
        .arg(bank.branches_file())
        .args(args)
        .run_limited()
}

#[test]
fn controller_prints_every_snapshot_ok_and_exits_zero() {
    let bank = fast_bank(4);
    let output = controller(&bank, "4000", &["--interval-ms", "50", "--snapshots", "30"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let ids: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("snapshot_id: "))
        .collect();
    let expected: Vec<String> = (1..=30).map(|id| id.to_string()).collect();
    assert_eq!(ids, expected);
    let totals: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("total: "))
        .collect();
    assert_eq!(
        totals,
        vec!["total: 4000 (ok; consistent cut, 12 channels checked)"; 30]
    );
    // Every branch line names its balance and the three channels into it.
    let branch_lines = stdout.lines().filter(|l| l.starts_with("branch")).count();
    assert_eq!(branch_lines, 30 * 4);
    assert!(stdout.contains("branch2: ") && stdout.contains(", branch4->branch2: "));
    assert!(bank.entries().len() == 4);
}

#[test]
fn json_reports_carry_the_same_facts() {
    let bank = fast_bank(3);
    let output = controller(
        &bank,
        "1000",
        &[
            "--interval-ms",
            "20",
            "--snapshots",
            "5",
            "--format",
            "json",
        ],
    );
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reports: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(reports.len(), 5);
    for (index, report) in reports.iter().enumerate() {
        assert_eq!(report["snapshot_id"], index as u64 + 1);
        assert_eq!(report["verdict"], "ok");
        assert_eq!(report["total"], 1000);
        assert_eq!(report["branches"].as_array().unwrap().len(), 3);
        assert_eq!(
            report["branches"][0]["channels"].as_array().unwrap().len(),
            2
        );
        assert!(report["elapsed_ms"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn a_killed_branch_makes_snapshots_incomplete_and_the_exit_code_one() {
    let mut bank = fast_bank(3);
    let mut command = Command::new(CONTROLLER);
    command
        .arg("999")
        .arg(bank.branches_file())
        .args(["--interval-ms", "100", "--snapshots", "8"])
        .args(["--retrieve-timeout-ms", "1000"]);
    let controller = std::thread::spawn(move || command.run_limited());
    std::thread::sleep(Duration::from_millis(300));
    bank.kill(2);
    let output = controller.join().expect("controller thread");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("total: 999 (ok; consistent cut, 6 channels checked)"),
        "snapshots before the kill are fine: {stdout}"
    );
    let last_total = stdout.lines().rfind(|l| l.starts_with("total: ")).unwrap();
    assert!(
        last_total.starts_with("total: unknown (INCOMPLETE: ") && last_total.contains("branch3"),
        "{last_total}"
    );
    assert_eq!(bank.exited(), vec!["branch3".to_string()]);
}
