//! `GET /fhir/Observation?patient=&code=&date=&_count=`: a `searchset` Bundle of the
//! stored readings the principal may read, under the HTTP API's rules (`query_access`,
//! `filter_rows`) and audited as its reads of identified data are. Pages follow the
//! API's order (time, citizen, device, metric) and break only between readings of
//! different times or devices, so a blood pressure's two components stay together.

use std::collections::HashMap;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kenko_broker::auth::Identity;
use kenko_devices::Metric;
use kenko_ingest::consent::Consents;
use kenko_ingest::query::{Query, Row};
use kenko_ingest::store::PersonalStore;
use serde_json::{json, Value};

use super::params::{Kind, SearchParams};
use super::{base_url, resource, resources, Outcome};
use crate::http::{
    bad, ensure_sound_stores, filter_rows, forbidden, internal, now_ms, query_access, rfc3339,
    Access, ApiError, Authenticated, HttpApi, StoreKind,
};
use crate::observations::{audit_identified_read, page_of, position, PageCursor};

/// Rows read for a page at least: a whole (time, citizen, device) of every metric fits.
const MIN_PAGE_ROWS: usize = 64;

pub(super) async fn observations(
    State(api): State<HttpApi>,
    who: Result<Authenticated, ApiError>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Outcome> {
    let Authenticated(who) = who?;
    ensure_sound_stores(&api)?;
    let raw = raw.unwrap_or_default();
    let params = SearchParams::parse(&raw, &api.cursors)?;
    let per_reading = params.kinds().len();
    if params.count < per_reading {
        return Err(bad(format!(
            "_count {}: a page holds every Observation of one time and device, up to {per_reading} for the codes asked; give at least {per_reading}, or fewer codes",
            params.count
        ))
        .into());
    }
    let now = now_ms();
    let consents = api.consents.current();
    let reads = plan(&params, &who, &consents, now)?;
    let (path, registry) = (
        api.data_dir.join("personal.db"),
        api.data_dir.join("registry.db"),
    );
    let principal = who.id.clone();
    let kinds = params.kinds();
    let count = params.count;
    let (entries, next) = tokio::task::spawn_blocking(move || {
        let store = PersonalStore::open_read_only(&path).map_err(internal)?;
        let found = reads
            .iter()
            .map(|(query, _)| store.query(query).map_err(internal))
            .collect::<Result<Vec<_>, _>>()?;
        let (rows, more) = page_of(found, page_rows(count));
        let (rows, next) = whole_readings(rows, more.is_some(), count);
        let rows = allowed(rows, &reads, &principal, &consents, now);
        let metrics: Vec<Metric> = reads.iter().map(|(q, _)| q.metric).collect();
        audit_identified_read(&registry, &principal, &metrics, &rows, now)?;
        Ok::<_, ApiError>((entries_of(&rows, &kinds), next))
    })
    .await
    .map_err(internal)??;
    let base = base_url(&api, &headers);
    let next = next.map(|c| c.encode(&api.cursors));
    Ok(resource(
        StatusCode::OK,
        &bundle(&base, &raw, entries, next),
    ))
}

/// Each metric's query, with what `who` may read of it. A metric asked for by code must be
/// readable; of all metrics (no `code`), those the principal may not read are left out.
fn plan(
    params: &SearchParams,
    who: &Identity,
    consents: &Consents,
    now: i64,
) -> Result<Vec<(Query, Access)>, ApiError> {
    let explicit = params.kinds.is_some();
    let mut reads = Vec::new();
    let mut refusal = None;
    for metric in params.kinds().iter().flat_map(|k| k.metrics()) {
        let access = match query_access(
            who,
            StoreKind::Personal,
            params.patient.as_deref(),
            metric.name(),
            consents,
            now,
        ) {
            Ok(access) => access,
            Err(why) if explicit => return Err(forbidden(why)),
            Err(why) => {
                refusal.get_or_insert(why);
                continue;
            }
        };
        let mut query = Query::new(metric);
        query.citizen = match &access {
            Access::Citizen(c) | Access::CareCitizen(c) => Some(c.clone()),
            _ => params.patient.clone(),
        };
        query.from_ms = params.from_ms;
        query.to_ms = params.to_ms;
        query.limit = Some(page_rows(params.count) + 1);
        query.resume = params.cursor.as_ref().map(|c| c.resume_for(metric));
        reads.push((query, access));
    }
    match (reads.is_empty(), refusal) {
        (true, Some(why)) => Err(forbidden(why)),
        _ => Ok(reads),
    }
}

/// Rows read for a page of `count` Observations (a blood pressure is two rows).
fn page_rows(count: usize) -> usize {
    (2 * count).max(MIN_PAGE_ROWS)
}

/// The (time, citizen, device) a row was read at.
fn reading(r: &Row) -> (i64, &str, &str) {
    (r.time_ms, &r.citizen, &r.device)
}

/// The page's rows cut so that no reading is split across pages and at most `count`
/// Observations remain (at least one reading stays), and where the next page starts. When
/// more rows follow the page, its last reading may be incomplete: it goes to the next page.
fn whole_readings(mut rows: Vec<Row>, more: bool, count: usize) -> (Vec<Row>, Option<PageCursor>) {
    let total = rows.len();
    let mut readings: Vec<usize> = Vec::new(); // where each reading starts
    for (i, r) in rows.iter().enumerate() {
        if i == 0 || reading(&rows[i - 1]) != reading(r) {
            readings.push(i);
        }
    }
    // A reading holds at most one Observation per kind, blood pressure's one or two rows one.
    let observations_until = |end: usize| {
        rows[..end]
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                let partner = rows[..*i]
                    .iter()
                    .any(|p| reading(p) == reading(r) && p.metric == Metric::DiastolicBp);
                !(r.metric == Metric::SystolicBp && partner)
            })
            .count()
    };
    let mut keep = readings.len();
    if more && keep > 1 {
        keep -= 1;
    }
    while keep > 1 && observations_until(readings.get(keep).copied().unwrap_or(total)) > count {
        keep -= 1;
    }
    let end = readings.get(keep).copied().unwrap_or(total);
    rows.truncate(end);
    let next = (more || end < total)
        .then(|| rows.last().map(PageCursor::at))
        .flatten();
    (rows, next)
}

