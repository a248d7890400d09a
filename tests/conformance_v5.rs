//! MQTT 5 conformance of kenko's listener: one test per normative statement (named after it),
//! against `kenko serve --config config/interop.toml`, with rumqttc's MQTT 5 client and, where
//! a client library would not send or show what the statement is about, raw packets.
//!
//! Each test checks what kenko does today. Known gaps are listed, with their clauses, in
//! docs/conformance.md rather than tested here; so are the statements other suites check
//! (tests/limits.rs: receive maximum, server keep-alive, incoming topic aliases;
//! tests/will_delay.rs: the will delay interval).

mod common;

use std::time::{Duration, Instant};

use common::raw::{self, find_prop, prop, Conn, Prop, Props, Will};
use common::{interop_hub, Hub, QUIET, SOON};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, LastWill, LastWillProperties, Packet, Publish, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

/// DISCONNECT reason codes (MQTT 5 3.14.2.1).
const MALFORMED_PACKET: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const KEEP_ALIVE_TIMEOUT: u8 = 0x8d;
const SESSION_TAKEN_OVER: u8 = 0x8e;
const SERVER_SHUTTING_DOWN: u8 = 0x8b;
const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
const TOPIC_ALIAS_INVALID: u8 = 0x94;
const PACKET_TOO_LARGE: u8 = 0x95;

/// A raw MQTT 5 CONNECT.
fn connect(client_id: &str, clean: bool, keep_alive: u16, props: &Props) -> Vec<u8> {
    raw::connect_with(true, client_id, clean, keep_alive, props, None, 0)
}

/// Properties as `raw` reads them.
type Properties = Vec<(u8, Prop)>;

/// A raw MQTT 5 connection that was accepted, and its CONNACK's session present and properties.
fn open_with(
    hub: &Hub,
    client_id: &str,
    clean: bool,
    props: &Props,
) -> anyhow::Result<(Conn, bool, Properties)> {
    let (conn, ack) = Conn::handshake(hub.addr, true, &connect(client_id, clean, 30, props))?;
    let (present, code, props) = ack.connack(true);
    anyhow::ensure!(
        code == 0,
        "CONNACK refused {client_id} with {code:#04x}: {props:?}"
    );
    Ok((conn, present, props))
}

fn open(hub: &Hub, client_id: &str) -> anyhow::Result<Conn> {
    Ok(open_with(hub, client_id, true, &Props::new())?.0)
}

/// A raw MQTT 5 PUBLISH.
fn publish(
    topic: &str,
    qos: u8,
    retain: bool,
    pkid: u16,
    props: &Props,
    payload: &[u8],
) -> Vec<u8> {
    raw::publish_with(true, topic, qos, retain, false, pkid, props, payload)
}

/// The next PUBLISH on a raw connection within `limit`.
fn delivery(conn: &mut Conn, limit: Duration) -> Option<raw::Delivery> {
    conn.read_kind_within(3, limit).map(|p| p.publish(true))
}

/// Subscribes a raw connection (options byte per filter) and returns the reason codes.
fn subscribe(
    conn: &mut Conn,
    pkid: u16,
    filters: &[(&str, u8)],
    props: &Props,
) -> anyhow::Result<Vec<u8>> {
    Ok(conn.subscribe_with(pkid, filters, props)?.codes(true))
}

/// rumqttc MQTT 5 options for this hub.
fn options(hub: &Hub, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", hub.port());
    options.set_keep_alive(Duration::from_secs(10));
    options
}

/// Polls a rumqttc event loop until a publish arrives, or `limit` passes.
async fn next_publish(eventloop: &mut EventLoop, limit: Duration) -> Option<Publish> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => return Some(p),
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

async fn until_connack(eventloop: &mut EventLoop) -> anyhow::Result<ConnAck> {
    loop {
        if let Event::Incoming(Packet::ConnAck(ack)) = eventloop.poll().await? {
            return Ok(ack);
        }
    }
}

async fn until_suback(eventloop: &mut EventLoop) -> anyhow::Result<()> {
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await? {
            return Ok(());
        }
    }
}

/// A rumqttc client whose event loop runs in the background (for publishers).
fn background(hub: &Hub, client_id: &str) -> AsyncClient {
    let (client, mut eventloop) = AsyncClient::new(options(hub, client_id), 100);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

/// A hub with config/interop.toml followed by `extra` (further sections), and the interop
/// ACL followed by `extra_rules`.
fn interop_hub_with(extra: &str, extra_rules: &str) -> anyhow::Result<(tempfile::TempDir, Hub)> {
    let dir = tempfile::tempdir()?;
    let interop = common::interop_config();
    let config = std::fs::read_to_string(&interop)?;
    let rules = std::fs::read_to_string(interop.with_file_name("interop-acl.toml"))?;
    std::fs::write(
        dir.path().join("interop-acl.toml"),
        format!("{extra_rules}\n{rules}"),
    )?;
    let path = dir.path().join("kenko.toml");
    std::fs::write(&path, format!("{config}\n{extra}"))?;
    let hub = Hub::start_with(dir.path(), &path)?;
    Ok((dir, hub))
}

// ---------------------------------------------------------------------------------------------
// CONNECT and CONNACK

#[test]
fn mqtt_3_1_0_2_second_connect_gets_disconnect_0x82() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = open(&hub, "twice")?;
    conn.send(&connect("twice", true, 30, &Props::new()))?;
    assert_eq!(conn.end_within(SOON), Some(PROTOCOL_ERROR));
    hub.terminate()
}

#[test]
fn mqtt_3_2_2_3_connack_properties_announce_the_hubs_limits() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // Even asked for it, the hub sends no Response Information (optional, 3.2.2.3.15).
    let asked = Props::new().byte(prop::REQUEST_RESPONSE_INFORMATION, 1);
    let (_conn, present, props) = open_with(&hub, "limits", true, &asked)?;
    assert!(!present);
    let get = |id| find_prop(&props, id).cloned();
    assert_eq!(
        get(prop::RECEIVE_MAXIMUM),
        Some(Prop::U16(100)),
        "{props:?}"
    );
    assert_eq!(get(prop::MAXIMUM_PACKET_SIZE), Some(Prop::U32(256 * 1024)));
    assert_eq!(get(prop::TOPIC_ALIAS_MAXIMUM), Some(Prop::U16(32)));
    // Absent means QoS 2, retained messages, wildcards, subscription identifiers and shared
    // subscriptions are available, and the client's keep-alive holds.
    for absent in [
        prop::SHARED_SUBSCRIPTION_AVAILABLE,
        prop::MAXIMUM_QOS,
        prop::RETAIN_AVAILABLE,
        prop::WILDCARD_SUBSCRIPTION_AVAILABLE,
        prop::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        prop::SERVER_KEEP_ALIVE,
        prop::RESPONSE_INFORMATION,
        prop::ASSIGNED_CLIENT_IDENTIFIER,
    ] {
        assert_eq!(get(absent), None, "property {absent:#04x}: {props:?}");
    }
    hub.terminate()
}

#[test]
fn mqtt_3_1_3_7_empty_client_id_gets_an_assigned_client_identifier() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let assigned = |props: &[(u8, Prop)]| match find_prop(props, prop::ASSIGNED_CLIENT_IDENTIFIER) {
        Some(Prop::Str(id)) => Some(id.clone()),
        _ => None,
    };
    let (mut first, _, props) = open_with(&hub, "", true, &Props::new())?;
    let first_id = assigned(&props).expect("Assigned Client Identifier");
    let (_second, _, props) = open_with(&hub, "", true, &Props::new())?;
    let second_id = assigned(&props).expect("Assigned Client Identifier");
    // MQTT-3.2.2-16: one no other session uses.
    assert_ne!(first_id, second_id);
    // The connection is the assigned id's: connecting with it takes the first one over.
    let _third = open(&hub, &first_id)?;
    assert_eq!(first.end_within(SOON), Some(SESSION_TAKEN_OVER));
    hub.terminate()
}

#[test]
fn mqtt_3_1_2_3_reserved_connect_flag_set_gets_connack_0x81() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let connect = raw::connect_with(true, "reserved5", true, 30, &Props::new(), None, 0x01);
    let (mut conn, ack) = Conn::handshake(hub.addr, true, &connect)?;
    assert_eq!(ack.connack(true).1, MALFORMED_PACKET);
    assert!(conn.read_to_close(SOON)?.is_empty(), "then closed");
    hub.terminate()
}

#[test]
fn mqtt_2_2_2_2_invalid_fixed_header_flags_get_disconnect_0x81() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut wrong = raw::subscribe_with(true, 1, &[("flags5/a", 0)], &Props::new());
    wrong[0] = 0x8A;
    let pubrel = raw::packet(0x6F, &[0, 1]);
    let puback = raw::packet(0x41, &[0, 1]);
    for (what, bytes) in [
        ("SUBSCRIBE 0x8A", wrong),
        ("PUBREL 0x6F", pubrel),
        ("PUBACK 0x41", puback),
    ] {
        let mut conn = open(&hub, "flags5")?;
        conn.send(&bytes)?;
        assert_eq!(conn.end_within(SOON), Some(MALFORMED_PACKET), "{what}");
    }
    let mut conn = open(&hub, "flags5")?;
    assert_eq!(
        subscribe(&mut conn, 1, &[("flags5/a", 0)], &Props::new())?,
        vec![0]
    );
    hub.terminate()
}

