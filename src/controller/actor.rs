//! [`ControllerActor`]: one persistent connection per branch; `InitBranch`, then a snapshot
//! every interval; records collected as each branch finishes; reports emitted in id order.
//!
//! Each connection's read half is one of the actor's streams, tagged with the branch's index and
//! the connection's generation and followed by a `Closed` event. Answers name their snapshot, so
//! each `ReturnSnapshot` is matched by id, never by order.
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

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::StreamExt;
use log::{debug, info, warn};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::schedule::{Reports, Ticker, UnfinishedSnapshot};
use super::{ControllerConfig, ControllerError, RunSummary, SnapshotReport};
use crate::auth::Secret;
use crate::core::split_total;
use crate::handshake::{self, Authenticated, HandshakeError};
use crate::outbox::{Outbox, write_loop};
use crate::wire::pb::return_snapshot::LocalSnapshot;
use crate::wire::{self, Body, FrameError, pb};

/// Pause before asking again a branch that answered "still recording" without waiting (an
/// original-schema branch ignores `wait_ms`).
const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// Most snapshots in progress at once. Far below a branch's cap on kept records (1024), so
/// snapshots started back to back never make a branch discard one.
pub const MAX_IN_FLIGHT: usize = 256;

/// First pause between two redials of a lost branch; doubles up to [`MAX_REDIAL_DELAY`].
const FIRST_REDIAL_DELAY: Duration = Duration::from_millis(10);
const MAX_REDIAL_DELAY: Duration = Duration::from_secs(1);

/// How long before the retrieve deadline a branch is asked to answer, at most: a branch still
/// recording then says so in time, and the report can tell "still waiting for a marker" (the
/// branch answered) from "did not answer" (the branch is gone or cut off).
fn answer_margin(timeout: Duration) -> Duration {
    (timeout / 10).min(Duration::from_millis(250))
}

/// The `wait_ms` to send when `left` remains before the deadline.
fn wait_ms(left: Duration, margin: Duration) -> u32 {
    u32::try_from(left.saturating_sub(margin).as_millis()).unwrap_or(u32::MAX)
}

/// Something that happened on one connection (`generation`) of branch `index`.
enum LinkEvent {
    Frame {
        index: usize,
        generation: u64,
        frame: Result<pb::BranchMessage, FrameError>,
    },
    Closed {
        index: usize,
        generation: u64,
    },
}

impl Message for LinkEvent {
    type Result = ();
}

/// One branch and the connection to it.
struct Link {
    /// Requests to the branch, in order; `None` while the connection is down.
    outbox: Option<Outbox>,
    /// Which connection is current; events from older ones are stale.
    generation: u64,
    /// Snapshot ids whose `RetrieveSnapshot` is not answered yet (sent, or to send after a
    /// reconnect).
    awaiting: BTreeSet<u32>,
    /// Why and since when the connection is down, while it is.
    down: Option<(Instant, String)>,
    /// When a frame was last read on the current connection.
    last_read: Instant,
    /// A heartbeat probe went out since the last read.
    probed: bool,
}

/// A snapshot whose records are still being collected.
struct InFlight {
    initiator: usize,
    started: Instant,
    deadline: Instant,
    /// The retrieve-timeout timer, cancelled when the snapshot is reported so that timers do
    /// not accumulate in the actor's context.
    timer: Option<SpawnHandle>,
    /// One slot per branch: `Some(Ok)` a finished record, `Some(Err)` why there is none.
    answers: Vec<Option<Result<LocalSnapshot, String>>>,
}

/// The actor that runs a bank's snapshots.
pub struct ControllerActor {
    config: ControllerConfig,
    /// Branch names in file order.
    names: Vec<String>,
    links: Vec<Link>,
    rng: StdRng,
    /// Id of the next snapshot to start (1 for a new bank; past every id the branches have
    /// seen when attaching).
    next_id: u32,
    /// Snapshots started so far.
    started: u32,
    /// When the next scheduled snapshot is due.
    ticker: Ticker,
    /// The cluster secret: handed to the branches in `InitBranch`, and proven on every
    /// reconnect.
    secret: Secret,
    /// This run's id towards the branches' controller leases (never 0), sent in `InitBranch`
    /// and in every reconnection's handshake, so a reconnection keeps the lease.
    controller_id: u64,
    in_flight: BTreeMap<u32, InFlight>,
    /// Finished reports, handed out in id order, and the run's outcome.
    reports: Reports,
}

