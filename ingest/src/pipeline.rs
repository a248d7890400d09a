//! The ingest pipeline: a queue from the broker's connections to one writer thread that
//! decodes, normalizes and stores messages in batches, then tells each connection the verdict
//! so that it can acknowledge only what is stored.
//!
//! The writer is a plain thread because SQLite calls block; the queue is bounded, so when the
//! store falls behind (or is failing) publishers are pushed back instead of data being dropped.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kenko_config::IngestConfig;
use kenko_devices::Registry;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::consent::{ConsentBook, ConsentRegistry, ConsentWatcher, Consents, Purpose, HUB};
use crate::deadletter::{DeadLetter, DeadLetterStore};
use crate::decode::{self, Context, RejectCode, Rejection, Zones};
use crate::observation::Observation;
use crate::pseudonym::Pseudonymizer;
use crate::store::{PersonalStore, StoreError};

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
    Zone(#[from] decode::UnknownZone),
    #[error("cannot start the ingest writer thread: {0}")]
    Thread(std::io::Error),
    #[error("the ingest pipeline has stopped")]
    Closed,
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
}

/// A connection's return address for verdicts, with a token it chose (e.g. QoS and packet id).
pub struct Reply {
    pub to: mpsc::UnboundedSender<Outcome>,
    pub token: u32,
}

/// The verdict on one submission, sent once it is final (stored or durably dead-lettered).
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
}

/// Counters for progress output and metrics.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub received: AtomicU64,
    pub messages_stored: AtomicU64,
    pub observations_stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub store_errors: AtomicU64,
    pub notices_dropped: AtomicU64,
    /// Observations refused because their citizen has not consented to collection.
    pub refused_no_consent: AtomicU64,
    /// Observations deleted on citizens' requests for erasure.
    pub erased: AtomicU64,
    /// Pseudonymized observations written to the shared (research) store.
    pub shared_stored: AtomicU64,
}

/// The sending side, cloned into every connection.
#[derive(Clone)]
pub struct IngestHandle {
    tx: flume::Sender<Submission>,
    stats: Arc<IngestStats>,
    consents: Arc<ConsentBook>,
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

    /// The consents in force, kept current from `registry.db`.
    pub fn consents(&self) -> &Arc<ConsentBook> {
        &self.consents
    }
}

/// The running writer; join it after every [`IngestHandle`] is dropped.
pub struct Pipeline {
    thread: thread::JoinHandle<()>,
    watcher: ConsentWatcher,
}

impl Pipeline {
    /// Waits until the writer has stored everything queued and closed the stores.
    pub fn join(self) {
        if self.thread.join().is_err() {
            error!("ingest writer thread panicked");
        }
        drop(self.watcher);
    }
}

