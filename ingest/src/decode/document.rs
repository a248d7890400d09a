//! JSON payloads of profiles that reach into nested objects (JSON Pointers), read coded
//! measures (`measures.rs`) or times of day (`clock.rs`): the payload is parsed into a
//! document once and the profile's keys are looked up in it. Values go through the same
//! readers as streamed payloads, so units, times and refusals read alike; as there, a `null`
//! reading is no reading, and a `null` time, counter or sample array is refused. Unlike
//! there, a key given twice in one object counts once (the last). A gateway's message may
//! name a device at the top and in each sample (`relayed.rs` checks it may speak for it):
//! the readings below are that device's, their times read in its zone (times of day as a
//! series of their own per device).

mod clock;
mod measures;

use std::cell::RefCell;
use std::sync::Arc;

use jiff::tz::TimeZone;
use kenko_config::TimeFormat;
use kenko_devices::profile::{Field, Profile};
use kenko_devices::DeviceEntry;
use serde::de::DeserializeSeed as _;
use serde_json::Value;

use super::json::{no_time, unreadable, ReadingSeed, SeqSeed, TimeSeed, NO_TIME};
use super::relayed::relayed;
use super::{observation_of, Context, Rejection};
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
    let named = named_device(ctx, &document)?;
    let device = named.as_deref().unwrap_or(ctx.device);
    let zone = ctx.zones.for_device(device);
    let reader = Reader {
        ctx,
        start: out.len(),
        clock: Clock::new(profile, &document, &zone)?,
        clock_of: device.id.clone(),
        other_clocks: RefCell::new(Vec::new()),
    };
    let time = reader.time(&document, device, &zone)?;
    let seq = match profile.seq.as_deref().and_then(|key| find(&document, key)) {
        Some(value) => Some(
            SeqSeed
                .deserialize(value)
                .map_err(|e| unreadable(profile, &e))?,
        ),
        None => None,
    };
    let at = At {
        time: time.unwrap_or(NO_TIME),
        device,
    };
    reader.readings(&document, at, out)?;
    if let Some(samples) = profile.samples.as_deref() {
        reader.samples(&document, samples, (time, device, &zone), out)?;
    }
    for obs in &mut out[reader.start..] {
        if obs.time_ms == NO_TIME {
            return Err(no_time(profile));
        }
        obs.seq = seq.unwrap_or(0);
    }
    Ok(())
}

/// The device `object` names in the profile's `device` field, if it names one.
fn named_device(ctx: &Context<'_>, object: &Value) -> Result<Option<Arc<DeviceEntry>>, Rejection> {
    let profile = ctx.profile;
    let Some(key) = profile.device.as_deref() else {
        return Ok(None);
    };
    let id = match find(object, key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(id)) => id.clone(),
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(_) => {
            return Err(Rejection::malformed(format!(
                "payload is not {}: {key} is not a device id (text, or a whole number)",
                profile.name
            )))
        }
    };
    relayed(ctx, key, &id).map(Some)
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
    /// Where this message's observations start in the output.
    start: usize,
    /// Times of day, for a profile that reads them: of the message's device (`clock_of`),
    /// and of each other device its samples name, each series in its device's zone.
    clock: Clock,
    clock_of: Arc<str>,
    other_clocks: RefCell<Vec<(Arc<str>, Clock)>>,
}

/// When and of which device the readings of one object are.
#[derive(Clone, Copy)]
struct At<'d> {
    /// `NO_TIME` until the message's time is known.
    time: i64,
    device: &'d DeviceEntry,
}

impl Reader<'_, '_> {
    fn profile(&self) -> &Profile {
        self.ctx.profile
    }

    /// The event time given in `object`, if it gives one, read as `device`'s (in `zone`,
    /// its zone).
    fn time(
        &self,
        object: &Value,
        device: &DeviceEntry,
        zone: &TimeZone,
    ) -> Result<Option<i64>, Rejection> {
        let profile = self.profile();
        let Some(value) = find(object, &profile.time) else {
            return Ok(None);
        };
        if profile.time_format == TimeFormat::TimeOfDay {
            if device.id == self.clock_of {
                return self.clock.read(profile, value).map(Some);
            }
            let mut others = self.other_clocks.borrow_mut();
            let at = match others.iter().position(|(id, _)| *id == device.id) {
                Some(at) => at,
                None => {
                    others.push((device.id.clone(), self.clock.for_zone(zone.clone())));
                    others.len() - 1
                }
            };
            return others[at].1.read(profile, value).map(Some);
        }
        let seed = TimeSeed {
            format: profile.time_format,
            key: &profile.time,
            zone,
        };
        seed.deserialize(value)
            .map(Some)
            .map_err(|e| unreadable(profile, &e))
    }

    /// Each sample object of the array at `key`, with its own time and device or the
    /// message's (`outer`: its time, device and that device's zone).
    fn samples(
        &self,
        document: &Value,
        key: &str,
        outer: (Option<i64>, &DeviceEntry, &TimeZone),
        out: &mut Vec<Observation>,
    ) -> Result<(), Rejection> {
        let (time, device, zone) = outer;
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
            let named = named_device(self.ctx, sample)?;
            let (device, time) = match &named {
                Some(named) => {
                    let zone = self.ctx.zones.for_device(named);
                    (&**named, self.time(sample, named, &zone)?.or(time))
                }
                None => (device, self.time(sample, device, zone)?.or(time)),
            };
            let at = At {
                time: time.unwrap_or(NO_TIME),
                device,
            };
            self.readings(sample, at, out)?;
        }
        Ok(())
    }

    /// The readings of `object`'s fields and coded measures, at `at` (its time to be filled
    /// from the message's when `NO_TIME`).
    fn readings(
        &self,
        object: &Value,
        at: At<'_>,
        out: &mut Vec<Observation>,
    ) -> Result<(), Rejection> {
        for field in &self.profile().fields {
            if let Some(value) = find(object, &field.key) {
                self.push(field, value, at, out)?;
            }
        }
        if let Some(measures) = &self.profile().measures {
            self.measures(measures, object, at, out)?;
        }
        Ok(())
    }

    /// One reading of `field` (none for `null`), converted to its metric's unit.
    fn push(
        &self,
        field: &Field,
        value: &Value,
        at: At<'_>,
        out: &mut Vec<Observation>,
    ) -> Result<(), Rejection> {
        let reading = ReadingSeed { field }
            .deserialize(value)
            .map_err(|e| unreadable(self.profile(), &e))?;
        if let Some(reading) = reading {
            out.push(observation_of(
                self.ctx,
                at.device,
                field.metric,
                reading,
                at.time,
            ));
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
