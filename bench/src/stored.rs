//! What kenko's ingest path stored, read back with `kenko query` after the hub stopped.

use std::path::Path;

use anyhow::{bail, Context as _};
use tokio::process::Command;

/// Rows of heart_rate in the personal store (CSV, without its header line).
pub async fn heart_rate_rows(kenko: &Path, data_dir: &Path) -> anyhow::Result<usize> {
    let out = Command::new(kenko)
        .args([
            "query",
            "--metric",
            "heart_rate",
            "--format",
            "csv",
            "--data-dir",
        ])
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
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().skip(1).filter(|l| !l.is_empty()).count())
}
