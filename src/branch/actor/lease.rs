//! The branch's controller lease: in a bank with a secret, one controller connection at a time
//! may command the branch, so two controllers never number snapshots from the same free id.
//!
//! Rules (pure: the caller passes the time and carries out the outcome):
//! - The connection that initialised the bank, or the first controller that attaches, holds
//!   the lease.
//! - Every frame read from the holder (its heartbeats too) renews the lease; it lapses after
//!   `timeout` without one (the branch's peer timeout: the branch probes a silent controller at
//!   a third of it, so a live controller always answers in time). A frozen (SIGSTOPped)
//!   controller therefore keeps the lease until then.
//! - It ends at once when the holder's connection closes or the holder half-closes it (it can
//!   send no more commands): a controller killed even with SIGKILL has its connection closed by
//!   the kernel, so the next controller attaches at once.
//! - A claim from the holder's own id (a controller reconnecting after a lost connection)
//!   replaces its older connection. A claim with take-over ends the holder's lease. Any other
//!   claim is refused while the lease lasts, told who holds it and for how long at most.
//! - Commands from a connection that does not hold the lease are not applied.
//! - Whether the latest holder rolls the bank back on a branch's loss outlasts its lease: a
//!   durable branch that finds its store lost a commit closes its controller connections and
//!   waits for that controller's rollback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::ConnId;
use crate::handshake::ControllerClaim;

/// Who holds the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    conn: ConnId,
    /// Its id (0: anonymous, which no claim matches).
    controller: u64,
    /// Its address, named to a refused controller.
    remote: SocketAddr,
    /// When a frame last came from it.
    last_heard: Instant,
}

/// Why a holder lost the lease to a new claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Displaced {
    /// Another controller took it over (`--take-over`).
    TakenOver,
    /// Its lease had lapsed: nothing came from it for the whole timeout.
    Lapsed,
    /// The same controller reconnected: the old connection is stale.
    Reconnected,
}

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Claim {
    /// The claimant holds the lease now; `displaced` is the earlier holder's connection, which
    /// must be told (unless it `Reconnected`) and closed.
    Granted {
        displaced: Option<(ConnId, Displaced)>,
    },
    /// Another controller holds it, at `holder`, for at most `expires_in` more.
    Refused {
        holder: SocketAddr,
        expires_in: Duration,
    },
}

/// One branch's controller lease.
#[derive(Debug)]
pub(super) struct ControllerLease {
    /// How long the lease lasts without a frame from its holder.
    timeout: Duration,
    holder: Option<Holder>,
    /// Whether the latest controller granted the lease rolls the bank back on a branch's loss
    /// (`None`: none has been granted it since the branch started).
    rolls_back: Option<bool>,
}

