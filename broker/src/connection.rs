//! A new connection up to CONNACK: learn the protocol version from the CONNECT, check the
//! client id and will, take over a live session with the same id, register with the router.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    LastWill, LastWillProperties, Login as MqttLogin, Packet,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::acl::Request;
use crate::auth::Identity;
use crate::authz::AclView;
use crate::codec::{connack_reason, peek_version, sniff, Codec, Sniff, Version};
use crate::login::{Listener, Login};
use crate::packet::{check_topic_name, telemetry_device};
use crate::router::HUB_CLIENT_ID;
use crate::session::{granted_session_expiry, Peer, Session, SessionLife, NEVER};
use crate::sessions::{router_id, Refused};
use crate::Shared;
use kenko_config::MqttConfig;

/// How long a new connection waits for the one it takes over to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

static ASSIGNED: AtomicU64 = AtomicU64::new(1);

/// A client's byte stream: plain TCP or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
pub(crate) type Stream = Box<dyn Io>;

/// How a connection reached the hub.
pub(crate) enum Transport {
    Tcp,
    Tls(TlsAcceptor),
    WebSocket,
}

/// Serves one accepted TCP connection to its end.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    let transport_name = match transport {
        Transport::Tcp => "tcp",
        Transport::Tls(_) => "tls",
        Transport::WebSocket => "websocket",
    };
    let span = info_span!(
        "conn",
        %peer,
        transport = transport_name,
        client_id = tracing::field::Empty,
        principal = tracing::field::Empty
    );
    async move {
        let limit = Duration::from_millis(shared.config.connect_timeout_ms);
        let (stream, certified): (Stream, Option<String>) = match transport {
            Transport::Tcp => (Box::new(stream), None),
            Transport::WebSocket => {
                // The HTTP upgrade counts against the connect timeout.
                let max = shared.config.max_packet_size;
                match timeout(limit, Box::pin(crate::ws::accept(stream, max))).await {
                    Ok(Ok(ws)) => (Box::new(ws), None),
                    Ok(Err(e)) => {
                        info!(error = %e, "WebSocket upgrade failed");
                        return;
                    }
                    Err(_) => {
                        info!("connection closed: no WebSocket upgrade within the connect timeout");
                        return;
                    }
                }
            }
            Transport::Tls(acceptor) => {
                // The TLS handshake counts against the connect timeout.
                match timeout(limit, Box::pin(acceptor.accept(stream))).await {
                    Ok(Ok(tls)) => {
                        let certified = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(crate::tls::principal_of);
                        (Box::new(tls), certified)
                    }
                    Ok(Err(e)) => {
                        info!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        info!("connection closed: no TLS handshake within the connect timeout");
                        return;
                    }
                }
            }
        };
        // Each stage is boxed: a task's future is as large as its largest stage, and an idle
        // connection that never sends CONNECT should cost its handshake only, not the TLS
        // state or the session it may never have (13 kB before, in a debug build).
        match Box::pin(handshake(stream, certified, peer.ip(), &shared)).await {
            Ok(Some(session)) => Box::pin(session.run()).await,
            Ok(None) => {}
            Err(e) => debug!(error = %e, "connection ended before CONNACK"),
        }
    }
    .instrument(span)
    .await
}

