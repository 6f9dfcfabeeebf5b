//! The core's effects, carried out by [`BranchActor`]: a recorder per snapshot begun here,
//! markers onto the peer channels, money found in transit batched to its recorder.

use std::time::Instant;

use actix::prelude::*;
use log::{debug, warn};

use super::BranchActor;
use crate::branch::recorder::{self, SnapshotRecorder};
use crate::core::{Effect, Frame, InTransit, SnapshotRecord};

/// Upper bound on snapshot records kept (recording, or finished and not yet retrieved). Beyond
/// it the oldest is discarded, so a flood of markers with fresh ids cannot exhaust memory.
const MAX_KEPT_RECORDS: usize = 1024;

impl BranchActor {
    /// Hands every recorder the transfers found in transit for it since the last flush.
    pub(super) fn flush_observed(&mut self) {
        if self.observed.is_empty() {
            return;
        }
        let Some(bank) = self.bank.as_ref() else {
            return;
        };
        for (id, observed) in self.observed.drain() {
            if let Some(recorder) = bank.recorders.get(&id) {
                recorder.do_send(recorder::Observed(observed));
            }
        }
    }

    /// Carries out the effects the core just produced, in order.
    pub(super) fn apply_effects(&mut self, ctx: &mut Context<Self>) {
        let Some(bank) = self.bank.as_mut() else {
            return;
        };
        if let Some(durable) = self.durable.as_mut()
            && !self.effects.is_empty()
        {
            durable.touch();
        }
        for effect in self.effects.drain(..) {
            match effect {
                Effect::BeginRecord {
                    id,
                    balance,
                    sent,
                    received,
                } => {
                    if bank.recorders.len() >= MAX_KEPT_RECORDS
                        && let Some(&oldest) = bank.recorders.keys().min()
                    {
                        warn!(
                            "{}: more than {MAX_KEPT_RECORDS} snapshot records kept; discarding snapshot {oldest}",
                            self.name
                        );
                        if let Some(recorder) = bank.recorders.remove(&oldest) {
                            recorder.do_send(recorder::Discard);
                        }
                        self.discarded.insert(oldest);
                        bank.core.abandon(oldest);
                        if let Some(durable) = self.durable.as_mut() {
                            durable.remove_record(oldest);
                        }
                    }
                    if let Some(durable) = self.durable.as_mut() {
                        durable.begin_record(id, balance, &sent, &received);
                    }
                    self.highest_snapshot = Some(self.highest_snapshot.map_or(id, |h| h.max(id)));
                    let record = SnapshotRecord::new(id, balance, sent, received);
                    let recorder = SnapshotRecorder::new(
                        record,
                        self.name.clone(),
                        bank.peer_names.clone(),
                        ctx.address(),
                    )
                    .start();
                    for waiter in self.early_waiters.remove(&id).into_iter().flatten() {
                        ctx.cancel_future(waiter.timer);
                        recorder.do_send(recorder::Retrieve {
                            wait: waiter.deadline.saturating_duration_since(Instant::now()),
                            reply: waiter.reply,
                        });
                    }
                    bank.recorders.insert(id, recorder);
                }
                Effect::SendMarker { to, id } => {
                    if let Some(peer) = bank.peers.get_mut(to) {
                        Self::send_on_channel(peer, to, Frame::Marker { id }, &mut self.durable);
                    }
                }
                Effect::RecordTransfer {
                    id,
                    from,
                    seq,
                    amount,
                } => {
                    let transfer = InTransit { from, seq, amount };
                    if let Some(durable) = self.durable.as_mut() {
                        durable.record_transfer(id, transfer);
                    }
                    self.observed.entry(id).or_default().push(transfer);
                }
                Effect::ChannelLost { id, from } => {
                    if let Some(durable) = self.durable.as_mut() {
                        durable.lose_channel(id, from);
                    }
                    if let Some(recorder) = bank.recorders.get(&id) {
                        if let Some(observed) = self.observed.remove(&id) {
                            recorder.do_send(recorder::Observed(observed));
                        }
                        recorder.do_send(recorder::LoseChannel(from));
                    }
                }
                Effect::FinishRecord { id } => {
                    debug!("{}: finished recording snapshot {id}", self.name);
                    if let Some(durable) = self.durable.as_mut() {
                        durable.finish_record(id);
                    }
                    if let Some(recorder) = bank.recorders.get(&id) {
                        if let Some(observed) = self.observed.remove(&id) {
                            recorder.do_send(recorder::Observed(observed));
                        }
                        recorder.do_send(recorder::FinishRecord);
                    }
                }
            }
        }
    }
}