#[test]
fn mqtt_4_12_0_1_an_authentication_method_the_hub_lacks_gets_0x8c() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let props = Props::new().str(prop::AUTHENTICATION_METHOD, "SCRAM-SHA-256");
    let (mut conn, ack) = Conn::handshake(hub.addr, true, &connect("scram", true, 30, &props))?;
    let (present, code, props) = ack.connack(true);
    assert_eq!((present, code), (false, 0x8c), "Bad authentication method");
    assert!(
        matches!(find_prop(&props, prop::REASON_STRING), Some(Prop::Str(s)) if s.contains("SCRAM-SHA-256")),
        "the reason string names the method: {props:?}"
    );
    assert!(conn.read_to_close(SOON)?.is_empty(), "then closed");
    hub.terminate()
}

#[test]
fn mqtt_3_1_2_29_request_problem_information_0_keeps_reason_strings_off_acknowledgements(
) -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // By default a refused subscription's SUBACK says why.
    let mut told = open(&hub, "problems-on")?;
    let ack = told.subscribe_with(1, &[("test/nosubscribe", 0)], &Props::new())?;
    assert_eq!(ack.codes(true), vec![0x87]);
    assert!(
        matches!(
            find_prop(&ack.ack_props(), prop::REASON_STRING),
            Some(Prop::Str(_))
        ),
        "{:?}",
        ack.ack_props()
    );
    // A client that asks for no problem information gets the code alone.
    let quiet = Props::new().byte(prop::REQUEST_PROBLEM_INFORMATION, 0);
    let (mut conn, _, _) = open_with(&hub, "problems-off", true, &quiet)?;
    let ack = conn.subscribe_with(1, &[("test/nosubscribe", 0)], &Props::new())?;
    assert_eq!(ack.codes(true), vec![0x87]);
    assert_eq!(
        ack.ack_props(),
        vec![],
        "no reason string, no user properties"
    );
    hub.terminate()
}

#[test]
fn mqtt_3_1_3_8_rejected_client_id_gets_0x85() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // A wildcard in the id; an empty id for a session meant to outlive the connection.
    for (id, clean) in [("bad+id", true), ("", false)] {
        let (mut conn, ack) =
            Conn::handshake(hub.addr, true, &connect(id, clean, 30, &Props::new()))?;
        let (present, code, props) = ack.connack(true);
        assert_eq!(
            (present, code),
            (false, 0x85),
            "{id:?}: Client Identifier not valid"
        );
        assert!(
            matches!(find_prop(&props, prop::REASON_STRING), Some(Prop::Str(_))),
            "with a reason string: {props:?}"
        );
        assert!(conn.read_to_close(SOON)?.is_empty(), "then closed");
    }
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_2_2_2_and_3_session_present_reflects_stored_session() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (_clean, mut clean_loop) = AsyncClient::new(options(&hub, "sp-clean"), 10);
    let ack = until_connack(&mut clean_loop).await?;
    assert!(
        !ack.session_present,
        "MQTT-3.2.2-2: clean start, session present 0"
    );

    let mut kept = options(&hub, "sp-kept");
    kept.set_clean_start(false);
    kept.set_session_expiry_interval(Some(300));
    let (app, mut app_loop) = AsyncClient::new(kept.clone(), 10);
    assert!(
        !until_connack(&mut app_loop).await?.session_present,
        "MQTT-3.2.2-3: no session yet, session present 0"
    );
    app.subscribe("sp5/alerts", QoS::AtLeastOnce).await?;
    until_suback(&mut app_loop).await?;
    app.disconnect().await?;
    while app_loop.poll().await.is_ok() {}

    let publisher = background(&hub, "sp-pub");
    publisher
        .publish("sp5/alerts", QoS::AtLeastOnce, false, "while away")
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (_app, mut app_loop) = AsyncClient::new(kept, 10);
    assert!(
        until_connack(&mut app_loop).await?.session_present,
        "MQTT-3.2.2-3: stored session, session present 1"
    );
    let got = next_publish(&mut app_loop, SOON)
        .await
        .expect("the message stored while away");
    assert_eq!(&got.payload[..], b"while away");
    hub.terminate()
}

/// A raw MQTT 5 connection with Clean Start `clean` and Session Expiry Interval `expiry`
/// (none when `None`); returns it, its session present flag and its CONNACK properties.
fn session(
    hub: &Hub,
    id: &str,
    clean: bool,
    expiry: Option<u32>,
) -> anyhow::Result<(Conn, bool, Properties)> {
    let props = match expiry {
        Some(s) => Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, s),
        None => Props::new(),
    };
    open_with(hub, id, clean, &props)
}

/// Connects `id` (see [`session`]), subscribes it to `filter` at QoS 1 and leaves with
/// `disconnect`; returns the session present flag it was connected with.
fn subscribed_and_gone(
    hub: &Hub,
    id: &str,
    clean: bool,
    expiry: Option<u32>,
    filter: &str,
    disconnect: &[u8],
) -> anyhow::Result<bool> {
    let (mut conn, present, _) = session(hub, id, clean, expiry)?;
    assert_eq!(
        subscribe(&mut conn, 1, &[(filter, 1)], &Props::new())?,
        vec![1]
    );
    conn.send(disconnect)?;
    anyhow::ensure!(
        conn.read_to_close(SOON)?.is_empty(),
        "closed after DISCONNECT"
    );
    Ok(present)
}

/// Publishes on `topic` while `id` is away, then reconnects `id` (Clean Start 0): whether
/// its session was there (session present) and what reached it (acknowledged, so nothing is
/// sent again next time).
fn kept_while_away(
    hub: &Hub,
    id: &str,
    topic: &str,
    expiry: Option<u32>,
) -> anyhow::Result<(bool, Vec<String>)> {
    let mut publisher = open(hub, &format!("{id}-pub"))?;
    publisher.send(&publish(topic, 1, false, 1, &Props::new(), b"while away"))?;
    publisher.read_kind(4)?;
    let (mut back, present, _) = session(hub, id, false, expiry)?;
    let mut got = Vec::new();
    while let Some(d) = delivery(&mut back, QUIET) {
        back.send(&raw::packet(0x40, &d.pkid.to_be_bytes()))?;
        got.push(d.topic);
    }
    back.send(&raw::disconnect(true, 0))?;
    back.read_to_close(SOON)?;
    Ok((present, got))
}

#[test]
fn mqtt_3_1_2_11_2_session_expiry_interval_decides_how_long_a_session_is_kept() -> anyhow::Result<()>
{
    let (_dir, hub) = interop_hub()?;
    // No Session Expiry Interval: the session ends with the connection, even with Clean
    // Start 0 (3.1.2.11.2).
    let bye = raw::disconnect(true, 0);
    let present = subscribed_and_gone(&hub, "se-none", false, None, "se/none", &bye)?;
    assert!(!present);
    assert_eq!(
        kept_while_away(&hub, "se-none", "se/none", None)?,
        (false, vec![]),
        "a session without expiry is not kept"
    );

    // Two seconds: kept across a quick reconnect, gone after the interval.
    subscribed_and_gone(&hub, "se-two", false, Some(2), "se/two", &bye)?;
    assert_eq!(
        kept_while_away(&hub, "se-two", "se/two", Some(2))?,
        (true, vec!["se/two".to_owned()]),
        "kept within its interval"
    );
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        kept_while_away(&hub, "se-two", "se/two", Some(2))?,
        (false, vec![]),
        "gone after its interval"
    );

    // Clean Start 1 with an interval: what was kept goes, and the new session is kept.
    subscribed_and_gone(&hub, "se-fresh", false, Some(300), "se/old", &bye)?;
    let present = subscribed_and_gone(&hub, "se-fresh", true, Some(300), "se/new", &bye)?;
    assert!(!present, "Clean Start discards the session (MQTT-3.1.2-4)");
    assert_eq!(
        kept_while_away(&hub, "se-fresh", "se/new", Some(300))?,
        (true, vec!["se/new".to_owned()])
    );
    assert_eq!(
        kept_while_away(&hub, "se-fresh", "se/old", Some(300))?,
        (true, vec![]),
        "the discarded session's subscription is gone"
    );

    // A DISCONNECT with Session Expiry Interval 0 ends the session now (3.14.2.2.2).
    let expiry_0 = raw::packet(0xe0, &[0x00, 5, prop::SESSION_EXPIRY_INTERVAL, 0, 0, 0, 0]);
    subscribed_and_gone(&hub, "se-bye", false, Some(300), "se/bye", &expiry_0)?;
    assert_eq!(
        kept_while_away(&hub, "se-bye", "se/bye", Some(300))?,
        (false, vec![])
    );
    hub.terminate()
}

#[test]
fn mqtt_3_14_2_2_2_disconnect_may_not_give_an_expiry_to_a_session_without_one() -> anyhow::Result<()>
{
    let (_dir, hub) = interop_hub()?;
    let mut watcher = open(&hub, "se-watch")?;
    assert_eq!(
        subscribe(&mut watcher, 1, &[("se/will", 0)], &Props::new())?,
        vec![0]
    );
    let will = Will {
        topic: "se/will",
        payload: b"gone",
        qos: 0,
        retain: false,
        props: Props::new(),
    };
    let connect = raw::connect_with(true, "se-zero", true, 30, &Props::new(), Some(&will), 0);
    let (mut conn, _) = Conn::handshake(hub.addr, true, &connect)?;
    conn.send(&raw::packet(
        0xe0,
        &[0x00, 5, prop::SESSION_EXPIRY_INTERVAL, 0, 0, 0, 60],
    ))?;
    assert_eq!(conn.end_within(SOON), Some(PROTOCOL_ERROR));
    let got = delivery(&mut watcher, SOON).expect("the will, as after any protocol error");
    assert_eq!(got.payload, b"gone");
    hub.terminate()
}

