//! [`TimelineEvent`]: what happened in a simulation, in order, for drawing its space-time
//! diagram ([`super::svg`]).
//!
//! Recorded only when asked for ([`super::Simulator::enable_timeline`]). Events are in the
//! order they happened, which is finer than their tick: within one tick the deliveries come
//! first (in the delivery rule's order), then the script's events for that tick. Only channel
//! frames (transfers and markers) are events; the nodes' control messages (`Resume`, `Ack`) are
//! not drawn. A message is identified by its link and its place in that link's FIFO queue: the
//! k-th `Deliver` on a link is the k-th `Send` on it since the link's last `Cut` (a cut, or a
//! crash of either end, loses every message in flight on the link; what the sender resends is
//! sent again, and a resent frame the receiver already had is still delivered, then dropped).
//!
//! A durable branch's transfer is debited when it is sent (`Debit`) but leaves only once the
//! commit holding it is durable (its `Send`, a tick or more later).
//!
//! A crash can take back what a branch had done since its last commit: a record it had begun
//! (`Unrecord`) or transfers it had found in transit (`InTransitUndone`). Both come right after
//! the `Crash`; the branch does them again once the frames are resent.

use crate::core::{Frame, SnapshotId};

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Transfer number `seq` on its link, of `amount`.
    Transfer { seq: u64, amount: u64 },
    /// The marker of snapshot `snapshot`.
    Marker { snapshot: SnapshotId },
}

impl From<Frame> for MessageKind {
    fn from(frame: Frame) -> Self {
        match frame {
            Frame::Transfer { seq, amount } => MessageKind::Transfer { seq, amount },
            Frame::Marker { id } => MessageKind::Marker { snapshot: id },
        }
    }
}

/// One thing that happened, at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineEvent {
    /// `src` put a message on its link to `dst`, deliverable from tick `due`.
    Send {
        tick: u64,
        src: usize,
        dst: usize,
        kind: MessageKind,
        due: u64,
    },
    /// `src` debited transfer `seq` to `dst` now, but its frame waits for a commit (a durable
    /// branch): it is sent later (a `Send`).
    Debit {
        tick: u64,
        src: usize,
        dst: usize,
        seq: u64,
    },
    /// The head of the link `src -> dst` was delivered.
    Deliver { tick: u64, src: usize, dst: usize },
    /// The link `src -> dst` failed: every message in flight on it is lost.
    Cut { tick: u64, src: usize, dst: usize },
    /// `branch` recorded its state for snapshot `snapshot` (its point on the cut).
    Record {
        tick: u64,
        branch: usize,
        snapshot: SnapshotId,
    },
    /// `dst` recorded transfer `seq` from `src` as in transit for snapshot `snapshot` (on
    /// delivering it).
    InTransit {
        snapshot: SnapshotId,
        src: usize,
        dst: usize,
        seq: u64,
    },
    /// `branch` crashed: it is down until it restarts.
    Crash { tick: u64, branch: usize },
    /// `branch` started again from its store.
    Restart { tick: u64, branch: usize },
    /// The crash just before lost `branch`'s record of `snapshot` (it was not committed).
    Unrecord { snapshot: SnapshotId, branch: usize },
    /// The crash just before lost `dst`'s note that transfer `seq` from `src` was in transit
    /// for `snapshot`.
    InTransitUndone {
        snapshot: SnapshotId,
        src: usize,
        dst: usize,
        seq: u64,
    },
}
