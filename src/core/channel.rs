//! Exactly-once, in-order delivery on one directed peer channel across reconnects, with no I/O.
//!
//! The rules, as TCP and Kafka's idempotent producer state them:
//! - Every frame a branch sends on a directed channel (transfers *and* markers) gets the next
//!   position on that channel: 1, 2, 3... The sender keeps every frame in a [`SendWindow`] until
//!   the receiver acknowledges it.
//! - The receiver's [`ReceiveCursor`] delivers position `delivered + 1` and nothing else: a
//!   position it has delivered already is a duplicate, dropped silently; a position beyond the
//!   next is a gap, a protocol error (only a bug or an attacker makes one).
//! - Acknowledgements are cumulative ("everything up to `p`"), sent at a bounded rate, not per
//!   frame. An acknowledged frame is forgotten by the sender.
//! - After a reconnect each side states how far it has received ([`ReceiveCursor::delivered`]),
//!   and the other resends everything after that position, in the original order, before
//!   anything new ([`SendWindow::resume`]).
//! - Durability (a branch with a store): a frame may leave the sender only once it (and the debit
//!   it carries) is durable, and the receiver acknowledges, or states after a reconnect, only
//!   positions whose effects are durable. Both halves track that mark ([`SendWindow::mark_durable`],
//!   [`ReceiveCursor::mark_durable`]); a branch without a store marks everything durable at once.
//! - The window is bounded in transfers: when it is full the caller must not send new transfers
//!   on the channel (backpressure), never drop. Markers are always accepted (their number is
//!   bounded by the snapshots in progress), so a full window never stalls a snapshot.
//!
//! [`crate::branch`] carries these frames over TCP and [`crate::sim`] over simulated links that
//! can be cut, so the same rules are tested with and without sockets.

use std::collections::VecDeque;

use super::SnapshotId;

/// A frame on a peer channel, as the sender keeps it for a possible resend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frame {
    /// Transfer number `seq` on the channel, of `amount`.
    Transfer { seq: u64, amount: u64 },
    /// The marker of snapshot `id`.
    Marker { id: SnapshotId },
}

/// A position on a directed channel: 1 for the first frame ever sent on it.
pub type Position = u64;

/// What a refusal of a peer connection means for the branch refused. Believed only from a peer
/// that has proved the cluster secret; from anyone else every refusal is [`Self::Retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RefusalKind {
    /// Try again later: the default, and what a refusal from an unproven party counts as.
    #[default]
    Retry,
    /// The refused branch restarted without its state (a new incarnation): retrying cannot
    /// help, restarting it with its data can.
    NewIncarnation,
    /// The refused branch's store lost a commit: it must stop trading.
    StateRegressed,
    /// The refusing branch holds no bank: it restarted without its state and was not
    /// initialised again (a controller that rolls banks back does that).
    Uninitialised,
}

/// A message on a peer connection, as the channel layer sees it: decoded once, at the edge
/// ([`crate::wire`]), so the rules below never match generated types.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerMsg {
    /// A frame of the channel at position `pos` (0: unpositioned, from an original-schema sender
    /// in a bank without a secret). A transfer's `seq` is 0 when the sender numbered none.
    Channel { frame: Frame, pos: Position },
    /// Everything up to `received` has been delivered (and made durable) by the peer.
    Ack { received: Position },
    /// The first message on a new connection: who the sender is and how far it has received.
    Resume {
        incarnation: u64,
        received: Position,
        /// The sender's bank epoch: channels of two epochs never join.
        epoch: u64,
    },
    /// The peer turns this connection away.
    Refusal { kind: RefusalKind, reason: String },
    /// A message peers may not send, by its name.
    Unexpected(&'static str),
}

impl PeerMsg {
    /// The message's name, for logs and refusals.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMsg::Channel {
                frame: Frame::Transfer { .. },
                ..
            } => "Transfer",
            PeerMsg::Channel {
                frame: Frame::Marker { .. },
                ..
            } => "Marker",
            PeerMsg::Ack { .. } => "Ack",
            PeerMsg::Resume { .. } => "Resume",
            PeerMsg::Refusal { .. } => "Refusal",
            PeerMsg::Unexpected(kind) => kind,
        }
    }
}

