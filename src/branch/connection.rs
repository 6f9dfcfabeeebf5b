//! [`PeerConnection`]: the actor that owns one TCP stream of a branch (to a peer branch or to
//! the controller).
//!
//! Its read half is an actix stream of decoded frames; each frame is forwarded with `do_send` to
//! the [`BranchActor`], whose single mailbox keeps them in arrival order (FIFO is the correctness
//! condition of Chandy-Lamport). Its write half is an [`Outbox`] drained by a writer task that
//! lives and dies with the actor. A framing error, a write error or the end of the stream stops
//! the actor, and stopping tells the branch the connection is gone. When the other side closes
//! its half, what is already queued is still written (a controller may half-close after its
//! last request and still expects the answers), for at most [`DRAIN_TIMEOUT`].
//!
//! Liveness: a connection that has read nothing for a third of the peer timeout sends a
//! `Heartbeat` probe, which the other side's connection answers at once (heartbeats never reach
//! the branch); one that has read nothing at all for the whole peer timeout is declared broken
//! and stopped, so a half-open connection (the other host frozen or unplugged) is detected
//! instead of waiting forever. Controller connections answer probes, and send them only in a
//! bank with a secret, where the controller's liveness bounds its controller lease; a read
//! from a controller reaches the branch even when it held only heartbeats, renewing the lease.

use std::time::{Duration, Instant};

use actix::prelude::*;
use log::{info, warn};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;

use futures_util::StreamExt;

use super::actor::{
    BranchActor, ConnectionClosed, ControllerDoneAsking, InboundBatch, MAX_RETRIEVE_WAIT, Source,
};
use crate::outbox::{Outbox, write_loop};
use crate::wire::{Body, FrameCodec, FrameError, pb};

/// Most frames forwarded in one batch.
const MAX_BATCH: usize = 1024;

/// After the other side closes its half, queued frames get this long to be written.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// After a controller closes its half, the answers it is owed get this long to be ready and
/// written: the longest a branch holds a request, plus [`DRAIN_TIMEOUT`].
pub const ANSWER_DRAIN_TIMEOUT: Duration = MAX_RETRIEVE_WAIT.saturating_add(DRAIN_TIMEOUT);

/// The read half of a connection, decoding delimited frames.
pub type FrameReader = FramedRead<OwnedReadHalf, FrameCodec>;

/// How a connection watches the other side's liveness.
#[derive(Debug, Clone, Copy)]
pub struct LinkSettings {
    /// Silence (nothing read) after which the connection is declared broken.
    pub peer_timeout: Duration,
    /// Whether this side probes a silent connection and enforces the timeout.
    pub probe: bool,
}

/// One TCP stream of a branch.
pub struct PeerConnection {
    /// Who is on the other end, as the branch knows it; stamped on every forwarded frame.
    source: Source,
    /// How log lines name this connection ("peer branch2", "controller at 127.0.0.1:5000").
    label: String,
    /// Where decoded frames go, in order.
    branch: Addr<BranchActor>,
    /// The write queue, closed when the actor stops so nothing queues for a dead socket.
    outbox: Outbox,
    /// When a frame (of any kind) was last read.
    last_read: Instant,
    /// A probe went out since the last read.
    probed: bool,
    settings: LinkSettings,
}

impl PeerConnection {
    /// Starts the actor on an established stream whose first frame has already been read.
    pub fn start(
        reader: FrameReader,
        writer: OwnedWriteHalf,
        outbox: Outbox,
        source: Source,
        label: String,
        settings: LinkSettings,
        branch: Addr<BranchActor>,
    ) -> Addr<Self> {
        PeerConnection::create(move |ctx| {
            if settings.probe {
                let every = (settings.peer_timeout / 3).max(Duration::from_millis(1));
                ctx.run_interval(every, |connection, ctx| connection.check_liveness(ctx));
            }
            // Every frame already decodable after a read goes to the branch as one message.
            ctx.add_stream(reader.ready_chunks(MAX_BATCH));
            let writing = actix::fut::wrap_future::<_, Self>(write_loop(outbox.clone(), writer));
            ctx.spawn(writing.map(|result, connection, ctx| {
                if let Err(err) = result {
                    warn!("{}: write failed: {err}; closing", connection.label);
                }
                ctx.stop();
            }));
            PeerConnection {
                source,
                label,
                branch,
                outbox,
                last_read: Instant::now(),
                probed: false,
                settings,
            }
        })
    }

    /// Probes a connection silent for a third of the peer timeout; stops one silent for all of
    /// it.
    fn check_liveness(&mut self, ctx: &mut Context<Self>) {
        let silent = self.last_read.elapsed();
        if silent >= self.settings.peer_timeout {
            warn!(
                "{}: nothing received for {} ms (peer timeout {} ms); declaring the connection broken",
                self.label,
                silent.as_millis(),
                self.settings.peer_timeout.as_millis()
            );
            ctx.stop();
        } else if silent >= self.settings.peer_timeout / 3 && !self.probed {
            self.probed = true;
            self.outbox
                .push(Body::Heartbeat(pb::Heartbeat { reply: false }));
        }
    }
}

impl Actor for PeerConnection {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.outbox.mark_dead();
        self.branch.do_send(ConnectionClosed {
            source: self.source,
        });
    }
}

impl StreamHandler<Vec<Result<pb::BranchMessage, FrameError>>> for PeerConnection {
    fn handle(
        &mut self,
        items: Vec<Result<pb::BranchMessage, FrameError>>,
        ctx: &mut Context<Self>,
    ) {
        self.last_read = Instant::now();
        self.probed = false;
        let mut bodies = Vec::with_capacity(items.len());
        let mut failure = None;
        for item in items {
            match item {
                Ok(pb::BranchMessage {
                    branch_message: Some(Body::Heartbeat(pb::Heartbeat { reply })),
                }) => {
                    if !reply {
                        self.outbox
                            .push(Body::Heartbeat(pb::Heartbeat { reply: true }));
                    }
                }
                Ok(pb::BranchMessage {
                    branch_message: Some(body),
                }) => bodies.push(body),
                Ok(pb::BranchMessage {
                    branch_message: None,
                }) => warn!(
                    "{}: frame with no message this branch knows; ignored",
                    self.label
                ),
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        if !bodies.is_empty() || matches!(self.source, Source::Controller(_)) {
            self.branch.do_send(InboundBatch {
                source: self.source,
                bodies,
            });
        }
        if let Some(err) = failure {
            warn!("{}: {err}; closing the connection", self.label);
            ctx.stop();
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        info!("{}: connection closed by the other side", self.label);
        // The writer finishes what is queued, shuts the socket down and then stops the actor.
        // A controller may still be owed answers to requests the branch holds: the branch
        // closes the outbox once they are written.
        let drain = match self.source {
            Source::Controller(conn) => {
                self.branch.do_send(ControllerDoneAsking { conn });
                ANSWER_DRAIN_TIMEOUT
            }
            Source::Peer { .. } => {
                self.outbox.close();
                DRAIN_TIMEOUT
            }
        };
        ctx.run_later(drain, |_connection, ctx| ctx.stop());
    }
}
