//! [`CompatController`]: drives branches that speak only the exercise's original schema, the way
//! the exercise's own controllers do (`controller --compat MODE`).
//!
//! What the normal [`super::ControllerActor`] relies on and such branches lack:
//! - `RetrieveSnapshot.wait_ms`: they answer at once with whatever they hold (a partial record,
//!   an empty one), or not at all for a snapshot they have not recorded (closing the
//!   connection, or saying nothing). So this driver first asks
//!   [`CompatConfig::retrieve_delay`] after `InitSnapshot`, without `wait_ms` (a snapbank branch
//!   in a bank without a secret then holds its answer until the record is finished), and asks
//!   again, with capped backoff until the retrieve timeout, every branch whose answer fell
//!   short: the `asking` module's rules. The report says how many asks each branch needed,
//!   and names a record that changed between asks.
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
//! counters is checked by the sum alone, and the verdict says `sum only`. Those decisions, and
//! the words for a status that is no record, are the `collector`'s, the same as the
//! normal controller's; the schedule, timers and persistent links are the `carrier`'s.
//!
//! Lost connections: in persistent mode a lost connection is redialled plainly (no handshake:
//! the branches know none) with capped, jittered backoff, and the retrievals still unanswered on
//! it are asked again. `InitSnapshot` is not sent again (an original branch may start a snapshot
//! it is told twice over again), and a branch that serves only the first connection it accepted
//! will not serve the new one: its snapshots end incomplete. Per-command mode has no connection
//! to lose between commands; a command whose connection fails is retried until the snapshot's
//! deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::StreamExt;
use log::{debug, info, warn};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;

use super::asking::{ANSWER_PATIENCE, Asking, Next};
use super::carrier::{Carrier, LinkEvent, Run, plain, warn_unreachable};
use super::grade;
use super::{AskNotes, ControllerConfig, ControllerError, RunSummary, SnapshotReport};
use crate::backoff::Backoff;
use crate::dial::{Dialer, Never, Step};
use crate::wire::pb::return_snapshot::LocalSnapshot;
use crate::wire::{self, Body, FrameCodec, pb};

/// Default of [`CompatConfig::retrieve_delay`]: longer than a snapshot takes on a bank whose
/// branches send their markers at once (milliseconds), so such a bank is answered at the first
/// ask. Slower branches are asked again until the retrieve timeout, so this needs no tuning.
pub const DEFAULT_RETRIEVE_DELAY: Duration = Duration::from_millis(100);

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
    /// Pause between `InitSnapshot` and the first `RetrieveSnapshot`. A branch whose answer
    /// falls short then is asked again, with capped backoff, until the retrieve timeout.
    pub retrieve_delay: Duration,
    /// Grade the branches (`--grade`): probe each with bad frames before the snapshots, and
    /// ask for every record twice.
    pub grade: bool,
}

