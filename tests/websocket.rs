//! End to end: MQTT over WebSocket, as a citizen's app uses it, with rumqttc's WebSocket
//! transport; the app sees its own citizen's live observations and nothing else.

mod common;

use std::time::Duration;

use common::Hub;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, SubscribeReasonCode, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_citizen_app_over_websocket_sees_only_its_own_citizen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut app = common::principal("app-001", &["citizen"]);
    app = app.replace("password_hash", "citizen = \"citizen-001\"\npassword_hash");
    let config = format!(
        "{}{app}[mqtt]\nwebsocket = \"127.0.0.1:0\"\n\n[ingest]\nlive_republish = true\n",
        common::config_with_devices(2).replace("[ingest]\nbatch_linger_ms = 2\n", "")
    );
    let hub = Hub::start(dir.path(), &config)?;
    let ws = hub.websocket_addr.expect("WebSocket listener announced");

    let url = format!("ws://127.0.0.1:{}/mqtt", ws.port());
    let mut options = MqttOptions::new("app-001", url, ws.port());
    options.set_transport(Transport::Ws);
    options.set_credentials("app-001", common::password("app-001"));
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    client
        .subscribe("citizens/citizen-001/observations/+", QoS::AtLeastOnce)
        .await?;
    client
        .subscribe("citizens/citizen-002/observations/+", QoS::AtLeastOnce)
        .await?;
    client
        .subscribe("citizens/+/observations/heart_rate", QoS::AtLeastOnce)
        .await?;
    let mut codes = Vec::new();
    while codes.len() < 3 {
        if let Event::Incoming(Incoming::SubAck(ack)) = eventloop.poll().await? {
            codes.extend(ack.return_codes);
        }
    }
    assert!(
        matches!(codes[0], SubscribeReasonCode::Success(_)),
        "{codes:?}"
    );
    assert_eq!(
        codes[1],
        SubscribeReasonCode::Failure,
        "another citizen's data"
    );
    assert_eq!(
        codes[2],
        SubscribeReasonCode::Failure,
        "every citizen's data"
    );

    // Both devices publish over plain MQTT.
    let t = common::now_ms() - 60_000;
    for device in ["bed-001", "bed-002"] {
        let (dev, mut dev_loop) = hub.device(device);
        dev.publish(
            format!("devices/{device}/telemetry"),
            QoS::AtLeastOnce,
            false,
            format!(r#"{{"ts":{t},"hr":64,"occ":true}}"#),
        )
        .await?;
        loop {
            if let Event::Incoming(Incoming::PubAck(_)) = dev_loop.poll().await? {
                break;
            }
        }
    }
    let mut topics = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, eventloop.poll()).await {
        if let Event::Incoming(Incoming::Publish(p)) = event {
            topics.push(p.topic);
        }
    }
    assert!(
        topics.contains(&"citizens/citizen-001/observations/heart_rate".to_owned()),
        "{topics:?}"
    );
    assert!(
        topics
            .iter()
            .all(|t| t.starts_with("citizens/citizen-001/")),
        "only citizen-001's observations: {topics:?}"
    );
    hub.terminate()
}
