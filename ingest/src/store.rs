//! The embedded time-series store `personal.db`: identified observations in SQLite.
//!
//! Laid out for time series: a small `series` dictionary (citizen, device, metric) and an
//! `observations` table clustered by (series, time) — a `WITHOUT ROWID` table whose primary
//! key is the range-scan order, so a query for one citizen's metric over a time range reads
//! one contiguous run per series however many rows the store holds. The same key makes a
//! repeat of (device, metric, time) land on an existing row: it is stored once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kenko_devices::Metric;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::chunks::{self, seal};
use crate::observation::Observation;
use crate::query::{Agg, Query, Row};
use crate::rollup;
use crate::wal::Position;

/// The page cache of a store opened for writing, in KiB. A batch's rows go in in key order,
/// so each series' new rows need its last pages only once per batch; with 5,000 series
/// (`benches/store.rs`, 2,000,000 rows) 8 MiB stored within about 10 % of 64 MiB, which
/// would hold eight times the memory for as long as the hub runs.
const WRITER_CACHE_KIB: u32 = 8 * 1024;

/// Schema version kept in `PRAGMA user_version`. 2: rollups, 3: chunks; an older kenko
/// would leave either out of its answers.
const SCHEMA_VERSION: i64 = 3;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS series (
    id      INTEGER PRIMARY KEY,
    citizen TEXT    NOT NULL,
    device  TEXT    NOT NULL,
    metric  INTEGER NOT NULL,
    UNIQUE (citizen, metric, device)
);
CREATE INDEX IF NOT EXISTS series_by_metric ON series (metric, device);
CREATE TABLE IF NOT EXISTS observations (
    series      INTEGER NOT NULL,
    time_ms     INTEGER NOT NULL,
    value       REAL    NOT NULL,
    received_ms INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    flags       INTEGER NOT NULL,
    PRIMARY KEY (series, time_ms)
) WITHOUT ROWID;
-- Raw observations past their retention, folded into buckets of `width_ms` (1 minute and 1
-- hour; see rollup.rs). An observation is either raw or in the rollups, never both.
CREATE TABLE IF NOT EXISTS rollups (
    series   INTEGER NOT NULL,
    width_ms INTEGER NOT NULL,
    start_ms INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    min      REAL    NOT NULL,
    max      REAL    NOT NULL,
    sum      REAL    NOT NULL,
    PRIMARY KEY (series, width_ms, start_ms)
) WITHOUT ROWID;
-- Sealed hours of raw observations, one compressed chunk per series and hour (see
-- chunks.rs). `last_ms` is the time of the last point; the header columns answer
-- whole-chunk aggregates from the index alone.
CREATE TABLE IF NOT EXISTS chunks (
    series   INTEGER NOT NULL,
    start_ms INTEGER NOT NULL,
    last_ms  INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    min      REAL    NOT NULL,
    max      REAL    NOT NULL,
    sum      REAL    NOT NULL,
    data     BLOB    NOT NULL,
    PRIMARY KEY (series, start_ms)
);
CREATE INDEX IF NOT EXISTS chunk_headers ON chunks (series, start_ms, last_ms, count, min, max, sum);
-- Sealing's marks (chunks/seal.rs): no chunk holds an hour at or after `mark_ms`; every row
-- before `scanned_ms` has been looked at. Hours written into behind the mark, to merge.
CREATE TABLE IF NOT EXISTS seal_state (
    id         INTEGER PRIMARY KEY CHECK (id = 0),
    scanned_ms INTEGER NOT NULL,
    mark_ms    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seal_late (
    series   INTEGER NOT NULL,
    start_ms INTEGER NOT NULL,
    PRIMARY KEY (series, start_ms)
) WITHOUT ROWID;
-- Series whose window inputs (bed occupancy, sleep stage, steps) changed since their
-- windows were last computed, with the span of event times that changed; see windows.rs.
CREATE TABLE IF NOT EXISTS window_dirty (
    series  INTEGER PRIMARY KEY,
    from_ms INTEGER NOT NULL,
    to_ms   INTEGER NOT NULL,
    version INTEGER NOT NULL
);
-- How far into the write-ahead log this file holds everything (written in the same
-- transaction as the rows), so that a store restored from a backup is known to be behind.
CREATE TABLE IF NOT EXISTS log_position (
    id      INTEGER PRIMARY KEY CHECK (id = 0),
    segment INTEGER NOT NULL,
    offset  INTEGER NOT NULL
);
";

/// Raw observations of the series `series` selects, in a time range. Parameters: ?1 to ?3
/// as in [`series_filter`], ?4 from (inclusive), ?5 to (exclusive), ?6 limit, ?9 to ?12 a
/// page's start ([`rollup::resume_sql`]).
fn raw_query(series: &str) -> String {
    let resume = rollup::resume_sql("o.time_ms", "s.citizen", "s.device");
    format!(
        "SELECT o.time_ms, s.citizen, s.device, o.value, o.flags FROM series s
         JOIN observations o ON o.series = s.id
         WHERE {series} AND o.time_ms >= ?4 AND o.time_ms < ?5 AND {resume}
         ORDER BY o.time_ms, s.citizen, s.device LIMIT ?6"
    )
}

/// The condition on `series` of a query of metric ?1, citizen ?2 and device ?3, naming only
/// the ones given, so that SQLite can use the index that starts with them (a condition such
/// as `?2 IS NULL OR citizen = ?2` can use none, and scans every series of the metric).
fn series_filter(q: &Query) -> &'static str {
    match (q.citizen.is_some(), q.device.is_some()) {
        (true, true) => "metric = ?1 AND citizen = ?2 AND device = ?3",
        (true, false) => "metric = ?1 AND citizen = ?2",
        (false, true) => "metric = ?1 AND device = ?3",
        (false, false) => "metric = ?1",
    }
}

