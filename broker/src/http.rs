//! The HTTP API: consent records (`/api/v1/consents`) and observation queries
//! (`/api/v1/observations`), for principals authenticated with HTTP Basic (the same ids and
//! argon2id hashes as MQTT). Who may read what follows [`query_access`], which `kenko query
//! --principal` applies too; every query of identified data is written to the audit log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Query as QueryParams, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use kenko_devices::Metric;
use kenko_ingest::consent::{
    Consent, ConsentBook, ConsentChange, ConsentRegistry, Consents, Purpose, HUB,
};
use kenko_ingest::file_guard::Health;
use kenko_ingest::query::{parse_duration, parse_time, Agg, Query, Row};
use kenko_ingest::store::PersonalStore;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::auth::{verify_password, Directory, Identity};
use crate::BrokerStats;
use kenko_ingest::pipeline::IngestStats;

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
            Some(c) if consents.allows(c, &who.id, Purpose::Care, metric, now_ms) => {
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
/// in force now covers the metric and its validity window covers the row's time.
pub fn filter_rows(
    access: &Access,
    who: &str,
    metric: &str,
    rows: &mut Vec<Row>,
    consents: &Consents,
    now_ms: i64,
) {
    if matches!(access, Access::CareConsented | Access::CareCitizen(_)) {
        rows.retain(|r| {
            consents.allows(&r.citizen, who, Purpose::Care, metric, now_ms)
                && consents.valid_at(&r.citizen, who, Purpose::Care, metric, now_ms, r.time_ms)
        });
    }
}

/// The API's state.
#[derive(Clone)]
pub struct HttpApi {
    directory: Arc<Directory>,
    consents: Arc<ConsentBook>,
    data_dir: PathBuf,
    verify_slots: Arc<tokio::sync::Semaphore>,
    /// The counters `GET /metrics` shows.
    stats: Option<(Arc<BrokerStats>, Arc<IngestStats>)>,
    /// Whether the store files are sound, for `GET /readyz`.
    health: Option<Arc<Health>>,
}

impl HttpApi {
    pub fn new(directory: Directory, consents: Arc<ConsentBook>, data_dir: &Path) -> HttpApi {
        HttpApi {
            directory: Arc::new(directory),
            consents,
            data_dir: data_dir.to_owned(),
            verify_slots: Arc::new(tokio::sync::Semaphore::new(2)),
            stats: None,
            health: None,
        }
    }

    /// Answers `GET /readyz` from the store files' health.
    pub fn with_health(mut self, health: Arc<Health>) -> HttpApi {
        self.health = Some(health);
        self
    }

    /// Serves the broker's and the pipeline's counters on `GET /metrics` (operators only).
    pub fn with_metrics(mut self, broker: Arc<BrokerStats>, ingest: Arc<IngestStats>) -> HttpApi {
        self.stats = Some((broker, ingest));
        self
    }

    fn router(self) -> Router {
        Router::new()
            .route("/api/v1/consents", get(list_consents).post(record_consent))
            .route("/api/v1/observations", get(observations))
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self)
    }
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, api: HttpApi, shutdown: CancellationToken) {
    let app = api.router();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        error!(error = %e, "HTTP API stopped");
    }
}

/// The process is alive and serving HTTP (for a liveness probe; no credentials).
async fn healthz() -> Response {
    Json(serde_json::json!({ "alive": true })).into_response()
}