/// A violation of the channel rules. Each one names what broke; the connection it came on
/// cannot be trusted and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error(
        "gap: frame at position {got} after position {delivered} ({} frame(s) missing)",
        got - delivered - 1
    )]
    Gap { delivered: Position, got: Position },
    #[error("acknowledgement of position {acked}, but only {sent} frame(s) were ever sent")]
    AckBeyondSent { acked: Position, sent: Position },
    #[error(
        "the peer says it has received up to position {received}, but it had acknowledged up to {acked}: it lost frames it had confirmed"
    )]
    Regressed { received: Position, acked: Position },
}

/// What the receiver does with an incoming frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The next frame: apply it.
    Deliver,
    /// Already delivered (a resend after a reconnect): drop it silently.
    Duplicate,
}

/// The sending half of a directed channel: every frame not yet acknowledged, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SendWindow {
    /// Highest position the receiver has acknowledged; the window's first frame is `acked + 1`.
    acked: Position,
    /// Frames `acked + 1 ..= acked + frames.len()`.
    frames: VecDeque<Frame>,
    /// Transfers among `frames` (what `capacity` bounds).
    transfers: usize,
    /// Most transfers kept unacknowledged before the channel refuses new ones.
    capacity: usize,
    /// Highest position that is durable and so may be written to the peer.
    durable: Position,
}

impl SendWindow {
    /// An empty window holding at most `capacity` unacknowledged transfers.
    pub fn new(capacity: usize) -> Self {
        Self {
            acked: 0,
            frames: VecDeque::new(),
            transfers: 0,
            capacity: capacity.max(1),
            durable: 0,
        }
    }

    /// A window whose first `acked` positions were sent and acknowledged before, holding the
    /// unacknowledged `frames` after them (a branch restored from its store).
    pub fn restore(capacity: usize, acked: Position, frames: Vec<Frame>) -> Self {
        let transfers = frames
            .iter()
            .filter(|f| matches!(f, Frame::Transfer { .. }))
            .count();
        let durable = acked + frames.len() as u64;
        Self {
            acked,
            frames: frames.into(),
            transfers,
            capacity: capacity.max(1),
            durable,
        }
    }

    /// The position of the last frame sent (0 before the first).
    pub fn last_sent(&self) -> Position {
        self.acked + self.frames.len() as u64
    }

    /// The highest position acknowledged.
    pub fn acked(&self) -> Position {
        self.acked
    }

    /// Frames sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.frames.len()
    }

    /// Whether another transfer may be sent now (markers always may).
    pub fn has_room(&self) -> bool {
        self.transfers < self.capacity
    }

    /// Highest position that may be written to the peer.
    pub fn durable(&self) -> Position {
        self.durable
    }

    /// Frames up to `upto` are durable: returns those that were not before (and are not
    /// acknowledged), oldest first, to be written to the peer now.
    pub fn mark_durable(&mut self, upto: Position) -> Vec<(Position, Frame)> {
        let upto = upto.min(self.last_sent());
        let from = self.durable.max(self.acked) + 1;
        self.durable = self.durable.max(upto);
        if upto < from {
            return Vec::new();
        }
        let skip = (from - self.acked - 1) as usize;
        let take = (upto - from + 1) as usize;
        self.frames
            .iter()
            .copied()
            .skip(skip)
            .take(take)
            .zip(from..)
            .map(|(f, p)| (p, f))
            .collect()
    }

    /// Keeps `frame` for a possible resend, durable at once (a branch without a store), and
    /// returns its position. Every earlier frame must be durable already.
    pub fn push_durable(&mut self, frame: Frame) -> Position {
        let pos = self.push(frame);
        self.durable = pos;
        pos
    }

    /// Keeps `frame` for a possible resend and returns its position.
    pub fn push(&mut self, frame: Frame) -> Position {
        if matches!(frame, Frame::Transfer { .. }) {
            self.transfers += 1;
        }
        self.frames.push_back(frame);
        self.last_sent()
    }

    /// The receiver has delivered every frame up to `received`: forget them. Returns how many
    /// frames were released. An acknowledgement older than an earlier one changes nothing.
    pub fn ack(&mut self, received: Position) -> Result<usize, ChannelError> {
        let sent = self.last_sent();
        if received > sent {
            return Err(ChannelError::AckBeyondSent {
                acked: received,
                sent,
            });
        }
        let mut released = 0;
        while self.acked < received {
            if let Some(Frame::Transfer { .. }) = self.frames.pop_front() {
                self.transfers -= 1;
            }
            self.acked += 1;
            released += 1;
        }
        Ok(released)
    }

    /// After a reconnect the receiver says it has delivered up to `received`: acknowledges that
    /// much and returns every later durable frame with its position, oldest first, to be resent
    /// before anything new (frames not durable yet follow when they are).
    pub fn resume(
        &mut self,
        received: Position,
    ) -> Result<impl Iterator<Item = (Position, Frame)> + '_, ChannelError> {
        if received < self.acked {
            return Err(ChannelError::Regressed {
                received,
                acked: self.acked,
            });
        }
        self.ack(received)?;
        let first = self.acked + 1;
        let durable = self.durable.saturating_sub(self.acked) as usize;
        Ok(self
            .frames
            .iter()
            .copied()
            .take(durable)
            .zip(first..)
            .map(|(f, p)| (p, f)))
    }

    /// Every unacknowledged frame with its position, oldest first (what a store persists).
    pub fn frames(&self) -> impl Iterator<Item = (Position, Frame)> + '_ {
        self.frames
            .iter()
            .copied()
            .zip(self.acked + 1..)
            .map(|(f, p)| (p, f))
    }
}

