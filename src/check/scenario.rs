//! Counterexamples as `snapbank-sim` scenarios: a path of the checker's [`Action`]s written as
//! a topology and a *step script*, read back, and replayed one step at a time on the same
//! [`Bank`] of production nodes, with every property checked after every step and the run
//! recorded as a [`TimelineEvent`] list for the space-time diagram.
//!
//! A step script lines up one to one with the checker's actions: nothing happens between two
//! lines except what the line's action causes, so a replay reaches exactly the states of the
//! path the checker found. (The simulator's other scripts leave the schedule to its delivery
//! rule; a step script states it.) Its format, `#` comments and blank lines allowed:
//!
//! ```text
//! steps                 # first line: this is a step script
//! transfers 1           # the bounds the checker ran with (each a budget the steps spend)
//! snapshots 1
//! cuts 1
//! crashes 1
//! wipes 0
//! rollbacks 0
//! may-crash b1          # the branch that may crash (only with crashes)
//! send b0 b1 1          # b0 sends 1 to b1 (the only amount the model sends)
//! connect b0 b1         # b0's dial of b1 succeeds
//! deliver b0 b1         # the head of the queue from b0 to b1 arrives
//! cut b0 b1             # their connection fails: what is in flight on it is lost
//! crash b1 / restart b1 / wipe b0
//! commit b1             # b1's commit being written becomes durable
//! rollback-prepare b0   # phase one of a rollback at b0 (the first one starts it)
//! rollback-commit b0    # phase two at b0, once every branch is prepared
//! fire b0 ack           # a timer fires: ack, grace <peer>, deadline <id> <token>
//! snapshot b0           # the controller starts the next snapshot (ids 0, 1, ...) at b0
//! retrieve b1 0         # the controller asks b1 again for snapshot 0's record
//! ```
//!
//! The topology is the simulator's: every branch with the same balance, a link each way
//! between every pair.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use stateright::{Expectation, Model};

use super::{Action, Bank, BankState, Bounds};
use crate::core::node::Timer;
use crate::core::{Frame, PeerMsg, SnapshotId};
use crate::sim::{MessageKind, SimError, TimelineEvent, Topology};

/// A path of the model, as a scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The bank (its bounds and names).
    pub bank: Bank,
    /// The branch that may crash: which of the bank's initial states the path starts from.
    pub may_crash: Option<usize>,
    /// The steps, each with the script line it came from (0 when made from a path).
    pub steps: Vec<(usize, Action)>,
}

/// What a replay found.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// One line per step (what it did), then one per property (its verdict on this run).
    pub lines: Vec<String>,
    /// The properties that failed on this run, each with the step it failed at (0: at the
    /// start; for an *eventually* property, the last step).
    pub failures: Vec<(&'static str, usize)>,
    /// What happened, for the space-time diagram.
    pub timeline: Vec<TimelineEvent>,
    /// Snapshots started.
    pub snapshots: usize,
}

/// Whether `text` is a step script (its first line that is not a comment says `steps`).
pub fn is_step_script(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .is_some_and(|line| line.split('#').next().map(str::trim) == Some("steps"))
}

impl Scenario {
    /// The scenario of `actions` taken from `init`, one of `bank`'s initial states.
    pub fn from_path(bank: &Bank, init: &BankState, actions: &[Action]) -> Self {
        let mut bank = bank.clone();
        // A path of the reduced search is a path of the full one; a replay accepts any.
        bank.reduce = false;
        Self {
            bank,
            may_crash: init.may_crash,
            steps: actions.iter().map(|&a| (0, a)).collect(),
        }
    }

    /// The scenario cut back to its first state where *always* property `property` fails:
    /// a checker with several threads may report a longer path to a failing state than the
    /// shortest, and what follows the first failure only hides it.
    pub fn shortened(mut self, property: &str) -> Self {
        let Some(condition) = self
            .bank
            .properties()
            .into_iter()
            .find(|p| p.name == property && p.expectation == Expectation::Always)
            .map(|p| p.condition)
        else {
            return self;
        };
        let Some(mut state) = self
            .bank
            .init_states()
            .into_iter()
            .find(|s| s.may_crash == self.may_crash)
        else {
            return self;
        };
        for (index, &(_, action)) in self.steps.iter().enumerate() {
            match self.bank.next_state(&state, action) {
                Some(next) => state = next,
                None => return self,
            }
            if !condition(&self.bank, &state) {
                self.steps.truncate(index + 1);
                break;
            }
        }
        self
    }

