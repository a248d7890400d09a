//! The `principals` table of `registry.db`: people and services (a citizen's app, a care
//! service, an analyst, an operator) added while the hub runs with `kenko principal add` or
//! the HTTP API, beside the `[[principals]]` of the configuration file. Checked as the
//! configuration checks its principals; an id names one principal or device in the whole
//! hub, so an add also looks at the `devices` table in the same transaction.

use std::path::{Path, PathBuf};

use kenko_config::{check_identifier, check_password_hash, Config, ANONYMOUS, RESERVED_ROLES};
use rusqlite::{params, Connection};

use super::db;

/// The role whose principals act for one citizen (`{citizen}` in ACL patterns).
pub const CITIZEN_ROLE: &str = "citizen";

/// Why a principal could not be added, changed, listed or removed.
#[derive(Debug, thiserror::Error)]
pub enum PrincipalError {
    #[error("principal registry {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("principal id {id:?} {why}")]
    BadId { id: String, why: String },
    #[error("role {role:?} of principal {id} {why}")]
    BadRole {
        id: String,
        role: String,
        why: String,
    },
    #[error("principal {0} has no role; give at least one (--role care, say)")]
    NoRole(String),
    #[error("principal {0} has the role citizen: say which citizen it acts for (--citizen)")]
    CitizenNeeded(String),
    #[error("principal {0} names a citizen but has not the role citizen; only a citizen's app acts for a citizen")]
    CitizenWithoutRole(String),
    #[error("citizen id {citizen:?} of principal {id} {why}")]
    BadCitizen {
        id: String,
        citizen: String,
        why: String,
    },
    #[error("principal {0} needs a password: API clients and MQTT clients log in with one")]
    NoPassword(String),
    #[error("principal {0} is already in registry.db; change its password with `kenko principal passwd` or remove it first")]
    Duplicate(String),
    #[error("{0} is a [[principals]] entry of the config file; change or remove it by editing that file")]
    InConfig(String),
    #[error("{0} is a device id; a principal id may not be a device id")]
    Device(String),
    #[error("\"anonymous\" is reserved for clients without credentials; choose another id")]
    Reserved,
    #[error("principal {0} is not in registry.db")]
    NotFound(String),
    #[error(transparent)]
    Config(#[from] kenko_config::ConfigError),
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> PrincipalError + '_ {
    move |source| PrincipalError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

/// A principal to add, as the operator gave it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewPrincipal {
    pub id: String,
    pub roles: Vec<String>,
    /// For a citizen's app: the citizen it acts for.
    pub citizen: Option<String>,
    /// argon2id hash (PHC) of its password.
    pub password_hash: String,
}

/// A row of the `principals` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPrincipal {
    pub id: String,
    pub roles: Vec<String>,
    pub citizen: Option<String>,
    pub password_hash: String,
    /// When it was added, epoch milliseconds.
    pub added_ms: i64,
    /// When it was added or its password last changed, epoch milliseconds.
    pub changed_ms: i64,
}

impl NewPrincipal {
    /// Checks the principal as the configuration checks a `[[principals]]` entry, and that
    /// its id is not one of `config`'s principals or devices; gives the row to store.
    pub fn check(self, config: &Config, now_ms: i64) -> Result<StoredPrincipal, PrincipalError> {
        if let Err(why) = check_identifier(&self.id) {
            return Err(PrincipalError::BadId { id: self.id, why });
        }
        if self.id == ANONYMOUS {
            return Err(PrincipalError::Reserved);
        }
        if config.principals.iter().any(|p| p.id == self.id) {
            return Err(PrincipalError::InConfig(self.id));
        }
        if config.devices.iter().any(|d| d.id == self.id) {
            return Err(PrincipalError::Device(self.id));
        }
        self.check_roles()?;
        if self.password_hash.is_empty() {
            return Err(PrincipalError::NoPassword(self.id));
        }
        check_password_hash(&self.id, Some(&self.password_hash))?;
        Ok(StoredPrincipal {
            id: self.id,
            roles: self.roles,
            citizen: self.citizen,
            password_hash: self.password_hash,
            added_ms: now_ms,
            changed_ms: now_ms,
        })
    }

