//! The InfluxDB sink: observations from the write-ahead log, as line protocol, through
//! InfluxDB's `/api/v2/write` (the `influxdb2` crate), gzip-compressed, in batches by size
//! and age.
//!
//! A point is `MEASUREMENT,citizen=…,device=… METRIC=VALUE[,METRIC_flags=Ni] TIME_MS`; a
//! repeat of the same observation is the same point, so replays after a crash write nothing
//! twice. Server errors, timeouts and refused connections are retried with backoff and
//! jitter until they succeed — the log holds the data meanwhile. A 4xx answer about the data
//! is narrowed down by halving the batch until the rows the server refuses are found; those
//! are dead-lettered with the server's message and the rest is written.

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use influxdb2::api::write::TimestampPrecision;
use influxdb2::models::WriteDataPoint;
use influxdb2::RequestError;
use kenko_config::InfluxConfig;
use tracing::{info, warn};

use crate::backoff::{retry_until_done, Backoff};
use crate::consent::ConsentView;
use crate::deadletter::{DeadLetter, DeadLetterStore};
use crate::observation::Observation;
use crate::sink::{Batch, Batching, Sink, Stop, Stopped};
use crate::stats::IngestStats;
use crate::wal::Position;

mod erasure;

pub use erasure::SINK;

/// The reason code of rows InfluxDB refused.
pub const REJECTED: &str = "influx_rejected";
/// How long a stopping hub keeps trying to deliver what is left before it leaves it in the
/// log for the next start.
const DRAIN: Duration = Duration::from_secs(5);

/// Why the sink cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    #[error("influxdb.url {url:?} is not a URL: {why}")]
    Url { url: String, why: String },
    #[error("cannot set up the InfluxDB client: {0}")]
    Client(String),
    #[error(transparent)]
    Config(#[from] kenko_config::ConfigError),
}

/// Builds the client from the configuration (token from the environment or a file).
pub fn client(config: &InfluxConfig) -> Result<influxdb2::Client, InfluxError> {
    url::Url::parse(&config.url)
        .ok()
        .filter(|u| u.has_host())
        .ok_or_else(|| InfluxError::Url {
            url: config.url.clone(),
            why: "it needs a scheme and a host, e.g. http://127.0.0.1:8086".into(),
        })?;
    let token = config.token()?.unwrap_or_default();
    let mut builder = influxdb2::ClientBuilder::new(&config.url, &config.org, token);
    if config.gzip {
        builder = builder.gzip(true);
    }
    builder
        .build()
        .map_err(|e| InfluxError::Client(e.to_string()))
}

/// Asks the server whether it is ready (`GET /ready`), within `limit`.
pub async fn check(client: &influxdb2::Client, limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(limit, client.ready()).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err("the server says it is not ready".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    }
}

/// One line of line protocol and what a dead letter of it needs.
#[derive(Debug, Clone)]
struct Line {
    bytes: Bytes,
    device: Arc<str>,
    received_ms: i64,
}

impl WriteDataPoint for Line {
    fn write_data_point_to<W: io::Write>(&self, mut w: W) -> io::Result<()> {
        w.write_all(&self.bytes)
    }
}

/// Escapes a measurement name or a tag value (`,`, `=` and space; a measurement's `=` need
/// not be, but escaping it is harmless).
fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, ',' | '=' | ' ' | '\\') {
            out.push('\\');
        }
        if c == '\n' || c == '\r' {
            out.push(' ');
            continue;
        }
        out.push(c);
    }
}

/// Renders one observation: identified ones carry citizen and device, pseudonymized ones
/// only the pseudonym; both carry the metric's LOINC code (`local` where LOINC has none).
fn render(measurement: &str, o: &Observation, identified: bool) -> String {
    use std::fmt::Write as _;
    let mut line = String::with_capacity(96);
    escape(&mut line, measurement);
    if identified {
        line.push_str(",citizen=");
        escape(&mut line, &o.citizen);
        line.push_str(",device=");
        escape(&mut line, &o.device);
    } else {
        line.push_str(",pseudonym=");
        escape(&mut line, &o.citizen);
    }
    line.push_str(",loinc=");
    escape(&mut line, o.metric.loinc());
    let metric = o.metric.name();
    let _ = write!(line, " {metric}={:?}", o.value);
    if o.flags != 0 {
        let _ = write!(line, ",{metric}_flags={}i", o.flags);
    }
    let _ = writeln!(line, " {}", o.time_ms);
    line
}

fn lines(measurement: &str, observations: &[Observation], identified: bool, out: &mut Vec<Line>) {
    out.extend(observations.iter().map(|o| Line {
        bytes: Bytes::from(render(measurement, o, identified)),
        device: o.device.clone(),
        received_ms: o.received_ms,
    }));
}

enum Failure {
    /// The server refused the data (a 4xx about the rows): find and dead-letter them.
    Rejected(String),
    /// Try again later: server errors, timeouts, refused connections, throttling, and
    /// refusals that are about the setup (token, bucket) rather than the data.
    Retry(String),
}

