//! [`BranchNode`]: the whole branch protocol as a deterministic state machine with no I/O, the
//! one place its rules live. The live branch's actors, the simulator and the model checker all
//! drive it.
//!
//! The shape is raft-rs's `RawNode`/`Ready`: the caller feeds [`Input`]s (a peer message on
//! connection C, link up or down, a controller command, a timer, a commit made durable, a
//! generator turn with its random draw) and carries out the [`Ready`] the node accumulates:
//! messages per connection, answers per controller connection, one commit to persist (typed
//! [`persist::Changes`](crate::core::persist::Changes), not bytes), timers to set or cancel,
//! connections to close, peers to dial, and notes for logs, metrics and the runtime. The node
//! has no clock and no randomness: time passes only as timers the caller fires, and random
//! draws come in with the generator's turn.
//!
//! What it owns, and where each rule is:
//! - the ledger and the marker rules: [`crate::core::BranchCore`];
//! - each peer's channels ([`crate::core::SendWindow`], [`crate::core::ReceiveCursor`]), which
//!   connection carries them, incarnations and `Resume`, refusals, the grace period and lost
//!   channels, acknowledgements, the rules of a bank with a secret: `links`;
//! - the snapshot records, their cap and age limit, their status, retrieves and their answers:
//!   `records` (with [`answers`]);
//! - the durability epochs, what may leave only after which commit: [`epochs`];
//! - the transfer generator's decision: [`generator`].
//!
//! Its state is `Clone + Eq + Hash`, so a model checker can store and compare states.

pub mod answers;
pub mod epochs;
pub mod generator;
mod links;
mod records;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub use answers::{Answer, AnsweredRecords, RecordStatus};
pub use epochs::{KEPT_RETRIEVED, Persist};
pub use generator::{Draw, Pause};
pub use links::{ACK_BATCH, ACK_DELAY};
pub use records::{MAX_KEPT_RECORDS, MAX_RETRIEVE_WAIT, ORIGINAL_SCHEMA_WAIT, RECORD_TTL};

use crate::core::persist::{ChannelMarks, RestoredChannel, RestoredRecord, StoredCore};
use crate::core::{
    BranchCore, Channel, Effect, IdSet, PeerMsg, Position, ReceiveCursor, RefusalKind, SendWindow,
    SnapshotId, SnapshotRecord,
};

/// Identifies one connection (a peer's or a controller's), so that messages or a close from a
/// connection that has since been replaced are recognised as stale.
pub type ConnId = u64;

/// What a node is told about itself when it is created.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// The branch's name: it names the branch in logs and decides which side of each pair
    /// dials (the lower name).
    pub name: String,
    /// The other members, in `all_branches` order without this branch: index = [`Channel`].
    pub peers: Vec<String>,
    /// Most transfers kept unacknowledged per channel before the generator stops sending on it.
    pub send_window: usize,
    /// The bank has a cluster secret: every peer proved it, so a refusal is believed and an
    /// unnumbered frame is a protocol error.
    pub authenticated: bool,
    /// The branch has a store: nothing leaves before what it depends on is durable.
    pub durable: bool,
    /// This branch's identity towards its peers (never 0): a branch restarted without its state
    /// is a new incarnation.
    pub incarnation: u64,
    /// The bank epoch the node belongs to: 0 for a new bank, one more for each rollback. Only
    /// peers of the same epoch share channels with it.
    pub epoch: u64,
    /// How long snapshots wait for a peer whose connection is down before its channel counts as
    /// lost.
    pub peer_grace: Duration,
    /// Which directions exist per peer, for a topology that is not a full mesh (the
    /// simulator's); empty: a full mesh, every peer both ways, as in a live bank.
    pub directions: Vec<Directions>,
    /// A seeded bug (tests only), to show that the model checker catches it.
    #[cfg(test)]
    pub mutation: Mutation,
}

