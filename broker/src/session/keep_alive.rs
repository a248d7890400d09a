//! The keep-alive deadline of a connection (MQTT-3.1.2-24): one and a half keep-alive periods
//! without a packet end it; zero turns keep-alive off.
//!
//! One timer lives as long as the connection and is moved only when it fires early (a packet
//! came meanwhile), so a busy connection does not register a timer for every packet.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{sleep_until, Instant, Sleep};

pub(super) struct KeepAlive {
    period: Option<Duration>,
    last_heard: Instant,
    alarm: Pin<Box<Sleep>>,
}

impl KeepAlive {
    /// For a client that asked for `keep_alive_s` seconds.
    pub(super) fn new(keep_alive_s: u16) -> KeepAlive {
        let period =
            (keep_alive_s > 0).then(|| Duration::from_millis(u64::from(keep_alive_s) * 1500));
        let last_heard = Instant::now();
        let first = period.map_or_else(far_future, |p| last_heard + p);
        KeepAlive {
            period,
            last_heard,
            alarm: Box::pin(sleep_until(first)),
        }
    }

    /// The client was heard from (or its silence is the hub's doing).
    pub(super) fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// Resolves once the client has been silent for the whole period; never without one.
    /// Cancel-safe: dropping it keeps the timer for the next call.
    pub(super) async fn expired(&mut self) {
        let Some(period) = self.period else {
            return std::future::pending().await;
        };
        loop {
            self.alarm.as_mut().await;
            let deadline = self.last_heard + period;
            if Instant::now() >= deadline {
                return;
            }
            self.alarm.as_mut().reset(deadline);
        }
    }
}

/// A deadline that never comes in practice (a year away).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_for_one_and_a_half_periods_expires() {
        let mut keep_alive = KeepAlive::new(10);
        let started = Instant::now();
        keep_alive.expired().await;
        assert_eq!(started.elapsed(), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn a_packet_moves_the_deadline() {
        let mut keep_alive = KeepAlive::new(10);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(12)).await;
        keep_alive.heard();
        keep_alive.expired().await;
        assert_eq!(started.elapsed(), Duration::from_secs(27));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_never_expires() {
        let mut keep_alive = KeepAlive::new(0);
        let expired = tokio::time::timeout(Duration::from_secs(1_000_000), keep_alive.expired());
        assert!(expired.await.is_err());
    }
}
