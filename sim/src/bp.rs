//! A home blood-pressure monitor: systolic and diastolic pressure around the person's own
//! baseline (hypertensive for some, most of them elderly), the morning surge after waking,
//! a dip during the night's sleep, slow drift over days, and the pulse rate.
//!
//! Measured twice a day as home blood-pressure guidelines ask: within an hour of waking and in
//! the evening.

use jiff::Timestamp;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::hash::{between, gaussian, mix, smooth, unit};
use super::person::Person;
use super::schedule::local_minute;
use kenko_devices::catalogue::Metric;

const SALT: u64 = 0x0062_7072;
/// The morning surge fades over this many minutes after waking.
const SURGE_MIN: i64 = 120;

#[derive(Debug, Clone)]
pub struct BpModel {
    pub(crate) person: Person,
    systolic: f64,
    diastolic: f64,
    pulse: f64,
    /// Systolic rise right after waking, mm[Hg].
    surge: f64,
    noise: SmallRng,
}

impl BpModel {
    pub fn new(seed: u64) -> BpModel {
        let person = Person::new(seed);
        let (systolic, diastolic) = if person.hypertensive {
            (
                between(seed, -1, 90, 140.0, 165.0),
                between(seed, -1, 91, 84.0, 98.0),
            )
        } else {
            (
                between(seed, -1, 90, 105.0, 128.0),
                between(seed, -1, 91, 64.0, 80.0),
            )
        };
        let surge = if person.elderly || person.hypertensive {
            between(seed, -1, 92, 15.0, 30.0)
        } else {
            between(seed, -1, 92, 8.0, 18.0)
        };
        BpModel {
            systolic,
            diastolic,
            pulse: between(seed, -1, 93, 60.0, 78.0),
            surge,
            noise: SmallRng::seed_from_u64(mix(seed ^ SALT)),
            person,
        }
    }

    /// Whether the person has high blood pressure.
    pub fn hypertensive(&self) -> bool {
        self.person.hypertensive
    }

    /// Systolic and diastolic pressure (mm[Hg], whole numbers as a monitor shows them) and
    /// pulse rate (/min) at `at`.
    pub fn sample(&mut self, at: Timestamp) -> Vec<(Metric, f64)> {
        let minute = local_minute(at);
        let surge = match self.person.schedule.since_wake(minute) {
            Some(m) if m < SURGE_MIN => self.surge * (1.0 - m as f64 / SURGE_MIN as f64),
            _ => 0.0,
        };
        let dip = if self.person.in_night(minute) {
            -10.0
        } else {
            0.0
        };
        let days = at.as_millisecond() as f64 / 86_400_000.0;
        let drift = 4.0 * smooth(self.person.seed, days, 3.0, 94);
        let rng = &mut self.noise;
        let systolic = self.systolic + surge + dip + drift + 5.0 * gaussian(rng);
        let diastolic =
            self.diastolic + 0.45 * surge + 0.5 * dip + 0.6 * drift + 3.5 * gaussian(rng);
        let pulse = self.pulse + 0.2 * surge + 3.0 * gaussian(rng);
        let systolic = systolic.round().clamp(85.0, 230.0);
        vec![
            (Metric::SystolicBp, systolic),
            (
                Metric::DiastolicBp,
                diastolic.round().clamp(45.0, (systolic - 20.0).min(135.0)),
            ),
            (Metric::PulseRate, pulse.round().clamp(45.0, 130.0)),
        ]
    }

    /// Local minutes in `[from, until)` at which the person measures: 10–40 minutes after
    /// waking, and 12–13 hours later unless asleep by then.
    pub(crate) fn measurements(&self, from: i64, until: i64) -> Vec<i64> {
        let mut times = self.person.after_wakes(from, until, 10, 40, 95);
        times.extend(
            self.person
                .after_wakes(from, until, 12 * 60, 13 * 60, 96)
                .into_iter()
                .filter(|&m| unit(self.person.seed, m, 97) < 0.9),
        );
        times.sort_unstable();
        times
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::tests::jst;
    use crate::schedule::{from_local_minute, DAY_MIN};

    fn systolic(r: &[(Metric, f64)]) -> f64 {
        r[0].1
    }

    #[test]
    fn hypertensive_persons_run_higher_and_mornings_surge() {
        let (mut high, mut normal, mut surges) = (vec![], vec![], vec![]);
        for seed in 0..60 {
            let mut model = BpModel::new(seed);
            let times = model.measurements(0, 7 * DAY_MIN);
            assert!(
                times.len() >= 7,
                "seed {seed}: {} measurements",
                times.len()
            );
            let (mut morning, mut evening) = (vec![], vec![]);
            for m in times {
                let r = model.sample(from_local_minute(m, 0));
                let (sys, dia, pulse) = (r[0].1, r[1].1, r[2].1);
                assert!(sys > dia + 15.0 && (45.0..=130.0).contains(&pulse), "{r:?}");
                assert_eq!(sys.fract(), 0.0);
                let since = model.person.schedule.since_wake(m).expect("woke");
                if since < 60 {
                    morning.push(sys);
                } else {
                    evening.push(sys);
                }
                if model.hypertensive() {
                    high.push(sys);
                } else {
                    normal.push(sys);
                }
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            surges.push(mean(&morning) - mean(&evening));
        }
        // Noise hides a small surge in one person's week, not in sixty persons'.
        let surge = surges.iter().sum::<f64>() / surges.len() as f64;
        assert!(surge > 8.0, "morning surge {surge}");
        assert!(
            surges.iter().filter(|&&s| s > 0.0).count() > 50,
            "{surges:?}"
        );
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&high) > 145.0 && mean(&normal) < 135.0);
        assert!(!high.is_empty() && !normal.is_empty());
    }

    #[test]
    fn same_seed_same_readings() {
        let (mut a, mut b) = (BpModel::new(4), BpModel::new(4));
        for h in 0..48 {
            let at = jst(h * 60);
            assert_eq!(systolic(&a.sample(at)), systolic(&b.sample(at)));
        }
    }
}
