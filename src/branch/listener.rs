//! Accepting connections: read each new stream's first frame (with a deadline) and hand the
//! stream to the [`BranchActor`], which decides from that frame what the connection is.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use actix::Addr;
use futures_util::StreamExt;
use log::{debug, warn};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::FramedRead;

use super::actor::{Accepted, BranchActor};
use crate::wire::{FrameCodec, pb};

/// Connections that have not sent their first frame yet, at most: beyond it new connections are
/// closed at once, so a flood of silent connections cannot exhaust the branch.
pub const MAX_UNIDENTIFIED: usize = 256;

/// Accepts connections until the branch actor stops.
/// A connection must send its first frame within `deadline`, or it is dropped: a silent
/// connection must not hold resources forever.
pub async fn accept_loop(
    listener: TcpListener,
    branch: Addr<BranchActor>,
    max_frame: usize,
    deadline: Duration,
) {
    let unidentified = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                if unidentified.get() >= MAX_UNIDENTIFIED {
                    warn!(
                        "{MAX_UNIDENTIFIED} connections have not identified themselves yet; closing the one from {remote}"
                    );
                    continue;
                }
                unidentified.set(unidentified.get() + 1);
                let count = unidentified.clone();
                let branch = branch.clone();
                actix_rt::spawn(async move {
                    read_first_frame(stream, remote, branch, max_frame, deadline).await;
                    count.set(count.get() - 1);
                });
            }
            Err(err) => {
                // Typically out of file descriptors: wait instead of spinning.
                warn!("accepting a connection failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn read_first_frame(
    stream: TcpStream,
    remote: SocketAddr,
    branch: Addr<BranchActor>,
    max_frame: usize,
    deadline: Duration,
) {
    if let Err(err) = stream.set_nodelay(true) {
        debug!("connection from {remote}: cannot set TCP_NODELAY: {err}");
    }
    let (read_half, writer) = stream.into_split();
    // Until it authenticates, a connection gets the small pre-authentication frame limit.
    let limit = max_frame.min(crate::wire::PREAUTH_MAX_FRAME_BYTES);
    let mut reader = FramedRead::new(read_half, FrameCodec::new(limit));
    match tokio::time::timeout(deadline, reader.next()).await {
        Err(_) => warn!(
            "connection from {remote} sent no frame within {} ms; closing",
            deadline.as_millis()
        ),
        Ok(None) => debug!("connection from {remote} closed before sending anything"),
        Ok(Some(Err(err))) => warn!("connection from {remote}: {err}; closing"),
        Ok(Some(Ok(pb::BranchMessage {
            branch_message: None,
        }))) => warn!("connection from {remote}: first frame holds no known message; closing"),
        Ok(Some(Ok(pb::BranchMessage {
            branch_message: Some(first),
        }))) => branch.do_send(Accepted {
            first,
            reader,
            writer,
            remote,
        }),
    }
}
