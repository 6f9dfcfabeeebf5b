//! The model checker's paths as simulator scenarios: `snapbank-check --examples` writes a step
//! script per *sometimes* property, `snapbank-sim` replays each one exactly (every property
//! checked after every step) and draws it; a shipped step script replays to its recorded
//! account; bad step scripts are errors naming their line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::RunLimited;

const SIM: &str = env!("CARGO_BIN_EXE_snapbank-sim");
const CHECK: &str = env!("CARGO_BIN_EXE_snapbank-check");

fn steps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/steps")
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("snapbank-steps-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `snapbank-sim` on a topology and step script, drawing to `svg`; returns its exit code
/// and its stdout and stderr.
fn replay(topology: &Path, events: &Path, svg: &Path) -> (Option<i32>, String, String) {
    let output = Command::new(SIM)
        .arg(topology)
        .arg(events)
        .arg("--svg")
        .arg(svg)
        .run_limited();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The diagram parses as XML and draws `at_least` message arrows or more.
fn assert_drawn(svg: &Path, at_least: usize) {
    let text = std::fs::read_to_string(svg).expect("the diagram was written");
    let doc = roxmltree::Document::parse(&text).expect("the diagram is valid XML");
    let arrows = doc
        .descendants()
        .filter(|n| {
            n.attribute("class")
                .is_some_and(|c| c.split_whitespace().any(|c| c == "message"))
        })
        .count();
    assert!(arrows >= at_least, "{arrows} arrows in {}", svg.display());
}

#[test]
fn every_example_the_checker_writes_replays_in_the_simulator_and_draws() {
    let scratch = Scratch::new("examples");
    let output = Command::new(CHECK)
        .args(["--branches", "2", "--cuts", "1", "--examples"])
        .arg(&scratch.0)
        .run_limited();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let written: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("example of"))
        .collect();
    // Money in transit, and a snapshot across a cut (no crash at these bounds).
    assert_eq!(written.len(), 2, "{stdout}");
    for (index, line) in written.iter().enumerate() {
        let property = line.split('"').nth(1).expect("the line names the property");
        assert_example_replays(&scratch.0.join((index + 1).to_string()), property, 2);
    }
}

/// Replays the example at `base` (`.topology`, `.events`) in the simulator: it exits 0, with
/// `property` happening and nothing failing, and draws at least `arrows` messages.
fn assert_example_replays(base: &Path, property: &str, arrows: usize) {
    let svg = base.with_extension("svg");
    let (code, out, err) = replay(
        &base.with_extension("topology"),
        &base.with_extension("events"),
        &svg,
    );
    assert_eq!(code, Some(0), "{property}\n{out}\n{err}");
    assert!(
        out.lines()
            .any(|l| l.trim_start() == format!("sometimes {property}: happens")),
        "{property} does not happen on its own example:\n{out}"
    );
    assert!(!out.contains("FAILED"), "{out}");
    assert_drawn(&svg, arrows);
}

#[test]
fn the_checkers_example_of_a_snapshot_after_a_rollback_replays_in_the_simulator_and_draws() {
    let scratch = Scratch::new("rollback");
    let output = Command::new(CHECK)
        .args([
            "--branches",
            "2",
            "--cuts",
            "0",
            "--rollbacks",
            "1",
            "--examples",
        ])
        .arg(&scratch.0)
        .run_limited();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let property = "a snapshot completes after a rollback";
    let index = stdout
        .lines()
        .filter(|l| l.starts_with("example of"))
        .position(|l| l.contains(property))
        .unwrap_or_else(|| panic!("no example of {property:?}:\n{stdout}"));
    let base = scratch.0.join((index + 1).to_string());
    let events = std::fs::read_to_string(base.with_extension("events")).expect("the events");
    assert!(events.contains("rollback-commit"), "{events}");
    assert_example_replays(&base, property, 1);
}

#[test]
fn a_shipped_step_script_replays_step_by_step_to_a_snapshot_after_a_restart() {
    let scratch = Scratch::new("shipped");
    let svg = scratch.0.join("d.svg");
    let (code, out, err) = replay(
        &steps_dir().join("snapshot_after_crash.topology"),
        &steps_dir().join("snapshot_after_crash.events"),
        &svg,
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    let steps: Vec<&str> = out.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(steps.len(), 26, "{out}");
    assert!(steps[11].starts_with("step 12: crash b0"), "{}", steps[11]);
    // The transfer b0 had committed is resent after the restart, and the snapshot finds it.
    assert!(
        steps[16].contains("b0 sends transfer #1 (1) to b1"),
        "{}",
        steps[16]
    );
    assert!(
        out.contains("sometimes a snapshot completes after a crash and restart: happens"),
        "{out}"
    );
    assert!(
        out.contains("sometimes a snapshot finds money in transit: happens"),
        "{out}"
    );
    assert!(
        out.contains("always money is conserved: holds on every step"),
        "{out}"
    );
    assert_drawn(&svg, 3);
    let drawing = std::fs::read_to_string(&svg).expect("diagram");
    assert!(drawing.contains("crash"), "the crash is drawn");
}

#[test]
fn bad_step_scripts_are_errors_naming_the_line() {
    let scratch = Scratch::new("bad");
    let topology = steps_dir().join("snapshot_after_crash.topology");
    let cases = [
        // A delivery on a connection that is not up.
        (
            "steps\ntransfers 1\ndeliver b0 b1\n",
            "3: step 1, `deliver b0 b1`, cannot happen here",
        ),
        ("steps\nteleport b0\n", "2: unknown step `teleport b0`"),
        ("steps\nsend b0 b9 1\n", "2: unknown branch \"b9\""),
        (
            "steps\ntransfers 1\nconnect b0 b1\nsend b0 b1 2\n",
            "4: the model sends amounts of 1",
        ),
        (
            "steps\ncrashes 1\nconnect b0 b1\n",
            "`may-crash <branch>` is given exactly when",
        ),
        (
            "steps\nconnect b0 b1\ncuts 1\n",
            "3: `cuts` is a setting: it must come before the first step",
        ),
    ];
    for (index, (script, expected)) in cases.iter().enumerate() {
        let events = scratch.0.join(format!("{index}.events"));
        std::fs::write(&events, script).expect("script");
        let (code, out, err) = replay(&topology, &events, &scratch.0.join("x.svg"));
        assert_eq!(code, Some(2), "{script:?}: {out}\n{err}");
        assert!(err.contains(expected), "{script:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A step script needs a full mesh of equal balances.
    let ring = scratch.0.join("ring.topology");
    std::fs::write(&ring, "3\na 2\nb 2\nc 2\na b\nb c\nc a\n").expect("topology");
    let events = scratch.0.join("ok.events");
    std::fs::write(&events, "steps\n").expect("script");
    let (code, _, err) = replay(&ring, &events, &scratch.0.join("x.svg"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a link each way between every pair"), "{err}");
}
