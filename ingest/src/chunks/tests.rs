//! The store with sealed chunks against a plain model of what was written: whatever
//! sequence of writes (runs, late points, repeats, flagged readings), seals, erasures and
//! retention folds, every answer is the model's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kenko_config::RetentionConfig;
use kenko_devices::Metric;
use proptest::prelude::*;

use super::seal::merge;
use super::*;
use crate::flags::IMPLAUSIBLE;
use crate::observation::Observation;
use crate::query::{Agg, Query, Resume, Row};
use crate::retention::{Policy, Retention};
use crate::store::PersonalStore;

#[test]
fn merging_keeps_the_first_runs_point_at_a_shared_time() {
    let first = vec![(10, 1.0), (30, 3.0)];
    let second = [(5, 0.5), (10, 9.0), (20, 2.0), (40, 4.0)];
    assert_eq!(
        merge(first, &second),
        vec![(5, 0.5), (10, 1.0), (20, 2.0), (30, 3.0), (40, 4.0)]
    );
    assert_eq!(merge(Vec::new(), &second), second.to_vec());
}

#[test]
fn an_hour_is_sealed_two_hours_after_it_ends() {
    let now = 10 * HOUR_MS + 5 * 60_000;
    assert_eq!(sealed_before(now), 8 * HOUR_MS);
    assert_eq!(sealed_before(i64::MIN), i64::MIN);
}

/// A whole hour in 2020: every hour of the tests is long past the wall clock's sealing age.
const T0: i64 = 1_600_000_000_000 - 1_600_000_000_000 % HOUR_MS;
const CITIZENS: [&str; 3] = ["c1", "c2", "c3"];
const DEVICES: [&str; 2] = ["a", "b"];
const METRICS: [Metric; 2] = [Metric::HeartRate, Metric::RespiratoryRate];

/// (citizen, device, metric id, time) → (value, flags): the first write of a key stays.
type Model = BTreeMap<(String, String, u8, i64), (f64, u32)>;

/// A run of readings of one series: `n` points `step_s` apart from `start_s` after T0.
#[derive(Debug, Clone)]
struct Run {
    citizen: usize,
    device: usize,
    metric: usize,
    start_s: i64,
    step_s: i64,
    n: usize,
    base: i64,
    flagged: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Write(Vec<Run>),
    /// A retention pass at T0 plus this many hours: seals the hours two hours before.
    Seal(i64),
    Erase(usize),
}

