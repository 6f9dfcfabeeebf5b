//! [`ControllerActor`]: one persistent connection per branch; `InitBranch`, then a snapshot
//! every interval; records collected as each branch finishes; reports emitted in id order.
//!
//! The decisions (ids, initiators, deadlines, answers, reports) are the `collector`'s;
//! the links, timers and schedule are the `carrier`'s, shared with the compat driver.
//! What is this actor's own: `InitBranch`, `wait_ms` on every `RetrieveSnapshot`, heartbeats,
//! the controller handshake on every reconnection, and the controller lease. Answers name their
//! snapshot, so each `ReturnSnapshot` is matched by id, never by order.
//!
//! Links heal: a connection that fails (reset, end of stream, write error, or silence past the
//! link timeout, probed by heartbeats first) is redialled with capped exponential backoff and
//! jitter and re-authenticated with the bank's secret (the controller handshake `--attach`
//! uses); then the requests still unanswered on it are sent again. Branches keep records until
//! they are retrieved (and a copy for a while after), so a blip costs no snapshot: only a branch
//! that stays away past a snapshot's retrieve timeout makes that snapshot incomplete.
//!
//! The controller lease: in a bank with a secret each branch obeys one controller connection
//! at a time. A reconnection claims it under this run's id, so it gets the lease back; a
//! branch that answers a reconnection with "held by another controller", or tells a connected
//! one that another took it over (`--take-over`), ends the run with that reason.
//!
//! Stopping early ([`ControllerConfig::stop`], on Ctrl-C or SIGTERM): the finished reports are
//! handed out and the summary lists the snapshots still in flight.
//!
//! Scheduling skips ticks missed while the controller was stalled (suspended, or starved)
//! instead of firing them all at once, and keeps at most [`MAX_IN_FLIGHT`] snapshots in
//! progress, so neither the branches' record caps nor the controller's memory can be exceeded.

use std::time::{Duration, Instant};

use actix::prelude::*;
use log::{info, warn};
use tokio::sync::oneshot;

use super::carrier::{Carrier, LinkEvent, Run};
use super::checkpoint::Checkpoint;
use super::collector::{Answer, RETRY_PAUSE};
use super::rollback::{Owed, Phase, Rollback, RollbackDone};
use super::{BranchLoss, ControllerConfig, ControllerError, RunSummary, SnapshotReport};
use crate::auth::Secret;
use crate::backoff::Backoff;
use crate::dial::{Dialer, Failed, Step};
use crate::handshake::{self, Authenticated, HandshakeError};
use crate::wire::{self, Body, pb};

pub use super::collector::MAX_IN_FLIGHT;

/// First pause between two redials of a lost branch; doubles up to [`MAX_REDIAL_DELAY`].
const FIRST_REDIAL_DELAY: Duration = Duration::from_millis(10);
const MAX_REDIAL_DELAY: Duration = Duration::from_secs(1);

/// The actor that runs a bank's snapshots.
pub struct ControllerActor {
    run: Run,
    /// The cluster secret: handed to the branches in `InitBranch`, and proven on every
    /// reconnect.
    secret: Secret,
    /// This run's id towards the branches' controller leases (never 0), sent in `InitBranch`
    /// and in every reconnection's handshake, so a reconnection keeps the lease.
    controller_id: u64,
    /// The bank epoch the branches trade in.
    epoch: u64,
    /// The rollback under way, if any.
    rollback: Option<Rollback>,
    /// Per branch: the rollback's `InitBranch` went out on the current link (it is sent once:
    /// a second one would be refused).
    init_sent: Vec<bool>,
    /// The latest ok snapshot: what a rollback goes back to.
    latest_ok: Option<LatestOk>,
}

/// What a rollback needs of the latest ok snapshot.
struct LatestOk {
    id: u32,
    /// The epoch it was taken in.
    epoch: u64,
    /// Each branch's balance restored from it (the money in transit to it credited).
    balances: Vec<u64>,
    /// Each branch's transfers sent at its cut (0 without counters).
    sent_at_cut: Vec<u64>,
}

