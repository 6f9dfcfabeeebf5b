//! [`AnsweredRecords`]: finished records already handed to a controller, kept for a while.
//!
//! A branch frees a record once it has answered for it, so that memory stays bounded however
//! long the bank runs. But an answer can be lost with the connection that carried it (a reset
//! between the branch's write and the controller's read); the controller then asks again after
//! reconnecting. Keeping the most recent answers, bounded in bytes, lets that second request get
//! the same record instead of "unknown", so no snapshot is lost to a blip. Beyond the bound the
//! oldest are dropped, and their ids remembered compactly so a late request is told the record
//! was already retrieved rather than never seen.

use std::collections::{HashMap, VecDeque};

use prost::Message;

use crate::core::{IdSet, SnapshotId};
use crate::wire::pb::return_snapshot::LocalSnapshot;

/// Bytes of answers kept (their encoded size), all together: enough for the answers in flight
/// when a controller's connection drops, small enough not to weigh on the branch's memory.
pub const KEPT_ANSWER_BYTES: usize = 256 << 10;

/// Recently answered records, oldest first, bounded by their total encoded size.
#[derive(Debug, Default)]
pub struct AnsweredRecords {
    /// The kept answers by snapshot id.
    kept: HashMap<SnapshotId, LocalSnapshot>,
    /// Kept ids in the order they were answered, with each answer's encoded size.
    order: VecDeque<(SnapshotId, usize)>,
    /// Total encoded size of the kept answers.
    bytes: usize,
    /// Every snapshot id answered with a finished record, kept or not.
    retrieved: IdSet,
}

impl AnsweredRecords {
    /// Keeps `answer` (a finished record), dropping the oldest kept answers beyond the bound.
    pub fn keep(&mut self, answer: &LocalSnapshot) {
        let id = answer.snapshot_id;
        self.retrieved.insert(id);
        if self.kept.contains_key(&id) {
            return;
        }
        let size = answer.encoded_len();
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
    pub fn get(&self, id: SnapshotId) -> Option<&LocalSnapshot> {
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

    fn answer(id: u32, channels: usize) -> LocalSnapshot {
        LocalSnapshot {
            snapshot_id: id,
            balance: 7,
            channel_state: vec![1; channels],
            ..Default::default()
        }
    }

    #[test]
    fn a_repeated_request_finds_the_same_record_until_it_ages_out() {
        let mut answered = AnsweredRecords::default();
        answered.keep(&answer(1, 3));
        assert_eq!(answered.get(1), Some(&answer(1, 3)));
        assert!(answered.was_retrieved(1));
        assert!(!answered.was_retrieved(2));
        // Big answers push the oldest out, but its id is still known as retrieved.
        let big = KEPT_ANSWER_BYTES / 3;
        for id in 2..6 {
            answered.keep(&answer(id, big));
        }
        assert_eq!(answered.get(1), None);
        assert!(answered.was_retrieved(1));
        assert!(answered.bytes <= KEPT_ANSWER_BYTES);
        assert!(answered.get(5).is_some());
    }
}
