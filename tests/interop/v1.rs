//! The exercise's original (v1) messages, field numbers 1-6 and nothing else, written by hand
//! rather than taken from snapbank's extended types, so no extension field can leak into what
//! the original-schema peers of these tests send or read. Framing is protobuf's standard
//! delimited form, read and written blocking, as Java's `writeDelimitedTo` /
//! `parseDelimitedFrom` do.

use std::io::{self, Read, Write};

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct Branch {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub ip: String,
    #[prost(uint32, tag = "3")]
    pub port: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct InitBranch {
    #[prost(uint32, tag = "1")]
    pub balance: u32,
    #[prost(message, repeated, tag = "2")]
    pub all_branches: Vec<Branch>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Transfer {
    #[prost(uint32, tag = "1")]
    pub money: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct InitSnapshot {
    #[prost(uint32, tag = "1")]
    pub snapshot_id: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Marker {
    #[prost(uint32, tag = "1")]
    pub snapshot_id: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct RetrieveSnapshot {
    #[prost(uint32, tag = "1")]
    pub snapshot_id: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct LocalSnapshot {
    #[prost(uint32, tag = "1")]
    pub snapshot_id: u32,
    #[prost(uint32, tag = "2")]
    pub balance: u32,
    #[prost(uint32, repeated, tag = "3")]
    pub channel_state: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ReturnSnapshot {
    #[prost(message, optional, tag = "1")]
    pub local_snapshot: Option<LocalSnapshot>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Msg {
    #[prost(message, tag = "1")]
    InitBranch(InitBranch),
    #[prost(message, tag = "2")]
    Transfer(Transfer),
    #[prost(message, tag = "3")]
    InitSnapshot(InitSnapshot),
    #[prost(message, tag = "4")]
    Marker(Marker),
    #[prost(message, tag = "5")]
    RetrieveSnapshot(RetrieveSnapshot),
    #[prost(message, tag = "6")]
    ReturnSnapshot(ReturnSnapshot),
}

#[derive(Clone, PartialEq, Message)]
pub struct BranchMessage {
    #[prost(oneof = "Msg", tags = "1, 2, 3, 4, 5, 6")]
    pub branch_message: Option<Msg>,
}

/// Writes one delimited frame.
pub fn write(stream: &mut impl Write, msg: Msg) -> io::Result<()> {
    let frame = BranchMessage {
        branch_message: Some(msg),
    }
    .encode_length_delimited_to_vec();
    stream.write_all(&frame)?;
    stream.flush()
}

/// Reads one delimited frame: `Ok(None)` at a clean end of stream. A frame holding a message
/// v1 does not know (snapbank's extensions) reads as `Some(None)`.
pub fn read(stream: &mut impl Read) -> io::Result<Option<Option<Msg>>> {
    let mut len: u64 = 0;
    for shift in 0..5 {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte)? == 0 {
            if shift == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len |= u64::from(byte[0] & 0x7f) << (7 * shift);
        if byte[0] & 0x80 == 0 {
            let mut body = vec![0u8; len as usize];
            stream.read_exact(&mut body)?;
            let frame = BranchMessage::decode(body.as_slice())
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
            return Ok(Some(frame.branch_message));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "bad length prefix",
    ))
}
