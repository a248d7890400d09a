//! End to end: an external MQTT broker asks the hub who its clients are and what they may do
//! (`/api/v1/mqtt/auth`, `/acl`, `/superuser`). The brokers are test doubles that call the
//! hooks as their documentation describes: mosquitto-go-auth's HTTP backend (JSON or form
//! parameters, status response mode: 200 allows, anything else refuses; `acc` 1 read,
//! 2 write, 3 both, 4 subscribe; no headers of its own, so the secret rides in the URI) and
//! EMQX's HTTP authorization (a Bearer header, `action`, 200 with `result`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http_request, Hub};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SECRET: &str = "hooks-secret-for-the-test";

fn config() -> String {
    let digest: String = Sha256::digest(SECRET.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let app = common::principal("app-001", &["citizen"])
        .replace("password_hash", "citizen = \"citizen-001\"\npassword_hash");
    format!(
        "{}{}{app}[auth]\nacl = \"acl.toml\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[http.mqtt_hooks]\ntoken_sha256 = \"{digest}\"\n",
        common::config_with_devices(2),
        common::principal("st-luke", &["care"]),
    )
}

/// The built-in rules, after two of st-luke's own: bed-002's errors are denied to it, every
/// other device's allowed.
fn rules() -> String {
    format!(
        "[[rule]]\neffect = \"deny\"\nprincipal = \"st-luke\"\naction = \"subscribe\"\ntopic = \"devices/bed-002/errors\"\n\n\
         [[rule]]\neffect = \"allow\"\nprincipal = \"st-luke\"\naction = \"subscribe\"\ntopic = \"devices/+/errors\"\n\n{}",
        include_str!("../config/acl.default.toml")
    )
}

/// mosquitto-go-auth's HTTP backend, as its README describes it.
struct GoAuth {
    api: SocketAddr,
    /// `http_params_mode`: json (default) or form.
    form: bool,
}

impl GoAuth {
    fn post(&self, uri: &str, params: Value) -> anyhow::Result<(u16, Value)> {
        let path = format!("{uri}?token={SECRET}");
        let (content_type, body) = if self.form {
            let pairs: Vec<String> = params
                .as_object()
                .expect("an object")
                .iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    format!("{k}={}", v.replace('/', "%2F").replace('+', "%2B"))
                })
                .collect();
            ("application/x-www-form-urlencoded", pairs.join("&"))
        } else {
            ("application/json", params.to_string())
        };
        let (status, _, text) = http_request(
            self.api,
            "POST",
            &path,
            &[("Content-Type", content_type)],
            &body,
        )?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    fn user(&self, username: &str, password: &str, clientid: &str) -> anyhow::Result<bool> {
        let params = json!({"username": username, "password": password, "clientid": clientid});
        Ok(self.post("/api/v1/mqtt/auth", params)?.0 == 200)
    }

    fn acl(&self, username: &str, clientid: &str, topic: &str, acc: u8) -> anyhow::Result<bool> {
        let params =
            json!({"username": username, "clientid": clientid, "topic": topic, "acc": acc});
        Ok(self.post("/api/v1/mqtt/acl", params)?.0 == 200)
    }
}

/// EMQX's HTTP authorization: 200 with a result; the secret in a Bearer header.
fn emqx_authz(api: SocketAddr, username: &str, topic: &str, action: &str) -> anyhow::Result<Value> {
    let body = json!({"username": username, "clientid": username, "topic": topic, "action": action, "qos": "1", "retain": "false"});
    let bearer = format!("Bearer {SECRET}");
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", bearer.as_str()),
    ];
    let (status, _, text) = http_request(
        api,
        "POST",
        "/api/v1/mqtt/acl?format=emqx",
        &headers,
        &body.to_string(),
    )?;
    assert_eq!(status, 200, "EMQX reads any other status as ignore: {text}");
    Ok(serde_json::from_str(&text)?)
}

fn consent(api: SocketAddr, change: &str) -> anyhow::Result<()> {
    let body = json!({"citizen": "citizen-001", "purpose": "care", "grantee": "st-luke",
        "data_types": ["heart_rate"], "change": change});
    let (status, record) = common::http(
        api,
        "POST",
        "/api/v1/consents",
        Some("app-001"),
        Some(&body),
    )?;
    anyhow::ensure!(status == 201, "consent {change}: {status} {record}");
    Ok(())
}

