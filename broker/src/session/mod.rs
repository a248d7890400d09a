//! A connected client: the loop that moves packets between its socket, kenko's router and
//! the ingest pipeline, in three parts over the session's two in-flight tables: what the
//! client publishes and subscribes (`inbound`), what the hub delivers to it (`outbound`), and
//! how the connection ends, will included (`end`).
//!
//! Telemetry (`devices/{id}/telemetry`) does not go through the router: it goes to the ingest
//! pipeline, and its PUBACK (QoS 1) or PUBREC (QoS 2) is written only when the pipeline says the
//! message is stored or durably dead-lettered. Everything else is routed at once.

mod end;
mod inbound;
mod keep_alive;
mod outbound;
mod read;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{self, DisconnectReasonCode, LastWill, LastWillProperties, Packet};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::acl::Principal;
use crate::auth::Identity;
use crate::authz::AclView;
use crate::codec::Codec;
use crate::connection::Stream;
use crate::route;
use crate::sessions::Registration;
use crate::Shared;

pub(crate) use end::{granted_session_expiry, outlive};
use inbound::InboundPart;
pub(crate) use inbound::TOPIC_ALIAS_MAX;
use keep_alive::KeepAlive;
use outbound::OutboundPart;
use read::read_some;

/// How long a connection waits, at shutdown, for verdicts on messages it already handed over.
const DRAIN_WAIT: Duration = Duration::from_secs(10);
/// How long the hub tries to deliver its last packets to a client it is disconnecting.
const LAST_WRITE: Duration = Duration::from_secs(2);
/// A client that takes longer than this to accept what the hub writes is cut off, so that it
/// cannot hold its session (or a shutdown) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of deliveries written before the socket is flushed and the client read again.
const WRITE_BATCH: usize = 64 * 1024;
/// The output buffer a connection keeps between writes; a larger one is given back.
const OUT_KEPT: usize = 4 * 1024;

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
}

/// A Session Expiry Interval that never ends (MQTT 5 3.1.2.11.2).
pub(crate) const NEVER: u32 = u32::MAX;

/// How the session outlives its connection.
pub(crate) struct SessionLife {
    /// The session's name in the router ([`crate::sessions::router_id`]).
    pub(crate) router_id: String,
    /// The session may outlive the connection (no Clean Session, or an expiry interval).
    pub(crate) persistent: bool,
    /// Seconds the session lasts after the connection: 0 it ends with it, [`NEVER`] never.
    pub(crate) expiry_s: u32,
}

/// Who is connected.
pub(crate) struct Peer {
    pub(crate) identity: Arc<Identity>,
    pub(crate) client_id: Arc<str>,
    pub(crate) username: Option<String>,
    /// How many QoS 1 and 2 deliveries the client takes unacknowledged (MQTT 5 Receive
    /// Maximum; none given: `mqtt.max_inflight`).
    pub(crate) receive_maximum: Option<u16>,
}

impl Peer {
    pub(crate) fn principal(&self) -> Principal<'_> {
        self.identity
            .principal(&self.client_id, self.username.as_deref())
    }
}

/// The connection's will, published when it ends abnormally (or on request, MQTT 5).
pub(crate) struct Will {
    pub(crate) will: LastWill,
    pub(crate) props: Option<LastWillProperties>,
}

/// What a connection is given at CONNACK.
pub(crate) struct Connected {
    pub(crate) stream: Stream,
    pub(crate) codec: Codec,
    /// Bytes read after the CONNECT.
    pub(crate) read_buf: BytesMut,
    pub(crate) peer: Peer,
    pub(crate) acl: AclView,
    pub(crate) keep_alive: u16,
    pub(crate) will: Option<Will>,
    pub(crate) registration: Registration,
    pub(crate) life: SessionLife,
    /// The session in the router, and whether it was resumed.
    pub(crate) route: Arc<route::Session>,
    pub(crate) resumed: bool,
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
    registration: Registration,
    life: SessionLife,
    route: Arc<route::Session>,
    inbound: InboundPart,
    outbound: OutboundPart,
    /// Boxed: most connections have none, and every idle connection pays for this struct.
    will: Option<Box<Will>>,
}

