//! The retention job: folds raw observations past their period into rollups, and deletes
//! rollups past theirs, in `personal.db` and `shared.db` (see `rollup.rs`); and seals past
//! hours of every series into compressed chunks (see `chunks/seal.rs`).
//!
//! It works series by series, a few hours of one series per transaction, so that the
//! store sink, which writes the same files, never waits long for it. Derived metrics (sleep
//! summaries, daily steps: one value a day, computed again when late data arrives) are
//! always kept raw.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kenko_config::{Periods, RetentionConfig};
use kenko_devices::catalogue::UnknownMetric;
use kenko_devices::Metric;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tracing::{debug, error, info};

use crate::chunks::{self, seal};
use crate::pipeline::Submission;
use crate::rollup::{self, HOUR_MS, MINUTE_MS};
use crate::stats::IngestStats;
use crate::store::{open_durable, sqlite, StoreError};

const DAY_MS: i64 = 86_400_000;
/// How much longer than the late horizon window inputs stay raw: a sleep day's window (24
/// hours) and its grace, rounded up.
pub const WINDOW_MARGIN_MS: i64 = 2 * DAY_MS;
/// Raw time folded per transaction: 21,600 observations of a 1 Hz series.
const SLICE_MS: i64 = 6 * HOUR_MS;
/// The first pass runs this long after start, when the hub's start-up work is done.
const FIRST_PASS: Duration = Duration::from_secs(3);
/// How often a long pass says how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// A `[retention.metrics]` entry that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("retention.metrics: {0}")]
    Unknown(#[from] UnknownMetric),
    #[error("retention.metrics.{0}: {0} is computed by the hub once a day and always kept raw; remove this entry")]
    Derived(Metric),
}

/// How long one metric's data is kept, in milliseconds; `None` for ever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    pub raw_ms: Option<i64>,
    pub rollup_ms: [Option<i64>; 2],
}

impl Keep {
    fn of(periods: Periods) -> Keep {
        let ms = |days: Option<u32>| days.map(|d| i64::from(d) * DAY_MS);
        Keep {
            raw_ms: ms(periods.raw_days),
            rollup_ms: [ms(periods.rollup_1m_days), ms(periods.rollup_1h_days)],
        }
    }

    fn deletes_anything(&self) -> bool {
        self.raw_ms.is_some() || self.rollup_ms.iter().any(Option::is_some)
    }
}

/// Every metric's periods, from `[retention]`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    keep: HashMap<u8, Keep>,
}

impl Policy {
    /// The policy of `config`. Metrics that windows are computed from (bed occupancy, sleep
    /// stages, steps) keep their raw data at least `late_horizon_s` and [`WINDOW_MARGIN_MS`]
    /// longer, whatever `raw_days` says: a late reading computes its whole window again from
    /// raw data, and that window may start a day before the reading.
    pub fn from_config(
        config: &RetentionConfig,
        late_horizon_s: u64,
    ) -> Result<Policy, PolicyError> {
        for name in config.metrics.keys() {
            let metric = Metric::from_str(name)?;
            if metric.is_derived() {
                return Err(PolicyError::Derived(metric));
            }
        }
        let window_inputs_ms = i64::try_from(late_horizon_s)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000)
            .saturating_add(WINDOW_MARGIN_MS);
        let keep = Metric::ALL
            .iter()
            .filter(|m| !m.is_derived())
            .map(|&m| {
                let mut keep = Keep::of(config.periods(m.name()));
                if m.feeds_window() {
                    keep.raw_ms = keep.raw_ms.map(|raw| raw.max(window_inputs_ms));
                }
                (m.id(), keep)
            })
            .filter(|(_, keep)| keep.deletes_anything())
            .collect();
        Ok(Policy { keep })
    }

    /// Whether the job has anything to do.
    pub fn deletes_anything(&self) -> bool {
        !self.keep.is_empty()
    }

    fn of(&self, metric_id: u8) -> Keep {
        self.keep.get(&metric_id).copied().unwrap_or_default()
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Raw observations folded into rollups (and deleted).
    pub folded: usize,
    /// Rollup rows deleted past their period.
    pub expired: usize,
    /// Raw rows sealed into chunks.
    pub sealed: usize,
    /// Series skipped for a damaged chunk.
    pub damaged: usize,
}

