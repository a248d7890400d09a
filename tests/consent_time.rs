//! End to end: consent is decided by the observation's event time on every path. A reading
//! from before a care consent's start (a wearable's late upload) is never delivered live to
//! the care service, never returned by the HTTP API or `kenko query --principal`, and never
//! copied to research before a research consent's start; a reading inside the window is.
//! Only the hub can say when a delivered observation was made.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Hub;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;

/// Two days: late, but well inside the hub's 7-day late-data window.
const LATE_MS: i64 = 2 * 24 * 3_600_000;
/// Heart rates that tell a late reading from one inside the consent's window.
const LATE_HR: i64 = 41;
const FRESH_HR: i64 = 71;

/// Rules after the built-in ones: a principal that may publish observation topics itself.
const RULES: &str = r#"
[[rule]]
effect = "allow"
role = "forger"
action = "publish"
topic = "citizens/#"
"#;

/// Devices bed-001/002, care service st-luke, principal forger, live republishing and the
/// HTTP API on.
fn config(dir: &Path) -> anyhow::Result<String> {
    let rules = format!("{}\n{RULES}", include_str!("../config/acl.default.toml"));
    std::fs::write(dir.join("acl.toml"), rules)?;
    Ok(format!(
        "{}{}{}[ingest]\nlive_republish = true\nbatch_linger_ms = 2\n\n[auth]\nacl = \"acl.toml\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
        common::config_with_devices(2).replace("[ingest]\nbatch_linger_ms = 2\n", ""),
        common::principal("st-luke", &["care"]),
        common::principal("forger", &["forger"]),
    ))
}

/// What the care service received: topic, payload, and whether the delivery still carried
/// the hub's event-time property.
type Inbox = Arc<Mutex<Vec<(String, Value, bool)>>>;

/// An MQTT 5 care service subscribed to every citizen's observations.
async fn care_service(hub: &Hub) -> anyhow::Result<(AsyncClient, Inbox)> {
    let mut options = MqttOptions::new("st-luke", "127.0.0.1", hub.port());
    options.set_credentials("st-luke", common::password("st-luke"));
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    client
        .subscribe("citizens/+/observations/+", QoS::AtLeastOnce)
        .await?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await??;
        if let Event::Incoming(Packet::SubAck(ack)) = event {
            anyhow::ensure!(
                format!("{:?}", ack.return_codes).contains("Success"),
                "care services may subscribe to observations: {ack:?}"
            );
            break;
        }
    }
    let inbox: Inbox = Arc::default();
    let sink = inbox.clone();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                let body = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                let tagged = p.properties.as_ref().is_some_and(|props| {
                    props
                        .user_properties
                        .iter()
                        .any(|(k, _)| k == "kenko-event-ms")
                });
                sink.lock().expect("lock").push((topic, body, tagged));
            }
        }
    });
    Ok((client, inbox))
}

