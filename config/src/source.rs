//! `[source]`: the external MQTT broker a `kenko worker` takes telemetry from, through a
//! shared subscription, instead of the embedded broker.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The external broker and how a worker subscribes to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (1883 and 8883 when the port is left out).
    pub url: String,
    /// The shared subscription's group: the workers of one group share the load, each
    /// message going to one of them.
    #[serde(default = "default_group")]
    pub group: String,
    /// This worker's client id: keep it the same across restarts, so that the broker keeps
    /// the worker's session and sends it again what it had not acknowledged. Default:
    /// `kenko-worker-` and the machine's host name.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable that holds the password (read at start).
    #[serde(default = "default_password_env")]
    pub password_env: String,
    /// A file that holds the password (relative to the config file), used when the
    /// environment variable is not set.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the broker's certificate, for `mqtts://`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The topic filters subscribed to, each as `$share/{group}/{filter}`.
    #[serde(default = "default_topics")]
    pub topics: Vec<String>,
    /// Seconds between keep-alive pings.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Into how many partitions the devices are split. With more than one, each worker
    /// owns the devices of its `partition` (by [`partition_of`] their id) and subscribes in
    /// a group of that partition alone, so that all of a device's readings reach one
    /// worker, in order (windows need them together).
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// This worker's partition, 0 to `partitions - 1`.
    #[serde(default)]
    pub partition: u32,
}

/// The partition of `device` among `partitions`: FNV-1a (64-bit) of the id's bytes, modulo
/// the count. Stable across versions and machines: the same device always lands on the
/// same partition for a given count.
pub fn partition_of(device: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in device.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

fn default_group() -> String {
    "kenko".to_owned()
}

fn default_password_env() -> String {
    "KENKO_SOURCE_PASSWORD".to_owned()
}

fn default_topics() -> Vec<String> {
    vec![
        "devices/+/telemetry".to_owned(),
        "devices/+/telemetry/pb".to_owned(),
    ]
}

fn default_keep_alive() -> u64 {
    30
}

fn default_partitions() -> u32 {
    1
}

/// `HOST[:PORT]` or `[IPV6][:PORT]` split into host and port text; `None` if it is neither.
fn split_host_port(text: &str) -> Option<(&str, Option<&str>)> {
    let (host, port) = match text.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            (host, port)
        }
        None => match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    let bad_host = host.is_empty()
        || host.contains(['/', '[', ']'])
        || (!text.starts_with('[') && host.contains(':'));
    let bad_port = port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()));
    (!bad_host && !bad_port).then_some((host, port))
}

