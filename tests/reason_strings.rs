//! Reason strings on what kenko sends an MQTT 5 client, end to end against `kenko serve`: at
//! most 256 bytes however long the reason (the whole text goes to the log and the dead
//! letter), and left out, with user properties, when the packet would otherwise exceed the
//! client's Maximum Packet Size. Each test is named after the normative statement it checks.

mod common;

use std::process::Command;

use common::raw::{self, find_prop, parse_props, prop, Conn, Prop, Props};
use common::{interop_hub, now_ms, Hub, SOON};
use kenko_proto::telemetry::{Reading, Sample, Telemetry};
use prost::Message as _;

/// A protobuf telemetry message whose one reading names a metric of `len` bytes, which the hub
/// refuses with a reason that quotes the name.
fn unknown_metric(len: usize) -> Vec<u8> {
    Telemetry {
        seq: 1,
        samples: vec![Sample {
            time_ms: now_ms() - 60_000,
            readings: vec![Reading {
                metric: "m".repeat(len),
                value: 1.0,
            }],
        }],
    }
    .encode_to_vec()
}

/// MQTT 5 properties as read: identifier and value.
type Properties = Vec<(u8, Prop)>;

/// A PUBACK's packet id, reason code and properties; fails unless the properties fill the
/// packet exactly (a string length that wrapped would not).
fn puback(ack: &raw::Raw) -> anyhow::Result<(u16, u8, Properties)> {
    anyhow::ensure!(ack.kind() == 4, "not a PUBACK: {ack:?}");
    let pkid = u16::from_be_bytes([ack.body[0], ack.body[1]]);
    let code = ack.body.get(2).copied().unwrap_or(0);
    let Some(rest) = ack.body.get(3..) else {
        return Ok((pkid, code, Vec::new()));
    };
    let (len, used) = raw::varint(rest);
    anyhow::ensure!(
        used + len == rest.len(),
        "property length {len} in {rest:?}"
    );
    Ok((pkid, code, parse_props(&rest[used..])))
}

fn reason(props: &[(u8, Prop)]) -> Option<&str> {
    match find_prop(props, prop::REASON_STRING) {
        Some(Prop::Str(s)) => Some(s),
        _ => None,
    }
}

#[test]
fn mqtt_1_5_4_a_100_kb_refusal_reason_reaches_the_client_as_at_most_256_bytes() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &common::config_with_devices(1))?;
    let topic = "devices/bed-001/telemetry/pb";
    let payload = unknown_metric(100_000);
    let login = ("bed-001", common::password("bed-001"));

    let (mut conn, code) =
        Conn::connect(hub.addr, true, "bed-001", Some((login.0, &login.1)), None)?;
    assert_eq!(code, 0);
    conn.send(&raw::publish_qos1(true, topic, 9, &[], &payload))?;
    let (pkid, code, props) = puback(&conn.read_kind(4)?)?;
    assert_eq!((pkid, code), (9, 0x99), "Payload format invalid");
    let why = reason(&props).expect("a reason string");
    assert!(why.len() <= 256, "{} bytes", why.len());
    assert!(why.starts_with("sample 0: unknown metric \"mmm"), "{why}");
    assert!(why.ends_with('…'), "marked as cut: {why}");
    conn.ping()?;

    // mosquitto_pub prints the reason and exits (it aborted on the wrapped length).
    let file = dir.path().join("unknown-metric.pb");
    std::fs::write(&file, &payload)?;
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &hub.port().to_string()])
        .args(["-V", "mqttv5", "-q", "1", "-i", "bed-001"])
        .args(["-u", login.0, "-P", &login.1, "-t", topic])
        .arg("-f")
        .arg(&file)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some(),
        "mosquitto_pub was killed: {stderr}"
    );
    assert!(
        stderr.contains("Payload format invalid") && stderr.contains("unknown metric"),
        "mosquitto_pub said: {stderr}"
    );

    // The whole text: in the dead letters and the log.
    let name = "m".repeat(100_000);
    let letters: Vec<String> = common::eventually(SOON, || {
        let db = rusqlite::Connection::open(hub.data_dir.join("deadletter.db"))?;
        let reasons: Vec<String> = db
            .prepare("SELECT reason FROM dead_letters")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok((reasons.len() == 2).then_some(reasons))
    })?;
    for letter in &letters {
        assert!(letter.contains(&name), "{} bytes", letter.len());
    }
    // The refusal is logged when its verdict reaches the connection, which may be a moment
    // after its dead letter is recorded.
    let mut logged = 0;
    common::eventually(SOON, || {
        logged += hub
            .stderr_lines()
            .iter()
            .filter(|l| l.contains(&name))
            .count();
        Ok((logged >= 2).then_some(()))
    })
    .map_err(|e| anyhow::anyhow!("{e}: the whole reason is logged twice, seen {logged}"))?;
    hub.terminate()
}

