//! [`Dialer`]: the one connect loop, used by a branch redialling a peer, the controller dialling
//! and redialling branches, and the compat driver's connections.
//!
//! - An attempt connects to the address within the connect timeout (never past the deadline),
//!   then runs the caller's handshake step on the connection. The step either hands back what it
//!   made, says the attempt failed ([`Failed`]: retry), or ends the dial ([`Step::Stop`]).
//! - Between attempts the pause is the [`Backoff`]'s next; a dial may open with a first pause
//!   (a connection that failed before it was any use is not redialled at once).
//! - With a deadline, the dial gives up once it has passed (no attempt starts with no time
//!   left, and the last pause is cut to it), naming the last failure ([`GaveUp`]).
//! - Warnings are rate-limited: a failure where the other side answered (a handshake that went
//!   wrong) is warned at once when nothing has been warned yet; otherwise a warning goes out
//!   once `warn_every` has passed since the last one (or since the dial began). The caller gets
//!   each warning through a callback and words it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::debug;
use tokio::net::TcpStream;

use crate::backoff::Backoff;

/// Default of how often a dial that keeps failing warns.
pub const WARN_EVERY: Duration = Duration::from_secs(5);

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// What went wrong, for the warning and for [`GaveUp::last_error`].
    pub reason: String,
    /// Whether the other side answered (connected, then the handshake failed): worth a warning
    /// at once, where an absent party is only mentioned every `warn_every`.
    pub answered: bool,
}

impl Failed {
    /// The other side answered, and the handshake went wrong for `reason`.
    pub fn answered(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            answered: true,
        }
    }
}

/// What a handshake step says about an attempt that did not succeed.
#[derive(Debug)]
pub enum Step<E> {
    /// The attempt failed: try again after the pause.
    Retry(Failed),
    /// Stop dialling, with the caller's error.
    Stop(E),
}

impl<E> From<Failed> for Step<E> {
    fn from(failed: Failed) -> Self {
        Step::Retry(failed)
    }
}

/// A dial past its deadline, with what failed last.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{last_error}")]
pub struct GaveUp {
    /// The last attempt's failure.
    pub last_error: String,
    /// Attempts made.
    pub attempts: u32,
}

/// Why a dial ended without a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum DialError<E> {
    /// The handshake step said stop.
    Stopped(E),
    /// The deadline passed.
    GaveUp(GaveUp),
}

/// A warning that a dial keeps failing, for the caller to word.
#[derive(Debug)]
pub struct Warning<'a> {
    /// How long the dial has been trying.
    pub after: Duration,
    /// Attempts made so far.
    pub attempts: u32,
    /// The last failure.
    pub error: &'a str,
}

/// How to reach one address: see the module doc.
#[derive(Debug, Clone)]
pub struct Dialer {
    addr: SocketAddr,
    /// Longest one connect may take.
    connect_timeout: Duration,
    /// Pauses between attempts.
    backoff: Backoff,
    /// When to give up; `None`: never.
    deadline: Option<Instant>,
    /// How often a dial that keeps failing warns.
    warn_every: Duration,
    /// A pause before the first attempt.
    first_pause: Option<Duration>,
}

impl Dialer {
    /// Dials `addr`, each connect within `connect_timeout`, pausing by `backoff`, with no
    /// deadline, warning every [`WARN_EVERY`].
    pub fn new(addr: SocketAddr, connect_timeout: Duration, backoff: Backoff) -> Self {
        Self {
            addr,
            connect_timeout,
            backoff,
            deadline: None,
            warn_every: WARN_EVERY,
            first_pause: None,
        }
    }

    /// Gives up once `deadline` has passed.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Warns at most once every `every` (a first answered failure excepted).
    pub fn warn_every(mut self, every: Duration) -> Self {
        self.warn_every = every;
        self
    }

    /// Waits `pause` (if any) before the first attempt.
    pub fn first_pause(mut self, pause: Option<Duration>) -> Self {
        self.first_pause = pause;
        self
    }

