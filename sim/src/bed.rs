//! A bed sensor under one person's mattress: sleep stages in 90-minute cycles (light, deep,
//! light, REM; more deep sleep early in the night, more REM late), and heart rate, breathing
//! rate and movement that follow the stage, around the person's own baselines, with slow drift
//! and measurement noise.
//!
//! The timeline (who is in bed, which stage) is hashed from (seed, minute), so it does not
//! depend on how often the model is sampled; only measurement noise is drawn in sequence.

use std::f64::consts::TAU;

use jiff::Timestamp;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::hash::{gaussian, mix, smooth, unit};
use super::schedule::{local_minute, Chronotype, InBed, Kind, Schedule, DAY_MIN};
use kenko_devices::catalogue::SleepStage;

/// Plausibility bounds the model never leaves.
const HR_BOUNDS: (f64, f64) = (35.0, 140.0);
const RR_BOUNDS: (f64, f64) = (6.0, 30.0);

/// One reading; the vitals are `None` while the bed is empty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BedReading {
    pub occupied: bool,
    /// Beats per minute.
    pub heart_rate: Option<f64>,
    /// Breaths per minute.
    pub respiratory_rate: Option<f64>,
    /// Body movements per minute.
    pub movement: Option<u32>,
    pub stage: Option<SleepStage>,
}

impl BedReading {
    const EMPTY: BedReading = BedReading {
        occupied: false,
        heart_rate: None,
        respiratory_rate: None,
        movement: None,
        stage: None,
    };
}

/// A person and their bed sensor. Deterministic from its seed: two models with the same seed
/// sampled at the same times give the same readings.
#[derive(Debug, Clone)]
pub struct BedModel {
    seed: u64,
    schedule: Schedule,
    /// Heart rate lying awake in bed.
    hr_awake: f64,
    /// Breathing rate lying awake in bed.
    rr_awake: f64,
    /// Length of one sleep cycle, minutes.
    cycle_min: f64,
    /// How much deep sleep this person gets, relative to a young adult.
    deep_share: f64,
    /// Chance that a five-minute slot of sleep is a brief awakening.
    awakenings: f64,
    noise: SmallRng,
}

impl BedModel {
    pub fn new(seed: u64) -> BedModel {
        let schedule = Schedule::new(seed);
        let mut rng = SmallRng::seed_from_u64(mix(seed ^ 0x006b_656e_6b6f));
        let (deep_share, awakenings) = match schedule.chronotype() {
            Chronotype::Elderly | Chronotype::Bedridden => (0.6, 0.06),
            _ => (1.0, 0.025),
        };
        BedModel {
            seed,
            hr_awake: rng.random_range(64.0..76.0),
            rr_awake: rng.random_range(14.0..17.0),
            cycle_min: rng.random_range(85.0..100.0),
            deep_share,
            awakenings,
            schedule,
            noise: rng,
        }
    }

    /// The model that [`run()`](super::run()) gives device number `n` (1-based) for `seed`.
    /// Consecutive device numbers get consecutive model seeds, so any 20 devices include the
    /// whole mix of [`Chronotype`]s.
    pub fn for_device(seed: u64, n: usize) -> BedModel {
        BedModel::new(super::person::person_seed(seed, n))
    }

    pub fn chronotype(&self) -> Chronotype {
        self.schedule.chronotype()
    }

    /// The sleep stage at `at` from the model's own timeline, or `None` while the bed is empty.
    /// Pure: draws no noise, so it may be asked in any order without changing the readings.
    pub fn stage_at(&self, at: Timestamp) -> Option<SleepStage> {
        self.stage_in_minute(local_minute(at))
    }

    /// The stage during local minute `minute` (see [`BedModel::stage_at`]).
    pub(crate) fn stage_in_minute(&self, minute: i64) -> Option<SleepStage> {
        let bed = self.schedule.in_bed(minute)?;
        Some(self.stage(minute, &bed))
    }

    /// Heart rate lying awake in bed: the person's resting pulse.
    pub(crate) fn resting_heart_rate(&self) -> f64 {
        self.hr_awake
    }