/// An MQTT 5 CONNECT with client id `id` and, if given, a Maximum Packet Size.
fn connect(id: &str, max_packet_size: Option<u32>) -> Vec<u8> {
    let props = match max_packet_size {
        Some(max) => Props::new().u32(prop::MAXIMUM_PACKET_SIZE, max),
        None => Props::new(),
    };
    raw::connect_with(true, id, true, 30, &props, None, 0)
}

#[test]
fn mqtt_3_4_2_2_reason_string_left_out_beyond_maximum_packet_size() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    // A publish on a $ topic is refused with a reason that names the topic.
    let topic = format!("$kenko/{}", "t".repeat(100));
    for (id, max) in [("roomy", None), ("small", Some(32u32))] {
        let (mut conn, ack) = Conn::handshake(hub.addr, true, &connect(id, max))?;
        assert_eq!(ack.connack(true).1, 0, "{id}");
        conn.send(&raw::publish_qos1(true, &topic, 1, &[], b"x"))?;
        let ack = conn.read_kind(4)?;
        let (pkid, code, props) = puback(&ack)?;
        assert_eq!((pkid, code), (1, 0x87), "{id}: Not authorized");
        match max {
            None => assert!(reason(&props).is_some_and(|r| r.contains("$kenko/ttt"))),
            Some(max) => {
                assert!(props.is_empty(), "{id}: {props:?}");
                assert!(ack.body.len() + 2 <= max as usize, "{id}: {ack:?}");
            }
        }
        conn.ping()?;
    }
    hub.terminate()
}

#[test]
fn mqtt_3_2_2_19_connack_reason_string_left_out_beyond_maximum_packet_size() -> anyhow::Result<()> {
    let (_dir, hub) = interop_hub()?;
    for max in [None, Some(8u32)] {
        let (mut conn, ack) = Conn::handshake(hub.addr, true, &connect("a/b", max))?;
        let (_, code, props) = ack.connack(true);
        assert_eq!(code, 0x85, "{max:?}: Client Identifier not valid");
        match max {
            None => assert!(reason(&props).is_some(), "{props:?}"),
            Some(_) => assert!(props.is_empty(), "{props:?}"),
        }
        assert!(conn.read_to_close(SOON)?.is_empty(), "then closed");
    }
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_1_5_4_rumqttc_reads_the_cut_reason_of_a_100_kb_refusal() -> anyhow::Result<()> {
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &common::config_with_devices(1))?;
    let mut options = MqttOptions::new("bed-001", "127.0.0.1", hub.port());
    options.set_credentials("bed-001", common::password("bed-001"));
    options.set_max_packet_size(Some(1 << 20));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let payload = unknown_metric(100_000);
    client
        .publish(
            "devices/bed-001/telemetry/pb",
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await?;
    let ack = tokio::time::timeout(SOON, async {
        loop {
            if let Event::Incoming(Packet::PubAck(ack)) = eventloop.poll().await? {
                return anyhow::Ok(ack);
            }
        }
    })
    .await??;
    assert_eq!(ack.reason, PubAckReason::PayloadFormatInvalid);
    let why = ack
        .properties
        .and_then(|p| p.reason_string)
        .expect("a reason string");
    assert!(why.len() <= 256 && why.contains("unknown metric"), "{why}");
    client.disconnect().await?;
    hub.terminate()
}
