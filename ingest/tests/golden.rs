//! Golden files: for every payload under `tests/golden/<profile>/`, the canonical observations
//! (or the rejection) the decoder gives are those in the `.expected` file beside it.
//!
//! A directory is named after a built-in profile, or after the profile its `profile.toml`
//! declares as a city would in its config. Inputs are `.json` (the payload as is) or `.pbhex`
//! (protobuf bytes in hex). The hub's clock
//! reads 2026-11-25T12:00:00Z, the device's zone is Asia/Tokyo, and plausibility is "flag".
//! A `profile.toml` may also register `[[devices]]`: the payloads are then its first
//! device's, and the devices they name are checked against the registered ones; each
//! observation's device and citizen are then shown too.
//! After a deliberate change, `KENKO_BLESS=1 cargo test -p kenko-ingest --test golden` rewrites
//! the expected files; review the diff before committing it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kenko_devices::Profiles;
use kenko_ingest::decode::Standalone;

/// 2026-11-25T12:00:00Z.
const RECEIVED_MS: i64 = 1_795_608_000_000;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The profile a golden directory is named after (a built-in one, or the one its
/// `profile.toml` declares, as a city would in its config), and the devices that file
/// registers, if any.
fn profile_of(
    dir: &Path,
    name: &str,
) -> (
    std::sync::Arc<kenko_devices::profile::Profile>,
    Vec<kenko_config::DeviceConfig>,
) {
    let declared = dir.join("profile.toml");
    let (profiles, devices) = if declared.exists() {
        let text = std::fs::read_to_string(&declared).expect("profile.toml");
        let config = kenko_config::Config::from_toml(&text, &declared).expect("a valid profile");
        let profiles = Profiles::compile(
            &kenko_config::profile::all_profiles(&config.profiles).expect("checked profiles"),
        )
        .expect("compiled");
        (profiles, config.devices)
    } else {
        (Profiles::builtin(), Vec::new())
    };
    let profile = profiles
        .get(name)
        .cloned()
        .expect("a directory per built-in profile, or one with its profile.toml");
    (profile, devices)
}

/// The decoder of a directory: of its first registered device when its `profile.toml`
/// registers some (the devices a payload names are checked against the others), else of
/// `dev-001`.
fn decoder_of(
    profile: std::sync::Arc<kenko_devices::profile::Profile>,
    devices: &[kenko_config::DeviceConfig],
) -> Standalone {
    match devices.first() {
        None => Standalone::new(profile, "Asia/Tokyo").expect("zone"),
        Some(first) => {
            let registry = kenko_devices::Registry::from_config(devices);
            let publisher = registry.get(&first.id).expect("registered");
            Standalone::of_registered(profile, "Asia/Tokyo", registry, &publisher).expect("zones")
        }
    }
}

fn render(decoder: &Standalone, names_devices: bool, payload: &[u8]) -> String {
    let mut out = Vec::new();
    let mut text = String::new();
    match decoder.decode(payload, RECEIVED_MS, &mut out) {
        Ok(()) => {
            for o in &out {
                let time = jiff::Timestamp::from_millisecond(o.time_ms).expect("valid time");
                if names_devices {
                    write!(text, "{} of {}: ", o.device, o.citizen).expect("string");
                }
                writeln!(
                    text,
                    "{} {:.4} {} loinc={} time={} seq={} flags={}",
                    o.metric,
                    o.value,
                    o.metric.unit(),
                    o.metric.loinc(),
                    time,
                    o.seq,
                    o.flags
                )
                .expect("string");
            }
        }
        Err(rejection) => {
            assert!(out.is_empty(), "a rejection appends nothing");
            writeln!(
                text,
                "rejected {}: {}",
                rejection.code.as_str(),
                rejection.message
            )
            .expect("string");
        }
    }
    text
}

fn read_input(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).expect("read input");
    if path.extension().is_some_and(|e| e == "pbhex") {
        let text = String::from_utf8(raw).expect("hex is text");
        let text = text.trim();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    } else {
        // A JSON file ends with a newline like any text file; the payload is the line.
        let mut raw = raw;
        if raw.last() == Some(&b'\n') {
            raw.pop();
        }
        raw
    }
}

#[test]
fn every_profile_decodes_as_its_golden_files_say() {
    let bless = std::env::var_os("KENKO_BLESS").is_some();
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut profiles_seen = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .expect("profile dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "pbhex"))
            .collect();
        inputs.sort();
        for input in inputs {
            let expected_path = input.with_extension("expected");
            let (decoding, devices) = profile_of(&dir, &profile);
            let names_devices = decoding.device.is_some();
            let decoder = decoder_of(decoding, &devices);
            let actual = render(&decoder, names_devices, &read_input(&input));
            if bless {
                std::fs::write(&expected_path, &actual).expect("write expected");
            }
            let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
                panic!(
                    "{} has no expected file; run with KENKO_BLESS=1 and review it",
                    input.display()
                )
            });
            if expected != actual {
                failures.push(format!(
                    "{}:\n--- expected\n{expected}--- actual\n{actual}",
                    input.display()
                ));
            }
            checked += 1;
        }
        profiles_seen.push(profile);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every built-in profile has golden files.
    for profile in Profiles::builtin().iter() {
        assert!(
            profiles_seen.iter().any(|p| **p == *profile.name),
            "no golden files for {}",
            profile.name
        );
    }
    assert!(checked >= 20, "only {checked} golden files");
}
