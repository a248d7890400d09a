//! What the client sends: publishes (routed at once, or handed to the ingest pipeline and
//! answered on its verdict), subscriptions, and the client's half of QoS 2.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use kenko_config::{DeniedPublish, MqttConfig};
use kenko_ingest::decode::{RejectCode, Rejection};
use kenko_ingest::pipeline::{Origin, Outcome, Reply, Submission};
use rumqttd::protocol::{
    DisconnectReasonCode, Filter as SubFilter, Packet, PingResp, PubAck, PubAckProperties,
    PubAckReason, PubComp, PubCompReason, PubRec, PubRecProperties, PubRecReason, PubRel, Publish,
    PublishProperties, QoS, RetainForwardRule, SubAck, SubAckProperties, Subscribe,
    SubscribeProperties, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{End, Session};
use crate::acl::Request;
use crate::codec::Version;
use crate::event_time;
use crate::packet::{check_topic_name, qos_and_pkid, telemetry_device, PROTOBUF_CONTENT_TYPE};
use crate::route::inflight::{In, Inbound};
use crate::route::message::{Message, RetainHandling, SubOptions};
use crate::route::topic::{parse_filter, Filter};

/// Topic aliases a client may define (announced as Topic Alias Maximum in CONNACK).
pub(crate) const TOPIC_ALIAS_MAX: u16 = 32;

/// The client's side of the session: what it published and the hub has not finished.
pub(super) struct InboundPart {
    /// QoS 1 and 2 publishes not yet finished, by packet id.
    pub(super) table: Inbound,
    /// Topics the client named by alias (MQTT 5), at most [`TOPIC_ALIAS_MAX`].
    aliases: HashMap<u16, Bytes>,
    /// Publishes the client may still send before being read more slowly.
    rate: TokenBucket,
    outcomes_tx: flume::Sender<Outcome>,
    pub(super) outcomes_rx: flume::Receiver<Outcome>,
    /// Telemetry handed to the pipeline whose verdict has not come back.
    pub(super) pending: usize,
    /// Acknowledgements of routed publishes written but not yet sent: until they are, their
    /// publishes count against the Receive Maximum.
    pub(super) unsent_acks: usize,
}

impl InboundPart {
    pub(super) fn new(table: Inbound, config: &MqttConfig) -> InboundPart {
        let (outcomes_tx, outcomes_rx) = flume::unbounded();
        InboundPart {
            table,
            aliases: HashMap::new(),
            rate: TokenBucket::new(config.max_publish_rate, config.publish_burst),
            outcomes_tx,
            outcomes_rx,
            pending: 0,
            unsent_acks: 0,
        }
    }
}

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
    pub(super) async fn on_packet(&mut self, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(publish, props) => self.on_publish(publish, props).await?,
            Packet::PubRel(rel, _) => self.on_pubrel(rel),
            Packet::PubAck(ack, _) => self.on_puback(ack.pkid),
            Packet::PubRec(rec, _) => self.on_pubrec(rec.pkid, is_refusal(rec.reason)),
            Packet::PubComp(comp, _) => self.on_pubcomp(comp.pkid),
            Packet::Subscribe(subscribe, props) => self.on_subscribe(subscribe, props)?,
            Packet::Unsubscribe(unsubscribe, _) => self.on_unsubscribe(unsubscribe),
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
        self.check_receive_maximum(qos, pkid)?;
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
        match telemetry_device(topic) {
            None => {
                self.route_publish(publish, props, qos, pkid);
                Ok(())
            }
            Some(device) => {
                let device = device.to_owned();
                self.submit_telemetry(device, publish, props, qos, pkid)
                    .await
            }
        }
    }

    /// MQTT-3.3.4-7: an MQTT 5 client may not exceed the Receive Maximum it was given; an
    /// MQTT 3.1.1 client is read no further meanwhile ([`Session::may_read`]).
    fn check_receive_maximum(&mut self, qos: QoS, pkid: u16) -> Result<(), End> {
        if qos == QoS::AtMostOnce || self.inbound.table.get(pkid).is_some() {
            return Ok(());
        }
        let max = usize::from(self.shared.config.receive_maximum);
        let open = self.inbound.table.len() + self.inbound.unsent_acks;
        if self.codec.version() == Version::V5 && open >= max {
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
        Ok(())
    }

    /// A publish that is not telemetry: routed now and acknowledged (MQTT-4.3.3-10: a QoS 2
    /// resend before PUBREL is the same message, answered and not routed again).
    fn route_publish(
        &mut self,
        publish: Publish,
        mut props: Option<PublishProperties>,
        qos: QoS,
        pkid: u16,
    ) {
        if qos == QoS::ExactlyOnce && self.inbound.table.get(pkid) == Some(In::AwaitingRelease) {
            debug!(
                pkid,
                "QoS 2 resend before PUBREL; answered, not routed again"
            );
            self.write(pubrec(pkid));
            return;
        }
        event_time::strip(&mut props);
        if let Ok(topic) = std::str::from_utf8(&publish.topic) {
            let message = Message::new(
                topic.into(),
                publish.payload,
                qos,
                publish.retain,
                props,
                Some(self.route.id()),
            );
            self.shared.router.publish(message);
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.inbound.unsent_acks += 1;
                self.write(puback(pkid));
            }
            QoS::ExactlyOnce => {
                self.inbound.table.set(pkid, In::AwaitingRelease);
                self.write(pubrec(pkid));
            }
        }
    }

    async fn submit_telemetry(
        &mut self,
        device: String,
        publish: Publish,
        props: Option<PublishProperties>,
        qos: QoS,
        pkid: u16,
    ) -> Result<(), End> {
        match (qos, self.inbound.table.get(pkid)) {
            // A resend after our PUBREC was lost: the message is already stored.
            (QoS::ExactlyOnce, Some(In::AwaitingRelease)) => {
                self.write(pubrec(pkid));
                return Ok(());
            }
            // The verdict on the first copy will answer it.
            (QoS::ExactlyOnce, Some(In::Pipeline(_))) => return Ok(()),
            (QoS::AtMostOnce, _) => {}
            (qos, _) => self.inbound.table.set(pkid, In::Pipeline(qos)),
        }
        let reply = (qos != QoS::AtMostOnce).then(|| Reply {
            to: self.inbound.outcomes_tx.clone(),
            token: (qos as u32) << 16 | u32::from(pkid),
            refusable: self.codec.version() == Version::V5,
        });
        self.inbound.pending += usize::from(reply.is_some());
        let protobuf = device_topic_is_protobuf(&publish.topic)
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

    /// PUBREL: the client's QoS 2 publish is finished (MQTT-4.3.3-11).
    fn on_pubrel(&mut self, rel: PubRel) {
        let reason = match self.inbound.table.get(rel.pkid) {
            Some(In::AwaitingRelease) => {
                self.inbound.table.remove(rel.pkid);
                PubCompReason::Success
            }
            _ => PubCompReason::PacketIdentifierNotFound,
        };
        self.write(Packet::PubComp(
            PubComp {
                pkid: rel.pkid,
                reason,
            },
            None,
        ));
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

    /// Checks each filter and the ACL, subscribes the allowed ones and answers with one
    /// SUBACK: the granted QoS, or a failure code (3.1.1: 0x80; 5: 0x87 not authorized, 0x8F
    /// invalid filter). The retained messages follow the SUBACK.
    fn on_subscribe(
        &mut self,
        subscribe: Subscribe,
        props: Option<SubscribeProperties>,
    ) -> Result<(), End> {
        let id = props.and_then(|p| p.id);
        if id == Some(0) {
            // MQTT-3.8.2.1.2: a Subscription Identifier of 0 is a Protocol Error.
            info!("closing connection: Subscription Identifier 0");
            return Err(End::ProtocolError(DisconnectReasonCode::ProtocolError));
        }
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut denied = Vec::new();
        for filter in &subscribe.filters {
            let code = self.subscribe_one(filter, id)?;
            if code_is_failure(code) {
                denied.push(filter.path.as_str());
            }
            codes.push(code);
        }
        let props = (!denied.is_empty() && self.codec.version() == Version::V5).then(|| {
            info!(filters = ?denied, "subscription denied");
            SubAckProperties {
                reason_string: Some(format!("not allowed to subscribe to {}", denied.join(", "))),
                user_properties: vec![],
            }
        });
        let ack = SubAck {
            pkid: subscribe.pkid,
            return_codes: codes,
        };
        self.write(Packet::SubAck(ack, props));
        Ok(())
    }

    fn subscribe_one(
        &mut self,
        filter: &SubFilter,
        id: Option<usize>,
    ) -> Result<SubscribeReasonCode, End> {
        let v5 = self.codec.version() == Version::V5;
        let failure = |v5_code| {
            if v5 {
                v5_code
            } else {
                SubscribeReasonCode::Failure
            }
        };
        let plain = match parse_filter(&filter.path) {
            Ok(Filter::Plain(f)) => f,
            Ok(Filter::Shared { filter: f, .. }) => {
                if filter.nolocal {
                    // MQTT-3.8.3-4: No Local on a shared subscription is a protocol error.
                    info!("closing connection: No Local set on a shared subscription");
                    return Err(End::ProtocolError(DisconnectReasonCode::ProtocolError));
                }
                f
            }
            Err(e) => {
                info!(filter = %filter.path, error = %e, "subscription refused: invalid filter");
                return Ok(failure(SubscribeReasonCode::TopicFilterInvalid));
            }
        };
        let request = Request::Subscribe {
            filter: plain,
            qos: filter.qos as u8,
        };
        if !self.acl.decide(&self.peer.principal(), &request).allowed {
            return Ok(failure(SubscribeReasonCode::NotAuthorized));
        }
        let options = SubOptions {
            qos: filter.qos,
            no_local: filter.nolocal,
            retain_as_published: filter.preserve_retain,
            retain_handling: match filter.retain_forward_rule {
                RetainForwardRule::OnEverySubscribe => RetainHandling::Always,
                RetainForwardRule::OnNewSubscribe => RetainHandling::IfNew,
                RetainForwardRule::Never => RetainHandling::Never,
            },
            id,
        };
        match self
            .shared
            .router
            .subscribe(&self.route, &filter.path, options)
        {
            Ok(_) => Ok(match filter.qos {
                QoS::AtMostOnce => SubscribeReasonCode::QoS0,
                QoS::AtLeastOnce => SubscribeReasonCode::QoS1,
                QoS::ExactlyOnce => SubscribeReasonCode::QoS2,
            }),
            Err(e) => {
                info!(filter = %filter.path, error = %e, "subscription refused: invalid filter");
                Ok(failure(SubscribeReasonCode::TopicFilterInvalid))
            }
        }
    }

    /// One UNSUBACK with a reason per filter (MQTT-3.10.4-5, -6; 5: 0x11 when there was no
    /// such subscription).
    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                if self.shared.router.unsubscribe(&self.route, filter) {
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        let ack = UnsubAck {
            pkid: unsubscribe.pkid,
            reasons,
        };
        self.write(Packet::UnsubAck(ack, None));
    }

    /// A publish kenko will not accept: MQTT 5 says why in the acknowledgement; MQTT 3.1.1 has
    /// no negative acknowledgement, so it is acknowledged, logged and counted.
    pub(super) fn refuse_publish(
        &mut self,
        qos: QoS,
        pkid: u16,
        reason: PubAckReason,
        why: String,
    ) {
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
                self.inbound.table.remove(pkid);
                let (reason, props) = match v5 {
                    true => (reason, Some(ack_reason(why))),
                    false => (PubAckReason::Success, None),
                };
                self.write(Packet::PubAck(PubAck { pkid, reason }, props));
            }
            QoS::ExactlyOnce => {
                let (reason, props) = if v5 {
                    self.inbound.table.remove(pkid);
                    let props = PubRecProperties {
                        reason_string: Some(why),
                        user_properties: vec![],
                    };
                    (pubrec_reason(reason), Some(props))
                } else {
                    self.inbound.table.set(pkid, In::AwaitingRelease);
                    (PubRecReason::Success, None)
                };
                self.write(Packet::PubRec(PubRec { pkid, reason }, props));
            }
        }
    }

    pub(super) fn on_outcome(&mut self, outcome: Outcome) {
        self.inbound.pending = self.inbound.pending.saturating_sub(1);
        let pkid = (outcome.token & 0xffff) as u16;
        let qos = if outcome.token >> 16 == 2 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        match outcome.verdict {
            Ok(()) => match qos {
                QoS::ExactlyOnce => {
                    self.inbound.table.set(pkid, In::AwaitingRelease);
                    self.write(pubrec(pkid));
                }
                _ => {
                    self.inbound.table.remove(pkid);
                    self.write(puback(pkid));
                }
            },
            Err(rejection)
                if rejection.code == RejectCode::LogFull
                    && self.codec.version() == Version::V311 =>
            {
                // Not stored, and 3.1.1 has no negative acknowledgement: no PUBACK, so the
                // device keeps the message and sends it again when it reconnects.
                self.inbound.table.remove(pkid);
                debug!(pkid, "not acknowledged: the write-ahead log is full");
            }
            Err(rejection) => {
                // The message is dead-lettered (or, with a full log, refused for now with
                // 0x97) and its reason published on devices/{id}/errors.
                self.refuse_publish(qos, pkid, rejection_reason(&rejection), rejection.message);
            }
        }
    }

    /// Whether to read from the client now: not while it has as many unanswered QoS 1/2
    /// publishes as the receive maximum (an MQTT 3.1.1 client cannot be told the limit, so
    /// it is pushed back; an MQTT 5 client that ignores it is disconnected).
    pub(super) fn may_read(&self) -> bool {
        self.inbound.table.len() < usize::from(self.shared.config.receive_maximum)
            || self.codec.version() == Version::V5
    }

    /// Waits while the client publishes faster than `mqtt.max_publish_rate` allows: its
    /// packets stay in the socket meanwhile, which pushes back on it.
    pub(super) async fn throttle(&mut self) -> Result<(), End> {
        let Some(wait) = self.inbound.rate.take() else {
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
            match self.inbound.aliases.get(&alias) {
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
            self.inbound.aliases.insert(alias, publish.topic.clone());
        }
        Ok((publish, props))
    }
}

fn device_topic_is_protobuf(topic: &[u8]) -> bool {
    topic.ends_with(b"/pb")
}

fn puback(pkid: u16) -> Packet {
    let reason = PubAckReason::Success;
    Packet::PubAck(PubAck { pkid, reason }, None)
}

fn pubrec(pkid: u16) -> Packet {
    let reason = PubRecReason::Success;
    Packet::PubRec(PubRec { pkid, reason }, None)
}

fn ack_reason(why: String) -> PubAckProperties {
    PubAckProperties {
        reason_string: Some(why),
        user_properties: vec![],
    }
}

/// A PUBREC or SUBACK code of 0x80 or above is a failure (MQTT 5 2.4).
pub(super) fn is_refusal(reason: PubRecReason) -> bool {
    !matches!(
        reason,
        PubRecReason::Success | PubRecReason::NoMatchingSubscribers
    )
}

fn code_is_failure(code: SubscribeReasonCode) -> bool {
    !matches!(
        code,
        SubscribeReasonCode::QoS0 | SubscribeReasonCode::QoS1 | SubscribeReasonCode::QoS2
    )
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

pub(super) fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
