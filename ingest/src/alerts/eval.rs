//! Alert rules evaluated per citizen as observations arrive, in the write-ahead log's order.
//!
//! - `below` / `above` with `for_min`: a run starts at the first reading past the threshold
//!   and ends at the next reading that is not; the alert is raised once per run, by the
//!   reading that makes the run last `for_min` (the first reading when it is 0).
//! - `silent_h`: raised once when no reading of the metric came for that long after the
//!   latest one (checked by [`Evaluator::tick`]); a new reading ends the silence.
//! - `rising_by` over `over_days`: when a citizen's first reading of a new (UTC) day comes,
//!   the mean of the daily means of the `over_days` whole days before it is compared with
//!   that of the `over_days` days before those; raised once when it is higher by at least
//!   `rising_by` (each window needs data on half its days), and again only after a day on
//!   which it was not.
//!
//! A reading older than the latest one seen for its run or silence is late and changes
//! nothing; a reading flagged implausible is a device's error, not the citizen's state, and
//! is left out.

use std::collections::HashMap;
use std::sync::Arc;

use kenko_config::Condition;
use kenko_devices::Metric;

use crate::observation::{flags, Observation};

/// A compiled alert rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: Arc<str>,
    pub metric: Metric,
    pub condition: Condition,
    /// How long a below/above run must last, in ms.
    pub for_ms: i64,
}

/// A rule's condition met for a citizen.
#[derive(Debug, Clone, PartialEq)]
pub struct Raised {
    /// Index of the rule.
    pub rule: usize,
    pub citizen: Arc<str>,
    pub device: Arc<str>,
    /// When the condition began: the run's first reading, or the last reading before the
    /// silence.
    pub started_ms: i64,
    /// The event time the alert is about: the reading that raised it, or for a silence the
    /// last reading.
    pub event_ms: i64,
    /// The earliest event time the alert rests on (a trend's compared days begin before the
    /// rising week): consent must cover it too.
    pub since_ms: i64,
    /// The reading that raised it (none for a silence).
    pub value: Option<f64>,
}

/// A citizen's readings under a below/above rule: the latest reading's time (an older one
/// is late and changes nothing, even after a run ended), and the run past the threshold
/// going on, if one is: its start and whether it raised.
#[derive(Debug)]
struct Run {
    latest_ms: i64,
    run: Option<(i64, bool)>,
}

/// A citizen's daily sums and counts for a trend rule: the days it compares, no more.
#[derive(Debug, Default)]
struct Trend {
    days: std::collections::BTreeMap<i64, (f64, u32)>,
    raised: bool,
}

const DAY_MS: i64 = 86_400_000;

#[derive(Debug)]
struct Seen {
    latest_ms: i64,
    device: Arc<str>,
    raised: bool,
}

/// The rules and each citizen's state under them.
#[derive(Debug, Default)]
pub struct Evaluator {
    rules: Vec<Rule>,
    runs: HashMap<(usize, Arc<str>), Run>,
    seen: HashMap<(usize, Arc<str>), Seen>,
    trends: HashMap<(usize, Arc<str>), Trend>,
}

