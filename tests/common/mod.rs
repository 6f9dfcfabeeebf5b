//! Helpers shared by the integration tests: a blocking raw protocol client.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use snapbank::auth::{Role, Secret};
use snapbank::wire::{self, Body, FrameCodec, pb};
use tokio_util::codec::Decoder;

/// A blocking controller-side connection to one branch.
pub struct RawController {
    pub stream: TcpStream,
    codec: FrameCodec,
    buffer: BytesMut,
}

impl RawController {
    /// Wraps an already connected stream.
    pub fn from_stream(stream: TcpStream) -> Self {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            stream,
            codec: FrameCodec::default(),
            buffer: BytesMut::new(),
        }
    }

    pub fn connect(addr: SocketAddr) -> Self {
        Self::from_stream(connect_when_listening(addr))
    }

    /// Runs the controller handshake with `secret`, as an attaching controller does, as an
    /// anonymous controller, and checks it was granted the branch's controller lease.
    pub fn attach(addr: SocketAddr, branch: &str, secret: &Secret) -> Self {
        let mut controller = Self::connect(addr);
        let nonce = snapbank::auth::nonce();
        controller.send(Body::ControllerHello(pb::ControllerHello {
            nonce: nonce.clone(),
            ..Default::default()
        }));
        let Body::Welcome(welcome) = controller.receive() else {
            panic!("expected Welcome");
        };
        let next_id = welcome.next_snapshot_id.to_string();
        assert!(secret.verify(&welcome.proof, Role::Branch, &nonce, branch, &next_id));
        let proof = secret.prove(Role::Controller, &welcome.nonce, branch, "");
        controller.send(Body::Auth(pb::Auth { proof }));
        match controller.receive() {
            Body::ControllerLease(lease)
                if lease.outcome == pb::controller_lease::Outcome::Granted as i32 => {}
            other => panic!("expected the controller lease, got {other:?}"),
        }
        controller
    }

    pub fn send(&mut self, body: Body) {
        let mut bytes = Vec::new();
        wire::encode_frame(body, &mut bytes);
        self.stream.write_all(&bytes).unwrap();
    }

    /// The next frame, answering (and skipping) heartbeat probes as a controller does: in a
    /// bank with a secret the branch probes a silent controller.
    pub fn receive(&mut self) -> Body {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buffer).unwrap() {
                match frame.branch_message.unwrap() {
                    Body::Heartbeat(pb::Heartbeat { reply: false }) => {
                        self.send(Body::Heartbeat(pb::Heartbeat { reply: true }));
                        continue;
                    }
                    Body::Heartbeat(_) => continue,
                    body => return body,
                }
            }
            let mut chunk = [0u8; 4096];
            let read = self.stream.read(&mut chunk).unwrap();
            assert!(read > 0, "branch closed the controller connection");
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    pub fn retrieve(&mut self, id: u32) -> pb::return_snapshot::LocalSnapshot {
        self.send(Body::RetrieveSnapshot(pb::RetrieveSnapshot {
            snapshot_id: id,
            wait_ms: 5000,
        }));
        match self.receive() {
            Body::ReturnSnapshot(pb::ReturnSnapshot {
                local_snapshot: Some(local),
            }) => local,
            other => panic!("expected ReturnSnapshot, got {other:?}"),
        }
    }
}

/// Whether the other side closes `stream` (EOF or reset) within `limit`, reading and discarding
/// whatever it sends first.
pub fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err)
                if err.kind() == std::io::ErrorKind::WouldBlock
                    || err.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Writes one frame to a raw stream.
pub fn write_frame(stream: &mut TcpStream, body: Body) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    wire::encode_frame(body, &mut bytes);
    stream.write_all(&bytes)
}

/// Runs a command to completion within a minute, so a hung process fails the test instead of
/// hanging the suite.
pub trait RunLimited {
    fn run_limited(&mut self) -> std::process::Output;
}

impl RunLimited for std::process::Command {
    fn run_limited(&mut self) -> std::process::Output {
        snapbank::local_bank::output_within(self, Duration::from_secs(60))
            .expect("the command finishes within 60 s")
    }
}

