//! Sealed hours of raw observations, kept as compressed chunks (`tsdb::Chunk`) in the store
//! files beside the rows they came from.
//!
//! The store sink writes every observation as a row (the *head*: recent data, cheap to
//! write and to change). Once an hour of a series is [`SEALED_AFTER_MS`] in the past, the
//! retention job *seals* it: its plausible rows (flags 0) become one chunk of that series
//! and hour, and are deleted, in one transaction, so that a point is either a row or in a
//! chunk, never both. Rows with flags (implausible, corrected …), derived metrics (sleep
//! summaries and daily steps, replaced when computed again) and hours of fewer than
//! [`MIN_POINTS`] points (a chunk's header would cost more than the rows) stay rows.
//!
//! A late point for a sealed hour is written as a row once the store has checked that the
//! chunk does not already hold its time (a repeat is stored once), and the next pass merges
//! it into the chunk. What a chunk keeps is the time and value of each point; the received
//! time and sequence number of a row are not kept.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use tracing::warn;

use crate::rollup::{bucket_start, HOUR_MS};
use crate::store::{sqlite, StoreError};
use crate::tsdb::Chunk;

/// The time span of one chunk: an hour, aligned to the epoch like the 1-hour rollups.
pub const SPAN_MS: i64 = HOUR_MS;
/// How long after its end an hour of a series is sealed. Data later than this is rare
/// (a device that was offline), and is merged into the chunk at the next pass.
pub const SEALED_AFTER_MS: i64 = 2 * HOUR_MS;
/// Hours with fewer plausible points stay rows (a weight a day, say).
pub const MIN_POINTS: usize = 16;

/// A per-connection table that carries the chunks' share of a bucketed query into its SQL
/// (`rollup::parts_sql`); temporary, so read-only connections have it too.
pub(crate) const PARTS_TABLE: &str = "
CREATE TEMP TABLE IF NOT EXISTS chunk_parts (
    series INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    n      INTEGER NOT NULL,
    lo     REAL    NOT NULL,
    hi     REAL    NOT NULL,
    total  REAL    NOT NULL
);
";

/// The end of the hours the job seals at `now_ms` (exclusive).
pub(crate) fn sealed_before(now_ms: i64) -> i64 {
    bucket_start(now_ms.saturating_sub(SEALED_AFTER_MS), SPAN_MS)
}

/// Whether the file has the chunks table (a file of an older kenko, opened read-only, has
/// not, and is read as if it had none).
pub(crate) fn exists(conn: &Connection, path: &Path) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chunks'",
        [],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
    .map_err(sqlite(path))
}

/// A chunk's header as its index row holds it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub series: i64,
    pub start_ms: i64,
    pub last_ms: i64,
    pub count: i64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
}

/// One series' count, min, max and sum in one query bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Part {
    pub n: i64,
    pub lo: f64,
    pub hi: f64,
    pub total: f64,
}

impl Part {
    fn of(value: f64) -> Part {
        Part {
            n: 1,
            lo: value,
            hi: value,
            total: value,
        }
    }

    fn add(&mut self, other: Part) {
        self.n += other.n;
        self.lo = self.lo.min(other.lo);
        self.hi = self.hi.max(other.hi);
        self.total += other.total;
    }
}

/// Reads a stored chunk's points, checked.
pub(crate) fn decode(
    path: &Path,
    series: i64,
    start_ms: i64,
    bytes: &[u8],
) -> Result<Vec<(i64, f64)>, StoreError> {
    Chunk::from_bytes(bytes)
        .and_then(|chunk| chunk.points())
        .map_err(|source| StoreError::Chunk {
            path: path.to_owned(),
            series,
            start_ms,
            source,
        })
}

/// Headers of the chunks of `series` holding points in `[from_ms, to_ms)`, in time order.
pub(crate) fn headers(
    conn: &Connection,
    path: &Path,
    series: i64,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<Header>, StoreError> {
    // A chunk starts at most one span before its last point: the range of `start_ms` is
    // bounded on both sides, so the index is read from one place.
    let mut statement = conn
        .prepare_cached(
            "SELECT start_ms, last_ms, count, min, max, sum FROM chunks
             WHERE series = ?1 AND start_ms > ?2 AND start_ms < ?3 AND last_ms >= ?4
             ORDER BY start_ms",
        )
        .map_err(sqlite(path))?;
    let rows = statement
        .query_map(
            params![series, from_ms.saturating_sub(SPAN_MS), to_ms, from_ms],
            |r| {
                Ok(Header {
                    series,
                    start_ms: r.get(0)?,
                    last_ms: r.get(1)?,
                    count: r.get(2)?,
                    min: r.get(3)?,
                    max: r.get(4)?,
                    sum: r.get(5)?,
                })
            },
        )
        .map_err(sqlite(path))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sqlite(path))
}

/// The points of one chunk, or none if it has gone (sealed again or erased meanwhile).
pub(crate) fn chunk_points(
    conn: &Connection,
    path: &Path,
    series: i64,
    start_ms: i64,
) -> Result<Vec<(i64, f64)>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT data FROM chunks WHERE series = ?1 AND start_ms = ?2")
        .map_err(sqlite(path))?
        .query_row(params![series, start_ms], |r| r.get(0))
        .optional()
        .map_err(sqlite(path))?;
    match bytes {
        Some(bytes) => decode(path, series, start_ms, &bytes),
        None => Ok(Vec::new()),
    }
}

