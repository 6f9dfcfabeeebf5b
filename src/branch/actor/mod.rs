//! [`BranchActor`]: owns a branch's [`BranchCore`] and carries its decisions to the network.
//!
//! Every frame from every connection arrives here in an [`InboundBatch`] through the actor's
//! one mailbox, so per-connection FIFO order reaches the core intact. The actor classifies
//! connections (controller or peer), parks peers that arrive before `InitBranch` (their frames
//! wait unread in the socket, so nothing is lost or reordered), dials the peers it is responsible
//! for, generates random transfers, and routes the core's effects: markers to outboxes, record
//! updates to the snapshot's [`SnapshotRecorder`]. It contains no algorithm of its own.
//!
//! The `admission` submodule holds the connection side: what a new connection's first frame makes it, the
//! handshakes, parking before `InitBranch`, dialling, and shutting down.

mod admission;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use log::{debug, error, info, warn};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot;

use super::connection::FrameReader;
use super::recorder::{self, Reply, SnapshotRecorder};
use super::responses::ResponseQueue;
use super::traffic::{Pause, Traffic};
use super::{BranchConfig, listener};
use crate::auth::Secret;
use crate::config::BranchEntry;
use crate::core::{BranchCore, Channel, CoreError, Effect, InTransit, SnapshotId, SnapshotRecord};
use crate::outbox::Outbox;
use crate::wire::{self, Body, pb};

/// Identifies one accepted or dialled TCP stream, so that frames or a close from a connection
/// that has since been replaced are recognised as stale.
pub type ConnId = u64;

/// A peer whose outbox holds more than this many unwritten bytes is not sent new transfers until
/// it drains: the sender slows to the pace the connection takes, and a marker never waits behind
/// more than this much traffic.
const TRANSFER_HIGH_WATER: usize = 16 * 1024;

/// Upper bound on how long a `RetrieveSnapshot` may be held waiting for its record.
const MAX_RETRIEVE_WAIT: Duration = Duration::from_secs(60);

/// Upper bound on requests waiting for a snapshot this branch has not begun yet.
const MAX_EARLY_WAITERS: usize = 4096;

/// Upper bound on snapshot records kept (recording, or finished and not yet retrieved). Beyond
/// it the oldest is discarded, so a flood of markers with fresh ids cannot exhaust memory.
const MAX_KEPT_RECORDS: usize = 1024;

/// A controller connection with this many unanswered requests, or this many unwritten bytes of
/// answers, is not reading them: it is closed rather than allowed to pin memory.
const MAX_PENDING_ANSWERS: usize = 4096;
const MAX_ANSWER_BACKLOG: usize = 4 << 20;

/// Which connection a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A controller connection.
    Controller(ConnId),
    /// The connection carrying the channel to and from peer `channel`.
    Peer { channel: Channel, conn: ConnId },
}

/// A new connection and its first frame, from the listener.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Accepted {
    pub first: Body,
    pub reader: FrameReader,
    pub writer: OwnedWriteHalf,
    pub remote: SocketAddr,
}

/// A connection's actor stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectionClosed {
    pub source: Source,
}

/// A recorder handed over its finished record and stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecorderRetired {
    pub id: SnapshotId,
}

/// Decoded frames from one connection, in arrival order: whatever one read produced, so a busy
/// connection costs one actor message per read rather than per frame.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InboundBatch {
    pub source: Source,
    pub bodies: Vec<Body>,
}

/// Time to send the next random transfer.
#[derive(Message)]
#[rtype(result = "()")]
struct SendTransfer;

/// What a parked transfer generator was waiting for has arrived.
#[derive(Message)]
#[rtype(result = "()")]
struct Resume(Pause);

/// Ctrl-C or SIGTERM: stop sending, flush, close. Answers how many bytes are still queued, so
/// the caller can wait for the flush.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Shutdown;

/// A snapshot of the branch's state for tests and diagnostics.
#[derive(Message)]
#[rtype(result = "Option<BranchStatus>")]
pub struct GetStatus;

/// What [`GetStatus`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchStatus {
    /// Current balance.
    pub balance: u64,
    /// Peers with an established connection.
    pub connected_peers: usize,
    /// Snapshots still recording.
    pub snapshots_in_progress: usize,
    /// Snapshot records kept, waiting to be retrieved.
    pub records_kept: usize,
}

