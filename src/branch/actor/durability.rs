//! Durability for [`BranchActor`] (a branch with `--data-dir`): the commit thread, and
//! rebuilding the node from the store after a crash.
//!
//! What is staged for which commit, and what may leave only after which commit, is the node's
//! ([`crate::core::node::epochs`]): its `Ready` carries one commit at a time, which is written
//! here in one transaction on a blocking thread (one fsync) while the actor goes on; when it
//! returns, the node is told the epoch is durable and releases the frames, acknowledgements
//! and answers it covers.

use std::time::{Duration, Instant};

use actix::prelude::*;
use log::{error, info};

use super::BranchActor;
use crate::core::node::{BranchNode, Input, Persist};
use crate::store::Restored;

/// How often the store's figures are logged.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// The store's figures since the last log line.
#[derive(Debug)]
pub(super) struct CommitStats {
    commits: u64,
    frames: u64,
    time: Duration,
    since: Instant,
}

impl Default for CommitStats {
    fn default() -> Self {
        Self {
            commits: 0,
            frames: 0,
            time: Duration::ZERO,
            since: Instant::now(),
        }
    }
}

impl CommitStats {
    fn add(&mut self, frames: u64, took: Duration) {
        self.commits += 1;
        self.frames += frames;
        self.time += took;
        let elapsed = self.since.elapsed();
        if elapsed < STATS_EVERY {
            return;
        }
        info!(
            "store: {} commits in {:.1} s ({:.0} fsyncs/s), {:.1} frames per commit, mean commit {:.2} ms",
            self.commits,
            elapsed.as_secs_f64(),
            self.commits as f64 / elapsed.as_secs_f64(),
            self.frames as f64 / self.commits as f64,
            self.time.as_secs_f64() * 1000.0 / self.commits as f64
        );
        *self = Self::default();
    }
}

impl BranchActor {
    /// Writes the node's next commit on a blocking thread; tells the node when it is durable.
    ///
    /// One commit is written at a time, in the order the nodes asked: after a rollback
    /// replaced the node, the new node's first commit (which starts the store over in the new
    /// epoch) waits for the old node's commit still being written, so nothing of the old epoch
    /// lands after it. A commit of a node since dropped is not reported to the node that
    /// replaced it.
    pub(super) fn commit(&mut self, persist: Persist, ctx: &mut Context<Self>) {
        if self.store_handle.is_none() {
            return;
        }
        if self.commit_in_flight {
            // At most one node's commit waits: a node asks for its next only once its last is
            // durable, so one waiting here is of a node dropped since, and is dropped with it.
            self.queued_commit = Some((self.generation, persist));
            return;
        }
        self.write_commit(persist, ctx);
    }

    fn write_commit(&mut self, persist: Persist, ctx: &mut Context<Self>) {
        let Some(store) = self.store_handle.clone() else {
            return;
        };
        // The bank's description stays unwritten until this commit is durable: until then a
        // rollback's commit is not acknowledged.
        let bank = self.unwritten_bank.clone();
        let carries_bank = bank.is_some();
        let generation = self.generation;
        let started = Instant::now();
        let Persist {
            epoch,
            changes,
            frames,
            unfinished_record,
        } = persist;
        self.commit_in_flight = true;
        let writing = tokio::task::spawn_blocking(move || store.commit(bank.as_ref(), &changes));
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(writing).map(
                move |result, branch, ctx| match result {
                    Ok(Ok(())) => {
                        branch.commit_in_flight = false;
                        branch.commits.add(frames, started.elapsed());
                        crate::failpoint::hit("commit-durable");
                        if unfinished_record {
                            crate::failpoint::hit("mid-record");
                        }
                        if branch.generation == generation {
                            if carries_bank {
                                branch.bank_durable();
                            }
                            branch.step(Input::CommitDone { epoch }, ctx);
                        }
                        if let Some((queued, persist)) = branch.queued_commit.take()
                            && queued == branch.generation
                        {
                            branch.write_commit(persist, ctx);
                        }
                    }
                    Ok(Err(err)) => branch.store_failed(&err.to_string()),
                    Err(err) => branch.store_failed(&format!("the commit thread failed: {err}")),
                },
            ),
        );
    }

    /// The commit carrying the bank's description (a new bank, or a rollback's new epoch) is
    /// durable: the rollback answers that waited for it go out.
    fn bank_durable(&mut self) {
        self.unwritten_bank = None;
        for (conn, epoch) in std::mem::take(&mut self.awaiting_durable_bank) {
            self.answer_committed(conn, epoch);
        }
    }

    /// A branch that cannot make its state durable must not go on: it stops at once, as a
    /// crash would, and restarts from its last commit.
    fn store_failed(&self, reason: &str) -> ! {
        error!(
            "{}: {reason}; stopping (the branch restarts from its last durable commit)",
            self.name
        );
        std::process::exit(1);
    }

    /// Rebuilds the bank from the state its store held, then reconnects.
    pub(super) fn restore(
        &mut self,
        restored: Restored,
        ctx: &mut Context<Self>,
    ) -> Result<(), String> {
        let Restored {
            bank: stored_bank,
            core,
            channels,
            records,
        } = restored;
        self.check_own_entry(&stored_bank.members)?;
        let secret = stored_bank.secret;
        // `Store::open` refuses this already; a branch built around its own store checks too.
        if let Some(configured) = &self.settings.secret
            && !configured.same_as(secret.as_bytes())
        {
            return Err(
                "the bank in the store has another cluster secret than --secret-file".into(),
            );
        }
        self.incarnation = stored_bank.incarnation;
        // The bank epoch it committed: its peers refuse a channel of any other.
        self.epoch = stored_bank.epoch;
        let kept = records.len();
        // Kept for a rollback's second phase, which rebuilds the bank of the same members.
        self.members = Some((stored_bank.members.clone(), !secret.is_empty()));
        let bank = self.bank_of(stored_bank.members, !secret.is_empty(), |config| {
            BranchNode::restore(config, core, channels, records)
        })?;
        let node = &bank.node;
        let (balance, initial) = (node.balance(), node.core().ledger().initial());
        info!(
            "{}: restored from its store: balance {balance}, {} peers, {} frame(s) to resend, {kept} snapshot record(s) kept, incarnation {:016x}",
            self.name,
            bank.peers.len(),
            node.unacked_frames(),
            self.incarnation
        );
        self.secret = Some(secret);
        self.bank = Some(bank);
        self.after_bank_created(initial, ctx);
        Ok(())
    }
}