/// Connects to `addr`, retrying for up to 5 s while the branch starts listening.
pub fn connect_when_listening(addr: SocketAddr) -> TcpStream {
    for _ in 0..200 {
        if let Ok(stream) = TcpStream::connect(addr) {
            return stream;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("branch at {addr} never listened");
}

/// Sends a `Hello` claiming to be branch `name`, with a fresh nonce.
pub fn claim_to_be(stream: &mut TcpStream, name: &str) {
    write_frame(
        stream,
        Body::Hello(pb::Hello {
            name: name.into(),
            nonce: snapbank::auth::nonce(),
            known_incarnation: 0,
        }),
    )
    .unwrap();
}

/// A controller process, killed on drop whatever happens. Its output goes to files in the
/// bank's directory (a pipe nobody reads would block it).
pub struct ControllerProcess {
    child: std::process::Child,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

impl ControllerProcess {
    pub fn start(bank: &snapbank::local_bank::LocalBank, total: &str, args: &[&str]) -> Self {
        Self::start_named(bank, "controller", total, args)
    }

    /// [`Self::start`], its output in files named after `name`, so several can run at once.
    pub fn start_named(
        bank: &snapbank::local_bank::LocalBank,
        name: &str,
        total: &str,
        args: &[&str],
    ) -> Self {
        let stdout = bank.dir().join(format!("{name}.out"));
        let stderr = bank.dir().join(format!("{name}.err"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_controller"))
            .arg(total)
            .arg(bank.branches_file())
            .args(["--format", "json"])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("create the output file"))
            .stderr(std::fs::File::create(&stderr).expect("create the log file"))
            .spawn()
            .expect("start the controller");
        Self {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most `limit`) until the controller has printed `count` reports; returns them.
    pub fn wait_for_reports(&self, count: usize, limit: Duration) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let stdout = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            // Only whole lines: the last one may still be being written.
            let reports: Vec<serde_json::Value> = stdout
                .split_inclusive('\n')
                .filter(|line| line.ends_with('\n'))
                .map(|line| serde_json::from_str(line).expect("one JSON report per line"))
                .collect();
            if reports.len() >= count {
                return reports;
            }
            let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            assert!(
                std::time::Instant::now() < deadline,
                "{count} reports did not come within {limit:?}; got {}; its log:\n{stderr}",
                reports.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most `limit`) for the controller to exit; returns its exit code, its reports
    /// and its stderr.
    pub fn finish(mut self, limit: Duration) -> (Option<i32>, Vec<serde_json::Value>, String) {
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll the controller") {
                break Some(status);
            }
            if std::time::Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stdout = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: String = stderr.lines().rev().take(40).collect::<Vec<_>>().join("\n");
        let status = status.unwrap_or_else(|| {
            panic!("the controller did not finish in time; its log ends (newest first):\n{tail}")
        });
        let reports = stdout
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON report per line"))
            .collect();
        (status.code(), reports, stderr)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each report's verdict (`ok`, `incomplete`...), in order.
pub fn verdicts(reports: &[serde_json::Value]) -> Vec<String> {
    reports
        .iter()
        .map(|report| report["verdict"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Transfers sent by all branches before their cut, from a report's own counters.
pub fn transfers_sent(report: &serde_json::Value) -> u64 {
    report["branches"]
        .as_array()
        .map(|branches| {
            branches
                .iter()
                .filter_map(|branch| branch["transfers_sent"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// Writes, in `bank`'s directory, a branches file for its first two branches with their names
/// and ports swapped (branch2 where branch1 listens, and the reverse), and returns its path:
/// each branch must refuse the `InitBranch` that gives it the other's place.
pub fn swapped_branches_file(bank: &snapbank::local_bank::LocalBank) -> std::path::PathBuf {
    let swapped = bank.dir().join("swapped.txt");
    let [one, two] = [&bank.entries()[0], &bank.entries()[1]];
    std::fs::write(
        &swapped,
        format!(
            "branch2 127.0.0.1 {}\nbranch1 127.0.0.1 {}\n",
            one.addr.port(),
            two.addr.port()
        ),
    )
    .expect("write the swapped branches file");
    swapped
}

/// A raw peer connection claiming to be branch `name` towards `acceptor`, past the peer
/// handshake with `secret` (in a bank without one, [`Secret::none`]: anybody can compute those
/// proofs). The test then speaks the channel protocol itself.
pub struct RawPeer {
    pub stream: TcpStream,
    codec: FrameCodec,
    buffer: BytesMut,
}

impl RawPeer {
    pub fn dial(addr: SocketAddr, name: &str, acceptor: &str, secret: &Secret) -> Self {
        let mut stream = connect_when_listening(addr);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let nonce = snapbank::auth::nonce();
        write_frame(
            &mut stream,
            Body::Hello(pb::Hello {
                name: name.into(),
                nonce: nonce.clone(),
                known_incarnation: 0,
            }),
        )
        .unwrap();
        let mut peer = Self {
            stream,
            codec: FrameCodec::default(),
            buffer: BytesMut::new(),
        };
        let Some(Body::Welcome(welcome)) = peer.receive() else {
            panic!("expected a Welcome from {acceptor}");
        };
        assert!(secret.verify(&welcome.proof, Role::Accept, &nonce, acceptor, name));
        let proof = secret.prove(Role::Dial, &welcome.nonce, name, acceptor);
        peer.send(Body::Auth(pb::Auth { proof }));
        peer
    }

    pub fn send(&mut self, body: Body) {
        write_frame(&mut self.stream, body).unwrap();
    }

    /// The next frame, or `None` once the connection is closed or silent for the read timeout.
    pub fn receive(&mut self) -> Option<Body> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buffer).ok()? {
                return frame.branch_message;
            }
            let mut chunk = [0u8; 4096];
            let read = self.stream.read(&mut chunk).ok()?;
            if read == 0 {
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// A private temporary directory holding a cluster secret file, removed on drop.
pub struct SecretDir {
    pub dir: std::path::PathBuf,
    pub file: std::path::PathBuf,
}

impl SecretDir {
    /// A fresh one for the test named by `tag`, its secret a line naming the test.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("snapbank-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, format!("the secret of the {tag} test's bank\n")).unwrap();
        Self { dir, file }
    }

    /// The secret file's path, as a command-line argument.
    pub fn path(&self) -> &str {
        self.file.to_str().expect("a UTF-8 temporary path")
    }

    /// The secret, as the bank's programs read it.
    pub fn secret(&self) -> Secret {
        Secret::load(&self.file).expect("the secret file reads back")
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A bank of two: the real branch `branch1` (with `--max-interval-ms 1000` and `secret`) and
/// `a0`, played by the test through a [`RawPeer`] (it dials, since its name sorts first). The
/// returned controller is attached to branch1 and has initialised it with balance 100.
pub fn bank_with_the_test_as_a0(
    branch_bin: &str,
    secret: &SecretDir,
) -> (snapbank::local_bank::LocalBank, RawController) {
    let args = ["--max-interval-ms", "1000", "--secret-file", secret.path()].map(String::from);
    let bank = snapbank::local_bank::LocalBank::start(branch_bin.as_ref(), 1, &args).unwrap();
    let target = bank.entries()[0].addr;
    let mut members = wire::branch_list(bank.entries());
    members.insert(
        0,
        pb::init_branch::Branch {
            name: "a0".into(),
            ip: "127.0.0.1".into(),
            port: u32::from(snapbank::local_bank::free_ports(1).unwrap()[0]),
        },
    );
    let mut controller = RawController::attach(target, "branch1", &secret.secret());
    controller.send(Body::InitBranch(pb::InitBranch {
        epoch: 0,
        balance: 100,
        all_branches: members,
        secret: Vec::new(),
        ..Default::default()
    }));
    (bank, controller)
}

/// `count` branches started with `--max-interval-ms interval_ms`.
pub fn bank(count: usize, interval_ms: &str) -> snapbank::local_bank::LocalBank {
    let args = ["--max-interval-ms", interval_ms].map(String::from);
    snapbank::local_bank::LocalBank::start(env!("CARGO_BIN_EXE_branch").as_ref(), count, &args)
        .expect("start the branches")
}

/// Runs the controller on `file` with `total` and `args` to completion (within a minute).
pub fn run_controller(total: &str, file: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_controller"))
        .arg(total)
        .arg(file)
        .args(args)
        .run_limited()
}

/// The reports of a controller run with `--format json`, one per line of its output.
pub fn json_reports(output: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON report per line"))
        .collect()
}

/// Two durable branches sending every `interval_ms` with `secret`, and a controller with the
/// same secret taking `snapshots` snapshots 100 ms apart (retrieve timeout `retrieve_ms`, link
/// timeout 1 s): the bank the crash and restart tests kill parts of.
pub fn durable_pair_with_controller(
    secret: &SecretDir,
    interval_ms: &str,
    snapshots: &str,
    retrieve_ms: &str,
) -> (snapbank::local_bank::LocalBank, ControllerProcess) {
    let args = [
        "--max-interval-ms",
        interval_ms,
        "--secret-file",
        secret.path(),
    ]
    .map(String::from);
    let bank = snapbank::local_bank::LocalBank::start_durable(
        env!("CARGO_BIN_EXE_branch").as_ref(),
        2,
        &args,
    )
    .expect("start the branches");
    let controller = ControllerProcess::start(
        &bank,
        "2000",
        &[
            "--secret-file",
            secret.path(),
            "--interval-ms",
            "100",
            "--snapshots",
            snapshots,
            "--retrieve-timeout-ms",
            retrieve_ms,
            "--link-timeout-ms",
            "1000",
        ],
    );
    (bank, controller)
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Copies the files of directory `from` into `to` (created private, as a store's directory
/// must be), one level deep.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Restarts branch `index` of the durable `bank` on a store one or more commits older than
/// what its peers know, as a disk that drops or corrupts a write leaves it: a copy of its store
/// taken at one instant (the process stopped meanwhile, so the copy is what a crash at that
/// instant would have left, kept under `scratch`), `trade` of more trading, a SIGKILL, and the
/// copy put back. Returns the store's directory.
pub fn restart_on_an_older_store(
    bank: &mut snapbank::local_bank::LocalBank,
    index: usize,
    scratch: &std::path::Path,
    trade: Duration,
) -> std::path::PathBuf {
    let name = bank.entries()[index].name.clone();
    let store = bank.data_dir(&name);
    let older = scratch.join(format!("{name}.older"));
    let pid = bank.pids()[index];
    signal(pid, "STOP");
    copy_dir(&store, &older);
    signal(pid, "CONT");
    std::thread::sleep(trade);
    bank.kill(index);
    std::fs::remove_dir_all(&store).expect("remove the store");
    copy_dir(&older, &store);
    bank.restart(index, &[])
        .expect("restart the branch on its older store");
    store
}