/// A peer connection that identified itself before this branch was initialised.
struct ParkedPeer {
    /// When it was parked: it is dropped after a while.
    since: Instant,
    name: String,
    /// The nonce from its `Hello`, which this branch's proof must cover.
    nonce: Vec<u8>,
    reader: FrameReader,
    writer: OwnedWriteHalf,
    remote: SocketAddr,
}

/// One other branch of the bank.
struct Peer {
    /// Its name, for logs.
    name: String,
    /// Where to dial it.
    addr: SocketAddr,
    /// Frames for it, in order; exists before the connection so early markers wait here.
    outbox: Outbox,
    /// The established connection, if any.
    conn: Option<ConnId>,
    /// Whether this branch opens the connection (its name sorts lower), so that each pair has
    /// exactly one connection.
    we_dial: bool,
}

/// A controller connection and the answers owed on it.
struct ControllerLink {
    outbox: Outbox,
    responses: ResponseQueue<pb::return_snapshot::LocalSnapshot>,
}

/// A `RetrieveSnapshot` for a snapshot this branch has not begun yet.
struct EarlyWaiter {
    deadline: Instant,
    reply: Reply,
    /// The timer that answers "unknown" at the deadline; cancelled when the snapshot begins
    /// here, so timers do not pile up in the actor's context (every one of them is polled
    /// whenever the actor wakes).
    timer: SpawnHandle,
}

/// Everything that exists once `InitBranch` has arrived.
struct Bank {
    core: BranchCore,
    /// Peers in `all_branches` order without this branch: index = [`Channel`].
    peers: Vec<Peer>,
    /// Peer names by channel, shared with every recorder to name channels in its answers.
    peer_names: Rc<[String]>,
    by_name: HashMap<String, Channel>,
    /// The recorder of every snapshot begun here and not yet retrieved.
    recorders: HashMap<SnapshotId, Addr<SnapshotRecorder>>,
}

/// Peer `channel` of `bank`, once the bank exists. A function of the field rather than a
/// method, so that other fields of the actor stay usable while the peer is borrowed.
fn peer_mut(bank: &mut Option<Bank>, channel: Channel) -> Option<&mut Peer> {
    bank.as_mut().and_then(|bank| bank.peers.get_mut(channel))
}

/// The actor that owns one branch.
pub struct BranchActor {
    name: Rc<str>,
    settings: BranchConfig,
    /// The random transfer generator.
    traffic: Traffic,
    /// `None` until `InitBranch`.
    bank: Option<Bank>,
    /// Peers that connected before `InitBranch`, admitted in arrival order once it comes.
    parked: Vec<ParkedPeer>,
    controllers: HashMap<ConnId, ControllerLink>,
    early_waiters: HashMap<SnapshotId, Vec<EarlyWaiter>>,
    next_conn: ConnId,
    /// Reused buffer for the core's effects, so handling a message allocates nothing.
    effects: Vec<Effect>,
    /// Transfers found in transit and not yet handed to their recorder: sent as one message per
    /// snapshot at the end of each inbound batch (and before anything else for that recorder).
    observed: HashMap<SnapshotId, Vec<InTransit>>,
    /// The cluster secret: from `--secret-file`, else from `InitBranch`. `None` until known.
    secret: Option<Secret>,
    /// Controller handshakes in progress (capped: each holds a connection).
    controller_handshakes: usize,
    /// Peer handshakes in progress (capped likewise).
    peer_handshakes: usize,
    /// The highest snapshot id this branch has recorded, so an attaching controller can pick
    /// fresh ids.
    highest_snapshot: Option<SnapshotId>,
    /// Ctrl-C or SIGTERM: no new transfers; what is queued is flushed and the connections closed.
    shutting_down: bool,
}

impl BranchActor {
    /// A branch that has not been initialised yet.
    pub fn new(settings: BranchConfig) -> Self {
        let traffic = Traffic::new(settings.min_interval, settings.max_interval, settings.seed);
        let settings_secret = settings.secret.clone();
        Self {
            name: settings.name.as_str().into(),
            settings,
            traffic,
            bank: None,
            parked: Vec::new(),
            controllers: HashMap::new(),
            early_waiters: HashMap::new(),
            next_conn: 0,
            effects: Vec::new(),
            observed: HashMap::new(),
            secret: settings_secret,
            controller_handshakes: 0,
            peer_handshakes: 0,
            highest_snapshot: None,
            shutting_down: false,
        }
    }

