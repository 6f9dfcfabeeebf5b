//! [`ControllerActor`]: one persistent connection per branch; `InitBranch`, then a snapshot
//! every interval; records collected as each branch finishes; reports emitted in id order.
//!
//! Each connection's read half is one of the actor's streams, tagged with the branch's index
//! and followed by a `Closed` event, so a lost branch is noticed and every snapshot waiting on it
//! is reported incomplete instead of hanging. Answers on a connection come back in request
//! order, so each `ReturnSnapshot` is matched to the oldest outstanding request on it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::StreamExt;
use log::{debug, error, warn};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::oneshot;

use super::{ControllerConfig, RunSummary, SnapshotReport};
use crate::auth::Secret;
use crate::core::split_total;
use crate::handshake::Authenticated;
use crate::outbox::{Outbox, write_loop};
use crate::wire::pb::return_snapshot::LocalSnapshot;
use crate::wire::{self, Body, FrameError, pb};

/// Pause before asking again a branch that answered "still recording" without waiting (an
/// original-schema branch ignores `wait_ms`).
const RETRY_PAUSE: Duration = Duration::from_millis(5);

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

/// Something that happened on one branch connection.
enum LinkEvent {
    Frame(usize, Result<pb::BranchMessage, FrameError>),
    Closed(usize),
}

impl Message for LinkEvent {
    type Result = ();
}

/// One branch connection.
struct Link {
    /// Requests to the branch, in order.
    outbox: Outbox,
    /// Snapshot ids of the `RetrieveSnapshot`s not answered yet, oldest first.
    awaiting: VecDeque<u32>,
    /// Why the connection is gone, once it is.
    lost: Option<String>,
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
    /// The cluster secret, handed to the branches in `InitBranch`.
    secret: Secret,
    in_flight: BTreeMap<u32, InFlight>,
    /// Finished reports waiting for a lower id to finish, so reports come out in id order.
    finished: BTreeMap<u32, SnapshotReport>,
    /// Id of the next report to emit.
    next_to_emit: u32,
    summary: RunSummary,
    on_report: Box<dyn FnMut(&SnapshotReport)>,
    done: Option<oneshot::Sender<RunSummary>>,
}

/// Starts the actor on connected (and, when attaching, authenticated) connections, one per
/// branch in file order; snapshot ids start at `first_id`.
pub(super) fn start(
    config: ControllerConfig,
    streams: Vec<Authenticated>,
    secret: Secret,
    first_id: u32,
    on_report: Box<dyn FnMut(&SnapshotReport)>,
    done: oneshot::Sender<RunSummary>,
) -> Addr<ControllerActor> {
    ControllerActor::create(move |ctx| {
        let mut links = Vec::with_capacity(streams.len());
        for (index, stream) in streams.into_iter().enumerate() {
            let Authenticated {
                reader,
                writer: write_half,
            } = stream;
            let frames = reader
                .map(move |frame| LinkEvent::Frame(index, frame))
                .chain(futures_util::stream::once(async move {
                    LinkEvent::Closed(index)
                }));
            ctx.add_stream(frames);
            let outbox = Outbox::new();
            let writing = actix::fut::wrap_future::<_, ControllerActor>(write_loop(
                outbox.clone(),
                write_half,
            ));
            ctx.spawn(writing.map(move |result, controller, ctx| {
                let reason = match result {
                    Ok(()) => "connection closed".to_string(),
                    Err(err) => format!("write failed: {err}"),
                };
                controller.link_lost(index, reason, ctx);
            }));
            links.push(Link {
                outbox,
                awaiting: VecDeque::new(),
                lost: None,
            });
            config.observe(|o| o.link_up(&config.branches[index].name)); // web view hook
        }
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng(),
        };
        ControllerActor {
            names: config.branches.iter().map(|b| b.name.clone()).collect(),
            config,
            links,
            rng,
            next_id: first_id,
            started: 0,
            secret,
            in_flight: BTreeMap::new(),
            finished: BTreeMap::new(),
            next_to_emit: first_id,
            summary: RunSummary {
                snapshots: 0,
                ok: 0,
                max_in_flight: 0,
            },
            on_report,
            done: Some(done),
        }
    })
}

