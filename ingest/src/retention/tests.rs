use std::collections::BTreeMap;
use std::sync::Arc;

use kenko_config::RetentionConfig;
use kenko_devices::Metric;
use proptest::prelude::*;

use super::*;
use crate::observation::Observation;
use crate::query::{Agg, Query, Row};
use crate::store::PersonalStore;

/// On a whole hour, so that rollup buckets and the cut-off of `raw_days` line up with days.
const NOW: i64 = 1_779_998_400_000;
const AGGS: [Agg; 4] = [Agg::Mean, Agg::Min, Agg::Max, Agg::Count];

fn reading(citizen: &str, metric: Metric, time_ms: i64, value: f64) -> Observation {
    Observation {
        citizen: Arc::from(citizen),
        device: Arc::from(format!("{citizen}-dev")),
        metric,
        value,
        time_ms,
        received_ms: time_ms,
        seq: 0,
        flags: 0,
    }
}

/// The late horizon of these tests: an hour.
const LATE_HORIZON_S: u64 = 3_600;

fn policy(toml_text: &str) -> Policy {
    let config: RetentionConfig = toml::from_str(toml_text).expect("config");
    Policy::from_config(&config, LATE_HORIZON_S).expect("policy")
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: PersonalStore,
    retention: Retention,
}

fn fixture(policy_toml: &str, readings: &[Observation]) -> Fixture {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("personal.db");
    let mut store = PersonalStore::open(&path).expect("store");
    for batch in readings.chunks(10_000) {
        store.write_batch(batch).expect("write");
    }
    let retention = Retention::open(&path, policy(policy_toml)).expect("retention");
    Fixture {
        _dir: dir,
        store,
        retention,
    }
}

fn run(retention: &mut Retention, now_ms: i64) -> PassStats {
    retention.pass(now_ms, &mut |_| true).expect("pass")
}

fn buckets(store: &PersonalStore, metric: Metric, every_ms: i64, agg: Agg) -> Vec<Row> {
    let mut q = Query::new(metric);
    q.every_ms = Some(every_ms);
    q.agg = agg;
    store.query(&q).expect("query")
}

fn buckets_across(store: &PersonalStore, metric: Metric, every_ms: i64, agg: Agg) -> Vec<Row> {
    let mut q = Query::new(metric);
    q.every_ms = Some(every_ms);
    q.agg = agg;
    q.across = true;
    store.query(&q).expect("query")
}

/// What a bucket query must answer, computed over every reading as if none were folded.
fn reference(readings: &[Observation], every_ms: i64, agg: Agg) -> Vec<(i64, String, f64)> {
    reference_by(readings, every_ms, agg, |r| r.citizen.to_string())
}

/// The same, over all citizens at once (`Query::across`).
fn reference_across(readings: &[Observation], every_ms: i64, agg: Agg) -> Vec<(i64, String, f64)> {
    reference_by(readings, every_ms, agg, |_| "*".to_owned())
}

fn reference_by(
    readings: &[Observation],
    every_ms: i64,
    agg: Agg,
    group: impl Fn(&Observation) -> String,
) -> Vec<(i64, String, f64)> {
    let mut groups: BTreeMap<(i64, String), Vec<f64>> = BTreeMap::new();
    for r in readings {
        let bucket = r.time_ms.div_euclid(every_ms) * every_ms;
        groups.entry((bucket, group(r))).or_default().push(r.value);
    }
    groups
        .into_iter()
        .map(|((bucket, citizen), values)| {
            let value = match agg {
                Agg::Mean => values.iter().sum::<f64>() / values.len() as f64,
                Agg::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
                Agg::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                Agg::Count => values.len() as f64,
                other => panic!("the reference computes {AGGS:?}, not {other}"),
            };
            (bucket, citizen, value)
        })
        .collect()
}

fn assert_same(found: &[Row], expected: &[(i64, String, f64)], what: &str) {
    let found: Vec<(i64, String, f64)> = found
        .iter()
        .map(|r| (r.time_ms, r.citizen.clone(), r.value))
        .collect();
    assert_eq!(
        found.len(),
        expected.len(),
        "{what}: {found:?} vs {expected:?}"
    );
    for (f, e) in found.iter().zip(expected) {
        let close = (f.2 - e.2).abs() <= 1e-9 * e.2.abs().max(1.0);
        assert!(f.0 == e.0 && f.1 == e.1 && close, "{what}: {f:?} vs {e:?}");
    }
}

