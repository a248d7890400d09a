//! A connected client: the loop that moves packets between its socket, the router and the
//! ingest pipeline, and the orderly end (pending verdicts, will, router disconnect).
//!
//! Telemetry (`devices/{id}/telemetry`) does not go through the router: it goes to the ingest
//! pipeline, and its PUBACK (QoS 1) or PUBREC (QoS 2) is written only when the pipeline says the
//! message is stored or durably dead-lettered. Everything else is relayed to the router, which
//! acknowledges, fans out and retains as a broker does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kenko_ingest::decode::{RejectCode, Rejection};
use kenko_ingest::pipeline::{Origin, Outcome, Reply, Submission};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    self, Disconnect, DisconnectReasonCode, LastWill, LastWillProperties, Packet, PingReq,
    PingResp, PubAck, PubAckProperties, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecProperties, PubRecReason, Publish, PublishProperties, QoS, SubAck, SubAckProperties,
    Subscribe, SubscribeProperties, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use rumqttd::{Forward, Notification};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};

use crate::acl::{Principal, Request};
use crate::auth::Identity;
use crate::authz::AclView;
use crate::codec::{Codec, Version};
use crate::connection::{will_publish_properties, Stream};
use crate::egress::{is_refusal, AckOrder};
use crate::event_time;
use crate::packet::{
    check_topic_name, publish, qos_and_pkid, telemetry_device, PROTOBUF_CONTENT_TYPE,
};
use crate::sessions::{CleanName, Expired, Registration};
use crate::Shared;
use kenko_config::DeniedPublish;

/// How long a connection waits, at shutdown, for verdicts on messages it already handed over.
const DRAIN_WAIT: Duration = Duration::from_secs(10);
/// How long the hub tries to deliver its last packets to a client it is disconnecting.
const LAST_WRITE: Duration = Duration::from_secs(2);
/// A client that takes longer than this to accept what the hub writes is cut off, so that it
/// cannot hold its session (or a shutdown) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connection ended; decides the will and what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT from the client; `with_will` if it asked for its will (MQTT 5 reason
    /// 0x04), `expiry_s` a new Session Expiry Interval (MQTT 5).
    Disconnect {
        with_will: bool,
        expiry_s: Option<u32>,
    },
    /// The peer closed or the socket failed.
    Closed,
    KeepAliveTimeout,
    ProtocolError(DisconnectReasonCode),
    /// A denied PUBLISH from a 3.1.1 client, with `v311_denied_publish = "disconnect"`.
    NotAuthorized,
    TakenOver,
    Shutdown,
    /// The router dropped the link; nothing more can be sent to it.
    RouterGone,
}

/// A Session Expiry Interval that never ends (MQTT 5 3.1.2.11.2).
pub(crate) const NEVER: u32 = u32::MAX;

/// How the session outlives its connection.
pub(crate) struct SessionLife {
    /// The session's name in the router.
    pub(crate) router_id: String,
    /// The router keeps the session when the connection ends (a clean one it drops itself).
    pub(crate) persistent: bool,
    /// Seconds the session lasts after the connection: 0 it ends with it, [`NEVER`] never.
    pub(crate) expiry_s: u32,
    /// The router link's name from the pool, for a clean session (the others use
    /// `router_id`).
    pub(crate) clean_name: Option<CleanName>,
}

/// Who is connected.
pub(crate) struct Peer {
    pub(crate) identity: Arc<Identity>,
    pub(crate) client_id: Arc<str>,
    pub(crate) username: Option<String>,
    /// The largest packet the client accepts (MQTT 5 Maximum Packet Size).
    pub(crate) max_packet_size: Option<usize>,
    /// How many QoS 1 and 2 deliveries the client takes unacknowledged (MQTT 5 Receive
    /// Maximum; none given: no limit of its own, the router's inflight limit holds).
    pub(crate) receive_maximum: Option<u16>,
}

impl Peer {
    pub(crate) fn principal(&self) -> Principal<'_> {
        self.identity
            .principal(&self.client_id, self.username.as_deref())
    }
}

pub(crate) struct Session {
    stream: Stream,
    codec: Codec,
    read_buf: BytesMut,
    out: BytesMut,
    shared: Arc<Shared>,
    peer: Peer,
    acl: AclView,
    keep_alive: u16,
    will: Option<(LastWill, Option<LastWillProperties>)>,
    link_tx: LinkTx,
    link_rx: LinkRx,
    registration: Registration,
    outcomes_tx: mpsc::UnboundedSender<Outcome>,
    outcomes_rx: mpsc::UnboundedReceiver<Outcome>,
    /// Telemetry handed to the pipeline whose verdict has not come back.
    pending: usize,
    /// QoS 2 telemetry packet ids that got PUBREC from kenko and await PUBREL.
    released: HashSet<u16>,
    /// QoS 2 telemetry packet ids handed to the pipeline, verdict not back yet.
    in_pipeline: HashSet<u16>,
    /// QoS 2 packet ids of other publishes handed to the router, PUBREL not yet received.
    router_qos2: HashSet<u16>,
    /// Packets read in this round that go to the router together.
    to_router: Vec<Packet>,
    /// Outgoing QoS 1/2 deliveries whose acknowledgements the router still needs.
    acks: AckOrder,
    /// SUBSCRIBEs with denied filters, by packet id: the failure code of each denied filter
    /// in its place, `None` where the router's answer goes.
    sub_failures: Vec<(u16, Vec<Option<SubscribeReasonCode>>)>,
    /// Packet ids of the client's QoS 1/2 publishes not yet answered (PUBACK, PUBCOMP, or a
    /// refusing PUBREC): what the Receive Maximum bounds.
    inbound: HashSet<u16>,
    /// Topics the client named by alias (MQTT 5), at most [`TOPIC_ALIAS_MAX`].
    aliases: HashMap<u16, Bytes>,
    /// Publishes the client may still send before being read more slowly.
    rate: TokenBucket,
    /// Packet ids of QoS 1 and 2 deliveries written to the client and not yet finished by it:
    /// what the client's Receive Maximum bounds (MQTT 5).
    client_inflight: HashMap<u16, u32>,
    /// How many deliveries `client_inflight` counts.
    client_inflight_total: usize,
    /// Deliveries waiting for the client to finish others (its Receive Maximum reached).
    held: VecDeque<Forward>,
    /// How the session outlives this connection.
    life: SessionLife,
    /// UNSUBSCRIBEs the router is working through, oldest first (see [`Session::on_unsubscribe`]).
    unsubscribes: VecDeque<PendingUnsubscribe>,
}

