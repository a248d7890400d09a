//! A citizen's own page: last night's sleep and its 4-week trend, measurements by day, week
//! or month with the last 7 days compared to the 4 weeks before, their consents (withdraw or
//! grant again), and who read their identified data. Only the citizen's own rows are read,
//! and the read is written to the audit log like any read of identified data.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use kenko_devices::Metric;
use kenko_ingest::consent::{ConsentRegistry, Consents, Goal, IdentifiedRead, Purpose};
use kenko_ingest::query::{Agg, Query, Row};
use kenko_ingest::store::{PersonalStore, StoreError};
use maud::{html, Markup};

use super::chart::{line_chart, Series};
use super::goals;
use super::i18n::{Change, Lang, Text};
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

/// A consent the citizen gave or withdrew, per purpose and grantee.
struct ConsentLine {
    purpose: Purpose,
    grantee: String,
    since_ms: i64,
    in_force: bool,
}

/// Everything the page shows, read in one go.
struct CitizenData {
    night: Option<Night>,
    sleep_trend: Vec<Series>,
    /// Sleep time of the nights of the last 7 days, oldest first (for its goal).
    sleep_days: Vec<f64>,
    panels: Vec<Panel>,
    goals: Vec<Goal>,
    consents: Vec<ConsentLine>,
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
        let metrics: Vec<Metric> = PANELS.iter().flat_map(|p| p.iter().copied()).collect();
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
    let sleep_days = trend
        .iter()
        .filter(|r| r.time_ms >= now - 7 * DAY)
        .map(|r| r.value)
        .collect();
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
            days: daily
                .iter()
                .filter(|r| r.time_ms >= now - 7 * DAY)
                .map(|r| r.value)
                .collect(),
        });
    }
    // As recorded, not as the hub's consent book (which follows the registry within its
    // poll) has it yet: a button just pressed shows its effect.
    let records = registry.list(Some(citizen))?;
    let recorded = Consents::new(records.clone());
    let consents = consent_lines(records, &recorded, citizen, now);
    // Others' reads: the citizen's own (each view of this page is one) would hide them.
    let mut reads = registry.identified_reads(citizen, now - 30 * DAY, 200)?;
    reads.retain(|r| r.principal != viewer);
    reads.truncate(50);
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

/// The mean of the daily means of the last 7 days and of the 28 days before them, when the
/// 28 days hold at least 7 days with data (a baseline worth comparing with).
fn baseline(daily: &[Row], now: i64) -> Option<(f64, f64)> {
    let cut = now - 7 * DAY;
    let mean =
        |vals: Vec<f64>| (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64);
    let recent: Vec<f64> = daily
        .iter()
        .filter(|r| r.time_ms >= cut)
        .map(|r| r.value)
        .collect();
    let before: Vec<f64> = daily
        .iter()
        .filter(|r| r.time_ms < cut && r.time_ms >= cut - 28 * DAY)
        .map(|r| r.value)
        .collect();
    if before.len() < 7 {
        return None;
    }
    Some((mean(recent)?, mean(before)?))
}

/// Per purpose and grantee, the latest record and whether consent is in force now.
fn consent_lines(
    records: Vec<kenko_ingest::consent::Consent>,
    consents: &Consents,
    citizen: &str,
    now: i64,
) -> Vec<ConsentLine> {
    let mut lines: Vec<ConsentLine> = Vec::new();
    for record in records {
        let change = record.change;
        let line = ConsentLine {
            in_force: consents.permits_any(citizen, &change.grantee, change.purpose, now),
            purpose: change.purpose,
            grantee: change.grantee,
            since_ms: record.recorded_ms,
        };
        match lines
            .iter_mut()
            .find(|l| l.purpose == line.purpose && l.grantee == line.grantee)
        {
            Some(old) => *old = line,
            None => lines.push(line),
        }
    }
    lines
}

