//! The hooks an external MQTT broker calls to authenticate its clients and authorize their
//! topics with the hub's principals, ACL rules and consent book: `POST /api/v1/mqtt/auth`,
//! `/acl` and `/superuser`, in the shapes EMQX's HTTP authentication and authorization and
//! mosquitto-go-auth's HTTP backend send and read (docs/scale-out.md).
//!
//! A request's fields come as JSON or as a form (go-auth's `http_params_mode`), under the
//! names those brokers use; numbers and flags may be strings (EMQX's templates make them
//! so). The answer suits both: 200 `{"ok": true, "result": "allow"}` to allow; a denial
//! is `{"ok": false, "result": "deny", "error": why}` with 403 (go-auth's status and json
//! modes read any status but 200 as a refusal) or, with `?format=emqx`, with 200 (EMQX
//! reads a refusal status as "ignore" and asks its next source).

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use std::sync::Arc;

use kenko_broker::acl::{
    observation_topic, Acl, ConsentCheck, Decision, Principal, Reason, Request,
};
use kenko_broker::authz::{Authorizer, ConsentsFor};
use kenko_broker::login::{Listener, Login};
use kenko_config::acl::{Action, Effect};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::http::{now_ms, HttpApi};

/// The longest field a hook request may carry (MQTT's own limit on strings).
const MAX_FIELD: usize = 65_535;

/// How the calling broker reads a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Format {
    /// mosquitto-go-auth: any status but 200 refuses.
    #[default]
    GoAuth,
    /// EMQX: 200 with `"result": "deny"` refuses; another status means "ignore".
    Emqx,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HookQuery {
    /// The hooks' secret, for brokers that cannot send an `Authorization: Bearer` header.
    token: Option<String>,
    /// `go-auth` (default) or `emqx`: how a refusal is answered. Read after the secret is
    /// checked, so that a stranger learns nothing from a bad value.
    #[param(inline, value_type = Option<Format>)]
    format: Option<String>,
}

/// The answer of every hook.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Verdict {
    /// mosquitto-go-auth's json mode reads this.
    ok: bool,
    /// EMQX reads this: "allow" or "deny".
    result: &'static str,
    /// kenko has no superusers: every client is checked against the rules.
    is_superuser: bool,
    /// Why the request was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A hook's decision, answered in the caller's format.
struct Answer {
    format: Format,
    refused: Option<(StatusCode, String)>,
}

impl Answer {
    fn allow(format: Format) -> Answer {
        Answer {
            format,
            refused: None,
        }
    }

    fn deny(format: Format, why: impl Into<String>) -> Answer {
        Answer {
            format,
            refused: Some((StatusCode::FORBIDDEN, why.into())),
        }
    }

    /// A request the hook cannot decide on (a missing field): refused all the same.
    fn unusable(format: Format, why: impl Into<String>) -> Answer {
        Answer {
            format,
            refused: Some((StatusCode::BAD_REQUEST, why.into())),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let (status, error) = match (self.refused, self.format) {
            (None, _) => (StatusCode::OK, None),
            (Some((_, why)), Format::Emqx) => (StatusCode::OK, Some(why)),
            (Some((status, why)), Format::GoAuth) => (status, Some(why)),
        };
        let verdict = Verdict {
            ok: error.is_none(),
            result: if error.is_none() { "allow" } else { "deny" },
            is_superuser: false,
            error,
        };
        (status, Json(verdict)).into_response()
    }
}

/// The answers every hook may give besides its own, declared once for the document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum HookRefusals {
    #[response(
        status = 400,
        description = "A field or parameter is missing or cannot be used: refused"
    )]
    Unusable(Verdict),
    #[response(status = 401, description = "No or wrong secret for the hooks")]
    NoSecret(crate::openapi::ErrorBody),
    #[response(status = 404, description = "The hooks are off ([http.mqtt_hooks])")]
    Off(crate::openapi::ErrorBody),
}