fn classify(error: RequestError) -> Failure {
    match error {
        RequestError::Http { status, text } => classify_status(status.as_u16(), text.trim()),
        other => Failure::Retry(other.to_string()),
    }
}

fn classify_status(code: u16, text: &str) -> Failure {
    let setup = matches!(code, 401 | 403 | 404 | 408 | 425 | 429);
    if (400..500).contains(&code) && !setup {
        Failure::Rejected(format!("HTTP {code}: {text}"))
    } else if setup {
        Failure::Retry(format!(
            "HTTP {code}: {text} (check influxdb.url, org, buckets and token)"
        ))
    } else {
        Failure::Retry(format!("HTTP {code}: {text}"))
    }
}

/// The sink; runs on its own thread with a small runtime for the HTTP client.
pub struct InfluxSink {
    client: influxdb2::Client,
    config: InfluxConfig,
    /// Started by the first write, on the sink's thread: a runtime may not be dropped on a
    /// thread of another one, which is where the hub builds the sink (and drops it if
    /// something else fails to start).
    runtime: Option<tokio::runtime::Runtime>,
    dead: DeadLetterStore,
    stats: Arc<IngestStats>,
    /// The consent registry, for erasures (`erasure.rs`).
    consents: ConsentView,
    erasure: erasure::ErasureState,
}

impl InfluxSink {
    pub fn new(
        config: &InfluxConfig,
        dead: DeadLetterStore,
        consents: ConsentView,
        stats: Arc<IngestStats>,
    ) -> Result<InfluxSink, InfluxError> {
        Ok(InfluxSink {
            client: client(config)?,
            config: config.clone(),
            runtime: None,
            dead,
            stats,
            consents,
            erasure: erasure::ErasureState::new(Duration::from_millis(config.max_backoff_ms)),
        })
    }

    /// Erasures reach points up to `max_future_ms` after the request (the ingest's
    /// `max_future_s`: what could have arrived before it).
    pub fn with_max_future(mut self, max_future_ms: i64) -> InfluxSink {
        self.erasure.horizon_ms = max_future_ms;
        self
    }

    /// The sink's runtime, started on first use on the sink's own thread.
    fn runtime(&mut self) -> Result<&mut tokio::runtime::Runtime, std::io::Error> {
        match &mut self.runtime {
            Some(runtime) => Ok(runtime),
            slot @ None => Ok(slot.insert(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
            )),
        }
    }

    /// Opens the dead-letter store the sink writes refused rows to.
    pub fn dead_letters(data_dir: &Path) -> Result<DeadLetterStore, crate::store::StoreError> {
        DeadLetterStore::open(&data_dir.join("deadletter.db"))
    }

    /// Writes a bucket's lines; [`Stopped`] if the hub is stopping and the server still
    /// does not answer (nothing is lost: the checkpoint stays before these lines).
    fn write_bucket(&mut self, bucket: &str, lines: &[Line], stop: &Stop) -> Result<(), Stopped> {
        let max_backoff = Duration::from_millis(self.config.max_backoff_ms);
        let mut backoff = Backoff::new(Duration::from_millis(100), max_backoff).with_jitter();
        let mut parts = vec![lines];
        while let Some(part) = parts.pop() {
            match self.send(bucket, part) {
                Ok(()) => {
                    self.stats
                        .influx_points
                        .fetch_add(part.len() as u64, Ordering::Relaxed);
                    if let Some(after) = backoff.succeeded() {
                        info!(url = %self.config.url, after_ms = after.as_millis() as u64,
                            "InfluxDB writes succeed again");
                    }
                }
                Err(Failure::Rejected(why)) if part.len() > 1 => {
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.push(second);
                    parts.push(first);
                    tracing::debug!(
                        why,
                        points = part.len(),
                        "InfluxDB refused a batch; narrowing it down"
                    );
                }
                Err(Failure::Rejected(why)) => self.dead_letter(bucket, &part[0], why),
                Err(Failure::Retry(why)) => {
                    self.stats.influx_retries.fetch_add(1, Ordering::Relaxed);
                    if backoff.failed() {
                        warn!(url = %self.config.url, bucket, why,
                            "cannot write to InfluxDB; retrying with backoff while the write-ahead log holds the data");
                    } else {
                        tracing::debug!(why, "InfluxDB write failed again");
                    }
                    if backoff.give_up(stop.requested(), DRAIN) {
                        warn!(url = %self.config.url, "stopping with InfluxDB unreachable");
                        return Err(Stopped);
                    }
                    backoff.wait();
                    parts.push(part);
                }
            }
        }
        Ok(())
    }

