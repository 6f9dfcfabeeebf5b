//! A deterministic simulator: any number of [`BranchCore`]s (the same no-I/O code live branches
//! run) on a simulated network of one-way FIFO links, driven by a script.
//!
//! # The delivery rule (part of the contract)
//!
//! - Time is discrete ticks, starting at 0. Script events happen at the current tick; `tick n`
//!   advances the clock one tick at a time, running each new tick's deliveries.
//! - A message sent at tick `t` with delay `d` (`d >= 1`) may be delivered from tick `t + d` on.
//!   Delays come from a seeded RNG (uniform in 1..=5) or from a list, used in the order messages
//!   are sent, markers included.
//! - On each tick, branches are visited in lexicographic name order as senders, and each
//!   sender's outgoing links in lexicographic destination order. Only the head of a link's queue
//!   can be delivered, and only once its time has come. Each sender delivers at most one message
//!   per tick: the first link (in that order) whose head is due.
//! - A message delivered in a tick can only cause sends that arrive in a later tick (every delay
//!   is at least 1).
//! - Markers a branch sends when it records go out in lexicographic destination order.
//!
//! - Links carry positioned frames exactly as a live bank's peer channels do
//!   ([`crate::core::channel`]): the sender keeps every frame until it is acknowledged, and the
//!   receiver acknowledges what it has delivered one tick later. `cut <src> <dst>` makes the
//!   link's connection fail: every message in flight on it is lost, and the sender at once
//!   resends every frame not yet acknowledged, oldest first, each with a fresh delay (drawn in
//!   that order). Frames the receiver had already delivered arrive again and are dropped by
//!   position; a gap would be an error. Cut or not, every frame is delivered once and in order.
//!
//! After the script, the simulator ticks on until every snapshot is complete (or no message is
//! left to deliver, when some branch can never be reached by a marker).
//!
//! Snapshot ids are 0, 1, 2... in the order the `snapshot` events appear.

pub mod svg;
pub mod timeline;
pub mod topology;

use std::collections::VecDeque;
use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

pub use timeline::{MessageKind, TimelineEvent};
pub use topology::{Event, Script, Topology};

use crate::core::audit::{ChannelCounters, ChannelEvidence, CutEvidence};
use crate::core::{
    BranchCore, CoreError, Delivery, Effect, Frame, Position, ReceiveCursor, RecordBook,
    SendWindow, SnapshotId,
};

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

/// Where message delays come from.
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

/// A message on a simulated link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload {
    Transfer { seq: u64, amount: u64 },
    Marker { id: SnapshotId },
}

impl Payload {
    fn describe(self) -> String {
        match self {
            Payload::Transfer { seq, amount } => format!("transfer #{seq} ({amount})"),
            Payload::Marker { id } => format!("marker {id}"),
        }
    }
}

impl Payload {
    fn frame(self) -> Frame {
        match self {
            Payload::Transfer { seq, amount } => Frame::Transfer { seq, amount },
            Payload::Marker { id } => Frame::Marker { id },
        }
    }

    fn of(frame: Frame) -> Self {
        match frame {
            Frame::Transfer { seq, amount } => Payload::Transfer { seq, amount },
            Frame::Marker { id } => Payload::Marker { id },
        }
    }
}

/// A message waiting on a link.
#[derive(Debug, Clone, Copy)]
struct Queued {
    deliver_from: u64,
    /// Its position on the link.
    pos: Position,
    payload: Payload,
}

/// One one-way FIFO link.
#[derive(Debug, Clone)]
struct Link {
    src: usize,
    dst: usize,
    /// The link's index among `dst`'s incoming channels.
    in_channel: usize,
    queue: VecDeque<Queued>,
    /// The sender's frames not yet acknowledged.
    window: SendWindow,
    /// How far the receiver has delivered.
    cursor: ReceiveCursor,
    /// What the receiver had delivered at the end of the previous tick: the acknowledgement
    /// the sender gets at the end of this one.
    ack_in_flight: Position,
}

