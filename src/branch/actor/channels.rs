//! Peer connections of [`BranchActor`]: a connection that proved itself becomes the link of its
//! peer's channels, and its frames and its end go to the node. Which connection carries a
//! channel, `Resume`, resends, positions, refusals and the grace period are the node's
//! ([`crate::core::node`]); this module only moves bytes and tells the node what happened.

use actix::prelude::*;
use log::info;

use super::{BranchActor, PeerLink, Source};
use crate::branch::connection::{LinkSettings, PeerConnection};
use crate::core::Channel;
use crate::core::node::Input;
use crate::handshake::Authenticated;
use crate::outbox::Outbox;

impl BranchActor {
    /// A peer proved itself: its connection now carries channel `channel`, replacing any older
    /// one.
    pub(super) fn peer_connected(
        &mut self,
        channel: Channel,
        mut authenticated: Authenticated,
        from: &str,
        ctx: &mut Context<Self>,
    ) {
        let conn = self.new_conn_id();
        let settings = LinkSettings {
            peer_timeout: self.settings.peer_timeout,
            probe: true,
        };
        let max_frame = self.settings.max_frame;
        let Some(peer) = self.bank.as_mut().and_then(|b| b.peers.get_mut(channel)) else {
            return;
        };
        if let Some(old) = peer.link.take() {
            old.outbox.mark_dead();
        }
        authenticated.reader.decoder_mut().set_max_frame(max_frame);
        let outbox = Outbox::new();
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
        peer.link = Some(PeerLink { conn, outbox });
        self.step(
            Input::LinkUp {
                peer: channel,
                conn,
            },
            ctx,
        );
    }

    /// The connection `conn` of peer `channel` is gone.
    pub(super) fn peer_link_closed(
        &mut self,
        channel: Channel,
        conn: super::ConnId,
        ctx: &mut Context<Self>,
    ) {
        if let Some(peer) = self.bank.as_mut().and_then(|b| b.peers.get_mut(channel)) {
            peer.link.take_if(|link| link.conn == conn);
        }
        self.step(
            Input::LinkDown {
                peer: channel,
                conn,
            },
            ctx,
        );
    }
}
