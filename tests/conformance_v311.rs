//! MQTT 3.1.1 conformance of kenko's listener: one test per normative statement (named after
//! it), against `kenko serve --config config/interop.toml`, with rumqttc's 3.1.1 client and,
//! where a client library would not send what the statement is about, raw packets.
//!
//! Each test checks what kenko does today. Known gaps are listed, with their clauses, in
//! docs/conformance.md rather than tested here.

mod common;

use std::time::{Duration, Instant};

use common::mqtt311::{
    connected_with_will, next_publish, until_connack, until_pubacks, until_suback,
};
use common::raw::{self, Conn, Props, Will};
use common::{interop_hub, Hub, QUIET, SOON};
use rumqttc::{AsyncClient, Event, Incoming, LastWill, QoS};

/// A raw 3.1.1 CONNECT: `client_id`, clean session or not, keep-alive, optional will.
fn connect(client_id: &str, clean: bool, keep_alive: u16, will: Option<&Will>) -> Vec<u8> {
    raw::connect_with(false, client_id, clean, keep_alive, &Props::new(), will, 0)
}

/// A raw 3.1.1 connection that was accepted; returns it and its session-present flag.
fn open(hub: &Hub, client_id: &str, clean: bool) -> anyhow::Result<(Conn, bool)> {
    let (conn, ack) = Conn::handshake(hub.addr, false, &connect(client_id, clean, 30, None))?;
    let (present, code, _) = ack.connack(false);
    anyhow::ensure!(code == 0, "CONNACK refused {client_id} with {code:#04x}");
    Ok((conn, present))
}

/// A raw PUBLISH from a 3.1.1 client.
fn publish(topic: &str, qos: u8, retain: bool, pkid: u16, payload: &[u8]) -> Vec<u8> {
    raw::publish_with(
        false,
        topic,
        qos,
        retain,
        false,
        pkid,
        &Props::new(),
        payload,
    )
}

/// The next PUBLISH on a raw connection within `limit`.
fn delivery(conn: &mut Conn, limit: Duration) -> Option<raw::Delivery> {
    conn.read_kind_within(3, limit).map(|p| p.publish(false))
}

/// A rumqttc client whose event loop runs in the background (for publishers).
fn background(hub: &Hub, client_id: &str) -> AsyncClient {
    let (client, mut eventloop) = hub.client(client_id);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

// ---------------------------------------------------------------------------------------------
// CONNECT and CONNACK

#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = Conn::open(hub.addr, false)?;
    conn.send(&raw::packet(0xc0, &[]))?; // PINGREQ before CONNECT
    let answer = conn.read_to_close(SOON)?;
    assert!(answer.is_empty(), "closed without a reply: {answer:?}");
    hub.terminate()
}

#[test]
fn mqtt_3_1_0_2_second_connect_is_a_protocol_violation() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, _) = open(&hub, "twice", true)?;
    conn.send(&connect("twice", true, 30, None))?;
    let answer = conn.read_to_close(SOON)?;
    assert!(answer.is_empty(), "no second CONNACK: {answer:?}");
    hub.terminate()
}

#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level_gets_0x01() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // MQTT 3.1 ("MQIsdp", level 3), then a level kenko does not know yet ("MQTT", 6).
    let mut mqtt31 = vec![0, 6];
    mqtt31.extend_from_slice(b"MQIsdp");
    mqtt31.extend_from_slice(&[3, 0x02, 0, 30, 0, 2, b'o', b'1']);
    let mut mqtt6 = vec![0, 4];
    mqtt6.extend_from_slice(b"MQTT");
    mqtt6.extend_from_slice(&[6, 0x02, 0, 30, 0, 2, b'o', b'2']);
    for body in [mqtt31, mqtt6] {
        let mut conn = Conn::open(hub.addr, false)?;
        conn.send(&raw::packet(0x10, &body))?;
        let answer = conn.read_to_close(SOON)?;
        assert_eq!(answer, [0x20, 2, 0, 0x01], "CONNACK 0x01, then closed");
    }
    hub.terminate()
}

#[test]
fn mqtt_3_1_4_1_malformed_connect_is_closed_without_connack() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // Will QoS 1 without the will flag (MQTT-3.1.2-13).
    let mut conn = Conn::open(hub.addr, false)?;
    conn.send(&raw::connect_with(
        false,
        "no-will",
        true,
        30,
        &Props::new(),
        None,
        0x08,
    ))?;
    let answer = conn.read_to_close(SOON)?;
    assert!(answer.is_empty(), "no CONNACK: {answer:?}");
    hub.terminate()
}

#[test]
fn mqtt_3_1_2_3_reserved_connect_flag_set_is_closed_without_connack() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = Conn::open(hub.addr, false)?;
    let connect = raw::connect_with(false, "reserved", true, 30, &Props::new(), None, 0x01);
    conn.send(&connect)?;
    let answer = conn.read_to_close(SOON)?;
    assert!(answer.is_empty(), "no CONNACK: {answer:?}");
    hub.terminate()
}

