//! The connection side of [`BranchActor`]: what a new connection's first frame makes it, the
//! handshakes that authenticate peers and attaching controllers, peers parked before
//! `InitBranch`, dialling, and the clean shutdown.
//!
//! Who may change a branch's state:
//! - the connection that delivers its one `InitBranch` (trust on first use; with a
//!   `--secret-file`, its secret must match), which becomes a controller connection;
//! - a controller that completes the controller handshake (`ControllerHello`), proving the
//!   cluster secret, and holds the controller lease (see `lease`): in a bank with a secret, only
//!   the connection holding it is obeyed;
//! - a branch of the bank that completes the peer handshake (`Hello`), proving the secret, over
//!   the one connection of its pair, from its configured address;
//! - in a bank without a secret only (initialised by an original-schema controller), any
//!   connection that opens with `InitSnapshot` or `RetrieveSnapshot`: such controllers open a
//!   new connection per command, and such a bank authenticates nobody anyway.
//!
//! Anything else is closed and logged, and changes nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use log::{error, info, warn};
use tokio::net::tcp::OwnedWriteHalf;

use super::lease::{Claim, Displaced};
use super::{Accepted, BranchActor, ControllerLink, ParkedPeer, Source};
use crate::auth::Secret;
use crate::branch::connection::{FrameReader, LinkSettings, PeerConnection};
use crate::config::MAX_NAME_BYTES;
use crate::core::RefusalKind;
use crate::core::node::Dial;
use crate::dial::{Dialer, Failed, Never, Step, Warning};
use crate::handshake::{self, Authenticated, ControllerClaim, HandshakeError};
use crate::outbox::Outbox;
use crate::wire::{self, Body, pb};

/// How long a dialling branch waits for the acceptor's `Welcome`: the acceptor answers only
/// once it has its own `InitBranch`, which the controller may still be sending.
const DIAL_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one connect to a peer may take.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// First pause between two dial attempts; it doubles after each failure up to
/// [`MAX_REDIAL_DELAY`], with jitter so that branches cut off together do not redial in step.
const FIRST_REDIAL_DELAY: Duration = Duration::from_millis(10);
const MAX_REDIAL_DELAY: Duration = Duration::from_secs(1);

/// The redial schedule of a peer whose connections keep failing.
pub(super) fn redial_backoff() -> crate::backoff::Backoff {
    crate::backoff::Backoff::new(FIRST_REDIAL_DELAY, MAX_REDIAL_DELAY)
}

/// How long a refusal frame may take to be written before the connection is dropped anyway.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Upper bound on peer connections parked before `InitBranch`.
const MAX_PARKED_PEERS: usize = 256;

/// How long a peer connection may wait for this branch's `InitBranch`. A dialler gives up
/// waiting for its `Welcome` after `DIAL_ANSWER_TIMEOUT` and dials again, so an older parked
/// connection is only holding resources.
const PARK_TIMEOUT: Duration = Duration::from_secs(40);

/// Longest nonce a `Hello` or `ControllerHello` may carry.
const MAX_NONCE_BYTES: usize = 64;

/// Upper bound on peer handshakes in progress, all peers together. Not per peer: a stranger
/// that merely claims a peer's name must not be able to lock that peer out with a few silent
/// connections; each one ends at the handshake timeout.
const MAX_PEER_HANDSHAKES: usize = 256;

/// Upper bound on controller handshakes in progress.
const MAX_CONTROLLER_HANDSHAKES: usize = 16;