/// How a redial ended.
enum Redialled {
    /// Connected and authenticated.
    Attached(Authenticated),
    /// The branch holds no bank: it came back empty.
    Empty,
    /// It came back empty, but with the secret (`--secret-file`): the connection is
    /// authenticated and can carry its `InitBranch`.
    EmptyAttached(Authenticated),
}

/// Who a run's controller is towards the branches, and where it starts.
pub(super) struct Identity {
    /// Its id towards the controller leases.
    pub(super) controller_id: u64,
    /// The first snapshot id it uses.
    pub(super) first_id: u32,
    /// The bank epoch the branches are in (0 for a new bank).
    pub(super) epoch: u64,
}

/// Starts the actor on connected (and, when attaching, authenticated) connections, one per
/// branch in file order, as `identity` says.
pub(super) fn start(
    config: ControllerConfig,
    streams: Vec<Authenticated>,
    secret: Secret,
    identity: Identity,
    on_report: Box<dyn FnMut(&SnapshotReport)>,
    done: oneshot::Sender<Result<RunSummary, ControllerError>>,
) -> Addr<ControllerActor> {
    let Identity {
        controller_id,
        first_id,
        epoch,
    } = identity;
    ControllerActor::create(move |ctx| {
        let branches = config.branches.len();
        let mut controller = ControllerActor {
            run: Run::new(config, first_id, true, on_report, done),
            secret,
            controller_id,
            epoch,
            rollback: None,
            init_sent: vec![false; branches],
            latest_ok: None,
        };
        // An attached controller's snapshots are of the epoch the branches said they are in.
        controller.run.collector.resume(epoch);
        for (index, stream) in streams.into_iter().enumerate() {
            controller.install(index, stream, ctx);
            let name = controller.run.name(index);
            controller.run.config.observe(|o| o.link_up(name)); // web view hook
        }
        controller
    })
}

impl ControllerActor {
    fn init_bank(&mut self) {
        let balances = self.run.config.initial_balances();
        for (link, balance) in self.run.links.iter().zip(balances) {
            if let Some(outbox) = &link.outbox {
                outbox.push(Body::InitBranch(self.init_branch(balance, 0)));
            }
        }
    }

