//! The `devices` table of `registry.db`: devices added with `kenko device add`, checked as the
//! configuration checks its `[[devices]]`.

use std::path::{Path, PathBuf};

use kenko_config::{
    check_identifier, check_password_hash, Config, ConfigError, DeviceKind, ANONYMOUS,
};
use rusqlite::{params, Connection};

use super::db;

/// Why a device could not be added, listed or removed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device registry {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("device registry {0} does not exist; no device was ever added there")]
    Missing(PathBuf),
    #[error("device id {id:?} {why}")]
    BadId { id: String, why: String },
    #[error("citizen id {citizen:?} of device {id} {why}")]
    BadCitizen {
        id: String,
        citizen: String,
        why: String,
    },
    #[error("unknown device kind {0:?}; known kinds: {known}", known = known_kinds())]
    UnknownKind(String),
    #[error("unknown payload profile {profile:?}; known profiles: {known}")]
    UnknownProfile { profile: String, known: String },
    #[error("payload profile {profile:?} is for {profile_kind} devices, not {kind}; choose a {kind} profile or leave out --profile")]
    ProfileKind {
        profile: String,
        profile_kind: DeviceKind,
        kind: DeviceKind,
    },
    #[error("gateway {gateway:?} of device {id} {why}")]
    BadGateway {
        id: String,
        gateway: String,
        why: String,
    },
    #[error("device {0} has devices registered behind it ({1}); remove them, or add them again without --gateway, first")]
    GatewayInUse(String, String),
    #[error("unknown time zone {zone:?} ({why}); use an IANA name such as Asia/Tokyo")]
    UnknownZone { zone: String, why: String },
    #[error("device {0} is already registered in registry.db; remove it first with `kenko device remove --id {0}`")]
    Duplicate(String),
    #[error("device {0} is a [[devices]] entry of the config file; change or remove it by editing that file")]
    InConfig(String),
    #[error("{0} is a principal of the config file; a device id may not be a principal id")]
    Principal(String),
    #[error("{0} is a principal of registry.db (`kenko principal add`); a device id may not be a principal id")]
    StoredPrincipal(String),
    #[error("\"anonymous\" is reserved for clients without credentials; choose another device id")]
    Reserved,
    #[error("device {0} is not registered in registry.db")]
    NotFound(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    PrincipalTable(#[from] super::PrincipalError),
    #[error("cannot start the thread that watches registry.db: {0}")]
    Thread(std::io::Error),
}

fn known_kinds() -> String {
    DeviceKind::ALL.map(DeviceKind::as_str).join(", ")
}

pub(super) fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> DeviceError + '_ {
    move |source| DeviceError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

/// A device to add, as the operator gave it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewDevice {
    pub id: String,
    /// A kind name (`bed`, `wearable`, ...).
    pub kind: String,
    pub citizen: String,
    /// The kind's default profile when absent.
    pub profile: Option<String>,
    /// The hub's default zone when absent.
    pub timezone: Option<String>,
    /// The device (a gateway) that may publish this device's readings in its own messages.
    pub gateway: Option<String>,
    /// argon2id hash (PHC) of the device's MQTT password; without it the device can only
    /// authenticate with a client certificate.
    pub password_hash: Option<String>,
}

/// A row of the `devices` table.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDevice {
    pub id: String,
    pub kind: DeviceKind,
    pub citizen: String,
    pub profile: String,
    pub timezone: Option<String>,
    pub gateway: Option<String>,
    pub password_hash: Option<String>,
    /// When it was added, epoch milliseconds.
    pub added_ms: i64,
}

impl NewDevice {
    /// Checks the device as the configuration checks a `[[devices]]` entry, and that its id
    /// is free in `config` (no device, no principal); gives the row to store.
    pub fn check(self, config: &Config, now_ms: i64) -> Result<StoredDevice, DeviceError> {
        let profiles = kenko_config::profile::all_profiles(&config.profiles)?;
        self.check_with(config, &profiles, now_ms)
    }

