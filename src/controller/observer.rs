//! [`ControllerObserver`]: live events from the controller, for a view of it (the web view).
//!
//! Reports still reach the caller through `run_controller`'s `on_report`; an observer only
//! learns what happens between them: a snapshot started, a branch's record arrived, a branch
//! connection came up or was lost. The controller calls it on its own thread, so an
//! implementation must return at once (note the event and hand it off, never block or wait on
//! I/O): no view can slow the bank's snapshots.

use std::fmt::Debug;
use std::time::Duration;

use super::ControllerConfig;

/// Receives the controller's live events. Every method has an empty default, so an observer
/// implements only what it shows.
pub trait ControllerObserver: Send + Sync + Debug {
    /// The controller's connection to `branch` is up (it is connected, and authenticated when
    /// the bank has a secret).
    fn link_up(&self, _branch: &str) {}

    /// The controller's connection to `branch` is gone, for `reason`.
    fn link_lost(&self, _branch: &str, _reason: &str) {}

    /// Snapshot `id` was started at `initiator` (its `InitSnapshot` was queued).
    fn snapshot_started(&self, _id: u32, _initiator: &str) {}

    /// `branch` answered snapshot `id` (a finished record, or why it has none) `elapsed` after
    /// the snapshot started: with `wait_ms`, that is when the branch finished recording, plus
    /// one trip to the controller.
    fn record_answered(&self, _id: u32, _branch: &str, _elapsed: Duration) {}

    /// The bank was rolled back to a checkpoint and trades again.
    fn rolled_back(&self, _done: &super::rollback::RollbackDone) {}
}

impl ControllerConfig {
    /// Calls `event` on the observer, if there is one: one line at each place the actor reports
    /// an event.
    pub(crate) fn observe(&self, event: impl FnOnce(&dyn ControllerObserver)) {
        if let Some(observer) = &self.observer {
            event(observer.as_ref());
        }
    }
}
