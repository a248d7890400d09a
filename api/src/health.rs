//! `GET /healthz` (the process is up) and `GET /readyz` (the hub is acknowledging, and will
//! go on doing so): for load balancers and orchestrators, without credentials.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::http::HttpApi;

/// `GET /healthz`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Alive {
    alive: bool,
}

/// `GET /readyz`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Readiness {
    ready: bool,
    /// How far each sink is behind the write-ahead log.
    sinks: Vec<SinkLagView>,
    /// The lag at which the hub stops being ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    sink_lag_bound_bytes: Option<u64>,
    /// Why it is not ready, most basic first (when it is not).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasons: Option<Vec<String>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SinkLagView {
    pub(crate) sink: String,
    pub(crate) lag_bytes: u64,
}

/// The process is alive and serving HTTP (for a liveness probe).
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is up", body = Alive)))]
pub(crate) async fn healthz() -> Response {
    Json(Alive { alive: true }).into_response()
}

/// Whether the hub acknowledges what devices send: 503 with the reasons while a store file
/// is missing, replaced or truncated, the write-ahead log cannot be written or is full, or a
/// sink is so far behind that the log will soon fill. The sinks' lags are shown either way.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "Not ready, with the reasons", body = Readiness)))]
pub(crate) async fn readyz(State(api): State<HttpApi>) -> Response {
    let reasons = not_ready(&api);
    let sinks = sink_lags(&api);
    let ready = reasons.is_empty();
    let body = Readiness {
        ready,
        sinks,
        sink_lag_bound_bytes: api.lags.as_ref().map(|l| l.bound_bytes()),
        reason: reasons.first().cloned(),
        reasons: (!ready).then_some(reasons),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// How far each sink is behind the write-ahead log.
pub(crate) fn sink_lags(api: &HttpApi) -> Vec<SinkLagView> {
    api.lags
        .iter()
        .flat_map(|lags| lags.lags())
        .map(|lag| SinkLagView {
            sink: lag.sink.to_string(),
            lag_bytes: lag.bytes,
        })
        .collect()
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
