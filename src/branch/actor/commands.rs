//! The controller's commands to [`BranchActor`]: `InitBranch` (which creates the bank's
//! [`BranchNode`]), `InitSnapshot` and `RetrieveSnapshot` (fed to the node), and the way answers
//! go back: each answer names its snapshot, so a controller matches them by id rather than by
//! order. When a retrieve is answered, and with what, is the node's decision
//! ([`crate::core::node`]); the runtime only refuses a controller connection that does not read
//! its answers.

use std::collections::HashMap;
use std::rc::Rc;

use actix::prelude::*;
use log::{debug, info, warn};

use super::{Bank, BranchActor, ConnId, PeerIo};
use crate::auth::Secret;
use crate::config::BranchEntry;
use crate::core::node::{BranchNode, Command, Input, NodeConfig};
use crate::wire::{self, ControllerCmd, InitBank};

/// A controller connection with this many bytes of answers written by the branch but not read
/// by the controller is not reading them: it is closed rather than allowed to pin memory.
/// (Answers merely held, waiting for their record to finish, are bounded by the node.)
const MAX_ANSWER_BACKLOG: usize = 4 << 20;

impl BranchActor {
    pub(super) fn on_controller_frame(
        &mut self,
        conn: ConnId,
        cmd: ControllerCmd,
        ctx: &mut Context<Self>,
    ) {
        if self.lease_applies() && !self.lease.holds(conn) {
            // A controller deposed by --take-over, or whose lease lapsed, may still be sending:
            // its ids would collide with the holder's.
            debug!(
                "{}: {} from a controller connection that does not hold the controller lease; ignored",
                self.name,
                cmd.kind()
            );
            return;
        }
        match cmd {
            ControllerCmd::InitBranch(init) => {
                // Only reachable on an attached (authenticated) controller connection to a
                // branch that has a --secret-file and no bank yet.
                let result = self
                    .secret_for(&init, true)
                    .and_then(|secret| self.init(init, secret, ctx));
                if let Err(reason) = result {
                    warn!("{}: InitBranch refused: {reason}", self.name);
                    if let Some(link) = self.controllers.get(&conn) {
                        link.outbox.push(wire::refusal(format!(
                            "{} refused InitBranch: {reason}",
                            self.name
                        )));
                    }
                }
            }
            ControllerCmd::InitSnapshot { id } => {
                if self.bank.is_none() {
                    warn!(
                        "{}: InitSnapshot {id} before InitBranch; ignored",
                        self.name
                    );
                    return;
                }
                if let Some(card) = self.grading.as_mut() {
                    card.grade.init_snapshot(id);
                }
                self.step(
                    Input::Command {
                        conn,
                        cmd: Command::StartSnapshot { id },
                    },
                    ctx,
                );
            }
            ControllerCmd::RetrieveSnapshot { id, wait_ms } => {
                self.retrieve(conn, id, wait_ms, ctx)
            }
            ControllerCmd::RollbackPrepare { epoch } => self.rollback_prepare(conn, epoch, ctx),
            ControllerCmd::RollbackCommit { epoch, balance } => {
                self.rollback_commit(conn, epoch, balance, ctx)
            }
            ControllerCmd::Unexpected(kind) => warn!(
                "{}: the controller connection sent {kind}; only InitBranch, InitSnapshot, RetrieveSnapshot and the rollback commands are accepted there; ignored",
                self.name,
            ),
        }
    }

    /// Initialises the bank from `InitBranch` with its `secret`: peers, ledger, dialling,
    /// parked peers, the transfer generator. Refuses (changing nothing) a second one or a bad
    /// member list.
    pub(super) fn init(
        &mut self,
        init: InitBank,
        secret: Secret,
        ctx: &mut Context<Self>,
    ) -> Result<(), String> {
        if let Some(card) = self.grading.as_mut() {
            match &init.members {
                Ok(members) => card.grade.init_branch(
                    init.balance,
                    members
                        .iter()
                        .map(|member| member.name.to_string())
                        .collect(),
                ),
                Err(err) => card
                    .grade
                    .init_branch_unusable(init.balance, err.to_string()),
            }
            card.write();
        }
        if self.bank.is_some() {
            return Err("this branch is already initialised".to_string());
        }
        if let Some(epoch) = self.prepared {
            return Err(format!(
                "this branch is in a rollback to epoch {epoch}: only its controller's RollbackCommit ends it"
            ));
        }
        let members = init.members.map_err(|err| err.to_string())?;
        wire::check_listed(&self.name, &members).map_err(|err| err.to_string())?;
        self.check_own_entry(&members)?;
        if self.store.is_some() {
            self.unwritten_bank = Some(crate::store::BankMeta {
                name: self.name.to_string(),
                members: members.clone(),
                secret: secret.clone(),
                incarnation: self.incarnation,
                epoch: init.epoch,
            });
        }
        let balance = init.balance;
        let authenticated = !secret.is_empty();
        self.epoch = init.epoch;
        self.members = Some((members.clone(), authenticated));
        let bank = self.bank_of(members, authenticated, |config| {
            Ok(BranchNode::new(config, balance))
        })?;
        info!(
            "{}: initialised with balance {balance} and {} peers{}",
            self.name,
            bank.peers.len(),
            if init.epoch > 0 {
                format!(" in bank epoch {}", init.epoch)
            } else {
                String::new()
            }
        );
        self.secret = Some(secret);
        self.bank = Some(bank);
        // A branch that waited for a rollback after its store lost a commit starts over here.
        self.regressed = None;
        self.after_bank_created(balance, ctx);
        Ok(())
    }

