//! Live views over Server-Sent Events, and the small script that shows them
//! (`/console/live.js`, the console's only script):
//!
//! - `GET /console/live/device?id=DEVICE` (operators): each stored reading of one device, as
//!   it is stored (event `reading`);
//! - `GET /console/live/alerts` (care services): an event `alert` for each new alert of the
//!   service about a citizen whose care consent to it is in force; the page reloads.
//!
//! A watcher that falls behind skips ahead; a comment line every 15 s keeps proxies from
//! closing a quiet stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query as QueryParams, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use kenko_ingest::live::{LiveEvent, LiveFeed};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::i18n::Lang;
use crate::http::{now_ms, operator_only, rfc3339, ApiError, HttpApi};

#[derive(Deserialize)]
pub(crate) struct DeviceParams {
    id: String,
}

/// `GET /console/live/device?id=DEVICE`. The device's readings are its citizen's
/// identified data: opening the tail is written to the audit log as a read of them.
pub(crate) async fn device(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    params: Result<QueryParams<DeviceParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let viewer = match super::viewer(&api, &headers, Lang::of(&headers)) {
        Ok(v) => v,
        Err(no) => return no.into_response(),
    };
    let answer = async {
        operator_only(&viewer.who, "watch a device's readings")?;
        let QueryParams(p) =
            params.map_err(|e| crate::http::bad(format!("query: {}", e.body_text())))?;
        let feed = api.live.clone().ok_or_else(no_feed)?;
        audit_tail(&api, &viewer.who.id, &p.id).await?;
        let device = p.id;
        Ok::<_, ApiError>(stream(
            feed,
            signed_in(&api, &headers, "operator"),
            move |event| match event {
                LiveEvent::Observations(obs)
                    if obs.first().is_some_and(|o| *o.device == *device) =>
                {
                    obs.iter().map(reading).collect()
                }
                _ => Vec::new(),
            },
        ))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// One stored reading as an SSE event.
fn reading(o: &kenko_ingest::Observation) -> Event {
    let reading = serde_json::json!({
        "time": rfc3339(o.time_ms),
        "metric": o.metric.name(),
        "value": o.value,
        "unit": o.metric.unit(),
        "loinc": o.metric.loinc(),
    });
    Event::default().event("reading").data(reading.to_string())
}

/// Writes to the audit log that `who` opened the live readings of `device` (of a registered
/// device's citizen; an unknown device has none, and nothing of it is stored).
async fn audit_tail(api: &HttpApi, who: &str, device: &str) -> Result<(), ApiError> {
    let Some(citizen) = api
        .directory
        .registry()
        .lookup(device)
        .map(|d| d.entry.citizen.to_string())
    else {
        return Ok(());
    };
    let (registry, who, what) = (
        api.data_dir.join("registry.db"),
        who.to_owned(),
        format!("live readings of {device}"),
    );
    tokio::task::spawn_blocking(move || {
        crate::observations::audit_read_of(&registry, &who, &what, &[&citizen], 0, now_ms())
    })
    .await
    .map_err(crate::http::internal)?
}

/// `GET /console/live/alerts`.
pub(crate) async fn alerts(State(api): State<HttpApi>, headers: HeaderMap) -> Response {
    let viewer = match super::viewer(&api, &headers, Lang::of(&headers)) {
        Ok(v) => v,
        Err(no) => return no.into_response(),
    };
    let answer = (|| {
        crate::alerts::care_only(&viewer.who)?;
        let feed = api.live.clone().ok_or_else(no_feed)?;
        let (service, consents) = (viewer.who.id.clone(), api.consents.clone());
        let still = signed_in(&api, &headers, "care");
        Ok::<_, ApiError>(stream(feed, still, move |event| match event {
            LiveEvent::Alert(a) if a.new.grantee == service => {
                let now = now_ms();
                if crate::alerts::consented(&consents.current(), &service, &a, now) {
                    vec![Event::default().event("alert").data(a.id.to_string())]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }))
    })();
    answer.unwrap_or_else(IntoResponse::into_response)
}

fn no_feed() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this hub has no live feed")
}

/// Whether the request's session is still in force for a principal with `role`: a stream
/// ends once it is not (logout, idle or maximum age, a changed password or roles).
fn signed_in(
    api: &HttpApi,
    headers: &HeaderMap,
    role: &'static str,
) -> impl Fn() -> bool + Send + 'static {
    let (api, headers) = (api.clone(), headers.clone());
    move || {
        crate::session::session_of(&api, &headers)
            .is_some_and(|(who, _)| who.roles.iter().any(|r| r == role))
    }
}

/// How often an open stream checks that its session is still in force.
const RECHECK: Duration = Duration::from_secs(5);

/// The events `pick` makes of each live event, as a Server-Sent Events response, for as
/// long as `still` holds.
fn stream(
    feed: LiveFeed,
    still: impl Fn() -> bool + Send + 'static,
    pick: impl FnMut(LiveEvent) -> Vec<Event> + Send + 'static,
) -> Response {
    let events = events(feed, still, pick);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn events(
    feed: LiveFeed,
    still: impl Fn() -> bool + Send + 'static,
    pick: impl FnMut(LiveEvent) -> Vec<Event> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = (feed.watch(), still, pick, Vec::<Event>::new());
    futures_util::stream::unfold(start, |(mut rx, still, mut pick, mut pending)| async move {
        loop {
            if !still() {
                return None;
            }
            if let Some(event) = pending.pop() {
                return Some((Ok(event), (rx, still, pick, pending)));
            }
            match tokio::time::timeout(RECHECK, rx.recv()).await {
                Err(_) => continue, // quiet: look at the session again
                Ok(Ok(live)) => {
                    pending = pick(live);
                    pending.reverse();
                }
                Ok(Err(RecvError::Lagged(_))) => continue,
                Ok(Err(RecvError::Closed)) => return None,
            }
        }
    })
}

/// `GET /console/live.js`.
pub(crate) async fn script() -> Response {
    super::asset(include_str!("live.js"), "text/javascript; charset=utf-8")
}
