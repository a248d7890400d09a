//! Typed configuration of a kenko hub: listeners, ingest tuning, the data directory and the
//! device registry. Reading a file and validating it happen here; nothing else does I/O.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod acl;
pub mod alerts;
pub mod origin;
pub mod poll;
pub mod profile;
pub mod registry;
pub mod retention;
pub mod secret;
pub mod source;

pub use alerts::{AlertConfig, Condition};
pub use origin::{Entry, Origin};
pub use profile::{
    FieldConfig, MeasuresConfig, PayloadFormat, ProfileConfig, TimeFormat, UnknownCodes,
};
pub use retention::{MetricRetention, Periods, RetentionConfig};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// An entry that parsed but is not valid, at `place` (file:line).
    #[error("{place}: {message}")]
    Entry { place: String, message: String },
}

/// The whole configuration of one hub.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the stores live (`personal.db`, `deadletter.db`, ...).
    pub data_dir: Option<PathBuf>,
    pub mqtt: MqttConfig,
    pub ingest: IngestConfig,
    /// Authentication and the ACL rule file.
    pub auth: AuthConfig,
    /// The HTTP API (consents, queries).
    pub http: HttpConfig,
    /// The write-ahead log every accepted message is on before it is acknowledged.
    pub wal: WalConfig,
    /// An InfluxDB 2.x/3.x (or InfluxDB-compatible) server the observations also go to.
    pub influxdb: Option<InfluxConfig>,
    /// Principals other than devices: services, analysts, operators, citizen apps.
    pub principals: Vec<PrincipalConfig>,
    /// The device registry: which device belongs to which citizen. Devices added with
    /// `kenko device add` live in `registry.db` beside these.
    pub devices: Vec<DeviceConfig>,
    /// Vendor payload profiles besides the built-in ones (config/profiles.toml).
    pub profiles: Vec<ProfileConfig>,
    /// Windowed outputs: sleep summaries and daily step totals.
    pub windows: WindowsConfig,
    /// How long raw observations and their rollups are kept in the embedded store.
    pub retention: RetentionConfig,
    /// Whether the embedded store (`personal.db`, `shared.db`) is written at all.
    pub store: StoreConfig,
    /// Alert rules for care services (`[[alerts]]`), evaluated as data arrives.
    pub alerts: Vec<AlertConfig>,
    /// The external MQTT broker `kenko worker` takes telemetry from (not used by `serve`).
    pub source: Option<source::SourceConfig>,
    /// The hub whose consent records and devices `kenko worker` follows (not used by
    /// `serve`).
    pub registry: Option<registry::RegistryConfig>,
    /// Where the entries are in the file this configuration was read from (not a setting).
    #[serde(skip)]
    pub origin: Origin,
}

/// `[store]`: the embedded time-series store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Write observations to `personal.db` and `shared.db`. A `kenko worker` whose
    /// observations go to InfluxDB alone may turn it off (`false`); then it needs
    /// `[influxdb]`, and windows (computed from the store) must be off too.
    pub embedded: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { embedded: true }
    }
}

/// When the stream processor's windows open and close.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WindowsConfig {
    /// Local hour (0–23, in the device's zone) at which a sleep day begins; a night's sleep
    /// summary covers the 24 hours from then. 18 keeps a night (and a night-shift worker's
    /// daytime sleep) in one window.
    pub sleep_day_start_hour: u8,
    /// Minutes after a window's end before its summary is computed; data arriving later
    /// (within `ingest.late_horizon_s`) computes it again.
    pub grace_min: u32,
    /// Compute sleep summaries and daily step totals at all.
    pub enabled: bool,
    /// Summarize only windows starting at or after this instant (RFC 3339): for workers
    /// that take over devices from others when the partition count changes
    /// (docs/scale-out.md).
    pub summarize_from: Option<String>,
    /// Summarize only windows starting before this instant (RFC 3339): for the workers
    /// that hand their devices over.
    pub summarize_before: Option<String>,
}

impl WindowsConfig {
    /// The span of window starts this process summarizes, in epoch milliseconds: from
    /// (inclusive) and before (exclusive); `None` for an open side.
    pub fn starts(&self) -> Result<(Option<i64>, Option<i64>), String> {
        let instant = |name: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| {
                    t.parse::<jiff::Timestamp>()
                        .map(|t| t.as_millisecond())
                        .map_err(|e| {
                            format!("windows.{name} {t:?} is not an RFC 3339 instant (2027-01-04T09:00:00Z): {e}")
                        })
                })
                .transpose()
        };
        let from = instant("summarize_from", &self.summarize_from)?;
        let before = instant("summarize_before", &self.summarize_before)?;
        if let (Some(from), Some(before)) = (from, before) {
            if before <= from {
                return Err(
                    "windows.summarize_before must come after windows.summarize_from".into(),
                );
            }
        }
        Ok((from, before))
    }

    /// Whether a window starting at `start_ms` is this process's to summarize.
    pub fn summarizes(&self, start_ms: i64) -> bool {
        let (from, before) = self.starts().unwrap_or_default();
        from.is_none_or(|f| start_ms >= f) && before.is_none_or(|b| start_ms < b)
    }
}

impl Default for WindowsConfig {
    fn default() -> Self {
        WindowsConfig {
            sleep_day_start_hour: 18,
            grace_min: 15,
            enabled: true,
            summarize_from: None,
            summarize_before: None,
        }
    }
}

/// The HTTP API: `/api/v1/consents` and `/api/v1/observations`, HTTP Basic with the
/// principals' ids and passwords. Off unless `listen` is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: Option<SocketAddr>,
    /// A connection that has sent part of a request's headers must complete them within
    /// this time, in milliseconds, or it is closed (slowly sent headers hold a connection).
    pub header_read_timeout_ms: u64,
    /// A connection with no request in progress, and no byte of the next one, is closed
    /// after this time, in milliseconds (idle keep-alive connections hold a descriptor).
    pub idle_timeout_ms: u64,
    /// Concurrent HTTP connections; further ones wait in the listen backlog until one
    /// closes, so that HTTP cannot use the descriptors MQTT needs.
    pub max_connections: usize,
    /// Requests per second one principal may make, on average; further requests are answered
    /// 429 with Retry-After. 0 turns the limit off.
    pub requests_per_s: u32,
    /// Requests a principal may make at once above `requests_per_s` (an app opening a page
    /// of several charts).
    pub request_burst: u32,
    /// HTTPS (rustls) on a listener of its own, same shape as `[mqtt.tls]` (client
    /// certificates are not used for HTTP: clients log in with passwords).
    pub tls: Option<TlsConfig>,
    /// Serve plain HTTP on an address other than loopback (passwords then cross the network
    /// in clear): only behind a proxy that terminates TLS on the same machine or network.
    pub plain_on_network: bool,
    /// A browser session (`POST /api/v1/session`) not used for this many seconds ends.
    pub session_idle_s: u64,
    /// A browser session ends this many seconds after its login, however much it is used.
    pub session_max_s: u64,
    /// The hooks an external MQTT broker calls to authenticate its clients and authorize
    /// their topics with kenko's principals, rules and consents (`/api/v1/mqtt/auth`,
    /// `/acl`, `/superuser`). Off unless set.
    pub mqtt_hooks: Option<MqttHooksConfig>,
    /// The address clients reach the hub's HTTP at (`https://hub.city.example`), for the
    /// links the hub writes into its answers (FHIR `fullUrl`, `next`, export URLs); without
    /// it they are built from each request's `Host` header and the listener's scheme.
    pub public_url: Option<String>,
}

