//! The peer channels of a [`BranchNode`]: splicing a connection onto a channel, resending what
//! the peer lacks, delivering frames exactly once by position, acknowledging them, and losing a
//! peer only when it has not come back within its grace period.
//!
//! A channel outlives its connections. When a connection fails, the frames the peer has not
//! acknowledged stay in the channel's window; the dialling side redials, both sides send
//! `Resume` (who they are, how far they have received), and each resends what the other lacks
//! before anything new. The dialler's `Resume` comes first; the acceptor answers only once it
//! matches the incarnation it knows, so a stranger that merely connects learns nothing.
//! Snapshots keep waiting for the peer's markers through an outage, up to the grace period;
//! after that the channel counts as lost (records waiting for it are cut short), until the peer
//! comes back.
//!
//! What one connection can do to a channel:
//! - A protocol error (a frame before `Resume`, a `Resume` from another incarnation, an ack
//!   beyond what was sent, a position gap, a transfer the ledger cannot take, in a bank with a
//!   secret an unnumbered frame) closes that connection with a `Refusal` saying why; the frame
//!   changes nothing (a refused frame's position is still owed). The channel stays: the real
//!   peer takes it back when it (re)connects, and only the grace period decides when snapshots
//!   stop waiting for it.
//! - A `Refusal` closes the connection too. Its kind is believed only in a bank with a secret
//!   (the peer proved it), and only two kinds end anything: `NEW_INCARNATION` (this branch
//!   restarted without its state: it stops dialling that peer) and `STATE_REGRESSED` (this
//!   branch's store lost a commit: it halts).
//! - A proven peer whose `Resume` acknowledges more than this durable branch's store says was
//!   ever sent shows that the store lost a commit: the branch halts.
//!
//! Acknowledgements are cumulative: at once when [`ACK_BATCH`] frames wait for one, else within
//! [`ACK_DELAY`].

use std::time::Duration;

use log::{debug, error, info, warn};

use super::{BranchNode, Close, Dial, Link, Note, Outgoing, Pause, Timer, TimerOp, refusal};
use crate::core::{
    Channel, ChannelError, CoreError, Delivery, Frame, PeerMsg, Position, RefusalKind,
};

/// Frames delivered on a channel before an acknowledgement goes out at once, without waiting
/// for [`ACK_DELAY`]: a sixteenth of the default window, so a busy sender never stalls on a full
/// window while acknowledgements are merely delayed.
pub const ACK_BATCH: u64 = 1024;

/// Longest an acknowledgement waits for more frames to cover. Acks only free the sender's
/// window (and bound what a reconnect resends), so on a quiet channel they can wait: with 63
/// peers each carrying a few dozen transfers a second, acking every 5 ms put more ack frames on
/// the wire than transfers, and every 50 ms two for every three transfers.
pub const ACK_DELAY: Duration = Duration::from_millis(500);

impl BranchNode {
    /// Asks for a dial of every peer this branch dials (at creation).
    pub(super) fn dial_all(&mut self) {
        for channel in 0..self.peers.len() {
            self.dial(channel);
        }
    }

    /// Asks for a dial of peer `channel`, unless this branch does not dial it, a dial is under
    /// way, or a proven peer told it to stop.
    fn dial(&mut self, channel: Channel) {
        let shutting_down = self.shutting_down;
        let Some(peer) = self.peers.get_mut(channel) else {
            return;
        };
        if !peer.we_dial || shutting_down || peer.stopped_dialling.is_some() || peer.dialling {
            return;
        }
        peer.dialling = true;
        let after_pause = std::mem::take(&mut peer.redial_pending_pause);
        self.ready.0.dials.push(Dial {
            peer: channel,
            after_pause,
            known_incarnation: peer.incarnation.unwrap_or(0),
        });
    }

