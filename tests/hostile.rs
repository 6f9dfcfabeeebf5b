//! A hostile client against a live, authenticated bank: every attack is logged, the attacker's
//! connection is closed, and afterwards the bank's snapshots still sum to the total and the
//! branch still works. Also: arbitrary bytes against the handshake, a crashed branch, and a
//! clean SIGTERM.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{RawController, claim_to_be, closed_within, connect_when_listening, write_frame};
use snapbank::auth::{Role, Secret};
use snapbank::local_bank::{LocalBank, output_within};
use snapbank::wire::{Body, pb};

const BRANCH: &str = env!("CARGO_BIN_EXE_branch");
const CONTROLLER: &str = env!("CARGO_BIN_EXE_controller");

/// A bank of `count` branches sharing a secret file, initialised by a first controller run.
struct SecureBank {
    bank: LocalBank,
    secret_file: PathBuf,
    secret: Secret,
}

impl SecureBank {
    fn start(count: usize) -> Self {
        let secret_file =
            std::env::temp_dir().join(format!("snapbank-secret-{}-{count}", std::process::id()));
        std::fs::write(&secret_file, "a secret of the bank for tests\n").unwrap();
        let secret = Secret::load(&secret_file).unwrap();
        let args = [
            "--max-interval-ms",
            "1",
            "--secret-file",
            secret_file.to_str().unwrap(),
            "--handshake-timeout-ms",
            "500",
            // A branch that stops is given up by its peers quickly here.
            "--peer-grace-ms",
            "300",
        ]
        .map(String::from);
        let bank = LocalBank::start(BRANCH.as_ref(), count, &args).unwrap();
        let bank = Self {
            bank,
            secret_file,
            secret,
        };
        let output = bank.controller(&["--snapshots", "2", "--interval-ms", "50"], false);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
        bank
    }

    fn controller(&self, args: &[&str], attach: bool) -> std::process::Output {
        let mut command = Command::new(CONTROLLER);
        command
            .arg((1000 * self.bank.entries().len()).to_string())
            .arg(self.bank.branches_file())
            .arg("--secret-file")
            .arg(&self.secret_file)
            .args(args);
        if attach {
            command.arg("--attach");
        }
        output_within(&mut command, Duration::from_secs(60)).unwrap()
    }

    fn addr(&self, index: usize) -> SocketAddr {
        self.bank.entries()[index].addr
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.bank.log_path(name)).unwrap()
    }

    /// An attached controller run: every snapshot must be ok and proven consistent.
    fn assert_snapshots_ok(&self, count: usize) {
        let output = self.controller(
            &["--snapshots", &count.to_string(), "--interval-ms", "40"],
            true,
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let total = 1000 * self.bank.entries().len();
        let n = self.bank.entries().len();
        let ok = format!(
            "total: {total} (ok; consistent cut, {} channels checked)",
            n * (n - 1)
        );
        assert_eq!(stdout.matches(&ok).count(), count, "{stdout}");
    }
}

impl Drop for SecureBank {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.secret_file);
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).unwrap()
}

/// Sends `bytes` and expects the branch to hang up.
fn attack(addr: SocketAddr, bytes: &[u8], what: &str) {
    let mut stream = connect(addr);
    // The branch may close before everything is written: that is the point.
    let _ = stream.write_all(bytes);
    assert!(
        closed_within(&mut stream, Duration::from_secs(5)),
        "{what}: connection not closed"
    );
}

