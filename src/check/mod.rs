//! The model checker: every interleaving of a small bank of production [`BranchNode`]s, with
//! cuts, crashes and restarts, explored breadth-first by `stateright`.
//!
//! The model is a custom [`stateright::Model`] rather than stateright's actor model, because the
//! network must be TCP's: one connection per pair of branches, FIFO in each direction, and a cut
//! loses everything in flight on it in both directions at once (stateright's actor network is
//! unordered and duplicating, and its lossy mode drops single messages from the middle of a
//! flow). A state is every node, every branch's committed store ([`StoreImage`]), every
//! connection's two queues, the armed timers and the controller; an action is one of:
//! - `Deliver`: the head of one direction of one connection reaches its node;
//! - `Connect`: a dial the node asked for succeeds: both ends get the new connection (its id
//!   made from the pair and the pair's count of connections, not from a bank-wide counter, so
//!   states that differ only in the order connections came up are one state);
//! - `Cut`: a connection fails; what was in flight on it is lost and both ends see it go;
//! - `Wipe`: a branch restarts without its state (a new incarnation holding nothing), as one
//!   restarted without its `--data-dir` and initialised again: its money is gone by
//!   definition, so in states after a wipe only the property that its peers refuse it is
//!   checked. Only `b0`, which dials every peer, is wiped: its `Resume` goes first and is
//!   refused as a new incarnation. (A wiped branch that others dial refuses the dialler's
//!   `Resume`, which states more than it ever sent, as a protocol error, and the dialler keeps
//!   retrying at its backoff's pace, as it should, since the operator may yet restart the
//!   branch with its data: a run without end, which BFS cannot finish, so it is left out;
//! - `Crash` / `Restart`: a durable branch loses everything it had not committed (a commit
//!   being written is lost too), then comes back from its store. Which branch may crash is
//!   chosen in the initial state (one initial state per branch); only that branch's commits
//!   land at a moment of the checker's choosing (`Commit`), the others' land at once, since
//!   only a crash can tell a commit that landed from one being written;
//! - `Fire`: an armed grace or acknowledgement timer fires (time is not modelled: any armed
//!   timer may fire at any point);
//! - `Commit`: a branch's commit being written becomes durable;
//! - `Transfer`: a branch sends 1 to a peer (the node's generator, with the draw fixed);
//! - `Snapshot` and `Retrieve`: the controller starts a snapshot at an initiator, and asks a
//!   branch for its record, waiting until it is finished (the retrieve's own deadline is not
//!   modelled: the controller waits as long as it takes).
//! - `RollbackPrepare` / `RollbackCommit`: a rollback of the whole bank to the latest ok
//!   snapshot (`--rollbacks`): each branch's phase one drops its node (its connections go
//!   down, the snapshots in flight are given up); once every branch is prepared, each branch's
//!   phase two builds its node of the next epoch holding the balance the controller gives it.
//!   With durable branches, that node's first commit starts the store over in the new epoch,
//!   and the rollback ends only once every store holds it. The branch that may crash can die
//!   between its two phases (`Crash` of a dropped node): it comes back from its store in the
//!   epoch before, and its phase two drops that node first. A commit of the old node still
//!   being written at phase one is modelled as lost (the runtime lets it land before the new
//!   node's first commit; either way the new epoch's first commit starts the store over).
//!
//! The bounds (branches, balance, transfers per branch, snapshots, cuts, crashes) make the
//! state space finite. The properties are in [`properties`]; [`Bank`] is the model; a path of
//! it is written, read back and replayed as a `snapbank-sim` step script by [`scenario`].
//!
//! No symmetry reduction is made: branches are not interchangeable (the lower name dials,
//! channels are in name order, the branch that may crash is an initial choice), so merging
//! states up to a renaming of branches would merge states that behave differently.
//!
//! Once no fault or snapshot start can come, the search follows a persistent set of steps
//! only ([`Bank::persistent`]): a partial-order reduction. Before that, every cut, crash and
//! snapshot start conflicts with the steps of the branches it touches and, through the shared
//! budgets, with every other one, so nothing smaller than every enabled step is persistent.
//!
//! Fairness assumed by the *eventually* property: once the fault bounds are spent, every
//! enabled delivery, connection, commit and timer eventually happens. BFS explores every finite
//! path, and every path ends because the bounds are finite and a quiet bank arms no timer.

pub mod properties;
pub mod scenario;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use stateright::{Model, Property};

use crate::auth::Secret;
use crate::config::BranchEntry;
use crate::core::node::{
    Answer, BranchNode, Command, ConnId, Draw, Input, NodeConfig, Note, Persist, RecordStatus,
    Timer, TimerOp,
};
use crate::core::{Channel, PeerMsg, SnapshotId};
use crate::store::{BankMeta, StoreImage};

/// The bounds of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Branches in the bank (2 or 3 keep the state space small).
    pub branches: usize,
    /// Each branch's initial balance.
    pub balance: u64,
    /// Transfers each branch may send (each of 1).
    pub transfers: u8,
    /// Snapshots the controller may start.
    pub snapshots: u8,
    /// Connection cuts.
    pub cuts: u8,
    /// Crashes (each followed, when the checker chooses, by a restart).
    pub crashes: u8,
    /// Restarts without state: a branch comes back empty, as a new incarnation, as one
    /// restarted without its `--data-dir` would.
    pub wipes: u8,
    /// Rollbacks of the whole (in-memory) bank to its latest ok snapshot, in a new epoch:
    /// checked without crashes and wipes, as the rollback of durable branches is not built.
    pub rollbacks: u8,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            branches: 2,
            balance: 2,
            transfers: 1,
            snapshots: 1,
            cuts: 1,
            crashes: 0,
            wipes: 0,
            rollbacks: 0,
        }
    }
}

