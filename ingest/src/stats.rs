//! The ingest threads' counters and gauges, read for progress output and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters and gauges for progress output and metrics.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub received: AtomicU64,
    /// Messages whose observations are durable in the write-ahead log (and acknowledged).
    pub messages_stored: AtomicU64,
    /// Observations appended to the write-ahead log.
    pub observations_logged: AtomicU64,
    /// Observations the store sink wrote to `personal.db`.
    pub observations_stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub store_errors: AtomicU64,
    /// Times a store file was found missing, replaced or truncated.
    pub store_faults: AtomicU64,
    /// Store files at fault now (acknowledgements are withheld while this is not 0).
    pub stores_unavailable: AtomicU64,
    pub notices_dropped: AtomicU64,
    /// Observations refused because their citizen has not consented to collection.
    pub refused_no_consent: AtomicU64,
    /// Observations deleted (or not stored) on citizens' requests for erasure.
    pub erased: AtomicU64,
    /// Pseudonymized observations written to the shared (research) store.
    pub shared_stored: AtomicU64,
    /// Bytes the write-ahead log holds.
    pub wal_bytes: AtomicU64,
    /// 1 while the log is full and acknowledgements are withheld.
    pub wal_full: AtomicU64,
    /// Times the log became full.
    pub wal_full_episodes: AtomicU64,
    /// MQTT 5 messages answered 0x97 because the log was full.
    pub refused_log_full: AtomicU64,
    /// Failed log writes or fsyncs (retried).
    pub wal_errors: AtomicU64,
    /// 1 while the writer cannot write or fsync the log (it retries, holding
    /// acknowledgements), else 0.
    pub wal_failing: AtomicU64,
    /// Log segments set aside as damaged at start.
    pub wal_quarantined: AtomicU64,
    /// Bytes of a torn last write cut off at start.
    pub wal_torn_bytes: AtomicU64,
    /// Points InfluxDB accepted.
    pub influx_points: AtomicU64,
    /// Failed InfluxDB writes that were retried.
    pub influx_retries: AtomicU64,
    /// Rows InfluxDB refused (dead-lettered).
    pub influx_rejected: AtomicU64,
    /// Windows (sleep days, step days) computed and stored.
    pub windows_computed: AtomicU64,
    /// Windowed outputs the pipeline refused (e.g. the citizen withdrew consent).
    pub windows_refused: AtomicU64,
    /// Raw observations the retention job folded into rollups (and deleted).
    pub retention_folded: AtomicU64,
    /// Rollup rows the retention job deleted past their period.
    pub retention_expired: AtomicU64,
    /// Raw rows the retention job sealed into compressed chunks.
    pub store_sealed: AtomicU64,
    /// Alerts recorded for care services (one per service an alert goes to).
    pub alerts_raised: AtomicU64,
    /// Alert conditions met for citizens with no care consent to any service for the metric
    /// (nobody may be told; nothing is recorded).
    pub alerts_unaddressed: AtomicU64,
    /// From the hub receiving an observation to the store sink committing it to
    /// `personal.db`, where queries see it.
    pub store_delay: Histogram,
    /// When each device last sent a message, and how many it sends.
    pub activity: crate::activity::DeviceActivity,
}

/// Upper bounds of [`Histogram`]'s buckets, in milliseconds (the last bucket has none).
pub const DELAY_BOUNDS_MS: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 60_000,
];

/// A distribution of delays: counts per bucket of [`DELAY_BOUNDS_MS`] (and one above), the
/// count and the sum, as Prometheus histograms are read.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; DELAY_BOUNDS_MS.len() + 1],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl Histogram {
    /// Adds delays, counted into buckets first so that a batch costs a few atomic adds.
    pub fn observe_ms(&self, delays_ms: impl IntoIterator<Item = i64>) {
        let mut counts = [0u64; DELAY_BOUNDS_MS.len() + 1];
        let (mut count, mut sum) = (0u64, 0u64);
        for delay in delays_ms {
            // A clock stepped back makes a delay negative: it counts as none.
            let delay = u64::try_from(delay).unwrap_or(0);
            let bucket = DELAY_BOUNDS_MS.partition_point(|&bound| bound < delay);
            counts[bucket] += 1;
            count += 1;
            sum = sum.saturating_add(delay);
        }
        if count == 0 {
            return;
        }
        for (bucket, n) in self.buckets.iter().zip(counts) {
            if n > 0 {
                bucket.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(count, Ordering::Relaxed);
        self.sum_ms.fetch_add(sum, Ordering::Relaxed);
    }

    /// Cumulative counts: for each bound of [`DELAY_BOUNDS_MS`], how many delays were at
    /// most that long, then the count of all.
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect()
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum_ms(&self) -> u64 {
        self.sum_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_fall_into_the_first_bucket_whose_bound_holds_them() {
        let h = Histogram::default();
        h.observe_ms([0, 5, 6, 250, 251, 70_000, -3]);
        let cumulative = h.cumulative();
        assert_eq!(cumulative.len(), DELAY_BOUNDS_MS.len() + 1);
        assert_eq!(
            cumulative[0], 3,
            "0, 5 and the negative one are at most 5 ms"
        );
        assert_eq!(cumulative[1], 4, "6 ms within 10");
        assert_eq!(cumulative[5], 5, "250 ms within 250");
        assert_eq!(cumulative[6], 6, "251 ms within 500");
        assert_eq!(cumulative[11], 6, "nothing else within a minute");
        assert_eq!(cumulative[12], 7, "70 s above every bound");
        assert_eq!(h.count(), 7);
        assert_eq!(h.sum_ms(), 5 + 6 + 250 + 251 + 70_000);
    }
}
