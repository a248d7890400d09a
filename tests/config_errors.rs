//! End to end: `kenko serve` refuses a configuration it cannot use with the file and line of
//! the entry at fault, and a mistyped time zone as what it is.

mod common;

use std::path::Path;

/// Runs `kenko serve` with `config` and returns its stderr; fails if it started.
fn refused(dir: &Path, config: &str) -> anyhow::Result<String> {
    let path = dir.join("kenko.toml");
    std::fs::write(&path, config)?;
    let out = std::process::Command::new(common::KENKO)
        .args(["serve", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--mqtt", "127.0.0.1:0"])
        .output()?;
    anyhow::ensure!(!out.status.success(), "kenko serve started with {config}");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn invalid_principals_and_zones_are_reported_at_their_file_and_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("kenko.toml").display().to_string();
    let care = common::principal("st-luke", &["care"]);
    // `care` takes lines 1-5; the entry at fault starts on line 6.
    for (entry, says) in [
        (common::principal("ops", &["anonymous"]), "role \"anonymous\" of principal ops is reserved"),
        (common::principal("st-luke", &["analyst"]), "principal st-luke is listed twice"),
        (
            "[[principals]]\nid = \"p\"\nroles = [\"care\"]\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ\"\n".to_owned(),
            "password_hash of p is not a valid argon2id PHC string",
        ),
    ] {
        let stderr = refused(dir.path(), &format!("{care}{entry}"))?;
        assert!(stderr.contains(&format!("{file}:6: ")), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }

    let stderr = refused(
        dir.path(),
        &format!("{care}[ingest]\nqueue = 100\ndefault_timezone = \"Asia/Tokio\"\n"),
    )?;
    assert!(
        stderr.contains(&format!(
            "{file}:8: ingest.default_timezone \"Asia/Tokio\" is not a known time zone"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot open the stores"), "{stderr}");
    Ok(())
}

#[test]
fn alert_rules_that_cannot_work_are_reported_at_their_file_and_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("kenko.toml").display().to_string();
    let good = "[[alerts]]\nname = \"low-spo2\"\nmetric = \"spo2\"\nbelow = 90.0\nfor_min = 5\n\n";
    // `good` takes lines 1-6; the entry at fault starts on line 7.
    for (entry, says) in [
        (
            "[[alerts]]\nname = \"hot\"\nmetric = \"temperature\"\nabove = 38.0\n",
            "alert hot watches unknown metric \"temperature\"; known metrics: heart_rate",
        ),
        (
            "[[alerts]]\nname = \"both\"\nmetric = \"spo2\"\nbelow = 90.0\nabove = 99.0\n",
            "alert both: give only one of below, above, silent_h and rising_by",
        ),
        (
            "[[alerts]]\nname = \"low-spo2\"\nmetric = \"spo2\"\nsilent_h = 24\n",
            "alert low-spo2 is listed twice",
        ),
    ] {
        let stderr = refused(dir.path(), &format!("{good}{entry}"))?;
        assert!(stderr.contains(&format!("{file}:7: {says}")), "{stderr}");
    }
    Ok(())
}
