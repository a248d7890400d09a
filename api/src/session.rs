//! Browser sessions. A browser logs in once (`POST /api/v1/session` with `id` and
//! `password`, as JSON or from the form at `/login`) and gets a session cookie: random, 256
//! bits, `HttpOnly`, `SameSite=Strict`, `Path=/`, and `Secure` when the login came over
//! HTTPS. A request with the cookie is its principal's; one that changes something (any
//! method but GET, HEAD and OPTIONS) must also carry the session's CSRF token in
//! `X-CSRF-Token` (or, for the logout form, a `csrf_token` field). A session ends on
//! logout, after `[http] session_idle_s` unused, `session_max_s` after its login, or when its
//! principal is removed or its password changed.
//!
//! Logins go through the same throttling and verification threads as HTTP Basic and MQTT.
//! A state-changing request whose `Origin` is another site is refused whatever its
//! credentials: a browser that remembers Basic credentials sends them anywhere.

use crate::openapi::{ErrorBody, Refusals};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Form, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use kenko_broker::auth::{new_token, Directory, Identity};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::conn::Secure;
use crate::http::{bad, forbidden, log_in, short, ApiError, Authenticated, HttpApi};

/// The session cookie's name.
pub const COOKIE: &str = "kenko_session";
/// The request header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions kept at once; past this, the least recently used one ends.
const MAX_SESSIONS: usize = 100_000;
/// The longest id or password a login may send.
const MAX_CREDENTIAL: usize = 1024;

struct Session {
    identity: Arc<Identity>,
    csrf: String,
    started: Instant,
    used: Instant,
}

/// The sessions in force, in memory: a hub restart logs every browser out.
pub struct SessionBook {
    sessions: Mutex<HashMap<String, Session>>,
    idle: Duration,
    max: Duration,
}

impl SessionBook {
    pub fn new(config: &kenko_config::HttpConfig) -> SessionBook {
        SessionBook {
            sessions: Mutex::new(HashMap::new()),
            idle: Duration::from_secs(config.session_idle_s),
            max: Duration::from_secs(config.session_max_s),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        self.ended(s.started, s.used, now)
    }

    /// Has a session started at `started` and last used at `used` ended by `now`?
    fn ended(&self, started: Instant, used: Instant, now: Instant) -> bool {
        now.duration_since(used) >= self.idle || now.duration_since(started) >= self.max
    }

    /// Starts a session for `identity`; its cookie value and CSRF token.
    fn open(&self, identity: Arc<Identity>) -> (String, String) {
        let now = Instant::now();
        let token = format!("{}{}", new_token(), new_token());
        let csrf = new_token();
        let mut sessions = self.lock();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| !self.expired(s, now));
        }
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        let session = Session {
            identity,
            csrf: csrf.clone(),
            started: now,
            used: now,
        };
        sessions.insert(token.clone(), session);
        (token, csrf)
    }

    /// The principal and CSRF token of the session `token`, marking it used; `None` (and the
    /// session ended) if it expired or its principal is no longer what it logged in as.
    fn resume(&self, token: &str, directory: &Directory) -> Option<(Arc<Identity>, String)> {
        let now = Instant::now();
        let mut sessions = self.lock();
        let session = sessions.get_mut(token)?;
        if self.expired(session, now) || !directory.still_current(&session.identity) {
            sessions.remove(token);
            return None;
        }
        session.used = now;
        Some((session.identity.clone(), session.csrf.clone()))
    }

    fn close(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Sessions in force (expired ones not yet swept count too).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session cookie of a request, if it sent one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    cookie_named(headers, COOKIE)
}

/// The value of the cookie `name` a request sent, if any.
pub(crate) fn cookie_named<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

/// The session of a request and its CSRF token, if it sent the cookie of one in force.
pub(crate) fn session_of(api: &HttpApi, headers: &HeaderMap) -> Option<(Arc<Identity>, String)> {
    cookie(headers).and_then(|t| api.sessions.resume(t, &api.directory))
}

/// Whether a form's `csrf_token` field is the session's.
pub(crate) fn form_token_matches(sent: &str, csrf: &str) -> bool {
    same_secret(sent, csrf)
}