/// How a metric's values read to people: the unit, and the decimals worth showing.
pub(super) fn shown(metric: Metric, lang: Lang, value: f64) -> String {
    let (decimals, unit) = match (metric, lang) {
        (Metric::HeartRate | Metric::PulseRate, Lang::Ja) => (0, "拍/分"),
        (Metric::HeartRate | Metric::PulseRate, Lang::En) => (0, "bpm"),
        (Metric::SystolicBp | Metric::DiastolicBp, _) => (0, "mmHg"),
        (Metric::BodyWeight, _) => (1, "kg"),
        (Metric::Spo2 | Metric::BodyFat | Metric::SleepEfficiency, _) => (0, "%"),
        (Metric::BloodGlucose, _) => (0, "mg/dL"),
        (Metric::BodyTemperature, _) => (1, "°C"),
        (Metric::DailySteps | Metric::Steps, Lang::Ja) => (0, "歩"),
        (Metric::DailySteps | Metric::Steps, Lang::En) => (0, "steps"),
        (Metric::SleepAwakenings, Lang::Ja) => (0, "回"),
        (Metric::SleepAwakenings, Lang::En) => (0, "times"),
        (m, _) => (1, m.unit()),
    };
    format!("{} {unit}", grouped(value, decimals))
}

/// A number with `decimals` decimals and thousands separated by commas: 12,345.6.
fn grouped(value: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, value.abs());
    let (whole, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(w, f)| (w, Some(f)));
    let mut out = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(frac) = frac {
        out.push('.');
        out.push_str(frac);
    }
    if value < 0.0 && out.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.insert(0, '-');
    }
    out
}

/// The plain-words comparison of a panel's first metric.
fn comparison(metric: Metric, lang: Lang, (recent, before): (f64, f64)) -> String {
    let show = |v: f64| shown(metric, lang, v);
    let (now_shown, diff_shown) = (show(recent), show((recent - before).abs()));
    // Differences that round to nothing, or under 2 % of the baseline, are "about the same".
    let same = show(0.0) == diff_shown || (recent - before).abs() < before.abs() * 0.02;
    let change = match (same, recent > before) {
        (true, _) => Change::Same,
        (false, true) => Change::Up(diff_shown),
        (false, false) => Change::Down(diff_shown),
    };
    let counted = matches!(metric, Metric::DailySteps | Metric::Steps);
    lang.compared(
        lang.metric(metric),
        &now_shown,
        &show(before),
        &change,
        counted,
    )
}

