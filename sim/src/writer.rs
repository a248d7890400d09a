//! Payloads as each vendor writes them: samples in canonical units turned into the JSON a
//! [`Profile`] describes (its field names, its units, its time format, its sequence and batch
//! fields), or into `kenko.telemetry.v1.Telemetry` for the protobuf profile. The exact inverse
//! of what the hub's decoder reads with the same profile (config/profiles.toml).

use jiff::tz::{self, TimeZone};
use jiff::Timestamp;
use kenko_config::{PayloadFormat, TimeFormat};
use kenko_proto::telemetry;
use prost::Message as _;
use serde_json::{Map, Value};

use super::model::Sample;
use kenko_devices::catalogue::{Metric, SleepStage};
use kenko_devices::profile::{Field, Profile};

/// The samples cannot be written with this profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("no samples to write")]
    Empty,
    #[error(
        "profile {profile} sends one sample per message, not {count}; it has no `samples` field"
    )]
    NotBatched { profile: String, count: usize },
}

/// Whether a message of `profile` can carry several samples: JSON profiles with a `samples`
/// field, and the protobuf schema.
pub fn is_batching(profile: &Profile) -> bool {
    profile.samples.is_some() || profile.format == PayloadFormat::Protobuf
}

/// Whether `profile` has a place for `metric` (protobuf carries every metric).
pub fn carries(profile: &Profile, metric: Metric) -> bool {
    profile.format == PayloadFormat::Protobuf || profile.field_for(metric).is_some()
}

/// One message of `profile` carrying `samples` with message counter `seq`. A reading whose
/// metric the profile has no field for is left out; a batching profile puts even one sample
/// under its `samples` field.
pub fn write(profile: &Profile, seq: u64, samples: &[Sample]) -> Result<Vec<u8>, WriteError> {
    match profile.format {
        PayloadFormat::Json => Ok(json(profile, seq, samples)?.to_string().into_bytes()),
        PayloadFormat::Protobuf => protobuf(seq, samples),
    }
}

/// The JSON of [`write`], as a value (faults edit it before it is sent).
pub fn json(profile: &Profile, seq: u64, samples: &[Sample]) -> Result<Value, WriteError> {
    if samples.is_empty() {
        return Err(WriteError::Empty);
    }
    let mut top = Map::new();
    match &profile.samples {
        Some(key) => {
            if let Some(seq_key) = &profile.seq {
                top.insert(seq_key.to_string(), seq.into());
            }
            let batch = samples
                .iter()
                .map(|s| Value::Object(sample_object(profile, s)))
                .collect();
            top.insert(key.to_string(), Value::Array(batch));
        }
        None => {
            let [sample] = samples else {
                return Err(WriteError::NotBatched {
                    profile: profile.name.to_string(),
                    count: samples.len(),
                });
            };
            top.insert(
                profile.time.to_string(),
                time(profile.time_format, sample.at),
            );
            if let Some(seq_key) = &profile.seq {
                top.insert(seq_key.to_string(), seq.into());
            }
            top.extend(sample_object(profile, sample));
        }
    }
    Ok(Value::Object(top))
}

/// `kenko.telemetry.v1.Telemetry`: readings in canonical units named by metric, event times
/// in epoch milliseconds.
pub fn protobuf(seq: u64, samples: &[Sample]) -> Result<Vec<u8>, WriteError> {
    if samples.is_empty() {
        return Err(WriteError::Empty);
    }
    let message = telemetry::Telemetry {
        seq,
        samples: samples
            .iter()
            .map(|s| telemetry::Sample {
                time_ms: s.at.as_millisecond(),
                readings: s
                    .readings
                    .iter()
                    .map(|&(metric, value)| telemetry::Reading {
                        metric: metric.name().to_owned(),
                        value: canonical(metric, value),
                    })
                    .collect(),
            })
            .collect(),
    };
    Ok(message.encode_to_vec())
}

/// One sample's time and readings as the profile names them.
fn sample_object(profile: &Profile, sample: &Sample) -> Map<String, Value> {
    let mut object = Map::new();
    if profile.samples.is_some() {
        object.insert(
            profile.time.to_string(),
            time(profile.time_format, sample.at),
        );
    }
    for &(metric, value) in &sample.readings {
        if let Some(field) = profile.field_for(metric) {
            object.insert(field.key.to_string(), reading(field, value));
        }
    }
    object
}

/// An event time in `format`. Milliseconds are kept (as a fraction of a second where the
/// format counts seconds) so that two samples never share a time.
pub fn time(format: TimeFormat, at: Timestamp) -> Value {
    let ms = at.as_millisecond();
    match format {
        TimeFormat::Auto | TimeFormat::EpochMs => ms.into(),
        TimeFormat::EpochS if ms % 1000 == 0 => (ms / 1000).into(),
        TimeFormat::EpochS => (ms as f64 / 1000.0).into(),
        TimeFormat::Rfc3339 => jst_text(at, true).into(),
        TimeFormat::Local => jst_text(at, false).into(),
        // The simulators write the built-in profiles, none of which splits date and time.
        TimeFormat::TimeOfDay => jst_text(at, false)
            .split_once('T')
            .map_or_else(String::new, |(_, time)| time.to_owned())
            .into(),
    }
}

/// JST wall-clock time, `2026-11-25T23:10:00` (with `.250` when there are milliseconds), and
/// `+09:00` when `offset`.
fn jst_text(at: Timestamp, offset: bool) -> String {
    // Asia/Tokyo has been UTC+9 without daylight saving time since 1951.
    let zoned = at.to_zoned(TimeZone::fixed(tz::offset(9)));
    let mut text = zoned.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let ms = at.as_millisecond().rem_euclid(1000);
    if ms != 0 {
        text.push_str(&format!(".{ms:03}"));
    }
    if offset {
        text.push_str("+09:00");
    }
    text
}

/// A canonical value as the field writes it: in the field's unit, rounded to what such a
/// device shows; occupancy as true/false, a sleep stage by name, counts as integers.
pub fn reading(field: &Field, value: f64) -> Value {
    match field.metric {
        Metric::BedOccupancy => Value::Bool(value != 0.0),
        Metric::SleepStage => {
            SleepStage::from_code(value).map_or_else(|| number(value), |s| Value::from(s.name()))
        }
        Metric::Steps | Metric::BodyMovement => {
            Value::from(field.conversion.invert(value).round() as i64)
        }
        _ => number(round(field.conversion.invert(value), decimals(&field.unit))),
    }
}

/// A canonical value rounded as [`reading`] does for a field in the canonical unit.
fn canonical(metric: Metric, value: f64) -> f64 {
    match metric {
        Metric::BedOccupancy | Metric::SleepStage => value,
        Metric::Steps | Metric::BodyMovement => value.round(),
        _ => round(value, decimals(metric.unit())),
    }
}

/// Decimals a device shows in `unit`: enough that converting back to the canonical unit
/// loses less than the measurement's own precision.
fn decimals(unit: &str) -> i32 {
    match unit {
        "mg/dL" | "mm[Hg]" | "g" | "{steps}" => 0,
        "kPa" => 2,
        "1" => 3,
        _ => 1,
    }
}

fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests;