impl Evaluator {
    pub fn new(rules: Vec<Rule>) -> Evaluator {
        Evaluator {
            rules,
            ..Evaluator::default()
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Takes one observation; adds what it raises to `out`.
    pub fn observe(&mut self, o: &Observation, out: &mut Vec<Raised>) {
        if o.flags & flags::IMPLAUSIBLE != 0 {
            return;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.metric != o.metric {
                continue;
            }
            let key = (i, o.citizen.clone());
            match rule.condition {
                Condition::Below(limit) => {
                    track_run(&mut self.runs, key, o, o.value < limit, rule.for_ms, out)
                }
                Condition::Above(limit) => {
                    track_run(&mut self.runs, key, o, o.value > limit, rule.for_ms, out)
                }
                Condition::Rising { by, days } => {
                    let trend = self.trends.entry(key).or_default();
                    if let Some((started_ms, since_ms)) = track_trend(trend, o, by, days) {
                        out.push(Raised {
                            rule: i,
                            citizen: o.citizen.clone(),
                            device: o.device.clone(),
                            started_ms,
                            event_ms: o.time_ms,
                            since_ms,
                            value: Some(o.value),
                        });
                    }
                }
                Condition::Silent(_) => {
                    let seen = self.seen.entry(key).or_insert(Seen {
                        latest_ms: o.time_ms,
                        device: o.device.clone(),
                        raised: false,
                    });
                    if o.time_ms >= seen.latest_ms {
                        seen.latest_ms = o.time_ms;
                        seen.device = o.device.clone();
                        seen.raised = false;
                    }
                }
            }
        }
    }

    /// Forgets all the rules' state of `citizen` (an erasure).
    pub fn forget(&mut self, citizen: &str) {
        self.runs.retain(|(_, c), _| &**c != citizen);
        self.seen.retain(|(_, c), _| &**c != citizen);
        self.trends.retain(|(_, c), _| &**c != citizen);
    }

    /// Raises the silences that have lasted their rule's time by `now_ms`.
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<Raised>) {
        for ((rule, citizen), seen) in &mut self.seen {
            let Condition::Silent(quiet_ms) = self.rules[*rule].condition else {
                continue;
            };
            if !seen.raised && now_ms - seen.latest_ms >= quiet_ms {
                seen.raised = true;
                out.push(Raised {
                    rule: *rule,
                    citizen: citizen.clone(),
                    device: seen.device.clone(),
                    started_ms: seen.latest_ms,
                    event_ms: seen.latest_ms,
                    since_ms: seen.latest_ms,
                    value: None,
                });
            }
        }
    }
}

/// One reading of a trend rule: added to its day; on the first reading of a new day, the
/// whole days before are compared. When it raises: the start of the rising days, and of the
/// days they were compared with.
fn track_trend(trend: &mut Trend, o: &Observation, by: f64, days: u32) -> Option<(i64, i64)> {
    let day = o.time_ms.div_euclid(DAY_MS);
    let span = i64::from(days);
    let newest = trend.days.keys().next_back().copied();
    let entry = trend.days.entry(day).or_insert((0.0, 0));
    entry.0 += o.value;
    entry.1 += 1;
    // Only the two windows before the newest day matter.
    let keep_from = trend.days.keys().next_back().copied().unwrap_or(day) - 2 * span;
    trend.days.retain(|d, _| *d >= keep_from);
    if newest.is_none_or(|n| day <= n) {
        return None; // not a new day: nothing closed
    }
    let mean_of = |from: i64, to: i64| {
        let means: Vec<f64> = trend
            .days
            .range(from..to)
            .map(|(_, (sum, n))| sum / f64::from(*n))
            .collect();
        let enough = means.len() as i64 * 2 >= span;
        (enough && !means.is_empty()).then(|| means.iter().sum::<f64>() / means.len() as f64)
    };
    let (recent, before) = (
        mean_of(day - span, day),
        mean_of(day - 2 * span, day - span),
    );
    let rising = matches!((recent, before), (Some(r), Some(b)) if r - b >= by);
    if !rising {
        trend.raised = false;
        return None;
    }
    if trend.raised {
        return None;
    }
    trend.raised = true;
    Some(((day - span) * DAY_MS, (day - 2 * span) * DAY_MS))
}

/// One reading of a below/above rule: starts, extends, raises or ends the citizen's run.
fn track_run(
    runs: &mut HashMap<(usize, Arc<str>), Run>,
    key: (usize, Arc<str>),
    o: &Observation,
    past: bool,
    for_ms: i64,
    out: &mut Vec<Raised>,
) {
    let rule = key.0;
    let track = runs.entry(key.clone()).or_insert(Run {
        latest_ms: o.time_ms,
        run: None,
    });
    if o.time_ms < track.latest_ms {
        return; // late: changes nothing
    }
    track.latest_ms = o.time_ms;
    if !past {
        track.run = None;
        return;
    }
    let (started_ms, raised) = track.run.get_or_insert((o.time_ms, false));
    if !*raised && o.time_ms - *started_ms >= for_ms {
        *raised = true;
        out.push(Raised {
            rule,
            citizen: key.1,
            device: o.device.clone(),
            started_ms: *started_ms,
            event_ms: o.time_ms,
            since_ms: *started_ms,
            value: Some(o.value),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn rule(metric: Metric, condition: Condition, for_min: i64) -> Rule {
        Rule {
            name: Arc::from("r"),
            metric,
            condition,
            for_ms: for_min * MIN,
        }
    }

    fn reading(citizen: &str, metric: Metric, minute: i64, value: f64) -> Observation {
        Observation {
            citizen: Arc::from(citizen),
            device: Arc::from(format!("dev-{citizen}").as_str()),
            metric,
            value,
            time_ms: minute * MIN,
            received_ms: minute * MIN,
            seq: 0,
            flags: 0,
        }
    }

    fn run(eval: &mut Evaluator, readings: &[Observation]) -> Vec<Raised> {
        let mut out = Vec::new();
        for r in readings {
            eval.observe(r, &mut out);
        }
        out
    }

    fn spo2(citizen: &str, values: &[(i64, f64)]) -> Vec<Observation> {
        values
            .iter()
            .map(|&(m, v)| reading(citizen, Metric::Spo2, m, v))
            .collect()
    }

    #[test]
    fn below_for_five_minutes_raises_once_when_the_run_has_lasted() {
        let mut eval = Evaluator::new(vec![rule(Metric::Spo2, Condition::Below(90.0), 5)]);
        let out = run(
            &mut eval,
            &spo2(
                "c",
                &[
                    (0, 95.0),
                    (1, 89.0),
                    (3, 88.0),
                    (5, 87.0),
                    (6, 86.0),
                    (7, 85.0),
                    (8, 84.0),
                ],
            ),
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].started_ms, out[0].event_ms), (MIN, 6 * MIN));
        assert_eq!(out[0].value, Some(86.0));
        assert_eq!(&*out[0].device, "dev-c");
    }

    #[test]
    fn a_reading_back_in_range_ends_the_run_and_a_new_run_raises_again() {
        let mut eval = Evaluator::new(vec![rule(Metric::Spo2, Condition::Below(90.0), 2)]);
        let out = run(
            &mut eval,
            &spo2(
                "c",
                &[
                    (0, 89.0),
                    (1, 88.0),
                    (2, 95.0),
                    (3, 88.0),
                    (4, 88.0),
                    (5, 88.0),
                    (6, 87.0),
                ],
            ),
        );
        assert_eq!(
            out.len(),
            1,
            "the run at 0–1 ended at 2 before lasting 2 min: {out:?}"
        );
        assert_eq!(out[0].started_ms, 3 * MIN);
        let again = run(&mut eval, &spo2("c", &[(7, 96.0), (8, 80.0), (10, 80.0)]));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].started_ms, 8 * MIN);
    }

