//! What one branch recorded for one snapshot, built up from [`Effect`]s.

use std::collections::HashMap;

use super::{Channel, Effect, SnapshotId};

/// One branch's part of one global snapshot: its balance at the cut and the money it found in
/// transit on each incoming channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The snapshot this record belongs to.
    id: SnapshotId,
    /// The branch's balance when it recorded its state.
    balance: u64,
    /// Money in transit per incoming channel, indexed like the branch's peer list.
    channel_state: Vec<u64>,
    /// Whether every incoming channel has delivered its marker.
    finished: bool,
}

impl SnapshotRecord {
    /// A fresh record: balance at the cut, every channel empty, not finished.
    pub fn new(id: SnapshotId, balance: u64, channels: usize) -> Self {
        Self {
            id,
            balance,
            channel_state: vec![0; channels],
            finished: false,
        }
    }

    /// Adds money found in transit on `from`. Saturates: a sum past u64 cannot come from a bank
    /// whose total fits in u32, and a record must never wrap around to a small number.
    pub fn add_in_transit(&mut self, from: Channel, amount: u64) {
        if let Some(state) = self.channel_state.get_mut(from) {
            *state = state.saturating_add(amount);
        }
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

/// The records of many snapshots, driven directly by a [`super::BranchCore`]'s effects. This is
/// how tests and simulations keep records; a live branch gives each record its own actor.
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
                channels,
            } => {
                self.records
                    .insert(id, SnapshotRecord::new(id, balance, channels));
            }
            Effect::RecordTransfer { id, from, amount } => {
                if let Some(record) = self.records.get_mut(&id) {
                    record.add_in_transit(from, amount);
                }
            }
            Effect::FinishRecord { id } => {
                if let Some(record) = self.records.get_mut(&id) {
                    record.finish();
                }
            }
            Effect::SendMarker { .. } => {}
        }
    }

    /// Applies effects in order.
    pub fn apply_all(&mut self, effects: &[Effect]) {
        effects.iter().for_each(|effect| self.apply(effect));
    }

    /// The record of snapshot `id`, if it has begun.
    pub fn get(&self, id: SnapshotId) -> Option<&SnapshotRecord> {
        self.records.get(&id)
    }
}
