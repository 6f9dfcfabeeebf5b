//! [`BranchCore`]: a branch's ledger and the Chandy-Lamport marker rules, with no I/O.
//!
//! The rules, per snapshot id `s`, exactly as the algorithm states them:
//! - `InitSnapshot(s)`: record the balance, send a marker on every outgoing channel, and start
//!   recording every incoming channel.
//! - The first `Marker(s)` on channel `c`: record the balance, record `c` as empty, start
//!   recording every other incoming channel, send a marker on every outgoing channel.
//! - A later `Marker(s)` on channel `c`: stop recording `c`. When no channel is recording, the
//!   branch's record of `s` is finished.
//! - A `Transfer` on channel `c`: credit the balance, and for every snapshot still recording `c`,
//!   add the amount to that channel's state.
//!
//! Snapshots are independent: each id has its own set of recording channels.

use std::collections::HashMap;

use super::{IdSet, Ledger};

/// A snapshot's id, as the controller numbers them.
pub type SnapshotId = u32;

/// An incoming or outgoing channel, named by the peer's index in the branch's peer list
/// (`all_branches` order, skipping this branch): the same order `channel_state` uses on the wire.
pub type Channel = usize;

/// Something the caller must do as a result of a message: send a marker, or update a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A new record for snapshot `id`: the branch's balance at the cut and one empty channel
    /// state per peer. Always comes before any other effect for `id`.
    BeginRecord {
        id: SnapshotId,
        balance: u64,
        channels: usize,
    },
    /// Send `Marker(id)` on the outgoing channel to peer `to`.
    SendMarker { to: Channel, id: SnapshotId },
    /// `amount` arrived on channel `from` while it was recording for `id`: it was in transit.
    RecordTransfer {
        id: SnapshotId,
        from: Channel,
        amount: u64,
    },
    /// Every incoming channel has delivered its marker: the record of `id` is final.
    FinishRecord { id: SnapshotId },
}

/// A message the core refused. Nothing changed when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("insufficient funds: balance {balance}, transfer of {amount} refused")]
    InsufficientFunds { balance: u64, amount: u64 },
    #[error("balance {balance} plus {amount} would overflow")]
    BalanceOverflow { balance: u64, amount: u64 },
    #[error("snapshot {0} was already started here")]
    SnapshotAlreadyStarted(SnapshotId),
    #[error("second marker for snapshot {id} on the channel from peer #{from}")]
    DuplicateMarker { id: SnapshotId, from: Channel },
    #[error("marker for snapshot {id} from peer #{from} after that snapshot finished here")]
    MarkerAfterFinish { id: SnapshotId, from: Channel },
    #[error("no channel #{0}: the bank has fewer peers")]
    UnknownChannel(Channel),
}

/// Which incoming channels are still recording for one snapshot in progress.
#[derive(Debug, Clone)]
struct Recording {
    /// `open[c]`: channel `c` has not delivered its marker yet.
    open: Vec<bool>,
    /// How many entries of `open` are true; the record is finished at zero.
    open_count: usize,
}

/// One branch's state machine: its ledger and every snapshot it takes part in.
#[derive(Debug, Clone)]
pub struct BranchCore {
    /// The money this branch holds.
    ledger: Ledger,
    /// How many peers (incoming and outgoing channels) the branch has.
    peers: usize,
    /// Snapshots whose record is not finished yet.
    recording: HashMap<SnapshotId, Recording>,
    /// Snapshots whose record is finished: a marker for one of these is a protocol error, not
    /// the start of a new snapshot.
    finished: IdSet,
}

impl BranchCore {
    /// A branch holding `balance` with `peers` peers.
    pub fn new(balance: u64, peers: usize) -> Self {
        Self {
            ledger: Ledger::new(balance),
            peers,
            recording: HashMap::new(),
            finished: IdSet::new(),
        }
    }

    /// The branch's ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// How many peers the branch has.
    pub fn peers(&self) -> usize {
        self.peers
    }

    /// Whether snapshot `id` has started here and is not finished.
    pub fn is_recording(&self, id: SnapshotId) -> bool {
        self.recording.contains_key(&id)
    }

    /// Whether this branch has ever started snapshot `id` (finished or not).
    pub fn knows(&self, id: SnapshotId) -> bool {
        self.recording.contains_key(&id) || self.finished.contains(id)
    }

    /// How many snapshots are recording right now.
    pub fn snapshots_in_progress(&self) -> usize {
        self.recording.len()
    }

