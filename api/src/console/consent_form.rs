//! `POST /console/consents`: a citizen's consent buttons. The form carries the session's
//! CSRF token; the change is recorded as over the API (checked, audited, in force for MQTT
//! and HTTP within the consent book's poll), then the browser goes back to its page.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use kenko_ingest::consent::{ConsentChange, ConsentRegistry, Purpose, HUB};
use serde::Deserialize;

use crate::http::{
    bad, forbidden, internal, now_ms, short, store_consent, ApiError, HttpApi, MAX_WORD,
};

#[derive(Deserialize)]
pub(crate) struct ConsentForm {
    csrf_token: String,
    purpose: String,
    grantee: String,
    /// `grant` or `revoke`.
    change: String,
}

pub(crate) async fn submit(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    form: Result<Form<ConsentForm>, FormRejection>,
) -> Response {
    match record(&api, &headers, form).await {
        Ok(()) => Redirect::to("/console#consents").into_response(),
        Err(e) => super::error_page(&headers, e),
    }
}

async fn record(
    api: &HttpApi,
    headers: &HeaderMap,
    form: Result<Form<ConsentForm>, FormRejection>,
) -> Result<(), ApiError> {
    let Form(form) = form.map_err(|e| bad(format!("form: {}", e.body_text())))?;
    let who = super::form_session(api, headers, &form.csrf_token)?;
    let Some(citizen) = who.citizen.clone() else {
        return Err(forbidden(format!("{} is not a citizen's login", who.id)));
    };
    let purpose: Purpose = short("purpose", &form.purpose, MAX_WORD)?
        .parse()
        .map_err(bad)?;
    let granted = match short("change", &form.change, MAX_WORD)? {
        "grant" => true,
        "revoke" => false,
        other => return Err(bad(format!("change {other:?}: use grant or revoke"))),
    };
    let grantee = short("grantee", &form.grantee, MAX_WORD)?.to_owned();
    if purpose != Purpose::Care && grantee != HUB {
        return Err(bad(format!("{} is granted to the hub", purpose.as_str())));
    }
    // Care goes to a care service the hub knows (a withdrawal may name one that is gone).
    if purpose == Purpose::Care
        && granted
        && !crate::principals::with_role(api, "care").contains(&grantee)
    {
        return Err(bad(format!("{grantee} is not a care service of this hub")));
    }
    // Granting again gives back what was granted before (its data types and time window),
    // not more; a first grant from the console covers every type, from now on.
    let (data_types, valid_from_ms, valid_until_ms) = if granted {
        earlier_grant(api, &citizen, purpose, &grantee).await?
    } else {
        (Vec::new(), None, None)
    };
    let change = ConsentChange {
        citizen,
        grantee,
        purpose,
        data_types,
        valid_from_ms,
        valid_until_ms,
        source: format!("console:{}", who.id),
        granted,
        erase: false,
    };
    store_consent(api, &who, change, now_ms()).await.map(|_| ())
}

/// The scope of the citizen's latest grant for `purpose` to `grantee`: data types and time
/// window (all types and no window when there was none).
async fn earlier_grant(
    api: &HttpApi,
    citizen: &str,
    purpose: Purpose,
    grantee: &str,
) -> Result<(Vec<String>, Option<i64>, Option<i64>), ApiError> {
    let (path, citizen, grantee) = (
        api.data_dir.join("registry.db"),
        citizen.to_owned(),
        grantee.to_owned(),
    );
    let records = tokio::task::spawn_blocking(move || {
        ConsentRegistry::open(&path).and_then(|r| r.list(Some(&citizen)))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(records
        .into_iter()
        .rev()
        .map(|r| r.change)
        .find(|c| c.granted && c.purpose == purpose && c.grantee == grantee)
        .map_or((Vec::new(), None, None), |c| {
            (c.data_types, c.valid_from_ms, c.valid_until_ms)
        }))
}
