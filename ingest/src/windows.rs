//! Windowed outputs of the stream processor: a sleep summary per bed sensor and sleep day
//! (time in bed, sleep time, efficiency, awakenings) and step totals per wearable and local
//! calendar day, stored as derived observations at the window's start.
//!
//! The store sink notes, in the same transaction as the observations, which series feed a
//! window and over which event times (`window_dirty` in `personal.db`). This job reads those
//! notes, and once a window has closed (its end plus `windows.grace_min` has passed) computes
//! it from the stored observations and submits the result through the pipeline, so it is
//! logged, acknowledged and written by every sink like any observation. Late data within the
//! horizon marks the window again and the new summary replaces the old one. A crash between
//! the computation and clearing the note computes the window again: the result is the same.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use kenko_config::WindowsConfig;
use kenko_devices::{Metric, Registry, SleepStage};
use rusqlite::{params, Connection, OptionalExtension};
use tracing::{debug, error, warn};

use crate::chunks;
use crate::decode::Zones;
use crate::pipeline::{Derived, Origin, Reply, Submission};
use crate::stats::IngestStats;
use crate::store::{open_durable, sqlite, StoreError};

/// How often the job looks for closed windows.
const POLL: Duration = Duration::from_secs(1);
/// A sample stands for the time until the next one, but for no more than this (the device
/// was off, or the bed sensor sends only on change).
const MAX_STEP_MS: i64 = 5 * 60_000;
/// Wakefulness between two periods of sleep longer than this separates them (a nap and the
/// night) rather than interrupting one: it is not an awakening.
pub const MAX_AWAKENING_MS: i64 = 60 * 60_000;
/// A sleep day with less data than this (a stray sample of a skewed clock just across the
/// window's edge) gets no summary: it would say nothing about the night.
pub const MIN_COVERAGE_MS: i64 = 60 * 60_000;
/// Notes handled per pass.
const PASS_ROWS: usize = 256;

/// A window of event time, `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// What a window summarizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowKind {
    /// A sleep day, from `sleep_day_start_hour` local time to the same hour the next day.
    Sleep,
    /// A local calendar day.
    Steps,
}

impl WindowKind {
    fn of(metric: Metric) -> WindowKind {
        if metric == Metric::Steps {
            WindowKind::Steps
        } else {
            WindowKind::Sleep
        }
    }

    /// The window of this kind that holds `time_ms`, in `zone`.
    pub fn window(self, time_ms: i64, zone: &TimeZone, start_hour: u8) -> Window {
        let hour = match self {
            WindowKind::Sleep => start_hour,
            WindowKind::Steps => 0,
        };
        local_day(time_ms, zone, hour)
    }
}

/// The 24-hour local day from `hour` that holds `time_ms` (23 or 25 hours across a daylight
/// saving change).
fn local_day(time_ms: i64, zone: &TimeZone, hour: u8) -> Window {
    let at = Timestamp::from_millisecond(time_ms)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned(zone.clone());
    let start_of = |date: jiff::civil::Date| {
        date.at(hour as i8, 0, 0, 0)
            .to_zoned(zone.clone())
            .map(|z| z.timestamp().as_millisecond())
            .unwrap_or(time_ms)
    };
    let mut date = at.date();
    if start_of(date) > time_ms {
        date = date.yesterday().unwrap_or(date);
    }
    Window {
        start_ms: start_of(date),
        end_ms: start_of(date.tomorrow().unwrap_or(date)),
    }
}

/// One moment of a bed sensor: occupancy and stage as stored (either may be missing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BedSample {
    pub time_ms: i64,
    pub occupied: Option<bool>,
    pub stage: Option<SleepStage>,
}

impl BedSample {
    /// In bed: said so, or implied by a sleep stage.
    fn in_bed(&self) -> bool {
        self.occupied.unwrap_or(self.stage.is_some())
    }

    fn asleep(&self) -> bool {
        self.in_bed() && self.stage.is_some_and(SleepStage::is_asleep)
    }

    /// Known to be awake: out of bed, or in bed and awake.
    fn awake(&self) -> bool {
        self.occupied == Some(false) || self.stage == Some(SleepStage::Awake)
    }
}

/// One sleep day of one bed sensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SleepSummary {
    /// Minutes the bed was occupied.
    pub time_in_bed_min: f64,
    /// Minutes asleep (light, deep or REM).
    pub sleep_min: f64,
    /// `100 × sleep / time in bed`; none without time in bed.
    pub efficiency_pct: Option<f64>,
    /// Times sleep was interrupted by wakefulness (awake in bed, or out of bed) of at most
    /// [`MAX_AWAKENING_MS`] and resumed.
    pub awakenings: u32,
}

