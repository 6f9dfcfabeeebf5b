//! The bank across network namespaces: `scripts/multihost.sh` puts each branch and the
//! controller in a namespace of its own, joined by veth links to a bridge, runs snapshots, adds
//! latency to every branch's link, then cuts one branch off and checks the failure report.
//!
//! Namespaces need root: where they cannot be made, the script says why and exits 77, and this
//! test reports the skip on stderr and passes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BRANCH: &str = env!("CARGO_BIN_EXE_branch");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/multihost.sh");

/// The script's exit code for "cannot run here".
const SKIPPED: i32 = 77;

#[test]
fn snapshots_across_namespaces_with_latency_and_a_cut_link() {
    let bin_dir = Path::new(BRANCH)
        .parent()
        .expect("the branch binary is in a directory");
    assert!(
        bin_dir.join("controller").is_file(),
        "no controller binary next to {BRANCH}"
    );
    let started = Instant::now();
    let output = snapbank::local_bank::output_within(
        Command::new("bash")
            .arg(SCRIPT)
            .arg("--bin-dir")
            .arg(bin_dir),
        Duration::from_secs(120),
    )
    .expect("scripts/multihost.sh finishes within 120 s");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(SKIPPED) {
        let reason = stdout
            .lines()
            .find(|line| line.starts_with("SKIP"))
            .unwrap_or("SKIP: (no reason given)");
        eprintln!("multihost test skipped: {reason}");
        return;
    }
    assert!(
        output.status.success() && stdout.lines().any(|line| line.starts_with("PASS")),
        "scripts/multihost.sh exited {:?} after {:.1} s\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "scripts/multihost.sh passed in {:.1} s\n{stdout}",
        started.elapsed().as_secs_f64()
    );
}
