//! A deterministic simulator: one [`BranchNode`] per branch (the protocol live branches run) on
//! a simulated network, driven by a script. The simulator only delivers messages and carries out
//! each node's [`Ready`](crate::core::node::Ready) (messages, commits, timers, dials); every
//! protocol decision (positions, resends, markers, records, epochs, grace periods) is the
//! node's.
//!
//! # The network
//!
//! - Each pair of branches with a link in either direction has one simulated connection,
//!   carrying both directions, each FIFO. Its nodes know it as their peer (peers in name order),
//!   with the directions the topology's links give; channel frames flow only along those links.
//! - At tick 0 every connection comes up: the node that dials (the lower name) asks for a dial,
//!   the connection comes up at once (`LinkUp` on both ends), and the two exchange `Resume`.
//! - A dial is answered at once, or at the next tick when the node asks to pause first, as soon
//!   as both ends are up; a dial of a crashed branch waits for its restart.
//!
//! # The delivery rule (part of the contract)
//!
//! - Time is discrete ticks, starting at 0. Script events happen at the current tick; `tick n`
//!   advances the clock one tick at a time, running each new tick's deliveries.
//! - A channel frame (transfer or marker) sent at tick `t` with delay `d` (`d >= 1`) may be
//!   delivered from tick `t + d` on. Delays come from a seeded RNG (uniform in 1..=5) or from a
//!   list, used in the order frames are sent, markers and resends included.
//! - On each tick, branches are visited in lexicographic name order as senders, and each
//!   sender's outgoing links in lexicographic destination order. Only the head of a link's queue
//!   can be delivered, and only once its time has come. Each sender delivers at most one frame
//!   per tick: the first link (in that order) whose head is due and whose receiver is not paused.
//! - A message delivered in a tick can only cause frames that arrive in a later tick (every
//!   delay is at least 1).
//! - Markers a branch sends when it records go out in lexicographic destination order.
//! - Control messages (`Resume`, `Ack`, `Refusal`) take no delay and draw none: each is
//!   delivered right after the input that made its node send it has been carried out, in the
//!   order sent per direction (a paused receiver gets them when its pause ends). They may
//!   overtake frames sent before them in the same direction, which nothing depends on (an
//!   acknowledgement concerns the other direction), and they never change when a frame is
//!   delivered.
//!
//! Within a tick, in this order: pauses that end (the inputs held for the branch are fed), the
//! commits that become durable, the timers that are due, then the deliveries.
//!
//! # Time
//!
//! One tick is [`TICK`], the nodes' acknowledgement delay ([`ACK_DELAY`], 500 ms): a timer a
//! node sets for a duration `d` fires `ceil(d / TICK)` ticks later (at least one). So a branch
//! acknowledges what it delivered one tick later, and the grace period is a whole number of
//! ticks ([`DEFAULT_GRACE_TICKS`] unless the script says `grace <ticks>`). Nobody retrieves the
//! records (the simulator reads them from the nodes), so their expiry timer is not run.
//!
//! # Cuts, crashes, pauses
//!
//! - `cut a b` makes the pair's connection fail: every message in flight on it, both ways, is
//!   lost, both ends get `LinkDown`, and the connection comes back at once (after the dial the
//!   node asks for), so the nodes run their real `Resume` and resend. A frame the receiver had
//!   delivered but not yet stated in its `Resume` (a durable branch whose commit has not
//!   completed) arrives again and is dropped by position: [`Simulator::duplicates_dropped`].
//! - A durable branch (`durable <name>`) has a [`MemoryStore`]. Each commit its node asks for
//!   is written to the store at once and reported durable (`CommitDone`) at the start of the
//!   next tick, so what the node holds back for it (frames, acknowledgements) waits a tick.
//! - `crash b` kills a durable branch: what it had not committed is lost (its store is reopened
//!   and holds exactly the last commit), and so is everything in flight on its connections; its
//!   peers get `LinkDown`, and their grace periods run. A branch that is down receives nothing.
//!   `restart b` starts it again with [`BranchNode::restore`] from its store, and its
//!   connections come back. An in-memory branch cannot crash: it would lose its money.
//! - `pause b n`: for the next `n` ticks the branch takes no input (no deliveries, its timers
//!   and commits wait, link changes are held) and so sends nothing; its connections stay up, so
//!   to its peers it is a slow branch, not a lost one. Frames it had sent still arrive.
//!
//! A node that halts or closes a connection (a protocol error) makes the run fail with its
//! reason: in a correct simulation neither happens.
//!
//! After the script, [`Simulator::finish`] ticks on until every snapshot is complete: every
//! branch that is up has finished its record (records cut short by a grace period count). It
//! stops with an error when nothing is left to happen and some snapshot is still incomplete (a
//! branch no marker can reach); a snapshot no branch holds a record of by then was lost with a
//! crash of its initiator before it was committed, and is reported unrecorded.
//!
//! Snapshot ids are 0, 1, 2... in the order the `snapshot` events appear.

pub mod svg;
pub mod timeline;
pub mod topology;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

pub use timeline::{MessageKind, TimelineEvent};
pub use topology::{Event, Script, Settings, Topology};

use crate::auth::Secret;
use crate::config::BranchEntry;
use crate::core::audit::{ChannelEvidence, CutEvidence};
use crate::core::node::{
    ACK_DELAY, BranchNode, Command, ConnId, Directions, Draw, Input, NodeConfig, Note, Pause,
    Timer, TimerOp,
};
use crate::core::{Channel, Frame, PeerMsg, Position, SnapshotId, SnapshotRecord};
use crate::store::{BankMeta, BranchStore, MemoryStore, Restored};

/// How long one tick is for the nodes' timers: their acknowledgement delay, so an
/// acknowledgement takes one tick.
pub const TICK: Duration = ACK_DELAY;

/// The grace period, in ticks, when the script does not set one: a live branch's default
/// ([`crate::branch::DEFAULT_PEER_GRACE`], 10 s).
pub const DEFAULT_GRACE_TICKS: u64 =
    (crate::branch::DEFAULT_PEER_GRACE.as_millis() / TICK.as_millis()) as u64;

/// The controller connection the simulator's commands come on.
const CONTROLLER: ConnId = 0;

/// The error for a crash of an in-memory branch.
pub(crate) fn not_durable(name: &str) -> String {
    format!("{name} is not durable: a crash would lose its money")
}

/// A problem with the simulator's input, located where possible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("{file}:{line}: {reason}")]
    At {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{file}: {reason}")]
    InFile { file: String, reason: String },
    #[error("{0}")]
    Run(String),
}

impl SimError {
    /// An error at `line` of `file` (0: the file as a whole).
    pub fn at(file: &str, line: usize, reason: String) -> Self {
        if line == 0 {
            SimError::InFile {
                file: file.to_string(),
                reason,
            }
        } else {
            SimError::At {
                file: file.to_string(),
                line,
                reason,
            }
        }
    }
}

