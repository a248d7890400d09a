//! Event-loop helpers for rumqttc's MQTT 3.1.1 client, shared by the end-to-end tests.

use std::time::Duration;

use rumqttc::{AsyncClient, ConnAck, Event, EventLoop, Incoming, LastWill, Publish, QoS, SubAck};

/// Polls until a publish arrives, or `limit` passes (`None` also when the connection ends).
pub async fn next_publish(eventloop: &mut EventLoop, limit: Duration) -> Option<Publish> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => return Some(p),
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

/// Polls until the CONNACK arrives.
pub async fn until_connack(eventloop: &mut EventLoop) -> anyhow::Result<ConnAck> {
    loop {
        if let Event::Incoming(Incoming::ConnAck(ack)) = eventloop.poll().await? {
            return Ok(ack);
        }
    }
}

/// Polls until the next SUBACK arrives.
pub async fn until_suback(eventloop: &mut EventLoop) -> anyhow::Result<SubAck> {
    loop {
        if let Event::Incoming(Incoming::SubAck(ack)) = eventloop.poll().await? {
            return Ok(ack);
        }
    }
}

/// Polls until the broker has acknowledged `count` QoS 1 publishes.
pub async fn until_pubacks(eventloop: &mut EventLoop, count: usize) -> anyhow::Result<()> {
    let mut acked = 0;
    while acked < count {
        if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await? {
            acked += 1;
        }
    }
    Ok(())
}

/// A client of `hub` named `client_id` with a QoS 1 will (`payload` on `topic`), connected.
pub async fn connected_with_will(
    hub: &crate::common::Hub,
    client_id: &str,
    topic: &str,
    payload: &str,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let mut options = hub.options(client_id);
    options.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, false));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    until_connack(&mut eventloop).await?;
    Ok((client, eventloop))
}
