//! [`LocalBank`]: real `branch` processes on free loopback ports, stopped when dropped.
//!
//! `./demo` and the end-to-end tests both need "start N branches and give me a branches file";
//! this is the one place that does it, and its `Drop` kills every process it started on every
//! exit path (including a panicking test).

use std::fs::File;
use std::io::Read as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::BranchEntry;

/// Distinguishes the working directories of banks started by one process.
static BANKS_STARTED: AtomicU32 = AtomicU32::new(0);

/// How long a starting branch may take to listen.
const PORT_WAIT: Duration = Duration::from_secs(10);

/// Asks the OS for `count` distinct free TCP ports on 127.0.0.1. All are held open together
/// while choosing, so they differ; they are released on return, for the caller to bind.
pub fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|addr| addr.port()))
        .collect()
}

/// The directory of the running executable, where cargo also puts the sibling `branch` and
/// `controller` binaries that `./demo` and `./bench` start.
pub fn binary_dir() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent().map(Path::to_path_buf).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} has no parent directory", exe.display()),
        )
    })
}

/// Runs `command` to completion with its output captured, killing it if it is still running
/// after `limit`: a hung process fails the caller instead of hanging it.
pub fn output_within(command: &mut Command, limit: Duration) -> std::io::Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("still running after {} s; killed", limit.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// A bank of branch processes on loopback.
pub struct LocalBank {
    /// Holds the branches file and one log file per branch.
    dir: PathBuf,
    /// The branches, in file order.
    entries: Vec<BranchEntry>,
    /// The running processes, in file order.
    children: Vec<Child>,
    /// Whether to leave `dir` behind on drop (so a person can read the logs).
    keep_dir: bool,
    /// The `branch` binary, to restart a branch.
    branch_bin: PathBuf,
    /// Arguments every branch was started with (after name and port), to restart one.
    branch_args: Vec<String>,
    /// Whether each branch keeps its state in a data directory of its own (`<dir>/<name>.data`).
    durable: bool,
    /// Arguments of each branch's own (file order), after the shared ones: a file that must
    /// differ from branch to branch, say.
    own_args: Vec<Vec<String>>,
}

impl LocalBank {
    /// Starts `count` branches named `branch1`... from the `branch` binary at `branch_bin`, each
    /// with `branch_args` appended, logging to `<dir>/<name>.log` at `RUST_LOG` (default info).
    pub fn start(branch_bin: &Path, count: usize, branch_args: &[String]) -> std::io::Result<Self> {
        Self::start_with(branch_bin, count, branch_args, false, &|_, _| Vec::new())
    }

    /// As [`Self::start`], each branch also given the arguments `own(dir, name)` returns for
    /// it (`dir` is the bank's directory, where per-branch files can go): kept for restarts.
    pub fn start_each(
        branch_bin: &Path,
        count: usize,
        branch_args: &[String],
        own: &dyn Fn(&Path, &str) -> Vec<String>,
    ) -> std::io::Result<Self> {
        Self::start_with(branch_bin, count, branch_args, false, own)
    }

    /// As [`Self::start`], each branch with a data directory of its own ([`Self::data_dir`]):
    /// killed and restarted, a branch resumes its state.
    pub fn start_durable(
        branch_bin: &Path,
        count: usize,
        branch_args: &[String],
    ) -> std::io::Result<Self> {
        Self::start_with(branch_bin, count, branch_args, true, &|_, _| Vec::new())
    }

    fn start_with(
        branch_bin: &Path,
        count: usize,
        branch_args: &[String],
        durable: bool,
        own: &dyn Fn(&Path, &str) -> Vec<String>,
    ) -> std::io::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "snapbank-{}-{}-{nanos}",
            std::process::id(),
            BANKS_STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let mut bank = Self {
            dir,
            entries: Vec::new(),
            children: Vec::new(),
            keep_dir: false,
            branch_bin: branch_bin.to_path_buf(),
            branch_args: branch_args.to_vec(),
            durable,
            own_args: Vec::new(),
        };
        // Each branch binds port 0 and reports the port it got: a port chosen here and released
        // for the branch to bind could be taken in between (by another test's outgoing
        // connection, say), and that branch would never listen.
        for index in 0..count {
            bank.entries.push(BranchEntry {
                name: format!("branch{}", index + 1),
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            });
            let name = format!("branch{}", index + 1);
            bank.own_args.push(own(&bank.dir, &name));
            let child = bank.spawn(index, &[], &[])?;
            bank.children.push(child);
        }
        for index in 0..count {
            let port = bank.wait_for_port(index)?;
            bank.entries[index].addr.set_port(port);
        }
        let mut file = File::create(bank.branches_file())?;
        writeln!(file, "# generated by snapbank's LocalBank")?;
        for entry in &bank.entries {
            writeln!(file, "{} 127.0.0.1 {}", entry.name, entry.addr.port())?;
        }
        Ok(bank)
    }

    /// Where branch `index` writes the port it listens on (`branch --port-file`).
    fn port_file(&self, index: usize) -> PathBuf {
        self.dir.join(format!("{}.port", self.entries[index].name))
    }

    /// Waits (at most [`PORT_WAIT`]) until branch `index` has written the port it listens on.
    fn wait_for_port(&mut self, index: usize) -> std::io::Result<u16> {
        let deadline = Instant::now() + PORT_WAIT;
        let path = self.port_file(index);
        loop {
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(port) = text.trim().parse::<u16>()
            {
                return Ok(port);
            }
            let name = &self.entries[index].name;
            if !matches!(self.children[index].try_wait(), Ok(None)) {
                return Err(std::io::Error::other(format!(
                    "{name} exited before it listened (its log: {})",
                    self.log_path(name).display()
                )));
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{name} did not listen within {} s", PORT_WAIT.as_secs()),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts branch `index` (file order) with the bank's arguments plus `extra`, appending to
    /// its log.
    fn spawn(
        &self,
        index: usize,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> std::io::Result<Child> {
        let entry = &self.entries[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&entry.name))?;
        let mut command = Command::new(&self.branch_bin);
        command
            .arg(&entry.name)
            .arg(entry.addr.port().to_string())
            .args(["--bind-ip", "127.0.0.1"])
            .arg("--port-file")
            .arg(self.port_file(index));
        if self.durable {
            command.arg("--data-dir").arg(self.data_dir(&entry.name));
        }
        command
            .args(&self.branch_args)
            .args(self.own_args.get(index).into_iter().flatten())
            .args(extra)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
    }

    /// Starts branch `index` again with the same command line (after it was killed or it
    /// crashed), plus `extra` arguments; kills it first if it is still running.
    pub fn restart(&mut self, index: usize, extra: &[String]) -> std::io::Result<()> {
        self.restart_with_env(index, extra, &[])
    }

    /// As [`Self::restart`], with extra environment variables (a failpoint, say).
    pub fn restart_with_env(
        &mut self,
        index: usize,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> std::io::Result<()> {
        self.kill(index);
        let child = self.spawn(index, extra, env)?;
        self.children[index] = child;
        Ok(())
    }

    /// The data directory of branch `name` in a durable bank.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.data"))
    }

    /// The generated branches file, to hand to the controller.
    pub fn branches_file(&self) -> PathBuf {
        self.dir.join("branches.txt")
    }

    /// The branches, in file order.
    pub fn entries(&self) -> &[BranchEntry] {
        &self.entries
    }

    /// Where branch `name` logs.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The directory holding the branches file and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Leave the directory (branches file and logs) behind when the bank is dropped.
    pub fn keep_dir(&mut self) {
        self.keep_dir = true;
    }

    /// Names of branches whose process has exited.
    pub fn exited(&mut self) -> Vec<String> {
        self.children
            .iter_mut()
            .zip(&self.entries)
            .filter_map(|(child, entry)| {
                let running = matches!(child.try_wait(), Ok(None));
                (!running).then(|| entry.name.clone())
            })
            .collect()
    }

    /// Waits (at most `limit`) for branch `index` to exit by itself, and returns how it ended
    /// (`None`: still running at the deadline).
    pub fn wait_for_exit(
        &mut self,
        index: usize,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.children.get_mut(index)?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process id of each branch, in file order.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Kills branch `index` (file order) now, as a crash would.
    pub fn kill(&mut self, index: usize) {
        if let Some(child) = self.children.get_mut(index) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks branch `index` (file order) to stop as Ctrl-C would (SIGTERM), and waits at most
    /// `limit` for it to exit; returns how it ended (`None`: still running, or not started).
    pub fn terminate(&mut self, index: usize, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.children.get(index)?.id();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !sent {
            return None;
        }
        self.wait_for_exit(index, limit)
    }

    /// Kills every branch and waits for them.
    pub fn stop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

impl Drop for LocalBank {
    fn drop(&mut self) {
        self.stop();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