    /// Takes `amount` out of the balance for a transfer the caller is about to send.
    pub fn withdraw(&mut self, amount: u64) -> Result<(), CoreError> {
        self.ledger.withdraw(amount)
    }

    /// Puts back `amount` that was withdrawn for a transfer that could not be sent after all.
    pub fn refund(&mut self, amount: u64) {
        if let Err(err) = self.ledger.deposit(amount) {
            log::error!("refund failed: {err}");
        }
    }

    /// The controller asked this branch to start snapshot `id`.
    pub fn start_snapshot(
        &mut self,
        id: SnapshotId,
        out: &mut Vec<Effect>,
    ) -> Result<(), CoreError> {
        if self.knows(id) {
            return Err(CoreError::SnapshotAlreadyStarted(id));
        }
        self.begin(id, None, out);
        Ok(())
    }

    /// A marker for snapshot `id` arrived on the channel from peer `from`.
    pub fn receive_marker(
        &mut self,
        from: Channel,
        id: SnapshotId,
        out: &mut Vec<Effect>,
    ) -> Result<(), CoreError> {
        self.check_channel(from)?;
        if self.finished.contains(id) {
            return Err(CoreError::MarkerAfterFinish { id, from });
        }
        let Some(recording) = self.recording.get_mut(&id) else {
            self.begin(id, Some(from), out);
            return Ok(());
        };
        if !recording.open[from] {
            return Err(CoreError::DuplicateMarker { id, from });
        }
        recording.open[from] = false;
        recording.open_count -= 1;
        if recording.open_count == 0 {
            self.finish(id, out);
        }
        Ok(())
    }

    /// A transfer of `amount` arrived on the channel from peer `from`.
    pub fn receive_transfer(
        &mut self,
        from: Channel,
        amount: u64,
        out: &mut Vec<Effect>,
    ) -> Result<(), CoreError> {
        self.check_channel(from)?;
        self.ledger.deposit(amount)?;
        for (&id, recording) in &self.recording {
            if recording.open[from] {
                out.push(Effect::RecordTransfer { id, from, amount });
            }
        }
        Ok(())
    }

    fn check_channel(&self, channel: Channel) -> Result<(), CoreError> {
        if channel < self.peers {
            Ok(())
        } else {
            Err(CoreError::UnknownChannel(channel))
        }
    }

    /// Records the balance, sends markers everywhere, and opens every channel but `closed`.
    fn begin(&mut self, id: SnapshotId, closed: Option<Channel>, out: &mut Vec<Effect>) {
        out.push(Effect::BeginRecord {
            id,
            balance: self.ledger.balance(),
            channels: self.peers,
        });
        out.extend((0..self.peers).map(|to| Effect::SendMarker { to, id }));
        let mut open = vec![true; self.peers];
        if let Some(channel) = closed {
            open[channel] = false;
        }
        let open_count = open.iter().filter(|&&o| o).count();
        if open_count == 0 {
            self.finish(id, out);
        } else {
            self.recording.insert(id, Recording { open, open_count });
        }
    }