    /// Sends `InitSnapshot(id)` to branch `index` if it is connected.
    fn init_snapshot(&self, index: usize, id: u32) {
        if let Some(outbox) = &self.run.links[index].outbox {
            outbox.push(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: id }));
        }
    }

    /// Sends `RetrieveSnapshot(id)` to branch `index` if it is connected, asking it to answer
    /// before the snapshot's deadline.
    fn request_record(&self, index: usize, id: u32) {
        let Some(wait_ms) = self.run.collector.wait_ms(id, Instant::now()) else {
            return;
        };
        if let Some(outbox) = &self.run.links[index].outbox {
            outbox.push(Body::RetrieveSnapshot(pb::RetrieveSnapshot {
                snapshot_id: id,
                wait_ms,
            }));
        }
    }

    /// Ends the run when a branch says this controller no longer holds its controller lease.
    fn on_lease(&mut self, index: usize, lease: pb::ControllerLease, ctx: &mut Context<Self>) {
        let name = self.run.name(index).to_string();
        let holder = lease.holder;
        if lease.outcome == pb::controller_lease::Outcome::TakenOver as i32 {
            self.fail(ControllerError::TakenOver { name, by: holder }, ctx);
        } else if lease.outcome == pb::controller_lease::Outcome::Lapsed as i32 {
            self.fail(ControllerError::LeaseLost { name, holder }, ctx);
        } else {
            warn!("branch {name} sent ControllerLease on the controller connection; ignored");
        }
    }

    /// Redials branch `index` and re-runs the controller handshake until both succeed, with
    /// capped exponential backoff and jitter.
    fn redial(&mut self, index: usize, ctx: &mut Context<Self>) {
        let branch = self.run.config.branches[index].clone();
        let secret = self.secret.clone();
        let max_frame = self.run.config.max_frame;
        let timeout = self.run.config.connect_timeout;
        // Never a take-over: a reconnection must not depose a controller that took over.
        let claim = handshake::ControllerClaim {
            controller: self.controller_id,
            take_over: false,
            rolls_back: self.run.config.on_branch_loss == BranchLoss::Rollback,
        };
        let dialer = Dialer::new(
            branch.addr,
            timeout,
            Backoff::new(FIRST_REDIAL_DELAY, MAX_REDIAL_DELAY),
        );
        let roll_back = self.run.config.on_branch_loss == BranchLoss::Rollback;
        let redialling = async move {
            let attach = |stream| {
                let (secret, name) = (&secret, &branch.name);
                async move {
                    handshake::attach_to_branch(stream, secret, name, claim, max_frame, timeout)
                        .await
                        .map(|attached| {
                            if attached.uninitialised && roll_back {
                                Redialled::EmptyAttached(attached.link)
                            } else {
                                Redialled::Attached(attached.link)
                            }
                        })
                        .or_else(|err| match err {
                            HandshakeError::Uninitialised(_) if roll_back => Ok(Redialled::Empty),
                            err => Err(err),
                        })
                        .map_err(|err| match err {
                            HandshakeError::LeaseHeld { holder, .. } => {
                                Step::Stop(ControllerError::LeaseLost {
                                    name: name.clone(),
                                    holder,
                                })
                            }
                            err @ HandshakeError::Refused(_) => {
                                Failed::answered(format!("handshake refused: {err}")).into()
                            }
                            err => Failed::answered(format!("handshake failed: {err}")).into(),
                        })
                }
            };
            dialer
                .forever(attach, super::carrier::warn_unreachable(&branch))
                .await
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(redialling).map(
            move |result, controller, ctx| match result {
                Ok(Redialled::Attached(authenticated)) => {
                    controller.reconnected(index, authenticated, ctx)
                }
                Ok(Redialled::Empty) => controller.came_back_empty(index, ctx),
                Ok(Redialled::EmptyAttached(link)) => {
                    if controller.relink(index, link, ctx).is_some() {
                        controller.came_back_empty(index, ctx);
                    }
                }
                Err(lost) => controller.fail(lost, ctx),
            },
        ));
    }

    /// Branch `index` is back: re-send what is still unanswered on it.
    fn reconnected(&mut self, index: usize, authenticated: Authenticated, ctx: &mut Context<Self>) {
        let Some(down_for) = self.relink(index, authenticated, ctx) else {
            return;
        };
        let name = self.run.name(index);
        self.run.config.observe(|o| o.link_up(name)); // web view hook
        let awaiting = self.run.collector.awaited_from(index);
        info!(
            "reconnected to branch {name} after {} ms; re-sending {} request(s)",
            down_for.as_millis(),
            awaiting.len()
        );
        // An InitSnapshot may have been lost with the connection: starting a snapshot twice is
        // refused by the branch, so sending it again is safe.
        for id in self.run.collector.initiated_by(index) {
            self.init_snapshot(index, id);
        }
        for id in awaiting {
            self.request_record(index, id);
        }
        self.init_sent[index] = false;
        if let Some(rollback) = self.rollback.as_mut() {
            // It holds a bank (it proved the secret with it): in phase two it is owed a commit,
            // not an InitBranch, even if it was initialised by this rollback.
            rollback.reachable(index);
            self.push_rollback(ctx);
        }
    }

    /// Branch `index` holds no bank: it restarted without its state. Rolls the bank back to
    /// the latest ok snapshot (or goes on with the rollback under way); without one, there is
    /// nothing to roll back to, and the branch is tried again later.
    fn came_back_empty(&mut self, index: usize, ctx: &mut Context<Self>) {
        let name = self.run.name(index).to_string();
        let now = Instant::now();
        self.init_sent[index] = false;
        if let Some(rollback) = self.rollback.as_mut() {
            if !rollback.came_back_empty(index) {
                // Phase one: it counts as prepared.
                return self.push_rollback(ctx);
            }
            let next = rollback.next(index, now);
            warn!(
                "branch {name} came back empty during the rollback to epoch {}: starting over in epoch {}",
                rollback.epoch, next.epoch
            );
            return self.begin_rollback(next, ctx);
        }
        let Some(latest) = &self.latest_ok else {
            warn!(
                "branch {name} came back empty (restarted without its state), and no snapshot has been ok yet: there is nothing to roll the bank back to; trying it again in {} ms",
                MAX_REDIAL_DELAY.as_millis()
            );
            ctx.run_later(MAX_REDIAL_DELAY, move |controller, ctx| {
                controller.redial(index, ctx)
            });
            return;
        };
        let epoch = self.epoch + 1;
        warn!(
            "branch {name} came back empty (restarted without its state): rolling the bank back to snapshot {} in epoch {epoch}",
            latest.id
        );
        let rollback = Rollback::new(epoch, latest.id, latest.balances.clone(), index, now);
        self.begin_rollback(rollback, ctx);
    }

    /// Makes `rollback` the one under way: the snapshots in flight are given up, none starts
    /// until it is over, and every branch is sent what it owes.
    fn begin_rollback(&mut self, rollback: Rollback, ctx: &mut Context<Self>) {
        self.run
            .collector
            .pause_for_rollback(rollback.epoch, Instant::now());
        self.rollback = Some(rollback);
        self.init_sent.fill(false);
        self.carry(ctx);
        self.push_rollback(ctx);
    }

    /// Sends every branch what the rollback owes it now, where its link allows.
    fn push_rollback(&mut self, ctx: &mut Context<Self>) {
        let Some(rollback) = &self.rollback else {
            return;
        };
        let owed: Vec<Owed> = (0..self.run.links.len())
            .map(|index| rollback.owed(index))
            .collect();
        for (index, owed) in owed.into_iter().enumerate() {
            let outbox = self.run.links[index].outbox.as_ref();
            match owed {
                Owed::Nothing => {}
                Owed::Prepare { epoch } => {
                    if let Some(outbox) = outbox {
                        outbox.push(Body::RollbackPrepare(pb::RollbackPrepare { epoch }));
                    }
                }
                Owed::Commit { epoch, balance } => {
                    if let Some(outbox) = outbox {
                        outbox.push(rollback_commit(epoch, balance));
                    }
                }
                Owed::Init { epoch, balance } if !self.init_sent[index] => {
                    self.init_sent[index] = true;
                    match outbox {
                        // Attached with the secret: the InitBranch goes on that connection.
                        Some(outbox) => {
                            outbox.push(Body::InitBranch(self.init_branch(balance, epoch)));
                            outbox.push(rollback_commit(epoch, balance));
                        }
                        None => self.init_empty(index, epoch, balance, ctx),
                    }
                }
                Owed::Init { .. } => {}
            }
        }
    }

    /// Initialises branch `index`, which came back empty, into `epoch` with `balance`: a new
    /// connection carrying `InitBranch` (which makes it the controller connection, holding the
    /// lease), then `RollbackCommit`, whose answer says it is done.
    fn init_empty(&mut self, index: usize, epoch: u64, balance: u64, ctx: &mut Context<Self>) {
        let branch = self.run.config.branches[index].clone();
        let max_frame = self.run.config.max_frame;
        let dialer = Dialer::new(
            branch.addr,
            self.run.config.connect_timeout,
            Backoff::new(FIRST_REDIAL_DELAY, MAX_REDIAL_DELAY),
        )
        .deadline(std::time::Instant::now() + self.run.config.connect_timeout);
        let init = Body::InitBranch(self.init_branch(balance, epoch));
        let connecting = async move { dialer.connect(|_| {}).await };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(connecting).map(
            move |result, controller, ctx| {
                let Ok(stream) = result else {
                    // Gone again: the redial says how it comes back.
                    controller.init_sent[index] = false;
                    controller.redial(index, ctx);
                    return;
                };
                let link = super::carrier::plain(stream, max_frame);
                if controller.relink(index, link, ctx).is_none() {
                    return;
                }
                if let Some(outbox) = &controller.run.links[index].outbox {
                    outbox.push(init);
                    outbox.push(rollback_commit(epoch, balance));
                }
                // A rollback that started over while this connection was being made owes it
                // its first phase now.
                controller.push_rollback(ctx);
            },
        ));
    }

    /// Branch `index` answered phase `phase` of the rollback to `epoch`.
    fn rollback_answered(
        &mut self,
        index: usize,
        answer: pb::RollbackAnswer,
        ctx: &mut Context<Self>,
    ) {
        let Some(rollback) = self.rollback.as_mut() else {
            return;
        };
        let phase = match answer.phase {
            1 => Phase::Prepare,
            2 => Phase::Commit,
            other => {
                warn!(
                    "branch {} answered phase {other} of a rollback, which has two; ignored",
                    self.run.name(index)
                );
                return;
            }
        };
        let before = rollback.phase();
        let over = rollback.answered(index, answer.epoch, phase, answer.transfers_sent);
        if !over {
            if rollback.phase() != before {
                info!(
                    "rollback to epoch {}: every branch stopped trading; phase two",
                    rollback.epoch
                );
                self.push_rollback(ctx);
            }
            return;
        }
        let Some(rollback) = self.rollback.take() else {
            return;
        };
        // Counts start over per epoch: a checkpoint of an earlier epoch was the state the
        // ending epoch began from, so everything sent in it is undone.
        let at_cut = match &self.latest_ok {
            Some(latest) if latest.id == rollback.checkpoint && latest.epoch == self.epoch => {
                Some(latest.sent_at_cut.clone())
            }
            Some(latest) if latest.id == rollback.checkpoint => Some(vec![0; self.run.links.len()]),
            _ => None,
        };
        let done = RollbackDone {
            epoch: rollback.epoch,
            checkpoint: rollback.checkpoint,
            lost: rollback
                .lost
                .iter()
                .map(|&i| self.run.name(i).to_string())
                .collect(),
            undone: at_cut.map(|at_cut| rollback.undone(&at_cut)),
            took: rollback.took(Instant::now()),
        };
        self.epoch = rollback.epoch;
        self.init_sent.fill(false);
        self.run.collector.summary.rollbacks += 1;
        self.run.collector.resume(self.epoch);
        info!("{done}");
        if let Some(sink) = &self.run.config.on_rollback {
            (sink.0)(&done);
        }
        self.run.config.observe(|o| o.rolled_back(&done)); // web view hook
        if self.run.config.interval.is_zero() {
            self.fill_pipeline(ctx);
        }
    }

    /// `InitBranch` for this bank, giving `balance` in `epoch`.
    fn init_branch(&self, balance: u64, epoch: u64) -> pb::InitBranch {
        let config = &self.run.config;
        // With a --secret-file the links are authenticated and the secret stays here.
        let secret = if config.secret.is_some() {
            Vec::new()
        } else {
            self.secret.as_bytes().to_vec()
        };
        pb::InitBranch {
            epoch,
            controller: self.controller_id,
            rolls_back: config.on_branch_loss == BranchLoss::Rollback,
            secret,
            balance: wire::to_wire_amount(balance),
            all_branches: wire::branch_list(&config.branches),
        }
    }

    /// Probes links that have been silent for a third of the link timeout; declares broken
    /// those silent for all of it.
    fn check_liveness(&mut self, ctx: &mut Context<Self>) {
        let timeout = self.run.config.link_timeout;
        for index in 0..self.run.links.len() {
            let link = &mut self.run.links[index];
            let Some(outbox) = &link.outbox else {
                continue;
            };
            let silent = link.last_read.elapsed();
            if silent >= timeout {
                let generation = link.generation();
                self.link_lost(
                    index,
                    generation,
                    format!("nothing received for {} ms", silent.as_millis()),
                    ctx,
                );
            } else if silent >= timeout / 3 && !link.probed {
                link.probed = true;
                outbox.push(Body::Heartbeat(pb::Heartbeat { reply: false }));
            }
        }
    }
}

