//! The checkpoint directory: files written atomically, the newest N kept, the newest found.
//!
//! - A file is named `checkpoint-<unix ms>-<snapshot id>.ckpt` (zero-padded): the name orders
//!   checkpoints by when they were taken, then by id, and a restore from a directory takes the
//!   last. Other names are left alone.
//! - A write goes to `.checkpoint-....ckpt.tmp`, is fsync'd, renamed over its final name, and
//!   the directory is fsync'd: a crash leaves the old set of checkpoints or the new one, never
//!   a partial file under a checkpoint's name.
//! - After each write the oldest checkpoints beyond `keep` are removed, with any temporary file
//!   a crash left behind.
//! - [`CheckpointWriter`] does this on a thread of its own, so a slow disk never stalls the
//!   controller; when checkpoints come faster than the disk takes them, the newest waiting one
//!   is written and the older waiting ones are skipped (counted in the log). A write error is a
//!   warning naming the file, and the bank runs on.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, warn};

use super::Checkpoint;

/// How many checkpoints a directory keeps by default (`--keep-checkpoints`).
pub const DEFAULT_KEEP: usize = 10;

const PREFIX: &str = "checkpoint-";
const SUFFIX: &str = ".ckpt";
const TEMP_SUFFIX: &str = ".tmp";

/// The file name of `checkpoint`.
pub fn file_name(checkpoint: &Checkpoint) -> String {
    format!(
        "{PREFIX}{:013}-{:010}{SUFFIX}",
        checkpoint.taken_unix_ms, checkpoint.snapshot_id
    )
}

/// `(unix ms, id)` of a checkpoint file name, `None` for any other name.
fn parse_name(name: &str) -> Option<(u64, u32)> {
    let rest = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (ms, id) = rest.split_once('-')?;
    Some((ms.parse().ok()?, id.parse().ok()?))
}

/// Writes `checkpoint` into `dir` atomically (module doc); returns its path.
pub fn write_atomically(dir: &Path, checkpoint: &Checkpoint) -> Result<PathBuf, WriteError> {
    let name = file_name(checkpoint);
    let path = dir.join(&name);
    let temp = dir.join(format!(".{name}{TEMP_SUFFIX}"));
    let failed = |err: std::io::Error| WriteError {
        path: path.clone(),
        err,
    };
    let written = File::create(&temp)
        .and_then(|mut file| {
            file.write_all(&checkpoint.encode())?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temp, &path));
    if let Err(err) = written {
        let _ = fs::remove_file(&temp);
        return Err(failed(err));
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(failed)?;
    Ok(path)
}

/// A checkpoint that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write checkpoint {}: {err}", path.display())]
pub struct WriteError {
    /// The file it was going to be.
    pub path: PathBuf,
    /// Why not.
    pub err: std::io::Error,
}

/// The checkpoint files in `dir`, oldest first.
pub fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<((u64, u32), PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(key) = entry.file_name().to_str().and_then(parse_name) {
            found.push((key, entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// The newest checkpoint file in `dir`, if any.
pub fn newest(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    Ok(list(dir)?.pop())
}

/// Removes all but the newest `keep` checkpoints of `dir`, and temporary files a crashed write
/// left. Returns how many checkpoints it removed.
pub fn prune(dir: &Path, keep: usize) -> std::io::Result<usize> {
    let all = list(dir)?;
    let excess = all.len().saturating_sub(keep);
    for path in &all[..excess] {
        fs::remove_file(path)?;
    }
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(inner) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(TEMP_SUFFIX))
            && parse_name(inner).is_some()
        {
            let _ = fs::remove_file(dir.join(name));
        }
    }
    Ok(excess)
}

/// What a [`CheckpointWriter`] has done, for the web view and metrics.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    /// Checkpoints written (renamed into place).
    pub written: AtomicU64,
    /// Writes that failed.
    pub failed: AtomicU64,
    /// When the latest checkpoint was taken (Unix ms), 0 before the first.
    pub latest_unix_ms: AtomicU64,
    /// The latest checkpoint's snapshot id, 0 before the first.
    pub latest_id: AtomicU64,
    /// Checkpoints in the directory after the latest write and prune.
    pub kept: AtomicU64,
}

/// Writes checkpoints into a directory on a thread of its own (module doc).
pub struct CheckpointWriter {
    queue: Option<mpsc::Sender<Checkpoint>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Shared with whoever shows them.
    pub stats: Arc<CheckpointStats>,
}

impl CheckpointWriter {
    /// A writer into `dir` (which must exist) keeping the newest `keep` checkpoints.
    pub fn start(dir: PathBuf, keep: usize) -> std::io::Result<Self> {
        let (queue, waiting) = mpsc::channel::<Checkpoint>();
        let stats = Arc::new(CheckpointStats::default());
        let shared = stats.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoints".into())
            .spawn(move || {
                while let Ok(mut checkpoint) = waiting.recv() {
                    let mut skipped = 0u32;
                    while let Ok(newer) = waiting.try_recv() {
                        checkpoint = newer;
                        skipped += 1;
                    }
                    if skipped > 0 {
                        debug!("checkpoints: the disk is behind; skipped {skipped} older one(s)");
                    }
                    write_and_prune(&dir, keep, &checkpoint, &shared);
                }
            })?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
            stats,
        })
    }

    /// Queues the checkpoint of an ok snapshot.
    pub fn submit(&self, checkpoint: Checkpoint) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(checkpoint);
        }
    }

    /// Writes what is still queued, then stops the thread.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_and_prune(dir: &Path, keep: usize, checkpoint: &Checkpoint, stats: &CheckpointStats) {
    match write_atomically(dir, checkpoint) {
        Ok(path) => {
            debug!("checkpoint written: {}", path.display());
            stats.written.fetch_add(1, Ordering::Relaxed);
            stats
                .latest_unix_ms
                .store(checkpoint.taken_unix_ms, Ordering::Relaxed);
            stats
                .latest_id
                .store(u64::from(checkpoint.snapshot_id), Ordering::Relaxed);
        }
        Err(err) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            warn!("{err}; the bank runs on");
            return;
        }
    }
    match prune(dir, keep) {
        Ok(_) => {
            let kept = list(dir).map_or(0, |all| all.len());
            stats.kept.store(kept as u64, Ordering::Relaxed);
        }
        Err(err) => warn!(
            "cannot remove old checkpoints in {}: {err}; the bank runs on",
            dir.display()
        ),
    }
}

