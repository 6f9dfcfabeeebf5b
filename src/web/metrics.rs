//! `/metrics`: the view's state in Prometheus's text exposition format (version 0.0.4).
//!
//! Every series is prefixed `snapbank_`. Counters and the duration histogram cover every
//! snapshot since the controller started; gauges are the latest complete snapshot's figures.
//! A gauge with no value yet (no snapshot with counters) is left out rather than reported as 0.

use std::fmt::Write as _;

use std::sync::atomic::Ordering;

use super::state::{DURATION_BUCKETS, LinkStatus, ViewState};
use crate::controller::checkpoint::dir::{CheckpointStats, now_unix_ms};

/// The content type Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every series.
pub fn render(state: &ViewState) -> String {
    let mut out = String::new();
    let verdicts = state.verdicts();
    family(
        &mut out,
        "snapbank_snapshots_total",
        "counter",
        "Snapshots reported, by verdict.",
    );
    for (verdict, count) in [
        ("ok", verdicts.ok),
        ("inconsistent", verdicts.inconsistent),
        ("mismatch", verdicts.mismatch),
        ("incomplete", verdicts.incomplete),
    ] {
        let _ = writeln!(
            out,
            "snapbank_snapshots_total{{verdict=\"{verdict}\"}} {count}"
        );
    }
    family(
        &mut out,
        "snapbank_snapshots_started_total",
        "counter",
        "Snapshots started.",
    );
    let _ = writeln!(out, "snapbank_snapshots_started_total {}", state.started());
    family(
        &mut out,
        "snapbank_snapshots_in_progress",
        "gauge",
        "Snapshots started and not reported yet.",
    );
    let _ = writeln!(
        out,
        "snapbank_snapshots_in_progress {}",
        state.in_progress()
    );

    let histogram = state.durations();
    family(
        &mut out,
        "snapbank_snapshot_duration_seconds",
        "histogram",
        "From InitSnapshot sent to every record held (or given up on).",
    );
    let mut cumulative = 0;
    for (bound, count) in DURATION_BUCKETS.iter().zip(histogram.counts) {
        cumulative += count;
        let _ = writeln!(
            out,
            "snapbank_snapshot_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "snapbank_snapshot_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        histogram.count
    );
    let _ = writeln!(
        out,
        "snapbank_snapshot_duration_seconds_sum {}",
        float(histogram.sum)
    );
    let _ = writeln!(
        out,
        "snapbank_snapshot_duration_seconds_count {}",
        histogram.count
    );

    if let Some(rate) = state.transfers_per_second() {
        family(
            &mut out,
            "snapbank_transfers_per_second",
            "gauge",
            "Transfers sent per second between the last two snapshots, from their own counters.",
        );
        let _ = writeln!(out, "snapbank_transfers_per_second {}", float(rate));
    }
    if let Some(sent) = state.transfers_sent() {
        family(
            &mut out,
            "snapbank_transfers_sent",
            "gauge",
            "Transfers all branches had sent at the latest snapshot's cut.",
        );
        let _ = writeln!(out, "snapbank_transfers_sent {sent}");
    }
    if let Some(in_transit) = state.in_transit() {
        family(
            &mut out,
            "snapbank_money_in_transit",
            "gauge",
            "Money recorded in transit on all channels in the latest complete snapshot.",
        );
        let _ = writeln!(out, "snapbank_money_in_transit {in_transit}");
    }
    family(
        &mut out,
        "snapbank_money_total",
        "gauge",
        "The money the bank holds.",
    );
    let _ = writeln!(out, "snapbank_money_total {}", state.expected_total());
    family(
        &mut out,
        "snapbank_branches",
        "gauge",
        "Branches in the bank.",
    );
    let _ = writeln!(out, "snapbank_branches {}", state.names().len());
    family(
        &mut out,
        "snapbank_branches_up",
        "gauge",
        "Branches the controller is connected to.",
    );
    let _ = writeln!(out, "snapbank_branches_up {}", state.branches_up());
    family(
        &mut out,
        "snapbank_rollbacks_total",
        "counter",
        "Rollbacks of the whole bank to its latest ok snapshot.",
    );
    let _ = writeln!(out, "snapbank_rollbacks_total {}", state.rollbacks_total());
    family(
        &mut out,
        "snapbank_bank_epoch",
        "gauge",
        "The bank epoch: one more after each rollback.",
    );
    let _ = writeln!(out, "snapbank_bank_epoch {}", state.epoch());
    family(
        &mut out,
        "snapbank_branch_up",
        "gauge",
        "1 while the controller's connection to the branch is up.",
    );
    for (name, link) in state.names().iter().zip(state.links()) {
        let up = u8::from(*link == LinkStatus::Up);
        let _ = writeln!(out, "snapbank_branch_up{{branch=\"{}\"}} {up}", label(name));
    }
    if let Some(balances) = state.balances() {
        family(
            &mut out,
            "snapbank_branch_balance",
            "gauge",
            "Each branch's balance in the latest complete snapshot.",
        );
        for (name, balance) in state.names().iter().zip(balances) {
            let _ = writeln!(
                out,
                "snapbank_branch_balance{{branch=\"{}\"}} {balance}",
                label(name)
            );
        }
    }
    if let Some(id) = state.latest_id() {
        family(
            &mut out,
            "snapbank_latest_snapshot_id",
            "gauge",
            "Id of the latest reported snapshot.",
        );
        let _ = writeln!(out, "snapbank_latest_snapshot_id {id}");
    }
    if let Some(stats) = state.checkpoints() {
        checkpoint_series(&mut out, stats, now_unix_ms());
    }
    out
}

/// The checkpoint writer's series; the latest checkpoint's id and age only once there is one.
fn checkpoint_series(out: &mut String, stats: &CheckpointStats, now_ms: u64) {
    let counters = [
        (
            "snapbank_checkpoints_written_total",
            "counter",
            "Checkpoints written to --checkpoint-dir.",
            stats.written.load(Ordering::Relaxed),
        ),
        (
            "snapbank_checkpoint_write_failures_total",
            "counter",
            "Checkpoints that could not be written.",
            stats.failed.load(Ordering::Relaxed),
        ),
        (
            "snapbank_checkpoints_kept",
            "gauge",
            "Checkpoints in --checkpoint-dir after the latest write.",
            stats.kept.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in counters {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    let latest_ms = stats.latest_unix_ms.load(Ordering::Relaxed);
    if stats.written.load(Ordering::Relaxed) == 0 {
        return;
    }
    family(
        out,
        "snapbank_latest_checkpoint_id",
        "gauge",
        "Snapshot id of the latest checkpoint written.",
    );
    let _ = writeln!(
        out,
        "snapbank_latest_checkpoint_id {}",
        stats.latest_id.load(Ordering::Relaxed)
    );
    family(
        out,
        "snapbank_latest_checkpoint_age_seconds",
        "gauge",
        "Seconds since the latest checkpoint's snapshot was taken.",
    );
    let age = now_ms.saturating_sub(latest_ms) as f64 / 1000.0;
    let _ = writeln!(out, "snapbank_latest_checkpoint_age_seconds {}", float(age));
}

/// The `# HELP` and `# TYPE` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value: Rust's shortest round-trip form, which Prometheus parses.
fn float(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else if value.is_nan() {
        "NaN".to_string()
    } else if value > 0.0 {
        "+Inf".to_string()
    } else {
        "-Inf".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_series_appear_with_a_writer_and_the_age_once_one_is_written() {
        let state = ViewState::new(vec!["a".into(), "b".into()], vec![], 10, 5);
        assert!(!render(&state).contains("checkpoint"));
        let stats = CheckpointStats::default();
        let mut out = String::new();
        checkpoint_series(&mut out, &stats, 10_000);
        assert!(
            out.contains("snapbank_checkpoints_written_total 0\n"),
            "{out}"
        );
        assert!(
            !out.contains("snapbank_latest_checkpoint_age_seconds"),
            "{out}"
        );
        stats.written.store(3, Ordering::Relaxed);
        stats.latest_id.store(17, Ordering::Relaxed);
        stats.latest_unix_ms.store(7_500, Ordering::Relaxed);
        let mut out = String::new();
        checkpoint_series(&mut out, &stats, 10_000);
        assert!(
            out.contains("snapbank_checkpoints_written_total 3\n"),
            "{out}"
        );
        assert!(out.contains("snapbank_latest_checkpoint_id 17\n"), "{out}");
        assert!(
            out.contains("snapbank_latest_checkpoint_age_seconds 2.5\n"),
            "{out}"
        );
    }

    #[test]
    fn rollbacks_are_counted_with_the_epoch_they_reached() {
        let mut state = ViewState::new(vec!["a".into(), "b".into()], vec![], 10, 5);
        assert!(render(&state).contains("snapbank_rollbacks_total 0\n"));
        for epoch in [1, 2] {
            state.rolled_back(
                &crate::controller::rollback::RollbackDone {
                    epoch,
                    checkpoint: 3,
                    lost: vec!["a".into()],
                    undone: Some(0),
                    took: std::time::Duration::ZERO,
                },
                0.0,
            );
        }
        let text = render(&state);
        assert!(text.contains("snapbank_rollbacks_total 2\n"), "{text}");
        assert!(text.contains("snapbank_bank_epoch 2\n"), "{text}");
    }

    #[test]
    fn an_empty_view_has_counters_and_bank_gauges_but_no_made_up_figures() {
        let names = vec!["a\"b".to_string(), "c".to_string()];
        let mut state = ViewState::new(names, vec![], 10, 5);
        state.set_link("c", LinkStatus::Up);
        let text = render(&state);
        assert!(text.contains("snapbank_snapshots_total{verdict=\"ok\"} 0\n"));
        assert!(text.contains("snapbank_snapshot_duration_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(text.contains("snapbank_branches_up 1\n"));
        assert!(text.contains("snapbank_branch_up{branch=\"a\\\"b\"} 0\n"));
        assert!(!text.contains("snapbank_transfers_per_second"));
        assert!(!text.contains("snapbank_money_in_transit"));
        // Every sample line belongs to a family declared before it.
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    declared
                        .iter()
                        .any(|family| name.starts_with(family.as_str())),
                    "{line}"
                );
            }
        }
    }

    #[test]
    fn floats_are_in_prometheus_form() {
        assert_eq!(float(0.25), "0.25");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NAN), "NaN");
    }
}
