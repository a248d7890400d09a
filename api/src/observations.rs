//! `GET /api/v1/observations`: one or several metrics (`metric=heart_rate,spo2`), raw or in
//! buckets, as JSON (an array), CSV (the columns of `kenko query`) or NDJSON (one object a
//! line). Who reads what is `query_access` and `filter_rows`, decided per metric; a read of
//! identified data is written to the audit log before it is answered.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query as QueryParams, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kenko_devices::Metric;
use kenko_ingest::consent::{ConsentRegistry, Consents};
use kenko_ingest::query::{parse_duration, parse_time, render, Agg, Format, Query, Row};
use kenko_ingest::store::PersonalStore;
use serde::{Deserialize, Serialize};

use crate::http::{
    bad, ensure_sound_stores, filter_rows, forbidden, internal, now_ms, query_access, rfc3339,
    short, Access, ApiError, Authenticated, HttpApi, StoreKind, MAX_WORD,
};

/// Metrics one request may ask for at most.
const MAX_METRICS: usize = 16;

#[derive(Deserialize)]
pub(crate) struct ObservationParams {
    metric: String,
    citizen: Option<String>,
    from: Option<String>,
    to: Option<String>,
    every: Option<String>,
    agg: Option<String>,
    /// At most this many rows per metric.
    limit: Option<usize>,
    store: Option<String>,
    /// json (default), csv or ndjson.
    format: Option<String>,
}

#[derive(Serialize)]
struct RowView {
    time: String,
    citizen: String,
    device: String,
    metric: &'static str,
    value: f64,
    unit: String,
    /// The metric's LOINC code.
    loinc: &'static str,
    /// Outside the metric's physiological bounds; absent for an aggregate.
    #[serde(skip_serializing_if = "Option::is_none")]
    implausible: Option<bool>,
}

impl From<Row> for RowView {
    fn from(r: Row) -> RowView {
        RowView {
            time: rfc3339(r.time_ms),
            implausible: r.implausible(),
            citizen: r.citizen,
            device: r.device,
            metric: r.metric.name(),
            loinc: r.metric.loinc(),
            value: r.value,
            unit: r.unit,
        }
    }
}

/// A checked request: what to read, for whom, and how to answer.
struct Read {
    metrics: Vec<Metric>,
    store: StoreKind,
    /// Each metric's query and what the principal may see of it.
    queries: Vec<(Query, Access)>,
    format: Format,
    ndjson: bool,
}

pub(crate) async fn observations(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    params: Result<QueryParams<ObservationParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    ensure_sound_stores(&api)?;
    let QueryParams(params) = params.map_err(|e| bad(format!("query: {}", e.body_text())))?;
    let now = now_ms();
    let consents = api.consents.current();
    let read = check(&params, &who, &consents, now)?;
    let file = match read.store {
        StoreKind::Personal => "personal.db",
        StoreKind::Shared => "shared.db",
    };
    let (path, registry) = (api.data_dir.join(file), api.data_dir.join("registry.db"));
    let principal = who.id.clone();
    let (format, ndjson) = (read.format, read.ndjson);
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<Row>, ApiError> {
        let store = PersonalStore::open_read_only(&path).map_err(internal)?;
        let mut rows = Vec::new();
        for (query, access) in &read.queries {
            let mut found = store.query(query).map_err(internal)?;
            let metric = query.metric.name();
            filter_rows(
                access,
                &principal,
                metric,
                &mut found,
                &consents,
                now,
                query.every_ms,
            );
            rows.append(&mut found);
        }
        // Several metrics come in one time order, as one metric's do.
        rows.sort_by(|a, b| {
            (a.time_ms, &a.citizen, &a.device).cmp(&(b.time_ms, &b.citizen, &b.device))
        });
        if read.store == StoreKind::Personal {
            audit_identified_read(&registry, &principal, &read.metrics, &rows, now)?;
        }
        Ok(rows)
    })
    .await
    .map_err(internal)??;
    answer(rows, format, ndjson)
}

