//! The controller's commands to [`BranchActor`]: `InitBranch` (which creates the bank),
//! `InitSnapshot`, and `RetrieveSnapshot`, whose answers go out the moment they are ready, each
//! naming its snapshot, so a controller matches them by id rather than by order.
//!
//! A finished record handed to a controller is kept for a while ([`AnsweredRecords`]): a
//! controller whose connection dropped before the answer reached it asks again after
//! reconnecting, and gets the same record.
//!
//! An original-schema controller neither asks to wait (`wait_ms` is absent, 0) nor reads a
//! record's status, so in a bank without a secret (the only kind such a controller can
//! initialise) a `RetrieveSnapshot` with `wait_ms` 0 is held until the record is finished, for a
//! snapshot not seen yet too, at most [`ORIGINAL_SCHEMA_WAIT`] (and at most
//! `MAX_HELD_WITHOUT_WAIT` such requests per connection); an answer that is still not final then
//! is logged as a warning. In a bank with a secret, `wait_ms` 0 answers at once.
//!
//! [`AnsweredRecords`]: crate::branch::responses::AnsweredRecords

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use log::{debug, info, warn};
use tokio::sync::oneshot;

use super::{Bank, BranchActor, ConnId, EarlyWaiter, Peer};
use crate::auth::Secret;
use crate::branch::recorder;
use crate::config::BranchEntry;
use crate::core::{BranchCore, Channel, ReceiveCursor, SendWindow, SnapshotId};
use crate::wire::{self, Body, ControllerCmd, InitBank, pb};

/// Upper bound on how long a `RetrieveSnapshot` may be held waiting for its record.
pub const MAX_RETRIEVE_WAIT: Duration = Duration::from_secs(60);

/// How long a `RetrieveSnapshot` without `wait_ms`, in a bank without a secret, is held for
/// its record to finish: an original-schema controller would print a partial record as final.
/// Far longer than a healthy snapshot takes; shorter than such controllers' own patience.
pub const ORIGINAL_SCHEMA_WAIT: Duration = Duration::from_secs(5);

/// Most requests without `wait_ms` held at once on one controller connection (see
/// [`ORIGINAL_SCHEMA_WAIT`]); beyond it they are answered at once. As many as snapbank's own
/// controller keeps snapshots in progress, far more than an original-schema controller does.
const MAX_HELD_WITHOUT_WAIT: usize = 256;

/// Upper bound on requests waiting for a snapshot this branch has not begun yet.
const MAX_EARLY_WAITERS: usize = 4096;

/// A controller connection with this many bytes of answers written by the branch but not read
/// by the controller is not reading them: it is closed rather than allowed to pin memory.
/// (Answers merely held, waiting for their record to finish, are bounded by the record cap.)
const MAX_ANSWER_BACKLOG: usize = 4 << 20;

