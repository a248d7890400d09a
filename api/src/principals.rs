//! Principals of `registry.db` managed at runtime, by `kenko principal` and by operators over
//! `/api/v1/principals`: each change made and written to the audit log (who made it, never a
//! password or hash). A running hub's registry watcher puts changes in force.
//!
//! - `GET /api/v1/principals`: the config file's and registry.db's principals.
//! - `POST /api/v1/principals` (`id, roles, citizen, password` or `generate_password: true`):
//!   201 with the principal, and the generated password once.
//! - `PUT /api/v1/principals/{id}/password` (`password` or `generate_password: true`).
//! - `DELETE /api/v1/principals/{id}`.

use crate::openapi::{ErrorBody, Refusals};
use std::path::Path;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use kenko_broker::auth::{hash_password, new_token, Cost};
use kenko_config::Config;
use kenko_devices::registry::{NewPrincipal, PrincipalError, PrincipalStore, StoredPrincipal};
use kenko_ingest::consent::ConsentRegistry;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::http::{
    bad, ensure_sound_stores, internal, now_ms, operator_only, rfc3339, short, ApiError,
    Authenticated, HttpApi, MAX_WORD,
};

/// Shortest and longest password a person may choose over the API.
const PASSWORD_BYTES: std::ops::RangeInclusive<usize> = 8..=1024;

/// Why a change of a principal failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Principal(#[from] PrincipalError),
    #[error("the change was made, but its audit entry ({kind}) could not be written: {source}")]
    Audit {
        kind: &'static str,
        source: kenko_ingest::store::StoreError,
    },
}

fn audit(path: &Path, kind: &'static str, body: serde_json::Value) -> Result<(), AdminError> {
    ConsentRegistry::open(path)
        .and_then(|mut r| r.audit(now_ms(), kind, &body.to_string()))
        .map_err(|source| AdminError::Audit { kind, source })
}

/// Adds `new` to the `registry.db` at `path`, audited as made `by`.
pub fn add(
    path: &Path,
    config: &Config,
    new: NewPrincipal,
    by: &str,
) -> Result<StoredPrincipal, AdminError> {
    let p = PrincipalStore::open(path)?.add(config, new, now_ms())?;
    let body = serde_json::json!({
        "principal": p.id, "roles": p.roles, "citizen": p.citizen, "by": by,
    });
    audit(path, "principal.add", body)?;
    Ok(p)
}

/// Replaces the password hash of principal `id`, audited as made `by`.
pub fn set_password(
    path: &Path,
    id: &str,
    password_hash: &str,
    by: &str,
) -> Result<StoredPrincipal, AdminError> {
    let p = PrincipalStore::open(path)?.set_password(id, password_hash, now_ms())?;
    audit(
        path,
        "principal.passwd",
        serde_json::json!({ "principal": p.id, "by": by }),
    )?;
    Ok(p)
}

/// Removes principal `id`, audited as made `by`.
pub fn remove(path: &Path, id: &str, by: &str) -> Result<StoredPrincipal, AdminError> {
    let p = PrincipalStore::open(path)?.remove(id)?;
    audit(
        path,
        "principal.remove",
        serde_json::json!({ "principal": p.id, "roles": p.roles, "by": by }),
    )?;
    Ok(p)
}

/// A principal as the API shows it (never its hash).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PrincipalView {
    id: String,
    roles: Vec<String>,
    citizen: Option<String>,
    /// `config` (the config file's) or `registry` (registry.db's).
    source: &'static str,
    added: Option<String>,
    changed: Option<String>,
}

impl From<&StoredPrincipal> for PrincipalView {
    fn from(p: &StoredPrincipal) -> PrincipalView {
        PrincipalView {
            id: p.id.clone(),
            roles: p.roles.clone(),
            citizen: p.citizen.clone(),
            source: "registry",
            added: Some(rfc3339(p.added_ms)),
            changed: Some(rfc3339(p.changed_ms)),
        }
    }
}

