//! The configuration files each hub gets, written fresh for every run: only loopback
//! listeners on ports the OS picked, and limits raised so the load is never throttled.

/// Device `i` of kenko's fleet, its citizen, and the topic it publishes telemetry to.
pub fn device_id(i: usize) -> String {
    format!("bed-{i:03}")
}

pub fn citizen_id(i: usize) -> String {
    format!("citizen-{i:03}")
}

pub fn mosquitto(port: u16) -> String {
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         max_inflight_messages 20\n\
         max_queued_messages 100000\n"
    )
}

/// Mosquitto in front of `kenko worker`s: no limit on what it queues for a worker's
/// session (a limit drops messages it has acknowledged to their publishers), and a window
/// of unacknowledged messages per worker wide enough for the worker's batches.
pub fn mosquitto_for_workers(port: u16) -> String {
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         max_inflight_messages 1000\n\
         max_queued_messages 0\n"
    )
}

/// rumqttd 0.20: one MQTT 3.1.1 listener and its console, both on loopback.
pub fn rumqttd(port: u16, console_port: u16, max_connections: usize) -> String {
    format!(
        r#"id = 0

[router]
id = 0
max_connections = {max_connections}
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true

[console]
listen = "127.0.0.1:{console_port}"
"#
    )
}

/// The ACL beside kenko.toml: devices publish their own telemetry, anonymous load clients
/// use `load/#` (the broker path).
pub const KENKO_ACL: &str = r#"[[rule]]
effect = "allow"
role = "device"
action = "publish"
topic = "devices/{device}/telemetry"

[[rule]]
effect = "allow"
role = "anonymous"
action = "all"
topic = "load/#"
"#;

/// kenko.toml: `devices` bed sensors sharing one password hash, anonymous access for the
/// broker path, and login and publish limits lifted so that a hundred logins at once from
/// 127.0.0.1 measure the hub rather than its brute-force protection.
pub fn kenko(devices: usize, password_hash: &str, max_connections: usize) -> String {
    let mut text = format!(
        r#"[mqtt]
listen = "127.0.0.1:0"
max_connections = {max_connections}
max_publish_rate = 0
# As deep a queue per subscriber as Mosquitto's max_queued_messages above.
max_queued_messages = 100000
max_queued_bytes = 1073741824

[auth]
anonymous = true
acl = "acl.toml"

[auth.login]
source_burst = 1000000
source_per_minute = 1000000
principal_burst = 1000000
principal_per_minute = 1000000
verify_queue = 1000000

[ingest]
require_consent = true
"#
    );
    for i in 0..devices {
        text.push_str(&format!(
            "\n[[devices]]\nid = \"{}\"\nkind = \"bed\"\ncitizen = \"{}\"\npassword_hash = \"{password_hash}\"\n",
            device_id(i),
            citizen_id(i),
        ));
    }
    text
}

/// The operator who reads kenko's `/metrics` in a run with the HTTP API.
pub const OPERATOR: &str = "bench-operator";

/// kenko's HTTP API on loopback and an operator with the fleet's password.
pub fn kenko_http(port: u16, password_hash: &str) -> String {
    format!(
        "\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n[[principals]]\nid = \"{OPERATOR}\"\nroles = [\"operator\"]\npassword_hash = \"{password_hash}\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kenko_lists_every_device_with_its_own_citizen() {
        let text = kenko(3, "$argon2id$x", 50);
        assert_eq!(text.matches("[[devices]]").count(), 3);
        assert!(text.contains("id = \"bed-002\"\nkind = \"bed\"\ncitizen = \"citizen-002\""));
        assert!(text.contains("max_connections = 50"));
        assert!(text.contains("max_queued_messages = 100000"));
    }

    #[test]
    fn rumqttd_listens_on_the_given_ports_only() {
        let text = rumqttd(4000, 4001, 10);
        assert!(text.contains("listen = \"127.0.0.1:4000\""));
        assert!(text.contains("listen = \"127.0.0.1:4001\""));
        assert!(!text.contains("0.0.0.0"));
    }
}