    fn check_roles(&self) -> Result<(), PrincipalError> {
        let id = &self.id;
        if self.roles.is_empty() {
            return Err(PrincipalError::NoRole(id.clone()));
        }
        for role in &self.roles {
            let bad = |why: String| PrincipalError::BadRole {
                id: id.clone(),
                role: role.clone(),
                why,
            };
            check_identifier(role).map_err(bad)?;
            if RESERVED_ROLES.contains(&role.as_str()) {
                return Err(bad(
                    "is reserved: the hub gives it to devices and to clients without credentials"
                        .to_owned(),
                ));
            }
        }
        let citizen_role = self.roles.iter().any(|r| r == CITIZEN_ROLE);
        match &self.citizen {
            None if citizen_role => Err(PrincipalError::CitizenNeeded(id.clone())),
            Some(_) if !citizen_role => Err(PrincipalError::CitizenWithoutRole(id.clone())),
            Some(citizen) => check_identifier(citizen).map_err(|why| PrincipalError::BadCitizen {
                id: id.clone(),
                citizen: citizen.clone(),
                why,
            }),
            None => Ok(()),
        }
    }
}

/// The `principals` table of one `registry.db`.
pub struct PrincipalStore {
    conn: Connection,
    path: PathBuf,
}

impl PrincipalStore {
    /// Opens (or creates) `registry.db` and its tables.
    pub fn open(path: &Path) -> Result<PrincipalStore, PrincipalError> {
        Ok(PrincipalStore {
            conn: db::open(path).map_err(sqlite(path))?,
            path: path.to_owned(),
        })
    }

    /// Opens an existing `registry.db` for reading; a missing file or table lists none.
    pub fn open_read_only(path: &Path) -> Result<Option<PrincipalStore>, PrincipalError> {
        let Some(conn) = db::open_read_only(path).map_err(sqlite(path))? else {
            return Ok(None);
        };
        Ok(Some(PrincipalStore {
            conn,
            path: path.to_owned(),
        }))
    }

