//! End to end: FHIR R4 under `/fhir` — capability statement, Patient, Device and
//! Observation search with paging — read under the HTTP API's consent rules, and every
//! resource checked by an independent FHIR R4 validator (`tests/fhir/validate.py`, the
//! fhir.resources models).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use common::{http_response, Hub};

fn config() -> String {
    let app = common::principal("app-001", &["citizen"])
        .replace("password_hash", "citizen = \"citizen-001\"\npassword_hash");
    format!(
        "{}[[devices]]\nid = \"bp-001\"\nkind = \"bp\"\ncitizen = \"citizen-001\"\npassword_hash = \"{}\"\n\n{}{}{app}[http]\nlisten = \"127.0.0.1:0\"\n",
        common::config_with_devices(2),
        common::password_hash("bp-001"),
        common::principal("st-luke", &["care"]),
        common::principal("ops", &["operator"]),
    )
}

/// The Python that has fhir.resources: `KENKO_FHIR_PYTHON`, else the workspace's
/// `.fhir-venv` (docs/fhir.md says how to make it).
fn validator_python() -> anyhow::Result<PathBuf> {
    if let Some(python) = std::env::var_os("KENKO_FHIR_PYTHON") {
        return Ok(PathBuf::from(python));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".fhir-venv/bin/python");
    anyhow::ensure!(
        venv.exists(),
        "no FHIR validator: python3 -m venv .fhir-venv && .fhir-venv/bin/pip install 'fhir.resources==6.5.0' 'pydantic<2' (or set KENKO_FHIR_PYTHON)"
    );
    Ok(venv)
}

