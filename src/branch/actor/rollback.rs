//! A rollback of the whole bank, as one branch of it carries the controller's two phases:
//! - `RollbackPrepare { epoch }`: stop trading and drop everything of the ending epoch: the
//!   node (ledger, channels, records, held retrieves), its timers and recorders, its peer
//!   connections and dials. The members and the secret stay; peers that connect meanwhile are
//!   parked as before an `InitBranch`. The answer carries how many transfers this branch sent
//!   in the ending epoch.
//! - `RollbackCommit { epoch, balance }`: a new node in `epoch` holding `balance`, with fresh
//!   channels to every peer (positions and windows start over), then trading again.
//!
//! The rules:
//! - Only the controller holding the lease of a bank with a secret is obeyed (the caller checks
//!   the lease); in a bank without one the command is refused and logged.
//! - Epochs only go up: a prepare for an epoch not above the branch's own is refused; repeating
//!   the current prepare or commit answers again and changes nothing.
//! - A commit for an epoch not prepared here is refused, except on a durable branch back from
//!   its store in an epoch before (it crashed between the two phases): it runs phase one then.
//! - A durable branch persists the new epoch and its balance, and starts its store over, in
//!   one commit before it answers phase two; that commit waits for any commit of the dropped
//!   node still being written ([`BranchActor::commit`]).
//!
//! That no frame of an older epoch is applied in a newer one is the node's rule: `Resume`
//! carries the epoch and a connection of another epoch is refused
//! ([`crate::core::node`]).

use actix::prelude::*;
use log::{info, warn};

use super::{BranchActor, ConnId};
use crate::core::node::BranchNode;
use crate::store::BankMeta;
use crate::wire::{self, Body, pb};

/// Which phase an answer is for.
const PREPARED: u32 = 1;
const COMMITTED: u32 = 2;

impl BranchActor {
    /// `RollbackPrepare { epoch }` from controller connection `conn`.
    pub(super) fn rollback_prepare(&mut self, conn: ConnId, epoch: u64, ctx: &mut Context<Self>) {
        if let Err(reason) = self.may_roll_back() {
            return self.refuse_rollback(conn, "RollbackPrepare", &reason);
        }
        if self.prepared == Some(epoch) {
            return self.answer_rollback(conn, epoch, PREPARED, 0);
        }
        if epoch <= self.epoch || self.prepared.is_some_and(|prepared| epoch < prepared) {
            let reason = format!(
                "epoch {epoch} is not above this branch's epoch {}",
                self.prepared.unwrap_or(self.epoch)
            );
            return self.refuse_rollback(conn, "RollbackPrepare", &reason);
        }
        let sent = self.drop_bank(ctx);
        self.prepared = Some(epoch);
        info!(
            "{}: rollback to epoch {epoch}, phase one: stopped trading and dropped the state of epoch {} ({sent} transfer(s) sent in it)",
            self.name, self.epoch
        );
        self.answer_rollback(conn, epoch, PREPARED, sent);
    }

