//! Payload decoding and normalization: from a vendor payload to canonical observations.
//!
//! A device's payload profile (configuration, see `config/profiles.toml`) says how its JSON
//! maps onto metrics, units and times ([`json`]); the compact protobuf schema ([`protobuf`])
//! serves any kind. Every observation then goes through the same checks ([`normalize`]): a
//! real event time, not too far ahead of the hub's clock, not older than the late horizon,
//! a finite value, inside physiological bounds (flagged or rejected). A message is decoded
//! whole or not at all: a [`Rejection`] says which field was wrong and why, so the device
//! and the operator can fix it.

mod document;
mod json;
mod protobuf;
mod redact;
mod relayed;

use std::collections::HashMap;
use std::sync::Arc;

use jiff::tz::TimeZone;
use kenko_config::{PayloadFormat, Plausibility};
use kenko_devices::{DeviceEntry, Metric, Profile};

use crate::observation::{flags, Observation};
pub use relayed::{AnyBehind, DeviceLookup, NoOthers};

/// Why a message was not stored. The code is stable (metrics, dead-letter queries); the
/// message is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: RejectCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    /// No device with the topic's id is registered.
    UnknownDevice,
    /// The client published on another device's telemetry topic.
    ClientMismatch,
    /// The payload is not what the device's profile describes.
    MalformedPayload,
    /// A value lies outside physiological bounds and the hub is set to reject such values.
    Implausible,
    /// The event time is too far ahead of the hub's clock.
    FutureTimestamp,
    /// The event time is older than the late-data horizon (`ingest.late_horizon_s`).
    TooOld,
    /// The citizen has not consented to collection (of these data types): refused, counted,
    /// and the payload is kept nowhere.
    NoConsent,
    /// The write-ahead log is full (a sink is behind): the message is not accepted now and
    /// the device should send it again later. Never dead-lettered; an MQTT 3.1.1 client is
    /// simply not acknowledged.
    LogFull,
    /// One message holds more readings than one log record can carry.
    TooManyReadings,
}

impl RejectCode {
    pub const ALL: [RejectCode; 9] = [
        RejectCode::UnknownDevice,
        RejectCode::ClientMismatch,
        RejectCode::MalformedPayload,
        RejectCode::Implausible,
        RejectCode::FutureTimestamp,
        RejectCode::TooOld,
        RejectCode::NoConsent,
        RejectCode::LogFull,
        RejectCode::TooManyReadings,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::UnknownDevice => "unknown_device",
            RejectCode::ClientMismatch => "client_mismatch",
            RejectCode::MalformedPayload => "malformed_payload",
            RejectCode::Implausible => "implausible_value",
            RejectCode::FutureTimestamp => "future_timestamp",
            RejectCode::TooOld => "too_old",
            RejectCode::NoConsent => "no_consent",
            RejectCode::LogFull => "log_full",
            RejectCode::TooManyReadings => "too_many_readings",
        }
    }
}

impl Rejection {
    fn new(code: RejectCode, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
        }
    }

    fn malformed(message: impl Into<String>) -> Rejection {
        Rejection::new(RejectCode::MalformedPayload, message)
    }
}

/// Earliest event time accepted as epoch milliseconds; smaller numbers are almost certainly
/// epoch seconds sent by mistake.
const MIN_EPOCH_MS: i64 = 946_684_800_000; // 2000-01-01T00:00:00Z

/// Resolved time zones: the hub's default and each device's own.
#[derive(Debug, Clone)]
pub struct Zones {
    default: TimeZone,
    named: HashMap<Arc<str>, TimeZone>,
}

/// A time zone name is not known: the hub's default, or a device's (`of` names which).
#[derive(Debug, thiserror::Error)]
#[error("unknown time zone {name:?} ({of}): {source}; use an IANA name such as Asia/Tokyo")]
pub struct UnknownZone {
    pub name: String,
    pub of: String,
    source: jiff::Error,
}

