//! [`BranchActor`]: the runtime of one branch. It owns the branch's [`BranchNode`] (every rule
//! of the protocol) and everything the node must not do itself: sockets, timers, the store's
//! commit thread, random numbers, logs of I/O.
//!
//! Every frame from every connection arrives here in an [`InboundBatch`] through the actor's
//! one mailbox, so per-connection FIFO order reaches the node intact. Each input is fed to the
//! node, and the node's [`crate::core::node::Ready`] is carried out (`ready`): messages onto the
//! connections' outboxes, answers onto the controllers', commits to the store, timers into the
//! actor's context or the snapshot's recorder, closes, dials.
//!
//! `impl BranchActor` is split by what it carries:
//! - `admission`: what a new connection's first frame makes it, the handshakes, parking before
//!   `InitBranch`, dialling (and redialling), shutting down.
//! - `channels`: peer connections: a proven connection becomes the link of its peer's channels,
//!   and its frames and its end go to the node.
//! - `commands`: the controller's commands: `InitBranch` (which creates the node),
//!   `InitSnapshot`, `RetrieveSnapshot`, and the answers' way back.
//! - `lease`: the controller lease: which one controller connection a bank with a secret obeys.
//! - `ready`: carrying out the node's `Ready`.
//! - `durability`: with a store, the commit thread, and rebuilding the node from the store.
//! - `generator`: the random transfer generator: its draws and its pace.
//! - `rollback`: the two phases of a rollback of the whole bank to a checkpoint.

mod admission;
mod channels;
mod commands;
mod durability;
mod generator;
mod lease;
mod ready;
mod rollback;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use log::info;
use tokio::net::tcp::OwnedWriteHalf;

use super::connection::FrameReader;
use super::recorder::SnapshotRecorder;
use super::traffic::Traffic;
use super::{BranchConfig, listener};
use crate::auth::Secret;
use crate::config::BranchEntry;
use crate::core::node::{BranchNode, Input, Pause, Timer};
use crate::core::{Channel, SnapshotId};
use crate::outbox::Outbox;
use crate::store::{BankMeta, BranchStore};
use crate::wire::Body;

pub use crate::core::node::{ConnId, MAX_RETRIEVE_WAIT};

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

/// A timer of the node fired (in a recorder, or in the actor's context).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TimerFired(pub Timer);

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
struct Wake(Pause);

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

/// The connection currently carrying a peer's channels.
struct PeerLink {
    /// Which stream it is; frames and closes from older streams are stale.
    conn: ConnId,
    /// Frames for this stream, in order.
    outbox: Outbox,
}

/// What the runtime keeps of one other branch: where it is and the connection to it. Its
/// channels, and every decision about them, are the node's.
struct PeerIo {
    /// Its name, for logs.
    name: String,
    /// Where to dial it.
    addr: SocketAddr,
    /// The connection carrying its channels, if one is up.
    link: Option<PeerLink>,
    /// The pauses between dial attempts while connections keep failing; starts over once a
    /// connection resumes the channel.
    redial: crate::backoff::Backoff,
}

impl PeerIo {
    /// Whether the peer's connection can take more frames now.
    fn outbox_open(&self) -> bool {
        self.link.as_ref().is_some_and(|link| link.outbox.is_open())
    }
}

/// A controller connection.
struct ControllerLink {
    outbox: Outbox,
    /// The controller closed its half: close ours once no answer is owed.
    done_asking: bool,
}

/// Everything that exists once `InitBranch` has arrived (or the store was read).
struct Bank {
    /// The branch's protocol state.
    node: BranchNode,
    /// Peers in `all_branches` order without this branch: index = [`Channel`].
    peers: Vec<PeerIo>,
    /// Peer names by channel, naming the channels in answers.
    peer_names: Rc<[String]>,
    by_name: HashMap<String, Channel>,
    /// The recorder of every snapshot record the node keeps.
    recorders: HashMap<SnapshotId, Addr<SnapshotRecorder>>,
    /// Whether the bank has a cluster secret (authenticated peers).
    authenticated: bool,
}