    /// `RollbackCommit { epoch, balance }` from controller connection `conn`.
    pub(super) fn rollback_commit(
        &mut self,
        conn: ConnId,
        epoch: u64,
        balance: u64,
        ctx: &mut Context<Self>,
    ) {
        if let Err(reason) = self.may_roll_back() {
            return self.refuse_rollback(conn, "RollbackCommit", &reason);
        }
        if self.prepared.is_none() && self.epoch == epoch && self.bank.is_some() {
            return self.answer_committed(conn, epoch);
        }
        if self.store.is_some() {
            crate::failpoint::hit("rollback-commit");
        }
        if self.prepared.is_none() && epoch > self.epoch && self.store.is_some() {
            // A durable branch that restarted from its store between the two phases is back in
            // the epoch before: phase one again, here.
            let sent = self.drop_bank(ctx);
            self.prepared = Some(epoch);
            info!(
                "{}: rollback to epoch {epoch}: back from its store in epoch {}, so phase one again: dropped its state ({sent} transfer(s) sent in it)",
                self.name, self.epoch
            );
        }
        if self.prepared != Some(epoch) {
            let reason = format!("epoch {epoch} was not prepared here");
            return self.refuse_rollback(conn, "RollbackCommit", &reason);
        }
        let Some((members, authenticated)) = self.members.clone() else {
            return self.refuse_rollback(conn, "RollbackCommit", "this branch has no bank");
        };
        let unwritten = match (&self.store, &self.secret) {
            (None, _) => None,
            (Some(_), Some(secret)) => Some(BankMeta {
                name: self.name.to_string(),
                members: members.clone(),
                secret: secret.clone(),
                incarnation: self.incarnation,
                epoch,
            }),
            (Some(_), None) => {
                return self.refuse_rollback(conn, "RollbackCommit", "this branch has no secret");
            }
        };
        self.epoch = epoch;
        let bank = match self.bank_of(members, authenticated, |config| {
            Ok(BranchNode::new(config, balance))
        }) {
            Ok(bank) => bank,
            Err(reason) => return self.refuse_rollback(conn, "RollbackCommit", &reason),
        };
        self.prepared = None;
        self.regressed = None;
        // A durable branch's first commit in the new epoch carries the epoch and the balance
        // and starts its store over; the commit is acknowledged once that is durable.
        self.unwritten_bank = unwritten;
        self.bank = Some(bank);
        info!(
            "{}: rollback to epoch {epoch}, phase two: trading again with balance {balance}",
            self.name
        );
        for parked in std::mem::take(&mut self.parked) {
            self.admit_peer(parked, ctx);
        }
        self.traffic.set_initial_balance(balance);
        self.carry_out(ctx);
        // A paced generator's next turn is already scheduled; a flat-out one parked when the
        // bank went away.
        if self.traffic.flat_out() {
            self.generate(ctx);
        }
        self.answer_committed(conn, epoch);
    }

    /// Answers phase two of the rollback to `epoch` on `conn`: at once in memory, and for a
    /// durable branch once the bank of that epoch is in its store.
    pub(super) fn answer_committed(&mut self, conn: ConnId, epoch: u64) {
        if self.unwritten_bank.is_some() {
            self.awaiting_durable_bank.push((conn, epoch));
            return;
        }
        self.answer_rollback(conn, epoch, COMMITTED, 0);
    }

    /// Why this branch cannot take part in a rollback, if it cannot.
    fn may_roll_back(&self) -> Result<(), String> {
        if !self.lease_applies() {
            return Err(
                "this bank has no secret, so no controller can prove it may roll it back"
                    .to_string(),
            );
        }
        if self.members.is_none() {
            return Err("this branch has no bank".to_string());
        }
        Ok(())
    }

    /// Drops the bank of the ending epoch, returning how many transfers it had sent.
    pub(super) fn drop_bank(&mut self, ctx: &mut Context<Self>) -> u64 {
        // A commit still being written for the node dropped here must not reach the next.
        self.generation += 1;
        self.queued_commit = None;
        self.unwritten_bank = None;
        self.awaiting_durable_bank.clear();
        for (_, handle) in self.dials.drain() {
            ctx.cancel_future(handle);
        }
        for (_, handle) in self.timers.drain() {
            ctx.cancel_future(handle);
        }
        let Some(bank) = self.bank.take() else {
            return 0;
        };
        for recorder in bank.recorders.values() {
            recorder.do_send(crate::branch::recorder::Retire);
        }
        for link in bank.peers.iter().filter_map(|peer| peer.link.as_ref()) {
            link.outbox.close();
        }
        bank.node
            .core()
            .state()
            .sent
            .iter()
            .map(|channel| channel.count)
            .sum()
    }

    fn answer_rollback(&self, conn: ConnId, epoch: u64, phase: u32, transfers_sent: u64) {
        if let Some(link) = self.controllers.get(&conn) {
            link.outbox.push(Body::RollbackAnswer(pb::RollbackAnswer {
                epoch,
                phase,
                transfers_sent,
            }));
        }
    }

    fn refuse_rollback(&self, conn: ConnId, what: &str, reason: &str) {
        warn!("{}: {what} refused: {reason}", self.name);
        if let Some(link) = self.controllers.get(&conn) {
            link.outbox.push(wire::refusal(format!(
                "{} refused {what}: {reason}",
                self.name
            )));
        }
    }
}
