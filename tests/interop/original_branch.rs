//! A minimal original-schema branch, as public implementations of the exercise write them:
//! blocking sockets, a thread per connection, one lock over the state, v1 messages only
//! ([`super::v1`]). It is a real bank (transfers between branches, Chandy-Lamport markers,
//! concurrent snapshots, money conserved) so that snapshots taken of it mean something.
//!
//! Its controller connection pattern is one of the two found in such implementations:
//! - [`ControllerPattern::OneFramePerConnection`]: it reads exactly one frame from each
//!   connection it accepts, answers a `RetrieveSnapshot` on that connection, and closes it;
//! - [`ControllerPattern::Persistent`]: the first connection it accepts (that is not a peer's)
//!   is the controller's and is read until it closes; any later one is closed unread.
//!
//! Like them it ignores everything it does not know. By default `RetrieveSnapshot` is answered
//! at once with whatever it holds (a partial record while still recording; zeros for a
//! snapshot it has not seen). A [`Behaviour`] makes it behave as other implementations do:
//! - slow, as a public Java implementation is: markers sent after a pause, transfers holding
//!   the lock across a sleep, and a `RetrieveSnapshot` answered only once the record is
//!   finished ([`Answer::OnceRecorded`]: before that the connection is closed unanswered, or,
//!   on the persistent controller connection, the request goes unanswered);
//! - broken in one way ([`Flaw`]), for the report card to catch: `channel_state` in reverse
//!   order, one channel missing, balances let go negative.
//!
//! Peer identification, which the original schema does not provide, is this test's own and
//! uses v1 messages only: a branch opens one connection to every other branch after its
//! `InitBranch` and sends on it an `InitBranch` listing only itself (balance 0), then only
//! `Transfer`s and `Marker`s; it never reads from a connection it opened. So each directed
//! channel is one TCP stream (FIFO), read by one thread, and a branch's sends happen under its
//! lock, in the order its state changed.

use std::collections::HashMap;
use std::io::{BufReader, ErrorKind};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::v1::{self, Msg};

/// How an original-schema branch treats the connections a controller opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerPattern {
    /// One frame per accepted connection; a `RetrieveSnapshot` answered on it.
    OneFramePerConnection,
    /// The first accepted (non-peer) connection is the controller's; later ones are closed.
    Persistent,
}

/// When a branch answers a `RetrieveSnapshot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// At once, with whatever it holds (partial, or zeros for a snapshot it has not seen).
    AtOnce,
    /// Only once its record is finished (every incoming channel's marker in); before that it
    /// closes the connection unanswered (one frame per connection) or ignores the request (on
    /// the persistent controller connection).
    OnceRecorded,
}

/// A defect of the exercise seen in implementations, for the report card to name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// `channel_state` lists the other branches in reverse `all_branches` order.
    ReversedChannels,
    /// `channel_state` leaves out the last other branch.
    MissingChannel,
    /// Transfers go out whether or not the money is there, so balances go negative (sent as a
    /// 32-bit int, as Java's `int` is: a negative one reads as a number of 2^31 or more).
    Overdraws,
}

/// How an original-schema branch behaves.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// Which controller connections it serves.
    pub pattern: ControllerPattern,
    /// When it answers a `RetrieveSnapshot`.
    pub answer: Answer,
    /// Pause between recording its state and sending its markers, the lock held.
    pub marker_pause: Duration,
    /// Pause before each marker after the first, the lock held: a branch's peers record one
    /// after another, so channels between them carry money in transit.
    pub marker_spacing: Duration,
    /// How long a transfer holds the lock (sleeping) before it goes out.
    pub transfer_hold: Duration,
    /// A defect, or none.
    pub flaw: Option<Flaw>,
}

impl Behaviour {
    /// A quick branch answering at once, serving `pattern`.
    pub fn quick(pattern: ControllerPattern) -> Self {
        Self {
            pattern,
            answer: Answer::AtOnce,
            marker_pause: Duration::ZERO,
            marker_spacing: Duration::ZERO,
            transfer_hold: Duration::ZERO,
            flaw: None,
        }
    }

    /// A quick branch with `flaw`, whose snapshots take long enough (markers after 300 ms,
    /// 60 ms apart) for an early ask to come before the record is finished and for channels
    /// between non-initiators to carry money; serving one frame per connection.
    pub fn flawed(flaw: Option<Flaw>, answer: Answer) -> Self {
        Self {
            pattern: ControllerPattern::OneFramePerConnection,
            answer,
            marker_pause: Duration::from_millis(300),
            marker_spacing: Duration::from_millis(60),
            transfer_hold: Duration::ZERO,
            flaw,
        }
    }

