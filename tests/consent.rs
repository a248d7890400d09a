//! End to end: citizens' consent decides what is stored and who sees it live; withdrawal
//! takes effect at once; erasure empties the personal store; the audit log verifies.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mqtt311::until_suback;
use common::Hub;
use kenko_ingest::consent::{ConsentChange, ConsentRegistry, Purpose};
use rumqttc::{AsyncClient, Event, Incoming, QoS};

/// Waits until the store holds no heart rate of `citizen` (10 s at most).
fn until_no_heart_rate_of(hub: &Hub, citizen: &str) -> anyhow::Result<()> {
    common::eventually(Duration::from_secs(10), || {
        Ok(hub
            .query(&["--metric", "heart_rate", "--citizen", citizen])?
            .is_empty()
            .then_some(()))
    })
}

/// Devices bed-001/002, care service st-luke, live republishing on.
fn config() -> String {
    format!(
        "{}{}[ingest]\nlive_republish = true\nbatch_linger_ms = 2\n",
        common::config_with_devices(2).replace("[ingest]\nbatch_linger_ms = 2\n", ""),
        common::principal("st-luke", &["care"])
    )
}

/// Publishes a reading from `device` every 10 ms until `stop`; returns the client.
async fn keep_publishing(
    hub: &Hub,
    device: &'static str,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (client, mut eventloop) = hub.device(device);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    tokio::spawn(async move {
        let mut t = common::now_ms() - 3_600_000;
        while !stop.load(Ordering::Relaxed) {
            t += 1000;
            let body = format!(r#"{{"ts":{t},"hr":62}}"#);
            let _ = client
                .publish(
                    format!("devices/{device}/telemetry"),
                    QoS::AtLeastOnce,
                    false,
                    body,
                )
                .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    Ok(())
}

type Seen = Arc<Mutex<Vec<(String, Instant)>>>;

/// Serializes the tests that measure or make load.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn care_subscriber(hub: &Hub) -> anyhow::Result<(AsyncClient, Seen)> {
    let (client, mut eventloop) = hub.device("st-luke");
    client
        .subscribe("citizens/+/observations/+", QoS::AtMostOnce)
        .await?;
    let ack = until_suback(&mut eventloop).await?;
    anyhow::ensure!(
        !matches!(ack.return_codes[0], rumqttc::SubscribeReasonCode::Failure),
        "care services may subscribe to observations"
    );
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Incoming::Publish(p)) = event {
                sink.lock()
                    .expect("lock")
                    .push((p.topic.clone(), Instant::now()));
            }
        }
    });
    Ok((client, seen))
}

