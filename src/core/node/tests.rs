//! One rule per test, driving [`BranchNode`]s directly: a few nodes wired by hand ([`Mesh`], a
//! network that delivers, holds or cuts messages between chosen nodes), or one node fed by hand
//! the messages a peer would send. Two randomized tests at the end run whole banks (with and
//! without stores, crashing and restoring nodes) through random interleavings and check that
//! every transfer arrives exactly once and every complete snapshot is a consistent cut.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use super::links::{ACK_BATCH, ACK_DELAY};
use super::*;
use crate::auth::Secret;
use crate::config::BranchEntry;
use crate::core::Frame;
use crate::core::persist::FrameBatch;
use crate::store::{BankMeta, BranchStore, MemoryStore};

/// `records::MAX_HELD_ANSWERS`, private to its module: most retrieves one controller connection
/// may have held at once.
const MAX_HELD_ANSWERS: usize = 8192;

/// `records::MAX_HELD_WITHOUT_WAIT`, private to its module: most retrieves without `wait_ms`
/// held on one controller connection of a bank without a secret.
const MAX_HELD_WITHOUT_WAIT: usize = 256;

/// `records::MAX_EARLY_WAITERS`, private to its module: most retrieves held for snapshots not
/// begun yet.
const MAX_EARLY_WAITERS: usize = 4096;

/// The names of the branches of a [`Mesh`], in bank order.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// A connection id for a controller, apart from the peers' ones.
const CONTROLLER: ConnId = 900;

fn config(name: &str, peers: &[&str]) -> NodeConfig {
    NodeConfig {
        name: name.into(),
        peers: peers.iter().map(|p| p.to_string()).collect(),
        send_window: 16,
        authenticated: true,
        durable: false,
        incarnation: 7,
        epoch: 0,
        peer_grace: Duration::from_millis(100),
        directions: Vec::new(),
        #[cfg(test)]
        mutation: Default::default(),
    }
}

/// `config` with `tweak` applied.
fn config_with(name: &str, peers: &[&str], tweak: impl FnOnce(&mut NodeConfig)) -> NodeConfig {
    let mut config = config(name, peers);
    tweak(&mut config);
    config
}

/// A node holding 100, its first [`Ready`] (the dials, the first commit) already carried out.
fn fresh(config: NodeConfig) -> BranchNode {
    let mut node = BranchNode::new(config, 100);
    settle(&mut node);
    node
}

/// Makes every commit the node asks for durable, as a runtime would, until it asks for none;
/// returns everything else it asked for meanwhile.
fn settle(node: &mut BranchNode) -> Ready {
    let mut all = Ready::default();
    loop {
        let mut ready = node.take_ready();
        let persist = ready.persist.take();
        append(&mut all, ready);
        match persist {
            Some(persist) => node.step(Input::CommitDone {
                epoch: persist.epoch,
            }),
            None => return all,
        }
    }
}

/// Appends everything in `more` to `into`, in order.
fn append(into: &mut Ready, more: Ready) {
    into.messages.extend(more.messages);
    into.answers.extend(more.answers);
    into.timers.extend(more.timers);
    into.closes.extend(more.closes);
    into.dials.extend(more.dials);
    into.notes.extend(more.notes);
    if more.persist.is_some() {
        assert!(into.persist.is_none(), "two commits at once");
        into.persist = more.persist;
    }
}

/// Puts peer `peer` of `node` live on connection `conn`: the link comes up and the peer's
/// `Resume` (incarnation `incarnation`, nothing received) arrives. Returns what followed.
fn go_live(node: &mut BranchNode, peer: Channel, conn: ConnId, incarnation: u64) -> Ready {
    node.step(Input::LinkUp { peer, conn });
    node.step(Input::Peer {
        peer,
        conn,
        msg: resume(incarnation, 0),
    });
    settle(node)
}

fn resume(incarnation: u64, received: Position) -> PeerMsg {
    resume_in(0, incarnation, received)
}

/// A `Resume` of bank epoch `epoch`.
fn resume_in(epoch: u64, incarnation: u64, received: Position) -> PeerMsg {
    PeerMsg::Resume {
        incarnation,
        received,
        epoch,
    }
}

/// Transfer number `seq` of `amount` at position `seq` (a channel carrying only transfers).
fn transfer(seq: u64, amount: u64) -> PeerMsg {
    PeerMsg::Channel {
        frame: Frame::Transfer { seq, amount },
        pos: seq,
    }
}

/// The frames among `messages`, with their positions, in order.
fn frames_in(messages: &[Outgoing]) -> Vec<(Position, Frame)> {
    messages
        .iter()
        .filter_map(|out| match out.msg {
            PeerMsg::Channel { frame, pos } => Some((pos, frame)),
            _ => None,
        })
        .collect()
}

/// The refusal kind a close sends first, if any.
fn refusal_kind(close: &Close) -> Option<RefusalKind> {
    match &close.refusal {
        Some(PeerMsg::Refusal { kind, .. }) => Some(*kind),
        _ => None,
    }
}

fn retrieve(node: &mut BranchNode, conn: ConnId, id: SnapshotId, wait_ms: u32) {
    node.step(Input::Command {
        conn,
        cmd: Command::Retrieve { id, wait_ms },
    });
}

fn start_snapshot(node: &mut BranchNode, id: SnapshotId) {
    node.step(Input::Command {
        conn: CONTROLLER,
        cmd: Command::StartSnapshot { id },
    });
}

/// The statuses of `answers`, in order.
fn statuses(answers: &[(ConnId, Answer)]) -> Vec<RecordStatus> {
    answers.iter().map(|(_, answer)| answer.status).collect()
}

/// The `Retrieve` timers set in `timers`.
fn retrieve_timers(timers: &[TimerOp]) -> Vec<(Timer, Duration)> {
    timers
        .iter()
        .filter_map(|op| match *op {
            TimerOp::Set {
                timer: timer @ Timer::Retrieve { .. },
                after,
            } => Some((timer, after)),
            _ => None,
        })
        .collect()
}

fn hash_of(node: &BranchNode) -> u64 {
    let mut hasher = DefaultHasher::new();
    node.hash(&mut hasher);
    hasher.finish()
}

/// What a message on the simulated network carries.
#[derive(Debug, Clone)]
enum Wire {
    Msg(PeerMsg),
    /// The connection closed.
    Down,
}

/// Nodes named `a`, `b`, ... holding 100 each, every one's peers the others in name order, on a
/// simulated network: one connection per pair, FIFO per direction; messages of a directed pair
/// can be held; a cut loses what is in flight. Commits are made durable as soon as asked, or
/// (a [`Mesh::durable`] bank) when the test says, into each node's own store, from which a crash
/// restarts it.
struct Mesh {
    nodes: Vec<BranchNode>,
    /// The connection up between each pair (lower index first).
    conns: BTreeMap<(usize, usize), ConnId>,
    next_conn: ConnId,
    /// Messages in flight per directed pair, with the connection they went on.
    wires: BTreeMap<(usize, usize), VecDeque<(ConnId, Wire)>>,
    /// Directed pairs whose messages stay in flight until released.
    held: BTreeSet<(usize, usize)>,
    /// What each node asked for (messages included), since the test last took it.
    out: Vec<Ready>,
    /// Every message delivered: from, to, the message.
    log: Vec<(usize, usize, PeerMsg)>,
    /// Per durable node: its store, and the bank to add to its first commit.
    stores: Vec<Option<(MemoryStore, Option<BankMeta>)>>,
    /// Commits wait for [`Mesh::commit`] (else they are made durable as soon as asked).
    manual_commits: bool,
    /// Per node: the commit it asked for and that is not durable yet.
    pending: Vec<Option<Persist>>,
}

fn pair(i: usize, j: usize) -> (usize, usize) {
    (i.min(j), i.max(j))
}

/// Node `i`'s peer `p`, as a node index.
fn node_of(i: usize, p: Channel) -> usize {
    if p < i { p } else { p + 1 }
}

/// Node `j` as a peer of node `i`.
fn peer_of(i: usize, j: usize) -> Channel {
    if j < i { j } else { j - 1 }
}

impl Mesh {
    fn new(n: usize) -> Self {
        Self::with(n, |_| {})
    }

    fn with(n: usize, tweak: impl Fn(&mut NodeConfig)) -> Self {
        let nodes = (0..n)
            .map(|i| {
                let peers: Vec<&str> = (0..n).filter(|&j| j != i).map(|j| NAMES[j]).collect();
                let mut config = config(NAMES[i], &peers);
                config.incarnation = 10 + i as u64;
                tweak(&mut config);
                BranchNode::new(config, 100)
            })
            .collect();
        let mut mesh = Self {
            nodes,
            conns: BTreeMap::new(),
            next_conn: 0,
            wires: BTreeMap::new(),
            held: BTreeSet::new(),
            out: vec![Ready::default(); n],
            log: Vec::new(),
            stores: vec![None; n],
            manual_commits: false,
            pending: vec![None; n],
        };
        mesh.run();
        mesh
    }

    /// Durable nodes, each with its own store; commits wait for [`Mesh::commit`].
    fn durable(n: usize) -> Self {
        let mut mesh = Self::with(n, |c| c.durable = true);
        mesh.manual_commits = true;
        for i in 0..n {
            let bank = member_meta(n, i, mesh.nodes[i].config().incarnation);
            mesh.stores[i] = Some((MemoryStore::new(), Some(bank)));
            // The first commit, asked for at creation, was made durable without a store.
            mesh.nodes[i] = BranchNode::new(mesh.nodes[i].config().clone(), 100);
        }
        mesh.run();
        // A crash before the bank is durable restarts a branch with nothing to restore.
        for i in 0..n {
            mesh.commit(i);
        }
        mesh
    }

    /// Makes the commit node `i` is writing durable, if there is one.
    fn commit(&mut self, i: usize) {
        let Some(persist) = self.pending[i].take() else {
            return;
        };
        if let Some((store, bank)) = self.stores[i].as_mut() {
            store
                .commit(bank.take().as_ref(), &persist.changes)
                .expect("the memory store commits");
        }
        self.step(
            i,
            Input::CommitDone {
                epoch: persist.epoch,
            },
        );
    }