/// Points of `series` in chunks, with `from_ms ≤ time < to_ms`, in time order.
pub(crate) fn points(
    conn: &Connection,
    path: &Path,
    series: i64,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(i64, f64)>, StoreError> {
    let mut out = Vec::new();
    for header in headers(conn, path, series, from_ms, to_ms)? {
        let points = chunk_points(conn, path, series, header.start_ms)?;
        out.extend(
            points
                .into_iter()
                .filter(|&(t, _)| t >= from_ms && t < to_ms),
        );
    }
    Ok(out)
}

/// The chunks' share of a bucketed query: per `every_ms` bucket, the count, min, max and sum
/// of the chunk points in `[from_ms, to_ms)` of each series in `series`, given as (series,
/// the series its parts are added to): a query across citizens adds every series of a
/// citizen, or every series, into one, so that it stages a row per bucket rather than per
/// series and bucket. A chunk wholly inside the range and one bucket answers from its
/// header; others are decoded.
pub(crate) fn parts(
    conn: &Connection,
    path: &Path,
    series: &[(i64, i64)],
    (from_ms, to_ms): (i64, i64),
    every_ms: i64,
) -> Result<Vec<(i64, i64, Part)>, StoreError> {
    let mut buckets: BTreeMap<(i64, i64), Part> = BTreeMap::new();
    for &(id, into) in series {
        let mut add = |bucket: i64, part: Part| match buckets.get_mut(&(into, bucket)) {
            Some(existing) => existing.add(part),
            None => {
                buckets.insert((into, bucket), part);
            }
        };
        for h in headers(conn, path, id, from_ms, to_ms)? {
            let bucket = bucket_start(h.start_ms, every_ms);
            let inside = h.start_ms >= from_ms && h.last_ms < to_ms;
            if inside && bucket_start(h.last_ms, every_ms) == bucket {
                let part = Part {
                    n: h.count,
                    lo: h.min,
                    hi: h.max,
                    total: h.sum,
                };
                add(bucket, part);
                continue;
            }
            for (t, v) in chunk_points(conn, path, id, h.start_ms)? {
                if t >= from_ms && t < to_ms {
                    add(bucket_start(t, every_ms), Part::of(v));
                }
            }
        }
    }
    Ok(buckets
        .into_iter()
        .map(|((into, bucket), part)| (into, bucket, part))
        .collect())
}

/// Puts `parts` in the connection's `chunk_parts` table, replacing what a previous query
/// left there.
pub(crate) fn stage_parts(
    conn: &Connection,
    path: &Path,
    parts: &[(i64, i64, Part)],
) -> Result<(), StoreError> {
    conn.execute("DELETE FROM temp.chunk_parts", [])
        .map_err(sqlite(path))?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO temp.chunk_parts (series, bucket, n, lo, hi, total)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(sqlite(path))?;
    for (series, bucket, p) in parts {
        insert
            .execute(params![series, bucket, p.n, p.lo, p.hi, p.total])
            .map_err(sqlite(path))?;
    }
    Ok(())
}

/// The last chunk point of `series` at or after `since_ms`.
pub(crate) fn latest(
    conn: &Connection,
    path: &Path,
    series: i64,
    since_ms: i64,
) -> Result<Option<(i64, f64)>, StoreError> {
    let start: Option<i64> = conn
        .prepare_cached(
            "SELECT start_ms, last_ms FROM chunks WHERE series = ?1
             ORDER BY start_ms DESC LIMIT 1",
        )
        .map_err(sqlite(path))?
        .query_row(params![series], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()
        .map_err(sqlite(path))?
        .filter(|&(_, last_ms)| last_ms >= since_ms)
        .map(|(start, _)| start);
    let Some(start) = start else {
        return Ok(None);
    };
    Ok(chunk_points(conn, path, series, start)?.last().copied())
}

/// The times held by sealed hours, as far as a batch has asked: a late point is a repeat
/// if its hour's chunk holds its time.
#[derive(Default)]
pub(crate) struct SealedTimes {
    hours: HashMap<(i64, i64), HashSet<i64>>,
}

impl SealedTimes {
    /// Whether a chunk of `series` already holds a point at `time_ms`.
    pub fn holds(
        &mut self,
        conn: &Connection,
        path: &Path,
        series: i64,
        time_ms: i64,
    ) -> Result<bool, StoreError> {
        let start = bucket_start(time_ms, SPAN_MS);
        let times = match self.hours.entry((series, start)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let points = match chunk_points(conn, path, series, start) {
                    Ok(points) => points,
                    // A damaged chunk must not stop the sink: the point is written as a row
                    // (reads of that hour say what is wrong until the chunk is dealt with).
                    Err(damage @ StoreError::Chunk { .. }) => {
                        warn!(error = %damage, "a late point was written beside a damaged chunk");
                        Vec::new()
                    }
                    Err(e) => return Err(e),
                };
                e.insert(points.into_iter().map(|(t, _)| t).collect())
            }
        };
        Ok(times.contains(&time_ms))
    }
}

pub(crate) mod seal;
pub mod verify;

#[cfg(test)]
mod tests;
