//! The checker at bounds small enough for every CI run, and proof that it catches bugs: each
//! seeded mutation of the node must make it fail, with a counterexample.

use std::time::Instant;

use stateright::{Checker, HasDiscoveries, Model};

use super::*;
use crate::core::node::Mutation;

fn bounds(cuts: u8, crashes: u8, wipes: u8, snapshots: u8) -> Bounds {
    Bounds {
        branches: 2,
        balance: 2,
        transfers: 1,
        snapshots,
        cuts,
        crashes,
        wipes,
        rollbacks: 0,
    }
}

/// Checks `bank` to the end; panics with the report if a property fails.
fn passes(bank: Bank) {
    let started = Instant::now();
    let checker = bank.checker().threads(2).spawn_bfs().join();
    let outcome = report(&checker, started.elapsed());
    assert!(!outcome.failed, "{}", outcome.text);
    assert!(checker.unique_state_count() > 100, "{}", outcome.text);
}

/// Checks `bank` until the first failure; returns the property that failed and its path.
fn first_failure(bank: Bank) -> Option<(&'static str, stateright::Path<BankState, Action>)> {
    let checker = bank
        .checker()
        .threads(2)
        .finish_when(HasDiscoveries::AnyFailures)
        .spawn_bfs()
        .join();
    checker
        .model()
        .properties()
        .into_iter()
        .filter(|p| p.expectation.discovery_is_failure())
        .find_map(|p| checker.discovery(p.name).map(|path| (p.name, path)))
}

/// Checks `bank` with `mutation` seeded until the first failure; returns the name of the
/// property that failed and the counterexample's steps, after replaying the counterexample as
/// a simulator scenario (written out and read back) and drawing it.
fn caught(mut bank: Bank, mutation: Mutation) -> (&'static str, Vec<Action>) {
    bank.mutation = mutation;
    let (property, path) =
        first_failure(bank.clone()).unwrap_or_else(|| panic!("{mutation:?} was not caught"));
    let model = &bank;
    let init = path.clone().into_states().swap_remove(0);
    let actions: Vec<Action> = scenario::Scenario::from_path(model, &init, &path.into_actions())
        .shortened(property)
        .steps
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    replays_as_scenario(model, &init, &actions, property);
    (property, actions)
}

/// The counterexample `actions` from `init`, written as a step script and read back, replays
/// on the simulator's step runner with `property` failing at its last step (the mutation is
/// seeded there too), and draws as a space-time diagram with its messages.
fn replays_as_scenario(bank: &Bank, init: &BankState, actions: &[Action], property: &str) {
    let written = scenario::Scenario::from_path(bank, init, actions);
    let (topology, events) = (written.topology_text(), written.events_text());
    assert!(scenario::is_step_script(&events), "{events}");
    let mut read = scenario::Scenario::parse("ce.topology", &topology, "ce.events", &events)
        .unwrap_or_else(|err| panic!("{err}\n{topology}{events}"));
    assert_eq!(
        read.steps.iter().map(|&(_, a)| a).collect::<Vec<_>>(),
        actions,
        "{events}"
    );
    read.bank.mutation = bank.mutation;
    let replay = read
        .replay("ce.events")
        .unwrap_or_else(|err| panic!("{err}\n{events}"));
    assert!(
        replay.failures.contains(&(property, actions.len())),
        "{:?}\n{}",
        replay.failures,
        replay.lines.join("\n")
    );
    // Without the mutation the same steps break nothing (or cannot all happen).
    read.bank.mutation = Mutation::default();
    if let Ok(clean) = read.replay("ce.events") {
        assert!(
            clean.failures.iter().all(|&(p, _)| p != property),
            "{property} fails without the mutation too:\n{}",
            clean.lines.join("\n")
        );
    }
    let svg = crate::sim::svg::draw(&read.bank.names, &replay.timeline, replay.snapshots, "ce");
    assert!(svg.starts_with("<svg") || svg.contains("<svg"), "{svg}");
    // The channel frames the path sends (transfers, markers) are drawn.
    let sends_frames = actions
        .iter()
        .any(|a| matches!(a, Action::Transfer { .. } | Action::Snapshot { .. }));
    assert!(
        !sends_frames
            || replay
                .timeline
                .iter()
                .any(|e| matches!(e, crate::sim::TimelineEvent::Send { .. })),
        "{:?}",
        replay.timeline
    );
}