/// The actor that owns one branch.
pub struct BranchActor {
    name: Rc<str>,
    settings: BranchConfig,
    /// The port this branch actually listens on, checked against its entry in `InitBranch`.
    port: u16,
    /// This process's identity towards its peers (random, never 0; kept in the store): a branch
    /// restarted without its state is a new incarnation, and its peers refuse to splice it onto
    /// the old channels.
    incarnation: u64,
    /// The bank epoch this branch is in: 0 from `InitBranch`, one more after each rollback
    /// the controller runs. Peers of other epochs are refused.
    epoch: u64,
    /// Phase one of a rollback to epoch `prepared` has run here: the bank is dropped, and
    /// only its `RollbackCommit` (or a later rollback) brings it back.
    prepared: Option<u64>,
    /// The members and whether the bank is authenticated, kept across a rollback's phase one
    /// so that phase two can rebuild the bank.
    members: Option<(Vec<BranchEntry>, bool)>,
    /// The dials under way, per peer channel: a rollback cancels them with the bank.
    dials: HashMap<Channel, SpawnHandle>,
    /// The random transfer generator.
    traffic: Traffic,
    /// `None` until `InitBranch`.
    bank: Option<Bank>,
    /// Peers that connected before `InitBranch`, admitted in arrival order once it comes.
    parked: Vec<ParkedPeer>,
    controllers: HashMap<ConnId, ControllerLink>,
    next_conn: ConnId,
    /// The cluster secret: from `--secret-file`, else from `InitBranch`. `None` until known.
    secret: Option<Secret>,
    /// Controller handshakes in progress (capped: each holds a connection).
    controller_handshakes: usize,
    /// Peer handshakes in progress (capped likewise).
    peer_handshakes: usize,
    /// The node's timers that run in the actor's context, so the node can cancel them.
    timers: HashMap<Timer, SpawnHandle>,
    /// The buffers of the node's `Ready`, handed back and forth so carrying allocates nothing.
    spare_ready: crate::core::node::Ready,
    /// The branch's store (`--data-dir`), if it has one.
    store: Option<crate::store::Store>,
    /// The store as the commit thread uses it.
    store_handle: Option<Arc<dyn BranchStore>>,
    /// The bank's description (a new bank, or a rollback's new epoch), until the commit that
    /// carries it is durable.
    unwritten_bank: Option<BankMeta>,
    /// Counts the banks dropped (by a rollback, or a halt that waits for one): a commit
    /// written for a dropped bank's node is not reported to the node that replaced it.
    generation: u64,
    /// A commit is being written: the next waits for it.
    commit_in_flight: bool,
    /// The commit waiting for the one being written, with the generation of its node.
    queued_commit: Option<(u64, crate::core::node::Persist)>,
    /// `RollbackCommit`s answered once the new epoch's bank is durable: (connection, epoch).
    awaiting_durable_bank: Vec<(ConnId, u64)>,
    /// The state read from the store at start, restored when the actor starts.
    restored: Option<crate::store::Restored>,
    /// The store's figures, logged now and then.
    commits: durability::CommitStats,
    /// Ctrl-C or SIGTERM: no new transfers; what is queued is flushed and the connections closed.
    shutting_down: bool,
    /// Set (with the reason) when the branch cannot go on with its state: the `branch` command
    /// watches it and exits.
    halted: tokio::sync::watch::Sender<Option<String>>,
    /// Why this branch dropped its state and waits for a rollback: its store lost a commit.
    /// A controller that does not roll banks back, claiming the lease, makes it stop instead.
    regressed: Option<String>,
    /// Which controller connection may command this branch (in a bank with a secret), so two
    /// controllers never number snapshots from the same free id.
    lease: lease::ControllerLease,
    /// The report card of the controller driving this branch (`--grade-controller`); `None`
    /// without the flag, which then costs one check per command and per carried `Ready`.
    grading: Option<super::grade_file::GradeFile>,
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
        let grading = settings
            .grade_controller
            .clone()
            .map(|path| super::grade_file::GradeFile::new(&settings.name, path));
        Self {
            grading,
            lease,
            name: settings.name.as_str().into(),
            settings,
            port,
            incarnation: rand::random::<u64>().max(1),
            epoch: 0,
            prepared: None,
            members: None,
            dials: HashMap::new(),
            traffic,
            bank: None,
            parked: Vec::new(),
            controllers: HashMap::new(),
            next_conn: 0,
            secret: settings_secret,
            controller_handshakes: 0,
            peer_handshakes: 0,
            timers: HashMap::new(),
            spare_ready: crate::core::node::Ready::default(),
            store_handle: store.as_ref().map(crate::store::Store::handle),
            store,
            unwritten_bank: None,
            generation: 0,
            commit_in_flight: false,
            queued_commit: None,
            awaiting_durable_bank: Vec::new(),
            restored,
            commits: durability::CommitStats::default(),
            shutting_down: false,
            halted: tokio::sync::watch::Sender::new(None),
            regressed: None,
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

    /// Feeds `input` to the node and carries out what follows.
    fn step(&mut self, input: Input, ctx: &mut Context<Self>) {
        let Some(bank) = self.bank.as_mut() else {
            return;
        };
        bank.node.step(input);
        self.carry_out(ctx);
    }

    /// The highest snapshot id this branch has recorded, so an attaching controller can pick
    /// fresh ids.
    fn highest_snapshot(&self) -> Option<SnapshotId> {
        self.bank
            .as_ref()
            .and_then(|bank| bank.node.highest_snapshot())
    }
}

impl Actor for BranchActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The first card (nothing seen yet) says at once whether the file can be written.
        if let Some(card) = self.grading.as_mut() {
            card.write();
        }
        let Some(restored) = self.restored.take() else {
            return;
        };
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

impl Handler<TimerFired> for BranchActor {
    type Result = ();