/// How often the consent registry is checked for new records.
const CONSENT_POLL: Duration = Duration::from_millis(10);
/// How often an idle writer looks for erasures to carry out.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// Opens the stores in `data_dir` and starts the writer.
pub fn start(
    config: &IngestConfig,
    registry: Registry,
    data_dir: &Path,
    notices: Option<flume::Sender<Notice>>,
) -> Result<(IngestHandle, Pipeline), IngestError> {
    std::fs::create_dir_all(data_dir).map_err(|source| IngestError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let store = PersonalStore::open(&data_dir.join("personal.db"))?;
    let dead = DeadLetterStore::open(&data_dir.join("deadletter.db"))?;
    let shared = PersonalStore::open(&data_dir.join("shared.db"))?;
    let pseudonyms = Pseudonymizer::open(data_dir)?;
    let registry_path = data_dir.join("registry.db");
    let consent_registry = ConsentRegistry::open(&registry_path)?;
    let consents = Arc::new(ConsentBook::new(consent_registry.consents()?));
    let watcher = ConsentWatcher::start(&registry_path, consents.clone(), CONSENT_POLL)?;
    let zones = Zones::resolve(&config.default_timezone, registry.iter())?;
    let (tx, rx) = flume::bounded(config.queue);
    let stats = Arc::new(IngestStats::default());
    let writer = Writer {
        rx,
        registry,
        zones,
        store,
        dead,
        notices,
        stats: stats.clone(),
        config: config.clone(),
        consents: consents.clone(),
        consent_registry,
        erasures_seen: u64::MAX,
        shared,
        pseudonyms,
        anonymous_device: Arc::from("-"),
        registry_version: i64::MIN,
    };
    let thread = thread::Builder::new()
        .name("kenko-ingest".into())
        .spawn(move || writer.run())
        .map_err(IngestError::Thread)?;
    Ok((
        IngestHandle {
            tx,
            stats,
            consents,
        },
        Pipeline { thread, watcher },
    ))
}

struct Writer {
    rx: flume::Receiver<Submission>,
    registry: Registry,
    zones: Zones,
    store: PersonalStore,
    dead: DeadLetterStore,
    notices: Option<flume::Sender<Notice>>,
    stats: Arc<IngestStats>,
    config: IngestConfig,
    consents: Arc<ConsentBook>,
    consent_registry: ConsentRegistry,
    /// The consent generation last checked for erasures.
    erasures_seen: u64,
    /// The pseudonymized store for research (`shared.db`): no citizen or device id in it.
    shared: PersonalStore,
    pseudonyms: Pseudonymizer,
    /// What stands for the device in the shared store.
    anonymous_device: Arc<str>,
    /// `registry.db`'s data version when the consents were last read here.
    registry_version: i64,
}

/// A batch and the buffers reused from one batch to the next.
#[derive(Default)]
struct Batch {
    submissions: Vec<Submission>,
    observations: Vec<Observation>,
    /// Pseudonymized copies for the shared store.
    shared: Vec<Observation>,
    verdicts: Vec<Result<(), Rejection>>,
    letters: Vec<DeadLetter>,
}

impl Batch {
    fn clear(&mut self) {
        self.submissions.clear();
        self.observations.clear();
        self.shared.clear();
        self.verdicts.clear();
        self.letters.clear();
    }
}

impl Writer {
    fn run(mut self) {
        let mut batch = Batch::default();
        let linger = Duration::from_millis(self.config.batch_linger_ms);
        // Waits for messages, looking for erasures now and then; ends when every sender is
        // gone and the queue is empty.
        loop {
            self.erase_if_asked();
            match self.rx.recv_timeout(IDLE_CHECK) {
                Ok(first) => {
                    batch.submissions.push(first);
                    self.fill(&mut batch, linger);
                    self.process(&mut batch);
                    batch.clear();
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
        }
        info!("ingest writer stopped: queue drained, stores closed");
    }

    /// Takes what is already queued, and waits up to `linger` for more while the batch is small.
    fn fill(&self, batch: &mut Batch, linger: Duration) {
        let deadline = Instant::now() + linger;
        while batch.submissions.len() < self.config.batch_max {
            match self.rx.try_recv() {
                Ok(s) => batch.submissions.push(s),
                Err(flume::TryRecvError::Disconnected) => return,
                Err(flume::TryRecvError::Empty) => match self.rx.recv_deadline(deadline) {
                    Ok(s) => batch.submissions.push(s),
                    Err(_) => return,
                },
            }
        }
    }

    /// Carries out requested erasures when the consent records have changed: the writer owns
    /// the personal store, so no batch can write the citizen's rows back meanwhile.
    fn erase_if_asked(&mut self) {
        let generation = self.consents.generation();
        if generation == self.erasures_seen {
            return;
        }
        let pending = match self.consent_registry.pending_erasures() {
            Ok(p) => p,
            Err(e) => {
                error!(error = %e, "cannot read pending erasures; will retry");
                return;
            }
        };
        for request in pending {
            let now = now_ms();
            let erased = self
                .store
                .erase_citizen(&request.change.citizen)
                .and_then(|rows| {
                    self.pseudonyms
                        .forget(&request.change.citizen)
                        .map(|()| rows)
                });
            match erased {
                Ok(rows) => {
                    self.stats.erased.fetch_add(rows as u64, Ordering::Relaxed);
                    info!(citizen = %request.change.citizen, rows, "erased a citizen's observations on request");
                    if let Err(e) = self.consent_registry.erasure_done(&request, rows, now) {
                        error!(error = %e, "erasure done but not recorded; it will run again");
                        return;
                    }
                }
                Err(e) => {
                    error!(error = %e, citizen = %request.change.citizen, "erasure failed; will retry");
                    return;
                }
            }
        }
        self.erasures_seen = generation;
    }

    /// `rejection`, or a no-consent refusal if the device's citizen lets the hub collect
    /// nothing (or asked for erasure since): then nothing of the message is kept.
    fn without_consent(
        &self,
        consents: &Consents,
        sub: &Submission,
        rejection: Rejection,
    ) -> Rejection {
        let Some(device) = self.registry.get(&sub.device) else {
            return rejection; // unknown device: no citizen to ask
        };
        let citizen = &*device.citizen;
        if consents.allows_any(citizen, HUB, Purpose::Collect, sub.received_ms)
            && !consents.erased_after(citizen, sub.received_ms)
        {
            return rejection;
        }
        self.stats
            .refused_no_consent
            .fetch_add(1, Ordering::Relaxed);
        no_consent()
    }

    /// Pseudonymized copies of the observations whose citizen consented to research.
    fn share(
        &mut self,
        consents: &Consents,
        observations: &[Observation],
        received_ms: i64,
        out: &mut Vec<Observation>,
    ) {
        for o in observations {
            if !consents.allows(
                &o.citizen,
                HUB,
                Purpose::Research,
                o.metric.name(),
                received_ms,
            ) {
                continue;
            }
            match self.pseudonyms.pseudonym(&o.citizen) {
                Ok(pseudonym) => out.push(Observation {
                    citizen: pseudonym,
                    device: self.anonymous_device.clone(),
                    ..o.clone()
                }),
                Err(e) => {
                    // The identified observation is stored; only its research copy is missing.
                    self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, "cannot make a pseudonym; research copy not written");
                }
            }
        }
    }

    /// Keeps the observations from `start` on that their citizen lets the hub collect;
    /// counts the rest. `Err` if nothing of the message may be kept.
    fn filter_consent(
        &self,
        consents: &Consents,
        out: &mut Vec<Observation>,
        start: usize,
        received_ms: i64,
    ) -> Result<(), Rejection> {
        let before = out.len() - start;
        let mut kept = start;
        for i in start..out.len() {
            let o = &out[i];
            let collect = consents.allows(
                &o.citizen,
                HUB,
                Purpose::Collect,
                o.metric.name(),
                received_ms,
            );
            if collect && !consents.erased_after(&o.citizen, received_ms) {
                out.swap(kept, i);
                kept += 1;
            }
        }
        out.truncate(kept);
        let refused = before - (kept - start);
        if refused > 0 {
            self.stats
                .refused_no_consent
                .fetch_add(refused as u64, Ordering::Relaxed);
        }
        if refused > 0 && kept == start {
            return Err(no_consent());
        }
        Ok(())
    }

    /// Reads the consent records again if another connection has committed since: a batch
    /// is decided with every withdrawal committed before it started.
    fn refresh_consents(&mut self) {
        let version = match self.consent_registry.data_version() {
            Ok(v) => v,
            Err(e) => {
                error!(error = %e, "cannot check the consent registry; deciding with the records in force");
                return;
            }
        };
        if version == self.registry_version {
            return;
        }
        match self.consent_registry.consents() {
            Ok(consents) => {
                self.consents.replace(consents);
                self.registry_version = version;
            }
            Err(e) => {
                error!(error = %e, "cannot reload consent records; deciding with the records in force")
            }
        }
    }

    fn process(&mut self, batch: &mut Batch) {
        self.refresh_consents();
        // One snapshot decides the whole batch.
        let consents = self.consents.current();
        for sub in &batch.submissions {
            let start = batch.observations.len();
            let mut verdict = self.decode(sub, &mut batch.observations);
            if self.config.require_consent {
                verdict = match verdict {
                    Ok(()) => self.filter_consent(
                        &consents,
                        &mut batch.observations,
                        start,
                        sub.received_ms,
                    ),
                    // A refused message of a citizen who does not let the hub collect is not
                    // kept as a dead letter either: its payload holds their readings.
                    Err(rejection) => Err(self.without_consent(&consents, sub, rejection)),
                };
            }
            if verdict.is_ok() {
                self.share(
                    &consents,
                    &batch.observations[start..],
                    sub.received_ms,
                    &mut batch.shared,
                );
            }
            if let Err(rejection) = &verdict {
                if rejection.code == RejectCode::NoConsent {
                    // Answered, and counted in `refused_no_consent`, but its payload is kept
                    // nowhere; one line per message would flood the log
                    // while a citizen's device keeps sending after a withdrawal.
                    debug!(device = %sub.device, "message refused: no collection consent");
                    batch.verdicts.push(verdict);
                    continue;
                }
                batch.letters.push(DeadLetter {
                    received_ms: sub.received_ms,
                    client_id: sub.client_id.to_string(),
                    topic: format!("devices/{}/telemetry", sub.device),
                    device: Some(sub.device.to_string()),
                    reason_code: rejection.code.as_str().to_owned(),
                    reason: rejection.message.clone(),
                    payload: sub.payload.to_vec(),
                });
            }
            batch.verdicts.push(verdict);
        }
        self.commit(batch);

        let stored = batch.verdicts.iter().filter(|v| v.is_ok()).count() as u64;
        self.stats
            .messages_stored
            .fetch_add(stored, Ordering::Relaxed);
        self.stats
            .dead_lettered
            .fetch_add(batch.letters.len() as u64, Ordering::Relaxed);
        for (sub, verdict) in batch.submissions.drain(..).zip(batch.verdicts.drain(..)) {
            if let Err(rejection) = &verdict {
                self.notify_error(&sub, rejection);
            }
            if let Some(reply) = sub.reply {
                // A closed connection no longer needs its verdict; the device resends.
                let _ = reply.to.send(Outcome {
                    token: reply.token,
                    verdict,
                });
            }
        }
        if self.config.live_republish {
            self.republish(&batch.observations);
        }
    }

    fn decode(&self, sub: &Submission, out: &mut Vec<Observation>) -> Result<(), Rejection> {
        let Some(device) = self.registry.get(&sub.device) else {
            return Err(Rejection {
                code: RejectCode::UnknownDevice,
                message: format!(
                    "device {} is not registered; add it to the [[devices]] of the hub's config",
                    sub.device
                ),
            });
        };
        if *sub.client_id != *sub.device {
            return Err(Rejection {
                code: RejectCode::ClientMismatch,
                message: format!(
                    "client {} may publish only on devices/{}/telemetry; connect with client id {}",
                    sub.client_id, sub.client_id, sub.device
                ),
            });
        }
        let ctx = Context {
            device,
            zones: &self.zones,
            received_ms: sub.received_ms,
            plausibility: self.config.plausibility,
        };
        decode::decode(&ctx, &sub.payload, out)
    }

    /// Writes the batch; while the store fails, retries with backoff so that nothing is
    /// acknowledged before it is stored (the bounded queue pushes back on publishers).
    fn commit(&mut self, batch: &Batch) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let result = self
                .store
                .write_batch(&batch.observations)
                .and_then(|stats| {
                    // Identified and pseudonymized data go to separate files, each in its
                    // own transaction; a retry after a failure here stores nothing twice.
                    let shared = self.shared.write_batch(&batch.shared)?;
                    self.stats
                        .shared_stored
                        .fetch_add(shared.inserted as u64, Ordering::Relaxed);
                    if !batch.letters.is_empty() {
                        self.dead.record(&batch.letters)?;
                    }
                    Ok(stats)
                });
            match result {
                Ok(stats) => {
                    self.stats
                        .observations_stored
                        .fetch_add(stats.inserted as u64, Ordering::Relaxed);
                    self.stats
                        .duplicates
                        .fetch_add(stats.duplicates as u64, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, messages = batch.submissions.len(), retry_in_ms = backoff.as_millis() as u64,
                        "cannot store batch; holding acknowledgements and retrying");
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn publish(&self, topic: String, payload: Vec<u8>) {
        let Some(notices) = &self.notices else { return };
        let notice = Notice {
            topic,
            payload: Bytes::from(payload),
        };
        if notices.try_send(notice).is_err() {
            // The data itself is stored or dead-lettered; only the live copy is lost.
            let dropped = self.stats.notices_dropped.fetch_add(1, Ordering::Relaxed);
            if dropped % 1000 == 0 {
                warn!(
                    dropped = dropped + 1,
                    "hub publish queue full; live notices dropped"
                );
            }
        }
    }

    fn notify_error(&self, sub: &Submission, rejection: &Rejection) {
        let body = serde_json::json!({
            "time": format_ms(sub.received_ms),
            "topic": format!("devices/{}/telemetry", sub.device),
            "code": rejection.code.as_str(),
            "reason": rejection.message,
        });
        self.publish(
            format!("devices/{}/errors", sub.device),
            body.to_string().into_bytes(),
        );
    }

    fn republish(&self, observations: &[Observation]) {
        for obs in observations {
            let body = serde_json::json!({
                "time": format_ms(obs.time_ms),
                "device": &*obs.device,
                "metric": obs.metric.name(),
                "value": obs.value,
                "unit": obs.metric.unit(),
                "flags": obs.flags,
            });
            self.publish(
                format!(
                    "citizens/{}/observations/{}",
                    obs.citizen,
                    obs.metric.name()
                ),
                body.to_string().into_bytes(),
            );
        }
    }
}

fn no_consent() -> Rejection {
    Rejection {
        code: RejectCode::NoConsent,
        message: "the citizen has not consented to the collection of this data; nothing was stored"
            .into(),
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn format_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::ConsentChange;
    use kenko_devices::registry::demo_devices;

    fn submission(
        device: &str,
        client: &str,
        payload: &str,
        token: u32,
        to: &mpsc::UnboundedSender<Outcome>,
    ) -> Submission {
        Submission {
            client_id: Arc::from(client),
            device: device.into(),
            payload: Bytes::from(payload.to_owned()),
            received_ms: jiff::Timestamp::now().as_millisecond(),
            reply: Some(Reply {
                to: to.clone(),
                token,
            }),
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
        let (handle, pipeline) = start(
            &IngestConfig::default(),
            registry,
            dir.path(),
            Some(notice_tx),
        )
        .expect("start");
        let (to, mut verdicts) = mpsc::unbounded_channel();
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
            let outcome = verdicts.recv().await.expect("verdict");
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
            handle.stats().observations_stored.load(Ordering::Relaxed),
            2
        );

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
        let dead = DeadLetterStore::open(&dir.path().join("deadletter.db")).expect("reopen");
        assert_eq!(dead.count().expect("count"), 3);
    }

    async fn send(
        handle: &IngestHandle,
        device: &str,
        body: String,
        token: u32,
    ) -> Result<(), RejectCode> {
        let (to, mut verdicts) = mpsc::unbounded_channel();
        handle
            .submit(submission(device, device, &body, token, &to))
            .await
            .expect("submit");
        verdicts
            .recv()
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
            &IngestConfig::default(),
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
            stats.observations_stored.load(Ordering::Relaxed),
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