impl Carrier for ControllerActor {
    fn run(&mut self) -> &mut Run {
        &mut self.run
    }

    /// Asks the initiator to start snapshot `id`, and every branch, connected or not, for its
    /// record: a branch that is down is asked when it is back, and the snapshot waits for it
    /// until its deadline.
    fn begin_snapshot(&mut self, id: u32, initiator: usize, ctx: &mut Context<Self>) {
        let name = self.run.name(initiator);
        self.run.config.observe(|o| o.snapshot_started(id, name)); // web view hook
        self.init_snapshot(initiator, id);
        self.open_retrieval(id, ctx);
        for index in 0..self.run.links.len() {
            self.request_record(index, id);
        }
    }

    fn on_body(&mut self, index: usize, body: Body, ctx: &mut Context<Self>) {
        let local = match body {
            Body::ReturnSnapshot(pb::ReturnSnapshot { local_snapshot }) => {
                local_snapshot.unwrap_or_default()
            }
            Body::Heartbeat(pb::Heartbeat { reply }) => {
                if !reply && let Some(outbox) = &self.run.links[index].outbox {
                    outbox.push(Body::Heartbeat(pb::Heartbeat { reply: true }));
                }
                return;
            }
            Body::ControllerLease(lease) => return self.on_lease(index, lease, ctx),
            Body::RollbackAnswer(answer) => return self.rollback_answered(index, answer, ctx),
            Body::Refusal(pb::Refusal { reason, .. }) => return self.refused(index, reason, ctx),
            other => return self.ignore(index, &other),
        };
        let id = local.snapshot_id;
        match self.file_answer(index, local) {
            Answer::Ignored => {}
            Answer::AskAgain => {
                ctx.run_later(RETRY_PAUSE, move |controller, _ctx| {
                    controller.request_record(index, id)
                });
            }
            Answer::Filed { elapsed } => {
                let name = self.run.name(index);
                self.run
                    .config
                    .observe(|o| o.record_answered(id, name, elapsed)); // web view hook
                self.carry(ctx);
            }
        }
    }

