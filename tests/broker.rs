//! End to end: MQTT behaviour of kenko's listener over real sockets, through the router.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::mqtt311::{connected_with_will, next_publish, until_connack, until_suback};
use common::Hub;
use rumqttc::{Event, Incoming, QoS};

#[test]
fn keep_alive_zero_is_accepted_and_the_connection_stays_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_with(dir.path(), &common::interop_config())?;
    let mut socket = TcpStream::connect(hub.addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    // CONNECT, MQTT 3.1.1, clean session, keep-alive 0, client id "ka0".
    socket.write_all(&[
        0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 3, b'k', b'a', b'0',
    ])?;
    let mut connack = [0u8; 4];
    socket.read_exact(&mut connack)?;
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    // Silent for longer than any keep-alive enforcement would allow at 1 s, then still served.
    std::thread::sleep(Duration::from_secs(3));
    socket.write_all(&[0xc0, 0])?; // PINGREQ
    let mut pingresp = [0u8; 2];
    socket.read_exact(&mut pingresp)?;
    assert_eq!(pingresp, [0xd0, 0]);
    hub.terminate()
}

#[test]
fn keep_alive_is_enforced_at_one_and_a_half_times() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_with(dir.path(), &common::interop_config())?;
    let mut socket = TcpStream::connect(hub.addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    // Keep-alive 1 s: the hub closes the silent connection after 1.5 s.
    socket.write_all(&[
        0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 1, 0, 3, b'k', b'a', b'1',
    ])?;
    let mut connack = [0u8; 4];
    socket.read_exact(&mut connack)?;
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    socket.read_to_end(&mut rest)?;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed too early: {waited:?}"
    );
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_client_id_takes_the_session_over() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_with(dir.path(), &common::interop_config())?;
    let mut first_options = hub.options("app-1");
    first_options.set_clean_session(false);
    let (first, mut first_loop) = rumqttc::AsyncClient::new(first_options.clone(), 10);
    first.subscribe("takeover/t", QoS::AtLeastOnce).await?;
    until_suback(&mut first_loop).await?;

    let (_second, mut second_loop) = rumqttc::AsyncClient::new(first_options, 10);
    let ack = until_connack(&mut second_loop).await?;
    assert!(
        ack.session_present,
        "the persistent session moved to the new connection"
    );
    // The first connection is closed by the hub.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if first_loop.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the old connection was not closed");

    // The subscription made on the first connection now delivers on the second.
    let (publisher, mut publisher_loop) = hub.client("pub-1");
    tokio::spawn(async move { while publisher_loop.poll().await.is_ok() {} });
    publisher
        .publish("takeover/t", QoS::AtLeastOnce, false, "hello")
        .await?;
    let got = next_publish(&mut second_loop, Duration::from_secs(5))
        .await
        .expect("delivered to the new connection");
    assert_eq!(&got.payload[..], b"hello");
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_reaches_a_later_subscriber() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_with(dir.path(), &common::interop_config())?;
    let (publisher, mut publisher_loop) = hub.client("pub-r");
    publisher
        .publish("status/ward-3", QoS::AtLeastOnce, true, "open")
        .await?;
    loop {
        if let Event::Incoming(Incoming::PubAck(_)) = publisher_loop.poll().await? {
            break;
        }
    }
    let (subscriber, mut sub_loop) = hub.client("sub-r");
    subscriber.subscribe("status/+", QoS::AtLeastOnce).await?;
    let got = next_publish(&mut sub_loop, Duration::from_secs(5))
        .await
        .expect("retained message delivered");
    assert_eq!(got.topic, "status/ward-3");
    assert_eq!(&got.payload[..], b"open");
    assert!(got.retain, "delivered as retained");
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_is_published_when_a_client_drops_and_not_after_disconnect() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_with(dir.path(), &common::interop_config())?;
    let (watcher, mut watch_loop) = hub.client("watcher");
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await?;
    until_suback(&mut watch_loop).await?;

    // A polite client disconnects: no will.
    let (polite, mut polite_loop) =
        connected_with_will(&hub, "polite", "wills/polite", "gone").await?;
    polite.disconnect().await?;
    while polite_loop.poll().await.is_ok() {}

    // A client that drops its connection: its will is published.
    let (_dropper, dropper_loop) =
        connected_with_will(&hub, "dropper", "wills/dropper", "lost").await?;
    drop(dropper_loop); // closes the socket without DISCONNECT

    let got = next_publish(&mut watch_loop, Duration::from_secs(5))
        .await
        .expect("will delivered");
    assert_eq!(got.topic, "wills/dropper");
    assert_eq!(&got.payload[..], b"lost");
    assert!(
        next_publish(&mut watch_loop, Duration::from_secs(1))
            .await
            .is_none(),
        "no will after a clean DISCONNECT"
    );
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_and_2_are_delivered_through_the_router() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_with(dir.path(), &common::interop_config())?;
    let (subscriber, mut sub_loop) = hub.client("sub-q");
    let levels = [
        (QoS::AtMostOnce, "q/0"),
        (QoS::AtLeastOnce, "q/1"),
        (QoS::ExactlyOnce, "q/2"),
    ];
    // Each topic is subscribed at the QoS it is published with (rumqttd's router delivers at
    // the subscription's QoS; see docs/conformance.md).
    for (qos, topic) in levels {
        subscriber.subscribe(topic, qos).await?;
        until_suback(&mut sub_loop).await?;
    }
    let (publisher, mut pub_loop) = hub.client("pub-q");
    let publisher_done = tokio::spawn(async move {
        let (mut pubacks, mut pubcomps) = (0, 0);
        while pubacks + pubcomps < 2 {
            match pub_loop.poll().await? {
                Event::Incoming(Incoming::PubAck(_)) => pubacks += 1,
                Event::Incoming(Incoming::PubComp(_)) => pubcomps += 1,
                _ => {}
            }
        }
        anyhow::Ok((pubacks, pubcomps))
    });
    for (qos, topic) in levels {
        publisher
            .publish(topic, qos, false, topic.as_bytes().to_vec())
            .await?;
        let got = next_publish(&mut sub_loop, Duration::from_secs(5))
            .await
            .expect("delivered");
        assert_eq!(got.topic, topic);
        assert_eq!(got.qos, qos);
        assert_eq!(&got.payload[..], topic.as_bytes());
    }
    let acks = tokio::time::timeout(Duration::from_secs(5), publisher_done).await???;
    assert_eq!(
        acks,
        (1, 1),
        "the publisher got PUBACK for QoS 1 and PUBCOMP for QoS 2"
    );
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_telemetry_is_stored_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &common::config_with_devices(1))?;
    let (device, mut device_loop) = hub.device("bed-001");
    let t = (common::now_ms() - 5_000) / 1000 * 1000;
    for _ in 0..2 {
        // The same reading twice: stored once.
        device
            .publish(
                "devices/bed-001/telemetry",
                QoS::ExactlyOnce,
                false,
                format!(r#"{{"ts":{t},"hr":64}}"#),
            )
            .await?;
    }
    let mut completed = 0;
    while completed < 2 {
        if let Event::Incoming(Incoming::PubComp(_)) = device_loop.poll().await? {
            completed += 1;
        }
    }
    let rows = hub.query_at_least(1, &["--metric", "heart_rate"])?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    hub.terminate()
}

