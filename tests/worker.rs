//! Past one machine: `kenko worker`s behind an external broker (a real Mosquitto) in one
//! shared subscription group, writing to one VictoriaMetrics. A worker killed mid-run and
//! restarted loses nothing the broker acknowledged to a device, and stores nothing twice.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::external::{Mosquitto, Worker};
use common::fleet::{acknowledged_points, all_stored, missing_or_repeated, Fleet, Times};
use common::vm::VictoriaMetrics;
use common::{config_with_devices, consent, eventually, now_ms};
use kenko_devices::Metric;

const DEVICES: usize = 100;
const WORKERS: usize = 3;
const STEP_MS: i64 = 100;

fn influx(vm: &VictoriaMetrics) -> String {
    format!(
        "[influxdb]\nurl = \"{}\"\norg = \"city\"\nbatch_age_ms = 200\nmax_backoff_ms = 1000\n\n",
        vm.url()
    )
}

fn url(broker: &Mosquitto) -> String {
    format!("mqtt://{}", broker.addr)
}

/// Writes worker `n`'s config (`extra` after the devices, `source` lines in its
/// `[source]`) and data directory (with every citizen's consent to collection) under
/// `dir`; starts it.
fn start_worker(
    dir: &Path,
    url: &str,
    n: usize,
    extra: &str,
    source: &str,
) -> anyhow::Result<Worker> {
    let (config, data) = worker_config(dir, url, n, extra, source)?;
    Worker::start(&config, &data)
}

/// Writes worker `n`'s config and data directory as [`start_worker`] does; their paths.
fn worker_config(
    dir: &Path,
    url: &str,
    n: usize,
    extra: &str,
    source: &str,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let home = dir.join(format!("worker-{n}"));
    let data = home.join("data");
    std::fs::create_dir_all(&data)?;
    let citizens: Vec<String> = (1..=DEVICES).map(|i| format!("citizen-{i:03}")).collect();
    let citizens: Vec<&str> = citizens.iter().map(String::as_str).collect();
    consent(&data, "grant", &citizens, "collect")?;
    let config = home.join("kenko.toml");
    let text = format!(
        "{}{extra}[source]\nurl = \"{url}\"\ngroup = \"kenko\"\nclient_id = \"kenko-worker-{n}\"\n{source}",
        config_with_devices(DEVICES),
    );
    std::fs::write(&config, text)?;
    Ok((config, data))
}

/// The four counts of a worker's last line: taken, acknowledged, sent again, passed over
/// (those it acknowledged for other partitions are among the acknowledged).
fn counts(last_words: &str) -> [u64; 4] {
    let numbers: Vec<u64> = last_words
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    numbers
        .try_into()
        .unwrap_or_else(|n| panic!("four counts in {last_words:?}: {n:?}"))
}

fn devices() -> Vec<String> {
    (1..=DEVICES).map(|i| format!("bed-{i:03}")).collect()
}

/// Event times step by `STEP_MS` per message from six hours back, alike for every device.
fn times() -> Times {
    Times {
        base_ms: now_ms() - 6 * 3_600_000,
        device_span_ms: 0,
        step_ms: STEP_MS,
    }
}