/// Summarizes the samples of one window, sorted by time. Each sample stands for the time
/// until the next (at most [`MAX_STEP_MS`]); the last one for the device's sampling period
/// (the shortest interval seen, one minute without any), cut at the window's end.
/// `None` when the samples cover less than [`MIN_COVERAGE_MS`].
pub fn summarize_sleep(samples: &[BedSample], window: Window) -> Option<SleepSummary> {
    let first = samples.first()?;
    let mut in_bed_ms = 0i64;
    let mut sleep_ms = 0i64;
    let mut covered_ms = 0i64;
    let mut awakenings = 0;
    let mut last_sleep_end: Option<i64> = None;
    let mut woke_since = false;
    let period = samples
        .windows(2)
        .map(|w| w[1].time_ms - w[0].time_ms)
        .filter(|&d| d > 0)
        .min()
        .unwrap_or(60_000)
        .min(MAX_STEP_MS);
    let mut previous_time = first.time_ms;
    for (i, sample) in samples.iter().enumerate() {
        debug_assert!(sample.time_ms >= previous_time, "samples are sorted");
        previous_time = sample.time_ms;
        let next = samples
            .get(i + 1)
            .map_or(sample.time_ms + period, |n| n.time_ms);
        let step = (next - sample.time_ms)
            .min(MAX_STEP_MS)
            .min(window.end_ms - sample.time_ms)
            .max(0);
        covered_ms += step;
        if sample.in_bed() {
            in_bed_ms += step;
        }
        if sample.asleep() {
            sleep_ms += step;
            if let Some(end) = last_sleep_end {
                if woke_since && sample.time_ms - end <= MAX_AWAKENING_MS {
                    awakenings += 1;
                }
            }
            last_sleep_end = Some(sample.time_ms + step);
            woke_since = false;
        } else if sample.awake() {
            woke_since = true;
        }
    }
    if covered_ms < MIN_COVERAGE_MS {
        return None;
    }
    let minutes = |ms: i64| ms as f64 / 60_000.0;
    Some(SleepSummary {
        time_in_bed_min: minutes(in_bed_ms),
        sleep_min: minutes(sleep_ms),
        efficiency_pct: (in_bed_ms > 0).then(|| 100.0 * sleep_ms as f64 / in_bed_ms as f64),
        awakenings,
    })
}

/// The readings a sleep summary is stored as.
fn sleep_readings(summary: &SleepSummary) -> Vec<(Metric, f64)> {
    let mut readings = vec![
        (Metric::SleepTimeInBed, summary.time_in_bed_min),
        (Metric::SleepTime, summary.sleep_min),
        (Metric::SleepAwakenings, f64::from(summary.awakenings)),
    ];
    if let Some(efficiency) = summary.efficiency_pct {
        readings.push((Metric::SleepEfficiency, efficiency));
    }
    readings
}

/// The job that computes closed windows; see the module docs.
pub(crate) struct WindowJob {
    pub conn: Connection,
    pub path: std::path::PathBuf,
    pub registry: Registry,
    pub zones: Zones,
    pub config: WindowsConfig,
    pub tx: flume::WeakSender<Submission>,
    pub stats: Arc<IngestStats>,
}

/// A note of `window_dirty` with its series.
struct Note {
    series: i64,
    from_ms: i64,
    to_ms: i64,
    version: i64,
    citizen: String,
    device: String,
    metric: Metric,
}

impl WindowJob {
    pub fn open(
        personal: &Path,
        registry: Registry,
        zones: Zones,
        config: WindowsConfig,
        tx: flume::WeakSender<Submission>,
        stats: Arc<IngestStats>,
    ) -> Result<WindowJob, StoreError> {
        Ok(WindowJob {
            conn: open_durable(personal, crate::store::SCHEMA)?,
            path: personal.to_owned(),
            registry,
            zones,
            config,
            tx,
            stats,
        })
    }

    /// Runs until the pipeline stops taking submissions.
    pub fn run(self) {
        loop {
            thread::sleep(POLL);
            let Some(tx) = self.tx.upgrade() else { break };
            if let Err(e) = self.pass(&tx) {
                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                error!(error = %e, "cannot compute windowed outputs; will retry");
            }
        }
        debug!("window job stopped");
    }

    fn now_ms() -> i64 {
        Timestamp::now().as_millisecond()
    }