    pub(crate) fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The reading at `at`.
    pub fn sample(&mut self, at: Timestamp) -> BedReading {
        let minute = local_minute(at);
        let Some(bed) = self.schedule.in_bed(minute) else {
            return BedReading::EMPTY;
        };
        let stage = self.stage(minute, &bed);
        // Getting into or out of bed, or back from the bathroom, moves a lot and raises the pulse.
        let stirring = (bed.entered && bed.since < 3)
            || (bed.leaves && bed.until < 3)
            || bed.since_back.is_some_and(|m| m < 3);
        // Fractional local minutes, for drift that wanders smoothly between samples.
        let t = at.as_millisecond() as f64 / 60_000.0;
        let (hr, rr) = self.vitals(stage, stirring, minute, t);
        BedReading {
            occupied: true,
            heart_rate: Some(hr),
            respiratory_rate: Some(rr),
            movement: Some(self.movement(stage, stirring, bed.kind)),
            stage: Some(stage),
        }
    }

    fn stage(&self, minute: i64, bed: &InBed) -> SleepStage {
        // Awake for the last minutes before getting up, and for a while after coming back.
        if bed.until <= 5 || bed.since_back.is_some_and(|m| m < 8) {
            return SleepStage::Awake;
        }
        if bed.kind == Kind::Rest {
            // Lying awake, dozing off in some ten-minute slots.
            return if unit(self.seed, minute.div_euclid(10), 42) < 0.35 {
                SleepStage::Light
            } else {
                SleepStage::Awake
            };
        }
        // Falling asleep takes 10–25 minutes.
        let latency = 10 + (15.0 * unit(self.seed, bed.start, 40)) as i64;
        if bed.since < latency || unit(self.seed, minute.div_euclid(5), 41) < self.awakenings {
            return SleepStage::Awake;
        }
        if bed.kind == Kind::Nap {
            return SleepStage::Light;
        }
        let asleep = (bed.since - latency) as f64 / self.cycle_min;
        let cycle = asleep.floor();
        let phase = asleep - cycle;
        // Deep sleep dominates the early cycles, REM the late ones.
        let deep = 0.42 * 0.6f64.powf(cycle) * self.deep_share;
        let rem = (0.12 + 0.07 * cycle).min(0.4);
        let light_before = (1.0 - deep - rem) / 2.0;
        if phase < light_before {
            SleepStage::Light
        } else if phase < light_before + deep {
            SleepStage::Deep
        } else if phase < 1.0 - rem {
            SleepStage::Light
        } else {
            SleepStage::Rem
        }
    }

    /// Heart rate and breathing rate, per minute.
    fn vitals(&mut self, stage: SleepStage, stirring: bool, minute: i64, t: f64) -> (f64, f64) {
        let seed = self.seed;
        // Stage offsets from lying awake; REM wanders quickly (irregular heart and breathing).
        let (hr_stage, hr_noise, rr_stage, rr_noise) = match stage {
            SleepStage::Awake if stirring => (6.0, 2.0, 1.5, 0.5),
            SleepStage::Awake => (0.0, 1.5, 0.0, 0.4),
            SleepStage::Light => (-11.0, 1.0, -2.5, 0.3),
            SleepStage::Deep => (-17.0, 0.6, -3.3, 0.2),
            SleepStage::Rem => (
                -4.0 + 4.0 * smooth(seed, t, 3.0, 50),
                2.0,
                -1.8 + 1.2 * smooth(seed, t, 2.0, 51),
                0.6,
            ),
        };
        // Circadian rhythm: pulse lowest around 04:00, highest around 16:00.
        let hour_angle = (minute.rem_euclid(DAY_MIN) - 16 * 60) as f64 / DAY_MIN as f64 * TAU;
        let circadian = 1.5 * hour_angle.cos();
        let hr = self.hr_awake
            + hr_stage
            + circadian
            + 2.5 * smooth(seed, t, 45.0, 52)
            + hr_noise * gaussian(&mut self.noise);
        let rr = self.rr_awake
            + rr_stage
            + 0.6 * smooth(seed, t, 60.0, 53)
            + rr_noise * gaussian(&mut self.noise);
        (
            hr.clamp(HR_BOUNDS.0, HR_BOUNDS.1),
            rr.clamp(RR_BOUNDS.0, RR_BOUNDS.1),
        )
    }

