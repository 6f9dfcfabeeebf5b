//! The stored form of a branch's state: the store's domain types to and from the messages of
//! `proto/store.proto` and their bytes. The only place that knows the encoding; the store
//! format it writes is [`FORMAT`].

use prost::Message;

use super::{BankMeta, ChannelMarks, FORMAT, RecordHeader, StoredCore};
use crate::auth::Secret;
use crate::core::{ChannelCount, CoreState, Frame, InTransit};
use crate::wire;

/// Types generated from `proto/store.proto`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/store.rs"));
}

impl From<ChannelCount> for pb::Counts {
    fn from(count: ChannelCount) -> Self {
        Self {
            count: count.count,
            amount: count.amount,
            digest: count.digest,
        }
    }
}

impl From<pb::Counts> for ChannelCount {
    fn from(counts: pb::Counts) -> Self {
        Self {
            count: counts.count,
            amount: counts.amount,
            digest: counts.digest,
        }
    }
}

impl From<Frame> for pb::Frame {
    fn from(frame: Frame) -> Self {
        match frame {
            Frame::Transfer { seq, amount } => Self {
                seq,
                amount,
                is_marker: false,
                marker: 0,
            },
            Frame::Marker { id } => Self {
                seq: 0,
                amount: 0,
                is_marker: true,
                marker: id,
            },
        }
    }
}

impl From<pb::Frame> for Frame {
    fn from(frame: pb::Frame) -> Self {
        if frame.is_marker {
            Self::Marker { id: frame.marker }
        } else {
            Self::Transfer {
                seq: frame.seq,
                amount: frame.amount,
            }
        }
    }
}

impl From<InTransit> for pb::InTransit {
    fn from(transfer: InTransit) -> Self {
        Self {
            from: transfer.from as u32,
            seq: transfer.seq,
            amount: transfer.amount,
        }
    }
}

impl From<pb::InTransit> for InTransit {
    fn from(transfer: pb::InTransit) -> Self {
        Self {
            from: transfer.from as usize,
            seq: transfer.seq,
            amount: transfer.amount,
        }
    }
}

impl From<&RecordHeader> for pb::RecordHeader {
    fn from(header: &RecordHeader) -> Self {
        Self {
            id: header.id,
            balance: header.balance,
            sent: header.sent.iter().map(|&c| c.into()).collect(),
            received: header.received.iter().map(|&c| c.into()).collect(),
            lost: header.lost.iter().map(|&c| c as u32).collect(),
            finished: header.finished,
            retrieved: header.retrieved,
        }
    }
}

impl From<pb::RecordHeader> for RecordHeader {
    fn from(header: pb::RecordHeader) -> Self {
        Self {
            id: header.id,
            balance: header.balance,
            sent: header.sent.into_iter().map(Into::into).collect(),
            received: header.received.into_iter().map(Into::into).collect(),
            lost: header.lost.into_iter().map(|c| c as usize).collect(),
            finished: header.finished,
            retrieved: header.retrieved,
        }
    }
}

impl From<&StoredCore> for pb::Core {
    fn from(core: &StoredCore) -> Self {
        let state = &core.state;
        Self {
            balance: state.balance,
            initial: state.initial,
            peers: core
                .channels
                .iter()
                .enumerate()
                .map(|(channel, marks)| pb::PeerChannel {
                    sent: state.sent.get(channel).map(|&c| c.into()),
                    received: state.received.get(channel).map(|&c| c.into()),
                    delivered: marks.delivered,
                    acked: marks.acked,
                    peer_incarnation: marks.peer_incarnation.unwrap_or(0),
                })
                .collect(),
            recording: state
                .recording
                .iter()
                .map(|(id, open)| pb::Recording {
                    id: *id,
                    open: open.clone(),
                })
                .collect(),
            finished_first: state.finished.iter().map(|&(first, _)| first).collect(),
            finished_last: state.finished.iter().map(|&(_, last)| last).collect(),
            highest_snapshot: core.highest_snapshot.unwrap_or(0),
        }
    }
}