impl Session {
    pub(crate) fn new(connected: Connected, shared: Arc<Shared>) -> Session {
        shared.stats.connected.fetch_add(1, Ordering::Relaxed);
        // The connection holds the in-flight tables while it lives; they go back to the
        // router's session when it ends.
        let state = std::mem::take(&mut *connected.route.state());
        let window = connected
            .peer
            .receive_maximum
            .unwrap_or(shared.config.max_inflight)
            .max(1);
        let inbound = InboundPart::new(state.inbound, &shared.config);
        let mut session = Session {
            stream: connected.stream,
            codec: connected.codec,
            read_buf: connected.read_buf,
            out: BytesMut::new(),
            peer: connected.peer,
            acl: connected.acl,
            keep_alive: connected.keep_alive,
            registration: connected.registration,
            life: connected.life,
            route: connected.route,
            inbound,
            outbound: OutboundPart::new(state.outbound, usize::from(window)),
            will: connected.will.map(Box::new),
            shared,
        };
        if connected.resumed {
            session.resend();
        }
        session
    }

    pub(crate) async fn run(mut self) {
        let end = self.serve().await;
        let shared = self.shared.clone();
        self.finish(end).await;
        shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve(&mut self) -> End {
        let mut keep_alive = KeepAlive::new(self.keep_alive);
        // Packets that arrived together with CONNECT.
        if let Err(end) = self.on_bytes().await {
            return end;
        }
        let route = self.route.clone();
        // Waiting on these stays registered across turns of the loop. The shutdown token is
        // every connection's: each waits on a child of its own, whose lock is its alone.
        let shutdown = self.shared.shutdown.child_token().cancelled_owned();
        let takeover = self.registration.takeover.clone().cancelled_owned();
        tokio::pin!(shutdown, takeover);
        loop {
            let more = self.deliver_queued();
            if let Err(end) = self.flush().await {
                return end;
            }
            if more {
                // The batch was cut short to write: go on after a look at the socket.
                tokio::task::yield_now().await;
            }
            if !self.may_read() {
                keep_alive.heard();
            }
            tokio::select! {
                biased;
                _ = &mut takeover => return End::TakenOver,
                _ = &mut shutdown => return End::Shutdown,
                Ok(outcome) = self.inbound.outcomes_rx.recv_async(), if self.inbound.pending > 0 => {
                    self.on_outcome(outcome);
                    while let Ok(outcome) = self.inbound.outcomes_rx.try_recv() {
                        self.on_outcome(outcome);
                    }
                }
                read = read_some(&mut self.stream, &mut self.read_buf), if self.may_read() => {
                    match read {
                        Ok(0) | Err(_) => return End::Closed,
                        Ok(_) => {
                            keep_alive.heard();
                            if let Err(end) = self.on_bytes().await {
                                return end;
                            }
                        }
                    }
                }
                _ = route.outbox.pushed(), if !more => {}
                _ = std::future::ready(()), if more => {}
                // While the hub does not read (receive maximum reached), silence is its own doing.
                _ = keep_alive.expired(), if self.may_read() => return End::KeepAliveTimeout,
            }
        }
    }

    /// Handles every whole packet buffered.
    async fn on_bytes(&mut self) -> Result<(), End> {
        loop {
            match self.codec.read(&mut self.read_buf) {
                Ok(Some(packet)) => {
                    if matches!(packet, Packet::Publish(..)) {
                        self.throttle().await?;
                    }
                    self.on_packet(packet).await?
                }
                Ok(None) => {
                    if self.read_buf.is_empty() {
                        // Nothing left over: the next read starts a buffer of its own size,
                        // and a connection that goes quiet keeps none.
                        self.read_buf = BytesMut::new();
                    }
                    return Ok(());
                }
                Err(e) => return Err(self.malformed(e)),
            }
        }
    }

    fn malformed(&mut self, e: protocol::Error) -> End {
        info!(error = %e, "closing connection: bad packet");
        End::ProtocolError(crate::codec::disconnect_reason(&e))
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
            written = tokio::time::timeout(WRITE_TIMEOUT, write_out(&mut self.stream, &self.out)) => written,
            _ = takeover.cancelled() => {
                self.out.clear();
                return Err(End::TakenOver);
            }
        };
        self.out.clear();
        self.inbound.unsent_acks = 0;
        if self.out.capacity() > OUT_KEPT {
            // A burst's buffer is not kept by a connection that may now go quiet.
            self.out = BytesMut::new();
        }
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
}

/// Writes and flushes: TLS and WebSocket layers hold bytes until flushed.
async fn write_out(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}