impl BranchActor {
    /// A new connection's first frame decides what it is.
    pub(super) fn on_accepted(&mut self, accepted: Accepted, ctx: &mut Context<Self>) {
        let Accepted {
            first,
            reader,
            writer,
            remote,
        } = accepted;
        match first {
            Body::Hello(pb::Hello { name, nonce, .. })
                if name.len() > MAX_NAME_BYTES || nonce.len() > MAX_NONCE_BYTES =>
            {
                warn!(
                    "{}: connection from {remote} sent a Hello with a {}-byte name and a {}-byte nonce (at most {MAX_NAME_BYTES} and {MAX_NONCE_BYTES}); closing",
                    self.name,
                    name.len(),
                    nonce.len()
                );
            }
            Body::ControllerHello(pb::ControllerHello { nonce, .. })
                if nonce.len() > MAX_NONCE_BYTES =>
            {
                warn!(
                    "{}: connection from {remote} sent a ControllerHello with a {}-byte nonce (at most {MAX_NONCE_BYTES}); closing",
                    self.name,
                    nonce.len()
                );
            }
            Body::Hello(pb::Hello {
                known_incarnation, ..
            }) if self.bank.is_none()
                && known_incarnation != 0
                && (self.prepared.is_some() || self.regressed.is_some()) =>
            {
                let reason = format!(
                    "this branch ({}) dropped its state for a rollback of the bank: the channels start over in the new epoch once the rollback's second phase reaches both ends",
                    self.name
                );
                info!(
                    "{}: a peer connecting from {remote} is turned away until the rollback ends",
                    self.name
                );
                ctx.spawn(actix::fut::wrap_future(refuse(writer, reason)));
            }
            Body::Hello(pb::Hello {
                known_incarnation, ..
            }) if self.bank.is_none() && known_incarnation != 0 => {
                let reason = format!(
                    "this branch ({}) has no bank state: it was restarted without its data (no --data-dir, or a wiped one), so it cannot resume the channels of its earlier incarnation {known_incarnation:016x}",
                    self.name
                );
                error!(
                    "{}: a peer connecting from {remote} knows an earlier incarnation of this branch: {reason}",
                    self.name
                );
                ctx.spawn(actix::fut::wrap_future(refuse(writer, reason)));
            }
            Body::Hello(pb::Hello { name, nonce, .. }) => {
                let parked = ParkedPeer {
                    since: Instant::now(),
                    name,
                    nonce,
                    reader,
                    writer,
                    remote,
                };
                if self.bank.is_some() {
                    self.admit_peer(parked, ctx);
                } else if self.parked.len() < MAX_PARKED_PEERS {
                    info!(
                        "{}: {} connected before InitBranch; holding its frames until then (at most {} s)",
                        self.name,
                        parked.name,
                        PARK_TIMEOUT.as_secs()
                    );
                    self.parked.push(parked);
                    ctx.run_later(PARK_TIMEOUT, |branch, _ctx| branch.expire_parked());
                } else {
                    warn!(
                        "{}: too many connections before InitBranch; closing the one from {remote}",
                        self.name
                    );
                }
            }
            Body::InitBranch(init) => {
                let init = wire::InitBank::from(init);
                let claim = ControllerClaim {
                    controller: init.controller,
                    take_over: false,
                    rolls_back: init.rolls_back,
                };
                let result = self
                    .secret_for(&init, false)
                    .and_then(|secret| self.init(init, secret, ctx));
                match result {
                    Ok(()) => {
                        let conn = self.new_conn_id();
                        // The bank did not exist, so no controller can hold its lease yet.
                        if self.lease_applies()
                            && let Claim::Refused { holder, .. } =
                                self.lease.claim(conn, claim, remote, Instant::now())
                        {
                            warn!(
                                "{}: the controller lease is held by {holder} already; the connection that initialised the bank does not hold it",
                                self.name
                            );
                        }
                        self.open_controller_link(conn, reader, writer, remote, ctx);
                    }
                    Err(reason) => {
                        warn!(
                            "{}: InitBranch from {remote} refused: {reason}; closing",
                            self.name
                        );
                        ctx.spawn(actix::fut::wrap_future(refuse(
                            writer,
                            format!("{} refused InitBranch: {reason}", self.name),
                        )));
                    }
                }
            }
            Body::ControllerHello(hello) => {
                let claim = ControllerClaim::of(&hello);
                self.authenticate_controller(hello.nonce, claim, reader, writer, remote, ctx);
            }
            Body::InitSnapshot(_) | Body::RetrieveSnapshot(_)
                if self.bank.as_ref().is_some_and(|bank| !bank.authenticated) =>
            {
                // An original-schema controller that opens a new connection per command. The
                // command is applied before anything else the connection sends, and a
                // RetrieveSnapshot is answered on this same connection.
                info!(
                    "{}: connection from {remote} opened with {} in a bank without a secret: serving it as an original-schema controller",
                    self.name,
                    wire::body_kind(&first)
                );
                let conn = self.new_conn_id();
                self.open_controller_link(conn, reader, writer, remote, ctx);
                self.on_controller_frame(conn, first.into(), ctx);
            }
            other => warn!(
                "{}: connection from {remote} opened with {}; a connection must start with Hello, InitBranch or ControllerHello; closing",
                self.name,
                wire::body_kind(&other)
            ),
        }
    }

