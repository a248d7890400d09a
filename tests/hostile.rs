//! Hostile input (issue 7): malformed and forbidden packets, packets only a server sends,
//! thousands of connections that never say CONNECT and a client that reads nothing, each sent
//! over a real socket to a real `kenko serve`. Every case asserts the hub's reaction and that
//! a well-behaved client is still served afterwards. The memory cases print the hub's VmRSS
//! and VmHWM (from /proc/<pid>/status) and hold them to the bounds stated with them.

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::raw::{self, Conn, Raw};
use common::{Hub, Memory};

/// The test config's `mqtt.connect_timeout_ms`.
const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// kenko's default `mqtt.max_packet_size`, which the test config keeps.
const MAX_PACKET_SIZE: usize = 256 * 1024;
/// The hub's `WRITE_TIMEOUT` (broker/src/session.rs): a client that accepts nothing the hub
/// writes for this long is cut off.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most resident memory the hub may reach in any case here. kenko idles at about 20 MB;
/// the bound is generous so that it fails on buffering without bound, not on noise.
const PEAK_RSS_LIMIT_KB: u64 = 300 * 1024;
/// How far above its baseline the hub's resident memory may stay once the hostile clients are
/// gone. glibc's allocator keeps what 10,000 pending handshakes used (about 50 MB in a debug
/// build) for reuse rather than returning it; the idle-connection case checks that a second
/// round reuses it instead of adding to it.
const SETTLED_RSS_MARGIN_KB: u64 = 96 * 1024;

// MQTT 5 reason codes.
const MALFORMED_PACKET: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const TOPIC_NAME_INVALID: u8 = 0x90;
const PACKET_TOO_LARGE: u8 = 0x95;

const SHORT: Duration = Duration::from_millis(500);

/// Anonymous clients may use every topic not starting with '$' (config/interop-acl.toml).
fn config() -> String {
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/interop-acl.toml");
    format!(
        "[mqtt]\nconnect_timeout_ms = {CONNECT_TIMEOUT_MS}\nmax_packet_size = {MAX_PACKET_SIZE}\n\n\
         [auth]\nanonymous = true\nacl = {:?}\nv311_denied_publish = \"drop\"\n",
        acl.display().to_string()
    )
}

fn start() -> Result<(tempfile::TempDir, Hub)> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_without_consent(dir.path(), &config())?;
    Ok((dir, hub))
}

/// Both protocol versions, 3.1.1 first.
const VERSIONS: [bool; 2] = [false, true];

fn version(v5: bool) -> &'static str {
    if v5 {
        "MQTT 5"
    } else {
        "MQTT 3.1.1"
    }
}

// ----- packets a well-behaved client library would not send -----------------------------------

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// PUBLISH with the topic given as raw bytes; `props` are v5 property bytes.
fn publish(v5: bool, qos: u8, topic: &[u8], pkid: u16, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic, &mut body);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    if v5 {
        assert!(props.len() < 128);
        body.push(props.len() as u8);
        body.extend_from_slice(props);
    }
    body.extend_from_slice(payload);
    raw::packet(0x30 | qos << 1, &body)
}

/// SUBSCRIBE (QoS 0) with the filters given as raw bytes; `props` are v5 property bytes.
fn subscribe(v5: bool, pkid: u16, props: &[u8], filters: &[&[u8]]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(props.len() as u8);
        body.extend_from_slice(props);
    }
    for f in filters {
        string(f, &mut body);
        body.push(0);
    }
    raw::packet(0x82, &body)
}

/// UNSUBSCRIBE with the filters given as raw bytes.
fn unsubscribe(v5: bool, pkid: u16, filters: &[&[u8]]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for f in filters {
        string(f, &mut body);
    }
    raw::packet(0xa2, &body)
}

/// An MQTT 5 CONNECT (clean start, keep-alive 30 s) with raw CONNECT properties and, if
/// given, a will on `hostile/will` with raw will properties.
fn connect_v5(client_id: &str, props: &[u8], will_props: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(5);
    body.push(if will_props.is_some() { 0x06 } else { 0x02 });
    body.extend_from_slice(&30u16.to_be_bytes());
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    string(client_id.as_bytes(), &mut body);
    if let Some(will_props) = will_props {
        body.push(will_props.len() as u8);
        body.extend_from_slice(will_props);
        string(b"hostile/will", &mut body);
        string(b"gone", &mut body);
    }
    raw::packet(0x10, &body)
}

/// CONNECT with keep-alive 0, so that only what the test is about can end the connection.
fn connect_without_keep_alive(v5: bool, client_id: &str) -> Vec<u8> {
    let mut packet = raw::connect(v5, client_id, None, None);
    // Fixed header (2 bytes), protocol name (6), level, flags: then the keep-alive.
    packet[10..12].copy_from_slice(&0u16.to_be_bytes());
    packet
}

/// The body of a PUBLISH packet: (topic, payload), for QoS 0 deliveries.
fn delivery(p: &Raw, v5: bool) -> (Vec<u8>, Vec<u8>) {
    let len = usize::from(u16::from_be_bytes([p.body[0], p.body[1]]));
    let topic = p.body[2..2 + len].to_vec();
    let mut at = 2 + len;
    if (p.header >> 1) & 3 > 0 {
        at += 2;
    }
    if v5 {
        at += 1 + usize::from(p.body[at]); // kenko's deliveries carry short properties
    }
    (topic, p.body[at..].to_vec())
}

// ----- reactions ---------------------------------------------------------------------------------

/// What the hub did next on a connection.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// DISCONNECT with this reason code (0 if it had none).
    Disconnect(u8),
    /// Some other packet, by kind.
    Packet(u8),
    /// The connection was closed (or reset).
    Closed,
    /// Nothing within the limit.
    Nothing,
}

fn next_seen(conn: &mut Conn, limit: Duration) -> Seen {
    let _ = conn.stream.set_read_timeout(Some(limit));
    match conn.read() {
        Ok(p) if p.kind() == 14 => Seen::Disconnect(p.body.first().copied().unwrap_or(0)),
        Ok(p) => Seen::Packet(p.kind()),
        Err(e) => match e.downcast_ref::<std::io::Error>().map(|io| io.kind()) {
            Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Seen::Nothing,
            _ => Seen::Closed,
        },
    }
}

/// The reaction MQTT asks for to a malformed packet or protocol error: MQTT 5 gets a
/// DISCONNECT with `code` (MQTT 5 4.13), then both versions see the connection closed
/// (MQTT-4.8.0-1 in 3.1.1); nothing else comes first.
fn assert_cut_off(conn: &mut Conn, code: u8, case: &str) {
    let limit = Duration::from_secs(5);
    if conn.v5 {
        assert_eq!(
            next_seen(conn, limit),
            Seen::Disconnect(code),
            "{case} ({})",
            version(true)
        );
    }
    assert_eq!(
        next_seen(conn, limit),
        Seen::Closed,
        "{case} ({})",
        version(conn.v5)
    );
}

