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
//!
//! Channels need not be symmetric: a branch has `incoming` channels (indexed `0..incoming`) and
//! `outgoing` channels (indexed `0..outgoing`), so any directed topology can be simulated; a live
//! bank is a full mesh where both are the peer list. Every transfer carries a sequence number per
//! directed channel (1, 2, 3...), and when a branch records its state it also records how many
//! transfers (and how much money) it had sent on each outgoing channel and received on each
//! incoming one: the evidence [`super::audit`] uses to prove the cut consistent.

use std::collections::BTreeMap;

use super::{IdSet, Ledger};

/// A snapshot's id, as the controller numbers them.
pub type SnapshotId = u32;

/// An incoming or outgoing channel, by index. In a live bank it is the peer's index in the
/// branch's peer list (`all_branches` order, skipping this branch): the order `channel_state`
/// uses on the wire.
pub type Channel = usize;

/// How many transfers, and how much money, went over one directed channel so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ChannelCount {
    /// Transfers so far; also the sequence number of the latest one.
    pub count: u64,
    /// Their total amount.
    pub amount: u64,
    /// A digest chained over every `(sequence number, amount)` so far, in order: if the
    /// receiver's digest extended by the transfers it found in transit equals the sender's, those
    /// transfers carried exactly the amounts sent, one by one (not just the same sum).
    pub digest: u64,
}

impl ChannelCount {
    /// The counts after one more transfer of `amount`.
    pub fn after(self, amount: u64) -> Self {
        let count = self.count + 1;
        Self {
            count,
            amount: self.amount.saturating_add(amount),
            digest: chain_digest(self.digest, count, amount),
        }
    }
}

/// One step of [`ChannelCount::digest`]: folds transfer number `seq` of `amount` into `digest`.
/// A fixed, documented mix (splitmix64's finaliser), so other implementations can compute it; it
/// guards against mistakes, not against a member that lies on purpose.
pub fn chain_digest(digest: u64, seq: u64, amount: u64) -> u64 {
    fn mix(mut x: u64) -> u64 {
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    mix(digest ^ mix(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ amount))
}

/// Something the caller must do as a result of a message: send a marker, or update a record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Effect {
    /// A new record for snapshot `id`: the branch's balance at the cut and the per-channel
    /// counts at the cut (`sent` per outgoing, `received` per incoming channel). Always comes
    /// before any other effect for `id`.
    BeginRecord {
        id: SnapshotId,
        balance: u64,
        sent: Vec<ChannelCount>,
        received: Vec<ChannelCount>,
    },
    /// Send `Marker(id)` on outgoing channel `to`.
    SendMarker { to: Channel, id: SnapshotId },
    /// Transfer number `seq` of `amount` arrived on channel `from` while it was recording for
    /// `id`: it was in transit.
    RecordTransfer {
        id: SnapshotId,
        from: Channel,
        seq: u64,
        amount: u64,
    },
    /// The connection carrying incoming channel `from` is gone before its marker for `id`
    /// arrived: the channel stops recording and its state is unknown.
    ChannelLost { id: SnapshotId, from: Channel },
    /// Every incoming channel has delivered its marker (or been lost): the record of `id` is
    /// final.
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
    #[error("second marker for snapshot {id} on incoming channel #{from}")]
    DuplicateMarker { id: SnapshotId, from: Channel },
    #[error(
        "marker for snapshot {id} on incoming channel #{from} after that snapshot finished here"
    )]
    MarkerAfterFinish { id: SnapshotId, from: Channel },
    #[error("no channel #{0}")]
    UnknownChannel(Channel),
    #[error(
        "transfer numbered {got} on incoming channel #{from}, expected {expected}: repeated or reordered"
    )]
    OutOfSequence {
        from: Channel,
        expected: u64,
        got: u64,
    },
}