/// A refusal of the caller itself (hooks off, no or wrong secret), in the API's usual shape.
fn caller_refused(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Whether the caller proved the hooks' secret; a response refusing it if not.
fn check_caller(
    api: &HttpApi,
    headers: &HeaderMap,
    query: &HookQuery,
) -> Result<(), Box<Response>> {
    let Some(expected) = api.hooks_digest else {
        return Err(Box::new(caller_refused(
            StatusCode::NOT_FOUND,
            "this hub serves no MQTT hooks; set [http.mqtt_hooks] token_sha256 to turn them on",
        )));
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(secret) = bearer.or(query.token.as_deref()) else {
        return Err(Box::new(caller_refused(
            StatusCode::UNAUTHORIZED,
            "the MQTT hooks need their secret: Authorization: Bearer SECRET, or ?token=SECRET",
        )));
    };
    let given: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    if given != expected {
        return Err(Box::new(caller_refused(
            StatusCode::UNAUTHORIZED,
            "wrong secret for the MQTT hooks",
        )));
    }
    Ok(())
}

/// A hook request's fields, from a JSON object or a form, by the names brokers use.
struct Fields(Map<String, Value>);

impl Fields {
    fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Fields, String> {
        let form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if form {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|e| format!("the form cannot be read: {e}"))?;
            return Ok(Fields(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            ));
        }
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Ok(Fields(map)),
            Ok(_) => Err("the body must be a JSON object (or a form)".to_owned()),
            Err(e) => Err(format!("the body is not JSON: {e}")),
        }
    }

    /// The text of the first of `names` present; numbers are taken as their text.
    fn text(&self, names: &[&str]) -> Result<Option<String>, String> {
        for name in names {
            let text = match self.0.get(*name) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(_) => return Err(format!("{name} must be a string")),
            };
            if text.len() > MAX_FIELD {
                return Err(format!(
                    "{name} is {} bytes long; at most {MAX_FIELD} are allowed",
                    text.len()
                ));
            }
            return Ok(Some(text));
        }
        Ok(None)
    }

    fn required(&self, names: &[&str]) -> Result<String, String> {
        self.text(names)?
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("{} is missing", names[0]))
    }

    /// A small number (acc, qos) given as a number or as text.
    fn number(&self, name: &str) -> Result<Option<u8>, String> {
        self.text(&[name])?
            .map(|t| {
                t.trim()
                    .parse()
                    .map_err(|_| format!("{name} {t:?} is not a small whole number"))
            })
            .transpose()
    }

    fn flag(&self, name: &str) -> Result<Option<bool>, String> {
        self.text(&[name])?
            .map(|t| match t.trim() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                other => Err(format!("{name} {other:?} is not true or false")),
            })
            .transpose()
    }
}

const USERNAME: &[&str] = &["username"];
const CLIENT_ID: &[&str] = &["clientid", "client_id"];

/// The format a proven caller asked for, or the answer refusing the request.
fn admit(
    api: &HttpApi,
    query: Result<Query<HookQuery>, QueryRejection>,
    headers: &HeaderMap,
) -> Result<Format, Box<Response>> {
    let query = match query {
        Ok(Query(query)) => query,
        Err(e) => {
            // Unreadable: only a Bearer header can prove the caller, and is checked first.
            let unread = HookQuery {
                token: None,
                format: None,
            };
            check_caller(api, headers, &unread)?;
            let answer = Answer::unusable(Format::GoAuth, e.body_text());
            return Err(Box::new(answer.into_response()));
        }
    };
    check_caller(api, headers, &query)?;
    match query.format.as_deref() {
        None | Some("go-auth") => Ok(Format::GoAuth),
        Some("emqx") => Ok(Format::Emqx),
        Some(other) => {
            let why = format!("format {other:?}: use go-auth (the default) or emqx");
            Err(Box::new(
                Answer::unusable(Format::GoAuth, why).into_response(),
            ))
        }
    }
}

/// As [`admit`], with the request's fields.
fn admit_fields(
    api: &HttpApi,
    query: Result<Query<HookQuery>, QueryRejection>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Format, Fields), Box<Response>> {
    let format = admit(api, query, headers)?;
    Fields::parse(headers, body)
        .map(|fields| (format, fields))
        .map_err(|why| Box::new(Answer::unusable(format, why).into_response()))
}

/// The principal named by `username`, if it may connect with `client_id`.
fn principal_of(
    api: &HttpApi,
    username: &str,
    client_id: &str,
) -> Result<std::sync::Arc<kenko_broker::auth::Identity>, String> {
    kenko_config::check_identifier(username).map_err(|why| format!("username {why}"))?;
    kenko_config::check_client_id(client_id).map_err(|why| format!("clientid {why}"))?;
    let identity = api
        .directory
        .get(username)
        .ok_or_else(|| format!("{username} is no principal this hub knows"))?;
    match api.directory.client_id_refusal(&identity, client_id) {
        Some(why) => Err(why),
        None => Ok(identity),
    }
}

