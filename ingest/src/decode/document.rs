//! JSON payloads of profiles that reach into nested objects (JSON Pointers), read coded
//! measures (`measures.rs`) or times of day (`clock.rs`): the payload is parsed into a
//! document once and the profile's keys are looked up in it. Values go through the same
//! readers as streamed payloads, so units, times and refusals read alike; as there, a `null`
//! reading is no reading, and a `null` time, counter or sample array is refused. Unlike
//! there, a key given twice in one object counts once (the last).

mod clock;
mod measures;

use jiff::tz::TimeZone;
use kenko_config::TimeFormat;
use kenko_devices::profile::{Field, Profile};
use serde::de::DeserializeSeed as _;
use serde_json::Value;

use super::json::{no_time, unreadable, ReadingSeed, SeqSeed, TimeSeed, NO_TIME};
use super::{observation, Context, Rejection};
use crate::observation::Observation;
use clock::Clock;

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
        clock: Clock::new(profile, &document, &zone)?,
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

/// `key` in `object`: a JSON Pointer into it when it starts with `/`, else one of its keys.
fn find<'v>(object: &'v Value, key: &str) -> Option<&'v Value> {
    if kenko_config::profile::is_pointer(key) {
        object.pointer(key)
    } else {
        object.get(key)
    }
}

struct Reader<'c, 'a> {
    ctx: &'c Context<'a>,
    zone: &'c TimeZone,
    /// Where this message's observations start in the output.
    start: usize,
    /// Times of day, for a profile that reads them.
    clock: Clock,
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
            return self.clock.read(profile, value).map(Some);
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

    /// One reading of `field` (none for `null`), converted to its metric's unit.
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
}
