//! The controller: initialises a bank, schedules snapshots, collects and reports them.
//!
//! - [`actor`]: `ControllerActor`, which owns one persistent connection per branch.
//! - [`compat`]: `CompatController` (`--compat MODE`), which drives branches that speak only
//!   the exercise's original schema, as the exercise's own controllers do.
//! - [`report`]: [`SnapshotReport`], assembled from the branches' records, with its verdict and
//!   text/JSON forms.
//! - `asking`: how the compat driver asks original-schema branches again, with capped backoff,
//!   until their answers will do, with no I/O.
//! - `collector`: what both controllers decide, with no I/O: in-flight snapshots, deadlines,
//!   answers, initiators, the words for a status that is no record, reports in id order.
//! - `carrier`: the actix glue both controllers share to carry those decisions: the schedule,
//!   timers, persistent links and the end of a run.
//! - [`grade`]: the report card of an implementation's branches (`--compat MODE --grade`):
//!   the probes with bad frames, and one verdict per rule with its evidence.
//! - [`checkpoint`]: ok snapshots as self-describing files (`--checkpoint-dir`), written
//!   atomically and pruned to the newest N, and read back to restore a bank (`--restore`).
//! - `schedule`: the ticks (skipping those a stall missed) and what a run stopped early lists.
//! - [`rollback`]: rolling the whole bank back to its latest ok snapshot when a branch comes
//!   back empty (`--on-branch-loss rollback`): the two phases, with no I/O.
//!
//! Retrieval without blind sleeps: right after `InitSnapshot`, the controller sends every branch
//! `RetrieveSnapshot` with `wait_ms` (a snapbank extension) set to the time left before the
//! retrieve timeout; each branch answers as soon as its record is finished. A branch that only
//! knows the original schema ignores `wait_ms` and answers at once.

pub mod actor;
mod asking;
mod carrier;
pub mod checkpoint;
mod collector;
pub mod compat;
pub mod grade;
pub mod observer;
pub mod report;
pub mod rollback;
mod schedule;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use actor::ControllerActor;
pub use compat::{CompatConfig, CompatMode, run_compat_controller};
pub use observer::ControllerObserver;
pub use report::{
    AskNotes, BranchRecord, BranchState, Shortfall, ShortfallKind, SnapshotReport, Verdict,
};
pub use schedule::UnfinishedSnapshot;

use crate::auth::Secret;
use crate::backoff::Backoff;
use crate::config::BranchEntry;
use crate::dial::Dialer;
use crate::handshake;

/// First pause between two attempts to reach a branch at startup; doubles up to
/// [`MAX_CONNECT_DELAY`]: a branch that comes up is found soon after.
const FIRST_CONNECT_DELAY: Duration = Duration::from_millis(10);
const MAX_CONNECT_DELAY: Duration = Duration::from_millis(250);

