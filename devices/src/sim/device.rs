//! One simulated bed sensor as a task: drives its own MQTT connection (rumqttc, MQTT 3.1.1,
//! clean session), publishes a reading on a jittered clock while connected, reconnects with
//! backoff, and on stop waits for its acknowledgements before disconnecting.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing};
use rumqttc::{QoS, Request};
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::run::{SimStats, ACK_WAIT};
use super::{payload, BedModel};

/// Requests the client may queue before a reading is skipped rather than queued.
const QUEUE: usize = 64;
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a device is; [`Device::run`] brings it to life.
pub(crate) struct Device {
    /// Device id, MQTT client id and topic level.
    pub id: String,
    pub model: BedModel,
    /// Send the event time as JST wall-clock text rather than epoch milliseconds.
    pub local_time: bool,
    /// Seeds this device's start offset and jitter.
    pub rng_seed: u64,
    pub qos: QoS,
    /// Mean time between messages.
    pub period: Duration,
    pub stats: Arc<SimStats>,
    /// MQTT password; the username is the device id.
    pub password: Option<String>,
}

impl Device {
    /// Runs until `stop` fires, then finishes cleanly (bounded by [`ACK_WAIT`] and a second).
    pub async fn run(self, host: String, port: u16, stop: CancellationToken) {
        let mut options = MqttOptions::new(self.id.clone(), host, port);
        options.set_keep_alive(KEEP_ALIVE).set_clean_session(true);
        if let Some(password) = &self.password {
            options.set_credentials(self.id.clone(), password.clone());
        }
        let (client, eventloop) = AsyncClient::new(options, QUEUE);
        let mut live = Live {
            topic: format!("devices/{}/telemetry", self.id),
            rng: SmallRng::seed_from_u64(self.rng_seed),
            device: self,
            client,
            eventloop,
            seq: 0,
            last_ms: i64::MIN,
            connected: false,
            outstanding: 0,
            failures: 0,
            unacked: Vec::new(),
        };
        live.publish_until(&stop).await;
        live.finish().await;
    }
}

/// A running device and its connection state.
struct Live {
    device: Device,
    topic: String,
    rng: SmallRng,
    client: AsyncClient,
    eventloop: EventLoop,
    /// Messages sent so far; the next one carries `seq + 1`.
    seq: u64,
    /// Event time of the last message, so that each message gets a later one.
    last_ms: i64,
    connected: bool,
    /// QoS 1/2 messages sent and not yet acknowledged.
    outstanding: u64,
    /// Connection failures since the last successful connect.
    failures: u32,
    /// Unacknowledged messages taken from a lost connection, to be sent again on the next.
    unacked: Vec<Request>,
}

