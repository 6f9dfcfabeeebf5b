//! The conformance suite of [`BranchStore`]: every check runs against the redb store and the
//! memory store alike, so a simulation over [`MemoryStore`] sees what a live branch would.
//!
//! Each check is a generic function over a [`Harness`], which opens a store, reopens it as a
//! restarted branch would (after a crash: nothing but what was committed survives), and makes a
//! commit that a crash cuts off in the middle.

use std::path::PathBuf;

use super::*;
use crate::core::{Channel, ChannelCount, CoreState, Frame, InTransit, SnapshotId};

/// How the suite drives one implementation.
trait Harness {
    type Store: BranchStore;

    /// The store as a branch starting now opens it, and what it holds. Every earlier handle
    /// must have been dropped (a process holds one).
    fn open(&mut self) -> Result<(Self::Store, Option<Restored>), StoreError>;

    /// Writes `changes` and crashes before they are committed.
    fn crash_mid_commit(&mut self, store: Self::Store, bank: Option<&BankMeta>, changes: &Changes);
}

/// The redb store in a temporary directory, removed on drop.
struct Redb {
    dir: PathBuf,
}

impl Redb {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "snapbank-suite-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self { dir }
    }
}

impl Drop for Redb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Harness for Redb {
    type Store = Store;

    fn open(&mut self) -> Result<(Store, Option<Restored>), StoreError> {
        Store::open(&self.dir, "a", None, StoreOptions::default())
    }

    fn crash_mid_commit(&mut self, store: Store, bank: Option<&BankMeta>, changes: &Changes) {
        store.abandon_commit(bank, changes);
    }
}

/// The memory store; each open is a reopen after a crash.
#[derive(Default)]
struct Memory {
    store: MemoryStore,
}

impl Harness for Memory {
    type Store = MemoryStore;

    fn open(&mut self) -> Result<(MemoryStore, Option<Restored>), StoreError> {
        self.store.reopen()
    }

    fn crash_mid_commit(&mut self, store: MemoryStore, bank: Option<&BankMeta>, changes: &Changes) {
        store.abandon_commit(bank, changes);
    }
}

fn bank() -> BankMeta {
    let member = |name: &str, port| crate::config::BranchEntry {
        name: name.into(),
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
    };
    BankMeta {
        name: "a".into(),
        members: vec![member("a", 4001), member("b", 4002), member("c", 4003)],
        secret: crate::auth::Secret::from_bytes(vec![7; 32], "test").unwrap(),
        incarnation: 0x1234_5678_9abc_def0,
        epoch: 0,
    }
}

fn counts(n: u64) -> ChannelCount {
    ChannelCount {
        count: n,
        amount: 10 * n,
        digest: 0xd1 + n,
    }
}

/// A core with both peers' channels acknowledged up to `acked`.
fn core(balance: u64, acked: [Position; 2]) -> StoredCore {
    StoredCore {
        state: CoreState {
            balance,
            initial: 100,
            sent: vec![counts(1), counts(2)],
            received: vec![counts(3), counts(4)],
            recording: vec![(5, vec![true, false])],
            finished: vec![(1, 4)],
        },
        channels: vec![
            ChannelMarks {
                delivered: 3,
                acked: acked[0],
                peer_incarnation: Some(77),
            },
            ChannelMarks {
                delivered: 0,
                acked: acked[1],
                peer_incarnation: None,
            },
        ],
        highest_snapshot: Some(5),
    }
}

fn transfer(seq: u64) -> Frame {
    Frame::Transfer { seq, amount: 5 }
}

fn batch(channel: Channel, first: Position, frames: &[Frame]) -> FrameBatch {
    FrameBatch {
        channel,
        first,
        frames: frames.to_vec(),
    }
}

fn header(id: SnapshotId) -> RecordHeader {
    RecordHeader {
        id,
        balance: 60 + u64::from(id),
        sent: vec![counts(1), counts(2)],
        received: vec![counts(3), counts(4)],
        lost: Vec::new(),
        finished: false,
        retrieved: false,
    }
}

fn in_transit(from: Channel, seq: u64) -> InTransit {
    InTransit {
        from,
        seq,
        amount: seq + 1,
    }
}

/// The first commit of a branch: its bank and core.
fn init() -> Changes {
    Changes {
        core: Some(core(90, [0, 0])),
        ..Default::default()
    }
}

