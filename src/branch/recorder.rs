//! [`SnapshotRecorder`]: the actor that keeps one branch's record of one snapshot.
//!
//! The [`super::BranchActor`] starts one when its core begins recording a snapshot and forwards
//! it the core's effects for that id (money found in transit, the end of recording) through its
//! FIFO mailbox, so the recorder sees them in exactly the order the core decided them. The
//! recorder answers `RetrieveSnapshot` requests, holding a request until the record is finished
//! when the controller asked to wait, and retires once a finished record has been handed over,
//! so memory stays bounded however long the bank runs. A record nobody retrieves is discarded
//! after [`RECORD_TTL`].

use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::actor::{BranchActor, RecorderRetired};
use crate::core::{InTransit, SnapshotRecord};
use crate::wire::{self, pb};

/// How long a record is kept when nobody retrieves it (the controller gave up, or went away).
pub const RECORD_TTL: Duration = Duration::from_secs(600);

/// Where a finished (or timed-out) answer goes: the slot of one `RetrieveSnapshot` request.
pub type Reply = oneshot::Sender<pb::return_snapshot::LocalSnapshot>;

/// Transfers found in transit on incoming channels while they were recording, in arrival
/// order. Batched per inbound read, so recording under load costs one message per read, not
/// one per transfer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observed(pub Vec<InTransit>);

/// An incoming channel's connection was lost before its marker came.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LoseChannel(pub usize);

/// Every incoming channel has delivered its marker: the record is final.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FinishRecord;

/// The branch dropped this record (too many kept): stop without answering.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Discard;

/// A `RetrieveSnapshot` for this recorder's snapshot: answer on `reply`, at once if the record is
/// finished or `wait` is zero, else when it finishes or `wait` runs out, whichever comes first.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retrieve {
    pub wait: Duration,
    pub reply: Reply,
}

/// Keeps one snapshot's record and answers requests for it.
pub struct SnapshotRecorder {
    /// The record being built.
    record: SnapshotRecord,
    /// The branch's name, stamped on every answer so the controller can check who answered.
    branch_name: Rc<str>,
    /// The branch's peers, naming the channels in the answer.
    peers: Rc<[String]>,
    /// Requests held until the record finishes, each with a token its timeout uses to find it.
    waiting: Vec<(u64, Reply)>,
    /// Next waiter token.
    next_token: u64,
    /// Told when this recorder retires, so it stops forwarding to it.
    branch: Addr<BranchActor>,
}

impl SnapshotRecorder {
    /// A recorder for `record`, owned by `branch`.
    pub fn new(
        record: SnapshotRecord,
        branch_name: Rc<str>,
        peers: Rc<[String]>,
        branch: Addr<BranchActor>,
    ) -> Self {
        Self {
            record,
            branch_name,
            peers,
            waiting: Vec::new(),
            next_token: 0,
            branch,
        }
    }

    fn answer(&self) -> pb::return_snapshot::LocalSnapshot {
        let status = match (self.record.is_finished(), self.record.lost().is_empty()) {
            (true, true) => pb::SnapshotStatus::Complete,
            (true, false) => pb::SnapshotStatus::CutShort,
            (false, _) => pb::SnapshotStatus::Recording,
        };
        wire::local_snapshot(&self.record, status, &self.branch_name, &self.peers)
    }

    /// Hands the finished record over and stops: a retrieved record is not kept here (the
    /// branch keeps a copy of recent answers). `discarded`: it was never handed over.
    fn retire(&mut self, discarded: bool, ctx: &mut Context<Self>) {
        // The answer travels with the retirement too: the branch keeps it the moment it forgets
        // this recorder, so a request arriving in between (a controller asking again on a new
        // connection) finds the record, not "unknown".
        let answer = (!discarded && self.record.is_finished()).then(|| self.answer());
        self.branch.do_send(RecorderRetired {
            id: self.record.id(),
            discarded,
            answer,
        });
        ctx.stop();
    }
}

impl Actor for SnapshotRecorder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(RECORD_TTL, |recorder, ctx| {
            log::warn!(
                "{}: snapshot {} was not retrieved within {} s; discarding its record",
                recorder.branch_name,
                recorder.record.id(),
                RECORD_TTL.as_secs()
            );
            recorder.retire(true, ctx);
        });
    }
}

impl Handler<Discard> for SnapshotRecorder {
    type Result = ();

    fn handle(&mut self, _msg: Discard, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Observed> for SnapshotRecorder {
    type Result = ();

    fn handle(&mut self, msg: Observed, _ctx: &mut Context<Self>) {
        for transfer in msg.0 {
            self.record.add_in_transit(transfer);
        }
    }
}

impl Handler<LoseChannel> for SnapshotRecorder {
    type Result = ();

    fn handle(&mut self, msg: LoseChannel, _ctx: &mut Context<Self>) {
        self.record.lose(msg.0);
    }
}

impl Handler<FinishRecord> for SnapshotRecorder {
    type Result = ();

    fn handle(&mut self, _msg: FinishRecord, ctx: &mut Context<Self>) {
        self.record.finish();
        if self.waiting.is_empty() {
            return;
        }
        let answer = self.answer();
        for (_, reply) in self.waiting.drain(..) {
            // A dropped receiver means the controller connection is gone; nothing to do.
            let _ = reply.send(answer.clone());
        }
        self.retire(false, ctx);
    }
}

impl Handler<Retrieve> for SnapshotRecorder {
    type Result = ();

    fn handle(&mut self, msg: Retrieve, ctx: &mut Context<Self>) {
        if self.record.is_finished() {
            let _ = msg.reply.send(self.answer());
            self.retire(false, ctx);
        } else if msg.wait.is_zero() {
            let _ = msg.reply.send(self.answer());
        } else {
            let token = self.next_token;
            self.next_token += 1;
            self.waiting.push((token, msg.reply));
            ctx.run_later(msg.wait, move |recorder, _ctx| {
                if let Some(at) = recorder.waiting.iter().position(|(t, _)| *t == token) {
                    let (_, reply) = recorder.waiting.swap_remove(at);
                    let _ = reply.send(recorder.answer());
                }
            });
        }
    }
}
