//! Durability epochs: what a durable branch stages for its next group commit, and what waits
//! for which commit before it may leave the branch.
//!
//! The rule:
//! - a transfer (and a marker) leaves the sender only once its frame, and the debit it carries,
//!   are durable;
//! - the receiver acknowledges a frame (or states it as received after a reconnect) only once
//!   its credit, and whatever it recorded in a snapshot, are durable;
//! - a `ReturnSnapshot` leaves only once the state it reports is durable.
//!
//! Commits are numbered (epochs). Changes are staged as the node makes them; when no commit is
//! being written, the staged changes become the next epoch's [`Persist`], and the node goes on
//! staging the one after. When the runtime reports an epoch durable, the frames,
//! acknowledgements and answers it covers are released. A crash at any instant then loses
//! nothing and creates nothing: what was not durable was never sent or acknowledged, so the
//! peers still hold (and resend) the frames, duplicates are dropped by position, and the
//! restarted branch reads exactly the state of its last commit.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Answer, ConnId};
use crate::core::persist::{Changes, FrameBatch, RecordHeader, StoredCore, TransitBatch};
use crate::core::{Channel, Frame, InTransit, Position, SnapshotId, SnapshotRecord};

/// Retrieved records kept in the store (the most recent ones), so that a controller whose
/// answer was lost with a crash gets the same record when it asks again.
pub const KEPT_RETRIEVED: usize = 128;

/// One group commit for the runtime to make durable, then report with
/// [`super::Input::CommitDone`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Persist {
    /// The commit's number.
    pub epoch: u64,
    /// What it changes.
    pub changes: Changes,
    /// How many frames it holds (for the store's figures).
    pub frames: u64,
    /// It holds a snapshot record that is still recording (where a test may crash the branch).
    pub unfinished_record: bool,
}

/// A commit being written: what it covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Commit {
    epoch: u64,
    /// Per peer: the last position sent when the commit started (frames up to it are in it).
    sent_upto: Vec<Position>,
    /// Per peer: the last position delivered when the commit started.
    delivered_upto: Vec<Position>,
}

/// What a commit covers once it is durable: per peer, frames up to `sent_upto` may leave, and
/// deliveries up to `delivered_upto` may be acknowledged.
pub(super) struct Covered {
    pub epoch: u64,
    pub sent_upto: Vec<Position>,
    pub delivered_upto: Vec<Position>,
}

/// The durable half of a branch node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Epochs {
    /// Changes for the next commit (its core is taken when the commit starts).
    staged: StagedChanges,
    /// Something changed since the last commit started.
    dirty: bool,
    /// The commit being written.
    committing: Option<Commit>,
    /// The next commit's epoch.
    next_epoch: u64,
    /// Per peer: frames sent since the last commit started, with the first one's position.
    new_frames: Vec<Option<(Position, Vec<Frame>)>>,
    /// Per peer: the stored frame batches, `(first, last)`, oldest first.
    batches: Vec<VecDeque<(Position, Position)>>,
    /// Records held in the store.
    stored: BTreeSet<SnapshotId>,
    /// Transfers found in transit since the last commit started, per record.
    new_transit: BTreeMap<SnapshotId, Vec<InTransit>>,
    /// Per record: the next transit batch's index.
    transit_batches: BTreeMap<SnapshotId, u64>,
    /// Retrieved records still kept in the store, oldest first.
    retrieved: VecDeque<SnapshotId>,
    /// Answers waiting for the commit (by epoch) that makes what they report durable.
    held_answers: Vec<(u64, ConnId, Answer)>,
}

/// [`Changes`] as they are staged: the same, minus what is only known when the commit starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct StagedChanges {
    removed_frame_batches: Vec<(Channel, Position)>,
    records: Vec<RecordHeader>,
    removed_records: Vec<SnapshotId>,
}

/// The header the store keeps for `record`.
pub(super) fn header(record: &SnapshotRecord, retrieved: bool) -> RecordHeader {
    RecordHeader {
        id: record.id(),
        balance: record.balance(),
        sent: record.sent().to_vec(),
        received: record.received().to_vec(),
        lost: record.lost().to_vec(),
        finished: record.is_finished(),
        retrieved,
    }
}

impl Epochs {
    /// A durable half for a bank of `peers` peers, committing from epoch 1.
    pub fn new(peers: usize) -> Self {
        Self {
            staged: StagedChanges::default(),
            dirty: false,
            committing: None,
            next_epoch: 1,
            new_frames: vec![None; peers],
            batches: vec![VecDeque::new(); peers],
            stored: BTreeSet::new(),
            new_transit: BTreeMap::new(),
            transit_batches: BTreeMap::new(),
            retrieved: VecDeque::new(),
            held_answers: Vec::new(),
        }
    }

