//! The peer channels of [`BranchActor`]: splicing a connection onto a channel, resending what
//! the peer lacks, delivering frames exactly once by position, acknowledging them, and losing a
//! peer only when it has not come back within its grace period.
//!
//! A channel outlives its connections. When a connection fails, the frames the peer has not
//! acknowledged stay in the channel's [`crate::core::SendWindow`]; the dialling side redials,
//! both sides send `Resume` (who they are, how far they have received), and each resends what
//! the other lacks before anything new. Snapshots in progress keep waiting for the peer's
//! markers through the outage, up to `peer_grace`; after that the channel counts as lost
//! (records waiting for it are cut short), until the peer comes back.
//!
//! What one connection can do to a channel:
//! - A protocol error (a frame before `Resume`, a `Resume` from another incarnation, an ack
//!   beyond what was sent, a position gap, a transfer the ledger cannot take) closes that
//!   connection and is logged; the frame changes nothing. The channel stays: the real peer
//!   takes it back when it (re)connects, and only the grace period decides when snapshots stop
//!   waiting for it. In a bank without a secret any stranger can open such a connection, so
//!   nothing it says may end more than that connection.
//! - A `Refusal` closes the connection too. Its kind is believed only from a peer that has
//!   proved the cluster secret, and only two kinds end anything: `NEW_INCARNATION` (this branch
//!   restarted without its state: it stops dialling that peer, since retrying cannot help) and
//!   `STATE_REGRESSED` (this branch's store lost a commit: it halts).
//! - A proven peer whose `Resume` acknowledges more than this durable branch's store says was
//!   ever sent shows that the store lost a commit: the branch halts (exit 2) instead of trading
//!   with the wrong money.

use std::path::Path;
use std::time::{Duration, Instant};

use actix::prelude::*;
use log::{error, info, warn};

use super::{BranchActor, ConnId, PeerLink, Source, peer_mut};
use crate::branch::connection::{LinkSettings, PeerConnection};
use crate::branch::traffic::Pause;
use crate::core::{
    Channel, ChannelError, CoreError, Delivery, Frame, PeerMsg, Position, RefusalKind,
};
use crate::handshake::Authenticated;
use crate::outbox::Outbox;
use crate::wire::{self, Body};

/// Frames delivered on a channel before an acknowledgement goes out at once, without waiting
/// for [`ACK_DELAY`]: a sixteenth of the default window, so a busy sender never stalls on a full
/// window while acknowledgements are merely delayed.
const ACK_BATCH: u64 = 1024;

/// Longest an acknowledgement waits for more frames to cover. Acks only free the sender's
/// window (and bound what a reconnect resends), so on a quiet channel they can wait: with 63
/// peers each carrying a few dozen transfers a second, acking every 5 ms put more ack frames on
/// the wire than transfers, and every 50 ms two for every three transfers.
const ACK_DELAY: Duration = Duration::from_millis(500);

impl BranchActor {
    /// A peer proved itself: its connection now carries channel `channel`, replacing any older
    /// one (the peer only connects again when it has given the old one up). The dialler's first
    /// frame is its `Resume`; the acceptor sends its own once the dialler's checks out. Nothing
    /// else goes out until the peer's `Resume` arrives.
    pub(super) fn peer_connected(
        &mut self,
        channel: Channel,
        mut authenticated: Authenticated,
        from: &str,
        ctx: &mut Context<Self>,
    ) {
        let conn = self.new_conn_id();
        let incarnation = self.incarnation;
        let settings = LinkSettings {
            peer_timeout: self.settings.peer_timeout,
            probe: true,
        };
        let Some(peer) = peer_mut(&mut self.bank, channel) else {
            return;
        };
        peer.dialling = false;
        if let Some(old) = peer.link.take() {
            info!(
                "{}: {} connected again ({from}); the new connection replaces the old one",
                self.name, peer.name
            );
            old.outbox.mark_dead();
        }
        authenticated
            .reader
            .decoder_mut()
            .set_max_frame(self.settings.max_frame);
        let outbox = Outbox::new();
        // The dialler states who it is first; the acceptor answers only once that matches the
        // incarnation it knows, so a stranger that merely connects learns nothing of it.
        if peer.we_dial {
            push_resume(peer, &outbox, incarnation);
        }
        info!(
            "{}: peer {} connected and authenticated ({from})",
            self.name, peer.name
        );
        PeerConnection::start(
            authenticated.reader,
            authenticated.writer,
            outbox.clone(),
            Source::Peer { channel, conn },
            format!("peer {}", peer.name),
            settings,
            ctx.address(),
        );
        peer.link = Some(PeerLink {
            conn,
            outbox,
            resumed: false,
        });
    }