static CLIENTS: AtomicUsize = AtomicUsize::new(1);

/// A fresh client id with `prefix`.
fn client_id(prefix: &str) -> String {
    format!("{prefix}-{}", CLIENTS.fetch_add(1, Ordering::Relaxed))
}

/// Sends `connect` on a new connection and reads the answer, which must be a CONNACK.
fn handshake(hub: &Hub, v5: bool, connect: &[u8]) -> Result<(Conn, Raw)> {
    let mut conn = Conn::open(hub.addr, v5)?;
    conn.send(connect)?;
    let ack = conn.read().context("no CONNACK")?;
    ensure!(ack.kind() == 2, "expected CONNACK, got {ack:?}");
    Ok((conn, ack))
}

/// A connected client (CONNACK success).
fn connected(hub: &Hub, v5: bool, prefix: &str) -> Result<Conn> {
    let (conn, code) = Conn::connect(hub.addr, v5, &client_id(prefix), None, None)?;
    ensure!(code == 0, "CONNACK {code:#04x} for a well-behaved client");
    Ok(conn)
}

/// A client subscribed to `#`: it sees any message the hub lets through.
fn watcher(hub: &Hub) -> Result<Conn> {
    let mut conn = connected(hub, true, "watcher")?;
    let codes = conn.subscribe(1, &["#"])?;
    ensure!(codes == [0], "SUBACK {codes:?} for #");
    Ok(conn)
}

/// Nothing reaches the watcher for a while.
fn assert_nothing_delivered(watcher: &mut Conn, case: &str) {
    let seen = next_seen(watcher, SHORT);
    assert_eq!(
        seen,
        Seen::Nothing,
        "{case}: something reached a subscriber to #"
    );
}

/// A well-behaved client of each version still connects, subscribes, publishes at QoS 1, is
/// acknowledged and gets its own message back.
fn assert_still_serves(hub: &Hub) -> Result<()> {
    for v5 in VERSIONS {
        let mut conn = connected(hub, v5, "probe")?;
        let topic = format!("probe/{}", client_id("t"));
        let codes = conn.subscribe(1, &[&topic])?;
        ensure!(codes == [0], "probe SUBACK {codes:?}");
        conn.send(&raw::publish_qos1(v5, &topic, 2, &[], b"still served"))?;
        let (mut acked, mut delivered) = (false, false);
        while !(acked && delivered) {
            let p = conn.read().context("probe: no PUBACK or delivery")?;
            match p.kind() {
                4 => {
                    ensure!(p.body[..2] == [0, 2], "PUBACK for another packet id");
                    ensure!(p.body.get(2).is_none_or(|&c| c == 0), "PUBACK {p:?}");
                    acked = true;
                }
                3 => {
                    ensure!(
                        delivery(&p, v5) == (topic.clone().into_bytes(), b"still served".to_vec())
                    );
                    delivered = true;
                }
                other => anyhow::bail!("probe got packet type {other}"),
            }
        }
    }
    Ok(())
}

/// Checks the hub's stderr for panics, prints its memory and stops it cleanly.
fn finish(hub: Hub, case: &str) -> Result<()> {
    let panics: Vec<String> = hub
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    ensure!(panics.is_empty(), "the hub panicked: {panics:?}");
    println!("{case}: hub memory at the end: {}", hub.memory()?);
    hub.terminate()
}

// ----- malformed and forbidden packets ------------------------------------------------------------

/// MQTT-4.7.3-1: a topic name is at least one character long. 3.1.1 closes the connection.
#[test]
fn mqtt_4_7_3_1_zero_length_topic_in_publish_v311() -> Result<()> {
    let (_dir, hub) = start()?;
    let mut watcher = watcher(&hub)?;
    let mut conn = connected(&hub, false, "empty-topic")?;
    conn.send(&publish(false, 1, b"", 1, &[], b"x"))?;
    assert_cut_off(&mut conn, 0, "PUBLISH with a zero-length topic");
    assert_nothing_delivered(&mut watcher, "zero-length topic");
    assert_still_serves(&hub)?;
    finish(hub, "zero-length topic 3.1.1")
}

/// MQTT 5 3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and there is no
/// Topic Alias": DISCONNECT 0x82.
#[test]
fn mqtt_4_7_3_1_zero_length_topic_in_publish_v5() -> Result<()> {
    let (_dir, hub) = start()?;
    let mut watcher = watcher(&hub)?;
    let mut conn = connected(&hub, true, "empty-topic")?;
    conn.send(&publish(true, 1, b"", 1, &[], b"x"))?;
    assert_cut_off(
        &mut conn,
        PROTOCOL_ERROR,
        "PUBLISH with a zero-length topic",
    );
    assert_nothing_delivered(&mut watcher, "zero-length topic");
    assert_still_serves(&hub)?;
    finish(hub, "zero-length topic 5")
}

/// CONNACK, SUBACK, UNSUBACK and PINGRESP go from server to client only: a client sending
/// one commits a protocol violation (MQTT-4.8.0-1; MQTT 5: DISCONNECT 0x82 Protocol Error).
#[test]
fn mqtt_4_8_0_1_a_client_sending_connack_or_suback_is_cut_off() -> Result<()> {
    let (_dir, hub) = start()?;
    for v5 in VERSIONS {
        let server_only: [(&str, Vec<u8>); 4] = if v5 {
            [
                ("CONNACK", raw::packet(0x20, &[0, 0, 0])),
                ("SUBACK", raw::packet(0x90, &[0, 1, 0, 0])),
                ("UNSUBACK", raw::packet(0xb0, &[0, 1, 0, 0])),
                ("PINGRESP", raw::packet(0xd0, &[])),
            ]
        } else {
            [
                ("CONNACK", raw::packet(0x20, &[0, 0])),
                ("SUBACK", raw::packet(0x90, &[0, 1, 0])),
                ("UNSUBACK", raw::packet(0xb0, &[0, 1])),
                ("PINGRESP", raw::packet(0xd0, &[])),
            ]
        };
        for (name, packet) in server_only {
            let mut conn = connected(&hub, v5, "server-only")?;
            conn.send(&packet)?;
            assert_cut_off(&mut conn, PROTOCOL_ERROR, &format!("client sent {name}"));
        }
    }
    assert_still_serves(&hub)?;
    finish(hub, "server-only packets")
}

/// MQTT-3.1.0-1: the first packet from the client must be CONNECT; anything else closes the
/// connection without a reply.
#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() -> Result<()> {
    let (_dir, hub) = start()?;
    let firsts: [(&str, Vec<u8>); 6] = [
        ("PUBLISH", raw::publish_qos1(false, "a/b", 1, &[], b"x")),
        ("SUBSCRIBE", raw::subscribe(false, 1, &["#"])),
        ("PINGREQ", raw::packet(0xc0, &[])),
        ("CONNACK", raw::packet(0x20, &[0, 0])),
        ("DISCONNECT", raw::packet(0xe0, &[])),
        ("packet type 0", raw::packet(0x00, &[1, 2, 3])),
    ];
    for (name, packet) in firsts {
        let mut conn = Conn::open(hub.addr, false)?;
        conn.send(&packet)?;
        let mut rest = Vec::new();
        conn.stream.read_to_end(&mut rest)?;
        assert!(rest.is_empty(), "{name} first: answered {rest:?}");
    }
    assert_still_serves(&hub)?;
    finish(hub, "first packet not CONNECT")
}