    fn new_conn_id(&mut self) -> ConnId {
        self.next_conn += 1;
        self.next_conn
    }

    // ---- connections -------------------------------------------------------------------

    // ---- controller commands -----------------------------------------------------------

    fn on_controller_frame(&mut self, conn: ConnId, body: Body, ctx: &mut Context<Self>) {
        match body {
            Body::InitBranch(init) => {
                // Only reachable on an attached (authenticated) controller connection to a
                // branch that has a --secret-file and no bank yet.
                let result = self
                    .secret_for(&init, true)
                    .and_then(|secret| self.init(init, secret, ctx));
                if let Err(reason) = result {
                    warn!("{}: InitBranch refused: {reason}", self.name);
                }
            }
            Body::InitSnapshot(pb::InitSnapshot { snapshot_id }) => {
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
            Body::RetrieveSnapshot(pb::RetrieveSnapshot {
                snapshot_id,
                wait_ms,
            }) => self.retrieve(conn, snapshot_id, wait_ms, ctx),
            other => warn!(
                "{}: the controller connection sent {}; only InitBranch, InitSnapshot and RetrieveSnapshot are accepted there; ignored",
                self.name,
                wire::body_kind(&other)
            ),
        }
    }

    /// Initialises the bank from `InitBranch` with its `secret`: peers, ledger, dialling,
    /// parked peers, the transfer generator. Refuses (changing nothing) a second one or a bad
    /// member list.
    fn init(
        &mut self,
        init: pb::InitBranch,
        secret: Secret,
        ctx: &mut Context<Self>,
    ) -> Result<(), String> {
        if self.bank.is_some() {
            return Err("this branch is already initialised".to_string());
        }
        let members =
            wire::bank_members(&self.name, &init.all_branches).map_err(|err| err.to_string())?;
        let balance = u64::from(init.balance);
        let peers: Vec<Peer> = members
            .into_iter()
            .filter(|member| *member.name != *self.name)
            .map(|BranchEntry { name, addr }| Peer {
                we_dial: *self.name < *name,
                name,
                addr,
                outbox: Outbox::new(),
                conn: None,
            })
            .collect();
        info!(
            "{}: initialised with balance {balance} and {} peers",
            self.name,
            peers.len()
        );
        self.secret = Some(secret);
        self.bank = Some(Bank {
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
        self.traffic.set_initial_balance(balance);
        if balance > 0 {
            self.generate(ctx);
        }
        Ok(())
    }

    fn retrieve(&mut self, conn: ConnId, id: SnapshotId, wait_ms: u32, ctx: &mut Context<Self>) {
        // A record still recording answers with what it holds so far: hand it everything first.
        self.flush_observed();
        let Some(link) = self.controllers.get_mut(&conn) else {
            return;
        };
        if link.responses.len() >= MAX_PENDING_ANSWERS
            || link.outbox.backlog() >= MAX_ANSWER_BACKLOG
        {
            warn!(
                "{}: the controller connection is not reading its answers ({} pending, {} bytes unsent); closing it",
                self.name,
                link.responses.len(),
                link.outbox.backlog()
            );
            link.outbox.mark_dead();
            self.controllers.remove(&conn);
            return;
        }
        let seq = link.responses.reserve();
        let (reply, answer) = oneshot::channel();
        let wait = Duration::from_millis(u64::from(wait_ms)).min(MAX_RETRIEVE_WAIT);
        let recorder = self.bank.as_ref().and_then(|bank| bank.recorders.get(&id));
        let known = self.bank.as_ref().is_some_and(|bank| bank.core.knows(id));
        let early_count: usize = self.early_waiters.values().map(Vec::len).sum();
        if let Some(recorder) = recorder {
            recorder.do_send(recorder::Retrieve { wait, reply });
        } else if known || wait.is_zero() || early_count >= MAX_EARLY_WAITERS {
            // Already retrieved, or never seen and the controller will not wait for it.
            let _ = reply.send(wire::unknown_snapshot(id, &self.name));
        } else {
            let timer = ctx.run_later(wait, move |branch, _ctx| branch.expire_early_waiters(id));
            self.early_waiters.entry(id).or_default().push(EarlyWaiter {
                deadline: Instant::now() + wait,
                reply,
                timer,
            });
        }
        let name = self.name.clone();
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(answer).map(move |answer, branch, _ctx| {
                // A recorder that retired before reading the request dropped it: the record was
                // already handed over, so this request is for a snapshot no longer kept.
                let answer = answer.unwrap_or_else(|_| wire::unknown_snapshot(id, &name));
                branch.send_answer(conn, seq, answer);
            }),
        );
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
            let _ = waiter.reply.send(wire::unknown_snapshot(id, &self.name));
        }
    }

    fn send_answer(&mut self, conn: ConnId, seq: u64, answer: pb::return_snapshot::LocalSnapshot) {
        let Some(link) = self.controllers.get_mut(&conn) else {
            return;
        };
        for ready in link.responses.fill(seq, answer) {
            link.outbox.push(Body::ReturnSnapshot(pb::ReturnSnapshot {
                local_snapshot: Some(ready),
            }));
        }
    }

    // ---- peer traffic ------------------------------------------------------------------

    fn on_frame(&mut self, source: Source, body: Body, ctx: &mut Context<Self>) {
        match source {
            Source::Controller(conn) => self.on_controller_frame(conn, body, ctx),
            Source::Peer { channel, conn } => self.on_peer_frame(channel, conn, body, ctx),
        }
    }

    fn on_peer_frame(
        &mut self,
        channel: Channel,
        conn: ConnId,
        body: Body,
        ctx: &mut Context<Self>,
    ) {
        let Some(bank) = self.bank.as_mut() else {
            return;
        };
        let Some(peer) = bank
            .peers
            .get(channel)
            .filter(|peer| peer.conn == Some(conn))
        else {
            return; // a frame from a connection that has since been replaced
        };
        let peer_name = peer.name.clone();
        let result = match body {
            Body::Transfer(pb::Transfer { money, seq }) => bank.core.receive_transfer(
                channel,
                u64::from(money),
                (seq != 0).then_some(seq),
                &mut self.effects,
            ),
            Body::Marker(pb::Marker { snapshot_id }) => {
                bank.core
                    .receive_marker(channel, snapshot_id, &mut self.effects)
            }
            other => {
                warn!(
                    "{}: peer {} sent {}; only Transfer and Marker are accepted from peers; ignored",
                    self.name,
                    peer.name,
                    wire::body_kind(&other)
                );
                return;
            }
        };
        match result {
            Ok(()) => self.apply_effects(ctx),
            // A transfer that cannot be applied leaves the channel's numbering broken for good:
            // the channel cannot be trusted, so it is closed rather than left to refuse
            // everything that follows.
            Err(
                err @ (CoreError::OutOfSequence { .. }
                | CoreError::BalanceOverflow { .. }
                | CoreError::UnknownChannel(_)),
            ) => {
                warn!(
                    "{}: from peer {peer_name}: {err}; closing the connection",
                    self.name
                );
                let peer = &mut bank.peers[channel];
                peer.conn = None;
                peer.outbox.mark_dead();
                // The channel is gone: snapshots stop waiting for its marker.
                if bank.core.lose_channel(channel, &mut self.effects).is_ok() {
                    self.apply_effects(ctx);
                }
            }
            Err(err) => warn!("{}: from peer {peer_name}: {err}; ignored", self.name),
        }
    }

    /// Hands every recorder the transfers found in transit for it since the last flush.
    fn flush_observed(&mut self) {
        if self.observed.is_empty() {
            return;
        }
        let Some(bank) = self.bank.as_ref() else {
            return;
        };
        for (id, observed) in self.observed.drain() {
            if let Some(recorder) = bank.recorders.get(&id) {
                recorder.do_send(recorder::Observed(observed));
            }
        }
    }

    /// Carries out the effects the core just produced, in order.
    fn apply_effects(&mut self, ctx: &mut Context<Self>) {
        let Some(bank) = self.bank.as_mut() else {
            return;
        };
        for effect in self.effects.drain(..) {
            match effect {
                Effect::BeginRecord {
                    id,
                    balance,
                    sent,
                    received,
                } => {
                    if bank.recorders.len() >= MAX_KEPT_RECORDS
                        && let Some(&oldest) = bank.recorders.keys().min()
                    {
                        warn!(
                            "{}: more than {MAX_KEPT_RECORDS} snapshot records kept; discarding snapshot {oldest}",
                            self.name
                        );
                        if let Some(recorder) = bank.recorders.remove(&oldest) {
                            recorder.do_send(recorder::Discard);
                        }
                        bank.core.abandon(oldest);
                    }
                    self.highest_snapshot = Some(self.highest_snapshot.map_or(id, |h| h.max(id)));
                    let record = SnapshotRecord::new(id, balance, sent, received);
                    let recorder = SnapshotRecorder::new(
                        record,
                        self.name.clone(),
                        bank.peer_names.clone(),
                        ctx.address(),
                    )
                    .start();
                    for waiter in self.early_waiters.remove(&id).into_iter().flatten() {
                        ctx.cancel_future(waiter.timer);
                        recorder.do_send(recorder::Retrieve {
                            wait: waiter.deadline.saturating_duration_since(Instant::now()),
                            reply: waiter.reply,
                        });
                    }
                    bank.recorders.insert(id, recorder);
                }
                Effect::SendMarker { to, id } => {
                    bank.peers[to]
                        .outbox
                        .push(Body::Marker(pb::Marker { snapshot_id: id }));
                }
                Effect::RecordTransfer {
                    id,
                    from,
                    seq,
                    amount,
                } => {
                    self.observed
                        .entry(id)
                        .or_default()
                        .push(InTransit { from, seq, amount });
                }
                Effect::ChannelLost { id, from } => {
                    if let Some(recorder) = bank.recorders.get(&id) {
                        if let Some(observed) = self.observed.remove(&id) {
                            recorder.do_send(recorder::Observed(observed));
                        }
                        recorder.do_send(recorder::LoseChannel(from));
                    }
                }
                Effect::FinishRecord { id } => {
                    debug!("{}: finished recording snapshot {id}", self.name);
                    if let Some(recorder) = bank.recorders.get(&id) {
                        if let Some(observed) = self.observed.remove(&id) {
                            recorder.do_send(recorder::Observed(observed));
                        }
                        recorder.do_send(recorder::FinishRecord);
                    }
                }
            }
        }
    }

    /// One turn of the transfer generator: a burst (flat out) or a single transfer, then the
    /// next turn is scheduled, or the generator parks until what it lacks arrives.
    fn generate(&mut self, ctx: &mut Context<Self>) {
        self.traffic.run();
        if self.shutting_down {
            return;
        }
        let mut outcome = Ok(());
        for _ in 0..self.traffic.burst() {
            outcome = self.send_random_transfer();
            if outcome.is_err() {
                break;
            }
        }
        if !self.traffic.flat_out() {
            let delay = self.traffic.next_delay();
            ctx.notify_later(SendTransfer, delay);
            return;
        }
        match outcome {
            Ok(()) => self.schedule_burst(ctx),
            Err(pause) => {
                self.traffic.park(pause);
                if pause == Pause::Room {
                    self.resume_on_drain(ctx);
                }
            }
        }
    }

    /// Schedules the next burst after yielding to the event loop, so that reads and writes run
    /// between bursts.
    fn schedule_burst(&mut self, ctx: &mut Context<Self>) {
        if self.traffic.schedule() {
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(tokio::task::yield_now())
                    .map(|(), branch, ctx| branch.generate(ctx)),
            );
        }
    }