impl Live {
    async fn publish_until(&mut self, stop: &CancellationToken) {
        let period = self.device.period;
        // Devices connect spread over up to a second and publish spread over one period, so
        // that they neither connect nor publish in lock-step.
        let connect_delay = period
            .min(Duration::from_secs(1))
            .mul_f64(self.rng.random_range(0.0..1.0));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sleep(connect_delay) => {}
        }
        let ticker = sleep(period.mul_f64(self.rng.random_range(0.0..1.0)));
        tokio::pin!(ticker);
        let mut retry_at = None;
        loop {
            if let Some(at) = retry_at.take() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = sleep_until(at) => {}
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                // Only while connected: rumqttc's poll must not be interrupted while it is
                // connecting, or it starts over with a new connection.
                _ = &mut ticker, if self.connected => {
                    // ±10 % jitter, as real device clocks have. A device that fell behind
                    // skips readings rather than sending a burst.
                    let jitter = period.mul_f64(self.rng.random_range(0.9..1.1));
                    let next = ticker.deadline().max(Instant::now()) + jitter;
                    ticker.as_mut().reset(next);
                    self.publish();
                }
                event = self.eventloop.poll() => {
                    retry_at = self.on_event(event).map(|backoff| Instant::now() + backoff);
                }
            }
        }
    }

    /// Queues one reading; skips it (counting an error) when the client's queue is full.
    fn publish(&mut self) {
        let now = Timestamp::now();
        let ms = now.as_millisecond().max(self.last_ms.saturating_add(1));
        let at = Timestamp::from_millisecond(ms).unwrap_or(now);
        let reading = self.device.model.sample(at);
        let body = payload(&reading, self.seq + 1, at, self.device.local_time);
        let qos = self.device.qos;
        match self.client.try_publish(&self.topic, qos, false, body) {
            Ok(()) => {
                self.seq += 1;
                self.last_ms = ms;
                self.device.stats.published.fetch_add(1, Ordering::Relaxed);
                if qos != QoS::AtMostOnce {
                    self.outstanding += 1;
                }
            }
            Err(e) => {
                self.device.stats.errors.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "client queue full; reading skipped");
            }
        }
    }

    /// Accounts for one event of the connection; after a failure returns how long to wait
    /// before polling again (which reconnects).
    fn on_event(&mut self, event: Result<Event, ConnectionError>) -> Option<Duration> {
        let stats = &self.device.stats;
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                self.connected = true;
                self.failures = 0;
                stats.connected.fetch_add(1, Ordering::Relaxed);
                // A clean session forgets what the last one left unacknowledged; send it again
                // (at least once: the hub stores a repeated reading once).
                if !self.unacked.is_empty() {
                    debug!(
                        count = self.unacked.len(),
                        "sending unacknowledged messages again"
                    );
                    self.eventloop.pending.extend(self.unacked.drain(..));
                }
                debug!("connected");
                None
            }
            Ok(Event::Incoming(Incoming::PubAck(_) | Incoming::PubComp(_))) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                stats.acked.fetch_add(1, Ordering::Relaxed);
                None
            }
            Ok(_) => None,
            Err(e) => {
                if self.connected {
                    self.connected = false;
                    stats.connected.fetch_sub(1, Ordering::Relaxed);
                }
                stats.errors.fetch_add(1, Ordering::Relaxed);
                self.failures = self.failures.saturating_add(1);
                // rumqttc keeps what was in flight in `pending` but drops it when the new
                // session is clean; keep it here until the next CONNACK.
                let resend = self
                    .eventloop
                    .pending
                    .drain(..)
                    .filter_map(|request| match request {
                        Request::Publish(mut publish) => {
                            publish.dup = publish.pkid != 0;
                            Some(Request::Publish(publish))
                        }
                        rel @ Request::PubRel(_) => Some(rel),
                        _ => None,
                    });
                self.unacked.extend(resend);
                // Loud at first, then only now and then while the broker stays away.
                if self.failures.is_power_of_two() {
                    warn!(error = %e, failures = self.failures, "connection failed; reconnecting");
                } else {
                    debug!(error = %e, failures = self.failures, "connection failed; reconnecting");
                }
                Some(self.backoff())
            }
        }
    }

    /// 250 ms doubling up to 5 s, with jitter so that devices do not reconnect in lock-step.
    fn backoff(&mut self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(5);
        let base = (BACKOFF_MIN * (1 << doublings)).min(BACKOFF_MAX);
        base.mul_f64(self.rng.random_range(0.5..1.0))
    }

    /// Publishing has stopped: waits (at most [`ACK_WAIT`]) until what was sent is
    /// acknowledged, reconnecting for it if need be, then disconnects.
    async fn finish(&mut self) {
        let deadline = Instant::now() + ACK_WAIT;
        while self.outstanding > 0 {
            let Ok(event) = timeout_at(deadline, self.eventloop.poll()).await else {
                break;
            };
            if let Some(backoff) = self.on_event(event) {
                if timeout_at(deadline, sleep(backoff)).await.is_err() {
                    break;
                }
            }
        }
        if self.outstanding > 0 {
            warn!(
                outstanding = self.outstanding,
                "stopping with messages not acknowledged"
            );
        }
        if !self.connected {
            return;
        }
        // try_: a full queue must not block the stop; the connection is dropped either way.
        if self.client.try_disconnect().is_ok() {
            let _ = timeout(Duration::from_secs(1), async {
                while !matches!(
                    self.eventloop.poll().await,
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
                ) {}
            })
            .await;
        }
        self.connected = false;
        self.device.stats.connected.fetch_sub(1, Ordering::Relaxed);
        debug!(sent = self.seq, "disconnected");
    }
}
