//! How far each sink is behind the durable end of the write-ahead log: for `/readyz`, which
//! says "not ready" before a slow sink fills the log and acknowledgements stop, and for
//! `/metrics`.

use std::sync::Arc;

use super::cursor::{Durable, Progress};
use crate::wal::Position;

/// One sink's distance behind the log's durable end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    pub sink: &'static str,
    /// About how many bytes of log records the sink has yet to write.
    pub bytes: u64,
}

/// Reads every sink's lag.
#[derive(Debug)]
pub struct SinkLags {
    durable: Arc<Durable>,
    sinks: Vec<Arc<Progress>>,
    segment_bytes: u64,
    bound_bytes: u64,
}

impl SinkLags {
    /// Sinks further behind than half of `max_bytes` (the log's size limit) are "too far":
    /// the log fills, and acknowledgements wait, when one reaches the whole of it.
    pub fn new(
        durable: Arc<Durable>,
        sinks: Vec<Arc<Progress>>,
        segment_bytes: u64,
        max_bytes: u64,
    ) -> SinkLags {
        SinkLags {
            durable,
            sinks,
            segment_bytes,
            bound_bytes: max_bytes / 2,
        }
    }

    pub fn lags(&self) -> Vec<Lag> {
        let end = self.durable.end();
        self.sinks
            .iter()
            .map(|sink| Lag {
                sink: sink.name,
                bytes: bytes_between(sink.get(), end, self.segment_bytes),
            })
            .collect()
    }

    /// The lag past which a sink makes the hub not ready.
    pub fn bound_bytes(&self) -> u64 {
        self.bound_bytes
    }

    /// Why the hub is not ready because of a sink, or `None`.
    pub fn too_far(&self) -> Option<String> {
        self.lags()
            .into_iter()
            .find(|lag| lag.bytes > self.bound_bytes)
            .map(|lag| {
                format!(
                    "the {} sink is {} bytes behind the write-ahead log (bound {}: half of wal.max_bytes); acknowledgements stop when it is a whole log behind",
                    lag.sink, lag.bytes, self.bound_bytes
                )
            })
    }
}

/// About how many bytes lie from `from` to `to` (segments taken as full).
fn bytes_between(from: Position, to: Position, segment_bytes: u64) -> u64 {
    if to <= from {
        return 0;
    }
    let whole = (to.segment - from.segment).saturating_mul(segment_bytes);
    (whole + to.offset).saturating_sub(from.offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment: u64, offset: u64) -> Position {
        Position { segment, offset }
    }

    #[test]
    fn lags_count_the_bytes_between_a_sink_and_the_durable_end() {
        assert_eq!(bytes_between(at(3, 100), at(3, 350), 1000), 250);
        assert_eq!(bytes_between(at(3, 900), at(5, 50), 1000), 1150);
        assert_eq!(bytes_between(at(5, 50), at(3, 900), 1000), 0);
        let durable = Durable::new(at(4, 500));
        let store = Progress::new("store", at(4, 400));
        let influx = Progress::new("influxdb", at(2, 0));
        let lags = SinkLags::new(durable.clone(), vec![store, influx], 1000, 3000);
        assert_eq!(
            lags.lags(),
            vec![
                Lag {
                    sink: "store",
                    bytes: 100
                },
                Lag {
                    sink: "influxdb",
                    bytes: 2500
                }
            ]
        );
        let why = lags.too_far().expect("influxdb is too far");
        assert!(
            why.starts_with("the influxdb sink is 2500 bytes behind"),
            "{why}"
        );
        durable.advance(at(4, 500));
        let caught_up = SinkLags::new(
            durable,
            vec![Progress::new("store", at(4, 500))],
            1000,
            3000,
        );
        assert_eq!(caught_up.too_far(), None);
    }
}
