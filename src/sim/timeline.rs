//! [`TimelineEvent`]: what happened in a simulation, in order, for drawing its space-time
//! diagram ([`super::svg`]).
//!
//! Recorded only when asked for ([`super::Simulator::enable_timeline`]). Events are in the
//! order they happened, which is finer than their tick: within one tick the deliveries come
//! first (in the delivery rule's order), then the script's events for that tick. A message is
//! identified by its link and its place in that link's FIFO queue: the k-th `Deliver` on a link
//! is the k-th `Send` on it since the link's last `Cut` (a cut loses every message in flight on
//! the link; what the sender resends is sent again, and a resent frame the receiver already had
//! is still delivered, then dropped).

use super::Payload;
use crate::core::SnapshotId;

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Transfer number `seq` on its link, of `amount`.
    Transfer { seq: u64, amount: u64 },
    /// The marker of snapshot `snapshot`.
    Marker { snapshot: SnapshotId },
}

impl From<Payload> for MessageKind {
    fn from(payload: Payload) -> Self {
        match payload {
            Payload::Transfer { seq, amount } => MessageKind::Transfer { seq, amount },
            Payload::Marker { id } => MessageKind::Marker { snapshot: id },
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
}