    /// One write request, within the configured timeout.
    fn send(&mut self, bucket: &str, lines: &[Line]) -> Result<(), Failure> {
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let client = self.client.clone();
        let runtime = self
            .runtime()
            .map_err(|e| Failure::Retry(format!("cannot start the sink's runtime: {e}")))?;
        runtime.block_on(async {
            let body = futures_util::stream::iter(lines.to_vec());
            let write = client.write_with_precision(bucket, body, TimestampPrecision::Milliseconds);
            match tokio::time::timeout(timeout, write).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(classify(e)),
                Err(_) => Err(Failure::Retry(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                ))),
            }
        })
    }

    fn dead_letter(&mut self, bucket: &str, line: &Line, why: String) {
        warn!(bucket, device = %line.device, why, "InfluxDB refused a row; dead-lettered");
        let letter = DeadLetter {
            received_ms: line.received_ms,
            client_id: "kenko-influxdb-sink".into(),
            topic: format!("influxdb/{bucket}"),
            device: (&*line.device != "-").then(|| line.device.to_string()),
            reason_code: REJECTED.into(),
            reason: why,
            payload: line.bytes.to_vec(),
        };
        retry_until_done("record a dead letter of InfluxDB", || {
            self.dead.record(std::slice::from_ref(&letter))
        });
        self.stats.influx_rejected.fetch_add(1, Ordering::Relaxed);
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
}

impl Sink for InfluxSink {
    fn name(&self) -> &'static str {
        "influxdb"
    }

    /// Carries out erasures (see `erasure.rs`).
    fn tend(&mut self) {
        self.erase_if_asked();
    }

    fn batching(&self) -> Batching {
        Batching {
            max: self.config.batch_max,
            linger: Duration::from_millis(self.config.batch_age_ms),
        }
    }

    /// Identified observations go to the personal bucket with citizen and device, the
    /// pseudonymized ones to the shared bucket with their pseudonym only.
    fn write(&mut self, batch: &Batch, _upto: Position, stop: &Stop) -> Result<(), Stopped> {
        let mut personal = Vec::with_capacity(batch.personal.len());
        lines(
            &self.config.measurement,
            &batch.personal,
            true,
            &mut personal,
        );
        let mut shared = Vec::with_capacity(batch.shared.len());
        lines(
            &self.config.shared_measurement,
            &batch.shared,
            false,
            &mut shared,
        );
        let buckets = [
            (self.config.bucket_personal.clone(), personal),
            (self.config.bucket_shared.clone(), shared),
        ];
        for (bucket, lines) in buckets {
            if !lines.is_empty() {
                self.write_bucket(&bucket, &lines, stop)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kenko_devices::Metric;

    #[test]
    fn lines_escape_tags_and_carry_flags_only_when_set() {
        let o = Observation {
            citizen: Arc::from("citizen 1,x=y"),
            device: Arc::from("bed-001"),
            metric: Metric::HeartRate,
            value: 61.0,
            time_ms: 1_764_049_990_000,
            received_ms: 0,
            seq: 0,
            flags: 0,
        };
        assert_eq!(
            render("kenko", &o, true),
            "kenko,citizen=citizen\\ 1\\,x\\=y,device=bed-001,loinc=8867-4 heart_rate=61.0 1764049990000\n"
        );
        let flagged = Observation {
            citizen: Arc::from("p-1"),
            flags: 1,
            value: 301.5,
            ..o
        };
        assert_eq!(
            render("kenko_research", &flagged, false),
            "kenko_research,pseudonym=p-1,loinc=8867-4 heart_rate=301.5,heart_rate_flags=1i 1764049990000\n"
        );
    }

    /// A sink of `url` in `dir`, with its dead letters and a consent registry there.
    pub(super) fn sink_in(dir: &Path, url: &str, timeout_ms: u64) -> InfluxSink {
        let config = InfluxConfig {
            url: url.into(),
            org: "city".into(),
            token_env: "KENKO_TEST_NO_SUCH_TOKEN".into(),
            token_file: None,
            bucket_personal: "personal".into(),
            bucket_shared: "shared".into(),
            measurement: "kenko".into(),
            shared_measurement: "kenko_research".into(),
            batch_max: 10,
            batch_age_ms: 10,
            timeout_ms,
            max_backoff_ms: 100,
            gzip: false,
        };
        let dead = InfluxSink::dead_letters(dir).expect("dead letters");
        let registry = dir.join("registry.db");
        crate::consent::ConsentRegistry::open(&registry).expect("registry");
        let book = Arc::new(crate::consent::ConsentBook::default());
        let consents = ConsentView::open(&registry, book).expect("consents");
        InfluxSink::new(&config, dead, consents, Arc::default()).expect("sink")
    }

    /// The hub builds the sink on a runtime thread and drops it there if something else
    /// fails to start: that must not panic, as dropping a runtime there would.
    #[tokio::test]
    async fn a_sink_built_and_dropped_on_a_runtime_thread_does_not_panic() {
        let dir = tempfile::tempdir().expect("dir");
        drop(sink_in(dir.path(), "http://127.0.0.1:9", 100));
    }

    #[test]
    fn refusals_about_the_data_are_dead_lettered_the_rest_retried() {
        assert!(matches!(classify_status(400, "bad"), Failure::Rejected(_)));
        assert!(matches!(classify_status(422, "bad"), Failure::Rejected(_)));
        for code in [401, 403, 404, 429, 500, 503] {
            assert!(
                matches!(classify_status(code, "x"), Failure::Retry(_)),
                "{code}"
            );
        }
    }
}