/// `[http.mqtt_hooks]`: the secret the calling broker proves itself with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttHooksConfig {
    /// SHA-256 of the secret (64 hex digits; `printf %s SECRET | sha256sum`). The broker
    /// sends the secret itself, as `Authorization: Bearer SECRET` or `?token=SECRET` in
    /// the hook's URL.
    pub token_sha256: String,
}

impl MqttHooksConfig {
    /// The digest as bytes, or why it cannot be one.
    pub fn digest(&self) -> Result<[u8; 32], String> {
        let hex = self.token_sha256.trim();
        let bad = || {
            format!(
                "http.mqtt_hooks.token_sha256 must be 64 hex digits (the SHA-256 of the hooks' secret), got {} characters",
                hex.len()
            )
        };
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(digest)
    }
}

/// `http.public_url` is an http(s) origin, perhaps with a path, without a query, fragment
/// or trailing slash, so that links are it followed by `/fhir/...`.
fn check_public_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let host = rest.and_then(|r| r.split('/').next()).unwrap_or("");
    let fine = !host.is_empty()
        && !url.ends_with('/')
        && url
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '?' | '#' | '"' | '<' | '>'));
    if fine {
        Ok(())
    } else {
        Err(format!(
            "http.public_url {url:?} is not an http(s) URL such as https://hub.city.example (no query, fragment or trailing slash)"
        ))
    }
}

impl HttpConfig {
    /// Plain HTTP only on loopback, unless the operator says otherwise.
    pub fn check_plain_listen(&self, addr: SocketAddr) -> Result<(), String> {
        if addr.ip().is_loopback() || self.plain_on_network {
            return Ok(());
        }
        Err(format!(
            "http.listen {addr} is not a loopback address: passwords would cross the network in clear; serve HTTPS with [http.tls] (listen, cert, key) and keep http.listen on 127.0.0.1, or set http.plain_on_network = true behind a proxy that terminates TLS"
        ))
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            requests_per_s: 20,
            request_burst: 100,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 512,
            tls: None,
            plain_on_network: false,
            session_idle_s: 30 * 60,
            session_max_s: 12 * 3600,
            mqtt_hooks: None,
            public_url: None,
        }
    }
}

/// Limits on logins (MQTT CONNECT and HTTP Basic alike): attempts are charged to token
/// buckets per source address and per principal name before the password is verified, and
/// verifications run on a fixed set of threads behind a short queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoginConfig {
    /// Login attempts one source address (an IPv6 /64) may make at once above its rate.
    pub source_burst: u32,
    /// Login attempts per minute one source address may make, on average; a successful
    /// login gives its attempt back, so devices behind one NAT reconnect freely.
    pub source_per_minute: u32,
    /// Login attempts for one principal name at once above its rate, from addresses where
    /// the principal has not logged in before (those are never held back by it).
    pub principal_burst: u32,
    /// Login attempts per minute for one principal name, on average, from such addresses.
    pub principal_per_minute: u32,
    /// Login attempts an external broker may relay at once above its rate through the MQTT
    /// hooks when it does not say where its client is (`peerhost`); a successful login
    /// gives its attempt back, so a reconnecting fleet is not held back, but guesses spread
    /// over many names are.
    pub relay_burst: u32,
    /// Such relayed login attempts per minute from one broker, on average.
    pub relay_per_minute: u32,
    /// Threads that verify passwords (argon2 is slow on purpose); each keeps one buffer of
    /// at most 64 MiB.
    pub verify_threads: usize,
    /// Logins that may wait for a verification thread; further ones are refused at once
    /// ("server busy") rather than queued without bound.
    pub verify_queue: usize,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            source_burst: 20,
            source_per_minute: 60,
            principal_burst: 10,
            principal_per_minute: 30,
            relay_burst: 1000,
            relay_per_minute: 6000,
            verify_threads: 2,
            verify_queue: 32,
        }
    }
}

/// Sizes of the write-ahead log (`DATA_DIR/wal/`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WalConfig {
    /// The most the log may hold, in bytes. When it is full (a sink is behind, e.g. InfluxDB
    /// is down), acknowledgements are withheld until the sinks catch up; nothing is dropped.
    pub max_bytes: u64,
    /// A segment file is closed and a new one started beyond this size, in bytes.
    pub segment_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            max_bytes: 4 * 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The InfluxDB sink: observations are written, from the write-ahead log, as line protocol
/// through InfluxDB's `/api/v2/write`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    /// The organization (InfluxDB 2.x); ignored by servers without organizations.
    #[serde(default)]
    pub org: String,
    /// The environment variable that holds the API token (read at start).
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// A file that holds the API token (relative to the config file); used when the
    /// environment variable is not set.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The bucket for identified observations.
    #[serde(default = "default_personal_bucket")]
    pub bucket_personal: String,
    /// The bucket for pseudonymized observations (research).
    #[serde(default = "default_shared_bucket")]
    pub bucket_shared: String,
    /// Measurement name of identified observations.
    #[serde(default = "default_measurement")]
    pub measurement: String,
    /// Measurement name of pseudonymized observations (servers without buckets, such as
    /// VictoriaMetrics, keep the two apart by it).
    #[serde(default = "default_shared_measurement")]
    pub shared_measurement: String,
    /// Most points in one write.
    #[serde(default = "default_influx_batch")]
    pub batch_max: usize,
    /// A partial batch is written once its oldest point waited this long, in milliseconds.
    #[serde(default = "default_influx_age")]
    pub batch_age_ms: u64,
    /// A write that takes longer than this is abandoned and retried, in milliseconds.
    #[serde(default = "default_influx_timeout")]
    pub timeout_ms: u64,
    /// Longest pause between retries of a failing write, in milliseconds.
    #[serde(default = "default_influx_backoff")]
    pub max_backoff_ms: u64,
    /// Compress writes with gzip.
    #[serde(default = "default_true")]
    pub gzip: bool,
}

impl InfluxConfig {
    /// The API token: from the environment variable `token_env`, else from `token_file`
    /// (trimmed); `None` when neither is set (servers without authentication).
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        if let Ok(token) = std::env::var(&self.token_env) {
            if !token.trim().is_empty() {
                return Ok(Some(token.trim().to_owned()));
            }
        }
        match &self.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "influxdb.token_file {} is empty",
                        path.display()
                    )));
                }
                Ok(Some(token.to_owned()))
            }
            None => Ok(None),
        }
    }
}

