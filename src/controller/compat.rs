//! [`CompatController`]: drives branches that speak only the exercise's original schema, the way
//! the exercise's own controllers do (`controller --compat MODE`).
//!
//! What the normal [`super::ControllerActor`] relies on and such branches lack:
//! - `RetrieveSnapshot.wait_ms`: they answer at once with whatever they hold (a partial record,
//!   an empty one, or nothing for a snapshot they have not seen). So this driver waits
//!   [`CompatConfig::retrieve_delay`] after `InitSnapshot` before it retrieves, and sends no
//!   `wait_ms` (a snapbank branch in a bank without a secret then holds its answer until the
//!   record is finished).
//! - Heartbeats and handshakes: none are sent. `InitBranch` goes without a secret.
//! - One connection pattern: they disagree, and the two patterns conflict, so [`CompatMode`]
//!   picks one. [`CompatMode::Persistent`]: one connection per branch carries every command
//!   (some branches take the first connection they accept to be the controller's).
//!   [`CompatMode::PerCommand`]: a new connection for every command, a `RetrieveSnapshot`
//!   answered on its own connection (some branches read exactly one frame from each connection
//!   they accept).
//!
//! Answers are matched by `local_snapshot.snapshot_id`, never by arrival order, and reports come
//! out in id order, built by [`SnapshotReport::assemble`]: a branch that sends no channel
//! counters is checked by the sum alone, and the verdict says `sum only`.
//!
//! Lost connections: in persistent mode a lost connection is redialled plainly (no handshake:
//! the branches know none) with capped, jittered backoff, and the retrievals still unanswered on
//! it are sent again. `InitSnapshot` is not sent again (an original branch may start a snapshot
//! it is told twice over again), and a branch that serves only the first connection it accepted
//! will not serve the new one: its snapshots end incomplete. Per-command mode has no connection
//! to lose between commands; a command whose connection fails is retried until the snapshot's
//! deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::StreamExt;
use log::{debug, info, warn};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;

use super::actor::MAX_IN_FLIGHT;
use super::schedule::{Reports, Ticker, UnfinishedSnapshot};
use super::{ControllerConfig, ControllerError, RunSummary, SnapshotReport};
use crate::backoff::Backoff;
use crate::core::split_total;
use crate::outbox::{Outbox, write_loop};
use crate::wire::pb::return_snapshot::LocalSnapshot;
use crate::wire::{self, Body, FrameCodec, FrameError, pb};

/// Default of [`CompatConfig::retrieve_delay`]: far longer than a snapshot takes on any bank
/// that is not broken, as the exercise's own controllers wait.
pub const DEFAULT_RETRIEVE_DELAY: Duration = Duration::from_secs(3);

/// First pause between two attempts to reach a branch; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(10);

/// How long a command's own connection is read after the command, for a `Refusal`. A branch
/// that takes the command closes the connection (or just says nothing); one that refuses it
/// (given another branch's name and port, say) sends its reason first.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Which connection pattern the driven branches expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompatMode {
    /// One connection per branch, opened first and kept, for every command: for branches that
    /// take the first connection they accept to be the controller's.
    Persistent,
    /// A new connection for every command, each `RetrieveSnapshot` answered on its own: for
    /// branches that read exactly one frame from each connection they accept.
    PerCommand,
}

/// How the compat driver talks to original-schema branches.
#[derive(Debug, Clone)]
pub struct CompatConfig {
    /// The connection pattern.
    pub mode: CompatMode,
    /// Pause between `InitSnapshot` and `RetrieveSnapshot`: the branches answer at once, so
    /// the snapshot must be finished everywhere by then.
    pub retrieve_delay: Duration,
}

impl CompatConfig {
    /// `mode` with the default retrieve delay.
    pub fn new(mode: CompatMode) -> Self {
        Self {
            mode,
            retrieve_delay: DEFAULT_RETRIEVE_DELAY,
        }
    }
}