/// Starts the actor on connected (and, when attaching, authenticated) connections, one per
/// branch in file order, as controller `controller_id`; snapshot ids start at `first_id`.
pub(super) fn start(
    config: ControllerConfig,
    streams: Vec<Authenticated>,
    secret: Secret,
    controller_id: u64,
    first_id: u32,
    on_report: Box<dyn FnMut(&SnapshotReport)>,
    done: oneshot::Sender<Result<RunSummary, ControllerError>>,
) -> Addr<ControllerActor> {
    ControllerActor::create(move |ctx| {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng(),
        };
        let mut controller = ControllerActor {
            names: config.branches.iter().map(|b| b.name.clone()).collect(),
            links: Vec::with_capacity(streams.len()),
            ticker: Ticker::new(config.interval),
            config,
            rng,
            next_id: first_id,
            started: 0,
            secret,
            controller_id,
            in_flight: BTreeMap::new(),
            reports: Reports::new(first_id, on_report, done),
        };
        for (index, stream) in streams.into_iter().enumerate() {
            controller.links.push(Link {
                outbox: None,
                generation: 0,
                awaiting: BTreeSet::new(),
                down: None,
                last_read: Instant::now(),
                probed: false,
            });
            controller.install(index, stream, ctx);
            let name = &controller.names[index];
            controller.config.observe(|o| o.link_up(name)); // web view hook
        }
        controller
    })
}

impl ControllerActor {
    /// Makes `stream` the current connection of branch `index`.
    fn install(&mut self, index: usize, stream: Authenticated, ctx: &mut Context<Self>) {
        let link = &mut self.links[index];
        link.generation += 1;
        let generation = link.generation;
        let Authenticated {
            reader,
            writer: write_half,
        } = stream;
        let frames = reader
            .map(move |frame| LinkEvent::Frame {
                index,
                generation,
                frame,
            })
            .chain(futures_util::stream::once(async move {
                LinkEvent::Closed { index, generation }
            }));
        ctx.add_stream(frames);
        let outbox = Outbox::new();
        let writing =
            actix::fut::wrap_future::<_, ControllerActor>(write_loop(outbox.clone(), write_half));
        ctx.spawn(writing.map(move |result, controller, ctx| {
            let reason = match result {
                Ok(()) => "connection closed".to_string(),
                Err(err) => format!("write failed: {err}"),
            };
            controller.link_lost(index, generation, reason, ctx);
        }));
        link.outbox = Some(outbox);
        link.last_read = Instant::now();
        link.probed = false;
    }

    fn init_bank(&mut self) {
        let balances = split_total(self.config.total, self.links.len());
        let all_branches = wire::branch_list(&self.config.branches);
        // With a --secret-file the links are authenticated and the secret stays here.
        let secret = if self.config.secret.is_some() {
            Vec::new()
        } else {
            self.secret.as_bytes().to_vec()
        };
        for (link, balance) in self.links.iter().zip(balances) {
            if let Some(outbox) = &link.outbox {
                outbox.push(Body::InitBranch(pb::InitBranch {
                    controller: self.controller_id,
                    secret: secret.clone(),
                    balance: wire::to_wire_amount(balance),
                    all_branches: all_branches.clone(),
                }));
            }
        }
    }

    fn started_all(&self) -> bool {
        self.config
            .snapshots
            .is_some_and(|limit| self.started >= limit)
    }