fn default_token_env() -> String {
    "KENKO_INFLUXDB_TOKEN".to_owned()
}
fn default_personal_bucket() -> String {
    "personal".to_owned()
}
fn default_shared_bucket() -> String {
    "shared".to_owned()
}
fn default_measurement() -> String {
    "kenko".to_owned()
}
fn default_shared_measurement() -> String {
    "kenko_research".to_owned()
}
fn default_influx_batch() -> usize {
    5_000
}
fn default_influx_age() -> u64 {
    1_000
}
fn default_influx_timeout() -> u64 {
    10_000
}
fn default_influx_backoff() -> u64 {
    30_000
}
fn default_true() -> bool {
    true
}

/// What a 3.1.1 client is told when a PUBLISH is denied; 3.1.1 has no negative
/// acknowledgement (MQTT-3.3.5-2: acknowledge positively or close the connection).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeniedPublish {
    /// Close the connection, so the client knows something is wrong and nothing it sent is
    /// falsely acknowledged.
    #[default]
    Disconnect,
    /// Acknowledge and discard (counted and logged), as Mosquitto does.
    Drop,
}

/// Who may connect, and the rules of what they may do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Let clients without a username (and without a client certificate) connect as the
    /// principal `anonymous` with role `anonymous`. The ACL still decides what they may do.
    pub anonymous: bool,
    /// The ACL rule file, relative to the config file. Without it, kenko's built-in rules
    /// apply (config/acl.default.toml).
    pub acl: Option<PathBuf>,
    /// How often the ACL file is checked for changes, in milliseconds (SIGHUP reloads at once).
    pub acl_reload_ms: u64,
    /// A denied PUBLISH from an MQTT 3.1.1 client: "disconnect" or "drop".
    pub v311_denied_publish: DeniedPublish,
    /// Throttling of login attempts and the password verification queue.
    pub login: LoginConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: false,
            acl: None,
            acl_reload_ms: 250,
            v311_denied_publish: DeniedPublish::Disconnect,
            login: LoginConfig::default(),
        }
    }
}

/// A principal that is not a device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// The principal id: the MQTT username, or the common name of its client certificate.
    pub id: String,
    /// Roles the ACL rules can select, e.g. "care", "analyst", "operator", "citizen".
    #[serde(default)]
    pub roles: Vec<String>,
    /// argon2id hash in PHC format (`kenko hash-password` makes one). Without it the
    /// principal can only authenticate with a client certificate.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// For a citizen's app: the citizen it acts for (`{citizen}` in ACL patterns).
    #[serde(default)]
    pub citizen: Option<String>,
}

/// The MQTT listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Address to listen on; `127.0.0.1` keeps the hub private to this machine.
    pub listen: SocketAddr,
    /// Largest MQTT packet accepted, in bytes; larger packets close the connection
    /// (MQTT 5 clients get DISCONNECT 0x95 first).
    pub max_packet_size: usize,
    /// A connection that sends no CONNECT within this time is closed.
    pub connect_timeout_ms: u64,
    /// Concurrent connections accepted; further ones are refused with "server unavailable".
    pub max_connections: usize,
    /// Outgoing QoS 1/2 deliveries in flight per connection.
    pub max_inflight: u16,
    /// Incoming QoS 1/2 publishes a client may have unacknowledged (MQTT 5 Receive Maximum,
    /// announced in CONNACK). An MQTT 5 client that sends more is disconnected with 0x93; an
    /// MQTT 3.1.1 client, which cannot be told, is simply not read until some are answered.
    pub receive_maximum: u16,
    /// PUBLISH packets per second one client may send, on average; faster clients are read
    /// more slowly (push-back), never dropped. 0 turns the limit off.
    pub max_publish_rate: u32,
    /// PUBLISH packets a client may send at once above `max_publish_rate` (a device flushing
    /// what it held while offline).
    pub publish_burst: u32,
    /// The longest keep-alive the hub grants, in seconds. An MQTT 5 client that asks for a
    /// longer one, or for none (0), is told this value (Server Keep Alive) and held to it;
    /// 0 accepts what each client asks.
    pub max_keep_alive_s: u16,
    /// The longest a session outlives its connection, in seconds: an MQTT 3.1.1 session
    /// without clean session, and the most an MQTT 5 Session Expiry Interval is granted (a
    /// client asking for more is told this value in CONNACK). 0: such sessions never expire.
    pub max_session_expiry_s: u32,
    /// Deliveries one session may have queued (waiting for its client, or for room in its
    /// client's Receive Maximum). Beyond it, that session's QoS 0 deliveries are dropped
    /// first, then new QoS 1/2 ones; each drop is counted per session in `/metrics`.
    pub max_queued_messages: usize,
    /// Bytes (topic and payload) one session may have queued; see `max_queued_messages`.
    pub max_queued_bytes: usize,
    /// Seconds between the hub's `$SYS/broker/...` statistics; 0 turns them off.
    pub sys_interval_s: u32,
    /// A second listener for MQTT over TLS, optionally with client certificates.
    pub tls: Option<TlsConfig>,
    /// Address of a listener for MQTT over WebSocket (subprotocol `mqtt`, any path), which
    /// browser and mobile apps use. Off when absent.
    pub websocket: Option<SocketAddr>,
}

/// MQTT over TLS (rustls). Paths are relative to the config file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the TLS listener (8883 is MQTT's TLS port).
    pub listen: SocketAddr,
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that sign client certificates. With it, a client may
    /// authenticate with a certificate instead of a password: the certificate's subject
    /// common name (CN) is its principal id.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Refuse TLS clients without a valid client certificate (needs `client_ca`).
    #[serde(default)]
    pub require_client_cert: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_packet_size: 256 * 1024,
            connect_timeout_ms: 5_000,
            max_connections: 10_000,
            max_inflight: 100,
            receive_maximum: 100,
            max_publish_rate: 1_000,
            publish_burst: 2_000,
            max_keep_alive_s: 0,
            max_session_expiry_s: 7 * 24 * 3600,
            max_queued_messages: 1_000,
            max_queued_bytes: 16 * 1024 * 1024,
            sys_interval_s: 10,
            tls: None,
            websocket: None,
        }
    }
}

/// What the stream processor does with an implausible value.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Plausibility {
    /// Store it with the `implausible` flag set.
    #[default]
    Flag,
    /// Dead-letter the whole message.
    Reject,
}

/// The stream processor between the broker and the stores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Most messages written in one store transaction.
    pub batch_max: usize,
    /// How long a batch waits for more messages before it is written, in milliseconds.
    pub batch_linger_ms: u64,
    /// Messages queued between the broker and the store; when full, publishers are pushed back.
    pub queue: usize,
    /// Time zone for device timestamps that carry no offset (IANA name).
    pub default_timezone: String,
    pub plausibility: Plausibility,
    /// Republish each stored observation on `citizens/{citizen}/observations/{metric}`.
    /// Off by default: until consent-aware egress exists, anyone who can subscribe sees it.
    pub live_republish: bool,
    /// Store a citizen's data only under their `collect` consent (registry.db); without it
    /// the message is refused and counted, and its payload kept nowhere.
    pub require_consent: bool,
    /// How old an event time may be when it arrives, in seconds: late and out-of-order data
    /// (a device back from an offline period) is accepted within this horizon; older data is
    /// dead-lettered as `too_old`.
    pub late_horizon_s: u64,
    /// How far ahead of the hub's clock an event time may be, in seconds (device clocks
    /// drift); further ahead is refused as `future_timestamp`.
    pub max_future_s: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_max: 2_048,
            batch_linger_ms: 5,
            queue: 8_192,
            default_timezone: "Asia/Tokyo".to_owned(),
            plausibility: Plausibility::Flag,
            live_republish: false,
            require_consent: true,
            late_horizon_s: 7 * 24 * 3600,
            max_future_s: 5 * 60,
        }
    }
}

