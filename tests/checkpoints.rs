//! Checkpoints with real processes: a running bank writes them (`--checkpoint-dir`), a fresh
//! bank starts from one (`--restore`) with the money in transit credited and ids continuing,
//! and every bad checkpoint is refused before anything reaches a branch.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ControllerProcess, json_reports, run_controller, verdicts};
use snapbank::controller::checkpoint::dir::{list, newest};
use snapbank::controller::checkpoint::{Checkpoint, InTransit, Member};
use snapbank::local_bank::LocalBank;

/// Branches that send nothing during a test (their first transfer is ten minutes away), so a
/// snapshot of them shows exactly the balances they were given.
fn quiet_bank(count: usize) -> LocalBank {
    let args = ["--min-interval-ms", "600000", "--max-interval-ms", "600000"].map(String::from);
    LocalBank::start(env!("CARGO_BIN_EXE_branch").as_ref(), count, &args)
        .expect("start the branches")
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("snapbank-checkpoints-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the temporary directory");
        Self(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Each branch's balance in a JSON report, in file order.
fn balances(report: &serde_json::Value) -> Vec<u64> {
    report["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .map(|branch| branch["balance"].as_u64().expect("a balance"))
        .collect()
}

/// Money recorded in transit into each branch in a JSON report, in file order.
fn in_transit(report: &serde_json::Value) -> Vec<u64> {
    report["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .map(|branch| {
            branch["channels"]
                .as_array()
                .expect("channels")
                .iter()
                .map(|channel| channel["amount"].as_u64().expect("an amount"))
                .sum()
        })
        .collect()
}

/// A checkpoint of branch1..branch3 (total 3000, id 41) with 30 in transit to branch2 and 7
/// to branch3: restored, the balances are 1000, 1010, 990.
fn crafted(names: [&str; 3]) -> Checkpoint {
    let addr = |port| std::net::SocketAddr::from(([192, 0, 2, 1], port));
    let channel = |from: &str, amount, transfers: Option<Vec<(u64, u64)>>| InTransit {
        from: from.into(),
        amount,
        transfers,
    };
    let [a, b, c] = names;
    Checkpoint {
        snapshot_id: 41,
        total: 3000,
        verdict: "ok".into(),
        taken_unix_ms: 1_764_650_000_000,
        members: vec![
            Member {
                name: a.into(),
                addr: addr(1),
                balance: 1000,
                incoming: vec![channel(b, 0, Some(vec![])), channel(c, 0, Some(vec![]))],
            },
            Member {
                name: b.into(),
                addr: addr(2),
                balance: 980,
                incoming: vec![
                    channel(a, 30, Some(vec![(3, 12), (4, 18)])),
                    channel(c, 0, None),
                ],
            },
            Member {
                name: c.into(),
                addr: addr(3),
                balance: 983,
                incoming: vec![channel(a, 7, None), channel(b, 0, None)],
            },
        ],
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write the checkpoint file");
    path.to_str().expect("a UTF-8 path").to_string()
}

#[test]
fn a_running_bank_writes_checkpoints_and_a_fresh_bank_restores_the_newest() {
    let checkpoints = TempDir::new("written");
    let bank = common::bank(3, "2");
    let (code, reports, stderr) = ControllerProcess::start(
        &bank,
        "3000",
        &[
            "--checkpoint-dir",
            checkpoints.path(),
            "--keep-checkpoints",
            "3",
            "--interval-ms",
            "50",
            "--snapshots",
            "8",
        ],
    )
    .finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(verdicts(&reports), vec!["ok"; 8]);
    drop(bank);

    // The newest three are kept, and each says what its report said.
    let files = list(&checkpoints.0).expect("list the checkpoints");
    assert_eq!(files.len(), 3, "{files:?}");
    for file in &files {
        let checkpoint = Checkpoint::decode(&std::fs::read(file).unwrap()).expect("a whole file");
        let report = &reports[checkpoint.snapshot_id as usize - 1];
        assert_eq!(report["snapshot_id"], checkpoint.snapshot_id);
        let recorded: Vec<u64> = checkpoint.members.iter().map(|m| m.balance).collect();
        assert_eq!(recorded, balances(report));
        let transit: Vec<u64> = checkpoint
            .members
            .iter()
            .map(|m| m.incoming.iter().map(|c| c.amount).sum())
            .collect();
        assert_eq!(transit, in_transit(report));
        assert_eq!(checkpoint.total, 3000);
    }
    let newest_file = newest(&checkpoints.0)
        .unwrap()
        .expect("a newest checkpoint");
    let newest = Checkpoint::decode(&std::fs::read(&newest_file).unwrap()).unwrap();
    assert_eq!(newest.snapshot_id, 8);

    // A fresh, quiet bank of the same names at other ports, restored from the directory.
    let fresh = quiet_bank(3);
    let output = run_controller(
        "3000",
        &fresh.branches_file(),
        &[
            "--restore",
            checkpoints.path(),
            "--interval-ms",
            "50",
            "--snapshots",
            "2",
            "--format",
            "json",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let restored = json_reports(&output);
    assert_eq!(restored.len(), 2);
    assert_eq!(
        restored[0]["snapshot_id"], 9,
        "ids continue after the checkpoint's"
    );
    assert_eq!(restored[1]["snapshot_id"], 10);
    assert_eq!(
        common::transfers_sent(&restored[0]),
        0,
        "the bank was quiet"
    );
    let expected: Vec<u64> = newest
        .members
        .iter()
        .map(Member::restored_balance)
        .collect();
    assert_eq!(balances(&restored[0]), expected);
    assert_eq!(in_transit(&restored[0]), vec![0, 0, 0]);
}

#[test]
fn a_restore_credits_the_money_in_transit_and_takes_the_newest_file_of_a_directory() {
    let dir = TempDir::new("crafted");
    let mut older = crafted(["branch1", "branch2", "branch3"]);
    older.snapshot_id = 7;
    older.taken_unix_ms -= 1000;
    older.members[0].balance += 37;
    older.members[1].incoming[0] = InTransit {
        from: "branch1".into(),
        amount: 0,
        transfers: None,
    };
    older.members[2].incoming[0].amount = 0;
    for checkpoint in [&older, &crafted(["branch1", "branch2", "branch3"])] {
        snapbank::controller::checkpoint::dir::write_atomically(&dir.0, checkpoint).unwrap();
    }
    let bank = quiet_bank(3);
    let output = run_controller(
        "3000",
        &bank.branches_file(),
        &[
            "--restore",
            dir.path(),
            "--snapshots",
            "1",
            "--format",
            "json",
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reports = json_reports(&output);
    assert_eq!(reports[0]["snapshot_id"], 42);
    assert_eq!(common::transfers_sent(&reports[0]), 0, "the bank was quiet");
    assert_eq!(balances(&reports[0]), vec![1000, 1010, 990]);
    assert_eq!(reports[0]["verdict"], "ok");
}

#[test]
fn every_bad_checkpoint_is_refused_with_exit_2_before_anything_reaches_a_branch() {
    let dir = TempDir::new("bad");
    let good = crafted(["branch1", "branch2", "branch3"]).encode();
    let sealed = |edit: &dyn Fn(&mut Checkpoint)| {
        let mut checkpoint = crafted(["branch1", "branch2", "branch3"]);
        edit(&mut checkpoint);
        checkpoint.encode()
    };
    let tampered = String::from_utf8(good.clone()).unwrap().replacen(
        "\"balance\": 980",
        "\"balance\": 1980",
        1,
    );
    let empty = TempDir::new("bad-empty");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            write(&dir.0, "truncated.ckpt", &good[..good.len() * 2 / 3]),
            "3000",
            "truncated",
        ),
        (
            write(&dir.0, "tampered.ckpt", tampered.as_bytes()),
            "3000",
            "checksum mismatch",
        ),
        (
            write(
                &dir.0,
                "resealed.ckpt",
                &sealed(&|c: &mut Checkpoint| c.members[0].balance = 1500),
            ),
            "3000",
            "sum to 3500, not the checkpoint's total 3000",
        ),
        (
            write(
                &dir.0,
                "other-bank.ckpt",
                &crafted(["a1", "a2", "a3"]).encode(),
            ),
            "3000",
            "another bank's checkpoint",
        ),
        (
            write(
                &dir.0,
                "incomplete.ckpt",
                &sealed(&|c: &mut Checkpoint| c.verdict = "incomplete".into()),
            ),
            "3000",
            "was not ok",
        ),
        (
            write(&dir.0, "good.ckpt", &good),
            "4000",
            "total is 3000, not the 4000",
        ),
        (empty.path().to_string(), "3000", "holds no checkpoint"),
    ];
    let bank = quiet_bank(3);
    for (file, total, problem) in &cases {
        let output = run_controller(total, &bank.branches_file(), &["--restore", file]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{file}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].starts_with("error: "), "{stderr}");
        assert!(lines[0].contains(file.as_str()), "names the file: {stderr}");
        assert!(lines[0].contains(problem), "says {problem:?}: {stderr}");
        assert!(output.stdout.is_empty());
    }
    // Nothing reached the branches: they are still uninitialised, so a controller can
    // initialise them now (an initialised branch refuses a second InitBranch).
    let output = run_controller(
        "3000",
        &bank.branches_file(),
        &["--snapshots", "1", "--format", "json"],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(balances(&json_reports(&output)[0]), vec![1000, 1000, 1000]);
}

#[test]
fn a_checkpoint_that_cannot_be_written_is_a_warning_naming_the_file_and_the_bank_runs_on() {
    let checkpoints = TempDir::new("unwritable");
    let bank = common::bank(2, "5");
    let controller = ControllerProcess::start(
        &bank,
        "2000",
        &[
            "--checkpoint-dir",
            checkpoints.path(),
            "--interval-ms",
            "50",
            "--snapshots",
            "20",
        ],
    );
    controller.wait_for_reports(3, Duration::from_secs(20));
    // The directory disappears under the controller: every later write fails.
    std::fs::remove_dir_all(&checkpoints.0).expect("remove the checkpoint directory");
    let (code, reports, stderr) = controller.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(verdicts(&reports), vec!["ok"; 20]);
    let expected = format!("cannot write checkpoint {}/checkpoint-", checkpoints.path());
    let warning = stderr
        .lines()
        .find(|line| line.contains(&expected))
        .unwrap_or_else(|| panic!("no warning naming the file: {stderr}"));
    assert!(warning.contains("the bank runs on"), "{warning}");
}