impl ControllerActor {
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
            link.outbox.push(Body::InitBranch(pb::InitBranch {
                secret: secret.clone(),
                balance: wire::to_wire_amount(balance),
                all_branches: all_branches.clone(),
            }));
        }
    }

    fn started_all(&self) -> bool {
        self.config
            .snapshots
            .is_some_and(|limit| self.started >= limit)
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
        let answers: Vec<_> = self
            .links
            .iter()
            .map(|link| {
                link.lost
                    .as_ref()
                    .map(|why| Err(format!("unreachable: {why}")))
            })
            .collect();
        let live: Vec<usize> = (0..self.links.len())
            .filter(|&i| self.links[i].lost.is_none())
            .collect();
        let initiator = if live.is_empty() {
            0
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
                answers,
            },
        );
        self.summary.max_in_flight = self.summary.max_in_flight.max(self.in_flight.len());
        self.config
            .observe(|o| o.snapshot_started(id, &self.names[initiator])); // web view hook
        if !live.is_empty() {
            debug!("snapshot {id}: starting at {}", self.names[initiator]);
            self.links[initiator]
                .outbox
                .push(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: id }));
            let wait_ms = wait_ms(timeout, answer_margin(timeout));
            for index in live {
                self.request_record(index, id, wait_ms);
            }
        }
        let timer = ctx.run_later(timeout, move |controller, ctx| controller.expire(id, ctx));
        if let Some(snapshot) = self.in_flight.get_mut(&id) {
            snapshot.timer = Some(timer);
        }
        self.try_finish(id, ctx);
    }

    fn request_record(&mut self, index: usize, id: u32, wait_ms: u32) {
        let link = &mut self.links[index];
        if link.lost.is_some() {
            return;
        }
        link.outbox
            .push(Body::RetrieveSnapshot(pb::RetrieveSnapshot {
                snapshot_id: id,
                wait_ms,
            }));
        link.awaiting.push_back(id);
    }

    fn on_frame(&mut self, index: usize, body: Body, ctx: &mut Context<Self>) {
        let name = &self.names[index];
        let Body::ReturnSnapshot(pb::ReturnSnapshot { local_snapshot }) = body else {
            warn!(
                "branch {name} sent {} on the controller connection; ignored",
                wire::body_kind(&body)
            );
            return;
        };
        let Some(id) = self.links[index].awaiting.pop_front() else {
            warn!("branch {name} sent a ReturnSnapshot nobody asked for; ignored");
            return;
        };
        let Some(snapshot) = self.in_flight.get_mut(&id) else {
            return; // already reported (timed out)
        };
        let local = local_snapshot.unwrap_or_default();
        let status = pb::SnapshotStatus::try_from(local.status);
        let answer = if local.snapshot_id != id {
            Some(Err(format!(
                "answered for snapshot {} instead of {id}",
                local.snapshot_id
            )))
        } else {
            match status {
                Ok(pb::SnapshotStatus::Complete) => Some(Ok(local)),
                Ok(pb::SnapshotStatus::Recording) => {
                    let left = snapshot.deadline.saturating_duration_since(Instant::now());
                    let margin = answer_margin(self.config.retrieve_timeout);
                    if left > margin + RETRY_PAUSE {
                        ctx.run_later(RETRY_PAUSE, move |controller, _ctx| {
                            let wait_ms = wait_ms(left.saturating_sub(RETRY_PAUSE), margin);
                            if controller.in_flight.contains_key(&id) {
                                controller.request_record(index, id, wait_ms);
                            }
                        });
                        None
                    } else {
                        Some(Err(format!(
                            "did not finish recording within {} ms",
                            self.config.retrieve_timeout.as_millis()
                        )))
                    }
                }
                Ok(pb::SnapshotStatus::CutShort) => Some(Err(format!(
                    "lost its connection to {} before their marker came",
                    local.lost_peers.join(", ")
                ))),
                Ok(pb::SnapshotStatus::UnknownSnapshot) => Some(Err(format!(
                    "never took part in the snapshot within {} ms",
                    self.config.retrieve_timeout.as_millis()
                ))),
                Err(_) => Some(Err(format!(
                    "answered with unknown status {}",
                    local.status
                ))),
            }
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
        for answer in snapshot.answers.iter_mut().filter(|a| a.is_none()) {
            *answer = Some(Err(format!("did not answer within {timeout} ms")));
        }
        self.try_finish(id, ctx);
    }

    fn link_lost(&mut self, index: usize, reason: String, ctx: &mut Context<Self>) {
        let link = &mut self.links[index];
        if link.lost.is_some() {
            return;
        }
        error!(
            "lost the connection to branch {}: {reason}",
            self.names[index]
        );
        link.outbox.mark_dead();
        link.lost = Some(reason.clone());
        self.config
            .observe(|o| o.link_lost(&self.names[index], &reason)); // web view hook
        let waiting: Vec<u32> = link.awaiting.drain(..).collect();
        for id in waiting {
            if let Some(snapshot) = self.in_flight.get_mut(&id) {
                snapshot.answers[index]
                    .get_or_insert_with(|| Err(format!("connection lost: {reason}")));
                self.try_finish(id, ctx);
            }
        }
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
        let answers = snapshot.answers.into_iter().flatten().collect();
        let report = SnapshotReport::assemble(
            id,
            &self.names[snapshot.initiator],
            &self.names,
            answers,
            self.config.total,
            snapshot.started.elapsed(),
        );
        self.finished.insert(id, report);
        while let Some(report) = self.finished.remove(&self.next_to_emit) {
            self.next_to_emit = self.next_to_emit.wrapping_add(1);
            self.summary.snapshots += 1;
            self.summary.ok += u32::from(report.is_ok());
            (self.on_report)(&report);
        }
        if self.started_all() && self.in_flight.is_empty() && self.finished.is_empty() {
            if let Some(done) = self.done.take() {
                let _ = done.send(self.summary.clone());
            }
            ctx.stop();
        }
    }
}

impl Actor for ControllerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if !self.config.attach {
            self.init_bank();
        }
        if self.config.interval.is_zero() {
            while !self.started_all() {
                self.start_snapshot(ctx);
            }
        } else {
            ctx.run_interval(self.config.interval, |controller, ctx| {
                controller.start_snapshot(ctx)
            });
        }
    }
}

impl StreamHandler<LinkEvent> for ControllerActor {
    fn handle(&mut self, event: LinkEvent, ctx: &mut Context<Self>) {
        match event {
            LinkEvent::Frame(index, Ok(frame)) => match frame.branch_message {
                Some(body) => self.on_frame(index, body, ctx),
                None => warn!(
                    "branch {} sent a frame with no known message; ignored",
                    self.names[index]
                ),
            },
            LinkEvent::Frame(index, Err(err)) => {
                self.link_lost(index, err.to_string(), ctx);
            }
            LinkEvent::Closed(index) => {
                self.link_lost(index, "closed by the branch".to_string(), ctx);
            }
        }
    }

    /// One branch's stream ending is a [`LinkEvent::Closed`], not the end of the controller.
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}