    /// Node `i` dies and restarts from its store: what it had not made durable is gone, and so
    /// are its connections.
    fn crash(&mut self, i: usize) {
        self.pending[i] = None;
        for j in 0..self.nodes.len() {
            if j == i {
                continue;
            }
            if let Some(conn) = self.conns.remove(&pair(i, j)) {
                self.wires.remove(&(i, j));
                self.wires.remove(&(j, i));
                self.nodes[j].step(Input::LinkDown {
                    peer: peer_of(j, i),
                    conn,
                });
            }
        }
        let (store, _) = self.stores[i].as_mut().expect("a durable node");
        let (reopened, restored) = store.reopen().expect("the store reopens");
        *store = reopened;
        let restored = restored.expect("the bank was committed first");
        self.nodes[i] = BranchNode::restore(
            self.nodes[i].config().clone(),
            restored.core,
            restored.channels,
            restored.records,
        )
        .expect("the stored state restores");
        self.run();
    }

    /// A new connection between `i` and `j` comes up on both sides; returns its id.
    fn connect(&mut self, i: usize, j: usize) -> ConnId {
        self.next_conn += 1;
        let conn = self.next_conn;
        self.conns.insert(pair(i, j), conn);
        self.nodes[i].step(Input::LinkUp {
            peer: peer_of(i, j),
            conn,
        });
        self.nodes[j].step(Input::LinkUp {
            peer: peer_of(j, i),
            conn,
        });
        self.run();
        conn
    }

    /// The connection between `i` and `j` fails: what is in flight on it is lost, and both
    /// sides are told.
    fn cut(&mut self, i: usize, j: usize) {
        let Some(conn) = self.conns.remove(&pair(i, j)) else {
            return;
        };
        self.wires.remove(&(i, j));
        self.wires.remove(&(j, i));
        for (me, other) in [(i, j), (j, i)] {
            self.nodes[me].step(Input::LinkDown {
                peer: peer_of(me, other),
                conn,
            });
        }
        self.run();
    }

    fn step(&mut self, i: usize, input: Input) {
        self.nodes[i].step(input);
        self.run();
    }

    /// Node `to` receives `msg` from node `from` on their current connection.
    fn inject(&mut self, from: usize, to: usize, msg: PeerMsg) {
        let conn = self.conns[&pair(from, to)];
        self.step(
            to,
            Input::Peer {
                peer: peer_of(to, from),
                conn,
                msg,
            },
        );
    }

    /// Messages from `from` to `to` stay in flight until released.
    fn hold(&mut self, from: usize, to: usize) {
        self.held.insert((from, to));
    }

    /// Messages from `from` to `to` are delivered again.
    fn unhold(&mut self, from: usize, to: usize) {
        self.held.remove(&(from, to));
        self.run();
    }

    /// Delivers the first `n` messages held from `from` to `to`.
    fn release(&mut self, from: usize, to: usize, n: usize) {
        for _ in 0..n {
            let Some((conn, wire)) = self
                .wires
                .get_mut(&(from, to))
                .and_then(VecDeque::pop_front)
            else {
                break;
            };
            self.deliver(from, to, conn, wire);
            self.run();
        }
    }

    /// The messages held from `from` to `to`.
    fn in_flight(&self, from: usize, to: usize) -> Vec<PeerMsg> {
        self.wires
            .get(&(from, to))
            .into_iter()
            .flatten()
            .filter_map(|(_, wire)| match wire {
                Wire::Msg(msg) => Some(msg.clone()),
                Wire::Down => None,
            })
            .collect()
    }

    /// Everything node `i` asked for since the last call.
    fn take(&mut self, i: usize) -> Ready {
        std::mem::take(&mut self.out[i])
    }

    /// Every message delivered from `from` to `to`, in order.
    fn delivered(&self, from: usize, to: usize) -> Vec<PeerMsg> {
        self.log
            .iter()
            .filter(|(f, t, _)| (*f, *t) == (from, to))
            .map(|(_, _, msg)| msg.clone())
            .collect()
    }

    /// Carries out what every node asks until nothing moves: messages delivered (but for held
    /// pairs), connections closed, commits made durable.
    fn run(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                moved |= self.collect(i);
            }
            let open: Vec<(usize, usize)> = self
                .wires
                .keys()
                .copied()
                .filter(|key| !self.held.contains(key))
                .collect();
            for (from, to) in open {
                while let Some((conn, wire)) = self
                    .wires
                    .get_mut(&(from, to))
                    .and_then(VecDeque::pop_front)
                {
                    moved = true;
                    self.deliver(from, to, conn, wire);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Node `to` receives what node `from` sent on connection `conn`.
    fn deliver(&mut self, from: usize, to: usize, conn: ConnId, wire: Wire) {
        let peer = peer_of(to, from);
        match wire {
            Wire::Msg(msg) => {
                self.log.push((from, to, msg.clone()));
                self.nodes[to].step(Input::Peer { peer, conn, msg });
            }
            Wire::Down => self.nodes[to].step(Input::LinkDown { peer, conn }),
        }
    }

    /// Takes node `i`'s [`Ready`] and carries it out; whether there was anything.
    fn collect(&mut self, i: usize) -> bool {
        let mut ready = self.nodes[i].take_ready();
        if ready.is_empty() {
            return false;
        }
        for out in &ready.messages {
            let j = node_of(i, out.peer);
            if self.conns.get(&pair(i, j)) == Some(&out.conn) {
                self.wires
                    .entry((i, j))
                    .or_default()
                    .push_back((out.conn, Wire::Msg(out.msg.clone())));
            }
        }
        for close in &ready.closes {
            let j = node_of(i, close.peer);
            if self.conns.get(&pair(i, j)) != Some(&close.conn) {
                continue;
            }
            self.conns.remove(&pair(i, j));
            self.wires.remove(&(j, i));
            let wire = self.wires.entry((i, j)).or_default();
            if let Some(refusal) = &close.refusal {
                wire.push_back((close.conn, Wire::Msg(refusal.clone())));
            }
            wire.push_back((close.conn, Wire::Down));
        }
        if let Some(persist) = ready.persist.take() {
            if self.manual_commits {
                assert!(self.pending[i].is_none(), "one commit at a time");
                self.pending[i] = Some(persist);
            } else {
                self.nodes[i].step(Input::CommitDone {
                    epoch: persist.epoch,
                });
            }
        }
        append(&mut self.out[i], ready);
        true
    }
}

// Links.

#[test]
fn the_lower_name_dials_and_its_resume_goes_first() {
    let mut a = BranchNode::new(config("a", &["b"]), 10);
    let ready = a.take_ready();
    assert_eq!(
        ready.dials,
        vec![Dial {
            peer: 0,
            after_pause: false,
            known_incarnation: 0
        }]
    );
    a.step(Input::LinkUp { peer: 0, conn: 1 });
    let ready = a.take_ready();
    assert_eq!(
        ready.messages,
        vec![Outgoing {
            peer: 0,
            conn: 1,
            msg: PeerMsg::Resume {
                incarnation: 7,
                received: 0,
                epoch: 0
            }
        }]
    );
    let mut b = BranchNode::new(config("b", &["a"]), 10);
    assert!(b.take_ready().dials.is_empty());
}

#[test]
fn the_acceptor_answers_only_once_the_diallers_resume_has_arrived() {
    let mut b = fresh(config("b", &["a"]));
    b.step(Input::LinkUp { peer: 0, conn: 1 });
    assert!(
        b.take_ready().messages.is_empty(),
        "the acceptor speaks second"
    );
    assert!(!b.is_live(0));
    b.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: resume(5, 0),
    });
    let ready = b.take_ready();
    assert_eq!(
        ready.messages,
        vec![Outgoing {
            peer: 0,
            conn: 1,
            msg: resume(7, 0)
        }]
    );
    assert!(b.is_live(0));
    assert_eq!(b.peer_incarnation(0), Some(5));
}

#[test]
fn a_resume_from_another_incarnation_is_refused_with_new_incarnation_and_not_answered() {
    let mut b = fresh(config("b", &["a"]));
    go_live(&mut b, 0, 1, 5);
    b.step(Input::LinkDown { peer: 0, conn: 1 });
    b.step(Input::LinkUp { peer: 0, conn: 2 });
    b.step(Input::Peer {
        peer: 0,
        conn: 2,
        msg: resume(6, 0),
    });
    let ready = b.take_ready();
    assert!(ready.messages.is_empty(), "no Resume for a stranger");
    assert_eq!(ready.closes.len(), 1);
    assert_eq!(ready.closes[0].conn, 2);
    assert_eq!(
        refusal_kind(&ready.closes[0]),
        Some(RefusalKind::NewIncarnation)
    );
    assert!(!b.is_live(0));
    assert_eq!(
        b.peer_incarnation(0),
        Some(5),
        "the old incarnation is kept"
    );
}

#[test]
fn a_resume_of_another_bank_epoch_is_refused_for_a_retry_and_nothing_of_it_is_applied() {
    // b is in epoch 2; a's connection says epoch 1 (it has not been rolled back yet).
    let mut b = fresh(config_with("b", &["a"], |c| c.epoch = 2));
    b.step(Input::LinkUp { peer: 0, conn: 1 });
    b.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: resume_in(1, 5, 0),
    });
    let ready = b.take_ready();
    assert!(ready.messages.is_empty(), "no Resume back to another epoch");
    assert_eq!(ready.closes.len(), 1);
    assert_eq!(refusal_kind(&ready.closes[0]), Some(RefusalKind::Retry));
    assert!(!b.is_live(0));
    assert_eq!(b.peer_incarnation(0), None, "nothing of it is kept");
    // A transfer on that connection is not applied either.
    b.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: transfer(1, 10),
    });
    assert_eq!(b.balance(), 100);
    // The same peer in the same epoch joins.
    b.step(Input::LinkUp { peer: 0, conn: 2 });
    b.step(Input::Peer {
        peer: 0,
        conn: 2,
        msg: resume_in(2, 5, 0),
    });
    settle(&mut b);
    assert!(b.is_live(0));
}

