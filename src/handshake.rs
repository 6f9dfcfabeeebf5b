//! The handshakes of [`crate::auth`], as async steps over a connection's two halves.
//!
//! Each runs before the connection is handed to its actor, so no transfer, marker or command can
//! reach the bank from a connection that has not proven knowledge of the cluster secret. Every
//! read has a deadline, so a silent or slow party cannot hold a handshake open.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::codec::FramedRead;

use crate::auth::{self, Role, Secret};
use crate::branch::connection::FrameReader;
use crate::wire::{self, Body, FrameCodec, pb};

/// Why a handshake failed; the connection is closed and nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("connection closed during the handshake")]
    Closed,
    #[error("{0}")]
    Frame(String),
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("authentication failed: wrong proof of the cluster secret")]
    BadProof,
    #[error("i/o: {0}")]
    Io(String),
    #[error("refused: {0}")]
    Refused(String),
    /// The branch holds no bank: it restarted without its state (unproven: anyone can say it).
    #[error("refused: {0}")]
    Uninitialised(String),
    /// Another controller holds the branch's controller lease.
    #[error(
        "the bank's controller lease is held by the controller at {holder} (it lapses {expires_in_ms} ms from now at the latest if nothing more comes from it, at once if its connection closes); start this controller with --take-over to end that lease"
    )]
    LeaseHeld { holder: String, expires_in_ms: u32 },
}

/// A controller connection that proved the secret and holds the branch's controller lease,
/// with what the branch told it.
pub struct Attached {
    pub link: Authenticated,
    /// Every snapshot id the branch has seen is below this one.
    pub next_snapshot_id: u32,
    /// The bank epoch the branch is in.
    pub epoch: u64,
    /// The branch holds no bank (it restarted without its state).
    pub uninitialised: bool,
}

/// What an attaching controller claims in its `ControllerHello`: who it is, and whether it
/// ends the current holder's controller lease. Both are covered by its `Auth` proof, so no one
/// without the secret can depose a controller or pass for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControllerClaim {
    /// The controller's id for this run (0: anonymous).
    pub controller: u64,
    /// `--take-over`: end the holder's lease instead of being refused.
    pub take_over: bool,
    /// `--on-branch-loss rollback`: a durable branch that finds its store lost a commit waits
    /// for this controller's rollback rather than stopping.
    pub rolls_back: bool,
}

impl ControllerClaim {
    /// The claim a `ControllerHello` carries.
    pub fn of(hello: &pb::ControllerHello) -> Self {
        Self {
            controller: hello.controller,
            take_over: hello.take_over,
            rolls_back: hello.rolls_back,
        }
    }

    /// What the controller's proof is bound to besides the branch's name: empty for an
    /// anonymous claim without take-over (the proof of the first controller handshake), else
    /// the id and the two flags, so none can be changed on the way.
    pub fn proof_context(&self) -> String {
        if *self == Self::default() {
            return String::new();
        }
        let take_over = if self.take_over { " take-over" } else { "" };
        let rolls_back = if self.rolls_back { " rolls-back" } else { "" };
        format!("controller {:016x}{take_over}{rolls_back}", self.controller)
    }
}

/// A connection after a successful handshake.
pub struct Authenticated {
    pub reader: FrameReader,
    pub writer: OwnedWriteHalf,
}

/// Writes one frame straight to the socket (the connection's outbox writer is not running yet).
async fn write_frame(writer: &mut OwnedWriteHalf, body: Body) -> Result<(), HandshakeError> {
    let mut bytes = Vec::new();
    wire::encode_frame(body, &mut bytes);
    writer
        .write_all(&bytes)
        .await
        .map_err(|err| HandshakeError::Io(err.to_string()))
}

