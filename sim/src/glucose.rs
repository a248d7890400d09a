//! A blood-glucose meter: fasting glucose of 80–110 mg/dL that rises after each meal and comes
//! back within three hours; diabetic persons start higher and rise further (never to 400).
//! Meals are at the person's times of day, each a little earlier or later and larger or
//! smaller from day to day.
//!
//! Measured fasting before breakfast; diabetics also two hours after each meal, others now and
//! then an hour after dinner.

use jiff::Timestamp;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::hash::{between, gaussian, mix, smooth, unit};
use super::person::Person;
use super::schedule::{local_minute, Chronotype, DAY_MIN};
use kenko_devices::catalogue::Metric;

const SALT: u64 = 0x676c_7563;
/// A meal's effect is over after this many minutes.
const MEAL_EFFECT_MIN: i64 = 360;

#[derive(Debug, Clone)]
pub struct GlucoseModel {
    pub(crate) person: Person,
    fasting: f64,
    /// Rise at the peak after an ordinary meal, mg/dL.
    rise: f64,
    /// Minutes from a meal to the peak.
    peak_min: f64,
    noise: SmallRng,
}

impl GlucoseModel {
    pub fn new(seed: u64) -> GlucoseModel {
        let person = Person::new(seed);
        let (fasting, rise, peak_min) = if person.diabetic {
            (
                between(seed, -1, 130, 125.0, 165.0),
                between(seed, -1, 131, 70.0, 110.0),
                70.0,
            )
        } else {
            (
                between(seed, -1, 130, 84.0, 98.0),
                between(seed, -1, 131, 28.0, 42.0),
                45.0,
            )
        };
        GlucoseModel {
            fasting,
            rise,
            peak_min,
            noise: SmallRng::seed_from_u64(mix(seed ^ SALT)),
            person,
        }
    }

    pub fn diabetic(&self) -> bool {
        self.person.diabetic
    }

    /// Blood glucose (mg/dL) at `at`.
    pub fn sample(&mut self, at: Timestamp) -> Vec<(Metric, f64)> {
        let minute = local_minute(at);
        let days = at.as_millisecond() as f64 / 86_400_000.0;
        let meals: f64 = self
            .meals_around(minute)
            .map(|(meal, size)| self.rise * size * self.curve(minute - meal))
            .sum();
        let (spread, high) = if self.person.diabetic {
            (7.0, 390.0)
        } else {
            (3.0, 220.0)
        };
        let glucose = self.fasting
            + 4.0 * smooth(self.person.seed, days, 2.0, 132)
            + meals
            + spread * gaussian(&mut self.noise);
        vec![(Metric::BloodGlucose, glucose.round().clamp(60.0, high))]
    }

    /// Local minutes in `[from, until)` of the readings.
    pub(crate) fn measurements(&self, from: i64, until: i64) -> Vec<i64> {
        let seed = self.person.seed;
        let mut times = vec![];
        for day in from.div_euclid(DAY_MIN) - 1..=until.div_euclid(DAY_MIN) {
            let [breakfast, lunch, dinner] = self.meals(day).map(|(m, _)| m);
            times.push(breakfast - 5 - (15.0 * unit(seed, day, 133)) as i64);
            if self.person.diabetic {
                for (k, meal) in [breakfast, lunch, dinner].into_iter().enumerate() {
                    times.push(meal + 115 + (10.0 * unit(seed, day, 134 + k as u64)) as i64);
                }
            } else if unit(seed, day, 137) < 0.33 {
                times.push(dinner + 55 + (10.0 * unit(seed, day, 138)) as i64);
            }
        }
        times.retain(|m| (from..until).contains(m));
        times.sort_unstable();
        times
    }

    /// How much of a meal's peak rise remains `since` minutes after it: up over the first
    /// `peak_min` minutes, then back down.
    fn curve(&self, since: i64) -> f64 {
        if !(0..MEAL_EFFECT_MIN).contains(&since) {
            return 0.0;
        }
        let x = since as f64 / self.peak_min;
        x * (1.0 - x).exp()
    }

