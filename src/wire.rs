//! The wire edge: generated protobuf types, the delimited frame codec, the small builders that
//! turn domain values into [`pb::BranchMessage`] frames, and the conversions the other way:
//! a peer's frame becomes a [`PeerMsg`] and a controller's a [`ControllerCmd`] (an `InitBranch`
//! with its member list validated, as an [`InitBank`]), once, where it arrives.
//!
//! Nothing outside this module touches bytes on the socket: connections hand the codec a byte
//! stream and get whole [`pb::BranchMessage`]s back, and the algorithm in [`crate::core`] never
//! sees a generated type at all.

use bytes::{Buf, BytesMut};

use crate::core::{Frame, PeerMsg, RefusalKind};
use prost::Message;
use tokio_util::codec::Decoder;

/// Types generated from `proto/bank.proto` by prost-build.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/bank.rs"));
}

pub use pb::branch_message::BranchMessage as Body;

/// Largest frame accepted from a connection that has not authenticated yet (its first frame and
/// its handshake): enough for an `InitBranch` listing about 2000 branches, small enough that
/// the capped number of unidentified connections cannot pin much memory.
pub const PREAUTH_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Largest frame accepted by default. Generous for any real bank (an `InitBranch` listing a
/// thousand branches is ~40 KiB) while refusing a hostile length prefix before buffering it.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// The most bytes a varint32 length prefix can take.
const MAX_PREFIX_BYTES: usize = 5;

/// Why a byte stream could not be turned into frames. Any of these ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: u64, max: usize },
    #[error("malformed length prefix (not a varint32)")]
    BadPrefix,
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("connection closed in the middle of a frame ({0} bytes unread)")]
    Truncated(usize),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes protobuf's standard delimited framing (varint32 length, then the message) into
/// [`pb::BranchMessage`]s, refusing frames above a maximum size before buffering them.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    /// Frames longer than this are a protocol error: it bounds the memory one peer can pin.
    max_frame: usize,
}

impl FrameCodec {
    /// A codec that refuses frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// Changes the limit (raised once a connection has authenticated).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

/// Reads a varint32 from the front of `buf` without consuming it: `Ok(None)` when more bytes
/// are needed, else the value and how many bytes it took.
fn peek_varint32(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().take(MAX_PREFIX_BYTES).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if value > u64::from(u32::MAX) {
                return Err(FrameError::BadPrefix);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_PREFIX_BYTES {
        Err(FrameError::BadPrefix)
    } else {
        Ok(None)
    }
}

impl Decoder for FrameCodec {
    type Item = pb::BranchMessage;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        let Some((len, prefix)) = peek_varint32(src)? else {
            return Ok(None);
        };
        if len > self.max_frame as u64 {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let len = len as usize;
        if src.len() < prefix + len {
            src.reserve(prefix + len - src.len());
            return Ok(None);
        }
        src.advance(prefix);
        let frame = src.split_to(len);
        Ok(Some(pb::BranchMessage::decode(frame.freeze())?))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(src.len())),
        }
    }
}

/// Appends `body` to `out` as one delimited frame. Appending to a caller-owned buffer lets a
/// connection batch many frames into one write without allocating per message.
pub fn encode_frame(body: Body, out: &mut Vec<u8>) {
    let message = pb::BranchMessage {
        branch_message: Some(body),
    };
    // A Vec grows as needed, so prost's only encode error (insufficient capacity) cannot occur.
    if let Err(err) = message.encode_length_delimited(out) {
        log::error!("cannot encode a frame: {err}");
    }
}

