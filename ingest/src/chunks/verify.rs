//! Checking every chunk of a store file (`kenko store verify`): its checksum and points, and
//! that its index row (the count, time, min, max and sum that aggregates are answered from
//! without decoding) says what the chunk says. Reads never decode a chunk answered from its
//! index row, so damage there shows only here.

use std::path::Path;

use kenko_devices::Metric;

use super::SPAN_MS;
use crate::store::{open_existing, sqlite, StoreError};
use crate::tsdb::{Chunk, ChunkError};

/// One chunk that is not sound.
#[derive(Debug, Clone, PartialEq)]
pub struct Damage {
    pub citizen: String,
    pub device: String,
    /// The metric's name (or its id, for one this kenko does not know).
    pub metric: String,
    pub start_ms: i64,
    pub problem: String,
}

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub chunks: u64,
    pub points: u64,
    pub damaged: Vec<Damage>,
}

/// An index row: start, last time, count, min, max, sum.
type IndexRow = (i64, i64, i64, f64, f64, f64);

/// Checks every chunk of the store file at `path`, read-only (beside a running hub);
/// `progress` is told the chunks checked so far every 10,000.
pub fn verify(path: &Path, progress: &mut dyn FnMut(u64)) -> Result<Report, StoreError> {
    let conn = open_existing(path)?;
    let mut report = Report::default();
    if !super::exists(&conn, path)? {
        return Ok(report);
    }
    let mut rows = conn
        .prepare(
            "SELECT s.citizen, s.device, s.metric, k.start_ms, k.last_ms, k.count, k.min,
                    k.max, k.sum, k.data
             FROM chunks k JOIN series s ON s.id = k.series ORDER BY k.series, k.start_ms",
        )
        .map_err(sqlite(path))?;
    let found = rows
        .query_map([], |r| {
            let index: IndexRow = (
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            );
            let names: (String, String, u8) = (r.get(0)?, r.get(1)?, r.get(2)?);
            Ok((names, index, r.get::<_, Vec<u8>>(9)?))
        })
        .map_err(sqlite(path))?;
    for row in found {
        let ((citizen, device, metric), index, bytes) = row.map_err(sqlite(path))?;
        report.chunks += 1;
        match check(&bytes, index) {
            Ok(points) => report.points += points,
            Err(problem) => report.damaged.push(Damage {
                citizen,
                device,
                metric: Metric::from_id(metric)
                    .map_or_else(|| format!("metric {metric}"), |m| m.name().to_owned()),
                start_ms: index.0,
                problem,
            }),
        }
        if report.chunks % 10_000 == 0 {
            progress(report.chunks);
        }
    }
    Ok(report)
}

/// The chunk's points counted, or what is wrong with it.
fn check(bytes: &[u8], (start, last, count, min, max, sum): IndexRow) -> Result<u64, String> {
    let decoded = Chunk::from_bytes(bytes).and_then(|c| c.points().map(|p| (c, p)));
    let (chunk, points) = decoded.map_err(|e: ChunkError| e.to_string())?;
    let h = chunk.header();
    let inside = |t: i64| t >= start && t < start.saturating_add(SPAN_MS);
    if !inside(h.first_ms) || !inside(h.last_ms) {
        return Err(format!(
            "its points ({} to {} ms) lie outside its hour",
            h.first_ms, h.last_ms
        ));
    }
    let agrees = i64::from(h.count) == count
        && h.last_ms == last
        && h.min.to_bits() == min.to_bits()
        && h.max.to_bits() == max.to_bits()
        && h.sum.to_bits() == sum.to_bits();
    if !agrees {
        return Err(format!(
            "its index row (count {count}, last {last} ms, min {min}, max {max}, sum {sum}) differs from the chunk (count {}, last {} ms, min {}, max {}, sum {}); aggregates answered from the index are wrong",
            h.count, h.last_ms, h.min, h.max, h.sum
        ));
    }
    Ok(points.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_row_that_differs_from_its_chunk_is_named() {
        let chunk = Chunk::encode(&[(1_000, 5.0), (2_000, 7.0)]).expect("encode");
        let sound = (0, 2_000, 2, 5.0, 7.0, 12.0);
        assert_eq!(check(chunk.as_bytes(), sound), Ok(2));
        let wrong_count = (0, 2_000, 3, 5.0, 7.0, 12.0);
        let problem = check(chunk.as_bytes(), wrong_count).expect_err("count");
        assert!(problem.contains("count 3"), "{problem}");
        let elsewhere = (SPAN_MS, 2_000, 2, 5.0, 7.0, 12.0);
        assert!(check(chunk.as_bytes(), elsewhere)
            .expect_err("hour")
            .contains("outside its hour"));
        let mut damaged = chunk.as_bytes().to_vec();
        damaged[55] ^= 0xff;
        assert!(check(&damaged, sound)
            .expect_err("crc")
            .contains("checksum"));
    }
}