#[test]
fn mqtt_2_2_2_2_invalid_fixed_header_flags_close_the_connection() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // SUBSCRIBE, PUBREL and UNSUBSCRIBE must have flags 0010; PINGREQ 0000.
    let mut subscribe = raw::subscribe_with(false, 1, &[("flags/a", 0)], &Props::new());
    subscribe[0] = 0x80;
    let pubrel = raw::packet(0x60, &[0, 1]);
    let pingreq = raw::packet(0xc4, &[]);
    for (what, bytes) in [
        ("SUBSCRIBE 0x80", subscribe),
        ("PUBREL 0x60", pubrel),
        ("PINGREQ 0xC4", pingreq),
    ] {
        let (mut conn, _) = open(&hub, "flags", true)?;
        conn.send(&bytes)?;
        let answer = conn.read_to_close(SOON)?;
        assert!(
            answer.is_empty(),
            "{what}: closed unanswered, got {answer:?}"
        );
    }
    // The same client with the right flags is served.
    let (mut conn, _) = open(&hub, "flags", true)?;
    let ack = conn.subscribe_with(1, &[("flags/a", 0)], &Props::new())?;
    assert_eq!(ack.codes(false), vec![0]);
    conn.ping()?;
    hub.terminate()
}

#[test]
fn mqtt_3_1_2_24_keep_alive_enforced_at_one_and_a_half() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, ack) = Conn::handshake(hub.addr, false, &connect("ka-1", true, 1, None))?;
    assert_eq!(ack.connack(false).1, 0);
    // A client that keeps talking inside 1.5 × 1 s stays connected well past 1.5 s.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        conn.ping()?;
    }
    // Silent: closed as if the network had failed, no earlier than 1.5 s after the last packet.
    let silent = Instant::now();
    let answer = conn.read_to_close(SOON)?;
    let waited = silent.elapsed();
    assert!(answer.is_empty(), "3.1.1 has no DISCONNECT from the server");
    assert!(
        waited >= Duration::from_millis(1400),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(4),
        "closed too late: {waited:?}"
    );
    hub.terminate()
}

#[test]
fn mqtt_3_1_2_10_keep_alive_zero_turns_the_mechanism_off() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, ack) = Conn::handshake(hub.addr, false, &connect("ka-0", true, 0, None))?;
    assert_eq!(ack.connack(false).1, 0, "keep-alive 0 is accepted");
    // Silent for longer than any keep-alive of 1 s would allow, and still served.
    std::thread::sleep(Duration::from_millis(2000));
    conn.ping()?;
    hub.terminate()
}

#[test]
fn mqtt_3_12_4_1_pingreq_gets_pingresp() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, _) = open(&hub, "pinger", true)?;
    conn.send(&raw::packet(0xc0, &[]))?;
    let answer = conn.read()?;
    assert_eq!((answer.header, answer.body.len()), (0xd0, 0), "PINGRESP");
    hub.terminate()
}

#[test]
fn mqtt_3_1_3_6_empty_client_id_gets_a_unique_one() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut first, _) = open(&hub, "", true)?;
    let (mut second, _) = open(&hub, "", true)?;
    // Two ids, not one: the second connection did not take the first one over.
    first.ping()?;
    second.ping()?;
    hub.terminate()
}

#[test]
fn mqtt_3_1_3_8_empty_client_id_with_persistent_session_gets_0x02() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut conn = Conn::open(hub.addr, false)?;
    conn.send(&connect("", false, 30, None))?;
    let answer = conn.read_to_close(SOON)?;
    assert_eq!(
        answer,
        [0x20, 2, 0, 0x02],
        "identifier rejected, then closed"
    );
    hub.terminate()
}

