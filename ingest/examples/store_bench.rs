//! Write and query figures for `personal.db` at the scale of a city pilot: ROWS observations
//! from 500 citizens × 5 metrics, one reading per second per series, written in batches of
//! 2,048 (one fsync'd transaction each, as the ingest writer does). Prints figures; asserts
//! nothing about time.
//!
//!     cargo run --release -p kenko-ingest --example store_bench -- [ROWS]
//!
//! ROWS defaults to 5,000,000. The store lives in a temporary directory removed at exit.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kenko_devices::Metric;
use kenko_ingest::query::{Agg, Query};
use kenko_ingest::store::PersonalStore;
use kenko_ingest::Observation;

const CITIZENS: usize = 500;
const METRICS: [Metric; 5] = [
    Metric::HeartRate,
    Metric::RespiratoryRate,
    Metric::BodyMovement,
    Metric::BedOccupancy,
    Metric::SleepStage,
];
const STEP_MS: i64 = 1_000;
const BATCH: usize = 2_048;
/// 2025-11-24T16:00:00Z, a midnight in JST: the night's data starts at a day boundary.
const START_MS: i64 = 1_764_000_000_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

fn main() {
    let rows = std::env::args()
        .nth(1)
        .map(|a| a.replace(['_', ','], "").parse::<usize>())
        .transpose()
        .expect("ROWS must be a whole number, such as 5000000")
        .unwrap_or(5_000_000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("personal.db");
    let mut store = PersonalStore::open(&path).expect("open store");

    let citizens: Vec<(Arc<str>, Arc<str>)> = (0..CITIZENS)
        .map(|i| {
            (
                Arc::from(format!("citizen-{i:03}")),
                Arc::from(format!("bed-{i:03}")),
            )
        })
        .collect();
    let per_step = CITIZENS * METRICS.len();
    let steps = rows.div_ceil(per_step);
    println!(
        "writing {rows} observations: {CITIZENS} citizens x {} metrics x {steps} readings 1 s apart, batches of {BATCH}",
        METRICS.len()
    );

    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    let (mut inserted, mut batches, mut queued) = (0usize, 0usize, 0usize);
    'fill: for step in 0..steps {
        let time_ms = START_MS + step as i64 * STEP_MS;
        for (c, (citizen, device)) in citizens.iter().enumerate() {
            for metric in METRICS {
                if queued == rows {
                    break 'fill;
                }
                batch.push(Observation {
                    citizen: citizen.clone(),
                    device: device.clone(),
                    metric,
                    value: reading(metric, step, c),
                    time_ms,
                    received_ms: time_ms + 120,
                    seq: step as u64,
                    flags: 0,
                });
                queued += 1;
                if batch.len() == BATCH {
                    inserted += store.write_batch(&batch).expect("write batch").inserted;
                    batches += 1;
                    batch.clear();
                }
            }
        }
    }
    if !batch.is_empty() {
        inserted += store.write_batch(&batch).expect("write batch").inserted;
        batches += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {inserted} rows in {secs:.1} s: {:.0} rows/s, {batches} batches ({:.2} ms per batch)",
        inserted as f64 / secs,
        secs * 1000.0 / batches.max(1) as f64
    );
    let (db, wal) = (file_size(&path), file_size(&path.with_extension("db-wal")));
    println!(
        "store size {:.1} MiB ({:.1} MiB database + {:.1} MiB WAL), {:.1} bytes/row",
        (db + wal) as f64 / 1_048_576.0,
        db as f64 / 1_048_576.0,
        wal as f64 / 1_048_576.0,
        (db + wal) as f64 / inserted.max(1) as f64
    );

    // Readers run while the writer is still open, as `kenko query` does beside a live hub.
    let reader = PersonalStore::open_read_only(&path).expect("open read-only");
    let span_ms = steps as i64 * STEP_MS;
    let citizen = |i: usize| Some(format!("citizen-{:03}", (i * 7919) % CITIZENS));
    let hour_from = START_MS + (span_ms / 2 - HOUR_MS / 2).max(0);
    time(
        "1 h raw, one citizen + metric",
        200,
        |i| Query {
            citizen: citizen(i),
            from_ms: Some(hour_from),
            to_ms: Some(hour_from + HOUR_MS),
            ..Query::new(Metric::HeartRate)
        },
        &reader,
    );
    time(
        "1 day --every 1m mean, one citizen + metric",
        50,
        |i| Query {
            citizen: citizen(i),
            from_ms: Some(START_MS),
            to_ms: Some(START_MS + DAY_MS),
            every_ms: Some(60_000),
            agg: Agg::Mean,
            ..Query::new(Metric::HeartRate)
        },
        &reader,
    );
    if span_ms < DAY_MS {
        println!(
            "note: the data spans {:.1} min, so the 1 day window holds all of it",
            span_ms as f64 / 60_000.0
        );
    }
}

/// A plausible reading, so that the value column compresses and aggregates like real data.
fn reading(metric: Metric, step: usize, citizen: usize) -> f64 {
    let wobble = ((step / 7 + citizen) % 11) as f64;
    match metric {
        Metric::HeartRate => 52.0 + wobble,
        Metric::RespiratoryRate => 12.0 + wobble / 2.0,
        Metric::BodyMovement => wobble * 3.0,
        Metric::BedOccupancy => 1.0,
        Metric::SleepStage => ((step / 600 + citizen) % 4) as f64,
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn time(label: &str, runs: usize, make: impl Fn(usize) -> Query, store: &PersonalStore) {
    let mut took: Vec<Duration> = Vec::with_capacity(runs);
    let mut rows = 0;
    for i in 0..runs {
        let query = make(i);
        let started = Instant::now();
        rows = store.query(&query).expect("query").len();
        took.push(started.elapsed());
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "query {label}: {rows} rows, median {:.2} ms, p99 {:.2} ms, max {:.2} ms over {runs} runs",
        ms(took[runs / 2]),
        ms(took[(runs * 99 / 100).min(runs - 1)]),
        ms(took[runs - 1])
    );
}
