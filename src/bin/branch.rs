//! `branch <name> <port>`: runs one bank branch until Ctrl-C or SIGTERM.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use snapbank::auth::Secret;
use snapbank::branch::{BranchConfig, StartError, start_branch};
use snapbank::store::StoreOptions;

/// One branch of a snapbank bank. It waits for the controller's InitBranch, connects to the
/// other branches, sends them random transfers and takes part in Chandy-Lamport snapshots.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// This branch's name, as it appears in the controller's branches file (at most 255 bytes,
    /// no whitespace).
    #[arg(value_parser = parse_name)]
    name: String,
    /// TCP port to listen on (0 picks a free one and logs it).
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind_ip: IpAddr,
    /// Shortest pause between two outgoing transfers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    min_interval_ms: u64,
    /// Longest pause between two outgoing transfers, in milliseconds (0 with a minimum of 0:
    /// as fast as the connections take them).
    #[arg(long, default_value_t = 5000)]
    max_interval_ms: u64,
    /// Seed for the branch's random choices, for repeatable runs.
    #[arg(long)]
    seed: Option<u64>,
    /// Largest frame accepted from a connection, in bytes.
    #[arg(long, default_value_t = snapbank::wire::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// File holding the bank's cluster secret (at least 16 bytes; trailing whitespace is
    /// ignored). The branch then accepts only an InitBranch carrying the same secret, and a
    /// controller can attach with it later.
    #[arg(long)]
    secret_file: Option<std::path::PathBuf>,
    /// How long a new connection may take to send its first frame, and the other side of a
    /// handshake to answer, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    handshake_timeout_ms: u64,
    /// A peer connection that has received nothing (not even an answer to a heartbeat probe)
    /// for this many milliseconds is declared broken and redialled.
    #[arg(long, default_value_t = snapbank::branch::DEFAULT_PEER_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(3..))]
    peer_timeout_ms: u64,
    /// How long snapshots wait for a peer whose connection is down, in milliseconds, before
    /// they stop waiting for its markers (records cut short) until it comes back.
    #[arg(long, default_value_t = snapbank::branch::DEFAULT_PEER_GRACE.as_millis() as u64)]
    peer_grace_ms: u64,
    /// Most transfers sent to one peer and not yet acknowledged; beyond it the branch sends
    /// that peer nothing new until acknowledgements come.
    #[arg(long, default_value_t = snapbank::branch::DEFAULT_SEND_WINDOW as u64,
          value_parser = clap::value_parser!(u64).range(1..(u32::MAX as u64)))]
    send_window: u64,
    /// Keep the branch's state in a crash-safe store in this directory (created if missing):
    /// killed at any instant and started again with the same command line, the branch resumes
    /// with exactly the money, channels and snapshot records it had. Without it everything is
    /// in memory.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Start this branch afresh although its --data-dir holds a store file (empty, corrupt or
    /// whole): the file is renamed aside (branch.redb.reset-<seconds>), not deleted. Without
    /// it a present store file is never replaced, as it may hold the branch's money.
    #[arg(long, requires = "data_dir")]
    reset_store: bool,
    /// Accept a --data-dir or store that its group or others may read or write. The store
    /// holds the cluster secret, so by default such a directory is refused.
    #[arg(long, requires = "data_dir")]
    allow_shared_data_dir: bool,
    /// Once listening, write the port (a decimal number and a newline) to this file: how a
    /// script that started the branch on port 0 learns the port it got, with no window in which
    /// another process could take a port chosen for it in advance.
    #[arg(long)]
    port_file: Option<std::path::PathBuf>,
    /// Keep a report card of the controller driving this branch and write it to this file
    /// (JSON when it ends in .json, else one PASS/FAIL/INFO line per rule): after each
    /// RetrieveSnapshot and when the branch exits. A file that cannot be written is a warning.
    #[arg(long, value_name = "FILE")]
    grade_controller: Option<std::path::PathBuf>,
}

fn parse_name(name: &str) -> Result<String, String> {
    snapbank::config::check_name(name).map(|()| name.to_string())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .init();
    let args = Args::parse();
    if args.min_interval_ms > args.max_interval_ms {
        eprintln!(
            "error: --min-interval-ms {} is larger than --max-interval-ms {}",
            args.min_interval_ms, args.max_interval_ms
        );
        return ExitCode::from(2);
    }
    let secret = match args.secret_file.as_deref().map(Secret::load).transpose() {
        Ok(secret) => secret,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let config = BranchConfig {
        secret,
        handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
        peer_timeout: Duration::from_millis(args.peer_timeout_ms),
        peer_grace: Duration::from_millis(args.peer_grace_ms),
        send_window: usize::try_from(args.send_window).unwrap_or(usize::MAX),
        data_dir: args.data_dir,
        store_options: StoreOptions {
            reset: args.reset_store,
            allow_shared: args.allow_shared_data_dir,
        },
        min_interval: Duration::from_millis(args.min_interval_ms),
        max_interval: Duration::from_millis(args.max_interval_ms),
        seed: args.seed,
        max_frame: args.max_frame_bytes,
        grade_controller: args.grade_controller,
        ..BranchConfig::new(args.name, SocketAddr::new(args.bind_ip, args.port))
    };
    let port_file = args.port_file;
    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        let branch = start_branch(config).await?;
        if let Some(path) = &port_file {
            write_port_file(path, branch.addr.port()).map_err(|err| {
                StartError::PortFile(format!("cannot write {}: {err}", path.display()))
            })?;
        }
        let mut halted = branch.halted.clone();
        tokio::select! {
            () = wait_for_shutdown() => {}
            Ok(reason) = halted.wait_for(Option::is_some) => {
                return Ok(reason.clone());
            }
        }
        flush_and_stop(&branch).await;
        Ok::<_, StartError>(None)
    });
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(reason)) => {
            eprintln!("error: {reason}");
            ExitCode::from(2)
        }
        Err(err @ StartError::Store(_)) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `port` to `path` through a temporary file renamed into place, so a reader polling for
/// the file never sees it half written.
fn write_port_file(path: &std::path::Path, port: u16) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, format!("{port}\n"))?;
    std::fs::rename(&temporary, path)
}

/// Stops the branch's transfers and waits (at most 3 s) until what it already sent is written,
/// so the money in its outboxes reaches its peers instead of vanishing with the process.
async fn flush_and_stop(branch: &snapbank::branch::BranchHandle) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match branch.actor.send(snapbank::branch::Shutdown).await {
            Ok(0) | Err(_) => break,
            Ok(bytes) if tokio::time::Instant::now() >= deadline => {
                log::warn!("{bytes} bytes still unsent after 3 s; exiting anyway");
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    log::info!("stopped");
}

/// Resolves on Ctrl-C or SIGTERM.
async fn wait_for_shutdown() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                log::warn!("cannot listen for SIGTERM: {err}");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    log::info!("shutting down");
}
