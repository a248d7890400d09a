//! One simulated device as a task: drives its own MQTT connection (rumqttc, MQTT 3.1.1, clean
//! session) and sends what its [`Emitter`] makes, keeping at most [`INFLIGHT`] messages
//! unacknowledged. Live, it reads on a jittered clock while connected; in a replay, it goes
//! through its event times as fast as acknowledgements come back, then stops. It reconnects
//! with backoff, and on stop waits for its acknowledgements before disconnecting.

use std::collections::VecDeque;
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

use super::emitter::{Emitter, Message, Sent, MAX_BATCH};
use super::faults::InjectedFault;
use super::fleet::SimDevice;
use super::run::{DeviceReport, Replay, SimStats, ACK_WAIT};

/// Requests the client may queue; more than [`INFLIGHT`], so a full window never blocks.
const QUEUE: usize = 64;
/// Messages sent and not yet acknowledged, at most.
pub(crate) const INFLIGHT: u64 = 32;
/// Messages a live device keeps waiting to be sent before it skips readings.
const MAX_OUTBOX: usize = 1_000;
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A batch of [`MAX_BATCH`] samples stays well below this; rumqttc's default is 10 KiB.
const MAX_PACKET: usize = 256 * 1024;

/// How a device goes through time.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// Reads now, every `period` on average.
    Live { period: Duration },
    /// Event times of a past (or current) period, as fast as acknowledged.
    Replay(Replay),
}

/// What a device is; [`Device::run`] brings it to life.
pub(crate) struct Device {
    pub device: SimDevice,
    pub emitter: Emitter,
    pub mode: Mode,
    /// Seeds this device's start offset, jitter and backoff.
    pub rng_seed: u64,
    pub qos: QoS,
    pub stats: Arc<SimStats>,
    /// MQTT password; the username is the device id.
    pub password: Option<String>,
}

impl Device {
    /// Runs until `stop` fires (or, replaying, until done), then finishes cleanly (bounded by
    /// [`ACK_WAIT`] and a second) and reports what it sent.
    pub async fn run(self, host: String, port: u16, stop: CancellationToken) -> DeviceReport {
        let id = self.device.id.clone();
        let mut options = MqttOptions::new(id.clone(), host, port);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_inflight(INFLIGHT as u16 + 8);
        if let Some(password) = &self.password {
            options.set_credentials(id.clone(), password.clone());
        }
        let (client, eventloop) = AsyncClient::new(options, QUEUE);
        let report = DeviceReport::new(&self.device);
        let mut live = Live {
            topic: self.device.topic(),
            rng: SmallRng::seed_from_u64(self.rng_seed),
            device: self,
            client,
            eventloop,
            outbox: VecDeque::new(),
            connected: false,
            outstanding: 0,
            failures: 0,
            unacked: Vec::new(),
            report,
        };
        match live.device.mode {
            Mode::Live { period } => live.live_until(period, &stop).await,
            Mode::Replay(replay) => live.replay_until(replay, &stop).await,
        }
        live.finish().await;
        live.report.dropped += live.device.emitter.dropped;
        live.report
    }
}

/// A running device and its connection state.
struct Live {
    device: Device,
    topic: String,
    rng: SmallRng,
    client: AsyncClient,
    eventloop: EventLoop,
    /// Messages made and not yet handed to the client.
    outbox: VecDeque<Message>,
    connected: bool,
    /// QoS 1/2 messages sent and not yet acknowledged.
    outstanding: u64,
    /// Connection failures since the last successful connect.
    failures: u32,
    /// Unacknowledged messages taken from a lost connection, to be sent again on the next.
    unacked: Vec<Request>,
    report: DeviceReport,
}

