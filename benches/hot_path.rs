//! Micro-benchmarks of a branch's hot path, with no sockets: `cargo bench --bench hot_path`.
//!
//! - `transfer/one`: one transfer through everything a branch does with it: the sender's core
//!   numbers it (`send_transfer`), it is encoded into a delimited frame (`wire::encode_frame`),
//!   the bytes are decoded again (`wire::FrameCodec`, as a connection's reader does) and the
//!   receiver's core applies it (`receive_transfer`). Buffers are reused, as a connection does.
//! - `transfer/batch_1000`: the same for 1000 transfers encoded into one buffer and decoded in
//!   one pass, as a batched write arrives; throughput is reported per transfer.
//! - `snapshot_round/4_branches`: one whole snapshot on four cores in a full mesh: one starts
//!   it, markers are delivered in FIFO order until every branch's record (kept in a
//!   `RecordBook`) is finished.

use std::collections::VecDeque;
use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use snapbank::core::{BranchCore, Effect, RecordBook};
use snapbank::wire::{Body, FrameCodec, encode_frame, pb};
use tokio_util::codec::Decoder;

/// Enough money that the sender never runs dry over any number of iterations.
const PLENTY: u64 = 1 << 60;

/// A sender and a receiver with one channel each way (channel 0 is the other branch), and the
/// buffers a connection would reuse.
struct Pair {
    sender: BranchCore,
    receiver: BranchCore,
    codec: FrameCodec,
    encoded: Vec<u8>,
    received: BytesMut,
    effects: Vec<Effect>,
}

impl Pair {
    fn new() -> Self {
        Self {
            sender: BranchCore::new(PLENTY, 1),
            receiver: BranchCore::new(0, 1),
            codec: FrameCodec::default(),
            encoded: Vec::with_capacity(64 * 1024),
            received: BytesMut::with_capacity(64 * 1024),
            effects: Vec::new(),
        }
    }

    /// Numbers and encodes `count` transfers of 1 into `encoded`.
    fn send(&mut self, count: usize) {
        self.encoded.clear();
        for _ in 0..count {
            let seq = self
                .sender
                .send_transfer(0, 1)
                .expect("the sender has plenty");
            encode_frame(
                Body::Transfer(pb::Transfer {
                    money: 1,
                    seq,
                    pos: seq,
                }),
                &mut self.encoded,
            );
        }
    }

    /// Decodes every frame in `encoded` and applies each transfer at the receiver.
    fn receive(&mut self) -> usize {
        self.received.extend_from_slice(&self.encoded);
        let mut applied = 0;
        while let Some(frame) = self.codec.decode(&mut self.received).expect("valid frames") {
            let Some(Body::Transfer(transfer)) = frame.branch_message else {
                panic!("not a transfer");
            };
            self.effects.clear();
            self.receiver
                .receive_transfer(
                    0,
                    u64::from(transfer.money),
                    Some(transfer.seq),
                    &mut self.effects,
                )
                .expect("in sequence");
            applied += 1;
        }
        applied
    }
}

fn transfer(c: &mut Criterion) {
    let mut group = c.benchmark_group("transfer");
    group.throughput(Throughput::Elements(1));
    let mut pair = Pair::new();
    group.bench_function("one", |b| {
        b.iter(|| {
            pair.send(1);
            black_box(pair.receive())
        })
    });
    const BATCH: usize = 1000;
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut pair = Pair::new();
    group.bench_function("batch_1000", |b| {
        b.iter(|| {
            pair.send(BATCH);
            let applied = pair.receive();
            assert_eq!(applied, BATCH);
            black_box(applied)
        })
    });
    group.finish();
}

/// Four branches in a full mesh, each with a record book.
struct Mesh {
    cores: Vec<BranchCore>,
    books: Vec<RecordBook>,
}

const BRANCHES: usize = 4;

impl Mesh {
    fn new() -> Self {
        Self {
            cores: (0..BRANCHES)
                .map(|_| BranchCore::new(1000, BRANCHES - 1))
                .collect(),
            books: (0..BRANCHES).map(|_| RecordBook::new()).collect(),
        }
    }

    /// The branch at channel `channel` of branch `of` (channels skip the branch itself).
    fn peer(of: usize, channel: usize) -> usize {
        if channel < of { channel } else { channel + 1 }
    }

    /// The channel at which branch `of` knows branch `peer`.
    fn channel(of: usize, peer: usize) -> usize {
        if peer < of { peer } else { peer - 1 }
    }

    /// Applies `effects` of branch `at` to its book and queues its markers.
    fn carry(
        &mut self,
        at: usize,
        effects: &mut Vec<Effect>,
        markers: &mut VecDeque<(usize, usize, u32)>,
    ) {
        for effect in effects.drain(..) {
            if let Effect::SendMarker { to, id } = effect {
                markers.push_back((at, Self::peer(at, to), id));
            } else {
                self.books[at].apply(&effect);
            }
        }
    }

    /// Takes snapshot `id`, started at branch 0, to completion; returns the markers delivered.
    fn snapshot(&mut self, id: u32) -> usize {
        let mut effects = Vec::new();
        let mut markers = VecDeque::new();
        self.cores[0]
            .start_snapshot(id, &mut effects)
            .expect("a new snapshot");
        self.carry(0, &mut effects, &mut markers);
        let mut delivered = 0;
        while let Some((from, to, id)) = markers.pop_front() {
            self.cores[to]
                .receive_marker(Self::channel(to, from), id, &mut effects)
                .expect("one marker per channel");
            self.carry(to, &mut effects, &mut markers);
            delivered += 1;
        }
        delivered
    }

    fn all_finished(&self, id: u32) -> bool {
        self.books
            .iter()
            .all(|book| book.get(id).is_some_and(|record| record.is_finished()))
    }
}

fn snapshot_round(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_round");
    // Sanity: one round finishes every record, over every channel.
    let mut mesh = Mesh::new();
    assert_eq!(mesh.snapshot(1), BRANCHES * (BRANCHES - 1));
    assert!(mesh.all_finished(1));
    group.bench_function("4_branches", |b| {
        b.iter_batched(
            Mesh::new,
            // Returned, so the mesh is dropped outside the timed section.
            |mut mesh| (black_box(mesh.snapshot(1)), mesh),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, transfer, snapshot_round);
criterion_main!(benches);
