//! Per-client limits of kenko's listener, over real sockets: the receive maximum (MQTT 5:
//! DISCONNECT 0x93; 3.1.1: push-back), the publish rate (push-back), topic aliases, the
//! server keep-alive, and the counters on `GET /metrics`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::raw::{self, find_prop, parse_props, varint, Conn, Prop, Props};
use common::Hub;

/// Anonymous clients may use every non-$ topic (config/interop-acl.toml); an operator may
/// read the metrics.
fn config(mqtt: &str) -> String {
    let acl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/interop-acl.toml");
    format!(
        "[mqtt]\n{mqtt}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[auth]\nanonymous = true\nacl = {:?}\n\n{}",
        acl.display().to_string(),
        common::principal("operator-1", &["operator"])
    )
}

const DISCONNECT: u8 = 14;
const PUBACK: u8 = 4;
const PUBLISH: u8 = 3;

/// A v5 CONNECT with keep-alive `keep_alive`, clean start.
fn connect_v5(
    addr: SocketAddr,
    client_id: &str,
    keep_alive: u16,
) -> anyhow::Result<(Conn, Vec<(u8, Prop)>)> {
    let mut conn = Conn::open(addr, true)?;
    conn.send(&raw::connect_with(
        true,
        client_id,
        true,
        keep_alive,
        &Props::new(),
        None,
        0,
    ))?;
    let ack = conn.read()?;
    anyhow::ensure!(
        ack.kind() == 2 && ack.body[1] == 0,
        "CONNACK refused: {ack:?}"
    );
    let (len, used) = varint(&ack.body[2..]);
    let props = parse_props(&ack.body[2 + used..2 + used + len]);
    Ok((conn, props))
}

/// The reason code of a DISCONNECT the hub sends, or `None` if it just closes.
fn disconnect_reason(conn: &mut Conn) -> anyhow::Result<Option<u8>> {
    conn.stream
        .set_read_timeout(Some(Duration::from_secs(10)))?;
    loop {
        match conn.read() {
            Ok(p) if p.kind() == DISCONNECT => return Ok(p.body.first().copied()),
            Ok(_) => continue,
            Err(_) => return Ok(None),
        }
    }
}

/// `GET /metrics` as `principal`: status and body.
fn metrics(addr: SocketAddr, principal: Option<&str>) -> anyhow::Result<(u16, String)> {
    common::http_text(addr, "GET", "/metrics", principal, None)
}

/// The value of counter `name` in a metrics body.
fn counter(body: &str, name: &str) -> u64 {
    common::metric(body, name) as u64
}

#[test]
fn mqtt_3_3_4_7_exceeding_the_receive_maximum_gets_disconnect_0x93() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_without_consent(dir.path(), &config("receive_maximum = 2"))?;
    let (mut conn, props) = connect_v5(hub.addr, "greedy", 30)?;
    assert!(
        matches!(find_prop(&props, 0x21), Some(Prop::U16(2))),
        "CONNACK announces Receive Maximum 2: {props:?}"
    );
    // Ten QoS 1 publishes in one write: the hub reads them before it can answer any.
    let burst: Vec<u8> = (1..=10u16)
        .flat_map(|id| raw::publish_qos1(true, "load/a", id, &[], b"x"))
        .collect();
    conn.send(&burst)?;
    assert_eq!(
        disconnect_reason(&mut conn)?,
        Some(0x93),
        "Receive Maximum exceeded"
    );

    // A 3.1.1 client cannot be told the limit: it is read more slowly, and everything is
    // acknowledged.
    let (mut v3, code) = Conn::connect(hub.addr, false, "patient", None, None)?;
    assert_eq!(code, 0);
    let burst: Vec<u8> = (1..=50u16)
        .flat_map(|id| raw::publish_qos1(false, "load/b", id, &[], b"x"))
        .collect();
    v3.send(&burst)?;
    let mut acked = std::collections::HashSet::new();
    while acked.len() < 50 {
        let p = v3.read_kind(PUBACK)?;
        acked.insert(u16::from_be_bytes([p.body[0], p.body[1]]));
    }
    let (status, body) = metrics(hub.http_addr.expect("http"), Some("operator-1"))?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        counter(&body, "kenko_mqtt_receive_maximum_exceeded_total"),
        1
    );
    hub.terminate()
}

