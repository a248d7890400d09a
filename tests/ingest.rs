//! End to end: devices publish to a real `kenko serve`, and what they sent is queryable.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use common::{now_ms, Hub};
use rumqttc::{Event, Incoming, Outgoing, QoS};

fn stage(i: i64) -> &'static str {
    ["awake", "light", "deep", "rem"][(i % 4) as usize]
}

/// Event time of message `i`: whole seconds, two hours ago onwards.
fn event_ms(base: i64, i: i64) -> i64 {
    base + i * 1000
}

fn jst(ms: i64, with_offset: bool) -> String {
    let ts = jiff::Timestamp::from_millisecond(ms).expect("ts");
    let zoned = ts.to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo").expect("tz"));
    if with_offset {
        zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    } else {
        zoned.strftime("%Y-%m-%dT%H:%M:%S").to_string()
    }
}

fn time_of(row: &serde_json::Value) -> i64 {
    let text = row["time"].as_str().expect("time is a string");
    assert!(text.ends_with('Z'), "times are UTC: {text}");
    text.parse::<jiff::Timestamp>()
        .expect("RFC 3339")
        .as_millisecond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_qos1_messages_are_queryable_with_normalized_values() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &common::config_with_devices(2))?;
    let (client, mut eventloop) = hub.device("bed-001");
    let base = (now_ms() - 2 * 3600 * 1000) / 1000 * 1000;
    const N: i64 = 1000;

    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < N {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("connection failed after {acked} acks: {e}")),
            }
        }
        Ok(acked)
    });
    for i in 0..N {
        let ms = event_ms(base, i);
        // Three spellings of the event time: epoch ms, JST with offset, JST local time.
        let ts = match i % 3 {
            0 => serde_json::json!(ms),
            1 => serde_json::json!(jst(ms, true)),
            _ => serde_json::json!(jst(ms, false)),
        };
        let payload = serde_json::json!({
            "ts": ts, "seq": i + 1, "occ": true,
            "hr": 50.5 + (i % 40) as f64, "rr": 12 + i % 5, "mv": i % 7, "stage": stage(i),
        });
        client
            .publish(
                "devices/bed-001/telemetry",
                QoS::AtLeastOnce,
                false,
                payload.to_string(),
            )
            .await?;
    }
    let acked = tokio::time::timeout(Duration::from_secs(60), acks).await???;
    assert_eq!(acked, N);

    let rows = hub.query_at_least(
        N as usize,
        &["--metric", "heart_rate", "--citizen", "citizen-001"],
    )?;
    assert_eq!(
        rows.len(),
        N as usize,
        "every acknowledged message is queryable"
    );
    let by_time: HashMap<i64, &serde_json::Value> = rows.iter().map(|r| (time_of(r), r)).collect();
    for i in 0..N {
        let row = by_time
            .get(&event_ms(base, i))
            .with_context(|| format!("message {i} missing"))?;
        assert_eq!(
            row["value"].as_f64(),
            Some(50.5 + (i % 40) as f64),
            "message {i}"
        );
        assert_eq!(row["unit"], "/min");
        assert_eq!(row["device"], "bed-001");
        assert_eq!(row["citizen"], "citizen-001");
        assert_eq!(row["metric"], "heart_rate");
    }
    let stages = hub.query(&["--metric", "sleep_stage", "--citizen", "citizen-001"])?;
    assert_eq!(stages.len(), N as usize);
    for row in &stages {
        let i = (time_of(row) - base) / 1000;
        assert_eq!(row["value"], stage(i), "sleep stages read back by name");
    }
    let rr = hub.query(&[
        "--metric",
        "respiratory_rate",
        "--every",
        "1h",
        "--agg",
        "count",
    ])?;
    let counted: f64 = rr.iter().filter_map(|r| r["value"].as_f64()).sum();
    assert_eq!(counted, N as f64, "aggregates cover every message");
    hub.terminate()
}

