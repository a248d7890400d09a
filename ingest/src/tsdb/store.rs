//! Prototype chunk store: sealed chunks in SQLite (one row per series and time bucket, with
//! the header's aggregates as columns) and the open part of each series in memory.
//!
//! Points are appended to an in-memory head per (series, bucket); every `PIECE` points a
//! head's tail is encoded into a piece so that open buckets stay small. `flush` seals the
//! buckets that have closed: their pieces, tail and any chunk already stored for that bucket
//! (late points) are merged, repeats of a time dropped (the first stored wins), and written
//! as one chunk, all buckets of a flush in one transaction. Not yet used by the sink: the
//! open heads are recoverable only once the write-ahead log checkpoint follows `flush`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::chunk::{Chunk, ChunkError};

/// Points of a head's tail encoded together into a piece.
const PIECE: usize = 512;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS series (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS chunks (
    series_id INTEGER NOT NULL,
    start_ms  INTEGER NOT NULL,
    end_ms    INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    min       REAL    NOT NULL,
    max       REAL    NOT NULL,
    sum       REAL    NOT NULL,
    data      BLOB    NOT NULL,
    PRIMARY KEY (series_id, start_ms)
);
-- Covers aggregate reads, which then never touch the pages of the chunks' bytes.
CREATE INDEX IF NOT EXISTS chunk_headers
    ON chunks (series_id, start_ms, end_ms, count, min, max, sum);
";

/// What went wrong in the chunk store.
#[derive(Debug, thiserror::Error)]
pub enum TsdbError {
    #[error("chunk store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("chunk of series {series} at {start_ms} ms in {path}: {source}")]
    Chunk {
        path: PathBuf,
        series: i64,
        start_ms: i64,
        source: ChunkError,
    },
    #[error("series {series} at {time_ms} ms has no finite value ({value}); reject it before it reaches the store")]
    NotFinite {
        series: i64,
        time_ms: i64,
        value: f64,
    },
    #[error("bucket width {0} ms is not positive; pass a positive width such as 3600000")]
    BadBucket(i64),
}

/// What one flush wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    pub chunks: usize,
    pub points: usize,
    /// Chunks merged with one already stored for their bucket (late points).
    pub merged: usize,
}

/// The open part of one bucket of one series.
#[derive(Debug)]
struct Head {
    bucket: i64,
    pieces: Vec<Chunk>,
    tail: Vec<(i64, f64)>,
}

impl Head {
    fn new(bucket: i64) -> Head {
        Head {
            bucket,
            pieces: Vec::new(),
            tail: Vec::with_capacity(PIECE),
        }
    }

    fn push(&mut self, point: (i64, f64)) {
        self.tail.push(point);
        if self.tail.len() == PIECE {
            self.compact();
        }
    }

    /// Encodes the tail into a piece.
    fn compact(&mut self) {
        sort_unique(&mut self.tail);
        // Sorted, unique and non-empty, so encoding cannot fail; keep the tail if it did.
        if let Ok(piece) = Chunk::encode(&self.tail) {
            self.pieces.push(piece);
            self.tail.clear();
        }
    }

    /// Its points after `earlier` ones, sorted and unique by time (the earlier arrival wins).
    fn points_after(&self, mut earlier: Vec<(i64, f64)>) -> Vec<(i64, f64)> {
        for piece in &self.pieces {
            earlier.extend(piece.decode());
        }
        earlier.extend_from_slice(&self.tail);
        sort_unique(&mut earlier);
        earlier
    }
}

/// Sorts by time, stably, and keeps the first of each time.
fn sort_unique(points: &mut Vec<(i64, f64)>) {
    if points.windows(2).any(|w| w[1].0 <= w[0].0) {
        points.sort_by_key(|p| p.0);
        points.dedup_by_key(|p| p.0);
    }
}

/// The chunk store over one SQLite file.
pub struct ChunkStore {
    conn: Connection,
    path: PathBuf,
    bucket_ms: i64,
    heads: HashMap<i64, Vec<Head>>,
}

