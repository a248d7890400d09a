//! A bed sensor under a person's mattress, through their days and nights in Japan Standard
//! Time: going to bed, falling asleep, 90-minute cycles of light, deep and REM sleep, getting up
//! at night, naps; heart and breathing rates and movement that follow the stage.
//!
//! What happens at a given minute is derived from (seed, day, minute) by hashing, so the
//! timeline does not depend on how often it is sampled; only measurement noise is drawn in
//! sequence.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::catalogue::SleepStage;

/// Japan Standard Time has no daylight saving time: UTC+9 all year.
const JST_OFFSET_MIN: i64 = 9 * 60;
const DAY_MIN: i64 = 24 * 60;

/// When a person sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chronotype {
    /// To bed 22:00–00:30, up 06:00–08:30, sometimes an afternoon nap.
    Regular,
    /// Sleeps by day after a night shift (from 07:30–09:30 for 6–7 hours).
    NightShift,
    /// Sleeps in the evening before a late-night shift (from 16:00–17:00 to 22:30–23:30).
    LateShift,
    /// Early to bed (19:00–20:00), early up (04:30–05:30), rests in bed in the afternoon.
    Elderly,
}

impl Chronotype {
    /// Six in ten regular sleepers, two in ten night-shift, one late-shift, one elderly.
    fn from_seed(seed: u64) -> Chronotype {
        match seed % 10 {
            0..=5 => Chronotype::Regular,
            6 | 7 => Chronotype::NightShift,
            8 => Chronotype::LateShift,
            _ => Chronotype::Elderly,
        }
    }
}

/// One reading; the vitals are `None` while the bed is empty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BedReading {
    pub occupied: bool,
    pub heart_rate: Option<f64>,
    pub respiratory_rate: Option<f64>,
    pub movement: Option<u32>,
    pub stage: Option<SleepStage>,
}

/// A person and their bed sensor.
#[derive(Debug, Clone)]
pub struct BedModel {
    seed: u64,
    chronotype: Chronotype,
    resting_hr: f64,
    resting_rr: f64,
    cycle_min: f64,
    noise: SmallRng,
}

/// Where in an episode in bed a minute falls.
#[derive(Debug, Clone, Copy)]
struct InBed {
    /// Minutes since getting into bed.
    since: i64,
    /// Minutes until getting out.
    until: i64,
    /// A long night's sleep (stages cycle) rather than a nap or rest.
    night: bool,
}

impl BedModel {
    pub fn new(seed: u64) -> BedModel {
        let mut rng = SmallRng::seed_from_u64(mix(seed ^ 0x006b_656e_6b6f));
        BedModel {
            seed,
            chronotype: Chronotype::from_seed(seed),
            resting_hr: rng.random_range(56.0..70.0),
            resting_rr: rng.random_range(13.5..16.0),
            cycle_min: rng.random_range(80.0..100.0),
            noise: rng,
        }
    }

    pub fn chronotype(&self) -> Chronotype {
        self.chronotype
    }

    /// The reading at `at`.
    pub fn sample(&mut self, at: Timestamp) -> BedReading {
        let minute = local_minute(at);
        let Some(episode) = self.in_bed(minute) else {
            return BedReading {
                occupied: false,
                heart_rate: None,
                respiratory_rate: None,
                movement: None,
                stage: None,
            };
        };
        let stage = self.stage(minute, episode);
        let (hr_delta, rr_delta, movement) = match stage {
            SleepStage::Awake => (4.0, 1.0, self.noise.random_range(3..12)),
            SleepStage::Light => (-6.0, -1.5, self.noise.random_range(0..4)),
            SleepStage::Deep => (-11.0, -3.0, self.noise.random_range(0..2)),
            SleepStage::Rem => (
                -2.0 + self.noise.random_range(-4.0..4.0),
                -0.5 + self.noise.random_range(-1.5..1.5),
                self.noise.random_range(0..2),
            ),
        };
        // Getting into and out of bed moves a lot.
        let movement = if episode.since < 3 || episode.until < 3 {
            movement + 10
        } else {
            movement
        };
        // A slow drift over the night: lowest in the small hours.
        let drift =
            2.0 * ((minute % DAY_MIN) as f64 / DAY_MIN as f64 * std::f64::consts::TAU).cos();
        let hr = self.resting_hr + hr_delta + drift + self.noise.random_range(-1.5..1.5);
        let rr = self.resting_rr + rr_delta + self.noise.random_range(-0.6..0.6);
        BedReading {
            occupied: true,
            heart_rate: Some(hr.clamp(35.0, 140.0)),
            respiratory_rate: Some(rr.clamp(6.0, 30.0)),
            movement: Some(movement),
            stage: Some(stage),
        }
    }

