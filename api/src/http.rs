//! The HTTP API: consent records (`/api/v1/consents`) and observation queries
//! (`/api/v1/observations`), for principals authenticated with HTTP Basic (the same ids and
//! argon2id hashes as MQTT). Who may read what follows [`query_access`], which `kenko query
//! --principal` applies too; every query of identified data is written to the audit log.
//!
//! Every handler authenticates first (the [`Authenticated`] extractor comes before any
//! other that can refuse), so a stranger learns nothing about a request's shape; each
//! principal's requests are limited by a token bucket; a failure inside the hub is answered
//! with an error id, its details (paths included) going to the log under that id.

use crate::openapi::{ErrorBody, Refusals};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Query as QueryParams, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use kenko_ingest::consent::{
    Consent, ConsentBook, ConsentChange, ConsentRegistry, Consents, Purpose, HUB,
};
use kenko_ingest::file_guard::Health;
use kenko_ingest::query::{parse_time, Row};
use kenko_ingest::sink::SinkLags;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use kenko_broker::auth::{Directory, Identity};
use kenko_broker::login::{Listener, Login, LoginGuard};
use kenko_broker::rate::TokenBuckets;
use kenko_broker::BrokerStats;
use kenko_ingest::stats::IngestStats;

/// Which observation store a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `personal.db`: identified.
    Personal,
    /// `shared.db`: pseudonymized.
    Shared,
}

/// What a principal may read of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The shared store, as it is.
    Shared,
    /// Identified rows of this one citizen (the citizen's own app).
    Citizen(String),
    /// Identified rows of this one citizen, for a care service with consent.
    CareCitizen(String),
    /// Identified rows of the citizens whose care consent to the principal, for the metric,
    /// is in force (checked per row).
    CareConsented,
}

/// Decides what `who` may read of `metric` in `store`, optionally for one `citizen`.
pub fn query_access(
    who: &Identity,
    store: StoreKind,
    citizen: Option<&str>,
    metric: &str,
    consents: &Consents,
    now_ms: i64,
) -> Result<Access, String> {
    let has = |role: &str| who.roles.iter().any(|r| r == role);
    match store {
        StoreKind::Shared if has("analyst") || has("operator") => Ok(Access::Shared),
        StoreKind::Shared => Err(format!(
            "{} may not read the shared store; it is for analysts and operators",
            who.id
        )),
        StoreKind::Personal if has("care") => match citizen {
            Some(c) if consents.permits(c, &who.id, Purpose::Care, metric, now_ms, now_ms) => {
                Ok(Access::CareCitizen(c.to_owned()))
            }
            Some(c) => Err(format!(
                "{c} has not granted {} care consent for {metric}",
                who.id
            )),
            None => Ok(Access::CareConsented),
        },
        StoreKind::Personal if has("citizen") => match (&who.citizen, citizen) {
            (Some(own), None) => Ok(Access::Citizen(own.clone())),
            (Some(own), Some(c)) if c == own => Ok(Access::Citizen(own.clone())),
            _ => Err(format!("{} may read only its own citizen's data", who.id)),
        },
        StoreKind::Personal => Err(format!(
            "{} may not read identified data: care services with consent and the citizen's own app may; analysts query store=shared",
            who.id
        )),
    }
}

/// Applies `access` to rows read with it. A care service sees a row only if the care consent
/// in force now covers the metric and the row's time; an aggregate over buckets of
/// `every_ms` only if it covers the whole bucket, first and last millisecond (a window is
/// one span, so that covers every reading in it).
pub fn filter_rows(
    access: &Access,
    who: &str,
    metric: &str,
    rows: &mut Vec<Row>,
    consents: &Consents,
    now_ms: i64,
    every_ms: Option<i64>,
) {
    if matches!(access, Access::CareConsented | Access::CareCitizen(_)) {
        let permits = |citizen: &str, event_ms: i64| {
            consents.permits(citizen, who, Purpose::Care, metric, event_ms, now_ms)
        };
        rows.retain(|r| {
            let last_ms = match every_ms {
                Some(every) if r.aggregated => r.time_ms.saturating_add(every.max(1) - 1),
                _ => r.time_ms,
            };
            permits(&r.citizen, r.time_ms) && permits(&r.citizen, last_ms)
        });
    }
}