#[test]
fn a_frame_before_resume_is_a_protocol_error_closing_only_that_connection_with_a_retry_refusal() {
    // b dials c and accepts a.
    let mut b = fresh(config("b", &["a", "c"]));
    go_live(&mut b, 1, 1, 6);
    start_snapshot(&mut b, 1);
    settle(&mut b);
    b.step(Input::LinkUp { peer: 0, conn: 2 });
    b.step(Input::Peer {
        peer: 0,
        conn: 2,
        msg: transfer(1, 10),
    });
    let ready = b.take_ready();
    assert_eq!(ready.closes.len(), 1);
    assert_eq!((ready.closes[0].peer, ready.closes[0].conn), (0, 2));
    assert_eq!(refusal_kind(&ready.closes[0]), Some(RefusalKind::Retry));
    assert_eq!(b.balance(), 100, "the frame changed nothing");
    assert_eq!(b.delivered_from(0), 0);
    assert!(b.is_live(1), "the other peer's connection stays");
    assert_eq!(b.link_of(1), Some(1));
    assert_eq!(b.unacked_to(0), 1, "the channel (its marker) stays");
}

#[test]
fn resume_resends_exactly_the_frames_after_the_peers_position_in_order_before_anything_new() {
    let mut mesh = Mesh::new(2);
    mesh.connect(0, 1);
    mesh.hold(0, 1);
    for _ in 0..3 {
        mesh.step(
            0,
            Input::Generate(Draw {
                start: 0,
                amount: 1,
            }),
        );
    }
    assert_eq!(mesh.in_flight(0, 1).len(), 3);
    mesh.release(0, 1, 1);
    mesh.cut(0, 1);
    // Sent during the outage: kept in the window, out with the resend.
    start_snapshot(&mut mesh.nodes[0], 1);
    mesh.run();
    assert!(mesh.in_flight(0, 1).is_empty());
    mesh.unhold(0, 1);
    let before = mesh.delivered(0, 1).len();
    mesh.connect(0, 1);
    mesh.step(
        0,
        Input::Generate(Draw {
            start: 0,
            amount: 1,
        }),
    );
    let after = mesh.delivered(0, 1)[before..].to_vec();
    assert_eq!(
        after,
        vec![
            resume(10, 0),
            transfer(2, 1),
            transfer(3, 1),
            PeerMsg::Channel {
                frame: Frame::Marker { id: 1 },
                pos: 4
            },
            PeerMsg::Channel {
                frame: Frame::Transfer { seq: 4, amount: 1 },
                pos: 5
            },
        ]
    );
    assert!(mesh.delivered(1, 0).contains(&resume(11, 1)));
    assert_eq!(mesh.nodes[1].delivered_from(0), 5);
    assert_eq!(mesh.nodes[1].balance(), 104);
}

#[test]
fn a_duplicate_frame_is_dropped_by_its_position() {
    let mut mesh = Mesh::new(2);
    mesh.connect(0, 1);
    mesh.step(
        0,
        Input::Generate(Draw {
            start: 0,
            amount: 3,
        }),
    );
    assert_eq!(mesh.nodes[1].balance(), 103);
    mesh.take(1);
    mesh.inject(0, 1, transfer(1, 3));
    assert_eq!(mesh.nodes[1].balance(), 103, "credited once");
    assert_eq!(mesh.nodes[1].delivered_from(0), 1);
    assert!(mesh.take(1).closes.is_empty(), "a duplicate is no error");
    assert!(mesh.nodes[1].is_live(0));
}

#[test]
fn a_gap_closes_the_connection_and_keeps_the_cursor_so_the_resend_is_delivered() {
    let mut mesh = Mesh::new(2);
    mesh.connect(0, 1);
    mesh.hold(0, 1);
    mesh.step(
        0,
        Input::Generate(Draw {
            start: 0,
            amount: 1,
        }),
    );
    mesh.step(
        0,
        Input::Generate(Draw {
            start: 0,
            amount: 2,
        }),
    );
    mesh.take(1);
    mesh.inject(0, 1, transfer(2, 2));
    let closes = mesh.take(1).closes;
    assert_eq!(closes.len(), 1);
    assert_eq!(refusal_kind(&closes[0]), Some(RefusalKind::Retry));
    assert_eq!(mesh.nodes[1].delivered_from(0), 0, "the cursor stays");
    assert_eq!(mesh.nodes[1].balance(), 100);
    mesh.unhold(0, 1);
    mesh.connect(0, 1);
    assert_eq!(
        mesh.nodes[1].delivered_from(0),
        2,
        "the resend is delivered"
    );
    assert_eq!(mesh.nodes[1].balance(), 103);
}

#[test]
fn a_transfer_the_ledger_refuses_closes_the_connection_and_its_position_stays_owed() {
    let mut b = fresh(config("b", &["a"]));
    go_live(&mut b, 0, 1, 5);
    // Numbered 2 where 1 is due: out of sequence.
    b.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: PeerMsg::Channel {
            frame: Frame::Transfer { seq: 2, amount: 5 },
            pos: 1,
        },
    });
    let ready = b.take_ready();
    assert_eq!(ready.closes.len(), 1);
    assert_eq!(refusal_kind(&ready.closes[0]), Some(RefusalKind::Retry));
    assert_eq!(b.delivered_from(0), 0);
    assert_eq!(b.balance(), 100);
    go_live(&mut b, 0, 2, 5);
    b.step(Input::Peer {
        peer: 0,
        conn: 2,
        msg: transfer(1, 5),
    });
    assert_eq!(b.delivered_from(0), 1);
    assert_eq!(b.balance(), 105);
}

#[test]
fn messages_and_the_close_of_a_replaced_connection_are_ignored() {
    let mut b = fresh(config("b", &["a"]));
    go_live(&mut b, 0, 1, 5);
    b.step(Input::LinkUp { peer: 0, conn: 2 });
    settle(&mut b);
    b.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: transfer(1, 10),
    });
    b.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: resume(6, 0),
    });
    b.step(Input::LinkDown { peer: 0, conn: 1 });
    let ready = settle(&mut b);
    assert_eq!(b.balance(), 100);
    assert_eq!(b.delivered_from(0), 0);
    assert!(ready.messages.is_empty());
    assert!(
        ready.timers.is_empty(),
        "no grace period for an old connection"
    );
    assert!(ready.closes.is_empty());
    assert_eq!(b.link_of(0), Some(2));
}

#[test]
fn a_connection_replaced_by_a_new_one_is_closed() {
    // The actor marked the old connection's outbox dead when a new one took its channel.
    let mut b = fresh(config("b", &["a"]));
    go_live(&mut b, 0, 1, 5);
    b.step(Input::LinkUp { peer: 0, conn: 2 });
    let ready = b.take_ready();
    assert_eq!(
        ready.closes,
        vec![Close {
            peer: 0,
            conn: 1,
            refusal: None
        }]
    );
}

#[test]
fn losing_the_current_connection_starts_the_grace_timer_once_per_outage() {
    let mut b = fresh(config("b", &["a"]));
    go_live(&mut b, 0, 1, 5);
    b.step(Input::LinkDown { peer: 0, conn: 1 });
    let ready = b.take_ready();
    assert_eq!(
        ready.timers,
        vec![TimerOp::Set {
            timer: Timer::Grace(0),
            after: Duration::from_millis(100)
        }]
    );
    assert!(ready.dials.is_empty(), "the acceptor waits to be dialled");
    // A reconnect that fails before resuming is the same outage.
    b.step(Input::LinkUp { peer: 0, conn: 2 });
    b.step(Input::LinkDown { peer: 0, conn: 2 });
    assert!(b.take_ready().timers.is_empty());
    // After the channel resumed, the next loss is a new outage.
    go_live(&mut b, 0, 3, 5);
    b.step(Input::LinkDown { peer: 0, conn: 3 });
    assert_eq!(
        b.take_ready().timers,
        vec![TimerOp::Set {
            timer: Timer::Grace(0),
            after: Duration::from_millis(100)
        }]
    );
}