#[test]
fn mqtt_3_1_3_9_rejected_client_id_gets_0x02() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // A wildcard in the id, and the prefix of the hub's own link.
    for id in ["bad+id", "kenko-hub-2"] {
        let mut conn = Conn::open(hub.addr, false)?;
        conn.send(&connect(id, true, 30, None))?;
        let answer = conn.read_to_close(SOON)?;
        assert_eq!(answer, [0x20, 2, 0, 0x02], "{id}: identifier rejected");
    }
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_4_2_session_takeover() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (watcher, mut watch_loop) = hub.client("watcher");
    watcher.subscribe("takeover/will", QoS::AtLeastOnce).await?;
    until_suback(&mut watch_loop).await?;

    let mut options = hub.options("app-7");
    options.set_clean_session(false);
    options.set_last_will(LastWill::new(
        "takeover/will",
        "first gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (first, mut first_loop) = AsyncClient::new(options.clone(), 10);
    first.subscribe("takeover/data", QoS::AtLeastOnce).await?;
    until_suback(&mut first_loop).await?;

    let (_second, mut second_loop) = AsyncClient::new(options, 10);
    assert!(
        until_connack(&mut second_loop).await?.session_present,
        "the session moved to the new connection"
    );
    let first_closed =
        tokio::time::timeout(SOON, async { while first_loop.poll().await.is_ok() {} }).await;
    assert!(first_closed.is_ok(), "the existing client was disconnected");
    // Its connection ended without DISCONNECT, so its will is published (MQTT-3.1.2-8).
    let will = next_publish(&mut watch_loop, SOON)
        .await
        .expect("will of the connection taken over");
    assert_eq!(&will.payload[..], b"first gone");

    let publisher = background(&hub, "pub-7");
    publisher
        .publish("takeover/data", QoS::AtLeastOnce, false, "to the new one")
        .await?;
    let got = next_publish(&mut second_loop, SOON)
        .await
        .expect("the subscription delivers on the new connection");
    assert_eq!(&got.payload[..], b"to the new one");
    hub.terminate()
}

#[test]
fn mqtt_3_2_2_1_to_3_session_present_reflects_stored_session() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (_clean, present) = open(&hub, "sp-clean", true)?;
    assert!(!present, "MQTT-3.2.2-1: clean session, session present 0");
    let (mut first, present) = open(&hub, "sp-kept", false)?;
    assert!(
        !present,
        "MQTT-3.2.2-3: no stored session yet, session present 0"
    );
    assert_eq!(first.subscribe(1, &["sp/x"])?, vec![0]);
    first.send(&raw::disconnect(false, 0))?;
    first.read_to_close(SOON)?;
    let (_again, present) = open(&hub, "sp-kept", false)?;
    assert!(present, "MQTT-3.2.2-2: stored session, session present 1");
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_5_persistent_session_stores_qos_1_and_2_messages_while_away(
) -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let mut options = hub.options("ward-app");
    options.set_clean_session(false);
    let (app, mut app_loop) = AsyncClient::new(options.clone(), 10);
    app.subscribe("away/1", QoS::AtLeastOnce).await?;
    until_suback(&mut app_loop).await?;
    app.subscribe("away/2", QoS::ExactlyOnce).await?;
    until_suback(&mut app_loop).await?;
    app.disconnect().await?;
    while app_loop.poll().await.is_ok() {}

    let (publisher, mut pub_loop) = hub.client("pub-away");
    publisher
        .publish("away/1", QoS::AtLeastOnce, false, "one")
        .await?;
    publisher
        .publish("away/2", QoS::ExactlyOnce, false, "two")
        .await?;
    let mut done = (false, false);
    while done != (true, true) {
        match pub_loop.poll().await? {
            Event::Incoming(Incoming::PubAck(_)) => done.0 = true,
            Event::Incoming(Incoming::PubComp(_)) => done.1 = true,
            _ => {}
        }
    }

    let (_app, mut app_loop) = AsyncClient::new(options, 10);
    assert!(
        until_connack(&mut app_loop).await?.session_present,
        "MQTT-3.1.2-4: the session is resumed"
    );
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = next_publish(&mut app_loop, SOON)
            .await
            .expect("stored message delivered");
        got.push((p.topic, p.qos as u8, p.payload.to_vec()));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("away/1".into(), 1, b"one".to_vec()),
            ("away/2".into(), 2, b"two".to_vec()),
        ]
    );
    hub.terminate()
}

#[test]
fn mqtt_3_1_2_6_clean_session_discards_the_previous_session() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut kept, _) = open(&hub, "cs-app", false)?;
    assert_eq!(kept.subscribe(1, &["cs/x"])?, vec![0]);
    kept.send(&raw::disconnect(false, 0))?;
    kept.read_to_close(SOON)?;

    let (mut clean, present) = open(&hub, "cs-app", true)?;
    assert!(!present);
    let (mut publisher, _) = open(&hub, "cs-pub", true)?;
    publisher.send(&publish("cs/x", 0, false, 0, b"old subscription"))?;
    assert!(
        delivery(&mut clean, QUIET).is_none(),
        "the old session's subscription is gone"
    );
    clean.send(&raw::disconnect(false, 0))?;
    clean.read_to_close(SOON)?;
    let (_later, present) = open(&hub, "cs-app", false)?;
    assert!(!present, "nothing of either session was kept");
    hub.terminate()
}

#[test]
fn mqtt_4_4_0_1_a_resumed_session_gets_unacknowledged_publishes_and_pubrels_again(
) -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut first, _) = open(&hub, "resumer", false)?;
    first.send(&raw::subscribe_with(
        false,
        1,
        &[("resume/#", 2)],
        &Props::new(),
    ))?;
    assert_eq!(first.read_kind(9)?.codes(false), vec![2]);
    let (mut publisher, _) = open(&hub, "resume-pub", true)?;
    publisher.send(&publish("resume/1", 1, false, 1, b"one"))?;
    publisher.read_kind(4)?;
    for pkid in [2, 3] {
        publisher.send(&publish(&format!("resume/{pkid}"), 2, false, pkid, b"two"))?;
        publisher.finish_publish(2, pkid)?;
    }
    let unfinished = first.leave_unfinished()?;
    drop(first); // gone without acknowledging the rest, nor PUBCOMP

    let (mut back, present) = open(&hub, "resumer", false)?;
    assert!(present);
    // The exchanges complete on the new connection, and nothing else is sent again.
    back.complete_resent(&unfinished)?;
    back.send(&raw::disconnect(false, 0))?;
    back.read_to_close(SOON)?;
    let (mut last, present) = open(&hub, "resumer", false)?;
    assert!(present);
    assert!(last.read_within(QUIET).is_none(), "all acknowledged");
    hub.terminate()
}