/// The rows each metric's access lets the principal see.
fn allowed(
    rows: Vec<Row>,
    reads: &[(Query, Access)],
    principal: &str,
    consents: &Consents,
    now: i64,
) -> Vec<Row> {
    let mut rest = rows;
    let mut kept = Vec::with_capacity(rest.len());
    for (query, access) in reads {
        let (mut mine, others): (Vec<Row>, Vec<Row>) =
            rest.into_iter().partition(|r| r.metric == query.metric);
        rest = others;
        filter_rows(
            access,
            principal,
            query.metric.name(),
            &mut mine,
            consents,
            now,
            None,
        );
        kept.append(&mut mine);
    }
    kept.sort_by(|a, b| position(a).cmp(&position(b)));
    kept
}

/// A blood pressure's systolic and diastolic rows, and where its Observation goes.
type Pressure<'r> = (Option<&'r Row>, Option<&'r Row>, usize);

/// The rows as Observations, in order: a blood pressure from its two rows.
pub(super) fn entries_of(rows: &[Row], kinds: &[Kind]) -> Vec<Value> {
    let panels = kinds.contains(&Kind::BloodPressure);
    let mut out: Vec<Value> = Vec::new();
    let mut pressure: HashMap<(i64, &str, &str), Pressure<'_>> = HashMap::new();
    for r in rows {
        match r.metric {
            Metric::SystolicBp | Metric::DiastolicBp if panels => {
                let slot = pressure.entry(reading(r)).or_insert_with(|| {
                    out.push(Value::Null);
                    (None, None, out.len() - 1)
                });
                if r.metric == Metric::SystolicBp {
                    slot.0 = Some(r);
                } else {
                    slot.1 = Some(r);
                }
            }
            _ => out.push(resources::observation(r)),
        }
    }
    for (systolic, diastolic, at) in pressure.into_values() {
        if let Some(panel) = resources::blood_pressure(systolic, diastolic) {
            out[at] = panel;
        }
    }
    out
}