/// An UNSUBSCRIBE whose filters went to the router one at a time, each followed by a PINGREQ:
/// the router acknowledges in order, with an UNSUBACK only for a filter it had, so an UNSUBACK
/// before a filter's PINGRESP means the subscription existed and the PINGRESP alone that it
/// did not.
struct PendingUnsubscribe {
    pkid: u16,
    filters: usize,
    reasons: Vec<UnsubAckReason>,
    /// The router's UNSUBACK for the filter being answered came.
    existed: bool,
}

/// Topic aliases a client may define (announced as Topic Alias Maximum in CONNACK).
pub(crate) const TOPIC_ALIAS_MAX: u16 = 32;

/// Push-back on fast publishers: `burst` publishes at once, then `rate` per second.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            at: Instant::now(),
        }
    }

    /// Takes one token; how long to wait first when there is none.
    fn take(&mut self) -> Option<Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.at = now;
        self.tokens -= 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        stream: Stream,
        codec: Codec,
        read_buf: BytesMut,
        shared: Arc<Shared>,
        peer: Peer,
        acl: AclView,
        keep_alive: u16,
        will: Option<(LastWill, Option<LastWillProperties>)>,
        (link_tx, link_rx): (LinkTx, LinkRx),
        registration: Registration,
        life: SessionLife,
    ) -> Session {
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel();
        shared.stats.connected.fetch_add(1, Ordering::Relaxed);
        let rate = TokenBucket::new(shared.config.max_publish_rate, shared.config.publish_burst);
        Session {
            stream,
            codec,
            read_buf,
            out: BytesMut::with_capacity(4096),
            shared,
            peer,
            acl,
            keep_alive,
            will,
            link_tx,
            link_rx,
            registration,
            outcomes_tx,
            outcomes_rx,
            pending: 0,
            released: HashSet::new(),
            in_pipeline: HashSet::new(),
            router_qos2: HashSet::new(),
            to_router: Vec::new(),
            acks: AckOrder::default(),
            sub_failures: Vec::new(),
            inbound: HashSet::new(),
            aliases: HashMap::new(),
            rate,
            life,
            unsubscribes: VecDeque::new(),
            client_inflight: HashMap::new(),
            client_inflight_total: 0,
            held: VecDeque::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        let end = self.serve().await;
        let shared = self.shared.clone();
        self.finish(end).await;
        shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve(&mut self) -> End {
        // MQTT-3.1.2-24: one and a half keep-alive periods without a packet end the connection;
        // zero turns keep-alive off.
        let keep_alive =
            (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500));
        let mut last_heard = Instant::now();
        // Packets that arrived together with CONNECT.
        if let Err(end) = self.on_bytes().await {
            return end;
        }
        loop {
            if let Err(end) = self.flush().await {
                return end;
            }
            if !self.may_read() {
                last_heard = Instant::now();
            }
            let expiry = keep_alive.map(|k| last_heard + k);
            let shutdown = self.shared.shutdown.clone();
            let takeover = self.registration.takeover.clone();
            tokio::select! {
                biased;
                _ = takeover.cancelled() => return End::TakenOver,
                _ = shutdown.cancelled() => return End::Shutdown,
                Some(outcome) = self.outcomes_rx.recv() => {
                    self.on_outcome(outcome);
                    while let Ok(outcome) = self.outcomes_rx.try_recv() {
                        self.on_outcome(outcome);
                    }
                }
                notification = self.link_rx.next() => {
                    match notification {
                        Ok(Some(n)) => if let Err(end) = self.on_router(n).await { return end },
                        Ok(None) => {}
                        Err(_) => return End::RouterGone,
                    }
                }
                read = self.stream.read_buf(&mut self.read_buf), if self.may_read() => {
                    match read {
                        Ok(0) | Err(_) => return End::Closed,
                        Ok(_) => {
                            last_heard = Instant::now();
                            if let Err(end) = self.on_bytes().await {
                                return end;
                            }
                        }
                    }
                }
                // While the hub does not read (receive maximum reached), silence is its own doing.
                _ = sleep_or_never(expiry), if self.may_read() => return End::KeepAliveTimeout,
            }
        }
    }

    /// Handles every whole packet buffered, then hands the router its share in one go.
    async fn on_bytes(&mut self) -> Result<(), End> {
        loop {
            match self.codec.read(&mut self.read_buf) {
                Ok(Some(packet)) => {
                    if matches!(packet, Packet::Publish(..)) {
                        self.throttle().await?;
                    }
                    self.on_packet(packet).await?
                }
                Ok(None) => break,
                Err(e) => return Err(self.malformed(e)),
            }
        }
        self.send_to_router().await
    }

    fn malformed(&mut self, e: protocol::Error) -> End {
        info!(error = %e, "closing connection: bad packet");
        End::ProtocolError(crate::codec::disconnect_reason(&e))
    }

    async fn on_packet(&mut self, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(publish, props) => self.on_publish(publish, props).await?,
            Packet::PubRel(rel, props) => {
                if self.released.remove(&rel.pkid) {
                    let comp = PubComp {
                        pkid: rel.pkid,
                        reason: PubCompReason::Success,
                    };
                    self.write(Packet::PubComp(comp, None));
                } else {
                    self.router_qos2.remove(&rel.pkid);
                    self.to_router.push(Packet::PubRel(rel, props));
                }
            }
            packet @ (Packet::PubAck(..) | Packet::PubRec(..)) => {
                // A PUBACK ends a QoS 1 delivery, a refusing PUBREC a QoS 2 one (MQTT 5 4.9).
                let done = match &packet {
                    Packet::PubAck(ack, _) => Some(ack.pkid),
                    Packet::PubRec(rec, _) if is_refusal(rec.reason) => Some(rec.pkid),
                    _ => None,
                };
                self.acks.client_ack(packet, &mut self.to_router);
                if let Some(pkid) = done {
                    self.client_done(pkid);
                }
            }
            Packet::PubComp(comp, props) => {
                let pkid = comp.pkid;
                self.acks
                    .client_comp(Packet::PubComp(comp, props), &mut self.to_router);
                self.client_done(pkid);
            }
            Packet::Subscribe(subscribe, props) => self.on_subscribe(subscribe, props),
            Packet::PingReq(_) => self.write(Packet::PingResp(PingResp)),
            Packet::Disconnect(disconnect, props) => {
                let with_will =
                    disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                let expiry_s = props.and_then(|p| p.session_expiry_interval);
                if self.life.expiry_s == 0 && expiry_s.is_some_and(|s| s != 0) {
                    // 3.14.2.2.2: a protocol error; the will is published.
                    info!(
                        "closing connection: DISCONNECT gives an expiry to a session without one"
                    );
                    return Err(End::ProtocolError(DisconnectReasonCode::ProtocolError));
                }
                return Err(End::Disconnect {
                    with_will,
                    expiry_s,
                });
            }
            Packet::Unsubscribe(unsubscribe, _) => self.on_unsubscribe(unsubscribe),
            other => {
                info!(packet = ?packet_name(&other), "closing connection: a client may not send this packet");
                return Err(End::ProtocolError(DisconnectReasonCode::ProtocolError));
            }
        }
        Ok(())
    }

    async fn on_publish(
        &mut self,
        publish: Publish,
        props: Option<PublishProperties>,
    ) -> Result<(), End> {
        let (qos, pkid) = qos_and_pkid(&publish);
        if qos != QoS::AtMostOnce && self.inbound.insert(pkid) {
            let max = usize::from(self.shared.config.receive_maximum);
            if self.codec.version() == Version::V5 && self.inbound.len() > max {
                // MQTT-3.3.4-7: a client may not exceed the Receive Maximum it was given.
                info!(
                    max,
                    "closing connection: more unacknowledged publishes than the receive maximum"
                );
                self.shared
                    .stats
                    .receive_maximum_exceeded
                    .fetch_add(1, Ordering::Relaxed);
                return Err(End::ProtocolError(
                    DisconnectReasonCode::ReceiveMaximumExceeded,
                ));
            }
        }
        let (publish, props) = self.resolve_alias(publish, props)?;
        let topic = match check_topic_name(&publish.topic) {
            Ok(topic) => topic,
            Err(why) => {
                info!(why, "closing connection: invalid topic name in PUBLISH");
                return Err(End::ProtocolError(DisconnectReasonCode::TopicNameInvalid));
            }
        };
        if topic.starts_with('$') {
            let why = format!("clients may not publish on {topic}; $ topics belong to the hub");
            return self.deny_publish(qos, pkid, why);
        }
        let request = Request::Publish {
            topic,
            qos: qos as u8,
            retain: publish.retain,
        };
        let decision = self.acl.decide(&self.peer.principal(), &request);
        if !decision.allowed {
            let why = format!(
                "not authorized to publish on {topic} ({:?})",
                decision.reason
            );
            return self.deny_publish(qos, pkid, why);
        }
        let Some(device) = telemetry_device(topic) else {
            // MQTT-4.3.3-10: a QoS 2 resend before PUBREL is the same message. The router
            // would record it again, so only the first copy goes to it; kenko answers the resend.
            if qos == QoS::ExactlyOnce && !self.router_qos2.insert(pkid) {
                debug!(
                    pkid,
                    "QoS 2 resend before PUBREL; answered, not delivered again"
                );
                let rec = PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                };
                self.write(Packet::PubRec(rec, None));
                return Ok(());
            }
            let mut props = props;
            event_time::strip(&mut props);
            self.to_router.push(Packet::Publish(publish, props));
            return Ok(());
        };
        if qos == QoS::ExactlyOnce {
            if self.released.contains(&pkid) {
                // A resend after our PUBREC was lost: the message is already stored.
                let rec = PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                };
                self.write(Packet::PubRec(rec, None));
                return Ok(());
            }
            if !self.in_pipeline.insert(pkid) {
                return Ok(()); // the verdict on the first copy will answer it
            }
        }
        let reply = (qos != QoS::AtMostOnce).then(|| Reply {
            to: self.outcomes_tx.clone(),
            token: (qos as u32) << 16 | u32::from(pkid),
            refusable: self.codec.version() == Version::V5,
        });
        self.pending += usize::from(reply.is_some());
        let protobuf = topic.ends_with("/pb")
            || props
                .as_ref()
                .and_then(|p| p.content_type.as_deref())
                .is_some_and(|ct| ct.eq_ignore_ascii_case(PROTOBUF_CONTENT_TYPE));
        let submission = Submission {
            client_id: self.peer.client_id.clone(),
            device: device.into(),
            payload: publish.payload,
            received_ms: now_ms(),
            reply,
            protobuf,
            origin: Origin::Device,
        };
        self.shared
            .stats
            .telemetry_in
            .fetch_add(1, Ordering::Relaxed);
        // Waits while the pipeline's queue is full: that is the push-back on publishers. A
        // takeover must not wait behind it (the new connection waits for this one to end).
        let takeover = self.registration.takeover.clone();
        tokio::select! {
            submitted = self.shared.ingest.submit(submission) => match submitted {
                Ok(()) => Ok(()),
                Err(_) => Err(End::Shutdown),
            },
            _ = takeover.cancelled() => Err(End::TakenOver),
        }
    }

    /// A publish the ACL does not allow. MQTT 5 is told 0x87 in the acknowledgement; 3.1.1 has
    /// no negative acknowledgement, so the connection is closed or the publish acknowledged
    /// and dropped, as `auth.v311_denied_publish` says (MQTT-3.3.5-2).
    fn deny_publish(&mut self, qos: QoS, pkid: u16, why: String) -> Result<(), End> {
        if self.codec.version() == Version::V311
            && self.shared.auth.v311_denied_publish == DeniedPublish::Disconnect
        {
            warn!(why, "publish denied; closing the MQTT 3.1.1 connection");
            self.shared
                .stats
                .publishes_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(End::NotAuthorized);
        }
        self.refuse_publish(qos, pkid, PubAckReason::NotAuthorized, why);
        Ok(())
    }

    /// Checks each filter against the ACL: the allowed ones go to the router, the denied ones
    /// get their failure code in the SUBACK (3.1.1: 0x80, 5: 0x87 not authorized).
    fn on_subscribe(&mut self, mut subscribe: Subscribe, props: Option<SubscribeProperties>) {
        let failure = match self.codec.version() {
            Version::V5 => SubscribeReasonCode::NotAuthorized,
            Version::V311 => SubscribeReasonCode::Failure,
        };
        let principal = self.peer.principal();
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut denied = Vec::new();
        let v5 = self.codec.version() == Version::V5;
        subscribe.filters.retain(|filter| {
            if filter.path.starts_with("$share/") {
                // Not offered (CONNACK Shared Subscription Available 0): 0x9E in MQTT 5.
                denied.push(filter.path.clone());
                codes.push(Some(if v5 {
                    SubscribeReasonCode::SharedSubscriptionsNotSupported
                } else {
                    SubscribeReasonCode::Failure
                }));
                return false;
            }
            let request = Request::Subscribe {
                filter: &filter.path,
                qos: filter.qos as u8,
            };
            let allowed = self.acl.decide(&principal, &request).allowed;
            if !allowed {
                denied.push(filter.path.clone());
            }
            codes.push((!allowed).then_some(failure));
            allowed
        });
        if denied.is_empty() {
            self.to_router.push(Packet::Subscribe(subscribe, props));
            return;
        }
        info!(filters = ?denied, "subscription denied");
        if subscribe.filters.is_empty() {
            let ack = SubAck {
                pkid: subscribe.pkid,
                return_codes: codes.into_iter().flatten().collect(),
            };
            let props = self.suback_reason(&denied);
            self.write(Packet::SubAck(ack, props));
            return;
        }
        self.sub_failures.push((subscribe.pkid, codes));
        self.to_router.push(Packet::Subscribe(subscribe, props));
    }

    /// The router answers an UNSUBSCRIBE with one UNSUBACK per filter it removed and none for
    /// a filter it did not have; MQTT wants one UNSUBACK with a reason code per filter, also
    /// when no subscription existed (MQTT-3.10.4-5, -6; 5: 0x11). So each filter goes to the
    /// router alone, followed by a PINGREQ whose PINGRESP closes that filter's answer, and
    /// kenko writes the one UNSUBACK when the last filter is answered.
    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let filters = unsubscribe.filters.len();
        for filter in unsubscribe.filters {
            let one = Unsubscribe {
                pkid: unsubscribe.pkid,
                filters: vec![filter],
            };
            self.to_router.push(Packet::Unsubscribe(one, None));
            self.to_router.push(Packet::PingReq(PingReq));
        }
        self.unsubscribes.push_back(PendingUnsubscribe {
            pkid: unsubscribe.pkid,
            filters,
            reasons: Vec::with_capacity(filters),
            existed: false,
        });
    }

    /// The router's UNSUBACK (`None`) or PINGRESP (`Some`) for the oldest pending UNSUBSCRIBE;
    /// the client's UNSUBACK once every filter is answered.
    fn on_unsubscribe_answer(&mut self, closes_filter: bool) {
        let Some(pending) = self.unsubscribes.front_mut() else {
            debug!("router acknowledgement with no UNSUBSCRIBE pending; ignored");
            return;
        };
        if !closes_filter {
            pending.existed = true;
            return;
        }
        pending.reasons.push(if pending.existed {
            UnsubAckReason::Success
        } else {
            UnsubAckReason::NoSubscriptionExisted
        });
        pending.existed = false;
        if pending.reasons.len() < pending.filters {
            return;
        }
        if let Some(done) = self.unsubscribes.pop_front() {
            let ack = UnsubAck {
                pkid: done.pkid,
                reasons: done.reasons,
            };
            self.write(Packet::UnsubAck(ack, None));
        }
    }

    fn suback_reason(&self, denied: &[String]) -> Option<SubAckProperties> {
        (self.codec.version() == Version::V5).then(|| SubAckProperties {
            reason_string: Some(format!(
                "not authorized to subscribe to {}",
                denied.join(", ")
            )),
            user_properties: vec![],
        })
    }

    /// The router's SUBACK for the allowed filters, with the denied ones put back in place.
    fn merge_suback(&mut self, mut ack: SubAck, props: Option<SubAckProperties>) -> Packet {
        let Some(at) = self.sub_failures.iter().position(|(p, _)| *p == ack.pkid) else {
            return Packet::SubAck(ack, props);
        };
        let (_, codes) = self.sub_failures.swap_remove(at);
        let mut from_router = std::mem::take(&mut ack.return_codes).into_iter();
        ack.return_codes = codes
            .into_iter()
            .map(|code| {
                code.or_else(|| from_router.next())
                    .unwrap_or(SubscribeReasonCode::Unspecified)
            })
            .collect();
        let props = props.or_else(|| {
            (self.codec.version() == Version::V5).then(|| SubAckProperties {
                reason_string: Some("some filters are not authorized".into()),
                user_properties: vec![],
            })
        });
        Packet::SubAck(ack, props)
    }

    /// A publish kenko will not accept: MQTT 5 says why in the acknowledgement; MQTT 3.1.1 has
    /// no negative acknowledgement, so it is acknowledged, logged and counted.
    fn refuse_publish(&mut self, qos: QoS, pkid: u16, reason: PubAckReason, why: String) {
        if reason == PubAckReason::NotAuthorized {
            // ACL denials are logged (rate-limited) by the authorizer, consent refusals are
            // counted by the pipeline; a line per message would flood the log.
            debug!(why, "publish refused");
        } else {
            warn!(why, "publish refused");
        }
        self.shared
            .stats
            .publishes_refused
            .fetch_add(1, Ordering::Relaxed);
        let v5 = self.codec.version() == Version::V5;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let (reason, props) = if v5 {
                    (
                        reason,
                        Some(PubAckProperties {
                            reason_string: Some(why),
                            user_properties: vec![],
                        }),
                    )
                } else {
                    (PubAckReason::Success, None)
                };
                self.write(Packet::PubAck(PubAck { pkid, reason }, props));
            }
            QoS::ExactlyOnce => {
                let (reason, props) = if v5 {
                    (
                        pubrec_reason(reason),
                        Some(PubRecProperties {
                            reason_string: Some(why),
                            user_properties: vec![],
                        }),
                    )
                } else {
                    self.released.insert(pkid);
                    (PubRecReason::Success, None)
                };
                self.write(Packet::PubRec(PubRec { pkid, reason }, props));
            }
        }
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        self.pending = self.pending.saturating_sub(1);
        let pkid = (outcome.token & 0xffff) as u16;
        let qos = if outcome.token >> 16 == 2 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        match outcome.verdict {
            Ok(()) => match qos {
                QoS::ExactlyOnce => {
                    self.in_pipeline.remove(&pkid);
                    self.released.insert(pkid);
                    self.write(Packet::PubRec(
                        PubRec {
                            pkid,
                            reason: PubRecReason::Success,
                        },
                        None,
                    ));
                }
                _ => self.write(Packet::PubAck(
                    PubAck {
                        pkid,
                        reason: PubAckReason::Success,
                    },
                    None,
                )),
            },
            Err(rejection)
                if rejection.code == RejectCode::LogFull
                    && self.codec.version() == Version::V311 =>
            {
                // Not stored, and 3.1.1 has no negative acknowledgement: no PUBACK, so the
                // device keeps the message and sends it again when it reconnects.
                self.in_pipeline.remove(&pkid);
                debug!(pkid, "not acknowledged: the write-ahead log is full");
            }
            Err(rejection) => {
                self.in_pipeline.remove(&pkid);
                // The message is dead-lettered (or, with a full log, refused for now with
                // 0x97) and its reason published on devices/{id}/errors.
                self.refuse_publish(qos, pkid, rejection_reason(&rejection), rejection.message);
            }
        }
    }

    async fn on_router(&mut self, first: Notification) -> Result<(), End> {
        let mut unscheduled = self.on_notification(first);
        // Take whatever else the router has queued without waiting.
        while let Some(next) = poll_once(self.link_rx.next()) {
            match next {
                Ok(Some(n)) => unscheduled |= self.on_notification(n),
                Ok(None) => break,
                Err(_) => return Err(End::RouterGone),
            }
        }
        // Acknowledgements kenko gives for deliveries it withheld.
        self.send_to_router().await?;
        if unscheduled {
            self.flush().await?;
            // The router paused this connection until its deliveries were written.
            self.link_rx.wake().await.map_err(|_| End::RouterGone)?;
        }
        Ok(())
    }

    /// Whether a QoS 1 or 2 delivery must wait: the client's Receive Maximum is reached, or
    /// older deliveries are waiting (they go first).
    fn client_full(&self) -> bool {
        !self.held.is_empty() || self.at_receive_maximum()
    }

    fn at_receive_maximum(&self) -> bool {
        self.peer
            .receive_maximum
            .is_some_and(|max| self.client_inflight_total >= usize::from(max))
    }

    /// The client finished a QoS 1 or 2 delivery (PUBACK, PUBCOMP, or a refusing PUBREC):
    /// deliveries that waited for room go out.
    fn client_done(&mut self, pkid: u16) {
        // Counted per packet id: the router may reuse one whose exchange the client has
        // not finished yet.
        match self.client_inflight.get_mut(&pkid) {
            None => return,
            Some(1) => {
                self.client_inflight.remove(&pkid);
            }
            Some(n) => *n -= 1,
        }
        self.client_inflight_total -= 1;
        while !self.at_receive_maximum() {
            let Some(forward) = self.held.pop_front() else {
                break;
            };
            self.deliver(forward);
        }
    }

    /// Writes a delivery to the client, or withholds it, and keeps the router's
    /// acknowledgements in order either way.
    fn deliver(&mut self, mut forward: Forward) {
        let (qos, pkid) = qos_and_pkid(&forward.publish);
        let event_ms = event_time::take(&mut forward.properties);
        let allowed = match std::str::from_utf8(&forward.publish.topic) {
            Ok(topic) => {
                self.acl
                    .decide_delivery(&self.peer.principal(), topic, event_ms)
                    .allowed
            }
            Err(_) => false,
        };
        // Encoded once, straight into the output buffer; taken back out if it cannot be
        // delivered. MQTT-3.1.2-25: a packet larger than the client accepts is
        // discarded, as if it had been delivered.
        let mut deliver = allowed;
        if allowed {
            let start = self.out.len();
            let packet = Packet::Publish(forward.publish, forward.properties);
            if let Err(e) = self.codec.write(packet, &mut self.out) {
                warn!(error = %e, "cannot encode delivery for client; discarded");
                deliver = false;
            } else if let Some(max) = self.peer.max_packet_size {
                let size = self.out.len() - start;
                if size > max {
                    self.shared
                        .stats
                        .too_large_for_client
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(
                        size,
                        max, "delivery larger than the client accepts; discarded"
                    );
                    deliver = false;
                }
            }
            if !deliver {
                self.out.truncate(start);
            }
        }
        if qos != QoS::AtMostOnce {
            let qos2 = qos == QoS::ExactlyOnce;
            self.acks
                .delivered(pkid, qos2, !deliver, &mut self.to_router);
        }
        if deliver {
            self.shared.stats.delivered.fetch_add(1, Ordering::Relaxed);
            if qos != QoS::AtMostOnce {
                *self.client_inflight.entry(pkid).or_default() += 1;
                self.client_inflight_total += 1;
            }
        } else if !allowed {
            self.shared.stats.withheld.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes a router notification to the client; `true` if the router unscheduled us.
    /// Every delivery passes the ACL again here, against the rules in force now: a delivery
    /// they no longer allow is withheld (and acknowledged to the router by kenko).
    fn on_notification(&mut self, notification: Notification) -> bool {
        match notification {
            Notification::Forward(forward) => {
                // MQTT-3.3.4-9: no more unacknowledged QoS 1 and 2 deliveries than the
                // client's Receive Maximum; the rest wait here, in order (QoS 0 need not,
                // MQTT-3.3.4-10). The router's own inflight limit bounds what waits.
                if qos_and_pkid(&forward.publish).0 != QoS::AtMostOnce && self.client_full() {
                    self.held.push_back(forward);
                } else {
                    self.deliver(forward);
                }
                false
            }
            notification => match Option::<Packet>::from(notification) {
                Some(Packet::SubAck(ack, props)) => {
                    let packet = self.merge_suback(ack, props);
                    self.write(packet);
                    false
                }
                Some(Packet::UnsubAck(..)) => {
                    self.on_unsubscribe_answer(false);
                    false
                }
                Some(Packet::PingResp(_)) => {
                    self.on_unsubscribe_answer(true);
                    false
                }
                Some(Packet::PubRel(rel, props)) => {
                    if self.acks.router_pubrel(rel.pkid) {
                        self.write(Packet::PubRel(rel, props));
                    }
                    false
                }
                Some(packet) => {
                    self.write(packet);
                    false
                }
                None => true,
            },
        }
    }

    async fn send_to_router(&mut self) -> Result<(), End> {
        let Some(last) = self.to_router.pop() else {
            return Ok(());
        };
        {
            let mut buffer = self.link_tx.buffer();
            buffer.extend(self.to_router.drain(..));
        }
        // One notification covers everything buffered above.
        self.link_tx
            .send(last)
            .await
            .map(|_| ())
            .map_err(|_| End::RouterGone)
    }

    /// Whether to read from the client now: not while it has as many unanswered QoS 1/2
    /// publishes as the receive maximum (an MQTT 3.1.1 client cannot be told the limit, so
    /// it is pushed back; an MQTT 5 client that ignores it is disconnected in `on_publish`).
    fn may_read(&self) -> bool {
        self.inbound.len() < usize::from(self.shared.config.receive_maximum)
            || self.codec.version() == Version::V5
    }

    /// Waits while the client publishes faster than `mqtt.max_publish_rate` allows: its
    /// packets stay in the socket meanwhile, which pushes back on it.
    async fn throttle(&mut self) -> Result<(), End> {
        let Some(wait) = self.rate.take() else {
            return Ok(());
        };
        self.shared
            .stats
            .publishes_throttled
            .fetch_add(1, Ordering::Relaxed);
        // What is already answered goes out before the pause.
        self.flush().await?;
        let shutdown = self.shared.shutdown.clone();
        let takeover = self.registration.takeover.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = takeover.cancelled() => Err(End::TakenOver),
            _ = shutdown.cancelled() => Err(End::Shutdown),
        }
    }

    /// Resolves an MQTT 5 topic alias (3.3.2.3.4): a PUBLISH with a topic and an alias
    /// defines it, one with an empty topic uses it. The alias is removed before the ACL and
    /// the router see the publish, so an alias never stands for a topic the ACL did not check.
    fn resolve_alias(
        &mut self,
        mut publish: Publish,
        mut props: Option<PublishProperties>,
    ) -> Result<(Publish, Option<PublishProperties>), End> {
        let Some(alias) = props.as_mut().and_then(|p| p.topic_alias.take()) else {
            return Ok((publish, props));
        };
        if alias == 0 || alias > TOPIC_ALIAS_MAX {
            // MQTT-3.3.2-8, MQTT-3.3.2-9.
            info!(
                alias,
                max = TOPIC_ALIAS_MAX,
                "closing connection: topic alias out of range"
            );
            return Err(End::ProtocolError(DisconnectReasonCode::TopicAliasInvalid));
        }
        if publish.topic.is_empty() {
            match self.aliases.get(&alias) {
                Some(topic) => publish.topic = topic.clone(),
                None => {
                    info!(
                        alias,
                        "closing connection: topic alias used before it was defined"
                    );
                    return Err(End::ProtocolError(DisconnectReasonCode::ProtocolError));
                }
            }
        } else if check_topic_name(&publish.topic).is_ok() {
            self.aliases.insert(alias, publish.topic.clone());
        }
        Ok((publish, props))
    }

    fn write(&mut self, packet: Packet) {
        match &packet {
            Packet::PubAck(ack, _) => {
                self.inbound.remove(&ack.pkid);
            }
            Packet::PubComp(comp, _) => {
                self.inbound.remove(&comp.pkid);
            }
            Packet::PubRec(rec, _) if is_refusal(rec.reason) => {
                self.inbound.remove(&rec.pkid);
            }
            _ => {}
        }
        if let Err(e) = self.codec.write(packet, &mut self.out) {
            warn!(error = %e, "cannot encode packet for client; dropped");
        }
    }

    /// Writes what is buffered. Gives up if the session is taken over meanwhile, and cuts off
    /// a client that does not read for `WRITE_TIMEOUT`.
    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let takeover = self.registration.takeover.clone();
        let result = tokio::select! {
            written = tokio::time::timeout(WRITE_TIMEOUT, write_out(&mut self.stream, &self.out)) => written,
            _ = takeover.cancelled() => {
                self.out.clear();
                return Err(End::TakenOver);
            }
        };
        self.out.clear();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => {
                info!("closing connection: the client has not read what the hub sent for {WRITE_TIMEOUT:?}");
                Err(End::Closed)
            }
        }
    }

    /// The last words to the client (acknowledgements, DISCONNECT), briefly.
    async fn flush_last(&mut self) {
        if !self.out.is_empty() {
            let _ = tokio::time::timeout(LAST_WRITE, write_out(&mut self.stream, &self.out)).await;
            self.out.clear();
        }
    }

    async fn finish(mut self, end: End) {
        debug!(?end, "ending connection");
        if end == End::Shutdown {
            self.drain_verdicts().await;
        }
        let v5 = self.codec.version() == Version::V5;
        let tell = match end {
            End::TakenOver => Some(DisconnectReasonCode::SessionTakenOver),
            End::NotAuthorized => Some(DisconnectReasonCode::NotAuthorized),
            End::Shutdown => Some(DisconnectReasonCode::ServerShuttingDown),
            End::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
            End::ProtocolError(code) => Some(code),
            _ => None,
        };
        if let (true, Some(reason_code)) = (v5, tell) {
            self.write(Packet::Disconnect(Disconnect { reason_code }, None));
        }
        self.flush_last().await;
        let _ = self.stream.shutdown().await;

        // 3.14.2.2.2: a DISCONNECT may change the Session Expiry Interval (from 0 to more is
        // refused in `on_packet`).
        if let End::Disconnect {
            expiry_s: Some(asked),
            ..
        } = end
        {
            let max = self.shared.config.max_session_expiry_s;
            self.life.expiry_s = granted_session_expiry(asked, max);
        }
        let publish_will = match end {
            End::Disconnect { with_will, .. } => with_will,
            End::Shutdown | End::RouterGone => false,
            End::Closed
            | End::KeepAliveTimeout
            | End::ProtocolError(_)
            | End::NotAuthorized
            | End::TakenOver => true,
        };
        if end == End::RouterGone {
            return;
        }
        if let (true, Some((will, props))) = (publish_will, self.will.take()) {
            // MQTT-3.1.3-9: the will goes when its delay has passed or the session ends,
            // whichever comes first.
            let delay = props.as_ref().and_then(|p| p.delay_interval).unwrap_or(0);
            match delay.min(self.life.expiry_s) {
                0 => self.publish_will(will, props),
                // A takeover is a new connection to the session within the delay: no will.
                _ if end == End::TakenOver => debug!("will dropped: the session was taken over"),
                delay => self.delay_will(will, props, delay),
            }
        }
        let normal = protocol::Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        };
        self.to_router.push(Packet::Disconnect(normal, None));
        let told = self.send_to_router().await.is_ok();
        info!(?end, "disconnected");
        if let (true, Some(name)) = (told, self.life.clean_name.take()) {
            self.shared.sessions.release_clean_name(name);
        }
        // The session goes on in the new connection (also when this one ended on its own
        // while being taken over), or the hub is stopping.
        let goes_on = matches!(end, End::TakenOver | End::Shutdown | End::RouterGone)
            || self.registration.takeover.is_cancelled();
        if !goes_on {
            let principal = self.peer.identity.id.clone();
            outlive(&self.shared, &principal, &self.peer.client_id, &self.life).await;
        }
        // Dropping the registration lets a connection that takes this client id over proceed.
    }

    /// Publishes the will after `delay` seconds (MQTT 5 Will Delay Interval, already capped
    /// at the session's expiry) through a router link of its own, unless the client connects
    /// again first. The ACL decides now, as for a will without delay.
    fn delay_will(&mut self, will: LastWill, props: Option<LastWillProperties>, delay: u32) {
        let Some(packet) = self.will_packet(will, props) else {
            return;
        };
        info!(delay_s = delay, "will delayed");
        let sessions = self.shared.sessions.clone();
        let router = self.shared.router.clone();
        let shutdown = self.shared.shutdown.clone();
        let client_id = self.peer.client_id.clone();
        let token = sessions.delay_will(client_id.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {}
                _ = token.cancelled() => return debug!(%client_id, "delayed will cancelled: the client is back"),
                _ = shutdown.cancelled() => return,
            }
            if !sessions.will_due(&client_id, &token) {
                return;
            }
            // Client ids may not hold spaces (the router refuses + $ # /), so this one is never
            // a client's.
            let link_id = format!("{client_id} will");
            let linked = tokio::task::spawn_blocking(move || router.link(&link_id, true)).await;
            let Ok(Ok((mut tx, _rx, _))) = linked else {
                return warn!(%client_id, "delayed will not published: no router link");
            };
            let done = protocol::Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            };
            for packet in [packet, Packet::Disconnect(done, None)] {
                if tx.send(packet).await.is_err() {
                    return warn!(%client_id, "delayed will not published: router gone");
                }
            }
            info!(%client_id, "delayed will published");
        });
    }

    /// Hands the will to the router if the rules in force now still allow it.
    fn publish_will(&mut self, will: LastWill, props: Option<LastWillProperties>) {
        if let Some(packet) = self.will_packet(will, props) {
            self.to_router.push(packet);
        }
    }

    /// The will as a PUBLISH, if the rules in force now still allow it.
    fn will_packet(&mut self, will: LastWill, props: Option<LastWillProperties>) -> Option<Packet> {
        let topic = String::from_utf8_lossy(&will.topic).into_owned();
        let request = Request::Publish {
            topic: &topic,
            qos: will.qos as u8,
            retain: will.retain,
        };
        if !self.acl.decide(&self.peer.principal(), &request).allowed {
            warn!(topic, "will not published: the ACL no longer allows it");
            return None;
        }
        info!(topic, "publishing will");
        // rumqttd's router holds a QoS 2 publish until PUBREL, which a will never gets.
        let qos = if will.qos == QoS::AtMostOnce {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let packet = publish(will.topic, will.message, qos, 1, will.retain);
        Some(Packet::Publish(packet, will_publish_properties(props)))
    }

    /// At shutdown: write the acknowledgements of telemetry already handed to the pipeline.
    async fn drain_verdicts(&mut self) {
        let deadline = Instant::now() + DRAIN_WAIT;
        while self.pending > 0 {
            match tokio::time::timeout_at(deadline, self.outcomes_rx.recv()).await {
                Ok(Some(outcome)) => self.on_outcome(outcome),
                _ => break,
            }
        }
    }
}

