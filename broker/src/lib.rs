//! kenko's MQTT broker: its own listener, connection handling and routing (MQTT 3.1.1 and
//! 5), with rumqttd's codecs for the wire. kenko owns all of it so that it decides what is
//! acknowledged and when (telemetry only once stored) and what each delivery may carry.

pub mod accept;
pub mod acl;
pub mod auth;
pub mod authz;
mod codec;
mod connect_check;
mod connection;
mod event_time;
mod hub;
pub mod login;
mod packet;
pub use packet::telemetry_device;
mod problem_info;
pub mod rate;
pub mod route;
mod session;
pub mod sessions;
mod sync;
mod sys;
pub mod tls;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use kenko_config::{AuthConfig, Config, ConfigError, MqttConfig};
use kenko_devices::Registry;
use kenko_ingest::pipeline::{IngestHandle, Notice};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use crate::accept::check_descriptor_budget;
use crate::accept::AcceptBackoff;
use crate::auth::{Directory, EntryHash};
use crate::authz::Authorizer;
use crate::connection::Transport;
use crate::login::{LoginGuard, LoginStats};
use crate::route::{QueueLimits, Router};
use crate::sessions::Sessions;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {source}; is another broker using the port? choose another with --mqtt HOST:PORT")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the hub's publisher thread: {0}")]
    Hub(std::io::Error),
    #[error(transparent)]
    Credentials(#[from] EntryHash),
    #[error("ACL rules: {0}")]
    Acl(#[from] ConfigError),
    #[error("MQTT over TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Counters for progress output and metrics.
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Clients connected now.
    pub connected: AtomicU64,
    /// Telemetry messages handed to the ingest pipeline.
    pub telemetry_in: AtomicU64,
    /// Publishes refused by the hub.
    pub publishes_refused: AtomicU64,
    /// Messages delivered to subscribers.
    pub delivered: AtomicU64,
    /// Deliveries the ACL withheld from a subscriber.
    pub withheld: AtomicU64,
    /// MQTT 5 clients disconnected for sending more unacknowledged QoS 1/2 publishes than
    /// the Receive Maximum (0x93).
    pub receive_maximum_exceeded: AtomicU64,
    /// Publishes read late because their client exceeded `mqtt.max_publish_rate`.
    pub publishes_throttled: AtomicU64,
    /// Deliveries discarded because they were larger than their MQTT 5 client accepts.
    pub too_large_for_client: AtomicU64,
    /// Logins over MQTT and HTTP: failed, throttled, refused for a full queue.
    pub login: LoginStats,
    /// The router, for its gauges and per-session drop counts.
    pub router: std::sync::OnceLock<Arc<Router>>,
}

/// State every connection shares.
pub(crate) struct Shared {
    config: MqttConfig,
    auth: AuthConfig,
    directory: Directory,
    authorizer: Arc<Authorizer>,
    /// Login limits and password verification, shared with the HTTP API.
    login: Arc<LoginGuard>,
    router: Arc<Router>,
    sessions: Arc<Sessions>,
    ingest: IngestHandle,
    shutdown: CancellationToken,
    stats: Arc<BrokerStats>,
}

/// A bound, not yet running broker.
pub struct Broker {
    listener: TcpListener,
    tls: Option<(TcpListener, TlsAcceptor)>,
    websocket: Option<TcpListener>,
    config: MqttConfig,
    auth: AuthConfig,
    directory: Directory,
    authorizer: Arc<Authorizer>,
    router: Arc<Router>,
    notices: flume::Sender<Notice>,
    stats: Arc<BrokerStats>,
    login: Arc<LoginGuard>,
    sessions: Arc<Sessions>,
}

impl Broker {
    /// Loads principals and ACL rules, binds the listener and starts the router and the hub's
    /// publisher. Devices are those of `devices`, shared with the ingest pipeline: a device
    /// added to or removed from it is let in or refused from the next CONNECT on.
    pub async fn bind(full: &Config, devices: Registry) -> Result<Broker, BrokerError> {
        let config = &full.mqtt;
        let directory = Directory::with_devices(full, devices)?;
        let authorizer = Arc::new(Authorizer::new(full.acl_rules()?, full.auth.acl.clone()));
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| BrokerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let tls = match &config.tls {
            Some(tls) => {
                let acceptor = crate::tls::acceptor(tls)?;
                let listener =
                    TcpListener::bind(tls.listen)
                        .await
                        .map_err(|source| BrokerError::Bind {
                            addr: tls.listen,
                            source,
                        })?;
                Some((listener, acceptor))
            }
            None => None,
        };
        let websocket = match config.websocket {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| BrokerError::Bind { addr, source })?,
            ),
            None => None,
        };
        let router = Arc::new(Router::new(QueueLimits {
            max_messages: config.max_queued_messages,
            max_bytes: config.max_queued_bytes,
        }));
        let stats = Arc::new(BrokerStats::default());
        let _ = stats.router.set(router.clone());
        let login = Arc::new(LoginGuard::new(full, stats.clone()));
        let (notices, notices_rx) = flume::bounded(16_384);
        crate::hub::spawn(router.clone(), notices_rx).map_err(BrokerError::Hub)?;
        Ok(Broker {
            listener,
            tls,
            websocket,
            config: config.clone(),
            auth: full.auth.clone(),
            directory,
            authorizer,
            router,
            notices,
            stats,
            login,
            sessions: Arc::default(),
        })
    }

    /// The clients connected now, for the HTTP API.
    pub fn connected_clients(&self) -> sessions::ConnectedClients {
        sessions::ConnectedClients(self.sessions.clone())
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The address of the TLS listener, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The address of the WebSocket listener, if there is one.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where the hub's own messages (device errors, live observations) are queued.
    pub fn notices(&self) -> flume::Sender<Notice> {
        self.notices.clone()
    }

    pub fn stats(&self) -> Arc<BrokerStats> {
        self.stats.clone()
    }

    /// The login limits and password verification MQTT uses; the HTTP API shares them, so
    /// that a guesser gains nothing by switching listeners.
    pub fn login_guard(&self) -> Arc<LoginGuard> {
        self.login.clone()
    }

    /// The ACL in force; `reload()` it on SIGHUP.
    pub fn authorizer(&self) -> Arc<Authorizer> {
        self.authorizer.clone()
    }

    /// Accepts connections until `shutdown` is cancelled, then lets every connection finish
    /// its in-flight work (acknowledging what the pipeline stores) and returns.
    pub async fn run(self, ingest: IngestHandle, shutdown: CancellationToken) {
        // Reloads the ACL file while the broker runs; stops when `run` returns.
        let _acl_watch = match self
            .authorizer
            .clone()
            .watch(Duration::from_millis(self.auth.acl_reload_ms))
        {
            Ok(poller) => poller,
            Err(e) => {
                tracing::error!(error = %e, "cannot start watching the ACL file; SIGHUP still reloads it");
                None
            }
        };
        let shared = Arc::new(Shared {
            config: self.config,
            auth: self.auth,
            directory: self.directory,
            authorizer: self.authorizer,
            login: self.login,
            router: self.router,
            sessions: self.sessions,
            ingest,
            shutdown: shutdown.clone(),
            stats: self.stats,
        });
        if shared.config.sys_interval_s > 0 {
            tokio::spawn(crate::sys::publish_every(
                Duration::from_secs(u64::from(shared.config.sys_interval_s)),
                shared.router.clone(),
                shared.stats.clone(),
                shutdown.clone(),
            ));
        }
        let tracker = TaskTracker::new();
        let mut backoff = AcceptBackoff::new("MQTT");
        let (tls_listener, acceptor) = match self.tls {
            Some((l, a)) => (Some(l), Some(a)),
            None => (None, None),
        };
        loop {
            let (accepted, transport) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => (accepted, Transport::Tcp),
                accepted = accept_or_never(tls_listener.as_ref()) => match &acceptor {
                    Some(a) => (accepted, Transport::Tls(a.clone())),
                    None => continue,
                },
                accepted = accept_or_never(self.websocket.as_ref()) => (accepted, Transport::WebSocket),
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff.accepted();
                    tracker.spawn(connection::serve(stream, peer, transport, shared.clone()));
                }
                Err(e) => backoff.failed(&e, &shutdown).await,
            }
        }
        drop(self.listener);
        drop(tls_listener);
        drop(self.websocket);
        info!(
            connections = shared.sessions.len(),
            "stopped accepting; finishing connections"
        );
        tracker.close();
        tracker.wait().await;
        info!("all connections closed");
        shared.authorizer.log_denials();
    }
}

