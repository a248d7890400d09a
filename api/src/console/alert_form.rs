//! `POST /console/alerts/{id}/ack`: a care service's acknowledge button. The form carries
//! the session's CSRF token; the alert is acknowledged as over the API (its citizen's
//! consent must still be in force), then the browser goes back to its page.

use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{Form, Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::http::{bad, ApiError, HttpApi};

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
        Err(e) => super::error_page(&headers, e),
    }
}

async fn acknowledge(
    api: &HttpApi,
    headers: &HeaderMap,
    id: Result<UrlPath<i64>, PathRejection>,
    form: Result<Form<AckForm>, FormRejection>,
) -> Result<(), ApiError> {
    let Form(form) = form.map_err(|e| bad(format!("form: {}", e.body_text())))?;
    let who = super::form_session(api, headers, &form.csrf_token)?;
    crate::alerts::care_only(&who)?;
    let UrlPath(id) = id.map_err(|e| bad(format!("alert id: {}", e.body_text())))?;
    crate::alerts::acknowledge(api, &who, id).await.map(|_| ())
}
