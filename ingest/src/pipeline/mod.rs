//! The ingest pipeline: a queue from the broker's connections to one writer thread that
//! decodes, normalizes and checks messages in batches, appends what may be kept to the
//! write-ahead log, makes it durable (one fsync per batch), and only then tells each
//! connection its verdict, so that a message is acknowledged only once it is on disk.
//!
//! Sinks follow the log at their own checkpoints on their own threads: the SQLite stores
//! ([`crate::sink::StoreSink`]) always, InfluxDB ([`crate::influx::InfluxSink`]) when
//! configured. When the log is full because a sink is behind, acknowledgements are
//! withheld (MQTT 5 publishers are told 0x97 at once) until the sinks catch up.
//!
//! The writer is a plain thread because file and SQLite calls block; the queue is bounded,
//! so when the writer falls behind (or the disk is failing) publishers are pushed back
//! instead of data being dropped.
//!
//! The writer is made of stages, one job each, which this file runs batch by batch:
//! `intake` (the queue, and messages held while the log is full), `decoding` (device,
//! profile, observations), `consent_routing` (what of a message may be kept, and what goes
//! to the shared store), `log_stage` (append, fsync, waiting for room, releasing segments)
//! and `answers` (dead letters, verdicts, errors to devices, live copies); `replay` runs
//! `kenko deadletter replay` requests through the same stages.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kenko_config::{
    Config, InfluxConfig, IngestConfig, ProfileConfig, RetentionConfig, StoreConfig, WalConfig,
    WindowsConfig,
};
use kenko_devices::{Metric, Profiles, Registry};
use tracing::{error, info};

use crate::alerts::{AlertSink, AlertStore, Evaluator};
use crate::consent::{ConsentBook, ConsentRegistry, ConsentView, ConsentWatcher};
use crate::deadletter::{DeadLetter, DeadLetterStore};
use crate::decode::{self, RejectCode, Rejection, TimeLimits, Zones};
use crate::file_guard::{FileFault, FileGuard, Health};
use crate::influx::{InfluxError, InfluxSink};
use crate::live::LiveFeed;
use crate::observation::Observation;
use crate::pseudonym::Pseudonymizer;
use crate::rebuild::{self, RebuildError};
use crate::retention::{Policy, PolicyError, Retention, RetentionJob};
use crate::sink::{Cursor, Driver, Durable, Progress, SinkLags, StoreSink};
use crate::stats::IngestStats;
use crate::store::{PersonalStore, StoreError};
use crate::wal::{self, Recovery, Wal, WalError, WalOptions};
use crate::windows::WindowJob;

mod answers;
mod consent_routing;
mod decoding;
mod intake;
mod log_stage;
mod replay;

use answers::Answers;
use consent_routing::ConsentRouting;
use decoding::Decoder;
use intake::Intake;
use log_stage::LogStage;