#[test]
fn the_dialler_redials_at_once_after_a_resumed_connection_and_after_a_pause_after_one_that_failed_before_resuming()
 {
    let mut a = fresh(config("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    a.step(Input::LinkDown { peer: 0, conn: 1 });
    let dial = |after_pause| Dial {
        peer: 0,
        after_pause,
        known_incarnation: 5,
    };
    assert_eq!(a.take_ready().dials, vec![dial(false)]);
    a.step(Input::LinkUp { peer: 0, conn: 2 });
    a.step(Input::LinkDown { peer: 0, conn: 2 });
    assert_eq!(a.take_ready().dials, vec![dial(true)]);
    go_live(&mut a, 0, 3, 5);
    a.step(Input::LinkDown { peer: 0, conn: 3 });
    assert_eq!(a.take_ready().dials, vec![dial(false)]);
}

#[test]
fn the_grace_period_running_out_cuts_short_the_records_waiting_for_the_peer() {
    let mut a = fresh(config("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    start_snapshot(&mut a, 1);
    retrieve(&mut a, CONTROLLER, 1, 10_000);
    let held = retrieve_timers(&settle(&mut a).timers);
    assert_eq!(held.len(), 1);
    a.step(Input::LinkDown { peer: 0, conn: 1 });
    settle(&mut a);
    a.step(Input::Timer(Timer::Grace(0)));
    let ready = settle(&mut a);
    assert_eq!(statuses(&ready.answers), vec![RecordStatus::CutShort]);
    let record = ready.answers[0].1.record.as_ref().expect("a record");
    assert_eq!(record.lost(), &[0]);
    assert!(ready.timers.contains(&TimerOp::Cancel(held[0].0)));
    // A snapshot begun while the channel is lost does not wait for it either.
    start_snapshot(&mut a, 2);
    retrieve(&mut a, CONTROLLER, 2, 0);
    assert_eq!(
        statuses(&settle(&mut a).answers),
        vec![RecordStatus::CutShort]
    );
}

#[test]
fn a_peer_back_after_its_grace_period_is_waited_for_again() {
    let mut a = fresh(config("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    a.step(Input::LinkDown { peer: 0, conn: 1 });
    a.step(Input::Timer(Timer::Grace(0)));
    settle(&mut a);
    go_live(&mut a, 0, 2, 5);
    start_snapshot(&mut a, 1);
    retrieve(&mut a, CONTROLLER, 1, 0);
    assert_eq!(
        statuses(&settle(&mut a).answers),
        vec![RecordStatus::Recording]
    );
    a.step(Input::Peer {
        peer: 0,
        conn: 2,
        msg: PeerMsg::Channel {
            frame: Frame::Marker { id: 1 },
            pos: 1,
        },
    });
    retrieve(&mut a, CONTROLLER, 1, 0);
    assert_eq!(
        statuses(&settle(&mut a).answers),
        vec![RecordStatus::Complete]
    );
}

#[test]
fn a_grace_timer_firing_after_the_peer_resumed_changes_nothing() {
    let mut a = fresh(config("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    a.step(Input::LinkDown { peer: 0, conn: 1 });
    settle(&mut a);
    let ready = go_live(&mut a, 0, 2, 5);
    assert!(ready.timers.contains(&TimerOp::Cancel(Timer::Grace(0))));
    start_snapshot(&mut a, 1);
    settle(&mut a);
    let before = a.clone();
    a.step(Input::Timer(Timer::Grace(0)));
    assert_eq!(a, before);
    assert!(a.take_ready().is_empty());
}

// The rules of a bank with a secret.

#[test]
fn an_unnumbered_frame_is_a_protocol_error_in_a_bank_with_a_secret() {
    let mut b = fresh(config("b", &["a"]));
    go_live(&mut b, 0, 1, 5);
    let unpositioned = PeerMsg::Channel {
        frame: Frame::Transfer { seq: 1, amount: 5 },
        pos: 0,
    };
    let unsequenced = PeerMsg::Channel {
        frame: Frame::Transfer { seq: 0, amount: 5 },
        pos: 1,
    };
    for (conn, msg) in [(1, unpositioned), (2, unsequenced)] {
        if conn != 1 {
            go_live(&mut b, 0, conn, 5);
        }
        b.step(Input::Peer { peer: 0, conn, msg });
        let ready = b.take_ready();
        assert_eq!(ready.closes.len(), 1);
        assert_eq!(refusal_kind(&ready.closes[0]), Some(RefusalKind::Retry));
        assert_eq!(b.balance(), 100);
        assert_eq!(b.delivered_from(0), 0);
    }
}

#[test]
fn an_unnumbered_frame_is_accepted_in_a_bank_without_a_secret() {
    let mut b = fresh(config_with("b", &["a"], |c| c.authenticated = false));
    go_live(&mut b, 0, 1, 5);
    b.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: PeerMsg::Channel {
            frame: Frame::Transfer { seq: 0, amount: 5 },
            pos: 0,
        },
    });
    assert_eq!(b.balance(), 105);
    assert_eq!(b.delivered_from(0), 0, "no position to deliver");
    b.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: PeerMsg::Channel {
            frame: Frame::Transfer { seq: 0, amount: 5 },
            pos: 1,
        },
    });
    assert_eq!(b.balance(), 110);
    assert_eq!(b.delivered_from(0), 1);
    assert!(b.take_ready().closes.is_empty());
    assert!(b.is_live(0));
}

#[test]
fn refusal_kinds_change_nothing_but_the_connection_without_a_secret() {
    let mut a = fresh(config_with("a", &["b"], |c| {
        c.authenticated = false;
        c.durable = true;
    }));
    for (conn, kind) in [
        (1, RefusalKind::NewIncarnation),
        (2, RefusalKind::StateRegressed),
    ] {
        go_live(&mut a, 0, conn, 5);
        a.step(Input::Peer {
            peer: 0,
            conn,
            msg: PeerMsg::Refusal {
                kind,
                reason: "unproven".into(),
            },
        });
        let ready = settle(&mut a);
        assert_eq!(ready.closes.len(), 1, "{kind:?}");
        assert_eq!(ready.closes[0].conn, conn);
        assert_eq!(ready.dials.len(), 1, "{kind:?}: dialled again");
        assert_eq!(a.stopped_dialling(0), None);
        assert!(!a.is_halted());
        assert!(!ready.notes.iter().any(|n| matches!(n, Note::Halt(_))));
    }
}

#[test]
fn a_proven_new_incarnation_refusal_stops_dialling() {
    let mut a = fresh(config("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: PeerMsg::Refusal {
            kind: RefusalKind::NewIncarnation,
            reason: "you restarted without your state".into(),
        },
    });
    let ready = a.take_ready();
    assert_eq!(
        ready.closes,
        vec![Close {
            peer: 0,
            conn: 1,
            refusal: None
        }]
    );
    assert!(ready.dials.is_empty());
    assert!(a.stopped_dialling(0).is_some());
    a.step(Input::LinkDown { peer: 0, conn: 1 });
    assert!(a.take_ready().dials.is_empty());
}

#[test]
fn a_proven_state_regressed_refusal_halts_a_durable_node() {
    let mut a = fresh(config_with("a", &["b", "c"], |c| c.durable = true));
    go_live(&mut a, 0, 1, 5);
    go_live(&mut a, 1, 2, 6);
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: PeerMsg::Refusal {
            kind: RefusalKind::StateRegressed,
            reason: "you lost a commit".into(),
        },
    });
    let ready = settle(&mut a);
    assert!(a.is_halted());
    assert_eq!(
        ready
            .notes
            .iter()
            .filter(|n| matches!(n, Note::Halt(_)))
            .count(),
        1
    );
    let mut closed: Vec<ConnId> = ready.closes.iter().map(|c| c.conn).collect();
    closed.sort_unstable();
    assert_eq!(closed, vec![1, 2], "every connection closes");
    assert!(ready.dials.is_empty());
    assert_eq!(
        a.send_random_transfer(
            Draw {
                start: 0,
                amount: 1
            },
            |_| true
        ),
        Err(Pause::Peer)
    );
    start_snapshot(&mut a, 1);
    assert_eq!(a.records_kept(), 0, "commands are ignored");
}

#[test]
fn a_proven_peers_resume_acknowledging_more_than_was_sent_halts_a_durable_node() {
    let mut a = fresh(config_with("a", &["b"], |c| c.durable = true));
    a.step(Input::LinkUp { peer: 0, conn: 1 });
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: resume(5, 3),
    });
    let ready = settle(&mut a);
    assert!(a.is_halted());
    assert!(ready.notes.iter().any(|n| matches!(n, Note::Halt(_))));
    assert_eq!(ready.closes.len(), 1);
    assert!(!a.is_live(0));
}

#[test]
fn a_resume_acknowledging_more_than_was_sent_is_a_protocol_error_in_a_node_without_a_store() {
    let mut a = fresh(config("a", &["b"]));
    a.step(Input::LinkUp { peer: 0, conn: 1 });
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: resume(5, 3),
    });
    let ready = a.take_ready();
    assert!(!a.is_halted());
    assert_eq!(ready.closes.len(), 1);
    assert_eq!(refusal_kind(&ready.closes[0]), Some(RefusalKind::Retry));
    assert_eq!(ready.dials.len(), 1);
}

// Acknowledgements.

#[test]
fn a_full_batch_of_deliveries_is_acknowledged_at_once() {
    let mut b = fresh(config("b", &["a"]));
    go_live(&mut b, 0, 1, 5);
    for seq in 1..ACK_BATCH {
        b.step(Input::Peer {
            peer: 0,
            conn: 1,
            msg: transfer(seq, 1),
        });
    }
    let ready = b.take_ready();
    assert!(ready.messages.is_empty(), "fewer than a batch wait");
    b.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: transfer(ACK_BATCH, 1),
    });
    assert_eq!(
        b.take_ready().messages,
        vec![Outgoing {
            peer: 0,
            conn: 1,
            msg: PeerMsg::Ack {
                received: ACK_BATCH
            }
        }]
    );
}

#[test]
fn fewer_deliveries_arm_one_ack_flush_timer() {
    let mut b = fresh(config("b", &["a"]));
    go_live(&mut b, 0, 1, 5);
    for seq in 1..=3 {
        b.step(Input::Peer {
            peer: 0,
            conn: 1,
            msg: transfer(seq, 1),
        });
    }
    let ready = b.take_ready();
    assert!(ready.messages.is_empty());
    assert_eq!(
        ready.timers,
        vec![TimerOp::Set {
            timer: Timer::AckFlush,
            after: ACK_DELAY
        }]
    );
}

#[test]
fn the_ack_flush_timer_acknowledges_every_channel() {
    // b accepts a and dials c.
    let mut b = fresh(config("b", &["a", "c"]));
    go_live(&mut b, 0, 1, 5);
    go_live(&mut b, 1, 2, 6);
    for seq in 1..=2 {
        b.step(Input::Peer {
            peer: 0,
            conn: 1,
            msg: transfer(seq, 1),
        });
    }
    b.step(Input::Peer {
        peer: 1,
        conn: 2,
        msg: transfer(1, 1),
    });
    settle(&mut b);
    b.step(Input::Timer(Timer::AckFlush));
    assert_eq!(
        b.take_ready().messages,
        vec![
            Outgoing {
                peer: 0,
                conn: 1,
                msg: PeerMsg::Ack { received: 2 }
            },
            Outgoing {
                peer: 1,
                conn: 2,
                msg: PeerMsg::Ack { received: 1 }
            }
        ]
    );
}

#[test]
fn an_ack_frees_window_room_and_wakes_a_generator_parked_for_room() {
    let mut a = fresh(config_with("a", &["b"], |c| c.send_window = 1));
    go_live(&mut a, 0, 1, 5);
    let draw = Draw {
        start: 0,
        amount: 1,
    };
    assert_eq!(a.send_random_transfer(draw, |_| true), Ok(()));
    assert_eq!(a.send_random_transfer(draw, |_| true), Err(Pause::Room));
    settle(&mut a);
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: PeerMsg::Ack { received: 1 },
    });
    let ready = a.take_ready();
    assert!(ready.notes.contains(&Note::Wake(Pause::Room)));
    assert_eq!(a.unacked_to(0), 0);
    assert_eq!(a.send_random_transfer(draw, |_| true), Ok(()));
}

// Records.

#[test]
fn starting_a_snapshot_records_and_sends_a_marker_on_every_outgoing_channel() {
    let mut a = fresh(config("a", &["b", "c"]));
    go_live(&mut a, 0, 1, 5);
    go_live(&mut a, 1, 2, 6);
    start_snapshot(&mut a, 1);
    let ready = a.take_ready();
    let marker = |peer, conn| Outgoing {
        peer,
        conn,
        msg: PeerMsg::Channel {
            frame: Frame::Marker { id: 1 },
            pos: 1,
        },
    };
    assert_eq!(ready.messages, vec![marker(0, 1), marker(1, 2)]);
    assert!(ready.notes.contains(&Note::RecordBegun(1)));
    assert!(ready.timers.contains(&TimerOp::Set {
        timer: Timer::RecordExpiry(1),
        after: RECORD_TTL
    }));
    let record = a.record(1).expect("a record");
    assert_eq!(record.balance(), 100);
    assert!(!record.is_finished());
}