/// A Variable Byte Integer takes at most four bytes (3.1.1 2.2.3, MQTT 5 1.5.5): a remaining
/// length with a fifth is malformed, before CONNECT (closed without a word) and after it
/// (MQTT 5: DISCONNECT 0x81). Four bytes of all ones announce 256 MB: too large (0x95).
#[test]
fn remaining_length_of_five_bytes_is_malformed() -> Result<()> {
    let (_dir, hub) = start()?;
    let five = [0xff, 0xff, 0xff, 0xff, 0x01];
    let mut first = vec![0x10];
    first.extend_from_slice(&five);
    let mut conn = Conn::open(hub.addr, false)?;
    conn.send(&first)?;
    let mut rest = Vec::new();
    conn.stream.read_to_end(&mut rest)?;
    assert!(
        rest.is_empty(),
        "five-byte length in CONNECT: answered {rest:?}"
    );
    for v5 in VERSIONS {
        for header in [0x30, 0x82, 0xc0] {
            let mut conn = connected(&hub, v5, "varint")?;
            let mut packet = vec![header];
            packet.extend_from_slice(&five);
            conn.send(&packet)?;
            let case = format!("five-byte remaining length after {header:#04x}");
            assert_cut_off(&mut conn, MALFORMED_PACKET, &case);
        }
        let mut conn = connected(&hub, v5, "varint")?;
        conn.send(&[0x30, 0xff, 0xff, 0xff, 0x7f])?;
        assert_cut_off(&mut conn, PACKET_TOO_LARGE, "remaining length 268,435,455");
    }
    assert_still_serves(&hub)?;
    finish(hub, "five-byte remaining length")
}

/// A packet whose fields run past its end (here a v5 PUBLISH with no property length) is
/// malformed: MQTT 5 DISCONNECT 0x81 (3.1.1, whose PUBLISH has no properties: a QoS 1 PUBLISH
/// with no room for its packet id). Until issue 7 such a packet was dropped without a word,
/// and the packets behind it waited for more bytes.
#[test]
fn a_packet_whose_fields_run_past_its_end_is_malformed() -> Result<()> {
    let (_dir, hub) = start()?;
    for v5 in VERSIONS {
        let mut conn = connected(&hub, v5, "short")?;
        let cut = if v5 {
            raw::packet(0x32, &[0, 1, b'a', 0, 1]) // no property length
        } else {
            raw::packet(0x32, &[0, 1, b'a', 0]) // half a packet id
        };
        let mut both = cut;
        both.extend_from_slice(&raw::packet(0xc0, &[])); // PINGREQ behind it
        conn.send(&both)?;
        assert_cut_off(&mut conn, MALFORMED_PACKET, "PUBLISH cut short inside");
    }
    assert_still_serves(&hub)?;
    finish(hub, "cut short")
}

/// A topic of 65,000 levels (all but the first empty: a topic is at most 65,535 bytes) is a
/// valid topic: published at QoS 1 it is acknowledged and delivered whole to a subscriber of
/// the same 65,000-level filter, without stalling the hub.
#[test]
fn a_topic_of_65000_levels_is_acknowledged_and_delivered() -> Result<()> {
    let (_dir, hub) = start()?;
    let topic = format!("deep{}", "/".repeat(64_999));
    assert_eq!(topic.split('/').count(), 65_000);
    for v5 in VERSIONS {
        let mut subscriber = connected(&hub, v5, "deep-sub")?;
        let started = Instant::now();
        assert_eq!(subscriber.subscribe(1, &[&topic])?, [0], "SUBACK");
        let mut publisher = connected(&hub, v5, "deep-pub")?;
        publisher.send(&publish(v5, 1, topic.as_bytes(), 3, &[], b"deep"))?;
        let ack = publisher.read_kind(4)?;
        assert_eq!(ack.body[..2], [0, 3]);
        assert!(ack.body.get(2).is_none_or(|&c| c == 0), "PUBACK {ack:?}");
        let got = subscriber.read_kind(3)?;
        assert_eq!(
            delivery(&got, v5),
            (topic.clone().into_bytes(), b"deep".to_vec())
        );
        println!(
            "65,000 levels ({}): subscribed, published and delivered in {:?}",
            version(v5),
            started.elapsed()
        );
    }
    assert_still_serves(&hub)?;
    finish(hub, "65,000 levels")
}

/// Topics and filters that are not well-formed UTF-8: PUBLISH and SUBSCRIBE.
const ILL_FORMED: [&[u8]; 4] = [
    b"a/\xff",
    b"a/\xc0\xaf",     // overlong '/'
    b"a/\xed\xa0\x80", // UTF-16 surrogate U+D800
    b"a/\xe2\x82",     // cut short
];

/// MQTT-1.5.4-1: ill-formed UTF-8 in a topic name or filter makes the packet malformed
/// (MQTT 5: DISCONNECT 0x81); nothing is delivered.
#[test]
fn mqtt_1_5_4_1_ill_formed_utf8_in_topics_is_malformed() -> Result<()> {
    let (_dir, hub) = start()?;
    let mut watcher = watcher(&hub)?;
    for v5 in VERSIONS {
        for topic in ILL_FORMED {
            let mut conn = connected(&hub, v5, "utf8")?;
            conn.send(&publish(v5, 1, topic, 1, &[], b"x"))?;
            assert_cut_off(
                &mut conn,
                MALFORMED_PACKET,
                &format!("PUBLISH on {topic:?}"),
            );
            let mut conn = connected(&hub, v5, "utf8")?;
            conn.send(&subscribe(v5, 1, &[], &[topic]))?;
            assert_cut_off(
                &mut conn,
                MALFORMED_PACKET,
                &format!("SUBSCRIBE to {topic:?}"),
            );
        }
    }
    assert_nothing_delivered(&mut watcher, "ill-formed UTF-8");
    assert_still_serves(&hub)?;
    finish(hub, "ill-formed UTF-8")
}

/// MQTT-1.5.4-2: U+0000 in a topic name or filter makes the packet malformed (MQTT 5:
/// DISCONNECT 0x81); nothing is delivered, no subscription made.
#[test]
fn mqtt_1_5_4_2_nul_in_topics_is_malformed() -> Result<()> {
    let (_dir, hub) = start()?;
    let mut watcher = watcher(&hub)?;
    for v5 in VERSIONS {
        for topic in [&b"a/\0"[..], b"\0", b"a\0/#"] {
            let mut conn = connected(&hub, v5, "nul")?;
            conn.send(&publish(v5, 1, topic, 1, &[], b"x"))?;
            assert_cut_off(
                &mut conn,
                MALFORMED_PACKET,
                &format!("PUBLISH on {topic:?}"),
            );
            let mut conn = connected(&hub, v5, "nul")?;
            conn.send(&subscribe(v5, 1, &[], &[topic]))?;
            assert_cut_off(
                &mut conn,
                MALFORMED_PACKET,
                &format!("SUBSCRIBE to {topic:?}"),
            );
        }
    }
    assert_nothing_delivered(&mut watcher, "NUL in topics");
    assert_still_serves(&hub)?;
    finish(hub, "NUL in topics")
}