#[test]
fn mqtt_4_3_3_a_refusing_pubrec_ends_the_exchange() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut refuser = open(&hub, "refuser")?;
    assert_eq!(
        subscribe(&mut refuser, 1, &[("rec/x", 2)], &Props::new())?,
        vec![2]
    );
    let mut publisher = open(&hub, "rec-pub")?;
    for (pkid, body) in [(1u16, &b"first"[..]), (2, b"second")] {
        publisher.send(&publish("rec/x", 2, false, pkid, &Props::new(), body))?;
        publisher.read_kind(5)?;
        publisher.send(&raw::packet(0x62, &pkid.to_be_bytes()))?;
        publisher.read_kind(7)?;
    }
    let first = delivery(&mut refuser, SOON).expect("first");
    // PUBREC 0x97 Quota exceeded: no PUBREL may follow for it.
    let mut rec = first.pkid.to_be_bytes().to_vec();
    rec.push(0x97);
    refuser.send(&raw::packet(0x50, &rec))?;
    let second = delivery(&mut refuser, SOON).expect("second");
    assert_eq!(second.payload, b"second");
    refuser.send(&raw::packet(0x50, &second.pkid.to_be_bytes()))?;
    let rel = refuser.read_kind(6)?;
    assert_eq!(
        rel.pkid(),
        second.pkid,
        "the only PUBREL is the second one's"
    );
    refuser.send(&raw::packet(0x70, &second.pkid.to_be_bytes()))?;
    assert!(
        refuser.read_kind_within(6, QUIET).is_none(),
        "no stray PUBREL"
    );
    hub.terminate()
}

#[test]
fn mqtt_3_2_2_3_2_the_hub_tells_the_session_expiry_it_grants() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // "Never expires" is more than mqtt.max_session_expiry_s (7 days by default).
    let (_conn, _, props) = session(&hub, "se-never", true, Some(u32::MAX))?;
    assert_eq!(
        find_prop(&props, prop::SESSION_EXPIRY_INTERVAL),
        Some(&Prop::U32(7 * 24 * 3600))
    );
    // What the hub grants as asked is not repeated.
    let (_conn, _, props) = session(&hub, "se-hour", true, Some(3600))?;
    assert_eq!(find_prop(&props, prop::SESSION_EXPIRY_INTERVAL), None);
    hub.terminate()
}

#[test]
fn mqtt_3_1_4_3_session_takeover_gets_disconnect_0x8e() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut first = open(&hub, "taken")?;
    let mut second = open(&hub, "taken")?;
    assert_eq!(first.end_within(SOON), Some(SESSION_TAKEN_OVER));
    second.ping()?;
    hub.terminate()
}

#[test]
fn mqtt_3_1_2_22_keep_alive_enforced_at_one_and_a_half_with_0x8d() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, _) = Conn::handshake(hub.addr, true, &connect("ka5", true, 1, &Props::new()))?;
    let silent = Instant::now();
    assert_eq!(conn.end_within(SOON), Some(KEEP_ALIVE_TIMEOUT));
    let waited = silent.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "too early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(4), "too late: {waited:?}");
    hub.terminate()
}

#[test]
fn mqtt_3_2_2_22_without_server_keep_alive_the_clients_value_holds() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // With config/interop.toml (no `mqtt.max_keep_alive_s`) a keep-alive of 0 stands.
    let (mut conn, ack) = Conn::handshake(hub.addr, true, &connect("ka0", true, 0, &Props::new()))?;
    let (_, code, props) = ack.connack(true);
    assert_eq!(code, 0);
    assert_eq!(
        find_prop(&props, prop::SERVER_KEEP_ALIVE),
        None,
        "{props:?}"
    );
    std::thread::sleep(Duration::from_millis(2000));
    conn.ping()?;
    hub.terminate()
}

#[test]
fn mqtt_3_14_2_1_server_shutting_down_sends_0x8b() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = open(&hub, "to-be-told")?;
    hub.terminate()?;
    assert_eq!(conn.end_within(SOON), Some(SERVER_SHUTTING_DOWN));
    Ok(())
}

/// Subscribes a new persistent session `id` to `filter` at QoS 1 and leaves.
fn away(hub: &Hub, id: &str, filter: &str) -> anyhow::Result<()> {
    subscribed_and_gone(hub, id, false, Some(300), filter, &raw::disconnect(true, 0))?;
    Ok(())
}

/// 4.1 (the Server may limit what it stores for a session): with `mqtt.max_queued_messages`
/// and `mqtt.max_queued_bytes`, an absent session keeps at most that much, QoS 0 going first;
/// the publisher and the other subscribers get everything, unhindered.
#[test]
fn mqtt_4_1_an_absent_sessions_queue_is_bounded_and_holds_no_one_back() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub_with(
        "[mqtt]\nmax_queued_messages = 5\nmax_queued_bytes = 1000\n",
        "",
    )?;
    away(&hub, "bounded-count", "bound/small")?;
    away(&hub, "bounded-bytes", "bound/big")?;
    let mut online = open(&hub, "bound-online")?;
    assert_eq!(
        subscribe(&mut online, 1, &[("bound/#", 1)], &Props::new())?,
        vec![1]
    );

    // Five QoS 0 messages, then ten QoS 1: the QoS 0 ones make room for the first five QoS 1,
    // the rest find the queue full of QoS 1 and are dropped for that session alone.
    let mut publisher = open(&hub, "bound-pub")?;
    for n in 0..5 {
        let payload = format!("q0-{n}");
        publisher.send(&publish(
            "bound/small",
            0,
            false,
            0,
            &Props::new(),
            payload.as_bytes(),
        ))?;
    }
    for pkid in 1..=10 {
        let payload = format!("q1-{pkid}");
        publisher.send(&publish(
            "bound/small",
            1,
            false,
            pkid,
            &Props::new(),
            payload.as_bytes(),
        ))?;
        let ack = publisher
            .read_kind_within(4, SOON)
            .expect("the publisher is not held back");
        assert_eq!(ack.pkid(), pkid);
    }
    // Three of 400 bytes where 1000 fit: two are kept.
    let big = vec![b'b'; 400];
    for pkid in 11..=13 {
        publisher.send(&publish("bound/big", 1, false, pkid, &Props::new(), &big))?;
        assert_eq!(publisher.read_kind(4)?.pkid(), pkid);
    }
    let got = drain(&mut online)?;
    assert_eq!(got.len(), 18, "the online subscriber gets every message");

    let payloads = |id: &str| -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
        let (mut back, present, _) = session(&hub, id, false, Some(300))?;
        anyhow::ensure!(present, "{id}'s session kept");
        Ok(drain(&mut back)?
            .into_iter()
            .map(|d| (d.qos, d.payload))
            .collect())
    };
    let expected: Vec<(u8, Vec<u8>)> = (1..=5)
        .map(|n| (1, format!("q1-{n}").into_bytes()))
        .collect();
    assert_eq!(payloads("bounded-count")?, expected);
    assert_eq!(payloads("bounded-bytes")?, vec![(1, big.clone()), (1, big)]);
    hub.terminate()
}

// ---------------------------------------------------------------------------------------------
// Wills

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_8_will_published_with_its_properties_on_abnormal_close() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (watcher, mut watch_loop) = AsyncClient::new(options(&hub, "watcher"), 10);
    watcher.subscribe("will5/#", QoS::AtLeastOnce).await?;
    until_suback(&mut watch_loop).await?;

    let user_properties = vec![
        ("bed".to_owned(), "7".to_owned()),
        ("ward".to_owned(), "3".to_owned()),
        ("bed".to_owned(), "8".to_owned()),
    ];
    let mut dropper = options(&hub, "dropper");
    dropper.set_last_will(LastWill::new(
        "will5/dropper",
        "lost",
        QoS::AtLeastOnce,
        false,
        Some(LastWillProperties {
            delay_interval: None,
            payload_format_indicator: Some(1),
            message_expiry_interval: None,
            content_type: Some("text/plain".into()),
            response_topic: Some("will5/ack".into()),
            correlation_data: Some(b"c-17".to_vec().into()),
            user_properties: user_properties.clone(),
        }),
    ));
    let (_dropper, mut dropper_loop) = AsyncClient::new(dropper, 10);
    until_connack(&mut dropper_loop).await?;
    drop(dropper_loop); // the connection ends without DISCONNECT

    let got = next_publish(&mut watch_loop, SOON).await.expect("will");
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (&b"will5/dropper"[..], &b"lost"[..])
    );
    let props = got.properties.expect("will properties");
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(props.response_topic.as_deref(), Some("will5/ack"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"c-17"[..]));
    // MQTT-3.1.3-10: user properties in their order.
    assert_eq!(props.user_properties, user_properties);
    hub.terminate()
}

