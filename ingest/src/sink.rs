//! Sinks: each reads the write-ahead log from its own checkpoint and writes what it reads
//! somewhere — the SQLite stores here, InfluxDB in [`crate::influx`]. A sink saves its
//! checkpoint only after its writes are done, so a crash replays a little and loses nothing;
//! the stores keep (device, metric, time) once, so a replay writes nothing twice.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use kenko_devices::Metric;
use kenko_proto::wal as proto;
use prost::Message;
use tracing::{error, info};

use crate::consent::{ConsentView, Consents};
use crate::file_guard::{FileGuard, Health};
use crate::observation::Observation;
use crate::pipeline::IngestStats;
use crate::pseudonym::Pseudonymizer;
use crate::store::PersonalStore;
use crate::wal::{self, Position, WalError, WalReader};

/// The end of what the writer has made durable, and whether it has stopped for good.
#[derive(Debug, Default)]
pub struct Durable {
    state: Mutex<(Position, bool)>,
    moved: Condvar,
}

impl Durable {
    pub fn new(end: Position) -> Arc<Durable> {
        Arc::new(Durable {
            state: Mutex::new((end, false)),
            moved: Condvar::new(),
        })
    }

    /// Called after each sync.
    pub fn advance(&self, end: Position) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = end;
        self.moved.notify_all();
    }

    /// The writer has stopped: nothing more will be appended.
    pub fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 = true;
        self.moved.notify_all();
    }

    /// The durable end and whether the writer has stopped, waiting up to `limit` for the
    /// end to move past `from`.
    pub fn wait_past(&self, from: Position, limit: Duration) -> (Position, bool) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (state, _) = self
            .moved
            .wait_timeout_while(state, limit, |(end, closed)| *end <= from && !*closed)
            .unwrap_or_else(|e| e.into_inner());
        *state
    }
}

/// Where a sink has got to, read by the writer to release segments every sink has passed.
#[derive(Debug, Default)]
pub struct Progress {
    pub name: &'static str,
    checkpoint: Mutex<Position>,
}

impl Progress {
    pub fn new(name: &'static str, at: Position) -> Arc<Progress> {
        Arc::new(Progress {
            name,
            checkpoint: Mutex::new(at),
        })
    }

    pub fn get(&self) -> Position {
        *self.checkpoint.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, at: Position) {
        *self.checkpoint.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }
}

/// Encodes the observations of one message as a log record.
pub fn encode(personal: &[Observation], shared: &[Observation], out: &mut Vec<u8>) {
    let record = proto::Batch {
        personal: personal.iter().map(to_proto).collect(),
        shared: shared.iter().map(to_proto).collect(),
    };
    out.clear();
    record
        .encode(out)
        .expect("a Vec grows to hold whatever is encoded");
}

fn to_proto(o: &Observation) -> proto::Observation {
    proto::Observation {
        citizen: o.citizen.to_string(),
        device: o.device.to_string(),
        metric: u32::from(o.metric.id()),
        value: o.value,
        time_ms: o.time_ms,
        received_ms: o.received_ms,
        seq: o.seq,
        flags: o.flags,
    }
}

/// A record read back from the log.
#[derive(Debug, Default, PartialEq)]
pub struct Record {
    pub personal: Vec<Observation>,
    pub shared: Vec<Observation>,
}

/// Why a record could not be read back (the checksum matched, so it was written so).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("write-ahead log record at {at:?} does not decode: {source}")]
    Decode {
        at: Position,
        source: prost::DecodeError,
    },
    #[error(
        "write-ahead log record at {at:?} names metric id {id}, which this kenko does not know"
    )]
    UnknownMetric { at: Position, id: u32 },
}