    /// Resumes a generator parked for `pause`.
    fn resume(&mut self, pause: Pause, ctx: &mut Context<Self>) {
        if self.traffic.unpark(pause) {
            self.schedule_burst(ctx);
        }
    }

    /// Asks every connected peer's outbox to report when it drains.
    fn resume_on_drain(&self, ctx: &mut Context<Self>) {
        let Some(bank) = self.bank.as_ref() else {
            return;
        };
        for peer in bank
            .peers
            .iter()
            .filter(|peer| peer.conn.is_some() && peer.outbox.is_open())
        {
            let branch = ctx.address();
            peer.outbox
                .on_drained(Box::new(move || branch.do_send(Resume(Pause::Room))));
        }
    }

    /// Sends one random transfer to a random connected peer with room in its outbox, or says
    /// what is missing.
    fn send_random_transfer(&mut self) -> Result<(), Pause> {
        let Some(bank) = self.bank.as_mut() else {
            return Err(Pause::Peer);
        };
        let count = bank.peers.len();
        let start = self.traffic.start_index(count);
        let mut connected = false;
        let channel = (0..count).map(|i| (start + i) % count).find(|&c| {
            let peer = &bank.peers[c];
            connected |= peer.conn.is_some() && peer.outbox.is_open();
            peer.conn.is_some()
                && peer.outbox.is_open()
                && peer.outbox.backlog() < TRANSFER_HIGH_WATER
        });
        let Some(channel) = channel else {
            return Err(if connected { Pause::Room } else { Pause::Peer });
        };
        let amount = self.traffic.amount();
        let Ok(seq) = bank.core.send_transfer(channel, amount) else {
            return Err(Pause::Funds); // no money, no transfer
        };
        let peer = &bank.peers[channel];
        let money = wire::to_wire_amount(amount);
        // The outbox is open and this actor is the only one touching it, so the push succeeds.
        if !peer
            .outbox
            .push(Body::Transfer(pb::Transfer { money, seq }))
        {
            error!(
                "{}: transfer #{seq} of {amount} to {} could not be queued",
                self.name, peer.name
            );
        }
        Ok(())
    }
}

