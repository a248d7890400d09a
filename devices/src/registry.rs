//! The device registry: which citizen a device belongs to, how to read its payloads and how it
//! proves who it is. Devices come from the configuration file (`[[devices]]`, fixed while the
//! hub runs) and from the `devices` table of `registry.db` (`kenko device add`), which a
//! running hub rereads when the file changes ([`RegistryWatcher`]), and so are the principals
//! added with `kenko principal add` (the `principals` table).
//!
//! The broker (authentication) and the ingest writer (every telemetry message) share one
//! [`Registry`]. A change swaps in a whole new map, so a lookup is a read lock held for one hash
//! lookup and an `Arc` clone, and never across an await.

mod db;
mod mirror;
mod principals;
mod store;
mod watch;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use kenko_config::{Config, DeviceConfig, DeviceKind, ANONYMOUS};

pub use mirror::MirrorReport;
pub use principals::{NewPrincipal, PrincipalError, PrincipalStore, StoredPrincipal, CITIZEN_ROLE};
pub use store::{DeviceError, DeviceStore, NewDevice, StoredDevice};
pub use watch::RegistryWatcher;

/// What the hub knows of one registered device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEntry {
    pub id: Arc<str>,
    pub kind: DeviceKind,
    pub citizen: Arc<str>,
    pub profile: Arc<str>,
    /// IANA time zone for timestamps without an offset; `None` means the hub's default.
    pub timezone: Option<Arc<str>>,
    /// The device whose messages may carry this device's readings.
    pub gateway: Option<Arc<str>>,
}

impl DeviceEntry {
    /// May a message of `publisher` carry this device's readings? Its own, or its gateway's.
    pub fn speaks_for_me(&self, publisher: &str) -> bool {
        *self.id == *publisher || self.gateway.as_deref() == Some(publisher)
    }
}

/// Where a device is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A `[[devices]]` entry of the configuration file.
    Config,
    /// A row of `registry.db` (`kenko device add`).
    Registry,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Registry => "registry",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registered device with what authenticating it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub entry: Arc<DeviceEntry>,
    /// argon2id hash (PHC) of its MQTT password; `None`: client certificate only.
    pub password_hash: Option<Arc<str>>,
    pub source: Source,
}

impl Registered {
    fn from_config(d: &DeviceConfig) -> Registered {
        Registered {
            entry: Arc::new(DeviceEntry {
                id: Arc::from(d.id.as_str()),
                kind: d.kind,
                citizen: Arc::from(d.citizen.as_str()),
                profile: Arc::from(d.profile()),
                timezone: d.timezone.as_deref().map(Arc::from),
                gateway: d.gateway.as_deref().map(Arc::from),
            }),
            password_hash: d.password_hash.as_deref().map(Arc::from),
            source: Source::Config,
        }
    }

    fn from_stored(d: &StoredDevice) -> Registered {
        Registered {
            entry: Arc::new(DeviceEntry {
                id: Arc::from(d.id.as_str()),
                kind: d.kind,
                citizen: Arc::from(d.citizen.as_str()),
                profile: Arc::from(d.profile.as_str()),
                timezone: d.timezone.as_deref().map(Arc::from),
                gateway: d.gateway.as_deref().map(Arc::from),
            }),
            password_hash: d.password_hash.as_deref().map(Arc::from),
            source: Source::Registry,
        }
    }
}

/// The devices in force at one moment.
#[derive(Debug, Default, PartialEq)]
pub struct Devices {
    by_id: HashMap<Arc<str>, Registered>,
    /// Ids of the devices other devices are registered behind.
    gateways: HashSet<Arc<str>>,
}

impl Devices {
    fn new(by_id: HashMap<Arc<str>, Registered>) -> Devices {
        let gateways = by_id
            .values()
            .filter_map(|d| d.entry.gateway.clone())
            .collect();
        Devices { by_id, gateways }
    }

