//! Decode + normalize per payload profile: one vendor message in, canonical observations out,
//! on one core. The payloads are the golden files' accepted ones (`tests/golden/<profile>/`),
//! for the built-in profiles and those the golden directories declare.
//!
//! `cargo bench -p kenko-ingest --bench decode`; criterion prints the time per message and the
//! messages per second ("thrpt") of each profile.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kenko_devices::Profiles;
use kenko_ingest::decode::Standalone;

/// 2026-11-25T12:00:00Z, the golden files' clock.
const RECEIVED_MS: i64 = 1_795_608_000_000;

/// The first golden input of `profile` that decodes (its expected file is no rejection);
/// `None` for a directory of refusals alone.
fn payload(profile: &str) -> Option<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(profile);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "pbhex"))
        .collect();
    inputs.sort();
    for input in inputs {
        let expected = std::fs::read_to_string(input.with_extension("expected")).expect("expected");
        if expected.starts_with("rejected") {
            continue;
        }
        let text = std::fs::read_to_string(&input).expect("input");
        let text = text.trim_end();
        return Some(if input.extension().is_some_and(|e| e == "pbhex") {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
                .collect()
        } else {
            text.as_bytes().to_vec()
        });
    }
    None
}

/// The built-in profiles, and those the golden directories declare in a `profile.toml`
/// (nested payloads, coded measures, times of day: read as whole documents).
fn profiles() -> Profiles {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut declared = Vec::new();
    for entry in std::fs::read_dir(&golden).expect("golden dir") {
        let path = entry.expect("entry").path().join("profile.toml");
        if path.exists() {
            let text = std::fs::read_to_string(&path).expect("profile.toml");
            let config = kenko_config::Config::from_toml(&text, &path).expect("profile");
            declared.extend(config.profiles);
        }
    }
    Profiles::compile(&kenko_config::profile::all_profiles(&declared).expect("checked"))
        .expect("compiled")
}

fn decode_per_profile(c: &mut Criterion) {
    let profiles = profiles();
    let mut names: Vec<&str> = profiles.iter().map(|p| &*p.name).collect();
    names.sort_unstable();
    let mut group = c.benchmark_group("decode+normalize");
    group.throughput(Throughput::Elements(1));
    for name in names {
        let profile = profiles.get(name).cloned().expect("profile");
        let decoder = Standalone::new(profile, "Asia/Tokyo").expect("zone");
        let Some(payload) = payload(name) else {
            continue;
        };
        let mut out = Vec::with_capacity(64);
        group.bench_function(format!("{name} ({} B)", payload.len()), |b| {
            b.iter(|| {
                out.clear();
                decoder
                    .decode(black_box(&payload), RECEIVED_MS, &mut out)
                    .expect("decodes");
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode_per_profile);
criterion_main!(benches);
