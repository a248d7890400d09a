//! A clinical thermometer: body temperature with its circadian rhythm and, for persons prone
//! to it, a fever now and then: 2–4 days, rising over six hours to a peak of 38–40 °C,
//! falling back over the last day (never reaching 41 °C). Taken each morning, and every four
//! hours or so while feverish.

use jiff::Timestamp;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::hash::{between, gaussian, mix, unit};
use super::person::Person;
use super::schedule::{local_minute, DAY_MIN};
use kenko_devices::catalogue::Metric;

const SALT: u64 = 0x7468_726d;
/// Fevers are drawn per block of this many days: at most one in each.
const BLOCK_DAYS: i64 = 10;

#[derive(Debug, Clone)]
pub struct ThermoModel {
    pub(crate) person: Person,
    temperature: f64,
    noise: SmallRng,
}

/// One fever: local minutes and how high it gets above normal.
#[derive(Debug, Clone, Copy)]
struct Fever {
    onset: i64,
    end: i64,
    excess: f64,
}

impl ThermoModel {
    pub fn new(seed: u64) -> ThermoModel {
        ThermoModel {
            temperature: between(seed, -1, 110, 36.4, 36.8),
            noise: SmallRng::seed_from_u64(mix(seed ^ SALT)),
            person: Person::new(seed),
        }
    }

    /// Whether the person has a fever at `at`.
    pub fn feverish(&self, at: Timestamp) -> bool {
        self.fever_excess(local_minute(at)) > 0.0
    }

    /// Body temperature (Cel), one decimal as a thermometer shows it.
    pub fn sample(&mut self, at: Timestamp) -> Vec<(Metric, f64)> {
        let minute = local_minute(at);
        let fever = self.fever_excess(minute);
        // A fever swings more with the time of day.
        let swing = if fever > 0.0 { 0.5 } else { 0.3 };
        let t = self.temperature
            + fever
            + swing * self.person.circadian(minute)
            + 0.08 * gaussian(&mut self.noise);
        let t = (t * 10.0).round() / 10.0;
        vec![(Metric::BodyTemperature, t.clamp(35.8, 40.8))]
    }

    /// Local minutes in `[from, until)` of the readings: 15–35 minutes after waking, and while
    /// feverish also four, eight and twelve hours after waking.
    pub(crate) fn measurements(&self, from: i64, until: i64) -> Vec<i64> {
        let mut times = self.person.after_wakes(from, until, 15, 35, 111);
        for (k, hours) in [4, 8, 12].into_iter().enumerate() {
            let lo = hours * 60;
            let extra = self
                .person
                .after_wakes(from, until, lo, lo + 30, 112 + k as u64);
            times.extend(extra.into_iter().filter(|&m| self.fever_excess(m) > 0.0));
        }
        times.sort_unstable();
        times
    }

    /// Degrees above normal at local minute `minute`.
    fn fever_excess(&self, minute: i64) -> f64 {
        let Some(fever) = [0, -1]
            .into_iter()
            .filter_map(|b| self.fever(minute.div_euclid(BLOCK_DAYS * DAY_MIN) + b))
            .find(|f| (f.onset..f.end).contains(&minute))
        else {
            return 0.0;
        };
        let since = (minute - fever.onset) as f64;
        let left = (fever.end - minute) as f64;
        let rise = (since / 360.0).min(1.0);
        let fall = (left / DAY_MIN as f64).min(1.0);
        fever.excess * rise.min(fall)
    }

    /// The fever in block `block`, if any: about every other block for a fever-prone person.
    fn fever(&self, block: i64) -> Option<Fever> {
        let seed = self.person.seed;
        if !self.person.fever_prone || unit(seed, block, 113) >= 0.5 {
            return None;
        }
        let day = block * BLOCK_DAYS + (7.0 * unit(seed, block, 114)) as i64;
        let onset = day * DAY_MIN + 8 * 60 + (12.0 * 60.0 * unit(seed, block, 115)) as i64;
        let length = between(seed, block, 116, 2.0, 4.0) * DAY_MIN as f64;
        Some(Fever {
            onset,
            end: onset + length as i64,
            excess: between(seed, block, 117, 1.5, 3.2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::from_local_minute;
    use crate::schedule::tests::jst;

    #[test]
    fn some_persons_run_a_fever_and_it_stays_below_41() {
        let mut feverish_persons = 0;
        for seed in 0..40 {
            let mut model = ThermoModel::new(seed);
            let mut peak: f64 = 0.0;
            let mut fever_minutes = 0;
            for m in (0..60 * DAY_MIN).step_by(30) {
                let at = jst(m);
                let t = model.sample(at)[0].1;
                assert!((35.8..41.0).contains(&t), "seed {seed}: {t}");
                assert_eq!((t * 10.0).round(), t * 10.0);
                if model.feverish(at) {
                    fever_minutes += 30;
                } else {
                    assert!(t < 37.6, "seed {seed}: {t} without a fever");
                }
                peak = peak.max(t);
            }
            assert!(
                fever_minutes == 0 || model.person.fever_prone,
                "seed {seed}"
            );
            if fever_minutes > 0 {
                feverish_persons += 1;
                assert!(peak >= 38.0, "seed {seed}: peak {peak}");
            }
        }
        assert!((5..=20).contains(&feverish_persons), "{feverish_persons}");
    }

    #[test]
    fn fevers_are_measured_more_often() {
        let seed = (0..100)
            .find(|&s| Person::new(s).fever_prone)
            .expect("a fever-prone person");
        let model = ThermoModel::new(seed);
        let times = model.measurements(0, 60 * DAY_MIN);
        let feverish = times
            .iter()
            .filter(|&&m| model.feverish(from_local_minute(m, 0)))
            .count();
        let wakes = model.person.schedule.wakes(0, 60 * DAY_MIN).len();
        assert!(
            times.len() > wakes,
            "{} readings, {wakes} wakes",
            times.len()
        );
        assert!(feverish >= 3, "{feverish}");
    }
}