/// The kinds of device kenko knows; the names are those of `kenko simulate --kinds`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A bed sensor under the mattress: heart and breathing rate, movement, occupancy, sleep stage.
    Bed,
    /// A wrist wearable: heart rate, steps, SpO2, temperature.
    Wearable,
    /// A blood-pressure monitor: systolic and diastolic pressure, pulse rate.
    Bp,
    /// A weight scale: body weight and body fat.
    Scale,
    /// A thermometer: body temperature.
    Thermo,
    /// A pulse oximeter: SpO2 and pulse rate.
    Oximeter,
    /// A blood-glucose meter.
    Glucose,
}

impl DeviceKind {
    pub const ALL: [DeviceKind; 7] = [
        DeviceKind::Bed,
        DeviceKind::Wearable,
        DeviceKind::Bp,
        DeviceKind::Scale,
        DeviceKind::Thermo,
        DeviceKind::Oximeter,
        DeviceKind::Glucose,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Bed => "bed",
            DeviceKind::Wearable => "wearable",
            DeviceKind::Bp => "bp",
            DeviceKind::Scale => "scale",
            DeviceKind::Thermo => "thermo",
            DeviceKind::Oximeter => "oximeter",
            DeviceKind::Glucose => "glucose",
        }
    }

    /// The payload profile a device of this kind uses unless its entry names another.
    pub fn default_profile(self) -> &'static str {
        match self {
            DeviceKind::Bed => "bed-json-v1",
            DeviceKind::Wearable => "wearable-json-v1",
            DeviceKind::Bp => "bp-json-v1",
            DeviceKind::Scale => "scale-json-v1",
            DeviceKind::Thermo => "thermo-json-v1",
            DeviceKind::Oximeter => "oximeter-json-v1",
            DeviceKind::Glucose => "glucose-json-v1",
        }
    }
}

/// A device kind name was not one of kenko's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown device kind {0:?}; known kinds: bed, wearable, bp, scale, thermo, oximeter, glucose"
)]
pub struct UnknownKind(pub String);

impl std::str::FromStr for DeviceKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One registered device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device id; it is also its MQTT client id and the `{device_id}` of its topics.
    pub id: String,
    pub kind: DeviceKind,
    /// The citizen who uses the device.
    pub citizen: String,
    /// Payload profile; the kind's default when absent.
    #[serde(default)]
    pub profile: Option<String>,
    /// Time zone of the device's clock when its timestamps carry no offset.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Another `[[devices]]` entry (a gateway) whose messages may carry this device's
    /// readings, naming it in the field of its profile's `device`.
    #[serde(default)]
    pub gateway: Option<String>,
    /// argon2id hash (PHC format) of the device's MQTT password; its username is its id.
    /// Without it the device can only authenticate with a client certificate.
    #[serde(default)]
    pub password_hash: Option<String>,
}

impl DeviceConfig {
    pub fn profile(&self) -> &str {
        self.profile
            .as_deref()
            .unwrap_or_else(|| self.kind.default_profile())
    }
}