/// One step of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// The head of the queue from `from` to `to` is delivered.
    Deliver { from: usize, to: usize },
    /// `dialler`'s dial of `peer` succeeds.
    Connect { dialler: usize, peer: usize },
    /// The connection between `a` and `b` fails.
    Cut { a: usize, b: usize },
    /// Branch `branch` crashes.
    Crash(usize),
    /// Branch `branch` restarts from its store.
    Restart(usize),
    /// Branch `branch` restarts without its state.
    Wipe(usize),
    /// Timer `timer` of branch `branch` fires.
    Fire { branch: usize, timer: Timer },
    /// Branch `branch`'s commit becomes durable.
    Commit(usize),
    /// `from` sends 1 to `to`.
    Transfer { from: usize, to: usize },
    /// The controller starts the next snapshot at `initiator`.
    Snapshot { initiator: usize },
    /// The controller asks `branch` for snapshot `id`.
    Retrieve { branch: usize, id: SnapshotId },
    /// Phase one of a rollback at `branch` (the first one starts the rollback): it stops and
    /// drops its node.
    RollbackPrepare(usize),
    /// Phase two at `branch`, once every branch is prepared: a new node in the next epoch
    /// holding its checkpointed balance.
    RollbackCommit(usize),
}

/// The connection of one pair of branches: the two directions' queues.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Connection {
    /// Its id (the same at both ends).
    pub id: ConnId,
    /// Messages from the lower-numbered branch to the other, oldest first.
    pub up: VecDeque<PeerMsg>,
    /// Messages the other way.
    pub down: VecDeque<PeerMsg>,
}

/// One snapshot as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotState {
    /// Its id.
    pub id: SnapshotId,
    /// Each branch's answer, once it came.
    pub answers: Vec<Option<Answer>>,
    /// Whether each branch has a retrieve for it outstanding (lost if the branch crashes).
    pub asked: Vec<bool>,
    /// A cut or crash happened after it started.
    pub across_fault: bool,
    /// It started after a crashed branch restarted.
    pub after_restart: bool,
    /// It started after a rollback.
    pub after_rollback: bool,
    /// A rollback began before every branch answered: the controller gave it up.
    pub abandoned: bool,
}

/// A rollback under way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RollbackState {
    /// Each branch's balance in the new epoch: the latest ok snapshot's record, with the money
    /// recorded in transit to it credited (the initial balances before any snapshot is ok).
    pub balances: Vec<u64>,
    /// Which branches have dropped their node.
    pub prepared: Vec<bool>,
    /// Which branches hold their node of the new epoch.
    pub committed: Vec<bool>,
    /// A connection between nodes of two epochs has been made (the refusal repeats the same
    /// way each time it is redialled: one is explored, so the search stays finite).
    pub crossed: bool,
}

/// What the budgets have left, and what has happened.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Budget {
    pub transfers: Vec<u8>,
    pub snapshots: u8,
    pub cuts: u8,
    pub crashes: u8,
    pub wipes: u8,
    pub rollbacks: u8,
}

/// One state of the bank.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BankState {
    /// Each branch's node, `None` while it is crashed. Shared between states until a step
    /// changes it: most steps change one node, and copying the others was most of a step's
    /// cost.
    pub nodes: Vec<Option<Arc<BranchNode>>>,
    /// Each branch's committed store (shared between states until a commit lands).
    pub stores: Vec<Arc<StoreImage>>,
    /// Each branch's commit being written.
    pub commits: Vec<Option<Persist>>,
    /// Per pair `(a, b)` with `a < b`, in [`Bank::pairs`] order: its connection, if up.
    pub connections: Vec<Option<Connection>>,
    /// Per pair, how many connections it has had. A connection's id is made from its pair and
    /// this count, not from a bank-wide counter: ids are opaque tokens to the nodes, so states
    /// that differ only in the order their connections came up are one state.
    pub generations: Vec<u32>,
    /// Each branch's armed timers.
    pub timers: Vec<BTreeSet<Timer>>,
    /// Each branch's held retrieves' deadlines: they pass only when nothing else can happen.
    pub deadlines: Vec<BTreeSet<Timer>>,
    /// Each branch's pending dials (peer branch indices).
    pub dials: Vec<BTreeSet<usize>>,
    /// The controller's snapshots.
    pub snapshots: Vec<SnapshotState>,
    /// What the bounds have left.
    pub budget: Budget,
    /// The branch that may crash (one per initial state): only its commits land at a moment
    /// of the checker's choosing; every other branch's land at once.
    pub may_crash: Option<usize>,
    /// A crash was followed by a restart.
    pub restarted: bool,
    /// Per branch: it crashed and has not restarted yet.
    pub down: Vec<bool>,
    /// Per branch that lost its state: the incarnation it came back as, and the peers that
    /// knew its old incarnation then (only they can tell the new one is not it).
    pub wiped: Vec<Option<(u64, BTreeSet<usize>)>>,
    /// Everything a node reported that no correct run produces (a protocol error, a halt).
    pub errors: Vec<String>,
    /// The bank epoch (one more after each rollback).
    pub epoch: u64,
    /// The rollback under way, if any.
    pub rollback: Option<RollbackState>,
}

/// The model: a bank of [`Bounds::branches`] branches named `b0`, `b1`...
#[derive(Debug, Clone)]
pub struct Bank {
    /// The bounds.
    pub bounds: Bounds,
    /// Branch names.
    pub names: Vec<String>,
    /// Every pair `(a, b)`, `a < b`.
    pub pairs: Vec<(usize, usize)>,
    /// Explore only a persistent set of steps once the bank is calm (see [`Bank::calm`] and
    /// [`Bank::persistent`]); off, every interleaving is explored.
    pub reduce: bool,
    /// The bug seeded into every node (tests only).
    #[cfg(test)]
    pub mutation: crate::core::node::Mutation,
}

