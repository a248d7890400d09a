//! A wrist wearable: heart rate, steps, SpO2 and skin-corrected body temperature of the person
//! whose bed sensor [`BedModel`] models, so both agree on when they sleep. Asleep the pulse
//! follows the sleep stage as under the mattress; awake and out of bed it rises with walking.
//!
//! Steps are a timeline like the sleep stages: a count per local minute hashed from (seed,
//! minute), so a sample's "steps since the last sample" and a day's total add up exactly
//! however often the device reports.

use jiff::civil::Date;
use jiff::tz::{self, TimeZone};
use jiff::Timestamp;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::bed::BedModel;
use super::hash::{between, gaussian, mix, smooth, unit};
use super::person::Person;
use super::schedule::{local_minute, Chronotype};
use kenko_devices::catalogue::{Metric, SleepStage};

/// Noise of each kind's model gets its own stream: salt of the wearable's.
const SALT: u64 = 0x7765_6172;

/// A person and the wearable on their wrist. Deterministic from its seed.
#[derive(Debug, Clone)]
pub struct WearableModel {
    person: Person,
    /// The person's nights, as their bed sensor sees them.
    bed: BedModel,
    spo2: f64,
    temperature: f64,
    /// Chance that a ten-minute stretch awake and up is a walk.
    walking: f64,
    noise: SmallRng,
}

impl WearableModel {
    /// The wearable of the person whose bed sensor is `BedModel::new(seed)`.
    pub fn new(seed: u64) -> WearableModel {
        let person = Person::new(seed);
        let walking = match person.chronotype() {
            Chronotype::Elderly => 0.12,
            Chronotype::Bedridden => 0.0,
            _ => 0.2 + 0.1 * unit(seed, -1, 70),
        };
        WearableModel {
            bed: BedModel::new(seed),
            spo2: between(seed, -1, 71, 96.5, 98.5),
            temperature: between(seed, -1, 72, 36.5, 36.7),
            walking,
            noise: SmallRng::seed_from_u64(mix(seed ^ SALT)),
            person,
        }
    }

    /// Heart rate (/min), steps walked in `[since, at)`, SpO2 (%) and body temperature (Cel).
    pub fn sample(&mut self, at: Timestamp, since: Timestamp) -> Vec<(Metric, f64)> {
        let minute = local_minute(at);
        let stage = self.bed.stage_in_minute(minute);
        let asleep = stage.is_some_and(SleepStage::is_asleep);
        let t = at.as_millisecond() as f64 / 60_000.0;
        let seed = self.person.seed;
        let walking = f64::from(self.steps_in_minute(minute));
        let base = self.bed.resting_heart_rate() + 1.5 * self.person.circadian(minute);
        let (offset, spread) = match stage {
            Some(SleepStage::Light) => (-11.0, 1.0),
            Some(SleepStage::Deep) => (-17.0, 0.6),
            Some(SleepStage::Rem) => (-4.0 + 4.0 * smooth(seed, t, 3.0, 73), 2.0),
            Some(SleepStage::Awake) => (0.0, 1.5),
            // Up and about: standing raises the pulse, walking more so.
            None => (5.0 + 0.32 * walking + 3.0 * smooth(seed, t, 20.0, 74), 2.5),
        };
        let hr = base + offset + spread * gaussian(&mut self.noise);
        let spo2 = self.spo2 - if asleep { 0.6 } else { 0.0 } + 0.5 * gaussian(&mut self.noise);
        let temperature = self.temperature + 0.3 * self.person.circadian(minute)
            - if asleep { 0.15 } else { 0.0 }
            + 0.06 * gaussian(&mut self.noise);
        vec![
            (Metric::HeartRate, hr.clamp(38.0, 185.0)),
            (Metric::Steps, self.steps_between(since, at) as f64),
            (Metric::Spo2, spo2.clamp(95.0, 99.0)),
            (Metric::BodyTemperature, temperature.clamp(36.1, 37.2)),
        ]
    }

    /// True steps walked in `[from, to)`: whole minutes' counts, plus each end minute's
    /// count in proportion to the part of it inside (rounded down at each end, so that
    /// consecutive intervals add up exactly: `steps_between(a, b) + steps_between(b, c) ==
    /// steps_between(a, c)`). Zero when `to <= from`.
    pub fn steps_between(&self, from: Timestamp, to: Timestamp) -> u64 {
        if to <= from {
            return 0;
        }
        let part = |at: Timestamp| {
            let ms = at.as_millisecond().rem_euclid(60_000);
            let count = self.steps_in_minute(local_minute(at));
            (u64::from(count) * ms as u64) / 60_000
        };
        let whole: u64 = (local_minute(from)..local_minute(to))
            .map(|m| u64::from(self.steps_in_minute(m)))
            .sum();
        whole + part(to) - part(from)
    }