    /// A proven connection now carries peer `channel`'s channels, replacing any older one (the
    /// peer only connects again when it has given the old one up). The dialler's first message
    /// is its `Resume`; nothing else goes out until the peer's `Resume` arrives.
    pub(super) fn link_up(&mut self, channel: Channel, conn: super::ConnId) {
        let Some(peer) = self.peers.get_mut(channel) else {
            return;
        };
        peer.dialling = false;
        let new = Link {
            conn,
            resumed: false,
        };
        if let Some(old) = peer.link.replace(new)
            && old.conn != conn
        {
            info!(
                "{}: {} connected again; the new connection replaces the old one",
                self.config.name, peer.name
            );
            self.ready.0.closes.push(Close {
                peer: channel,
                conn: old.conn,
                refusal: None,
            });
        }
        if peer.we_dial {
            self.push_resume(channel);
        }
    }

    /// Queues this branch's `Resume` on peer `channel`'s connection: its incarnation and how far
    /// it has received. Only what is durable counts as received: the peer forgets what this
    /// side states.
    fn push_resume(&mut self, channel: Channel) {
        let incarnation = self.config.incarnation;
        let epoch = self.config.epoch;
        let peer = &mut self.peers[channel];
        let Some(link) = peer.link else {
            return;
        };
        self.ready.0.messages.push(Outgoing {
            peer: channel,
            conn: link.conn,
            msg: PeerMsg::Resume {
                incarnation,
                received: peer.cursor.durable(),
                epoch,
            },
        });
        peer.cursor.acked_by_resume();
    }

    /// A message from connection `conn` of peer `channel`.
    pub(super) fn on_peer_msg(&mut self, channel: Channel, conn: super::ConnId, msg: PeerMsg) {
        let authenticated = self.config.authenticated;
        let Some(peer) = self.peers.get_mut(channel) else {
            return;
        };
        let Some(link) = peer.link.filter(|link| link.conn == conn) else {
            return; // a message from a connection that has since been replaced
        };
        #[cfg(test)]
        let epoch_checked = self.config.mutation != super::Mutation::IgnoreEpoch;
        #[cfg(not(test))]
        let epoch_checked = true;
        if !link.resumed {
            match msg {
                PeerMsg::Resume { epoch, .. } if epoch != self.config.epoch && epoch_checked => {
                    self.other_epoch(channel, epoch)
                }
                PeerMsg::Resume {
                    incarnation,
                    received,
                    ..
                } => self.on_resume(channel, incarnation, received),
                PeerMsg::Refusal { kind, reason } => self.on_refusal(channel, kind, reason),
                other => self.protocol_error(
                    channel,
                    format!("sent {} before Resume on a new connection", other.kind()),
                ),
            }
            return;
        }
        let (frame, pos) = match msg {
            PeerMsg::Channel { frame, pos } => (frame, pos),
            PeerMsg::Ack { received } => {
                match peer.window.ack(received) {
                    Ok(0) => {}
                    Ok(_) => {
                        if let Some(epochs) = self.epochs.as_mut() {
                            epochs.stage_ack(channel, received);
                        }
                        self.wake(Pause::Room);
                    }
                    Err(err) => self.protocol_error(channel, err.to_string()),
                }
                return;
            }
            PeerMsg::Refusal { kind, reason } => {
                self.on_refusal(channel, kind, reason);
                return;
            }
            other => {
                warn!(
                    "{}: peer {} sent {}; only Transfer, Marker and Ack are accepted from peers; ignored",
                    self.config.name,
                    peer.name,
                    other.kind()
                );
                return;
            }
        };
        // Unnumbered frames cannot be checked or resent: only an original-schema sender in a
        // bank without a secret may send them.
        if authenticated && (pos == 0 || matches!(frame, Frame::Transfer { seq: 0, .. })) {
            let what = if pos == 0 {
                "position"
            } else {
                "sequence number"
            };
            self.protocol_error(channel, format!("sent a frame without a {what}"));
            return;
        }
        let Some(incoming) = self.channels.in_of[channel] else {
            self.protocol_error(
                channel,
                "sent a frame on a channel that does not exist".to_string(),
            );
            return;
        };
        let peer = &mut self.peers[channel];
        // Put back if the frame turns out to be unusable, so that its position is still owed
        // and the sender's resend after the reconnect is delivered.
        let cursor_before = peer.cursor;
        if pos != 0 {
            match peer.cursor.accept(pos) {
                Ok(Delivery::Deliver) => {
                    #[cfg(test)]
                    let at_once = self.epochs.is_none()
                        || self.config.mutation == super::Mutation::AckBeforeDurable;
                    #[cfg(not(test))]
                    let at_once = self.epochs.is_none();
                    if at_once {
                        peer.cursor.mark_durable(pos);
                    }
                }
                Ok(Delivery::Duplicate) => return,
                Err(err) => {
                    self.protocol_error(channel, err.to_string());
                    return;
                }
            }
        }
        let result = match frame {
            Frame::Transfer { seq, amount } => self.core.receive_transfer(
                incoming,
                amount,
                (seq != 0).then_some(seq),
                &mut self.effects,
            ),
            Frame::Marker { id } => self.core.receive_marker(incoming, id, &mut self.effects),
        };
        match result {
            Ok(()) => {
                self.touch();
                if matches!(frame, Frame::Transfer { .. }) {
                    self.wake(Pause::Funds);
                }
                self.apply_effects();
                self.acknowledge(channel);
            }
            // A transfer that cannot be applied: nothing changed, and its connection cannot be
            // trusted with what follows.
            Err(
                err @ (CoreError::OutOfSequence { .. }
                | CoreError::BalanceOverflow { .. }
                | CoreError::UnknownChannel(_)),
            ) => {
                self.peers[channel].cursor = cursor_before;
                self.protocol_error(channel, err.to_string());
            }
            Err(err) => {
                self.touch();
                self.acknowledge(channel);
                let peer_name = &self.peers[channel].name;
                // A marker of a snapshot that stopped waiting for this channel while it was
                // lost arrives after the fact: expected, not a fault.
                if matches!(
                    err,
                    CoreError::MarkerAfterFinish { .. } | CoreError::DuplicateMarker { .. }
                ) {
                    debug!(
                        "{}: from peer {peer_name}: {err}; ignored",
                        self.config.name
                    );
                } else {
                    warn!(
                        "{}: from peer {peer_name}: {err}; ignored",
                        self.config.name
                    );
                }
            }
        }
    }