/// Decodes a record into observations.
pub fn decode(bytes: &[u8], at: Position) -> Result<Record, RecordError> {
    let batch = proto::Batch::decode(bytes).map_err(|source| RecordError::Decode { at, source })?;
    let convert = |list: Vec<proto::Observation>| -> Result<Vec<Observation>, RecordError> {
        list.into_iter()
            .map(|o| {
                let metric = u8::try_from(o.metric)
                    .ok()
                    .and_then(Metric::from_id)
                    .ok_or(RecordError::UnknownMetric { at, id: o.metric })?;
                Ok(Observation {
                    citizen: Arc::from(o.citizen),
                    device: Arc::from(o.device),
                    metric,
                    value: o.value,
                    time_ms: o.time_ms,
                    received_ms: o.received_ms,
                    seq: o.seq,
                    flags: o.flags,
                })
            })
            .collect()
    };
    Ok(Record {
        personal: convert(batch.personal)?,
        shared: convert(batch.shared)?,
    })
}

/// Keeps the identified observations whose citizen has not asked for erasure since they
/// were received (the request may have come while they waited in the log); returns how
/// many were dropped.
pub fn drop_erased(consents: &Consents, observations: &mut Vec<Observation>) -> usize {
    let before = observations.len();
    observations.retain(|o| !consents.erased_after(&o.citizen, o.received_ms));
    before - observations.len()
}

/// A sink's reader, its checkpoint file and the writer's durable end.
pub struct Cursor {
    reader: WalReader,
    wal_dir: PathBuf,
    durable: Arc<Durable>,
    progress: Arc<Progress>,
    buf: Vec<u8>,
    /// Records that could not be decoded (counted; the sink goes on).
    pub undecodable: u64,
}

impl Cursor {
    pub fn new(
        reader: WalReader,
        wal_dir: &Path,
        durable: Arc<Durable>,
        progress: Arc<Progress>,
    ) -> Cursor {
        Cursor {
            reader,
            wal_dir: wal_dir.to_owned(),
            durable,
            progress,
            buf: Vec::new(),
            undecodable: 0,
        }
    }

    pub fn position(&self) -> Position {
        self.reader.position()
    }

    /// Waits up to `limit` for more durable records; `true` once the writer has stopped and
    /// everything is read.
    pub fn wait(&self, limit: Duration) -> bool {
        let (end, closed) = self.durable.wait_past(self.reader.position(), limit);
        closed && self.reader.position() >= end
    }

    /// Whether the writer has stopped (the hub is shutting down).
    pub fn closed(&self) -> bool {
        self.durable
            .wait_past(self.reader.position(), Duration::ZERO)
            .1
    }

    /// The next durable record, decoded; records that do not decode are logged, counted
    /// and skipped.
    pub fn next_record(&mut self) -> Result<Option<Record>, WalError> {
        let (end, _) = self
            .durable
            .wait_past(self.reader.position(), Duration::ZERO);
        loop {
            let Some(at) = self.reader.next_record_before(&mut self.buf, end)? else {
                return Ok(None);
            };
            match decode(&self.buf, at) {
                Ok(record) => return Ok(Some(record)),
                Err(e) => {
                    self.undecodable += 1;
                    error!(sink = self.progress.name, error = %e, "skipping a write-ahead log record");
                }
            }
        }
    }

    /// Saves the position as the sink's checkpoint (after what was read is written).
    pub fn commit(&mut self) -> Result<(), WalError> {
        let at = self.reader.position();
        if at == self.progress.get() {
            return Ok(());
        }
        wal::save_checkpoint(&self.wal_dir, self.progress.name, at)?;
        self.progress.set(at);
        Ok(())
    }
}

/// How long an idle sink waits before looking again (erasures, shutdown).
const IDLE: Duration = Duration::from_millis(100);
/// Most log records written to SQLite in one transaction.
const STORE_RECORDS: usize = 4_096;

/// The sink into the SQLite stores: `personal.db` (identified) and `shared.db`
/// (pseudonymized), and the one that carries out erasures in them.
pub struct StoreSink {
    pub cursor: Cursor,
    pub store: PersonalStore,
    pub shared: PersonalStore,
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
}