#[test]
fn mqtt_3_14_4_3_disconnect_0x00_discards_the_will() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut watcher = open(&hub, "watcher")?;
    assert_eq!(
        subscribe(&mut watcher, 1, &[("w5/#", 0)], &Props::new())?,
        vec![0]
    );
    for (id, reason) in [("polite", 0x00), ("asks-for-it", 0x04)] {
        let will = Will {
            topic: if reason == 0 { "w5/polite" } else { "w5/asked" },
            payload: b"bye",
            ..Will::default()
        };
        let packet = raw::connect_with(true, id, true, 30, &Props::new(), Some(&will), 0);
        let (mut conn, _) = Conn::handshake(hub.addr, true, &packet)?;
        conn.send(&raw::disconnect(true, reason))?;
        conn.read_to_close(SOON)?;
    }
    // MQTT-3.14.4-3: not after 0x00; 3.14.2.1: after 0x04 (Disconnect with Will Message).
    let got = delivery(&mut watcher, SOON).expect("the will asked for");
    assert_eq!(got.topic, "w5/asked");
    assert!(
        delivery(&mut watcher, QUIET).is_none(),
        "no will after 0x00"
    );
    hub.terminate()
}

#[test]
fn mqtt_3_1_2_12_a_qos_2_will_is_delivered_at_qos_2() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut watcher = open(&hub, "w2-watch")?;
    assert_eq!(
        subscribe(&mut watcher, 1, &[("w2/#", 2)], &Props::new())?,
        vec![2]
    );
    let will = Will {
        topic: "w2/gone",
        payload: b"lost",
        qos: 2,
        retain: false,
        props: Props::new(),
    };
    let packet = raw::connect_with(true, "w2-dropper", true, 30, &Props::new(), Some(&will), 0);
    let (conn, _) = Conn::handshake(hub.addr, true, &packet)?;
    drop(conn); // closed without DISCONNECT
    let got = delivery(&mut watcher, SOON).expect("the will");
    assert_eq!((got.topic.as_str(), got.qos), ("w2/gone", 2));
    watcher.send(&raw::ack(0x50, got.pkid))?;
    assert_eq!(watcher.read_kind(6)?.pkid(), got.pkid, "PUBREL");
    hub.terminate()
}

// ---------------------------------------------------------------------------------------------
// Retained messages

#[test]
fn mqtt_3_3_1_5_to_7_retained_messages_are_stored_replaced_and_cleared() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut publisher = open(&hub, "ret-pub")?;
    for (pkid, payload) in [(1, &b"first"[..]), (2, b"second")] {
        publisher.send(&publish("ret5/a", 1, true, pkid, &Props::new(), payload))?;
        publisher.read_kind(4)?;
    }
    publisher.send(&publish("ret5/b", 1, true, 3, &Props::new(), b"doomed"))?;
    publisher.read_kind(4)?;
    publisher.send(&publish("ret5/b", 1, true, 4, &Props::new(), b""))?;
    publisher.read_kind(4)?;

    let mut subscriber = open(&hub, "ret-sub")?;
    // Retain Handling 0: the retained messages are sent on subscribing (MQTT-3.3.1-9), with
    // RETAIN 1.
    assert_eq!(
        subscribe(&mut subscriber, 1, &[("ret5/+", 0)], &Props::new())?,
        vec![0]
    );
    let got = delivery(&mut subscriber, SOON).expect("retained message");
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.retain),
        ("ret5/a", &b"second"[..], true)
    );
    assert!(
        delivery(&mut subscriber, QUIET).is_none(),
        "MQTT-3.3.1-6, -7: the empty retained message cleared ret5/b and was not stored"
    );
    hub.terminate()
}

#[test]
fn mqtt_3_3_1_12_forwarded_messages_have_retain_0() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut subscriber = open(&hub, "fwd-sub")?;
    assert_eq!(
        subscribe(&mut subscriber, 1, &[("fwd/x", 0)], &Props::new())?,
        vec![0]
    );
    let mut publisher = open(&hub, "fwd-pub")?;
    publisher.send(&publish("fwd/x", 0, true, 0, &Props::new(), b"live"))?;
    let got = delivery(&mut subscriber, SOON).expect("delivered");
    assert!(!got.retain, "Retain As Published 0: RETAIN cleared");
    hub.terminate()
}

#[test]
fn mqtt_3_3_1_10_retain_handling_1_sends_retained_only_for_a_new_subscription() -> anyhow::Result<()>
{
    let (_dir, hub) = interop_hub()?;
    let mut publisher = open(&hub, "rh-pub")?;
    publisher.send(&publish("rh/x", 1, true, 1, &Props::new(), b"state"))?;
    publisher.read_kind(4)?;
    let mut subscriber = open(&hub, "rh-sub")?;
    let rh1 = 0x10 | 1;
    assert_eq!(
        subscribe(&mut subscriber, 1, &[("rh/x", rh1)], &Props::new())?,
        vec![1]
    );
    let got = delivery(&mut subscriber, SOON).expect("new subscription: retained sent");
    assert!(got.retain);
    subscriber.send(&raw::ack(0x40, got.pkid))?;
    assert_eq!(
        subscribe(&mut subscriber, 2, &[("rh/x", rh1)], &Props::new())?,
        vec![1]
    );
    assert!(
        delivery(&mut subscriber, QUIET).is_none(),
        "existing subscription: not sent again"
    );
    hub.terminate()
}

#[test]
fn mqtt_3_3_1_8_an_empty_non_retained_publish_leaves_the_retained_message() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut publisher = open(&hub, "keep-pub")?;
    publisher.send(&publish("keep5/x", 1, true, 1, &Props::new(), b"state"))?;
    publisher.read_kind(4)?;
    let mut present = open(&hub, "keep-now")?;
    assert_eq!(
        subscribe(&mut present, 1, &[("keep5/x", 0)], &Props::new())?,
        vec![0]
    );
    assert_eq!(
        delivery(&mut present, SOON).expect("retained").payload,
        b"state"
    );
    publisher.send(&publish("keep5/x", 1, false, 2, &Props::new(), b""))?;
    publisher.read_kind(4)?;
    let got = delivery(&mut present, SOON).expect("the empty message, delivered as any other");
    assert!(got.payload.is_empty() && !got.retain);
    let mut later = open(&hub, "keep-later")?;
    assert_eq!(
        subscribe(&mut later, 1, &[("keep5/x", 0)], &Props::new())?,
        vec![0]
    );
    let got = delivery(&mut later, SOON).expect("RETAIN 0: the retained message is left");
    assert_eq!((&got.payload[..], got.retain), (&b"state"[..], true));
    hub.terminate()
}

#[test]
fn mqtt_3_3_1_11_retain_handling_2_sends_no_retained_messages() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut publisher = open(&hub, "rh2-pub")?;
    publisher.send(&publish("rh2/x", 1, true, 1, &Props::new(), b"state"))?;
    publisher.read_kind(4)?;
    let mut subscriber = open(&hub, "rh2-sub")?;
    let rh2 = 0x20;
    assert_eq!(
        subscribe(&mut subscriber, 1, &[("rh2/x", rh2)], &Props::new())?,
        vec![0]
    );
    assert!(
        delivery(&mut subscriber, QUIET).is_none(),
        "Retain Handling 2: no retained message on subscribing"
    );
    publisher.send(&publish("rh2/x", 0, false, 0, &Props::new(), b"live"))?;
    let got = delivery(&mut subscriber, SOON).expect("later messages still delivered");
    assert_eq!(&got.payload[..], b"live");
    hub.terminate()
}

#[test]
fn mqtt_3_3_1_13_retain_as_published_keeps_the_retain_flag() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut kept = open(&hub, "rap-1")?;
    let mut cleared = open(&hub, "rap-0")?;
    let rap = 0x08;
    assert_eq!(
        subscribe(&mut kept, 1, &[("rap/x", rap)], &Props::new())?,
        vec![0]
    );
    assert_eq!(
        subscribe(&mut cleared, 1, &[("rap/x", 0)], &Props::new())?,
        vec![0]
    );
    let mut publisher = open(&hub, "rap-pub")?;
    publisher.send(&publish("rap/x", 0, true, 0, &Props::new(), b"retained"))?;
    publisher.send(&publish("rap/x", 0, false, 0, &Props::new(), b"plain"))?;
    let flags = |conn: &mut Conn| -> Vec<(Vec<u8>, bool)> {
        (0..2)
            .filter_map(|_| delivery(conn, SOON))
            .map(|d| (d.payload, d.retain))
            .collect()
    };
    assert_eq!(
        flags(&mut kept),
        vec![(b"retained".to_vec(), true), (b"plain".to_vec(), false)],
        "Retain As Published 1: RETAIN as the publisher set it"
    );
    assert_eq!(
        flags(&mut cleared),
        vec![(b"retained".to_vec(), false), (b"plain".to_vec(), false)],
        "Retain As Published 0: RETAIN cleared (MQTT-3.3.1-12)"
    );
    hub.terminate()
}

// ---------------------------------------------------------------------------------------------
// Message expiry