impl Config {
    /// Reads, parses and validates a TOML configuration file. A relative ACL file path is
    /// resolved against the config file's directory.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::from_toml(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(acl) = &mut config.auth.acl {
            resolve(acl);
        }
        if let Some(file) = config.influxdb.as_mut().and_then(|i| i.token_file.as_mut()) {
            resolve(file);
        }
        if let Some(source) = &mut config.source {
            for file in [&mut source.password_file, &mut source.ca]
                .into_iter()
                .flatten()
            {
                resolve(file);
            }
        }
        for profile in &mut config.profiles {
            if let Some(sample) = &mut profile.sample {
                resolve(sample);
                let text =
                    std::fs::read_to_string(&*sample).map_err(|source| ConfigError::Read {
                        path: sample.clone(),
                        source,
                    })?;
                profile.sample_text = Some(text);
            }
        }
        if let Some(registry) = &mut config.registry {
            for file in [&mut registry.password_file, &mut registry.ca]
                .into_iter()
                .flatten()
            {
                resolve(file);
            }
        }
        for tls in [&mut config.mqtt.tls, &mut config.http.tls]
            .into_iter()
            .flatten()
        {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                resolve(ca);
            }
        }
        Ok(config)
    }

    /// The ACL rules in force: the configured file, or the built-in rules.
    pub fn acl_rules(&self) -> Result<Vec<acl::Rule>, ConfigError> {
        match &self.auth.acl {
            Some(path) => acl::read_rules(path),
            None => acl::default_rules(),
        }
    }

    /// Parses and validates TOML text; `path` is only used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        config.origin = Origin::of(text, path);
        config.validate()?;
        Ok(config)
    }

    /// "file:line" of the principal or device entry with this id, when the configuration
    /// came from a file: for errors found in an entry after loading (e.g. by the broker).
    pub fn place_of(&self, id: &str) -> Option<String> {
        let entry = match self.principals.iter().position(|p| p.id == id) {
            Some(n) => Entry::Principal(n),
            None => Entry::Device(self.devices.iter().position(|d| d.id == id)?),
        };
        self.origin.place(entry)
    }

    /// An error about `entry`, with its file:line when known.
    fn invalid_at(&self, entry: Entry, message: String) -> ConfigError {
        match self.origin.place(entry) {
            Some(place) => ConfigError::Entry { place, message },
            None => ConfigError::Invalid(message),
        }
    }

    /// `error` about `entry`, placed at its file:line when known.
    fn locate(&self, entry: Entry, error: ConfigError) -> ConfigError {
        match error {
            ConfigError::Invalid(message) => self.invalid_at(entry, message),
            other => other,
        }
    }

    /// Time zones, checked here so that a typo is reported as what it is, where it is.
    fn check_timezones(&self) -> Result<(), ConfigError> {
        let unknown = |name: &str, of: &str| {
            format!("{of} {name:?} is not a known time zone; use an IANA name such as Asia/Tokyo")
        };
        let default = &self.ingest.default_timezone;
        if jiff::tz::TimeZone::get(default).is_err() {
            return Err(self.invalid_at(
                Entry::DefaultTimezone,
                unknown(default, "ingest.default_timezone"),
            ));
        }
        for (n, device) in self.devices.iter().enumerate() {
            if let Some(zone) = &device.timezone {
                if jiff::tz::TimeZone::get(zone).is_err() {
                    return Err(self.invalid_at(
                        Entry::DeviceTimezone(n),
                        unknown(zone, &format!("timezone of device {}", device.id)),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A principal's own fields: id, roles, citizen, hash.
    fn check_principal(&self, n: usize, principal: &PrincipalConfig) -> Result<(), ConfigError> {
        let at = |message: String| Err(self.invalid_at(Entry::Principal(n), message));
        if let Err(why) = check_identifier(&principal.id) {
            return at(format!("principal id {:?} {why}", principal.id));
        }
        if principal.id == ANONYMOUS {
            return at(format!(
                "principal id {ANONYMOUS:?} is reserved for clients without credentials (auth.anonymous)"
            ));
        }
        for role in &principal.roles {
            if let Err(why) = check_identifier(role) {
                return at(format!("role {role:?} of principal {} {why}", principal.id));
            }
            if RESERVED_ROLES.contains(&role.as_str()) {
                return at(format!(
                    "role {role:?} of principal {} is reserved: the hub gives it to devices and to clients without credentials",
                    principal.id
                ));
            }
        }
        if let Some(citizen) = &principal.citizen {
            if let Err(why) = check_identifier(citizen) {
                return at(format!(
                    "citizen id {citizen:?} of principal {} {why}",
                    principal.id
                ));
            }
        }
        check_password_hash(&principal.id, principal.password_hash.as_deref())
            .map_err(|e| self.locate(Entry::Principal(n), e))
    }

    /// Checks what serde cannot: identifiers, references and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // A message about a setting starts with its dotted name, which places it.
        let invalid = |m: String| {
            let name = m.split([' ', ':']).next().unwrap_or_default();
            Err(match self.origin.setting_place(name) {
                Some(place) => ConfigError::Entry { place, message: m },
                None => ConfigError::Invalid(m),
            })
        };
        if self.mqtt.max_packet_size < 64 {
            return invalid("mqtt.max_packet_size must be at least 64 bytes".into());
        }
        if self.mqtt.max_connections == 0 {
            return invalid("mqtt.max_connections must be at least 1".into());
        }
        if self.mqtt.max_queued_messages == 0 || self.mqtt.max_queued_bytes == 0 {
            return invalid(
                "mqtt.max_queued_messages and mqtt.max_queued_bytes must be at least 1".into(),
            );
        }
        if self.mqtt.max_inflight == 0 {
            return invalid("mqtt.max_inflight must be at least 1".into());
        }
        if self.mqtt.receive_maximum == 0 {
            return invalid("mqtt.receive_maximum must be at least 1 (MQTT 5 forbids 0)".into());
        }
        if self.mqtt.max_publish_rate > 0 && self.mqtt.publish_burst == 0 {
            return invalid(
                "mqtt.publish_burst must be at least 1 while mqtt.max_publish_rate is set".into(),
            );
        }
        if self.http.session_idle_s == 0 || self.http.session_max_s < self.http.session_idle_s {
            return invalid(
                "http.session_idle_s must be at least 1 and http.session_max_s at least as long"
                    .into(),
            );
        }
        if self.http.requests_per_s > 0 && self.http.request_burst == 0 {
            return invalid(
                "http.request_burst must be at least 1 while http.requests_per_s is set".into(),
            );
        }
        if self.http.header_read_timeout_ms == 0
            || self.http.idle_timeout_ms == 0
            || self.http.max_connections == 0
        {
            return invalid(
                "http.header_read_timeout_ms, http.idle_timeout_ms and http.max_connections must be at least 1"
                    .into(),
            );
        }
        let login = &self.auth.login;
        if login.source_burst == 0
            || login.source_per_minute == 0
            || login.principal_burst == 0
            || login.principal_per_minute == 0
            || login.relay_burst == 0
            || login.relay_per_minute == 0
            || login.verify_threads == 0
        {
            return invalid(
                "auth.login.source_burst, source_per_minute, principal_burst, principal_per_minute, relay_burst, relay_per_minute and verify_threads must be at least 1"
                    .into(),
            );
        }
        if self.ingest.batch_max == 0 || self.ingest.queue == 0 {
            return invalid("ingest.batch_max and ingest.queue must be at least 1".into());
        }
        if let Some(tls) = &self.mqtt.tls {
            if tls.require_client_cert && tls.client_ca.is_none() {
                return invalid(
                    "mqtt.tls.require_client_cert needs mqtt.tls.client_ca to verify the certificates"
                        .into(),
                );
            }
        }
        if let Some(addr) = self.http.listen {
            self.http.check_plain_listen(addr).or_else(invalid)?;
        }
        if let Some(source) = &self.source {
            source.check().or_else(invalid)?;
        }
        if let Some(registry) = &self.registry {
            registry.check().or_else(invalid)?;
            if !self.devices.is_empty() {
                return invalid(format!(
                    "registry: a worker that follows the hub's registry takes its devices from the hub; remove the {} [[devices]] of this file (the hub serves its own [[devices]] too)",
                    self.devices.len()
                ));
            }
        }
        if !self.store.embedded {
            if self.influxdb.is_none() {
                return invalid(
                    "store.embedded = false needs [influxdb]: observations would be stored nowhere"
                        .into(),
                );
            }
            if self.windows.enabled {
                return invalid("store.embedded = false needs windows.enabled = false: windows are computed from the embedded store".into());
            }
        }
        if let Some(hooks) = &self.http.mqtt_hooks {
            hooks.digest().map(|_| ()).or_else(invalid)?;
        }
        if let Some(url) = &self.http.public_url {
            check_public_url(url).or_else(invalid)?;
        }
        if let Some(tls) = &self.http.tls {
            if tls.client_ca.is_some() || tls.require_client_cert {
                return invalid(
                    "http.tls.client_ca: client certificates are not used for HTTP (clients log in with a principal's password); remove client_ca and require_client_cert from [http.tls]"
                        .into(),
                );
            }
        }
        if self.wal.segment_bytes < 4096 || self.wal.max_bytes < 2 * self.wal.segment_bytes {
            return invalid(format!(
                "wal.segment_bytes must be at least 4096 and wal.max_bytes at least twice it (got {} and {})",
                self.wal.segment_bytes, self.wal.max_bytes
            ));
        }
        if let Some(influx) = &self.influxdb {
            let scheme_ok = influx.url.starts_with("http://") || influx.url.starts_with("https://");
            if !scheme_ok {
                return invalid(format!(
                    "influxdb.url {:?} must start with http:// or https://",
                    influx.url
                ));
            }
            if influx.batch_max == 0 || influx.timeout_ms == 0 || influx.max_backoff_ms == 0 {
                return invalid(
                    "influxdb.batch_max, timeout_ms and max_backoff_ms must be at least 1".into(),
                );
            }
            for (what, name) in [
                ("bucket_personal", &influx.bucket_personal),
                ("bucket_shared", &influx.bucket_shared),
                ("measurement", &influx.measurement),
                ("shared_measurement", &influx.shared_measurement),
            ] {
                if name.is_empty()
                    || name
                        .chars()
                        .any(|c| c.is_whitespace() || c == ',' || c == '"')
                {
                    return invalid(format!(
                        "influxdb.{what} {name:?} must be non-empty, without spaces, commas or quotes"
                    ));
                }
            }
            if influx.bucket_personal == influx.bucket_shared
                && influx.measurement == influx.shared_measurement
            {
                return invalid(
                    "influxdb: identified and pseudonymized observations need different buckets or measurements"
                        .into(),
                );
            }
        }
        if self.auth.acl_reload_ms == 0 {
            return invalid("auth.acl_reload_ms must be at least 1".into());
        }
        if self.ingest.late_horizon_s == 0 {
            return invalid("ingest.late_horizon_s must be at least 1".into());
        }
        self.retention
            .check(self.ingest.late_horizon_s)
            .or_else(invalid)?;
        self.windows.starts().map(drop).or_else(invalid)?;
        if self.windows.sleep_day_start_hour > 23 {
            return invalid(format!(
                "windows.sleep_day_start_hour is {}; it must be an hour from 0 to 23",
                self.windows.sleep_day_start_hour
            ));
        }
        let profiles = profile::all_profiles(&self.profiles)?;
        let mut seen = HashSet::new();
        for (n, principal) in self.principals.iter().enumerate() {
            self.check_principal(n, principal)?;
            if !seen.insert(principal.id.as_str()) {
                return Err(self.invalid_at(
                    Entry::Principal(n),
                    format!(
                        "principal {} is listed twice; each principal id must be unique",
                        principal.id
                    ),
                ));
            }
        }
        for (n, device) in self.devices.iter().enumerate() {
            let at = |message: String| Err(self.invalid_at(Entry::Device(n), message));
            if let Err(why) = check_identifier(&device.id) {
                return at(format!("device id {:?} {why}", device.id));
            }
            if let Err(why) = check_identifier(&device.citizen) {
                return at(format!(
                    "citizen id {:?} of device {} {why}",
                    device.citizen, device.id
                ));
            }
            if !seen.insert(device.id.as_str()) {
                return at(format!(
                    "device {} is listed twice, or also as a principal; each id must be unique",
                    device.id
                ));
            }
            check_password_hash(&device.id, device.password_hash.as_deref())
                .map_err(|e| self.locate(Entry::Device(n), e))?;
            if let Some(gateway) = &device.gateway {
                if *gateway == device.id || !self.devices.iter().any(|d| d.id == *gateway) {
                    return at(format!(
                        "gateway {gateway:?} of device {} is not another [[devices]] entry; a device of the config file is registered behind another of the config file",
                        device.id
                    ));
                }
            }
            if !profiles.iter().any(|p| p.name == device.profile()) {
                let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
                return at(format!(
                    "device {} names unknown payload profile {:?}; known profiles: {}",
                    device.id,
                    device.profile(),
                    names.join(", ")
                ));
            }
        }
        self.check_alerts()?;
        self.check_timezones()
    }

    /// Alert rules: names usable in topics and payloads, unique, one condition each (their
    /// metrics are checked against the catalogue where it is known: the ingest pipeline).
    fn check_alerts(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (n, alert) in self.alerts.iter().enumerate() {
            let at = |message: String| Err(self.invalid_at(Entry::Alert(n), message));
            if let Err(why) = check_identifier(&alert.name) {
                return at(format!("alert name {:?} {why}", alert.name));
            }
            if !names.insert(alert.name.as_str()) {
                return at(format!(
                    "alert {} is listed twice; names must be unique",
                    alert.name
                ));
            }
            if let Err(why) = alert.condition() {
                return at(why);
            }
        }
        Ok(())
    }

    /// "file:line" of the n-th `[[alerts]]` entry, when the configuration came from a file.
    pub fn alert_place(&self, n: usize) -> Option<String> {
        self.origin.place(Entry::Alert(n))
    }
}

/// Roles the hub gives on its own: a principal of the configuration claiming one would pass
/// for a device, or for a client without credentials, in the ACL rules.
pub const RESERVED_ROLES: [&str; 2] = ["device", ANONYMOUS];

/// The principal of clients without credentials when `auth.anonymous` is on.
pub const ANONYMOUS: &str = "anonymous";

/// A principal's or device's `password_hash` must be an argon2id hash in PHC format.
pub fn check_password_hash(id: &str, hash: Option<&str>) -> Result<(), ConfigError> {
    match hash {
        Some(h) if !h.starts_with("$argon2id$") => Err(ConfigError::Invalid(format!(
            "password_hash of {id} is not an argon2id hash in PHC format ($argon2id$v=19$...); make one with `kenko hash-password`"
        ))),
        _ => Ok(()),
    }
}

/// Device and citizen identifiers become MQTT topic levels and client ids, so they must not
/// contain wildcards, separators or control characters.
pub fn check_identifier(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is empty".into());
    }
    if id.len() > 128 {
        return Err("is longer than 128 bytes".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| matches!(c, '+' | '#' | '/' | '$') || c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "contains {c:?}; identifiers may not contain '+', '#', '/', '$', spaces or control characters"
        ));
    }
    Ok(())
}

/// The longest client id MQTT can carry (a two-byte length prefix).
pub const MAX_CLIENT_ID_BYTES: usize = 65_535;

/// An MQTT client id of a client that is not a device (a device's client id is its device
/// id, which [`check_identifier`] rules). Any UTF-8 text of 1 to 65,535 bytes, spaces
/// included, but for `+`, `#`, `/` and control characters: the ACL's `%c` placeholder fills
/// a whole topic level with the client id, which these would turn into a wildcard or more
/// levels, and a control character would make the hub's session name (principal, U+001F,
/// client id) ambiguous.
pub fn check_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is empty".into());
    }
    if id.len() > MAX_CLIENT_ID_BYTES {
        return Err(format!("is longer than {MAX_CLIENT_ID_BYTES} bytes"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| matches!(c, '+' | '#' | '/') || c.is_control())
    {
        return Err(format!(
            "contains {c:?}; client ids may not contain '+', '#', '/' or control characters"
        ));
    }
    Ok(())
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("kenko.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").expect("empty config is valid");
        assert_eq!(config.mqtt.listen.to_string(), "127.0.0.1:1883");
        assert_eq!(config.ingest.default_timezone, "Asia/Tokyo");
        assert!(config.devices.is_empty());
    }

    #[test]
    fn devices_parse_with_default_profile() {
        let config = parse(
            r#"
            [[devices]]
            id = "bed-001"
            kind = "bed"
            citizen = "c-1"
            "#,
        )
        .expect("valid");
        assert_eq!(config.devices[0].profile(), "bed-json-v1");
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let err = parse("[mqtt]\nlisten = 12\n").expect_err("listen must be an address");
        let text = err.to_string();
        assert!(text.starts_with("kenko.toml:2:10:"), "{text}");
    }

    #[test]
    fn connection_and_login_limits_have_defaults_and_refuse_zero() {
        let config = parse("").expect("defaults");
        assert_eq!(config.http.max_connections, 512);
        assert_eq!(config.auth.login.verify_threads, 2);
        let config = parse("[http]\nidle_timeout_ms = 1500\n\n[auth.login]\nsource_burst = 5\n")
            .expect("set");
        assert_eq!(config.http.idle_timeout_ms, 1500);
        assert_eq!(config.auth.login.source_burst, 5);
        let err = parse("[http]\nmax_connections = 0\n").expect_err("no connections");
        assert!(err.to_string().contains("http.max_connections"), "{err}");
        let err = parse("[auth.login]\nverify_threads = 0\n").expect_err("no threads");
        assert!(err.to_string().contains("verify_threads"), "{err}");
    }

    #[test]
    fn unknown_option_is_refused() {
        let err = parse("[mqtt]\nlisen = \"127.0.0.1:1\"\n").expect_err("typo");
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn hostile_identifiers_are_refused() {
        // TOML spellings of the identifiers, so the NUL arrives as a real NUL.
        for id in [
            "\"bed/1\"",
            "\"bed+\"",
            "\"#\"",
            "\"$SYS\"",
            "\"\"",
            "\"a b\"",
            "\"nul\\u0000\"",
        ] {
            let text = format!("[[devices]]\nid = {id}\nkind = \"bed\"\ncitizen = \"c\"\n");
            let err = parse(&text).expect_err(id);
            assert!(err.to_string().contains("device id"), "{err}");
        }
    }

    #[test]
    fn duplicate_device_is_refused() {
        let one = "[[devices]]\nid = \"d\"\nkind = \"bed\"\ncitizen = \"c\"\n";
        let err = parse(&format!("{one}{one}")).expect_err("duplicate");
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn unknown_profile_is_refused() {
        let text = "[[devices]]\nid = \"d\"\nkind = \"bed\"\ncitizen = \"c\"\nprofile = \"x\"\n";
        let err = parse(text).expect_err("profile");
        assert!(err.to_string().contains("unknown payload profile"), "{err}");
    }

    #[test]
    fn influxdb_and_wal_settings_are_checked_and_the_token_read_from_a_file() {
        let text = "[influxdb]\nurl = \"http://127.0.0.1:8086\"\n";
        let influx = parse(text).expect("defaults").influxdb.expect("section");
        assert_eq!(
            (
                influx.bucket_personal.as_str(),
                influx.bucket_shared.as_str()
            ),
            ("personal", "shared")
        );
        for (bad, says) in [
            ("[influxdb]\nurl = \"127.0.0.1:8086\"\n", "http://"),
            (
                "[influxdb]\nurl = \"http://h\"\nbucket_personal = \"a b\"\n",
                "bucket_personal",
            ),
            (
                "[influxdb]\nurl = \"http://h\"\nbucket_shared = \"personal\"\nshared_measurement = \"kenko\"\n",
                "different buckets",
            ),
            ("[wal]\nsegment_bytes = 100\n", "wal.segment_bytes"),
            ("[wal]\nmax_bytes = 70000\nsegment_bytes = 65536\n", "twice"),
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("influx.token"), "secret-token\n").expect("write");
        std::fs::write(
            dir.path().join("kenko.toml"),
            "[influxdb]\nurl = \"http://h\"\ntoken_env = \"KENKO_TEST_NO_SUCH_VARIABLE\"\ntoken_file = \"influx.token\"\n",
        )
        .expect("write");
        let config = Config::from_file(&dir.path().join("kenko.toml")).expect("config");
        let influx = config.influxdb.expect("section");
        assert_eq!(
            influx.token().expect("token").as_deref(),
            Some("secret-token")
        );
        std::fs::write(dir.path().join("influx.token"), "  \n").expect("write");
        assert!(influx.token().is_err(), "an empty token file is an error");
    }

    #[test]
    fn invalid_principal_entries_name_file_and_line() {
        let ok = "[[principals]]\nid = \"ok\"\nroles = [\"care\"]\n\n";
        for (entry, says) in [
            (
                "[[principals]]\nid = \"p\"\nroles = [\"a b\"]\n",
                "role \"a b\" of principal p",
            ),
            (
                "[[principals]]\nid = \"p\"\nroles = [\"device\"]\n",
                "is reserved",
            ),
            (
                "[[principals]]\nid = \"p\"\npassword_hash = \"md5:abc\"\n",
                "password_hash of p is not an argon2id hash",
            ),
            ("[[principals]]\nid = \"ok\"\n", "listed twice"),
            ("[[principals]]\nid = \"p/1\"\n", "principal id \"p/1\""),
            (
                "[[principals]]\nid = \"anonymous\"\n",
                "reserved for clients",
            ),
        ] {
            let text = format!("[mqtt]\nmax_inflight = 10\n\n{ok}{entry}");
            let err = parse(&text).expect_err(entry);
            let message = err.to_string();
            // The second entry's header is line 8.
            assert!(message.starts_with("kenko.toml:8: "), "{entry}: {message}");
            assert!(message.contains(says), "{entry}: {message}");
        }
        let config = parse(&format!(
            "{ok}[[devices]]\nid = \"d\"\nkind = \"bed\"\ncitizen = \"c\"\n"
        ))
        .expect("valid");
        assert_eq!(config.place_of("ok").as_deref(), Some("kenko.toml:1"));
        assert_eq!(config.place_of("d").as_deref(), Some("kenko.toml:5"));
        assert_eq!(config.place_of("nobody"), None);
    }

    #[test]
    fn a_setting_out_of_range_names_its_line() {
        for (text, place) in [
            ("[mqtt]\nlisten = \"127.0.0.1:1\"\nmax_inflight = 0\n", "kenko.toml:3: mqtt.max_inflight"),
            ("[http]\n\nrequest_burst = 0\n", "kenko.toml:3: http.request_burst"),
            ("\n[ingest]\nqueue = 0\n", "kenko.toml:2: ingest.batch_max"),
            (
                "[influxdb]\nurl = \"http://h\"\nbucket_shared = \"personal\"\nshared_measurement = \"kenko\"\n",
                "kenko.toml:1: influxdb:",
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.to_string().starts_with(place), "{text}: {err}");
        }
    }

    #[test]
    fn a_gateway_is_another_device_of_the_file() {
        let devices = "[[devices]]\nid = \"gw\"\nkind = \"scale\"\ncitizen = \"c\"\n\n[[devices]]\nid = \"bp\"\nkind = \"bp\"\ncitizen = \"c2\"\n";
        let config = parse(&format!("{devices}gateway = \"gw\"\n")).expect("behind gw");
        assert_eq!(config.devices[1].gateway.as_deref(), Some("gw"));
        for gateway in ["hub-9", "bp"] {
            let err = parse(&format!("{devices}gateway = \"{gateway}\"\n"))
                .expect_err(gateway)
                .to_string();
            assert!(
                err.starts_with(&format!(
                    "kenko.toml:6: gateway \"{gateway}\" of device bp is not another [[devices]] entry"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn an_unknown_time_zone_is_reported_as_such_where_it_is() {
        let err = parse("[ingest]\nbatch_max = 10\ndefault_timezone = \"Asia/Tokio\"\n")
            .expect_err("zone");
        assert_eq!(
            err.to_string(),
            "kenko.toml:3: ingest.default_timezone \"Asia/Tokio\" is not a known time zone; use an IANA name such as Asia/Tokyo"
        );
        let device = "[[devices]]\nid = \"d\"\nkind = \"bed\"\ncitizen = \"c\"\ntimezone = \"Mars/Olympus\"\n";
        let err = parse(device).expect_err("device zone");
        let message = err.to_string();
        assert!(
            message.starts_with("kenko.toml:5: timezone of device d \"Mars/Olympus\""),
            "{message}"
        );
    }

    #[test]
    fn plain_http_is_for_loopback_unless_the_operator_says_otherwise() {
        let err = parse("[http]\nlisten = \"0.0.0.0:8080\"\n").expect_err("refused");
        assert!(err.to_string().contains("not a loopback address"), "{err}");
        assert!(parse("[http]\nlisten = \"[::1]:8080\"\n").is_ok());
        assert!(parse("[http]\nlisten = \"0.0.0.0:8080\"\nplain_on_network = true\n").is_ok());
        assert!(parse("[http]\npublic_url = \"https://hub.city.example/kenko\"\n").is_ok());
        for bad in [
            "hub.city.example",
            "https://",
            "https://h/",
            "https://h?x=1",
            "ftp://h",
        ] {
            let err = parse(&format!("[http]\npublic_url = \"{bad}\"\n")).expect_err(bad);
            assert!(
                err.to_string().contains("is not an http(s) URL"),
                "{bad}: {err}"
            );
        }
        let tls = "[http.tls]\nlisten = \"0.0.0.0:8443\"\ncert = \"c\"\nkey = \"k\"\n";
        assert!(parse(tls).is_ok());
        let err = parse(&format!("{tls}client_ca = \"ca.pem\"\n")).expect_err("refused");
        assert!(err.to_string().contains("not used for HTTP"), "{err}");
    }

    #[test]
    fn a_worker_following_a_hub_lists_no_devices_of_its_own() {
        let registry = "[registry]\nurl = \"https://hub:8443\"\nprincipal = \"worker-1\"\n";
        parse(registry).expect("accepted");
        let device = "[[devices]]\nid = \"bed-001\"\nkind = \"bed\"\ncitizen = \"citizen-001\"\n";
        let err = parse(&format!("{device}{registry}")).expect_err("refused");
        assert!(
            err.to_string().contains("takes its devices from the hub"),
            "{err}"
        );
    }

    #[test]
    fn windows_may_be_handed_over_at_an_instant() {
        let config =
            parse("[windows]\nsummarize_from = \"2027-01-04T09:00:00Z\"\n").expect("accepted");
        let at = 1_799_053_200_000; // 2027-01-04T09:00:00Z
        assert!(config.windows.summarizes(at));
        assert!(!config.windows.summarizes(at - 1));
        let config =
            parse("[windows]\nsummarize_before = \"2027-01-04T09:00:00Z\"\n").expect("accepted");
        assert!(config.windows.summarizes(at - 1));
        assert!(!config.windows.summarizes(at));
        assert!(WindowsConfig::default().summarizes(at));
        let err = parse("[windows]\nsummarize_from = \"monday\"\n").expect_err("refused");
        assert!(err.to_string().contains("windows.summarize_from"), "{err}");
        let err = parse("[windows]\nsummarize_from = \"2027-01-04T09:00:00Z\"\nsummarize_before = \"2027-01-04T09:00:00Z\"\n")
            .expect_err("refused");
        assert!(err.to_string().contains("must come after"), "{err}");
    }

    #[test]
    fn the_embedded_store_is_off_only_with_influxdb_and_without_windows() {
        let off = "[store]\nembedded = false\n";
        let err = parse(off).expect_err("refused");
        assert!(err.to_string().contains("needs [influxdb]"), "{err}");
        let influx = "[influxdb]\nurl = \"http://127.0.0.1:8428\"\n";
        let err = parse(&format!("{off}{influx}")).expect_err("refused");
        assert!(err.to_string().contains("windows.enabled = false"), "{err}");
        let config =
            parse(&format!("{off}[windows]\nenabled = false\n{influx}")).expect("accepted");
        assert!(!config.store.embedded);
        assert!(parse("").expect("defaults").store.embedded);
    }

    #[test]
    fn the_mqtt_hooks_secret_is_given_as_a_sha256_digest() {
        let hooks = |digest: &str| format!("[http.mqtt_hooks]\ntoken_sha256 = \"{digest}\"\n");
        let digest = "00ff".repeat(16);
        let config = parse(&hooks(&digest)).expect("a 64-digit digest is accepted");
        let parsed = config.http.mqtt_hooks.expect("hooks set").digest();
        assert_eq!(parsed.map(|d| (d[0], d[1], d[31])), Ok((0x00, 0xff, 0xff)));
        for bad in ["secret", &"0g".repeat(32), &"ab".repeat(33)] {
            let err = parse(&hooks(bad)).expect_err("refused");
            assert!(
                err.to_string().contains("must be 64 hex digits"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_example_config_is_valid_and_spells_out_the_defaults() {
        let example = include_str!("../kenko.example.toml");
        let config = parse(example).expect("config/kenko.example.toml parses");
        assert_eq!(config.mqtt, MqttConfig::default());
        assert_eq!(config.ingest, IngestConfig::default());
        assert_eq!(config.auth, AuthConfig::default());
        assert_eq!(config.wal, WalConfig::default());
        assert_eq!(config.windows, WindowsConfig::default());
        assert_eq!(config.http, HttpConfig::default());
        assert_eq!(config.store, StoreConfig::default());
        assert_eq!(config.devices.len(), 2);
        assert_eq!(config.principals.len(), 1);
    }

    #[test]
    fn client_ids_take_spaces_but_no_wildcards_separators_or_control_characters() {
        let longest = "c".repeat(MAX_CLIENT_ID_BYTES);
        for ok in [
            "clean retained",
            "app-7",
            "$dollar",
            "ü wearable 温度",
            longest.as_str(),
        ] {
            assert_eq!(check_client_id(ok), Ok(()), "{ok:?}");
        }
        // Device ids keep the stricter rule.
        assert!(check_identifier("clean retained").is_err());
        let too_long = "c".repeat(MAX_CLIENT_ID_BYTES + 1);
        for (bad, says) in [
            ("", "is empty"),
            (too_long.as_str(), "longer than 65535 bytes"),
            ("a+b", "'+'"),
            ("a#", "'#'"),
            ("a/b", "'/'"),
            ("a\0b", "'\\0'"),
            ("a\u{1f}b", "'\\u{1f}'"),
            ("tab\there", "'\\t'"),
            ("del\u{7f}", "'\\u{7f}'"),
            ("c1\u{85}", "'\\u{85}'"),
        ] {
            let why = check_client_id(bad).expect_err(bad);
            assert!(why.contains(says), "{bad:?}: {why}");
        }
    }
}