    /// Meals whose effect may reach local minute `minute`, as (minute, size).
    fn meals_around(&self, minute: i64) -> impl Iterator<Item = (i64, f64)> + '_ {
        let day = minute.div_euclid(DAY_MIN);
        (day - 1..=day).flat_map(|d| self.meals(d))
    }

    /// The three meals of local day `day`: (local minute, size relative to an ordinary meal).
    fn meals(&self, day: i64) -> [(i64, f64); 3] {
        let h = |hours: i64, minutes: i64| hours * 60 + minutes;
        let windows = match self.person.chronotype() {
            Chronotype::Regular => [
                (h(7, 0), h(8, 0)),
                (h(12, 0), h(13, 0)),
                (h(18, 30), h(19, 45)),
            ],
            Chronotype::Elderly => [
                (h(6, 0), h(7, 0)),
                (h(11, 30), h(12, 30)),
                (h(17, 30), h(18, 30)),
            ],
            Chronotype::Bedridden => [
                (h(7, 30), h(8, 0)),
                (h(12, 0), h(12, 30)),
                (h(18, 0), h(18, 30)),
            ],
            // Breakfast before the shift, a break in it, dinner before sleeping by day.
            Chronotype::NightShift => [
                (h(17, 0), h(18, 0)),
                (h(0, 30), h(1, 30)),
                (h(7, 0), h(7, 45)),
            ],
            Chronotype::LateShift => [
                (h(13, 0), h(14, 0)),
                (h(23, 30), h(23, 59)),
                (h(5, 0), h(5, 45)),
            ],
        };
        let seed = self.person.seed;
        let mut k = 140;
        windows.map(|(lo, hi)| {
            k += 2;
            let at = day * DAY_MIN + lo + ((hi - lo) as f64 * unit(seed, day, k)) as i64;
            (at, between(seed, day, k + 1, 0.7, 1.3))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::from_local_minute;
    use crate::schedule::tests::jst;

    #[test]
    fn fasting_in_range_rises_after_meals_and_diabetics_stay_below_400() {
        let (mut diabetics, mut others) = (0, 0);
        for seed in 0..80 {
            let mut model = GlucoseModel::new(seed);
            let mut peak: f64 = 0.0;
            for m in (0..7 * DAY_MIN).step_by(10) {
                let g = model.sample(jst(m))[0].1;
                assert!((60.0..400.0).contains(&g), "seed {seed}: {g}");
                peak = peak.max(g);
            }
            let day = 3;
            let [breakfast, ..] = model.meals(day);
            let fasting = model.sample(from_local_minute(breakfast.0 - 10, 0))[0].1;
            let after =
                model.sample(from_local_minute(breakfast.0 + model.peak_min as i64, 0))[0].1;
            assert!(after > fasting + 5.0, "seed {seed}: {fasting} -> {after}");
            if model.diabetic() {
                diabetics += 1;
                assert!(
                    fasting > 105.0 && peak > fasting + 60.0,
                    "seed {seed}: {fasting}, {peak}"
                );
            } else {
                others += 1;
                assert!((75.0..=115.0).contains(&fasting), "seed {seed}: {fasting}");
                assert!(peak < 200.0, "seed {seed}: {peak}");
            }
        }
        assert!(diabetics >= 3 && others > diabetics, "{diabetics} diabetic");
    }

    #[test]
    fn diabetics_measure_four_times_a_day() {
        for seed in 0..40 {
            let model = GlucoseModel::new(seed);
            let n = model.measurements(DAY_MIN, 8 * DAY_MIN).len();
            if model.diabetic() {
                assert!((26..=30).contains(&n), "seed {seed}: {n}");
            } else {
                assert!((7..=12).contains(&n), "seed {seed}: {n}");
            }
        }
    }
}