#[test]
fn every_attack_is_refused_and_the_bank_still_balances() {
    let bank = SecureBank::start(3);
    let target = bank.addr(0);
    let secret = bank.secret.clone();

    attack(target, &[0xff; 64], "garbage");
    attack(
        target,
        &[0x80, 0x80, 0x80, 0x80, 0x08],
        "huge length prefix",
    );
    attack(target, &[3, 0x92, 0x03, 0x00], "unknown message");
    attack(
        target,
        &[4, 0x12, 0x02, 0x08, 0x64],
        "Transfer without handshake",
    );
    attack(target, &[2, 0x1a, 0x00], "InitSnapshot without handshake");
    let mut init = Vec::new();
    snapbank::wire::encode_frame(
        Body::InitBranch(pb::InitBranch {
            epoch: 0,
            balance: 1_000_000,
            all_branches: snapbank::wire::branch_list(bank.bank.entries()),
            secret: secret.as_bytes().to_vec(),
            ..Default::default()
        }),
        &mut init,
    );
    attack(
        target,
        &init,
        "second InitBranch, even with the right secret",
    );

    // A truncated frame: half of it, then the write side closed.
    let mut stream = connect(target);
    stream.write_all(&[10, 0x12, 0x02]).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(5)));

    // A silent connection is dropped after the handshake timeout (500 ms here).
    let mut silent = connect(target);
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)),
        "silent connection kept open"
    );

    // The controller handshake with a wrong secret.
    let wrong = Secret::from_bytes(b"not the secret of this bank".to_vec(), "test").unwrap();
    let mut stream = connect(target);
    let nonce = snapbank::auth::nonce();
    write_frame(
        &mut stream,
        Body::ControllerHello(pb::ControllerHello {
            nonce: nonce.clone(),
            ..Default::default()
        }),
    )
    .unwrap();
    let mut client = RawController::from_stream(stream);
    let Body::Welcome(welcome) = client.receive() else {
        panic!("expected Welcome");
    };
    assert!(
        !wrong.verify(&welcome.proof, Role::Branch, &nonce, "branch1", ""),
        "the branch's proof must not verify under another secret"
    );
    let proof = wrong.prove(Role::Controller, &welcome.nonce, "branch1", "");
    client.send(Body::Auth(pb::Auth { proof }));
    assert!(closed_within(&mut client.stream, Duration::from_secs(5)));

    // A replayed handshake: a proof that was right for one connection's nonce, sent on another.
    let mut first = RawController::connect(target);
    first.send(Body::ControllerHello(pb::ControllerHello {
        nonce: snapbank::auth::nonce(),
        ..Default::default()
    }));
    let Body::Welcome(old) = first.receive() else {
        panic!("expected Welcome");
    };
    let recorded = secret.prove(Role::Controller, &old.nonce, "branch1", "");
    let mut second = RawController::connect(target);
    second.send(Body::ControllerHello(pb::ControllerHello {
        nonce: snapbank::auth::nonce(),
        ..Default::default()
    }));
    let Body::Welcome(_) = second.receive() else {
        panic!("expected Welcome");
    };
    second.send(Body::Auth(pb::Auth { proof: recorded }));
    assert!(closed_within(&mut second.stream, Duration::from_secs(5)));
    drop(first);

    // A peer impostor: claims to be branch2 towards branch1 (branch1 dials branch2, never the
    // reverse), and claims a name that is not in the bank.
    for name in ["branch2", "mallory"] {
        let mut stream = connect(target);
        claim_to_be(&mut stream, name);
        assert!(closed_within(&mut stream, Duration::from_secs(5)), "{name}");
    }
    // A second connection for an existing pair: branch1 already dials branch3. A real
    // branch1 reconnecting would replace the channel's connection, but only after proving the
    // secret, which this one cannot.
    let mut stream = connect(bank.addr(2));
    claim_to_be(&mut stream, "branch1");
    assert!(
        closed_within(&mut stream, Duration::from_secs(5)),
        "duplicate pair connection"
    );

    // After all of it: every branch alive, snapshots proven and summing to the total.
    bank.assert_snapshots_ok(5);
    let mut bank_handle = bank;
    assert!(bank_handle.bank.exited().is_empty());

    let log = bank_handle.log("branch1");
    for expected in [
        "malformed length prefix",
        "exceeds the 65536-byte limit",
        "first frame holds no known message",
        "opened with Transfer",
        "opened with InitSnapshot",
        "InitBranch from 127.0.0.1",
        "this branch is already initialised",
        "closed in the middle of a frame",
        "sent no frame within 500 ms",
        "controller handshake with 127.0.0.1",
        "authentication failed",
        "this branch is the one that dials branch2",
        "claims to be \"mallory\", which is not a peer in this bank",
    ] {
        assert!(
            log.contains(expected),
            "branch1's log lacks {expected:?}:\n{log}"
        );
    }
    assert!(
        bank_handle
            .log("branch3")
            .contains("handshake with branch1 from 127.0.0.1")
    );
    bank_handle.bank.stop();
}