// ---------------------------------------------------------------------------------------------
// Wills

#[test]
fn mqtt_3_1_2_8_will_published_when_the_network_connection_closes() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut watcher, _) = open(&hub, "will-watcher", true)?;
    assert_eq!(watcher.subscribe(1, &["will/#"])?, vec![0]);

    // A connection that just closes.
    let dropped = Will {
        topic: "will/dropped",
        payload: b"lost",
        qos: 1,
        ..Will::default()
    };
    let (conn, _) = Conn::handshake(
        hub.addr,
        false,
        &connect("dropper", true, 30, Some(&dropped)),
    )?;
    drop(conn);
    let got = delivery(&mut watcher, SOON).expect("will after a close");
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("will/dropped", &b"lost"[..])
    );

    // A client that falls silent: its keep-alive runs out and its will is published.
    let silent = Will {
        topic: "will/silent",
        payload: b"timed out",
        qos: 0,
        ..Will::default()
    };
    let (_conn, _) = Conn::handshake(hub.addr, false, &connect("sleeper", true, 1, Some(&silent)))?;
    let got = delivery(&mut watcher, SOON).expect("will after a keep-alive timeout");
    assert_eq!(got.topic, "will/silent");
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_14_4_3_will_discarded_on_disconnect() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (watcher, mut watch_loop) = hub.client("watcher");
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await?;
    until_suback(&mut watch_loop).await?;

    let (polite, mut polite_loop) =
        connected_with_will(&hub, "polite", "wills/polite", "gone").await?;
    polite.disconnect().await?;
    while polite_loop.poll().await.is_ok() {}

    // Then one that drops: the first will to arrive is its own.
    let (_dropper, dropper_loop) =
        connected_with_will(&hub, "dropper", "wills/dropper", "lost").await?;
    drop(dropper_loop);
    let got = next_publish(&mut watch_loop, SOON)
        .await
        .expect("the dropper's will");
    assert_eq!(got.topic, "wills/dropper", "no will after DISCONNECT");
    assert!(next_publish(&mut watch_loop, QUIET).await.is_none());
    hub.terminate()
}

#[test]
fn mqtt_3_1_2_16_and_17_will_retain_flag() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut watcher, _) = open(&hub, "wr-watcher", true)?;
    assert_eq!(watcher.subscribe(1, &["wr/+"])?, vec![0]);
    for (id, retain) in [("will-kept", true), ("will-passing", false)] {
        let will = Will {
            topic: if retain { "wr/kept" } else { "wr/passing" },
            payload: b"bye",
            qos: 1,
            retain,
            ..Will::default()
        };
        let (conn, _) = Conn::handshake(hub.addr, false, &connect(id, true, 30, Some(&will)))?;
        drop(conn);
        // Published when the connection closed (and, on an established subscription, with
        // RETAIN 0 either way).
        let got = delivery(&mut watcher, SOON).expect("will");
        assert_eq!((got.topic.as_str(), got.retain), (will.topic, false));
    }
    // A later subscriber sees only the retained one.
    let (mut late, _) = open(&hub, "late", true)?;
    assert_eq!(late.subscribe(1, &["wr/+"])?, vec![0]);
    let got = delivery(&mut late, SOON).expect("retained will");
    assert_eq!((got.topic.as_str(), got.retain), ("wr/kept", true));
    assert!(
        delivery(&mut late, QUIET).is_none(),
        "the other will was not retained"
    );
    hub.terminate()
}

#[test]
fn mqtt_3_1_2_14_a_qos_2_will_is_delivered_at_qos_2() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut watcher, _) = open(&hub, "w2-watch", true)?;
    watcher.send(&raw::subscribe_with(
        false,
        1,
        &[("w2/#", 2)],
        &Props::new(),
    ))?;
    assert_eq!(watcher.read_kind(9)?.codes(false), vec![2]);
    let will = Will {
        topic: "w2/gone",
        payload: b"lost",
        qos: 2,
        retain: false,
        props: Props::new(),
    };
    let (conn, _) = Conn::handshake(
        hub.addr,
        false,
        &connect("w2-dropper", true, 30, Some(&will)),
    )?;
    drop(conn); // closed without DISCONNECT
    let got = delivery(&mut watcher, SOON).expect("the will");
    assert_eq!((got.topic.as_str(), got.qos), ("w2/gone", 2));
    watcher.send(&raw::ack(0x50, got.pkid))?;
    assert_eq!(watcher.read_kind(6)?.pkid(), got.pkid, "PUBREL");
    hub.terminate()
}

