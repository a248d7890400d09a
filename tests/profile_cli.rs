//! `kenko profile list|test`: a vendor's profile tried on a payload without a hub, through
//! the hub's own decoder.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const KENKO: &str = env!("CARGO_BIN_EXE_kenko");

const CONFIG: &str = r#"
[ingest]
default_timezone = "Asia/Tokyo"

[[profiles]]
name = "acme-thermo-v3"
kind = "thermo"
time = "t"
time_format = "local"
sample = "acme-sample.json"
[profiles.fields]
temp = { metric = "body_temperature", unit = "[degF]" }
"body.pulse" = { metric = "pulse_rate" }
"#;

fn kenko(dir: &Path, args: &[&str], stdin: &str) -> anyhow::Result<Output> {
    use std::io::Write as _;
    let mut child = Command::new(KENKO)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_profile_is_tried_on_a_payload_as_the_hub_would_decode_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("kenko.toml"), CONFIG)?;
    // The vendor's sample nests the pulse, which the profile names as a dotted key.
    std::fs::write(
        dir.path().join("acme-sample.json"),
        r#"{"t":"2026-11-25T07:30:00","temp":98.6,"body":{"pulse":71}}"#,
    )?;
    std::fs::write(
        dir.path().join("reading.json"),
        r#"{"t":"2026-11-25T07:30:00","temp":98.6}"#,
    )?;
    let args = [
        "profile",
        "test",
        "--config",
        "kenko.toml",
        "--profile",
        "acme-thermo-v3",
        "--at",
        "2026-11-25T00:00:00Z",
        "--format",
        "json",
        "reading.json",
    ];
    let out = kenko(dir.path(), &args, "")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    // 07:30 in Tokyo is 22:30 UTC the day before; 98.6 °F is 37 °C.
    assert_eq!(rows[0]["time"], "2026-11-24T22:30:00Z", "{rows}");
    assert_eq!(rows[0]["metric"], "body_temperature");
    assert_eq!(rows[0]["unit"], "Cel");
    assert_eq!(rows[0]["loinc"], "8310-5");
    assert!(
        (rows[0]["value"].as_f64().unwrap_or(0.0) - 37.0).abs() < 1e-9,
        "{rows}"
    );
    assert_eq!(rows.as_array().map(Vec::len), Some(1));
    // The dotted key reads like a path, and the sample has no such key: both are told.
    let told = text(&out.stderr);
    assert!(
        told.contains("field key \"body.pulse\" is matched as one key"),
        "{told}"
    );
    assert!(
        told.contains("field \"body.pulse\" is nowhere in its sample payload"),
        "{told}"
    );
    assert!(!told.contains("field \"temp\""), "{told}");

    // Without a payload, the profile's sample is decoded.
    let args = [
        "profile",
        "test",
        "--config",
        "kenko.toml",
        "--profile",
        "acme-thermo-v3",
        "--at",
        "2026-11-25T00:00:00Z",
        "--format",
        "csv",
    ];
    let out = kenko(dir.path(), &args, "")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("2026-11-24T22:30:00Z,citizen-001,dev-001,body_temperature,37"),
        "{}",
        text(&out.stdout)
    );

    // A payload the hub would refuse: the reason, and exit status 1.
    let args = [
        "profile",
        "test",
        "--config",
        "kenko.toml",
        "--profile",
        "acme-thermo-v3",
        "-",
    ];
    let out = kenko(dir.path(), &args, r#"{"temp":98.6}"#)?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout)
            .starts_with("refused (malformed_payload): field t (the event time) is missing"),
        "{}",
        text(&out.stdout)
    );
    // Too old for now: the hint names --at.
    let out = kenko(
        dir.path(),
        &args,
        r#"{"t":"2020-01-01T00:00:00","temp":98.6}"#,
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("refused (too_old)"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("give --at"),
        "{}",
        text(&out.stdout)
    );

    // An unknown profile is named with the known ones.
    let args = [
        "profile",
        "test",
        "--config",
        "kenko.toml",
        "--profile",
        "acme",
        "-",
    ];
    let out = kenko(dir.path(), &args, "{}")?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("known: acme-thermo-v3, bed-json-v1"),
        "{}",
        text(&out.stderr)
    );

    let out = kenko(
        dir.path(),
        &["profile", "list", "--config", "kenko.toml"],
        "",
    )?;
    assert!(out.status.success());
    let listed = text(&out.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("acme-thermo-v3") && l.contains("temp=body_temperature")),
        "{listed}"
    );
    Ok(())
}

#[test]
fn a_gateways_payload_is_tried_with_or_without_its_registered_devices() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The golden directory's gateway profile and household, as a city's config.
    let config = include_str!("../ingest/tests/golden/acme-home-gateway/profile.toml");
    std::fs::write(dir.path().join("kenko.toml"), config)?;
    let payload =
        include_str!("../ingest/tests/golden/acme-home-gateway/not_behind_the_gateway.json");
    std::fs::write(dir.path().join("payload.json"), payload)?;
    let args = |device: Option<&'static str>| {
        let mut args = vec![
            "profile",
            "test",
            "--config",
            "kenko.toml",
            "--profile",
            "acme-home-gateway",
            "--at",
            "2026-11-25T12:00:00Z",
            "--format",
            "csv",
        ];
        if let Some(device) = device {
            args.extend(["--device", device]);
        }
        args.push("payload.json");
        args
    };
    // Without --device, a device the payload names counts as registered behind it.
    let out = kenko(dir.path(), &args(None), "")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(",bp-102,") && stdout.contains(",bed-104,"),
        "{stdout}"
    );
    // As the gateway of the config, bed-104 (registered, but not behind it) is refused.
    let out = kenko(dir.path(), &args(Some("home-gw-01")), "")?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "refused (client_mismatch): device bed-104, named in deviceid, is not registered behind home-gw-01, so home-gw-01 may not publish its readings; register it with gateway home-gw-01\n"
    );
    let out = kenko(dir.path(), &args(Some("hub-9")), "")?;
    assert!(
        text(&out.stderr).contains("--device hub-9 is no [[devices]] entry of the config"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}