/// A bug seeded into the node (tests only): each must make the model checker fail.
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// The node as it is.
    #[default]
    None,
    /// The resend after a reconnect skips the first unacknowledged frame.
    ResendSkipsFirst,
    /// A transfer received after the marker on its channel is recorded as in transit.
    TransitAfterMarker,
    /// A delivery counts as durable at once, so its ack leaves before its commit is durable.
    AckBeforeDurable,
    /// The incarnation check accepts a peer that restarted without its state.
    AcceptNewIncarnation,
    /// The epoch check accepts a peer's `Resume` of another bank epoch.
    IgnoreEpoch,
}

/// The directed channels between this branch and one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Directions {
    /// This branch sends to the peer.
    pub to: bool,
    /// The peer sends to this branch.
    pub from: bool,
}

/// Where each peer's channels are among the core's outgoing and incoming channels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ChannelMap {
    /// Per peer: its outgoing channel, if this branch sends to it.
    out_of: Vec<Option<Channel>>,
    /// Per peer: its incoming channel, if it sends to this branch.
    in_of: Vec<Option<Channel>>,
    /// Per outgoing channel: the peer.
    peer_of_out: Vec<Channel>,
}

impl ChannelMap {
    fn new(peers: usize, directions: &[Directions]) -> Self {
        let both = Directions {
            to: true,
            from: true,
        };
        let mut map = Self {
            out_of: Vec::with_capacity(peers),
            in_of: Vec::with_capacity(peers),
            peer_of_out: Vec::new(),
        };
        let mut incoming = 0;
        for peer in 0..peers {
            let directions = directions.get(peer).copied().unwrap_or(both);
            map.out_of
                .push(directions.to.then_some(map.peer_of_out.len()));
            if directions.to {
                map.peer_of_out.push(peer);
            }
            map.in_of.push(directions.from.then_some(incoming));
            incoming += usize::from(directions.from);
        }
        map
    }

    fn incoming(&self) -> usize {
        self.in_of.iter().flatten().count()
    }
}

/// A controller's command, as the node takes it (`InitBranch` creates the node instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `InitSnapshot`: start snapshot `id` here.
    StartSnapshot { id: SnapshotId },
    /// `RetrieveSnapshot`: answer with this branch's record of `id`, waiting up to `wait_ms`
    /// for it to finish.
    Retrieve { id: SnapshotId, wait_ms: u32 },
}

/// A timer the node asks the runtime to run. Firing one that was cancelled, or that the node
/// no longer needs, changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The grace period of peer `channel`'s outage.
    Grace(Channel),
    /// Acknowledge what was delivered since the last acknowledgement, on every channel.
    AckFlush,
    /// A retrieve of snapshot `id` held for its record (`token` tells the waiters apart) has
    /// waited as long as it may.
    Retrieve { id: SnapshotId, token: u64 },
    /// Record `id` has been kept [`RECORD_TTL`] without being retrieved.
    RecordExpiry(SnapshotId),
}

/// Setting or cancelling a [`Timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerOp {
    /// Fire `timer` after `after`.
    Set { timer: Timer, after: Duration },
    /// The timer is no longer needed.
    Cancel(Timer),
}

/// One input to the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// A connection that proved itself now carries peer `peer`'s channels (replacing any older
    /// one).
    LinkUp { peer: Channel, conn: ConnId },
    /// Connection `conn` of peer `peer` is gone.
    LinkDown { peer: Channel, conn: ConnId },
    /// A message from connection `conn` of peer `peer`.
    Peer {
        peer: Channel,
        conn: ConnId,
        msg: PeerMsg,
    },
    /// A command from controller connection `conn`.
    Command { conn: ConnId, cmd: Command },
    /// A timer fired.
    Timer(Timer),
    /// Commit `epoch` is durable.
    CommitDone { epoch: u64 },
    /// One generator turn with its draw; the runtime's outboxes all have room.
    Generate(Draw),
    /// Stop: no new transfers, no dialling.
    Shutdown,
}

