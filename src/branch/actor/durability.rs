//! Durability for [`BranchActor`] (a branch with `--data-dir`): group commit into its
//! [`crate::store`], and the rule that nothing leaves the branch before what it depends on is
//! durable.
//!
//! The durability rule:
//! - a transfer (and a marker) leaves the sender only once its frame, and the debit it carries,
//!   are durable;
//! - the receiver acknowledges a frame (or states it as received after a reconnect) only once
//!   its credit, and whatever it recorded in a snapshot, are durable;
//! - a `ReturnSnapshot` leaves only once the state it reports is durable.
//!
//! Group commit: changes are staged as the actor makes them; when no commit is being written,
//! the staged changes go into one write transaction on a blocking thread (one fsync), while the
//! actor goes on staging the next batch. When a commit is durable, the frames, acknowledgements
//! and answers it covers are released. A crash at any instant then loses nothing and creates
//! nothing: what was not durable was never sent or acknowledged, so the peers still hold (and
//! resend) the frames, duplicates are dropped by position, and the restarted branch reads
//! exactly the state of its last commit.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use log::{error, info};

use super::{Bank, BranchActor, ConnId, Peer};
use crate::auth::Secret;
use crate::branch::recorder::SnapshotRecorder;
use crate::config::BranchEntry;
use crate::core::{
    BranchCore, ChannelCount, Frame, InTransit, Position, ReceiveCursor, SendWindow, SnapshotId,
};
use crate::store::{
    BankMeta, BranchStore, Changes, ChannelMarks, FrameBatch, RecordHeader, Restored, StoredCore,
    TransitBatch,
};
use crate::wire::{self, pb as wire_pb};

/// How often the store's figures are logged.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// Retrieved records kept in the store (the most recent ones), so that a controller whose
/// answer was lost with a crash gets the same record when it asks again.
const KEPT_RETRIEVED: usize = 128;

/// A commit being written.
struct Commit {
    epoch: u64,
    /// Per peer: the last position sent when the commit started (frames up to it are in it).
    sent_upto: Vec<Position>,
    /// Per peer: the last position delivered when the commit started.
    delivered_upto: Vec<Position>,
    /// The commit holds a snapshot record that is still recording (for the `mid-record`
    /// failpoint).
    unfinished_record: bool,
    started: Instant,
}

/// The durable half of a branch: what is staged for the next commit and what waits for one.
pub(super) struct Durable {
    /// Where commits go.
    store: Arc<dyn BranchStore>,
    /// Changes for the next commit.
    staged: Changes,
    /// The bank's description, for the next commit (at `InitBranch`).
    staged_bank: Option<BankMeta>,
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
    /// The header of every record not yet retrieved, as stored.
    headers: HashMap<SnapshotId, RecordHeader>,
    /// Transfers found in transit since the last commit started, per record.
    new_transit: HashMap<SnapshotId, Vec<InTransit>>,
    /// Per record: the next transit batch's index.
    transit_batches: HashMap<SnapshotId, u64>,
    /// Retrieved records still kept in the store, oldest first.
    retrieved: VecDeque<SnapshotId>,
    /// Answers waiting for the commit (by epoch) that makes what they report durable.
    held_answers: Vec<(u64, ConnId, wire_pb::return_snapshot::LocalSnapshot)>,
    /// Figures since the last log line.
    commits: u64,
    frames_committed: u64,
    commit_time: Duration,
    stats_since: Instant,
}

impl Durable {
    /// Whether an answer for controller connection `conn` waits for a commit.
    pub(super) fn owes_answer_on(&self, conn: ConnId) -> bool {
        self.held_answers
            .iter()
            .any(|(_, held_conn, _)| *held_conn == conn)
    }