    /// The peer's `Resume`: check it is the same incarnation, resend what it lacks, go live.
    fn on_resume(&mut self, channel: Channel, incarnation: u64, received: Position) {
        let me = self.config.name.clone();
        #[cfg(test)]
        let check = self.config.mutation != super::Mutation::AcceptNewIncarnation;
        #[cfg(not(test))]
        let check = true;
        let peer = &mut self.peers[channel];
        if let Some(known) = peer
            .incarnation
            .filter(|&known| check && known != incarnation)
        {
            let reason = format!(
                "{} came back as a new incarnation ({:016x}, was {known:016x}): it restarted without its state, so its channel positions started over and it cannot be spliced onto the old channel ({} frame(s) this branch sent it are unacknowledged); restart {} with its --data-dir",
                peer.name,
                incarnation,
                peer.window.unacked(),
                peer.name
            );
            let refusal = refusal(RefusalKind::NewIncarnation, reason.clone());
            self.close_link(channel, Some(refusal), &reason);
            return;
        }
        let resumed = peer
            .window
            .resume(received)
            .map(|frames| frames.collect::<Vec<_>>());
        let resent = match resumed {
            #[cfg(test)]
            Ok(frames) if self.config.mutation == super::Mutation::ResendSkipsFirst => {
                frames.into_iter().skip(1).collect()
            }
            Ok(frames) => frames,
            Err(err) => {
                self.resume_failed(channel, err);
                return;
            }
        };
        let Some(link) = peer.link else {
            return;
        };
        if !peer.we_dial {
            self.push_resume(channel);
        }
        let peer = &mut self.peers[channel];
        for &(pos, frame) in &resent {
            self.ready.0.messages.push(Outgoing {
                peer: channel,
                conn: link.conn,
                msg: PeerMsg::Channel { frame, pos },
            });
        }
        peer.link = Some(Link {
            resumed: true,
            ..link
        });
        let new_incarnation = peer.incarnation != Some(incarnation);
        peer.incarnation = Some(incarnation);
        let outage = std::mem::replace(&mut peer.down, false);
        if outage {
            self.ready
                .0
                .timers
                .push(TimerOp::Cancel(Timer::Grace(channel)));
            info!(
                "{me}: channel with {} resumed: resent {} frame(s) after position {received}",
                peer.name,
                resent.len(),
            );
        } else {
            info!(
                "{me}: channel with {} is up (it has received up to position {received}; resent {} frame(s))",
                peer.name,
                resent.len()
            );
        }
        if new_incarnation {
            self.touch();
        }
        if let Some(incoming) = self.channels.in_of[channel]
            && self.core.is_lost(incoming)
        {
            info!(
                "{me}: {} is back after its grace period: snapshots from now on wait for it again",
                self.peers[channel].name
            );
            let _ = self.core.restore_channel(incoming);
        }
        self.ready.0.notes.push(Note::ChannelResumed(channel));
        self.wake(Pause::Peer);
    }

