//! The API describes itself truthfully: `GET /api/v1/openapi.json` is an OpenAPI 3.1
//! document, every operation in it is walked with real requests as principals of every role
//! (and every operation the test walks is in it), and every answer's status is one the
//! document declares for the operation, its content type one it declares for that status,
//! and a JSON body matches the declared schema, with no undocumented field. The walk also
//! checks that each role is refused (403) another citizen's or another role's data.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::{http_exchange, http_request, Hub};
use serde_json::{json, Value};

fn config() -> String {
    let app = common::principal("app-001", &["citizen"])
        .replace("password_hash", "citizen = \"citizen-001\"\npassword_hash");
    format!(
        "{}{}{}{}{app}[[alerts]]\nname = \"any-heart-rate\"\nmetric = \"heart_rate\"\nabove = 0.0\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\nrequests_per_s = 0\n\n[auth.login]\n\
         source_burst = 100000\nsource_per_minute = 100000\nprincipal_burst = 100000\n\
         principal_per_minute = 100000\n\n[http.mqtt_hooks]\ntoken_sha256 = \"{HOOKS_DIGEST}\"\n",
        common::config_with_devices(2),
        common::principal("st-luke", &["care"]),
        common::principal("analyst-1", &["analyst"]),
        common::principal("worker-1", &["worker"]),
    )
}

/// The MQTT hooks' secret is `hooks`; this is its SHA-256.
const HOOKS_DIGEST: &str = "a9fa9fda98d7712cf2c04ce6206e406c554572bedfeac6e441f13410980f7f82";

/// A request of an external broker to an MQTT hook (no principal: the secret is in the URI).
fn hook(operation: &'static str, query: &str, body: Value, status: u16) -> Case {
    let path = operation.trim_start_matches("POST ");
    Case {
        operation,
        who: None,
        path: format!("{path}?{query}"),
        body: Some(body),
        status,
    }
}

/// The walk's requests to the MQTT hooks.
fn hook_cases() -> Vec<Case> {
    let auth = "POST /api/v1/mqtt/auth";
    let acl = "POST /api/v1/mqtt/acl";
    let login = |password: &str| json!({"username": "bed-001", "password": password, "clientid": "bed-001"});
    let publish = |topic: &str| json!({"username": "bed-001", "clientid": "bed-001", "topic": topic, "acc": 2});
    vec![
        hook(
            auth,
            "token=hooks",
            login(&common::password("bed-001")),
            200,
        ),
        hook(auth, "token=hooks", login("wrong"), 403),
        hook(auth, "token=wrong", login("wrong"), 401),
        hook(auth, "token=hooks", json!({"username": "bed-001"}), 400),
        hook(
            acl,
            "token=hooks",
            publish("devices/bed-001/telemetry"),
            200,
        ),
        hook(
            acl,
            "token=hooks",
            publish("devices/bed-002/telemetry"),
            403,
        ),
        hook(
            acl,
            "token=hooks&format=emqx",
            publish("devices/bed-002/telemetry"),
            200,
        ),
        hook(acl, "token=hooks", json!({"topic": "t"}), 400),
        hook(acl, "", publish("devices/bed-001/telemetry"), 401),
        hook(
            "POST /api/v1/mqtt/superuser",
            "token=hooks",
            json!({"username": "operator-1"}),
            403,
        ),
    ]
}

/// One request of the walk: the document's operation it exercises, who sends it, the
/// concrete path and body, and the status it must get.
struct Case {
    operation: &'static str,
    who: Option<&'static str>,
    path: String,
    body: Option<Value>,
    status: u16,
}

fn case(
    operation: &'static str,
    who: &'static str,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Case {
    Case {
        operation,
        who: Some(who),
        path: path.to_owned(),
        body,
        status,
    }
}

