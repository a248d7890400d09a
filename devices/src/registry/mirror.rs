//! The devices of a hub copied into a worker's `registry.db`: the worker that follows a hub
//! (`[registry]`) makes its `devices` table the hub's list, so that its registry watcher
//! and everything that reads the table see the hub's devices, also after a restart with the
//! hub out of reach.

use kenko_config::Config;

use super::db;
use super::store::{sqlite, write_row, DeviceError, DeviceStore, NewDevice, StoredDevice};

/// What one copy changed, and the devices of the hub this worker cannot take.
#[derive(Debug, Default)]
pub struct MirrorReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    /// Devices left out, with why (a profile or zone this worker does not know, say): their
    /// telemetry is dead-lettered as from an unknown device until the worker knows them.
    pub refused: Vec<DeviceError>,
}

impl MirrorReport {
    pub fn changed_anything(&self) -> bool {
        self.added + self.changed + self.removed > 0
    }
}

impl DeviceStore {
    /// Makes the table the hub's `devices` (checked as `kenko device add` checks one, against
    /// this worker's `config`; without passwords, which only a broker needs) in one
    /// transaction. A device that is unchanged keeps its row and time.
    pub fn mirror(
        &mut self,
        config: &Config,
        devices: Vec<NewDevice>,
        now_ms: i64,
    ) -> Result<MirrorReport, DeviceError> {
        let mut report = MirrorReport::default();
        let profiles = kenko_config::profile::all_profiles(&config.profiles)?;
        let mut wanted = Vec::with_capacity(devices.len());
        for device in devices {
            let device = NewDevice {
                password_hash: None,
                ..device
            };
            match device.check_with(config, &profiles, now_ms) {
                Ok(stored) => wanted.push(stored),
                Err(e) => report.refused.push(e),
            }
        }
        let held: std::collections::HashMap<String, StoredDevice> = self
            .list()?
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect();
        let path = self.path().to_owned();
        let tx = db::immediate(self.connection()).map_err(sqlite(&path))?;
        let mut keep = std::collections::HashSet::with_capacity(wanted.len());
        for device in &wanted {
            keep.insert(device.id.as_str());
            match held.get(&device.id) {
                Some(here) if same(here, device) => continue,
                Some(_) => report.changed += 1,
                None => report.added += 1,
            }
            write_row(&tx, device, "INSERT OR REPLACE").map_err(sqlite(&path))?;
        }
        for id in held.keys().filter(|id| !keep.contains(id.as_str())) {
            tx.execute("DELETE FROM devices WHERE id = ?1", [id])
                .map_err(sqlite(&path))?;
            report.removed += 1;
        }
        tx.commit().map_err(sqlite(&path))?;
        Ok(report)
    }
}

/// The same device, as far as decoding its telemetry goes.
fn same(a: &StoredDevice, b: &StoredDevice) -> bool {
    (
        &a.kind,
        &a.citizen,
        &a.profile,
        &a.timezone,
        &a.gateway,
        &a.password_hash,
    ) == (
        &b.kind,
        &b.citizen,
        &b.profile,
        &b.timezone,
        &b.gateway,
        &b.password_hash,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::from_toml(
            "[[devices]]\nid = \"bed-001\"\nkind = \"bed\"\ncitizen = \"citizen-001\"\n",
            Path::new("kenko.toml"),
        )
        .expect("valid config")
    }

    fn device(id: &str, citizen: &str) -> NewDevice {
        NewDevice {
            id: id.to_owned(),
            kind: "bed".to_owned(),
            citizen: citizen.to_owned(),
            profile: None,
            timezone: None,
            gateway: None,
            password_hash: Some("$argon2id$v=19$m=256,t=1,p=1$c2FsdA$aGFzaA".to_owned()),
        }
    }

    #[test]
    fn the_table_becomes_the_hubs_list_and_what_cannot_be_taken_is_told() {
        let dir = tempfile::tempdir().expect("dir");
        let mut store = DeviceStore::open(&dir.path().join("registry.db")).expect("open");
        store
            .add(&config(), device("bed-local", "citizen-009"), 1)
            .expect("add");
        let hub = vec![
            device("bed-101", "citizen-101"),
            device("bed-102", "citizen-102"),
            NewDevice {
                profile: Some("no-such-profile".into()),
                ..device("bed-103", "citizen-103")
            },
        ];
        let report = store.mirror(&config(), hub, 10).expect("mirror");
        assert_eq!((report.added, report.changed, report.removed), (2, 0, 1));
        assert_eq!(report.refused.len(), 1);
        assert!(
            report.refused[0].to_string().contains("no-such-profile"),
            "{}",
            report.refused[0]
        );
        let listed = store.list().expect("list");
        let ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["bed-101", "bed-102"]);
        assert!(listed.iter().all(|d| d.password_hash.is_none()));

        let moved = vec![
            device("bed-101", "citizen-101"),
            device("bed-102", "citizen-201"),
        ];
        let report = store.mirror(&config(), moved.clone(), 20).expect("mirror");
        assert_eq!((report.added, report.changed, report.removed), (0, 1, 0));
        let listed = store.list().expect("list");
        assert_eq!(listed[0].added_ms, 10, "an unchanged device keeps its row");
        assert_eq!(listed[1].citizen, "citizen-201");
        let report = store.mirror(&config(), moved.clone(), 30).expect("mirror");
        assert!(!report.changed_anything());

        // A device put behind a gateway at the hub is behind it here too.
        let behind = vec![
            moved[0].clone(),
            NewDevice {
                gateway: Some("bed-101".into()),
                ..moved[1].clone()
            },
        ];
        let report = store.mirror(&config(), behind, 40).expect("mirror");
        assert_eq!((report.added, report.changed, report.removed), (0, 1, 0));
        assert_eq!(
            store.list().expect("list")[1].gateway.as_deref(),
            Some("bed-101")
        );
    }
}
