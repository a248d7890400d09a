//! Chunk codec: encode and decode rates (points/s, one thread) and bytes per point for
//! kinds of series kenko stores, cut into chunks of several time spans. Prints figures;
//! asserts only that every chunk decodes to what was encoded.
//!
//!     cargo bench -p kenko-ingest --bench chunks
//!     cargo bench -p kenko-ingest --bench chunks -- store [HOURS [SERIES [BUCKET_MIN]]]
//!
//! Bytes per point count the whole stored chunk (header, points, checksum).
//!
//! `store` times the prototype chunk store instead: SERIES (default 5,000) series of 1 Hz
//! integral readings over HOURS (default 2) appended in batches of 10,000 observations with a
//! flush after each batch (sealing buckets of BUCKET_MIN minutes, default 60, once closed),
//! then bytes per observation on disk, 1-hour range reads and hourly means.

use std::hint::black_box;
use std::time::{Duration, Instant};

use kenko_ingest::tsdb::store::ChunkStore;
use kenko_ingest::tsdb::{Chunk, ValueCoding};

const START_MS: i64 = 1_764_000_000_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
/// How long each rate is measured for.
const MEASURE: Duration = Duration::from_millis(300);

/// Small deterministic generator (xorshift64*), so figures do not move between runs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in 0..n.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// -1, 0 or +1, nonzero with probability `one_in` ⁻¹.
    fn step(&mut self, one_in: u64) -> i64 {
        match self.below(one_in * 2) {
            0 => -1,
            1 => 1,
            _ => 0,
        }
    }
}

struct Series {
    name: &'static str,
    points: Vec<(i64, f64)>,
    /// Chunk spans to try.
    spans: &'static [(&'static str, i64)],
}

const SECOND_SPANS: &[(&str, i64)] = &[
    ("15 min", 15 * MINUTE),
    ("1 h", HOUR),
    ("2 h", 2 * HOUR),
    ("6 h", 6 * HOUR),
    ("1 day", 24 * HOUR),
];
const SLOW_SPANS: &[(&str, i64)] = &[
    ("2 h", 2 * HOUR),
    ("1 day", 24 * HOUR),
    ("1 week", 7 * 24 * HOUR),
    ("30 days", 30 * 24 * HOUR),
];

/// Heart rate from a bed sensor: whole beats per minute, 1 Hz on the device's clock, a
/// random walk that changes about once in eight seconds.
fn heart_rate(rng: &mut Rng, seconds: i64, jitter_ms: u64) -> Vec<(i64, f64)> {
    let mut bpm = 64i64;
    (0..seconds)
        .map(|i| {
            bpm = (bpm + rng.step(8)).clamp(45, 110);
            let jitter = if jitter_ms == 0 {
                0
            } else {
                rng.below(2 * jitter_ms + 1) as i64 - jitter_ms as i64
            };
            (START_MS + i * 1_000 + jitter, bpm as f64)
        })
        .collect()
}

/// Respiration rate with one decimal at 1 Hz, changing by 0.1 about every other second.
fn respiration(rng: &mut Rng, seconds: i64) -> Vec<(i64, f64)> {
    let mut tenths = 140i64;
    (0..seconds)
        .map(|i| {
            tenths = (tenths + rng.step(2)).clamp(60, 300);
            (START_MS + i * 1_000, tenths as f64 / 10.0)
        })
        .collect()
}

/// Body temperature in °C with two decimals, every 10 minutes.
fn temperature(rng: &mut Rng, samples: i64) -> Vec<(i64, f64)> {
    (0..samples)
        .map(|i| {
            let hundredths = 3_640 + rng.below(40) as i64;
            (START_MS + i * 10 * MINUTE, hundredths as f64 / 100.0)
        })
        .collect()
}

/// Wearable samples: irregular gaps of 1 to 120 s with millisecond times, integral values
/// that move by a few beats between samples.
fn wearable(rng: &mut Rng, samples: i64) -> Vec<(i64, f64)> {
    let (mut time, mut bpm) = (START_MS, 70i64);
    (0..samples)
        .map(|_| {
            time += 1_000 + rng.below(119_000) as i64;
            bpm = (bpm + rng.below(7) as i64 - 3).clamp(45, 160);
            (time, bpm as f64)
        })
        .collect()
}