impl StoreSink {
    pub fn run(mut self) {
        let mut personal = Vec::new();
        let mut shared = Vec::new();
        loop {
            self.erase_if_asked();
            if self.cursor.wait(IDLE) {
                break;
            }
            let consents = self.consents.refresh();
            let mut records = 0;
            while records < STORE_RECORDS {
                match self.cursor.next_record() {
                    Ok(Some(record)) => {
                        personal.extend(record.personal);
                        shared.extend(record.shared);
                        records += 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        error!(error = %e, "cannot read the write-ahead log; retrying");
                        thread::sleep(IDLE);
                        break;
                    }
                }
            }
            if records == 0 {
                continue;
            }
            let erased = drop_erased(&consents, &mut personal);
            if erased > 0 {
                self.stats
                    .erased
                    .fetch_add(erased as u64, Ordering::Relaxed);
            }
            if !self.write(&personal, &shared) {
                error!("store sink stopped with a store file at fault: what it has not stored stays in the write-ahead log and is stored at the next start");
                return;
            }
            personal.clear();
            shared.clear();
        }
        self.erase_if_asked();
        info!("store sink stopped: write-ahead log fully stored");
    }

    /// Waits while a store file is at fault; `false` if the hub stops meanwhile.
    fn wait_for_sound_stores(&self) -> bool {
        while !self.health.check(&self.guards) {
            if self.cursor.closed() {
                return false;
            }
            thread::sleep(IDLE);
        }
        true
    }

    /// Writes one chunk and then the checkpoint; while the store fails, retries with
    /// backoff (the log keeps what waits, and fills if this goes on). Each store notes, with
    /// its rows, how far into the log it holds everything. The files are checked before and
    /// after: rows that went into a file deleted or replaced meanwhile are not checkpointed,
    /// so the log keeps them. `false` if the hub stops while a file is at fault.
    fn write(&mut self, personal: &[Observation], shared: &[Observation]) -> bool {
        let upto = Some(self.cursor.position());
        let mut backoff = Duration::from_millis(50);
        let mut failures = 0u64;
        loop {
            if !self.wait_for_sound_stores() {
                return false;
            }
            let result = self
                .store
                .write_batch_upto(personal, upto)
                .and_then(|stats| {
                    // Identified and pseudonymized data go to separate files, each in its own
                    // transaction; a retry after a failure here stores nothing twice.
                    let research = self.shared.write_batch_upto(shared, upto)?;
                    Ok((stats, research))
                });
            match result {
                Ok((stats, research)) => {
                    self.stats
                        .observations_stored
                        .fetch_add(stats.inserted as u64, Ordering::Relaxed);
                    self.stats
                        .duplicates
                        .fetch_add(stats.duplicates as u64, Ordering::Relaxed);
                    self.stats
                        .shared_stored
                        .fetch_add(research.inserted as u64, Ordering::Relaxed);
                    if failures > 0 {
                        info!(failures, "the stores accept writes again");
                    }
                    break;
                }
                Err(e) => {
                    failures += 1;
                    self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, observations = personal.len(), retry_in_ms = backoff.as_millis() as u64,
                        "cannot store observations from the write-ahead log; retrying");
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if !self.wait_for_sound_stores() {
            return false;
        }
        let mut backoff = Duration::from_millis(50);
        while let Err(e) = self.cursor.commit() {
            error!(error = %e, "cannot save the store sink's checkpoint; retrying");
            thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        true
    }

    /// Carries out requested erasures when the consent records have changed: this sink owns
    /// the stores, so no write can put the citizen's rows back meanwhile, and what still
    /// waits in the log is dropped as it is read ([`drop_erased`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let o = Observation {
            citizen: Arc::from("citizen-001"),
            device: Arc::from("bed-001"),
            metric: Metric::HeartRate,
            value: 61.5,
            time_ms: 1_764_049_990_000,
            received_ms: 1_764_049_990_123,
            seq: 7,
            flags: 1,
        };
        let shared = Observation {
            citizen: Arc::from("p-00"),
            device: Arc::from("-"),
            ..o.clone()
        };
        let mut bytes = Vec::new();
        encode(
            std::slice::from_ref(&o),
            std::slice::from_ref(&shared),
            &mut bytes,
        );
        let record = decode(&bytes, Position::default()).expect("decodes");
        assert_eq!(record.personal, vec![o]);
        assert_eq!(record.shared, vec![shared]);
        let mut bad = bytes.clone();
        bad.truncate(bytes.len() / 2);
        assert!(decode(&bad, Position::default()).is_err());
    }
}