impl std::ops::AddAssign for PassStats {
    fn add_assign(&mut self, other: PassStats) {
        self.folded += other.folded;
        self.expired += other.expired;
        self.sealed += other.sealed;
        self.damaged += other.damaged;
    }
}

/// Applies a policy to one store file.
pub struct Retention {
    conn: Connection,
    path: PathBuf,
    policy: Policy,
}

impl Retention {
    /// Opens (creating if needed) the store at `path` for the job.
    pub fn open(path: &Path, policy: Policy) -> Result<Retention, StoreError> {
        Ok(Retention {
            conn: open_durable(path, crate::store::SCHEMA)?,
            path: path.to_owned(),
            policy,
        })
    }

    /// Folds and expires everything past its period at `now_ms`, and seals the hours due
    /// into chunks (`chunks/seal.rs`); `go_on` is asked between transactions and stops the
    /// pass early when it says no. A series with a damaged chunk is skipped with an error in
    /// the log (and counted in `damaged`); the others go on.
    pub fn pass(
        &mut self,
        now_ms: i64,
        go_on: &mut dyn FnMut(PassStats) -> bool,
    ) -> Result<PassStats, StoreError> {
        let cutoff = chunks::sealed_before(now_ms);
        let (scanned, mark) = seal::raise_mark(&mut self.conn, &self.path, cutoff)?;
        let mut done = PassStats::default();
        for (series, metric_id) in self.series()? {
            match self.series_pass(
                (series, metric_id),
                (now_ms, scanned, mark),
                &mut done,
                go_on,
            ) {
                Ok(true) => {}
                Ok(false) => return Ok(done),
                Err(damage @ StoreError::Chunk { .. }) => {
                    error!(error = %damage,
                        "retention: series skipped for a damaged chunk; the other series go on");
                    done.damaged += 1;
                }
                Err(e) => return Err(e),
            }
        }
        // Counts the last steps; the pass is over whatever it answers.
        go_on(done);
        // A skipped series was not scanned to the mark: the next pass scans again.
        if done.damaged == 0 {
            seal::scanned_to(&self.conn, &self.path, mark)?;
        }
        Ok(done)
    }

