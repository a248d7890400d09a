//! `kenko simulate`: simulated devices of every kind publishing to a hub, live or replaying a
//! period, with injected faults on request; progress output, and at the end an account of
//! what each device sent.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::output::outln;
use anyhow::Context as _;
use jiff::Timestamp;
use kenko_config::DeviceKind;
use kenko_sim::{self as sim, Replay, SimConfig, SimReport, SimStats};

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// The hub's MQTT address
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    broker: String,
    /// Kinds of device, comma-separated: bed, wearable, bp, scale, thermo, oximeter, glucose
    #[arg(
        long,
        value_name = "KIND,...",
        value_delimiter = ',',
        default_value = "bed"
    )]
    kinds: Vec<DeviceKind>,
    /// Number of simulated devices of each kind (bed-001, bed-002, ...; device N of every
    /// kind belongs to citizen-N)
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// How long to run, in seconds; until Ctrl-C (or, replaying, until done) when absent
    #[arg(long)]
    duration: Option<u64>,
    /// Messages per second per device (live)
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Number of the first device of each kind (bed-NNN)
    #[arg(long, default_value_t = 1)]
    first: usize,
    /// Seed of the simulated physiology and device habits
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Chance, from 0 to 1, that a message is replaced by a faulty one the hub must refuse
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    faults: f64,
    /// Write one line per injected fault, "DEVICE SEQ REASON", to this file
    #[arg(long, value_name = "FILE")]
    faults_log: Option<PathBuf>,
    /// Replay event times from this instant (RFC 3339, e.g. 2026-11-24T12:00:00+09:00) as
    /// fast as the hub acknowledges, instead of publishing live; needs --until
    #[arg(long, value_name = "RFC3339")]
    from: Option<Timestamp>,
    /// End of the replayed period (exclusive)
    #[arg(long, value_name = "RFC3339")]
    until: Option<Timestamp>,
    /// Seconds between replayed event times
    #[arg(long, value_name = "SECONDS")]
    step: Option<f64>,
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

/// The replayed period, if asked for, with clear errors for half-given or backward ones.
fn replay(args: &SimulateArgs) -> anyhow::Result<Option<Replay>> {
    let (from, until) = match (args.from, args.until) {
        (None, None) => {
            anyhow::ensure!(
                args.step.is_none(),
                "--step is the spacing of a replay; give --from and --until with it"
            );
            return Ok(None);
        }
        (Some(from), Some(until)) => (from, until),
        (Some(_), None) => anyhow::bail!("--from needs --until: the end of the replayed period"),
        (None, Some(_)) => anyhow::bail!("--until needs --from: the start of the replayed period"),
    };
    anyhow::ensure!(
        until > from,
        "--until {until} is not after --from {from}; the replayed period runs forward"
    );
    let step = args.step.unwrap_or(60.0);
    let step = Duration::try_from_secs_f64(step)
        .ok()
        .filter(|s| s.as_millis() >= 1)
        .with_context(|| {
            format!("--step {step} is not a usable number of seconds; give e.g. 60 or 0.5")
        })?;
    let now = Timestamp::now();
    // The hub keeps seven days and accepts five minutes of clock skew; say so before it
    // refuses the data.
    if from < now - jiff::SignedDuration::from_hours(7 * 24) {
        eprintln!("kenko: warning: --from {from} is more than 7 days ago; a hub with the default late horizon refuses such readings as too_old");
    }
    if until > now + jiff::SignedDuration::from_mins(5) {
        eprintln!("kenko: warning: --until {until} is in the future; the hub refuses readings more than 5 minutes ahead as future_timestamp");
    }
    Ok(Some(Replay { from, until, step }))
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be a positive number of messages per second"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.faults),
        "--faults {} is not a probability; give a number from 0 to 1, such as 0.05",
        args.faults
    );
    let replay = replay(&args)?;
    let stats = Arc::new(SimStats::default());
    let cancel = crate::hub::shutdown_on_signals();
    let config = SimConfig {
        broker: args.broker.clone(),
        kinds: args.kinds.clone(),
        devices: args.devices,
        first_device: args.first,
        duration: args.duration.map(Duration::from_secs),
        rate_hz: args.rate,
        seed: args.seed,
        faults: args.faults,
        replay,
        passwords: match &args.passwords {
            Some(path) => Some(Arc::new(read_passwords(path)?)),
            None => None,
        },
        ..SimConfig::default()
    };
    let kinds: Vec<&str> = args.kinds.iter().map(|k| k.as_str()).collect();
    match &replay {
        None => outln!(
            "simulating {} devices of each of {} against {} at {} msg/s each",
            args.devices,
            kinds.join(","),
            args.broker,
            args.rate
        ),
        Some(r) => outln!(
            "replaying {} devices of each of {} against {}: {} until {} every {} s",
            args.devices,
            kinds.join(","),
            args.broker,
            r.from,
            r.until,
            r.step.as_secs_f64()
        ),
    }
    let progress_stats = stats.clone();
    let progress = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(2));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            outln!(
                "connected {:>4} | published {:>9} | acknowledged {:>9} | faults {:>6} | errors {}",
                progress_stats.connected.load(Ordering::Relaxed),
                progress_stats.published.load(Ordering::Relaxed),
                progress_stats.acked.load(Ordering::Relaxed),
                progress_stats.faults.load(Ordering::Relaxed),
                progress_stats.errors.load(Ordering::Relaxed),
            );
        }
    });
    let report = sim::run(config, stats, cancel).await;
    progress.abort();
    let report = report?;
    if let Some(path) = &args.faults_log {
        write_faults_log(path, &report)?;
    }
    print_report(&report);
    Ok(())
}

/// One line per injected fault: `DEVICE SEQ REASON`.
fn write_faults_log(path: &Path, report: &SimReport) -> anyhow::Result<()> {
    let mut text = String::new();
    for fault in report.faults() {
        text.push_str(&fault.log_line());
        text.push('\n');
    }
    let mut file = std::fs::File::create(path)
        .with_context(|| format!("cannot write the faults log {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write the faults log {}", path.display()))
}

fn print_report(report: &SimReport) {
    outln!(
        "done in {:.1} s: {} published, {} acknowledged, {} errors",
        report.elapsed.as_secs_f64(),
        report.published,
        report.acked,
        report.errors
    );
    for d in &report.devices {
        outln!(
            "device {} {}: {} good messages, {} samples, {} readings, {} duplicates, {} faults{}",
            d.id,
            d.profile,
            d.good_messages,
            d.samples,
            d.readings,
            d.duplicates,
            d.faults.len(),
            if d.dropped > 0 {
                format!(", {} samples dropped", d.dropped)
            } else {
                String::new()
            }
        );
    }
    let mut by_reason = BTreeMap::new();
    for fault in report.faults() {
        *by_reason.entry(fault.reason.code()).or_insert(0u64) += 1;
    }
    if !by_reason.is_empty() {
        let counts: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
        outln!("faults injected: {}", counts.join(", "));
    }
}
