//! The random transfer generator of [`BranchActor`]: bursts when flat out, one transfer per
//! interval otherwise, parked (not polling) while it lacks money, room or a peer.

use actix::prelude::*;
use log::error;

use super::{BranchActor, SendTransfer};
use crate::branch::traffic::Pause;
use crate::core::Frame;

/// A peer whose connection holds more than this many unwritten bytes is not sent new transfers
/// until it drains: the sender slows to the pace the connection takes, and a marker never waits
/// behind more than this much traffic.
const TRANSFER_HIGH_WATER: usize = 16 * 1024;

impl BranchActor {
    /// One turn of the transfer generator: a burst (flat out) or a single transfer, then the
    /// next turn is scheduled, or the generator parks until what it lacks arrives.
    pub(super) fn generate(&mut self, ctx: &mut Context<Self>) {
        self.traffic.run();
        if self.shutting_down {
            return;
        }
        let mut outcome = Ok(());
        for _ in 0..self.traffic.burst() {
            outcome = self.send_random_transfer();
            if outcome.is_err() {
                break;
            }
        }
        self.commit_if_needed(ctx);
        if !self.traffic.flat_out() {
            let delay = self.traffic.next_delay();
            ctx.notify_later(SendTransfer, delay);
            return;
        }
        match outcome {
            Ok(()) => self.schedule_burst(ctx),
            Err(pause) => {
                self.traffic.park(pause);
                if pause == Pause::Room {
                    self.resume_on_drain(ctx);
                }
            }
        }
    }

    /// Schedules the next burst after yielding to the event loop, so that reads and writes run
    /// between bursts.
    fn schedule_burst(&mut self, ctx: &mut Context<Self>) {
        if self.traffic.schedule() {
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(tokio::task::yield_now())
                    .map(|(), branch, ctx| branch.generate(ctx)),
            );
        }
    }

    /// Resumes a generator parked for `pause`.
    pub(super) fn resume(&mut self, pause: Pause, ctx: &mut Context<Self>) {
        if self.traffic.unpark(pause) {
            self.schedule_burst(ctx);
        }
    }

    /// Asks every connected peer's outbox to report when it drains.
    fn resume_on_drain(&self, ctx: &mut Context<Self>) {
        let Some(bank) = self.bank.as_ref() else {
            return;
        };
        for link in bank
            .peers
            .iter()
            .filter(|peer| peer.is_live())
            .filter_map(|peer| peer.link.as_ref())
        {
            let branch = ctx.address();
            link.outbox
                .on_drained(Box::new(move || branch.do_send(super::Resume(Pause::Room))));
        }
    }

    /// Sends one random transfer to a random connected peer with room in its outbox, or says
    /// what is missing.
    fn send_random_transfer(&mut self) -> Result<(), Pause> {
        let Some(bank) = self.bank.as_mut() else {
            return Err(Pause::Peer);
        };
        let count = bank.peers.len();
        let start = self.traffic.start_index(count);
        let mut connected = false;
        let channel = (0..count).map(|i| (start + i) % count).find(|&c| {
            let peer = &bank.peers[c];
            let live = peer.is_live();
            connected |= live;
            live && peer.window.has_room()
                && peer
                    .link
                    .as_ref()
                    .is_some_and(|link| link.outbox.backlog() < TRANSFER_HIGH_WATER)
        });
        let Some(channel) = channel else {
            return Err(if connected { Pause::Room } else { Pause::Peer });
        };
        let amount = self.traffic.amount();
        let Ok(seq) = bank.core.send_transfer(channel, amount) else {
            return Err(Pause::Funds); // no money, no transfer
        };
        let peer = &mut bank.peers[channel];
        if !peer.is_live() {
            error!(
                "{}: transfer #{seq} of {amount} to {} found the channel down",
                self.name, peer.name
            );
        }
        Self::send_on_channel(
            peer,
            channel,
            Frame::Transfer { seq, amount },
            &mut self.durable,
        );
        Ok(())
    }
}