/// Readings of two citizens within the three days before `NOW`, at distinct times per
/// citizen (a repeat is stored once, so the model would count it twice).
fn any_readings() -> impl Strategy<Value = Vec<Observation>> {
    let one = (0..2usize, 0..3 * 86_400i64, 300..1_800i64);
    prop::collection::vec(one, 1..400).prop_map(|picks| {
        let mut seen = std::collections::HashSet::new();
        picks
            .into_iter()
            .filter(|&(who, second, _)| seen.insert((who, second)))
            .map(|(who, second, tenth)| {
                let citizen = ["c1", "c2"][who];
                let time = NOW - 3 * 86_400_000 + second * 1000 + 7;
                reading(citizen, Metric::HeartRate, time, tenth as f64 / 10.0)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Folding never changes the answer of a bucket whose width a rollup level divides, and
    /// raw rows are exactly those not yet past `raw_days`.
    #[test]
    fn folding_keeps_every_answer_a_rollup_level_can_give(readings in any_readings(), now_h in 0..30i64) {
        let mut f = fixture("raw_days = 1", &readings);
        let now = NOW - now_h * 3_600_000;
        let done = run(&mut f.retention, now);
        let cutoff = rollup::bucket_start(now - 86_400_000, HOUR_MS);
        let old: Vec<&Observation> = readings.iter().filter(|r| r.time_ms < cutoff).collect();
        prop_assert_eq!(done.folded, old.len());
        for every in [MINUTE_MS, 5 * MINUTE_MS, HOUR_MS, 2 * HOUR_MS, 24 * HOUR_MS] {
            for agg in AGGS {
                assert_same(
                    &buckets(&f.store, Metric::HeartRate, every, agg),
                    &reference(&readings, every, agg),
                    &format!("every {every} ms, {agg:?}"),
                );
                assert_same(
                    &buckets_across(&f.store, Metric::HeartRate, every, agg),
                    &reference_across(&readings, every, agg),
                    &format!("across citizens, every {every} ms, {agg:?}"),
                );
            }
        }
        let raw = f.store.query(&Query::new(Metric::HeartRate)).expect("raw");
        prop_assert_eq!(raw.len(), readings.len() - old.len());
        prop_assert!(raw.iter().all(|r| r.time_ms >= cutoff));
        // Finer than a minute only raw data answers.
        let recent: Vec<Observation> =
            readings.iter().filter(|r| r.time_ms >= cutoff).cloned().collect();
        assert_same(
            &buckets(&f.store, Metric::HeartRate, 30_000, Agg::Count),
            &reference(&recent, 30_000, Agg::Count),
            "every 30 s",
        );
        // A second pass at the same time finds nothing more to do.
        prop_assert_eq!(run(&mut f.retention, now), PassStats::default());
    }
}

/// One reading a minute of `citizen` over the `days` before `NOW`.
fn minutely(citizen: &str, metric: Metric, days: i64) -> Vec<Observation> {
    (0..days * 1440)
        .map(|m| {
            let time = NOW - days * 86_400_000 + m * MINUTE_MS;
            reading(citizen, metric, time, 50.0 + (m % 40) as f64)
        })
        .collect()
}

#[test]
fn rollups_are_deleted_after_their_own_periods() {
    let readings = minutely("c1", Metric::HeartRate, 6);
    let mut f = fixture(
        "raw_days = 1\nrollup_1m_days = 2\nrollup_1h_days = 4",
        &readings,
    );
    let done = run(&mut f.retention, NOW);
    assert_eq!(done.folded, 5 * 1440);
    // 1-minute rollups of days 2..6 back expire (4 days), 1-hour ones of days 4..6 (2 days).
    assert_eq!(done.expired, 4 * 1440 + 2 * 24);
    let count = |every| -> f64 {
        buckets(&f.store, Metric::HeartRate, every, Agg::Count)
            .iter()
            .map(|r| r.value)
            .sum()
    };
    assert_eq!(
        count(MINUTE_MS),
        2.0 * 1440.0,
        "raw day and a day of 1-minute rollups"
    );
    assert_eq!(
        count(HOUR_MS),
        4.0 * 1440.0,
        "raw day and three days of hourly rollups"
    );
    let hourly = buckets(&f.store, Metric::HeartRate, HOUR_MS, Agg::Count);
    assert_eq!(hourly[0].time_ms, NOW - 4 * 86_400_000);
}

#[test]
fn erasing_a_citizen_deletes_their_rollups_too() {
    let mut readings = minutely("c1", Metric::HeartRate, 3);
    readings.extend(minutely("c2", Metric::HeartRate, 3));
    let mut f = fixture("raw_days = 1", &readings);
    run(&mut f.retention, NOW);
    f.store.erase_citizen("c1").expect("erase");
    let left = buckets(&f.store, Metric::HeartRate, HOUR_MS, Agg::Count);
    assert_eq!(left.len(), 72);
    assert!(left.iter().all(|r| r.citizen == "c2"), "{left:?}");
}

#[test]
fn a_metric_keeps_raw_data_for_its_own_period_and_derived_ones_stay_raw() {
    let mut readings = minutely("c1", Metric::HeartRate, 3);
    readings.extend(minutely("c1", Metric::BodyWeight, 3));
    readings.push(reading(
        "c1",
        Metric::SleepTime,
        NOW - 2 * 86_400_000,
        420.0,
    ));
    let mut f = fixture(
        "raw_days = 1\n[metrics.body_weight]\nraw_days = 2",
        &readings,
    );
    assert_eq!(run(&mut f.retention, NOW).folded, 2 * 1440 + 1440);
    let raw = |metric| f.store.query(&Query::new(metric)).expect("raw").len();
    assert_eq!(raw(Metric::HeartRate), 1440);
    assert_eq!(raw(Metric::BodyWeight), 2 * 1440);
    assert_eq!(raw(Metric::SleepTime), 1);
}

#[test]
fn a_pass_asked_to_stop_stops_between_transactions_and_the_next_goes_on() {
    let readings = minutely("c1", Metric::HeartRate, 3);
    let mut f = fixture("raw_days = 1", &readings);
    let first = f.retention.pass(NOW, &mut |_| false).expect("pass");
    assert_eq!(first.folded, 360, "one slice of six hours");
    let rest = run(&mut f.retention, NOW);
    assert_eq!(first.folded + rest.folded, 2 * 1440);
}

#[test]
fn unknown_and_derived_metrics_in_the_policy_are_refused() {
    let config: RetentionConfig =
        toml::from_str("[metrics.hart_rate]\nraw_days = 9").expect("toml");
    let err = Policy::from_config(&config, LATE_HORIZON_S)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("unknown metric \"hart_rate\""), "{err}");
    let config: RetentionConfig =
        toml::from_str("[metrics.sleep_time]\nraw_days = 9").expect("toml");
    let err = Policy::from_config(&config, LATE_HORIZON_S)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("always kept raw"), "{err}");
    assert!(!policy("").deletes_anything());
}

/// A year of one device's data past a short `raw_days`: raw data is gone, and the year as
/// hourly means is answered from the rollups. One reading a minute here (525,600) to keep the
/// suite quick; `benches/retention.rs` runs the same at 1 Hz.
#[test]
fn a_year_past_raw_days_is_answered_from_rollups() {
    let readings = minutely("c1", Metric::HeartRate, 365);
    let mut f = fixture("raw_days = 1", &readings);
    let done = run(&mut f.retention, NOW);
    assert_eq!(done.folded, 364 * 1440);
    let raw = f.store.query(&Query::new(Metric::HeartRate)).expect("raw");
    assert_eq!(raw.len(), 1440, "only the last day is raw");
    let hourly = buckets(&f.store, Metric::HeartRate, HOUR_MS, Agg::Mean);
    assert_eq!(hourly.len(), 365 * 24);
    assert_same(
        &hourly,
        &reference(&readings, HOUR_MS, Agg::Mean),
        "a year of hourly means",
    );
}

#[test]
fn a_reading_stored_into_a_folded_bucket_is_added_to_its_rollups() {
    let readings = minutely("c1", Metric::HeartRate, 2);
    let mut f = fixture("raw_days = 1", &readings);
    run(&mut f.retention, NOW);
    // A store rebuilt from the write-ahead log, for one, gets old readings raw again.
    let late = reading(
        "c1",
        Metric::HeartRate,
        NOW - 2 * 86_400_000 + 30_000,
        200.0,
    );
    f.store
        .write_batch(std::slice::from_ref(&late))
        .expect("late");
    assert_eq!(run(&mut f.retention, NOW).folded, 1);
    let mut all = readings.clone();
    all.push(late);
    for agg in AGGS {
        assert_same(
            &buckets(&f.store, Metric::HeartRate, MINUTE_MS, agg),
            &reference(&all, MINUTE_MS, agg),
            &format!("{agg:?}"),
        );
    }
}

#[test]
fn window_inputs_stay_raw_while_a_late_reading_may_compute_their_window_again() {
    let mut readings = minutely("c1", Metric::BedOccupancy, 4);
    readings.extend(minutely("c1", Metric::HeartRate, 4));
    let mut f = fixture("raw_days = 1", &readings);
    run(&mut f.retention, NOW);
    let raw = |metric| f.store.query(&Query::new(metric)).expect("raw").len() as i64;
    assert_eq!(raw(Metric::HeartRate), 1440, "a day, as configured");
    // The late horizon (an hour) and two days, on a whole hour.
    let kept_ms = LATE_HORIZON_S as i64 * 1000 + WINDOW_MARGIN_MS;
    assert_eq!(
        raw(Metric::BedOccupancy),
        kept_ms / MINUTE_MS,
        "{kept_ms} ms raw"
    );
}