/// A short name for a frame's kind, for log lines.
pub fn body_kind(body: &Body) -> &'static str {
    match body {
        Body::InitBranch(_) => "InitBranch",
        Body::Transfer(_) => "Transfer",
        Body::InitSnapshot(_) => "InitSnapshot",
        Body::Marker(_) => "Marker",
        Body::RetrieveSnapshot(_) => "RetrieveSnapshot",
        Body::ReturnSnapshot(_) => "ReturnSnapshot",
        Body::Hello(_) => "Hello",
        Body::Welcome(_) => "Welcome",
        Body::Auth(_) => "Auth",
        Body::ControllerHello(_) => "ControllerHello",
        Body::Resume(_) => "Resume",
        Body::Ack(_) => "Ack",
        Body::Heartbeat(_) => "Heartbeat",
        Body::Refusal(_) => "Refusal",
        Body::ControllerLease(_) => "ControllerLease",
        Body::RollbackPrepare(_) => "RollbackPrepare",
        Body::RollbackCommit(_) => "RollbackCommit",
        Body::RollbackAnswer(_) => "RollbackAnswer",
    }
}

/// The wire form of a peer-channel frame at position `pos`.
pub fn channel_frame(frame: crate::core::Frame, pos: u64) -> Body {
    match frame {
        crate::core::Frame::Transfer { seq, amount } => Body::Transfer(pb::Transfer {
            money: to_wire_amount(amount),
            seq,
            pos,
        }),
        crate::core::Frame::Marker { id } => Body::Marker(pb::Marker {
            snapshot_id: id,
            pos,
        }),
    }
}

/// A cumulative acknowledgement of every frame up to `received` on a peer channel.
pub fn ack(received: u64) -> Body {
    Body::Ack(pb::Ack { received })
}

/// The first frame on a new peer connection: who the sender is, how far it has received, and
/// in which bank epoch.
pub fn resume(incarnation: u64, received: u64, epoch: u64) -> Body {
    Body::Resume(pb::Resume {
        incarnation,
        received,
        epoch,
    })
}

/// A refusal frame carrying `reason`, after which the other side may try again.
pub fn refusal(reason: impl Into<String>) -> Body {
    final_refusal(RefusalKind::Retry, reason)
}

/// A refusal frame of `kind`: a peer that has proved the secret tells the other side that
/// retrying cannot help.
pub fn final_refusal(kind: RefusalKind, reason: impl Into<String>) -> Body {
    Body::Refusal(pb::Refusal {
        reason: reason.into(),
        kind: pb::RefusalKind::from(kind).into(),
    })
}

/// The wire form of a message the node sends on a peer connection.
pub fn peer_body(msg: PeerMsg) -> Body {
    match msg {
        PeerMsg::Channel { frame, pos } => channel_frame(frame, pos),
        PeerMsg::Ack { received } => ack(received),
        PeerMsg::Resume {
            incarnation,
            received,
            epoch,
        } => resume(incarnation, received, epoch),
        PeerMsg::Refusal { kind, reason } => final_refusal(kind, reason),
        // The node never sends one; should it, the peer is told rather than sent nothing.
        PeerMsg::Unexpected(kind) => refusal(format!("internal error: tried to send {kind}")),
    }
}

impl From<crate::core::node::RecordStatus> for pb::SnapshotStatus {
    fn from(status: crate::core::node::RecordStatus) -> Self {
        use crate::core::node::RecordStatus;
        match status {
            RecordStatus::Complete => Self::Complete,
            RecordStatus::Recording => Self::Recording,
            RecordStatus::Unknown => Self::UnknownSnapshot,
            RecordStatus::CutShort => Self::CutShort,
            RecordStatus::Discarded => Self::Discarded,
            RecordStatus::AlreadyRetrieved => Self::AlreadyRetrieved,
        }
    }
}

impl pb::return_snapshot::ChannelAudit {
    /// What the answering branch had sent the peer at the cut.
    pub fn sent(&self) -> crate::core::ChannelCount {
        crate::core::ChannelCount {
            count: self.sent_count,
            amount: self.sent_amount,
            digest: self.sent_digest,
        }
    }

    /// What the answering branch had received from the peer at the cut.
    pub fn received(&self) -> crate::core::ChannelCount {
        crate::core::ChannelCount {
            count: self.received_count,
            amount: self.received_amount,
            digest: self.received_digest,
        }
    }
}