/// Where the external broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl SourceConfig {
    /// The broker's host, port and whether it speaks TLS, or why the URL cannot be used.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let (tls, rest) = if let Some(rest) = self.url.strip_prefix("mqtt://") {
            (false, rest)
        } else if let Some(rest) = self.url.strip_prefix("mqtts://") {
            (true, rest)
        } else {
            return Err(format!(
                "source.url {:?} must start with mqtt:// or mqtts://",
                self.url
            ));
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = split_host_port(rest).ok_or_else(|| {
            format!(
                "source.url {:?} must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (an IPv6 address in brackets, no path)",
                self.url
            )
        })?;
        let port = match port {
            None => default_port,
            Some(port) => port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                format!(
                    "source.url {:?}: port {port:?} is not a port number",
                    self.url
                )
            })?,
        };
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    /// The shared subscription group this worker joins: `group`, or `group-NpK` for
    /// partition K of N (the count in the name: a fleet with another count subscribes in
    /// groups of its own, and the old groups keep what they hold for their workers).
    pub fn share_group(&self) -> String {
        if self.partitions > 1 {
            format!("{}-{}p{}", self.group, self.partitions, self.partition)
        } else {
            self.group.clone()
        }
    }

    /// Whether this worker takes `device`'s messages.
    pub fn owns(&self, device: &str) -> bool {
        self.partitions <= 1 || partition_of(device, self.partitions) == self.partition
    }

    /// Checks what can be checked before connecting.
    pub fn check(&self) -> Result<(), String> {
        let endpoint = self.endpoint()?;
        if self.ca.is_some() && !endpoint.tls {
            return Err("source.ca is for mqtts:// URLs".to_owned());
        }
        if self.group.is_empty() || self.group.contains(['/', '+', '#']) {
            return Err(format!(
                "source.group {:?} must be one topic level without wildcards",
                self.group
            ));
        }
        if self.partitions == 0 || self.partition >= self.partitions {
            return Err(format!(
                "source.partition {} must be below source.partitions {} (partitions count from 0)",
                self.partition, self.partitions
            ));
        }
        if self.topics.is_empty() {
            return Err("source.topics is empty: nothing would be subscribed to".to_owned());
        }
        if let Some(bad) = self.topics.iter().find(|t| !t.starts_with("devices/")) {
            return Err(format!(
                "source.topics: {bad:?} is not a devices/… telemetry filter; the worker reads devices/{{device_id}}/telemetry and …/pb"
            ));
        }
        Ok(())
    }

    /// The password: from the environment variable `password_env`, else from
    /// `password_file` (trimmed); `None` when neither is set.
    pub fn password(&self) -> Result<Option<String>, String> {
        crate::secret::read("source", &self.password_env, self.password_file.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(url: &str) -> SourceConfig {
        toml::from_str(&format!("url = {url:?}\n")).expect("source")
    }

    #[test]
    fn urls_name_host_port_and_tls() {
        let at = |url: &str| source(url).endpoint();
        let endpoint = |host: &str, port, tls| {
            Ok(Endpoint {
                host: host.to_owned(),
                port,
                tls,
            })
        };
        assert_eq!(
            at("mqtt://127.0.0.1:1884"),
            endpoint("127.0.0.1", 1884, false)
        );
        assert_eq!(
            at("mqtts://broker.city"),
            endpoint("broker.city", 8883, true)
        );
        assert_eq!(at("mqtt://[::1]:1884"), endpoint("::1", 1884, false));
        assert_eq!(at("mqtt://[::1]"), endpoint("::1", 1883, false));
        assert_eq!(at("mqtt://broker/"), endpoint("broker", 1883, false));
        for bad in [
            "http://h:1",
            "mqtt://h:port",
            "mqtt://",
            "mqtt://h/x",
            "mqtt://h:1883/x",
            "mqtt://2001:db8::1",
            "mqtt://[::1",
            "mqtt://[::1]1884",
            "mqtt://h:1883:",
            "mqtt://h:",
            "mqtt://h:0",
            "mqtt://h:70000",
        ] {
            assert!(at(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn partitions_split_devices_stably_and_evenly() {
        // Pinned: changing the hash would move every device to another worker.
        assert_eq!(partition_of("bed-001", 3), partition_of("bed-001", 3));
        assert_eq!(partition_of("", 7), (0xcbf2_9ce4_8422_2325u64 % 7) as u32);
        assert_eq!(
            partition_of("a", u32::MAX),
            (0xaf63_dc4c_8601_ec8cu64 % u64::from(u32::MAX)) as u32
        );
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[partition_of(&format!("bed-{i:04}"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|n| (800..1200).contains(n)), "{counts:?}");
        let mut s = source("mqtt://h");
        assert_eq!((s.share_group(), s.owns("x")), ("kenko".to_owned(), true));
        s.partitions = 4;
        s.partition = 2;
        assert_eq!(s.share_group(), "kenko-4p2");
        let owned = (0..4000).filter(|i| s.owns(&format!("bed-{i:04}"))).count();
        assert_eq!(owned, counts[2]);
        s.partition = 4;
        assert!(s.check().is_err(), "partition 4 of 4");
    }

    #[test]
    fn defaults_subscribe_to_both_telemetry_topics_in_group_kenko() {
        let s = source("mqtt://h");
        assert_eq!(s.group, "kenko");
        assert_eq!(s.topics, ["devices/+/telemetry", "devices/+/telemetry/pb"]);
        assert_eq!(s.check(), Ok(()));
        let mut bad = s.clone();
        bad.group = "a/b".into();
        assert!(bad.check().is_err());
        let mut bad = s;
        bad.topics = vec!["#".into()];
        assert!(bad.check().is_err());
    }
}
