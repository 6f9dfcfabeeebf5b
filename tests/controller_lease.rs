//! One active controller per bank: the branches of a bank with a secret hold a controller lease
//! for one controller at a time, against the real binaries. A second controller is refused with
//! the holder and what to do; `--take-over` ends the holder's lease and the old controller
//! stops; a killed controller's lease ends with its connection, a frozen one's when it lapses.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{ControllerProcess, RunLimited, verdicts};
use serde_json::Value;
use snapbank::local_bank::LocalBank;

const BRANCH: &str = env!("CARGO_BIN_EXE_branch");
const CONTROLLER: &str = env!("CARGO_BIN_EXE_controller");

/// Three branches sharing a secret file, each with `peer_timeout_ms` (the lease's timeout).
struct SecretBank {
    bank: LocalBank,
    secret_file: PathBuf,
}

impl SecretBank {
    fn start(peer_timeout_ms: u64) -> Self {
        let secret_file = std::env::temp_dir().join(format!(
            "snapbank-lease-{}-{peer_timeout_ms}",
            std::process::id()
        ));
        std::fs::write(&secret_file, "the secret of a leased bank\n").unwrap();
        let args = [
            "--max-interval-ms".to_string(),
            "1".to_string(),
            "--secret-file".to_string(),
            secret_file.display().to_string(),
            "--peer-timeout-ms".to_string(),
            peer_timeout_ms.to_string(),
        ];
        let bank = LocalBank::start(BRANCH.as_ref(), 3, &args).expect("start the branches");
        Self { bank, secret_file }
    }

    fn secret_arg(&self) -> &str {
        self.secret_file.to_str().unwrap()
    }

    /// A controller running until stopped, snapshots every 50 ms; `attach` or initialising.
    fn running(&self, name: &str, attach: bool) -> ControllerProcess {
        let mut args = vec!["--secret-file", self.secret_arg(), "--interval-ms", "50"];
        if attach {
            args.push("--attach");
        }
        ControllerProcess::start_named(&self.bank, name, "3000", &args)
    }

    /// An attaching controller run to completion.
    fn attach(&self, args: &[&str]) -> Output {
        Command::new(CONTROLLER)
            .arg("3000")
            .arg(self.bank.branches_file())
            .args(["--secret-file", self.secret_arg(), "--attach"])
            .args(["--format", "json"])
            .args(args)
            .run_limited()
    }
}

impl Drop for SecretBank {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.secret_file);
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill {name} {pid}");
}

fn ids(reports: &[Value]) -> Vec<u64> {
    reports
        .iter()
        .map(|report| report["snapshot_id"].as_u64().expect("an id"))
        .collect()
}

fn json_reports(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON report per line"))
        .collect()
}

/// The `error:` lines a controller printed.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect()
}

