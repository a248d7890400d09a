//! Runs simulated devices against a broker: checks the settings, starts one task per device
//! (each with its own MQTT connection), stops them at the deadline, on cancellation or, in a
//! replay, when every device is through, and reports what each sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kenko_config::DeviceKind;
use rumqttc::QoS;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::device::{Device, Mode};
use super::emitter::Emitter;
use super::faults::InjectedFault;
use super::fleet::{fleet_from, SimDevice};
use super::hash::mix;
use super::model::KindModel;
use kenko_devices::profile::Profiles;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The broker's `host:port` (`[v6addr]:port` for IPv6; an `mqtt://` or `tcp://` prefix is
    /// accepted).
    pub broker: String,
    /// Kinds of device; a kind named twice counts once.
    pub kinds: Vec<DeviceKind>,
    /// How many devices of each kind.
    pub devices: usize,
    /// Number of the first device of each kind, 1-based: `bed-001` is 1.
    pub first_device: usize,
    /// How long to publish; until cancelled (or, replaying, until done) when `None`.
    pub duration: Option<Duration>,
    /// Messages per second per device, live.
    pub rate_hz: f64,
    pub qos: QoS,
    /// Seed of the simulated persons; device `n` of every kind measures the person of
    /// [`KindModel::for_device`]`(kind, seed, n)`, citizen `n`.
    pub seed: u64,
    /// Chance, 0 to 1, that a message is replaced by a faulty one (see [`InjectedFault`]).
    pub faults: f64,
    /// Replay a period of event times instead of publishing live.
    pub replay: Option<Replay>,
    /// MQTT password of each device (its username is its id); without it devices connect
    /// without credentials, which only a hub with anonymous access lets in.
    pub passwords: Option<Arc<HashMap<String, String>>>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            broker: "127.0.0.1:1883".into(),
            kinds: vec![DeviceKind::Bed],
            devices: 20,
            first_device: 1,
            duration: None,
            rate_hz: 1.0,
            qos: QoS::AtLeastOnce,
            seed: 1,
            faults: 0.0,
            replay: None,
            passwords: None,
        }
    }
}

/// Event times `from`, `from + step`, ... before `until`, sent as fast as acknowledged.
/// Spot-measurement devices (blood pressure, scale, ...) send only the measurements their
/// persons take in each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    pub from: Timestamp,
    pub until: Timestamp,
    pub step: Duration,
}

/// Live counters, cheap to read from another task while the simulation runs.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Messages handed to the MQTT client (good ones, duplicates and faults).
    pub published: AtomicU64,
    /// PUBACKs (PUBCOMPs at QoS 2) received.
    pub acked: AtomicU64,
    /// Connection failures, and readings skipped because too many messages were waiting.
    pub errors: AtomicU64,
    /// Devices connected right now.
    pub connected: AtomicU64,
    /// Faulty messages sent on purpose.
    pub faults: AtomicU64,
}

/// What one device sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    pub id: String,
    pub kind: DeviceKind,
    pub profile: &'static str,
    /// Good messages sent, each once (duplicates and faults not counted).
    pub good_messages: u64,
    /// Samples (distinct event times) in the good messages.
    pub samples: u64,
    /// Readings in the good messages, one per (metric, event time): what the hub stores for
    /// this device if it takes everything.
    pub readings: u64,
    /// Good messages sent a second time, byte for byte.
    pub duplicates: u64,
    /// PUBACKs received (for every kind of message).
    pub acked: u64,
    /// Samples never sent: given up when too many were pending.
    pub dropped: u64,
    /// Every faulty message sent on purpose, in order.
    pub faults: Vec<InjectedFault>,
}

impl DeviceReport {
    pub(crate) fn new(device: &SimDevice) -> DeviceReport {
        DeviceReport {
            id: device.id.clone(),
            kind: device.kind,
            profile: device.profile,
            good_messages: 0,
            samples: 0,
            readings: 0,
            duplicates: 0,
            acked: 0,
            dropped: 0,
            faults: Vec::new(),
        }
    }
}

/// Totals at the end, and each device's account.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    pub published: u64,
    pub acked: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Per device, in the order of [`fleet`](super::fleet()): kind by kind, by number.
    pub devices: Vec<DeviceReport>,
}

impl SimReport {
    /// Every injected fault, device by device, in the order sent.
    pub fn faults(&self) -> impl Iterator<Item = &InjectedFault> {
        self.devices.iter().flat_map(|d| &d.faults)
    }
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
    #[error("no device kinds to simulate; name at least one of bed, wearable, bp, scale, thermo, oximeter, glucose")]
    NoKinds,
    #[error("fault rate {0} is not a probability; give a number from 0 to 1, such as 0.05")]
    Faults(f64),
    #[error("cannot replay from {from} until {until}: {why}")]
    Replay {
        from: Timestamp,
        until: Timestamp,
        why: &'static str,
    },
    #[error("no password for device {0}; add a line \"{0} PASSWORD\" to the password file")]
    NoPassword(String),
    #[error("device {device} needs payload profile {profile:?}, which is not built in")]
    Profile { device: String, profile: String },
}

/// How long a stopping device waits for the acknowledgements of what it already sent.
pub(crate) const ACK_WAIT: Duration = Duration::from_secs(5);