#[test]
fn arbitrary_bytes_after_a_hello_or_controller_hello_never_break_a_branch() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let bank = SecureBank::start(2);
    let target = bank.addr(1);
    let mut runner = TestRunner::new(Config {
        cases: 150,
        ..Config::default()
    });
    let strategy = (
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..200),
    );
    runner
        .run(&strategy, |(as_controller, bytes)| {
            let mut stream = connect(target);
            let first = if as_controller {
                Body::ControllerHello(pb::ControllerHello {
                    nonce: bytes.clone(),
                    ..Default::default()
                })
            } else {
                // branch1 is a real peer of branch2 (and already connected): the branch refuses
                // the duplicate, or, for another name, the stranger.
                Body::Hello(pb::Hello {
                    name: String::from_utf8_lossy(&bytes).into(),
                    nonce: bytes.clone(),
                    known_incarnation: 0,
                })
            };
            let _ = write_frame(&mut stream, first);
            let _ = stream.write_all(&bytes);
            prop_assert!(closed_within(&mut stream, Duration::from_secs(5)));
            Ok(())
        })
        .unwrap();
    bank.assert_snapshots_ok(3);
}

#[test]
fn sigterm_stops_a_branch_cleanly_and_its_peers_carry_on() {
    let mut bank = SecureBank::start(3);
    let pid = bank.bank.pids()[2];
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut waited = Duration::ZERO;
    while bank.bank.exited().is_empty() {
        assert!(
            waited < Duration::from_secs(10),
            "branch3 did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
        waited += Duration::from_millis(20);
    }
    let log = bank.log("branch3");
    assert!(
        log.contains("shutting down: no new transfers, flushing connections"),
        "{log}"
    );
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    // Its peers noticed, and still answer an attached controller: the snapshots are incomplete
    // (branch3 is gone) and say so, and the exit code is 1.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        bank.log("branch1")
            .contains("lost the connection to branch3")
    );
    let mut survivor = RawController::attach(bank.addr(0), "branch1", &bank.secret);
    survivor.send(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: 1000 }));
    let record = survivor.retrieve(1000);
    assert_eq!(
        record.status,
        pb::SnapshotStatus::CutShort as i32,
        "{record:?}"
    );
    assert_eq!(record.lost_peers, vec!["branch3".to_string()]);
    bank.bank.stop();
}