/// Largest frame the controller accepts by default: records list the transfers found in
/// transit, which backpressure bounds to far less than this.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 << 20;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The money the bank holds; split evenly among the branches.
    pub total: u64,
    /// The branches, in branches-file order (the order of `all_branches` and of channel states).
    pub branches: Vec<BranchEntry>,
    /// Pause between two snapshot starts; zero starts them back to back (needs `snapshots`).
    pub interval: Duration,
    /// Stop after this many snapshots; `None` runs until stopped.
    pub snapshots: Option<u32>,
    /// Give up on a snapshot's missing records after this long.
    pub retrieve_timeout: Duration,
    /// Give up connecting to the branches after this long.
    pub connect_timeout: Duration,
    /// Seed for choosing initiators, for repeatable runs.
    pub seed: Option<u64>,
    /// Largest frame accepted from a branch.
    pub max_frame: usize,
    /// The cluster secret (`--secret-file`); a fresh random one is made when absent.
    pub secret: Option<Secret>,
    /// Attach to a running bank: authenticate with `secret`, skip `InitBranch`, and number
    /// snapshots after every id the branches have seen.
    pub attach: bool,
    /// With `attach`: end the controller lease of the controller driving the bank now (it is
    /// disconnected and stops) instead of being refused while it holds it.
    pub take_over: bool,
    /// Cancelled to stop the run early (Ctrl-C, SIGTERM): the run ends with the reports
    /// finished so far and lists the snapshots still in flight in
    /// [`RunSummary::unfinished`]. `None`: runs until done.
    pub stop: Option<CancellationToken>,
    /// A branch connection that has received nothing (not even an answer to a heartbeat probe)
    /// for this long is declared broken and redialled.
    pub link_timeout: Duration,
    /// Whether to probe branch connections with heartbeats (snapbank branches answer them).
    pub heartbeats: bool,
    /// Live events for a view of the controller (`--web`); `None` for none. Optional, so a
    /// caller without a view passes nothing.
    pub observer: Option<Arc<dyn ControllerObserver>>,
    /// Start the bank from a checkpoint (`--restore`) instead of an even split; `None` for a
    /// new bank.
    pub restore: Option<Restore>,
    /// What to do when a branch comes back empty (restarted without its state).
    pub on_branch_loss: BranchLoss,
    /// Told of every finished rollback (the `controller` command prints it).
    pub on_rollback: Option<RollbackSink>,
    /// With `attach`: roll the running bank back to this checkpoint first (`--rollback-to`),
    /// then drive it as usual.
    pub rollback_to: Option<RollbackTo>,
}

/// A rollback an operator asked for: to the checkpoint of snapshot `checkpoint`, giving each
/// branch (in branches-file order) its balance from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackTo {
    pub checkpoint: u32,
    pub balances: Vec<u64>,
}

/// What the controller does when a branch comes back empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BranchLoss {
    /// Keep trying to reach it: the bank goes on without its money, and every later snapshot
    /// is incomplete, until an operator restores it.
    #[default]
    Wait,
    /// Roll the whole bank back to the latest ok snapshot, in a new epoch (needs a secret:
    /// only the controller holding the lease can make branches do it).
    Rollback,
}

/// Where finished rollbacks are told (a function, so a caller can print or count them).
#[derive(Clone)]
pub struct RollbackSink(pub Arc<dyn Fn(&rollback::RollbackDone) + Send + Sync>);

impl std::fmt::Debug for RollbackSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RollbackSink")
    }
}

/// A bank started from a checkpoint: each branch's balance and where snapshot ids go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    /// Each branch's starting balance, in branches-file order (checked against the total).
    pub balances: Vec<u64>,
    /// The checkpoint's snapshot id: this run's ids start after it.
    pub after_id: u32,
}

/// Default of [`ControllerConfig::link_timeout`].
pub const DEFAULT_LINK_TIMEOUT: Duration = Duration::from_secs(3);

impl ControllerConfig {
    /// The defaults of the `controller` command.
    pub fn new(total: u64, branches: Vec<BranchEntry>) -> Self {
        Self {
            total,
            branches,
            interval: Duration::from_secs(10),
            snapshots: None,
            retrieve_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            seed: None,
            max_frame: DEFAULT_MAX_RECORD_BYTES,
            secret: None,
            attach: false,
            take_over: false,
            stop: None,
            link_timeout: DEFAULT_LINK_TIMEOUT,
            heartbeats: true,
            observer: None,
            restore: None,
            on_branch_loss: BranchLoss::Wait,
            on_rollback: None,
            rollback_to: None,
        }
    }

    /// Each branch's starting balance, in file order: the checkpoint's when restoring, else
    /// the total split evenly.
    pub fn initial_balances(&self) -> Vec<u64> {
        match &self.restore {
            Some(restore) => restore.balances.clone(),
            None => crate::core::split_total(self.total, self.branches.len()),
        }
    }

    /// The first snapshot id this run may use (after a restored checkpoint's).
    pub fn first_id(&self) -> u32 {
        self.restore
            .as_ref()
            .map_or(1, |restore| restore.after_id.saturating_add(1))
    }
}

