//! The report card of a controller (`branch --grade-controller FILE`): the original-schema
//! controller driving snapbank branches passes every rule, and a controller that asks before
//! the record is finished, skips a branch or overlaps its snapshots is caught, each with the
//! rule named, on the card of the branch that saw it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use snapbank::local_bank::LocalBank;
use snapbank::wire::{self, Body, pb};

use super::common::RawController;
use super::original_controller::{self, Pattern};
use super::{BRANCH, ask_for, entries, read_held, v1};

/// The card's rules, in its order.
const RULES: [&str; 6] = [
    "init-split-evenly",
    "init-lists-every-branch",
    "asked-every-snapshot",
    "no-overlap",
    "asked-after-recorded",
    "waited",
];

/// `count` snapbank branches sending fast, each writing its card to `<bank dir>/<name>.<ext>`.
fn graded_bank(count: usize, ext: &str) -> LocalBank {
    let args = ["--max-interval-ms", "2"].map(String::from);
    let own = |dir: &Path, name: &str| {
        let card = dir.join(format!("{name}.{ext}"));
        vec!["--grade-controller".to_string(), card.display().to_string()]
    };
    LocalBank::start_each(BRANCH.as_ref(), count, &args, &own).expect("start the branches")
}

fn card_path(bank: &LocalBank, name: &str, ext: &str) -> PathBuf {
    bank.dir().join(format!("{name}.{ext}"))
}

/// Stops every branch with SIGTERM (the card is written on the way out), checking each exits.
fn terminate_all(bank: &mut LocalBank) {
    for index in 0..bank.entries().len() {
        let status = bank.terminate(index, Duration::from_secs(10));
        assert!(
            status.is_some_and(|status| status.success()),
            "branch {index} did not stop cleanly on SIGTERM: {status:?}"
        );
    }
}

/// Every branch's JSON card, in file order.
fn json_cards(bank: &LocalBank) -> Vec<Value> {
    bank.entries()
        .iter()
        .map(|entry| {
            let path = card_path(bank, &entry.name, "json");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            println!("{text}");
            serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{} is not JSON ({err}): {text}", path.display()))
        })
        .collect()
}

/// `(outcome, evidence)` of `rule` on `card`, having checked that the card lists every rule.
fn rule(card: &Value, name: &str) -> (String, String) {
    let rules = card["rules"].as_array().expect("a list of rules");
    let names: Vec<&str> = rules.iter().filter_map(|r| r["rule"].as_str()).collect();
    assert_eq!(names, RULES, "{card}");
    let found = rules.iter().find(|r| r["rule"] == name).expect("the rule");
    (
        found["outcome"].as_str().unwrap_or_default().to_string(),
        found["evidence"].as_str().unwrap_or_default().to_string(),
    )
}

/// The bank-wide split, from every card: the balances add up to `total` and differ by at
/// most 1, and every card saw the same member list, one card per member.
fn assert_split_evenly(cards: &[Value], total: u64) {
    let balances: Vec<u64> = cards
        .iter()
        .map(|card| card["init"]["balance"].as_u64().expect("a balance"))
        .collect();
    assert_eq!(balances.iter().sum::<u64>(), total, "{balances:?}");
    let spread = balances.iter().max().unwrap() - balances.iter().min().unwrap();
    assert!(spread <= 1, "{balances:?}");
    let members = &cards[0]["init"]["members"];
    assert_eq!(members.as_array().map(Vec::len), Some(cards.len()));
    assert!(cards.iter().all(|card| card["init"]["members"] == *members));
}

fn original_controller_passes_every_rule(pattern: Pattern, ext: &str) {
    let mut bank = graded_bank(3, ext);
    // A second between InitSnapshot and the retrieves, so that every record is finished
    // before it is asked for (loopback records finish within milliseconds).
    let snapshots =
        original_controller::run(&entries(&bank), 4000, pattern, 3, Duration::from_secs(1));
    for snapshot in &snapshots {
        assert_eq!(snapshot.total(), 4000, "snapshot {}", snapshot.id);
    }
    terminate_all(&mut bank);
    let names: Vec<String> = bank.entries().iter().map(|e| e.name.clone()).collect();
    if ext == "json" {
        let cards = json_cards(&bank);
        for card in &cards {
            for name in RULES {
                let (outcome, evidence) = rule(card, name);
                assert_ne!(outcome, "FAIL", "{name}: {evidence}");
            }
            for name in [
                "init-lists-every-branch",
                "asked-every-snapshot",
                "no-overlap",
                "asked-after-recorded",
            ] {
                assert_eq!(rule(card, name).0, "PASS", "{name}: {card}");
            }
            assert_eq!(card["snapshots"]["recorded"], serde_json::json!([1, 2, 3]));
            assert_eq!(card["snapshots"]["retrieved"], serde_json::json!([1, 2, 3]));
            assert_eq!(card["failed"], 0);
        }
        assert_split_evenly(&cards, 4000);
    } else {
        for name in &names {
            let path = card_path(&bank, name, ext);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            println!("{text}");
            let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
            assert_eq!(lines.len(), RULES.len(), "{text}");
            for (line, name) in lines.iter().zip(RULES) {
                let (word, rest) = line.split_once(' ').expect("a verdict and a rule");
                assert!(["PASS", "INFO"].contains(&word), "{line}");
                assert!(rest.starts_with(&format!("{name}: ")), "{line}");
            }
            assert!(
                text.contains("PASS asked-every-snapshot: all 3 snapshots"),
                "{text}"
            );
        }
    }
}