impl From<pb::Core> for StoredCore {
    fn from(core: pb::Core) -> Self {
        let count = |counts: Option<pb::Counts>| counts.map(Into::into).unwrap_or_default();
        Self {
            state: CoreState {
                balance: core.balance,
                initial: core.initial,
                sent: core.peers.iter().map(|p| count(p.sent)).collect(),
                received: core.peers.iter().map(|p| count(p.received)).collect(),
                recording: core.recording.into_iter().map(|r| (r.id, r.open)).collect(),
                finished: core
                    .finished_first
                    .into_iter()
                    .zip(core.finished_last)
                    .collect(),
            },
            channels: core
                .peers
                .iter()
                .map(|p| ChannelMarks {
                    delivered: p.delivered,
                    acked: p.acked,
                    peer_incarnation: (p.peer_incarnation != 0).then_some(p.peer_incarnation),
                })
                .collect(),
            highest_snapshot: (core.highest_snapshot != 0).then_some(core.highest_snapshot),
        }
    }
}

impl From<&BankMeta> for pb::Meta {
    fn from(bank: &BankMeta) -> Self {
        Self {
            format: FORMAT,
            name: bank.name.clone(),
            members: bank
                .members
                .iter()
                .map(|member| pb::Member {
                    name: member.name.clone(),
                    ip: member.addr.ip().to_string(),
                    port: u32::from(member.addr.port()),
                })
                .collect(),
            secret: bank.secret.as_bytes().to_vec(),
            incarnation: bank.incarnation,
            epoch: bank.epoch,
        }
    }
}

impl TryFrom<pb::Meta> for BankMeta {
    type Error = String;

    /// Holds the members to the rules `InitBranch` holds them to, since they came from one.
    fn try_from(meta: pb::Meta) -> Result<Self, String> {
        let members: Vec<wire::pb::init_branch::Branch> = meta
            .members
            .into_iter()
            .map(|member| wire::pb::init_branch::Branch {
                name: member.name,
                ip: member.ip,
                port: member.port,
            })
            .collect();
        let members = wire::bank_members(&meta.name, &members)
            .map_err(|err| format!("the bank's members: {err}"))?;
        let secret = if meta.secret.is_empty() {
            Secret::none()
        } else {
            Secret::from_bytes(meta.secret, "the store").map_err(|err| err.to_string())?
        };
        Ok(Self {
            name: meta.name,
            members,
            secret,
            incarnation: meta.incarnation,
            epoch: meta.epoch,
        })
    }
}

/// The stored form of the bank (with the format this build writes).
pub fn encode_bank(bank: &BankMeta) -> Vec<u8> {
    pb::Meta::from(bank).encode_to_vec()
}

/// The bank's stored message, before its format, owner and secret are checked.
pub fn decode_meta(bytes: &[u8]) -> Result<pb::Meta, String> {
    pb::Meta::decode(bytes).map_err(|err| format!("meta: {err}"))
}

/// The stored form of the core.
pub fn encode_core(core: &StoredCore) -> Vec<u8> {
    pb::Core::from(core).encode_to_vec()
}

pub fn decode_core(bytes: &[u8]) -> Result<StoredCore, String> {
    pb::Core::decode(bytes)
        .map(Into::into)
        .map_err(|err| format!("core: {err}"))
}

/// The stored form of one commit's frames on one channel.
pub fn encode_frames(frames: &[Frame]) -> Vec<u8> {
    pb::FrameBatch {
        frames: frames.iter().map(|&frame| frame.into()).collect(),
    }
    .encode_to_vec()
}

pub fn decode_frames(bytes: &[u8]) -> Result<Vec<Frame>, String> {
    pb::FrameBatch::decode(bytes)
        .map(|batch| batch.frames.into_iter().map(Into::into).collect())
        .map_err(|err| format!("frames: {err}"))
}

/// The stored form of a record's header.
pub fn encode_header(header: &RecordHeader) -> Vec<u8> {
    pb::RecordHeader::from(header).encode_to_vec()
}

pub fn decode_header(id: u32, bytes: &[u8]) -> Result<RecordHeader, String> {
    pb::RecordHeader::decode(bytes)
        .map(Into::into)
        .map_err(|err| format!("record {id}: {err}"))
}

/// The stored form of one commit's transfers found in transit for one record.
pub fn encode_transit(transfers: &[InTransit]) -> Vec<u8> {
    pb::TransitBatch {
        transfers: transfers.iter().map(|&t| t.into()).collect(),
    }
    .encode_to_vec()
}