/// A message for the connection carrying a peer's channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Outgoing {
    /// The peer.
    pub peer: Channel,
    /// The connection it must go on (dropped if that connection is gone).
    pub conn: ConnId,
    /// The message.
    pub msg: PeerMsg,
}

/// A connection to close, after a last message saying why.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Close {
    /// The peer.
    pub peer: Channel,
    /// The connection.
    pub conn: ConnId,
    /// The `Refusal` to send first, if any.
    pub refusal: Option<PeerMsg>,
}

/// A peer to dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dial {
    /// The peer.
    pub peer: Channel,
    /// The last connection failed before resuming the channel: wait the backoff's next pause
    /// before the first attempt.
    pub after_pause: bool,
    /// The incarnation this branch knows the peer by (0: none yet).
    pub known_incarnation: u64,
}

/// Something the runtime should know or do that is not a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Note {
    /// A record of snapshot `id` began: its recorder starts.
    RecordBegun(SnapshotId),
    /// Record `id` was handed over or discarded: its recorder stops.
    RecordRetired(SnapshotId),
    /// What a parked generator waits for has arrived.
    Wake(Pause),
    /// Peer `channel`'s channel resumed on its connection (a dialler starts its backoff over).
    ChannelResumed(Channel),
    /// A commit released frames (`frames`) or acknowledgements (`acks`), for the runtime's
    /// failpoints.
    CommitReleased { frames: bool, acks: bool },
    /// The branch cannot go on with its state: it stops trading; the reason says why.
    Halt(String),
}

/// What the node asks of the runtime, accumulated over inputs until the runtime takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ready {
    /// Messages per connection, in order.
    pub messages: Vec<Outgoing>,
    /// Answers per controller connection, in order.
    pub answers: Vec<(ConnId, Answer)>,
    /// The next commit to make durable (then report [`Input::CommitDone`]).
    pub persist: Option<Persist>,
    /// Timers to set or cancel.
    pub timers: Vec<TimerOp>,
    /// Connections to close.
    pub closes: Vec<Close>,
    /// Peers to dial.
    pub dials: Vec<Dial>,
    /// Everything else.
    pub notes: Vec<Note>,
}

impl Ready {
    /// Empties every field, keeping the buffers.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.answers.clear();
        self.persist = None;
        self.timers.clear();
        self.closes.clear();
        self.dials.clear();
        self.notes.clear();
    }

    /// Whether there is nothing to carry out.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.answers.is_empty()
            && self.persist.is_none()
            && self.timers.is_empty()
            && self.closes.is_empty()
            && self.dials.is_empty()
            && self.notes.is_empty()
    }
}

/// The connection currently carrying a peer's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Link {
    conn: ConnId,
    /// The peer's `Resume` has arrived and what it lacked was resent: new frames go out live.
    resumed: bool,
}

/// One other branch, and the two directed channels with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PeerState {
    name: String,
    /// This branch opens the connection (its name sorts lower).
    we_dial: bool,
    /// Every frame sent and not acknowledged: resent after a reconnect.
    window: SendWindow,
    /// How far this branch has delivered the peer's frames.
    cursor: ReceiveCursor,
    /// The connection carrying the channels, if one is up.
    link: Option<Link>,
    /// The peer's incarnation, from its first `Resume`.
    incarnation: Option<u64>,
    /// The connection is down and the grace period runs (or ran out).
    down: bool,
    /// A dial is under way (the runtime dials until it connects).
    dialling: bool,
    /// Why this branch stopped dialling the peer (only a proven peer can stop it).
    stopped_dialling: Option<String>,
    /// The last connection did not resume the channel: the next dial waits a pause first.
    redial_pending_pause: bool,
}