/// The API's state.
#[derive(Clone)]
pub struct HttpApi {
    pub(crate) directory: Arc<Directory>,
    /// The configuration new principals are checked against (its principals and devices
    /// keep their ids).
    pub(crate) config: Arc<kenko_config::Config>,
    pub(crate) consents: Arc<ConsentBook>,
    pub(crate) data_dir: PathBuf,
    /// Login limits and password verification, shared with MQTT.
    pub(crate) login: Arc<LoginGuard>,
    /// Browser sessions in force.
    pub(crate) sessions: Arc<crate::session::SessionBook>,
    /// The counters `GET /metrics` shows.
    pub(crate) stats: Option<(Arc<BrokerStats>, Arc<IngestStats>)>,
    /// Whether the store files are sound, for `GET /readyz`.
    pub(crate) health: Option<Arc<Health>>,
    /// How far each sink is behind the log, for `GET /readyz` and `/metrics`.
    pub(crate) lags: Option<Arc<SinkLags>>,
    /// The broker's rules in force, for `GET /api/v1/acl/denials`.
    pub(crate) authorizer: Option<Arc<kenko_broker::authz::Authorizer>>,
    /// The MQTT clients connected now, for `GET /api/v1/mqtt/sessions`.
    pub(crate) clients: Option<kenko_broker::sessions::ConnectedClients>,
    /// Stored observations and new alerts as they happen, for the console's live views.
    pub(crate) live: Option<kenko_ingest::live::LiveFeed>,
    limits: Arc<RequestLimits>,
    /// SHA-256 of the secret an external broker calls the MQTT hooks with; `None`: off.
    pub(crate) hooks_digest: Option<[u8; 32]>,
    /// Cancelled when the hub stops: requests that wait for a change answer at once.
    pub(crate) stopping: CancellationToken,
    /// Random, new with each start of the hub: with the device registry's generation it
    /// names a device list (`GET /api/v1/registry/devices`).
    pub(crate) started: Arc<str>,
    /// FHIR Bulk Data export jobs and their files.
    pub(crate) exports: Arc<crate::fhir::Exports>,
    /// Seals the page cursors handed out.
    pub(crate) cursors: Arc<crate::sealed::Sealer>,
}

impl HttpApi {
    pub fn new(
        directory: Directory,
        consents: Arc<ConsentBook>,
        data_dir: &Path,
        login: Arc<LoginGuard>,
    ) -> HttpApi {
        HttpApi {
            directory: Arc::new(directory),
            config: Arc::new(kenko_config::Config::default()),
            consents,
            data_dir: data_dir.to_owned(),
            login,
            sessions: Arc::new(crate::session::SessionBook::new(
                &kenko_config::HttpConfig::default(),
            )),
            stats: None,
            health: None,
            lags: None,
            authorizer: None,
            clients: None,
            live: None,
            limits: Arc::new(RequestLimits::from_config(
                &kenko_config::HttpConfig::default(),
            )),
            hooks_digest: None,
            stopping: CancellationToken::new(),
            started: Arc::from(&kenko_broker::auth::new_token()[..12]),
            exports: Arc::default(),
            cursors: Arc::new(crate::sealed::Sealer::new()),
        }
    }

    /// Shows the denials counted per rule of `authorizer`'s rules.
    pub fn with_authorizer(mut self, authorizer: Arc<kenko_broker::authz::Authorizer>) -> HttpApi {
        self.authorizer = Some(authorizer);
        self
    }

    /// Lists the broker's connected clients.
    pub fn with_connected_clients(
        mut self,
        clients: kenko_broker::sessions::ConnectedClients,
    ) -> HttpApi {
        self.clients = Some(clients);
        self
    }

    /// Checks principals added over the API against `config` (its principals and devices).
    /// Turns the MQTT hooks on if `config` sets `[http.mqtt_hooks]` (checked at load).
    pub fn with_config(mut self, config: &kenko_config::Config) -> HttpApi {
        self.config = Arc::new(config.clone());
        self.hooks_digest = config
            .http
            .mqtt_hooks
            .as_ref()
            .and_then(|hooks| hooks.digest().ok());
        self
    }

    /// Answers `GET /readyz` from the store files' health.
    pub fn with_health(mut self, health: Arc<Health>) -> HttpApi {
        self.health = Some(health);
        self
    }

    /// Answers `GET /readyz` from each sink's lag too, and shows the lags in `/metrics`.
    pub fn with_sink_lags(mut self, lags: Arc<SinkLags>) -> HttpApi {
        self.lags = Some(lags);
        self
    }

