//! A new connection up to CONNACK: learn the protocol version from the CONNECT, check what
//! the packet says (`connect_check`), authenticate, authorize the will, take over a live
//! session with the same id, register with the router, answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, LastWill,
    LastWillProperties, Login as MqttLogin, Packet,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, info_span, Instrument};

use crate::acl::Request;
use crate::auth::Identity;
use crate::authz::{AclView, Standing};
use crate::codec::{connack_reason, peek_version, sniff, Codec, Sniff, Version};
use crate::connect_check::{connect_refusal, v311_code};
use crate::login::{Listener, Login};
use crate::route;
use crate::session::{granted_session_expiry, Connected, Peer, Session, SessionLife, Will, NEVER};
use crate::sessions::{router_id, Refused, Registration};
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

/// A decoded CONNECT.
struct Hello {
    connect: Connect,
    props: Option<ConnectProperties>,
    will: Option<LastWill>,
    will_props: Option<LastWillProperties>,
    login: Option<MqttLogin>,
}

/// How long the session lasts after the connection: what the client asked, what it gets.
#[derive(Clone, Copy)]
struct Expiry {
    requested: u32,
    granted: u32,
}

/// The session in the router, and what the connection knows of it.
struct Attached {
    route: Arc<route::Session>,
    resumed: bool,
    life: SessionLife,
}

/// Reads and answers CONNECT; `None` if the connection was refused or went away. The steps:
/// check the packet, authenticate, authorize the will, take over the client id, attach to
/// the router, answer.
async fn handshake(
    stream: Stream,
    certified: Option<String>,
    source: IpAddr,
    shared: &Arc<Shared>,
) -> std::io::Result<Option<Session>> {
    let Some((mut hs, buf, mut hello)) = read_connect(stream, &shared.config).await? else {
        return Ok(None);
    };
    if !hs.check(&hello).await? {
        return Ok(None);
    }
    let expiry = hs.agree(&mut hello, &shared.config);
    let Some(identity) = hs
        .authenticate(hello.login.as_ref(), certified.as_deref(), source, shared)
        .await?
    else {
        return Ok(None);
    };
    tracing::Span::current().record("principal", identity.id.as_str());
    let Some((client_id, assigned)) = hs.client_id(&hello.connect, &identity, shared).await? else {
        return Ok(None);
    };
    tracing::Span::current().record("client_id", client_id.as_str());
    let peer = Peer {
        identity,
        client_id: Arc::from(client_id),
        username: hello.login.take().map(|l| l.username),
        receive_maximum: hello.props.as_ref().and_then(|p| p.receive_maximum),
    };
    let mut acl = AclView::new(shared.authorizer.clone(), shared.ingest.consents().clone())
        .held_by(Standing::new(shared.clone(), peer.identity.clone()));
    if !hs
        .authorize_will(hello.will.as_ref(), &peer, &mut acl)
        .await?
    {
        return Ok(None);
    }
    let Some(registration) = hs.take_over(&peer, shared).await? else {
        return Ok(None);
    };
    registration.describe(crate::sessions::About {
        since_ms: jiff::Timestamp::now().as_millisecond(),
        source,
        protocol: match hs.codec.version() {
            Version::V5 => "5",
            _ => "3.1.1",
        },
    });
    let clean = hello.connect.clean_session;
    let attached = attach(&peer, clean, expiry.granted, shared);
    let v5 = hs.codec.version() == Version::V5;
    let (keep_alive, server_keep_alive) =
        granted_keep_alive(hello.connect.keep_alive, &shared.config, v5);
    let connack = connack(
        attached.resumed,
        assigned,
        expiry,
        server_keep_alive,
        &shared.config,
        v5,
    );
    if let Err(e) = hs.send(connack).await {
        leave_unanswered(&attached, &peer, shared);
        return Err(e);
    }
    info!(version = ?hs.codec.version(), keep_alive = hello.connect.keep_alive, clean = clean, "connected");
    let connected = Connected {
        stream: hs.stream,
        codec: hs.codec,
        read_buf: buf,
        peer,
        acl,
        keep_alive,
        will: hello.will.map(|will| Will {
            will,
            props: hello.will_props,
        }),
        registration,
        life: attached.life,
        route: attached.route,
        resumed: attached.resumed,
    };
    Ok(Some(Session::new(connected, shared.clone())))
}