#[test]
fn mqtt_3_3_2_5_and_6_expired_messages_are_dropped_and_the_rest_count_down() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // A persistent session, away while messages for it are published.
    let session = Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 300);
    let (mut away, _, _) = open_with(&hub, "away", false, &session)?;
    assert_eq!(
        subscribe(&mut away, 1, &[("exp/queued", 1)], &Props::new())?,
        vec![1]
    );
    away.send(&raw::disconnect(true, 0))?;
    away.read_to_close(SOON)?;

    let mut publisher = open(&hub, "exp-pub")?;
    let expiry = |s| Props::new().u32(prop::MESSAGE_EXPIRY_INTERVAL, s);
    let messages = [
        ("exp/retained", true, 1, &b"short"[..]),
        ("exp/retained-long", true, 30, b"long"),
        ("exp/queued", false, 1, b"short"),
        ("exp/queued", false, 30, b"long"),
    ];
    for (pkid, (topic, retain, seconds, payload)) in (1..).zip(messages) {
        publisher.send(&publish(topic, 1, retain, pkid, &expiry(seconds), payload))?;
        publisher.read_kind(4)?;
    }
    std::thread::sleep(Duration::from_millis(2200));

    let remaining = |d: &raw::Delivery| match find_prop(&d.props, prop::MESSAGE_EXPIRY_INTERVAL) {
        Some(Prop::U32(s)) => *s,
        other => panic!("no Message Expiry Interval: {other:?}"),
    };
    let mut late = open(&hub, "late")?;
    assert_eq!(
        subscribe(&mut late, 1, &[("exp/+", 0)], &Props::new())?,
        vec![0]
    );
    let got = delivery(&mut late, SOON).expect("the retained message still alive");
    assert_eq!(got.topic, "exp/retained-long");
    assert!(remaining(&got) <= 28, "counted down: {:?}", got.props);
    assert!(
        delivery(&mut late, QUIET).is_none(),
        "the expired retained message is gone"
    );

    let (mut back, present, _) = open_with(&hub, "away", false, &session)?;
    assert!(present);
    let got = delivery(&mut back, SOON).expect("the queued message still alive");
    assert_eq!(&got.payload[..], b"long");
    assert!(remaining(&got) <= 28, "counted down: {:?}", got.props);
    back.send(&raw::ack(0x40, got.pkid))?;
    assert!(
        delivery(&mut back, QUIET).is_none(),
        "the expired queued message is gone"
    );
    hub.terminate()
}

// ---------------------------------------------------------------------------------------------
// QoS flows

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_4_1_qos_0_1_and_2_flow_end_to_end() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (subscriber, mut sub_loop) = AsyncClient::new(options(&hub, "flow-sub"), 10);
    subscriber.subscribe("flow/#", QoS::ExactlyOnce).await?;
    until_suback(&mut sub_loop).await?;

    let (publisher, mut pub_loop) = AsyncClient::new(options(&hub, "flow-pub"), 10);
    for (qos, topic) in [
        (QoS::AtMostOnce, "flow/0"),
        (QoS::AtLeastOnce, "flow/1"),
        (QoS::ExactlyOnce, "flow/2"),
    ] {
        publisher.publish(topic, qos, false, topic).await?;
    }
    // PUBACK for QoS 1; PUBREC, then (after rumqttc's PUBREL) PUBCOMP for QoS 2.
    let mut seen = Vec::new();
    while !seen.contains(&"PUBCOMP") {
        match pub_loop.poll().await? {
            Event::Incoming(Packet::PubAck(ack)) => {
                assert_eq!(
                    ack.reason,
                    rumqttc::v5::mqttbytes::v5::PubAckReason::Success
                );
                seen.push("PUBACK");
            }
            Event::Incoming(Packet::PubRec(_)) => seen.push("PUBREC"),
            Event::Incoming(Packet::PubComp(_)) => seen.push("PUBCOMP"),
            _ => {}
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, ["PUBACK", "PUBCOMP", "PUBREC"]);

    let mut got = Vec::new();
    while got.len() < 3 {
        let p = next_publish(&mut sub_loop, SOON).await.expect("delivered");
        got.push(String::from_utf8(p.payload.to_vec())?);
    }
    got.sort();
    assert_eq!(got, ["flow/0", "flow/1", "flow/2"]);
    assert!(
        next_publish(&mut sub_loop, QUIET).await.is_none(),
        "each once"
    );
    hub.terminate()
}

#[test]
fn mqtt_3_3_4_7_more_than_receive_maximum_gets_disconnect_0x93() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = open(&hub, "greedy")?;
    // Receive Maximum 100 (announced in CONNACK): 101 QoS 2 publishes, none released.
    let burst: Vec<u8> = (1..=101u16)
        .flat_map(|pkid| publish("rm5/x", 2, false, pkid, &Props::new(), b"x"))
        .collect();
    conn.send(&burst)?;
    assert_eq!(conn.end_within(SOON), Some(RECEIVE_MAXIMUM_EXCEEDED));
    hub.terminate()
}

#[test]
fn mqtt_3_2_2_15_packet_over_maximum_packet_size_gets_disconnect_0x95() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = open(&hub, "big")?;
    // The CONNACK announced 256 KiB.
    conn.send(&publish(
        "big/x",
        0,
        false,
        0,
        &Props::new(),
        &vec![b'x'; 300 * 1024],
    ))?;
    assert_eq!(conn.end_within(SOON), Some(PACKET_TOO_LARGE));
    hub.terminate()
}

#[test]
fn mqtt_3_8_4_8_delivery_qos_is_the_lower_of_published_and_granted() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut subscriber = open(&hub, "minq-sub")?;
    assert_eq!(
        subscribe(
            &mut subscriber,
            1,
            &[("minq/2", 2), ("minq/1", 1)],
            &Props::new()
        )?,
        vec![2, 1]
    );
    let mut publisher = open(&hub, "minq-pub")?;
    // (topic, published QoS, delivered QoS)
    let cases = [
        ("minq/2", 0, 0),
        ("minq/2", 1, 1),
        ("minq/1", 2, 1),
        ("minq/1", 0, 0),
    ];
    publisher.expect_delivery_qos(&mut subscriber, &cases)?;
    hub.terminate()
}

/// Drains a raw connection of what arrives within [`QUIET`] of each other, acknowledging
/// QoS 1 deliveries; returns the PUBLISHes.
fn drain(conn: &mut Conn) -> anyhow::Result<Vec<raw::Delivery>> {
    let mut got = Vec::new();
    while let Some(d) = delivery(conn, QUIET) {
        if d.qos == 1 {
            conn.send(&raw::ack(0x40, d.pkid))?;
        }
        got.push(d);
    }
    Ok(got)
}

#[test]
fn mqtt_3_8_4_3_and_4_a_repeated_subscribe_replaces_the_subscription() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut publisher = open(&hub, "again-pub")?;
    publisher.send(&publish("again/x", 1, true, 1, &Props::new(), b"state"))?;
    publisher.read_kind(4)?;
    let mut subscriber = open(&hub, "again-sub")?;
    assert_eq!(
        subscribe(&mut subscriber, 1, &[("again/x", 0)], &Props::new())?,
        vec![0]
    );
    let first = drain(&mut subscriber)?;
    assert_eq!(
        first.iter().map(|d| (d.qos, d.retain)).collect::<Vec<_>>(),
        vec![(0, true)],
        "the retained message at the first subscription's QoS 0"
    );

    // The same filter again, QoS 1, Retain As Published, Retain Handling 0: the retained
    // message is sent again (MQTT-3.8.4-4) at the new QoS.
    let rap = 0x08;
    assert_eq!(
        subscribe(&mut subscriber, 2, &[("again/x", 1 | rap)], &Props::new())?,
        vec![1]
    );
    let again = drain(&mut subscriber)?;
    assert_eq!(
        again.iter().map(|d| (d.qos, d.retain)).collect::<Vec<_>>(),
        vec![(1, true)],
        "Retain Handling 0 sends the retained message again"
    );
    // Live messages follow the new options: QoS 1, RETAIN as published, and one copy (the
    // subscription was replaced, not added).
    publisher.send(&publish("again/x", 1, true, 2, &Props::new(), b"new state"))?;
    publisher.read_kind(4)?;
    let live = drain(&mut subscriber)?;
    assert_eq!(
        live.iter()
            .map(|d| (&d.payload[..], d.qos, d.retain))
            .collect::<Vec<_>>(),
        vec![(&b"new state"[..], 1, true)]
    );

    // Retain Handling 1 on the existing subscription: replaced (back to QoS 0), no retained
    // message.
    let rh1 = 0x10;
    assert_eq!(
        subscribe(&mut subscriber, 3, &[("again/x", rh1)], &Props::new())?,
        vec![0]
    );
    assert!(
        drain(&mut subscriber)?.is_empty(),
        "Retain Handling 1: not sent again"
    );
    publisher.send(&publish("again/x", 1, false, 3, &Props::new(), b"later"))?;
    publisher.read_kind(4)?;
    let later = drain(&mut subscriber)?;
    assert_eq!(
        later.iter().map(|d| (d.qos, d.retain)).collect::<Vec<_>>(),
        vec![(0, false)],
        "the third subscription's QoS 0"
    );
    hub.terminate()
}