/// Initialises a bank of original-schema branches and takes snapshots of it, calling
/// `on_report` for each in id order. `config`'s retrieve timeout counts from the retrieval, not
/// from `InitSnapshot`. Must run inside an actix system.
pub async fn run_compat_controller(
    config: ControllerConfig,
    compat: CompatConfig,
    on_report: Box<dyn FnMut(&SnapshotReport)>,
) -> Result<RunSummary, ControllerError> {
    super::check(&config)?;
    if config.secret.is_some() || config.attach {
        return Err(ControllerError::CompatWithSecret);
    }
    let balances = split_total(config.total, config.branches.len());
    let all_branches = wire::branch_list(&config.branches);
    let inits: Vec<Body> = balances
        .into_iter()
        .map(|balance| {
            Body::InitBranch(pb::InitBranch {
                balance: wire::to_wire_amount(balance),
                all_branches: all_branches.clone(),
                secret: Vec::new(),
                controller: 0,
            })
        })
        .collect();
    let connecting = async {
        Ok::<_, ControllerError>(match compat.mode {
            CompatMode::Persistent => {
                let streams = super::connect_all(&config.branches, config.connect_timeout).await?;
                streams.into_iter().zip(inits).collect()
            }
            CompatMode::PerCommand => {
                // Each InitBranch on a connection of its own, closed at once.
                let deadline = Instant::now() + config.connect_timeout;
                let sends = config
                    .branches
                    .iter()
                    .zip(inits)
                    .map(|(branch, init)| async move {
                        match send_one(branch.addr, init, deadline).await {
                            Ok(None) => Ok(()),
                            Ok(Some(reason)) => Err(ControllerError::Refused {
                                name: branch.name.clone(),
                                reason,
                            }),
                            Err(reason) => Err(ControllerError::Init {
                                name: branch.name.clone(),
                                addr: branch.addr,
                                reason,
                            }),
                        }
                    });
                futures_util::future::join_all(sends)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<()>, _>>()?;
                Vec::new()
            }
        })
    };
    let links = match config.stop.clone() {
        Some(stop) => tokio::select! {
            links = connecting => links?,
            () = stop.cancelled() => return Ok(RunSummary::default()),
        },
        None => connecting.await?,
    };
    let (done, finished) = oneshot::channel();
    CompatController::start(config, compat, links, on_report, done);
    finished.await.map_err(|_| ControllerError::Stopped)?
}

/// Connects to `addr` (retrying until `deadline`), writes `body` and closes the writing half,
/// then listens for up to [`REFUSAL_WAIT`]: `Ok(Some(reason))` when the branch refused the
/// command, `Ok(None)` when it closed the connection or said nothing.
async fn send_one(
    addr: SocketAddr,
    body: Body,
    deadline: Instant,
) -> Result<Option<String>, String> {
    let mut stream = connect_by(addr, deadline).await?;
    let mut bytes = Vec::new();
    wire::encode_frame(body, &mut bytes);
    let writing = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    };
    tokio::time::timeout_at(deadline.into(), writing)
        .await
        .map_err(|_| "timed out writing".to_string())?
        .map_err(|err| format!("write failed: {err}"))?;
    let mut frames = FramedRead::new(stream, FrameCodec::default());
    let listening = async {
        // A read error (a reset once the branch has closed) ends the listening too.
        while let Some(Ok(frame)) = frames.next().await {
            if let Some(Body::Refusal(pb::Refusal { reason, .. })) = frame.branch_message {
                return Some(reason);
            }
        }
        None
    };
    let until = (Instant::now() + REFUSAL_WAIT).min(deadline);
    Ok(tokio::time::timeout_at(until.into(), listening)
        .await
        .ok()
        .flatten())
}