    /// Takes back what a store held: per peer its stored frame batches, and every stored
    /// record with its transit batch count (`retrieved`: handed over before the crash).
    pub fn restore(
        &mut self,
        batches: Vec<VecDeque<(Position, Position)>>,
        records: impl IntoIterator<Item = (SnapshotId, u64, bool)>,
    ) {
        self.batches = batches;
        for (id, transit_batches, retrieved) in records {
            self.stored.insert(id);
            self.transit_batches.insert(id, transit_batches);
            if retrieved {
                self.retrieved.push_back(id);
            }
        }
    }

    /// Marks the state changed (a credit, a debit, a position...).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// Whether an answer for controller connection `conn` waits for a commit.
    pub fn owes_answer_on(&self, conn: ConnId) -> bool {
        self.held_answers
            .iter()
            .any(|(_, held_conn, _)| *held_conn == conn)
    }

    /// Stages the frame at `pos` sent to peer `channel`.
    pub fn stage_frame(&mut self, channel: Channel, pos: Position, frame: Frame) {
        self.dirty = true;
        if let Some(slot) = self.new_frames.get_mut(channel) {
            slot.get_or_insert_with(|| (pos, Vec::new())).1.push(frame);
        }
    }

    /// Peer `channel` acknowledged up to `acked`: batches wholly acknowledged are deleted.
    pub fn stage_ack(&mut self, channel: Channel, acked: Position) {
        self.dirty = true;
        let Some(batches) = self.batches.get_mut(channel) else {
            return;
        };
        while let Some(&(first, last)) = batches.front() {
            if last > acked {
                break;
            }
            batches.pop_front();
            self.staged.removed_frame_batches.push((channel, first));
        }
    }

    /// Stages `record`'s header (it began, lost a channel, or finished).
    pub fn stage_record(&mut self, record: &SnapshotRecord) {
        self.dirty = true;
        self.stored.insert(record.id());
        self.staged.records.push(header(record, false));
    }

    /// A transfer was found in transit for record `id`.
    pub fn record_transfer(&mut self, id: SnapshotId, transfer: InTransit) {
        self.dirty = true;
        self.new_transit.entry(id).or_default().push(transfer);
    }

    /// `record` was handed to a controller: it stays in the store, marked retrieved, among the
    /// [`KEPT_RETRIEVED`] most recent; older ones are deleted.
    pub fn retire_record(&mut self, record: &SnapshotRecord) {
        if !self.stored.contains(&record.id()) {
            return;
        }
        self.dirty = true;
        self.staged.records.push(header(record, true));
        self.retrieved.push_back(record.id());
        while self.retrieved.len() > KEPT_RETRIEVED {
            if let Some(oldest) = self.retrieved.pop_front() {
                self.remove_record(oldest);
            }
        }
    }

    /// Record `id` was discarded, or aged out after its retrieval: it is deleted from the store.
    pub fn remove_record(&mut self, id: SnapshotId) {
        if self.stored.remove(&id) {
            self.dirty = true;
            self.new_transit.remove(&id);
            self.transit_batches.remove(&id);
            self.staged.removed_records.push(id);
        }
    }

    /// Holds `answer` for `conn` until what it reports is durable; gives it back when it may
    /// go out now.
    pub fn hold_answer(&mut self, conn: ConnId, answer: Answer) -> Option<Answer> {
        let epoch = if self.dirty {
            self.next_epoch
        } else {
            match &self.committing {
                Some(commit) => commit.epoch,
                None => return Some(answer),
            }
        };
        self.held_answers.push((epoch, conn, answer));
        None
    }

    /// Starts the next commit if anything is staged and none is being written: `core` is the
    /// state now, `sent_upto` and `delivered_upto` the positions it covers per peer.
    pub fn start_commit(
        &mut self,
        core: impl FnOnce() -> StoredCore,
        sent_upto: Vec<Position>,
        delivered_upto: Vec<Position>,
        unfinished_record: bool,
    ) -> Option<Persist> {
        if self.committing.is_some() || !self.dirty {
            return None;
        }
        let staged = std::mem::take(&mut self.staged);
        let mut changes = Changes {
            core: Some(core()),
            removed_frame_batches: staged.removed_frame_batches,
            records: staged.records,
            removed_records: staged.removed_records,
            ..Changes::default()
        };
        let mut frames = 0u64;
        for (channel, slot) in self.new_frames.iter_mut().enumerate() {
            if let Some((first, list)) = slot.take() {
                frames += list.len() as u64;
                let last = first + list.len() as u64 - 1;
                self.batches[channel].push_back((first, last));
                changes.frame_batches.push(FrameBatch {
                    channel,
                    first,
                    frames: list,
                });
            }
        }
        for (id, transfers) in std::mem::take(&mut self.new_transit) {
            let index = self.transit_batches.entry(id).or_insert(0);
            changes.transit.push(TransitBatch {
                id,
                index: *index,
                transfers,
            });
            *index += 1;
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.dirty = false;
        self.committing = Some(Commit {
            epoch,
            sent_upto,
            delivered_upto,
        });
        Some(Persist {
            epoch,
            changes,
            frames,
            unfinished_record,
        })
    }

    /// Commit `epoch` is durable: what it covers, and the answers it releases. `None` for an
    /// epoch that is not the one being written (a repeated or forged report).
    pub fn commit_done(&mut self, epoch: u64) -> Option<(Covered, Vec<(ConnId, Answer)>)> {
        if self.committing.as_ref().map(|commit| commit.epoch) != Some(epoch) {
            return None;
        }
        let commit = self.committing.take()?;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held_answers)
            .into_iter()
            .partition(|(held, _, _)| *held <= epoch);
        self.held_answers = waiting;
        let released = ready
            .into_iter()
            .map(|(_, conn, answer)| (conn, answer))
            .collect();
        Some((
            Covered {
                epoch: commit.epoch,
                sent_upto: commit.sent_upto,
                delivered_upto: commit.delivered_upto,
            },
            released,
        ))
    }