// ---------------------------------------------------------------------------------------------
// Retained messages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_5_retained_message_is_stored_for_future_subscribers() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (publisher, mut pub_loop) = hub.client("pub-r");
    publisher
        .publish("status/ward-3", QoS::AtLeastOnce, true, "open")
        .await?;
    until_pubacks(&mut pub_loop, 1).await?;
    let (subscriber, mut sub_loop) = hub.client("sub-r");
    subscriber.subscribe("status/+", QoS::AtLeastOnce).await?;
    // MQTT-3.3.1-6: sent on the new subscription; MQTT-3.3.1-8: with RETAIN 1.
    let got = next_publish(&mut sub_loop, SOON)
        .await
        .expect("retained message delivered");
    assert_eq!(got.topic, "status/ward-3");
    assert_eq!(&got.payload[..], b"open");
    assert!(got.retain);
    hub.terminate()
}

#[test]
fn mqtt_3_3_1_9_established_subscription_gets_retain_0() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut subscriber, _) = open(&hub, "live", true)?;
    assert_eq!(subscriber.subscribe(1, &["live/x"])?, vec![0]);
    let (mut publisher, _) = open(&hub, "live-pub", true)?;
    publisher.send(&publish("live/x", 0, true, 0, b"now"))?;
    let got = delivery(&mut subscriber, SOON).expect("delivered");
    assert_eq!(&got.payload[..], b"now");
    assert!(!got.retain, "RETAIN 0 on an established subscription");
    hub.terminate()
}

#[test]
fn mqtt_3_3_1_7_a_new_retained_message_replaces_the_old() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut publisher, _) = open(&hub, "rp", true)?;
    publisher.send(&publish("rr/x", 1, true, 1, b"first"))?;
    publisher.read_kind(4)?;
    // A QoS 0 retained message replaces it; a QoS 1 publish behind it shows it was handled.
    publisher.send(&publish("rr/x", 0, true, 0, b"second"))?;
    publisher.send(&publish("rr/other", 1, false, 2, b"marker"))?;
    publisher.read_kind(4)?;
    let (mut subscriber, _) = open(&hub, "rs", true)?;
    assert_eq!(subscriber.subscribe(1, &["rr/x"])?, vec![0]);
    let got = delivery(&mut subscriber, SOON).expect("retained");
    assert_eq!(&got.payload[..], b"second");
    assert!(
        delivery(&mut subscriber, QUIET).is_none(),
        "only the last is kept"
    );
    hub.terminate()
}

#[test]
fn mqtt_3_3_1_10_empty_retained_message_clears_and_is_delivered() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut publisher, _) = open(&hub, "cp", true)?;
    publisher.send(&publish("clr/x", 1, true, 1, b"kept"))?;
    publisher.read_kind(4)?;
    let (mut present, _) = open(&hub, "cs", true)?;
    assert_eq!(present.subscribe(1, &["clr/x"])?, vec![0]);
    assert_eq!(
        delivery(&mut present, SOON).expect("retained").payload,
        b"kept"
    );

    publisher.send(&publish("clr/x", 1, true, 2, b""))?;
    publisher.read_kind(4)?;
    // Processed as normal: the existing subscriber gets the empty message ...
    let got = delivery(&mut present, SOON).expect("empty message delivered");
    assert!(got.payload.is_empty() && !got.retain);
    // ... and it is not stored (MQTT-3.3.1-11): a later subscriber gets nothing.
    let (mut later, _) = open(&hub, "cl", true)?;
    assert_eq!(later.subscribe(1, &["clr/x"])?, vec![0]);
    assert!(
        delivery(&mut later, QUIET).is_none(),
        "retained message cleared"
    );
    hub.terminate()
}

#[test]
fn mqtt_3_3_1_12_an_empty_non_retained_publish_leaves_the_retained_message() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut publisher, _) = open(&hub, "keep-pub", true)?;
    publisher.send(&publish("keep/x", 1, true, 1, b"state"))?;
    publisher.read_kind(4)?;
    let (mut present, _) = open(&hub, "keep-now", true)?;
    assert_eq!(present.subscribe(1, &["keep/x"])?, vec![0]);
    assert_eq!(
        delivery(&mut present, SOON).expect("retained").payload,
        b"state"
    );
    publisher.send(&publish("keep/x", 1, false, 2, b""))?;
    publisher.read_kind(4)?;
    let got = delivery(&mut present, SOON).expect("the empty message, delivered as any other");
    assert!(got.payload.is_empty() && !got.retain);
    let (mut later, _) = open(&hub, "keep-later", true)?;
    assert_eq!(later.subscribe(1, &["keep/x"])?, vec![0]);
    let got = delivery(&mut later, SOON).expect("RETAIN 0: the retained message is left");
    assert_eq!((&got.payload[..], got.retain), (&b"state"[..], true));
    hub.terminate()
}

// ---------------------------------------------------------------------------------------------
// PUBLISH and the QoS flows

