//! Carrying out the node's [`Ready`]: what the node decided, put onto sockets, timers, the
//! store and the recorders. Nothing here decides anything about money, positions, records or
//! epochs; a message for a connection that has since gone is dropped (the node resends what
//! matters when the channel resumes).

use actix::prelude::*;
use log::error;

use super::BranchActor;
use crate::branch::recorder::{self, SnapshotRecorder};
use crate::core::node::{Note, Ready, Timer, TimerOp};
use crate::wire::{self, Body, pb};

impl BranchActor {
    /// Carries out everything the node has asked for since the last time: notes first (a
    /// commit's failpoints fire before what it released leaves), then the commit, messages,
    /// answers, timers, closes and dials.
    pub(super) fn carry_out(&mut self, ctx: &mut Context<Self>) {
        // Carrying out a Ready can feed the node again (a halt shuts it down): loop until the
        // node has nothing more to say.
        while let Some(bank) = self.bank.as_mut() {
            // The same buffers go back and forth, so carrying allocates nothing.
            let mut ready = std::mem::take(&mut self.spare_ready);
            bank.node.swap_ready(&mut ready);
            if ready.is_empty() {
                self.spare_ready = ready;
                break;
            }
            self.carry(&mut ready, ctx);
            self.spare_ready = ready;
        }
        if self.grading.is_some() {
            self.grade_finished_records();
        }
    }

    /// Tells the controller's report card which of the records it watches are finished now
    /// (or already handed over, which only a finished or discarded record is).
    fn grade_finished_records(&mut self) {
        let (Some(card), Some(bank)) = (self.grading.as_mut(), self.bank.as_ref()) else {
            return;
        };
        if !card.grade.has_unfinished() {
            return;
        }
        let now = std::time::Instant::now();
        let finished: Vec<u32> = card
            .grade
            .unfinished()
            .filter(|&id| {
                bank.node
                    .record(id)
                    .is_none_or(|record| record.is_finished())
            })
            .collect();
        for id in finished {
            card.grade.record_finished(id, now);
        }
    }

    /// Carries out `ready`, leaving it empty.
    fn carry(&mut self, ready: &mut Ready, ctx: &mut Context<Self>) {
        for note in ready.notes.drain(..) {
            if let Note::RecordBegun(id) = note {
                if let Some(card) = self.grading.as_mut() {
                    card.grade.record_begun(id, std::time::Instant::now());
                }
                // The record's recorder starts with the timers the node set for it, rather
                // than being sent them one message at a time.
                let mut first = Vec::new();
                ready.timers.retain(|op| match *op {
                    TimerOp::Set {
                        timer: timer @ (Timer::RecordExpiry(of) | Timer::Retrieve { id: of, .. }),
                        after,
                    } if of == id => {
                        first.push((timer, after));
                        false
                    }
                    _ => true,
                });
                let recorder = SnapshotRecorder::new(id, first, ctx.address()).start();
                if let Some(bank) = self.bank.as_mut() {
                    bank.recorders.insert(id, recorder);
                }
                continue;
            }
            self.carry_note(note, ctx);
        }
        // A node dropped by what the notes carried (a halt that waits for a rollback) commits
        // nothing more.
        if let Some(persist) = ready.persist.take()
            && self.bank.is_some()
        {
            self.commit(persist, ctx);
        }
        let Some(bank) = self.bank.as_mut() else {
            ready.clear();
            return;
        };
        for out in ready.messages.drain(..) {
            let link = bank
                .peers
                .get(out.peer)
                .and_then(|peer| peer.link.as_ref())
                .filter(|link| link.conn == out.conn);
            if let Some(link) = link {
                link.outbox.push(wire::peer_body(out.msg));
            }
        }
        for (conn, answer) in ready.answers.drain(..) {
            let Some(bank) = self.bank.as_ref() else {
                continue;
            };
            let local = wire::local_answer(&answer, &self.name, &bank.peer_names);
            if let Some(link) = self.controllers.get(&conn) {
                link.outbox.push(Body::ReturnSnapshot(pb::ReturnSnapshot {
                    local_snapshot: Some(local),
                }));
            }
            self.close_if_nothing_owed(conn);
        }
        for op in std::mem::take(&mut ready.timers) {
            self.carry_timer(op, ctx);
        }
        if let Some(bank) = self.bank.as_mut() {
            for close in ready.closes.drain(..) {
                let Some(peer) = bank.peers.get_mut(close.peer) else {
                    continue;
                };
                let Some(link) = peer.link.take_if(|link| link.conn == close.conn) else {
                    continue;
                };
                if let Some(refusal) = close.refusal {
                    link.outbox.push(wire::peer_body(refusal));
                }
                link.outbox.close();
            }
        }
        for dial in std::mem::take(&mut ready.dials) {
            self.dial(dial, ctx);
        }
        ready.clear();
    }