/// Whether the hub is acknowledging: 503 with the reason while a store file is missing,
/// replaced or truncated (for a readiness probe; no credentials).
async fn readyz(State(api): State<HttpApi>) -> Response {
    match api.health.as_ref().and_then(|h| h.fault_now()) {
        None => Json(serde_json::json!({ "ready": true })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

/// Refuses (503, with the reason) a request that would write to registry.db or read a store
/// while a store file is missing, replaced or truncated.
fn ensure_sound_stores(api: &HttpApi) -> Result<(), ApiError> {
    match api.health.as_ref().and_then(|h| h.fault_now()) {
        None => Ok(()),
        Some(reason) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the hub's stores are unavailable: {reason}"),
        )),
    }
}

/// The counters in the Prometheus text format, for operators (Prometheus sends Basic
/// credentials with `basic_auth` in its scrape config).
async fn metrics(State(api): State<HttpApi>, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = authenticate(&api, &headers).await?;
    if !who.roles.iter().any(|r| r == "operator") {
        return Err(forbidden(format!(
            "{} may not read the hub's metrics; they are for operators",
            who.id
        )));
    }
    let Some((broker, ingest)) = &api.stats else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "this hub serves no metrics".into(),
        ));
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(broker, ingest),
    )
        .into_response())
}

/// An API error: a status and a message for people.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"kenko\""),
            );
        }
        response
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::FORBIDDEN, message.into())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    error!(error = %e, "HTTP API request failed");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The principal proven by HTTP Basic credentials.
async fn authenticate(api: &HttpApi, headers: &HeaderMap) -> Result<Arc<Identity>, ApiError> {
    let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.to_owned());
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
    let identity = api
        .directory
        .get(user)
        .ok_or_else(|| unauthorized("bad principal or password"))?;
    let verified = {
        let _permit = api.verify_slots.acquire().await;
        let (who, password) = (identity.clone(), password.to_owned());
        tokio::task::spawn_blocking(move || verify_password(&who, password.as_bytes()))
            .await
            .unwrap_or(false)
    };
    if !verified {
        return Err(unauthorized("bad principal or password"));
    }
    Ok(identity)
}

#[derive(Deserialize)]
struct ConsentFilter {
    citizen: Option<String>,
}

