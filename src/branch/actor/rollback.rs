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
//! - A commit for an epoch not prepared here is refused.
//! - A durable branch refuses both: rolling back its store is not supported.
//!
//! That no frame of an older epoch is applied in a newer one is the node's rule: `Resume`
//! carries the epoch and a connection of another epoch is refused
//! ([`crate::core::node`]).

use actix::prelude::*;
use log::{info, warn};

use super::{BranchActor, ConnId};
use crate::core::node::BranchNode;
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
            return self.answer_rollback(conn, epoch, COMMITTED, 0);
        }
        if self.prepared != Some(epoch) {
            let reason = format!("epoch {epoch} was not prepared here");
            return self.refuse_rollback(conn, "RollbackCommit", &reason);
        }
        let Some((members, authenticated)) = self.members.clone() else {
            return self.refuse_rollback(conn, "RollbackCommit", "this branch has no bank");
        };
        self.epoch = epoch;
        let bank = match self.bank_of(members, authenticated, |config| {
            Ok(BranchNode::new(config, balance))
        }) {
            Ok(bank) => bank,
            Err(reason) => return self.refuse_rollback(conn, "RollbackCommit", &reason),
        };
        self.prepared = None;
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
        if self.store.is_some() {
            return Err("rolling back a durable branch (--data-dir) is not supported".to_string());
        }
        if self.members.is_none() {
            return Err("this branch has no bank".to_string());
        }
        Ok(())
    }

    /// Drops the bank of the ending epoch, returning how many transfers it had sent.
    fn drop_bank(&mut self, ctx: &mut Context<Self>) -> u64 {
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