    /// Limits each principal's requests as `[http]` says (`requests_per_s`, `request_burst`),
    /// and ends browser sessions when it says (`session_idle_s`, `session_max_s`).
    pub fn with_request_limits(mut self, config: &kenko_config::HttpConfig) -> HttpApi {
        self.limits = Arc::new(RequestLimits::from_config(config));
        self.sessions = Arc::new(crate::session::SessionBook::new(config));
        self
    }

    /// Serves the broker's and the pipeline's counters on `GET /metrics` (operators only).
    pub fn with_metrics(mut self, broker: Arc<BrokerStats>, ingest: Arc<IngestStats>) -> HttpApi {
        self.stats = Some((broker, ingest));
        self
    }

    /// Serves the console's live views from `feed`.
    pub fn with_live(mut self, feed: kenko_ingest::live::LiveFeed) -> HttpApi {
        self.live = Some(feed);
        self
    }

    /// Counts one request of `who` against its limit (`[http] requests_per_s`).
    pub(crate) fn within_limits(&self, who: &str) -> Result<(), ApiError> {
        self.limits.take(who)
    }

    fn router(self) -> Router {
        Router::new()
            .merge(crate::console::routes())
            .route("/api/v1/consents", get(list_consents).post(record_consent))
            .route(
                "/api/v1/observations",
                get(crate::observations::observations),
            )
            .route(
                "/api/v1/principals",
                get(crate::principals::list).post(crate::principals::create),
            )
            .route(
                "/api/v1/principals/:id",
                axum::routing::delete(crate::principals::delete),
            )
            .route(
                "/api/v1/principals/:id/password",
                axum::routing::put(crate::principals::change_password),
            )
            .route(
                "/api/v1/session",
                get(crate::session::current)
                    .post(crate::session::login)
                    .delete(crate::session::logout),
            )
            .route("/api/v1/alerts", get(crate::alerts::list))
            .route(
                "/api/v1/alerts/:id/ack",
                axum::routing::post(crate::alerts::ack),
            )
            .route("/api/v1/deadletters", get(crate::operators::dead_letters))
            .route(
                "/api/v1/deadletters/replay",
                axum::routing::post(crate::operators::replay),
            )
            .route(
                "/api/v1/deadletters/replay/:id",
                get(crate::operators::replay_status),
            )
            .route("/api/v1/log", get(crate::operators::log))
            .route("/api/v1/devices", get(crate::operators::devices))
            .route(
                "/api/v1/mqtt/sessions",
                get(crate::operators::mqtt_sessions),
            )
            .route(
                "/api/v1/mqtt/auth",
                axum::routing::post(crate::mqtt_hooks::auth),
            )
            .route(
                "/api/v1/mqtt/acl",
                axum::routing::post(crate::mqtt_hooks::acl),
            )
            .route(
                "/api/v1/mqtt/superuser",
                axum::routing::post(crate::mqtt_hooks::superuser),
            )
            .route(
                "/api/v1/registry/consents",
                get(crate::registry_feed::consents),
            )
            .route(
                "/api/v1/registry/devices",
                get(crate::registry_feed::devices),
            )
            .route("/api/v1/acl/denials", get(crate::operators::denials))
            .route("/api/v1/acl/explain", get(crate::operators::explain))
            .route("/api/v1/openapi.json", get(crate::openapi::openapi_json))
            .route("/api/v1/docs", get(crate::openapi::docs_page))
            .route("/login", get(crate::session::login_page))
            .route("/logout", axum::routing::post(crate::session::logout_form))
            .route("/metrics", get(metrics))
            .route("/healthz", get(crate::health::healthz))
            .route("/readyz", get(crate::health::readyz))
            .nest("/fhir", crate::fhir::routes())
            .with_state(self)
    }
}

/// Serves the API on `listener` until `shutdown`, within the connection limits of `limits`
/// (a cap on connections, idle and header timeouts).
/// With `tls`, over HTTPS.
pub async fn serve(
    listener: TcpListener,
    api: HttpApi,
    limits: &kenko_config::HttpConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let api = HttpApi {
        stopping: shutdown.clone(),
        ..api
    };
    crate::conn::accept_loop(listener, api.router(), limits.into(), tls, shutdown).await;
}

/// Refuses (503, with the reason) a request that would write to registry.db or read a store
/// while a store file is missing, replaced or truncated.
pub(crate) fn ensure_sound_stores(api: &HttpApi) -> Result<(), ApiError> {
    match api.health.as_ref().and_then(|h| h.fault_now()) {
        None => Ok(()),
        Some(reason) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the hub's stores are unavailable: {reason}"),
        )),
    }
}

