//! Runs simulated bed sensors against a broker: one task per device, each with its own MQTT
//! connection (rumqttc), publishing on a jittered interval until told to stop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::bed::{payload, BedModel};
use crate::registry::demo_device_id;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The broker's `host:port`.
    pub broker: String,
    pub devices: usize,
    /// Number of the first device (`bed-001` is 1).
    pub first_device: usize,
    /// How long to publish; until cancelled when `None`.
    pub duration: Option<Duration>,
    /// Messages per second per device.
    pub rate_hz: f64,
    pub qos: QoS,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            broker: "127.0.0.1:1883".into(),
            devices: 20,
            first_device: 1,
            duration: None,
            rate_hz: 1.0,
            qos: QoS::AtLeastOnce,
            seed: 1,
        }
    }
}

/// Live counters, readable while the simulation runs.
#[derive(Debug, Default)]
pub struct SimStats {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub errors: AtomicU64,
    pub connected: AtomicU64,
}

/// Totals at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimReport {
    pub published: u64,
    pub acked: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("broker address {0:?} is not HOST:PORT")]
    Address(String),
    #[error("rate {0} is not a positive number of messages per second")]
    Rate(f64),
}

/// How long a stopping device waits for acknowledgements of what it already sent.
const ACK_WAIT: Duration = Duration::from_secs(5);

pub async fn run(
    config: SimConfig,
    stats: Arc<SimStats>,
    cancel: CancellationToken,
) -> Result<SimReport, SimError> {
    let (host, port) = config
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_matches(['[', ']']).to_owned(),
                p.parse::<u16>().ok()?,
            ))
        })
        .ok_or_else(|| SimError::Address(config.broker.clone()))?;
    if !(config.rate_hz > 0.0 && config.rate_hz.is_finite()) {
        return Err(SimError::Rate(config.rate_hz));
    }
    let started = Instant::now();
    let stop = cancel.child_token();
    if let Some(duration) = config.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.cancel();
        });
    }
    let period = Duration::from_secs_f64(1.0 / config.rate_hz);
    let mut devices = JoinSet::new();
    for n in config.first_device..config.first_device + config.devices {
        let device = Device {
            id: demo_device_id(n),
            model: BedModel::new(config.seed.wrapping_add(n as u64)),
            // About a quarter of the devices send JST wall-clock times instead of epoch ms.
            local_time: n % 4 == 3,
            rng: SmallRng::seed_from_u64(config.seed ^ (n as u64) << 20),
            qos: config.qos,
            period,
            stats: stats.clone(),
        };
        let options = {
            let mut o = MqttOptions::new(device.id.clone(), host.clone(), port);
            o.set_keep_alive(Duration::from_secs(30));
            o.set_clean_session(true);
            o
        };
        devices.spawn(device.run(options, stop.clone()));
    }
    while devices.join_next().await.is_some() {}
    Ok(SimReport {
        published: stats.published.load(Ordering::Relaxed),
        acked: stats.acked.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

struct Device {
    id: String,
    model: BedModel,
    local_time: bool,
    rng: SmallRng,
    qos: QoS,
    period: Duration,
    stats: Arc<SimStats>,
}

impl Device {
    async fn run(mut self, options: MqttOptions, stop: CancellationToken) {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let topic = format!("devices/{}/telemetry", self.id);
        // Devices start spread over one period, so that they do not publish in lock-step.
        let offset = self.period.mul_f64(self.rng.random_range(0.0..1.0));
        let mut next = tokio::time::Instant::now() + offset;
        let (mut seq, mut outstanding, mut connected) = (0u64, 0u64, false);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                // Only while connected: rumqttc's poll must not be interrupted while it is
                // connecting, or it starts over with a new connection.
                _ = tokio::time::sleep_until(next), if connected => {
                    // ±10 % jitter, as real device clocks have. A device that fell behind
                    // skips readings rather than sending a burst with the same timestamp.
                    let now = tokio::time::Instant::now();
                    next = next.max(now) + self.period.mul_f64(self.rng.random_range(0.9..1.1));
                    let now = Timestamp::now();
                    let reading = self.model.sample(now);
                    seq += 1;
                    let body = payload(&reading, seq, now, self.local_time);
                    match client.try_publish(&topic, self.qos, false, body) {
                        Ok(()) => {
                            self.stats.published.fetch_add(1, Ordering::Relaxed);
                            if self.qos != QoS::AtMostOnce {
                                outstanding += 1;
                            }
                        }
                        Err(e) => {
                            self.stats.errors.fetch_add(1, Ordering::Relaxed);
                            debug!(device = %self.id, error = %e, "publish queue full; reading skipped");
                        }
                    }
                }
                event = eventloop.poll() => {
                    self.on_event(event, &mut connected, &mut outstanding).await;
                }
            }
        }
        // Wait (bounded) for the acknowledgements of what was already sent, then leave cleanly.
        let deadline = tokio::time::Instant::now() + ACK_WAIT;
        while outstanding > 0 && connected {
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(event) => self.on_event(event, &mut connected, &mut outstanding).await,
                Err(_) => break,
            }
        }
        if connected {
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while !matches!(
                    eventloop.poll().await,
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
                ) {}
            })
            .await;
            self.stats.connected.fetch_sub(1, Ordering::Relaxed);
        }
    }

    async fn on_event(
        &self,
        event: Result<Event, rumqttc::ConnectionError>,
        connected: &mut bool,
        outstanding: &mut u64,
    ) {
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                *connected = true;
                self.stats.connected.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Incoming::PubAck(_) | Incoming::PubComp(_))) => {
                *outstanding = outstanding.saturating_sub(1);
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                if *connected {
                    self.stats.connected.fetch_sub(1, Ordering::Relaxed);
                }
                *connected = false;
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(device = %self.id, error = %e, "connection failed; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_settings_are_refused_before_connecting() {
        let stats = Arc::new(SimStats::default());
        let bad_addr = SimConfig {
            broker: "localhost".into(),
            ..SimConfig::default()
        };
        assert!(matches!(
            run(bad_addr, stats.clone(), CancellationToken::new()).await,
            Err(SimError::Address(_))
        ));
        let bad_rate = SimConfig {
            rate_hz: 0.0,
            ..SimConfig::default()
        };
        assert!(matches!(
            run(bad_rate, stats, CancellationToken::new()).await,
            Err(SimError::Rate(_))
        ));
    }
}