/// A consent record as the API shows it.
#[derive(Serialize)]
struct ConsentView {
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

fn rfc3339(ms: i64) -> String {
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

async fn list_consents(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    QueryParams(filter): QueryParams<ConsentFilter>,
) -> Result<Json<Vec<ConsentView>>, ApiError> {
    let who = authenticate(&api, &headers).await?;
    let citizen = match (&filter.citizen, who.citizen.clone()) {
        (Some(c), _) => c.clone(),
        (None, Some(own)) => own,
        (None, None) => return Err(bad("give ?citizen=ID")),
    };
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentBody {
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

async fn record_consent(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    body: Result<Json<ConsentBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<ConsentView>), ApiError> {
    let who = authenticate(&api, &headers).await?;
    ensure_sound_stores(&api)?;
    let Json(body) = body.map_err(|e| bad(format!("body: {e}")))?;
    let purpose: Purpose = body.purpose.parse().map_err(bad)?;
    let granted = match body.change.as_deref() {
        None | Some("grant") => true,
        Some("revoke") => false,
        Some(other) => return Err(bad(format!("change {other:?}: use grant or revoke"))),
    };
    if body.erase && granted {
        return Err(bad("erase goes with change = revoke"));
    }
    for id in std::iter::once(&body.citizen).chain(body.grantee.iter()) {
        kenko_config::check_identifier(id).map_err(|why| bad(format!("{id:?} {why}")))?;
    }
    for t in &body.data_types {
        t.parse::<Metric>()
            .map_err(|e| bad(format!("data type {t:?}: {e}")))?;
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
    if !may_manage(&who, &body.citizen) {
        return Err(forbidden(format!(
            "{} may not record consent for {}",
            who.id, body.citizen
        )));
    }
    let now = now_ms();
    let time = |t: Option<String>| -> Result<Option<i64>, ApiError> {
        t.map(|t| parse_time(&t, now).map_err(|e| bad(e.to_string())))
            .transpose()
    };
    let new = ConsentChange {
        citizen: body.citizen,
        grantee,
        purpose,
        data_types: body.data_types,
        valid_from_ms: time(body.valid_from)?,
        valid_until_ms: time(body.valid_until)?,
        source: body.source.unwrap_or_else(|| format!("http:{}", who.id)),
        granted,
        erase: body.erase,
    };
    let path = api.data_dir.join("registry.db");
    let stored = tokio::task::spawn_blocking(move || {
        ConsentRegistry::open(&path).and_then(|mut r| r.record(new, now))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    info!(principal = %who.id, consent = stored.id, "consent recorded over HTTP");
    Ok((StatusCode::CREATED, Json(stored.into())))
}

#[derive(Deserialize)]
struct ObservationParams {
    metric: String,
    citizen: Option<String>,
    from: Option<String>,
    to: Option<String>,
    every: Option<String>,
    agg: Option<String>,
    limit: Option<usize>,
    store: Option<String>,
}

#[derive(Serialize)]
struct RowView {
    time: String,
    citizen: String,
    device: String,
    metric: &'static str,
    value: f64,
    unit: String,
}

async fn observations(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<ObservationParams>,
) -> Result<Json<Vec<RowView>>, ApiError> {
    let who = authenticate(&api, &headers).await?;
    // A read of identified data is audited in registry.db before it is answered.
    ensure_sound_stores(&api)?;
    let metric: Metric = params
        .metric
        .parse()
        .map_err(|e| bad(format!("metric: {e}")))?;
    let store = match params.store.as_deref() {
        None | Some("personal") => StoreKind::Personal,
        Some("shared") => StoreKind::Shared,
        Some(other) => return Err(bad(format!("store {other:?}: use personal or shared"))),
    };
    let now = now_ms();
    let consents = api.consents.current();
    let access = query_access(
        &who,
        store,
        params.citizen.as_deref(),
        metric.name(),
        &consents,
        now,
    )
    .map_err(forbidden)?;
    let time = |t: &Option<String>| -> Result<Option<i64>, ApiError> {
        t.as_deref()
            .map(|t| parse_time(t, now).map_err(|e| bad(e.to_string())))
            .transpose()
    };
    let mut query = Query::new(metric);
    query.citizen = match &access {
        Access::Citizen(c) | Access::CareCitizen(c) => Some(c.clone()),
        _ => params.citizen.clone(),
    };
    query.from_ms = time(&params.from)?;
    query.to_ms = time(&params.to)?;
    query.every_ms = params
        .every
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    if let Some(agg) = &params.agg {
        query.agg = agg.parse::<Agg>().map_err(|e| bad(e.to_string()))?;
    }
    query.limit = params.limit;
    let file = match store {
        StoreKind::Personal => "personal.db",
        StoreKind::Shared => "shared.db",
    };
    let (path, registry) = (api.data_dir.join(file), api.data_dir.join("registry.db"));
    let principal = who.id.clone();
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<Row>, ApiError> {
        let mut rows = PersonalStore::open_read_only(&path)
            .and_then(|s| s.query(&query))
            .map_err(internal)?;
        filter_rows(
            &access,
            &principal,
            metric.name(),
            &mut rows,
            &consents,
            now,
        );
        if store == StoreKind::Personal {
            // Every read of identified data is accounted for.
            let mut citizens: Vec<&str> = rows.iter().map(|r| r.citizen.as_str()).collect();
            citizens.sort_unstable();
            citizens.dedup();
            let body = serde_json::json!({
                "principal": principal,
                "metric": metric.name(),
                "citizens": citizens,
                "rows": rows.len(),
            })
            .to_string();
            ConsentRegistry::open(&registry)
                .and_then(|mut r| r.audit(now, "access.identified", &body))
                .map_err(internal)?;
        }
        Ok(rows)
    })
    .await
    .map_err(internal)??;
    Ok(Json(
        rows.into_iter()
            .map(|r| RowView {
                time: rfc3339(r.time_ms),
                citizen: r.citizen,
                device: r.device,
                metric: r.metric.name(),
                value: r.value,
                unit: r.unit,
            })
            .collect(),
    ))
}

/// Binds the API's listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