/// Which properties `bank` finds a discovery for (a counterexample or an example), and how
/// many states it explored.
fn discoveries(bank: Bank) -> (Vec<&'static str>, usize) {
    let checker = bank.checker().threads(2).spawn_bfs().join();
    let found = checker
        .model()
        .properties()
        .into_iter()
        .filter(|p| checker.discovery(p.name).is_some())
        .map(|p| p.name)
        .collect();
    (found, checker.unique_state_count())
}

/// `bank` with and without the calm-bank reduction finds the same discoveries and reaches
/// exactly the same terminal states (what a persistent-set reduction must keep), and the
/// reduction explores fewer states.
fn reduction_agrees(mut bank: Bank) {
    bank.reduce = false;
    let (full, full_states) = discoveries(bank.clone());
    let full_ends = terminal_states(&bank);
    bank.reduce = true;
    let reduced_ends = terminal_states(&bank);
    let (reduced, reduced_states) = discoveries(bank);
    assert_eq!(reduced, full);
    assert_eq!(
        reduced_ends.len(),
        full_ends.len(),
        "terminal states: {} reduced, {} in full",
        reduced_ends.len(),
        full_ends.len()
    );
    assert_eq!(reduced_ends, full_ends);
    assert!(
        reduced_states < full_states,
        "{reduced_states} states reduced, {full_states} in full"
    );
}

#[test]
fn the_calm_bank_reduction_finds_what_the_full_search_finds_and_ends_where_it_ends() {
    reduction_agrees(Bank::new(bounds(1, 0, 0, 1)));
    reduction_agrees(Bank::new(bounds(0, 1, 0, 1)));
    let mut three = bounds(0, 0, 0, 1);
    three.branches = 3;
    three.transfers = 0;
    reduction_agrees(Bank::new(three));
}

#[test]
fn the_calm_bank_reduction_still_catches_every_seeded_bug() {
    for (bounds, mutation) in [
        (bounds(1, 0, 0, 1), Mutation::ResendSkipsFirst),
        (bounds(0, 0, 0, 1), Mutation::TransitAfterMarker),
        (bounds(0, 1, 0, 0), Mutation::AckBeforeDurable),
        (bounds(0, 0, 1, 0), Mutation::AcceptNewIncarnation),
    ] {
        let mut full = Bank::new(bounds);
        full.reduce = false;
        full.mutation = mutation;
        let mut reduced = full.clone();
        reduced.reduce = true;
        assert!(
            first_failure(full).is_some(),
            "{mutation:?} not caught by the full search"
        );
        assert!(
            first_failure(reduced).is_some(),
            "{mutation:?} not caught with the reduction"
        );
    }
}

#[test]
fn every_property_holds_for_two_branches_with_a_transfer_each_a_snapshot_and_a_cut() {
    passes(Bank::new(bounds(1, 0, 0, 1)));
}

#[test]
fn every_property_holds_for_two_durable_branches_one_of_which_crashes_and_restarts() {
    passes(Bank::new(bounds(0, 1, 0, 1)));
}

/// Checks `bank` (with a rollback in its bounds) to the end; panics with the report if a
/// property fails, or if no snapshot completes after the rollback.
fn passes_with_a_rollback(bank: Bank) {
    let checker = bank.checker().threads(2).spawn_bfs().join();
    let outcome = report(&checker, std::time::Duration::ZERO);
    assert!(!outcome.failed, "{}", outcome.text);
    assert!(
        checker
            .discovery("a snapshot completes after a rollback")
            .is_some(),
        "{}",
        outcome.text
    );
}

#[test]
fn every_property_holds_across_a_rollback_of_the_whole_bank_with_a_cut() {
    passes_with_a_rollback(Bank::new(Bounds {
        rollbacks: 1,
        ..bounds(1, 0, 0, 1)
    }));
}

