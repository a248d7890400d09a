//! One QoS 1 publisher: sends messages while fewer than `inflight` are unacknowledged, and
//! reads PUBACKs until every message is acknowledged.

use std::time::Duration;

use crate::mqtt::{self, Conn, Packet};

/// How far a publisher got: acknowledged messages, and the error that stopped it early.
pub struct Published {
    pub acked: u64,
    pub error: Option<anyhow::Error>,
}

/// Publishes `msgs` messages to `topic`, message `n`'s payload from `payload(n)`, and waits
/// for every PUBACK. `wait` bounds the silence between two reads.
pub async fn publish_all(
    conn: &mut Conn,
    topic: &str,
    msgs: u64,
    inflight: u64,
    wait: Duration,
    mut payload: impl FnMut(u64) -> Vec<u8>,
) -> Published {
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut out = Vec::with_capacity(16 * 1024);
    while acked < msgs {
        out.clear();
        while sent < msgs && sent - acked < inflight.max(1) {
            mqtt::publish_qos1(&mut out, topic, mqtt::packet_id(sent), &payload(sent));
            sent += 1;
        }
        let step = async {
            if !out.is_empty() {
                conn.send(&out).await?;
            }
            acked += count_pubacks(conn, wait).await?;
            anyhow::Ok(())
        };
        if let Err(error) = step.await {
            return Published {
                acked,
                error: Some(error),
            };
        }
    }
    Published { acked, error: None }
}

/// Waits for one packet, then takes whatever else is already buffered; counts PUBACKs.
async fn count_pubacks(conn: &mut Conn, wait: Duration) -> anyhow::Result<u64> {
    let is_ack = |packet: &Packet| u64::from(matches!(packet, Packet::PubAck { .. }));
    let mut acks = is_ack(&conn.read_within(wait).await?);
    while let Some(packet) = conn.buffered_packet()? {
        acks += is_ack(&packet);
    }
    Ok(acks)
}

/// How often a paced publisher looks whether more messages are due.
const TICK: Duration = Duration::from_millis(10);

/// Publishes `msgs` messages at `per_s` a second: every [`TICK`], what has come due since
/// goes out as [`publish_all`] sends it (at most `inflight` unacknowledged).
pub async fn publish_paced(
    conn: &mut Conn,
    topic: &str,
    msgs: u64,
    inflight: u64,
    per_s: f64,
    wait: Duration,
    mut payload: impl FnMut(u64) -> Vec<u8>,
) -> Published {
    let started = tokio::time::Instant::now();
    let mut done = 0u64;
    while done < msgs {
        let due = ((started.elapsed().as_secs_f64() * per_s) as u64 + 1).min(msgs);
        if due <= done {
            tokio::time::sleep(TICK).await;
            continue;
        }
        let from = done;
        let burst = publish_all(conn, topic, due - done, inflight, wait, |n| {
            payload(from + n)
        })
        .await;
        done += burst.acked;
        if burst.error.is_some() {
            return Published {
                acked: done,
                error: burst.error,
            };
        }
    }
    Published {
        acked: done,
        error: None,
    }
}