/// MQTT-4.7.1-2 (3.1.1; MQTT-4.7.1-1 in MQTT 5): '#' must be the last level of a filter.
/// `a/#/b` in a SUBSCRIBE (or UNSUBSCRIBE) is malformed: MQTT 5 DISCONNECT 0x81, 3.1.1 closed,
/// no SUBACK. (rumqttd's router would treat it as `a/#`.)
#[test]
fn mqtt_4_7_1_2_multi_level_wildcard_must_be_the_last_level() -> Result<()> {
    let (_dir, hub) = start()?;
    for v5 in VERSIONS {
        for filter in [&b"a/#/b"[..], b"#/b", b"a/b#", b"a/#b"] {
            let mut conn = connected(&hub, v5, "hash")?;
            conn.send(&subscribe(v5, 1, &[], &[b"ok/+", filter]))?;
            assert_cut_off(
                &mut conn,
                MALFORMED_PACKET,
                &format!("SUBSCRIBE to {filter:?}"),
            );
        }
        let mut conn = connected(&hub, v5, "hash")?;
        conn.send(&unsubscribe(v5, 1, &[b"a/#/b"]))?;
        assert_cut_off(&mut conn, MALFORMED_PACKET, "UNSUBSCRIBE from a/#/b");
    }
    // The hub does not deliver a/x/c to anyone as if a/#/b had been taken for a/#.
    assert_still_serves(&hub)?;
    finish(hub, "a/#/b")
}

/// MQTT-4.7.1-3 (3.1.1; MQTT-4.7.1-2 in MQTT 5): '+' must occupy a whole level.
#[test]
fn mqtt_4_7_1_3_single_level_wildcard_must_be_a_whole_level() -> Result<()> {
    let (_dir, hub) = start()?;
    for v5 in VERSIONS {
        for filter in [&b"a+"[..], b"a/+b", b"+a/b"] {
            let mut conn = connected(&hub, v5, "plus")?;
            conn.send(&subscribe(v5, 1, &[], &[filter]))?;
            assert_cut_off(
                &mut conn,
                MALFORMED_PACKET,
                &format!("SUBSCRIBE to {filter:?}"),
            );
        }
    }
    assert_still_serves(&hub)?;
    finish(hub, "a+")
}

/// MQTT-3.3.2-2: a topic name in a PUBLISH has no wildcards. MQTT 5: DISCONNECT 0x90 Topic
/// Name invalid; 3.1.1: closed. Nothing reaches a subscriber of `#`.
#[test]
fn mqtt_3_3_2_2_publish_topic_without_wildcards() -> Result<()> {
    let (_dir, hub) = start()?;
    let mut watcher = watcher(&hub)?;
    for v5 in VERSIONS {
        for topic in [&b"a/+"[..], b"a/#", b"#", b"+", b"a/b+c"] {
            let mut conn = connected(&hub, v5, "wild")?;
            conn.send(&publish(v5, 1, topic, 1, &[], b"x"))?;
            let case = format!("PUBLISH on {}", String::from_utf8_lossy(topic));
            assert_cut_off(&mut conn, TOPIC_NAME_INVALID, &case);
        }
    }
    assert_nothing_delivered(&mut watcher, "wildcards in topic names");
    assert_still_serves(&hub)?;
    finish(hub, "wildcards in PUBLISH")
}

/// A topic or filter whose first character is not ASCII. rumqttd 0.20's matcher panicked on
/// one, which took its router (and every connection) down; kenko's router matches them like
/// any other topic (MQTT 4.7: any UTF-8), and goes on serving.
#[test]
fn a_non_ascii_first_character_cannot_take_the_router_down() -> Result<()> {
    let (_dir, hub) = start()?;
    for v5 in VERSIONS {
        let mut subscriber = connected(&hub, v5, "utf8sub")?;
        assert_eq!(subscriber.subscribe(1, &["健康/#"])?, [0]);
        let mut publisher = connected(&hub, v5, "utf8first")?;
        publisher.send(&publish(v5, 1, "é/x".as_bytes(), 1, &[], b"nobody"))?;
        publisher.send(&publish(v5, 1, "健康/x".as_bytes(), 2, &[], b"x"))?;
        let got = subscriber.read_kind(3)?;
        assert_eq!(
            delivery(&got, v5),
            ("健康/x".as_bytes().to_vec(), b"x".to_vec()),
            "{}",
            version(v5)
        );
    }
    assert_still_serves(&hub)?;
    finish(hub, "non-ASCII first character")
}

const SESSION_EXPIRY_TWICE: &[u8] = &[0x11, 0, 0, 0, 10, 0x11, 0, 0, 0, 20];
const PAYLOAD_FORMAT_TWICE: &[u8] = &[0x01, 1, 0x01, 0];
const SUBSCRIPTION_ID_TWICE: &[u8] = &[0x0b, 1, 0x0b, 2];
const USER_PROPERTY_TWICE: &[u8] = &[
    0x26, 0, 1, b'k', 0, 1, b'1', //
    0x26, 0, 1, b'k', 0, 1, b'2',
];

/// MQTT 5 (2.2.2.2 and each property's definition): "It is a Protocol Error to include [a
/// property] more than once". A CONNECT with two Session Expiry Intervals, or a will with two
/// Payload Format Indicators, gets CONNACK 0x82 and is closed. User Property is the exception:
/// a PUBLISH with two is delivered with both.
#[test]
fn mqtt5_duplicate_properties_in_connect_get_connack_0x82() -> Result<()> {
    let (_dir, hub) = start()?;
    let cases: [(&str, Vec<u8>); 2] = [
        (
            "two Session Expiry Intervals",
            connect_v5(&client_id("dup"), SESSION_EXPIRY_TWICE, None),
        ),
        (
            "a will with two Payload Format Indicators",
            connect_v5(&client_id("dup"), &[], Some(PAYLOAD_FORMAT_TWICE)),
        ),
    ];
    for (case, connect) in cases {
        let (mut conn, ack) = handshake(&hub, true, &connect)?;
        assert_eq!(ack.body.get(1), Some(&PROTOCOL_ERROR), "{case}: {ack:?}");
        assert_eq!(next_seen(&mut conn, SHORT * 4), Seen::Closed, "{case}");
    }
    // The one property that may repeat.
    let mut subscriber = connected(&hub, true, "users-sub")?;
    assert_eq!(subscriber.subscribe(1, &["users/t"])?, [0]);
    let mut publisher = connected(&hub, true, "users-pub")?;
    publisher.send(&publish(true, 1, b"users/t", 1, USER_PROPERTY_TWICE, b"x"))?;
    assert_eq!(publisher.read_kind(4)?.body[..2], [0, 1]);
    let got = subscriber.read_kind(3)?;
    let pairs = got
        .body
        .windows(USER_PROPERTY_TWICE.len())
        .any(|w| w == USER_PROPERTY_TWICE);
    assert!(pairs, "both user properties delivered: {got:?}");
    assert_still_serves(&hub)?;
    finish(hub, "duplicate CONNECT properties")
}