    /// The topology file.
    pub fn topology_text(&self) -> String {
        let n = self.bank.bounds.branches;
        Topology {
            names: self.bank.names.clone(),
            balances: vec![self.bank.bounds.balance; n],
            links: (0..n)
                .flat_map(|a| (0..n).filter(move |&b| b != a).map(move |b| (a, b)))
                .collect(),
        }
        .to_text()
    }

    /// The step script.
    pub fn events_text(&self) -> String {
        let bounds = self.bank.bounds;
        let mut text = String::from("steps\n");
        let _ = writeln!(text, "transfers {}", bounds.transfers);
        let _ = writeln!(text, "snapshots {}", bounds.snapshots);
        let _ = writeln!(text, "cuts {}", bounds.cuts);
        let _ = writeln!(text, "crashes {}", bounds.crashes);
        let _ = writeln!(text, "wipes {}", bounds.wipes);
        let _ = writeln!(text, "rollbacks {}", bounds.rollbacks);
        if let Some(branch) = self.may_crash {
            let _ = writeln!(text, "may-crash {}", self.bank.names[branch]);
        }
        for &(_, action) in &self.steps {
            text.push_str(&self.line(action));
            text.push('\n');
        }
        text
    }

    /// `action` as a script line.
    pub fn line(&self, action: Action) -> String {
        let name = |b: usize| self.bank.names[b].as_str();
        match action {
            Action::Deliver { from, to } => format!("deliver {} {}", name(from), name(to)),
            Action::Connect { dialler, peer } => {
                format!("connect {} {}", name(dialler), name(peer))
            }
            Action::Cut { a, b } => format!("cut {} {}", name(a), name(b)),
            Action::Crash(b) => format!("crash {}", name(b)),
            Action::Restart(b) => format!("restart {}", name(b)),
            Action::Wipe(b) => format!("wipe {}", name(b)),
            Action::Fire { branch, timer } => {
                let what = match timer {
                    Timer::AckFlush => "ack".to_string(),
                    Timer::Grace(channel) => {
                        format!("grace {}", name(self.bank.peer(branch, channel)))
                    }
                    Timer::Retrieve { id, token } => format!("deadline {id} {token}"),
                    Timer::RecordExpiry(id) => format!("expiry {id}"),
                };
                format!("fire {} {what}", name(branch))
            }
            Action::Commit(b) => format!("commit {}", name(b)),
            Action::Transfer { from, to } => format!("send {} {} 1", name(from), name(to)),
            Action::Snapshot { initiator } => format!("snapshot {}", name(initiator)),
            Action::Retrieve { branch, id } => format!("retrieve {} {id}", name(branch)),
            Action::RollbackPrepare(b) => format!("rollback-prepare {}", name(b)),
            Action::RollbackCommit(b) => format!("rollback-commit {}", name(b)),
        }
    }