    /// A scheduled tick: starts a snapshot, first skipping ticks that a stall made the
    /// controller miss.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.reports.summary.skipped_ticks += self.ticker.on_tick();
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            warn!(
                "{MAX_IN_FLIGHT} snapshots are still in progress: skipping this tick (is --interval-ms shorter than a snapshot takes?)"
            );
            self.reports.summary.skipped_ticks += 1;
        } else {
            self.start_snapshot(ctx);
        }
        if !self.started_all() {
            ctx.run_later(self.ticker.wait(), |controller, ctx| controller.tick(ctx));
        }
    }

    /// Back to back (`--interval-ms 0`): keeps [`MAX_IN_FLIGHT`] snapshots in progress until
    /// all have started.
    fn fill_pipeline(&mut self, ctx: &mut Context<Self>) {
        while self.config.interval.is_zero()
            && !self.started_all()
            && self.in_flight.len() < MAX_IN_FLIGHT
        {
            self.start_snapshot(ctx);
        }
    }

    fn start_snapshot(&mut self, ctx: &mut Context<Self>) {
        if self.started_all() {
            return;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.started += 1;
        let now = Instant::now();
        let timeout = self.config.retrieve_timeout;
        let live: Vec<usize> = (0..self.links.len())
            .filter(|&i| self.links[i].outbox.is_some())
            .collect();
        let initiator = if live.is_empty() {
            self.rng.random_range(0..self.links.len())
        } else {
            live[self.rng.random_range(0..live.len())]
        };
        self.in_flight.insert(
            id,
            InFlight {
                initiator,
                started: now,
                deadline: now + timeout,
                timer: None,
                answers: vec![None; self.links.len()],
            },
        );
        let summary = &mut self.reports.summary;
        summary.max_in_flight = summary.max_in_flight.max(self.in_flight.len());
        self.config
            .observe(|o| o.snapshot_started(id, &self.names[initiator])); // web view hook
        debug!("snapshot {id}: starting at {}", self.names[initiator]);
        if let Some(outbox) = &self.links[initiator].outbox {
            outbox.push(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: id }));
        }
        // Every branch is asked, connected or not: a branch that is down is asked when it is
        // back, and the snapshot waits for it until its deadline.
        for index in 0..self.links.len() {
            self.links[index].awaiting.insert(id);
            self.request_record(index, id);
        }
        let timer = ctx.run_later(timeout, move |controller, ctx| controller.expire(id, ctx));
        if let Some(snapshot) = self.in_flight.get_mut(&id) {
            snapshot.timer = Some(timer);
        }
        self.try_finish(id, ctx);
    }

    /// Sends `RetrieveSnapshot(id)` to branch `index` if it is connected, asking it to answer
    /// before the snapshot's deadline.
    fn request_record(&mut self, index: usize, id: u32) {
        let Some(snapshot) = self.in_flight.get(&id) else {
            return;
        };
        let left = snapshot.deadline.saturating_duration_since(Instant::now());
        let wait_ms = wait_ms(left, answer_margin(self.config.retrieve_timeout));
        if let Some(outbox) = &self.links[index].outbox {
            outbox.push(Body::RetrieveSnapshot(pb::RetrieveSnapshot {
                snapshot_id: id,
                wait_ms,
            }));
        }
    }

    fn on_frame(&mut self, index: usize, body: Body, ctx: &mut Context<Self>) {
        let name = &self.names[index];
        let local = match body {
            Body::ReturnSnapshot(pb::ReturnSnapshot { local_snapshot }) => {
                local_snapshot.unwrap_or_default()
            }
            Body::Heartbeat(pb::Heartbeat { reply }) => {
                if !reply && let Some(outbox) = &self.links[index].outbox {
                    outbox.push(Body::Heartbeat(pb::Heartbeat { reply: true }));
                }
                return;
            }
            Body::ControllerLease(lease)
                if lease.outcome == pb::controller_lease::Outcome::TakenOver as i32 =>
            {
                self.fail(
                    ControllerError::TakenOver {
                        name: name.clone(),
                        by: lease.holder,
                    },
                    ctx,
                );
                return;
            }
            Body::ControllerLease(lease)
                if lease.outcome == pb::controller_lease::Outcome::Lapsed as i32 =>
            {
                self.fail(
                    ControllerError::LeaseLost {
                        name: name.clone(),
                        holder: lease.holder,
                    },
                    ctx,
                );
                return;
            }
            Body::Refusal(pb::Refusal { reason, .. }) => {
                self.fail(
                    ControllerError::Refused {
                        name: name.clone(),
                        reason,
                    },
                    ctx,
                );
                return;
            }
            other => {
                warn!(
                    "branch {name} sent {} on the controller connection; ignored",
                    wire::body_kind(&other)
                );
                return;
            }
        };
        let id = local.snapshot_id;
        if !self.links[index].awaiting.remove(&id) {
            debug!(
                "branch {name} answered for snapshot {id}, which is not awaited from it; ignored"
            );
            return;
        }
        let Some(snapshot) = self.in_flight.get_mut(&id) else {
            return; // already reported (timed out)
        };
        let status = pb::SnapshotStatus::try_from(local.status);
        let timeout_ms = self.config.retrieve_timeout.as_millis();
        let answer = match status {
            Ok(pb::SnapshotStatus::Complete) => Some(Ok(local)),
            Ok(pb::SnapshotStatus::Recording) => {
                let left = snapshot.deadline.saturating_duration_since(Instant::now());
                let margin = answer_margin(self.config.retrieve_timeout);
                if left > margin + RETRY_PAUSE {
                    self.links[index].awaiting.insert(id);
                    ctx.run_later(RETRY_PAUSE, move |controller, _ctx| {
                        if controller.in_flight.contains_key(&id) {
                            controller.request_record(index, id);
                        }
                    });
                    None
                } else {
                    Some(Err(format!(
                        "did not finish recording within {timeout_ms} ms"
                    )))
                }
            }
            Ok(pb::SnapshotStatus::CutShort) => Some(Err(format!(
                "lost its connection to {} before their marker came",
                local.lost_peers.join(", ")
            ))),
            Ok(pb::SnapshotStatus::UnknownSnapshot) => Some(Err(format!(
                "never took part in the snapshot within {timeout_ms} ms"
            ))),
            Ok(pb::SnapshotStatus::Discarded) => Some(Err(
                "discarded its record before it was retrieved (over its cap of kept records, or kept too long)"
                    .to_string(),
            )),
            Ok(pb::SnapshotStatus::AlreadyRetrieved) => Some(Err(
                "its record was already retrieved (by another controller?) and released"
                    .to_string(),
            )),
            Err(_) => Some(Err(format!(
                "answered with unknown status {}",
                local.status
            ))),
        };
        if let Some(answer) = answer {
            let elapsed = snapshot.started.elapsed();
            self.config
                .observe(|o| o.record_answered(id, &self.names[index], elapsed)); // web view hook
            snapshot.answers[index] = Some(answer);
            self.try_finish(id, ctx);
        }
    }

    /// Gives up on records still missing when the retrieve timeout passes.
    fn expire(&mut self, id: u32, ctx: &mut Context<Self>) {
        let Some(snapshot) = self.in_flight.get_mut(&id) else {
            return;
        };
        let timeout = self.config.retrieve_timeout.as_millis();
        for (index, answer) in snapshot.answers.iter_mut().enumerate() {
            if answer.is_some() {
                continue;
            }
            let link = &mut self.links[index];
            link.awaiting.remove(&id);
            *answer = Some(Err(match &link.down {
                Some((since, reason)) => format!(
                    "unreachable for the last {} ms ({reason}); no answer within {timeout} ms",
                    since.elapsed().as_millis()
                ),
                None => format!("did not answer within {timeout} ms"),
            }));
        }
        self.try_finish(id, ctx);
    }

    /// Connection `generation` of branch `index` is gone: redial it.
    fn link_lost(
        &mut self,
        index: usize,
        generation: u64,
        reason: String,
        ctx: &mut Context<Self>,
    ) {
        let link = &mut self.links[index];
        if link.generation != generation || link.outbox.is_none() || self.reports.over() {
            return;
        }
        if let Some(outbox) = link.outbox.take() {
            outbox.mark_dead();
        }
        warn!(
            "lost the connection to branch {}: {reason}; redialling ({} request(s) waiting)",
            self.names[index],
            link.awaiting.len()
        );
        self.config
            .observe(|o| o.link_lost(&self.names[index], &reason)); // web view hook
        link.down = Some((Instant::now(), reason));
        self.redial(index, ctx);
    }

    /// Redials branch `index` and re-runs the controller handshake until both succeed, with
    /// capped exponential backoff and jitter.
    fn redial(&mut self, index: usize, ctx: &mut Context<Self>) {
        let branch = self.config.branches[index].clone();
        let secret = self.secret.clone();
        let max_frame = self.config.max_frame;
        let deadline = self.config.connect_timeout;
        // Never a take-over: a reconnection must not depose a controller that took over.
        let claim = handshake::ControllerClaim {
            controller: self.controller_id,
            take_over: false,
        };
        let redialling = async move {
            let started = Instant::now();
            let mut last_warning = started;
            let mut backoff = crate::backoff::Backoff::new(FIRST_REDIAL_DELAY, MAX_REDIAL_DELAY);
            loop {
                let error =
                    match tokio::time::timeout(deadline, TcpStream::connect(branch.addr)).await {
                        Ok(Ok(stream)) => {
                            let _ = stream.set_nodelay(true);
                            match handshake::attach_to_branch(
                                stream,
                                &secret,
                                &branch.name,
                                claim,
                                max_frame,
                                deadline,
                            )
                            .await
                            {
                                Ok((authenticated, _)) => return Ok(authenticated),
                                Err(HandshakeError::LeaseHeld { holder, .. }) => {
                                    return Err(ControllerError::LeaseLost {
                                        name: branch.name.clone(),
                                        holder,
                                    });
                                }
                                Err(err @ HandshakeError::Refused(_)) => {
                                    format!("handshake refused: {err}")
                                }
                                Err(err) => format!("handshake failed: {err}"),
                            }
                        }
                        Ok(Err(err)) => err.to_string(),
                        Err(_) => "connect timed out".to_string(),
                    };
                if last_warning.elapsed() >= Duration::from_secs(5) || error.contains("refused:") {
                    warn!(
                        "still trying to reach branch {} at {} after {} s: {error}",
                        branch.name,
                        branch.addr,
                        started.elapsed().as_secs()
                    );
                    last_warning = Instant::now();
                }
                tokio::time::sleep(backoff.next_pause()).await;
            }
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(redialling).map(
            move |result, controller, ctx| match result {
                Ok(authenticated) => controller.reconnected(index, authenticated, ctx),
                Err(lost) => controller.fail(lost, ctx),
            },
        ));
    }

    /// Branch `index` is back: re-send what is still unanswered on it.
    fn reconnected(&mut self, index: usize, authenticated: Authenticated, ctx: &mut Context<Self>) {
        if self.reports.over() {
            return;
        }
        self.install(index, authenticated, ctx);
        self.reports.summary.reconnects += 1;
        let name = &self.names[index];
        self.config.observe(|o| o.link_up(name)); // web view hook
        let link = &mut self.links[index];
        if let Some((since, _)) = link.down.take() {
            info!(
                "reconnected to branch {} after {} ms; re-sending {} request(s)",
                self.names[index],
                since.elapsed().as_millis(),
                link.awaiting.len()
            );
        }
        // An InitSnapshot may have been lost with the connection: starting a snapshot twice is
        // refused by the branch, so sending it again is safe.
        let initiated: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, snapshot)| snapshot.initiator == index)
            .map(|(&id, _)| id)
            .collect();
        if let Some(outbox) = &self.links[index].outbox {
            for id in initiated {
                outbox.push(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: id }));
            }
        }
        let awaiting: Vec<u32> = self.links[index].awaiting.iter().copied().collect();
        for id in awaiting {
            self.request_record(index, id);
        }
    }

    /// Probes links that have been silent for a third of the link timeout; declares broken
    /// those silent for all of it.
    fn check_liveness(&mut self, ctx: &mut Context<Self>) {
        let timeout = self.config.link_timeout;
        for index in 0..self.links.len() {
            let link = &mut self.links[index];
            let Some(outbox) = &link.outbox else {
                continue;
            };
            let silent = link.last_read.elapsed();
            if silent >= timeout {
                let generation = link.generation;
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

    /// Stops the run early: hands out the finished reports and the summary listing what is
    /// still in flight.
    fn stop_early(&mut self, ctx: &mut Context<Self>) {
        let unfinished = UnfinishedSnapshot::list(
            &self.names,
            self.in_flight.iter().map(|(&id, snapshot)| {
                (
                    id,
                    snapshot.initiator,
                    snapshot.started,
                    &snapshot.answers[..],
                )
            }),
        );
        info!(
            "stopping early with {} snapshot(s) in flight",
            unfinished.len()
        );
        self.reports.stop(unfinished);
        ctx.stop();
    }

    /// Ends the run with `error`.
    fn fail(&mut self, error: ControllerError, ctx: &mut Context<Self>) {
        self.reports.fail(error);
        ctx.stop();
    }

    /// Reports snapshot `id` if every branch has answered, then emits what is in order.
    fn try_finish(&mut self, id: u32, ctx: &mut Context<Self>) {
        let Some(snapshot) = self.in_flight.get(&id) else {
            return;
        };
        if snapshot.answers.iter().any(Option::is_none) {
            return;
        }
        let Some(snapshot) = self.in_flight.remove(&id) else {
            return;
        };
        if let Some(timer) = snapshot.timer {
            ctx.cancel_future(timer);
        }
        self.reports.add_answers(
            id,
            snapshot.initiator,
            &self.names,
            snapshot.answers,
            self.config.total,
            snapshot.started,
        );
        if self.started_all() && self.in_flight.is_empty() && !self.reports.waiting() {
            self.reports.complete();
            ctx.stop();
            return;
        }
        if self.config.interval.is_zero() {
            // Not directly: starting a snapshot can finish one at once, which would recurse.
            ctx.run_later(Duration::ZERO, |controller, ctx| {
                controller.fill_pipeline(ctx)
            });
        }
    }
}

impl Actor for ControllerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(stop) = self.config.stop.clone() {
            let stopping = async move { stop.cancelled().await };
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(stopping)
                    .map(|(), controller, ctx| controller.stop_early(ctx)),
            );
        }
        if !self.config.attach {
            self.init_bank();
        }
        if self.config.heartbeats {
            let every = (self.config.link_timeout / 6).max(Duration::from_millis(1));
            ctx.run_interval(every, |controller, ctx| controller.check_liveness(ctx));
        }
        if self.config.interval.is_zero() {
            self.fill_pipeline(ctx);
        } else {
            self.ticker = Ticker::new(self.config.interval);
            self.tick(ctx);
        }
    }
}

impl StreamHandler<LinkEvent> for ControllerActor {
    fn handle(&mut self, event: LinkEvent, ctx: &mut Context<Self>) {
        match event {
            LinkEvent::Frame {
                index,
                generation,
                frame,
            } => {
                if self.links[index].generation != generation {
                    return; // from a connection that has since been replaced
                }
                match frame {
                    Ok(frame) => {
                        let link = &mut self.links[index];
                        link.last_read = Instant::now();
                        link.probed = false;
                        match frame.branch_message {
                            Some(body) => self.on_frame(index, body, ctx),
                            None => warn!(
                                "branch {} sent a frame with no known message; ignored",
                                self.names[index]
                            ),
                        }
                    }
                    Err(err) => self.link_lost(index, generation, err.to_string(), ctx),
                }
            }
            LinkEvent::Closed { index, generation } => {
                self.link_lost(index, generation, "closed by the branch".to_string(), ctx);
            }
        }
    }

    /// One branch's stream ending is a [`LinkEvent::Closed`], not the end of the controller.
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}