    #[test]
    fn a_late_reading_after_a_run_ended_starts_nothing() {
        let mut eval = Evaluator::new(vec![
            rule(Metric::Spo2, Condition::Below(90.0), 5),
            rule(Metric::Spo2, Condition::Below(90.0), 0),
        ]);
        // 89 at 0, back to 95 at 10 (the run ends), then a late 88 from minute 5 and 88 at 11.
        let out = run(
            &mut eval,
            &spo2("c", &[(0, 89.0), (10, 95.0), (5, 88.0), (11, 88.0)]),
        );
        let raised: Vec<(usize, i64)> = out.iter().map(|r| (r.rule, r.started_ms)).collect();
        // Only the 0-minute rule, at 0 and again at 11; never a run "from 5".
        assert_eq!(raised, vec![(1, 0), (1, 11 * MIN)], "{out:?}");
    }

    #[test]
    fn zero_minutes_raises_on_the_first_reading_and_above_works_alike() {
        let mut eval = Evaluator::new(vec![
            rule(Metric::Spo2, Condition::Below(90.0), 0),
            rule(Metric::HeartRate, Condition::Above(120.0), 0),
        ]);
        let mut readings = spo2("c", &[(0, 85.0), (1, 84.0)]);
        readings.push(reading("c", Metric::HeartRate, 2, 121.0));
        readings.push(reading("c", Metric::HeartRate, 3, 120.0));
        let out = run(&mut eval, &readings);
        let rules: Vec<usize> = out.iter().map(|r| r.rule).collect();
        assert_eq!(rules, vec![0, 1]);
    }