    /// A durable half committing to `store`, for a bank of `peers` peers.
    pub(super) fn new(store: Arc<dyn BranchStore>, peers: usize) -> Self {
        Self {
            store,
            staged: Changes::default(),
            staged_bank: None,
            dirty: false,
            committing: None,
            next_epoch: 1,
            new_frames: vec![None; peers],
            batches: vec![VecDeque::new(); peers],
            headers: HashMap::new(),
            new_transit: HashMap::new(),
            transit_batches: HashMap::new(),
            retrieved: VecDeque::new(),
            held_answers: Vec::new(),
            commits: 0,
            frames_committed: 0,
            commit_time: Duration::ZERO,
            stats_since: Instant::now(),
        }
    }

    /// Marks the core changed (a credit, a debit, a position...).
    pub(super) fn touch(&mut self) {
        self.dirty = true;
    }

    /// Stages the frame at `pos` sent to peer `channel`.
    pub(super) fn stage_frame(&mut self, channel: usize, pos: Position, frame: Frame) {
        self.dirty = true;
        if let Some(slot) = self.new_frames.get_mut(channel) {
            slot.get_or_insert_with(|| (pos, Vec::new())).1.push(frame);
        }
    }

    /// Peer `channel` acknowledged up to `acked`: batches wholly acknowledged are deleted.
    pub(super) fn stage_ack(&mut self, channel: usize, acked: Position) {
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

    /// Stages `header` as record `id`'s stored header.
    fn stage_header(&mut self, header: RecordHeader) {
        self.dirty = true;
        self.staged.records.push(header.clone());
        self.headers.insert(header.id, header);
    }

    /// A record begins.
    pub(super) fn begin_record(
        &mut self,
        id: SnapshotId,
        balance: u64,
        sent: &[ChannelCount],
        received: &[ChannelCount],
    ) {
        self.stage_header(RecordHeader {
            id,
            balance,
            sent: sent.to_vec(),
            received: received.to_vec(),
            lost: Vec::new(),
            finished: false,
            retrieved: false,
        });
    }

    /// A transfer was found in transit for record `id`.
    pub(super) fn record_transfer(&mut self, id: SnapshotId, transfer: InTransit) {
        self.dirty = true;
        self.new_transit.entry(id).or_default().push(transfer);
    }

    /// Record `id` lost channel `from`.
    pub(super) fn lose_channel(&mut self, id: SnapshotId, from: usize) {
        if let Some(mut header) = self.headers.get(&id).cloned() {
            header.lost.push(from);
            self.stage_header(header);
        }
    }

    /// Record `id` is finished.
    pub(super) fn finish_record(&mut self, id: SnapshotId) {
        if let Some(mut header) = self.headers.get(&id).cloned() {
            header.finished = true;
            self.stage_header(header);
        }
    }

    /// Record `id` was handed to a controller: it stays in the store, marked retrieved, among the
    /// [`KEPT_RETRIEVED`] most recent; older ones are deleted.
    pub(super) fn retire_record(&mut self, id: SnapshotId) {
        let Some(mut header) = self.headers.get(&id).cloned() else {
            return;
        };
        header.retrieved = true;
        self.stage_header(header);
        self.retrieved.push_back(id);
        while self.retrieved.len() > KEPT_RETRIEVED {
            if let Some(oldest) = self.retrieved.pop_front() {
                self.remove_record(oldest);
            }
        }
    }

    /// Record `id` was discarded, or aged out after its retrieval: it is deleted from the
    /// store.
    pub(super) fn remove_record(&mut self, id: SnapshotId) {
        if self.headers.remove(&id).is_some() {
            self.dirty = true;
            self.new_transit.remove(&id);
            self.transit_batches.remove(&id);
            self.staged.removed_records.push(id);
        }
    }

    /// The epoch an answer produced now must wait for, or `None` if what it reports is durable
    /// already.
    fn epoch_for_answer(&self) -> Option<u64> {
        if self.dirty {
            Some(self.next_epoch)
        } else {
            self.committing.as_ref().map(|commit| commit.epoch)
        }
    }

    /// Takes what is staged, with `core` (the core as it is now), as the next commit's changes:
    /// the frames and transfers collected since the last commit become one batch per channel
    /// and per record. Returns the changes and how many frames they hold.
    fn take_changes(&mut self, core: StoredCore) -> (Changes, u64) {
        let mut changes = std::mem::take(&mut self.staged);
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
        for (id, transfers) in self.new_transit.drain() {
            let index = self.transit_batches.entry(id).or_insert(0);
            changes.transit.push(TransitBatch {
                id,
                index: *index,
                transfers,
            });
            *index += 1;
        }
        changes.core = Some(core);
        (changes, frames)
    }

    fn log_stats(&mut self) {
        let elapsed = self.stats_since.elapsed();
        if elapsed < STATS_EVERY || self.commits == 0 {
            return;
        }
        info!(
            "store: {} commits in {:.1} s ({:.0} fsyncs/s), {:.1} frames per commit, mean commit {:.2} ms",
            self.commits,
            elapsed.as_secs_f64(),
            self.commits as f64 / elapsed.as_secs_f64(),
            self.frames_committed as f64 / self.commits as f64,
            self.commit_time.as_secs_f64() * 1000.0 / self.commits as f64
        );
        self.commits = 0;
        self.frames_committed = 0;
        self.commit_time = Duration::ZERO;
        self.stats_since = Instant::now();
    }
}

/// The bank as branch `name` keeps it in its store.
pub(super) fn meta(
    name: &str,
    members: &[BranchEntry],
    secret: &Secret,
    incarnation: u64,
) -> BankMeta {
    BankMeta {
        name: name.to_string(),
        members: members.to_vec(),
        secret: secret.clone(),
        incarnation,
    }
}

impl BranchActor {
    /// Stages the bank's description (at `InitBranch`), to be made durable with the first
    /// commit.
    pub(super) fn stage_meta(&mut self, meta: &BankMeta) {
        if let Some(durable) = self.durable.as_mut() {
            durable.staged_bank = Some(meta.clone());
            durable.dirty = true;
        }
    }