    /// The episode in bed covering `minute` (local minutes since the epoch), if any.
    fn in_bed(&self, minute: i64) -> Option<InBed> {
        let day = minute.div_euclid(DAY_MIN);
        // Episodes may start the day before and run past midnight.
        for d in [day - 1, day] {
            for (start, end, night) in self.episodes(d) {
                if (start..end).contains(&minute) {
                    if night && self.bathroom_break(minute, start, end) {
                        return None;
                    }
                    return Some(InBed {
                        since: minute - start,
                        until: end - minute,
                        night,
                    });
                }
            }
        }
        None
    }

    /// Episodes in bed that begin on local day `day`: (start, end, is the main sleep).
    fn episodes(&self, day: i64) -> Vec<(i64, i64, bool)> {
        let base = day * DAY_MIN;
        let r = |k: u64| unit(self.seed, day, k);
        let span = |lo: i64, hi: i64, k: u64| lo + ((hi - lo) as f64 * r(k)) as i64;
        let mut out = Vec::with_capacity(2);
        match self.chronotype {
            Chronotype::Regular => {
                let start = base + span(22 * 60, 24 * 60 + 30, 1);
                let end = base + DAY_MIN + span(6 * 60, 8 * 60 + 30, 2);
                out.push((start, end, true));
                if r(3) < 0.3 {
                    let nap = base + span(13 * 60, 15 * 60, 4);
                    out.push((nap, nap + span(20, 60, 5), false));
                }
            }
            Chronotype::NightShift => {
                let start = base + span(7 * 60 + 30, 9 * 60 + 30, 1);
                out.push((start, start + span(6 * 60, 7 * 60, 2), true));
            }
            Chronotype::LateShift => {
                let start = base + span(16 * 60, 17 * 60, 1);
                out.push((start, base + span(22 * 60 + 30, 23 * 60 + 30, 2), true));
            }
            Chronotype::Elderly => {
                let rest = base + span(13 * 60, 13 * 60 + 30, 3);
                out.push((rest, base + span(16 * 60 + 30, 17 * 60 + 30, 4), false));
                let start = base + span(19 * 60, 20 * 60, 1);
                out.push((
                    start,
                    base + DAY_MIN + span(4 * 60 + 30, 5 * 60 + 30, 2),
                    true,
                ));
            }
        }
        out
    }

    /// Up to two short trips out of bed in the middle of a night (3–8 minutes each).
    fn bathroom_break(&self, minute: i64, start: i64, end: i64) -> bool {
        let length = end - start;
        (0..2).any(|k| {
            if unit(self.seed, start, 10 + k) > 0.5 {
                return false;
            }
            let at = start + (length as f64 * (0.3 + 0.5 * unit(self.seed, start, 20 + k))) as i64;
            let lasts = 3 + (5.0 * unit(self.seed, start, 30 + k)) as i64;
            (at..at + lasts).contains(&minute)
        })
    }