    /// Checks `new` (see [`NewPrincipal::check`]) and adds it; refuses an id already taken
    /// by a principal or a device of the file.
    pub fn add(
        &mut self,
        config: &Config,
        new: NewPrincipal,
        now_ms: i64,
    ) -> Result<StoredPrincipal, PrincipalError> {
        let principal = new.check(config, now_ms)?;
        let path = self.path.clone();
        let tx = db::immediate(&mut self.conn).map_err(sqlite(&path))?;
        match db::holder(&tx, &principal.id).map_err(sqlite(&path))? {
            Some(db::Holder::Principal) => return Err(PrincipalError::Duplicate(principal.id)),
            Some(db::Holder::Device) => return Err(PrincipalError::Device(principal.id)),
            None => {}
        }
        tx.execute(
            "INSERT INTO principals (id, roles, citizen, password_hash, added_at, changed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![
                principal.id,
                principal.roles.join(","),
                principal.citizen,
                principal.password_hash,
                now_ms
            ],
        )
        .map_err(sqlite(&path))?;
        tx.commit().map_err(sqlite(&path))?;
        Ok(principal)
    }

    /// Every principal of the table, by id.
    pub fn list(&self) -> Result<Vec<StoredPrincipal>, PrincipalError> {
        let path = &self.path;
        if !db::has_table(&self.conn, "principals").map_err(sqlite(path))? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, roles, citizen, password_hash, added_at, changed_at
                 FROM principals ORDER BY id",
            )
            .map_err(sqlite(path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredPrincipal {
                    id: r.get(0)?,
                    roles: r
                        .get::<_, String>(1)?
                        .split(',')
                        .filter(|r| !r.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    citizen: r.get(2)?,
                    password_hash: r.get(3)?,
                    added_ms: r.get(4)?,
                    changed_ms: r.get(5)?,
                })
            })
            .map_err(sqlite(path))?;
        rows.collect::<Result<_, _>>().map_err(sqlite(path))
    }

    /// The principal with this id, if the table has it.
    pub fn get(&self, id: &str) -> Result<Option<StoredPrincipal>, PrincipalError> {
        Ok(self.list()?.into_iter().find(|p| p.id == id))
    }

    /// Replaces the principal's password hash.
    pub fn set_password(
        &mut self,
        id: &str,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<StoredPrincipal, PrincipalError> {
        check_password_hash(id, Some(password_hash))?;
        let changed = self
            .conn
            .execute(
                "UPDATE principals SET password_hash = ?2, changed_at = ?3 WHERE id = ?1",
                params![id, password_hash, now_ms],
            )
            .map_err(sqlite(&self.path))?;
        if changed == 0 {
            return Err(PrincipalError::NotFound(id.to_owned()));
        }
        self.get(id)?
            .ok_or_else(|| PrincipalError::NotFound(id.to_owned()))
    }

    /// Removes the principal; returns it as it was stored.
    pub fn remove(&mut self, id: &str) -> Result<StoredPrincipal, PrincipalError> {
        let principal = self
            .get(id)?
            .ok_or_else(|| PrincipalError::NotFound(id.to_owned()))?;
        self.conn
            .execute("DELETE FROM principals WHERE id = ?1", [id])
            .map_err(sqlite(&self.path))?;
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{DeviceStore, NewDevice};

    const HASH: &str = "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

    fn config() -> Config {
        Config::from_toml(
            "[[devices]]\nid = \"bed-001\"\nkind = \"bed\"\ncitizen = \"citizen-001\"\n\n[[principals]]\nid = \"st-luke\"\nroles = [\"care\"]\n",
            Path::new("kenko.toml"),
        )
        .expect("valid config")
    }

    fn person(id: &str, roles: &[&str], citizen: Option<&str>) -> NewPrincipal {
        NewPrincipal {
            id: id.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            citizen: citizen.map(str::to_owned),
            password_hash: HASH.to_owned(),
        }
    }

    #[test]
    fn add_list_change_and_remove() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("registry.db");
        let mut store = PrincipalStore::open(&path).expect("open");
        assert!(store.list().expect("list").is_empty());
        let app = store
            .add(
                &config(),
                person("app-7", &["citizen"], Some("citizen-7")),
                5,
            )
            .expect("add");
        store
            .add(&config(), person("ops-2", &["operator", "city"], None), 6)
            .expect("add");
        let listed = PrincipalStore::open_read_only(&path)
            .expect("open")
            .expect("exists")
            .list()
            .expect("list");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0], app);
        assert_eq!(listed[1].roles, ["operator", "city"]);

        let other = "$argon2id$v=19$m=256,t=1,p=1$b3RoZXJzYWx0$aGFzaGhhc2hoYXNoaGFzaA";
        let changed = store.set_password("app-7", other, 9).expect("passwd");
        assert_eq!(
            (
                changed.password_hash.as_str(),
                changed.added_ms,
                changed.changed_ms
            ),
            (other, 5, 9)
        );
        assert!(matches!(
            store.set_password("nobody", other, 9),
            Err(PrincipalError::NotFound(_))
        ));
        assert_eq!(store.remove("app-7").expect("remove").id, "app-7");
        assert!(matches!(
            store.remove("app-7"),
            Err(PrincipalError::NotFound(_))
        ));
        assert_eq!(store.list().expect("list").len(), 1);
    }

    #[test]
    fn an_id_names_one_principal_or_device_in_the_whole_hub() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("registry.db");
        let mut devices = DeviceStore::open(&path).expect("open");
        let watch = NewDevice {
            id: "watch-1".into(),
            kind: "wearable".into(),
            citizen: "citizen-2".into(),
            ..NewDevice::default()
        };
        devices.add(&config(), watch, 1).expect("device");
        let mut store = PrincipalStore::open(&path).expect("open");
        store
            .add(&config(), person("analyst-1", &["analyst"], None), 2)
            .expect("add");
        let refused = |new: NewPrincipal| {
            PrincipalStore::open(&path)
                .expect("open")
                .add(&config(), new, 3)
                .expect_err("refused")
        };
        for (new, says) in [
            (
                person("analyst-1", &["analyst"], None),
                "already in registry.db",
            ),
            (person("watch-1", &["care"], None), "is a device id"),
            (person("bed-001", &["care"], None), "is a device id"),
            (person("st-luke", &["care"], None), "[[principals]] entry"),
            (person("anonymous", &["care"], None), "reserved"),
            (person("a/b", &["care"], None), "principal id"),
            (person("x", &[], None), "has no role"),
            (person("x", &["device"], None), "is reserved"),
            (person("x", &["citizen"], None), "--citizen"),
            (
                person("x", &["care"], Some("citizen-1")),
                "not the role citizen",
            ),
            (person("x", &["citizen"], Some("c+")), "citizen id"),
            (
                NewPrincipal {
                    password_hash: String::new(),
                    ..person("x", &["care"], None)
                },
                "needs a password",
            ),
            (
                NewPrincipal {
                    password_hash: "plain".into(),
                    ..person("x", &["care"], None)
                },
                "argon2id",
            ),
        ] {
            let err = refused(new.clone()).to_string();
            assert!(err.contains(says), "{new:?}: {err}");
        }
        // And a device may not take a principal's id.
        let err = devices
            .add(
                &config(),
                NewDevice {
                    id: "analyst-1".into(),
                    kind: "bed".into(),
                    citizen: "citizen-3".into(),
                    ..NewDevice::default()
                },
                4,
            )
            .expect_err("taken");
        assert!(err.to_string().contains("principal"), "{err}");
    }
}
