//! Faulty messages, injected on purpose (`kenko simulate --faults RATE`), each of a kind the
//! hub refuses with a known reason code, so a test can check that every one was dead-lettered
//! for the right reason and nothing else was.

use std::fmt;

use jiff::{SignedDuration, Timestamp};
use kenko_config::PayloadFormat;
use kenko_proto::telemetry;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message as _;
use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::Value;

use super::model::Sample;
use super::writer;
use kenko_devices::catalogue::Metric;
use kenko_devices::profile::Profile;

/// Why the hub will refuse an injected fault: its dead-letter reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultReason {
    /// `malformed_payload`: not JSON (or not protobuf), truncated, a reading of the wrong type,
    /// no event time, or a sleep stage that is not awake, light, deep or rem.
    MalformedPayload,
    /// `implausible_value`: a reading outside its metric's plausible range (refused when the
    /// hub's plausibility setting is `reject`, flagged otherwise).
    ImplausibleValue,
    /// `future_timestamp`: an event time more than an hour ahead of the sender's clock.
    FutureTimestamp,
    /// `too_old`: an event time more than eight days back, past the hub's seven-day horizon.
    TooOld,
}

impl FaultReason {
    pub const ALL: [FaultReason; 4] = [
        FaultReason::MalformedPayload,
        FaultReason::ImplausibleValue,
        FaultReason::FutureTimestamp,
        FaultReason::TooOld,
    ];

    /// The hub's reason code.
    pub fn code(self) -> &'static str {
        match self {
            FaultReason::MalformedPayload => "malformed_payload",
            FaultReason::ImplausibleValue => "implausible_value",
            FaultReason::FutureTimestamp => "future_timestamp",
            FaultReason::TooOld => "too_old",
        }
    }
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One fault a device sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFault {
    pub device: String,
    /// The device's message counter for this message (each fault has its own). Profiles
    /// without a sequence field, and payloads too broken to read, do not show it to the hub.
    pub seq: u64,
    pub reason: FaultReason,
    pub payload: Vec<u8>,
}

impl InjectedFault {
    /// `DEVICE SEQ REASON`, as `kenko simulate --faults-log` writes it.
    pub fn log_line(&self) -> String {
        format!("{} {} {}", self.device, self.seq, self.reason)
    }
}

/// The ways a payload can be malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformed {
    NotParsable,
    Truncated,
    WrongType,
    NoTime,
    BadStage,
}

/// A faulty message of `profile` with counter `seq`, made from `sample` (the readings the
/// device had in hand) and failing for `reason`. `now` is the device's clock.
pub(crate) fn payload(
    profile: &Profile,
    seq: u64,
    sample: &Sample,
    reason: FaultReason,
    now: Timestamp,
    rng: &mut SmallRng,
) -> Vec<u8> {
    let mut sample = sample.clone();
    match reason {
        FaultReason::MalformedPayload => return malformed(profile, seq, &sample, rng),
        FaultReason::ImplausibleValue => {
            implausible(profile, &mut sample, rng);
            // A millisecond before the good sample, which the device still sends: where
            // implausible values are only flagged, the two must not be one observation.
            sample.at -= SignedDuration::from_millis(1);
        }
        FaultReason::FutureTimestamp => {
            sample.at = now + SignedDuration::from_mins(rng.random_range(61..=360));
        }
        FaultReason::TooOld => {
            let back = 8 * 24 * 60 + rng.random_range(60..=3 * 24 * 60);
            sample.at = now - SignedDuration::from_mins(back);
        }
    }
    writer::write(profile, seq, std::slice::from_ref(&sample)).unwrap_or_else(|_| not_parsable(seq))
}

/// Replaces (or adds) one numeric reading the profile carries with a value well outside its
/// plausible range: far above it, or at half its lower bound.
fn implausible(profile: &Profile, sample: &mut Sample, rng: &mut SmallRng) {
    let numeric = |m: &Metric| !matches!(m, Metric::BedOccupancy | Metric::SleepStage);
    let present: Vec<Metric> = sample
        .readings
        .iter()
        .map(|&(m, _)| m)
        .filter(|m| numeric(m) && writer::carries(profile, *m))
        .collect();
    let metric = if present.is_empty() {
        // An empty bed has no vitals: a heart rate appears out of nowhere.
        let fields: Vec<Metric> = profile
            .fields
            .iter()
            .map(|f| f.metric)
            .filter(numeric)
            .collect();
        fields
            .get(rng.random_range(0..fields.len().max(1)))
            .copied()
    } else {
        Some(present[rng.random_range(0..present.len())])
    };
    let metric = metric.unwrap_or(Metric::HeartRate);
    let (low, high) = metric.plausible();
    let value = if low > 0.0 && rng.random_bool(0.5) {
        low / 2.0
    } else {
        high + (high - low) / 4.0
    };
    sample.readings.retain(|&(m, _)| m != metric);
    sample.readings.push((metric, value));
}