fn commit(store: &impl BranchStore, changes: Changes) {
    store.commit(None, &changes).unwrap();
}

/// Commits `changes` as a branch's first commit: with its bank.
fn commit_with_bank(store: &impl BranchStore, changes: Changes) {
    store.commit(Some(&bank()), &changes).unwrap();
}

fn restored(harness: &mut impl Harness) -> Restored {
    harness.open().unwrap().1.expect("a committed bank")
}

fn a_new_store_holds_nothing(harness: &mut impl Harness) {
    let (store, restored) = harness.open().unwrap();
    assert_eq!(restored, None);
    // Changes without a bank (a branch that died before its InitBranch was durable) are not a
    // state to restore either.
    commit(
        &store,
        Changes {
            core: Some(core(90, [0, 0])),
            ..Default::default()
        },
    );
    drop(store);
    assert_eq!(harness.open().unwrap().1, None);
}

fn the_bank_and_core_read_back_as_committed(harness: &mut impl Harness) {
    let (store, _) = harness.open().unwrap();
    commit_with_bank(&store, init());
    let later = core(70, [0, 0]);
    commit(
        &store,
        Changes {
            core: Some(later.clone()),
            ..Default::default()
        },
    );
    drop(store);
    let restored = restored(harness);
    assert_eq!(restored.bank, bank());
    assert_eq!(restored.core, later, "the core of the last commit");
    assert_eq!(restored.channels, vec![RestoredChannel::default(); 2]);
    assert_eq!(restored.records, vec![]);
}

fn frames_acknowledged_away_are_gone(harness: &mut impl Harness) {
    let (store, _) = harness.open().unwrap();
    let mut first = init();
    first.frame_batches = vec![
        batch(0, 1, &[transfer(1), Frame::Marker { id: 5 }]),
        batch(1, 1, &[transfer(1)]),
    ];
    commit_with_bank(&store, first);
    commit(
        &store,
        Changes {
            frame_batches: vec![batch(0, 3, &[transfer(2), transfer(3)])],
            ..Default::default()
        },
    );
    // Channel 0 acknowledged up to 3: its first batch is wholly acknowledged and removed, its
    // second only in part (position 3), so it stays and only position 4 is to resend.
    commit(
        &store,
        Changes {
            core: Some(core(90, [3, 0])),
            removed_frame_batches: vec![(0, 1)],
            ..Default::default()
        },
    );
    drop(store);
    let restored = restored(harness);
    assert_eq!(
        restored.channels,
        vec![
            RestoredChannel {
                unacked: vec![(4, transfer(3))],
                batches: vec![(3, 4)],
            },
            RestoredChannel {
                unacked: vec![(1, transfer(1))],
                batches: vec![(1, 1)],
            },
        ]
    );
}

fn records_and_their_transit_batches_read_back_in_order(harness: &mut impl Harness) {
    let (store, _) = harness.open().unwrap();
    let mut first = init();
    first.records = vec![header(5), header(6)];
    first.transit = vec![TransitBatch {
        id: 5,
        index: 0,
        transfers: vec![in_transit(0, 1), in_transit(1, 1)],
    }];
    commit_with_bank(&store, first);
    let mut lost = header(5);
    lost.lost = vec![1];
    let mut finished = lost.clone();
    finished.finished = true;
    commit(
        &store,
        Changes {
            // A later header of the same record in one commit wins.
            records: vec![lost, finished.clone()],
            transit: vec![TransitBatch {
                id: 5,
                index: 1,
                transfers: vec![in_transit(0, 2)],
            }],
            ..Default::default()
        },
    );
    drop(store);
    let restored = restored(harness);
    let five = &restored.records[0];
    assert_eq!(five.header, finished);
    assert_eq!(
        five.in_transit,
        vec![in_transit(0, 1), in_transit(1, 1), in_transit(0, 2)]
    );
    assert_eq!(five.transit_batches, 2);
    let record = five.record();
    assert_eq!(record.channel_state(), &[2 + 3, 2]);
    assert_eq!(record.lost(), &[1]);
    assert!(record.is_finished());
    assert_eq!(restored.records[1].header, header(6));
    assert_eq!(restored.records[1].transit_batches, 0);
    assert_eq!(restored.records.len(), 2);
}