/// Where frame delays come from.
#[derive(Debug)]
pub enum Delays {
    /// Uniform in 1..=5 from a seeded RNG.
    Seeded(Box<StdRng>),
    /// A fixed list, used in order; running out is an error.
    Listed { values: Vec<u64>, next: usize },
}

impl Delays {
    /// Delays drawn uniformly from 1..=5 by an RNG seeded with `seed`.
    pub fn seeded(seed: u64) -> Self {
        Delays::Seeded(Box::new(StdRng::seed_from_u64(seed)))
    }

    /// Parses a delays file: one integer (at least 1) per line; blank lines and `#` comments are
    /// skipped.
    pub fn parse_list(file: &str, text: &str) -> Result<Self, SimError> {
        let mut values = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.parse::<u64>() {
                Ok(delay) if delay >= 1 => values.push(delay),
                _ => {
                    return Err(SimError::at(
                        file,
                        index + 1,
                        format!("expected a delay of at least 1 tick, found {line:?}"),
                    ));
                }
            }
        }
        Ok(Delays::Listed { values, next: 0 })
    }

    fn next(&mut self) -> Result<u64, String> {
        match self {
            Delays::Seeded(rng) => Ok(rng.random_range(1..=5)),
            Delays::Listed { values, next } => {
                let delay = values.get(*next).copied().ok_or_else(|| {
                    format!(
                        "the delays list has {} entries; message #{} needs another",
                        values.len(),
                        *next + 1
                    )
                })?;
                *next += 1;
                Ok(delay)
            }
        }
    }
}

/// How a frame is named in the trace.
fn describe(frame: Frame) -> String {
    match frame {
        Frame::Transfer { seq, amount } => format!("transfer #{seq} ({amount})"),
        Frame::Marker { id } => format!("marker {id}"),
    }
}

