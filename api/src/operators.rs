//! What operators look at and act on over HTTP (role `operator` only):
//!
//! - `GET /api/v1/deadletters` (`reason`, `device`, `limit`): how many letters there are per
//!   reason and per device, and the newest ones (without payloads);
//! - `POST /api/v1/deadletters/replay` (`id`, `reason`, `device`, each optional): asks the
//!   hub's writer to run the letters selected through the pipeline again, as
//!   `kenko deadletter replay` does; answered 202 with the request, whose outcome
//!   `GET /api/v1/deadletters/replay/{id}` tells;
//! - `GET /api/v1/log`: the write-ahead log (bytes, full, failing) and each sink's lag;
//! - `GET /api/v1/devices` (`silent_for`): registered devices, when each was last heard from
//!   and how many messages it sends;
//! - `GET /api/v1/mqtt/sessions` (`principal`): the MQTT clients connected now;
//! - `GET /api/v1/acl/denials`: denials counted per rule of the rules in force;
//! - `GET /api/v1/acl/explain` (`principal`, `publish` or `subscribe`, `qos`, `retain`,
//!   `client_id`, `at`): what the rules in force decide and why, consent included, as
//!   `kenko acl explain` says it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::Json;
use kenko_broker::auth::Identity;
use kenko_ingest::deadletter::{DeadLetterStore, ReplayRequest, Selection};
use serde::{Deserialize, Serialize};

use crate::http::{
    bad, internal, now_ms, operator_only, rfc3339, short, ApiError, Authenticated, HttpApi,
    MAX_WORD,
};
use crate::openapi::{ErrorBody, Refusals};

