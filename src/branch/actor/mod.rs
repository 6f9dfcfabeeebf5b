//! [`BranchActor`]: owns a branch's [`BranchCore`] and carries its decisions to the network.
//!
//! Every frame from every connection arrives here in an [`InboundBatch`] through the actor's
//! one mailbox, so per-connection FIFO order reaches the core intact. The core decides the
//! snapshot rules and [`crate::core::channel`] the exactly-once rules of each peer channel; the
//! actor carries frames and effects, and (for now) still decides the rules around them: what a
//! connection may do to a channel (`channels`), the record cap (`recording`), and what waits
//! for which commit (`durability`).
//!
//! `impl BranchActor` is split by what it handles:
//! - `admission`: what a new connection's first frame makes it, the handshakes, parking before
//!   `InitBranch`, dialling (and redialling), shutting down.
//! - `channels`: the peer channels: splicing a (re)connection onto a channel, resending what the
//!   peer lacks, positions and acknowledgements, losing a peer only after its grace period.
//! - `commands`: the controller's commands: `InitBranch`, `InitSnapshot`, `RetrieveSnapshot`.
//! - `lease`: the controller lease: which one controller connection a bank with a secret obeys.
//! - `recording`: the core's effects: recorders, markers, money found in transit.
//! - `durability`: with a store, group commit and the rule that nothing leaves the branch before
//!   what it depends on is durable; restoring the bank from the store after a crash.
//! - `generator`: the random transfer generator.

mod admission;
mod channels;
mod commands;

pub use commands::MAX_RETRIEVE_WAIT;
mod durability;
mod generator;
mod lease;
mod recording;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use actix::prelude::*;
use log::info;
use tokio::net::tcp::OwnedWriteHalf;

use super::connection::FrameReader;
use super::recorder::{Reply, SnapshotRecorder};
use super::responses::AnsweredRecords;
use super::traffic::{Pause, Traffic};
use super::{BranchConfig, listener};
use crate::auth::Secret;
use crate::core::{
    BranchCore, Channel, Effect, IdSet, InTransit, ReceiveCursor, SendWindow, SnapshotId,
};
use crate::outbox::Outbox;
use crate::wire::Body;

/// Identifies one accepted or dialled TCP stream, so that frames or a close from a connection
/// that has since been replaced are recognised as stale.
pub type ConnId = u64;

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

/// A controller closed its half of a connection: it sends nothing more, but may still be
/// reading the answers to what it asked (an original-schema controller asks, half-closes and
/// reads). The branch closes the connection once no answer is owed on it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ControllerDoneAsking {
    pub conn: ConnId,
}

/// A recorder handed over its finished record and stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecorderRetired {
    pub id: SnapshotId,
    /// It retired unretrieved (kept too long).
    pub discarded: bool,
    /// The finished record's answer, as handed to the controller.
    pub answer: Option<crate::wire::pb::return_snapshot::LocalSnapshot>,
}

/// Decoded frames from one connection, in arrival order: whatever one read produced, so a busy
/// connection costs one actor message per read rather than per frame. From a controller it
/// comes even when the read held only heartbeats (`bodies` empty): they renew its lease.
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
    /// Peers whose channel is connected and resumed.
    pub connected_peers: usize,
    /// Snapshots still recording.
    pub snapshots_in_progress: usize,
    /// Snapshot records kept, waiting to be retrieved.
    pub records_kept: usize,
    /// Frames sent to peers and not acknowledged yet, all channels together.
    pub unacked_frames: usize,
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

/// The connection currently carrying a peer channel.
struct PeerLink {
    /// Which stream it is; frames and closes from older streams are stale.
    conn: ConnId,
    /// Frames for this stream, in order.
    outbox: Outbox,
    /// The peer's `Resume` has arrived and what it lacked was resent: new frames go out live.
    /// Before that they only enter the window (and go out with the resend).
    resumed: bool,
}

