//! Rollups: what the store keeps of raw observations past their retention period.
//!
//! Folding moves a series' raw observations of a time range into 1-minute and 1-hour
//! buckets (count, min, max, sum) and deletes them, in one transaction, so that every
//! observation is counted either raw or in the rollups, never both. A bucket query adds the
//! two: raw observations where they are still kept, and the one rollup level that divides
//! the bucket width (the coarsest, which has the fewest rows) where they are not. Buckets
//! finer than a minute, or not a whole number of minutes, come from raw data alone.
//!
//! Where raw data is gone, a rollup counts wholly in the query range if its start is in it:
//! query ranges are exact to the rollup's width there.

use rusqlite::{params, Transaction};

use crate::query::Agg;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
/// Rollup levels, finest first.
pub const WIDTHS: [i64; 2] = [MINUTE_MS, HOUR_MS];

/// The rollup level that answers buckets `every_ms` wide: the coarsest whose width divides
/// it, or none.
pub fn width_for(every_ms: i64) -> Option<i64> {
    WIDTHS
        .iter()
        .rev()
        .copied()
        .find(|&width| every_ms > 0 && every_ms % width == 0)
}

/// The start of the `width`-wide bucket holding `time_ms` (a floor, also before 1970).
pub fn bucket_start(time_ms: i64, width: i64) -> i64 {
    // Saturating: the first bucket of all would start before i64::MIN.
    time_ms.div_euclid(width).saturating_mul(width)
}

/// SQL for the start of the bucket of `column`, `width` wide (a parameter or column); a
/// floor, unlike SQLite's truncating `%`, so buckets before 1970 start on a multiple too.
fn floor_sql(column: &str, width: &str) -> String {
    format!("({column} - ({column} % {width}) - (CASE WHEN {column} % {width} < 0 THEN {width} ELSE 0 END))")
}

/// The condition that keeps the rows of a page: those after (?9, ?10, ?11) in (time,
/// citizen, device) order, and at it too when ?12; every row when ?9 is NULL.
pub(crate) fn resume_sql(time: &str, citizen: &str, device: &str) -> String {
    format!(
        "(?9 IS NULL OR ({time}, {citizen}, {device}) > (?9, ?10, ?11)
          OR (?12 AND ({time}, {citizen}, {device}) = (?9, ?10, ?11)))"
    )
}

/// The bucketed query of `PersonalStore::query`. Parameters: ?1 metric, ?2 citizen, ?3
/// device (both as `series` says: `store::series_filter`), ?4 from (inclusive), ?5 to
/// (exclusive), ?6 limit, ?7 bucket width, ?8 rollup width (`width_for`) or NULL, ?9 to ?12
/// a page's start (`resume_sql`). A file without the rollups table (written by an older
/// kenko, read-only) is read as if it had an empty one.
///
/// `across`: one row per bucket over all the selected series (citizen and device `*`).
/// Percentiles are not computed here: see [`citizen_means_query`].
pub(crate) fn bucket_query(agg: Agg, series: &str, with_rollups: bool, across: bool) -> String {
    let value = match agg {
        Agg::Mean | Agg::Percentile(_) => "sum(p.total) / sum(p.n)",
        Agg::Min => "min(p.lo)",
        Agg::Max => "max(p.hi)",
        Agg::Count => "sum(p.n)",
        Agg::Citizens => "count(DISTINCT p.citizen)",
    };
    let outer = if across {
        let resume = resume_sql("p.bucket", "'*'", "'*'");
        format!(
            "SELECT p.bucket, '*', '*', {value} FROM parts p GROUP BY p.bucket
             HAVING {resume} ORDER BY p.bucket"
        )
    } else {
        let resume = resume_sql("p.bucket", "p.citizen", "p.device");
        format!(
            "SELECT p.bucket, p.citizen, p.device, {value} FROM parts p
             GROUP BY p.series, p.bucket HAVING {resume}
             ORDER BY p.bucket, p.citizen, p.device"
        )
    };
    format!("{} {outer} LIMIT ?6", parts_sql(series, with_rollups))
}

/// Each citizen's mean per bucket, for the first ?6 buckets of the page (parameters as
/// [`bucket_query`]'s), ordered by bucket: what percentiles across citizens are taken of.
pub(crate) fn citizen_means_query(series: &str, with_rollups: bool) -> String {
    let resume = resume_sql("bucket", "'*'", "'*'");
    format!(
        "{}, page AS (
            SELECT DISTINCT bucket FROM parts WHERE {resume} ORDER BY bucket LIMIT ?6
        )
        SELECT p.bucket, p.citizen, sum(p.total) / sum(p.n)
        FROM parts p JOIN page USING (bucket)
        GROUP BY p.bucket, p.citizen ORDER BY p.bucket",
        parts_sql(series, with_rollups)
    )
}