#[test]
fn beyond_the_record_cap_the_oldest_record_is_discarded_and_retrieving_it_answers_discarded() {
    let mut a = fresh(config("a", &["b"]));
    for id in 1..=MAX_KEPT_RECORDS as SnapshotId {
        start_snapshot(&mut a, id);
    }
    assert_eq!(a.records_kept(), MAX_KEPT_RECORDS);
    settle(&mut a);
    start_snapshot(&mut a, MAX_KEPT_RECORDS as SnapshotId + 1);
    assert_eq!(a.records_kept(), MAX_KEPT_RECORDS);
    assert!(a.record(1).is_none());
    assert!(a.record(2).is_some());
    assert!(settle(&mut a).notes.contains(&Note::RecordRetired(1)));
    retrieve(&mut a, CONTROLLER, 1, 0);
    assert_eq!(
        settle(&mut a).answers,
        vec![(CONTROLLER, Answer::status_only(1, RecordStatus::Discarded))]
    );
}

#[test]
fn an_unretrieved_record_is_discarded_when_it_expires() {
    let mut a = fresh(config("a", &["b"]));
    start_snapshot(&mut a, 1);
    settle(&mut a);
    a.step(Input::Timer(Timer::RecordExpiry(1)));
    assert!(settle(&mut a).notes.contains(&Note::RecordRetired(1)));
    assert_eq!(a.records_kept(), 0);
    retrieve(&mut a, CONTROLLER, 1, 0);
    assert_eq!(
        statuses(&settle(&mut a).answers),
        vec![RecordStatus::Discarded]
    );
}

/// Node `a` live with `b`, snapshot 1 begun and finished by `b`'s marker.
fn finished_record() -> BranchNode {
    let mut a = fresh(config("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    start_snapshot(&mut a, 1);
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: PeerMsg::Channel {
            frame: Frame::Marker { id: 1 },
            pos: 1,
        },
    });
    settle(&mut a);
    assert!(a.record(1).is_some_and(SnapshotRecord::is_finished));
    a
}

#[test]
fn retrieving_a_finished_record_answers_complete_and_retires_it_and_a_second_retrieve_gets_the_kept_copy()
 {
    let mut a = finished_record();
    retrieve(&mut a, CONTROLLER, 1, 0);
    let ready = settle(&mut a);
    assert_eq!(statuses(&ready.answers), vec![RecordStatus::Complete]);
    let first = ready.answers[0].1.clone();
    assert!(first.record.is_some());
    assert!(ready.notes.contains(&Note::RecordRetired(1)));
    assert_eq!(a.records_kept(), 0);
    retrieve(&mut a, CONTROLLER + 1, 1, 0);
    assert_eq!(settle(&mut a).answers, vec![(CONTROLLER + 1, first)]);
}

#[test]
fn a_held_retrieve_is_answered_when_the_record_finishes_and_its_timer_is_cancelled() {
    let mut a = fresh(config("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    start_snapshot(&mut a, 1);
    retrieve(&mut a, CONTROLLER, 1, 1000);
    let ready = settle(&mut a);
    assert!(ready.answers.is_empty());
    let held = retrieve_timers(&ready.timers);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].1, Duration::from_secs(1));
    assert!(a.owes_answer_on(CONTROLLER));
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: PeerMsg::Channel {
            frame: Frame::Marker { id: 1 },
            pos: 1,
        },
    });
    let ready = settle(&mut a);
    assert_eq!(statuses(&ready.answers), vec![RecordStatus::Complete]);
    assert!(ready.timers.contains(&TimerOp::Cancel(held[0].0)));
    assert!(!a.owes_answer_on(CONTROLLER));
}

#[test]
fn a_held_retrieve_is_answered_with_the_record_so_far_when_its_wait_runs_out() {
    let mut a = fresh(config("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    start_snapshot(&mut a, 1);
    retrieve(&mut a, CONTROLLER, 1, 1000);
    let held = retrieve_timers(&settle(&mut a).timers);
    a.step(Input::Timer(held[0].0));
    let ready = settle(&mut a);
    assert_eq!(statuses(&ready.answers), vec![RecordStatus::Recording]);
    assert!(ready.answers[0].1.record.is_some());
    assert_eq!(a.records_kept(), 1, "a record still recording is kept");
    assert!(!a.owes_answer_on(CONTROLLER));
}

#[test]
fn wait_zero_in_a_bank_with_a_secret_answers_at_once() {
    let mut a = fresh(config("a", &["b"]));
    start_snapshot(&mut a, 1);
    retrieve(&mut a, CONTROLLER, 1, 0);
    let ready = settle(&mut a);
    assert_eq!(statuses(&ready.answers), vec![RecordStatus::Recording]);
    assert!(retrieve_timers(&ready.timers).is_empty());
}

#[test]
fn wait_zero_without_a_secret_holds_for_the_original_schema_wait() {
    let mut a = fresh(config_with("a", &["b"], |c| c.authenticated = false));
    start_snapshot(&mut a, 1);
    retrieve(&mut a, CONTROLLER, 1, 0);
    // A snapshot not begun here yet too.
    retrieve(&mut a, CONTROLLER, 2, 0);
    let ready = settle(&mut a);
    assert!(ready.answers.is_empty());
    let held = retrieve_timers(&ready.timers);
    let waits: Vec<Duration> = held.iter().map(|(_, after)| *after).collect();
    assert_eq!(waits, vec![ORIGINAL_SCHEMA_WAIT; 2]);
    a.step(Input::Timer(held[0].0));
    assert_eq!(
        statuses(&settle(&mut a).answers),
        vec![RecordStatus::Recording]
    );
}

#[test]
fn an_unknown_snapshot_with_wait_zero_answers_unknown() {
    let mut a = fresh(config("a", &["b"]));
    retrieve(&mut a, CONTROLLER, 4, 0);
    assert_eq!(
        settle(&mut a).answers,
        vec![(CONTROLLER, Answer::status_only(4, RecordStatus::Unknown))]
    );
}

#[test]
fn an_overloaded_controller_connection_is_answered_at_once() {
    let mut a = fresh(config("a", &["b"]));
    start_snapshot(&mut a, 1);
    for _ in 0..MAX_HELD_ANSWERS {
        retrieve(&mut a, CONTROLLER, 1, 60_000);
    }
    assert!(settle(&mut a).answers.is_empty());
    retrieve(&mut a, CONTROLLER, 1, 60_000);
    assert_eq!(
        settle(&mut a).answers,
        vec![(CONTROLLER, Answer::status_only(1, RecordStatus::Recording))]
    );
    // Another connection is held as usual.
    retrieve(&mut a, CONTROLLER + 1, 1, 60_000);
    assert!(settle(&mut a).answers.is_empty());
}

// Durability epochs.

fn durable(name: &str, peers: &[&str]) -> NodeConfig {
    config_with(name, peers, |c| c.durable = true)
}

#[test]
fn a_durable_transfer_leaves_only_once_the_commit_holding_it_is_durable() {
    let mut a = fresh(durable("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    a.step(Input::Generate(Draw {
        start: 0,
        amount: 10,
    }));
    let mut ready = a.take_ready();
    assert!(frames_in(&ready.messages).is_empty());
    let persist = ready.persist.take().expect("a commit");
    assert_eq!(persist.frames, 1);
    assert_eq!(
        persist.changes.frame_batches,
        vec![FrameBatch {
            channel: 0,
            first: 1,
            frames: vec![Frame::Transfer { seq: 1, amount: 10 }]
        }]
    );
    assert_eq!(
        persist.changes.core.as_ref().map(|core| core.state.balance),
        Some(90),
        "the debit is in the same commit"
    );
    assert!(frames_in(&a.take_ready().messages).is_empty());
    a.step(Input::CommitDone {
        epoch: persist.epoch,
    });
    let ready = a.take_ready();
    assert_eq!(
        frames_in(&ready.messages),
        vec![(1, Frame::Transfer { seq: 1, amount: 10 })]
    );
    assert!(ready.notes.contains(&Note::CommitReleased {
        frames: true,
        acks: false
    }));
}

#[test]
fn a_durable_delivery_is_acknowledged_only_once_its_commit_is_durable() {
    let mut a = fresh(durable("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: transfer(1, 5),
    });
    let mut ready = a.take_ready();
    let persist = ready.persist.take().expect("a commit");
    assert!(ready.timers.is_empty(), "nothing to acknowledge yet");
    a.step(Input::Timer(Timer::AckFlush));
    assert!(a.take_ready().messages.is_empty());
    a.step(Input::CommitDone {
        epoch: persist.epoch,
    });
    let ready = a.take_ready();
    assert_eq!(
        ready.timers,
        vec![TimerOp::Set {
            timer: Timer::AckFlush,
            after: ACK_DELAY
        }]
    );
    assert!(ready.notes.contains(&Note::CommitReleased {
        frames: false,
        acks: true
    }));
    a.step(Input::Timer(Timer::AckFlush));
    assert_eq!(
        a.take_ready().messages,
        vec![Outgoing {
            peer: 0,
            conn: 1,
            msg: PeerMsg::Ack { received: 1 }
        }]
    );
}

#[test]
fn a_durable_resume_states_the_durable_position_not_the_delivered_one() {
    let mut a = fresh(durable("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: transfer(1, 5),
    });
    let persist = a.take_ready().persist.expect("a commit");
    a.step(Input::LinkDown { peer: 0, conn: 1 });
    a.step(Input::LinkUp { peer: 0, conn: 2 });
    assert!(a.take_ready().messages.contains(&Outgoing {
        peer: 0,
        conn: 2,
        msg: resume(7, 0)
    }));
    assert_eq!(a.delivered_from(0), 1);
    a.step(Input::CommitDone {
        epoch: persist.epoch,
    });
    a.step(Input::LinkDown { peer: 0, conn: 2 });
    a.step(Input::LinkUp { peer: 0, conn: 3 });
    assert!(settle(&mut a).messages.contains(&Outgoing {
        peer: 0,
        conn: 3,
        msg: resume(7, 1)
    }));
}

#[test]
fn an_answer_waits_for_the_commit_that_holds_what_it_reports() {
    let mut a = fresh(durable("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    start_snapshot(&mut a, 1);
    retrieve(&mut a, CONTROLLER, 1, 0);
    let mut ready = a.take_ready();
    assert!(ready.answers.is_empty());
    assert!(a.owes_answer_on(CONTROLLER));
    let persist = ready.persist.take().expect("a commit");
    assert_eq!(persist.changes.records.len(), 1, "the record's header");
    a.step(Input::CommitDone {
        epoch: persist.epoch,
    });
    assert_eq!(
        statuses(&a.take_ready().answers),
        vec![RecordStatus::Recording]
    );
    assert!(!a.owes_answer_on(CONTROLLER));
}

#[test]
fn a_commit_done_for_another_epoch_changes_nothing() {
    let mut a = fresh(durable("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    a.step(Input::Generate(Draw {
        start: 0,
        amount: 10,
    }));
    let epoch = a.take_ready().persist.expect("a commit").epoch;
    let before = a.clone();
    for wrong in [epoch - 1, epoch + 1] {
        a.step(Input::CommitDone { epoch: wrong });
        assert_eq!(a, before);
        assert!(a.take_ready().is_empty());
    }
    a.step(Input::CommitDone { epoch });
    assert_eq!(frames_in(&a.take_ready().messages).len(), 1);
}

/// The bank of `a` and `b`, as the runtime adds it to `a`'s first commit.
fn bank_meta(incarnation: u64) -> BankMeta {
    let member = |name: &str, port| BranchEntry {
        name: name.into(),
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
    };
    BankMeta {
        name: "a".into(),
        members: vec![member("a", 4001), member("b", 4002)],
        secret: Secret::none(),
        incarnation,
        epoch: 0,
    }
}

/// Writes the commit `node` asks for to `store` (with `bank` on the first) and reports it
/// durable; returns what the node asked for meanwhile.
fn commit_to(node: &mut BranchNode, store: &MemoryStore, bank: &mut Option<BankMeta>) -> Ready {
    let mut ready = node.take_ready();
    let persist = ready.persist.take().expect("a commit to make");
    store
        .commit(bank.take().as_ref(), &persist.changes)
        .expect("the memory store commits");
    node.step(Input::CommitDone {
        epoch: persist.epoch,
    });
    append(&mut ready, node.take_ready());
    ready
}

/// The store of durable node `a` (incarnation 7) that crashed after: its first commit, its
/// channel with `b` (incarnation 5) resumed and committed, a transfer of 10 committed and sent
/// (never acknowledged), and a transfer of 20 whose commit never completed.
fn crashed_store() -> MemoryStore {
    let store = MemoryStore::new();
    let config = durable("a", &["b"]);
    let mut bank = Some(bank_meta(config.incarnation));
    let mut a = BranchNode::new(config, 100);
    commit_to(&mut a, &store, &mut bank);
    a.step(Input::LinkUp { peer: 0, conn: 1 });
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: resume(5, 0),
    });
    commit_to(&mut a, &store, &mut bank);
    a.step(Input::Generate(Draw {
        start: 0,
        amount: 10,
    }));
    let sent = commit_to(&mut a, &store, &mut bank);
    assert_eq!(frames_in(&sent.messages).len(), 1);
    a.step(Input::Generate(Draw {
        start: 0,
        amount: 20,
    }));
    assert!(a.take_ready().persist.is_some(), "written, never durable");
    store
}

