//! The redb store: a branch's state in an embedded, transactional, crash-safe database
//! ([`redb`]) in its `--data-dir`.
//!
//! Why redb: pure Rust (no C toolchain, no system library), ACID transactions with copy-on-write
//! pages and checksummed commits, so a crash mid-commit leaves the previous commit intact, and
//! one `fsync` per commit; a single file per branch. A log written by hand would have to get
//! torn writes, checksums and compaction right itself.
//!
//! Its tables (values encoded by [`super::codec`]):
//! - `meta`: the bank ([`BankMeta`]) with the format version, under the key `meta`;
//! - `core`: the core ([`super::StoredCore`]), under the key `core`, rewritten at every commit;
//! - `frames`: one [`FrameBatch`] per commit and channel, keyed by (channel, first position);
//! - `records` and `transit`: record headers by snapshot id, and their transit batches keyed by
//!   (snapshot id, batch index).
//!
//! Every change of one group commit goes into one write transaction ([`Store::commit`], one
//! fsync), and the branch lets frames, acknowledgements and answers out only once the
//! transaction holding what they depend on is durable (see `branch::actor::durability`).
//!
//! Opening ([`Store::open`]) never guesses, and never starts afresh over money:
//! - one process at a time: the branch holds an exclusive lock on `branch.lock` beside the
//!   store, which names its pid, so a second process on the same directory is refused with the
//!   first one's pid;
//! - the store holds the cluster secret, so it is created 0600 (and a data directory the branch
//!   creates 0700), and a store or directory that the group or others may read or write is
//!   refused unless the operator says so ([`StoreOptions::allow_shared`]);
//! - a store file that is present but empty, unreadable as a store, another branch's, or another
//!   bank's (its secret differs from `--secret-file`) is refused; a fresh store replaces a present
//!   one only when the operator asks ([`StoreOptions::reset`]), and the old file is set aside,
//!   not deleted;
//! - each refusal names its cause (a lock held, a read-only place, a corrupt file...), so the
//!   advice that comes with it fits: only a file that is not a usable store is worth setting
//!   aside.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
    WriteTransaction,
};

use super::{
    BankMeta, BranchStore, Changes, FORMAT, FrameBatch, Restored, StoreError, StoreOptions, codec,
};
use crate::auth::Secret;

/// The store's file inside the data directory.
pub const FILE_NAME: &str = "branch.redb";

/// The lock file inside the data directory: locked by the process that has the store open, and
/// holding its pid, so that a second process can say which one holds the directory.
pub const LOCK_FILE_NAME: &str = "branch.lock";

/// Permission bits that let the group or others read or write: the store holds the cluster
/// secret, so neither it nor its directory may have any of them unless the operator allows it.
const SHARED_BITS: u32 = 0o066;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CORE: TableDefinition<&str, &[u8]> = TableDefinition::new("core");
const FRAMES: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("frames");
const RECORDS: TableDefinition<u32, &[u8]> = TableDefinition::new("records");
const TRANSIT: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("transit");

/// An open redb store.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    /// The store file, as refusals and errors name it.
    path: Arc<Path>,
    /// The branch whose store this is: a stored bank of another branch is refused.
    name: Arc<str>,
    /// The configured cluster secret (`--secret-file`): a stored bank with another is refused.
    secret: Option<Secret>,
    /// The locked `branch.lock`: held as long as the store is open, so no other process opens
    /// it meanwhile.
    _lock: Arc<File>,
    /// redb found the last commit failing its checksum when opening, and fell back to the one
    /// before: the state read is older than the last commit made.
    fell_back: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// The progress redb reports to the repair callback when it is about to fall back from a last
/// commit that fails its checksum (0.3, the first of its three scans); an ordinary repair after
/// a crash starts at 0.6.
const FALLBACK_REPAIR_PROGRESS: f64 = 0.5;

