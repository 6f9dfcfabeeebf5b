//! The transfer generator's decision: given a random draw, whether to send, to whom, how much.
//!
//! The runtime owns the random numbers and the clock (when the next turn comes); the node
//! decides what a turn does with its draw:
//! - the search for a target starts at the drawn peer and goes round the peer list;
//! - a target must be live (connected and resumed), have room in its send window, and have room
//!   in its connection's outbox (which only the runtime can measure, so it says);
//! - the drawn amount is sent if the balance covers it, never more: a balance never goes
//!   negative.
//!
//! A turn that cannot send says what it lacks ([`Pause`]), so the runtime parks the generator
//! until the node reports that thing back ([`super::Note::Wake`]).

use super::BranchNode;
use crate::core::{Channel, Frame};

/// What stopped the generator, and so what resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pause {
    /// The balance is below the drawn amount: the next deposit resumes it.
    Funds,
    /// Every connected peer's window or outbox is full: an acknowledgement or a drain resumes
    /// it.
    Room,
    /// No peer is connected yet: a channel resuming resumes it.
    Peer,
}

/// One turn's random draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Draw {
    /// Where the search for a target starts (taken modulo the number of peers).
    pub start: usize,
    /// The amount to send.
    pub amount: u64,
}

impl BranchNode {
    /// One transfer from `draw`, to the first peer from `draw.start` on that is live, has room
    /// in its window, and for which `outbox_has_room` holds; or what is missing.
    pub fn send_random_transfer(
        &mut self,
        draw: Draw,
        outbox_has_room: impl Fn(Channel) -> bool,
    ) -> Result<(), Pause> {
        if self.shutting_down || self.halted {
            return Err(Pause::Peer);
        }
        let count = self.peers.len();
        if count == 0 {
            return Err(Pause::Peer);
        }
        let start = draw.start % count;
        let mut connected = false;
        let channel = (0..count).map(|i| (start + i) % count).find(|&c| {
            let peer = &self.peers[c];
            let live = peer.is_live() && self.channels.out_of[c].is_some();
            connected |= live;
            live && peer.window.has_room() && outbox_has_room(c)
        });
        let Some((channel, out)) =
            channel.and_then(|c| self.channels.out_of[c].map(|out| (c, out)))
        else {
            return Err(if connected { Pause::Room } else { Pause::Peer });
        };
        let Ok(seq) = self.core.send_transfer(out, draw.amount) else {
            return Err(Pause::Funds); // no money, no transfer
        };
        self.touch();
        self.send_on_channel(
            channel,
            Frame::Transfer {
                seq,
                amount: draw.amount,
            },
        );
        Ok(())
    }
}