/// Asks the branch at `addr` for its record of snapshot `id` on a connection of its own, and
/// reads the answer from it. The write side stays open while waiting: a branch holding the
/// request until its record is finished must be able to answer.
async fn ask(
    addr: SocketAddr,
    id: u32,
    deadline: Instant,
    max_frame: usize,
) -> Result<LocalSnapshot, String> {
    let asking = async {
        let mut stream = connect_by(addr, deadline).await?;
        let mut bytes = Vec::new();
        wire::encode_frame(
            Body::RetrieveSnapshot(pb::RetrieveSnapshot {
                snapshot_id: id,
                wait_ms: 0,
            }),
            &mut bytes,
        );
        stream
            .write_all(&bytes)
            .await
            .map_err(|err| format!("write failed: {err}"))?;
        let mut frames = FramedRead::new(stream, FrameCodec::new(max_frame));
        loop {
            match frames.next().await {
                Some(Ok(pb::BranchMessage {
                    branch_message:
                        Some(Body::ReturnSnapshot(pb::ReturnSnapshot { local_snapshot })),
                })) => return Ok(local_snapshot.unwrap_or_default()),
                Some(Ok(pb::BranchMessage {
                    branch_message: Some(Body::Refusal(pb::Refusal { reason, .. })),
                })) => return Err(format!("refused the request: {reason}")),
                Some(Ok(other)) => {
                    debug!("{addr} sent {other:?} while asked for a record; ignored")
                }
                Some(Err(err)) => return Err(err.to_string()),
                None => return Err("closed the connection without answering".to_string()),
            }
        }
    };
    tokio::time::timeout_at(deadline.into(), asking)
        .await
        .unwrap_or_else(|_| Err("did not answer in time".to_string()))
}

/// Connects to `addr`, retrying with backoff until `deadline`.
async fn connect_by(addr: SocketAddr, deadline: Instant) -> Result<TcpStream, String> {
    let mut backoff = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY);
    loop {
        let error = match tokio::time::timeout_at(deadline.into(), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                if let Err(err) = stream.set_nodelay(true) {
                    debug!("cannot set TCP_NODELAY towards {addr}: {err}");
                }
                return Ok(stream);
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        let pause = backoff.next_pause();
        if Instant::now() + pause >= deadline {
            return Err(error);
        }
        tokio::time::sleep(pause).await;
    }
}

/// What an answer says, for the report: a finished record, or why there is none. An
/// original-schema branch never sets a status, which reads as `COMPLETE`; a snapbank branch does.
fn judge(local: LocalSnapshot) -> Result<LocalSnapshot, String> {
    match pb::SnapshotStatus::try_from(local.status) {
        Ok(pb::SnapshotStatus::Complete) => Ok(local),
        Ok(pb::SnapshotStatus::Recording) => {
            Err("answered that it was still recording".to_string())
        }
        Ok(pb::SnapshotStatus::CutShort) => Err(format!(
            "lost its connection to {} before their marker came",
            local.lost_peers.join(", ")
        )),
        Ok(pb::SnapshotStatus::UnknownSnapshot) => {
            Err("answered that it never took part in the snapshot".to_string())
        }
        Ok(pb::SnapshotStatus::Discarded) => {
            Err("discarded its record before it was retrieved".to_string())
        }
        Ok(pb::SnapshotStatus::AlreadyRetrieved) => {
            Err("its record was already retrieved and released".to_string())
        }
        Err(_) => Err(format!("answered with unknown status {}", local.status)),
    }
}

/// Something that happened on one persistent connection (`generation`) of branch `index`.
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

/// A persistent connection to one branch.
struct Link {
    /// Commands to the branch, in order; `None` while the connection is down.
    outbox: Option<Outbox>,
    /// Which connection is current; events from older ones are stale.
    generation: u64,
    /// Why and since when the connection is down, while it is.
    down: Option<(Instant, String)>,
}

/// A snapshot whose records are still being collected.
struct Pending {
    initiator: usize,
    /// When `InitSnapshot` went out.
    started: Instant,
    /// When the retrieval ends (set once `RetrieveSnapshot` has gone out; answers before that
    /// were not asked for and are ignored).
    deadline: Option<Instant>,
    /// The retrieve-delay timer, then the retrieve-timeout timer; cancelled when the snapshot is
    /// reported.
    timer: Option<SpawnHandle>,
    /// One slot per branch: `Some(Ok)` a finished record, `Some(Err)` why there is none.
    answers: Vec<Option<Result<LocalSnapshot, String>>>,
}

/// The actor that runs snapshots of a bank of original-schema branches.
pub struct CompatController {
    config: ControllerConfig,
    compat: CompatConfig,
    /// Branch names in file order.
    names: Vec<String>,
    /// Persistent mode: one per branch, in file order. Per-command mode: empty.
    links: Vec<Link>,
    rng: StdRng,
    next_id: u32,
    /// Snapshots started so far.
    started: u32,
    /// When the next scheduled snapshot is due.
    ticker: Ticker,
    in_flight: BTreeMap<u32, Pending>,
    /// Finished reports, handed out in id order, and the run's outcome.
    reports: Reports,
}