/// The `LocalSnapshot` for the node's `answer`: its record (if any) with its status, stamped
/// with the branch's name, channels named by `peers`.
pub fn local_answer(
    answer: &crate::core::node::Answer,
    branch_name: &str,
    peers: &[String],
) -> pb::return_snapshot::LocalSnapshot {
    let status = pb::SnapshotStatus::from(answer.status);
    match &answer.record {
        Some(record) => local_snapshot(record, status, branch_name, peers),
        None => no_record(answer.id, status, branch_name),
    }
}

impl From<RefusalKind> for pb::RefusalKind {
    fn from(kind: RefusalKind) -> Self {
        match kind {
            RefusalKind::Retry => Self::Retry,
            RefusalKind::NewIncarnation => Self::NewIncarnation,
            RefusalKind::StateRegressed => Self::StateRegressed,
            RefusalKind::Uninitialised => Self::Uninitialised,
        }
    }
}

impl From<pb::RefusalKind> for RefusalKind {
    fn from(kind: pb::RefusalKind) -> Self {
        match kind {
            pb::RefusalKind::Retry => Self::Retry,
            pb::RefusalKind::NewIncarnation => Self::NewIncarnation,
            pb::RefusalKind::StateRegressed => Self::StateRegressed,
            pb::RefusalKind::Uninitialised => Self::Uninitialised,
        }
    }
}

impl From<Body> for PeerMsg {
    /// A frame from a peer connection. A refusal kind this build does not know counts as
    /// [`RefusalKind::Retry`], the harmless reading.
    fn from(body: Body) -> Self {
        match body {
            Body::Transfer(pb::Transfer { money, seq, pos }) => PeerMsg::Channel {
                frame: Frame::Transfer {
                    seq,
                    amount: u64::from(money),
                },
                pos,
            },
            Body::Marker(pb::Marker { snapshot_id, pos }) => PeerMsg::Channel {
                frame: Frame::Marker { id: snapshot_id },
                pos,
            },
            Body::Ack(pb::Ack { received }) => PeerMsg::Ack { received },
            Body::Resume(pb::Resume {
                incarnation,
                received,
                epoch,
            }) => PeerMsg::Resume {
                incarnation,
                received,
                epoch,
            },
            Body::Refusal(pb::Refusal { reason, kind }) => PeerMsg::Refusal {
                kind: pb::RefusalKind::try_from(kind)
                    .map(RefusalKind::from)
                    .unwrap_or_default(),
                reason,
            },
            other => PeerMsg::Unexpected(body_kind(&other)),
        }
    }
}

/// Why an `InitBranch` cannot be used to initialise a branch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitError {
    #[error("InitBranch does not list this branch ({0:?})")]
    SelfMissing(String),
    #[error("InitBranch lists {0:?} more than once")]
    DuplicateName(String),
    #[error("InitBranch gives {name:?} a bad address {ip:?} port {port}")]
    BadAddress { name: String, ip: String, port: u32 },
    #[error("InitBranch lists a branch with an empty name")]
    EmptyName,
    #[error("InitBranch lists a bad name: {0}")]
    BadName(String),
    #[error("InitBranch gives {name:?} an unusable address: {reason}")]
    UnusableAddress { name: String, reason: String },
}

/// Converts `InitBranch.all_branches` into validated [`crate::config::BranchEntry`]s, checking
/// that `self_name` is listed exactly once and every name is unique and every address usable.
pub fn bank_members(
    self_name: &str,
    branches: &[pb::init_branch::Branch],
) -> Result<Vec<crate::config::BranchEntry>, InitError> {
    let members = members(branches)?;
    check_listed(self_name, &members)?;
    Ok(members)
}

