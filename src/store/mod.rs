//! A durable branch's store: what a branch keeps so that, killed at any instant, it restarts
//! with exactly the money, channels and snapshot records of its last commit.
//!
//! The store speaks the branch's own types, not bytes: [`BranchStore`] takes one group commit's
//! [`Changes`] and gives back the [`Restored`] state of the last commit. Two implementations:
//! - [`Store`] ([`redb`]): an embedded, transactional, crash-safe database in the
//!   branch's `--data-dir`, the one a live branch uses. Its values are encoded with the messages
//!   of `proto/store.proto`, and that encoding is known only to [`codec`].
//! - [`MemoryStore`] ([`memory`]): the same state in memory, for simulations and model checking;
//!   it survives a simulated crash ([`MemoryStore::reopen`]): what was not committed is gone,
//!   and the reopened store holds exactly the last commit.
//!
//! What a commit changes, and so what a store holds:
//! - the bank ([`BankMeta`]): the members, the cluster secret, this branch's incarnation and
//!   bank epoch; written at `InitBranch`, and again by a rollback's commit, which starts the
//!   store over (every frame and record of the old epoch dropped in the same transaction);
//! - the core ([`StoredCore`]): the balance, per peer the channel counters and positions,
//!   snapshots recording, finished snapshot ids. Small, so rewritten whole at every commit;
//! - frames: every frame sent and not yet acknowledged, in one [`FrameBatch`] per commit and
//!   channel; a batch is removed once all of it is acknowledged;
//! - records: every snapshot record not yet retrieved (or retrieved recently, kept for a
//!   controller that asks again), its [`RecordHeader`] rewritten when it changes and the
//!   transfers found in transit appended in [`TransitBatch`]es.
//!
//! Both implementations assemble what they read the same way ([`assemble`]), so they accept and
//! refuse the same states; one conformance suite (`suite`, in the tests) holds both to the
//! same behaviour.

pub mod codec;
pub mod memory;
pub mod redb;
#[cfg(test)]
mod suite;

use std::path::PathBuf;

use crate::auth::Secret;
use crate::config::BranchEntry;
use crate::core::{Frame, InTransit, Position};

pub use crate::core::persist::{
    Changes, ChannelMarks, FrameBatch, RecordHeader, RestoredChannel, RestoredRecord, StoredCore,
    TransitBatch,
};

pub use self::codec::pb;
pub use self::memory::{MemoryStore, StoreImage};
pub use self::redb::{FILE_NAME, LOCK_FILE_NAME, Store};

/// The store format this build reads and writes.
pub const FORMAT: u32 = 1;

/// A place a branch's state is made durable. A branch stages [`Changes`] as it makes them and
/// hands each group commit to [`BranchStore::commit`] on a thread of its own; it lets frames,
/// acknowledgements and answers out only once the commit holding what they depend on returned.
pub trait BranchStore: Send + Sync {
    /// Makes `changes` durable, all of them or none (one transaction, one fsync for the redb
    /// store). Blocking: never called on the branch's event loop.
    /// `bank` is the bank's description, given with the first commit of a bank epoch (at
    /// `InitBranch`, and at a rollback's commit). A commit that carries it starts the store
    /// over: every frame and record kept before is dropped in the same transaction, so a
    /// crash leaves either the whole old epoch or the whole new one.
    fn commit(&self, bank: Option<&BankMeta>, changes: &Changes) -> Result<(), StoreError>;

    /// The state as of the last commit; `None` while no commit has held a bank (a new branch,
    /// or one that died before its `InitBranch` was durable).
    fn read(&self) -> Result<Option<Restored>, StoreError>;
}

/// The bank a branch belongs to, as it was given at `InitBranch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BankMeta {
    /// This branch's name: a store is one branch's, and refuses to open as another's.
    pub name: String,
    /// Every member, this branch included, in `InitBranch` order (which numbers the channels).
    pub members: Vec<BranchEntry>,
    /// The cluster secret (empty in a bank without one), so a restarted branch authenticates
    /// its peers without being told it again.
    pub secret: Secret,
    /// This branch's incarnation: kept, so its peers see a restart, not a stranger.
    pub incarnation: u64,
    /// The bank epoch the stored state belongs to (0 until a rollback), so a restarted branch
    /// rejoins its bank in the epoch it committed, never an older one.
    pub epoch: u64,
}

/// A branch's state as its store held it at the last commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The bank.
    pub bank: BankMeta,
    /// The core and the channels' positions.
    pub core: StoredCore,
    /// Per peer (channel order): the frames to resend and the stored batches.
    pub channels: Vec<RestoredChannel>,
    /// Every record kept, by snapshot id.
    pub records: Vec<RestoredRecord>,
}

