//! The report card (`controller --compat MODE --grade`): snapbank's own branches pass every
//! rule in both modes, and each deliberately broken original-schema branch is caught with the
//! rule it breaks named.

use std::path::Path;

use serde_json::Value;

use super::original_branch::{Answer, Behaviour, Flaw, OriginalBank};
use super::{controller, our_bank};

/// Every rule of the card, in its order.
const RULES: [&str; 8] = [
    "sums-to-total",
    "channel-state-layout",
    "answer-stable",
    "money-moves",
    "no-negative-balance",
    "answers-match-id",
    "survives-bad-frames",
    "init-connection-pattern",
];

/// Runs the card over the bank in `file` with `args`; returns its exit code and each rule's
/// `(pass, evidence)` in order, having checked that every rule is listed once.
fn grade(file: &Path, args: &[&str]) -> (Option<i32>, Vec<(bool, String)>) {
    let mut all = vec!["--grade", "--format", "json"];
    all.extend_from_slice(args);
    let output = controller(file, &all);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    let card: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|err| panic!("not one JSON object ({err}): {stdout}\n{stderr}"));
    let rules = card["rules"].as_array().expect("a list of rules");
    let names: Vec<&str> = rules.iter().filter_map(|r| r["rule"].as_str()).collect();
    assert_eq!(names, RULES, "{stdout}");
    let verdicts: Vec<(bool, String)> = rules
        .iter()
        .map(|r| {
            let pass = r["pass"].as_bool().expect("pass is a bool");
            (pass, r["evidence"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    let failed = verdicts.iter().filter(|(pass, _)| !pass).count();
    assert_eq!(card["failed"], failed, "{stdout}");
    (output.status.code(), verdicts)
}

fn rule<'a>(verdicts: &'a [(bool, String)], name: &str) -> &'a (bool, String) {
    let index = RULES.iter().position(|r| *r == name).expect("a rule");
    &verdicts[index]
}

#[test]
fn snapbank_branches_pass_every_rule_in_both_modes() {
    for mode in ["per-command", "persistent"] {
        let bank = our_bank(4);
        let (code, verdicts) = grade(
            &bank.branches_file(),
            &["--compat", mode, "--interval-ms", "300", "--snapshots", "4"],
        );
        for (name, (pass, evidence)) in RULES.iter().zip(&verdicts) {
            assert!(pass, "{mode}: {name} failed: {evidence}");
        }
        assert_eq!(code, Some(0), "{mode}");
        // The order was proven by the channels' peer names, for every record.
        let (_, layout) = rule(&verdicts, "channel-state-layout");
        assert!(layout.contains("16 records' order proven"), "{layout}");
    }
}

/// Grades a bank of four branches that all behave as `behaviour`, one frame per connection;
/// asserts that `broken` fails with evidence containing `evidence`, and that the rules the
/// branch keeps pass.
fn caught(behaviour: Behaviour, args: &[&str], broken: &str, evidence: &str) {
    let bank = OriginalBank::start_with(4, behaviour);
    let mut all = vec!["--compat", "per-command", "--seed", "7"];
    all.extend_from_slice(args);
    let (code, verdicts) = grade(&bank.branches_file(), &all);
    let (pass, said) = rule(&verdicts, broken);
    assert!(!pass, "{broken} passed: {said}");
    assert!(said.contains(evidence), "{broken}: {said}");
    assert_eq!(code, Some(1));
    for kept in [
        "answers-match-id",
        "survives-bad-frames",
        "init-connection-pattern",
    ] {
        let (pass, said) = rule(&verdicts, kept);
        assert!(pass, "{kept} failed: {said}");
    }
}

#[test]
fn the_card_names_a_channel_state_out_of_order() {
    let behaviour = Behaviour::flawed(Some(Flaw::ReversedChannels), Answer::OnceRecorded);
    caught(
        behaviour,
        &["--interval-ms", "1200", "--snapshots", "6"],
        "channel-state-layout",
        "are not in all_branches order",
    );
}

/// Two snapshots half a second apart, each given up 1.5 s after it started: enough for a
/// flaw that shows in every record.
const TWO_QUICK_SNAPSHOTS: [&str; 6] = [
    "--interval-ms",
    "500",
    "--snapshots",
    "2",
    "--retrieve-timeout-ms",
    "1500",
];

#[test]
fn the_card_names_a_missing_channel() {
    let behaviour = Behaviour::flawed(Some(Flaw::MissingChannel), Answer::OnceRecorded);
    caught(
        behaviour,
        &TWO_QUICK_SNAPSHOTS,
        "channel-state-layout",
        "returned 2 channel states for 3 incoming channels",
    );
}

#[test]
fn the_card_names_a_negative_balance() {
    let behaviour = Behaviour::flawed(Some(Flaw::Overdraws), Answer::OnceRecorded);
    caught(
        behaviour,
        &TWO_QUICK_SNAPSHOTS,
        "no-negative-balance",
        "as a 32-bit int",
    );
}

#[test]
fn the_card_names_an_answer_given_before_the_record_was_finished() {
    let behaviour = Behaviour::flawed(None, Answer::AtOnce);
    caught(
        behaviour,
        &["--interval-ms", "1200", "--snapshots", "3"],
        "answer-stable",
        "changed its record of snapshot",
    );
}
