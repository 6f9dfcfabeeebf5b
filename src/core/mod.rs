//! The bank's algorithm with no I/O: messages in, effects out.
//!
//! - [`ledger`]: one branch's balance, which never goes negative and never overflows.
//! - [`branch`]: [`BranchCore`], the Chandy-Lamport marker rules for any number of concurrent
//!   snapshots. It decides; it returns [`Effect`]s for the caller to carry out.
//! - [`record`]: [`SnapshotRecord`], what one branch recorded for one snapshot (the node keeps
//!   one per snapshot in progress or not yet retrieved), and [`RecordBook`], records driven
//!   straight from a core's effects, for the core's own tests and benchmarks.
//! - [`channel`]: exactly-once, in-order delivery on a directed peer channel across reconnects:
//!   positions, cumulative acknowledgements, the bounded window of frames kept for a resend.
//! - [`audit`]: the consistent-cut checker: from every branch's record of one snapshot, proves
//!   (or refutes, naming channel and rule) that the snapshot is a consistent cut.
//! - [`id_set`]: a compact set of snapshot ids, so remembering every finished snapshot costs
//!   memory proportional to the gaps between ids, not to their number.
//!
//! - [`node`]: [`node::BranchNode`], the whole branch protocol in one deterministic state
//!   machine: it owns a `BranchCore`, every peer channel, the records and answers and the
//!   durability epochs, takes typed inputs and hands back a `Ready` to carry out. The live
//!   branch ([`crate::branch`]), the simulator ([`crate::sim`]) and the tests all drive it.
//! - [`persist`]: what a durable branch makes durable, as typed changes and restored state.
//!
//! Nothing here does I/O, reads a clock or draws a random number: time and randomness are
//! inputs. No generated `pb` type appears here; [`crate::wire`] converts at the edge.

pub mod audit;
pub mod branch;
pub mod channel;
pub mod id_set;
pub mod ledger;
pub mod node;
pub mod persist;
pub mod record;

pub use audit::{Audit, ChannelEvidence, CutEvidence, Rule, Violation};
pub use branch::{
    BranchCore, Channel, ChannelCount, CoreError, CoreState, Effect, SnapshotId, chain_digest,
};
pub use channel::{
    ChannelError, Delivery, Frame, PeerMsg, Position, ReceiveCursor, RefusalKind, SendWindow,
};
pub use id_set::IdSet;
pub use ledger::{Ledger, split_total};
pub use record::{InTransit, RecordBook, SnapshotRecord};
