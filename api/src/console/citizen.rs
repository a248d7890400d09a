//! A citizen's own page: last night's sleep and its 4-week trend, measurements by day, week
//! or month with the last 7 days compared to the 4 weeks before, their consents (withdraw or
//! grant again), and who read their identified data. Only the citizen's own rows are read,
//! and the read is written to the audit log like any read of identified data.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use kenko_devices::Metric;
use kenko_ingest::consent::{ConsentRegistry, Consents, Goal, IdentifiedRead};
use kenko_ingest::query::{Agg, Query, Row};
use kenko_ingest::store::{PersonalStore, StoreError};
use maud::{html, Markup};

use super::chart::{line_chart, Series};
use super::consents;
use super::format::{comparison, local, shown};
use super::goals;
use super::i18n::{Lang, Text};
use super::{head, Viewer};
use crate::http::{ensure_sound_stores, internal, now_ms, ApiError, HttpApi};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// The span of the measurement charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Range {
    Day,
    Week,
    Month,
}

impl Range {
    pub(crate) fn parse(text: Option<&str>) -> Range {
        match text {
            Some("day") => Range::Day,
            Some("month") => Range::Month,
            _ => Range::Week,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Range::Day => "day",
            Range::Week => "week",
            Range::Month => "month",
        }
    }

    fn span_ms(self) -> i64 {
        match self {
            Range::Day => DAY,
            Range::Week => 7 * DAY,
            Range::Month => 30 * DAY,
        }
    }

    /// The charts' bucket: about 150 points across.
    fn every_ms(self) -> i64 {
        match self {
            Range::Day => 10 * MIN,
            Range::Week => HOUR,
            Range::Month => 6 * HOUR,
        }
    }
}

/// The charts, each of one or more metrics drawn together.
const PANELS: &[&[Metric]] = &[
    &[Metric::HeartRate],
    &[Metric::SystolicBp, Metric::DiastolicBp],
    &[Metric::BodyWeight],
    &[Metric::Spo2],
    &[Metric::BloodGlucose],
    &[Metric::DailySteps],
];

/// The latest sleep day's summary.
struct Night {
    start_ms: i64,
    in_bed: Option<f64>,
    asleep: Option<f64>,
    efficiency: Option<f64>,
    awakenings: Option<f64>,
}

/// One chart's lines, and how its first metric's last 7 days compare with the 4 weeks
/// before them: (recent mean, baseline mean).
struct Panel {
    metrics: &'static [Metric],
    series: Vec<Series>,
    compared: Option<(f64, f64)>,
    /// The first metric's daily means of the last 7 days, oldest first (for its goal).
    days: Vec<f64>,
}

/// Everything the page shows, read in one go.
struct CitizenData {
    night: Option<Night>,
    sleep_trend: Vec<Series>,
    /// Sleep time of the nights of the last 7 days, oldest first (for its goal).
    sleep_days: Vec<f64>,
    panels: Vec<Panel>,
    goals: Vec<Goal>,
    consents: Vec<consents::ConsentLine>,
    reads: Vec<IdentifiedRead>,
    rows_read: usize,
}

impl CitizenData {
    fn goal(&self, metric: Metric) -> Option<&Goal> {
        self.goals.iter().find(|g| g.metric == metric)
    }
}

/// The citizen's page.
pub(crate) async fn page(
    api: &HttpApi,
    viewer: &Viewer,
    citizen: &str,
    range: Range,
) -> Result<Markup, ApiError> {
    ensure_sound_stores(api)?;
    let now = now_ms();
    let (store, registry) = (
        api.data_dir.join("personal.db"),
        api.data_dir.join("registry.db"),
    );
    let (who, owner) = (viewer.who.id.clone(), citizen.to_owned());
    let data = tokio::task::spawn_blocking(move || {
        let store = PersonalStore::open_read_only(&store).map_err(internal)?;
        let book = ConsentRegistry::open(&registry).map_err(internal)?;
        let data = gather(&store, &book, (&owner, &who), range, now).map_err(internal)?;
        let sleep = [
            Metric::SleepTime,
            Metric::SleepTimeInBed,
            Metric::SleepEfficiency,
            Metric::SleepAwakenings,
        ];
        let metrics: Vec<Metric> = sleep
            .into_iter()
            .chain(PANELS.iter().flat_map(|p| p.iter().copied()))
            .collect();
        crate::observations::audit_read(&registry, &who, &metrics, &[&owner], data.rows_read, now)?;
        Ok::<_, ApiError>(data)
    })
    .await
    .map_err(internal)??;
    let zone = TimeZone::get(&api.config.ingest.default_timezone).unwrap_or(TimeZone::UTC);
    let care_services = crate::principals::with_role(api, "care");
    Ok(render(viewer, &data, (range, now), &zone, &care_services))
}

