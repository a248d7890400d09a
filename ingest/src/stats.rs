//! The ingest threads' counters and gauges, read for progress output and `/metrics`.

use std::sync::atomic::AtomicU64;

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
}