    /// A message from the connection carrying peer `channel`.
    pub(super) fn on_peer_frame(
        &mut self,
        channel: Channel,
        conn: ConnId,
        msg: PeerMsg,
        ctx: &mut Context<Self>,
    ) {
        let Some(bank) = self.bank.as_mut() else {
            return;
        };
        let authenticated = bank.authenticated;
        let Some(peer) = bank.peers.get_mut(channel) else {
            return;
        };
        let Some(link) = peer.link.as_ref().filter(|link| link.conn == conn) else {
            return; // a frame from a connection that has since been replaced
        };
        if !link.resumed {
            match msg {
                PeerMsg::Resume {
                    incarnation,
                    received,
                } => self.on_resume(channel, incarnation, received, ctx),
                PeerMsg::Refusal { kind, reason } => self.on_refusal(channel, kind, reason, ctx),
                other => self.protocol_error(
                    channel,
                    format!("sent {} before Resume on a new connection", other.kind()),
                    ctx,
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
                        if let Some(durable) = self.durable.as_mut() {
                            durable.stage_ack(channel, received);
                        }
                        self.resume(Pause::Room, ctx);
                    }
                    Err(err) => self.protocol_error(channel, err.to_string(), ctx),
                }
                return;
            }
            PeerMsg::Refusal { kind, reason } => {
                self.on_refusal(channel, kind, reason, ctx);
                return;
            }
            other => {
                warn!(
                    "{}: peer {} sent {}; only Transfer, Marker and Ack are accepted from peers; ignored",
                    self.name,
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
            self.protocol_error(channel, format!("sent a frame without a {what}"), ctx);
            return;
        }
        // Put back if the frame turns out to be unusable, so that its position is still owed
        // and the sender's resend after the reconnect is delivered.
        let cursor_before = peer.cursor;
        if pos != 0 {
            match peer.cursor.accept(pos) {
                Ok(Delivery::Deliver) => match self.durable.as_mut() {
                    // Acknowledged once the commit holding its effects is durable.
                    Some(durable) => durable.touch(),
                    None => peer.cursor.mark_durable(pos),
                },
                Ok(Delivery::Duplicate) => return,
                Err(err) => {
                    self.protocol_error(channel, err.to_string(), ctx);
                    return;
                }
            }
        }
        let result = match frame {
            Frame::Transfer { seq, amount } => bank.core.receive_transfer(
                channel,
                amount,
                (seq != 0).then_some(seq),
                &mut self.effects,
            ),
            Frame::Marker { id } => bank.core.receive_marker(channel, id, &mut self.effects),
        };
        match result {
            Ok(()) => self.apply_effects(ctx),
            // A transfer that cannot be applied: nothing changed, and its connection cannot be
            // trusted with what follows.
            Err(
                err @ (CoreError::OutOfSequence { .. }
                | CoreError::BalanceOverflow { .. }
                | CoreError::UnknownChannel(_)),
            ) => {
                bank.peers[channel].cursor = cursor_before;
                self.protocol_error(channel, err.to_string(), ctx);
            }
            Err(err) => {
                let peer_name = &bank.peers[channel].name;
                // A marker of a snapshot that stopped waiting for this channel while it was
                // lost arrives after the fact: expected, not a fault.
                if matches!(
                    err,
                    CoreError::MarkerAfterFinish { .. } | CoreError::DuplicateMarker { .. }
                ) {
                    log::debug!("{}: from peer {peer_name}: {err}; ignored", self.name);
                } else {
                    warn!("{}: from peer {peer_name}: {err}; ignored", self.name);
                }
            }
        }
    }

    /// The peer's `Resume`: check it is the same incarnation, resend what it lacks, go live.
    fn on_resume(
        &mut self,
        channel: Channel,
        incarnation: u64,
        received: Position,
        ctx: &mut Context<Self>,
    ) {
        let Some(bank) = self.bank.as_mut() else {
            return;
        };
        let authenticated = bank.authenticated;
        let peer = &mut bank.peers[channel];
        if let Some(known) = peer.incarnation.filter(|&known| known != incarnation) {
            let reason = format!(
                "{} came back as a new incarnation ({:016x}, was {known:016x}): it restarted without its state, so its channel positions started over and it cannot be spliced onto the old channel ({} frame(s) this branch sent it are unacknowledged); restart {} with its --data-dir",
                peer.name,
                incarnation,
                peer.window.unacked(),
                peer.name
            );
            let refusal = wire::final_refusal(RefusalKind::NewIncarnation, reason.clone());
            self.close_link(channel, Some(refusal), &reason, ctx);
            return;
        }
        let resumed = peer
            .window
            .resume(received)
            .map(|frames| frames.collect::<Vec<_>>());
        let resent = match resumed {
            Ok(frames) => frames,
            Err(err) => {
                let (name, authenticated) = (peer.name.clone(), authenticated);
                self.resume_failed(channel, &name, authenticated, err, ctx);
                return;
            }
        };
        let Some(link) = peer.link.as_ref() else {
            return;
        };
        let outbox = link.outbox.clone();
        if !peer.we_dial {
            push_resume(peer, &outbox, self.incarnation);
        }
        let Some(link) = peer.link.as_mut() else {
            return;
        };
        for &(pos, frame) in &resent {
            link.outbox.push(wire::channel_frame(frame, pos));
        }
        link.resumed = true;
        peer.redial = super::admission::redial_backoff();
        if peer.incarnation != Some(incarnation)
            && let Some(durable) = self.durable.as_mut()
        {
            durable.touch();
        }
        peer.incarnation = Some(incarnation);
        if let Some(grace) = peer.grace.take() {
            ctx.cancel_future(grace);
        }
        let outage = peer.down_since.take();
        match outage {
            Some(since) => info!(
                "{}: channel with {} resumed after {} ms: resent {} frame(s) after position {}",
                self.name,
                peer.name,
                since.elapsed().as_millis(),
                resent.len(),
                received
            ),
            None => info!(
                "{}: channel with {} is up (it has received up to position {}; resent {} frame(s))",
                self.name,
                peer.name,
                received,
                resent.len()
            ),
        }
        if bank.core.is_lost(channel) {
            info!(
                "{}: {} is back after its grace period: snapshots from now on wait for it again",
                self.name, bank.peers[channel].name
            );
            let _ = bank.core.restore_channel(channel);
        }
        self.resume(Pause::Peer, ctx);
    }

    /// The peer's `Resume` states a position this side's window cannot resume from.
    fn resume_failed(
        &mut self,
        channel: Channel,
        peer: &str,
        authenticated: bool,
        err: ChannelError,
        ctx: &mut Context<Self>,
    ) {
        match err {
            // A proven peer has frames this durable branch's store does not know it sent: the
            // store lost a commit.
            ChannelError::AckBeyondSent { acked, sent }
                if authenticated && self.store.is_some() =>
            {
                self.halt_regressed(format!(
                    "{peer} has received up to position {acked} from this branch, but the store says only {sent} frame(s) were ever sent to it"
                ));
            }
            // The peer has lost frames it had acknowledged: its store lost a commit.
            ChannelError::Regressed { .. } => {
                let reason = format!("{peer}'s state regressed (its store lost a commit?): {err}");
                let refusal = authenticated
                    .then(|| wire::final_refusal(RefusalKind::StateRegressed, reason.clone()));
                self.close_link(channel, refusal, &reason, ctx);
            }
            err => self.protocol_error(channel, err.to_string(), ctx),
        }
    }

    /// The peer refused the connection. Whatever it says, this connection is closed; what
    /// else follows depends on whether the peer proved the cluster secret.
    fn on_refusal(
        &mut self,
        channel: Channel,
        kind: RefusalKind,
        reason: String,
        ctx: &mut Context<Self>,
    ) {
        let Some(bank) = self.bank.as_mut() else {
            return;
        };
        let peer = &mut bank.peers[channel];
        match kind {
            _ if !bank.authenticated => warn!(
                "{}: {} refused the connection (unproven, so this changes nothing else): {reason}",
                self.name, peer.name
            ),
            RefusalKind::Retry => {
                warn!(
                    "{}: {} refused the connection: {reason}",
                    self.name, peer.name
                )
            }
            RefusalKind::StateRegressed if self.store.is_some() => {
                let detail = format!("{} says: {reason}", peer.name);
                self.halt_regressed(detail);
                return;
            }
            RefusalKind::NewIncarnation | RefusalKind::StateRegressed => {
                error!(
                    "{}: {} (which proved the cluster secret) refused the channel for good: {reason}; not dialling it again",
                    self.name, peer.name
                );
                peer.stopped_dialling = Some(reason.clone());
            }
        }
        self.close_link(channel, None, &format!("refused: {reason}"), ctx);
    }

    /// The connection broke the channel's protocol: it is closed; the channel stays.
    fn protocol_error(&mut self, channel: Channel, reason: String, ctx: &mut Context<Self>) {
        let reason = format!("protocol error: {reason}");
        self.close_link(channel, Some(wire::refusal(reason.clone())), &reason, ctx);
    }

    /// Closes the connection carrying channel `channel` (after `refusal`, if any, so the other
    /// side can say why). The channel and everything in it stay: the grace period runs as for
    /// any outage, and a dialling branch dials again after a pause.
    fn close_link(
        &mut self,
        channel: Channel,
        refusal: Option<Body>,
        reason: &str,
        ctx: &mut Context<Self>,
    ) {
        let Some(peer) = peer_mut(&mut self.bank, channel) else {
            return;
        };
        let Some(link) = peer.link.take() else {
            return;
        };
        warn!(
            "{}: closing the connection carrying the channel with {}: {reason}",
            self.name, peer.name
        );
        if let Some(refusal) = refusal {
            link.outbox.push(refusal);
        }
        link.outbox.close();
        self.link_gone(channel, false, ctx);
    }

    /// This branch's store lost a commit (`detail` says how that showed): it cannot go on
    /// with the state it has, so it stops trading and closes every connection, and the
    /// `branch` command exits with the reason.
    fn halt_regressed(&mut self, detail: String) {
        let dir = self.settings.data_dir.as_deref().unwrap_or(Path::new("?"));
        let reason = format!(
            "state regressed: a commit was lost, the disk may be corrupt: the store in {} is older than what its peers know ({detail}); this branch stops trading",
            dir.display()
        );
        error!("{}: {reason}", self.name);
        self.shut_down();
        self.halted.send_replace(Some(reason));
    }

    /// The connection `conn` of peer `channel` is gone.
    pub(super) fn peer_link_closed(
        &mut self,
        channel: Channel,
        conn: ConnId,
        ctx: &mut Context<Self>,
    ) {
        let Some(peer) = peer_mut(&mut self.bank, channel) else {
            return;
        };
        let Some(link) = peer.link.take_if(|link| link.conn == conn) else {
            return; // an older connection, already replaced
        };
        if self.shutting_down {
            return;
        }
        warn!(
            "{}: lost the connection to {} ({} frame(s) unacknowledged); {}; snapshots wait for it up to {} ms",
            self.name,
            peer.name,
            peer.window.unacked(),
            if peer.we_dial {
                "redialling"
            } else {
                "waiting for it to redial"
            },
            self.settings.peer_grace.as_millis()
        );
        self.link_gone(channel, link.resumed, ctx);
    }

    /// The connection of channel `channel` is gone (`resumed`: after it had resumed the
    /// channel): the grace period starts, and a dialling branch dials again, at once after a
    /// connection that worked, after a growing pause after one that did not.
    fn link_gone(&mut self, channel: Channel, resumed: bool, ctx: &mut Context<Self>) {
        self.channel_down(channel, ctx);
        let Some(peer) = peer_mut(&mut self.bank, channel) else {
            return;
        };
        peer.redial_pending_pause |= !resumed;
        if peer.we_dial && !self.shutting_down {
            self.dial(channel, ctx);
        }
    }

    /// Starts the grace period of a channel whose connection is down (once per outage).
    fn channel_down(&mut self, channel: Channel, ctx: &mut Context<Self>) {
        let grace = self.settings.peer_grace;
        let Some(peer) = peer_mut(&mut self.bank, channel) else {
            return;
        };
        if peer.down_since.is_some() {
            return;
        }
        peer.down_since = Some(Instant::now());
        let timer = ctx.run_later(grace, move |branch, ctx| branch.grace_expired(channel, ctx));
        peer.grace = Some(timer);
    }

    /// The peer has not come back within its grace period: snapshots stop waiting for it.
    fn grace_expired(&mut self, channel: Channel, ctx: &mut Context<Self>) {
        let Some(bank) = self.bank.as_mut() else {
            return;
        };
        let peer = &mut bank.peers[channel];
        peer.grace = None;
        if peer.is_live() {
            return;
        }
        warn!(
            "{}: {} has not come back within {} ms: snapshots stop waiting for its markers (their records are cut short) until it returns",
            self.name,
            peer.name,
            self.settings.peer_grace.as_millis()
        );
        if bank.core.lose_channel(channel, &mut self.effects).is_ok() {
            self.apply_effects(ctx);
        }
    }

    /// Sends `frame` on the channel to peer `channel`: kept in its window until acknowledged.
    /// Without a store it is durable at once and written now if the channel is live (else it
    /// goes out with the resend); with one it is staged, and written once its commit is durable.
    pub(super) fn send_on_channel(
        peer: &mut super::Peer,
        channel: Channel,
        frame: Frame,
        durable: &mut Option<super::durability::Durable>,
    ) {
        if let Some(durable) = durable {
            let pos = peer.window.push(frame);
            durable.stage_frame(channel, pos, frame);
            return;
        }
        let pos = peer.window.push_durable(frame);
        if let Some(link) = peer.link.as_ref().filter(|link| link.resumed) {
            link.outbox.push(wire::channel_frame(frame, pos));
        }
    }

    /// After a batch from peer `channel`: acknowledge at once if many frames are waiting for
    /// it, else within [`ACK_DELAY`].
    pub(super) fn acknowledge(&mut self, channel: Channel, ctx: &mut Context<Self>) {
        let Some(peer) = peer_mut(&mut self.bank, channel) else {
            return;
        };
        let unacked = peer.cursor.unacked();
        if unacked >= ACK_BATCH {
            if let Some(link) = peer.link.as_ref().filter(|link| link.resumed)
                && let Some(received) = peer.cursor.take_ack()
            {
                link.outbox.push(wire::ack(received));
            }
        } else if unacked > 0 && !self.ack_scheduled {
            self.ack_scheduled = true;
            ctx.run_later(ACK_DELAY, |branch, _ctx| branch.flush_acks());
        }
    }

    /// Acknowledges everything delivered so far, on every channel.
    fn flush_acks(&mut self) {
        self.ack_scheduled = false;
        for peer in self.bank.iter_mut().flat_map(|bank| bank.peers.iter_mut()) {
            if let Some(link) = peer.link.as_ref().filter(|link| link.resumed)
                && let Some(received) = peer.cursor.take_ack()
            {
                link.outbox.push(wire::ack(received));
            }
        }
    }
}

/// Queues this branch's `Resume` on a new connection of `peer`: its incarnation and how far it
/// has received. Only what is durable counts as received: the peer forgets what this side
/// states.
fn push_resume(peer: &mut super::Peer, outbox: &Outbox, incarnation: u64) {
    outbox.push(wire::resume(incarnation, peer.cursor.durable()));
    peer.cursor.acked_by_resume();
}
