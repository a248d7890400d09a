//! kenko's stream processor: decode vendor payloads, normalize them into canonical
//! observations, write them to the stores in batches, and dead-letter what cannot be stored.

pub mod across;
pub mod activity;
pub mod alerts;
pub mod backoff;
pub mod chunks;
pub mod consent;
pub mod deadletter;
pub mod decode;
pub mod file_guard;
pub mod influx;
pub mod kpi;
pub mod live;
pub mod observation;
pub mod pipeline;
pub mod pseudonym;
pub mod query;
pub mod rebuild;
pub mod retention;
pub mod rollup;
pub mod sink;
pub mod stats;
pub mod store;
pub mod tsdb;
pub mod wal;
pub mod windows;

pub use observation::{flags, Observation};
