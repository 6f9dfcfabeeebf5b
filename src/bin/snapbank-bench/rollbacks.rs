//! `--rollbacks N`: how long an in-memory bank takes from a crash to trading again. Four
//! branches at full load, a snapshot every `--snapshot-interval-ms`, the controller rolling the
//! bank back when a branch comes back empty (`--on-branch-loss rollback`). N times, a branch is
//! killed with SIGKILL and started again at once, empty; each time the bench measures, from the
//! kill:
//! - to the end of the rollback (every branch trading again in the new epoch);
//! - to the first ok snapshot of the new epoch (the bank proven whole again).
//!
//! Then it prints each rollback and the p50 and p99 of both.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapbank::controller::rollback::RollbackDone;
use snapbank::controller::{
    BranchLoss, ControllerConfig, RollbackSink, SnapshotReport, run_controller,
};
use snapbank::local_bank::LocalBank;
use tokio_util::sync::CancellationToken;

/// One report as the measurement keeps it: when it came, its epoch, ok, judged wrong.
type Seen = (Instant, u64, bool, bool);

/// The value at quantile `q` of `values` (nearest rank); `values` is sorted here.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Runs the measurement; `Ok(false)` if a snapshot was judged wrong.
pub async fn measure(count: usize, interval: Duration, bin_dir: &Path) -> Result<bool, String> {
    let args = ["--max-interval-ms", "0"].map(String::from);
    let mut bank = LocalBank::start(&bin_dir.join("branch"), 4, &args)
        .map_err(|err| format!("cannot start 4 branches: {err}"))?;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, RollbackDone)>();
    let reports: Rc<RefCell<Vec<Seen>>> = Rc::default();
    let sink = reports.clone();
    let on_report = Box::new(move |report: &SnapshotReport| {
        let wrong = !report.is_ok() && report.audit.is_some();
        sink.borrow_mut()
            .push((Instant::now(), report.epoch, report.is_ok(), wrong));
    });
    let stop = CancellationToken::new();
    let config = ControllerConfig {
        interval,
        stop: Some(stop.clone()),
        on_branch_loss: BranchLoss::Rollback,
        on_rollback: Some(RollbackSink(Arc::new(move |done: &RollbackDone| {
            let _ = done_tx.send((Instant::now(), done.clone()));
        }))),
        ..ControllerConfig::new(4_000_000, bank.entries().to_vec())
    };
    let controller = actix_rt::spawn(run_controller(config, on_report));
    let ok_in = |epoch: u64, after: Instant| {
        reports
            .borrow()
            .iter()
            .find(|&&(at, e, ok, _)| e == epoch && ok && at >= after)
            .map(|&(at, ..)| at)
    };
    let wait_ok = |epoch: u64, after: Instant| {
        let ok_in = &ok_in;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(at) = ok_in(epoch, after) {
                    return Ok(at);
                }
                if Instant::now() > deadline {
                    return Err(format!("no ok snapshot in epoch {epoch} within 30 s"));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    wait_ok(0, Instant::now()).await?;
    let (mut to_trading, mut to_ok) = (Vec::new(), Vec::new());
    for n in 0..count {
        let victim = (n * 3) % 4;
        let killed = Instant::now();
        bank.kill(victim);
        bank.restart(victim, &[])
            .map_err(|err| format!("cannot restart branch{}: {err}", victim + 1))?;
        let (traded, done) = tokio::time::timeout(Duration::from_secs(30), done_rx.recv())
            .await
            .map_err(|_| "no rollback within 30 s".to_string())?
            .ok_or("the controller stopped")?;
        let ok = wait_ok(done.epoch, traded).await?;
        let (a, b) = (
            traded.duration_since(killed).as_secs_f64() * 1000.0,
            ok.duration_since(killed).as_secs_f64() * 1000.0,
        );
        println!(
            "rollback {}: branch{} killed; trading again in epoch {} after {a:.1} ms (the rollback itself {} ms), first ok snapshot after {b:.1} ms",
            n + 1,
            victim + 1,
            done.epoch,
            done.took.as_millis()
        );
        to_trading.push(a);
        to_ok.push(b);
        // Let the new epoch take a snapshot to roll back to next time.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.cancel();
    let _ = controller.await;
    let wrong = reports.borrow().iter().filter(|r| r.3).count();
    println!(
        "crash to trading again over {count} rollbacks: p50 {:.1} ms, p99 {:.1} ms; to the first ok snapshot: p50 {:.1} ms, p99 {:.1} ms; {} snapshots, {wrong} judged wrong",
        quantile(&mut to_trading, 0.5),
        quantile(&mut to_trading, 0.99),
        quantile(&mut to_ok, 0.5),
        quantile(&mut to_ok, 0.99),
        reports.borrow().len()
    );
    Ok(wrong == 0)
}
