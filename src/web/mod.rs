//! The web view (`controller --web ADDR`): a live page of the bank and its snapshots, a JSON API,
//! a Server-Sent Events stream and Prometheus metrics, served by `actix-web` from the
//! controller's process.
//!
//! - [`state`]: [`state::ViewState`], what the view knows, in bounded memory (no I/O).
//! - [`metrics`]: `/metrics` in Prometheus's text format.
//! - [`server`]: the HTTP routes, the event stream and the embedded page.
//!
//! How it stays out of the bank's way: the controller hands each report to
//! [`WebView::add_report`] and each live event to the [`ControllerObserver`] methods; both take
//! a short lock, update the state and push one pre-rendered event into a bounded broadcast
//! channel, which never waits. The HTTP server runs on its own worker thread; a client that
//! reads slowly only falls behind in the channel (it is then told to resync), so a slow or stuck
//! browser costs the controller nothing but memory the channel already bounds.

pub mod metrics;
pub mod server;
pub mod state;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::config::BranchEntry;
use crate::controller::{ControllerObserver, SnapshotReport};
use state::{LinkStatus, ViewState};

pub use server::{WebServer, serve};

/// Snapshots retained by default (`--web-history`).
pub const DEFAULT_KEEP: usize = 100;

/// Events the live stream holds for clients that are behind; a client further behind than this
/// is told to resync instead.
const STREAM_BACKLOG: usize = 256;

/// At most this many live-stream clients at once; more get `503`.
pub const MAX_STREAM_CLIENTS: usize = 64;

/// Why the web view could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot serve the web view on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the view's clients share: the state and the live stream.
#[derive(Debug)]
struct Shared {
    /// The view's state; every lock is short (no I/O while held).
    state: Mutex<ViewState>,
    /// Pre-rendered SSE frames for every connected stream.
    events: broadcast::Sender<Bytes>,
    /// Stream clients connected now.
    clients: AtomicUsize,
}

/// The web view of one bank: cheap to clone, shared between the controller (which feeds it) and
/// the HTTP workers (which read it).
#[derive(Debug, Clone)]
pub struct WebView {
    shared: Arc<Shared>,
}

impl WebView {
    /// A view of `branches` holding `total`, retaining the last `keep` snapshots.
    pub fn new(branches: &[BranchEntry], total: u64, keep: usize) -> Self {
        let names = branches.iter().map(|b| b.name.clone()).collect();
        let addrs = branches.iter().map(|b| b.addr.to_string()).collect();
        let (events, _) = broadcast::channel(STREAM_BACKLOG);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(ViewState::new(names, addrs, total, keep)),
                events,
                clients: AtomicUsize::new(0),
            }),
        }
    }

    /// Locks the state (a panic elsewhere while it was held leaves it usable: every update is
    /// a few assignments).
    fn state(&self) -> MutexGuard<'_, ViewState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes in a finished snapshot and streams it, with the new status, to every client.
    pub fn add_report(&self, report: &SnapshotReport) {
        let (object, status) = {
            let mut state = self.state();
            let object = state.add_report(report, now_ms());
            (object, state.status_json().to_string())
        };
        self.publish("snapshot", &object);
        self.publish("status", &status);
    }

    /// Runs `read` on the state.
    pub fn read<T>(&self, read: impl FnOnce(&ViewState) -> T) -> T {
        read(&self.state())
    }

    /// Updates the state with `update`, then streams the new status.
    fn update(&self, update: impl FnOnce(&mut ViewState)) {
        let status = {
            let mut state = self.state();
            update(&mut state);
            state.status_json().to_string()
        };
        self.publish("status", &status);
    }

    /// Sends one SSE frame to every connected client; never waits (a full backlog drops the
    /// oldest frame for clients that have not read it).
    fn publish(&self, event: &str, data: &str) {
        if self.shared.events.receiver_count() == 0 {
            return;
        }
        let _ = self.shared.events.send(sse_frame(event, data));
    }

    /// A new stream client, or `None` when [`MAX_STREAM_CLIENTS`] are connected.
    fn subscribe(&self) -> Option<Subscription> {
        let shared = self.shared.clone();
        let previous = shared.clients.fetch_add(1, Ordering::AcqRel);
        let subscription = Subscription {
            events: shared.events.subscribe(),
            shared,
        };
        (previous < MAX_STREAM_CLIENTS).then_some(subscription)
    }

    /// Stream clients connected now.
    pub fn stream_clients(&self) -> usize {
        self.shared.clients.load(Ordering::Acquire)
    }
}

/// One stream client's place in the broadcast; counted until dropped.
struct Subscription {
    events: broadcast::Receiver<Bytes>,
    shared: Arc<Shared>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ControllerObserver for WebView {
    fn link_up(&self, branch: &str) {
        self.update(|state| state.set_link(branch, LinkStatus::Up));
    }

    fn link_lost(&self, branch: &str, reason: &str) {
        self.update(|state| state.set_link(branch, LinkStatus::Down(reason.to_string())));
    }

    fn snapshot_started(&self, id: u32, _initiator: &str) {
        self.update(|state| state.snapshot_started(id));
    }

    fn record_answered(&self, id: u32, branch: &str, elapsed: Duration) {
        // No status change worth a stream event: the times arrive with the report.
        self.state()
            .record_answered(id, branch, elapsed.as_secs_f64() * 1000.0);
    }
}

/// One Server-Sent Events frame; `data` is one line of JSON.
fn sse_frame(event: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Milliseconds since the Unix epoch (what the page's `Date` takes).
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64() * 1000.0)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_one_event_and_one_data_line() {
        assert_eq!(
            sse_frame("status", "{\"a\":1}"),
            Bytes::from("event: status\ndata: {\"a\":1}\n\n")
        );
    }

    #[test]
    fn stream_clients_are_capped_and_counted_until_dropped() {
        let view = WebView::new(&[], 0, 1);
        let clients: Vec<_> = (0..MAX_STREAM_CLIENTS)
            .map(|_| view.subscribe().expect("under the cap"))
            .collect();
        assert!(view.subscribe().is_none());
        assert_eq!(view.stream_clients(), MAX_STREAM_CLIENTS);
        drop(clients);
        assert_eq!(view.stream_clients(), 0);
        assert!(view.subscribe().is_some());
    }

    #[test]
    fn a_client_that_never_reads_does_not_grow_the_backlog() {
        let view = WebView::new(&[], 0, 1);
        let mut stuck = view.subscribe().unwrap();
        for id in 0..(STREAM_BACKLOG as u32 * 4) {
            view.snapshot_started(id, "b");
        }
        assert_eq!(view.shared.events.len(), STREAM_BACKLOG);
        assert!(matches!(
            stuck.events.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
