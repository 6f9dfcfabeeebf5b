//! The properties checked on every reachable state of a [`Bank`], each named as the checker
//! reports it:
//! - *always* `money is conserved`: the balances plus the money in every channel's
//!   unacknowledged, undelivered frames equal the total, counting a frame held for resend once
//!   (a crashed branch counts as its store would restart it);
//! - *always* `each transfer is delivered once, in order`: on each directed channel the
//!   receiver's counters are those of the sender's first k transfers, numbered 1..k (the digest
//!   chained over every number and amount tells a gap or a repeat);
//! - *always* `no node reports an error`: no protocol error, no halt, no failed restart, and no
//!   balance above the total (an underflow would show as one);
//! - *always* `a branch that lost its state is refused by its peers`: no peer that knew a wiped
//!   branch's old incarnation takes the new one for it (after a wipe, the other *always* properties are
//!   not checked: the wiped branch's money is gone by definition);
//! - *always* `no snapshot is judged wrong`: every snapshot all of whose records are complete
//!   is a proven consistent cut ([`crate::core::Audit`]) that sums to the total;
//! - *always* `a rollback neither creates nor destroys money`: the balances a rollback gives
//!   sum to the total, and once it is over the bank holds the total again (while one is under
//!   way, `money is conserved` and `each transfer is delivered once, in order` wait for it:
//!   the old epoch's money is being replaced);
//! - *always* `no channel joins two epochs`: every connection both ends use joins nodes of one
//!   bank epoch, and outside a rollback every node is in the bank's epoch;
//! - *sometimes* `a snapshot finds money in transit`, `a snapshot completes across a cut`,
//!   `a snapshot completes after a crash and restart`, `a snapshot completes after a
//!   rollback`: the model is not vacuous;
//! - *eventually* `every started snapshot concludes`: every branch answers for every snapshot
//!   (complete, cut short, or not finished when the deadline passed). Fairness: see the module
//!   doc of [`super`].

use stateright::Property;

use super::{Bank, BankState, SnapshotState, complete, concluded};
use crate::core::ChannelCount;
use crate::core::Frame;
use crate::core::audit::{Audit, ChannelEvidence, CutEvidence};
use crate::core::node::BranchNode;

/// Every property, in the order the checker prints them.
pub fn all() -> Vec<Property<Bank>> {
    vec![
        Property::always("money is conserved", money_is_conserved),
        Property::always("each transfer is delivered once, in order", exactly_once),
        Property::always("no node reports an error", no_errors),
        Property::always("no snapshot is judged wrong", no_snapshot_wrong),
        Property::always(
            "a branch that lost its state is refused by its peers",
            wiped_refused,
        ),
        Property::always(
            "a rollback neither creates nor destroys money",
            rollback_keeps_money,
        ),
        Property::always("no channel joins two epochs", one_epoch_per_channel),
        Property::sometimes("a snapshot finds money in transit", money_in_transit),
        Property::sometimes("a snapshot completes across a cut", ok_across_cut),
        Property::sometimes(
            "a snapshot completes after a crash and restart",
            ok_after_restart,
        ),
        Property::sometimes("a snapshot completes after a rollback", ok_after_rollback),
        Property::eventually("every started snapshot concludes", all_concluded),
    ]
}

/// Every branch's node, a crashed one as its store would restart it.
fn nodes<'s>(bank: &Bank, state: &'s BankState) -> Option<Vec<std::borrow::Cow<'s, BranchNode>>> {
    (0..bank.bounds.branches)
        .map(|b| bank.node_or_restored(state, b))
        .collect()
}

/// A wipe destroys the money of the branch wiped, by definition: after one, only
/// [`wiped_refused`] is checked.
fn wiped(state: &BankState) -> bool {
    state.wiped.iter().any(Option::is_some)
}

fn wiped_refused(bank: &Bank, state: &BankState) -> bool {
    state.wiped.iter().enumerate().all(|(w, wiped)| {
        wiped.as_ref().is_none_or(|(incarnation, knew)| {
            knew.iter().all(|&p| {
                state.nodes[p].as_ref().is_none_or(|node| {
                    node.peer_incarnation(bank.channel(p, w)) != Some(*incarnation)
                })
            })
        })
    })
}

/// A rollback is under way: the old epoch's nodes are being replaced.
fn rolling_back(state: &BankState) -> bool {
    state.rollback.is_some()
}

fn rollback_keeps_money(bank: &Bank, state: &BankState) -> bool {
    match &state.rollback {
        Some(rollback) => rollback.balances.iter().sum::<u64>() == bank.total(),
        None => state.epoch == 0 || money_is_conserved(bank, state),
    }
}