#[test]
fn a_killed_controller_leaves_the_bank_running_and_a_new_one_attaches_with_fresh_ids() {
    let bank = SecureBank::start(3);
    // A controller that never finishes, killed in the middle of its run.
    let mut running = Command::new(CONTROLLER)
        .arg("3000")
        .arg(bank.bank.branches_file())
        .arg("--secret-file")
        .arg(&bank.secret_file)
        .args(["--attach", "--interval-ms", "20"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    running.kill().unwrap();
    running.wait().unwrap();
    // A new controller with the same secret attaches; its ids start after every id seen.
    let output = bank.controller(
        &[
            "--snapshots",
            "3",
            "--interval-ms",
            "30",
            "--format",
            "json",
        ],
        true,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ids: Vec<u64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let report: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(report["verdict"], "ok", "{line}");
            report["snapshot_id"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(
        ids[0] > 3,
        "fresh ids, after the first run's 1-2 and the killed run's: {ids:?}"
    );
    // Without the secret, attaching is refused.
    let mut command = Command::new(CONTROLLER);
    command
        .arg("3000")
        .arg(bank.bank.branches_file())
        .args(["--attach", "--snapshots", "1"]);
    let output = output_within(&mut command, Duration::from_secs(30)).unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--attach needs --secret-file"));
    let wrong = std::env::temp_dir().join(format!("snapbank-wrong-{}", std::process::id()));
    std::fs::write(&wrong, "definitely not the right secret").unwrap();
    let mut command = Command::new(CONTROLLER);
    command
        .arg("3000")
        .arg(bank.bank.branches_file())
        .arg("--secret-file")
        .arg(&wrong)
        .args(["--attach", "--snapshots", "1"]);
    let output = output_within(&mut command, Duration::from_secs(30)).unwrap();
    std::fs::remove_file(&wrong).unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot attach to branch branch1")
            && stderr.contains("authentication failed"),
        "{stderr}"
    );
}

#[test]
fn a_squatter_claiming_a_peer_before_init_cannot_lock_the_real_peer_out() {
    let secret_file = std::env::temp_dir().join(format!("snapbank-squat-{}", std::process::id()));
    std::fs::write(&secret_file, "the bank's secret, for this test").unwrap();
    let args = [
        "--max-interval-ms",
        "1",
        "--secret-file",
        secret_file.to_str().unwrap(),
    ]
    .map(String::from);
    let bank = LocalBank::start(BRANCH.as_ref(), 2, &args).unwrap();
    // Before the bank exists, a silent stranger claims to be branch1 towards branch2 (which
    // branch1 dials), and holds on without ever answering the handshake.
    let mut squatters = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_when_listening(bank.entries()[1].addr);
        claim_to_be(&mut stream, "branch1");
        squatters.push(stream);
    }
    let mut command = Command::new(CONTROLLER);
    command
        .arg("2000")
        .arg(bank.branches_file())
        .arg("--secret-file")
        .arg(&secret_file)
        .args(["--snapshots", "3", "--interval-ms", "50"]);
    let output = output_within(&mut command, Duration::from_secs(60)).unwrap();
    std::fs::remove_file(&secret_file).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(
        stdout.matches("total: 2000 (ok; consistent cut").count(),
        3,
        "{stdout}"
    );
    drop(squatters);
}

#[test]
fn a_controller_with_a_secret_file_never_sends_the_secret() {
    use std::io::Read;
    use std::net::TcpListener;

    // Impostors listen where the branches should be.
    let impostors: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let file = std::env::temp_dir().join(format!("snapbank-never-{}", std::process::id()));
    let mut text = String::new();
    for (index, impostor) in impostors.iter().enumerate() {
        text += &format!(
            "b{index} 127.0.0.1 {}\n",
            impostor.local_addr().unwrap().port()
        );
    }
    std::fs::write(&file, text).unwrap();
    let secret_file = std::env::temp_dir().join(format!("snapbank-never-s-{}", std::process::id()));
    std::fs::write(&secret_file, "never on the wire, never ever").unwrap();
    let mut command = Command::new(CONTROLLER);
    command
        .arg("100")
        .arg(&file)
        .arg("--secret-file")
        .arg(&secret_file)
        .args(["--snapshots", "1", "--connect-timeout-ms", "1500"]);
    let controller =
        std::thread::spawn(move || output_within(&mut command, Duration::from_secs(30)));
    let mut seen = Vec::new();
    for impostor in &impostors {
        let (mut stream, _) = impostor.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut chunk = [0u8; 4096];
        // Read whatever it sends until it gives up on us.
        while let Ok(read) = stream.read(&mut chunk) {
            if read == 0 {
                break;
            }
            seen.extend_from_slice(&chunk[..read]);
        }
    }
    let output = controller.join().unwrap().unwrap();
    std::fs::remove_file(&file).unwrap();
    std::fs::remove_file(&secret_file).unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot attach to branch b0"), "{stderr}");
    assert!(!seen.is_empty(), "the controller sent its handshake");
    let secret = b"never on the wire, never ever";
    assert!(
        !seen.windows(secret.len()).any(|window| window == secret),
        "the secret went out on the wire"
    );
}

/// Kills a child process on drop, whatever happens.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A controller driving two listeners that never answer, stopped with `signal` once both have
/// been asked for snapshot 1's record (so it is in flight): its exit code and its stderr.
fn stop_a_controller_with_a_snapshot_in_flight(signal: &str) -> (Option<i32>, String) {
    use bytes::BytesMut;
    use snapbank::wire::FrameCodec;
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::Instant;
    use tokio_util::codec::Decoder;

    let listeners: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let dir = std::env::temp_dir().join(format!("snapbank-signal-{}{signal}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("branches.txt");
    let mut text = String::new();
    for (index, listener) in listeners.iter().enumerate() {
        let port = listener.local_addr().unwrap().port();
        text += &format!("b{index} 127.0.0.1 {port}\n");
    }
    std::fs::write(&file, text).unwrap();
    let stderr_path = dir.join("stderr");
    let mut controller = KillOnDrop(
        Command::new(CONTROLLER)
            .arg("100")
            .arg(&file)
            .args(["--seed", "7", "--interval-ms", "60000"])
            .args([
                "--retrieve-timeout-ms",
                "60000",
                "--link-timeout-ms",
                "60000",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut held = Vec::new();
    for listener in &listeners {
        listener.set_nonblocking(true).unwrap();
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the controller never connected");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(err) => panic!("accept: {err}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut codec, mut buffer) = (FrameCodec::default(), BytesMut::new());
        'frames: loop {
            while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                if let Some(Body::RetrieveSnapshot(_)) = frame.branch_message {
                    break 'frames;
                }
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).expect("the controller's requests");
            assert!(read > 0, "the controller closed the connection");
            buffer.extend_from_slice(&chunk[..read]);
        }
        held.push(stream);
    }
    let status = Command::new("kill")
        .args([signal, &controller.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = loop {
        if let Some(status) = controller.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the controller did not stop on {signal}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(held);
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (status.code(), stderr)
}

/// The controller's own lines about a stop, with the signal's name and the ages left out.
fn stop_lines(stderr: &str, signal: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|line| line.starts_with("controller:"))
        .map(|line| {
            let line = line.replace(signal, "SIGNAL");
            match (line.find("(started "), line.find(" ms ago")) {
                (Some(start), Some(end)) => {
                    format!("{}(started N{}", &line[..start], &line[end..])
                }
                _ => line,
            }
        })
        .collect()
}

#[test]
fn sigterm_stops_the_controller_as_sigint_does_listing_the_snapshots_in_flight() {
    let (term_code, term) = stop_a_controller_with_a_snapshot_in_flight("-TERM");
    let (int_code, int) = stop_a_controller_with_a_snapshot_in_flight("-INT");
    // An exit code, not death by the signal: nothing was reported, so nothing failed.
    assert_eq!(term_code, Some(0), "{term}");
    assert_eq!(int_code, Some(0), "{int}");
    let lines = stop_lines(&term, "SIGTERM");
    assert_eq!(lines, stop_lines(&int, "SIGINT"), "{term}\n{int}");
    assert_eq!(lines.len(), 2, "{term}");
    assert_eq!(
        lines[0],
        "controller: stopped by SIGNAL after 0 report(s), with 1 snapshot(s) in flight:"
    );
    assert!(
        lines[1].starts_with("controller:   snapshot 1 (started N ms ago at b")
            && lines[1].ends_with("): waiting for b0, b1"),
        "{}",
        lines[1]
    );
}
