//! The README's run command: `kenko demo` starts a hub with simulated devices of every kind,
//! stores their telemetry — every metric of the catalogue — serves it over HTTP to people of
//! every role, prints progress and stops cleanly on Ctrl-C.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;

use common::{eventually, http_exchange, query, signal, wait_timeout, KENKO};

#[test]
fn demo_stores_simulated_telemetry_and_stops_on_ctrl_c() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let mut child = Command::new(KENKO)
        .args([
            "demo",
            "--mqtt",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--devices",
            "20",
            "--rate",
            "2",
            "--data-dir",
        ])
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    // Progress lines report stored observations.
    let progress = eventually(Duration::from_secs(30), || {
        while let Ok(line) = rx.try_recv() {
            seen.push(line);
        }
        Ok(seen
            .iter()
            .find(|l| stored_in(l).is_some_and(|n| n > 0))
            .cloned())
    })?;
    assert!(
        seen.iter()
            .any(|l| l.contains("Demo data is synthetic") && l.contains("demo-passwords.txt")),
        "banner says the data is synthetic and where the device passwords are: {seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("kenko query")),
        "banner shows where to look: {seen:?}"
    );
    assert!(progress.contains("messages in"), "{progress}");
    let http = http_addr(&seen).expect("banner shows the HTTP API's address");
    every_role_sees_its_part(&data_dir, http)?;

    let occupancy = query(&data_dir, &["--metric", "bed_occupancy"])?;
    let devices: std::collections::HashSet<_> = occupancy
        .iter()
        .filter_map(|r| r["device"].as_str())
        .collect();
    assert_eq!(
        devices.len(),
        20,
        "every simulated bed sensor reports: {devices:?}"
    );
    // Every device metric of the catalogue (DESIGN's table) appears in the demo's store.
    let device_metrics: Vec<&str> = kenko_devices::Metric::ALL
        .iter()
        .filter(|m| !m.is_derived())
        .map(|m| m.name())
        .collect();
    assert_eq!(device_metrics.len(), 14);
    eventually(Duration::from_secs(60), || {
        let mut missing = Vec::new();
        for metric in &device_metrics {
            if query(&data_dir, &["--metric", metric, "--limit", "1"])?.is_empty() {
                missing.push(*metric);
            }
        }
        Ok(missing.is_empty().then_some(()))
    })?;

    signal(child.id(), "INT")?;
    let status = wait_timeout(&mut child, Duration::from_secs(30))?;
    assert!(status.success(), "demo exits cleanly on Ctrl-C: {status}");
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
        seen.push(line);
    }
    assert!(seen.iter().any(|l| l.contains("hub stopped")), "{seen:?}");
    let summary = seen
        .iter()
        .find(|l| l.starts_with("simulator stopped"))
        .expect("simulator summary");
    assert!(summary.contains("acknowledged"), "{summary}");
    // Each consent is recorded once per citizen, not once per device: collection from all
    // 20, care from the first 10, research from every second one.
    let records =
        kenko_ingest::consent::ConsentRegistry::open_read_only(&data_dir.join("registry.db"))?
            .list(None)?;
    let kinds: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            let c = &r.change;
            (
                c.citizen.clone(),
                c.grantee.clone(),
                c.purpose.as_str().to_owned(),
            )
        })
        .collect();
    let distinct: BTreeSet<_> = kinds.iter().cloned().collect();
    assert_eq!(kinds.len(), distinct.len(), "each once: {kinds:?}");
    let count = |purpose: &str| kinds.iter().filter(|k| k.2 == purpose).count();
    assert_eq!(
        (count("collect"), count("care"), count("research")),
        (20, 10, 10)
    );
    Ok(())
}

/// The count after "observations stored" in a progress line.
fn stored_in(line: &str) -> Option<u64> {
    let rest = line.split("observations stored").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The address in the banner's "HTTP API: http://ADDR/api/v1/" line.
fn http_addr(lines: &[String]) -> Option<SocketAddr> {
    let line = lines.iter().find(|l| l.contains("HTTP API:"))?;
    let rest = line.split("http://").nth(1)?;
    rest.split('/').next()?.parse().ok()
}

/// `id password` lines of the demo's passwords file.
fn passwords(data_dir: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(data_dir.join("demo-passwords.txt"))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(id, pw)| (id.to_owned(), pw.to_owned()))
        .collect())
}

/// A citizen's app reads its own citizen's data only; the care service reads the citizens
/// who consented to it only; the analyst reads the shared store, pseudonymized.
fn every_role_sees_its_part(data_dir: &Path, http: SocketAddr) -> anyhow::Result<()> {
    let passwords = passwords(data_dir)?;
    for id in [
        "bed-001",
        "app-citizen-001",
        "care-demo",
        "analyst-demo",
        "operator-demo",
    ] {
        assert!(passwords.contains_key(id), "{id} in the passwords file");
    }
    let get = |id: &str, path: &str| -> anyhow::Result<(u16, Vec<serde_json::Value>)> {
        let (status, _, body) = http_exchange(http, "GET", path, Some((id, &passwords[id])), None)?;
        let rows = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        Ok((status, rows))
    };
    let heart_rate = "/api/v1/observations?metric=heart_rate";
    let citizens = |rows: &[serde_json::Value]| -> BTreeSet<String> {
        rows.iter()
            .filter_map(|r| r["citizen"].as_str().map(str::to_owned))
            .collect()
    };
    let own = eventually(Duration::from_secs(20), || {
        let (status, rows) = get("app-citizen-001", heart_rate)?;
        assert_eq!(status, 200);
        Ok((!rows.is_empty()).then_some(rows))
    })?;
    assert_eq!(citizens(&own), BTreeSet::from(["citizen-001".to_owned()]));
    let other = format!("{heart_rate}&citizen=citizen-002");
    assert_eq!(get("app-citizen-001", &other)?.0, 403);

    let (status, cared) = get("care-demo", heart_rate)?;
    assert_eq!(status, 200);
    let followed = citizens(&cared);
    assert!(!followed.is_empty(), "the care service sees its citizens");
    assert!(
        followed.iter().all(|c| c.as_str() <= "citizen-010"),
        "only the first half consented to care: {followed:?}"
    );
    let without = format!("{heart_rate}&citizen=citizen-020");
    assert_eq!(get("care-demo", &without)?.0, 403);

    let shared = format!("{heart_rate}&store=shared");
    let pseudonyms = eventually(Duration::from_secs(20), || {
        let (status, rows) = get("analyst-demo", &shared)?;
        assert_eq!(status, 200);
        Ok((!rows.is_empty()).then(|| citizens(&rows)))
    })?;
    assert!(
        pseudonyms.len() <= 10 && pseudonyms.iter().all(|p| !p.starts_with("citizen-")),
        "research consent from every second citizen, pseudonymized: {pseudonyms:?}"
    );
    assert_eq!(get("analyst-demo", heart_rate)?.0, 403);
    Ok(())
}