/// The counters in the Prometheus text format, for operators (Prometheus sends Basic
/// credentials with `basic_auth` in its scrape config).
#[utoipa::path(get, path = "/metrics", tag = "operators", security(("basic" = []), ("session" = [])),
    responses((status = 200, description = "The counters in the Prometheus text format", content_type = "text/plain", body = String), Refusals))]
pub(crate) async fn metrics(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
) -> Result<Response, ApiError> {
    operator_only(&who, "read the hub's metrics")?;
    let Some((broker, ingest)) = &api.stats else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this hub serves no metrics",
        ));
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(broker, ingest, api.lags.as_deref()),
    )
        .into_response())
}

/// An API error: a status and a message for people; a failure inside the hub carries the id
/// it is logged under, a refusal for going too fast the seconds to wait.
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    error_id: Option<String>,
    retry_after_s: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            error_id: None,
            retry_after_s: None,
        }
    }

    /// The message for people.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// For a failure inside the hub: the id its log holds the details under.
    pub(crate) fn error_id(&self) -> Option<&str> {
        self.error_id.as_deref()
    }

    /// A "try again later" answer (429, 503) with a `Retry-After` of `wait`, rounded up to
    /// whole seconds and at least one.
    fn retry_after(status: StatusCode, message: impl Into<String>, wait: Duration) -> ApiError {
        ApiError {
            retry_after_s: Some(whole_seconds(wait)),
            ..ApiError::new(status, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match &self.error_id {
            Some(id) => serde_json::json!({ "error": self.message, "error_id": id }),
            None => serde_json::json!({ "error": self.message }),
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"kenko\""),
            );
        }
        if let Some(seconds) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

/// `wait` rounded up to whole seconds, at least one (what `Retry-After` can say).
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
        .max(1)
}

pub(crate) fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, message)
}

/// Refuses (403) anyone but an operator `what` ("read the hub's metrics", say).
pub(crate) fn operator_only(who: &Identity, what: &str) -> Result<(), ApiError> {
    if who.roles.iter().any(|r| r == "operator") {
        return Ok(());
    }
    Err(forbidden(format!(
        "{} may not {what}; operators may",
        who.id
    )))
}

/// A failure inside the hub. Its text may carry paths and other details of the machine, so
/// it goes to the log; the client gets an id to quote, under which the log has it.
pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    let id = format!("{:08x}", rand::random::<u32>());
    error!(error_id = %id, error = %e, "HTTP API request failed");
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!(
            "the hub could not answer this request; its log has the details under error id {id}"
        ),
        error_id: Some(id),
        retry_after_s: None,
    }
}

/// A text field of a request longer than `max` bytes is refused by name, without echoing it.
pub(crate) fn short<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, ApiError> {
    if value.len() > max {
        return Err(bad(format!(
            "{field} is {} bytes long; at most {max} bytes are allowed",
            value.len()
        )));
    }
    Ok(value)
}

/// The longest purpose, change or time a request may give; longer ones are refused before
/// they are parsed (and before they could be repeated in an error).
pub(crate) const MAX_WORD: usize = 64;

/// Each principal's token bucket. Only authenticated principals get one, so there are at most
/// as many as the directory has principals; full ones are swept out now and then.
struct RequestLimits {
    per_s: u32,
    burst: u32,
    buckets: Mutex<TokenBuckets<String>>,
}

/// Principals' buckets kept at once; full ones are forgotten when the table is full.
const MAX_PRINCIPAL_BUCKETS: usize = 100_000;

impl RequestLimits {
    fn from_config(config: &kenko_config::HttpConfig) -> RequestLimits {
        RequestLimits {
            per_s: config.requests_per_s,
            burst: config.request_burst,
            buckets: Mutex::new(TokenBuckets::new(
                config.request_burst,
                f64::from(config.requests_per_s),
                MAX_PRINCIPAL_BUCKETS,
            )),
        }
    }

    /// Takes one request from `who`'s bucket, or refuses with 429 and the wait.
    fn take(&self, who: &str) -> Result<(), ApiError> {
        if self.per_s == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.take(&who.to_owned(), now).map_err(|wait| {
            ApiError::retry_after(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{who} made more than {} requests at once or {} a second; try again in {} s",
                    self.burst,
                    self.per_s,
                    whole_seconds(wait)
                ),
                wait,
            )
        })
    }
}