/// The controller's connection id at branch `branch` (apart from every peer connection's).
fn controller_conn(branch: usize) -> ConnId {
    u64::MAX - branch as u64
}

impl Bank {
    /// The model of a bank within `bounds`.
    pub fn new(bounds: Bounds) -> Self {
        let names = (0..bounds.branches).map(|b| format!("b{b}")).collect();
        let pairs = (0..bounds.branches)
            .flat_map(|a| (a + 1..bounds.branches).map(move |b| (a, b)))
            .collect();
        Self {
            bounds,
            names,
            pairs,
            reduce: true,
            #[cfg(test)]
            mutation: Default::default(),
        }
    }

    /// The total money of the bank.
    pub fn total(&self) -> u64 {
        self.bounds.balance * self.bounds.branches as u64
    }

    /// The rollbacks the bounds allow: none with wipes (a wiped branch's money is gone by
    /// definition, which is what the checkpoint restores).
    fn rollbacks(&self) -> u8 {
        if self.bounds.wipes > 0 {
            0
        } else {
            self.bounds.rollbacks
        }
    }

    /// What a rollback starting in `state` gives each branch: the latest ok snapshot's
    /// balances with the money recorded in transit to each branch credited, as the controller
    /// computes them; the initial balances while no snapshot is ok.
    fn checkpoint(&self, state: &BankState) -> Vec<u64> {
        state
            .snapshots
            .iter()
            .rev()
            .find(|s| properties::is_ok(self, s))
            .and_then(|s| {
                s.answers
                    .iter()
                    .map(|a| {
                        let record = a.as_ref()?.record.as_ref()?;
                        Some(record.balance() + record.channel_state().iter().sum::<u64>())
                    })
                    .collect()
            })
            .unwrap_or_else(|| vec![self.bounds.balance; self.bounds.branches])
    }

    /// Whether branches have stores (they do when crashes are checked).
    fn durable(&self) -> bool {
        self.bounds.crashes > 0
    }

    /// Branch `branch`'s node settings.
    pub fn config(&self, branch: usize) -> NodeConfig {
        NodeConfig {
            name: self.names[branch].clone(),
            peers: self
                .peers_of(branch)
                .map(|b| self.names[b].clone())
                .collect(),
            send_window: 16,
            authenticated: true,
            durable: self.durable(),
            incarnation: branch as u64 + 1,
            epoch: 0,
            peer_grace: Duration::from_secs(1),
            directions: Vec::new(),
            #[cfg(test)]
            mutation: self.mutation,
        }
    }

    /// Branch `branch`'s node settings in `state`: a branch that lost its state is another
    /// incarnation.
    fn config_in(&self, state: &BankState, branch: usize) -> NodeConfig {
        let mut config = self.config(branch);
        if let Some((incarnation, _)) = &state.wiped[branch] {
            config.incarnation = *incarnation;
        }
        config.epoch = state.epoch;
        config
    }

