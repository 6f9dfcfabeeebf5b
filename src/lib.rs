//! snapbank: a distributed bank whose branches move money over TCP while a controller takes
//! Chandy-Lamport global snapshots of it.
//!
//! A map of the crate, from the bytes on the wire inwards:
//!
//! - [`wire`]: the protobuf types generated from `proto/bank.proto`, the delimited frame codec,
//!   frame builders, and the conversions of what arrives into domain values
//!   ([`core::PeerMsg`], [`wire::ControllerCmd`]). The only module that knows about bytes.
//! - [`auth`]: the cluster secret and the HMAC challenge-response proofs of the handshakes.
//! - [`handshake`]: the peer and controller handshakes as async steps over a connection.
//! - [`backoff`]: the capped, jittered pause between reconnect attempts.
//! - [`dial`]: the one connect loop: connect timeout, a handshake step, backoff, an optional
//!   deadline and rate-limited warnings; every party that dials another uses it.
//! - [`config`]: the branches file (`<name> <ip> <port>` lines), parsed and validated.
//! - [`core`]: the algorithm with no I/O. [`core::node::BranchNode`] is the whole branch protocol
//!   (channels across reconnects, incarnations, grace periods, records and answers, durability
//!   epochs, the generator's decision) as a state machine with typed inputs and a `Ready` out;
//!   it owns a [`core::BranchCore`], which applies transfers and markers to a ledger;
//!   [`core::SnapshotRecord`] is one branch's part of a snapshot; [`core::Audit`] proves (or
//!   refutes) that a snapshot is a consistent cut.
//! - [`sim`]: a deterministic simulator driving one [`core::node::BranchNode`] per branch on a
//!   simulated network of FIFO connections that it can cut, with durable branches on in-memory
//!   stores that it can crash, restart and pause; behind `snapbank-sim` and the randomized
//!   searches in the tests.
//! - [`check`]: the model checker: every interleaving of a small bank of `BranchNode`s with
//!   cuts, crashes and restarts, explored by `stateright` (`snapbank-check`), and its paths as
//!   step scripts that `snapbank-sim` replays and draws ([`check::scenario`]).
//! - [`outbox`]: the write half of every connection: frames appended to a buffer that a writer
//!   task drains in batches, so a burst of messages costs one system call.
//! - [`branch`]: a live branch, the runtime of a `BranchNode`: `BranchActor` owns the node and
//!   carries out its `Ready` (sockets, timers, the commit thread, random draws), one
//!   `PeerConnection` actor per TCP stream feeds it frames in FIFO order, one `SnapshotRecorder`
//!   actor per snapshot record runs that record's timers; in a bank with a secret the branch
//!   obeys one controller at a time (its controller lease).
//! - [`controller`]: `ControllerActor` initialises the bank, schedules snapshots, retrieves the
//!   records and turns them into [`controller::SnapshotReport`]s. What both controllers decide
//!   (snapshots in flight, deadlines, answers, report assembly) is one no-I/O collector
//!   (`controller::collector`); each controller keeps only its connection pattern.
//! - [`store`]: a durable branch's state behind [`store::BranchStore`], over the branch's own
//!   types ([`core::persist`]): the redb store (group commit, read back after a crash) and an
//!   in-memory one that survives a simulated crash.
//! - [`failpoint`]: named places where a test can make a branch abort, as `kill -9` would.
//! - [`controller::checkpoint`]: ok snapshots as sealed, self-describing files written
//!   atomically (`controller --checkpoint-dir`), and read back and checked to start a fresh
//!   bank from one (`controller --restore`).
//! - [`controller::rollback`]: rolling a running in-memory bank back to its latest ok snapshot
//!   in a new epoch when a branch comes back empty (`controller --on-branch-loss rollback`), the
//!   two phases with no I/O; the branch's side is `branch::actor`'s `rollback`.
//! - [`controller::compat`]: `CompatController` (`controller --compat`) drives branches that
//!   speak only the exercise's original schema, one connection per branch or per command.
//! - [`local_bank`]: starts real `branch` processes on free loopback ports and kills them on drop;
//!   used by `./demo` and the end-to-end tests.
//! - [`web`]: the web view (`controller --web`): a live page, JSON API, event stream and
//!   Prometheus metrics of the bank's snapshots, on `actix-web`.

pub mod auth;
pub mod backoff;
pub mod branch;
pub mod check;
pub mod config;
pub mod controller;
pub mod core;
pub mod dial;
pub mod failpoint;
pub mod handshake;
pub mod local_bank;
pub mod outbox;
pub mod sim;
pub mod store;
pub mod web;
pub mod wire;