/// Everything a [`BranchCore`] holds, as plain data: what a durable branch persists at each
/// commit and restores from after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CoreState {
    /// The balance now.
    pub balance: u64,
    /// The balance from `InitBranch`.
    pub initial: u64,
    /// Transfers sent per outgoing channel.
    pub sent: Vec<ChannelCount>,
    /// Transfers received per incoming channel.
    pub received: Vec<ChannelCount>,
    /// Snapshots recording, each with its incoming channels still open.
    pub recording: Vec<(SnapshotId, Vec<bool>)>,
    /// Finished snapshots, as runs of ids.
    pub finished: Vec<(SnapshotId, SnapshotId)>,
}

/// Which incoming channels are still recording for one snapshot in progress.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Recording {
    /// `open[c]`: incoming channel `c` has not delivered its marker yet.
    open: Vec<bool>,
    /// How many entries of `open` are true; the record is finished at zero.
    open_count: usize,
}

/// One branch's state machine: its ledger, its channel counters and every snapshot it takes
/// part in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BranchCore {
    /// The money this branch holds.
    ledger: Ledger,
    /// Transfers sent so far per outgoing channel.
    sent: Vec<ChannelCount>,
    /// Transfers received so far per incoming channel.
    received: Vec<ChannelCount>,
    /// Incoming channels whose connection is gone: no marker will ever come on them.
    lost: Vec<bool>,
    /// Snapshots whose record is not finished yet.
    recording: BTreeMap<SnapshotId, Recording>,
    /// Snapshots whose record is finished: a marker for one of these is a protocol error, not
    /// the start of a new snapshot.
    finished: IdSet,
    /// A seeded bug for the model checker's tests: a later marker closes its channel only after
    /// the next transfer on it, which is recorded in transit.
    #[cfg(test)]
    late_close: Option<Vec<(SnapshotId, Channel)>>,
}

impl BranchCore {
    /// A branch holding `balance` in a full mesh: `peers` incoming and `peers` outgoing
    /// channels, channel `c` in both directions being peer `c`.
    pub fn new(balance: u64, peers: usize) -> Self {
        Self::with_links(balance, peers, peers)
    }

    /// A branch holding `balance` with `incoming` and `outgoing` channels.
    pub fn with_links(balance: u64, incoming: usize, outgoing: usize) -> Self {
        Self {
            ledger: Ledger::new(balance),
            sent: vec![ChannelCount::default(); outgoing],
            received: vec![ChannelCount::default(); incoming],
            lost: vec![false; incoming],
            recording: BTreeMap::new(),
            finished: IdSet::new(),
            #[cfg(test)]
            late_close: None,
        }
    }

    /// The core's state as plain data (see [`CoreState`]). Lost channels are not part of it: a
    /// restored branch has no connection yet, and its peers get a fresh grace period.
    pub fn state(&self) -> CoreState {
        let mut recording: Vec<(SnapshotId, Vec<bool>)> = self
            .recording
            .iter()
            .map(|(&id, recording)| (id, recording.open.clone()))
            .collect();
        recording.sort_unstable_by_key(|(id, _)| *id);
        CoreState {
            balance: self.ledger.balance(),
            initial: self.ledger.initial(),
            sent: self.sent.clone(),
            received: self.received.clone(),
            recording,
            finished: self.finished.runs_iter().collect(),
        }
    }

    /// A core restored from [`Self::state`]'s output. Refuses state whose recordings do not
    /// match its channels.
    pub fn restore(state: CoreState) -> Result<Self, String> {
        let incoming = state.received.len();
        let mut recording = BTreeMap::new();
        for (id, open) in state.recording {
            if open.len() != incoming {
                return Err(format!(
                    "snapshot {id} records {} channels, the branch has {incoming}",
                    open.len()
                ));
            }
            let open_count = open.iter().filter(|&&o| o).count();
            recording.insert(id, Recording { open, open_count });
        }
        Ok(Self {
            ledger: Ledger::restore(state.balance, state.initial),
            sent: state.sent,
            received: state.received,
            lost: vec![false; incoming],
            recording,
            finished: IdSet::from_runs(state.finished),
            #[cfg(test)]
            late_close: None,
        })
    }

    /// The branch's ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Number of incoming channels.
    pub fn incoming(&self) -> usize {
        self.received.len()
    }