fn query(metric: Metric, citizen: &str, from_ms: i64, to_ms: i64) -> Query {
    Query {
        citizen: Some(citizen.to_owned()),
        from_ms: Some(from_ms),
        to_ms: Some(to_ms),
        ..Query::new(metric)
    }
}

fn gather(
    store: &PersonalStore,
    registry: &ConsentRegistry,
    (citizen, viewer): (&str, &str),
    range: Range,
    now: i64,
) -> Result<CitizenData, StoreError> {
    let mut rows_read = 0;
    let mut read = |q: Query| -> Result<Vec<Row>, StoreError> {
        let rows = store.query(&q)?;
        rows_read += rows.len();
        Ok(rows)
    };
    let night = last_night(&mut read, citizen, now)?;
    let trend = read(query(Metric::SleepTime, citizen, now - 28 * DAY, now + 1))?;
    let sleep_days = last_week(&trend, now);
    let sleep_trend = series_by_device(trend, false);
    let mut panels = Vec::new();
    for metrics in PANELS {
        let mut lines = Vec::new();
        for &metric in *metrics {
            let rows = if metric.is_derived() {
                // One value a day: a week at least, raw.
                let span = range.span_ms().max(7 * DAY);
                read(query(metric, citizen, now - span, now + 1))?
            } else {
                read(Query {
                    every_ms: Some(range.every_ms()),
                    agg: Agg::Mean,
                    ..query(metric, citizen, now - range.span_ms(), now + 1)
                })?
            };
            lines.extend(series_by_device(rows, metrics.len() > 1));
        }
        let daily = read(Query {
            every_ms: Some(DAY),
            agg: Agg::Mean,
            ..query(metrics[0], citizen, now - 35 * DAY, now + 1)
        })?;
        panels.push(Panel {
            metrics,
            series: lines,
            compared: baseline(&daily, now),
            days: last_week(&daily, now),
        });
    }
    // As recorded, not as the hub's consent book (which follows the registry within its
    // poll) has it yet: a button just pressed shows its effect.
    let records = registry.list(Some(citizen))?;
    let recorded = Consents::new(records.clone());
    let consents = consents::lines(records, &recorded, citizen, now);
    // Others' reads: the citizen's own (each view of this page is one) would hide them.
    let reads = registry.identified_reads(citizen, now - 30 * DAY, Some(viewer), 50)?;
    let goals = registry.goals(citizen)?;
    Ok(CitizenData {
        night,
        sleep_trend,
        sleep_days,
        panels,
        goals,
        consents,
        reads,
        rows_read,
    })
}

/// The summary of the latest sleep day of the last three days, if there is one.
fn last_night(
    read: &mut impl FnMut(Query) -> Result<Vec<Row>, StoreError>,
    citizen: &str,
    now: i64,
) -> Result<Option<Night>, StoreError> {
    let mut latest = |metric: Metric| -> Result<Option<(i64, f64)>, StoreError> {
        let rows = read(query(metric, citizen, now - 3 * DAY, now + 1))?;
        Ok(rows.last().map(|r| (r.time_ms, r.value)))
    };
    let Some((start_ms, asleep)) = latest(Metric::SleepTime)? else {
        return Ok(None);
    };
    // The other summaries of the same sleep day (a device's summaries share its start).
    let same = |found: Option<(i64, f64)>| found.filter(|f| f.0 == start_ms).map(|f| f.1);
    Ok(Some(Night {
        start_ms,
        asleep: Some(asleep),
        in_bed: same(latest(Metric::SleepTimeInBed)?),
        efficiency: same(latest(Metric::SleepEfficiency)?),
        awakenings: same(latest(Metric::SleepAwakenings)?),
    }))
}

