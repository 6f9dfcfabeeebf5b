//! What a branch answers a `RetrieveSnapshot` with, as the branch's own types, and the recent
//! answers it keeps for a controller that asks again.
//!
//! A branch frees a record once it has answered for it, so that memory stays bounded however
//! long the bank runs. But an answer can be lost with the connection that carried it (a reset
//! between the branch's write and the controller's read); the controller then asks again after
//! reconnecting. Keeping the most recent answers, bounded in bytes, lets that second request get
//! the same record instead of "unknown", so no snapshot is lost to a blip. Beyond the bound the
//! oldest are dropped, and their ids remembered compactly so a late request is told the record
//! was already retrieved rather than never seen.

use std::collections::{BTreeMap, VecDeque};

use crate::core::{IdSet, SnapshotId, SnapshotRecord};

/// Bytes of answers kept (their size on the wire, estimated), all together: enough for the
/// answers in flight when a controller's connection drops, small enough not to weigh on the
/// branch's memory.
pub const KEPT_ANSWER_BYTES: usize = 256 << 10;

/// What an answer says about its record: the wire's `SnapshotStatus`, decided here once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordStatus {
    /// Finished: every incoming channel delivered its marker.
    Complete,
    /// The balance is recorded, some incoming channel is still recording.
    Recording,
    /// The branch never saw this snapshot.
    Unknown,
    /// Finished, but some peer's connection was lost before its marker came.
    CutShort,
    /// Recorded, then discarded unretrieved (too many records kept, or kept too long).
    Discarded,
    /// Recorded, retrieved, and released.
    AlreadyRetrieved,
}

impl RecordStatus {
    /// The status of `record` as it stands.
    pub fn of(record: &SnapshotRecord) -> Self {
        match (record.is_finished(), record.lost().is_empty()) {
            (true, true) => RecordStatus::Complete,
            (true, false) => RecordStatus::CutShort,
            (false, _) => RecordStatus::Recording,
        }
    }

    /// The status's name in `proto/bank.proto` (`SnapshotStatus`), for logs.
    pub fn name(self) -> &'static str {
        match self {
            RecordStatus::Complete => "COMPLETE",
            RecordStatus::Recording => "RECORDING",
            RecordStatus::Unknown => "UNKNOWN_SNAPSHOT",
            RecordStatus::CutShort => "CUT_SHORT",
            RecordStatus::Discarded => "DISCARDED",
            RecordStatus::AlreadyRetrieved => "ALREADY_RETRIEVED",
        }
    }

    /// Whether a record with this status is final (a controller may report it).
    pub fn is_final(self) -> bool {
        matches!(self, RecordStatus::Complete | RecordStatus::CutShort)
    }
}

/// One answer to a `RetrieveSnapshot`: the record as it stood when the answer was decided, or
/// only a status when there is no record to give.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Answer {
    /// The snapshot asked for.
    pub id: SnapshotId,
    /// What the answer says.
    pub status: RecordStatus,
    /// The record (`None` for a status-only answer).
    pub record: Option<SnapshotRecord>,
}

impl Answer {
    /// The answer for `record` as it stands.
    pub fn of(record: &SnapshotRecord) -> Self {
        Self {
            id: record.id(),
            status: RecordStatus::of(record),
            record: Some(record.clone()),
        }
    }

    /// An answer without a record.
    pub fn status_only(id: SnapshotId, status: RecordStatus) -> Self {
        Self {
            id,
            status,
            record: None,
        }
    }

    /// Roughly the answer's size on the wire, given how many bytes the branch's and its peers'
    /// names take: what bounds [`AnsweredRecords`].
    fn size(&self, names: usize) -> usize {
        let Some(record) = &self.record else {
            return 16 + names;
        };
        16 + names + record.channel_state().len() * 48 + record.in_transit().len() * 16
    }
}

/// Recently answered records, oldest first, bounded by their total size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AnsweredRecords {
    /// The kept answers by snapshot id.
    kept: BTreeMap<SnapshotId, Answer>,
    /// Kept ids in the order they were answered, with each answer's size.
    order: VecDeque<(SnapshotId, usize)>,
    /// Total size of the kept answers.
    bytes: usize,
    /// Every snapshot id answered with a finished record, kept or not.
    retrieved: IdSet,
}

impl AnsweredRecords {
    /// Keeps `answer` (a finished record; `names` bytes of names travel with it), dropping the
    /// oldest kept answers beyond the bound.
    pub fn keep(&mut self, answer: &Answer, names: usize) {
        let id = answer.id;
        self.retrieved.insert(id);
        if self.kept.contains_key(&id) {
            return;
        }
        let size = answer.size(names);
        if size > KEPT_ANSWER_BYTES {
            return;
        }
        self.kept.insert(id, answer.clone());
        self.order.push_back((id, size));
        self.bytes += size;
        while self.bytes > KEPT_ANSWER_BYTES {
            let Some((old, old_size)) = self.order.pop_front() else {
                break;
            };
            self.kept.remove(&old);
            self.bytes -= old_size;
        }
    }

    /// The kept answer for snapshot `id`, if it is still kept.
    pub fn get(&self, id: SnapshotId) -> Option<&Answer> {
        self.kept.get(&id)
    }

    /// Whether snapshot `id` was ever answered with a finished record.
    pub fn was_retrieved(&self, id: SnapshotId) -> bool {
        self.retrieved.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ChannelCount;

    fn answer(id: u32, channels: usize) -> Answer {
        let mut record = SnapshotRecord::new(
            id,
            7,
            vec![ChannelCount::default(); channels],
            vec![ChannelCount::default(); channels],
        );
        record.finish();
        Answer::of(&record)
    }

    #[test]
    fn a_repeated_request_finds_the_same_record_until_it_ages_out() {
        let mut answered = AnsweredRecords::default();
        answered.keep(&answer(1, 3), 8);
        assert_eq!(answered.get(1), Some(&answer(1, 3)));
        assert!(answered.was_retrieved(1));
        assert!(!answered.was_retrieved(2));
        // Big answers push the oldest out, but its id is still known as retrieved.
        let big = KEPT_ANSWER_BYTES / 3 / 48;
        for id in 2..6 {
            answered.keep(&answer(id, big), 8);
        }
        assert_eq!(answered.get(1), None);
        assert!(answered.was_retrieved(1));
        assert!(answered.bytes <= KEPT_ANSWER_BYTES);
        assert!(answered.get(5).is_some());
    }
}