fn retrieved_records_are_kept_marked_and_removed_ones_gone(harness: &mut impl Harness) {
    let (store, _) = harness.open().unwrap();
    let mut first = init();
    first.records = vec![header(5), header(6), header(7)];
    first.transit = vec![TransitBatch {
        id: 6,
        index: 0,
        transfers: vec![in_transit(0, 1)],
    }];
    commit_with_bank(&store, first);
    let mut retrieved = header(5);
    retrieved.finished = true;
    retrieved.retrieved = true;
    commit(
        &store,
        Changes {
            records: vec![retrieved.clone()],
            removed_records: vec![6],
            ..Default::default()
        },
    );
    // A record removed goes with its transit batches: one under the same id starts afresh.
    commit(
        &store,
        Changes {
            records: vec![header(6)],
            ..Default::default()
        },
    );
    drop(store);
    let restored = restored(harness);
    let ids: Vec<_> = restored.records.iter().map(|r| r.header.id).collect();
    assert_eq!(ids, vec![5, 6, 7]);
    assert_eq!(restored.records[0].header, retrieved);
    assert_eq!(restored.records[1].in_transit, vec![]);
    assert_eq!(restored.records[1].transit_batches, 0);
}

fn a_crash_mid_commit_loses_that_commit_only(harness: &mut impl Harness) {
    let (store, _) = harness.open().unwrap();
    let mut first = init();
    first.frame_batches = vec![batch(0, 1, &[transfer(1)])];
    first.records = vec![header(5)];
    commit_with_bank(&store, first);
    let before = {
        drop(store);
        restored(harness)
    };
    let (store, _) = harness.open().unwrap();
    let mut bank = bank();
    bank.incarnation = 1;
    harness.crash_mid_commit(
        store,
        Some(&bank),
        &Changes {
            core: Some(core(10, [1, 0])),
            frame_batches: vec![batch(0, 2, &[transfer(2)]), batch(1, 1, &[transfer(1)])],
            removed_frame_batches: vec![(0, 1)],
            records: vec![header(8)],
            transit: vec![TransitBatch {
                id: 5,
                index: 0,
                transfers: vec![in_transit(0, 1)],
            }],
            removed_records: vec![5],
        },
    );
    assert_eq!(restored(harness), before);
}

fn reopening_is_idempotent(harness: &mut impl Harness) {
    let (store, _) = harness.open().unwrap();
    let mut first = init();
    first.frame_batches = vec![batch(1, 1, &[transfer(1), transfer(2)])];
    first.records = vec![header(5)];
    first.transit = vec![TransitBatch {
        id: 5,
        index: 0,
        transfers: vec![in_transit(1, 1)],
    }];
    commit_with_bank(&store, first);
    drop(store);
    let once = restored(harness);
    let twice = restored(harness);
    assert_eq!(once, twice);
    // And a reopened store takes commits on from where it was.
    let (store, _) = harness.open().unwrap();
    commit(
        &store,
        Changes {
            core: Some(core(90, [0, 2])),
            removed_frame_batches: vec![(1, 1)],
            ..Default::default()
        },
    );
    drop(store);
    assert_eq!(restored(harness).channels[1], RestoredChannel::default());
}

/// The reason a store opened as `harness` opens it is refused for.
fn refusal(harness: &mut impl Harness) -> String {
    match harness.open() {
        Err(StoreError::Corrupt { reason, .. }) => reason,
        Err(other) => panic!("refused, but not as corrupt: {other}"),
        Ok((_, restored)) => panic!("not refused: {restored:?}"),
    }
}

fn a_state_no_commit_could_leave_is_refused(harness: &mut impl Harness) {
    let (store, _) = harness.open().unwrap();
    let mut first = init();
    // Channel 0 acknowledged up to 1, but the frame kept after it is at 3.
    first.core = Some(core(90, [1, 0]));
    first.frame_batches = vec![batch(0, 3, &[transfer(3)])];
    commit_with_bank(&store, first);
    drop(store);
    assert_eq!(
        refusal(harness),
        "the frames kept for channel 0 do not follow position 1 without a gap"
    );
}