    /// Holds `answer` for controller connection `conn` until what it reports is durable; gives
    /// it back when it may go out now (no store, or nothing pending).
    pub(super) fn answer_when_durable(
        &mut self,
        conn: ConnId,
        answer: wire_pb::return_snapshot::LocalSnapshot,
    ) -> Option<wire_pb::return_snapshot::LocalSnapshot> {
        let Some(durable) = self.durable.as_mut() else {
            return Some(answer);
        };
        let Some(epoch) = durable.epoch_for_answer() else {
            return Some(answer);
        };
        durable.held_answers.push((epoch, conn, answer));
        None
    }

    /// Starts a commit of what is staged, if anything is and none is being written.
    pub(super) fn commit_if_needed(&mut self, ctx: &mut Context<Self>) {
        let (Some(durable), Some(bank)) = (self.durable.as_mut(), self.bank.as_ref()) else {
            return;
        };
        if durable.committing.is_some() || !durable.dirty {
            return;
        }
        let (changes, frames) = durable.take_changes(stored_core(bank, self.highest_snapshot));
        let unfinished_record = durable.headers.values().any(|header| !header.finished);
        let epoch = durable.next_epoch;
        durable.next_epoch += 1;
        durable.dirty = false;
        durable.frames_committed += frames;
        durable.committing = Some(Commit {
            epoch,
            sent_upto: bank.peers.iter().map(|p| p.window.last_sent()).collect(),
            delivered_upto: bank.peers.iter().map(|p| p.cursor.delivered()).collect(),
            unfinished_record,
            started: Instant::now(),
        });
        let store = durable.store.clone();
        let bank = durable.staged_bank.take();
        let writing =
            tokio::task::spawn_blocking(move || store.commit(bank.as_ref(), &changes));
        ctx.spawn(actix::fut::wrap_future::<_, Self>(writing).map(
            |result, branch, ctx| match result {
                Ok(Ok(())) => branch.commit_done(ctx),
                Ok(Err(err)) => branch.store_failed(&err.to_string()),
                Err(err) => branch.store_failed(&format!("the commit thread failed: {err}")),
            },
        ));
    }

