//! Time-series store at scale: fills `personal.db` with ROWS observations (1,000 citizens ×
//! 5 metrics, one reading per series every 30 s, in batches of 10,000: the ingest writer's
//! 2,048 messages of about five observations each),
//! then times range queries against it; then seals every past hour into chunks as the
//! retention job does, and times the same queries again. Prints figures; asserts nothing
//! about time.
//!
//!     cargo bench -p kenko-ingest --bench store -- [ROWS [CITIZENS [STEP_S]]]
//!
//! ROWS defaults to 10,000,000, CITIZENS to 1,000 and STEP_S (seconds between two readings
//! of a series) to 30. The number of citizens is the number of series written concurrently
//! (×5), which decides how many pages each batch touches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kenko_config::RetentionConfig;
use kenko_devices::Metric;
use kenko_ingest::query::Query;
use kenko_ingest::retention::{Policy, Retention};
use kenko_ingest::store::PersonalStore;
use kenko_ingest::Observation;

const METRICS: [Metric; 5] = [
    Metric::HeartRate,
    Metric::RespiratoryRate,
    Metric::BodyMovement,
    Metric::BedOccupancy,
    Metric::SleepStage,
];
const BATCH: usize = 10_000;
const START_MS: i64 = 1_764_000_000_000;

fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.replace('_', "").parse().ok())
        .collect();
    let rows = numbers.first().copied().unwrap_or(10_000_000);
    let citizens_n = numbers.get(1).copied().unwrap_or(1_000).max(1);
    let step_ms = numbers.get(2).copied().unwrap_or(30).max(1) as i64 * 1000;
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("personal.db");
    let mut store = PersonalStore::open(&path).expect("open store");

    let citizens: Vec<(Arc<str>, Arc<str>)> = (0..citizens_n)
        .map(|i| {
            (
                Arc::from(format!("citizen-{i:04}")),
                Arc::from(format!("bed-{i:04}")),
            )
        })
        .collect();
    let per_step = citizens_n * METRICS.len();
    let steps = rows.div_ceil(per_step);
    println!(
        "writing {rows} observations: {citizens_n} citizens x {} metrics x {steps} readings {} s apart",
        METRICS.len(),
        step_ms / 1000
    );
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    let (mut written, mut batches) = (0usize, 0usize);
    for step in 0..steps {
        let time_ms = START_MS + step as i64 * step_ms;
        for (citizen, device) in &citizens {
            for metric in METRICS {
                if written + batch.len() == rows {
                    break;
                }
                if batch.len() == BATCH {
                    written += store.write_batch(&batch).expect("write batch").inserted;
                    batches += 1;
                    batch.clear();
                }
                batch.push(Observation {
                    citizen: citizen.clone(),
                    device: device.clone(),
                    metric,
                    value: 50.0 + (step % 40) as f64,
                    time_ms,
                    received_ms: time_ms + 120,
                    seq: step as u64,
                    flags: 0,
                });
            }
        }
        if step % 200 == 0 && step > 0 {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "  {written:>11} rows, {:>9.0} rows/s",
                written as f64 / secs
            );
        }
    }
    written += store.write_batch(&batch).expect("write batch").inserted;
    batches += 1;
    let secs = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(path.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!(
        "wrote {written} rows in {secs:.1} s: {:.0} rows/s, {batches} batches of up to {BATCH} (one fsync'd transaction each)",
        written as f64 / secs,
    );
    println!(
        "store size {:.1} MiB, {:.1} bytes/row",
        bytes as f64 / 1_048_576.0,
        bytes as f64 / written as f64
    );

    let span_ms = steps as i64 * step_ms;
    println!("-- rows");
    print_size(&path, written);
    queries(&path, span_ms, citizens_n);

    let mut job = Retention::open(
        &path,
        Policy::from_config(&RetentionConfig::default(), 3_600).expect("policy"),
    )
    .expect("retention");
    let started = Instant::now();
    let sealed = job
        .pass(START_MS + span_ms + 3 * 3_600_000, &mut |_| true)
        .expect("seal")
        .sealed;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "-- sealed {sealed} rows into hourly chunks in {secs:.1} s ({:.0} rows/s)",
        sealed as f64 / secs
    );
    print_size(&path, written);
    queries(&path, span_ms, citizens_n);
}

/// The bytes of the file's pages in use (freed pages are reused by later writes).
fn print_size(path: &std::path::Path, observations: usize) {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    let pragma = |name: &str| -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .expect("pragma")
    };
    let used = (pragma("page_count") - pragma("freelist_count")) * pragma("page_size");
    println!(
        "pages in use {:.1} MiB, {:.2} bytes/observation",
        used as f64 / 1_048_576.0,
        used as f64 / observations as f64
    );
}

fn queries(path: &std::path::Path, span_ms: i64, citizens_n: usize) {
    let reader = PersonalStore::open_read_only(path).expect("open read-only");
    let mid = START_MS + span_ms / 2;
    let base = Query::new(Metric::HeartRate);
    let citizen = |i: usize| Some(format!("citizen-{:04}", (i * 7919) % citizens_n));
    time(
        "1 h raw, one citizen + metric",
        200,
        |i| Query {
            citizen: citizen(i),
            from_ms: Some(mid),
            to_ms: Some(mid + 3_600_000),
            ..base.clone()
        },
        &reader,
    );
    time(
        "whole span, --every 1m mean, one citizen + metric",
        50,
        |i| Query {
            citizen: citizen(i),
            every_ms: Some(60_000),
            ..base.clone()
        },
        &reader,
    );
    time(
        "10 min raw, one metric, all citizens",
        50,
        |_| Query {
            from_ms: Some(mid),
            to_ms: Some(mid + 600_000),
            ..base.clone()
        },
        &reader,
    );
    time(
        "whole span, --every 1h mean across all citizens",
        10,
        |_| Query {
            every_ms: Some(3_600_000),
            across: true,
            ..base.clone()
        },
        &reader,
    );
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
        "query {label}: {rows} rows, median {:.2} ms, p99 {:.2} ms over {runs} runs",
        ms(took[runs / 2]),
        ms(took[(runs * 99 / 100).min(runs - 1)])
    );
}