/// The principal of a request, authenticated and within its request limit. Handlers take it
/// before any extractor that can refuse a request, so that an unauthenticated request gets
/// 401 whatever its query or body.
pub(crate) struct Authenticated(pub(crate) Arc<Identity>);

#[axum::async_trait]
impl FromRequestParts<HttpApi> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &HttpApi) -> Result<Self, ApiError> {
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, api)
            .await
            .map_err(internal)?;
        let who = if parts.headers.contains_key(header::AUTHORIZATION) {
            crate::session::same_origin(&parts.method, &parts.headers)?;
            authenticate(api, peer, &parts.headers).await?
        } else if let Some(who) = crate::session::authenticate(api, &parts.method, &parts.headers)?
        {
            who
        } else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "log in: HTTP Basic credentials (principal id and password), or a session from POST /api/v1/session",
            ));
        };
        api.limits.take(&who.id)?;
        Ok(Authenticated(who))
    }
}

pub(crate) fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The principal proven by HTTP Basic credentials, within the login limits of `peer`.
async fn authenticate(
    api: &HttpApi,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Arc<Identity>, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            unauthorized("HTTP Basic credentials (principal id and password) are required")
        })?;
    let encoded = value
        .strip_prefix("Basic ")
        .ok_or_else(|| unauthorized("only HTTP Basic authentication is supported"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
    log_in(api, peer, user, password).await
}

/// `id` and `password` checked within the login limits of `peer`, as for MQTT.
pub(crate) async fn log_in(
    api: &HttpApi,
    peer: SocketAddr,
    id: &str,
    password: &str,
) -> Result<Arc<Identity>, ApiError> {
    let verdict = api
        .login
        .login(
            Listener::Http,
            peer.ip(),
            &api.directory,
            id,
            password.as_bytes(),
        )
        .await;
    match verdict {
        Login::Accepted(identity) => Ok(identity),
        refused => Err(login_refusal(refused)),
    }
}

/// The answer to a login that was not accepted.
fn login_refusal(verdict: Login) -> ApiError {
    match verdict {
        Login::Accepted(_) | Login::Refused => {
            ApiError::new(StatusCode::UNAUTHORIZED, "bad principal or password")
        }
        Login::Throttled(wait) => ApiError::retry_after(
            StatusCode::TOO_MANY_REQUESTS,
            "too many login attempts; wait the Retry-After seconds before trying again",
            wait,
        ),
        Login::Busy => ApiError::retry_after(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many logins are being verified; try again shortly",
            Duration::from_secs(1),
        ),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConsentFilter {
    citizen: Option<String>,
}

/// A consent record as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ConsentView {
    id: i64,
    citizen: String,
    grantee: String,
    purpose: &'static str,
    change: &'static str,
    data_types: Vec<String>,
    valid_from: Option<String>,
    valid_until: Option<String>,
    recorded: String,
    source: String,
    erase: bool,
}

pub(crate) fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

impl From<Consent> for ConsentView {
    fn from(c: Consent) -> ConsentView {
        let ch = c.change;
        ConsentView {
            id: c.id,
            citizen: ch.citizen,
            grantee: ch.grantee,
            purpose: ch.purpose.as_str(),
            change: if ch.granted { "grant" } else { "revoke" },
            data_types: ch.data_types,
            valid_from: ch.valid_from_ms.map(rfc3339),
            valid_until: ch.valid_until_ms.map(rfc3339),
            recorded: rfc3339(c.recorded_ms),
            source: ch.source,
            erase: ch.erase,
        }
    }
}

/// Operators manage every citizen's consent; a citizen's app only its own citizen's.
fn may_manage(who: &Identity, citizen: &str) -> bool {
    who.roles.iter().any(|r| r == "operator")
        || (who.roles.iter().any(|r| r == "citizen") && who.citizen.as_deref() == Some(citizen))
}

#[utoipa::path(get, path = "/api/v1/consents", tag = "consents", params(ConsentFilter), security(("basic" = []), ("session" = [])),
    responses((status = 200, description = "The citizen's consent records, oldest first", body = [ConsentView]), (status = 400, description = "A parameter or the body cannot be used", body = ErrorBody), Refusals))]
