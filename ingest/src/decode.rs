//! Payload decoding and normalization: from a vendor payload to canonical observations.
//!
//! Each profile turns one MQTT payload into zero or more [`Observation`]s, or a [`Rejection`]
//! that says which field was wrong and why, so the device and the operator can fix it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use jiff::tz::TimeZone;
use kenko_config::Plausibility;
use kenko_devices::{DeviceEntry, Metric, SleepStage};
use serde::Deserialize;

use crate::observation::{flags, Observation};

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
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::UnknownDevice => "unknown_device",
            RejectCode::ClientMismatch => "client_mismatch",
            RejectCode::MalformedPayload => "malformed_payload",
            RejectCode::Implausible => "implausible_value",
            RejectCode::FutureTimestamp => "future_timestamp",
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

/// How far ahead of the hub's clock an event time may be (device clocks drift).
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// Earliest event time accepted as epoch milliseconds; smaller numbers are almost certainly
/// epoch seconds sent by mistake.
const MIN_EPOCH_MS: i64 = 946_684_800_000; // 2000-01-01T00:00:00Z

/// Resolved time zones: the hub's default and each device's own.
#[derive(Debug, Clone)]
pub struct Zones {
    default: TimeZone,
    named: HashMap<Arc<str>, TimeZone>,
}

/// A time zone name in the configuration is not known.
#[derive(Debug, thiserror::Error)]
#[error("unknown time zone {name:?}: {source}; use an IANA name such as Asia/Tokyo")]
pub struct UnknownZone {
    pub name: String,
    source: jiff::Error,
}

impl Zones {
    /// Resolves the default zone and every zone the given devices name, so that a typo
    /// is found at start and not at the first message.
    pub fn resolve<'a>(
        default: &str,
        devices: impl IntoIterator<Item = &'a DeviceEntry>,
    ) -> Result<Zones, UnknownZone> {
        let get = |name: &str| {
            TimeZone::get(name).map_err(|source| UnknownZone {
                name: name.to_owned(),
                source,
            })
        };
        let mut named = HashMap::new();
        for device in devices {
            if let Some(name) = &device.timezone {
                if !named.contains_key(name) {
                    named.insert(name.clone(), get(name)?);
                }
            }
        }
        Ok(Zones {
            default: get(default)?,
            named,
        })
    }

    fn for_device(&self, device: &DeviceEntry) -> &TimeZone {
        device
            .timezone
            .as_ref()
            .and_then(|name| self.named.get(name))
            .unwrap_or(&self.default)
    }
}

/// Everything a decoder needs besides the payload.
pub struct Context<'a> {
    pub device: &'a DeviceEntry,
    pub zones: &'a Zones,
    pub received_ms: i64,
    pub plausibility: Plausibility,
}

/// Decodes `payload` with the device's profile and appends the observations to `out`.
/// On rejection nothing is appended.
pub fn decode(
    ctx: &Context<'_>,
    payload: &[u8],
    out: &mut Vec<Observation>,
) -> Result<(), Rejection> {
    let start = out.len();
    let result = match &*ctx.device.profile {
        "bed-json-v1" => bed_json_v1(ctx, payload, out),
        other => Err(Rejection::malformed(format!(
            "device {} has payload profile {other:?}, which this hub cannot decode",
            ctx.device.id
        ))),
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Ts<'a> {
    Millis(i64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
    Float(f64),
}

/// The bed sensor's JSON: `{"ts", "seq", "occ", "hr", "rr", "mv", "stage"}`; see the README.
#[derive(Deserialize)]
struct BedV1<'a> {
    #[serde(borrow)]
    ts: Option<Ts<'a>>,
    seq: Option<u64>,
    occ: Option<bool>,
    hr: Option<f64>,
    rr: Option<f64>,
    mv: Option<f64>,
    #[serde(borrow)]
    stage: Option<Cow<'a, str>>,
}

fn bed_json_v1(
    ctx: &Context<'_>,
    payload: &[u8],
    out: &mut Vec<Observation>,
) -> Result<(), Rejection> {
    let msg: BedV1<'_> = serde_json::from_slice(payload).map_err(|e| {
        Rejection::malformed(format!(
            "payload is not bed-json-v1: {e}; expected a JSON object like {{\"ts\":1764050000000,\"hr\":58,\"rr\":14,\"occ\":true}}"
        ))
    })?;
    let ts = msg.ts.ok_or_else(|| {
        Rejection::malformed(
            "field ts is missing; send the event time as epoch milliseconds or RFC 3339",
        )
    })?;
    let time_ms = event_time(ctx, &ts)?;
    let seq = msg.seq.unwrap_or(0);
    let mut push = |metric: Metric, value: f64| -> Result<(), Rejection> {
        if !value.is_finite() {
            return Err(Rejection::malformed(format!(
                "{} is {value}; readings must be finite numbers",
                metric.name()
            )));
        }
        let (low, high) = metric.plausible();
        let mut obs_flags = 0;
        if !(low..=high).contains(&value) {
            if ctx.plausibility == Plausibility::Reject {
                return Err(Rejection::new(
                    RejectCode::Implausible,
                    format!(
                        "{} = {value} {} is outside the plausible range {low}..{high}",
                        metric.name(),
                        metric.unit()
                    ),
                ));
            }
            obs_flags |= flags::IMPLAUSIBLE;
        }
        out.push(Observation {
            citizen: ctx.device.citizen.clone(),
            device: ctx.device.id.clone(),
            metric,
            value,
            time_ms,
            received_ms: ctx.received_ms,
            seq,
            flags: obs_flags,
        });
        Ok(())
    };
    if let Some(occ) = msg.occ {
        push(Metric::BedOccupancy, if occ { 1.0 } else { 0.0 })?;
    }
    if let Some(hr) = msg.hr {
        push(Metric::HeartRate, hr)?;
    }
    if let Some(rr) = msg.rr {
        push(Metric::RespiratoryRate, rr)?;
    }
    if let Some(mv) = msg.mv {
        push(Metric::BodyMovement, mv)?;
    }
    if let Some(stage) = &msg.stage {
        let stage = SleepStage::from_name(stage).ok_or_else(|| {
            Rejection::malformed(format!(
                "field stage is {stage:?}; expected one of awake, light, deep, rem"
            ))
        })?;
        push(Metric::SleepStage, stage.code())?;
    }
    if msg.occ.is_none()
        && msg.hr.is_none()
        && msg.rr.is_none()
        && msg.mv.is_none()
        && msg.stage.is_none()
    {
        return Err(Rejection::malformed(
            "payload has no readings; expected at least one of occ, hr, rr, mv, stage",
        ));
    }
    Ok(())
}