/// (device, time) of the heart rates in a worker's own store: its share of the load.
fn stored_by(worker_data: &Path) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = common::store::stored(&worker_data.join("personal.db"), Metric::HeartRate)?;
    Ok(rows.into_iter().map(|r| (r.device, r.time_ms)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_in_a_shared_group_lose_nothing_when_one_is_killed_and_restarted(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Mosquitto::start(&dir.path().join("mosquitto"))?;
    let vm = VictoriaMetrics::start(&dir.path().join("vm"))?;
    let mut workers: Vec<Option<Worker>> = Vec::new();
    for n in 1..=WORKERS {
        workers.push(Some(start_worker(
            dir.path(),
            &url(&broker),
            n,
            &influx(&vm),
            "",
        )?));
    }
    let times = times();
    let fleet = Fleet::start(broker.addr, &devices(), Duration::ZERO, times);
    let started = Instant::now();
    eventually(Duration::from_secs(60), || {
        Ok((fleet.total() >= 2_000).then_some(()))
    })?;

    // Worker 2 dies mid-batch and comes back with its client id and data directory.
    let killed = workers[1].take().expect("worker 2").kill()?;
    let at_kill = fleet.total();
    tokio::time::sleep(Duration::from_millis(500)).await;
    workers[1] = Some(tokio::task::block_in_place(|| {
        Worker::start(&killed.0, &killed.1)
    })?);
    eventually(Duration::from_secs(60), || {
        Ok((fleet.total() >= at_kill + 5_000).then_some(()))
    })?;
    let acked = fleet.stop().await;
    let elapsed = started.elapsed();
    let want = acknowledged_points(&acked, times);
    assert_eq!(
        acked.len(),
        DEVICES,
        "every device had messages acknowledged"
    );

    all_stored("VictoriaMetrics", Duration::from_secs(90), &want, || {
        vm.points("kenko_heart_rate")
    })?;

    // Each worker's share, from its own store.
    let mut shares = Vec::new();
    let mut everywhere: HashMap<(String, i64), usize> = HashMap::new();
    for (n, worker) in workers.iter().enumerate() {
        let worker = worker.as_ref().expect("running");
        let own = stored_by(&worker.data_dir)?;
        shares.push((n + 1, own.len()));
        for point in own {
            *everywhere.entry(point).or_insert(0) += 1;
        }
    }
    eprintln!(
        "workers: {} readings acknowledged by the broker in {:.1} s, all in VictoriaMetrics once; stored per worker {:?}",
        want.len(),
        elapsed.as_secs_f64(),
        shares
    );
    assert!(
        shares.iter().all(|(_, s)| *s > 0),
        "every worker took a share: {shares:?}"
    );
    if let Some(why) = missing_or_repeated("the workers' own stores", &everywhere, &want) {
        panic!("each reading is in exactly one worker's store: {why}");
    }
    for (n, worker) in workers.into_iter().flatten().enumerate() {
        let last_words = tokio::task::block_in_place(|| worker.terminate())?;
        eprintln!("worker {}: {last_words}", n + 1);
        let [taken, acknowledged, _, others] = counts(&last_words);
        assert!(
            taken > 0 && acknowledged == taken && others == 0,
            "{last_words}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_workers_each_get_all_of_their_own_devices_readings() -> anyhow::Result<()> {
    const PARTITIONS: u32 = 2;
    let dir = tempfile::tempdir()?;
    let broker = Mosquitto::start(&dir.path().join("mosquitto"))?;
    let mut workers = Vec::new();
    for p in 0..PARTITIONS {
        let source = format!("partitions = {PARTITIONS}\npartition = {p}\n");
        workers.push(Some(start_worker(
            dir.path(),
            &url(&broker),
            p as usize,
            "",
            &source,
        )?));
    }
    let times = times();
    let fleet = Fleet::start(broker.addr, &devices(), Duration::ZERO, times);
    eventually(Duration::from_secs(60), || {
        Ok((fleet.total() >= 2_000).then_some(()))
    })?;
    // Partition 1's worker restarts mid-run: its devices wait for it, none goes elsewhere.
    let (config, data) = workers[1].take().expect("partition 1").kill()?;
    let at_kill = fleet.total();
    workers[1] = Some(tokio::task::block_in_place(|| {
        Worker::start(&config, &data)
    })?);
    eventually(Duration::from_secs(60), || {
        Ok((fleet.total() >= at_kill + 3_000).then_some(()))
    })?;
    let acked = fleet.stop().await;
    let want = acknowledged_points(&acked, times);

    let mut owners: HashMap<String, Vec<u32>> = HashMap::new();
    all_stored(
        "the partitions' stores",
        Duration::from_secs(60),
        &want,
        || {
            let mut everywhere: HashMap<(String, i64), usize> = HashMap::new();
            owners.clear();
            for (p, worker) in workers.iter().enumerate() {
                let worker = worker.as_ref().expect("running");
                for (device, time) in stored_by(&worker.data_dir)? {
                    let seen = owners.entry(device.clone()).or_default();
                    if !seen.contains(&(p as u32)) {
                        seen.push(p as u32);
                    }
                    *everywhere.entry((device, time)).or_insert(0) += 1;
                }
            }
            Ok(everywhere)
        },
    )?;
    for (device, seen) in &owners {
        let owner = kenko_config::source::partition_of(device, PARTITIONS);
        assert_eq!(
            seen,
            &[owner],
            "{device}'s readings are all at its partition's worker"
        );
    }
    let per_partition: Vec<usize> = (0..PARTITIONS)
        .map(|p| owners.values().filter(|o| o[0] == p).count())
        .collect();
    eprintln!(
        "partitions: devices per partition {per_partition:?}, {} readings",
        want.len()
    );
    assert!(per_partition.iter().all(|n| *n > 0), "{per_partition:?}");
    for worker in workers.into_iter().flatten() {
        let last_words = tokio::task::block_in_place(|| worker.terminate())?;
        eprintln!("{last_words}");
        // Every partition's group gets every message: each worker passed the others' over.
        let [taken, acknowledged, _, others] = counts(&last_words);
        assert!(
            taken > 0 && others > 0 && acknowledged == taken + others,
            "{last_words}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_takes_telemetry_over_mqtts_trusting_the_brokers_ca() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = common::pki::Pki::new(dir.path(), "city-ca")?;
    let (cert, key) = pki.issue("broker")?;
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // Devices publish on the plain listener; the worker connects over TLS.
    let broker = Mosquitto::start_with(
        &dir.path().join("mosquitto"),
        &format!(
            "user root\nlistener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            dir.path().join("city-ca.pem").display(),
            cert.display(),
            key.display()
        ),
    )?;
    let source = format!("ca = \"{}\"\n", dir.path().join("city-ca.pem").display());
    let tls_url = format!("mqtts://127.0.0.1:{tls_port}");
    let worker = start_worker(dir.path(), &tls_url, 1, "", &source)?;

    let times = times();
    let fleet = Fleet::start(broker.addr, &devices()[..2], Duration::ZERO, times);
    eventually(Duration::from_secs(30), || {
        Ok((fleet.total() >= 50).then_some(()))
    })?;
    let acked = fleet.stop().await;
    let want = acknowledged_points(&acked, times);
    all_stored("the worker's store", Duration::from_secs(30), &want, || {
        let mut have: HashMap<(String, i64), usize> = HashMap::new();
        for point in stored_by(&worker.data_dir)? {
            *have.entry(point).or_insert(0) += 1;
        }
        Ok(have)
    })?;
    tokio::task::block_in_place(|| worker.terminate())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_hears_why_its_message_was_refused_through_the_external_broker(
) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let dir = tempfile::tempdir()?;
    let broker = Mosquitto::start(&dir.path().join("mosquitto"))?;
    let worker = start_worker(dir.path(), &url(&broker), 1, "", "")?;
    let mut options = MqttOptions::new("bed-001", "127.0.0.1", broker.addr.port());
    options.set_credentials("bed-001", common::password("bed-001"));
    let (device, mut events) = AsyncClient::new(options, 10);
    device
        .subscribe("devices/bed-001/errors", QoS::AtLeastOnce)
        .await?;
    let heard = tokio::spawn(async move {
        let mut subscribed = false;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => subscribed = true,
                Ok(Event::Incoming(Packet::Publish(p))) if subscribed => return Ok(p),
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("{e}")),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    device
        .publish(
            "devices/bed-001/telemetry",
            QoS::AtLeastOnce,
            false,
            "not json",
        )
        .await?;
    let error = tokio::time::timeout(Duration::from_secs(20), heard).await???;
    let body: serde_json::Value = serde_json::from_slice(&error.payload)?;
    assert_eq!(body["code"], "malformed_payload", "{body}");
    assert_eq!(body["topic"], "devices/bed-001/telemetry", "{body}");
    tokio::task::block_in_place(|| worker.terminate())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_the_embedded_store_writes_influxdb_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Mosquitto::start(&dir.path().join("mosquitto"))?;
    let vm = VictoriaMetrics::start(&dir.path().join("vm"))?;
    let extra = format!(
        "[store]\nembedded = false\n\n[windows]\nenabled = false\n\n{}",
        influx(&vm)
    );
    let worker = start_worker(dir.path(), &url(&broker), 1, &extra, "")?;
    let times = times();
    let fleet = Fleet::start(broker.addr, &devices()[..10], Duration::ZERO, times);
    eventually(Duration::from_secs(30), || {
        Ok((fleet.total() >= 500).then_some(()))
    })?;
    let acked = fleet.stop().await;
    let want = acknowledged_points(&acked, times);
    all_stored("VictoriaMetrics", Duration::from_secs(60), &want, || {
        vm.points("kenko_heart_rate")
    })?;
    for store in ["personal.db", "shared.db"] {
        assert!(
            !worker.data_dir.join(store).exists(),
            "{store} is not written"
        );
    }
    tokio::task::block_in_place(|| worker.terminate())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waiting_for_room_in_its_log_keeps_its_session_alive() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Mosquitto::start(&dir.path().join("mosquitto"))?;
    // InfluxDB is the only sink and is down: the small log fills and the pipeline waits.
    let mut vm = VictoriaMetrics::stopped(&dir.path().join("vm"))?;
    let extra = format!(
        "[store]\nembedded = false\n\n[windows]\nenabled = false\n\n[wal]\nsegment_bytes = 4096\nmax_bytes = 16384\n\n{}",
        influx(&vm)
    );
    let (config, data) = worker_config(dir.path(), &url(&broker), 1, &extra, "keep_alive_s = 1\n")?;
    // A short queue: twenty devices' messages in flight are more than it holds.
    let text = std::fs::read_to_string(&config)?.replacen("[ingest]\n", "[ingest]\nqueue = 4\n", 1);
    std::fs::write(&config, text)?;
    let worker = Worker::start(&config, &data)?;
    let times = times();
    let fleet = Fleet::start(broker.addr, &devices()[..20], Duration::ZERO, times);
    eventually(Duration::from_secs(30), || {
        Ok((fleet.total() >= 1000).then_some(()))
    })?;
    let acked = fleet.stop().await;
    // Long enough for the broker to drop a worker that stopped polling (1.5 keep-alives).
    tokio::time::sleep(Duration::from_secs(5)).await;
    vm.resume()?;
    let want = acknowledged_points(&acked, times);
    all_stored("VictoriaMetrics", Duration::from_secs(60), &want, || {
        vm.points("kenko_heart_rate")
    })?;
    let last = tokio::task::block_in_place(|| worker.terminate())?;
    let [taken, acknowledged, resent, _] = counts(&last);
    assert_eq!(
        resent, 0,
        "the connection lived through the wait, so nothing was sent again: {last}"
    );
    assert!(
        taken >= want.len() as u64 && acknowledged >= want.len() as u64,
        "{last}"
    );
    Ok(())
}

/// One heart rate of `device` at `time_ms`, as bed-json-v1 sends it.
fn heart_rate(time_ms: i64) -> String {
    format!(r#"{{"ts":{time_ms},"hr":61}}"#)
}

/// The codes of the errors published on `devices/{device}/errors`, as they come.
async fn device_errors(
    broker: &Mosquitto,
    device: &str,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<String>> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let options = MqttOptions::new(format!("{device}-errors"), "127.0.0.1", broker.addr.port());
    let (client, mut events) = AsyncClient::new(options, 10);
    client
        .subscribe(format!("devices/{device}/errors"), QoS::AtLeastOnce)
        .await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(event) = events.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    subscribed_tx.take().map(|s| s.send(()));
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let body: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    let code = body["code"].as_str().unwrap_or_default().to_owned();
                    if tx.send(code).is_err() {
                        return;
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed).await??;
    Ok(rx)
}

/// Waits for the next error code heard.
async fn next_error(
    errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) -> anyhow::Result<String> {
    tokio::time::timeout(Duration::from_secs(30), errors.recv())
        .await?
        .context("the error listener stopped")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_follows_the_consents_and_devices_of_its_hub() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub_dir = dir.path().join("hub");
    std::fs::create_dir_all(&hub_dir)?;
    let hub_data = hub_dir.join("data");
    let hub_config = format!(
        "{}[http]\nlisten = \"127.0.0.1:0\"\n",
        common::principal("worker-1", &["worker"])
    );
    let hub = common::Hub::start_without_consent(&hub_dir, &hub_config)?;
    // A device and its citizen's consent, recorded at the hub alone.
    kenko(&[
        "device",
        "add",
        "--config",
        &hub.config.display().to_string(),
        "--data-dir",
        &hub_data.display().to_string(),
        "--id",
        "bed-901",
        "--kind",
        "bed",
        "--citizen",
        "citizen-901",
    ])?;
    consent(&hub_data, "grant", &["citizen-901"], "collect")?;
    // Served to workers once the hub has it in force.
    let http = hub.http_addr.context("the hub serves HTTP")?;
    let feed = "/api/v1/registry/devices";
    eventually(Duration::from_secs(10), || {
        let (status, body) = common::http(http, "GET", feed, Some("worker-1"), None)?;
        anyhow::ensure!(status == 200, "{status} {body}");
        Ok((body["devices"][0]["citizen"] == "citizen-901").then_some(()))
    })?;
    let (status, _) = common::http(http, "GET", feed, Some("st-luke"), None)?;
    assert_eq!(status, 401, "not a principal of the hub");

    let broker = Mosquitto::start(&dir.path().join("mosquitto"))?;
    let home = dir.path().join("worker");
    let data = home.join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(home.join("password"), common::password("worker-1"))?;
    let config = home.join("kenko.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nclient_id = \"kenko-worker-1\"\n\n[registry]\nurl = \"http://{http}\"\nprincipal = \"worker-1\"\npassword_file = \"password\"\nwait_s = 5\n",
            url(&broker)
        ),
    )?;
    let worker = Worker::start(&config, &data)?;
    let mut errors = device_errors(&broker, "bed-901").await?;

    // Telemetry of the hub's device, under the hub's consent, is stored by the worker.
    let start = now_ms() - 60_000;
    for n in 0..3 {
        broker.publish("bed-901", &heart_rate(start + n * 1000))?;
    }
    eventually(Duration::from_secs(30), || {
        Ok((stored_by(&data)?.len() == 3).then_some(()))
    })?;

    // A withdrawal with erasure at the hub: the worker erases what it holds and refuses more.
    common::consent_with(
        &hub_data,
        "revoke",
        &["citizen-901"],
        "collect",
        &["--erase"],
    )?;
    eventually(Duration::from_secs(30), || {
        Ok(stored_by(&data)?.is_empty().then_some(()))
    })?;
    broker.publish("bed-901", &heart_rate(start + 10_000))?;
    assert_eq!(next_error(&mut errors).await?, "no_consent");

    // The device removed at the hub is unknown to the worker.
    kenko(&[
        "device",
        "remove",
        "--data-dir",
        &hub_data.display().to_string(),
        "--id",
        "bed-901",
    ])?;
    eventually(Duration::from_secs(30), || {
        broker.publish("bed-901", &heart_rate(start + 20_000))?;
        Ok(match errors.try_recv() {
            Ok(code) if code == "unknown_device" => Some(()),
            _ => None,
        })
    })?;
    tokio::task::block_in_place(|| worker.terminate())?;

    // A worker whose registry.db holds a record of its own does not start: its copy
    // would disagree with the hub's.
    let other = home.join("other-data");
    consent(&other, "grant", &["citizen-777"], "collect")?;
    let mut refused = std::process::Command::new(common::KENKO)
        .args(["worker", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&other)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let status = common::wait_timeout(&mut refused, Duration::from_secs(30))?;
    let mut said = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().context("stderr")?, &mut said)?;
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("consent record 1 of registry.db differs from the hub's"),
        "{said}"
    );

    // With the hub gone, a restarted worker goes on with its copy.
    tokio::task::block_in_place(|| hub.terminate())?;
    let worker = Worker::start(&config, &data)?;
    tokio::task::block_in_place(|| worker.terminate())?;
    Ok(())
}

/// Runs `kenko ARGS…`; fails with what it said when it fails.
fn kenko(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(common::KENKO)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kenko {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

const DAY_MS: i64 = 86_400_000;

/// A wearable's reading with `steps` at `time_ms`, as wearable-json-v1 sends it.
fn steps(time_ms: i64, steps: u32) -> String {
    format!(r#"{{"ts":{time_ms},"hr":70,"spo2":0.97,"steps":{steps}}}"#)
}

/// Starts a worker `name` of four wearables (UTC days, windows computed at once) with
/// `source` lines in its `[source]` and `windows` lines in its `[windows]`.
fn start_wearable_worker(
    dir: &Path,
    name: &str,
    broker: &Mosquitto,
    vm: &VictoriaMetrics,
    source: &str,
    windows: &str,
) -> anyhow::Result<Worker> {
    let home = dir.join(name);
    let data = home.join("data");
    std::fs::create_dir_all(&data)?;
    let mut text = format!(
        "[ingest]\nbatch_linger_ms = 2\ndefault_timezone = \"UTC\"\n\n[windows]\ngrace_min = 0\n{windows}\n{}",
        influx(vm)
    );
    let mut citizens = Vec::new();
    for n in 1..=4 {
        citizens.push(format!("citizen-w{n}"));
        text.push_str(&format!(
            "[[devices]]\nid = \"watch-{n}\"\nkind = \"wearable\"\ncitizen = \"citizen-w{n}\"\n\n"
        ));
    }
    text.push_str(&format!(
        "[source]\nurl = \"{}\"\nclient_id = \"kenko-{name}\"\n{source}",
        url(broker)
    ));
    let citizens: Vec<&str> = citizens.iter().map(String::as_str).collect();
    consent(&data, "grant", &citizens, "collect")?;
    let config = home.join("kenko.toml");
    std::fs::write(&config, text)?;
    Worker::start(&config, &data)
}

/// Each wearable's daily step totals in VictoriaMetrics, by (device, day start).
fn daily_steps_in(vm: &VictoriaMetrics) -> anyhow::Result<HashMap<(String, i64), f64>> {
    let mut out = HashMap::new();
    for series in vm.export("kenko_daily_steps")? {
        let device = series.labels.get("device").cloned().unwrap_or_default();
        for (t, v) in series.points {
            out.insert((device.clone(), t), v);
        }
    }
    Ok(out)
}

/// The daily step totals a worker's own store holds, as (device, day start, total).
fn daily_steps_at(worker: &Worker) -> anyhow::Result<Vec<(String, i64, f64)>> {
    let rows = common::store::stored(&worker.data_dir.join("personal.db"), Metric::DailySteps)?;
    let mut out: Vec<_> = rows
        .into_iter()
        .map(|r| (r.device, r.time_ms, r.value))
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok(out)
}

/// Windows of a worker's store whose inputs changed and that are not decided yet.
fn windows_pending(worker: &Worker) -> anyhow::Result<u64> {
    let conn = rusqlite::Connection::open_with_flags(
        worker.data_dir.join("personal.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    Ok(conn.query_row("SELECT count(*) FROM window_dirty", [], |r| r.get(0))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_partition_count_hands_each_window_to_one_fleet() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Mosquitto::start(&dir.path().join("mosquitto"))?;
    let vm = VictoriaMetrics::start(&dir.path().join("vm"))?;
    let now = now_ms();
    let day = now - now % DAY_MS - 3 * DAY_MS; // a closed UTC day
    let hand_over = jiff::Timestamp::from_millisecond(day + DAY_MS)?;
    let watches: Vec<String> = (1..=4).map(|n| format!("watch-{n}")).collect();

    // The old fleet (one worker) summarizes the windows that start before the hand-over.
    let old = start_wearable_worker(
        dir.path(),
        "old",
        &broker,
        &vm,
        "",
        &format!("summarize_before = \"{hand_over}\"\n"),
    )?;
    for watch in &watches {
        broker.publish(watch, &steps(day + 9 * 3_600_000, 100))?;
    }
    eventually(Duration::from_secs(30), || {
        Ok((daily_steps_at(&old)?.len() == watches.len()).then_some(()))
    })?;

    // The new fleet (two partitions) starts in the middle of that day: it summarizes the
    // windows from the hand-over on, all of whose readings it gets.
    let new: Vec<Worker> = (0..2)
        .map(|k| {
            start_wearable_worker(
                dir.path(),
                &format!("new-{k}"),
                &broker,
                &vm,
                &format!("partitions = 2\npartition = {k}\n"),
                &format!("summarize_from = \"{hand_over}\"\n"),
            )
        })
        .collect::<anyhow::Result<_>>()?;
    for watch in &watches {
        broker.publish(watch, &steps(day + 15 * 3_600_000, 50))?;
        broker.publish(watch, &steps(day + DAY_MS + 9 * 3_600_000, 30))?;
    }
    // In VictoriaMetrics each day has its total (which of two totals written for one time
    // it keeps is its own rule; InfluxDB keeps the last), the new day the new fleet's.
    eventually(Duration::from_secs(30), || {
        let totals = daily_steps_in(&vm)?;
        Ok(watches
            .iter()
            .all(|w| {
                totals.contains_key(&(w.clone(), day))
                    && totals.get(&(w.clone(), day + DAY_MS)) == Some(&30.0)
            })
            .then_some(()))
    })?;
    let everyone: Vec<&Worker> = std::iter::once(&old).chain(&new).collect();
    eventually(Duration::from_secs(30), || {
        let mut pending = 0;
        for worker in &everyone {
            pending += windows_pending(worker)?;
        }
        Ok((pending == 0).then_some(()))
    })?;

    // The day across the change is summarized by the old fleet alone, from all of its
    // readings; the new workers, which saw part of it, left it alone.
    let want_old: Vec<(String, i64, f64)> =
        watches.iter().map(|w| (w.clone(), day, 150.0)).collect();
    eventually(Duration::from_secs(30), || {
        Ok((daily_steps_at(&old)? == want_old).then_some(()))
    })?;
    let mut new_totals = Vec::new();
    for worker in &new {
        let totals = daily_steps_at(worker)?;
        assert!(!totals.is_empty(), "each partition has a watch");
        new_totals.extend(totals);
    }
    new_totals.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let want_new: Vec<(String, i64, f64)> = watches
        .iter()
        .map(|w| (w.clone(), day + DAY_MS, 30.0))
        .collect();
    assert_eq!(new_totals, want_new);
    for worker in std::iter::once(old).chain(new) {
        tokio::task::block_in_place(|| worker.terminate())?;
    }
    Ok(())
}
