//! Checkpoints: ok snapshots kept on disk, so a bank can be started again from one.
//!
//! A checkpoint file describes itself; nothing else is needed to restore a bank from it:
//!
//! - line 1 is a header, `snapbank-checkpoint v1 sha256:<64 hex digits>`: the format, its
//!   version, and the SHA-256 of every byte after that line;
//! - the rest is one JSON object: the bank's total, the snapshot id, its verdict, when it was
//!   taken (Unix milliseconds), and per member its name, address, recorded balance and, per
//!   channel into it, the money recorded in transit and (when the branches sent counters) the
//!   transfers that made it up (`[seq, amount]` pairs).
//!
//! Rules, checked in this order when a file is read ([`Checkpoint::decode`]), each failure a
//! [`CheckpointError`] naming the problem:
//!
//! - the header is whole and names this format and a known version;
//! - the body hashes to the header's digest (a truncated or altered file fails here);
//! - the body has every field, with the right types; names are unique and each member has one
//!   channel from every other member;
//! - the verdict is `ok` (the controller writes no other, so any other was forged or damaged);
//! - every channel's listed transfers sum to its amount, and the balances plus the money in
//!   transit sum to the total.
//!
//! [`Checkpoint::restore_balances`] then matches the checkpoint against the bank to start: the
//! same total, the same member names (addresses may differ: a bank moved to other hosts).
//!
//! [`dir`] owns the files: atomic writes, the newest N kept, the newest found.

pub mod dir;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::report::SnapshotReport;
use crate::config::BranchEntry;

/// The first word of every checkpoint file.
pub const MAGIC: &str = "snapbank-checkpoint";
/// The version this code writes and reads; a later one is refused, not guessed at.
pub const VERSION: u32 = 1;
/// The verdict of every snapshot the controller writes.
pub const OK: &str = "ok";

/// One ok global snapshot, as written to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The snapshot's id: a bank restored from it numbers its snapshots after it.
    pub snapshot_id: u32,
    /// The money the bank holds.
    pub total: u64,
    /// The snapshot's verdict; only `ok` is ever written, and only `ok` restores.
    pub verdict: String,
    /// When the snapshot's report was made, in milliseconds since the Unix epoch.
    pub taken_unix_ms: u64,
    /// The bank's branches in branches-file order, each with its part of the snapshot.
    pub members: Vec<Member>,
}

/// One branch's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The branch's name: how a restore matches it to a branch of the new bank.
    pub name: String,
    /// Where it listened: for a person reading the file (a restore goes by name).
    pub addr: SocketAddr,
    /// Its recorded balance.
    pub balance: u64,
    /// The channels into it, one per other member, in members order.
    pub incoming: Vec<InTransit>,
}

/// The money recorded in transit on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InTransit {
    /// The sending member.
    pub from: String,
    /// The money in transit on the channel.
    pub amount: u64,
    /// The transfers in transit, `(sequence number, amount)`, when both ends sent counters.
    pub transfers: Option<Vec<(u64, u64)>>,
}

/// Why a checkpoint cannot be read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a snapbank checkpoint (its first line is not `{MAGIC} v{VERSION} sha256:...`)")]
    NotACheckpoint,
    #[error("checkpoint format version {0} is not supported (this controller reads v{VERSION})")]
    UnsupportedVersion(String),
    #[error("truncated: {0}")]
    Truncated(String),
    #[error(
        "checksum mismatch: the contents hash to sha256:{actual}, the header says sha256:{recorded} (the file was altered)"
    )]
    Checksum { recorded: String, actual: String },
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("snapshot {id} was not ok (verdict {verdict:?}); only ok snapshots restore a bank")]
    NotOk { id: u32, verdict: String },
    #[error(
        "channel {from}->{to} records {amount} in transit but its transfers sum to {transfers}"
    )]
    TransfersMismatch {
        from: String,
        to: String,
        amount: u64,
        transfers: u64,
    },
    #[error("balances and money in transit sum to {sum}, not the checkpoint's total {total}")]
    SumMismatch { sum: u64, total: u64 },
    #[error("the checkpoint's total is {recorded}, not the {asked} given on the command line")]
    WrongTotal { recorded: u64, asked: u64 },
    #[error(
        "the checkpoint's members ({recorded}) are not the branches file's ({given}): another bank's checkpoint"
    )]
    OtherBank { recorded: String, given: String },
}

