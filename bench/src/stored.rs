//! What kenko's ingest path stored, read back with `kenko query`.

use std::path::Path;

use anyhow::{bail, Context as _};
use tokio::process::Command;

/// Rows of heart_rate in the personal store (CSV, without its header line).
pub async fn heart_rate_rows(kenko: &Path, data_dir: &Path) -> anyhow::Result<usize> {
    let text = query(kenko, data_dir, &["--format", "csv"]).await?;
    Ok(text.lines().skip(1).filter(|l| !l.is_empty()).count())
}

/// Heart rates of the last 30 days in the personal store, counted by the store (one bucket a
/// day across citizens), cheap enough to ask again and again while a hub writes.
pub async fn heart_rate_count(kenko: &Path, data_dir: &Path) -> anyhow::Result<u64> {
    let args = [
        "--from", "-30d", "--every", "1d", "--agg", "count", "--across", "--format", "csv",
    ];
    let text = query(kenko, data_dir, &args).await?;
    // time,citizen,device,metric,value,...: the value is the day's count.
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(4)?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// `kenko query --metric heart_rate ARGS --data-dir DATA_DIR`: what it printed.
async fn query(kenko: &Path, data_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(kenko)
        .args(["query", "--metric", "heart_rate"])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .await
        .context("cannot run kenko query")?;
    if !out.status.success() {
        bail!(
            "kenko query failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
