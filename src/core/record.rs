//! What one branch recorded for one snapshot, built up from the core's effects.

use std::collections::HashMap;

use super::{Channel, ChannelCount, Effect, SnapshotId};

/// One transfer found in transit: it arrived on a channel that was still recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InTransit {
    /// The incoming channel it arrived on.
    pub from: Channel,
    /// Its sequence number on that channel.
    pub seq: u64,
    /// Its amount.
    pub amount: u64,
}

/// One branch's part of one global snapshot: its balance at the cut, the money it found in
/// transit on each incoming channel, and the channel counters that let a checker prove the cut
/// consistent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotRecord {
    /// The snapshot this record belongs to.
    id: SnapshotId,
    /// The branch's balance when it recorded its state.
    balance: u64,
    /// Money in transit per incoming channel.
    channel_state: Vec<u64>,
    /// Every transfer found in transit, in the order it arrived.
    in_transit: Vec<InTransit>,
    /// Transfers sent per outgoing channel before the cut.
    sent: Vec<ChannelCount>,
    /// Transfers received per incoming channel before the cut.
    received: Vec<ChannelCount>,
    /// Incoming channels lost before their marker came: their state is unknown.
    lost: Vec<Channel>,
    /// Whether every incoming channel has delivered its marker (or been lost).
    finished: bool,
}

impl SnapshotRecord {
    /// A fresh record: balance and counters at the cut, every channel empty, not finished.
    pub fn new(
        id: SnapshotId,
        balance: u64,
        sent: Vec<ChannelCount>,
        received: Vec<ChannelCount>,
    ) -> Self {
        Self {
            id,
            balance,
            channel_state: vec![0; received.len()],
            in_transit: Vec::new(),
            sent,
            received,
            lost: Vec::new(),
            finished: false,
        }
    }

    /// Notes that incoming channel `from` was lost before its marker came.
    pub fn lose(&mut self, from: Channel) {
        self.lost.push(from);
    }

    /// Incoming channels lost before their marker came.
    pub fn lost(&self) -> &[Channel] {
        &self.lost
    }

    /// Adds a transfer found in transit. The channel sum saturates: a sum past u64 cannot come
    /// from a bank whose total fits in u32, and a record must never wrap around to a small number.
    pub fn add_in_transit(&mut self, transfer: InTransit) {
        if let Some(state) = self.channel_state.get_mut(transfer.from) {
            *state = state.saturating_add(transfer.amount);
            self.in_transit.push(transfer);
        }
    }

    /// Transfers found in transit, in arrival order.
    pub fn in_transit(&self) -> &[InTransit] {
        &self.in_transit
    }

    /// Transfers sent per outgoing channel before the cut.
    pub fn sent(&self) -> &[ChannelCount] {
        &self.sent
    }

    /// Transfers received per incoming channel before the cut.
    pub fn received(&self) -> &[ChannelCount] {
        &self.received
    }

    /// Marks the record final.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// The snapshot id.
    pub fn id(&self) -> SnapshotId {
        self.id
    }

    /// The recorded balance.
    pub fn balance(&self) -> u64 {
        self.balance
    }

    /// Money in transit per incoming channel.
    pub fn channel_state(&self) -> &[u64] {
        &self.channel_state
    }

    /// Whether the record is final.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

/// The records of many snapshots, driven directly by a [`super::BranchCore`]'s effects: how the
/// core's own tests and benchmarks keep records (everything else gets them from the node).
#[derive(Debug, Clone, Default)]
pub struct RecordBook {
    /// Every record begun so far, by snapshot id.
    records: HashMap<SnapshotId, SnapshotRecord>,
}

impl RecordBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one effect (markers to send are not the book's business and are skipped).
    pub fn apply(&mut self, effect: &Effect) {
        match *effect {
            Effect::BeginRecord {
                id,
                balance,
                ref sent,
                ref received,
            } => {
                self.records.insert(
                    id,
                    SnapshotRecord::new(id, balance, sent.clone(), received.clone()),
                );
            }
            Effect::RecordTransfer {
                id,
                from,
                seq,
                amount,
            } => {
                if let Some(record) = self.records.get_mut(&id) {
                    record.add_in_transit(InTransit { from, seq, amount });
                }
            }
            Effect::FinishRecord { id } => {
                if let Some(record) = self.records.get_mut(&id) {
                    record.finish();
                }
            }
            Effect::ChannelLost { id, from } => {
                if let Some(record) = self.records.get_mut(&id) {
                    record.lose(from);
                }
            }
            Effect::SendMarker { .. } => {}
        }
    }

    /// Applies effects in order.
    pub fn apply_all(&mut self, effects: &[Effect]) {
        effects.iter().for_each(|effect| self.apply(effect));
    }

    /// Every record, by snapshot id.
    pub fn records(&self) -> &HashMap<SnapshotId, SnapshotRecord> {
        &self.records
    }

    /// The record of snapshot `id`, if it has begun.
    pub fn get(&self, id: SnapshotId) -> Option<&SnapshotRecord> {
        self.records.get(&id)
    }
}