fn cases() -> Vec<Case> {
    let obs = "GET /api/v1/observations";
    let heart = "/api/v1/observations?metric=heart_rate";
    let consents = "GET /api/v1/consents";
    let record = "POST /api/v1/consents";
    let research = |citizen: &str| json!({"citizen": citizen, "purpose": "research"});
    let principals = "GET /api/v1/principals";
    let add = "POST /api/v1/principals";
    let passwd = "PUT /api/v1/principals/{id}/password";
    let remove = "DELETE /api/v1/principals/{id}";
    let new_principal = json!({"id": "nurse-1", "roles": ["care"], "generate_password": true});
    let generate = json!({"generate_password": true});
    let sessions = "GET /api/v1/mqtt/sessions";
    let explain = "GET /api/v1/acl/explain";
    let explain_path = "/api/v1/acl/explain";
    let letters = "GET /api/v1/deadletters";
    let replay = "POST /api/v1/deadletters/replay";
    let replay_status = "GET /api/v1/deadletters/replay/{id}";
    let feed = "GET /api/v1/registry/consents";
    let devices_feed = "GET /api/v1/registry/devices";
    let mut cases = vec![
        // Observations: each role its own part, and 403 for the rest.
        case(obs, "app-001", heart, None, 200),
        case(obs, "app-001", &format!("{heart}&format=csv"), None, 200),
        case(obs, "app-001", &format!("{heart}&format=ndjson"), None, 200),
        case(obs, "app-001", &format!("{heart}&every=1h"), None, 200),
        case(
            obs,
            "app-001",
            &format!("{heart}&citizen=citizen-002"),
            None,
            403,
        ),
        case(obs, "app-001", &format!("{heart}&store=shared"), None, 403),
        case(
            obs,
            "st-luke",
            &format!("{heart}&citizen=citizen-001"),
            None,
            200,
        ),
        case(
            obs,
            "st-luke",
            &format!("{heart}&citizen=citizen-002"),
            None,
            403,
        ),
        case(obs, "st-luke", &format!("{heart}&store=shared"), None, 403),
        case(
            obs,
            "analyst-1",
            &format!("{heart}&store=shared"),
            None,
            200,
        ),
        case(
            obs,
            "analyst-1",
            &format!("{heart}&store=shared&across=true&every=1d&agg=p90"),
            None,
            200,
        ),
        case(obs, "analyst-1", heart, None, 403),
        case(obs, "operator-1", heart, None, 403),
        case(obs, "bed-001", heart, None, 403),
        case(
            obs,
            "app-001",
            "/api/v1/observations?metric=pulse_of_the_moon",
            None,
            400,
        ),
        // Consents: a citizen's app its own citizen's, operators anyone's.
        case(consents, "app-001", "/api/v1/consents", None, 200),
        case(
            consents,
            "app-001",
            "/api/v1/consents?citizen=citizen-002",
            None,
            403,
        ),
        case(
            consents,
            "st-luke",
            "/api/v1/consents?citizen=citizen-001",
            None,
            403,
        ),
        case(
            consents,
            "analyst-1",
            "/api/v1/consents?citizen=citizen-001",
            None,
            403,
        ),
        case(
            consents,
            "operator-1",
            "/api/v1/consents?citizen=citizen-002",
            None,
            200,
        ),
        case(
            record,
            "app-001",
            "/api/v1/consents",
            Some(research("citizen-001")),
            201,
        ),
        case(
            record,
            "app-001",
            "/api/v1/consents",
            Some(research("citizen-002")),
            403,
        ),
        case(
            record,
            "st-luke",
            "/api/v1/consents",
            Some(research("citizen-001")),
            403,
        ),
        case(
            record,
            "analyst-1",
            "/api/v1/consents",
            Some(research("citizen-001")),
            403,
        ),
        case(
            record,
            "operator-1",
            "/api/v1/consents",
            Some(json!({"citizen": "citizen-002"})),
            400,
        ),
        // Principals: operators only.
        case(principals, "operator-1", "/api/v1/principals", None, 200),
        case(
            add,
            "operator-1",
            "/api/v1/principals",
            Some(new_principal.clone()),
            201,
        ),
        case(
            add,
            "operator-1",
            "/api/v1/principals",
            Some(new_principal.clone()),
            409,
        ),
        case(
            passwd,
            "operator-1",
            "/api/v1/principals/nurse-1/password",
            Some(generate.clone()),
            200,
        ),
        case(
            passwd,
            "operator-1",
            "/api/v1/principals/nobody/password",
            Some(generate.clone()),
            404,
        ),
        case(
            remove,
            "operator-1",
            "/api/v1/principals/nurse-1",
            None,
            200,
        ),
        case(
            remove,
            "operator-1",
            "/api/v1/principals/nurse-1",
            None,
            404,
        ),
        case("GET /metrics", "operator-1", "/metrics", None, 200),
        case(
            letters,
            "operator-1",
            "/api/v1/deadletters?reason=malformed_payload",
            None,
            200,
        ),
        case(
            letters,
            "operator-1",
            "/api/v1/deadletters?limit=0",
            None,
            400,
        ),
        case(
            replay,
            "operator-1",
            "/api/v1/deadletters/replay",
            Some(json!({"reason": "malformed_payload"})),
            202,
        ),
        case(
            replay_status,
            "operator-1",
            "/api/v1/deadletters/replay/1",
            None,
            200,
        ),
        case(
            replay_status,
            "operator-1",
            "/api/v1/deadletters/replay/999",
            None,
            404,
        ),
        case(
            "GET /api/v1/devices",
            "operator-1",
            "/api/v1/devices",
            None,
            200,
        ),
        case(
            "GET /api/v1/devices",
            "operator-1",
            "/api/v1/devices?silent_for=1w",
            None,
            400,
        ),
        // The registry's feed: workers and operators only.
        case(feed, "worker-1", "/api/v1/registry/consents", None, 200),
        case(feed, "worker-1", "/api/v1/registry/consents?after=1&limit=10&wait_s=0", None, 200),
        case(feed, "operator-1", "/api/v1/registry/consents?after=1000000", None, 409),
        case(feed, "worker-1", "/api/v1/registry/consents?limit=0", None, 400),
        case(feed, "worker-1", "/api/v1/registry/consents?wait_s=61", None, 400),
        case(feed, "st-luke", "/api/v1/registry/consents", None, 403),
        case(feed, "bed-001", "/api/v1/registry/consents", None, 403),
        case(devices_feed, "worker-1", "/api/v1/registry/devices", None, 200),
        case(devices_feed, "worker-1", "/api/v1/registry/devices?wait_s=x", None, 400),
        case(devices_feed, "app-001", "/api/v1/registry/devices", None, 403),
        case(explain, "operator-1", &format!("{explain_path}?principal=st-luke&subscribe=citizens/citizen-001/observations/heart_rate"), None, 200),
        case(explain, "operator-1", &format!("{explain_path}?principal=bed-001&publish=devices/bed-002/telemetry&qos=1"), None, 200),
        case(explain, "operator-1", &format!("{explain_path}?principal=st-luke"), None, 400),
        case(explain, "operator-1", &format!("{explain_path}?principal=nobody&subscribe=x"), None, 404),
        case("GET /api/v1/alerts", "st-luke", "/api/v1/alerts", None, 200),
        case("GET /api/v1/alerts", "st-luke", "/api/v1/alerts?state=all&limit=5", None, 200),
        case("GET /api/v1/alerts", "st-luke", "/api/v1/alerts?state=closed", None, 400),
        case("GET /api/v1/alerts", "operator-1", "/api/v1/alerts", None, 403),
        case("POST /api/v1/alerts/{id}/ack", "st-luke", "/api/v1/alerts/1/ack", None, 200),
        case("POST /api/v1/alerts/{id}/ack", "st-luke", "/api/v1/alerts/999/ack", None, 404),
        case("POST /api/v1/alerts/{id}/ack", "st-luke", "/api/v1/alerts/one/ack", None, 400),
        case("POST /api/v1/alerts/{id}/ack", "analyst-1", "/api/v1/alerts/1/ack", None, 403),
        case(sessions, "operator-1", "/api/v1/mqtt/sessions", None, 200),
        case(sessions, "operator-1", "/api/v1/mqtt/sessions?principal=bed-001", None, 200),
        case("GET /api/v1/log", "operator-1", "/api/v1/log", None, 200),
        case(
            "GET /api/v1/acl/denials",
            "operator-1",
            "/api/v1/acl/denials",
            None,
            200,
        ),
        case(
            "GET /api/v1/session",
            "app-001",
            "/api/v1/session",
            None,
            200,
        ),
        case(
            "DELETE /api/v1/session",
            "app-001",
            "/api/v1/session",
            None,
            204,
        ),
        Case {
            operation: "DELETE /api/v1/session",
            who: None,
            path: "/api/v1/session".into(),
            body: None,
            status: 401,
        },
        Case {
            operation: "GET /healthz",
            who: None,
            path: "/healthz".into(),
            body: None,
            status: 200,
        },
        Case {
            operation: "GET /readyz",
            who: None,
            path: "/readyz".into(),
            body: None,
            status: 200,
        },
        Case {
            operation: "POST /api/v1/session",
            who: None,
            path: "/api/v1/session".into(),
            body: Some(json!({"id": "app-001", "password": common::password("app-001")})),
            status: 201,
        },
        Case {
            operation: "POST /api/v1/session",
            who: None,
            path: "/api/v1/session".into(),
            body: Some(json!({"id": "app-001", "password": "wrong"})),
            status: 401,
        },
        Case {
            operation: "GET /api/v1/observations",
            who: None,
            path: heart.into(),
            body: None,
            status: 401,
        },
    ];
    // Every other role is refused the operators' operations.
    for who in ["app-001", "st-luke", "analyst-1", "bed-001"] {
        cases.push(case(principals, who, "/api/v1/principals", None, 403));
        cases.push(case(
            add,
            who,
            "/api/v1/principals",
            Some(new_principal.clone()),
            403,
        ));
        cases.push(case(
            passwd,
            who,
            "/api/v1/principals/nurse-1/password",
            Some(generate.clone()),
            403,
        ));
        cases.push(case(remove, who, "/api/v1/principals/nurse-1", None, 403));
        cases.push(case("GET /metrics", who, "/metrics", None, 403));
        cases.push(case(letters, who, "/api/v1/deadletters", None, 403));
        cases.push(case(
            replay,
            who,
            "/api/v1/deadletters/replay",
            Some(json!({})),
            403,
        ));
        cases.push(case(
            replay_status,
            who,
            "/api/v1/deadletters/replay/1",
            None,
            403,
        ));
        cases.push(case("GET /api/v1/log", who, "/api/v1/log", None, 403));
        cases.push(case(sessions, who, "/api/v1/mqtt/sessions", None, 403));
        let denied = format!("{explain_path}?principal=st-luke&subscribe=x");
        cases.push(case(explain, who, &denied, None, 403));
        cases.push(case(
            "GET /api/v1/devices",
            who,
            "/api/v1/devices",
            None,
            403,
        ));
        cases.push(case(
            "GET /api/v1/acl/denials",
            who,
            "/api/v1/acl/denials",
            None,
            403,
        ));
    }
    cases.extend(hook_cases());
    cases
}