    fn carry_note(&mut self, note: Note, ctx: &mut Context<Self>) {
        match note {
            Note::RecordBegun(_) => {} // started in `carry`, with its timers
            Note::RecordRetired(id) => {
                if let Some(recorder) = self.bank.as_mut().and_then(|b| b.recorders.remove(&id)) {
                    recorder.do_send(recorder::Retire);
                }
            }
            Note::Wake(pause) => self.wake(pause, ctx),
            Note::ChannelResumed(channel) => {
                if let Some(peer) = self.bank.as_mut().and_then(|b| b.peers.get_mut(channel)) {
                    peer.redial = super::admission::redial_backoff();
                }
            }
            Note::CommitReleased { frames, acks } => {
                if frames {
                    crate::failpoint::hit("before-send");
                }
                if acks {
                    crate::failpoint::hit("before-ack");
                }
            }
            Note::Halt(detail) => self.halt_regressed(detail, ctx),
        }
    }

    /// Sets or cancels a timer of the node. A snapshot's timers run in its recorder and end
    /// with it; the others run in the actor's context.
    fn carry_timer(&mut self, op: TimerOp, ctx: &mut Context<Self>) {
        match op {
            TimerOp::Set { timer, after } => {
                let recorder = match timer {
                    Timer::Retrieve { id, .. } | Timer::RecordExpiry(id) => {
                        self.bank.as_ref().and_then(|b| b.recorders.get(&id))
                    }
                    Timer::Grace(_) | Timer::AckFlush => None,
                };
                if let Some(recorder) = recorder {
                    recorder.do_send(recorder::SetTimer { timer, after });
                    return;
                }
                let handle = ctx.run_later(after, move |branch, ctx| {
                    branch.timers.remove(&timer);
                    branch.step(crate::core::node::Input::Timer(timer), ctx);
                });
                if let Some(old) = self.timers.insert(timer, handle) {
                    ctx.cancel_future(old);
                }
            }
            TimerOp::Cancel(timer) => {
                if let Some(handle) = self.timers.remove(&timer) {
                    ctx.cancel_future(handle);
                }
            }
        }
    }

    /// This branch's store lost a commit (`detail` says how that showed): it cannot go on
    /// with the state it has, so it stops trading. If the bank's controller rolls the bank back
    /// on a branch's loss, the branch drops its state and closes its controller connections:
    /// the controller's reconnection finds it empty, and the rollback initialises it (starting
    /// its store over) in the bank's next epoch. If it does not, the branch closes every
    /// connection and the `branch` command exits with the reason. A branch that halts before
    /// any controller has claimed its lease since it started waits, for its peer timeout, for
    /// the first one to say which.
    fn halt_regressed(&mut self, detail: String, ctx: &mut Context<Self>) {
        let dir = self
            .settings
            .data_dir
            .as_deref()
            .map_or_else(|| "?".to_string(), |dir| dir.display().to_string());
        let reason = format!(
            "state regressed: a commit was lost, the disk may be corrupt: the store in {dir} is older than what its peers know ({detail}); this branch stops trading"
        );
        let rolls_back = self.lease.rolls_back();
        if !self.lease_applies() || rolls_back == Some(false) {
            return self.stop_regressed(reason);
        }
        error!(
            "{}: {reason}, drops its state and waits for the bank's controller to roll the bank back",
            self.name
        );
        self.drop_bank(ctx);
        for link in self.controllers.values() {
            link.outbox.close();
        }
        self.regressed = Some(reason);
        if rolls_back.is_none() {
            let wait = self.settings.peer_timeout;
            ctx.run_later(wait, move |branch, _ctx| {
                if branch.lease.rolls_back().is_none()
                    && let Some(reason) = branch.regressed.take()
                {
                    branch.stop_regressed(format!(
                        "{reason}, and no controller came to roll the bank back within {} ms",
                        wait.as_millis()
                    ));
                }
            });
        }
    }

    /// A branch whose store lost a commit, and which no rollback will bring back, stops: it
    /// closes every connection, and the `branch` command exits with `reason`.
    pub(super) fn stop_regressed(&mut self, reason: String) {
        error!("{}: {reason}", self.name);
        self.regressed = None;
        self.shut_down();
        self.halted.send_replace(Some(reason));
    }
}
