//! Bulk Data `$export` for a care organization (FHIR Bulk Data Access 2.0, asynchronous
//! pattern): `GET /fhir/$export` (or `/fhir/Patient/$export`) with `Prefer: respond-async`
//! starts a job and answers 202 with its status URL in `Content-Location`; the status
//! answers 202 with `X-Progress` while it runs and then 200 with a manifest of NDJSON files
//! (`application/fhir+ndjson`), which only the principal that asked may fetch; `DELETE` on
//! the status cancels the job or removes its files. The files hold the citizens whose care
//! consent to the principal is in force when the job runs, and of those only the
//! Observations that consent covers, so a withdrawal leaves the citizen out of the next
//! export. Files are removed an hour after the job ends, and when the hub starts anew.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kenko_devices::Metric;
use kenko_ingest::consent::{Consents, Purpose};
use kenko_ingest::query::{Query, Resume, Row};
use kenko_ingest::store::PersonalStore;
use serde_json::{json, Value};

use super::params::Kind;
use super::search::entries_of;
use super::{base_url, resources, Outcome};
use crate::http::{
    bad, filter_rows, forbidden, internal, now_ms, rfc3339, Access, ApiError, Authenticated,
    HttpApi,
};
use crate::observations::audit_read;

/// How long a finished job's files are kept.
const KEEP_MS: i64 = 3_600_000;
/// Jobs kept at once, running or finished.
const MAX_JOBS: usize = 16;
/// Rows read from the store at a time.
const CHUNK: usize = 10_000;
/// The resource types an export may hold.
const TYPES: [&str; 3] = ["Patient", "Device", "Observation"];

/// The export jobs of this hub.
#[derive(Default)]
pub(crate) struct Exports {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    /// Files of an earlier run of the hub were removed.
    swept: AtomicBool,
}

struct Job {
    owner: String,
    /// The kick-off URL.
    request: String,
    started_ms: i64,
    dir: PathBuf,
    cancelled: AtomicBool,
    state: Mutex<JobState>,
}

enum JobState {
    Running {
        citizens_done: usize,
        of: usize,
    },
    Done {
        ended_ms: i64,
        files: Vec<(&'static str, usize)>,
    },
    Failed(String),
}

/// What one job is asked for.
struct Request {
    types: Vec<&'static str>,
    since_ms: Option<i64>,
}

impl Request {
    fn parse(query: &str) -> Result<Request, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| bad(format!("the query string cannot be read: {e}")))?;
        let mut request = Request {
            types: TYPES.to_vec(),
            since_ms: None,
        };
        for (name, value) in &pairs {
            match name.as_str() {
                "_type" => {
                    request.types = Vec::new();
                    for t in value.split(',') {
                        let known = TYPES.iter().find(|k| **k == t).ok_or_else(|| {
                            bad(format!("_type {t:?}: this server exports Patient, Device and Observation"))
                        })?;
                        if !request.types.contains(known) {
                            request.types.push(known);
                        }
                    }
                }
                "_since" => {
                    let at: jiff::Timestamp = value.parse().map_err(|_| {
                        bad(format!("_since {value:?}: give an instant with its offset, such as 2026-11-25T00:00:00Z"))
                    })?;
                    request.since_ms = Some(at.as_millisecond());
                }
                "_outputFormat"
                    if matches!(
                        value.as_str(),
                        "application/fhir+ndjson" | "application/ndjson" | "ndjson"
                    ) => {}
                other => {
                    return Err(bad(format!(
                        "export parameter {other:?} is not supported: use _type, _since, _outputFormat=application/fhir+ndjson"
                    )))
                }
            }
        }
        Ok(request)
    }
}

pub(super) async fn kick_off(
    State(api): State<HttpApi>,
    who: Result<Authenticated, ApiError>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Outcome> {
    let Authenticated(who) = who?;
    if !who.roles.iter().any(|r| r == "care") {
        return Err(forbidden(format!(
            "{} may not export: a bulk export is for care services, of the citizens who consent to them",
            who.id
        ))
        .into());
    }
    let async_asked = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == "respond-async"));
    if !async_asked {
        return Err(
            bad("an export runs asynchronously: send the header Prefer: respond-async").into(),
        );
    }
    let raw = raw.unwrap_or_default();
    let request = Request::parse(&raw)?;
    let base = base_url(&api, &headers);
    let exports = Arc::clone(&api.exports);
    let root = api.data_dir.join("fhir-exports");
    exports.sweep(&root, now_ms());
    let id = kenko_broker::auth::new_token()[..16].to_owned();
    let job = Arc::new(Job {
        owner: who.id.clone(),
        request: format!(
            "{base}/$export{}{raw}",
            if raw.is_empty() { "" } else { "?" }
        ),
        started_ms: now_ms(),
        dir: root.join(&id),
        cancelled: AtomicBool::new(false),
        state: Mutex::new(JobState::Running {
            citizens_done: 0,
            of: 0,
        }),
    });
    exports.admit(&id, &job)?;
    let (consents, data_dir) = (api.consents.current(), api.data_dir.clone());
    let devices = api.directory.registry().snapshot();
    tokio::task::spawn_blocking(move || {
        let outcome = run(&job, &request, &consents, &devices, &data_dir);
        let state = match outcome {
            Ok(files) => JobState::Done {
                ended_ms: now_ms(),
                files,
            },
            Err(e) => JobState::Failed(e.message().to_owned()),
        };
        *lock(&job.state) = state;
    });
    let location = format!("{base}/$export-status/{id}");
    Ok((
        StatusCode::ACCEPTED,
        [(header::CONTENT_LOCATION, location)],
        "",
    )
        .into_response())
}