/// Milliseconds since the Unix epoch now (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "snapbank-checkpoint-dir-{tag}-{}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn at(ms: u64, id: u32) -> Checkpoint {
        let mut checkpoint = super::super::tests::sample();
        checkpoint.taken_unix_ms = ms;
        checkpoint.snapshot_id = id;
        checkpoint
    }

    #[test]
    fn the_newest_n_are_kept_and_the_newest_is_found() {
        let dir = TempDir::new("keep");
        fs::write(dir.0.join("notes.txt"), "left alone").unwrap();
        fs::write(
            dir.0.join(".checkpoint-0000000000001-0000000001.ckpt.tmp"),
            "x",
        )
        .unwrap();
        for (ms, id) in [(100, 1), (200, 2), (300, 3), (300, 4), (400, 5)] {
            write_atomically(&dir.0, &at(ms, id)).unwrap();
        }
        assert_eq!(prune(&dir.0, 3).unwrap(), 2);
        let names: Vec<String> = list(&dir.0)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "checkpoint-0000000000300-0000000003.ckpt",
                "checkpoint-0000000000300-0000000004.ckpt",
                "checkpoint-0000000000400-0000000005.ckpt"
            ]
        );
        assert!(dir.0.join("notes.txt").exists());
        assert!(
            !dir.0
                .join(".checkpoint-0000000000001-0000000001.ckpt.tmp")
                .exists()
        );
        let newest = newest(&dir.0).unwrap().unwrap();
        let read = Checkpoint::decode(&fs::read(newest).unwrap()).unwrap();
        assert_eq!(read, at(400, 5));
    }

    #[test]
    fn the_writer_writes_in_the_background_and_a_failure_is_counted_not_fatal() {
        let dir = TempDir::new("writer");
        let writer = CheckpointWriter::start(dir.0.clone(), 2).unwrap();
        let stats = writer.stats.clone();
        for id in 1..=4 {
            writer.submit(at(1000 + u64::from(id), id));
        }
        writer.finish();
        assert!(stats.written.load(Ordering::Relaxed) >= 1);
        assert_eq!(stats.latest_id.load(Ordering::Relaxed), 4);
        let kept = list(&dir.0).unwrap();
        assert!(!kept.is_empty() && kept.len() <= 2, "{kept:?}");

        // A directory that is gone: the write fails, is counted, and the writer goes on.
        let gone = dir.0.join("gone");
        let writer = CheckpointWriter::start(gone.clone(), 2).unwrap();
        let stats = writer.stats.clone();
        writer.submit(at(5, 5));
        writer.finish();
        assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
        assert_eq!(stats.written.load(Ordering::Relaxed), 0);
        let err = write_atomically(&gone, &at(5, 5)).unwrap_err();
        assert!(
            err.to_string()
                .contains("checkpoint-0000000000005-0000000005.ckpt"),
            "{err}"
        );
    }
}