    /// Computes every closed window of the pending notes.
    fn pass(&self, tx: &flume::Sender<Submission>) -> Result<(), StoreError> {
        let notes = self.notes()?;
        let grace_ms = i64::from(self.config.grace_min) * 60_000;
        let mut done: HashSet<(String, WindowKind, i64)> = HashSet::new();
        for note in notes {
            let kind = WindowKind::of(note.metric);
            let zone = match self.registry.get(&note.device) {
                Some(device) => self.zones.for_device(&device),
                None => self.zones.default_zone(),
            };
            let now = Self::now_ms();
            let mut window = kind.window(note.from_ms, &zone, self.config.sleep_day_start_hour);
            let mut open_from = None;
            while window.start_ms <= note.to_ms {
                if window.end_ms + grace_ms > now {
                    open_from = Some(window.start_ms);
                    break;
                }
                if done.insert((note.device.clone(), kind, window.start_ms))
                    && self.config.summarizes(window.start_ms)
                    && !self.compute(tx, &note, kind, window)?
                {
                    // The pipeline is stopping: the note stays for the next start.
                    return Ok(());
                }
                window = kind.window(window.end_ms, &zone, self.config.sleep_day_start_hour);
            }
            self.settle(&note, open_from)?;
        }
        Ok(())
    }

