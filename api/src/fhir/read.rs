//! `GET /fhir/Patient/{id}` and `GET /fhir/Device/{id}`: a citizen reads its own, a care
//! service those of citizens whose care consent to it is in force, an operator any device.
//! Each read is audited as a read of identified data.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use kenko_broker::auth::Identity;
use kenko_ingest::consent::Purpose;

use super::{is_fhir_id, resource, resources, Outcome};
use crate::http::{forbidden, internal, now_ms, ApiError, Authenticated, HttpApi};
use crate::observations::audit_read_of;

pub(super) async fn patient(
    State(api): State<HttpApi>,
    who: Result<Authenticated, ApiError>,
    Path(id): Path<String>,
) -> Result<Response, Outcome> {
    let Authenticated(who) = who?;
    if !is_fhir_id(&id) {
        return Err(not_found("Patient", &id).into());
    }
    may_read_citizen(&api, &who, &id)?;
    audit(&api, &who, "fhir:Patient", &id).await?;
    Ok(resource(StatusCode::OK, &resources::patient(&id)))
}

pub(super) async fn device(
    State(api): State<HttpApi>,
    who: Result<Authenticated, ApiError>,
    Path(id): Path<String>,
) -> Result<Response, Outcome> {
    let Authenticated(who) = who?;
    // A device the principal may not read is as unknown as none: a refusal naming its
    // citizen would tell whose it is.
    let operator = who.roles.iter().any(|r| r == "operator");
    let entry = api
        .directory
        .registry()
        .get(&id)
        .filter(|_| is_fhir_id(&id))
        .filter(|e| operator || may_read_citizen(&api, &who, &e.citizen).is_ok())
        .ok_or_else(|| not_found("Device", &id))?;
    audit(&api, &who, "fhir:Device", &entry.citizen).await?;
    Ok(resource(StatusCode::OK, &resources::device(&entry)))
}

/// `who` may read what identifies `citizen`: it is the citizen's own app, or a care
/// service with the citizen's care consent in force now.
fn may_read_citizen(api: &HttpApi, who: &Identity, citizen: &str) -> Result<(), ApiError> {
    let has = |role: &str| who.roles.iter().any(|r| r == role);
    if has("citizen") && who.citizen.as_deref() == Some(citizen) {
        return Ok(());
    }
    if has("care")
        && api
            .consents
            .current()
            .permits_any(citizen, &who.id, Purpose::Care, now_ms())
    {
        return Ok(());
    }
    Err(forbidden(format!(
        "{} may not read {citizen}'s records: the citizen's own app may, and care services with the citizen's care consent",
        who.id
    )))
}

async fn audit(api: &HttpApi, who: &Identity, what: &str, citizen: &str) -> Result<(), ApiError> {
    let (registry, principal) = (api.data_dir.join("registry.db"), who.id.clone());
    let (what, citizen) = (what.to_owned(), citizen.to_owned());
    tokio::task::spawn_blocking(move || {
        audit_read_of(&registry, &principal, &what, &[&citizen], 1, now_ms())
    })
    .await
    .map_err(internal)?
}

fn not_found(kind: &str, id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no {kind} {id:?} here"))
}
