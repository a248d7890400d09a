//! `GET /healthz` (the process is up) and `GET /readyz` (the hub is acknowledging, and will
//! go on doing so): for load balancers and orchestrators, without credentials.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::http::HttpApi;

/// The process is alive and serving HTTP (for a liveness probe).
pub(crate) async fn healthz() -> Response {
    Json(serde_json::json!({ "alive": true })).into_response()
}

/// Whether the hub acknowledges what devices send: 503 with the reasons while a store file
/// is missing, replaced or truncated, the write-ahead log cannot be written or is full, or a
/// sink is so far behind that the log will soon fill. The sinks' lags are shown either way.
pub(crate) async fn readyz(State(api): State<HttpApi>) -> Response {
    let reasons = not_ready(&api);
    let sinks: Vec<serde_json::Value> = api
        .lags
        .iter()
        .flat_map(|lags| lags.lags())
        .map(|lag| serde_json::json!({ "sink": lag.sink, "lag_bytes": lag.bytes }))
        .collect();
    let mut body = serde_json::json!({ "ready": reasons.is_empty(), "sinks": sinks });
    if let Some(lags) = &api.lags {
        body["sink_lag_bound_bytes"] = lags.bound_bytes().into();
    }
    if reasons.is_empty() {
        return Json(body).into_response();
    }
    body["reason"] = reasons[0].clone().into();
    body["reasons"] = reasons.into();
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// Why the hub is not ready, most basic first; empty when it is.
fn not_ready(api: &HttpApi) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Some(fault) = api.health.as_ref().and_then(|h| h.fault_now()) {
        reasons.push(fault);
    }
    if let Some((_, ingest)) = &api.stats {
        if ingest.wal_failing.load(Ordering::Relaxed) == 1 {
            reasons.push(
                "the write-ahead log cannot be written (see the hub's log); acknowledgements wait"
                    .to_owned(),
            );
        }
        if ingest.wal_full.load(Ordering::Relaxed) == 1 {
            reasons.push(
                "the write-ahead log is full; acknowledgements wait until the sinks catch up"
                    .to_owned(),
            );
        }
    }
    if let Some(far) = api.lags.as_ref().and_then(|l| l.too_far()) {
        reasons.push(far);
    }
    reasons
}
