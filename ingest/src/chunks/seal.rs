//! Sealing: the retention job's side of the chunks. It moves a series' past hours from rows
//! into chunks, merges late rows into them, and keeps the two marks that let the store sink
//! and the job work on the same file without a clock to agree on:
//!
//! - the *mark* (`seal_state.mark_ms`): no chunk holds an hour at or after it. A pass
//!   raises it to its cut-off, in a transaction of its own, before it seals anything; the
//!   sink reads it in each write transaction and checks every point before it against its
//!   hour's chunk (a repeat is a duplicate), and notes the hours it writes rows into there
//!   as late (`seal_late`), for the next pass to merge. It never goes down, whatever the
//!   clock does.
//! - the *scan start* (`seal_state.scanned_ms`): the job has looked at every row before it
//!   (or noted it late). A pass scans each series from it to the mark, and moves it to the
//!   mark once every series is done, so rows that stay rows (sparse hours, flagged
//!   readings) are read once, not at every pass.

use std::collections::HashSet;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use tracing::{error, warn};

use super::{chunk_points, MIN_POINTS, SPAN_MS};
use crate::rollup::bucket_start;
use crate::store::{sqlite, StoreError};
use crate::tsdb::Chunk;

/// The sealing marks of a file: (scan start, mark). A file that has none yet (never sealed,
/// or sealed before the marks existed) scans from the start, behind a mark just past its
/// last chunk.
pub(crate) fn marks(conn: &Connection, path: &Path) -> Result<(i64, i64), StoreError> {
    let found = conn
        .prepare_cached("SELECT scanned_ms, mark_ms FROM seal_state WHERE id = 0")
        .map_err(sqlite(path))?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(sqlite(path))?;
    if let Some(marks) = found {
        return Ok(marks);
    }
    let last: Option<i64> = conn
        .prepare_cached("SELECT max(start_ms) FROM chunks")
        .map_err(sqlite(path))?
        .query_row([], |r| r.get(0))
        .map_err(sqlite(path))?;
    Ok((
        i64::MIN,
        last.map_or(i64::MIN, |start| start.saturating_add(SPAN_MS)),
    ))
}

/// Raises the mark to `cutoff` (never lowers it) and commits; returns the span a pass scans.
pub(crate) fn raise_mark(
    conn: &mut Connection,
    path: &Path,
    cutoff: i64,
) -> Result<(i64, i64), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite(path))?;
    let (scanned, mark) = marks(&tx, path)?;
    let mark = mark.max(cutoff);
    tx.execute(
        "INSERT INTO seal_state (id, scanned_ms, mark_ms) VALUES (0, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET mark_ms = excluded.mark_ms",
        params![scanned, mark],
    )
    .map_err(sqlite(path))?;
    tx.commit().map_err(sqlite(path))?;
    Ok((scanned, mark))
}

/// Notes that every row before `mark` has been looked at.
pub(crate) fn scanned_to(conn: &Connection, path: &Path, mark: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE seal_state SET scanned_ms = max(scanned_ms, ?1) WHERE id = 0",
        params![mark],
    )
    .map(drop)
    .map_err(sqlite(path))
}

/// Notes hours (series, start) that rows were written into behind the mark. Part of the
/// writer's transaction.
pub(crate) fn note_late(
    conn: &Connection,
    path: &Path,
    hours: &HashSet<(i64, i64)>,
) -> Result<(), StoreError> {
    let mut insert = conn
        .prepare_cached("INSERT OR IGNORE INTO seal_late (series, start_ms) VALUES (?1, ?2)")
        .map_err(sqlite(path))?;
    for &(series, start) in hours {
        insert
            .execute(params![series, start])
            .map_err(sqlite(path))?;
    }
    Ok(())
}

/// Seals up to `max_hours` late hours of `series` (those due) and forgets them; returns the
/// rows sealed and whether late hours are left. Part of the caller's transaction.
pub(crate) fn seal_late(
    conn: &Connection,
    path: &Path,
    series: i64,
    max_hours: usize,
) -> Result<(usize, bool), StoreError> {
    let starts: Vec<i64> = conn
        .prepare_cached(
            "SELECT start_ms FROM seal_late WHERE series = ?1 ORDER BY start_ms LIMIT ?2",
        )
        .map_err(sqlite(path))?
        .query_map(
            params![series, i64::try_from(max_hours).unwrap_or(i64::MAX - 1) + 1],
            |r| r.get(0),
        )
        .map_err(sqlite(path))?
        .collect::<Result<_, _>>()
        .map_err(sqlite(path))?;
    let more = starts.len() > max_hours;
    let mut forget = conn
        .prepare_cached("DELETE FROM seal_late WHERE series = ?1 AND start_ms = ?2")
        .map_err(sqlite(path))?;
    let mut sealed = 0;
    for &start in starts.iter().take(max_hours) {
        forget
            .execute(params![series, start])
            .map_err(sqlite(path))?;
        let rows: i64 = conn
            .prepare_cached(
                "SELECT count(*) FROM observations
                 WHERE series = ?1 AND time_ms >= ?2 AND time_ms < ?3 AND flags = 0",
            )
            .map_err(sqlite(path))?
            .query_row(params![series, start, start.saturating_add(SPAN_MS)], |r| {
                r.get(0)
            })
            .map_err(sqlite(path))?;
        if due(
            conn,
            path,
            series,
            start,
            usize::try_from(rows).unwrap_or(0),
        )? {
            sealed += seal_or_skip(conn, path, series, start)?;
        }
    }
    Ok((sealed, more))
}

