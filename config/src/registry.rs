//! `[registry]`: the hub whose consent records and devices a `kenko worker` follows, so
//! that every worker decides with the consents and devices of one registry (the hub's
//! `registry.db`, served at `/api/v1/registry/…`) instead of a copy kept by hand.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the hub is and how the worker logs in to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The hub's HTTP API: `https://HOST:PORT` (or `http://` on a trusted network).
    pub url: String,
    /// The principal the worker logs in as: one with the `worker` role (or `operator`).
    pub principal: String,
    /// The environment variable that holds the principal's password (read at start).
    #[serde(default = "default_password_env")]
    pub password_env: String,
    /// A file that holds the password (relative to the config file), used when the
    /// environment variable is not set.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the hub's certificate, for `https://`; webpki's
    /// root certificates when left out.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// How long the hub may hold a request open waiting for a change, in seconds: a change
    /// reaches the worker as soon as the hub has it, and an idle worker asks once per wait.
    #[serde(default = "default_wait")]
    pub wait_s: u64,
}

fn default_password_env() -> String {
    "KENKO_REGISTRY_PASSWORD".to_owned()
}

fn default_wait() -> u64 {
    20
}

/// The longest wait a hub grants, in seconds.
pub const MAX_WAIT_S: u64 = 60;

impl RegistryConfig {
    /// Checks what can be checked before connecting.
    pub fn check(&self) -> Result<(), String> {
        let tls = if self.url.starts_with("https://") {
            true
        } else if self.url.starts_with("http://") {
            false
        } else {
            return Err(format!(
                "registry.url {:?} must start with https:// (or http://)",
                self.url
            ));
        };
        let rest = self.url.split_once("://").map_or("", |(_, rest)| rest);
        if rest.trim_end_matches('/').is_empty() || rest.trim_end_matches('/').contains('/') {
            return Err(format!(
                "registry.url {:?} must be the hub's address alone (https://HOST:PORT), without a path",
                self.url
            ));
        }
        if self.ca.is_some() && !tls {
            return Err("registry.ca is for https:// URLs".to_owned());
        }
        crate::check_identifier(&self.principal)
            .map_err(|why| format!("registry.principal {why}"))?;
        if self.wait_s == 0 || self.wait_s > MAX_WAIT_S {
            return Err(format!("registry.wait_s must be 1 to {MAX_WAIT_S} seconds"));
        }
        Ok(())
    }

    /// Whether the password and session stay on this machine or are protected by TLS:
    /// `https://`, or `http://` to a loopback address.
    pub fn plain_is_local(&self) -> bool {
        let Some(rest) = self.url.strip_prefix("http://") else {
            return true;
        };
        let host = rest.split(['/', '?']).next().unwrap_or_default();
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host.split(':').next().unwrap_or_default(),
        };
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The hub's address without a trailing slash.
    pub fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }

    /// The principal's password: from `password_env`, else `password_file`.
    pub fn password(&self) -> Result<Option<String>, String> {
        crate::secret::read(
            "registry",
            &self.password_env,
            self.password_file.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(lines: &str) -> RegistryConfig {
        toml::from_str(lines).expect("registry")
    }

    #[test]
    fn a_hub_is_named_by_its_address_and_a_worker_principal() {
        let ok = registry("url = \"https://hub.city:8443/\"\nprincipal = \"worker-1\"\n");
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(ok.base(), "https://hub.city:8443");
        assert_eq!(ok.wait_s, 20);
        assert!(ok.plain_is_local());
        let plain =
            |url: &str| registry(&format!("url = \"{url}\"\nprincipal = \"w\"\n")).plain_is_local();
        assert!(plain("http://127.0.0.1:8080"));
        assert!(plain("http://[::1]:8080"));
        assert!(plain("http://localhost"));
        assert!(!plain("http://hub.city:8080"));
        assert!(!plain("http://10.0.0.5"));
        for (lines, says) in [
            (
                "url = \"mqtt://hub\"\nprincipal = \"w\"\n",
                "must start with",
            ),
            (
                "url = \"https://hub/api\"\nprincipal = \"w\"\n",
                "without a path",
            ),
            ("url = \"https://\"\nprincipal = \"w\"\n", "without a path"),
            (
                "url = \"http://hub\"\nprincipal = \"w\"\nca = \"ca.pem\"\n",
                "https://",
            ),
            (
                "url = \"https://hub\"\nprincipal = \"a b\"\n",
                "registry.principal",
            ),
            (
                "url = \"https://hub\"\nprincipal = \"w\"\nwait_s = 0\n",
                "wait_s",
            ),
        ] {
            let err = registry(lines).check().expect_err(lines);
            assert!(err.contains(says), "{lines}: {err}");
        }
    }
}