/// Publishes one heart-rate reading of `device` made at `ts` (QoS 1).
async fn reading(
    device: &rumqttc::AsyncClient,
    name: &str,
    ts: i64,
    hr: i64,
) -> anyhow::Result<()> {
    device
        .publish(
            format!("devices/{name}/telemetry"),
            rumqttc::QoS::AtLeastOnce,
            false,
            format!(r#"{{"ts":{ts},"hr":{hr}}}"#),
        )
        .await?;
    Ok(())
}

fn received(inbox: &Inbox, citizen: &str) -> Vec<(Value, bool)> {
    let prefix = format!("citizens/{citizen}/");
    inbox
        .lock()
        .expect("lock")
        .iter()
        .filter(|(topic, _, _)| topic.starts_with(&prefix))
        .map(|(_, body, tagged)| (body.clone(), *tagged))
        .collect()
}

fn heart_rates(rows: &[Value]) -> Vec<i64> {
    rows.iter()
        .filter_map(|r| r["value"].as_f64())
        .map(|v| v as i64)
        .collect()
}

/// `kenko query --principal` as `principal`, with the hub's config.
fn query_as(hub: &Hub, principal: &str, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let out = Command::new(common::KENKO)
        .args(["query", "--format", "json", "--data-dir"])
        .arg(&hub.data_dir)
        .args(["--principal", principal, "--config"])
        .arg(&hub.config)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kenko query --principal {principal}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_from_before_a_care_consent_reaches_the_care_service_on_no_path(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config(dir.path())?)?;
    let (_care, inbox) = care_service(&hub).await?;
    let care = [
        "--grantee",
        "st-luke",
        "--types",
        "heart_rate",
        "--from",
        "now",
    ];
    common::consent_with(&hub.data_dir, "grant", &["citizen-001"], "care", &care)?;
    let granted_ms = common::now_ms();

    let (bed, mut eventloop) = hub.device("bed-001");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    // A late reading and a fresh one, again and again until the hub has put the consent in
    // force and a fresh one is delivered; then once more, with the consent surely in force.
    let mut sent = 0i64;
    let mut send_pair = || {
        sent += 1;
        let now = common::now_ms();
        (now - LATE_MS + sent, now + sent)
    };
    let mut delivered = false;
    for _ in 0..50 {
        let (late, fresh) = send_pair();
        reading(&bed, "bed-001", late, LATE_HR).await?;
        reading(&bed, "bed-001", fresh, FRESH_HR).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !received(&inbox, "citizen-001").is_empty() {
            delivered = true;
            break;
        }
    }
    anyhow::ensure!(
        delivered,
        "a fresh reading was delivered live under the consent"
    );
    let before = received(&inbox, "citizen-001").len();
    let (late, fresh) = send_pair();
    reading(&bed, "bed-001", late, LATE_HR).await?;
    reading(&bed, "bed-001", fresh, FRESH_HR).await?;
    common::eventually(Duration::from_secs(10), || {
        Ok((received(&inbox, "citizen-001").len() > before).then_some(()))
    })?;

    // Live: only readings made inside the consent's window, without the hub's property.
    let live = received(&inbox, "citizen-001");
    for (body, tagged) in &live {
        assert_eq!(body["value"].as_f64(), Some(FRESH_HR as f64), "{live:?}");
        assert_eq!(
            (&body["unit"], &body["loinc"]),
            (&Value::from("/min"), &Value::from("8867-4")),
            "a live reading names its UCUM unit and LOINC code"
        );
        assert!(!tagged, "the event-time property is the hub's own: {body}");
    }
    let times: Vec<i64> = live
        .iter()
        .filter_map(|(b, _)| b["time"].as_str())
        .filter_map(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond())
        .collect();
    assert!(
        times.len() == live.len() && times.iter().all(|&t| t >= granted_ms - 1_000),
        "{live:?}"
    );

    // Everything was stored (collection has no start): the late readings are there.
    let all = hub.query_at_least(
        2 * sent as usize,
        &["--metric", "heart_rate", "--citizen", "citizen-001"],
    )?;
    assert!(heart_rates(&all).contains(&LATE_HR), "{all:?}");

    // The HTTP API returns the readings in the window and none before it.
    let api = hub.http_addr.expect("HTTP API announced");
    let path = "/api/v1/observations?metric=heart_rate&citizen=citizen-001&from=-3d";
    let (status, rows) = common::http(api, "GET", path, Some("st-luke"), None)?;
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert_eq!(status, 200, "{rows:?}");
    let rates = heart_rates(&rows);
    assert!(
        !rates.is_empty() && rates.iter().all(|&hr| hr == FRESH_HR),
        "{rows:?}"
    );
    assert_eq!(rates.len(), sent as usize, "every fresh reading: {rows:?}");
    // An aggregate over buckets that reach before the consent's start is not shown either.
    let daily = format!("{path}&every=1d&agg=mean");
    let (_, buckets) = common::http(api, "GET", &daily, Some("st-luke"), None)?;
    let buckets = buckets.as_array().cloned().unwrap_or_default();
    assert!(
        heart_rates(&buckets).iter().all(|&hr| hr == FRESH_HR),
        "a day's mean would mix in the late readings: {buckets:?}"
    );

    // `kenko query --principal` applies the same rule.
    let rows = query_as(
        &hub,
        "st-luke",
        &["--metric", "heart_rate", "--from", "-3d"],
    )?;
    let rates = heart_rates(&rows);
    assert_eq!(rates.len(), sent as usize, "{rows:?}");
    assert!(rates.iter().all(|&hr| hr == FRESH_HR), "{rows:?}");
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_from_before_a_research_consent_gets_no_research_copy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config(dir.path())?)?;
    common::consent_with(
        &hub.data_dir,
        "grant",
        &["citizen-002"],
        "research",
        &["--from", "now"],
    )?;
    let (bed, mut eventloop) = hub.device("bed-002");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    // The writer decides each batch with every record committed before it: wait for one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let now = common::now_ms();
    reading(&bed, "bed-002", now - LATE_MS, LATE_HR).await?;
    reading(&bed, "bed-002", now, FRESH_HR).await?;
    let personal = hub.query_at_least(2, &["--metric", "heart_rate"])?;
    assert_eq!(heart_rates(&personal).len(), 2, "{personal:?}");
    let shared = hub.query_at_least(1, &["--store", "shared", "--metric", "heart_rate"])?;
    assert_eq!(heart_rates(&shared), vec![FRESH_HR], "{shared:?}");
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_claim_an_event_time_to_pass_a_consent_rule() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config(dir.path())?)?;
    let (_care, inbox) = care_service(&hub).await?;
    common::consent_with(
        &hub.data_dir,
        "grant",
        &["citizen-001"],
        "care",
        &["--grantee", "st-luke", "--types", "heart_rate"],
    )?;
    let (bed, mut eventloop) = hub.device("bed-001");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });

    // A principal allowed to publish on observation topics sets the hub's property itself.
    let forged = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &hub.port().to_string()])
        .args(["-V", "mqttv5", "-q", "1"])
        .args([
            "-i",
            "forger",
            "-u",
            "forger",
            "-P",
            &common::password("forger"),
        ])
        .args(["-D", "publish", "user-property", "kenko-event-ms"])
        .arg(common::now_ms().to_string())
        .args(["-t", "citizens/citizen-001/observations/heart_rate"])
        .args(["-m", r#"{"forged":true}"#])
        .output()?;
    assert!(
        forged.status.success(),
        "{}",
        String::from_utf8_lossy(&forged.stderr)
    );
    // The hub's own observation, published after it, arrives; the forged one never does.
    for _ in 0..50 {
        reading(&bed, "bed-001", common::now_ms(), FRESH_HR).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !received(&inbox, "citizen-001").is_empty() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live = received(&inbox, "citizen-001");
    assert!(!live.is_empty(), "the hub's observations are delivered");
    assert!(
        live.iter().all(|(body, _)| body["forged"].is_null()),
        "a delivery without the hub's event time is withheld: {live:?}"
    );
    hub.terminate()
}
