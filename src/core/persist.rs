//! What a durable branch makes durable, as the branch's own types: the changes one group commit
//! makes, and the state a store gives back after a crash. No I/O and no encoding: the
//! [`crate::core::node`] produces [`Changes`] in its `Ready`, and [`crate::store`] persists them
//! (and the bank's description, which the runtime adds) in whatever format it likes.

use super::{
    Channel, ChannelCount, CoreState, Frame, InTransit, Position, SnapshotId, SnapshotRecord,
};

/// The positions of one peer's two channels, beside the core's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ChannelMarks {
    /// Highest position delivered (and durable) from the peer: where its resend must start.
    pub delivered: Position,
    /// Highest position of ours the peer has acknowledged: frames after it are kept to resend.
    pub acked: Position,
    /// The peer's incarnation once known, so a peer that lost its state is told apart.
    pub peer_incarnation: Option<u64>,
}

/// The core's state and the channels' positions: rewritten whole at every commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoredCore {
    /// The ledger, the channel counters and the snapshots (see [`CoreState`]).
    pub state: CoreState,
    /// Per peer (channel order): its channels' positions.
    pub channels: Vec<ChannelMarks>,
    /// The highest snapshot id recorded, so an attaching controller picks fresh ids.
    pub highest_snapshot: Option<SnapshotId>,
}

/// Frames one commit added to one channel: positions `first`, `first + 1`, ...
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FrameBatch {
    /// The peer the frames go to.
    pub channel: Channel,
    /// The first frame's position; also the batch's key, by which it is removed.
    pub first: Position,
    /// The frames, in position order.
    pub frames: Vec<Frame>,
}

/// What of a snapshot record is rewritten whole when it changes: all of it but the transfers
/// found in transit, which only grow and are appended in [`TransitBatch`]es.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordHeader {
    /// The snapshot.
    pub id: SnapshotId,
    /// The balance at the cut.
    pub balance: u64,
    /// Transfers sent per outgoing channel before the cut.
    pub sent: Vec<ChannelCount>,
    /// Transfers received per incoming channel before the cut.
    pub received: Vec<ChannelCount>,
    /// Incoming channels lost before their marker came.
    pub lost: Vec<Channel>,
    /// Every incoming channel has delivered its marker (or been lost).
    pub finished: bool,
    /// Already handed to a controller: kept a while (as the branch keeps a copy in memory) so a
    /// controller that lost the answer in a crash can ask again.
    pub retrieved: bool,
}

/// Transfers one commit found in transit for one record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransitBatch {
    /// The record.
    pub id: SnapshotId,
    /// The batch's index among the record's batches (0, 1, ...), which keeps them in order.
    pub index: u64,
    /// The transfers, in arrival order.
    pub transfers: Vec<InTransit>,
}

/// Everything one group commit changes. Applied in this order: (the bank, which the caller adds), core, frame batches added
/// then removed, record headers written, transit batches added, records removed (with all
/// their transit batches).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Changes {
    /// The core, at every commit that changed it.
    pub core: Option<StoredCore>,
    /// Frames sent since the last commit, one batch per channel.
    pub frame_batches: Vec<FrameBatch>,
    /// `(channel, first position)` of batches now wholly acknowledged.
    pub removed_frame_batches: Vec<(Channel, Position)>,
    /// Record headers written or rewritten (a later one for the same id wins).
    pub records: Vec<RecordHeader>,
    /// Transfers found in transit since the last commit.
    pub transit: Vec<TransitBatch>,
    /// Records retrieved long enough ago, or discarded.
    pub removed_records: Vec<SnapshotId>,
}

/// One peer's channel as the store held it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RestoredChannel {
    /// The frames not acknowledged, with their positions (`acked + 1`, ...): resent after
    /// reconnecting.
    pub unacked: Vec<(Position, Frame)>,
    /// The stored frame batches as `(first, last)` positions, oldest first, so acknowledgements
    /// can remove them.
    pub batches: Vec<(Position, Position)>,
}

/// One snapshot record as the store held it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RestoredRecord {
    /// Its header, as last written.
    pub header: RecordHeader,
    /// The transfers found in transit, every batch's in order.
    pub in_transit: Vec<InTransit>,
    /// How many transit batches it has (the next batch's index).
    pub transit_batches: u64,
}

impl RestoredRecord {
    /// The record rebuilt: what its recorder holds, and what a controller is answered.
    pub fn record(&self) -> SnapshotRecord {
        let header = &self.header;
        let mut record = SnapshotRecord::new(
            header.id,
            header.balance,
            header.sent.clone(),
            header.received.clone(),
        );
        for &transfer in &self.in_transit {
            record.add_in_transit(transfer);
        }
        for &lost in &header.lost {
            record.lose(lost);
        }
        if header.finished {
            record.finish();
        }
        record
    }
}