/// What went wrong with a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no store at {0}; run `kenko demo` or `kenko serve` with this --data-dir first")]
    Missing(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store {path} has schema version {found}, newer than this kenko understands ({SCHEMA_VERSION}); upgrade kenko")]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("consent record refused: {0}")]
    InvalidConsent(#[from] crate::consent::InvalidChange),
    #[error("bucket width {0} ms is not positive; pass a positive --every such as 1m")]
    BadBucket(i64),
    #[error("aggregating across citizens needs buckets; add --every (such as 1h or 1d)")]
    AcrossNeedsBuckets,
    #[error("{0} is an aggregate across citizens; add --across")]
    NeedsAcross(Agg),
    #[error("store {path}: chunk of series {series} at {start_ms} ms: {source}")]
    Chunk {
        path: PathBuf,
        series: i64,
        start_ms: i64,
        source: crate::tsdb::ChunkError,
    },
    #[error("{metric} from device {device} at {time_ms} ms has no finite value ({value}); reject or drop it before it reaches the store")]
    NotFinite {
        device: String,
        metric: Metric,
        time_ms: i64,
        value: f64,
    },
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub inserted: usize,
    /// Observations whose (device, metric, time) was already stored.
    pub duplicates: usize,
}

type SeriesKey = (Arc<str>, Arc<str>, u8);

/// The identified observation store.
pub struct PersonalStore {
    conn: Connection,
    path: PathBuf,
    series: HashMap<SeriesKey, i64>,
    /// Record which series feed windowed outputs (the personal store; not the shared one).
    track_windows: bool,
    /// The file has the rollups table (one written by an older kenko, opened read-only,
    /// has not).
    has_rollups: bool,
    /// The file has the chunks table (likewise).
    has_chunks: bool,
}

impl PersonalStore {
    /// Opens (creating if needed) the store for writing.
    pub fn open(path: &Path) -> Result<PersonalStore, StoreError> {
        let conn = Connection::open(path).map_err(sqlite(path))?;
        let store = PersonalStore {
            conn,
            path: path.to_owned(),
            series: HashMap::new(),
            track_windows: false,
            has_rollups: true,
            has_chunks: true,
        };
        // FULL: a committed batch survives power loss, because the broker acknowledges a
        // message as soon as its batch is committed.
        let pragmas = format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA wal_autocheckpoint = 16384;"
        );
        store.conn.execute_batch(&pragmas).map_err(sqlite(path))?;
        store
            .conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite(path))?;
        migrate(&store.conn, path, SCHEMA)?;
        store
            .conn
            .execute_batch(chunks::PARTS_TABLE)
            .map_err(sqlite(path))?;
        Ok(store)
    }

    /// Opens an existing store for reading, alongside a hub that may be writing it.
    pub fn open_read_only(path: &Path) -> Result<PersonalStore, StoreError> {
        let conn = open_existing(path)?;
        let has_rollups = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rollups'",
                [],
                |_| Ok(()),
            )
            .optional()
            .map_err(sqlite(path))?
            .is_some();
        let has_chunks = chunks::exists(&conn, path)?;
        conn.execute_batch(chunks::PARTS_TABLE)
            .map_err(sqlite(path))?;
        Ok(PersonalStore {
            conn,
            path: path.to_owned(),
            series: HashMap::new(),
            track_windows: false,
            has_rollups,
            has_chunks,
        })
    }

    /// Notes, in the same transaction as each write, which series feed windowed outputs
    /// (sleep summaries, daily steps) and over which event times, for the window job.
    pub fn track_windows(mut self) -> PersonalStore {
        self.track_windows = true;
        self
    }

    /// Gives back the page cache's memory (a hub that has gone quiet keeps none); the cache
    /// fills again with the next writes.
    pub fn release_memory(&self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("PRAGMA shrink_memory")
            .map_err(sqlite(&self.path))
    }

    /// Deletes every observation and series of `citizen`; returns the observations deleted.
    pub fn erase_citizen(&mut self, citizen: &str) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite(&path))?;
        let chunked: i64 = tx
            .query_row(
                "SELECT coalesce(sum(count), 0) FROM chunks
                 WHERE series IN (SELECT id FROM series WHERE citizen = ?1)",
                params![citizen],
                |r| r.get(0),
            )
            .map_err(sqlite(&path))?;
        let rows = tx
            .execute(
                "DELETE FROM observations WHERE series IN (SELECT id FROM series WHERE citizen = ?1)",
                params![citizen],
            )
            .map_err(sqlite(&path))?
            + usize::try_from(chunked).unwrap_or(0);
        for table in ["window_dirty", "rollups", "chunks", "seal_late"] {
            tx.execute(
                &format!(
                    "DELETE FROM {table} WHERE series IN (SELECT id FROM series WHERE citizen = ?1)"
                ),
                params![citizen],
            )
            .map_err(sqlite(&path))?;
        }
        tx.execute("DELETE FROM series WHERE citizen = ?1", params![citizen])
            .map_err(sqlite(&path))?;
        tx.commit().map_err(sqlite(&path))?;
        // Series ids of the deleted series may be handed out again.
        self.series.retain(|(c, _, _), _| &**c != citizen);
        Ok(rows)
    }

    /// Writes a batch in one transaction: all of it or, on error, none of it.
    pub fn write_batch(&mut self, batch: &[Observation]) -> Result<WriteStats, StoreError> {
        self.write_batch_upto(batch, None)
    }

    /// Writes a batch and, in the same transaction, notes that the file now holds the
    /// write-ahead log up to `upto` (also when the batch is empty, so that the position of a
    /// store that receives little still keeps up with the log).
    pub fn write_batch_upto(
        &mut self,
        batch: &[Observation],
        upto: Option<Position>,
    ) -> Result<WriteStats, StoreError> {
        if batch.is_empty() && upto.is_none() {
            return Ok(WriteStats::default());
        }
        // SQLite would store NaN as NULL and refuse it mid-batch with a constraint error that
        // names no observation; infinities are no reading either.
        if let Some(obs) = batch.iter().find(|o| !o.value.is_finite()) {
            return Err(StoreError::NotFinite {
                device: obs.device.to_string(),
                metric: obs.metric,
                time_ms: obs.time_ms,
                value: obs.value,
            });
        }
        let mut created: Vec<SeriesKey> = Vec::new();
        let result = self.write_rows(batch, upto, &mut created);
        if result.is_err() {
            // The series rows made by this batch were rolled back with it; their ids may be
            // handed out again, so the cache must not keep them.
            for key in &created {
                self.series.remove(key);
            }
        }
        result
    }

    fn write_rows(
        &mut self,
        batch: &[Observation],
        upto: Option<Position>,
        created: &mut Vec<SeriesKey>,
    ) -> Result<WriteStats, StoreError> {
        let path = &self.path;
        let mut stats = WriteStats::default();
        // IMMEDIATE: the write lock is taken (waiting on the busy timeout) before anything is
        // read, so the window job's writes to the same file can never leave this transaction
        // with a stale snapshot to upgrade, which SQLite refuses at once.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite(path))?;
        let mut touched: HashMap<i64, (i64, i64)> = HashMap::new();
        let mut late = HashSet::new();
        {
            // ON CONFLICT on the key only, not OR IGNORE: OR IGNORE would also skip a row that
            // breaks another constraint and count it as a duplicate.
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO observations (series, time_ms, value, received_ms, seq, flags)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (series, time_ms) DO NOTHING",
                )
                .map_err(sqlite(path))?;
            // A window's summary is computed again when late data arrives: the new value
            // replaces the old one.
            let mut replace = tx
                .prepare_cached(
                    "INSERT INTO observations (series, time_ms, value, received_ms, seq, flags)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (series, time_ms) DO UPDATE SET value = excluded.value,
                        received_ms = excluded.received_ms, seq = excluded.seq, flags = excluded.flags",
                )
                .map_err(sqlite(path))?;
            // Rows go in in key order: each series' rows land on the same few leaf pages one
            // after the other instead of the whole batch visiting every series' last page.
            let mut order = Vec::with_capacity(batch.len());
            for (i, obs) in batch.iter().enumerate() {
                let key: SeriesKey = (obs.citizen.clone(), obs.device.clone(), obs.metric.id());
                let series = match self.series.get(&key) {
                    Some(&id) => id,
                    None => {
                        let id = series_id(&tx, &key).map_err(sqlite(path))?;
                        self.series.insert(key.clone(), id);
                        created.push(key);
                        id
                    }
                };
                order.push((series, obs.time_ms, i));
            }
            order.sort_unstable();
            // A point behind the sealing mark may be for an hour already sealed into a
            // chunk (chunks/seal.rs): a repeat of a time the chunk holds is a duplicate, as a
            // repeated row would be; any other is a late row, noted for the next pass.
            let (_, mark) = seal::marks(&tx, path)?;
            let mut sealed = chunks::SealedTimes::default();
            for (series, _, i) in order {
                let obs = &batch[i];
                let behind = obs.time_ms < mark && !obs.metric.is_derived();
                if behind && sealed.holds(&tx, path, series, obs.time_ms)? {
                    stats.duplicates += 1;
                    continue;
                }
                let seq = i64::try_from(obs.seq).unwrap_or(i64::MAX);
                let row = params![
                    series,
                    obs.time_ms,
                    obs.value,
                    obs.received_ms,
                    seq,
                    obs.flags
                ];
                let statement = if obs.metric.is_derived() {
                    &mut replace
                } else {
                    &mut insert
                };
                let changed = statement.execute(row).map_err(sqlite(path))?;
                if changed == 1 {
                    stats.inserted += 1;
                    if behind {
                        late.insert((series, rollup::bucket_start(obs.time_ms, chunks::SPAN_MS)));
                    }
                    if self.track_windows && obs.metric.feeds_window() {
                        let span = touched.entry(series).or_insert((obs.time_ms, obs.time_ms));
                        span.0 = span.0.min(obs.time_ms);
                        span.1 = span.1.max(obs.time_ms);
                    }
                } else {
                    stats.duplicates += 1;
                }
            }
            let mut dirty = tx
                .prepare_cached(
                    "INSERT INTO window_dirty (series, from_ms, to_ms, version) VALUES (?1, ?2, ?3, 1)
                     ON CONFLICT (series) DO UPDATE SET from_ms = min(from_ms, excluded.from_ms),
                        to_ms = max(to_ms, excluded.to_ms), version = version + 1",
                )
                .map_err(sqlite(path))?;
            for (series, (from, to)) in touched {
                dirty
                    .execute(params![series, from, to])
                    .map_err(sqlite(path))?;
            }
        }
        seal::note_late(&tx, path, &late)?;
        if let Some(at) = upto {
            put_log_position(&tx, at).map_err(sqlite(path))?;
        }
        tx.commit().map_err(sqlite(path))?;
        Ok(stats)
    }

    /// How far into the write-ahead log this file holds everything; `None` for a store that
    /// has never noted it (new, or written by an older kenko).
    pub fn log_position(&self) -> Result<Option<Position>, StoreError> {
        let read = self
            .conn
            .query_row(
                "SELECT segment, offset FROM log_position WHERE id = 0",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional();
        match read {
            Ok(found) => Ok(found.map(|(segment, offset)| Position {
                segment: u64::try_from(segment).unwrap_or(0),
                offset: u64::try_from(offset).unwrap_or(0),
            })),
            // A store opened read-only that an older kenko wrote has no such table.
            Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.contains("no such table") => {
                Ok(None)
            }
            Err(e) => Err(sqlite(&self.path)(e)),
        }
    }

    /// Notes that the file holds the log up to `at` (after a loss was accepted).
    pub fn set_log_position(&mut self, at: Position) -> Result<(), StoreError> {
        put_log_position(&self.conn, at).map_err(sqlite(&self.path))
    }

    /// Raw rows, or bucketed aggregates when `every_ms` is set, from rows and chunks alike
    /// (`chunks.rs`). Aggregates add what retention folded into rollups to what is still
    /// raw (see `rollup.rs`).
    pub fn query(&self, q: &Query) -> Result<Vec<Row>, StoreError> {
        // One snapshot: the retention job may seal rows into a chunk between two reads.
        let snapshot = self
            .conn
            .unchecked_transaction()
            .map_err(sqlite(&self.path))?;
        let rows = self.query_in(&snapshot, q);
        drop(snapshot);
        rows
    }

    fn query_in(&self, conn: &Connection, q: &Query) -> Result<Vec<Row>, StoreError> {
        // A page of raw rows starts its index range at its first time.
        let resume_from = q
            .resume
            .as_ref()
            .filter(|_| q.every_ms.is_none())
            .map_or(i64::MIN, |r| r.time_ms);
        let from = q.from_ms.unwrap_or(i64::MIN).max(resume_from);
        let resume = q.resume.as_ref();
        let (after_ms, after_citizen, after_device, inclusive) = (
            resume.map(|r| r.time_ms),
            resume.map(|r| r.citizen.as_str()),
            resume.map(|r| r.device.as_str()),
            resume.is_some_and(|r| r.inclusive),
        );
        let to = q.to_ms.unwrap_or(i64::MAX);
        let limit = q.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let aggregated = q.every_ms.is_some();
        let unit = match (aggregated, q.agg) {
            (true, Agg::Count) => "{count}",
            (true, Agg::Citizens) => "{citizen}",
            _ => q.metric.unit(),
        };
        let metric = q.metric;
        let map = |r: &rusqlite::Row<'_>| {
            Ok(Row {
                time_ms: r.get(0)?,
                citizen: r.get(1)?,
                device: r.get(2)?,
                metric,
                value: r.get(3)?,
                unit: unit.to_owned(),
                aggregated,
                flags: if aggregated { 0 } else { r.get(4)? },
            })
        };
        let rows = match q.every_ms {
            None if q.across => return Err(StoreError::AcrossNeedsBuckets),
            None => {
                let mut stmt = conn
                    .prepare_cached(&raw_query(series_filter(q)))
                    .map_err(sqlite(&self.path))?;
                let rows = stmt
                    .query_map(
                        params![
                            metric.id(),
                            q.citizen,
                            q.device,
                            from,
                            to,
                            limit,
                            None::<i64>,
                            None::<i64>,
                            after_ms,
                            after_citizen,
                            after_device,
                            inclusive
                        ],
                        map,
                    )
                    .map_err(sqlite(&self.path))?;
                let rows = rows
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(sqlite(&self.path))?;
                return self.with_chunk_rows(conn, q, rows, (from, to));
            }
            Some(every) if every <= 0 => return Err(StoreError::BadBucket(every)),
            Some(_) if q.agg.needs_across() && !q.across => {
                return Err(StoreError::NeedsAcross(q.agg))
            }
            Some(every) => {
                let bound = params![
                    metric.id(),
                    q.citizen,
                    q.device,
                    from,
                    to,
                    limit,
                    every,
                    rollup::width_for(every),
                    after_ms,
                    after_citizen,
                    after_device,
                    inclusive
                ];
                self.stage_chunk_parts(conn, q, (from, to), every)?;
                if let Agg::Percentile(p) = q.agg {
                    return self.percentile_rows(conn, q, p, bound);
                }
                let sql = rollup::bucket_query(q.agg, series_filter(q), self.has_rollups, q.across);
                let mut stmt = conn.prepare_cached(&sql).map_err(sqlite(&self.path))?;
                let rows = stmt.query_map(bound, map).map_err(sqlite(&self.path))?;
                rows.collect::<Result<Vec<_>, _>>()
            }
        };
        rows.map_err(sqlite(&self.path))
    }

    /// Per bucket, the `p`th percentile of the citizens' means (`across`); `bound` as for
    /// `rollup::bucket_query`.
    fn percentile_rows(
        &self,
        conn: &Connection,
        q: &Query,
        p: u8,
        bound: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Row>, StoreError> {
        let sql = rollup::citizen_means_query(series_filter(q), self.has_rollups);
        let mut stmt = conn.prepare_cached(&sql).map_err(sqlite(&self.path))?;
        let means = stmt
            .query_map(bound, |r| Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(2)?)))
            .map_err(sqlite(&self.path))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sqlite(&self.path))?;
        Ok(crate::across::by_bucket(means, p)
            .into_iter()
            .map(|(time_ms, value)| Row {
                time_ms,
                citizen: "*".to_owned(),
                device: "*".to_owned(),
                metric: q.metric,
                value,
                unit: q.metric.unit().to_owned(),
                aggregated: true,
                flags: 0,
            })
            .collect())
    }

    /// The series a query selects, as (id, citizen, device).
    fn chosen_series(
        &self,
        conn: &Connection,
        q: &Query,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        // The `coalesce` names ?2 and ?3 whichever the filter uses, so that the statement
        // always takes three parameters; it is always true.
        let sql = format!(
            "SELECT id, citizen, device FROM series WHERE {} AND coalesce(?2, ?3, 1) IS NOT NULL",
            series_filter(q)
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(sqlite(&self.path))?;
        let rows = stmt
            .query_map(params![q.metric.id(), q.citizen, q.device], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(sqlite(&self.path))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(sqlite(&self.path))
    }

    /// Adds the chunk points of the query's range (`from`, `to`) to its raw `rows` (in the
    /// answer's order, at most the limit), keeping the order and the limit. Chunks are read
    /// in time order, and no further once the limit's last row comes before the next one.
    fn with_chunk_rows(
        &self,
        conn: &Connection,
        q: &Query,
        mut rows: Vec<Row>,
        (from, to): (i64, i64),
    ) -> Result<Vec<Row>, StoreError> {
        if !self.has_chunks {
            return Ok(rows);
        }
        let mut found = Vec::new();
        for (id, citizen, device) in self.chosen_series(conn, q)? {
            for header in chunks::headers(conn, &self.path, id, from, to)? {
                found.push((header, citizen.clone(), device.clone()));
            }
        }
        found.sort_by_key(|(h, _, _)| h.start_ms);
        let limit = q.limit;
        let last_needed = |rows: &[Row]| {
            limit
                .and_then(|l| rows.get(l.checked_sub(1)?))
                .map(|r| r.time_ms)
        };
        let mut threshold = last_needed(&rows);
        for (header, citizen, device) in found {
            if threshold.is_some_and(|t| header.start_ms > t) {
                break;
            }
            let points = chunks::chunk_points(conn, &self.path, header.series, header.start_ms)?;
            for (time_ms, value) in points {
                if time_ms < from
                    || time_ms >= to
                    || !after_resume(q.resume.as_ref(), time_ms, &citizen, &device)
                {
                    continue;
                }
                rows.push(Row {
                    time_ms,
                    citizen: citizen.clone(),
                    device: device.clone(),
                    metric: q.metric,
                    value,
                    unit: q.metric.unit().to_owned(),
                    aggregated: false,
                    flags: 0,
                });
            }
            if let Some(l) = limit {
                if rows.len() >= 2 * l.max(1024) {
                    sort_and_limit(&mut rows, limit);
                    threshold = last_needed(&rows);
                }
            }
        }
        sort_and_limit(&mut rows, limit);
        Ok(rows)
    }

    /// Puts the chunks' share of a bucketed query where its SQL reads it.
    fn stage_chunk_parts(
        &self,
        conn: &Connection,
        q: &Query,
        (from, to): (i64, i64),
        every: i64,
    ) -> Result<(), StoreError> {
        let parts = if self.has_chunks {
            let chosen = self.chosen_series(conn, q)?;
            chunks::parts(
                conn,
                &self.path,
                &staged_under(q, &chosen),
                (from, to),
                every,
            )?
        } else {
            Vec::new()
        };
        chunks::stage_parts(conn, &self.path, &parts)
    }

    /// Number of stored observations, in rows and chunks.
    pub fn count(&self) -> Result<u64, StoreError> {
        let sql = if self.has_chunks {
            "SELECT (SELECT count(*) FROM observations)
                  + (SELECT coalesce(sum(count), 0) FROM chunks)"
        } else {
            "SELECT count(*) FROM observations"
        };
        let n: i64 = self
            .conn
            .query_row(sql, [], |r| r.get(0))
            .map_err(sqlite(&self.path))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The latest plausible raw observation of `citizen`'s `metric` at or after `since_ms`,
    /// from any of their devices (a reading flagged implausible is a device's error, not the
    /// citizen's state).
    pub fn latest(
        &self,
        citizen: &str,
        metric: Metric,
        since_ms: i64,
    ) -> Result<Option<Row>, StoreError> {
        let mut series = self
            .conn
            .prepare_cached("SELECT id, device FROM series WHERE metric = ?1 AND citizen = ?2")
            .map_err(sqlite(&self.path))?;
        let found = series
            .query_map(params![metric.id(), citizen], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(sqlite(&self.path))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sqlite(&self.path))?;
        let mut last = self
            .conn
            .prepare_cached(
                "SELECT time_ms, value, flags FROM observations
                 WHERE series = ?1 AND time_ms >= ?2 AND flags & ?3 = 0
                 ORDER BY time_ms DESC LIMIT 1",
            )
            .map_err(sqlite(&self.path))?;
        let mut best: Option<Row> = None;
        for (id, device) in found {
            let row = last
                .query_row(params![id, since_ms, crate::flags::IMPLAUSIBLE], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, f64>(1)?,
                        r.get::<_, u32>(2)?,
                    ))
                })
                .optional()
                .map_err(sqlite(&self.path))?;
            // Chunks hold plausible points only; a row may be later or earlier.
            let sealed = if self.has_chunks {
                chunks::latest(&self.conn, &self.path, id, since_ms)?
                    .map(|(time_ms, value)| (time_ms, value, 0))
            } else {
                None
            };
            let row = match (row, sealed) {
                (Some(r), Some(c)) => Some(if c.0 > r.0 { c } else { r }),
                (r, c) => r.or(c),
            };
            if let Some((time_ms, value, flags)) = row {
                if best.as_ref().is_none_or(|b| time_ms > b.time_ms) {
                    best = Some(Row {
                        time_ms,
                        citizen: citizen.to_owned(),
                        device,
                        metric,
                        value,
                        unit: metric.unit().to_owned(),
                        aggregated: false,
                        flags,
                    });
                }
            }
        }
        Ok(best)
    }

    /// Metrics that have at least one stored observation.
    pub fn metrics(&self) -> Result<Vec<Metric>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(if self.has_chunks {
                "SELECT DISTINCT metric FROM series s
                 WHERE EXISTS (SELECT 1 FROM observations o WHERE o.series = s.id)
                    OR EXISTS (SELECT 1 FROM rollups r WHERE r.series = s.id)
                    OR EXISTS (SELECT 1 FROM chunks k WHERE k.series = s.id)"
            } else if self.has_rollups {
                "SELECT DISTINCT metric FROM series s
                 WHERE EXISTS (SELECT 1 FROM observations o WHERE o.series = s.id)
                    OR EXISTS (SELECT 1 FROM rollups r WHERE r.series = s.id)"
            } else {
                "SELECT DISTINCT metric FROM series s
                 WHERE EXISTS (SELECT 1 FROM observations o WHERE o.series = s.id)"
            })
            .map_err(sqlite(&self.path))?;
        let ids = stmt
            .query_map([], |r| r.get::<_, u8>(0))
            .map_err(sqlite(&self.path))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sqlite(&self.path))?;
        Ok(ids.into_iter().filter_map(Metric::from_id).collect())
    }
}