    /// A branch as a public Java implementation behaves, serving `pattern`: markers after a
    /// 1 s pause, transfers holding the lock for 400 ms, records answered only once finished.
    pub fn slow(pattern: ControllerPattern) -> Self {
        Self {
            pattern,
            answer: Answer::OnceRecorded,
            marker_pause: Duration::from_secs(1),
            marker_spacing: Duration::ZERO,
            transfer_hold: Duration::from_millis(400),
            flaw: None,
        }
    }
}

/// What a branch did with the connections it accepted, for the tests to check.
#[derive(Debug, Default)]
pub struct Stats {
    /// Controller commands read (frames on non-peer connections).
    pub commands: AtomicUsize,
    /// Non-peer connections accepted and served.
    pub controller_connections: AtomicUsize,
    /// Non-peer connections closed unread (persistent pattern: not the first one).
    pub refused_connections: AtomicUsize,
    /// `RetrieveSnapshot`s left unanswered because the record was not finished.
    pub unanswered: AtomicUsize,
}

/// One snapshot's record at one branch.
struct Snap {
    balance: i64,
    /// Money recorded in transit, per branch index (all_branches order).
    channel: Vec<u64>,
    /// Incoming channels still recording, per branch index.
    recording: Vec<bool>,
}

/// A branch once its `InitBranch` has come.
struct Bank {
    names: Vec<String>,
    me: usize,
    initial: u64,
    balance: i64,
    /// The connection to every other branch, by index; all set once `ready`.
    out: Vec<Option<TcpStream>>,
    ready: bool,
    snapshots: HashMap<u32, Snap>,
    behaviour: Behaviour,
}

impl Bank {
    /// Records this branch's state for snapshot `id` and sends markers on every outgoing
    /// channel. `from`: the channel whose marker caused it (recorded empty).
    fn record(&mut self, id: u32, from: Option<usize>) {
        let n = self.names.len();
        let recording = (0..n).map(|k| k != self.me && Some(k) != from).collect();
        self.snapshots.insert(
            id,
            Snap {
                balance: self.balance,
                channel: vec![0; n],
                recording,
            },
        );
        std::thread::sleep(self.behaviour.marker_pause);
        for (k, stream) in self.out.iter_mut().flatten().enumerate() {
            if k > 0 {
                std::thread::sleep(self.behaviour.marker_spacing);
            }
            let _ = v1::write(stream, Msg::Marker(v1::Marker { snapshot_id: id }));
        }
    }

    fn on_transfer(&mut self, from: usize, money: u32) {
        self.balance += i64::from(money);
        for snap in self.snapshots.values_mut() {
            if snap.recording[from] {
                snap.channel[from] += u64::from(money);
            }
        }
    }

    fn on_marker(&mut self, from: usize, id: u32) {
        match self.snapshots.get_mut(&id) {
            Some(snap) => snap.recording[from] = false,
            None => self.record(id, Some(from)),
        }
    }

    /// The answer to `RetrieveSnapshot(id)`: `channel_state` has one entry per other branch,
    /// in all_branches order (unless the branch's flaw says otherwise). `None` when the branch
    /// answers only finished records and this one is not.
    fn answer(&self, id: u32) -> Option<v1::LocalSnapshot> {
        let others = (0..self.names.len()).filter(|&k| k != self.me);
        let finished = self
            .snapshots
            .get(&id)
            .is_some_and(|snap| !snap.recording.iter().any(|&r| r));
        if self.behaviour.answer == Answer::OnceRecorded && !finished {
            return None;
        }
        let (balance, mut channel_state): (i64, Vec<u32>) = match self.snapshots.get(&id) {
            Some(snap) => (
                snap.balance,
                others.map(|k| snap.channel[k] as u32).collect(),
            ),
            None => (0, others.map(|_| 0).collect()),
        };
        match self.behaviour.flaw {
            Some(Flaw::ReversedChannels) => channel_state.reverse(),
            Some(Flaw::MissingChannel) => {
                channel_state.pop();
            }
            Some(Flaw::Overdraws) | None => {}
        }
        Some(v1::LocalSnapshot {
            snapshot_id: id,
            // A 32-bit int, as Java's: a negative balance wraps.
            balance: balance as i32 as u32,
            channel_state,
        })
    }
}

