//! A durable branch's store: its state in an embedded, transactional, crash-safe database
//! ([`redb`]) in its `--data-dir`, so a branch killed at any instant restarts with exactly the
//! money, channels and snapshot records it had.
//!
//! Why redb: pure Rust (no C toolchain, no system library), ACID transactions with copy-on-write
//! pages and checksummed commits, so a crash mid-commit leaves the previous commit intact, and
//! one `fsync` per commit; a single file per branch. A log written by hand would have to get
//! torn writes, checksums and compaction right itself.
//!
//! What it holds (values encoded with the messages of `proto/store.proto`):
//! - `meta`: the bank the branch belongs to (its name, the members, the cluster secret) and its
//!   incarnation; written once, at `InitBranch`, with the format version.
//! - `core`: the balance, per peer the channel counters and positions; snapshots recording;
//!   finished snapshot ids. Small, so rewritten whole at every commit.
//! - `frames`: every frame sent and not yet acknowledged, in one batch per commit and channel,
//!   keyed by (channel, first position); a batch is deleted once all of it is acknowledged.
//! - `records` and `transit`: every snapshot record not yet retrieved, its header rewritten when
//!   it changes and the transfers found in transit appended in batches.
//!
//! Every change of one group commit goes into one write transaction ([`commit`]), and the branch
//! lets frames, acknowledgements and answers out only once the transaction holding what they
//! depend on is durable (see `branch::actor::durability`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::core::Frame;

/// Types generated from `proto/store.proto`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/store.rs"));
}

/// The store format this build reads and writes.
pub const FORMAT: u32 = 1;

/// The store's file inside the data directory.
pub const FILE_NAME: &str = "branch.redb";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CORE: TableDefinition<&str, &[u8]> = TableDefinition::new("core");
const FRAMES: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("frames");
const RECORDS: TableDefinition<u32, &[u8]> = TableDefinition::new("records");
const TRANSIT: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("transit");

/// Why a store cannot be used. A branch refuses to start on any of these: it never starts with
/// a guessed state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {dir}: {reason}")]
    CreateDir { dir: PathBuf, reason: String },
    #[error(
        "{path}: not a snapbank store or corrupt ({reason}); move it away to start this branch afresh"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path}: store format {found}, but this build reads format {FORMAT}; use the build that wrote it, or move it away to start afresh"
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "{path}: this is branch {found:?}'s store, not {expected:?}'s; give each branch its own --data-dir"
    )]
    OtherBranch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("writing the store failed: {0}")]
    Write(String),
}

/// An open store.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// A branch's state as its store held it at the last commit.
#[derive(Debug, Clone)]
pub struct Restored {
    pub meta: pb::Meta,
    pub core: pb::Core,
    /// Per peer (channel order): the unacknowledged frames, oldest first, with positions.
    pub frames: Vec<Vec<(u64, Frame)>>,
    /// Per peer: the stored frame batches as `(first, last)` positions, oldest first.
    pub frame_batches: Vec<Vec<(u64, u64)>>,
    /// Records not yet retrieved, with the transfers found in transit.
    pub records: Vec<(pb::RecordHeader, Vec<pb::InTransit>)>,
    /// Per record: how many transit batches it has (the next batch's index).
    pub transit_batches: HashMap<u32, u64>,
}

/// Everything one group commit changes.
#[derive(Debug, Default)]
pub struct ChangeSet {
    pub meta: Option<Vec<u8>>,
    pub core: Option<Vec<u8>>,
    /// `(channel, first position, FrameBatch)`.
    pub frame_batches: Vec<(u32, u64, Vec<u8>)>,
    /// `(channel, first position)` of batches now wholly acknowledged.
    pub removed_frame_batches: Vec<(u32, u64)>,
    /// `(snapshot, RecordHeader)`.
    pub records: Vec<(u32, Vec<u8>)>,
    /// `(snapshot, batch index, TransitBatch)`.
    pub transit: Vec<(u32, u64, Vec<u8>)>,
    /// Records retrieved or discarded.
    pub removed_records: Vec<u32>,
}

