//! End to end: the reason a message was refused, published on `devices/{id}/errors` where
//! operators read it, names the field and the rule but never the reading; the reading stays
//! in the dead letter's stored payload.

mod common;

use std::time::Duration;

use anyhow::Context as _;
use common::{now_ms, Hub};
use rumqttc::{Event, Incoming, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_readings_reason_does_not_contain_the_reading() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = common::config_with_devices(3).replace(
        "batch_linger_ms = 2\n",
        "batch_linger_ms = 2\nplausibility = \"reject\"\n",
    );
    let hub = Hub::start(dir.path(), &config)?;

    let (watcher, watch_loop) = hub.device("operator-1");
    let errors = common::watch_device_errors(&watcher, watch_loop, 3).await?;

    let ts = now_ms() - 60_000;
    // Each value is one that would be recognisable in a reason.
    let sent = [
        ("bed-001", format!(r#"{{"ts":{ts},"hr":287.5}}"#), "287.5"),
        ("bed-002", format!(r#"{{"ts":{ts},"hr":"93.25"}}"#), "93.25"),
        (
            "bed-003",
            format!(r#"{{"ts":{ts},"stage":"dreaming"}}"#),
            "dreaming",
        ),
    ];
    for (device, payload, _) in &sent {
        let (client, mut event_loop) = hub.device(device);
        client
            .publish(
                format!("devices/{device}/telemetry"),
                QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await?;
        tokio::time::timeout(Duration::from_secs(10), async {
            while !matches!(
                event_loop.poll().await?,
                Event::Incoming(Incoming::PubAck(_))
            ) {}
            anyhow::Ok(())
        })
        .await??;
        client.disconnect().await?;
    }

    let errors = errors.await?;
    for ((device, payload, value), (code, field)) in sent.iter().zip([
        (
            "implausible_value",
            "field `hr` (heart_rate) is outside the plausible range",
        ),
        ("malformed_payload", "field hr"),
        ("malformed_payload", "field stage"),
    ]) {
        let error = errors
            .get(&format!("devices/{device}/errors"))
            .with_context(|| format!("no error published for {device}: {errors:?}"))?;
        let reason = error["reason"].as_str().unwrap_or("");
        assert_eq!(error["code"], code, "{error}");
        assert!(reason.contains(field), "{device}: {reason}");
        assert!(!reason.contains(value), "{device} {payload}: {reason}");
    }

    // The readings stay in the dead letters, for operators with access to identified data.
    let db = rusqlite::Connection::open(hub.data_dir.join("deadletter.db"))?;
    let letters: Vec<(String, Vec<u8>)> = db
        .prepare("SELECT reason, payload FROM dead_letters ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    assert_eq!(letters.len(), 3, "{letters:?}");
    for (_, _, value) in &sent {
        let letter = letters
            .iter()
            .find(|(_, payload)| String::from_utf8_lossy(payload).contains(value))
            .with_context(|| format!("no dead letter holds {value}"))?;
        assert!(!letter.0.contains(value), "{}", letter.0);
    }
    hub.terminate()
}