/// The `chosen` series and their `parts`: per series and bucket, count, min, max and sum of
/// the raw observations still kept (rows, and chunks as `chunks::parts` staged them in
/// `temp.chunk_parts`) plus those of the rollup level that answers the width.
fn parts_sql(series: &str, with_rollups: bool) -> String {
    let rollups = if with_rollups {
        "rollups"
    } else {
        "(SELECT 0 AS series, 0 AS width_ms, 0 AS start_ms, 0 AS count, 0.0 AS min, 0.0 AS max, 0.0 AS sum WHERE 0)"
    };
    let raw_bucket = floor_sql("o.time_ms", "?7");
    let rollup_bucket = floor_sql("r.start_ms", "?7");
    format!(
        "WITH chosen AS (
            SELECT id, citizen, device FROM series WHERE {series}
        ), parts AS (
            SELECT o.series AS series, c.citizen AS citizen, c.device AS device,
                   {raw_bucket} AS bucket, count(*) AS n,
                   min(o.value) AS lo, max(o.value) AS hi, sum(o.value) AS total
            FROM chosen c JOIN observations o ON o.series = c.id
            WHERE o.time_ms >= ?4 AND o.time_ms < ?5
            GROUP BY o.series, bucket
            UNION ALL
            SELECT r.series, c.citizen, c.device, {rollup_bucket} AS bucket, sum(r.count),
                   min(r.min), max(r.max), sum(r.sum)
            FROM chosen c JOIN {rollups} r ON r.series = c.id
            WHERE r.width_ms = ?8 AND r.start_ms >= ?4 AND r.start_ms < ?5
            GROUP BY r.series, bucket
            UNION ALL
            SELECT k.series, c.citizen, c.device, k.bucket, k.n, k.lo, k.hi, k.total
            FROM chosen c JOIN temp.chunk_parts k ON k.series = c.id
        )"
    )
}

/// Folds the raw observations of `series` in `[from_ms, to_ms)` into every rollup level and
/// deletes them; returns how many it folded. Part of the caller's transaction.
pub(crate) fn fold(
    tx: &Transaction<'_>,
    series: i64,
    from_ms: i64,
    to_ms: i64,
) -> rusqlite::Result<usize> {
    let start = floor_sql("time_ms", "?2");
    let mut add = tx.prepare_cached(&format!(
        // WHERE before GROUP BY and ON CONFLICT: SQLite needs the WHERE to parse the upsert.
        "INSERT INTO rollups (series, width_ms, start_ms, count, min, max, sum)
         SELECT ?1, ?2, {start} AS bucket, count(*), min(value), max(value), sum(value)
         FROM observations WHERE series = ?1 AND time_ms >= ?3 AND time_ms < ?4
         GROUP BY bucket
         ON CONFLICT (series, width_ms, start_ms) DO UPDATE SET
            count = count + excluded.count, min = min(min, excluded.min),
            max = max(max, excluded.max), sum = sum + excluded.sum"
    ))?;
    for width in WIDTHS {
        add.execute(params![series, width, from_ms, to_ms])?;
    }
    tx.prepare_cached(
        "DELETE FROM observations WHERE series = ?1 AND time_ms >= ?2 AND time_ms < ?3",
    )?
    .execute(params![series, from_ms, to_ms])
}

/// Adds (?4 count, ?5 min, ?6 max, ?7 sum) to the rollup of series ?1, width ?2, start ?3.
const ADD_BUCKET: &str = "INSERT INTO rollups (series, width_ms, start_ms, count, min, max, sum)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (series, width_ms, start_ms) DO UPDATE SET
        count = count + excluded.count, min = min(min, excluded.min),
        max = max(max, excluded.max), sum = sum + excluded.sum";

/// Adds points (from sealed chunks) of `series` to every rollup level. Part of the caller's
/// transaction.
pub(crate) fn add_points(
    tx: &Transaction<'_>,
    series: i64,
    points: &[(i64, f64)],
) -> rusqlite::Result<()> {
    if points.is_empty() {
        return Ok(());
    }
    let mut add = tx.prepare_cached(ADD_BUCKET)?;
    for width in WIDTHS {
        let mut buckets: std::collections::BTreeMap<i64, (i64, f64, f64, f64)> =
            std::collections::BTreeMap::new();
        for &(time_ms, value) in points {
            let b = buckets
                .entry(bucket_start(time_ms, width))
                .or_insert((0, value, value, 0.0));
            b.0 += 1;
            b.1 = b.1.min(value);
            b.2 = b.2.max(value);
            b.3 += value;
        }
        for (start, (count, min, max, sum)) in buckets {
            add.execute(params![series, width, start, count, min, max, sum])?;
        }
    }
    Ok(())
}

/// Adds one hour's (start, count, min, max, sum) to the 1-hour rollup of `series` (a chunk
/// known only by its index row). Part of the caller's transaction.
pub(crate) fn add_hour(
    tx: &Transaction<'_>,
    series: i64,
    (start, count, min, max, sum): (i64, i64, f64, f64, f64),
) -> rusqlite::Result<()> {
    tx.prepare_cached(ADD_BUCKET)?
        .execute(params![series, HOUR_MS, start, count, min, max, sum])
        .map(drop)
}

/// Deletes the rollups of `series` at level `width` that start before `before_ms`; returns
/// how many.
pub(crate) fn expire(
    tx: &Transaction<'_>,
    series: i64,
    width: i64,
    before_ms: i64,
) -> rusqlite::Result<usize> {
    tx.prepare_cached("DELETE FROM rollups WHERE series = ?1 AND width_ms = ?2 AND start_ms < ?3")?
        .execute(params![series, width, before_ms])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarsest_level_dividing_the_bucket_answers_it() {
        assert_eq!(width_for(HOUR_MS), Some(HOUR_MS));
        assert_eq!(width_for(24 * HOUR_MS), Some(HOUR_MS));
        assert_eq!(width_for(5 * MINUTE_MS), Some(MINUTE_MS));
        assert_eq!(width_for(90 * MINUTE_MS), Some(MINUTE_MS));
        assert_eq!(width_for(30_000), None);
        assert_eq!(width_for(90_000), None);
        assert_eq!(width_for(0), None);
    }

    #[test]
    fn buckets_start_on_a_multiple_of_their_width_before_1970_too() {
        assert_eq!(bucket_start(-1, HOUR_MS), -HOUR_MS);
        assert_eq!(bucket_start(HOUR_MS + 5, HOUR_MS), HOUR_MS);
        assert_eq!(bucket_start(0, MINUTE_MS), 0);
    }
}