#[test]
fn the_original_controller_per_command_passes_every_controller_rule() {
    original_controller_passes_every_rule(Pattern::PerCommand, "txt");
}

#[test]
fn the_original_controller_persistent_passes_every_controller_rule() {
    original_controller_passes_every_rule(Pattern::Persistent, "json");
}

/// Waits (at most 5 s) until branch `name`'s card shows `what` (`seen` holds of it).
fn wait_for_card(bank: &LocalBank, name: &str, what: &str, seen: impl Fn(&Value) -> bool) {
    let path = card_path(bank, name, "json");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shown = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .is_some_and(|card| seen(&card));
        if shown {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}'s card never showed {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until branch `name`'s card says it was asked for snapshot `id`.
fn wait_until_asked(bank: &LocalBank, name: &str, id: u64) {
    wait_for_card(bank, name, "the retrieve", |card| {
        card["snapshots"]["retrieved"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|i| i.as_u64() == Some(id)))
    });
}

fn start(controller: &mut RawController, id: u32) {
    controller.send(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: id }));
}

fn assert_complete(answer: &pb::return_snapshot::LocalSnapshot, id: u32) {
    assert_eq!(answer.snapshot_id, id);
    assert_eq!(
        answer.status,
        pb::SnapshotStatus::Complete as i32,
        "{answer:?}"
    );
}

#[test]
fn a_bad_controller_is_caught_rule_by_rule() {
    let mut bank = graded_bank(3, "json");
    let addrs: Vec<SocketAddr> = bank.entries().iter().map(|e| e.addr).collect();
    let members = wire::branch_list(bank.entries());
    // One connection per branch, kept for its commands (a bank without a secret).
    let mut controllers: Vec<RawController> = addrs
        .iter()
        .zip([1334, 1333, 1333])
        .map(|(&addr, balance)| {
            let mut controller = RawController::connect(addr);
            controller.send(Body::InitBranch(pb::InitBranch {
                balance,
                all_branches: members.clone(),
                ..Default::default()
            }));
            controller
        })
        .collect();
    // The card is written on InitBranch: a connection that opens with a command is served
    // only once the branch is initialised.
    for entry in bank.entries() {
        wait_for_card(&bank, &entry.name, "InitBranch", |card| {
            card["init"].is_object()
        });
    }

    // Snapshot 1: branch2 is asked before anything of it can be recorded there.
    let mut early = ask_for(addrs[1], 1);
    wait_until_asked(&bank, "branch2", 1);
    start(&mut controllers[0], 1);
    let held: v1::LocalSnapshot = read_held(&mut early, "branch2's record of 1");
    assert_eq!(held.snapshot_id, 1);
    for index in [0, 2] {
        assert_complete(&controllers[index].retrieve(1), 1);
    }

    // Snapshot 2: branch3 is never asked. Branch1's record is complete only once branch3's
    // marker reached it, so branch3 recorded 2.
    start(&mut controllers[0], 2);
    for index in [0, 1] {
        assert_complete(&controllers[index].retrieve(2), 2);
    }

    // Snapshots 3 and 4: 4 starts at branch1 before 3 is retrieved anywhere.
    start(&mut controllers[0], 3);
    start(&mut controllers[0], 4);
    for id in [3, 4] {
        for controller in &mut controllers {
            assert_complete(&controller.retrieve(id), id);
        }
    }

    terminate_all(&mut bank);
    let cards = json_cards(&bank);
    for card in &cards {
        assert_eq!(rule(card, "init-lists-every-branch").0, "PASS", "{card}");
    }
    assert_split_evenly(&cards, 4000);

    let (outcome, evidence) = rule(&cards[1], "asked-after-recorded");
    assert_eq!(outcome, "FAIL", "{evidence}");
    assert!(
        evidence.contains("came before this branch's record was finished: ids 1"),
        "{evidence}"
    );

    let (outcome, evidence) = rule(&cards[2], "asked-every-snapshot");
    assert_eq!(outcome, "FAIL", "{evidence}");
    assert!(
        evidence.ends_with("never retrieved from here: ids 2"),
        "{evidence}"
    );
    assert_eq!(rule(&cards[0], "asked-every-snapshot").0, "PASS");
    assert_eq!(rule(&cards[1], "asked-every-snapshot").0, "PASS");

    let (outcome, evidence) = rule(&cards[0], "no-overlap");
    assert_eq!(outcome, "FAIL", "{evidence}");
    assert!(
        evidence.contains("4 began while 3 was not yet retrieved"),
        "{evidence}"
    );
}
