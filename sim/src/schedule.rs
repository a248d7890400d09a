//! Who is in bed when: each simulated person's days in Japan Standard Time, as episodes in bed
//! (nights, naps, rests) with short trips out of bed at night.
//!
//! Persons come in a fixed mix of 20 (see [`Chronotype`]), so any 20 consecutive seeds include
//! night-shift workers and bedridden persons, and at least four of any 20 demo devices are in
//! bed at every hour of the day.

use super::hash::unit;

/// Japan Standard Time has no daylight saving time: UTC+9 all year.
const JST_OFFSET_MIN: i64 = 9 * 60;
pub(crate) const DAY_MIN: i64 = 24 * 60;

/// When a person sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chronotype {
    /// To bed 22:00–00:30, up 06:00–08:00, lies down after lunch on about one day in three.
    Regular,
    /// Works nights; sleeps by day, from 08:00–09:00 for 7–8 hours.
    NightShift,
    /// Works the late-night shift (00:30–09:00): sleeps in the evening before it and a little
    /// after it.
    LateShift,
    /// Early to bed (19:00–20:30), early up (04:30–06:00), rests in bed after lunch, gets up
    /// more often at night.
    Elderly,
    /// Needs care and stays in bed, meals included, except for one sitting-up period a day
    /// (in the morning or the early afternoon).
    Bedridden,
}

use Chronotype::{Bedridden as B, Elderly as E, LateShift as L, NightShift as N, Regular as R};

/// Eight regular sleepers in twenty, three night-shift and two late-shift workers, three
/// elderly and four bedridden persons, interleaved so that a few consecutive seeds are mixed too.
/// The bedridden sit at even and odd positions alternately, which splits them between morning
/// and afternoon sitting-up periods.
const MIX: [Chronotype; 20] = [R, N, B, R, E, R, L, B, R, N, E, R, B, L, R, N, E, B, R, R];

impl Chronotype {
    pub(crate) fn from_seed(seed: u64) -> Chronotype {
        MIX[(seed % MIX.len() as u64) as usize]
    }
}

/// What kind of lying in bed an episode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A main sleep: stages cycle.
    Night,
    /// A short lie-down: falls into light sleep.
    Nap,
    /// Hours in bed awake, dozing now and then.
    Rest,
}

#[derive(Debug, Clone, Copy)]
struct Episode {
    start: i64,
    end: i64,
    kind: Kind,
    /// Gets into bed at the start (rather than continuing from the previous episode).
    enters: bool,
    /// Gets out of bed at the end.
    leaves: bool,
}

/// Where in an episode in bed a minute falls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InBed {
    pub kind: Kind,
    /// Local minute the episode started (keys per-episode randomness).
    pub start: i64,
    /// Minutes since the episode started.
    pub since: i64,
    /// Minutes until it ends.
    pub until: i64,
    /// Got into bed at the start of the episode.
    pub entered: bool,
    /// Gets out of bed at its end.
    pub leaves: bool,
    /// Minutes since coming back from a trip out of bed during this episode.
    pub since_back: Option<i64>,
}

/// One person's timeline.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    seed: u64,
    chronotype: Chronotype,
}

impl Schedule {
    pub fn new(seed: u64) -> Schedule {
        Schedule {
            seed,
            chronotype: Chronotype::from_seed(seed),
        }
    }

    pub fn chronotype(&self) -> Chronotype {
        self.chronotype
    }

    /// The episode in bed covering local minute `minute`, or `None` when the bed is empty.
    pub fn in_bed(&self, minute: i64) -> Option<InBed> {
        let episode = self.episode(minute)?;
        let mut since_back = None;
        for (out, back) in self.trips_out(&episode).into_iter().flatten() {
            if (out..back).contains(&minute) {
                return None;
            }
            if minute >= back {
                since_back = Some(minute - back);
            }
        }
        Some(InBed {
            kind: episode.kind,
            start: episode.start,
            since: minute - episode.start,
            until: episode.end - minute,
            entered: episode.enters,
            leaves: episode.leaves,
            since_back,
        })
    }