    /// What follows the bank's creation (from `InitBranch`, or restored from the store): the
    /// peers that connected early are admitted, the peers this branch dials are dialled, and
    /// the transfer generator starts.
    pub(super) fn after_bank_created(&mut self, initial_balance: u64, ctx: &mut Context<Self>) {
        for parked in std::mem::take(&mut self.parked) {
            self.admit_peer(parked, ctx);
        }
        self.traffic.set_initial_balance(initial_balance);
        // The node's first Ready: the peers to dial, the first commit.
        self.carry_out(ctx);
        // Even with nothing to send yet: a generator without money parks until a deposit.
        self.generate(ctx);
    }

    /// The bank of `members` around the node `make` builds from its settings: the runtime's
    /// view of each peer (where it is, the connection to it) beside the node's.
    pub(super) fn bank_of(
        &self,
        members: Vec<BranchEntry>,
        authenticated: bool,
        make: impl FnOnce(NodeConfig) -> Result<BranchNode, String>,
    ) -> Result<Bank, String> {
        let peers: Vec<PeerIo> = members
            .into_iter()
            .filter(|member| *member.name != *self.name)
            .map(|entry| PeerIo {
                name: entry.name,
                addr: entry.addr,
                link: None,
                redial: super::admission::redial_backoff(),
            })
            .collect();
        let config = NodeConfig {
            name: self.name.to_string(),
            peers: peers.iter().map(|peer| peer.name.clone()).collect(),
            send_window: self.settings.send_window,
            authenticated,
            durable: self.store.is_some(),
            incarnation: self.incarnation,
            epoch: self.epoch,
            peer_grace: self.settings.peer_grace,
            directions: Vec::new(),
            #[cfg(test)]
            mutation: Default::default(),
        };
        let node = make(config)?;
        let peer_names: Rc<[String]> = peers.iter().map(|peer| peer.name.clone()).collect();
        Ok(Bank {
            node,
            by_name: peers
                .iter()
                .enumerate()
                .map(|(channel, peer)| (peer.name.clone(), channel))
                .collect(),
            peer_names,
            peers,
            recorders: HashMap::new(),
            authenticated,
        })
    }

    /// Checks this branch's own entry in `InitBranch` against what it knows of itself: the
    /// port it listens on. A branches file with names and ports swapped would otherwise give
    /// this branch another branch's place, and the controller would blame the wrong branch.
    pub(super) fn check_own_entry(&self, members: &[BranchEntry]) -> Result<(), String> {
        let Some(own) = members.iter().find(|member| *member.name == *self.name) else {
            return Err(format!("InitBranch does not list {}", self.name));
        };
        if own.addr.port() == self.port {
            return Ok(());
        }
        let holder = members
            .iter()
            .find(|member| member.addr.port() == self.port)
            .map(|member| format!(" (the port of {} in the list)", member.name))
            .unwrap_or_default();
        Err(format!(
            "InitBranch puts {} at port {}, but this branch is {} listening on port {}{holder}: are names and ports swapped in the branches file?",
            own.name,
            own.addr.port(),
            self.name,
            self.port
        ))
    }

    /// A `RetrieveSnapshot` on controller connection `conn`: refused (the connection closed) if
    /// the controller is not reading its answers, else the node's to answer.
    fn retrieve(&mut self, conn: ConnId, id: u32, wait_ms: u32, ctx: &mut Context<Self>) {
        if let Some(card) = self.grading.as_mut() {
            card.grade.retrieve(id, std::time::Instant::now());
            card.write();
        }
        let Some(link) = self.controllers.get_mut(&conn) else {
            return;
        };
        if link.outbox.backlog() >= MAX_ANSWER_BACKLOG {
            warn!(
                "{}: the controller connection is not reading its answers ({} bytes unsent); closing it",
                self.name,
                link.outbox.backlog()
            );
            link.outbox.mark_dead();
            self.controllers.remove(&conn);
            return;
        }
        if self.bank.is_none() {
            // No node yet: nothing was ever recorded here.
            let answer = wire::no_record(id, wire::pb::SnapshotStatus::UnknownSnapshot, &self.name);
            link.outbox
                .push(wire::Body::ReturnSnapshot(wire::pb::ReturnSnapshot {
                    local_snapshot: Some(answer),
                }));
            self.close_if_nothing_owed(conn);
            return;
        }
        self.step(
            Input::Command {
                conn,
                cmd: Command::Retrieve { id, wait_ms },
            },
            ctx,
        );
    }

    /// Closes controller connection `conn` (once what is queued is written) if the controller
    /// has closed its half and no answer is owed on it any more: none held waiting for its
    /// record, none waiting for a commit.
    pub(super) fn close_if_nothing_owed(&mut self, conn: ConnId) {
        let Some(link) = self.controllers.get(&conn) else {
            return;
        };
        let owed = self
            .bank
            .as_ref()
            .is_some_and(|bank| bank.node.owes_answer_on(conn));
        if link.done_asking && !owed {
            link.outbox.close();
        }
    }
}