/// Most requests one controller connection may have held at once (waiting for a record, or for
/// a recorder's reply). A real controller holds one per snapshot in progress; beyond this a
/// request is answered at once with the record's current state, so a flood of requests costs
/// no memory.
const MAX_HELD_ANSWERS: usize = 8192;

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
            ControllerCmd::InitSnapshot { id: snapshot_id } => {
                let Some(bank) = self.bank.as_mut() else {
                    warn!(
                        "{}: InitSnapshot {snapshot_id} before InitBranch; ignored",
                        self.name
                    );
                    return;
                };
                match bank.core.start_snapshot(snapshot_id, &mut self.effects) {
                    Ok(()) => {
                        debug!("{}: starting snapshot {snapshot_id}", self.name);
                        self.apply_effects(ctx);
                    }
                    Err(err) => warn!("{}: InitSnapshot refused: {err}", self.name),
                }
            }
            ControllerCmd::RetrieveSnapshot { id, wait_ms } => {
                self.retrieve(conn, id, wait_ms, ctx)
            }
            ControllerCmd::Unexpected(kind) => warn!(
                "{}: the controller connection sent {kind}; only InitBranch, InitSnapshot and RetrieveSnapshot are accepted there; ignored",
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
        if self.bank.is_some() {
            return Err("this branch is already initialised".to_string());
        }
        let members = init.members.map_err(|err| err.to_string())?;
        wire::check_listed(&self.name, &members).map_err(|err| err.to_string())?;
        self.check_own_entry(&members)?;
        if let Some(store) = &self.store {
            self.durable = Some(super::durability::Durable::new(
                store.handle(),
                members.len().saturating_sub(1),
            ));
            let meta = super::durability::meta(&self.name, &members, &secret, self.incarnation);
            self.stage_meta(&meta);
        }
        let balance = init.balance;
        let window = self.settings.send_window;
        let peers: Vec<Peer> = members
            .into_iter()
            .filter(|member| *member.name != *self.name)
            .map(|entry| {
                Peer::new(
                    &self.name,
                    entry,
                    SendWindow::new(window),
                    ReceiveCursor::default(),
                    None,
                )
            })
            .collect();
        info!(
            "{}: initialised with balance {balance} and {} peers",
            self.name,
            peers.len()
        );
        let authenticated = !secret.is_empty();
        self.secret = Some(secret);
        self.bank = Some(Bank {
            authenticated,
            core: BranchCore::new(balance, peers.len()),
            peer_names: peers.iter().map(|peer| peer.name.clone()).collect(),
            by_name: peers
                .iter()
                .enumerate()
                .map(|(channel, peer)| (peer.name.clone(), channel))
                .collect(),
            peers,
            recorders: HashMap::new(),
        });
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
        let to_dial: Vec<Channel> = self
            .bank
            .iter()
            .flat_map(|bank| bank.peers.iter().enumerate())
            .filter(|(_, peer)| peer.we_dial)
            .map(|(channel, _)| channel)
            .collect();
        for channel in to_dial {
            self.dial(channel, ctx);
        }
        self.traffic.set_initial_balance(initial_balance);
        // Even with nothing to send yet: a generator without money parks until a deposit.
        self.generate(ctx);
        self.commit_if_needed(ctx);
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

    fn retrieve(&mut self, conn: ConnId, id: SnapshotId, wait_ms: u32, ctx: &mut Context<Self>) {
        // A record still recording answers with what it holds so far: hand it everything first.
        self.flush_observed();
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
        let overloaded = link.held >= MAX_HELD_ANSWERS;
        // Only an original-schema controller can have initialised a bank without a secret, and
        // it cannot tell a partial record from a final one. Such a controller retrieves a
        // snapshot or two at a time: a connection with many held already is flooding, and is
        // answered at once, as a held request costs the branch a timer and a future.
        let without_wait =
            wait_ms == 0 && self.bank.as_ref().is_some_and(|bank| !bank.authenticated);
        let cannot_tell = without_wait && link.held < MAX_HELD_WITHOUT_WAIT;
        if without_wait && !cannot_tell {
            debug!(
                "{}: {MAX_HELD_WITHOUT_WAIT} requests without wait_ms already held on a controller connection; answering snapshot {id} at once",
                self.name
            );
        }
        let wait = if cannot_tell {
            ORIGINAL_SCHEMA_WAIT
        } else {
            Duration::from_millis(u64::from(wait_ms)).min(MAX_RETRIEVE_WAIT)
        };
        let recorder = self.bank.as_ref().and_then(|bank| bank.recorders.get(&id));
        let known = self.bank.as_ref().is_some_and(|bank| bank.core.knows(id));
        let early_count: usize = self.early_waiters.values().map(Vec::len).sum();
        if overloaded {
            warn!(
                "{}: the controller connection has {MAX_HELD_ANSWERS} requests held; answering snapshot {id} at once",
                self.name
            );
            let status = if recorder.is_some() {
                pb::SnapshotStatus::Recording
            } else {
                pb::SnapshotStatus::UnknownSnapshot
            };
            let answer = if recorder.is_some() {
                wire::no_record(id, status, &self.name)
            } else {
                self.no_record(id)
            };
            self.send_answer_to(conn, answer, cannot_tell);
            return;
        }
        if recorder.is_none() && (known || wait.is_zero() || early_count >= MAX_EARLY_WAITERS) {
            // Already retrieved or discarded, or never seen and the controller will not wait:
            // answered at once, so a flood of such requests holds nothing.
            let answer = self.no_record(id);
            self.send_answer_to(conn, answer, cannot_tell);
            return;
        }
        let (reply, answer) = oneshot::channel();
        link.held += 1;
        if let Some(recorder) = recorder {
            recorder.do_send(recorder::Retrieve { wait, reply });
        } else {
            let timer = ctx.run_later(wait, move |branch, _ctx| branch.expire_early_waiters(id));
            self.early_waiters.entry(id).or_default().push(EarlyWaiter {
                deadline: Instant::now() + wait,
                reply,
                timer,
            });
        }
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(answer).map(move |answer, branch, _ctx| {
                // A recorder that retired before reading the request dropped it: the record was
                // already handed over (and is kept for a while) or discarded.
                let answer = answer.unwrap_or_else(|_| branch.no_record(id));
                if let Some(link) = branch.controllers.get_mut(&conn) {
                    link.held -= 1;
                }
                // Sending (now, or after a commit) closes a half-closed connection once nothing
                // more is owed on it.
                branch.send_answer_to(conn, answer, cannot_tell);
            }),
        );
    }

    /// [`Self::send_answer`], first warning when the answer is not a finished record and goes
    /// to a controller that `cannot_tell` (it will print it as final).
    fn send_answer_to(
        &mut self,
        conn: ConnId,
        answer: pb::return_snapshot::LocalSnapshot,
        cannot_tell: bool,
    ) {
        if cannot_tell && answer.status != pb::SnapshotStatus::Complete as i32 {
            let status = pb::SnapshotStatus::try_from(answer.status)
                .map_or("an unknown status", |status| status.as_str_name());
            warn!(
                "{}: snapshot {}: answering a RetrieveSnapshot without wait_ms (an original-schema controller) with a record that is not final ({status}) after waiting at most {} s; that controller cannot tell and will print it as if it were",
                self.name,
                answer.snapshot_id,
                ORIGINAL_SCHEMA_WAIT.as_secs()
            );
        }
        self.send_answer(conn, answer);
    }

    /// The answer for snapshot `id` when no recorder holds it: the copy kept after an earlier
    /// retrieval, or why there is none.
    fn no_record(&self, id: SnapshotId) -> pb::return_snapshot::LocalSnapshot {
        if let Some(kept) = self.answered.get(id) {
            return kept.clone();
        }
        let status = if self.discarded.contains(id) {
            pb::SnapshotStatus::Discarded
        } else if self.answered.was_retrieved(id) {
            pb::SnapshotStatus::AlreadyRetrieved
        } else {
            pb::SnapshotStatus::UnknownSnapshot
        };
        wire::no_record(id, status, &self.name)
    }

    fn expire_early_waiters(&mut self, id: SnapshotId) {
        let Some(waiters) = self.early_waiters.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        let (expired, kept): (Vec<_>, Vec<_>) =
            waiters.drain(..).partition(|waiter| waiter.deadline <= now);
        *waiters = kept;
        if waiters.is_empty() {
            self.early_waiters.remove(&id);
        }
        for waiter in expired {
            let _ = waiter.reply.send(self.no_record(id));
        }
    }

    /// Sends an answer on controller connection `conn` once what it reports is durable (at
    /// once without a store).
    fn send_answer(&mut self, conn: ConnId, answer: pb::return_snapshot::LocalSnapshot) {
        if let Some(answer) = self.answer_when_durable(conn, answer) {
            self.send_answer_now(conn, answer);
        }
    }

    /// Sends an answer on controller connection `conn` (if it is still open), keeping a copy of
    /// a finished record for a controller that asks again.
    pub(super) fn send_answer_now(
        &mut self,
        conn: ConnId,
        answer: pb::return_snapshot::LocalSnapshot,
    ) {
        let finished = [
            pb::SnapshotStatus::Complete as i32,
            pb::SnapshotStatus::CutShort as i32,
        ];
        if finished.contains(&answer.status) {
            self.answered.keep(&answer);
        }
        let Some(link) = self.controllers.get_mut(&conn) else {
            return;
        };
        link.outbox.push(Body::ReturnSnapshot(pb::ReturnSnapshot {
            local_snapshot: Some(answer),
        }));
        self.close_if_nothing_owed(conn);
    }

    /// Closes controller connection `conn` (once what is queued is written) if the controller
    /// has closed its half and no answer is owed on it any more: none held waiting for its
    /// record, none waiting for a commit.
    pub(super) fn close_if_nothing_owed(&mut self, conn: ConnId) {
        let Some(link) = self.controllers.get(&conn) else {
            return;
        };
        let waiting_for_commit = self
            .durable
            .as_ref()
            .is_some_and(|durable| durable.owes_answer_on(conn));
        if link.done_asking && link.held == 0 && !waiting_for_commit {
            link.outbox.close();
        }
    }
}