    /// The branch indices of `branch`'s peers, in channel order.
    pub fn peers_of(&self, branch: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.bounds.branches).filter(move |&b| b != branch)
    }

    /// Peer `peer`'s channel at branch `branch`.
    pub fn channel(&self, branch: usize, peer: usize) -> Channel {
        if peer < branch { peer } else { peer - 1 }
    }

    /// The branch that is channel `channel` of branch `branch`.
    pub fn peer(&self, branch: usize, channel: Channel) -> usize {
        if channel < branch {
            channel
        } else {
            channel + 1
        }
    }

    pub(crate) fn pair(&self, a: usize, b: usize) -> usize {
        let key = (a.min(b), a.max(b));
        self.pairs.iter().position(|&p| p == key).unwrap_or(0)
    }

    /// The bank's description as branch `branch`'s store keeps it.
    fn meta(&self, branch: usize, epoch: u64) -> BankMeta {
        BankMeta {
            name: self.names[branch].clone(),
            members: self
                .names
                .iter()
                .enumerate()
                .map(|(b, name)| BranchEntry {
                    name: name.clone(),
                    addr: std::net::SocketAddr::from(([127, 0, 0, 1], 4000 + b as u16)),
                })
                .collect(),
            secret: Secret::none(),
            incarnation: branch as u64 + 1,
            epoch,
        }
    }

    /// Feeds `input` to `branch` and carries out everything that follows, at every node.
    fn feed(&self, state: &mut BankState, branch: usize, input: Input) {
        self.carry(state, branch, Some(input));
    }

    /// Feeds `input` (if any) to `branch`, then carries out its `Ready` and everything that
    /// follows from it, at every node.
    fn carry(&self, state: &mut BankState, branch: usize, input: Option<Input>) {
        let mut work = VecDeque::from([(branch, input)]);
        while let Some((branch, input)) = work.pop_front() {
            let Some(node) = state.nodes[branch].as_mut().map(Arc::make_mut) else {
                continue;
            };
            if let Some(input) = input {
                node.step(input);
            }
            let ready = node.take_ready();
            for note in ready.notes {
                if let Note::Halt(reason) = note {
                    state
                        .errors
                        .push(format!("{} halted: {reason}", self.names[branch]));
                }
            }
            if let Some(persist) = ready.persist {
                if state.budget.crashes == 0 || state.may_crash != Some(branch) {
                    // Only a crash can tell a commit that landed from one still being written:
                    // a branch that cannot crash (any more) has its commits land at once.
                    let epoch = persist.epoch;
                    self.land(state, branch, &persist);
                    work.push_back((branch, Some(Input::CommitDone { epoch })));
                } else {
                    state.commits[branch] = Some(persist);
                }
            }
            for out in ready.messages {
                let peer = self.peer(branch, out.peer);
                let pair = self.pair(branch, peer);
                if let Some(conn) = state.connections[pair]
                    .as_mut()
                    .filter(|c| c.id == out.conn)
                {
                    let queue = if branch < peer {
                        &mut conn.up
                    } else {
                        &mut conn.down
                    };
                    queue.push_back(out.msg);
                }
            }
            for (conn, answer) in ready.answers {
                if conn != controller_conn(branch) {
                    continue;
                }
                if let Some(snapshot) = state.snapshots.iter_mut().find(|s| s.id == answer.id) {
                    snapshot.asked[branch] = false;
                    snapshot.answers[branch] = Some(answer);
                }
            }
            for op in ready.timers {
                match op {
                    // A record's age limit is not modelled (no controller leaves one behind).
                    TimerOp::Set {
                        timer: Timer::RecordExpiry(_),
                        ..
                    } => {}
                    TimerOp::Set {
                        timer: timer @ Timer::Retrieve { .. },
                        ..
                    } => {
                        state.deadlines[branch].insert(timer);
                    }
                    TimerOp::Set { timer, .. } => {
                        state.timers[branch].insert(timer);
                    }
                    TimerOp::Cancel(timer) => {
                        state.timers[branch].remove(&timer);
                        state.deadlines[branch].remove(&timer);
                    }
                }
            }
            for close in ready.closes {
                // A node of the epoch before (a durable branch back from its store during a
                // rollback) and one of the new epoch refuse each other's connection: that is
                // the epoch rule at work, not an error.
                let epoch_of = |b: usize| state.nodes[b].as_ref().map(|n| n.config().epoch);
                let across_epochs = state.rollback.is_some()
                    && epoch_of(branch) != epoch_of(self.peer(branch, close.peer));
                if let Some(PeerMsg::Refusal { reason, .. }) = &close.refusal
                    && !across_epochs
                {
                    state.errors.push(format!(
                        "{} closed a connection: {reason}",
                        self.names[branch]
                    ));
                }
                let peer = self.peer(branch, close.peer);
                let pair = self.pair(branch, peer);
                if state.connections[pair]
                    .as_ref()
                    .is_some_and(|c| c.id == close.conn)
                {
                    // The refusal is written before the close, and read before the end of the
                    // stream; what was queued before it is lost with the connection.
                    state.connections[pair] = None;
                    let channel = self.channel(peer, branch);
                    if let Some(msg) = close.refusal {
                        work.push_back((
                            peer,
                            Some(Input::Peer {
                                peer: channel,
                                conn: close.conn,
                                msg,
                            }),
                        ));
                    }
                    work.push_back((
                        peer,
                        Some(Input::LinkDown {
                            peer: channel,
                            conn: close.conn,
                        }),
                    ));
                }
            }
            for dial in ready.dials {
                state.dials[branch].insert(self.peer(branch, dial.peer));
            }
        }
    }

    /// Whether the bank is calm: no fault or snapshot start can come any more and nothing has
    /// gone wrong. Then every action is the step of one branch (a delivery to it, its timer,
    /// its transfer, its commit, its restart, a retrieve it answers) or of one pair (a
    /// connection coming up), and the steps of branches that share nothing commute: each
    /// reads and writes its own node, takes the head of a queue into it and appends to the
    /// tails of queues out of it. That makes [`Bank::persistent`] sound: see there.
    ///
    /// A node closes a connection (which touches the peer as well) only on a step that also
    /// reports an error (a halt or a refusal), and an error is already a failed property; so
    /// every step before the first failure is one branch's or one pair's.
    pub fn calm(&self, state: &BankState) -> bool {
        let budget = &state.budget;
        budget.cuts == 0
            && budget.crashes == 0
            && budget.wipes == 0
            && budget.snapshots == 0
            && budget.rollbacks == 0
            && state.rollback.is_none()
            && state.errors.is_empty()
    }

    /// The branches whose state `action` reads or writes, in a calm bank (one, or two for a
    /// connection); `None` for a fault or a snapshot start, which involve the shared budgets.
    fn touches(action: Action) -> Option<(usize, Option<usize>)> {
        match action {
            Action::Deliver { to, .. } => Some((to, None)),
            Action::Fire { branch, .. }
            | Action::Retrieve { branch, .. }
            | Action::Commit(branch)
            | Action::Restart(branch) => Some((branch, None)),
            Action::Transfer { from, .. } => Some((from, None)),
            Action::Connect { dialler, peer } => Some((dialler, Some(peer))),
            Action::Cut { .. }
            | Action::Crash(_)
            | Action::Wipe(_)
            | Action::Snapshot { .. }
            | Action::RollbackPrepare(_)
            | Action::RollbackCommit(_) => None,
        }
    }

    /// The smallest set of branches, grown from `start`, that nothing outside it can reach
    /// without one of its own steps first: for every branch `x` in it and every peer `y`,
    /// `y` is in it too when their connection is down (a connection coming up is a step of
    /// both) or when nothing is queued from `y` to `x` (a step of `y` could put something
    /// there, and `x` would then take it). A message already queued from `y` to `x` needs no
    /// such care: `y`'s later sends go behind it, and `x` takes the head whatever `y` does.
    fn closure(&self, state: &BankState, start: usize) -> Vec<bool> {
        let n = self.bounds.branches;
        let mut inside = vec![false; n];
        inside[start] = true;
        let mut todo = vec![start];
        while let Some(x) = todo.pop() {
            for y in self.peers_of(x) {
                if inside[y] {
                    continue;
                }
                let needed = match &state.connections[self.pair(x, y)] {
                    None => true,
                    Some(conn) => if y < x { &conn.up } else { &conn.down }.is_empty(),
                };
                if needed {
                    inside[y] = true;
                    todo.push(y);
                }
            }
        }
        inside
    }

    /// In a calm bank, cuts `actions` down to a persistent set: the enabled steps of a set of
    /// branches that [`Bank::closure`] closes, the smallest such set. No run that avoids those
    /// steps can touch those branches, so each of its steps commutes with each of them. That
    /// is the condition under which a persistent-set search reaches every terminal state of
    /// the full one, and every first step of a run that breaks a property through a
    /// reordering of that run (Godefroid's theorem): how the properties survive it:
    /// - *Local* conditions (a node's counters, errors, balance; a peer's view of an
    ///   incarnation; a delivery that repeats or skips a transfer number) are decided by one
    ///   branch's step on its own state and the message it takes, the same in every
    ///   reordering.
    /// - *Money* is a sum of per-step changes, each decided the same way: the first step of a
    ///   run that changes the sum changes it in the reordered run too, where every step
    ///   before it changed nothing.
    /// - *Snapshots* are judged on records, which are local, once all are in.
    /// - *Eventually* conditions are judged on terminal states, which are all kept, and
    ///   *sometimes* conditions are stable once true (answers and finished records do not
    ///   change).
    ///
    /// Calm runs end: every step uses up a message, a timer, a transfer, a retrieve, a commit,
    /// a restart or a dial, and only deliveries make new messages, finitely many (markers per
    /// snapshot, acks per delivery), so no cycle needs the proviso that stops a reduction from
    /// postponing a step for ever.
    fn persistent(&self, state: &BankState, actions: &mut Vec<Action>) {
        let Some(located) = actions
            .iter()
            .map(|&a| Self::touches(a))
            .collect::<Option<Vec<_>>>()
        else {
            return;
        };
        let mut best: Option<Vec<bool>> = None;
        let mut best_count = actions.len();
        for start in 0..self.bounds.branches {
            if !located
                .iter()
                .any(|&(b, other)| b == start || other == Some(start))
            {
                continue;
            }
            let inside = self.closure(state, start);
            let count = located.iter().filter(|&&(b, _)| inside[b]).count();
            if count < best_count {
                best_count = count;
                best = Some(inside);
            }
        }
        if let Some(inside) = best {
            let mut located = located.into_iter();
            actions.retain(|_| located.next().is_some_and(|(b, _)| inside[b]));
        }
    }
    /// Branch `branch` dies: everything it had not committed, its connections (both ends see
    /// them go) and the retrieves held at it are gone.
    fn take_down(&self, state: &mut BankState, branch: usize) {
        state.nodes[branch] = None;
        state.commits[branch] = None;
        state.timers[branch].clear();
        state.deadlines[branch].clear();
        state.dials[branch].clear();
        for peer in self.peers_of(branch).collect::<Vec<_>>() {
            self.cut(state, self.pair(branch, peer));
        }
        for snapshot in &mut state.snapshots {
            snapshot.asked[branch] = false;
        }
    }

    /// Commit `persist` of `branch` lands in its store.
    fn land(&self, state: &mut BankState, branch: usize, persist: &Persist) {
        // The first commit of a node of a new bank epoch carries the bank, which starts the
        // store over.
        let epoch = state.nodes[branch].as_ref().map_or(0, |n| n.config().epoch);
        let bank = (state.stores[branch].epoch() != Some(epoch)).then(|| self.meta(branch, epoch));
        state.stores[branch] =
            Arc::new(state.stores[branch].apply(bank.as_ref(), &persist.changes));
    }

    /// The controller asks `branch` for snapshot `id`'s record, waiting for it to finish.
    fn retrieve(&self, state: &mut BankState, branch: usize, id: SnapshotId) {
        let Some(snapshot) = state.snapshots.iter_mut().find(|s| s.id == id) else {
            return;
        };
        snapshot.asked[branch] = true;
        self.feed(
            state,
            branch,
            Input::Command {
                conn: controller_conn(branch),
                cmd: Command::Retrieve {
                    id,
                    wait_ms: 60_000,
                },
            },
        );
    }

    /// Drops the connection of `pair`: both ends see it go.
    fn cut(&self, state: &mut BankState, pair: usize) {
        let Some(conn) = state.connections[pair].take() else {
            return;
        };
        let (a, b) = self.pairs[pair];
        for (end, other) in [(a, b), (b, a)] {
            let channel = self.channel(end, other);
            self.feed(
                state,
                end,
                Input::LinkDown {
                    peer: channel,
                    conn: conn.id,
                },
            );
        }
        // Only a snapshot still being collected is taken across the fault.
        for snapshot in state.snapshots.iter_mut().filter(|s| !concluded(s)) {
            snapshot.across_fault = true;
        }
    }

    /// A node, or (for a crashed branch) the node its store would restart.
    pub fn node_or_restored<'s>(
        &self,
        state: &'s BankState,
        branch: usize,
    ) -> Option<std::borrow::Cow<'s, BranchNode>> {
        if let Some(node) = &state.nodes[branch] {
            return Some(std::borrow::Cow::Borrowed(node));
        }
        self.restore(state, branch)
            .ok()
            .map(std::borrow::Cow::Owned)
    }

    fn restore(&self, state: &BankState, branch: usize) -> Result<BranchNode, String> {
        let restored = StoreImage::clone(&state.stores[branch])
            .restored()
            .map_err(|err| err.to_string())?
            .ok_or("the store holds no bank")?;
        // It comes back in the epoch its store holds, which is the bank's, or during a rollback
        // the one before.
        let mut config = self.config_in(state, branch);
        config.epoch = restored.bank.epoch;
        BranchNode::restore(config, restored.core, restored.channels, restored.records)
    }
}

