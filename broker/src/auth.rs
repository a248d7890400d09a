//! Who a client is: principals from the configuration, devices from the device registry
//! (configuration and `registry.db`), passwords checked against argon2id hashes, client
//! certificates, the anonymous principal.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use kenko_config::{Config, ANONYMOUS};
use kenko_devices::Registry;
use rand::RngCore;

use crate::acl::Principal;

/// The role every device principal has.
pub const DEVICE_ROLE: &str = "device";

/// A principal the hub knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    pub roles: Vec<String>,
    /// The device id, if the principal is a device.
    pub device: Option<String>,
    /// The citizen bound to the principal: a device's user, or the citizen an app acts for.
    pub citizen: Option<String>,
    password_hash: Option<String>,
}

impl Identity {
    /// The principal as the ACL sees it, connected with `client_id` and `username`.
    pub fn principal<'a>(&'a self, client_id: &'a str, username: Option<&'a str>) -> Principal<'a> {
        Principal {
            id: &self.id,
            client_id,
            username,
            roles: &self.roles,
            device: self.device.as_deref(),
            citizen: self.citizen.as_deref(),
        }
    }

    pub fn has_password(&self) -> bool {
        self.password_hash.is_some()
    }

    /// The argon2id hash of the principal's password, if it has one.
    pub(crate) fn password_hash(&self) -> Option<&str> {
        self.password_hash.as_deref()
    }
}

/// The most memory one verification may take: 64 MiB (argon2's memory cost is in KiB).
/// A larger cost lets each login, a wrong one included, take that much of the hub.
pub const MAX_MEMORY_KIB: u32 = 64 * 1024;
/// The most passes over memory a hash may ask for; OWASP's baselines use 1 to 5.
pub const MAX_TIME_COST: u32 = 16;
/// The most lanes a hash may ask for (kenko verifies on one thread per login anyway).
pub const MAX_PARALLELISM: u32 = 16;

/// A principal's password hash could not be used.
#[derive(Debug, thiserror::Error)]
#[error("password_hash of {id} is not a valid argon2id PHC string: {why}")]
pub struct BadHash {
    pub id: String,
    pub why: String,
}

/// A configuration entry's password hash could not be used; `place` is the entry's
/// file:line (or "the configuration" when it came from no file).
#[derive(Debug, thiserror::Error)]
#[error("{place}: {source}")]
pub struct EntryHash {
    pub place: String,
    pub source: BadHash,
}

/// Every principal the hub knows: the configuration's principals, and the principals and
/// devices of the shared [`Registry`] (`registry.db` principals, configuration devices and
/// `registry.db` devices; those of `registry.db` may change while the hub runs).
#[derive(Debug, Default)]
pub struct Directory {
    by_id: HashMap<String, Arc<Identity>>,
    devices: Registry,
    anonymous: Option<Arc<Identity>>,
}

impl Directory {
    /// The devices (role `device`) and other principals of `config`; checks every hash.
    pub fn from_config(config: &Config) -> Result<Directory, EntryHash> {
        Directory::with_devices(config, Registry::new(config))
    }

    /// The principals of `config` and the devices of `devices` (role `device`). Checks the
    /// hashes of the configuration; `registry.db` devices are checked when they are added.
    pub fn with_devices(config: &Config, devices: Registry) -> Result<Directory, EntryHash> {
        let mut by_id = HashMap::new();
        for p in &config.principals {
            let identity = Identity {
                id: p.id.clone(),
                roles: p.roles.clone(),
                device: None,
                citizen: p.citizen.clone(),
                password_hash: p.password_hash.clone(),
            };
            by_id.insert(p.id.clone(), Arc::new(identity));
        }
        let hashes = config
            .principals
            .iter()
            .map(|p| (&p.id, &p.password_hash))
            .chain(config.devices.iter().map(|d| (&d.id, &d.password_hash)));
        for (id, hash) in hashes {
            if let Some(hash) = hash {
                check_hash(id, hash).map_err(|source| EntryHash {
                    place: config
                        .place_of(id)
                        .unwrap_or_else(|| "the configuration".to_owned()),
                    source,
                })?;
            }
        }
        let anonymous = config.auth.anonymous.then(|| {
            Arc::new(Identity {
                id: ANONYMOUS.to_owned(),
                roles: vec![ANONYMOUS.to_owned()],
                device: None,
                citizen: None,
                password_hash: None,
            })
        });
        Ok(Directory {
            by_id,
            devices,
            anonymous,
        })
    }