/// Runs `config.devices` simulated devices of each of `config.kinds` until `config.duration`
/// has passed, `cancel` fires or (replaying) every device is through; then waits (at most
/// 5 s, and 1 s more to disconnect) for outstanding acknowledgements and disconnects them.
/// `stats` is updated live. Connection failures are retried, counted and logged, never
/// returned: the only errors are settings that cannot work.
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
    config
        .first_device
        .checked_add(config.devices)
        .filter(|_| config.first_device > 0 && config.devices > 0)
        .ok_or(SimError::Devices {
            first: config.first_device,
            count: config.devices,
        })?;
    if config.kinds.is_empty() {
        return Err(SimError::NoKinds);
    }
    if !(0.0..=1.0).contains(&config.faults) {
        return Err(SimError::Faults(config.faults));
    }
    let mode = match config.replay {
        None => Mode::Live { period },
        Some(replay) => {
            check_replay(&replay)?;
            Mode::Replay(replay)
        }
    };
    let profiles = Profiles::builtin();
    let password = |id: &str| match &config.passwords {
        None => Ok(None),
        Some(map) => map
            .get(id)
            .cloned()
            .map(Some)
            .ok_or_else(|| SimError::NoPassword(id.to_owned())),
    };
    // Every device's password and profile are known before any of them starts.
    let mut devices = Vec::new();
    for device in fleet_from(&config.kinds, config.first_device, config.devices) {
        let profile = profiles
            .get(device.profile)
            .cloned()
            .ok_or_else(|| SimError::Profile {
                device: device.id.clone(),
                profile: device.profile.to_owned(),
            })?;
        let password = password(&device.id)?;
        devices.push((device, profile, password));
    }

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
    let kinds: Vec<&str> = config.kinds.iter().map(|k| k.as_str()).collect();
    info!(
        broker = %config.broker,
        kinds = %kinds.join(","),
        devices = devices.len(),
        rate_hz = config.rate_hz,
        replay = config.replay.is_some(),
        "starting simulated devices"
    );
    let order: Vec<String> = devices.iter().map(|(d, ..)| d.id.clone()).collect();
    let mut tasks = JoinSet::new();
    for (device, profile, password) in devices {
        let span = info_span!("sim_device", device = %device.id);
        let seed = device_seed(config.seed, &device);
        let task = Device {
            emitter: Emitter::new(
                KindModel::for_device(device.kind, config.seed, device.n),
                profile,
                seed,
                config.faults,
            ),
            mode,
            rng_seed: config.seed ^ (device.n as u64).rotate_left(32) ^ (device.kind as u64) << 48,
            qos: config.qos,
            stats: stats.clone(),
            password,
            device,
        };
        tasks.spawn(task.run(host.clone(), port, stop.clone()).instrument(span));
    }
    let mut reports = HashMap::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(report) => {
                reports.insert(report.id.clone(), report);
            }
            Err(e) => warn!(error = %e, "a simulated device task failed"),
        }
    }
    stop.cancel();
    Ok(SimReport {
        published: stats.published.load(Ordering::Relaxed),
        acked: stats.acked.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        devices: order.iter().filter_map(|id| reports.remove(id)).collect(),
    })
}

/// Seeds a device's habits and fault draws: one per (seed, kind, number).
fn device_seed(seed: u64, device: &SimDevice) -> u64 {
    mix(seed ^ mix(((device.kind as u64) << 32) | device.n as u64))
}

fn check_replay(replay: &Replay) -> Result<(), SimError> {
    let bad = |why| SimError::Replay {
        from: replay.from,
        until: replay.until,
        why,
    };
    if replay.until <= replay.from {
        return Err(bad("the end must come after the start"));
    }
    if replay.step.is_zero() {
        return Err(bad("the step must be at least a millisecond"));
    }
    Ok(())
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
        let bad_faults = SimConfig {
            faults: 1.5,
            ..SimConfig::default()
        };
        let err = refused(bad_faults).await.expect_err("refused");
        assert!(err.to_string().contains("from 0 to 1"), "{err}");
        let no_kinds = SimConfig {
            kinds: vec![],
            ..SimConfig::default()
        };
        assert!(matches!(refused(no_kinds).await, Err(SimError::NoKinds)));
        let at: Timestamp = "2026-11-25T00:00:00Z".parse().expect("ts");
        for (from, until, step) in [
            (at, at, 60),
            (at + jiff::SignedDuration::from_secs(1), at, 60),
            (at, at + jiff::SignedDuration::from_hours(1), 0),
        ] {
            let config = SimConfig {
                replay: Some(Replay {
                    from,
                    until,
                    step: Duration::from_secs(step),
                }),
                ..SimConfig::default()
            };
            let err = refused(config).await.expect_err("refused");
            assert!(matches!(err, SimError::Replay { .. }), "{err}");
        }
        let mut passwords = HashMap::new();
        passwords.insert("bed-001".to_owned(), "pw".to_owned());
        let config = SimConfig {
            kinds: vec![DeviceKind::Bed, DeviceKind::Glucose],
            devices: 1,
            passwords: Some(Arc::new(passwords)),
            ..SimConfig::default()
        };
        let err = refused(config).await.expect_err("refused");
        assert!(err.to_string().contains("glucose-001"), "{err}");
        assert_eq!(stats.published.load(Ordering::Relaxed), 0);
    }
}