/// Attaches the session to the router: Clean Start discards a session kept under this name
/// (MQTT-3.1.2-4); otherwise it is resumed.
fn attach(peer: &Peer, clean: bool, session_expiry: u32, shared: &Shared) -> Attached {
    let id = router_id(&peer.identity.id, &peer.client_id);
    let (route, resumed) = shared.router.attach(&id, clean);
    let life = SessionLife {
        router_id: id,
        persistent: !clean || session_expiry != 0,
        expiry_s: session_expiry,
    };
    Attached {
        route,
        resumed,
        life,
    }
}

/// A client gone before its CONNACK was written: its session ends or expires as the end of
/// its connection would have made it.
fn leave_unanswered(attached: &Attached, peer: &Peer, shared: &Arc<Shared>) {
    info!("connection closed before its CONNACK was written");
    let keep = attached.life.persistent && attached.life.expiry_s != 0;
    shared.router.detach(&attached.route, keep);
    if keep {
        crate::session::outlive(shared, &peer.identity.id, &peer.client_id, &attached.life);
    }
}

/// The largest packet the client takes (MQTT 5 Maximum Packet Size), if it said. (0 is a
/// protocol error, refused with a CONNACK it must still get.)
fn client_max_packet(props: Option<&ConnectProperties>) -> Option<usize> {
    props
        .and_then(|p| p.max_packet_size)
        .filter(|&m| m > 0)
        .and_then(|m| usize::try_from(m).ok())
}

/// Reads the CONNECT: the protocol level first, then the whole packet. A CONNECT kenko cannot
/// read is answered here (where the protocol allows an answer) and gives `None`.
async fn read_connect(
    mut stream: Stream,
    config: &MqttConfig,
) -> std::io::Result<Option<(Handshake, BytesMut, Hello)>> {
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
                hs.refuse(ConnectReturnCode::PacketTooLarge, &why).await?;
                return Ok(None);
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
    match codec.read(&mut buf) {
        Ok(Some(Packet::Connect(connect, props, will, will_props, login))) => {
            // Every answer from here on keeps to it, the CONNACK included (MQTT-3.2.2-19).
            codec.set_client_max_packet_size(client_max_packet(props.as_ref()));
            let hello = Hello {
                connect,
                props,
                will,
                will_props,
                login,
            };
            Ok(Some((Handshake { stream, codec }, buf, hello)))
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
            hs.refuse(code, &why).await?;
            Ok(None)
        }
        other => {
            info!(?other, "connection closed: malformed CONNECT");
            Ok(None)
        }
    }
}

