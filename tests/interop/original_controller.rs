//! A minimal original-schema controller, as public implementations of the exercise write them:
//! blocking sockets, v1 messages only ([`super::v1`]), no secret, no `wait_ms`, no status read.
//! It trusts every `ReturnSnapshot` it gets as final, which is the hazard snapbank's branches
//! must guard against.
//!
//! Two connection patterns: [`Pattern::PerCommand`] opens a new connection for every command
//! (`InitBranch` closed at once, one per `InitSnapshot`, one per `RetrieveSnapshot` with the
//! answer read back on it); [`Pattern::Persistent`] keeps one connection per branch and reads
//! each branch's answers on it in order. Either way it asks every branch right after
//! `InitSnapshot` (unless given a delay), the requests all written before any answer is read.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::v1::{self, Msg};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    PerCommand,
    Persistent,
}

/// One snapshot as this controller saw it: each branch's answer, in branches order.
#[derive(Debug)]
pub struct Snapshot {
    pub id: u32,
    pub records: Vec<v1::LocalSnapshot>,
}

impl Snapshot {
    /// Balances plus money recorded in transit.
    pub fn total(&self) -> u64 {
        self.records
            .iter()
            .map(|r| {
                u64::from(r.balance) + r.channel_state.iter().map(|&c| u64::from(c)).sum::<u64>()
            })
            .sum()
    }

    /// The exercise's output format.
    pub fn to_text(&self, names: &[String]) -> String {
        let mut out = format!("snapshot_id: {}\n", self.id);
        for (index, (name, record)) in names.iter().zip(&self.records).enumerate() {
            out += &format!("{name}: {}", record.balance);
            let senders = names.iter().enumerate().filter(|&(k, _)| k != index);
            for ((_, from), amount) in senders.zip(&record.channel_state) {
                out += &format!(", {from}->{name}: {amount}");
            }
            out.push('\n');
        }
        out
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    for _ in 0..200 {
        if let Ok(stream) = TcpStream::connect(addr) {
            stream
                .set_read_timeout(Some(Duration::from_secs(15)))
                .unwrap();
            return stream;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("branch at {addr} never listened");
}

fn read_answer(stream: &mut TcpStream, addr: SocketAddr) -> v1::LocalSnapshot {
    match v1::read(stream) {
        Ok(Some(Some(Msg::ReturnSnapshot(v1::ReturnSnapshot {
            local_snapshot: Some(local),
        })))) => local,
        other => panic!("expected a ReturnSnapshot from {addr}, got {other:?}"),
    }
}

/// Initialises the bank at `branches` (`(name, address)` in file order) with `total` split
/// evenly, then takes `count` snapshots, starting each at the next branch in turn, and
/// retrieving every record `retrieve_delay` after `InitSnapshot`.
pub fn run(
    branches: &[(String, SocketAddr)],
    total: u32,
    pattern: Pattern,
    count: u32,
    retrieve_delay: Duration,
) -> Vec<Snapshot> {
    let n = branches.len() as u32;
    let all_branches: Vec<v1::Branch> = branches
        .iter()
        .map(|(name, addr)| v1::Branch {
            name: name.clone(),
            ip: addr.ip().to_string(),
            port: u32::from(addr.port()),
        })
        .collect();
    let mut persistent: Vec<TcpStream> = Vec::new();
    for (index, (_, addr)) in branches.iter().enumerate() {
        let balance = total / n + u32::from((index as u32) < total % n);
        let mut stream = connect(*addr);
        let init = Msg::InitBranch(v1::InitBranch {
            balance,
            all_branches: all_branches.clone(),
        });
        v1::write(&mut stream, init).unwrap();
        if pattern == Pattern::Persistent {
            persistent.push(stream);
        }
        // Per command: the InitBranch connection is closed at once (dropped here).
    }
    // Let money move before the first snapshot.
    std::thread::sleep(Duration::from_millis(300));
    let mut snapshots = Vec::new();
    for id in 1..=count {
        let initiator = ((id - 1) % n) as usize;
        let start = Msg::InitSnapshot(v1::InitSnapshot { snapshot_id: id });
        // Per command, the connections for the retrievals are opened ahead, so the requests go
        // out right behind InitSnapshot, every one of them before the snapshot can be finished.
        let mut asking: Vec<TcpStream> = match pattern {
            Pattern::PerCommand => branches.iter().map(|(_, addr)| connect(*addr)).collect(),
            Pattern::Persistent => Vec::new(),
        };
        let streams = match pattern {
            Pattern::PerCommand => {
                let mut stream = connect(branches[initiator].1);
                v1::write(&mut stream, start).unwrap();
                &mut asking
            }
            Pattern::Persistent => {
                v1::write(&mut persistent[initiator], start).unwrap();
                &mut persistent
            }
        };
        std::thread::sleep(retrieve_delay);
        let retrieve = Msg::RetrieveSnapshot(v1::RetrieveSnapshot { snapshot_id: id });
        for stream in streams.iter_mut() {
            v1::write(stream, retrieve.clone()).unwrap();
        }
        let records = streams
            .iter_mut()
            .zip(branches)
            .map(|(stream, (_, addr))| read_answer(stream, *addr))
            .collect();
        snapshots.push(Snapshot { id, records });
    }
    snapshots
}

/// Asks one branch for its record of snapshot `id` on a connection of its own.
pub fn run_retrieve(addr: SocketAddr, id: u32) -> v1::LocalSnapshot {
    let mut stream = connect(addr);
    v1::write(
        &mut stream,
        Msg::RetrieveSnapshot(v1::RetrieveSnapshot { snapshot_id: id }),
    )
    .unwrap();
    read_answer(&mut stream, addr)
}
