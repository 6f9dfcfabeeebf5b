//! The random transfer generator of [`BranchActor`]: its pace and its draws. Bursts when flat
//! out, one transfer per interval otherwise, parked (not polling) while it lacks money, room or
//! a peer. What a draw sends, and to whom, is the node's decision
//! ([`crate::core::node::generator`]); the runtime adds only what the node cannot see, whether
//! a connection's outbox has room.

use actix::prelude::*;

use super::{BranchActor, SendTransfer, Wake};
use crate::core::node::{Draw, Pause};

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
        if let Some(bank) = self.bank.as_mut() {
            let count = bank.peers.len();
            let peers = &bank.peers;
            for _ in 0..self.traffic.burst() {
                let draw = Draw {
                    start: self.traffic.start_index(count),
                    amount: self.traffic.amount(),
                };
                outcome = bank.node.send_random_transfer(draw, |channel| {
                    peers[channel].outbox_open()
                        && peers[channel]
                            .link
                            .as_ref()
                            .is_some_and(|link| link.outbox.backlog() < TRANSFER_HIGH_WATER)
                });
                if outcome.is_err() {
                    break;
                }
            }
        } else {
            outcome = Err(Pause::Peer);
        }
        self.carry_out(ctx);
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
                    self.wake_on_drain(ctx);
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
    pub(super) fn wake(&mut self, pause: Pause, ctx: &mut Context<Self>) {
        if self.traffic.unpark(pause) {
            self.schedule_burst(ctx);
        }
    }

    /// Asks every connected peer's outbox to report when it drains.
    fn wake_on_drain(&self, ctx: &mut Context<Self>) {
        let Some(bank) = self.bank.as_ref() else {
            return;
        };
        for (channel, peer) in bank.peers.iter().enumerate() {
            let Some(link) = peer.link.as_ref().filter(|_| bank.node.is_live(channel)) else {
                continue;
            };
            if !link.outbox.is_open() {
                continue;
            }
            let branch = ctx.address();
            link.outbox
                .on_drained(Box::new(move || branch.do_send(Wake(Pause::Room))));
        }
    }
}
