//! End to end: a store file deleted, moved away or truncated under a running hub, while
//! devices publish at QoS 1. Acknowledgements stop within one batch, the fault is logged,
//! counted on /metrics and reported by /readyz; after the file is back, or after a restart
//! that rebuilds the store from the write-ahead log, every acknowledged reading is stored. A
//! registry that lost audit entries is refused at start.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use common::fleet::{Fleet, Times};
use common::{config_with_devices, eventually, now_ms, Hub, KENKO};
use kenko_devices::Metric;

/// One test at a time: each drives a hub under load.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DEVICES: usize = 3;
/// Event times of each device start `SPAN_MS` after the previous one's and step by
/// `STEP_MS` per message, so that every reading has an event time of its own, also in the
/// pseudonymized store.
const SPAN_MS: i64 = 3 * 3_600_000;
const STEP_MS: i64 = 10;

fn config() -> String {
    config_with_devices(DEVICES) + "[http]\nlisten = \"127.0.0.1:0\"\n"
}

fn citizens() -> Vec<String> {
    (1..=DEVICES).map(|i| format!("citizen-{i:03}")).collect()
}

/// Devices bed-001 … publishing heart rates, each reading with an event time of its own.
fn start_fleet(addr: SocketAddr) -> (Fleet, Times) {
    let times = Times {
        base_ms: now_ms() - 12 * 3_600_000,
        device_span_ms: SPAN_MS,
        step_ms: STEP_MS,
    };
    let devices: Vec<String> = (1..=DEVICES).map(|i| format!("bed-{i:03}")).collect();
    (Fleet::start(addr, &devices, Duration::ZERO, times), times)
}

/// Stops publishing; every acknowledged reading as (device, event time).
async fn stop_fleet(fleet: Fleet, times: Times) -> BTreeSet<(String, i64)> {
    let acked = fleet.stop().await;
    acked
        .into_iter()
        .flat_map(|(device, seqs)| {
            let index = device
                .strip_prefix("bed-")
                .and_then(|n| n.parse::<usize>().ok())
                .map_or(0, |n| n - 1);
            seqs.into_iter()
                .map(move |seq| (device.clone(), times.at(index, seq)))
        })
        .collect()
}

/// (device, event time) of the heart rates in `personal.db`.
fn personal(data_dir: &Path) -> anyhow::Result<BTreeSet<(String, i64)>> {
    let rows = common::store::stored(&data_dir.join("personal.db"), Metric::HeartRate)?;
    Ok(rows.into_iter().map(|r| (r.device, r.time_ms)).collect())
}

/// Event times of the heart rates in `shared.db` (pseudonymized: no device).
fn shared(data_dir: &Path) -> anyhow::Result<BTreeSet<i64>> {
    let rows = common::store::stored(&data_dir.join("shared.db"), Metric::HeartRate)?;
    Ok(rows.into_iter().map(|r| r.time_ms).collect())
}

fn read_only(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    Ok(rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?)
}

/// Waits until `personal.db` (and `shared.db` when `research`) holds every acknowledged
/// reading.
fn all_stored(
    data_dir: &Path,
    acked: &BTreeSet<(String, i64)>,
    research: bool,
) -> anyhow::Result<()> {
    let mut last = String::new();
    let result = eventually(Duration::from_secs(30), || {
        let have = personal(data_dir)?;
        let missing: Vec<_> = acked.difference(&have).collect();
        let shared_missing = if research {
            let times = shared(data_dir)?;
            acked.iter().filter(|(_, t)| !times.contains(t)).count()
        } else {
            0
        };
        last = format!(
            "{} of {} acknowledged readings missing from personal.db (first {:?}), {shared_missing} from shared.db",
            missing.len(),
            acked.len(),
            missing.first()
        );
        Ok((missing.is_empty() && shared_missing == 0).then_some(()))
    });
    result.with_context(|| last.clone())
}

/// One HTTP GET; status and body as text.
fn get(addr: SocketAddr, path: &str, principal: Option<&str>) -> anyhow::Result<(u16, String)> {
    common::http_text(addr, "GET", path, principal, None)
}

/// The value of metric `name` on /metrics.
fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<u64> {
    let (status, text) = get(addr, "/metrics", Some("operator-1"))?;
    anyhow::ensure!(status == 200, "GET /metrics: {status} {text}");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .with_context(|| format!("no {name} in /metrics"))?;
    Ok(line.trim().parse()?)
}