/// The same rule after CONNECT: a PUBLISH with two Payload Format Indicators and a SUBSCRIBE
/// with two Subscription Identifiers get DISCONNECT 0x82; the PUBLISH is not delivered.
#[test]
fn mqtt5_duplicate_properties_in_publish_and_subscribe_get_disconnect_0x82() -> Result<()> {
    let (_dir, hub) = start()?;
    let mut watcher = watcher(&hub)?;
    let mut conn = connected(&hub, true, "dup")?;
    conn.send(&publish(true, 1, b"dup/t", 1, PAYLOAD_FORMAT_TWICE, b"x"))?;
    assert_cut_off(
        &mut conn,
        PROTOCOL_ERROR,
        "PUBLISH with two Payload Format Indicators",
    );
    let mut conn = connected(&hub, true, "dup")?;
    conn.send(&subscribe(true, 1, SUBSCRIPTION_ID_TWICE, &[b"dup/#"]))?;
    assert_cut_off(
        &mut conn,
        PROTOCOL_ERROR,
        "SUBSCRIBE with two Subscription Identifiers",
    );
    assert_nothing_delivered(&mut watcher, "duplicate properties");
    assert_still_serves(&hub)?;
    finish(hub, "duplicate PUBLISH/SUBSCRIBE properties")
}

/// MQTT-4.3.3-9 (MQTT-4.3.3-2 in 3.1.1): until PUBREL, a PUBLISH with the same packet id is
/// acknowledged with PUBREC and not delivered again. Here the second copy carries another
/// payload; a subscriber must see the first message once, and a later message (new id) as
/// itself, not the held-back copy (rumqttd's router records every QoS 2 publish and releases
/// them in order on PUBREL, whatever their ids, so the session must not hand it the copy).
#[test]
fn mqtt_4_3_3_9_qos2_packet_id_reused_before_pubrel_is_delivered_once() -> Result<()> {
    let (_dir, hub) = start()?;
    for v5 in VERSIONS {
        let topic = format!("qos2/{}", client_id("reuse"));
        let mut subscriber = connected(&hub, v5, "reuse-sub")?;
        assert_eq!(subscriber.subscribe(1, &[&topic])?, [0]);
        let mut publisher = connected(&hub, v5, "reuse-pub")?;
        publisher.send(&publish(v5, 2, topic.as_bytes(), 7, &[], b"first"))?;
        assert_eq!(publisher.read_kind(5)?.body[..2], [0, 7], "PUBREC");
        let mut again = publish(v5, 2, topic.as_bytes(), 7, &[], b"second");
        again[0] |= 0x08; // DUP
        publisher.send(&again)?;
        assert_eq!(
            publisher.read_kind(5)?.body[..2],
            [0, 7],
            "PUBREC for the copy"
        );
        publisher.send(&raw::packet(0x62, &[0, 7]))?;
        assert_eq!(publisher.read_kind(7)?.body[..2], [0, 7], "PUBCOMP");
        publisher.send(&publish(v5, 2, topic.as_bytes(), 8, &[], b"third"))?;
        assert_eq!(publisher.read_kind(5)?.body[..2], [0, 8], "PUBREC");
        publisher.send(&raw::packet(0x62, &[0, 8]))?;
        assert_eq!(publisher.read_kind(7)?.body[..2], [0, 8], "PUBCOMP");
        let mut payloads = Vec::new();
        while let Some(p) = read_within(&mut subscriber, Duration::from_secs(1)) {
            if p.kind() == 3 {
                payloads.push(String::from_utf8_lossy(&delivery(&p, v5).1).into_owned());
            }
        }
        assert_eq!(payloads, ["first", "third"], "{}", version(v5));
    }
    assert_still_serves(&hub)?;
    finish(hub, "QoS 2 id reuse")
}

fn read_within(conn: &mut Conn, limit: Duration) -> Option<Raw> {
    let _ = conn.stream.set_read_timeout(Some(limit));
    conn.read().ok()
}

/// The same for telemetry, which kenko stores itself: two different readings under one QoS 2
/// packet id before PUBREL store the first only. Each copy is answered with PUBREC.
#[test]
fn mqtt_4_3_3_9_qos2_telemetry_packet_id_reused_before_pubrel_is_stored_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = format!(
        "{}[mqtt]\nconnect_timeout_ms = {CONNECT_TIMEOUT_MS}\n",
        common::config_with_devices(2)
    );
    let hub = Hub::start(dir.path(), &config)?;
    let t = (common::now_ms() - 60_000) / 1000 * 1000;
    for (v5, device) in [(false, "bed-001"), (true, "bed-002")] {
        let password = common::password(device);
        let (mut conn, code) =
            Conn::connect(hub.addr, v5, device, Some((device, &password)), None)?;
        assert_eq!(code, 0);
        let topic = format!("devices/{device}/telemetry");
        let reading = |ms: i64, hr: u32| format!(r#"{{"ts":{ms},"hr":{hr}}}"#);
        // A copy after the PUBREC (the PUBREC was lost, say) and one before it.
        conn.send(&publish(
            v5,
            2,
            topic.as_bytes(),
            9,
            &[],
            reading(t, 61).as_bytes(),
        ))?;
        assert_eq!(conn.read_kind(5)?.body[..2], [0, 9], "PUBREC");
        conn.send(&publish(
            v5,
            2,
            topic.as_bytes(),
            9,
            &[],
            reading(t + 1000, 62).as_bytes(),
        ))?;
        assert_eq!(
            conn.read_kind(5)?.body[..2],
            [0, 9],
            "PUBREC for the late copy"
        );
        conn.send(&publish(
            v5,
            2,
            topic.as_bytes(),
            10,
            &[],
            reading(t + 2000, 63).as_bytes(),
        ))?;
        conn.send(&publish(
            v5,
            2,
            topic.as_bytes(),
            10,
            &[],
            reading(t + 3000, 64).as_bytes(),
        ))?;
        let mut recs = 0;
        while let Some(p) = read_within(&mut conn, Duration::from_secs(2)) {
            if p.kind() == 5 && p.body[..2] == [0, 10] {
                recs += 1;
            }
        }
        for pkid in [9u8, 10] {
            conn.send(&raw::packet(0x62, &[0, pkid]))?;
            assert_eq!(conn.read_kind(7)?.body[..2], [0, pkid], "PUBCOMP");
        }
        println!(
            "{device} ({}): PUBRECs for two copies in flight: {recs}",
            version(v5)
        );
        assert!(recs >= 1, "no PUBREC for packet id 10");
        let citizen = device.replace("bed", "citizen");
        let stored = common::eventually(Duration::from_secs(10), || {
            let rows = hub.query(&["--metric", "heart_rate", "--citizen", &citizen])?;
            Ok((rows.len() >= 2).then_some(rows))
        })?;
        std::thread::sleep(SHORT);
        let rows = hub.query(&["--metric", "heart_rate", "--citizen", &citizen])?;
        assert_eq!(
            rows.len(),
            2,
            "one reading per packet id: {stored:?} then {rows:?}"
        );
        let values: Vec<f64> = rows.iter().filter_map(|r| r["value"].as_f64()).collect();
        assert_eq!(values, [61.0, 63.0], "{rows:?}");
    }
    finish(hub, "QoS 2 telemetry id reuse")
}

