//! `POST /console/deadletters/replay`: an operator's replay button. The form carries the
//! session's CSRF token and the letter's id; the hub's writer is asked to run it through
//! the pipeline again, as `POST /api/v1/deadletters/replay` does, and the page shows the
//! request's outcome.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::http::{bad, operator_only, ApiError, HttpApi};
use crate::operators::{request_replay, selection};

#[derive(Deserialize)]
pub(crate) struct ReplayForm {
    csrf_token: String,
    /// The letter to replay.
    id: i64,
}

pub(crate) async fn submit(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    form: Result<Form<ReplayForm>, FormRejection>,
) -> Response {
    match replay(&api, &headers, form).await {
        Ok(request) => {
            Redirect::to(&format!("/console?replay={request}#deadletters")).into_response()
        }
        Err(e) => super::error_page(&headers, e),
    }
}

/// Asks for the replay; the request's id.
async fn replay(
    api: &HttpApi,
    headers: &HeaderMap,
    form: Result<Form<ReplayForm>, FormRejection>,
) -> Result<i64, ApiError> {
    let Form(form) = form.map_err(|e| bad(format!("form: {}", e.body_text())))?;
    let who = super::form_session(api, headers, &form.csrf_token)?;
    operator_only(&who, "replay dead letters")?;
    let request = request_replay(api, &who, selection(Some(form.id), None, None)?).await?;
    Ok(request.id)
}