/// `(status, content type, body)` of one case.
fn send(api: SocketAddr, c: &Case) -> anyhow::Result<(u16, String, String)> {
    let method = c.operation.split(' ').next().unwrap_or("GET");
    let password = c.who.map(common::password);
    let credentials = c.who.zip(password.as_deref());
    let (status, headers, body) = match &c.body {
        Some(b) => http_exchange(api, method, &c.path, credentials, Some(b))?,
        None if credentials.is_some() => http_exchange(api, method, &c.path, credentials, None)?,
        None => http_request(api, method, &c.path, &[], "")?,
    };
    let content_type = headers
        .iter()
        .find_map(|h| {
            let (n, v) = h.split_once(':')?;
            n.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((status, content_type, body))
}

#[test]
fn every_operation_answers_as_its_openapi_document_says() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    common::consent(
        &dir.path().join("data"),
        "grant",
        &["citizen-001"],
        "research",
    )?;
    common::consent_with(
        &dir.path().join("data"),
        "grant",
        &["citizen-001"],
        "care",
        &["--grantee", "st-luke"],
    )?;
    let hub = Hub::start(dir.path(), &config())?;
    let api = hub.http_addr.expect("HTTP API announced");
    hub.publish_as(
        "bed-001",
        &format!(r#"{{"ts":{},"hr":66,"rr":14}}"#, common::now_ms()),
    )?;
    hub.publish_as("bed-002", "not json")?;
    common::eventually(Duration::from_secs(10), || {
        Ok(hub.query(&["--metric", "heart_rate"])?.first().cloned())
    })?;
    // The heart rate raised an alert for st-luke (alert 1), which the walk acknowledges.
    common::eventually(Duration::from_secs(10), || {
        let (_, alerts) = common::http(api, "GET", "/api/v1/alerts", Some("st-luke"), None)?;
        Ok(alerts
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(()))
    })?;

    let (status, _, text) = http_request(api, "GET", "/api/v1/openapi.json", &[], "")?;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&text)?;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        doc["openapi"]
    );
    assert!(doc["components"]["securitySchemes"]["basic"].is_object());

    if let Err(why) = well_formed(&doc) {
        panic!("the document is not well formed: {why}");
    }
    let documented: BTreeSet<String> = operations(&doc);
    let cases = cases();
    let walked: BTreeSet<String> = cases.iter().map(|c| c.operation.to_owned()).collect();
    assert_eq!(
        documented, walked,
        "the walk and the document name the same operations"
    );

    for c in &cases {
        let (status, content_type, body) = send(api, c)?;
        let label = format!("{} as {:?} ({})", c.operation, c.who, c.path);
        assert_eq!(status, c.status, "{label}: {body}");
        let (method, path) = c.operation.split_once(' ').expect("METHOD path");
        let op = &doc["paths"][path][method.to_lowercase()];
        let response = &op["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{label}: status {status} is not in the document"
        );
        let Some(content) = response["content"].as_object() else {
            assert!(
                body.is_empty(),
                "{label}: an answer the document says has no body: {body}"
            );
            continue;
        };
        let media = content_type.split(';').next().unwrap_or_default().trim();
        let declared = content.get(media);
        assert!(
            declared.is_some(),
            "{label}: content type {media:?} not among {:?}",
            content.keys()
        );
        if media == "application/json" {
            let value: Value = serde_json::from_str(&body)?;
            let schema = &declared.expect("declared")["schema"];
            if let Err(why) = matches(&doc, schema, &value, "$") {
                panic!("{label}: {why}\nbody: {body}\nschema: {schema}");
            }
        }
    }

    // People can read it too.
    let (status, _, page) = http_request(api, "GET", "/api/v1/docs", &[], "")?;
    assert_eq!(status, 200);
    assert!(
        page.contains("<code>GET /api/v1/observations</code>"),
        "{page}"
    );
    hub.terminate()
}

