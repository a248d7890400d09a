//! An analyst's page (role `analyst`): one aggregate across every citizen of the shared,
//! pseudonymized store per hour or day — mean, a percentile of the citizens' means, how
//! many citizens have readings, or how many readings — as a chart and a table, with the
//! same answer as CSV from `GET /api/v1/observations` (`across=true`, `store=shared`), which
//! is what `kenko query --store shared --across` prints.

use jiff::tz::TimeZone;
use kenko_devices::Metric;
use kenko_ingest::query::{parse_time, Agg, Query, Row};
use kenko_ingest::store::PersonalStore;
use maud::{html, Markup};

use super::chart::{line_chart, Series};
use super::format::{local, shown, url_value};
use super::i18n::Text;
use super::{PageParams, Viewer};
use crate::http::{bad, ensure_sound_stores, internal, now_ms, ApiError, HttpApi};

/// The aggregates offered, by their query names.
const AGGS: &[&str] = &["mean", "median", "p90", "citizens", "count", "min", "max"];
/// The bucket widths offered.
const EVERY: &[(&str, i64)] = &[("1h", 3_600_000), ("1d", 86_400_000)];

/// What the analyst asked for, checked.
struct Asked {
    metric: Metric,
    agg: &'static str,
    every: &'static str,
    from: String,
}

pub(crate) async fn page(
    api: &HttpApi,
    viewer: &Viewer,
    params: &PageParams,
) -> Result<Markup, ApiError> {
    ensure_sound_stores(api)?;
    let path = api.data_dir.join("shared.db");
    let (metrics, asked, rows) = {
        let now = now_ms();
        let asked = ask(params)?;
        let from_ms = parse_time(&asked.from, now).map_err(|e| bad(format!("from: {e}")))?;
        let query = Query {
            from_ms: Some(from_ms),
            to_ms: Some(now + 1),
            every_ms: EVERY.iter().find(|e| e.0 == asked.every).map(|e| e.1),
            agg: asked.agg.parse::<Agg>().map_err(|e| bad(e.to_string()))?,
            across: true,
            ..Query::new(asked.metric)
        };
        let (metrics, rows) = tokio::task::spawn_blocking(move || {
            if !path.exists() {
                return Ok((Vec::new(), Vec::new()));
            }
            let store = PersonalStore::open_read_only(&path)?;
            Ok::<_, kenko_ingest::store::StoreError>((store.metrics()?, store.query(&query)?))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        (metrics, asked, rows)
    };
    let zone = TimeZone::get(&api.config.ingest.default_timezone).unwrap_or(TimeZone::UTC);
    Ok(render(viewer, &metrics, &asked, &rows, &zone))
}

/// The form's choices, with defaults (heart rate, hourly means over the last week).
fn ask(params: &PageParams) -> Result<Asked, ApiError> {
    let metric = match params.metric.as_deref() {
        None | Some("") => Metric::HeartRate,
        Some(m) => m
            .parse()
            .map_err(|_| bad(format!("unknown metric {m:?}")))?,
    };
    let pick =
        |given: Option<&str>, choices: &[&'static str], default: &'static str, what: &str| {
            match given {
                None | Some("") => Ok(default),
                Some(g) => choices
                    .iter()
                    .find(|c| **c == g)
                    .copied()
                    .ok_or_else(|| bad(format!("{what} {g:?}: one of {}", choices.join(", ")))),
            }
        };
    let everies: Vec<&'static str> = EVERY.iter().map(|e| e.0).collect();
    Ok(Asked {
        metric,
        agg: pick(params.agg.as_deref(), AGGS, "mean", "agg")?,
        every: pick(params.every.as_deref(), &everies, "1h", "every")?,
        from: params
            .from
            .clone()
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "-7d".to_owned()),
    })
}

/// The CSV of the same answer, from the API.
fn csv_link(asked: &Asked) -> String {
    format!(
        "/api/v1/observations?store=shared&across=true&metric={}&every={}&agg={}&from={}&format=csv&limit=100000",
        asked.metric.name(),
        asked.every,
        asked.agg,
        url_value(&asked.from)
    )
}

fn render(
    viewer: &Viewer,
    metrics: &[Metric],
    asked: &Asked,
    rows: &[Row],
    zone: &TimeZone,
) -> Markup {
    let lang = viewer.lang;
    let counted = matches!(asked.agg, "citizens" | "count");
    let value = |v: f64| {
        if counted {
            format!("{v:.0}")
        } else {
            shown(asked.metric, lang, v)
        }
    };
    let title = format!(
        "{} · {} · {}",
        lang.metric(asked.metric),
        asked.agg,
        asked.every
    );
    let series = [Series {
        name: title.clone(),
        points: rows.iter().map(|r| (r.time_ms, r.value)).collect(),
    }];
    let span = match (rows.first(), rows.last()) {
        (Some(a), Some(b)) => (a.time_ms, b.time_ms.max(a.time_ms + 1)),
        _ => (0, 1),
    };
    html! {
        section id="across" aria-labelledby="across-h" {
            h2 id="across-h" { (lang.t(Text::AcrossCitizens)) }
            form method="get" action="/console" {
                p {
                    label for="metric" { (lang.t(Text::Metric)) } " "
                    select id="metric" name="metric" {
                        @for m in metrics {
                            option value=(m.name()) selected[*m == asked.metric] { (lang.metric(*m)) }
                        }
                    }
                    " "
                    label for="agg" { (lang.t(Text::Aggregate)) } " "
                    select id="agg" name="agg" {
                        @for a in AGGS { option value=(a) selected[*a == asked.agg] { (a) } }
                    }
                    " "
                    label for="every" { (lang.t(Text::Every)) } " "
                    select id="every" name="every" {
                        @for (e, _) in EVERY { option value=(e) selected[*e == asked.every] { (e) } }
                    }
                    " "
                    label for="from" { (lang.t(Text::From)) } " "
                    input id="from" name="from" value=(asked.from) size="12";
                    " "
                    button type="submit" { (lang.t(Text::Show)) }
                }
            }
            @if rows.is_empty() {
                p { (lang.t(Text::NoData)) }
            } @else {
                (line_chart(&title, &series, span, value, |ms| local(ms, zone, "%m-%d %H:%M")))
                p { a id="csv" href=(csv_link(asked)) download { (lang.t(Text::DownloadCsv)) } }
                table {
                    thead { tr { th scope="col" { (lang.t(Text::When)) } th scope="col" { (title) } } }
                    tbody {
                        @for r in rows {
                            tr { td { (local(r.time_ms, zone, "%Y-%m-%d %H:%M")) } td { (value(r.value)) } }
                        }
                    }
                }
            }
        }
    }
}