#[test]
fn a_second_controller_is_refused_with_the_holder_and_how_to_take_over() {
    let bank = SecretBank::start(3000);
    let first = bank.running("first", false);
    first.wait_for_reports(2, Duration::from_secs(20));

    let started = Instant::now();
    let second = bank.attach(&["--snapshots", "1"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );
    assert!(
        second.stdout.is_empty(),
        "the refused controller took no snapshot"
    );
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    let error = errors[0];
    for expected in [
        "cannot attach to branch",
        "controller lease is held by the controller at 127.0.0.1:",
        " ms from now at the latest",
        "--take-over",
    ] {
        assert!(error.contains(expected), "{expected:?} in {error}");
    }

    // The first controller never noticed: it goes on numbering its snapshots, all ok.
    let before = first.wait_for_reports(2, Duration::from_secs(1)).len();
    let reports = first.wait_for_reports(before + 3, Duration::from_secs(20));
    assert!(verdicts(&reports).iter().all(|v| v == "ok"), "{reports:?}");
    let ids = ids(&reports);
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    signal(first.pid(), "-INT");
    let (code, _, stderr) = first.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn take_over_ends_the_first_controllers_lease_and_it_stops_with_the_reason() {
    let bank = SecretBank::start(3000);
    let first = bank.running("first", false);
    first.wait_for_reports(2, Duration::from_secs(20));

    let second = bank.attach(&["--take-over", "--snapshots", "3", "--interval-ms", "30"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(0), "{stderr}");
    let taken = json_reports(&second);
    assert_eq!(verdicts(&taken), ["ok", "ok", "ok"], "{taken:?}");

    let (code, first_reports, first_stderr) = first.finish(Duration::from_secs(10));
    assert_eq!(code, Some(1), "{first_stderr}");
    let errors = error_lines(&first_stderr);
    assert_eq!(errors.len(), 1, "{first_stderr}");
    assert!(
        errors[0].contains("took over the bank's controller lease (--take-over)"),
        "{}",
        errors[0]
    );
    // No id of the second controller is one the first used.
    let first_ids = ids(&first_reports);
    let highest = first_ids.iter().max().copied().unwrap_or(0);
    assert!(
        ids(&taken).iter().all(|&id| id > highest),
        "the first reported {first_ids:?}, the second {:?}",
        ids(&taken)
    );
}

#[test]
fn a_killed_controllers_lease_ends_with_its_connection_and_a_second_attaches_at_once() {
    // A lease lapses only after 20 s of silence here: attaching sooner proves that the kernel's
    // close of the killed controller's connections ended it.
    let bank = SecretBank::start(20_000);
    let first = bank.running("first", false);
    first.wait_for_reports(1, Duration::from_secs(20));
    signal(first.pid(), "-KILL");
    let (code, _, _) = first.finish(Duration::from_secs(5));
    assert_eq!(code, None, "killed by a signal");

    let started = Instant::now();
    let second = bank.attach(&["--snapshots", "2", "--interval-ms", "30"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(0), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "at once");
    assert_eq!(verdicts(&json_reports(&second)), ["ok", "ok"]);
}

#[test]
fn a_frozen_controller_keeps_the_lease_until_it_lapses_and_stops_when_it_wakes() {
    let bank = SecretBank::start(1500);
    let frozen = bank.running("frozen", false);
    frozen.wait_for_reports(1, Duration::from_secs(20));
    signal(frozen.pid(), "-STOP");
    let stopped = Instant::now();

    let refused = bank.attach(&["--snapshots", "1"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stopped.elapsed() < Duration::from_millis(1500),
        "too slow to test within the lease: {:?}",
        stopped.elapsed()
    );
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("controller lease is held"), "{stderr}");

    // Past the lease's 1.5 s without a word from the frozen controller, it has lapsed.
    std::thread::sleep(Duration::from_millis(2000).saturating_sub(stopped.elapsed()));
    let successor = bank.running("successor", true);
    successor.wait_for_reports(2, Duration::from_secs(20));

    signal(frozen.pid(), "-CONT");
    let (code, _, frozen_stderr) = frozen.finish(Duration::from_secs(15));
    assert_eq!(code, Some(1), "{frozen_stderr}");
    let errors = error_lines(&frozen_stderr);
    assert_eq!(errors.len(), 1, "{frozen_stderr}");
    assert!(errors[0].contains("controller lease"), "{}", errors[0]);

    let before = successor.wait_for_reports(2, Duration::from_secs(1)).len();
    successor.wait_for_reports(before + 2, Duration::from_secs(20));
    signal(successor.pid(), "-TERM");
    let (code, reports, stderr) = successor.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(verdicts(&reports).iter().all(|v| v == "ok"), "{reports:?}");
}

#[test]
fn a_take_over_without_the_secret_or_with_a_proof_for_another_claim_deposes_no_one() {
    use common::{RawController, closed_within};
    use snapbank::auth::{Role, Secret};
    use snapbank::handshake::ControllerClaim;
    use snapbank::wire::{Body, pb};

    let bank = SecretBank::start(3000);
    let first = bank.running("first", false);
    first.wait_for_reports(1, Duration::from_secs(20));
    let secret = Secret::load(&bank.secret_file).unwrap();
    let wrong = Secret::from_bytes(b"not the secret of this bank".to_vec(), "test").unwrap();
    let take_over = ControllerClaim {
        controller: 5,
        take_over: true,
        rolls_back: false,
    };
    // The right secret, but a proof for the claim without take-over (as if the flag had been
    // set on the way); then a proof for the take-over under a wrong secret.
    let attempts = [(&secret, ControllerClaim::default()), (&wrong, take_over)];
    for (proving, proven) in attempts {
        let mut raw = RawController::connect(bank.bank.entries()[0].addr);
        let nonce = snapbank::auth::nonce();
        raw.send(Body::ControllerHello(pb::ControllerHello {
            nonce,
            take_over: true,
            controller: 5,
            rolls_back: false,
        }));
        let Body::Welcome(welcome) = raw.receive() else {
            panic!("expected Welcome");
        };
        let proof = proving.prove(
            Role::Controller,
            &welcome.nonce,
            "branch1",
            &proven.proof_context(),
        );
        raw.send(Body::Auth(pb::Auth { proof }));
        assert!(
            closed_within(&mut raw.stream, Duration::from_secs(5)),
            "{proven:?}: the connection must be closed, without a lease"
        );
    }
    // The first controller still holds every branch's lease and carries on.
    let before = first.wait_for_reports(1, Duration::from_secs(1)).len();
    first.wait_for_reports(before + 2, Duration::from_secs(20));
    signal(first.pid(), "-INT");
    let (code, reports, stderr) = first.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(verdicts(&reports).iter().all(|v| v == "ok"), "{reports:?}");
    assert!(!stderr.contains("took over"), "{stderr}");
}
