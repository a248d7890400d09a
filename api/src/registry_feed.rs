//! The hub's registry served to the workers that follow it (`kenko worker` with
//! `[registry]`): its consent records in id order (`GET /api/v1/registry/consents`) and its
//! devices (`GET /api/v1/registry/devices`). Both may wait (`wait_s`) for a change before
//! answering, so that a withdrawal reaches every worker as soon as the hub has it while an
//! idle worker asks once per wait. For principals with the `worker` or `operator` role.

use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kenko_broker::auth::Identity;
use kenko_ingest::consent::{Consent, ConsentChange, ConsentRegistry, Purpose};
use serde::{Deserialize, Serialize};

use crate::http::{bad, forbidden, internal, ApiError, Authenticated, HttpApi};
use crate::openapi::{ErrorBody, Refusals};

/// Records after `after` one answer carries at most (and record `after` itself).
pub const MAX_RECORDS: usize = 1000;
/// How often a waiting request looks for a change.
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// One consent record, as stored: times in epoch milliseconds, so that a copy is exact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeedConsent {
    pub id: i64,
    pub recorded_ms: i64,
    pub citizen: String,
    pub grantee: String,
    /// collect, care or research.
    pub purpose: String,
    pub data_types: Vec<String>,
    pub valid_from_ms: Option<i64>,
    pub valid_until_ms: Option<i64>,
    pub source: String,
    pub granted: bool,
    pub erase: bool,
}

impl From<Consent> for FeedConsent {
    fn from(c: Consent) -> FeedConsent {
        let ch = c.change;
        FeedConsent {
            id: c.id,
            recorded_ms: c.recorded_ms,
            citizen: ch.citizen,
            grantee: ch.grantee,
            purpose: ch.purpose.as_str().to_owned(),
            data_types: ch.data_types,
            valid_from_ms: ch.valid_from_ms,
            valid_until_ms: ch.valid_until_ms,
            source: ch.source,
            granted: ch.granted,
            erase: ch.erase,
        }
    }
}

impl TryFrom<FeedConsent> for Consent {
    type Error = String;

    fn try_from(f: FeedConsent) -> Result<Consent, String> {
        let purpose: Purpose = f
            .purpose
            .parse()
            .map_err(|e| format!("consent record {}: {e}", f.id))?;
        Ok(Consent {
            id: f.id,
            recorded_ms: f.recorded_ms,
            change: ConsentChange {
                citizen: f.citizen,
                grantee: f.grantee,
                purpose,
                data_types: f.data_types,
                valid_from_ms: f.valid_from_ms,
                valid_until_ms: f.valid_until_ms,
                source: f.source,
                granted: f.granted,
                erase: f.erase,
            },
        })
    }
}

/// Consent records from `after` on.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsentFeed {
    /// In id order. With `after` above 0, the first is record `after` itself, for the
    /// follower to check against its copy.
    pub records: Vec<FeedConsent>,
    /// The hub's newest record's id.
    pub last_id: i64,
}

/// One device of the hub, as decoding its telemetry needs it (no credentials).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeedDevice {
    pub id: String,
    pub kind: String,
    pub citizen: String,
    pub profile: String,
    pub timezone: Option<String>,
    /// The device whose messages may carry this device's readings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// Every device of the hub (configuration and registry.db).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceFeed {
    pub devices: Vec<FeedDevice>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConsentFeedQuery {
    /// The newest record the follower holds (0: none).
    #[serde(default)]
    after: i64,
    /// Records after it to send at most (1 to 1000; default 1000).
    limit: Option<usize>,
    /// Seconds to wait for a record after `after` before answering (0 to 60; default 0).
    #[serde(default)]
    wait_s: u64,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeviceFeedQuery {
    /// Seconds to wait for a change from the list the `If-None-Match` tag names before
    /// answering 304 (0 to 60; default 0).
    #[serde(default)]
    wait_s: u64,
}

/// Refuses (403) anyone but workers and operators.
fn followers_only(who: &Identity) -> Result<(), ApiError> {
    if who.roles.iter().any(|r| r == "worker" || r == "operator") {
        return Ok(());
    }
    Err(forbidden(format!(
        "{} may not read the hub's registry; workers and operators may",
        who.id
    )))
}

fn wait(wait_s: u64) -> Result<Duration, ApiError> {
    if wait_s > kenko_config::registry::MAX_WAIT_S {
        return Err(bad(format!(
            "wait_s must be 0 to {} seconds",
            kenko_config::registry::MAX_WAIT_S
        )));
    }
    Ok(Duration::from_secs(wait_s))
}

/// Waits until `changed` holds, `wait` has passed or the hub stops.
async fn until(api: &HttpApi, wait: Duration, changed: impl Fn() -> bool) {
    let deadline = Instant::now() + wait;
    while !changed() && Instant::now() < deadline && !api.stopping.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = api.stopping.cancelled() => {}
        }
    }
}