impl ControllerLease {
    /// A free lease that lapses after `timeout` of silence from its holder.
    pub(super) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            holder: None,
            rolls_back: None,
        }
    }

    /// Connection `conn` from `remote` claims the lease with `claim` at `now`.
    pub(super) fn claim(
        &mut self,
        conn: ConnId,
        claim: ControllerClaim,
        remote: SocketAddr,
        now: Instant,
    ) -> Claim {
        let displaced = match &self.holder {
            None => None,
            Some(holder) if holder.conn == conn => None,
            Some(holder) => {
                let silent = now.saturating_duration_since(holder.last_heard);
                let why = if silent >= self.timeout {
                    Displaced::Lapsed
                } else if claim.controller != 0 && claim.controller == holder.controller {
                    Displaced::Reconnected
                } else if claim.take_over {
                    Displaced::TakenOver
                } else {
                    return Claim::Refused {
                        holder: holder.remote,
                        expires_in: self.timeout - silent,
                    };
                };
                Some((holder.conn, why))
            }
        };
        self.rolls_back = Some(claim.rolls_back);
        self.holder = Some(Holder {
            conn,
            controller: claim.controller,
            remote,
            last_heard: now,
        });
        Claim::Granted { displaced }
    }

    /// A frame came from connection `conn` at `now`: renews the lease if it holds it.
    pub(super) fn heard(&mut self, conn: ConnId, now: Instant) {
        if let Some(holder) = self.holder.as_mut().filter(|holder| holder.conn == conn) {
            holder.last_heard = holder.last_heard.max(now);
        }
    }

    /// Connection `conn` closed (or its controller half-closed it): ends its lease. Whether it
    /// held it.
    pub(super) fn release(&mut self, conn: ConnId) -> bool {
        if self.holds(conn) {
            self.holder = None;
            return true;
        }
        false
    }

    /// Whether the latest controller granted the lease (holding it still or not) rolls the bank
    /// back when a branch loses its state; `None` if no controller has been granted it since
    /// the branch started.
    pub(super) fn rolls_back(&self) -> Option<bool> {
        self.rolls_back
    }

    /// Whether connection `conn` holds the lease.
    pub(super) fn holds(&self, conn: ConnId) -> bool {
        self.holder
            .as_ref()
            .is_some_and(|holder| holder.conn == conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(3000);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn claim(controller: u64, take_over: bool) -> ControllerClaim {
        ControllerClaim {
            controller,
            take_over,
            rolls_back: false,
        }
    }

    #[test]
    fn whether_the_latest_holder_rolls_back_outlasts_its_lease_and_a_refused_claim_changes_nothing()
    {
        let start = Instant::now();
        let mut lease = ControllerLease::new(TIMEOUT);
        assert_eq!(lease.rolls_back(), None, "no controller yet");
        let rolling = ControllerClaim {
            rolls_back: true,
            ..claim(7, false)
        };
        assert!(matches!(
            lease.claim(1, rolling, addr(1), start),
            Claim::Granted { .. }
        ));
        assert_eq!(lease.rolls_back(), Some(true));
        // Another controller that does not roll back is refused while the lease lasts.
        assert!(matches!(
            lease.claim(2, claim(8, false), addr(2), start),
            Claim::Refused { .. }
        ));
        assert_eq!(lease.rolls_back(), Some(true), "a refused claim changed it");
        // The holder's connection closes: its policy is still what the branch goes by.
        assert!(lease.release(1));
        assert_eq!(lease.rolls_back(), Some(true));
        // The next controller granted the lease sets it.
        assert!(matches!(
            lease.claim(3, claim(8, false), addr(2), start),
            Claim::Granted { .. }
        ));
        assert_eq!(lease.rolls_back(), Some(false));
    }

    #[test]
    fn a_free_lease_goes_to_the_first_claim_and_a_second_controller_is_told_who_holds_it() {
        let start = Instant::now();
        let mut lease = ControllerLease::new(TIMEOUT);
        let first = lease.claim(1, claim(11, false), addr(1000), start);
        assert_eq!(first, Claim::Granted { displaced: None });
        let later = start + Duration::from_millis(1000);
        assert_eq!(
            lease.claim(2, claim(22, false), addr(2000), later),
            Claim::Refused {
                holder: addr(1000),
                expires_in: Duration::from_millis(2000),
            }
        );
        assert!(lease.holds(1) && !lease.holds(2));
    }

    #[test]
    fn traffic_from_the_holder_renews_the_lease_and_silence_lets_it_lapse() {
        let start = Instant::now();
        let mut lease = ControllerLease::new(TIMEOUT);
        lease.claim(1, claim(11, false), addr(1000), start);
        lease.heard(1, start + Duration::from_millis(2500));
        // Traffic from another connection renews nothing.
        lease.heard(2, start + Duration::from_millis(5000));
        let Claim::Refused { expires_in, .. } = lease.claim(
            2,
            claim(22, false),
            addr(2000),
            start + Duration::from_millis(5000),
        ) else {
            panic!("renewed at 2.5 s, the lease lasts until 5.5 s");
        };
        assert_eq!(expires_in, Duration::from_millis(500));
        assert_eq!(
            lease.claim(
                2,
                claim(22, false),
                addr(2000),
                start + Duration::from_millis(5500)
            ),
            Claim::Granted {
                displaced: Some((1, Displaced::Lapsed))
            }
        );
        assert!(lease.holds(2));
    }

    #[test]
    fn take_over_ends_the_holders_lease_and_the_same_controller_replaces_its_own_connection() {
        let start = Instant::now();
        let mut lease = ControllerLease::new(TIMEOUT);
        lease.claim(1, claim(11, false), addr(1000), start);
        assert_eq!(
            lease.claim(2, claim(22, true), addr(2000), start),
            Claim::Granted {
                displaced: Some((1, Displaced::TakenOver))
            }
        );
        // The deposed controller reconnecting (without take-over) is refused.
        assert!(matches!(
            lease.claim(3, claim(11, false), addr(1001), start),
            Claim::Refused { holder, .. } if holder == addr(2000)
        ));
        // The holder reconnecting gets its lease back on the new connection.
        assert_eq!(
            lease.claim(4, claim(22, false), addr(2001), start),
            Claim::Granted {
                displaced: Some((2, Displaced::Reconnected))
            }
        );
        assert!(lease.holds(4));
    }

    #[test]
    fn anonymous_claims_never_match_a_holder_and_a_closed_holder_frees_the_lease() {
        let start = Instant::now();
        let mut lease = ControllerLease::new(TIMEOUT);
        lease.claim(1, claim(0, false), addr(1000), start);
        assert!(matches!(
            lease.claim(2, claim(0, false), addr(2000), start),
            Claim::Refused { .. }
        ));
        assert!(!lease.release(2), "a refused connection held nothing");
        assert!(lease.release(1));
        assert_eq!(
            lease.claim(2, claim(0, false), addr(2000), start),
            Claim::Granted { displaced: None }
        );
    }
}