impl Checkpoint {
    /// The checkpoint of `report` for a bank of `members` (in branches-file order), made at
    /// `taken_unix_ms`; `None` unless the snapshot is ok (only those are written).
    pub fn of_report(
        report: &SnapshotReport,
        members: &[BranchEntry],
        taken_unix_ms: u64,
    ) -> Option<Self> {
        if !report.is_ok() || report.branches.len() != members.len() {
            return None;
        }
        let mut out = Vec::with_capacity(members.len());
        for (entry, state) in members.iter().zip(&report.branches) {
            let record = state.record.as_ref().ok()?;
            if state.name != entry.name {
                return None;
            }
            let incoming = record
                .incoming
                .iter()
                .enumerate()
                .map(|(slot, (from, amount))| InTransit {
                    from: from.clone(),
                    amount: *amount,
                    transfers: record.audits.as_ref().and_then(|audits| {
                        audits.get(slot).map(|audit| {
                            audit
                                .in_transit_seq
                                .iter()
                                .zip(&audit.in_transit_amount)
                                .map(|(&seq, &amount)| (seq, u64::from(amount)))
                                .collect()
                        })
                    }),
                })
                .collect();
            out.push(Member {
                name: entry.name.clone(),
                addr: entry.addr,
                balance: record.balance,
                incoming,
            });
        }
        Some(Self {
            snapshot_id: report.id,
            total: report.expected_total,
            verdict: OK.to_string(),
            taken_unix_ms,
            members: out,
        })
    }

