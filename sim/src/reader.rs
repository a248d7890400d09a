//! Test-only: reads a payload back with its profile, the way config/profiles.toml says the hub
//! does, so the writer and the faults can be checked without the hub.

use jiff::tz::{self, TimeZone};
use jiff::Timestamp;
use kenko_config::{PayloadFormat, TimeFormat};
use kenko_proto::telemetry;
use prost::Message as _;
use serde_json::{Map, Value};

use kenko_devices::catalogue::{Metric, SleepStage};
use kenko_devices::profile::Profile;

/// One sample read back: event time in epoch milliseconds and canonical readings.
pub(crate) type ReadSample = (i64, Vec<(Metric, f64)>);

/// The samples of `payload`, or why the hub would call it malformed.
pub(crate) fn read(profile: &Profile, payload: &[u8]) -> Result<Vec<ReadSample>, String> {
    if profile.format == PayloadFormat::Protobuf {
        let message = telemetry::Telemetry::decode(payload).map_err(|e| e.to_string())?;
        return message
            .samples
            .iter()
            .map(|s| {
                let readings = s
                    .readings
                    .iter()
                    .map(|r| {
                        Ok((
                            r.metric.parse::<Metric>().map_err(|e| e.to_string())?,
                            r.value,
                        ))
                    })
                    .collect::<Result<_, String>>()?;
                Ok((s.time_ms, readings))
            })
            .collect();
    }
    let value: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let top = value.as_object().ok_or("not an object")?;
    let objects: Vec<&Map<String, Value>> = match &profile.samples {
        Some(key) => top
            .get(&**key)
            .and_then(Value::as_array)
            .ok_or("no samples array")?
            .iter()
            .map(|s| s.as_object().ok_or("a sample is not an object"))
            .collect::<Result<_, _>>()?,
        None => vec![top],
    };
    objects.into_iter().map(|o| sample(profile, o)).collect()
}

fn sample(profile: &Profile, o: &Map<String, Value>) -> Result<ReadSample, String> {
    let t = o.get(&*profile.time).ok_or("no time")?;
    let jst = TimeZone::fixed(tz::offset(9));
    let ms = match (profile.time_format, t) {
        (TimeFormat::Auto | TimeFormat::EpochMs, Value::Number(n)) => n.as_i64().ok_or("ms")?,
        (TimeFormat::EpochS, Value::Number(n)) => (n.as_f64().ok_or("s")? * 1000.0).round() as i64,
        (TimeFormat::Auto | TimeFormat::Rfc3339, Value::String(s)) => s
            .parse::<Timestamp>()
            .map_err(|e| e.to_string())?
            .as_millisecond(),
        (TimeFormat::Local, Value::String(s)) => s
            .parse::<jiff::civil::DateTime>()
            .and_then(|d| d.to_zoned(jst))
            .map_err(|e| e.to_string())?
            .timestamp()
            .as_millisecond(),
        _ => return Err(format!("time {t} is not {:?}", profile.time_format)),
    };
    let mut readings = vec![];
    for field in &profile.fields {
        let Some(v) = o.get(&*field.key) else {
            continue;
        };
        let value = match v {
            Value::Bool(b) => f64::from(u8::from(*b)),
            Value::String(s) if field.metric == Metric::SleepStage => SleepStage::from_name(s)
                .ok_or_else(|| format!("stage {s:?}"))?
                .code(),
            Value::Number(n) if field.metric == Metric::SleepStage => n.as_f64().ok_or("stage")?,
            Value::Number(n) => field.conversion.apply(n.as_f64().ok_or("number")?),
            other => return Err(format!("{} is {other}", field.key)),
        };
        readings.push((field.metric, value));
    }
    Ok((ms, readings))
}
