//! Telemetry payloads through `kenko_ingest::decode::decode`, for every built-in profile and
//! those the golden directories declare (`ingest/tests/golden/*/profile.toml`).
//!
//! The first byte chooses: bits 0–5 the profile (its index, modulo their number, among the
//! built-in profiles sorted by name, then the declared ones sorted by name), bit 6 the device's zone (Asia/Tokyo, or America/New_York
//! for local times across daylight-saving changes), bit 7 plausibility (flag or reject). The
//! rest is the payload. The hub's clock reads 2026-11-25T12:00:00Z, as in the golden tests.
#![no_main]

use std::sync::{Arc, OnceLock};

use kenko_config::{DeviceKind, Plausibility};
use kenko_devices::{DeviceEntry, Profile, Profiles};
use kenko_ingest::decode::{decode, AnyBehind, Context, TimeLimits, Zones};
use kenko_ingest::flags;
use libfuzzer_sys::fuzz_target;

const RECEIVED_MS: i64 = 1_795_608_000_000;
/// 2000-01-01T00:00:00Z: the decoder refuses earlier event times.
const MIN_EPOCH_MS: i64 = 946_684_800_000;

struct Setup {
    profiles: Vec<Arc<Profile>>,
    /// Per zone: the zones and one device per profile.
    zones: [(Zones, Vec<DeviceEntry>); 2],
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let mut profiles: Vec<_> = Profiles::builtin().iter().cloned().collect();
        profiles.sort_by(|a, b| a.name.cmp(&b.name));
        profiles.extend(declared_profiles());
        let zoned = |tz: Option<&str>| {
            let devices: Vec<DeviceEntry> = profiles
                .iter()
                .map(|p| DeviceEntry {
                    id: Arc::from("dev-001"),
                    kind: p.kind.unwrap_or(DeviceKind::Bed),
                    citizen: Arc::from("citizen-001"),
                    profile: Arc::from(&*p.name),
                    timezone: tz.map(Arc::from),
                    gateway: None,
                })
                .collect();
            let zones = Zones::resolve("Asia/Tokyo", &devices).expect("zones");
            (zones, devices)
        };
        let zones = [zoned(None), zoned(Some("America/New_York"))];
        Setup { profiles, zones }
    })
}

/// The profiles the golden directories declare in a `profile.toml` (nested paths, coded
/// measures, times of day, gateways naming devices), sorted by name, after the built-in ones.
fn declared_profiles() -> Vec<Arc<Profile>> {
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ingest/tests/golden");
    let mut declared = Vec::new();
    for entry in std::fs::read_dir(&golden).expect("golden dir") {
        let path = entry.expect("entry").path().join("profile.toml");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let config = kenko_config::Config::from_toml(&text, &path).expect("profile.toml");
            declared.extend(config.profiles);
        }
    }
    let all = kenko_config::profile::all_profiles(&declared).expect("checked");
    let compiled = Profiles::compile(&all).expect("compiled");
    let mut profiles: Vec<_> = declared
        .iter()
        .filter_map(|p| compiled.get(&p.name).cloned())
        .collect();
    profiles.sort_by(|a, b| a.name.cmp(&b.name));
    profiles
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, payload)) = data.split_first() else {
        return;
    };
    let setup = setup();
    let index = usize::from(choice & 0x3f) % setup.profiles.len();
    let (zones, devices) = &setup.zones[usize::from(choice >> 6 & 1)];
    let plausibility = if choice & 0x80 == 0 {
        Plausibility::Flag
    } else {
        Plausibility::Reject
    };
    let limits = TimeLimits::default();
    // A gateway's message may name any device: each counts as registered behind it.
    let named = AnyBehind(Arc::new(devices[index].clone()));
    let ctx = Context {
        device: &devices[index],
        devices: &named,
        profile: &setup.profiles[index],
        zones,
        received_ms: RECEIVED_MS,
        plausibility,
        limits,
        derived: false,
    };
    let mut out = Vec::new();
    let result = kenko_fuzz::bounded(data.len(), || decode(&ctx, payload, &mut out));
    match result {
        Err(_) => assert!(out.is_empty(), "a rejection appended observations"),
        Ok(()) => {
            assert!(!out.is_empty(), "accepted a payload without readings");
            for o in &out {
                assert!(o.value.is_finite(), "{o:?}");
                assert!(
                    !o.metric.is_derived(),
                    "a device sent a derived metric: {o:?}"
                );
                assert!(o.time_ms >= MIN_EPOCH_MS, "{o:?}");
                assert!(o.time_ms <= RECEIVED_MS + limits.max_future_ms, "{o:?}");
                assert!(o.time_ms >= RECEIVED_MS - limits.late_horizon_ms, "{o:?}");
                let (low, high) = o.metric.plausible();
                let plausible = (low..=high).contains(&o.value);
                assert_eq!(o.flags & flags::IMPLAUSIBLE == 0, plausible, "{o:?}");
                assert!(plausible || plausibility == Plausibility::Flag, "{o:?}");
                let names_devices = setup.profiles[index].device.is_some();
                assert!(&*o.device == "dev-001" || names_devices, "{o:?}");
                assert_eq!(&*o.citizen, "citizen-001");
                assert_eq!(o.received_ms, RECEIVED_MS);
            }
        }
    }
});