#[utoipa::path(post, path = "/api/v1/mqtt/auth", tag = "mqtt hooks", params(HookQuery),
    request_body(content = AuthBody, content_type = "application/json",
        description = "As EMQX and mosquitto-go-auth send it; a form (application/x-www-form-urlencoded) with the same fields is read too"),
    security(("hooks" = [])),
    responses((status = 200, description = "Allowed; with format=emqx also refused (result deny)", body = Verdict),
        (status = 403, description = "Refused: bad username or password, or a client id that is not the principal's", body = Verdict),
        HookRefusals))]
/// Authenticates an external broker's client: the principal's password, checked within
/// the login limits (of the client's address when the broker sends it), and its client id.
pub(crate) async fn auth(
    State(api): State<HttpApi>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    query: Result<Query<HookQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match admit_fields(&api, query, &headers, &body) {
        Ok((format, fields)) => authenticate(&api, caller, format, &fields)
            .await
            .into_response(),
        Err(refused) => *refused,
    }
}

/// The fields of `POST /api/v1/mqtt/auth`.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct AuthBody {
    username: String,
    password: String,
    /// Also read as `client_id`.
    clientid: String,
    /// The client's address (EMQX's `${peerhost}`; also read as `ip`): logins are limited
    /// per address when it is known, per principal always.
    peerhost: Option<String>,
}

/// Checks a relayed login: limited per client address when the broker at `caller` sends
/// it, else per broker (`auth.login.relay_*`), and per principal either way.
async fn authenticate(
    api: &HttpApi,
    caller: SocketAddr,
    format: Format,
    fields: &Fields,
) -> Answer {
    let read = || -> Result<(String, String, String, Option<IpAddr>), String> {
        let source = fields
            .text(&["peerhost", "ip"])?
            .map(|t| {
                t.parse::<IpAddr>()
                    .map_err(|_| format!("peerhost {t:?} is not an IP address"))
            })
            .transpose()?;
        Ok((
            fields.required(USERNAME)?,
            fields.text(&["password"])?.unwrap_or_default(),
            fields.required(CLIENT_ID)?,
            source,
        ))
    };
    let (username, password, client_id, source) = match read() {
        Ok(read) => read,
        Err(why) => return Answer::unusable(format, why),
    };
    if let Err(why) = kenko_config::check_identifier(&username) {
        return Answer::deny(format, format!("username {why}"));
    }
    let verdict = match source {
        Some(ip) => {
            api.login
                .login(
                    Listener::Mqtt,
                    ip,
                    &api.directory,
                    &username,
                    password.as_bytes(),
                )
                .await
        }
        None => {
            api.login
                .login_relayed(
                    Listener::Mqtt,
                    caller.ip(),
                    &api.directory,
                    &username,
                    password.as_bytes(),
                )
                .await
        }
    };
    let identity = match verdict {
        Login::Accepted(identity) => identity,
        Login::Refused => return Answer::deny(format, "bad username or password"),
        Login::Throttled(wait) => {
            return Answer::deny(
                format,
                format!(
                    "too many login attempts; try again in {} s",
                    wait.as_secs().max(1)
                ),
            )
        }
        Login::Busy => {
            return Answer::deny(
                format,
                "too many logins are being verified; try again shortly",
            )
        }
    };
    match principal_of(api, &identity.id, &client_id) {
        Ok(_) => Answer::allow(format),
        Err(why) => Answer::deny(format, why),
    }
}

/// The fields of `POST /api/v1/mqtt/acl`.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct AclBody {
    username: String,
    /// Also read as `client_id`.
    clientid: String,
    topic: String,
    /// mosquitto-go-auth: 1 read (a delivery), 2 write (publish), 3 both, 4 subscribe.
    acc: Option<u8>,
    /// EMQX: "publish" or "subscribe" (with `acc` absent).
    action: Option<String>,
    /// The QoS of the publish or subscription, when the broker sends it (else 0).
    qos: Option<u8>,
    /// Whether the publish is retained, when the broker sends it (else false).
    retain: Option<bool>,
}

#[utoipa::path(post, path = "/api/v1/mqtt/acl", tag = "mqtt hooks", params(HookQuery),
    request_body(content = AclBody, content_type = "application/json",
        description = "As EMQX (action) and mosquitto-go-auth (acc) send it; a form with the same fields is read too"),
    security(("hooks" = [])),
    responses((status = 200, description = "Allowed; with format=emqx also refused (result deny)", body = Verdict),
        (status = 403, description = "Refused by the rules, for want of consent, or for a client id that is not the principal's", body = Verdict),
        HookRefusals))]
