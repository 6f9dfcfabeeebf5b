//! Accepting connections: read each new stream's first frame (with a deadline) and hand the
//! stream to the [`BranchActor`], which decides from that frame what the connection is.

use std::net::SocketAddr;
use std::time::Duration;

use actix::Addr;
use futures_util::StreamExt;
use log::{debug, warn};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::FramedRead;

use super::actor::{Accepted, BranchActor};
use crate::wire::{FrameCodec, pb};

/// A connection must send its first frame within this long, or it is dropped: a silent
/// connection must not hold resources forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until the branch actor stops.
pub async fn accept_loop(listener: TcpListener, branch: Addr<BranchActor>, max_frame: usize) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                actix_rt::spawn(read_first_frame(stream, remote, branch.clone(), max_frame));
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
) {
    if let Err(err) = stream.set_nodelay(true) {
        debug!("connection from {remote}: cannot set TCP_NODELAY: {err}");
    }
    let (read_half, writer) = stream.into_split();
    let mut reader = FramedRead::new(read_half, FrameCodec::new(max_frame));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next()).await {
        Err(_) => warn!(
            "connection from {remote} sent no frame within {} s; closing",
            HANDSHAKE_TIMEOUT.as_secs()
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