/// Publishes until `at_least` messages are acknowledged, does `damage`, and checks that
/// acknowledgements stop within one batch (each device has one message in flight) and that
/// the fault is logged, counted and reported naming `file`.
async fn damage_under_load(
    hub: &Hub,
    fleet: &Fleet,
    file: &str,
    damage: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let http = hub.http_addr.context("HTTP API announced")?;
    assert_eq!(get(http, "/readyz", None)?.0, 200, "ready before");
    eventually(Duration::from_secs(30), || {
        Ok((fleet.total() >= 300).then_some(()))
    })?;
    let before = fleet.total();
    damage(&hub.data_dir)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = fleet.total();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fleet.total(), after, "acknowledgements stopped");
    assert!(
        after - before <= 2 * DEVICES,
        "at most one batch acknowledged after the damage: {} were",
        after - before
    );
    let (status, body) = get(http, "/readyz", None)?;
    assert_eq!(status, 503, "{body}");
    let reason: serde_json::Value = serde_json::from_str(&body)?;
    let reason = reason["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(file), "readyz names {file}: {reason}");
    assert!(!reason.contains('/'), "readyz shows no path: {reason}");
    assert_eq!(get(http, "/healthz", None)?.0, 200, "alive all the same");
    let (status, body) = get(
        http,
        "/api/v1/observations?metric=heart_rate",
        Some("operator-1"),
    )?;
    assert_eq!(status, 503, "no audited read while a store is lost: {body}");
    assert!(metric(http, "kenko_ingest_store_faults_total")? >= 1);
    assert_eq!(metric(http, "kenko_ingest_stores_unavailable")?, 1);
    let logged = hub.stderr_lines();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("store file at fault") && l.contains(file)),
        "the fault is logged: {logged:?}"
    );
    Ok(())
}

fn truncate(path: &Path) -> anyhow::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn personal_db_deleted_under_load_stops_acks_and_a_restart_rebuilds_it() -> anyhow::Result<()>
{
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let (fleet, times) = start_fleet(hub.addr);
    damage_under_load(&hub, &fleet, "personal.db", |data| {
        Ok(std::fs::remove_file(data.join("personal.db"))?)
    })
    .await?;
    let acked = stop_fleet(fleet, times).await;
    let (config_path, data_dir) = (hub.config.clone(), hub.data_dir.clone());
    tokio::task::block_in_place(|| hub.terminate())?;
    assert!(!data_dir.join("personal.db").exists(), "not written anew");

    let hub = Hub::start_with(dir.path(), &config_path)?;
    tokio::task::block_in_place(|| all_stored(&data_dir, &acked, false))?;
    let http = hub.http_addr.context("HTTP API")?;
    assert_eq!(get(http, "/readyz", None)?.0, 200);
    tokio::task::block_in_place(|| hub.terminate())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn personal_db_moved_away_and_back_resumes_without_a_restart() -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let (fleet, times) = start_fleet(hub.addr);
    let (path, aside) = (
        hub.data_dir.join("personal.db"),
        dir.path().join("personal.db.aside"),
    );
    damage_under_load(&hub, &fleet, "personal.db", |_| {
        Ok(std::fs::rename(&path, &aside)?)
    })
    .await?;
    let stalled = fleet.total();
    std::fs::rename(&aside, &path)?;
    eventually(Duration::from_secs(10), || {
        Ok((fleet.total() > stalled + 100).then_some(()))
    })?;
    let http = hub.http_addr.context("HTTP API")?;
    assert_eq!(get(http, "/readyz", None)?.0, 200, "ready again");
    assert_eq!(metric(http, "kenko_ingest_stores_unavailable")?, 0);
    let acked = stop_fleet(fleet, times).await;
    let data_dir = hub.data_dir.clone();
    tokio::task::block_in_place(|| all_stored(&data_dir, &acked, false))?;
    // With no traffic, /readyz looks for itself.
    std::fs::rename(&path, &aside)?;
    assert_eq!(get(http, "/readyz", None)?.0, 503, "idle, file away");
    std::fs::rename(&aside, &path)?;
    assert_eq!(get(http, "/readyz", None)?.0, 200, "idle, file back");
    tokio::task::block_in_place(|| hub.terminate())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_db_truncated_under_load_stops_acks_and_a_restart_rebuilds_it() -> anyhow::Result<()>
{
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir()?;
    let citizens = citizens();
    let names: Vec<&str> = citizens.iter().map(String::as_str).collect();
    common::consent(&dir.path().join("data"), "grant", &names, "research")?;
    let hub = Hub::start(dir.path(), &config())?;
    let (fleet, times) = start_fleet(hub.addr);
    damage_under_load(&hub, &fleet, "shared.db", |data| {
        truncate(&data.join("shared.db"))
    })
    .await?;
    let acked = stop_fleet(fleet, times).await;
    let (config_path, data_dir) = (hub.config.clone(), hub.data_dir.clone());
    tokio::task::block_in_place(|| hub.terminate())?;

    let hub = Hub::start_with(dir.path(), &config_path)?;
    tokio::task::block_in_place(|| all_stored(&data_dir, &acked, true))?;
    let aside = std::fs::read_dir(&data_dir)?
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("shared.db.damaged-")
        });
    assert!(aside, "the file damaged in place was set aside, not opened");
    tokio::task::block_in_place(|| hub.terminate())
}