impl CompatConfig {
    /// `mode` with the default retrieve delay.
    pub fn new(mode: CompatMode) -> Self {
        Self {
            mode,
            retrieve_delay: DEFAULT_RETRIEVE_DELAY,
            grade: false,
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
    let balances = config.initial_balances();
    let all_branches = wire::branch_list(&config.branches);
    let inits: Vec<Body> = balances
        .into_iter()
        .map(|balance| {
            Body::InitBranch(pb::InitBranch {
                epoch: 0,
                balance: wire::to_wire_amount(balance),
                all_branches: all_branches.clone(),
                secret: Vec::new(),
                controller: 0,
                rolls_back: false,
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
async fn ask_once(
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
    let left = deadline.saturating_duration_since(Instant::now());
    Dialer::new(addr, left, retry_backoff())
        .deadline(deadline)
        .connect(|_| {})
        .await
        .map_err(|gave_up| gave_up.last_error)
}

/// The pauses between two attempts to reach a branch.
fn retry_backoff() -> Backoff {
    Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY)
}

/// The actor that runs snapshots of a bank of original-schema branches.
pub struct CompatController {
    run: Run,
    compat: CompatConfig,
    /// The asks of each snapshot whose retrieval is open, until its answers are filed.
    asking: HashMap<u32, Asking>,
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
            let max_frame = config.max_frame;
            let first_id = config.first_id();
            let mut controller = CompatController {
                run: Run::new(config, first_id, false, on_report, done),
                compat,
                asking: HashMap::new(),
            };
            for (index, (stream, init)) in links.into_iter().enumerate() {
                controller.install(index, plain(stream, max_frame), ctx);
                controller.send(index, init, ctx);
            }
            controller
        })
    }

    /// Sends a command that expects no answer to branch `index`: on its persistent connection
    /// (dropped if that is down), or on a new connection of its own.
    fn send(&mut self, index: usize, body: Body, ctx: &mut Context<Self>) {
        if let Some(link) = self.run.links.get(index) {
            if let Some(outbox) = &link.outbox {
                outbox.push(body);
            }
            return;
        }
        let branch = self.run.config.branches[index].clone();
        let kind = wire::body_kind(&body);
        let deadline = Instant::now() + self.compat.retrieve_delay.max(Duration::from_secs(1));
        let sending = async move { send_one(branch.addr, body, deadline).await };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(sending).map(
            move |result, controller, ctx| match result {
                Ok(None) => {}
                Ok(Some(reason)) => controller.refused(index, reason, ctx),
                Err(reason) => warn!(
                    "could not send {kind} to branch {}: {reason}",
                    controller.run.name(index)
                ),
            },
        ));
    }

    /// The first ask's delay is over: asks every branch for its record of snapshot `id`.
    fn retrieve(&mut self, id: u32, ctx: &mut Context<Self>) {
        if !self.run.collector.in_flight(id) {
            return;
        }
        self.open_retrieval(id, ctx);
        let names = self.run.collector.names().to_vec();
        let mut asking = Asking::new(id, &names, self.run.config.total);
        if self.compat.grade {
            asking = asking.confirming();
        }
        self.asking.insert(id, asking);
        for index in 0..names.len() {
            self.request_record(index, id, ctx);
        }
    }

    /// Sends `RetrieveSnapshot(id)`, without `wait_ms`, to branch `index`: on its persistent
    /// connection (an ask while it is down falls short at once), or on a new one, whose answer
    /// is read until the deadline. Either way the branch is asked again if no answer comes
    /// within [`ANSWER_PATIENCE`].
    fn request_record(&mut self, index: usize, id: u32, ctx: &mut Context<Self>) {
        let Some(deadline) = self.run.collector.deadline(id) else {
            return;
        };
        let Some(asking) = self.asking.get_mut(&id) else {
            return;
        };
        let ask = asking.asking(index);
        let request = Body::RetrieveSnapshot(pb::RetrieveSnapshot {
            snapshot_id: id,
            wait_ms: 0,
        });
        ctx.run_later(ANSWER_PATIENCE, move |controller, ctx| {
            let reason = format!("said nothing within {} ms", ANSWER_PATIENCE.as_millis());
            controller.no_answer(index, id, ask, reason, ctx);
        });
        if let Some(link) = self.run.links.get(index) {
            match &link.outbox {
                Some(outbox) => {
                    outbox.push(request);
                }
                None => {
                    let reason = "its connection was down".to_string();
                    self.no_answer(index, id, ask, reason, ctx);
                }
            }
            return;
        }
        let addr = self.run.config.branches[index].addr;
        let asking = ask_once(addr, id, deadline, self.run.config.max_frame);
        ctx.spawn(actix::fut::wrap_future::<_, Self>(asking).map(
            move |result, controller, ctx| match result {
                Ok(local) => controller.answered(index, id, Some(ask), local, ctx),
                Err(reason) => controller.no_answer(index, id, ask, reason, ctx),
            },
        ));
    }

    /// Branch `index` answered `local` for snapshot `id` (on the connection of its ask number
    /// `ask`, or on its persistent connection when `None`).
    fn answered(
        &mut self,
        index: usize,
        id: u32,
        ask: Option<u32>,
        local: LocalSnapshot,
        ctx: &mut Context<Self>,
    ) {
        let elapsed = self.run.collector.elapsed(id, Instant::now());
        match (self.asking.get_mut(&id), elapsed) {
            (Some(asking), Some(elapsed)) => {
                asking.answered(index, ask, local, elapsed);
                self.decide(id, ctx);
            }
            _ => debug!(
                "branch {} answered for snapshot {id}, which is not being asked for; ignored",
                self.run.name(index)
            ),
        }
    }

    /// Ask number `ask` of branch `index` for snapshot `id` got no record, for `reason`.
    fn no_answer(
        &mut self,
        index: usize,
        id: u32,
        ask: u32,
        reason: String,
        ctx: &mut Context<Self>,
    ) {
        if let Some(asking) = self.asking.get_mut(&id) {
            asking.no_answer(index, ask, reason);
            self.decide(id, ctx);
        }
    }

    /// Acts on what snapshot `id`'s asks say to do next.
    fn decide(&mut self, id: u32, ctx: &mut Context<Self>) {
        let Some(asking) = self.asking.get_mut(&id) else {
            return;
        };
        match asking.next() {
            Next::Wait => {}
            Next::AskAgain(again) => {
                for (index, pause) in again {
                    ctx.run_later(pause, move |controller, ctx| {
                        controller.request_record(index, id, ctx)
                    });
                }
            }
            Next::Done(answers) => {
                if let Some(asking) = self.asking.remove(&id) {
                    self.file(id, &asking, answers);
                    self.carry(ctx);
                }
            }
        }
    }

    /// Files `answers` (one per branch) for snapshot `id`, with what `asking` noted.
    fn file(&mut self, id: u32, asking: &Asking, answers: Vec<Result<LocalSnapshot, String>>) {
        for finding in asking.findings() {
            warn!("{finding}");
        }
        let collector = &mut self.run.collector;
        collector.note(
            id,
            AskNotes {
                asks: asking.asks(),
                findings: asking.findings().to_vec(),
                shortfalls: asking.shortfalls().to_vec(),
            },
        );
        let now = Instant::now();
        for (index, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(local) => {
                    collector.on_answer(index, local, now);
                }
                Err(reason) => collector.on_failure(index, id, reason, now),
            }
        }
    }

    /// Branch `index` is reachable again: re-sends the retrievals still unanswered by it.
    fn reconnected(&mut self, index: usize, stream: TcpStream, ctx: &mut Context<Self>) {
        let stream = plain(stream, self.run.config.max_frame);
        let Some(down_for) = self.relink(index, stream, ctx) else {
            return;
        };
        info!(
            "reconnected to branch {} after {} ms (a plain reconnect: a branch that serves only its first connection will not answer on this one)",
            self.run.name(index),
            down_for.as_millis()
        );
        for id in self.run.collector.awaited_from(index) {
            self.request_record(index, id, ctx);
        }
    }
}

impl Carrier for CompatController {
    fn run(&mut self) -> &mut Run {
        &mut self.run
    }

