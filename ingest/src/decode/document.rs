//! JSON payloads of profiles that reach into nested objects (JSON Pointers) or read coded
//! measures: the payload is parsed into a document once and the profile's keys are looked
//! up in it. Values go through the same readers as streamed payloads, so units, times and
//! refusals read alike.

use std::cell::Cell;

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use kenko_config::{TimeFormat, UnknownCodes};
use kenko_devices::profile::{Field, Measures, Profile};
use serde::de::DeserializeSeed as _;
use serde_json::Value;

use super::json::{no_time, unreadable, ReadingSeed, SeqSeed, TimeSeed, NO_TIME};
use super::{observation, Context, Rejection};
use crate::observation::Observation;

/// The largest power of ten a measure's exponent may name, either way.
const MAX_EXPONENT: i64 = 30;

pub(super) fn decode(
    ctx: &Context<'_>,
    payload: &[u8],
    out: &mut Vec<Observation>,
) -> Result<(), Rejection> {
    let profile = ctx.profile;
    let document: Value = serde_json::from_slice(payload).map_err(|e| unreadable(profile, &e))?;
    if !document.is_object() {
        return Err(Rejection::malformed(format!(
            "payload is not {}: expected a JSON object",
            profile.name
        )));
    }
    let zone = ctx.zones.for_device(ctx.device);
    let reader = Reader {
        ctx,
        zone: &zone,
        start: out.len(),
        day: day(profile, &document)?,
        clock: Cell::new(None),
    };
    let time = reader.time(&document)?;
    let seq = match profile.seq.as_deref().and_then(|key| find(&document, key)) {
        Some(value) => Some(
            SeqSeed
                .deserialize(value)
                .map_err(|e| unreadable(profile, &e))?,
        ),
        None => None,
    };
    reader.readings(&document, time, out)?;
    if let Some(samples) = profile.samples.as_deref() {
        reader.samples(&document, samples, time, out)?;
    }
    for obs in &mut out[reader.start..] {
        if obs.time_ms == NO_TIME {
            return Err(no_time(profile));
        }
        obs.seq = seq.unwrap_or(0);
    }
    Ok(())
}

/// `key` in `object`: a JSON Pointer into it when it starts with `/`, else one of its keys;
/// `null` counts as absent (no reading, no time).
fn find<'v>(object: &'v Value, key: &str) -> Option<&'v Value> {
    if kenko_config::profile::is_pointer(key) {
        object.pointer(key)
    } else {
        object.get(key)
    }
    .filter(|v| !v.is_null())
}

/// The day the message's times of day are on (`date`), when the profile has one.
fn day(profile: &Profile, document: &Value) -> Result<Option<Date>, Rejection> {
    let Some(key) = profile.date.as_deref() else {
        return Ok(None);
    };
    let Some(value) = find(document, key) else {
        return Ok(None);
    };
    value
        .as_str()
        .and_then(|text| text.parse::<Date>().ok())
        .map(Some)
        .ok_or_else(|| {
            Rejection::malformed(format!(
                "payload is not {}: {key} is not a date such as 2026-11-25",
                profile.name
            ))
        })
}

struct Reader<'c, 'a> {
    ctx: &'c Context<'a>,
    zone: &'c TimeZone,
    /// Where this message's observations start in the output.
    start: usize,
    /// The day of the message's times of day.
    day: Option<Date>,
    /// The last time of day read and how many midnights the series has crossed before it.
    clock: Cell<Option<(Time, i64)>>,
}

impl Reader<'_, '_> {
    fn profile(&self) -> &Profile {
        self.ctx.profile
    }

    /// The event time given in `object`, if it gives one.
    fn time(&self, object: &Value) -> Result<Option<i64>, Rejection> {
        let profile = self.profile();
        let Some(value) = find(object, &profile.time) else {
            return Ok(None);
        };
        if profile.time_format == TimeFormat::TimeOfDay {
            return self.time_of_day(value).map(Some);
        }
        let seed = TimeSeed {
            format: profile.time_format,
            key: &profile.time,
            zone: self.zone,
        };
        seed.deserialize(value)
            .map(Some)
            .map_err(|e| unreadable(profile, &e))
    }

    /// A time of day on the message's day, or on a later one when the series has crossed
    /// midnight (a time earlier than the one before it).
    fn time_of_day(&self, value: &Value) -> Result<i64, Rejection> {
        let profile = self.profile();
        let time = value
            .as_str()
            .and_then(|text| text.parse::<Time>().ok())
            .ok_or_else(|| self.not(&profile.time, "a time of day such as 23:59:00"))?;
        let Some(day) = self.day else {
            return Err(Rejection::malformed(format!(
                "field {} (the day of the times of day) is missing",
                profile.date.as_deref().unwrap_or("date")
            )));
        };
        let crossed = match self.clock.get() {
            Some((last, crossed)) if time < last => crossed + 1,
            Some((_, crossed)) => crossed,
            None => 0,
        };
        self.clock.set(Some((time, crossed)));
        day.checked_add(jiff::Span::new().days(crossed))
            .and_then(|date| date.to_datetime(time).to_zoned(self.zone.clone()))
            .map(|zoned| zoned.timestamp().as_millisecond())
            .map_err(|e| {
                Rejection::malformed(format!(
                    "payload is not {}: {} on {day}: {e}",
                    profile.name, profile.time
                ))
            })
    }

