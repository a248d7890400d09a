//! The device registry: which citizen a device belongs to and how to read its payloads.
//! Built from the configuration file for now.

use std::collections::HashMap;
use std::sync::Arc;

use kenko_config::{DeviceConfig, DeviceKind};

/// What the hub knows of one registered device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEntry {
    pub id: Arc<str>,
    pub kind: DeviceKind,
    pub citizen: Arc<str>,
    pub profile: Arc<str>,
    /// IANA time zone for timestamps without an offset; `None` means the hub's default.
    pub timezone: Option<Arc<str>>,
}

/// Lookup of registered devices by id. Cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    devices: Arc<HashMap<Arc<str>, Arc<DeviceEntry>>>,
}

impl Registry {
    pub fn from_config(devices: &[DeviceConfig]) -> Registry {
        let devices = devices
            .iter()
            .map(|d| {
                let entry = DeviceEntry {
                    id: Arc::from(d.id.as_str()),
                    kind: d.kind,
                    citizen: Arc::from(d.citizen.as_str()),
                    profile: Arc::from(d.profile()),
                    timezone: d.timezone.as_deref().map(Arc::from),
                };
                (entry.id.clone(), Arc::new(entry))
            })
            .collect();
        Registry {
            devices: Arc::new(devices),
        }
    }

    pub fn get(&self, device_id: &str) -> Option<&Arc<DeviceEntry>> {
        self.devices.get(device_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &DeviceEntry> {
        self.devices.values().map(|d| &**d)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// The registry of a demo hub: `count` bed sensors `bed-001…`, each used by citizen `citizen-001…`.
pub fn demo_devices(count: usize) -> Vec<DeviceConfig> {
    (1..=count)
        .map(|n| DeviceConfig {
            id: demo_device_id(n),
            kind: DeviceKind::Bed,
            citizen: format!("citizen-{n:03}"),
            profile: None,
            timezone: None,
            password_hash: None,
        })
        .collect()
}

/// Id of the n-th simulated bed sensor (1-based), as `kenko simulate` names them.
pub fn demo_device_id(n: usize) -> String {
    format!("bed-{n:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_registry_maps_devices_to_citizens() {
        let registry = Registry::from_config(&demo_devices(3));
        assert_eq!(registry.len(), 3);
        let entry = registry.get("bed-002").expect("registered");
        assert_eq!(&*entry.citizen, "citizen-002");
        assert_eq!(&*entry.profile, "bed-json-v1");
        assert!(registry.get("bed-004").is_none());
    }
}