#[test]
fn mqtt_3_3_4_1_publish_answered_according_to_its_qos() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, _) = open(&hub, "acks", true)?;
    conn.send(&publish("ack/0", 0, false, 0, b"zero"))?;
    conn.send(&publish("ack/1", 1, false, 7, b"one"))?;
    conn.send(&publish("ack/2", 2, false, 8, b"two"))?;
    let puback = conn.read()?;
    assert_eq!(
        (puback.header, puback.pkid()),
        (0x40, 7),
        "QoS 0 gets nothing, QoS 1 PUBACK"
    );
    let pubrec = conn.read()?;
    assert_eq!((pubrec.header, pubrec.pkid()), (0x50, 8), "QoS 2 PUBREC");
    conn.send(&raw::ack(0x62, 8))?;
    let pubcomp = conn.read()?;
    assert_eq!(
        (pubcomp.header, pubcomp.pkid()),
        (0x70, 8),
        "PUBREL gets PUBCOMP"
    );
    hub.terminate()
}

#[test]
fn mqtt_4_3_3_2_qos_2_message_delivered_exactly_once() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut subscriber, _) = open(&hub, "q2-sub", true)?;
    subscriber.send(&raw::subscribe_with(
        false,
        1,
        &[("q2/x", 2)],
        &Props::new(),
    ))?;
    assert_eq!(subscriber.read_kind(9)?.codes(false), vec![2]);

    let (mut publisher, _) = open(&hub, "q2-pub", true)?;
    publisher.send(&publish("q2/x", 2, false, 1, b"once"))?;
    assert_eq!(publisher.read_kind(5)?.pkid(), 1, "PUBREC");
    // MQTT-4.3.3-2: a resend (DUP) before PUBREL is the same message, answered, not
    // delivered again.
    publisher.send(&raw::publish_with(
        false,
        "q2/x",
        2,
        false,
        true,
        1,
        &Props::new(),
        b"once",
    ))?;
    assert_eq!(publisher.read_kind(5)?.pkid(), 1, "PUBREC for the resend");
    publisher.send(&raw::ack(0x62, 1))?;
    assert_eq!(publisher.read_kind(7)?.pkid(), 1, "PUBCOMP");

    // The subscriber's half: PUBLISH, PUBREC, PUBREL, PUBCOMP.
    let got = delivery(&mut subscriber, SOON).expect("delivered");
    assert_eq!((got.qos, &got.payload[..]), (2, &b"once"[..]));
    subscriber.send(&raw::ack(0x50, got.pkid))?;
    let pubrel = subscriber.read_kind(6)?;
    assert_eq!((pubrel.header, pubrel.pkid()), (0x62, got.pkid));
    subscriber.send(&raw::ack(0x70, got.pkid))?;
    assert!(delivery(&mut subscriber, QUIET).is_none(), "exactly once");

    // After PUBCOMP the packet id is free: the same id carries a new message.
    publisher.send(&publish("q2/x", 2, false, 1, b"next"))?;
    assert_eq!(publisher.read_kind(5)?.pkid(), 1);
    publisher.send(&raw::ack(0x62, 1))?;
    publisher.read_kind(7)?;
    let got = delivery(&mut subscriber, SOON).expect("the next message");
    assert_eq!(&got.payload[..], b"next");
    hub.terminate()
}

#[test]
fn mqtt_3_8_4_6_delivery_qos_is_the_lower_of_published_and_granted() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut subscriber, _) = open(&hub, "minq", true)?;
    subscriber.send(&raw::subscribe_with(
        false,
        1,
        &[("minq/0", 0), ("minq/1", 1), ("minq/2", 2)],
        &Props::new(),
    ))?;
    assert_eq!(subscriber.read_kind(9)?.codes(false), vec![0, 1, 2]);
    let (mut publisher, _) = open(&hub, "minq-pub", true)?;
    // (topic, published QoS, delivered QoS): never above the granted QoS, and never above
    // the published one either.
    let cases = [
        ("minq/0", 2, 0),
        ("minq/1", 2, 1),
        ("minq/2", 0, 0),
        ("minq/2", 1, 1),
        ("minq/1", 0, 0),
    ];
    publisher.expect_delivery_qos(&mut subscriber, &cases)?;
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_6_0_6_topics_are_ordered() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (subscriber, mut sub_loop) = hub.client("ordered-sub");
    subscriber.subscribe("ordered/t", QoS::AtLeastOnce).await?;
    until_suback(&mut sub_loop).await?;
    let (publisher, mut pub_loop) = hub.client("ordered-pub");
    for i in 0..20 {
        publisher
            .publish("ordered/t", QoS::AtLeastOnce, false, format!("{i}"))
            .await?;
    }
    until_pubacks(&mut pub_loop, 20).await?;
    let mut got = Vec::new();
    while got.len() < 20 {
        let p = next_publish(&mut sub_loop, SOON)
            .await
            .expect("all 20 delivered");
        got.push(String::from_utf8(p.payload.to_vec())?);
    }
    let sent: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(got, sent);
    hub.terminate()
}