impl Bank {
    /// Ends the rollback under way once every branch holds its node of the new epoch, and
    /// (durable) its store holds that epoch: the controller's phase two is answered only then.
    fn end_rollback_if_done(&self, state: &mut BankState) {
        let Some(rollback) = &state.rollback else {
            return;
        };
        let next = state.epoch + 1;
        let stored = |b: usize| !self.durable() || state.stores[b].epoch() == Some(next);
        if rollback.committed.iter().all(|&c| c) && (0..self.bounds.branches).all(stored) {
            state.epoch = next;
            state.rollback = None;
        }
    }
}

impl Model for Bank {
    type State = BankState;
    type Action = Action;

    fn init_states(&self) -> Vec<BankState> {
        let n = self.bounds.branches;
        let mut state = BankState {
            nodes: (0..n)
                .map(|b| {
                    Some(Arc::new(BranchNode::new(
                        self.config(b),
                        self.bounds.balance,
                    )))
                })
                .collect(),
            stores: vec![Arc::default(); n],
            commits: vec![None; n],
            connections: vec![None; self.pairs.len()],
            generations: vec![0; self.pairs.len()],
            timers: vec![BTreeSet::new(); n],
            deadlines: vec![BTreeSet::new(); n],
            dials: vec![BTreeSet::new(); n],
            snapshots: Vec::new(),
            budget: Budget {
                transfers: vec![self.bounds.transfers; n],
                snapshots: self.bounds.snapshots,
                cuts: self.bounds.cuts,
                crashes: self.bounds.crashes,
                wipes: self.bounds.wipes,
                rollbacks: self.rollbacks(),
            },
            may_crash: None,
            restarted: false,
            down: vec![false; n],
            wiped: vec![None; n],
            errors: Vec::new(),
            epoch: 0,
            rollback: None,
        };
        // Each node's first Ready: its dials and its first commit.
        for branch in 0..n {
            self.carry(&mut state, branch, None);
        }
        if !self.durable() {
            return vec![state];
        }
        // One initial state per branch that may crash.
        (0..n)
            .map(|branch| {
                let mut state = state.clone();
                state.may_crash = Some(branch);
                state
            })
            .collect()
    }