#[test]
fn fast_publishers_are_pushed_back_not_dropped() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_without_consent(
        dir.path(),
        &config("max_publish_rate = 20\npublish_burst = 5"),
    )?;
    let (mut conn, code) = Conn::connect(hub.addr, false, "chatty", None, None)?;
    assert_eq!(code, 0);
    let started = Instant::now();
    let burst: Vec<u8> = (1..=45u16)
        .flat_map(|id| raw::publish_qos1(false, "load/c", id, &[], b"x"))
        .collect();
    conn.send(&burst)?;
    for _ in 0..45 {
        conn.read_kind(PUBACK)?;
    }
    // 5 at once, then 20 per second: the last 40 take at least two seconds. (A lower bound
    // only: a slow machine takes longer, never shorter.)
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900),
        "all 45 answered in {elapsed:?}"
    );
    let (_, body) = metrics(hub.http_addr.expect("http"), Some("operator-1"))?;
    assert!(
        counter(&body, "kenko_mqtt_publishes_throttled_total") >= 39,
        "{body}"
    );
    hub.terminate()
}

/// PUBLISH at QoS 0 with v5 properties.
fn publish_v5(topic: &str, props: &Props, payload: &[u8]) -> Vec<u8> {
    raw::publish_with(true, topic, 0, false, false, 0, props, payload)
}

/// The topic and payload of a QoS 0 PUBLISH body (v5, properties skipped).
fn topic_and_payload(body: &[u8]) -> (String, Vec<u8>) {
    let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = String::from_utf8_lossy(&body[2..2 + len]).into_owned();
    let (plen, used) = varint(&body[2 + len..]);
    (topic, body[2 + len + used + plen..].to_vec())
}

#[test]
fn mqtt_3_3_2_3_4_topic_aliases_from_clients_are_resolved() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_without_consent(dir.path(), &config(""))?;
    let (mut sub, _) = connect_v5(hub.addr, "watcher", 30)?;
    assert_eq!(sub.subscribe(1, &["alias/#"])?, vec![0]);
    let (mut publisher, props) = connect_v5(hub.addr, "aliaser", 30)?;
    assert!(
        matches!(find_prop(&props, 0x22), Some(Prop::U16(32))),
        "CONNACK offers 32 topic aliases: {props:?}"
    );
    let alias = Props::new().u16(0x23, 7);
    publisher.send(&publish_v5("alias/one", &alias, b"first"))?;
    publisher.send(&publish_v5("", &alias, b"second"))?;
    for want in [&b"first"[..], b"second"] {
        let p = sub.read_kind(PUBLISH)?;
        assert_eq!(
            topic_and_payload(&p.body),
            ("alias/one".to_owned(), want.to_vec())
        );
    }
    // MQTT-3.3.2-9: an alias above the maximum.
    publisher.send(&publish_v5("alias/two", &Props::new().u16(0x23, 33), b"x"))?;
    assert_eq!(
        disconnect_reason(&mut publisher)?,
        Some(0x94),
        "Topic Alias invalid"
    );
    // An alias used before it was defined is a protocol error.
    let (mut early, _) = connect_v5(hub.addr, "early", 30)?;
    early.send(&publish_v5("", &Props::new().u16(0x23, 3), b"x"))?;
    assert_eq!(disconnect_reason(&mut early)?, Some(0x82), "Protocol Error");
    hub.terminate()
}

