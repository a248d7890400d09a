//! `sim::run` replaying six hours of a small fleet against a minimal MQTT 3.1.1 broker in this
//! test (it acknowledges every publish and records it): every message the report counts
//! arrives, on the right topic, in the device's profile; faults arrive byte for byte as
//! reported; nothing a continuous device measured is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kenko_config::DeviceKind;
use kenko_proto::telemetry::Telemetry;
use kenko_sim::{self as sim, Replay, SimConfig, SimReport, SimStats};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Publishes received, by topic, in order.
type Received = Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>;

/// Accepts connections until the test ends; answers CONNECT, PUBLISH (QoS 1) and PINGREQ.
async fn broker() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let received = Received::default();
    let store = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(session(stream, store.clone()));
        }
    });
    (addr, received)
}

async fn session(mut stream: TcpStream, received: Received) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        while let Some((header, body, used)) = frame(&buf) {
            let reply: Option<Vec<u8>> = match header >> 4 {
                1 => Some(vec![0x20, 2, 0, 0]),
                3 => {
                    let qos = (header >> 1) & 3;
                    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
                    let mut rest = &body[2 + topic_len..];
                    let mut ack = None;
                    if qos > 0 {
                        ack = Some(vec![0x40, 2, rest[0], rest[1]]);
                        rest = &rest[2..];
                    }
                    let mut map = received.lock().expect("lock");
                    map.entry(topic).or_default().push(rest.to_vec());
                    ack
                }
                12 => Some(vec![0xd0, 0]),
                14 => return,
                _ => None,
            };
            buf.drain(..used);
            if let Some(reply) = reply {
                if stream.write_all(&reply).await.is_err() {
                    return;
                }
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A whole packet at the front of `buf`: (first byte, body, bytes used).
fn frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (mut len, mut shift, mut at) = (0usize, 0, 1);
    loop {
        let b = *buf.get(at)?;
        len |= usize::from(b & 0x7f) << shift;
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let end = at + len;
    (buf.len() >= end).then(|| (buf[0], buf[at..end].to_vec(), end))
}

async fn replay(addr: &str, seed: u64) -> SimReport {
    let from: jiff::Timestamp = "2026-11-24T12:00:00Z".parse().expect("ts");
    let config = SimConfig {
        broker: addr.to_owned(),
        kinds: vec![DeviceKind::Bed, DeviceKind::Wearable, DeviceKind::Bp],
        devices: 8,
        seed,
        faults: 0.05,
        replay: Some(Replay {
            from,
            until: from + jiff::SignedDuration::from_hours(6),
            step: Duration::from_secs(60),
        }),
        ..SimConfig::default()
    };
    let stats = Arc::new(SimStats::default());
    let run = sim::run(config, stats, CancellationToken::new());
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the replay ends by itself")
        .expect("settings are fine")
}

/// Samples in a good message of `profile`.
fn samples(profile: &str, payload: &[u8]) -> usize {
    if profile == sim::PROTOBUF_PROFILE {
        return Telemetry::decode(payload).expect("protobuf").samples.len();
    }
    let v: serde_json::Value = serde_json::from_slice(payload).expect("JSON");
    match profile {
        "bed-json-v2" => v["records"].as_array().map_or(0, Vec::len),
        "wearable-json-v2" => v["samples"].as_array().map_or(0, Vec::len),
        _ => 1,
    }
}

#[tokio::test]
async fn a_replay_delivers_what_the_report_says() {
    let (addr, received) = broker().await;
    let report = replay(&addr, 3).await;
    assert_eq!(report.devices.len(), 24);
    assert_eq!(report.published, report.acked, "every message acknowledged");
    let received = received.lock().expect("lock").clone();
    let mut faults = 0;
    for d in &report.devices {
        let n: usize = d.id[d.id.len() - 3..].parse().expect("number");
        let topic = if n == 8 {
            assert_eq!(d.profile, "kenko-pb-v1");
            format!("devices/{}/telemetry/pb", d.id)
        } else {
            format!("devices/{}/telemetry", d.id)
        };
        let messages = received.get(&topic).cloned().unwrap_or_default();
        let sent = d.good_messages + d.duplicates + d.faults.len() as u64;
        assert_eq!(messages.len() as u64, sent, "{}", d.id);
        for fault in &d.faults {
            assert!(messages.contains(&fault.payload), "{}: {fault:?}", d.id);
        }
        faults += d.faults.len();
        // Good messages are the ones that are neither faults nor repeats.
        let mut good = messages.clone();
        for fault in &d.faults {
            let i = good
                .iter()
                .position(|m| *m == fault.payload)
                .expect("fault");
            good.remove(i);
        }
        good.dedup();
        assert_eq!(good.len() as u64, d.good_messages, "{}", d.id);
        let sampled: usize = good.iter().map(|m| samples(d.profile, m)).sum();
        assert_eq!(sampled as u64, d.samples, "{}", d.id);
        if d.kind != DeviceKind::Bp {
            assert_eq!(d.samples, 6 * 60, "{}: a sample a minute, none lost", d.id);
        } else {
            assert!(d.samples <= 6, "{}: a few measurements", d.id);
        }
        let seqs: Vec<u64> = d.faults.iter().map(|f| f.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{}: {seqs:?}", d.id);
    }
    assert!(faults > 20, "{faults} faults at 5 %");
    let batched = report
        .devices
        .iter()
        .filter(|d| d.good_messages < d.samples)
        .count();
    assert!(batched > 0, "batching profiles send backlogs together");

    // Same seed, same devices, same faults (their times relative to now aside).
    let again = replay(&addr, 3).await;
    for (a, b) in report.devices.iter().zip(&again.devices) {
        assert_eq!(
            (a.good_messages, a.samples, a.readings, a.duplicates),
            (b.good_messages, b.samples, b.readings, b.duplicates),
            "{}",
            a.id
        );
        let codes = |d: &sim::DeviceReport| -> Vec<(u64, &'static str)> {
            d.faults.iter().map(|f| (f.seq, f.reason.code())).collect()
        };
        assert_eq!(codes(a), codes(b), "{}", a.id);
    }
}