    /// Connects and runs `handshake` on each connection until it succeeds, it says stop, or
    /// the deadline passes; `warn` gets the rate-limited warnings.
    pub async fn dial<T, E, F, Fut>(
        mut self,
        mut handshake: F,
        mut warn: impl FnMut(Warning<'_>),
    ) -> Result<T, DialError<E>>
    where
        F: FnMut(TcpStream) -> Fut,
        Fut: Future<Output = Result<T, Step<E>>>,
    {
        if let Some(pause) = self.first_pause {
            tokio::time::sleep(self.cut_to_deadline(pause)).await;
        }
        let started = Instant::now();
        let mut last_warning: Option<Instant> = None;
        let mut attempts = 0u32;
        let mut last_error = String::from("no attempt made before the deadline");
        loop {
            let Some(timeout) = self.time_for_attempt() else {
                return Err(DialError::GaveUp(GaveUp {
                    last_error,
                    attempts,
                }));
            };
            attempts += 1;
            let failed = match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
                Ok(Ok(stream)) => {
                    if let Err(err) = stream.set_nodelay(true) {
                        debug!("cannot set TCP_NODELAY towards {}: {err}", self.addr);
                    }
                    match handshake(stream).await {
                        Ok(made) => return Ok(made),
                        Err(Step::Stop(err)) => return Err(DialError::Stopped(err)),
                        Err(Step::Retry(failed)) => failed,
                    }
                }
                Ok(Err(err)) => Failed {
                    reason: err.to_string(),
                    answered: false,
                },
                Err(_) => Failed {
                    reason: "connect timed out".to_string(),
                    answered: false,
                },
            };
            let quiet_for = last_warning.unwrap_or(started).elapsed();
            if (failed.answered && last_warning.is_none()) || quiet_for >= self.warn_every {
                warn(Warning {
                    after: started.elapsed(),
                    attempts,
                    error: &failed.reason,
                });
                last_warning = Some(Instant::now());
            }
            last_error = failed.reason;
            let pause = self.backoff.next_pause();
            tokio::time::sleep(self.cut_to_deadline(pause)).await;
        }
    }

    /// [`Dialer::dial`] without a deadline (any set is dropped): dials until `handshake`
    /// succeeds or says stop.
    pub async fn forever<T, E, F, Fut>(
        self,
        handshake: F,
        warn: impl FnMut(Warning<'_>),
    ) -> Result<T, E>
    where
        F: FnMut(TcpStream) -> Fut,
        Fut: Future<Output = Result<T, Step<E>>>,
    {
        let dialer = Self {
            deadline: None,
            ..self
        };
        match dialer.dial(handshake, warn).await {
            Ok(made) => Ok(made),
            Err(DialError::Stopped(err)) => Err(err),
            Err(DialError::GaveUp(_)) => unreachable!("a dial without a deadline never gives up"),
        }
    }

    /// Connects plainly (no handshake) until connected or past the deadline.
    pub async fn connect(self, warn: impl FnMut(Warning<'_>)) -> Result<TcpStream, GaveUp> {
        self.dial(|stream| async { Ok::<_, Step<Never>>(stream) }, warn)
            .await
            .map_err(|err| match err {
                DialError::GaveUp(gave_up) => gave_up,
                DialError::Stopped(never) => match never {},
            })
    }

    /// How long the next connect may take; `None` when the deadline has passed.
    fn time_for_attempt(&self) -> Option<Duration> {
        match self.deadline {
            None => Some(self.connect_timeout),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| self.connect_timeout.min(left))
            }
        }
    }

    fn cut_to_deadline(&self, pause: Duration) -> Duration {
        match self.deadline {
            None => pause,
            Some(deadline) => pause.min(deadline.saturating_duration_since(Instant::now())),
        }
    }
}