fn from(seen: &Seen, citizen: &str) -> Vec<Instant> {
    let prefix = format!("citizens/{citizen}/");
    seen.lock()
        .expect("lock")
        .iter()
        .filter(|(t, _)| t.starts_with(&prefix))
        .map(|(_, at)| *at)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn care_consent_opens_and_withdrawal_closes_live_deliveries_at_once() -> anyhow::Result<()> {
    // Not beside the 100-device load test: its timings would be that test's.
    let _serial = HEAVY.lock().await;
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let data = hub.data_dir.clone();
    let (_client, seen) = care_subscriber(&hub).await?;
    let stop = Arc::new(AtomicBool::new(false));
    keep_publishing(&hub, "bed-001", stop.clone()).await?;
    keep_publishing(&hub, "bed-002", stop.clone()).await?;

    // No care consent yet: collect alone stores, but shares with nobody.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(from(&seen, "citizen-001").is_empty() && from(&seen, "citizen-002").is_empty());

    let mut delays = Vec::new();
    for trial in 0..20 {
        let care = ["--grantee", "st-luke", "--types", "heart_rate"];
        common::consent_with(&data, "grant", &["citizen-001"], "care", &care)?;
        let before = from(&seen, "citizen-001").len();
        common::eventually(Duration::from_secs(10), || {
            Ok((from(&seen, "citizen-001").len() > before + 5).then_some(()))
        })?;
        // Withdrawn through the registry directly (as the HTTP API does), and measured from
        // the moment the record is committed: how long the hub takes to act on it.
        let mut registry = ConsentRegistry::open(&data.join("registry.db"))?;
        registry.record(
            ConsentChange {
                citizen: "citizen-001".into(),
                grantee: "st-luke".into(),
                purpose: Purpose::Care,
                data_types: vec!["heart_rate".into()],
                valid_from_ms: None,
                valid_until_ms: None,
                source: "test".into(),
                granted: false,
                erase: false,
            },
            common::now_ms(),
        )?;
        let revoking = Instant::now();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let last = *from(&seen, "citizen-001").iter().max().expect("deliveries");
        delays.push(last.saturating_duration_since(revoking));
        let after = from(&seen, "citizen-001").len();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            from(&seen, "citizen-001").len(),
            after,
            "trial {trial}: deliveries stopped"
        );
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        from(&seen, "citizen-002").is_empty(),
        "citizen-002 never consented to care"
    );
    delays.sort();
    let p50 = delays[delays.len() / 2];
    let max = delays[delays.len() - 1];
    println!(
        "withdrawal to last delivery over {} trials (from the commit of the withdrawal): p50 {} ms, max {} ms",
        delays.len(),
        p50.as_millis(),
        max.as_millis()
    );
    // The target (100 ms) is a figure this test prints; the bound asserted here is generous
    // so that a loaded machine does not make it fail, yet a withdrawal that took effect only
    // at the next reconnect or reload would.
    assert!(max < Duration::from_millis(500), "delays {delays:?}");
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_collect_consent_nothing_is_stored_anywhere() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_without_consent(dir.path(), &config())?;
    common::consent(&hub.data_dir, "grant", &["citizen-002"], "collect")?;
    let t = common::now_ms() - 60_000;
    for device in ["bed-001", "bed-002"] {
        let out = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &hub.port().to_string(),
                "-V",
                "mqttv5",
                "-q",
                "1",
            ])
            .args(["-i", device, "-u", device, "-P", &common::password(device)])
            .args(["-t", &format!("devices/{device}/telemetry")])
            .args(["-m", &format!(r#"{{"ts":{t},"hr":70,"occ":true}}"#)])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if device == "bed-001" {
            // PUBACK 0x87 with the reason string, which mosquitto_pub prints.
            assert!(
                stderr.contains("Not authorized") && stderr.contains("not consented"),
                "bed-001's citizen has no collect consent; mosquitto_pub said: {stderr}"
            );
        } else {
            assert!(out.status.success() && stderr.is_empty(), "{stderr}");
        }
    }
    let rows = hub.query_at_least(1, &["--metric", "heart_rate"])?;
    let citizens: Vec<&str> = rows.iter().filter_map(|r| r["citizen"].as_str()).collect();
    assert_eq!(citizens, vec!["citizen-002"], "{rows:?}");
    let db = rusqlite::Connection::open(hub.data_dir.join("deadletter.db"))?;
    let letters: i64 = db.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))?;
    assert_eq!(letters, 0, "a refused payload is kept nowhere");
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_empties_the_personal_store_and_the_audit_log_verifies() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let stop = Arc::new(AtomicBool::new(false));
    keep_publishing(&hub, "bed-001", stop.clone()).await?;
    keep_publishing(&hub, "bed-002", stop.clone()).await?;
    common::eventually(Duration::from_secs(10), || {
        Ok((hub
            .query(&["--metric", "heart_rate", "--citizen", "citizen-001"])?
            .len()
            > 20)
            .then_some(()))
    })?;
    common::consent_with(
        &hub.data_dir,
        "revoke",
        &["citizen-001"],
        "collect",
        &["--erase"],
    )?;
    until_no_heart_rate_of(&hub, "citizen-001")?;
    // Still empty while the device keeps publishing: its data is refused now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(hub
        .query(&["--metric", "heart_rate", "--citizen", "citizen-001"])?
        .is_empty());
    assert!(!hub
        .query(&["--metric", "heart_rate", "--citizen", "citizen-002"])?
        .is_empty());
    stop.store(true, Ordering::Relaxed);
    let db = rusqlite::Connection::open(hub.data_dir.join("personal.db"))?;
    let series: i64 = db.query_row(
        "SELECT count(*) FROM series WHERE citizen = 'citizen-001'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(series, 0, "no row of the citizen is left");

    let verify = Command::new(common::KENKO)
        .args(["audit", "verify", "--data-dir"])
        .arg(&hub.data_dir)
        .output()?;
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{text}");
    let registry = rusqlite::Connection::open(hub.data_dir.join("registry.db"))?;
    let kinds: Vec<String> = registry
        .prepare("SELECT kind FROM audit ORDER BY seq")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    assert_eq!(
        kinds,
        vec![
            "consent.grant",
            "consent.grant",
            "consent.revoke",
            "erasure.done"
        ]
    );

    // Tampering is caught.
    registry.execute(
        "UPDATE audit SET body = replace(body, 'citizen-001', 'citizen-009') WHERE seq = 1",
        [],
    )?;
    let verify = Command::new(common::KENKO)
        .args(["audit", "verify", "--data-dir"])
        .arg(&hub.data_dir)
        .output()?;
    assert!(!verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stdout).contains("entry 1 was modified"));
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn research_consent_fills_the_shared_store_with_pseudonyms_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    common::consent(&hub.data_dir, "grant", &["citizen-001"], "research")?;
    let stop = Arc::new(AtomicBool::new(false));
    keep_publishing(&hub, "bed-001", stop.clone()).await?;
    keep_publishing(&hub, "bed-002", stop.clone()).await?;
    let shared = || hub.query(&["--store", "shared", "--metric", "heart_rate"]);
    common::eventually(Duration::from_secs(10), || {
        Ok((shared()?.len() > 20).then_some(()))
    })?;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = shared()?;
    let who: std::collections::HashSet<&str> =
        rows.iter().filter_map(|r| r["citizen"].as_str()).collect();
    assert_eq!(
        who.len(),
        1,
        "only citizen-001 consented to research: {who:?}"
    );
    let pseudonym = *who.iter().next().expect("one");
    assert!(
        pseudonym.starts_with("p-") && pseudonym.len() == 34,
        "{pseudonym}"
    );
    assert!(rows.iter().all(|r| r["device"] == "-"));
    // Both citizens are in the personal store (collect consent).
    let personal = hub.query(&["--metric", "heart_rate"])?;
    let identified: std::collections::HashSet<&str> = personal
        .iter()
        .filter_map(|r| r["citizen"].as_str())
        .collect();
    assert_eq!(identified.len(), 2);
    hub.terminate()?;

    // No raw identifier anywhere in the shared store's files.
    for file in ["shared.db", "shared.db-wal"] {
        let Ok(bytes) = std::fs::read(dir.path().join("data").join(file)) else {
            continue;
        };
        for needle in ["citizen-", "bed-0"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{file} contains {needle}"
            );
        }
    }
    Ok(())
}