    /// Reads a scenario: `topology_text` (the simulator's topology format) and `events_text`
    /// (a step script); the file names locate errors.
    pub fn parse(
        topology_file: &str,
        topology_text: &str,
        events_file: &str,
        events_text: &str,
    ) -> Result<Self, SimError> {
        let topology = Topology::parse(topology_file, topology_text)?;
        let n = topology.names.len();
        let in_file = |reason: String| SimError::at(topology_file, 0, reason);
        if !(2..=4).contains(&n) {
            return Err(in_file(format!(
                "a step script runs on 2 to 4 branches, not {n}"
            )));
        }
        let balance = topology.balances[0];
        if topology.balances.iter().any(|&b| b != balance) {
            return Err(in_file(
                "a step script needs every branch to start with the same balance".into(),
            ));
        }
        let links: BTreeSet<_> = topology.links.iter().copied().collect();
        if let Some((a, b)) = (0..n)
            .flat_map(|a| (0..n).filter(move |&b| b != a).map(move |b| (a, b)))
            .find(|link| !links.contains(link))
        {
            return Err(in_file(format!(
                "a step script needs a link each way between every pair: {} -> {} is missing",
                topology.names[a], topology.names[b]
            )));
        }
        let mut bounds = Bounds {
            branches: n,
            balance,
            transfers: 0,
            snapshots: 0,
            cuts: 0,
            crashes: 0,
            wipes: 0,
            rollbacks: 0,
        };
        let mut may_crash = None;
        let mut steps = Vec::new();
        let mut seen_header = false;
        for (index, raw) in events_text.lines().enumerate() {
            let number = index + 1;
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let error = |reason: String| SimError::at(events_file, number, reason);
            let branch = |name: &str| {
                topology
                    .index(name)
                    .ok_or_else(|| error(format!("unknown branch {name:?}")))
            };
            let count = |value: &str| {
                value
                    .parse::<u8>()
                    .map_err(|_| error(format!("{value:?} is not a count (0 to 255)")))
            };
            let id = |value: &str| {
                value
                    .parse::<SnapshotId>()
                    .map_err(|_| error(format!("{value:?} is not a snapshot id")))
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !seen_header {
                if fields != ["steps"] {
                    return Err(error("a step script starts with the line `steps`".into()));
                }
                seen_header = true;
                continue;
            }
            let setting = matches!(
                fields[0],
                "transfers"
                    | "snapshots"
                    | "cuts"
                    | "crashes"
                    | "wipes"
                    | "rollbacks"
                    | "may-crash"
            );
            if setting && !steps.is_empty() {
                return Err(error(format!(
                    "`{}` is a setting: it must come before the first step",
                    fields[0]
                )));
            }
            let action = match fields[..] {
                [
                    budget @ ("transfers" | "snapshots" | "cuts" | "crashes" | "wipes"
                    | "rollbacks"),
                    k,
                ] => {
                    let field = match budget {
                        "transfers" => &mut bounds.transfers,
                        "snapshots" => &mut bounds.snapshots,
                        "cuts" => &mut bounds.cuts,
                        "crashes" => &mut bounds.crashes,
                        "rollbacks" => &mut bounds.rollbacks,
                        _ => &mut bounds.wipes,
                    };
                    *field = count(k)?;
                    continue;
                }
                ["may-crash", b] => {
                    may_crash = Some(branch(b)?);
                    continue;
                }
                ["deliver", a, b] => Action::Deliver {
                    from: branch(a)?,
                    to: branch(b)?,
                },
                ["connect", a, b] => Action::Connect {
                    dialler: branch(a)?,
                    peer: branch(b)?,
                },
                ["cut", a, b] => Action::Cut {
                    a: branch(a)?.min(branch(b)?),
                    b: branch(a)?.max(branch(b)?),
                },
                ["crash", b] => Action::Crash(branch(b)?),
                ["restart", b] => Action::Restart(branch(b)?),
                ["wipe", b] => Action::Wipe(branch(b)?),
                ["commit", b] => Action::Commit(branch(b)?),
                ["rollback-prepare", b] => Action::RollbackPrepare(branch(b)?),
                ["rollback-commit", b] => Action::RollbackCommit(branch(b)?),
                ["send", a, b, "1"] => Action::Transfer {
                    from: branch(a)?,
                    to: branch(b)?,
                },
                ["send", _, _, amount] => {
                    return Err(error(format!(
                        "the model sends amounts of 1, not {amount:?}"
                    )));
                }
                ["snapshot", b] => Action::Snapshot {
                    initiator: branch(b)?,
                },
                ["retrieve", b, i] => Action::Retrieve {
                    branch: branch(b)?,
                    id: id(i)?,
                },
                ["fire", b, ref timer @ ..] => {
                    let at = branch(b)?;
                    let timer = match timer {
                        ["ack"] => Timer::AckFlush,
                        ["grace", p] => {
                            let peer = branch(p)?;
                            if peer == at {
                                return Err(error(format!("{p} is not a peer of itself")));
                            }
                            Timer::Grace(if peer < at { peer } else { peer - 1 })
                        }
                        ["deadline", i, token] => Timer::Retrieve {
                            id: id(i)?,
                            token: token
                                .parse()
                                .map_err(|_| error(format!("{token:?} is not a token")))?,
                        },
                        ["expiry", i] => Timer::RecordExpiry(id(i)?),
                        _ => {
                            return Err(error(format!(
                                "unknown timer in `{line}`: ack, grace <peer>, deadline <id> <token>, expiry <id>"
                            )));
                        }
                    };
                    Action::Fire { branch: at, timer }
                }
                _ => return Err(error(format!("unknown step `{line}`"))),
            };
            steps.push((number, action));
        }
        if !seen_header {
            return Err(SimError::at(
                events_file,
                0,
                "empty step script: it starts with the line `steps`".into(),
            ));
        }
        if may_crash.is_some() != (bounds.crashes > 0) {
            return Err(SimError::at(
                events_file,
                0,
                "`may-crash <branch>` is given exactly when `crashes` is more than 0".into(),
            ));
        }
        let mut bank = Bank::new(bounds);
        bank.names = topology.names;
        bank.reduce = false;
        Ok(Self {
            bank,
            may_crash,
            steps,
        })
    }

    /// Replays the steps from the bank's initial state, checking every property after every
    /// step. A step that cannot happen in the state it comes to is an error naming its line.
    pub fn replay(&self, file: &str) -> Result<Replay, SimError> {
        let bank = &self.bank;
        let mut state = bank
            .init_states()
            .into_iter()
            .find(|s| s.may_crash == self.may_crash)
            .ok_or_else(|| SimError::at(file, 0, "no initial state for these settings".into()))?;
        let properties = bank.properties();
        let mut held = vec![false; properties.len()];
        let mut failed_at: Vec<Option<usize>> = vec![None; properties.len()];
        let mut drawing = Drawing::default();
        let mut replay = Replay::default();
        let judge = |state: &BankState,
                     step: usize,
                     held: &mut Vec<bool>,
                     failed_at: &mut Vec<Option<usize>>| {
            for (index, property) in properties.iter().enumerate() {
                let holds = (property.condition)(bank, state);
                if holds {
                    held[index] = true;
                }
                if property.expectation == Expectation::Always
                    && !holds
                    && failed_at[index].is_none()
                {
                    failed_at[index] = Some(step);
                }
            }
        };
        judge(&state, 0, &mut held, &mut failed_at);
        for (step, &(number, action)) in self.steps.iter().enumerate() {
            let step = step + 1;
            let line = self.line(action);
            let mut enabled = Vec::new();
            bank.actions(&state, &mut enabled);
            let next = enabled
                .contains(&action)
                .then(|| bank.next_state(&state, action))
                .flatten();
            let Some(next) = next else {
                let could: Vec<String> = enabled.iter().map(|&a| self.line(a)).collect();
                return Err(SimError::at(
                    file,
                    number,
                    format!(
                        "step {step}, `{line}`, cannot happen here; what can: {}",
                        if could.is_empty() {
                            "nothing".to_string()
                        } else {
                            could.join(", ")
                        }
                    ),
                ));
            };
            let did = drawing.step(bank, &state, action, &next, step as u64);
            replay.lines.push(if did.is_empty() {
                format!("step {step}: {line}")
            } else {
                format!("step {step}: {line}: {}", did.join("; "))
            });
            state = next;
            judge(&state, step, &mut held, &mut failed_at);
        }
        let last = self.steps.len();
        let mut enabled = Vec::new();
        bank.actions(&state, &mut enabled);
        let ended = enabled.is_empty();
        for (index, property) in properties.iter().enumerate() {
            let verdict = match property.expectation {
                Expectation::Always => match failed_at[index] {
                    Some(step) => {
                        replay.failures.push((property.name, step));
                        format!("FAILED at step {step}")
                    }
                    None => "holds on every step".to_string(),
                },
                Expectation::Sometimes if held[index] => "happens".to_string(),
                Expectation::Sometimes => "does not happen on this run".to_string(),
                Expectation::Eventually if held[index] => "holds by the end".to_string(),
                Expectation::Eventually if ended => {
                    replay.failures.push((property.name, last));
                    "FAILED: the run ends without it".to_string()
                }
                Expectation::Eventually => "not yet (the run stops before its end)".to_string(),
            };
            let kind = format!("{:?}", property.expectation).to_lowercase();
            replay
                .lines
                .push(format!("{kind:>10} {}: {verdict}", property.name));
        }
        replay.timeline = drawing.timeline;
        replay.snapshots = state.snapshots.len();
        Ok(replay)
    }
}

/// Turns each step's change of state into timeline events.
#[derive(Debug, Default)]
struct Drawing {
    timeline: Vec<TimelineEvent>,
    /// Per `(branch, snapshot)` recorded: the transfers found in transit so far, `(src, seq)`.
    recorded: BTreeMap<(usize, SnapshotId), Vec<(usize, u64)>>,
}

impl Drawing {
    /// Notes what `action` did from `before` to `after` at `tick`, in causal order (what
    /// arrived, the records it began, what they found in transit, what was sent, what was
    /// lost), as the diagram reads it; returns a short account of the step.
    fn step(
        &mut self,
        bank: &Bank,
        before: &BankState,
        action: Action,
        after: &BankState,
        tick: u64,
    ) -> Vec<String> {
        let name = |b: usize| bank.names[b].as_str();
        let mut account = Vec::new();
        let (mut sends, mut cuts, mut sent, mut lost) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        match action {
            Action::Crash(branch) | Action::Wipe(branch) => {
                self.timeline.push(TimelineEvent::Crash { tick, branch });
                self.undo_lost(bank, after, branch);
                if matches!(action, Action::Wipe(_)) {
                    self.timeline.push(TimelineEvent::Restart { tick, branch });
                    account.push("back as a new incarnation holding nothing".to_string());
                }
            }
            Action::Restart(branch) => {
                self.timeline.push(TimelineEvent::Restart { tick, branch });
            }
            Action::Deliver { from, to } => {
                let pair = bank.pair(from, to);
                let head = before.connections[pair].as_ref().and_then(|c| {
                    if from < to {
                        c.up.front()
                    } else {
                        c.down.front()
                    }
                });
                if let Some(head) = head {
                    if matches!(head, PeerMsg::Channel { .. }) {
                        self.timeline.push(TimelineEvent::Deliver {
                            tick,
                            src: from,
                            dst: to,
                        });
                    }
                    account.push(format!("{} arrives", describe(head)));
                }
            }
            _ => {}
        }
        for (pair, &(a, b)) in bank.pairs.iter().enumerate() {
            let (old, new) = (&before.connections[pair], &after.connections[pair]);
            let same = matches!((old, new), (Some(o), Some(n)) if o.id == n.id);
            for (src, dst) in [(a, b), (b, a)] {
                let queue = |state: &BankState| {
                    state.connections[pair].as_ref().map(|c| {
                        if src < dst {
                            c.up.clone()
                        } else {
                            c.down.clone()
                        }
                    })
                };
                let Some(new_queue) = queue(after) else {
                    continue;
                };
                let delivered = action == Action::Deliver { from: src, to: dst };
                let kept = match (same, queue(before)) {
                    (true, Some(old)) => old.len() - usize::from(delivered),
                    _ => 0,
                };
                for msg in new_queue.iter().skip(kept) {
                    if let PeerMsg::Channel { frame, .. } = msg {
                        sends.push(TimelineEvent::Send {
                            tick,
                            src,
                            dst,
                            kind: MessageKind::from(*frame),
                            due: tick + 1,
                        });
                    }
                    sent.push(format!(
                        "{} sends {} to {}",
                        name(src),
                        describe(msg),
                        name(dst)
                    ));
                }
            }
            if old.is_some() && !same {
                // What was in flight is lost, by a cut or with a crashed end.
                cuts.push(TimelineEvent::Cut {
                    tick,
                    src: a,
                    dst: b,
                });
                cuts.push(TimelineEvent::Cut {
                    tick,
                    src: b,
                    dst: a,
                });
                lost.push(format!("{}-{} connection lost", name(a), name(b)));
            }
        }
        if let Action::Transfer { from, to } = action {
            let left = sends.iter().any(|e| {
                matches!(e, TimelineEvent::Send { src, kind: MessageKind::Transfer { .. }, .. } if *src == from)
            });
            if !left && let Some(node) = &after.nodes[from] {
                let seq = node.core().state().sent[bank.channel(from, to)].count;
                self.timeline.push(TimelineEvent::Debit {
                    tick,
                    src: from,
                    dst: to,
                    seq,
                });
                account.push(format!("transfer #{seq} debited, waiting for its commit"));
            }
        }
        for (branch, node) in after.nodes.iter().enumerate() {
            let Some(node) = node else {
                continue;
            };
            for snapshot in &after.snapshots {
                // A record answered at once has already moved to the node's answers.
                let record = node.record(snapshot.id).or_else(|| {
                    node.kept_answer(snapshot.id)
                        .and_then(|answer| answer.record.as_ref())
                });
                let Some(record) = record else {
                    continue;
                };
                let key = (branch, snapshot.id);
                if let std::collections::btree_map::Entry::Vacant(entry) = self.recorded.entry(key)
                {
                    entry.insert(Vec::new());
                    if !matches!(action, Action::Restart(_)) {
                        self.timeline.push(TimelineEvent::Record {
                            tick,
                            branch,
                            snapshot: snapshot.id,
                        });
                        account.push(format!(
                            "{} records for snapshot {}",
                            name(branch),
                            snapshot.id
                        ));
                    }
                }
                let seen = self.recorded.entry(key).or_default();
                for transit in record.in_transit().iter().skip(seen.len()) {
                    let src = bank.peer(branch, transit.from);
                    seen.push((src, transit.seq));
                    self.timeline.push(TimelineEvent::InTransit {
                        snapshot: snapshot.id,
                        src,
                        dst: branch,
                        seq: transit.seq,
                    });
                }
            }
        }
        self.timeline.append(&mut sends);
        self.timeline.append(&mut cuts);
        account.append(&mut sent);
        account.append(&mut lost);
        for (old, new) in before.snapshots.iter().zip(&after.snapshots) {
            for (branch, answer) in new.answers.iter().enumerate() {
                if old.answers[branch].is_none()
                    && let Some(answer) = answer
                {
                    account.push(format!(
                        "{} answers for snapshot {} ({:?})",
                        name(branch),
                        new.id,
                        answer.status
                    ));
                }
            }
        }
        account
    }

