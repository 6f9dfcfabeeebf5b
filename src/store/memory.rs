//! [`MemoryStore`]: a branch's store in memory, for simulations and model checking, with the
//! redb store's behaviour (the conformance suite holds both to it) and a simulated crash.
//!
//! A commit replaces the committed state whole, under a lock, so a reader never sees half of
//! one. A crash is [`MemoryStore::reopen`]: the restarted branch gets a new handle on the last
//! commit, and the handle of the process that crashed is fenced off, so a commit it was still
//! making when it "died" never lands.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::{
    BankMeta, BranchStore, Changes, FrameBatch, RecordHeader, Restored, StoreError, StoredCore,
    TransitBatch,
};
use crate::core::{Channel, Frame, InTransit, Position, SnapshotId};

/// What the store holds, table by table as the redb store keeps it: a value, so a model
/// checker can keep one per branch in its states and compare them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct StoreImage {
    bank: Option<BankMeta>,
    core: Option<StoredCore>,
    frames: BTreeMap<(Channel, Position), Vec<Frame>>,
    records: BTreeMap<SnapshotId, RecordHeader>,
    transit: BTreeMap<(SnapshotId, u64), Vec<InTransit>>,
}

impl StoreImage {
    /// The image after a commit of `changes` (with `bank`, the bank's description, at the
    /// first of a bank epoch, which starts the image over), in the order [`Changes`] documents.
    pub fn apply(&self, bank: Option<&BankMeta>, changes: &Changes) -> Self {
        let mut next = self.clone();
        if let Some(bank) = bank {
            // A new bank epoch: nothing of the one before stays.
            next.bank = Some(bank.clone());
            next.frames.clear();
            next.records.clear();
            next.transit.clear();
        }
        if let Some(core) = &changes.core {
            next.core = Some(core.clone());
        }
        for FrameBatch {
            channel,
            first,
            frames,
        } in &changes.frame_batches
        {
            next.frames.insert((*channel, *first), frames.clone());
        }
        for key in &changes.removed_frame_batches {
            next.frames.remove(key);
        }
        for header in &changes.records {
            next.records.insert(header.id, header.clone());
        }
        for TransitBatch {
            id,
            index,
            transfers,
        } in &changes.transit
        {
            next.transit.insert((*id, *index), transfers.clone());
        }
        for id in &changes.removed_records {
            next.records.remove(id);
            next.transit.retain(|(record, _), _| record != id);
        }
        next
    }
}

impl StoreImage {
    /// The bank epoch of the bank it holds, if it holds one.
    pub fn epoch(&self) -> Option<u64> {
        self.bank.as_ref().map(|bank| bank.epoch)
    }

    /// The state a branch restarted from this image gets; `None` before a commit held a bank.
    pub fn restored(self) -> Result<Option<Restored>, StoreError> {
        let tables = self;
        let Some(bank) = tables.bank else {
            return Ok(None);
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: "(memory store)".into(),
            reason,
        };
        let core = tables
            .core
            .ok_or_else(|| corrupt("no core state beside the bank's description".into()))?;
        let frame_batches =
            tables
                .frames
                .into_iter()
                .map(|((channel, first), frames)| FrameBatch {
                    channel,
                    first,
                    frames,
                });
        let transit = &tables.transit;
        let records = tables.records.into_values().map(|header| {
            let batches = transit
                .range((header.id, 0)..=(header.id, u64::MAX))
                .map(|(_, transfers)| transfers.clone())
                .collect();
            (header, batches)
        });
        super::assemble(bank, core, frame_batches, records)
            .map(Some)
            .map_err(corrupt)
    }
}

/// The committed state and which handle may commit to it.
#[derive(Debug, Default)]
struct Shared {
    committed: StoreImage,
    /// The generation of the live handle: bumped by every reopen.
    generation: u64,
}

/// A branch's store in memory. Cloning gives another handle of the same process (as cloning
/// [`super::Store`] does); [`Self::reopen`] gives the handle of a restarted one.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Mutex<Shared>>,
    /// The generation this handle belongs to: a handle of a crashed process can no longer
    /// commit.
    generation: u64,
}

impl MemoryStore {
    /// A new, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store as a branch restarted after a crash opens it: exactly the last commit, with
    /// what was not committed gone. Handles from before the crash are fenced off: their
    /// commits fail and change nothing.
    pub fn reopen(&self) -> Result<(Self, Option<Restored>), StoreError> {
        let generation = {
            let mut shared = self.lock();
            shared.generation += 1;
            shared.generation
        };
        let store = Self {
            shared: self.shared.clone(),
            generation,
        };
        let restored = store.read()?;
        Ok((store, restored))
    }

    /// The handle's view of the shared state; a lock poisoned by a panicking holder still
    /// holds a whole commit, since a commit is swapped in whole.
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `changes` and drops the result, as a crash in the middle of the commit would
    /// (for the conformance suite).
    #[cfg(test)]
    pub(super) fn abandon_commit(&self, bank: Option<&BankMeta>, changes: &Changes) {
        drop(self.lock().committed.apply(bank, changes));
    }
}

impl BranchStore for MemoryStore {
    fn commit(&self, bank: Option<&BankMeta>, changes: &Changes) -> Result<(), StoreError> {
        let mut shared = self.lock();
        if shared.generation != self.generation {
            return Err(StoreError::Write(
                "the store was reopened after a crash of this handle's process".into(),
            ));
        }
        shared.committed = shared.committed.apply(bank, changes);
        Ok(())
    }

    fn read(&self) -> Result<Option<Restored>, StoreError> {
        self.lock().committed.clone().restored()
    }
}