/// Checks the parameters and decides, per metric, what `who` may read.
fn check(
    params: &ObservationParams,
    who: &kenko_broker::auth::Identity,
    consents: &Consents,
    now: i64,
) -> Result<Read, ApiError> {
    let metrics = metrics(&params.metric)?;
    for (field, value) in [
        ("store", &params.store),
        ("from", &params.from),
        ("to", &params.to),
        ("every", &params.every),
        ("agg", &params.agg),
        ("format", &params.format),
    ] {
        short(field, value.as_deref().unwrap_or(""), MAX_WORD)?;
    }
    if let Some(citizen) = &params.citizen {
        kenko_config::check_identifier(citizen).map_err(|why| bad(format!("citizen {why}")))?;
    }
    let store = match params.store.as_deref() {
        None | Some("personal") => StoreKind::Personal,
        Some("shared") => StoreKind::Shared,
        Some(other) => return Err(bad(format!("store {other:?}: use personal or shared"))),
    };
    let (format, ndjson) = match params.format.as_deref() {
        None | Some("json") => (Format::Json, false),
        Some("csv") => (Format::Csv, false),
        Some("ndjson") => (Format::Json, true),
        Some(other) => return Err(bad(format!("format {other:?}: use json, csv or ndjson"))),
    };
    let time = |t: &Option<String>| -> Result<Option<i64>, ApiError> {
        t.as_deref()
            .map(|t| parse_time(t, now).map_err(|e| bad(e.to_string())))
            .transpose()
    };
    let mut template = Query::new(Metric::HeartRate);
    template.from_ms = time(&params.from)?;
    template.to_ms = time(&params.to)?;
    template.every_ms = params
        .every
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    if let Some(agg) = &params.agg {
        template.agg = agg.parse::<Agg>().map_err(|e| bad(e.to_string()))?;
    }
    template.limit = params.limit;
    let mut queries = Vec::with_capacity(metrics.len());
    for &metric in &metrics {
        let access = query_access(
            who,
            store,
            params.citizen.as_deref(),
            metric.name(),
            consents,
            now,
        )
        .map_err(forbidden)?;
        let mut query = template.clone();
        query.metric = metric;
        query.citizen = match &access {
            Access::Citizen(c) | Access::CareCitizen(c) => Some(c.clone()),
            _ => params.citizen.clone(),
        };
        queries.push((query, access));
    }
    Ok(Read {
        metrics,
        store,
        queries,
        format,
        ndjson,
    })
}

/// `heart_rate` or `heart_rate,spo2`: known metrics, each once, at most [`MAX_METRICS`].
fn metrics(list: &str) -> Result<Vec<Metric>, ApiError> {
    let list = short("metric", list, MAX_WORD * MAX_METRICS)?;
    let mut metrics: Vec<Metric> = Vec::new();
    for name in list.split(',') {
        let metric: Metric = name
            .trim()
            .parse()
            .map_err(|e| bad(format!("metric: {e}")))?;
        if metrics.contains(&metric) {
            return Err(bad(format!("metric {metric} is named twice")));
        }
        metrics.push(metric);
    }
    if metrics.len() > MAX_METRICS {
        return Err(bad(format!(
            "{} metrics asked for; at most {MAX_METRICS} a request",
            metrics.len()
        )));
    }
    Ok(metrics)
}

/// Writes who read which citizens' identified data to the audit log.
fn audit_identified_read(
    registry: &std::path::Path,
    principal: &str,
    metrics: &[Metric],
    rows: &[Row],
    now: i64,
) -> Result<(), ApiError> {
    let mut citizens: Vec<&str> = rows.iter().map(|r| r.citizen.as_str()).collect();
    citizens.sort_unstable();
    citizens.dedup();
    let names: Vec<&str> = metrics.iter().map(|m| m.name()).collect();
    let body = serde_json::json!({
        "principal": principal,
        "metric": names.join(","),
        "citizens": citizens,
        "rows": rows.len(),
    })
    .to_string();
    ConsentRegistry::open(registry)
        .and_then(|mut r| r.audit(now, "access.identified", &body))
        .map_err(internal)
}

/// The rows as JSON, NDJSON or CSV.
fn answer(rows: Vec<Row>, format: Format, ndjson: bool) -> Result<Response, ApiError> {
    match (format, ndjson) {
        (Format::Csv, _) => {
            let mut out = Vec::new();
            render(&rows, Format::Csv, &mut out).map_err(internal)?;
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response())
        }
        (_, true) => {
            let mut out = Vec::new();
            for row in rows {
                serde_json::to_writer(&mut out, &RowView::from(row)).map_err(internal)?;
                out.push(b'\n');
            }
            Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
        }
        _ => Ok(Json(rows.into_iter().map(RowView::from).collect::<Vec<_>>()).into_response()),
    }
}
