//! A fingertip pulse oximeter: SpO2 in whole percent (a little lower for the elderly) and the
//! pulse rate. Clipped on twice a day: in the morning and in the afternoon.

use jiff::Timestamp;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::hash::{between, gaussian, mix};
use super::person::Person;
use super::schedule::local_minute;
use kenko_devices::catalogue::Metric;

const SALT: u64 = 0x6f78_696d;

#[derive(Debug, Clone)]
pub struct OximeterModel {
    pub(crate) person: Person,
    spo2: f64,
    pulse: f64,
    noise: SmallRng,
}

impl OximeterModel {
    pub fn new(seed: u64) -> OximeterModel {
        let person = Person::new(seed);
        let spo2 = if person.elderly {
            between(seed, -1, 120, 94.5, 97.0)
        } else {
            between(seed, -1, 120, 96.0, 98.5)
        };
        OximeterModel {
            spo2,
            pulse: between(seed, -1, 121, 58.0, 80.0),
            noise: SmallRng::seed_from_u64(mix(seed ^ SALT)),
            person,
        }
    }

    /// SpO2 (%) and pulse rate (/min), whole numbers as the display shows them.
    pub fn sample(&mut self, at: Timestamp) -> Vec<(Metric, f64)> {
        let minute = local_minute(at);
        let asleep = self.person.in_night(minute);
        let spo2 = self.spo2 - if asleep { 1.0 } else { 0.0 } + 0.8 * gaussian(&mut self.noise);
        let pulse = self.pulse - if asleep { 8.0 } else { 0.0 }
            + 2.0 * self.person.circadian(minute)
            + 3.0 * gaussian(&mut self.noise);
        vec![
            (Metric::Spo2, spo2.round().clamp(90.0, 100.0)),
            (Metric::PulseRate, pulse.round().clamp(40.0, 140.0)),
        ]
    }

    /// Local minutes in `[from, until)` of the readings: 30–60 minutes and 8–9 hours after
    /// waking.
    pub(crate) fn measurements(&self, from: i64, until: i64) -> Vec<i64> {
        let mut times = self.person.after_wakes(from, until, 30, 60, 122);
        times.extend(self.person.after_wakes(from, until, 8 * 60, 9 * 60, 123));
        times.sort_unstable();
        times
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{from_local_minute, DAY_MIN};

    #[test]
    fn readings_are_whole_and_in_range() {
        for seed in 0..30 {
            let mut model = OximeterModel::new(seed);
            let times = model.measurements(0, 7 * DAY_MIN);
            assert!(times.len() >= 10, "seed {seed}: {}", times.len());
            for m in times {
                let r = model.sample(from_local_minute(m, 30));
                let (spo2, pulse) = (r[0].1, r[1].1);
                assert!((90.0..=100.0).contains(&spo2) && spo2.fract() == 0.0);
                assert!((40.0..=140.0).contains(&pulse) && pulse.fract() == 0.0);
                if !model.person.elderly {
                    assert!(spo2 >= 93.0, "seed {seed}: {spo2}");
                }
            }
        }
    }
}
