//! A simulated citizen: what every device of theirs agrees on. The days (when they sleep, when
//! they wake) come from [`Schedule`], and a few lasting traits (age, blood pressure, diabetes,
//! proneness to fever) are hashed from the same seed, so the bed sensor, the wearable and the
//! blood-pressure monitor of citizen-007 describe one person.

use std::f64::consts::TAU;

use super::hash::{mix, unit};
use super::schedule::{Chronotype, Kind, Schedule, DAY_MIN};

/// The seed of citizen `n`'s person for a simulation seeded with `seed`: consecutive citizens
/// get consecutive seeds, so any 20 of them include the whole mix of [`Chronotype`]s.
pub(crate) fn person_seed(seed: u64, n: usize) -> u64 {
    mix(seed).wrapping_add(n as u64)
}

#[derive(Debug, Clone)]
pub(crate) struct Person {
    pub seed: u64,
    pub schedule: Schedule,
    /// Elderly or bedridden: older, with the conditions that come with age more often.
    pub elderly: bool,
    /// High blood pressure: three in five of the elderly, about one in seven of the others.
    pub hypertensive: bool,
    /// Diabetic: a quarter of the elderly, about one in twelve of the others.
    pub diabetic: bool,
    /// Catches a fever now and then (see the thermometer model).
    pub fever_prone: bool,
}

impl Person {
    pub fn new(seed: u64) -> Person {
        let schedule = Schedule::new(seed);
        let elderly = matches!(
            schedule.chronotype(),
            Chronotype::Elderly | Chronotype::Bedridden
        );
        let trait_draw = |key: u64| unit(seed, -1, 1000 + key);
        Person {
            seed,
            hypertensive: trait_draw(1) < if elderly { 0.6 } else { 0.15 },
            diabetic: trait_draw(2) < if elderly { 0.25 } else { 0.08 },
            fever_prone: trait_draw(3) < 0.3,
            elderly,
            schedule,
        }
    }

    pub fn chronotype(&self) -> Chronotype {
        self.schedule.chronotype()
    }

    /// In bed for the night (or the day's main sleep) at local minute `minute`; naps, rests
    /// and a bedridden person's day in bed do not count.
    pub fn in_night(&self, minute: i64) -> bool {
        self.schedule
            .in_bed(minute)
            .is_some_and(|b| b.kind == Kind::Night)
    }

    /// A circadian rhythm in [-1, 1], highest at the person's afternoon (17:00 for day
    /// sleepers; shifted for shift workers, whose body clock follows their days).
    pub fn circadian(&self, minute: i64) -> f64 {
        let peak_hour = match self.chronotype() {
            Chronotype::NightShift => 4,
            Chronotype::LateShift => 7,
            Chronotype::Elderly => 16,
            Chronotype::Regular | Chronotype::Bedridden => 17,
        };
        let angle = (minute.rem_euclid(DAY_MIN) - peak_hour * 60) as f64 / DAY_MIN as f64 * TAU;
        angle.cos()
    }

    /// Local minutes in `[from, until)` at which the person measures something some minutes
    /// (drawn in `[lo, hi)`, per wake and `key`) after waking, unless they are back in bed for
    /// the night by then. Spot-measurement devices build their days from this.
    pub fn after_wakes(&self, from: i64, until: i64, lo: i64, hi: i64, key: u64) -> Vec<i64> {
        self.schedule
            .wakes(from - hi, until)
            .into_iter()
            .map(|w| w + lo + ((hi - lo) as f64 * unit(self.seed, w, key)) as i64)
            .filter(|m| (from..until).contains(m) && !self.in_night(*m))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traits_follow_age() {
        let persons: Vec<Person> = (0..2000).map(Person::new).collect();
        let share = |elderly: bool, f: fn(&Person) -> bool| {
            let group: Vec<&Person> = persons.iter().filter(|p| p.elderly == elderly).collect();
            group.iter().filter(|p| f(p)).count() as f64 / group.len() as f64
        };
        assert!((0.5..0.7).contains(&share(true, |p| p.hypertensive)));
        assert!((0.1..0.2).contains(&share(false, |p| p.hypertensive)));
        assert!((0.18..0.32).contains(&share(true, |p| p.diabetic)));
        assert!((0.04..0.12).contains(&share(false, |p| p.diabetic)));
    }

    #[test]
    fn one_measurement_after_each_wake() {
        for seed in 0..40 {
            let person = Person::new(seed);
            let (from, until) = (DAY_MIN, 11 * DAY_MIN);
            let times = person.after_wakes(from, until, 10, 30, 5);
            let wakes = person.schedule.wakes(from - 30, until);
            // A wake just before `from` may measure after it, one near the end after `until`.
            assert!(
                times.len() + 1 >= wakes.len() && times.len() <= wakes.len(),
                "seed {seed}: {} times, {} wakes",
                times.len(),
                wakes.len()
            );
            assert!(times.windows(2).all(|w| w[0] < w[1]));
            for &m in &times {
                let since = person.schedule.since_wake(m).expect("woke");
                assert!(
                    (10..30).contains(&since),
                    "seed {seed}: {since} min after waking"
                );
            }
        }
    }
}