/// `a` restarted from what `store` held at its last commit.
fn restored(store: &MemoryStore) -> BranchNode {
    let (_, restored) = store.reopen().expect("the store reopens");
    let restored = restored.expect("a bank in the store");
    BranchNode::restore(
        durable("a", &["b"]),
        restored.core,
        restored.channels,
        restored.records,
    )
    .expect("the stored state restores")
}

#[test]
fn a_node_restored_after_a_crash_has_the_committed_balance() {
    let store = crashed_store();
    let a = restored(&store);
    assert_eq!(a.balance(), 90, "the transfer of 20 was never durable");
    assert_eq!(a.unacked_to(0), 1);
    assert_eq!(a.peer_incarnation(0), Some(5));
}

#[test]
fn a_restored_node_resends_its_unacknowledged_frames_after_the_peers_resume() {
    let mut a = restored(&crashed_store());
    assert_eq!(
        settle(&mut a).dials,
        vec![Dial {
            peer: 0,
            after_pause: false,
            known_incarnation: 5
        }]
    );
    a.step(Input::LinkUp { peer: 0, conn: 2 });
    assert_eq!(
        a.take_ready().messages,
        vec![Outgoing {
            peer: 0,
            conn: 2,
            msg: resume(7, 0)
        }],
        "nothing before the peer's Resume"
    );
    a.step(Input::Peer {
        peer: 0,
        conn: 2,
        msg: resume(5, 0),
    });
    assert_eq!(
        frames_in(&settle(&mut a).messages),
        vec![(1, Frame::Transfer { seq: 1, amount: 10 })]
    );
}

#[test]
fn a_restored_node_refuses_a_peer_that_came_back_as_a_new_incarnation() {
    let mut a = restored(&crashed_store());
    settle(&mut a);
    a.step(Input::LinkUp { peer: 0, conn: 2 });
    a.step(Input::Peer {
        peer: 0,
        conn: 2,
        msg: resume(6, 0),
    });
    let ready = settle(&mut a);
    assert!(frames_in(&ready.messages).is_empty());
    assert_eq!(ready.closes.len(), 1);
    assert_eq!(
        refusal_kind(&ready.closes[0]),
        Some(RefusalKind::NewIncarnation)
    );
}

// The generator's decision.

#[test]
fn the_generator_sends_to_the_first_live_peer_with_room_from_the_drawn_start() {
    let mut a = fresh(config_with("a", &["b", "c", "d"], |c| c.send_window = 1));
    go_live(&mut a, 0, 1, 5);
    go_live(&mut a, 2, 3, 7);
    let draw = Draw {
        start: 1,
        amount: 1,
    };
    // c (1) is not live: d (2) is next.
    assert_eq!(a.send_random_transfer(draw, |_| true), Ok(()));
    assert_eq!((a.unacked_to(0), a.unacked_to(2)), (0, 1));
    // d's window is full: round to b (0).
    assert_eq!(a.send_random_transfer(draw, |_| true), Ok(()));
    assert_eq!((a.unacked_to(0), a.unacked_to(2)), (1, 1));
    // The runtime's outbox counts as room too.
    let mut b = fresh(config("a", &["b", "c", "d"]));
    go_live(&mut b, 0, 1, 5);
    go_live(&mut b, 2, 3, 7);
    let draw = Draw {
        start: 2,
        amount: 1,
    };
    assert_eq!(b.send_random_transfer(draw, |peer| peer != 2), Ok(()));
    assert_eq!((b.unacked_to(0), b.unacked_to(2)), (1, 0));
}