/// Ticks until a timer set for `after` fires: at least one.
fn ticks_for(after: Duration) -> u64 {
    let tick = TICK.as_millis().max(1);
    u64::try_from(after.as_millis().div_ceil(tick))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A channel frame on its way.
#[derive(Debug, Clone, Copy)]
struct Queued {
    deliver_from: u64,
    pos: Position,
    frame: Frame,
}

/// One direction of a connection.
#[derive(Debug, Clone, Default)]
struct Direction {
    /// Channel frames, each with its delay.
    frames: VecDeque<Queued>,
    /// Control messages, delivered as soon as the receiver takes input.
    control: VecDeque<PeerMsg>,
}

/// The simulated connection of one pair of branches.
#[derive(Debug, Clone)]
struct Connection {
    /// The two branches, the lower name first. Direction 0 goes from `ends[0]` to `ends[1]`.
    ends: [usize; 2],
    /// Each end's peer index for the other end.
    peer_at: [Channel; 2],
    /// The connection's id while it is up.
    up: Option<ConnId>,
    dirs: [Direction; 2],
    /// A dial asked for and not answered yet: by which end, and from which tick on.
    dial: Option<(usize, u64)>,
}

impl Connection {
    /// Which side of the connection `branch` is.
    fn side(&self, branch: usize) -> usize {
        usize::from(self.ends[1] == branch)
    }

    fn frames_in_flight(&self) -> usize {
        self.dirs.iter().map(|dir| dir.frames.len()).sum()
    }
}

/// A durable branch's store.
#[derive(Debug, Clone)]
struct Durable {
    store: MemoryStore,
    bank: BankMeta,
    /// The bank's description is in the store (it goes with the first commit).
    bank_written: bool,
    /// The commit being written: its epoch and the tick it becomes durable.
    commit: Option<(u64, u64)>,
    /// While the branch is down: what its store held at the crash.
    restored: Option<Restored>,
}

/// One simulated branch.
#[derive(Debug, Clone)]
struct Branch {
    config: NodeConfig,
    /// `None` while the branch is down.
    node: Option<BranchNode>,
    /// Per peer index: the branch.
    peers: Vec<usize>,
    /// Per peer index: the connection.
    conns: Vec<usize>,
    /// Per core incoming channel: the branch it comes from.
    in_src: Vec<usize>,
    durable: Option<Durable>,
    /// Paused through this tick.
    paused_until: Option<u64>,
    /// Link changes held while paused, in order.
    held: Vec<Input>,
    /// Records still recording: how many of their transfers in transit are already logged.
    watched: BTreeMap<SnapshotId, usize>,
}

impl Branch {
    fn is_paused(&self, tick: u64) -> bool {
        self.paused_until.is_some_and(|until| tick <= until)
    }
}

/// A timer a node asked for.
#[derive(Debug, Clone, Copy)]
struct PendingTimer {
    due: u64,
    /// Order of setting, to fire timers due in the same tick in order.
    seq: u64,
    branch: usize,
    timer: Timer,
}

/// One transfer a branch recorded in transit, in the order branches recorded them.
#[derive(Debug, Clone, Copy)]
struct TransitNote {
    src: usize,
    dst: usize,
    seq: u64,
    amount: u64,
}

/// The simulated bank.
#[derive(Debug)]
pub struct Simulator {
    topology: Topology,
    settings: Settings,
    branches: Vec<Branch>,
    conns: Vec<Connection>,
    /// Per branch: its outgoing links as `(connection, direction)`, by destination name.
    outgoing: Vec<Vec<(usize, usize)>>,
    /// Branch indices by name.
    visit_order: Vec<usize>,
    delays: Delays,
    tick: u64,
    /// Per snapshot: the transfers recorded in transit, in the order they were received.
    snapshots: Vec<Vec<TransitNote>>,
    timers: Vec<PendingTimer>,
    timer_seq: u64,
    next_conn: ConnId,
    /// Frames put on the wire so far.
    frames_sent: usize,
    trace: Option<Vec<String>>,
    /// Every send, delivery and recording, for the space-time diagram, when asked for.
    timeline: Option<Vec<TimelineEvent>>,
    /// Cuts so far.
    cuts: usize,
    /// Crashes so far.
    crashes: usize,
    /// Frames delivered again (resent after a cut or crash) and dropped by position.
    duplicates: usize,
}

impl Simulator {
    /// A simulator at tick 0 with every branch in memory holding its initial balance, every
    /// connection up, and the default grace period.
    pub fn new(topology: Topology, delays: Delays) -> Self {
        let settings = Settings::new(&topology);
        Self::with_settings(topology, delays, settings)
            .unwrap_or_else(|err| unreachable!("in-memory branches cannot fail to start: {err}"))
    }

    /// A simulator at tick 0 with `settings` (durable branches, grace period); fails if a
    /// durable branch cannot make its first commit.
    pub fn with_settings(
        topology: Topology,
        delays: Delays,
        settings: Settings,
    ) -> Result<Self, String> {
        let count = topology.names.len();
        let mut visit_order: Vec<usize> = (0..count).collect();
        visit_order.sort_by(|&a, &b| topology.names[a].cmp(&topology.names[b]));
        let rank = |branch: usize| visit_order.iter().position(|&b| b == branch);
        let linked = |a: usize, b: usize| {
            topology.links.contains(&(a, b)) || topology.links.contains(&(b, a))
        };
        let peer_lists: Vec<Vec<usize>> = (0..count)
            .map(|b| {
                let mut peers: Vec<usize> =
                    (0..count).filter(|&p| p != b && linked(b, p)).collect();
                peers.sort_by_key(|&p| rank(p));
                peers
            })
            .collect();
        let mut conns: Vec<Connection> = Vec::new();
        let mut conn_of: BTreeMap<(usize, usize), usize> = BTreeMap::new();
        for &(src, dst) in &topology.links {
            let mut ends = [src, dst];
            ends.sort_by_key(|&b| rank(b));
            if conn_of.contains_key(&(ends[0], ends[1])) {
                continue;
            }
            let peer_index = |of: usize, other: usize| {
                peer_lists[of]
                    .iter()
                    .position(|&p| p == other)
                    .unwrap_or_default()
            };
            conn_of.insert((ends[0], ends[1]), conns.len());
            conns.push(Connection {
                ends,
                peer_at: [peer_index(ends[0], ends[1]), peer_index(ends[1], ends[0])],
                up: None,
                dirs: Default::default(),
                dial: None,
            });
        }
        let conn_between = |a: usize, b: usize| {
            let key = if rank(a) < rank(b) { (a, b) } else { (b, a) };
            conn_of.get(&key).copied().unwrap_or_default()
        };
        let grace = TICK.saturating_mul(u32::try_from(settings.grace_ticks).unwrap_or(u32::MAX));
        let mut branches = Vec::with_capacity(count);
        for (b, peers) in peer_lists.iter().enumerate() {
            let name = &topology.names[b];
            let config = NodeConfig {
                name: name.clone(),
                peers: peers.iter().map(|&p| topology.names[p].clone()).collect(),
                send_window: usize::MAX,
                authenticated: true,
                durable: settings.durable.get(b).copied().unwrap_or(false),
                incarnation: b as u64 + 1,
                epoch: 0,
                peer_grace: grace,
                directions: peers
                    .iter()
                    .map(|&p| Directions {
                        to: topology.links.contains(&(b, p)),
                        from: topology.links.contains(&(p, b)),
                    })
                    .collect(),
                #[cfg(test)]
                mutation: Default::default(),
            };
            let node = BranchNode::new(config.clone(), topology.balances[b]);
            let mut in_src = vec![0; node.core().incoming()];
            for (peer, &p) in peers.iter().enumerate() {
                if let Some(channel) = node.incoming_channel(peer) {
                    in_src[channel] = p;
                }
            }
            let durable = config.durable.then(|| {
                let member = |index: usize| BranchEntry {
                    name: topology.names[index].clone(),
                    addr: std::net::SocketAddr::from((
                        [127, 0, 0, 1],
                        u16::try_from(4000 + index).unwrap_or(u16::MAX),
                    )),
                };
                Durable {
                    store: MemoryStore::new(),
                    bank: BankMeta {
                        name: name.clone(),
                        members: std::iter::once(b)
                            .chain(peers.iter().copied())
                            .map(member)
                            .collect(),
                        secret: Secret::none(),
                        incarnation: config.incarnation,
                        epoch: config.epoch,
                    },
                    bank_written: false,
                    commit: None,
                    restored: None,
                }
            });
            branches.push(Branch {
                conns: peers.iter().map(|&p| conn_between(b, p)).collect(),
                peers: peers.clone(),
                in_src,
                config,
                node: Some(node),
                durable,
                paused_until: None,
                held: Vec::new(),
                watched: BTreeMap::new(),
            });
        }
        let mut outgoing: Vec<Vec<(usize, usize)>> = vec![Vec::new(); count];
        for &(src, dst) in &topology.links {
            let conn = conn_between(src, dst);
            outgoing[src].push((conn, conns[conn].side(src)));
        }
        for (src, list) in outgoing.iter_mut().enumerate() {
            list.sort_by_key(|&(conn, side)| rank(conns[conn].ends[1 - side]));
            debug_assert!(
                list.iter()
                    .all(|&(conn, side)| conns[conn].ends[side] == src)
            );
        }
        let mut sim = Self {
            topology,
            settings,
            branches,
            conns,
            outgoing,
            visit_order,
            delays,
            tick: 0,
            snapshots: Vec::new(),
            timers: Vec::new(),
            timer_seq: 0,
            next_conn: CONTROLLER + 1,
            frames_sent: 0,
            trace: None,
            timeline: None,
            cuts: 0,
            crashes: 0,
            duplicates: 0,
        };
        for b in 0..count {
            sim.carry_out(b, false)?;
        }
        sim.pump()?;
        Ok(sim)
    }

    /// Starts collecting a trace of every send and delivery.
    pub fn enable_trace(&mut self) {
        self.trace.get_or_insert_with(Vec::new);
    }

    /// Trace lines collected so far.
    pub fn trace(&self) -> &[String] {
        self.trace.as_deref().unwrap_or_default()
    }

    /// Adds a trace line, if tracing: `line` gets the branch names and the tick.
    fn trace_line(&mut self, line: impl FnOnce(&[String], u64) -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(line(&self.topology.names, self.tick));
        }
    }

    /// Starts recording every send, delivery and recording point (for [`svg`]).
    pub fn enable_timeline(&mut self) {
        self.timeline.get_or_insert_with(Vec::new);
    }

    /// Timeline events recorded so far, in the order they happened.
    pub fn timeline(&self) -> &[TimelineEvent] {
        self.timeline.as_deref().unwrap_or_default()
    }

    fn note(&mut self, event: TimelineEvent) {
        if let Some(timeline) = &mut self.timeline {
            timeline.push(event);
        }
    }

    /// The topology being simulated.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The settings the branches were created with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The current tick.
    pub fn now(&self) -> u64 {
        self.tick
    }

    /// A branch's current balance; for a branch that is down, what its store holds.
    pub fn balance(&self, branch: usize) -> u64 {
        let branch = &self.branches[branch];
        match (&branch.node, &branch.durable) {
            (Some(node), _) => node.balance(),
            (None, Some(durable)) => durable
                .restored
                .as_ref()
                .map_or(0, |restored| restored.core.state.balance),
            (None, None) => 0,
        }
    }

    /// Whether `branch` is up (not crashed).
    pub fn is_up(&self, branch: usize) -> bool {
        self.branches[branch].node.is_some()
    }

    /// Whether `branch` has a store (and so may crash).
    pub fn is_durable(&self, branch: usize) -> bool {
        self.branches[branch].durable.is_some()
    }

    /// Whether `branch` is paused now.
    pub fn is_paused(&self, branch: usize) -> bool {
        self.branches[branch].is_paused(self.tick)
    }

    /// Whether `src` can send to `dst` now: there is a link, and the node's channel on it is
    /// connected and resumed.
    pub fn channel_is_live(&self, src: usize, dst: usize) -> bool {
        let branch = &self.branches[src];
        let Some(peer) = branch.peers.iter().position(|&p| p == dst) else {
            return false;
        };
        branch
            .node
            .as_ref()
            .is_some_and(|node| node.is_live(peer) && node.outgoing_channel(peer).is_some())
    }

    /// Whether the connection between `a` and `b` is up.
    pub fn connection_is_up(&self, a: usize, b: usize) -> bool {
        self.conn_between(a, b)
            .is_some_and(|conn| self.conns[conn].up.is_some())
    }

    /// The node of `branch`, while it is up (for checks that read its state).
    pub fn node(&self, branch: usize) -> Option<&BranchNode> {
        self.branches[branch].node.as_ref()
    }

    /// Snapshots started so far.
    pub fn snapshot_count(&self) -> usize {
        self.snapshots.len()
    }

    /// Cuts so far.
    pub fn cut_count(&self) -> usize {
        self.cuts
    }

    /// Crashes so far.
    pub fn crash_count(&self) -> usize {
        self.crashes
    }

    /// Frames delivered again and dropped by position so far.
    pub fn duplicates_dropped(&self) -> usize {
        self.duplicates
    }

    fn conn_between(&self, a: usize, b: usize) -> Option<usize> {
        let branch = &self.branches[a];
        let peer = branch.peers.iter().position(|&p| p == b)?;
        Some(branch.conns[peer])
    }

    /// The record `branch` holds of snapshot `id`, while it is up.
    fn record(&self, branch: usize, id: SnapshotId) -> Option<&SnapshotRecord> {
        self.branches[branch].node.as_ref()?.record(id)
    }

    /// Whether every branch that is up has finished its record of snapshot `id` (finished
    /// records include those cut short by a grace period).
    pub fn is_complete(&self, id: SnapshotId) -> bool {
        (0..self.branches.len())
            .filter(|&b| self.is_up(b))
            .all(|b| self.record(b, id).is_some_and(SnapshotRecord::is_finished))
    }

    /// Why `branch` cannot act now, if it cannot.
    fn unavailable(&self, branch: usize) -> Option<String> {
        let name = &self.topology.names[branch];
        let state = &self.branches[branch];
        if state.node.is_none() {
            Some(format!("{name} is down (crashed)"))
        } else if state.is_paused(self.tick) {
            Some(format!(
                "{name} is paused through tick {}",
                state.paused_until.unwrap_or_default()
            ))
        } else {
            None
        }
    }

    /// `src` sends `amount` to `dst` now: one turn of its node's transfer generator that may
    /// only pick `dst`.
    pub fn send(&mut self, src: usize, dst: usize, amount: u64) -> Result<(), String> {
        let names = &self.topology.names;
        if !self.topology.links.contains(&(src, dst)) {
            return Err(format!("there is no link {} -> {}", names[src], names[dst]));
        }
        if let Some(reason) = self.unavailable(src) {
            return Err(reason);
        }
        let branch = &mut self.branches[src];
        let peer = branch
            .peers
            .iter()
            .position(|&p| p == dst)
            .ok_or_else(|| format!("{} has no peer {}", names[src], names[dst]))?;
        let node = branch
            .node
            .as_mut()
            .ok_or_else(|| format!("{} is down", names[src]))?;
        let draw = Draw {
            start: peer,
            amount,
        };
        match node.send_random_transfer(draw, |channel| channel == peer) {
            Ok(()) => {}
            Err(Pause::Funds) => {
                return Err(format!(
                    "{} has {}, cannot send {amount}",
                    names[src],
                    node.balance()
                ));
            }
            Err(Pause::Peer | Pause::Room) => {
                let why = if self.branches[dst].node.is_none() {
                    format!("{} is down", names[dst])
                } else {
                    "it is not connected and resumed".to_string()
                };
                return Err(format!(
                    "{} cannot send to {} now: {why}",
                    names[src], names[dst]
                ));
            }
        }
        let sent_before = self.frames_sent;
        self.carry_out(src, false)?;
        if self.frames_sent == sent_before && self.timeline.is_some() {
            // Debited now, on the wire once its commit is durable: the diagram needs both.
            let node = self.branches[src].node.as_ref();
            let seq = node.and_then(|node| {
                Some(node.core().state().sent[node.outgoing_channel(peer)?].count)
            });
            if let Some(seq) = seq {
                self.note(TimelineEvent::Debit {
                    tick: self.tick,
                    src,
                    dst,
                    seq,
                });
            }
        }
        self.pump()
    }

    /// `branch` starts the next snapshot now; returns its id.
    pub fn start_snapshot(&mut self, branch: usize) -> Result<SnapshotId, String> {
        let id = SnapshotId::try_from(self.snapshots.len()).map_err(|_| "too many snapshots")?;
        if let Some(reason) = self.unavailable(branch) {
            return Err(reason);
        }
        self.snapshots.push(Vec::new());
        self.feed(
            branch,
            Input::Command {
                conn: CONTROLLER,
                cmd: Command::StartSnapshot { id },
            },
        )?;
        Ok(id)
    }

    /// Advances one tick and runs it: pauses that end, commits that become durable, timers
    /// that are due, then the deliveries.
    pub fn step(&mut self) -> Result<(), String> {
        self.tick += 1;
        let tick = self.tick;
        for position in 0..self.visit_order.len() {
            let b = self.visit_order[position];
            let branch = &mut self.branches[b];
            if branch.paused_until.is_some_and(|until| until < tick) {
                branch.paused_until = None;
                for input in std::mem::take(&mut branch.held) {
                    self.input(b, input)?;
                }
            }
        }
        self.pump()?;
        for position in 0..self.visit_order.len() {
            let b = self.visit_order[position];
            if self.branches[b].is_paused(tick) {
                continue;
            }
            let due = self.branches[b]
                .durable
                .as_ref()
                .and_then(|d| d.commit)
                .filter(|&(_, at)| at <= tick);
            if let Some((epoch, _)) = due {
                if let Some(durable) = self.branches[b].durable.as_mut() {
                    durable.commit = None;
                }
                self.feed(b, Input::CommitDone { epoch })?;
            }
        }
        while let Some(index) = self.next_due_timer() {
            let timer = self.timers.remove(index);
            self.feed(timer.branch, Input::Timer(timer.timer))?;
        }
        for position in 0..self.visit_order.len() {
            let src = self.visit_order[position];
            let due = self.outgoing[src].iter().copied().find(|&(conn, side)| {
                let conn = &self.conns[conn];
                !self.branches[conn.ends[1 - side]].is_paused(tick)
                    && conn.dirs[side]
                        .frames
                        .front()
                        .is_some_and(|head| head.deliver_from <= tick)
            });
            if let Some((conn, side)) = due {
                self.deliver(conn, side)?;
            }
        }
        Ok(())
    }

    /// The timer to fire next: the earliest due one of a branch that takes input.
    fn next_due_timer(&self) -> Option<usize> {
        self.timers
            .iter()
            .enumerate()
            .filter(|(_, t)| t.due <= self.tick && !self.branches[t.branch].is_paused(self.tick))
            .min_by_key(|(_, t)| (t.due, t.seq))
            .map(|(index, _)| index)
    }

    /// The connection between `a` and `b` fails: what is in flight on it (both ways) is lost,
    /// both ends are told, and it comes back at once, so the nodes resume their channels.
    pub fn cut(&mut self, a: usize, b: usize) -> Result<(), String> {
        let names = &self.topology.names;
        let conn = self
            .conn_between(a, b)
            .ok_or_else(|| format!("there is no link between {} and {}", names[a], names[b]))?;
        if self.conns[conn].up.is_none() {
            let down = if self.is_up(a) { b } else { a };
            return Err(format!(
                "the connection between {} and {} is down ({} is down)",
                names[a], names[b], names[down]
            ));
        }
        let lost = self.conns[conn].frames_in_flight();
        let at = self.trace.as_ref().map(Vec::len);
        let sent_before = self.frames_sent;
        self.cuts += 1;
        self.connection_lost(conn)?;
        self.pump()?;
        let resent = self.frames_sent - sent_before;
        if let (Some(trace), Some(at)) = (&mut self.trace, at) {
            trace.insert(
                at,
                format!(
                    "tick {}: cut {} <-> {}: {lost} message(s) in flight lost, {resent} frame(s) resent",
                    self.tick, self.topology.names[a], self.topology.names[b]
                ),
            );
        }
        Ok(())
    }

    /// Connection `conn` is gone: what is in flight is lost, and each end that is up gets
    /// `LinkDown`.
    fn connection_lost(&mut self, conn: usize) -> Result<(), String> {
        let connection = &mut self.conns[conn];
        let Some(id) = connection.up.take() else {
            return Ok(());
        };
        connection.dirs = Default::default();
        let ends = connection.ends;
        let peer_at = connection.peer_at;
        for side in 0..2 {
            let (src, dst) = (ends[side], ends[1 - side]);
            if self.topology.links.contains(&(src, dst)) {
                self.note(TimelineEvent::Cut {
                    tick: self.tick,
                    src,
                    dst,
                });
            }
        }
        for side in 0..2 {
            self.input(
                ends[side],
                Input::LinkDown {
                    peer: peer_at[side],
                    conn: id,
                },
            )?;
        }
        Ok(())
    }

    /// The durable `branch` crashes: what it had not committed is lost, and so is everything
    /// in flight on its connections. It stays down until [`Self::restart`].
    pub fn crash(&mut self, branch: usize) -> Result<(), String> {
        let name = self.topology.names[branch].clone();
        let state = &mut self.branches[branch];
        let Some(durable) = state.durable.as_mut() else {
            return Err(not_durable(&name));
        };
        let Some(node) = state.node.take() else {
            return Err(format!("{name} is already down"));
        };
        let (store, restored) = durable
            .store
            .reopen()
            .map_err(|err| format!("{name}: reopening its store: {err}"))?;
        durable.store = store;
        durable.commit = None;
        durable.restored = Some(restored.ok_or_else(|| {
            format!("{name}'s store holds no bank: it crashed before its first commit")
        })?);
        let state = &mut self.branches[branch];
        state.paused_until = None;
        state.held.clear();
        state.watched.clear();
        self.timers.retain(|timer| timer.branch != branch);
        for peer in 0..self.branches[branch].conns.len() {
            let conn = self.branches[branch].conns[peer];
            if self.conns[conn].dial.is_some_and(|(by, _)| by == branch) {
                self.conns[conn].dial = None;
            }
        }
        self.crashes += 1;
        let lost: usize = self.branches[branch]
            .conns
            .iter()
            .map(|&conn| self.conns[conn].frames_in_flight())
            .sum();
        self.trace_line(|_, tick| {
            format!("tick {tick}: crash {name}: {lost} message(s) in flight lost")
        });
        self.note(TimelineEvent::Crash {
            tick: self.tick,
            branch,
        });
        self.roll_back_records(branch, &node);
        for peer in 0..self.branches[branch].conns.len() {
            let conn = self.branches[branch].conns[peer];
            self.connection_lost(conn)?;
        }
        self.pump()
    }

    /// After a crash of `branch`: what its records had that its store does not is undone in the
    /// log of transfers in transit (and the timeline). The node redoes it once the frames are
    /// resent.
    fn roll_back_records(&mut self, branch: usize, before: &BranchNode) {
        let restored = self.branches[branch]
            .durable
            .as_ref()
            .and_then(|d| d.restored.as_ref());
        let kept = |id: SnapshotId| {
            restored.and_then(|r| r.records.iter().find(|record| record.header.id == id))
        };
        let mut undone = Vec::new();
        for (index, notes) in self.snapshots.iter_mut().enumerate() {
            let Ok(id) = SnapshotId::try_from(index) else {
                continue;
            };
            let record = kept(id);
            if before.record(id).is_some() && record.is_none() {
                undone.push(TimelineEvent::Unrecord {
                    snapshot: id,
                    branch,
                });
            }
            let mut keep = record.map_or(0, |r| r.in_transit.len());
            notes.retain(|note| {
                if note.dst != branch {
                    return true;
                }
                if keep > 0 {
                    keep -= 1;
                    return true;
                }
                undone.push(TimelineEvent::InTransitUndone {
                    snapshot: id,
                    src: note.src,
                    dst: note.dst,
                    seq: note.seq,
                });
                false
            });
        }
        for event in undone {
            self.note(event);
        }
    }

    /// The crashed `branch` starts again from its store; its connections come back.
    pub fn restart(&mut self, branch: usize) -> Result<(), String> {
        let name = self.topology.names[branch].clone();
        let state = &mut self.branches[branch];
        if state.node.is_some() {
            return Err(format!(
                "{name} is not down: only a crashed branch restarts"
            ));
        }
        let restored = state
            .durable
            .as_mut()
            .and_then(|d| d.restored.take())
            .ok_or_else(|| format!("{name} has no store to restart from"))?;
        state.watched = restored
            .records
            .iter()
            .filter(|r| !r.header.finished)
            .map(|r| (r.header.id, r.in_transit.len()))
            .collect();
        let node = BranchNode::restore(
            state.config.clone(),
            restored.core,
            restored.channels,
            restored.records,
        )
        .map_err(|err| format!("{name} cannot restart from its store: {err}"))?;
        state.node = Some(node);
        self.trace_line(|_, tick| format!("tick {tick}: restart {name}"));
        self.note(TimelineEvent::Restart {
            tick: self.tick,
            branch,
        });
        self.carry_out(branch, true)?;
        self.pump()
    }

    /// `branch` takes no input for the next `ticks` ticks.
    pub fn pause(&mut self, branch: usize, ticks: u64) -> Result<(), String> {
        if let Some(reason) = self.unavailable(branch) {
            return Err(reason);
        }
        let until = self.tick.saturating_add(ticks);
        self.branches[branch].paused_until = (ticks > 0).then_some(until);
        self.trace_line(|names, tick| {
            format!("tick {tick}: pause {} through tick {until}", names[branch])
        });
        Ok(())
    }

    /// Ticks until nothing is in flight, no commit is being written, no branch is paused and
    /// every connection is up, so every balance is final. Every branch must be up.
    pub fn settle(&mut self) -> Result<(), String> {
        let names = &self.topology.names;
        if let Some(down) = (0..self.branches.len()).find(|&b| !self.is_up(b)) {
            return Err(format!(
                "{} is down: restart it before settling",
                names[down]
            ));
        }
        loop {
            if self.is_quiet() {
                return match self.conns.iter().find(|conn| conn.up.is_none()) {
                    Some(conn) => Err(format!(
                        "the connection between {} and {} is down and nobody dials it",
                        self.topology.names[conn.ends[0]], self.topology.names[conn.ends[1]]
                    )),
                    None => Ok(()),
                };
            }
            self.step()?;
        }
    }

    /// Nothing in flight, no commit being written, no branch paused, no dial waiting to be
    /// answered between two branches that are up.
    fn is_quiet(&self) -> bool {
        self.conns.iter().all(|conn| {
            conn.dirs
                .iter()
                .all(|dir| dir.frames.is_empty() && dir.control.is_empty())
                && (conn.dial.is_none() || conn.ends.iter().any(|&b| !self.is_up(b)))
        }) && self.branches.iter().all(|branch| {
            branch.paused_until.is_none()
                && branch.durable.as_ref().is_none_or(|d| d.commit.is_none())
        })
    }

    /// Nothing can happen any more: quiet, and no timer waiting.
    fn is_idle(&self) -> bool {
        self.is_quiet() && self.timers.is_empty()
    }

    /// Applies a whole script (built with its settings: [`Self::with_settings`]); errors name
    /// the script line.
    pub fn run_script(&mut self, file: &str, script: &Script) -> Result<(), SimError> {
        if script.settings != self.settings {
            return Err(SimError::at(
                file,
                0,
                "the script's settings (durable, grace) are not the simulator's: create it with Simulator::with_settings".into(),
            ));
        }
        for &(line, event) in &script.events {
            let result = match event {
                Event::Send { src, dst, amount } => self.send(src, dst, amount),
                Event::Snapshot { branch } => self.start_snapshot(branch).map(|_| ()),
                Event::Tick(n) => (0..n).try_for_each(|_| self.step()),
                Event::Cut { src, dst } => self.cut(src, dst),
                Event::Crash { branch } => self.crash(branch),
                Event::Restart { branch } => self.restart(branch),
                Event::Pause { branch, ticks } => self.pause(branch, ticks),
            };
            result.map_err(|reason| SimError::at(file, line, reason))?;
        }
        Ok(())
    }

    /// Ticks until every snapshot is complete. Fails if nothing is left to happen while some
    /// snapshot is still incomplete (a branch no marker can reach). A snapshot no branch that
    /// is up holds a record of by then was lost with its initiator's crash, and counts as done.
    pub fn finish(&mut self) -> Result<(), String> {
        loop {
            let incomplete: Vec<SnapshotId> = (0..self.snapshots.len())
                .filter_map(|id| SnapshotId::try_from(id).ok())
                .filter(|&id| !self.is_complete(id))
                .collect();
            if incomplete.is_empty() {
                return Ok(());
            }
            if self.is_idle() {
                let lost = |id: SnapshotId| {
                    self.crashes > 0
                        && (0..self.branches.len()).all(|b| self.record(b, id).is_none())
                };
                let Some(&first) = incomplete.iter().find(|&&id| !lost(id)) else {
                    return Ok(());
                };
                let stuck: Vec<&str> = (0..self.branches.len())
                    .filter(|&b| self.is_up(b))
                    .filter(|&b| !self.record(b, first).is_some_and(|r| r.is_finished()))
                    .map(|b| self.topology.names[b].as_str())
                    .collect();
                return Err(format!(
                    "snapshot {first} can never complete: no message left in flight, and {} still recording or never reached",
                    stuck.join(", ")
                ));
            }
            self.step()?;
        }
    }

    /// Feeds `input` to `branch` and carries out what follows, control messages included.
    fn feed(&mut self, branch: usize, input: Input) -> Result<(), String> {
        self.input(branch, input)?;
        self.pump()
    }

    /// Feeds `input` to `branch` (held while it is paused, dropped while it is down) and carries
    /// out its node's `Ready`.
    fn input(&mut self, branch: usize, input: Input) -> Result<(), String> {
        let tick = self.tick;
        let state = &mut self.branches[branch];
        if state.is_paused(tick) {
            state.held.push(input);
            return Ok(());
        }
        let Some(node) = state.node.as_mut() else {
            return Ok(());
        };
        node.step(input);
        self.carry_out(branch, false)
    }

    /// Carries out what `branch`'s node asks for, in the order the node documents: notes,
    /// the commit, messages, timers, closes, dials. `restored`: the node was just restored, so
    /// the records it reports were begun before the crash.
    fn carry_out(&mut self, branch: usize, restored: bool) -> Result<(), String> {
        let Some(node) = self.branches[branch].node.as_mut() else {
            return Ok(());
        };
        let ready = node.take_ready();
        let name = self.topology.names[branch].clone();
        for note in ready.notes {
            match note {
                Note::RecordBegun(id) if !restored => {
                    self.branches[branch].watched.insert(id, 0);
                    self.note(TimelineEvent::Record {
                        tick: self.tick,
                        branch,
                        snapshot: id,
                    });
                }
                Note::Halt(reason) => return Err(format!("{name} halted: {reason}")),
                _ => {}
            }
        }
        if let Some(persist) = ready.persist {
            let tick = self.tick;
            if let Some(durable) = self.branches[branch].durable.as_mut() {
                let bank = (!durable.bank_written).then_some(&durable.bank);
                durable
                    .store
                    .commit(bank, &persist.changes)
                    .map_err(|err| format!("{name}: commit {}: {err}", persist.epoch))?;
                durable.bank_written = true;
                durable.commit = Some((persist.epoch, tick + 1));
            }
        }
        for message in ready.messages {
            let conn = self.branches[branch].conns[message.peer];
            if self.conns[conn].up != Some(message.conn) {
                continue; // for a connection that is gone
            }
            let side = self.conns[conn].side(branch);
            match message.msg {
                PeerMsg::Channel { frame, pos } => self.transmit(conn, side, pos, frame)?,
                msg => self.conns[conn].dirs[side].control.push_back(msg),
            }
        }
        for op in ready.timers {
            match op {
                // Nobody retrieves the records: they are kept for the report.
                TimerOp::Set {
                    timer: Timer::RecordExpiry(_),
                    ..
                } => {}
                TimerOp::Set { timer, after } => {
                    self.timers
                        .retain(|t| !(t.branch == branch && t.timer == timer));
                    self.timers.push(PendingTimer {
                        due: self.tick + ticks_for(after),
                        seq: self.timer_seq,
                        branch,
                        timer,
                    });
                    self.timer_seq += 1;
                }
                TimerOp::Cancel(timer) => self
                    .timers
                    .retain(|t| !(t.branch == branch && t.timer == timer)),
            }
        }
        if let Some(close) = ready.closes.first() {
            let peer = self.branches[branch].peers[close.peer];
            let reason = match &close.refusal {
                Some(PeerMsg::Refusal { reason, .. }) => reason.clone(),
                _ => "no reason given".to_string(),
            };
            return Err(format!(
                "{name} closed its connection to {}: {reason}",
                self.topology.names[peer]
            ));
        }
        for dial in ready.dials {
            let conn = self.branches[branch].conns[dial.peer];
            let from = self.tick + u64::from(dial.after_pause);
            let connection = &mut self.conns[conn];
            if connection.up.is_some() {
                return Err(format!(
                    "{name} dialled {} while their connection is up",
                    self.topology.names[self.branches[branch].peers[dial.peer]]
                ));
            }
            connection.dial = Some((branch, from));
        }
        self.log_in_transit(branch);
        Ok(())
    }

    /// Logs the transfers `branch`'s records found in transit since the last look, in the
    /// order received.
    fn log_in_transit(&mut self, branch: usize) {
        let state = &mut self.branches[branch];
        let Some(node) = state.node.as_ref() else {
            return;
        };
        let mut found = Vec::new();
        state.watched.retain(|&id, seen| {
            let Some(record) = node.record(id) else {
                return false;
            };
            for transfer in &record.in_transit()[*seen..] {
                found.push((id, transfer.from, transfer.seq, transfer.amount));
            }
            *seen = record.in_transit().len();
            !record.is_finished()
        });
        for (id, from, seq, amount) in found {
            let src = self.branches[branch].in_src[from];
            self.note(TimelineEvent::InTransit {
                snapshot: id,
                src,
                dst: branch,
                seq,
            });
            if let Some(notes) = usize::try_from(id)
                .ok()
                .and_then(|i| self.snapshots.get_mut(i))
            {
                notes.push(TransitNote {
                    src,
                    dst: branch,
                    seq,
                    amount,
                });
            }
        }
    }

    /// Answers due dials and delivers control messages until none is left.
    fn pump(&mut self) -> Result<(), String> {
        loop {
            let mut progressed = false;
            for conn in 0..self.conns.len() {
                let connection = &self.conns[conn];
                let due = connection.dial.is_some_and(|(_, from)| from <= self.tick);
                if due && connection.ends.iter().all(|&b| self.is_up(b)) {
                    self.connect(conn)?;
                    progressed = true;
                }
                for side in 0..2 {
                    let receiver = self.conns[conn].ends[1 - side];
                    if self.branches[receiver].is_paused(self.tick) || !self.is_up(receiver) {
                        continue;
                    }
                    let Some(id) = self.conns[conn].up else {
                        continue;
                    };
                    while let Some(msg) = self.conns[conn].dirs[side].control.pop_front() {
                        progressed = true;
                        let peer = self.conns[conn].peer_at[1 - side];
                        self.input(
                            receiver,
                            Input::Peer {
                                peer,
                                conn: id,
                                msg,
                            },
                        )?;
                        if self.conns[conn].up != Some(id) {
                            break;
                        }
                    }
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Connection `conn` comes up: a new id, and `LinkUp` on both ends.
    fn connect(&mut self, conn: usize) -> Result<(), String> {
        let id = self.next_conn;
        self.next_conn += 1;
        let connection = &mut self.conns[conn];
        connection.dial = None;
        connection.up = Some(id);
        connection.dirs = Default::default();
        let (ends, peer_at) = (connection.ends, connection.peer_at);
        for side in 0..2 {
            self.input(
                ends[side],
                Input::LinkUp {
                    peer: peer_at[side],
                    conn: id,
                },
            )?;
        }
        Ok(())
    }

    /// Puts the frame at `pos` on direction `side` of `conn`, with the next delay.
    fn transmit(
        &mut self,
        conn: usize,
        side: usize,
        pos: Position,
        frame: Frame,
    ) -> Result<(), String> {
        let delay = self.delays.next()?;
        let deliver_from = self.tick + delay;
        let (src, dst) = (self.conns[conn].ends[side], self.conns[conn].ends[1 - side]);
        self.frames_sent += 1;
        self.trace_line(|names, tick| {
            format!(
                "tick {tick}: send {} -> {} {}, due at tick {deliver_from}",
                names[src],
                names[dst],
                describe(frame)
            )
        });
        self.note(TimelineEvent::Send {
            tick: self.tick,
            src,
            dst,
            kind: frame.into(),
            due: deliver_from,
        });
        self.conns[conn].dirs[side].frames.push_back(Queued {
            deliver_from,
            pos,
            frame,
        });
        Ok(())
    }

    /// Delivers the head frame of direction `side` of `conn` to its receiver's node.
    fn deliver(&mut self, conn: usize, side: usize) -> Result<(), String> {
        let Some(message) = self.conns[conn].dirs[side].frames.pop_front() else {
            return Ok(());
        };
        let Some(id) = self.conns[conn].up else {
            return Ok(());
        };
        let (src, dst) = (self.conns[conn].ends[side], self.conns[conn].ends[1 - side]);
        let peer = self.conns[conn].peer_at[1 - side];
        let delivered = self.branches[dst]
            .node
            .as_ref()
            .map_or(0, |node| node.delivered_from(peer));
        self.note(TimelineEvent::Deliver {
            tick: self.tick,
            src,
            dst,
        });
        if message.pos <= delivered {
            self.duplicates += 1;
            self.trace_line(|names, tick| {
                format!(
                    "tick {tick}: drop duplicate {} -> {} {} (position {})",
                    names[src],
                    names[dst],
                    describe(message.frame),
                    message.pos
                )
            });
        } else {
            self.trace_line(|names, tick| {
                format!(
                    "tick {tick}: deliver {} -> {} {}",
                    names[src],
                    names[dst],
                    describe(message.frame)
                )
            });
        }
        self.feed(
            dst,
            Input::Peer {
                peer,
                conn: id,
                msg: PeerMsg::Channel {
                    frame: message.frame,
                    pos: message.pos,
                },
            },
        )
    }

    /// Snapshot `id` in the scenario output format: a line with the id, `<name> <balance>` per
    /// branch (topology order), then `<src> <dst> token(<amount>)` per transfer recorded in
    /// transit, in the order it was received. A branch that is down says `down`; one with no
    /// record `unrecorded`; a record cut short names the peers whose markers it stopped
    /// waiting for.
    pub fn report(&self, id: SnapshotId) -> String {
        let names = &self.topology.names;
        let mut out = format!("snapshot {id}\n");
        for (branch, name) in names.iter().enumerate() {
            if !self.is_up(branch) {
                let _ = writeln!(out, "{name} down");
                continue;
            }
            let Some(record) = self.record(branch, id) else {
                let _ = writeln!(out, "{name} unrecorded");
                continue;
            };
            let _ = write!(out, "{name} {}", record.balance());
            if !record.is_finished() {
                out.push_str(" (still recording)");
            } else if !record.lost().is_empty() {
                let lost: Vec<&str> = record
                    .lost()
                    .iter()
                    .map(|&from| names[self.branches[branch].in_src[from]].as_str())
                    .collect();
                let _ = write!(out, " (cut short: no marker from {})", lost.join(", "));
            }
            out.push('\n');
        }
        for note in usize::try_from(id)
            .ok()
            .and_then(|i| self.snapshots.get(i))
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let _ = writeln!(
                out,
                "{} {} token({})",
                names[note.src], names[note.dst], note.amount
            );
        }
        out
    }

    /// The consistent-cut evidence of snapshot `id`, for [`crate::core::Audit::check`]; `None`
    /// until every branch is up and has finished recording it without losing a channel (a
    /// record cut short is incomplete).
    pub fn evidence(&self, id: SnapshotId) -> Option<CutEvidence> {
        let records: Vec<&SnapshotRecord> = (0..self.branches.len())
            .map(|b| {
                self.record(b, id)
                    .filter(|record| record.is_finished() && record.lost().is_empty())
            })
            .collect::<Option<_>>()?;
        let channels = self
            .topology
            .links
            .iter()
            .map(|&(src, dst)| {
                let (out, incoming) = self.channel_ends(src, dst)?;
                Some(ChannelEvidence::between(
                    (src, records[src], out),
                    (dst, records[dst], incoming),
                ))
            })
            .collect::<Option<_>>()?;
        Some(CutEvidence {
            names: self.topology.names.clone(),
            balances: records.iter().map(|record| record.balance()).collect(),
            channels,
            expected_total: self.topology.balances.iter().sum(),
        })
    }

    /// The link `src -> dst`'s outgoing channel at `src` and incoming channel at `dst`, as
    /// their nodes number them.
    fn channel_ends(&self, src: usize, dst: usize) -> Option<(Channel, Channel)> {
        let peer_of =
            |of: usize, other: usize| self.branches[of].peers.iter().position(|&p| p == other);
        let out = self.branches[src]
            .node
            .as_ref()?
            .outgoing_channel(peer_of(src, dst)?)?;
        let incoming = self.branches[dst]
            .node
            .as_ref()?
            .incoming_channel(peer_of(dst, src)?)?;
        Some((out, incoming))
    }

    /// Exactly once, checked from the nodes' counters: on every link, the transfers the
    /// receiver has received (count, amount and the digest of every `(seq, amount)` in order)
    /// are the ones the sender has sent. Holds once settled ([`Self::settle`]). Each violation
    /// names its link and both counts; a branch that is down is one too.
    pub fn exactly_once_violations(&self) -> Vec<String> {
        let names = &self.topology.names;
        let mut violations = Vec::new();
        for &(src, dst) in &self.topology.links {
            let (Some(sender), Some(receiver), Some((out, incoming))) =
                (self.node(src), self.node(dst), self.channel_ends(src, dst))
            else {
                violations.push(format!("{} -> {}: an end is down", names[src], names[dst]));
                continue;
            };
            let sent = sender.core().state().sent[out];
            let received = receiver.core().state().received[incoming];
            if sent != received {
                violations.push(format!(
                    "{} -> {}: sent {} transfer(s) of {} in all (digest {:016x}), received {} of {} (digest {:016x})",
                    names[src],
                    names[dst],
                    sent.count,
                    sent.amount,
                    sent.digest,
                    received.count,
                    received.amount,
                    received.digest
                ));
            }
        }
        violations
    }
}

/// Options of a scenario run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Print every send and delivery with its tick before the snapshots.
    pub trace: bool,
    /// Append the consistent-cut checker's verdict after each snapshot.
    pub check: bool,
}

/// Runs a scenario end to end and returns its output (what `snapbank-sim` prints).
pub fn run_scenario(
    topology_file: &str,
    topology_text: &str,
    events_file: &str,
    events_text: &str,
    delays: Delays,
    options: &RunOptions,
) -> Result<String, SimError> {
    let topology = Topology::parse(topology_file, topology_text)?;
    let script = Script::parse(events_file, events_text, &topology)?;
    let mut sim = Simulator::with_settings(topology, delays, script.settings.clone())
        .map_err(SimError::Run)?;
    if options.trace {
        sim.enable_trace();
    }
    sim.run_script(events_file, &script)?;
    sim.finish().map_err(SimError::Run)?;
    let mut out = String::new();
    for line in sim.trace() {
        out.push_str(line);
        out.push('\n');
    }
    for index in 0..sim.snapshot_count() {
        let id =
            SnapshotId::try_from(index).map_err(|_| SimError::Run("too many snapshots".into()))?;
        out.push_str(&sim.report(id));
        if options.check {
            let verdict = match sim.evidence(id).map(|e| crate::core::Audit::check(&e)) {
                Some(audit) if audit.is_proven() => format!(
                    "check: ok (consistent cut, {} channels, total {})",
                    audit.checked_channels, audit.total
                ),
                Some(audit) => {
                    let mut problems: Vec<String> =
                        audit.violations.iter().map(ToString::to_string).collect();
                    if !audit.sums_to_total() {
                        problems.push(format!("total {} != {}", audit.total, audit.expected_total));
                    }
                    format!("check: FAILED ({})", problems.join("; "))
                }
                None => "check: incomplete".to_string(),
            };
            out.push_str(&verdict);
            out.push('\n');
        }
    }
    Ok(out)
}