/// An answer that may carry a password made for the request, shown only this once.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct WithPassword {
    principal: PrincipalView,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewBody {
    id: String,
    roles: Vec<String>,
    #[serde(default)]
    citizen: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    generate_password: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordBody {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    generate_password: bool,
}

impl PasswordBody {
    /// The hash to store and, when it was generated, the password to show once. Hashing is
    /// slow on purpose: this runs off the async workers.
    async fn hash(self) -> Result<(String, Option<String>), ApiError> {
        let (password, cost, shown) = match (self.password, self.generate_password) {
            (Some(_), true) => {
                return Err(bad("give password or generate_password = true, not both"))
            }
            (None, false) => return Err(bad("give password, or generate_password = true")),
            (None, true) => {
                let token = new_token();
                (token.clone(), Cost::Token, Some(token))
            }
            (Some(p), false) if !PASSWORD_BYTES.contains(&p.len()) => {
                return Err(bad(format!(
                    "password: {} to {} bytes",
                    PASSWORD_BYTES.start(),
                    PASSWORD_BYTES.end()
                )))
            }
            (Some(p), false) => (p, Cost::Password, None),
        };
        let hash = tokio::task::spawn_blocking(move || hash_password(&password, cost))
            .await
            .map_err(internal)?;
        Ok((hash, shown))
    }
}

/// A principal of the config file is changed by editing the file, not over the API.
fn in_config(api: &HttpApi, id: &str) -> Result<(), ApiError> {
    if api.config.principals.iter().any(|p| p.id == id) {
        return Err(refused(PrincipalError::InConfig(id.to_owned()).into()));
    }
    Ok(())
}

fn refused(e: AdminError) -> ApiError {
    let status = match &e {
        AdminError::Principal(PrincipalError::NotFound(_)) => StatusCode::NOT_FOUND,
        AdminError::Principal(
            PrincipalError::Duplicate(_)
            | PrincipalError::InConfig(_)
            | PrincipalError::Device(_)
            | PrincipalError::Reserved,
        ) => StatusCode::CONFLICT,
        AdminError::Principal(PrincipalError::Sqlite { .. }) | AdminError::Audit { .. } => {
            return internal(e)
        }
        AdminError::Principal(_) => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.to_string())
}

/// Runs a registry change off the async workers.
async fn blocking<T: Send + 'static>(
    change: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(change)
        .await
        .map_err(internal)?
        .map_err(refused)
}

#[utoipa::path(get, path = "/api/v1/principals", tag = "principals", security(("basic" = []), ("session" = [])),
    responses((status = 200, description = "The config file's and registry.db's principals", body = [PrincipalView]), Refusals))]
pub(crate) async fn list(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
) -> Result<Json<Vec<PrincipalView>>, ApiError> {
    operator_only(&who, "manage principals")?;
    let mut all: Vec<PrincipalView> = api
        .config
        .principals
        .iter()
        .map(|p| PrincipalView {
            id: p.id.clone(),
            roles: p.roles.clone(),
            citizen: p.citizen.clone(),
            source: "config",
            added: None,
            changed: None,
        })
        .collect();
    all.extend(
        api.directory
            .registry()
            .principals()
            .values()
            .map(|p| PrincipalView::from(&**p)),
    );
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(all))
}

/// The ids of the principals with `role` (the config file's and registry.db's), sorted.
pub(crate) fn with_role(api: &HttpApi, role: &str) -> Vec<String> {
    let configured = api
        .config
        .principals
        .iter()
        .filter(|p| p.roles.iter().any(|r| r == role))
        .map(|p| p.id.clone());
    let registered: Vec<String> = api
        .directory
        .registry()
        .principals()
        .values()
        .filter(|p| p.roles.iter().any(|r| r == role))
        .map(|p| p.id.clone())
        .collect();
    let mut ids: Vec<String> = configured.chain(registered).collect();
    ids.sort();
    ids.dedup();
    ids
}

#[utoipa::path(post, path = "/api/v1/principals", tag = "principals", request_body = NewBody, security(("basic" = []), ("session" = [])),
    responses((status = 201, description = "Added; a generated password is shown this once", body = WithPassword), (status = 400, description = "A parameter or the body cannot be used", body = ErrorBody), (status = 409, description = "The id is taken, or a principal of the config file", body = ErrorBody), (status = 503, description = "The stores are unavailable", body = ErrorBody), Refusals))]
