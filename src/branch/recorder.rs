//! [`SnapshotRecorder`]: the actor that stands for one snapshot's record in a live branch.
//!
//! The branch's node keeps the record itself and decides everything about it: what goes into
//! it, its status, when a retrieve is answered, when it is discarded. What a record needs from
//! the runtime is time: how long it may be kept unretrieved, and how long each retrieve held
//! for it may wait. Those timers run here, one actor per snapshot id begun at this branch, so
//! they end with the record: when the node retires the record the recorder stops, and its
//! timers with it, instead of piling up in the branch actor's context.

use std::time::Duration;

use actix::prelude::*;

use super::actor::{BranchActor, TimerFired};
use crate::core::SnapshotId;
use crate::core::node::Timer;

/// Run one of the node's timers for this snapshot.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetTimer {
    pub timer: Timer,
    pub after: Duration,
}

/// The node retired the record (handed over or discarded): stop, with every timer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

/// Runs the timers of one snapshot's record for the branch's node.
pub struct SnapshotRecorder {
    /// The snapshot, for logs.
    id: SnapshotId,
    /// The timers to start with (its age limit, a retrieve already held for it).
    first: Vec<(Timer, Duration)>,
    /// Told when a timer fires.
    branch: Addr<BranchActor>,
}

impl SnapshotRecorder {
    /// The recorder of snapshot `id`, owned by `branch`, running the timers `first` from the
    /// start.
    pub fn new(id: SnapshotId, first: Vec<(Timer, Duration)>, branch: Addr<BranchActor>) -> Self {
        Self { id, first, branch }
    }

    fn run(&self, timer: Timer, after: Duration, ctx: &mut Context<Self>) {
        ctx.run_later(after, move |recorder, _ctx| {
            recorder.branch.do_send(TimerFired(timer));
        });
    }
}

impl Actor for SnapshotRecorder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for (timer, after) in std::mem::take(&mut self.first) {
            self.run(timer, after, ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        log::trace!("recorder of snapshot {} stopped", self.id);
    }
}

impl Handler<SetTimer> for SnapshotRecorder {
    type Result = ();

    fn handle(&mut self, msg: SetTimer, ctx: &mut Context<Self>) {
        self.run(msg.timer, msg.after, ctx);
    }
}

impl Handler<Retire> for SnapshotRecorder {
    type Result = ();

    fn handle(&mut self, _msg: Retire, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