impl CompatController {
    /// Starts the actor; in persistent mode on `links` (one connected stream per branch, in
    /// file order, each with the `InitBranch` to send first on it).
    fn start(
        config: ControllerConfig,
        compat: CompatConfig,
        links: Vec<(TcpStream, Body)>,
        on_report: Box<dyn FnMut(&SnapshotReport)>,
        done: oneshot::Sender<Result<RunSummary, ControllerError>>,
    ) -> Addr<Self> {
        CompatController::create(move |ctx| {
            let rng = match config.seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => rand::make_rng(),
            };
            let config_interval = config.interval;
            let mut controller = CompatController {
                names: config.branches.iter().map(|b| b.name.clone()).collect(),
                links: Vec::with_capacity(links.len()),
                config,
                compat,
                rng,
                next_id: 1,
                started: 0,
                ticker: Ticker::new(config_interval),
                in_flight: BTreeMap::new(),
                reports: Reports::new(1, on_report, done),
            };
            for (index, (stream, init)) in links.into_iter().enumerate() {
                controller.links.push(Link {
                    outbox: None,
                    generation: 0,
                    down: None,
                });
                controller.install(index, stream, ctx);
                controller.send(index, init, ctx);
            }
            controller
        })
    }

    /// Makes `stream` the current persistent connection of branch `index`.
    fn install(&mut self, index: usize, stream: TcpStream, ctx: &mut Context<Self>) {
        let link = &mut self.links[index];
        link.generation += 1;
        let generation = link.generation;
        let (read_half, write_half) = stream.into_split();
        let frames = FramedRead::new(read_half, FrameCodec::new(self.config.max_frame))
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
        let writing = actix::fut::wrap_future::<_, Self>(write_loop(outbox.clone(), write_half));
        ctx.spawn(writing.map(move |result, controller, ctx| {
            let reason = match result {
                Ok(()) => "connection closed".to_string(),
                Err(err) => format!("write failed: {err}"),
            };
            controller.link_lost(index, generation, reason, ctx);
        }));
        link.outbox = Some(outbox);
    }

    /// Sends a command that expects no answer to branch `index`: on its persistent connection
    /// (dropped if that is down), or on a new connection of its own.
    fn send(&mut self, index: usize, body: Body, ctx: &mut Context<Self>) {
        if let Some(link) = self.links.get(index) {
            if let Some(outbox) = &link.outbox {
                outbox.push(body);
            }
            return;
        }
        let branch = self.config.branches[index].clone();
        let kind = wire::body_kind(&body);
        let deadline = Instant::now() + self.compat.retrieve_delay.max(Duration::from_secs(1));
        let sending = async move { send_one(branch.addr, body, deadline).await };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(sending).map(
            move |result, controller, ctx| match result {
                Ok(None) => {}
                Ok(Some(reason)) => {
                    let name = controller.names[index].clone();
                    controller.fail(ControllerError::Refused { name, reason }, ctx);
                }
                Err(reason) => warn!(
                    "could not send {kind} to branch {}: {reason}",
                    controller.names[index]
                ),
            },
        ));
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
            warn!("{MAX_IN_FLIGHT} snapshots are still in progress: skipping this tick");
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

    /// Sends `InitSnapshot` to a random branch and schedules the retrieval after the delay.
    fn start_snapshot(&mut self, ctx: &mut Context<Self>) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.started += 1;
        let live: Vec<usize> = (0..self.names.len())
            .filter(|&i| self.links.get(i).is_none_or(|link| link.outbox.is_some()))
            .collect();
        let initiator = if live.is_empty() {
            self.rng.random_range(0..self.names.len())
        } else {
            live[self.rng.random_range(0..live.len())]
        };
        debug!("snapshot {id}: starting at {}", self.names[initiator]);
        self.send(
            initiator,
            Body::InitSnapshot(pb::InitSnapshot { snapshot_id: id }),
            ctx,
        );
        let timer = ctx.run_later(self.compat.retrieve_delay, move |controller, ctx| {
            controller.retrieve(id, ctx)
        });
        self.in_flight.insert(
            id,
            Pending {
                initiator,
                started: Instant::now(),
                deadline: None,
                timer: Some(timer),
                answers: vec![None; self.names.len()],
            },
        );
        let summary = &mut self.reports.summary;
        summary.max_in_flight = summary.max_in_flight.max(self.in_flight.len());
    }

    /// The retrieve delay is over: asks every branch for its record of snapshot `id`.
    fn retrieve(&mut self, id: u32, ctx: &mut Context<Self>) {
        let timeout = self.config.retrieve_timeout;
        let deadline = Instant::now() + timeout;
        let expiring = ctx.run_later(timeout, move |controller, ctx| controller.expire(id, ctx));
        let Some(snapshot) = self.in_flight.get_mut(&id) else {
            return;
        };
        snapshot.deadline = Some(deadline);
        snapshot.timer = Some(expiring);
        for index in 0..self.names.len() {
            self.request_record(index, id, ctx);
        }
    }

    /// Sends `RetrieveSnapshot(id)`, without `wait_ms`, to branch `index`: on its persistent
    /// connection if it is up (else it goes when the connection is back), or on a new one.
    fn request_record(&mut self, index: usize, id: u32, ctx: &mut Context<Self>) {
        let Some(deadline) = self
            .in_flight
            .get(&id)
            .and_then(|snapshot| snapshot.deadline)
        else {
            return;
        };
        let request = Body::RetrieveSnapshot(pb::RetrieveSnapshot {
            snapshot_id: id,
            wait_ms: 0,
        });
        if let Some(link) = self.links.get(index) {
            if let Some(outbox) = &link.outbox {
                outbox.push(request);
            }
            return;
        }
        let addr = self.config.branches[index].addr;
        let asking = ask(addr, id, deadline, self.config.max_frame);
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(asking).map(
                move |result, controller, ctx| match result {
                    Ok(local) => {
                        if local.snapshot_id != id {
                            warn!(
                                "branch {} answered for snapshot {} on the connection that asked for snapshot {id}",
                                controller.names[index], local.snapshot_id
                            );
                        }
                        controller.on_record(index, local, ctx);
                    }
                    Err(reason) => controller.on_failure(index, id, reason, ctx),
                },
            ),
        );
    }

    /// A record from branch `index`, filed under the snapshot it names.
    fn on_record(&mut self, index: usize, local: LocalSnapshot, ctx: &mut Context<Self>) {
        let id = local.snapshot_id;
        let slot = self
            .in_flight
            .get_mut(&id)
            .filter(|snapshot| snapshot.deadline.is_some())
            .map(|snapshot| &mut snapshot.answers[index])
            .filter(|slot| slot.is_none());
        let Some(slot) = slot else {
            debug!(
                "branch {} answered for snapshot {id}, which is not awaited from it; ignored",
                self.names[index]
            );
            return;
        };
        *slot = Some(judge(local));
        self.try_finish(id, ctx);
    }

    /// A per-command request for snapshot `id` to branch `index` got no record.
    fn on_failure(&mut self, index: usize, id: u32, reason: String, ctx: &mut Context<Self>) {
        let Some(snapshot) = self.in_flight.get_mut(&id) else {
            return;
        };
        if snapshot.answers[index].is_none() {
            snapshot.answers[index] = Some(Err(reason));
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
            if answer.is_none() {
                let down = self.links.get(index).and_then(|link| link.down.as_ref());
                *answer = Some(Err(match down {
                    Some((since, reason)) => format!(
                        "unreachable for the last {} ms ({reason}); no answer within {timeout} ms",
                        since.elapsed().as_millis()
                    ),
                    None => format!("did not answer within {timeout} ms"),
                }));
            }
        }
        self.try_finish(id, ctx);
    }

    /// Persistent connection `generation` of branch `index` is gone: redial it.
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
            "lost the connection to branch {}: {reason}; reconnecting",
            self.names[index]
        );
        link.down = Some((Instant::now(), reason));
        let branch = self.config.branches[index].clone();
        let redialling = async move {
            let started = Instant::now();
            let mut last_warning = started;
            let mut backoff = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY);
            loop {
                match TcpStream::connect(branch.addr).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        return stream;
                    }
                    Err(err) if last_warning.elapsed() >= Duration::from_secs(5) => {
                        warn!(
                            "still trying to reach branch {} at {} after {} s: {err}",
                            branch.name,
                            branch.addr,
                            started.elapsed().as_secs()
                        );
                        last_warning = Instant::now();
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(backoff.next_pause()).await;
            }
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(redialling)
                .map(move |stream, controller, ctx| controller.reconnected(index, stream, ctx)),
        );
    }

    /// Branch `index` is reachable again: re-sends the retrievals still unanswered by it.
    fn reconnected(&mut self, index: usize, stream: TcpStream, ctx: &mut Context<Self>) {
        if self.reports.over() {
            return;
        }
        self.install(index, stream, ctx);
        self.reports.summary.reconnects += 1;
        if let Some((since, _)) = self.links[index].down.take() {
            info!(
                "reconnected to branch {} after {} ms (a plain reconnect: a branch that serves only its first connection will not answer on this one)",
                self.names[index],
                since.elapsed().as_millis()
            );
        }
        let unanswered: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, snapshot)| {
                snapshot.deadline.is_some() && snapshot.answers[index].is_none()
            })
            .map(|(&id, _)| id)
            .collect();
        for id in unanswered {
            self.request_record(index, id, ctx);
        }
    }

    /// Ends the run with `error`.
    fn fail(&mut self, error: ControllerError, ctx: &mut Context<Self>) {
        self.reports.fail(error);
        ctx.stop();
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
        self.reports.stop(unfinished);
        ctx.stop();
    }

    /// Reports snapshot `id` if every branch has answered, then emits what is in order.
    fn try_finish(&mut self, id: u32, ctx: &mut Context<Self>) {
        let complete = self
            .in_flight
            .get(&id)
            .is_some_and(|snapshot| snapshot.answers.iter().all(Option::is_some));
        if !complete {
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
            ctx.run_later(Duration::ZERO, |controller, ctx| {
                controller.fill_pipeline(ctx)
            });
        }
    }
}