impl Actor for BranchActor {
    type Context = Context<Self>;
}

impl Handler<Accepted> for BranchActor {
    type Result = ();

    fn handle(&mut self, msg: Accepted, ctx: &mut Context<Self>) {
        self.on_accepted(msg, ctx);
    }
}

impl Handler<ConnectionClosed> for BranchActor {
    type Result = ();

    fn handle(&mut self, msg: ConnectionClosed, ctx: &mut Context<Self>) {
        match msg.source {
            Source::Controller(conn) => {
                if self.controllers.remove(&conn).is_some() {
                    info!("{}: controller connection closed", self.name);
                }
            }
            Source::Peer { channel, conn } => {
                let Some(peer) = peer_mut(&mut self.bank, channel) else {
                    return;
                };
                if peer.conn == Some(conn) {
                    peer.conn = None;
                    warn!(
                        "{}: lost the connection to peer {}; no more transfers to it, and snapshots stop waiting for its markers",
                        self.name, peer.name
                    );
                    if let Some(bank) = self.bank.as_mut()
                        && bank.core.lose_channel(channel, &mut self.effects).is_ok()
                    {
                        self.apply_effects(ctx);
                    }
                }
            }
        }
    }
}

impl Handler<RecorderRetired> for BranchActor {
    type Result = ();