#[test]
fn mqtt_3_8_3_3_no_local_keeps_a_clients_own_messages_from_it() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let no_local = 0x04;
    let mut talker = open(&hub, "nl-talker")?;
    assert_eq!(
        subscribe(&mut talker, 1, &[("nl/room", no_local)], &Props::new())?,
        vec![0]
    );
    let mut echo = open(&hub, "nl-echo")?;
    assert_eq!(
        subscribe(&mut echo, 1, &[("nl/room", 0)], &Props::new())?,
        vec![0]
    );
    echo.send(&publish("nl/room", 0, false, 0, &Props::new(), b"echo's"))?;
    talker.send(&publish("nl/room", 0, false, 0, &Props::new(), b"talker's"))?;
    // The echo (no-local 0) gets its own message and the talker's; the talker only the echo's.
    let heard = |conn: &mut Conn| -> Vec<Vec<u8>> {
        std::iter::from_fn(|| delivery(conn, QUIET))
            .map(|d| d.payload)
            .collect()
    };
    assert_eq!(heard(&mut talker), vec![b"echo's".to_vec()]);
    let mut echo_heard = heard(&mut echo);
    echo_heard.sort();
    assert_eq!(echo_heard, vec![b"echo's".to_vec(), b"talker's".to_vec()]);
    hub.terminate()
}

#[test]
fn mqtt_4_4_0_1_a_resumed_session_gets_unacknowledged_publishes_and_pubrels_again(
) -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut first, _, _) = session(&hub, "resumer", false, Some(300))?;
    assert_eq!(
        subscribe(&mut first, 1, &[("resume/#", 2)], &Props::new())?,
        vec![2]
    );
    let mut publisher = open(&hub, "resume-pub")?;
    publisher.send(&publish("resume/1", 1, false, 1, &Props::new(), b"one"))?;
    publisher.read_kind(4)?;
    for pkid in [2, 3] {
        let topic = format!("resume/{pkid}");
        publisher.send(&publish(&topic, 2, false, pkid, &Props::new(), b"two"))?;
        publisher.finish_publish(2, pkid)?;
    }
    let unfinished = first.leave_unfinished()?;
    drop(first); // gone without acknowledging the rest, nor PUBCOMP

    let (mut back, present, _) = session(&hub, "resumer", false, Some(300))?;
    assert!(present);
    // The exchanges complete on the new connection, and nothing else is sent again.
    back.complete_resent(&unfinished)?;
    back.send(&raw::disconnect(true, 0))?;
    back.read_to_close(SOON)?;
    let (mut last, present, _) = session(&hub, "resumer", false, Some(300))?;
    assert!(present);
    assert!(last.read_within(QUIET).is_none(), "all acknowledged");
    hub.terminate()
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE and UNSUBSCRIBE

#[test]
fn mqtt_3_9_3_1_denied_filter_gets_0x87_in_its_place() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = open(&hub, "denied")?;
    let ack = conn.subscribe_with(
        7,
        &[("ok5/one", 1), ("test/nosubscribe", 0), ("ok5/two", 2)],
        &Props::new(),
    )?;
    assert_eq!(ack.pkid(), 7);
    assert_eq!(
        ack.codes(true),
        vec![1, 0x87, 2],
        "Not authorized in its place"
    );
    let ack = conn.subscribe_with(8, &[("test/nosubscribe", 1)], &Props::new())?;
    assert_eq!(ack.codes(true), vec![0x87]);
    hub.terminate()
}

#[test]
fn mqtt_4_8_2_shared_subscription_messages_go_to_one_member_in_turn() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut members = Vec::new();
    for name in ["sharer-a", "sharer-b"] {
        let mut member = open(&hub, name)?;
        assert_eq!(
            subscribe(&mut member, 1, &[("$share/g/sh/x", 1)], &Props::new())?,
            vec![1]
        );
        members.push(member);
    }
    // Another group on the same filter gets every message too; a group of the same name on
    // another filter is another group.
    let mut other = open(&hub, "sharer-other")?;
    assert_eq!(
        subscribe(
            &mut other,
            1,
            &[("$share/h/sh/x", 1), ("$share/g/sh/y", 1)],
            &Props::new()
        )?,
        vec![1, 1]
    );
    let mut publisher = open(&hub, "sharer-pub")?;
    for i in 0..4u16 {
        publisher.send(&publish(
            "sh/x",
            1,
            false,
            i + 1,
            &Props::new(),
            &[b'0' + i as u8],
        ))?;
        publisher.read_kind(4)?;
    }
    let mut each = Vec::new();
    let mut payloads = Vec::new();
    for member in &mut members {
        let mut got = 0;
        while let Some(d) = delivery(member, QUIET) {
            member.send(&raw::ack(0x40, d.pkid))?;
            payloads.push(d.payload);
            got += 1;
        }
        each.push(got);
    }
    payloads.sort();
    assert_eq!(
        payloads,
        [b"0", b"1", b"2", b"3"],
        "each message to one member only"
    );
    assert_eq!(each, [2, 2], "in turn");
    let mut others = 0;
    while let Some(d) = delivery(&mut other, QUIET) {
        other.send(&raw::ack(0x40, d.pkid))?;
        others += 1;
    }
    assert_eq!(
        others, 4,
        "group h has its own turn; g on sh/y gets nothing of sh/x"
    );
    hub.terminate()
}

#[test]
fn mqtt_4_8_2_unacknowledged_shared_delivery_goes_to_another_member() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut first = open(&hub, "taker-a")?;
    assert_eq!(
        subscribe(&mut first, 1, &[("$share/w/jobs/x", 1)], &Props::new())?,
        vec![1]
    );
    let mut publisher = open(&hub, "taker-pub")?;
    publisher.send(&publish("jobs/x", 1, false, 1, &Props::new(), b"job"))?;
    publisher.read_kind(4)?;
    let got = delivery(&mut first, SOON).expect("the only member gets it");
    assert_eq!(got.payload, b"job");
    let mut second = open(&hub, "taker-b")?;
    assert_eq!(
        subscribe(&mut second, 1, &[("$share/w/jobs/x", 1)], &Props::new())?,
        vec![1]
    );
    // The first member goes without acknowledging it.
    drop(first);
    let again = delivery(&mut second, SOON).expect("handed to the other member");
    assert_eq!(again.payload, b"job");
    hub.terminate()
}

#[test]
fn mqtt_3_3_4_3_subscription_identifiers_come_with_each_delivery() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut publisher = open(&hub, "sid-pub")?;
    publisher.send(&publish("sid/a", 1, true, 1, &Props::new(), b"retained"))?;
    publisher.read_kind(4)?;

    let mut subscriber = open(&hub, "sid-sub")?;
    let id = |n| Props::new().varint(prop::SUBSCRIPTION_IDENTIFIER, n);
    assert_eq!(
        subscribe(&mut subscriber, 1, &[("sid/#", 1)], &id(7))?,
        vec![1]
    );
    let ids = |d: &raw::Delivery| -> Vec<Prop> {
        d.props
            .iter()
            .filter(|(i, _)| *i == prop::SUBSCRIPTION_IDENTIFIER)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let got = delivery(&mut subscriber, SOON).expect("retained message");
    assert_eq!(ids(&got), [Prop::VarInt(7)], "on the retained message too");
    subscriber.send(&raw::ack(0x40, got.pkid))?;

    // Overlapping subscriptions: one copy, at the highest QoS granted, with the identifiers
    // of both (MQTT-3.3.4-2, MQTT-3.3.4-4).
    assert_eq!(
        subscribe(&mut subscriber, 2, &[("sid/b", 1)], &id(9))?,
        vec![1]
    );
    publisher.send(&publish("sid/b", 1, false, 2, &Props::new(), b"live"))?;
    let got = delivery(&mut subscriber, SOON).expect("one copy");
    subscriber.send(&raw::ack(0x40, got.pkid))?;
    let mut seen = ids(&got);
    seen.sort_by_key(|p| format!("{p:?}"));
    assert_eq!(seen, [Prop::VarInt(7), Prop::VarInt(9)]);
    assert!(
        delivery(&mut subscriber, QUIET).is_none(),
        "one copy, no more"
    );
    hub.terminate()
}

#[test]
fn mqtt_3_8_2_1_2_subscription_identifier_0_is_a_protocol_error() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = open(&hub, "sid0")?;
    let zero = Props::new().varint(prop::SUBSCRIPTION_IDENTIFIER, 0);
    conn.send(&raw::subscribe_with(true, 1, &[("sid0/x", 0)], &zero))?;
    assert_eq!(conn.end_within(SOON), Some(PROTOCOL_ERROR));
    hub.terminate()
}

#[test]
fn mqtt_3_8_3_2_subscribe_without_filters_ends_the_connection() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = open(&hub, "nofilter")?;
    // Packet id, no properties, no filters: a Protocol Error (3.8.3).
    conn.send(&raw::packet(0x82, &[0, 1, 0]))?;
    let reason = conn.end_within(SOON);
    assert_eq!(reason, Some(PROTOCOL_ERROR));
    hub.terminate()
}

#[test]
fn mqtt_3_10_3_2_unsubscribe_without_filters_ends_the_connection() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = open(&hub, "nounfilter")?;
    // Packet id, no properties, no filters: a Protocol Error (3.10.3).
    conn.send(&raw::packet(0xa2, &[0, 1, 0]))?;
    assert_eq!(conn.end_within(SOON), Some(PROTOCOL_ERROR));
    // The next client's UNSUBACK is its own.
    let mut conn = open(&hub, "nounfilter")?;
    conn.send(&raw::unsubscribe(true, 7, &["x/y"]))?;
    let ack = conn.read_kind(11)?;
    assert_eq!((ack.pkid(), ack.codes(true)), (7, vec![0x11]));
    hub.terminate()
}

