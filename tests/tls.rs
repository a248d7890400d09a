//! End to end: MQTT over TLS with mosquitto's clients (OpenSSL): server authentication,
//! client certificates as principals, passwords over TLS.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use common::Hub;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

/// A CA and what it signed, written as PEM files into a directory.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> anyhow::Result<Pki> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca_key = KeyPair::generate()?;
        let ca = params.self_signed(&ca_key)?;
        std::fs::write(dir.join(format!("{name}.pem")), ca.pem())?;
        Ok(Pki {
            dir: dir.to_owned(),
            ca,
            ca_key,
        })
    }

    /// Issues a certificate for `cn` (with 127.0.0.1 as its address); returns (cert, key) paths.
    fn issue(&self, cn: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let mut params = CertificateParams::new(vec!["localhost".into()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca, &self.ca_key)?;
        let (cert_path, key_path) = (
            self.dir.join(format!("{cn}.crt")),
            self.dir.join(format!("{cn}.key")),
        );
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}

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
