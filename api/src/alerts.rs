//! A care service's alerts (role `care`): `GET /api/v1/alerts` (`state` open or all,
//! `limit`) lists those raised for it, newest first; `POST /api/v1/alerts/{id}/ack`
//! acknowledges one. Only alerts about citizens whose care consent to the service, for the
//! alert's metric, is in force now are shown or acknowledged: a withdrawal hides them at once.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::Json;
use kenko_broker::auth::Identity;
use kenko_ingest::alerts::{Acked, Alert, AlertStore};
use kenko_ingest::consent::{Consents, Purpose};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::http::{
    bad, ensure_sound_stores, forbidden, internal, now_ms, rfc3339, ApiError, Authenticated,
    HttpApi,
};
use crate::openapi::{ErrorBody, Refusals};

/// Alerts a listing shows unless `limit` says otherwise, and at most.
const DEFAULT_ALERTS: usize = 100;
const MAX_ALERTS: usize = 1_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AlertFilter {
    /// `open` (not yet acknowledged; the default) or `all`.
    state: Option<String>,
    /// Newest alerts shown (100 unless asked; 1,000 at most).
    limit: Option<usize>,
}

/// An alert as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AlertView {
    id: i64,
    /// The `[[alerts]]` rule that raised it.
    rule: String,
    citizen: String,
    device: String,
    metric: String,
    /// The reading that raised it; absent for a silence.
    value: Option<f64>,
    /// When the condition began.
    started: String,
    /// The event time of the reading it is about.
    event_time: String,
    raised: String,
    acknowledged: Option<String>,
    acknowledged_by: Option<String>,
}

impl From<Alert> for AlertView {
    fn from(a: Alert) -> AlertView {
        let (acknowledged, acknowledged_by) = match a.acked {
            Some((at, by)) => (Some(rfc3339(at)), Some(by)),
            None => (None, None),
        };
        let n = a.new;
        AlertView {
            id: a.id,
            rule: n.rule,
            citizen: n.citizen,
            device: n.device,
            metric: n.metric,
            value: n.value,
            started: rfc3339(n.started_ms),
            event_time: rfc3339(n.event_ms),
            raised: rfc3339(n.raised_ms),
            acknowledged,
            acknowledged_by,
        }
    }
}

/// Refuses principals that are not care services.
pub(crate) fn care_only(who: &Identity) -> Result<(), ApiError> {
    if who.roles.iter().any(|r| r == "care") {
        Ok(())
    } else {
        Err(forbidden(format!(
            "alerts are for care services; {} is not one",
            who.id
        )))
    }
}

/// Does the care consent in force now let `service` see `alert`: the metric, from the start
/// of the condition to the reading it is about (a consent's time window is one span)?
pub(crate) fn consented(consents: &Consents, service: &str, alert: &Alert, now: i64) -> bool {
    let a = &alert.new;
    [a.started_ms, a.event_ms]
        .into_iter()
        .all(|t| consents.permits(&a.citizen, service, Purpose::Care, &a.metric, t, now))
}

/// The alerts of care service `who`, newest first, of citizens whose consent is in force:
/// at most `limit`, read a page at a time until that many are found (the alerts of a
/// citizen who withdrew stay in the file, hidden, and must not crowd out the others).
pub(crate) async fn care_alerts(
    api: &HttpApi,
    who: &Identity,
    open: bool,
    limit: usize,
) -> Result<Vec<Alert>, ApiError> {
    let path = api.data_dir.join(kenko_ingest::alerts::FILE);
    let (service, consents, now) = (who.id.clone(), api.consents.current(), now_ms());
    tokio::task::spawn_blocking(
        move || -> Result<Vec<Alert>, kenko_ingest::store::StoreError> {
            if !path.exists() {
                return Ok(Vec::new()); // no rules yet, so no alerts
            }
            let store = AlertStore::open_existing(&path)?;
            let mut found = Vec::new();
            let mut before = None;
            loop {
                let page = store.list_before(Some(&service), open, before, limit)?;
                let last_page = page.len() < limit;
                before = page.last().map(|a| a.id);
                found.extend(
                    page.into_iter()
                        .filter(|a| consented(&consents, &service, a, now)),
                );
                if found.len() >= limit || last_page || before.is_none() {
                    found.truncate(limit);
                    return Ok(found);
                }
            }
        },
    )
    .await
    .map_err(internal)?
    .map_err(internal)
}