#[test]
fn an_external_broker_authenticates_and_authorizes_with_the_hubs_rules_and_consents(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("acl.toml"), rules())?;
    let hub = Hub::start(dir.path(), &config())?;
    let api = hub.http_addr.expect("HTTP API announced");
    let broker = GoAuth { api, form: false };
    let pw = common::password;

    // The caller proves the hooks' secret.
    let params = json!({"username": "bed-001", "password": pw("bed-001"), "clientid": "bed-001"});
    let (status, _, text) =
        http_request(api, "POST", "/api/v1/mqtt/auth", &[], &params.to_string())?;
    assert_eq!(status, 401, "{text}");
    let (status, _, _) = http_request(
        api,
        "POST",
        "/api/v1/mqtt/auth?token=wrong",
        &[],
        &params.to_string(),
    )?;
    assert_eq!(status, 401);
    // A stranger learns nothing from a bad parameter; the proven caller is told.
    let body = params.to_string();
    let odd = http_request(api, "POST", "/api/v1/mqtt/auth?format=x", &[], &body)?;
    assert_eq!(odd.0, 401, "{}", odd.2);
    let path = format!("/api/v1/mqtt/auth?format=x&token={SECRET}");
    let (status, _, text) = http_request(api, "POST", &path, &[], &body)?;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("use go-auth (the default) or emqx"), "{text}");

    // Authentication: the password, and a device's client id is its device id.
    assert!(broker.user("bed-001", &pw("bed-001"), "bed-001")?);
    assert!(!broker.user("bed-001", "wrong", "bed-001")?);
    assert!(!broker.user("nobody", "wrong", "nobody")?);
    let (status, refused) = broker.post(
        "/api/v1/mqtt/auth",
        json!({"username": "bed-001", "password": pw("bed-001"), "clientid": "bed-002"}),
    )?;
    assert_eq!(status, 403);
    assert_eq!(refused["result"], "deny");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("must connect with client id bed-001")),
        "{refused}"
    );
    assert!(
        !broker.user("st-luke", &pw("st-luke"), "bed-002")?,
        "no one else takes a device's id"
    );
    assert!(broker.user("st-luke", &pw("st-luke"), "st-luke-dashboard")?);
    let (status, _) = broker.post("/api/v1/mqtt/superuser", json!({"username": "operator-1"}))?;
    assert_eq!(status, 403, "kenko has no superusers");

    // A device publishes only its own telemetry.
    assert!(broker.acl("bed-001", "bed-001", "devices/bed-001/telemetry", 2)?);
    assert!(broker.acl("bed-001", "bed-001", "devices/bed-001/telemetry/pb", 2)?);
    assert!(!broker.acl("bed-001", "bed-001", "devices/bed-002/telemetry", 2)?);
    assert!(
        !broker.acl("bed-001", "bed-002", "devices/bed-002/telemetry", 2)?,
        "client id is bound"
    );
    assert!(!broker.acl(
        "bed-001",
        "bed-001",
        "citizens/citizen-001/observations/heart_rate",
        1
    )?);
    let form = GoAuth { api, form: true };
    assert!(form.acl("bed-001", "bed-001", "devices/bed-001/telemetry", 2)?);
    assert!(!form.acl("bed-001", "bed-001", "devices/bed-002/telemetry", 2)?);
    assert!(form.user("bed-002", &pw("bed-002"), "bed-002")?);

    // A care service: subscribing is allowed (mosquitto checks each delivery as a read);
    // each delivery only under the citizen's care consent in force now.
    let heart = "citizens/citizen-001/observations/heart_rate";
    assert!(broker.acl("st-luke", "st-luke", "citizens/+/observations/+", 4)?);
    assert!(
        !broker.acl("st-luke", "st-luke", heart, 1)?,
        "no consent yet"
    );
    assert!(!emqx_authz(api, "st-luke", heart, "subscribe")?["result"].eq("allow"));
    consent(api, "grant")?;
    common::eventually(Duration::from_secs(10), || {
        Ok(broker.acl("st-luke", "st-luke", heart, 1)?.then_some(()))
    })?;
    assert!(!broker.acl(
        "st-luke",
        "st-luke",
        "citizens/citizen-002/observations/heart_rate",
        1
    )?);
    assert!(!broker.acl(
        "st-luke",
        "st-luke",
        "citizens/citizen-001/observations/steps",
        1
    )?);
    assert!(
        !broker.acl("st-luke", "st-luke", heart, 3)?,
        "care services do not publish"
    );

    // EMQX checks a subscription only when it is made: under consent, one citizen's metric.
    let allowed = emqx_authz(api, "st-luke", heart, "subscribe")?;
    assert_eq!(allowed["result"], "allow", "{allowed}");
    let wide = emqx_authz(api, "st-luke", "citizens/+/observations/+", "subscribe")?;
    assert_eq!(wide["result"], "deny", "{wide}");
    assert!(
        wide["error"]
            .as_str()
            .is_some_and(|e| e.contains("citizens/CITIZEN/observations/METRIC")),
        "{wide}"
    );
    // A wildcard EMQX would deliver from without asking again is refused when an earlier
    // deny rule could stop a message of it; go-auth's per-message reads enforce the rule.
    let errors = emqx_authz(api, "st-luke", "devices/+/errors", "subscribe")?;
    assert_eq!(errors["result"], "deny", "{errors}");
    let one = emqx_authz(api, "st-luke", "devices/bed-001/errors", "subscribe")?;
    assert_eq!(one["result"], "allow", "{one}");
    assert!(broker.acl("st-luke", "st-luke", "devices/+/errors", 4)?);
    assert!(broker.acl("st-luke", "st-luke", "devices/bed-001/errors", 1)?);
    assert!(!broker.acl("st-luke", "st-luke", "devices/bed-002/errors", 1)?);
    let publish = emqx_authz(api, "bed-001", "devices/bed-001/telemetry", "publish")?;
    assert_eq!(publish["result"], "allow", "{publish}");

    // A withdrawal takes force on the next check after the hub has it.
    consent(api, "revoke")?;
    common::eventually(Duration::from_secs(10), || {
        Ok((!broker.acl("st-luke", "st-luke", heart, 1)?).then_some(()))
    })?;
    assert_eq!(
        emqx_authz(api, "st-luke", heart, "subscribe")?["result"],
        "deny"
    );

    // A consent to every data type still leaves no wildcard through EMQX: a later
    // revocation of one type, or a reading outside the consent's period, would not be
    // checked per message there.
    let all_types = json!({"citizen": "citizen-001", "purpose": "care", "grantee": "st-luke"});
    let (status, record) = common::http(
        api,
        "POST",
        "/api/v1/consents",
        Some("app-001"),
        Some(&all_types),
    )?;
    assert_eq!(status, 201, "{record}");
    common::eventually(Duration::from_secs(10), || {
        Ok(broker.acl("st-luke", "st-luke", heart, 1)?.then_some(()))
    })?;
    let every_metric = "citizens/citizen-001/observations/+";
    assert_eq!(
        emqx_authz(api, "st-luke", every_metric, "subscribe")?["result"],
        "deny"
    );
    assert_eq!(
        emqx_authz(api, "st-luke", heart, "subscribe")?["result"],
        "allow"
    );

    // Denials count where the embedded broker's do.
    let (status, denials) =
        common::http(api, "GET", "/api/v1/acl/denials", Some("operator-1"), None)?;
    assert_eq!(status, 200);
    let counted: u64 = denials
        .as_array()
        .map(|d| d.iter().filter_map(|r| r["count"].as_u64()).sum())
        .unwrap_or(0);
    assert!(counted >= 8, "the hooks' denials are counted: {denials}");

    // A request the hook cannot read is refused, saying why.
    let (status, unusable) = broker.post(
        "/api/v1/mqtt/acl",
        json!({"username": "bed-001", "clientid": "bed-001", "topic": "t"}),
    )?;
    assert_eq!(status, 400);
    assert!(
        unusable["error"]
            .as_str()
            .is_some_and(|e| e.contains("acc")),
        "{unusable}"
    );
    let (status, unusable) = broker.post(
        "/api/v1/mqtt/acl",
        json!({"username": "bed-001", "clientid": "bed-001", "topic": "t", "acc": 9}),
    )?;
    assert_eq!(status, 400, "{unusable}");
    hub.terminate()
}

#[test]
fn the_hooks_are_off_unless_configured() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = format!(
        "{}[http]\nlisten = \"127.0.0.1:0\"\n",
        common::config_with_devices(1)
    );
    let hub = Hub::start(dir.path(), &config)?;
    let api = hub.http_addr.expect("HTTP API announced");
    let body = json!({"username": "bed-001", "clientid": "bed-001", "topic": "devices/bed-001/telemetry", "acc": 2});
    let path = format!("/api/v1/mqtt/acl?token={SECRET}");
    let (status, _, text) = http_request(api, "POST", &path, &[], &body.to_string())?;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("[http.mqtt_hooks]"), "{text}");
    hub.terminate()
}