    /// The peer's `Resume` states a position this side's window cannot resume from.
    fn resume_failed(&mut self, channel: Channel, err: ChannelError) {
        let authenticated = self.config.authenticated;
        let peer = self.peers[channel].name.clone();
        match err {
            // A proven peer has frames this durable branch's store does not know it sent: the
            // store lost a commit.
            ChannelError::AckBeyondSent { acked, sent } if authenticated && self.config.durable => {
                self.halt(format!(
                    "{peer} has received up to position {acked} from this branch, but the store says only {sent} frame(s) were ever sent to it"
                ));
                self.close_all_links();
            }
            // The peer has lost frames it had acknowledged: its store lost a commit.
            ChannelError::Regressed { .. } => {
                let reason = format!("{peer}'s state regressed (its store lost a commit?): {err}");
                let refusal =
                    authenticated.then(|| refusal(RefusalKind::StateRegressed, reason.clone()));
                self.close_link(channel, refusal, &reason);
            }
            err => self.protocol_error(channel, err.to_string()),
        }
    }

    /// The peer refused the connection. Whatever it says, this connection is closed; what
    /// else follows depends on whether the peer proved the cluster secret.
    fn on_refusal(&mut self, channel: Channel, kind: RefusalKind, reason: String) {
        let me = &self.config.name;
        let peer = &mut self.peers[channel];
        match kind {
            _ if !self.config.authenticated => warn!(
                "{me}: {} refused the connection (unproven, so this changes nothing else): {reason}",
                peer.name
            ),
            RefusalKind::Retry | RefusalKind::Uninitialised => {
                warn!("{me}: {} refused the connection: {reason}", peer.name)
            }
            RefusalKind::StateRegressed if self.config.durable => {
                let detail = format!("{} says: {reason}", peer.name);
                self.halt(detail);
                self.close_all_links();
                return;
            }
            RefusalKind::NewIncarnation | RefusalKind::StateRegressed => {
                error!(
                    "{me}: {} (which proved the cluster secret) refused the channel for good: {reason}; not dialling it again",
                    peer.name
                );
                peer.stopped_dialling = Some(reason.clone());
            }
        }
        self.close_link(channel, None, &format!("refused: {reason}"));
    }

