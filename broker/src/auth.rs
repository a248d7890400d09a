//! Who a client is: principals from the configuration (devices and others), passwords checked
//! against argon2id hashes, client certificates, the anonymous principal.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use kenko_config::{Config, ANONYMOUS};
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
}

/// A principal's password hash could not be used.
#[derive(Debug, thiserror::Error)]
#[error("password_hash of {id} is not a valid argon2id PHC string: {why}")]
pub struct BadHash {
    pub id: String,
    pub why: String,
}

/// Every principal of the configuration.
#[derive(Debug, Default)]
pub struct Directory {
    by_id: HashMap<String, Arc<Identity>>,
    anonymous: Option<Arc<Identity>>,
}

impl Directory {
    /// The devices (role `device`) and other principals of `config`; checks every hash.
    pub fn from_config(config: &Config) -> Result<Directory, BadHash> {
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
        for d in &config.devices {
            let identity = Identity {
                id: d.id.clone(),
                roles: vec![DEVICE_ROLE.to_owned()],
                device: Some(d.id.clone()),
                citizen: Some(d.citizen.clone()),
                password_hash: d.password_hash.clone(),
            };
            by_id.insert(d.id.clone(), Arc::new(identity));
        }
        for identity in by_id.values() {
            if let Some(hash) = &identity.password_hash {
                let parsed = PasswordHash::new(hash).map_err(|e| BadHash {
                    id: identity.id.clone(),
                    why: e.to_string(),
                })?;
                let why = if parsed.algorithm.as_str() != "argon2id" {
                    Some(format!("algorithm is {}, not argon2id", parsed.algorithm))
                } else if parsed.salt.is_none() || parsed.hash.is_none() {
                    Some("it has no salt or no hash".to_owned())
                } else {
                    Params::try_from(&parsed)
                        .err()
                        .map(|e| format!("bad parameters: {e}"))
                };
                if let Some(why) = why {
                    return Err(BadHash {
                        id: identity.id.clone(),
                        why,
                    });
                }
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
        Ok(Directory { by_id, anonymous })
    }

    /// The principal with this id (`anonymous` when anonymous clients are allowed).
    pub fn get(&self, id: &str) -> Option<&Arc<Identity>> {
        self.by_id
            .get(id)
            .or_else(|| self.anonymous.as_ref().filter(|a| a.id == id))
    }

    /// The principal of clients without credentials, if they are allowed.
    pub fn anonymous(&self) -> Option<&Arc<Identity>> {
        self.anonymous.as_ref()
    }

    /// Is `client_id` the id of a registered device? Such ids belong to that device alone.
    pub fn is_device(&self, client_id: &str) -> bool {
        self.by_id
            .get(client_id)
            .is_some_and(|i| i.device.is_some())
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
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
        assert!(verify_password(luke, b"pw"));
        let bed = dir.get("bed-1").expect("device");
        assert_eq!(bed.roles, vec![DEVICE_ROLE]);
        assert_eq!(bed.citizen.as_deref(), Some("c-1"));
        assert!(!bed.has_password(), "no hash: certificate only");
        assert!(!verify_password(bed, b""));
        assert!(dir.is_device("bed-1") && !dir.is_device("st-luke"));
        assert_eq!(
            dir.get(ANONYMOUS).map(|a| a.roles.clone()),
            Some(vec![ANONYMOUS.to_owned()])
        );
    }

    #[test]
    fn the_example_config_principal_logs_in_with_the_documented_password() {
        let example = config(include_str!("../../config/kenko.example.toml"));
        let dir = Directory::from_config(&example).expect("example hashes are valid");
        let ops = dir.get("ops-1").expect("ops-1");
        assert!(verify_password(ops, b"example-only-change-me"));
    }

    #[test]
    fn malformed_hash_is_refused_at_start() {
        let text = "[[principals]]\nid = \"p\"\npassword_hash = \"$argon2id$v=19$garbage\"\n";
        let err = Directory::from_config(&config(text)).expect_err("bad hash");
        assert!(err.to_string().contains("password_hash of p"), "{err}");
    }
}
