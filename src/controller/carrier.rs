//! [`Carrier`]: the actix half both controllers share, carrying the [`Collector`]'s decisions:
//! the schedule (ticks, back to back), the retrieve-timeout timers, handing reports out, the end
//! of a run, and the persistent links (each connection's read half one of the actor's streams,
//! tagged with the branch's index and the connection's generation and followed by a `Closed`
//! event; its write half an [`Outbox`]).
//!
//! Each controller implements only what its connection pattern needs: how a snapshot's
//! commands go out ([`Carrier::begin_snapshot`]), what a frame on a link means
//! ([`Carrier::on_body`]) and how a lost link comes back ([`Carrier::on_link_down`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::StreamExt;
use log::{debug, info, warn};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::collector::{Answer, Collector};
use super::schedule::Ticker;
use super::{ControllerConfig, ControllerError, RunSummary, SnapshotReport};
use crate::config::BranchEntry;
use crate::dial::Warning;
use crate::handshake::Authenticated;
use crate::outbox::{Outbox, write_loop};
use crate::wire::pb::return_snapshot::LocalSnapshot;
use crate::wire::{Body, FrameCodec, FrameError, pb};

/// Something that happened on one connection (`generation`) of branch `index`.
pub(super) enum LinkEvent {
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
pub(super) struct Link {
    /// Requests to the branch, in order; `None` while the connection is down.
    pub(super) outbox: Option<Outbox>,
    /// Which connection is current; events from older ones are stale.
    generation: u64,
    /// When a frame was last read on the current connection.
    pub(super) last_read: Instant,
    /// A heartbeat probe went out since the last read.
    pub(super) probed: bool,
}

impl Link {
    /// Which connection is current.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }
}

/// A plain connection, unauthenticated (a bank without a secret from a file, or the
/// original-schema branches of `--compat`), split like an authenticated one.
pub(super) fn plain(stream: TcpStream, max_frame: usize) -> Authenticated {
    let (reader, writer) = stream.into_split();
    Authenticated {
        reader: tokio_util::codec::FramedRead::new(reader, FrameCodec::new(max_frame)),
        writer,
    }
}

/// The warnings of a dial to `branch` that keeps failing.
pub(super) fn warn_unreachable(branch: &BranchEntry) -> impl FnMut(Warning<'_>) + '_ {
    move |warning| {
        warn!(
            "still trying to reach branch {} at {} after {} s: {}",
            branch.name,
            branch.addr,
            warning.after.as_secs(),
            warning.error
        );
    }
}

/// What a controller actor holds for its run, whatever its connection pattern.
pub(super) struct Run {
    pub(super) config: ControllerConfig,
    /// The decisions.
    pub(super) collector: Collector,
    /// Persistent links, one per branch in file order (none in `--compat per-command`).
    pub(super) links: Vec<Link>,
    /// Draws initiators.
    rng: StdRng,
    /// When the next scheduled snapshot is due.
    ticker: Ticker,
    /// The timer of each snapshot in flight (retrieve delay, then retrieve timeout), cancelled
    /// when it is reported so that timers do not accumulate in the actor's context.
    timers: HashMap<u32, SpawnHandle>,
    on_report: Box<dyn FnMut(&SnapshotReport)>,
    /// Where the outcome goes; `None` once it has gone.
    done: Option<oneshot::Sender<Result<RunSummary, ControllerError>>>,
}

impl Run {
    /// A run of `config` numbering snapshots from `first_id` (see [`Collector::new`] for
    /// `ask_again`), handing reports to `on_report` and the outcome to `done`.
    pub(super) fn new(
        config: ControllerConfig,
        first_id: u32,
        ask_again: bool,
        on_report: Box<dyn FnMut(&SnapshotReport)>,
        done: oneshot::Sender<Result<RunSummary, ControllerError>>,
    ) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng(),
        };
        Self {
            collector: Collector::new(&config, first_id, ask_again),
            ticker: Ticker::new(config.interval),
            config,
            links: Vec::new(),
            rng,
            timers: HashMap::new(),
            on_report,
            done: Some(done),
        }
    }

    /// Branch `index`'s name.
    pub(super) fn name(&self, index: usize) -> &str {
        &self.collector.names()[index]
    }

    /// Whether the run's outcome has been given.
    pub(super) fn over(&self) -> bool {
        self.done.is_none()
    }

    fn finish(&mut self, outcome: Result<RunSummary, ControllerError>) {
        if let Some(done) = self.done.take() {
            if let Err(error) = &outcome {
                log::error!("{error}");
            }
            let _ = done.send(outcome);
        }
    }
}