    /// Out of bed during an episode in bed: a trip to the bathroom at night.
    pub fn on_trip(&self, minute: i64) -> bool {
        self.episode(minute).is_some_and(|e| {
            self.trips_out(&e)
                .into_iter()
                .flatten()
                .any(|(out, back)| (out..back).contains(&minute))
        })
    }

    /// Local minutes in `[from, until)` at which a main sleep (a `Night` episode) ends: when
    /// the person wakes up for the day (or, bedridden, for the morning).
    pub fn wakes(&self, from: i64, until: i64) -> Vec<i64> {
        let mut wakes: Vec<i64> = (from.div_euclid(DAY_MIN) - 1..=until.div_euclid(DAY_MIN))
            .flat_map(|d| self.episodes(d))
            .flatten()
            .filter(|e| e.kind == Kind::Night && (from..until).contains(&e.end))
            .map(|e| e.end)
            .collect();
        wakes.sort_unstable();
        wakes.dedup();
        wakes
    }

    /// Minutes since the person last woke from a main sleep (at most two days back).
    pub fn since_wake(&self, minute: i64) -> Option<i64> {
        self.wakes(minute - 2 * DAY_MIN, minute + 1)
            .last()
            .map(|w| minute - w)
    }

    /// The episode covering `minute`, trips out of bed included.
    fn episode(&self, minute: i64) -> Option<Episode> {
        let day = minute.div_euclid(DAY_MIN);
        // Episodes may start the day before and run past midnight.
        [day - 1, day]
            .into_iter()
            .flat_map(|d| self.episodes(d))
            .flatten()
            .find(|e| (e.start..e.end).contains(&minute))
    }

    /// Episodes in bed that begin on local day `day`, in no particular order.
    fn episodes(&self, day: i64) -> [Option<Episode>; 3] {
        let base = day * DAY_MIN;
        let r = |k: u64| unit(self.seed, day, k);
        // A minute in [lo, hi) drawn for (day, k).
        let at = |d: i64, lo: i64, hi: i64, k: u64| {
            lo + ((hi - lo) as f64 * unit(self.seed, d, k)) as i64
        };
        let h = |hours: i64, minutes: i64| hours * 60 + minutes;
        let lie = |start: i64, end: i64, kind: Kind| {
            Some(Episode {
                start,
                end,
                kind,
                enters: true,
                leaves: true,
            })
        };
        match self.chronotype {
            Chronotype::Regular => {
                let night = lie(
                    base + at(day, h(22, 0), h(24, 30), 1),
                    base + DAY_MIN + at(day, h(6, 0), h(8, 0), 2),
                    Kind::Night,
                );
                let nap = (r(3) < 0.35).then(|| {
                    let start = base + at(day, h(13, 0), h(15, 30), 4);
                    (start, start + at(day, 20, 60, 5))
                });
                [night, nap.and_then(|(s, e)| lie(s, e, Kind::Nap)), None]
            }
            Chronotype::NightShift => {
                let start = base + at(day, h(8, 0), h(9, 0), 1);
                [
                    lie(start, start + at(day, h(7, 0), h(8, 0), 2), Kind::Night),
                    None,
                    None,
                ]
            }
            Chronotype::LateShift => {
                let after_shift = base + at(day, h(10, 0), h(10, 45), 3);
                [
                    lie(
                        after_shift,
                        after_shift + at(day, h(2, 0), h(3, 0), 4),
                        Kind::Night,
                    ),
                    lie(
                        base + at(day, h(16, 0), h(17, 0), 1),
                        base + at(day, h(22, 30), h(23, 30), 2),
                        Kind::Night,
                    ),
                    None,
                ]
            }
            Chronotype::Elderly => {
                let rest = base + at(day, h(12, 30), h(13, 30), 3);
                [
                    lie(rest, rest + at(day, h(1, 30), h(2, 30), 4), Kind::Rest),
                    lie(
                        base + at(day, h(19, 0), h(20, 30), 1),
                        base + DAY_MIN + at(day, h(4, 30), h(6, 0), 2),
                        Kind::Night,
                    ),
                    None,
                ]
            }
            Chronotype::Bedridden => {
                // In bed around the clock: last night's sleep ends where today's rest begins,
                // broken only by sitting up for a while.
                let woke = base + at(day - 1, h(6, 0), h(7, 0), 2);
                let sleeps = base + at(day, h(20, 0), h(21, 0), 1);
                let up = if self.seed.is_multiple_of(2) {
                    base + at(day, h(9, 30), h(11, 0), 3)
                } else {
                    base + at(day, h(13, 0), h(14, 0), 3)
                };
                let back = up + at(day, 45, 90, 4);
                let continued = |start, end, kind, enters, leaves| {
                    Some(Episode {
                        start,
                        end,
                        kind,
                        enters,
                        leaves,
                    })
                };
                [
                    continued(woke, up, Kind::Rest, false, true),
                    continued(back, sleeps, Kind::Rest, true, false),
                    continued(
                        sleeps,
                        base + DAY_MIN + at(day, h(6, 0), h(7, 0), 2),
                        Kind::Night,
                        false,
                        false,
                    ),
                ]
            }
        }
    }