impl PeerState {
    fn new(
        me: &str,
        name: String,
        window: SendWindow,
        cursor: ReceiveCursor,
        incarnation: Option<u64>,
    ) -> Self {
        Self {
            we_dial: me < name.as_str(),
            name,
            window,
            cursor,
            link: None,
            incarnation,
            down: false,
            dialling: false,
            stopped_dialling: None,
            redial_pending_pause: false,
        }
    }

    /// Whether frames can go out to the peer now.
    fn is_live(&self) -> bool {
        self.link.is_some_and(|link| link.resumed)
    }
}

/// A retrieve held for its record to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Waiter {
    conn: ConnId,
    token: u64,
    /// It came from a controller that cannot tell a partial record from a final one.
    cannot_tell: bool,
}

/// One branch's whole protocol state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BranchNode {
    /// Shared: it never changes, and a model checker clones the node for every state.
    config: std::sync::Arc<NodeConfig>,
    core: BranchCore,
    /// Each peer's place among the core's channels.
    channels: ChannelMap,
    peers: Vec<PeerState>,
    /// Every record begun and not yet handed over or discarded.
    records: BTreeMap<SnapshotId, SnapshotRecord>,
    /// Retrieves held, per snapshot (for records not begun yet too).
    waiters: BTreeMap<SnapshotId, Vec<Waiter>>,
    /// How many retrieves are held per controller connection.
    held: BTreeMap<ConnId, usize>,
    next_token: u64,
    /// Finished records already handed to a controller, kept (bounded) for one that asks again.
    answered: AnsweredRecords,
    /// Snapshots whose record was discarded unretrieved.
    discarded: IdSet,
    /// The highest snapshot id recorded, so an attaching controller picks fresh ids.
    highest_snapshot: Option<SnapshotId>,
    /// With a store: what is staged for the next commit and what waits for one.
    epochs: Option<epochs::Epochs>,
    /// An acknowledgement flush is scheduled.
    ack_scheduled: bool,
    shutting_down: bool,
    halted: bool,
    /// Reused buffer for the core's effects.
    effects: Vec<Effect>,
    /// Bytes the names in an answer take (for the bound on kept answers).
    name_bytes: usize,
    ready: ReadyBuffer,
}

/// [`Ready`] inside the node. Not part of the state a model checker compares: it is output on
/// its way out, empty between steps.
#[derive(Debug, Clone, Default)]
struct ReadyBuffer(Ready);

impl PartialEq for ReadyBuffer {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ReadyBuffer {}

impl std::hash::Hash for ReadyBuffer {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl BranchNode {
    /// A new branch (`InitBranch`) holding `balance`, with no connection yet. The peers it dials
    /// are in the first [`Ready`].
    pub fn new(config: NodeConfig, balance: u64) -> Self {
        let peers = config
            .peers
            .iter()
            .map(|name| {
                PeerState::new(
                    &config.name,
                    name.clone(),
                    SendWindow::new(config.send_window),
                    ReceiveCursor::default(),
                    None,
                )
            })
            .collect();
        let map = ChannelMap::new(config.peers.len(), &config.directions);
        #[allow(unused_mut)]
        let mut core = BranchCore::with_links(balance, map.incoming(), map.peer_of_out.len());
        #[cfg(test)]
        if config.mutation == Mutation::TransitAfterMarker {
            core.seed_late_close();
        }
        let mut node = Self::assemble(config, core, peers);
        node.touch();
        node.dial_all();
        node
    }