/// The glue both controllers share; see the module doc.
pub(super) trait Carrier: Actor<Context = Context<Self>> + StreamHandler<LinkEvent> {
    fn run(&mut self) -> &mut Run;

    /// Snapshot `id` has started at branch `initiator`: send its commands, open its retrieval
    /// when due ([`Carrier::open_retrieval`]).
    fn begin_snapshot(&mut self, id: u32, initiator: usize, ctx: &mut Context<Self>);

    /// Branch `index` sent `body` on its current link.
    fn on_body(&mut self, index: usize, body: Body, ctx: &mut Context<Self>);

    /// Branch `index`'s current link went down, for `reason`: bring it back.
    fn on_link_down(&mut self, index: usize, reason: String, ctx: &mut Context<Self>);

    /// Snapshot `id`'s retrieve deadline has passed and its empty slots are about to say so: a
    /// controller holding answers it has not filed yet (the compat driver's) files them now.
    fn before_expiry(&mut self, _id: u32) {}

    /// `report` was handed out (a controller that rolls banks back keeps the latest ok one).
    fn reported(&mut self, _report: &SnapshotReport) {}

    /// Connection `generation` of branch `index` is gone, for `reason`: if it was the current
    /// one, it is marked down and [`Carrier::on_link_down`] brings it back.
    fn link_lost(
        &mut self,
        index: usize,
        generation: u64,
        reason: String,
        ctx: &mut Context<Self>,
    ) {
        if self.drop_link(index, generation, &reason) {
            self.on_link_down(index, reason, ctx);
        }
    }

