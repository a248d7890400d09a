//! A citizen's goals on their page: per metric, a daily value to reach at least (steps,
//! sleep) or stay at most (weight), how many of the last 7 days met it, and the form that
//! sets or clears it (`POST /console/goals`).

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use kenko_devices::Metric;
use kenko_ingest::consent::{ConsentRegistry, Direction, Goal};
use maud::{html, Markup};
use serde::Deserialize;

use super::format::shown;
use super::i18n::{Lang, Text};
use super::Viewer;
use crate::http::{bad, forbidden, internal, now_ms, short, ApiError, HttpApi, MAX_WORD};

/// The metrics a citizen may set a goal for.
pub(crate) const GOAL_METRICS: &[Metric] = &[
    Metric::DailySteps,
    Metric::SleepTime,
    Metric::BodyWeight,
    Metric::HeartRate,
    Metric::SystolicBp,
    Metric::BloodGlucose,
];

/// The days a goal is counted over.
const DAYS: usize = 7;

/// A goal's block under its chart: how the last 7 days went, and the form.
pub(crate) fn block(viewer: &Viewer, metric: Metric, goal: Option<&Goal>, days: &[f64]) -> Markup {
    let lang = viewer.lang;
    let recent = &days[days.len().saturating_sub(DAYS)..];
    html! {
        div class="goal" data-goal=(metric.name()) {
            @if let Some(g) = goal {
                @let met = recent.iter().filter(|v| g.direction.met(**v, g.target)).count();
                p class="goal-status" {
                    (lang.goal(&target(metric, lang, g), g.direction == Direction::AtLeast, met, recent.len()))
                }
            }
            form method="post" action="/console/goals" class="goal-form" {
                input type="hidden" name="csrf_token" value=(viewer.csrf);
                input type="hidden" name="metric" value=(metric.name());
                label for=(format!("goal-{}", metric.name())) { (lang.t(Text::Goal)) } " "
                select name="direction" aria-label=(lang.t(Text::GoalDirection)) {
                    @let at_most = goal.is_some_and(|g| g.direction == Direction::AtMost);
                    option value="at_least" selected[!at_most] { (lang.t(Text::AtLeast)) }
                    option value="at_most" selected[at_most] { (lang.t(Text::AtMost)) }
                }
                " "
                input id=(format!("goal-{}", metric.name())) name="target" type="number" step="any" size="8"
                    value=(goal.map(|g| g.target.to_string()).unwrap_or_default());
                " " (unit(metric, lang)) " "
                button type="submit" { (lang.t(Text::SaveGoal)) }
            }
        }
    }
}

/// The goal's target as the page shows values.
fn target(metric: Metric, lang: Lang, goal: &Goal) -> String {
    match metric {
        Metric::SleepTime => lang.duration_min(goal.target),
        _ => shown(metric, lang, goal.target),
    }
}

/// The unit the form's number is in (the metric's canonical unit).
fn unit(metric: Metric, lang: Lang) -> &'static str {
    match (metric, lang) {
        (Metric::SleepTime, Lang::Ja) => "分",
        (Metric::SleepTime, Lang::En) => "min",
        (Metric::DailySteps, Lang::Ja) => "歩",
        (Metric::DailySteps, Lang::En) => "steps",
        (Metric::HeartRate, _) => "/min",
        (Metric::SystolicBp, _) => "mmHg",
        (Metric::BodyWeight, _) => "kg",
        (Metric::BloodGlucose, _) => "mg/dL",
        _ => "",
    }
}

#[derive(Deserialize)]
pub(crate) struct GoalForm {
    csrf_token: String,
    metric: String,
    direction: String,
    /// Empty clears the goal.
    target: String,
}

/// `POST /console/goals`.
pub(crate) async fn submit(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    form: Result<Form<GoalForm>, FormRejection>,
) -> Response {
    match save(&api, &headers, form).await {
        Ok(anchor) => Redirect::to(&format!("/console#{anchor}")).into_response(),
        Err(e) => super::error_page(&headers, e),
    }
}

/// Sets or clears the goal; the page section to go back to.
async fn save(
    api: &HttpApi,
    headers: &HeaderMap,
    form: Result<Form<GoalForm>, FormRejection>,
) -> Result<&'static str, ApiError> {
    let Form(form) = form.map_err(|e| bad(format!("form: {}", e.body_text())))?;
    let who = super::form_session(api, headers, &form.csrf_token)?;
    let citizen = match &who.citizen {
        Some(c) if who.roles.iter().any(|r| r == "citizen") => c.clone(),
        _ => return Err(forbidden("goals are a citizen's own; sign in as their app")),
    };
    let metric: Metric = short("metric", &form.metric, MAX_WORD)?
        .parse()
        .ok()
        .filter(|m| GOAL_METRICS.contains(m))
        .ok_or_else(|| bad(format!("no goal can be set for {:?}", form.metric)))?;
    let direction = Direction::parse(short("direction", &form.direction, MAX_WORD)?)
        .ok_or_else(|| bad("direction: at_least or at_most"))?;
    let text = short("target", form.target.trim(), MAX_WORD)?;
    let goal = if text.is_empty() {
        None
    } else {
        let target: f64 = text
            .parse()
            .ok()
            .filter(|t: &f64| t.is_finite())
            .ok_or_else(|| bad(format!("target {text:?} is not a number")))?;
        let (lo, hi) = metric.plausible();
        if !(lo..=hi).contains(&target) {
            return Err(bad(format!(
                "a {} goal of {target} is outside what the metric can be ({lo} to {hi})",
                metric.name()
            )));
        }
        Some(Goal {
            metric,
            direction,
            target,
            set_ms: now_ms(),
        })
    };
    let path = api.data_dir.join("registry.db");
    tokio::task::spawn_blocking(move || {
        let mut registry = ConsentRegistry::open(&path)?;
        match goal {
            Some(goal) => registry.set_goal(&citizen, &goal),
            None => registry.clear_goal(&citizen, metric),
        }
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(if metric == Metric::SleepTime {
        "sleep"
    } else {
        "vitals"
    })
}
