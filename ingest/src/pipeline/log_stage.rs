//! The writer's write-ahead log: appending each accepted message as a record, one fsync per
//! batch, retries while the disk fails, a full log (refusing or holding messages until the
//! sinks make room) and releasing segments every sink has passed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use tracing::{error, info, warn};

use super::intake::Intake;
use super::{log_full, Batch, IDLE_CHECK, ROOM_CHECK, STOP_GRACE};
use crate::backoff::Backoff;
use crate::decode::{RejectCode, Rejection};
use crate::file_guard::{FileGuard, Health};
use crate::sink::{self, Durable, Progress};
use crate::stats::IngestStats;
use crate::wal::{self, Wal, WalError};

pub(super) struct LogStage {
    pub wal: Wal,
    pub durable: Arc<Durable>,
    /// Each sink's checkpoint: segments before the oldest are released.
    pub progress: Vec<Arc<Progress>>,
    /// The record being encoded.
    pub record: Vec<u8>,
    /// When the log became full, while it is.
    pub full_since: Option<Instant>,
    /// The files whose loss stops acknowledgements, checked once per batch.
    pub guards: Vec<Arc<FileGuard>>,
    pub health: Arc<Health>,
    pub stats: Arc<IngestStats>,
}

impl LogStage {
    /// Appends each accepted message's observations to the log as one record and makes
    /// them durable with one fsync. A message that does not fit while the log is full is
    /// refused with [`RejectCode::LogFull`] if its client can be told so; otherwise the
    /// writer waits for the sinks to make room (the queue fills and pushes back).
    pub fn log(&mut self, batch: &mut Batch, intake: &mut Intake) {
        let mut appended = Vec::new();
        for i in 0..batch.submissions.len() {
            if batch.verdicts[i].is_err() {
                continue;
            }
            let (personal, shared) = batch.spans[i].clone();
            if personal.is_empty() && shared.is_empty() {
                continue;
            }
            sink::encode(
                &batch.observations[personal.clone()],
                &batch.shared[shared],
                &mut self.record,
            );
            if self.record.len() > wal::MAX_RECORD {
                batch.verdicts[i] = Err(Rejection {
                    code: RejectCode::TooManyReadings,
                    message: format!(
                        "{} readings in one message are more than one log record holds ({} bytes); send them in several messages",
                        personal.len(),
                        wal::MAX_RECORD
                    ),
                });
                continue;
            }
            let refusable = batch.submissions[i]
                .reply
                .as_ref()
                .is_some_and(|r| r.refusable);
            if !self.make_room(refusable, intake) {
                self.stats.refused_log_full.fetch_add(1, Ordering::Relaxed);
                batch.verdicts[i] = Err(log_full());
                continue;
            }
            if !self.append(intake) {
                batch.verdicts[i] = Err(log_full());
                continue;
            }
            self.stats
                .observations_logged
                .fetch_add(personal.len() as u64, Ordering::Relaxed);
            appended.push(i);
        }
        if !appended.is_empty() && !self.sync(intake) {
            for i in appended {
                batch.verdicts[i] = Err(log_full());
            }
        }
    }

    /// Holds the batch while a store file is missing, replaced or truncated: nothing more is
    /// acknowledged into a file no one will read (the batch before this check is the last).
    /// A stopping hub gives up waiting (its connections are gone).
    pub fn wait_for_sound_stores(&self, intake: &Intake) {
        while !self.health.check(&self.guards) {
            if intake.stopping() {
                return;
            }
            thread::sleep(IDLE_CHECK);
        }
    }

    /// `true` once the log has room for `self.record`; `false` if it is full and the client
    /// can be refused, or the hub is stopping.
    pub fn make_room(&mut self, refusable: bool, intake: &mut Intake) -> bool {
        loop {
            if self.wal.has_room(self.record.len()) {
                if let Some(since) = self.full_since.take() {
                    self.stats.wal_full.store(0, Ordering::Relaxed);
                    info!(
                        after_ms = since.elapsed().as_millis() as u64,
                        "write-ahead log has room again; acknowledging resumes"
                    );
                }
                return true;
            }
            if self.full_since.is_none() {
                self.full_since = Some(Instant::now());
                self.stats.wal_full.store(1, Ordering::Relaxed);
                self.stats.wal_full_episodes.fetch_add(1, Ordering::Relaxed);
                let slowest = self
                    .progress
                    .iter()
                    .min_by_key(|p| p.get())
                    .map_or("none", |p| p.name);
                warn!(
                    used = self.wal.used_bytes(),
                    slowest_sink = slowest,
                    "write-ahead log full: withholding acknowledgements (MQTT 5: 0x97) until the sinks catch up; nothing is dropped"
                );
            }
            if refusable || intake.stopping() {
                return false;
            }
            // What is appended already becomes durable, and its sinks can move on.
            self.sync(intake);
            intake.refuse_or_hold(&self.stats);
            thread::sleep(ROOM_CHECK);
            self.release_segments();
        }
    }

    /// Appends `self.record`, retrying while the disk fails; `false` if the hub is stopping
    /// and the disk still fails.
    pub fn append(&mut self, intake: &Intake) -> bool {
        let record = std::mem::take(&mut self.record);
        let appended = self.retry_wal(intake, |wal| wal.append(&record).map(drop));
        self.record = record;
        appended
    }

    /// Writes and fsyncs what is appended, retrying while the disk fails; `false` if the
    /// hub is stopping and the disk still fails.
    pub fn sync(&mut self, intake: &Intake) -> bool {
        let synced = self.retry_wal(intake, Wal::sync);
        if synced {
            self.durable.advance(self.wal.end());
        }
        synced
    }

    /// Runs a log operation until it succeeds, holding acknowledgements meanwhile; `false`
    /// if the hub has been stopping for [`STOP_GRACE`] and the disk still fails.
    pub fn retry_wal(
        &mut self,
        intake: &Intake,
        mut operation: impl FnMut(&mut Wal) -> Result<(), WalError>,
    ) -> bool {
        let mut backoff = Backoff::default();
        loop {
            match operation(&mut self.wal) {
                Ok(()) => {
                    if let Some(after) = backoff.succeeded() {
                        self.stats.wal_failing.store(0, Ordering::Relaxed);
                        info!(
                            after_ms = after.as_millis() as u64,
                            "the write-ahead log accepts writes again (the disk recovered); acknowledging resumes"
                        );
                    }
                    return true;
                }
                Err(error) => {
                    backoff.failed();
                    self.stats.wal_errors.fetch_add(1, Ordering::Relaxed);
                    self.stats.wal_failing.store(1, Ordering::Relaxed);
                    error!(%error, retry_in_ms = backoff.next_wait().as_millis() as u64,
                        "cannot write the write-ahead log; holding acknowledgements and retrying");
                    if backoff.give_up(intake.stopping(), STOP_GRACE) {
                        return false;
                    }
                    backoff.wait();
                }
            }
        }
    }

    /// Deletes log segments every sink has passed.
    pub fn release_segments(&mut self) {
        if let Some(oldest) = self.progress.iter().map(|p| p.get()).min() {
            if let Err(e) = self.wal.release_before(oldest) {
                error!(error = %e, "cannot delete a write-ahead log segment the sinks have passed");
            }
        }
        self.stats
            .wal_bytes
            .store(self.wal.used_bytes(), Ordering::Relaxed);
    }
}
