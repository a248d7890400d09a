//! Pseudonyms for the shared (research) store: HMAC-SHA-256 under a key kept in the data
//! directory (`pseudonym.key`, mode 0600), over the citizen id and a per-citizen salt kept in
//! `registry.db`. Rotating the key changes every pseudonym; erasing a citizen deletes their
//! salt, so nobody, the hub included, can link their shared rows to them again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::Sha256;

use crate::store::{sqlite, StoreError};

const KEY_FILE: &str = "pseudonym.key";

/// Makes pseudonyms; caches them per citizen.
pub struct Pseudonymizer {
    key: [u8; 32],
    salts: Connection,
    path: PathBuf,
    cache: HashMap<Arc<str>, Arc<str>>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the key, creating it (32 random bytes, owner-only) on first use.
pub fn load_or_create_key(data_dir: &Path) -> Result<[u8; 32], StoreError> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => bytes.try_into().map_err(|_| StoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a pseudonym key is exactly 32 bytes",
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_new_key(data_dir),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Replaces the key with a fresh one: from now on every citizen has a new pseudonym.
pub fn write_new_key(data_dir: &Path) -> Result<[u8; 32], StoreError> {
    let path = data_dir.join(KEY_FILE);
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let tmp = path.with_extension("new");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io(&tmp))?;
        std::io::Write::write_all(&mut file, &key).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(key)
}

impl Pseudonymizer {
    /// Uses the key in `data_dir` and the salts in `registry.db`.
    pub fn open(data_dir: &Path) -> Result<Pseudonymizer, StoreError> {
        let key = load_or_create_key(data_dir)?;
        let path = data_dir.join("registry.db");
        let salts = Connection::open(&path).map_err(sqlite(&path))?;
        salts
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite(&path))?;
        salts
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS pseudonym_salts (citizen TEXT PRIMARY KEY, salt BLOB NOT NULL)",
            )
            .map_err(sqlite(&path))?;
        Ok(Pseudonymizer {
            key,
            salts,
            path,
            cache: HashMap::new(),
        })
    }

    /// The citizen's pseudonym (32 hex digits).
    pub fn pseudonym(&mut self, citizen: &Arc<str>) -> Result<Arc<str>, StoreError> {
        if let Some(p) = self.cache.get(citizen) {
            return Ok(p.clone());
        }
        let salt: Option<Vec<u8>> = self
            .salts
            .query_row(
                "SELECT salt FROM pseudonym_salts WHERE citizen = ?1",
                params![&**citizen],
                |r| r.get(0),
            )
            .optional()
            .map_err(sqlite(&self.path))?;
        let salt = match salt {
            Some(s) => s,
            None => {
                let mut s = vec![0u8; 16];
                rand::rng().fill_bytes(&mut s);
                self.salts
                    .execute(
                        "INSERT INTO pseudonym_salts (citizen, salt) VALUES (?1, ?2)",
                        params![&**citizen, s],
                    )
                    .map_err(sqlite(&self.path))?;
                s
            }
        };
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(citizen.as_bytes());
        mac.update(&[0]);
        mac.update(&salt);
        let digest = mac.finalize().into_bytes();
        let text: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let pseudonym: Arc<str> = Arc::from(format!("p-{text}"));
        self.cache.insert(citizen.clone(), pseudonym.clone());
        Ok(pseudonym)
    }

    /// Drops the cached pseudonyms, so the next ones are read from the registry again
    /// (another connection may have forgotten a citizen's salt).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Forgets the citizen's link: their salt goes, so their pseudonym cannot be made again.
    pub fn forget(&mut self, citizen: &str) -> Result<(), StoreError> {
        self.salts
            .execute(
                "DELETE FROM pseudonym_salts WHERE citizen = ?1",
                params![citizen],
            )
            .map_err(sqlite(&self.path))?;
        self.cache.retain(|c, _| &**c != citizen);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_keyed_and_forgettable() {
        let dir = tempfile::tempdir().expect("dir");
        let c1: Arc<str> = Arc::from("citizen-001");
        let c2: Arc<str> = Arc::from("citizen-002");
        let mut p = Pseudonymizer::open(dir.path()).expect("open");
        let a = p.pseudonym(&c1).expect("p");
        assert_eq!(a, p.pseudonym(&c1).expect("p"), "stable");
        assert_ne!(a, p.pseudonym(&c2).expect("p"));
        assert!(!a.contains("citizen"));
        let before_rotation = p.pseudonym(&c2).expect("p");
        drop(p);
        let mut again = Pseudonymizer::open(dir.path()).expect("reopen");
        assert_eq!(
            a,
            again.pseudonym(&c1).expect("p"),
            "stable across restarts"
        );
        again.forget("citizen-001").expect("forget");
        assert_ne!(a, again.pseudonym(&c1).expect("p"), "the old link is gone");
        drop(again);
        write_new_key(dir.path()).expect("rotate");
        let mut rotated = Pseudonymizer::open(dir.path()).expect("reopen");
        assert_ne!(
            rotated.pseudonym(&c2).expect("p"),
            before_rotation,
            "a new key makes new pseudonyms"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
