//! The snapshot records of a [`BranchNode`]: the core's effects made into records, the bound on
//! how many are kept, and the answers to `RetrieveSnapshot`.
//!
//! - A record begins when the core records its state for a snapshot, collects the transfers
//!   found in transit, loses channels whose grace period ran out, and finishes when every
//!   incoming channel has delivered its marker (or been lost).
//! - At most [`MAX_KEPT_RECORDS`] records are kept (recording, or finished and not retrieved);
//!   beyond that the oldest is discarded, so a flood of markers with fresh ids cannot exhaust
//!   memory. A record nobody retrieves is discarded after [`RECORD_TTL`].
//! - A finished record handed to a controller is released, and its answer kept a while
//!   ([`AnsweredRecords`](super::AnsweredRecords)) for a controller that asks again.
//! - A retrieve is answered at once when the record is finished, when the controller will not
//!   wait, or when there is nothing to wait for (already retrieved or discarded); otherwise it
//!   is held until the record finishes or its wait runs out (at most [`MAX_RETRIEVE_WAIT`]).
//! - An original-schema controller neither asks to wait (`wait_ms` is 0) nor reads a record's
//!   status, so in a bank without a secret (the only kind such a controller can initialise) a
//!   retrieve with `wait_ms` 0 is held until the record is finished, for a snapshot not seen
//!   yet too, at most [`ORIGINAL_SCHEMA_WAIT`] (and at most `MAX_HELD_WITHOUT_WAIT` such requests
//!   per connection); an answer that is still not final then is logged as a warning. In a bank
//!   with a secret, `wait_ms` 0 answers at once.
//! - Every answer waits for the commit that makes what it reports durable
//!   ([`super::epochs`]).

use std::time::Duration;

use log::{debug, warn};

use super::{Answer, BranchNode, Command, ConnId, Note, RecordStatus, Timer, TimerOp, Waiter};
use crate::core::{Effect, Frame, InTransit, SnapshotId, SnapshotRecord};

/// Upper bound on snapshot records kept (recording, or finished and not yet retrieved). Beyond
/// it the oldest is discarded, so a flood of markers with fresh ids cannot exhaust memory.
pub const MAX_KEPT_RECORDS: usize = 1024;

/// How long a record is kept when nobody retrieves it (the controller gave up, or went away).
pub const RECORD_TTL: Duration = Duration::from_secs(600);

/// Upper bound on how long a `RetrieveSnapshot` may be held waiting for its record.
pub const MAX_RETRIEVE_WAIT: Duration = Duration::from_secs(60);

/// How long a `RetrieveSnapshot` without `wait_ms`, in a bank without a secret, is held for
/// its record to finish: an original-schema controller would print a partial record as final.
/// Far longer than a healthy snapshot takes; shorter than such controllers' own patience.
pub const ORIGINAL_SCHEMA_WAIT: Duration = Duration::from_secs(5);

/// Most requests without `wait_ms` held at once on one controller connection (see
/// [`ORIGINAL_SCHEMA_WAIT`]); beyond it they are answered at once. As many as snapbank's own
/// controller keeps snapshots in progress, far more than an original-schema controller does.
const MAX_HELD_WITHOUT_WAIT: usize = 256;

/// Upper bound on requests waiting for a snapshot this branch has not begun yet.
const MAX_EARLY_WAITERS: usize = 4096;

/// Most requests one controller connection may have held at once. A real controller holds one
/// per snapshot in progress; beyond this a request is answered at once with the record's
/// current state, so a flood of requests costs no memory.
const MAX_HELD_ANSWERS: usize = 8192;

impl BranchNode {
    /// Carries out the effects the core just produced, in order.
    pub(super) fn apply_effects(&mut self) {
        let mut effects = std::mem::take(&mut self.effects);
        for effect in effects.drain(..) {
            match effect {
                Effect::BeginRecord {
                    id,
                    balance,
                    sent,
                    received,
                } => self.begin_record(SnapshotRecord::new(id, balance, sent, received)),
                Effect::SendMarker { to, id } => {
                    if let Some(&peer) = self.channels.peer_of_out.get(to) {
                        self.send_on_channel(peer, Frame::Marker { id });
                    }
                }
                Effect::RecordTransfer {
                    id,
                    from,
                    seq,
                    amount,
                } => {
                    let transfer = InTransit { from, seq, amount };
                    if let Some(record) = self.records.get_mut(&id) {
                        record.add_in_transit(transfer);
                        if let Some(epochs) = self.epochs.as_mut() {
                            epochs.record_transfer(id, transfer);
                        }
                    }
                }
                Effect::ChannelLost { id, from } => {
                    if let Some(record) = self.records.get_mut(&id) {
                        record.lose(from);
                        if let Some(epochs) = self.epochs.as_mut() {
                            epochs.stage_record(record);
                        }
                    }
                }
                Effect::FinishRecord { id } => self.finish_record(id),
            }
        }
        self.effects = effects;
    }