pub(crate) async fn create(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    body: Result<Json<NewBody>, JsonRejection>,
) -> Result<(StatusCode, Json<WithPassword>), ApiError> {
    operator_only(&who, "manage principals")?;
    ensure_sound_stores(&api)?;
    let Json(body) = body.map_err(|e| bad(format!("body: {}", e.body_text())))?;
    let new = NewPrincipal {
        id: short("id", &body.id, MAX_WORD)?.to_owned(),
        roles: body.roles,
        citizen: body.citizen,
        password_hash: String::new(),
    };
    // Checked before the password is hashed (with a stand-in hash).
    let config = api.config.clone();
    NewPrincipal {
        password_hash: "$argon2id$".to_owned(),
        ..new.clone()
    }
    .check(&config, 0)
    .map_err(|e| refused(e.into()))?;
    let password = PasswordBody {
        password: body.password,
        generate_password: body.generate_password,
    };
    let (hash, shown) = password.hash().await?;
    let path = api.data_dir.join("registry.db");
    let by = who.id.clone();
    let added = blocking(move || {
        let new = NewPrincipal {
            password_hash: hash,
            ..new
        };
        add(&path, &config, new, &by)
    })
    .await?;
    info!(principal = %who.id, added = %added.id, "principal added over HTTP");
    let answer = WithPassword {
        principal: (&added).into(),
        password: shown,
    };
    Ok((StatusCode::CREATED, Json(answer)))
}

#[utoipa::path(put, path = "/api/v1/principals/{id}/password", tag = "principals", params(("id" = String, Path, description = "Principal id")), request_body = PasswordBody, security(("basic" = []), ("session" = [])),
    responses((status = 200, description = "Changed; a generated password is shown this once", body = WithPassword), (status = 400, description = "A parameter or the body cannot be used", body = ErrorBody), (status = 404, description = "No such principal", body = ErrorBody), (status = 409, description = "The id is taken, or a principal of the config file", body = ErrorBody), (status = 503, description = "The stores are unavailable", body = ErrorBody), Refusals))]
pub(crate) async fn change_password(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    UrlPath(id): UrlPath<String>,
    body: Result<Json<PasswordBody>, JsonRejection>,
) -> Result<Json<WithPassword>, ApiError> {
    operator_only(&who, "manage principals")?;
    ensure_sound_stores(&api)?;
    let Json(body) = body.map_err(|e| bad(format!("body: {}", e.body_text())))?;
    short("id", &id, MAX_WORD)?;
    in_config(&api, &id)?;
    // Known (in the file, which a running hub's registry follows) before the password is
    // hashed.
    let path = api.data_dir.join("registry.db");
    let (file, asked) = (path.clone(), id.clone());
    let known = blocking(move || Ok(PrincipalStore::open(&file)?.get(&asked)?.is_some())).await?;
    if !known {
        return Err(refused(PrincipalError::NotFound(id).into()));
    }
    let (hash, shown) = body.hash().await?;
    let by = who.id.clone();
    let changed = blocking(move || set_password(&path, &id, &hash, &by)).await?;
    info!(principal = %who.id, changed = %changed.id, "principal's password changed over HTTP");
    Ok(Json(WithPassword {
        principal: (&changed).into(),
        password: shown,
    }))
}

#[utoipa::path(delete, path = "/api/v1/principals/{id}", tag = "principals", params(("id" = String, Path, description = "Principal id")), security(("basic" = []), ("session" = [])),
    responses((status = 200, description = "Removed", body = PrincipalView), (status = 404, description = "No such principal", body = ErrorBody), (status = 409, description = "The id is taken, or a principal of the config file", body = ErrorBody), (status = 503, description = "The stores are unavailable", body = ErrorBody), Refusals))]
pub(crate) async fn delete(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<PrincipalView>, ApiError> {
    operator_only(&who, "manage principals")?;
    ensure_sound_stores(&api)?;
    short("id", &id, MAX_WORD)?;
    in_config(&api, &id)?;
    let path = api.data_dir.join("registry.db");
    let by = who.id.clone();
    let removed = blocking(move || remove(&path, &id, &by)).await?;
    info!(principal = %who.id, removed = %removed.id, "principal removed over HTTP");
    Ok(Json((&removed).into()))
}
