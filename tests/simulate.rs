//! `kenko simulate` against a running hub: every simulated device's telemetry is stored.

mod common;

use std::collections::HashSet;
use std::process::Command;

use common::Hub;

#[test]
fn simulate_publishes_for_every_device_and_reports_acknowledgements() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &common::config_with_devices(4))?;
    let passwords = common::password_file(dir.path(), 4)?;
    let output = Command::new(common::KENKO)
        .args(["simulate", "--broker", &hub.addr.to_string()])
        .arg("--passwords")
        .arg(&passwords)
        .args(["--devices", "4", "--duration", "2", "--rate", "5"])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let done = stdout
        .lines()
        .find(|l| l.starts_with("done in"))
        .expect("summary line");
    let numbers: Vec<u64> = done
        .split([':', ','])
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    let (published, acked) = (numbers[0], numbers[1]);
    assert!(published >= 20, "4 devices at 5 Hz for 2 s: {done}");
    assert_eq!(published, acked, "every reading acknowledged: {done}");

    let rows = hub.query(&["--metric", "bed_occupancy"])?;
    let devices: HashSet<&str> = rows.iter().filter_map(|r| r["device"].as_str()).collect();
    assert_eq!(devices.len(), 4, "{devices:?}");
    assert_eq!(
        rows.len() as u64,
        acked,
        "one occupancy observation per acknowledged message"
    );
    hub.terminate()
}