    /// The devices registered behind `gateway` (none for a device that is no gateway).
    pub fn behind<'a>(&'a self, gateway: &'a str) -> impl Iterator<Item = &'a DeviceEntry> + 'a {
        let all = self.gateways.contains(gateway).then(|| self.iter());
        all.into_iter()
            .flatten()
            .filter(move |d| d.gateway.as_deref() == Some(gateway))
    }

    pub fn get(&self, device_id: &str) -> Option<&Registered> {
        self.by_id.get(device_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &DeviceEntry> {
        self.by_id.values().map(|d| &*d.entry)
    }

    pub fn registered(&self) -> impl Iterator<Item = &Registered> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Lookup of registered devices by id. Cheap to clone; clones share the devices in force, so
/// a change made through one (the watcher's) is seen by all.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The configuration's devices; they win over a `registry.db` row with the same id.
    config: Vec<Registered>,
    /// Ids a `registry.db` device may not take: the configuration's other principals.
    reserved: HashSet<String>,
    current: RwLock<Arc<Devices>>,
    /// Principals of `registry.db` (`kenko principal add`), by id.
    principals: RwLock<Arc<HashMap<String, Arc<StoredPrincipal>>>>,
    generation: AtomicU64,
}

impl Registry {
    /// The configuration's devices alone.
    pub fn from_config(devices: &[DeviceConfig]) -> Registry {
        Registry::build(devices, HashSet::new())
    }

    /// The configuration's devices, with its principals' ids kept from `registry.db` devices;
    /// add those with [`Registry::set_stored`] or a [`RegistryWatcher`].
    pub fn new(config: &Config) -> Registry {
        let reserved = config
            .principals
            .iter()
            .map(|p| p.id.clone())
            .chain([ANONYMOUS.to_owned()])
            .collect();
        Registry::build(&config.devices, reserved)
    }

    fn build(devices: &[DeviceConfig], reserved: HashSet<String>) -> Registry {
        let config: Vec<Registered> = devices.iter().map(Registered::from_config).collect();
        let by_id = config
            .iter()
            .map(|d| (d.entry.id.clone(), d.clone()))
            .collect();
        Registry {
            shared: Arc::new(Shared {
                config,
                reserved,
                current: RwLock::new(Arc::new(Devices::new(by_id))),
                principals: RwLock::default(),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// The device with this id, as the ingest path needs it.
    pub fn get(&self, device_id: &str) -> Option<Arc<DeviceEntry>> {
        self.read().by_id.get(device_id).map(|d| d.entry.clone())
    }

    /// The device with this id and its credentials, as authentication needs it.
    pub fn lookup(&self, device_id: &str) -> Option<Registered> {
        self.read().by_id.get(device_id).cloned()
    }

    /// The devices in force now; later changes do not alter it.
    pub fn snapshot(&self) -> Arc<Devices> {
        self.read().clone()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Changes each time another set of devices or principals takes force.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Arc<Devices>> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Puts the configuration's devices and `stored` (the rows of `registry.db`) in force. A
    /// row whose id is taken by a configuration device or principal is left out (and logged):
    /// the configuration may have gained that id after the row was added. Returns whether
    /// anything changed.
    pub fn set_stored(&self, stored: &[StoredDevice]) -> bool {
        let shared = &*self.shared;
        let mut by_id: HashMap<Arc<str>, Registered> = shared
            .config
            .iter()
            .map(|d| (d.entry.id.clone(), d.clone()))
            .collect();
        for row in stored {
            if by_id.contains_key(row.id.as_str()) || shared.reserved.contains(&row.id) {
                tracing::warn!(
                    device = %row.id,
                    "registry.db device left out: the config file uses its id; remove it with `kenko device remove`"
                );
                continue;
            }
            let registered = Registered::from_stored(row);
            by_id.insert(registered.entry.id.clone(), registered);
        }
        let devices = Devices::new(by_id);
        // Compared under the read lock: lookups wait only for the swap itself. Reloads come
        // from one watcher thread, so nothing changes between the two locks.
        if **self.read() == devices {
            return false;
        }
        *shared.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(devices);
        shared.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// The principal of `registry.db` with this id, as it is in force now.
    pub fn principal(&self, id: &str) -> Option<Arc<StoredPrincipal>> {
        self.read_principals().get(id).cloned()
    }

    /// The principals of `registry.db` in force now.
    pub fn principals(&self) -> Arc<HashMap<String, Arc<StoredPrincipal>>> {
        self.read_principals().clone()
    }

    fn read_principals(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, Arc<HashMap<String, Arc<StoredPrincipal>>>> {
        self.shared
            .principals
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `stored` (the principals of `registry.db`) in force. A row whose id the
    /// configuration or a device uses is left out (and logged). Returns whether anything
    /// changed.
    pub fn set_principals(&self, stored: &[StoredPrincipal]) -> bool {
        let devices = self.snapshot();
        let mut by_id = HashMap::new();
        for row in stored {
            if self.shared.reserved.contains(&row.id) || devices.get(&row.id).is_some() {
                tracing::warn!(
                    principal = %row.id,
                    "registry.db principal left out: the config file or a device uses its id; remove it with `kenko principal remove`"
                );
                continue;
            }
            by_id.insert(row.id.clone(), Arc::new(row.clone()));
        }
        if **self.read_principals() == by_id {
            return false;
        }
        *self
            .shared
            .principals
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(by_id);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Reads the devices and principals of `registry.db` at `path` once and puts them in force (for a
    /// process that runs the pipeline without a watcher). A missing file adds none.
    pub fn load_stored(&self, path: &Path) -> Result<(), DeviceError> {
        if !path.exists() {
            return Ok(());
        }
        let stored = DeviceStore::open_read_only(path)?.list()?;
        self.set_stored(&stored);
        if let Some(principals) = PrincipalStore::open_read_only(path)? {
            self.set_principals(&principals.list()?);
        }
        Ok(())
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
            gateway: None,
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

    fn row(id: &str, citizen: &str) -> StoredDevice {
        StoredDevice {
            id: id.to_owned(),
            kind: DeviceKind::Wearable,
            citizen: citizen.to_owned(),
            profile: "wearable-json-v1".to_owned(),
            timezone: Some("Europe/Berlin".to_owned()),
            gateway: None,
            password_hash: Some("$argon2id$v=19$m=256,t=1,p=1$c2FsdA$aGFzaA".to_owned()),
            added_ms: 1,
        }
    }

    #[test]
    fn stored_devices_join_the_config_devices_in_every_clone() {
        let mut config = Config {
            devices: demo_devices(2),
            ..Config::default()
        };
        config.principals.push(kenko_config::PrincipalConfig {
            id: "st-luke".into(),
            roles: vec!["care".into()],
            password_hash: None,
            citizen: None,
        });
        let registry = Registry::new(&config);
        let ingest = registry.clone();
        let before = registry.generation();
        let held = ingest.get("bed-001").expect("config device");

        // A row may not shadow a config device or a principal.
        assert!(registry.set_stored(&[
            row("watch-1", "citizen-009"),
            row("bed-001", "someone-else"),
            row("st-luke", "c"),
        ]));
        assert_ne!(ingest.generation(), before);
        assert_eq!(ingest.len(), 3);
        let watch = ingest.lookup("watch-1").expect("stored device");
        assert_eq!(watch.source, Source::Registry);
        assert_eq!(&*watch.entry.citizen, "citizen-009");
        assert_eq!(watch.entry.timezone.as_deref(), Some("Europe/Berlin"));
        assert!(watch.password_hash.is_some());
        let bed = ingest.lookup("bed-001").expect("config device");
        assert_eq!(
            (bed.source, &*bed.entry.citizen),
            (Source::Config, "citizen-001")
        );
        assert!(ingest.get("st-luke").is_none());

        // The same rows again change nothing; removing the row removes the device.
        let generation = ingest.generation();
        assert!(!registry.set_stored(&[row("watch-1", "citizen-009")]));
        assert_eq!(ingest.generation(), generation);
        assert!(registry.set_stored(&[]));
        assert!(ingest.get("watch-1").is_none());
        assert_eq!(ingest.snapshot().iter().count(), 2);
        // An entry handed out earlier stays usable.
        assert_eq!(&*held.citizen, "citizen-001");
    }
}