pub(super) async fn status(
    State(api): State<HttpApi>,
    who: Result<Authenticated, ApiError>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, Outcome> {
    let Authenticated(who) = who?;
    let job = api.exports.owned(&id, &who.id)?;
    let base = base_url(&api, &headers);
    let state = lock(&job.state);
    let response = match &*state {
        JobState::Running { citizens_done, of } => (
            StatusCode::ACCEPTED,
            [
                ("x-progress", format!("{citizens_done} of {of} citizens")),
                ("retry-after", "1".to_owned()),
            ],
        )
            .into_response(),
        JobState::Done { files, .. } => {
            let output: Vec<Value> = files
                .iter()
                .map(|(kind, count)| {
                    json!({"type": kind, "url": format!("{base}/$export-file/{id}/{kind}.ndjson"), "count": count})
                })
                .collect();
            let manifest = json!({
                "transactionTime": rfc3339(job.started_ms),
                "request": job.request,
                "requiresAccessToken": true,
                "output": output,
                "error": [],
            });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                manifest.to_string(),
            )
                .into_response()
        }
        JobState::Failed(why) => {
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, why.clone()).into())
        }
    };
    Ok(response)
}

pub(super) async fn cancel(
    State(api): State<HttpApi>,
    who: Result<Authenticated, ApiError>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, Outcome> {
    let Authenticated(who) = who?;
    let job = api.exports.owned(&id, &who.id)?;
    job.cancelled.store(true, Ordering::Relaxed);
    api.exports.remove(&id);
    let dir = job.dir.clone();
    tokio::task::spawn_blocking(move || remove_dir(&dir))
        .await
        .map_err(internal)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

pub(super) async fn file(
    State(api): State<HttpApi>,
    who: Result<Authenticated, ApiError>,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Result<Response, Outcome> {
    let Authenticated(who) = who?;
    let job = api.exports.owned(&id, &who.id)?;
    let kind = name.strip_suffix(".ndjson").unwrap_or_default();
    let listed = matches!(&*lock(&job.state), JobState::Done { files, .. } if files.iter().any(|(k, _)| *k == kind));
    if !listed {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("export {id} has no file {name:?}"),
        )
        .into());
    }
    let path = job.dir.join(&name);
    let body = tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/fhir+ndjson")],
        body,
    )
        .into_response())
}

impl Exports {
    /// Keeps `job` under `id`, if there is room and its owner runs no other.
    fn admit(&self, id: &str, job: &Arc<Job>) -> Result<(), ApiError> {
        let mut jobs = lock(&self.jobs);
        let running = |j: &Job| matches!(*lock(&j.state), JobState::Running { .. });
        if jobs.values().any(|j| j.owner == job.owner && running(j)) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{} has an export running; wait for it, or cancel it with DELETE on its status URL", job.owner),
            ));
        }
        if jobs.len() >= MAX_JOBS {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{MAX_JOBS} exports are kept already; try again when one has been fetched and deleted, or within the hour"),
            ));
        }
        jobs.insert(id.to_owned(), Arc::clone(job));
        Ok(())
    }

    /// The job `id`, if `principal` started it (another's is as unknown as none).
    fn owned(&self, id: &str, principal: &str) -> Result<Arc<Job>, ApiError> {
        lock(&self.jobs)
            .get(id)
            .filter(|j| j.owner == principal)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no export {id:?} of {principal}"),
                )
            })
    }

    fn remove(&self, id: &str) {
        lock(&self.jobs).remove(id);
    }

    /// Forgets jobs that ended more than [`KEEP_MS`] ago and removes their files, and, the
    /// first time, the files of a former run of the hub.
    fn sweep(&self, root: &Path, now: i64) {
        let mut jobs = lock(&self.jobs);
        let expired: Vec<String> = jobs
            .iter()
            .filter(|(_, j)| matches!(*lock(&j.state), JobState::Done { ended_ms, .. } if now - ended_ms > KEEP_MS)
                || matches!(*lock(&j.state), JobState::Failed(_)) && now - j.started_ms > KEEP_MS)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(job) = jobs.remove(&id) {
                remove_dir(&job.dir);
            }
        }
        if !self.swept.swap(true, Ordering::Relaxed) {
            remove_dir(root);
        }
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove export files");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes the job's files: its owner's consented citizens, their devices, and the
/// Observations the consent covers. Returns each file's type and resources.
fn run(
    job: &Job,
    request: &Request,
    consents: &Consents,
    devices: &kenko_devices::registry::Devices,
    data_dir: &Path,
) -> Result<Vec<(&'static str, usize)>, ApiError> {
    let now = now_ms();
    let citizens = consents.citizens_permitting(&job.owner, Purpose::Care, now);
    *lock(&job.state) = JobState::Running {
        citizens_done: 0,
        of: citizens.len(),
    };
    std::fs::create_dir_all(&job.dir).map_err(internal)?;
    let mut files = Vec::new();
    for kind in &request.types {
        let mut out = NdJson::create(&job.dir.join(format!("{kind}.ndjson")))?;
        match *kind {
            "Patient" => {
                for citizen in &citizens {
                    out.line(&resources::patient(citizen))?;
                }
            }
            "Device" => {
                for device in devices
                    .iter()
                    .filter(|d| citizens.iter().any(|c| *c == *d.citizen))
                {
                    out.line(&resources::device(device))?;
                }
            }
            _ => {
                let store = PersonalStore::open_read_only(&data_dir.join("personal.db"))
                    .map_err(internal)?;
                let mut read = Read {
                    job,
                    store: &store,
                    consents,
                    now,
                    since_ms: request.since_ms,
                    rows: 0,
                };
                for (n, citizen) in citizens.iter().enumerate() {
                    read.citizen(citizen, &mut out)?;
                    *lock(&job.state) = JobState::Running {
                        citizens_done: n + 1,
                        of: citizens.len(),
                    };
                }
                let names: Vec<Metric> = Metric::ALL.to_vec();
                let whose: Vec<&str> = citizens.iter().map(String::as_str).collect();
                audit_read(
                    &data_dir.join("registry.db"),
                    &job.owner,
                    &names,
                    &whose,
                    read.rows,
                    now,
                )?;
            }
        }
        files.push((*kind, out.finish()?));
    }
    Ok(files)
}