/// MQTT 5 Maximum Packet Size: a PUBLISH larger than `mqtt.max_packet_size` gets DISCONNECT
/// 0x95 (3.1.1: closed), as soon as its fixed header is read, without the hub buffering it;
/// an MQTT 5 CONNECT that is too large gets CONNACK 0x95.
#[test]
fn oversized_packets_are_refused_before_they_are_buffered() -> Result<()> {
    let (_dir, hub) = start()?;
    let mut watcher = watcher(&hub)?;
    let too_large = MAX_PACKET_SIZE + 1024;
    for v5 in VERSIONS {
        let mut conn = connected(&hub, v5, "big")?;
        // The header and the first bytes: the hub must answer without waiting for the rest.
        let whole = publish(v5, 1, b"big/t", 1, &[], &vec![b'x'; too_large]);
        conn.send(&whole[..1024])?;
        assert_cut_off(&mut conn, PACKET_TOO_LARGE, "PUBLISH over max_packet_size");
        // The whole of it, written while the hub reacts.
        let mut conn = connected(&hub, v5, "big")?;
        let _ = conn.send(&whole);
        let seen = next_seen(&mut conn, Duration::from_secs(5));
        let expected = if v5 {
            Seen::Disconnect(PACKET_TOO_LARGE)
        } else {
            Seen::Closed
        };
        // The hub closes with the rest unread, so the kernel may reset the connection before
        // the DISCONNECT is read.
        assert!(
            seen == expected || seen == Seen::Closed,
            "whole oversized PUBLISH: {seen:?}"
        );
    }
    let mut huge_connect = vec![0x10, 0x80, 0x80, 0x20]; // 524,288 bytes announced
    huge_connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30]);
    let (mut conn, ack) = handshake(&hub, true, &huge_connect)?;
    assert_eq!(ack.body.get(1), Some(&PACKET_TOO_LARGE), "{ack:?}");
    assert_eq!(next_seen(&mut conn, SHORT * 4), Seen::Closed);
    huge_connect[10] = 4;
    let mut conn = Conn::open(hub.addr, false)?;
    conn.send(&huge_connect)?;
    assert_eq!(
        next_seen(&mut conn, SHORT * 4),
        Seen::Closed,
        "3.1.1 CONNECT too large"
    );
    assert_nothing_delivered(&mut watcher, "oversized PUBLISH");
    assert_still_serves(&hub)?;
    finish(hub, "oversized packets")
}

// ----- floods and memory ----------------------------------------------------------------------------

/// Samples the hub's memory every 100 ms until dropped; keeps the highest VmRSS seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak_kb: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kb = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak_kb) = (stop.clone(), peak_kb.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = common::memory(pid) {
                        peak_kb.fetch_max(m.rss_kb, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Sampler {
            stop,
            peak_kb,
            thread: Some(thread),
        }
    }

    fn peak_kb(&self) -> u64 {
        self.peak_kb.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asserts the bounds on the hub's memory: VmHWM (its peak over the whole run) under
/// [`PEAK_RSS_LIMIT_KB`] and VmRSS back within [`SETTLED_RSS_MARGIN_KB`] of `before`.
fn assert_memory_bounded(case: &str, before: Memory, during_kb: u64, after: Memory) {
    println!(
        "{case}: hub memory before: {before}; highest VmRSS sampled during: {:.1} MB; after: {after}",
        during_kb as f64 / 1024.0
    );
    // The kernel updates VmHWM lazily; the sampled peak covers what it may not show yet.
    let peak_kb = after.hwm_kb.max(during_kb);
    assert!(
        peak_kb < PEAK_RSS_LIMIT_KB,
        "{case}: the hub's peak resident memory {peak_kb} kB is over {PEAK_RSS_LIMIT_KB} kB"
    );
    assert!(
        after.rss_kb < before.rss_kb + SETTLED_RSS_MARGIN_KB,
        "{case}: the hub holds {} kB after the clients left, {} kB before",
        after.rss_kb,
        before.rss_kb
    );
}

const IDLE_CONNECTIONS: usize = 10_000;
/// Rounds of [`IDLE_CONNECTIONS`]: the allocator settles in the first ones.
const ROUNDS: usize = 3;

/// 10,000 connections that never send CONNECT are all closed by the hub once
/// `mqtt.connect_timeout_ms` (2 s here) has passed, not before; the hub serves well-behaved
/// clients meanwhile and its memory stays bounded. Done three times: the last round must not
/// leave the hub holding more than the one before did (the memory is reused, not leaked).
///
/// File descriptors: this process and the hub each hold one per connection. Both inherit the
/// soft RLIMIT_NOFILE of the shell running the tests (20,000 where this was written); rather
/// than raising it (the workspace forbids `unsafe`, which `setrlimit` through libc needs, and
/// a raise beyond the hard limit needs privileges anyway), the test reads both limits and open
/// descriptors from /proc/<pid>/limits and /proc/<pid>/fd and opens the 10,000 in as many
/// waves as they allow, printing the wave size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_without_connect_are_closed_after_the_connect_timeout(
) -> Result<()> {
    let (_dir, hub) = start()?;
    let pid = hub.pid();
    tokio::task::block_in_place(|| assert_still_serves(&hub))?;
    let before = hub.memory()?;
    let (own_limit, own_open) = common::fd_usage(std::process::id())?;
    let (hub_limit, hub_open) = common::fd_usage(pid)?;
    let room = |limit: u64, open: u64| limit.saturating_sub(open + 256) as usize;
    let wave = IDLE_CONNECTIONS
        .min(room(own_limit, own_open))
        .min(room(hub_limit, hub_open));
    ensure!(
        wave >= 500,
        "too few file descriptors: this process {own_limit}, hub {hub_limit}"
    );
    println!(
        "fd limits (soft RLIMIT_NOFILE): this process {own_limit} ({own_open} open), \
         hub {hub_limit} ({hub_open} open): waves of {wave}"
    );
    let sampler = Sampler::start(pid);
    let mut settled = Vec::new();
    for round in 1..=ROUNDS {
        idle_connections(&hub, wave).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = hub.memory()?;
        println!("round {round}: all closed, hub {after}");
        settled.push(after);
    }
    let during_kb = sampler.peak_kb();
    drop(sampler);
    let (first, last) = (&settled[0], &settled[ROUNDS - 1]);
    assert_memory_bounded("10,000 idle connections", before, during_kb, *last);
    // A leak would hold every round's connections: the hub would settle a whole round's
    // cost higher each round. How much the allocator hands back to the system in between,
    // and which of its arenas a round lands in, varies from run to run (by up to 17 MB in
    // 10,000 connections seen here, in the second round, as the arenas of busier threads
    // fill), so the last round is compared with the one before it, and the bound leaves half
    // a round's cost for that.
    let round_kb = first.hwm_kb.saturating_sub(before.rss_kb);
    let previous = &settled[ROUNDS - 2];
    assert!(
        last.rss_kb < previous.hwm_kb + round_kb / 2,
        "the last round left the hub holding more than the one before needed at its peak \
         plus half a round ({} kB): {previous} then {last}",
        round_kb / 2,
    );
    tokio::task::block_in_place(|| {
        assert_still_serves(&hub)?;
        finish(hub, "10,000 idle connections")
    })
}