    /// A branch restarted from what its store held at its last commit.
    pub fn restore(
        config: NodeConfig,
        stored: StoredCore,
        channels: Vec<RestoredChannel>,
        records: Vec<RestoredRecord>,
    ) -> Result<Self, String> {
        if stored.channels.len() != config.peers.len() || channels.len() != config.peers.len() {
            return Err(format!(
                "the store holds {} channels for {} peers",
                stored.channels.len(),
                config.peers.len()
            ));
        }
        #[allow(unused_mut)]
        let mut core = BranchCore::restore(stored.state)?;
        #[cfg(test)]
        if config.mutation == Mutation::TransitAfterMarker {
            core.seed_late_close();
        }
        let mut batches = Vec::with_capacity(channels.len());
        let peers = config
            .peers
            .iter()
            .zip(stored.channels.iter())
            .zip(channels)
            .map(|((name, marks), channel): ((&String, &ChannelMarks), _)| {
                batches.push(VecDeque::from(channel.batches));
                PeerState::new(
                    &config.name,
                    name.clone(),
                    SendWindow::restore(
                        config.send_window,
                        marks.acked,
                        channel.unacked.into_iter().map(|(_, f)| f).collect(),
                    ),
                    ReceiveCursor::restore(marks.delivered),
                    marks.peer_incarnation,
                )
            })
            .collect();
        let durable = config.durable;
        let mut node = Self::assemble(config, core, peers);
        node.highest_snapshot = stored.highest_snapshot;
        let mut epochs = epochs::Epochs::new(node.peers.len());
        epochs.restore(
            batches,
            records
                .iter()
                .map(|r| (r.header.id, r.transit_batches, r.header.retrieved)),
        );
        for restored in records {
            let record = restored.record();
            if restored.header.retrieved {
                // Answered before the crash: kept as the answer, for a controller that asks
                // again.
                node.answered.keep(&Answer::of(&record), node.name_bytes);
                continue;
            }
            node.ready.0.notes.push(Note::RecordBegun(record.id()));
            node.ready.0.timers.push(TimerOp::Set {
                timer: Timer::RecordExpiry(record.id()),
                after: RECORD_TTL,
            });
            node.records.insert(record.id(), record);
        }
        if durable {
            node.epochs = Some(epochs);
        }
        // No peer is connected yet: each one's grace period runs from the restart, so a record
        // restored waiting for a peer that never comes back is cut short, not kept forever.
        for channel in 0..node.peers.len() {
            node.peers[channel].down = true;
            node.ready.0.timers.push(TimerOp::Set {
                timer: Timer::Grace(channel),
                after: node.config.peer_grace,
            });
        }
        node.dial_all();
        Ok(node)
    }

    fn assemble(config: NodeConfig, core: BranchCore, peers: Vec<PeerState>) -> Self {
        let name_bytes = config.name.len() + config.peers.iter().map(String::len).sum::<usize>();
        let epochs = config.durable.then(|| epochs::Epochs::new(peers.len()));
        let channels = ChannelMap::new(peers.len(), &config.directions);
        Self {
            config: std::sync::Arc::new(config),
            core,
            channels,
            peers,
            records: BTreeMap::new(),
            waiters: BTreeMap::new(),
            held: BTreeMap::new(),
            next_token: 0,
            answered: AnsweredRecords::default(),
            discarded: IdSet::new(),
            highest_snapshot: None,
            epochs,
            ack_scheduled: false,
            shutting_down: false,
            halted: false,
            effects: Vec::new(),
            name_bytes,
            ready: ReadyBuffer::default(),
        }
    }

    /// Feeds one input; what follows from it accumulates in [`Self::ready`].
    pub fn step(&mut self, input: Input) {
        match input {
            Input::LinkUp { peer, conn } => self.link_up(peer, conn),
            Input::LinkDown { peer, conn } => self.link_down(peer, conn),
            Input::Peer { peer, conn, msg } => self.on_peer_msg(peer, conn, msg),
            Input::Command { conn, cmd } => self.on_command(conn, cmd),
            Input::Timer(timer) => self.on_timer(timer),
            Input::CommitDone { epoch } => self.commit_done(epoch),
            Input::Generate(draw) => {
                let _ = self.send_random_transfer(draw, |_| true);
            }
            Input::Shutdown => self.shut_down(),
        }
    }