    /// The principal with this id (`anonymous` when anonymous clients are allowed), as the
    /// directory knows it now.
    pub fn get(&self, id: &str) -> Option<Arc<Identity>> {
        if let Some(identity) = self.by_id.get(id) {
            return Some(identity.clone());
        }
        if let Some(p) = self.devices.principal(id) {
            return Some(Arc::new(Identity {
                id: p.id.clone(),
                roles: p.roles.clone(),
                device: None,
                citizen: p.citizen.clone(),
                password_hash: Some(p.password_hash.clone()),
            }));
        }
        if let Some(device) = self.devices.lookup(id) {
            return Some(Arc::new(Identity {
                id: device.entry.id.to_string(),
                roles: vec![DEVICE_ROLE.to_owned()],
                device: Some(device.entry.id.to_string()),
                citizen: Some(device.entry.citizen.to_string()),
                password_hash: device.password_hash.as_deref().map(str::to_owned),
            }));
        }
        self.anonymous.clone().filter(|a| a.id == id)
    }

    /// The principal of clients without credentials, if they are allowed.
    pub fn anonymous(&self) -> Option<&Arc<Identity>> {
        self.anonymous.as_ref()
    }

    /// Is `client_id` the id of a registered device? Such ids belong to that device alone.
    pub fn is_device(&self, client_id: &str) -> bool {
        !self.by_id.contains_key(client_id)
            && self.devices.principal(client_id).is_none()
            && self.devices.get(client_id).is_some()
    }

    /// Why `identity` may not use the non-empty `client_id`, if it may not: a device's
    /// client id is its device id, a registered device's id is no one else's, and ids
    /// starting with `kenko-hub` are the hub's own.
    pub fn client_id_refusal(&self, identity: &Identity, client_id: &str) -> Option<String> {
        if let Some(device) = &identity.device {
            return (client_id != device)
                .then(|| format!("device {device} must connect with client id {device}"));
        }
        if self.is_device(client_id) {
            return Some(
                "this client id belongs to a registered device; only that device may use it"
                    .to_owned(),
            );
        }
        client_id
            .starts_with(crate::hub::HUB_CLIENT_ID)
            .then(|| "client ids starting with kenko-hub are reserved".to_owned())
    }

    /// The ids of every principal known now (configuration, `registry.db` principals,
    /// devices, and `anonymous` when allowed), sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.by_id.keys().cloned().collect();
        ids.extend(self.devices.principals().keys().cloned());
        ids.extend(self.devices.snapshot().iter().map(|d| d.id.to_string()));
        ids.extend(self.anonymous.iter().map(|a| a.id.clone()));
        ids.sort();
        ids.dedup();
        ids
    }

    /// Principals and devices known now.
    pub fn len(&self) -> usize {
        self.by_id.len() + self.devices.principals().len() + self.devices.len()
    }

    /// The devices and `registry.db` principals the directory looks up.
    pub fn registry(&self) -> &Registry {
        &self.devices
    }

    /// Changes each time the principals or devices of `registry.db` in force change.
    pub fn generation(&self) -> u64 {
        self.devices.generation()
    }

    /// Is `identity` still the principal the directory knows by its id, with the same roles
    /// and citizen? A connection made before its principal was removed or changed is not.
    pub fn still_current(&self, identity: &Identity) -> bool {
        self.get(&identity.id).is_some_and(|now| {
            now.roles == identity.roles
                && now.citizen == identity.citizen
                && now.password_hash == identity.password_hash
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A hash must be argon2id in PHC format with a salt and valid parameters.
fn check_hash(id: &str, hash: &str) -> Result<(), BadHash> {
    let bad = |why: String| BadHash {
        id: id.to_owned(),
        why,
    };
    let parsed = PasswordHash::new(hash).map_err(|e| bad(e.to_string()))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(bad(format!(
            "algorithm is {}, not argon2id",
            parsed.algorithm
        )));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(bad("it has no salt or no hash".to_owned()));
    }
    let params = Params::try_from(&parsed).map_err(|e| bad(format!("bad parameters: {e}")))?;
    check_cost(&params).map_err(bad)
}

/// Refuses hash parameters that would let one login take too much memory or time.
fn check_cost(params: &Params) -> Result<(), String> {
    let redo = "hash the password again with `kenko hash-password`";
    if params.m_cost() > MAX_MEMORY_KIB {
        return Err(format!(
            "its memory cost m={} KiB is above the {MAX_MEMORY_KIB} KiB (64 MiB) a login may take; {redo}",
            params.m_cost()
        ));
    }
    if params.t_cost() > MAX_TIME_COST {
        return Err(format!(
            "its time cost t={} is above the {MAX_TIME_COST} passes a login may take; {redo}",
            params.t_cost()
        ));
    }
    if params.p_cost() > MAX_PARALLELISM {
        return Err(format!(
            "its parallelism p={} is above {MAX_PARALLELISM}; {redo}",
            params.p_cost()
        ));
    }
    Ok(())
}

/// The parameters of a hash, if it is a usable argon2 hash within kenko's bounds.
pub(crate) fn hash_params(hash: &str) -> Option<Params> {
    let parsed = PasswordHash::new(hash).ok()?;
    let params = Params::try_from(&parsed).ok()?;
    check_cost(&params).ok().map(|()| params)
}

/// How expensive a new hash is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// For passwords people choose: OWASP's argon2id baseline (19 MiB, 2 passes).
    Password,
    /// For random machine tokens of 128 bits or more, where guessing is hopeless anyway:
    /// cheap enough that thousands of devices can reconnect at once.
    Token,
}

/// A fresh random machine token: 128 bits as 32 hex digits (hash it with [`Cost::Token`]).
pub fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An argon2id hash of `password` in PHC format, with a fresh random salt.
pub fn hash_password(password: &str, cost: Cost) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    hasher(cost)
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2id accepts any password with valid parameters")
        .to_string()
}