fn rejection_reason(rejection: &Rejection) -> PubAckReason {
    match rejection.code {
        RejectCode::UnknownDevice | RejectCode::ClientMismatch | RejectCode::NoConsent => {
            PubAckReason::NotAuthorized
        }
        RejectCode::MalformedPayload
        | RejectCode::Implausible
        | RejectCode::FutureTimestamp
        | RejectCode::TooOld
        | RejectCode::TooManyReadings => PubAckReason::PayloadFormatInvalid,
        RejectCode::LogFull => PubAckReason::QuotaExceeded,
    }
}

/// Ends the session with its connection (Session Expiry Interval 0), or lets it expire later:
/// a task waits out the interval and ends it unless a connection resumes it first. Nothing for
/// a clean session (the router has dropped it) or one that never expires.
pub(crate) async fn outlive(
    shared: &Arc<Shared>,
    principal: &str,
    client_id: &Arc<str>,
    life: &SessionLife,
) {
    if !life.persistent || life.expiry_s == NEVER {
        return;
    }
    let router_id = life.router_id.clone();
    if life.expiry_s == 0 {
        match shared.router.end_session(router_id.clone()).await {
            Ok(()) => {
                shared.sessions.forget_kept(&router_id);
            }
            Err(e) => warn!(error = %e, "cannot end the session"),
        }
        return;
    }
    let expiry = life.expiry_s;
    debug!(expiry_s = expiry, "session kept until it expires");
    let sessions = shared.sessions.clone();
    let router = shared.router.clone();
    let shutdown = shared.shutdown.clone();
    let principal = principal.to_owned();
    let client_id = client_id.clone();
    let token = sessions.expire_later(router_id.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(u64::from(expiry))) => {}
            _ = token.cancelled() => return,
            _ = shutdown.cancelled() => return,
        }
        let Expired::End(registration) = sessions.claim_expired(&principal, &client_id, &token)
        else {
            return;
        };
        match router.end_session(router_id.clone()).await {
            Ok(()) => {
                // Without a registration (another principal held the client id), its owner
                // may be connecting again right now, and its new session must stay known as
                // kept; a stale entry costs no more than one needless end later.
                if registration.is_some() {
                    sessions.forget_kept(&router_id);
                }
                info!(%client_id, expiry_s = expiry, "session expired");
            }
            Err(e) => warn!(%client_id, error = %e, "cannot end the expired session"),
        }
        drop(registration);
    });
}

