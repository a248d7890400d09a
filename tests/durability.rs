//! Nothing acknowledged is lost: the write-ahead log before PUBACK, replay after SIGKILL,
//! InfluxDB (a real VictoriaMetrics) going away, a full log, and a damaged log at start.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::fleet::{missing_or_repeated, Fleet, Times};
use common::raw::{self, Conn};
use common::vm::VictoriaMetrics;
use common::{config_with_devices, eventually, now_ms, password, Hub};
use kenko_devices::Metric;

/// One heavy test at a time: each drives a hub (and a VictoriaMetrics) hard.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Event times step by this much per message from a base six hours back.
const STEP_MS: i64 = 100;

fn influx_section(url: &str, extra: &str) -> String {
    format!(
        "[influxdb]\nurl = \"{url}\"\norg = \"city\"\nbatch_age_ms = 200\nmax_backoff_ms = 1000\ntimeout_ms = 5000\n{extra}\n"
    )
}

/// Event times step by `STEP_MS` per message from `base_ms`, alike for every device.
fn times(base_ms: i64) -> Times {
    Times {
        base_ms,
        device_span_ms: 0,
        step_ms: STEP_MS,
    }
}

fn devices(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("bed-{i:03}")).collect()
}

/// (device, event time) of every heart rate in `personal.db`, with how often each is there.
fn stored(data_dir: &Path) -> anyhow::Result<HashMap<(String, i64), usize>> {
    let rows = common::store::stored(&data_dir.join("personal.db"), Metric::HeartRate)?;
    let mut out = HashMap::new();
    for row in rows {
        *out.entry((row.device, row.time_ms)).or_insert(0) += 1;
    }
    Ok(out)
}

/// The same from VictoriaMetrics' export.
fn exported(vm: &VictoriaMetrics) -> anyhow::Result<HashMap<(String, i64), usize>> {
    vm.points("kenko_heart_rate")
}

/// Every acknowledged (device, seq) as (device, event time).
fn expected(acked: &HashMap<String, Vec<u64>>, base_ms: i64) -> BTreeSet<(String, i64)> {
    common::fleet::acknowledged_points(acked, times(base_ms))
}

/// Waits until both stores hold every acknowledged point exactly once.
fn all_arrive(
    data_dir: &Path,
    vm: &VictoriaMetrics,
    want: &BTreeSet<(String, i64)>,
    limit: Duration,
) -> anyhow::Result<()> {
    let mut last = String::new();
    let result = eventually(limit, || {
        let sqlite = missing_or_repeated("SQLite", &stored(data_dir)?, want);
        let influx = missing_or_repeated("VictoriaMetrics", &exported(vm)?, want);
        match (sqlite, influx) {
            (None, None) => Ok(Some(())),
            (a, b) => {
                last = format!("{} {}", a.unwrap_or_default(), b.unwrap_or_default());
                Ok(None)
            }
        }
    });
    result.with_context(|| last.clone())
}