/// Does the method change something (and so need a CSRF token from a session)?
fn changes_something(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses a state-changing request sent from another site's page: its `Origin` (which
/// browsers send with such requests) names another host than the request's `Host`.
pub(crate) fn same_origin(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if !changes_something(method) {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    if origin_host.is_some() && origin_host == host {
        return Ok(());
    }
    Err(forbidden(format!(
        "a request from another site ({}) may not change anything here",
        short("origin", origin, 256).unwrap_or("a long origin")
    )))
}

/// Equal in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The principal of a request that sent the session cookie (and, if it changes something,
/// the session's CSRF token).
pub(crate) fn authenticate(
    api: &HttpApi,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Option<Arc<Identity>>, ApiError> {
    let Some(token) = cookie(headers) else {
        return Ok(None);
    };
    let Some((identity, csrf)) = api.sessions.resume(token, &api.directory) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the session has ended (logged out, unused too long, or its principal changed); log in again",
        ));
    };
    if changes_something(method) {
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !sent.is_some_and(|sent| same_secret(sent, &csrf)) {
            return Err(forbidden(format!(
                "missing or wrong CSRF token: send the session's csrf_token (from POST or GET /api/v1/session) in {CSRF_HEADER}"
            )));
        }
    }
    Ok(Some(identity))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    id: String,
    password: String,
}

/// What a login or `GET /api/v1/session` answers.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SessionView {
    principal: String,
    roles: Vec<String>,
    citizen: Option<String>,
    /// For a session: what state-changing requests send in `X-CSRF-Token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf_token: Option<String>,
    /// For a session: seconds unused after which it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_s: Option<u64>,
}

impl SessionView {
    fn of(who: &Identity, csrf: Option<String>, idle: Option<Duration>) -> SessionView {
        SessionView {
            principal: who.id.clone(),
            roles: who.roles.clone(),
            citizen: who.citizen.clone(),
            csrf_token: csrf,
            idle_timeout_s: idle.map(|d| d.as_secs()),
        }
    }
}

/// The `Set-Cookie` of a new session (or, with `None`, of one that ended).
fn set_cookie(token: Option<&str>, secure: bool, max: Duration) -> HeaderValue {
    let (value, age) = match token {
        Some(t) => (t, max.as_secs()),
        None => ("", 0),
    };
    let secure = if secure { "; Secure" } else { "" };
    let text =
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}{secure}");
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
}

/// The credentials of a login, as JSON or as the login form sends them; and whether it came
/// from the form (answered with a redirect).
async fn credentials(request: Request, api: &HttpApi) -> Result<(Credentials, bool), ApiError> {
    let form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let credentials = if form {
        let Form(c) = Form::<Credentials>::from_request(request, api)
            .await
            .map_err(|e| bad(format!("form: {}", e.body_text())))?;
        c
    } else {
        let json: Result<Json<Credentials>, JsonRejection> = Json::from_request(request, api).await;
        let Json(c) = json.map_err(|e| bad(format!("body: {}", e.body_text())))?;
        c
    };
    short("id", &credentials.id, MAX_CREDENTIAL)?;
    short("password", &credentials.password, MAX_CREDENTIAL)?;
    Ok((credentials, form))
}

/// `POST /api/v1/session`: logs in and starts a session.
#[utoipa::path(post, path = "/api/v1/session", tag = "session", request_body(content((Credentials = "application/json"), (Credentials = "application/x-www-form-urlencoded"))),
    responses((status = 201, description = "Logged in: the session cookie is set", body = SessionView), (status = 303, description = "Logged in from the form: on to /console"), (status = 400, description = "A parameter or the body cannot be used", body = ErrorBody), (status = 401, description = "Bad principal or password", body = ErrorBody), (status = 403, description = "From another site's page", body = ErrorBody), (status = 429, description = "Too many requests or logins; see Retry-After", body = ErrorBody)))]
pub(crate) async fn login(
    State(api): State<HttpApi>,
    request: Request,
) -> Result<Response, ApiError> {
    same_origin(request.method(), request.headers())?;
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .ok_or_else(|| crate::http::internal("no peer address on the request"))?;
    let secure = request.extensions().get::<Secure>().is_some_and(|s| s.0);
    let (credentials, form) = credentials(request, &api).await?;
    let identity = log_in(&api, peer, &credentials.id, &credentials.password).await?;
    let (token, csrf) = api.sessions.open(identity.clone());
    info!(principal = %identity.id, "browser session started");
    let cookie = set_cookie(Some(&token), secure, api.sessions.max);
    let mut response = if form {
        let mut r = StatusCode::SEE_OTHER.into_response();
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/console"));
        r
    } else {
        let view = SessionView::of(&identity, Some(csrf), Some(api.sessions.idle));
        (StatusCode::CREATED, Json(view)).into_response()
    };
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

/// `GET /api/v1/session`: who the request is, and for a session its CSRF token.
#[utoipa::path(get, path = "/api/v1/session", tag = "session", security(("basic" = []), ("session" = [])),
    responses((status = 200, description = "Who is logged in, and the session's CSRF token", body = SessionView), Refusals))]
pub(crate) async fn current(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    headers: HeaderMap,
) -> Json<SessionView> {
    let csrf = session_of(&api, &headers).map(|(_, csrf)| csrf);
    let idle = csrf.as_ref().map(|_| api.sessions.idle);
    Json(SessionView::of(&who, csrf, idle))
}

