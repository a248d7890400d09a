//! Ground truth of a bed sensor's nights, computed minute by minute from the model's own
//! timeline (never from published payloads), to check the hub's sleep summaries against.

use jiff::Timestamp;

use super::bed::BedModel;
use super::schedule::local_minute;
use kenko_devices::catalogue::SleepStage;

/// A gap of awake-or-out-of-bed minutes this long or shorter between two stretches of sleep is
/// an awakening; a longer one separates two sleep periods (a nap and the night).
pub const AWAKENING_MAX_GAP_MIN: u32 = 60;

/// The true sleep of one window (a sleep day), minute by minute. The hub's sleep summary
/// (`ingest::windows`) follows the same definitions from the stored samples; from a device
/// sampling every minute it finds the same values, give or take the part of a minute that a
/// device's clock skew moves across the window's edges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SleepTruth {
    /// Time in bed: minutes in which the bed was occupied (awake or asleep).
    pub time_in_bed_min: u32,
    /// Sleep time: minutes in light, deep or REM sleep.
    pub sleep_min: u32,
    /// Sleep efficiency, percent: `100 · sleep_min / time_in_bed_min`; none without time in
    /// bed.
    pub efficiency_pct: Option<f64>,
    /// Awakenings: gaps between consecutive stretches of sleep that are at most
    /// [`AWAKENING_MAX_GAP_MIN`] minutes long. A gap is a run of minutes awake or out of bed
    /// between two asleep minutes; awake minutes before the first and after the last asleep
    /// minute of the window are no gap.
    pub awakenings: u32,
}

impl BedModel {
    /// The true sleep of the window `[start, end)`, from every local minute whose start lies
    /// in it (a window on whole minutes covers exactly its minutes). Each minute counts with
    /// its stage from [`BedModel::stage_at`]: in bed or not, asleep (light, deep, REM) or not.
    pub fn sleep_truth(&self, start: Timestamp, end: Timestamp) -> SleepTruth {
        // The first minute starting at or after `start`.
        let first = local_minute(start) + i64::from(start.as_millisecond().rem_euclid(60_000) != 0);
        let last = local_minute(end) + i64::from(end.as_millisecond().rem_euclid(60_000) != 0);
        summarize((first..last).map(|m| self.stage_in_minute(m)))
    }
}

/// The summary of a timeline: one entry per minute, `None` while the bed is empty.
pub(crate) fn summarize(minutes: impl IntoIterator<Item = Option<SleepStage>>) -> SleepTruth {
    let (mut in_bed, mut asleep, mut awakenings) = (0u32, 0u32, 0u32);
    // Minutes awake or out of bed since the last asleep minute, once there was one.
    let mut gap: Option<u32> = None;
    for stage in minutes {
        in_bed += u32::from(stage.is_some());
        if stage.is_some_and(SleepStage::is_asleep) {
            asleep += 1;
            if gap.is_some_and(|g| (1..=AWAKENING_MAX_GAP_MIN).contains(&g)) {
                awakenings += 1;
            }
            gap = Some(0);
        } else if let Some(g) = &mut gap {
            *g += 1;
        }
    }
    SleepTruth {
        time_in_bed_min: in_bed,
        sleep_min: asleep,
        efficiency_pct: (in_bed > 0).then(|| 100.0 * f64::from(asleep) / f64::from(in_bed)),
        awakenings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::tests::jst;
    use crate::schedule::DAY_MIN;
    use crate::Chronotype;
    use SleepStage::{Awake as W, Deep as D, Light as L, Rem as R};

    /// Runs of (stage, minutes); `None` is out of bed.
    fn timeline(runs: &[(Option<SleepStage>, usize)]) -> Vec<Option<SleepStage>> {
        runs.iter()
            .flat_map(|&(s, n)| std::iter::repeat_n(s, n))
            .collect()
    }

    #[test]
    fn a_hand_built_night() {
        let night = timeline(&[
            (None, 30),
            (Some(W), 15), // falling asleep: no awakening
            (Some(L), 40),
            (Some(D), 50),
            (Some(W), 5), // awakening 1
            (Some(L), 30),
            (None, 6), // to the bathroom and back: awakening 2
            (Some(W), 4),
            (Some(R), 20),
            (Some(W), 61), // too long: a new sleep period, no awakening
            (Some(L), 10),
            (Some(W), 10), // awake before getting up: no gap
            (None, 100),
        ]);
        let truth = summarize(night);
        assert_eq!(
            truth.time_in_bed_min,
            15 + 40 + 50 + 5 + 30 + 4 + 20 + 61 + 10 + 10
        );
        assert_eq!(truth.sleep_min, 40 + 50 + 30 + 20 + 10);
        assert_eq!(truth.awakenings, 2);
        let efficiency = 100.0 * 150.0 / 245.0;
        assert!((truth.efficiency_pct.expect("in bed") - efficiency).abs() < 1e-9);
    }

    #[test]
    fn a_gap_of_exactly_an_hour_is_an_awakening() {
        let night = timeline(&[(Some(L), 5), (Some(W), 30), (None, 30), (Some(D), 5)]);
        assert_eq!(summarize(night).awakenings, 1);
        let night = timeline(&[(Some(L), 5), (Some(W), 31), (None, 30), (Some(D), 5)]);
        assert_eq!(summarize(night).awakenings, 0);
        let empty = summarize(timeline(&[(None, 1440)]));
        assert_eq!((empty.time_in_bed_min, empty.efficiency_pct), (0, None));
    }

    #[test]
    fn the_models_nights_agree_with_its_own_timeline() {
        for seed in 0..20 {
            let model = BedModel::new(seed);
            // Noon to noon: one sleep day.
            let (start, end) = (jst(12 * 60), jst(DAY_MIN + 12 * 60));
            let truth = model.sleep_truth(start, end);
            let stages: Vec<Option<SleepStage>> = (12 * 60..DAY_MIN + 12 * 60)
                .map(|m| model.stage_at(jst(m)))
                .collect();
            assert_eq!(truth, summarize(stages.clone()));
            assert_eq!(
                truth.time_in_bed_min as usize,
                stages.iter().flatten().count()
            );
            // A sleeper's night: hours in bed, mostly asleep.
            if model.chronotype() == Chronotype::Regular {
                assert!(
                    (300..=630).contains(&truth.time_in_bed_min),
                    "seed {seed}: {truth:?}"
                );
                assert!(
                    truth.efficiency_pct.is_some_and(|e| e > 70.0),
                    "seed {seed}: {truth:?}"
                );
            }
            // Sub-minute edges: a window starting mid-minute skips that minute.
            let shifted = model.sleep_truth(
                start + jiff::SignedDuration::from_secs(1),
                end + jiff::SignedDuration::from_secs(1),
            );
            let later: Vec<Option<SleepStage>> = (12 * 60 + 1..DAY_MIN + 12 * 60 + 1)
                .map(|m| model.stage_at(jst(m)))
                .collect();
            assert_eq!(shifted, summarize(later));
        }
    }

    #[test]
    fn stage_at_does_not_disturb_the_readings() {
        let (mut a, mut b) = (BedModel::new(4), BedModel::new(4));
        for m in (0..DAY_MIN).step_by(9) {
            let _ = a.sleep_truth(jst(0), jst(DAY_MIN));
            assert_eq!(a.sample(jst(m)), b.sample(jst(m)));
        }
    }
}