    /// A branch that cannot make its state durable must not go on: it stops at once, as a
    /// crash would, and restarts from its last commit.
    fn store_failed(&self, reason: &str) -> ! {
        error!(
            "{}: {reason}; stopping (the branch restarts from its last durable commit)",
            self.name
        );
        std::process::exit(1);
    }

    /// A commit is durable: release the frames, acknowledgements and answers it covers.
    fn commit_done(&mut self, ctx: &mut Context<Self>) {
        let Some(durable) = self.durable.as_mut() else {
            return;
        };
        let Some(commit) = durable.committing.take() else {
            return;
        };
        durable.commits += 1;
        durable.commit_time += commit.started.elapsed();
        durable.log_stats();
        crate::failpoint::hit("commit-durable");
        if commit.unfinished_record {
            crate::failpoint::hit("mid-record");
        }
        let Some(bank) = self.bank.as_mut() else {
            return;
        };
        for (channel, peer) in bank.peers.iter_mut().enumerate() {
            let released = peer.window.mark_durable(commit.sent_upto[channel]);
            if !released.is_empty() {
                crate::failpoint::hit("before-send");
                if let Some(link) = peer.link.as_ref().filter(|link| link.resumed) {
                    for (pos, frame) in released {
                        link.outbox.push(wire::channel_frame(frame, pos));
                    }
                }
            }
            if commit.delivered_upto[channel] > peer.cursor.durable() {
                crate::failpoint::hit("before-ack");
                peer.cursor.mark_durable(commit.delivered_upto[channel]);
            }
        }
        let channels = bank.peers.len();
        for channel in 0..channels {
            self.acknowledge(channel, ctx);
        }
        let Some(durable) = self.durable.as_mut() else {
            return;
        };
        let (ready, waiting): (Vec<_>, Vec<_>) = durable
            .held_answers
            .drain(..)
            .partition(|(epoch, _, _)| *epoch <= commit.epoch);
        durable.held_answers = waiting;
        for (_, conn, answer) in ready {
            self.send_answer_now(conn, answer);
        }
        self.commit_if_needed(ctx);
    }

