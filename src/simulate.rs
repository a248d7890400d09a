//! `kenko simulate`: simulated bed sensors publishing to a hub, with progress output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kenko_devices::sim::{self, SimConfig, SimStats};

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// The hub's MQTT address
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    broker: String,
    /// Number of simulated bed sensors (bed-001, bed-002, ...)
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// How long to run, in seconds; until Ctrl-C when absent
    #[arg(long)]
    duration: Option<u64>,
    /// Messages per second per device
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Index of the first device (bed-NNN)
    #[arg(long, default_value_t = 1)]
    first: usize,
    /// Seed of the simulated physiology
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// File of "DEVICE-ID PASSWORD" lines (as `kenko demo` writes); devices connect without
    /// credentials when absent
    #[arg(long, value_name = "FILE")]
    passwords: Option<PathBuf>,
}

/// Reads "DEVICE-ID PASSWORD" lines; blank lines and lines starting with '#' are skipped.
fn read_passwords(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read password file {}", path.display()))?;
    let mut passwords = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(id), Some(password), None) => {
                passwords.insert(id.to_owned(), password.to_owned());
            }
            _ => anyhow::bail!(
                "{}:{}: expected \"DEVICE-ID PASSWORD\"",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(passwords)
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be a positive number of messages per second"
    );
    let stats = Arc::new(SimStats::default());
    let cancel = crate::hub::shutdown_on_signals();
    let config = SimConfig {
        broker: args.broker.clone(),
        devices: args.devices,
        first_device: args.first,
        duration: args.duration.map(Duration::from_secs),
        rate_hz: args.rate,
        seed: args.seed,
        passwords: match &args.passwords {
            Some(path) => Some(Arc::new(read_passwords(path)?)),
            None => None,
        },
        ..SimConfig::default()
    };
    println!(
        "simulating {} bed sensors against {} at {} msg/s each",
        args.devices, args.broker, args.rate
    );
    let progress_stats = stats.clone();
    let progress = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(2));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            println!(
                "connected {:>4} | published {:>9} | acknowledged {:>9} | errors {}",
                progress_stats.connected.load(Ordering::Relaxed),
                progress_stats.published.load(Ordering::Relaxed),
                progress_stats.acked.load(Ordering::Relaxed),
                progress_stats.errors.load(Ordering::Relaxed),
            );
        }
    });
    let report = sim::run(config, stats, cancel).await;
    progress.abort();
    let report = report?;
    println!(
        "done in {:.1} s: {} published, {} acknowledged, {} errors",
        report.elapsed.as_secs_f64(),
        report.published,
        report.acked,
        report.errors
    );
    Ok(())
}