/// For each chosen series, the series its chunk parts are staged under: itself; across
/// citizens, the first series of its citizen (counting citizens and percentiles of their
/// means need them apart) or, for mean, min, max and count, the first series of all.
fn staged_under(q: &Query, chosen: &[(i64, String, String)]) -> Vec<(i64, i64)> {
    let mut first_of: HashMap<&str, i64> = HashMap::new();
    let merge_all = q.across && !q.agg.needs_across();
    chosen
        .iter()
        .map(|(id, citizen, _)| {
            let into = if merge_all {
                chosen[0].0
            } else if q.across {
                *first_of.entry(citizen.as_str()).or_insert(*id)
            } else {
                *id
            };
            (*id, into)
        })
        .collect()
}

/// Whether a row at (`time_ms`, `citizen`, `device`) belongs to a page that starts at
/// `resume` (every row does without one).
fn after_resume(
    resume: Option<&crate::query::Resume>,
    time_ms: i64,
    citizen: &str,
    device: &str,
) -> bool {
    let Some(r) = resume else {
        return true;
    };
    let at = (time_ms, citizen, device);
    let start = (r.time_ms, r.citizen.as_str(), r.device.as_str());
    at > start || (r.inclusive && at == start)
}

/// Rows in the answer's order (time, citizen, device), at most `limit`.
fn sort_and_limit(rows: &mut Vec<Row>, limit: Option<usize>) {
    rows.sort_by(|a, b| {
        (a.time_ms, &a.citizen, &a.device).cmp(&(b.time_ms, &b.citizen, &b.device))
    });
    if let Some(l) = limit {
        rows.truncate(l);
    }
}

