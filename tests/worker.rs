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

fn worker_config(broker: &Mosquitto, vm: &VictoriaMetrics, n: usize) -> String {
    format!(
        "{}[influxdb]\nurl = \"{}\"\norg = \"city\"\nbatch_age_ms = 200\nmax_backoff_ms = 1000\n\n\
         [source]\nurl = \"mqtt://{}\"\ngroup = \"kenko\"\nclient_id = \"kenko-worker-{n}\"\n",
        config_with_devices(DEVICES),
        vm.url(),
        broker.addr
    )
}

/// Writes worker `n`'s config and data directory (with every citizen's consent to
/// collection) under `dir`; starts it.
fn start_worker(
    dir: &Path,
    broker: &Mosquitto,
    vm: &VictoriaMetrics,
    n: usize,
) -> anyhow::Result<Worker> {
    let home = dir.join(format!("worker-{n}"));
    let data = home.join("data");
    std::fs::create_dir_all(&data)?;
    let citizens: Vec<String> = (1..=DEVICES).map(|i| format!("citizen-{i:03}")).collect();
    let citizens: Vec<&str> = citizens.iter().map(String::as_str).collect();
    consent(&data, "grant", &citizens, "collect")?;
    let config = home.join("kenko.toml");
    std::fs::write(&config, worker_config(broker, vm, n))?;
    Worker::start(&config, &data)
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
        workers.push(Some(start_worker(dir.path(), &broker, &vm, n)?));
    }
    let devices: Vec<String> = (1..=DEVICES).map(|i| format!("bed-{i:03}")).collect();
    let times = Times {
        base_ms: now_ms() - 6 * 3_600_000,
        device_span_ms: 0,
        step_ms: STEP_MS,
    };
    let fleet = Fleet::start(broker.addr, &devices, Duration::ZERO, times);
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
