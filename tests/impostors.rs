//! Parties that break the channel protocol: a squatter holding a restarting branch's port,
//! strangers forging channel frames in a bank without a secret, and a member whose connection
//! sends a frame out of place. Whatever one connection says ends at most that connection: the
//! real peer takes the channel back, and the bank's snapshots are ok again once the impostor is
//! gone.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{ControllerProcess, RawPeer, SecretDir, closed_within, verdicts, write_frame};
use serde_json::Value;
use snapbank::auth::Secret;
use snapbank::local_bank::LocalBank;
use snapbank::wire::{self, Body, pb};

const BRANCH: &str = env!("CARGO_BIN_EXE_branch");

/// No snapshot is wrong, and the last `last` are ok with `total`.
fn assert_healed(reports: &[Value], total: u64, last: usize, stderr: &str) {
    for report in reports {
        match report["verdict"].as_str() {
            Some("ok") => assert_eq!(report["total"], total, "{report}"),
            Some("incomplete") => {}
            other => panic!("a wrong snapshot ({other:?}): {report}"),
        }
    }
    let tail = &reports[reports.len().saturating_sub(last)..];
    let tail_log: Vec<&str> = stderr.lines().rev().take(15).collect();
    assert!(
        tail.len() == last && tail.iter().all(|report| report["verdict"] == "ok"),
        "the last {last} snapshots after the impostor left: {:?}; controller log (newest first): {tail_log:?}",
        verdicts(tail)
    );
}