/// Reads and answers CONNECT; `None` if the connection was refused or went away.
async fn handshake(
    mut stream: Stream,
    certified: Option<String>,
    source: IpAddr,
    shared: &Arc<Shared>,
) -> std::io::Result<Option<Session>> {
    let config = &shared.config;
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = Instant::now() + Duration::from_millis(config.connect_timeout_ms);
    let version = loop {
        match sniff(&buf, config.max_packet_size) {
            Sniff::NeedMore => {}
            Sniff::Version(v) => break v,
            Sniff::Unsupported(level) => {
                info!(
                    level,
                    "CONNECT refused: kenko speaks MQTT 3.1.1 (level 4) and 5"
                );
                let ack = ConnAck {
                    session_present: false,
                    code: ConnectReturnCode::RefusedProtocolVersion,
                };
                let mut out = BytesMut::new();
                Codec::new(Version::V311, 16)
                    .write(Packet::ConnAck(ack, None), &mut out)
                    .map_err(std::io::Error::other)?;
                stream.write_all(&out).await?;
                stream.flush().await?;
                return Ok(None);
            }
            Sniff::TooLarge(size) if peek_version(&buf) == Some(Version::V5) => {
                // An MQTT 5 client can be told why (3.1.1 has no return code for it).
                let mut hs = Handshake {
                    stream,
                    codec: Codec::new(Version::V5, config.max_packet_size),
                };
                let why = format!(
                    "the CONNECT ({size} bytes) is larger than the hub's maximum packet size"
                );
                return hs.refuse(ConnectReturnCode::PacketTooLarge, &why).await;
            }
            other => {
                info!(
                    ?other,
                    "connection closed: first packet is not a valid CONNECT"
                );
                return Ok(None);
            }
        }
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            stream.read_buf(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) => return Ok(None),
            Err(_) => {
                info!("connection closed: no CONNECT within the connect timeout");
                return Ok(None);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    let mut codec = Codec::new(version, config.max_packet_size);
    let (
        connect,
        will,
        will_props,
        login,
        (client_max_packet, receive_maximum),
        (requested_expiry, session_expiry),
    ) = match codec.read(&mut buf) {
        Ok(Some(Packet::Connect(connect, props, will, mut will_props, login))) => {
            // MQTT-4.12.0-1: enhanced authentication (AUTH) is not offered, so a CONNECT
            // that asks for a method gets 0x8C and the connection is closed.
            if let Some(method) = props
                .as_ref()
                .and_then(|p| p.authentication_method.as_ref())
            {
                let why = format!(
                    "authentication method {method:?} is not supported; log in with a user name and password or a client certificate"
                );
                let mut hs = Handshake { stream, codec };
                return hs
                    .refuse(ConnectReturnCode::BadAuthenticationMethod, &why)
                    .await;
            }
            // MQTT-3.1.2-29: Request Problem Information 0 keeps reason strings and user
            // properties off acknowledgements.
            if props.as_ref().and_then(|p| p.request_problem_info) == Some(0) {
                codec.set_problem_info(false);
            }
            // MQTT 5: the session lasts this long after the connection (none given: 0, it
            // ends with the connection); 3.1.1: with clean session 0 it lasts, else it ends.
            let requested_expiry = match version {
                Version::V5 => props
                    .as_ref()
                    .and_then(|p| p.session_expiry_interval)
                    .unwrap_or(0),
                Version::V311 if connect.clean_session => 0,
                Version::V311 => NEVER,
            };
            let session_expiry =
                granted_session_expiry(requested_expiry, config.max_session_expiry_s);
            // MQTT-3.1.3-9: the will waits for its delay or the end of the session, whichever
            // comes first.
            if let Some(p) = will_props.as_mut() {
                p.delay_interval = p.delay_interval.map(|d| d.min(session_expiry));
            }
            let client_max_packet = props.as_ref().and_then(|p| p.max_packet_size);
            let receive_maximum = props.as_ref().and_then(|p| p.receive_maximum);
            if receive_maximum == Some(0) {
                let mut hs = Handshake { stream, codec };
                let why = "Receive Maximum 0 is a protocol error (3.1.2.11.3)";
                return hs.refuse(ConnectReturnCode::ProtocolError, why).await;
            }
            let limits = (client_max_packet, receive_maximum);
            let expiry = (requested_expiry, session_expiry);
            (connect, will, will_props, login, limits, expiry)
        }
        Err(e) if version == Version::V5 => {
            // MQTT 5 4.13.1: a CONNECT with an error may get a CONNACK that says which, before
            // the connection is closed.
            let code = connack_reason(&e);
            let why = match code {
                ConnectReturnCode::ProtocolError => {
                    "the CONNECT breaks an MQTT 5 rule: each property may be given only once"
                        .to_owned()
                }
                _ => format!("malformed CONNECT: {e}"),
            };
            let mut hs = Handshake { stream, codec };
            return hs.refuse(code, &why).await;
        }
        other => {
            info!(?other, "connection closed: malformed CONNECT");
            return Ok(None);
        }
    };
    let mut hs = Handshake { stream, codec };
    let Some(identity) = hs
        .authenticate(login.as_ref(), certified.as_deref(), source, shared)
        .await?
    else {
        return Ok(None);
    };
    tracing::Span::current().record("principal", identity.id.as_str());
    let Some((client_id, assigned)) = hs.client_id(&connect, &identity, shared).await? else {
        return Ok(None);
    };
    tracing::Span::current().record("client_id", client_id.as_str());
    let peer = Peer {
        identity,
        client_id: Arc::from(client_id),
        username: login.map(|l| l.username),
        max_packet_size: client_max_packet.and_then(|m| usize::try_from(m).ok()),
        receive_maximum,
    };
    let mut acl = AclView::new(shared.authorizer.clone(), shared.ingest.consents().clone());
    if let Some(will) = &will {
        if let Some(why) = will_problem(will) {
            let code = match hs.codec.version() {
                Version::V5 => ConnectReturnCode::TopicNameInvalid,
                Version::V311 => ConnectReturnCode::NotAuthorized,
            };
            return hs.refuse(code, &why).await;
        }
        // The will is checked now, so the client learns at once, and again when published.
        let topic = String::from_utf8_lossy(&will.topic);
        let request = Request::Publish {
            topic: &topic,
            qos: will.qos as u8,
            retain: will.retain,
        };
        if !acl.decide(&peer.principal(), &request).allowed {
            let why = format!("not authorized to publish the will on {topic}");
            return hs.refuse(ConnectReturnCode::NotAuthorized, &why).await;
        }
    }
    if shared.sessions.len() >= config.max_connections {
        return hs
            .refuse(
                busy(hs.codec.version()),
                "the hub has reached its connection limit; try again later",
            )
            .await;
    }

    let registration = match shared
        .sessions
        .register(
            peer.client_id.clone(),
            Arc::from(peer.identity.id.as_str()),
            TAKEOVER_WAIT,
        )
        .await
    {
        Ok(registration) => registration,
        Err(Refused::OtherPrincipal) => {
            return hs
                .refuse(
                    ConnectReturnCode::NotAuthorized,
                    "this client id is connected as another principal; only the same principal may take it over",
                )
                .await;
        }
        Err(Refused::StillClosing) => {
            return hs
                .refuse(
                    busy(hs.codec.version()),
                    "the previous connection with this client id is still closing; try again",
                )
                .await;
        }
    };
    let router = shared.router.clone();
    let id = router_id(&peer.identity.id, &peer.client_id);
    let clean = connect.clean_session;
    let persistent = !clean || session_expiry != 0;
    if clean && shared.sessions.forget_kept(&id) {
        // Clean Start: a session the router kept under this name is discarded first
        // (MQTT-3.1.2-4).
        if let Err(e) = shared.router.end_session(id.clone()).await {
            shared.sessions.keep(&id);
            warn!(error = %e, "cannot discard the previous session");
            let why = "the hub's router is not available";
            return hs.refuse(busy(hs.codec.version()), why).await;
        }
    }
    // A session that ends with its connection is a clean one for the router, which keeps
    // nothing of it, under a name from the pool; one that may outlive it (a session left from
    // before is resumed) goes by its own name, and is ended by the session when its time is up.
    let (link_id, clean_name) = if persistent {
        shared.sessions.keep(&id);
        (id.clone(), None)
    } else {
        let name = shared.sessions.clean_name();
        (name.link_id(), Some(name))
    };
    let life = SessionLife {
        router_id: id,
        persistent,
        expiry_s: session_expiry,
        clean_name,
    };
    // Registering blocks until the router thread answers.
    let linked = tokio::task::spawn_blocking(move || router.link(&link_id, !persistent)).await;
    let Ok(Ok((link_tx, link_rx, notification))) = linked else {
        return hs
            .refuse(
                busy(hs.codec.version()),
                "the hub's router is not available",
            )
            .await;
    };
    let Some(Packet::ConnAck(ack, router_props)) = Option::<Packet>::from(notification)
        .filter(|p| matches!(p, Packet::ConnAck(ack, _) if ack.code == ConnectReturnCode::Success))
    else {
        return hs
            .refuse(
                busy(hs.codec.version()),
                "the hub's router refused the connection",
            )
            .await;
    };
    let v5 = hs.codec.version() == Version::V5;
    let (keep_alive, server_keep_alive) = granted_keep_alive(connect.keep_alive, config, v5);
    let props = v5.then(|| ConnAckProperties {
        assigned_client_identifier: assigned,
        receive_max: Some(config.receive_maximum),
        server_keep_alive,
        // Incoming aliases are resolved by the session before the ACL sees the topic.
        topic_alias_max: Some(crate::session::TOPIC_ALIAS_MAX),
        max_packet_size: u32::try_from(config.max_packet_size).ok(),
        // The router's shared-subscription groups are global (one group name, one cursor,
        // across every filter and principal), so kenko does not offer them.
        shared_subscription_available: Some(0),
        // 3.2.2.3.2: the server's Session Expiry Interval, when it is not what was asked.
        session_expiry_interval: (session_expiry != requested_expiry).then_some(session_expiry),
        ..router_props.unwrap_or_default()
    });
    if let Err(e) = hs.send(Packet::ConnAck(ack, props)).await {
        // The client is gone before its CONNACK: the router must hear of it (it does not
        // notice a dropped link), and the session ends or expires as it would have.
        info!(error = %e, "connection closed before its CONNACK was written");
        let mut link_tx = link_tx;
        let normal = Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        };
        if link_tx.send(Packet::Disconnect(normal, None)).await.is_ok() {
            let mut life = life;
            if let Some(name) = life.clean_name.take() {
                shared.sessions.release_clean_name(name);
            }
            crate::session::outlive(shared, &peer.identity.id, &peer.client_id, &life).await;
        }
        drop(registration);
        return Err(e);
    }
    info!(version = ?hs.codec.version(), keep_alive = connect.keep_alive, clean = clean, "connected");
    Ok(Some(Session::new(
        hs.stream,
        hs.codec,
        buf,
        shared.clone(),
        peer,
        acl,
        keep_alive,
        will.map(|w| (w, will_props)),
        (link_tx, link_rx),
        registration,
        life,
    )))
}

/// The keep-alive the session holds the client to, and the Server Keep Alive to announce
/// (MQTT 5 only, 3.2.2.3.14) when it differs from what the client asked.
fn granted_keep_alive(asked: u16, config: &MqttConfig, v5: bool) -> (u16, Option<u16>) {
    let max = config.max_keep_alive_s;
    if !v5 || max == 0 || (asked != 0 && asked <= max) {
        return (asked, None);
    }
    (max, Some(max))
}

/// "Try again later": 0x89 server busy in MQTT 5, 0x03 server unavailable in 3.1.1.
fn busy(version: Version) -> ConnectReturnCode {
    match version {
        Version::V5 => ConnectReturnCode::ServerBusy,
        Version::V311 => ConnectReturnCode::ServiceUnavailable,
    }
}

/// The MQTT 3.1.1 return code (3.2.2.3) nearest to an MQTT 5 reason code.
fn v311_code(code: ConnectReturnCode) -> ConnectReturnCode {
    use ConnectReturnCode as C;
    match code {
        C::Success
        | C::RefusedProtocolVersion
        | C::ClientIdentifierNotValid
        | C::ServiceUnavailable
        | C::BadUserNamePassword
        | C::NotAuthorized => code,
        C::UnsupportedProtocolVersion => C::RefusedProtocolVersion,
        C::BadAuthenticationMethod => C::BadUserNamePassword,
        C::Banned | C::TopicNameInvalid | C::ConnectionRateExceeded => C::NotAuthorized,
        _ => C::ServiceUnavailable,
    }
}

/// Why a will cannot be accepted, if it cannot.
fn will_problem(will: &LastWill) -> Option<String> {
    match check_topic_name(&will.topic) {
        Err(why) => Some(format!("will {why}")),
        Ok(topic) if topic.starts_with('$') => {
            Some("a will may not be published on a $ topic".into())
        }
        // Telemetry goes to the stream processor, which a will never reaches.
        Ok(topic) if telemetry_device(topic).is_some() => {
            Some("a will may not be published on a telemetry topic".into())
        }
        Ok(_) => None,
    }
}

struct Handshake {
    stream: Stream,
    codec: Codec,
}

impl Handshake {
    /// Who the client is: the principal its client certificate or its username and password
    /// prove, or the anonymous principal if the hub allows it. `None` if refused.
    async fn authenticate(
        &mut self,
        login: Option<&MqttLogin>,
        certified: Option<&str>,
        source: IpAddr,
        shared: &Shared,
    ) -> std::io::Result<Option<Arc<Identity>>> {
        let bad_login = ConnectReturnCode::BadUserNamePassword;
        if let Some(cn) = certified {
            // The TLS layer verified the certificate against the operator's CA.
            let Some(identity) = shared.directory.get(cn) else {
                info!(
                    common_name = cn,
                    "client certificate names no known principal"
                );
                self.refuse(
                    ConnectReturnCode::NotAuthorized,
                    "the client certificate names no principal this hub knows",
                )
                .await?;
                return Ok(None);
            };
            if login.is_some_and(|l| l.username != cn) {
                self.refuse(
                    bad_login,
                    "the username differs from the client certificate's principal",
                )
                .await?;
                return Ok(None);
            }
            return Ok(Some(identity));
        }
        let Some(login) = login else {
            if let Some(anonymous) = shared.directory.anonymous() {
                return Ok(Some(anonymous.clone()));
            }
            self.refuse(
                ConnectReturnCode::NotAuthorized,
                "this hub needs a username and password",
            )
            .await?;
            return Ok(None);
        };
        if let Err(why) = kenko_config::check_identifier(&login.username) {
            // Wildcards, separators and NULs in identities are refused outright (the
            // CVE-2017-7650 class: a username that expands into a topic wildcard).
            self.refuse(bad_login, &format!("username {why}")).await?;
            return Ok(None);
        }
        // Throttled per source and per principal, verified off the async workers a few at
        // a time (argon2 is slow on purpose); the guard counts and logs failures.
        let verdict = shared
            .login
            .login(
                Listener::Mqtt,
                source,
                &shared.directory,
                &login.username,
                login.password.as_bytes(),
            )
            .await;
        let refusal = match verdict {
            Login::Accepted(identity) => return Ok(Some(identity)),
            Login::Refused => (bad_login, "bad username or password"),
            // 3.1.1 has no such code: v311_code makes it 0x05 not authorized.
            Login::Throttled(_) => (
                ConnectReturnCode::ConnectionRateExceeded,
                "too many login attempts; wait before trying again",
            ),
            Login::Busy => (
                busy(self.codec.version()),
                "too many logins are being verified; try again shortly",
            ),
        };
        // Logged by the guard, at a bounded rate.
        self.refuse_quietly(refusal.0, refusal.1).await?;
        Ok(None)
    }

    /// The client id to use and, if kenko chose it, the id to tell the client.
    async fn client_id(
        &mut self,
        connect: &Connect,
        identity: &Identity,
        shared: &Shared,
    ) -> std::io::Result<Option<(String, Option<String>)>> {
        let invalid = ConnectReturnCode::ClientIdentifierNotValid;
        if let Some(device) = &identity.device {
            // A device's client id is its device id; an empty one is given it.
            if connect.client_id.is_empty() && connect.clean_session {
                return Ok(Some((device.clone(), Some(device.clone()))));
            }
            if connect.client_id != *device {
                let why = format!("device {device} must connect with client id {device}");
                self.refuse(invalid, &why).await?;
                return Ok(None);
            }
            return Ok(Some((device.clone(), None)));
        }
        if shared.directory.is_device(&connect.client_id) {
            self.refuse(
                invalid,
                "this client id belongs to a registered device; only that device may use it",
            )
            .await?;
            return Ok(None);
        }
        if connect.client_id.is_empty() {
            if !connect.clean_session {
                self.refuse(invalid, "a persistent session needs a client id")
                    .await?;
                return Ok(None);
            }
            let id = format!("kenko-auto-{}", ASSIGNED.fetch_add(1, Ordering::Relaxed));
            return Ok(Some((id.clone(), Some(id))));
        }
        if let Err(why) = kenko_config::check_identifier(&connect.client_id) {
            self.refuse(invalid, &format!("client id {why}")).await?;
            return Ok(None);
        }
        if connect.client_id.starts_with(HUB_CLIENT_ID) {
            self.refuse(invalid, "client ids starting with kenko-hub are reserved")
                .await?;
            return Ok(None);
        }
        Ok(Some((connect.client_id.clone(), None)))
    }

    async fn refuse(
        &mut self,
        code: ConnectReturnCode,
        why: &str,
    ) -> std::io::Result<Option<Session>> {
        info!(?code, why, "CONNECT refused");
        self.refuse_quietly(code, why).await
    }

    /// Refuses without a log line of its own, for refusals logged at a bounded rate
    /// elsewhere (a password guesser must not fill the log).
    async fn refuse_quietly(
        &mut self,
        code: ConnectReturnCode,
        why: &str,
    ) -> std::io::Result<Option<Session>> {
        debug!(?code, why, "CONNECT refused");
        let code = match self.codec.version() {
            Version::V5 => code,
            // 3.1.1 has six return codes, and rumqttd's encoder panics on any other.
            Version::V311 => v311_code(code),
        };
        let props = (self.codec.version() == Version::V5).then(|| ConnAckProperties {
            reason_string: Some(why.to_owned()),
            ..ConnAckProperties::default()
        });
        let ack = ConnAck {
            session_present: false,
            code,
        };
        self.send(Packet::ConnAck(ack, props)).await?;
        Ok(None)
    }

    async fn send(&mut self, packet: Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        self.codec
            .write(packet, &mut out)
            .map_err(std::io::Error::other)?;
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }
}

/// Will properties travel with the will's publish.
pub(crate) fn will_publish_properties(
    props: Option<LastWillProperties>,
) -> Option<rumqttd::protocol::PublishProperties> {
    let mut props = props.map(|p| rumqttd::protocol::PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        content_type: p.content_type,
        ..Default::default()
    });
    crate::event_time::strip(&mut props);
    props
}
