//! Bad input gets a one-line error naming the problem, and loses nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

use common::{RawController, RunLimited, bank, run_controller};
use std::time::{Duration, Instant};

use snapbank::local_bank::LocalBank;
use snapbank::wire::{self, Body, pb};

const BRANCH: &str = env!("CARGO_BIN_EXE_branch");
const CONTROLLER: &str = env!("CARGO_BIN_EXE_controller");

/// Writes `text` to a fresh file and returns its path.
fn branches_file(tag: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("snapbank-bad-{}-{tag}.txt", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the controller and returns (exit code, stderr).
fn controller_error(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(CONTROLLER).args(args).run_limited();
    assert!(output.stdout.is_empty(), "no report for bad input");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn each_branches_file_error_is_one_line_naming_file_and_line_with_exit_two() {
    let cases = [
        (
            "malformed",
            "b1 127.0.0.1 9090\nb2 127.0.0.1\n",
            ":2: expected `<name> <ip> <port>`",
        ),
        (
            "dupname",
            "b1 127.0.0.1 9090\n# x\nb1 127.0.0.1 9091\n",
            ":3: duplicate branch name \"b1\"",
        ),
        (
            "dupaddr",
            "b1 127.0.0.1 9090\nb2 127.0.0.1 9090\n",
            ":2: duplicate address 127.0.0.1:9090",
        ),
        (
            "badport",
            "b1 127.0.0.1 9090\nb2 127.0.0.1 99999\n",
            ":2: bad port \"99999\"",
        ),
        (
            "zeroport",
            "b1 127.0.0.1 0\nb2 127.0.0.1 9091\n",
            ":1: bad port \"0\"",
        ),
        (
            "badip",
            "b1 localhost:1 9090\nb2 127.0.0.1 9091\n",
            ":1: \"localhost:1\" is not an IP address",
        ),
        (
            "single",
            "b1 127.0.0.1 9090\n",
            ": a bank needs at least two branches, found 1",
        ),
        (
            "empty",
            "# nothing\n\n",
            ": a bank needs at least two branches, found 0",
        ),
    ];
    for (tag, text, expected) in cases {
        let path = branches_file(tag, text);
        let (code, stderr) = controller_error(&["100", path.to_str().unwrap()]);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(code, Some(2), "{tag}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{tag}: one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {}", path.display())) && stderr.contains(expected),
            "{tag}: {stderr}"
        );
    }
}

#[test]
fn missing_file_bad_total_and_bad_flags_exit_two() {
    let (code, stderr) = controller_error(&["100", "/nonexistent/branches.txt"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with("error: /nonexistent/branches.txt: cannot read file"),
        "{stderr}"
    );

    let path = branches_file("ok", "b1 127.0.0.1 9090\nb2 127.0.0.1 9091\n");
    let file = path.to_str().unwrap();
    let (code, stderr) = controller_error(&["4294967296", file]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("does not fit the protocol's 32-bit balances"),
        "{stderr}"
    );
    let (code, stderr) = controller_error(&["100", file, "--interval-ms", "0"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("needs --snapshots"), "{stderr}");
    let (code, _) = controller_error(&["-5", file]);
    assert_eq!(code, Some(2));
    let (code, stderr) = controller_error(&["100", file, "--snapshots", "0"]);
    assert_eq!(code, Some(2), "{stderr}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn unreachable_branches_time_out_with_a_clear_error() {
    // 127.0.0.2: no test's branch listens there, so nothing can take these ports meanwhile.
    let ports = snapbank::local_bank::free_ports(2).unwrap();
    let path = branches_file(
        "unreachable",
        &format!("b1 127.0.0.2 {}\nb2 127.0.0.2 {}\n", ports[0], ports[1]),
    );
    let (code, stderr) =
        controller_error(&["100", path.to_str().unwrap(), "--connect-timeout-ms", "300"]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, Some(1));
    assert!(
        stderr.starts_with("error: cannot reach branch b1 at 127.0.0.2:")
            && stderr.contains("within 300 ms"),
        "{stderr}"
    );
}

#[test]
fn a_branch_reports_its_port_in_the_port_file_or_exits_naming_it() {
    let dir = std::env::temp_dir().join(format!("snapbank-bad-{}-portfile", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A port file in a directory that does not exist: one line naming it, exit 1.
    let missing = dir.join("no-such-dir").join("b1.port");
    let output = Command::new(BRANCH)
        .args(["b1", "0", "--bind-ip", "127.0.0.1", "--port-file"])
        .arg(&missing)
        .run_limited();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: cannot write ") && last.contains("no-such-dir"),
        "{stderr}"
    );
    // LocalBank starts its branches on port 0 and learns their ports from the port files: the
    // branches file it writes names ports the branches really listen on.
    let bank = LocalBank::start(BRANCH.as_ref(), 2, &[]).unwrap();
    for entry in bank.entries() {
        assert_ne!(entry.addr.port(), 0);
        TcpStream::connect(entry.addr).expect("the branch listens where the file says");
    }
    let file = std::fs::read_to_string(bank.branches_file()).unwrap();
    assert!(file.contains(&format!(
        "branch2 127.0.0.1 {}",
        bank.entries()[1].addr.port()
    )));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sends `bytes` to `addr` and waits for the branch to close the connection.
fn assert_branch_hangs_up(addr: std::net::SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the branch to close the connection, got {other:?}"),
    }
}

#[test]
fn garbage_and_oversized_frames_drop_the_connection_and_the_bank_works_on() {
    let args = ["--max-interval-ms", "1"].map(String::from);
    let mut bank = LocalBank::start(BRANCH.as_ref(), 3, &args).unwrap();
    let target = bank.entries()[0].addr;
    // The branch is listening once it accepts a connection.
    let mut tries = 0;
    while TcpStream::connect(target).is_err() {
        tries += 1;
        assert!(tries < 200, "branch never listened");
        std::thread::sleep(Duration::from_millis(25));
    }
    // Garbage: not a varint32 length prefix.
    assert_branch_hangs_up(target, &[0xff; 32]);
    // A length prefix announcing a 2 GiB frame.
    assert_branch_hangs_up(target, &[0x80, 0x80, 0x80, 0x80, 0x08]);
    // A well-formed frame that is not protobuf.
    assert_branch_hangs_up(target, &[4, 0xff, 0xff, 0xff, 0xff]);
    // A Transfer before any identification: nobody may mint money.
    assert_branch_hangs_up(target, &[4, 0x12, 0x02, 0x08, 0x64]);

    let output = Command::new(CONTROLLER)
        .arg("3000")
        .arg(bank.branches_file())
        .args(["--interval-ms", "30", "--snapshots", "10"])
        .run_limited();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(
        stdout
            .matches("total: 3000 (ok; consistent cut, 6 channels checked)")
            .count(),
        10,
        "{stdout}"
    );
    assert!(bank.exited().is_empty(), "no branch crashed");

    let log = std::fs::read_to_string(bank.log_path("branch1")).unwrap();
    for expected in [
        "malformed length prefix",
        "frame of 2147483648 bytes exceeds the 65536-byte limit",
        "undecodable frame",
        "opened with Transfer; a connection must start with Hello, InitBranch or ControllerHello; closing",
    ] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
    bank.stop();
}

#[test]
fn a_name_over_the_limit_is_refused_at_every_door() {
    let long = "b".repeat(256);
    // The branch command line.
    let output = Command::new(BRANCH).args([&long, "0"]).run_limited();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("255-byte limit"));
    // The branches file.
    let dir = std::env::temp_dir().join(format!("snapbank-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("branches.txt");
    std::fs::write(&file, format!("{long} 127.0.0.1 9000\nb 127.0.0.1 9001\n")).unwrap();
    let output = run_controller("10", &file, &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(":1: ") && stderr.contains("255-byte limit"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    // InitBranch.
    let bank = bank(2, "1000");
    let mut raw = RawController::connect(bank.entries()[0].addr);
    let mut all_branches = wire::branch_list(bank.entries());
    all_branches[1].name = long;
    raw.send(Body::InitBranch(pb::InitBranch {
        epoch: 0,
        balance: 10,
        all_branches,
        secret: Vec::new(),
        ..Default::default()
    }));
    let Body::Refusal(pb::Refusal { reason, .. }) = raw.receive() else {
        panic!("expected a Refusal");
    };
    assert!(reason.contains("255-byte limit"), "{reason}");
}

#[test]
fn a_branch_given_another_branchs_port_is_refused_with_the_reason() {
    let bank = bank(2, "1000");
    // The file says branch2 is where branch1 listens, and the reverse: names and ports swapped.
    let swapped = common::swapped_branches_file(&bank);
    let output = run_controller("100", &swapped, &["--snapshots", "1"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("names and ports swapped"),
        "{stderr}"
    );
}

#[test]
fn rerunning_the_controller_against_a_running_bank_says_why_and_what_to_do() {
    let bank = bank(3, "5");
    let first = run_controller(
        "300",
        &bank.branches_file(),
        &["--snapshots", "2", "--interval-ms", "20"],
    );
    assert!(first.status.success());
    let started = Instant::now();
    let second = run_controller(
        "300",
        &bank.branches_file(),
        &["--snapshots", "2", "--interval-ms", "20"],
    );
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("already initialised") && stderr.contains("--attach"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "said so at once, not after a retrieve timeout"
    );
    assert!(String::from_utf8_lossy(&second.stdout).is_empty());
}
