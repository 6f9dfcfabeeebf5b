//! The web view (`controller --web ADDR`): a live page of the bank and its snapshots, a JSON API,
//! a Server-Sent Events stream and Prometheus metrics, served by `actix-web` from the
//! controller's process.
//!
//! - [`state`]: [`state::ViewState`], what the view knows, in bounded memory (no I/O).
//! - [`metrics`]: `/metrics` in Prometheus's text format.
//! - [`server`]: the HTTP routes, the event stream and the embedded page.
//!
//! How it stays out of the bank's way: the controller hands each report to
//! [`WebView::add_report`] and each live event to the [`ControllerObserver`] methods; each takes
//! a short lock, updates the state and queues what changed. No system call, no wake-up of
//! another thread and no status rendering happens on the controller's thread: a publisher
//! thread of the view's own, every 50 ms, renders the status once and pushes the queued events
//! into a bounded broadcast channel, which never waits. The HTTP server runs on its own worker
//! thread; a client that reads slowly only falls behind in the channel (it is then told to
//! resync), so a slow or stuck browser costs the controller nothing.
//!
//! At most [`MAX_STREAM_CLIENTS`] live streams are open at once. A viewer that comes when they
//! all are always gets in: the oldest stream is closed for it, after an `evicted` event (the
//! page then stops following and says so, instead of reconnecting and evicting another); its
//! connection is shut down [`EVICTION_GRACE`] later whatever it is doing, so a client that
//! stopped reading (and so never takes that event) gives its place up too. So tabs left open,
//! or clients that connect and never read, cannot lock later viewers out.

pub mod metrics;
pub mod server;
pub mod state;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::BranchEntry;
use crate::controller::{ControllerObserver, SnapshotReport};
use server::ConnectionSocket;
use state::{LinkStatus, ViewState};

pub use server::{WebServer, serve};

/// Snapshots retained by default (`--web-history`).
pub const DEFAULT_KEEP: usize = 100;

/// Events the live stream holds for clients that are behind; a client further behind than this
/// is told to resync instead.
const STREAM_BACKLOG: usize = 256;

/// At most this many live-stream clients at once; a new one closes the oldest.
pub const MAX_STREAM_CLIENTS: usize = 64;

/// Time an evicted stream has to send its `evicted` event and end before its connection is
/// shut down.
pub const EVICTION_GRACE: Duration = Duration::from_secs(1);

/// Why the web view could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot serve the web view on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How often the publisher thread pushes queued events to the stream's clients.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// What the view's clients share: the state and the live stream.
#[derive(Debug)]
struct Shared {
    /// The view's state; every lock is short (no I/O while held).
    state: Mutex<ViewState>,
    /// Events queued by the controller's thread for the publisher.
    pending: Mutex<Pending>,
    /// Pre-rendered SSE frames for every connected stream.
    events: broadcast::Sender<Bytes>,
    /// Stream clients connected now.
    streams: Mutex<Streams>,
}

/// The live-stream clients connected now.
#[derive(Debug, Default)]
struct Streams {
    /// Oldest first.
    open: VecDeque<OpenStream>,
    /// The number of the next one.
    next: u64,
}

/// One live-stream client, as the view holds it.
#[derive(Debug)]
struct OpenStream {
    /// Its number, to find it when it ends.
    id: u64,
    /// Cancelled to end its stream.
    evicted: CancellationToken,
    /// Its connection (none in unit tests), shut down after [`EVICTION_GRACE`] when evicted.
    socket: Option<ConnectionSocket>,
}

/// Events waiting for the publisher thread.
#[derive(Debug, Default)]
struct Pending {
    /// `snapshot` frames, oldest first, at most [`STREAM_BACKLOG`].
    frames: VecDeque<Bytes>,
    /// Some were dropped for lack of room: clients must resync.
    overflowed: bool,
    /// The status changed since it was last sent.
    status_changed: bool,
}

