//! JSON payloads read through a profile, in one pass over the bytes: keys are matched against
//! the profile's fields without building a document tree or allocating, and each reading is
//! converted to its metric's canonical unit as it is read.

use std::fmt;

use jiff::tz::TimeZone;
use kenko_config::TimeFormat;
use kenko_devices::profile::Field;
use kenko_devices::{Metric, Profile, SleepStage};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{observation, Context, Rejection};
use crate::observation::Observation;

/// Event time not given (yet): filled from the message's top-level time at the end.
pub(super) const NO_TIME: i64 = i64::MIN;

pub(super) fn decode(
    ctx: &Context<'_>,
    payload: &[u8],
    out: &mut Vec<Observation>,
) -> Result<(), Rejection> {
    let start = out.len();
    let zone = ctx.zones.for_device(ctx.device);
    let mut de = serde_json::Deserializer::from_slice(payload);
    let top = de
        .deserialize_map(ObjectVisitor {
            ctx,
            zone: &zone,
            out: &mut *out,
            top: true,
        })
        .and_then(|top| de.end().map(|()| top))
        .map_err(|e| unreadable(ctx.profile, &e))?;
    for obs in &mut out[start..] {
        if obs.time_ms == NO_TIME {
            obs.time_ms = top.time.ok_or_else(|| no_time(ctx.profile))?;
        }
        obs.seq = top.seq.unwrap_or(0);
    }
    Ok(())
}

/// A message none of whose times reached a reading.
pub(super) fn no_time(profile: &Profile) -> Rejection {
    Rejection::malformed(format!(
        "field {} (the event time) is missing{}",
        profile.time,
        match profile.samples {
            Some(ref samples) => format!(" at the top level and in a sample of {samples}"),
            None => String::new(),
        }
    ))
}

/// A value of the payload the profile cannot read, told without the payload's values.
pub(super) fn unreadable(profile: &Profile, e: &serde_json::Error) -> Rejection {
    Rejection::malformed(format!(
        "payload is not {}: {}",
        profile.name,
        super::redact::without_values(&e.to_string())
    ))
}

/// What the top level of a message said besides its readings.
struct Top {
    time: Option<i64>,
    seq: Option<u64>,
}

/// Which of the profile's keys a JSON key is.
enum Key<'p> {
    Time,
    Seq,
    Samples,
    Field(&'p Field),
    Other,
}

struct KeySeed<'p> {
    profile: &'p Profile,
}

impl<'de, 'p> DeserializeSeed<'de> for KeySeed<'p> {
    type Value = Key<'p>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key<'p>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'p> Visitor<'de> for KeySeed<'p> {
    type Value = Key<'p>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'p>, E> {
        let p = self.profile;
        Ok(if key == &*p.time {
            Key::Time
        } else if p.seq.as_deref() == Some(key) {
            Key::Seq
        } else if p.samples.as_deref() == Some(key) {
            Key::Samples
        } else if let Some(field) = p.field(key) {
            Key::Field(field)
        } else {
            Key::Other
        })
    }
}

/// A message object (`top`) or one sample object of its batch.
struct ObjectVisitor<'c, 'a, 'o> {
    ctx: &'c Context<'a>,
    zone: &'c TimeZone,
    out: &'o mut Vec<Observation>,
    top: bool,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_, '_, '_> {
    type Value = Top;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.top {
            "a JSON object"
        } else {
            "a sample object"
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let start = self.out.len();
        let profile = self.ctx.profile;
        let mut time = None;
        let mut seq = None;
        while let Some(key) = map.next_key_seed(KeySeed { profile })? {
            match key {
                Key::Time => {
                    time = Some(map.next_value_seed(TimeSeed {
                        format: profile.time_format,
                        key: &profile.time,
                        zone: self.zone,
                    })?)
                }
                Key::Seq if self.top => seq = Some(map.next_value_seed(SeqSeed)?),
                Key::Samples if self.top => map.next_value_seed(SamplesSeed {
                    ctx: self.ctx,
                    zone: self.zone,
                    out: &mut *self.out,
                })?,
                Key::Field(field) => {
                    if let Some(value) = map.next_value_seed(ReadingSeed { field })? {
                        self.out
                            .push(observation(self.ctx, field.metric, value, NO_TIME));
                    }
                }
                Key::Seq | Key::Samples | Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // A sample's own time wins; the top level's fills the rest at the end.
        if !self.top {
            if let Some(time) = time {
                for obs in &mut self.out[start..] {
                    obs.time_ms = time;
                }
            }
        } else if let Some(time) = time {
            for obs in &mut self.out[start..] {
                if obs.time_ms == NO_TIME {
                    obs.time_ms = time;
                }
            }
        }
        Ok(Top { time, seq })
    }
}

struct SamplesSeed<'c, 'a, 'o> {
    ctx: &'c Context<'a>,
    zone: &'c TimeZone,
    out: &'o mut Vec<Observation>,
}

impl<'de> DeserializeSeed<'de> for SamplesSeed<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for SamplesSeed<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "an array of sample objects in {}",
            self.ctx.profile.samples.as_deref().unwrap_or("samples")
        )
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(SampleSeed {
                ctx: self.ctx,
                zone: self.zone,
                out: &mut *self.out,
            })?
            .is_some()
        {}
        Ok(())
    }
}

struct SampleSeed<'c, 'a, 'o> {
    ctx: &'c Context<'a>,
    zone: &'c TimeZone,
    out: &'o mut Vec<Observation>,
}

impl<'de> DeserializeSeed<'de> for SampleSeed<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(ObjectVisitor {
            ctx: self.ctx,
            zone: self.zone,
            out: self.out,
            top: false,
        })
        .map(|_| ())
    }
}

