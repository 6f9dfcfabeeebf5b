//! A durable branch refuses to start, with one line naming the cause and exit code 2, whenever
//! starting could lose or expose the bank's money or secret: an empty store file, a data
//! directory another branch process holds, a read-only one, a store others may read, a
//! `--secret-file` other than the stored bank's, and a secret "file" that is a device or a FIFO
//! (refused at once, not read until memory runs out or waited on forever). Each starts real
//! processes and kills them on every exit path.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{RawController, connect_when_listening};
use snapbank::local_bank::{LocalBank, output_within};
use snapbank::store::{FILE_NAME, LOCK_FILE_NAME};
use snapbank::wire::{self, Body, pb};

const BRANCH: &str = env!("CARGO_BIN_EXE_branch");
const CONTROLLER: &str = env!("CARGO_BIN_EXE_controller");

/// How long a refusal may take: it happens before the branch listens, so well under this.
const REFUSAL_LIMIT: Duration = Duration::from_secs(10);

/// Runs `command` (killed after [`REFUSAL_LIMIT`]), expects exit code 2 with exactly one
/// `error:` line, and returns that line.
fn refusal(command: &mut Command) -> String {
    let output = output_within(command, REFUSAL_LIMIT).expect("run the command");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{:?}: {stderr}",
        output.status
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    errors[0].to_string()
}

/// `branch branch1 0 --data-dir DIR extra...`, on loopback.
fn branch_on(dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(BRANCH);
    command
        .args(["branch1", "0", "--bind-ip", "127.0.0.1", "--data-dir"])
        .arg(dir)
        .args(extra);
    command
}

/// A one-branch durable bank whose branch was started once (so its store exists) and then
/// killed, with the path of its data directory.
fn stopped_durable_branch() -> (LocalBank, PathBuf) {
    let mut bank = LocalBank::start_durable(BRANCH.as_ref(), 1, &[]).expect("start a branch");
    bank.kill(0);
    let dir = bank.data_dir("branch1");
    assert!(dir.join(FILE_NAME).is_file());
    (bank, dir)
}

/// Restarts branch `index` of `bank` with `extra` and waits until it listens.
fn restart_and_listen(bank: &mut LocalBank, index: usize, extra: &[&str]) {
    let extra: Vec<String> = extra.iter().map(|arg| arg.to_string()).collect();
    bank.restart(index, &extra).expect("restart the branch");
    drop(connect_when_listening(bank.entries()[index].addr));
    assert!(bank.exited().is_empty(), "{:?}", bank.exited());
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").mode() & 0o777
}

#[test]
fn an_empty_store_file_is_refused_until_a_reset_is_asked_for() {
    let (mut bank, dir) = stopped_durable_branch();
    let store = dir.join(FILE_NAME);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .and_then(|file| file.set_len(0))
        .expect("truncate the store");
    let line = refusal(&mut branch_on(&dir, &[]));
    assert!(
        line.starts_with(&format!("error: {} is empty (0 bytes)", store.display())),
        "{line}"
    );
    assert!(line.contains("--reset-store"), "{line}");
    assert_eq!(
        std::fs::metadata(&store).unwrap().len(),
        0,
        "left untouched"
    );

    restart_and_listen(&mut bank, 0, &["--reset-store"]);
    assert!(std::fs::metadata(&store).unwrap().len() > 0, "a new store");
    let aside: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("branch.redb.reset-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "the old file is set aside: {aside:?}");
    assert_eq!(std::fs::metadata(&aside[0]).unwrap().len(), 0);
}

#[test]
fn a_second_branch_on_one_data_dir_is_refused_naming_the_first() {
    let mut bank = LocalBank::start_durable(BRANCH.as_ref(), 1, &[]).expect("start a branch");
    let dir = bank.data_dir("branch1");
    let first = bank.pids()[0];
    let line = refusal(&mut branch_on(&dir, &[]));
    assert_eq!(
        line,
        format!(
            "error: another branch process holds {} (pid {first}); stop it first, or give this branch its own --data-dir",
            dir.display()
        )
    );
    // Not even --reset-store sets aside a store another process has open.
    let line = refusal(&mut branch_on(&dir, &["--reset-store"]));
    assert!(line.contains(&format!("(pid {first})")), "{line}");
    assert!(bank.exited().is_empty(), "the first branch runs on");
    assert!(std::fs::read_dir(&dir).unwrap().all(|entry| {
        !entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".reset-")
    }));
}

/// Whether this process runs as root (`/proc/self` belongs to the effective user).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|proc| proc.uid() == 0)
}