/// The web view of one bank: cheap to clone, shared between the controller (which feeds it),
/// the publisher thread and the HTTP workers (which read it).
#[derive(Debug, Clone)]
pub struct WebView {
    shared: Arc<Shared>,
}

impl WebView {
    /// A view of `branches` holding `total`, retaining the last `keep` snapshots. Starts the
    /// publisher thread, which ends when the last clone of the view is dropped.
    pub fn new(branches: &[BranchEntry], total: u64, keep: usize) -> Self {
        let names = branches.iter().map(|b| b.name.clone()).collect();
        let addrs = branches.iter().map(|b| b.addr.to_string()).collect();
        let (events, _) = broadcast::channel(STREAM_BACKLOG);
        let view = Self {
            shared: Arc::new(Shared {
                state: Mutex::new(ViewState::new(names, addrs, total, keep)),
                pending: Mutex::new(Pending::default()),
                events,
                streams: Mutex::new(Streams::default()),
            }),
        };
        let shared = Arc::downgrade(&view.shared);
        let publisher = std::thread::Builder::new()
            .name("web-publisher".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(PUBLISH_EVERY);
                    let Some(shared) = shared.upgrade() else {
                        break;
                    };
                    WebView { shared }.publish();
                }
            });
        if let Err(err) = publisher {
            log::error!(
                "web view: cannot start its publisher thread ({err}); the live stream will stay silent"
            );
        }
        view
    }

    /// Locks the state (a panic elsewhere while it was held leaves it usable: every update is
    /// a few assignments).
    fn state(&self) -> MutexGuard<'_, ViewState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn streams(&self) -> MutexGuard<'_, Streams> {
        self.shared
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Shows the counters of the controller's checkpoint writer (`--checkpoint-dir`) in
    /// `/metrics`.
    pub fn track_checkpoints(
        &self,
        stats: Arc<crate::controller::checkpoint::dir::CheckpointStats>,
    ) {
        self.state().track_checkpoints(stats);
    }

    /// Takes in a finished snapshot and queues it, and the new status, for the stream.
    pub fn add_report(&self, report: &SnapshotReport) {
        let object = self.state().add_report(report, now_ms());
        let mut pending = self.pending();
        if pending.frames.len() == STREAM_BACKLOG {
            pending.frames.pop_front();
            pending.overflowed = true;
        }
        pending.frames.push_back(sse_frame("snapshot", &object));
        pending.status_changed = true;
    }

    /// Writes `/api/history` (the `limit` newest summaries) into `out`, holding the state's
    /// lock only to copy pointers to them.
    pub fn write_history(&self, limit: usize, out: &mut impl io::Write) -> io::Result<()> {
        self.read(|state| state.recent(limit)).write_history(out)
    }

    /// Writes `/api/snapshots` (the `limit` newest API objects) into `out`, holding the
    /// state's lock only to copy pointers to them.
    pub fn write_snapshots(&self, limit: usize, out: &mut impl io::Write) -> io::Result<()> {
        self.read(|state| state.recent(limit)).write_snapshots(out)
    }

    /// One retained snapshot.
    pub fn snapshot(&self, id: u32) -> Option<Arc<state::Retained>> {
        self.read(|state| state.snapshot(id))
    }

    /// Runs `read` on the state.
    pub fn read<T>(&self, read: impl FnOnce(&ViewState) -> T) -> T {
        read(&self.state())
    }

    /// Updates the state with `update`; the new status goes out with the next publication.
    fn update(&self, update: impl FnOnce(&mut ViewState)) {
        update(&mut self.state());
        self.pending().status_changed = true;
    }

    /// Sends what is queued to every connected client (the publisher thread's work); never
    /// waits: a full backlog drops the oldest frame for clients that have not read it.
    fn publish(&self) {
        let pending = std::mem::take(&mut *self.pending());
        if self.shared.events.receiver_count() == 0 {
            return;
        }
        if pending.overflowed {
            let _ = self.shared.events.send(sse_frame("resync", "{}"));
        }
        for frame in pending.frames {
            let _ = self.shared.events.send(frame);
        }
        if pending.status_changed {
            let status = self.read(|state| state.status_json().to_string());
            let _ = self.shared.events.send(sse_frame("status", &status));
        }
    }

    /// A new stream client on `socket`; when [`MAX_STREAM_CLIENTS`] are connected already,
    /// the oldest is evicted: no longer counted, its `evicted` token cancelled (its stream sends
    /// the event and ends) and its connection shut down after [`EVICTION_GRACE`].
    fn subscribe(&self, socket: Option<ConnectionSocket>) -> Subscription {
        let mut streams = self.streams();
        if streams.open.len() >= MAX_STREAM_CLIENTS
            && let Some(oldest) = streams.open.pop_front()
        {
            log::info!(
                "web view: {MAX_STREAM_CLIENTS} live streams open; closing the oldest (#{}) for a new viewer",
                oldest.id
            );
            oldest.evicted.cancel();
            if let Some(socket) = oldest.socket {
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(async move {
                            tokio::time::sleep(EVICTION_GRACE).await;
                            socket.close();
                        });
                    }
                    Err(_) => socket.close(),
                }
            }
        }
        let id = streams.next;
        streams.next += 1;
        let evicted = CancellationToken::new();
        streams.open.push_back(OpenStream {
            id,
            evicted: evicted.clone(),
            socket,
        });
        Subscription {
            id,
            evicted,
            events: self.shared.events.subscribe(),
            shared: self.shared.clone(),
        }
    }

    /// Stream clients connected now.
    pub fn stream_clients(&self) -> usize {
        self.streams().open.len()
    }
}

