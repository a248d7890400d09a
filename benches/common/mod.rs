//! What the benchmarks of the real `kenko` binary share: a hub started with
//! `kenko serve`, and figures printed as p50, p99 and max.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

pub const KENKO: &str = env!("CARGO_BIN_EXE_kenko");

/// Prints count, p50, p99 and max of `samples`.
pub fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{what}: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        samples.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// A running `kenko serve`, killed when dropped.
pub struct Hub {
    child: Child,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
}

impl Hub {
    pub fn start(config: &Path, data: &Path) -> anyhow::Result<Hub> {
        let mut child = Command::new(KENKO)
            .args(["serve", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .args(["--mqtt", "127.0.0.1:0"])
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start kenko")?;
        match addresses(&mut child) {
            Ok((mqtt, http)) => Ok(Hub { child, mqtt, http }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }
}

/// The MQTT and HTTP addresses `kenko serve` announces on its standard output.
fn addresses(child: &mut Child) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut mqtt, mut http) = (None, None);
    while let Some(line) = lines.next().transpose()? {
        if let Some(rest) = line.strip_prefix("kenko serve: MQTT on ") {
            mqtt = Some(rest.split(',').next().context("address")?.parse()?);
        } else if let Some(addr) = line.strip_prefix("kenko serve: HTTP API on ") {
            http = Some(addr.trim().parse()?);
        } else if line.starts_with("stop with") {
            break;
        }
    }
    // Keep reading so that the hub never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok((
        mqtt.context("kenko serve printed no MQTT address")?,
        http.context("kenko serve printed no HTTP address")?,
    ))
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