impl Store {
    /// Opens (creating if needed) the store of branch `name` in `dir`, and reads the state it
    /// holds, if any (`None`: a new branch, or one that died before its `InitBranch` was
    /// durable). `secret` is the configured cluster secret (`--secret-file`): a stored bank with
    /// another one is refused. See the module docs for what else is refused, and why.
    pub fn open(
        dir: &Path,
        name: &str,
        secret: Option<&Secret>,
        options: StoreOptions,
    ) -> Result<(Self, Option<Restored>), StoreError> {
        create_private_dir(dir)?;
        if !options.allow_shared {
            check_private(dir)?;
        }
        let lock = lock(dir)?;
        let path = dir.join(FILE_NAME);
        let present = match std::fs::metadata(&path) {
            Ok(metadata) => Some(metadata),
            Err(err) if err.kind() == ErrorKind::NotFound => None,
            Err(err) => return Err(io_error(&path, err)),
        };
        let (db, fell_back) = match present {
            Some(_) if options.reset => {
                set_aside(dir, &path)?;
                (create_atomically(dir, &path)?, false)
            }
            Some(metadata) => {
                if !options.allow_shared {
                    check_private(&path)?;
                }
                if metadata.is_file() && metadata.len() == 0 {
                    return Err(StoreError::Empty { path });
                }
                // redb repairs a store that was not closed cleanly (every crash). Its first
                // repair step runs only when the last commit fails its checksum, and then it
                // falls back to the commit before: say so, since that commit's money is gone
                // from this store (its peers' positions then show it, see the branch's channels).
                let fell_back = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let noticed = fell_back.clone();
                let db = Database::builder()
                    .set_repair_callback(move |session| {
                        if session.progress() < FALLBACK_REPAIR_PROGRESS {
                            noticed.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    })
                    .open(&path)
                    .map_err(|err| open_error(dir, &path, err))?;
                let fell_back = fell_back.load(std::sync::atomic::Ordering::Relaxed);
                if fell_back {
                    log::error!(
                        "{}: its last commit failed its checksum, and the store fell back to the commit before it: the disk may be corrupt, and the state may be older than what this branch's peers know",
                        path.display()
                    );
                }
                (db, fell_back)
            }
            None => (create_atomically(dir, &path)?, false),
        };
        let store = Self {
            db: Arc::new(db),
            path: path.into(),
            name: name.into(),
            secret: secret.cloned(),
            _lock: Arc::new(lock),
            fell_back,
        };
        let restored = store.read()?;
        Ok((store, restored))
    }

    /// The store as the commit thread uses it.
    pub fn handle(&self) -> Arc<dyn BranchStore> {
        Arc::new(self.clone())
    }

    /// Writes `changes` into `txn`, without committing it.
    fn write(
        txn: &WriteTransaction,
        bank: Option<&BankMeta>,
        changes: &Changes,
    ) -> Result<(), StoreError> {
        let failed = |err: &dyn std::fmt::Display| StoreError::Write(err.to_string());
        let mut meta = txn.open_table(META).map_err(|err| failed(&err))?;
        if let Some(bank) = bank {
            meta.insert("meta", codec::encode_bank(bank).as_slice())
                .map_err(|err| failed(&err))?;
        }
        if bank.is_some() {
            // A new bank epoch: nothing of the one before stays.
            let mut frames = txn.open_table(FRAMES).map_err(|err| failed(&err))?;
            frames.retain(|_, _| false).map_err(|err| failed(&err))?;
            let mut records = txn.open_table(RECORDS).map_err(|err| failed(&err))?;
            records.retain(|_, _| false).map_err(|err| failed(&err))?;
            let mut transit = txn.open_table(TRANSIT).map_err(|err| failed(&err))?;
            transit.retain(|_, _| false).map_err(|err| failed(&err))?;
        }
        let mut core = txn.open_table(CORE).map_err(|err| failed(&err))?;
        if let Some(state) = &changes.core {
            core.insert("core", codec::encode_core(state).as_slice())
                .map_err(|err| failed(&err))?;
        }
        let mut frames = txn.open_table(FRAMES).map_err(|err| failed(&err))?;
        for batch in &changes.frame_batches {
            frames
                .insert(
                    (batch.channel as u32, batch.first),
                    codec::encode_frames(&batch.frames).as_slice(),
                )
                .map_err(|err| failed(&err))?;
        }
        for &(channel, first) in &changes.removed_frame_batches {
            frames
                .remove((channel as u32, first))
                .map_err(|err| failed(&err))?;
        }
        let mut records = txn.open_table(RECORDS).map_err(|err| failed(&err))?;
        let mut transit = txn.open_table(TRANSIT).map_err(|err| failed(&err))?;
        for header in &changes.records {
            records
                .insert(header.id, codec::encode_header(header).as_slice())
                .map_err(|err| failed(&err))?;
        }
        for batch in &changes.transit {
            transit
                .insert(
                    (batch.id, batch.index),
                    codec::encode_transit(&batch.transfers).as_slice(),
                )
                .map_err(|err| failed(&err))?;
        }
        for &id in &changes.removed_records {
            records.remove(id).map_err(|err| failed(&err))?;
            transit
                .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                .map_err(|err| failed(&err))?;
        }
        Ok(())
    }

    /// Writes `changes` in a transaction and drops it uncommitted, as a crash in the middle of
    /// the commit would (for the conformance suite).
    #[cfg(test)]
    pub(super) fn abandon_commit(&self, bank: Option<&BankMeta>, changes: &Changes) {
        let txn = self.db.begin_write().unwrap();
        Self::write(&txn, bank, changes).unwrap();
        txn.abort().unwrap();
    }
}

impl Store {
    /// Whether opening found the last commit failing its checksum and fell back to the commit
    /// before it (logged then too): the branch's peers may know a later state.
    pub fn fell_back_on_open(&self) -> bool {
        self.fell_back
    }
}

impl BranchStore for Store {
    /// One write transaction, made durable with one fsync.
    fn commit(&self, bank: Option<&BankMeta>, changes: &Changes) -> Result<(), StoreError> {
        let failed = |err: &dyn std::fmt::Display| StoreError::Write(err.to_string());
        let txn = self.db.begin_write().map_err(|err| failed(&err))?;
        Self::write(&txn, bank, changes)?;
        crate::failpoint::hit("mid-commit");
        txn.commit().map_err(|err| failed(&err))
    }

