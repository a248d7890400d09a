//! The README's run command: `kenko demo` starts a hub with simulated devices of every kind,
//! stores their telemetry — every metric of the catalogue — prints progress and stops cleanly
//! on Ctrl-C.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{eventually, query, signal, wait_timeout, KENKO};

#[test]
fn demo_stores_simulated_telemetry_and_stops_on_ctrl_c() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let mut child = Command::new(KENKO)
        .args([
            "demo",
            "--mqtt",
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
    // Collection consent is recorded once per citizen, not once per device.
    let records =
        kenko_ingest::consent::ConsentRegistry::open_read_only(&data_dir.join("registry.db"))?
            .list(None)?;
    let mut citizens: Vec<&str> = records.iter().map(|r| r.change.citizen.as_str()).collect();
    let recorded = citizens.len();
    citizens.sort_unstable();
    citizens.dedup();
    assert_eq!(
        recorded,
        citizens.len(),
        "one record per citizen: {records:?}"
    );
    assert!(recorded >= 20, "{recorded} citizens consented");
    Ok(())
}

/// The count after "observations stored" in a progress line.
fn stored_in(line: &str) -> Option<u64> {
    let rest = line.split("observations stored").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}