    /// The secret an `InitBranch` establishes, or why it cannot be accepted. `authenticated`:
    /// it came on a connection that completed the controller handshake.
    pub(super) fn secret_for(
        &self,
        init: &wire::InitBank,
        authenticated: bool,
    ) -> Result<Secret, String> {
        if self.bank.is_some() {
            return Err("this branch is already initialised".into());
        }
        let configured = self.settings.secret.as_ref();
        if let Some(configured) = configured {
            // The secret is known already: only a controller that proved it may initialise.
            if !authenticated {
                return Err(
                    "this branch has a --secret-file: the controller must authenticate first (start it with the same --secret-file)"
                        .into(),
                );
            }
            if !init.secret.is_empty() && !configured.same_as(&init.secret) {
                return Err("its secret differs from this branch's --secret-file".into());
            }
            return Ok(configured.clone());
        }
        if init.secret.is_empty() {
            warn!(
                "{}: InitBranch carries no secret (an original-schema controller?): peers are NOT authenticated in this bank",
                self.name
            );
            return Ok(Secret::none());
        }
        Secret::from_bytes(init.secret.clone(), "InitBranch").map_err(|err| err.to_string())
    }

    /// Makes an (already trusted) connection controller connection `conn`, returning its
    /// outbox.
    fn open_controller_link(
        &mut self,
        conn: super::ConnId,
        mut reader: FrameReader,
        writer: OwnedWriteHalf,
        remote: SocketAddr,
        ctx: &mut Context<Self>,
    ) -> Outbox {
        let outbox = Outbox::new();
        reader.decoder_mut().set_max_frame(self.settings.max_frame);
        info!("{}: controller connected from {remote}", self.name);
        // In a bank with a secret (only snapbank controllers, which answer heartbeats), a
        // silent controller is probed and its connection closed after the peer timeout, so a
        // frozen one keeps the controller lease for a bounded time and a live one always
        // renews it. In a bank without one, an original-schema controller does not answer
        // heartbeats, and its liveness is its own to watch.
        let settings = LinkSettings {
            peer_timeout: self.settings.peer_timeout,
            probe: self.lease_applies(),
        };
        PeerConnection::start(
            reader,
            writer,
            outbox.clone(),
            Source::Controller(conn),
            format!("controller at {remote}"),
            settings,
            ctx.address(),
        );
        self.controllers.insert(
            conn,
            ControllerLink {
                outbox: outbox.clone(),
                done_asking: false,
            },
        );
        outbox
    }

    /// Whether this branch has a controller lease: it has a secret, so only controllers that
    /// prove it (or the one that initialised the bank with it) can command it. A bank without
    /// one is driven by original-schema controllers, a connection per command.
    pub(super) fn lease_applies(&self) -> bool {
        self.secret
            .as_ref()
            .is_some_and(|secret| !secret.is_empty())
    }

    /// A controller at `remote` has proven the secret and makes `claim`: it gets the controller
    /// lease (ending an earlier holder's, when the claim allows it) and its connection becomes
    /// a controller connection told the first free snapshot id, or it is told who holds the
    /// lease and turned away.
    fn admit_controller(
        &mut self,
        authenticated: Authenticated,
        claim: ControllerClaim,
        remote: SocketAddr,
        ctx: &mut Context<Self>,
    ) {
        let Authenticated { reader, writer } = authenticated;
        let conn = self.new_conn_id();
        match self.lease.claim(conn, claim, remote, Instant::now()) {
            Claim::Refused { holder, expires_in } => {
                let expires_in_ms = u32::try_from(expires_in.as_millis()).unwrap_or(u32::MAX);
                warn!(
                    "{}: controller at {remote} refused: the controller lease is held by the controller at {holder} (for at most {expires_in_ms} ms more without traffic from it); closing",
                    self.name
                );
                let answer = Body::ControllerLease(pb::ControllerLease {
                    outcome: pb::controller_lease::Outcome::Held as i32,
                    holder: holder.to_string(),
                    expires_in_ms,
                    next_snapshot_id: 0,
                    epoch: 0,
                    uninitialised: false,
                });
                ctx.spawn(actix::fut::wrap_future(send_then_close(writer, answer)));
            }
            Claim::Granted { displaced } => {
                if let Some((old, why)) = displaced {
                    self.depose(old, why, remote);
                }
                // Counted now: the earlier holder's commands are no longer applied, so every id
                // it started here is below this one.
                let next_snapshot_id = self
                    .highest_snapshot()
                    .map_or(1, |highest| highest.saturating_add(1));
                info!(
                    "{}: controller at {remote} holds the controller lease; its snapshot ids start at {next_snapshot_id}",
                    self.name
                );
                let outbox = self.open_controller_link(conn, reader, writer, remote, ctx);
                outbox.push(Body::ControllerLease(pb::ControllerLease {
                    outcome: pb::controller_lease::Outcome::Granted as i32,
                    holder: String::new(),
                    expires_in_ms: 0,
                    next_snapshot_id,
                    epoch: self.prepared.unwrap_or(self.epoch),
                    uninitialised: self.bank.is_none() && self.prepared.is_none(),
                }));
                // A branch whose store lost a commit waits only for a controller that rolls
                // the bank back.
                if !claim.rolls_back
                    && let Some(reason) = self.regressed.take()
                {
                    self.stop_regressed(format!(
                        "{reason}, and the bank's controller (at {remote}) does not roll banks back (--on-branch-loss)"
                    ));
                }
            }
        }
    }