/// A `searchset` Bundle of `entries`, with its `self` link and, while more follow, `next`
/// (the same search from the sealed cursor `next`).
fn bundle(base: &str, query: &str, entries: Vec<Value>, next: Option<String>) -> Value {
    let url = |query: &str| {
        if query.is_empty() {
            format!("{base}/Observation")
        } else {
            format!("{base}/Observation?{query}")
        }
    };
    let mut links = vec![json!({"relation": "self", "url": url(query)})];
    if let Some(cursor) = next {
        let mut kept: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("_cursor="))
            .map(str::to_owned)
            .collect();
        kept.push(format!("_cursor={cursor}"));
        links.push(json!({"relation": "next", "url": url(&kept.join("&"))}));
    }
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|o| {
            let full = format!(
                "{base}/Observation/{}",
                o["id"].as_str().unwrap_or_default()
            );
            json!({"fullUrl": full, "resource": o, "search": {"mode": "match"}})
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": rfc3339(now_ms()),
        "link": links,
        "entry": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(time_ms: i64, metric: Metric) -> Row {
        Row {
            time_ms,
            citizen: "c-1".into(),
            device: "bp-1".into(),
            metric,
            value: 80.0,
            unit: metric.unit().into(),
            aggregated: false,
            flags: 0,
        }
    }

    fn page() -> Vec<Row> {
        vec![
            row(1, Metric::DiastolicBp),
            row(1, Metric::HeartRate),
            row(1, Metric::SystolicBp),
            row(2, Metric::HeartRate),
            row(3, Metric::DiastolicBp),
            row(3, Metric::SystolicBp),
        ]
    }

    fn times(rows: &[Row]) -> Vec<i64> {
        rows.iter().map(|r| r.time_ms).collect()
    }

    #[test]
    fn pages_break_between_readings_and_hold_at_most_count_observations() {
        let (rows, next) = whole_readings(page(), false, 10);
        assert_eq!((rows.len(), next), (6, None), "all of it, nothing follows");

        // More rows follow: the last reading may lack a component, so it waits.
        let (rows, next) = whole_readings(page(), true, 10);
        assert_eq!(times(&rows), [1, 1, 1, 2]);
        assert_eq!(next.as_ref().map(|c| c.key().0), Some(2));

        // Three Observations fit: the first reading (two) and the second (one).
        let (rows, next) = whole_readings(page(), false, 3);
        assert_eq!(times(&rows), [1, 1, 1, 2]);
        assert!(next.is_some());

        // A systolic without its diastolic is an Observation of its own.
        let lone = vec![row(1, Metric::SystolicBp), row(2, Metric::HeartRate)];
        let (rows, next) = whole_readings(lone, false, 1);
        assert_eq!((times(&rows), next.is_some()), (vec![1], true));

        // One reading always stays, whole, even when it holds more than `count`.
        let (rows, next) = whole_readings(page(), false, 1);
        assert_eq!(times(&rows), [1, 1, 1]);
        assert_eq!(
            next.as_ref().map(|c| (c.key().0, c.key().3)),
            Some((1, "systolic_bp"))
        );
    }

    #[test]
    fn blood_pressure_becomes_one_observation_with_two_components() {
        let rows = page();
        let entries = entries_of(
            &rows,
            &[Kind::BloodPressure, Kind::Reading(Metric::HeartRate)],
        );
        let codes: Vec<&str> = entries
            .iter()
            .map(|e| e["code"]["coding"][0]["code"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(codes, ["85354-9", "8867-4", "8867-4", "85354-9"]);
        let components = entries[0]["component"].as_array().map(Vec::len);
        assert_eq!(components, Some(2));
        assert_eq!(
            entries[0]["component"][0]["code"]["coding"][0]["code"],
            "8480-6"
        );
    }
}