/// What OpenAPI 3.1 asks of the document that the walk does not already show: `info` with
/// title and version, every `$ref` resolving, every operation with answers, and every `{name}`
/// of a path declared as a path parameter of each of its operations.
fn well_formed(doc: &Value) -> Result<(), String> {
    for field in ["title", "version"] {
        if !doc["info"][field].is_string() {
            return Err(format!("info.{field} missing"));
        }
    }
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    for r in refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .ok_or(format!("odd $ref {r}"))?;
        if doc["components"]["schemas"][name].is_null() {
            return Err(format!("{r} does not resolve"));
        }
    }
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let names: Vec<&str> = path
            .split('/')
            .filter_map(|level| level.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, op) in item.as_object().into_iter().flatten() {
            if op["responses"].as_object().is_none_or(|r| r.is_empty()) {
                return Err(format!("{method} {path} has no responses"));
            }
            for name in &names {
                let declared = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == *name && p["in"] == "path" && p["required"] == true);
                if !declared {
                    return Err(format!(
                        "{method} {path}: path parameter {name} not declared"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn collect_refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            if let Some(r) = map.get("$ref").and_then(Value::as_str) {
                out.push(r);
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// "METHOD path" of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                out.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    out
}

/// Does `value` match `schema` (the subset of JSON Schema the document uses)? Objects are
/// closed: a field the schema does not name is an undocumented field.
fn matches(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or_default();
        let target = &doc["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: unresolved {reference}"));
        }
        return matches(doc, target, value, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            return options
                .iter()
                .find(|s| matches(doc, s, value, at).is_ok())
                .map(|_| ())
                .ok_or_else(|| format!("{at}: matches none of {key} {schema}"));
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        return all.iter().try_for_each(|s| matches(doc, s, value, at));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return Ok(()),
    };
    let fits = |t: &str| match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    };
    if !types.iter().any(|t| fits(t)) {
        return Err(format!("{at}: {value} is not {types:?}"));
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            matches(doc, &schema["items"], item, &format!("{at}[{i}]"))?;
        }
    }
    if let Some(fields) = value.as_object() {
        let properties = schema["properties"].as_object();
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !fields.contains_key(name) {
                return Err(format!("{at}: required field {name} missing"));
            }
        }
        for (name, field) in fields {
            let Some(property) = properties.and_then(|p| p.get(name)) else {
                return Err(format!("{at}: field {name} is not in the document"));
            };
            matches(doc, property, field, &format!("{at}.{name}"))?;
        }
    }
    Ok(())
}

#[test]
fn the_checker_refuses_what_a_schema_does_not_say() {
    let doc = json!({"components": {"schemas": {"Row": {
        "type": "object",
        "properties": {"v": {"type": "number"}, "why": {"type": ["string", "null"]}},
        "required": ["v"],
    }}}});
    let rows = json!({"type": "array", "items": {"$ref": "#/components/schemas/Row"}});
    assert!(matches(
        &doc,
        &rows,
        &json!([{"v": 1.5}, {"v": 2, "why": null}]),
        "$"
    )
    .is_ok());
    for bad in [
        json!([{"v": "1"}]),
        json!([{}]),
        json!([{"v": 1, "extra": true}]),
        json!({"v": 1}),
        json!([{"v": 1, "why": 3}]),
    ] {
        assert!(matches(&doc, &rows, &bad, "$").is_err(), "{bad}");
    }
}
