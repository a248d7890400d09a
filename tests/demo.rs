//! The README's run command: `kenko demo` starts a hub with simulated devices, stores their
//! telemetry, prints progress and stops cleanly on Ctrl-C.

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
            "3",
            "--rate",
            "5",
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
        3,
        "every simulated device reports: {devices:?}"
    );

    signal(child.id(), "INT")?;
    let status = wait_timeout(&mut child, Duration::from_secs(30))?;
    assert!(status.success(), "demo exits cleanly on Ctrl-C: {status}");
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
        seen.push(line);
    }
    assert!(seen.iter().any(|l| l.contains("hub stopped")), "{seen:?}");
    // Everything the simulator had acknowledged is stored.
    let acked_line = seen
        .iter()
        .find(|l| l.starts_with("simulator stopped"))
        .expect("simulator summary");
    let acked: usize = acked_line
        .split(", ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("acknowledged count");
    let stored = query(&data_dir, &["--metric", "bed_occupancy"])?.len();
    assert!(
        stored >= acked,
        "{stored} occupancy rows for {acked} acknowledged messages"
    );
    Ok(())
}

/// The count after "observations stored" in a progress line.
fn stored_in(line: &str) -> Option<u64> {
    let rest = line.split("observations stored").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}