/// Random finite f64 bit patterns at 1 Hz: the worst case for the value codec.
fn random(rng: &mut Rng, seconds: i64) -> Vec<(i64, f64)> {
    (0..seconds)
        .map(|i| {
            let value = loop {
                let v = f64::from_bits(rng.next());
                if v.is_finite() {
                    break v;
                }
            };
            (START_MS + i * 1_000, value)
        })
        .collect()
}

/// Splits points into runs of one time bucket each.
fn buckets(points: &[(i64, f64)], span: i64) -> Vec<&[(i64, f64)]> {
    points
        .chunk_by(|a, b| a.0.div_euclid(span) == b.0.div_euclid(span))
        .collect()
}

/// Runs `work` until MEASURE has passed; returns points handled per second.
fn rate(points: usize, mut work: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut rounds = 0u64;
    while rounds == 0 || started.elapsed() < MEASURE {
        work();
        rounds += 1;
    }
    (points as u64 * rounds) as f64 / started.elapsed().as_secs_f64()
}

fn coding(chunk: &Chunk) -> String {
    match chunk.header().values {
        ValueCoding::Xor => "xor".to_owned(),
        ValueCoding::Decimal { scale, order, .. } => {
            let kind = if order == 2 { "dod" } else { "delta" };
            format!("dec{scale} {kind}")
        }
    }
}

fn measure(series: &Series) {
    for &(label, span) in series.spans {
        let runs = buckets(&series.points, span);
        let chunks: Vec<Chunk> = runs
            .iter()
            .map(|run| Chunk::encode(run).expect("encode"))
            .collect();
        for (run, chunk) in runs.iter().zip(&chunks) {
            let decoded = chunk.points().expect("decode");
            assert!(
                decoded
                    .iter()
                    .zip(run.iter())
                    .all(|(a, b)| a.0 == b.0 && a.1.to_bits() == b.1.to_bits()),
                "{} round trip",
                series.name
            );
        }
        let bytes: usize = chunks.iter().map(|c| c.as_bytes().len()).sum();
        let n = series.points.len();
        let encode = rate(n, || {
            for run in &runs {
                black_box(Chunk::encode(black_box(run)).expect("encode"));
            }
        });
        let decode = rate(n, || {
            for chunk in &chunks {
                let mut sum = 0.0;
                for (_, v) in chunk.decode() {
                    sum += v;
                }
                black_box(sum);
            }
        });
        println!(
            "{:<34} {:>8} {:>8.0} {:>10} {:>8.3} {:>9.1} {:>9.1}",
            series.name,
            label,
            n as f64 / chunks.len() as f64,
            coding(&chunks[chunks.len() / 2]),
            bytes as f64 / n as f64,
            encode / 1e6,
            decode / 1e6,
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == "store") {
        let numbers: Vec<i64> = args[at + 1..]
            .iter()
            .filter_map(|a| a.replace('_', "").parse().ok())
            .collect();
        let hours = numbers.first().copied().unwrap_or(2).max(1);
        let series = numbers.get(1).copied().unwrap_or(5_000).max(1);
        let bucket_min = numbers.get(2).copied().unwrap_or(60).max(1);
        store(hours, series as usize, bucket_min * MINUTE);
        return;
    }
    codecs();
}

fn codecs() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let day = 24 * 3_600;
    let series = [
        Series {
            name: "(a) heart rate 1 Hz, integral",
            points: heart_rate(&mut rng, day, 0),
            spans: SECOND_SPANS,
        },
        Series {
            name: "(a') same, ±20 ms clock jitter",
            points: heart_rate(&mut rng, day, 20),
            spans: SECOND_SPANS,
        },
        Series {
            name: "(b) respiration 1 Hz, 1 decimal",
            points: respiration(&mut rng, day),
            spans: SECOND_SPANS,
        },
        Series {
            name: "(c) temperature 10 min, 2 decimals",
            points: temperature(&mut rng, 6 * 24 * 90),
            spans: SLOW_SPANS,
        },
        Series {
            name: "(d) wearable, irregular 1-120 s",
            points: wearable(&mut rng, 20_000),
            spans: SLOW_SPANS,
        },
        Series {
            name: "(e) random f64 1 Hz (worst case)",
            points: random(&mut rng, day),
            spans: SECOND_SPANS,
        },
    ];
    println!(
        "{:<34} {:>8} {:>8} {:>10} {:>8} {:>9} {:>9}",
        "series", "chunk", "pts/chk", "values", "B/point", "enc Mp/s", "dec Mp/s"
    );
    for s in &series {
        measure(s);
    }
}

