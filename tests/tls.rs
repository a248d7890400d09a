//! End to end: MQTT over TLS with mosquitto's clients (OpenSSL): server authentication,
//! client certificates as principals, passwords over TLS.

mod common;

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;
use common::pki::Pki;
use common::Hub;

/// A hub whose TLS listener verifies client certificates against `ca`; bed-001 has no
/// password (certificate only), bed-002 has one.
fn start(dir: &Path, require_client_cert: bool) -> anyhow::Result<(Hub, Pki)> {
    let pki = Pki::new(dir, "city-ca")?;
    pki.issue("hub")?;
    let config = format!(
        "[ingest]\nbatch_linger_ms = 2\n\n[mqtt.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"hub.crt\"\nkey = \"hub.key\"\nclient_ca = \"city-ca.pem\"\nrequire_client_cert = {require_client_cert}\n\n[[devices]]\nid = \"bed-001\"\nkind = \"bed\"\ncitizen = \"citizen-001\"\n\n[[devices]]\nid = \"bed-002\"\nkind = \"bed\"\ncitizen = \"citizen-002\"\npassword_hash = \"{}\"\n",
        common::password_hash("bed-002")
    );
    let hub = Hub::start(dir, &config)?;
    Ok((hub, pki))
}

/// mosquitto_pub over TLS; extra arguments for credentials. Returns success and stderr.
fn publish_tls(
    hub: &Hub,
    dir: &Path,
    client_id: &str,
    extra: &[&str],
) -> anyhow::Result<(bool, String)> {
    let addr = hub.tls_addr.context("no TLS listener announced")?;
    let ts = common::now_ms() - 60_000;
    let output = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-q", "1"])
        .arg("--cafile")
        .arg(dir.join("city-ca.pem"))
        .args([
            "-i",
            client_id,
            "-t",
            &format!("devices/{client_id}/telemetry"),
        ])
        .args(["-m", &format!(r#"{{"ts":{ts},"hr":63,"occ":true}}"#)])
        .args(extra)
        .output()
        .context("mosquitto_pub not found; install mosquitto-clients")?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn a_client_certificate_names_the_principal_and_passwords_work_over_tls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (hub, pki) = start(dir.path(), false)?;

    // bed-001 has no password: its certificate is its credential.
    let (cert, key) = pki.issue("bed-001")?;
    let (ok, err) = publish_tls(
        &hub,
        dir.path(),
        "bed-001",
        &["--cert", path(&cert), "--key", path(&key)],
    )?;
    assert!(ok, "certificate login: {err}");
    // bed-002 logs in with its password over TLS, without a certificate.
    let pw = common::password("bed-002");
    let (ok, err) = publish_tls(&hub, dir.path(), "bed-002", &["-u", "bed-002", "-P", &pw])?;
    assert!(ok, "password over TLS: {err}");
    let rows = hub.query_at_least(2, &["--metric", "heart_rate"])?;
    let devices: Vec<&str> = rows.iter().filter_map(|r| r["device"].as_str()).collect();
    assert!(
        devices.contains(&"bed-001") && devices.contains(&"bed-002"),
        "{rows:?}"
    );

    // A certificate for bed-001 does not let a client publish as bed-002.
    let (ok, _) = publish_tls(
        &hub,
        dir.path(),
        "bed-002",
        &["--cert", path(&cert), "--key", path(&key)],
    )?;
    assert!(
        !ok,
        "bed-001's certificate must not connect as client bed-002"
    );
    // A valid certificate naming no known principal is refused.
    let (stranger, stranger_key) = pki.issue("stranger")?;
    let (ok, _) = publish_tls(
        &hub,
        dir.path(),
        "stranger",
        &["--cert", path(&stranger), "--key", path(&stranger_key)],
    )?;
    assert!(!ok, "unknown principal");
    // A certificate from another CA fails the TLS handshake.
    let rogue = Pki::new(dir.path(), "rogue-ca")?;
    let (forged, forged_key) = rogue.issue("bed-001")?;
    let (ok, _) = publish_tls(
        &hub,
        dir.path(),
        "bed-001",
        &["--cert", path(&forged), "--key", path(&forged_key)],
    )?;
    assert!(!ok, "certificate from an untrusted CA");
    // Without a certificate and without a password, nobody gets in.
    let (ok, _) = publish_tls(&hub, dir.path(), "bed-001", &[])?;
    assert!(!ok, "no credentials");

    let rows = hub.query(&["--metric", "heart_rate"])?;
    assert_eq!(rows.len(), 2, "nothing from the refused attempts: {rows:?}");
    hub.terminate()
}

#[test]
fn require_client_cert_refuses_tls_clients_without_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (hub, pki) = start(dir.path(), true)?;
    let pw = common::password("bed-002");
    let (ok, _) = publish_tls(&hub, dir.path(), "bed-002", &["-u", "bed-002", "-P", &pw])?;
    assert!(
        !ok,
        "a password alone is not enough when certificates are required"
    );
    let (cert, key) = pki.issue("bed-002")?;
    let (ok, err) = publish_tls(
        &hub,
        dir.path(),
        "bed-002",
        &["--cert", path(&cert), "--key", path(&key)],
    )?;
    assert!(ok, "{err}");
    hub.terminate()
}

/// `curl` over HTTPS, trusting the test CA: status code and body.
fn curl(dir: &Path, url: &str, extra: &[&str]) -> anyhow::Result<(String, String)> {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .arg("--cacert")
        .arg(dir.join("city-ca.pem"))
        .args(["--write-out", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .context("curl not found; install curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((
        code.to_owned(),
        body.to_owned() + &String::from_utf8_lossy(&out.stderr),
    ))
}

#[test]
fn the_http_api_is_served_over_https_with_the_operators_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path(), "city-ca")?;
    pki.issue("hub")?;
    let config = format!(
        "{}[http.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"hub.crt\"\nkey = \"hub.key\"\n",
        common::principal("ops", &["operator"])
    );
    let hub = Hub::start(dir.path(), &config)?;
    let addr = hub.https_addr.context("no HTTPS listener announced")?;
    assert_eq!(hub.http_addr, None, "no plain HTTP was asked for");

    let (code, body) = curl(
        dir.path(),
        &format!("https://127.0.0.1:{}/healthz", addr.port()),
        &[],
    )?;
    assert_eq!(code, "200", "{body}");
    let metrics = format!("https://127.0.0.1:{}/metrics", addr.port());
    let (code, _) = curl(dir.path(), &metrics, &[])?;
    assert_eq!(code, "401", "credentials are still needed");
    let login = format!("ops:{}", common::password("ops"));
    let (code, body) = curl(dir.path(), &metrics, &["--user", &login])?;
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("kenko_"), "{body}");
    // A browser session started over HTTPS gets a cookie only HTTPS carries.
    let credentials = serde_json::json!({ "id": "ops", "password": common::password("ops") });
    let (code, answer) = curl(
        dir.path(),
        &format!("https://127.0.0.1:{}/api/v1/session", addr.port()),
        &[
            "--include",
            "-H",
            "Content-Type: application/json",
            "--data",
            &credentials.to_string(),
        ],
    )?;
    assert_eq!(code, "201", "{answer}");
    let cookie = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_default();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("; Secure"),
        "{answer}"
    );
    // Plain HTTP on the HTTPS port gets no answer from the API.
    let (code, _) = curl(
        dir.path(),
        &format!("http://127.0.0.1:{}/healthz", addr.port()),
        &[],
    )?;
    assert_ne!(code, "200");
    // A client that does not trust the certificate is refused by curl itself.
    let out = Command::new("curl")
        .args(["--silent", "--max-time", "10"])
        .arg(format!("https://127.0.0.1:{}/healthz", addr.port()))
        .output()?;
    assert!(!out.status.success(), "an unknown CA is not trusted");
    hub.terminate()
}

#[test]
fn plain_http_beyond_loopback_is_refused_before_anything_is_bound() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("kenko.toml");
    std::fs::write(&config_path, "[http]\nlisten = \"0.0.0.0:0\"\n")?;
    let out = Command::new(common::KENKO)
        .args(["serve", "--mqtt", "127.0.0.1:0", "--config"])
        .arg(&config_path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("http.listen 0.0.0.0:0 is not a loopback address")
            && stderr.contains("[http.tls]"),
        "{stderr}"
    );
    // The same for `--http`.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "")?;
    let out = Command::new(common::KENKO)
        .args([
            "serve",
            "--mqtt",
            "127.0.0.1:0",
            "--http",
            "0.0.0.0:0",
            "--config",
        ])
        .arg(&empty)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is not a loopback address"), "{stderr}");
    // (That the operator may say so, `http.plain_on_network`, is a configuration unit
    // test: the tests bind only to loopback.)
    Ok(())
}
