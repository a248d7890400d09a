//! Waiting between attempts at something that fails for a while (a disk, a store, a server):
//! each failure doubles the wait up to a ceiling, a success starts again from the first wait,
//! and a stopping hub gives up after a grace period instead of waiting forever.

use std::fmt::Display;
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;
use tracing::{error, info};

/// The first wait of the ingest threads' retries.
pub const FIRST: Duration = Duration::from_millis(50);
/// The longest wait of the ingest threads' retries.
pub const MAX: Duration = Duration::from_secs(5);

/// One run of retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    jitter: bool,
    failing_since: Option<Instant>,
    give_up_at: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(FIRST, MAX)
    }
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            next: first,
            jitter: false,
            failing_since: None,
            give_up_at: None,
        }
    }

    /// Adds up to half of each wait again at random, so that many clients of one server do
    /// not retry in step.
    pub fn with_jitter(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// The wait the next failure brings (before jitter).
    pub fn next_wait(&self) -> Duration {
        self.next
    }

    /// Notes a failure; `true` if it is the first since the last success.
    pub fn failed(&mut self) -> bool {
        if self.failing_since.is_some() {
            return false;
        }
        self.failing_since = Some(Instant::now());
        true
    }

    /// Whether a failure is noted and no success since.
    pub fn failing(&self) -> bool {
        self.failing_since.is_some()
    }

    /// Sleeps the next wait and doubles it for the time after.
    pub fn wait(&mut self) {
        thread::sleep(self.take_wait());
    }

    /// The wait to sleep now (with jitter), doubling the next one.
    pub fn take_wait(&mut self) -> Duration {
        let mut wait = self.next;
        if self.jitter {
            let half = u64::try_from(wait.as_millis() / 2).unwrap_or(u64::MAX);
            wait += Duration::from_millis(rand::rng().random_range(0..=half));
        }
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// Notes a success: the next failure waits the first wait again. Returns how long the
    /// failures lasted, if there were any.
    pub fn succeeded(&mut self) -> Option<Duration> {
        self.next = self.first;
        self.give_up_at = None;
        self.failing_since.take().map(|since| since.elapsed())
    }

    /// `true` once the hub has been `stopping` for `grace` through these failures: a
    /// stopping hub leaves what it could not finish (in the write-ahead log) for the next
    /// start rather than wait for ever.
    pub fn give_up(&mut self, stopping: bool, grace: Duration) -> bool {
        if !stopping {
            return false;
        }
        let at = *self
            .give_up_at
            .get_or_insert_with(|| Instant::now() + grace);
        Instant::now() >= at
    }
}

/// Runs `attempt` until it succeeds, logging each failure as "cannot {what}" and the
/// recovery; for steps that must happen and can only wait (a checkpoint, a dead letter).
pub fn retry_until_done<T, E: Display>(what: &str, mut attempt: impl FnMut() -> Result<T, E>) -> T {
    let mut backoff = Backoff::default();
    loop {
        match attempt() {
            Ok(done) => {
                if let Some(after) = backoff.succeeded() {
                    info!(after_ms = after.as_millis() as u64, "could {what} again");
                }
                return done;
            }
            Err(e) => {
                backoff.failed();
                error!(error = %e, retry_in_ms = backoff.next_wait().as_millis() as u64, "cannot {what}; retrying");
                backoff.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_ceiling_and_start_again_after_a_success() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(35));
        let waits: Vec<u128> = (0..4).map(|_| b.take_wait().as_millis()).collect();
        assert_eq!(waits, [10, 20, 35, 35]);
        assert!(b.failed(), "the first failure of a run");
        assert!(!b.failed(), "not the first any more");
        assert!(b.failing());
        assert!(b.succeeded().is_some(), "a success after failures says so");
        assert!(!b.failing());
        assert_eq!(b.succeeded(), None, "and only once");
        assert_eq!(b.take_wait(), Duration::from_millis(10));
    }

    #[test]
    fn jitter_adds_at_most_half_the_wait() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut b = Backoff::new(Duration::from_millis(100), MAX).with_jitter();
            let wait = b.take_wait().as_millis();
            assert!((100..=150).contains(&wait), "{wait}");
            seen.insert(wait);
        }
        assert!(seen.len() > 5, "the waits differ: {seen:?}");
    }

    #[test]
    fn gives_up_only_after_the_grace_once_stopping() {
        let mut b = Backoff::default();
        assert!(!b.give_up(false, Duration::ZERO), "not stopping");
        assert!(!b.give_up(true, Duration::from_secs(60)), "grace not over");
        let mut b = Backoff::default();
        assert!(b.give_up(true, Duration::ZERO), "no grace");
    }

    #[test]
    fn retries_until_the_attempt_succeeds() {
        let mut tries = 0;
        let got = retry_until_done("count", || {
            tries += 1;
            if tries < 3 {
                Err("not yet")
            } else {
                Ok(tries)
            }
        });
        assert_eq!(got, 3);
    }
}