/// How a finished run went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Snapshots reported.
    pub snapshots: u32,
    /// How many of them were complete and summed to the total.
    pub ok: u32,
    /// The most snapshots that were in progress at the same time.
    pub max_in_flight: usize,
    /// Scheduled snapshots not started: ticks missed while the controller was stalled, or
    /// ticks when too many snapshots were still in progress.
    pub skipped_ticks: u64,
    /// Times a lost branch connection was re-established.
    pub reconnects: u32,
    /// Rollbacks of the whole bank that finished.
    pub rollbacks: u32,
    /// When the run was stopped early ([`ControllerConfig::stop`]): the snapshots started and
    /// not reported, in id order.
    pub unfinished: Vec<UnfinishedSnapshot>,
    /// With `--compat --grade`: the bad frames sent to each branch before the snapshots, and
    /// how each went.
    pub probes: Vec<grade::Probe>,
}

impl RunSummary {
    /// Whether every snapshot was complete and summed to the total.
    pub fn all_ok(&self) -> bool {
        self.ok == self.snapshots
    }
}

/// Why the controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("total {0} does not fit the protocol's 32-bit balances (at most {max})", max = u32::MAX)]
    TotalTooLarge(u64),
    #[error("--interval-ms 0 starts snapshots back to back and needs --snapshots")]
    UnboundedBurst,
    #[error("--snapshots must be at least 1")]
    NoSnapshots,
    #[error("--attach needs --secret-file: the running bank's secret")]
    AttachNeedsSecret,
    #[error(
        "a restore must give one balance per branch summing to the total (got {branches} summing to {sum})"
    )]
    BadRestore { branches: usize, sum: u64 },
    #[error("--restore initialises fresh branches; it cannot be used with --attach")]
    RestoreAttached,
    #[error("cannot attach to branch {name} at {addr}: {reason}")]
    Attach {
        name: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error("cannot reach branch {name} at {addr} within {waited_ms} ms: {last_error}")]
    Connect {
        name: String,
        addr: SocketAddr,
        waited_ms: u128,
        last_error: String,
    },
    #[error("the controller stopped before finishing its snapshots")]
    Stopped,
    #[error(
        "branch {name}: the controller at {by} took over the bank's controller lease (--take-over); this controller stops"
    )]
    TakenOver { name: String, by: String },
    #[error(
        "lost the bank's controller lease at branch {name}: the controller at {holder} holds it now (it took over, or this controller was silent past the branch's peer timeout); this controller stops"
    )]
    LeaseLost { name: String, holder: String },
    #[error(
        "--compat drives branches that speak only the original schema, which know no secret: it cannot be used with --secret-file or --attach"
    )]
    CompatWithSecret,
    #[error("cannot initialise branch {name} at {addr}: {reason}")]
    Init {
        name: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error(
        "branch {name} refused: {reason}. To drive a bank that is already running, restart its branches (or run this controller's InitBranch against fresh ones), or start the branches with --secret-file and run the controller with the same --secret-file and --attach"
    )]
    Refused { name: String, reason: String },
}

/// Connects to every branch, initialises the bank and takes snapshots, calling `on_report` for
/// each in id order. Returns when `config.snapshots` have been reported (never, without a
/// limit). Must run inside an actix system.
pub async fn run_controller(
    config: ControllerConfig,
    on_report: Box<dyn FnMut(&SnapshotReport)>,
) -> Result<RunSummary, ControllerError> {
    check(&config)?;
    if config.attach && config.secret.is_none() {
        return Err(ControllerError::AttachNeedsSecret);
    }
    let secret = config.secret.clone().unwrap_or_else(Secret::generate);
    // This run's id towards the branches' controller leases: a reconnection keeps the lease.
    let controller_id = rand::random::<u64>().max(1);
    let connecting = connect_and_attach(&config, &secret, controller_id);
    let links = match config.stop.clone() {
        Some(stop) => tokio::select! {
            links = connecting => links?,
            () = stop.cancelled() => return Ok(RunSummary::default()),
        },
        None => connecting.await?,
    };
    let (links, first_id, epoch) = links;
    let (done, finished) = oneshot::channel();
    actor::start(
        config,
        links,
        secret,
        actor::Identity {
            controller_id,
            first_id,
            epoch,
        },
        on_report,
        done,
    );
    finished.await.map_err(|_| ControllerError::Stopped)?
}