#[test]
fn toggling_consent_of_100_citizens_under_load_stores_nothing_from_periods_without_it(
) -> anyhow::Result<()> {
    let _serial = HEAVY.blocking_lock();
    use kenko_ingest::consent::HUB;
    use rand::{Rng, SeedableRng};

    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &common::config_for_simulation(100))?;
    let passwords = common::password_file(dir.path(), 100)?;
    let mut sim = Command::new(common::KENKO)
        .args(["simulate", "--broker", &hub.addr.to_string()])
        .args(["--devices", "100", "--duration", "12", "--rate", "10"])
        .arg("--passwords")
        .arg(&passwords)
        .stdout(std::process::Stdio::null())
        .spawn()?;

    // Flip a random citizen's collect consent every 10 ms; remember when each change was
    // started and when it was committed.
    let mut registry = ConsentRegistry::open(&hub.data_dir.join("registry.db"))?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut granted = [true; 100];
    // Per citizen: (revoke committed, next grant started) in epoch ms.
    let mut without: Vec<Vec<(i64, i64)>> = vec![Vec::new(); 100];
    let now = || jiff::Timestamp::now().as_millisecond();
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let mut changes = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let i = rng.random_range(0..100);
        let citizen = format!("citizen-{:03}", i + 1);
        let before = now();
        registry.record(
            ConsentChange {
                citizen,
                grantee: HUB.into(),
                purpose: Purpose::Collect,
                data_types: Vec::new(),
                valid_from_ms: None,
                valid_until_ms: None,
                source: "toggle".into(),
                granted: !granted[i],
                erase: false,
            },
            before,
        )?;
        let after = now();
        if granted[i] {
            without[i].push((after, i64::MAX));
        } else if let Some(open) = without[i].last_mut() {
            open.1 = before;
        }
        granted[i] = !granted[i];
        changes += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    anyhow::ensure!(
        common::wait_timeout(&mut sim, Duration::from_secs(30))?.success(),
        "simulator failed"
    );
    hub.terminate()?;

    let db = rusqlite::Connection::open(dir.path().join("data/personal.db"))?;
    let mut stmt = db.prepare(
        "SELECT s.citizen, o.received_ms FROM observations o JOIN series s ON s.id = o.series",
    )?;
    let rows: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut violations = Vec::new();
    for (citizen, received) in &rows {
        let i: usize = citizen.trim_start_matches("citizen-").parse::<usize>()? - 1;
        if without[i]
            .iter()
            .any(|&(from, to)| *received > from && *received < to)
        {
            violations.push((citizen.clone(), *received));
        }
    }
    let periods: usize = without.iter().map(Vec::len).sum();
    println!(
        "{changes} consent changes, {periods} periods without consent, {} observations stored, {} stored in such periods",
        rows.len(),
        violations.len()
    );
    assert!(
        periods > 100 && rows.len() > 2_000,
        "the test exercised something: {periods} periods, {} rows",
        rows.len()
    );
    assert!(
        violations.is_empty(),
        "{:?}",
        &violations[..violations.len().min(10)]
    );
    Ok(())
}

