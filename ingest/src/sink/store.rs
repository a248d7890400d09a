//! The sink into the SQLite stores: `personal.db` (identified) and `shared.db`
//! (pseudonymized), and the one that carries out erasures in them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::driver::{Batch, Batching, Sink, Stop, Stopped};
use crate::backoff::Backoff;
use crate::consent::ConsentView;
use crate::file_guard::{FileGuard, Health};
use crate::pseudonym::Pseudonymizer;
use crate::stats::IngestStats;
use crate::store::PersonalStore;
use crate::wal::Position;

/// How long the sink waits before looking at a store file at fault again.
const FAULT_CHECK: Duration = Duration::from_millis(100);
/// Observations written to SQLite in one transaction at most.
const STORE_BATCH: usize = 20_000;
/// How long after its last write the sink gives the stores' page caches back.
const QUIET: Duration = Duration::from_secs(5);

pub struct StoreSink {
    pub store: PersonalStore,
    pub shared: PersonalStore,
    /// The consent records, read for erasure requests (and written when they are done).
    pub consents: ConsentView,
    pub pseudonyms: Pseudonymizer,
    pub stats: Arc<IngestStats>,
    /// The consent generation last checked for erasures.
    pub erasures_seen: u64,
    /// `personal.db` and `shared.db`, checked before and after each write.
    pub guards: Vec<Arc<FileGuard>>,
    /// `registry.db`, checked before erasures (which are recorded there).
    pub registry_guard: Arc<FileGuard>,
    pub health: Arc<Health>,
    /// When the sink last wrote, until the stores' memory is given back after it.
    pub last_write: Option<Instant>,
}

impl Sink for StoreSink {
    fn name(&self) -> &'static str {
        "store"
    }

    fn batching(&self) -> Batching {
        Batching {
            max: STORE_BATCH,
            linger: Duration::ZERO,
        }
    }

    /// Writes both stores, then checks the files again: rows that went into a file deleted
    /// or replaced meanwhile are not checkpointed, so the log keeps them. While a store
    /// fails, retries with backoff (the log keeps what waits, and fills if this goes on).
    /// Each store notes, with its rows, how far into the log it holds everything.
    fn write(&mut self, batch: &Batch, upto: Position, stop: &Stop) -> Result<(), Stopped> {
        if batch.erased > 0 {
            self.stats
                .erased
                .fetch_add(batch.erased as u64, Ordering::Relaxed);
        }
        let mut backoff = Backoff::default();
        let mut personal_done = false;
        loop {
            self.wait_for_sound_stores(stop)?;
            match self.write_both(batch, upto, &mut personal_done) {
                Ok(()) => break,
                Err(e) => {
                    backoff.failed();
                    self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, observations = batch.len(), retry_in_ms = backoff.next_wait().as_millis() as u64,
                        "cannot store observations from the write-ahead log; retrying");
                    backoff.wait();
                }
            }
        }
        if let Some(after) = backoff.succeeded() {
            info!(
                after_ms = after.as_millis() as u64,
                "the stores accept writes again"
            );
        }
        self.last_write = Some(Instant::now());
        self.wait_for_sound_stores(stop)
    }

    fn tend(&mut self) {
        self.erase_if_asked();
        self.release_memory_when_quiet();
    }
}

impl StoreSink {
    /// Identified and pseudonymized data go to separate files, each in its own transaction;
    /// a retry after the second failed does not write the first again (`personal_done`).
    fn write_both(
        &mut self,
        batch: &Batch,
        upto: Position,
        personal_done: &mut bool,
    ) -> Result<(), crate::store::StoreError> {
        let upto = Some(upto);
        if !*personal_done {
            let personal = self.store.write_batch_upto(&batch.personal, upto)?;
            *personal_done = true;
            let now = jiff::Timestamp::now().as_millisecond();
            self.stats
                .store_delay
                .observe_ms(batch.personal.iter().map(|o| now - o.received_ms));
            self.stats
                .observations_stored
                .fetch_add(personal.inserted as u64, Ordering::Relaxed);
            self.stats
                .duplicates
                .fetch_add(personal.duplicates as u64, Ordering::Relaxed);
        }
        let research = self.shared.write_batch_upto(&batch.shared, upto)?;
        self.stats
            .shared_stored
            .fetch_add(research.inserted as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Once the sink has not written for [`QUIET`], gives the stores' page caches back, so
    /// that a hub between loads does not keep the memory of the last one.
    fn release_memory_when_quiet(&mut self) {
        if self.last_write.is_none_or(|at| at.elapsed() < QUIET) {
            return;
        }
        self.last_write = None;
        for store in [&self.store, &self.shared] {
            if let Err(e) = store.release_memory() {
                error!(error = %e, "cannot give a store's page cache back");
            }
        }
    }

    /// Waits while a store file is at fault; [`Stopped`] if the hub stops meanwhile.
    fn wait_for_sound_stores(&self, stop: &Stop) -> Result<(), Stopped> {
        while !self.health.check(&self.guards) {
            if stop.requested() {
                error!("store sink stopped with a store file at fault: what it has not stored stays in the write-ahead log and is stored at the next start");
                return Err(Stopped);
            }
            thread::sleep(FAULT_CHECK);
        }
        Ok(())
    }

    /// Carries out requested erasures when the consent records have changed: this sink owns
    /// the stores, so no write can put the citizen's rows back meanwhile, and what still
    /// waits in the log is dropped as it is read ([`super::drop_erased`]).
    fn erase_if_asked(&mut self) {
        let generation = self.consents.book().generation();
        if generation == self.erasures_seen {
            return;
        }
        // An erasure is recorded in registry.db: never into a file that replaced it.
        if !self.health.check(&self.guards)
            || !self
                .health
                .check(std::slice::from_ref(&self.registry_guard))
        {
            return;
        }
        let pending = match self.consents.registry().pending_erasures() {
            Ok(p) => p,
            Err(e) => {
                error!(error = %e, "cannot read pending erasures; will retry");
                return;
            }
        };
        for request in pending {
            let citizen = &request.change.citizen;
            let erased = self
                .store
                .erase_citizen(citizen)
                .and_then(|rows| self.pseudonyms.forget(citizen).map(|()| rows));
            match erased {
                Ok(rows) => {
                    self.stats.erased.fetch_add(rows as u64, Ordering::Relaxed);
                    info!(%citizen, rows, "erased a citizen's observations on request");
                    let now = jiff::Timestamp::now().as_millisecond();
                    if let Err(e) = self.consents.registry().erasure_done(&request, rows, now) {
                        error!(error = %e, "erasure done but not recorded; it will run again");
                        return;
                    }
                }
                Err(e) => {
                    error!(error = %e, %citizen, "erasure failed; will retry");
                    return;
                }
            }
        }
        self.erasures_seen = generation;
    }
}