fn mosquitto_pub(port: u16, version: &str, client_id: &str, payload: &str) -> anyhow::Result<()> {
    let output = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            version,
            "-i",
            client_id,
            "-u",
            client_id,
            "-P",
            &common::password(client_id),
            "-q",
            "1",
        ])
        .args([
            "-t",
            &format!("devices/{client_id}/telemetry"),
            "-m",
            payload,
        ])
        .output()
        .context("mosquitto_pub not found; install mosquitto-clients")?;
    anyhow::ensure!(
        output.status.success(),
        "mosquitto_pub -V {version} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[test]
fn mosquitto_pub_messages_arrive_over_mqtt_311_and_5() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &common::config_with_devices(2))?;
    let t = (now_ms() - 60_000) / 1000 * 1000;
    mosquitto_pub(
        hub.port(),
        "mqttv311",
        "bed-001",
        &format!(r#"{{"ts":{t},"hr":61.5,"occ":true}}"#),
    )?;
    mosquitto_pub(
        hub.port(),
        "mqttv5",
        "bed-002",
        &format!(r#"{{"ts":{t},"hr":72,"occ":true}}"#),
    )?;
    let rows = hub.query_at_least(2, &["--metric", "heart_rate"])?;
    let got: HashSet<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["device"].as_str().unwrap_or("").to_owned(),
                r["value"].to_string(),
            )
        })
        .collect();
    assert!(got.contains(&("bed-001".into(), "61.5".into())), "{rows:?}");
    assert!(
        got.contains(&("bed-002".into(), "72.0".into()))
            || got.contains(&("bed-002".into(), "72".into())),
        "{rows:?}"
    );
    assert!(rows.iter().all(|r| time_of(r) == t));
    hub.terminate()
}

#[test]
fn a_vendors_measure_groups_are_stored_through_a_config_profile() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let profile = r#"
[[profiles]]
name = "acme-scale-groups"
kind = "scale"
time = "date"
time_format = "epoch_s"
samples = "/body/measuregrps"
[profiles.measures]
path = "measures"
code = "type"
value = "value"
exponent = "unit"
[profiles.codes]
1 = { metric = "body_weight", unit = "kg" }
6 = { metric = "body_fat", unit = "%" }