/// Erasure reaches the InfluxDB sink too. VictoriaMetrics (the real server the suite runs)
/// accepts InfluxDB's writes but has no delete API: `kenko consent revoke --erase` says so,
/// and the audit log records the erasure there as unsupported, with the server's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_says_when_the_influxdb_server_cannot_delete() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = common::vm::VictoriaMetrics::start(&dir.path().join("vm"))?;
    let config = format!(
        "{}[influxdb]\nurl = \"{}\"\norg = \"city\"\nbatch_age_ms = 100\ntimeout_ms = 5000\n",
        config(),
        vm.url()
    );
    let hub = Hub::start(dir.path(), &config)?;
    let stop = Arc::new(AtomicBool::new(false));
    keep_publishing(&hub, "bed-001", stop.clone()).await?;
    let series = common::eventually(Duration::from_secs(20), || {
        let series = vm.export("kenko_heart_rate")?;
        Ok((!series.is_empty()).then_some(series))
    })?;
    assert!(
        series
            .iter()
            .all(|s| s.labels.get("loinc").map(String::as_str) == Some("8867-4")),
        "every point carries the LOINC code of heart rate as a tag: {:?}",
        series.iter().map(|s| &s.labels).collect::<Vec<_>>()
    );
    // The sink asks the server once whether it can delete, and notes the answer.
    let registry_path = hub.data_dir.join("registry.db");
    common::eventually(Duration::from_secs(20), || {
        let support = ConsentRegistry::open_read_only(&registry_path)?.erasure_support()?;
        Ok((!support.is_empty()).then_some(()))
    })?;
    let said = common::consent_with(
        &hub.data_dir,
        "revoke",
        &["citizen-001"],
        "collect",
        &["--erase"],
    )?;
    assert!(
        said.contains(&format!("influxdb at {} has no delete API", vm.url()))
            && said.contains("unsupported path"),
        "{said}"
    );
    stop.store(true, Ordering::Relaxed);
    let how = common::eventually(Duration::from_secs(20), || {
        let registry = ConsentRegistry::open_read_only(&registry_path)?;
        let request = registry
            .list(Some("citizen-001"))?
            .into_iter()
            .find(|c| c.change.erase)
            .expect("the request");
        Ok(registry.sink_erasure(request.id, "influxdb")?)
    })?;
    assert_eq!(how.0, "unsupported", "{how:?}");
    assert!(how.1.contains("unsupported path"), "{how:?}");
    let audit = rusqlite::Connection::open(&registry_path)?;
    let body: String = audit.query_row(
        "SELECT body FROM audit WHERE kind = 'erasure.influxdb'",
        [],
        |r| r.get(0),
    )?;
    assert!(body.contains("\"citizen\":\"citizen-001\""), "{body}");
    // The embedded store is erased all the same.
    until_no_heart_rate_of(&hub, "citizen-001")?;
    hub.terminate()
}