impl ChangeSet {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.meta.is_none()
            && self.core.is_none()
            && self.frame_batches.is_empty()
            && self.removed_frame_batches.is_empty()
            && self.records.is_empty()
            && self.transit.is_empty()
            && self.removed_records.is_empty()
    }
}

/// The encoded form of a frame kept for a resend.
pub fn encode_frame(frame: Frame) -> pb::Frame {
    match frame {
        Frame::Transfer { seq, amount } => pb::Frame {
            seq,
            amount,
            is_marker: false,
            marker: 0,
        },
        Frame::Marker { id } => pb::Frame {
            seq: 0,
            amount: 0,
            is_marker: true,
            marker: id,
        },
    }
}

fn decode_frame(frame: &pb::Frame) -> Frame {
    if frame.is_marker {
        Frame::Marker { id: frame.marker }
    } else {
        Frame::Transfer {
            seq: frame.seq,
            amount: frame.amount,
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store of branch `name` in `dir`, and reads the state it
    /// holds, if any (`None`: a new branch, or one that died before its `InitBranch` was
    /// durable).
    pub fn open(dir: &Path, name: &str) -> Result<(Self, Option<Restored>), StoreError> {
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(|err| StoreError::CreateDir {
            dir: dir.to_path_buf(),
            reason: err.to_string(),
        })?;
        if created {
            // The store holds the cluster secret: only the owner may read it.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = dir.join(FILE_NAME);
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let db = if path.exists() {
            Database::create(&path).map_err(|err| corrupt(err.to_string()))?
        } else {
            create_atomically(dir, &path).map_err(|err| StoreError::CreateDir {
                dir: dir.to_path_buf(),
                reason: err,
            })?
        };
        let restored = read_state(&db, name, &path)?;
        Ok((Self { db: Arc::new(db) }, restored))
    }

    /// The database, for the commit thread.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }
}

/// Creates a new store so that a crash at any instant leaves either no store or a whole, empty
/// one, never a half-written file: the database is created and committed under a temporary
/// name, then renamed into place, and the directory synced.
fn create_atomically(dir: &Path, path: &Path) -> Result<Database, String> {
    let temporary = dir.join(format!("{FILE_NAME}.new"));
    let _ = std::fs::remove_file(&temporary);
    let db = Database::create(&temporary).map_err(|err| err.to_string())?;
    let txn = db.begin_write().map_err(|err| err.to_string())?;
    txn.commit().map_err(|err| err.to_string())?;
    std::fs::rename(&temporary, path).map_err(|err| err.to_string())?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|err| err.to_string())?;
    Ok(db)
}

/// Reads the whole state, checking its format and owner.
fn read_state(db: &Database, name: &str, path: &Path) -> Result<Option<Restored>, StoreError> {
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
    let meta = pb::Meta::decode(meta.value()).map_err(|err| corrupt(format!("meta: {err}")))?;
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
    let core_table = read
        .open_table(CORE)
        .map_err(|err| corrupt(err.to_string()))?;
    let core = core_table
        .get("core")
        .map_err(|err| corrupt(err.to_string()))?
        .ok_or_else(|| corrupt("no core state beside the bank's description".into()))?;
    let core = pb::Core::decode(core.value()).map_err(|err| corrupt(format!("core: {err}")))?;
    let peers = core.peers.len();
    if peers + 1 != meta.members.len() {
        return Err(corrupt(format!(
            "{} peers' channels for a bank of {} members",
            peers,
            meta.members.len()
        )));
    }
    let mut frames = vec![Vec::new(); peers];
    let mut frame_batches = vec![Vec::new(); peers];
    let table = read
        .open_table(FRAMES)
        .map_err(|err| corrupt(err.to_string()))?;
    for entry in table.iter().map_err(|err| corrupt(err.to_string()))? {
        let (key, value) = entry.map_err(|err| corrupt(err.to_string()))?;
        let (channel, first) = key.value();
        let batch = pb::FrameBatch::decode(value.value())
            .map_err(|err| corrupt(format!("frames: {err}")))?;
        let channel = channel as usize;
        let acked = core
            .peers
            .get(channel)
            .ok_or_else(|| {
                corrupt(format!(
                    "frames for channel {channel}, which does not exist"
                ))
            })?
            .acked;
        let last = first + batch.frames.len() as u64 - 1;
        frame_batches[channel].push((first, last));
        for (pos, frame) in (first..).zip(&batch.frames) {
            if pos > acked {
                frames[channel].push((pos, decode_frame(frame)));
            }
        }
    }
    for (channel, list) in frames.iter().enumerate() {
        let acked = core.peers[channel].acked;
        if list
            .iter()
            .zip(acked + 1..)
            .any(|((pos, _), expected)| *pos != expected)
        {
            return Err(corrupt(format!(
                "the frames kept for channel {channel} do not follow position {acked} without a gap"
            )));
        }
    }
    let mut records = Vec::new();
    let mut transit_batches = HashMap::new();
    let table = read
        .open_table(RECORDS)
        .map_err(|err| corrupt(err.to_string()))?;
    let transit = read
        .open_table(TRANSIT)
        .map_err(|err| corrupt(err.to_string()))?;
    for entry in table.iter().map_err(|err| corrupt(err.to_string()))? {
        let (key, value) = entry.map_err(|err| corrupt(err.to_string()))?;
        let id = key.value();
        let header = pb::RecordHeader::decode(value.value())
            .map_err(|err| corrupt(format!("record {id}: {err}")))?;
        let mut found = Vec::new();
        let mut batches = 0;
        for entry in transit
            .range((id, 0)..=(id, u64::MAX))
            .map_err(|err| corrupt(err.to_string()))?
        {
            let (_, value) = entry.map_err(|err| corrupt(err.to_string()))?;
            let batch = pb::TransitBatch::decode(value.value())
                .map_err(|err| corrupt(format!("record {id}'s transfers: {err}")))?;
            found.extend(batch.transfers);
            batches += 1;
        }
        transit_batches.insert(id, batches);
        records.push((header, found));
    }
    Ok(Some(Restored {
        meta,
        core,
        frames,
        frame_batches,
        records,
        transit_batches,
    }))
}

/// Writes `changes` in one transaction and makes it durable (one fsync). Blocking: runs on a
/// thread of its own, never on the branch's event loop.
pub fn commit(db: &Database, changes: ChangeSet) -> Result<(), StoreError> {
    let failed = |err: &dyn std::fmt::Display| StoreError::Write(err.to_string());
    let txn = db.begin_write().map_err(|err| failed(&err))?;
    {
        let mut meta = txn.open_table(META).map_err(|err| failed(&err))?;
        if let Some(bytes) = &changes.meta {
            meta.insert("meta", bytes.as_slice())
                .map_err(|err| failed(&err))?;
        }
        let mut core = txn.open_table(CORE).map_err(|err| failed(&err))?;
        if let Some(bytes) = &changes.core {
            core.insert("core", bytes.as_slice())
                .map_err(|err| failed(&err))?;
        }
        let mut frames = txn.open_table(FRAMES).map_err(|err| failed(&err))?;
        for (channel, first, bytes) in &changes.frame_batches {
            frames
                .insert((*channel, *first), bytes.as_slice())
                .map_err(|err| failed(&err))?;
        }
        for key in &changes.removed_frame_batches {
            frames.remove(*key).map_err(|err| failed(&err))?;
        }
        let mut records = txn.open_table(RECORDS).map_err(|err| failed(&err))?;
        let mut transit = txn.open_table(TRANSIT).map_err(|err| failed(&err))?;
        for (id, bytes) in &changes.records {
            records
                .insert(*id, bytes.as_slice())
                .map_err(|err| failed(&err))?;
        }
        for (id, index, bytes) in &changes.transit {
            transit
                .insert((*id, *index), bytes.as_slice())
                .map_err(|err| failed(&err))?;
        }
        for id in &changes.removed_records {
            records.remove(*id).map_err(|err| failed(&err))?;
            transit
                .retain_in((*id, 0)..=(*id, u64::MAX), |_, _| false)
                .map_err(|err| failed(&err))?;
        }
    }
    crate::failpoint::hit("mid-commit");
    txn.commit().map_err(|err| failed(&err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("snapbank-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
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
        }
    }

    fn core(acked: u64) -> pb::Core {
        pb::Core {
            balance: 90,
            initial: 100,
            peers: vec![pb::PeerChannel {
                acked,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn batch(frames: &[Frame]) -> Vec<u8> {
        pb::FrameBatch {
            frames: frames.iter().map(|&f| encode_frame(f)).collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_committed_state_reads_back_with_acknowledged_frames_gone() {
        let dir = temp_dir("roundtrip");
        let (store, restored) = Store::open(&dir, "a").unwrap();
        assert!(restored.is_none(), "a new store holds nothing");
        let db = store.database();
        let t = |seq| Frame::Transfer { seq, amount: 5 };
        commit(
            &db,
            ChangeSet {
                meta: Some(meta("a").encode_to_vec()),
                core: Some(core(0).encode_to_vec()),
                frame_batches: vec![
                    (0, 1, batch(&[t(1), Frame::Marker { id: 3 }])),
                    (0, 3, batch(&[t(2)])),
                ],
                records: vec![(
                    3,
                    pb::RecordHeader {
                        id: 3,
                        balance: 90,
                        ..Default::default()
                    }
                    .encode_to_vec(),
                )],
                transit: vec![(
                    3,
                    0,
                    pb::TransitBatch {
                        transfers: vec![pb::InTransit {
                            from: 0,
                            seq: 1,
                            amount: 4,
                        }],
                    }
                    .encode_to_vec(),
                )],
                ..Default::default()
            },
        )
        .unwrap();
        commit(
            &db,
            ChangeSet {
                core: Some(core(2).encode_to_vec()),
                removed_frame_batches: vec![(0, 1)],
                ..Default::default()
            },
        )
        .unwrap();
        drop((store, db));
        let (_, restored) = Store::open(&dir, "a").unwrap();
        let restored = restored.expect("state");
        assert_eq!(restored.meta.incarnation, 42);
        assert_eq!(restored.core.balance, 90);
        assert_eq!(restored.frames, vec![vec![(3, t(2))]]);
        assert_eq!(restored.records.len(), 1);
        assert_eq!(restored.records[0].1.len(), 1);
        assert_eq!(restored.transit_batches[&3], 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_foreign_truncated_or_other_branchs_store_is_refused() {
        let dir = temp_dir("bad");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(FILE_NAME),
            b"this is not a database at all, just text",
        )
        .unwrap();
        let err = Store::open(&dir, "a").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

        let _ = std::fs::remove_dir_all(&dir);
        let (store, _) = Store::open(&dir, "a").unwrap();
        commit(
            &store.database(),
            ChangeSet {
                meta: Some(meta("a").encode_to_vec()),
                core: Some(core(0).encode_to_vec()),
                ..Default::default()
            },
        )
        .unwrap();
        drop(store);
        let err = Store::open(&dir, "b").unwrap_err();
        assert!(matches!(err, StoreError::OtherBranch { .. }), "{err}");

        let path = dir.join(FILE_NAME);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
        let err = Store::open(&dir, "a").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_of_another_format_is_refused() {
        let dir = temp_dir("format");
        let (store, _) = Store::open(&dir, "a").unwrap();
        let mut future = meta("a");
        future.format = FORMAT + 1;
        commit(
            &store.database(),
            ChangeSet {
                meta: Some(future.encode_to_vec()),
                core: Some(core(0).encode_to_vec()),
                ..Default::default()
            },
        )
        .unwrap();
        drop(store);
        let err = Store::open(&dir, "a").unwrap_err();
        assert!(matches!(err, StoreError::Version { found: 2, .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