    /// Number of outgoing channels.
    pub fn outgoing(&self) -> usize {
        self.sent.len()
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

    /// Takes `amount` out of the balance for a transfer on outgoing channel `to`, which the
    /// caller must then send with the returned sequence number. Refuses (changing nothing) when
    /// the money is not there.
    pub fn send_transfer(&mut self, to: Channel, amount: u64) -> Result<u64, CoreError> {
        let sent = self.sent.get_mut(to).ok_or(CoreError::UnknownChannel(to))?;
        self.ledger.withdraw(amount)?;
        *sent = sent.after(amount);
        Ok(sent.count)
    }

    /// Gives up snapshot `id` (its record was discarded): its channels stop recording, and a
    /// later marker for it is an error rather than the start of a new snapshot.
    pub fn abandon(&mut self, id: SnapshotId) {
        if self.recording.remove(&id).is_some() {
            self.finished.insert(id);
        }
    }

    /// The connection carrying incoming channel `from` is gone: every snapshot still waiting for
    /// its marker stops waiting (the channel's state is unknown), and snapshots begun later do
    /// not wait for it either.
    pub fn lose_channel(&mut self, from: Channel, out: &mut Vec<Effect>) -> Result<(), CoreError> {
        self.check_incoming(from)?;
        if std::mem::replace(&mut self.lost[from], true) {
            return Ok(());
        }
        let mut ids: Vec<SnapshotId> = self
            .recording
            .iter()
            .filter(|(_, recording)| recording.open[from])
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            out.push(Effect::ChannelLost { id, from });
            if let Some(recording) = self.recording.get_mut(&id) {
                recording.open[from] = false;
                recording.open_count -= 1;
                if recording.open_count == 0 {
                    self.finish(id, out);
                }
            }
        }
        Ok(())
    }

    /// Whether incoming channel `from` is lost (see [`Self::lose_channel`]).
    pub fn is_lost(&self, from: Channel) -> bool {
        self.lost.get(from).copied().unwrap_or(false)
    }