fn hasher(cost: Cost) -> Argon2<'static> {
    let params = match cost {
        Cost::Password => Params::new(19 * 1024, 2, 1, None),
        Cost::Token => Params::new(256, 1, 1, None),
    }
    .expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// An argon2id hash of `password` with the given parameters and a fresh salt: a stand-in
/// as costly to verify as the real hashes it imitates.
pub(crate) fn hash_with_params(password: &str, params: Params) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2id accepts any password with valid parameters")
        .to_string()
}

/// Does `password` match `hash`? Works in `memory`, which grows to the hash's memory cost
/// and is kept by the caller for the next verification: a thread that verifies logins
/// holds one buffer for good instead of allocating (and the allocator keeping) one per
/// login. Hashes beyond kenko's bounds match nothing.
pub(crate) fn verify_in(hash: &str, password: &[u8], memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if check_cost(&params).is_err() {
        return false;
    }
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..blocks])
        .is_err()
    {
        return false;
    }
    // Output compares in constant time.
    Output::new(&out).is_ok_and(|computed| computed == expected)
}
/// Does `password` match the identity's hash? Expensive by design: call it off the async
/// workers. An identity without a hash matches no password.
pub fn verify_password(identity: &Identity, password: &[u8]) -> bool {
    let Some(hash) = &identity.password_hash else {
        return false;
    };
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    // The parameters come from the hash itself.
    Argon2::default().verify_password(password, &parsed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text, std::path::Path::new("kenko.toml")).expect("valid config")
    }

    #[test]
    fn hashes_verify_only_their_password() {
        for cost in [Cost::Token, Cost::Password] {
            let hash = hash_password("s3cret", cost);
            assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
            let id = Identity {
                id: "p".into(),
                roles: vec![],
                device: None,
                citizen: None,
                password_hash: Some(hash.clone()),
            };
            assert!(verify_password(&id, b"s3cret"));
            assert!(!verify_password(&id, b"s3cret "));
            assert!(!verify_password(&id, b""));
            assert_ne!(hash, hash_password("s3cret", cost), "salts differ");
        }
    }

    #[test]
    fn directory_binds_devices_and_principals() {
        let hash = hash_password("pw", Cost::Token);
        let text = format!(
            "[auth]\nanonymous = true\n\n[[principals]]\nid = \"st-luke\"\nroles = [\"care\"]\npassword_hash = \"{hash}\"\n\n[[devices]]\nid = \"bed-1\"\nkind = \"bed\"\ncitizen = \"c-1\"\n"
        );
        let dir = Directory::from_config(&config(&text)).expect("directory");
        let luke = dir.get("st-luke").expect("principal");
        assert_eq!(luke.roles, vec!["care"]);
        assert!(verify_password(&luke, b"pw"));
        let bed = dir.get("bed-1").expect("device");
        assert_eq!(bed.roles, vec![DEVICE_ROLE]);
        assert_eq!(bed.citizen.as_deref(), Some("c-1"));
        assert!(!bed.has_password(), "no hash: certificate only");
        assert!(!verify_password(&bed, b""));
        assert!(dir.is_device("bed-1") && !dir.is_device("st-luke"));
        assert_eq!(
            dir.get(ANONYMOUS).map(|a| a.roles.clone()),
            Some(vec![ANONYMOUS.to_owned()])
        );
    }

    #[test]
    fn registry_db_devices_come_and_go_while_the_directory_lives() {
        let config = config("[[devices]]\nid = \"bed-1\"\nkind = \"bed\"\ncitizen = \"c-1\"\n");
        let registry = Registry::new(&config);
        let dir = Directory::with_devices(&config, registry.clone()).expect("directory");
        assert!(dir.get("watch-7").is_none() && !dir.is_device("watch-7"));
        let hash = hash_password("pw7", Cost::Token);
        registry.set_stored(&[kenko_devices::registry::StoredDevice {
            id: "watch-7".into(),
            kind: kenko_config::DeviceKind::Wearable,
            citizen: "c-7".into(),
            profile: "wearable-json-v1".into(),
            timezone: None,
            gateway: None,
            password_hash: Some(hash),
            added_ms: 0,
        }]);
        let watch = dir.get("watch-7").expect("added device");
        assert_eq!(watch.roles, vec![DEVICE_ROLE]);
        assert_eq!(
            (watch.device.as_deref(), watch.citizen.as_deref()),
            (Some("watch-7"), Some("c-7"))
        );
        assert!(verify_password(&watch, b"pw7") && !verify_password(&watch, b"pw"));
        assert!(dir.is_device("watch-7") && dir.is_device("bed-1"));
        assert_eq!(dir.len(), 2);
        registry.set_stored(&[]);
        assert!(dir.get("watch-7").is_none() && !dir.is_device("watch-7"));
    }

    #[test]
    fn the_example_config_principal_logs_in_with_the_documented_password() {
        let example = config(include_str!("../../config/kenko.example.toml"));
        let dir = Directory::from_config(&example).expect("example hashes are valid");
        let ops = dir.get("ops-1").expect("ops-1");
        assert!(verify_password(&ops, b"example-only-change-me"));
    }

    #[test]
    fn verifying_in_a_kept_buffer_agrees_with_argon2() {
        let mut memory = Vec::new();
        for cost in [Cost::Password, Cost::Token, Cost::Password] {
            let hash = hash_password("s3cret", cost);
            assert!(verify_in(&hash, b"s3cret", &mut memory));
            assert!(!verify_in(&hash, b"s3cret!", &mut memory));
            assert!(!verify_in("$argon2id$v=19$garbage", b"s3cret", &mut memory));
        }
        assert_eq!(
            memory.len(),
            19 * 1024,
            "the buffer is kept at the largest cost"
        );
    }

    #[test]
    fn hash_parameters_beyond_the_bounds_are_refused_at_start() {
        let huge = Params::new(MAX_MEMORY_KIB + 1, 1, 1, None).expect("params");
        // Building a 64 MiB+ hash would take the test that memory: edit a cheap one instead.
        let cheap = hash_with_params("pw", Params::new(256, 1, 1, None).expect("params"));
        let hash = cheap.replace("m=256", &format!("m={}", huge.m_cost()));
        let text = format!("[[devices]]\nid = \"bed-9\"\nkind = \"bed\"\ncitizen = \"c-9\"\npassword_hash = \"{hash}\"\n");
        let err = Directory::from_config(&config(&text)).expect_err("too much memory");
        let message = err.to_string();
        assert!(message.contains("password_hash of bed-9"), "{message}");
        assert!(
            message.contains("65537 KiB") && message.contains("64 MiB"),
            "{message}"
        );
        assert!(
            !verify_in(&hash, b"pw", &mut Vec::new()),
            "never verified either"
        );
        let slow = cheap.replace("t=1", "t=1000");
        let text = format!("[[principals]]\nid = \"p\"\npassword_hash = \"{slow}\"\n");
        let err = Directory::from_config(&config(&text)).expect_err("too slow");
        assert!(err.to_string().contains("time cost t=1000"), "{err}");
    }

    #[test]
    fn malformed_hash_is_refused_at_start() {
        let text = "[auth]\nanonymous = false\n\n[[principals]]\nid = \"p\"\npassword_hash = \"$argon2id$v=19$garbage\"\n";
        let err = Directory::from_config(&config(text)).expect_err("bad hash");
        let text = err.to_string();
        assert!(text.starts_with("kenko.toml:4: "), "{text}");
        assert!(text.contains("password_hash of p"), "{text}");
    }
}