    /// Controller connection `conn` lost the controller lease to the controller at `by`: it is
    /// told so (unless it is the same controller's older connection) and closed once that is
    /// written; nothing more it sends is applied.
    fn depose(&mut self, conn: super::ConnId, why: Displaced, by: SocketAddr) {
        let Some(link) = self.controllers.remove(&conn) else {
            return;
        };
        match why {
            Displaced::Reconnected => info!(
                "{}: the controller reconnected from {by}; closing its older connection",
                self.name
            ),
            Displaced::TakenOver | Displaced::Lapsed => {
                let (how, outcome) = if why == Displaced::TakenOver {
                    (
                        "took over the controller lease (--take-over)",
                        pb::controller_lease::Outcome::TakenOver,
                    )
                } else {
                    (
                        "was given the controller lease, which had lapsed (nothing came from its holder for the peer timeout)",
                        pb::controller_lease::Outcome::Lapsed,
                    )
                };
                warn!(
                    "{}: the controller at {by} {how}; closing the previous holder's connection",
                    self.name
                );
                link.outbox.push(Body::ControllerLease(pb::ControllerLease {
                    outcome: outcome as i32,
                    holder: by.to_string(),
                    expires_in_ms: 0,
                    next_snapshot_id: 0,
                    epoch: 0,
                    uninitialised: false,
                }));
            }
        }
        link.outbox.close();
    }

    /// Runs the controller handshake with a controller attaching to this branch.
    fn authenticate_controller(
        &mut self,
        nonce: Vec<u8>,
        claim: ControllerClaim,
        reader: FrameReader,
        writer: OwnedWriteHalf,
        remote: SocketAddr,
        ctx: &mut Context<Self>,
    ) {
        let Some(secret) = self.secret.clone().filter(|secret| !secret.is_empty()) else {
            let reason = if self.bank.is_some() {
                "this branch has no secret (no --secret-file, and its InitBranch carried none), so no controller can attach"
            } else {
                "this branch has no bank and no --secret-file: nothing to attach to (was it restarted without its state?)"
            };
            warn!(
                "{}: controller handshake from {remote} refused: {reason}; closing",
                self.name
            );
            // Saying so is safe without a proof: a controller that rolls banks back answers it
            // by initialising the branch again, which it would accept from anyone anyway.
            let kind = if self.bank.is_some() {
                RefusalKind::Retry
            } else {
                RefusalKind::Uninitialised
            };
            let refusal = wire::final_refusal(kind, format!("{}: {reason}", self.name));
            ctx.spawn(actix::fut::wrap_future(send_then_close(writer, refusal)));
            return;
        };
        if self.controller_handshakes >= MAX_CONTROLLER_HANDSHAKES {
            warn!(
                "{}: too many controller handshakes in progress; closing the one from {remote}",
                self.name
            );
            return;
        }
        self.controller_handshakes += 1;
        let me = self.name.clone();
        let handshake_timeout = self.settings.handshake_timeout;
        let next_id = self
            .highest_snapshot()
            .map_or(1, |highest| highest.saturating_add(1));
        let handshake = async move {
            handshake::accept_controller(
                reader,
                writer,
                &secret,
                &me,
                &nonce,
                claim,
                next_id,
                handshake_timeout,
            )
            .await
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(handshake).map(move |result, branch, ctx| {
                branch.controller_handshakes -= 1;
                match result {
                    Ok(authenticated) => {
                        info!("{}: controller at {remote} authenticated", branch.name);
                        branch.admit_controller(authenticated, claim, remote, ctx);
                    }
                    Err(err) => warn!(
                        "{}: controller handshake with {remote} failed: {err}; closing",
                        branch.name
                    ),
                }
            }),
        );
    }