/// `kenko serve` run to its refusal; its stderr.
fn refused_start(config: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new(KENKO)
        .args(["serve", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--mqtt", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()?;
    anyhow::ensure!(
        !output.status.success(),
        "kenko serve started: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_db_truncated_under_load_is_refused_at_start_until_restored() -> anyhow::Result<()>
{
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let (fleet, times) = start_fleet(hub.addr);
    let backup: PathBuf = dir.path().join("registry-backup.db");
    let registry = hub.data_dir.join("registry.db");
    rusqlite::Connection::open(&registry)?.execute("VACUUM INTO ?1", [backup.to_string_lossy()])?;
    damage_under_load(&hub, &fleet, "registry.db", |_| truncate(&registry)).await?;
    let acked = stop_fleet(fleet, times).await;
    let (config_path, data_dir) = (hub.config.clone(), hub.data_dir.clone());
    tokio::task::block_in_place(|| hub.terminate())?;

    let refusal = refused_start(&config_path, &data_dir, &[])?;
    assert!(
        refusal.contains("registry.db fails its audit check")
            && refusal.contains("audit-head says the log reaches entry"),
        "the audit mismatch is named: {refusal}"
    );

    for journal in ["registry.db-wal", "registry.db-shm"] {
        let _ = std::fs::remove_file(data_dir.join(journal));
    }
    std::fs::copy(&backup, &registry)?;
    let hub = Hub::start_with(dir.path(), &config_path)?;
    tokio::task::block_in_place(|| all_stored(&data_dir, &acked, false))?;
    tokio::task::block_in_place(|| hub.terminate())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_the_log_cannot_rebuild_is_refused_until_the_loss_is_accepted() -> anyhow::Result<()>
{
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir()?;
    // Small segments: the log releases what the sinks have stored.
    let config = config() + "[wal]\nsegment_bytes = 4096\nmax_bytes = 1048576\n";
    let hub = Hub::start(dir.path(), &config)?;
    let (fleet, _) = start_fleet(hub.addr);
    eventually(Duration::from_secs(30), || {
        Ok((fleet.total() >= 2_000).then_some(()))
    })?;
    fleet.stop().await;
    let (config_path, data_dir) = (hub.config.clone(), hub.data_dir.clone());
    tokio::task::block_in_place(|| hub.terminate())?;
    std::fs::remove_file(data_dir.join("personal.db"))?;

    let refusal = refused_start(&config_path, &data_dir, &[])?;
    assert!(
        refusal.contains("personal.db is missing or empty")
            && refusal.contains("--accept-data-loss"),
        "says what was lost and how to accept it: {refusal}"
    );
    let verify = |data: &Path| -> anyhow::Result<String> {
        let out = std::process::Command::new(KENKO)
            .args(["audit", "verify", "--data-dir"])
            .arg(data)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let audited_before = verify(&data_dir)?;

    // Accepted: the hub starts, and the acceptance is in the audit log.
    let mut child = std::process::Command::new(KENKO)
        .args(["serve", "--config"])
        .arg(&config_path)
        .arg("--data-dir")
        .arg(&data_dir)
        .args([
            "--mqtt",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--accept-data-loss",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    // Read to the last line of the start, and keep the pipe open until the hub exits.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok);
    let printed: Vec<String> = lines
        .by_ref()
        .take_while(|l| !l.starts_with("stop with"))
        .collect();
    common::signal(child.id(), "TERM")?;
    let status = common::wait_timeout(&mut child, Duration::from_secs(30))?;
    drop(lines);
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with("kenko serve: MQTT on"))
            && status.success(),
        "started with --accept-data-loss: {status} {printed:?}"
    );
    assert!(
        audited_after_contains(&verify(&data_dir)?, &audited_before),
        "the acceptance is audited and the log still verifies: {audited_before} / {}",
        verify(&data_dir)?
    );
    let conn = read_only(&data_dir.join("registry.db"))?;
    let accepted: i64 = conn.query_row(
        "SELECT count(*) FROM audit WHERE kind = 'store.data_loss_accepted' AND body LIKE '%personal.db%'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(accepted, 1);
    Ok(())
}

/// Whether `after` is a verified audit log that differs from `before` (it grew).
fn audited_after_contains(after: &str, before: &str) -> bool {
    after.starts_with("audit log verified") && after != before
}