/// Whether `self_name` is among `members`.
pub fn check_listed(
    self_name: &str,
    members: &[crate::config::BranchEntry],
) -> Result<(), InitError> {
    if members.iter().any(|member| member.name == self_name) {
        Ok(())
    } else {
        Err(InitError::SelfMissing(self_name.to_string()))
    }
}

/// Converts `InitBranch.all_branches` into validated [`crate::config::BranchEntry`]s: every
/// name valid and unique, every address usable.
fn members(
    branches: &[pb::init_branch::Branch],
) -> Result<Vec<crate::config::BranchEntry>, InitError> {
    let mut seen = std::collections::HashSet::new();
    let mut members = Vec::with_capacity(branches.len());
    for branch in branches {
        if branch.name.is_empty() {
            return Err(InitError::EmptyName);
        }
        crate::config::check_name(&branch.name).map_err(InitError::BadName)?;
        if !seen.insert(branch.name.as_str()) {
            return Err(InitError::DuplicateName(branch.name.clone()));
        }
        let bad = || InitError::BadAddress {
            name: branch.name.clone(),
            ip: branch.ip.clone(),
            port: branch.port,
        };
        let ip: std::net::IpAddr = branch.ip.parse().map_err(|_| bad())?;
        crate::config::check_address(ip).map_err(|reason| InitError::UnusableAddress {
            name: branch.name.clone(),
            reason,
        })?;
        let port = u16::try_from(branch.port)
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(bad)?;
        members.push(crate::config::BranchEntry {
            name: branch.name.clone(),
            addr: std::net::SocketAddr::new(ip, port),
        });
    }
    Ok(members)
}

/// An `InitBranch`, decoded and its member list validated at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitBank {
    /// This branch's starting balance.
    pub balance: u64,
    /// Every branch of the bank, or why the list is unusable (reported only once the command
    /// is otherwise acceptable, as it always was).
    pub members: Result<Vec<crate::config::BranchEntry>, InitError>,
    /// The cluster secret it carries (empty: none, or supplied out of band).
    pub secret: Vec<u8>,
    /// The sending controller's id (0: an original-schema controller), for the lease.
    pub controller: u64,
    /// The bank epoch to start in (0: a new bank; above it: a rollback re-initialising a
    /// branch that came back empty).
    pub epoch: u64,
    /// The controller rolls the bank back when a branch loses its state.
    pub rolls_back: bool,
}

impl From<pb::InitBranch> for InitBank {
    fn from(init: pb::InitBranch) -> Self {
        Self {
            balance: u64::from(init.balance),
            members: members(&init.all_branches),
            secret: init.secret,
            controller: init.controller,
            epoch: init.epoch,
            rolls_back: init.rolls_back,
        }
    }
}

/// A frame on a controller connection, as the branch's command handling sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerCmd {
    InitBranch(InitBank),
    InitSnapshot {
        id: crate::core::SnapshotId,
    },
    /// `wait_ms` 0: the sender did not ask to wait (an original-schema controller, or an
    /// answer wanted at once).
    RetrieveSnapshot {
        id: crate::core::SnapshotId,
        wait_ms: u32,
    },
    /// Phase one of a rollback to bank epoch `epoch`.
    RollbackPrepare {
        epoch: u64,
    },
    /// Phase two: take `balance` in epoch `epoch` and trade again.
    RollbackCommit {
        epoch: u64,
        balance: u64,
    },
    /// A message controllers may not send, by its name.
    Unexpected(&'static str),
}

impl ControllerCmd {
    /// The command's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ControllerCmd::InitBranch(_) => "InitBranch",
            ControllerCmd::InitSnapshot { .. } => "InitSnapshot",
            ControllerCmd::RetrieveSnapshot { .. } => "RetrieveSnapshot",
            ControllerCmd::RollbackPrepare { .. } => "RollbackPrepare",
            ControllerCmd::RollbackCommit { .. } => "RollbackCommit",
            ControllerCmd::Unexpected(kind) => kind,
        }
    }
}