impl Zones {
    /// Resolves the default zone and every zone the given devices name, so that a typo
    /// is found at start and not at the first message.
    pub fn resolve<'a>(
        default: &str,
        devices: impl IntoIterator<Item = &'a DeviceEntry>,
    ) -> Result<Zones, UnknownZone> {
        let get = |name: &str, of: &dyn Fn() -> String| {
            TimeZone::get(name).map_err(|source| UnknownZone {
                name: name.to_owned(),
                of: of(),
                source,
            })
        };
        let mut named = HashMap::new();
        for device in devices {
            if let Some(name) = &device.timezone {
                if !named.contains_key(name) {
                    let of = || format!("the timezone of device {}", device.id);
                    named.insert(name.clone(), get(name, &of)?);
                }
            }
        }
        Ok(Zones {
            default: get(default, &|| "ingest.default_timezone".to_owned())?,
            named,
        })
    }

    /// The hub's default zone.
    pub fn default_zone(&self) -> TimeZone {
        self.default.clone()
    }

    /// The device's zone. A device registered after start names a zone looked up here (the
    /// registry checked it when the device was added); an unknown one falls back to the default.
    pub fn for_device(&self, device: &DeviceEntry) -> TimeZone {
        match &device.timezone {
            None => self.default.clone(),
            Some(name) => match self.named.get(name) {
                Some(zone) => zone.clone(),
                None => TimeZone::get(name).unwrap_or_else(|_| self.default.clone()),
            },
        }
    }
}

/// How old and how new an event time may be, relative to when the hub received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeLimits {
    /// Older than `received - late_horizon_ms` is dead-lettered as too old.
    pub late_horizon_ms: i64,
    /// Newer than `received + max_future_ms` is refused.
    pub max_future_ms: i64,
}

impl TimeLimits {
    pub fn from_config(config: &kenko_config::IngestConfig) -> TimeLimits {
        let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
        TimeLimits {
            late_horizon_ms: ms(config.late_horizon_s),
            max_future_ms: ms(config.max_future_s),
        }
    }
}

impl Default for TimeLimits {
    fn default() -> Self {
        TimeLimits::from_config(&kenko_config::IngestConfig::default())
    }
}

/// Everything a decoder needs besides the payload.
pub struct Context<'a> {
    /// The device whose topic the message came on.
    pub device: &'a DeviceEntry,
    /// Where the devices a gateway's message names are looked up.
    pub devices: &'a dyn DeviceLookup,
    /// The device's profile, or the protobuf profile when the message says it is protobuf.
    pub profile: &'a Profile,
    pub zones: &'a Zones,
    pub received_ms: i64,
    pub plausibility: Plausibility,
    pub limits: TimeLimits,
    /// The hub's own windowed output: derived metrics allowed, no late-data horizon.
    pub derived: bool,
}

/// One device's decoding outside the pipeline, everything owned: for tools, tests and
/// benchmarks that turn payloads into observations as the hub would.
pub struct Standalone {
    device: DeviceEntry,
    devices: Box<dyn DeviceLookup + Send>,
    profile: Arc<Profile>,
    zones: Zones,
    pub plausibility: Plausibility,
    pub limits: TimeLimits,
}

impl Standalone {
    /// Device `dev-001` of citizen `citizen-001`, of the profile's kind, in `zone`; values
    /// out of bounds are flagged; the default time limits. Any device a payload names is
    /// taken as registered behind it, for the same citizen.
    pub fn new(profile: Arc<Profile>, zone: &str) -> Result<Standalone, UnknownZone> {
        let device = DeviceEntry {
            id: Arc::from("dev-001"),
            kind: profile.kind.unwrap_or(kenko_config::DeviceKind::Bed),
            citizen: Arc::from("citizen-001"),
            profile: Arc::from(&*profile.name),
            timezone: None,
            gateway: None,
        };
        let zones = Zones::resolve(zone, [&device])?;
        Ok(Standalone {
            devices: Box::new(relayed::AnyBehind(Arc::new(device.clone()))),
            device,
            profile,
            zones,
            plausibility: Plausibility::Flag,
            limits: TimeLimits::default(),
        })
    }