    /// The connection carrying incoming channel `from` is back after the channel was declared
    /// lost (its frames were kept and resent, so nothing on it was lost after all): snapshots
    /// begun from now on wait for its marker again. Snapshots that already stopped waiting stay
    /// cut short; a marker of theirs arriving late is refused as usual.
    pub fn restore_channel(&mut self, from: Channel) -> Result<(), CoreError> {
        self.check_incoming(from)?;
        self.lost[from] = false;
        Ok(())
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

    /// A marker for snapshot `id` arrived on incoming channel `from`.
    pub fn receive_marker(
        &mut self,
        from: Channel,
        id: SnapshotId,
        out: &mut Vec<Effect>,
    ) -> Result<(), CoreError> {
        self.check_incoming(from)?;
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
        #[cfg(test)]
        if let Some(late) = self.late_close.as_mut() {
            late.push((id, from));
            return Ok(());
        }
        recording.open[from] = false;
        recording.open_count -= 1;
        if recording.open_count == 0 {
            self.finish(id, out);
        }
        Ok(())
    }

    /// A transfer of `amount` arrived on incoming channel `from`. `seq` is its sequence number
    /// when the sender numbers its transfers (a sender speaking the original schema does not):
    /// anything but the next number is refused, so a repeated transfer cannot create money.
    pub fn receive_transfer(
        &mut self,
        from: Channel,
        amount: u64,
        seq: Option<u64>,
        out: &mut Vec<Effect>,
    ) -> Result<(), CoreError> {
        self.check_incoming(from)?;
        let expected = self.received[from].count + 1;
        if let Some(got) = seq.filter(|&got| got != expected) {
            return Err(CoreError::OutOfSequence {
                from,
                expected,
                got,
            });
        }
        self.ledger.deposit(amount)?;
        self.received[from] = self.received[from].after(amount);
        for (&id, recording) in &self.recording {
            if recording.open[from] {
                out.push(Effect::RecordTransfer {
                    id,
                    from,
                    seq: expected,
                    amount,
                });
            }
        }
        #[cfg(test)]
        self.close_late(from, out);
        Ok(())
    }

    /// Seeds the bug of [`Self::close_late`] (tests only).
    #[cfg(test)]
    pub fn seed_late_close(&mut self) {
        self.late_close = Some(Vec::new());
    }

    /// The seeded bug: the markers that came on `from` close their channel only now, after the
    /// transfer that followed them was recorded in transit.
    #[cfg(test)]
    fn close_late(&mut self, from: Channel, out: &mut Vec<Effect>) {
        let Some(late) = self.late_close.as_mut() else {
            return;
        };
        let closing: Vec<SnapshotId> = late
            .iter()
            .filter(|(_, c)| *c == from)
            .map(|(id, _)| *id)
            .collect();
        late.retain(|(_, c)| *c != from);
        for id in closing {
            if let Some(recording) = self.recording.get_mut(&id) {
                recording.open[from] = false;
                recording.open_count -= 1;
                if recording.open_count == 0 {
                    self.finish(id, out);
                }
            }
        }
    }

    fn check_incoming(&self, channel: Channel) -> Result<(), CoreError> {
        if channel < self.received.len() {
            Ok(())
        } else {
            Err(CoreError::UnknownChannel(channel))
        }
    }

    /// Records the balance and counters, sends markers everywhere, and opens every incoming
    /// channel but `closed`.
    fn begin(&mut self, id: SnapshotId, closed: Option<Channel>, out: &mut Vec<Effect>) {
        out.push(Effect::BeginRecord {
            id,
            balance: self.ledger.balance(),
            sent: self.sent.clone(),
            received: self.received.clone(),
        });
        out.extend((0..self.sent.len()).map(|to| Effect::SendMarker { to, id }));
        let mut open = vec![true; self.received.len()];
        if let Some(channel) = closed {
            open[channel] = false;
        }
        for (from, _) in self.lost.iter().enumerate().filter(|(_, lost)| **lost) {
            if std::mem::replace(&mut open[from], false) {
                out.push(Effect::ChannelLost { id, from });
            }
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
                sent: vec![ChannelCount::default(); 3],
                received: vec![ChannelCount::default(); 3],
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
        assert!(matches!(
            out[0],
            Effect::BeginRecord {
                id: 1,
                balance: 50,
                ..
            }
        ));
        assert_eq!(markers(&out), vec![0, 1]);
        out.clear();
        // Channel 0 delivered its marker: what follows on it is after the cut.
        core.receive_transfer(0, 5, None, &mut out).unwrap();
        assert!(out.is_empty());
        // Channel 1 is still recording: this transfer was in transit.
        core.receive_transfer(1, 3, None, &mut out).unwrap();
        assert_eq!(
            out,
            vec![Effect::RecordTransfer {
                id: 1,
                from: 1,
                seq: 1,
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
        core.receive_transfer(0, 7, None, &mut out).unwrap();
        core.receive_transfer(0, 2, None, &mut out).unwrap();
        core.receive_marker(0, 1, &mut out).unwrap();
        core.receive_transfer(0, 100, None, &mut out).unwrap(); // after the marker: not in transit
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
        core.receive_transfer(0, 1, None, &mut out).unwrap(); // in transit for 1
        core.receive_marker(1, 2, &mut out).unwrap(); // snapshot 2 starts: 1 empty, 0 recording
        core.receive_transfer(0, 10, None, &mut out).unwrap(); // in transit for 1 and 2
        core.receive_transfer(1, 20, None, &mut out).unwrap(); // in transit for 1 only
        core.receive_marker(0, 1, &mut out).unwrap();
        core.receive_transfer(0, 100, None, &mut out).unwrap(); // in transit for 2 only
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
            core.receive_transfer(2, 1, None, &mut out),
            Err(CoreError::UnknownChannel(2))
        );
        assert_eq!(
            core.receive_marker(9, 1, &mut out),
            Err(CoreError::UnknownChannel(9))
        );
        assert!(core.send_transfer(0, 6).is_err());
        assert_eq!(core.send_transfer(2, 1), Err(CoreError::UnknownChannel(2)));
        assert!(out.is_empty());
        assert_eq!(core.ledger().balance(), 5);
        assert!(!core.knows(1));
    }

    #[test]
    fn transfers_are_numbered_per_channel_and_a_repeat_is_refused() {
        let mut core = BranchCore::new(100, 2);
        assert_eq!(core.send_transfer(1, 10), Ok(1));
        assert_eq!(core.send_transfer(1, 10), Ok(2));
        assert_eq!(core.send_transfer(0, 10), Ok(1));
        let mut out = Vec::new();
        core.receive_transfer(0, 5, Some(1), &mut out).unwrap();
        assert_eq!(
            core.receive_transfer(0, 5, Some(1), &mut out),
            Err(CoreError::OutOfSequence {
                from: 0,
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            core.receive_transfer(0, 5, Some(3), &mut out),
            Err(CoreError::OutOfSequence {
                from: 0,
                expected: 2,
                got: 3
            })
        );
        // An original-schema sender does not number its transfers.
        core.receive_transfer(0, 5, None, &mut out).unwrap();
        core.receive_transfer(0, 5, Some(3), &mut out).unwrap();
        assert_eq!(core.ledger().balance(), 100 - 30 + 15);
    }

    #[test]
    fn the_cut_records_channel_counters() {
        let mut core = BranchCore::with_links(100, 1, 2);
        core.send_transfer(1, 7).unwrap();
        core.receive_transfer(0, 3, Some(1), &mut Vec::new())
            .unwrap();
        let mut out = Vec::new();
        core.start_snapshot(0, &mut out).unwrap();
        assert_eq!(
            out[0],
            Effect::BeginRecord {
                id: 0,
                balance: 96,
                sent: vec![ChannelCount::default(), ChannelCount::default().after(7)],
                received: vec![ChannelCount::default().after(3)],
            }
        );
        // Markers on both outgoing channels, recording on the single incoming one.
        assert_eq!(markers(&out), vec![0, 1]);
        out.clear();
        core.receive_marker(0, 0, &mut out).unwrap();
        assert_eq!(out, vec![Effect::FinishRecord { id: 0 }]);
    }

    #[test]
    fn a_lost_channel_ends_waiting_for_its_marker_now_and_later() {
        let mut core = BranchCore::new(10, 2);
        let mut out = Vec::new();
        core.start_snapshot(1, &mut out).unwrap();
        core.receive_marker(0, 1, &mut out).unwrap();
        out.clear();
        core.lose_channel(1, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                Effect::ChannelLost { id: 1, from: 1 },
                Effect::FinishRecord { id: 1 }
            ]
        );
        out.clear();
        core.lose_channel(1, &mut out).unwrap();
        assert!(out.is_empty(), "losing a channel twice changes nothing");
        core.start_snapshot(2, &mut out).unwrap();
        assert!(out.contains(&Effect::ChannelLost { id: 2, from: 1 }));
        assert!(core.is_recording(2), "channel 0 still records");
        out.clear();
        core.receive_marker(0, 2, &mut out).unwrap();
        assert_eq!(out, vec![Effect::FinishRecord { id: 2 }]);
        assert_eq!(
            core.lose_channel(5, &mut out),
            Err(CoreError::UnknownChannel(5))
        );
    }

    #[test]
    fn a_restored_channel_is_waited_for_again() {
        let mut core = BranchCore::new(10, 2);
        core.lose_channel(1, &mut Vec::new()).unwrap();
        assert!(core.is_lost(1));
        core.restore_channel(1).unwrap();
        assert!(!core.is_lost(1));
        let mut out = Vec::new();
        core.start_snapshot(1, &mut out).unwrap();
        assert!(!out.iter().any(|e| matches!(e, Effect::ChannelLost { .. })));
        out.clear();
        core.receive_marker(0, 1, &mut out).unwrap();
        assert!(out.is_empty(), "still waiting for channel 1");
        core.receive_marker(1, 1, &mut out).unwrap();
        assert_eq!(out, vec![Effect::FinishRecord { id: 1 }]);
        assert_eq!(core.restore_channel(2), Err(CoreError::UnknownChannel(2)));
    }
}
