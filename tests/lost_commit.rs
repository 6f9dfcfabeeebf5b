//! A durable branch whose store lost a commit (as a disk that drops or corrupts a write makes
//! it, and redb then opens the previous commit without a word): its peers know positions the
//! store says were never reached. The branch says so, naming the store, and stops rather than
//! trade with the wrong money.

mod common;

use std::time::Duration;

use common::{SecretDir, verdicts};

#[test]
fn a_branch_restarted_on_an_older_commit_says_its_state_regressed_and_stops() {
    let secret = SecretDir::new("lost-commit");
    let (mut bank, controller) = common::durable_pair_with_controller(&secret, "5", "50", "1000");
    std::thread::sleep(Duration::from_millis(1000));
    let store =
        common::restart_on_an_older_store(&mut bank, 0, &secret.dir, Duration::from_millis(1500));
    let status = bank.wait_for_exit(0, Duration::from_secs(20));
    let log = std::fs::read_to_string(bank.log_path("branch1")).unwrap_or_default();
    let (_code, reports, _stderr) = controller.finish(Duration::from_secs(60));
    let status = status.expect("branch1 went on trading on a store that lost a commit");
    assert_eq!(status.code(), Some(2), "{status:?}");
    let line = log
        .lines()
        .find(|line| line.starts_with("error: state regressed"))
        .unwrap_or_else(|| {
            panic!(
                "no 'error: state regressed' line; the log ends: {}",
                &log[log.len().saturating_sub(2000)..]
            )
        });
    assert!(
        line.contains("a commit was lost") && line.contains(&store.display().to_string()),
        "{line}"
    );
    // No money was made or lost in any snapshot that claims to be whole.
    for report in &reports {
        if report["verdict"] == "ok" {
            assert_eq!(report["total"], 2000, "{report}");
        } else {
            assert_eq!(report["verdict"], "incomplete", "{:?}", verdicts(&reports));
        }
    }
}