fn event_time(ctx: &Context<'_>, ts: &Ts<'_>) -> Result<i64, Rejection> {
    let ms = match ts {
        Ts::Millis(ms) => *ms,
        Ts::Float(f) => {
            if !f.is_finite() || f.fract() != 0.0 || f.abs() > 9.0e15 {
                return Err(Rejection::malformed(format!(
                    "field ts is {f}; expected whole epoch milliseconds"
                )));
            }
            // Exact: the value is a whole number well inside i64's range.
            *f as i64
        }
        Ts::Text(text) => parse_text_time(text, ctx.zones.for_device(ctx.device))?,
    };
    if ms < MIN_EPOCH_MS {
        return Err(Rejection::malformed(format!(
            "field ts is {ms}, before the year 2000; send epoch milliseconds, not seconds"
        )));
    }
    if ms > ctx.received_ms + MAX_FUTURE_MS {
        return Err(Rejection::new(
            RejectCode::FutureTimestamp,
            format!(
                "field ts is {} s ahead of the hub's clock; check the device's clock",
                (ms - ctx.received_ms) / 1000
            ),
        ));
    }
    Ok(ms)
}

/// RFC 3339 with an offset is taken as is; a local time without offset is in the device's zone.
fn parse_text_time(text: &str, zone: &TimeZone) -> Result<i64, Rejection> {
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    let civil: jiff::civil::DateTime = text.parse().map_err(|_| {
        Rejection::malformed(format!(
            "field ts is {text:?}; expected RFC 3339 such as 2026-11-25T23:10:00+09:00 or epoch milliseconds"
        ))
    })?;
    let zoned = civil.to_zoned(zone.clone()).map_err(|e| {
        Rejection::malformed(format!("field ts {text:?} is not a valid local time: {e}"))
    })?;
    Ok(zoned.timestamp().as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kenko_config::DeviceKind;

    fn device(tz: Option<&str>) -> DeviceEntry {
        DeviceEntry {
            id: Arc::from("bed-001"),
            kind: DeviceKind::Bed,
            citizen: Arc::from("citizen-001"),
            profile: Arc::from("bed-json-v1"),
            timezone: tz.map(Arc::from),
        }
    }

    const NOW: i64 = 1_764_050_000_000; // 2025-11-25T05:53:20Z

    fn run(
        dev: &DeviceEntry,
        payload: &str,
        plaus: Plausibility,
    ) -> Result<Vec<Observation>, Rejection> {
        let zones = Zones::resolve("Asia/Tokyo", [dev]).expect("zones");
        let ctx = Context {
            device: dev,
            zones: &zones,
            received_ms: NOW,
            plausibility: plaus,
        };
        let mut out = vec![];
        decode(&ctx, payload.as_bytes(), &mut out).map(|()| out)
    }

    fn values(obs: &[Observation]) -> Vec<(Metric, f64)> {
        obs.iter().map(|o| (o.metric, o.value)).collect()
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
        assert!(
            rejected.message.contains("heart_rate"),
            "{}",
            rejected.message
        );
    }

    #[test]
    fn malformed_payloads_say_what_is_wrong() {
        let dev = device(None);
        let cases = [
            ("not json", "not bed-json-v1"),
            ("[1,2]", "not bed-json-v1"),
            (r#"{"hr":60}"#, "ts is missing"),
            (r#"{"ts":1764049990,"hr":60}"#, "not seconds"),
            (r#"{"ts":"yesterday","hr":60}"#, "expected RFC 3339"),
            (r#"{"ts":1764049990000}"#, "no readings"),
            (
                r#"{"ts":1764049990000,"stage":"dreaming"}"#,
                "expected one of awake",
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
        let ctx = Context {
            device: &dev,
            zones: &zones,
            received_ms: NOW,
            plausibility: Plausibility::Flag,
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