    /// What the inputs so far ask of the runtime, with the next commit if one can start. The
    /// runtime drains it and carries it out notes first (a commit's failpoints fire before what
    /// it released leaves), then persist, messages, answers, timers, closes, dials.
    pub fn ready(&mut self) -> &mut Ready {
        self.start_commit_if_needed();
        &mut self.ready.0
    }

    /// Takes what [`Self::ready`] holds, leaving it empty.
    pub fn take_ready(&mut self) -> Ready {
        self.start_commit_if_needed();
        std::mem::take(&mut self.ready.0)
    }

    /// Swaps what [`Self::ready`] holds with `spare`, which must be empty: a runtime that drains
    /// and hands back the same buffers each time allocates nothing on its hot path.
    pub fn swap_ready(&mut self, spare: &mut Ready) {
        debug_assert!(spare.is_empty(), "a Ready handed back must be drained");
        self.start_commit_if_needed();
        std::mem::swap(&mut self.ready.0, spare);
    }

    /// Starts a commit of what is staged, if anything is and none is being written.
    fn start_commit_if_needed(&mut self) {
        if self.ready.0.persist.is_some() {
            return;
        }
        let Some(epochs) = self.epochs.as_mut() else {
            return;
        };
        let (core, peers, highest) = (&self.core, &self.peers, self.highest_snapshot);
        let stored = || StoredCore {
            state: core.state(),
            channels: peers
                .iter()
                .map(|peer| ChannelMarks {
                    delivered: peer.cursor.delivered(),
                    acked: peer.window.acked(),
                    peer_incarnation: peer.incarnation,
                })
                .collect(),
            highest_snapshot: highest,
        };
        let unfinished = self.records.values().any(|record| !record.is_finished());
        let persist = epochs.start_commit(
            stored,
            peers.iter().map(|p| p.window.last_sent()).collect(),
            peers.iter().map(|p| p.cursor.delivered()).collect(),
            unfinished,
        );
        self.ready.0.persist = persist;
    }

    /// Marks the state changed, for the next commit.
    fn touch(&mut self) {
        if let Some(epochs) = self.epochs.as_mut() {
            epochs.touch();
        }
    }

    /// Stop: no new transfers, no dialling; connections going down no longer start a grace
    /// period.
    pub fn shut_down(&mut self) {
        self.shutting_down = true;
    }

    /// Tells a generator parked for `pause` to go on (once per `Ready`).
    fn wake(&mut self, pause: Pause) {
        let note = Note::Wake(pause);
        if !self.ready.0.notes.contains(&note) {
            self.ready.0.notes.push(note);
        }
    }

    /// The branch cannot go on with its state.
    fn halt(&mut self, detail: String) {
        if std::mem::replace(&mut self.halted, true) {
            return;
        }
        self.shutting_down = true;
        self.ready.0.notes.push(Note::Halt(detail));
    }

    /// The name of the branch.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The node's settings.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The ledger, counters and snapshot marker state.
    pub fn core(&self) -> &BranchCore {
        &self.core
    }

    /// The balance now.
    pub fn balance(&self) -> u64 {
        self.core.ledger().balance()
    }

    /// The highest snapshot id this branch has recorded.
    pub fn highest_snapshot(&self) -> Option<SnapshotId> {
        self.highest_snapshot
    }

    /// Peers whose channel is connected and resumed.
    pub fn live_peers(&self) -> usize {
        self.peers.iter().filter(|peer| peer.is_live()).count()
    }

    /// Whether peer `peer`'s channel is connected and resumed.
    pub fn is_live(&self, peer: Channel) -> bool {
        self.peers.get(peer).is_some_and(PeerState::is_live)
    }

    /// Whether this branch dials peer `peer` (rather than waiting for it to connect).
    pub fn we_dial(&self, peer: Channel) -> bool {
        self.peers.get(peer).is_some_and(|peer| peer.we_dial)
    }

    /// The connection carrying peer `peer`'s channels, if one is up.
    pub fn link_of(&self, peer: Channel) -> Option<ConnId> {
        self.peers.get(peer)?.link.map(|link| link.conn)
    }