    /// Body movements per minute.
    fn movement(&mut self, stage: SleepStage, stirring: bool, kind: Kind) -> u32 {
        let rng = &mut self.noise;
        match stage {
            _ if stirring => rng.random_range(8..=20),
            SleepStage::Awake if kind == Kind::Rest => rng.random_range(1..=6),
            SleepStage::Awake => rng.random_range(2..=10),
            // Mostly still, with the odd turn.
            SleepStage::Light => rng.random_range(0..=3).min(rng.random_range(0..=3)),
            SleepStage::Deep => u32::from(rng.random_bool(0.08)),
            // Muscles are slack in REM; only twitches.
            SleepStage::Rem => u32::from(rng.random_bool(0.25)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::tests::jst;

    /// Every minute of `days` days from local midnight.
    fn minutes(days: i64) -> impl Iterator<Item = Timestamp> {
        (0..days * DAY_MIN).map(jst)
    }

    #[test]
    fn same_seed_same_readings() {
        let (mut a, mut b) = (BedModel::new(7), BedModel::new(7));
        let mut c = BedModel::new(8);
        let mut differs = false;
        for at in minutes(1).step_by(7) {
            let ra = a.sample(at);
            assert_eq!(ra, b.sample(at));
            differs |= ra != c.sample(at);
        }
        assert!(differs, "another seed, another person");
    }

    #[test]
    fn the_timeline_does_not_depend_on_the_sampling_rate() {
        let (mut often, mut rarely) = (BedModel::new(3), BedModel::new(3));
        for (i, at) in minutes(2).enumerate() {
            let r = often.sample(at);
            if i % 13 == 0 {
                let s = rarely.sample(at);
                assert_eq!((r.occupied, r.stage), (s.occupied, s.stage), "at {at}");
            }
        }
    }

    #[test]
    fn at_least_a_fifth_of_twenty_devices_are_in_bed_at_every_hour() {
        for seed in [1, 2, 42, 2026] {
            let mut models: Vec<BedModel> =
                (1..=20).map(|n| BedModel::for_device(seed, n)).collect();
            // A week, every ten minutes.
            for at in minutes(7).step_by(10) {
                let in_bed = models
                    .iter_mut()
                    .filter_map(|m| m.sample(at).occupied.then_some(()))
                    .count();
                assert!(
                    in_bed >= 4,
                    "seed {seed}: only {in_bed} of 20 in bed at {at}"
                );
            }
        }
        // And BedModel::new over 20 consecutive seeds, on one day at every hour.
        let mut models: Vec<BedModel> = (1..=20).map(BedModel::new).collect();
        for hour in 0..24 {
            let at = jst(hour * 60);
            let in_bed = models
                .iter_mut()
                .filter_map(|m| m.sample(at).occupied.then_some(()))
                .count();
            assert!(in_bed >= 4, "only {in_bed} of 20 in bed at {hour}:00 JST");
        }
    }

    /// Readings of `persons` models over `days` days, every minute, grouped by stage.
    fn by_stage(persons: u64, days: i64) -> [Vec<BedReading>; 4] {
        let mut out: [Vec<BedReading>; 4] = Default::default();
        for seed in 0..persons {
            let mut model = BedModel::new(seed);
            for at in minutes(days) {
                let r = model.sample(at);
                if let Some(stage) = r.stage {
                    out[stage.code() as usize].push(r);
                }
            }
        }
        out
    }

    fn mean(readings: &[BedReading], f: fn(&BedReading) -> Option<f64>) -> f64 {
        let values: Vec<f64> = readings.iter().filter_map(f).collect();
        values.iter().sum::<f64>() / values.len() as f64
    }

    #[test]
    fn vitals_follow_the_stage() {
        let [awake, light, deep, rem] = by_stage(20, 2);
        let hr = |r: &[BedReading]| mean(r, |r| r.heart_rate);
        let rr = |r: &[BedReading]| mean(r, |r| r.respiratory_rate);
        let mv = |r: &[BedReading]| mean(r, |r| r.movement.map(f64::from));
        let ranges = [
            ("awake", &awake, 65.0..75.0, 14.0..17.0),
            ("light", &light, 56.0..63.0, 12.0..14.0),
            ("deep", &deep, 49.0..56.0, 11.5..13.5),
            ("rem", &rem, 62.0..70.0, 12.0..14.5),
        ];
        for (name, readings, hr_range, rr_range) in ranges {
            assert!(readings.len() > 500, "{name}: {} readings", readings.len());
            assert!(
                hr_range.contains(&hr(readings)),
                "{name} hr {}",
                hr(readings)
            );
            assert!(
                rr_range.contains(&rr(readings)),
                "{name} rr {}",
                rr(readings)
            );
        }
        assert!(
            rr(&deep) < rr(&light) && rr(&deep) < rr(&rem),
            "deep breathing is slowest"
        );
        assert!(
            mv(&deep) < 0.2 && mv(&rem) < 0.5,
            "still in deep and REM sleep"
        );
        assert!(mv(&awake) > 3.0 * mv(&light), "restless when awake");
    }

    #[test]
    fn heart_rate_is_more_variable_in_rem_than_in_deep_sleep() {
        let spread = |values: &[f64]| {
            let m = values.iter().sum::<f64>() / values.len() as f64;
            let var = values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / values.len() as f64;
            var.sqrt()
        };
        for seed in 0..10 {
            let mut model = BedModel::new(seed);
            let (mut rem, mut deep) = (vec![], vec![]);
            for at in minutes(2) {
                let r = model.sample(at);
                match (r.stage, r.heart_rate) {
                    (Some(SleepStage::Rem), Some(hr)) => rem.push(hr),
                    (Some(SleepStage::Deep), Some(hr)) => deep.push(hr),
                    _ => {}
                }
            }
            assert!(
                spread(&rem) > 1.5 * spread(&deep),
                "seed {seed}: REM {} deep {}",
                spread(&rem),
                spread(&deep)
            );
        }
    }

    #[test]
    fn heart_rate_falls_in_deep_sleep_for_each_person() {
        for seed in 0..20 {
            let mut model = BedModel::new(seed);
            let (mut deep, mut awake) = (vec![], vec![]);
            for at in minutes(2) {
                let r = model.sample(at);
                match r.stage {
                    Some(SleepStage::Deep) => deep.push(r),
                    Some(SleepStage::Awake) => awake.push(r),
                    _ => {}
                }
            }
            let (deep_hr, awake_hr) = (
                mean(&deep, |r| r.heart_rate),
                mean(&awake, |r| r.heart_rate),
            );
            assert!(
                deep_hr + 10.0 < awake_hr,
                "seed {seed}: deep {deep_hr}, awake {awake_hr}"
            );
        }
    }

    #[test]
    fn values_stay_plausible_and_vitals_come_only_with_occupancy() {
        for seed in 0..20 {
            let mut model = BedModel::new(seed);
            for at in minutes(3) {
                let r = model.sample(at);
                let vitals = [r.heart_rate.is_some(), r.respiratory_rate.is_some()];
                let rest = [r.movement.is_some(), r.stage.is_some()];
                assert!(
                    vitals.iter().chain(&rest).all(|&v| v == r.occupied),
                    "{r:?}"
                );
                if let (Some(hr), Some(rr)) = (r.heart_rate, r.respiratory_rate) {
                    assert!(
                        (35.0..=140.0).contains(&hr) && (6.0..=30.0).contains(&rr),
                        "{r:?}"
                    );
                }
            }
        }
    }

    /// Local minutes at which the first night's sleep cycles of a person end: REM giving way to
    /// light sleep (awakenings and trips out of bed in between do not count as a stage).
    fn cycle_ends(model: &mut BedModel) -> Vec<i64> {
        let mut ends: Vec<i64> = vec![];
        let mut last = None;
        for m in 18 * 60..DAY_MIN + 12 * 60 {
            let stage = model.sample(jst(m)).stage;
            if stage == Some(SleepStage::Light) && last == Some(SleepStage::Rem) {
                ends.push(m);
            }
            if stage.is_some_and(|s| s != SleepStage::Awake) {
                last = stage;
            }
        }
        ends
    }

    #[test]
    fn stages_cycle_about_every_ninety_minutes() {
        let regular = (0..40).filter(|&s| Chronotype::from_seed(s) == Chronotype::Regular);
        for seed in regular {
            let mut model = BedModel::new(seed);
            let ends = cycle_ends(&mut model);
            assert!((3..=7).contains(&ends.len()), "seed {seed}: {ends:?}");
            let gaps: Vec<i64> = ends.windows(2).map(|w| w[1] - w[0]).collect();
            let mean_gap = gaps.iter().sum::<i64>() as f64 / gaps.len() as f64;
            assert!(
                (80.0..=105.0).contains(&mean_gap),
                "seed {seed}: REM every {mean_gap} min"
            );
        }
    }

    #[test]
    fn deep_sleep_early_rem_late() {
        for seed in (0..40).filter(|&s| Chronotype::from_seed(s) == Chronotype::Regular) {
            let mut model = BedModel::new(seed);
            let night: Vec<SleepStage> = (18 * 60..DAY_MIN + 12 * 60)
                .filter_map(|m| model.sample(jst(m)).stage)
                .collect();
            let (early, late) = night.split_at(night.len() / 2);
            let count = |half: &[SleepStage], s| half.iter().filter(|&&x| x == s).count();
            assert!(
                2 * count(early, SleepStage::Deep) > 3 * count(late, SleepStage::Deep),
                "seed {seed}"
            );
            assert!(
                count(late, SleepStage::Rem) > count(early, SleepStage::Rem),
                "seed {seed}"
            );
        }
    }
}