fn put_log_position(conn: &Connection, at: Position) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO log_position (id, segment, offset) VALUES (0, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET segment = excluded.segment, offset = excluded.offset",
        params![
            i64::try_from(at.segment).unwrap_or(i64::MAX),
            i64::try_from(at.offset).unwrap_or(i64::MAX)
        ],
    )?;
    Ok(())
}

fn series_id(tx: &rusqlite::Transaction<'_>, key: &SeriesKey) -> rusqlite::Result<i64> {
    let (citizen, device, metric) = key;
    let found = tx
        .prepare_cached("SELECT id FROM series WHERE citizen = ?1 AND metric = ?2 AND device = ?3")?
        .query_row(params![&**citizen, metric, &**device], |r| r.get(0))
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    tx.prepare_cached("INSERT INTO series (citizen, device, metric) VALUES (?1, ?2, ?3)")?
        .execute(params![&**citizen, &**device, metric])?;
    Ok(tx.last_insert_rowid())
}

pub(crate) fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

/// Opens (creating) a small database for durable writes: WAL journal, `synchronous = FULL`,
/// a busy timeout for the other processes that write it, and the schema.
pub(crate) fn open_durable(path: &Path, schema: &str) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(sqlite(path))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .map_err(sqlite(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sqlite(path))?;
    migrate(&conn, path, schema)?;
    Ok(conn)
}

