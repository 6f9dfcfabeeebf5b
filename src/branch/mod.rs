//! A live branch: the actors that carry [`crate::core::node::BranchNode`]'s decisions over TCP.
//!
//! - [`actor`]: `BranchActor`, owner of the node; classifies connections, dials peers, draws the
//!   generator's random numbers, runs timers and commits, carries out the node's `Ready`.
//! - [`connection`]: `PeerConnection`, one per TCP stream, forwarding decoded frames in order.
//! - [`recorder`]: `SnapshotRecorder`, one per snapshot record the node keeps, running that
//!   record's timers (its age limit, the retrieves held for it) so they end with it.
//! - [`listener`]: the accept loop and the first-frame deadline.
//! - [`traffic`]: the random transfer generator's pacing, draws and parking.
//! - [`grading`]: the report card of the controller driving this branch (no I/O), and
//!   [`grade_file`], where `--grade-controller FILE` writes it.
//!
//! Who dials whom: of each pair, the branch whose name sorts lower dials the other and sends
//! `Hello` (naming itself) as its first frame, so every pair has exactly one connection, used in
//! both directions. When that connection fails, the same branch redials, and the channel
//! resumes where it stopped (see [`crate::core::channel`]).

pub mod actor;
pub mod connection;
pub mod grade_file;
pub mod grading;
pub mod listener;
pub mod recorder;
pub mod traffic;

use std::net::SocketAddr;
use std::time::Duration;

pub use actor::{BranchActor, BranchStatus, GetStatus, Shutdown};

/// Default of [`BranchConfig::peer_timeout`].
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// Default of [`BranchConfig::peer_grace`].
pub const DEFAULT_PEER_GRACE: Duration = Duration::from_secs(10);

/// Default of [`BranchConfig::send_window`].
pub const DEFAULT_SEND_WINDOW: usize = 16 * 1024;

/// How to run one branch.
#[derive(Debug, Clone)]
pub struct BranchConfig {
    /// This branch's name; must match its entry in the controller's branches file.
    pub name: String,
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Shortest pause between two outgoing transfers.
    pub min_interval: Duration,
    /// Longest pause between two outgoing transfers; 0 with `min_interval` 0 sends as fast as
    /// the connections take them.
    pub max_interval: Duration,
    /// Seed for the branch's random choices (targets, amounts, pauses), for repeatable runs.
    pub seed: Option<u64>,
    /// Largest frame accepted from any connection.
    pub max_frame: usize,
    /// The cluster secret from `--secret-file`: the branch then knows it before `InitBranch`
    /// (so a controller can attach), and refuses an `InitBranch` with another one.
    pub secret: Option<crate::auth::Secret>,
    /// How long a new connection may take to send its first frame, and the other side of a
    /// handshake to answer: a silent connection is dropped after this.
    pub handshake_timeout: Duration,
    /// A peer connection that has received nothing (not even a heartbeat answer) for this long
    /// is declared broken and redialled; probes go out after a third of it.
    pub peer_timeout: Duration,
    /// How long snapshots wait for a peer whose connection is down before they stop waiting for
    /// its markers (their records are then cut short).
    pub peer_grace: Duration,
    /// Most transfers sent to one peer and not yet acknowledged; beyond it the branch sends that
    /// peer nothing new until acknowledgements come (backpressure, never a drop).
    pub send_window: usize,
    /// Where the branch keeps its durable state (`--data-dir`); `None` keeps everything in
    /// memory, and a crash loses the branch's money.
    pub data_dir: Option<std::path::PathBuf>,
    /// What the operator allowed when opening the store (`--reset-store`,
    /// `--allow-shared-data-dir`); by default a present store is never replaced and a shared
    /// one is refused.
    pub store_options: crate::store::StoreOptions,
    /// Where to write the report card of the controller driving this branch
    /// (`--grade-controller`); `None` keeps no card and costs nothing.
    pub grade_controller: Option<std::path::PathBuf>,
}

impl BranchConfig {
    /// The defaults of the `branch` command: transfers every 0-5 s.
    pub fn new(name: impl Into<String>, listen: SocketAddr) -> Self {
        Self {
            name: name.into(),
            listen,
            min_interval: Duration::ZERO,
            max_interval: Duration::from_secs(5),
            seed: None,
            max_frame: crate::wire::DEFAULT_MAX_FRAME_BYTES,
            secret: None,
            handshake_timeout: Duration::from_secs(10),
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            peer_grace: DEFAULT_PEER_GRACE,
            send_window: DEFAULT_SEND_WINDOW,
            data_dir: None,
            store_options: crate::store::StoreOptions::default(),
            grade_controller: None,
        }
    }
}

/// A running branch.
#[derive(Debug, Clone)]
pub struct BranchHandle {
    /// The address actually listened on (the real port when the config asked for port 0).
    pub addr: SocketAddr,
    /// The branch's actor, for status queries.
    pub actor: actix::Addr<BranchActor>,
    /// `Some(reason)` once the branch has halted (see [`BranchActor::halted`]).
    pub halted: tokio::sync::watch::Receiver<Option<String>>,
}

/// Why a branch cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// The `branch` command could not tell where it listens (`--port-file`).
    #[error("{0}")]
    PortFile(String),
}

/// Opens the branch's store (with `data_dir`), binds the listening socket and starts the
/// branch on the current actix system, resuming the store's state if it holds one.
pub async fn start_branch(config: BranchConfig) -> Result<BranchHandle, StartError> {
    let (store, restored) = match &config.data_dir {
        Some(dir) => {
            let (store, restored) = crate::store::Store::open(
                dir,
                &config.name,
                config.secret.as_ref(),
                config.store_options,
            )?;
            (Some(store), restored)
        }
        None => (None, None),
    };
    let listen = |source| StartError::Listen {
        addr: config.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(listen)?;
    let addr = listener.local_addr().map_err(listen)?;
    log::info!("{}: listening on {addr}", config.name);
    if restored.is_some() {
        log::info!(
            "{}: resuming the state kept in {}",
            config.name,
            config
                .data_dir
                .as_deref()
                .map(|dir| dir.display().to_string())
                .unwrap_or_default()
        );
    }
    let branch = BranchActor::new(config, addr.port(), store, restored);
    let halted = branch.halted();
    let actor = actor::start_accepting(branch, listener);
    Ok(BranchHandle {
        addr,
        actor,
        halted,
    })
}
