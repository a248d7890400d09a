//! A care service's page: its open alerts to acknowledge, and the citizens whose care
//! consent to it is in force now, with their latest vitals (only the metrics each consent
//! covers). Nothing of a citizen without consent: the list, the vitals and the alerts are
//! all decided by the consent in force at the moment of the request, and the read is
//! written to the audit log.

use jiff::tz::TimeZone;
use kenko_devices::Metric;
use kenko_ingest::alerts::Alert;
use kenko_ingest::consent::{Consents, Purpose};
use kenko_ingest::query::Row;
use kenko_ingest::store::PersonalStore;
use maud::{html, Markup};

use super::format::{local, shown};
use super::i18n::Text;
use super::{head, Viewer};
use crate::http::{ensure_sound_stores, internal, now_ms, ApiError, HttpApi};

/// The vitals shown per citizen.
const VITALS: &[Metric] = &[
    Metric::HeartRate,
    Metric::Spo2,
    Metric::SystolicBp,
    Metric::DiastolicBp,
    Metric::BodyTemperature,
    Metric::BodyWeight,
    Metric::BloodGlucose,
];
/// How far back a latest reading is looked for.
const LOOK_BACK_MS: i64 = 7 * 24 * 3_600_000;

/// One citizen in the service's care: their latest reading of each vital, if consented.
struct Followed {
    citizen: String,
    latest: Vec<(Metric, Option<Row>)>,
}

pub(crate) async fn page(api: &HttpApi, viewer: &Viewer) -> Result<Markup, ApiError> {
    ensure_sound_stores(api)?;
    let alerts = crate::alerts::care_alerts(api, &viewer.who, true, 200).await?;
    let (consents, now) = (api.consents.current(), now_ms());
    let service = viewer.who.id.clone();
    let citizens = consents.citizens_permitting(&service, Purpose::Care, now);
    let (store, registry) = (
        api.data_dir.join("personal.db"),
        api.data_dir.join("registry.db"),
    );
    let followed = tokio::task::spawn_blocking(move || {
        let store = PersonalStore::open_read_only(&store).map_err(internal)?;
        let followed = latest_vitals(&store, &consents, &service, &citizens, now)?;
        let rows = followed
            .iter()
            .map(|f| f.latest.iter().filter(|(_, r)| r.is_some()).count())
            .sum();
        let names: Vec<&str> = followed.iter().map(|f| f.citizen.as_str()).collect();
        crate::observations::audit_read(&registry, &service, VITALS, &names, rows, now)?;
        Ok::<_, ApiError>(followed)
    })
    .await
    .map_err(internal)??;
    let zone = TimeZone::get(&api.config.ingest.default_timezone).unwrap_or(TimeZone::UTC);
    Ok(render(viewer, &alerts, &followed, &zone))
}

fn latest_vitals(
    store: &PersonalStore,
    consents: &Consents,
    service: &str,
    citizens: &[String],
    now: i64,
) -> Result<Vec<Followed>, ApiError> {
    let mut followed = Vec::with_capacity(citizens.len());
    for citizen in citizens {
        let mut latest = Vec::with_capacity(VITALS.len());
        for &metric in VITALS {
            let row = store
                .latest(citizen, metric, now - LOOK_BACK_MS)
                .map_err(internal)?
                .filter(|r| {
                    consents.permits(
                        citizen,
                        service,
                        Purpose::Care,
                        metric.name(),
                        r.time_ms,
                        now,
                    )
                });
            latest.push((metric, row));
        }
        followed.push(Followed {
            citizen: citizen.clone(),
            latest,
        });
    }
    Ok(followed)
}

fn render(viewer: &Viewer, alerts: &[Alert], followed: &[Followed], zone: &TimeZone) -> Markup {
    let lang = viewer.lang;
    let when = |ms: i64| local(ms, zone, "%m-%d %H:%M");
    html! {
        section id="alerts" aria-labelledby="alerts-h" data-live-alerts="/console/live/alerts" {
            h2 id="alerts-h" { (lang.t(Text::Alerts)) " (" (alerts.len()) ")" }
            @if alerts.is_empty() {
                p { (lang.t(Text::NoAlerts)) }
            } @else {
                table {
                    (head(lang, &[Text::When, Text::Citizen, Text::Rule, Text::Reading, Text::Blank]))
                    tbody {
                        @for a in alerts {
                            @let metric = a.new.metric.parse::<Metric>().ok();
                            tr data-alert=(a.id) data-citizen=(a.new.citizen) {
                                td { (when(a.new.started_ms)) }
                                td { (a.new.citizen) }
                                td { (a.new.rule) }
                                td {
                                    @match (metric, a.new.value) {
                                        (Some(m), Some(v)) => { (lang.metric(m)) " " (shown(m, lang, v)) }
                                        (Some(m), None) => { (lang.metric(m)) ": " (lang.t(Text::NoReadings)) }
                                        _ => { (a.new.metric) }
                                    }
                                    " · " (a.new.device)
                                }
                                td {
                                    form method="post" action=(format!("/console/alerts/{}/ack", a.id)) class="inline" {
                                        input type="hidden" name="csrf_token" value=(viewer.csrf);
                                        button type="submit" { (lang.t(Text::Acknowledge)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section id="citizens" aria-labelledby="citizens-h" {
            h2 id="citizens-h" { (lang.t(Text::InYourCare)) " (" (followed.len()) ")" }
            @if followed.is_empty() {
                p { (lang.t(Text::NobodyInCare)) }
            } @else {
                table class="vitals" {
                    thead { tr {
                        th scope="col" { (lang.t(Text::Citizen)) }
                        @for m in VITALS { th scope="col" { (lang.metric(*m)) } }
                    } }
                    tbody {
                        @for f in followed {
                            tr data-citizen=(f.citizen) {
                                th scope="row" { (f.citizen) }
                                @for (metric, row) in &f.latest {
                                    td data-metric=(metric.name()) {
                                        @if let Some(r) = row {
                                            (shown(*metric, lang, r.value))
                                            br;
                                            small class="when" { (when(r.time_ms)) }
                                        } @else {
                                            "–"
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
