//! A worker's connection to the external broker: a persistent session (clean session off,
//! a stable client id) subscribed to `$share/{group}/{filter}`, with manual
//! acknowledgements. Each QoS 1 message is submitted to the pipeline and acknowledged when
//! its verdict is final (in the write-ahead log, or dead-lettered); a message the broker
//! sends again while the first copy is still in the pipeline is answered by that copy's
//! verdict, not submitted twice.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use kenko_config::source::SourceConfig;
use kenko_ingest::backoff::Backoff;
use kenko_ingest::decode::{RejectCode, Rejection};
use kenko_ingest::pipeline::{IngestHandle, Notice, Origin, Outcome, Reply, Submission};
use kenko_ingest::stats::IngestStats;
use rumqttc::mqttbytes::Error as MqttError;
use rumqttc::{
    AsyncClient, ConnAck, ConnectionError, Event, EventLoop, MqttOptions, Packet, Publish, QoS,
    StateError, SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// The system's CA bundle (Debian's ca-certificates), trusted for `mqtts://` without
/// `source.ca`.
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Requests (acknowledgements, subscriptions) queued for the connection at most.
const REQUESTS: usize = 1024;
/// The largest packet taken from the broker. rumqttc drops the connection on a larger
/// one, and the broker sends it again first on every reconnect: set the broker's limit
/// below this (Mosquitto `message_size_limit`, EMQX `max_packet_size`). The pipeline
/// refuses payloads it cannot use with their reasons, whatever their size.
const MAX_INCOMING: usize = 16 * 1024 * 1024;
/// The largest packet the worker sends (acknowledgements, subscriptions).
const MAX_OUTGOING: usize = 64 * 1024;
/// How long a stopping worker waits for the verdicts of what it took; what is still
/// unacknowledged then is sent again by the broker after the restart (and stored once).
const DRAIN: Duration = Duration::from_secs(10);

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
/// the token held under each packet id (a copy the broker sends again has the same id).
#[derive(Default)]
struct Pending {
    by_token: HashMap<u32, Publish>,
    by_packet: HashMap<u16, u32>,
}

impl Pending {
    /// Holds `publish` under `token` until its verdict; or says that it is a copy of one
    /// held (the broker sent it again: the held one's verdict answers both), or needs no
    /// acknowledgement (QoS 0).
    fn hold(&mut self, publish: &Publish, token: u32) -> Hold {
        if publish.qos == QoS::AtMostOnce {
            return Hold::AtMostOnce;
        }
        if let Some(&held) = self.by_packet.get(&publish.pkid) {
            let copy = publish.dup
                && self
                    .by_token
                    .get(&held)
                    .is_some_and(|h| h.topic == publish.topic && h.payload == publish.payload);
            if copy {
                return Hold::Copy;
            }
            // The broker gives a held id to another message (it dropped the held one, or
            // another client took this session over): the held one's verdict must not
            // acknowledge the new one, and the broker no longer waits for it.
            warn!(
                packet_id = publish.pkid,
                "the broker reused a packet id this worker still held; the held message is left unacknowledged (is another worker using this client id?)"
            );
            self.by_token.remove(&held);
        }
        self.by_token.insert(token, publish.clone());
        self.by_packet.insert(publish.pkid, token);
        Hold::Token(token)
    }

    /// The message of `token`, no longer held.
    fn release(&mut self, token: u32) -> Option<Publish> {
        let publish = self.by_token.remove(&token)?;
        if self.by_packet.get(&publish.pkid) == Some(&token) {
            self.by_packet.remove(&publish.pkid);
        }
        Some(publish)
    }
}

/// Whether a final verdict lets the message be acknowledged: stored, or dead-lettered or
/// counted with its reason. A message the log had no room for (a stopping worker's, or
/// one the disk refused) is not anywhere: the broker must send it again.
fn acknowledges(verdict: &Result<(), Rejection>) -> bool {
    !matches!(verdict, Err(r) if r.code == RejectCode::LogFull)
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
            .set_max_packet_size(MAX_INCOMING, MAX_OUTGOING)
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
        notices: flume::Receiver<Notice>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Taken> {
        let (client, events) = AsyncClient::new(self.options, REQUESTS);
        tokio::spawn(publish_notices(
            client.clone(),
            notices,
            ingest.stats().clone(),
        ));
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
        taker.finish(acker).await;
        drop(taker);
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

/// Publishes what the pipeline has to say (device errors, live observations) on the
/// external broker, at QoS 0 as the embedded broker does, until the pipeline stops. Never
/// waits for room in the request queue (acknowledgements come first): a notice that finds
/// it full, or that is too large to send, is dropped and counted, as the pipeline drops
/// what its own queue cannot hold.
async fn publish_notices(
    client: AsyncClient,
    notices: flume::Receiver<Notice>,
    stats: Arc<IngestStats>,
) {
    while let Ok(notice) = notices.recv_async().await {
        // Topic, payload and a packet header.
        let size = notice.topic.len() + notice.payload.len() + 16;
        let sent = size <= MAX_OUTGOING
            && client
                .try_publish(notice.topic, QoS::AtMostOnce, false, notice.payload)
                .is_ok();
        if !sent {
            let n = stats.notices_dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                warn!(
                    dropped = n + 1,
                    "notices for the broker dropped (request queue full, or too large)"
                );
            }
        }
    }
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
        let publish = lock(&pending).release(outcome.token);
        // None: taken on a connection whose session the broker has since lost.
        let Some(publish) = publish else { continue };
        if !acknowledges(&outcome.verdict) {
            debug!(topic = %publish.topic, "not logged (no room in the log); left for the broker to send again");
            continue;
        }
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
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    self.take(publish, shutdown).await?;
                }
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
            pending.by_packet.clear();
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
        for (i, code) in codes.iter().enumerate() {
            let filter = self.filters.get(i).map_or("?", String::as_str);
            match code {
                SubscribeReasonCode::Success(QoS::AtLeastOnce | QoS::ExactlyOnce) => {}
                SubscribeReasonCode::Success(QoS::AtMostOnce) => anyhow::bail!(
                    "the broker at {} granted the subscription to {filter} at QoS 0 only: its messages would be neither acknowledged nor kept while the worker is away; allow QoS 1 (Mosquitto max_qos, EMQX max_qos_allowed)",
                    self.url
                ),
                SubscribeReasonCode::Failure => anyhow::bail!(
                    "the broker at {} refused the subscription to {filter}: let this worker's principal subscribe to it (shared subscriptions must be on)",
                    self.url
                ),
            }
        }
        println!("kenko worker: subscribed to {}", self.filters.join(", "));
        Ok(())
    }

    fn disconnected(&mut self, e: &ConnectionError) {
        // Packets read with the error belong to the connection that ended: the broker
        // sends again what was not acknowledged, under the next session's terms.
        self.events.state.events.clear();
        let wait_ms = self.backoff.next_wait().as_millis() as u64;
        if let ConnectionError::MqttState(StateError::Deserialization(
            MqttError::PayloadSizeLimitExceeded(size),
        )) = e
        {
            error!(url = %self.url, size, limit = MAX_INCOMING, "the broker sent a message larger than a worker takes, and will send it again on every reconnect: lower the broker's message size limit (Mosquitto message_size_limit, EMQX max_packet_size) below the worker's, and clear the message from this worker's session");
            return;
        }
        if self.backoff.failed() {
            warn!(url = %self.url, error = %e, retry_in_ms = wait_ms, "lost the broker; reconnecting (unacknowledged messages are sent again)");
        } else {
            debug!(url = %self.url, error = %e, retry_in_ms = wait_ms, "cannot reach the broker yet");
        }
    }

    /// Submits a message to the pipeline, unless it is a copy of one already there.
    async fn take(&mut self, publish: Publish, shutdown: &CancellationToken) -> anyhow::Result<()> {
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
        // A full queue holds this up; stopping does not wait for it: the message is not
        // acknowledged, and the broker sends it again.
        tokio::select! {
            submitted = ingest.submit(submission) => {
                if submitted.is_err() {
                    if let Some(token) = token {
                        lock(&self.pending).release(token);
                    }
                    anyhow::bail!("the ingest pipeline stopped");
                }
            }
            _ = shutdown.cancelled() => {
                if let Some(token) = token {
                    lock(&self.pending).release(token);
                }
                return Ok(());
            }
        }
        self.counters.taken.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Notes a message as taken and not yet acknowledged (see [`Pending::hold`]).
    fn hold(&mut self, publish: &Publish) -> Hold {
        let token = self.next_token;
        let held = lock(&self.pending).hold(publish, token);
        if matches!(held, Hold::Token(_)) {
            self.next_token = self.next_token.wrapping_add(1);
        }
        held
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
    async fn finish(&mut self, mut acker: tokio::task::JoinHandle<()>) {
        self.ingest = None;
        self.outcomes = None;
        let deadline = tokio::time::Instant::now() + DRAIN;
        // Until the acknowledging task has queued every acknowledgement the verdicts allow
        // (it ends when the pipeline has answered everything), keeping the connection up.
        let done = loop {
            tokio::select! {
                joined = &mut acker => break joined.is_ok(),
                event = self.events.poll() => if event.is_err() { break false },
                _ = tokio::time::sleep_until(deadline) => break false,
            }
        };
        if !done {
            acker.abort();
            warn!(
                left = lock(&self.pending).by_token.len(),
                "stopping before every verdict was acknowledged; the broker sends the rest again"
            );
        }
        // The DISCONNECT goes behind every acknowledgement queued (the queue is first in,
        // first out), queued from a task of its own while this one sends them all.
        let client = self.client.clone();
        tokio::spawn(async move {
            let _ = client.disconnect().await;
        });
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(event) = self.events.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(pkid: u16, payload: &str, dup: bool) -> Publish {
        let mut p = Publish::new("devices/bed-001/telemetry", QoS::AtLeastOnce, payload);
        p.pkid = pkid;
        p.dup = dup;
        p
    }

    #[test]
    fn only_a_message_the_log_had_no_room_for_goes_unacknowledged() {
        assert!(acknowledges(&Ok(())));
        for code in RejectCode::ALL {
            let verdict = Err(Rejection {
                code,
                message: String::new(),
            });
            assert_eq!(
                acknowledges(&verdict),
                code != RejectCode::LogFull,
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_resent_copy_is_answered_by_the_held_verdict_and_a_reused_id_is_not() {
        let mut pending = Pending::default();
        assert!(matches!(
            pending.hold(&publish(7, "a", false), 1),
            Hold::Token(1)
        ));
        // The broker sends it again (DUP) while it is held.
        assert!(matches!(
            pending.hold(&publish(7, "a", true), 2),
            Hold::Copy
        ));
        // Another message under the held id: held anew, and the old verdict finds nothing.
        assert!(matches!(
            pending.hold(&publish(7, "b", false), 3),
            Hold::Token(3)
        ));
        assert!(pending.release(1).is_none());
        assert_eq!(pending.release(3).map(|p| p.payload), Some("b".into()));
        assert!(pending.by_packet.is_empty());
        let qos0 = Publish::new("devices/bed-001/telemetry", QoS::AtMostOnce, "c");
        assert!(matches!(pending.hold(&qos0, 4), Hold::AtMostOnce));
    }
}
