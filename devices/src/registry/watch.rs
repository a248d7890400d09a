//! The thread that keeps a running hub's [`Registry`] in step with `registry.db`: it polls
//! SQLite's `PRAGMA data_version` (a cheap query that changes when another connection commits)
//! and rereads the `devices` and `principals` tables when it changes (a [`Poller`]).

use std::path::Path;
use std::time::Duration;

use kenko_config::poll::Poller;

use super::{DeviceError, DeviceStore, PrincipalStore, Registry};

/// Stops (and joins) its thread when dropped.
pub struct RegistryWatcher {
    _poller: Poller,
}

impl RegistryWatcher {
    /// Opens `registry.db` at `path` (creating the tables if needed), puts its devices and
    /// principals in force in `registry` before returning, then checks for changes every
    /// `every`.
    pub fn start(
        path: &Path,
        registry: Registry,
        every: Duration,
    ) -> Result<RegistryWatcher, DeviceError> {
        let devices = DeviceStore::open(path)?;
        let principals = PrincipalStore::open(path)?;
        let mut seen = devices.data_version()?;
        reload(&devices, &principals, &registry)?;
        let poller = Poller::spawn("kenko-registry", every, move || {
            let version = match devices.data_version() {
                Ok(v) if v == seen => return,
                Ok(v) => v,
                Err(e) => {
                    return tracing::error!(error = %e, "cannot check registry.db for changes")
                }
            };
            match reload(&devices, &principals, &registry) {
                Ok(()) => seen = version,
                Err(e) => tracing::error!(error = %e,
                    "cannot reread registry.db; the devices and principals in force stay"),
            }
        })
        .map_err(DeviceError::Thread)?;
        Ok(RegistryWatcher { _poller: poller })
    }
}

/// Puts the file's devices, then its principals, in force (a principal is checked against
/// the devices in force).
fn reload(
    devices: &DeviceStore,
    principals: &PrincipalStore,
    registry: &Registry,
) -> Result<(), DeviceError> {
    let (devices, principals) = (devices.list()?, principals.list()?);
    if registry.set_stored(&devices) {
        tracing::info!(devices = registry.len(), "device registry reloaded");
    }
    if registry.set_principals(&principals) {
        tracing::info!(
            principals = registry.principals().len(),
            "principals of registry.db reloaded"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::registry::NewDevice;

    #[test]
    fn a_device_or_principal_added_or_removed_elsewhere_takes_force() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("registry.db");
        let config = kenko_config::Config::default();
        let mut cli = DeviceStore::open(&path).expect("open");
        let new = |id: &str| NewDevice {
            id: id.into(),
            kind: "bed".into(),
            citizen: "citizen-1".into(),
            ..NewDevice::default()
        };
        cli.add(&config, new("bed-a"), 1).expect("add");
        let registry = Registry::new(&config);
        let watcher = RegistryWatcher::start(&path, registry.clone(), Duration::from_millis(10))
            .expect("start");
        assert!(
            registry.get("bed-a").is_some(),
            "loaded before start returns"
        );

        let until = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !done() {
                assert!(Instant::now() < deadline, "{what} within 5 s");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        cli.add(&config, new("bed-b"), 2).expect("add");
        until("bed-b added", &|| registry.get("bed-b").is_some());
        cli.remove("bed-a").expect("remove");
        until("bed-a removed", &|| registry.get("bed-a").is_none());

        let mut people = PrincipalStore::open(&path).expect("open");
        let ops = crate::registry::NewPrincipal {
            id: "ops-9".into(),
            roles: vec!["operator".into()],
            citizen: None,
            password_hash: "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        };
        people.add(&config, ops, 3).expect("add");
        until("ops-9 added", &|| registry.principal("ops-9").is_some());
        people.remove("ops-9").expect("remove");
        until("ops-9 removed", &|| registry.principal("ops-9").is_none());
        drop(watcher);
    }
}