    fn stage(&self, minute: i64, episode: InBed) -> SleepStage {
        // Falling asleep takes 10–25 minutes; the last minutes before getting up are awake.
        let latency = 10 + (15.0 * unit(self.seed, minute - episode.since, 40)) as i64;
        if episode.since < latency || episode.until <= 5 {
            return SleepStage::Awake;
        }
        // Brief awakenings: about one five-minute slot in forty.
        if unit(self.seed, minute / 5, 41) < 0.025 {
            return SleepStage::Awake;
        }
        let asleep = (episode.since - latency) as f64;
        if !episode.night {
            // Naps and rests stay shallow.
            return if asleep < 40.0 {
                SleepStage::Light
            } else {
                SleepStage::Awake
            };
        }
        let cycle = (asleep / self.cycle_min).floor();
        let phase = asleep / self.cycle_min - cycle;
        // Deep sleep dominates early cycles, REM the late ones.
        let deep = (0.4 - 0.1 * cycle).max(0.0);
        let rem = (0.1 + 0.06 * cycle).min(0.35);
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
}

/// Minutes since the Unix epoch on JST's wall clock.
fn local_minute(at: Timestamp) -> i64 {
    at.as_second().div_euclid(60) + JST_OFFSET_MIN
}

/// A uniform number in [0, 1) from (seed, a, b).
fn unit(seed: u64, a: i64, b: u64) -> f64 {
    let h = mix(seed ^ mix(a as u64 ^ mix(b.wrapping_add(0x9e37_79b9))));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// splitmix64's finalizer: a good cheap 64-bit mix.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The bed-json-v1 payload of one reading. With `local_time` the event time is sent as a JST
/// wall-clock time with offset, as some vendors do; otherwise as epoch milliseconds.
pub fn payload(reading: &BedReading, seq: u64, at: Timestamp, local_time: bool) -> Vec<u8> {
    let ts = if local_time {
        let zoned = at.to_zoned(TimeZone::fixed(jiff::tz::offset(9)));
        serde_json::json!(zoned.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string())
    } else {
        serde_json::json!(at.as_millisecond())
    };
    let mut body = serde_json::json!({ "ts": ts, "seq": seq, "occ": reading.occupied });
    if let Some(hr) = reading.heart_rate {
        body["hr"] = serde_json::json!(round1(hr));
    }
    if let Some(rr) = reading.respiratory_rate {
        body["rr"] = serde_json::json!(round1(rr));
    }
    if let Some(mv) = reading.movement {
        body["mv"] = serde_json::json!(mv);
    }
    if let Some(stage) = reading.stage {
        body["stage"] = serde_json::json!(stage.name());
    }
    body.to_string().into_bytes()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-24T15:00:00Z is midnight of 2026-11-25 in JST.
    fn jst(day_offset_min: i64) -> Timestamp {
        Timestamp::from_second(
            1_764_000_000 - 1_764_000_000 % 86_400 + 15 * 3600 + day_offset_min * 60,
        )
        .expect("ts")
    }

    #[test]
    fn same_seed_same_night() {
        let (mut a, mut b) = (BedModel::new(7), BedModel::new(7));
        for m in (0..DAY_MIN).step_by(7) {
            let (ra, rb) = (a.sample(jst(m)), b.sample(jst(m)));
            assert_eq!(ra, rb);
        }
    }

    #[test]
    fn most_regular_sleepers_are_in_bed_at_3am_and_up_at_noon() {
        let models: Vec<_> = (0..60)
            .map(BedModel::new)
            .filter(|m| m.chronotype() == Chronotype::Regular)
            .collect();
        let in_bed_at = |minute: i64| {
            models
                .iter()
                .filter(|m| (*m).clone().sample(jst(minute)).occupied)
                .count()
        };
        let (at3, at11) = (in_bed_at(3 * 60), in_bed_at(11 * 60));
        assert!(
            at3 * 10 >= models.len() * 8,
            "{at3} of {} in bed at 03:00",
            models.len()
        );
        assert_eq!(at11, 0, "regular sleepers are up at 11:00");
    }

    #[test]
    fn someone_of_twenty_is_in_bed_at_every_hour() {
        let models: Vec<_> = (1..=20).map(BedModel::new).collect();
        for hour in 0..24 {
            let in_bed = models
                .iter()
                .filter(|m| (*m).clone().sample(jst(hour * 60 + 30)).occupied)
                .count();
            assert!(in_bed >= 2, "only {in_bed} of 20 in bed at {hour}:30 JST");
        }
    }

    #[test]
    fn heart_and_breathing_slow_in_deep_sleep() {
        let mut model = BedModel::new(3);
        let (mut deep, mut awake) = (vec![], vec![]);
        // Two nights, every minute.
        for m in (22 * 60)..(2 * DAY_MIN + 9 * 60) {
            let r = model.sample(jst(m));
            match (r.stage, r.heart_rate, r.respiratory_rate) {
                (Some(SleepStage::Deep), Some(hr), Some(rr)) => deep.push((hr, rr)),
                (Some(SleepStage::Awake), Some(hr), Some(rr)) => awake.push((hr, rr)),
                _ => {}
            }
        }
        let mean = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
            v.iter().map(f).sum::<f64>() / v.len() as f64
        };
        assert!(!deep.is_empty() && !awake.is_empty());
        assert!(
            mean(&deep, |x| x.0) + 8.0 < mean(&awake, |x| x.0),
            "heart rate falls in deep sleep"
        );
        assert!(
            mean(&deep, |x| x.1) + 2.0 < mean(&awake, |x| x.1),
            "breathing slows in deep sleep"
        );
        assert!(deep
            .iter()
            .all(|&(hr, rr)| (35.0..=140.0).contains(&hr) && (6.0..=30.0).contains(&rr)));
    }

    #[test]
    fn stages_cycle_about_every_ninety_minutes() {
        let mut model = BedModel::new(1);
        // Count entries into REM during one night: about one per cycle.
        let (mut rem_entries, mut last) = (0, None);
        for m in (21 * 60)..(DAY_MIN + 9 * 60) {
            let stage = model.sample(jst(m)).stage;
            if stage == Some(SleepStage::Rem) && last != Some(SleepStage::Rem) {
                rem_entries += 1;
            }
            last = stage;
        }
        assert!(
            (3..=7).contains(&rem_entries),
            "{rem_entries} REM periods in a night"
        );
    }

    #[test]
    fn payloads_follow_bed_json_v1() {
        let at = Timestamp::from_millisecond(1_764_050_000_123).expect("ts");
        let reading = BedReading {
            occupied: true,
            heart_rate: Some(58.44),
            respiratory_rate: Some(14.26),
            movement: Some(3),
            stage: Some(SleepStage::Deep),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&payload(&reading, 42, at, false)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"ts": 1_764_050_000_123i64, "seq": 42, "occ": true, "hr": 58.4, "rr": 14.3, "mv": 3, "stage": "deep"})
        );
        let empty = BedReading {
            occupied: false,
            heart_rate: None,
            respiratory_rate: None,
            movement: None,
            stage: None,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&payload(&empty, 1, at, true)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"ts": "2025-11-25T14:53:20.123+09:00", "seq": 1, "occ": false})
        );
    }
}