fn malformed(profile: &Profile, seq: u64, sample: &Sample, rng: &mut SmallRng) -> Vec<u8> {
    let protobuf = profile.format == PayloadFormat::Protobuf;
    let mut ways = vec![
        Malformed::NotParsable,
        Malformed::Truncated,
        Malformed::WrongType,
    ];
    if !protobuf {
        // Protobuf has no "missing" time: a zero time would be refused as too old instead.
        ways.push(Malformed::NoTime);
        if profile.field_for(Metric::SleepStage).is_some() {
            ways.push(Malformed::BadStage);
        }
    }
    let way = ways[rng.random_range(0..ways.len())];
    let samples = std::slice::from_ref(sample);
    if protobuf {
        return match way {
            Malformed::Truncated => truncated_protobuf(seq, sample),
            Malformed::WrongType => wrong_wire_type(seq, sample),
            _ => not_parsable(seq),
        };
    }
    let Ok(mut value) = writer::json(profile, seq, samples) else {
        return not_parsable(seq);
    };
    match way {
        Malformed::NotParsable => not_parsable(seq),
        Malformed::Truncated => {
            let text = value.to_string().into_bytes();
            // Any strict prefix of a JSON object is unfinished, hence invalid.
            let cut = (text.len() * 2 / 3).max(1);
            text[..cut].to_vec()
        }
        Malformed::WrongType => {
            let numeric: Vec<&str> = profile
                .fields
                .iter()
                .filter(|f| !matches!(f.metric, Metric::BedOccupancy | Metric::SleepStage))
                .map(|f| &*f.key)
                .collect();
            let Some(&key) = numeric.get(rng.random_range(0..numeric.len().max(1))) else {
                return not_parsable(seq);
            };
            // What a device's display shows when the sensor failed: text, not a number.
            for object in sample_objects(profile, &mut value) {
                object.insert(key.to_owned(), Value::from("ERR"));
            }
            value.to_string().into_bytes()
        }
        Malformed::NoTime => {
            for object in sample_objects(profile, &mut value) {
                object.remove(&*profile.time);
            }
            if let Value::Object(top) = &mut value {
                top.remove(&*profile.time);
            }
            value.to_string().into_bytes()
        }
        Malformed::BadStage => {
            let stage = ["dreaming", "drowsy", "n/a"][rng.random_range(0..3)];
            if let Some(field) = profile.field_for(Metric::SleepStage) {
                for object in sample_objects(profile, &mut value) {
                    object.insert(field.key.to_string(), Value::from(stage));
                }
            }
            value.to_string().into_bytes()
        }
    }
}

/// The objects that hold a sample's readings: the message itself, or each in its batch.
fn sample_objects<'a>(
    profile: &Profile,
    value: &'a mut Value,
) -> Vec<&'a mut serde_json::Map<String, Value>> {
    let Value::Object(top) = value else {
        return Vec::new();
    };
    match &profile.samples {
        None => vec![top],
        Some(key) => match top.get_mut(&**key) {
            Some(Value::Array(batch)) => {
                batch.iter_mut().filter_map(Value::as_object_mut).collect()
            }
            _ => Vec::new(),
        },
    }
}

/// Neither JSON nor protobuf: a firmware's error line, or bytes that end inside a varint.
fn not_parsable(seq: u64) -> Vec<u8> {
    if seq.is_multiple_of(2) {
        format!("ERR sensor fault #{seq}").into_bytes()
    } else {
        vec![0xff; 4 + (seq % 5) as usize]
    }
}

/// A Telemetry message cut one byte short: the last sample's length then runs past the end.
fn truncated_protobuf(seq: u64, sample: &Sample) -> Vec<u8> {
    let mut bytes = writer::protobuf(seq, std::slice::from_ref(sample)).unwrap_or_default();
    bytes.pop();
    if telemetry::Telemetry::decode(bytes.as_slice()).is_ok() {
        return not_parsable(seq);
    }
    bytes
}

/// A Telemetry message whose reading value is a varint where the schema has a double.
fn wrong_wire_type(seq: u64, sample: &Sample) -> Vec<u8> {
    let (metric, value) = sample
        .readings
        .iter()
        .copied()
        .find(|(m, _)| *m != Metric::BedOccupancy)
        .unwrap_or((Metric::HeartRate, 60.0));
    let mut reading = Vec::new();
    prost::encoding::string::encode(1, &metric.name().to_owned(), &mut reading);
    encode_key(2, WireType::Varint, &mut reading);
    encode_varint(value.round().max(0.0) as u64, &mut reading);
    let mut one = Vec::new();
    prost::encoding::int64::encode(1, &sample.at.as_millisecond(), &mut one);
    encode_key(2, WireType::LengthDelimited, &mut one);
    encode_varint(reading.len() as u64, &mut one);
    one.extend(reading);
    let mut bytes = Vec::new();
    prost::encoding::uint64::encode(1, &seq, &mut bytes);
    encode_key(2, WireType::LengthDelimited, &mut bytes);
    encode_varint(one.len() as u64, &mut bytes);
    bytes.extend(one);
    bytes
}

#[cfg(test)]
mod tests;