#[test]
fn mqtt_4_7_1_2_and_3_malformed_topic_filters_end_the_connection() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // '#' not last, '+' sharing a level, '#' sharing a level, and an empty filter (4.7.3-1).
    for filter in ["a/#/b", "a+/b", "a/b#", ""] {
        let mut conn = open(&hub, "badfilter")?;
        conn.send(&raw::subscribe_with(true, 1, &[(filter, 0)], &Props::new()))?;
        assert_eq!(
            conn.end_within(SOON),
            Some(MALFORMED_PACKET),
            "{filter:?}: no SUBACK, DISCONNECT Malformed Packet"
        );
    }
    hub.terminate()
}

#[test]
fn mqtt_3_3_4_6_publish_with_a_subscription_identifier_ends_the_connection() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = open(&hub, "sid-pub")?;
    let props = Props::new().varint(prop::SUBSCRIPTION_IDENTIFIER, 3);
    conn.send(&publish("sid/x", 1, false, 1, &props, b"x"))?;
    // A Protocol Error (MQTT-3.3.4-6).
    let reason = conn.end_within(SOON);
    assert_eq!(reason, Some(PROTOCOL_ERROR));
    hub.terminate()
}

#[test]
fn mqtt_3_10_4_4_unsuback_with_reason_code_and_delivery_stops() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = open(&hub, "unsub")?;
    assert_eq!(
        subscribe(&mut conn, 1, &[("un5/x", 0)], &Props::new())?,
        vec![0]
    );
    conn.send(&raw::unsubscribe(true, 0x0a0b, &["un5/x"]))?;
    let ack = conn.read_kind(11)?;
    assert_eq!(ack.pkid(), 0x0a0b);
    assert_eq!(ack.codes(true), vec![0x00], "Success");
    let mut publisher = open(&hub, "unsub-pub")?;
    publisher.send(&publish("un5/x", 0, false, 0, &Props::new(), b"after"))?;
    assert!(delivery(&mut conn, QUIET).is_none(), "MQTT-3.10.4-2");
    hub.terminate()
}

#[test]
fn mqtt_3_3_4_9_no_more_unacknowledged_deliveries_than_the_clients_receive_maximum(
) -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let two = Props::new().u16(prop::RECEIVE_MAXIMUM, 2);
    let (mut slow, _, _) = open_with(&hub, "rm-slow", true, &two)?;
    assert_eq!(
        subscribe(
            &mut slow,
            1,
            &[("rm/q1", 1), ("rm/q2", 2), ("rm/q0", 0)],
            &Props::new()
        )?,
        vec![1, 2, 0]
    );
    let mut publisher = open(&hub, "rm-pub")?;
    for i in 0..6u16 {
        let topic = if i % 2 == 0 { "rm/q1" } else { "rm/q2" };
        let qos = if i % 2 == 0 { 1 } else { 2 };
        let pkid = i + 1;
        publisher.send(&publish(
            topic,
            qos,
            false,
            pkid,
            &Props::new(),
            &[b'0' + i as u8],
        ))?;
        if qos == 1 {
            publisher.read_kind(4)?;
        } else {
            publisher.read_kind(5)?;
            publisher.send(&raw::packet(0x62, &pkid.to_be_bytes()))?;
            publisher.read_kind(7)?;
        }
    }
    let mut got = Vec::new();
    while let Some(d) = delivery(&mut slow, QUIET) {
        got.push(d);
    }
    assert_eq!(got.len(), 2, "two unacknowledged at most: {got:?}");
    // QoS 0 is not held back (MQTT-3.3.4-10).
    publisher.send(&publish("rm/q0", 0, false, 0, &Props::new(), b"zero"))?;
    let zero = delivery(&mut slow, SOON).expect("QoS 0 delivered at the limit");
    assert_eq!(zero.payload, b"zero");
    // Each finished delivery makes room for one more, in order.
    let mut open_ids: Vec<(u8, u16)> = got.iter().map(|d| (d.qos, d.pkid)).collect();
    while got.len() < 6 {
        let (qos, pkid) = open_ids.remove(0);
        if qos == 1 {
            slow.send(&raw::packet(0x40, &pkid.to_be_bytes()))?;
        } else {
            slow.send(&raw::packet(0x50, &pkid.to_be_bytes()))?;
            let rel = slow.read_kind(6)?;
            assert_eq!(rel.pkid(), pkid);
            slow.send(&raw::packet(0x70, &pkid.to_be_bytes()))?;
        }
        let next = delivery(&mut slow, SOON).expect("room for one more");
        open_ids.push((next.qos, next.pkid));
        got.push(next);
        assert!(delivery(&mut slow, QUIET / 5).is_none(), "only one more");
    }
    let on = |topic: &str| -> Vec<u8> {
        got.iter()
            .filter(|d| d.topic == topic)
            .map(|d| d.payload[0])
            .collect()
    };
    assert_eq!(on("rm/q1"), b"024", "each topic in the order published");
    assert_eq!(on("rm/q2"), b"135");
    hub.terminate()
}

#[test]
fn mqtt_3_1_2_11_3_receive_maximum_0_is_a_protocol_error() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let zero = Props::new().u16(prop::RECEIVE_MAXIMUM, 0);
    let (mut conn, ack) = Conn::handshake(hub.addr, true, &connect("rm-zero", true, 30, &zero))?;
    assert_eq!(ack.connack(true).1, PROTOCOL_ERROR);
    assert!(conn.read_to_close(SOON)?.is_empty(), "then closed");
    hub.terminate()
}

#[test]
fn mqtt_3_10_4_5_and_6_one_unsuback_with_a_reason_code_per_filter() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = open(&hub, "unsub5-many")?;
    assert_eq!(
        subscribe(&mut conn, 1, &[("m5/a", 0), ("m5/b", 1)], &Props::new())?,
        vec![0, 1]
    );
    // A filter never subscribed, one twice (the second time there is none left), and one
    // UNSUBSCRIBE with nothing to remove at all.
    conn.send(&raw::unsubscribe(
        true,
        0x0304,
        &["m5/a", "m5/none", "m5/b", "m5/a"],
    ))?;
    let ack = conn.read_kind(11)?;
    assert_eq!(ack.pkid(), 0x0304);
    assert_eq!(
        ack.codes(true),
        vec![0x00, 0x11, 0x00, 0x11],
        "Success or No subscription existed, per filter, in order"
    );
    conn.send(&raw::unsubscribe(true, 0x0305, &["m5/none"]))?;
    let ack = conn.read_kind(11)?;
    assert_eq!((ack.pkid(), ack.codes(true)), (0x0305, vec![0x11]));
    assert!(
        conn.read_kind_within(11, QUIET).is_none(),
        "one UNSUBACK per UNSUBSCRIBE"
    );
    let mut publisher = open(&hub, "unsub5-pub")?;
    publisher.send(&publish("m5/a", 0, false, 0, &Props::new(), b"a"))?;
    publisher.send(&publish("m5/b", 0, false, 0, &Props::new(), b"b"))?;
    assert!(
        delivery(&mut conn, QUIET).is_none(),
        "both subscriptions gone"
    );
    hub.terminate()
}

/// 4.7 (MQTT-4.7.3-2 aside, which forbids only U+0000): topics and filters are UTF-8 strings,
/// whatever their first character.
#[test]
fn mqtt_4_7_3_topics_and_filters_may_start_with_any_utf8_character() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut subscriber = open(&hub, "utf8-sub")?;
    assert_eq!(
        subscribe(
            &mut subscriber,
            1,
            &[("健康/+", 0), ("é/#", 0), ("+/心拍", 0)],
            &Props::new()
        )?,
        vec![0, 0, 0]
    );
    let mut publisher = open(&hub, "utf8-pub")?;
    let got =
        publisher.topics_delivered(&mut subscriber, &["健康/x", "é/a/b", "x/心拍", "健康x/y"])?;
    assert_eq!(
        got,
        vec!["健康/x", "é/a/b", "x/心拍"],
        "健康x/y matches none"
    );
    hub.terminate()
}

// ---------------------------------------------------------------------------------------------
// Application message properties