    /// `publisher`, a device of `registry`, whose messages may name the devices registered
    /// behind it there; in `zone` unless a device names its own; otherwise as [`Standalone::new`].
    pub fn of_registered(
        profile: Arc<Profile>,
        zone: &str,
        registry: kenko_devices::Registry,
        publisher: &DeviceEntry,
    ) -> Result<Standalone, UnknownZone> {
        let zones = Zones::resolve(zone, registry.snapshot().iter())?;
        Ok(Standalone {
            device: publisher.clone(),
            devices: Box::new(registry),
            profile,
            zones,
            plausibility: Plausibility::Flag,
            limits: TimeLimits::default(),
        })
    }

    /// As [`decode`], the hub's clock reading `received_ms`.
    pub fn decode(
        &self,
        payload: &[u8],
        received_ms: i64,
        out: &mut Vec<Observation>,
    ) -> Result<(), Rejection> {
        let ctx = Context {
            device: &self.device,
            devices: &*self.devices,
            profile: &self.profile,
            zones: &self.zones,
            received_ms,
            plausibility: self.plausibility,
            limits: self.limits,
            derived: false,
        };
        decode(&ctx, payload, out)
    }
}

/// Decodes `payload` with the context's profile, normalizes and checks every observation,
/// and appends them to `out`. On rejection nothing is appended.
pub fn decode(
    ctx: &Context<'_>,
    payload: &[u8],
    out: &mut Vec<Observation>,
) -> Result<(), Rejection> {
    let start = out.len();
    let result = match ctx.profile.format {
        PayloadFormat::Json if ctx.profile.document => document::decode(ctx, payload, out),
        PayloadFormat::Json => json::decode(ctx, payload, out),
        PayloadFormat::Protobuf => protobuf::decode(ctx, payload, out),
    }
    .and_then(|()| {
        if out.len() == start {
            return Err(Rejection::malformed(no_readings(ctx.profile)));
        }
        out[start..]
            .iter_mut()
            .try_for_each(|obs| normalize(ctx, obs))
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Checks readings the hub computed for the context's device at `time_ms` (a windowed
/// output) as any observation is checked, and appends them to `out`. On rejection nothing
/// is appended.
pub fn derived(
    ctx: &Context<'_>,
    time_ms: i64,
    readings: &[(Metric, f64)],
    out: &mut Vec<Observation>,
) -> Result<(), Rejection> {
    if readings.is_empty() {
        return Err(Rejection::malformed("a windowed output has no readings"));
    }
    let start = out.len();
    out.extend(
        readings
            .iter()
            .map(|&(metric, value)| observation(ctx, metric, value, time_ms)),
    );
    let result = out[start..]
        .iter_mut()
        .try_for_each(|obs| normalize(ctx, obs));
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn no_readings(profile: &Profile) -> String {
    let mut keys: Vec<String> = profile.fields.iter().map(|f| f.key.to_string()).collect();
    if let Some(measures) = &profile.measures {
        let mut codes: Vec<&str> = measures.codes.iter().map(|(c, _)| &**c).collect();
        codes.sort_unstable();
        keys.push(format!(
            "a measure in {} with one of the codes {}",
            measures.path,
            codes.join(", ")
        ));
    }
    if keys.is_empty() {
        return "payload has no readings; a Telemetry message needs samples with readings".into();
    }
    format!(
        "payload has no readings; {} expects at least one of {}",
        profile.name,
        keys.join(", ")
    )
}

/// The checks every observation passes, whatever its format.
fn normalize(ctx: &Context<'_>, obs: &mut Observation) -> Result<(), Rejection> {
    let metric = obs.metric;
    if obs.time_ms < MIN_EPOCH_MS {
        return Err(Rejection::malformed(format!(
            "event time of {} is before the year 2000; send epoch milliseconds (or the profile's time format), not seconds",
            field_name(ctx, metric)
        )));
    }
    if obs.time_ms > ctx.received_ms.saturating_add(ctx.limits.max_future_ms) {
        return Err(Rejection::new(
            RejectCode::FutureTimestamp,
            format!(
                "event time of {} is more than {} s ahead of the hub's clock; check the device's clock",
                field_name(ctx, metric),
                ctx.limits.max_future_ms / 1000
            ),
        ));
    }
    if !ctx.derived && obs.time_ms < ctx.received_ms.saturating_sub(ctx.limits.late_horizon_ms) {
        return Err(Rejection::new(
            RejectCode::TooOld,
            format!(
                "event time of {} is older than the hub's late-data horizon of {} h",
                field_name(ctx, metric),
                ctx.limits.late_horizon_ms / 3_600_000
            ),
        ));
    }
    if !obs.value.is_finite() {
        return Err(Rejection::malformed(format!(
            "{} is not a finite number; readings must be finite numbers",
            field_name(ctx, metric)
        )));
    }
    let (low, high) = metric.plausible();
    if !(low..=high).contains(&obs.value) {
        if ctx.plausibility == Plausibility::Reject {
            return Err(Rejection::new(
                RejectCode::Implausible,
                format!(
                    "{} is outside the plausible range {low}..{high} {}",
                    field_name(ctx, metric),
                    metric.unit()
                ),
            ));
        }
        obs.flags |= flags::IMPLAUSIBLE;
    }
    Ok(())
}

/// How a reason names a reading without its value: the payload's key and the metric, e.g.
/// "field `hr` (heart_rate)"; the protobuf schema names readings by metric.
fn field_name(ctx: &Context<'_>, metric: Metric) -> String {
    let coded = ctx
        .profile
        .measures
        .iter()
        .flat_map(|m| m.codes.iter().map(|(_, f)| f));
    match ctx
        .profile
        .fields
        .iter()
        .chain(coded)
        .find(|f| f.metric == metric)
    {
        Some(field) => format!("field `{}` ({metric})", field.key),
        None => format!("reading {metric}"),
    }
}

/// A canonical observation of this context's device, before the checks.
fn observation(ctx: &Context<'_>, metric: Metric, value: f64, time_ms: i64) -> Observation {
    observation_of(ctx, ctx.device, metric, value, time_ms)
}

/// A canonical observation of `device` (the context's, or one its message names).
fn observation_of(
    ctx: &Context<'_>,
    device: &DeviceEntry,
    metric: Metric,
    value: f64,
    time_ms: i64,
) -> Observation {
    Observation {
        citizen: device.citizen.clone(),
        device: device.id.clone(),
        metric,
        value,
        time_ms,
        received_ms: ctx.received_ms,
        seq: 0,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kenko_config::DeviceKind;
    use kenko_devices::{Profiles, SleepStage};

    fn device(tz: Option<&str>) -> DeviceEntry {
        DeviceEntry {
            id: Arc::from("bed-001"),
            kind: DeviceKind::Bed,
            citizen: Arc::from("citizen-001"),
            profile: Arc::from("bed-json-v1"),
            timezone: tz.map(Arc::from),
            gateway: None,
        }
    }

    const NOW: i64 = 1_764_050_000_000; // 2025-11-25T05:53:20Z

    fn run(
        dev: &DeviceEntry,
        payload: &str,
        plaus: Plausibility,
    ) -> Result<Vec<Observation>, Rejection> {
        let zones = Zones::resolve("Asia/Tokyo", [dev]).expect("zones");
        let profiles = Profiles::builtin();
        let ctx = Context {
            device: dev,
            devices: &NoOthers,
            profile: profiles.get(&dev.profile).expect("profile"),
            zones: &zones,
            received_ms: NOW,
            plausibility: plaus,
            limits: TimeLimits::default(),
            derived: false,
        };
        let mut out = vec![];
        decode(&ctx, payload.as_bytes(), &mut out).map(|()| out)
    }

    fn values(obs: &[Observation]) -> Vec<(Metric, f64)> {
        obs.iter().map(|o| (o.metric, o.value)).collect()
    }

    fn run_derived(
        time_ms: i64,
        readings: &[(Metric, f64)],
    ) -> Result<Vec<Observation>, Rejection> {
        let dev = device(None);
        let zones = Zones::resolve("Asia/Tokyo", [&dev]).expect("zones");
        let profiles = Profiles::builtin();
        let ctx = Context {
            device: &dev,
            devices: &NoOthers,
            profile: profiles.get("kenko-pb-v1").expect("profile"),
            zones: &zones,
            received_ms: NOW,
            plausibility: Plausibility::Reject,
            limits: TimeLimits::default(),
            derived: true,
        };
        let mut out = vec![Observation {
            citizen: Arc::from("someone-else"),
            ..observation(&ctx, Metric::HeartRate, 60.0, NOW)
        }];
        let result = derived(&ctx, time_ms, readings, &mut out);
        assert_eq!(&*out[0].citizen, "someone-else", "what was there stays");
        result.map(|()| out.split_off(1))
    }

    #[test]
    fn computed_readings_become_the_devices_observations_and_pass_the_same_checks() {
        let week_ago = NOW - 7 * 86_400_000;
        let readings = [(Metric::SleepTime, 412.0), (Metric::SleepAwakenings, 3.0)];
        let obs = run_derived(week_ago, &readings).expect("accepted");
        assert_eq!(
            values(&obs),
            readings,
            "older than the late horizon, but derived"
        );
        assert!(obs
            .iter()
            .all(|o| &*o.citizen == "citizen-001" && &*o.device == "bed-001"));
        assert!(obs
            .iter()
            .all(|o| o.time_ms == week_ago && o.received_ms == NOW));

        let implausible = run_derived(
            week_ago,
            &[(Metric::SleepTime, 412.0), (Metric::SleepTime, -5.0)],
        );
        let rejection = implausible.expect_err("a negative sleep time");
        assert_eq!(rejection.code, RejectCode::Implausible);
        let future = run_derived(NOW + 86_400_000, &readings).expect_err("a day ahead");
        assert_eq!(future.code, RejectCode::FutureTimestamp);
        let none = run_derived(week_ago, &[]).expect_err("nothing to store");
        assert_eq!(none.code, RejectCode::MalformedPayload);
    }

    #[test]
    fn full_message_normalizes_every_metric() {
        let dev = device(None);
        let obs = run(&dev, r#"{"ts":1764049990000,"seq":7,"occ":true,"hr":58.4,"rr":13.5,"mv":2,"stage":"deep","fw":"1.2"}"#, Plausibility::Flag).expect("ok");
        assert_eq!(
            values(&obs),
            vec![
                (Metric::BedOccupancy, 1.0),
                (Metric::HeartRate, 58.4),
                (Metric::RespiratoryRate, 13.5),
                (Metric::BodyMovement, 2.0),
                (Metric::SleepStage, SleepStage::Deep.code()),
            ]
        );
        assert!(obs
            .iter()
            .all(|o| o.time_ms == 1_764_049_990_000 && o.seq == 7 && o.flags == 0));
        assert!(obs
            .iter()
            .all(|o| &*o.citizen == "citizen-001" && o.received_ms == NOW));
    }

    #[test]
    fn offset_and_local_times_become_utc() {
        let dev = device(None);
        let with_offset = run(
            &dev,
            r#"{"ts":"2025-11-25T14:30:00+09:00","occ":false}"#,
            Plausibility::Flag,
        )
        .expect("ok");
        let local = run(
            &dev,
            r#"{"ts":"2025-11-25T14:30:00","occ":false}"#,
            Plausibility::Flag,
        )
        .expect("ok");
        let utc: jiff::Timestamp = "2025-11-25T05:30:00Z".parse().expect("ts");
        assert_eq!(with_offset[0].time_ms, utc.as_millisecond());
        assert_eq!(
            local[0].time_ms,
            utc.as_millisecond(),
            "no offset means the device's zone (JST)"
        );
        let utc_device = device(Some("UTC"));
        let local_utc = run(
            &utc_device,
            r#"{"ts":"2025-11-25T05:30:00","occ":false}"#,
            Plausibility::Flag,
        )
        .expect("ok");
        assert_eq!(local_utc[0].time_ms, utc.as_millisecond());
    }

    #[test]
    fn implausible_values_are_flagged_or_rejected() {
        let dev = device(None);
        let flagged =
            run(&dev, r#"{"ts":1764049990000,"hr":400}"#, Plausibility::Flag).expect("flag");
        assert_eq!(flagged[0].flags, flags::IMPLAUSIBLE);
        let rejected = run(
            &dev,
            r#"{"ts":1764049990000,"occ":true,"hr":400}"#,
            Plausibility::Reject,
        )
        .expect_err("reject");
        assert_eq!(rejected.code, RejectCode::Implausible);
        assert_eq!(
            rejected.message,
            "field `hr` (heart_rate) is outside the plausible range 20..250 /min"
        );
    }

    #[test]
    fn reasons_name_the_field_and_never_the_value() {
        let dev = device(None);
        let cases = [
            (r#"{"ts":1764049990000,"hr":"fast-4711"}"#, "fast-4711"),
            (
                r#"{"ts":1764049990000,"stage":"dreaming-4711"}"#,
                "dreaming-4711",
            ),
            (r#"{"ts":1764049990000,"stage":4711}"#, "4711"),
            (r#"{"ts":1764049990000,"occ":4711.5}"#, "4711"),
            (r#"{"ts":"4711-yesterday","hr":60}"#, "4711"),
            (r#"{"ts":1764049990000.4711,"hr":60}"#, "4711"),
            (r#"{"ts":1764049990000,"seq":-4711,"hr":60}"#, "4711"),
            (r#"4711.25"#, "4711"),
            (r#"{"ts":1764049990000,"hr":471.1}"#, "471"),
        ];
        for (payload, value) in cases {
            let err = run(&dev, payload, Plausibility::Reject).expect_err(payload);
            assert!(!err.message.contains(value), "{payload}: {}", err.message);
        }
        let err =
            run(&dev, r#"{"ts":1764049990000,"hr":"x"}"#, Plausibility::Flag).expect_err("string");
        assert!(err.message.contains("field hr"), "{}", err.message);
    }

    #[test]
    fn malformed_payloads_say_what_is_wrong() {
        let dev = device(None);
        let cases = [
            ("not json", "not bed-json-v1"),
            ("[1,2]", "not bed-json-v1"),
            (r#"{"hr":60}"#, "ts (the event time) is missing"),
            (r#"{"ts":1764049990,"hr":60}"#, "not seconds"),
            (r#"{"ts":"yesterday","hr":60}"#, "or RFC 3339"),
            (r#"{"ts":1764049990000}"#, "no readings"),
            (
                r#"{"ts":1764049990000,"stage":"dreaming"}"#,
                "one of awake, light",
            ),
            (r#"{"ts":1764049990000,"hr":"fast"}"#, "not bed-json-v1"),
        ];
        for (payload, needle) in cases {
            let err = run(&dev, payload, Plausibility::Flag).expect_err(payload);
            assert_eq!(err.code, RejectCode::MalformedPayload, "{payload}");
            assert!(err.message.contains(needle), "{payload}: {}", err.message);
        }
    }

    #[test]
    fn future_timestamps_are_refused() {
        let dev = device(None);
        let err = run(
            &dev,
            &format!(r#"{{"ts":{},"hr":60}}"#, NOW + 3_600_000),
            Plausibility::Flag,
        )
        .expect_err("future");
        assert_eq!(err.code, RejectCode::FutureTimestamp);
    }

    #[test]
    fn a_rejection_appends_nothing() {
        let dev = device(None);
        let zones = Zones::resolve("Asia/Tokyo", [&dev]).expect("zones");
        let profiles = Profiles::builtin();
        let ctx = Context {
            device: &dev,
            devices: &NoOthers,
            profile: profiles.get("bed-json-v1").expect("profile"),
            zones: &zones,
            received_ms: NOW,
            plausibility: Plausibility::Flag,
            limits: TimeLimits::default(),
            derived: false,
        };
        let mut out = vec![];
        let bad = br#"{"ts":1764049990000,"occ":true,"hr":60,"stage":"x"}"#;
        assert!(decode(&ctx, bad, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn unknown_zone_is_found_at_start() {
        let dev = device(Some("Mars/Olympus"));
        let err = Zones::resolve("Asia/Tokyo", [&dev]).expect_err("unknown");
        assert!(err.to_string().contains("Mars/Olympus"));
    }
}