/// The CONNACK of an accepted connection, with what kenko tells an MQTT 5 client about the
/// session it gets.
fn connack(
    session_present: bool,
    assigned: Option<String>,
    expiry: Expiry,
    server_keep_alive: Option<u16>,
    config: &MqttConfig,
    v5: bool,
) -> Packet {
    let props = v5.then(|| ConnAckProperties {
        assigned_client_identifier: assigned,
        receive_max: Some(config.receive_maximum),
        server_keep_alive,
        // Incoming aliases are resolved by the session before the ACL sees the topic.
        topic_alias_max: Some(crate::session::TOPIC_ALIAS_MAX),
        max_packet_size: u32::try_from(config.max_packet_size).ok(),
        // 3.2.2.3.2: the server's Session Expiry Interval, when it is not what was asked.
        session_expiry_interval: (expiry.granted != expiry.requested).then_some(expiry.granted),
        ..Default::default()
    });
    let ack = ConnAck {
        session_present,
        code: ConnectReturnCode::Success,
    };
    Packet::ConnAck(ack, props)
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

    /// Refuses a CONNECT that is refused for what it says alone ([`connect_refusal`]);
    /// `false` if refused.
    async fn check(&mut self, hello: &Hello) -> std::io::Result<bool> {
        let refusal = connect_refusal(
            &hello.connect.client_id,
            hello.connect.clean_session,
            hello.props.as_ref(),
            hello.will.as_ref(),
        );
        let Some(refusal) = refusal else {
            return Ok(true);
        };
        self.refuse(refusal.code, &refusal.why).await?;
        Ok(false)
    }

    /// What the CONNECT sets for the rest of the connection: reason strings on or off, how
    /// long the session lasts, how long the will may wait.
    fn agree(&mut self, hello: &mut Hello, config: &MqttConfig) -> Expiry {
        let props = hello.props.as_ref();
        // MQTT-3.1.2-29: Request Problem Information 0 keeps reason strings and user
        // properties off acknowledgements.
        if props.and_then(|p| p.request_problem_info) == Some(0) {
            self.codec.set_problem_info(false);
        }
        // MQTT 5: the session lasts this long after the connection (none given: 0, it ends
        // with the connection); 3.1.1: with clean session 0 it lasts, else it ends.
        let requested = match self.codec.version() {
            Version::V5 => props.and_then(|p| p.session_expiry_interval).unwrap_or(0),
            Version::V311 if hello.connect.clean_session => 0,
            Version::V311 => NEVER,
        };
        let granted = granted_session_expiry(requested, config.max_session_expiry_s);
        // MQTT-3.1.3-9: the will waits for its delay or the end of the session, whichever
        // comes first.
        if let Some(p) = hello.will_props.as_mut() {
            p.delay_interval = p.delay_interval.map(|d| d.min(granted));
        }
        Expiry { requested, granted }
    }

    /// Whether the client may publish its will, if it has one; `false` if refused. The will
    /// is checked now, so the client learns at once, and again when published.
    async fn authorize_will(
        &mut self,
        will: Option<&LastWill>,
        peer: &Peer,
        acl: &mut AclView,
    ) -> std::io::Result<bool> {
        let Some(will) = will else {
            return Ok(true);
        };
        let topic = String::from_utf8_lossy(&will.topic);
        let request = Request::Publish {
            topic: &topic,
            qos: will.qos as u8,
            retain: will.retain,
        };
        if acl.decide(&peer.principal(), &request).allowed {
            return Ok(true);
        }
        let why = format!("not authorized to publish the will on {topic}");
        self.refuse(ConnectReturnCode::NotAuthorized, &why).await?;
        Ok(false)
    }

    /// Makes the client id this connection's, taking it over from a live connection of the
    /// same principal. `None` if refused.
    async fn take_over(
        &mut self,
        peer: &Peer,
        shared: &Shared,
    ) -> std::io::Result<Option<Registration>> {
        if shared.sessions.len() >= shared.config.max_connections {
            let why = "the hub has reached its connection limit; try again later";
            self.refuse(busy(self.codec.version()), why).await?;
            return Ok(None);
        }
        let registered = shared
            .sessions
            .register(
                peer.client_id.clone(),
                Arc::from(peer.identity.id.as_str()),
                TAKEOVER_WAIT,
            )
            .await;
        let (code, why) = match registered {
            Ok(registration) => return Ok(Some(registration)),
            Err(Refused::OtherPrincipal) => (
                ConnectReturnCode::NotAuthorized,
                "this client id is connected as another principal; only the same principal may take it over",
            ),
            Err(Refused::StillClosing) => (
                busy(self.codec.version()),
                "the previous connection with this client id is still closing; try again",
            ),
        };
        self.refuse(code, why).await?;
        Ok(None)
    }

    /// The client id to use and, if kenko chose it, the id to tell the client. Its shape was
    /// checked with the packet; here, whose it may be: a device's client id is its device
    /// id, and no one else's.
    async fn client_id(
        &mut self,
        connect: &Connect,
        identity: &Identity,
        shared: &Shared,
    ) -> std::io::Result<Option<(String, Option<String>)>> {
        if connect.client_id.is_empty() {
            if let Some(device) = &identity.device {
                // A device's client id is its device id; an empty one is given it (a
                // persistent session with no id is refused below).
                if connect.clean_session {
                    return Ok(Some((device.clone(), Some(device.clone()))));
                }
            } else {
                // A persistent session with no id was refused by `connect_refusal`.
                let id = format!("kenko-auto-{}", ASSIGNED.fetch_add(1, Ordering::Relaxed));
                return Ok(Some((id.clone(), Some(id))));
            }
        }
        if let Some(why) = shared
            .directory
            .client_id_refusal(identity, &connect.client_id)
        {
            self.refuse(ConnectReturnCode::ClientIdentifierNotValid, &why)
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
