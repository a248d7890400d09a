//! Retention at scale: one device's year of 1 Hz heart rate (31,536,000 observations) in
//! `personal.db`, first sealed into hourly chunks (a pass with no periods), then folded into
//! rollups with `raw_days = 1`; after each, the year is queried as hourly and daily means and
//! one hour of it raw. Prints figures (write, seal and fold rates, the file's size, query
//! times); asserts only that every observation is still counted once.
//!
//!     cargo bench -p kenko-ingest --bench retention -- [DAYS]
//!
//! DAYS defaults to 365.

use std::sync::Arc;
use std::time::Instant;

use kenko_config::RetentionConfig;
use kenko_devices::Metric;
use kenko_ingest::query::{Agg, Query};
use kenko_ingest::retention::{Policy, Retention};
use kenko_ingest::store::PersonalStore;
use kenko_ingest::Observation;

const DAY_MS: i64 = 86_400_000;
const BATCH: usize = 10_000;
/// On a whole hour.
const NOW: i64 = 1_779_998_400_000;

fn main() {
    let days: i64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(365);
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("personal.db");
    let mut store = PersonalStore::open(&path).expect("open store");
    let total = days * 86_400;
    println!("writing {total} observations: one device, 1 Hz, {days} days");
    let started = Instant::now();
    let (citizen, device): (Arc<str>, Arc<str>) =
        (Arc::from("citizen-0001"), Arc::from("bed-0001"));
    let mut batch = Vec::with_capacity(BATCH);
    for second in 0..total {
        let time_ms = NOW - days * DAY_MS + second * 1000;
        batch.push(Observation {
            citizen: citizen.clone(),
            device: device.clone(),
            metric: Metric::HeartRate,
            value: 55.0 + (second % 30) as f64,
            time_ms,
            received_ms: time_ms,
            seq: 0,
            flags: 0,
        });
        if batch.len() == BATCH {
            store.write_batch(&batch).expect("write");
            batch.clear();
        }
    }
    store.write_batch(&batch).expect("write");
    let took = started.elapsed().as_secs_f64();
    println!("  {:.1} s, {:.0} observations/s", took, total as f64 / took);
    let before = file_bytes(&path);
    println!(
        "  personal.db: {:.1} MB, {:.1} bytes/observation",
        before as f64 / 1e6,
        before as f64 / total as f64
    );

    let policy = Policy::from_config(&RetentionConfig::default(), 3_600).expect("policy");
    let mut sealing = Retention::open(&path, policy).expect("retention");
    let started = Instant::now();
    let done = sealing.pass(NOW, &mut |_| true).expect("pass");
    let took = started.elapsed().as_secs_f64();
    println!(
        "sealing pass: sealed {} observations into hourly chunks in {:.1} s, {:.0}/s",
        done.sealed,
        took,
        done.sealed as f64 / took
    );
    let used = used_bytes(&path);
    println!(
        "  personal.db pages in use: {:.2} MB, {:.2} bytes/observation",
        used as f64 / 1e6,
        used as f64 / total as f64
    );
    queries(&store, days, total);

    let config: RetentionConfig = toml::from_str("raw_days = 1").expect("config");
    let policy = Policy::from_config(&config, 3_600).expect("policy");
    let mut retention = Retention::open(&path, policy).expect("retention");
    let started = Instant::now();
    let done = retention.pass(NOW, &mut |_| true).expect("pass");
    let took = started.elapsed().as_secs_f64();
    println!(
        "retention pass (raw_days = 1): folded {} observations in {:.1} s, {:.0}/s",
        done.folded,
        took,
        done.folded as f64 / took
    );
    let used = used_bytes(&path);
    println!(
        "  personal.db pages in use: {:.2} MB (the rest is free pages new data reuses)",
        used as f64 / 1e6
    );

    queries(&store, days, total);
}

/// The whole span as hourly and daily means (checking every observation counts once), and
/// one hour raw (of the last day, which is raw whatever the pass did).
fn queries(store: &PersonalStore, days: i64, total: i64) {
    let mut hour = Query::new(Metric::HeartRate);
    let mut times = Vec::new();
    for i in 0..200 {
        hour.from_ms = Some(NOW - DAY_MS + (i % 20) * 3_600_000);
        hour.to_ms = hour.from_ms.map(|t| t + 3_600_000);
        let started = Instant::now();
        let rows = store.query(&hour).expect("query").len();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(rows, 3_600, "an hour of 1 Hz");
    }
    times.sort_by(f64::total_cmp);
    println!(
        "one hour raw (3,600 rows): median {:.2} ms, p99 {:.2} ms (200 runs)",
        times[times.len() / 2],
        times[times.len() * 99 / 100]
    );
    for (every, name) in [(3_600_000, "hourly"), (DAY_MS, "daily")] {
        let mut q = Query::new(Metric::HeartRate);
        q.every_ms = Some(every);
        q.agg = Agg::Count;
        let counted: f64 = store
            .query(&q)
            .expect("query")
            .iter()
            .map(|r| r.value)
            .sum();
        assert_eq!(counted as i64, total, "every observation counts once");
        q.agg = Agg::Mean;
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..20 {
            let started = Instant::now();
            rows = store.query(&q).expect("query").len();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "the {days} days as {name} means ({rows} rows): median {:.1} ms, max {:.1} ms (20 runs)",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
}

/// Bytes of the pages that hold data (the file keeps freed pages for reuse).
fn used_bytes(path: &std::path::Path) -> u64 {
    let conn = rusqlite::Connection::open(path).expect("open");
    let pragma = |name: &str| -> u64 {
        conn.pragma_query_value(None, name, |r| r.get(0))
            .expect("pragma")
    };
    (pragma("page_count") - pragma("freelist_count")) * pragma("page_size")
}

fn file_bytes(path: &std::path::Path) -> u64 {
    let wal = path.with_extension("db-wal");
    [path.to_owned(), wal]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}