#[utoipa::path(get, path = "/api/v1/registry/consents", tag = "registry", params(ConsentFeedQuery), security(("basic" = []), ("session" = [])),
    responses((status = 200, description = "The records from `after` on, oldest first", body = ConsentFeed), (status = 400, description = "A parameter cannot be used", body = ErrorBody), (status = 409, description = "The hub has no record `after`: the follower holds records the hub does not", body = ErrorBody), Refusals))]
pub(crate) async fn consents(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    query: Result<Query<ConsentFeedQuery>, QueryRejection>,
) -> Result<Json<ConsentFeed>, ApiError> {
    followers_only(&who)?;
    let Query(query) = query.map_err(|e| bad(format!("query: {}", e.body_text())))?;
    let limit = query.limit.unwrap_or(MAX_RECORDS);
    if !(1..=MAX_RECORDS).contains(&limit) || query.after < 0 {
        return Err(bad(format!(
            "after must be 0 or more and limit 1 to {MAX_RECORDS}"
        )));
    }
    let after = query.after;
    until(&api, wait(query.wait_s)?, || {
        api.consents.current().last_id() > after
    })
    .await;
    let path = api.data_dir.join("registry.db");
    let (records, last_id) = tokio::task::spawn_blocking(move || {
        let registry = ConsentRegistry::open_read_only(&path)?;
        // The follower's newest record comes first, for it to check its copy.
        let records = registry.list_from(after.max(1), limit + usize::from(after > 0))?;
        Ok::<_, kenko_ingest::store::StoreError>((records, registry.last_id()?))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    if after > 0 && records.first().is_none_or(|r| r.id != after) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("the hub has no consent record {after} (its newest is {last_id}): the follower holds records that were not copied from this hub"),
        ));
    }
    Ok(Json(ConsentFeed {
        records: records.into_iter().map(FeedConsent::from).collect(),
        last_id,
    }))
}

#[utoipa::path(get, path = "/api/v1/registry/devices", tag = "registry", params(DeviceFeedQuery, ("If-None-Match" = Option<String>, Header, description = "The ETag of the list the follower holds")), security(("basic" = []), ("session" = [])),
    responses((status = 200, description = "Every device of the hub, by id; its ETag names this list", body = DeviceFeed), (status = 304, description = "The list named by If-None-Match is current"), (status = 400, description = "A parameter cannot be used", body = ErrorBody), Refusals))]
pub(crate) async fn devices(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    headers: HeaderMap,
    query: Result<Query<DeviceFeedQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    followers_only(&who)?;
    let Query(query) = query.map_err(|e| bad(format!("query: {}", e.body_text())))?;
    let wait = wait(query.wait_s)?;
    let registry = api.directory.registry();
    let held = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let tag = |generation: u64| format!("\"{}-{generation}\"", api.started);
    if held.is_some() {
        until(&api, wait, || {
            held.as_deref() != Some(&tag(registry.generation()))
        })
        .await;
    }
    // Read the generation before the list: a change in between makes the next ask fetch
    // again rather than miss it.
    let etag = tag(registry.generation());
    let etag_header = HeaderValue::from_str(&etag).map_err(internal)?;
    if held.as_deref() == Some(etag.as_str()) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_header)]).into_response());
    }
    let mut devices: Vec<FeedDevice> = registry
        .snapshot()
        .iter()
        .map(|d| FeedDevice {
            id: d.id.to_string(),
            kind: d.kind.to_string(),
            citizen: d.citizen.to_string(),
            profile: d.profile.to_string(),
            timezone: d.timezone.as_deref().map(str::to_owned),
            gateway: d.gateway.as_deref().map(str::to_owned),
        })
        .collect();
    devices.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    Ok(([(header::ETAG, etag_header)], Json(DeviceFeed { devices })).into_response())
}