/// `DELETE /api/v1/session`: logs out (the CSRF token was checked on the way in).
#[utoipa::path(delete, path = "/api/v1/session", tag = "session", security(("basic" = []), ("session" = [])),
    responses((status = 204, description = "Logged out"), Refusals))]
pub(crate) async fn logout(
    State(api): State<HttpApi>,
    Authenticated(who): Authenticated,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = cookie(&headers) {
        api.sessions.close(token);
        info!(principal = %who.id, "browser session ended by logout");
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let cleared = set_cookie(None, false, Duration::ZERO);
    response.headers_mut().insert(header::SET_COOKIE, cleared);
    response
}

#[derive(Deserialize)]
pub(crate) struct LogoutForm {
    csrf_token: String,
}

/// `POST /logout`: the logout form of `/login` (its CSRF token is a form field).
pub(crate) async fn logout_form(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, ApiError> {
    same_origin(&Method::POST, &headers)?;
    let Form(form) = form.map_err(|e| bad(format!("form: {}", e.body_text())))?;
    if let Some(token) = cookie(&headers) {
        if let Some((who, csrf)) = api.sessions.resume(token, &api.directory) {
            if !same_secret(&form.csrf_token, &csrf) {
                return Err(forbidden("wrong CSRF token"));
            }
            api.sessions.close(token);
            info!(principal = %who.id, "browser session ended by logout");
        }
    }
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/login"));
    headers.insert(header::SET_COOKIE, set_cookie(None, false, Duration::ZERO));
    Ok(response)
}

/// `GET /login`: the login form, or who is logged in with a logout button.
pub(crate) async fn login_page(State(api): State<HttpApi>, headers: HeaderMap) -> Response {
    let session = session_of(&api, &headers);
    let body = match session {
        Some((who, csrf)) => format!(
            "<p>Signed in as <strong>{}</strong> ({}).</p>\
             <p><a href=\"/console\">Open the console</a></p>\
             <form method=\"post\" action=\"/logout\">\
             <input type=\"hidden\" name=\"csrf_token\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            escape(&who.id),
            escape(&who.roles.join(", ")),
            escape(&csrf)
        ),
        None => "<form method=\"post\" action=\"/api/v1/session\">\
             <p><label for=\"id\">Principal id</label> \
             <input id=\"id\" name=\"id\" autocomplete=\"username\" required></p>\
             <p><label for=\"password\">Password</label> \
             <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required></p>\
             <p><button type=\"submit\">Sign in</button></p></form>"
            .to_owned(),
    };
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>kenko: sign in</title>\
         </head><body><h1>kenko</h1>{body}</body></html>"
    );
    let mut response = Html(page).into_response();
    let headers = response.headers_mut();
    // The page may not be framed by another site (clickjacking), nor cached.
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; form-action 'self'; frame-ancestors 'none'"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Text made safe to put in HTML, between tags or in a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; kenko_session=abc; kenko_sessionx=no"),
        );
        assert_eq!(cookie(&headers), Some("abc"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("other=kenko_session=x"),
        );
        assert_eq!(cookie(&headers), None);
    }

    #[test]
    fn cross_site_changes_are_refused_same_site_ones_and_reads_are_not() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("hub.example:8443"));
        assert!(
            same_origin(&Method::POST, &headers).is_ok(),
            "no Origin: not a browser"
        );
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://hub.example:8443"),
        );
        assert!(same_origin(&Method::POST, &headers).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(same_origin(&Method::POST, &headers).is_err());
        assert!(same_origin(&Method::DELETE, &headers).is_err());
        assert!(same_origin(&Method::GET, &headers).is_ok());
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&Method::PUT, &headers).is_err());
    }

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape(r#"<b onclick="x('&')">"#),
            "&lt;b onclick=&quot;x(&#39;&amp;&#39;)&quot;&gt;"
        );
    }

    #[test]
    fn cookies_carry_their_flags() {
        let c = set_cookie(Some("tok"), true, Duration::from_secs(60));
        assert_eq!(
            c.to_str().unwrap_or_default(),
            "kenko_session=tok; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
        let plain = set_cookie(None, false, Duration::ZERO);
        assert!(plain.to_str().unwrap_or_default().ends_with("Max-Age=0"));
    }

    #[test]
    fn idle_and_old_sessions_end() {
        let config = kenko_config::HttpConfig {
            session_idle_s: 60,
            session_max_s: 3600,
            ..kenko_config::HttpConfig::default()
        };
        let book = SessionBook::new(&config);
        let start = Instant::now();
        let later = |s: u64| start + Duration::from_secs(s);
        assert!(!book.ended(start, start, later(10)));
        assert!(book.ended(start, start, later(61)), "idle");
        assert!(!book.ended(start, later(3590), later(3599)));
        assert!(
            book.ended(start, later(3590), later(3601)),
            "too old, though used"
        );
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