#[test]
fn a_draw_above_the_balance_pauses_for_funds_and_changes_nothing() {
    let mut a = fresh(config("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    let before = a.clone();
    let draw = Draw {
        start: 0,
        amount: 101,
    };
    assert_eq!(a.send_random_transfer(draw, |_| true), Err(Pause::Funds));
    assert_eq!(a, before);
    assert!(a.take_ready().is_empty());
}

#[test]
fn with_no_live_peer_the_generator_pauses_for_a_peer() {
    let mut a = fresh(config("a", &["b"]));
    let draw = Draw {
        start: 0,
        amount: 1,
    };
    assert_eq!(a.send_random_transfer(draw, |_| true), Err(Pause::Peer));
    // Connected but not resumed is not live.
    a.step(Input::LinkUp { peer: 0, conn: 1 });
    assert_eq!(a.send_random_transfer(draw, |_| true), Err(Pause::Peer));
    assert_eq!(a.balance(), 100);
}

#[test]
fn with_every_window_full_the_generator_pauses_for_room() {
    let mut a = fresh(config_with("a", &["b", "c"], |c| c.send_window = 1));
    go_live(&mut a, 0, 1, 5);
    go_live(&mut a, 1, 2, 6);
    let draw = Draw {
        start: 0,
        amount: 1,
    };
    assert_eq!(a.send_random_transfer(draw, |_| true), Ok(()));
    assert_eq!(a.send_random_transfer(draw, |_| true), Ok(()));
    assert_eq!(a.send_random_transfer(draw, |_| true), Err(Pause::Room));
    assert_eq!(a.balance(), 98);
    // Room in the windows but none in the outboxes is a lack of room too.
    let mut b = fresh(config("a", &["b"]));
    go_live(&mut b, 0, 1, 5);
    assert_eq!(b.send_random_transfer(draw, |_| false), Err(Pause::Room));
}

#[test]
fn a_balance_never_goes_negative() {
    let mut a = fresh(config("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    let mut sent = 0;
    for amount in [30, 50, 40, 20, 10, 1] {
        let result = a.send_random_transfer(Draw { start: 0, amount }, |_| true);
        if result.is_ok() {
            sent += amount;
        } else {
            assert_eq!(result, Err(Pause::Funds));
        }
        assert_eq!(a.balance() + sent, 100);
    }
    assert_eq!((a.balance(), sent), (0, 100));
}

// State: Clone + Eq + Hash.

/// A bank of three run through connections, transfers of `amount` and a snapshot.
fn scripted(amount: u64) -> Mesh {
    let mut mesh = Mesh::new(3);
    mesh.connect(0, 1);
    mesh.connect(1, 2);
    mesh.connect(0, 2);
    for start in 0..4 {
        mesh.step(0, Input::Generate(Draw { start, amount }));
        mesh.step(2, Input::Generate(Draw { start, amount: 3 }));
    }
    mesh.step(
        1,
        Input::Command {
            conn: CONTROLLER,
            cmd: Command::StartSnapshot { id: 1 },
        },
    );
    mesh.cut(0, 1);
    mesh
}

#[test]
fn nodes_fed_the_same_inputs_are_equal_and_hash_equal() {
    let (one, two) = (scripted(5), scripted(5));
    for (x, y) in one.nodes.iter().zip(&two.nodes) {
        assert_eq!(x, y);
        assert_eq!(hash_of(x), hash_of(y));
    }
    assert_eq!(one.nodes[0].clone(), one.nodes[0]);
    assert!(
        one.nodes[1]
            .record(1)
            .is_some_and(SnapshotRecord::is_finished)
    );
}

#[test]
fn nodes_fed_different_inputs_differ() {
    let (one, two) = (scripted(5), scripted(6));
    assert_ne!(one.nodes[0], two.nodes[0]);
    assert_ne!(hash_of(&one.nodes[0]), hash_of(&two.nodes[0]));
    assert_ne!(one.nodes[1], two.nodes[1], "the receiver differs too");
}

#[test]
fn the_close_the_node_asked_for_reported_back_changes_nothing() {
    let mut a = fresh(config("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: transfer(2, 1),
    });
    let ready = a.take_ready();
    assert_eq!(ready.closes.len(), 1, "a gap");
    assert_eq!(ready.dials.len(), 1);
    let before = a.clone();
    a.step(Input::LinkDown { peer: 0, conn: 1 });
    assert_eq!(a, before);
    assert!(a.take_ready().is_empty(), "no second grace period or dial");
}

#[test]
fn a_bank_wide_snapshot_with_money_in_transit_sums_to_the_total() {
    let mut mesh = Mesh::new(3);
    mesh.connect(0, 1);
    mesh.connect(0, 2);
    mesh.connect(1, 2);
    mesh.hold(0, 1);
    mesh.step(
        0,
        Input::Generate(Draw {
            start: 0,
            amount: 7,
        }),
    );
    mesh.step(
        0,
        Input::Generate(Draw {
            start: 0,
            amount: 9,
        }),
    );
    mesh.step(
        2,
        Input::Generate(Draw {
            start: 0,
            amount: 5,
        }),
    );
    start_snapshot(&mut mesh.nodes[1], 1);
    mesh.run();
    // a's marker to b waits behind the two transfers, which b finds in transit.
    assert!(
        !mesh.nodes[1]
            .record(1)
            .is_some_and(SnapshotRecord::is_finished)
    );
    mesh.unhold(0, 1);
    let mut total = 0;
    for node in &mesh.nodes {
        let record = node.record(1).expect("every branch recorded");
        assert!(record.is_finished(), "{}", node.name());
        total += record.balance() + record.channel_state().iter().sum::<u64>();
    }
    assert_eq!(total, 300);
    let in_transit: Vec<u64> = mesh.nodes[1]
        .record(1)
        .map(|r| r.in_transit().iter().map(|t| t.amount).collect())
        .unwrap_or_default();
    assert_eq!(in_transit, vec![7, 9], "money was in flight at the cut");
}

#[test]
fn a_restored_node_keeps_its_records_and_the_answers_it_gave() {
    let store = MemoryStore::new();
    let config = durable("a", &["b"]);
    let mut bank = Some(bank_meta(config.incarnation));
    let mut a = BranchNode::new(config, 100);
    commit_to(&mut a, &store, &mut bank);
    a.step(Input::LinkUp { peer: 0, conn: 1 });
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: resume(5, 0),
    });
    commit_to(&mut a, &store, &mut bank);
    // Snapshot 1 finished and retrieved; snapshot 2 recording, with 4 found in transit.
    start_snapshot(&mut a, 1);
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: PeerMsg::Channel {
            frame: Frame::Marker { id: 1 },
            pos: 1,
        },
    });
    retrieve(&mut a, CONTROLLER, 1, 0);
    start_snapshot(&mut a, 2);
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: PeerMsg::Channel {
            frame: Frame::Transfer { seq: 1, amount: 4 },
            pos: 2,
        },
    });
    let answered = commit_to(&mut a, &store, &mut bank);
    assert_eq!(statuses(&answered.answers), vec![RecordStatus::Complete]);
    let mut a = restored(&store);
    let begun = settle(&mut a);
    assert!(begun.notes.contains(&Note::RecordBegun(2)));
    assert!(!begun.notes.contains(&Note::RecordBegun(1)));
    assert_eq!(a.highest_snapshot(), Some(2));
    retrieve(&mut a, CONTROLLER, 1, 0);
    assert_eq!(
        settle(&mut a).answers,
        answered.answers,
        "the same answer again"
    );
    go_live(&mut a, 0, 2, 5);
    // b resends what a had not stated as received: its marker of snapshot 2 follows.
    a.step(Input::Peer {
        peer: 0,
        conn: 2,
        msg: PeerMsg::Channel {
            frame: Frame::Marker { id: 2 },
            pos: 3,
        },
    });
    retrieve(&mut a, CONTROLLER, 2, 0);
    let ready = settle(&mut a);
    assert_eq!(statuses(&ready.answers), vec![RecordStatus::Complete]);
    let record = ready.answers[0].1.record.as_ref().expect("a record");
    assert_eq!(record.channel_state(), &[4]);
}

#[test]
fn beyond_the_requests_held_without_wait_a_connection_is_answered_at_once() {
    let mut a = fresh(config_with("a", &["b"], |c| c.authenticated = false));
    start_snapshot(&mut a, 1);
    for _ in 0..MAX_HELD_WITHOUT_WAIT {
        retrieve(&mut a, CONTROLLER, 1, 0);
    }
    assert!(settle(&mut a).answers.is_empty());
    retrieve(&mut a, CONTROLLER, 1, 0);
    assert_eq!(
        statuses(&settle(&mut a).answers),
        vec![RecordStatus::Recording]
    );
}

#[test]
fn beyond_the_early_waiters_a_retrieve_for_a_snapshot_not_begun_is_answered_at_once() {
    let mut a = fresh(config("a", &["b"]));
    for _ in 0..MAX_EARLY_WAITERS {
        retrieve(&mut a, CONTROLLER, 1, 60_000);
    }
    assert!(settle(&mut a).answers.is_empty());
    retrieve(&mut a, CONTROLLER, 1, 60_000);
    assert_eq!(
        settle(&mut a).answers,
        vec![(CONTROLLER, Answer::status_only(1, RecordStatus::Unknown))]
    );
}

#[test]
fn an_early_retrieve_is_answered_when_the_snapshot_begins_and_finishes_here() {
    let mut a = fresh(config("a", &["b"]));
    go_live(&mut a, 0, 1, 5);
    retrieve(&mut a, CONTROLLER, 3, 1000);
    let held = retrieve_timers(&settle(&mut a).timers);
    assert_eq!(held.len(), 1);
    // b's marker begins snapshot 3 here and, b being the only peer, finishes it.
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: PeerMsg::Channel {
            frame: Frame::Marker { id: 3 },
            pos: 1,
        },
    });
    let ready = settle(&mut a);
    assert_eq!(statuses(&ready.answers), vec![RecordStatus::Complete]);
    assert!(ready.timers.contains(&TimerOp::Cancel(held[0].0)));
    assert_eq!(
        frames_in(&ready.messages),
        vec![(1, Frame::Marker { id: 3 })]
    );
}

#[test]
fn one_way_channels_carry_frames_only_where_they_exist() {
    let one_way = |to, from| vec![Directions { to, from }];
    let mut a = fresh(config_with("a", &["b"], |c| {
        c.directions = one_way(true, false)
    }));
    let mut b = fresh(config_with("b", &["a"], |c| {
        c.directions = one_way(false, true)
    }));
    go_live(&mut a, 0, 1, 5);
    go_live(&mut b, 0, 1, 7);
    let draw = Draw {
        start: 0,
        amount: 1,
    };
    assert_eq!(b.send_random_transfer(draw, |_| true), Err(Pause::Peer));
    start_snapshot(&mut b, 1);
    assert!(
        frames_in(&settle(&mut b).messages).is_empty(),
        "b sends no markers"
    );
    assert_eq!(a.send_random_transfer(draw, |_| true), Ok(()));
    start_snapshot(&mut a, 1);
    let sent = frames_in(&settle(&mut a).messages);
    assert!(
        a.record(1).is_some_and(SnapshotRecord::is_finished),
        "a waits for no one"
    );
    for (pos, frame) in sent {
        b.step(Input::Peer {
            peer: 0,
            conn: 1,
            msg: PeerMsg::Channel { frame, pos },
        });
    }
    assert_eq!(b.balance(), 101);
    assert!(b.record(1).is_some_and(SnapshotRecord::is_finished));
    a.step(Input::Peer {
        peer: 0,
        conn: 1,
        msg: transfer(1, 1),
    });
    let ready = a.take_ready();
    assert_eq!(ready.closes.len(), 1, "no channel from b to a");
    assert_eq!(a.balance(), 99);
}

#[test]
fn retiring_a_record_cancels_its_expiry_timer() {
    // The actor's recorder took its expiry timer with it when it retired.
    let mut a = finished_record();
    retrieve(&mut a, CONTROLLER, 1, 0);
    let ready = settle(&mut a);
    assert!(ready.notes.contains(&Note::RecordRetired(1)));
    assert!(
        ready
            .timers
            .contains(&TimerOp::Cancel(Timer::RecordExpiry(1))),
        "timers: {:?}",
        ready.timers
    );
}

#[test]
fn discarding_a_record_cancels_its_expiry_timer_and_the_timers_of_the_retrieves_it_held() {
    // The actor's recorder took both with it when it was discarded.
    let mut a = fresh(config("a", &["b"]));
    start_snapshot(&mut a, 1);
    retrieve(&mut a, CONTROLLER, 1, 1000);
    let held = retrieve_timers(&settle(&mut a).timers);
    assert_eq!(held.len(), 1);
    for id in 2..=MAX_KEPT_RECORDS as SnapshotId + 1 {
        start_snapshot(&mut a, id);
    }
    let ready = settle(&mut a);
    assert_eq!(statuses(&ready.answers), vec![RecordStatus::Discarded]);
    assert!(
        ready.timers.contains(&TimerOp::Cancel(held[0].0)),
        "the held retrieve's timer"
    );
    assert!(
        ready
            .timers
            .contains(&TimerOp::Cancel(Timer::RecordExpiry(1))),
        "the record's expiry timer"
    );
}

/// The bank of the first `n` [`NAMES`] as member `i` keeps it in its store.
fn member_meta(n: usize, i: usize, incarnation: u64) -> BankMeta {
    BankMeta {
        name: NAMES[i].into(),
        members: (0..n)
            .map(|j| BranchEntry {
                name: NAMES[j].into(),
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 4001 + j as u16)),
            })
            .collect(),
        secret: Secret::none(),
        incarnation,
        epoch: 0,
    }
}