/// Authorizes a publish, a subscription or a delivery of an external broker's client with
/// the rules in force and the consents in force now, as the embedded broker would.
pub(crate) async fn acl(
    State(api): State<HttpApi>,
    query: Result<Query<HookQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match admit_fields(&api, query, &headers, &body) {
        Ok((format, fields)) => authorize(&api, format, &fields).into_response(),
        Err(refused) => *refused,
    }
}

/// What an ACL hook asks, in the embedded broker's terms.
enum Asked {
    /// go-auth's acc: each request is decided; all must be allowed.
    Checks(Vec<Check>),
    /// EMQX's subscribe: checked once, when made, so a rule that needs consent allows only
    /// one citizen's metric with the consent in force now.
    SubscribeOnce { qos: u8 },
}

#[derive(Clone, Copy)]
enum Check {
    Deliver,
    Publish { qos: u8, retain: bool },
    Subscribe { qos: u8 },
}

fn asked(fields: &Fields) -> Result<Asked, String> {
    let qos = fields.number("qos")?.unwrap_or(0);
    let retain = fields.flag("retain")?.unwrap_or(false);
    let publish = Check::Publish { qos, retain };
    if let Some(acc) = fields.number("acc")? {
        return match acc {
            1 => Ok(Asked::Checks(vec![Check::Deliver])),
            2 => Ok(Asked::Checks(vec![publish])),
            3 => Ok(Asked::Checks(vec![Check::Deliver, publish])),
            4 => Ok(Asked::Checks(vec![Check::Subscribe { qos }])),
            other => Err(format!(
                "acc {other} is not 1 (read), 2 (write), 3 (read and write) or 4 (subscribe)"
            )),
        };
    }
    match fields.text(&["action"])?.as_deref() {
        Some("publish" | "pub") => Ok(Asked::Checks(vec![publish])),
        Some("subscribe" | "sub") => Ok(Asked::SubscribeOnce { qos }),
        Some(other) => Err(format!("action {other:?} is not publish or subscribe")),
        None => Err("acc (mosquitto-go-auth) or action (EMQX) is missing".to_owned()),
    }
}

fn authorize(api: &HttpApi, format: Format, fields: &Fields) -> Answer {
    let read = || -> Result<(String, String, String, Asked), String> {
        Ok((
            fields.required(USERNAME)?,
            fields.required(CLIENT_ID)?,
            fields.required(&["topic"])?,
            asked(fields)?,
        ))
    };
    let (username, client_id, topic, asked) = match read() {
        Ok(read) => read,
        Err(why) => return Answer::unusable(format, why),
    };
    let Some(authorizer) = &api.authorizer else {
        return Answer::deny(format, "this hub has no ACL rules to decide with");
    };
    let identity = match principal_of(api, &username, &client_id) {
        Ok(identity) => identity,
        Err(why) => return Answer::deny(format, why),
    };
    let consents = api.consents.current();
    let judge = Judge {
        authorizer,
        acl: authorizer.current(),
        principal: identity.principal(&client_id, Some(&username)),
        consents: ConsentsFor {
            consents: &consents,
            event_ms: Some(now_ms()),
        },
    };
    let verdict = match asked {
        Asked::Checks(checks) => checks.into_iter().try_for_each(|check| {
            let request = match check {
                Check::Deliver => Request::Deliver { topic: &topic },
                Check::Publish { qos, retain } => Request::Publish {
                    topic: &topic,
                    qos,
                    retain,
                },
                Check::Subscribe { qos } => Request::Subscribe {
                    filter: &topic,
                    qos,
                },
            };
            judge.decide(&request)
        }),
        Asked::SubscribeOnce { qos } => judge.subscribe_once(&topic, qos),
    };
    match verdict {
        Ok(()) => Answer::allow(format),
        Err(why) => Answer::deny(format, why),
    }
}

/// One hook request's principal, with the rules and consents in force now.
struct Judge<'a> {
    authorizer: &'a Authorizer,
    acl: Arc<Acl>,
    principal: Principal<'a>,
    consents: ConsentsFor<'a>,
}