#[test]
fn mqtt_3_2_2_3_14_server_keep_alive_caps_what_a_client_asks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_without_consent(dir.path(), &config("max_keep_alive_s = 2"))?;
    let (_, asked_none) = connect_v5(hub.addr, "forever", 0)?;
    assert!(
        matches!(find_prop(&asked_none, 0x13), Some(Prop::U16(2))),
        "keep-alive 0 is capped: {asked_none:?}"
    );
    let (_, modest) = connect_v5(hub.addr, "modest", 1)?;
    assert!(
        find_prop(&modest, 0x13).is_none(),
        "1 s is within the cap: {modest:?}"
    );
    // Held to it: silent for more than 1.5 × 2 s, the connection is closed.
    let (mut silent, _) = connect_v5(hub.addr, "silent", 600)?;
    let started = Instant::now();
    assert!(silent.closed_within(Duration::from_secs(10)));
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    hub.terminate()
}

#[test]
fn metrics_are_for_operators() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config("") + &common::principal("analyst-1", &["analyst"]);
    let hub = Hub::start_without_consent(dir.path(), &config)?;
    let http = hub.http_addr.expect("http");
    assert_eq!(metrics(http, None)?.0, 401);
    assert_eq!(metrics(http, Some("analyst-1"))?.0, 403);
    let (status, body) = metrics(http, Some("operator-1"))?;
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE kenko_mqtt_connected_clients gauge"),
        "{body}"
    );
    assert!(body.contains("kenko_wal_bytes "), "{body}");
    hub.terminate()
}

#[test]
fn mqtt_3_1_2_25_deliveries_larger_than_the_client_accepts_are_discarded() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_without_consent(dir.path(), &config(""))?;
    let mut small = Conn::open(hub.addr, true)?;
    let props = Props::new().u32(0x27, 64); // Maximum Packet Size
    small.send(&raw::connect_with(true, "small", true, 30, &props, None, 0))?;
    assert_eq!(small.read()?.kind(), 2);
    small.send(&raw::subscribe_with(
        true,
        1,
        &[("big/#", 1)],
        &Props::new(),
    ))?;
    small.read_kind(9)?;
    let (mut publisher, _) = connect_v5(hub.addr, "sender", 30)?;
    publisher.send(&raw::publish_qos1(true, "big/a", 1, &[], &[b'x'; 500]))?;
    publisher.read_kind(PUBACK)?;
    publisher.send(&raw::publish_qos1(true, "big/b", 2, &[], b"fits"))?;
    publisher.read_kind(PUBACK)?;
    let first = small.read_kind(PUBLISH)?.publish(true);
    assert_eq!(
        (first.topic.as_str(), &first.payload[..]),
        ("big/b", &b"fits"[..]),
        "the 500-byte message was not sent to a 64-byte client"
    );
    let (_, body) = metrics(hub.http_addr.expect("http"), Some("operator-1"))?;
    assert_eq!(counter(&body, "kenko_mqtt_too_large_for_client_total"), 1);
    hub.terminate()
}

#[test]
fn more_than_1000_filters_in_one_packet_get_disconnect_0x97() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_without_consent(dir.path(), &config(""))?;
    let names: Vec<String> = (0..1001).map(|i| format!("many/{i}")).collect();
    let filters: Vec<(&str, u8)> = names.iter().map(|n| (n.as_str(), 0)).collect();
    let (mut conn, _) = connect_v5(hub.addr, "greedy", 30)?;
    conn.send(&raw::subscribe_with(true, 1, &filters, &Props::new()))?;
    assert_eq!(disconnect_reason(&mut conn)?, Some(0x97), "SUBSCRIBE");
    let (mut conn, _) = connect_v5(hub.addr, "greedy", 30)?;
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    conn.send(&raw::unsubscribe(true, 1, &all))?;
    assert_eq!(disconnect_reason(&mut conn)?, Some(0x97), "UNSUBSCRIBE");
    // A thousand is fine, and so is unsubscribing from them.
    let (mut conn, _) = connect_v5(hub.addr, "greedy", 30)?;
    let ack = conn.subscribe_with(2, &filters[..1000], &Props::new())?;
    assert_eq!(ack.codes(true), vec![0; 1000]);
    conn.send(&raw::unsubscribe(true, 3, &all[..1000]))?;
    let ack = conn.read_kind(11)?;
    assert_eq!(ack.codes(true), vec![0; 1000]);
    hub.terminate()
}