/// The profile of messages that say they are protobuf.
pub const PROTOBUF_PROFILE: &str = "kenko-pb-v1";

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Rebuild(#[from] RebuildError),
    #[error(transparent)]
    Guard(#[from] FileFault),
    #[error(transparent)]
    Influx(#[from] InfluxError),
    #[error(transparent)]
    Zone(#[from] decode::UnknownZone),
    #[error(transparent)]
    Retention(#[from] PolicyError),
    #[error(transparent)]
    Config(#[from] kenko_config::ConfigError),
    #[error("invalid payload profile: {0}")]
    Profile(#[from] kenko_devices::profile::ProfileError),
    #[error("{0}")]
    Alerts(String),
    #[error("cannot start an ingest thread: {0}")]
    Thread(std::io::Error),
    #[error("the ingest pipeline has stopped")]
    Closed,
}

/// What the pipeline needs of the configuration.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub ingest: IngestConfig,
    pub wal: WalConfig,
    pub influxdb: Option<InfluxConfig>,
    /// Payload profiles declared in the configuration, besides the built-in ones.
    pub profiles: Vec<ProfileConfig>,
    pub windows: WindowsConfig,
    pub retention: RetentionConfig,
    /// Whether the embedded store is written (`[store] embedded`).
    pub store: StoreConfig,
    /// Alert rules for care services (`[[alerts]]`); none: no alerts sink.
    pub alerts: Vec<crate::alerts::Rule>,
    /// Start even when a store lacks records the write-ahead log no longer holds (the loss is
    /// recorded in the audit log); otherwise such a start is refused.
    pub accept_data_loss: bool,
}

impl TryFrom<&Config> for Settings {
    type Error = IngestError;

    /// The pipeline's part of `config`, with its alert rules checked against the catalogue.
    fn try_from(config: &Config) -> Result<Settings, IngestError> {
        Ok(Settings {
            alerts: crate::alerts::compile(config).map_err(IngestError::Alerts)?,
            ingest: config.ingest.clone(),
            wal: config.wal.clone(),
            influxdb: config.influxdb.clone(),
            profiles: config.profiles.clone(),
            windows: config.windows.clone(),
            retention: config.retention.clone(),
            store: config.store.clone(),
            accept_data_loss: false,
        })
    }
}

/// One telemetry message handed over by the broker.
pub struct Submission {
    pub client_id: Arc<str>,
    /// The `{device_id}` level of the topic.
    pub device: Box<str>,
    pub payload: Bytes,
    pub received_ms: i64,
    /// Where to send the verdict; `None` for QoS 0, which is never acknowledged.
    pub reply: Option<Reply>,
    /// The message says it is `kenko.telemetry.v1` protobuf (MQTT 5 content type
    /// `application/x-protobuf`, or a topic ending `/pb`), whatever the device's profile.
    pub protobuf: bool,
    /// Where the message comes from.
    pub origin: Origin,
}

/// Where a submission comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A device's publish.
    Device,
    /// A dead letter run through again (`kenko deadletter replay`): a refusal updates the
    /// letter instead of adding one, and nothing is announced to the device.
    Replay,
    /// A windowed output of the hub (`windows.rs`): readings it computed, which may be
    /// derived metrics and older than the late-data horizon; the submission carries no
    /// payload. A refusal is logged and counted, not dead-lettered.
    Window(Derived),
}

/// Readings the hub computed for a device, at one event time (a window's start).
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    pub time_ms: i64,
    pub readings: Vec<(Metric, f64)>,
}

/// A connection's return address for verdicts, with a token it chose (e.g. QoS and packet id).
pub struct Reply {
    /// Unbounded (one verdict per submission, which the submitter bounds), and allocates
    /// nothing until used: every connection holds one.
    pub to: flume::Sender<Outcome>,
    pub token: u32,
    /// The client can be told "not now" (MQTT 5 reason 0x97) when the log is full; an
    /// MQTT 3.1.1 client cannot, so its acknowledgement waits for room instead.
    pub refusable: bool,
}

/// The verdict on one submission, sent once it is final (durable in the log, or durably
/// dead-lettered, or refused).
#[derive(Debug)]
pub struct Outcome {
    pub token: u32,
    pub verdict: Result<(), Rejection>,
}

/// A message the hub itself publishes: errors for devices, live observations.
#[derive(Debug, Clone)]
pub struct Notice {
    pub topic: String,
    pub payload: Bytes,
    /// The event time of the observation a live notice carries (epoch ms): the broker
    /// decides consent-gated deliveries by it.
    pub event_ms: Option<i64>,
}

/// The sending side, cloned into every connection.
#[derive(Clone)]
pub struct IngestHandle {
    tx: flume::Sender<Submission>,
    stats: Arc<IngestStats>,
    live: LiveFeed,
    consents: Arc<ConsentBook>,
    health: Arc<Health>,
    lags: Arc<SinkLags>,
}

impl IngestHandle {
    /// Queues a message; waits while the queue is full (push-back).
    pub async fn submit(&self, submission: Submission) -> Result<(), IngestError> {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send_async(submission)
            .await
            .map_err(|_| IngestError::Closed)
    }

    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }

    /// Stored observations and new alerts as they happen, for live views.
    pub fn live(&self) -> &LiveFeed {
        &self.live
    }

    /// The consents in force, kept current from `registry.db`.
    pub fn consents(&self) -> &Arc<ConsentBook> {
        &self.consents
    }

    /// Whether the store files are sound (`GET /readyz`).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// How far each sink is behind the log.
    pub fn sink_lags(&self) -> &Arc<SinkLags> {
        &self.lags
    }
}

/// The running writer and sinks; join after every [`IngestHandle`] is dropped.
pub struct Pipeline {
    threads: Vec<(&'static str, thread::JoinHandle<()>)>,
    watcher: ConsentWatcher,
    /// What opening the write-ahead log found.
    pub recovery: Recovery,
}

impl Pipeline {
    /// Waits until the writer has logged everything queued and the sinks have written the
    /// log out (the InfluxDB sink gives up after a few seconds if the server does not
    /// answer; what it has not written stays in the log for the next start).
    pub fn join(self) {
        for (name, thread) in self.threads {
            if thread.join().is_err() {
                error!(thread = name, "ingest thread panicked");
            }
        }
        drop(self.watcher);
    }
}

/// How often the consent registry is checked for new records.
const CONSENT_POLL: Duration = Duration::from_millis(10);
/// How often an idle writer wakes (to release log segments the sinks have passed).
const IDLE_CHECK: Duration = Duration::from_millis(100);
/// How long a full log is waited on between checks for room.
const ROOM_CHECK: Duration = Duration::from_millis(20);
/// How long a stopping writer keeps retrying a failing log write before it gives up (the
/// messages concerned are not acknowledged; their devices send them again).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The retention job over both stores: always, for besides `[retention]` it seals past
/// hours into chunks.
fn retention_job(
    settings: &Settings,
    data_dir: &Path,
    tx: flume::WeakSender<Submission>,
    stats: &Arc<IngestStats>,
) -> Result<RetentionJob, IngestError> {
    let policy = Policy::from_config(&settings.retention, settings.ingest.late_horizon_s)?;
    let stores = ["personal.db", "shared.db"]
        .iter()
        .map(|name| Retention::open(&data_dir.join(name), policy.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RetentionJob {
        stores,
        every: Duration::from_secs(u64::from(settings.retention.every_min) * 60),
        tx,
        stats: stats.clone(),
    })
}

fn spawn(
    name: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> Result<(&'static str, thread::JoinHandle<()>), IngestError> {
    thread::Builder::new()
        .name(format!("kenko-{name}"))
        .spawn(f)
        .map(|handle| (name, handle))
        .map_err(IngestError::Thread)
}

/// Opens the stores and the write-ahead log in `data_dir` and starts the writer and sinks.
pub fn start(
    settings: &Settings,
    registry: Registry,
    data_dir: &Path,
    notices: Option<flume::Sender<Notice>>,
) -> Result<(IngestHandle, Pipeline), IngestError> {
    std::fs::create_dir_all(data_dir).map_err(|source| IngestError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let config = &settings.ingest;
    let stats = Arc::new(IngestStats::default());
    let wal_dir = data_dir.join("wal");
    let (wal, recovery) = Wal::open(
        &wal_dir,
        WalOptions {
            segment_bytes: settings.wal.segment_bytes,
            max_bytes: settings.wal.max_bytes,
        },
    )?;
    stats
        .wal_quarantined
        .store(recovery.quarantined.len() as u64, Ordering::Relaxed);
    stats
        .wal_torn_bytes
        .store(recovery.torn_bytes, Ordering::Relaxed);
    stats.wal_bytes.store(wal.used_bytes(), Ordering::Relaxed);
    let durable = Durable::new(wal.end());

    let registry_path = data_dir.join("registry.db");
    let consent_registry = ConsentRegistry::open(&registry_path)?;
    let consents = Arc::new(ConsentBook::new(consent_registry.consents()?));
    drop(consent_registry);
    let watcher = ConsentWatcher::start(&registry_path, consents.clone(), CONSENT_POLL)?;
    let zones = Zones::resolve(&config.default_timezone, registry.snapshot().iter())?;
    let profiles = Profiles::compile(&kenko_config::profile::all_profiles(&settings.profiles)?)?;

    let mut threads = Vec::new();
    let mut progress = Vec::new();
    let health = Health::new(stats.clone());
    let registry_guard = FileGuard::open(&registry_path)?;
    // The embedded store, unless a worker writes to InfluxDB alone (`store.embedded`).
    let (store_sink, store_guards) = if settings.store.embedded {
        let prepared = rebuild::prepare(
            &wal,
            &wal_dir,
            "store",
            data_dir,
            &["personal.db", "shared.db"],
            settings.accept_data_loss.then_some(registry_path.as_path()),
        )?;
        let store_at = prepared.start;
        let [store, shared]: [PersonalStore; 2] = match prepared.stores.try_into() {
            Ok(stores) => stores,
            Err(_) => unreachable!("prepare opens one store per name"),
        };
        let store_guards = vec![
            FileGuard::open_noting_damage(
                &data_dir.join("personal.db"),
                &rebuild::damage_note(&wal_dir, "personal.db"),
            )?,
            FileGuard::open_noting_damage(
                &data_dir.join("shared.db"),
                &rebuild::damage_note(&wal_dir, "shared.db"),
            )?,
        ];
        let store_progress = Progress::new("store", store_at);
        progress.push(store_progress.clone());
        let store_sink = Driver::new(
            Cursor::new(
                wal.reader(store_at),
                &wal_dir,
                durable.clone(),
                store_progress,
            ),
            ConsentView::open(&registry_path, consents.clone())?,
            StoreSink {
                store: store.track_windows(),
                shared,
                consents: ConsentView::open(&registry_path, consents.clone())?,
                pseudonyms: Pseudonymizer::open(data_dir)?,
                stats: stats.clone(),
                erasures_seen: u64::MAX,
                guards: store_guards.clone(),
                registry_guard: registry_guard.clone(),
                health: health.clone(),
                last_write: None,
            },
        );
        (Some(store_sink), store_guards)
    } else {
        (None, Vec::new())
    };
    let influx_sink = match &settings.influxdb {
        Some(influx) => {
            let at = wal.clamp(wal::load_checkpoint(&wal_dir, "influxdb")?);
            let influx_progress = Progress::new("influxdb", at);
            progress.push(influx_progress.clone());
            Some(Driver::new(
                Cursor::new(wal.reader(at), &wal_dir, durable.clone(), influx_progress),
                ConsentView::open(&registry_path, consents.clone())?,
                InfluxSink::new(
                    influx,
                    InfluxSink::dead_letters(data_dir)?,
                    ConsentView::open(&registry_path, consents.clone())?,
                    stats.clone(),
                )?
                .with_max_future(
                    i64::try_from(settings.ingest.max_future_s)
                        .unwrap_or(i64::MAX / 2_000)
                        .saturating_mul(1000),
                ),
            ))
        }
        None => None,
    };
    let live = LiveFeed::default();
    let alert_sink = if settings.alerts.is_empty() {
        None
    } else {
        // A new alerts sink starts at the log's end: alerts are about what arrives now.
        let at = wal.clamp(wal::load_checkpoint_or(&wal_dir, "alerts", wal.end())?);
        let alerts_progress = Progress::new("alerts", at);
        progress.push(alerts_progress.clone());
        Some(Driver::new(
            Cursor::new(wal.reader(at), &wal_dir, durable.clone(), alerts_progress),
            ConsentView::open(&registry_path, consents.clone())?,
            AlertSink::new(
                Evaluator::new(settings.alerts.clone()),
                AlertStore::open(&data_dir.join(crate::alerts::FILE))?,
                ConsentView::open(&registry_path, consents.clone())?,
                notices.clone(),
                live.clone(),
                stats.clone(),
            ),
        ))
    };
    let (tx, rx) = flume::bounded(config.queue);
    let window_job = if settings.windows.enabled {
        Some(WindowJob::open(
            &data_dir.join("personal.db"),
            registry.clone(),
            zones.clone(),
            settings.windows.clone(),
            tx.downgrade(),
            stats.clone(),
        )?)
    } else {
        None
    };
    let retention_job = settings
        .store
        .embedded
        .then(|| retention_job(settings, data_dir, tx.downgrade(), &stats))
        .transpose()?;
    let dead = DeadLetterStore::open(&data_dir.join("deadletter.db"))?;
    let mut guards = store_guards;
    guards.push(registry_guard);
    guards.push(FileGuard::open(&data_dir.join("deadletter.db"))?);
    health.watch(&guards);
    let lags = Arc::new(SinkLags::new(
        durable.clone(),
        progress.clone(),
        settings.wal.segment_bytes,
        settings.wal.max_bytes,
    ));
    let writer = Writer {
        intake: Intake::new(rx, config.batch_max, config.queue),
        decoder: Decoder {
            registry: registry.clone(),
            zones,
            profiles,
            limits: TimeLimits::from_config(config),
            plausibility: config.plausibility,
        },
        routing: ConsentRouting {
            registry,
            consents: ConsentView::open(&registry_path, consents.clone())?,
            generation: u64::MAX,
            pseudonyms: Pseudonymizer::open(data_dir)?,
            anonymous_device: Arc::from("-"),
            stats: stats.clone(),
        },
        log: LogStage {
            wal,
            durable: durable.clone(),
            progress,
            record: Vec::new(),
            full_since: None,
            guards,
            health: health.clone(),
            stats: stats.clone(),
        },
        answers: Answers {
            dead,
            notices,
            stats: stats.clone(),
            live_republish: config.live_republish,
            live: live.clone(),
        },
        require_consent: config.require_consent,
        stats: stats.clone(),
        batch_max: config.batch_max,
        linger: Duration::from_millis(config.batch_linger_ms),
        replay_checked: Instant::now() - IDLE_CHECK,
    };
    threads.push(spawn("ingest", move || writer.run())?);
    let stop_sinks = CloseOnDrop(durable.clone());
    if let Some(sink) = store_sink {
        threads.push(spawn("store-sink", move || sink.run())?);
    }
    if let Some(sink) = influx_sink {
        threads.push(spawn("influxdb-sink", move || sink.run())?);
    }
    if let Some(sink) = alert_sink {
        threads.push(spawn("alerts-sink", move || sink.run())?);
    }
    if let Some(job) = window_job {
        threads.push(spawn("windows", move || job.run())?);
    }
    if let Some(job) = retention_job {
        threads.push(spawn("retention", move || job.run())?);
    }
    std::mem::forget(stop_sinks);
    Ok((
        IngestHandle {
            tx,
            stats,
            live,
            consents,
            health,
            lags,
        },
        Pipeline {
            threads,
            watcher,
            recovery,
        },
    ))
}

/// Tells the sinks the writer has stopped when dropped (also if it panics), so they finish
/// what is logged and end instead of waiting forever.
struct CloseOnDrop(Arc<Durable>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The writer thread: its stages, and what it needs to run them batch by batch.
struct Writer {
    intake: Intake,
    decoder: Decoder,
    routing: ConsentRouting,
    log: LogStage,
    answers: Answers,
    /// Keep only what the citizen consented to collect (`ingest.require_consent`).
    require_consent: bool,
    /// Where each device's activity is noted.
    stats: Arc<IngestStats>,
    batch_max: usize,
    /// How long a small batch waits for more (`ingest.batch_linger_ms`).
    linger: Duration,
    /// When `deadletter.db` was last asked for replay requests.
    replay_checked: Instant,
}

/// A batch and the buffers reused from one batch to the next.
#[derive(Default)]
struct Batch {
    submissions: Vec<Submission>,
    observations: Vec<Observation>,
    /// Pseudonymized copies for the shared store.
    shared: Vec<Observation>,
    /// Each submission's observations and shared copies.
    spans: Vec<(Range<usize>, Range<usize>)>,
    verdicts: Vec<Result<(), Rejection>>,
    letters: Vec<DeadLetter>,
}

impl Batch {
    fn clear(&mut self) {
        self.submissions.clear();
        self.observations.clear();
        self.shared.clear();
        self.spans.clear();
        self.verdicts.clear();
        self.letters.clear();
    }
}

impl Writer {
    fn run(mut self) {
        let _close = CloseOnDrop(self.log.durable.clone());
        let mut batch = Batch::default();
        // Waits for messages, releasing log segments now and then; ends when every sender
        // is gone and the queue is empty.
        loop {
            self.log.release_segments();
            self.replay_if_asked();
            match self.intake.next(IDLE_CHECK) {
                Ok(first) => {
                    batch.submissions.push(first);
                    self.intake.fill(&mut batch, self.linger);
                    self.process(&mut batch);
                    batch.clear();
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
        }
        info!("ingest writer stopped: queue drained, log synced");
    }

    /// One batch through the stages: decided, logged and made durable, then answered.
    fn process(&mut self, batch: &mut Batch) {
        // Before anything of the batch is decided: a registry.db lost under the hub would
        // also have taken the devices and consents the batch is judged by.
        self.log.wait_for_sound_stores(&self.intake);
        self.stats.activity.note(&batch.submissions);
        self.decide(batch);
        self.log.log(batch, &mut self.intake);
        self.answers.settle(batch);
    }

    /// Each message's verdict so far, its observations and their shared copies.
    fn decide(&mut self, batch: &mut Batch) {
        let consents = self.routing.refresh();
        let mut named = Vec::new();
        for sub in &batch.submissions {
            let start = batch.observations.len();
            let shared_start = batch.shared.len();
            named.clear();
            let mut verdict = self
                .decoder
                .decode(sub, &mut batch.observations, &mut named);
            if self.require_consent {
                verdict = match verdict {
                    Ok(()) => self.routing.filter_consent(
                        &consents,
                        &mut batch.observations,
                        start,
                        sub.received_ms,
                    ),
                    // A refused message of a citizen who does not let the hub collect is not
                    // kept as a dead letter either: its payload holds their readings.
                    Err(rejection) => Err(self
                        .routing
                        .without_consent(&consents, sub, &named, rejection)),
                };
            }
            if verdict.is_ok() && !named.is_empty() && matches!(sub.origin, Origin::Device) {
                // A gateway's message was heard from each device it carried readings of.
                self.stats.activity.note_relayed(
                    &batch.observations[start..],
                    &sub.device,
                    sub.received_ms,
                );
            }
            if verdict.is_ok() {
                self.routing.share(
                    &consents,
                    &batch.observations[start..],
                    sub.received_ms,
                    &mut batch.shared,
                );
            } else {
                batch.observations.truncate(start);
            }
            batch.spans.push((
                start..batch.observations.len(),
                shared_start..batch.shared.len(),
            ));
            batch.verdicts.push(verdict);
        }
    }
}

/// The refusal of a message the full log has no room for.
fn log_full() -> Rejection {
    Rejection {
        code: RejectCode::LogFull,
        message: "the hub's write-ahead log is full; send this message again later".into(),
    }
}

#[cfg(test)]
fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::{ConsentChange, Purpose, HUB};
    use kenko_devices::registry::demo_devices;

    fn submission(
        device: &str,
        client: &str,
        payload: &str,
        token: u32,
        to: &flume::Sender<Outcome>,
    ) -> Submission {
        Submission {
            client_id: Arc::from(client),
            device: device.into(),
            payload: Bytes::from(payload.to_owned()),
            received_ms: jiff::Timestamp::now().as_millisecond(),
            reply: Some(Reply {
                to: to.clone(),
                token,
                refusable: true,
            }),
            protobuf: false,
            origin: Origin::Device,
        }
    }

    fn collect(citizen: &str, types: &[&str], granted: bool, erase: bool) -> ConsentChange {
        ConsentChange {
            citizen: citizen.into(),
            grantee: HUB.into(),
            purpose: Purpose::Collect,
            data_types: types.iter().map(|t| (*t).to_owned()).collect(),
            valid_from_ms: None,
            valid_until_ms: None,
            source: "test".into(),
            granted,
            erase,
        }
    }

    fn record(dir: &Path, consent: ConsentChange) {
        ConsentRegistry::open(&dir.join("registry.db"))
            .expect("registry")
            .record(consent, now_ms())
            .expect("record");
    }

    #[tokio::test]
    async fn verdicts_follow_storage_and_rejections_are_dead_lettered_and_announced() {
        let dir = tempfile::tempdir().expect("tempdir");
        record(dir.path(), collect("citizen-001", &[], true, false));
        record(dir.path(), collect("citizen-002", &[], true, false));
        let registry = Registry::from_config(&demo_devices(2));
        let (notice_tx, notice_rx) = flume::bounded(16);
        let (handle, pipeline) =
            start(&Settings::default(), registry, dir.path(), Some(notice_tx)).expect("start");
        let (to, verdicts) = flume::unbounded();
        let t = jiff::Timestamp::now().as_millisecond() - 60_000;
        let cases = [
            (
                "bed-001",
                "bed-001",
                format!(r#"{{"ts":{t},"hr":60,"occ":true}}"#),
            ),
            ("bed-009", "bed-009", format!(r#"{{"ts":{t},"hr":60}}"#)),
            ("bed-002", "bed-002", "{oops".to_owned()),
            ("bed-002", "bed-001", format!(r#"{{"ts":{t},"hr":60}}"#)),
        ];
        for (token, (device, client, payload)) in cases.iter().enumerate() {
            handle
                .submit(submission(device, client, payload, token as u32, &to))
                .await
                .expect("submit");
        }
        let mut got = std::collections::BTreeMap::new();
        for _ in 0..cases.len() {
            let outcome = verdicts.recv_async().await.expect("verdict");
            got.insert(outcome.token, outcome.verdict.map_err(|r| r.code));
        }
        assert_eq!(got[&0], Ok(()));
        assert_eq!(got[&1], Err(RejectCode::UnknownDevice));
        assert_eq!(got[&2], Err(RejectCode::MalformedPayload));
        assert_eq!(got[&3], Err(RejectCode::ClientMismatch));
        let notices: Vec<Notice> = notice_rx.drain().collect();
        let topics: Vec<&str> = notices.iter().map(|n| n.topic.as_str()).collect();
        assert!(topics.contains(&"devices/bed-009/errors"), "{topics:?}");
        assert!(topics.contains(&"devices/bed-002/errors"), "{topics:?}");
        assert_eq!(handle.stats().dead_lettered.load(Ordering::Relaxed), 3);
        assert_eq!(
            handle.stats().observations_logged.load(Ordering::Relaxed),
            2,
            "durable in the log when the verdict came"
        );
        let stats = handle.stats().clone();

        drop(handle);
        tokio::task::spawn_blocking(move || pipeline.join())
            .await
            .expect("join");
        let store = PersonalStore::open(&dir.path().join("personal.db")).expect("reopen");
        assert_eq!(
            store.count().expect("count"),
            2,
            "heart rate and occupancy of the one good message"
        );
        assert_eq!(stats.observations_stored.load(Ordering::Relaxed), 2);
        let dead = DeadLetterStore::open(&dir.path().join("deadletter.db")).expect("reopen");
        assert_eq!(dead.count().expect("count"), 3);
    }

    async fn send(
        handle: &IngestHandle,
        device: &str,
        body: String,
        token: u32,
    ) -> Result<(), RejectCode> {
        let (to, verdicts) = flume::unbounded();
        handle
            .submit(submission(device, device, &body, token, &to))
            .await
            .expect("submit");
        verdicts
            .recv_async()
            .await
            .expect("verdict")
            .verdict
            .map_err(|r| r.code)
    }

    #[tokio::test]
    async fn only_consented_data_is_stored_and_erasure_removes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        // citizen-001 consents to heart rate only; citizen-002 to nothing.
        record(
            dir.path(),
            collect("citizen-001", &["heart_rate"], true, false),
        );
        let (handle, pipeline) = start(
            &Settings::default(),
            Registry::from_config(&demo_devices(2)),
            dir.path(),
            None,
        )
        .expect("start");
        let t = now_ms() - 60_000;
        let body = |t: i64| format!(r#"{{"ts":{t},"hr":60,"rr":14,"occ":true}}"#);
        assert_eq!(send(&handle, "bed-001", body(t), 1).await, Ok(()));
        assert_eq!(
            send(&handle, "bed-002", body(t), 2).await,
            Err(RejectCode::NoConsent)
        );
        // A message of a citizen without collect consent is not dead-lettered even when it is
        // malformed or from the future: its readings are kept nowhere.
        let future = format!(r#"{{"ts":{},"hr":61}}"#, t + 24 * 3_600_000);
        assert_eq!(
            send(&handle, "bed-002", future, 9).await,
            Err(RejectCode::NoConsent)
        );
        assert_eq!(
            send(&handle, "bed-001", "{oops".into(), 10).await,
            Err(RejectCode::MalformedPayload)
        );
        let stats = handle.stats();
        assert_eq!(
            stats.observations_logged.load(Ordering::Relaxed),
            1,
            "heart rate only"
        );
        assert_eq!(stats.refused_no_consent.load(Ordering::Relaxed), 2 + 3 + 1);
        assert_eq!(
            stats.dead_lettered.load(Ordering::Relaxed),
            1,
            "only the consenting citizen's malformed message is a dead letter"
        );

        // Withdrawal with erasure, recorded by another connection (as `kenko consent` does):
        // new data is refused and the stored rows go.
        record(dir.path(), collect("citizen-001", &[], false, true));
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.erased.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stats.erased.load(Ordering::Relaxed), 1);
        assert_eq!(
            send(&handle, "bed-001", body(t + 1000), 3).await,
            Err(RejectCode::NoConsent)
        );
        drop(handle);
        tokio::task::spawn_blocking(move || pipeline.join())
            .await
            .expect("join");
        let store = PersonalStore::open(&dir.path().join("personal.db")).expect("reopen");
        assert_eq!(store.count().expect("count"), 0);
        let registry = ConsentRegistry::open(&dir.path().join("registry.db")).expect("registry");
        assert!(registry.pending_erasures().expect("pending").is_empty());
        assert_eq!(
            registry.verify_audit().expect("verifies").entries,
            3,
            "grant, revoke, erasure"
        );
    }
}