    /// Drops parked connections that have waited [`PARK_TIMEOUT`].
    fn expire_parked(&mut self) {
        let before = self.parked.len();
        self.parked
            .retain(|parked| parked.since.elapsed() < PARK_TIMEOUT);
        if self.parked.len() < before {
            warn!(
                "{}: closed {} peer connection(s) that waited {} s for InitBranch",
                self.name,
                before - self.parked.len(),
                PARK_TIMEOUT.as_secs()
            );
        }
    }

    /// Checks a connecting peer against the bank, then runs the peer handshake with it.
    pub(super) fn admit_peer(&mut self, parked: ParkedPeer, ctx: &mut Context<Self>) {
        let ParkedPeer {
            name,
            nonce,
            reader,
            writer,
            remote,
            ..
        } = parked;
        let (Some(bank), Some(secret)) = (self.bank.as_mut(), self.secret.clone()) else {
            return;
        };
        let Some(&channel) = bank.by_name.get(&name) else {
            warn!(
                "{}: connection from {remote} claims to be {name:?}, which is not a peer in this bank; closing",
                self.name
            );
            return;
        };
        let we_dial = bank.node.we_dial(channel);
        let peer = &mut bank.peers[channel];
        let expected = peer.addr.ip().to_canonical();
        let from = remote.ip().to_canonical();
        if from != expected && !(from.is_loopback() && expected.is_loopback()) {
            warn!(
                "{}: connection from {remote} claims to be {name}, which is at {expected}; closing",
                self.name
            );
            return;
        }
        if we_dial {
            warn!(
                "{}: {name} connected from {remote}, but this branch is the one that dials {name}; closing",
                self.name
            );
            return;
        }
        // Several handshakes may run for one peer (a connection that merely claims the name
        // must not lock the real peer out); one that proves the secret gets the channel,
        // replacing an older connection (the dialler only redials once it has given that up,
        // possibly before this side noticed).
        if self.peer_handshakes >= MAX_PEER_HANDSHAKES {
            warn!(
                "{}: {MAX_PEER_HANDSHAKES} peer handshakes already in progress; closing the one from {remote} (claiming {name})",
                self.name
            );
            return;
        }
        self.peer_handshakes += 1;
        let me = self.name.clone();
        let handshake_timeout = self.settings.handshake_timeout;
        let handshake = async move {
            handshake::accept_peer(
                reader,
                writer,
                &secret,
                &me,
                &name,
                &nonce,
                handshake_timeout,
            )
            .await
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(handshake).map(move |result, branch, ctx| {
                branch.peer_handshakes -= 1;
                let Some(peer) = branch.bank.as_ref().and_then(|b| b.peers.get(channel)) else {
                    return;
                };
                match result {
                    Ok(authenticated) => {
                        branch.peer_connected(channel, authenticated, &remote.to_string(), ctx);
                    }
                    Err(err) => warn!(
                        "{}: handshake with {} from {remote} failed: {err}; closing",
                        branch.name, peer.name
                    ),
                }
            }),
        );
    }