/// Whether an hour with `rows` plausible rows is sealed: enough of them, or a chunk already
/// there for them to join.
fn due(
    conn: &Connection,
    path: &Path,
    series: i64,
    start: i64,
    rows: usize,
) -> Result<bool, StoreError> {
    // Not a whole hour: the first "hour" before i64::MIN, where bucket starts saturate.
    if rows == 0 || start.rem_euclid(SPAN_MS) != 0 {
        return Ok(false);
    }
    if rows >= MIN_POINTS {
        return Ok(true);
    }
    let found = conn
        .prepare_cached("SELECT 1 FROM chunks WHERE series = ?1 AND start_ms = ?2")
        .map_err(sqlite(path))?
        .query_row(params![series, start], |_| Ok(()))
        .optional()
        .map_err(sqlite(path))?;
    Ok(found.is_some())
}

/// Seals one hour; an hour whose chunk is damaged is left as it is (its rows stay rows), with
/// a warning, so that one damaged chunk does not stop the rest of the file from being sealed.
fn seal_or_skip(
    conn: &Connection,
    path: &Path,
    series: i64,
    start: i64,
) -> Result<usize, StoreError> {
    match seal_hour(conn, path, series, start) {
        Err(damage @ StoreError::Chunk { .. }) => {
            warn!(error = %damage, "an hour with a damaged chunk was not sealed");
            Ok(0)
        }
        other => other,
    }
}

/// Where a series' sealing goes on: the rows from `from_ms` on are still to be looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SealFrom {
    pub from_ms: i64,
}

/// Seals the hours of `series` from `from.from_ms` to `before_ms` that are due (enough
/// plausible rows, or a chunk already there for late rows to join), at most `max_hours` of
/// them; returns the rows sealed and where the next call goes on (`None`: nothing is left
/// before `before_ms`). Part of the caller's transaction.
pub(crate) fn seal(
    conn: &Connection,
    path: &Path,
    series: i64,
    (from, before_ms): (SealFrom, i64),
    max_hours: usize,
) -> Result<(usize, Option<SealFrom>), StoreError> {
    let (due, next) = due_hours(conn, path, series, (from.from_ms, before_ms), max_hours)?;
    let mut sealed = 0;
    for start in due {
        sealed += seal_or_skip(conn, path, series, start)?;
    }
    Ok((sealed, next.map(|from_ms| SealFrom { from_ms })))
}

/// Starts of at most `max_hours` hours in `[from_ms, before_ms)` that [`seal`] would seal,
/// in time order, and the start of the first hour not looked at (`None` when none is left).
/// Rows are read in time order and no further than needed.
fn due_hours(
    conn: &Connection,
    path: &Path,
    series: i64,
    (from_ms, before_ms): (i64, i64),
    max_hours: usize,
) -> Result<(Vec<i64>, Option<i64>), StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT time_ms FROM observations
             WHERE series = ?1 AND time_ms >= ?2 AND time_ms < ?3 AND flags = 0
             ORDER BY time_ms",
        )
        .map_err(sqlite(path))?;
    let is_due = |start: i64, n: usize| due(conn, path, series, start, n);
    let mut hours = Vec::new();
    let mut hour: Option<(i64, usize)> = None;
    let mut times = statement
        .query(params![series, from_ms, before_ms])
        .map_err(sqlite(path))?;
    while let Some(row) = times.next().map_err(sqlite(path))? {
        let start = bucket_start(row.get::<_, i64>(0).map_err(sqlite(path))?, SPAN_MS);
        match &mut hour {
            Some((current, n)) if *current == start => *n += 1,
            _ => {
                if let Some((done, n)) = hour.take() {
                    if is_due(done, n)? {
                        hours.push(done);
                    }
                    if hours.len() == max_hours {
                        return Ok((hours, Some(start)));
                    }
                }
                hour = Some((start, 1));
            }
        }
    }
    if let Some((done, n)) = hour {
        if is_due(done, n)? {
            hours.push(done);
        }
    }
    Ok((hours, None))
}

