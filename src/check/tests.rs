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

/// Checks `bank` with `mutation` seeded until the first failure; returns the name of the
/// property that failed and the counterexample's steps.
fn caught(mut bank: Bank, mutation: Mutation) -> (&'static str, Vec<Action>) {
    bank.mutation = mutation;
    let checker = bank
        .checker()
        .threads(2)
        .finish_when(HasDiscoveries::AnyFailures)
        .spawn_bfs()
        .join();
    let model = checker.model();
    let failed = model
        .properties()
        .into_iter()
        .filter(|p| p.expectation.discovery_is_failure())
        .find_map(|p| {
            checker
                .discovery(p.name)
                .map(|path| (p.name, path.into_actions()))
        });
    failed.unwrap_or_else(|| panic!("{mutation:?} was not caught"))
}

#[test]
fn every_property_holds_for_two_branches_with_a_transfer_each_a_snapshot_and_a_cut() {
    passes(Bank::new(bounds(1, 0, 0, 1)));
}

#[test]
fn every_property_holds_for_two_durable_branches_one_of_which_crashes_and_restarts() {
    passes(Bank::new(bounds(0, 1, 0, 1)));
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