    /// The true step total of local (JST) calendar day `date`: steps in
    /// `[00:00, 24:00)` JST. A device reports the steps walked since its last sample, so a
    /// sum of reports by event time over the same day differs from this by the steps of the
    /// interval before the day's first report, less those after its last.
    pub fn daily_steps(&self, date: Date) -> u64 {
        let jst = TimeZone::fixed(tz::offset(9));
        let start = date.to_zoned(jst.clone()).map(|z| z.timestamp());
        let end = date
            .tomorrow()
            .and_then(|d| d.to_zoned(jst))
            .map(|z| z.timestamp());
        match (start, end) {
            (Ok(start), Ok(end)) => self.steps_between(start, end),
            _ => 0,
        }
    }

    /// Steps in local minute `minute`: none in bed, a few on a trip to the bathroom, walks
    /// of ten minutes and more now and then by day, and a little pottering about.
    fn steps_in_minute(&self, minute: i64) -> u32 {
        let schedule = self.bed.schedule();
        if schedule.in_bed(minute).is_some() {
            return 0;
        }
        let seed = self.person.seed;
        let r = |key| unit(seed, minute, key);
        if schedule.on_trip(minute) {
            return 8 + (12.0 * r(75)) as u32;
        }
        if self.person.chronotype() == Chronotype::Bedridden {
            // Sitting up in a chair; a few steps to get there and back.
            return (4.0 * r(76)) as u32;
        }
        if unit(seed, minute.div_euclid(10), 77) < self.walking {
            return 70 + (45.0 * r(78)) as u32;
        }
        if r(79) < 0.5 {
            (14.0 * r(80)) as u32
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::tests::jst;
    use crate::schedule::DAY_MIN;
    use jiff::SignedDuration;

    fn value(readings: &[(Metric, f64)], metric: Metric) -> f64 {
        readings
            .iter()
            .find(|(m, _)| *m == metric)
            .map(|(_, v)| *v)
            .expect("metric present")
    }

    #[test]
    fn steps_add_up_over_any_sampling() {
        let model = WearableModel::new(3);
        let date: Date = "2026-11-25".parse().expect("date");
        let total = model.daily_steps(date);
        assert!(total > 2_000, "{total} steps in a day");
        for step_s in [1, 7, 60, 150, 3600] {
            let mut sum = 0;
            let mut last = jst(0);
            while last < jst(DAY_MIN) {
                let next = (last + SignedDuration::from_secs(step_s)).min(jst(DAY_MIN));
                sum += model.steps_between(last, next);
                last = next;
            }
            assert_eq!(sum, total, "sampled every {step_s} s");
        }
    }

    #[test]
    fn no_steps_in_bed_and_the_pulse_follows_activity() {
        for seed in 0..20 {
            let mut model = WearableModel::new(seed);
            let (mut in_bed, mut walking, mut resting) = (vec![], vec![], vec![]);
            for m in (0..2 * DAY_MIN).step_by(3) {
                let at = jst(m);
                let r = model.sample(at, at - SignedDuration::from_mins(1));
                let steps = model.steps_in_minute(local_minute(at));
                let hr = value(&r, Metric::HeartRate);
                if model.bed.stage_at(at).is_some() {
                    assert_eq!(steps, 0, "seed {seed}: steps in bed");
                    in_bed.push(hr);
                } else if steps >= 70 {
                    walking.push(hr);
                } else {
                    resting.push(hr);
                }
                let spo2 = value(&r, Metric::Spo2);
                let temp = value(&r, Metric::BodyTemperature);
                assert!((95.0..=99.0).contains(&spo2) && (36.1..=37.2).contains(&temp));
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            assert!(mean(&in_bed) < mean(&resting), "seed {seed}");
            if !walking.is_empty() {
                assert!(mean(&walking) > mean(&resting) + 15.0, "seed {seed}");
            }
        }
    }

    #[test]
    fn wearable_and_bed_agree_on_sleep() {
        let bed = BedModel::new(11);
        let wearable = WearableModel::new(11);
        for m in (0..2 * DAY_MIN).step_by(7) {
            assert_eq!(bed.stage_at(jst(m)), wearable.bed.stage_at(jst(m)));
        }
    }

    #[test]
    fn same_seed_same_readings() {
        let (mut a, mut b) = (WearableModel::new(5), WearableModel::new(5));
        for m in (0..DAY_MIN).step_by(11) {
            let at = jst(m);
            let since = at - SignedDuration::from_mins(11);
            assert_eq!(a.sample(at, since), b.sample(at, since));
        }
    }
}
