//! `POST /console/alerts/{id}/ack`: a care service's acknowledge button. The form carries
//! the session's CSRF token; the alert is acknowledged as over the API (its citizen's
//! consent must still be in force), then the browser goes back to its page.

use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{Form, Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::http::{bad, forbidden, ApiError, HttpApi};

#[derive(Deserialize)]
pub(crate) struct AckForm {
    csrf_token: String,
}

pub(crate) async fn submit(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    id: Result<UrlPath<i64>, PathRejection>,
    form: Result<Form<AckForm>, FormRejection>,
) -> Response {
    match acknowledge(&api, &headers, id, form).await {
        Ok(()) => Redirect::to("/console#alerts").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn acknowledge(
    api: &HttpApi,
    headers: &HeaderMap,
    id: Result<UrlPath<i64>, PathRejection>,
    form: Result<Form<AckForm>, FormRejection>,
) -> Result<(), ApiError> {
    crate::session::same_origin(&Method::POST, headers)?;
    let Some((who, csrf)) = crate::session::session_of(api, headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the session has ended; sign in again at /login",
        ));
    };
    api.within_limits(&who.id)?;
    let Form(form) = form.map_err(|e| bad(format!("form: {}", e.body_text())))?;
    if !crate::session::form_token_matches(&form.csrf_token, &csrf) {
        return Err(forbidden("wrong CSRF token: reload the page and try again"));
    }
    crate::alerts::care_only(&who)?;
    let UrlPath(id) = id.map_err(|e| bad(format!("alert id: {}", e.body_text())))?;
    crate::alerts::acknowledge(api, &who, id).await.map(|_| ())
}