fn one_epoch_per_channel(bank: &Bank, state: &BankState) -> bool {
    let epoch = |b: usize| state.nodes[b].as_ref().map(|node| node.config().epoch);
    let joined = bank.pairs.iter().enumerate().all(|(pair, &(a, b))| {
        let Some(conn) = &state.connections[pair] else {
            return true;
        };
        // Joined: each end has taken the connection for its channels and resumed them on it.
        let uses = |x: usize, y: usize| {
            state.nodes[x].as_ref().is_some_and(|node| {
                let channel = bank.channel(x, y);
                node.link_of(channel) == Some(conn.id) && node.is_live(channel)
            })
        };
        !(uses(a, b) && uses(b, a)) || epoch(a) == epoch(b)
    });
    joined
        && (rolling_back(state)
            || (0..bank.bounds.branches).all(|b| epoch(b).is_none_or(|e| e == state.epoch)))
}

fn ok_after_rollback(bank: &Bank, state: &BankState) -> bool {
    state
        .snapshots
        .iter()
        .any(|s| s.after_rollback && is_ok(bank, s))
}

fn money_is_conserved(bank: &Bank, state: &BankState) -> bool {
    if wiped(state) || rolling_back(state) {
        return true;
    }
    let Some(nodes) = nodes(bank, state) else {
        return false;
    };
    let mut total: u64 = nodes.iter().map(|node| node.balance()).sum();
    for (a, sender) in nodes.iter().enumerate() {
        for b in bank.peers_of(a) {
            let delivered = nodes[b].delivered_from(bank.channel(b, a));
            total += sender
                .unacked_frames_to(bank.channel(a, b))
                .filter(|&(pos, _)| pos > delivered)
                .map(|(_, frame)| match frame {
                    Frame::Transfer { amount, .. } => amount,
                    Frame::Marker { .. } => 0,
                })
                .sum::<u64>();
        }
    }
    total == bank.total()
}

fn exactly_once(bank: &Bank, state: &BankState) -> bool {
    if wiped(state) || rolling_back(state) {
        return true;
    }
    let Some(nodes) = nodes(bank, state) else {
        return false;
    };
    let cores: Vec<_> = nodes.iter().map(|node| node.core().state()).collect();
    for (a, sender) in cores.iter().enumerate() {
        for b in bank.peers_of(a) {
            let sent = sender.sent[bank.channel(a, b)];
            let received = cores[b].received[bank.channel(b, a)];
            // Every transfer in the model is of 1: the first k transfers' counters.
            let expected =
                (0..received.count).fold(ChannelCount::default(), |count, _| count.after(1));
            if received.count > sent.count || received != expected {
                return false;
            }
        }
    }
    true
}

fn no_errors(bank: &Bank, state: &BankState) -> bool {
    wiped(state)
        || state.errors.is_empty()
            && state
                .nodes
                .iter()
                .flatten()
                .all(|node| node.balance() <= bank.total())
}

/// The consistent-cut evidence of `snapshot`, once every record is in.
pub fn evidence(bank: &Bank, snapshot: &SnapshotState) -> Option<CutEvidence> {
    let records: Vec<_> = snapshot
        .answers
        .iter()
        .map(|answer| answer.as_ref().and_then(|a| a.record.as_ref()))
        .collect::<Option<_>>()?;
    let mut channels = Vec::new();
    for (to, receiver) in records.iter().enumerate() {
        for from in bank.peers_of(to) {
            channels.push(ChannelEvidence::between(
                (from, records[from], bank.channel(from, to)),
                (to, receiver, bank.channel(to, from)),
            ));
        }
    }
    Some(CutEvidence {
        names: bank.names.clone(),
        balances: records.iter().map(|r| r.balance()).collect(),
        channels,
        expected_total: bank.total(),
    })
}

/// Whether `snapshot` is complete and proven: what the controller reports as ok.
pub fn is_ok(bank: &Bank, snapshot: &SnapshotState) -> bool {
    complete(snapshot)
        && evidence(bank, snapshot).is_some_and(|e| {
            let audit = Audit::check(&e);
            audit.is_proven() && audit.sums_to_total()
        })
}

fn no_snapshot_wrong(bank: &Bank, state: &BankState) -> bool {
    wiped(state)
        || state
            .snapshots
            .iter()
            .filter(|s| complete(s))
            .all(|s| is_ok(bank, s))
}

fn money_in_transit(bank: &Bank, state: &BankState) -> bool {
    state.snapshots.iter().any(|s| {
        is_ok(bank, s)
            && s.answers
                .iter()
                .flatten()
                .filter_map(|a| a.record.as_ref())
                .any(|r| r.channel_state().iter().any(|&m| m > 0))
    })
}

fn ok_across_cut(bank: &Bank, state: &BankState) -> bool {
    state
        .snapshots
        .iter()
        .any(|s| s.across_fault && is_ok(bank, s))
}

fn ok_after_restart(bank: &Bank, state: &BankState) -> bool {
    state
        .snapshots
        .iter()
        .any(|s| s.after_restart && is_ok(bank, s))
}

fn all_concluded(_bank: &Bank, state: &BankState) -> bool {
    state.budget.snapshots == 0 && state.snapshots.iter().all(concluded)
}