#[test]
fn mqtt_3_3_1_4_qos_3_closes_the_connection() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, _) = open(&hub, "qos3", true)?;
    conn.send(&raw::packet(0x36, &[0, 3, b'a', b'/', b'b', 0, 1, b'x']))?;
    let answer = conn.read_to_close(SOON)?;
    assert!(answer.is_empty(), "closed: {answer:?}");
    hub.terminate()
}

#[test]
fn mqtt_3_3_2_2_wildcard_in_topic_name_closes_the_connection() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    for topic in ["a/+", "a/#"] {
        let (mut conn, _) = open(&hub, "wild", true)?;
        conn.send(&publish(topic, 1, false, 1, b"x"))?;
        let answer = conn.read_to_close(SOON)?;
        assert!(
            answer.is_empty(),
            "{topic}: closed without PUBACK: {answer:?}"
        );
    }
    hub.terminate()
}

#[test]
fn mqtt_3_3_5_2_unauthorized_publish_is_acknowledged_and_dropped() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // `$` topics belong to the hub; config/interop.toml drops a denied 3.1.1 publish.
    let (mut conn, _) = open(&hub, "sneaky", true)?;
    conn.send(&publish("$hub/x", 1, false, 5, b"x"))?;
    let ack = conn.read_kind(4)?;
    assert_eq!(ack.pkid(), 5, "a positive acknowledgement");
    conn.ping()?; // and the connection stays up
    hub.terminate()
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE and UNSUBSCRIBE

#[test]
fn mqtt_3_8_4_1_suback_carries_the_packet_id_and_a_code_per_filter() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, _) = open(&hub, "subs", true)?;
    // MQTT-3.8.4-1, -2 (same packet id), -4 (one SUBACK), -5 and MQTT-3.9.3-1 (a code per
    // filter, in order).
    let filters = [("s/zero", 0), ("s/one/+", 1), ("s/two/#", 2)];
    conn.send(&raw::subscribe_with(false, 0x1234, &filters, &Props::new()))?;
    let ack = conn.read_kind(9)?;
    assert_eq!(ack.pkid(), 0x1234);
    assert_eq!(ack.codes(false), vec![0, 1, 2]);
    hub.terminate()
}

#[test]
fn mqtt_3_9_3_1_denied_filter_gets_0x80_in_its_place() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, _) = open(&hub, "denied", true)?;
    let filters = [("ok/one", 1), ("test/nosubscribe", 0), ("ok/two", 2)];
    conn.send(&raw::subscribe_with(false, 3, &filters, &Props::new()))?;
    assert_eq!(conn.read_kind(9)?.codes(false), vec![1, 0x80, 2]);
    // Only denied filters: answered by kenko alone.
    conn.send(&raw::subscribe_with(
        false,
        4,
        &[("test/nosubscribe", 1)],
        &Props::new(),
    ))?;
    assert_eq!(conn.read_kind(9)?.codes(false), vec![0x80]);

    // The granted filters work, the denied one delivers nothing.
    let (mut publisher, _) = open(&hub, "denied-pub", true)?;
    publisher.send(&publish("test/nosubscribe", 0, false, 0, b"secret"))?;
    publisher.send(&publish("ok/two", 0, false, 0, b"public"))?;
    let got = delivery(&mut conn, SOON).expect("granted filter delivers");
    assert_eq!(got.topic, "ok/two");
    assert!(delivery(&mut conn, QUIET).is_none());
    hub.terminate()
}

#[test]
fn mqtt_3_8_3_3_subscribe_without_filters_closes_the_connection() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, _) = open(&hub, "nofilter", true)?;
    conn.send(&raw::packet(0x82, &[0, 1]))?;
    let answer = conn.read_to_close(SOON)?;
    assert!(answer.is_empty(), "no SUBACK: {answer:?}");
    hub.terminate()
}

#[test]
fn mqtt_3_10_3_2_unsubscribe_without_filters_closes_the_connection() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, _) = open(&hub, "nounfilter", true)?;
    conn.send(&raw::packet(0xa2, &[0, 1]))?;
    let answer = conn.read_to_close(SOON)?;
    assert!(answer.is_empty(), "no UNSUBACK: {answer:?}");
    hub.terminate()
}

#[test]
fn mqtt_4_7_1_2_and_3_malformed_topic_filters_close_the_connection() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // '#' not last, '+' sharing a level, '#' sharing a level, and an empty filter (4.7.3-1).
    for filter in ["a/#/b", "a+/b", "a/b#", ""] {
        let (mut conn, _) = open(&hub, "badfilter", true)?;
        conn.send(&raw::subscribe_with(
            false,
            1,
            &[(filter, 0)],
            &Props::new(),
        ))?;
        let answer = conn.read_to_close(SOON)?;
        assert!(
            answer.is_empty(),
            "{filter:?}: closed without SUBACK: {answer:?}"
        );
    }
    hub.terminate()
}

