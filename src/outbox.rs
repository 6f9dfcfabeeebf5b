//! The write half of a connection: an [`Outbox`] that frames are appended to, and a writer task
//! ([`write_loop`]) that drains it onto the socket.
//!
//! Appending encodes straight into a shared buffer, so sending a frame is a memory copy with no
//! system call and no allocation; the writer takes everything queued since its last write in one
//! `write_all`. The owner sees the queued byte count ([`Outbox::backlog`]) and uses it as
//! backpressure: a branch stops generating transfers for a peer whose outbox is behind.
//!
//! An outbox exists before its socket does: frames pushed before the connection is up (a marker
//! for a peer still being dialled) wait in order and go out first when the writer starts.
//! Everything is single-threaded (one actix arbiter), hence `Rc<RefCell<_>>`.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::wire::{self, Body};

/// A batch buffer that grew past this is dropped after use rather than kept, so one burst does
/// not pin memory for the rest of the run.
const MAX_RETAINED_BATCH: usize = 1 << 20;

/// The backlog at or below which an outbox counts as drained (see [`Outbox::on_drained`]).
pub const DRAINED: usize = 4 * 1024;

/// The queue shared between the owner pushing frames and the writer task draining them.
#[derive(Default)]
struct Shared {
    /// Encoded frames not yet taken by the writer.
    pending: Vec<u8>,
    /// Bytes the writer has taken and is writing now.
    in_flight: usize,
    /// The writer parked waiting for frames; woken by the first push.
    waker: Option<Waker>,
    /// The owner asked for the connection to be closed once `pending` is written.
    closing: bool,
    /// The connection is gone: pushes are dropped instead of queueing forever.
    dead: bool,
    /// Called once, after a write, when the backlog has fallen to `DRAINED` or below: how a
    /// producer paused by backpressure learns it may go on.
    on_drained: Option<Box<dyn FnOnce()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("pending", &self.pending.len())
            .field("in_flight", &self.in_flight)
            .field("closing", &self.closing)
            .field("dead", &self.dead)
            .finish()
    }
}

/// The sending side of one connection. Cloning gives another handle to the same queue.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    shared: Rc<RefCell<Shared>>,
}

impl Outbox {
    /// An empty outbox with no writer yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues one frame. Frames go out in push order. Returns false (dropping the frame) when
    /// the connection is already gone.
    pub fn push(&self, body: Body) -> bool {
        let mut shared = self.shared.borrow_mut();
        if shared.dead || shared.closing {
            return false;
        }
        wire::encode_frame(body, &mut shared.pending);
        if let Some(waker) = shared.waker.take() {
            waker.wake();
        }
        true
    }

    /// Bytes queued but not yet written to the socket.
    pub fn backlog(&self) -> usize {
        let shared = self.shared.borrow();
        shared.pending.len() + shared.in_flight
    }

    /// Whether frames pushed now will be sent: the connection has neither failed nor been
    /// asked to close.
    pub fn is_open(&self) -> bool {
        let shared = self.shared.borrow();
        !shared.dead && !shared.closing
    }

    /// Calls `callback` once, after a write, when the backlog is at most [`DRAINED`] bytes
    /// (at once if it already is). Replaces an earlier callback not yet called.
    pub fn on_drained(&self, callback: Box<dyn FnOnce()>) {
        let mut shared = self.shared.borrow_mut();
        if shared.pending.len() + shared.in_flight <= DRAINED {
            drop(shared);
            callback();
        } else {
            shared.on_drained = Some(callback);
        }
    }

    /// Asks the writer to finish what is queued and then shut the connection down.
    pub fn close(&self) {
        let mut shared = self.shared.borrow_mut();
        shared.closing = true;
        if let Some(waker) = shared.waker.take() {
            waker.wake();
        }
    }

    /// Marks the connection gone: nothing more is queued and what is pending is discarded.
    pub fn mark_dead(&self) {
        let mut shared = self.shared.borrow_mut();
        shared.dead = true;
        shared.pending = Vec::new();
        if let Some(waker) = shared.waker.take() {
            waker.wake();
        }
    }
}

/// Writes everything pushed to `outbox` onto `writer`, a batch per system call, until the
/// outbox is closed (then shuts the writer down) or marked dead. On a write error the outbox is
/// marked dead and the error returned.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    outbox: Outbox,
    mut writer: W,
) -> std::io::Result<()> {
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let next = poll_fn(|cx| {
            let mut shared = outbox.shared.borrow_mut();
            if shared.dead {
                return Poll::Ready(None);
            }
            if !shared.pending.is_empty() {
                std::mem::swap(&mut shared.pending, &mut batch);
                shared.in_flight = batch.len();
                return Poll::Ready(Some(true));
            }
            if shared.closing {
                return Poll::Ready(Some(false));
            }
            shared.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        match next {
            None => return Ok(()),
            Some(false) => {
                let result = writer.shutdown().await;
                outbox.mark_dead();
                return result;
            }
            Some(true) => {
                let result = writer.write_all(&batch).await;
                let drained = {
                    let mut shared = outbox.shared.borrow_mut();
                    shared.in_flight = 0;
                    if shared.pending.len() <= DRAINED {
                        shared.on_drained.take()
                    } else {
                        None
                    }
                };
                if let Some(callback) = drained {
                    callback();
                }
                if let Err(err) = result {
                    outbox.mark_dead();
                    return Err(err);
                }
                batch.clear();
                if batch.capacity() > MAX_RETAINED_BATCH {
                    batch = Vec::new();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FrameCodec, pb};
    use futures_util::StreamExt;
    use tokio_util::codec::FramedRead;

    #[tokio::test]
    async fn frames_pushed_before_the_writer_starts_go_out_first_and_in_order() {
        let outbox = Outbox::new();
        for money in 1..=3 {
            assert!(outbox.push(Body::Transfer(pb::Transfer {
                money,
                seq: 0,
                pos: 0
            })));
        }
        assert!(outbox.backlog() > 0);
        let (client, server) = tokio::io::duplex(64);
        let writer = tokio::task::LocalSet::new();
        let sender = outbox.clone();
        writer
            .run_until(async move {
                let task = tokio::task::spawn_local(write_loop(outbox.clone(), client));
                sender.push(Body::Marker(pb::Marker {
                    snapshot_id: 9,
                    pos: 0,
                }));
                sender.close();
                assert!(!sender.push(Body::Marker(pb::Marker {
                    snapshot_id: 10,
                    pos: 0
                })));
                let frames: Vec<_> = FramedRead::new(server, FrameCodec::default())
                    .map(|frame| frame.unwrap().branch_message.unwrap())
                    .collect()
                    .await;
                task.await.unwrap().unwrap();
                assert_eq!(
                    frames,
                    vec![
                        Body::Transfer(pb::Transfer {
                            money: 1,
                            seq: 0,
                            pos: 0
                        }),
                        Body::Transfer(pb::Transfer {
                            money: 2,
                            seq: 0,
                            pos: 0
                        }),
                        Body::Transfer(pb::Transfer {
                            money: 3,
                            seq: 0,
                            pos: 0
                        }),
                        Body::Marker(pb::Marker {
                            snapshot_id: 9,
                            pos: 0
                        }),
                    ]
                );
                assert_eq!(sender.backlog(), 0);
            })
            .await;
    }
}