    /// Each sample object of the array at `key`, with its own time or the message's.
    fn samples(
        &self,
        document: &Value,
        key: &str,
        time: Option<i64>,
        out: &mut Vec<Observation>,
    ) -> Result<(), Rejection> {
        let Some(samples) = find(document, key) else {
            return Ok(());
        };
        let Some(samples) = samples.as_array() else {
            return Err(self.not(key, "an array of sample objects"));
        };
        for sample in samples {
            if !sample.is_object() {
                return Err(self.not(key, "an array of sample objects"));
            }
            let time = self.time(sample)?.or(time);
            self.readings(sample, time, out)?;
        }
        Ok(())
    }

    /// The readings of `object`'s fields and coded measures, at `time` (to be filled from
    /// the message's when `None`).
    fn readings(
        &self,
        object: &Value,
        time: Option<i64>,
        out: &mut Vec<Observation>,
    ) -> Result<(), Rejection> {
        let time = time.unwrap_or(NO_TIME);
        for field in &self.profile().fields {
            if let Some(value) = find(object, &field.key) {
                self.push(field, value, time, out)?;
            }
        }
        if let Some(measures) = &self.profile().measures {
            self.measures(measures, object, time, out)?;
        }
        Ok(())
    }

    fn measures(
        &self,
        measures: &Measures,
        object: &Value,
        time: i64,
        out: &mut Vec<Observation>,
    ) -> Result<(), Rejection> {
        let Some(items) = find(object, &measures.path) else {
            return Ok(());
        };
        let Some(items) = items.as_array() else {
            return Err(self.not(&measures.path, "an array of measure objects"));
        };
        for item in items {
            let code = match find(item, &measures.code) {
                Some(Value::String(code)) => code.clone(),
                Some(Value::Number(code)) => code.to_string(),
                _ => {
                    return Err(self.not(
                        &measures.code,
                        "in every measure, a code (a number or text)",
                    ))
                }
            };
            let Some(field) = measures.code(&code) else {
                match measures.unknown {
                    UnknownCodes::Ignore => continue,
                    UnknownCodes::Reject => return Err(self.unknown_code(&code, measures)),
                }
            };
            let Some(value) = find(item, &measures.value) else {
                continue;
            };
            let value = match &measures.exponent {
                Some(key) => self.scaled(value, find(item, key), key, field)?,
                None => value.clone(),
            };
            self.push(field, &value, time, out)?;
        }
        Ok(())
    }

    /// `mantissa` times ten to the power in `exponent` (none: zero).
    fn scaled(
        &self,
        mantissa: &Value,
        exponent: Option<&Value>,
        key: &str,
        field: &Field,
    ) -> Result<Value, Rejection> {
        let Some(mantissa) = mantissa.as_f64() else {
            return Err(self.not(&field.key, "a number"));
        };
        let power = match exponent {
            None => 0,
            Some(e) => e
                .as_i64()
                .filter(|p| p.abs() <= MAX_EXPONENT)
                .ok_or_else(|| {
                    self.not(
                        key,
                        &format!("a whole power of ten from -{MAX_EXPONENT} to {MAX_EXPONENT}"),
                    )
                })?,
        };
        // Dividing by an exact power of ten rounds once: 7150 and -2 give 71.5 exactly.
        let ten = 10f64.powi(i32::try_from(power.abs()).unwrap_or(0));
        let value = if power < 0 {
            mantissa / ten
        } else {
            mantissa * ten
        };
        Ok(Value::from(value))
    }

    fn push(
        &self,
        field: &Field,
        value: &Value,
        time: i64,
        out: &mut Vec<Observation>,
    ) -> Result<(), Rejection> {
        let reading = ReadingSeed { field }
            .deserialize(value)
            .map_err(|e| unreadable(self.profile(), &e))?;
        if let Some(reading) = reading {
            out.push(observation(self.ctx, field.metric, reading, time));
        }
        Ok(())
    }

    fn not(&self, key: &str, expected: &str) -> Rejection {
        Rejection::malformed(format!(
            "payload is not {}: {key} is not {expected}",
            self.profile().name
        ))
    }

    fn unknown_code(&self, code: &str, measures: &Measures) -> Rejection {
        let mut known: Vec<&str> = measures.codes.iter().map(|f| &*f.key).collect();
        known.sort_unstable();
        let code: String = code.chars().take(32).collect();
        Rejection::malformed(format!(
            "payload is not {}: measure code {code:?} is not one of its codes ({}); add it to the profile's [profiles.codes], or set measures.unknown = \"ignore\"",
            self.profile().name,
            known.join(", ")
        ))
    }
}
