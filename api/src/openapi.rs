//! The API's description of itself: an OpenAPI 3.1 document generated from the handlers'
//! `#[utoipa::path]` attributes and the answers' types (`GET /api/v1/openapi.json`), and a
//! page that lists its operations for people (`GET /api/v1/docs`). Both without credentials:
//! they say what the API does, not what it holds.

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::session::escape;

/// What every refused or failed request answers.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong, for people.
    error: String,
    /// For a failure inside the hub: the id its log holds the details under.
    #[serde(skip_serializing_if = "Option::is_none")]
    error_id: Option<String>,
}

/// The refusals every operation that needs credentials may answer, declared once. It
/// describes answers for the document only; `ApiError` builds them.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum Refusals {
    #[response(status = 401, description = "No or bad credentials")]
    Unauthenticated(ErrorBody),
    #[response(
        status = 403,
        description = "Not for this principal (or no CSRF token)"
    )]
    Forbidden(ErrorBody),
    #[response(
        status = 429,
        description = "Too many requests or logins; see Retry-After"
    )]
    TooMany(ErrorBody),
}

/// HTTP Basic (API clients) and the session cookie (browsers).
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        components.add_security_scheme(
            "hooks",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The MQTT hooks' secret ([http.mqtt_hooks]); also accepted as ?token=",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::session::COOKIE,
                "From POST /api/v1/session; state-changing requests also send X-CSRF-Token",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kenko",
        description = "The HTTP API of kenko, a city's health-IoT hub: consents, observations, \
                       alerts, principals, sessions, health and metrics."
    ),
    paths(
        crate::http::list_consents,
        crate::http::record_consent,
        crate::observations::observations,
        crate::principals::list,
        crate::principals::create,
        crate::principals::change_password,
        crate::principals::delete,
        crate::session::login,
        crate::session::current,
        crate::session::logout,
        crate::alerts::list,
        crate::alerts::ack,
        crate::operators::dead_letters,
        crate::operators::replay,
        crate::operators::replay_status,
        crate::operators::log,
        crate::operators::devices,
        crate::operators::mqtt_sessions,
        crate::operators::denials,
        crate::operators::explain,
        crate::mqtt_hooks::auth,
        crate::mqtt_hooks::acl,
        crate::mqtt_hooks::superuser,
        crate::registry_feed::consents,
        crate::registry_feed::devices,
        crate::http::metrics,
        crate::health::healthz,
        crate::health::readyz,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Credentials)
)]
struct ApiDoc;

/// The document, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /api/v1/openapi.json`.
pub(crate) async fn openapi_json() -> Response {
    axum::Json(document()).into_response()
}

/// `GET /api/v1/docs`: every operation with its parameters and answers, as HTML.
pub(crate) async fn docs_page() -> Response {
    let doc = document();
    let mut body = String::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in operations(item) {
            body.push_str(&format!(
                "<section><h2><code>{} {}</code></h2>",
                method,
                escape(path)
            ));
            if let Some(summary) = op.summary.as_deref().or(op.description.as_deref()) {
                body.push_str(&format!("<p>{}</p>", escape(summary)));
            }
            if let Some(params) = &op.parameters {
                body.push_str("<ul>");
                for p in params {
                    body.push_str(&format!(
                        "<li><code>{}</code>{}</li>",
                        escape(&p.name),
                        p.description
                            .as_deref()
                            .map(|d| format!(": {}", escape(d)))
                            .unwrap_or_default()
                    ));
                }
                body.push_str("</ul>");
            }
            body.push_str("<table><tr><th>status</th><th>meaning</th></tr>");
            for (status, response) in &op.responses.responses {
                let text = match response {
                    utoipa::openapi::RefOr::T(r) => r.description.clone(),
                    utoipa::openapi::RefOr::Ref(r) => r.ref_location.clone(),
                };
                body.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td></tr>",
                    escape(status),
                    escape(&text)
                ));
            }
            body.push_str("</table></section>");
        }
    }
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>kenko API</title></head><body><h1>kenko API {}</h1>\
         <p>The machine-readable description: <a href=\"/api/v1/openapi.json\">openapi.json</a> \
         (OpenAPI 3.1). Log in with HTTP Basic, or from a browser at <a href=\"/login\">/login</a>.</p>\
         {body}</body></html>",
        escape(&doc.info.version)
    );
    let mut response = Html(page).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    response
}

/// The operations of a path, by method.
fn operations(
    item: &utoipa::openapi::PathItem,
) -> Vec<(&'static str, &utoipa::openapi::path::Operation)> {
    [
        ("GET", &item.get),
        ("POST", &item.post),
        ("PUT", &item.put),
        ("DELETE", &item.delete),
        ("PATCH", &item.patch),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_ref().map(|op| (m, op)))
    .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_openapi_3_1_and_names_every_operation() {
        let doc = serde_json::to_value(super::document()).expect("serializes");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{doc}"
        );
        let paths = doc["paths"].as_object().expect("paths");
        for path in [
            "/api/v1/consents",
            "/api/v1/observations",
            "/api/v1/principals",
            "/api/v1/principals/{id}",
            "/api/v1/principals/{id}/password",
            "/api/v1/session",
            "/metrics",
            "/healthz",
            "/readyz",
        ] {
            assert!(paths.contains_key(path), "{path} in {:?}", paths.keys());
        }
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
}