/// Letters a listing shows unless `limit` says otherwise, and at most.
const DEFAULT_LETTERS: usize = 100;
const MAX_LETTERS: usize = 1_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LetterFilter {
    /// Only letters with this reason code (unknown_device, malformed_payload, ...).
    reason: Option<String>,
    /// Only letters from this device.
    device: Option<String>,
    /// Newest letters shown (100 unless asked; 1,000 at most).
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ReasonCount {
    pub(crate) reason: String,
    pub(crate) count: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct LetterView {
    pub(crate) id: i64,
    pub(crate) received: String,
    pub(crate) client_id: String,
    pub(crate) topic: String,
    pub(crate) device: Option<String>,
    pub(crate) reason_code: String,
    pub(crate) reason: String,
    /// Size of the refused payload (`kenko deadletter show` prints it).
    pub(crate) payload_bytes: usize,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DeviceCount {
    /// The device (or, for a client that is none, its client id).
    pub(crate) device: String,
    pub(crate) count: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DeadLetters {
    /// Every letter, per reason.
    pub(crate) counts: Vec<ReasonCount>,
    /// Every letter, per device.
    pub(crate) devices: Vec<DeviceCount>,
    /// The newest letters selected, newest first.
    pub(crate) letters: Vec<LetterView>,
}

fn dead_letter_store(api: &HttpApi) -> std::path::PathBuf {
    api.data_dir.join("deadletter.db")
}

#[utoipa::path(get, path = "/api/v1/deadletters", tag = "operators", params(LetterFilter),
    security(("basic" = []), ("session" = [])), responses(
    (status = 200, description = "Counts per reason and the newest letters", body = DeadLetters),
    (status = 400, description = "A parameter cannot be used", body = ErrorBody), Refusals))]
pub(crate) async fn dead_letters(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    filter: Result<QueryParams<LetterFilter>, QueryRejection>,
) -> Result<Json<DeadLetters>, ApiError> {
    operator_only(&who, "see or act on the hub's operations")?;
    let QueryParams(filter) = filter.map_err(|e| bad(format!("query: {}", e.body_text())))?;
    let limit = filter.limit.unwrap_or(DEFAULT_LETTERS);
    if limit == 0 || limit > MAX_LETTERS {
        return Err(bad(format!("limit {limit}: 1 to {MAX_LETTERS}")));
    }
    let selection = selection(None, filter.reason, filter.device)?;
    Ok(Json(dead_letter_views(&api, selection, limit).await?))
}

/// Counts per reason, and the newest `limit` letters of `selection`.
pub(crate) async fn dead_letter_views(
    api: &HttpApi,
    selection: Selection,
    limit: usize,
) -> Result<DeadLetters, ApiError> {
    let path = dead_letter_store(api);
    let answer = tokio::task::spawn_blocking(move || {
        if !path.exists() {
            return Ok(DeadLetters {
                counts: Vec::new(),
                devices: Vec::new(),
                letters: Vec::new(),
            });
        }
        let store = DeadLetterStore::open_read_only(&path)?;
        let counts = store
            .count_by_reason()?
            .into_iter()
            .map(|(reason, count)| ReasonCount { reason, count })
            .collect();
        let letters = store
            .select(&selection, limit)?
            .into_iter()
            .map(|(id, l)| LetterView {
                id,
                received: rfc3339(l.received_ms),
                client_id: l.client_id,
                topic: l.topic,
                device: l.device,
                reason_code: l.reason_code,
                reason: l.reason,
                payload_bytes: l.payload.len(),
            })
            .collect();
        let devices = store
            .count_by_device()?
            .into_iter()
            .map(|(device, count)| DeviceCount { device, count })
            .collect();
        Ok::<_, kenko_ingest::store::StoreError>(DeadLetters {
            counts,
            devices,
            letters,
        })
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(answer)
}

/// Dead letter `id` with its payload, if there is one.
pub(crate) async fn dead_letter(
    api: &HttpApi,
    id: i64,
) -> Result<Option<kenko_ingest::deadletter::DeadLetter>, ApiError> {
    let path = dead_letter_store(api);
    let found = tokio::task::spawn_blocking(move || {
        if !path.exists() {
            return Ok(Vec::new());
        }
        let selection = Selection {
            id: Some(id),
            ..Selection::default()
        };
        DeadLetterStore::open_read_only(&path)?.select(&selection, 1)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(found.into_iter().next().map(|(_, letter)| letter))
}

pub(crate) fn selection(
    id: Option<i64>,
    reason: Option<String>,
    device: Option<String>,
) -> Result<Selection, ApiError> {
    for (field, value) in [("reason", &reason), ("device", &device)] {
        short(field, value.as_deref().unwrap_or(""), MAX_WORD)?;
    }
    Ok(Selection {
        id,
        reason_code: reason,
        device,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayBody {
    /// Only this letter.
    #[serde(default)]
    id: Option<i64>,
    /// Only letters with this reason code.
    #[serde(default)]
    reason: Option<String>,
    /// Only letters from this device.
    #[serde(default)]
    device: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ReplayView {
    pub(crate) id: i64,
    /// When the writer carried it out; absent while it waits.
    pub(crate) done: Option<String>,
    /// Letters now stored (and gone from the dead letters).
    pub(crate) replayed: u64,
    /// Letters refused again (kept, with the new reason).
    pub(crate) failed: u64,
    /// Letters that cannot go through the pipeline again.
    pub(crate) skipped: u64,
}

impl From<ReplayRequest> for ReplayView {
    fn from(r: ReplayRequest) -> ReplayView {
        ReplayView {
            id: r.id,
            done: r.done_ms.map(rfc3339),
            replayed: r.replayed,
            failed: r.failed,
            skipped: r.skipped,
        }
    }
}

#[utoipa::path(post, path = "/api/v1/deadletters/replay", tag = "operators",
    request_body = ReplayBody, security(("basic" = []), ("session" = [])), responses(
    (status = 202, description = "The hub's writer will replay the letters selected", body = ReplayView),
    (status = 400, description = "The body cannot be used", body = ErrorBody), Refusals))]
pub(crate) async fn replay(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    body: Result<Json<ReplayBody>, JsonRejection>,
) -> Result<(StatusCode, Json<ReplayView>), ApiError> {
    operator_only(&who, "see or act on the hub's operations")?;
    crate::http::ensure_sound_stores(&api)?;
    let Json(body) = body.map_err(|e| bad(format!("body: {}", e.body_text())))?;
    let selection = selection(body.id, body.reason, body.device)?;
    let request = request_replay(&api, &who, selection).await?;
    Ok((StatusCode::ACCEPTED, Json(request.into())))
}

/// Asks the hub's writer to replay the letters of `selection` (recorded for it to find).
pub(crate) async fn request_replay(
    api: &HttpApi,
    who: &Identity,
    selection: Selection,
) -> Result<ReplayRequest, ApiError> {
    let path = dead_letter_store(api);
    let request = tokio::task::spawn_blocking(move || {
        let mut store = DeadLetterStore::open(&path)?;
        let id = store.request_replay(&selection, now_ms())?;
        Ok::<_, kenko_ingest::store::StoreError>(ReplayRequest {
            id,
            selection,
            ..ReplayRequest::default()
        })
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    tracing::info!(principal = %who.id, request = request.id, "dead-letter replay requested over HTTP");
    Ok(request)
}

#[utoipa::path(get, path = "/api/v1/deadletters/replay/{id}", tag = "operators",
    params(("id" = i64, Path, description = "The replay request's id")),
    security(("basic" = []), ("session" = [])), responses(
    (status = 200, description = "The request and, once carried out, its outcome", body = ReplayView),
    (status = 404, description = "No such request", body = ErrorBody), Refusals))]
pub(crate) async fn replay_status(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    UrlPath(id): UrlPath<i64>,
) -> Result<Json<ReplayView>, ApiError> {
    operator_only(&who, "see or act on the hub's operations")?;
    Ok(Json(replay_request(&api, id).await?))
}

/// Replay request `id` and, once carried out, its outcome.
pub(crate) async fn replay_request(api: &HttpApi, id: i64) -> Result<ReplayView, ApiError> {
    let path = dead_letter_store(api);
    let found = tokio::task::spawn_blocking(move || {
        if !path.exists() {
            return Ok(Vec::new());
        }
        DeadLetterStore::open_read_only(&path)?.replay_requests(Some(id))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    let request = found
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no replay request {id}")))?;
    Ok(request.into())
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct LogView {
    /// Bytes the write-ahead log holds.
    pub(crate) bytes: u64,
    /// The log is full: acknowledgements wait until the sinks catch up.
    pub(crate) full: bool,
    /// The log cannot be written: acknowledgements wait.
    pub(crate) failing: bool,
    /// How far each sink is behind the log.
    pub(crate) sinks: Vec<crate::health::SinkLagView>,
    /// The lag at which the hub stops being ready.
    pub(crate) sink_lag_bound_bytes: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/log", tag = "operators",
    security(("basic" = []), ("session" = [])), responses(
    (status = 200, description = "The write-ahead log and the sinks' lags", body = LogView), Refusals))]
pub(crate) async fn log(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
) -> Result<Json<LogView>, ApiError> {
    operator_only(&who, "see or act on the hub's operations")?;
    Ok(Json(log_view(&api)))
}

/// The write-ahead log's size and state, and each sink's lag.
pub(crate) fn log_view(api: &HttpApi) -> LogView {
    let gauge = |read: fn(&kenko_ingest::stats::IngestStats) -> u64| {
        api.stats.as_ref().map_or(0, |(_, i)| read(i))
    };
    LogView {
        bytes: gauge(|i| i.wal_bytes.load(Ordering::Relaxed)),
        full: gauge(|i| i.wal_full.load(Ordering::Relaxed)) == 1,
        failing: gauge(|i| i.wal_failing.load(Ordering::Relaxed)) == 1,
        sinks: crate::health::sink_lags(api),
        sink_lag_bound_bytes: api.lags.as_ref().map(|l| l.bound_bytes()),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DenialView {
    /// The rule (file:line and what it says), or the default deny.
    pub(crate) rule: String,
    pub(crate) count: u64,
}

#[utoipa::path(get, path = "/api/v1/acl/denials", tag = "operators",
    security(("basic" = []), ("session" = [])), responses(
    (status = 200, description = "Denials per rule of the rules in force, most first", body = [DenialView]), Refusals))]
pub(crate) async fn denials(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
) -> Result<Json<Vec<DenialView>>, ApiError> {
    operator_only(&who, "see or act on the hub's operations")?;
    Ok(Json(denial_views(&api)))
}

/// Denials per rule of the rules in force, most first.
pub(crate) fn denial_views(api: &HttpApi) -> Vec<DenialView> {
    let Some(authorizer) = &api.authorizer else {
        return Vec::new();
    };
    let acl = authorizer.current();
    let mut out: Vec<DenialView> = acl
        .denials()
        .into_iter()
        .map(|(rule, count)| DenialView {
            rule: rule.and_then(|i| acl.rules().get(i)).map_or_else(
                || "default deny (no rule matched)".to_owned(),
                |r| r.source.to_string(),
            ),
            count,
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.rule.cmp(&b.rule)));
    out
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeviceFilter {
    /// Only devices that sent nothing for at least this long (30m, 1h, 1d), or nothing
    /// since the hub started.
    silent_for: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DeviceView {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) citizen: String,
    pub(crate) profile: String,
    pub(crate) timezone: Option<String>,
    /// The device whose messages may carry this device's readings.
    pub(crate) gateway: Option<String>,
    /// `config` (the config file's) or `registry` (`kenko device add`).
    pub(crate) source: String,
    /// When the hub last received a message from it (since the hub started).
    pub(crate) last_seen: Option<String>,
    /// Messages since the hub started.
    pub(crate) messages: u64,
    /// Messages in the last whole minute.
    pub(crate) per_minute: u64,
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "operators", params(DeviceFilter),
    security(("basic" = []), ("session" = [])), responses(
    (status = 200, description = "Registered devices with when they were last heard from, by id", body = [DeviceView]),
    (status = 400, description = "A parameter cannot be used", body = ErrorBody), Refusals))]
pub(crate) async fn devices(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    filter: Result<QueryParams<DeviceFilter>, QueryRejection>,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    operator_only(&who, "see or act on the hub's operations")?;
    let QueryParams(filter) = filter.map_err(|e| bad(format!("query: {}", e.body_text())))?;
    let silent_ms = filter
        .silent_for
        .as_deref()
        .map(|d| {
            kenko_ingest::query::parse_duration(short("silent_for", d, MAX_WORD)?)
                .map_err(|e| bad(format!("silent_for: {e}")))
        })
        .transpose()?;
    Ok(Json(device_views(&api, silent_ms)))
}

/// Registered devices with when each was last heard from, by id; only those silent for
/// `silent_ms` when given.
pub(crate) fn device_views(api: &HttpApi, silent_ms: Option<i64>) -> Vec<DeviceView> {
    let now = now_ms();
    let activity = api.stats.as_ref().map(|(_, ingest)| &ingest.activity);
    let mut out: Vec<DeviceView> = api
        .directory
        .registry()
        .snapshot()
        .registered()
        .map(|d| {
            let seen = activity.and_then(|a| a.of(&d.entry.id));
            let e = &d.entry;
            (
                seen.map(|s| s.last_ms),
                DeviceView {
                    id: e.id.to_string(),
                    kind: e.kind.to_string(),
                    citizen: e.citizen.to_string(),
                    profile: e.profile.to_string(),
                    timezone: e.timezone.as_deref().map(str::to_owned),
                    gateway: e.gateway.as_deref().map(str::to_owned),
                    source: d.source.to_string(),
                    last_seen: seen.map(|s| rfc3339(s.last_ms)),
                    messages: seen.map_or(0, |s| s.messages),
                    per_minute: seen.map_or(0, |s| s.per_minute(now)),
                },
            )
        })
        .filter(|(last, _)| match (silent_ms, last) {
            (None, _) | (Some(_), None) => true,
            (Some(silent), Some(last)) => now - last >= silent,
        })
        .map(|(_, view)| view)
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ExplainParams {
    /// The principal asking (a device, or any other principal).
    pub(crate) principal: String,
    /// The topic it publishes on (or give `subscribe`).
    pub(crate) publish: Option<String>,
    /// The filter it subscribes to.
    pub(crate) subscribe: Option<String>,
    /// 0, 1 or 2 (default 0).
    pub(crate) qos: Option<u8>,
    /// A retained publish.
    pub(crate) retain: Option<bool>,
    /// Its client id (default: the principal id).
    pub(crate) client_id: Option<String>,
    /// The observation time consent is judged for (default now).
    pub(crate) at: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ExplainView {
    pub(crate) allowed: bool,
    /// The deciding rule (file:line and what it says), if one matched.
    pub(crate) rule: Option<String>,
    /// The explanation `kenko acl explain` prints, a line a fact.
    pub(crate) text: String,
}

#[utoipa::path(get, path = "/api/v1/acl/explain", tag = "operators", params(ExplainParams),
    security(("basic" = []), ("session" = [])), responses(
    (status = 200, description = "The decision of the rules in force, and why", body = ExplainView),
    (status = 400, description = "A parameter cannot be used", body = ErrorBody),
    (status = 404, description = "No such principal", body = ErrorBody), Refusals))]
pub(crate) async fn explain(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    params: Result<QueryParams<ExplainParams>, QueryRejection>,
) -> Result<Json<ExplainView>, ApiError> {
    operator_only(&who, "see or act on the hub's operations")?;
    let QueryParams(p) = params.map_err(|e| bad(format!("query: {}", e.body_text())))?;
    Ok(Json(explain_view(&api, &p)?))
}

/// What the rules in force decide for `p`, and why.
pub(crate) fn explain_view(api: &HttpApi, p: &ExplainParams) -> Result<ExplainView, ApiError> {
    for (field, value) in [
        ("principal", Some(&p.principal)),
        ("publish", p.publish.as_ref()),
        ("subscribe", p.subscribe.as_ref()),
        ("client_id", p.client_id.as_ref()),
        ("at", p.at.as_ref()),
    ] {
        short(field, value.map_or("", String::as_str), 4 * MAX_WORD)?;
    }
    let qos = p.qos.unwrap_or(0);
    if qos > 2 {
        return Err(bad("qos: 0, 1 or 2"));
    }
    let request = match (&p.publish, &p.subscribe) {
        (Some(topic), None) => kenko_broker::acl::Request::Publish {
            topic,
            qos,
            retain: p.retain.unwrap_or(false),
        },
        (None, Some(filter)) => kenko_broker::acl::Request::Subscribe { filter, qos },
        _ => return Err(bad("give publish=TOPIC or subscribe=FILTER, one of them")),
    };
    let Some(identity) = api.directory.get(&p.principal) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no principal or device {}", p.principal),
        ));
    };
    let now = now_ms();
    let at = match &p.at {
        Some(t) => kenko_ingest::query::parse_time(t, now).map_err(|e| bad(format!("at: {e}")))?,
        None => now,
    };
    let acl = match &api.authorizer {
        Some(authorizer) => authorizer.current(),
        None => Arc::new(kenko_broker::acl::Acl::default()),
    };
    let client_id = p.client_id.as_deref().unwrap_or(&identity.id);
    let principal = identity.principal(client_id, Some(&identity.id));
    let registry = api.data_dir.join("registry.db");
    let (decision, text) = crate::explain::explain(&acl, &principal, &request, &registry, at, now)
        .map_err(internal)?;
    let rule = decision
        .rule
        .and_then(|i| acl.rules().get(i))
        .map(|r| r.source.to_string());
    Ok(ExplainView {
        allowed: decision.allowed,
        rule,
        text,
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SessionFilter {
    /// Only the connections of this principal.
    principal: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct MqttSessionView {
    pub(crate) client_id: String,
    pub(crate) principal: String,
    /// When the hub accepted the connection.
    pub(crate) connected: String,
    /// The client's address.
    pub(crate) address: String,
    /// "3.1.1" or "5".
    pub(crate) protocol: String,
}

#[utoipa::path(get, path = "/api/v1/mqtt/sessions", tag = "operators", params(SessionFilter),
    security(("basic" = []), ("session" = [])), responses(
    (status = 200, description = "The MQTT clients connected now, by client id", body = [MqttSessionView]),
    (status = 400, description = "A parameter cannot be used", body = ErrorBody), Refusals))]
pub(crate) async fn mqtt_sessions(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    filter: Result<QueryParams<SessionFilter>, QueryRejection>,
) -> Result<Json<Vec<MqttSessionView>>, ApiError> {
    operator_only(&who, "see or act on the hub's operations")?;
    let QueryParams(filter) = filter.map_err(|e| bad(format!("query: {}", e.body_text())))?;
    let principal = filter.principal.as_deref();
    short("principal", principal.unwrap_or(""), MAX_WORD)?;
    Ok(Json(session_views(&api, principal)))
}

/// The MQTT clients connected now (only `principal`'s when given), by client id.
pub(crate) fn session_views(api: &HttpApi, principal: Option<&str>) -> Vec<MqttSessionView> {
    let connected = api.clients.as_ref().map(|c| c.list()).unwrap_or_default();
    connected
        .into_iter()
        .filter(|c| principal.is_none_or(|p| *c.principal == *p))
        .map(|c| MqttSessionView {
            client_id: c.client_id.to_string(),
            principal: c.principal.to_string(),
            connected: rfc3339(c.about.since_ms),
            address: c.about.source.to_string(),
            protocol: c.about.protocol.to_owned(),
        })
        .collect()
}