    /// Keeps the latest ok snapshot, for a rollback.
    fn reported(&mut self, report: &SnapshotReport) {
        if self.run.config.on_branch_loss != BranchLoss::Rollback || report.epoch != self.epoch {
            return;
        }
        let branches = &self.run.config.branches;
        let Some(balances) = Checkpoint::of_report(report, branches, 0).and_then(|checkpoint| {
            checkpoint
                .restore_balances(report.expected_total, branches)
                .ok()
        }) else {
            return;
        };
        let sent_at_cut = report
            .branches
            .iter()
            .map(|branch| {
                branch
                    .record
                    .as_ref()
                    .ok()
                    .and_then(|record| record.transfers_sent())
                    .unwrap_or(0)
            })
            .collect();
        self.latest_ok = Some(LatestOk {
            id: report.id,
            epoch: report.epoch,
            balances,
            sent_at_cut,
        });
    }

    /// Branch `index`'s link is down: redial it.
    fn on_link_down(&mut self, index: usize, reason: String, ctx: &mut Context<Self>) {
        let name = self.run.name(index);
        warn!(
            "lost the connection to branch {name}: {reason}; redialling ({} request(s) waiting)",
            self.run.collector.awaited_from(index).len()
        );
        self.run.config.observe(|o| o.link_lost(name, &reason)); // web view hook
        self.redial(index, ctx);
    }
}