/// One line per device (named by the metric too when a chart draws several metrics).
fn series_by_device(rows: Vec<Row>, with_metric: bool) -> Vec<Series> {
    let mut by: BTreeMap<(String, &'static str), Vec<(i64, f64)>> = BTreeMap::new();
    for r in rows {
        by.entry((r.device, r.metric.name()))
            .or_default()
            .push((r.time_ms, r.value));
    }
    by.into_iter()
        .map(|((device, metric), points)| Series {
            name: if with_metric {
                format!("{metric} · {device}")
            } else {
                device
            },
            points,
        })
        .collect()
}

/// One value per day (or night): the mean of the rows of that time, whatever device each
/// came from, in time order.
fn per_day(rows: &[Row]) -> Vec<(i64, f64)> {
    let mut days: BTreeMap<i64, (f64, u32)> = BTreeMap::new();
    for r in rows {
        let day = days.entry(r.time_ms).or_insert((0.0, 0));
        day.0 += r.value;
        day.1 += 1;
    }
    days.into_iter()
        .map(|(t, (sum, n))| (t, sum / f64::from(n)))
        .collect()
}

/// The values of the days of the last week, oldest first.
fn last_week(rows: &[Row], now: i64) -> Vec<f64> {
    per_day(rows)
        .into_iter()
        .filter(|(t, _)| *t >= now - 7 * DAY)
        .map(|(_, v)| v)
        .collect()
}

/// The mean of the daily means of the last 7 days and of the 28 days before them, when the
/// 28 days hold at least 7 days with data (a baseline worth comparing with). A day's mean
/// is over all the citizen's devices.
fn baseline(daily: &[Row], now: i64) -> Option<(f64, f64)> {
    let cut = now - 7 * DAY;
    let days = per_day(daily);
    let mean =
        |vals: Vec<f64>| (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64);
    let recent: Vec<f64> = days.iter().filter(|d| d.0 >= cut).map(|d| d.1).collect();
    let before: Vec<f64> = days
        .iter()
        .filter(|d| d.0 < cut && d.0 >= cut - 28 * DAY)
        .map(|d| d.1)
        .collect();
    if before.len() < 7 {
        return None;
    }
    Some((mean(recent)?, mean(before)?))
}

/// The page: sleep, measurements, consents, download, reads.
fn render(
    viewer: &Viewer,
    data: &CitizenData,
    (range, now): (Range, i64),
    zone: &TimeZone,
    care_services: &[String],
) -> Markup {
    let lang = viewer.lang;
    let date = |ms: i64| local(ms, zone, "%Y-%m-%d");
    html! {
        (render_sleep(viewer, data, now, zone))
        (render_vitals(viewer, data, (range, now), zone))
        (consents::section(viewer, &data.consents, care_services, &date))
        section id="download" aria-labelledby="download-h" {
            h2 id="download-h" { (lang.t(Text::Download)) }
            p {
                a id="export-csv" href="/console/export?format=csv" download { "CSV" }
                " · "
                a id="export-ndjson" href="/console/export?format=ndjson" download { (lang.t(Text::JsonLines)) }
            }
        }
        (render_reads(lang, &data.reads, zone))
    }
}

/// Last night's sleep, its four weeks, and the sleep goal.
fn render_sleep(viewer: &Viewer, data: &CitizenData, now: i64, zone: &TimeZone) -> Markup {
    let lang = viewer.lang;
    html! {
        section id="sleep" aria-labelledby="sleep-h" {
            h2 id="sleep-h" { (lang.t(Text::LastNight)) }
            @match &data.night {
                None => p { (lang.t(Text::NoSleep)) },
                Some(night) => {
                    p class="when" { (local(night.start_ms, zone, "%Y-%m-%d")) }
                    dl class="figures" {
                        @if let Some(v) = night.asleep { div { dt { (lang.t(Text::SleepTime)) } dd data-metric="sleep_time" { (lang.duration_min(v)) } } }
                        @if let Some(v) = night.in_bed { div { dt { (lang.t(Text::TimeInBed)) } dd data-metric="sleep_time_in_bed" { (lang.duration_min(v)) } } }
                        @if let Some(v) = night.efficiency { div { dt { (lang.t(Text::Efficiency)) } dd data-metric="sleep_efficiency" { (shown(Metric::SleepEfficiency, lang, v)) } } }
                        @if let Some(v) = night.awakenings { div { dt { (lang.t(Text::Awakenings)) } dd data-metric="sleep_awakenings" { (shown(Metric::SleepAwakenings, lang, v)) } } }
                    }
                }
            }
            @if !data.sleep_trend.is_empty() {
                h3 { (lang.t(Text::SleepTrend)) }
                (line_chart(lang.t(Text::SleepTrend), &data.sleep_trend, (now - 28 * DAY, now), |v| lang.duration_min(v), |ms| local(ms, zone, "%m-%d")))
            }
            (goals::block(viewer, Metric::SleepTime, data.goal(Metric::SleepTime), &data.sleep_days))
        }
    }
}

/// The measurement charts over the chosen range, each with its comparison and goal.
fn render_vitals(
    viewer: &Viewer,
    data: &CitizenData,
    (range, now): (Range, i64),
    zone: &TimeZone,
) -> Markup {
    let lang = viewer.lang;
    let axis = move |ms: i64| match range {
        Range::Day => local(ms, zone, "%m-%d %H:%M"),
        _ => local(ms, zone, "%m-%d"),
    };
    html! {
        section id="vitals" aria-labelledby="vitals-h" {
            h2 id="vitals-h" { (lang.t(Text::Vitals)) }
            nav class="ranges" aria-label=(lang.t(Text::Vitals)) {
                @for (r, text) in [(Range::Day, Text::Day), (Range::Week, Text::Week), (Range::Month, Text::Month)] {
                    @if r == range {
                        strong aria-current="page" { (lang.t(text)) }
                    } @else {
                        a href=(format!("?range={}", r.code())) { (lang.t(text)) }
                    }
                }
            }
            @for panel in &data.panels {
                @let first = panel.metrics[0];
                @let title = if panel.metrics.len() > 1 { lang.t(Text::BloodPressure) } else { lang.metric(first) };
                article class="panel" data-metric=(first.name()) {
                    h3 { (title) }
                    @if let Some(c) = panel.compared { p class="compared" { (comparison(first, lang, c)) } }
                    @if panel.series.is_empty() {
                        p class="none" { (lang.t(Text::NoData)) }
                    } @else {
                        @let span = if first.is_derived() { range.span_ms().max(7 * DAY) } else { range.span_ms() };
                        (line_chart(title, &panel.series, (now - span, now), |v| shown(first, lang, v), axis))
                    }
                    @if goals::GOAL_METRICS.contains(&first) {
                        (goals::block(viewer, first, data.goal(first), &panel.days))
                    }
                }
            }
        }
    }
}

/// Who else read the citizen's identified data.
fn render_reads(lang: Lang, reads: &[IdentifiedRead], zone: &TimeZone) -> Markup {
    html! {
        section id="reads" aria-labelledby="reads-h" {
            h2 id="reads-h" { (lang.t(Text::Reads)) }
            @if reads.is_empty() {
                p { (lang.t(Text::NoReads)) }
            } @else {
                table {
                    (head(lang, &[Text::When, Text::Who, Text::What]))
                    tbody {
                        @for r in reads {
                            tr { td { (local(r.at_ms, zone, "%Y-%m-%d %H:%M")) } td { (r.principal) } td { (r.metrics) } }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(time_ms: i64, value: f64) -> Row {
        Row {
            time_ms,
            citizen: "c".into(),
            device: "w".into(),
            metric: Metric::DailySteps,
            value,
            unit: String::new(),
            aggregated: true,
            flags: 0,
        }
    }

    #[test]
    fn the_last_week_and_the_four_before_are_averaged_when_they_hold_a_week() {
        let now = 100 * DAY;
        let mut daily: Vec<Row> = (8..=35).map(|d| day(now - d * DAY, 6_000.0)).collect();
        daily.extend((1..=7).map(|d| day(now - d * DAY + HOUR, 7_200.0)));
        assert_eq!(baseline(&daily, now), Some((7_200.0, 6_000.0)));
        // A second device on the same days adds no days: its rows are averaged in.
        let mut two = daily.clone();
        two.extend(daily.iter().map(|r| Row {
            device: "bed".into(),
            value: r.value + 100.0,
            ..r.clone()
        }));
        assert_eq!(baseline(&two, now), Some((7_250.0, 6_050.0)));
        assert_eq!(last_week(&two, now).len(), 7);
        // Six days of baseline are not enough, whatever the devices.
        let short_two: Vec<Row> = two
            .iter()
            .filter(|r| r.time_ms >= now - 13 * DAY)
            .cloned()
            .collect();
        assert_eq!(baseline(&short_two, now), None);
        let short: Vec<Row> = daily
            .iter()
            .filter(|r| r.time_ms >= now - 13 * DAY)
            .cloned()
            .collect();
        assert_eq!(baseline(&short, now), None);
    }
}