/// One other branch of the bank, and the two directed channels with it.
struct Peer {
    /// Its name, for logs.
    name: String,
    /// Where to dial it.
    addr: SocketAddr,
    /// Every frame sent to it and not acknowledged, with its position: resent after a
    /// reconnect. Exists before any connection, so early markers wait here.
    window: SendWindow,
    /// How far this branch has delivered the peer's frames.
    cursor: ReceiveCursor,
    /// The connection carrying the channel, if one is up.
    link: Option<PeerLink>,
    /// Whether this branch opens the connection (its name sorts lower), so that each pair has
    /// exactly one connection.
    we_dial: bool,
    /// A dial loop is running for this peer.
    dialling: bool,
    /// The peer's incarnation, from its first `Resume`: a later connection from another
    /// incarnation is a restarted branch that lost its state, and is not spliced on.
    incarnation: Option<u64>,
    /// When the connection went down (`None` while it is up or was never up).
    down_since: Option<Instant>,
    /// The grace timer that declares the channel lost if the peer does not come back.
    grace: Option<SpawnHandle>,
    /// Why this branch stopped dialling the peer: only a peer that proved the cluster secret
    /// can stop it, by telling it that retrying cannot help (it is itself a new incarnation).
    /// `None` for a peer this branch does not dial.
    stopped_dialling: Option<String>,
    /// The pauses between dial attempts while connections keep failing; starts over once a
    /// connection resumes the channel.
    redial: crate::backoff::Backoff,
    /// The last connection did not resume the channel (refused, a protocol error, closed early):
    /// the next dial waits for `redial`'s next pause instead of starting at once.
    redial_pending_pause: bool,
}

impl Peer {
    /// A peer with no connection yet: channel state `window` and `cursor` (fresh, or restored
    /// from the store) and the incarnation it last resumed with, if known.
    fn new(
        me: &str,
        entry: crate::config::BranchEntry,
        window: SendWindow,
        cursor: ReceiveCursor,
        incarnation: Option<u64>,
    ) -> Self {
        Self {
            we_dial: me < entry.name.as_str(),
            name: entry.name,
            addr: entry.addr,
            window,
            cursor,
            link: None,
            dialling: false,
            incarnation,
            down_since: None,
            grace: None,
            stopped_dialling: None,
            redial: admission::redial_backoff(),
            redial_pending_pause: false,
        }
    }

    /// Whether frames can go out to the peer now.
    fn is_live(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|link| link.resumed && link.outbox.is_open())
    }
}

/// A controller connection.
struct ControllerLink {
    outbox: Outbox,
    /// Requests held on this connection, waiting for their answer.
    held: usize,
    /// The controller closed its half: close ours once no answer is owed.
    done_asking: bool,
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
    /// Whether the bank has a cluster secret (authenticated peers): only a bank without one
    /// accepts unnumbered frames (an original-schema sender).
    authenticated: bool,
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
    /// The port this branch actually listens on, checked against its entry in `InitBranch`.
    port: u16,
    /// This process's identity towards its peers (random, never 0): a branch restarted without
    /// its state is a new incarnation, and its peers refuse to splice it onto the old channels.
    incarnation: u64,
    /// The random transfer generator.
    traffic: Traffic,
    /// `None` until `InitBranch`.
    bank: Option<Bank>,
    /// Peers that connected before `InitBranch`, admitted in arrival order once it comes.
    parked: Vec<ParkedPeer>,
    controllers: HashMap<ConnId, ControllerLink>,
    early_waiters: HashMap<SnapshotId, Vec<EarlyWaiter>>,
    /// Finished records already handed to a controller, kept (bounded) so that a controller
    /// whose connection dropped before the answer arrived can ask again.
    answered: AnsweredRecords,
    /// Snapshots whose record was discarded unretrieved (record cap or age), so a late request
    /// is told so rather than "never seen".
    discarded: IdSet,
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
    /// An acknowledgement flush is scheduled.
    ack_scheduled: bool,
    /// The branch's store (`--data-dir`), if it has one.
    store: Option<crate::store::Store>,
    /// The state read from the store at start, restored when the actor starts.
    restored: Option<crate::store::Restored>,
    /// With a store: what is staged for the next commit and what waits for one.
    durable: Option<durability::Durable>,
    /// Ctrl-C or SIGTERM: no new transfers; what is queued is flushed and the connections closed.
    shutting_down: bool,
    /// Set (with the reason) when the branch cannot go on with its state: the `branch` command
    /// watches it and exits.
    halted: tokio::sync::watch::Sender<Option<String>>,
    /// Which controller connection may command this branch (in a bank with a secret), so two
    /// controllers never number snapshots from the same free id.
    lease: lease::ControllerLease,
}

