//! A worker's connection to the external broker: a persistent session (clean session off,
//! a stable client id) subscribed to `$share/{group}/{filter}`, with manual
//! acknowledgements. Each QoS 1 message is submitted to the pipeline and acknowledged when
//! its verdict is final (in the write-ahead log, or dead-lettered); a message the broker
//! sends again while the first copy is still in the pipeline is answered by that copy's
//! verdict, not submitted twice.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kenko_config::source::SourceConfig;
use kenko_ingest::backoff::Backoff;
use kenko_ingest::pipeline::{IngestHandle, Origin, Outcome, Reply, Submission};
use rumqttc::{
    AsyncClient, ConnAck, ConnectionError, Event, EventLoop, MqttOptions, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// The system's CA bundle (Debian's ca-certificates), trusted for `mqtts://` without
/// `source.ca`.
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Requests (acknowledgements, subscriptions) queued for the connection at most.
const REQUESTS: usize = 1024;
/// The largest message taken from the broker, as the embedded broker's default.
const MAX_PACKET: usize = 256 * 1024;
/// How long a stopping worker waits for the verdicts of what it took; what is still
/// unacknowledged then is sent again by the broker after the restart (and stored once).
const DRAIN: Duration = Duration::from_secs(10);
/// How often a stopping worker looks whether every verdict is answered.
const DRAIN_CHECK: Duration = Duration::from_millis(50);

/// What a worker took from the broker, for its last words.
#[derive(Debug, Default)]
pub struct Taken {
    /// Messages submitted to the pipeline.
    pub taken: u64,
    /// Messages acknowledged to the broker.
    pub acknowledged: u64,
    /// Messages the broker sent again (its DUP flag: not acknowledged before, by this
    /// process or by one killed before it).
    pub resent: u64,
    /// Messages of devices of other partitions, acknowledged and left to their workers.
    pub others: u64,
}

#[derive(Default)]
struct Counters {
    taken: AtomicU64,
    acknowledged: AtomicU64,
    resent: AtomicU64,
    others: AtomicU64,
}

/// The messages taken and not yet acknowledged, by the token their verdict carries, and
/// their packet ids (a copy the broker sends again has the same id).
#[derive(Default)]
struct Pending {
    by_token: HashMap<u32, Publish>,
    packet_ids: HashSet<u16>,
}

type Shared = Arc<Mutex<Pending>>;

fn lock(pending: &Shared) -> MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the worker connects and what it subscribes to.
pub struct Connection {
    options: MqttOptions,
    client_id: String,
    filters: Vec<String>,
    url: String,
    source: SourceConfig,
}

impl Connection {
    /// Checks `source` (URL, client id, password, CA file) before anything is opened.
    pub fn new(source: &SourceConfig) -> anyhow::Result<Connection> {
        let endpoint = source.endpoint().map_err(anyhow::Error::msg)?;
        let client_id = source.client_id.clone().unwrap_or_else(default_client_id);
        kenko_config::check_client_id(&client_id)
            .map_err(|why| anyhow::anyhow!("source.client_id {why}"))?;
        let mut options = MqttOptions::new(&client_id, endpoint.host, endpoint.port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(source.keep_alive_s.max(5)))
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_request_channel_capacity(REQUESTS);
        let password = source.password().map_err(anyhow::Error::msg)?;
        match (&source.username, password) {
            (Some(user), password) => {
                options.set_credentials(user, password.unwrap_or_default());
            }
            (None, Some(_)) => anyhow::bail!("source: a password without source.username"),
            (None, None) => {}
        }
        if endpoint.tls {
            let ca = source
                .ca
                .clone()
                .unwrap_or_else(|| PathBuf::from(SYSTEM_CA));
            let tls = kenko_broker::tls::client_config(&ca)
                .with_context(|| format!("cannot set up TLS to {}", source.url))?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        }
        Ok(Connection {
            options,
            client_id,
            filters: source
                .topics
                .iter()
                .map(|t| format!("$share/{}/{t}", source.share_group()))
                .collect(),
            url: source.url.clone(),
            source: source.clone(),
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Takes messages into `ingest` until `shutdown`, then acknowledges what its verdicts
    /// allow (for a while) and disconnects.
    pub async fn run(
        self,
        ingest: IngestHandle,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Taken> {
        let (client, events) = AsyncClient::new(self.options, REQUESTS);
        let (outcomes_tx, outcomes) = flume::unbounded();
        let pending = Shared::default();
        let counters = Arc::new(Counters::default());
        let acker = tokio::spawn(acknowledge(
            client.clone(),
            pending.clone(),
            outcomes,
            counters.clone(),
        ));
        let mut taker = Taker {
            client,
            events,
            filters: self.filters,
            url: self.url,
            source: self.source,
            ingest: Some(ingest),
            outcomes: Some(outcomes_tx),
            pending,
            counters: counters.clone(),
            next_token: 0,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
                .with_jitter(),
        };
        let taken = taker.take_until(&shutdown).await;
        taker.finish().await;
        drop(taker);
        if acker.await.is_err() {
            error!("the acknowledging task failed");
        }
        taken?;
        Ok(Taken {
            taken: counters.taken.load(Ordering::Relaxed),
            acknowledged: counters.acknowledged.load(Ordering::Relaxed),
            resent: counters.resent.load(Ordering::Relaxed),
            others: counters.others.load(Ordering::Relaxed),
        })
    }
}

/// `kenko-worker-` and the host name.
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("kenko-worker-{host}")
}

/// Acknowledges each message whose verdict is final (stored, or dead-lettered with its
/// reason: either way the hub has it), until the pipeline has answered everything.
async fn acknowledge(
    client: AsyncClient,
    pending: Shared,
    outcomes: flume::Receiver<Outcome>,
    counters: Arc<Counters>,
) {
    while let Ok(outcome) = outcomes.recv_async().await {
        let publish = {
            let mut pending = lock(&pending);
            let publish = pending.by_token.remove(&outcome.token);
            if let Some(p) = &publish {
                pending.packet_ids.remove(&p.pkid);
            }
            publish
        };
        // None: taken on a connection whose session the broker has since lost.
        let Some(publish) = publish else { continue };
        if let Err(rejection) = &outcome.verdict {
            debug!(topic = %publish.topic, reason = rejection.code.as_str(), "message refused (dead-lettered or counted); acknowledged");
        }
        if client.ack(&publish).await.is_err() {
            return;
        }
        counters.acknowledged.fetch_add(1, Ordering::Relaxed);
    }
}

/// What taking a message holds until its acknowledgement.
enum Hold {
    Token(u32),
    /// The broker sent it again while the first copy is held.
    Copy,
    /// QoS 0: never acknowledged.
    AtMostOnce,
}

/// The receiving side: the event loop, which also sends what the acknowledging task asks.
struct Taker {
    client: AsyncClient,
    events: EventLoop,
    filters: Vec<String>,
    url: String,
    /// Which devices are this worker's.
    source: SourceConfig,
    /// `None` once stopping: the pipeline drains.
    ingest: Option<IngestHandle>,
    outcomes: Option<flume::Sender<Outcome>>,
    pending: Shared,
    counters: Arc<Counters>,
    next_token: u32,
    backoff: Backoff,
}

impl Taker {
    /// Runs the event loop until `shutdown`; an error only for what retrying cannot mend
    /// (the broker refusing the subscription, the pipeline gone).
    async fn take_until(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                event = self.events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => self.connected(&ack)?,
                Ok(Event::Incoming(Packet::SubAck(ack))) => self.subscribed(&ack.return_codes)?,
                Ok(Event::Incoming(Packet::Publish(publish))) => self.take(publish).await?,
                Ok(_) => {}
                Err(e) => {
                    self.disconnected(&e);
                    let wait = self.backoff.take_wait();
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    fn connected(&mut self, ack: &ConnAck) -> anyhow::Result<()> {
        match self.backoff.succeeded() {
            Some(after) => {
                info!(url = %self.url, after_ms = after.as_millis() as u64, session_present = ack.session_present, "connected to the broker again")
            }
            None => {
                info!(url = %self.url, session_present = ack.session_present, "connected to the broker")
            }
        }
        if !ack.session_present {
            // The broker kept nothing of an earlier session: it sends nothing again, and a
            // packet id of an earlier connection may name a new message.
            let mut pending = lock(&self.pending);
            pending.by_token.clear();
            pending.packet_ids.clear();
        }
        // Queued from a task of its own: this task must keep polling, or a request queue
        // full of acknowledgements would never drain.
        let filters: Vec<SubscribeFilter> = self
            .filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
            .collect();
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.subscribe_many(filters).await {
                warn!(error = %e, "cannot subscribe: the connection's request queue closed");
            }
        });
        Ok(())
    }

    fn subscribed(&self, codes: &[SubscribeReasonCode]) -> anyhow::Result<()> {
        if let Some(i) = codes
            .iter()
            .position(|c| matches!(c, SubscribeReasonCode::Failure))
        {
            let filter = self.filters.get(i).map_or("?", String::as_str);
            anyhow::bail!(
                "the broker at {} refused the subscription to {filter}: let this worker's principal subscribe to it (shared subscriptions must be on)",
                self.url
            );
        }
        println!("kenko worker: subscribed to {}", self.filters.join(", "));
        Ok(())
    }

    fn disconnected(&mut self, e: &ConnectionError) {
        let wait_ms = self.backoff.next_wait().as_millis() as u64;
        if self.backoff.failed() {
            warn!(url = %self.url, error = %e, retry_in_ms = wait_ms, "lost the broker; reconnecting (unacknowledged messages are sent again)");
        } else {
            debug!(url = %self.url, error = %e, retry_in_ms = wait_ms, "cannot reach the broker yet");
        }
    }

    /// Submits a message to the pipeline, unless it is a copy of one already there.
    async fn take(&mut self, publish: Publish) -> anyhow::Result<()> {
        let (Some(ingest), Some(outcomes)) = (self.ingest.clone(), self.outcomes.clone()) else {
            return Ok(());
        };
        if publish.dup {
            self.counters.resent.fetch_add(1, Ordering::Relaxed);
        }
        let owned = kenko_broker::telemetry_device(&publish.topic)
            .filter(|device| self.source.owns(device))
            .map(str::to_owned);
        let Some(device) = owned else {
            return self.pass_over(&publish, &outcomes);
        };
        let token = match self.hold(&publish) {
            Hold::Copy => return Ok(()),
            Hold::Token(token) => Some(token),
            Hold::AtMostOnce => None,
        };
        let reply = token.map(|token| Reply {
            to: outcomes,
            token,
            // Waits for room in a full log rather than refuse: the broker keeps the message
            // until it is acknowledged.
            refusable: false,
        });
        let device: Arc<str> = Arc::from(device);
        let topic = publish.topic.clone();
        let submission = Submission {
            // The external broker decided who may publish there (its ACL, or kenko's MQTT
            // hooks); the worker sees only the topic.
            client_id: device.clone(),
            device: device.as_ref().into(),
            payload: publish.payload,
            received_ms: jiff::Timestamp::now().as_millisecond(),
            reply,
            protobuf: topic.ends_with("/pb"),
            origin: Origin::Device,
        };
        ingest
            .submit(submission)
            .await
            .context("the ingest pipeline stopped")?;
        self.counters.taken.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Notes a message as taken and not yet acknowledged: the token its verdict will
    /// carry, or that it is a copy of one already held (or needs no acknowledgement).
    fn hold(&mut self, publish: &Publish) -> Hold {
        if publish.qos == QoS::AtMostOnce {
            return Hold::AtMostOnce;
        }
        let mut pending = lock(&self.pending);
        if !pending.packet_ids.insert(publish.pkid) {
            // A copy of a message still held: its verdict answers both.
            return Hold::Copy;
        }
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        pending.by_token.insert(token, publish.clone());
        Hold::Token(token)
    }

    /// Acknowledges a message that is not this worker's (a device of another partition,
    /// or not a telemetry topic) through the acknowledging task, in turn with the rest:
    /// this task never waits for room in the request queue.
    fn pass_over(
        &mut self,
        publish: &Publish,
        outcomes: &flume::Sender<Outcome>,
    ) -> anyhow::Result<()> {
        match kenko_broker::telemetry_device(&publish.topic) {
            // Every partition's group gets every message; another worker takes this one.
            Some(_) => self.counters.others.fetch_add(1, Ordering::Relaxed),
            None => {
                warn!(topic = %publish.topic, "not a devices/{{id}}/telemetry topic; acknowledged and left alone (check source.topics)");
                0
            }
        };
        if let Hold::Token(token) = self.hold(publish) {
            outcomes
                .send(Outcome {
                    token,
                    verdict: Ok(()),
                })
                .context("the acknowledging task stopped")?;
        }
        Ok(())
    }

    /// Stops taking messages, lets the pipeline drain, sends the acknowledgements its
    /// verdicts allow (for at most [`DRAIN`]) and disconnects.
    async fn finish(&mut self) {
        self.ingest = None;
        self.outcomes = None;
        let deadline = Instant::now() + DRAIN;
        while !lock(&self.pending).by_token.is_empty() && Instant::now() < deadline {
            // A timeout only means nothing happened; a lost connection ends the wait.
            if let Ok(Err(_)) = tokio::time::timeout(DRAIN_CHECK, self.events.poll()).await {
                break;
            }
        }
        let left = lock(&self.pending).by_token.len();
        if left > 0 {
            warn!(
                left,
                "stopping with messages not yet acknowledged; the broker sends them again"
            );
        }
        if self.client.disconnect().await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Ok(event) = self.events.poll().await {
                    if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}