    fn actions(&self, state: &BankState, actions: &mut Vec<Action>) {
        let n = self.bounds.branches;
        for (pair, &(a, b)) in self.pairs.iter().enumerate() {
            if let Some(conn) = &state.connections[pair] {
                if !conn.up.is_empty() {
                    actions.push(Action::Deliver { from: a, to: b });
                }
                if !conn.down.is_empty() {
                    actions.push(Action::Deliver { from: b, to: a });
                }
                if state.budget.cuts > 0 {
                    actions.push(Action::Cut { a, b });
                }
            }
        }
        let epoch_of = |b: usize| state.nodes[b].as_ref().map(|n| n.config().epoch);
        let crossed = state.rollback.as_ref().is_some_and(|r| r.crossed);
        for dialler in 0..n {
            for &peer in &state.dials[dialler] {
                let up = state.nodes[dialler].is_some() && state.nodes[peer].is_some();
                let across = epoch_of(dialler) != epoch_of(peer);
                if up
                    && !(across && crossed)
                    && state.connections[self.pair(dialler, peer)].is_none()
                {
                    actions.push(Action::Connect { dialler, peer });
                }
            }
        }
        for branch in 0..n {
            match &state.nodes[branch] {
                Some(node) => {
                    // A branch whose bank is not durable yet would restart without one.
                    let stored = *state.stores[branch] != StoreImage::default();
                    if state.budget.crashes > 0 && state.may_crash == Some(branch) && stored {
                        actions.push(Action::Crash(branch));
                    }
                    // Only the branch that dials every peer (b0) is wiped: see the module doc.
                    if state.budget.wipes > 0 && branch == 0 && state.wiped[branch].is_none() {
                        actions.push(Action::Wipe(branch));
                    }
                    if state.commits[branch].is_some() {
                        actions.push(Action::Commit(branch));
                    }
                    for &timer in &state.timers[branch] {
                        actions.push(Action::Fire { branch, timer });
                    }
                    if state.budget.transfers[branch] > 0 && node.balance() > 0 {
                        for to in self.peers_of(branch) {
                            if node.is_live(self.channel(branch, to)) {
                                actions.push(Action::Transfer { from: branch, to });
                            }
                        }
                    }
                    if state.budget.snapshots > 0 && state.rollback.is_none() {
                        actions.push(Action::Snapshot { initiator: branch });
                    }
                    let preparing = state.rollback.as_ref().is_some_and(|r| !r.prepared[branch]);
                    if preparing || state.rollback.is_none() && state.budget.rollbacks > 0 {
                        actions.push(Action::RollbackPrepare(branch));
                    }
                    // Back from its store in the epoch before, after its phase one: its phase
                    // two drops that node first.
                    if let Some(rollback) = &state.rollback
                        && rollback.prepared.iter().all(|&p| p)
                        && node.config().epoch != state.epoch + 1
                    {
                        actions.push(Action::RollbackCommit(branch));
                    }
                    for snapshot in &state.snapshots {
                        if snapshot.answers[branch].is_none()
                            && !snapshot.asked[branch]
                            && !snapshot.abandoned
                        {
                            actions.push(Action::Retrieve {
                                branch,
                                id: snapshot.id,
                            });
                        }
                    }
                }
                None => {
                    let waiting = state
                        .rollback
                        .as_ref()
                        .filter(|r| r.prepared[branch] && !r.committed[branch]);
                    if waiting.is_some_and(|r| r.prepared.iter().all(|&p| p)) {
                        actions.push(Action::RollbackCommit(branch));
                    }
                    if state.down[branch] {
                        actions.push(Action::Restart(branch));
                    } else if waiting.is_some()
                        && state.budget.crashes > 0
                        && state.may_crash == Some(branch)
                        && *state.stores[branch] != StoreImage::default()
                    {
                        // A durable branch dies between its two phases: it comes back from its
                        // store in the epoch before.
                        actions.push(Action::Crash(branch));
                    }
                }
            }
        }
        if self.reduce && self.calm(state) {
            self.persistent(state, actions);
        }
        // A held retrieve's deadline passes only when nothing else can happen: the controller
        // waits as long as progress is possible.
        if actions.is_empty() {
            for (branch, deadlines) in state.deadlines.iter().enumerate() {
                for &timer in deadlines {
                    actions.push(Action::Fire { branch, timer });
                }
            }
        }
    }