    /// A record begins (the oldest kept is discarded first if the cap is reached).
    fn begin_record(&mut self, record: SnapshotRecord) {
        let id = record.id();
        if self.records.len() >= MAX_KEPT_RECORDS
            && let Some(&oldest) = self.records.keys().next()
        {
            warn!(
                "{}: more than {MAX_KEPT_RECORDS} snapshot records kept; discarding snapshot {oldest}",
                self.config.name
            );
            self.discard(oldest);
        }
        if let Some(epochs) = self.epochs.as_mut() {
            epochs.stage_record(&record);
        }
        self.highest_snapshot = Some(self.highest_snapshot.map_or(id, |h| h.max(id)));
        self.records.insert(id, record);
        self.ready.0.notes.push(Note::RecordBegun(id));
        self.ready.0.timers.push(TimerOp::Set {
            timer: Timer::RecordExpiry(id),
            after: RECORD_TTL,
        });
    }

    /// Record `id` is final: requests held for it are answered, and it is released.
    fn finish_record(&mut self, id: SnapshotId) {
        let Some(record) = self.records.get_mut(&id) else {
            return;
        };
        debug!("{}: finished recording snapshot {id}", self.config.name);
        record.finish();
        if let Some(epochs) = self.epochs.as_mut() {
            epochs.stage_record(record);
        }
        if !self.waiters.contains_key(&id) {
            return;
        }
        let answer = Answer::of(record);
        for waiter in self.take_waiters(id) {
            self.ready.0.timers.push(TimerOp::Cancel(Timer::Retrieve {
                id,
                token: waiter.token,
            }));
            self.answer(waiter.conn, answer.clone(), waiter.cannot_tell);
        }
        self.retire(id);
    }

    /// Every request held for snapshot `id`, no longer held.
    fn take_waiters(&mut self, id: SnapshotId) -> Vec<Waiter> {
        let waiters = self.waiters.remove(&id).unwrap_or_default();
        for waiter in &waiters {
            self.release_held(waiter.conn);
        }
        waiters
    }