async fn accept_or_never(
    listener: Option<&TcpListener>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// What the fuzz targets in `fuzz/` drive (see docs/fuzzing.md): the decoding a client's
/// bytes go through, without sockets, sessions or a router. Not an API of kenko.
#[doc(hidden)]
pub mod fuzzing {
    use bytes::BytesMut;
    pub use rumqttd::protocol::{
        matches, valid_filter, ConnAck, ConnAckProperties, ConnectProperties, ConnectReturnCode,
        DisconnectReasonCode, Error, LastWill, Packet, Publish, QoS,
    };

    use crate::codec::{self, Sniff, Version};

    /// The protocol level (4 or 5) the listener goes on with when a connection starts with
    /// `buf`; `None` when it waits for more bytes or closes the connection.
    pub fn sniff(buf: &[u8], max_packet_size: usize) -> Option<u8> {
        match codec::sniff(buf, max_packet_size) {
            Sniff::Version(Version::V311) => Some(4),
            Sniff::Version(Version::V5) => Some(5),
            _ => None,
        }
    }

    /// A connection's codec, as the listener builds it from the sniffed level.
    pub struct Codec(codec::Codec);

    impl Codec {
        pub fn new(v5: bool, max_packet_size: usize) -> Codec {
            let version = if v5 { Version::V5 } else { Version::V311 };
            Codec(codec::Codec::new(version, max_packet_size))
        }

        pub fn read(&self, buf: &mut BytesMut) -> Result<Option<Packet>, Error> {
            self.0.read(buf)
        }

        pub fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<(), Error> {
            self.0.write(packet, out).map_err(|e| match e {
                codec::WriteError::Encode(e) => e,
                codec::WriteError::TooLarge { size, .. } => Error::PayloadSizeLimitExceeded(size),
            })
        }
    }

    /// QoS (0, 1 or 2) and packet id of a publish.
    pub fn qos_and_pkid(publish: &Publish) -> (u8, u16) {
        let (qos, pkid) = crate::packet::qos_and_pkid(publish);
        (qos as u8, pkid)
    }

    /// The CONNACK reason code a decoded CONNECT earns by itself (MQTT 5 code and its 3.1.1
    /// return code), with the reason string; `None` if the handshake goes on.
    pub fn connect_refusal(
        client_id: &str,
        clean: bool,
        props: Option<&ConnectProperties>,
        will: Option<&LastWill>,
    ) -> Option<(ConnectReturnCode, ConnectReturnCode, String)> {
        crate::connect_check::connect_refusal(client_id, clean, props, will).map(|r| {
            let v311 = crate::connect_check::v311_code(r.code);
            (r.code, v311, r.why)
        })
    }

    pub fn check_topic_name(topic: &[u8]) -> Result<&str, &'static str> {
        crate::packet::check_topic_name(topic)
    }

    pub fn check_topic_filter(filter: &str) -> Result<(), &'static str> {
        crate::packet::check_topic_filter(filter)
    }

    pub fn telemetry_device(topic: &str) -> Option<&str> {
        crate::packet::telemetry_device(topic)
    }
}