"#;
    let config = format!(
        "{profile}[[devices]]\nid = \"scale-001\"\nkind = \"scale\"\ncitizen = \"citizen-001\"\nprofile = \"acme-scale-groups\"\npassword_hash = \"{}\"\n",
        common::password_hash("scale-001")
    );
    let hub = Hub::start(dir.path(), &config)?;
    let t = (now_ms() - 3_600_000) / 1000;
    mosquitto_pub(
        hub.port(),
        "mqttv311",
        "scale-001",
        &format!(
            r#"{{"status":0,"body":{{"measuregrps":[{{"date":{t},"measures":[{{"value":7150,"type":1,"unit":-2}},{{"value":215,"type":6,"unit":-1}}]}},{{"date":{},"measures":[{{"value":7140,"type":1,"unit":-2}}]}}]}}}}"#,
            t + 60
        ),
    )?;
    let weights = hub.query_at_least(2, &["--metric", "body_weight"])?;
    let values: Vec<f64> = weights.iter().filter_map(|r| r["value"].as_f64()).collect();
    assert_eq!(values, vec![71.5, 71.4], "{weights:?}");
    assert_eq!(time_of(&weights[0]), t * 1000);
    let fat = hub.query_at_least(1, &["--metric", "body_fat"])?;
    assert_eq!(fat[0]["value"].as_f64(), Some(21.5), "{fat:?}");
    // A code the profile does not list dead-letters the message, naming the measure.
    mosquitto_pub(
        hub.port(),
        "mqttv311",
        "scale-001",
        &format!(
            r#"{{"body":{{"measuregrps":[{{"date":{t},"measures":[{{"value":5,"type":77,"unit":0}}]}}]}}}}"#
        ),
    )?;
    let letters = Command::new(common::KENKO)
        .args(["deadletter", "list", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()?;
    let listed = String::from_utf8_lossy(&letters.stdout);
    assert!(
        listed.contains(
            "measure 1 of measures has a type that is not one of the profile's codes (1, 6)"
        ),
        "{listed}"
    );
    hub.terminate()
}

/// `kenko deadletter list` of the hub's data directory, as text.
fn dead_letters(hub: &Hub) -> anyhow::Result<String> {
    let out = Command::new(common::KENKO)
        .args(["deadletter", "list", "--data-dir"])
        .arg(&hub.data_dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_gateway_relays_its_households_devices_each_under_its_citizens_consent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let profile = r#"
[[profiles]]
name = "acme-home-gateway"
time = "date"
time_format = "epoch_s"
device = "deviceid"
samples = "/body/measuregrps"
[profiles.measures]
path = "measures"
code = "type"
value = "value"
exponent = "unit"
[profiles.codes]
1 = { metric = "body_weight", unit = "kg" }
10 = { metric = "systolic_bp", unit = "mm[Hg]" }

"#;
    let device = |id: &str, kind: &str, citizen: &str, extra: &str| {
        format!("[[devices]]\nid = \"{id}\"\nkind = \"{kind}\"\ncitizen = \"{citizen}\"\n{extra}\n")
    };
    let config = format!(
        "{profile}{}{}{}{}{}",
        device(
            "home-gw-01",
            "scale",
            "citizen-101",
            &format!(
                "profile = \"acme-home-gateway\"\npassword_hash = \"{}\"\n",
                common::password_hash("home-gw-01")
            )
        ),
        device("bp-102", "bp", "citizen-102", "gateway = \"home-gw-01\"\n"),
        device(
            "scale-103",
            "scale",
            "citizen-103",
            "gateway = \"home-gw-01\"\n"
        ),
        device("bed-104", "bed", "citizen-104", ""),
        device("bed-105", "bed", "citizen-105", ""),
    );
    let hub = Hub::start_without_consent(dir.path(), &config)?;
    // citizen-103 has not (yet) consented to collection.
    common::consent(
        &hub.data_dir,
        "grant",
        &["citizen-101", "citizen-102", "citizen-104"],
        "collect",
    )?;
    let t = (now_ms() - 3_600_000) / 1000;
    let household = format!(
        r#"{{"body":{{"measuregrps":[{{"date":{t},"measures":[{{"value":6432,"type":1,"unit":-2}}]}},{{"deviceid":"bp-102","date":{},"measures":[{{"value":1280,"type":10,"unit":-1}}]}},{{"deviceid":"scale-103","date":{},"measures":[{{"value":7150,"type":1,"unit":-2}}]}}]}}}}"#,
        t + 60,
        t + 120
    );
    mosquitto_pub(hub.port(), "mqttv5", "home-gw-01", &household)?;
    let pressure = hub.query_at_least(1, &["--metric", "systolic_bp"])?;
    assert_eq!(
        (
            &pressure[0]["device"],
            &pressure[0]["citizen"],
            pressure[0]["value"].as_f64()
        ),
        (
            &serde_json::json!("bp-102"),
            &serde_json::json!("citizen-102"),
            Some(128.0)
        ),
        "{pressure:?}"
    );
    assert_eq!(time_of(&pressure[0]), (t + 60) * 1000);
    // The gateway's own weight is stored; that of citizen-103, who has not consented, not.
    let weights = hub.query(&["--metric", "body_weight"])?;
    let got: Vec<(&str, f64)> = weights
        .iter()
        .map(|r| {
            (
                r["device"].as_str().unwrap_or(""),
                r["value"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    assert_eq!(got, [("home-gw-01", 64.32)], "{weights:?}");

    // A refused message of the gateway may hold citizen-103's readings: kept nowhere.
    mosquitto_pub(
        hub.port(),
        "mqttv5",
        "home-gw-01",
        r#"{"body":{"measuregrps":7}}"#,
    )?;
    // A device registered, but not behind the gateway: the whole message is refused.
    let not_behind = format!(
        r#"{{"body":{{"measuregrps":[{{"deviceid":"bed-104","date":{t},"measures":[{{"value":6400,"type":1,"unit":-2}}]}}]}}}}"#
    );
    common::consent(&hub.data_dir, "grant", &["citizen-103"], "collect")?;
    // Nor is one naming a device of citizen-105, who has not consented either.
    mosquitto_pub(
        hub.port(),
        "mqttv5",
        "home-gw-01",
        &not_behind.replace("bed-104", "bed-105"),
    )?;
    mosquitto_pub(hub.port(), "mqttv5", "home-gw-01", &not_behind)?;
    let letters = dead_letters(&hub)?;
    assert!(
        letters.contains("client_mismatch")
            && letters
                .contains("device bed-104, named in deviceid, is not registered behind home-gw-01"),
        "{letters}"
    );
    assert!(!letters.contains("malformed_payload"), "{letters}");
    assert!(!letters.contains("bed-105"), "{letters}");

    // Once citizen-103 consents, the same household message stores their weight too.
    mosquitto_pub(hub.port(), "mqttv5", "home-gw-01", &household)?;
    let weights = hub.query_at_least(2, &["--metric", "body_weight"])?;
    let of_103: Vec<_> = weights
        .iter()
        .filter(|r| r["citizen"] == "citizen-103" && r["device"] == "scale-103")
        .collect();
    assert_eq!(of_103.len(), 1, "{weights:?}");
    assert_eq!(of_103[0]["value"].as_f64(), Some(71.5));
    assert!(hub
        .query(&["--metric", "body_weight", "--device", "bed-104"])?
        .is_empty());
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_device_and_malformed_payload_are_dead_lettered_while_others_continue(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A gateway relays for devices behind it; the operator's rules let it publish any
    // device's telemetry, so an unregistered device id reaches the stream processor.
    let acl = format!(
        "{}\n[[rule]]\neffect = \"allow\"\nrole = \"gateway\"\naction = \"publish\"\ntopic = \"devices/+/telemetry\"\n",
        include_str!("../config/acl.default.toml")
    );
    std::fs::write(dir.path().join("acl.toml"), acl)?;
    let config = format!(
        "{}{}[auth]\nacl = \"acl.toml\"\n",
        common::config_with_devices(3),
        common::principal("gateway-1", &["gateway"])
    );
    let hub = Hub::start(dir.path(), &config)?;

    // A watcher of error topics, as an operator or the device itself would be.
    let (watcher, watch_loop) = hub.device("operator-1");
    let errors = common::watch_device_errors(&watcher, watch_loop, 2).await?;

    // bed-003 keeps publishing valid telemetry throughout.
    let (good, mut good_loop) = hub.device("bed-003");
    let base = (now_ms() - 600_000) / 1000 * 1000;
    let good_task = tokio::spawn(async move {
        let mut acked = 0;
        while acked < 200 {
            if let Event::Incoming(Incoming::PubAck(_)) = good_loop.poll().await? {
                acked += 1;
            }
        }
        anyhow::Ok(acked)
    });

    let (unknown, mut unknown_loop) = hub.device("gateway-1");
    let (broken, mut broken_loop) = hub.device("bed-002");
    tokio::spawn(async move { while unknown_loop.poll().await.is_ok() {} });
    tokio::spawn(async move { while broken_loop.poll().await.is_ok() {} });
    for i in 0..200 {
        let payload = format!(
            r#"{{"ts":{},"seq":{},"hr":60,"occ":true}}"#,
            base + i * 1000,
            i + 1
        );
        good.publish(
            "devices/bed-003/telemetry",
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await?;
        if i == 50 {
            unknown
                .publish(
                    "devices/bed-999/telemetry",
                    QoS::AtLeastOnce,
                    false,
                    format!(r#"{{"ts":{base},"hr":60}}"#),
                )
                .await?;
            broken
                .publish(
                    "devices/bed-002/telemetry",
                    QoS::AtLeastOnce,
                    false,
                    "not json at all",
                )
                .await?;
        }
    }
    let acked = tokio::time::timeout(Duration::from_secs(60), good_task).await???;
    assert_eq!(acked, 200);

    let errors = errors.await?;
    let unknown_error = errors
        .get("devices/bed-999/errors")
        .context("no error published for the unknown device")?;
    assert_eq!(unknown_error["code"], "unknown_device");
    assert!(unknown_error["reason"]
        .as_str()
        .unwrap_or("")
        .contains("bed-999"));
    let malformed = errors
        .get("devices/bed-002/errors")
        .context("no error published for the malformed payload")?;
    assert_eq!(malformed["code"], "malformed_payload");

    // Both are in the dead-letter store with their reason and payload.
    let db = rusqlite::Connection::open(hub.data_dir.join("deadletter.db"))?;
    let letters: Vec<(String, String, Vec<u8>)> = db
        .prepare("SELECT reason_code, reason, payload FROM dead_letters ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters.iter().any(|(code, _, _)| code == "unknown_device"));
    assert!(letters
        .iter()
        .any(|(code, why, payload)| code == "malformed_payload"
            && !why.is_empty()
            && payload == b"not json at all"));

    // Nothing of the valid traffic was lost (the store sink follows the log, so it may
    // still be writing what was acknowledged).
    let stored = common::eventually(Duration::from_secs(30), || {
        let rows = hub.query(&["--metric", "heart_rate", "--device", "bed-003"])?;
        Ok((rows.len() >= 200).then_some(rows.len()))
    })?;
    assert_eq!(stored, 200);
    hub.terminate()
}

/// Publishes continuously from several devices; returns the event times that were acknowledged.
async fn publish_until_stopped(
    hub_port: u16,
    device: String,
    base: i64,
    stop: tokio_util::sync::CancellationToken,
) -> HashSet<i64> {
    let mut options = rumqttc::MqttOptions::new(device.clone(), "127.0.0.1", hub_port);
    options.set_keep_alive(Duration::from_secs(10));
    options.set_credentials(device.clone(), common::password(&device));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
    let mut acked = HashSet::new();
    let mut sent: VecDeque<i64> = VecDeque::new();
    let mut in_flight: HashMap<u16, i64> = HashMap::new();
    let mut i = 0i64;
    loop {
        tokio::select! {
            _ = stop.cancelled(), if !stop.is_cancelled() => {}
            event = eventloop.poll() => match event {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(ts) = sent.pop_front() { in_flight.insert(pkid, ts); }
                }
                Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                    if let Some(ts) = in_flight.remove(&ack.pkid) { acked.insert(ts); }
                }
                Ok(_) => {}
                Err(_) => return acked,
            },
            _ = tokio::time::sleep(Duration::from_millis(2)), if !stop.is_cancelled() && sent.len() < 10 => {
                let ts = base + i * 1000;
                i += 1;
                let payload = format!(r#"{{"ts":{ts},"seq":{i},"hr":60,"occ":true}}"#);
                if client.try_publish(format!("devices/{device}/telemetry"), QoS::AtLeastOnce, false, payload).is_ok() {
                    sent.push_back(ts);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_traffic_loses_no_acknowledged_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &common::config_with_devices(5))?;
    let stop = tokio_util::sync::CancellationToken::new();
    let base = (now_ms() - 3_600_000) / 1000 * 1000;
    let publishers: Vec<_> = (1..=5)
        .map(|n| {
            tokio::spawn(publish_until_stopped(
                hub.port(),
                format!("bed-{n:03}"),
                base,
                stop.clone(),
            ))
        })
        .collect();
    // Let traffic build up, then stop the hub while it flows.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (data_dir, config) = (hub.data_dir.clone(), hub.config.clone());
    tokio::task::spawn_blocking(move || hub.terminate()).await??;
    stop.cancel();
    let mut acked = HashMap::new();
    for (n, task) in publishers.into_iter().enumerate() {
        acked.insert(format!("bed-{:03}", n + 1), task.await?);
    }
    let total: usize = acked.values().map(HashSet::len).sum();
    assert!(
        total > 50,
        "traffic was flowing before SIGTERM ({total} acknowledged)"
    );

    // Restart on the same data directory: everything acknowledged is there.
    let hub = Hub::start_with(dir.path(), &config)?;
    assert_eq!(hub.data_dir, data_dir);
    for (device, times) in &acked {
        let rows = hub.query(&["--metric", "heart_rate", "--device", device])?;
        let stored: HashSet<i64> = rows.iter().map(time_of).collect();
        let missing: Vec<_> = times.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "{device}: {} acknowledged messages missing after restart",
            missing.len()
        );
    }
    hub.terminate()
}

#[test]
fn query_explains_a_missing_store_and_an_unknown_metric() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let err = common::query(dir.path(), &["--metric", "heart_rate"]).expect_err("no store");
    assert!(err.to_string().contains("no store at"), "{err}");
    let hub = Hub::start(dir.path(), &common::config_with_devices(1))?;
    let err = hub
        .query(&["--metric", "pulse"])
        .expect_err("unknown metric");
    assert!(err.to_string().contains("unknown metric"), "{err}");
    hub.terminate()
}
