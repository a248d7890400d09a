//! `kenko store verify`: every sealed chunk of `personal.db` and `shared.db` checked (its
//! checksum and points, and its index row against it), beside a running hub or not. Exits
//! with failure when any chunk is damaged, naming each with its citizen (or pseudonym),
//! device, metric and hour.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kenko_ingest::chunks::verify::{verify, Report};

use crate::output::outln;

#[derive(clap::Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(clap::Subcommand)]
enum StoreCommand {
    /// Check every sealed chunk of personal.db and shared.db; fails if any is damaged
    Verify {
        #[arg(long, default_value = "./kenko-data")]
        data_dir: PathBuf,
    },
}

/// Runs the command; false when it found damage.
pub fn run(args: StoreArgs) -> anyhow::Result<bool> {
    let StoreCommand::Verify { data_dir } = args.command;
    let mut sound = true;
    for file in ["personal.db", "shared.db"] {
        let path = data_dir.join(file);
        if !path.exists() {
            outln!("{file}: none at {}", path.display());
            continue;
        }
        let started = Instant::now();
        let mut said = Instant::now();
        let mut progress = |chunks: u64| {
            if said.elapsed() >= Duration::from_secs(10) {
                said = Instant::now();
                eprintln!("{file}: {chunks} chunks checked so far");
            }
        };
        let report = verify(&path, &mut progress)?;
        print(file, &report, started.elapsed());
        sound &= report.damaged.is_empty();
    }
    Ok(sound)
}

fn print(file: &str, report: &Report, took: Duration) {
    outln!(
        "{file}: {} chunks ({} readings) checked in {:.1} s: {}",
        report.chunks,
        report.points,
        took.as_secs_f64(),
        match report.damaged.len() {
            0 => "none damaged".to_owned(),
            n => format!("{n} damaged"),
        }
    );
    for d in &report.damaged {
        let hour = jiff::Timestamp::from_millisecond(d.start_ms)
            .map_or_else(|_| format!("{} ms", d.start_ms), |t| t.to_string());
        outln!(
            "  {} {} {} hour from {hour}: {}",
            d.citizen,
            d.device,
            d.metric,
            d.problem
        );
    }
}