    #[test]
    fn citizens_have_runs_of_their_own_and_late_or_implausible_readings_change_nothing() {
        let mut eval = Evaluator::new(vec![rule(Metric::Spo2, Condition::Below(90.0), 2)]);
        let mut readings = spo2("a", &[(0, 88.0), (1, 88.0)]);
        readings.extend(spo2("b", &[(1, 88.0)]));
        // Late, in range: does not end a's run.
        readings.extend(spo2("a", &[(0, 97.0)]));
        let mut glitch = reading("a", Metric::Spo2, 2, 99.0);
        glitch.flags = flags::IMPLAUSIBLE;
        readings.push(glitch);
        readings.extend(spo2("a", &[(2, 88.0)]));
        readings.extend(spo2("b", &[(2, 88.0)]));
        let out = run(&mut eval, &readings);
        let who: Vec<&str> = out.iter().map(|r| &*r.citizen).collect();
        assert_eq!(who, vec!["a"], "b's run lasted 1 minute only: {out:?}");
    }

    #[test]
    fn a_rising_week_raises_once_on_the_day_it_shows_and_a_small_rise_never() {
        let day = 24 * 60;
        let rising = |by: f64| rule(Metric::HeartRate, Condition::Rising { by, days: 7 }, 0);
        let mut eval = Evaluator::new(vec![rising(5.0), rising(10.0)]);
        // 7 days around 60, then 7 days around 66 (two readings a day).
        let mut readings = Vec::new();
        for d in 0..14 {
            let level = if d < 7 { 60.0 } else { 66.0 };
            readings.push(reading("c", Metric::HeartRate, d * day + 60, level - 1.0));
            readings.push(reading("c", Metric::HeartRate, d * day + 600, level + 1.0));
        }
        readings.push(reading("c", Metric::HeartRate, 14 * day + 1, 67.0));
        let out = run(&mut eval, &readings);
        // On day 13 the week before it (days 6-12: one at 60, six at 66) is 5.1 above the
        // week before that (60): the 5 rule raises, the 10 one never does.
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].rule, 0);
        assert_eq!(out[0].started_ms, 6 * day * MIN, "the rising week's start");
        assert_eq!(out[0].event_ms, (13 * day + 60) * MIN);
        let later = run(
            &mut eval,
            &[reading("c", Metric::HeartRate, 15 * day + 1, 67.0)],
        );
        assert!(later.is_empty(), "still rising: raised once");
    }

    #[test]
    fn a_trend_needs_data_on_half_the_days_of_each_week() {
        let day = 24 * 60;
        let mut eval = Evaluator::new(vec![rule(
            Metric::HeartRate,
            Condition::Rising { by: 5.0, days: 7 },
            0,
        )]);
        let mut readings = vec![reading("c", Metric::HeartRate, 2 * day, 60.0)];
        readings.extend((7..14).map(|d| reading("c", Metric::HeartRate, d * day, 70.0)));
        readings.push(reading("c", Metric::HeartRate, 14 * day, 70.0));
        assert!(
            run(&mut eval, &readings).is_empty(),
            "one day of the week before is too few"
        );
    }

    #[test]
    fn silence_is_raised_once_after_its_time_and_a_new_reading_ends_it() {
        let mut eval = Evaluator::new(vec![rule(
            Metric::HeartRate,
            Condition::Silent(24 * 60 * MIN),
            0,
        )]);
        run(&mut eval, &[reading("c", Metric::HeartRate, 10, 60.0)]);
        let mut out = Vec::new();
        eval.tick(10 * MIN + 24 * 60 * MIN - 1, &mut out);
        assert!(out.is_empty(), "not yet");
        eval.tick(10 * MIN + 24 * 60 * MIN, &mut out);
        eval.tick(10 * MIN + 48 * 60 * MIN, &mut out);
        assert_eq!(out.len(), 1, "once: {out:?}");
        assert_eq!((out[0].started_ms, out[0].value), (10 * MIN, None));
        run(&mut eval, &[reading("c", Metric::HeartRate, 3_000, 61.0)]);
        // An erased citizen's silence is not raised.
        eval.forget("c");
        let before = out.len();
        eval.tick(i64::MAX / 2, &mut out);
        assert_eq!(out.len(), before, "forgotten");
        run(&mut eval, &[reading("c", Metric::HeartRate, 3_000, 61.0)]);
        eval.tick(3_000 * MIN + 24 * 60 * MIN, &mut out);
        assert_eq!(out.len(), 2, "a new silence after the new reading");
    }
}