#[test]
fn mqtt_3_10_4_4_unsuback_carries_the_packet_id_and_delivery_stops() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, _) = open(&hub, "unsub", true)?;
    assert_eq!(conn.subscribe(1, &["un/x"])?, vec![0]);
    let (mut publisher, _) = open(&hub, "unsub-pub", true)?;
    publisher.send(&publish("un/x", 0, false, 0, b"before"))?;
    assert_eq!(
        delivery(&mut conn, SOON).expect("subscribed").payload,
        b"before"
    );

    conn.send(&raw::unsubscribe(false, 0x0909, &["un/x"]))?;
    let ack = conn.read_kind(11)?;
    assert_eq!((ack.pkid(), ack.body.len()), (0x0909, 2), "UNSUBACK");
    // MQTT-3.10.4-2: no new messages for the removed subscription.
    publisher.send(&publish("un/x", 0, false, 0, b"after"))?;
    assert!(delivery(&mut conn, QUIET).is_none());
    hub.terminate()
}

#[test]
fn mqtt_3_10_4_5_unsuback_also_when_no_subscription_existed() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, _) = open(&hub, "unsub-none", true)?;
    conn.send(&raw::unsubscribe(false, 0x0102, &["never/subscribed"]))?;
    let ack = conn.read_kind(11)?;
    assert_eq!((ack.pkid(), ack.body.len()), (0x0102, 2), "UNSUBACK");
    conn.ping()?;
    hub.terminate()
}

#[test]
fn mqtt_3_10_4_6_several_filters_get_one_unsuback() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut conn, _) = open(&hub, "unsub-many", true)?;
    let ack = conn.subscribe_with(1, &[("many/a", 0), ("many/b", 1)], &Props::new())?;
    assert_eq!(ack.codes(false), vec![0, 1]);
    conn.send(&raw::unsubscribe(
        false,
        0x0203,
        &["many/a", "many/none", "many/b"],
    ))?;
    let ack = conn.read_kind(11)?;
    assert_eq!(ack.pkid(), 0x0203);
    assert!(
        conn.read_kind_within(11, QUIET).is_none(),
        "one UNSUBACK for the whole UNSUBSCRIBE"
    );
    // Both subscriptions are gone.
    let (mut publisher, _) = open(&hub, "unsub-many-pub", true)?;
    publisher.send(&publish("many/a", 0, false, 0, b"a"))?;
    publisher.send(&publish("many/b", 0, false, 0, b"b"))?;
    assert!(delivery(&mut conn, QUIET).is_none());
    hub.terminate()
}

#[test]
fn mqtt_3_8_4_3_a_repeated_subscribe_replaces_the_subscription() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut publisher, _) = open(&hub, "again-pub", true)?;
    publisher.send(&publish("again/x", 1, true, 1, b"state"))?;
    publisher.read_kind(4)?;
    let (mut subscriber, _) = open(&hub, "again-sub", true)?;
    assert_eq!(subscriber.subscribe(1, &["again/x"])?, vec![0]);
    let got = delivery(&mut subscriber, SOON).expect("retained");
    assert_eq!((got.qos, got.retain), (0, true));

    // The same filter at QoS 1: the retained message is sent again, at the new QoS, and live
    // messages come once, at the new QoS.
    subscriber.send(&raw::subscribe_with(
        false,
        2,
        &[("again/x", 1)],
        &Props::new(),
    ))?;
    assert_eq!(subscriber.read_kind(9)?.codes(false), vec![1]);
    let got = delivery(&mut subscriber, SOON).expect("retained message sent again");
    assert_eq!(
        (&got.payload[..], got.qos, got.retain),
        (&b"state"[..], 1, true)
    );
    subscriber.send(&raw::ack(0x40, got.pkid))?;
    publisher.send(&publish("again/x", 1, false, 2, b"live"))?;
    publisher.read_kind(4)?;
    let got = delivery(&mut subscriber, SOON).expect("live message");
    assert_eq!((&got.payload[..], got.qos), (&b"live"[..], 1));
    subscriber.send(&raw::ack(0x40, got.pkid))?;
    assert!(
        delivery(&mut subscriber, QUIET).is_none(),
        "one subscription, so one copy"
    );
    hub.terminate()
}

/// 4.7 (MQTT-4.7.3-2 aside, which forbids only U+0000): topics and filters are UTF-8 strings,
/// whatever their first character.
#[test]
fn mqtt_4_7_3_topics_and_filters_may_start_with_any_utf8_character() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    let (mut subscriber, _) = open(&hub, "utf8-sub", true)?;
    assert_eq!(
        subscriber.subscribe(1, &["健康/+", "é/#", "+/心拍"])?,
        vec![0, 0, 0]
    );
    let (mut publisher, _) = open(&hub, "utf8-pub", true)?;
    let got =
        publisher.topics_delivered(&mut subscriber, &["健康/x", "é/a/b", "x/心拍", "健康x/y"])?;
    assert_eq!(
        got,
        vec!["健康/x", "é/a/b", "x/心拍"],
        "健康x/y matches none"
    );
    hub.terminate()
}