    /// Folds, expires and seals one series: its late hours, then its rows from `scanned` to
    /// `mark`. False when `go_on` said stop.
    fn series_pass(
        &mut self,
        (series, metric_id): (i64, u8),
        (now_ms, scanned, mark): (i64, i64, i64),
        done: &mut PassStats,
        go_on: &mut dyn FnMut(PassStats) -> bool,
    ) -> Result<bool, StoreError> {
        let keep = self.policy.of(metric_id);
        if keep.deletes_anything() && !self.apply(series, metric_id, now_ms, keep, done, go_on)? {
            return Ok(false);
        }
        if Metric::from_id(metric_id).is_none_or(|m| m.is_derived()) {
            return Ok(true);
        }
        let path = self.path.clone();
        let hours = usize::try_from(SLICE_MS / chunks::SPAN_MS).unwrap_or(1);
        while let Some(tx) = self.series_tx(series, metric_id)? {
            let (sealed, more) = seal::seal_late(&tx, &path, series, hours)?;
            tx.commit().map_err(sqlite(&path))?;
            done.sealed += sealed;
            if !go_on(*done) {
                return Ok(false);
            }
            if !more {
                break;
            }
        }
        let mut from = Some(seal::SealFrom { from_ms: scanned });
        while let Some(at) = from {
            from = self.seal_slice(series, metric_id, (at, mark), done)?;
            if !go_on(*done) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Seals up to a slice of the series' due hours from `from` to `mark`; returns where to
    /// go on, `None` when nothing is left (or the series has gone).
    fn seal_slice(
        &mut self,
        series: i64,
        metric_id: u8,
        (from, mark): (seal::SealFrom, i64),
        done: &mut PassStats,
    ) -> Result<Option<seal::SealFrom>, StoreError> {
        let path = self.path.clone();
        let Some(tx) = self.series_tx(series, metric_id)? else {
            return Ok(None);
        };
        let hours = usize::try_from(SLICE_MS / chunks::SPAN_MS).unwrap_or(1);
        let (sealed, next) = seal::seal(&tx, &path, series, (from, mark), hours)?;
        tx.commit().map_err(sqlite(&path))?;
        done.sealed += sealed;
        Ok(next)
    }

    /// Folds and expires one series; false when `go_on` said stop.
    fn apply(
        &mut self,
        series: i64,
        metric_id: u8,
        now_ms: i64,
        keep: Keep,
        done: &mut PassStats,
        go_on: &mut dyn FnMut(PassStats) -> bool,
    ) -> Result<bool, StoreError> {
        {
            if let Some(raw_ms) = keep.raw_ms {
                // Whole hours, so that each of a series' rollup buckets is folded at once.
                let cutoff = rollup::bucket_start(now_ms.saturating_sub(raw_ms), HOUR_MS);
                while let Some(folded) = self.fold_slice(series, metric_id, cutoff)? {
                    done.folded += folded;
                    if !go_on(*done) {
                        return Ok(false);
                    }
                }
            }
            done.expired += self.expire(series, metric_id, now_ms, keep)?;
            Ok(go_on(*done))
        }
    }

    fn series(&self) -> Result<Vec<(i64, u8)>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT id, metric FROM series ORDER BY id")
            .map_err(sqlite(&self.path))?;
        let rows = statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sqlite(&self.path))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(sqlite(&self.path))
    }

    /// Folds the series' oldest slice of raw data before `cutoff`; `None` when there is none.
    fn fold_slice(
        &mut self,
        series: i64,
        metric_id: u8,
        cutoff: i64,
    ) -> Result<Option<usize>, StoreError> {
        let path = self.path.clone();
        let Some(tx) = self.series_tx(series, metric_id)? else {
            return Ok(None);
        };
        let oldest_row: Option<i64> = tx
            .query_row(
                "SELECT min(time_ms) FROM observations WHERE series = ?1",
                params![series],
                |r| r.get(0),
            )
            .map_err(sqlite(&path))?;
        let oldest_chunk = seal::first_start(&tx, &path, series)?;
        let oldest = match (oldest_row, oldest_chunk) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(oldest) = oldest.filter(|&t| t < cutoff) else {
            return Ok(None);
        };
        let from = rollup::bucket_start(oldest, HOUR_MS);
        let to = from.saturating_add(SLICE_MS).min(cutoff);
        let mut folded = rollup::fold(&tx, series, from, to).map_err(sqlite(&path))?;
        // Chunks span whole hours and `from` and `to` are whole hours: each goes at once.
        let taken = seal::take(&tx, &path, series, from, to)?;
        rollup::add_points(&tx, series, &taken.points).map_err(sqlite(&path))?;
        folded += taken.points.len();
        for h in &taken.damaged {
            let hour = (h.start_ms, h.count, h.min, h.max, h.sum);
            rollup::add_hour(&tx, series, hour).map_err(sqlite(&path))?;
            folded += usize::try_from(h.count).unwrap_or(0);
        }
        tx.commit().map_err(sqlite(&path))?;
        Ok(Some(folded))
    }

