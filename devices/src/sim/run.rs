//! Runs simulated bed sensors against a broker: checks the settings, starts one task per device
//! (each with its own MQTT connection), stops them at the deadline or on cancellation, and
//! reports the totals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::QoS;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::device::Device;
use super::BedModel;
use crate::registry::demo_device_id;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The broker's `host:port` (`[v6addr]:port` for IPv6; an `mqtt://` or `tcp://` prefix is
    /// accepted).
    pub broker: String,
    /// How many devices.
    pub devices: usize,
    /// Number of the first device, 1-based: `bed-001` is 1.
    pub first_device: usize,
    /// How long to publish; until cancelled when `None`.
    pub duration: Option<Duration>,
    /// Messages per second per device.
    pub rate_hz: f64,
    pub qos: QoS,
    /// Seed of the simulated persons; device `n` follows [`BedModel::for_device`]`(seed, n)`.
    pub seed: u64,
    /// MQTT password of each device (its username is its id); without it devices connect
    /// without credentials, which only a hub with anonymous access lets in.
    pub passwords: Option<Arc<HashMap<String, String>>>,
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
            passwords: None,
        }
    }
}

/// Live counters, cheap to read from another task while the simulation runs.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Messages handed to the MQTT client.
    pub published: AtomicU64,
    /// PUBACKs (PUBCOMPs at QoS 2) received.
    pub acked: AtomicU64,
    /// Connection failures, and readings skipped because the client's queue was full.
    pub errors: AtomicU64,
    /// Devices connected right now.
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

/// Settings that cannot work; nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("broker address {0:?} is not HOST:PORT; give it like 127.0.0.1:1883 or [::1]:1883")]
    Address(String),
    #[error("rate {0} is not a usable number of messages per second per device; give a positive number such as 1 or 0.2")]
    Rate(f64),
    #[error("cannot simulate {count} devices from number {first}; devices are numbered from 1 (bed-001) and at least one is needed")]
    Devices { first: usize, count: usize },
    #[error("no password for device {0}; add a line \"{0} PASSWORD\" to the password file")]
    NoPassword(String),
}

/// How long a stopping device waits for the acknowledgements of what it already sent.
pub(crate) const ACK_WAIT: Duration = Duration::from_secs(5);

/// Runs `config.devices` simulated bed sensors until `config.duration` has passed or `cancel`
/// fires, then waits (at most 5 s, and 1 s more to disconnect) for outstanding
/// acknowledgements and disconnects them. `stats` is updated live. Connection failures are
/// retried, counted and logged, never returned: the only errors are settings that cannot work.
pub async fn run(
    config: SimConfig,
    stats: Arc<SimStats>,
    cancel: CancellationToken,
) -> Result<SimReport, SimError> {
    let (host, port) = broker_address(&config.broker)?;
    let period = Duration::try_from_secs_f64(1.0 / config.rate_hz)
        .ok()
        .filter(|p| config.rate_hz > 0.0 && !p.is_zero())
        .ok_or(SimError::Rate(config.rate_hz))?;
    let last_device = config
        .first_device
        .checked_add(config.devices)
        .filter(|_| config.first_device > 0 && config.devices > 0)
        .ok_or(SimError::Devices {
            first: config.first_device,
            count: config.devices,
        })?;

    let started = Instant::now();
    let stop = cancel.child_token();
    if let Some(duration) = config.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(duration) => stop.cancel(),
                _ = stop.cancelled() => {}
            }
        });
    }
    info!(
        broker = %config.broker,
        devices = config.devices,
        rate_hz = config.rate_hz,
        "starting simulated bed sensors"
    );
    let password = |id: &str| match &config.passwords {
        None => Ok(None),
        Some(map) => map
            .get(id)
            .cloned()
            .map(Some)
            .ok_or_else(|| SimError::NoPassword(id.to_owned())),
    };
    // Every device's password is known before any of them starts.
    let ids: Vec<(usize, String, Option<String>)> = (config.first_device..last_device)
        .map(|n| {
            let id = demo_device_id(n);
            password(&id).map(|p| (n, id, p))
        })
        .collect::<Result<_, _>>()?;
    let mut devices = JoinSet::new();
    for (n, id, password) in ids {
        let span = info_span!("sim_device", device = %id);
        let device = Device {
            // About a quarter of the devices send JST wall-clock times instead of epoch ms.
            local_time: n % 4 == 3,
            model: BedModel::for_device(config.seed, n),
            rng_seed: config.seed ^ (n as u64).rotate_left(32),
            qos: config.qos,
            period,
            stats: stats.clone(),
            id,
            password,
        };
        devices.spawn(
            device
                .run(host.clone(), port, stop.clone())
                .instrument(span),
        );
    }
    while let Some(result) = devices.join_next().await {
        if let Err(e) = result {
            warn!(error = %e, "a simulated device task failed");
        }
    }
    stop.cancel();
    Ok(SimReport {
        published: stats.published.load(Ordering::Relaxed),
        acked: stats.acked.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// Splits `host:port`, keeping the brackets of an IPv6 address (rumqttc joins host and port
/// back together with a colon).
fn broker_address(text: &str) -> Result<(String, u16), SimError> {
    let bad = || SimError::Address(text.to_owned());
    let bare = text
        .strip_prefix("mqtt://")
        .or_else(|| text.strip_prefix("tcp://"))
        .unwrap_or(text)
        .trim_end_matches('/');
    let (host, port) = bare.rsplit_once(':').ok_or_else(bad)?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(bad)?;
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    let plain = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if !(bracketed || plain) {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        let ok = |s: &str| broker_address(s).expect(s);
        assert_eq!(ok("127.0.0.1:1883"), ("127.0.0.1".into(), 1883));
        assert_eq!(
            ok("hub.example-city.jp:8883"),
            ("hub.example-city.jp".into(), 8883)
        );
        assert_eq!(ok("[::1]:1883"), ("[::1]".into(), 1883));
        assert_eq!(ok("mqtt://localhost:1884/"), ("localhost".into(), 1884));
        for bad in [
            "localhost",
            ":1883",
            "host:",
            "host:0",
            "host:70000",
            "::1:1883",
            "a b:1",
            "mqtts://h:1",
        ] {
            let err = broker_address(bad).expect_err(bad);
            assert!(err.to_string().contains("HOST:PORT"), "{err}");
        }
    }

    #[tokio::test]
    async fn bad_settings_are_refused_before_connecting() {
        let stats = Arc::new(SimStats::default());
        let refused = |config: SimConfig| {
            let stats = stats.clone();
            async move { run(config, stats, CancellationToken::new()).await }
        };
        let bad_addr = SimConfig {
            broker: "localhost".into(),
            ..SimConfig::default()
        };
        assert!(matches!(refused(bad_addr).await, Err(SimError::Address(_))));
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300] {
            let config = SimConfig {
                rate_hz: rate,
                ..SimConfig::default()
            };
            assert!(
                matches!(refused(config).await, Err(SimError::Rate(_))),
                "rate {rate}"
            );
        }
        for (first, count) in [(0, 5), (1, 0), (usize::MAX, 2)] {
            let config = SimConfig {
                first_device: first,
                devices: count,
                ..SimConfig::default()
            };
            let err = refused(config).await.expect_err("refused");
            assert!(matches!(err, SimError::Devices { .. }), "{err}");
        }
        assert_eq!(stats.published.load(Ordering::Relaxed), 0);
    }
}