    fn notes(&self) -> Result<Vec<Note>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT d.series, d.from_ms, d.to_ms, d.version, s.citizen, s.device, s.metric
                 FROM window_dirty d JOIN series s ON s.id = d.series
                 ORDER BY d.from_ms LIMIT ?1",
            )
            .map_err(sqlite(&self.path))?;
        let rows = statement
            .query_map(params![PASS_ROWS as i64], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get::<_, u8>(6)?,
                ))
            })
            .map_err(sqlite(&self.path))?;
        let mut notes = Vec::new();
        for row in rows {
            let (series, from_ms, to_ms, version, citizen, device, metric) =
                row.map_err(sqlite(&self.path))?;
            let Some(metric) = Metric::from_id(metric) else {
                continue;
            };
            notes.push(Note {
                series,
                from_ms,
                to_ms,
                version,
                citizen,
                device,
                metric,
            });
        }
        Ok(notes)
    }

    /// Clears a note, or keeps it from its first open window, unless it changed meanwhile
    /// (then the next pass sees the new span).
    fn settle(&self, note: &Note, open_from: Option<i64>) -> Result<(), StoreError> {
        let path = &self.path;
        match open_from {
            None => self
                .conn
                .execute(
                    "DELETE FROM window_dirty WHERE series = ?1 AND version = ?2",
                    params![note.series, note.version],
                )
                .map_err(sqlite(path))?,
            Some(from) if from > note.from_ms => self
                .conn
                .execute(
                    "UPDATE window_dirty SET from_ms = ?3 WHERE series = ?1 AND version = ?2",
                    params![note.series, note.version, from],
                )
                .map_err(sqlite(path))?,
            Some(_) => 0,
        };
        Ok(())
    }

    /// Computes one window and submits its result; `false` when the pipeline has stopped.
    fn compute(
        &self,
        tx: &flume::Sender<Submission>,
        note: &Note,
        kind: WindowKind,
        window: Window,
    ) -> Result<bool, StoreError> {
        let readings = match kind {
            WindowKind::Sleep => {
                let samples = self.bed_samples(note, window)?;
                match summarize_sleep(&samples, window) {
                    Some(summary) => sleep_readings(&summary),
                    None => return Ok(true),
                }
            }
            WindowKind::Steps => match self.steps(note, window)? {
                Some(total) => vec![(Metric::DailySteps, total)],
                None => return Ok(true),
            },
        };
        let (reply_tx, verdicts) = flume::unbounded();
        let device: Arc<str> = Arc::from(note.device.as_str());
        let submission = Submission {
            client_id: device.clone(),
            device: note.device.as_str().into(),
            payload: Bytes::new(),
            received_ms: Self::now_ms(),
            reply: Some(Reply {
                to: reply_tx,
                token: 0,
                refusable: false,
            }),
            protobuf: false,
            origin: Origin::Window(Derived {
                time_ms: window.start_ms,
                readings,
            }),
        };
        if tx.send(submission).is_err() {
            return Ok(false);
        }
        match verdicts.recv() {
            Ok(outcome) => {
                match outcome.verdict {
                    Ok(()) => {
                        self.stats.windows_computed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(rejection) => {
                        self.stats.windows_refused.fetch_add(1, Ordering::Relaxed);
                        warn!(device = %note.device, code = rejection.code.as_str(),
                            reason = %rejection.message, window_start_ms = window.start_ms,
                            "a windowed output was refused");
                    }
                }
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    fn bed_samples(&self, note: &Note, window: Window) -> Result<Vec<BedSample>, StoreError> {
        let readings = self.readings(note, &[Metric::BedOccupancy, Metric::SleepStage], window)?;
        let mut samples: Vec<BedSample> = Vec::new();
        for (metric, time_ms, value) in readings {
            let sample = match samples.last_mut() {
                Some(last) if last.time_ms == time_ms => last,
                _ => {
                    samples.push(BedSample {
                        time_ms,
                        occupied: None,
                        stage: None,
                    });
                    samples.last_mut().expect("just pushed")
                }
            };
            if metric == Metric::BedOccupancy.id() {
                sample.occupied = Some(value >= 0.5);
            } else {
                sample.stage = SleepStage::from_code(value);
            }
        }
        Ok(samples)
    }

    fn steps(&self, note: &Note, window: Window) -> Result<Option<f64>, StoreError> {
        let readings = self.readings(note, &[Metric::Steps], window)?;
        Ok((!readings.is_empty()).then(|| readings.iter().map(|&(_, _, v)| v).sum()))
    }

    /// The readings of `metrics` from the note's citizen and device in the window, from rows
    /// and sealed chunks (`chunks.rs`) in one snapshot, as (metric id, time, value) in time
    /// order.
    fn readings(
        &self,
        note: &Note,
        metrics: &[Metric],
        window: Window,
    ) -> Result<Vec<(u8, i64, f64)>, StoreError> {
        let snapshot = self
            .conn
            .unchecked_transaction()
            .map_err(sqlite(&self.path))?;
        let mut readings = Vec::new();
        for &metric in metrics {
            let series: Option<i64> = snapshot
                .prepare_cached(
                    "SELECT id FROM series WHERE citizen = ?1 AND device = ?2 AND metric = ?3",
                )
                .map_err(sqlite(&self.path))?
                .query_row(params![note.citizen, note.device, metric.id()], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(sqlite(&self.path))?;
            let Some(series) = series else {
                continue;
            };
            let mut rows = snapshot
                .prepare_cached(
                    "SELECT time_ms, value FROM observations
                     WHERE series = ?1 AND time_ms >= ?2 AND time_ms < ?3",
                )
                .map_err(sqlite(&self.path))?;
            let found = rows
                .query_map(params![series, window.start_ms, window.end_ms], |r| {
                    Ok((metric.id(), r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
                })
                .map_err(sqlite(&self.path))?;
            for reading in found {
                readings.push(reading.map_err(sqlite(&self.path))?);
            }
            let sealed = chunks::points(
                &snapshot,
                &self.path,
                series,
                window.start_ms,
                window.end_ms,
            )?;
            readings.extend(sealed.into_iter().map(|(t, v)| (metric.id(), t, v)));
        }
        readings.sort_by_key(|&(metric, time_ms, _)| (time_ms, metric));
        Ok(readings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn jst() -> TimeZone {
        TimeZone::get("Asia/Tokyo").expect("tz")
    }

    fn at(text: &str) -> i64 {
        text.parse::<Timestamp>().expect("ts").as_millisecond()
    }

    #[test]
    fn sleep_days_start_at_the_configured_local_hour() {
        // 2026-11-25 02:00 JST belongs to the sleep day that began 2026-11-24 18:00 JST.
        let w = WindowKind::Sleep.window(at("2026-11-24T17:00:00Z"), &jst(), 18);
        assert_eq!(w.start_ms, at("2026-11-24T09:00:00Z"));
        assert_eq!(w.end_ms, at("2026-11-25T09:00:00Z"));
        // Exactly at the start belongs to the new day.
        let w2 = WindowKind::Sleep.window(at("2026-11-25T09:00:00Z"), &jst(), 18);
        assert_eq!(w2.start_ms, w.end_ms);
        let day = WindowKind::Steps.window(at("2026-11-24T17:00:00Z"), &jst(), 18);
        assert_eq!(day.start_ms, at("2026-11-24T15:00:00Z"), "local midnight");
        assert_eq!(day.end_ms - day.start_ms, 24 * 60 * MIN);
    }

    #[test]
    fn daylight_saving_days_are_23_or_25_hours() {
        let ny = TimeZone::get("America/New_York").expect("tz");
        let spring = WindowKind::Steps.window(at("2026-03-08T12:00:00Z"), &ny, 18);
        assert_eq!(spring.end_ms - spring.start_ms, 23 * 60 * MIN);
    }

    /// A minute-by-minute timeline: `.` out of bed, `a` awake in bed, `l`/`d`/`r` asleep.
    fn timeline(start: i64, marks: &str) -> Vec<BedSample> {
        marks
            .chars()
            .enumerate()
            .map(|(i, c)| BedSample {
                time_ms: start + i as i64 * MIN,
                occupied: Some(c != '.'),
                stage: match c {
                    'a' => Some(SleepStage::Awake),
                    'l' => Some(SleepStage::Light),
                    'd' => Some(SleepStage::Deep),
                    'r' => Some(SleepStage::Rem),
                    _ => None,
                },
            })
            .collect()
    }

    #[test]
    fn a_night_with_a_bathroom_trip() {
        let start = at("2026-11-24T09:00:00Z");
        let window = Window {
            start_ms: start,
            end_ms: start + 24 * 60 * MIN,
        };
        // 5 min out, 10 awake in bed, 30 asleep, 3 out of bed, 2 awake, 20 asleep, 5 awake, out.
        let marks = format!(
            "{}{}{}{}{}{}{}{}",
            ".".repeat(5),
            "a".repeat(10),
            "lldd".repeat(7) + "rr",
            "...",
            "aa",
            "r".repeat(20),
            "aaaaa",
            "."
        );
        let s = summarize_sleep(&timeline(start, &marks), window).expect("summary");
        assert_eq!(s.time_in_bed_min, 10.0 + 30.0 + 2.0 + 20.0 + 5.0);
        assert_eq!(s.sleep_min, 50.0);
        assert_eq!(s.awakenings, 1, "the trip out; the final waking is not one");
        let e = s.efficiency_pct.expect("efficiency");
        assert!((e - 100.0 * 50.0 / 67.0).abs() < 1e-9, "{e}");
    }

    #[test]
    fn a_long_gap_separates_sleep_periods() {
        let start = at("2026-11-24T09:00:00Z");
        let window = Window {
            start_ms: start,
            end_ms: start + 24 * 60 * MIN,
        };
        let marks = format!(
            "{}{}{}{}{}",
            "l".repeat(30),
            "a".repeat(61),
            "l".repeat(30),
            "a".repeat(60),
            "l".repeat(10)
        );
        let s = summarize_sleep(&timeline(start, &marks), window).expect("summary");
        assert_eq!(
            s.awakenings, 1,
            "61 minutes apart is two periods; 60 is one"
        );
        assert_eq!(s.sleep_min, 70.0);
    }

    #[test]
    fn sparse_samples_stand_for_at_most_five_minutes() {
        let start = at("2026-11-24T09:00:00Z");
        let window = Window {
            start_ms: start,
            end_ms: start + 24 * 60 * MIN,
        };
        let mut samples = timeline(start, &"l".repeat(60));
        // The device was off for an hour, then one more minute of sleep.
        samples.push(BedSample {
            time_ms: start + 121 * MIN,
            occupied: Some(true),
            stage: Some(SleepStage::Light),
        });
        let s = summarize_sleep(&samples, window).expect("summary");
        assert_eq!(s.sleep_min, 59.0 + 5.0 + 1.0);
        assert_eq!(s.awakenings, 0, "missing data is no awakening");
        assert!(summarize_sleep(&[], window).is_none());
    }

    #[test]
    fn the_last_sample_stops_at_the_window_end() {
        let start = at("2026-11-24T09:00:00Z");
        let window = Window {
            start_ms: start,
            end_ms: start + 90 * MIN + 30_000,
        };
        let s = summarize_sleep(&timeline(start, &"l".repeat(91)), window).expect("summary");
        assert_eq!(s.sleep_min, 90.5);
    }

    #[test]
    fn a_stray_sample_across_the_edge_makes_no_summary() {
        let start = at("2026-11-24T09:00:00Z");
        let window = Window {
            start_ms: start,
            end_ms: start + 24 * 60 * MIN,
        };
        let edge = timeline(window.end_ms - 2 * MIN, "ll");
        assert!(
            summarize_sleep(&edge, window).is_none(),
            "two minutes say nothing of a night"
        );
        let hour = timeline(start, &".".repeat(60));
        let s = summarize_sleep(&hour, window).expect("an hour of an empty bed is data");
        assert_eq!(s.time_in_bed_min, 0.0);
        assert_eq!(s.efficiency_pct, None);
    }
}
