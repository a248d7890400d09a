//! The thread that keeps a running hub's [`Registry`] in step with `registry.db`: it polls
//! SQLite's `PRAGMA data_version` (a cheap query that changes when another connection commits)
//! and rereads the `devices` table when it changes.

use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::{DeviceError, DeviceStore, Registry};

/// Stops (and joins) its thread when dropped.
pub struct DeviceWatcher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DeviceWatcher {
    /// Opens `registry.db` at `path` (creating the table if needed), puts its devices in
    /// force in `registry` before returning, then checks for changes every `every`.
    pub fn start(
        path: &Path,
        registry: Registry,
        every: Duration,
    ) -> Result<DeviceWatcher, DeviceError> {
        let store = DeviceStore::open(path)?;
        let mut seen = store.data_version()?;
        registry.set_stored(&store.list()?);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("kenko-devices".into())
            .spawn(move || {
                // Ends when the sender is dropped.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let version = match store.data_version() {
                        Ok(v) if v == seen => continue,
                        Ok(v) => v,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot check registry.db for device changes");
                            continue;
                        }
                    };
                    match store.list() {
                        Ok(devices) => {
                            seen = version;
                            if registry.set_stored(&devices) {
                                tracing::info!(
                                    devices = registry.len(),
                                    "device registry reloaded"
                                );
                            }
                        }
                        Err(e) => tracing::error!(error = %e,
                            "cannot reread the devices of registry.db; the devices in force stay"),
                    }
                }
            })
            .map_err(DeviceError::Thread)?;
        Ok(DeviceWatcher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for DeviceWatcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::registry::NewDevice;

    #[test]
    fn a_device_added_or_removed_elsewhere_takes_force() {
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
        let watcher = DeviceWatcher::start(&path, registry.clone(), Duration::from_millis(10))
            .expect("start");
        assert!(
            registry.get("bed-a").is_some(),
            "loaded before start returns"
        );

        let until = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !done() {
                assert!(Instant::now() < deadline, "{what} within 5 s");
                thread::sleep(Duration::from_millis(5));
            }
        };
        cli.add(&config, new("bed-b"), 2).expect("add");
        until("bed-b added", &|| registry.get("bed-b").is_some());
        cli.remove("bed-a").expect("remove");
        until("bed-a removed", &|| registry.get("bed-a").is_none());
        drop(watcher);
    }
}
