//! Devices publishing heart rates at QoS 1, one message in flight each, through every
//! disconnect; each records the sequence numbers the hub acknowledged, so that a test can
//! check every acknowledged reading against the store.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use super::password;

/// When a device's messages were made: device `index` (its place in the fleet's list) sends
/// message `seq` at `base_ms + index * device_span_ms + seq * step_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    pub base_ms: i64,
    pub device_span_ms: i64,
    pub step_ms: i64,
}

impl Times {
    pub fn at(&self, index: usize, seq: u64) -> i64 {
        self.base_ms + index as i64 * self.device_span_ms + seq as i64 * self.step_ms
    }
}

type Acked = Arc<Mutex<HashMap<String, Vec<u64>>>>;

/// Every acknowledged (device, seq) as (device, event time), for a fleet whose devices all
/// share `times` (`device_span_ms` 0: a device's place in the list does not matter).
pub fn acknowledged_points(
    acked: &HashMap<String, Vec<u64>>,
    times: Times,
) -> BTreeSet<(String, i64)> {
    acked
        .iter()
        .flat_map(|(d, seqs)| seqs.iter().map(move |s| (d.clone(), times.at(0, *s))))
        .collect()
}

/// Waits up to `limit` until `have()` (how often each point is stored, in `what`) holds every
/// point of `want` exactly once; the error says what was still missing or repeated.
pub fn all_stored(
    what: &str,
    limit: Duration,
    want: &BTreeSet<(String, i64)>,
    mut have: impl FnMut() -> anyhow::Result<HashMap<(String, i64), usize>>,
) -> anyhow::Result<()> {
    let mut last = String::new();
    let result = super::eventually(limit, || match missing_or_repeated(what, &have()?, want) {
        None => Ok(Some(())),
        Some(why) => {
            last = why;
            Ok(None)
        }
    });
    result.map_err(|e| anyhow::anyhow!("{e}: {last}"))
}

/// What is wrong with `have` (how often each (device, time) is stored) against `want`:
/// acknowledged points missing and points stored more than once; `None` if nothing.
pub fn missing_or_repeated(
    what: &str,
    have: &HashMap<(String, i64), usize>,
    want: &BTreeSet<(String, i64)>,
) -> Option<String> {
    let missing: Vec<_> = want.iter().filter(|k| !have.contains_key(*k)).collect();
    let repeated: Vec<_> = have.iter().filter(|(_, n)| **n > 1).collect();
    if missing.is_empty() && repeated.is_empty() {
        return None;
    }
    Some(format!(
        "{what}: {} of {} acknowledged missing (first {:?}), {} repeated (first {:?})",
        missing.len(),
        want.len(),
        missing.first(),
        repeated.len(),
        repeated.first()
    ))
}

pub struct Fleet {
    acked: Acked,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Starts one task per device id, each pausing `pause` after an acknowledgement.
    pub fn start(addr: SocketAddr, devices: &[String], pause: Duration, times: Times) -> Fleet {
        let acked = Acked::default();
        let stop = CancellationToken::new();
        let tasks = devices
            .iter()
            .enumerate()
            .map(|(index, id)| {
                let device = Device {
                    addr,
                    id: id.clone(),
                    index,
                    times,
                    pause,
                };
                tokio::spawn(device.run(acked.clone(), stop.clone()))
            })
            .collect();
        Fleet { acked, stop, tasks }
    }

    /// Messages acknowledged so far, all devices together.
    pub fn total(&self) -> usize {
        self.acked
            .lock()
            .expect("lock")
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Stops publishing; the sequence numbers acknowledged, by device id.
    pub async fn stop(self) -> HashMap<String, Vec<u64>> {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        let acked = self.acked.lock().expect("lock").clone();
        acked
    }
}

struct Device {
    addr: SocketAddr,
    id: String,
    index: usize,
    times: Times,
    pause: Duration,
}

impl Device {
    fn payload(&self, seq: u64) -> String {
        format!(
            r#"{{"ts":{},"seq":{seq},"hr":{}}}"#,
            self.times.at(self.index, seq),
            50 + seq % 50
        )
    }

    async fn run(self, acked: Acked, stop: CancellationToken) {
        let id = &self.id;
        let mut options = MqttOptions::new(id, self.addr.ip().to_string(), self.addr.port());
        options.set_credentials(id, password(id));
        options.set_keep_alive(Duration::from_secs(5));
        options.set_inflight(1);
        let topic = format!("devices/{id}/telemetry");
        let mut seq = 0u64;
        // A new client for each connection: after a disconnect the unacknowledged message is
        // sent again on the new one, and with one message in flight each PUBACK answers the
        // message last sent.
        'connections: while !stop.is_cancelled() {
            let (client, mut events) = AsyncClient::new(options.clone(), 10);
            if client
                .publish(&topic, QoS::AtLeastOnce, false, self.payload(seq))
                .await
                .is_err()
            {
                break;
            }
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => {
                        let _ = client.try_disconnect();
                        break 'connections;
                    }
                    event = events.poll() => event,
                };
                match event {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked
                            .lock()
                            .expect("lock")
                            .entry(id.clone())
                            .or_default()
                            .push(seq);
                        seq += 1;
                        if !self.pause.is_zero() {
                            tokio::time::sleep(self.pause).await;
                        }
                        if client
                            .publish(&topic, QoS::AtLeastOnce, false, self.payload(seq))
                            .await
                            .is_err()
                        {
                            break 'connections;
                        }
                    }
                    Ok(_) => {}
                    // The hub is down or restarting.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue 'connections;
                    }
                }
            }
        }
    }
}