    /// Files each branch's latest record, or its last shortfall, before the deadline's words.
    fn before_expiry(&mut self, id: u32) {
        if let Some(asking) = self.asking.remove(&id) {
            let answers = asking.conclude();
            self.file(id, &asking, answers);
        }
    }

    /// Sends `InitSnapshot` to the initiator and schedules the retrieval after the delay.
    fn begin_snapshot(&mut self, id: u32, initiator: usize, ctx: &mut Context<Self>) {
        self.send(
            initiator,
            Body::InitSnapshot(pb::InitSnapshot { snapshot_id: id }),
            ctx,
        );
        let timer = ctx.run_later(self.compat.retrieve_delay, move |controller, ctx| {
            controller.retrieve(id, ctx)
        });
        self.set_timer(id, timer);
    }

    fn on_body(&mut self, index: usize, body: Body, ctx: &mut Context<Self>) {
        match body {
            Body::ReturnSnapshot(pb::ReturnSnapshot { local_snapshot }) => {
                let local = local_snapshot.unwrap_or_default();
                self.answered(index, local.snapshot_id, None, local, ctx);
            }
            Body::Refusal(pb::Refusal { reason, .. }) => self.refused(index, reason, ctx),
            other => self.ignore(index, &other),
        }
    }

    /// Branch `index`'s persistent link is down: redial it, plainly.
    fn on_link_down(&mut self, index: usize, reason: String, ctx: &mut Context<Self>) {
        warn!(
            "lost the connection to branch {}: {reason}; reconnecting",
            self.run.name(index)
        );
        let branch = self.run.config.branches[index].clone();
        let dialer = Dialer::new(
            branch.addr,
            self.run.config.connect_timeout,
            retry_backoff(),
        );
        let redialling = async move {
            let plain_connect = |stream| async { Ok::<_, Step<Never>>(stream) };
            dialer
                .forever(plain_connect, warn_unreachable(&branch))
                .await
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(redialling).map(
            move |dialled, controller, ctx| match dialled {
                Ok(stream) => controller.reconnected(index, stream, ctx),
                Err(never) => match never {},
            },
        ));
    }
}

impl Actor for CompatController {
    type Context = Context<Self>;

    /// Begins the run; when grading, first probes every branch with bad frames (after the
    /// `InitBranch` already sent) and keeps how each went for the summary.
    fn started(&mut self, ctx: &mut Context<Self>) {
        if !self.compat.grade {
            return self.begin_run(ctx);
        }
        let probing = futures_util::future::join_all(
            self.run
                .config
                .branches
                .iter()
                .map(|branch| grade::probe_branch(branch.name.clone(), branch.addr)),
        );
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(probing).map(|probes, controller, ctx| {
                controller.run.collector.summary.probes = probes.into_iter().flatten().collect();
                controller.begin_run(ctx);
            }),
        );
    }
}

impl StreamHandler<LinkEvent> for CompatController {
    fn handle(&mut self, event: LinkEvent, ctx: &mut Context<Self>) {
        self.on_link_event(event, ctx);
    }

    /// One branch's stream ending is a [`LinkEvent::Closed`], not the end of the controller.
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}