/// One snapshot as the simulator saw it.
#[derive(Debug, Clone)]
struct SnapshotTrace {
    /// `(src, dst, amount)` of each transfer recorded in transit, in the order it was received.
    in_transit: Vec<(usize, usize, u64)>,
}

/// The simulated bank.
#[derive(Debug)]
pub struct Simulator {
    topology: Topology,
    cores: Vec<BranchCore>,
    books: Vec<RecordBook>,
    links: Vec<Link>,
    /// Per branch: its outgoing links (indices into `links`), by destination name; the position
    /// is the core's outgoing channel.
    outgoing: Vec<Vec<usize>>,
    /// Per branch: its incoming links, by source name; the position is the incoming channel.
    incoming: Vec<Vec<usize>>,
    /// Branch indices by name.
    visit_order: Vec<usize>,
    delays: Delays,
    tick: u64,
    snapshots: Vec<SnapshotTrace>,
    trace: Option<Vec<String>>,
    /// Every send, delivery and recording, for the space-time diagram, when asked for.
    timeline: Option<Vec<TimelineEvent>>,
    effects: Vec<Effect>,
    /// Cuts so far.
    cuts: usize,
    /// Frames delivered twice (resent after a cut) and dropped by position.
    duplicates: usize,
}

impl Simulator {
    /// A simulator at tick 0 with every branch holding its initial balance.
    pub fn new(topology: Topology, delays: Delays) -> Self {
        let count = topology.names.len();
        let mut visit_order: Vec<usize> = (0..count).collect();
        visit_order.sort_by(|&a, &b| topology.names[a].cmp(&topology.names[b]));
        let rank = |branch: usize| visit_order.iter().position(|&b| b == branch);
        let mut outgoing: Vec<Vec<usize>> = vec![Vec::new(); count];
        let mut incoming: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (index, &(src, dst)) in topology.links.iter().enumerate() {
            outgoing[src].push(index);
            incoming[dst].push(index);
        }
        for list in &mut outgoing {
            list.sort_by_key(|&link| rank(topology.links[link].1));
        }
        for list in &mut incoming {
            list.sort_by_key(|&link| rank(topology.links[link].0));
        }
        let mut links: Vec<Link> = topology
            .links
            .iter()
            .map(|&(src, dst)| Link {
                src,
                dst,
                in_channel: 0,
                queue: VecDeque::new(),
                window: SendWindow::new(usize::MAX),
                cursor: ReceiveCursor::default(),
                ack_in_flight: 0,
            })
            .collect();
        for list in &incoming {
            for (channel, &link) in list.iter().enumerate() {
                links[link].in_channel = channel;
            }
        }
        let cores = (0..count)
            .map(|b| {
                BranchCore::with_links(topology.balances[b], incoming[b].len(), outgoing[b].len())
            })
            .collect();
        Self {
            cores,
            books: vec![RecordBook::new(); count],
            links,
            outgoing,
            incoming,
            visit_order,
            delays,
            tick: 0,
            snapshots: Vec::new(),
            trace: None,
            timeline: None,
            effects: Vec::new(),
            cuts: 0,
            duplicates: 0,
            topology,
        }
    }

    /// Starts collecting a trace of every send and delivery.
    pub fn enable_trace(&mut self) {
        self.trace.get_or_insert_with(Vec::new);
    }