/// The receiving half of a directed channel: how far it has delivered and acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ReceiveCursor {
    /// Highest position delivered.
    delivered: Position,
    /// Highest position whose effects are durable: the most that may be acknowledged.
    durable: Position,
    /// Highest position acknowledged to the sender.
    acked: Position,
}

impl ReceiveCursor {
    /// A cursor that has delivered (and acknowledged) up to `delivered` (a restored branch).
    pub fn restore(delivered: Position) -> Self {
        Self {
            delivered,
            durable: delivered,
            acked: delivered,
        }
    }

    /// Deliveries up to `upto` are durable: they may be acknowledged.
    pub fn mark_durable(&mut self, upto: Position) {
        self.durable = self.durable.max(upto.min(self.delivered));
    }

    /// Highest position durable: what this side states after a reconnect.
    pub fn durable(&self) -> Position {
        self.durable
    }

    /// Decides what to do with the frame at position `pos`.
    pub fn accept(&mut self, pos: Position) -> Result<Delivery, ChannelError> {
        if pos <= self.delivered {
            Ok(Delivery::Duplicate)
        } else if pos == self.delivered + 1 {
            self.delivered = pos;
            Ok(Delivery::Deliver)
        } else {
            Err(ChannelError::Gap {
                delivered: self.delivered,
                got: pos,
            })
        }
    }

    /// Highest position delivered.
    pub fn delivered(&self) -> Position {
        self.delivered
    }