/// The Session Expiry Interval the hub grants: what was asked, up to
/// `mqtt.max_session_expiry_s` (0: no cap).
pub(crate) fn granted_session_expiry(asked: u32, max: u32) -> u32 {
    match max {
        0 => asked,
        max => asked.min(max),
    }
}

fn pubrec_reason(reason: PubAckReason) -> PubRecReason {
    match reason {
        PubAckReason::Success => PubRecReason::Success,
        PubAckReason::NoMatchingSubscribers => PubRecReason::NoMatchingSubscribers,
        PubAckReason::UnspecifiedError => PubRecReason::UnspecifiedError,
        PubAckReason::ImplementationSpecificError => PubRecReason::ImplementationSpecificError,
        PubAckReason::NotAuthorized => PubRecReason::NotAuthorized,
        PubAckReason::TopicNameInvalid => PubRecReason::TopicNameInvalid,
        PubAckReason::PacketIdentifierInUse => PubRecReason::PacketIdentifierInUse,
        PubAckReason::QuotaExceeded => PubRecReason::QuotaExceeded,
        PubAckReason::PayloadFormatInvalid => PubRecReason::PayloadFormatInvalid,
    }
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(..) => "CONNACK",
        Packet::SubAck(..) => "SUBACK",
        Packet::UnsubAck(..) => "UNSUBACK",
        Packet::PingResp(..) => "PINGRESP",
        _ => "packet",
    }
}

/// Polls a future once; `None` if it is not ready. Used to drain what is already queued.
fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// Writes and flushes: TLS and WebSocket layers hold bytes until flushed.
async fn write_out(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

async fn sleep_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