    /// The peer's `Resume` is of bank epoch `epoch`, not this branch's: one of the two has not
    /// been through the bank's latest rollback yet. Nothing of the connection is applied; it is
    /// closed with a refusal to retry, and the branch behind is brought forward by the
    /// controller, after which the redial joins the two in one epoch.
    fn other_epoch(&mut self, channel: Channel, epoch: u64) {
        let mine = self.config.epoch;
        let peer = &self.peers[channel];
        let reason = format!(
            "{} is in bank epoch {epoch} and {} in epoch {mine}: a rollback has not reached {} yet",
            peer.name,
            self.config.name,
            if epoch < mine {
                peer.name.as_str()
            } else {
                self.config.name.as_str()
            }
        );
        self.close_link(
            channel,
            Some(refusal(RefusalKind::Retry, reason.clone())),
            &reason,
        );
    }

    /// The connection broke the channel's protocol: it is closed; the channel stays.
    fn protocol_error(&mut self, channel: Channel, reason: String) {
        let reason = format!("protocol error: {reason}");
        self.close_link(
            channel,
            Some(refusal(RefusalKind::Retry, reason.clone())),
            &reason,
        );
    }

    /// Closes the connection carrying peer `channel`'s channels (after `refusal`, if any, so
    /// the other side can say why). The channel and everything in it stay: the grace period runs
    /// as for any outage, and a dialling branch dials again after a pause.
    fn close_link(&mut self, channel: Channel, refusal: Option<PeerMsg>, reason: &str) {
        let Some(peer) = self.peers.get_mut(channel) else {
            return;
        };
        let Some(link) = peer.link.take() else {
            return;
        };
        warn!(
            "{}: closing the connection carrying the channel with {}: {reason}",
            self.config.name, peer.name
        );
        self.ready.0.closes.push(Close {
            peer: channel,
            conn: link.conn,
            refusal,
        });
        self.link_gone(channel, false);
    }

    /// A halted branch closes every connection.
    fn close_all_links(&mut self) {
        for channel in 0..self.peers.len() {
            if let Some(link) = self.peers[channel].link.take() {
                self.ready.0.closes.push(Close {
                    peer: channel,
                    conn: link.conn,
                    refusal: None,
                });
            }
        }
    }

    /// Connection `conn` of peer `channel` is gone.
    pub(super) fn link_down(&mut self, channel: Channel, conn: super::ConnId) {
        let shutting_down = self.shutting_down;
        let grace = self.config.peer_grace;
        let Some(peer) = self.peers.get_mut(channel) else {
            return;
        };
        let Some(link) = peer.link.take_if(|link| link.conn == conn) else {
            return; // an older connection, already replaced
        };
        if shutting_down {
            return;
        }
        warn!(
            "{}: lost the connection to {} ({} frame(s) unacknowledged); {}; snapshots wait for it up to {} ms",
            self.config.name,
            peer.name,
            peer.window.unacked(),
            if peer.we_dial {
                "redialling"
            } else {
                "waiting for it to redial"
            },
            grace.as_millis()
        );
        self.link_gone(channel, link.resumed);
    }

    /// The connection of peer `channel` is gone (`resumed`: after it had resumed the channel):
    /// the grace period starts, and a dialling branch dials again, at once after a connection
    /// that worked, after a growing pause after one that did not.
    fn link_gone(&mut self, channel: Channel, resumed: bool) {
        let grace = self.config.peer_grace;
        let peer = &mut self.peers[channel];
        if !std::mem::replace(&mut peer.down, true) {
            self.ready.0.timers.push(TimerOp::Set {
                timer: Timer::Grace(channel),
                after: grace,
            });
        }
        peer.redial_pending_pause |= !resumed;
        self.dial(channel);
    }

    /// The peer has not come back within its grace period: snapshots stop waiting for it.
    pub(super) fn grace_expired(&mut self, channel: Channel) {
        let Some(peer) = self.peers.get(channel) else {
            return;
        };
        if peer.is_live() || !peer.down {
            return;
        }
        warn!(
            "{}: {} has not come back within {} ms: snapshots stop waiting for its markers (their records are cut short) until it returns",
            self.config.name,
            peer.name,
            self.config.peer_grace.as_millis()
        );
        let Some(incoming) = self.channels.in_of[channel] else {
            return;
        };
        if self.core.lose_channel(incoming, &mut self.effects).is_ok() {
            self.touch();
            self.apply_effects();
        }
    }