/// A process on `addr` that answers every connection with a `Refusal` and closes it, as
/// anything holding a restarting branch's port might. Stops (and frees the port) on drop.
struct Squatter {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Squatter {
    fn bind(addr: SocketAddr) -> Self {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(listener) => break listener,
                Err(err) if Instant::now() < deadline => {
                    eprintln!("squatter waiting for {addr}: {err}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => panic!("the squatter cannot bind {addr}: {err}"),
            }
        };
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            std::thread::spawn(move || refuse(stream));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Self {
            stop,
            answered,
            thread: Some(thread),
        }
    }
}

/// Reads the first frame's bytes, answers with a `Refusal` and closes, as a branch turning a
/// connection away does (closing with the first frame unread would reset the connection).
fn refuse(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut chunk = [0u8; 4096];
    let _ = stream.read(&mut chunk);
    let _ = write_frame(
        &mut stream,
        wire::refusal("this port is not yours: go away"),
    );
    let _ = stream.shutdown(std::net::Shutdown::Write);
    while matches!(stream.read(&mut chunk), Ok(read) if read > 0) {}
}

impl Drop for Squatter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_squatter_refusing_everyone_during_a_restart_does_not_cut_the_branch_off() {
    let secret = SecretDir::new("squatter");
    let (mut bank, controller) = common::durable_pair_with_controller(&secret, "20", "90", "3000");
    std::thread::sleep(Duration::from_millis(1500));
    let b2 = bank.entries()[1].addr;
    bank.kill(1);
    let squatter = Squatter::bind(b2);
    std::thread::sleep(Duration::from_millis(2000));
    let answered = squatter.answered.load(Ordering::Relaxed);
    drop(squatter);
    bank.restart(1, &[]).unwrap();
    let (_code, reports, stderr) = controller.finish(Duration::from_secs(60));
    assert!(
        answered >= 2,
        "the squatter refused only {answered} connection(s): the test did not test"
    );
    assert_eq!(reports.len(), 90, "{stderr}");
    // b2 is back about 3.5 s into the 9 s run: the last 3 s of snapshots are all ok.
    assert_healed(&reports, 2000, 30, &stderr);
}

/// A stranger's connection claiming to be branch `name` in a bank without a secret.
fn claim(addr: SocketAddr, name: &str, acceptor: &str) -> RawPeer {
    RawPeer::dial(addr, name, acceptor, &Secret::none())
}

#[test]
fn forged_frames_in_a_bank_without_a_secret_end_only_the_strangers_connection() {
    let args = ["--max-interval-ms", "20"].map(String::from);
    let bank = LocalBank::start(BRANCH.as_ref(), 4, &args).unwrap();
    // Initialised by an original-schema controller: the bank has no secret.
    let controller = ControllerProcess::start(
        &bank,
        "4000",
        &[
            "--compat",
            "persistent",
            "--interval-ms",
            "200",
            "--retrieve-delay-ms",
            "300",
            "--snapshots",
            "50",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let [b3, b4] = [bank.entries()[2].addr, bank.entries()[3].addr];

    // A stranger claiming branch1 towards branch3 tries to learn branch3's incarnation from the
    // Resume branch3 would answer with.
    let mut spy = claim(b3, "branch1", "branch3");
    spy.stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let learned = match spy.receive() {
        Some(Body::Resume(resume)) => Some(resume.incarnation),
        _ => None,
    };
    drop(spy);
    let incarnation = learned.unwrap_or(0x5eed);

    // Each forgery claims branch3 towards branch4, on a connection of its own.
    let forgeries: [(&str, Vec<Body>); 4] = [
        (
            "a Resume from another incarnation",
            vec![Body::Resume(pb::Resume {
                epoch: 0,
                incarnation: incarnation ^ 1,
                received: 0,
            })],
        ),
        (
            "a Refusal",
            vec![wire::final_refusal(
                snapbank::core::RefusalKind::NewIncarnation,
                "forged: you are a new incarnation",
            )],
        ),
        (
            "a Resume acknowledging 2^40 frames",
            vec![Body::Resume(pb::Resume {
                epoch: 0,
                incarnation,
                received: 1 << 40,
            })],
        ),
        (
            "a transfer after a position gap",
            vec![
                Body::Resume(pb::Resume {
                    epoch: 0,
                    incarnation,
                    received: 0,
                }),
                Body::Transfer(pb::Transfer {
                    money: 1,
                    seq: 1,
                    pos: 1_000_000,
                }),
            ],
        ),
    ];
    for (what, frames) in forgeries {
        let mut stranger = claim(b4, "branch3", "branch4");
        for frame in frames {
            stranger.send(frame);
        }
        assert!(
            closed_within(&mut stranger.stream, Duration::from_secs(5)),
            "branch4 kept the connection that sent {what}"
        );
    }
    let (_code, reports, stderr) = controller.finish(Duration::from_secs(60));
    assert_eq!(reports.len(), 50, "{stderr}");
    // The forgeries are over about 2.5 s into the 10 s run: the last 4 s of snapshots are ok.
    assert_healed(&reports, 4000, 20, &stderr);
    assert!(
        learned.is_none(),
        "a stranger that merely connected learned branch3's incarnation {learned:x?}"
    );
}

#[test]
fn a_member_whose_connection_breaks_the_protocol_gets_its_channel_back_on_the_next() {
    let secret_dir = SecretDir::new("protocol-breaker");
    let secret = secret_dir.secret();
    let (bank, mut controller) = common::bank_with_the_test_as_a0(BRANCH, &secret_dir);
    let target = bank.entries()[0].addr;
    let transfer = |pos: u64, seq: u64| Body::Transfer(pb::Transfer { money: 5, seq, pos });
    let resume = || {
        Body::Resume(pb::Resume {
            epoch: 0,
            incarnation: 7,
            received: 0,
        })
    };
    // First connection: one good transfer, then one after a gap.
    let mut first = RawPeer::dial(target, "a0", "branch1", &secret);
    first.send(resume());
    let Some(Body::Resume(_)) = first.receive() else {
        panic!("expected branch1's Resume");
    };
    first.send(transfer(1, 1));
    first.send(transfer(3, 2));
    let refusal = std::iter::from_fn(|| first.receive())
        .find_map(|body| match body {
            Body::Refusal(refusal) => Some(refusal),
            _ => None,
        })
        .expect("a Refusal naming the gap before the connection closes");
    assert!(refusal.reason.contains("gap"), "{refusal:?}");
    assert!(closed_within(&mut first.stream, Duration::from_secs(5)));
    // Second connection, same incarnation: the channel resumes where it was.
    let mut second = RawPeer::dial(target, "a0", "branch1", &secret);
    second.send(resume());
    match second.receive() {
        Some(Body::Resume(_)) => {}
        other => panic!("the channel was given up: {other:?}"),
    }
    second.send(transfer(2, 2));
    // Both good transfers were credited, the one after the gap was not (branch1's own record
    // of what it received from a0; its balance also moves with what it sends).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 1;
    let received = loop {
        controller.send(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: id }));
        let record = controller.retrieve(id);
        let from_a0 = record
            .channels
            .iter()
            .find(|channel| channel.peer == "a0")
            .map(|channel| (channel.received_count, channel.received_amount));
        if from_a0 == Some((2, 10)) || Instant::now() >= deadline {
            break from_a0;
        }
        id += 1;
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        received,
        Some((2, 10)),
        "(transfers, amount) branch1 received from a0"
    );
}

#[test]
fn an_unnumbered_transfer_in_an_authenticated_bank_is_refused() {
    let secret = SecretDir::new("seq0");
    let (bank, mut controller) = common::bank_with_the_test_as_a0(BRANCH, &secret);
    let target = bank.entries()[0].addr;
    let mut peer = RawPeer::dial(target, "a0", "branch1", &secret.secret());
    // The dialler states who it is first; the acceptor answers with its own Resume.
    write_frame(
        &mut peer.stream,
        Body::Resume(pb::Resume {
            epoch: 0,
            incarnation: 7,
            received: 0,
        }),
    )
    .unwrap();
    let Some(Body::Resume(_)) = peer.receive() else {
        panic!("expected the branch's Resume");
    };
    // Positioned, but without a transfer number: refused, and the connection closed.
    write_frame(
        &mut peer.stream,
        Body::Transfer(pb::Transfer {
            money: 5,
            seq: 0,
            pos: 1,
        }),
    )
    .unwrap();
    let refusal = std::iter::from_fn(|| peer.receive())
        .find_map(|body| match body {
            Body::Refusal(pb::Refusal { reason, .. }) => Some(reason),
            _ => None,
        })
        .expect("a Refusal before the connection closes");
    assert!(refusal.contains("without a sequence number"), "{refusal}");
    // The money was not credited: branch1 still holds its 100.
    controller.send(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: 1 }));
    controller.send(Body::RetrieveSnapshot(pb::RetrieveSnapshot {
        snapshot_id: 1,
        wait_ms: 0,
    }));
    let record = loop {
        if let Body::ReturnSnapshot(pb::ReturnSnapshot {
            local_snapshot: Some(local),
        }) = controller.receive()
        {
            break local;
        }
    };
    assert_eq!(record.balance, 100, "{record:?}");
}