/// Builds the [`Restored`] state from what a store holds, refusing (with the reason) a state
/// no commit could have left: channels that do not match the members, frames of a channel that
/// does not exist, or kept frames that do not follow the acknowledged position without a gap.
/// `frame_batches` come in (channel, first position) order, `records` in id order with their
/// transit batches in index order.
pub fn assemble(
    bank: BankMeta,
    core: StoredCore,
    frame_batches: impl IntoIterator<Item = FrameBatch>,
    records: impl IntoIterator<Item = (RecordHeader, Vec<Vec<InTransit>>)>,
) -> Result<Restored, String> {
    let peers = core.channels.len();
    if peers + 1 != bank.members.len() {
        return Err(format!(
            "{} peers' channels for a bank of {} members",
            peers,
            bank.members.len()
        ));
    }
    let mut channels = vec![RestoredChannel::default(); peers];
    for FrameBatch {
        channel,
        first,
        frames,
    } in frame_batches
    {
        let acked = core
            .channels
            .get(channel)
            .ok_or_else(|| format!("frames for channel {channel}, which does not exist"))?
            .acked;
        let last = (frames.len() as u64)
            .checked_sub(1)
            .and_then(|len| first.checked_add(len))
            .ok_or_else(|| {
                format!(
                    "a frame batch of {} frame(s) at position {first} of channel {channel}",
                    frames.len()
                )
            })?;
        let kept = &mut channels[channel];
        kept.batches.push((first, last));
        kept.unacked
            .extend((first..=last).zip(frames).filter(|&(pos, _)| pos > acked));
    }
    for (channel, kept) in channels.iter().enumerate() {
        let acked = core.channels[channel].acked;
        let follows = |(i, (pos, _)): (usize, &(Position, Frame))| {
            acked.checked_add(i as u64 + 1) == Some(*pos)
        };
        if !kept.unacked.iter().enumerate().all(follows) {
            return Err(format!(
                "the frames kept for channel {channel} do not follow position {acked} without a gap"
            ));
        }
    }
    let records = records
        .into_iter()
        .map(|(header, batches)| RestoredRecord {
            header,
            transit_batches: batches.len() as u64,
            in_transit: batches.into_iter().flatten().collect(),
        })
        .collect();
    Ok(Restored {
        bank,
        core,
        channels,
        records,
    })
}

/// What the operator allowed when opening a store (the `branch` command's flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// `--reset-store`: start this branch afresh even though its directory holds a store file
    /// (empty, corrupt, or whole): the file is renamed aside (`branch.redb.reset-<seconds>`),
    /// never deleted, and a new store is created. Without it a present store file is never
    /// replaced, since it may hold the branch's money.
    pub reset: bool,
    /// `--allow-shared-data-dir`: accept a store or data directory that the group or others may
    /// read or write, although the store holds the cluster secret.
    pub allow_shared: bool,
}

/// Why a store cannot be used. A branch refuses to start on any of these: it never starts with
/// a guessed state. Each variant is one cause, with advice that fits it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {dir}: {reason}")]
    CreateDir { dir: PathBuf, reason: String },
    /// Another process has the store open (its lock file is locked, or redb's own lock on the
    /// store file is held).
    #[error(
        "another branch process holds {dir} ({}); stop it first, or give this branch its own --data-dir",
        holder(.pid)
    )]
    Locked { dir: PathBuf, pid: Option<u32> },
    /// The file system, the directory or the file does not let this process write.
    #[error(
        "{path} is read-only ({reason}): a durable branch must write its store; make it writable (nothing in it was changed)"
    )]
    ReadOnly { path: PathBuf, reason: String },
    /// A present store file of 0 bytes: never a new store (one is created whole, under another
    /// name, then renamed into place), so it is one cut short.
    #[error(
        "{path} is empty (0 bytes): a store cut short, not a new one; restore it from a backup, or start with --reset-store to set it aside and begin this branch afresh"
    )]
    Empty { path: PathBuf },
    #[error(
        "{path}: not a snapbank store or corrupt ({reason}); restore it from a backup, or start with --reset-store to set it aside and begin this branch afresh"
    )]
    Corrupt { path: PathBuf, reason: String },
    /// The store or its directory may be read or written by the group or others.
    #[error(
        "{path} may be read or written by its group or others (mode {mode:04o}) and the store holds the bank's secret: chmod go-rw {path}, or pass --allow-shared-data-dir if that is intended"
    )]
    Shared { path: PathBuf, mode: u32 },
    /// The bank kept in the store has another cluster secret than the one configured.
    #[error(
        "{path}: the bank kept here has another cluster secret than --secret-file; start this branch with its bank's secret file (or without --secret-file, to use the stored one)"
    )]
    SecretDiffers { path: PathBuf },
    #[error("cannot use {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error(
        "{path}: store format {found}, but this build reads format {FORMAT}; use the build that wrote it, or start with --reset-store to set it aside and begin afresh"
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "{path}: this is branch {found:?}'s store, not {expected:?}'s; give each branch its own --data-dir"
    )]
    OtherBranch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("writing the store failed: {0}")]
    Write(String),
}

/// How a lock holder is named in [`StoreError::Locked`].
fn holder(pid: &Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".into(),
    }
}