    /// Short trips out of bed (to the bathroom) in the middle of a night: up to two, three for
    /// the elderly, one for a day's sleep after a night shift, 3–8 minutes each, as (out, back)
    /// local minutes.
    fn trips_out(&self, episode: &Episode) -> [Option<(i64, i64)>; 3] {
        let mut trips = [None; 3];
        if episode.kind != Kind::Night || self.chronotype == Chronotype::Bedridden {
            return trips;
        }
        let (count, chance) = match self.chronotype {
            Chronotype::Elderly => (3, 0.6),
            Chronotype::NightShift => (1, 0.4),
            _ => (2, 0.4),
        };
        let length = episode.end - episode.start;
        for (k, trip) in trips.iter_mut().enumerate().take(count) {
            let k = k as u64;
            if unit(self.seed, episode.start, 10 + k) < chance {
                // Spread over the middle of the night, one per part, so trips never overlap.
                let part = (0.2
                    + 0.6 * (k as f64 + unit(self.seed, episode.start, 20 + k)) / count as f64)
                    * length as f64;
                let out = episode.start + part as i64;
                *trip = Some((
                    out,
                    out + 3 + (5.0 * unit(self.seed, episode.start, 30 + k)) as i64,
                ));
            }
        }
        trips
    }
}

/// Minutes since the Unix epoch on JST's wall clock.
pub(crate) fn local_minute(at: jiff::Timestamp) -> i64 {
    at.as_second().div_euclid(60) + JST_OFFSET_MIN
}