/// Acknowledges alert `id` for care service `who`.
pub(crate) async fn acknowledge(api: &HttpApi, who: &Identity, id: i64) -> Result<Alert, ApiError> {
    let path = api.data_dir.join(kenko_ingest::alerts::FILE);
    let (service, consents, now) = (who.id.clone(), api.consents.current(), now_ms());
    let gone = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no alert {id} for {}", who.id),
        )
    };
    let acked = tokio::task::spawn_blocking(move || {
        if !path.exists() {
            return Ok(Acked::Unknown); // no rules yet, so no alerts
        }
        let mut store = AlertStore::open(&path)?;
        // Checked before it changes: an alert of a citizen who withdrew is not theirs to touch.
        match store.get(id, &service)? {
            Some(a) if consented(&consents, &service, &a, now) => {
                store.acknowledge(id, &service, &service, now)
            }
            _ => Ok(Acked::Unknown),
        }
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    match acked {
        Acked::Now(a) => {
            info!(alert = id, principal = %who.id, "alert acknowledged");
            Ok(a)
        }
        Acked::Before(a) => Ok(a),
        Acked::Unknown => Err(gone()),
    }
}

#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", params(AlertFilter), security(("basic" = []), ("session" = [])),
    responses((status = 200, description = "The care service's alerts, newest first", body = [AlertView]), (status = 400, description = "A parameter or the body cannot be used", body = ErrorBody), (status = 503, description = "The stores are unavailable", body = ErrorBody), Refusals))]
pub(crate) async fn list(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    filter: Result<QueryParams<AlertFilter>, QueryRejection>,
) -> Result<Json<Vec<AlertView>>, ApiError> {
    care_only(&who)?;
    ensure_sound_stores(&api)?;
    let QueryParams(filter) = filter.map_err(|e| bad(format!("query: {}", e.body_text())))?;
    let open = match filter.state.as_deref() {
        None | Some("open") => true,
        Some("all") => false,
        Some(_) => return Err(bad("state: use open or all")),
    };
    let limit = filter.limit.unwrap_or(DEFAULT_ALERTS);
    if limit == 0 || limit > MAX_ALERTS {
        return Err(bad(format!("limit: from 1 to {MAX_ALERTS}")));
    }
    let alerts = care_alerts(&api, &who, open, limit).await?;
    Ok(Json(alerts.into_iter().map(AlertView::from).collect()))
}

#[utoipa::path(post, path = "/api/v1/alerts/{id}/ack", tag = "alerts", params(("id" = i64, Path, description = "The alert")), security(("basic" = []), ("session" = [])),
    responses((status = 200, description = "Acknowledged (now, or before: then as it was)", body = AlertView), (status = 400, description = "The alert id is not a number", body = ErrorBody), (status = 404, description = "No such alert for this care service, or its citizen's consent is no longer in force", body = ErrorBody), (status = 503, description = "The stores are unavailable", body = ErrorBody), Refusals))]
pub(crate) async fn ack(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    id: Result<UrlPath<i64>, axum::extract::rejection::PathRejection>,
) -> Result<Json<AlertView>, ApiError> {
    care_only(&who)?;
    ensure_sound_stores(&api)?;
    let UrlPath(id) = id.map_err(|e| bad(format!("alert id: {}", e.body_text())))?;
    Ok(Json(acknowledge(&api, &who, id).await?.into()))
}