/// Moves the plausible rows of one hour into its chunk (merged with the chunk already
/// there; where both hold a time, the chunk's point, stored first, stays).
fn seal_hour(
    conn: &Connection,
    path: &Path,
    series: i64,
    start_ms: i64,
) -> Result<usize, StoreError> {
    let end_ms = start_ms.saturating_add(SPAN_MS);
    let rows: Vec<(i64, f64)> = conn
        .prepare_cached(
            "SELECT time_ms, value FROM observations
             WHERE series = ?1 AND time_ms >= ?2 AND time_ms < ?3 AND flags = 0
             ORDER BY time_ms",
        )
        .map_err(sqlite(path))?
        .query_map(params![series, start_ms, end_ms], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(sqlite(path))?
        .collect::<Result<_, _>>()
        .map_err(sqlite(path))?;
    if rows.is_empty() {
        return Ok(0);
    }
    let stored = chunk_points(conn, path, series, start_ms)?;
    let merged = merge(stored, &rows);
    let chunk = Chunk::encode(&merged).map_err(|source| StoreError::Chunk {
        path: path.to_owned(),
        series,
        start_ms,
        source,
    })?;
    let h = chunk.header();
    conn.prepare_cached(
        "INSERT OR REPLACE INTO chunks (series, start_ms, last_ms, count, min, max, sum, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .map_err(sqlite(path))?
    .execute(params![
        series,
        start_ms,
        h.last_ms,
        h.count,
        h.min,
        h.max,
        h.sum,
        chunk.as_bytes()
    ])
    .map_err(sqlite(path))?;
    conn.prepare_cached(
        "DELETE FROM observations
         WHERE series = ?1 AND time_ms >= ?2 AND time_ms < ?3 AND flags = 0",
    )
    .map_err(sqlite(path))?
    .execute(params![series, start_ms, end_ms])
    .map_err(sqlite(path))
}

/// Two time-ordered runs as one, unique by time; `first` wins where both hold a time.
pub(super) fn merge(first: Vec<(i64, f64)>, second: &[(i64, f64)]) -> Vec<(i64, f64)> {
    if first.is_empty() {
        return second.to_vec();
    }
    let mut out = Vec::with_capacity(first.len() + second.len());
    let mut b = second.iter().peekable();
    for a in first {
        while let Some(&&p) = b.peek() {
            if p.0 < a.0 {
                out.push(p);
                b.next();
            } else {
                if p.0 == a.0 {
                    b.next();
                }
                break;
            }
        }
        out.push(a);
    }
    out.extend(b);
    out
}

/// Removes the chunks of `series` starting in `[from_ms, to_ms)` and returns their points
/// (for the retention job, which folds them into rollups). Part of the caller's transaction.
pub(crate) fn take(
    conn: &Connection,
    path: &Path,
    series: i64,
    from_ms: i64,
    to_ms: i64,
) -> Result<Taken, StoreError> {
    let mut out = Taken::default();
    for header in super::headers(conn, path, series, from_ms, to_ms)? {
        if header.start_ms < from_ms {
            continue;
        }
        match chunk_points(conn, path, series, header.start_ms) {
            Ok(points) => out.points.extend(points),
            // Past its raw period and unreadable: its index row still says how many points
            // it held and their minimum, maximum and sum, which the hour's rollup keeps.
            Err(damage @ StoreError::Chunk { .. }) => {
                error!(error = %damage, count = header.count,
                    "retention: a damaged chunk was folded from its index row alone");
                out.damaged.push(header);
            }
            Err(e) => return Err(e),
        }
    }
    conn.prepare_cached(
        "DELETE FROM chunks WHERE series = ?1 AND start_ms >= ?2 AND start_ms < ?3",
    )
    .map_err(sqlite(path))?
    .execute(params![series, from_ms, to_ms])
    .map_err(sqlite(path))?;
    Ok(out)
}

/// What [`take`] removed: the points of the chunks it could read, and the index rows of
/// those it could not.
#[derive(Default)]
pub(crate) struct Taken {
    pub points: Vec<(i64, f64)>,
    pub damaged: Vec<super::Header>,
}

/// The start of the first chunk of `series`, if it has any.
pub(crate) fn first_start(
    conn: &Connection,
    path: &Path,
    series: i64,
) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT min(start_ms) FROM chunks WHERE series = ?1")
        .map_err(sqlite(path))?
        .query_row(params![series], |r| r.get(0))
        .map_err(sqlite(path))
}
