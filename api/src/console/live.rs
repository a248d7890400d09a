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
use kenko_ingest::consent::Purpose;
use kenko_ingest::live::{LiveEvent, LiveFeed};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::i18n::Lang;
use crate::http::{now_ms, operator_only, rfc3339, ApiError, HttpApi};

#[derive(Deserialize)]
pub(crate) struct DeviceParams {
    id: String,
}

/// `GET /console/live/device?id=DEVICE`.
pub(crate) async fn device(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    params: Result<QueryParams<DeviceParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let viewer = match super::viewer(&api, &headers, Lang::of(&headers)) {
        Ok(v) => v,
        Err(no) => return no.into_response(),
    };
    let answer = (|| {
        operator_only(&viewer.who, "watch a device's readings")?;
        let QueryParams(p) =
            params.map_err(|e| crate::http::bad(format!("query: {}", e.body_text())))?;
        let feed = api.live.clone().ok_or_else(no_feed)?;
        Ok::<_, ApiError>(stream(feed, move |event| match event {
            LiveEvent::Observations(obs) if obs.first().is_some_and(|o| *o.device == *p.id) => obs
                .iter()
                .map(|o| {
                    let reading = serde_json::json!({
                        "time": rfc3339(o.time_ms),
                        "metric": o.metric.name(),
                        "value": o.value,
                        "unit": o.metric.unit(),
                    });
                    Event::default().event("reading").data(reading.to_string())
                })
                .collect(),
            _ => Vec::new(),
        }))
    })();
    answer.unwrap_or_else(IntoResponse::into_response)
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
        Ok::<_, ApiError>(stream(feed, move |event| match event {
            LiveEvent::Alert(a) if a.new.grantee == service => {
                let n = &a.new;
                let current = consents.current();
                if current.permits(
                    &n.citizen,
                    &service,
                    Purpose::Care,
                    &n.metric,
                    n.event_ms,
                    now_ms(),
                ) {
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

/// The events `pick` makes of each live event, as a Server-Sent Events response.
fn stream(feed: LiveFeed, pick: impl FnMut(LiveEvent) -> Vec<Event> + Send + 'static) -> Response {
    let events = events(feed, pick);
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
    pick: impl FnMut(LiveEvent) -> Vec<Event> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = (feed.watch(), pick, Vec::<Event>::new());
    futures_util::stream::unfold(start, |(mut rx, mut pick, mut pending)| async move {
        loop {
            if let Some(event) = pending.pop() {
                return Some((Ok(event), (rx, pick, pending)));
            }
            match rx.recv().await {
                Ok(live) => {
                    pending = pick(live);
                    pending.reverse();
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

/// `GET /console/live.js`.
pub(crate) async fn script() -> Response {
    super::asset(include_str!("live.js"), "text/javascript; charset=utf-8")
}