    fn finish(&mut self, id: SnapshotId, out: &mut Vec<Effect>) {
        self.recording.remove(&id);
        self.finished.insert(id);
        out.push(Effect::FinishRecord { id });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::RecordBook;

    fn markers(effects: &[Effect]) -> Vec<Channel> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::SendMarker { to, .. } => Some(*to),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn init_snapshot_records_balance_and_sends_markers_everywhere() {
        let mut core = BranchCore::new(100, 3);
        let mut out = Vec::new();
        core.start_snapshot(7, &mut out).unwrap();
        assert_eq!(
            out[0],
            Effect::BeginRecord {
                id: 7,
                balance: 100,
                channels: 3
            }
        );
        assert_eq!(markers(&out), vec![0, 1, 2]);
        assert!(core.is_recording(7));
        assert_eq!(
            core.start_snapshot(7, &mut Vec::new()),
            Err(CoreError::SnapshotAlreadyStarted(7))
        );
    }

    #[test]
    fn first_marker_records_balance_empties_its_channel_and_records_the_others() {
        let mut core = BranchCore::new(50, 2);
        let mut out = Vec::new();
        core.receive_marker(0, 1, &mut out).unwrap();
        assert_eq!(
            out[0],
            Effect::BeginRecord {
                id: 1,
                balance: 50,
                channels: 2
            }
        );
        assert_eq!(markers(&out), vec![0, 1]);
        out.clear();
        // Channel 0 delivered its marker: what follows on it is after the cut.
        core.receive_transfer(0, 5, &mut out).unwrap();
        assert!(out.is_empty());
        // Channel 1 is still recording: this transfer was in transit.
        core.receive_transfer(1, 3, &mut out).unwrap();
        assert_eq!(
            out,
            vec![Effect::RecordTransfer {
                id: 1,
                from: 1,
                amount: 3
            }]
        );
        assert_eq!(core.ledger().balance(), 58);
    }

    #[test]
    fn later_marker_closes_its_channel_and_last_one_finishes() {
        let mut core = BranchCore::new(10, 3);
        core.start_snapshot(4, &mut Vec::new()).unwrap();
        let mut out = Vec::new();
        core.receive_marker(2, 4, &mut out).unwrap();
        core.receive_marker(0, 4, &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(
            core.receive_marker(0, 4, &mut out),
            Err(CoreError::DuplicateMarker { id: 4, from: 0 })
        );
        core.receive_marker(1, 4, &mut out).unwrap();
        assert_eq!(out, vec![Effect::FinishRecord { id: 4 }]);
        assert!(!core.is_recording(4));
        assert_eq!(
            core.receive_marker(1, 4, &mut Vec::new()),
            Err(CoreError::MarkerAfterFinish { id: 4, from: 1 })
        );
    }

    #[test]
    fn transfer_between_recording_and_marker_lands_in_channel_state() {
        let mut core = BranchCore::new(100, 2);
        let mut book = RecordBook::new();
        let mut out = Vec::new();
        core.start_snapshot(1, &mut out).unwrap();
        core.receive_transfer(0, 7, &mut out).unwrap();
        core.receive_transfer(0, 2, &mut out).unwrap();
        core.receive_marker(0, 1, &mut out).unwrap();
        core.receive_transfer(0, 100, &mut out).unwrap(); // after the marker: not in transit
        core.receive_marker(1, 1, &mut out).unwrap();
        book.apply_all(&out);
        let record = book.get(1).unwrap();
        assert!(record.is_finished());
        assert_eq!(record.balance(), 100);
        assert_eq!(record.channel_state(), &[9, 0]);
    }

    #[test]
    fn concurrent_snapshots_each_record_their_own_channels() {
        let mut core = BranchCore::new(100, 2);
        let mut book = RecordBook::new();
        let mut out = Vec::new();
        core.start_snapshot(1, &mut out).unwrap(); // records channels 0 and 1
        core.receive_transfer(0, 1, &mut out).unwrap(); // in transit for 1
        core.receive_marker(1, 2, &mut out).unwrap(); // snapshot 2 starts: 1 empty, 0 recording
        core.receive_transfer(0, 10, &mut out).unwrap(); // in transit for 1 and 2
        core.receive_transfer(1, 20, &mut out).unwrap(); // in transit for 1 only
        core.receive_marker(0, 1, &mut out).unwrap();
        core.receive_transfer(0, 100, &mut out).unwrap(); // in transit for 2 only
        core.receive_marker(0, 2, &mut out).unwrap(); // 2 finished
        core.receive_marker(1, 1, &mut out).unwrap(); // 1 finished
        book.apply_all(&out);
        let first = book.get(1).unwrap();
        assert_eq!(
            (first.balance(), first.channel_state()),
            (100, &[11, 20][..])
        );
        let second = book.get(2).unwrap();
        assert_eq!(
            (second.balance(), second.channel_state()),
            (101, &[110, 0][..])
        );
        assert!(first.is_finished() && second.is_finished());
        assert_eq!(core.snapshots_in_progress(), 0);
    }

    #[test]
    fn a_branch_with_one_peer_finishes_on_its_first_marker() {
        let mut core = BranchCore::new(5, 1);
        let mut out = Vec::new();
        core.receive_marker(0, 3, &mut out).unwrap();
        assert_eq!(out.last(), Some(&Effect::FinishRecord { id: 3 }));
        assert_eq!(markers(&out), vec![0]);
    }

    #[test]
    fn refused_messages_change_nothing() {
        let mut core = BranchCore::new(5, 2);
        let mut out = Vec::new();
        assert_eq!(
            core.receive_transfer(2, 1, &mut out),
            Err(CoreError::UnknownChannel(2))
        );
        assert_eq!(
            core.receive_marker(9, 1, &mut out),
            Err(CoreError::UnknownChannel(9))
        );
        assert!(core.withdraw(6).is_err());
        assert!(out.is_empty());
        assert_eq!(core.ledger().balance(), 5);
        assert!(!core.knows(1));
    }
}
