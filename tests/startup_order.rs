//! Frames that reach a branch before its own `InitBranch` are applied, in order, once it comes;
//! a repeated `InitBranch` changes nothing. Drives real branch processes with a raw protocol
//! client, so the controller's own pacing cannot hide a problem.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::RawController;
use snapbank::local_bank::LocalBank;
use snapbank::wire::{self, Body, pb};

const BRANCH: &str = env!("CARGO_BIN_EXE_branch");

fn init(balance: u32, bank: &LocalBank) -> Body {
    // No secret: what a controller speaking only the original schema sends.
    Body::InitBranch(pb::InitBranch {
        epoch: 0,
        balance,
        all_branches: wire::branch_list(bank.entries()),
        ..Default::default()
    })
}

#[test]
fn transfers_sent_before_the_receiver_is_initialised_are_all_applied() {
    // As fast as possible, so branch1 has plenty to send while branch2 is not initialised.
    let args = ["--max-interval-ms", "0"].map(String::from);
    let bank = LocalBank::start(BRANCH.as_ref(), 2, &args).unwrap();
    let mut first = RawController::connect(bank.entries()[0].addr);
    let mut second = RawController::connect(bank.entries()[1].addr);
    first.send(init(500, &bank));
    std::thread::sleep(Duration::from_millis(300));
    // A repeated InitBranch must not create money, and the controller is told why.
    first.send(init(1_000_000, &bank));
    let Body::Refusal(pb::Refusal { reason, .. }) = first.receive() else {
        panic!("expected a Refusal of the second InitBranch");
    };
    assert!(reason.contains("already initialised"), "{reason}");
    second.send(init(500, &bank));
    std::thread::sleep(Duration::from_millis(200));

    for id in 1..=5 {
        let initiator = if id % 2 == 0 { &mut first } else { &mut second };
        initiator.send(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: id }));
        let a = first.retrieve(id);
        let b = second.retrieve(id);
        for local in [&a, &b] {
            assert_eq!(
                local.status,
                pb::SnapshotStatus::Complete as i32,
                "{local:?}"
            );
            assert_eq!(local.snapshot_id, id);
            assert_eq!(local.channel_state.len(), 1);
        }
        let total: u64 = [&a, &b]
            .iter()
            .map(|l| {
                u64::from(l.balance) + l.channel_state.iter().map(|&c| u64::from(c)).sum::<u64>()
            })
            .sum();
        assert_eq!(total, 1000, "snapshot {id}: {a:?} {b:?}");
    }
    // Both sides really traded.
    let log = std::fs::read_to_string(bank.log_path("branch2")).unwrap();
    assert!(log.contains("initialised with balance 500"), "{log}");
    assert!(
        log.contains("branch1 connected before InitBranch; holding its frames"),
        "{log}"
    );
    let log = std::fs::read_to_string(bank.log_path("branch1")).unwrap();
    assert!(
        log.contains("InitBranch refused: this branch is already initialised"),
        "{log}"
    );
}

#[test]
fn retrieving_an_unknown_snapshot_says_so_and_a_retrieved_one_can_be_asked_again() {
    let bank = LocalBank::start(BRANCH.as_ref(), 2, &[]).unwrap();
    let mut first = RawController::connect(bank.entries()[0].addr);
    let mut second = RawController::connect(bank.entries()[1].addr);
    first.send(init(10, &bank));
    second.send(init(10, &bank));
    // Never started: with (almost) no wait, the answer is immediate and says unknown. (No
    // wait_ms at all, what an original-schema controller sends, holds it until the snapshot
    // begins: tests/interop.)
    first.send(Body::RetrieveSnapshot(pb::RetrieveSnapshot {
        snapshot_id: 42,
        wait_ms: 1,
    }));
    let Body::ReturnSnapshot(pb::ReturnSnapshot {
        local_snapshot: Some(unknown),
    }) = first.receive()
    else {
        panic!("expected ReturnSnapshot");
    };
    assert_eq!(unknown.status, pb::SnapshotStatus::UnknownSnapshot as i32);
    assert_eq!(unknown.snapshot_id, 42);

    first.send(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: 1 }));
    assert_eq!(
        first.retrieve(1).status,
        pb::SnapshotStatus::Complete as i32
    );
    assert_eq!(
        second.retrieve(1).status,
        pb::SnapshotStatus::Complete as i32
    );
    // A retrieved record is freed, but a copy is kept for a controller that lost the answer
    // with its connection: asking again gives the same record.
    let again = first.retrieve(1);
    assert_eq!(again.status, pb::SnapshotStatus::Complete as i32);
    assert_eq!(again.snapshot_id, 1);
}

/// Resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_controller_that_never_reads_its_answers_is_cut_off_with_memory_bounded() {
    let bank = LocalBank::start(BRANCH.as_ref(), 2, &[]).unwrap();
    let target = bank.entries()[0].addr;
    let mut flooder = RawController::connect(target);
    // A real controller connection (it initialised the branch) that then misbehaves.
    flooder.send(init(10, &bank));
    flooder
        .stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = Vec::new();
    for id in 0..1000u32 {
        wire::encode_frame(
            Body::RetrieveSnapshot(pb::RetrieveSnapshot {
                snapshot_id: id,
                wait_ms: 0,
            }),
            &mut request,
        );
    }
    // Up to ~1.5 million requests (about 9 MB), never reading a single answer; the branch may
    // cut us off before we are done, so write errors are expected.
    for _ in 0..1500 {
        if flooder.stream.write_all(&request).is_err() {
            break;
        }
    }
    let mut drained = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match flooder.stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(read) => drained += read,
        }
    }
    let rss = rss_kib(bank.pids()[0]);
    assert!(rss < 64 * 1024, "branch1 holds {rss} KiB after the flood");
    let log = std::fs::read_to_string(bank.log_path("branch1")).unwrap();
    assert!(
        log.contains("is not reading its answers"),
        "drained {drained} bytes; log:\n{log}"
    );
    // branch1 still works: branch2's snapshot needs branch1's marker to finish. (No controller
    // can attach to branch1: its bank has no secret, so attaching is refused.)
    let mut second = RawController::connect(bank.entries()[1].addr);
    second.send(init(10, &bank));
    second.send(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: 1 }));
    assert_eq!(
        second.retrieve(1).status,
        pb::SnapshotStatus::Complete as i32
    );
    let mut attach = std::net::TcpStream::connect(target).unwrap();
    common::write_frame(
        &mut attach,
        Body::ControllerHello(pb::ControllerHello {
            nonce: snapbank::auth::nonce(),
            ..Default::default()
        }),
    )
    .unwrap();
    assert!(common::closed_within(&mut attach, Duration::from_secs(5)));
    let log = std::fs::read_to_string(bank.log_path("branch1")).unwrap();
    assert!(log.contains("controller handshake from 127.0.0.1"), "{log}");
}