const BATCH: usize = 10_000;

fn store(hours: i64, series_n: usize, bucket_ms: i64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chunks.db");
    let mut store = ChunkStore::open(&path, bucket_ms).expect("open");
    let ids: Vec<i64> = (0..series_n)
        .map(|i| {
            store
                .series(&format!("citizen-{i:05}/bed/heart_rate"))
                .expect("series")
        })
        .collect();
    let seconds = hours * 3_600;
    let total = seconds as usize * series_n;
    println!(
        "chunk store: {series_n} series x {seconds} s at 1 Hz = {total} observations, batches of {BATCH}, buckets of {} min",
        bucket_ms / MINUTE
    );
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut bpm: Vec<i64> = (0..series_n).map(|i| 55 + (i % 30) as i64).collect();
    let mut batch: Vec<(i64, i64, f64)> = Vec::with_capacity(BATCH);
    let (mut appended, mut sealed) = (0usize, 0usize);
    let mut flushing = Duration::ZERO;
    let started = Instant::now();
    for second in 0..seconds {
        let time_ms = START_MS + second * 1_000;
        for (i, &id) in ids.iter().enumerate() {
            bpm[i] = (bpm[i] + rng.step(8)).clamp(45, 110);
            batch.push((id, time_ms, bpm[i] as f64));
            if batch.len() == BATCH {
                store.append(&batch).expect("append");
                appended += batch.len();
                batch.clear();
                // Buckets that ended before this batch's time are closed.
                let t = Instant::now();
                sealed += store.flush(time_ms).expect("flush").chunks;
                flushing += t.elapsed();
            }
        }
    }
    store.append(&batch).expect("append");
    appended += batch.len();
    let t = Instant::now();
    sealed += store.flush_all().expect("flush").chunks;
    flushing += t.elapsed();
    let secs = started.elapsed().as_secs_f64();
    store.checkpoint().expect("checkpoint");
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(path.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!(
        "appended {appended} observations in {secs:.2} s: {:.0} observations/s (one thread, data generation included), {sealed} chunks sealed",
        appended as f64 / secs
    );
    println!(
        "  of which sealing (merge, encode, SQLite insert, fsync'd commit): {:.2} s",
        flushing.as_secs_f64()
    );
    println!(
        "store size {:.1} MiB: {:.3} bytes/observation",
        bytes as f64 / 1_048_576.0,
        bytes as f64 / appended as f64
    );
    let span_ms = seconds * 1_000;
    let reads: Vec<(i64, i64)> = (0..2_000usize)
        .map(|i| {
            let id = ids[(i * 7_919) % series_n];
            let from = START_MS + (rng.below((span_ms - HOUR).max(1) as u64) as i64);
            (id, from)
        })
        .collect();
    let mut rows = 0;
    let took = latencies(&reads, |&(id, from)| {
        rows = store.range(id, from, from + HOUR).expect("range").len();
    });
    print_latencies(&format!("1 h range of one series, {rows} points"), took);
    // The floor any index could reach: the same chunks already in memory, only decoded.
    let in_memory = chunks_in_memory(&path, &reads);
    let took = latencies(&reads, |&(id, from)| {
        let n = in_memory[&id]
            .iter()
            .filter(|c| c.header().last_ms >= from && c.header().first_ms < from + HOUR)
            .flat_map(|c| c.decode())
            .filter(|p| p.0 >= from && p.0 < from + HOUR)
            .count();
        black_box(n);
    });
    print_latencies("  same reads decoded from memory (no index, no I/O)", took);
    index_versus_file(&path, &reads);
    let mut buckets = 0;
    let took = latencies(&reads[..200], |&(id, _)| {
        buckets = store
            .means(id, START_MS, START_MS + span_ms, HOUR)
            .expect("means")
            .len();
    });
    print_latencies(
        &format!("hourly means of one series over {hours} h, {buckets} buckets"),
        took,
    );
}

fn latencies<T>(inputs: &[T], mut run: impl FnMut(&T)) -> Vec<Duration> {
    let mut took: Vec<Duration> = inputs
        .iter()
        .map(|input| {
            let t = Instant::now();
            run(input);
            t.elapsed()
        })
        .collect();
    took.sort();
    took
}

fn print_latencies(label: &str, took: Vec<Duration>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: p50 {:.3} ms, p99 {:.3} ms over {} reads",
        ms(took[took.len() / 2]),
        ms(took[took.len() * 99 / 100]),
        took.len()
    );
}