pub(crate) async fn list_consents(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    filter: Result<QueryParams<ConsentFilter>, QueryRejection>,
) -> Result<Json<Vec<ConsentView>>, ApiError> {
    let QueryParams(filter) = filter.map_err(|e| bad(format!("query: {}", e.body_text())))?;
    let citizen = match (&filter.citizen, who.citizen.clone()) {
        (Some(c), _) => c.clone(),
        (None, Some(own)) => own,
        (None, None) => return Err(bad("give ?citizen=ID")),
    };
    kenko_config::check_identifier(&citizen).map_err(|why| bad(format!("citizen {why}")))?;
    if !may_manage(&who, &citizen) {
        return Err(forbidden(format!(
            "{} may not read {citizen}'s consents",
            who.id
        )));
    }
    let path = api.data_dir.join("registry.db");
    let records = tokio::task::spawn_blocking(move || {
        ConsentRegistry::open(&path).and_then(|r| r.list(Some(&citizen)))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(Json(records.into_iter().map(ConsentView::from).collect()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsentBody {
    citizen: String,
    purpose: String,
    #[serde(default)]
    grantee: Option<String>,
    #[serde(default)]
    data_types: Vec<String>,
    /// "grant" (default) or "revoke".
    #[serde(default)]
    change: Option<String>,
    #[serde(default)]
    erase: bool,
    #[serde(default)]
    valid_from: Option<String>,
    #[serde(default)]
    valid_until: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/consents", tag = "consents", request_body = ConsentBody, security(("basic" = []), ("session" = [])),
    responses((status = 201, description = "Recorded", body = ConsentView), (status = 400, description = "A parameter or the body cannot be used", body = ErrorBody), (status = 503, description = "The stores are unavailable", body = ErrorBody), Refusals))]
pub(crate) async fn record_consent(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    body: Result<Json<ConsentBody>, JsonRejection>,
) -> Result<(StatusCode, Json<ConsentView>), ApiError> {
    ensure_sound_stores(&api)?;
    let Json(body) = body.map_err(|e| bad(format!("body: {}", e.body_text())))?;
    let purpose: Purpose = short("purpose", &body.purpose, MAX_WORD)?
        .parse()
        .map_err(bad)?;
    let change = body.change.as_deref();
    let granted = match change.map(|c| short("change", c, MAX_WORD)).transpose()? {
        None | Some("grant") => true,
        Some("revoke") => false,
        Some(other) => return Err(bad(format!("change {other:?}: use grant or revoke"))),
    };
    if body.erase && granted {
        return Err(bad("erase goes with change = revoke"));
    }
    let grantee = match (purpose, body.grantee) {
        (Purpose::Care, Some(g)) => g,
        (Purpose::Care, None) => return Err(bad("care consent needs a grantee")),
        (_, None) => HUB.to_owned(),
        (_, Some(g)) if g == HUB => g,
        (p, Some(_)) => {
            return Err(bad(format!(
                "{} is granted to the hub; leave out grantee",
                p.as_str()
            )))
        }
    };
    let now = now_ms();
    let time = |field: &str, t: Option<String>| -> Result<Option<i64>, ApiError> {
        t.map(|t| {
            parse_time(short(field, &t, MAX_WORD)?, now).map_err(|e| bad(format!("{field}: {e}")))
        })
        .transpose()
    };
    let new = ConsentChange {
        citizen: body.citizen,
        grantee,
        purpose,
        data_types: body.data_types,
        valid_from_ms: time("valid_from", body.valid_from)?,
        valid_until_ms: time("valid_until", body.valid_until)?,
        source: body.source.unwrap_or_else(|| format!("http:{}", who.id)),
        granted,
        erase: body.erase,
    };
    let stored = store_consent(&api, &who, new, now).await?;
    Ok((StatusCode::CREATED, Json(stored.into())))
}

/// Records a consent change `who` makes (over the API or from the console), if `who` may
/// manage that citizen's consent.
pub(crate) async fn store_consent(
    api: &HttpApi,
    who: &Identity,
    new: ConsentChange,
    now: i64,
) -> Result<Consent, ApiError> {
    // Checked before anything is stored: a record and its audit entry are kept for good.
    new.check().map_err(|e| bad(e.to_string()))?;
    if !may_manage(who, &new.citizen) {
        return Err(forbidden(format!(
            "{} may not record consent for {}",
            who.id, new.citizen
        )));
    }
    let path = api.data_dir.join("registry.db");
    let stored = tokio::task::spawn_blocking(move || {
        ConsentRegistry::open(&path).and_then(|mut r| r.record(new, now))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    info!(principal = %who.id, consent = stored.id, "consent recorded over HTTP");
    Ok(stored)
}

/// Binds the API's listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