    /// Dials peer `channel` and runs the peer handshake, retrying with capped exponential
    /// backoff and jitter until both succeed.
    ///
    /// A `Refusal` read during the handshake is one more failed attempt, never a reason to stop:
    /// it comes before the other side has proved anything, so any process holding the peer's
    /// port while the peer restarts (another bank's branch, a squatter) could have sent it. Only
    /// a peer that has proved the cluster secret can stop this branch dialling it (see
    /// `on_refusal`).
    pub(super) fn dial(&mut self, dial: Dial, ctx: &mut Context<Self>) {
        let Dial {
            peer: channel,
            after_pause,
            known_incarnation,
        } = dial;
        let secret = self.secret.clone();
        let peer = self.bank.as_mut().and_then(|b| b.peers.get_mut(channel));
        let (Some(peer), Some(secret)) = (peer, secret) else {
            return;
        };
        let (name, addr, me) = (peer.name.clone(), peer.addr, self.name.clone());
        let max_frame = self.settings.max_frame;
        // A connection that failed before resuming the channel is not redialled at once, so a
        // peer (or an impostor) that refuses every connection is retried at the backoff's pace.
        let first_pause = after_pause.then(|| peer.redial.next_pause());
        let dialer =
            Dialer::new(addr, PEER_CONNECT_TIMEOUT, peer.redial.clone()).first_pause(first_pause);
        let dialling = async move {
            let handshake = |stream| {
                let (secret, me, name) = (&secret, &me, &name);
                async move {
                    handshake::dial_peer(
                        stream,
                        secret,
                        me,
                        name,
                        known_incarnation,
                        max_frame,
                        DIAL_ANSWER_TIMEOUT,
                    )
                    .await
                    .map_err(|err| {
                        Step::<Never>::Retry(Failed::answered(match err {
                            HandshakeError::Refused(reason) => format!(
                                "refused before proving the cluster secret, so retrying: {reason}"
                            ),
                            err => format!("handshake failed: {err}"),
                        }))
                    })
                }
            };
            let warn = |warning: Warning<'_>| {
                warn!(
                    "{me}: still trying to reach {name} at {addr} after {} s: {}",
                    warning.after.as_secs(),
                    warning.error
                );
            };
            dialer.forever(handshake, warn).await
        };
        let handle = ctx.spawn(actix::fut::wrap_future::<_, Self>(dialling).map(
            move |dialled, branch, ctx| {
                branch.dials.remove(&channel);
                let authenticated = match dialled {
                    Ok(authenticated) => authenticated,
                    Err(never) => match never {},
                };
                let to = branch
                    .bank
                    .as_ref()
                    .map(|bank| bank.peers[channel].addr.to_string())
                    .unwrap_or_default();
                branch.peer_connected(channel, authenticated, &format!("dialled {to}"), ctx);
            },
        ));
        self.dials.insert(channel, handle);
    }

    /// Stops sending, and closes every connection once what is queued on it is written.
    pub(super) fn shut_down(&mut self) {
        if std::mem::replace(&mut self.shutting_down, true) {
            return;
        }
        info!(
            "{}: shutting down: no new transfers, flushing connections",
            self.name
        );
        if let Some(bank) = self.bank.as_mut() {
            bank.node.shut_down();
        }
        for link in self
            .bank
            .iter()
            .flat_map(|bank| bank.peers.iter())
            .filter_map(|peer| peer.link.as_ref())
        {
            link.outbox.close();
        }
        for link in self.controllers.values() {
            link.outbox.close();
        }
        if self.bank.is_none() && self.parked.is_empty() {
            return;
        }
        if !self.parked.is_empty() {
            error!(
                "{}: {} peer connections were still waiting for InitBranch",
                self.name,
                self.parked.len()
            );
        }
    }

    /// Bytes still queued on open connections.
    pub(super) fn unflushed_bytes(&self) -> usize {
        let peers = self.bank.iter().flat_map(|bank| bank.peers.iter());
        peers
            .filter_map(|peer| peer.link.as_ref())
            .map(|link| link.outbox.backlog())
            .sum::<usize>()
            + self
                .controllers
                .values()
                .map(|link| link.outbox.backlog())
                .sum::<usize>()
    }
}

/// Writes one refusal frame on a connection that is being turned away, then closes it, so the
/// other side can say why instead of seeing only a closed connection.
pub(super) async fn refuse(writer: OwnedWriteHalf, reason: String) {
    send_then_close(writer, wire::refusal(reason)).await;
}

/// Writes `body` (why the connection is turned away) straight to the socket, then closes it.
async fn send_then_close(mut writer: OwnedWriteHalf, body: Body) {
    use tokio::io::AsyncWriteExt;
    let mut bytes = Vec::new();
    wire::encode_frame(body, &mut bytes);
    let sending = async {
        writer.write_all(&bytes).await?;
        writer.shutdown().await
    };
    if let Err(err) = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, sending)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        log::debug!("could not deliver a refusal: {err}");
    }
}
