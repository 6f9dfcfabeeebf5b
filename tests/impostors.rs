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

use bytes::BytesMut;
use common::{ControllerProcess, RawController, closed_within, verdicts, write_frame};
use serde_json::Value;
use snapbank::auth::{Role, Secret};
use snapbank::local_bank::{LocalBank, free_ports};
use snapbank::wire::{self, Body, FrameCodec, pb};
use tokio_util::codec::Decoder;

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
    let dir = std::env::temp_dir().join(format!("snapbank-squatter-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, "the secret of the squatter test's bank\n").unwrap();
    let args = [
        "--max-interval-ms",
        "20",
        "--secret-file",
        secret_file.to_str().unwrap(),
    ]
    .map(String::from);
    let mut bank = LocalBank::start_durable(BRANCH.as_ref(), 2, &args).unwrap();
    let controller = ControllerProcess::start(
        &bank,
        "2000",
        &[
            "--secret-file",
            secret_file.to_str().unwrap(),
            "--interval-ms",
            "100",
            "--snapshots",
            "90",
            "--retrieve-timeout-ms",
            "3000",
            "--link-timeout-ms",
            "1000",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let b2 = bank.entries()[1].addr;
    bank.kill(1);
    let squatter = Squatter::bind(b2);
    std::thread::sleep(Duration::from_millis(2000));
    let answered = squatter.answered.load(Ordering::Relaxed);
    drop(squatter);
    bank.restart(1, &[]).unwrap();
    let (_code, reports, stderr) = controller.finish(Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        answered >= 2,
        "the squatter refused only {answered} connection(s): the test did not test"
    );
    assert_eq!(reports.len(), 90, "{stderr}");
    // b2 is back about 3.5 s into the 9 s run: the last 3 s of snapshots are all ok.
    assert_healed(&reports, 2000, 30, &stderr);
}

/// A raw peer connection claiming to be branch `name`, past the handshake: in a bank without
/// a secret anybody can compute the proofs ([`Secret::none`]).
struct Stranger {
    stream: TcpStream,
    codec: FrameCodec,
    buffer: BytesMut,
}

impl Stranger {
    fn claim(addr: SocketAddr, name: &str, acceptor: &str) -> Self {
        Self::dial(addr, name, acceptor, &Secret::none())
    }

    fn dial(addr: SocketAddr, name: &str, acceptor: &str, secret: &Secret) -> Self {
        let mut stream = common::connect_when_listening(addr);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let nonce = snapbank::auth::nonce();
        write_frame(
            &mut stream,
            Body::Hello(pb::Hello {
                name: name.into(),
                nonce: nonce.clone(),
                known_incarnation: 0,
            }),
        )
        .unwrap();
        let mut stranger = Self {
            stream,
            codec: FrameCodec::default(),
            buffer: BytesMut::new(),
        };
        let Some(Body::Welcome(welcome)) = stranger.receive() else {
            panic!("expected a Welcome from {acceptor}");
        };
        let proof = secret.prove(Role::Dial, &welcome.nonce, name, acceptor);
        stranger.send(Body::Auth(pb::Auth { proof }));
        stranger
    }

    fn send(&mut self, body: Body) {
        write_frame(&mut self.stream, body).unwrap();
    }

    /// The next frame, or `None` once the connection is closed or silent for the read timeout.
    fn receive(&mut self) -> Option<Body> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buffer).ok()? {
                return frame.branch_message;
            }
            let mut chunk = [0u8; 4096];
            let read = self.stream.read(&mut chunk).ok()?;
            if read == 0 {
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
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
    let mut spy = Stranger::claim(b3, "branch1", "branch3");
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
                incarnation,
                received: 1 << 40,
            })],
        ),
        (
            "a transfer after a position gap",
            vec![
                Body::Resume(pb::Resume {
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
        let mut stranger = Stranger::claim(b4, "branch3", "branch4");
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
    let dir = std::env::temp_dir().join(format!("snapbank-breaker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, "the secret of the protocol breaker test\n").unwrap();
    let secret = Secret::load(&secret_file).unwrap();
    let args = [
        "--max-interval-ms",
        "1000",
        "--secret-file",
        secret_file.to_str().unwrap(),
    ]
    .map(String::from);
    let bank = LocalBank::start(BRANCH.as_ref(), 1, &args).unwrap();
    let target = bank.entries()[0].addr;
    // The bank: "a0" (this test, which dials since its name sorts first) and branch1.
    let mut members = wire::branch_list(bank.entries());
    members.insert(
        0,
        pb::init_branch::Branch {
            name: "a0".into(),
            ip: "127.0.0.1".into(),
            port: u32::from(free_ports(1).unwrap()[0]),
        },
    );
    let mut controller = RawController::attach(target, "branch1", &secret);
    controller.send(Body::InitBranch(pb::InitBranch {
        balance: 100,
        all_branches: members,
        secret: Vec::new(),
        ..Default::default()
    }));
    let transfer = |pos: u64, seq: u64| Body::Transfer(pb::Transfer { money: 5, seq, pos });
    let resume = || {
        Body::Resume(pb::Resume {
            incarnation: 7,
            received: 0,
        })
    };
    // First connection: one good transfer, then one after a gap.
    let mut first = Stranger::dial(target, "a0", "branch1", &secret);
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
    let mut second = Stranger::dial(target, "a0", "branch1", &secret);
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
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        received,
        Some((2, 10)),
        "(transfers, amount) branch1 received from a0"
    );
}
