//! A sink's place in the write-ahead log: what the writer has made durable ([`Durable`]),
//! how far the sink has got ([`Progress`], read by the writer to release segments), and the
//! reader that goes from one to the other ([`Cursor`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing::error;

use super::record::{decode, Record};
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

    /// The end of what is durable now.
    pub fn end(&self) -> Position {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
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
