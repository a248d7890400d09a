//! Telemetry a test publishes as a device would: kenko.telemetry.v1 protobuf on the device's
//! `/pb` topic, at QoS 1, waiting for every acknowledgement.

use std::time::Duration;

use kenko_proto::telemetry::{Reading, Sample, Telemetry};
use prost::Message;
use rumqttc::{Event, Incoming, QoS};

use super::Hub;

const MIN: i64 = 60_000;

/// A desaturation: SpO2 of `value` % from `device`, one reading a minute for `minutes`
/// minutes ending now.
pub fn desaturation(device: &str, minutes: i64, value: f64) -> Vec<(String, Vec<u8>)> {
    let start = super::now_ms() - minutes * MIN;
    (0..minutes)
        .map(|i| {
            let payload = Telemetry {
                seq: i as u64 + 1,
                samples: vec![Sample {
                    time_ms: start + i * MIN,
                    readings: vec![Reading {
                        metric: "spo2".into(),
                        value,
                    }],
                }],
            }
            .encode_to_vec();
            (format!("devices/{device}/telemetry/pb"), payload)
        })
        .collect()
}

/// Publishes `messages` from `device` at QoS 1 and waits for every acknowledgement.
pub async fn publish(
    hub: &Hub,
    device: &str,
    messages: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let (client, mut eventloop) = hub.device(device);
    let n = messages.len();
    for (topic, payload) in messages {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
    }
    let mut acked = 0;
    while acked < n {
        let event = tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await??;
        if let Event::Incoming(Incoming::PubAck(_)) = event {
            acked += 1;
        }
    }
    client.disconnect().await?;
    Ok(())
}