impl Judge<'_> {
    /// Decides `request`, counting and logging a denial as the embedded broker does.
    fn decide(&self, request: &Request<'_>) -> Result<(), String> {
        let decision = self
            .acl
            .decide_with(&self.principal, request, &self.consents);
        self.settle(request, decision)
    }

    fn settle(&self, request: &Request<'_>, decision: Decision) -> Result<(), String> {
        if decision.allowed {
            return Ok(());
        }
        self.authorizer
            .record_denial(&self.acl, &self.principal, request, &decision);
        Err(refusal(&decision.reason))
    }

    /// The first of this principal's rules before `allowing` that could stop some message
    /// of a wildcard filter `allowing` allows: a deny or consent rule on subscriptions.
    /// The embedded broker checks each delivery against those; EMQX never does.
    /// Conservative: any such earlier rule counts, overlapping or not.
    fn shadowing(&self, allowing: usize) -> Option<(usize, Reason)> {
        self.acl
            .rules_for(&self.principal)
            .into_iter()
            .take_while(|&i| i < allowing)
            .filter_map(|i| Some((i, self.acl.rules().get(i)?)))
            .filter(|(_, rule)| rule.action != Action::Publish)
            .find_map(|(i, rule)| match (rule.effect, rule.consent) {
                (Effect::Deny, _) => Some((i, Reason::Rule)),
                (Effect::Allow, Some(need)) => Some((i, Reason::NoConsent(need))),
                (Effect::Allow, None) => None,
            })
    }

    /// A subscription checked only when it is made (EMQX): a wildcard filter only where no
    /// rule could stop one of its messages, and under a rule that needs consent only one
    /// citizen's metric, with that consent in force now.
    fn subscribe_once(&self, filter: &str, qos: u8) -> Result<(), String> {
        let request = Request::Subscribe { filter, qos };
        let decision = self
            .acl
            .decide_with(&self.principal, &request, &self.consents);
        let (true, Some(allowing)) = (decision.allowed, decision.rule) else {
            return self.settle(&request, decision);
        };
        let need = self.acl.rules().get(allowing).and_then(|rule| rule.consent);
        let wildcard = filter.split('/').any(|level| level == "+" || level == "#");
        let stopped_by = match (wildcard, need) {
            (false, _) => None,
            (true, Some(need)) => Some((allowing, Reason::NoConsent(need))),
            (true, None) => self.shadowing(allowing),
        };
        if let Some((rule, reason)) = stopped_by {
            let denied = Decision {
                allowed: false,
                rule: Some(rule),
                reason,
            };
            let why = "a subscription through EMQX is checked only when it is made (never per message), and a deny or consent rule could stop some messages of this wildcard filter: subscribe to one topic (under consent: citizens/CITIZEN/observations/METRIC)";
            return self.settle(&request, denied).map_err(|_| why.to_owned());
        }
        let Some(need) = need else {
            return Ok(());
        };
        let consented = observation_topic(filter).is_some_and(|(citizen, metric)| {
            self.consents
                .allows(citizen, metric, self.principal.id, need)
        });
        if consented {
            return Ok(());
        }
        let denied = Decision {
            allowed: false,
            reason: Reason::NoConsent(need),
            ..decision
        };
        self.settle(&request, denied)
    }
}

/// Why the rules refused, for the broker's log.
fn refusal(reason: &Reason) -> String {
    match reason {
        Reason::Rule => "a deny rule matches".to_owned(),
        Reason::QosAbove(max) => format!("the rule allows QoS {max} at most"),
        Reason::RetainNotAllowed => "the rule forbids retained publishes".to_owned(),
        Reason::NoConsent(need) => {
            format!("the citizen's {need:?} consent is not in force").to_lowercase()
        }
        Reason::NoRule => "no rule allows it".to_owned(),
        Reason::PrincipalChanged => "the principal changed".to_owned(),
    }
}

#[utoipa::path(post, path = "/api/v1/mqtt/superuser", tag = "mqtt hooks", params(HookQuery),
    security(("hooks" = [])),
    responses((status = 200, description = "With format=emqx: refused (result deny)", body = Verdict),
        (status = 403, description = "Refused: kenko has no superusers", body = Verdict),
        HookRefusals))]
/// mosquitto-go-auth asks whether a client is a superuser before the ACL: never, here.
pub(crate) async fn superuser(
    State(api): State<HttpApi>,
    query: Result<Query<HookQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    match admit(&api, query, &headers) {
        Ok(format) => Answer::deny(
            format,
            "kenko has no superusers: every client is checked against the ACL rules",
        )
        .into_response(),
        Err(refused) => *refused,
    }
}
