//! A connected client: the loop that moves packets between its socket, the router and the
//! ingest pipeline, and the orderly end (pending verdicts, will, router disconnect).
//!
//! Telemetry (`devices/{id}/telemetry`) does not go through the router: it goes to the ingest
//! pipeline, and its PUBACK (QoS 1) or PUBREC (QoS 2) is written only when the pipeline says the
//! message is stored or durably dead-lettered. Everything else is relayed to the router, which
//! acknowledges, fans out and retains as a broker does.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use kenko_ingest::decode::{RejectCode, Rejection};
use kenko_ingest::pipeline::{Outcome, Reply, Submission};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    self, Disconnect, DisconnectReasonCode, LastWill, LastWillProperties, Packet, PingResp, PubAck,
    PubAckProperties, PubAckReason, PubComp, PubCompReason, PubRec, PubRecProperties, PubRecReason,
    Publish, PublishProperties, QoS,
};
use rumqttd::Notification;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};

use crate::codec::{Codec, Version};
use crate::connection::will_publish_properties;
use crate::packet::{check_topic_name, publish, qos_and_pkid, telemetry_device};
use crate::sessions::Registration;
use crate::Shared;

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
    /// DISCONNECT from the client; `true` if it asked for its will (MQTT 5 reason 0x04).
    Disconnect {
        with_will: bool,
    },
    /// The peer closed or the socket failed.
    Closed,
    KeepAliveTimeout,
    ProtocolError(DisconnectReasonCode),
    TakenOver,
    Shutdown,
    /// The router dropped the link; nothing more can be sent to it.
    RouterGone,
}

pub(crate) struct Session {
    stream: TcpStream,
    codec: Codec,
    read_buf: BytesMut,
    out: BytesMut,
    shared: Arc<Shared>,
    client_id: Arc<str>,
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
    /// Packets read in this round that go to the router together.
    to_router: Vec<Packet>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        stream: TcpStream,
        codec: Codec,
        read_buf: BytesMut,
        shared: Arc<Shared>,
        client_id: Arc<str>,
        keep_alive: u16,
        will: Option<(LastWill, Option<LastWillProperties>)>,
        link_tx: LinkTx,
        link_rx: LinkRx,
        registration: Registration,
    ) -> Session {
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel();
        shared.stats.connected.fetch_add(1, Ordering::Relaxed);
        Session {
            stream,
            codec,
            read_buf,
            out: BytesMut::with_capacity(4096),
            shared,
            client_id,
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
            to_router: Vec::new(),
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
                read = self.stream.read_buf(&mut self.read_buf) => {
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
                _ = sleep_or_never(expiry) => return End::KeepAliveTimeout,
            }
        }
    }

    /// Handles every whole packet buffered, then hands the router its share in one go.
    async fn on_bytes(&mut self) -> Result<(), End> {
        loop {
            match self.codec.read(&mut self.read_buf) {
                Ok(Some(packet)) => self.on_packet(packet).await?,
                Ok(None) => break,
                Err(e) => return Err(self.malformed(e)),
            }
        }
        self.send_to_router().await
    }

    fn malformed(&mut self, e: protocol::Error) -> End {
        info!(error = %e, "closing connection: bad packet");
        let code = match e {
            protocol::Error::PayloadSizeLimitExceeded(_) => DisconnectReasonCode::PacketTooLarge,
            _ => DisconnectReasonCode::MalformedPacket,
        };
        End::ProtocolError(code)
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
                    self.to_router.push(Packet::PubRel(rel, props));
                }
            }
            Packet::PingReq(_) => self.write(Packet::PingResp(PingResp)),
            Packet::Disconnect(disconnect, _) => {
                let with_will =
                    disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                return Err(End::Disconnect { with_will });
            }
            packet @ (Packet::PubAck(..)
            | Packet::PubRec(..)
            | Packet::PubComp(..)
            | Packet::Subscribe(..)
            | Packet::Unsubscribe(..)) => self.to_router.push(packet),
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
        let topic = match check_topic_name(&publish.topic) {
            Ok(topic) => topic,
            Err(why) => {
                info!(why, "closing connection: invalid topic name in PUBLISH");
                return Err(End::ProtocolError(DisconnectReasonCode::TopicNameInvalid));
            }
        };
        if topic.starts_with('$') {
            let why = format!("clients may not publish on {topic}; $ topics belong to the hub");
            self.refuse_publish(qos, pkid, PubAckReason::NotAuthorized, why);
            return Ok(());
        }
        let Some(device) = telemetry_device(topic) else {
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
        });
        self.pending += usize::from(reply.is_some());
        let submission = Submission {
            client_id: self.client_id.clone(),
            device: device.into(),
            payload: publish.payload,
            received_ms: now_ms(),
            reply,
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

    /// A publish kenko will not accept: MQTT 5 says why in the acknowledgement; MQTT 3.1.1 has
    /// no negative acknowledgement, so it is acknowledged, logged and counted.
    fn refuse_publish(&mut self, qos: QoS, pkid: u16, reason: PubAckReason, why: String) {
        warn!(why, "publish refused");
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
            Err(rejection) => {
                self.in_pipeline.remove(&pkid);
                // The message is dead-lettered and its reason published on devices/{id}/errors.
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
        if unscheduled {
            self.flush().await?;
            // The router paused this connection until its deliveries were written.
            self.link_rx.wake().await.map_err(|_| End::RouterGone)?;
        }
        Ok(())
    }

    /// Writes a router notification to the client; `true` if the router unscheduled us.
    fn on_notification(&mut self, notification: Notification) -> bool {
        if let Notification::Forward(_) = &notification {
            self.shared.stats.delivered.fetch_add(1, Ordering::Relaxed);
        }
        match Option::<Packet>::from(notification) {
            Some(packet) => {
                self.write(packet);
                false
            }
            None => true,
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

    fn write(&mut self, packet: Packet) {
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
            written = tokio::time::timeout(WRITE_TIMEOUT, self.stream.write_all(&self.out)) => written,
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
            let _ = tokio::time::timeout(LAST_WRITE, self.stream.write_all(&self.out)).await;
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

        let publish_will = match end {
            End::Disconnect { with_will } => with_will,
            End::Shutdown | End::RouterGone => false,
            End::Closed | End::KeepAliveTimeout | End::ProtocolError(_) | End::TakenOver => true,
        };
        if end == End::RouterGone {
            return;
        }
        if let (true, Some((will, props))) = (publish_will, self.will.take()) {
            info!(topic = %String::from_utf8_lossy(&will.topic), "publishing will");
            // rumqttd's router holds a QoS 2 publish until PUBREL, which a will never gets.
            let qos = if will.qos == QoS::AtMostOnce {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            let packet = publish(will.topic, will.message, qos, 1, will.retain);
            self.to_router
                .push(Packet::Publish(packet, will_publish_properties(props)));
        }
        let normal = protocol::Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        };
        self.to_router.push(Packet::Disconnect(normal, None));
        let _ = self.send_to_router().await;
        info!(?end, "disconnected");
        // Dropping the registration lets a connection that takes this client id over proceed.
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
        RejectCode::UnknownDevice | RejectCode::ClientMismatch => PubAckReason::NotAuthorized,
        RejectCode::MalformedPayload | RejectCode::Implausible | RejectCode::FutureTimestamp => {
            PubAckReason::PayloadFormatInvalid
        }
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