/// Reads the next frame, within `deadline`.
async fn read_frame(reader: &mut FrameReader, deadline: Duration) -> Result<Body, HandshakeError> {
    match tokio::time::timeout(deadline, reader.next()).await {
        Err(_) => Err(HandshakeError::Timeout(deadline.as_millis())),
        Ok(None) => Err(HandshakeError::Closed),
        Ok(Some(Err(err))) => Err(HandshakeError::Frame(err.to_string())),
        Ok(Some(Ok(pb::BranchMessage {
            branch_message: None,
        }))) => Err(HandshakeError::Unexpected {
            expected: "a handshake frame",
            got: "an unknown message",
        }),
        Ok(Some(Ok(pb::BranchMessage {
            branch_message: Some(Body::Refusal(pb::Refusal { reason, kind })),
        }))) if kind == pb::RefusalKind::Uninitialised as i32 => {
            Err(HandshakeError::Uninitialised(reason))
        }
        Ok(Some(Ok(pb::BranchMessage {
            branch_message: Some(Body::Refusal(pb::Refusal { reason, .. })),
        }))) => Err(HandshakeError::Refused(reason)),
        Ok(Some(Ok(pb::BranchMessage {
            branch_message: Some(body),
        }))) => Ok(body),
    }
}

/// The accepting side's two steps: send `welcome`, then read an `Auth` whose proof `valid`
/// accepts.
async fn welcome_then_check(
    mut reader: FrameReader,
    mut writer: OwnedWriteHalf,
    welcome: pb::Welcome,
    deadline: Duration,
    valid: impl FnOnce(&[u8]) -> bool,
) -> Result<Authenticated, HandshakeError> {
    write_frame(&mut writer, Body::Welcome(welcome)).await?;
    match read_frame(&mut reader, deadline).await? {
        Body::Auth(pb::Auth { proof }) if valid(&proof) => Ok(Authenticated { reader, writer }),
        Body::Auth(_) => Err(HandshakeError::BadProof),
        other => Err(HandshakeError::Unexpected {
            expected: "Auth",
            got: wire::body_kind(&other),
        }),
    }
}