pub fn decode_transit(id: u32, bytes: &[u8]) -> Result<Vec<InTransit>, String> {
    pb::TransitBatch::decode(bytes)
        .map(|batch| batch.transfers.into_iter().map(Into::into).collect())
        .map_err(|err| format!("record {id}'s transfers: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BranchEntry;

    /// The stored layout of format 1, field by field, as stores already on disk have it: the
    /// domain types must map onto it exactly, or those stores would no longer read back.
    #[test]
    fn the_domain_types_are_stored_in_format_1s_layout() {
        let counts = |n| ChannelCount {
            count: n,
            amount: 10 * n,
            digest: 100 + n,
        };
        let core = StoredCore {
            state: CoreState {
                balance: 90,
                initial: 100,
                sent: vec![counts(1), counts(2)],
                received: vec![counts(3), counts(4)],
                recording: vec![(7, vec![true, false])],
                finished: vec![(1, 5), (9, 9)],
            },
            channels: vec![
                ChannelMarks {
                    delivered: 4,
                    acked: 2,
                    peer_incarnation: None,
                },
                ChannelMarks {
                    delivered: 6,
                    acked: 1,
                    peer_incarnation: Some(0xfeed),
                },
            ],
            highest_snapshot: Some(9),
        };
        let pb_counts = |n| pb::Counts {
            count: n,
            amount: 10 * n,
            digest: 100 + n,
        };
        let expected = pb::Core {
            balance: 90,
            initial: 100,
            peers: vec![
                pb::PeerChannel {
                    sent: Some(pb_counts(1)),
                    received: Some(pb_counts(3)),
                    delivered: 4,
                    acked: 2,
                    peer_incarnation: 0,
                },
                pb::PeerChannel {
                    sent: Some(pb_counts(2)),
                    received: Some(pb_counts(4)),
                    delivered: 6,
                    acked: 1,
                    peer_incarnation: 0xfeed,
                },
            ],
            recording: vec![pb::Recording {
                id: 7,
                open: vec![true, false],
            }],
            finished_first: vec![1, 9],
            finished_last: vec![5, 9],
            highest_snapshot: 9,
        };
        assert_eq!(encode_core(&core), expected.encode_to_vec());
        assert_eq!(decode_core(&expected.encode_to_vec()), Ok(core));

        let bank = BankMeta {
            name: "a".into(),
            members: vec![BranchEntry {
                name: "a".into(),
                addr: "127.0.0.1:4001".parse().unwrap(),
            }],
            secret: Secret::from_bytes(vec![7; 32], "test").unwrap(),
            incarnation: 42,
            epoch: 3,
        };
        let expected = pb::Meta {
            format: 1,
            name: "a".into(),
            members: vec![pb::Member {
                name: "a".into(),
                ip: "127.0.0.1".into(),
                port: 4001,
            }],
            secret: vec![7; 32],
            incarnation: 42,
            epoch: 3,
        };
        assert_eq!(encode_bank(&bank), expected.encode_to_vec());
        assert_eq!(BankMeta::try_from(expected), Ok(bank));

        let frames = [
            Frame::Transfer { seq: 3, amount: 5 },
            Frame::Marker { id: 4 },
        ];
        let expected = pb::FrameBatch {
            frames: vec![
                pb::Frame {
                    seq: 3,
                    amount: 5,
                    is_marker: false,
                    marker: 0,
                },
                pb::Frame {
                    seq: 0,
                    amount: 0,
                    is_marker: true,
                    marker: 4,
                },
            ],
        };
        assert_eq!(encode_frames(&frames), expected.encode_to_vec());

        let header = RecordHeader {
            id: 4,
            balance: 80,
            sent: vec![counts(1)],
            received: vec![counts(2)],
            lost: vec![1],
            finished: true,
            retrieved: false,
        };
        let expected = pb::RecordHeader {
            id: 4,
            balance: 80,
            sent: vec![pb_counts(1)],
            received: vec![pb_counts(2)],
            lost: vec![1],
            finished: true,
            retrieved: false,
        };
        assert_eq!(encode_header(&header), expected.encode_to_vec());
        let transfer = InTransit {
            from: 1,
            seq: 2,
            amount: 3,
        };
        let expected = pb::TransitBatch {
            transfers: vec![pb::InTransit {
                from: 1,
                seq: 2,
                amount: 3,
            }],
        };
        assert_eq!(encode_transit(&[transfer]), expected.encode_to_vec());
    }

    #[test]
    fn a_stored_member_list_that_init_branch_would_refuse_is_refused() {
        let meta = pb::Meta {
            format: 1,
            name: "a".into(),
            members: vec![pb::Member {
                name: "a".into(),
                ip: "127.0.0.1".into(),
                port: 70_000,
            }],
            ..Default::default()
        };
        let err = BankMeta::try_from(meta).unwrap_err();
        assert!(err.starts_with("the bank's members: "), "{err}");
    }
}
