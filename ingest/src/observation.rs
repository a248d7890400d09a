//! The canonical observation: one normalized reading of one metric, the unit of storage.

use std::sync::Arc;

use kenko_devices::Metric;

/// Flag bits of an observation.
pub mod flags {
    /// The value lies outside the metric's physiological bounds.
    pub const IMPLAUSIBLE: u32 = 1;
}

/// One normalized reading. Times are Unix epoch milliseconds, UTC.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub citizen: Arc<str>,
    pub device: Arc<str>,
    pub metric: Metric,
    /// Value in the metric's canonical unit (`Metric::unit`).
    pub value: f64,
    /// Event time: when the device measured it.
    pub time_ms: i64,
    /// Ingest time: when the hub received it.
    pub received_ms: i64,
    /// The device's message counter, 0 when the device sends none.
    pub seq: u64,
    pub flags: u32,
}