#[test]
fn a_read_only_data_dir_is_refused_as_read_only_not_as_corrupt() {
    let (mut bank, dir) = stopped_durable_branch();
    let before = std::fs::read(dir.join(FILE_NAME)).unwrap();
    let line = if running_as_root() {
        // Root writes through any permission bits: make the directory a read-only bind mount,
        // in a mount namespace of the branch's own, so nothing outside it sees the mount.
        refusal(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(
                    r#"mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && exec "$0" branch1 0 --bind-ip 127.0.0.1 --data-dir "$1""#,
                )
                .arg(BRANCH)
                .arg(&dir),
        )
    } else {
        for file in [FILE_NAME, LOCK_FILE_NAME] {
            set_mode(&dir.join(file), 0o400);
        }
        set_mode(&dir, 0o500);
        let line = refusal(&mut branch_on(&dir, &[]));
        set_mode(&dir, 0o700);
        for file in [FILE_NAME, LOCK_FILE_NAME] {
            set_mode(&dir.join(file), 0o600);
        }
        line
    };
    assert!(
        line.starts_with(&format!("error: {} is read-only (", dir.display())),
        "{line}"
    );
    assert!(
        !line.contains("corrupt") && !line.contains("reset"),
        "{line}"
    );
    assert_eq!(std::fs::read(dir.join(FILE_NAME)).unwrap(), before);
    // Writable again, the same store serves the branch.
    restart_and_listen(&mut bank, 0, &[]);
}

#[test]
fn a_store_others_may_read_is_refused_unless_allowed() {
    let (mut bank, dir) = stopped_durable_branch();
    let store = dir.join(FILE_NAME);
    assert_eq!(
        mode(&dir),
        0o700,
        "the branch made its data directory private"
    );
    assert_eq!(mode(&store), 0o600, "and its store");

    set_mode(&store, 0o644);
    let line = refusal(&mut branch_on(&dir, &[]));
    assert!(
        line.starts_with(&format!(
            "error: {} may be read or written by its group or others (mode 0644)",
            store.display()
        )),
        "{line}"
    );
    assert!(line.contains("--allow-shared-data-dir"), "{line}");
    set_mode(&store, 0o600);
    set_mode(&dir, 0o755);
    let line = refusal(&mut branch_on(&dir, &[]));
    assert!(
        line.starts_with(&format!("error: {} may be read", dir.display())),
        "{line}"
    );
    set_mode(&store, 0o644);
    restart_and_listen(&mut bank, 0, &["--allow-shared-data-dir"]);
}

#[test]
fn a_restart_with_another_secret_file_is_refused() {
    let mut bank = LocalBank::start_durable(
        BRANCH.as_ref(),
        2,
        &["--max-interval-ms", "20"].map(String::from),
    )
    .expect("start two branches");
    let secret = b"the bank's secret, 32 bytes long".to_vec();
    let mut controllers: Vec<RawController> = bank
        .entries()
        .iter()
        .map(|entry| RawController::connect(entry.addr))
        .collect();
    for controller in &mut controllers {
        controller.send(Body::InitBranch(pb::InitBranch {
            epoch: 0,
            balance: 100,
            all_branches: wire::branch_list(bank.entries()),
            secret: secret.clone(),
            ..Default::default()
        }));
    }
    // A record is answered only once the state it reports, the bank included, is durable.
    controllers[0].send(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: 1 }));
    let _ = controllers[0].retrieve(1);
    drop(controllers);
    bank.kill(0);

    let dir = bank.data_dir("branch1");
    let other = bank.dir().join("other.secret");
    std::fs::write(&other, "another secret, also long enough\n").unwrap();
    // On the branch's own port, so that the secret is the only thing that differs.
    let port = bank.entries()[0].addr.port().to_string();
    let line = refusal(
        Command::new(BRANCH)
            .args(["branch1", &port, "--bind-ip", "127.0.0.1", "--data-dir"])
            .arg(&dir)
            .arg("--secret-file")
            .arg(&other),
    );
    assert_eq!(
        line,
        format!(
            "error: {}: the bank kept here has another cluster secret than --secret-file; start this branch with its bank's secret file (or without --secret-file, to use the stored one)",
            dir.join(FILE_NAME).display()
        )
    );
    let same = bank.dir().join("same.secret");
    std::fs::write(&same, &secret).unwrap();
    restart_and_listen(&mut bank, 0, &["--secret-file", same.to_str().unwrap()]);
    let log = std::fs::read_to_string(bank.log_path("branch1")).unwrap();
    assert!(log.contains("restored from its store"), "{log}");
}

#[test]
fn a_secret_file_that_is_a_device_a_fifo_or_too_large_is_refused_at_once() {
    let dir = std::env::temp_dir().join(format!("snapbank-secret-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let large = dir.join("large");
    std::fs::write(&large, vec![b'x'; 5000]).unwrap();
    let branches = dir.join("branches.txt");
    std::fs::write(&branches, "branch1 127.0.0.1 1\nbranch2 127.0.0.1 2\n").unwrap();
    let cases = [
        (
            PathBuf::from("/dev/zero"),
            "not a regular file (a character device)",
        ),
        (fifo, "not a regular file (a FIFO)"),
        (
            large,
            "more than the 4096 bytes a secret file may hold (is this the right file?)",
        ),
    ];
    for (file, expected) in &cases {
        let mut branch = Command::new(BRANCH);
        branch.args(["branch1", "0", "--bind-ip", "127.0.0.1", "--secret-file"]);
        let mut controller = Command::new(CONTROLLER);
        controller.arg("100").arg(&branches).arg("--secret-file");
        for command in [&mut branch, &mut controller] {
            let started = Instant::now();
            let line = refusal(command.arg(file));
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{:?} for {line}",
                started.elapsed()
            );
            assert!(
                line.starts_with(&format!("error: {}: {expected}", file.display())),
                "{line}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