    /// Sends `frame` on the channel to peer `channel`: kept in its window until acknowledged.
    /// Without a store it is durable at once and goes out now if the channel is live (else with
    /// the resend); with one it is staged, and goes out once its commit is durable.
    pub(super) fn send_on_channel(&mut self, channel: Channel, frame: Frame) {
        let peer = &mut self.peers[channel];
        if let Some(epochs) = self.epochs.as_mut() {
            let pos = peer.window.push(frame);
            epochs.stage_frame(channel, pos, frame);
            return;
        }
        let pos = peer.window.push_durable(frame);
        if let Some(link) = peer.link.filter(|link| link.resumed) {
            self.ready.0.messages.push(Outgoing {
                peer: channel,
                conn: link.conn,
                msg: PeerMsg::Channel { frame, pos },
            });
        }
    }

    /// After a delivery from peer `channel`: acknowledge at once if many frames are waiting for
    /// it, else within [`ACK_DELAY`].
    pub(super) fn acknowledge(&mut self, channel: Channel) {
        let peer = &mut self.peers[channel];
        let unacked = peer.cursor.unacked();
        if unacked >= ACK_BATCH {
            if let Some(link) = peer.link.filter(|link| link.resumed)
                && let Some(received) = peer.cursor.take_ack()
            {
                self.ready.0.messages.push(Outgoing {
                    peer: channel,
                    conn: link.conn,
                    msg: PeerMsg::Ack { received },
                });
            }
        } else if unacked > 0 && !self.ack_scheduled {
            self.ack_scheduled = true;
            self.ready.0.timers.push(TimerOp::Set {
                timer: Timer::AckFlush,
                after: ACK_DELAY,
            });
        }
    }

    /// Acknowledges everything delivered so far, on every channel.
    pub(super) fn flush_acks(&mut self) {
        self.ack_scheduled = false;
        for (channel, peer) in self.peers.iter_mut().enumerate() {
            if let Some(link) = peer.link.filter(|link| link.resumed)
                && let Some(received) = peer.cursor.take_ack()
            {
                self.ready.0.messages.push(Outgoing {
                    peer: channel,
                    conn: link.conn,
                    msg: PeerMsg::Ack { received },
                });
            }
        }
    }

    /// Commit `epoch` is durable: release the frames, acknowledgements and answers it covers.
    pub(super) fn commit_done(&mut self, epoch: u64) {
        let Some((covered, answers)) = self.epochs.as_mut().and_then(|e| e.commit_done(epoch))
        else {
            warn!(
                "{}: commit {epoch} reported durable, but it is not the commit being written; ignored",
                self.config.name
            );
            return;
        };
        let (mut frames, mut acks) = (false, false);
        for (channel, peer) in self.peers.iter_mut().enumerate() {
            let released = peer.window.mark_durable(covered.sent_upto[channel]);
            if !released.is_empty() {
                frames = true;
                if let Some(link) = peer.link.filter(|link| link.resumed) {
                    for (pos, frame) in released {
                        self.ready.0.messages.push(Outgoing {
                            peer: channel,
                            conn: link.conn,
                            msg: PeerMsg::Channel { frame, pos },
                        });
                    }
                }
            }
            if covered.delivered_upto[channel] > peer.cursor.durable() {
                acks = true;
                peer.cursor.mark_durable(covered.delivered_upto[channel]);
            }
        }
        if frames || acks {
            self.ready
                .0
                .notes
                .push(Note::CommitReleased { frames, acks });
        }
        for channel in 0..self.peers.len() {
            self.acknowledge(channel);
        }
        debug!(
            "{}: commit {} durable: {} answer(s) released",
            self.config.name,
            covered.epoch,
            answers.len()
        );
        for (conn, answer) in answers {
            self.answer_now(conn, answer);
        }
    }
}