impl ChunkStore {
    /// Opens (creating if needed) a store whose chunks each cover `bucket_ms` of time.
    pub fn open(path: &Path, bucket_ms: i64) -> Result<ChunkStore, TsdbError> {
        if bucket_ms <= 0 {
            return Err(TsdbError::BadBucket(bucket_ms));
        }
        let conn = Connection::open(path).map_err(sqlite(path))?;
        // FULL: a flush is the point from which the write-ahead log may be dropped.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -16384;",
        )
        .map_err(sqlite(path))?;
        conn.execute_batch(SCHEMA).map_err(sqlite(path))?;
        Ok(ChunkStore {
            conn,
            path: path.to_owned(),
            bucket_ms,
            heads: HashMap::new(),
        })
    }

    /// The id of series `name`, registering it if new.
    pub fn series(&mut self, name: &str) -> Result<i64, TsdbError> {
        let path = self.path.clone();
        self.conn
            .execute(
                "INSERT OR IGNORE INTO series (name) VALUES (?1)",
                params![name],
            )
            .map_err(sqlite(&path))?;
        self.conn
            .query_row(
                "SELECT id FROM series WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .map_err(sqlite(&path))
    }

    /// Adds (series, time, value) observations to the open heads, in memory.
    pub fn append(&mut self, batch: &[(i64, i64, f64)]) -> Result<(), TsdbError> {
        if let Some(&(series, time_ms, value)) = batch.iter().find(|o| !o.2.is_finite()) {
            return Err(TsdbError::NotFinite {
                series,
                time_ms,
                value,
            });
        }
        for &(series, time_ms, value) in batch {
            let bucket = time_ms.div_euclid(self.bucket_ms);
            let heads = self.heads.entry(series).or_default();
            // Nearly always the last head: late points are rare.
            let head = match heads.iter().rposition(|h| h.bucket == bucket) {
                Some(at) => &mut heads[at],
                None => {
                    heads.push(Head::new(bucket));
                    let last = heads.len() - 1;
                    &mut heads[last]
                }
            };
            head.push((time_ms, value));
        }
        Ok(())
    }

    /// Seals every bucket that ends at or before `closed_ms`.
    pub fn flush(&mut self, closed_ms: i64) -> Result<FlushStats, TsdbError> {
        let bucket_ms = self.bucket_ms;
        self.seal(|bucket| (bucket + 1).saturating_mul(bucket_ms) <= closed_ms)
    }

    /// Seals every bucket, open ones too (later points to them merge with what is stored).
    pub fn flush_all(&mut self) -> Result<FlushStats, TsdbError> {
        self.seal(|_| true)
    }

    fn seal(&mut self, closed: impl Fn(i64) -> bool) -> Result<FlushStats, TsdbError> {
        let mut sealing = Vec::new();
        for (&series, heads) in &mut self.heads {
            // Most flushes seal nothing of most series: do not rebuild their heads.
            if !heads.iter().any(|h| closed(h.bucket)) {
                continue;
            }
            let (done, open): (Vec<Head>, Vec<Head>) =
                heads.drain(..).partition(|h| closed(h.bucket));
            *heads = open;
            sealing.extend(done.into_iter().map(|h| (series, h)));
        }
        self.heads.retain(|_, heads| !heads.is_empty());
        if sealing.is_empty() {
            return Ok(FlushStats::default());
        }
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sqlite(&path))?;
        let mut stats = FlushStats::default();
        {
            let mut stored = tx
                .prepare_cached("SELECT data FROM chunks WHERE series_id = ?1 AND start_ms = ?2")
                .map_err(sqlite(&path))?;
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO chunks (series_id, start_ms, end_ms, count, min, max, sum, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(sqlite(&path))?;
            for (series, head) in sealing {
                let start_ms = head.bucket.saturating_mul(self.bucket_ms);
                let chunk_error = |source| TsdbError::Chunk {
                    path: path.clone(),
                    series,
                    start_ms,
                    source,
                };
                let before: Option<Vec<u8>> = stored
                    .query_row(params![series, start_ms], |r| r.get(0))
                    .optional()
                    .map_err(sqlite(&path))?;
                let earlier = match before {
                    Some(bytes) => {
                        stats.merged += 1;
                        Chunk::from_bytes(&bytes)
                            .and_then(|c| c.points())
                            .map_err(chunk_error)?
                    }
                    None => Vec::new(),
                };
                let points = head.points_after(earlier);
                let chunk = Chunk::encode(&points).map_err(chunk_error)?;
                let h = chunk.header();
                put.execute(params![
                    series,
                    start_ms,
                    h.last_ms,
                    h.count,
                    h.min,
                    h.max,
                    h.sum,
                    chunk.as_bytes()
                ])
                .map_err(sqlite(&path))?;
                stats.chunks += 1;
                stats.points += points.len();
            }
        }
        tx.commit().map_err(sqlite(&path))?;
        Ok(stats)
    }

    /// Points of `series` with `from_ms ≤ time < to_ms`, stored and open, in time order.
    pub fn range(
        &self,
        series: i64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, f64)>, TsdbError> {
        let first_start = from_ms
            .div_euclid(self.bucket_ms)
            .saturating_mul(self.bucket_ms);
        let mut points = Vec::new();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT start_ms, data FROM chunks
                 WHERE series_id = ?1 AND start_ms >= ?2 AND start_ms < ?3 AND end_ms >= ?4
                 ORDER BY start_ms",
            )
            .map_err(sqlite(&self.path))?;
        let mut rows = stmt
            .query(params![series, first_start, to_ms, from_ms])
            .map_err(sqlite(&self.path))?;
        while let Some(row) = rows.next().map_err(sqlite(&self.path))? {
            let start_ms: i64 = row.get(0).map_err(sqlite(&self.path))?;
            let bytes = row.get_ref(1).and_then(|v| Ok(v.as_blob()?));
            let chunk = bytes.map_err(sqlite(&self.path)).and_then(|b| {
                Chunk::from_bytes(b).map_err(|source| self.chunk_error(series, start_ms, source))
            })?;
            points.extend(chunk.decode().filter(|p| p.0 >= from_ms && p.0 < to_ms));
        }
        let open: Vec<(i64, f64)> = self
            .heads
            .get(&series)
            .into_iter()
            .flatten()
            .flat_map(|h| h.points_after(Vec::new()))
            .filter(|p| p.0 >= from_ms && p.0 < to_ms)
            .collect();
        if !open.is_empty() {
            points.extend(open);
            sort_unique(&mut points);
        }
        Ok(points)
    }

    /// Count and mean of stored points of `series` per `every_ms` bucket in
    /// `[from_ms, to_ms)`, from chunk headers where a chunk lies inside one bucket and the
    /// range, decoding the others. Open heads are not included.
    pub fn means(
        &self,
        series: i64,
        from_ms: i64,
        to_ms: i64,
        every_ms: i64,
    ) -> Result<Vec<(i64, u64, f64)>, TsdbError> {
        if every_ms <= 0 {
            return Err(TsdbError::BadBucket(every_ms));
        }
        let first_start = from_ms
            .div_euclid(self.bucket_ms)
            .saturating_mul(self.bucket_ms);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT start_ms, end_ms, count, sum FROM chunks
                 WHERE series_id = ?1 AND start_ms >= ?2 AND start_ms < ?3 AND end_ms >= ?4
                 ORDER BY start_ms",
            )
            .map_err(sqlite(&self.path))?;
        let headers: Vec<(i64, i64, u64, f64)> = stmt
            .query_map(params![series, first_start, to_ms, from_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(sqlite(&self.path))?;
        let mut sums: Vec<(i64, u64, f64)> = Vec::new();
        let mut add = |bucket: i64, count: u64, sum: f64| match sums.last_mut() {
            Some(last) if last.0 == bucket => {
                last.1 += count;
                last.2 += sum;
            }
            _ => sums.push((bucket, count, sum)),
        };
        for (start_ms, end_ms, count, sum) in headers {
            let bucket = start_ms.div_euclid(every_ms);
            let inside =
                start_ms >= from_ms && end_ms < to_ms && end_ms.div_euclid(every_ms) == bucket;
            if inside {
                add(bucket * every_ms, count, sum);
                continue;
            }
            for (time, value) in self.chunk_points(series, start_ms)? {
                if time >= from_ms && time < to_ms {
                    add(time.div_euclid(every_ms) * every_ms, 1, value);
                }
            }
        }
        Ok(sums
            .into_iter()
            .map(|(bucket, count, sum)| (bucket, count, sum / count as f64))
            .collect())
    }

    fn chunk_points(&self, series: i64, start_ms: i64) -> Result<Vec<(i64, f64)>, TsdbError> {
        let bytes: Vec<u8> = self
            .conn
            .prepare_cached("SELECT data FROM chunks WHERE series_id = ?1 AND start_ms = ?2")
            .and_then(|mut s| s.query_row(params![series, start_ms], |r| r.get(0)))
            .map_err(sqlite(&self.path))?;
        Chunk::from_bytes(&bytes)
            .and_then(|c| c.points())
            .map_err(|source| self.chunk_error(series, start_ms, source))
    }

    /// Folds SQLite's own log into the file, so that its size is the store's size.
    pub fn checkpoint(&self) -> Result<(), TsdbError> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(sqlite(&self.path))
    }

    fn chunk_error(&self, series: i64, start_ms: i64, source: ChunkError) -> TsdbError {
        TsdbError::Chunk {
            path: self.path.clone(),
            series,
            start_ms,
            source,
        }
    }
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> TsdbError + '_ {
    move |source| TsdbError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn store(dir: &tempfile::TempDir) -> ChunkStore {
        ChunkStore::open(&dir.path().join("chunks.db"), HOUR).expect("open")
    }

    #[test]
    fn range_reads_stored_and_open_points_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = store(&dir);
        let id = s.series("citizen-1/bed-1/heart_rate").expect("series");
        let batch: Vec<_> = (0..7_200i64)
            .map(|i| (id, i * 1_000, (60 + i % 7) as f64))
            .collect();
        s.append(&batch).expect("append");
        let stats = s.flush(HOUR).expect("flush");
        assert_eq!((stats.chunks, stats.points), (1, 3_600));
        let got = s.range(id, 1_800_000, 5_400_000).expect("range");
        let want: Vec<_> = batch[1_800..5_400].iter().map(|o| (o.1, o.2)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn late_points_merge_and_repeats_keep_the_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = store(&dir);
        let id = s.series("a").expect("series");
        s.append(&[(id, 1_000, 1.0), (id, 3_000, 3.0)])
            .expect("append");
        s.flush_all().expect("flush");
        s.append(&[(id, 2_000, 2.0), (id, 3_000, 99.0)])
            .expect("append");
        let stats = s.flush_all().expect("flush");
        assert_eq!(stats.merged, 1);
        assert_eq!(
            s.range(id, 0, HOUR).expect("range"),
            vec![(1_000, 1.0), (2_000, 2.0), (3_000, 3.0)]
        );
        let means = s.means(id, 0, HOUR, HOUR).expect("means");
        assert_eq!(means, vec![(0, 3, 2.0)]);
    }

    #[test]
    fn means_split_chunks_that_straddle_buckets() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = store(&dir);
        let id = s.series("a").expect("series");
        let batch: Vec<_> = (0..120i64).map(|i| (id, i * 60_000, i as f64)).collect();
        s.append(&batch).expect("append");
        s.flush_all().expect("flush");
        let means = s.means(id, 0, 2 * HOUR, 30 * 60_000).expect("means");
        let want: Vec<_> = (0..4i64)
            .map(|q| (q * 1_800_000, 30, (q * 30) as f64 + 14.5))
            .collect();
        assert_eq!(means, want);
    }

    #[test]
    fn a_damaged_stored_chunk_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = store(&dir);
        let id = s.series("a").expect("series");
        s.append(&[(id, 1_000, 1.0), (id, 2_000, 2.0)])
            .expect("append");
        s.flush_all().expect("flush");
        let mut data: Vec<u8> = s
            .conn
            .query_row("SELECT data FROM chunks", [], |r| r.get(0))
            .expect("stored chunk");
        let middle = data.len() / 2;
        data[middle] ^= 0x10;
        s.conn
            .execute("UPDATE chunks SET data = ?1", params![data])
            .expect("damage");
        let err = s.range(id, 0, HOUR).expect_err("damaged chunk");
        assert!(matches!(err, TsdbError::Chunk { .. }), "{err}");
    }
}