    fn handle(&mut self, msg: TimerFired, ctx: &mut Context<Self>) {
        self.step(Input::Timer(msg.0), ctx);
    }
}

impl Handler<SendTransfer> for BranchActor {
    type Result = ();

    fn handle(&mut self, _msg: SendTransfer, ctx: &mut Context<Self>) {
        self.generate(ctx);
    }
}

impl Handler<Wake> for BranchActor {
    type Result = ();

    fn handle(&mut self, msg: Wake, ctx: &mut Context<Self>) {
        self.wake(msg.0, ctx);
    }
}

impl Handler<InboundBatch> for BranchActor {
    type Result = ();

    fn handle(&mut self, msg: InboundBatch, ctx: &mut Context<Self>) {
        match msg.source {
            Source::Controller(conn) => {
                self.lease.heard(conn, Instant::now());
                for body in msg.bodies {
                    self.on_controller_frame(conn, body.into(), ctx);
                }
            }
            Source::Peer { channel, conn } => {
                let Some(bank) = self.bank.as_mut() else {
                    return;
                };
                for body in msg.bodies {
                    bank.node.step(Input::Peer {
                        peer: channel,
                        conn,
                        msg: body.into(),
                    });
                }
            }
        }
        self.carry_out(ctx);
    }
}

impl Handler<Shutdown> for BranchActor {
    type Result = usize;

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Context<Self>) -> usize {
        if !self.shutting_down
            && let Some(card) = self.grading.as_mut()
        {
            card.write();
        }
        self.shut_down();
        self.unflushed_bytes()
    }
}

impl Handler<GetStatus> for BranchActor {
    type Result = Option<BranchStatus>;

    fn handle(&mut self, _msg: GetStatus, _ctx: &mut Context<Self>) -> Option<BranchStatus> {
        let node = &self.bank.as_ref()?.node;
        Some(BranchStatus {
            balance: node.balance(),
            connected_peers: node.live_peers(),
            snapshots_in_progress: node.snapshots_in_progress(),
            records_kept: node.records_kept(),
            unacked_frames: node.unacked_frames(),
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
