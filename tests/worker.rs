//! Past one machine: `kenko worker`s behind an external broker (a real Mosquitto) in one
//! shared subscription group, writing to one VictoriaMetrics. A worker killed mid-run and
//! restarted loses nothing the broker acknowledged to a device, and stores nothing twice.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::external::{Mosquitto, Worker};
use common::fleet::{acknowledged_points, missing_or_repeated, Fleet, Times};
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

/// Writes worker `n`'s config (`extra` after the devices, `source` lines in its
/// `[source]`) and data directory (with every citizen's consent to collection) under
/// `dir`; starts it.
fn start_worker(
    dir: &Path,
    broker: &Mosquitto,
    n: usize,
    extra: &str,
    source: &str,
) -> anyhow::Result<Worker> {
    let home = dir.join(format!("worker-{n}"));
    let data = home.join("data");
    std::fs::create_dir_all(&data)?;
    let citizens: Vec<String> = (1..=DEVICES).map(|i| format!("citizen-{i:03}")).collect();
    let citizens: Vec<&str> = citizens.iter().map(String::as_str).collect();
    consent(&data, "grant", &citizens, "collect")?;
    let config = home.join("kenko.toml");
    let text = format!(
        "{}{extra}[source]\nurl = \"mqtt://{}\"\ngroup = \"kenko\"\nclient_id = \"kenko-worker-{n}\"\n{source}",
        config_with_devices(DEVICES),
        broker.addr
    );
    std::fs::write(&config, text)?;
    Worker::start(&config, &data)
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
            &broker,
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

    let mut last = String::new();
    let arrived = eventually(Duration::from_secs(90), || {
        let have: HashMap<(String, i64), usize> = vm.points("kenko_heart_rate")?;
        match missing_or_repeated("VictoriaMetrics", &have, &want) {
            None => Ok(Some(())),
            Some(why) => {
                last = why;
                Ok(None)
            }
        }
    });
    arrived.map_err(|e| anyhow::anyhow!("{e}: {last}"))?;

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
        assert!(last_words.contains("acknowledged"), "{last_words}");
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
            &broker,
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

    let mut last = String::new();
    let mut owners: HashMap<String, Vec<u32>> = HashMap::new();
    let result = eventually(Duration::from_secs(60), || {
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
        match missing_or_repeated("the partitions' stores", &everywhere, &want) {
            None => Ok(Some(())),
            Some(why) => {
                last = why;
                Ok(None)
            }
        }
    });
    result.map_err(|e| anyhow::anyhow!("{e}: {last}"))?;
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
        assert!(
            last_words.contains("of other partitions passed over"),
            "{last_words}"
        );
    }
    Ok(())
}
