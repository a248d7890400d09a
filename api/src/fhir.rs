//! FHIR R4 under `/fhir`, for hospital systems: the capability statement (`metadata`), a
//! minimal `Patient` (its identifier) and `Device`, a search of `Observation`s (vital
//! signs with their LOINC codes and UCUM units), and Bulk Data `$export` (`export`). Every read is decided and audited as
//! the HTTP API's observations are; answers are `application/fhir+json`, errors an
//! `OperationOutcome`.

mod capability;
mod export;
mod params;
mod read;
mod resources;
mod search;

use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;
use serde_json::{json, Value};

use crate::http::{ApiError, HttpApi};
pub(crate) use export::Exports;

/// The media type of every answer.
pub(crate) const FHIR_JSON: &str = "application/fhir+json";

/// The routes of `/fhir` (nested there); anything else under it is an OperationOutcome too.
pub(crate) fn routes() -> Router<HttpApi> {
    let answer = |route: MethodRouter<HttpApi>| route.fallback(method_not_allowed);
    Router::new()
        .route("/metadata", answer(get(capability::metadata)))
        .route("/Patient/:id", answer(get(read::patient)))
        .route("/Device/:id", answer(get(read::device)))
        .route("/Observation", answer(get(search::observations)))
        .route("/$export", answer(get(export::kick_off)))
        .route("/Patient/$export", answer(get(export::kick_off)))
        .route(
            "/$export-status/:id",
            answer(get(export::status).delete(export::cancel)),
        )
        .route("/$export-file/:id/:name", answer(get(export::file)))
        .fallback(not_served)
}

async fn not_served(uri: Uri) -> Outcome {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "{} is not served here; /fhir/metadata lists what this server does",
            uri.path()
        ),
    )
    .into()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Outcome {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} {} is not supported; /fhir/metadata lists the interactions",
            uri.path()
        ),
    )
    .into()
}

/// A FHIR resource as the answer.
fn resource(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

/// An API error as an `OperationOutcome`, with the status and headers the API gives it.
pub(crate) struct Outcome(pub(crate) ApiError);

impl From<ApiError> for Outcome {
    fn from(e: ApiError) -> Outcome {
        Outcome(e)
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let message = self.0.message().to_owned();
        let mut response = self.0.into_response();
        let status = response.status();
        let code = match status {
            StatusCode::BAD_REQUEST => "invalid",
            StatusCode::UNAUTHORIZED => "login",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not-found",
            StatusCode::METHOD_NOT_ALLOWED => "not-supported",
            StatusCode::TOO_MANY_REQUESTS => "throttled",
            StatusCode::SERVICE_UNAVAILABLE => "transient",
            _ => "exception",
        };
        let body = json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": message}],
        });
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(FHIR_JSON),
        );
        headers.remove(header::CONTENT_LENGTH);
        *response.body_mut() =
            axum::body::Body::from(serde_json::to_vec(&body).unwrap_or_default());
        response
    }
}

/// The base URL of this FHIR endpoint: under `http.public_url` when the operator set it,
/// else as the client reached it (`https://host:port/fhir`).
fn base_url(api: &HttpApi, headers: &HeaderMap) -> String {
    if let Some(public) = &api.config.http.public_url {
        return format!("{public}/fhir");
    }
    let scheme = if api.config.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("{scheme}://{host}/fhir")
}

/// Whether `id` can stand as a FHIR resource id: letters, digits, `-` and `.`, 1 to 64.
fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}
