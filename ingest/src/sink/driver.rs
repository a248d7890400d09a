//! The loop every sink runs: follow the log, batch, write, then checkpoint.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::cursor::Cursor;
use crate::backoff::retry_until_done;
use crate::consent::{ConsentView, Consents};
use crate::observation::Observation;
use crate::wal::Position;

/// How long an idle driver waits before looking again (erasures, shutdown).
const IDLE: Duration = Duration::from_millis(100);

/// Observations read from the log, to be written together.
#[derive(Debug, Default)]
pub struct Batch {
    /// Identified observations, without those of citizens who asked for erasure since.
    pub personal: Vec<Observation>,
    /// Pseudonymized observations.
    pub shared: Vec<Observation>,
    /// Identified observations left out because their citizen asked for erasure.
    pub erased: usize,
    /// Log records read into the batch (one may hold nothing left to write).
    pub records: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.personal.len() + self.shared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.personal.is_empty() && self.shared.is_empty()
    }

    fn clear(&mut self) {
        self.personal.clear();
        self.shared.clear();
        self.erased = 0;
        self.records = 0;
    }
}

/// How a sink wants its batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Observations at which a batch is written at once.
    pub max: usize,
    /// How long the first observation of a batch may wait for more (zero: write what there is).
    pub linger: Duration,
}

/// Asks whether the hub is stopping, for a sink retrying a write.
pub struct Stop<'a> {
    cursor: &'a Cursor,
}

impl Stop<'_> {
    /// `true` once the hub is stopping: a sink whose destination still fails gives up
    /// (what it did not write stays in the log for the next start).
    pub fn requested(&self) -> bool {
        self.cursor.closed()
    }
}

/// A sink gave up a batch because the hub is stopping; the log keeps it.
#[derive(Debug, PartialEq, Eq)]
pub struct Stopped;

/// Where observations from the log are written.
pub trait Sink {
    /// The sink's name in logs and checkpoints.
    fn name(&self) -> &'static str;

    fn batching(&self) -> Batching;

    /// Writes a batch that ends at `upto` in the log, retrying until it is written (a sink
    /// may record rows its destination refuses as dead letters: they count as written).
    /// Returns [`Stopped`] if the hub stops while the destination still fails.
    fn write(&mut self, batch: &Batch, upto: Position, stop: &Stop) -> Result<(), Stopped>;

    /// Work between batches, and once more after the last: carrying out erasures.
    fn tend(&mut self) {}
}

/// Follows the write-ahead log for one sink.
pub struct Driver<S> {
    pub cursor: Cursor,
    pub consents: ConsentView,
    pub sink: S,
}

impl<S: Sink> Driver<S> {
    pub fn new(cursor: Cursor, consents: ConsentView, sink: S) -> Driver<S> {
        Driver {
            cursor,
            consents,
            sink,
        }
    }

    /// Runs until the writer has stopped and everything it logged is written, or until the
    /// sink gives up a batch at shutdown.
    pub fn run(mut self) {
        let batching = self.sink.batching();
        let name = self.sink.name();
        let mut batch = Batch::default();
        let mut oldest: Option<Instant> = None;
        loop {
            self.sink.tend();
            let wait = oldest.map_or(IDLE, |t| batching.linger.saturating_sub(t.elapsed()));
            let finished = self.cursor.wait(wait);
            if self.fill(&mut batch, batching.max) {
                oldest.get_or_insert_with(Instant::now);
            }
            let due = batch.len() >= batching.max
                || oldest.is_some_and(|t| t.elapsed() >= batching.linger);
            if batch.records > 0 && (due || finished) {
                let stop = Stop {
                    cursor: &self.cursor,
                };
                if self.sink.write(&batch, self.cursor.position(), &stop) == Err(Stopped) {
                    warn!(
                        sink = name,
                        observations = batch.len(),
                        "sink stopped before writing everything; the rest stays in the write-ahead log for the next start"
                    );
                    return;
                }
                batch.clear();
                oldest = None;
                let what = format!("save the {name} sink's checkpoint");
                retry_until_done(&what, || self.cursor.commit());
            } else if finished && batch.records == 0 {
                break;
            }
        }
        self.sink.tend();
        info!(sink = name, "sink stopped: write-ahead log fully written");
    }

    /// Adds durable records to `batch` until it holds `max` observations or the log has no
    /// more; `true` if any record was read.
    fn fill(&mut self, batch: &mut Batch, max: usize) -> bool {
        let consents = self.consents.refresh();
        let mut added = false;
        while batch.len() < max {
            match self.cursor.next_record() {
                Ok(Some(mut record)) => {
                    batch.erased += drop_erased(&consents, &mut record.personal);
                    batch.personal.append(&mut record.personal);
                    batch.shared.append(&mut record.shared);
                    batch.records += 1;
                    added = true;
                }
                Ok(None) => break,
                Err(e) => {
                    error!(sink = self.sink.name(), error = %e, "cannot read the write-ahead log; retrying");
                    std::thread::sleep(IDLE);
                    break;
                }
            }
        }
        added
    }
}