fn render(
    viewer: &Viewer,
    data: &CitizenData,
    (range, now): (Range, i64),
    zone: &TimeZone,
    care_services: &[String],
) -> Markup {
    let lang = viewer.lang;
    let date = |ms: i64| local(ms, zone, "%Y-%m-%d");
    let when = |ms: i64| local(ms, zone, "%Y-%m-%d %H:%M");
    let axis = move |ms: i64| match range {
        Range::Day => local(ms, zone, "%m-%d %H:%M"),
        _ => local(ms, zone, "%m-%d"),
    };
    html! {
        section id="sleep" aria-labelledby="sleep-h" {
            h2 id="sleep-h" { (lang.t(Text::LastNight)) }
            @match &data.night {
                None => p { (lang.t(Text::NoSleep)) },
                Some(night) => {
                    p class="when" { (date(night.start_ms)) }
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
        section id="consents" aria-labelledby="consents-h" {
            h2 id="consents-h" { (lang.t(Text::Consents)) }
            (consent_table(viewer, &data.consents, &date))
            (care_grant(viewer, &data.consents, care_services))
        }
        section id="download" aria-labelledby="download-h" {
            h2 id="download-h" { (lang.t(Text::Download)) }
            p {
                a id="export-csv" href="/console/export?format=csv" download { "CSV" }
                " · "
                a id="export-ndjson" href="/console/export?format=ndjson" download { (lang.t(Text::JsonLines)) }
            }
        }
        section id="reads" aria-labelledby="reads-h" {
            h2 id="reads-h" { (lang.t(Text::Reads)) }
            @if data.reads.is_empty() {
                p { (lang.t(Text::NoReads)) }
            } @else {
                table {
                    (head(lang, &[Text::When, Text::Who, Text::What]))
                    tbody {
                        @for r in &data.reads {
                            tr { td { (when(r.at_ms)) } td { (r.principal) } td { (r.metrics) } }
                        }
                    }
                }
            }
        }
    }
}

/// A form to give care consent to a care service the citizen has not given it to now.
fn care_grant(viewer: &Viewer, lines: &[ConsentLine], services: &[String]) -> Markup {
    let lang = viewer.lang;
    let open: Vec<&String> = services
        .iter()
        .filter(|s| {
            !lines
                .iter()
                .any(|l| l.purpose == Purpose::Care && &l.grantee == *s && l.in_force)
        })
        .collect();
    html! {
        @if !open.is_empty() {
            form method="post" action="/console/consents" class="grant-care" {
                input type="hidden" name="csrf_token" value=(viewer.csrf);
                input type="hidden" name="purpose" value="care";
                input type="hidden" name="change" value="grant";
                label for="grant-care" { (lang.t(Text::GrantCare)) } " "
                select id="grant-care" name="grantee" {
                    @for s in &open { option value=(s) { (s) } }
                }
                " "
                button type="submit" { (lang.t(Text::Grant)) }
            }
        }
    }
}

fn consent_table(viewer: &Viewer, lines: &[ConsentLine], date: &impl Fn(i64) -> String) -> Markup {
    let lang = viewer.lang;
    let research_asked = lines.iter().any(|l| l.purpose == Purpose::Research);
    html! {
        @if lines.is_empty() {
            p { (lang.t(Text::NoConsents)) }
        } @else {
            table class="consents" {
                (head(lang, &[Text::Purpose, Text::Grantee, Text::State, Text::Blank]))
                tbody {
                    @for l in lines {
                        tr data-purpose=(l.purpose.as_str()) data-grantee=(l.grantee) {
                            td { (lang.purpose(l.purpose.as_str())) }
                            td { (l.grantee) }
                            td { (lang.t(if l.in_force { Text::InForce } else { Text::Withdrawn })) " (" (date(l.since_ms)) ")" }
                            td { (consent_button(viewer, l.purpose, &l.grantee, !l.in_force)) }
                        }
                    }
                }
            }
        }
        @if !research_asked {
            (consent_button(viewer, Purpose::Research, kenko_ingest::consent::HUB, true))
        }
    }
}

/// A form of one button: grant (`grant`) or withdraw consent for a purpose and grantee.
fn consent_button(viewer: &Viewer, purpose: Purpose, grantee: &str, grant: bool) -> Markup {
    let lang = viewer.lang;
    let label = match (grant, purpose) {
        (false, _) => lang.t(Text::Withdraw),
        (true, Purpose::Research) => lang.t(Text::GrantResearch),
        (true, _) => lang.t(Text::GrantAgain),
    };
    html! {
        form method="post" action="/console/consents" class="inline" {
            input type="hidden" name="csrf_token" value=(viewer.csrf);
            input type="hidden" name="purpose" value=(purpose.as_str());
            input type="hidden" name="grantee" value=(grantee);
            input type="hidden" name="change" value=(if grant { "grant" } else { "revoke" });
            button type="submit" { (label) }
        }
    }
}

/// A time in the hub's zone, formatted with strftime directives.
pub(super) fn local(ms: i64, zone: &TimeZone, format: &str) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(zone.clone()).strftime(format).to_string())
        .unwrap_or_else(|_| ms.to_string())
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
    fn the_last_week_is_compared_with_the_four_before_when_they_hold_a_week() {
        let now = 100 * DAY;
        let mut daily: Vec<Row> = (8..=35).map(|d| day(now - d * DAY, 6_000.0)).collect();
        daily.extend((1..=7).map(|d| day(now - d * DAY + HOUR, 7_200.0)));
        assert_eq!(baseline(&daily, now), Some((7_200.0, 6_000.0)));
        let text = comparison(Metric::DailySteps, Lang::En, (7_200.0, 6_000.0));
        assert_eq!(
            text,
            "Daily steps: 7,200 steps on average over the last 7 days, 1,200 steps more than your 4-week average before them (6,000 steps)."
        );
        let ja = comparison(Metric::DailySteps, Lang::Ja, (7_200.0, 6_000.0));
        assert!(ja.contains("1,200 歩 多く"), "{ja}");
        // Six days of baseline are not enough.
        let short: Vec<Row> = daily
            .iter()
            .filter(|r| r.time_ms >= now - 13 * DAY)
            .cloned()
            .collect();
        assert_eq!(baseline(&short, now), None);
    }

    #[test]
    fn small_changes_read_as_about_the_same_and_falls_as_lower() {
        let same = comparison(Metric::HeartRate, Lang::En, (64.4, 64.0));
        assert!(same.contains("about the same"), "{same}");
        let lower = comparison(Metric::HeartRate, Lang::En, (61.0, 67.0));
        assert!(lower.contains("6 bpm lower"), "{lower}");
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(1_234_567.0, 0), "1,234,567");
        assert_eq!(grouped(999.0, 0), "999");
        assert_eq!(grouped(72.46, 1), "72.5");
        assert_eq!(grouped(-1_200.0, 0), "-1,200");
        assert_eq!(grouped(-0.01, 0), "0");
    }
}
