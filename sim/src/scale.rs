//! A bathroom scale: body weight around the person's baseline with a slow drift over weeks and
//! about ±0.5 kg over a day (lightest in the morning, heaviest in the evening), and body fat
//! that follows the weight. Stepped on most mornings shortly after getting up.

use std::f64::consts::TAU;

use jiff::Timestamp;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::hash::{between, gaussian, mix, smooth, unit};
use super::person::Person;
use super::schedule::{local_minute, DAY_MIN};
use kenko_devices::catalogue::Metric;

const SALT: u64 = 0x7363_616c;

#[derive(Debug, Clone)]
pub struct ScaleModel {
    pub(crate) person: Person,
    weight: f64,
    fat: f64,
    noise: SmallRng,
}

impl ScaleModel {
    pub fn new(seed: u64) -> ScaleModel {
        let person = Person::new(seed);
        let (weight, fat) = if person.elderly {
            (
                between(seed, -1, 100, 42.0, 72.0),
                between(seed, -1, 101, 20.0, 36.0),
            )
        } else {
            (
                between(seed, -1, 100, 50.0, 92.0),
                between(seed, -1, 101, 14.0, 33.0),
            )
        };
        ScaleModel {
            weight,
            fat,
            noise: SmallRng::seed_from_u64(mix(seed ^ SALT)),
            person,
        }
    }

    /// The person's weight without the day's swing and noise, kg: the baseline and its slow
    /// drift (within ±1.5 kg, changing course every month or so).
    pub fn trend(&self, at: Timestamp) -> f64 {
        let days = at.as_millisecond() as f64 / 86_400_000.0;
        self.weight + 1.5 * smooth(self.person.seed, days, 30.0, 102)
    }

    /// Body weight (kg) and body fat (%) at `at`.
    pub fn sample(&mut self, at: Timestamp) -> Vec<(Metric, f64)> {
        let minute = local_minute(at);
        let trend = self.trend(at);
        // Lightest after the night, heaviest after dinner.
        let angle = (minute.rem_euclid(DAY_MIN) - 20 * 60) as f64 / DAY_MIN as f64 * TAU;
        let weight = trend + 0.5 * angle.cos() + 0.1 * gaussian(&mut self.noise);
        let fat = self.fat + 0.35 * (trend - self.weight) + 0.4 * gaussian(&mut self.noise);
        vec![
            (Metric::BodyWeight, weight),
            (Metric::BodyFat, fat.clamp(5.0, 60.0)),
        ]
    }

    /// Local minutes in `[from, until)` of the weigh-ins: 5–25 minutes after waking, on
    /// about six mornings in seven.
    pub(crate) fn measurements(&self, from: i64, until: i64) -> Vec<i64> {
        self.person
            .after_wakes(from, until, 5, 25, 103)
            .into_iter()
            .filter(|&m| unit(self.person.seed, m, 104) < 0.85)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::tests::jst;

    #[test]
    fn weight_swings_half_a_kilo_a_day_around_a_slow_trend() {
        for seed in 0..20 {
            let mut model = ScaleModel::new(seed);
            let morning = model.sample(jst(8 * 60))[0].1;
            let evening = model.sample(jst(20 * 60))[0].1;
            assert!(
                (0.5..1.6).contains(&(evening - morning)),
                "seed {seed}: {morning} -> {evening}"
            );
            let trend = model.trend(jst(0));
            let month = model.trend(jst(30 * DAY_MIN));
            assert!((trend - month).abs() <= 3.0);
            for day in 0..60 {
                let r = model.sample(jst(day * DAY_MIN + 7 * 60));
                assert!((r[0].1 - model.weight).abs() < 2.5, "{r:?}");
                assert!((5.0..=60.0).contains(&r[1].1));
            }
        }
    }

    #[test]
    fn most_mornings_have_a_weigh_in() {
        for seed in 0..20 {
            let model = ScaleModel::new(seed);
            let days = model.measurements(0, 28 * DAY_MIN).len();
            let wakes = model.person.schedule.wakes(0, 28 * DAY_MIN).len();
            assert!(
                days * 10 >= wakes * 6 && days <= wakes,
                "seed {seed}: {days} of {wakes}"
            );
        }
    }
}