    /// Trace lines collected so far.
    pub fn trace(&self) -> &[String] {
        self.trace.as_deref().unwrap_or_default()
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

    /// The current tick.
    pub fn now(&self) -> u64 {
        self.tick
    }

    /// A branch's current balance.
    pub fn balance(&self, branch: usize) -> u64 {
        self.cores[branch].ledger().balance()
    }

    /// Snapshots started so far.
    pub fn snapshot_count(&self) -> usize {
        self.snapshots.len()
    }

    /// Whether every branch has finished recording snapshot `id`.
    pub fn is_complete(&self, id: SnapshotId) -> bool {
        self.books
            .iter()
            .all(|book| book.get(id).is_some_and(|record| record.is_finished()))
    }

    /// `src` sends `amount` to `dst` now.
    pub fn send(&mut self, src: usize, dst: usize, amount: u64) -> Result<(), String> {
        let names = &self.topology.names;
        let channel = self.outgoing[src]
            .iter()
            .position(|&link| self.links[link].dst == dst)
            .ok_or_else(|| format!("there is no link {} -> {}", names[src], names[dst]))?;
        let seq = self.cores[src]
            .send_transfer(channel, amount)
            .map_err(|err| match err {
                CoreError::InsufficientFunds { balance, .. } => {
                    format!("{} has {balance}, cannot send {amount}", names[src])
                }
                other => other.to_string(),
            })?;
        let link = self.outgoing[src][channel];
        self.enqueue(link, Payload::Transfer { seq, amount })
    }

    /// `branch` starts the next snapshot now; returns its id.
    pub fn start_snapshot(&mut self, branch: usize) -> Result<SnapshotId, String> {
        let id = SnapshotId::try_from(self.snapshots.len()).map_err(|_| "too many snapshots")?;
        self.snapshots.push(SnapshotTrace {
            in_transit: Vec::new(),
        });
        self.cores[branch]
            .start_snapshot(id, &mut self.effects)
            .map_err(|err| err.to_string())?;
        self.apply_effects(branch)?;
        Ok(id)
    }

    /// Advances one tick and runs its deliveries.
    pub fn step(&mut self) -> Result<(), String> {
        self.tick += 1;
        for position in 0..self.visit_order.len() {
            let src = self.visit_order[position];
            let due = self.outgoing[src].iter().copied().find(|&link| {
                self.links[link]
                    .queue
                    .front()
                    .is_some_and(|head| head.deliver_from <= self.tick)
            });
            if let Some(link) = due {
                self.deliver(link)?;
            }
        }
        // Acknowledgements take a tick: a cut can still make the sender resend frames the
        // receiver has just delivered.
        for link in &mut self.links {
            link.window
                .ack(link.ack_in_flight)
                .map_err(|err| err.to_string())?;
            link.ack_in_flight = link.cursor.delivered();
        }
        Ok(())
    }

    /// The connection of link `src -> dst` fails: what is in flight is lost, and the sender
    /// resends every frame not yet acknowledged, in order.
    pub fn cut(&mut self, src: usize, dst: usize) -> Result<(), String> {
        let names = &self.topology.names;
        let link = self
            .links
            .iter()
            .position(|link| link.src == src && link.dst == dst)
            .ok_or_else(|| format!("there is no link {} -> {}", names[src], names[dst]))?;
        let lost = self.links[link].queue.len();
        self.links[link].queue.clear();
        let resend: Vec<(Position, Frame)> = self.links[link].window.frames().collect();
        if let Some(trace) = &mut self.trace {
            trace.push(format!(
                "tick {}: cut {} -> {}: {lost} message(s) in flight lost, {} frame(s) resent",
                self.tick,
                names[src],
                names[dst],
                resend.len()
            ));
        }
        self.cuts += 1;
        self.note(TimelineEvent::Cut {
            tick: self.tick,
            src,
            dst,
        });
        for (pos, frame) in resend {
            self.transmit(link, pos, Payload::of(frame))?;
        }
        Ok(())
    }

    /// Ticks until no message is in flight on any link, so every balance is final.
    pub fn settle(&mut self) -> Result<(), String> {
        while self.links.iter().any(|link| !link.queue.is_empty()) {
            self.step()?;
        }
        Ok(())
    }

    /// Cuts so far.
    pub fn cut_count(&self) -> usize {
        self.cuts
    }

    /// Frames delivered twice and dropped by position so far.
    pub fn duplicates_dropped(&self) -> usize {
        self.duplicates
    }

    /// Applies a whole script; errors name the script line.
    pub fn run_script(&mut self, file: &str, script: &Script) -> Result<(), SimError> {
        for &(line, event) in &script.events {
            let result = match event {
                Event::Send { src, dst, amount } => self.send(src, dst, amount),
                Event::Snapshot { branch } => self.start_snapshot(branch).map(|_| ()),
                Event::Tick(n) => (0..n).try_for_each(|_| self.step()),
                Event::Cut { src, dst } => self.cut(src, dst),
            };
            result.map_err(|reason| SimError::at(file, line, reason))?;
        }
        Ok(())
    }

    /// Ticks until every snapshot is complete. Fails if no message is left to deliver while
    /// some snapshot is still incomplete (a branch no marker can reach).
    pub fn finish(&mut self) -> Result<(), String> {
        loop {
            let incomplete: Vec<SnapshotId> = (0..self.snapshots.len())
                .filter_map(|id| SnapshotId::try_from(id).ok())
                .filter(|&id| !self.is_complete(id))
                .collect();
            let Some(&first) = incomplete.first() else {
                return Ok(());
            };
            if self.links.iter().all(|link| link.queue.is_empty()) {
                let stuck: Vec<&str> = (0..self.cores.len())
                    .filter(|&b| !self.books[b].get(first).is_some_and(|r| r.is_finished()))
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

    fn enqueue(&mut self, link: usize, payload: Payload) -> Result<(), String> {
        let window = &mut self.links[link].window;
        let pos = window.push(payload.frame());
        // A simulated branch has no store: a frame is durable at once.
        window.mark_durable(pos);
        self.transmit(link, pos, payload)
    }

    /// Puts the frame at `pos` on the wire of `link`, with the next delay.
    fn transmit(&mut self, link: usize, pos: Position, payload: Payload) -> Result<(), String> {
        let delay = self.delays.next()?;
        let deliver_from = self.tick + delay;
        let Link { src, dst, .. } = self.links[link];
        if let Some(trace) = &mut self.trace {
            trace.push(format!(
                "tick {}: send {} -> {} {}, due at tick {deliver_from}",
                self.tick,
                self.topology.names[src],
                self.topology.names[dst],
                payload.describe()
            ));
        }
        self.note(TimelineEvent::Send {
            tick: self.tick,
            src,
            dst,
            kind: payload.into(),
            due: deliver_from,
        });
        self.links[link].queue.push_back(Queued {
            deliver_from,
            pos,
            payload,
        });
        Ok(())
    }

    fn deliver(&mut self, link: usize) -> Result<(), String> {
        let Some(message) = self.links[link].queue.pop_front() else {
            return Ok(());
        };
        let (src, dst, in_channel) = {
            let link = &self.links[link];
            (link.src, link.dst, link.in_channel)
        };
        let delivery = self.links[link]
            .cursor
            .accept(message.pos)
            .map_err(|err| format!("{}: {err}", self.topology.names[dst]))?;
        self.links[link].cursor.mark_durable(message.pos);
        if delivery == Delivery::Duplicate {
            self.duplicates += 1;
            self.note(TimelineEvent::Deliver {
                tick: self.tick,
                src,
                dst,
            });
            if let Some(trace) = &mut self.trace {
                trace.push(format!(
                    "tick {}: drop duplicate {} -> {} {} (position {})",
                    self.tick,
                    self.topology.names[src],
                    self.topology.names[dst],
                    message.payload.describe(),
                    message.pos
                ));
            }
            return Ok(());
        }
        if let Some(trace) = &mut self.trace {
            trace.push(format!(
                "tick {}: deliver {} -> {} {}",
                self.tick,
                self.topology.names[src],
                self.topology.names[dst],
                message.payload.describe()
            ));
        }
        self.note(TimelineEvent::Deliver {
            tick: self.tick,
            src,
            dst,
        });
        let core = &mut self.cores[dst];
        let result = match message.payload {
            Payload::Transfer { seq, amount } => {
                core.receive_transfer(in_channel, amount, Some(seq), &mut self.effects)
            }
            Payload::Marker { id } => core.receive_marker(in_channel, id, &mut self.effects),
        };
        result.map_err(|err| format!("{}: {err}", self.topology.names[dst]))?;
        self.apply_effects(dst)
    }

    fn apply_effects(&mut self, branch: usize) -> Result<(), String> {
        let effects = std::mem::take(&mut self.effects);
        for effect in &effects {
            self.books[branch].apply(effect);
            match *effect {
                Effect::SendMarker { to, id } => {
                    let link = self.outgoing[branch][to];
                    self.enqueue(link, Payload::Marker { id })?;
                }
                Effect::RecordTransfer {
                    id,
                    from,
                    amount,
                    seq,
                } => {
                    let src = self.links[self.incoming[branch][from]].src;
                    self.note(TimelineEvent::InTransit {
                        snapshot: id,
                        src,
                        dst: branch,
                        seq,
                    });
                    if let Some(snapshot) = usize::try_from(id)
                        .ok()
                        .and_then(|i| self.snapshots.get_mut(i))
                    {
                        snapshot.in_transit.push((src, branch, amount));
                    }
                }
                Effect::BeginRecord { id, .. } => self.note(TimelineEvent::Record {
                    tick: self.tick,
                    branch,
                    snapshot: id,
                }),
                Effect::FinishRecord { .. } | Effect::ChannelLost { .. } => {}
            }
        }
        self.effects = effects;
        self.effects.clear();
        Ok(())
    }

    /// Snapshot `id` in the scenario output format: a line with the id, `<name> <balance>` per
    /// branch (topology order), then `<src> <dst> token(<amount>)` per transfer recorded in
    /// transit, in the order it was received.
    pub fn report(&self, id: SnapshotId) -> String {
        let mut out = format!("snapshot {id}\n");
        for (branch, name) in self.topology.names.iter().enumerate() {
            match self.books[branch].get(id) {
                Some(record) => {
                    let _ = writeln!(out, "{name} {}", record.balance());
                }
                None => {
                    let _ = writeln!(out, "{name} unrecorded");
                }
            }
        }
        let names = &self.topology.names;
        for &(src, dst, amount) in usize::try_from(id)
            .ok()
            .and_then(|i| self.snapshots.get(i))
            .map(|s| s.in_transit.as_slice())
            .unwrap_or_default()
        {
            let _ = writeln!(out, "{} {} token({amount})", names[src], names[dst]);
        }
        out
    }

    /// The consistent-cut evidence of snapshot `id`, for [`crate::core::Audit::check`]; `None`
    /// until every branch has finished recording it.
    pub fn evidence(&self, id: SnapshotId) -> Option<CutEvidence> {
        let records: Vec<_> = self
            .books
            .iter()
            .map(|book| book.get(id).filter(|record| record.is_finished()))
            .collect::<Option<_>>()?;
        let channels = self
            .links
            .iter()
            .map(|link| {
                let out_channel = self.outgoing[link.src]
                    .iter()
                    .position(|&l| self.links[l].dst == link.dst)
                    .unwrap_or_default();
                let receiver = records[link.dst];
                ChannelEvidence {
                    from: link.src,
                    to: link.dst,
                    recorded_sum: receiver.channel_state()[link.in_channel],
                    counters: Some(ChannelCounters {
                        sent: records[link.src].sent()[out_channel],
                        received: receiver.received()[link.in_channel],
                        in_transit: receiver
                            .in_transit()
                            .iter()
                            .filter(|t| t.from == link.in_channel)
                            .map(|t| (t.seq, t.amount))
                            .collect(),
                    }),
                }
            })
            .collect();
        Some(CutEvidence {
            names: self.topology.names.clone(),
            balances: records.iter().map(|record| record.balance()).collect(),
            channels,
            expected_total: self.topology.balances.iter().sum(),
        })
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
    let mut sim = Simulator::new(topology, delays);
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
