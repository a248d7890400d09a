//! `GET /api/v1/observations`: one or several metrics (`metric=heart_rate,spo2`), raw or in
//! buckets, as JSON (an array), CSV (the columns of `kenko query`) or NDJSON (one object a
//! line). Who reads what is `query_access` and `filter_rows`, decided per metric; a read of
//! identified data is written to the audit log before it is answered.
//!
//! `across=true` (with `every`, on `store=shared`) gives one row per bucket over every
//! citizen: `agg` mean, min, max, count, `citizens` (how many have readings) or a percentile
//! of the citizens' means (`median`, `p90`, any `p1` to `p99`).
//!
//! Answers come in pages of `limit` rows (10,000 unless asked; 100,000 at most), in (time,
//! citizen, device, metric) order. When more rows follow, the answer's `Link` header holds
//! the URL of the next page (`rel="next"`) and `X-Next-Cursor` its cursor: the same request
//! with `cursor=` that value.

use crate::openapi::{ErrorBody, Refusals};
use crate::sealed::Sealer;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query as QueryParams, State};
use axum::http::{header, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kenko_devices::Metric;
use kenko_ingest::consent::{ConsentRegistry, Consents};
use kenko_ingest::query::{parse_duration, parse_time, render, Agg, Format, Query, Resume, Row};
use kenko_ingest::store::PersonalStore;
use serde::{Deserialize, Serialize};

use crate::http::{
    bad, ensure_sound_stores, filter_rows, forbidden, internal, now_ms, query_access, rfc3339,
    short, Access, ApiError, Authenticated, HttpApi, StoreKind, MAX_WORD,
};

/// Metrics one request may ask for at most.
const MAX_METRICS: usize = 16;
/// Rows of a page unless `limit` says otherwise.
const DEFAULT_PAGE: usize = 10_000;
/// Rows of a page at most.
const MAX_PAGE: usize = 100_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ObservationParams {
    metric: String,
    citizen: Option<String>,
    from: Option<String>,
    to: Option<String>,
    every: Option<String>,
    agg: Option<String>,
    /// One aggregate per bucket over every citizen (the shared store only).
    across: Option<bool>,
    /// Rows of a page.
    limit: Option<usize>,
    /// Where the page starts: `X-Next-Cursor` of the page before.
    cursor: Option<String>,
    store: Option<String>,
    /// json (default), csv or ndjson.
    format: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RowView {
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
    /// Rows of a page.
    page: usize,
}

#[utoipa::path(get, path = "/api/v1/observations", tag = "observations", params(ObservationParams), security(("basic" = []), ("session" = [])),
    responses((status = 200, description = "A page of rows in time order; Link rel=next and X-Next-Cursor while more follow", content((Vec<RowView> = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"))), (status = 400, description = "A parameter or the body cannot be used", body = ErrorBody), (status = 503, description = "The stores are unavailable", body = ErrorBody), Refusals))]
pub(crate) async fn observations(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    uri: Uri,
    params: Result<QueryParams<ObservationParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    ensure_sound_stores(&api)?;
    let QueryParams(params) = params.map_err(|e| bad(format!("query: {}", e.body_text())))?;
    let now = now_ms();
    let consents = api.consents.current();
    let read = check(&params, &who, &consents, now, &api.cursors)?;
    let file = match read.store {
        StoreKind::Personal => "personal.db",
        StoreKind::Shared => "shared.db",
    };
    let (path, registry) = (api.data_dir.join(file), api.data_dir.join("registry.db"));
    let principal = who.id.clone();
    let (format, ndjson) = (read.format, read.ndjson);
    let (rows, next) = tokio::task::spawn_blocking(move || {
        let store = PersonalStore::open_read_only(&path).map_err(internal)?;
        let found = read
            .queries
            .iter()
            .map(|(query, _)| store.query(query).map_err(internal))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut page, next) = page_of(found, read.page);
        // Each metric's rows are filtered by what its access allows; the cursor has moved
        // past the rows left out too.
        let mut rows = Vec::with_capacity(page.len());
        for (query, access) in &read.queries {
            let (mut mine, rest): (Vec<Row>, Vec<Row>) =
                page.into_iter().partition(|r| r.metric == query.metric);
            page = rest;
            let name = query.metric.name();
            filter_rows(
                access,
                &principal,
                name,
                &mut mine,
                &consents,
                now,
                query.every_ms,
            );
            rows.append(&mut mine);
        }
        rows.sort_by(|a, b| position(a).cmp(&position(b)));
        if read.store == StoreKind::Personal {
            audit_identified_read(&registry, &principal, &read.metrics, &rows, now)?;
        }
        Ok::<_, ApiError>((rows, next))
    })
    .await
    .map_err(internal)??;
    let mut response = answer(rows, format, ndjson)?;
    if let Some(next) = next {
        link_next(&mut response, &uri, &next.encode(&api.cursors));
    }
    Ok(response)
}

/// Where a row stands in an answer's order.
pub(crate) fn position(r: &Row) -> (i64, &str, &str, &'static str) {
    (r.time_ms, &r.citizen, &r.device, r.metric.name())
}

/// The first `page` rows of the metrics' answers (each asked for `page + 1` rows), merged
/// in order, and where the next page starts if more rows follow. A metric whose answer was
/// cut may have rows beyond its last one: the page stops there.
pub(crate) fn page_of(found: Vec<Vec<Row>>, page: usize) -> (Vec<Row>, Option<PageCursor>) {
    let mut horizon: Option<PageCursor> = None;
    let mut merged = Vec::new();
    let mut cut = false;
    for mut rows in found {
        if rows.len() > page {
            cut = true;
            rows.truncate(page);
            if let Some(last) = rows.last().map(PageCursor::at) {
                if horizon.as_ref().is_none_or(|h| last.key() < h.key()) {
                    horizon = Some(last);
                }
            }
        }
        merged.append(&mut rows);
    }
    merged.sort_by(|a, b| position(a).cmp(&position(b)));
    if let Some(h) = &horizon {
        merged.retain(|r| position(r) <= h.key());
    }
    let more = cut || merged.len() > page;
    merged.truncate(page);
    let next = if more {
        merged.last().map(PageCursor::at)
    } else {
        None
    };
    (merged, next)
}

/// The last row of a page: the next page starts after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PageCursor {
    #[serde(rename = "t")]
    time_ms: i64,
    #[serde(rename = "c")]
    citizen: String,
    #[serde(rename = "d")]
    device: String,
    #[serde(rename = "m")]
    metric: String,
}

impl PageCursor {
    pub(crate) fn at(r: &Row) -> PageCursor {
        PageCursor {
            time_ms: r.time_ms,
            citizen: r.citizen.clone(),
            device: r.device.clone(),
            metric: r.metric.name().to_owned(),
        }
    }

    pub(crate) fn key(&self) -> (i64, &str, &str, &str) {
        (self.time_ms, &self.citizen, &self.device, &self.metric)
    }

    /// The cursor as a sealed token: it names a row the reader may not be allowed to see.
    pub(crate) fn encode(&self, sealer: &Sealer) -> String {
        sealer.seal(&serde_json::to_vec(self).unwrap_or_default())
    }

    pub(crate) fn decode(text: &str, sealer: &Sealer) -> Result<PageCursor, ApiError> {
        let refused = || {
            bad("cursor: not one this API gave since the hub started; use the X-Next-Cursor of the page before")
        };
        let json = sealer.open(text).ok_or_else(refused)?;
        serde_json::from_slice(&json).map_err(|_| refused())
    }

    /// Where `metric`'s rows of the next page start: after the cursor's row, or at its
    /// (time, citizen, device) already for a metric ordered after the cursor's.
    pub(crate) fn resume_for(&self, metric: Metric) -> Resume {
        Resume {
            time_ms: self.time_ms,
            citizen: self.citizen.clone(),
            device: self.device.clone(),
            inclusive: metric.name() > self.metric.as_str(),
        }
    }
}

/// Adds the next page's `Link` (the request's URL with `cursor=` replaced) and
/// `X-Next-Cursor` headers.
fn link_next(response: &mut Response, uri: &Uri, cursor: &str) {
    let kept: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("cursor="))
        .collect();
    let mut query = kept.join("&");
    if !query.is_empty() {
        query.push('&');
    }
    let link = format!("<{}?{query}cursor={cursor}>; rel=\"next\"", uri.path());
    let headers = response.headers_mut();
    if let Ok(value) = header::HeaderValue::from_str(&link) {
        headers.insert(header::LINK, value);
    }
    if let Ok(value) = header::HeaderValue::from_str(cursor) {
        headers.insert("x-next-cursor", value);
    }
}

/// Checks the parameters and decides, per metric, what `who` may read.
fn check(
    params: &ObservationParams,
    who: &kenko_broker::auth::Identity,
    consents: &Consents,
    now: i64,
    sealer: &Sealer,
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
    template.across = params.across.unwrap_or(false);
    check_across(&template, store, params.citizen.as_deref())?;
    let page = params.limit.unwrap_or(DEFAULT_PAGE);
    if page == 0 || page > MAX_PAGE {
        return Err(bad(format!(
            "limit {page}: a page holds 1 to {MAX_PAGE} rows"
        )));
    }
    // One more than a page: whether more follow.
    template.limit = Some(page + 1);
    let cursor = params
        .cursor
        .as_deref()
        .map(|c| short("cursor", c, 4 * MAX_WORD).and_then(|c| PageCursor::decode(c, sealer)))
        .transpose()?;
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
        query.resume = cursor.as_ref().map(|c| c.resume_for(metric));
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
        page,
    })
}

/// Aggregates across citizens: per bucket, of the shared store, over every citizen in it.
fn check_across(query: &Query, store: StoreKind, citizen: Option<&str>) -> Result<(), ApiError> {
    if !query.across {
        if query.agg.needs_across() {
            return Err(bad(format!(
                "agg {}: an aggregate across citizens; add across=true",
                query.agg
            )));
        }
        return Ok(());
    }
    if query.every_ms.is_none() {
        return Err(bad(
            "across=true: aggregates across citizens need buckets; add every (such as 1h or 1d)",
        ));
    }
    if citizen.is_some() {
        return Err(bad(
            "across=true aggregates over every citizen; leave citizen out",
        ));
    }
    if store != StoreKind::Shared {
        return Err(forbidden(
            "aggregates across citizens are read from the shared store (store=shared): it holds the citizens who consented to research",
        ));
    }
    Ok(())
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
pub(crate) fn audit_identified_read(
    registry: &std::path::Path,
    principal: &str,
    metrics: &[Metric],
    rows: &[Row],
    now: i64,
) -> Result<(), ApiError> {
    let mut citizens: Vec<&str> = rows.iter().map(|r| r.citizen.as_str()).collect();
    citizens.sort_unstable();
    citizens.dedup();
    audit_read(registry, principal, metrics, &citizens, rows.len(), now)
}

/// Writes one read of identified data to the audit log: who, which metrics, whose, how many
/// rows (what a citizen's "who read my data" shows).
pub(crate) fn audit_read(
    registry: &std::path::Path,
    principal: &str,
    metrics: &[Metric],
    citizens: &[&str],
    rows: usize,
    now: i64,
) -> Result<(), ApiError> {
    let names: Vec<&str> = metrics.iter().map(|m| m.name()).collect();
    audit_read_of(registry, principal, &names.join(","), citizens, rows, now)
}

/// As [`audit_read`], for a read described by `what` (metrics, or what an operator looked
/// at: a device's live readings, a dead letter).
pub(crate) fn audit_read_of(
    registry: &std::path::Path,
    principal: &str,
    what: &str,
    citizens: &[&str],
    rows: usize,
    now: i64,
) -> Result<(), ApiError> {
    let body = serde_json::json!({
        "principal": principal,
        "metric": what,
        "citizens": citizens,
        "rows": rows,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(metric: Metric, time_ms: i64, citizen: &str) -> Row {
        Row {
            time_ms,
            citizen: citizen.into(),
            device: format!("{citizen}-dev"),
            metric,
            value: 1.0,
            unit: metric.unit().into(),
            aggregated: false,
            flags: 0,
        }
    }

    fn keys(rows: &[Row]) -> Vec<(i64, &str, &str)> {
        rows.iter()
            .map(|r| (r.time_ms, r.citizen.as_str(), r.metric.name()))
            .collect()
    }

    #[test]
    fn a_page_stops_where_a_cut_answer_may_have_more() {
        let hr = Metric::HeartRate;
        let rr = Metric::RespiratoryRate;
        // Heart rate was asked for 3 rows (a page of 2, plus one) and got them: cut after
        // its second. Respiratory rate has only one row, later than that.
        let found = vec![
            vec![row(hr, 1, "c1"), row(hr, 2, "c1"), row(hr, 3, "c1")],
            vec![row(rr, 5, "c1")],
        ];
        let (page, next) = page_of(found, 2);
        assert_eq!(
            keys(&page),
            vec![(1, "c1", "heart_rate"), (2, "c1", "heart_rate")]
        );
        let next = next.expect("more follow");
        assert_eq!(next.key(), (2, "c1", "c1-dev", "heart_rate"));
        // Nothing was cut and everything fits: no next page.
        let (page, next) = page_of(vec![vec![row(hr, 1, "c1")], vec![row(rr, 1, "c1")]], 2);
        assert_eq!(page.len(), 2);
        assert_eq!(next, None);
        // Not cut, but more than a page in all: the next page starts after the last row.
        let found = vec![
            vec![row(hr, 1, "c1"), row(hr, 2, "c1")],
            vec![row(rr, 1, "c1")],
        ];
        let (page, next) = page_of(found, 2);
        assert_eq!(
            keys(&page),
            vec![(1, "c1", "heart_rate"), (1, "c1", "respiratory_rate")]
        );
        let next = next.expect("more follow");
        assert_eq!(next.key(), (1, "c1", "c1-dev", "respiratory_rate"));
        // The next page of heart rate starts after (1, c1) and includes nothing at it; one of a
        // metric ordered after respiratory rate would include (1, c1) itself.
        assert!(!next.resume_for(hr).inclusive);
        assert!(next.resume_for(Metric::Spo2).inclusive);
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let sealer = Sealer::new();
        let cursor = PageCursor::at(&row(Metric::HeartRate, 42, "c1"));
        let token = cursor.encode(&sealer);
        assert!(!token.contains("c1") && !token.contains("YzE"), "{token}");
        assert_eq!(PageCursor::decode(&token, &sealer).ok(), Some(cursor));
        assert!(PageCursor::decode("not-a-cursor", &sealer).is_err());
        assert!(
            PageCursor::decode("e30", &sealer).is_err(),
            "{{}} is no cursor"
        );
        assert!(
            PageCursor::decode(&token, &Sealer::new()).is_err(),
            "another start's"
        );
    }
}