/// The instant of local (JST) minute `minute` plus `second` seconds.
pub(crate) fn from_local_minute(minute: i64, second: i64) -> jiff::Timestamp {
    let s = (minute - JST_OFFSET_MIN) * 60 + second;
    jiff::Timestamp::from_second(s).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The Unix minute of local midnight JST starting 2026-11-25 plus `offset_min`.
    pub(crate) fn jst(offset_min: i64) -> jiff::Timestamp {
        let midnight: jiff::Timestamp = "2026-11-24T15:00:00Z".parse().expect("valid");
        midnight + jiff::SignedDuration::from_mins(offset_min)
    }

    fn in_bed(seed: u64, offset_min: i64) -> bool {
        Schedule::new(seed)
            .in_bed(local_minute(jst(offset_min)))
            .is_some()
    }

    #[test]
    fn local_minute_is_jst() {
        assert_eq!(local_minute(jst(0)).rem_euclid(DAY_MIN), 0);
        assert_eq!(
            local_minute(jst(23 * 60 + 10)).rem_euclid(DAY_MIN),
            23 * 60 + 10
        );
    }

    #[test]
    fn twenty_consecutive_seeds_make_the_whole_mix() {
        let count = |c| {
            (100..120)
                .filter(|&s| Chronotype::from_seed(s) == c)
                .count()
        };
        assert_eq!(count(Chronotype::Regular), 8);
        assert_eq!(count(Chronotype::NightShift), 3);
        assert_eq!(count(Chronotype::LateShift), 2);
        assert_eq!(count(Chronotype::Elderly), 3);
        assert_eq!(count(Chronotype::Bedridden), 4);
    }

    #[test]
    fn regular_sleepers_sleep_at_night_and_are_up_late_morning() {
        let regular: Vec<u64> = (0..200)
            .filter(|&s| Chronotype::from_seed(s) == Chronotype::Regular)
            .collect();
        let share = |minute| {
            regular.iter().filter(|&&s| in_bed(s, minute)).count() as f64 / regular.len() as f64
        };
        assert!(share(3 * 60) > 0.85, "at 03:00: {}", share(3 * 60));
        assert!(share(21 * 60) < 0.05, "at 21:00: {}", share(21 * 60));
        assert_eq!(share(11 * 60), 0.0, "at 11:00");
        // Bedtime 22:00–00:30 and up 06:00–08:00: half-way through each window about half.
        assert!(
            (0.3..0.7).contains(&share(23 * 60 + 15)),
            "at 23:15: {}",
            share(23 * 60 + 15)
        );
        assert!(
            (0.3..0.7).contains(&share(7 * 60)),
            "at 07:00: {}",
            share(7 * 60)
        );
        // Some lie down after lunch.
        let napping = regular.iter().filter(|&&s| in_bed(s, 14 * 60 + 30)).count();
        assert!(napping > 0, "nobody lies down after lunch");
    }

    #[test]
    fn night_shift_workers_sleep_by_day() {
        let workers: Vec<u64> = (0..100)
            .filter(|&s| Chronotype::from_seed(s) == Chronotype::NightShift)
            .collect();
        let asleep = |minute| workers.iter().filter(|&&s| in_bed(s, minute)).count();
        assert!(asleep(12 * 60) * 10 >= workers.len() * 8);
        assert_eq!(asleep(2 * 60), 0);
    }

    #[test]
    fn people_get_up_at_night_now_and_then() {
        let trips: usize = (0..40)
            .map(|seed| {
                let s = Schedule::new(seed);
                (0..DAY_MIN * 3)
                    .filter_map(|m| s.in_bed(local_minute(jst(m))))
                    .filter(|b| b.since_back == Some(0))
                    .count()
            })
            .sum();
        // 40 persons, 3 nights, about one trip a night each: well above zero, well below six.
        assert!((30..240).contains(&trips), "{trips} trips out of bed");
    }

    #[test]
    fn regular_sleepers_wake_once_a_morning() {
        for seed in (0..40).filter(|&s| Chronotype::from_seed(s) == Chronotype::Regular) {
            let s = Schedule::new(seed);
            let base = local_minute(jst(0));
            let wakes = s.wakes(base, base + 7 * DAY_MIN);
            assert_eq!(wakes.len(), 7, "seed {seed}");
            for w in wakes {
                let hour = w.rem_euclid(DAY_MIN) / 60;
                assert!((6..8).contains(&hour), "seed {seed}: woke at {hour}");
                assert!(s.in_bed(w - 1).is_some() && s.in_bed(w).is_none());
                assert_eq!(s.since_wake(w + 90), Some(90));
            }
        }
    }

    #[test]
    fn trips_out_of_bed_are_out_of_bed() {
        let mut trips = 0;
        for seed in 0..20 {
            let s = Schedule::new(seed);
            for m in 0..2 * DAY_MIN {
                let m = local_minute(jst(m));
                if s.on_trip(m) {
                    trips += 1;
                    assert!(s.in_bed(m).is_none());
                }
            }
        }
        assert!(trips > 20, "{trips} minutes out on trips");
    }

    #[test]
    fn bedridden_persons_are_in_bed_except_when_sitting_up() {
        let bedridden: Vec<u64> = (0..40)
            .filter(|&s| Chronotype::from_seed(s) == Chronotype::Bedridden)
            .collect();
        for &seed in &bedridden {
            let out = (0..DAY_MIN).filter(|&m| !in_bed(seed, m)).count();
            assert!(
                (45..=90).contains(&out),
                "seed {seed} out of bed {out} minutes"
            );
        }
    }
}