    /// As [`NewDevice::check`], with `profiles` (every profile `config` knows) read once
    /// for many devices.
    pub fn check_with(
        self,
        config: &Config,
        profiles: &[kenko_config::ProfileConfig],
        now_ms: i64,
    ) -> Result<StoredDevice, DeviceError> {
        if let Err(why) = check_identifier(&self.id) {
            return Err(DeviceError::BadId { id: self.id, why });
        }
        if self.id == ANONYMOUS {
            return Err(DeviceError::Reserved);
        }
        if config.devices.iter().any(|d| d.id == self.id) {
            return Err(DeviceError::InConfig(self.id));
        }
        if config.principals.iter().any(|p| p.id == self.id) {
            return Err(DeviceError::Principal(self.id));
        }
        if let Err(why) = check_identifier(&self.citizen) {
            return Err(DeviceError::BadCitizen {
                id: self.id,
                citizen: self.citizen,
                why,
            });
        }
        let kind: DeviceKind = self
            .kind
            .parse()
            .map_err(|_| DeviceError::UnknownKind(self.kind.clone()))?;
        let profile = self
            .profile
            .unwrap_or_else(|| kind.default_profile().to_owned());
        let Some(known) = profiles.iter().find(|p| p.name == profile) else {
            let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
            return Err(DeviceError::UnknownProfile {
                profile,
                known: names.join(", "),
            });
        };
        if let Some(profile_kind) = known.kind.filter(|k| *k != kind) {
            return Err(DeviceError::ProfileKind {
                profile,
                profile_kind,
                kind,
            });
        }
        if let Some(zone) = &self.timezone {
            if let Err(e) = jiff::tz::TimeZone::get(zone) {
                return Err(DeviceError::UnknownZone {
                    zone: zone.clone(),
                    why: e.to_string(),
                });
            }
        }
        if let Some(gateway) = &self.gateway {
            if let Err(why) = check_identifier(gateway) {
                return Err(DeviceError::BadGateway {
                    id: self.id,
                    gateway: gateway.clone(),
                    why,
                });
            }
            if *gateway == self.id {
                return Err(DeviceError::BadGateway {
                    id: self.id,
                    gateway: gateway.clone(),
                    why: "is the device itself; a device speaks for itself without one".into(),
                });
            }
        }
        check_password_hash(&self.id, self.password_hash.as_deref())?;
        Ok(StoredDevice {
            id: self.id,
            kind,
            citizen: self.citizen,
            profile,
            timezone: self.timezone,
            gateway: self.gateway,
            password_hash: self.password_hash,
            added_ms: now_ms,
        })
    }
}

