//! Who the simulated devices are: their ids (`bed-001`, `wearable-001`, ...), the citizen each
//! belongs to (device `n` of every kind is citizen `n`'s), and the payload profile each speaks.
//! A hub's demo registry built from [`fleet`] knows every simulated device as it really is.

use kenko_config::DeviceKind;

/// Built-in JSON profiles of each kind, in the order devices rotate through them.
const JSON_PROFILES: [(DeviceKind, &[&str]); 7] = [
    (DeviceKind::Bed, &["bed-json-v1", "bed-json-v2"]),
    (
        DeviceKind::Wearable,
        &["wearable-json-v1", "wearable-json-v2"],
    ),
    (DeviceKind::Bp, &["bp-json-v1"]),
    (DeviceKind::Scale, &["scale-json-v1"]),
    (DeviceKind::Thermo, &["thermo-json-v1"]),
    (DeviceKind::Oximeter, &["oximeter-json-v1"]),
    (DeviceKind::Glucose, &["glucose-json-v1"]),
];

/// The compact protobuf profile; devices that use it publish on `devices/{id}/telemetry/pb`.
pub const PROTOBUF_PROFILE: &str = "kenko-pb-v1";

/// The payload profile of device number `n` (1-based) of `kind`: every eighth device
/// (`n` = 8, 16, ...) speaks protobuf; the others rotate through their kind's built-in JSON
/// profiles (bed-001 bed-json-v1, bed-002 bed-json-v2, bed-003 bed-json-v1, ...).
pub fn profile_for(kind: DeviceKind, n: usize) -> &'static str {
    if n > 0 && n.is_multiple_of(8) {
        return PROTOBUF_PROFILE;
    }
    let profiles = JSON_PROFILES
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(&[][..], |(_, p)| *p);
    profiles
        .get(n.saturating_sub(1) % profiles.len().max(1))
        .copied()
        .unwrap_or(kind.default_profile())
}

/// Id of device number `n` (1-based) of `kind`: `bed-001`, `wearable-012`, `glucose-120`.
pub fn device_id(kind: DeviceKind, n: usize) -> String {
    format!("{}-{n:03}", kind.as_str())
}

/// The citizen whose device number `n` is, of every kind: `citizen-007`.
pub fn citizen_id(n: usize) -> String {
    format!("citizen-{n:03}")
}

/// One simulated device as a hub registers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimDevice {
    pub id: String,
    pub kind: DeviceKind,
    pub citizen: String,
    pub profile: &'static str,
    /// Its number within its kind, 1-based.
    pub n: usize,
}

impl SimDevice {
    pub fn new(kind: DeviceKind, n: usize) -> SimDevice {
        SimDevice {
            id: device_id(kind, n),
            kind,
            citizen: citizen_id(n),
            profile: profile_for(kind, n),
            n,
        }
    }

    /// The topic it publishes telemetry on.
    pub fn topic(&self) -> String {
        if self.profile == PROTOBUF_PROFILE {
            format!("devices/{}/telemetry/pb", self.id)
        } else {
            format!("devices/{}/telemetry", self.id)
        }
    }
}

/// Devices 1 to `count` of each of `kinds` (a kind named twice counts once), kind by kind:
/// what `kenko simulate --kinds ... --devices count` runs.
pub fn fleet(kinds: &[DeviceKind], count: usize) -> Vec<SimDevice> {
    fleet_from(kinds, 1, count)
}

/// Devices `first` to `first + count - 1` of each of `kinds`.
pub fn fleet_from(kinds: &[DeviceKind], first: usize, count: usize) -> Vec<SimDevice> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for &kind in kinds {
        if seen.contains(&kind) {
            continue;
        }
        seen.push(kind);
        out.extend((first..first.saturating_add(count)).map(|n| SimDevice::new(kind, n)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kenko_devices::profile::Profiles;

    #[test]
    fn profiles_rotate_and_every_eighth_speaks_protobuf() {
        assert_eq!(profile_for(DeviceKind::Bed, 1), "bed-json-v1");
        assert_eq!(profile_for(DeviceKind::Bed, 2), "bed-json-v2");
        assert_eq!(profile_for(DeviceKind::Bed, 3), "bed-json-v1");
        assert_eq!(profile_for(DeviceKind::Bed, 8), "kenko-pb-v1");
        assert_eq!(profile_for(DeviceKind::Wearable, 2), "wearable-json-v2");
        assert_eq!(profile_for(DeviceKind::Glucose, 5), "glucose-json-v1");
        for kind in DeviceKind::ALL {
            let pb = (1..=80)
                .filter(|&n| profile_for(kind, n) == PROTOBUF_PROFILE)
                .count();
            assert_eq!(pb, 10, "{kind}");
            assert_eq!(profile_for(kind, 1), kind.default_profile());
        }
    }

    #[test]
    fn rotation_covers_every_builtin_profile_of_each_kind() {
        let profiles = Profiles::builtin();
        for kind in DeviceKind::ALL {
            let mut used: Vec<&str> = (1..=16).map(|n| profile_for(kind, n)).collect();
            used.sort_unstable();
            used.dedup();
            let mut builtin: Vec<&str> = profiles
                .iter()
                .filter(|p| p.kind == Some(kind) || p.kind.is_none())
                .map(|p| &*p.name)
                .collect();
            builtin.sort_unstable();
            assert_eq!(used, builtin, "{kind}");
            for name in used {
                assert!(profiles.get(name).is_some(), "{name}");
            }
        }
    }

    #[test]
    fn names_citizens_and_topics() {
        let devices = fleet(&[DeviceKind::Bed, DeviceKind::Bp, DeviceKind::Bed], 8);
        assert_eq!(devices.len(), 16);
        assert_eq!(devices[0].id, "bed-001");
        assert_eq!(devices[0].citizen, "citizen-001");
        assert_eq!(devices[0].topic(), "devices/bed-001/telemetry");
        assert_eq!(devices[7].topic(), "devices/bed-008/telemetry/pb");
        assert_eq!(devices[9].id, "bp-002");
        assert_eq!(devices[9].citizen, "citizen-002");
        assert_eq!(device_id(DeviceKind::Oximeter, 120), "oximeter-120");
        let later = fleet_from(&[DeviceKind::Thermo], 11, 2);
        let ids: Vec<&str> = later.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["thermo-011", "thermo-012"]);
    }
}
