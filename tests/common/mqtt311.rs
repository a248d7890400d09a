//! Event-loop helpers for rumqttc's MQTT 3.1.1 client, shared by the end-to-end tests.

use std::time::Duration;

use rumqttc::{ConnAck, Event, EventLoop, Incoming, Publish, SubAck};

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