/// Keeps the identified observations whose citizen has not asked for erasure since they
/// were received (the request may have come while they waited in the log); returns how
/// many were dropped.
pub fn drop_erased(consents: &Consents, observations: &mut Vec<Observation>) -> usize {
    let before = observations.len();
    observations.retain(|o| !consents.erased_after(&o.citizen, o.received_ms));
    before - observations.len()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use kenko_devices::Metric;

    use super::*;
    use crate::consent::{ConsentBook, ConsentChange, ConsentRegistry};
    use crate::sink::{encode, Durable, Progress};
    use crate::wal::{self, Wal, WalOptions};

    /// What a test sink was given: (identified, pseudonymized, erased) per batch.
    type Written = Arc<Mutex<Vec<(usize, usize, usize)>>>;

    struct Recorder {
        written: Written,
        max: usize,
        give_up: bool,
    }

    impl Sink for Recorder {
        fn name(&self) -> &'static str {
            "test"
        }

        fn batching(&self) -> Batching {
            Batching {
                max: self.max,
                linger: Duration::ZERO,
            }
        }

        fn write(&mut self, batch: &Batch, _upto: Position, _stop: &Stop) -> Result<(), Stopped> {
            if self.give_up {
                return Err(Stopped);
            }
            let entry = (batch.personal.len(), batch.shared.len(), batch.erased);
            self.written.lock().expect("lock").push(entry);
            Ok(())
        }
    }

    fn observation(citizen: &str, received_ms: i64) -> Observation {
        Observation {
            citizen: Arc::from(citizen),
            device: Arc::from("bed-001"),
            metric: Metric::HeartRate,
            value: 60.0,
            time_ms: received_ms,
            received_ms,
            seq: 0,
            flags: 0,
        }
    }

    /// A log holding `records` (identified, pseudonymized), all durable and the writer
    /// stopped; the registry holds `changes`. Runs a driver over it with `sink`.
    fn drive(
        dir: &Path,
        records: &[(Vec<Observation>, Vec<Observation>)],
        changes: Vec<ConsentChange>,
        sink: Recorder,
    ) -> (Position, Position) {
        let wal_dir = dir.join("wal");
        let (mut wal, _) = Wal::open(&wal_dir, WalOptions::default()).expect("open log");
        let start = wal.end();
        let mut bytes = Vec::new();
        for (personal, shared) in records {
            encode(personal, shared, &mut bytes);
            wal.append(&bytes).expect("append");
        }
        wal.sync().expect("sync");
        let registry_path = dir.join("registry.db");
        let mut registry = ConsentRegistry::open(&registry_path).expect("registry");
        for change in changes {
            registry.record(change, 1_000).expect("record");
        }
        let book = Arc::new(ConsentBook::new(registry.consents().expect("consents")));
        let durable = Durable::new(wal.end());
        durable.close();
        let cursor = Cursor::new(
            wal.reader(start),
            &wal_dir,
            durable,
            Progress::new("test", start),
        );
        let consents = ConsentView::open(&registry_path, book).expect("view");
        Driver::new(cursor, consents, sink).run();
        (
            wal.end(),
            wal::load_checkpoint(&wal_dir, "test").expect("checkpoint"),
        )
    }

    fn recorder(max: usize, give_up: bool) -> (Recorder, Written) {
        let written = Written::default();
        let sink = Recorder {
            written: written.clone(),
            max,
            give_up,
        };
        (sink, written)
    }

    #[test]
    fn writes_batches_of_whole_records_up_to_the_limit_then_checkpoints_the_end() {
        let dir = tempfile::tempdir().expect("dir");
        let record = (
            vec![observation("c1", 1), observation("c1", 2)],
            vec![observation("p-1", 1)],
        );
        let (sink, written) = recorder(7, false);
        let (end, checkpoint) = drive(dir.path(), &vec![record; 10], Vec::new(), sink);
        // Three records (9 observations) reach the limit of 7; the last batch has one.
        let batches = written.lock().expect("lock").clone();
        assert_eq!(batches, [(6, 3, 0), (6, 3, 0), (6, 3, 0), (2, 1, 0)]);
        assert_eq!(checkpoint, end, "the checkpoint follows the last write");
    }

    #[test]
    fn a_batch_given_up_at_shutdown_leaves_the_checkpoint_before_it() {
        let dir = tempfile::tempdir().expect("dir");
        let (sink, written) = recorder(100, true);
        let record = (vec![observation("c1", 1)], Vec::new());
        let (end, checkpoint) = drive(dir.path(), &[record], Vec::new(), sink);
        assert!(written.lock().expect("lock").is_empty());
        assert_ne!(checkpoint, end);
        assert_eq!(checkpoint, Position::default(), "no checkpoint was saved");
    }

    #[test]
    fn observations_received_before_their_citizens_erasure_are_left_out_and_counted() {
        let dir = tempfile::tempdir().expect("dir");
        let record = (
            vec![
                observation("c1", 500),
                observation("c2", 500),
                observation("c1", 2_000),
            ],
            vec![observation("p-1", 500)],
        );
        let (sink, written) = recorder(100, false);
        let (end, checkpoint) = drive(
            dir.path(),
            &[record],
            vec![ConsentChange::erasure_of("c1")],
            sink,
        );
        // c1's reading received before the request (at 1,000) goes; the later one stays.
        assert_eq!(written.lock().expect("lock").clone(), [(2, 1, 1)]);
        assert_eq!(checkpoint, end);
    }

    #[test]
    fn a_record_with_nothing_left_to_write_is_still_passed_and_checkpointed() {
        let dir = tempfile::tempdir().expect("dir");
        let record = (vec![observation("c1", 10)], Vec::new());
        let (sink, written) = recorder(100, false);
        let (end, checkpoint) = drive(
            dir.path(),
            &[record],
            vec![ConsentChange::erasure_of("c1")],
            sink,
        );
        assert_eq!(written.lock().expect("lock").clone(), [(0, 0, 1)]);
        assert_eq!(checkpoint, end);
    }
}