/// Writes `device` as a row of the table with `verb` (`INSERT`, or `INSERT OR REPLACE`).
pub(super) fn write_row(
    tx: &rusqlite::Transaction<'_>,
    device: &StoredDevice,
    verb: &str,
) -> rusqlite::Result<usize> {
    tx.execute(
        &format!(
            "{verb} INTO devices (id, kind, citizen, profile, timezone, password_hash, added_at, gateway)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ),
        params![
            device.id,
            device.kind.as_str(),
            device.citizen,
            device.profile,
            device.timezone,
            device.password_hash,
            device.added_ms,
            device.gateway
        ],
    )
}

/// The ids of the table's devices registered behind `gateway`.
fn behind(conn: &Connection, gateway: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT id FROM devices WHERE gateway = ?1 ORDER BY id")?;
    let ids = stmt.query_map([gateway], |r| r.get(0))?;
    ids.collect()
}

/// The `devices` table of one `registry.db`.
pub struct DeviceStore {
    conn: Connection,
    path: PathBuf,
}

impl DeviceStore {
    /// Opens (or creates) `registry.db` in WAL mode and creates its tables if missing.
    pub fn open(path: &Path) -> Result<DeviceStore, DeviceError> {
        Ok(DeviceStore {
            conn: db::open(path).map_err(sqlite(path))?,
            path: path.to_owned(),
        })
    }

    /// Opens an existing `registry.db` for reading; a file without the table lists no device.
    pub fn open_read_only(path: &Path) -> Result<DeviceStore, DeviceError> {
        let conn = db::open_read_only(path)
            .map_err(sqlite(path))?
            .ok_or_else(|| DeviceError::Missing(path.to_owned()))?;
        Ok(DeviceStore {
            conn,
            path: path.to_owned(),
        })
    }

    /// Checks `new` (see [`NewDevice::check`]) and adds it; refuses an id already in the table.
    pub fn add(
        &mut self,
        config: &Config,
        new: NewDevice,
        now_ms: i64,
    ) -> Result<StoredDevice, DeviceError> {
        let device = new.check(config, now_ms)?;
        let path = self.path.clone();
        let tx = db::immediate(&mut self.conn).map_err(sqlite(&path))?;
        match db::holder(&tx, &device.id).map_err(sqlite(&path))? {
            Some(db::Holder::Device) => return Err(DeviceError::Duplicate(device.id)),
            Some(db::Holder::Principal) => return Err(DeviceError::StoredPrincipal(device.id)),
            None => {}
        }
        let named_as_gateway = behind(&tx, &device.id).map_err(sqlite(&path))?;
        if !named_as_gateway.is_empty() {
            return Err(DeviceError::BadId {
                id: device.id,
                why: format!(
                    "is still the gateway of {}, which were registered behind a device of that id since removed; remove them first, or they would be spoken for by this new device",
                    named_as_gateway.join(", ")
                ),
            });
        }
        if let Some(gateway) = &device.gateway {
            let in_config = config.devices.iter().any(|d| d.id == *gateway);
            let stored =
                db::holder(&tx, gateway).map_err(sqlite(&path))? == Some(db::Holder::Device);
            if !in_config && !stored {
                return Err(DeviceError::BadGateway {
                    id: device.id,
                    gateway: gateway.clone(),
                    why: "is not a registered device; add the gateway first".into(),
                });
            }
        }
        write_row(&tx, &device, "INSERT").map_err(sqlite(&path))?;
        tx.commit().map_err(sqlite(&path))?;
        Ok(device)
    }

    /// Every device in the table, by id.
    pub fn list(&self) -> Result<Vec<StoredDevice>, DeviceError> {
        let path = &self.path;
        if !db::has_table(&self.conn, "devices").map_err(sqlite(path))? {
            return Ok(Vec::new());
        }
        let gateway = if db::has_column(&self.conn, "devices", "gateway").map_err(sqlite(path))? {
            "gateway"
        } else {
            "NULL" // a read-only file of an older kenko
        };
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT id, kind, citizen, profile, timezone, password_hash, added_at, {gateway}
                 FROM devices ORDER BY id"
            ))
            .map_err(sqlite(path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(1)?,
                    StoredDevice {
                        id: r.get(0)?,
                        kind: DeviceKind::Bed,
                        citizen: r.get(2)?,
                        profile: r.get(3)?,
                        timezone: r.get(4)?,
                        password_hash: r.get(5)?,
                        added_ms: r.get(6)?,
                        gateway: r.get(7)?,
                    },
                ))
            })
            .map_err(sqlite(path))?;
        let mut devices = Vec::new();
        for row in rows {
            let (kind, mut device) = row.map_err(sqlite(path))?;
            match kind.parse() {
                Ok(kind) => device.kind = kind,
                Err(_) => {
                    // Written by a newer kenko with more kinds: leave it out rather than
                    // decode its payloads as the wrong kind.
                    tracing::warn!(device = %device.id, kind, "registry.db device of a kind this kenko does not know; left out");
                    continue;
                }
            }
            devices.push(device);
        }
        Ok(devices)
    }

    /// Removes the device; returns it as it was stored. A gateway with devices registered
    /// behind it stays.
    pub fn remove(&mut self, id: &str) -> Result<StoredDevice, DeviceError> {
        let device = self
            .list()?
            .into_iter()
            .find(|d| d.id == id)
            .ok_or_else(|| DeviceError::NotFound(id.to_owned()))?;
        let path = self.path.clone();
        let tx = db::immediate(&mut self.conn).map_err(sqlite(&path))?;
        let behind = behind(&tx, id).map_err(sqlite(&path))?;
        if !behind.is_empty() {
            return Err(DeviceError::GatewayInUse(id.to_owned(), behind.join(", ")));
        }
        let removed = tx
            .execute("DELETE FROM devices WHERE id = ?1", [id])
            .map_err(sqlite(&path))?;
        if removed == 0 {
            return Err(DeviceError::NotFound(id.to_owned()));
        }
        tx.commit().map_err(sqlite(&path))?;
        Ok(device)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Changes whenever another connection has committed to the file since the last call.
    pub fn data_version(&self) -> Result<i64, DeviceError> {
        self.conn
            .pragma_query_value(None, "data_version", |r| r.get(0))
            .map_err(sqlite(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

    fn config() -> Config {
        Config::from_toml(
            "[[devices]]\nid = \"bed-001\"\nkind = \"bed\"\ncitizen = \"citizen-001\"\n\n[[principals]]\nid = \"st-luke\"\nroles = [\"care\"]\n",
            Path::new("kenko.toml"),
        )
        .expect("valid config")
    }

    fn watch(id: &str) -> NewDevice {
        NewDevice {
            id: id.to_owned(),
            kind: "wearable".to_owned(),
            citizen: "citizen-002".to_owned(),
            profile: None,
            timezone: Some("Europe/Berlin".to_owned()),
            gateway: None,
            password_hash: Some(HASH.to_owned()),
        }
    }

    #[test]
    fn a_device_is_registered_behind_a_registered_gateway() {
        let dir = tempfile::tempdir().expect("dir");
        let mut store = DeviceStore::open(&dir.path().join("registry.db")).expect("open");
        let behind = |id: &str, gateway: &str| NewDevice {
            gateway: Some(gateway.to_owned()),
            ..watch(id)
        };
        let err = store
            .add(&config(), behind("watch-3", "hub-9"), 1)
            .expect_err("no such gateway");
        assert!(
            err.to_string()
                .contains("gateway \"hub-9\" of device watch-3 is not a registered device"),
            "{err}"
        );
        let err = store
            .add(&config(), behind("watch-3", "watch-3"), 1)
            .expect_err("itself");
        assert!(err.to_string().contains("is the device itself"), "{err}");
        store.add(&config(), watch("hub-1"), 1).expect("gateway");
        let added = store
            .add(&config(), behind("watch-3", "hub-1"), 2)
            .expect("behind a stored gateway");
        assert_eq!(added.gateway.as_deref(), Some("hub-1"));
        store
            .add(&config(), behind("watch-4", "bed-001"), 3)
            .expect("behind a gateway of the config file");
        assert_eq!(
            store.list().expect("list")[1].gateway.as_deref(),
            Some("hub-1")
        );
        let err = store.remove("hub-1").expect_err("in use");
        assert!(
            err.to_string()
                .contains("device hub-1 has devices registered behind it (watch-3)"),
            "{err}"
        );
        store.remove("watch-3").expect("remove");
        store.remove("hub-1").expect("no longer in use");
        // watch-4 stays behind bed-001 of the config; were that entry removed from the
        // config, a new device of its id would speak for watch-4: refused.
        let err = store
            .add(&Config::default(), watch("bed-001"), 4)
            .expect_err("a removed gateway's id");
        assert!(
            err.to_string().contains("is still the gateway of watch-4"),
            "{err}"
        );
    }

    #[test]
    fn a_file_of_an_older_kenko_gains_the_gateway_column() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("registry.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE devices (id TEXT PRIMARY KEY, kind TEXT NOT NULL, citizen TEXT NOT NULL,
                   profile TEXT NOT NULL, timezone TEXT, password_hash TEXT, added_at INTEGER NOT NULL);
                 INSERT INTO devices VALUES ('bed-9', 'bed', 'c-9', 'bed-json-v1', NULL, NULL, 5);",
            )
            .expect("old schema");
        }
        let old = DeviceStore::open_read_only(&path)
            .expect("ro")
            .list()
            .expect("list");
        assert_eq!(
            (old[0].id.as_str(), old[0].gateway.as_deref()),
            ("bed-9", None)
        );
        let mut store = DeviceStore::open(&path).expect("open migrates");
        store
            .add(
                &config(),
                NewDevice {
                    gateway: Some("bed-9".into()),
                    ..watch("w-1")
                },
                6,
            )
            .expect("add behind");
        let listed = store.list().expect("list");
        assert_eq!(listed[1].gateway.as_deref(), Some("bed-9"));
    }

    #[test]
    fn add_list_and_remove() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("registry.db");
        let mut store = DeviceStore::open(&path).expect("open");
        assert!(store.list().expect("list").is_empty());
        let added = store.add(&config(), watch("watch-2"), 42).expect("add");
        assert_eq!(
            added.profile, "wearable-json-v1",
            "the kind's default profile"
        );
        let thermo = NewDevice {
            kind: "thermo".into(),
            profile: Some("thermo-json-v1".into()),
            timezone: None,
            password_hash: None,
            ..watch("thermo-1")
        };
        store.add(&config(), thermo, 43).expect("add");

        let listed = DeviceStore::open_read_only(&path)
            .expect("read only")
            .list()
            .expect("list");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[1], added, "stored as added, sorted by id");
        assert_eq!(listed[0].kind, DeviceKind::Thermo);
        assert_eq!(listed[0].password_hash, None);

        let removed = store.remove("watch-2").expect("remove");
        assert_eq!(removed.id, "watch-2");
        let ids: Vec<String> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, ["thermo-1"]);
        let err = store.remove("watch-2").expect_err("gone");
        assert!(matches!(err, DeviceError::NotFound(_)), "{err}");
    }

    #[test]
    fn a_second_add_of_an_id_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let mut store = DeviceStore::open(&dir.path().join("registry.db")).expect("open");
        store.add(&config(), watch("watch-2"), 1).expect("add");
        let err = store
            .add(&config(), watch("watch-2"), 2)
            .expect_err("duplicate");
        assert!(matches!(err, DeviceError::Duplicate(_)), "{err}");
        assert!(
            err.to_string().contains("kenko device remove --id watch-2"),
            "{err}"
        );
        assert_eq!(
            store.list().expect("list")[0].added_ms,
            1,
            "the first stays"
        );
    }

    #[test]
    fn the_table_lives_beside_other_tables_of_registry_db() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("registry.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE consents (id INTEGER PRIMARY KEY); PRAGMA user_version = 1;",
            )
            .expect("other schema");
        }
        assert!(DeviceStore::open_read_only(&path)
            .expect("ro")
            .list()
            .expect("no table yet")
            .is_empty());
        let mut store = DeviceStore::open(&path).expect("open");
        store.add(&config(), watch("watch-2"), 1).expect("add");
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, 1, "the schema version belongs to kenko-ingest");
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        assert!(matches!(
            DeviceStore::open_read_only(&dir.path().join("nope.db")),
            Err(DeviceError::Missing(_))
        ));
    }

    #[test]
    fn another_connection_s_commit_changes_the_data_version() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("registry.db");
        let watcher = DeviceStore::open(&path).expect("open");
        let before = watcher.data_version().expect("version");
        assert_eq!(watcher.data_version().expect("version"), before);
        DeviceStore::open(&path)
            .expect("open")
            .add(&config(), watch("watch-2"), 1)
            .expect("add");
        assert_ne!(watcher.data_version().expect("version"), before);
    }

    #[test]
    fn devices_are_checked_as_the_config_checks_them() {
        let cases: Vec<(NewDevice, &str)> = vec![
            (watch("a/b"), "device id \"a/b\" contains '/'"),
            (watch("bed+"), "device id \"bed+\" contains '+'"),
            (watch(""), "device id \"\" is empty"),
            (
                NewDevice { citizen: "c#1".into(), ..watch("w") },
                "citizen id \"c#1\" of device w contains '#'",
            ),
            (
                NewDevice { kind: "toaster".into(), ..watch("w") },
                "unknown device kind \"toaster\"; known kinds: bed, wearable, bp, scale, thermo, oximeter, glucose",
            ),
            (
                NewDevice { profile: Some("nope-v9".into()), ..watch("w") },
                "unknown payload profile \"nope-v9\"; known profiles: bed-json-v1,",
            ),
            (
                NewDevice { profile: Some("bed-json-v1".into()), ..watch("w") },
                "payload profile \"bed-json-v1\" is for bed devices, not wearable",
            ),
            (
                NewDevice { timezone: Some("Mars/Olympus".into()), ..watch("w") },
                "unknown time zone \"Mars/Olympus\"",
            ),
            (
                NewDevice { password_hash: Some("plain".into()), ..watch("w") },
                "not an argon2id hash",
            ),
            (watch("bed-001"), "device bed-001 is a [[devices]] entry of the config file"),
            (watch("st-luke"), "st-luke is a principal of the config file"),
            (watch("anonymous"), "reserved for clients without credentials"),
        ];
        for (new, says) in cases {
            let err = new.clone().check(&config(), 1).expect_err(&new.id);
            assert!(err.to_string().contains(says), "{new:?}: {err}");
        }
        let ok = watch("w").check(&config(), 7).expect("valid");
        assert_eq!((ok.kind, ok.added_ms), (DeviceKind::Wearable, 7));
    }
}