#[test]
fn a_first_packet_that_is_not_connect_closes_the_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_with(dir.path(), &common::interop_config())?;
    let mut socket = TcpStream::connect(hub.addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    socket.write_all(&[0xc0, 0])?; // PINGREQ before CONNECT
    let mut rest = Vec::new();
    socket.read_to_end(&mut rest)?;
    assert!(rest.is_empty(), "no answer, just a close: {rest:?}");
    // MQTT 3.1 (protocol level 3) is refused with return code 1.
    let mut old = TcpStream::connect(hub.addr)?;
    old.set_read_timeout(Some(Duration::from_secs(5)))?;
    old.write_all(&[
        0x10, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 10, 0, 1, b'x',
    ])?;
    let mut connack = [0u8; 4];
    old.read_exact(&mut connack)?;
    assert_eq!(connack, [0x20, 2, 0, 1]);
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_keeps_subscriptions_and_queued_messages_across_reconnects(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_with(dir.path(), &common::interop_config())?;
    let mut options = hub.options("care-app");
    options.set_clean_session(false);
    let (app, mut app_loop) = rumqttc::AsyncClient::new(options.clone(), 10);
    app.subscribe("alerts/#", QoS::AtLeastOnce).await?;
    until_suback(&mut app_loop).await?;
    app.disconnect().await?;
    while app_loop.poll().await.is_ok() {}

    // Published while the app is away.
    let (publisher, mut pub_loop) = hub.client("pub-p");
    publisher
        .publish("alerts/ward-3", QoS::AtLeastOnce, false, "check bed 7")
        .await?;
    loop {
        if let Event::Incoming(Incoming::PubAck(_)) = pub_loop.poll().await? {
            break;
        }
    }

    let (_app, mut app_loop) = rumqttc::AsyncClient::new(options, 10);
    let ack = until_connack(&mut app_loop).await?;
    assert!(ack.session_present);
    let got = next_publish(&mut app_loop, Duration::from_secs(5))
        .await
        .expect("queued message delivered");
    assert_eq!(got.topic, "alerts/ward-3");
    assert_eq!(&got.payload[..], b"check bed 7");

    // A clean session starts empty.
    let mut clean = hub.options("care-app");
    clean.set_clean_session(true);
    let (_fresh, mut fresh_loop) = rumqttc::AsyncClient::new(clean, 10);
    assert!(!until_connack(&mut fresh_loop).await?.session_present);
    hub.terminate()
}