/// Every chunk of the series read in `reads`, loaded straight from the file.
fn chunks_in_memory(
    path: &std::path::Path,
    reads: &[(i64, i64)],
) -> std::collections::HashMap<i64, Vec<Chunk>> {
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut stmt = conn
        .prepare("SELECT data FROM chunks WHERE series_id = ?1 ORDER BY start_ms")
        .expect("prepare");
    let mut all = std::collections::HashMap::new();
    for &(id, _) in reads {
        all.entry(id).or_insert_with(|| {
            stmt.query_map([id], |r| r.get::<_, Vec<u8>>(0))
                .expect("query")
                .map(|bytes| Chunk::from_bytes(&bytes.expect("row")).expect("chunk"))
                .collect::<Vec<_>>()
        });
    }
    all
}

/// Where a chunk's bytes are in the plain file.
type FileIndex = std::collections::HashMap<i64, Vec<(i64, u64, usize)>>;

/// The alternative to SQLite as index: the same sealed chunks appended to a plain file (one
/// fsync per 5,000 chunks, as SQLite commits them) with the index in memory, then the same
/// 1-hour reads through it with a positioned read per chunk.
fn index_versus_file(path: &std::path::Path, reads: &[(i64, i64)]) {
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    let conn = rusqlite::Connection::open(path).expect("open");
    let rows: Vec<(i64, i64, Vec<u8>)> = conn
        .prepare("SELECT series_id, start_ms, data FROM chunks")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    const GROUP: usize = 5_000;

    let dir = tempfile::tempdir().expect("temp dir");
    let copy = rusqlite::Connection::open(dir.path().join("index.db")).expect("open");
    copy.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE chunks (series_id INTEGER NOT NULL, start_ms INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (series_id, start_ms));",
    )
    .expect("schema");
    let started = Instant::now();
    for group in rows.chunks(GROUP) {
        copy.execute_batch("BEGIN").expect("begin");
        let mut put = copy
            .prepare_cached("INSERT INTO chunks VALUES (?1, ?2, ?3)")
            .expect("prepare");
        for (series, start, data) in group {
            put.execute(rusqlite::params![series, start, data])
                .expect("insert");
        }
        copy.execute_batch("COMMIT").expect("commit");
    }
    let sqlite_secs = started.elapsed().as_secs_f64();

    let file_path = dir.path().join("chunks.dat");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&file_path)
        .expect("create");
    let mut index = FileIndex::new();
    let mut offset = 0u64;
    let started = Instant::now();
    for group in rows.chunks(GROUP) {
        let mut buffer = Vec::new();
        for (series, start, data) in group {
            // A frame names its series and bucket, so the index can be rebuilt by a scan.
            buffer.extend_from_slice(&series.to_le_bytes());
            buffer.extend_from_slice(&start.to_le_bytes());
            buffer.extend_from_slice(&(data.len() as u32).to_le_bytes());
            let at = offset + buffer.len() as u64;
            buffer.extend_from_slice(data);
            index
                .entry(*series)
                .or_default()
                .push((*start, at, data.len()));
        }
        file.write_all(&buffer).expect("write");
        file.sync_data().expect("fsync");
        offset += buffer.len() as u64;
    }
    let file_secs = started.elapsed().as_secs_f64();
    println!(
        "  writing the {} sealed chunks again, {GROUP} per fsync: SQLite rows {:.2} s, plain file + index in memory {:.2} s",
        rows.len(),
        sqlite_secs,
        file_secs
    );
    for spans in index.values_mut() {
        spans.sort_unstable();
    }
    let bucket_ms = HOUR;
    let took = latencies(reads, |&(id, from)| {
        let first = from.div_euclid(bucket_ms) * bucket_ms;
        let mut n = 0;
        for &(start, at, len) in index.get(&id).into_iter().flatten() {
            if start < first || start >= from + HOUR {
                continue;
            }
            let mut bytes = vec![0; len];
            file.read_exact_at(&mut bytes, at).expect("read");
            let chunk = Chunk::from_bytes(&bytes).expect("chunk");
            n += chunk
                .decode()
                .filter(|p| p.0 >= from && p.0 < from + HOUR)
                .count();
        }
        black_box(n);
    });
    print_latencies(
        "  same reads from a plain file through an index in memory",
        took,
    );
}