    fn next_state(&self, last: &BankState, action: Action) -> Option<BankState> {
        let mut state = last.clone();
        match action {
            Action::Deliver { from, to } => {
                let pair = self.pair(from, to);
                let conn = state.connections[pair].as_mut()?;
                let queue = if from < to {
                    &mut conn.up
                } else {
                    &mut conn.down
                };
                let msg = queue.pop_front()?;
                let id = conn.id;
                self.feed(
                    &mut state,
                    to,
                    Input::Peer {
                        peer: self.channel(to, from),
                        conn: id,
                        msg,
                    },
                );
            }
            Action::Connect { dialler, peer } => {
                let epoch_of = |b: usize| state.nodes[b].as_ref().map(|n| n.config().epoch);
                if epoch_of(dialler) != epoch_of(peer)
                    && let Some(rollback) = state.rollback.as_mut()
                {
                    rollback.crossed = true;
                }
                state.dials[dialler].remove(&peer);
                let pair = self.pair(dialler, peer);
                state.generations[pair] += 1;
                let id = 1
                    + pair as ConnId
                    + self.pairs.len() as ConnId * ConnId::from(state.generations[pair]);
                state.connections[self.pair(dialler, peer)] = Some(Connection {
                    id,
                    up: VecDeque::new(),
                    down: VecDeque::new(),
                });
                for (end, other) in [(dialler, peer), (peer, dialler)] {
                    let channel = self.channel(end, other);
                    self.feed(
                        &mut state,
                        end,
                        Input::LinkUp {
                            peer: channel,
                            conn: id,
                        },
                    );
                }
            }
            Action::Cut { a, b } => {
                state.budget.cuts = state.budget.cuts.checked_sub(1)?;
                self.cut(&mut state, self.pair(a, b));
            }
            Action::Crash(branch) => {
                state.budget.crashes = state.budget.crashes.checked_sub(1)?;
                self.take_down(&mut state, branch);
                state.down[branch] = true;
                // Its phase two is not done if its store does not hold the new epoch yet.
                let landed = state.stores[branch].epoch() == Some(state.epoch + 1);
                if let Some(rollback) = state.rollback.as_mut()
                    && !landed
                {
                    rollback.committed[branch] = false;
                }
            }
            Action::Wipe(branch) => {
                state.budget.wipes = state.budget.wipes.checked_sub(1)?;
                let old = self.config_in(&state, branch).incarnation;
                let knew = self
                    .peers_of(branch)
                    .filter(|&p| {
                        state.nodes[p].as_ref().is_some_and(|node| {
                            node.peer_incarnation(self.channel(p, branch)) == Some(old)
                        })
                    })
                    .collect();
                self.take_down(&mut state, branch);
                state.wiped[branch] = Some((100 + branch as u64, knew));
                state.stores[branch] = Arc::default();
                state.nodes[branch] =
                    Some(Arc::new(BranchNode::new(self.config_in(&state, branch), 0)));
                self.carry(&mut state, branch, None);
            }
            Action::Restart(branch) => {
                state.down[branch] = false;
                match self.restore(&state, branch) {
                    Ok(node) => state.nodes[branch] = Some(Arc::new(node)),
                    Err(err) => {
                        state
                            .errors
                            .push(format!("{} cannot restart: {err}", self.names[branch]));
                        return Some(state);
                    }
                }
                state.restarted = true;
                // Its first Ready: dials, the records it kept. The peers it does not dial dial
                // it: they asked for that when its connections went down.
                self.carry(&mut state, branch, None);
            }
            Action::Fire { branch, timer } => {
                state.timers[branch].remove(&timer);
                state.deadlines[branch].remove(&timer);
                self.feed(&mut state, branch, Input::Timer(timer));
            }
            Action::Commit(branch) => {
                let persist = state.commits[branch].take()?;
                self.land(&mut state, branch, &persist);
                self.feed(
                    &mut state,
                    branch,
                    Input::CommitDone {
                        epoch: persist.epoch,
                    },
                );
                self.end_rollback_if_done(&mut state);
            }
            Action::Transfer { from, to } => {
                state.budget.transfers[from] = state.budget.transfers[from].checked_sub(1)?;
                let channel = self.channel(from, to);
                let node = state.nodes[from].as_mut().map(Arc::make_mut)?;
                node.send_random_transfer(
                    Draw {
                        start: channel,
                        amount: 1,
                    },
                    |c| c == channel,
                )
                .ok()?;
                self.carry(&mut state, from, None);
            }
            Action::Snapshot { initiator } => {
                state.budget.snapshots = state.budget.snapshots.checked_sub(1)?;
                let id = state.snapshots.len() as SnapshotId;
                let n = self.bounds.branches;
                state.snapshots.push(SnapshotState {
                    id,
                    answers: vec![None; n],
                    asked: vec![false; n],
                    across_fault: false,
                    after_restart: state.restarted,
                    after_rollback: state.epoch > 0,
                    abandoned: false,
                });
                self.feed(
                    &mut state,
                    initiator,
                    Input::Command {
                        conn: controller_conn(initiator),
                        cmd: Command::StartSnapshot { id },
                    },
                );
                // As the controller does: it asks every branch for the record at once, to be
                // answered when it is finished.
                for branch in 0..n {
                    if state.nodes[branch].is_some() {
                        self.retrieve(&mut state, branch, id);
                    }
                }
            }
            Action::Retrieve { branch, id } => self.retrieve(&mut state, branch, id),
            Action::RollbackPrepare(branch) => {
                if state.rollback.is_none() {
                    state.budget.rollbacks = state.budget.rollbacks.checked_sub(1)?;
                    let n = self.bounds.branches;
                    state.rollback = Some(RollbackState {
                        balances: self.checkpoint(&state),
                        prepared: vec![false; n],
                        committed: vec![false; n],
                        crossed: false,
                    });
                    // As the controller does: the snapshots in flight are given up.
                    for snapshot in &mut state.snapshots {
                        if !concluded(snapshot) {
                            snapshot.abandoned = true;
                            snapshot.asked.fill(false);
                        }
                    }
                }
                self.take_down(&mut state, branch);
                state.rollback.as_mut()?.prepared[branch] = true;
            }
            Action::RollbackCommit(branch) => {
                if state.nodes[branch].is_some() {
                    self.take_down(&mut state, branch);
                }
                let rollback = state.rollback.as_mut()?;
                rollback.committed[branch] = true;
                let balance = rollback.balances[branch];
                let mut config = self.config_in(&state, branch);
                config.epoch = state.epoch + 1;
                state.nodes[branch] = Some(Arc::new(BranchNode::new(config, balance)));
                self.carry(&mut state, branch, None);
                self.end_rollback_if_done(&mut state);
            }
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all()
    }
}

/// Whether every branch has answered for `snapshot` (with a final record or not), or the
/// controller gave it up for a rollback.
pub fn concluded(snapshot: &SnapshotState) -> bool {
    snapshot.abandoned || snapshot.answers.iter().all(Option::is_some)
}

/// Whether every answer of `snapshot` is a complete record (the snapshot can be judged ok).
pub fn complete(snapshot: &SnapshotState) -> bool {
    snapshot.answers.iter().all(|a| {
        a.as_ref()
            .is_some_and(|a| a.status == RecordStatus::Complete)
    })
}

/// What a finished check found, as the command prints it.
pub struct Outcome {
    /// The report.
    pub text: String,
    /// A property failed: a counterexample of an *always* or *eventually* property, or no
    /// example of a *sometimes* property the bounds allow.
    pub failed: bool,
    /// Each failed property's counterexample, as a simulator scenario.
    pub counterexamples: Vec<(&'static str, scenario::Scenario)>,
    /// Each *sometimes* property's example, as a simulator scenario.
    pub examples: Vec<(&'static str, scenario::Scenario)>,
}

/// Whether the bounds make *sometimes* property `name` reachable at all.
fn applies(bounds: &Bounds, name: &str) -> bool {
    match name {
        "a snapshot completes across a cut" => bounds.cuts > 0 || bounds.crashes > 0,
        "a snapshot completes after a crash and restart" => {
            bounds.crashes > 0 && bounds.snapshots > 0
        }
        "a snapshot completes after a rollback" => {
            bounds.rollbacks > 0 && bounds.snapshots > 0 && bounds.crashes == 0 && bounds.wipes == 0
        }
        "a snapshot finds money in transit" => bounds.transfers > 0 && bounds.snapshots > 0,
        _ => true,
    }
}

/// The report of a finished `checker` run that took `took`.
pub fn report(checker: &impl stateright::Checker<Bank>, took: Duration) -> Outcome {
    use std::fmt::Write as _;
    let bank = checker.model();
    let bounds = bank.bounds;
    let mut text = format!(
        "bank: {} branches of {} each, {} transfer(s) per branch, {} snapshot(s), {} cut(s), {} crash(es), {} rollback(s)\n",
        bounds.branches,
        bounds.balance,
        bounds.transfers,
        bounds.snapshots,
        bounds.cuts,
        bounds.crashes,
        bank.rollbacks()
    );
    let _ = writeln!(
        text,
        "explored {} unique states ({} visits), depth {}, in {:.1} s{}",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        took.as_secs_f64(),
        if checker.is_done() {
            ""
        } else {
            " (stopped before the end)"
        }
    );
    let mut failed = !checker.is_done();
    let mut counterexamples = Vec::new();
    let mut examples = Vec::new();
    for property in bank.properties() {
        let found = checker.discovery(property.name);
        let (verdict, bad) = match (&property.expectation, &found) {
            (stateright::Expectation::Sometimes, Some(_)) => ("ok (example found)", false),
            (stateright::Expectation::Sometimes, None) if !applies(&bounds, property.name) => {
                ("not applicable at these bounds", false)
            }
            (stateright::Expectation::Sometimes, None) => ("FAILED (never happens)", true),
            (_, None) => ("ok", false),
            (_, Some(_)) => ("FAILED", true),
        };
        let kind = format!("{:?}", property.expectation).to_lowercase();
        let _ = writeln!(text, "{kind:>10} {}: {verdict}", property.name);
        if bad && let Some(path) = found {
            failed = true;
            let init = path.clone().into_states().swap_remove(0);
            let scenario = scenario::Scenario::from_path(bank, &init, &path.into_actions())
                .shortened(property.name);
            let _ = writeln!(
                text,
                "  counterexample, {} step(s), as a snapbank-sim scenario:",
                scenario.steps.len()
            );
            let _ = writeln!(text, "  --- topology ---");
            for line in scenario.topology_text().lines() {
                let _ = writeln!(text, "  {line}");
            }
            let _ = writeln!(text, "  --- events ---");
            for line in scenario.events_text().lines() {
                let _ = writeln!(text, "  {line}");
            }
            counterexamples.push((property.name, scenario));
        } else if let (stateright::Expectation::Sometimes, Some(path)) =
            (&property.expectation, found)
        {
            let init = path.clone().into_states().swap_remove(0);
            examples.push((
                property.name,
                scenario::Scenario::from_path(bank, &init, &path.into_actions()),
            ));
        }
        failed |= bad;
    }
    Outcome {
        text,
        failed,
        counterexamples,
        examples,
    }
}

#[cfg(test)]
mod tests;