    fn handle(&mut self, msg: RecorderRetired, _ctx: &mut Context<Self>) {
        if let Some(bank) = self.bank.as_mut() {
            bank.recorders.remove(&msg.id);
            // A record discarded unfinished must not go on collecting transfers.
            bank.core.abandon(msg.id);
        }
    }
}

impl Handler<SendTransfer> for BranchActor {
    type Result = ();

    fn handle(&mut self, _msg: SendTransfer, ctx: &mut Context<Self>) {
        self.generate(ctx);
    }
}

impl Handler<Resume> for BranchActor {
    type Result = ();

    fn handle(&mut self, msg: Resume, ctx: &mut Context<Self>) {
        self.resume(msg.0, ctx);
    }
}

impl Handler<InboundBatch> for BranchActor {
    type Result = ();

    fn handle(&mut self, msg: InboundBatch, ctx: &mut Context<Self>) {
        for body in msg.bodies {
            self.on_frame(msg.source, body, ctx);
        }
        self.flush_observed();
        if matches!(msg.source, Source::Peer { .. }) {
            self.resume(Pause::Funds, ctx);
        }
    }
}

impl Handler<Shutdown> for BranchActor {
    type Result = usize;

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Context<Self>) -> usize {
        self.shut_down();
        self.unflushed_bytes()
    }
}

impl Handler<GetStatus> for BranchActor {
    type Result = Option<BranchStatus>;

    fn handle(&mut self, _msg: GetStatus, _ctx: &mut Context<Self>) -> Option<BranchStatus> {
        let bank = self.bank.as_ref()?;
        Some(BranchStatus {
            balance: bank.core.ledger().balance(),
            connected_peers: bank.peers.iter().filter(|peer| peer.conn.is_some()).count(),
            snapshots_in_progress: bank.core.snapshots_in_progress(),
            records_kept: bank.recorders.len(),
        })
    }
}

/// Starts the accept loop on `listener` inside the actor's context, so it ends with the actor.
pub(super) fn start_accepting(
    actor: BranchActor,
    listener: tokio::net::TcpListener,
) -> Addr<BranchActor> {
    let max_frame = actor.settings.max_frame;
    let deadline = actor.settings.handshake_timeout;
    BranchActor::create(move |ctx| {
        let accepting = listener::accept_loop(listener, ctx.address(), max_frame, deadline);
        ctx.spawn(actix::fut::wrap_future::<_, BranchActor>(accepting));
        actor
    })
}
