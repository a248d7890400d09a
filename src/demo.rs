//! `kenko demo`: a hub on embedded defaults with simulated bed sensors, for trying kenko.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kenko_config::Config;
use kenko_devices::registry::demo_devices;
use kenko_devices::sim::{self, SimConfig, SimStats};
use tokio_util::sync::CancellationToken;

use crate::hub::{self, Hub};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its stores
    #[arg(long, default_value = "./kenko-data")]
    data_dir: PathBuf,
    /// MQTT listen address
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    /// Number of simulated bed sensors
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// Messages per second per simulated device
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    let mut config = Config::default();
    config.mqtt.listen = args.mqtt;
    config.devices = demo_devices(args.devices);
    // Demo data is synthetic, so it can be watched live by anyone on this machine.
    config.ingest.live_republish = true;

    let shutdown = hub::shutdown_on_signals();
    let hub_shutdown = CancellationToken::new();
    let hub = Hub::start(config, &args.data_dir, hub_shutdown.clone()).await?;
    let addr = hub.mqtt_addr;
    print_banner(&args, addr);

    let sim_stats = Arc::new(SimStats::default());
    let sim_cancel = shutdown.child_token();
    let sim_config = SimConfig {
        broker: addr.to_string(),
        devices: args.devices,
        rate_hz: args.rate,
        ..SimConfig::default()
    };
    let simulator = tokio::spawn(sim::run(sim_config, sim_stats.clone(), sim_cancel));

    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    ticker.tick().await;
    let mut last = (Instant::now(), 0u64, 0u64);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                let received = hub.ingest_stats.received.load(Ordering::Relaxed);
                let stored = hub.ingest_stats.observations_stored.load(Ordering::Relaxed);
                let dead = hub.ingest_stats.dead_lettered.load(Ordering::Relaxed);
                let secs = last.0.elapsed().as_secs_f64().max(0.001);
                println!(
                    "clients {:>3} | messages in {:>8} ({:>6.1}/s) | observations stored {:>9} ({:>7.1}/s) | dead letters {}",
                    hub.broker_stats.connected.load(Ordering::Relaxed),
                    received,
                    (received - last.1) as f64 / secs,
                    stored,
                    (stored - last.2) as f64 / secs,
                    dead,
                );
                last = (Instant::now(), received, stored);
            }
        }
    }
    // The simulated devices stop first, so that what they sent is acknowledged before the hub
    // stops; then the hub shuts down in order.
    match simulator.await {
        Ok(Ok(report)) => println!(
            "simulator stopped: {} published, {} acknowledged",
            report.published, report.acked
        ),
        Ok(Err(e)) => eprintln!("kenko: simulator failed: {e}"),
        Err(e) => eprintln!("kenko: simulator task failed: {e}"),
    }
    hub_shutdown.cancel();
    hub.wait().await?;
    println!("hub stopped; data is in {}", args.data_dir.display());
    Ok(())
}

fn print_banner(args: &DemoArgs, addr: SocketAddr) {
    let dir = args.data_dir.display();
    println!(
        "kenko demo: {} simulated bed sensors (bed-001 ...) for citizens citizen-001 ...",
        args.devices
    );
    println!("  Demo devices are for trying kenko only: they have no credentials and their data is synthetic.");
    println!("  MQTT broker:  {addr} (MQTT 3.1.1 and 5)");
    println!(
        "  data:         {dir}/personal.db (observations), {dir}/deadletter.db (refused messages)"
    );
    println!("Try, in another terminal:");
    println!(
        "  kenko query --data-dir {dir} --metric heart_rate --citizen citizen-001 --from -10m"
    );
    println!(
        "  kenko query --data-dir {dir} --metric heart_rate --every 1m --agg mean --format table"
    );
    println!(
        "  mosquitto_sub -h {} -p {} -t 'citizens/+/observations/heart_rate' -v",
        addr.ip(),
        addr.port()
    );
    println!("  mosquitto_pub -h {} -p {} -i bed-001 -q 1 -t devices/bed-001/telemetry -m '{{\"ts\":\"{}\",\"hr\":61,\"occ\":true}}'",
        addr.ip(), addr.port(), jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap_or(jiff::tz::TimeZone::UTC)).strftime("%Y-%m-%dT%H:%M:%S%:z"));
    println!(
        "  mosquitto_sub -h {} -p {} -t 'devices/+/errors' -v",
        addr.ip(),
        addr.port()
    );
    println!("Stop with Ctrl-C. Progress every 2 s:");
}