impl Live {
    async fn live_until(&mut self, period: Duration, stop: &CancellationToken) {
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
                    self.tick(period);
                }
                event = self.eventloop.poll() => {
                    retry_at = self.on_event(event).map(|backoff| Instant::now() + backoff);
                }
            }
        }
    }

    /// One live slot: a reading, unless the device is too far behind to keep up. `period`
    /// stands for the time since the previous slot, which only the first reading needs.
    fn tick(&mut self, period: Duration) {
        if self.outbox.len() >= MAX_OUTBOX {
            self.device.stats.errors.fetch_add(1, Ordering::Relaxed);
            debug!("too many messages waiting; reading skipped");
            return;
        }
        let mut made = Vec::new();
        self.device
            .emitter
            .live(Timestamp::now(), period, &mut made);
        self.outbox.extend(made);
        self.drain();
    }

    async fn replay_until(&mut self, replay: Replay, stop: &CancellationToken) {
        let mut slot = replay.from;
        let mut flushed = false;
        let mut retry_at = None;
        loop {
            // Make messages a window ahead of what is sent.
            while self.outbox.len() < INFLIGHT as usize * 2 && !flushed {
                let mut made = Vec::new();
                if slot < replay.until {
                    let emitter = &mut self.device.emitter;
                    emitter.replay(slot, replay.step, replay.until, Timestamp::now(), &mut made);
                    slot = slot.checked_add(replay.step).unwrap_or(replay.until);
                } else {
                    self.device.emitter.flush(&mut made);
                    flushed = true;
                }
                self.outbox.extend(made);
            }
            self.drain();
            if flushed && self.outbox.is_empty() && self.outstanding == 0 {
                return;
            }
            if let Some(at) = retry_at.take() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = sleep_until(at) => {}
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                event = self.eventloop.poll() => {
                    retry_at = self.on_event(event).map(|backoff| Instant::now() + backoff);
                }
            }
        }
    }

    /// Hands messages to the client while connected and the window has room.
    fn drain(&mut self) {
        let qos = self.device.qos;
        while self.connected {
            if qos != QoS::AtMostOnce && self.outstanding >= INFLIGHT {
                break;
            }
            let Some(message) = self.outbox.front() else {
                break;
            };
            let payload = message.payload.clone();
            if let Err(e) = self.client.try_publish(&self.topic, qos, false, payload) {
                // The client's queue is full: try again after its next event.
                debug!(error = %e, "client queue full");
                break;
            }
            if qos != QoS::AtMostOnce {
                self.outstanding += 1;
            }
            if let Some(message) = self.outbox.pop_front() {
                self.account(message);
            }
        }
    }

    /// Counts a message handed to the client.
    fn account(&mut self, message: Message) {
        let stats = &self.device.stats;
        stats.published.fetch_add(1, Ordering::Relaxed);
        let report = &mut self.report;
        match message.sent {
            Sent::Good { samples, readings } => {
                report.good_messages += 1;
                report.samples += samples;
                report.readings += readings;
            }
            Sent::Duplicate => {
                report.duplicates += 1;
            }
            Sent::Fault(reason) => {
                stats.faults.fetch_add(1, Ordering::Relaxed);
                report.faults.push(InjectedFault {
                    device: report.id.clone(),
                    seq: message.seq,
                    reason,
                    payload: message.payload,
                });
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
                self.drain();
                None
            }
            Ok(Event::Incoming(Incoming::PubAck(_) | Incoming::PubComp(_))) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                stats.acked.fetch_add(1, Ordering::Relaxed);
                self.report.acked += 1;
                self.drain();
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

    /// Publishing has stopped: sends what the device still holds, waits (at most
    /// [`ACK_WAIT`]) until it is acknowledged, reconnecting for it if need be, then
    /// disconnects.
    async fn finish(&mut self) {
        let mut rest = Vec::new();
        self.device.emitter.flush(&mut rest);
        self.outbox.extend(rest);
        let deadline = Instant::now() + ACK_WAIT;
        loop {
            self.drain();
            if self.outbox.is_empty() && self.outstanding == 0 {
                break;
            }
            let Ok(event) = timeout_at(deadline, self.eventloop.poll()).await else {
                break;
            };
            if let Some(backoff) = self.on_event(event) {
                if timeout_at(deadline, sleep(backoff)).await.is_err() {
                    break;
                }
            }
        }
        if self.outstanding > 0 || !self.outbox.is_empty() {
            warn!(
                outstanding = self.outstanding,
                unsent = self.outbox.len(),
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
        debug!(sent = self.report.good_messages, "disconnected");
    }
}

/// A batch of [`MAX_BATCH`] samples fits in a packet with room to spare.
const _: () = assert!(MAX_BATCH * 200 < MAX_PACKET);