/// Opens an existing database read-only, with a clear error when it is not there or was
/// written by a newer kenko.
pub(crate) fn open_existing(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing(path.to_owned()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sqlite(path))?;
    check_version(&conn, path)?;
    Ok(conn)
}

/// Creates the schema of a new database, and refuses one written by a newer kenko.
pub(crate) fn migrate(conn: &Connection, path: &Path, schema: &str) -> Result<(), StoreError> {
    let version = check_version(conn, path)?;
    // Every statement is `IF NOT EXISTS`: tables added since a file was made appear.
    conn.execute_batch(schema).map_err(sqlite(path))?;
    if version < SCHEMA_VERSION {
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite(path))?;
    }
    Ok(())
}

fn check_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sqlite(path))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found: version,
        });
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags;

    fn obs(citizen: &str, device: &str, metric: Metric, value: f64, time_ms: i64) -> Observation {
        Observation {
            citizen: Arc::from(citizen),
            device: Arc::from(device),
            metric,
            value,
            time_ms,
            received_ms: time_ms + 5,
            seq: 1,
            flags: 0,
        }
    }

    fn query(metric: Metric) -> Query {
        Query::new(metric)
    }

    #[test]
    fn a_writer_keeps_a_bounded_page_cache_and_gives_it_back_on_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        let cache: i64 = store
            .conn
            .query_row("PRAGMA cache_size", [], |r| r.get(0))
            .expect("cache_size");
        assert_eq!(cache, -i64::from(WRITER_CACHE_KIB), "negative: KiB");
        let batch: Vec<_> = (0..1_000)
            .map(|i| obs("c1", "d1", Metric::HeartRate, 60.0, i * 1_000))
            .collect();
        store.write_batch(&batch).expect("write");
        store.release_memory().expect("release");
        let stats = store.write_batch(&batch).expect("write again");
        assert_eq!(
            stats.duplicates, 1_000,
            "the store works on after giving memory back"
        );
    }

    #[test]
    fn within_a_batch_the_first_reading_of_a_time_stays_and_the_last_summary_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        let batch = vec![
            obs("c1", "d1", Metric::HeartRate, 61.0, 2_000),
            obs("c1", "d1", Metric::SleepTime, 400.0, 1_000),
            obs("c2", "d2", Metric::HeartRate, 70.0, 1_000),
            obs("c1", "d1", Metric::HeartRate, 99.0, 2_000),
            obs("c1", "d1", Metric::HeartRate, 60.0, 1_000),
            obs("c1", "d1", Metric::SleepTime, 420.0, 1_000),
        ];
        let stats = store.write_batch(&batch).expect("write");
        assert_eq!((stats.inserted, stats.duplicates), (5, 1));
        let rows = store.query(&query(Metric::HeartRate)).expect("query");
        let values: Vec<(&str, i64, f64)> = rows
            .iter()
            .map(|r| (&*r.citizen, r.time_ms, r.value))
            .collect();
        assert_eq!(
            values,
            [
                ("c1", 1_000, 60.0),
                ("c2", 1_000, 70.0),
                ("c1", 2_000, 61.0)
            ],
            "a device's repeat is stored once, as first sent"
        );
        let sleep = store.query(&query(Metric::SleepTime)).expect("query");
        assert_eq!(sleep.len(), 1);
        assert_eq!(
            sleep[0].value, 420.0,
            "a summary computed again replaces the first"
        );
    }

    #[test]
    fn round_trip_in_time_order_with_filters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        let batch = vec![
            obs("c2", "d2", Metric::HeartRate, 70.0, 2_000),
            obs("c1", "d1", Metric::HeartRate, 60.0, 1_000),
            obs("c1", "d1", Metric::HeartRate, 61.0, 3_000),
            obs("c1", "d1", Metric::RespiratoryRate, 14.0, 1_000),
        ];
        assert_eq!(
            store.write_batch(&batch).expect("write"),
            WriteStats {
                inserted: 4,
                duplicates: 0
            }
        );
        let rows = store.query(&query(Metric::HeartRate)).expect("query");
        let times: Vec<i64> = rows.iter().map(|r| r.time_ms).collect();
        assert_eq!(times, vec![1_000, 2_000, 3_000]);
        assert_eq!(rows[0].unit, "/min");
        let only_c1 = store
            .query(&Query {
                citizen: Some("c1".into()),
                from_ms: Some(2_000),
                ..query(Metric::HeartRate)
            })
            .expect("query");
        assert_eq!(only_c1.len(), 1);
        assert_eq!((only_c1[0].value, only_c1[0].device.as_str()), (61.0, "d1"));
        let to_exclusive = store
            .query(&Query {
                to_ms: Some(2_000),
                ..query(Metric::HeartRate)
            })
            .expect("query");
        assert_eq!(to_exclusive.len(), 1);
        let limited = store
            .query(&Query {
                limit: Some(2),
                ..query(Metric::HeartRate)
            })
            .expect("query");
        assert_eq!(limited.len(), 2);
        assert_eq!(
            store.metrics().expect("metrics"),
            vec![Metric::HeartRate, Metric::RespiratoryRate]
        );
    }

    #[test]
    fn the_latest_reading_comes_from_whichever_device_sent_it_last() {
        let dir = tempfile::tempdir().expect("dir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        store
            .write_batch(&[
                obs("c1", "bed", Metric::HeartRate, 60.0, 1_000),
                obs("c1", "bed", Metric::HeartRate, 61.0, 3_000),
                obs("c1", "watch", Metric::HeartRate, 70.0, 2_000),
                obs("c1", "watch", Metric::HeartRate, 71.0, 4_000),
                obs("c2", "bed-2", Metric::HeartRate, 50.0, 9_000),
            ])
            .expect("write");
        let latest = store
            .latest("c1", Metric::HeartRate, 0)
            .expect("latest")
            .expect("found");
        assert_eq!(
            (latest.time_ms, latest.device.as_str(), latest.value),
            (4_000, "watch", 71.0)
        );
        assert_eq!(
            store.latest("c1", Metric::HeartRate, 5_000).expect("since"),
            None
        );
        let mut glitch = obs("c1", "watch", Metric::HeartRate, 400.0, 6_000);
        glitch.flags = crate::flags::IMPLAUSIBLE;
        store.write_batch(&[glitch]).expect("write");
        let latest = store
            .latest("c1", Metric::HeartRate, 0)
            .expect("latest")
            .expect("found");
        assert_eq!(
            latest.value, 71.0,
            "the implausible reading is not the latest vital"
        );
        assert_eq!(
            store.latest("c1", Metric::Spo2, 0).expect("other metric"),
            None
        );
    }

    #[test]
    fn repeats_of_device_metric_time_are_stored_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        let one = obs("c1", "d1", Metric::HeartRate, 60.0, 1_000);
        let mut flagged = obs("c1", "d1", Metric::HeartRate, 999.0, 1_000);
        flagged.flags = flags::IMPLAUSIBLE;
        assert_eq!(
            store
                .write_batch(&[one.clone(), one.clone()])
                .expect("write"),
            WriteStats {
                inserted: 1,
                duplicates: 1
            }
        );
        assert_eq!(
            store.write_batch(&[flagged]).expect("write"),
            WriteStats {
                inserted: 0,
                duplicates: 1
            }
        );
        let rows = store.query(&query(Metric::HeartRate)).expect("query");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].value, 60.0, "the first write wins");
        assert_eq!(rows[0].implausible(), Some(false));
    }

    #[test]
    fn aggregates_across_citizens_need_buckets_and_merge_every_series() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        store
            .write_batch(&[
                obs("c1", "d1", Metric::HeartRate, 60.0, 1_000),
                obs("c2", "d2", Metric::HeartRate, 80.0, 2_000),
                obs("c2", "d2", Metric::HeartRate, 70.0, 61_000),
            ])
            .expect("write");
        let mut across = query(Metric::HeartRate);
        across.across = true;
        assert!(matches!(
            store.query(&across),
            Err(StoreError::AcrossNeedsBuckets)
        ));
        across.every_ms = Some(60_000);
        let rows = store.query(&across).expect("query");
        let seen: Vec<(i64, &str, f64)> = rows
            .iter()
            .map(|r| (r.time_ms, r.citizen.as_str(), r.value))
            .collect();
        assert_eq!(seen, vec![(0, "*", 70.0), (60_000, "*", 70.0)]);
    }

    #[test]
    fn citizens_and_percentiles_across_count_each_citizen_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        store
            .write_batch(&[
                // c1 has two devices: its mean over both is (50 + 70 + 60) / 3 = 60.
                obs("c1", "d1", Metric::HeartRate, 50.0, 1_000),
                obs("c1", "d1", Metric::HeartRate, 70.0, 2_000),
                obs("c1", "d1b", Metric::HeartRate, 60.0, 3_000),
                obs("c2", "d2", Metric::HeartRate, 80.0, 1_000),
                obs("c3", "d3", Metric::HeartRate, 100.0, 1_000),
                obs("c3", "d3", Metric::HeartRate, 90.0, 61_000),
                obs("c2", "d2", Metric::HeartRate, 70.0, 121_000),
            ])
            .expect("write");
        let mut q = query(Metric::HeartRate);
        q.every_ms = Some(60_000);
        let values = |q: &Query| -> Vec<(i64, f64)> {
            let rows = store.query(q).expect("query");
            assert!(rows.iter().all(|r| r.citizen == "*" && r.aggregated));
            rows.iter().map(|r| (r.time_ms, r.value)).collect()
        };
        for agg in [Agg::Citizens, Agg::Percentile(50)] {
            q.agg = agg;
            assert!(matches!(store.query(&q), Err(StoreError::NeedsAcross(a)) if a == agg));
        }
        q.across = true;
        q.agg = Agg::Citizens;
        assert_eq!(values(&q), [(0, 3.0), (60_000, 1.0), (120_000, 1.0)]);
        q.agg = Agg::Percentile(50);
        // Citizens' means in the first minute: 60, 80, 100.
        assert_eq!(values(&q), [(0, 80.0), (60_000, 90.0), (120_000, 70.0)]);
        q.agg = Agg::Percentile(90);
        assert_eq!(values(&q)[0], (0, 96.0));
        // Pages count buckets, and resume after the last one.
        q.limit = Some(2);
        assert_eq!(values(&q).len(), 2);
        q.resume = Some(crate::query::Resume {
            time_ms: 60_000,
            citizen: "*".to_owned(),
            device: "*".to_owned(),
            inclusive: false,
        });
        assert_eq!(values(&q), [(120_000, 70.0)]);
    }

    #[test]
    fn a_page_resumes_after_a_row_or_at_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        let mut batch = Vec::new();
        for t in [1_000, 61_000, 121_000] {
            batch.push(obs("c1", "d1", Metric::HeartRate, 60.0, t));
            batch.push(obs("c2", "d2", Metric::HeartRate, 70.0, t));
        }
        store.write_batch(&batch).expect("write");
        let key = |rows: Vec<Row>| -> Vec<(i64, String)> {
            rows.into_iter().map(|r| (r.time_ms, r.citizen)).collect()
        };
        let mut q = query(Metric::HeartRate);
        q.limit = Some(2);
        q.resume = Some(crate::query::Resume {
            time_ms: 61_000,
            citizen: "c1".into(),
            device: "d1".into(),
            inclusive: false,
        });
        assert_eq!(
            key(store.query(&q).expect("raw")),
            vec![(61_000, "c2".into()), (121_000, "c1".into())]
        );
        if let Some(r) = q.resume.as_mut() {
            r.inclusive = true;
        }
        assert_eq!(
            key(store.query(&q).expect("raw, inclusive")),
            vec![(61_000, "c1".into()), (61_000, "c2".into())]
        );
        q.every_ms = Some(60_000);
        q.resume = Some(crate::query::Resume {
            time_ms: 60_000,
            citizen: "c2".into(),
            device: "d2".into(),
            inclusive: false,
        });
        assert_eq!(
            key(store.query(&q).expect("buckets")),
            vec![(120_000, "c1".into()), (120_000, "c2".into())]
        );
    }

    #[test]
    fn raw_rows_carry_their_flags_and_aggregates_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        let mut flagged = obs("c1", "d1", Metric::HeartRate, 290.0, 1_000);
        flagged.flags = flags::IMPLAUSIBLE;
        store
            .write_batch(&[flagged, obs("c1", "d1", Metric::HeartRate, 60.0, 2_000)])
            .expect("write");
        let rows = store.query(&query(Metric::HeartRate)).expect("query");
        let flags: Vec<Option<bool>> = rows.iter().map(Row::implausible).collect();
        assert_eq!(flags, vec![Some(true), Some(false)]);
        let mut every = query(Metric::HeartRate);
        every.every_ms = Some(60_000);
        let buckets = store.query(&every).expect("query");
        assert_eq!(buckets[0].implausible(), None);
    }

    #[test]
    fn a_derived_value_is_replaced_when_its_window_is_computed_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        store
            .write_batch(&[obs("c1", "d1", Metric::SleepTime, 400.0, 1_000)])
            .expect("write");
        let again = store
            .write_batch(&[obs("c1", "d1", Metric::SleepTime, 415.0, 1_000)])
            .expect("write");
        assert_eq!(again.inserted, 1);
        let rows = store.query(&query(Metric::SleepTime)).expect("query");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].value, 415.0, "the later computation wins");
    }

    #[test]
    fn window_inputs_are_noted_with_their_span_and_forgotten_on_erasure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db"))
            .expect("open")
            .track_windows();
        store
            .write_batch(&[
                obs("c1", "bed", Metric::SleepStage, 1.0, 5_000),
                obs("c1", "bed", Metric::HeartRate, 60.0, 9_000),
                obs("c1", "bed", Metric::SleepStage, 2.0, 2_000),
                obs("c2", "watch", Metric::Steps, 12.0, 7_000),
            ])
            .expect("write");
        let spans = |store: &PersonalStore| -> Vec<(String, i64, i64, i64)> {
            let mut s = store
                .conn
                .prepare(
                    "SELECT s.device, d.from_ms, d.to_ms, d.version FROM window_dirty d
                     JOIN series s ON s.id = d.series ORDER BY s.device",
                )
                .expect("prepare");
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        assert_eq!(
            spans(&store),
            vec![
                ("bed".to_owned(), 2_000, 5_000, 1),
                ("watch".to_owned(), 7_000, 7_000, 1)
            ],
            "heart rate feeds no window"
        );
        store
            .write_batch(&[
                obs("c1", "bed", Metric::SleepStage, 3.0, 8_000),
                obs("c2", "watch", Metric::Steps, 12.0, 7_000),
            ])
            .expect("write");
        let after = spans(&store);
        assert_eq!(after[0], ("bed".to_owned(), 2_000, 8_000, 2), "widened");
        assert_eq!(after[1].3, 1, "a duplicate changes nothing");
        store.erase_citizen("c1").expect("erase");
        let notes: i64 = store
            .conn
            .query_row("SELECT count(*) FROM window_dirty", [], |r| r.get(0))
            .expect("count");
        assert_eq!(
            notes, 1,
            "the erased citizen's notes are gone with the series"
        );
    }

    #[test]
    fn data_survives_reopen_and_reads_alongside_a_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.db");
        let mut writer = PersonalStore::open(&path).expect("open");
        writer
            .write_batch(&[obs("c1", "d1", Metric::SleepStage, 2.0, 1_000)])
            .expect("write");
        let reader = PersonalStore::open_read_only(&path).expect("read-only");
        assert_eq!(reader.count().expect("count"), 1);
        drop(writer);
        let mut again = PersonalStore::open(&path).expect("reopen");
        again
            .write_batch(&[obs("c1", "d1", Metric::SleepStage, 3.0, 2_000)])
            .expect("write");
        assert_eq!(again.count().expect("count"), 2);
        drop((again, reader));
        // `kenko query` after the hub has stopped: no writer, WAL checkpointed away.
        let reader = PersonalStore::open_read_only(&path).expect("read-only");
        let values: Vec<f64> = reader
            .query(&query(Metric::SleepStage))
            .expect("query")
            .iter()
            .map(|r| r.value)
            .collect();
        assert_eq!(values, vec![2.0, 3.0]);
    }

    #[test]
    fn writer_is_durable_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal_mode");
        let sync: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .expect("synchronous");
        assert_eq!(
            (mode.as_str(), sync),
            ("wal", 2),
            "WAL with synchronous=FULL"
        );
    }

    #[test]
    fn a_failing_batch_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        store
            .write_batch(&[obs("c1", "d1", Metric::HeartRate, 60.0, 1_000)])
            .expect("write");
        // Makes SQLite fail on the third row, after two rows, one of them in a series new to
        // this batch, are already in the transaction.
        store
            .conn
            .execute_batch(
                "CREATE TEMP TRIGGER unlucky BEFORE INSERT ON observations WHEN NEW.value = 13
                 BEGIN SELECT RAISE(ABORT, 'unlucky value'); END;",
            )
            .expect("trigger");
        let batch = [
            obs("c1", "d1", Metric::HeartRate, 61.0, 2_000),
            obs("c2", "d2", Metric::HeartRate, 70.0, 2_000),
            obs("c2", "d2", Metric::HeartRate, 13.0, 3_000),
        ];
        let err = store.write_batch(&batch).expect_err("trigger fires");
        assert!(err.to_string().contains("unlucky value"), "{err}");
        assert_eq!(store.count().expect("count"), 1);
        let series: i64 = store
            .conn
            .query_row("SELECT count(*) FROM series", [], |r| r.get(0))
            .expect("series");
        assert_eq!(series, 1, "the rolled-back series is gone");
        // A series id cached from the rolled-back batch would orphan these rows.
        assert_eq!(
            store.write_batch(&batch[..2]).expect("retry"),
            WriteStats {
                inserted: 2,
                duplicates: 0
            }
        );
        let c2 = store
            .query(&Query {
                citizen: Some("c2".into()),
                ..query(Metric::HeartRate)
            })
            .expect("query");
        assert_eq!(c2.len(), 1);
        assert_eq!((c2[0].device.as_str(), c2[0].value), ("d2", 70.0));

        // The same when creating a series fails, after an earlier row made another series.
        store
            .conn
            .execute_batch(
                "CREATE TEMP TRIGGER no_c4 BEFORE INSERT ON series WHEN NEW.citizen = 'c4'
                 BEGIN SELECT RAISE(ABORT, 'no c4'); END;",
            )
            .expect("trigger");
        let batch = [
            obs("c3", "d3", Metric::HeartRate, 65.0, 2_000),
            obs("c4", "d4", Metric::HeartRate, 66.0, 2_000),
        ];
        store.write_batch(&batch).expect_err("trigger fires");
        store.write_batch(&batch[..1]).expect("retry");
        let c3 = store
            .query(&Query {
                citizen: Some("c3".into()),
                ..query(Metric::HeartRate)
            })
            .expect("query");
        assert_eq!(c3.len(), 1, "c3's row is joined to a series that exists");
    }

    #[test]
    fn non_finite_values_are_refused_not_counted_as_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        for bad in [f64::NAN, f64::INFINITY] {
            let err = store
                .write_batch(&[
                    obs("c1", "d1", Metric::HeartRate, 60.0, 1_000),
                    obs("c1", "d1", Metric::HeartRate, bad, 2_000),
                ])
                .expect_err("non-finite");
            assert!(
                matches!(err, StoreError::NotFinite { time_ms: 2_000, .. }),
                "{err}"
            );
            assert!(
                err.to_string().contains("heart_rate from device d1"),
                "{err}"
            );
        }
        assert_eq!(store.count().expect("count"), 0);
    }

    #[test]
    fn missing_store_says_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = PersonalStore::open_read_only(&dir.path().join("nope.db"))
            .err()
            .expect("missing");
        assert!(
            err.to_string()
                .contains("run `kenko demo` or `kenko serve`"),
            "{err}"
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.db");
        drop(PersonalStore::open(&path).expect("open"));
        Connection::open(&path)
            .expect("raw")
            .pragma_update(None, "user_version", 99)
            .expect("bump");
        let err = PersonalStore::open(&path).err().expect("newer");
        assert!(err.to_string().contains("upgrade kenko"), "{err}");
    }

    #[test]
    fn aggregates_by_bucket_per_series() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        let batch: Vec<_> = (0..6)
            .map(|i| {
                obs(
                    "c1",
                    "d1",
                    Metric::HeartRate,
                    60.0 + i as f64,
                    60_000 + i * 20_000,
                )
            })
            .collect();
        store.write_batch(&batch).expect("write");
        // Minutes [60 s, 120 s) hold 60,61,62; [120 s, 180 s) hold 63,64,65.
        let mean = store
            .query(&Query {
                every_ms: Some(60_000),
                ..query(Metric::HeartRate)
            })
            .expect("query");
        let got: Vec<(i64, f64)> = mean.iter().map(|r| (r.time_ms, r.value)).collect();
        assert_eq!(got, vec![(60_000, 61.0), (120_000, 64.0)]);
        assert!(mean.iter().all(|r| r.aggregated && r.unit == "/min"));
        let count = store
            .query(&Query {
                every_ms: Some(60_000),
                agg: Agg::Count,
                ..query(Metric::HeartRate)
            })
            .expect("query");
        assert_eq!(
            count.iter().map(|r| r.value).collect::<Vec<_>>(),
            vec![3.0, 3.0]
        );
        assert_eq!(count[0].unit, "{count}");
        let max = store
            .query(&Query {
                every_ms: Some(60_000),
                agg: Agg::Max,
                ..query(Metric::HeartRate)
            })
            .expect("query");
        assert_eq!(max[1].value, 65.0);
        let min = store
            .query(&Query {
                every_ms: Some(60_000),
                agg: Agg::Min,
                ..query(Metric::HeartRate)
            })
            .expect("query");
        assert_eq!(min[0].value, 60.0);
    }

    #[test]
    fn buckets_are_per_citizen_and_device_and_aligned_to_the_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = PersonalStore::open(&dir.path().join("p.db")).expect("open");
        store
            .write_batch(&[
                obs("c2", "d2", Metric::HeartRate, 80.0, 3_600_000 + 59_999),
                obs("c1", "d1", Metric::HeartRate, 60.0, 3_600_000 + 1),
                obs("c1", "d9", Metric::HeartRate, 90.0, 3_600_000 + 2),
                obs("c1", "d1", Metric::HeartRate, 62.0, 3_600_000 + 30_000),
                obs("c1", "d1", Metric::HeartRate, 50.0, -1),
            ])
            .expect("write");
        let rows = store
            .query(&Query {
                every_ms: Some(60_000),
                ..query(Metric::HeartRate)
            })
            .expect("query");
        let got: Vec<(i64, &str, &str, f64)> = rows
            .iter()
            .map(|r| (r.time_ms, r.citizen.as_str(), r.device.as_str(), r.value))
            .collect();
        assert_eq!(
            got,
            vec![
                (-60_000, "c1", "d1", 50.0),
                (3_600_000, "c1", "d1", 61.0),
                (3_600_000, "c1", "d9", 90.0),
                (3_600_000, "c2", "d2", 80.0),
            ]
        );
        let err = store
            .query(&Query {
                every_ms: Some(0),
                ..query(Metric::HeartRate)
            })
            .expect_err("zero width");
        assert!(matches!(err, StoreError::BadBucket(0)), "{err}");
    }
}