    /// Whether a commit is being written.
    pub fn is_committing(&self) -> bool {
        self.committing.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::persist::ChannelMarks;
    use crate::core::{ChannelCount, CoreState};
    use crate::store::{BankMeta, BranchStore, MemoryStore};

    fn bank() -> BankMeta {
        let member = |name: &str, port| crate::config::BranchEntry {
            name: name.into(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        };
        BankMeta {
            name: "a".into(),
            members: vec![member("a", 4001), member("b", 4002)],
            secret: crate::auth::Secret::none(),
            incarnation: 9,
            epoch: 0,
        }
    }

    fn core() -> StoredCore {
        StoredCore {
            state: CoreState {
                balance: 100,
                initial: 100,
                sent: vec![ChannelCount::default()],
                received: vec![ChannelCount::default()],
                recording: Vec::new(),
                finished: Vec::new(),
            },
            channels: vec![ChannelMarks::default()],
            highest_snapshot: None,
        }
    }

    /// Commits what `epochs` staged to `store`, as the runtime would.
    fn commit(epochs: &mut Epochs, store: &MemoryStore, bank: Option<&BankMeta>) {
        epochs.touch();
        let persist = epochs
            .start_commit(core, vec![0], vec![0], false)
            .expect("something staged");
        store.commit(bank, &persist.changes).unwrap();
        assert!(epochs.commit_done(persist.epoch).is_some());
    }

    #[test]
    fn only_the_most_recent_retrieved_records_stay_in_the_store() {
        let store = MemoryStore::new();
        let mut epochs = Epochs::new(1);
        commit(&mut epochs, &store, Some(&bank()));
        let extra = 3;
        let count = KEPT_RETRIEVED as SnapshotId + extra;
        for id in 1..=count {
            let counts = vec![ChannelCount::default()];
            let mut record = SnapshotRecord::new(id, 50, counts.clone(), counts);
            epochs.stage_record(&record);
            let transfer = InTransit {
                from: 0,
                seq: 1,
                amount: 2,
            };
            epochs.record_transfer(id, transfer);
            record.add_in_transit(transfer);
            record.finish();
            epochs.stage_record(&record);
            // Some records are committed before their retrieval, some in the same commit.
            if id % 2 == 0 {
                commit(&mut epochs, &store, None);
            }
            epochs.retire_record(&record);
        }
        epochs.stage_record(&SnapshotRecord::new(count + 1, 50, Vec::new(), Vec::new()));
        commit(&mut epochs, &store, None);

        let (_, restored) = store.reopen().unwrap();
        let records = restored.expect("a bank").records;
        let kept: Vec<SnapshotId> = records
            .iter()
            .filter(|r| r.header.retrieved)
            .map(|r| r.header.id)
            .collect();
        assert_eq!(kept, (extra + 1..=count).collect::<Vec<_>>());
        assert!(
            records
                .iter()
                .all(|r| r.header.finished == r.header.retrieved)
        );
        assert!(
            records
                .iter()
                .filter(|r| r.header.retrieved)
                .all(|r| r.in_transit.len() == 1)
        );
        assert_eq!(records.last().map(|r| r.header.id), Some(count + 1));
        assert_eq!(records.len(), KEPT_RETRIEVED + 1);
    }

    #[test]
    fn an_answer_waits_for_the_commit_that_holds_what_it_reports() {
        let mut epochs = Epochs::new(1);
        let answer = Answer::status_only(1, super::super::RecordStatus::Unknown);
        // Nothing staged, nothing committing: out at once.
        assert_eq!(epochs.hold_answer(7, answer.clone()), Some(answer.clone()));
        epochs.touch();
        assert_eq!(epochs.hold_answer(7, answer.clone()), None);
        assert!(epochs.owes_answer_on(7));
        let persist = epochs.start_commit(core, vec![0], vec![0], false).unwrap();
        // A report for another epoch releases nothing.
        assert!(epochs.commit_done(persist.epoch + 1).is_none());
        let (_, released) = epochs.commit_done(persist.epoch).unwrap();
        assert_eq!(released, vec![(7, answer)]);
        assert!(!epochs.owes_answer_on(7));
    }
}