/// Runs the validator on `dir`; its output, and whether every resource was valid.
fn validate(dir: &Path) -> anyhow::Result<(bool, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir/validate.py");
    let out = Command::new(validator_python()?)
        .arg(script)
        .arg(dir)
        .output()
        .context("cannot run the FHIR validator's python")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// GET `path` as `principal`: status, content type, body as JSON.
fn get(
    api: SocketAddr,
    path: &str,
    principal: Option<&str>,
) -> anyhow::Result<(u16, String, serde_json::Value)> {
    let (status, headers, body) = http_response(api, "GET", path, principal, None)?;
    let content_type = headers
        .iter()
        .find_map(|h| {
            let (name, value) = h.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let json = serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))?;
    Ok((status, content_type, json))
}

/// The Observations of a search, following `next` links from `path`; also each page.
fn search_all(
    api: SocketAddr,
    path: &str,
    principal: &str,
) -> anyhow::Result<(Vec<serde_json::Value>, Vec<serde_json::Value>)> {
    let (mut observations, mut pages) = (Vec::new(), Vec::new());
    let mut next = Some(path.to_owned());
    while let Some(path) = next.take() {
        let (status, _, bundle) = get(api, &path, Some(principal))?;
        anyhow::ensure!(status == 200, "{path}: {status} {bundle}");
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            observations.push(entry["resource"].clone());
        }
        next = bundle["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(|url| url[url.find("/fhir/").unwrap_or(0)..].to_owned());
        pages.push(bundle);
        anyhow::ensure!(pages.len() < 50, "paging does not end");
    }
    Ok((observations, pages))
}

fn instant(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .unwrap_or(i64::MIN)
}

#[test]
fn hospitals_read_consented_vital_signs_as_valid_fhir() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let api = hub.http_addr.context("HTTP API announced")?;
    let t0 = (common::now_ms() - 3_600_000) / 60_000 * 60_000;
    for i in 0..6 {
        for (device, hr) in [("bed-001", 60 + i), ("bed-002", 80 + i)] {
            let ts = t0 + i * 60_000;
            hub.publish_as(device, &format!(r#"{{"ts":{ts},"hr":{hr}}}"#))?;
        }
    }
    for i in 0..3 {
        let s = t0 / 1000 + i * 600;
        hub.publish_as(
            "bp-001",
            &format!(
                r#"{{"measured":{s},"sys_kpa":{}.0,"dia_kpa":10.5,"pulse":70}}"#,
                15 + i
            ),
        )?;
    }
    hub.query_at_least(12, &["--metric", "heart_rate"])?;
    hub.query_at_least(3, &["--metric", "diastolic_bp"])?;
    common::care_consent(dir.path(), "grant", "citizen-001", "st-luke")?;
    // The hub takes the new record in force once it has reread the registry.
    common::eventually(std::time::Duration::from_secs(10), || {
        let (status, _, _) = get(api, "/fhir/Patient/citizen-001", Some("st-luke"))?;
        Ok((status == 200).then_some(()))
    })?;
    let out = tempfile::tempdir()?;
    let keep = |name: &str, value: &serde_json::Value| {
        std::fs::write(out.path().join(format!("{name}.json")), value.to_string())
    };

    // The capability statement, open to all.
    let (status, content_type, metadata) = get(api, "/fhir/metadata", None)?;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/fhir+json")
    );
    assert_eq!(metadata["fhirVersion"], "4.0.1");
    keep("metadata", &metadata)?;

    // A search by code and date gives exactly the rows `kenko query` gives.
    let (from, to) = (t0 + 60_000, t0 + 300_000);
    let at = |ms: i64| jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string());
    let search = format!(
        "/fhir/Observation?patient=Patient/citizen-001&code=http://loinc.org%7C8867-4&date=ge{}&date=lt{}",
        at(from)?,
        at(to)?
    );
    let (observations, pages) = search_all(api, &search, "st-luke")?;
    let rows = hub.query(&[
        "--metric",
        "heart_rate",
        "--citizen",
        "citizen-001",
        "--from",
        &at(from)?,
        "--to",
        &at(to)?,
    ])?;
    let fhir: BTreeSet<(i64, String, String)> = observations
        .iter()
        .map(|o| {
            (
                instant(o["effectiveDateTime"].as_str().unwrap_or("")),
                o["valueQuantity"]["value"].to_string(),
                o["device"]["reference"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let query: BTreeSet<(i64, String, String)> = rows
        .iter()
        .map(|r| {
            (
                instant(r["time"].as_str().unwrap_or("")),
                r["value"].to_string(),
                format!("Device/{}", r["device"].as_str().unwrap_or("")),
            )
        })
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(fhir, query);
    let first = &observations[0];
    assert_eq!(first["status"], "final");
    assert_eq!(first["category"][0]["coding"][0]["code"], "vital-signs");
    assert_eq!(first["code"]["coding"][0]["system"], "http://loinc.org");
    assert_eq!(
        first["valueQuantity"]["system"],
        "http://unitsofmeasure.org"
    );
    assert_eq!(first["valueQuantity"]["code"], "/min");
    assert_eq!(first["subject"]["reference"], "Patient/citizen-001");
    keep("search", &pages[0])?;

    // Pages of two, by their next links: the same Observations, each once.
    let (paged, pages) = search_all(api, &format!("{search}&_count=2"), "st-luke")?;
    assert_eq!(pages.len(), 2);
    let ids: BTreeSet<&str> = paged.iter().filter_map(|o| o["id"].as_str()).collect();
    let whole: BTreeSet<&str> = observations
        .iter()
        .filter_map(|o| o["id"].as_str())
        .collect();
    assert_eq!((ids.len(), &ids), (4, &whole));
    keep("page-1", &pages[0])?;

    // Blood pressure: one Observation per reading, systolic and diastolic as components.
    let (pressure, pages) = search_all(api, "/fhir/Observation?code=85354-9", "st-luke")?;
    assert_eq!(pressure.len(), 3, "{pressure:?}");
    let systolic = hub.query(&["--metric", "systolic_bp"])?;
    let mut expected: Vec<String> = systolic.iter().map(|r| r["value"].to_string()).collect();
    let mut got: Vec<String> = pressure
        .iter()
        .map(|o| o["component"][0]["valueQuantity"]["value"].to_string())
        .collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert!(pressure
        .iter()
        .all(|o| o["code"]["coding"][0]["code"] == "85354-9"
            && o["component"][1]["code"]["coding"][0]["code"] == "8462-4"));
    keep("pressure", &pages[0])?;

    // Without a patient, a care service sees only the citizens who consented.
    let (all, _) = search_all(api, "/fhir/Observation?code=8867-4", "st-luke")?;
    assert_eq!(all.len(), 6);
    assert!(all
        .iter()
        .all(|o| o["subject"]["reference"] == "Patient/citizen-001"));

    // Patient and Device.
    let (status, _, patient) = get(api, "/fhir/Patient/citizen-001", Some("st-luke"))?;
    assert_eq!(
        (status, patient["identifier"][0]["value"].as_str()),
        (200, Some("citizen-001"))
    );
    keep("patient", &patient)?;
    let (status, _, device) = get(api, "/fhir/Device/bed-001", Some("app-001"))?;
    assert_eq!(
        (status, device["patient"]["reference"].as_str()),
        (200, Some("Patient/citizen-001"))
    );
    keep("device", &device)?;

    // Refusals are OperationOutcomes: no consent, another citizen, no login, a bad date.
    for (path, who, status) in [
        (
            "/fhir/Observation?patient=citizen-002&code=8867-4",
            Some("st-luke"),
            403,
        ),
        ("/fhir/Patient/citizen-002", Some("st-luke"), 403),
        (
            "/fhir/Observation?patient=citizen-002",
            Some("app-001"),
            403,
        ),
        ("/fhir/Device/bed-002", Some("app-001"), 404),
        ("/fhir/Observation/1795564860000-ab", Some("st-luke"), 404),
        ("/fhir/Observation?_count=5", Some("st-luke"), 400),
        ("/fhir/Observation?code=8867-4", None, 401),
        ("/fhir/Observation?date=yesterday", Some("st-luke"), 400),
        ("/fhir/Observation?code=8480-6", Some("st-luke"), 400),
        ("/fhir/Device/no-such", Some("ops"), 404),
    ] {
        let (got, content_type, outcome) = get(api, path, who)?;
        assert_eq!(
            (got, content_type.as_str()),
            (status, "application/fhir+json"),
            "{path}: {outcome}"
        );
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{path}");
        keep(&format!("outcome-{status}"), &outcome)?;
    }

    // Whose a device is stays unsaid to those who may not read it.
    let (_, _, outcome) = get(api, "/fhir/Device/bed-002", Some("app-001"))?;
    assert!(!outcome.to_string().contains("citizen-002"), "{outcome}");
    let (status, _, body) = http_response(api, "POST", "/fhir/Observation", Some("st-luke"), None)?;
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("OperationOutcome"), "{body}");

    // Every read of identified data was audited.
    let registry = rusqlite::Connection::open(hub.data_dir.join("registry.db"))?;
    let audited: i64 = registry.query_row(
        "SELECT count(*) FROM audit WHERE kind = 'access.identified' AND body LIKE '%st-luke%'",
        [],
        |r| r.get(0),
    )?;
    assert!(audited >= 6, "{audited}");

    // The independent validator accepts every resource, and refuses a broken one.
    let (valid, report) = validate(out.path())?;
    assert!(valid, "{report}");
    let broken = tempfile::tempdir()?;
    let mut bad = first.clone();
    bad["status"] = serde_json::Value::Null;
    bad["effectiveDateTime"] = "yesterday".into();
    std::fs::write(broken.path().join("broken.json"), bad.to_string())?;
    let (valid, report) = validate(broken.path())?;
    assert!(
        !valid,
        "the validator must refuse an Observation without status: {report}"
    );
    hub.terminate()
}

/// A request as `principal` (its test password) with extra headers: status, headers, body.
fn request(
    api: SocketAddr,
    method: &str,
    path: &str,
    principal: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<(u16, Vec<String>, String)> {
    let token = format!(
        "Basic {}",
        common::base64_encode(format!("{principal}:{}", common::password(principal)).as_bytes())
    );
    let mut headers = vec![("Authorization", token.as_str())];
    headers.extend_from_slice(extra);
    common::http_request(api, method, path, &headers, "")
}

fn header<'h>(headers: &'h [String], name: &str) -> Option<&'h str> {
    headers.iter().find_map(|h| {
        let (n, v) = h.split_once(':')?;
        n.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// The path of a URL the hub gave (`http://host/fhir/...` → `/fhir/...`).
fn path_of(url: &str) -> String {
    url[url.find("/fhir/").unwrap_or(0)..].to_owned()
}

/// Starts an export as `principal` and waits for its manifest; returns the status path too.
fn export(
    api: SocketAddr,
    query: &str,
    principal: &str,
) -> anyhow::Result<(String, serde_json::Value)> {
    let kick_off = format!("/fhir/$export{query}");
    let (status, headers, body) = request(
        api,
        "GET",
        &kick_off,
        principal,
        &[
            ("Prefer", "respond-async"),
            ("Accept", "application/fhir+json"),
        ],
    )?;
    anyhow::ensure!(status == 202, "{kick_off}: {status} {body}");
    let status_path = path_of(header(&headers, "content-location").context("Content-Location")?);
    let manifest = common::eventually(std::time::Duration::from_secs(30), || {
        let (status, _, body) = request(api, "GET", &status_path, principal, &[])?;
        Ok((status == 200)
            .then(|| serde_json::from_str(&body))
            .transpose()?)
    })?;
    Ok((status_path, manifest))
}

/// The resources of the manifest's file of `kind`, fetched as `principal`.
fn exported(
    api: SocketAddr,
    manifest: &serde_json::Value,
    kind: &str,
    principal: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let Some(url) = manifest["output"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["type"] == kind)
        .and_then(|o| o["url"].as_str())
    else {
        return Ok(Vec::new());
    };
    let (status, headers, body) = request(api, "GET", &path_of(url), principal, &[])?;
    anyhow::ensure!(status == 200, "{url}: {status} {body}");
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/fhir+ndjson")
    );
    body.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

#[test]
fn a_care_service_exports_the_citizens_who_consent_to_it_in_bulk() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Behind a proxy, the hub writes its links under the address clients reach it at.
    let public = "[http]\npublic_url = \"https://hub.city.example\"\n";
    let hub = Hub::start(dir.path(), &config().replace("[http]\n", public))?;
    let api = hub.http_addr.context("HTTP API announced")?;
    let t0 = (common::now_ms() - 3_600_000) / 60_000 * 60_000;
    for i in 0..6 {
        for device in ["bed-001", "bed-002"] {
            let ts = t0 + i * 60_000;
            hub.publish_as(device, &format!(r#"{{"ts":{ts},"hr":{}}}"#, 60 + i))?;
        }
    }
    for i in 0..3 {
        let s = t0 / 1000 + i * 600;
        hub.publish_as(
            "bp-001",
            &format!(r#"{{"measured":{s},"sys_kpa":16.0,"dia_kpa":10.5,"pulse":70}}"#),
        )?;
    }
    hub.query_at_least(12, &["--metric", "heart_rate"])?;
    hub.query_at_least(3, &["--metric", "pulse_rate"])?;
    hub.query_at_least(3, &["--metric", "systolic_bp"])?;
    common::care_consent(dir.path(), "grant", "citizen-001", "st-luke")?;
    let consented = || -> anyhow::Result<bool> {
        Ok(get(api, "/fhir/Patient/citizen-001", Some("st-luke"))?.0 == 200)
    };
    common::eventually(std::time::Duration::from_secs(10), || {
        Ok(consented()?.then_some(()))
    })?;

    // Only care services export, and only asynchronously.
    let (status, _, _) = request(
        api,
        "GET",
        "/fhir/$export",
        "app-001",
        &[("Prefer", "respond-async")],
    )?;
    assert_eq!(status, 403);
    let (status, _, body) = request(api, "GET", "/fhir/$export", "st-luke", &[])?;
    assert_eq!(status, 400);
    assert!(body.contains("Prefer: respond-async"), "{body}");

    let (status_path, manifest) = export(api, "", "st-luke")?;
    let counts: Vec<(String, u64)> = manifest["output"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["type"].as_str().unwrap_or("").to_owned(),
                o["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // citizen-001: 6 heart rates, 3 pulse rates, 3 blood pressures (one Observation each).
    assert_eq!(
        counts,
        [
            ("Patient".to_owned(), 1),
            ("Device".to_owned(), 2),
            ("Observation".to_owned(), 12)
        ],
        "{manifest}"
    );
    let urls: Vec<&str> = manifest["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["url"].as_str())
        .collect();
    assert!(
        urls.len() == 3
            && urls
                .iter()
                .all(|u| u.starts_with("https://hub.city.example/fhir/$export-file/")),
        "{urls:?}"
    );
    let patients = exported(api, &manifest, "Patient", "st-luke")?;
    assert_eq!(patients[0]["id"], "citizen-001");
    let observations = exported(api, &manifest, "Observation", "st-luke")?;
    assert!(observations
        .iter()
        .all(|o| o["subject"]["reference"] == "Patient/citizen-001"));
    let valid_dir = tempfile::tempdir()?;
    for (n, resource) in patients.iter().chain(&observations).enumerate() {
        std::fs::write(
            valid_dir.path().join(format!("{n}.json")),
            resource.to_string(),
        )?;
    }
    let (valid, report) = validate(valid_dir.path())?;
    assert!(valid, "{report}");
    // Another principal cannot see the job; its owner deletes it.
    let (status, _, _) = request(api, "GET", &status_path, "ops", &[])?;
    assert_eq!(status, 404);
    let (status, _, _) = request(api, "DELETE", &status_path, "st-luke", &[])?;
    assert_eq!(status, 202);
    let (status, _, _) = request(api, "GET", &status_path, "st-luke", &[])?;
    assert_eq!(status, 404);

    // _since and _type narrow it.
    let since = jiff::Timestamp::from_millisecond(t0 + 180_000)?;
    let (_, manifest) = export(
        api,
        &format!("?_type=Observation&_since={since}"),
        "st-luke",
    )?;
    let recent = exported(api, &manifest, "Observation", "st-luke")?;
    let heart: Vec<&serde_json::Value> = recent
        .iter()
        .filter(|o| o["code"]["coding"][0]["code"] == "8867-4")
        .collect();
    assert_eq!(heart.len(), 3, "{recent:?}");
    assert!(exported(api, &manifest, "Patient", "st-luke")?.is_empty());

    // A withdrawal leaves the citizen out of the next export.
    common::care_consent(dir.path(), "revoke", "citizen-001", "st-luke")?;
    common::eventually(std::time::Duration::from_secs(10), || {
        Ok((!consented()?).then_some(()))
    })?;
    let (_, manifest) = export(api, "", "st-luke")?;
    assert!(exported(api, &manifest, "Patient", "st-luke")?.is_empty());
    assert!(exported(api, &manifest, "Observation", "st-luke")?.is_empty());
    hub.terminate()
}