fn run() -> impl Strategy<Value = Run> {
    (
        0..CITIZENS.len(),
        0..DEVICES.len(),
        0..METRICS.len(),
        0i64..8 * 3_600,
        1i64..=90,
        1usize..150,
        30i64..200,
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(citizen, device, metric, start_s, step_s, n, base, flagged)| Run {
                citizen,
                device,
                metric,
                start_s,
                step_s,
                n,
                base,
                flagged,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => prop::collection::vec(run(), 1..4).prop_map(Op::Write),
        3 => (0i64..12).prop_map(Op::Seal),
        1 => (0..CITIZENS.len()).prop_map(Op::Erase),
    ]
}

fn readings(run: &Run) -> Vec<Observation> {
    let citizen = CITIZENS[run.citizen];
    (0..run.n)
        .map(|k| {
            let k = i64::try_from(k).expect("small");
            let time_ms = T0 + (run.start_s + k * run.step_s) * 1000;
            Observation {
                citizen: Arc::from(citizen),
                device: Arc::from(format!("{citizen}-{}", DEVICES[run.device])),
                metric: METRICS[run.metric],
                value: f64::from(i32::try_from(run.base + k % 7).expect("small")),
                time_ms,
                received_ms: time_ms,
                seq: 0,
                flags: if run.flagged { IMPLAUSIBLE } else { 0 },
            }
        })
        .collect()
}

fn note(model: &mut Model, batch: &[Observation]) {
    for o in batch {
        let key = (
            o.citizen.to_string(),
            o.device.to_string(),
            o.metric.id(),
            o.time_ms,
        );
        model.entry(key).or_insert((o.value, o.flags));
    }
}

fn retention(path: &std::path::Path, raw_days: Option<u32>) -> Retention {
    let config = RetentionConfig {
        raw_days,
        ..RetentionConfig::default()
    };
    Retention::open(path, Policy::from_config(&config, 3_600).expect("policy")).expect("open")
}

fn model_rows(
    model: &Model,
    metric: Metric,
    from: i64,
    to: i64,
) -> Vec<(i64, String, String, f64, u32)> {
    let mut rows: Vec<_> = model
        .iter()
        .filter(|((_, _, m, t), _)| *m == metric.id() && *t >= from && *t < to)
        .map(|((c, d, _, t), &(v, f))| (*t, c.clone(), d.clone(), v, f))
        .collect();
    rows.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
    rows
}

fn as_tuples(rows: &[Row]) -> Vec<(i64, String, String, f64, u32)> {
    rows.iter()
        .map(|r| {
            (
                r.time_ms,
                r.citizen.clone(),
                r.device.clone(),
                r.value,
                r.flags,
            )
        })
        .collect()
}

/// Count, min, max, sum and citizens of one bucket.
type Bucket = (i64, f64, f64, f64, BTreeSet<String>);

/// Per bucket (and citizen and device unless `across`): count, min, max, sum, citizens.
fn model_buckets(
    model: &Model,
    metric: Metric,
    every: i64,
    across: bool,
) -> BTreeMap<(i64, String, String), Bucket> {
    let mut out = BTreeMap::new();
    for ((c, d, m, t), &(v, _)) in model {
        if *m != metric.id() {
            continue;
        }
        let key = if across {
            (bucket_start(*t, every), "*".to_owned(), "*".to_owned())
        } else {
            (bucket_start(*t, every), c.clone(), d.clone())
        };
        let e =
            out.entry(key)
                .or_insert((0, f64::INFINITY, f64::NEG_INFINITY, 0.0, BTreeSet::new()));
        e.0 += 1;
        e.1 = e.1.min(v);
        e.2 = e.2.max(v);
        e.3 += v;
        e.4.insert(c.clone());
    }
    out
}

/// Bucketed answers over everything, or over `range` (which splits chunks at its ends).
fn check_buckets(
    store: &PersonalStore,
    everything: &Model,
    range: Option<(i64, i64)>,
) -> Result<(), TestCaseError> {
    let (from, to) = range.unwrap_or((i64::MIN, i64::MAX));
    let everything: Model = everything
        .iter()
        .filter(|(k, _)| k.3 >= from && k.3 < to)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let everything = &everything;
    for metric in METRICS {
        for every in [15 * 60_000, HOUR_MS, 24 * HOUR_MS] {
            for across in [false, true] {
                let expected = model_buckets(everything, metric, every, across);
                let aggs: &[Agg] = if across {
                    &[Agg::Mean, Agg::Count, Agg::Citizens]
                } else {
                    &[Agg::Mean, Agg::Min, Agg::Max, Agg::Count]
                };
                for &agg in aggs {
                    let mut q = Query::new(metric);
                    q.every_ms = Some(every);
                    q.agg = agg;
                    q.across = across;
                    q.from_ms = range.map(|r| r.0);
                    q.to_ms = range.map(|r| r.1);
                    let got: Vec<(i64, String, String, f64)> = store
                        .query(&q)
                        .expect("bucketed query")
                        .into_iter()
                        .map(|r| (r.time_ms, r.citizen, r.device, r.value))
                        .collect();
                    let want: Vec<(i64, String, String, f64)> = expected
                        .iter()
                        .map(|((b, c, d), (n, lo, hi, sum, citizens))| {
                            let value = match agg {
                                Agg::Mean => sum / *n as f64,
                                Agg::Min => *lo,
                                Agg::Max => *hi,
                                Agg::Count => *n as f64,
                                Agg::Citizens => citizens.len() as f64,
                                Agg::Percentile(_) => unreachable!(),
                            };
                            (*b, c.clone(), d.clone(), value)
                        })
                        .collect();
                    prop_assert_eq!(
                        got.len(),
                        want.len(),
                        "{} every {} {:?} across {}",
                        metric,
                        every,
                        agg,
                        across
                    );
                    for (g, w) in got.iter().zip(&want) {
                        prop_assert_eq!((g.0, &g.1, &g.2), (w.0, &w.1, &w.2));
                        prop_assert!(
                            (g.3 - w.3).abs() <= 1e-9 * w.3.abs().max(1.0),
                            "{:?} != {:?} ({:?})",
                            g,
                            w,
                            agg
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Raw answers: all, a range read page by page, each citizen's latest, and the count.
fn check_raw(
    store: &PersonalStore,
    raw: &Model,
    (from, to): (i64, i64),
) -> Result<(), TestCaseError> {
    for metric in METRICS {
        let all = store.query(&Query::new(metric)).expect("raw query");
        prop_assert_eq!(as_tuples(&all), model_rows(raw, metric, i64::MIN, i64::MAX));

        let mut pages = Vec::new();
        let mut q = Query::new(metric);
        q.from_ms = Some(from);
        q.to_ms = Some(to);
        q.limit = Some(37);
        loop {
            let page = store.query(&q).expect("page");
            let Some(last) = page.last() else { break };
            q.resume = Some(Resume {
                time_ms: last.time_ms,
                citizen: last.citizen.clone(),
                device: last.device.clone(),
                inclusive: false,
            });
            let full = page.len() == 37;
            pages.extend(page);
            if !full {
                break;
            }
        }
        prop_assert_eq!(as_tuples(&pages), model_rows(raw, metric, from, to));

        for citizen in CITIZENS {
            let got = store
                .latest(citizen, metric, from)
                .expect("latest")
                .map(|r| r.time_ms);
            let want = raw
                .iter()
                .filter(|((c, _, m, t), &(_, f))| {
                    c == citizen && *m == metric.id() && *t >= from && f & IMPLAUSIBLE == 0
                })
                .map(|((_, _, _, t), _)| *t)
                .max();
            prop_assert_eq!(got, want, "latest of {} {}", citizen, metric);
        }
    }
    prop_assert_eq!(store.count().expect("count"), raw.len() as u64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sealed_chunks_answer_as_the_rows_would(
        ops in prop::collection::vec(op(), 1..12),
        range in (0i64..10 * 3_600, 0i64..10 * 3_600),
        fold in prop::bool::ANY,
    ) {
        let (_dir, path, mut store) = fresh();
        let mut job = retention(&path, None);
        let mut model = Model::new();
        for op in &ops {
            match op {
                Op::Write(runs) => {
                    let batch: Vec<Observation> = runs.iter().flat_map(readings).collect();
                    store.write_batch(&batch).expect("write");
                    note(&mut model, &batch);
                }
                Op::Seal(hours) => {
                    job.pass(T0 + hours * HOUR_MS, &mut |_| true).expect("pass");
                }
                Op::Erase(c) => {
                    store.erase_citizen(CITIZENS[*c]).expect("erase");
                    model.retain(|(citizen, _, _, _), _| citizen != CITIZENS[*c]);
                }
            }
        }
        let (a, b) = range;
        let window = (T0 + a.min(b) * 1000, T0 + a.max(b) * 1000 + 1);
        check_raw(&store, &model, window)?;
        check_buckets(&store, &model, None)?;
        check_buckets(&store, &model, Some(window))?;

        if fold {
            // A day's raw data kept: everything before T0 + 6 h goes into rollups, from
            // rows and chunks alike, and aggregates still count it.
            let now = T0 + 30 * HOUR_MS;
            retention(&path, Some(1)).pass(now, &mut |_| true).expect("fold");
            let cutoff = now - 24 * HOUR_MS;
            let raw: Model = model.iter().filter(|(k, _)| k.3 >= cutoff).map(|(k, v)| (k.clone(), *v)).collect();
            check_raw(&store, &raw, window)?;
            check_buckets(&store, &model, None)?;
        }
    }
}

/// A new store file in a temporary directory.
fn fresh() -> (tempfile::TempDir, std::path::PathBuf, PersonalStore) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("personal.db");
    let store = PersonalStore::open(&path).expect("store");
    (dir, path, store)
}

/// An hour of one reading a second from T0, plausible, of value 60 and up.
fn steady(citizen: usize, device: usize, metric: usize) -> Run {
    Run {
        citizen,
        device,
        metric,
        start_s: 0,
        step_s: 1,
        n: 3_600,
        base: 60,
        flagged: false,
    }
}

/// Damages every chunk's bit stream (one byte past its header).
const DAMAGE: &str =
    "UPDATE chunks SET data = CAST(substr(data, 1, 60) || x'00' || substr(data, 62) AS BLOB)";

#[test]
fn a_sealed_hour_is_one_chunk_and_its_repeat_is_a_duplicate() {
    let (_dir, path, mut store) = fresh();
    let hour = steady(0, 0, 0);
    let batch = readings(&hour);
    store.write_batch(&batch).expect("write");
    let stats = retention(&path, None)
        .pass(T0 + 3 * HOUR_MS, &mut |_| true)
        .expect("pass");
    assert_eq!(stats.sealed, 3_600);
    let conn = Connection::open(&path).expect("open");
    let (rows, chunks, bytes): (i64, i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM observations), (SELECT count(*) FROM chunks),
                    (SELECT sum(length(data)) FROM chunks)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("counts");
    assert_eq!((rows, chunks), (0, 1));
    assert!(
        bytes < 3_600,
        "an hour of 1 Hz integers takes {bytes} bytes"
    );
    let again = store.write_batch(&batch[..10]).expect("repeat");
    assert_eq!((again.inserted, again.duplicates), (0, 10));
    assert_eq!(store.count().expect("count"), 3_600);
}

#[test]
fn a_few_points_an_hour_stay_rows() {
    let (_dir, path, mut store) = fresh();
    let sparse = Run {
        step_s: 3_600 / (MIN_POINTS as i64 - 1) + 1,
        n: MIN_POINTS,
        base: 14,
        ..steady(1, 1, 1)
    };
    store.write_batch(&readings(&sparse)).expect("write");
    let stats = retention(&path, None)
        .pass(T0 + 12 * HOUR_MS, &mut |_| true)
        .expect("pass");
    assert_eq!(
        stats.sealed, 0,
        "fewer than {MIN_POINTS} points in every hour"
    );
}

/// Rows still in `observations` (not sealed).
fn rows_left(path: &std::path::Path) -> i64 {
    Connection::open(path)
        .expect("open")
        .query_row("SELECT count(*) FROM observations", [], |r| r.get(0))
        .expect("count")
}

#[test]
fn a_repeat_is_caught_whatever_the_clocks_of_the_job_and_the_writer_say() {
    // The hour before the wall clock's, sealed by a pass whose clock runs four hours ahead
    // (a clock set wrong, then put right): the writer's clock would call it recent.
    let now = jiff::Timestamp::now().as_millisecond();
    let hour_start = bucket_start(now, HOUR_MS) - HOUR_MS;
    let (_dir, path, mut store) = fresh();
    let mut hour = readings(&steady(0, 0, 0));
    for o in &mut hour {
        o.time_ms += hour_start - T0;
    }
    store.write_batch(&hour).expect("write");
    let sealed = retention(&path, None)
        .pass(now + 4 * HOUR_MS, &mut |_| true)
        .expect("pass")
        .sealed;
    assert_eq!(sealed, 3_600);
    let again = store.write_batch(&hour).expect("again");
    assert_eq!((again.inserted, again.duplicates), (0, 3_600));
    assert_eq!(store.count().expect("count"), 3_600);
}

#[test]
fn late_points_of_a_sealed_hour_are_merged_into_its_chunk_at_the_next_pass() {
    let (_dir, path, mut store) = fresh();
    let whole = Run {
        step_s: 2,
        n: 1_800,
        ..steady(0, 0, 0)
    };
    store.write_batch(&readings(&whole)).expect("write");
    let mut job = retention(&path, None);
    job.pass(T0 + 3 * HOUR_MS, &mut |_| true).expect("pass");
    assert_eq!(rows_left(&path), 0);
    // The odd seconds arrive late, with a repeat of an even one.
    let late = Run {
        start_s: 1,
        n: 10,
        ..whole.clone()
    };
    let mut batch = readings(&late);
    batch.push(readings(&whole)[5].clone());
    let stats = store.write_batch(&batch).expect("late");
    assert_eq!((stats.inserted, stats.duplicates), (10, 1));
    assert_eq!(rows_left(&path), 10);
    // A pass at an earlier clock still merges them: the late hour was noted.
    let merged = job.pass(T0, &mut |_| true).expect("pass").sealed;
    assert_eq!(merged, 10);
    assert_eq!(rows_left(&path), 0);
    assert_eq!(store.count().expect("count"), 1_810);
    let all = store.query(&Query::new(METRICS[0])).expect("query");
    assert_eq!(all.len(), 1_810);
    assert!(all.windows(2).all(|w| w[0].time_ms < w[1].time_ms));
}

#[test]
fn a_damaged_chunk_stops_neither_the_writer_nor_the_other_series_sealing() {
    let (_dir, path, mut store) = fresh();
    let first = Run {
        step_s: 10,
        n: 360,
        ..steady(0, 0, 0)
    };
    store.write_batch(&readings(&first)).expect("write");
    let mut job = retention(&path, None);
    job.pass(T0 + 3 * HOUR_MS, &mut |_| true).expect("pass");
    let conn = Connection::open(&path).expect("open");
    conn.execute(DAMAGE, []).expect("damage");
    // A late point of the damaged hour is written as a row, with the rest of its batch.
    let second = Run {
        citizen: 1,
        start_s: 3 * 3_600,
        ..first.clone()
    };
    let mut batch = readings(&second);
    batch.extend(readings(&Run {
        start_s: 5,
        n: 1,
        ..first.clone()
    }));
    let stats = store
        .write_batch(&batch)
        .expect("a batch beside a damaged chunk");
    assert_eq!(stats.inserted, 361);
    // The damaged series is skipped; the other is sealed.
    let done = job.pass(T0 + 6 * HOUR_MS, &mut |_| true).expect("pass");
    assert_eq!(done.sealed, 360);
    let error = store
        .query(&Query::new(METRICS[0]))
        .expect_err("damage is an error");
    assert!(
        matches!(error, StoreError::Chunk { start_ms, .. } if start_ms == T0),
        "{error}"
    );
}

#[test]
fn a_damaged_chunk_past_its_raw_period_is_folded_from_its_index_row() {
    let (_dir, path, mut store) = fresh();
    let hour = steady(0, 0, 0);
    store.write_batch(&readings(&hour)).expect("write");
    retention(&path, None)
        .pass(T0 + 3 * HOUR_MS, &mut |_| true)
        .expect("seal");
    Connection::open(&path)
        .expect("open")
        .execute(DAMAGE, [])
        .expect("damage");
    let done = retention(&path, Some(1))
        .pass(T0 + 3 * 24 * HOUR_MS, &mut |_| true)
        .expect("fold");
    assert_eq!((done.folded, done.damaged), (3_600, 0));
    let mut q = Query::new(METRICS[0]);
    q.every_ms = Some(HOUR_MS);
    q.agg = Agg::Count;
    let counts = store.query(&q).expect("hourly counts from the rollup");
    assert_eq!(counts.len(), 1);
    assert_eq!((counts[0].time_ms, counts[0].value), (T0, 3_600.0));
}

#[test]
fn a_backlog_of_late_hours_is_merged_a_slice_at_a_time() {
    let (_dir, path, mut store) = fresh();
    let day = Run {
        step_s: 60,
        n: 24 * 60,
        base: 14,
        ..steady(2, 1, 1)
    };
    store.write_batch(&readings(&day)).expect("write");
    let mut job = retention(&path, None);
    job.pass(T0 + 27 * HOUR_MS, &mut |_| true).expect("seal");
    assert_eq!(rows_left(&path), 0);
    // Half a minute later in every minute of the day: 24 late hours.
    let late = Run {
        start_s: 30,
        ..day.clone()
    };
    store.write_batch(&readings(&late)).expect("late");
    let mut steps = 0;
    let done = job
        .pass(T0 + 27 * HOUR_MS, &mut |_| {
            steps += 1;
            true
        })
        .expect("merge");
    assert_eq!(done.sealed, 24 * 60);
    assert!(steps >= 4, "24 late hours in slices of 6: {steps} steps");
    assert_eq!(rows_left(&path), 0);
    assert_eq!(store.count().expect("count"), 2 * 24 * 60);
}

#[test]
fn a_file_sealed_before_the_marks_existed_still_catches_repeats() {
    let (_dir, path, mut store) = fresh();
    let hour = readings(&Run {
        base: 70,
        ..steady(1, 0, 0)
    });
    store.write_batch(&hour).expect("write");
    retention(&path, None)
        .pass(T0 + 3 * HOUR_MS, &mut |_| true)
        .expect("seal");
    Connection::open(&path)
        .expect("open")
        .execute("DELETE FROM seal_state", [])
        .expect("forget the marks");
    let again = store.write_batch(&hour[..100]).expect("again");
    assert_eq!((again.inserted, again.duplicates), (0, 100));
}