impl BranchActor {
    /// A branch listening on `port`: not initialised yet, or (with `restored`) resuming the
    /// state its `store` held.
    pub fn new(
        settings: BranchConfig,
        port: u16,
        store: Option<crate::store::Store>,
        restored: Option<crate::store::Restored>,
    ) -> Self {
        let traffic = Traffic::new(settings.min_interval, settings.max_interval, settings.seed);
        let settings_secret = settings.secret.clone();
        let lease = lease::ControllerLease::new(settings.peer_timeout);
        Self {
            lease,
            name: settings.name.as_str().into(),
            settings,
            port,
            incarnation: rand::random::<u64>().max(1),
            traffic,
            bank: None,
            parked: Vec::new(),
            controllers: HashMap::new(),
            early_waiters: HashMap::new(),
            answered: AnsweredRecords::default(),
            discarded: IdSet::new(),
            next_conn: 0,
            effects: Vec::new(),
            observed: HashMap::new(),
            secret: settings_secret,
            controller_handshakes: 0,
            peer_handshakes: 0,
            highest_snapshot: None,
            ack_scheduled: false,
            store,
            restored,
            durable: None,
            shutting_down: false,
            halted: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Becomes `Some(reason)` if the branch halts because it cannot go on with its state (the
    /// stored state cannot be restored, or the store lost a commit), so whoever runs it can stop
    /// the process with that reason.
    pub fn halted(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.halted.subscribe()
    }

    fn new_conn_id(&mut self) -> ConnId {
        self.next_conn += 1;
        self.next_conn
    }

    fn on_frame(&mut self, source: Source, body: Body, ctx: &mut Context<Self>) {
        match source {
            Source::Controller(conn) => self.on_controller_frame(conn, body.into(), ctx),
            Source::Peer { channel, conn } => self.on_peer_frame(channel, conn, body.into(), ctx),
        }
    }
}

impl Actor for BranchActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(restored) = self.restored.take() else {
            return;
        };
        if let Some(store) = &self.store {
            self.durable = Some(durability::Durable::new(store.handle(), 0));
        }
        if let Err(reason) = self.restore(restored, ctx) {
            let reason = format!(
                "the store's state cannot be restored: {reason}; refusing to start with a guessed state"
            );
            log::error!("{}: {reason}", self.name);
            self.bank = None;
            self.shut_down();
            self.halted.send_replace(Some(reason));
        }
    }
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
                if self.lease.release(conn) {
                    info!(
                        "{}: the controller lease ends with its holder's connection",
                        self.name
                    );
                }
            }
            Source::Peer { channel, conn } => self.peer_link_closed(channel, conn, ctx),
        }
    }
}

impl Handler<ControllerDoneAsking> for BranchActor {
    type Result = ();

    fn handle(&mut self, msg: ControllerDoneAsking, _ctx: &mut Context<Self>) {
        if let Some(link) = self.controllers.get_mut(&msg.conn) {
            link.done_asking = true;
        }
        // It can send no more commands: the next controller need not wait for the answers.
        if self.lease.release(msg.conn) {
            info!(
                "{}: the controller lease ends: its holder closed its half of the connection",
                self.name
            );
        }
        self.close_if_nothing_owed(msg.conn);
    }
}

impl Handler<RecorderRetired> for BranchActor {
    type Result = ();

    fn handle(&mut self, msg: RecorderRetired, ctx: &mut Context<Self>) {
        if msg.discarded {
            self.discarded.insert(msg.id);
        }
        if let Some(answer) = &msg.answer {
            self.answered.keep(answer);
        }
        if let Some(durable) = self.durable.as_mut() {
            if msg.discarded {
                durable.remove_record(msg.id);
            } else {
                durable.retire_record(msg.id);
            }
        }
        if let Some(bank) = self.bank.as_mut() {
            bank.recorders.remove(&msg.id);
            // A record discarded unfinished must not go on collecting transfers.
            bank.core.abandon(msg.id);
        }
        self.commit_if_needed(ctx);
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
        if let Source::Controller(conn) = msg.source {
            self.lease.heard(conn, Instant::now());
        }
        for body in msg.bodies {
            self.on_frame(msg.source, body, ctx);
        }
        self.flush_observed();
        if let Source::Peer { channel, .. } = msg.source {
            self.acknowledge(channel, ctx);
            self.resume(Pause::Funds, ctx);
        }
        self.commit_if_needed(ctx);
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
            connected_peers: bank.peers.iter().filter(|peer| peer.is_live()).count(),
            snapshots_in_progress: bank.core.snapshots_in_progress(),
            records_kept: bank.recorders.len(),
            unacked_frames: bank.peers.iter().map(|peer| peer.window.unacked()).sum(),
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