    /// Reads the whole state, checking its format, its owner and (when one is configured) its
    /// secret.
    fn read(&self) -> Result<Option<Restored>, StoreError> {
        read_state(&self.db, &self.name, self.secret.as_ref(), &self.path)
    }
}

/// Creates `dir` if it is missing, private (0700): the store in it holds the cluster secret.
/// Its parents are created as usual.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    let failed = |err: std::io::Error| StoreError::CreateDir {
        dir: dir.to_path_buf(),
        reason: err.to_string(),
    };
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(err) => Err(failed(err)),
    }
}

/// Refuses `path` when its group or others may read or write it.
fn check_private(path: &Path) -> Result<(), StoreError> {
    let metadata = std::fs::metadata(path).map_err(|err| io_error(path, err))?;
    let mode = metadata.mode() & 0o777;
    if mode & SHARED_BITS != 0 {
        return Err(StoreError::Shared {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Takes the directory's lock (`branch.lock`, created 0600) and writes this process's pid in
/// it; the lock lasts as long as the returned file is open. When another process holds it,
/// names that process by the pid in the file.
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE_NAME);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|err| io_error(dir, err))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(err)) => return Err(io_error(dir, err)),
    }
    file.set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(|err| io_error(&path, err))?;
    Ok(file)
}

/// Classifies an I/O error on `path`: a read-only file system or a permission refused is
/// [`StoreError::ReadOnly`], anything else [`StoreError::Io`].
fn io_error(path: &Path, err: std::io::Error) -> StoreError {
    match err.kind() {
        ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => StoreError::ReadOnly {
            path: path.to_path_buf(),
            reason: err.to_string(),
        },
        _ => StoreError::Io {
            path: path.to_path_buf(),
            reason: err.to_string(),
        },
    }
}

/// Classifies redb's error opening the store at `path` in `dir`: its lock held elsewhere is
/// [`StoreError::Locked`], a read-only place [`StoreError::ReadOnly`], anything else means the
/// file is not a store this build can read ([`StoreError::Corrupt`]).
fn open_error(dir: &Path, path: &Path, err: DatabaseError) -> StoreError {
    match err {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            // Our lock file was free, so the holder is not a branch of this build.
            StoreError::Locked {
                dir: dir.to_path_buf(),
                pid: None,
            }
        }
        DatabaseError::Storage(StorageError::Io(err))
            if matches!(
                err.kind(),
                ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied
            ) =>
        {
            io_error(path, err)
        }
        err => StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: err.to_string(),
        },
    }
}

/// Renames the store file aside (`branch.redb.reset-<unix seconds>`, with a counter if that is
/// taken) for `--reset-store`: whatever it held stays on disk for the operator.
fn set_aside(dir: &Path, path: &Path) -> Result<(), StoreError> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default();
    let aside = (0..)
        .map(|n| match n {
            0 => dir.join(format!("{FILE_NAME}.reset-{seconds}")),
            n => dir.join(format!("{FILE_NAME}.reset-{seconds}-{n}")),
        })
        .find(|candidate| !candidate.exists())
        .unwrap_or_else(|| dir.join(format!("{FILE_NAME}.reset")));
    std::fs::rename(path, &aside).map_err(|err| io_error(path, err))?;
    log::warn!(
        "--reset-store: {} set aside as {}; this branch starts afresh",
        path.display(),
        aside.display()
    );
    Ok(())
}