    /// A write transaction on `series`, or `None` if it is no longer a series of
    /// `metric_id`: it may have been erased (and its id given out again) since it was listed.
    fn series_tx(
        &mut self,
        series: i64,
        metric_id: u8,
    ) -> Result<Option<rusqlite::Transaction<'_>>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(&self.path))?;
        let metric: Option<u8> = tx
            .query_row(
                "SELECT metric FROM series WHERE id = ?1",
                params![series],
                |r| r.get(0),
            )
            .optional()
            .map_err(sqlite(&self.path))?;
        Ok((metric == Some(metric_id)).then_some(tx))
    }

    fn expire(
        &mut self,
        series: i64,
        metric_id: u8,
        now_ms: i64,
        keep: Keep,
    ) -> Result<usize, StoreError> {
        if keep.rollup_ms.iter().all(Option::is_none) {
            return Ok(0);
        }
        let path = self.path.clone();
        let Some(tx) = self.series_tx(series, metric_id)? else {
            return Ok(0);
        };
        let mut expired = 0;
        for (width, period) in rollup::WIDTHS.into_iter().zip(keep.rollup_ms) {
            if let Some(period) = period {
                let before = rollup::bucket_start(now_ms.saturating_sub(period), MINUTE_MS);
                expired += rollup::expire(&tx, series, width, before).map_err(sqlite(&path))?;
            }
        }
        tx.commit().map_err(sqlite(&path))?;
        Ok(expired)
    }
}

/// The thread that runs passes over both stores every `every` until the pipeline stops.
pub(crate) struct RetentionJob {
    pub stores: Vec<Retention>,
    pub every: Duration,
    pub tx: flume::WeakSender<Submission>,
    pub stats: Arc<IngestStats>,
}

impl RetentionJob {
    pub fn run(mut self) {
        let mut next = Instant::now() + FIRST_PASS;
        while self.running() {
            thread::sleep(Duration::from_millis(500));
            if Instant::now() < next {
                continue;
            }
            self.pass_all();
            next = Instant::now() + self.every;
        }
        debug!("retention job stopped");
    }

    fn running(&self) -> bool {
        self.tx.upgrade().is_some()
    }

    fn pass_all(&mut self) {
        let started = Instant::now();
        let now_ms = Timestamp::now().as_millisecond();
        let mut total = PassStats::default();
        let mut said = Instant::now();
        let tx = self.tx.clone();
        let stats = self.stats.clone();
        for store in &mut self.stores {
            let name = store_name(&store.path);
            let mut before = PassStats::default();
            let mut go_on = |so_far: PassStats| {
                let step = PassStats {
                    folded: so_far.folded - before.folded,
                    expired: so_far.expired - before.expired,
                    sealed: so_far.sealed - before.sealed,
                    damaged: so_far.damaged - before.damaged,
                };
                before = so_far;
                count(&stats, step);
                if said.elapsed() >= PROGRESS_EVERY {
                    said = Instant::now();
                    info!(store = %name, folded = so_far.folded, expired = so_far.expired,
                        sealed = so_far.sealed,
                        "retention: still folding raw observations into rollups and sealing chunks");
                }
                tx.upgrade().is_some()
            };
            match store.pass(now_ms, &mut go_on) {
                Ok(done) => total += done,
                Err(e) => {
                    stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, "retention pass failed; it runs again at the next interval");
                }
            }
        }
        if total != PassStats::default() {
            info!(
                folded = total.folded,
                expired = total.expired,
                sealed = total.sealed,
                ms = started.elapsed().as_millis() as u64,
                "retention: raw observations folded into rollups, expired rollups deleted, sealed hours chunked"
            );
        }
    }
}

fn count(stats: &IngestStats, step: PassStats) {
    stats
        .retention_folded
        .fetch_add(step.folded as u64, Ordering::Relaxed);
    stats
        .retention_expired
        .fetch_add(step.expired as u64, Ordering::Relaxed);
    stats
        .store_sealed
        .fetch_add(step.sealed as u64, Ordering::Relaxed);
    stats
        .store_errors
        .fetch_add(step.damaged as u64, Ordering::Relaxed);
}

fn store_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests;