/// One thing that happens to a [`Mesh`] in the randomized test below.
#[derive(Debug, Clone)]
enum Op {
    Generate {
        node: usize,
        start: usize,
        amount: u64,
    },
    Snapshot {
        node: usize,
    },
    Connect {
        i: usize,
        j: usize,
    },
    Cut {
        i: usize,
        j: usize,
    },
    Hold {
        from: usize,
        to: usize,
    },
    Release {
        from: usize,
        to: usize,
    },
    AckFlush {
        node: usize,
    },
    Grace {
        node: usize,
        peer: Channel,
    },
    Commit {
        node: usize,
    },
    Crash {
        node: usize,
    },
    Retrieve {
        node: usize,
        back: SnapshotId,
    },
    Expire {
        node: usize,
        back: SnapshotId,
    },
}

fn op(n: usize) -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let node = 0..n;
    let pair = (0..n, 1..n).prop_map(move |(i, d)| (i, (i + d) % n));
    prop_oneof![
        4 => (node.clone(), 0..n, 1..40u64)
            .prop_map(|(node, start, amount)| Op::Generate { node, start, amount }),
        1 => node.clone().prop_map(|node| Op::Snapshot { node }),
        2 => pair.clone().prop_map(|(i, j)| Op::Connect { i, j }),
        1 => pair.clone().prop_map(|(i, j)| Op::Cut { i, j }),
        1 => pair.clone().prop_map(|(from, to)| Op::Hold { from, to }),
        2 => pair.prop_map(|(from, to)| Op::Release { from, to }),
        1 => node.clone().prop_map(|node| Op::AckFlush { node }),
        1 => (node.clone(), 0..n - 1).prop_map(|(node, peer)| Op::Grace { node, peer }),
        3 => node.clone().prop_map(|node| Op::Commit { node }),
        1 => node.clone().prop_map(|node| Op::Crash { node }),
        1 => (node.clone(), 0..3u32).prop_map(|(node, back)| Op::Retrieve { node, back }),
        1 => (node, 0..3u32).prop_map(|(node, back)| Op::Expire { node, back }),
    ]
}

impl Mesh {
    fn apply(&mut self, op: &Op, next_snapshot: &mut SnapshotId) {
        match *op {
            Op::Generate {
                node,
                start,
                amount,
            } => self.step(node, Input::Generate(Draw { start, amount })),
            Op::Snapshot { node } => {
                *next_snapshot += 1;
                start_snapshot(&mut self.nodes[node], *next_snapshot);
                self.run();
            }
            Op::Connect { i, j } => {
                if !self.conns.contains_key(&pair(i, j)) {
                    self.connect(i, j);
                }
            }
            Op::Cut { i, j } => self.cut(i, j),
            Op::Hold { from, to } => self.hold(from, to),
            Op::Release { from, to } => self.release(from, to, 1),
            Op::AckFlush { node } => self.step(node, Input::Timer(Timer::AckFlush)),
            Op::Grace { node, peer } => self.step(node, Input::Timer(Timer::Grace(peer))),
            Op::Commit { node } => self.commit(node),
            Op::Crash { node } => {
                if self.stores[node].is_some() {
                    self.crash(node);
                }
            }
            Op::Retrieve { node, back } => {
                let id = next_snapshot.saturating_sub(back);
                retrieve(&mut self.nodes[node], CONTROLLER, id, 0);
                self.run();
            }
            Op::Expire { node, back } => {
                let id = next_snapshot.saturating_sub(back);
                self.step(node, Input::Timer(Timer::RecordExpiry(id)));
            }
        }
    }

    /// Transfers node `j` received from node `i`, and node `i` sent to node `j`.
    fn counts(&self, i: usize, j: usize) -> (u64, u64) {
        let received = self.nodes[j].core().state().received[peer_of(j, i)].count;
        let sent = self.nodes[i].core().state().sent[peer_of(i, j)].count;
        (received, sent)
    }

    /// Every connection up, nothing held, every commit durable, every delivery acknowledged.
    fn heal(&mut self) {
        self.held.clear();
        let n = self.nodes.len();
        for i in 0..n {
            for j in i + 1..n {
                if !self.conns.contains_key(&(i, j)) {
                    self.connect(i, j);
                }
            }
        }
        // Each round releases what the last one made durable; a bounded number of rounds
        // settles any state a test reaches.
        for _ in 0..64 {
            let quiet = self.pending.iter().all(Option::is_none)
                && self.nodes.iter().all(|node| node.unacked_frames() == 0);
            if quiet {
                return;
            }
            for i in 0..n {
                self.commit(i);
                self.step(i, Input::Timer(Timer::AckFlush));
            }
        }
    }
}

/// Runs `ops` on `mesh`, checking after every step that no branch received a transfer its
/// sender had not sent, then heals it and checks that every transfer arrived exactly once,
/// money is conserved, and every snapshot finished everywhere without a lost channel is a cut
/// whose balances and money in transit add up to the total.
fn check_bank(mut mesh: Mesh, ops: &[Op]) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prop_assert;
    let n = mesh.nodes.len();
    let directed: Vec<(usize, usize)> = (0..n)
        .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
        .collect();
    let mut next_snapshot = 0;
    for op in ops {
        mesh.apply(op, &mut next_snapshot);
        for &(i, j) in &directed {
            let (received, sent) = mesh.counts(i, j);
            prop_assert!(
                received <= sent,
                "after {op:?}: {} received {received} transfers from {}, which sent {sent}",
                mesh.nodes[j].name(),
                mesh.nodes[i].name()
            );
        }
    }
    mesh.heal();
    for &(i, j) in &directed {
        let (received, sent) = mesh.counts(i, j);
        prop_assert!(
            received == sent,
            "healed: {} received {received} of the {sent} transfers {} sent",
            mesh.nodes[j].name(),
            mesh.nodes[i].name()
        );
    }
    for node in &mesh.nodes {
        prop_assert!(
            node.unacked_frames() == 0,
            "{} has unacked frames",
            node.name()
        );
    }
    let total: u64 = mesh.nodes.iter().map(BranchNode::balance).sum();
    prop_assert!(total == 100 * n as u64, "the bank holds {total}");
    for id in 1..=next_snapshot {
        // Kept, or handed to a controller and kept as its answer.
        let records: Vec<&SnapshotRecord> = mesh
            .nodes
            .iter()
            .filter_map(|node| {
                node.record(id)
                    .or_else(|| node.kept_answer(id).and_then(|a| a.record.as_ref()))
            })
            .collect();
        if records.len() < n
            || records
                .iter()
                .any(|r| !r.is_finished() || !r.lost().is_empty())
        {
            continue;
        }
        let cut: u64 = records
            .iter()
            .map(|r| r.balance() + r.channel_state().iter().sum::<u64>())
            .sum();
        prop_assert!(cut == 100 * n as u64, "snapshot {id} sums to {cut}");
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(128))]

    /// Whatever the interleaving of transfers, snapshots, cuts, held messages and lapsed grace
    /// periods, a bank without stores loses, repeats and creates no money, and its complete
    /// snapshots are consistent cuts.
    #[test]
    fn a_bank_without_stores_keeps_every_transfer_exactly_once_and_its_cuts_consistent(
        ops in proptest::collection::vec(op(3), 1..80),
    ) {
        let ops: Vec<Op> = ops.into_iter().filter(|op| !matches!(op, Op::Crash { .. })).collect();
        check_bank(Mesh::new(3), &ops)?;
    }

    /// The same with durable branches whose commits lag and which crash and restart from their
    /// stores at any step.
    #[test]
    fn a_durable_bank_keeps_every_transfer_exactly_once_across_crashes(
        ops in proptest::collection::vec(op(3), 1..80),
    ) {
        check_bank(Mesh::durable(3), &ops)?;
    }
}

#[test]
fn one_way_peers_number_the_core_channels_in_peer_order() {
    let mut config = config("b", &["a", "c", "d"]);
    config.directions = vec![
        Directions {
            to: true,
            from: false,
        },
        Directions {
            to: false,
            from: true,
        },
        Directions {
            to: true,
            from: true,
        },
    ];
    let b = BranchNode::new(config, 10);
    let out: Vec<_> = (0..3).map(|p| b.outgoing_channel(p)).collect();
    let inc: Vec<_> = (0..3).map(|p| b.incoming_channel(p)).collect();
    assert_eq!(out, [Some(0), None, Some(1)]);
    assert_eq!(inc, [None, Some(0), Some(1)]);
    assert_eq!((b.core().outgoing(), b.core().incoming()), (2, 2));
}

/// Makes every commit `node` asks for durable in `store` (the first with `bank`); returns the
/// rest of what it asked for.
fn settle_into(node: &mut BranchNode, store: &MemoryStore, mut bank: Option<BankMeta>) -> Ready {
    let mut all = Ready::default();
    loop {
        let mut ready = node.take_ready();
        let persist = ready.persist.take();
        append(&mut all, ready);
        let Some(persist) = persist else {
            return all;
        };
        store
            .commit(bank.take().as_ref(), &persist.changes)
            .expect("the memory store commits");
        node.step(Input::CommitDone {
            epoch: persist.epoch,
        });
    }
}

#[test]
fn a_restored_branch_gives_each_peer_a_grace_period_from_its_restart() {
    let config = config_with("a", &["b"], |c| c.durable = true);
    let store = MemoryStore::new();
    let mut a = BranchNode::new(config.clone(), 100);
    settle_into(&mut a, &store, Some(member_meta(2, 0, config.incarnation)));
    start_snapshot(&mut a, 1);
    settle_into(&mut a, &store, None);
    // a crashes; b never comes back.
    let (store, restored) = store.reopen().expect("the store reopens");
    let restored = restored.expect("a committed bank");
    let mut a = BranchNode::restore(
        config.clone(),
        restored.core,
        restored.channels,
        restored.records,
    )
    .expect("the stored state restores");
    let ready = a.take_ready();
    assert!(
        ready.timers.contains(&TimerOp::Set {
            timer: Timer::Grace(0),
            after: config.peer_grace
        }),
        "{:?}",
        ready.timers
    );
    a.step(Input::Timer(Timer::Grace(0)));
    retrieve(&mut a, CONTROLLER, 1, 0);
    let ready = settle_into(&mut a, &store, None);
    assert_eq!(statuses(&ready.answers), vec![RecordStatus::CutShort]);
}