    /// Frames delivered and durable but not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.durable - self.acked
    }

    /// The acknowledgement to send now, if anything new became durable since the last one.
    pub fn take_ack(&mut self) -> Option<Position> {
        (self.durable > self.acked).then(|| {
            self.acked = self.durable;
            self.durable
        })
    }

    /// A reconnect told the sender how far this side has durably delivered: that counts as
    /// acknowledged.
    pub fn acked_by_resume(&mut self) {
        self.acked = self.durable;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(seq: u64) -> Frame {
        Frame::Transfer { seq, amount: 10 }
    }

    #[test]
    fn positions_count_transfers_and_markers_alike() {
        let mut window = SendWindow::new(8);
        assert_eq!(window.push(transfer(1)), 1);
        assert_eq!(window.push(Frame::Marker { id: 3 }), 2);
        assert_eq!(window.push(transfer(2)), 3);
        assert_eq!(window.last_sent(), 3);
        assert_eq!(window.unacked(), 3);
    }

    #[test]
    fn acks_are_cumulative_and_stale_ones_change_nothing() {
        let mut window = SendWindow::new(8);
        for seq in 1..=5 {
            window.push(transfer(seq));
        }
        assert_eq!(window.ack(3), Ok(3));
        assert_eq!(window.ack(2), Ok(0));
        assert_eq!(window.unacked(), 2);
        assert_eq!(
            window.ack(9),
            Err(ChannelError::AckBeyondSent { acked: 9, sent: 5 })
        );
        assert_eq!(window.unacked(), 2, "a refused ack changes nothing");
    }

    #[test]
    fn a_full_window_refuses_transfers_but_not_markers() {
        let mut window = SendWindow::new(2);
        window.push(transfer(1));
        window.push(transfer(2));
        assert!(!window.has_room());
        window.push(Frame::Marker { id: 1 });
        assert!(!window.has_room());
        window.ack(1).unwrap();
        assert!(window.has_room());
    }

    #[test]
    fn resume_resends_exactly_what_the_receiver_lacks_in_order() {
        let mut window = SendWindow::new(8);
        window.push(transfer(1));
        window.push(Frame::Marker { id: 7 });
        window.push(transfer(2));
        assert_eq!(window.resume(0).unwrap().count(), 0, "nothing durable yet");
        assert_eq!(window.mark_durable(2).len(), 2);
        window.ack(1).unwrap();
        assert_eq!(
            window.resume(1).unwrap().count(),
            1,
            "only durable frames go out"
        );
        assert_eq!(window.mark_durable(3), vec![(3, transfer(2))]);
        let resent: Vec<_> = window.resume(2).unwrap().collect();
        assert_eq!(resent, vec![(3, transfer(2))]);
        assert_eq!(window.acked(), 2);
        let err = window.resume(1).map(|_| ()).unwrap_err();
        assert_eq!(
            err,
            ChannelError::Regressed {
                received: 1,
                acked: 2
            }
        );
    }

    #[test]
    fn the_cursor_drops_duplicates_and_refuses_gaps() {
        let mut cursor = ReceiveCursor::default();
        assert_eq!(cursor.accept(1), Ok(Delivery::Deliver));
        assert_eq!(cursor.accept(2), Ok(Delivery::Deliver));
        assert_eq!(cursor.accept(2), Ok(Delivery::Duplicate));
        assert_eq!(cursor.accept(1), Ok(Delivery::Duplicate));
        assert_eq!(
            cursor.accept(4),
            Err(ChannelError::Gap {
                delivered: 2,
                got: 4
            })
        );
        assert_eq!(cursor.delivered(), 2, "a gap delivers nothing");
        assert_eq!(
            cursor.take_ack(),
            None,
            "nothing durable to acknowledge yet"
        );
        cursor.mark_durable(9);
        assert_eq!(cursor.durable(), 2, "durable never passes delivered");
        assert_eq!(cursor.unacked(), 2);
        assert_eq!(cursor.take_ack(), Some(2));
        assert_eq!(cursor.take_ack(), None);
    }

    proptest::proptest! {
        /// Whatever the cuts (each dropping every frame in flight, and acknowledgements that lag
        /// behind deliveries), resending from the receiver's stated position delivers every
        /// frame exactly once and in order.
        #[test]
        fn cuts_never_lose_or_repeat_a_frame(
            steps in proptest::collection::vec(0u8..4, 1..300),
        ) {
            let mut window = SendWindow::new(1 << 20);
            let mut cursor = ReceiveCursor::default();
            let mut in_flight: VecDeque<(Position, Frame)> = VecDeque::new();
            let mut delivered = Vec::new();
            let mut next_seq = 1;
            for step in steps {
                match step {
                    0 => {
                        let frame = transfer(next_seq);
                        next_seq += 1;
                        let pos = window.push(frame);
                        window.mark_durable(pos);
                        in_flight.push_back((pos, frame));
                    }
                    1 => {
                        if let Some((pos, frame)) = in_flight.pop_front()
                            && cursor.accept(pos).unwrap() == Delivery::Deliver
                        {
                            cursor.mark_durable(pos);
                            delivered.push(frame);
                        }
                    }
                    2 => {
                        if let Some(acked) = cursor.take_ack() {
                            window.ack(acked).unwrap();
                        }
                    }
                    _ => {
                        in_flight = window.resume(cursor.delivered()).unwrap().collect();
                        cursor.acked_by_resume();
                    }
                }
            }
            in_flight = window.resume(cursor.delivered()).unwrap().collect();
            while let Some((pos, frame)) = in_flight.pop_front() {
                if cursor.accept(pos).unwrap() == Delivery::Deliver {
                    delivered.push(frame);
                }
            }
            let expected: Vec<Frame> = (1..next_seq).map(transfer).collect();
            proptest::prop_assert_eq!(delivered, expected);
        }
    }
}