/// Publishes `properties` with a rumqttc MQTT 5 client and returns what a subscriber gets.
async fn round_trip(
    hub: &Hub,
    topic: &str,
    properties: PublishProperties,
) -> anyhow::Result<PublishProperties> {
    let (subscriber, mut sub_loop) = AsyncClient::new(options(hub, "props-sub"), 10);
    subscriber.subscribe(topic, QoS::AtLeastOnce).await?;
    until_suback(&mut sub_loop).await?;
    let publisher = background(hub, "props-pub");
    publisher
        .publish_with_properties(topic, QoS::AtLeastOnce, false, "payload", properties)
        .await?;
    let got = next_publish(&mut sub_loop, SOON)
        .await
        .ok_or_else(|| anyhow::anyhow!("not delivered"))?;
    Ok(got.properties.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_2_4_and_20_payload_format_indicator_and_content_type_unaltered(
) -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json; charset=utf-8".into()),
        ..Default::default()
    };
    let got = round_trip(&hub, "pfi/x", sent).await?;
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(
        got.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_2_17_and_18_user_properties_unaltered_and_in_order() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let pairs: Vec<(String, String)> = [("z", "1"), ("a", "2"), ("z", "3"), ("unit", "mmHg")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sent = PublishProperties {
        user_properties: pairs.clone(),
        ..Default::default()
    };
    let got = round_trip(&hub, "up/x", sent).await?;
    assert_eq!(got.user_properties, pairs);
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_2_15_and_16_request_response_through_the_hub() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // The responder serves requests on rr/requests.
    let (responder, mut responder_loop) = AsyncClient::new(options(&hub, "responder"), 10);
    responder.subscribe("rr/requests", QoS::AtLeastOnce).await?;
    until_suback(&mut responder_loop).await?;
    let (requester, mut requester_loop) = AsyncClient::new(options(&hub, "requester"), 10);
    requester
        .subscribe("rr/replies/requester", QoS::AtLeastOnce)
        .await?;
    until_suback(&mut requester_loop).await?;

    let request = PublishProperties {
        response_topic: Some("rr/replies/requester".into()),
        correlation_data: Some(b"\x00req-42\xff".to_vec().into()),
        ..Default::default()
    };
    requester
        .publish_with_properties("rr/requests", QoS::AtLeastOnce, false, "ping?", request)
        .await?;
    while !matches!(
        requester_loop.poll().await?,
        Event::Incoming(Packet::PubAck(_))
    ) {}
    let got = next_publish(&mut responder_loop, SOON)
        .await
        .expect("request delivered");
    let props = got.properties.expect("request properties");
    // MQTT-3.3.2-15, -16: both unaltered.
    assert_eq!(
        props.response_topic.as_deref(),
        Some("rr/replies/requester")
    );
    assert_eq!(
        props.correlation_data.as_deref(),
        Some(&b"\x00req-42\xff"[..])
    );

    let reply = PublishProperties {
        correlation_data: props.correlation_data.clone(),
        ..Default::default()
    };
    let topic = props.response_topic.clone().unwrap_or_default();
    responder
        .publish_with_properties(topic, QoS::AtLeastOnce, false, "pong", reply)
        .await?;
    tokio::spawn(async move { while responder_loop.poll().await.is_ok() {} });
    let answer = next_publish(&mut requester_loop, SOON)
        .await
        .expect("response delivered");
    assert_eq!(&answer.payload[..], b"pong");
    assert_eq!(
        answer
            .properties
            .and_then(|p| p.correlation_data)
            .as_deref(),
        Some(&b"\x00req-42\xff"[..])
    );
    hub.terminate()
}

#[test]
fn mqtt_5_properties_do_not_reach_a_3_1_1_subscriber() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // A 3.1.1 subscriber gets the message of an MQTT 5 publisher, without the properties 3.1.1
    // cannot carry (3.3.4, non-normative comment).
    let (mut old, code) = Conn::connect(hub.addr, false, "old-app", None, None)?;
    assert_eq!(code, 0);
    assert_eq!(old.subscribe(1, &["mixed/x"])?, vec![0]);
    let mut publisher = open(&hub, "new-pub")?;
    let props = Props::new()
        .pair("k", "v")
        .str(prop::CONTENT_TYPE, "text/plain")
        .u32(prop::MESSAGE_EXPIRY_INTERVAL, 60);
    publisher.send(&publish("mixed/x", 1, false, 1, &props, b"across versions"))?;
    let got = old
        .read_kind_within(3, SOON)
        .expect("delivered")
        .publish(false);
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("mixed/x", &b"across versions"[..])
    );
    hub.terminate()
}

// ---------------------------------------------------------------------------------------------
// Topic aliases

#[test]
fn mqtt_3_3_2_7_topic_aliases_end_with_the_network_connection() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut watcher = open(&hub, "alias-watch")?;
    assert_eq!(
        subscribe(&mut watcher, 1, &[("alias5/#", 0)], &Props::new())?,
        vec![0]
    );
    let alias = Props::new().u16(prop::TOPIC_ALIAS, 5);
    let mut first = open(&hub, "aliaser")?;
    first.send(&publish(
        "alias5/long/topic",
        0,
        false,
        0,
        &alias,
        b"define",
    ))?;
    first.send(&publish("", 0, false, 0, &alias, b"use"))?;
    for want in [&b"define"[..], b"use"] {
        let got = delivery(&mut watcher, SOON).expect("delivered under its topic");
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            ("alias5/long/topic", want)
        );
    }
    first.send(&raw::disconnect(true, 0))?;
    first.read_to_close(SOON)?;
    // The same client, a new connection: alias 5 means nothing here.
    let mut again = open(&hub, "aliaser")?;
    again.send(&publish("", 0, false, 0, &alias, b"stale"))?;
    assert_eq!(again.end_within(SOON), Some(PROTOCOL_ERROR));
    assert!(delivery(&mut watcher, QUIET).is_none());
    hub.terminate()
}

#[test]
fn mqtt_3_3_2_8_topic_alias_0_gets_disconnect_0x94() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = open(&hub, "alias0")?;
    let zero = Props::new().u16(prop::TOPIC_ALIAS, 0);
    conn.send(&publish("alias0/x", 0, false, 0, &zero, b"x"))?;
    assert_eq!(conn.end_within(SOON), Some(TOPIC_ALIAS_INVALID));
    hub.terminate()
}

#[test]
fn mqtt_3_3_2_11_hub_sends_no_topic_aliases() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // The client accepts up to 10 aliases; the hub sends none (its choice), so no PUBLISH to
    // it can exceed the maximum, and a client that accepts none (MQTT-3.1.2-27) is safe too.
    let (mut subscriber, _, _) = open_with(
        &hub,
        "alias-ok",
        true,
        &Props::new().u16(prop::TOPIC_ALIAS_MAXIMUM, 10),
    )?;
    assert_eq!(
        subscribe(&mut subscriber, 1, &[("out/alias", 0)], &Props::new())?,
        vec![0]
    );
    let mut publisher = open(&hub, "out-pub")?;
    for _ in 0..3 {
        publisher.send(&publish("out/alias", 0, false, 0, &Props::new(), b"x"))?;
    }
    for _ in 0..3 {
        let got = delivery(&mut subscriber, SOON).expect("delivered");
        assert_eq!(got.topic, "out/alias", "the full topic every time");
        assert_eq!(find_prop(&got.props, prop::TOPIC_ALIAS), None);
    }
    hub.terminate()
}

// ---------------------------------------------------------------------------------------------
// $SYS topics

/// The `$SYS/broker/…` topics kenko publishes (as Mosquitto does).
const SYS_TOPICS: [&str; 7] = [
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
    "$SYS/broker/uptime",
    "$SYS/broker/load/messages/received/1min",
];

/// MQTT-4.7.2-1: `#` does not match topics starting with `$`. kenko publishes its statistics
/// on `$SYS/broker/…` every `mqtt.sys_interval_s`; a principal the ACL allows `$SYS/#` sees
/// them, a `#` subscriber never does, and one not allowed is refused.
#[test]
fn mqtt_4_7_2_1_sys_topics_reach_only_principals_allowed_them() -> anyhow::Result<()> {
    let rules = "[[rule]]\neffect = \"allow\"\nprincipal = \"sysop\"\naction = \"subscribe\"\ntopic = \"$SYS/#\"\n";
    let extra = format!(
        "{}[mqtt]\nsys_interval_s = 1\n",
        common::principal("sysop", &["sysop"])
    );
    let (_dir, hub) = interop_hub_with(&extra, rules)?;
    let mut everything = open(&hub, "sys-hash")?;
    assert_eq!(
        subscribe(&mut everything, 1, &[("#", 0)], &Props::new())?,
        vec![0]
    );
    let mut nosy = open(&hub, "sys-nosy")?;
    assert_eq!(
        subscribe(&mut nosy, 1, &[("$SYS/#", 0)], &Props::new())?,
        vec![0x87],
        "anonymous is not allowed $SYS/#"
    );

    let password = common::password("sysop");
    let connect = raw::connect(true, "sysop", Some(("sysop", &password)), None);
    let (mut sysop, ack) = Conn::handshake(hub.addr, true, &connect)?;
    assert_eq!(ack.connack(true).1, 0);
    assert_eq!(
        subscribe(&mut sysop, 1, &[("$SYS/#", 0)], &Props::new())?,
        vec![0]
    );
    let mut seen = std::collections::BTreeMap::<String, Vec<String>>::new();
    let until = Instant::now() + Duration::from_millis(3500);
    while let Some(d) = delivery(&mut sysop, until.saturating_duration_since(Instant::now())) {
        let value = String::from_utf8_lossy(&d.payload).into_owned();
        seen.entry(d.topic).or_default().push(value);
    }
    for topic in SYS_TOPICS {
        assert!(seen.contains_key(topic), "{topic} not published: {seen:?}");
    }
    let uptimes = &seen["$SYS/broker/uptime"];
    assert!(
        uptimes.len() >= 2 && uptimes.first() != uptimes.last(),
        "published again every second: {uptimes:?}"
    );
    assert_eq!(
        seen["$SYS/broker/clients/connected"]
            .last()
            .map(String::as_str),
        Some("3")
    );
    let sys: Vec<_> = std::iter::from_fn(|| delivery(&mut everything, QUIET))
        .filter(|d| d.topic.starts_with('$'))
        .collect();
    assert!(sys.is_empty(), "# matched $SYS: {sys:?}");
    assert!(delivery(&mut nosy, QUIET).is_none());
    hub.terminate()
}
