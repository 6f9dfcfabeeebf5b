//! Faults from outside, for real: every connection of a live bank reset with `ss -K` again and
//! again, and branches frozen with SIGSTOP (shorter and longer than the grace period). The
//! assertions are on money and snapshots: every snapshot proven consistent, the total exact.

mod common;

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ControllerProcess, transfers_sent, verdicts};
use serde_json::Value;
use snapbank::local_bank::LocalBank;

const BRANCH: &str = env!("CARGO_BIN_EXE_branch");

/// Resets every TCP connection to or from `port` on this machine, as a NAT timeout or a switch
/// reboot would. Panics (loudly) where `ss -K` cannot kill sockets.
fn cut_connections(port: u16) {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let output = Command::new("ss")
        .args(["-K", &filter])
        .output()
        .expect("ss (iproute2) is needed to cut connections from outside");
    assert!(
        output.status.success(),
        "ss -K failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Checks once that `ss -K` really resets connections here (it needs CAP_NET_ADMIN and a kernel
/// with INET_DIAG_DESTROY), so a test cannot pass without any cut having happened.
fn assert_ss_kills_sockets() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (_server, _) = listener.accept().unwrap();
    cut_connections(port);
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut byte = [0u8; 1];
    let result = client.read(&mut byte);
    assert!(
        matches!(result, Ok(0) | Err(_))
            && !matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "ss -K did not reset a loopback connection (run the tests as root on a kernel with INET_DIAG_DESTROY): {result:?}"
    );
}

#[test]
fn cutting_every_connection_again_and_again_loses_no_money_and_no_snapshot() {
    assert_ss_kills_sockets();
    let args = ["--max-interval-ms", "0"].map(String::from);
    let bank = LocalBank::start(BRANCH.as_ref(), 4, &args).expect("start the branches");
    let ports: Vec<u16> = bank.entries().iter().map(|e| e.addr.port()).collect();
    let controller = ControllerProcess::start(
        &bank,
        "4000",
        &["--interval-ms", "50", "--snapshots", "400"],
    );
    // Every 1.5 s, 10 times: every peer and controller connection of every branch is reset.
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..10 {
        for &port in &ports {
            cut_connections(port);
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    let (code, reports, stderr) = controller.finish(Duration::from_secs(60));
    let verdicts = verdicts(&reports);
    let ok = verdicts.iter().filter(|v| *v == "ok").count();
    let not_ok: Vec<String> = reports
        .iter()
        .filter(|r| r["verdict"] != "ok")
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        (ok, reports.len()),
        (400, 400),
        "not ok: {not_ok:?}\n{stderr}"
    );
    assert!(
        reports
            .iter()
            .all(|r| r["total"] == 4000 && r["consistency"]["violations"] == Value::Array(vec![])),
        "every snapshot sums to 4000 and is a proven consistent cut"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("reconnected to branch"),
        "the cuts really hit the controller's links: {stderr}"
    );
    // Still trading after the last cut: the last snapshot counts more transfers than the one
    // taken at the last cut (about 1.5 s earlier).
    let last = transfers_sent(&reports[399]);
    let at_last_cut = transfers_sent(&reports[370]);
    assert!(last > at_last_cut, "{at_last_cut} -> {last} transfers");
    let mut bank = bank;
    assert!(
        bank.exited().is_empty(),
        "a branch died: {:?}",
        bank.exited()
    );
}

#[test]
fn a_frozen_branch_heals_within_the_grace_period_and_is_cut_short_beyond_it() {
    let args = [
        "--max-interval-ms",
        "0",
        "--peer-timeout-ms",
        "400",
        "--peer-grace-ms",
        "2000",
    ]
    .map(String::from);
    let mut bank = LocalBank::start(BRANCH.as_ref(), 3, &args).expect("start the branches");
    let frozen = bank.pids()[2].to_string();
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &frozen])
            .status()
            .expect("kill(1)");
        assert!(status.success());
    };
    let controller = ControllerProcess::start(
        &bank,
        "3000",
        &[
            "--interval-ms",
            "100",
            "--snapshots",
            "90",
            "--retrieve-timeout-ms",
            "5000",
            "--link-timeout-ms",
            "400",
        ],
    );
    // Short freeze: past the liveness timeout (connections declared broken and redialled),
    // within the grace period and the retrieve timeout: every snapshot completes, ok.
    std::thread::sleep(Duration::from_millis(1000));
    signal("-STOP");
    std::thread::sleep(Duration::from_millis(1200));
    signal("-CONT");
    // Long freeze: past the grace period. Snapshots then are cut short or incomplete, naming
    // branch3; the others carry on, and branch3 rejoins when it wakes.
    std::thread::sleep(Duration::from_millis(1500));
    let long_freeze = Instant::now();
    signal("-STOP");
    std::thread::sleep(Duration::from_millis(3500));
    signal("-CONT");
    let frozen_for = long_freeze.elapsed();
    let (_code, reports, stderr) = controller.finish(Duration::from_secs(60));
    let verdicts = verdicts(&reports);
    assert_eq!(reports.len(), 90, "{verdicts:?}\n{stderr}");
    assert!(
        !verdicts
            .iter()
            .any(|v| v == "mismatch" || v == "inconsistent"),
        "no snapshot is ever wrong: {verdicts:?}"
    );
    // Snapshots started before the long freeze (about 3.7 s in, 100 ms apart) were all ok.
    let before_long = 30;
    assert!(
        verdicts[..before_long].iter().all(|v| v == "ok"),
        "the short freeze healed: {verdicts:?}\n{stderr}"
    );
    // The long freeze made some snapshots incomplete, naming branch3.
    let incomplete: Vec<&Value> = reports
        .iter()
        .filter(|r| r["verdict"] == "incomplete")
        .collect();
    assert!(
        !incomplete.is_empty(),
        "a {} ms freeze past the grace period shows: {verdicts:?}",
        frozen_for.as_millis()
    );
    assert!(
        incomplete.iter().all(|r| r.to_string().contains("branch3")),
        "incomplete snapshots name branch3: {incomplete:?}"
    );
    // And the bank carried on: the last snapshots are ok again, branch3 included.
    assert!(
        verdicts[80..].iter().all(|v| v == "ok"),
        "the bank recovered: {verdicts:?}\n{stderr}"
    );
    assert!(bank.exited().is_empty());
}