/// The [`Step`] error of a dial that never stops of itself.
pub enum Never {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn quick() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(2))
    }

    /// A listener that answers its first `refusals` connections with `n` and the rest with `y`.
    async fn refusing(refusals: u32) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move {
            let mut served = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                let answer = if served < refusals { b"n" } else { b"y" };
                served += 1;
                let _ = stream.write_all(answer).await;
            }
        });
        (addr, serving)
    }

    /// Reads one byte: `y` is a handshake that worked, anything else a refusal.
    async fn one_byte(mut stream: TcpStream) -> Result<TcpStream, Step<Never>> {
        let mut byte = [0u8];
        match stream.read_exact(&mut byte).await {
            Ok(_) if byte == *b"y" => Ok(stream),
            Ok(_) => Err(Failed::answered("refused").into()),
            Err(err) => Err(Failed::answered(err.to_string()).into()),
        }
    }

    /// An address nothing listens on.
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn a_listener_that_refuses_three_times_is_reached_on_the_fourth_attempt() {
        let (addr, serving) = refusing(3).await;
        let attempts = AtomicU32::new(0);
        let dialled = Dialer::new(addr, Duration::from_secs(1), quick())
            .deadline(Instant::now() + Duration::from_secs(5))
            .dial(
                |stream| {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    one_byte(stream)
                },
                |_| {},
            )
            .await;
        serving.abort();
        assert!(dialled.is_ok());
        assert_eq!(attempts.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_step_that_says_stop_ends_the_dial_with_its_error() {
        let (addr, serving) = refusing(u32::MAX).await;
        let dialled: Result<(), _> = Dialer::new(addr, Duration::from_secs(1), quick())
            .dial(|_| async { Err(Step::Stop("held")) }, |_| {})
            .await;
        serving.abort();
        assert_eq!(dialled, Err(DialError::Stopped("held")));
    }

    #[tokio::test]
    async fn a_dial_gives_up_at_its_deadline_naming_the_last_failure() {
        let addr = closed_port().await;
        let started = Instant::now();
        let dialled = Dialer::new(addr, Duration::from_secs(1), quick())
            .deadline(started + Duration::from_millis(150))
            .connect(|_| {})
            .await;
        let waited = started.elapsed();
        let gave_up = dialled.expect_err("nothing listens there");
        assert!(gave_up.attempts > 1, "{gave_up:?}");
        assert!(gave_up.last_error.contains("refused"), "{gave_up:?}");
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert!(waited < Duration::from_millis(1000), "{waited:?}");
    }

    #[tokio::test]
    async fn an_answered_failure_is_warned_at_once_then_at_the_rate() {
        let (addr, serving) = refusing(u32::MAX).await;
        let warned = Arc::new(AtomicU32::new(0));
        let first_warned_at = Arc::new(AtomicU32::new(0));
        let attempts = AtomicU32::new(0);
        let dialled = Dialer::new(addr, Duration::from_secs(1), quick())
            .deadline(Instant::now() + Duration::from_millis(300))
            .warn_every(Duration::from_millis(100))
            .dial(
                |stream| {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    one_byte(stream)
                },
                |warning| {
                    if warned.fetch_add(1, Ordering::Relaxed) == 0 {
                        first_warned_at.store(warning.attempts, Ordering::Relaxed);
                    }
                },
            )
            .await;
        serving.abort();
        assert!(matches!(dialled, Err(DialError::GaveUp(_))));
        let (warned, attempts) = (
            warned.load(Ordering::Relaxed),
            attempts.load(Ordering::Relaxed),
        );
        assert_eq!(first_warned_at.load(Ordering::Relaxed), 1);
        // At once, then at most once every 100 ms of the 300 ms.
        assert!(
            (2..=4).contains(&warned),
            "{warned} warnings in {attempts} attempts"
        );
        assert!(
            attempts > 2 * warned,
            "{warned} warnings in {attempts} attempts"
        );
    }

    #[tokio::test]
    async fn an_absent_party_is_not_warned_before_the_rate_allows() {
        let addr = closed_port().await;
        let warned = AtomicU32::new(0);
        let dialled = Dialer::new(addr, Duration::from_secs(1), quick())
            .deadline(Instant::now() + Duration::from_millis(150))
            .warn_every(Duration::from_millis(100))
            .connect(|_| {
                warned.fetch_add(1, Ordering::Relaxed);
            })
            .await;
        assert!(dialled.is_err());
        assert_eq!(warned.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_first_pause_delays_the_first_attempt() {
        let (addr, serving) = refusing(0).await;
        let started = Instant::now();
        let dialled = Dialer::new(addr, Duration::from_secs(1), quick())
            .first_pause(Some(Duration::from_millis(100)))
            .dial(one_byte, |_| {})
            .await;
        serving.abort();
        assert!(dialled.is_ok());
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