/// One stream client's place in the broadcast; counted until dropped or evicted.
struct Subscription {
    /// Its number among the view's stream clients.
    id: u64,
    /// Cancelled when a newer client took its place: its stream then ends.
    evicted: CancellationToken,
    events: broadcast::Receiver<Bytes>,
    shared: Arc<Shared>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let view = WebView {
            shared: self.shared.clone(),
        };
        let mut streams = view.streams();
        if let Some(index) = streams.open.iter().position(|open| open.id == self.id) {
            streams.open.remove(index);
        }
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

    fn rolled_back(&self, done: &crate::controller::rollback::RollbackDone) {
        self.update(|state| state.rolled_back(done, now_ms()));
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
    fn a_new_stream_client_beyond_the_cap_evicts_the_oldest() {
        let view = WebView::new(&[], 0, 1);
        let mut clients: VecDeque<_> = (0..MAX_STREAM_CLIENTS)
            .map(|_| view.subscribe(None))
            .collect();
        assert!(clients.iter().all(|client| !client.evicted.is_cancelled()));
        assert_eq!(view.stream_clients(), MAX_STREAM_CLIENTS);
        let newest = view.subscribe(None);
        assert!(!newest.evicted.is_cancelled());
        assert!(
            clients[0].evicted.is_cancelled(),
            "the oldest is told to close"
        );
        assert!(
            clients
                .iter()
                .skip(1)
                .all(|client| !client.evicted.is_cancelled())
        );
        assert_eq!(view.stream_clients(), MAX_STREAM_CLIENTS);
        // The evicted one's stream ending does not uncount anyone else.
        drop(clients.pop_front());
        assert_eq!(view.stream_clients(), MAX_STREAM_CLIENTS);
        drop(clients);
        assert_eq!(view.stream_clients(), 1);
        drop(newest);
        assert_eq!(view.stream_clients(), 0);
    }

    fn report(id: u32) -> SnapshotReport {
        let local = crate::wire::pb::return_snapshot::LocalSnapshot {
            snapshot_id: id,
            balance: 5,
            channel_state: vec![0],
            ..Default::default()
        };
        let names = ["a".to_string(), "b".to_string()];
        SnapshotReport::assemble(
            id,
            "a",
            &names,
            vec![Ok(local.clone()), Ok(local)],
            10,
            Duration::ZERO,
        )
    }

    #[test]
    fn the_controller_only_queues_and_the_publisher_streams() {
        let view = WebView::new(&[], 10, 4);
        let mut client = view.subscribe(None);
        // Whatever the publisher thread already sent, drain it first.
        view.publish();
        while client.events.try_recv().is_ok() {}
        view.add_report(&report(1));
        view.snapshot_started(2, "a");
        // Queued, then published in order: the report, then the status (once per
        // publication, whether the publisher thread or this call sent it).
        view.publish();
        let frame = client.events.try_recv().unwrap();
        assert!(frame.starts_with(b"event: snapshot\ndata: {"));
        let mut statuses = 0;
        while let Ok(frame) = client.events.try_recv() {
            assert!(frame.starts_with(b"event: status\ndata: {"));
            statuses += 1;
        }
        assert!((1..=2).contains(&statuses), "{statuses}");
    }

    /// A writer that, at its first write (the reader is then in the middle of serialising),
    /// has another thread record a report and waits for it: the recording call must finish
    /// while the serialisation is held up (for as long as 10 s here).
    struct RecordWhileSerialising<'a> {
        view: &'a WebView,
        next_id: u32,
        recorded_within: Option<Option<Duration>>,
        bytes: usize,
    }