#[test]
fn every_property_holds_across_a_rollback_of_a_durable_bank_with_a_crash() {
    passes_with_a_rollback(Bank::new(Bounds {
        rollbacks: 1,
        ..bounds(0, 1, 0, 1)
    }));
}

#[test]
fn a_durable_branch_back_in_the_epoch_before_joining_a_peer_of_the_new_one_is_caught() {
    // Only a durable branch that dies between a rollback's two phases comes back in the epoch
    // before while its peers are in the new one.
    let bank = Bank::new(Bounds {
        rollbacks: 1,
        ..bounds(0, 1, 0, 0)
    });
    let (property, path) = caught(bank, Mutation::IgnoreEpoch);
    assert!(
        path.iter().any(|a| matches!(a, Action::RollbackCommit(_))),
        "{path:?}"
    );
    assert_eq!(property, "no channel joins two epochs", "{path:?}");
}

#[test]
fn every_property_holds_when_a_branch_restarts_without_its_state() {
    passes(Bank::new(bounds(0, 0, 1, 0)));
}

#[test]
fn a_resend_that_skips_the_first_unacknowledged_frame_is_caught() {
    // Frames queued before a connection's first Resume are resent by it too, so no cut is
    // needed: the frame skipped leaves a gap the receiver refuses.
    let (property, path) = caught(Bank::new(bounds(1, 0, 0, 1)), Mutation::ResendSkipsFirst);
    assert!(
        path.iter().any(|a| matches!(a, Action::Connect { .. })),
        "{path:?}"
    );
    assert_eq!(property, "no node reports an error", "{path:?}");
}

#[test]
fn a_transfer_recorded_in_transit_after_its_channels_marker_is_caught() {
    let (property, path) = caught(Bank::new(bounds(0, 0, 0, 1)), Mutation::TransitAfterMarker);
    assert!(
        path.iter().any(|a| matches!(a, Action::Snapshot { .. })),
        "{path:?}"
    );
    assert!(
        property == "no snapshot is judged wrong" || property == "every started snapshot concludes",
        "{property}"
    );
}

#[test]
fn an_ack_that_leaves_before_its_commit_is_durable_is_caught() {
    let (property, path) = caught(Bank::new(bounds(0, 1, 0, 0)), Mutation::AckBeforeDurable);
    assert!(
        path.iter().any(|a| matches!(a, Action::Crash(_))),
        "{path:?}"
    );
    assert!(
        property == "money is conserved" || property == "each transfer is delivered once, in order",
        "{property}"
    );
}

#[test]
fn an_incarnation_check_that_accepts_a_restarted_empty_peer_is_caught() {
    let (property, path) = caught(
        Bank::new(bounds(0, 0, 1, 0)),
        Mutation::AcceptNewIncarnation,
    );
    assert!(
        path.iter().any(|a| matches!(a, Action::Wipe(_))),
        "{path:?}"
    );
    assert_eq!(
        property,
        "a branch that lost its state is refused by its peers"
    );
}

/// Every terminal state (no action left) `bank` reaches, explored depth-first without
/// stateright, as fingerprints.
fn terminal_states(bank: &Bank) -> std::collections::BTreeSet<u64> {
    use std::hash::{Hash, Hasher};
    let fingerprint = |state: &BankState| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        state.hash(&mut hasher);
        hasher.finish()
    };
    let mut seen = std::collections::HashSet::new();
    let mut terminals = std::collections::BTreeSet::new();
    let mut stack = bank.init_states();
    let mut actions = Vec::new();
    while let Some(state) = stack.pop() {
        if !seen.insert(fingerprint(&state)) {
            continue;
        }
        actions.clear();
        bank.actions(&state, &mut actions);
        let next: Vec<BankState> = actions
            .iter()
            .filter_map(|&a| bank.next_state(&state, a))
            .collect();
        if next.is_empty() {
            terminals.insert(fingerprint(&state));
        }
        stack.extend(next);
    }
    terminals
}