    /// The run begins: stop early when told to; start snapshots back to back or on the ticks.
    fn begin_run(&mut self, ctx: &mut Context<Self>) {
        if let Some(stop) = self.run().config.stop.clone() {
            let stopping = async move { stop.cancelled().await };
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(stopping)
                    .map(|(), controller, ctx| controller.stop_early(ctx)),
            );
        }
        if self.run().config.interval.is_zero() {
            self.fill_pipeline(ctx);
        } else {
            let run = self.run();
            run.ticker = Ticker::new(run.config.interval);
            self.tick(ctx);
        }
    }

    /// A scheduled tick: starts a snapshot, first skipping ticks that a stall made the
    /// controller miss.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let run = self.run();
        let missed = run.ticker.on_tick();
        if run.collector.on_tick(missed) {
            self.start_snapshot(ctx);
        }
        let run = self.run();
        if !run.collector.started_all() {
            ctx.run_later(run.ticker.wait(), |controller, ctx| controller.tick(ctx));
        }
    }

    /// Back to back (`--interval-ms 0`): keeps the most snapshots in progress the collector
    /// allows until all have started.
    fn fill_pipeline(&mut self, ctx: &mut Context<Self>) {
        while self.run().config.interval.is_zero() && self.run().collector.wants_more() {
            self.start_snapshot(ctx);
        }
    }

    /// Starts a snapshot at an initiator the collector draws.
    fn start_snapshot(&mut self, ctx: &mut Context<Self>) {
        let Run {
            collector,
            links,
            rng,
            ..
        } = self.run();
        let link_up = |index: usize| links.get(index).is_none_or(|link| link.outbox.is_some());
        let draw = |n: usize| rng.random_range(0..n);
        let Some((id, initiator)) = collector.start(Instant::now(), link_up, draw) else {
            return;
        };
        debug!("snapshot {id}: starting at {}", self.run().name(initiator));
        self.begin_snapshot(id, initiator, ctx);
        self.carry(ctx);
    }

    /// Opens snapshot `id`'s retrieval now and sets its retrieve-timeout timer.
    fn open_retrieval(&mut self, id: u32, ctx: &mut Context<Self>) {
        let run = self.run();
        run.collector.open(id, Instant::now());
        let expiring = ctx.run_later(run.config.retrieve_timeout, move |controller, ctx| {
            controller.before_expiry(id);
            controller.run().collector.expire(id, Instant::now());
            controller.carry(ctx);
        });
        self.set_timer(id, expiring);
    }

    /// Makes `timer` snapshot `id`'s timer, cancelled if it is reported first.
    fn set_timer(&mut self, id: u32, timer: SpawnHandle) {
        self.run().timers.insert(id, timer);
    }

    /// Files branch `index`'s answer `local`; the caller then carries the progress.
    fn file_answer(&mut self, index: usize, local: LocalSnapshot) -> Answer {
        let id = local.snapshot_id;
        let run = self.run();
        let answer = run.collector.on_answer(index, local, Instant::now());
        if answer == Answer::Ignored {
            debug!(
                "branch {} answered for snapshot {id}, which is not awaited from it; ignored",
                run.name(index)
            );
        }
        answer
    }

    /// Hands out what the collector has made since the last step; ends a complete run, or
    /// refills the pipeline when snapshots finished back to back.
    fn carry(&mut self, ctx: &mut Context<Self>) {
        let progress = self.run().collector.take_progress();
        for id in &progress.finished {
            if let Some(timer) = self.run().timers.remove(id) {
                ctx.cancel_future(timer);
            }
        }
        for report in &progress.reports {
            (self.run().on_report)(report);
            self.reported(report);
        }
        let run = self.run();
        if run.collector.run_complete() {
            let summary = run.collector.summary.clone();
            run.finish(Ok(summary));
            ctx.stop();
        } else if !progress.finished.is_empty() && run.config.interval.is_zero() {
            // Not directly: starting a snapshot can finish one at once, which would recurse.
            ctx.run_later(Duration::ZERO, |controller, ctx| {
                controller.fill_pipeline(ctx)
            });
        }
    }

    /// Stops the run early: hands out the finished reports and the summary listing what is
    /// still in flight.
    fn stop_early(&mut self, ctx: &mut Context<Self>) {
        let run = self.run();
        if run.over() {
            return;
        }
        let unfinished = run.collector.stop(Instant::now());
        info!(
            "stopping early with {} snapshot(s) in flight",
            unfinished.len()
        );
        for report in run.collector.take_progress().reports {
            (run.on_report)(&report);
        }
        let mut summary = run.collector.summary.clone();
        summary.unfinished = unfinished;
        run.finish(Ok(summary));
        ctx.stop();
    }

    /// Branch `index` refused a command, for `reason`: the run cannot go on.
    fn refused(&mut self, index: usize, reason: String, ctx: &mut Context<Self>) {
        let name = self.run().name(index).to_string();
        self.fail(ControllerError::Refused { name, reason }, ctx);
    }

    /// Branch `index` sent `body`, which means nothing on a controller connection.
    fn ignore(&mut self, index: usize, body: &Body) {
        warn!(
            "branch {} sent {} on the controller connection; ignored",
            self.run().name(index),
            crate::wire::body_kind(body)
        );
    }

    /// Ends the run with `error`.
    fn fail(&mut self, error: ControllerError, ctx: &mut Context<Self>) {
        self.run().finish(Err(error));
        ctx.stop();
    }

    /// Makes `stream` the current connection of branch `index` (a new link past the last).
    fn install(&mut self, index: usize, stream: Authenticated, ctx: &mut Context<Self>) {
        let links = &mut self.run().links;
        if index == links.len() {
            links.push(Link {
                outbox: None,
                generation: 0,
                last_read: Instant::now(),
                probed: false,
            });
        }
        let link = &mut links[index];
        link.generation += 1;
        let generation = link.generation;
        let Authenticated { reader, writer } = stream;
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
        let writing = actix::fut::wrap_future::<_, Self>(write_loop(outbox.clone(), writer));
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

    /// The start of [`Carrier::link_lost`]: whether connection `generation` of branch
    /// `index` was the current one, then marked down for `reason` (false: stale, already down,
    /// or the run is over).
    fn drop_link(&mut self, index: usize, generation: u64, reason: &str) -> bool {
        let run = self.run();
        let over = run.over();
        let link = &mut run.links[index];
        if link.generation != generation || over {
            return false;
        }
        let Some(outbox) = link.outbox.take() else {
            return false;
        };
        outbox.mark_dead();
        run.collector
            .link_down(index, Instant::now(), reason.to_string());
        true
    }

    /// Branch `index` is reachable again over `stream`: installs it and returns how long the
    /// link was down, or `None` when the run is over (and nothing is installed).
    fn relink(
        &mut self,
        index: usize,
        stream: Authenticated,
        ctx: &mut Context<Self>,
    ) -> Option<Duration> {
        if self.run().over() {
            return None;
        }
        self.install(index, stream, ctx);
        let down_for = self.run().collector.link_up(index, Instant::now());
        Some(down_for.unwrap_or_default())
    }

    /// A [`LinkEvent`]: a frame on the current connection goes to [`Carrier::on_body`]; a read
    /// error or the end of the stream loses the link.
    fn on_link_event(&mut self, event: LinkEvent, ctx: &mut Context<Self>) {
        match event {
            LinkEvent::Frame {
                index,
                generation,
                frame,
            } => {
                let link = &mut self.run().links[index];
                if link.generation != generation {
                    return; // from a connection that has since been replaced
                }
                match frame {
                    Ok(frame) => {
                        link.last_read = Instant::now();
                        link.probed = false;
                        match frame.branch_message {
                            Some(body) => self.on_body(index, body, ctx),
                            None => warn!(
                                "branch {} sent a frame with no known message; ignored",
                                self.run().name(index)
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
}