    fn release_held(&mut self, conn: ConnId) {
        if let Some(held) = self.held.get_mut(&conn) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(&conn);
            }
        }
    }

    /// A finished record was handed over: released, its answer kept for a repeated request.
    fn retire(&mut self, id: SnapshotId) {
        let Some(record) = self.records.remove(&id) else {
            return;
        };
        self.forget_record_io(id);
        self.answered.keep(&Answer::of(&record), self.name_bytes);
        if let Some(epochs) = self.epochs.as_mut() {
            epochs.retire_record(&record);
        }
        self.core.abandon(id);
    }

    /// Record `id` is dropped unretrieved (the cap, or its age): a later request is told so,
    /// and it stops collecting transfers.
    fn discard(&mut self, id: SnapshotId) {
        if self.records.remove(&id).is_none() {
            return;
        }
        self.forget_record_io(id);
        self.discarded.insert(id);
        self.core.abandon(id);
        if let Some(epochs) = self.epochs.as_mut() {
            epochs.remove_record(id);
        }
        for waiter in self.take_waiters(id) {
            self.ready.0.timers.push(TimerOp::Cancel(Timer::Retrieve {
                id,
                token: waiter.token,
            }));
            let answer = self.no_record(id);
            self.answer(waiter.conn, answer, waiter.cannot_tell);
        }
    }

    /// Record `id` is gone: its recorder stops. If the runtime has not yet been told it began
    /// (both in one `Ready`), it is told neither, and the record's timers not yet handed over
    /// are dropped, so no timer outlives its record.
    fn forget_record_io(&mut self, id: SnapshotId) {
        let ready = &mut self.ready.0;
        match ready
            .notes
            .iter()
            .position(|note| *note == Note::RecordBegun(id))
        {
            Some(at) => {
                ready.notes.remove(at);
            }
            None => ready.notes.push(Note::RecordRetired(id)),
        }
        ready.timers.retain(|op| {
            !matches!(op, TimerOp::Set { timer: Timer::RecordExpiry(of) | Timer::Retrieve { id: of, .. }, .. } if *of == id)
        });
        ready.timers.push(TimerOp::Cancel(Timer::RecordExpiry(id)));
    }

    /// A controller's command on connection `conn`.
    pub(super) fn on_command(&mut self, conn: ConnId, cmd: Command) {
        if self.halted {
            return;
        }
        match cmd {
            Command::StartSnapshot { id } => {
                match self.core.start_snapshot(id, &mut self.effects) {
                    Ok(()) => {
                        debug!("{}: starting snapshot {id}", self.config.name);
                        self.touch();
                        self.apply_effects();
                    }
                    Err(err) => warn!("{}: InitSnapshot refused: {err}", self.config.name),
                }
            }
            Command::Retrieve { id, wait_ms } => self.retrieve(conn, id, wait_ms),
        }
    }

    fn retrieve(&mut self, conn: ConnId, id: SnapshotId, wait_ms: u32) {
        let held = self.held.get(&conn).copied().unwrap_or(0);
        let overloaded = held >= MAX_HELD_ANSWERS;
        // Only an original-schema controller can have initialised a bank without a secret, and
        // it cannot tell a partial record from a final one. Such a controller retrieves a
        // snapshot or two at a time: a connection with many held already is flooding, and is
        // answered at once.
        let without_wait = wait_ms == 0 && !self.config.authenticated;
        let cannot_tell = without_wait && held < MAX_HELD_WITHOUT_WAIT;
        if without_wait && !cannot_tell {
            debug!(
                "{}: {MAX_HELD_WITHOUT_WAIT} requests without wait_ms already held on a controller connection; answering snapshot {id} at once",
                self.config.name
            );
        }
        let wait = if cannot_tell {
            ORIGINAL_SCHEMA_WAIT
        } else {
            Duration::from_millis(u64::from(wait_ms)).min(MAX_RETRIEVE_WAIT)
        };
        let record = self.records.get(&id);
        if overloaded {
            warn!(
                "{}: the controller connection has {MAX_HELD_ANSWERS} requests held; answering snapshot {id} at once",
                self.config.name
            );
            let answer = match record {
                Some(_) => Answer::status_only(id, RecordStatus::Recording),
                None => self.no_record(id),
            };
            self.answer(conn, answer, cannot_tell);
            return;
        }
        match record {
            Some(record) if record.is_finished() => {
                let answer = Answer::of(record);
                self.answer(conn, answer, cannot_tell);
                self.retire(id);
                return;
            }
            Some(record) if wait.is_zero() => {
                let answer = Answer::of(record);
                self.answer(conn, answer, cannot_tell);
                return;
            }
            Some(_) => {}
            None => {
                let early: usize = self
                    .waiters
                    .iter()
                    .filter(|(waited, _)| !self.records.contains_key(waited))
                    .map(|(_, waiters)| waiters.len())
                    .sum();
                // Already retrieved or discarded, or never seen and the controller will not
                // wait: answered at once, so a flood of such requests holds nothing.
                if self.core.knows(id) || wait.is_zero() || early >= MAX_EARLY_WAITERS {
                    let answer = self.no_record(id);
                    self.answer(conn, answer, cannot_tell);
                    return;
                }
            }
        }
        let token = self.next_token;
        self.next_token += 1;
        self.waiters.entry(id).or_default().push(Waiter {
            conn,
            token,
            cannot_tell,
        });
        *self.held.entry(conn).or_default() += 1;
        self.ready.0.timers.push(TimerOp::Set {
            timer: Timer::Retrieve { id, token },
            after: wait,
        });
    }

    /// A timer fired.
    pub(super) fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Grace(channel) => self.grace_expired(channel),
            Timer::AckFlush => self.flush_acks(),
            Timer::Retrieve { id, token } => {
                let Some(waiters) = self.waiters.get_mut(&id) else {
                    return;
                };
                let Some(at) = waiters.iter().position(|w| w.token == token) else {
                    return;
                };
                let waiter = waiters.swap_remove(at);
                if waiters.is_empty() {
                    self.waiters.remove(&id);
                }
                self.release_held(waiter.conn);
                let answer = match self.records.get(&id) {
                    Some(record) => Answer::of(record),
                    None => self.no_record(id),
                };
                self.answer(waiter.conn, answer, waiter.cannot_tell);
            }
            Timer::RecordExpiry(id) => {
                if self.records.contains_key(&id) {
                    warn!(
                        "{}: snapshot {id} was not retrieved within {} s; discarding its record",
                        self.config.name,
                        RECORD_TTL.as_secs()
                    );
                    self.discard(id);
                }
            }
        }
    }

    /// The answer for snapshot `id` when no record is kept: the copy kept after an earlier
    /// retrieval, or why there is none.
    fn no_record(&self, id: SnapshotId) -> Answer {
        if let Some(kept) = self.answered.get(id) {
            return kept.clone();
        }
        let status = if self.discarded.contains(id) {
            RecordStatus::Discarded
        } else if self.answered.was_retrieved(id) {
            RecordStatus::AlreadyRetrieved
        } else {
            RecordStatus::Unknown
        };
        Answer::status_only(id, status)
    }

    /// Answers on controller connection `conn` once what the answer reports is durable (at once
    /// without a store), first warning when it is not a finished record and goes to a controller
    /// that `cannot_tell` (it will print it as final).
    fn answer(&mut self, conn: ConnId, answer: Answer, cannot_tell: bool) {
        if cannot_tell && answer.status != RecordStatus::Complete {
            warn!(
                "{}: snapshot {}: answering a RetrieveSnapshot without wait_ms (an original-schema controller) with a record that is not final ({}) after waiting at most {} s; that controller cannot tell and will print it as if it were",
                self.config.name,
                answer.id,
                answer.status.name(),
                ORIGINAL_SCHEMA_WAIT.as_secs()
            );
        }
        let answer = match self.epochs.as_mut() {
            Some(epochs) => epochs.hold_answer(conn, answer),
            None => Some(answer),
        };
        if let Some(answer) = answer {
            self.answer_now(conn, answer);
        }
    }

    /// Hands an answer to the runtime, keeping a copy of a finished record for a controller
    /// that asks again.
    pub(super) fn answer_now(&mut self, conn: ConnId, answer: Answer) {
        if answer.status.is_final() {
            self.answered.keep(&answer, self.name_bytes);
        }
        self.ready.0.answers.push((conn, answer));
    }
}