/// Opens [`IDLE_CONNECTIONS`] that send nothing, `wave` at a time, and checks that the hub
/// closes each between the connect timeout and 5 s after it.
async fn idle_connections(hub: &Hub, wave: usize) -> Result<()> {
    let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
    let slack = Duration::from_secs(5);
    let mut lived = Vec::with_capacity(IDLE_CONNECTIONS);
    let mut opened = 0;
    while opened < IDLE_CONNECTIONS {
        let n = wave.min(IDLE_CONNECTIONS - opened);
        let mut waiting = tokio::task::JoinSet::new();
        for _ in 0..n {
            let mut stream = tokio::net::TcpStream::connect(hub.addr).await?;
            let connected = Instant::now();
            waiting.spawn(async move {
                let mut byte = [0u8; 1];
                let read = tokio::time::timeout(
                    timeout + slack,
                    tokio::io::AsyncReadExt::read(&mut stream, &mut byte),
                )
                .await;
                // Ok(Ok(0)): closed by the hub; a reset counts too. A byte or a timeout do not.
                let closed = matches!(read, Ok(Ok(0)) | Ok(Err(_)));
                (closed, connected.elapsed())
            });
        }
        opened += n;
        // The hub still serves while it holds them all.
        tokio::task::block_in_place(|| assert_still_serves(hub))?;
        println!("{opened} idle connections open: hub {}", hub.memory()?);
        while let Some(result) = waiting.join_next().await {
            lived.push(result?);
        }
    }
    let closed = lived.iter().filter(|(closed, _)| *closed).count();
    let shortest = lived.iter().map(|(_, t)| *t).min().unwrap_or_default();
    let longest = lived.iter().map(|(_, t)| *t).max().unwrap_or_default();
    println!(
        "{closed} of {IDLE_CONNECTIONS} closed by the hub, {shortest:?} to {longest:?} after connecting"
    );
    assert_eq!(
        closed, IDLE_CONNECTIONS,
        "connections the hub did not close"
    );
    // The hub's clock starts at accept; this side notes the connect only when its task runs
    // again, which can be a few milliseconds later.
    assert!(
        shortest >= timeout - Duration::from_millis(50),
        "closed before the connect timeout: {shortest:?}"
    );
    assert!(longest <= timeout + slack);
    Ok(())
}

/// A client publishing on ever new topics must not grow the hub's memory: 2,000 QoS 0
/// messages on distinct 60,000-byte topics (117 MB of topic names), then 100,000 on distinct
/// short ones, nobody subscribed, leave the hub within 10 MB of where it started while the
/// publisher stays connected: a topic costs memory only while a subscription or retained
/// message refers to it. (rumqttd's router kept a meter per topic per connection, about
/// 117 MB for the long topics alone.)
#[test]
fn a_client_publishing_on_ever_new_topics_does_not_grow_the_hub_without_bound() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Unthrottled: the publish rate limit is not this test's subject.
    let config = config().replace("[mqtt]\n", "[mqtt]\nmax_publish_rate = 0\n");
    let hub = Hub::start_without_consent(dir.path(), &config)?;
    assert_still_serves(&hub)?;
    let before = hub.memory()?;
    let mut publisher = connected(&hub, false, "topics")?;
    let filler = "x".repeat(60_000 - 12);
    for i in 0..2_000 {
        let topic = format!("new/{i:06}/{filler}");
        publisher.send(&publish(false, 0, topic.as_bytes(), 0, &[], b"p"))?;
    }
    for i in 0..100_000 {
        let topic = format!("short/{}/{i:06}", i % 100);
        publisher.send(&publish(false, 0, topic.as_bytes(), 0, &[], b"p"))?;
    }
    // A QoS 1 publish is answered once everything before it is handled.
    publisher.send(&publish(false, 1, b"new/last", 1, &[], b"p"))?;
    publisher.read_kind(4)?;
    let after = hub.memory()?;
    println!(
        "2,000 distinct 60 kB topics and 100,000 short ones: hub {before} before, {after} after"
    );
    assert!(
        after.rss_kb < before.rss_kb + 10 * 1024,
        "the hub grew by {} kB",
        after.rss_kb.saturating_sub(before.rss_kb)
    );
    drop(publisher);
    assert_still_serves(&hub)?;
    finish(hub, "distinct topics")
}