struct Shared {
    name: String,
    addr: SocketAddr,
    behaviour: Behaviour,
    bank: Mutex<Option<Bank>>,
    changed: Condvar,
    controller_taken: AtomicBool,
    stop: AtomicBool,
    /// A clone of every stream, shut down when the branch stops so no thread stays blocked.
    streams: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Stats,
    seed: u64,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Bank>> {
        self.bank
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn keep(&self, stream: &TcpStream) {
        if let Ok(clone) = stream.try_clone() {
            self.streams.lock().unwrap().push(clone);
        }
    }

    fn spawn(self: &Arc<Self>, work: impl FnOnce(Arc<Shared>) + Send + 'static) {
        let shared = self.clone();
        let handle = std::thread::spawn(move || work(shared));
        self.threads.lock().unwrap().push(handle);
    }

    /// Waits (at most 10 s) until the bank exists and every outgoing connection is up.
    fn ready(&self) -> Option<MutexGuard<'_, Option<Bank>>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut guard = self.lock();
        while !guard.as_ref().is_some_and(|bank| bank.ready) {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.stopped() || left.is_zero() {
                return None;
            }
            guard = self
                .changed
                .wait_timeout(guard, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        Some(guard)
    }
}

/// One running original-schema branch (threads in this process).
pub struct OriginalBranch {
    shared: Arc<Shared>,
}

impl OriginalBranch {
    pub fn start(name: &str, behaviour: Behaviour, seed: u64) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            addr: listener.local_addr().unwrap(),
            behaviour,
            bank: Mutex::new(None),
            changed: Condvar::new(),
            controller_taken: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            stats: Stats::default(),
            seed,
        });
        shared.spawn(move |shared| accept_loop(&shared, listener));
        Self { shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Stops every thread: closes the listener and every connection, then waits (2 s at most).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        for stream in self.shared.streams.lock().unwrap().iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let threads = std::mem::take(&mut *self.shared.threads.lock().unwrap());
        for handle in threads {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for OriginalBranch {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    while !shared.stopped() {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                shared.keep(&stream);
                shared.spawn(move |shared| serve(&shared, stream));
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A new connection, closed when served (shut down: a clone of it is kept for [`stop`]).
///
/// [`stop`]: OriginalBranch::stop
fn serve(shared: &Arc<Shared>, stream: TcpStream) {
    serve_connection(shared, &stream);
    let _ = stream.shutdown(Shutdown::Both);
}

/// A peer's connection (its first frame an `InitBranch` naming one branch) or a controller's.
fn serve_connection(shared: &Arc<Shared>, stream: &TcpStream) {
    let mut stream = stream.try_clone().unwrap();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let first = match v1::read(&mut stream) {
        Ok(Some(Some(msg))) => msg,
        _ => return,
    };
    let _ = stream.set_read_timeout(None);
    if let Msg::InitBranch(hello) = &first
        && hello.all_branches.len() == 1
    {
        let peer = hello.all_branches[0].name.clone();
        return serve_peer(shared, stream, &peer);
    }
    match shared.behaviour.pattern {
        ControllerPattern::OneFramePerConnection => {
            shared
                .stats
                .controller_connections
                .fetch_add(1, Ordering::Relaxed);
            command(shared, first, &mut stream);
            // Exactly one frame per connection: closed here.
        }
        ControllerPattern::Persistent => {
            if shared.controller_taken.swap(true, Ordering::Relaxed) {
                shared
                    .stats
                    .refused_connections
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            shared
                .stats
                .controller_connections
                .fetch_add(1, Ordering::Relaxed);
            command(shared, first, &mut stream);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            while let Ok(Some(frame)) = v1::read(&mut reader) {
                if let Some(msg) = frame {
                    command(shared, msg, &mut stream);
                }
            }
        }
    }
}

/// A controller command.
fn command(shared: &Arc<Shared>, msg: Msg, stream: &mut TcpStream) {
    shared.stats.commands.fetch_add(1, Ordering::Relaxed);
    match msg {
        Msg::InitBranch(init) => init_branch(shared, init),
        Msg::InitSnapshot(v1::InitSnapshot { snapshot_id }) => {
            if let Some(mut guard) = shared.ready()
                && let Some(bank) = guard.as_mut()
                && !bank.snapshots.contains_key(&snapshot_id)
            {
                bank.record(snapshot_id, None);
            }
        }
        Msg::RetrieveSnapshot(v1::RetrieveSnapshot { snapshot_id }) => {
            let answer = shared.lock().as_ref().map(|bank| bank.answer(snapshot_id));
            if answer.as_ref().is_some_and(Option::is_none) {
                shared.stats.unanswered.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(Some(local)) = answer {
                let _ = v1::write(
                    stream,
                    Msg::ReturnSnapshot(v1::ReturnSnapshot {
                        local_snapshot: Some(local),
                    }),
                );
            }
        }
        _ => {}
    }
}

fn init_branch(shared: &Arc<Shared>, init: v1::InitBranch) {
    let mut guard = shared.lock();
    if guard.is_some() {
        return;
    }
    let names: Vec<String> = init.all_branches.iter().map(|b| b.name.clone()).collect();
    let Some(me) = names.iter().position(|name| *name == shared.name) else {
        return;
    };
    let n = names.len();
    *guard = Some(Bank {
        names,
        me,
        initial: u64::from(init.balance),
        balance: i64::from(init.balance),
        out: (0..n).map(|_| None).collect(),
        ready: false,
        snapshots: HashMap::new(),
        behaviour: shared.behaviour,
    });
    drop(guard);
    let branches = init.all_branches;
    shared.spawn(move |shared| connect_peers(&shared, branches, me));
}

/// Opens this branch's connection to every other branch, then starts sending money.
fn connect_peers(shared: &Arc<Shared>, branches: Vec<v1::Branch>, me: usize) {
    let hello = Msg::InitBranch(v1::InitBranch {
        balance: 0,
        all_branches: vec![branches[me].clone()],
    });
    let mut out: Vec<Option<TcpStream>> = (0..branches.len()).map(|_| None).collect();
    for (k, branch) in branches.iter().enumerate().filter(|&(k, _)| k != me) {
        let addr: SocketAddr = format!("{}:{}", branch.ip, branch.port).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            if shared.stopped() || Instant::now() >= deadline {
                return;
            }
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(stream) => break stream,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let _ = stream.set_nodelay(true);
        shared.keep(&stream);
        if v1::write(&mut stream, hello.clone()).is_err() {
            return;
        }
        out[k] = Some(stream);
    }
    if let Some(bank) = shared.lock().as_mut() {
        bank.out = out;
        bank.ready = true;
    }
    shared.changed.notify_all();
    generate(shared);
}

/// Sends 1-5 % of the initial balance to a random peer every 1-5 ms (plus the behaviour's hold,
/// the lock held), while it has the money; a branch that overdraws sends 40-80 % whether or not.
fn generate(shared: &Arc<Shared>) {
    let mut rng = shared.seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    while !shared.stopped() {
        std::thread::sleep(Duration::from_millis(1 + next() % 5));
        let mut guard = shared.lock();
        let Some(bank) = guard.as_mut() else {
            continue;
        };
        std::thread::sleep(bank.behaviour.transfer_hold);
        let overdraws = bank.behaviour.flaw == Some(Flaw::Overdraws);
        let percent = if overdraws {
            40 + next() % 41
        } else {
            1 + next() % 5
        };
        let amount = (bank.initial * percent / 100).max(1);
        if bank.balance < amount as i64 && !overdraws {
            continue;
        }
        let peers: Vec<usize> = (0..bank.names.len()).filter(|&k| k != bank.me).collect();
        let to = peers[(next() % peers.len() as u64) as usize];
        bank.balance -= amount as i64;
        if let Some(stream) = bank.out[to].as_mut()
            && v1::write(
                stream,
                Msg::Transfer(v1::Transfer {
                    money: amount as u32,
                }),
            )
            .is_err()
        {
            return; // the bank is being torn down
        }
    }
}

/// Reads a peer's channel: transfers and markers, in order.
fn serve_peer(shared: &Arc<Shared>, stream: TcpStream, peer: &str) {
    let Some(from) = shared
        .ready()
        .and_then(|guard| guard.as_ref()?.names.iter().position(|name| name == peer))
    else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while let Ok(Some(frame)) = v1::read(&mut reader) {
        let mut guard = shared.lock();
        let Some(bank) = guard.as_mut() else {
            return;
        };
        match frame {
            Some(Msg::Transfer(v1::Transfer { money })) => bank.on_transfer(from, money),
            Some(Msg::Marker(v1::Marker { snapshot_id })) => bank.on_marker(from, snapshot_id),
            _ => {}
        }
    }
}

/// A bank of original-schema branches `b1`... with a branches file for a controller.
pub struct OriginalBank {
    pub branches: Vec<OriginalBranch>,
    dir: PathBuf,
}

impl OriginalBank {
    pub fn start(count: usize, pattern: ControllerPattern) -> Self {
        Self::start_with(count, Behaviour::quick(pattern))
    }

    /// A bank of `count` branches that all behave as `behaviour` says.
    pub fn start_with(count: usize, behaviour: Behaviour) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("snapbank-interop-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let branches: Vec<OriginalBranch> = (1..=count)
            .map(|i| OriginalBranch::start(&format!("b{i}"), behaviour, 0x9e37_79b9 * i as u64))
            .collect();
        let file: String = branches
            .iter()
            .map(|b| format!("{} 127.0.0.1 {}\n", b.shared.name, b.addr().port()))
            .collect();
        std::fs::write(dir.join("branches.txt"), file).unwrap();
        Self { branches, dir }
    }

    pub fn branches_file(&self) -> PathBuf {
        self.dir.join("branches.txt")
    }
}

impl Drop for OriginalBank {
    fn drop(&mut self) {
        for branch in &self.branches {
            branch.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