impl Actor for CompatController {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(stop) = self.config.stop.clone() {
            let stopping = async move { stop.cancelled().await };
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(stopping)
                    .map(|(), controller, ctx| controller.stop_early(ctx)),
            );
        }
        if self.config.interval.is_zero() {
            self.fill_pipeline(ctx);
        } else {
            self.ticker = Ticker::new(self.config.interval);
            self.tick(ctx);
        }
    }
}

impl StreamHandler<LinkEvent> for CompatController {
    fn handle(&mut self, event: LinkEvent, ctx: &mut Context<Self>) {
        match event {
            LinkEvent::Frame {
                index,
                generation,
                frame,
            } => {
                if self.links[index].generation != generation {
                    return;
                }
                let name = &self.names[index];
                match frame.map(|frame| frame.branch_message) {
                    Ok(Some(Body::ReturnSnapshot(pb::ReturnSnapshot { local_snapshot }))) => {
                        self.on_record(index, local_snapshot.unwrap_or_default(), ctx);
                    }
                    Ok(Some(Body::Refusal(pb::Refusal { reason, .. }))) => {
                        let name = name.clone();
                        self.fail(ControllerError::Refused { name, reason }, ctx);
                    }
                    Ok(Some(other)) => warn!(
                        "branch {name} sent {} on the controller connection; ignored",
                        wire::body_kind(&other)
                    ),
                    Ok(None) => {
                        warn!("branch {name} sent a frame with no known message; ignored")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_original_branch_record_without_status_reads_as_final() {
        let local = LocalSnapshot {
            snapshot_id: 3,
            balance: 10,
            channel_state: vec![1, 2],
            ..Default::default()
        };
        assert_eq!(judge(local.clone()), Ok(local));
    }

    #[test]
    fn a_record_that_is_not_final_is_no_record() {
        for status in [
            pb::SnapshotStatus::Recording,
            pb::SnapshotStatus::UnknownSnapshot,
            pb::SnapshotStatus::CutShort,
            pb::SnapshotStatus::Discarded,
            pb::SnapshotStatus::AlreadyRetrieved,
        ] {
            let local = LocalSnapshot {
                status: status as i32,
                ..Default::default()
            };
            assert!(judge(local).is_err(), "{status:?}");
        }
    }
}
