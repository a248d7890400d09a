//! `kenko simulate` against a running hub: every simulated device's telemetry is stored, in
//! each device's own payload profile, exactly as many readings as the simulator says it sent.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::Hub;

#[test]
fn simulate_publishes_for_every_device_and_reports_acknowledgements() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &common::config_for_simulation(4))?;
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
    assert_eq!(published, acked, "every message acknowledged: {done}");

    // "device bed-002 bed-json-v2: 9 good messages, 10 samples, 50 readings, 0 duplicates, 0 faults"
    let mut reported: HashMap<String, u64> = HashMap::new();
    for line in stdout.lines().filter(|l| l.starts_with("device ")) {
        let id = line.split_whitespace().nth(1).expect("id").to_owned();
        let readings = line
            .split(", ")
            .find(|part| part.ends_with(" readings"))
            .and_then(|part| part.split_whitespace().next()?.parse().ok())
            .expect("readings count");
        reported.insert(id, readings);
    }
    assert_eq!(reported.len(), 4, "{stdout}");
    hub.terminate()?;

    let db = rusqlite::Connection::open(dir.path().join("data/personal.db"))?;
    let mut stmt = db.prepare(
        "SELECT s.device, count(*) FROM observations o JOIN series s ON s.id = o.series GROUP BY s.device",
    )?;
    let stored: HashMap<String, u64> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    assert_eq!(
        stored, reported,
        "stored readings per device equal what each sent, whatever its profile"
    );
    Ok(())
}