    /// The file's bytes: the header line, then the JSON body it seals.
    pub fn encode(&self) -> Vec<u8> {
        let members: Vec<Value> = self
            .members
            .iter()
            .map(|member| {
                json!({
                    "name": member.name,
                    "addr": member.addr.to_string(),
                    "balance": member.balance,
                    "incoming": member.incoming.iter().map(|channel| json!({
                        "from": channel.from,
                        "amount": channel.amount,
                        "transfers": channel.transfers,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let body = json!({
            "snapshot_id": self.snapshot_id,
            "total": self.total,
            "verdict": self.verdict,
            "taken_unix_ms": self.taken_unix_ms,
            "members": members,
        });
        let mut body = serde_json::to_string_pretty(&body).unwrap_or_default();
        body.push('\n');
        seal(body.as_bytes())
    }

    /// Reads a checkpoint file's bytes and checks every rule of the module doc; the
    /// checkpoint it returns is whole, ok and sums to its total.
    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
            return Err(if bytes.starts_with(MAGIC.as_bytes()) {
                CheckpointError::Truncated("the header line has no end".into())
            } else {
                CheckpointError::NotACheckpoint
            });
        };
        let header =
            std::str::from_utf8(&bytes[..newline]).map_err(|_| CheckpointError::NotACheckpoint)?;
        let body = &bytes[newline + 1..];
        let mut words = header.split(' ');
        if words.next() != Some(MAGIC) {
            return Err(CheckpointError::NotACheckpoint);
        }
        let version = words.next().unwrap_or("");
        if version != format!("v{VERSION}") {
            return Err(match version.strip_prefix('v') {
                Some(number) => CheckpointError::UnsupportedVersion(number.to_string()),
                None => CheckpointError::NotACheckpoint,
            });
        }
        let recorded = match (
            words.next().and_then(|w| w.strip_prefix("sha256:")),
            words.next(),
        ) {
            (Some(digest), None) if digest.len() == 64 => digest.to_string(),
            _ => return Err(CheckpointError::NotACheckpoint),
        };
        let actual = hex_sha256(body);
        let parsed = serde_json::from_slice::<Value>(body);
        if actual != recorded {
            return Err(match parsed {
                Err(err) if err.is_eof() || !body.ends_with(b"\n") => CheckpointError::Truncated(
                    format!("the contents end after {} bytes, in the middle", body.len()),
                ),
                _ => CheckpointError::Checksum { recorded, actual },
            });
        }
        let body = parsed.map_err(|err| CheckpointError::Malformed(err.to_string()))?;
        let checkpoint = from_json(&body)?;
        checkpoint.check_self()?;
        Ok(checkpoint)
    }

    /// The rules a checkpoint must follow on its own (module doc), after the format's.
    fn check_self(&self) -> Result<(), CheckpointError> {
        let names: HashSet<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        if names.len() != self.members.len() {
            return Err(CheckpointError::Malformed(
                "a member name appears twice".into(),
            ));
        }
        if self.members.len() < 2 {
            return Err(CheckpointError::Malformed("fewer than two members".into()));
        }
        for member in &self.members {
            let senders: Vec<&str> = self
                .members
                .iter()
                .filter(|other| other.name != member.name)
                .map(|other| other.name.as_str())
                .collect();
            let froms: Vec<&str> = member.incoming.iter().map(|c| c.from.as_str()).collect();
            if froms != senders {
                return Err(CheckpointError::Malformed(format!(
                    "member {} has channels from [{}], expected one from each other member [{}]",
                    member.name,
                    froms.join(", "),
                    senders.join(", ")
                )));
            }
        }
        if self.verdict != OK {
            return Err(CheckpointError::NotOk {
                id: self.snapshot_id,
                verdict: self.verdict.clone(),
            });
        }
        let mut sum: u64 = 0;
        for member in &self.members {
            sum = sum.saturating_add(member.balance);
            for channel in &member.incoming {
                if let Some(transfers) = &channel.transfers {
                    let listed = transfers
                        .iter()
                        .fold(0u64, |acc, (_, amount)| acc.saturating_add(*amount));
                    if listed != channel.amount {
                        return Err(CheckpointError::TransfersMismatch {
                            from: channel.from.clone(),
                            to: member.name.clone(),
                            amount: channel.amount,
                            transfers: listed,
                        });
                    }
                }
                sum = sum.saturating_add(channel.amount);
            }
        }
        if sum != self.total {
            return Err(CheckpointError::SumMismatch {
                sum,
                total: self.total,
            });
        }
        Ok(())
    }

    /// Each branch's starting balance for a bank of `total` over `branches` restored from this
    /// checkpoint, in `branches` order: its recorded balance plus the money recorded in transit
    /// into it (the transfers that would have arrived). Refused unless the total is the
    /// checkpoint's and the branches are its members by name.
    pub fn restore_balances(
        &self,
        total: u64,
        branches: &[BranchEntry],
    ) -> Result<Vec<u64>, CheckpointError> {
        if total != self.total {
            return Err(CheckpointError::WrongTotal {
                recorded: self.total,
                asked: total,
            });
        }
        let mut recorded: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        let mut given: Vec<&str> = branches.iter().map(|b| b.name.as_str()).collect();
        recorded.sort_unstable();
        given.sort_unstable();
        if recorded != given {
            return Err(CheckpointError::OtherBank {
                recorded: recorded.join(", "),
                given: given.join(", "),
            });
        }
        Ok(branches
            .iter()
            .map(|branch| {
                self.members
                    .iter()
                    .find(|member| member.name == branch.name)
                    .map_or(0, Member::restored_balance)
            })
            .collect())
    }
}

impl Member {
    /// The balance this member starts with in a restored bank: its own plus what was on its
    /// way to it.
    pub fn restored_balance(&self) -> u64 {
        self.incoming.iter().fold(self.balance, |sum, channel| {
            sum.saturating_add(channel.amount)
        })
    }
}

/// The header line sealing `body`, then `body`.
fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = format!("{MAGIC} v{VERSION} sha256:{}\n", hex_sha256(body)).into_bytes();
    out.extend_from_slice(body);
    out
}

fn hex_sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The checkpoint a body describes, every field present and of its type.
fn from_json(body: &Value) -> Result<Checkpoint, CheckpointError> {
    let missing =
        |what: &str| CheckpointError::Malformed(format!("{what} is missing or not valid"));
    let field = |value: &Value, name: &str| value.get(name).cloned().ok_or_else(|| missing(name));
    let uint = |value: &Value, name: &str| {
        value
            .get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| missing(name))
    };
    let text = |value: &Value, name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| missing(name))
    };
    let snapshot_id =
        u32::try_from(uint(body, "snapshot_id")?).map_err(|_| missing("snapshot_id"))?;
    let members = field(body, "members")?;
    let members = members.as_array().ok_or_else(|| missing("members"))?;
    let mut out = Vec::with_capacity(members.len());
    for member in members {
        let name = text(member, "name")?;
        let addr = text(member, "addr")?
            .parse()
            .map_err(|_| missing(&format!("member {name}'s addr")))?;
        let incoming = field(member, "incoming")?;
        let incoming = incoming
            .as_array()
            .ok_or_else(|| missing(&format!("member {name}'s incoming")))?;
        let mut channels = Vec::with_capacity(incoming.len());
        for channel in incoming {
            let transfers = match channel.get("transfers") {
                None | Some(Value::Null) => None,
                Some(Value::Array(pairs)) => Some(
                    pairs
                        .iter()
                        .map(|pair| match pair.as_array().map(Vec::as_slice) {
                            Some([seq, amount]) => seq.as_u64().zip(amount.as_u64()),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| missing(&format!("a transfer into {name}")))?,
                ),
                Some(_) => return Err(missing(&format!("transfers into {name}"))),
            };
            channels.push(InTransit {
                from: text(channel, "from")?,
                amount: uint(channel, "amount")?,
                transfers,
            });
        }
        out.push(Member {
            balance: uint(member, "balance")?,
            name,
            addr,
            incoming: channels,
        });
    }
    Ok(Checkpoint {
        snapshot_id,
        total: uint(body, "total")?,
        verdict: text(body, "verdict")?,
        taken_unix_ms: uint(body, "taken_unix_ms")?,
        members: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three members, total 3000, with 25 in transit to b2 (two transfers) and 5 to b3.
    pub(crate) fn sample() -> Checkpoint {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let channel = |from: &str, amount, transfers: Option<Vec<(u64, u64)>>| InTransit {
            from: from.into(),
            amount,
            transfers,
        };
        Checkpoint {
            snapshot_id: 41,
            total: 3000,
            verdict: OK.into(),
            taken_unix_ms: 1_764_650_000_123,
            members: vec![
                Member {
                    name: "b1".into(),
                    addr: addr(9090),
                    balance: 990,
                    incoming: vec![channel("b2", 0, Some(vec![])), channel("b3", 0, None)],
                },
                Member {
                    name: "b2".into(),
                    addr: addr(9091),
                    balance: 975,
                    incoming: vec![
                        channel("b1", 25, Some(vec![(7, 10), (8, 15)])),
                        channel("b3", 0, None),
                    ],
                },
                Member {
                    name: "b3".into(),
                    addr: addr(9092),
                    balance: 1005,
                    incoming: vec![channel("b1", 5, None), channel("b2", 0, None)],
                },
            ],
        }
    }

    fn entries(names: &[&str]) -> Vec<BranchEntry> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| BranchEntry {
                name: (*name).into(),
                addr: SocketAddr::from(([10, 0, 0, 1], 7000 + i as u16)),
            })
            .collect()
    }

    /// `sample()` changed by `edit`, encoded with a valid seal: what a buggy or hostile writer
    /// could produce.
    fn resealed(edit: impl FnOnce(&mut Checkpoint)) -> Vec<u8> {
        let mut checkpoint = sample();
        edit(&mut checkpoint);
        checkpoint.encode()
    }

    #[test]
    fn a_checkpoint_round_trips_through_its_file() {
        let checkpoint = sample();
        let bytes = checkpoint.encode();
        assert!(bytes.starts_with(b"snapbank-checkpoint v1 sha256:"));
        assert_eq!(Checkpoint::decode(&bytes), Ok(checkpoint));
    }

    #[test]
    fn restored_balances_credit_the_money_in_transit_and_follow_the_new_file_order() {
        // The new bank lists its branches in another order, at other addresses.
        let balances = sample()
            .restore_balances(3000, &entries(&["b3", "b1", "b2"]))
            .unwrap();
        assert_eq!(balances, vec![1010, 990, 1000]);
        assert_eq!(balances.iter().sum::<u64>(), 3000);
    }

    #[test]
    fn a_truncated_file_is_refused_as_truncated() {
        let bytes = sample().encode();
        for cut in [bytes.len() - 40, bytes.len() / 2, 100] {
            let err = Checkpoint::decode(&bytes[..cut]).unwrap_err();
            assert!(matches!(err, CheckpointError::Truncated(_)), "{cut}: {err}");
        }
        let err = Checkpoint::decode(&bytes[..20]).unwrap_err();
        assert!(matches!(err, CheckpointError::Truncated(_)), "{err}");
        assert_eq!(
            Checkpoint::decode(b""),
            Err(CheckpointError::NotACheckpoint)
        );
    }

    #[test]
    fn an_altered_balance_fails_the_checksum() {
        let text = String::from_utf8(sample().encode()).unwrap();
        let altered = text.replacen("\"balance\": 990", "\"balance\": 999", 1);
        assert_ne!(altered, text);
        let err = Checkpoint::decode(altered.as_bytes()).unwrap_err();
        assert!(matches!(err, CheckpointError::Checksum { .. }), "{err}");
        assert!(err.to_string().starts_with("checksum mismatch"), "{err}");
    }

    #[test]
    fn a_sealed_checkpoint_that_does_not_sum_to_its_total_is_refused() {
        let bytes = resealed(|c| c.members[0].balance += 1);
        assert_eq!(
            Checkpoint::decode(&bytes),
            Err(CheckpointError::SumMismatch {
                sum: 3001,
                total: 3000
            })
        );
        let bytes = resealed(|c| c.members[1].incoming[0].transfers = Some(vec![(7, 10)]));
        assert!(matches!(
            Checkpoint::decode(&bytes),
            Err(CheckpointError::TransfersMismatch {
                amount: 25,
                transfers: 10,
                ..
            })
        ));
    }

    #[test]
    fn a_snapshot_that_was_not_ok_is_refused() {
        let bytes = resealed(|c| c.verdict = "incomplete".into());
        let err = Checkpoint::decode(&bytes).unwrap_err();
        assert_eq!(
            err,
            CheckpointError::NotOk {
                id: 41,
                verdict: "incomplete".into()
            }
        );
    }

    #[test]
    fn another_banks_members_or_another_total_are_refused() {
        let checkpoint = sample();
        let err = checkpoint
            .restore_balances(3000, &entries(&["b1", "b2", "x3"]))
            .unwrap_err();
        assert!(matches!(err, CheckpointError::OtherBank { .. }), "{err}");
        assert!(err.to_string().contains("(b1, b2, b3)"), "{err}");
        let err = checkpoint
            .restore_balances(3000, &entries(&["b1", "b2", "b3", "b4"]))
            .unwrap_err();
        assert!(matches!(err, CheckpointError::OtherBank { .. }), "{err}");
        assert_eq!(
            checkpoint.restore_balances(4000, &entries(&["b1", "b2", "b3"])),
            Err(CheckpointError::WrongTotal {
                recorded: 3000,
                asked: 4000
            })
        );
    }

    #[test]
    fn headers_and_bodies_of_other_shapes_are_refused() {
        let body = b"{}\n";
        assert_eq!(
            Checkpoint::decode(b"hello\nworld\n"),
            Err(CheckpointError::NotACheckpoint)
        );
        let future = format!("{MAGIC} v2 sha256:{}\n{{}}\n", hex_sha256(body));
        assert_eq!(
            Checkpoint::decode(future.as_bytes()),
            Err(CheckpointError::UnsupportedVersion("2".into()))
        );
        assert!(matches!(
            Checkpoint::decode(&seal(body)),
            Err(CheckpointError::Malformed(_))
        ));
        assert!(matches!(
            Checkpoint::decode(&seal(b"not json")),
            Err(CheckpointError::Malformed(_))
        ));
        let bytes = resealed(|c| c.members[2].incoming.pop().map(drop).unwrap_or(()));
        let err = Checkpoint::decode(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("member b3 has channels from [b1]"),
            "{err}"
        );
        let bytes = resealed(|c| c.members[1].name = "b1".into());
        assert!(matches!(
            Checkpoint::decode(&bytes),
            Err(CheckpointError::Malformed(_))
        ));
    }
}