impl From<Body> for ControllerCmd {
    fn from(body: Body) -> Self {
        match body {
            Body::InitBranch(init) => ControllerCmd::InitBranch(init.into()),
            Body::InitSnapshot(pb::InitSnapshot { snapshot_id }) => {
                ControllerCmd::InitSnapshot { id: snapshot_id }
            }
            Body::RetrieveSnapshot(pb::RetrieveSnapshot {
                snapshot_id,
                wait_ms,
            }) => ControllerCmd::RetrieveSnapshot {
                id: snapshot_id,
                wait_ms,
            },
            Body::RollbackPrepare(pb::RollbackPrepare { epoch }) => {
                ControllerCmd::RollbackPrepare { epoch }
            }
            Body::RollbackCommit(pb::RollbackCommit { epoch, balance }) => {
                ControllerCmd::RollbackCommit {
                    epoch,
                    balance: u64::from(balance),
                }
            }
            other => ControllerCmd::Unexpected(body_kind(&other)),
        }
    }
}

/// The wire form of a branch list, for `InitBranch`.
pub fn branch_list(entries: &[crate::config::BranchEntry]) -> Vec<pb::init_branch::Branch> {
    entries
        .iter()
        .map(|entry| pb::init_branch::Branch {
            name: entry.name.clone(),
            ip: entry.addr.ip().to_string(),
            port: u32::from(entry.addr.port()),
        })
        .collect()
}

/// Converts a wire amount that the protocol limits to u32, saturating: balances and channel sums
/// of a bank whose total fits in u32 always fit, and a saturated value is still visibly wrong.
pub fn to_wire_amount(amount: u64) -> u32 {
    u32::try_from(amount).unwrap_or(u32::MAX)
}

/// The `LocalSnapshot` a branch answers `RetrieveSnapshot` with. `peers` names the channels
/// (a live branch's channel `c` is peer `c` in both directions).
pub fn local_snapshot(
    record: &crate::core::SnapshotRecord,
    status: pb::SnapshotStatus,
    branch_name: &str,
    peers: &[String],
) -> pb::return_snapshot::LocalSnapshot {
    let channels = peers
        .iter()
        .enumerate()
        .map(|(channel, peer)| {
            let sent = record.sent().get(channel).copied().unwrap_or_default();
            let received = record.received().get(channel).copied().unwrap_or_default();
            let in_transit = record.in_transit().iter().filter(|t| t.from == channel);
            pb::return_snapshot::ChannelAudit {
                peer: peer.clone(),
                sent_count: sent.count,
                sent_amount: sent.amount,
                received_count: received.count,
                received_amount: received.amount,
                in_transit_seq: in_transit.clone().map(|t| t.seq).collect(),
                in_transit_amount: in_transit.map(|t| to_wire_amount(t.amount)).collect(),
                sent_digest: sent.digest,
                received_digest: received.digest,
            }
        })
        .collect();
    pb::return_snapshot::LocalSnapshot {
        snapshot_id: record.id(),
        balance: to_wire_amount(record.balance()),
        channel_state: record
            .channel_state()
            .iter()
            .map(|&amount| to_wire_amount(amount))
            .collect(),
        status: status as i32,
        branch_name: branch_name.to_string(),
        channels,
        lost_peers: record
            .lost()
            .iter()
            .filter_map(|&channel| peers.get(channel).cloned())
            .collect(),
    }
}