fn a_frame_batch_without_frames_is_refused_not_a_panic(harness: &mut impl Harness) {
    let (store, _) = harness.open().unwrap();
    let mut first = init();
    first.frame_batches = vec![batch(1, 0, &[])];
    commit_with_bank(&store, first);
    drop(store);
    assert_eq!(
        refusal(harness),
        "a frame batch of 0 frame(s) at position 0 of channel 1"
    );
}

/// Instantiates every check of the suite for one implementation (`$harness` makes it).
fn a_commit_of_a_new_bank_epoch_starts_the_store_over(harness: &mut impl Harness) {
    let (store, _) = harness.open().unwrap();
    let mut first = init();
    first.frame_batches = vec![batch(0, 1, &[transfer(1)])];
    first.records = vec![header(5)];
    first.transit = vec![TransitBatch {
        id: 5,
        index: 0,
        transfers: vec![in_transit(0, 1)],
    }];
    commit_with_bank(&store, first);
    let next = BankMeta { epoch: 1, ..bank() };
    let fresh = core(40, [0, 0]);
    let rollback = Changes {
        core: Some(fresh.clone()),
        ..Default::default()
    };
    // A crash in the middle of the rollback's commit leaves the old epoch whole.
    harness.crash_mid_commit(store, Some(&next), &rollback);
    let before = restored(harness);
    assert_eq!(before.bank, bank());
    assert_eq!(before.records.len(), 1);
    assert_eq!(before.channels[0].unacked, vec![(1, transfer(1))]);
    // The commit itself leaves the new epoch alone: its bank and core, no frame or record of
    // the epoch before.
    let (store, _) = harness.open().unwrap();
    store.commit(Some(&next), &rollback).unwrap();
    drop(store);
    let after = restored(harness);
    assert_eq!(after.bank, next);
    assert_eq!(after.core, fresh);
    assert_eq!(after.channels, vec![RestoredChannel::default(); 2]);
    assert_eq!(after.records, vec![]);
}

macro_rules! suite {
    ($module:ident, $harness:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn a_new_store_holds_nothing() {
                super::a_new_store_holds_nothing(&mut $harness("nothing"));
            }

            #[test]
            fn the_bank_and_core_read_back_as_committed() {
                super::the_bank_and_core_read_back_as_committed(&mut $harness("core"));
            }

            #[test]
            fn frames_acknowledged_away_are_gone() {
                super::frames_acknowledged_away_are_gone(&mut $harness("frames"));
            }

            #[test]
            fn records_and_their_transit_batches_read_back_in_order() {
                super::records_and_their_transit_batches_read_back_in_order(&mut $harness(
                    "records",
                ));
            }

            #[test]
            fn retrieved_records_are_kept_marked_and_removed_ones_gone() {
                super::retrieved_records_are_kept_marked_and_removed_ones_gone(&mut $harness(
                    "retrieved",
                ));
            }

            #[test]
            fn a_crash_mid_commit_loses_that_commit_only() {
                super::a_crash_mid_commit_loses_that_commit_only(&mut $harness("crash"));
            }

            #[test]
            fn reopening_is_idempotent() {
                super::reopening_is_idempotent(&mut $harness("reopen"));
            }

            #[test]
            fn a_frame_batch_without_frames_is_refused_not_a_panic() {
                super::a_frame_batch_without_frames_is_refused_not_a_panic(&mut $harness(
                    "empty-batch",
                ));
            }

            #[test]
            fn a_commit_of_a_new_bank_epoch_starts_the_store_over() {
                super::a_commit_of_a_new_bank_epoch_starts_the_store_over(&mut $harness(
                    "new-epoch",
                ));
            }

            #[test]
            fn a_state_no_commit_could_leave_is_refused() {
                super::a_state_no_commit_could_leave_is_refused(&mut $harness("gap"));
            }
        }
    };
}

suite!(redb, Redb::new);
suite!(memory, |_| Memory::default());

/// A handle of a process that crashed cannot commit once the store was reopened: what it was
/// still writing never lands.
#[test]
fn a_memory_store_handle_from_before_a_crash_commits_nothing() {
    let store = MemoryStore::new();
    commit_with_bank(&store, init());
    let (reopened, _) = store.reopen().unwrap();
    let err = store
        .commit(
            None,
            &Changes {
                core: Some(core(1, [0, 0])),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Write(_)), "{err}");
    assert_eq!(reopened.read().unwrap().unwrap().core, core(90, [0, 0]));
}
