//! The web console, served by the hub itself: server-rendered HTML (maud, which escapes
//! every value it is given), charts as SVG drawn on the server, and one small script for
//! the live views. A browser signs
//! in at `/login` (a session, see `session.rs`) and lands on `/console`, which shows what its
//! principal's role may see. Forms that change something carry the session's CSRF token.
//!
//! Pages: `GET /console` (a citizen's own data: last night's sleep, measurements by day,
//! week or month against their own 4-week baseline, consents to withdraw or grant, who read
//! their data; a care service's open alerts and the citizens in its care with their latest
//! vitals; an operator's devices, connections, log, dead letters, denials and ACL questions;
//! an analyst's aggregates across citizens of the shared store, as a chart, table and CSV),
//! live views over Server-Sent Events (`live.rs`),
//! `POST /console/consents` (a citizen's consent buttons), `POST /console/goals` (their
//! goals), `POST /console/alerts/{id}/ack`
//! (a care service's acknowledge buttons), `POST /console/deadletters/replay` (an
//! operator's replay buttons), `GET /console/export` (all of a citizen's data, CSV or
//! NDJSON), `GET /console/style.css`.
//! `?lang=ja|en` on any page switches the language and keeps the choice in a cookie.

mod alert_form;
mod analyst;
mod care;
mod chart;
mod citizen;
mod consent_form;
mod consents;
mod export;
mod format;
mod goals;
mod i18n;
mod live;
mod operator;
mod replay_form;

use axum::extract::{Query as QueryParams, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use kenko_broker::auth::Identity;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::http::{ApiError, HttpApi};
use i18n::{Lang, Text};

/// The console's routes.
pub(crate) fn routes() -> Router<HttpApi> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(home))
        .route("/console/consents", post(consent_form::submit))
        .route("/console/alerts/:id/ack", post(alert_form::submit))
        .route("/console/deadletters/replay", post(replay_form::submit))
        .route("/console/export", get(export::export))
        .route("/console/goals", post(goals::submit))
        .route("/console/style.css", get(style))
        .route("/console/live.js", get(live::script))
        .route("/console/live/device", get(live::device))
        .route("/console/live/alerts", get(live::alerts))
}

#[derive(Deserialize, Default)]
pub(crate) struct PageParams {
    /// `ja` or `en`: switches the language (kept in a cookie).
    lang: Option<String>,
    /// `day`, `week` (default) or `month`: the span of the measurement charts.
    range: Option<String>,
    /// An operator's dead-letter replay request to show.
    replay: Option<i64>,
    /// An operator's explain form: principal, `publish` or `subscribe`, topic.
    principal: Option<String>,
    action: Option<String>,
    topic: Option<String>,
    /// An operator's live tail of this device's readings.
    tail: Option<String>,
    /// A dead letter an operator opened.
    letter: Option<i64>,
    /// An analyst's aggregate: metric, `agg`, `every` (1h or 1d), `from`.
    metric: Option<String>,
    agg: Option<String>,
    every: Option<String>,
    from: Option<String>,
}

/// A signed-in browser: who, the session's CSRF token, and the page's language.
pub(crate) struct Viewer {
    who: std::sync::Arc<Identity>,
    csrf: String,
    lang: Lang,
}

impl Viewer {
    fn has(&self, role: &str) -> bool {
        self.who.roles.iter().any(|r| r == role)
    }

    /// The page's title: what the viewer's role sees here.
    fn title(&self) -> Text {
        if self.who.citizen.is_some() && self.has("citizen") {
            Text::Console
        } else if self.has("care") {
            Text::CareTitle
        } else if self.has("analyst") {
            Text::AnalystTitle
        } else if self.has("operator") {
            Text::OperatorTitle
        } else {
            Text::ConsoleTitle
        }
    }
}

/// Why a console request has no viewer: no session (sign in first), or over its limit.
enum NoViewer {
    SignIn,
    Refused(ApiError),
}

impl IntoResponse for NoViewer {
    fn into_response(self) -> Response {
        match self {
            NoViewer::SignIn => Redirect::to("/login").into_response(),
            NoViewer::Refused(e) => e.into_response(),
        }
    }
}

/// The session of a console request, within its principal's request limit.
fn viewer(api: &HttpApi, headers: &HeaderMap, lang: Lang) -> Result<Viewer, NoViewer> {
    let Some((who, csrf)) = crate::session::session_of(api, headers) else {
        return Err(NoViewer::SignIn);
    };
    api.within_limits(&who.id).map_err(NoViewer::Refused)?;
    Ok(Viewer { who, csrf, lang })
}