pub(super) struct SeqSeed;

impl<'de> DeserializeSeed<'de> for SeqSeed {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_u64(self)
    }
}

impl Visitor<'_> for SeqSeed {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message counter (a whole number from 0)")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
}

/// One reading, converted to its metric's canonical unit; `None` for `null` (the device had
/// no reading, e.g. no pulse on an empty bed).
pub(super) struct ReadingSeed<'p> {
    pub(super) field: &'p Field,
}

impl<'de> DeserializeSeed<'de> for ReadingSeed<'_> {
    type Value = Option<f64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<f64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl ReadingSeed<'_> {
    fn number<E: de::Error>(&self, raw: f64) -> Result<Option<f64>, E> {
        let metric = self.field.metric;
        if metric == Metric::SleepStage && SleepStage::from_code(raw).is_none() {
            return Err(E::custom(format_args!(
                "field `{}` is not a sleep stage; a sleep stage is one of awake, light, deep, rem (or codes 0–3)",
                self.field.key
            )));
        }
        Ok(Some(self.field.conversion.apply(raw)))
    }
}

impl<'de> Visitor<'de> for ReadingSeed<'_> {
    type Value = Option<f64>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field.metric {
            Metric::SleepStage => write!(
                f,
                "field {} to be one of awake, light, deep, rem",
                self.field.key
            ),
            Metric::BedOccupancy => write!(f, "field {} to be true or false", self.field.key),
            m => write!(
                f,
                "field {} to be a number ({m} in {})",
                self.field.key, self.field.unit
            ),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<f64>, E> {
        self.number(v as f64)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<f64>, E> {
        self.number(v as f64)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Option<f64>, E> {
        self.number(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Option<f64>, E> {
        if self.field.metric.unit() != "{bool}" {
            return Err(E::invalid_type(de::Unexpected::Bool(v), &self));
        }
        Ok(Some(if v { 1.0 } else { 0.0 }))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<f64>, E> {
        if self.field.metric != Metric::SleepStage {
            return Err(E::invalid_type(de::Unexpected::Str(v), &self));
        }
        SleepStage::from_name(v)
            .map(|s| Some(s.code()))
            .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<f64>, E> {
        Ok(None)
    }
}

/// The event time in the profile's format, as epoch milliseconds.
pub(super) struct TimeSeed<'p> {
    pub(super) format: TimeFormat,
    pub(super) key: &'p str,
    pub(super) zone: &'p TimeZone,
}

impl<'de> DeserializeSeed<'de> for TimeSeed<'_> {
    type Value = i64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_any(self)
    }
}

impl TimeSeed<'_> {
    fn millis<E: de::Error>(&self, v: f64, exact: bool) -> Result<i64, E> {
        let ms = match self.format {
            TimeFormat::EpochS => v * 1000.0,
            TimeFormat::Auto | TimeFormat::EpochMs => v,
            TimeFormat::Rfc3339 | TimeFormat::Local | TimeFormat::TimeOfDay => {
                return Err(E::invalid_type(de::Unexpected::Float(v), self))
            }
        };
        let whole = ms.round();
        if !ms.is_finite()
            || ms.abs() > 9.0e15
            || (!exact && self.format != TimeFormat::EpochS && whole != ms)
        {
            return Err(E::custom(format_args!(
                "field `{}` (the event time) is out of range or not whole; expected {}",
                self.key,
                Expecting(self.format)
            )));
        }
        // Exact: a whole number well inside i64's range.
        Ok(whole as i64)
    }
}

impl<'de> Visitor<'de> for TimeSeed<'_> {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field {} to be {}", self.key, Expecting(self.format))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        match (self.format, i64::try_from(v)) {
            (TimeFormat::Auto | TimeFormat::EpochMs, Ok(ms)) => Ok(ms),
            _ => self.millis(v as f64, true),
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        match self.format {
            TimeFormat::Auto | TimeFormat::EpochMs => Ok(v),
            _ => self.millis(v as f64, true),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        self.millis(v, false)
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<i64, E> {
        let bad = || {
            E::custom(format_args!(
                "field `{}` (the event time) is not a time; expected {}",
                self.key,
                Expecting(self.format)
            ))
        };
        let with_offset = || text.parse::<jiff::Timestamp>().ok();
        let local = || {
            let civil: jiff::civil::DateTime = text.parse().ok()?;
            civil.to_zoned(self.zone.clone()).ok()
        };
        match self.format {
            // Read with its date by the document reader.
            TimeFormat::EpochMs | TimeFormat::EpochS | TimeFormat::TimeOfDay => Err(bad()),
            TimeFormat::Rfc3339 => with_offset().map(|t| t.as_millisecond()).ok_or_else(bad),
            TimeFormat::Local | TimeFormat::Auto => with_offset()
                .map(|t| t.as_millisecond())
                .or_else(|| local().map(|z| z.timestamp().as_millisecond()))
                .ok_or_else(bad),
        }
    }
}

struct Expecting(TimeFormat);

impl fmt::Display for Expecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            TimeFormat::Auto => "epoch milliseconds or RFC 3339 such as 2026-11-25T23:10:00+09:00",
            TimeFormat::EpochMs => "whole epoch milliseconds such as 1764050000000",
            TimeFormat::EpochS => "epoch seconds such as 1764050000",
            TimeFormat::Rfc3339 => "RFC 3339 with an offset such as 2026-11-25T23:10:00+09:00",
            TimeFormat::Local => "a local time such as 2026-11-25T23:10:00 (the device's zone)",
            TimeFormat::TimeOfDay => "a time of day such as 23:59:00 (the device's zone)",
        })
    }
}