    impl std::io::Write for RecordWhileSerialising<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.recorded_within.is_none() {
                let (done, recorded) = std::sync::mpsc::channel();
                let view = self.view.clone();
                let id = self.next_id;
                let started = std::time::Instant::now();
                std::thread::spawn(move || {
                    view.add_report(&report(id));
                    let _ = done.send(started.elapsed());
                });
                self.recorded_within = Some(recorded.recv_timeout(Duration::from_secs(10)).ok());
            }
            self.bytes += buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn recording_a_report_never_waits_for_a_reader_serialising_the_history() {
        const HISTORY: u32 = 20_000;
        let view = WebView::new(&[], 10, HISTORY as usize);
        for id in 0..HISTORY {
            view.add_report(&report(id));
        }
        type Serialise = fn(&WebView, &mut RecordWhileSerialising) -> io::Result<()>;
        let readers: [(&str, Serialise); 2] = [
            ("/api/history", |view, out| {
                view.write_history(usize::MAX, out)
            }),
            ("/api/snapshots", |view, out| {
                view.write_snapshots(usize::MAX, out)
            }),
        ];
        for (next_id, (route, serialise)) in (HISTORY..).zip(readers) {
            let mut reader = RecordWhileSerialising {
                view: &view,
                next_id,
                recorded_within: None,
                bytes: 0,
            };
            serialise(&view, &mut reader).unwrap();
            let waited = reader.recorded_within.expect("something was written");
            assert!(
                waited.is_some(),
                "{route}: recording a report waited 10 s for a reader serialising the history"
            );
            assert!(
                reader.bytes > HISTORY as usize * 100,
                "{route}: {} bytes",
                reader.bytes
            );
            assert_eq!(
                view.read(|state| state.latest_id()),
                Some(next_id),
                "{route}"
            );
        }
    }

    #[test]
    fn a_client_that_never_reads_does_not_grow_the_backlog() {
        let view = WebView::new(&[], 10, 4);
        let mut stuck = view.subscribe(None);
        for id in 0..(STREAM_BACKLOG as u32 * 3) {
            view.add_report(&report(id));
            if id % 10 == 0 {
                view.publish();
            }
        }
        view.publish();
        assert_eq!(view.shared.events.len(), STREAM_BACKLOG);
        assert!(matches!(
            stuck.events.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }

    #[test]
    fn the_queue_for_the_publisher_is_bounded_too() {
        let view = WebView::new(&[], 10, 4);
        let _client = view.subscribe(None);
        for id in 0..(STREAM_BACKLOG as u32 + 10) {
            view.add_report(&report(id));
        }
        let pending = view.pending();
        assert!(pending.frames.len() <= STREAM_BACKLOG);
    }
}
