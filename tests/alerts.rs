//! Alerts end to end on a real `kenko serve`: a desaturation published by two citizens'
//! devices raises an alert only for the one whose care consent covers the care service;
//! the service gets it on `care/{service}/alerts` and over the API, acknowledges it, and a
//! withdrawal hides it. No alert ever names a citizen without consent.

mod common;

use std::time::Duration;

use common::readings::{desaturation, publish};
use common::Hub;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, QoS, SubscribeReasonCode};

const MIN: i64 = 60_000;

fn config() -> String {
    format!(
        "{}{}{}[[alerts]]\nname = \"low-spo2\"\nmetric = \"spo2\"\nbelow = 90.0\nfor_min = 2\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
        common::config_with_devices(2),
        common::principal("care-team", &["care"]),
        common::principal("other-care", &["care"]),
    )
}

/// A care service subscribed to `topic`; the SUBACK's codes.
async fn subscribe(
    hub: &Hub,
    service: &str,
    topic: &str,
) -> anyhow::Result<(AsyncClient, EventLoop, Vec<SubscribeReasonCode>)> {
    // A client id of its own, so that two clients of one service do not take over.
    let mut options = hub.options(&format!("{service}-{}", topic.replace('/', "-")));
    options.set_credentials(service, common::password(service));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    client.subscribe(topic, QoS::AtLeastOnce).await?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await??;
        if let Event::Incoming(Incoming::SubAck(ack)) = event {
            return Ok((client, eventloop, ack.return_codes));
        }
    }
}

/// The next message of `eventloop`, if one comes within `wait`.
async fn next_message(eventloop: &mut EventLoop, wait: Duration) -> anyhow::Result<Option<String>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => return Ok(None),
            Ok(event) => {
                if let Event::Incoming(Incoming::Publish(p)) = event? {
                    return Ok(Some(String::from_utf8_lossy(&p.payload).into_owned()));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desaturation_alerts_only_the_care_service_the_citizen_consented_to() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let api = hub.http_addr.expect("http listener");
    common::care_consent(dir.path(), "grant", "citizen-001", "care-team")?;
    let (_watch, mut alerts, codes) = subscribe(&hub, "care-team", "care/care-team/alerts").await?;
    assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    let (_other, mut other_alerts, _) =
        subscribe(&hub, "other-care", "care/other-care/alerts").await?;
    let (_peek, _, refused) = subscribe(&hub, "other-care", "care/care-team/alerts").await?;
    assert_eq!(
        refused,
        vec![SubscribeReasonCode::Failure],
        "another service's alerts"
    );

    // citizen-002 desaturates too, but has consented to no care service.
    publish(&hub, "bed-002", desaturation("bed-002", 4, 85.0)).await?;
    publish(&hub, "bed-001", desaturation("bed-001", 4, 85.0)).await?;

    let message = next_message(&mut alerts, Duration::from_secs(30))
        .await?
        .expect("an alert on care/care-team/alerts");
    let alert: serde_json::Value = serde_json::from_str(&message)?;
    assert_eq!(alert["rule"], "low-spo2");
    assert_eq!(alert["citizen"], "citizen-001");
    assert_eq!(alert["device"], "bed-001");
    assert_eq!(alert["value"], 85.0);
    // The run began with the first reading and lasted two minutes at the third.
    let started: jiff::Timestamp = alert["started"].as_str().unwrap_or("").parse()?;
    let event: jiff::Timestamp = alert["event_time"].as_str().unwrap_or("").parse()?;
    assert_eq!(event.as_millisecond() - started.as_millisecond(), 2 * MIN);
    assert_eq!(
        next_message(&mut alerts, common::QUIET).await?,
        None,
        "raised once"
    );
    assert_eq!(
        next_message(&mut other_alerts, common::QUIET).await?,
        None,
        "nothing for a service without consent"
    );

    let (status, listed) = common::http(api, "GET", "/api/v1/alerts", Some("care-team"), None)?;
    assert_eq!(status, 200, "{listed}");
    let listed = listed.as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["citizen"], "citizen-001");
    let (_, others) = common::http(api, "GET", "/api/v1/alerts", Some("other-care"), None)?;
    assert_eq!(others, serde_json::json!([]));
    let (status, _) = common::http(api, "GET", "/api/v1/alerts", Some("operator-1"), None)?;
    assert_eq!(status, 403, "alerts are for care services");
    let (_, metrics) = common::http_text(api, "GET", "/metrics", Some("operator-1"), None)?;
    assert_eq!(common::metric(&metrics, "kenko_alerts_raised_total"), 1.0);
    assert_eq!(
        common::metric(&metrics, "kenko_alerts_unaddressed_total"),
        1.0,
        "citizen-002's"
    );

    // Acknowledged once; then no longer open.
    let id = listed[0]["id"].as_i64().expect("id");
    let (status, _) = common::http(
        api,
        "POST",
        &format!("/api/v1/alerts/{id}/ack"),
        Some("other-care"),
        None,
    )?;
    assert_eq!(status, 404, "not another service's to acknowledge");
    let (status, acked) = common::http(
        api,
        "POST",
        &format!("/api/v1/alerts/{id}/ack"),
        Some("care-team"),
        None,
    )?;
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["acknowledged_by"], "care-team");
    let (_, open) = common::http(api, "GET", "/api/v1/alerts", Some("care-team"), None)?;
    assert_eq!(open, serde_json::json!([]));
    let (_, all) = common::http(
        api,
        "GET",
        "/api/v1/alerts?state=all",
        Some("care-team"),
        None,
    )?;
    assert_eq!(all.as_array().map(Vec::len), Some(1));

    // A withdrawal hides the citizen's alerts from the service.
    common::care_consent(dir.path(), "revoke", "citizen-001", "care-team")?;
    common::eventually(Duration::from_secs(10), || {
        let (_, all) = common::http(
            api,
            "GET",
            "/api/v1/alerts?state=all",
            Some("care-team"),
            None,
        )?;
        Ok((all == serde_json::json!([])).then_some(()))
    })?;
    hub.terminate()
}
