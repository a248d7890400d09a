//! `workers`: the QoS 1 fan-in load on Mosquitto with N `kenko worker`s in one shared group
//! behind it, for each N asked; readings stored (in the workers' own stores) per second,
//! from the first publish until the last reading is stored, and the share of each worker.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

use crate::configs;
use crate::load::{drive, FanInArgs};
use crate::systems::{free_port, Lab, Setup, System};

#[derive(clap::Args)]
pub struct WorkersArgs {
    /// Worker counts to run, each in turn (once per round)
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub counts: Vec<usize>,
    #[command(flatten)]
    pub load: FanInArgs,
}

pub async fn run(args: &WorkersArgs, lab: &mut Lab) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.counts.iter().all(|n| *n > 0),
        "--counts: at least one worker"
    );
    let mut rates: Vec<(usize, f64)> = Vec::new();
    for _round in 0..args.load.rounds {
        for &n in &args.counts {
            rates.push((n, run_once(args, lab, n).await?));
        }
    }
    for &n in &args.counts {
        let mut mine: Vec<f64> = rates.iter().filter(|r| r.0 == n).map(|r| r.1).collect();
        mine.sort_by(f64::total_cmp);
        let median = mine[mine.len() / 2];
        println!(
            "median: {n} worker(s) {median:.0} msgs/s stored, {:.0} per worker",
            median / n as f64
        );
    }
    Ok(())
}

/// One run: Mosquitto and `n` workers, the load, until every acknowledged message's
/// readings are stored; prints one line and returns messages stored per second.
async fn run_once(args: &WorkersArgs, lab: &mut Lab, n: usize) -> anyhow::Result<f64> {
    let load = &args.load;
    let setup = Setup {
        devices: load.clients,
        max_connections: load.clients + n + 10,
        http: false,
    };
    let port = free_port()?;
    let broker = Broker::start(lab, port).await?;
    let mut workers = Vec::with_capacity(n);
    for k in 0..n {
        workers.push(Worker::start(lab, &setup, port, k).await?);
    }
    let started = Instant::now();
    let outcome = drive(load, port, System::KenkoIngest, lab.password()).await;
    let stored_by = wait_stored(lab, &workers, outcome.acked).await?;
    let secs = started.elapsed().as_secs_f64();
    let rate = outcome.acked as f64 / secs;
    for worker in workers {
        worker.stop().await;
    }
    broker.stop().await;
    println!(
        "workers={n} clients={} msgs={} failed={} broker_acked_secs={:.3} stored_secs={secs:.3} msgs_per_s={rate:.0} per_worker={:.0} shares={stored_by:?}",
        load.clients,
        outcome.acked,
        outcome.failed,
        outcome.secs,
        rate / n as f64,
    );
    Ok(rate)
}

/// Waits until the workers' stores hold `messages` heart rates in all (one per message);
/// what each holds.
async fn wait_stored(lab: &Lab, workers: &[Worker], messages: u64) -> anyhow::Result<Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut counts = Vec::with_capacity(workers.len());
        for worker in workers {
            counts.push(crate::stored::heart_rate_count(&lab.bins.kenko, &worker.data_dir).await?);
        }
        if counts.iter().sum::<u64>() >= messages {
            return Ok(counts);
        }
        if Instant::now() > deadline {
            bail!("the workers stored {counts:?} of {messages} heart rates within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Mosquitto of a run ([`configs::mosquitto_for_workers`]).
struct Broker {
    child: Child,
}

impl Broker {
    async fn start(lab: &mut Lab, port: u16) -> anyhow::Result<Broker> {
        let dir = lab.run_dir("mosquitto")?;
        let config = dir.join("mosquitto.conf");
        std::fs::write(&config, configs::mosquitto_for_workers(port))?;
        let child = Command::new(&lab.bins.mosquitto)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start mosquitto")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("mosquitto is not listening on {port} after 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Broker { child })
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A running `kenko worker`.
struct Worker {
    child: Child,
    data_dir: PathBuf,
}

impl Worker {
    /// Worker `k` of a run: its config (the fleet, `[source]` on the broker at `port`),
    /// collect consent, started and subscribed.
    async fn start(lab: &mut Lab, setup: &Setup, port: u16, k: usize) -> anyhow::Result<Worker> {
        let dir = lab.run_dir(&format!("worker-{k}"))?;
        let hash = lab.fleet_hash().await?;
        let mut text = configs::kenko(setup.devices, &hash, setup.max_connections);
        text.push_str(&format!(
            "\n[source]\nurl = \"mqtt://127.0.0.1:{port}\"\ngroup = \"kenko\"\nclient_id = \"bench-worker-{k}\"\n"
        ));
        let config = dir.join("kenko.toml");
        std::fs::write(&config, text)?;
        std::fs::write(dir.join("acl.toml"), configs::KENKO_ACL)?;
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        lab.grant_collect(&data_dir, setup.devices).await?;
        let log = dir.join("worker.log");
        let file = std::fs::File::create(&log)?;
        let child = Command::new(&lab.bins.kenko)
            .arg("worker")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start kenko worker")?;
        let mut worker = Worker { child, data_dir };
        worker.wait_subscribed(&log).await?;
        Ok(worker)
    }

    async fn wait_subscribed(&mut self, log: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("kenko worker: subscribed to ") {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("kenko worker exited at start ({status}): {text}");
            }
            if Instant::now() > deadline {
                bail!("kenko worker did not subscribe within 30 s: {text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM; SIGKILL after 30 s.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
            eprintln!("warning: a worker did not stop within 30 s; killed");
        }
    }
}