/// Creates a new store so that a crash at any instant leaves either no store or a whole, empty
/// one, never a half-written file: the database is created (0600, as it will hold the cluster
/// secret) and committed under a temporary name, then renamed into place, and the directory
/// synced.
fn create_atomically(dir: &Path, path: &Path) -> Result<Database, StoreError> {
    let temporary = dir.join(format!("{FILE_NAME}.new"));
    let io = |err: std::io::Error| io_error(dir, err);
    let failed = |err: &dyn std::fmt::Display| StoreError::Io {
        path: temporary.clone(),
        reason: err.to_string(),
    };
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(io(err)),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io)?;
    let db = Database::create(&temporary).map_err(|err| match err {
        DatabaseError::Storage(StorageError::Io(err)) => io(err),
        err => failed(&err),
    })?;
    let txn = db.begin_write().map_err(|err| failed(&err))?;
    txn.commit().map_err(|err| failed(&err))?;
    std::fs::rename(&temporary, path).map_err(io)?;
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(io)?;
    Ok(db)
}

/// Reads the whole state, checking its format, its owner and (when one is configured) its
/// secret.
fn read_state(
    db: &Database,
    name: &str,
    secret: Option<&Secret>,
    path: &Path,
) -> Result<Option<Restored>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let read = db.begin_read().map_err(|err| corrupt(err.to_string()))?;
    let meta_table = match read.open_table(META) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(err) => return Err(corrupt(err.to_string())),
    };
    let Some(meta) = meta_table
        .get("meta")
        .map_err(|err| corrupt(err.to_string()))?
    else {
        return Ok(None);
    };
    let meta = codec::decode_meta(meta.value()).map_err(corrupt)?;
    if meta.format != FORMAT {
        return Err(StoreError::Version {
            path: path.to_path_buf(),
            found: meta.format,
        });
    }
    if meta.name != name {
        return Err(StoreError::OtherBranch {
            path: path.to_path_buf(),
            found: meta.name,
            expected: name.to_string(),
        });
    }
    if let Some(secret) = secret
        && !secret.same_as(&meta.secret)
    {
        return Err(StoreError::SecretDiffers {
            path: path.to_path_buf(),
        });
    }
    let bank = BankMeta::try_from(meta).map_err(corrupt)?;
    let core_table = read
        .open_table(CORE)
        .map_err(|err| corrupt(err.to_string()))?;
    let core = core_table
        .get("core")
        .map_err(|err| corrupt(err.to_string()))?
        .ok_or_else(|| corrupt("no core state beside the bank's description".into()))?;
    let core = codec::decode_core(core.value()).map_err(corrupt)?;
    let mut frame_batches = Vec::new();
    let table = read
        .open_table(FRAMES)
        .map_err(|err| corrupt(err.to_string()))?;
    for entry in table.iter().map_err(|err| corrupt(err.to_string()))? {
        let (key, value) = entry.map_err(|err| corrupt(err.to_string()))?;
        let (channel, first) = key.value();
        frame_batches.push(FrameBatch {
            channel: channel as usize,
            first,
            frames: codec::decode_frames(value.value()).map_err(corrupt)?,
        });
    }
    let mut records = Vec::new();
    let table = read
        .open_table(RECORDS)
        .map_err(|err| corrupt(err.to_string()))?;
    let transit = read
        .open_table(TRANSIT)
        .map_err(|err| corrupt(err.to_string()))?;
    for entry in table.iter().map_err(|err| corrupt(err.to_string()))? {
        let (key, value) = entry.map_err(|err| corrupt(err.to_string()))?;
        let id = key.value();
        let header = codec::decode_header(id, value.value()).map_err(corrupt)?;
        let mut batches = Vec::new();
        for entry in transit
            .range((id, 0)..=(id, u64::MAX))
            .map_err(|err| corrupt(err.to_string()))?
        {
            let (_, value) = entry.map_err(|err| corrupt(err.to_string()))?;
            batches.push(codec::decode_transit(id, value.value()).map_err(corrupt)?);
        }
        records.push((header, batches));
    }
    super::assemble(bank, core, frame_batches, records)
        .map(Some)
        .map_err(corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pb;
    use std::path::PathBuf;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("snapbank-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A fresh, private (0700) directory.
    fn private_dir(tag: &str) -> PathBuf {
        let dir = temp_dir(tag);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        dir
    }

    fn open(dir: &Path, name: &str) -> Result<(Store, Option<Restored>), StoreError> {
        Store::open(dir, name, None, StoreOptions::default())
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    /// Commits `meta` and `core` as they are (a store of another format, a bank without a
    /// secret...) into the store in `dir`.
    fn commit_raw(store: &Store, meta: &pb::Meta, core: &pb::Core) {
        use prost::Message as _;
        let txn = store.db.begin_write().unwrap();
        Store::write(&txn, None, &Changes::default()).unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("meta", meta.encode_to_vec().as_slice())
            .unwrap();
        txn.open_table(CORE)
            .unwrap()
            .insert("core", core.encode_to_vec().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }

    /// Commits a bank (`meta`) for branch "a" into a new store in `dir`.
    fn store_with_bank(dir: &Path, meta: pb::Meta) {
        let (store, _) = open(dir, "a").unwrap();
        commit_raw(&store, &meta, &core());
    }

    fn meta(name: &str) -> pb::Meta {
        pb::Meta {
            format: FORMAT,
            name: name.into(),
            members: vec![
                pb::Member {
                    name: "a".into(),
                    ip: "127.0.0.1".into(),
                    port: 1,
                },
                pb::Member {
                    name: "b".into(),
                    ip: "127.0.0.1".into(),
                    port: 2,
                },
            ],
            secret: vec![7; 32],
            incarnation: 42,
            epoch: 0,
        }
    }

    fn core() -> pb::Core {
        pb::Core {
            balance: 90,
            initial: 100,
            peers: vec![pb::PeerChannel::default()],
            ..Default::default()
        }
    }

    #[test]
    fn a_foreign_truncated_or_other_branchs_store_is_refused() {
        let dir = private_dir("bad");
        std::fs::write(
            dir.join(FILE_NAME),
            b"this is not a database at all, just text",
        )
        .unwrap();
        std::fs::set_permissions(
            dir.join(FILE_NAME),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let err = open(&dir, "a").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

        let _ = std::fs::remove_dir_all(&dir);
        store_with_bank(&dir, meta("a"));
        let err = open(&dir, "b").unwrap_err();
        assert!(matches!(err, StoreError::OtherBranch { .. }), "{err}");

        let path = dir.join(FILE_NAME);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
        let err = open(&dir, "a").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_last_commit_failing_its_checksum_falls_back_to_the_one_before_and_says_so() {
        let dir = temp_dir("fallback");
        let (store, _) = open(&dir, "a").unwrap();
        assert!(!store.fell_back_on_open());
        commit_raw(&store, &meta("a"), &core());
        let later = pb::Core {
            balance: 80,
            ..core()
        };
        commit_raw(&store, &meta("a"), &later);
        // The file as a crash now would leave it (read while the store is open), with one byte
        // of the last commit's root checksum flipped, as a bad disk might: redb's file header
        // keeps the god byte at 9 (bit 0: which of the two commit slots is the primary) and the
        // slots at 64 and 192, each with its user root's checksum at bytes 16..32.
        let path = dir.join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        drop(store);
        let primary = usize::from(bytes[9] & 1);
        bytes[64 + 128 * primary + 16] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (store, restored) = open(&dir, "a").unwrap();
        assert!(store.fell_back_on_open());
        assert_eq!(restored.expect("a bank").core.state.balance, 90);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_of_another_format_is_refused() {
        let dir = temp_dir("format");
        let mut future = meta("a");
        future.format = FORMAT + 1;
        store_with_bank(&dir, future);
        let err = open(&dir, "a").unwrap_err();
        assert!(matches!(err, StoreError::Version { found: 2, .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_empty_store_file_is_refused_and_replaced_only_on_reset() {
        let dir = private_dir("empty");
        let path = dir.join(FILE_NAME);
        File::create(&path).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let err = open(&dir, "a").unwrap_err();
        assert!(matches!(err, StoreError::Empty { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("{} is empty", path.display()))
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as it was");

        let reset = StoreOptions {
            reset: true,
            ..Default::default()
        };
        let (_store, restored) = Store::open(&dir, "a", None, reset).unwrap();
        assert!(restored.is_none());
        assert!(std::fs::metadata(&path).unwrap().len() > 0, "a new store");
        let aside: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&format!("{FILE_NAME}.reset-")))
            .collect();
        assert_eq!(aside.len(), 1, "the old file is kept: {aside:?}");
        assert_eq!(std::fs::metadata(dir.join(&aside[0])).unwrap().len(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_opener_of_a_directory_is_told_who_holds_it() {
        let dir = temp_dir("locked");
        let (first, _) = open(&dir, "a").unwrap();
        let err = open(&dir, "a").unwrap_err();
        assert!(
            matches!(err, StoreError::Locked { pid: Some(pid), .. } if pid == std::process::id()),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "another branch process holds {} (pid {}); stop it first, or give this branch its own --data-dir",
                dir.display(),
                std::process::id()
            )
        );
        drop(first);
        assert!(
            open(&dir, "a").is_ok(),
            "free again once the first is closed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_store_is_private_and_a_shared_one_refused_unless_allowed() {
        let dir = temp_dir("private");
        drop(open(&dir, "a").unwrap());
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(FILE_NAME)), 0o600);
        assert_eq!(mode(&dir.join(LOCK_FILE_NAME)), 0o600);

        let set = |path: &Path, mode| {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap()
        };
        let allowed = StoreOptions {
            allow_shared: true,
            ..Default::default()
        };
        set(&dir.join(FILE_NAME), 0o644);
        let err = open(&dir, "a").unwrap_err();
        assert!(
            matches!(err, StoreError::Shared { mode: 0o644, .. }),
            "{err}"
        );
        drop(Store::open(&dir, "a", None, allowed).unwrap());
        set(&dir.join(FILE_NAME), 0o600);
        set(&dir, 0o750);
        let err = open(&dir, "a").unwrap_err();
        assert!(
            matches!(err, StoreError::Shared { mode: 0o750, .. }),
            "{err}"
        );
        drop(Store::open(&dir, "a", None, allowed).unwrap());
        set(&dir, 0o711);
        assert!(open(&dir, "a").is_ok(), "others may only traverse");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stored_secret_other_than_the_configured_one_is_refused() {
        let dir = temp_dir("secret");
        store_with_bank(&dir, meta("a"));
        let stored = Secret::from_bytes(vec![7; 32], "test").unwrap();
        let other = Secret::from_bytes(vec![8; 32], "test").unwrap();
        let options = StoreOptions::default();
        let err = Store::open(&dir, "a", Some(&other), options).unwrap_err();
        assert!(matches!(err, StoreError::SecretDiffers { .. }), "{err}");
        let (_, restored) = Store::open(&dir, "a", Some(&stored), options).unwrap();
        assert!(restored.is_some());
        let _ = std::fs::remove_dir_all(&dir);

        // A bank without a secret does not match a configured one either.
        let mut open_bank = meta("a");
        open_bank.secret.clear();
        store_with_bank(&dir, open_bank);
        let err = Store::open(&dir, "a", Some(&stored), options).unwrap_err();
        assert!(matches!(err, StoreError::SecretDiffers { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn errors_are_told_apart_by_cause() {
        let dir = Path::new("/data");
        let path = dir.join(FILE_NAME);
        let os = std::io::Error::from_raw_os_error;
        let read_only = open_error(
            dir,
            &path,
            DatabaseError::Storage(StorageError::Io(os(libc::EROFS))),
        );
        assert!(
            matches!(read_only, StoreError::ReadOnly { .. }),
            "{read_only}"
        );
        assert!(
            read_only
                .to_string()
                .starts_with("/data/branch.redb is read-only")
        );
        let denied = io_error(dir, os(libc::EACCES));
        assert!(matches!(denied, StoreError::ReadOnly { .. }), "{denied}");
        assert_eq!(
            denied.to_string(),
            "/data is read-only (Permission denied (os error 13)): a durable branch must write its store; make it writable (nothing in it was changed)"
        );
        assert!(matches!(
            io_error(dir, os(libc::EIO)),
            StoreError::Io { .. }
        ));
        assert!(matches!(
            open_error(dir, &path, DatabaseError::DatabaseAlreadyOpen),
            StoreError::Locked { pid: None, .. }
        ));
        let corrupt = open_error(
            dir,
            &path,
            DatabaseError::Storage(StorageError::Corrupted("bad page".into())),
        );
        assert!(matches!(corrupt, StoreError::Corrupt { .. }), "{corrupt}");
        // Only a file that is not a store is worth setting aside.
        for err in [
            read_only,
            denied,
            open_error(dir, &path, DatabaseError::DatabaseAlreadyOpen),
        ] {
            assert!(!err.to_string().contains("reset"), "{err}");
        }
    }
}