impl Actor for ControllerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if !self.run.config.attach {
            self.init_bank();
        }
        if let Some(to) = self.run.config.rollback_to.clone() {
            let epoch = self.epoch + 1;
            warn!(
                "rolling the bank back to snapshot {} in epoch {epoch}, as asked",
                to.checkpoint
            );
            let rollback = Rollback::requested(epoch, to.checkpoint, to.balances, Instant::now());
            self.begin_rollback(rollback, ctx);
        }
        if self.run.config.heartbeats {
            let every = (self.run.config.link_timeout / 6).max(Duration::from_millis(1));
            ctx.run_interval(every, |controller, ctx| controller.check_liveness(ctx));
        }
        self.begin_run(ctx);
    }
}

impl StreamHandler<LinkEvent> for ControllerActor {
    fn handle(&mut self, event: LinkEvent, ctx: &mut Context<Self>) {
        self.on_link_event(event, ctx);
    }

    /// One branch's stream ending is a [`LinkEvent::Closed`], not the end of the controller.
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

/// `RollbackCommit` giving `balance` in `epoch`.
fn rollback_commit(epoch: u64, balance: u64) -> Body {
    Body::RollbackCommit(pb::RollbackCommit {
        epoch,
        balance: wire::to_wire_amount(balance),
    })
}