/// The answer for a snapshot id the branch holds no record of, with `status` saying why (never
/// seen, discarded, already retrieved).
pub fn no_record(
    id: u32,
    status: pb::SnapshotStatus,
    branch_name: &str,
) -> pb::return_snapshot::LocalSnapshot {
    pb::return_snapshot::LocalSnapshot {
        snapshot_id: id,
        status: status as i32,
        branch_name: branch_name.to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn record_statuses_are_named_as_the_schema_names_them() {
        use crate::core::node::RecordStatus;
        for status in [
            RecordStatus::Complete,
            RecordStatus::Recording,
            RecordStatus::Unknown,
            RecordStatus::CutShort,
            RecordStatus::Discarded,
            RecordStatus::AlreadyRetrieved,
        ] {
            assert_eq!(
                status.name(),
                pb::SnapshotStatus::from(status).as_str_name()
            );
        }
    }

    #[test]
    fn peer_messages_are_decoded_once_into_domain_values() {
        assert_eq!(
            PeerMsg::from(channel_frame(Frame::Transfer { seq: 3, amount: 7 }, 9)),
            PeerMsg::Channel {
                frame: Frame::Transfer { seq: 3, amount: 7 },
                pos: 9
            }
        );
        assert_eq!(
            PeerMsg::from(resume(5, 2, 1)),
            PeerMsg::Resume {
                incarnation: 5,
                received: 2,
                epoch: 1
            }
        );
        assert_eq!(PeerMsg::from(ack(4)), PeerMsg::Ack { received: 4 });
        assert_eq!(
            PeerMsg::from(final_refusal(RefusalKind::StateRegressed, "why")),
            PeerMsg::Refusal {
                kind: RefusalKind::StateRegressed,
                reason: "why".into()
            }
        );
        assert_eq!(
            PeerMsg::from(Body::InitSnapshot(pb::InitSnapshot { snapshot_id: 1 })),
            PeerMsg::Unexpected("InitSnapshot")
        );
    }

    #[test]
    fn controller_commands_are_decoded_once_with_their_member_list_validated() {
        let branch = |name: &str, port| pb::init_branch::Branch {
            name: name.into(),
            ip: "127.0.0.1".into(),
            port,
        };
        let init = |all_branches| {
            ControllerCmd::from(Body::InitBranch(pb::InitBranch {
                epoch: 0,
                balance: 50,
                all_branches,
                secret: b"s".to_vec(),
                controller: 9,
                rolls_back: false,
            }))
        };
        let ControllerCmd::InitBranch(bank) = init(vec![branch("a", 1), branch("b", 2)]) else {
            panic!("an InitBranch");
        };
        assert_eq!((bank.balance, bank.controller), (50, 9));
        assert_eq!(bank.secret, b"s");
        let members = bank.members.expect("a valid list");
        assert_eq!(check_listed("b", &members), Ok(()));
        assert_eq!(
            check_listed("c", &members),
            Err(InitError::SelfMissing("c".into()))
        );
        let ControllerCmd::InitBranch(bad) = init(vec![branch("a", 1), branch("a", 2)]) else {
            panic!("an InitBranch");
        };
        assert_eq!(bad.members, Err(InitError::DuplicateName("a".into())));
        assert_eq!(
            ControllerCmd::from(Body::RetrieveSnapshot(pb::RetrieveSnapshot {
                snapshot_id: 4,
                wait_ms: 10
            })),
            ControllerCmd::RetrieveSnapshot { id: 4, wait_ms: 10 }
        );
        assert_eq!(
            ControllerCmd::from(ack(1)),
            ControllerCmd::Unexpected("Ack")
        );
    }

    #[test]
    fn a_refusal_of_a_kind_this_build_does_not_know_only_asks_for_a_retry() {
        let unknown = Body::Refusal(pb::Refusal {
            reason: "from a newer build".into(),
            kind: 99,
        });
        assert_eq!(
            PeerMsg::from(unknown),
            PeerMsg::Refusal {
                kind: RefusalKind::Retry,
                reason: "from a newer build".into()
            }
        );
    }

    fn decode_all(bytes: &[u8], max: usize) -> Vec<Result<pb::BranchMessage, String>> {
        let mut codec = FrameCodec::new(max);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(frame)) => out.push(Ok(frame)),
                Ok(None) => break,
                Err(err) => {
                    out.push(Err(err.to_string()));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn frames_round_trip_and_match_protobufs_delimited_form() {
        let mut bytes = Vec::new();
        encode_frame(
            Body::Transfer(pb::Transfer {
                money: 300,
                seq: 0,
                pos: 0,
            }),
            &mut bytes,
        );
        encode_frame(
            Body::Marker(pb::Marker {
                snapshot_id: 2,
                pos: 0,
            }),
            &mut bytes,
        );
        // Same bytes as prost's own length-delimited encoding (what writeDelimitedTo produces).
        let reference = pb::BranchMessage {
            branch_message: Some(Body::Transfer(pb::Transfer {
                money: 300,
                seq: 0,
                pos: 0,
            })),
        }
        .encode_length_delimited_to_vec();
        assert_eq!(&bytes[..reference.len()], &reference[..]);
        let frames = decode_all(&bytes, DEFAULT_MAX_FRAME_BYTES);
        assert_eq!(frames.len(), 2);
        assert_eq!(
            frames[1].as_ref().unwrap().branch_message,
            Some(Body::Marker(pb::Marker {
                snapshot_id: 2,
                pos: 0
            }))
        );
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let mut bytes = Vec::new();
        encode_frame(
            Body::Hello(pb::Hello {
                name: "x".repeat(300),
                nonce: vec![7; 16],
                known_incarnation: 0,
            }),
            &mut bytes,
        );
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        for (i, byte) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let frame = codec.decode(&mut buf).unwrap();
            assert_eq!(frame.is_some(), i == bytes.len() - 1);
        }
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut prefix = Vec::new();
        prost::encoding::encode_varint(10_000, &mut prefix);
        let frames = decode_all(&prefix, 1024);
        assert_eq!(
            frames,
            vec![Err(
                "frame of 10000 bytes exceeds the 1024-byte limit".into()
            )]
        );
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let frames = decode_all(&[0xff; 16], DEFAULT_MAX_FRAME_BYTES);
        assert!(
            frames[0]
                .as_ref()
                .unwrap_err()
                .contains("malformed length prefix")
        );
        let frames = decode_all(&[5, 0x0a, 0x01], DEFAULT_MAX_FRAME_BYTES);
        assert!(
            frames[0]
                .as_ref()
                .unwrap_err()
                .contains("closed in the middle")
        );
        let frames = decode_all(&[3, 0xff, 0xff, 0xff], DEFAULT_MAX_FRAME_BYTES);
        assert!(frames[0].as_ref().unwrap_err().contains("undecodable"));
    }

    #[test]
    fn init_branch_members_are_validated() {
        let branch = |name: &str, ip: &str, port| pb::init_branch::Branch {
            name: name.into(),
            ip: ip.into(),
            port,
        };
        let ok = [branch("a", "127.0.0.1", 1), branch("b", "::1", 2)];
        assert_eq!(bank_members("b", &ok).unwrap().len(), 2);
        assert_eq!(
            bank_members("c", &ok),
            Err(InitError::SelfMissing("c".into()))
        );
        let dup = [branch("a", "127.0.0.1", 1), branch("a", "127.0.0.1", 2)];
        assert_eq!(
            bank_members("a", &dup),
            Err(InitError::DuplicateName("a".into()))
        );
        for bad in [
            branch("a", "host", 1),
            branch("a", "1.2.3.4", 0),
            branch("a", "1.2.3.4", 70000),
        ] {
            assert!(matches!(
                bank_members("a", &[bad]),
                Err(InitError::BadAddress { .. })
            ));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever bytes arrive, in whatever pieces, the decoder returns frames or an error and
        /// never panics or buffers past its limit.
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            cut in 0usize..2048,
        ) {
            let mut codec = FrameCodec::new(512);
            let mut buf = BytesMut::new();
            let (head, tail) = bytes.split_at(cut.min(bytes.len()));
            for piece in [head, tail] {
                buf.extend_from_slice(piece);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
            }
            let _ = codec.decode_eof(&mut buf);
        }
    }
}
