//! `kenko deadletter list|show|replay` against real dead letters: replay through a running
//! hub, and by the command itself once the hub is stopped and its policy changed.

mod common;

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;
use common::{config_with_devices, now_ms, Hub, KENKO};

fn kenko(args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new(KENKO).args(args).output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

fn letters(data_dir: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let dir = data_dir.to_str().context("path")?;
    let (ok, text) = kenko(&["deadletter", "list", "--data-dir", dir, "--format", "json"])?;
    anyhow::ensure!(ok, "{text}");
    Ok(serde_json::from_str(&text)?)
}

#[test]
fn dead_letters_are_listed_shown_and_replayed_after_the_cause_is_fixed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let strict = config_with_devices(1) + "[ingest]\nplausibility = \"reject\"\n";
    let strict = strict.replacen("[ingest]\nbatch_linger_ms = 2\n\n", "", 1);
    let strict = strict.replace(
        "[ingest]\nplausibility = \"reject\"\n",
        "[ingest]\nbatch_linger_ms = 2\nplausibility = \"reject\"\n",
    );
    let hub = Hub::start(dir.path(), &strict)?;
    let t = now_ms() - 60_000;
    hub.publish_as("bed-001", &format!(r#"{{"ts":{t},"hr":300}}"#))?;
    hub.publish_as("bed-001", "{oops")?;
    let data = hub.data_dir.clone();
    let d = data.to_str().context("path")?;

    let listed = letters(&data)?;
    let codes: Vec<&str> = listed
        .iter()
        .filter_map(|l| l["reason_code"].as_str())
        .collect();
    assert_eq!(
        codes,
        ["malformed_payload", "implausible_value"],
        "newest first"
    );
    let implausible = listed[1]["id"].as_i64().context("id")?;
    let (ok, shown) = kenko(&[
        "deadletter",
        "show",
        "--data-dir",
        d,
        &implausible.to_string(),
    ])?;
    assert!(ok, "{shown}");
    assert!(
        shown.contains("\"hr\":300") && shown.contains("implausible_value"),
        "{shown}"
    );
    let (ok, text) = kenko(&["deadletter", "show", "--data-dir", d, "999"])?;
    assert!(!ok && text.contains("no dead letter 999"), "{text}");
    let (ok, table) = kenko(&["deadletter", "list", "--data-dir", d])?;
    assert!(ok && table.contains("2 dead letters"), "{table}");

    // Through the running hub: still malformed, so it stays, with its reason.
    let (ok, text) = kenko(&[
        "deadletter",
        "replay",
        "--data-dir",
        d,
        "--reason",
        "malformed_payload",
    ])?;
    assert!(ok, "{text}");
    assert!(
        text.contains("a hub is running") && text.contains("stored 0, refused again 1"),
        "{text}"
    );
    assert_eq!(letters(&data)?.len(), 2);
    hub.terminate()?;

    // The operator decides to keep implausible values, flagged; with the hub stopped the
    // command replays by itself with the new configuration.
    let lenient = dir.path().join("lenient.toml");
    std::fs::write(
        &lenient,
        strict.replace("plausibility = \"reject\"", "plausibility = \"flag\""),
    )?;
    let config = lenient.to_str().context("path")?;
    let (ok, text) = kenko(&[
        "deadletter",
        "replay",
        "--data-dir",
        d,
        "--reason",
        "implausible_value",
    ])?;
    assert!(
        !ok && text.contains("--config"),
        "without a hub, the devices must be known: {text}"
    );
    let (ok, text) = kenko(&[
        "deadletter",
        "replay",
        "--data-dir",
        d,
        "--config",
        config,
        "--id",
        &implausible.to_string(),
    ])?;
    assert!(ok, "{text}");
    assert!(text.contains("stored 1, refused again 0"), "{text}");
    let left = letters(&data)?;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["reason_code"], "malformed_payload");
    let rows = common::query(&data, &["--metric", "heart_rate", "--from", "-1h"])?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["value"], 300.0);
    Ok(())
}

/// Runs `kenko ARGS` with its stdout's reader gone before it writes (as `| head` does once
/// it has its lines): it must end quietly, with success.
fn with_reader_gone(args: &[&str]) -> anyhow::Result<()> {
    let mut child = Command::new(KENKO)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success() && stderr.is_empty(),
        "kenko {}: {} {stderr}",
        args.join(" "),
        out.status
    );
    Ok(())
}

#[test]
fn listings_end_quietly_when_their_reader_goes_away() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config_with_devices(1))?;
    hub.publish_as("bed-001", "{oops")?;
    let data = hub.data_dir.to_str().context("path")?.to_owned();
    common::eventually(std::time::Duration::from_secs(10), || {
        Ok((!letters(&hub.data_dir)?.is_empty()).then_some(()))
    })?;
    hub.terminate()?;
    for args in [
        vec!["deadletter", "list", "--data-dir", &data],
        vec![
            "deadletter",
            "list",
            "--data-dir",
            &data,
            "--format",
            "json",
        ],
        vec!["query", "--data-dir", &data, "--metric", "heart_rate"],
        vec!["consent", "list", "--data-dir", &data],
        vec!["audit", "verify", "--data-dir", &data],
    ] {
        with_reader_gone(&args)?;
    }
    Ok(())
}