    /// Rebuilds the bank from the state its store held, then reconnects.
    pub(super) fn restore(
        &mut self,
        restored: Restored,
        ctx: &mut Context<Self>,
    ) -> Result<(), String> {
        let Restored {
            bank: stored_bank,
            core,
            channels,
            records,
        } = restored;
        self.check_own_entry(&stored_bank.members)?;
        let secret = stored_bank.secret;
        // `Store::open` refuses this already; a branch built around its own store checks too.
        if let Some(configured) = &self.settings.secret
            && !configured.same_as(secret.as_bytes())
        {
            return Err(
                "the bank in the store has another cluster secret than --secret-file".into(),
            );
        }
        self.incarnation = stored_bank.incarnation;
        let branch_core = BranchCore::restore(core.state)?;
        let window = self.settings.send_window;
        let (unacked, batches): (Vec<_>, Vec<_>) = channels
            .into_iter()
            .map(|channel| (channel.unacked, VecDeque::from(channel.batches)))
            .unzip();
        let mut unacked = unacked.into_iter();
        let peers: Vec<Peer> = stored_bank
            .members
            .into_iter()
            .filter(|member| *member.name != *self.name)
            .zip(core.channels.iter())
            .map(|(entry, marks): (_, &ChannelMarks)| {
                let frames = unacked.next().unwrap_or_default();
                Peer::new(
                    &self.name,
                    entry,
                    SendWindow::restore(
                        window,
                        marks.acked,
                        frames.into_iter().map(|(_, f)| f).collect(),
                    ),
                    ReceiveCursor::restore(marks.delivered),
                    marks.peer_incarnation,
                )
            })
            .collect();
        let unacked: usize = peers.iter().map(|peer| peer.window.unacked()).sum();
        let balance = branch_core.ledger().balance();
        let initial = branch_core.ledger().initial();
        let mut durable = Durable::new(
            self.durable
                .as_ref()
                .map(|d| d.store.clone())
                .ok_or("no store to restore into")?,
            peers.len(),
        );
        durable.batches = batches;
        self.secret = Some(secret.clone());
        self.highest_snapshot = core.highest_snapshot;
        let peer_names: std::rc::Rc<[String]> =
            peers.iter().map(|peer| peer.name.clone()).collect();
        let mut recorders = HashMap::new();
        for restored in records {
            let record = restored.record();
            let header = restored.header;
            durable
                .transit_batches
                .insert(header.id, restored.transit_batches);
            if header.retrieved {
                // Answered before the crash: kept as the answer, for a controller that asks again.
                let status = if record.lost().is_empty() {
                    wire_pb::SnapshotStatus::Complete
                } else {
                    wire_pb::SnapshotStatus::CutShort
                };
                self.answered.keep(&wire::local_snapshot(
                    &record,
                    status,
                    &self.name,
                    &peer_names,
                ));
                durable.retrieved.push_back(header.id);
                durable.headers.insert(header.id, header);
                continue;
            }
            let recorder =
                SnapshotRecorder::new(record, self.name.clone(), peer_names.clone(), ctx.address())
                    .start();
            recorders.insert(header.id, recorder);
            durable.headers.insert(header.id, header);
        }
        info!(
            "{}: restored from its store: balance {balance}, {} peers, {unacked} frame(s) to resend, {} snapshot record(s) kept, incarnation {:016x}",
            self.name,
            peers.len(),
            recorders.len(),
            self.incarnation
        );
        self.durable = Some(durable);
        self.bank = Some(Bank {
            core: branch_core,
            peer_names,
            by_name: peers
                .iter()
                .enumerate()
                .map(|(channel, peer)| (peer.name.clone(), channel))
                .collect(),
            peers,
            recorders,
            authenticated: !secret.is_empty(),
        });
        self.after_bank_created(initial, ctx);
        Ok(())
    }
}

/// The core and the peers' positions as the store keeps them.
fn stored_core(bank: &Bank, highest_snapshot: Option<SnapshotId>) -> StoredCore {
    StoredCore {
        state: bank.core.state(),
        channels: bank
            .peers
            .iter()
            .map(|peer| ChannelMarks {
                delivered: peer.cursor.delivered(),
                acked: peer.window.acked(),
                peer_incarnation: peer.incarnation,
            })
            .collect(),
        highest_snapshot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::CoreState;
    use crate::store::MemoryStore;

    fn bank() -> BankMeta {
        let member = |name: &str, port| BranchEntry {
            name: name.into(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        };
        meta(
            "a",
            &[member("a", 4001), member("b", 4002)],
            &Secret::none(),
            9,
        )
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

    /// Commits what `durable` staged to its store, as the actor would.
    fn commit(durable: &mut Durable) {
        let (changes, _) = durable.take_changes(core());
        let bank = durable.staged_bank.take();
        durable.store.commit(bank.as_ref(), &changes).unwrap();
    }

    #[test]
    fn only_the_most_recent_retrieved_records_stay_in_the_store() {
        let store = MemoryStore::new();
        let mut durable = Durable::new(Arc::new(store.clone()), 1);
        durable.staged_bank = Some(bank());
        let extra = 3;
        let count = KEPT_RETRIEVED as SnapshotId + extra;
        for id in 1..=count {
            let counts = [ChannelCount::default()];
            durable.begin_record(id, 50, &counts, &counts);
            durable.record_transfer(
                id,
                InTransit {
                    from: 0,
                    seq: 1,
                    amount: 2,
                },
            );
            durable.finish_record(id);
            // Some records are committed before their retrieval, some in the same commit.
            if id % 2 == 0 {
                commit(&mut durable);
            }
            durable.retire_record(id);
        }
        durable.begin_record(count + 1, 50, &[], &[]);
        commit(&mut durable);

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
}
