//! An in-process bank: real actors over loopback TCP in one actix system, driven hard, with
//! many overlapping snapshots started at different branches, each proven a consistent cut by
//! the checker.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use snapbank::branch::{BranchConfig, BranchHandle, GetStatus, start_branch};
use snapbank::config::BranchEntry;
use snapbank::controller::{ControllerConfig, RunSummary, SnapshotReport, run_controller};

/// Starts `count` branches on free loopback ports, sending as fast as their connections allow.
async fn start_bank(count: usize, max_interval: Duration) -> (Vec<BranchHandle>, Vec<BranchEntry>) {
    let mut handles = Vec::new();
    let mut entries = Vec::new();
    for index in 0..count {
        let name = format!("b{index}");
        let config = BranchConfig {
            max_interval,
            seed: Some(index as u64),
            ..BranchConfig::new(name.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        };
        let handle = start_branch(config).await.expect("bind a loopback port");
        entries.push(BranchEntry {
            name,
            addr: handle.addr,
        });
        handles.push(handle);
    }
    (handles, entries)
}

async fn run(config: ControllerConfig) -> (RunSummary, Vec<SnapshotReport>) {
    let reports = Rc::new(RefCell::new(Vec::new()));
    let sink = reports.clone();
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        run_controller(
            config,
            Box::new(move |report: &SnapshotReport| sink.borrow_mut().push(report.clone())),
        ),
    )
    .await
    .expect("the run finishes")
    .expect("the controller runs");
    let reports = reports.borrow().clone();
    (summary, reports)
}

fn assert_all_ok(reports: &[SnapshotReport], expected: u32) {
    assert_eq!(reports.len(), expected as usize);
    for (index, report) in reports.iter().enumerate() {
        assert_eq!(report.id, index as u32 + 1, "reports come out in id order");
        assert!(report.is_ok(), "snapshot not ok:\n{}", report.to_text());
        assert_eq!(report.total, Some(report.expected_total));
        // Not just the sum: every channel's counters prove the cut consistent.
        let audit = report.audit.as_ref().unwrap();
        assert!(audit.is_proven(), "{audit:?}");
        let n = report.branches.len();
        assert_eq!(audit.checked_channels, n * (n - 1));
    }
}

#[actix_rt::test]
async fn overlapping_snapshots_under_fast_traffic_each_account_for_all_money() {
    let (handles, entries) = start_bank(5, Duration::ZERO).await;
    let config = ControllerConfig {
        // All 40 start back to back, before any can finish: 40 in flight at once, whatever
        // the machine's speed, while the branches send as fast as their connections allow.
        interval: Duration::ZERO,
        snapshots: Some(40),
        seed: Some(7),
        ..ControllerConfig::new(10_003, entries)
    };
    let (summary, reports) = run(config).await;
    assert_all_ok(&reports, 40);
    assert!(summary.all_ok());
    assert_eq!(summary.max_in_flight, 40);
    // Money really moved: balances are no longer the even split.
    let last = reports.last().unwrap();
    let balances: Vec<u64> = last
        .branches
        .iter()
        .map(|b| b.record.as_ref().unwrap().balance)
        .collect();
    assert_ne!(balances, vec![2001, 2001, 2001, 2000, 2000]);
    // The cuts caught money on the wire: the channel states are part of what was checked.
    let in_transit: u64 = reports
        .iter()
        .flat_map(|r| &r.branches)
        .flat_map(|b| &b.record.as_ref().unwrap().incoming)
        .map(|(_, amount)| amount)
        .sum();
    eprintln!("money recorded in transit over the run: {in_transit}");
    assert!(in_transit > 0);
    // Every retrieved record was freed.
    for handle in &handles {
        let status = handle.actor.send(GetStatus).await.unwrap().unwrap();
        assert_eq!(status.records_kept, 0, "{status:?}");
        assert_eq!(status.snapshots_in_progress, 0, "{status:?}");
        assert_eq!(status.connected_peers, 4);
    }
}

#[actix_rt::test]
async fn paced_snapshots_under_steady_traffic_complete() {
    let (_handles, entries) = start_bank(4, Duration::from_millis(1)).await;
    let config = ControllerConfig {
        interval: Duration::from_millis(2),
        snapshots: Some(25),
        seed: Some(1),
        ..ControllerConfig::new(4000, entries)
    };
    let (summary, reports) = run(config).await;
    assert_all_ok(&reports, 25);
    assert!(summary.all_ok());
    let initiators: std::collections::HashSet<_> =
        reports.iter().map(|r| r.initiator.clone()).collect();
    assert!(
        initiators.len() >= 2,
        "snapshots start at different branches"
    );
}
