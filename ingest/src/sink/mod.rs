//! Sinks: each reads the write-ahead log from its own checkpoint and writes what it reads
//! somewhere — the SQLite stores ([`StoreSink`]), InfluxDB ([`crate::influx::InfluxSink`]).
//! One [`Driver`] follows the log for each of them: it batches records, leaves out what
//! citizens have asked to erase since, has the sink write the batch, and only then saves the
//! sink's checkpoint, so a crash replays a little and loses nothing; the stores keep
//! (device, metric, time) once, so a replay writes nothing twice.

mod cursor;
mod driver;
mod lag;
mod record;
mod store;

pub use cursor::{Cursor, Durable, Progress};
pub use driver::{drop_erased, Batch, Batching, Driver, Sink, Stop, Stopped};
pub use lag::{Lag, SinkLags};
pub use record::{decode, encode, Record, RecordError};
pub use store::StoreSink;