fn restart(dir: &Path, config: &Path, addr: SocketAddr) -> anyhow::Result<Hub> {
    let mut last = None;
    for _ in 0..20 {
        match Hub::start_on(dir, config, &addr.to_string()) {
            Ok(hub) => return Ok(hub),
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Err(last.expect("tried"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_sigkills_under_load_from_100_devices_lose_nothing_acknowledged(
) -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir()?;
    let vm = VictoriaMetrics::start(&dir.path().join("vm"))?;
    let config = config_with_devices(100) + &influx_section(&vm.url(), "");
    let mut hub = Hub::start(dir.path(), &config)?;
    let (addr, config_path, data_dir) = (hub.addr, hub.config.clone(), hub.data_dir.clone());
    let base_ms = now_ms() - 6 * 3_600_000;
    let fleet = Fleet::start(addr, &devices(100), Duration::ZERO, times(base_ms));
    let started = Instant::now();
    let mut acked_per_cycle = Vec::new();
    for cycle in 0..20u64 {
        // Kill at a different point of the load each time.
        let before = fleet.total();
        let wait = Duration::from_millis(400 + (cycle * 137) % 600);
        let deadline = Instant::now() + Duration::from_secs(30);
        tokio::time::sleep(wait).await;
        while fleet.total() < before + 100 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        acked_per_cycle.push(fleet.total() - before);
        hub.kill()?;
        hub = tokio::task::block_in_place(|| restart(dir.path(), &config_path, addr))?;
    }
    // Load goes on a little after the last restart, then stops.
    let last = fleet.total();
    eventually(Duration::from_secs(30), || {
        Ok((fleet.total() > last + 100).then_some(()))
    })?;
    let acked = fleet.stop().await;
    let want = expected(&acked, base_ms);
    let elapsed = started.elapsed();
    eprintln!(
        "sigkill cycles: 20 kills in {:.1} s, {} messages acknowledged from {} devices ({:.0}/s); per cycle {:?}",
        elapsed.as_secs_f64(),
        want.len(),
        acked.len(),
        want.len() as f64 / elapsed.as_secs_f64(),
        acked_per_cycle
    );
    assert!(
        acked_per_cycle.iter().all(|n| *n >= 100),
        "load ran in every cycle: {acked_per_cycle:?}"
    );
    assert_eq!(acked.len(), 100, "every device had messages acknowledged");
    tokio::task::block_in_place(|| all_arrive(&data_dir, &vm, &want, Duration::from_secs(90)))?;
    // Nothing is stored that no device sent.
    let sent_max: HashMap<&String, u64> = acked
        .iter()
        .map(|(d, s)| (d, s.iter().max().copied().unwrap_or(0)))
        .collect();
    for (device, t) in stored(&data_dir)?.keys() {
        let seq = (t - base_ms) / STEP_MS;
        let max = sent_max.get(device).copied().unwrap_or(0) as i64;
        assert!(seq <= max + 1, "{device} seq {seq} stored but never sent");
    }
    tokio::task::block_in_place(|| hub.terminate())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn influxdb_down_for_a_minute_under_load_loses_nothing() -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().await;
    let outage = Duration::from_secs(
        std::env::var("KENKO_TEST_OUTAGE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let dir = tempfile::tempdir()?;
    let mut vm = VictoriaMetrics::start(&dir.path().join("vm"))?;
    let config = config_with_devices(20) + &influx_section(&vm.url(), "");
    let hub = Hub::start(dir.path(), &config)?;
    let base_ms = now_ms() - 6 * 3_600_000;
    let fleet = Fleet::start(
        hub.addr,
        &devices(20),
        Duration::from_millis(10),
        times(base_ms),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked_before = fleet.total();
    let written_before = tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(10), || {
            let n = exported(&vm)?.len();
            Ok((n >= acked_before).then_some(n))
        })
    })?;
    vm.stop()?;
    let down_at = Instant::now();
    let acked_at_stop = fleet.total();
    tokio::time::sleep(outage).await;
    let during = fleet.total() - acked_at_stop;
    let ingest_rate = during as f64 / down_at.elapsed().as_secs_f64();
    // The load stops as the server returns; what waits in the log then drains.
    let acked = fleet.stop().await;
    let want = expected(&acked, base_ms);
    let backlog = want.len() - written_before.min(want.len());
    vm.resume()?;
    let resumed = Instant::now();
    tokio::task::block_in_place(|| {
        all_arrive(&hub.data_dir, &vm, &want, Duration::from_secs(120))
    })?;
    let drain = resumed.elapsed();
    eprintln!(
        "influxdb outage: {:.0} s down, {during} messages acknowledged meanwhile ({ingest_rate:.0}/s); backlog of {backlog} points delivered {:.1} s after the server returned ({:.0} points/s, including the server's start)",
        outage.as_secs_f64(),
        drain.as_secs_f64(),
        backlog as f64 / drain.as_secs_f64()
    );
    assert!(
        during as f64 >= outage.as_secs_f64() * 20.0,
        "acknowledgements went on while InfluxDB was down: {during} in {outage:?}"
    );
    tokio::task::block_in_place(|| hub.terminate())
}

/// The PUBACK reason of a v5 QoS 1 PUBLISH of `payload` by `device`.
fn v5_publish(addr: SocketAddr, device: &str, payload: &str) -> anyhow::Result<u8> {
    let pw = password(device);
    let (mut conn, code) = Conn::connect(addr, true, device, Some((device, &pw)), None)?;
    anyhow::ensure!(code == 0, "CONNACK {code}");
    let topic = format!("devices/{device}/telemetry");
    conn.send(&raw::publish_qos1(true, &topic, 7, &[], payload.as_bytes()))?;
    let ack = conn.read_kind(4)?;
    Ok(ack.body.get(2).copied().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_log_withholds_acknowledgements_until_room_returns() -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir()?;
    // The InfluxDB sink's server is not there yet: its checkpoint cannot move, so the log
    // fills up to its cap.
    let mut vm = VictoriaMetrics::stopped(&dir.path().join("vm"))?;
    let config = config_with_devices(2)
        + "[wal]\nmax_bytes = 65536\nsegment_bytes = 8192\n\n"
        + &influx_section(&vm.url(), "");
    let hub = Hub::start(dir.path(), &config)?;
    let base_ms = now_ms() - 6 * 3_600_000;
    let fleet = Fleet::start(hub.addr, &devices(1), Duration::ZERO, times(base_ms));
    let full = eventually(Duration::from_secs(60), || {
        Ok(hub
            .stderr_lines()
            .into_iter()
            .find(|l| l.contains("write-ahead log full")))
    })?;
    eprintln!("hub said: {full}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let withheld_at = fleet.total();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fleet.total(),
        withheld_at,
        "no acknowledgement while the log is full"
    );
    assert!(
        withheld_at > 100,
        "the log took {withheld_at} messages first"
    );
    // MQTT 5 publishers are told at once.
    let refused_ts = now_ms() - 1000;
    let reason = tokio::task::block_in_place(|| {
        v5_publish(
            hub.addr,
            "bed-002",
            &format!(r#"{{"ts":{refused_ts},"hr":70}}"#),
        )
    })?;
    assert_eq!(reason, 0x97, "quota exceeded");
    // Room returns when the sink can write again.
    vm.resume()?;
    eventually(Duration::from_secs(60), || {
        Ok((fleet.total() > withheld_at + 200).then_some(()))
    })?;
    let acked = fleet.stop().await;
    let want = expected(&acked, base_ms);
    tokio::task::block_in_place(|| all_arrive(&hub.data_dir, &vm, &want, Duration::from_secs(60)))?;
    assert!(
        !stored(&hub.data_dir)?.contains_key(&("bed-002".to_owned(), refused_ts)),
        "the message refused with 0x97 was not stored"
    );
    assert_eq!(
        v5_publish(
            hub.addr,
            "bed-002",
            &format!(r#"{{"ts":{refused_ts},"hr":70}}"#)
        )?,
        0,
        "and is accepted when sent again"
    );
    tokio::task::block_in_place(|| hub.terminate())
}

/// Records in a segment file (`[len u32][crc u32][payload]`).
fn records_in(path: &Path) -> anyhow::Result<usize> {
    let bytes = std::fs::read(path)?;
    let (mut at, mut n) = (0usize, 0);
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
        at += 8 + len;
        n += 1;
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_torn_tail_and_a_damaged_segment_are_handled_at_start() -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir()?;
    // With the InfluxDB sink's server away, the log keeps every segment.
    let mut vm = VictoriaMetrics::stopped(&dir.path().join("vm"))?;
    let config =
        config_with_devices(1) + "[wal]\nsegment_bytes = 4096\n\n" + &influx_section(&vm.url(), "");
    let hub = Hub::start(dir.path(), &config)?;
    let (addr, config_path, data_dir) = (hub.addr, hub.config.clone(), hub.data_dir.clone());
    let base_ms = now_ms() - 6 * 3_600_000;
    let fleet = Fleet::start(addr, &devices(1), Duration::ZERO, times(base_ms));
    eventually(Duration::from_secs(60), || {
        Ok((fleet.total() >= 300).then_some(()))
    })?;
    let first = fleet.stop().await;
    tokio::task::block_in_place(|| hub.terminate())?;

    let wal = data_dir.join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "segments: {segments:?}");
    let damaged = &segments[1];
    let lost = records_in(damaged)?;
    let mut bytes = std::fs::read(damaged)?;
    bytes[20] ^= 0xff;
    std::fs::write(damaged, bytes)?;
    let newest = segments.last().expect("segments");
    let mut torn = std::fs::read(newest)?;
    torn.extend_from_slice(&100u32.to_le_bytes());
    torn.extend_from_slice(&7u32.to_le_bytes());
    torn.extend_from_slice(&[1u8; 40]);
    std::fs::write(newest, torn)?;

    let hub = Hub::start_with(dir.path(), &config_path)?;
    let mut said = String::new();
    let found = eventually(Duration::from_secs(5), || {
        said.extend(hub.stderr_lines().into_iter().map(|l| l + "\n"));
        Ok((said.contains("cut 48 bytes of a torn last write")
            && said.contains("damaged segment set aside"))
        .then_some(()))
    });
    assert!(found.is_ok(), "{said}");
    assert!(damaged.with_extension("corrupt").exists());
    // The hub goes on: new messages are acknowledged and stored.
    let second_base = base_ms - 24 * 3_600_000;
    let fleet = Fleet::start(hub.addr, &devices(1), Duration::ZERO, times(second_base));
    eventually(Duration::from_secs(30), || {
        Ok((fleet.total() >= 20).then_some(()))
    })?;
    let second = fleet.stop().await;
    // SQLite had stored everything before the damage; InfluxDB gets all but the records of
    // the damaged segment.
    let first_want = expected(&first, base_ms);
    let second_want = expected(&second, second_base);
    let sqlite = eventually(Duration::from_secs(10), || {
        let sqlite = stored(&data_dir)?;
        Ok(second_want
            .iter()
            .all(|k| sqlite.contains_key(k))
            .then_some(sqlite))
    })?;
    assert!(first_want.iter().all(|k| sqlite.contains_key(k)));
    vm.resume()?;
    let expect_in_vm = first_want.len() + second_want.len() - lost;
    let got = eventually(Duration::from_secs(60), || {
        let n = exported(&vm)?.len();
        Ok((n >= expect_in_vm).then_some(n))
    })?;
    // Each fleet may stop with one message stored whose acknowledgement it did not wait for.
    assert!(
        (expect_in_vm..=expect_in_vm + 2).contains(&got),
        "all but the {lost} records of the damaged segment: {got}, expected {expect_in_vm}"
    );
    // And a second start does not trip over the set-aside segment again.
    tokio::task::block_in_place(|| hub.terminate())?;
    let hub = Hub::start_with(dir.path(), &config_path)?;
    let said = hub.stderr_lines().join("\n");
    assert!(!said.contains("damaged segment"), "{said}");
    tokio::task::block_in_place(|| hub.terminate())
}

/// Publishes `n` bed readings from bed-001 over one connection (`mosquitto_pub -l`), QoS 1.
fn publish_lines(hub: &Hub, first: i64, n: i64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &hub.port().to_string(),
            "-q",
            "1",
            "-l",
        ])
        .args(["-i", "bed-001", "-u", "bed-001", "-P", &password("bed-001")])
        .args(["-t", "devices/bed-001/telemetry"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("mosquitto_pub not found; install mosquitto-clients")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let base = now_ms() - 3_600_000;
    for i in first..first + n {
        writeln!(
            stdin,
            r#"{{"ts":{},"hr":{},"rr":14,"occ":true,"mv":3}}"#,
            base + i * 1000,
            55 + i % 30
        )?;
    }
    drop(stdin);
    anyhow::ensure!(child.wait()?.success(), "mosquitto_pub failed");
    Ok(())
}

/// `/readyz`: status and body.
fn readyz(hub: &Hub) -> anyhow::Result<(u16, serde_json::Value)> {
    common::http(hub.http_addr.context("HTTP")?, "GET", "/readyz", None, None)
}

/// A sink that falls behind by half the log makes the hub not ready, before the log fills
/// and acknowledgements stop; once it catches up the hub is ready again.
#[test]
fn readiness_says_when_a_sink_falls_behind_and_returns_when_it_catches_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut vm = VictoriaMetrics::stopped(&dir.path().join("vm"))?;
    let config = config_with_devices(1)
        + &influx_section(&vm.url(), "")
        + "[wal]\nsegment_bytes = 4096\nmax_bytes = 65536\n\n[http]\nlisten = \"127.0.0.1:0\"\n";
    let hub = Hub::start(dir.path(), &config)?;
    let (status, body) = readyz(&hub)?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sink_lag_bound_bytes"], 32768, "{body}");
    let mut sent = 0;
    let (status, body) = loop {
        publish_lines(&hub, sent, 50)?;
        sent += 50;
        let (status, body) = readyz(&hub)?;
        if status != 200 || sent >= 2_000 {
            break (status, body);
        }
    };
    assert_eq!(status, 503, "{sent} messages sent: {body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("the influxdb sink is "), "{body}");
    let sinks = body["sinks"].as_array().context("sinks")?;
    let lag_of = |name: &str| {
        sinks
            .iter()
            .find(|s| s["sink"] == name)
            .and_then(|s| s["lag_bytes"].as_u64())
    };
    assert!(lag_of("influxdb") > Some(32768), "{body}");
    assert!(lag_of("store") < Some(32768), "the store keeps up: {body}");
    // InfluxDB comes up; the sink catches up and the hub is ready again.
    vm.resume()?;
    eventually(Duration::from_secs(30), || {
        Ok((readyz(&hub)?.0 == 200).then_some(()))
    })?;
    hub.terminate()
}