/// Connects to every branch and, with a secret from a file, runs the controller handshake with
/// each (claiming the controller lease as `controller_id`); returns the connections, the
/// first snapshot id free at every branch and the highest bank epoch any branch is in.
async fn connect_and_attach(
    config: &ControllerConfig,
    secret: &Secret,
    controller_id: u64,
) -> Result<(Vec<handshake::Authenticated>, u32, u64), ControllerError> {
    let streams = connect_all(&config.branches, config.connect_timeout).await?;
    let mut links = Vec::with_capacity(streams.len());
    let mut first_id = config.first_id();
    let mut epoch = 0;
    // A secret from a file is never sent: the controller proves it with the handshake (which
    // also proves the branch is the real one) and sends InitBranch without it. Only a secret
    // made here for a new bank travels, in InitBranch (trust on first use).
    let authenticate = config.secret.is_some();
    let claim = handshake::ControllerClaim {
        controller: controller_id,
        take_over: config.take_over,
        rolls_back: config.on_branch_loss == BranchLoss::Rollback,
    };
    for (stream, branch) in streams.into_iter().zip(&config.branches) {
        if authenticate {
            let attached = handshake::attach_to_branch(
                stream,
                secret,
                &branch.name,
                claim,
                config.max_frame,
                config.connect_timeout,
            )
            .await
            .map_err(|err| ControllerError::Attach {
                name: branch.name.clone(),
                addr: branch.addr,
                reason: err.to_string(),
            })?;
            first_id = first_id.max(attached.next_snapshot_id);
            epoch = epoch.max(attached.epoch);
            links.push(attached.link);
        } else {
            links.push(carrier::plain(stream, config.max_frame));
        }
    }
    Ok((links, first_id, epoch))
}

/// The checks every way of running the controller shares.
fn check(config: &ControllerConfig) -> Result<(), ControllerError> {
    if config.total > u64::from(u32::MAX) {
        return Err(ControllerError::TotalTooLarge(config.total));
    }
    if config.interval.is_zero() && config.snapshots.is_none() {
        return Err(ControllerError::UnboundedBurst);
    }
    if config.snapshots == Some(0) {
        return Err(ControllerError::NoSnapshots);
    }
    if let Some(restore) = &config.restore {
        let sum: u64 = restore.balances.iter().sum();
        if restore.balances.len() != config.branches.len() || sum != config.total {
            return Err(ControllerError::BadRestore {
                branches: restore.balances.len(),
                sum,
            });
        }
        if config.attach {
            return Err(ControllerError::RestoreAttached);
        }
    }
    Ok(())
}

async fn connect_all(
    branches: &[BranchEntry],
    timeout: Duration,
) -> Result<Vec<TcpStream>, ControllerError> {
    let deadline = Instant::now() + timeout;
    let attempts = branches
        .iter()
        .map(|branch| connect_one(branch, deadline, timeout));
    futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .collect()
}

/// Dials one branch, retrying while it comes up, until `deadline` (`timeout` from the start).
async fn connect_one(
    branch: &BranchEntry,
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, ControllerError> {
    let backoff = Backoff::new(FIRST_CONNECT_DELAY, MAX_CONNECT_DELAY);
    Dialer::new(branch.addr, timeout, backoff)
        .deadline(deadline)
        .connect(|_| {})
        .await
        .map_err(|gave_up| ControllerError::Connect {
            name: branch.name.clone(),
            addr: branch.addr,
            waited_ms: timeout.as_millis(),
            last_error: gave_up.last_error,
        })
}