/// 100,000 distinct topics, each retained once and then cleared (an empty retained
/// publish), under a subscriber of their parent, round after round with new names: the hub
/// must stop growing, because the retained store and the subscription trie keep a level only
/// while something refers to it. glibc's allocator keeps freed memory for reuse rather than
/// returning it, and each thread may first use an arena of its own, so the hub grows over
/// the first rounds (to 95-140 MB in a debug build, more when other tests load the machine);
/// within 8 rounds, one must leave it no more than 2 MB bigger than the round before. A leak
/// of 20 bytes a topic would grow every round by 2 MB.
#[test]
fn a_hundred_thousand_topics_once_gone_leave_nothing_behind() -> Result<()> {
    const TOPICS: usize = 100_000;
    let dir = tempfile::tempdir()?;
    // Unthrottled: the publish rate limit is not this test's subject.
    let config = config().replace("[mqtt]\n", "[mqtt]\nmax_publish_rate = 0\n");
    let hub = Hub::start_without_consent(dir.path(), &config)?;
    assert_still_serves(&hub)?;
    let mut watcher = connected(&hub, false, "topic-watcher")?;
    assert_eq!(watcher.subscribe(1, &["gone/+/+/x"])?, [0]);
    let before = hub.memory()?;
    let mut publisher = connected(&hub, false, "topic-maker")?;
    let mut send_all = |round: usize, payload: &[u8]| -> Result<()> {
        for i in 0..TOPICS {
            let topic = format!("gone/{}/{round}-{i:06}/x", i % 100);
            let mut retained = publish(false, 0, topic.as_bytes(), 0, &[], payload);
            retained[0] |= 0x01;
            publisher.send(&retained)?;
            if i % 512 == 0 {
                // Keep up with what the watcher is sent: its queue is bounded, not this test's
                // subject.
                while watcher.read_within(Duration::from_millis(1)).is_some() {}
            }
        }
        publisher.send(&publish(false, 1, b"gone/done", 1, &[], b"p"))?;
        publisher.read_kind(4)?;
        while watcher.read_within(Duration::from_millis(200)).is_some() {}
        Ok(())
    };
    const ROUNDS: usize = 8;
    let mut previous: Option<u64> = None;
    let mut settled = false;
    for round in 0..ROUNDS {
        send_all(round, b"kept")?;
        let held = hub.memory()?;
        send_all(round, b"")?;
        let cleared = hub.memory()?;
        println!(
            "round {round}: {TOPICS} retained topics: hub {before} before, {held} while retained, {cleared} once cleared"
        );
        if previous.is_some_and(|kb| cleared.rss_kb <= kb + 2 * 1024) {
            settled = true;
            break;
        }
        previous = Some(cleared.rss_kb);
    }
    assert!(
        settled,
        "the hub grew by more than 2 MB in each of {ROUNDS} rounds of {TOPICS} topics set and cleared"
    );
    assert_still_serves(&hub)?;
    finish(hub, "a hundred thousand topics")
}

/// The hub-side state of the TCP connection from local port `client_port` to the hub, from
/// /proc/net/tcp: `Some("01")` while established, `None` once gone.
fn hub_side_state(hub_port: u16, client_port: u16) -> Result<Option<String>> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let want_local = format!("0100007F:{hub_port:04X}");
    let want_remote = format!(":{client_port:04X}");
    Ok(table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&want_local.as_str())
            && fields.get(2).is_some_and(|r| r.ends_with(&want_remote)))
        .then(|| fields.get(3).map(|s| s.to_string()))
        .flatten()
    }))
}

/// The flood's messages: QoS 0, 64 KiB each, 512 MiB in all: more than the hub may hold.
const FLOOD_PAYLOAD: usize = 64 * 1024;
const FLOOD_MESSAGES: usize = 8 * 1024;

/// A subscriber that reads nothing while the hub has 512 MiB to deliver to it: the hub holds a
/// bounded amount for it (its memory stays under the bound), serves others meanwhile, and
/// cuts it off once it has accepted nothing for `WRITE_TIMEOUT` (30 s); no keep-alive is
/// involved (the subscriber's is 0).
#[test]
fn a_subscriber_that_reads_nothing_is_cut_off_and_memory_stays_bounded() -> Result<()> {
    let (_dir, hub) = start()?;
    assert_still_serves(&hub)?;
    let before = hub.memory()?;
    let (mut sleeper, ack) = handshake(&hub, false, &connect_without_keep_alive(false, "sleeper"))?;
    assert_eq!(ack.body, [0, 0], "CONNACK");
    assert_eq!(sleeper.subscribe(1, &["flood/#"])?, [0]);
    let sleeper_port = sleeper.stream.local_addr()?.port();
    let sampler = Sampler::start(hub.pid());

    let mut publisher = connected(&hub, false, "flooder")?;
    let message = publish(false, 0, b"flood/t", 0, &[], &vec![b'f'; FLOOD_PAYLOAD]);
    let started = Instant::now();
    for i in 0..FLOOD_MESSAGES {
        publisher.send(&message)?;
        if i == FLOOD_MESSAGES / 2 {
            // Other clients are served in the middle of the flood.
            assert_still_serves(&hub)?;
        }
    }
    // A PINGREQ answered: the hub has read the whole flood.
    publisher.send(&raw::packet(0xc0, &[]))?;
    publisher.read_kind(13)?;
    let published = FLOOD_MESSAGES * FLOOD_PAYLOAD;
    println!(
        "published {} MiB in {:?}; hub now {}",
        published >> 20,
        started.elapsed(),
        hub.memory()?
    );
    ensure!(
        hub_side_state(hub.port(), sleeper_port)?.as_deref() == Some("01"),
        "the sleeper was cut off before it could have timed out"
    );
    let cut_off = common::eventually(WRITE_TIMEOUT + Duration::from_secs(20), || {
        Ok((hub_side_state(hub.port(), sleeper_port)?.as_deref() != Some("01")).then(Instant::now))
    })?;
    println!(
        "the hub cut the sleeper off {:?} after the flood began",
        cut_off - started
    );
    // Draining what the sockets hold ends in a close: the hub is not writing any more.
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    sleeper
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))?;
    let ended = loop {
        match sleeper.stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => received += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    println!("the sleeper had {} KiB waiting for it", received >> 10);
    assert!(ended, "the sleeper's connection is still open");
    assert!(
        received < published / 4,
        "the hub sent {received} of {published} bytes"
    );
    std::thread::sleep(Duration::from_secs(1));
    let during_kb = sampler.peak_kb();
    drop(sampler);
    let after = hub.memory()?;
    assert_memory_bounded("subscriber that reads nothing", before, during_kb, after);
    assert_still_serves(&hub)?;
    finish(hub, "subscriber that reads nothing")
}

/// Clients that each connect once with a client id of their own (random ids, or an empty id
/// the hub assigns one for) must not leave state behind: the router forgets a session when
/// it ends. 30,000 distinct ids
/// connect and disconnect one after another; after the first 10,000 (warm-up), the next
/// 20,000 may not grow the hub by more than 4 MB (a record per id would be about 11 MB).
#[test]
fn thirty_thousand_distinct_client_ids_leave_nothing_behind() -> Result<()> {
    let (_dir, hub) = start()?;
    let churn = |batch: &str, n: usize| -> Result<()> {
        for i in 0..n {
            let v5 = i % 2 == 1;
            // Every tenth an empty id (the hub assigns one), the others an id of their own.
            let id = if i % 10 == 0 {
                String::new()
            } else {
                format!("{batch}-{i}")
            };
            let (mut conn, code) = Conn::connect(hub.addr, v5, &id, None, None)?;
            ensure!(code == 0, "CONNACK {code:#04x} for {id:?}");
            conn.send(&raw::disconnect(v5, 0))?;
            conn.read_to_close(Duration::from_secs(5))?;
        }
        Ok(())
    };
    churn("warm", 10_000)?;
    let warm = hub.memory()?;
    churn("a", 10_000)?;
    churn("b", 10_000)?;
    let after = hub.memory()?;
    println!("20,000 distinct client ids after 10,000: hub {warm} then {after}");
    ensure!(
        after.rss_kb < warm.rss_kb + 4 * 1024,
        "the hub grew by {} kB: {warm} then {after}",
        after.rss_kb.saturating_sub(warm.rss_kb)
    );
    assert_still_serves(&hub)?;
    finish(hub, "distinct client ids")
}