/// The connecting side's steps: send `first`, read the `Welcome`, check its proof with `valid`,
/// answer with the proof `answer` makes from the Welcome's nonce.
async fn hello_then_prove(
    stream: TcpStream,
    first: Body,
    max_frame: usize,
    deadline: Duration,
    valid: impl FnOnce(&pb::Welcome) -> bool,
    answer: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<(Authenticated, pb::Welcome), HandshakeError> {
    let (read_half, mut writer) = stream.into_split();
    let mut reader = FramedRead::new(read_half, FrameCodec::new(max_frame));
    write_frame(&mut writer, first).await?;
    let welcome = match read_frame(&mut reader, deadline).await? {
        Body::Welcome(welcome) => welcome,
        other => {
            return Err(HandshakeError::Unexpected {
                expected: "Welcome",
                got: wire::body_kind(&other),
            });
        }
    };
    if !valid(&welcome) {
        return Err(HandshakeError::BadProof);
    }
    let proof = answer(&welcome.nonce);
    write_frame(&mut writer, Body::Auth(pb::Auth { proof })).await?;
    Ok((Authenticated { reader, writer }, welcome))
}

/// The accepting branch `me`, after reading `Hello { name: peer, nonce }`: answers with its
/// proof and checks the dialler's.
pub async fn accept_peer(
    reader: FrameReader,
    writer: OwnedWriteHalf,
    secret: &Secret,
    me: &str,
    peer: &str,
    dialer_nonce: &[u8],
    deadline: Duration,
) -> Result<Authenticated, HandshakeError> {
    let nonce = auth::nonce();
    let welcome = pb::Welcome {
        nonce: nonce.clone(),
        proof: secret.prove(Role::Accept, dialer_nonce, me, peer),
        next_snapshot_id: 0,
    };
    welcome_then_check(reader, writer, welcome, deadline, |proof| {
        secret.verify(proof, Role::Dial, &nonce, peer, me)
    })
    .await
}

/// The dialling branch `me`, on a fresh connection to `peer`: sends `Hello`, checks the
/// acceptor's proof, answers with its own. `deadline` covers the acceptor's answer, which may
/// take as long as the acceptor's own `InitBranch` takes to arrive. `known_incarnation` is the
/// acceptor's incarnation this branch last exchanged frames with (0: none yet).
pub async fn dial_peer(
    stream: TcpStream,
    secret: &Secret,
    me: &str,
    peer: &str,
    known_incarnation: u64,
    max_frame: usize,
    deadline: Duration,
) -> Result<Authenticated, HandshakeError> {
    let nonce = auth::nonce();
    let hello = Body::Hello(pb::Hello {
        name: me.to_string(),
        nonce: nonce.clone(),
        known_incarnation,
    });
    let (authenticated, _) = hello_then_prove(
        stream,
        hello,
        max_frame,
        deadline,
        |welcome| secret.verify(&welcome.proof, Role::Accept, &nonce, peer, me),
        |their_nonce| secret.prove(Role::Dial, their_nonce, me, peer),
    )
    .await?;
    Ok(authenticated)
}

/// The branch `me`, after reading `ControllerHello { nonce, .. }` making `claim`: answers with
/// its proof and the first free snapshot id, and checks the controller's proof (which covers
/// the claim). The branch then answers the claim with a [`pb::ControllerLease`].
#[allow(clippy::too_many_arguments)]
pub async fn accept_controller(
    reader: FrameReader,
    writer: OwnedWriteHalf,
    secret: &Secret,
    me: &str,
    controller_nonce: &[u8],
    claim: ControllerClaim,
    next_snapshot_id: u32,
    deadline: Duration,
) -> Result<Authenticated, HandshakeError> {
    let nonce = auth::nonce();
    let welcome = pb::Welcome {
        nonce: nonce.clone(),
        proof: secret.prove(
            Role::Branch,
            controller_nonce,
            me,
            &next_snapshot_id.to_string(),
        ),
        next_snapshot_id,
    };
    let context = claim.proof_context();
    welcome_then_check(reader, writer, welcome, deadline, |proof| {
        secret.verify(proof, Role::Controller, &nonce, me, &context)
    })
    .await
}

/// A controller attaching to the running branch `branch` with `claim`: proves the secret,
/// checks the branch's proof, waits for the branch's answer to its claim on the controller
/// lease, and learns the first snapshot id the branch has not seen (counted once the lease is
/// granted, so no id an earlier holder started is reused).
pub async fn attach_to_branch(
    stream: TcpStream,
    secret: &Secret,
    branch: &str,
    claim: ControllerClaim,
    max_frame: usize,
    deadline: Duration,
) -> Result<Attached, HandshakeError> {
    let nonce = auth::nonce();
    let hello = Body::ControllerHello(pb::ControllerHello {
        nonce: nonce.clone(),
        take_over: claim.take_over,
        controller: claim.controller,
        rolls_back: claim.rolls_back,
    });
    let context = claim.proof_context();
    // The branch's proof covers the next free snapshot id it announces, so it cannot be forged.
    let (authenticated, welcome) = hello_then_prove(
        stream,
        hello,
        max_frame,
        deadline,
        |welcome| {
            secret.verify(
                &welcome.proof,
                Role::Branch,
                &nonce,
                branch,
                &welcome.next_snapshot_id.to_string(),
            )
        },
        |their_nonce| secret.prove(Role::Controller, their_nonce, branch, &context),
    )
    .await?;
    let Authenticated { mut reader, writer } = authenticated;
    let lease = match read_frame(&mut reader, deadline).await? {
        Body::ControllerLease(lease) => lease,
        other => {
            return Err(HandshakeError::Unexpected {
                expected: "ControllerLease",
                got: wire::body_kind(&other),
            });
        }
    };
    match pb::controller_lease::Outcome::try_from(lease.outcome) {
        Ok(pb::controller_lease::Outcome::Granted) => Ok(Attached {
            link: Authenticated { reader, writer },
            next_snapshot_id: welcome.next_snapshot_id.max(lease.next_snapshot_id),
            epoch: lease.epoch,
            uninitialised: lease.uninitialised,
        }),
        Ok(pb::controller_lease::Outcome::Held) => Err(HandshakeError::LeaseHeld {
            holder: lease.holder,
            expires_in_ms: lease.expires_in_ms,
        }),
        _ => Err(HandshakeError::Unexpected {
            expected: "a granted or held ControllerLease",
            got: "another lease outcome",
        }),
    }
}