    /// Frames sent and not acknowledged, all channels together.
    pub fn unacked_frames(&self) -> usize {
        self.peers.iter().map(|peer| peer.window.unacked()).sum()
    }

    /// Frames sent to peer `peer` and not acknowledged.
    pub fn unacked_to(&self, peer: Channel) -> usize {
        self.peers.get(peer).map_or(0, |peer| peer.window.unacked())
    }

    /// Every frame sent to peer `peer` and not acknowledged, with its position (what a model
    /// checker counts as money in flight).
    pub fn unacked_frames_to(
        &self,
        peer: Channel,
    ) -> impl Iterator<Item = (Position, crate::core::Frame)> + '_ {
        self.peers
            .get(peer)
            .into_iter()
            .flat_map(|peer| peer.window.frames())
    }

    /// How far this branch has delivered peer `peer`'s frames.
    pub fn delivered_from(&self, peer: Channel) -> Position {
        self.peers
            .get(peer)
            .map_or(0, |peer| peer.cursor.delivered())
    }

    /// Snapshots still recording.
    pub fn snapshots_in_progress(&self) -> usize {
        self.core.snapshots_in_progress()
    }

    /// Records kept (recording, or finished and not yet retrieved).
    pub fn records_kept(&self) -> usize {
        self.records.len()
    }

    /// The record of snapshot `id`, while it is kept.
    pub fn record(&self, id: SnapshotId) -> Option<&SnapshotRecord> {
        self.records.get(&id)
    }

    /// The answer kept for snapshot `id` after its retrieval, if still kept.
    pub fn kept_answer(&self, id: SnapshotId) -> Option<&Answer> {
        self.answered.get(id)
    }

    /// Whether an answer is still owed on controller connection `conn`: held for its record,
    /// or for a commit.
    pub fn owes_answer_on(&self, conn: ConnId) -> bool {
        self.held.contains_key(&conn)
            || self
                .epochs
                .as_ref()
                .is_some_and(|epochs| epochs.owes_answer_on(conn))
    }

    /// Whether a commit is being written.
    pub fn is_committing(&self) -> bool {
        self.epochs
            .as_ref()
            .is_some_and(epochs::Epochs::is_committing)
    }

    /// Whether the branch halted.
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// Why this branch stopped dialling peer `peer`, if it did.
    pub fn stopped_dialling(&self, peer: Channel) -> Option<&str> {
        self.peers.get(peer)?.stopped_dialling.as_deref()
    }

    /// The incarnation this branch knows peer `peer` by.
    pub fn peer_incarnation(&self, peer: Channel) -> Option<u64> {
        self.peers.get(peer)?.incarnation
    }

    /// The name of peer `peer`.
    pub fn peer_name(&self, peer: Channel) -> &str {
        self.peers.get(peer).map_or("?", |peer| peer.name.as_str())
    }

    /// The core's outgoing channel to peer `peer`, if this branch sends to it: where that
    /// channel's counters are in [`SnapshotRecord::sent`] and the core's state, so a runtime
    /// that is not a full mesh (the simulator) can pair the two ends of a channel.
    pub fn outgoing_channel(&self, peer: Channel) -> Option<Channel> {
        self.channels.out_of.get(peer).copied().flatten()
    }

    /// The core's incoming channel from peer `peer`, if it sends to this branch: where that
    /// channel is in [`SnapshotRecord::received`], a record's channel states and
    /// [`crate::core::InTransit::from`].
    pub fn incoming_channel(&self, peer: Channel) -> Option<Channel> {
        self.channels.in_of.get(peer).copied().flatten()
    }
}

/// The `Refusal` message of `kind` with `reason`.
fn refusal(kind: RefusalKind, reason: String) -> PeerMsg {
    PeerMsg::Refusal { kind, reason }
}

#[cfg(test)]
mod tests;