/// `GET /console`: the page of the signed-in principal's role.
async fn home(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    params: Result<QueryParams<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = params.map(|QueryParams(p)| p).unwrap_or_default();
    let chosen = params.lang.as_deref().and_then(Lang::parse);
    let lang = chosen.unwrap_or_else(|| Lang::of(&headers));
    let viewer = match viewer(&api, &headers, lang) {
        Ok(v) => v,
        Err(NoViewer::Refused(e)) => return error_page(&headers, e),
        Err(no) => return no.into_response(),
    };
    let page = match viewer.who.citizen.clone() {
        Some(citizen) if viewer.has("citizen") => {
            let range = citizen::Range::parse(params.range.as_deref());
            citizen::page(&api, &viewer, &citizen, range).await
        }
        _ if viewer.has("care") => care::page(&api, &viewer).await,
        _ if viewer.has("analyst") => analyst::page(&api, &viewer, &params).await,
        _ if viewer.has("operator") => operator::page(&api, &viewer, &params).await,
        _ => Ok(html! { p { (lang.t(Text::NoPagesYet)) } }),
    };
    let body = match page {
        Ok(markup) => markup,
        Err(e) => return error_page(&headers, e),
    };
    let mut response = respond(&viewer, body);
    if let Some(lang) = chosen {
        response
            .headers_mut()
            .append(header::SET_COOKIE, lang.cookie());
    }
    response
}

/// The principal of a console form that changes something: a session in force, within
/// its request limit, from this site, with the session's CSRF token in the form, while the
/// store files are sound.
pub(crate) fn form_session(
    api: &HttpApi,
    headers: &HeaderMap,
    csrf_token: &str,
) -> Result<std::sync::Arc<Identity>, ApiError> {
    crate::session::same_origin(&axum::http::Method::POST, headers)?;
    let Some((who, csrf)) = crate::session::session_of(api, headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the session has ended; sign in again at /login",
        ));
    };
    api.within_limits(&who.id)?;
    // Every form writes registry.db, alerts.db or deadletter.db: never into a file that
    // replaced the real one.
    crate::http::ensure_sound_stores(api)?;
    if !crate::session::form_token_matches(csrf_token, &csrf) {
        return Err(crate::http::forbidden(
            "wrong CSRF token: reload the page and try again",
        ));
    }
    Ok(who)
}

/// A whole page: the header (who is signed in, sign out, the other language) around `body`.
fn shell(viewer: &Viewer, body: Markup) -> Markup {
    let lang = viewer.lang;
    let other = lang.other();
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "kenko: " (lang.t(viewer.title())) }
                link rel="stylesheet" href="/console/style.css";
                script src="/console/live.js" defer {}
            }
            body {
                header {
                    h1 { "kenko " span class="sub" { (lang.t(viewer.title())) } }
                    nav {
                        span { (lang.t(Text::SignedInAs)) " " strong { (viewer.who.id) } }
                        a href=(format!("?lang={}", other.code())) lang=(other.code()) { (other.name()) }
                        form method="post" action="/logout" class="inline" {
                            input type="hidden" name="csrf_token" value=(viewer.csrf);
                            button type="submit" { (lang.t(Text::SignOut)) }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The page as a response, with the headers every console page carries: nothing but this
/// site's stylesheet may load, forms post only here, no framing, no caching.
fn respond(viewer: &Viewer, body: Markup) -> Response {
    let mut response = Html(shell(viewer, body).into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /console/style.css`.
async fn style() -> Response {
    asset(include_str!("style.css"), "text/css; charset=utf-8")
}

/// An error as a page for people (the API's status, `Retry-After` and message; for a
/// failure inside the hub, the id its log holds the details under), with a way back.
pub(crate) fn error_page(headers: &HeaderMap, e: ApiError) -> Response {
    let lang = Lang::of(headers);
    let (message, error_id) = (e.message().to_owned(), e.error_id().map(str::to_owned));
    let mut response = e.into_response();
    let status = response.status();
    let page = html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "kenko: " (status.as_u16()) }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                main {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p class="bad" role="alert" { (message) }
                    @if let Some(id) = error_id { p { (lang.t(Text::ErrorId)) " " code { (id) } } }
                    p { a href="/console" { (lang.t(Text::BackToConsole)) } }
                }
            }
        }
    };
    *response.body_mut() = axum::body::Body::from(page.into_string());
    let h = response.headers_mut();
    // A browser must not answer with a Basic credentials dialog: the console signs in at
    // /login.
    h.remove(header::WWW_AUTHENTICATE);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; frame-ancestors 'none'"),
    );
    h.remove(header::CONTENT_LENGTH);
    response
}

/// A table's header row: one column heading per text (`Text::Blank` over a column of
/// buttons).
pub(crate) fn head(lang: Lang, columns: &[Text]) -> Markup {
    html! {
        thead { tr { @for c in columns { th scope="col" { (lang.t(*c)) } } } }
    }
}

/// A file served from the binary, cached by browsers for an hour.
pub(crate) fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn an_error_is_a_page_with_its_status_and_message_as_text() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("en"));
        let response = error_page(
            &headers,
            crate::http::bad("target <b>9</b> is not a number"),
        );
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("text/html; charset=utf-8")
        );
        let page = body(response).await;
        assert!(page.contains("400 Bad Request"), "{page}");
        assert!(
            page.contains("target &lt;b&gt;9&lt;/b&gt; is not a number"),
            "{page}"
        );
        assert!(page.contains("Back to the console"), "{page}");

        let unauthorized = ApiError::new(StatusCode::UNAUTHORIZED, "the session has ended");
        let response = error_page(&headers, unauthorized);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response.headers().get(header::WWW_AUTHENTICATE).is_none(),
            "no Basic dialog in a browser"
        );
    }
}