    /// After `branch` went down: what its store would restart it with is what it keeps; the
    /// records and in-transit notes beyond that are undone.
    fn undo_lost(&mut self, bank: &Bank, after: &BankState, branch: usize) {
        let restored = bank.node_or_restored(after, branch);
        let ids: Vec<SnapshotId> = self
            .recorded
            .keys()
            .filter(|(b, _)| *b == branch)
            .map(|&(_, id)| id)
            .collect();
        for id in ids {
            let kept = restored.as_ref().and_then(|node| {
                node.record(id).or_else(|| {
                    node.kept_answer(id)
                        .and_then(|answer| answer.record.as_ref())
                })
            });
            let keep = kept.map_or(0, |r| r.in_transit().len());
            let Some(seen) = self.recorded.get_mut(&(branch, id)) else {
                continue;
            };
            for &(src, seq) in seen.iter().skip(keep) {
                self.timeline.push(TimelineEvent::InTransitUndone {
                    snapshot: id,
                    src,
                    dst: branch,
                    seq,
                });
            }
            seen.truncate(keep);
            if kept.is_none() {
                self.timeline.push(TimelineEvent::Unrecord {
                    snapshot: id,
                    branch,
                });
                self.recorded.remove(&(branch, id));
            }
        }
    }
}

/// A message, as a step's account names it.
fn describe(msg: &PeerMsg) -> String {
    match msg {
        PeerMsg::Channel {
            frame: Frame::Transfer { seq, amount },
            ..
        } => format!("transfer #{seq} ({amount})"),
        PeerMsg::Channel {
            frame: Frame::Marker { id },
            ..
        } => format!("marker {id}"),
        PeerMsg::Ack { received } => format!("ack of {received}"),
        PeerMsg::Resume { received, .. } => format!("resume from {received}"),
        PeerMsg::Refusal { reason, .. } => format!("refusal ({reason})"),
        PeerMsg::Unexpected(kind) => kind.to_string(),
    }
}