/// The Observations of one export, read citizen by citizen.
struct Read<'a> {
    job: &'a Job,
    store: &'a PersonalStore,
    consents: &'a Consents,
    now: i64,
    since_ms: Option<i64>,
    /// Rows written so far.
    rows: usize,
}

impl Read<'_> {
    /// Every Observation of `citizen` the owner's care consent covers, kind by kind.
    fn citizen(&mut self, citizen: &str, out: &mut NdJson) -> Result<(), ApiError> {
        for kind in Kind::all() {
            if self.job.cancelled.load(Ordering::Relaxed) {
                return Err(ApiError::new(StatusCode::GONE, "the export was cancelled"));
            }
            let mut rows = Vec::new();
            for metric in kind.metrics() {
                rows.extend(self.rows_of(citizen, metric)?);
            }
            rows.sort_by(|a, b| {
                crate::observations::position(a).cmp(&crate::observations::position(b))
            });
            self.rows += rows.len();
            for entry in entries_of(&rows, &[kind]) {
                out.line(&entry)?;
            }
        }
        Ok(())
    }

    /// `citizen`'s rows of `metric` since `since_ms` that the care consent covers.
    fn rows_of(&self, citizen: &str, metric: Metric) -> Result<Vec<Row>, ApiError> {
        let mut all = Vec::new();
        let mut query = Query::new(metric);
        query.citizen = Some(citizen.to_owned());
        query.from_ms = self.since_ms;
        query.limit = Some(CHUNK);
        loop {
            let mut rows = self.store.query(&query).map_err(internal)?;
            let last = rows.last().map(|r| Resume {
                time_ms: r.time_ms,
                citizen: r.citizen.clone(),
                device: r.device.clone(),
                inclusive: false,
            });
            let full = rows.len() == CHUNK;
            filter_rows(
                &Access::CareConsented,
                &self.job.owner,
                metric.name(),
                &mut rows,
                self.consents,
                self.now,
                None,
            );
            all.append(&mut rows);
            match last {
                Some(resume) if full => query.resume = Some(resume),
                _ => return Ok(all),
            }
        }
    }
}

/// An NDJSON file being written: one resource a line, synced when finished.
struct NdJson {
    file: std::io::BufWriter<std::fs::File>,
    lines: usize,
}

impl NdJson {
    fn create(path: &Path) -> Result<NdJson, ApiError> {
        let file = std::fs::File::create(path).map_err(internal)?;
        Ok(NdJson {
            file: std::io::BufWriter::new(file),
            lines: 0,
        })
    }

    fn line(&mut self, resource: &Value) -> Result<(), ApiError> {
        serde_json::to_writer(&mut self.file, resource).map_err(internal)?;
        self.file.write_all(b"\n").map_err(internal)?;
        self.lines += 1;
        Ok(())
    }

    fn finish(self) -> Result<usize, ApiError> {
        let file = self.file.into_inner().map_err(internal)?;
        file.sync_all().map_err(internal)?;
        Ok(self.lines)
    }
}
